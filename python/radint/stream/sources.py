"""Frame sources for the streaming server: MIDAS TCP, EPICS PVA (pvapy), folder watch.

Every source runs in its own thread(s) and hands :class:`StreamItem` objects to a *sink*: a
callable that blocks while the pipeline's bounded queue is full (TCP, folder: backpressure
reaches the sender; PVA: pvAccess's client queue holds the updates) and refuses once the
stream stops (the frame is counted as dropped, never silently lost).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import select
import socket
import struct
import sys
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radint._once import warn_once
from radint.exceptions import InvalidInputError, RadintError
from radint.io.hdf5 import UnwrittenFramesError
from radint.io.inputs import natural_key
from radint.stream.protocol import (
    DTYPES,
    HEADER,
    HYBRID,
    HYBRID_COUNT,
    ProtocolError,
    decode_hybrid,
)

log = logging.getLogger("radint.stream")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 60439


@dataclass
class StreamItem:
    """One frame from a source.

    Attributes
    ----------
    frame_id : int
        Identifier: the unwrapped MIDAS ``dataset_num`` (TCP), the NTNDArray ``uniqueId`` (PVA)
        or a running count (folder).
    data : ndarray, shape (n_z, n_y)
    source : str
        Where it came from, e.g. ``"tcp:127.0.0.1:53122"``, ``"pva:CHANNEL"``, ``"file:a.tif"``.
    timestamp : float
        Unix time the frame was complete at the server.
    metadata : dict
        Per source: ``dataset_num`` (TCP), ``uniqueId`` (PVA), ``file`` and ``frame`` (folder);
        ``source_timestamp``, Unix time the source gives the frame (PVA's ``timeStamp`` or
        ``dataTimeStamp``, a folder file's modification time), where it gives one;
        ``attributes``, a PVA frame's scalar NDAttributes by name.
    """

    frame_id: int
    data: np.ndarray
    source: str
    timestamp: float
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Where ``data`` goes back once the consumer is done with it (see :class:`FramePool`).
    pool: FramePool | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        """Hand ``data`` back to its pool for reuse; the item must not be read afterwards."""
        if self.pool is not None:
            self.pool.give_back(self.data)
            self.pool = None


class FramePool:
    """Frame arrays recycled between frames of one source, handed out as the rows of slabs of
    up to :attr:`SLOTS` frames and :attr:`SLAB_BYTES` bytes.

    Why recycled: a fresh 10 MB array costs ~2 400 page faults, ~5 ms of CPU on the project's
    2-core VM (as much as receiving the frame), because glibc returns large freed blocks to the
    system. Slabs: one allocation serves several frames, and frames received one after
    another lie side by side. A slab is reused once every row handed out was given back; at
    most ``keep`` free slabs per (size, dtype) are held.
    """

    SLOTS = 8
    SLAB_BYTES = 96 << 20

    def __init__(self, keep: int = 4, allocate: Any = np.empty) -> None:
        self.keep = keep
        #: ``allocate(shape, dtype)`` makes a slab: :meth:`radint.Integrator.host_buffer` under
        #: the CUDA backend, so frames are received straight into page-locked memory that the
        #: GPU reads by DMA without a staging copy. Set before the first :meth:`take`.
        self.allocate = allocate
        #: Slabs allocated because none was free (the rest were reused).
        self.allocated = 0
        self._current: dict[tuple[int, str], _Slab] = {}
        self._free: dict[tuple[int, str], list[np.ndarray]] = {}
        self._live: dict[int, _Slab] = {}
        self._lock = threading.Lock()

    def take(self, n: int, dtype: Any) -> np.ndarray:
        """A 1-D array of ``n`` values of ``dtype`` (contents undefined): the next row of the
        current slab."""
        key = (n, np.dtype(dtype).str)
        with self._lock:
            slab = self._current.get(key)
            if slab is None or slab.handed == len(slab.array):
                free = self._free.get(key)
                if free:
                    array = free.pop()
                else:
                    frame_bytes = max(1, n * np.dtype(dtype).itemsize)
                    rows = max(1, min(self.SLOTS, self.SLAB_BYTES // frame_bytes))
                    array = self.allocate((rows, n), dtype)
                    self.allocated += 1
                slab = self._current[key] = self._live[id(array)] = _Slab(array)
            row = slab.array[slab.handed]
            slab.handed += 1
            slab.outstanding += 1
            return row

    def give_back(self, array: np.ndarray) -> None:
        """Return a row ``take`` made (or a reshaped view of one); other arrays are ignored."""
        base = array.base
        with self._lock:
            slab = self._live.get(id(base))
            if slab is None or slab.array is not base:
                return
            slab.outstanding -= 1
            if slab.handed == len(base) and slab.outstanding == 0:
                del self._live[id(base)]
                free = self._free.setdefault((base.shape[1], base.dtype.str), [])
                if len(free) < self.keep:
                    free.append(base)


@dataclass
class _Slab:
    array: np.ndarray
    #: Rows handed out so far, and of those, rows not given back yet.
    handed: int = 0
    outstanding: int = 0


Sink = Callable[[StreamItem], bool]
"""Takes an item; returns False when the pipeline is stopping (the item was not taken)."""


class SourceStats:
    """Thread-safe counters shared by the sources of one pipeline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.dropped = 0
        self.partial = 0
        self.bad_connections = 0

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class Source(ABC):
    """Base class: ``start(sink, stats)``, ``stop()``, ``join()``."""

    name = "source"
    #: Why the source stopped producing on its own (an unexpected error), else None: the
    #: stream stops when every source has failed, and `radint stream` exits 1.
    failure: str | None = None

    @abstractmethod
    def start(self, sink: Sink, stats: SourceStats) -> None:
        """Begin producing frames into ``sink`` (non-blocking)."""

    @abstractmethod
    def stop(self) -> None:
        """Ask the source to stop producing."""

    @abstractmethod
    def join(self, timeout: float | None = None) -> None:
        """Wait for the source's threads to end."""


# --------------------------------------------------------------------------------- TCP
class _BadFrame(ProtocolError):
    """A frame read whole whose contents are invalid (a hybrid frame's pixel index out of
    range): counted as received and dropped. The connection still closes: such an index is
    what a sender of another detector size sends, and the bytes after it are no frames."""


class _Misaligned(_BadFrame):
    """A frame read whole but followed by bytes that cannot be a frame header: the sender's
    frames are of another size, so this frame's bytes were no frame of this size either.
    Counted as received and dropped, never integrated; the connection closes."""


class _Closed(Exception):
    """The peer closed the connection (or the server is stopping)."""


#: Once a connection's frames are refused (the stream stops, or reached --max-frames), how long
#: it is still read: frames the sender had already sent are counted as dropped, not lost unseen
#: in socket buffers. Reading ends sooner when the sender goes quiet for QUIET_S.
DRAIN_S = 1.0
QUIET_S = 0.2


#: How long a frame waits for the next frame's header before it is handed on unchecked (a
#: sender that pauses between frames): the wire has no length field, and a header that cannot
#: be one right after a frame is the only sign, before the frame is written, that the sender's
#: frames are of another size. A misaligned sender is mid-frame there, its bytes already on
#: the way (in the same send call); a sender faster than the stream has the next header
#: waiting. 2 ms: at 20 ms a sender pausing between frames had each frame wait that long.
NEXT_HEADER_S = 0.002


#: Receive a frame in one MSG_WAITALL call on a blocking socket with the kernel's receive
#: timeout (see TcpSource._recv_exact). Not on Windows, where a socket whose SO_RCVTIMEO
#: fired is in an undefined state: there Python's own timeout and a call per buffer.
WAITALL = sys.platform != "win32"


def _readable(conn: socket.socket, timeout: float) -> bool:
    """Whether ``conn`` has bytes (or its end) to read within ``timeout`` seconds; poll where
    there is one (select cannot wait on descriptors past 1023)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        return bool(poller.poll(math.ceil(timeout * 1000)))
    return bool(select.select([conn], [], [], timeout)[0])


def _peek(conn: socket.socket, size: int) -> bytes | None:
    """Up to ``size`` bytes waiting on ``conn``, left there; None when none is there yet, and
    b"" at its end (or an error, which the next read reports)."""
    try:
        if hasattr(socket, "MSG_DONTWAIT"):
            return conn.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return conn.recv(size, socket.MSG_PEEK) if _readable(conn, 0) else None
    except (BlockingIOError, TimeoutError, InterruptedError):
        return None
    except OSError:
        return b""


def _timeval(seconds: float) -> bytes:
    """SO_RCVTIMEO's value, a ``struct timeval``."""
    whole = int(seconds)
    return struct.pack("@ll", whole, round((seconds - whole) * 1e6))


class TcpSource(Source):
    """MIDAS wire-protocol server (spec §7.1): many clients, one thread each.

    Each payload is received straight into a numpy buffer of the exact size, recycled through a
    :class:`FramePool` once the pipeline has integrated the frame. While the
    sink blocks (queue full) the client's socket is not read, so TCP flow control stops the
    sender instead of memory growing. A connection that ends mid-frame has that partial frame
    discarded and logged; an unknown dtype code closes that connection with a logged error;
    the server keeps serving everyone else. A frame is handed on once the next header is
    there (or after :data:`NEXT_HEADER_S` without one): one followed by a header that cannot
    be one is dropped, not integrated (the sender's frames are of another size). Once frames are refused (stopping), the connection
    is read for up to :data:`DRAIN_S` more, until the sender goes quiet, and every complete
    frame is counted as dropped; a sender still sending after that has the connection closed
    (it sees a reset; what was still in its own socket buffers never reached this server).

    Parameters
    ----------
    shape : (n_z, n_y)
        Frame shape (``NrPixelsZ``, ``NrPixelsY``) — the wire has no length field.
    host, port : str, int
        Where to listen; port 0 picks a free port (see :attr:`port` after :meth:`start`).
    """

    name = "tcp"

    def __init__(self, shape: tuple[int, int], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        self.shape = (int(shape[0]), int(shape[1]))
        self.n_pixels = self.shape[0] * self.shape[1]
        self.host = host
        self.port = port
        self.pool = FramePool()
        self._stop = threading.Event()
        self._drain_until = 0.0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conn_seq = 0

    def bind(self) -> None:
        """Listen on ``host:port`` now (``start`` does it otherwise): senders that connect before
        ``start`` wait in the backlog, and a port in use fails before anything else is done.

        Raises
        ------
        RadintError
            The address cannot be listened on (in use, not this host's), naming it.
        """
        if self._listener is not None:
            return
        try:
            lsock = socket.create_server((self.host, self.port), backlog=10)
        except OSError as e:
            raise RadintError(
                f"tcp: cannot listen on {self.host}:{self.port}: {e.strerror or e} (another "
                "server there? choose another address with --port / --host)"
            ) from e
        lsock.settimeout(0.2)
        self._listener = lsock
        self.port = lsock.getsockname()[1]

    def start(self, sink: Sink, stats: SourceStats) -> None:
        self.bind()
        log.info("tcp: listening on %s:%d (frames %dx%d)", self.host, self.port, *self.shape[::-1])
        t = threading.Thread(
            target=self._accept_loop, args=(sink, stats), name="radint-tcp-accept", daemon=True
        )
        t.start()
        self._threads.append(t)

    def _accept_loop(self, sink: Sink, stats: SourceStats) -> None:
        assert self._listener is not None
        try:
            while not self._stop.is_set():
                try:
                    conn, addr = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                with self._lock:
                    self._conn_seq += 1
                    label = f"tcp:{addr[0]}:{addr[1]}"
                    t = threading.Thread(
                        target=self._serve,
                        args=(conn, label, sink, stats),
                        name=f"radint-tcp-{self._conn_seq}",
                        daemon=True,
                    )
                    self._threads.append(t)
                t.start()
        finally:
            self._listener.close()

    def _recv_exact(
        self, conn: socket.socket, view: memoryview, drain_until: float | None = None
    ) -> None:
        """Fill ``view`` from the socket; _Closed on EOF, or when draining (``drain_until``
        set, or the server stopping) once the sender is quiet or the drain time is over."""
        got = 0
        n = view.nbytes
        while got < n:
            draining = drain_until is not None or self._stop.is_set()
            if draining and time.monotonic() > (drain_until or self._drain_until):
                raise _Closed(got, "drain over")
            try:
                # MSG_WAITALL: one call (the GIL released throughout) per frame rather than
                # one per socket-buffer's worth; a busy Python thread held each of those
                # returns up to a GIL switch interval (200 -> 57 Pilatus 2M frames/s).
                k = conn.recv_into(view[got:], n - got, socket.MSG_WAITALL if WAITALL else 0)
            except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO over (see _serve)
                if draining:
                    raise _Closed(got, "quiet") from None  # nothing more to read
                continue
            except OSError as e:
                raise _Closed(got, "closed") from e
            if k == 0:
                raise _Closed(got, "closed")
            got += k

    def _serve(self, conn: socket.socket, label: str, sink: Sink, stats: SourceStats) -> None:
        # A blocking socket with the kernel's receive timeout: Python's own timeout makes the
        # socket non-blocking, where MSG_WAITALL returns whatever is there.
        if WAITALL:
            conn.settimeout(None)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(QUIET_S))
        else:
            conn.settimeout(QUIET_S)
        header = bytearray(HEADER.size)
        hview = memoryview(header)
        last_num = -1
        wraps = 0
        n_frames = 0
        went_back = False
        drain_until: float | None = None  # set once this connection's frames are refused
        n_refused = 0
        first_id: int | None = None
        log.info("%s: connected", label)
        try:
            while True:
                try:
                    self._recv_exact(conn, hview, drain_until)
                except _Closed as e:
                    if e.args and e.args[0]:
                        stats.add("partial")
                        log.warning(
                            "%s: closed inside a frame header; partial frame discarded", label
                        )
                    break
                num, code = HEADER.unpack(header)
                try:
                    data, _ = self._read_payload(conn, code, drain_until)
                    if drain_until is None and not self._stop.is_set():  # frames still taken
                        self._check_next_header(conn, data)
                except ProtocolError as e:
                    if isinstance(e, _BadFrame):  # read whole, so it is counted
                        stats.add("received")
                        stats.add("dropped")
                    stats.add("bad_connections")
                    size = (f"a sender whose frames are not {self.shape[1]}x{self.shape[0]} "
                            "pixels, NrPixelsY x NrPixelsZ")  # fmt: skip
                    if isinstance(e, _Misaligned):
                        before = (f", and the {n_frames} taken before it from {label}, id "
                                  f"{first_id} on, may be wrong too: check them" if n_frames
                                  else "")  # fmt: skip
                        hint = (f" (the wire has no length field: {size}, misaligns the stream; "
                                f"this frame was not integrated{before})")  # fmt: skip
                    elif n_frames:
                        hint = (
                            f" (the wire has no length field: {size}, misaligns the stream, and "
                            "then the frames already taken from this connection, the "
                            f"{n_frames} from {label} id {first_id} on, are wrong too: check "
                            "them)"
                        )
                    elif isinstance(e, _BadFrame) or "hybrid" in str(e):
                        hint = f" (is it {size}?)"  # a hybrid frame's index or count beyond N
                    else:
                        hint = ""
                    log.error(
                        "%s: dataset_num %d: %s; closing this connection after %d frame(s)%s",
                        label, num, e, n_frames, hint,
                    )  # fmt: skip
                    break
                except _Closed as e:
                    stats.add("partial")
                    why = {
                        "drain over": "stopped reading mid-frame (the sender was still sending "
                        "when the drain ended)",
                        "quiet": "stopped reading mid-frame (the sender went quiet while the "
                        "stream was stopping)",
                    }.get(e.args[1] if len(e.args) > 1 else "", "closed mid-frame")
                    log.warning("%s: %s (dataset_num %d, dtype %d); partial frame discarded",
                                label, why, num, code)  # fmt: skip
                    break
                # dataset_num is 16-bit (spec §7.1): a big step back is a wrap past 65535;
                # any other step back is the sender's own numbering (ids then repeat).
                if last_num - num > 32768:
                    wraps += 1
                elif num <= last_num and not went_back:
                    went_back = True
                    log.warning(
                        "%s: dataset_num %d after %d: the sender numbers frames anew, frame "
                        "ids repeat (logged once; timestamps and rows keep them apart)",
                        label, num, last_num,
                    )  # fmt: skip
                last_num = num
                if first_id is None:
                    first_id = wraps * 65536 + num
                item = StreamItem(
                    frame_id=wraps * 65536 + num,
                    data=data.reshape(self.shape),
                    source=label,
                    timestamp=time.time(),
                    metadata={"dataset_num": num, "dtype": code},
                    pool=self.pool,
                )
                n_frames += 1
                stats.add("received")
                if not sink(item):  # counted as dropped by the sink
                    item.release()
                    n_refused += 1
                    if drain_until is None:
                        drain_until = time.monotonic() + DRAIN_S
        finally:
            conn.close()
            if n_refused:
                log.warning(
                    "%s: %d frame(s) read after the stream stopped taking frames (sent "
                    "before the stop but still in the socket buffers, or after it) were "
                    "counted as dropped",
                    label, n_refused,
                )  # fmt: skip
            log.info("%s: disconnected after %d frame(s)", label, n_frames)

    def _check_next_header(self, conn: socket.socket, data: np.ndarray) -> None:
        """Raise :class:`_Misaligned` (``data`` given back to the pool) when the bytes after the
        frame just read, waited for up to :data:`NEXT_HEADER_S`, cannot be a frame header: an
        unknown dtype code, or a hybrid count beyond the frame. Bytes not there in time, or the
        connection's end, pass: the frame is handed on, as MIDAS's receiver would."""
        size = HEADER.size + HYBRID_COUNT.size  # a hybrid header with its count
        deadline = time.monotonic() + NEXT_HEADER_S
        while True:
            peek = _peek(conn, size)
            if peek == b"":
                return  # the connection's end (or an error, which the next read reports)
            if peek is not None and len(peek) >= HEADER.size:
                code = HEADER.unpack_from(peek)[1]
                if code != HYBRID or len(peek) == size:
                    break
            left = deadline - time.monotonic()
            if left <= 0:
                if peek is None or len(peek) < HEADER.size:
                    return
                break  # a hybrid header whose count is not there yet: its code is valid
            if peek is None:
                _readable(conn, left)
            else:
                time.sleep(min(left, 0.001))  # part of a header: readable at once, no wait
        if code not in DTYPES and code != HYBRID:
            why = f"unknown dtype code {code}"
        elif code == HYBRID and len(peek) == size:
            (count,) = HYBRID_COUNT.unpack_from(peek, HEADER.size)
            if count <= self.n_pixels:
                return
            why = f"hybrid overflow count {count}"
        else:
            return
        self.pool.give_back(data)
        raise _Misaligned(f"the bytes after this frame are no frame header ({why})")

    def _read_payload(
        self, conn: socket.socket, code: int, drain_until: float | None = None
    ) -> tuple[np.ndarray, int]:
        """The frame of dtype ``code`` and its size on the wire (bytes after the header)."""
        if code in DTYPES:
            data = self.pool.take(self.n_pixels, DTYPES[code])
            try:
                self._recv_exact(conn, data.data.cast("B"), drain_until)
            except BaseException:
                self.pool.give_back(data)
                raise
            return data, data.nbytes
        if code != HYBRID:
            raise ProtocolError(f"unknown dtype code {code} (expected 0-6)")
        cbuf = bytearray(HYBRID_COUNT.size)
        self._recv_exact(conn, memoryview(cbuf), drain_until)
        (count,) = HYBRID_COUNT.unpack(cbuf)
        if count > self.n_pixels:
            raise ProtocolError(f"hybrid overflow count {count} exceeds {self.n_pixels} pixels")
        body = bytearray(2 * self.n_pixels + 12 * count)
        self._recv_exact(conn, memoryview(body), drain_until)
        try:
            return decode_hybrid(count, body, self.n_pixels), HYBRID_COUNT.size + len(body)
        except ProtocolError as e:
            raise _BadFrame(str(e)) from e

    def stop(self) -> None:
        self._drain_until = time.monotonic() + DRAIN_S
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._threads)
            for t in threads:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            with self._lock:
                if len(threads) == len(self._threads):
                    return


