"""Receive rate of the TCP source alone: Pilatus 2M uint32 frames sent by ``radint send``'s
code (``send_frames``: a plain TIFF's pixels by ``os.sendfile``) from another process over
loopback into :class:`radint.stream.sources.TcpSource`, whose sink releases each frame at once.

``--connections N`` spreads the frames over N connections (``radint send --connections``), each
received by its own thread of the source. With ``--gil-busy`` another thread of the server holds
the GIL 80 % of the time without using a core (it sleeps inside a C call with the GIL held), as
a pipeline's Python threads do on a machine with cores to spare: the receive loop must not need
the GIL often.

    python benches/tcp_receive.py [--frames 400] [--connections N] [--gil-busy]
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile

from radint.stream.sources import SourceStats, TcpSource

SHAPE = (1679, 1475)  # Pilatus 2M

SENDER = """
from pathlib import Path
from radint.stream.sender import iter_file_frames, send_frames
send_frames(iter_file_frames([Path({tif!r})] * {n}), port={port}, mapping_file=None,
            connections={connections})
"""


def main() -> None:
    """Print frames/s and GB/s received, from the first frame to the last."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--connections", type=int, default=1, help="sender connections")
    ap.add_argument(
        "--gil-busy", action="store_true", help="a thread holds the GIL 80 %% of the time"
    )
    args = ap.parse_args()
    source = TcpSource(SHAPE, host="127.0.0.1", port=0)
    received = 0
    first = last = 0.0
    finished = threading.Event()

    def sink(item) -> bool:
        nonlocal received, first, last
        received += 1
        last = time.perf_counter()
        if received == 1:
            first = last
        item.release()
        if received == args.frames:
            finished.set()
        return True

    stop = threading.Event()

    def hold_gil() -> None:
        libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held during the call
        while not stop.is_set():
            libc.usleep(800)
            time.sleep(0.0002)

    if args.gil_busy:
        threading.Thread(target=hold_gil, daemon=True).start()
    source.start(sink, SourceStats())
    with tempfile.TemporaryDirectory() as tmp:
        tif = Path(tmp) / "frame.tif"
        frame = np.random.default_rng(0).integers(0, 1000, size=SHAPE, dtype=np.uint32)
        tifffile.imwrite(tif, frame)
        code = SENDER.format(tif=str(tif), port=source.port, n=args.frames,
                             connections=args.connections)  # fmt: skip
        sender = subprocess.Popen([sys.executable, "-c", code])
        finished.wait(300)
        stop.set()
        source.stop()
        sender.wait()
    seconds = last - first
    rate = (received - 1) / seconds if seconds > 0 else float("nan")
    gb = rate * np.prod(SHAPE) * 4 / 1e9
    busy = "GIL busy 80 %" if args.gil_busy else "GIL free"
    print(f"tcp receive, {args.connections} connection(s), {busy}: {received} frames, "
          f"{rate:.0f} frames/s, {gb:.2f} GB/s")  # fmt: skip


if __name__ == "__main__":
    main()
