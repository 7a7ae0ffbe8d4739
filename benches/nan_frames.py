"""Float frames holding NaN / ±inf that move from frame to frame (hot pixels): per-frame time by
NaN count, for the Pilatus 2M example geometry (float32 frames, 2 threads).

Each float frame with k NaN at random pixels (new pixels every frame) is integrated into a
1 px × 5° cake and into a 1 px lineout (η 360°), without and with Poisson σ. k = 0 is the
finite-frame rate the few-NaN path approaches. Rows ``+dark`` add a dark and the solid-angle
and polarization corrections, given once (``Integrator(dark=...)``: folded into the map, the
spoiled bins summed again with the dark per entry) and, for comparison, per call (the
kernels that read dark and corrections per entry and test every value). To compare builds, run
the script under each (e.g. ``PYTHONPATH=/path/to/other/build python benches/nan_frames.py``).

Run: ``python benches/nan_frames.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import radint
from radint import IntegrationConfig, Integrator
from radint.testing import ring_image

ROOT = Path(__file__).resolve().parents[1]
COUNTS = (0, 10, 100, 1000, 5000)


def per_frame_ms(
    integ: Integrator, frames: np.ndarray, rounds: int = 5, calls: int = 16, dark=None
) -> float:
    """Best of ``rounds`` mean times of ``calls`` calls, cycling through ``frames`` (with
    ``dark`` given per call, where one is)."""
    for f in frames:
        integ.integrate(f, dark=dark)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(calls):
            integ.integrate(frames[i % len(frames)], dark=dark)
        best = min(best, (time.perf_counter() - t0) / calls * 1e3)
    return best


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return
    print(f"radint {radint.__version__} from {Path(radint.__file__).parent}")
    print(f"{'map':13} {'sigma':8} " + " ".join(f"{f'k={k}':>8}" for k in COUNTS) + "   (ms/frame)")
    for name, eta in (("cake", 5.0), ("lineout", 360.0)):
        config = IntegrationConfig.from_midas_params(ROOT / "examples" / "parameters.txt")
        config = config.replace(mask_file="", eta_bin_deg=eta)
        rng = np.random.default_rng(0)
        base = rng.poisson(ring_image(config, dtype=np.float64), (8, *config.shape))
        base = base.astype(np.float32)
        corrected = config.replace(solid_angle_correction=True, polarization_correction=True)
        dark = rng.normal(3.0, 1.0, config.shape)
        runs = [(name, model, Integrator(config, n_threads=2, error_model=model), None)
                for model in (None, "poisson")]  # fmt: skip
        with_dark = Integrator(corrected, n_threads=2, error_model="poisson", dark=dark)
        runs += [(f"{name}+dark", "poisson", with_dark, None),
                 (f"{name}+dark", "per call", with_dark, dark.copy())]  # fmt: skip
        for label, model, integ, per_call in runs:
            row = []
            for k in COUNTS:
                frames = base.copy()
                for f in frames:
                    f.reshape(-1)[rng.choice(f.size, k, replace=False)] = np.nan
                row.append(per_frame_ms(integ, frames, dark=per_call))
            print(f"{label:13} {model or 'none':8} " + " ".join(f"{t:8.2f}" for t in row))


if __name__ == "__main__":
    main()
