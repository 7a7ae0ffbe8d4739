"""radint's CPU kernel families side by side on compare.py's frames: one table.

The engine picks, per call, gathers (AVX-512 with fast gathers), runs (AVX-512 whose gathers are
slowed by Intel's Gather Data Sampling mitigation) or the scalar loop (no AVX-512, MIDAS
weights). ``RADINT_GATHER`` / ``RADINT_RUNS`` force each family here, so one machine shows what
another CPU would run. Rounds alternate the families because VM speed drifts within minutes;
the table gives each family's median over rounds.

Run: ``python benches/kernels.py [--rounds N] [--threads T]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = {"scalar": ("0", "0"), "runs": ("0", "1"), "gather": ("1", "1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cases = [(d, t) for d in ("Pilatus 2M", "Eiger 4M") for t in ("2D", "1D")]
    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for detector, task in cases:
            for family, (gather, runs) in FAMILIES.items():
                case = {"peer": "radint", "detector": detector, "task": task,
                        "threads": args.threads, "n_stack": 20, "repeats": 9}  # fmt: skip
                env = dict(os.environ, RADINT_GATHER=gather, RADINT_RUNS=runs,
                           RAYON_NUM_THREADS=str(args.threads))  # fmt: skip
                proc = subprocess.run(
                    [sys.executable, str(HERE / "compare.py"), "--case", json.dumps(case)],
                    capture_output=True, text=True, env=env, timeout=1800, check=True,
                )  # fmt: skip
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                times.setdefault((detector, task, family), []).append(
                    (r["frame_ms"], r["stack_fps"])
                )
                print(f"# {detector} {task} {family}: {r['frame_ms']:.2f} ms", file=sys.stderr)
    header = (
        f"{'detector':11} {'task':4} {'kernel':7} {'ms/frame':>9} {'stack f/s':>9} {'vs scalar':>9}"
    )
    print(f"{args.threads} threads, medians of {args.rounds} alternating rounds")
    print(header)
    print("-" * len(header))
    for detector, task in cases:
        scalar_ms = statistics.median(t[0] for t in times[(detector, task, "scalar")])
        for family in FAMILIES:
            ms = statistics.median(t[0] for t in times[(detector, task, family)])
            fps = statistics.median(t[1] for t in times[(detector, task, family)])
            print(f"{detector:11} {task:4} {family:7} {ms:9.2f} {fps:9.1f} {scalar_ms / ms:8.2f}x")


if __name__ == "__main__":
    main()
