"""The per-format frame source that :func:`radint.io.read_frames` drives.

Every format module subclasses :class:`FrameSource`: it opens the file, knows how many frames it
holds and reads one frame on request, so iteration keeps one frame in memory at a time.
"""

from __future__ import annotations

import mmap
import os
import time
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
        self._mapping: FileMapping | None = None

    def mapped(self, index: int) -> np.ndarray | None:
        """Frame ``index`` as a read-only view of the file mapped into memory, or None where
        its bytes are not stored as plain pixels in this machine's byte order (compressed,
        split, cast) or the file is not to be mapped (see :class:`FileMapping`). Formats that
        can say where a frame's pixels lie override :meth:`_frame_extent`."""
        extent = self._frame_extent(index)
        if extent is None:
            return None
        if self._mapping is None:
            self._mapping = FileMapping(self.path)
        offset, dtype = extent
        return self._mapping.view(offset, dtype, self.frame_shape)

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

    def check_index(self, index: int) -> int:
        """``index`` made non-negative; ReaderError when outside ``[-n_frames, n_frames)``."""
        if not -self.n_frames <= index < self.n_frames:
            raise ReaderError(
                f"{self.label}: frame {index} requested, file holds {self.n_frames} frame(s)"
            )
        return index % self.n_frames


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


#: A file modified less than this long ago may still be written to: it is read, not mapped.
SETTLED_SECONDS = 2.0


class FileMapping:
    """A whole file mapped read-only into memory, for frames read in place (no copy).

    Why: reading a 10 MB frame copies it from the page cache (~2 ms of CPU on the project's
    2-core machine, ~15 % of integrating it); a mapped frame is integrated straight from the
    page cache. A mapped file cut short while mapped makes the next access to the lost pages
    crash the process (SIGBUS), so only files settled for :data:`SETTLED_SECONDS` are mapped
    (:meth:`view` returns None for others); ``RADINT_MAP_FILES=0`` turns mapping off. The
    mapping lives as long as any view of it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self._refused = _mapping_off()
        if not self._refused:
            try:
                st = path.stat()
                self._refused = time.time() - st.st_mtime < SETTLED_SECONDS or st.st_size == 0
            except OSError:
                self._refused = True

    def view(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
        """``shape`` pixels of ``dtype`` from byte ``offset``; None when refused, outside the
        file or misaligned."""
        if self._refused:
            return None
        if self._map is None:
            try:
                with open(self.path, "rb") as fh:
                    self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                self._refused = True
                return None
        count = int(np.prod(shape))
        if (
            offset < 0
            or offset % dtype.itemsize
            or offset + count * dtype.itemsize > len(self._map)
        ):
            return None
        return np.frombuffer(self._map, dtype, count=count, offset=offset).reshape(shape)


def _mapping_off() -> bool:
    return os.environ.get("RADINT_MAP_FILES", "1") == "0"
