"""TIFF reader: single- and multi-page files, one page decoded per frame (tifffile)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tifffile

from radint.io._source import FrameSource, native
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
        self.dtype = first.dtype
        self._size = path.stat().st_size
        self._check_ifd_chain()

    def _check_ifd_chain(self) -> None:
        """ReaderError when the last page points to a next page beyond the end of the file.

        tifffile stops at such a page with only a log message, which would silently drop the
        rest of a truncated multi-page file.
        """
        fmt = self._tif.tiff
        fh = self._tif.filehandle
        last = self._tif.pages[-1]
        fh.seek(last.offset)
        (n_tags,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
        fh.seek(last.offset + fmt.tagnosize + n_tags * fmt.tagsize)
        raw = fh.read(fmt.offsetsize)
        next_offset = struct.unpack(fmt.offsetformat, raw)[0] if len(raw) == fmt.offsetsize else -1
        if next_offset != 0 and not 0 < next_offset < self._size:
            self._tif.close()
            raise ReaderError(
                f"{self.path}: truncated TIFF: page {self.n_frames - 1} points to a next page at "
                f"byte {next_offset}, file has {self._size} bytes"
            )

    def read(self, index: int) -> np.ndarray:
        """Decode page ``index``; ReaderError when the page's data is cut short."""
        return self._decode(index, None)

    def read_block(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Pages ``start .. stop-1``, decoded straight into ``out`` when given."""
        if out is None:
            return super().read_block(start, stop)
        for k, i in enumerate(range(start, stop)):
            page = self._tif.pages[i]
            if page.dtype == out.dtype and tuple(page.shape) == out.shape[1:]:
                self._decode(i, out[k])
            else:  # a page unlike the first: decoded on its own, then cast
                out[k] = self._decode(i, None)
        return out

    def _frame_extent(self, index: int) -> tuple[int, np.dtype] | None:
        """Where an uncompressed page's pixels lie, when they lie in one piece."""
        page = self._tif.pages[index]
        if not (page.is_contiguous and page.is_final) or tuple(page.shape) != self.frame_shape:
            return None
        dtype = np.dtype(page.dtype).newbyteorder(self._tif.byteorder)
        return (int(page.dataoffsets[0]), dtype) if native(dtype) else None

    def _decode(self, index: int, out: np.ndarray | None) -> np.ndarray:
        page = self._tif.pages[index]
        end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts))
        if end > self._size:
            raise ReaderError(
                f"{self.path}: page {index} is truncated: its data ends at byte {end}, "
                f"file has {self._size} bytes"
            )
        try:
            return page.asarray(out=out)
        except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
            raise ReaderError(f"{self.path}: page {index} is truncated or corrupt ({exc})") from exc

    def close(self) -> None:
        """Close the TIFF file."""
        self._tif.close()
