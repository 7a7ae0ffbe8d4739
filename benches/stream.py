"""Streaming benchmark: sustained frames/s of ``radint send`` → ``radint stream`` on loopback.

Pilatus 2M uint32 frames (the bundled example), CPU backend, next to the integrate-only rate of
the same Integrator on the same frame. The sender runs in its own process (as ``radint send``
would); the server is the real Pipeline (TCP source → queue → Integrator → NeXus writer).

Run: python benches/stream.py [--frames 200] [--threads N] [--compress]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from radint import IntegrationConfig
from radint.integrator import Integrator
from radint.stream import Pipeline, TcpSource

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SENDER = """
import sys, numpy as np, tifffile
from radint.stream.sender import send_frames
frame = np.ascontiguousarray(tifffile.imread(sys.argv[1])[0], dtype=np.uint32)
n, port, compress = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
send_frames(((frame, f"f{i}") for i in range(n)), port=port, compress=compress, mapping_file=None)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compress", action="store_true")
    args = ap.parse_args()

    config = IntegrationConfig.from_midas_params(EXAMPLES / "parameters.txt")
    image = EXAMPLES / "ceo2_pilatus.tif"
    frame = np.ascontiguousarray(tifffile.imread(image)[0], dtype=np.uint32)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        integ = Integrator(config, backend="cpu", n_threads=args.threads, cache_dir=Path(tmp) / "c")
        print(f"map: {time.perf_counter() - t0:.1f} s; frame {frame.shape} {frame.dtype}")

        integ.integrate(frame)
        n_only = max(20, args.frames // 4)
        t0 = time.perf_counter()
        for _ in range(n_only):
            integ.integrate(frame)
        only = n_only / (time.perf_counter() - t0)

        src = TcpSource(config.shape, port=0)
        pipe = Pipeline(integ, [src], Path(tmp) / "out", max_frames=args.frames, idle_timeout=60)
        pipe.start()
        cmd = [sys.executable, "-c", SENDER, str(image), str(args.frames), str(src.port)]
        cmd.append("1" if args.compress else "0")
        sender = subprocess.Popen(cmd)
        # Sustained rate: from the first frame's arrival to the last one written (the sender's
        # interpreter start-up and imports are not part of streaming).
        deadline = time.monotonic() + 120
        while pipe.stats.received == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        t0 = time.perf_counter()
        summary = pipe.wait(600)
        wall = time.perf_counter() - t0
        sender.wait(60)
        assert summary is not None and summary.written == args.frames, summary
        stream = (args.frames - 1) / wall

    print(f"{'mode':<34}{'frames/s':>10}")
    print(f"{'integrate only (cpu)':<34}{only:>10.1f}")
    label = f"send -> stream (cpu{', --compress' if args.compress else ''})"
    print(f"{label:<34}{stream:>10.1f}   ({100 * stream / only:.0f} % of integrate-only)")
    print(summary.line())


if __name__ == "__main__":
    main()
