"""``radint send``: frames from files to a MIDAS-protocol TCP server (spec §7.1).

Compatible with MIDAS ``integrator_server.py``: same wire format and dtype mapping, ``--compress``
(uint16, or hybrid dtype 6 when a pixel exceeds 65535), ``dataset_num`` counting mod 65536, a
reader thread feeding a 5-frame queue, and the frame-mapping JSON
``{"<frame_index>": {"dataset_num", "filename", "timestamp"}}`` written atomically every
``save_interval`` frames and at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radint.exceptions import RadintError
from radint.io.errors import ReaderError
from radint.io.hdf5 import group_frames, group_members, stored_ndim
from radint.stream.protocol import HEADER, encode_frame, sender_encoding
from radint.stream.sources import DEFAULT_HOST, DEFAULT_PORT

log = logging.getLogger("radint.stream")

__all__ = [
    "FileFrame",
    "SendInterrupted",
    "expand_inputs",
    "iter_file_frames",
    "send_frames",
    "write_mapping",
]


@dataclass(frozen=True)
class FileFrame:
    """A frame whose pixels lie in a file in one piece, as plain little-endian pixels: sent
    with ``os.sendfile`` from the page cache, so the sender neither reads nor copies it (a 10 MB
    Pilatus frame cost ~2 ms of CPU to read and ~3 ms to copy into a loopback socket).

    Attributes
    ----------
    path : Path
        The file holding the frame.
    offset : int
        Byte offset of the frame's first pixel in the file.
    dtype : numpy.dtype
        The stored pixel type (little-endian or single-byte: sent as stored).
    shape : (int, int)
        Frame shape ``(n_z, n_y)`` in pixels, stored row-major.
    """

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Payload size in bytes."""
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def read(self) -> np.ndarray:
        """The frame as an array (for encodings that need the values, e.g. ``--compress``).

        Raises
        ------
        ReaderError
            The file ends before the frame does.
        """
        count = self.shape[0] * self.shape[1]
        data = np.fromfile(self.path, dtype=self.dtype, count=count, offset=self.offset)
        if data.size != count:
            raise ReaderError(
                f"{self.path}: frame is truncated: {self.nbytes} bytes expected from byte "
                f"{self.offset}, the file holds {data.nbytes}"
            )
        return data.reshape(self.shape)


_FRAME_SUFFIXES = (".tif", ".tiff", ".h5", ".hdf5", ".hdf", ".nxs", ".npy")
_HDF5 = (".h5", ".hdf5", ".hdf", ".nxs")
#: GE detector files: .ge, .ge1 ... .ge5 (no shape in their header: the detector's is used).
_GE = re.compile(r"\.ge\d*$", re.IGNORECASE)


