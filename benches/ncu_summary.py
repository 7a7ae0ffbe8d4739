"""One line per kernel launch from an Nsight Compute ``--csv`` log (``benches/gpu_device.sh``):
launch id, kernel, device time and DRAM bytes read / written, and the achieved DRAM rate.

Usage: ``python benches/ncu_summary.py ncu.csv``
"""

from __future__ import annotations

import csv
import sys

_SCALE = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0,
          "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    with open(argv[0]) as f:
        rows = [line for line in f if line.startswith('"')]  # ncu's own log lines start with ==
    launches: dict[str, dict[str, float | str]] = {}
    for r in csv.DictReader(rows):
        k = launches.setdefault(r["ID"], {"name": r["Kernel Name"].split("(")[0][:36]})
        value = float(r["Metric Value"].replace(",", ""))
        k[r["Metric Name"]] = value * _SCALE.get(r["Metric Unit"], 1.0)
    print(f"{'id':>3} {'kernel':36} {'time us':>9} {'read MB':>9} {'write MB':>9} {'GB/s':>7}")
    for i, k in launches.items():
        t = float(k.get("gpu__time_duration.sum", float("nan")))
        rd = float(k.get("dram__bytes_read.sum", float("nan")))
        wr = float(k.get("dram__bytes_write.sum", float("nan")))
        print(f"{i:>3} {k['name']:36} {t * 1e6:9.1f} {rd / 1e6:9.2f} {wr / 1e6:9.2f} "
              f"{(rd + wr) / t / 1e9:7.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
