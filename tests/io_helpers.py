"""Synthetic Results and a stand-in configuration for the io tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from radint.result import Result

CONFIG_FIELDS: dict[str, Any] = {
    "lsd_um": 1_000_000.0,
    "bc_y_px": 512.0,
    "bc_z_px": 512.0,
    "tx_deg": 0.0,
    "ty_deg": 0.0,
    "tz_deg": 0.0,
    "pixel_size_y_um": 200.0,
    "pixel_size_z_um": 200.0,
    "n_pixels_y": 1024,
    "n_pixels_z": 1024,
    "wavelength_angstrom": 0.172979,
    "r_min_px": 10.0,
    "r_max_px": 20.0,
    "r_bin_px": 1.0,
    "eta_min_deg": -180.0,
    "eta_max_deg": 180.0,
    "eta_bin_deg": 90.0,
    "omega_start_deg": 5.0,
    "omega_step_deg": 0.25,
    "omega_sum_frames": 2,
    "gsas_polariz": 0.99,
    "gsas_sh_l": 0.002,
    "gsas_u": 1.163,
    "gsas_v": -0.126,
    "gsas_w": 0.063,
    "gsas_x": 0.0,
    "gsas_y": 0.0,
    "gsas_z": 0.0,
    "normalize": True,
}


def make_config(**changes: Any) -> SimpleNamespace:
    """A stand-in for IntegrationConfig: the attributes the writers read, plus to_dict()."""
    fields = {**CONFIG_FIELDS, **changes}
    cfg = SimpleNamespace(**fields)
    cfg.to_dict = lambda: dict(fields)
    return cfg


def make_result(
    n_frames: int | None = 3,
    n_eta: int = 4,
    n_r: int = 10,
    config: Any = "default",
    sigma: bool = True,
) -> Result:
    """A Result with recognisable values: cake[f, e, r] = 1000·f + 100·e + r (+ one NaN bin)."""
    config = make_config() if config == "default" else config
    r_edges = 10.0 + np.arange(n_r + 1, dtype=np.float64)
    radius = 0.5 * (r_edges[:-1] + r_edges[1:])
    eta_edges = np.linspace(-180.0, 180.0, n_eta + 1)
    eta = 0.5 * (eta_edges[:-1] + eta_edges[1:])
    lsd = 1e6 if config is None else config.lsd_um
    px = 200.0 if config is None else config.pixel_size_y_um
    wl = 0.0 if config is None else config.wavelength_angstrom
    tth = np.degrees(np.arctan(radius * px / lsd))
    q = 4 * np.pi / wl * np.sin(np.radians(tth) / 2) if wl > 0 else np.full(n_r, np.nan)
    d = 2 * np.pi / q
    nf = 1 if n_frames is None else n_frames
    f, e, r = np.meshgrid(np.arange(nf), np.arange(n_eta), np.arange(n_r), indexing="ij")
    cake = (1000.0 * f + 100.0 * e + r).astype(np.float64)
    cake[:, 0, 0] = np.nan  # an empty bin
    area = np.ones((n_eta, n_r))
    area[0, 0] = 0.0
    lineout = np.nanmean(cake, axis=1)
    cake_sigma = np.sqrt(np.abs(cake)) if sigma else None
    lineout_sigma = np.sqrt(np.abs(lineout)) if sigma else None
    ids = None if n_frames is None else np.arange(nf, dtype=np.int64) + 7
    if n_frames is None:
        cake, lineout = cake[0], lineout[0]
        cake_sigma = None if cake_sigma is None else cake_sigma[0]
        lineout_sigma = None if lineout_sigma is None else lineout_sigma[0]
    return Result(
        cake=cake,
        cake_sigma=cake_sigma,
        lineout=lineout,
        lineout_sigma=lineout_sigma,
        area=area,
        count=(area > 0).astype(np.uint32),  # as the integrator counts
        radius_px=radius,
        two_theta_deg=tth,
        q_inv_angstrom=q,
        d_spacing_angstrom=d,
        eta_deg=eta,
        r_edges_px=r_edges,
        eta_edges_deg=eta_edges,
        config=config,
        frame_ids=ids,
        metadata={"source": "scan_000001.h5"},
    )
