"""Error models side by side: radint's Poisson and azimuthal sigmas against pyFAI's
``error_model="azimuthal"`` (full-split CSR, unweighted average: radint's mean) on the same
synthetic Pilatus 2M CeO2 frame, 1-D (3 000 2θ bins) and 2-D (1 px × 5°). One table of median
ms per frame; pyFAI's integrator is built once before timing (its first call is not counted).

Run: ``python benches/error_models.py [--threads N]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import config_for, frames_for, median_time


def radint_call(config, frame, error_model: str, threads: int):
    from radint import Integrator

    integ = Integrator(config, n_threads=threads, error_model=error_model, fit=None)
    integ.integrate(frame)
    return lambda: integ.integrate(frame)


def pyfai_call(config, frame, error_model: str, task: str):
    import pyFAI
    from pyFAI.method_registry import IntegrationMethod

    from radint.poni import write_poni

    with tempfile.TemporaryDirectory() as tmp:
        write_poni(config, Path(tmp) / "g.poni")
        ai = pyFAI.load(str(Path(tmp) / "g.poni"))
    method = IntegrationMethod.select_one_available(("full", "csr", "cython"), dim=int(task[0]))
    kw = dict(method=method.unweighted, correctSolidAngle=False, error_model=error_model)
    if task == "1D":
        rng = (config.tth_min_deg, config.tth_max_deg)

        def call():
            return ai.integrate1d(frame, 3000, unit="2th_deg", radial_range=rng, **kw)
    else:
        px_mm = config.pixel_size_y_um / 1e3
        rng = (config.r_min_px * px_mm, config.r_max_px * px_mm)
        n_r = round(config.r_max_px - config.r_min_px)

        def call():
            return ai.integrate2d(frame, n_r, 72, unit="r_mm", radial_range=rng, **kw)

    call()
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rows = []
    for task in ("1D", "2D"):
        config = config_for("Pilatus 2M", task)
        frame = frames_for(config, 1)[0]
        cases = [
            ("radint poisson", radint_call, "poisson"),
            ("radint azimuthal", radint_call, "azimuthal"),
            ("pyFAI poisson", pyfai_call, "poisson"),
            ("pyFAI azimuthal", pyfai_call, "azimuthal"),
        ]
        for name, make, model in cases:
            extra = args.threads if make is radint_call else task
            ms = 1e3 * median_time(make(config, frame, model, extra), args.repeats)
            rows.append((task, name, ms))
    print(f"Pilatus 2M uint32, {args.threads} threads, median ms per frame")
    print(f"{'task':4}  {'case':18}  {'ms':>8}  {'vs radint azimuthal':>20}")
    for task, name, ms in rows:
        ref = next(m for t, n, m in rows if t == task and n == "radint azimuthal")
        print(f"{task:4}  {name:18}  {ms:8.1f}  {ms / ref:20.2f}")


if __name__ == "__main__":
    main()
