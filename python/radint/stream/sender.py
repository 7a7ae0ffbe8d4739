"""``radint send``: frames from files to a MIDAS-protocol TCP server (spec §7.1).

Compatible with MIDAS ``integrator_server.py``: same wire format and dtype mapping, ``--compress``
(uint16, or hybrid dtype 6 when a pixel exceeds 65535), ``dataset_num`` counting mod 65536, a
reader thread feeding a 5-frame queue, and the frame-mapping JSON
``{"<frame_index>": {"dataset_num", "filename", "timestamp"}}`` written atomically every
``save_interval`` frames and at the end.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from radint.exceptions import RadintError
from radint.stream.protocol import encode_frame
from radint.stream.sources import DEFAULT_HOST, DEFAULT_PORT

log = logging.getLogger("radint.stream")

__all__ = ["expand_inputs", "iter_file_frames", "send_frames", "write_mapping"]

_FRAME_SUFFIXES = (".tif", ".tiff", ".h5", ".hdf5", ".hdf", ".nxs", ".npy")
_HDF5 = (".h5", ".hdf5", ".hdf", ".nxs")


def expand_inputs(paths: Iterable[str | Path], extension: str | None = None) -> list[Path]:
    """Files to send: given files as is; directories → their frame files sorted by name
    (case-insensitive suffix match; ``extension`` restricts to one suffix)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            suffixes = (f".{extension.lower().lstrip('.')}",) if extension else _FRAME_SUFFIXES
            out += sorted(
                (c for c in p.iterdir() if c.is_file() and c.suffix.lower() in suffixes),
                key=lambda c: c.name,
            )
        elif p.exists():
            out.append(p)
        else:
            raise RadintError(f"{p}: no such file or directory")
    return out


def iter_file_frames(
    paths: Iterable[Path], h5_location: str = "exchange/data"
) -> Iterator[tuple[np.ndarray, str]]:
    """``(frame, mapping filename)`` for every frame, named as MIDAS's sender names them:
    ``base`` (one-frame file), ``base:frameK`` (multi-frame), ``base:loc`` / ``base:loc:frameK``
    (HDF5)."""
    from radint.io import count_frames, read_frames

    for path in paths:
        if path.suffix.lower() == ".npy":
            data = np.load(path, mmap_mode="r")
            stack = data[np.newaxis] if data.ndim == 2 else data
            for k, frame in enumerate(stack):
                yield np.asarray(frame), path.name if len(stack) == 1 else f"{path.name}:frame{k}"
            continue
        is_h5 = path.suffix.lower() in _HDF5
        dataset = h5_location if is_h5 else None
        n = count_frames(path, dataset=dataset)
        for fr in read_frames(path, dataset=dataset):
            base = f"{path.name}:{h5_location}" if is_h5 else path.name
            yield fr.data, base if n == 1 else f"{base}:frame{fr.index}"


def write_mapping(mapping: dict[int, dict[str, object]], path: str | Path) -> None:
    """Write the frame-mapping JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump({str(k): v for k, v in mapping.items()}, f, indent=1)
    os.replace(tmp, path)


def _sendmsg_all(sock: socket.socket, buffers: list[memoryview | bytes]) -> None:
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        sent = sock.sendmsg(views)
        while sent and views:
            if sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def send_frames(
    frames: Iterable[tuple[np.ndarray, str]],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    compress: bool = False,
    mapping_file: str | Path | None = "frame_mapping.json",
    save_interval: int = 500,
    shape: tuple[int, int] | None = None,
    first_dataset_num: int = 0,
    connect_timeout: float = 10.0,
) -> int:
    """Send frames over one connection; returns the number sent.

    Parameters
    ----------
    frames : iterable of (ndarray, str)
        Frame (n_z, n_y) and its name for the mapping file.
    host, port : str, int
    compress : bool
        MIDAS ``--compress``: uint16, or hybrid (dtype 6) when a value exceeds 65535.
    mapping_file : path or None
        Frame-mapping JSON (None: none written).
    save_interval : int
        Rewrite the mapping file every this many frames.
    shape : (n_z, n_y), optional
        Expected frame shape (the receiver's NrPixelsZ, NrPixelsY); others raise RadintError
        before anything is sent for that frame.
    """
    items: queue.Queue[tuple[np.ndarray, str] | BaseException | None] = queue.Queue(maxsize=5)
    stop = threading.Event()

    def reader() -> None:
        try:
            for item in frames:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(None)
        except BaseException as e:  # handed to the sending thread, which re-raises
            items.put(e)

    sock = socket.create_connection((host, port), timeout=connect_timeout)
    sock.settimeout(None)
    t = threading.Thread(target=reader, name="radint-send-reader", daemon=True)
    t.start()
    mapping: dict[int, dict[str, object]] = {}
    n = 0
    try:
        while (item := items.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            data, name = item
            if shape is not None and tuple(data.shape) != tuple(shape):
                raise RadintError(
                    f"{name}: frame shape {data.shape} differs from the parameter file's {shape}"
                )
            dataset_num = (first_dataset_num + n) % 65536
            header, payload = encode_frame(dataset_num, data, compress)
            _sendmsg_all(sock, [header, *payload])
            mapping[n] = {"dataset_num": dataset_num, "filename": name, "timestamp": time.time()}
            n += 1
            if mapping_file is not None and n % save_interval == 0:
                write_mapping(mapping, mapping_file)
    finally:
        stop.set()
        sock.close()
        if mapping_file is not None:
            write_mapping(mapping, mapping_file)
    log.info("send: %d frame(s) to %s:%d", n, host, port)
    return n
