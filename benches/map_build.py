"""Map build benchmark: radint vs midas-integrate (when installed) on the Pilatus 2M example.

Run: python benches/map_build.py   (prints one table; midas-integrate is the `bench` extra)
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import radint
from radint import DetectorMap, IntegrationConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "parameters.txt"
CASES = [("1 px x 5 deg", {"r_bin_px": 1.0, "eta_bin_deg": 5.0}),
         ("0.25 px x 1 deg", {"r_bin_px": 0.25, "eta_bin_deg": 1.0})]  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def midas_build_seconds(config: IntegrationConfig) -> float | None:
    try:
        from midas_integrate.detector_mapper import build_map
        from midas_integrate.params import parse_params
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "p.txt"
        p.write_text(config.replace(mask_file="").midas_text())
        params = parse_params(str(p))
        build_map(params)  # warm-up (numba compile)
        t0 = time.perf_counter()
        build_map(params)
        return time.perf_counter() - t0


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return
    base = IntegrationConfig.from_midas_params(EXAMPLE).replace(mask_file="")
    print(f"radint {radint.__version__}; Pilatus 2M 1475x1679")
    print(
        f"{'binning':18} {'threads':>7} {'radint s':>9} {'entries':>10} {'RSS MB':>7} {'midas s':>8} {'ratio':>6} {'cache load s':>12}"
    )
    for name, change in CASES:
        cfg = base.replace(**change)
        midas = midas_build_seconds(cfg) if "--with-midas" in sys.argv else None
        for threads in (1, 2):
            t0 = time.perf_counter()
            m = DetectorMap.build(cfg, n_threads=threads)
            dt = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as d:
                m.save(Path(d) / "m.npz")
                t1 = time.perf_counter()
                DetectorMap.load(Path(d) / "m.npz")
                load = time.perf_counter() - t1
            ratio = f"{midas / dt:6.1f}" if midas else "   n/a"
            ms = f"{midas:8.2f}" if midas else "     n/a"
            print(
                f"{name:18} {threads:7d} {dt:9.3f} {m.n_entries:10d} {peak_rss_mb():7.0f} {ms} {ratio} {load:12.3f}"
            )


if __name__ == "__main__":
    main()
