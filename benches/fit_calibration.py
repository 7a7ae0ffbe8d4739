"""Monte-Carlo calibration of the peak fitter's standard errors (``*_err`` columns).

Run: python benches/fit_calibration.py [--n 500] [--seed 1] [--quick]   (prints one table)

Synthetic lineouts are made the way an integrated lineout is: the value of a bin is the mean of
the profile over the bin (the TCH pseudo-Voigt of spec §6.1 integrated exactly over each bin with
erf / arctan, not sampled at the bin centre), plus a constant + sloped background, scaled to
counts, with Poisson noise. Each configuration is ``--n`` noise realisations, each with its own
peak centre at a uniform random sub-bin offset. Every realisation is fitted with
``radint.fit.fit_peaks`` at the nominal position (ROI padding ``max(20, 3·FWHM)`` bins so the
background is not asked to take up the tails of the wide peaks).

For each fitted quantity q the pull is ``(q_fit − q_true) / q_err`` over the converged fits with a
finite error. A calibrated error gives pull std ≈ 1 and a bias-free fit pull mean ≈ 0 (|mean|
≫ 0.1 is a bias of that many standard errors). Columns:

* ``conv``: fraction of realisations that converged with finite errors for centre, area, FWHM;
* ``<q> sd/mu``: std and mean of the pulls of centre, area, FWHM (pulls clipped at ±20 before the
  std so that one runaway fit does not decide it; the number clipped is small and listed in
  ``out``);
* ``scat/err``: scatter of the fitted centre (std of fit − truth) over the median reported error.

Configurations: FWHM 0.3 … 20 bins, two shapes (``mix``: F_G = F_L, η ≈ 0.68; ``gauss``: F_L =
F_G/10, η ≈ 0.1), peak S/N (height over √background) 8 and 60, background 20 and 500 counts.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
from scipy.special import erf

import radint.fit as rfit

LN2 = math.log(2)
N_BINS = 161
MID = 80.0


def tch(sig: float, gam: float) -> tuple[float, float]:
    """Γ and η of the TCH pseudo-Voigt (spec §6.1), centi-scaled widths."""
    fg = math.sqrt(8 * LN2 * sig) / 100
    fl = gam / 100
    g5 = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3
          + 0.07842 * fg * fl**4 + fl**5)  # fmt: skip
    gamma = g5**0.2
    q = fl / gamma
    return gamma, min(max(1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3, 0.0), 1.0)


def widths(fwhm: float, shape: str) -> tuple[float, float]:
    """Centi-scaled (sig, gam) of total FWHM ``fwhm`` with F_L/F_G = 1 (mix) or 0.1 (gauss)."""
    ratio = {"mix": 1.0, "gauss": 0.1}[shape]
    g1, _ = tch((100.0**2) / (8 * LN2), 100.0 * ratio)  # Γ for F_G = 1
    fg = fwhm / g1
    return (fg * 100) ** 2 / (8 * LN2), fg * ratio * 100


def bin_means(edges: np.ndarray, c: float, gamma: float, eta: float) -> np.ndarray:
    """Mean of the unit-area pV (single total Γ) over each bin [edges[i], edges[i+1])."""
    s = gamma / (2 * math.sqrt(2 * LN2))
    h = gamma / 2
    gcdf = 0.5 * (1 + erf((edges - c) / (s * math.sqrt(2))))
    lcdf = np.arctan((edges - c) / h) / math.pi
    cdf = eta * lcdf + (1 - eta) * gcdf
    return np.diff(cdf) / np.diff(edges)


def simulate(rng, n, fwhm, shape, snr, bg, scale=1.0):
    """n lineouts and their truths: (x, ys, truth dict of arrays)."""
    x = np.arange(N_BINS, dtype=np.float64)
    edges = np.append(x - 0.5, x[-1] + 0.5)
    sig, gam = widths(fwhm, shape)
    gamma, eta = tch(sig, gam)
    # Peak height of the bin-averaged profile ~ area / max(Γ, 1 bin).
    area = snr * math.sqrt(bg) * max(gamma, 1.0)
    background = bg * (1 + 0.2 * (x - MID) / N_BINS)
    centres = MID + rng.uniform(-0.5, 0.5, n)
    ys = np.empty((n, N_BINS))
    for i, c in enumerate(centres):
        expect = background + area * bin_means(edges, c, gamma, eta)
        ys[i] = rng.poisson(expect) / scale
    truth = {
        "area": np.full(n, area / scale),
        "center": centres,
        "fwhm": np.full(n, gamma),
        "sig": np.full(n, sig),
        "gam": np.full(n, gam),
        "eta_mix": np.full(n, eta),
    }
    return x, ys, truth


def pulls(table, truth, col):
    fit = np.asarray(getattr(table, col))[:, 0]
    err = np.asarray(getattr(table, f"{col}_err"))[:, 0]
    ok = (table.status[:, 0] == 0) & np.isfinite(err) & (err > 0)
    return fit, err, ok


def summarise(table, truth):
    out = {}
    ok_all = np.ones(table.status.shape[0], bool)
    for col in ("center", "area", "fwhm"):
        _, _, ok = pulls(table, truth, col)
        ok_all &= ok
    out["conv"] = ok_all.mean()
    clipped = 0
    for col in ("center", "area", "fwhm", "sig", "gam", "eta_mix"):
        fit, err, ok = pulls(table, truth, col)
        ok &= ok_all
        if ok.sum() < 10:
            out[col] = (math.nan, math.nan, math.nan)
            continue
        p = (fit[ok] - truth[col][ok]) / err[ok]
        clipped += int((np.abs(p) > 20).sum()) if col in ("center", "area", "fwhm") else 0
        p = np.clip(p, -20, 20)
        scatter = np.std(fit[ok] - truth[col][ok])
        out[col] = (float(np.std(p)), float(np.mean(p)), float(scatter / np.median(err[ok])))
    out["out"] = clipped
    return out


CONFIGS = [
    (fwhm, shape, snr, bg)
    for shape in ("mix", "gauss")
    for fwhm in (0.3, 0.5, 0.8, 1.2, 2.0, 4.0, 8.0, 20.0)
    for snr in (8, 60)
    for bg in (20, 500)
]
QUICK = [
    (fwhm, shape, snr, bg)
    for shape in ("mix",)
    for fwhm in (0.3, 0.8, 2.0, 8.0)
    for snr in (8, 60)
    for bg in (20,)
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="noise realisations per configuration")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a few configurations only")
    ap.add_argument("--scale", type=float, default=1.0, help="divide counts by this (a mean)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    head = (f"{'fwhm':>5} {'shape':>5} {'S/N':>3} {'bg':>4} {'conv':>5}  "
            f"{'center sd/mu':>13} {'scat/err':>8}  {'area sd/mu':>13}  {'fwhm sd/mu':>13}  "
            f"{'eta sd/mu':>13} {'out':>3}")  # fmt: skip
    print(head)
    t0 = time.perf_counter()
    n_fits = 0
    for fwhm, shape, snr, bg in QUICK if args.quick else CONFIGS:
        x, ys, truth = simulate(rng, args.n, fwhm, shape, snr, bg, args.scale)
        pad = max(20, math.ceil(3 * fwhm))
        table = rfit.fit_peaks(x, ys, positions=[MID], roi_padding=pad)
        n_fits += args.n
        s = summarise(table, truth)

        def cell(col: str, s: dict = s) -> str:
            sd, mu, _ = s[col]
            return f"{sd:6.2f}/{mu:+6.2f}"

        print(
            f"{fwhm:5.1f} {shape:>5} {snr:3d} {bg:4d} {s['conv']:5.0%}  {cell('center')} "
            f"{s['center'][2]:8.2f}  {cell('area')}  {cell('fwhm')}  {cell('eta_mix')} "
            f"{s['out']:3d}"
        )
        sys.stdout.flush()
    dt = time.perf_counter() - t0
    print(f"# {n_fits} fits in {dt:.1f} s (data generation included), seed {args.seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
