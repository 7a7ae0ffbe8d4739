"""Python peak-fitting API over the Rust fitter (the Rust tests cover the fitter in depth)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radint import DetectorMap, Integrator, RadintError
from radint.fit import fit_peaks, fit_result, write_fit_bin
from radint.testing import ceo2_two_theta_deg, ring_image


def tch_pv(x, area, center, sig, gam):
    """The MIDAS model of spec §6.1 (centi-scaled widths, one TCH Γ for both components)."""
    fg = math.sqrt(8 * math.log(2) * sig) / 100
    fl = gam / 100
    g = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3
         + 0.07842 * fg * fl**4 + fl**5) ** 0.2  # fmt: skip
    q = fl / g
    eta = min(max(1.36603 * q - 0.47719 * q * q + 0.11116 * q**3, 0), 1)
    s = g / (2 * math.sqrt(2 * math.log(2)))
    gauss = np.exp(-((x - center) ** 2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi))
    lor = (g / 2) / math.pi / ((x - center) ** 2 + (g / 2) ** 2)
    return area * (eta * lor + (1 - eta) * gauss), g


def test_recovers_synthetic_peaks():
    rng = np.random.default_rng(5)
    x = np.arange(400, dtype=float) * 0.25 + 100
    n_cases = 200
    truth, curves, starts = [], [], []
    for _ in range(n_cases):
        area, center = rng.uniform(2e5, 8e5), rng.uniform(140, 180)
        sig, gam = rng.uniform(500, 3000), rng.uniform(20, 80)
        y, fwhm = tch_pv(x, area, center, sig, gam)
        y = y + 30 + 0.05 * (x - 150)
        curves.append(rng.normal(y, np.sqrt(y)))
        truth.append((area, center, fwhm))
        starts.append(center + rng.uniform(-0.1, 0.1))
    # One position list per call: fit each curve at its own start.
    got = [fit_peaks(x, c, positions=[s]) for c, s in zip(curves, starts)]
    d_center = np.array([abs(g.center[0] - t[1]) / 0.25 for g, t in zip(got, truth)])
    d_area = np.array([abs(g.area[0] / t[0] - 1) for g, t in zip(got, truth)])
    d_fwhm = np.array([abs(g.fwhm[0] / t[2] - 1) for g, t in zip(got, truth)])
    assert all(g.ok.all() for g in got)
    assert d_center.max() < 0.02, d_center.max()
    assert d_area.max() < 0.01, d_area.max()
    assert d_fwhm.max() < 0.02, d_fwhm.max()


def test_agrees_with_scipy_least_squares():
    from scipy.optimize import least_squares

    rng = np.random.default_rng(7)
    x = np.arange(200, dtype=float) * 0.25
    y, _ = tch_pv(x, 5e4, 25.3, 1500, 40)
    y = rng.normal(y + 50, np.sqrt(y + 50))
    ours = fit_peaks(x, y, positions=[25.3])
    roi = np.abs(x - x[np.argmin(np.abs(x - 25.3))]) <= 20 * 0.25 + 1e-9
    xr, yr = x[roi], y[roi]

    def resid(p):
        xn = 2 * (xr - xr[0]) / (xr[-1] - xr[0]) - 1
        return p[0] + p[1] * xn + tch_pv(xr, p[2], p[3], p[4], p[5])[0] - yr

    ref = least_squares(
        resid,
        [50, 0, 4e4, 25.2, 1000, 30],
        bounds=([-1e6, -1e6, 0, 20, 1e-6, 0.01], [1e6, 1e6, 1e6, 30, 1e7, 1e4]),
    )
    # Standard errors of the unweighted objective are ~2x optimistic (Rust tests): allow 3 sigma.
    assert abs(ours.center[0] - ref.x[3]) < 3 * max(ours.center_err[0], 1e-4)
    assert abs(ours.area[0] / ref.x[2] - 1) < 0.01


def test_failures_are_nan_with_status():
    x = np.arange(100, dtype=float)
    y = np.full(100, np.nan)
    t = fit_peaks(x, y, positions=[50.0])
    assert not t.ok[0] and np.isnan(t.area[0]) and t.status_name[0] == "insufficient_data"
    t = fit_peaks(x, np.ones(100), positions=[500.0])
    assert t.status_name[0] == "out_of_range" and np.isnan(t.center[0])
    t = fit_peaks(x, np.exp(-((x - 50) ** 2) / 8) * 100, positions=[50.0], max_iterations=1)
    assert t.status_name[0] == "max_iterations" and np.isnan(t.area[0])
    with pytest.raises(RadintError):
        fit_peaks(x[::-1].copy(), np.ones(100), positions=[5.0])
    with pytest.raises(ValueError):
        fit_peaks(x, np.ones(99), positions=[5.0])


def test_fit_result_finds_ceo2_rings(small_config, tmp_path):
    cfg = small_config.replace(
        distortion=(0.0,) * 15, lsd_um=100000.0, r_bin_px=0.25, eta_bin_deg=360
    )
    frame = ring_image(cfg, fwhm_deg=0.08, amplitude=5000, dtype=np.float64)
    r = Integrator(cfg, detector_map=DetectorMap.build(cfg)).integrate(frame)
    rings = ceo2_two_theta_deg(cfg.wavelength_angstrom)
    inside = rings[(rings > r.two_theta_deg[25]) & (rings < r.two_theta_deg[-25])]
    r_px = cfg.lsd_um / cfg.pixel_size_y_um * np.tan(np.radians(inside))
    table = fit_result(r, positions_px=r_px)
    assert table.ok.all()
    assert np.max(np.abs(table.center_two_theta_deg - inside)) < 0.002
    auto = fit_result(r, auto=len(inside))
    assert len(auto.center) >= len(inside) - 1
    path = write_fit_bin(table, tmp_path / "fit.bin")
    assert path.stat().st_size == 8 * 7 * len(inside)
