"""PONI ⇄ MIDAS geometry conversion, checked against pyFAI's own pixel arrays."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from radint import IntegrationConfig
from radint.corrections import pixel_geometry
from radint.exceptions import ParameterError
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


def _random_geometry(rng: np.random.Generator, rectangular: bool = False) -> IntegrationConfig:
    """A detector of 30–160 px a side, the beam anywhere within 50 px of it, any rotation about
    the beam, tilts up to 3° (up to 15° in a third of the draws); ``rectangular``: pixels of
    another height (pxZ), ``PixelShape rectangular``."""
    ny, nz = (int(n) for n in rng.integers(30, 160, size=2))
    tilt = 15.0 if rng.random() < 1 / 3 else 3.0
    sizes = rng.choice([50.0, 75.0, 100.0, 172.0, 200.0], 2, replace=False)
    height = f"pxZ {sizes[1]}\nPixelShape rectangular\n" if rectangular else ""
    text = (
        f"NrPixelsY {ny}\nNrPixelsZ {nz}\npx {sizes[0]}\n{height}"
        f"Lsd {rng.uniform(5e4, 2e6)}\n"
        f"BC {rng.uniform(-50, ny + 50)} {rng.uniform(-50, nz + 50)}\n"
        f"tx {rng.uniform(-180, 180)}\nty {rng.uniform(-tilt, tilt)}\n"
        f"tz {rng.uniform(-tilt, tilt)}\nWavelength {rng.uniform(0.1, 1.5)}\n"
        "RMin 1\nRMax 300\nRBinSize 1\nEtaBinSize 10\n"
    )
    return IntegrationConfig.from_text(text, "random.txt")


@pytest.mark.parametrize(("seed", "rectangular"), [(s, False) for s in range(12)] + [
    (s, True) for s in range(100, 106)
])  # fmt: skip
def test_midas_to_poni_on_random_geometries_matches_pyfai_in_float64(seed, rectangular, tmp_path):
    """pyFAI's float64 geometry (``tth``/``chi`` at pixel indices, not its float32 position
    arrays) agrees with radint's on geometries no example uses: 2026-12-04, 100 draws, worst
    2e-14 relative in 2θ and 2e-12 px of arc in η. Rectangular pixels too (pixel1 = pxZ):
    they were refused before ``PixelShape``."""
    rng = np.random.default_rng(seed)
    for k in range(4):
        cfg = _random_geometry(rng, rectangular)
        ai = pyFAI.load(str(write_poni(cfg, tmp_path / f"g{k}.poni")))
        rows, cols = np.meshgrid(
            np.arange(cfg.shape[0], dtype=float), np.arange(cfg.shape[1], dtype=float),
            indexing="ij",
        )  # fmt: skip
        g = pixel_geometry(cfg)
        tth = ai.tth(rows, cols)
        np.testing.assert_allclose(
            g["two_theta_rad"].reshape(cfg.shape), tth, rtol=1e-11, atol=1e-13
        )
        eta_from_chi = (90.0 - np.degrees(ai.chi(rows, cols)) + 180.0) % 360.0 - 180.0
        d = (g["eta_deg"].reshape(cfg.shape) - eta_from_chi + 180.0) % 360.0 - 180.0
        assert (np.abs(np.radians(d)) * g["r_px"].reshape(cfg.shape)).max() < 1e-9
        if rectangular:
            assert (ai.detector.pixel1, ai.detector.pixel2) == pytest.approx(
                (cfg.pixel_size_z_um * 1e-6, cfg.pixel_size_y_um * 1e-6), rel=1e-12
            )
            back = IntegrationConfig.from_poni(tmp_path / f"g{k}.poni")
            assert back.pixel_shape == "rectangular"
            for name in ("pixel_size_y_um", "pixel_size_z_um", "bc_y_px", "bc_z_px", "lsd_um"):
                assert getattr(back, name) == pytest.approx(getattr(cfg, name), rel=1e-9), name


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


def test_pixel_sizes_equal_to_1e_9_keep_pixel1_as_before(tmp_path):
    """Review: pixel1 and pixel2 within 1e-9 of each other are one square pixel, and that
    size is pixel1 as it was before rectangular pixels were read (pixel2 moved px by 1e-10)."""
    path = tmp_path / "n.poni"
    path.write_text(
        'poni_version: 2.1\nDetector: Detector\nDetector_config: {"pixel1": 7.5e-05, "pixel2": '
        '7.50000000001e-05, "max_shape": [100, 120]}\nDistance: 0.1\nPoni1: 0.002\n'
        "Poni2: 0.003\nRot1: 0\nRot2: 0\nRot3: 0\nWavelength: 1e-10\n"
    )
    cfg = IntegrationConfig.from_poni(path)
    assert (cfg.pixel_shape, cfg.pixel_size_y_um, cfg.pixel_size_z_um) == ("square", 75.0, 75.0)


@pytest.mark.parametrize("pixel1", [100e-6, 40e-6])
@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_detector_orientation_becomes_image_flips(orientation, pixel1, tmp_path):
    """pyFAI's detector orientation (PONI 2.1) flips where pixel rows / columns sit; radint
    maps it onto ImTransOpt flips, so every raw pixel keeps pyFAI's 2θ and χ; with pixels
    40 µm high too (``PixelShape rectangular``)."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = Detector(pixel1=pixel1, pixel2=100e-6, max_shape=(120, 96), orientation=orientation)
    ai = AzimuthalIntegrator(dist=0.1, poni1=0.004, poni2=0.006, rot1=0.05, rot2=0.02,
                             rot3=0.1, detector=det, wavelength=1e-10)  # fmt: skip
    path = tmp_path / "o.poni"
    ai.write(str(path))
    cfg = IntegrationConfig.from_poni(path, r_min_px=0, r_max_px=300, r_bin_px=1)
    assert cfg.im_trans_opt == {1: (1, 2), 2: (2,), 3: (), 4: (1,)}[orientation]
    assert cfg.pixel_shape == ("square" if pixel1 == 100e-6 else "rectangular")
    g = pixel_geometry(cfg)
    tth = ai.twoThetaArray(cfg.shape).astype(np.float64)
    np.testing.assert_allclose(g["two_theta_rad"].reshape(cfg.shape), tth, atol=1e-7)
    chi = ai.chiArray(cfg.shape).astype(np.float64)
    d = (g["eta_deg"].reshape(cfg.shape) - (90.0 - np.degrees(chi)) + 180.0) % 360.0 - 180.0
    assert (np.abs(np.radians(d)) * g["r_px"].reshape(cfg.shape)).max() < 1e-3


