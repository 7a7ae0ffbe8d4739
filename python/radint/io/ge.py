"""GE raw reader (``.ge1``…``.ge5``, ``.geN``): 8192-byte header, then uint16 frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radint.io._source import FrameSource
from radint.io.errors import ReaderError

GE_HEADER_BYTES = 8192
GE_DEFAULT_SHAPE = (2048, 2048)


class RawSource(FrameSource):
    """Headerless-after-offset binary frames of one shape and dtype, read with one seek each.

    Parameters
    ----------
    path : Path
    shape : tuple of int
        Frame shape ``(n_z, n_y)``.
    dtype : numpy dtype
        On-disk pixel type (byte order included, e.g. ``"<u2"``).
    header_bytes : int
        Bytes to skip at the start of the file.
    """

    dtype_on_disk = True

    def __init__(
        self, path: Path, shape: tuple[int, int], dtype: np.dtype, header_bytes: int = 0
    ) -> None:
        super().__init__(path)
        if len(shape) != 2 or min(shape) <= 0:
            raise ReaderError(f"{path}: frame shape must be two positive sizes, got {shape}")
        self.frame_shape = (int(shape[0]), int(shape[1]))
        self._dtype = self.dtype = np.dtype(dtype)
        self._header = header_bytes
        self._frame_bytes = self.frame_shape[0] * self.frame_shape[1] * self._dtype.itemsize
        payload = path.stat().st_size - header_bytes
        if payload < 0 or payload % self._frame_bytes:
            raise ReaderError(
                f"{path}: {payload + header_bytes} bytes is not a {header_bytes}-byte header plus "
                f"whole frames of {self.frame_shape} {self._dtype} ({self._frame_bytes} bytes "
                "each); wrong frame shape/dtype or truncated file"
            )
        self.n_frames = payload // self._frame_bytes
        self._fh = path.open("rb")

    def read(self, index: int) -> np.ndarray:
        """Read frame ``index``."""
        self._fh.seek(self._header + index * self._frame_bytes)
        buf = self._fh.read(self._frame_bytes)
        if len(buf) != self._frame_bytes:
            raise ReaderError(f"{self.path}: frame {index} is truncated")
        return np.frombuffer(buf, dtype=self._dtype).reshape(self.frame_shape)

    def _frame_extent(self, index: int) -> tuple[int, np.dtype] | None:
        if not self._dtype.isnative:
            return None
        return self._header + index * self._frame_bytes, self._dtype

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def open_ge(path: Path, shape: tuple[int, int] | None, dtype: np.dtype | None) -> RawSource:
    """A GE file: 8192-byte header, little-endian uint16 unless ``dtype`` says otherwise."""
    return RawSource(
        path, shape or GE_DEFAULT_SHAPE, np.dtype(dtype or "<u2"), header_bytes=GE_HEADER_BYTES
    )
