"""The MIDAS streaming wire protocol (spec §7.1), byte for byte.

Per frame: a 4-byte header ``uint16 dataset_num, uint16 dtype`` (little-endian, as MIDAS's
``struct.pack('HH')`` on x86), then exactly ``NrPixelsY·NrPixelsZ`` pixels, row-major (z·NY + y),
raw orientation. There is no length field: the receiver knows the frame size from its parameter
file. dtype 6 is MIDAS's hybrid sparse format: ``u32 C, u16 base[N], i32 idx[C], i64 val[C]``
(``val`` overrides ``base`` at ``idx``).
"""

from __future__ import annotations

import struct

import numpy as np

from radint.exceptions import RadintError

__all__ = [
    "DTYPES",
    "HEADER",
    "HYBRID",
    "ProtocolError",
    "decode_frame",
    "decode_stream",
    "encode_frame",
    "encode_frame_bytes",
    "payload_size",
    "sender_encoding",
]

HEADER = struct.Struct("<HH")
"""``uint16 dataset_num, uint16 dtype``."""
HYBRID = 6
HYBRID_COUNT = struct.Struct("<I")
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<u1"),
    1: np.dtype("<u2"),
    2: np.dtype("<u4"),
    3: np.dtype("<i8"),
    4: np.dtype("<f4"),
    5: np.dtype("<f8"),
}
"""Fixed-size dtype codes → pixel type of the payload."""

# MIDAS integrator_server.py send_data_chunk: (kind, itemsize) → code. Signed integers go out
# under the unsigned code of the same width (the receiver re-interprets them as unsigned).
_SENDER_CODES = {
    ("u", 1): 0,
    ("i", 1): 0,
    ("u", 2): 1,
    ("i", 2): 1,
    ("u", 4): 2,
    ("i", 4): 2,
    ("u", 8): 3,
    ("i", 8): 3,
    ("f", 4): 4,
    ("f", 8): 5,
}


class ProtocolError(RadintError, ValueError):
    """Bytes that are not a valid MIDAS stream frame (unknown dtype, wrong size)."""


def _bytes_of(data: bytes | bytearray | memoryview | np.ndarray) -> memoryview:
    """A byte view of ``data`` (no copy)."""
    view = data.data if isinstance(data, np.ndarray) else memoryview(data)
    return view.cast("B")


def payload_size(dtype: int, n_pixels: int, hybrid_count: int | None = None) -> int:
    """Payload bytes after the 4-byte header.

    Parameters
    ----------
    dtype : int
        Wire dtype code 0–6.
    n_pixels : int
        ``NrPixelsY·NrPixelsZ``.
    hybrid_count : int, optional
        ``C`` of a hybrid (dtype 6) frame; needed for dtype 6.
    """
    if dtype in DTYPES:
        return n_pixels * DTYPES[dtype].itemsize
    if dtype == HYBRID:
        if hybrid_count is None:
            raise ProtocolError("hybrid (dtype 6) payload size needs the overflow count C")
        return HYBRID_COUNT.size + 2 * n_pixels + 12 * hybrid_count
    raise ProtocolError(f"unknown dtype code {dtype} (expected 0-6)")


def sender_encoding(data: np.ndarray, compress: bool = False) -> tuple[int, list[np.ndarray]]:
    """The dtype code and the payload pieces MIDAS's sender would put on the wire for ``data``.

    Plain: uint8/int8 → 0, uint16/int16 → 1, uint32/int32 → 2, uint64/int64 → 3 (signed data is
    sent re-interpreted as unsigned), float32 → 4, float64 → 5, anything else cast to int64 (3).
    ``compress`` (MIDAS ``--compress``): if max ≤ 65535 the frame goes as uint16 (dtype 1, values
    cast like ``astype(uint16)``), else as hybrid dtype 6 with every pixel > 65535 listed.

    Parameters
    ----------
    data : ndarray
        One frame, any shape (sent flattened in C order: row-major, z·NY + y) and any dtype
        or byte order.
    compress : bool
        MIDAS ``--compress`` as above; default False. An empty frame is sent plain.

    Returns
    -------
    code : int
        The wire dtype code, 0–6.
    pieces : list of ndarray
        Little-endian arrays whose bytes, concatenated, form the payload.
    """
    flat = np.ascontiguousarray(data).reshape(-1)
    if compress and flat.size:
        if flat.max() <= 65535:
            return 1, [flat.astype("<u2")]
        over = flat > 65535
        idx = np.flatnonzero(over).astype("<i4")
        val = flat[over].astype("<i8")
        count = np.array([idx.size], dtype="<u4")
        return HYBRID, [count, flat.astype("<u2"), idx, val]
    code = _SENDER_CODES.get((flat.dtype.kind, flat.dtype.itemsize))
    if code is None:
        return 3, [flat.astype("<i8")]
    wire = DTYPES[code]
    if flat.dtype.kind in "iu" and flat.dtype.kind != wire.kind:
        # Values to little-endian first: a big-endian array viewed as "<u" had its bytes read
        # backwards (300 as 738 263 040).
        flat = flat.astype(flat.dtype.newbyteorder("<"), copy=False)
        flat = flat.view(flat.dtype.str.replace("i", "u"))
    return code, [flat.astype(wire, copy=False)]