# --------------------------------------------------------------------------------- PVA
_PVA_DTYPES = {
    "byteValue": np.int8,
    "ubyteValue": np.uint8,
    "shortValue": np.int16,
    "ushortValue": np.uint16,
    "intValue": np.int32,
    "uintValue": np.uint32,
    "longValue": np.int64,
    "ulongValue": np.uint64,
    "floatValue": np.float32,
    "doubleValue": np.float64,
}
# The integrator's pixel types; others are widened without loss where possible.
_PVA_WIDEN = {
    np.dtype(np.int8): np.int32,
    np.dtype(np.int16): np.int32,
    np.dtype(np.uint64): np.float64,
}


# pvData ScalarType codes (what areaDetector puts in codec.parameters for compressed arrays).
_SCALAR_TYPES = {1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.uint8, 6: np.uint16,
                 7: np.uint32, 8: np.uint64, 9: np.float32, 10: np.float64}  # fmt: skip


def _scalar_type_code(parameters: Any) -> int | None:
    """The integer in an NTNDArray ``codec.parameters`` variant union, as pvapy hands it over
    (``({'value': 7}, {'value': ScalarType.INT})``, a plain int, or a dict)."""
    for _ in range(3):
        if isinstance(parameters, list | tuple):
            parameters = parameters[0] if parameters else None
        elif isinstance(parameters, dict):
            parameters = parameters.get("value")
        else:
            break
    try:
        return int(parameters) if parameters is not None else None
    except (TypeError, ValueError):
        return None


