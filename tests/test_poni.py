"""PONI ⇄ MIDAS geometry conversion, checked against pyFAI's own pixel arrays."""

from __future__ import annotations

import numpy as np
import pytest

from radint import IntegrationConfig
from radint.corrections import pixel_geometry
from radint.poni import read_poni, write_poni

pyFAI = pytest.importorskip("pyFAI")


def test_midas_to_poni_matches_pyfai_pixel_angles(small_config, tmp_path):
    cfg = small_config.replace(distortion=(0.0,) * 15)
    path = write_poni(cfg, tmp_path / "g.poni")
    ai = pyFAI.load(str(path))
    tth = ai.twoThetaArray(cfg.shape)
    chi = ai.chiArray(cfg.shape)
    g = pixel_geometry(cfg)
    np.testing.assert_allclose(
        g["two_theta_rad"].reshape(cfg.shape), tth, atol=1e-8
    )  # pyFAI keeps pixel positions in float32
    eta_from_chi = (90.0 - np.degrees(chi) + 180.0) % 360.0 - 180.0
    d = (g["eta_deg"].reshape(cfg.shape) - eta_from_chi + 180.0) % 360.0 - 180.0
    # pyFAI's float32 positions blur χ near the beam centre; compare as arc length (px).
    arc_px = np.abs(np.radians(d)) * g["r_px"].reshape(cfg.shape)
    assert arc_px.max() < 1e-4


def test_poni_to_midas_round_trip(tmp_path):
    text = (
        "poni_version: 2.1\nDetector: Detector\n"
        'Detector_config: {"pixel1": 7.5e-05, "pixel2": 7.5e-05, "max_shape": [300, 260]}\n'
        "Distance: 0.2\nPoni1: 0.0121\nPoni2: 0.0093\nRot1: 0.021\nRot2: -0.013\nRot3: 0.4\n"
        "Wavelength: 1.0e-10\n"
    )
    (tmp_path / "a.poni").write_text(text)
    cfg = IntegrationConfig.from_poni(tmp_path / "a.poni", r_min_px=1, r_max_px=200, r_bin_px=1)
    assert cfg.shape == (300, 260) and cfg.wavelength_angstrom == pytest.approx(1.0)
    ai = pyFAI.load(str(tmp_path / "a.poni"))
    g = pixel_geometry(cfg)
    np.testing.assert_allclose(
        g["two_theta_rad"].reshape(cfg.shape), ai.twoThetaArray(cfg.shape), atol=1e-8
    )
    back = read_poni(write_poni(cfg, tmp_path / "b.poni"))
    ref = read_poni(tmp_path / "a.poni")
    for k in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3"):
        assert back[k] == pytest.approx(ref[k], abs=1e-12), k