def test_detectors_without_a_regular_grid_are_refused(tmp_path, monkeypatch):
    """ImXPad tiles sit at angles (1° of 2θ off if read as a grid): refused with the reason; a
    PONI 1 file naming another detector with its pixel sizes is read (pyFAI reads it too)."""
    path = tmp_path / "x.poni"
    path.write_text(
        "poni_version: 2\nDetector: ImXPadS140\n"
        'Detector_config: {"pixel1": 0.00013, "pixel2": 0.00013, "orientation": 3}\n'
        "Distance: 0.1\nPoni1: 0.01\nPoni2: 0.01\nRot1: 0\nRot2: 0\nRot3: 0\n"
        "Wavelength: 1e-10\n"
    )
    with pytest.raises(Exception, match=r"x.poni:2: Detector 'ImXPadS140': pyFAI places"):
        read_poni(path)
    # Pixirad's hexagonal pixels (pixel1 ≠ pixel2) were read as rectangles once those were.
    path.write_text(path.read_text().replace("ImXPadS140", "Pixirad1"))
    with pytest.raises(Exception, match=r"Detector 'Pixirad1': .* irregular grid .*hexagons"):
        read_poni(path)
    # Found by pyFAI's own flags too (a detector a later pyFAI adds is not in radint's list).
    from radint import poni as poni_module

    monkeypatch.setattr(poni_module, "_IRREGULAR_DETECTORS", ())
    for name in ("Pixirad1", "ImXPadS140", "Aarhus"):
        path.write_text(re.sub(r"Detector: \w+", f"Detector: {name}", path.read_text()))
        with pytest.raises(ParameterError, match=f"Detector '{name}': pyFAI places"):
            read_poni(path)
    v1 = tmp_path / "v1.poni"
    v1.write_text("PixelSize1: 0.0002\nPixelSize2: 0.0002\nDetector: Perkin\nDistance: 0.5\n"
                  "Poni1: 0.2\nPoni2: 0.2\nRot1: 0\nRot2: 0\nRot3: 0\n")  # fmt: skip
    poni = read_poni(v1)
    assert poni["pixel1"] == pytest.approx(2e-4) and poni["shape"] == (2048, 2048)  # pyFAI's


def test_named_detector_takes_pyfai_shape_and_pixel_size(tmp_path):
    ai = pyFAI.load({"detector": "Pilatus2M", "dist": 0.3, "poni1": 0.1, "poni2": 0.12,
                     "wavelength": 1e-10})  # fmt: skip
    path = tmp_path / "p2m.poni"
    ai.write(str(path))
    cfg = IntegrationConfig.from_poni(path, r_min_px=0, r_max_px=300, r_bin_px=1)
    assert cfg.shape == (1679, 1475) and cfg.pixel_size_y_um == pytest.approx(172)


def test_a_named_detector_radint_does_not_list_is_looked_up_in_pyfai(tmp_path):
    """A PONI 1 file naming a Perkin Elmer without pixel sizes takes pyFAI's (it said "missing
    PONI key 'pixelsize1'"); an unknown name says so."""
    path = tmp_path / "pe.poni"
    text = "Detector: {}\nDistance: 0.5\nPoni1: 0.2\nPoni2: 0.2\nRot1: 0\nRot2: 0\nRot3: 0\n"
    path.write_text(text.format("Perkin"))
    det = pyFAI.detector_factory("Perkin")
    poni = read_poni(path)
    assert (poni["pixel1"], poni["pixel2"]) == (det.pixel1, det.pixel2)
    assert poni["shape"] == tuple(det.shape) == (2048, 2048)  # binned 2x2 by default in pyFAI
    ai = pyFAI.load(str(path))
    assert (ai.detector.pixel1, ai.detector.shape) == (poni["pixel1"], poni["shape"])
    path.write_text(text.format("NoSuchDetector"))
    with pytest.raises(Exception, match=r"pe.poni:1: Detector 'NoSuchDetector': not a detector"):
        read_poni(path)


