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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lineouts", type=int, default=200)
    args = parser.parse_args()
    from radint.fit import fit_peaks
    from radint.gpu.fit import CudaFitter
    from radint.testing import peak_lineouts

    x, ys, positions = peak_lineouts(args.lineouts, seed=7)
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
