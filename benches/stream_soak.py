"""Streaming soak: memory must stay bounded while ``radint send`` → ``radint stream`` runs at full
rate for a long time (the issue's 10 minutes by default).

Pilatus 2M uint32 frames from the bundled example are sent in a loop by a separate sender process
to the real Pipeline (TCP source → queue → Integrator → NeXus writer, written in place). Every
``--every`` seconds the server's resident memory (VmRSS) and the frame counters are printed; at
the end, the RSS growth after the first minute and the summary line.

Run: python benches/stream_soak.py [--seconds 600] [--every 30]
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
import sys, time, numpy as np, tifffile
from radint.stream.sender import send_frames
frame = np.ascontiguousarray(tifffile.imread(sys.argv[1])[0], dtype=np.uint32)
stop = time.monotonic() + float(sys.argv[3])
def frames():
    i = 0
    while time.monotonic() < stop:
        yield frame, f"f{i}"
        i += 1
send_frames(frames(), port=int(sys.argv[2]), mapping_file=None)
"""


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--every", type=float, default=30.0)
    args = ap.parse_args()
    config = IntegrationConfig.from_midas_params(EXAMPLES / "parameters.txt")
    image = EXAMPLES / "ceo2_pilatus.tif"
    with tempfile.TemporaryDirectory() as tmp:
        integ = Integrator(config, backend="cpu", cache_dir=Path(tmp) / "c")
        integ.integrate(np.asarray(tifffile.imread(image)[0], dtype=np.uint32))
        src = TcpSource(config.shape, port=0)
        pipe = Pipeline(integ, [src], Path(tmp) / "out", idle_timeout=10)
        pipe.start()
        cmd = [sys.executable, "-c", SENDER, str(image), str(src.port), str(args.seconds)]
        sender = subprocess.Popen(cmd)
        t0 = time.monotonic()
        samples: list[tuple[float, float, int]] = []
        print(f"{'t (s)':>7} {'RSS (MB)':>9} {'written':>8} {'frames/s':>9} {'queue':>6}")
        last_t, last_n = t0, 0
        while sender.poll() is None:
            time.sleep(args.every)
            now, n = time.monotonic(), pipe.written
            samples.append((now - t0, rss_mb(), n))
            rate = (n - last_n) / (now - last_t)
            print(
                f"{now - t0:7.0f} {samples[-1][1]:9.0f} {n:8d} {rate:9.1f} {pipe.frames.qsize():6d}"
            )
            last_t, last_n = now, n
        summary = pipe.wait(120)
    later = [s for s in samples if s[0] >= 60] or samples
    growth = later[-1][1] - later[0][1] if later else float("nan")
    print(f"RSS after the first minute: {later[0][1]:.0f} MB -> {later[-1][1]:.0f} MB "
          f"({growth:+.0f} MB over {later[-1][0] - later[0][0]:.0f} s)")  # fmt: skip
    print(summary.line() if summary else "pipeline did not drain")


if __name__ == "__main__":
    main()