@pytest.mark.parametrize(
    "config",
    ['{"binning": [2, 2], "orientation": 3}',  # binning given: pyFAI bins the named detector
     '{"pixel1": 0.00015, "pixel2": 0.00015, "orientation": 3}'],  # pyFAI's own binned file
    ids=["binning-key", "binned-pixel"],
)  # fmt: skip
def test_binned_named_detectors_take_pyfai_shape_and_geometry(config, tmp_path):
    """A binned Eiger 4M read as pyFAI reads it: half the shape, twice the pixel (the binning
    was dropped, so frames of the right size were refused, and a forced shape gave 2θ up to 29°
    off)."""
    path = tmp_path / "b.poni"
    path.write_text(
        f"poni_version: 2.1\nDetector: Eiger4M\nDetector_config: {config}\nDistance: 0.2\n"
        "Poni1: 0.08\nPoni2: 0.078\nRot1: 0.01\nRot2: -0.02\nRot3: 0.0\nWavelength: 1e-10\n"
    )
    ai = pyFAI.load(str(path))
    cfg = IntegrationConfig.from_poni(path, r_min_px=1, r_max_px=200, r_bin_px=1)
    assert cfg.shape == tuple(ai.detector.shape) == (1083, 1035)
    assert cfg.pixel_size_y_um == pytest.approx(ai.detector.pixel1 * 1e6)
    rows, cols = np.meshgrid(np.arange(1083.0), np.arange(1035.0), indexing="ij")
    g = pixel_geometry(cfg)
    np.testing.assert_allclose(
        g["two_theta_rad"].reshape(cfg.shape), ai.tth(rows, cols), rtol=1e-11, atol=1e-13
    )


def test_binning_of_one_axis_is_inferred_too(tmp_path):
    """pyFAI writes an Eiger 4M binned (2, 1) as pixels of 150 × 75 µm: the shape is pyFAI's
    (the ratio of 1 on one axis kept it unbinned on both)."""
    from radint.poni import read_poni

    path = tmp_path / "b.poni"
    path.write_text(
        'poni_version: 2.1\nDetector: Eiger4M\nDetector_config: {"pixel1": 0.00015, '
        '"pixel2": 7.5e-05, "orientation": 3}\nDistance: 0.2\nPoni1: 0.08\nPoni2: 0.078\n'
        "Rot1: 0\nRot2: 0\nRot3: 0\nWavelength: 1e-10\n"
    )
    assert read_poni(path)["shape"] == tuple(pyFAI.load(str(path)).detector.shape)


@pytest.mark.parametrize(
    ("detector_config", "message"),
    [
        ('{"pixel1": 1e-4}', "pixel1 and pixel2 go together, got only pixel1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"pixel1": "abc", "pixel2": 1e-4}', "pixel1 must be a positive pixel size in m"),
        ('{"pixel1": 1e-4, "pixel2": -1e-4}', "pixel2 must be a positive pixel size in m"),
        ('{"max_shape": [10, "x"]}', "max_shape must be two positive integers"),
        ('{"binning": ["a", "b"]}', "binning ['a', 'b'] is not one or two positive integers"),
        ('{"orientation": "x"}', "orientation 'x' is not one of pyFAI's 1-4"),
        ('{"orientation": [3]}', "orientation [3] is not one of pyFAI's 1-4"),
        ('{"orientation": true}', "orientation True is not one of pyFAI's 1-4"),
        ('{"pixel1": true, "pixel2": 1e-4}', "pixel1 must be a positive pixel size in m"),
        ('{"binning": 2.5}', "binning 2.5 is not one or two positive integers"),
    ],
)
def test_malformed_detector_config_is_refused_naming_its_line(tmp_path, detector_config, message):
    # Each of these raised a bare TypeError, AttributeError or ValueError without the file.
    path = tmp_path / "bad.poni"
    path.write_text(
        "poni_version: 2.1\nDetector: Detector\n"
        f"Detector_config: {detector_config}\n"
        "Distance: 0.1\nPoni1: 0.01\nPoni2: 0.01\nPixelSize1: 1e-4\nPixelSize2: 1e-4\n"
    )
    with pytest.raises(ParameterError, match=re.escape(f"{path}:3: Detector_config: {message}")):
        read_poni(path)


V1_PONI = (
    "poni_version: 1\nDetector: Detector\npixelsize1: 0.000172\npixelsize2: 0.000172\n"
    "Distance: 0.2\nPoni1: 0.0172\nPoni2: 0.022016\nRot1: 0\nRot2: 0\nRot3: 0\n"
    "Wavelength: 1.72973e-11\n"
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # pyFAI applies a v1 file's spline: ignoring it gave the geometry without distortion.
        (("Detector: Detector\n", "Detector: Detector\nsplinefile: /data/frelon.spline\n"),
         ":3: SplineFile /data/frelon.spline: detectors with a distortion spline are not"),
        # Was "<config>:1: Lsd: expected a finite number", naming neither file nor key.
        (("Distance: 0.2", "Distance: nan"), ":5: distance: expected a finite number, got 'nan'"),
        # Was "PONI geometry: the detector plane ..." without the file.
        (("Rot1: 0", "Rot1: 1.6"), ": the forward beam never meets the detector plane (rot1 1.6 rad"),
    ],
)  # fmt: skip
def test_poni_errors_name_the_file(tmp_path, change, message):
    path = tmp_path / "v1.poni"
    path.write_text(V1_PONI.replace(*change))
    with pytest.raises(ParameterError, match=re.escape(f"{path}{message}")):
        IntegrationConfig.from_poni(path, NrPixelsY=256, NrPixelsZ=200)


