"""Peak-fitting benchmark: radint.fit vs scipy.optimize.least_squares on the same lineouts, and the
cost of integrating one Pilatus 2M frame for comparison.

Run: python benches/fit.py [--scipy-curves N]   (prints one table)

Data: 1000 Poisson lineouts of 1190 R bins (the Pilatus example's RMin..RMax at 1 px) with 10
peaks (given positions) or 20 peaks (auto-detection), FWHM 3–5 px, on a sloping background; and
200 lineouts of 3000 bins with 20 peaks 25 bins apart, which the MIDAS ROI rule (±20 bins, merge
when ROIs touch) fits as one 20-peak job ("dense" rows).
scipy fits the same model (spec §6.1) per peak ROI (±20 bins, as radint's jobs) with
``least_squares(method="trf", x_scale="jac")`` and finite-difference Jacobians, the optimiser of
midas-integrate's Python port (spec §6.6); it is timed on a subset of the curves and extrapolated
to 1000 (linear: every curve is the same work).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

import radint
import radint.fit as rfit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples"
N_CURVES = 1000
N_DENSE = 200
X = np.arange(10.5, 1200.0, 1.0)
X_DENSE = np.arange(3000.0)
PAD = 20
LN2 = math.log(2)


def tch(sig: float, gam: float) -> tuple[float, float]:
    fg = math.sqrt(8 * LN2 * max(sig, 1e-12)) / 100
    fl = max(gam, 1e-6) / 100
    g5 = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3
          + 0.07842 * fg * fl**4 + fl**5)  # fmt: skip
    gamma = max(g5**0.2, 1e-15)
    q = fl / gamma
    return gamma, min(max(1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3, 0.0), 1.0)


def model(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """spec §6.1 with the Chebyshev x normalised over this ROI."""
    xn = 2 * (x - x[0]) / (x[-1] - x[0]) - 1
    out = p[0] + p[1] * xn
    for a, c, sig, gam in p[2:].reshape(-1, 4):
        gamma, eta = tch(sig, gam)
        s = gamma / (2 * math.sqrt(2 * LN2))
        g = np.exp(-((x - c) ** 2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi))
        lor = (gamma / 2) / math.pi / ((x - c) ** 2 + (gamma / 2) ** 2)
        out = out + a * (eta * lor + (1 - eta) * g)
    return out


def lineouts(n_peaks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_curves, n_x) Poisson lineouts and the nominal peak positions."""
    rng = np.random.default_rng(seed)
    nominal = np.linspace(X[0] + 60, X[-1] - 60, n_peaks)
    ys = np.empty((N_CURVES, X.size))
    for i in range(N_CURVES):
        y = 200 - 0.1 * (X - X[0])
        for c in nominal + rng.uniform(-0.5, 0.5, n_peaks):
            fwhm = rng.uniform(3, 5)
            s = fwhm / 2.3548
            y = y + rng.uniform(2e4, 6e4) / (s * math.sqrt(2 * math.pi)) * np.exp(
                -0.5 * ((X - c) / s) ** 2
            )
        ys[i] = rng.poisson(y)
    return ys, nominal