def encode_frame(
    dataset_num: int, data: np.ndarray, compress: bool = False
) -> tuple[bytes, list[memoryview]]:
    """Header and payload buffers of one frame (for ``socket.sendmsg`` without copying).

    ``dataset_num`` is taken modulo 65536 like MIDAS's counter.

    Parameters
    ----------
    dataset_num : int
        The frame's number for the header.
    data : ndarray
        The frame's pixels, encoded as :func:`sender_encoding` does.
    compress : bool
        MIDAS ``--compress`` (uint16 or hybrid dtype 6), as in :func:`sender_encoding`;
        default False.

    Returns
    -------
    header : bytes
        The 4-byte header ``uint16 dataset_num, uint16 dtype``, little-endian.
    payload : list of memoryview
        Byte views of the payload pieces, in wire order.
    """
    code, pieces = sender_encoding(data, compress)
    header = HEADER.pack(dataset_num % 65536, code)
    return header, [_bytes_of(p) for p in pieces]


def encode_frame_bytes(dataset_num: int, data: np.ndarray, compress: bool = False) -> bytes:
    """One frame as bytes (header + payload).

    Parameters
    ----------
    dataset_num, data, compress
        As in :func:`encode_frame`.

    Returns
    -------
    bytes
        The 4-byte header followed by the payload.
    """
    header, views = encode_frame(dataset_num, data, compress)
    return header + b"".join(bytes(v) for v in views)


def decode_frame(dtype: int, payload: bytes | memoryview | np.ndarray, n_pixels: int) -> np.ndarray:
    """Pixels (flat, ``n_pixels``) of one payload.

    Fixed dtypes decode to their wire type without copying; hybrid frames decode to int64.

    Parameters
    ----------
    dtype : int
        The header's wire dtype code, 0–6 (:data:`DTYPES`, :data:`HYBRID`).
    payload : bytes-like or ndarray
        The bytes after the header, exactly one frame's.
    n_pixels : int
        Pixels per frame, ``NrPixelsY·NrPixelsZ``.

    Returns
    -------
    ndarray, shape (n_pixels,)
        The pixels, row-major in the raw orientation: a read-only view of ``payload`` for
        fixed dtypes, a new int64 array for hybrid frames.

    Raises
    ------
    ProtocolError
        Unknown dtype or a payload of the wrong size; a hybrid index outside the frame.
    """
    buf = _bytes_of(payload)
    if dtype in DTYPES:
        want = n_pixels * DTYPES[dtype].itemsize
        if buf.nbytes != want:
            raise ProtocolError(f"dtype {dtype} payload is {buf.nbytes} bytes, expected {want}")
        return np.frombuffer(buf, dtype=DTYPES[dtype])
    if dtype != HYBRID:
        raise ProtocolError(f"unknown dtype code {dtype} (expected 0-6)")
    if buf.nbytes < HYBRID_COUNT.size:
        raise ProtocolError("hybrid payload shorter than its 4-byte count")
    (count,) = HYBRID_COUNT.unpack_from(buf)
    want = payload_size(HYBRID, n_pixels, count)
    if buf.nbytes != want:
        raise ProtocolError(f"hybrid payload is {buf.nbytes} bytes, expected {want} (C={count})")
    return decode_hybrid(count, buf[HYBRID_COUNT.size :], n_pixels)


def decode_hybrid(count: int, body: bytes | bytearray | memoryview, n_pixels: int) -> np.ndarray:
    """Hybrid body (after the count): ``u16 base[N], i32 idx[C], i64 val[C]`` → int64 pixels."""
    body = memoryview(body).cast("B")
    base_end = 2 * n_pixels
    idx_end = base_end + 4 * count
    out = np.frombuffer(body[:base_end], dtype="<u2").astype(np.int64)
    idx = np.frombuffer(body[base_end:idx_end], dtype="<i4")
    val = np.frombuffer(body[idx_end : idx_end + 8 * count], dtype="<i8")
    if count and (idx.min() < 0 or idx.max() >= n_pixels):
        raise ProtocolError(f"hybrid index out of range 0..{n_pixels - 1}")
    out[idx] = val
    return out


def decode_stream(data: bytes, n_pixels: int) -> tuple[list[tuple[int, int, np.ndarray]], int]:
    """Decode back-to-back frames from a byte string.

    Parameters
    ----------
    data : bytes
        Frames as sent (header + payload each), from the start of a frame.
    n_pixels : int
        Pixels per frame, ``NrPixelsY·NrPixelsZ``.

    Returns
    -------
    frames : list of (dataset_num, dtype, pixels)
    consumed : int
        Bytes used; a trailing partial frame is left unconsumed.

    Raises
    ------
    ProtocolError
        A header with an unknown dtype code, or a hybrid index outside the frame.
    """
    frames = []
    pos = 0
    while len(data) - pos >= HEADER.size:
        num, code = HEADER.unpack_from(data, pos)
        start = pos + HEADER.size
        if code == HYBRID:
            if len(data) - start < HYBRID_COUNT.size:
                break
            (count,) = HYBRID_COUNT.unpack_from(data, start)
            size = payload_size(code, n_pixels, count)
        else:
            size = payload_size(code, n_pixels)
        if len(data) - start < size:
            break
        frames.append((num, code, decode_frame(code, data[start : start + size], n_pixels)))
        pos = start + size
    return frames, pos