def test_cli_takes_the_shape_of_a_v1_poni_from_overrides(tmp_path, capsys, caplog):
    """Regression (audit): the shape check ran before the overrides, so a PONI without
    Detector_config (v1) could not be used from the command line at all."""
    from radint.cli import main

    path = tmp_path / "v1.poni"
    path.write_text(V1_PONI)
    assert main(["info", str(path), "NrPixelsY", "256", "NrPixelsZ", "200"]) == 0
    assert "256 x 200 pixels" in caplog.text
    assert main(["info", str(path), "NrPixelsY", "256"]) == 2
    assert "give it as overrides: NrPixelsY N NrPixelsZ M" in capsys.readouterr().err


def _named_poni(tmp_path, detector: str, pixel_m: float) -> Path:
    path = tmp_path / f"{detector}.poni"
    path.write_text(
        f"poni_version: 2.1\nDetector: {detector}\n"
        f'Detector_config: {{"pixel1": {pixel_m}, "pixel2": {pixel_m}}}\n'
        "Distance: 0.3\nPoni1: 0.09\nPoni2: 0.08\nRot1: 0.01\nRot2: -0.02\nRot3: 0\n"
        "Wavelength: 1e-10\n"
    )
    return path


def test_named_detector_masks_its_module_gaps_as_pyfai_does(tmp_path):
    """Peer audit: pyFAI masks a Pilatus's gaps by itself; radint integrated them (-1 there),
    22 % low in places. Now the gaps are pyFAI's mask and the lineouts agree."""
    from radint import Integrator
    from radint.detector_map import _read_mask

    path = _named_poni(tmp_path, "Pilatus1M", 172e-6)
    cfg = IntegrationConfig.from_poni(path, RMin=10, RMax=700, RBinSize=5, EtaBinSize=360)
    assert cfg.module_gaps == (195, 487, 17, 7)
    det = pyFAI.detector_factory("Pilatus1M")
    np.testing.assert_array_equal(_read_mask(cfg).astype(bool), det.mask.astype(bool))
    frame = np.full(cfg.shape, 100, dtype=np.int32)
    frame[det.mask.astype(bool)] = -1
    lineout = Integrator(cfg, n_threads=1).integrate(frame).lineout
    filled = np.isfinite(lineout)
    assert filled.sum() > 100
    np.testing.assert_allclose(lineout[filled], 100.0, rtol=1e-12)
    # The key round-trips through a MIDAS parameter file.
    assert "ModuleGaps 195 487 17 7\n" in cfg.midas_text()
    again = IntegrationConfig.from_text(cfg.midas_text(), "again.txt")
    assert again.module_gaps == cfg.module_gaps


def test_named_detector_shape_and_gaps_come_from_pyfai_when_radint_has_none(tmp_path, caplog):
    """Peer audit: 13 common named detectors (Eiger2_1M, ...) came back with a 0 x 0 shape and
    no warning, as radint asked pyFAI only when the file gave no pixel size."""
    cfg = IntegrationConfig.from_poni(_named_poni(tmp_path, "Eiger2_1M", 75e-6))
    assert cfg.shape == (1062, 1028)
    assert cfg.module_gaps == (512, 1028, 38, 12)
    # Binned 2x2 its gaps (38 x 12 pixels) are whole binned pixels: the same tiling, halved.
    binned = IntegrationConfig.from_poni(_named_poni(tmp_path, "Eiger2_1M", 150e-6))
    assert binned.shape == (531, 514) and binned.module_gaps == (256, 514, 19, 6)
    assert "gaps between its modules" not in caplog.text
    # A Pilatus's 17-row gaps split in 2x2 binning: not masked, and said so.
    split = IntegrationConfig.from_poni(_named_poni(tmp_path, "Pilatus1M", 344e-6))
    assert split.module_gaps == ()
    assert "binned 2x2, which splits the gaps between its modules" in caplog.text
    # pyFAI masks no gaps of a Lambda 9M (its mask is empty): neither does radint, unwarned.
    uneven = IntegrationConfig.from_poni(_named_poni(tmp_path, "Lambda9M", 55e-6))
    assert uneven.module_gaps == ()
    assert "Lambda9M': its modules" not in caplog.text
    IntegrationConfig.from_poni(_named_poni(tmp_path, "NoSuchDetector", 75e-6))
    assert "'NoSuchDetector': the file gives no detector shape and pyFAI does not know" in (
        caplog.text
    )