def decompress_ndarray(
    codec_name: str,
    data: np.ndarray,
    codec: Any,
    shape: tuple[int, int],
    uncompressed_size: Any = None,
) -> np.ndarray:
    """Decompress an areaDetector NDPluginCodec payload (an NTNDArray's ``ubyteValue``).

    ``lz4`` is a raw LZ4 block, ``bslz4`` bitshuffle + LZ4 blocks (``bshuf_compress_lz4``, no
    header, as ADCore writes them; needs the ``bitshuffle`` package) and ``blosc`` a Blosc
    frame. The pixel type comes from ``codec.parameters`` (the pvData ScalarType areaDetector
    puts there), else from ``uncompressedSize`` / pixels (2 → uint16, 4 → uint32). JPEG is
    lossy 8-bit and refused.

    Raises
    ------
    ValueError
        Unknown codec, corrupt payload or a size that does not match ``shape``.
    """
    n = shape[0] * shape[1]
    code = _scalar_type_code(_get(codec, "parameters"))
    if code in _SCALAR_TYPES:
        dtype = np.dtype(_SCALAR_TYPES[code])
    else:
        per_pixel = int(uncompressed_size or 0) // n if n else 0
        if per_pixel not in (1, 2, 4):
            raise InvalidInputError(
                f"codec {codec_name!r}: no pixel type in codec.parameters ({code!r}) and "
                f"uncompressedSize {uncompressed_size!r} for {n} pixels"
            )
        dtype = np.dtype({1: np.uint8, 2: np.uint16, 4: np.uint32}[per_pixel])
        warn_once(
            ("pva-guessed-type", codec_name, per_pixel),
            "codec %r: no pixel type in codec.parameters; %d bytes per pixel read as %s "
            "(a float32 or int32 detector would be misread: set the codec plugin's data type)",
            codec_name, per_pixel, dtype,
        )  # fmt: skip
    raw = np.ascontiguousarray(data, dtype=np.uint8)
    nbytes = n * dtype.itemsize
    # An HDF5-filter header (u64 BE size, u32 BE block bytes: Dectris streams, ADEiger without
    # decompression, areaDetector's direct-chunk modes) cannot start a headerless payload (a
    # bitshuffle block starts with its nonzero size, an LZ4 block with literals).
    framed = raw.size >= 12 and int.from_bytes(raw[:8].tobytes(), "big") == nbytes
    block_bytes = int.from_bytes(raw[8:12].tobytes(), "big") if framed else 0
    try:
        if codec_name == "lz4" and framed:
            out = _hdf5_lz4_blocks(raw[12:].tobytes(), nbytes, block_bytes)
        elif codec_name == "lz4":
            import numcodecs

            out = numcodecs.LZ4().decode(nbytes.to_bytes(4, "little") + raw.tobytes())
        elif codec_name == "blosc" and raw.size == nbytes and not _blosc_header_fits(raw, nbytes):
            # The pixels' size and no Blosc header of them: the chunk went out unfiltered (one
            # Blosc could not shrink, in areaDetector's direct-chunk mode).
            out = raw.tobytes()
        elif codec_name == "blosc":
            import numcodecs

            # Blosc trusts its header: a short payload would decode into garbage.
            cbytes = int.from_bytes(raw[12:16].tobytes(), "little") if raw.size >= 16 else -1
            if cbytes != raw.size:
                raise InvalidInputError(
                    f"codec 'blosc': payload of {raw.size} bytes, header says {cbytes}"
                )
            out = numcodecs.Blosc().decode(raw)
        elif codec_name == "bslz4":
            try:
                import bitshuffle
            except ImportError as e:
                raise InvalidInputError(
                    f"codec 'bslz4' needs the bitshuffle package ({e}): pip install 'radint[pva]'"
                ) from e
            if framed:
                if block_bytes % dtype.itemsize:
                    raise InvalidInputError(f"block of {block_bytes} bytes for {dtype} pixels")
                out = bitshuffle.decompress_lz4(
                    raw[12:], (n,), dtype, block_bytes // dtype.itemsize
                )
            else:
                out = bitshuffle.decompress_lz4(raw, (n,), dtype)
        elif codec_name == "jpeg":
            raise InvalidInputError(
                "codec 'jpeg' is lossy (8-bit); use lz4, bslz4 or blosc for data"
            )
        else:
            raise InvalidInputError(f"unknown codec {codec_name!r} (lz4, bslz4 and blosc are read)")
    except ValueError:
        raise
    except Exception as e:  # the codec libraries raise their own types on corrupt input
        raise InvalidInputError(f"codec {codec_name!r}: cannot decompress ({e})") from e
    arr = np.frombuffer(out, dtype=np.uint8)
    if arr.size != nbytes:
        raise InvalidInputError(
            f"codec {codec_name!r}: {arr.size} bytes decompressed, {shape[1]}x{shape[0]} "
            f"{dtype} pixels need {nbytes}"
        )
    return arr.view(dtype)


