"""Single-frame cost of the integration paths other than the plain one: dark, per-pixel
corrections, float frames (radint only; the peers are timed in compare.py).

Pilatus 2M geometry of compare.py, 1 px x 5 deg cake, one uint32 Poisson frame, Poisson sigma
off. Run: ``python benches/corrections.py [--threads N]``; prints ms per frame (median of 11).
"dark per call" passes the dark to every ``integrate``; "Integrator(dark=)" gives it once, which
lets integer frames take the map with dark and corrections folded in (where the CPU has no
AVX-512 gather kernels; the fold is built on the first frame, outside the timing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import radint
from compare import config_for, frames_for, median_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    config = config_for("Pilatus 2M", "2D")
    frame = frames_for(config, 1)[0]
    dark = np.full(frame.shape, 2.0)
    corrections = {"solid_angle": "midas", "polarization": "midas"}
    fixed_dark = {"dark": dark}
    cases = [
        ("u32, no corrections", {}, frame, None),
        ("u32 + dark per call", {}, frame, dark),
        ("u32 + Integrator(dark=)", fixed_dark, frame, None),
        ("u32 + solid angle + polarization", corrections, frame, None),
        ("u32 + dark per call + corrections", corrections, frame, dark),
        ("u32 + Integrator(dark=) + corrections", {**corrections, **fixed_dark}, frame, None),
        ("f32 frame", {}, frame.astype(np.float32), None),
        ("f32 + dark + corrections", corrections, frame.astype(np.float32), dark),
    ]
    print(f"radint {radint.__version__}, Pilatus 2M 1 px x 5 deg, {args.threads} thread(s)")
    print(f"{'case':40} {'ms/frame':>9}")
    for label, kw, data, d in cases:
        integ = radint.Integrator(config, n_threads=args.threads, error_model=None, **kw)
        t = median_time(lambda integ=integ, data=data, d=d: integ.integrate(data, dark=d), 11)
        print(f"{label:40} {t * 1e3:9.2f}")


if __name__ == "__main__":
    main()