def test_pyfai_s_binned_pixel_tables_and_template_detectors(tmp_path):
    """Review: a Rayonix/Mar PONI binned 3x3 (pyFAI's table rounds its pixel: 3.0029 pixels)
    came back without a shape; a NexusDetector (no pixel size of its own) raised TypeError."""
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = pyFAI.detector_factory("rayonix_mx325")
    det.binning = (3, 3)
    ai = AzimuthalIntegrator(dist=0.2, poni1=0.05, poni2=0.05, detector=det, wavelength=1e-10)
    ai.write(str(tmp_path / "mx325.poni"))
    assert (
        read_poni(tmp_path / "mx325.poni")["shape"]
        == tuple(pyFAI.load(str(tmp_path / "mx325.poni")).detector.shape)
        == (2730, 2730)
    )
    nexus = tmp_path / "nexus.poni"
    nexus.write_text(
        "poni_version: 2.1\nDetector: NexusDetector\n"
        'Detector_config: {"pixel1": 1e-4, "pixel2": 1e-4, "max_shape": [100, 120]}\n'
        "Distance: 0.2\nPoni1: 0.005\nPoni2: 0.006\nRot1: 0\nRot2: 0\nRot3: 0\n"
    )
    assert read_poni(nexus)["shape"] == (100, 120)


def test_module_gaps_checked_switched_off_and_kept_in_a_written_poni(tmp_path):
    """Review: ModuleGaps set through replace() was not checked (a crash at map build, or
    negative gaps taken); pixel_areas read 0 in the gaps; write_poni dropped them."""
    from radint.detector_map import DetectorMap

    cfg = IntegrationConfig.from_poni(
        _named_poni(tmp_path, "Pilatus300k", 172e-6), RMin=10, RMax=300, RBinSize=10
    )
    assert cfg.module_gaps == (195, 487, 17, 7)
    for bad in [(40, 50), (0, 1, 0, 0), (40, 50, -3, 2)]:
        with pytest.raises(ParameterError, match="ModuleGaps: expected"):
            cfg.replace(module_gaps=bad).validate()
    assert cfg.with_overrides({"ModuleGaps": "0 0 0 0"}).module_gaps == ()
    areas = DetectorMap.pixel_areas(cfg, n_threads=1).reshape(cfg.shape)
    assert areas[195:212].min() > 0.9  # gap rows: each raw pixel's own area, gaps or not
    back = IntegrationConfig.from_poni(write_poni(cfg, tmp_path / "back.poni"))
    assert back.module_gaps == cfg.module_gaps
    assert "Detector: Pilatus300k" in (tmp_path / "back.poni").read_text()


def test_detector_config_binning_without_a_pixel_size_takes_pyfai_s_binned_pixel(tmp_path):
    """Docs walkthrough: `Detector: RayonixMx225` with `{"binning": [3, 3]}` and no pixel size
    took pyFAI's default 2x2 detector and binned it again: (1024, 1024) at 73.24 µm where pyFAI
    reads (2048, 2048) at 109.97 µm."""
    path = tmp_path / "rx.poni"
    path.write_text(
        "poni_version: 2.1\nDetector: RayonixMx225\n"
        'Detector_config: {"binning": [3, 3], "orientation": 3}\n'
        "Distance: 0.2\nPoni1: 0.05\nPoni2: 0.05\nRot1: 0\nRot2: 0\nRot3: 0\n"
        "Wavelength: 1e-10\n"
    )
    poni, det = read_poni(path), pyFAI.load(str(path)).detector
    assert poni["shape"] == tuple(det.shape) == (2048, 2048)
    assert poni["pixel1"] == pytest.approx(det.pixel1, rel=1e-12)


def test_second_review_of_module_gaps_and_detector_config(tmp_path):
    """Review: one-module detectors got gaps covering nothing (and warnings); ModuleGaps set to
    0 0 0 0 as a field was refused; write_poni named only radint's seven detectors; a
    Detector_config pixel with a binning was not binned (pyFAI bins it)."""
    single = IntegrationConfig.from_poni(_named_poni(tmp_path, "Eiger500k", 75e-6))
    assert single.shape == (514, 1030) and single.module_gaps == ()
    cfg = IntegrationConfig.from_poni(_named_poni(tmp_path, "Pilatus6M", 172e-6))
    assert cfg.module_gaps == (195, 487, 17, 7)
    assert cfg.replace(module_gaps=(0, 0, 0, 0)).validate().module_gaps == ()
    assert "Detector: Pilatus6M\n" in write_poni(cfg, tmp_path / "p6m.poni").read_text()
    binned = tmp_path / "binned.poni"
    binned.write_text(
        "poni_version: 2.1\nDetector: Detector\n"
        'Detector_config: {"pixel1": 1e-4, "pixel2": 1e-4, "max_shape": [1000, 1000], '
        '"binning": [2, 2], "orientation": 3}\n'
        "Distance: 0.1\nPoni1: 0.01\nPoni2: 0.01\nRot1: 0\nRot2: 0\nRot3: 0\n"
    )
    det = pyFAI.load(str(binned)).detector
    poni = read_poni(binned)
    assert poni["shape"] == tuple(det.shape) == (500, 500)
    assert poni["pixel1"] == pytest.approx(det.pixel1) == pytest.approx(2e-4)