def dense_lineouts(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N_DENSE, 3000) Poisson lineouts with 20 peaks 25 bins apart, and their nominal positions."""
    rng = np.random.default_rng(seed)
    nominal = 100 + 25.0 * np.arange(20)
    ys = np.empty((N_DENSE, X_DENSE.size))
    for i in range(N_DENSE):
        y = 200 - 0.05 * X_DENSE
        for c in nominal + rng.uniform(-0.5, 0.5, 20):
            s = rng.uniform(3, 5) / 2.3548
            y = y + rng.uniform(2e4, 6e4) / (s * math.sqrt(2 * math.pi)) * np.exp(
                -0.5 * ((X_DENSE - c) / s) ** 2
            )
        ys[i] = rng.poisson(y)
    return ys, nominal


def scipy_fit_seconds(ys: np.ndarray, nominal: np.ndarray, n_curves: int) -> float:
    """Seconds for ``n_curves`` curves × all peaks, one least_squares per peak ROI."""
    from scipy.optimize import least_squares

    t0 = time.perf_counter()
    for y in ys[:n_curves]:
        for c in nominal:
            k = int(np.argmin(np.abs(X - c)))
            x, yy = X[k - PAD : k + PAD + 1], y[k - PAD : k + PAD + 1]
            bg = 0.5 * (yy[:3].mean() + yy[-3:].mean())
            f = 4.0
            start = [bg, 0.0, 1.5 * (yy.max() - bg) * f, x[PAD], (50 * f) ** 2 / (8 * LN2), 50 * f]
            lo = [-np.inf, -np.inf, 0, x[PAD] - 5, 1e-6, 0.01]
            least_squares(lambda p, x=x, yy=yy: model(x, p) - yy, start, bounds=(lo, np.inf),
                          method="trf", x_scale="jac", ftol=1e-9, xtol=1e-9, gtol=1e-9,
                          max_nfev=4000)  # fmt: skip
    return time.perf_counter() - t0


def best_of(n: int, f) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def integrate_seconds(threads: int, cache: dict) -> tuple[float, float]:
    """(map build s, best integrate s) of the Pilatus example frame; the map is built once."""
    import tifffile

    cfg = radint.IntegrationConfig.from_midas_params(EXAMPLE / "parameters.txt")
    frame = tifffile.imread(EXAMPLE / "ceo2_pilatus.tif")
    frame = frame[0] if frame.ndim == 3 else frame  # the example TIFF holds 3 frames
    if "map" not in cache:
        t0 = time.perf_counter()
        cache["map"] = radint.DetectorMap.build(cfg, n_threads=2)
        cache["build"] = time.perf_counter() - t0
    integ = radint.Integrator(cfg, n_threads=threads, detector_map=cache["map"])
    integ.integrate(frame)
    return cache["build"], best_of(5, lambda: integ.integrate(frame))


def midas_rows(ys: np.ndarray, nominal: np.ndarray, scipy_rate: float, n: int = 20) -> None:
    """midas-integrate 0.9.0's peakfit (its Python port of PeakFit.c, spec §6.6) on the first
    ``n`` curves: rate, and how far its centres/areas are from radint's on the same lineouts."""
    try:
        from midas_integrate.peakfit import fit_peaks as midas_fit
    except ImportError:
        print(
            "midas-integrate peakfit: not installed (pip install '.[bench]' && pip install --no-deps midas-integrate==0.9.0), row skipped"
        )
        return
    t0 = time.perf_counter()
    rows = np.stack(
        [midas_fit(X, y, list(nominal), x_bin_size=1.0, fit_roi_padding=PAD) for y in ys[:n]]
    )
    s = (time.perf_counter() - t0) * N_CURVES / n
    rate = N_CURVES * nominal.size / s
    ours = rfit.fit_peaks(X, ys[:n], positions=nominal, roi_padding=PAD)
    ok = ours.converged & (rows[..., 0] > 0)
    dc = np.abs(rows[..., 1] - ours.center)[ok]
    da = (np.abs(rows[..., 0] - ours.area) / ours.area)[ok]
    print(
        f"{'midas-integrate peakfit, 10 peaks':34} {1:7d} {s:9.1f} {rate:12.0f} {rate / scipy_rate:8.1f}x"
        f"   (timed on {n} curves; vs radint: centre max {dc.max():.2e} px, median {np.median(dc):.1e};"
        f" area median {np.median(da):.1e} rel, max {da.max():.1e})"
    )


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return
    n_scipy = 20
    if "--scipy-curves" in sys.argv:
        n_scipy = int(sys.argv[sys.argv.index("--scipy-curves") + 1])
    ys10, nom10 = lineouts(10, seed=1)
    ys20, _ = lineouts(20, seed=2)
    print(f"radint {radint.__version__}; {N_CURVES} lineouts x {X.size} bins, Poisson noise")
    print(f"{'case':34} {'threads':>7} {'seconds':>9} {'peak fits/s':>12} {'vs scipy':>9}")
    scipy_s = scipy_fit_seconds(ys10, nom10, n_scipy) * N_CURVES / n_scipy
    scipy_rate = N_CURVES * 10 / scipy_s
    rows = []
    for threads in (1, 2):
        rfit.fit_peaks(X, ys10[:10], positions=nom10, n_threads=threads)  # warm the pool
        s = best_of(3, lambda t=threads: rfit.fit_peaks(X, ys10, positions=nom10, n_threads=t))
        t = rfit.fit_peaks(X, ys10, positions=nom10, n_threads=threads)
        ok = float(t.converged.mean())
        rows.append((f"10 given peaks ({ok:.1%} converged)", threads, s, N_CURVES * 10 / s))
    for threads in (1, 2):
        rfit.fit_peaks(X, ys20[:10], auto=20, n_threads=threads)
        s = best_of(3, lambda t=threads: rfit.fit_peaks(X, ys20, auto=20, n_threads=t))
        t = rfit.fit_peaks(X, ys20, auto=20, n_threads=threads)
        found = float(np.mean(t.n_found))
        rows.append((f"auto 20 (mean {found:.1f} kept)", threads, s, float(t.n_found.sum()) / s))
    dense, nom_dense = dense_lineouts(seed=3)
    for threads in (1, 2):
        s = best_of(
            3, lambda t=threads: rfit.fit_peaks(X_DENSE, dense, positions=nom_dense, n_threads=t)
        )
        t = rfit.fit_peaks(X_DENSE, dense, positions=nom_dense, n_threads=threads)
        ok = float(t.converged.mean())
        rows.append((f"dense 20 given ({ok:.1%} conv.)*", threads, s, float(t.converged.sum()) / s))
    for threads in (1, 2):
        s = best_of(3, lambda t=threads: rfit.fit_peaks(X_DENSE, dense, auto=20, n_threads=t))
        t = rfit.fit_peaks(X_DENSE, dense, auto=20, n_threads=threads)
        found = float(np.mean(t.n_found))
        rows.append(
            (f"dense auto 20 (mean {found:.1f} kept)*", threads, s, float(t.n_found.sum()) / s)
        )
    for name, threads, s, rate in rows:
        print(f"{name:34} {threads:7d} {s:9.3f} {rate:12.0f} {rate / scipy_rate:8.0f}x")
    print(
        f"* dense: {N_DENSE} lineouts x {X_DENSE.size} bins, 20 peaks 25 bins apart = one 20-peak job each"
    )
    print(
        f"{'scipy least_squares, 10 peaks':34} {1:7d} {scipy_s:9.1f} {scipy_rate:12.0f} {1:8.0f}x"
        f"   (timed on {n_scipy} curves, extrapolated to {N_CURVES})"
    )
    midas_rows(ys10, nom10, scipy_rate)
    cache: dict = {}
    for threads in (1, 2):
        build, s = integrate_seconds(threads, cache)
        one_fit = next(r[2] for r in rows if r[1] == threads) / N_CURVES
        print(
            f"{'integrate 1 Pilatus 2M frame':34} {threads:7d} {s:9.4f}"
            f"   (map build {build:.1f} s at 2 threads; 10-peak fit of its lineout: {one_fit * 1e3:.2f} ms)"
        )


if __name__ == "__main__":
    main()