def expand_inputs(paths: Iterable[str | Path], extension: str | None = None) -> list[Path]:
    """Files to send: given files as is; directories → their frame files sorted by name
    (case-insensitive suffix match; ``extension`` restricts to one suffix). Hidden files in a
    directory (``.name``: copies in progress, editor and rsync temporaries) are left out, as
    ``radint integrate`` and the folder stream leave them out.

    Parameters
    ----------
    paths : iterable of str or Path
        Files and directories, in order; a directory is expanded in place (its files only,
        not its subdirectories).
    extension : str, optional
        Only files of this suffix from directories (``"tif"`` or ``".tif"``, any case).
        Default None: TIFF, HDF5 (``.h5``, ``.hdf5``, ``.hdf``, ``.nxs``), ``.npy`` and GE
        (``.ge``, ``.ge1`` ...) files.

    Returns
    -------
    list of Path
        The files, each directory's sorted by file name.

    Raises
    ------
    RadintError
        A path that does not exist.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            suffixes = (f".{extension.lower().lstrip('.')}",) if extension else _FRAME_SUFFIXES
            out += sorted(
                (
                    c
                    for c in p.iterdir()
                    if c.is_file()
                    and not c.name.startswith(".")
                    and (c.suffix.lower() in suffixes or (not extension and _GE.search(c.name)))
                ),
                key=lambda c: c.name,
            )
        elif p.exists():
            out.append(p)
        else:
            raise RadintError(f"{p}: no such file or directory")
    return out


def iter_file_frames(
    paths: Iterable[Path],
    h5_location: str = "exchange/data",
    shape: tuple[int, int] | None = None,
) -> Iterator[tuple[np.ndarray | FileFrame, str]]:
    """``(frame, mapping filename)`` for every frame, named as MIDAS's sender names them:
    ``base`` (one-frame file), ``base:frameK`` (multi-frame), ``base:loc`` / ``base:loc:frameK``
    (HDF5). Frames stored as plain pixels (uncompressed TIFF, unfiltered HDF5, GE/raw) come as
    :class:`FileFrame` (where they lie, not read here); the others are decoded arrays.
    ``shape``: the detector's frame shape, which GE files (no shape in their header) take.

    Parameters
    ----------
    paths : iterable of Path
        Frame files, in order (e.g. from :func:`expand_inputs`). A ``.npy`` file holds one
        2-D frame or a stack along axis 0.
    h5_location : str
        Dataset (or group of datasets) holding the frames in HDF5 files; default
        ``"exchange/data"`` (MIDAS's).
    shape : (int, int), optional
        The detector's frame shape ``(n_z, n_y)`` in pixels, for GE files only.

    Yields
    ------
    (ndarray or FileFrame, str)
        Each frame, ``(n_z, n_y)``, and its name for the mapping file.

    Raises
    ------
    ReaderError
        A frame that is not 2-D (and the readers' own errors for unreadable files).
    """
    from radint.io import open_frames

    for path in paths:
        if path.suffix.lower() == ".npy":
            data = np.load(path, mmap_mode="r")
            stack = data[np.newaxis] if data.ndim == 2 else data
            for k, frame in enumerate(stack):
                yield np.asarray(frame), path.name if len(stack) == 1 else f"{path.name}:frame{k}"
            continue
        is_h5 = path.suffix.lower() in _HDF5
        base = f"{path.name}:{h5_location}" if is_h5 else path.name
        if is_h5 and (members := group_members(path, h5_location)) is not None:
            yield from group_frames(path, h5_location, members, base)
            continue
        ge = _GE.search(path.name) is not None
        with open_frames(
            path, dataset=h5_location if is_h5 else None, shape=shape if ge else None
        ) as source:
            # MIDAS names every frame of a GE file and of a 3-D HDF5 dataset ":frameK", even a
            # lone one; a 2-D dataset and a one-frame TIFF go by their name alone.
            numbered = source.n_frames > 1 or ge or (is_h5 and stored_ndim(path, h5_location) >= 3)
            for index in source.default_indices():
                name = f"{base}:frame{index}" if numbered else base
                extent = source.plain_extent(index)
                if extent is not None and sys.byteorder == "little":  # native = wire order
                    shape = (int(source.frame_shape[0]), int(source.frame_shape[1]))
                    yield FileFrame(path, extent[0], np.dtype(extent[1]), shape), name
                    continue
                data = source.read(index)
                if data.ndim != 2:
                    raise ReaderError(
                        f"{source.label}: frame {index} has shape {data.shape}, not 2-D"
                    )
                yield data, name


def write_mapping(mapping: dict[int, dict[str, object]], path: str | Path) -> None:
    """Write the frame-mapping JSON atomically (temporary file + rename).

    Parameters
    ----------
    mapping : dict of int to dict
        Frame index (0-based, in sending order) → ``{"dataset_num", "filename",
        "timestamp"}`` (the wire's dataset number, the frame's name, the send time in seconds
        since the epoch); the keys are written as strings.
    path : str or Path
        The JSON file (replaced if it exists); the temporary ``.<name>.tmp`` lies beside it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump({str(k): v for k, v in mapping.items()}, f, indent=1)
    os.replace(tmp, path)


class _FileSender:
    """Sends :class:`FileFrame` payloads with ``os.sendfile``, keeping the last file open (the
    frames of a multi-frame file follow each other)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.path: Path | None = None
        self.fd = -1

    def send(self, header: bytes, frame: FileFrame) -> None:
        if frame.path != self.path:
            self.close()
            self.fd = os.open(frame.path, os.O_RDONLY)
            self.path = frame.path
        end = frame.offset + frame.nbytes
        size = os.fstat(self.fd).st_size
        if end > size:  # checked before the header goes out: the stream stays in step
            raise ReaderError(
                f"{frame.path}: frame is truncated: {frame.nbytes} bytes expected from byte "
                f"{frame.offset}, the file ends at {size}"
            )
        # MSG_MORE: the header leaves with the payload's first segment, not in a packet alone.
        rest = memoryview(header)
        while rest:
            rest = rest[self.sock.send(rest, getattr(socket, "MSG_MORE", 0)) :]
        sent = 0
        while sent < frame.nbytes:
            n = os.sendfile(self.sock.fileno(), self.fd, frame.offset + sent, frame.nbytes - sent)
            if n == 0:
                raise ReaderError(
                    f"{frame.path}: the file was cut short while its frame was being sent "
                    f"({sent} of {frame.nbytes} bytes); the connection is closed and the "
                    "receiver discards the partial frame"
                )
            sent += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.path = -1, None


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
    frames: Iterable[tuple[np.ndarray | FileFrame, str]],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    compress: bool = False,
    mapping_file: str | Path | None = "frame_mapping.json",
    save_interval: int = 500,
    shape: tuple[int, int] | None = None,
    first_dataset_num: int = 0,
    connect_timeout: float = 10.0,
    connections: int = 1,
) -> int:
    """Send frames over one connection (or several, round robin); returns the number sent.

    Parameters
    ----------
    frames : iterable of (ndarray or FileFrame, str)
        Frame (n_z, n_y) and its name for the mapping file. A :class:`FileFrame` goes out
        with ``os.sendfile`` (no copy in this process) unless ``compress`` needs its values.
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
    first_dataset_num : int
        The wire's 16-bit dataset number of the first frame; the next ones count up from it
        (modulo 65536), so a sender resuming a series continues its numbering.
    connect_timeout : float
        Seconds to wait for the receiver to accept the connection.
    connections : int
        Connections to open (1 to 64). Frame k goes over connection k mod ``connections``, each
        sent by its own thread: one connection's kernel copy (~2-4 GB/s on loopback, a few
        hundred 10 MB frames/s) caps the rate, and a server with a thread per client (radint
        stream, MIDAS's GPU program) receives them in parallel. Every frame keeps its
        dataset number, so the receiver's frame ids keep the sending order; the order in which
        frames of different connections arrive is not kept (MIDAS's post-processing, which
        names frames by arrival, needs one connection).

    Returns
    -------
    int
        Frames sent (the mapping file lists them).

    Raises
    ------
    RadintError
        Nothing listens at ``host:port``, the server closed a connection, a frame's shape
        differs from ``shape``, or ``connections`` is out of range.
    ReaderError
        A frame file was cut short (the frames before it went out whole; over several
        connections frames after it may have gone out on the others: the mapping lists exactly
        the frames sent).
    SendInterrupted
        Ctrl-C (a KeyboardInterrupt): the connections are shut at once (a frame cut off
        mid-way is discarded by the receiver and not listed), the mapping is written, and the
        exception says how many frames went out and which was the first that did not.
    """
    if not 1 <= int(connections) <= MAX_CONNECTIONS:
        raise RadintError(f"send: connections must be 1..{MAX_CONNECTIONS}, got {connections}")
    items: queue.Queue[tuple[np.ndarray | FileFrame, str] | BaseException | None] = queue.Queue(
        maxsize=5
    )
    stop = threading.Event()
    read: list[str] = []  # every frame's name in reading (= sending) order
    reader_done = threading.Event()

    def reader() -> None:
        try:
            for item in frames:
                read.append(item[1])
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            reader_done.set()
            items.put(None)
        except BaseException as e:  # handed to the sending thread, which re-raises
            items.put(e)

    socks: list[socket.socket] = []
    try:
        for _ in range(int(connections)):
            sock = socket.create_connection((host, port), timeout=connect_timeout)
            sock.settimeout(None)
            socks.append(sock)
    except ConnectionRefusedError as e:
        stop.set()
        for sock in socks:
            sock.close()
        raise RadintError(f"send: nothing listens at {host}:{port} (start the server first)") from e
    t = threading.Thread(target=reader, name="radint-send-reader", daemon=True)
    t.start()
    sent = _Sent(mapping_file, save_interval)
    noted: set[str] = set()  # what the user was told once
    lanes = [_Connection(sock, compress, noted, sent, stop) for sock in socks]
    n = 0
    interrupted: KeyboardInterrupt | None = None

    def next_item() -> tuple[np.ndarray | FileFrame, str] | BaseException | None:
        # A connection's thread that fails stops the reader too: its error, not a wait.
        while True:
            sent.raise_error()
            try:
                return items.get(timeout=0.1)
            except queue.Empty:
                continue

    def shut_down() -> None:
        # Every connection's thread leaves before the count and the mapping are final; the
        # sockets are shut first, so a thread blocked in a send returns at once.
        stop.set()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 5
        for lane in lanes:
            lane.join(max(0.0, deadline - time.monotonic()))

    try:
        while (item := next_item()) is not None:
            if isinstance(item, BaseException):
                raise item
            data, name = item
            if shape is not None and tuple(data.shape) != tuple(shape):
                raise RadintError(
                    f"{name}: frame shape {data.shape} differs from the parameter file's {shape}"
                )
            dataset_num = (first_dataset_num + n) % 65536
            if data.dtype.kind == "i" and data.dtype.itemsize < 8 and not compress:
                _note_once(noted, "signed", _SIGNED_NOTE, name, data.dtype, 8 * data.dtype.itemsize,
                           (1 << 8 * data.dtype.itemsize) - 1, level=logging.INFO)  # fmt: skip
            # Sent by the connection's thread even with one connection: Ctrl-C raises only
            # in this thread, so it cannot land between a frame's last byte and its mapping
            # entry (the receiver had frames the mapping did not list).
            lanes[n % len(lanes)].put((n, dataset_num, data, name))
            n += 1
            sent.raise_error()
        for lane in lanes:
            lane.finish()
        sent.raise_error()
    except (BrokenPipeError, ConnectionResetError) as e:
        shut_down()
        raise sent.closed_error(host, port) from e
    except _ConnectionClosed as e:
        shut_down()
        raise sent.closed_error(host, port) from e.__cause__
    except KeyboardInterrupt as e:
        interrupted = e
    except BaseException:
        # A frame this thread could not hand over (its shape, its file): the frames handed to
        # the connections before it still go out, as they would over one connection.
        if sent.error is None:
            for lane in lanes:
                lane.finish()
        raise
    finally:
        shut_down()
        sent.write_mapping()  # first: final once the threads have left
        for lane in lanes:
            lane.close_files()
        for sock in socks:
            sock.close()
    if interrupted is not None:
        raise sent.interrupted(read, reader_done.is_set()) from interrupted
    log.info("send: %d frame(s) to %s:%d over %d connection(s)", sent.count, host, port,
             len(socks))  # fmt: skip
    return sent.count


#: Most connections one send opens.
MAX_CONNECTIONS = 64


class SendInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM in ``radint send``) stopped :func:`send_frames`; the mapping file
    was written, listing exactly the frames sent.

    Attributes
    ----------
    sent : int
        Frames sent whole (a frame cut off mid-way the receiver discards).
    first_unsent : int or None
        Index (in sending order) of the first frame not sent; None when every frame was.
    first_unsent_name : str or None
        Its mapping name (``file`` or ``file:frameK``); None when it had not been read yet.
    sent_after : int
        Frames after it that went out all the same, on the other connections.
    mapping_file : path or None
        The frame-mapping JSON written.
    """

    def __init__(
        self, sent: int, first_unsent: int | None, first_unsent_name: str | None,
        sent_after: int, mapping_file: str | Path | None,
    ) -> None:  # fmt: skip
        super().__init__(f"send interrupted after {sent} frame(s)")
        self.sent = sent
        self.first_unsent = first_unsent
        self.first_unsent_name = first_unsent_name
        self.sent_after = sent_after
        self.mapping_file = mapping_file


class _ConnectionClosed(Exception):
    """A connection's thread met a closed connection (the cause is the socket error)."""


class _Sent:
    """The frames sent so far, over every connection: the mapping (by frame index, written
    every ``save_interval`` frames and at the end) and the first error a connection met."""

    def __init__(self, mapping_file: str | Path | None, save_interval: int) -> None:
        self.mapping_file = mapping_file
        self.save_interval = save_interval
        self.mapping: dict[int, dict[str, object]] = {}
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.mapping)

    def add(self, n: int, dataset_num: int, name: str) -> None:
        with self._lock:
            self.mapping[n] = {"dataset_num": dataset_num, "filename": name,
                               "timestamp": time.time()}  # fmt: skip
            if self.mapping_file is not None and len(self.mapping) % self.save_interval == 0:
                write_mapping(dict(sorted(self.mapping.items())), self.mapping_file)

    def fail(self, error: BaseException) -> None:
        with self._lock:
            self.error = self.error or error

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def closed_error(self, host: str, port: int) -> RadintError:
        return RadintError(
            f"send: {host}:{port} closed the connection after {self.count} frame(s) were "
            "handed over (the server stopped taking frames: its --max-frames, a stop, or an "
            "error there); the last of them may still have been in the socket buffers: the "
            "server's summary counts every frame it read"
        )

    def write_mapping(self) -> None:
        with self._lock:
            if self.mapping_file is not None and self.mapping:
                write_mapping(dict(sorted(self.mapping.items())), self.mapping_file)

    def interrupted(self, names: list[str], all_read: bool) -> SendInterrupted:
        """How far a send stopped by Ctrl-C got, once its threads have left: ``names`` are
        the frames read so far, in sending order; ``all_read``: the input had no more."""
        first = next((k for k in range(len(names)) if k not in self.mapping), None)
        if first is None and not all_read:
            first = len(names)  # not read yet: its name is not known
        later = 0 if first is None else sum(k > first for k in self.mapping)
        name = names[first] if first is not None and first < len(names) else None
        return SendInterrupted(self.count, first, name, later, self.mapping_file)


class _Connection:
    """One connection and the thread that sends the frames handed to it, in order (``put``;
    ``finish`` waits for the last)."""

    def __init__(
        self, sock: socket.socket, compress: bool, noted: set[str], sent: _Sent,
        stop: threading.Event,
    ) -> None:  # fmt: skip
        self.sock = sock
        self.compress = compress
        self.noted = noted
        self.sent = sent
        self.stop = stop
        self.files = _FileSender(sock)
        self.jobs: queue.Queue[tuple[int, int, Any, str] | None] = queue.Queue(maxsize=2)
        self.thread: threading.Thread | None = None

    def send(self, n: int, dataset_num: int, data: np.ndarray | FileFrame, name: str) -> None:
        """Frame ``n`` on this connection, now."""
        compress = self.compress
        if isinstance(data, FileFrame):
            code = None if compress else _wire_code_as_stored(data.dtype)
            if code is not None and hasattr(os, "sendfile"):
                self.files.send(HEADER.pack(dataset_num, code), data)
                self.sent.add(n, dataset_num, name)
                return
            data = data.read()
        if compress:
            _note_compression_losses(data, name, self.noted)
        header, payload = encode_frame(dataset_num, data, compress)
        _sendmsg_all(self.sock, [header, *payload])
        self.sent.add(n, dataset_num, name)

    def put(self, job: tuple[int, int, Any, str]) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="radint-send", daemon=True)
            self.thread.start()
        while not self.stop.is_set():
            try:
                self.jobs.put(job, timeout=0.1)
                return
            except queue.Full:
                continue
        self.sent.raise_error()

    def _run(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                if self.stop.is_set():
                    return
                self.send(*job)
        except (BrokenPipeError, ConnectionResetError) as e:
            closed = _ConnectionClosed()
            closed.__cause__ = e
            self.sent.fail(closed)
            self.stop.set()
        except BaseException as e:  # handed to the sending thread, which re-raises
            self.sent.fail(e)
            self.stop.set()

    def finish(self) -> None:
        """Wait until this connection has sent every frame handed to it."""
        if self.thread is None:
            return
        while self.thread.is_alive():
            try:
                self.jobs.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self.thread.join()

    def join(self, timeout: float) -> None:
        """Wait at most ``timeout`` s for the thread to leave (``stop`` set, sockets shut)."""
        if self.thread is not None:
            with contextlib.suppress(queue.Full):
                self.jobs.put_nowait(None)
            self.thread.join(timeout)

    def close_files(self) -> None:
        self.files.close()


_SIGNED_NOTE = (
    "%s: %s frames go out as unsigned %d-bit integers (the MIDAS protocol has no signed types): "
    "-1 arrives as %d. radint stream takes such values for a negative GapIntensity / "
    "BadPxIntensity; other receivers may count them"
)


def _note_once(noted: set[str], what: str, message: str, *args: object, level: int) -> None:
    """Log ``message`` the first time ``what`` comes up in this send."""
    if what not in noted:
        noted.add(what)
        log.log(level, message, *args)


def _note_compression_losses(data: np.ndarray, name: str, noted: set[str]) -> None:
    """Say (once per send and kind) where ``--compress`` changes values: it sends whole
    unsigned numbers (uint16, and int64 for the pixels above 65535)."""
    if {"negative", "negative-lost", "fraction"} <= noted or data.size == 0:
        return
    if data.dtype.kind in "if" and not {"negative", "negative-lost"} <= noted and data.min() < 0:
        n = int(np.count_nonzero(data < 0))
        if data.max() > 65535:  # the hybrid format: a 64-bit frame, where 65535 is a count
            _note_once(noted, "negative-lost",
                       "%s: --compress sends a frame with values above 65535 as 64-bit integers, "
                       "its %d negative pixel(s) as 65536 + value, which no receiver can tell "
                       "from counts; send without --compress to keep them", name, n,
                       level=logging.WARNING)  # fmt: skip
        else:
            _note_once(noted, "negative",
                       "%s: --compress sends values as unsigned 16-bit: its %d negative pixel(s) "
                       "arrive as 65536 + value (-1 as 65535), which radint stream takes for a "
                       "negative GapIntensity / BadPxIntensity; other receivers may count them",
                       name, n, level=logging.INFO)  # fmt: skip
    if "fraction" not in noted and data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        if np.any(finite != np.trunc(finite)) or finite.size < data.size:
            _note_once(noted, "fraction",
                       "%s: --compress sends whole numbers: this float frame's fractional, NaN "
                       "or infinite values are changed; send without --compress to keep them",
                       name, level=logging.WARNING)  # fmt: skip


def _wire_code_as_stored(dtype: np.dtype) -> int | None:
    """The dtype code MIDAS's sender uses for pixels of ``dtype`` when it puts them on the wire
    byte for byte (little-endian integers and floats of 1–8 bytes; signed integers go under the
    unsigned code of their width); None for types it converts."""
    code, pieces = sender_encoding(np.zeros(1, dtype))
    same = pieces[0].dtype.itemsize == dtype.itemsize and dtype.byteorder in "<|="
    return code if same else None