def _pyfai_pair(tmp_path: Path, det, frame: np.ndarray, name: str):
    """pyFAI's 1-D lineout of ``frame`` (full split, 2θ 2–20° in 0.1° bins, no solid angle) and
    radint's through the PONI file pyFAI writes for ``det``, with the counts pyFAI saw."""
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    from pyFAI.method_registry import IntegrationMethod

    from radint import Integrator

    ai = AzimuthalIntegrator(dist=0.2, poni1=0.05, poni2=0.05, detector=det, wavelength=1e-10)
    poni = tmp_path / f"{name}.poni"
    ai.write(str(poni))
    cfg = IntegrationConfig.from_poni(poni, TthMin=2, TthMax=20, TthBinSize=0.1, EtaBinSize=360)
    ours = Integrator(cfg, pixel_weights="fraction", fit=None, n_threads=1).integrate(frame)
    # radint's I = Σ a·v/flat / Σ a is pyFAI's unweighted average (README, pyFAI section).
    method = IntegrationMethod.select_one_available(("full", "csr", "cython"), dim=1).unweighted
    ref = ai.integrate1d(frame, 180, unit="2th_deg", radial_range=(2, 20), method=method,
                         correctSolidAngle=False)  # fmt: skip
    return cfg, ours.lineout, ref


def test_a_nexus_detector_s_mask_and_flat_are_applied_as_pyfai_applies_them(tmp_path, caplog):
    """Peer sweep: a PONI naming a NexusDetector (pyFAI's Detector.save) lost the file's mask
    without a word (a Pilatus 1M with -1 in its gaps: pyFAI 100 everywhere, radint down to
    67.8). The file's mask and flat field are now MaskFile / FlatFile (``file.h5::/dataset``)."""
    pilatus = pyFAI.detector_factory("Pilatus1M")
    pilatus.flatfield = np.linspace(0.8, 1.2, pilatus.shape[1])[None, :] * np.ones(pilatus.shape)
    pilatus.save(str(tmp_path / "p1m.h5"))
    det = pyFAI.detectors.NexusDetector(str(tmp_path / "p1m.h5"))
    frame = np.random.default_rng(1).poisson(400.0, det.shape).astype(np.int32)
    frame[det.mask.astype(bool)] = -1
    cfg, lineout, ref = _pyfai_pair(tmp_path, det, frame, "nexus")
    assert cfg.mask_file.endswith("p1m.h5::/entry_0000/pyFAI/Pilatus_1M/mask")
    assert cfg.flat_file.endswith("p1m.h5::/entry_0000/pyFAI/Pilatus_1M/flatfield")
    assert (cfg.gap_intensity, cfg.bad_px_intensity) == (-1.0, -2.0)  # pyFAI's dummy -2 ± 1.5
    filled = ref.count > 0
    filled[[0, -1]] = False  # pyFAI squashes pixels past the range into its edge bins
    assert filled.sum() > 150 and np.isfinite(lineout[filled]).all()
    np.testing.assert_allclose(lineout[filled], ref.intensity[filled], rtol=1e-5)
    # A binned detector's file: its own shape, not Detector_config's unbinned max_shape (a
    # review: "MaskFile: expected shape (512, 2068), got (256, 1034)").
    eiger = pyFAI.detector_factory("Eiger2_1M-W")
    eiger.binning = (2, 2)
    eiger.save(str(tmp_path / "e1m.h5"))
    binned = pyFAI.detectors.NexusDetector(str(tmp_path / "e1m.h5"))
    b_cfg, b_lineout, b_ref = _pyfai_pair(
        tmp_path, binned, np.full(binned.shape, 50, np.uint32), "binned"
    )
    assert b_cfg.shape == tuple(binned.shape) == (256, 1034)
    b_filled = b_ref.count > 0
    b_filled[[0, -1]] = False
    np.testing.assert_allclose(b_lineout[b_filled], b_ref.intensity[b_filled], rtol=1e-5)
    # Looked up beside the PONI file too; a missing file is said, not passed over.
    (tmp_path / "p1m.h5").rename(tmp_path / "gone.h5")
    IntegrationConfig.from_poni(tmp_path / "nexus.poni")
    assert "its detector file" in caplog.text and "is not found" in caplog.text


def test_named_detectors_leave_out_pyfai_s_dummy_values(tmp_path):
    """Peer sweep: pyFAI leaves out a Pilatus's or Eiger's pixels within 1.5 of its dummy -2
    (bad pixels -2, 2^32 - 1 in uint32 Eiger frames); radint integrated them as counts (an
    Eiger lineout up to 1.3e6 where pyFAI's is 100). They are now GapIntensity/BadPxIntensity."""
    rng = np.random.default_rng(2)
    for name, dtype, bad in (("Eiger4M", np.uint32, 2**32 - 1), ("Pilatus1M", np.int32, -2)):
        det = pyFAI.detector_factory(name)
        frame = rng.poisson(400.0, det.shape).astype(dtype)
        frame[rng.integers(0, det.shape[0], 50), rng.integers(0, det.shape[1], 50)] = bad
        cfg, lineout, ref = _pyfai_pair(tmp_path, det, frame, name)
        assert (cfg.gap_intensity, cfg.bad_px_intensity) == (-1.0, -2.0)
        filled = ref.count > 0
        filled[[0, -1]] = False  # pyFAI squashes pixels past the range into its edge bins
        np.testing.assert_allclose(lineout[filled], ref.intensity[filled], rtol=1e-5)


