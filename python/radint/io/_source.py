"""The per-format frame source that :func:`radint.io.read_frames` drives.

Every format module subclasses :class:`FrameSource`: it opens the file, knows how many frames it
holds and reads one frame on request, so iteration keeps one frame in memory at a time.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from radint.io.errors import ReaderError


class FrameSource(ABC):
    """An open frame file: ``n_frames`` frames of ``frame_shape``, read one at a time.

    Parameters
    ----------
    path : Path
        The file (or Zarr directory) being read.
    """

    #: True when ``dtype=`` describes the bytes on disk (raw, GE) rather than a cast.
    dtype_on_disk = False
    #: Pixel type of every frame when the format knows it before reading (else None).
    dtype: np.dtype | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n_frames = 0
        self.frame_shape: tuple[int, ...] = ()
        self.label = str(path)
        self._plain_file: Any = None  # raw handle of read_plain, opened on first use

    def data_end(self, index: int) -> int | None:
        """The byte of the file where frame ``index``'s stored data ends, where the format
        says so without reading pixels (None where it does not): a file shorter than that was
        cut short."""
        extent = self.plain_extent(index)
        if extent is None:
            return None
        offset, dtype = extent
        return offset + int(np.prod(self.frame_shape)) * np.dtype(dtype).itemsize

    def read_plain(self, index: int, out: np.ndarray) -> bool:
        """Read frame ``index`` straight into ``out`` with one system call where its bytes are
        stored as plain pixels of ``out``'s type in this machine's byte order; False (``out``
        untouched) where they are not (compressed, split, cast) and the frame is to be decoded.
        Formats that can say where a frame's pixels lie override :meth:`_frame_extent`.

        Why: one ``pread`` skips the format library's per-frame work (~1.6 ms per one-frame
        TIFF in tifffile). Frames are copied, not mapped: a frame read from a mapped file sits
        on 4 KB pages, whose TLB misses made the kernel's random pixel loads ~30 % dearer than
        from a (huge-page) buffer on the project's VM, more than the copy costs.

        Raises
        ------
        ReaderError
            When the file ends before the frame does.
        """
        extent = self.plain_extent(index)
        if extent is None:
            return False
        offset, dtype = extent
        if out.dtype != dtype or out.shape != tuple(self.frame_shape) or not out.flags.c_contiguous:
            return False
        if self._plain_file is None:
            self._plain_file = open(self.path, "rb", buffering=0)  # closed by __exit__
        view = out.reshape(-1).data.cast("B")
        fd = self._plain_file.fileno()
        got = 0
        while got < out.nbytes:  # a read may return less than asked (signals); 0 = end of file
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [view[got:]], offset + got)
            else:  # Windows
                self._plain_file.seek(offset + got)
                n = self._plain_file.readinto(view[got:]) or 0
            if n == 0:
                raise ReaderError(
                    f"{self.label}: frame {index} is truncated: {out.nbytes} bytes expected "
                    f"from byte {offset}, the file ends after {got}"
                )
            got += n
        return True

    def plain_extent(self, index: int) -> tuple[int, np.dtype] | None:
        """Byte offset and native pixel type of frame ``index`` where its pixels lie in the file
        in one piece, row-major, as ``frame_shape`` (2-D) pixels of that type in this machine's
        byte order; None where the frame must be decoded (compressed, split, big-endian)."""
        if len(self.frame_shape) != 2:
            return None
        return self._frame_extent(index)

    def _frame_extent(self, index: int) -> tuple[int, np.dtype] | None:
        """Byte offset and native pixel type of frame ``index``'s plain pixels, or None."""
        return None

    @abstractmethod
    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` (0 ≤ index < n_frames) as a 2-D array of shape ``frame_shape``."""

    def read_block(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start .. stop-1`` as one ``(n, n_z, n_y)`` array, into ``out`` when given
        (of that shape and the frames' dtype). Formats that store stacks read them in one call."""
        if out is None:
            return np.stack([self.read(i) for i in range(start, stop)])
        for k, i in enumerate(range(start, stop)):
            out[k] = self.read(i)
        return out

    def frame_metadata(self, index: int) -> dict[str, Any]:
        """Per-frame metadata (empty unless the format stores some)."""
        return {}

    def default_indices(self) -> range:
        """Frames read when the caller selects none (all of them unless the format says to skip)."""
        return range(self.n_frames)

    def frame_id(self, index: int) -> int:
        """The number results carry for frame ``index`` (its position, unless the format
        numbers frames otherwise)."""
        return index

    def close(self) -> None:  # noqa: B027 - optional hook: sources without a handle keep it
        """Release the file handle."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if self._plain_file is not None:
            self._plain_file.close()

    def check_index(self, index: int) -> int:
        """``index`` made non-negative; ReaderError when outside ``[-n_frames, n_frames)``."""
        if not -self.n_frames <= index < self.n_frames:
            raise ReaderError(
                f"{self.label}: frame {index} requested, file holds {self.n_frames} frame(s)"
            )
        return index % self.n_frames


#: numpy kinds of pixel types radint integrates: bool, signed and unsigned integers, floats.
NUMERIC_KINDS = "biuf"
_KIND_NAMES = {
    "O": "variable-length or references",
    "S": "byte string",
    "U": "string",
    "T": "string",
    "V": "opaque",
    "c": "complex",
    "M": "date-time",
    "m": "time delta",
}


def check_pixel_dtype(label: str, dtype: object) -> np.dtype:
    """``dtype`` as a numpy dtype when it holds real numbers (bool, integer, float); else
    ReaderError naming the file and what was found.

    Why: every reader checks this before any frame buffer is made or read. A stack buffer of
    object type built over recycled bytes holds garbage pointers (a segfault when touched),
    and strings, compounds or complex numbers have no intensity to integrate.

    Raises
    ------
    ReaderError
        For object (HDF5 variable-length, references), string, compound, complex, date-time
        and any other non-numeric pixel type.
    """
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        dt = None
    if dt is not None and dt.kind in NUMERIC_KINDS and dt.fields is None and dt.subdtype is None:
        return dt
    if dt is None:
        what = f"type {dtype}"
    elif dt.fields is not None:
        what = f"compound type {dt}"
    else:
        what = f"type {dt} ({_KIND_NAMES.get(dt.kind, 'not a number')})"
    raise ReaderError(
        f"{label}: pixels of {what}, expected real numbers (integer or floating point); "
        "is this the detector frames' dataset? (--dataset / -dataLoc chooses another)"
    )


def frames_from_stack(label: str, shape: tuple[int, ...]) -> tuple[int, tuple[int, int]]:
    """Number of frames and frame shape of a 2-D (one frame) or 3-D (stack) dataset shape.

    Leading axes of length 1 beyond the third are dropped (e.g. ``(1, n, z, y)``).
    """
    dims = list(shape)
    while len(dims) > 3 and dims[0] == 1:
        dims.pop(0)
    if len(dims) == 2:
        return 1, (dims[0], dims[1])
    if len(dims) == 3:
        return dims[0], (dims[1], dims[2])
    raise ReaderError(f"{label}: expected a 2-D frame or 3-D stack, found shape {tuple(shape)}")