def _stamp(pv: Any) -> tuple[int, int] | None:
    """An NTNDArray's ``timeStamp`` as (seconds, nanoseconds), else its ``dataTimeStamp`` (when
    the frame was taken: a publisher that leaves the update's stamp at 0, p4p's default, may
    set that one); None where neither is set."""
    for name in ("timeStamp", "dataTimeStamp"):
        ts = _get(pv, name)
        if ts is None:
            continue
        stamp = (int(_get(ts, "secondsPastEpoch", 0) or 0), int(_get(ts, "nanoseconds", 0) or 0))
        if any(stamp):
            return stamp
    return None


def _nd_attributes(pv: Any) -> dict[str, float | str]:
    """An NTNDArray's scalar NDAttributes by name (areaDetector attaches exposure time, motor
    positions, ... to each frame): numbers as float, text as str; arrays are left out."""
    found: dict[str, float | str] = {}
    for attribute in _get(pv, "attribute") or ():
        name = _get(attribute, "name")
        value = _get(attribute, "value")
        # pvapy gives the variant union as ({"value": v}, {"value": its type})
        if isinstance(value, tuple | list):
            value = value[0] if value else None
        if isinstance(value, dict):
            value = value.get("value")
        if not isinstance(name, str) or not name:
            continue
        if isinstance(value, bool | int | float | np.number):
            found[name] = float(value)
        elif isinstance(value, str):
            found[name] = value
    return found


def _holds_frame(pv: Any) -> bool:
    """Whether an NTNDArray update carries pixels (a new record's value is empty)."""
    value = _get(pv, "value")
    branch = value[0] if isinstance(value, list | tuple) and value else value
    if not isinstance(branch, dict) or not branch:
        return bool(branch)
    return any(np.size(v) for v in branch.values())


def _blosc_header_fits(raw: np.ndarray, nbytes: int) -> bool:
    """Whether ``raw`` starts with a Blosc header of ``nbytes`` of data in ``raw.size`` bytes."""
    if raw.size < 16:
        return False
    head = raw[:16].tobytes()
    return (int.from_bytes(head[4:8], "little") == nbytes
            and int.from_bytes(head[12:16], "little") == raw.size)  # fmt: skip


def _hdf5_lz4_blocks(body: bytes, nbytes: int, block_bytes: int) -> bytes:
    """The HDF5 LZ4 filter's blocks (each a u32 BE compressed size, then a raw LZ4 block of
    ``block_bytes``, the last one shorter) decoded into ``nbytes``."""
    import numcodecs

    if block_bytes <= 0:
        raise InvalidInputError(f"block size {block_bytes}")
    codec, out, at = numcodecs.LZ4(), bytearray(), 0
    while len(out) < nbytes:
        size = int.from_bytes(body[at : at + 4], "big")
        want = min(block_bytes, nbytes - len(out))
        chunk = body[at + 4 : at + 4 + size]
        if size <= 0 or len(chunk) != size:
            raise InvalidInputError(f"LZ4 block at byte {at + 12} cut short")
        # A block stored uncompressed (its size equals the data's) is copied as is.
        out += chunk if size == want else codec.decode(want.to_bytes(4, "little") + chunk)
        at += 4 + size
    return bytes(out)


def import_pvaccess() -> Any:
    """Import pvapy's ``pvaccess`` or raise a RadintError naming the extra."""
    try:
        import pvaccess
    except ImportError as e:
        raise RadintError(
            f"the PVA source needs pvapy ({e}); install it with pip install 'radint[pva]'"
        ) from e
    return pvaccess


def _get(obj: Any, key: str, default: Any = None) -> Any:
    try:
        return obj[key]
    except Exception:  # KeyError, TypeError, ... and pvaccess's own FieldNotFound
        return default


#: Seconds without any monitor update after which a PVA source says so (a wrong channel name
#: otherwise waits silently for --timeout).
CONNECT_WARNING_S = 5.0