def test_mask_file_names_a_dataset_inside_an_hdf5_file(small_config, tmp_path):
    """``MaskFile mask.h5::/path`` reads that dataset (pyFAI's and fabio's form); the map cache
    tells two masks of one file apart."""
    import h5py
    import tifffile

    from radint.detector_map import _read_mask

    mask = np.zeros(small_config.shape, np.uint8)
    mask[10:20, 30:60] = 1
    with h5py.File(tmp_path / "masks.h5", "w") as f:
        f["entry/first"] = mask
        f["entry/second"] = mask[::-1]
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    in_h5 = small_config.with_overrides({"MaskFile": f"{tmp_path}/masks.h5::/entry/first"})
    np.testing.assert_array_equal(
        _read_mask(in_h5),
        _read_mask(small_config.with_overrides({"MaskFile": f"{tmp_path}/mask.tif"})),
    )
    other = small_config.with_overrides({"MaskFile": f"{tmp_path}/masks.h5::/entry/second"})
    assert other.map_key() != in_h5.map_key()
    # Review: --skip-existing compared such values as paths that are no files (a mask moved to
    # another file with the same dataset path went unnoticed), and a folder of frames holding
    # the mask file took it for frames.
    from radint.cli import _files_named
    from radint.io.nexus import _same_file, file_digest

    first, second = in_h5.mask_file, other.mask_file
    assert file_digest(first) not in (None, file_digest(second))
    assert _same_file(first, first) and not _same_file(first, second)
    assert not _same_file(first, first.replace("masks.h5", "copy.h5"))
    assert _files_named(first, None, "") == [str(tmp_path / "masks.h5")]
    with pytest.raises(Exception, match=r"entry/third.*\(name one: .*masks.h5::/path\)"):
        _read_mask(small_config.with_overrides({"MaskFile": f"{tmp_path}/masks.h5::/entry/third"}))


def test_write_poni_names_what_a_poni_cannot_carry(small_config, tmp_path, caplog):
    """write_poni wrote the geometry alone: a MaskFile, FlatFile, dark or GapIntensity the
    configuration applies went without a word (pyFAI, given the file, integrated those
    pixels), and Parallax, DistortionFile, ResidualCorrectionMap and PanelShiftsFile (pixels
    moved) were written as if absent."""
    plain = small_config.replace(distortion=(0.0,) * 15)
    caplog.set_level("WARNING", logger="radint.poni")
    write_poni(plain, tmp_path / "plain.poni")
    assert "has no key" not in caplog.text
    mask = tmp_path / "mask.tif"
    with_pixels = plain.replace(
        mask_file=str(mask), flat_file="flat.tif", dark_file="dark.tif", gap_intensity=-1.0
    )
    write_poni(with_pixels, tmp_path / "pixels.poni")
    for said in (f"MaskFile {mask}", "FlatFile flat.tif", "Dark dark.tif", "GapIntensity -1"):
        assert said in caplog.text
    assert "dummy=-1" in caplog.text and "BadPxIntensity" not in caplog.text
    for change, key in [
        ({"parallax_um": 450.0}, "Parallax"),
        ({"distortion_file": "d.bin"}, "DistortionFile"),
        ({"residual_correction_map": "r.bin"}, "ResidualCorrectionMap"),
        ({"panel_shifts_file": "shifts.txt"}, "PanelShiftsFile"),
        ({"im_trans_opt": (2,)}, "ImTransOpt"),
        ({"distortion": (1e-4,) + (0.0,) * 14}, "p0 .. p14"),
    ]:
        with pytest.raises(ParameterError, match=re.escape(key)):
            write_poni(plain.replace(**change), tmp_path / "moved.poni")


def test_write_poni_of_a_pilatus_keeps_quiet_about_the_dummies_pyfai_applies(tmp_path, caplog):
    """A Pilatus read from a PONI has GapIntensity -1 / BadPxIntensity -2, which pyFAI's
    Pilatus leaves out by itself (dummy -2 ± 1.5): written back, nothing to warn about."""
    cfg = IntegrationConfig.from_poni(_named_poni(tmp_path, "Pilatus300k", 172e-6))
    assert (cfg.gap_intensity, cfg.bad_px_intensity) == (-1.0, -2.0)
    caplog.set_level("WARNING", logger="radint.poni")
    write_poni(cfg, tmp_path / "back.poni")
    assert "has no key" not in caplog.text
    write_poni(cfg.replace(bad_px_intensity=-7.0), tmp_path / "seven.poni")
    assert "BadPxIntensity -7" in caplog.text and "GapIntensity" not in caplog.text


def test_write_poni_dummy_advice_is_one_window_pyfai_can_take(small_config, tmp_path, caplog):
    """Review: the advice printed markers with %g (2³²−1 as 4.29497e+09, which masks nothing),
    gave two dummies where pyFAI takes one, warned about a named detector's unsigned dummy
    that pyFAI applies in unsigned frames, and refused panels that move no pixel."""
    plain = small_config.replace(distortion=(0.0,) * 15)
    caplog.set_level("WARNING", logger="radint.poni")
    write_poni(plain.replace(gap_intensity=-1.0, bad_px_intensity=-2.0), tmp_path / "a.poni")
    assert "dummy=-1.5, delta_dummy=1" in caplog.text and "dummy=-1," not in caplog.text
    caplog.clear()
    write_poni(plain.replace(gap_intensity=4294967295.0), tmp_path / "b.poni")
    assert "GapIntensity 4294967295 (pyFAI: dummy=4294967295, delta_dummy=0.5)" in caplog.text
    caplog.clear()
    write_poni(plain.replace(gap_intensity=-1.0, bad_px_intensity=65535.0), tmp_path / "c.poni")
    assert "mask those pixels" in caplog.text
    caplog.clear()
    pilatus = IntegrationConfig.from_poni(_named_poni(tmp_path, "Pilatus300k", 172e-6))
    write_poni(pilatus.replace(gap_intensity=4294967295.0), tmp_path / "d.poni")  # 2³² − 1
    assert "has no key" not in caplog.text
    panels = plain.replace(n_panels_y=2, n_panels_z=2, panel_size_y=50, panel_size_z=60)
    assert "Detector:" in write_poni(panels, tmp_path / "e.poni").read_text()


