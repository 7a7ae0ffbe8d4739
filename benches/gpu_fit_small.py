"""A small run of the CUDA fitting kernel, for the GPU tools (compute-sanitizer, Nsight Compute).

200 synthetic lineouts x 10 positions (doublets and a triplet merged into jobs, a masked stretch,
two positions out of range), fitted by ``CudaFitter`` and by the Rust fitter; prints the status
agreement and the largest centre difference, exits 1 if the statuses differ. Timings are not
printed: under the tools they mean nothing (``benches/gpu.py`` times the fitter).

Run: ``python benches/gpu_fit_small.py [--lineouts 200]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def lineouts(n_curves: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Poisson lineouts of 600 bins: pseudo-Voigt peaks on a sloped background."""
    rng = np.random.default_rng(seed)
    x = np.arange(600.0) * 0.5 + 10
    centres = np.array([40.0, 47.0, 48.8, 90.0, 150.0, 200.0, 203.5, 260.0])
    ys = np.empty((n_curves, x.size))
    for i in range(n_curves):
        y = 50 + 0.05 * x
        for c in centres:
            w, eta = rng.uniform(1, 3), rng.uniform(0, 1)
            s = w / (2 * np.sqrt(2 * np.log(2)))
            d = x - (c + rng.normal(0, 0.1))
            g = np.exp(-0.5 * (d / s) ** 2) / (s * np.sqrt(2 * np.pi))
            lor = (w / 2) / np.pi / (d**2 + (w / 2) ** 2)
            y = y + rng.uniform(500, 3000) * (eta * lor + (1 - eta) * g)
        ys[i] = rng.poisson(y)
    ys[min(3, n_curves - 1), 100:110] = np.nan
    return x, ys, [*(centres + 0.3), 500.0, float("nan")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lineouts", type=int, default=200)
    args = parser.parse_args()
    from radint.fit import fit_peaks
    from radint.gpu.fit import CudaFitter

    x, ys, positions = lineouts(args.lineouts)
    got = CudaFitter(x, positions).fit(ys)
    ref = fit_peaks(x, ys, positions=positions)
    same = np.asarray(got["status"]) == np.asarray(ref.status)
    ok = np.asarray(ref.status) == 0
    dc = np.abs(got["values"][..., 1][ok] - np.asarray(ref.center)[ok])
    print(f"{ys.shape[0]} lineouts x {len(positions)} positions: statuses equal "
          f"{int(same.sum())}/{same.size}, converged {int(ok.sum())}, max |centre GPU - Rust| "
          f"{dc.max() if dc.size else 0.0:.2e}")  # fmt: skip
    return 0 if same.all() else 1


if __name__ == "__main__":
    sys.exit(main())
