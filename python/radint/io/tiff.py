"""TIFF reader: single- and multi-page files, one page decoded per frame (tifffile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from radint.io._source import FrameSource
from radint.io.errors import ReaderError


class TiffSource(FrameSource):
    """Pages of a TIFF file as frames; each page must be one 2-D image."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._tif = tifffile.TiffFile(path)
            self.n_frames = len(self._tif.pages)
            first = self._tif.pages.first
        except (tifffile.TiffFileError, ValueError, OSError) as exc:
            raise ReaderError(f"{path}: not a readable TIFF file ({exc})") from exc
        if len(first.shape) != 2:
            self._tif.close()
            raise ReaderError(f"{path}: expected 2-D pages, page 0 has shape {first.shape}")
        self.frame_shape = tuple(first.shape)

    def read(self, index: int) -> np.ndarray:
        """Decode page ``index``; ReaderError when the page's data is cut short."""
        try:
            return self._tif.pages[index].asarray()
        except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
            raise ReaderError(f"{self.path}: page {index} is truncated or corrupt ({exc})") from exc

    def close(self) -> None:
        """Close the TIFF file."""
        self._tif.close()