@pytest.mark.parametrize(
    ("detector", "pixel_m", "binning"),
    [("Jungfrau4M", 75e-6, 1), ("Jungfrau1M", 75e-6, 1), ("Lambda750k", 110e-6, 2),
     ("Maxipix2x2", 110e-6, 2)],
)  # fmt: skip
def test_every_pyfai_detector_sweep_regular_jungfrau_and_binned_gaps(
    tmp_path, detector, pixel_m, binning
):
    """A sweep over all of pyFAI's detectors: the assembled Jungfrau 1M / 4M (on a regular
    grid in pyFAI) were refused as irregular, and binned read-outs whose module gaps are whole
    binned pixels (Lambda, Maxipix 2x2) integrated their gaps (pyFAI masks them; 0 there in the
    frames, lineouts 1-3e-2 apart). Now radint's gap mask equals pyFAI's."""
    from radint.detector_map import module_gap_mask

    cfg = IntegrationConfig.from_poni(_named_poni(tmp_path, detector, pixel_m))
    det = pyFAI.detector_factory(detector)
    det.binning = (binning, binning)
    assert cfg.shape == tuple(det.shape) and cfg.module_gaps
    np.testing.assert_array_equal(module_gap_mask(cfg.shape, cfg.module_gaps), det.mask != 0)


def test_every_pyfai_detector_sweep_one_module_cdte_and_unverifiable_binning(tmp_path, caplog):
    """The same sweep: a one-module Eiger2 CdTe 500k left its 1 024 chip-border pixels (masked
    by pyFAI) unmasked without the warning every other CdTe detector gets. A binned Lambda 9M,
    whose mask pyFAI cannot make (and which it masks nowhere unbinned), keeps no gaps."""
    caplog.set_level("WARNING", logger="radint.poni")
    IntegrationConfig.from_poni(_named_poni(tmp_path, "Eiger2CdTe_500k", 75e-6))
    assert "pyFAI masks 1024 of its pixels (chip borders), radint none" in caplog.text
    assert IntegrationConfig.from_poni(_named_poni(tmp_path, "Lambda9M", 110e-6)).module_gaps == ()
    assert "pyFAI makes no mask to check the gaps" in caplog.text
    for irregular in ("Jungfrau8M", "ImXPadS10"):
        with pytest.raises(ParameterError, match="irregular grid"):
            IntegrationConfig.from_poni(_named_poni(tmp_path, irregular, 75e-6))


@pytest.mark.parametrize(("name", "binning"), [("Eiger2_4M", (2, 2)), ("Eiger2_1M", (2, 2)),
                                               ("Lambda750k", (2, 2)), ("Pilatus1M", (1, 1)),
                                               ("Eiger2_1M", (1, 2)), ("Eiger2_1M", (2, 1)),
                                               ("Eiger1M", (1, 2))])  # fmt: skip
def test_write_poni_names_a_binned_detector_again(tmp_path, caplog, name, binning):
    """Audit (pyFAI option sweep): a binned Eiger2 4M read from pyFAI's PONI was written back as
    a plain Detector (warned: "no pyFAI detector ... to name"), so pyFAI given radint's PONI
    integrated its module gaps (a flat 100 frame with −1 in them: median 94.9, radint 100).
    Now named with its binned pixel and no max_shape, as pyFAI writes it, and pyFAI masks the
    same pixels as from its own file. Binned along one axis too (rectangular pixels): an
    Eiger 1M at 1×2, in radint's own table, had its gaps left unmasked ("pyFAI makes no mask",
    which it does), and those read-outs were written back unnamed."""
    import pyFAI.detectors
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = pyFAI.detectors.detector_factory(name)
    det.binning = binning
    own = tmp_path / "own.poni"
    AzimuthalIntegrator(dist=0.3, poni1=0.03, poni2=0.04, detector=det, wavelength=1e-10).save(own)
    cfg = IntegrationConfig.from_poni(own)
    assert cfg.module_gaps  # read with its gaps at the binned scale
    caplog.set_level("WARNING", logger="radint.poni")
    back = pyFAI.load(str(write_poni(cfg, tmp_path / "back.poni"))).detector
    assert "no pyFAI detector" not in caplog.text
    assert (type(back).__name__, tuple(back.binning), back.shape) == (name, binning, det.shape)
    np.testing.assert_array_equal(np.asarray(back.mask, bool), np.asarray(det.mask, bool))
    assert IntegrationConfig.from_poni(tmp_path / "back.poni").module_gaps == cfg.module_gaps