class PvaSource(Source):
    """EPICS PV Access NTNDArray monitor (pvapy).

    The frame shape comes from the ``dimension`` field (``dimension[0]`` = columns / fast axis,
    ``dimension[1]`` = rows) and the pixel type from the selected branch of the ``value`` union,
    so any detector works. Arrays compressed by areaDetector's codec plugin (``lz4``, ``bslz4``,
    ``blosc``) are decompressed (:func:`decompress_ndarray`). PVA has no backpressure: while the
    stream's queue is full the callback waits and pvAccess's client queue holds the updates;
    what overflows that shows as gaps in ``uniqueId``, counted as frames dropped upstream.

    Parameters
    ----------
    channel : str
        PV name, e.g. ``16pil-idb:Pva1:Image``.
    shape : (n_z, n_y)
        Expected frame shape (from the parameter file); other shapes are dropped with a log line.
    channel_factory : callable, optional
        ``channel_factory(name)`` → object with ``subscribe(name, cb)``, ``startMonitor(request)``,
        ``stopMonitor()``; default ``pvaccess.Channel(name, pvaccess.PVA)``.
    """

    name = "pva"
    REQUEST = (
        "field(uniqueId, value, dimension, codec, uncompressedSize, timeStamp, dataTimeStamp, "
        "attribute)"
    )
    #: Memory the client-side monitor queue may hold (frames of 4 bytes per pixel): pvAccess's
    #: default queue of a few updates squashed ~5 % of the frames of a 400 fps 256x256 stream
    #: that radint integrated at 700 fps; 100 lost none.
    QUEUE_BYTES = 512 << 20
    #: A first update this long after subscribing comes from a channel that connected late
    #: (its server started since): published after radint subscribed, stamped or not.
    LATE_CONNECT_S = 1.0

    def __init__(
        self,
        channel: str,
        shape: tuple[int, int],
        channel_factory: Callable[[str], Any] | None = None,
    ) -> None:
        self.channel_name = channel
        self.shape = (int(shape[0]), int(shape[1]))
        self._factory = channel_factory
        self._channel: Any = None
        self._sink: Sink | None = None
        self._stats: SourceStats | None = None
        self._last_uid: int | None = None
        self._last_stamp: tuple[int, int] | None = None
        self._repeat_logged = False
        self._was_disconnected = False
        self._connected = False
        #: Set on reconnecting: the first update then may be the current value re-sent.
        self._reconnected = False
        #: The last frame's pixels as decoded, kept only for publishers without timestamps,
        #: to tell a re-sent value from a new frame of the same uniqueId after a reconnect.
        self._last_pixels: np.ndarray | None = None
        self._decoded: np.ndarray | None = None  # the latest update's pixels, before the copy
        self._subscribed_at = float("inf")
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        #: Set by stop() while it takes what is still on its way (see DRAIN_MAX_S).
        self._draining = threading.Event()
        self._stop_time = math.inf
        self._caught_up = False
        self._last_update_at = -math.inf
        self.dropped_at_stop = 0
        #: Threads in a pvapy callback now (see :meth:`stop`: none may be once it returns).
        self._callback_threads: set[int] = set()
        self._callbacks_done = threading.Condition(threading.Lock())
        self.dropped_upstream = 0
        self.rejected = 0
        #: Monitor updates seen, the record's initial value included (1 once connected).
        self.updates = 0
        self.pool = FramePool()
        n_pixels = self.shape[0] * self.shape[1]
        #: Updates the client queues while radint's callback is busy (4 to 100 frames).
        self.queue_size = max(4, min(100, self.QUEUE_BYTES // max(1, 4 * n_pixels)))
        self._frames_taken = 0
        # uniqueId gaps not logged yet (jumps, frames) and when the next line may go out.
        self._gaps_unlogged = (0, 0)
        self._gap_next_log = 0.0
        self._rejected_unlogged = 0
        self._rejected_next_log = 0.0

    def start(self, sink: Sink, stats: SourceStats) -> None:
        self._sink = sink
        self._stats = stats
        if self._factory is None:
            pva = import_pvaccess()
            self._channel = pva.Channel(self.channel_name, pva.PVA)
        else:
            self._channel = self._factory(self.channel_name)
        if hasattr(self._channel, "setConnectionCallback"):
            self._channel.setConnectionCallback(self.on_connection)
        self._channel.subscribe("radint", self.on_update)
        self._subscribed_at = time.time()
        self._channel.startMonitor(f"record[queueSize={self.queue_size}]{self.REQUEST}")
        log.info("pva: monitoring %s (client queue %d updates)", self.channel_name,
                 self.queue_size)  # fmt: skip
        watchdog = threading.Timer(CONNECT_WARNING_S, self._warn_if_silent)
        watchdog.daemon = True
        watchdog.start()

    def _warn_if_silent(self) -> None:
        if self.updates == 0 and not self._stopped.is_set():
            log.warning(
                "pva %s: no update in %.0f s: check the channel name and that its IOC is "
                "reachable (EPICS_PVA_ADDR_LIST / EPICS_PVA_AUTO_ADDR_LIST)",
                self.channel_name,
                CONNECT_WARNING_S,
            )

    def _published_since_start(self, stamp: tuple[int, int] | None) -> bool:
        """Whether a frame's timestamp (pvData's: seconds past 1970 UTC) is after this source
        subscribed. Without one, whether the channel connected late (see LATE_CONNECT_S)."""
        if stamp is None:
            return time.time() - self._subscribed_at >= self.LATE_CONNECT_S
        return stamp[0] + stamp[1] * 1e-9 >= self._subscribed_at

    def on_connection(self, connected: bool) -> None:
        """pvapy connection callback: a lost or regained channel is said in the log."""
        if self._stopped.is_set():
            return
        was, self._connected = self._connected, bool(connected)
        if was and not connected:
            self._was_disconnected = True
            log.warning("pva %s: disconnected (the IOC stopped or the network failed): "
                        "waiting for it to come back", self.channel_name)  # fmt: skip
        elif connected and not was and self._was_disconnected:
            self._reconnected = True
            log.info("pva %s: connected again", self.channel_name)

    def on_update(self, pv: Any) -> None:
        """Monitor callback: one NTNDArray update → one StreamItem (or a counted drop)."""
        thread = threading.get_ident()
        with self._callbacks_done:
            self._callback_threads.add(thread)
            self._last_update_at = time.monotonic()
        try:
            self._take_update(pv)
        finally:
            with self._callbacks_done:
                self._callback_threads.discard(thread)
                self._callbacks_done.notify_all()

    def _take_update(self, pv: Any) -> None:
        self.updates += 1
        if self._stopped.is_set() or self._sink is None or self._stats is None:
            return
        stats = self._stats
        uid = int(_get(pv, "uniqueId", 0))
        stamp = _stamp(pv)
        if self.updates == 1 and not self._published_since_start(stamp):
            # A monitor's first update is the value the channel holds when it connects: a
            # frame published before radint subscribed (the last one of an earlier
            # acquisition, perhaps one a previous stream already wrote) is not one of this run.
            if _holds_frame(pv):
                with self._lock:
                    self._last_uid, self._last_stamp = uid, stamp
                log.info(
                    "pva %s: not integrating the channel's value at connection (uniqueId %d, "
                    "%s)",
                    self.channel_name, uid,
                    "no timestamp, and the channel connected at once: taken as the value it "
                    "held before radint subscribed" if stamp is None
                    else f"timeStamp {stamp[0]}.{stamp[1]:09d}, before radint subscribed",
                )  # fmt: skip
            return
        with self._lock:
            reconnected, self._reconnected = self._reconnected, False
            if uid == self._last_uid and stamp is not None and stamp == self._last_stamp:
                # A reconnect re-sends the current value: the frame was taken already.
                log.info("pva %s: uniqueId %d again, same timestamp (re-sent on reconnect): "
                         "skipped", self.channel_name, uid)  # fmt: skip
                return
            self._last_stamp = stamp
        if self._draining.is_set():
            self._count_at_stop(pv, uid, stamp, stats)
            return
        try:
            data = self._decode(pv, uid)
            if stamp is None and data is not None:
                # The decoded array itself is kept (a copy per frame would cost ~1 ms).
                decoded = self._decoded
                last, self._last_pixels = self._last_pixels, decoded
                if (reconnected and uid == self._last_uid and last is not None
                        and decoded is not None and np.array_equal(last, decoded)):  # fmt: skip
                    self.pool.give_back(data)
                    log.info("pva %s: uniqueId %d again, same pixels, first update after a "
                             "reconnect (re-sent): skipped", self.channel_name, uid)  # fmt: skip
                    return
        except Exception as e:  # a bad update is counted and logged, never lost in pvapy
            data = None
            self.rejected += 1
            stats.add("received")  # it arrived: received = integrated + dropped, as for TCP
            stats.add("dropped")
            self._log_rejected(e)
        else:
            if data is None:  # an empty value (a record that holds no frame yet)
                return
        self._note_uid(uid, stats, frame=data is not None)
        if data is None:
            return
        self._frames_taken += 1
        stats.add("received")
        metadata: dict[str, Any] = {"uniqueId": uid}
        if stamp is not None:
            metadata["source_timestamp"] = stamp[0] + stamp[1] * 1e-9
        attributes = _nd_attributes(pv)
        if attributes:
            metadata["attributes"] = attributes
        item = StreamItem(
            uid, data, f"pva:{self.channel_name}", time.time(), metadata, pool=self.pool
        )
        if not self._sink(item):  # stopping: counted as dropped by the sink
            item.release()

    def _count_at_stop(self, pv: Any, uid: int, stamp: tuple[int, int] | None,
                       stats: SourceStats) -> None:  # fmt: skip
        """An update that arrives while the source stops: one published before the stop (it
        waited in pvAccess's queues while radint was behind) is counted as dropped, not lost
        without a word; the first one published after it ends the stop's wait."""
        if stamp is not None and stamp[0] + stamp[1] * 1e-9 > self._stop_time:
            self._caught_up = True
            return
        if not _holds_frame(pv):
            return
        self._note_uid(uid, stats, frame=True)
        self.dropped_at_stop += 1
        stats.add("received")
        stats.add("dropped")

    def _note_uid(self, uid: int, stats: SourceStats, frame: bool) -> None:
        """Frames the uniqueId sequence says were skipped (counted as dropped upstream), and
        what it says about the publisher (restarted, not numbering its frames)."""
        with self._lock:
            if self._last_uid is None and self._frames_taken == 0 and frame:
                if uid > 1:
                    log.warning(
                        "pva %s: the first frame received is uniqueId %d: frames the publisher "
                        "sent before the channel connected (1-%d, if it numbers from 1) were "
                        "not received and are not counted",
                        self.channel_name, uid, uid - 1,
                    )  # fmt: skip
                else:
                    log.info("pva %s: first frame uniqueId %d", self.channel_name, uid)
            if self._last_uid is not None and uid > self._last_uid + 1:
                gap = uid - self._last_uid - 1
                self.dropped_upstream += gap
                stats.add("dropped", gap)
                self._log_gap(self._last_uid, uid, gap)
            elif uid == self._last_uid:
                if not self._repeat_logged:
                    self._repeat_logged = True
                    log.warning(
                        "pva %s: uniqueId %d repeats (the publisher does not number its "
                        "frames?): frame ids do not tell frames apart, the timestamps do "
                        "(logged once)",
                        self.channel_name, uid,
                    )  # fmt: skip
            elif self._last_uid is not None and uid < self._last_uid:
                log.warning(
                    "pva %s: uniqueId went back %d -> %d (the IOC or its plugin restarted): "
                    "frame ids repeat from here, the timestamps tell the frames apart%s",
                    self.channel_name, self._last_uid, uid,
                    f"; frames it sent before uniqueId {uid} (1-{uid - 1}, if it numbers from 1) "
                    "were not received and are not counted" if uid > 1 else "",
                )  # fmt: skip
            self._last_uid = uid

    def _log_gap(self, last: int, uid: int, gap: int) -> None:
        """One line a second at most (a publisher far faster than radint jumps on every
        update: thousands of lines a second buried the rest of the log)."""
        jumps, frames = self._gaps_unlogged
        now = time.monotonic()
        if now < self._gap_next_log:
            self._gaps_unlogged = (jumps + 1, frames + gap)
            return
        self._gaps_unlogged, self._gap_next_log = (0, 0), now + 1.0
        log.warning(
            "pva %s: uniqueId jumped %d -> %d: %d frame(s) dropped upstream%s",
            self.channel_name, last, uid, gap,
            f" ({jumps} more jump(s), {frames} frame(s), since the last such line)"
            if jumps else "",
        )  # fmt: skip

    def _log_rejected(self, error: Exception) -> None:
        """One line a second at most, as :meth:`_log_gap` (a detector whose ROI changed sends
        a frame of the wrong shape on every update)."""
        now = time.monotonic()
        if now < self._rejected_next_log:
            self._rejected_unlogged += 1
            return
        more, self._rejected_unlogged, self._rejected_next_log = self._rejected_unlogged, 0, now + 1
        log.error("pva %s: update rejected: %s%s", self.channel_name, error,
                  f" ({more} more rejected since the last such line)" if more else "")  # fmt: skip

    def _decode(self, pv: Any, uid: int) -> np.ndarray | None:
        codec = _get(pv, "codec")
        codec_name = _get(codec, "name", "") if codec is not None else ""
        value = _get(pv, "value")
        branch = value[0] if isinstance(value, list | tuple) and value else value
        if not branch:
            return None
        (kind, arr), *_ = branch.items()
        if kind not in _PVA_DTYPES:
            raise InvalidInputError(f"value union branch {kind!r} is not a numeric array")
        arr = np.asarray(arr, dtype=_PVA_DTYPES[kind])
        if arr.size == 0:
            return None
        dims = _get(pv, "dimension") or []
        sizes = [int(_get(d, "size", 0)) for d in dims]
        if len(sizes) != 2:
            raise InvalidInputError(f"uniqueId {uid}: expected 2 dimensions, got {sizes}")
        shape = (sizes[1], sizes[0])
        if codec_name:
            arr = decompress_ndarray(codec_name, arr, codec, shape, _get(pv, "uncompressedSize"))
        if shape != self.shape or arr.size != shape[0] * shape[1]:
            raise InvalidInputError(
                f"uniqueId {uid}: frame is {sizes[0]}x{sizes[1]} ({arr.size} values), "
                f"the parameter file says {self.shape[1]}x{self.shape[0]}"
            )
        # Copied (widened where needed) into a slab row, so that frames which pile up while the
        # integrator is busy are integrated together as one stack (see FramePool).
        self._decoded = arr
        row = self.pool.take(arr.size, _PVA_WIDEN.get(arr.dtype, arr.dtype))
        np.copyto(row, arr.reshape(-1))
        return row.reshape(shape)

    @property
    def never_connected(self) -> bool:
        """Whether the channel never connected (no update, no connection callback): a
        mistyped name or an unreachable IOC, not an idle detector."""
        return self.updates == 0 and not self._connected and not self._was_disconnected

    def stop(self) -> None:
        was_stopped = self._stopped.is_set()
        if not was_stopped:
            self._drain()
        self._stopped.set()
        with self._lock:
            jumps, frames = self._gaps_unlogged
            self._gaps_unlogged = (0, 0)
            rejected, self._rejected_unlogged = self._rejected_unlogged, 0
        if jumps:
            log.warning("pva %s: %d more uniqueId jump(s), %d frame(s) dropped upstream, since "
                        "the last such line", self.channel_name, jumps, frames)  # fmt: skip
        if rejected:
            log.error("pva %s: %d more update(s) rejected since the last such line",
                      self.channel_name, rejected)  # fmt: skip
        if not was_stopped and self._channel is not None and self.never_connected:
            log.warning(
                "pva %s: the channel never connected in %.0f s: check its name, that its "
                "IOC is reachable (EPICS_PVA_ADDR_LIST / EPICS_PVA_AUTO_ADDR_LIST), and that "
                "it was up long enough: pvAccess searches less often the longer a channel is "
                "missing, so an IOC started after radint is found only seconds later (start "
                "the IOC first, or radint again)",
                self.channel_name, time.time() - self._subscribed_at,
            )  # fmt: skip
        channel, self._channel = self._channel, None
        if channel is not None:
            _retire_pvapy_channel(channel)
            self._wait_for_callbacks()

    #: A stop takes the updates still on their way (published before it, queued in pvAccess
    #: and the network while radint was behind: seconds of frames under overload) and counts
    #: them as dropped, until one published after the stop arrives, none came for
    #: DRAIN_QUIET_S, or DRAIN_MAX_S passed. stopMonitor would discard them uncounted.
    DRAIN_QUIET_S = 0.1
    DRAIN_MAX_S = 2.0

    def _drain(self) -> None:
        self._stop_time = time.time()
        self._draining.set()
        start, me = time.monotonic(), {threading.get_ident()}  # a sink may stop its source
        with self._callbacks_done:
            while not self._caught_up:
                now = time.monotonic()
                quiet_at = self._last_update_at + self.DRAIN_QUIET_S
                if (now >= quiet_at and self._callback_threads <= me) or (
                    now >= start + self.DRAIN_MAX_S
                ):
                    break
                self._callbacks_done.wait(max(0.005, min(quiet_at, start + self.DRAIN_MAX_S) - now))
        if self.dropped_at_stop:
            log.warning(
                "pva %s: %d frame(s) published before the stop were still on their way (radint "
                "was behind): counted as dropped, not integrated",
                self.channel_name, self.dropped_at_stop,
            )  # fmt: skip

    #: How long :meth:`stop` lets pvapy's thread run into a callback it had begun before the
    #: monitor stopped (it checks the monitor, then takes the GIL: microseconds).
    CALLBACK_GRACE_S = 0.05

    def _wait_for_callbacks(self, timeout: float = 10.0) -> None:
        """Return once no monitor callback runs or can still begin, the GIL released meanwhile
        (a callback ends at once after stop). A sink that stops the source from within its
        callback waits for the others only."""
        time.sleep(self.CALLBACK_GRACE_S)
        me = {threading.get_ident()}
        with self._callbacks_done:
            if not self._callbacks_done.wait_for(lambda: self._callback_threads <= me, timeout):
                log.warning("pva %s: a monitor callback still runs %.0f s after stopping",
                            self.channel_name, timeout)  # fmt: skip

    def join(self, timeout: float | None = None) -> None:
        return None


#: pvapy channels stopped by :meth:`PvaSource.stop`, kept until the process ends (see
#: :func:`_retire_pvapy_channel`).
_RETIRED_CHANNELS: list[Any] = []


def _retire_pvapy_channel(channel: Any) -> None:
    """Stop a pvapy channel's monitor and keep the channel object alive for good.

    A pvapy ``Channel`` must outlive its threads: its destructor waits only 0.1 s for the
    monitor thread, which may then be waiting for the GIL to call the subscriber; that thread
    later drops its reference to the subscriber without the GIL, and where the channel (the
    other holder) is gone the callable is freed there: a segmentation fault (1 stop in ~7 of
    a stream stopped while frames arrived). Its connection callback, called from pvAccess's
    threads up to process exit (a server going away, the client context's own teardown), is
    set to None, which pvapy checks before taking the GIL (pvapy then sleeps 0.1 s holding
    the GIL: once per stop). A stream holds one channel, so keeping it costs nothing that
    matters.
    """
    for method, args in (("stopMonitor", ()), ("unsubscribe", ("radint",)),
                         ("setConnectionCallback", (None,))):  # fmt: skip
        call = getattr(channel, method, None)
        if call is None:  # a test's stand-in channel
            continue
        try:
            call(*args)
        except Exception as e:
            log.debug("pva: %s: %s", method, e)
    _RETIRED_CHANNELS.append(channel)


# ------------------------------------------------------------------------------ folder
_IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".lock", ".swp")


def _fingerprint(path: Path, blocks: int = 16, size: int = 4096) -> bytes:
    """A digest of ``blocks`` samples spread over the file (a few pages, whatever its size):
    a file rewritten with a new frame differs in them; one only touched does not."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    try:
        with path.open("rb") as fh:
            length = fh.seek(0, os.SEEK_END)
            for k in range(blocks):
                fh.seek(max(0, (length - size) * k // max(1, blocks - 1)))
                h.update(fh.read(size))
    except OSError:
        return b""
    return h.digest()


class FolderSource(Source):
    """Watch a directory for new frame files (complete files only).

    A file is taken once its size and modification time have not changed for ``settle_s``
    (so a file still being written is left alone, pauses of the writer included); files
    already present at start are processed first, in natural name order (``img_2`` before
    ``img_10``), as are files that become ready together. A file that changes after it
    was read (frames appended) or that could not be read (cut short, held open by an HDF5
    writer) is read again each time it changes, from its first frame not yet sent, so no frame
    is sent twice or lost; one that never becomes readable is counted as dropped when the
    stream ends. Frames holding only zeros at the end of a file (a writer that allocates
    frames before it fills them: a fixed-size HDF5 dataset, a pre-sized TIFF) are held back
    until the file changes (then read as the rest) or stays unchanged for ``hold_s`` (then sent
    as they are); held frames still waiting when the stream stops are counted as dropped.
    Every frame of a file of several frames is labelled ``file:NAME:frameK``.
    Hidden files and ``*.tmp``/``*.part`` names are ignored
    (the usual "write, then rename" pattern), and so are files of other kinds (notes, logs) and
    the ``exclude`` files (the parameters' mask and dark).

    Parameters
    ----------
    directory : path
    shape : (n_z, n_y)
    extensions : tuple of str, optional
        Suffixes to take (default: the frame formats :func:`radint.io.inputs.frame_name` names).
    exclude : iterable of path, optional
        Files in the directory that are not frames (compared by resolved path).
    poll_s : float
        Poll interval in seconds.
    settle_s : float
        How long a file must stay unchanged before it is read.
    hold_s : float
        How long trailing all-zero frames wait for their file to change before they are sent.
    dataset : str, optional
        HDF5 dataset of the frames (default ``exchange/data``).
    zip_parameters : mapping, optional
        ``SkipFrame``, ``OmegaStart``, ``OmegaStep`` replacing a MIDAS zip's own (the parameter
        file's, :meth:`~radint.IntegrationConfig.zip_parameters`), as in ``radint batch``.
    """

    name = "folder"

    def __init__(
        self,
        directory: str | Path,
        shape: tuple[int, int],
        extensions: tuple[str, ...] | None = None,
        poll_s: float = 0.2,
        dataset: str | None = None,
        settle_s: float = 1.0,
        exclude: Iterable[str | Path | None] = (),
        zip_parameters: Mapping[str, float] | None = None,
        hold_s: float = 10.0,
    ) -> None:
        self.directory = Path(directory)
        self.zip_parameters = dict(zip_parameters or {})
        self._excluded = {Path(p).resolve() for p in exclude if p}
        if not self.directory.is_dir():
            raise RadintError(f"--watch {self.directory}: not a directory")
        self.shape = (int(shape[0]), int(shape[1]))
        self.extensions = extensions
        self.poll_s = poll_s
        self.dataset = dataset
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.settle_s = settle_s
        # name -> ((size, mtime, inode), monotonic time that signature was first seen)
        self._pending: dict[str, tuple[tuple[int, float, int], float]] = {}
        # Files read (or tried): name -> (signature then, frames sent, why it failed or None).
        # A file that changes after is read again from its first frame not sent: a writer that
        # appends frames (TIFF pages, HDF5 rows without file locking) loses none. A file replaced
        # under the same name (another inode, or smaller), rewritten in place with no frame past
        # those sent, or deleted and written again, is a new file: all its frames are read.
        self._known: dict[str, tuple[tuple[int, float, int], int, str | None]] = {}
        # name -> sample of the bytes read (_fingerprint): tells a rewrite from a mere touch.
        self._prints: dict[str, bytes] = {}
        # name -> (monotonic time, count) of trailing all-zero frames held back (not yet sent).
        self._held: dict[str, tuple[float, int]] = {}
        # name -> CRC-32 of each frame sent: a file rewritten in place resends only changed ones.
        self._digests: dict[str, list[int]] = {}
        self._flush: set[str] = set()
        self.hold_s = hold_s
        self._next_id = 0

    def _wanted(self, name: str) -> bool:
        from radint.io.inputs import frame_name

        low = name.lower()
        if name.startswith(".") or low.endswith(_IGNORED_SUFFIXES):
            return False
        if self._excluded and (self.directory / name).resolve() in self._excluded:
            return False
        if self.extensions is None:
            return frame_name(name)
        return low.endswith(tuple(e.lower() for e in self.extensions))

    def start(self, sink: Sink, stats: SourceStats) -> None:
        self._thread = threading.Thread(
            target=self._loop, args=(sink, stats), name="radint-folder", daemon=True
        )
        self._thread.start()
        log.info("folder: watching %s", self.directory)

    def _complete_files(self) -> list[Path]:
        ready = []
        try:
            # Natural order, as `radint integrate` reads a folder: img_2 before img_10.
            entries = sorted(os.scandir(self.directory), key=lambda e: natural_key(e.name))
        except OSError as e:
            log.error("folder %s: %s", self.directory, e)
            return []
        present = {entry.name for entry in entries}
        for name in [
            n for n, known in self._known.items() if n not in present and known[2] is None
        ]:
            del self._known[name]  # deleted: a file written under its name later is new
            self._prints.pop(name, None)
            self._digests.pop(name, None)
        for entry in entries:
            if not self._wanted(entry.name):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue
            sig = (st.st_size, st.st_mtime, st.st_ino)
            known = self._known.get(entry.name)
            now = time.monotonic()
            if known is not None and known[0] == sig:
                held = self._held.get(entry.name)
                if held is not None and now - held[0] >= self.hold_s:
                    self._pending[entry.name] = (sig, now)  # zeros after all: send them
                    self._flush.add(entry.name)
                    ready.append(Path(entry.path))
                continue  # unchanged since it was read (or failed): nothing new
            seen = self._pending.get(entry.name)
            if seen is None or seen[0] != sig:
                self._pending[entry.name] = (sig, now)
            elif st.st_size > 0 and now - seen[1] >= self.settle_s:
                ready.append(Path(entry.path))
        return ready

    def _loop(self, sink: Sink, stats: SourceStats) -> None:
        from radint.io import read_frames

        try:
            while not self._stop.is_set():
                for path in self._complete_files():
                    if not self._read_file(path, sink, stats, read_frames):
                        return
                self._stop.wait(self.poll_s)
        except Exception as e:  # a defect, not a bad file (those are retried): say so, stop
            self.failure = f"{type(e).__name__}: {e}"
            log.exception("folder: watching %s stopped on an unexpected error", self.directory)
        finally:
            for name, (_, sent, why) in self._known.items():
                if why is None:
                    continue
                stats.add("dropped")
                log.error("folder: %s never became readable after %d frame(s): %s", name, sent, why)
            # Files still settling (new or changed less than --settle ago): not read, so their
            # frames are unknown; each is counted as one dropped, as an unreadable file is.
            unread = sorted(self._pending, key=natural_key)
            if unread:
                stats.add("dropped", len(unread))
                log.error(
                    "folder: %d file(s) new or changed within the last %.1f s (--settle) when "
                    "the stream stopped were not read: %s%s; integrate them with `radint "
                    "integrate`, or stop the stream once the last file has settled",
                    len(unread), self.settle_s, ", ".join(unread[:5]),
                    " ..." if len(unread) > 5 else "",
                )  # fmt: skip
            for name, (_, n_held) in self._held.items():
                stats.add("received", n_held)  # read from the file, never sent on
                stats.add("dropped", n_held)
                log.error(
                    "folder: %s: its last %d frame(s) held only zeros (allocated, not yet "
                    "written?) and were not sent before the stream stopped",
                    name, n_held,
                )  # fmt: skip

    def _read_file(self, path: Path, sink: Sink, stats: SourceStats, read_frames: Any,
                   upto: int | None = None) -> bool:  # fmt: skip
        """Send the frames of ``path`` not sent before (those before frame ``upto``); False when
        the sink stops taking."""
        name = path.name
        pending = self._pending.pop(name)
        sig = pending[0]
        known = self._known.pop(name, None)
        before, sent_before, _ = known or (sig, 0, None)
        if before[2] != sig[2] or sig[0] < before[0]:
            sent_before = 0  # replaced (a new inode) or cut down: a new file under an old name
        sent = sent_before
        try:
            # Frames sent before (the file grew, or failed part-way) are not read again; a file
            # of the same size that changed but holds no frame past them was rewritten in place
            # (a detector's "latest.tif"): read it all.
            frames: Any = iter(())
            rewritten: list[int] = []  # digests of the frames sent before a rewrite
            if sent_before:
                frames = read_frames(path, dataset=self.dataset, shape=self.shape,
                                     frames=slice(sent_before, upto),
                                     zip_parameters=self.zip_parameters)  # fmt: skip
                first = next(frames, None)
                if first is not None:
                    frames = itertools.chain([first], frames)
                elif sig[0] == before[0] and _fingerprint(path) != self._prints.get(name):
                    log.info("folder: %s rewritten in place: its changed frames are sent", path)
                    sent_before = sent = 0
                    rewritten = list(self._digests.get(name, []))
                # (the same bytes, touched only: nothing new)
            if not sent_before:
                if not rewritten:
                    self._digests.pop(name, None)  # a new file under this name
                frames = read_frames(path, dataset=self.dataset, shape=self.shape,
                                     frames=None if upto is None else slice(0, upto),
                                     zip_parameters=self.zip_parameters)  # fmt: skip
            flush = name in self._flush
            self._flush.discard(name)
            self._held.pop(name, None)
            held: list[Any] = []  # trailing all-zero frames not sent yet (no pixels kept)
            for fr, several in _with_next(frames):
                if fr.index < len(rewritten) and rewritten[fr.index] == _digest(fr.data):
                    sent = fr.index + 1  # unchanged by the rewrite (only metadata moved)
                    continue
                if not flush and not fr.data.any():
                    held.append(dataclasses.replace(fr, data=None))
                    continue
                for zeros in held:  # zeros inside the file after all: real frames
                    zeros = dataclasses.replace(zeros, data=np.zeros_like(fr.data))
                    if not self._send_frame(path, zeros, True, sink, stats):
                        return False
                held.clear()
                sent = fr.index + 1
                if not self._send_frame(path, fr, several, sink, stats):
                    return False
            if held:
                self._held[name] = (time.monotonic(), len(held))
                log.info(
                    "folder: %s: frame(s) %d-%d hold only zeros: held back until the file "
                    "changes (or %.0f s)",
                    path, held[0].index, held[-1].index, self.hold_s,
                )  # fmt: skip
        except UnwrittenFramesError as e:
            # A fixed-size HDF5 stack being filled: its written frames go now, the rest (read
            # from there) when the file changes.
            if upto is None and e.frames[0] > sent:
                self._pending[name] = pending
                if known is not None:
                    self._known[name] = known
                if not self._read_file(path, sink, stats, read_frames, upto=e.frames[0]):
                    return False
                sent = self._known[name][1]
                log.info("folder: %s: frames %d.. not written yet; the rest when it changes",
                         path, sent)  # fmt: skip
            else:
                log.warning("folder: %s: %s (waiting for it to change)", path, e)
            self._known[name] = (sig, sent, str(e))
            return True
        except Exception as e:
            # Cut short, corrupt or still held by its writer: tried again when it changes (the
            # decoding libraries raise their own types: struct.error, zlib.error, codec errors).
            why = str(e) if isinstance(e, RadintError | OSError) else f"{type(e).__name__}: {e}"
            self._known[name] = (sig, sent, why)
            log.warning("folder: %s (waiting for it to change)",
                        why if str(path) in why else f"{path}: {why}")  # fmt: skip
            return True
        self._known[name] = (sig, sent, None)
        self._prints[name] = _fingerprint(path)
        return True

    def _send_frame(self, path: Path, fr: Any, several: bool, sink: Sink, stats: SourceStats
                    ) -> bool:  # fmt: skip
        digests = self._digests.setdefault(path.name, [])
        digests.extend([-1] * (fr.index + 1 - len(digests)))
        digests[fr.index] = _digest(fr.data)
        label = f"file:{path.name}:frame{fr.index}" if several else f"file:{path.name}"
        metadata = {"file": str(path), "frame": fr.index}
        with contextlib.suppress(OSError):  # gone meanwhile: the frame was read all the same
            metadata["source_timestamp"] = path.stat().st_mtime
        item = StreamItem(self._next_id, fr.data, label, time.time(), metadata)
        self._next_id += 1
        stats.add("received")
        return sink(item)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def _digest(data: np.ndarray) -> int:
    """CRC-32 of a frame's pixels (~3 ms for a Pilatus 2M frame, GIL released)."""
    return zlib.crc32(np.ascontiguousarray(data).data)


def _with_next(frames: Iterator[Any]) -> Iterator[tuple[Any, bool]]:
    """``(frame, several)``: ``several`` when the file holds more than one frame (as far as
    can be seen: the frame is not its first, or another one follows it)."""
    previous = None
    for fr in frames:
        if previous is not None:
            yield previous, True
        previous = fr
    if previous is not None:
        yield previous, previous.index > 0 or previous.metadata.get("n_frames", 1) > 1
