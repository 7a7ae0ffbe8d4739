"""TIFF reader: single- and multi-page files, one page decoded per frame (tifffile)."""

from __future__ import annotations

import contextlib
import logging
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from radint.io._source import FrameSource
from radint.io.errors import ReaderError

#: Baseline TIFF tags read by :func:`plain_image`.
_WIDTH, _LENGTH, _BITS, _COMPRESSION, _OFFSETS, _SAMPLES, _COUNTS = (
    256,
    257,
    258,
    259,
    273,
    277,
    279,
)
_PLANAR, _PREDICTOR, _FORMAT, _FILL_ORDER = 284, 317, 339, 266
_NEW_SUBFILE_TYPE = 254
#: TIFF field types → (struct code, size) for the integer ones these tags use.
_FIELD = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def plain_image(path: Path) -> tuple[int, np.dtype, tuple[int, int]] | None:
    """Byte offset, pixel type and shape of a single-page TIFF whose pixels are stored plain
    (uncompressed, one sample, no predictor, strips back to back, native byte order), read
    from its header alone; None for anything else (tifffile then reads the file).

    Why: detectors write such files (Pilatus, Eiger, GE converters), and a batch of one-frame
    files spent ~1.6 ms per file in tifffile's parsing of the header.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head[:4] not in (b"II*\0", b"MM\0*"):
                return None
            order = "<" if head[:2] == b"II" else ">"
            if order != ("<" if sys.byteorder == "little" else ">"):
                return None
            (ifd,) = struct.unpack(order + "I", head[4:8])
            fh.seek(ifd)
            raw = fh.read(2)
            (n_tags,) = struct.unpack(order + "H", raw)
            entries = fh.read(12 * n_tags + 4)
            if len(entries) != 12 * n_tags + 4:
                return None
            tags: dict[int, tuple[int, ...]] = {}
            for k in range(n_tags):
                code, kind, count, value = struct.unpack_from(order + "HHI4s", entries, 12 * k)
                if kind not in _FIELD:
                    continue
                fmt, size = _FIELD[kind]
                if count * size <= 4:
                    tags[code] = struct.unpack_from(f"{order}{count}{fmt}", value)
                else:
                    fh.seek(struct.unpack(order + "I", value)[0])
                    data = fh.read(count * size)
                    if len(data) != count * size:
                        return None
                    tags[code] = struct.unpack(f"{order}{count}{fmt}", data)
            (next_ifd,) = struct.unpack_from(order + "I", entries, 12 * n_tags)
            size_on_disk = fh.seek(0, 2)
    except (OSError, struct.error):
        return None

    def one(code: int, default: int | None = None) -> int | None:
        values = tags.get(code)
        if values is None:
            return default
        return values[0] if all(v == values[0] for v in values) else None

    bits, sample_format = one(_BITS, 1), one(_FORMAT, 1)
    kinds = {1: "u", 2: "i", 3: "f"}
    if (
        next_ifd != 0
        or one(_COMPRESSION, 1) != 1
        or one(_SAMPLES, 1) != 1
        or one(_PLANAR, 1) != 1
        or one(_PREDICTOR, 1) != 1
        or one(_FILL_ORDER, 1) != 1
        or bits not in (8, 16, 32, 64)
        or sample_format not in kinds
        or (sample_format == 3 and bits < 32)
        or _OFFSETS not in tags
        or _COUNTS not in tags
        or len(tags[_OFFSETS]) != len(tags[_COUNTS])
    ):
        return None
    width, length = one(_WIDTH), one(_LENGTH)
    if not width or not length:
        return None
    dtype = np.dtype(f"{order}{kinds[sample_format]}{bits // 8}")
    offsets, counts = tags[_OFFSETS], tags[_COUNTS]
    if any(offsets[k] + counts[k] != offsets[k + 1] for k in range(len(offsets) - 1)):
        return None  # strips not back to back
    total = width * length * dtype.itemsize
    if sum(counts) != total or offsets[0] + total > size_on_disk:
        return None
    return offsets[0], dtype, (length, width)


class _QuietWhileOpening(logging.Filter):
    """Drops the records of tifffile's logger on a thread while radint opens a TIFF file there.

    Why: what tifffile logs then ("invalid offset to first page", a next page beyond the end)
    radint reports itself as a ReaderError naming the file; printed as well, through radint's
    log handler, it read as a second radint message. Other threads' records pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self._local, "opening", False)

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        """The block in which this thread's tifffile records are dropped."""
        self._local.opening = True
        try:
            yield
        finally:
            self._local.opening = False


_QUIET = _QuietWhileOpening()
logging.getLogger("tifffile").addFilter(_QUIET)


def missing_codec(page: tifffile.TiffPage) -> str | None:
    """Why tifffile cannot decode ``page`` when its compression or predictor lacks a codec,
    e.g. "compressed with LZW, which needs the imagecodecs package: ..."; None otherwise."""
    for what, key, codecs in (
        ("compressed with", page.compression, tifffile.TIFF.DECOMPRESSORS),
        ("stored with the predictor", page.predictor, tifffile.TIFF.UNPREDICTORS),
    ):
        if key == 1:  # none
            continue
        try:
            codecs[key]
        except KeyError as exc:
            name, why = getattr(key, "name", key), str(exc.args[0] if exc.args else exc)
            if "imagecodecs" in why:
                return (
                    f"{what} {name}, which needs the imagecodecs package: pip install imagecodecs "
                    "(or pip install 'radint[formats]')"
                )
            return f"{what} {name}, which tifffile cannot decode ({why})"
    return None


class TiffSource(FrameSource):
    """Pages of a TIFF file as frames; each page must be one 2-D image of the first frame's
    shape. Reduced-resolution pages (thumbnails, previews) are not frames. A single-page file
    stored plain (:func:`plain_image`) is opened from its header alone; tifffile is used
    when its pixels are to be decoded."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._plain = plain_image(path)
        self._tif_file: tifffile.TiffFile | None = None
        if self._plain is not None:
            self.n_frames, self.dtype, self.frame_shape = 1, self._plain[1], self._plain[2]
            self._pages = [0]
            self._size = path.stat().st_size
            return
        tif = self._tif  # ReaderError when even the first page is unreadable
        try:
            with _QUIET.opening():  # a truncated chain of pages is reported by _frame_pages
                n_pages = len(tif.pages)
        except (tifffile.TiffFileError, ValueError, OSError) as exc:
            tif.close()
            raise ReaderError(f"{path}: not a readable TIFF file ({exc})") from exc
        self._size = path.stat().st_size
        #: Page number of each frame.
        self._pages = self._frame_pages(n_pages)
        if not self._pages:
            self._tif.close()
            raise ReaderError(f"{path}: all {n_pages} page(s) are reduced-resolution previews")
        self.n_frames = len(self._pages)
        first = self._page(self._pages[0])
        if len(first.shape) != 2:
            self._tif.close()
            hint = (
                f" ({first.samplesperpixel} samples per pixel, as tifffile.imwrite stores a stack "
                "of 3 or 4 frames unless given photometric='minisblack')"
                if first.samplesperpixel > 1
                else ""
            )
            raise ReaderError(
                f"{path}: expected 2-D pages (one frame each), page {self._pages[0]} has shape "
                f"{first.shape}{hint}"
            )
        self.frame_shape = tuple(first.shape)
        self.dtype = first.dtype

    @property
    def _tif(self) -> tifffile.TiffFile:
        """The file opened by tifffile (on first use for a plain single-page file)."""
        if self._tif_file is None:
            with _QUIET.opening():
                try:
                    tif = tifffile.TiffFile(self.path)
                except struct.error as exc:  # cut short inside the 8-byte header
                    raise ReaderError(
                        f"{self.path}: not a readable TIFF file (cut short: "
                        f"{self.path.stat().st_size} bytes, its header alone has 8)"
                    ) from exc
                except (tifffile.TiffFileError, ValueError, OSError) as exc:
                    raise ReaderError(f"{self.path}: not a readable TIFF file ({exc})") from exc
                try:
                    tif.pages.first  # noqa: B018 - parses page 0: errors surface here
                except IndexError as exc:  # tifffile found no page where the header points
                    fmt, fh = tif.tiff, tif.filehandle
                    fh.seek(4 if fmt.offsetsize == 4 else 8)  # BigTIFF: 8-byte offset at 8
                    (first,) = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))
                    tif.close()
                    raise ReaderError(
                        f"{self.path}: TIFF file without a readable first page (truncated? the "
                        f"header puts it at byte {first}, file has {self.path.stat().st_size} "
                        "bytes)"
                    ) from exc
                except (tifffile.TiffFileError, ValueError, OSError) as exc:
                    tif.close()
                    raise ReaderError(f"{self.path}: not a readable TIFF file ({exc})") from exc
            self._tif_file = tif
        return self._tif_file

    def _page(self, number: int) -> tifffile.TiffPage:
        """Page ``number`` (tifffile hands out a lighter TiffFrame only when asked to)."""
        page = self._tif.pages[number]
        return page if isinstance(page, tifffile.TiffPage) else page.aspage()

    def _frame_pages(self, n_pages: int) -> list[int]:
        """Numbers of the pages that are frames: all but those whose NewSubfileType marks them
        reduced-resolution (bit 0: thumbnails, previews), read from the IFDs directly, as
        tifffile's parsing of every page costs ~0.1 ms each.

        ReaderError when the last page points to a next page beyond the end of the file:
        tifffile stops at such a page with only a log message, which would silently drop the
        rest of a truncated multi-page file.
        """
        fmt = self._tif.tiff
        fh = self._tif.filehandle
        order = self._tif.byteorder
        value_at = fmt.tagsize - fmt.offsetsize  # a tag's value field ends its entry
        frames: list[int] = []
        offset = self._tif.pages.first.offset
        for number in range(n_pages):
            fh.seek(offset)
            (n_tags,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
            ifd = fh.read(n_tags * fmt.tagsize + fmt.offsetsize)
            reduced = False
            for k in range(min(n_tags, len(ifd) // fmt.tagsize)):  # tags come sorted by code
                code, kind = struct.unpack_from(order + "HH", ifd, k * fmt.tagsize)
                if code >= _NEW_SUBFILE_TYPE:
                    if code == _NEW_SUBFILE_TYPE:
                        value = struct.unpack_from(
                            order + ("H" if kind == 3 else "I"), ifd, k * fmt.tagsize + value_at
                        )[0]
                        reduced = bool(value & 1)
                    break
            if not reduced:
                frames.append(number)
            tail = ifd[n_tags * fmt.tagsize :]
            offset = struct.unpack(fmt.offsetformat, tail)[0] if len(tail) == fmt.offsetsize else -1
        if offset != 0 and not 0 < offset < self._size:
            self._tif.close()
            raise ReaderError(
                f"{self.path}: truncated TIFF: page {n_pages - 1} points to a next page at "
                f"byte {offset}, file has {self._size} bytes"
            )
        return frames

    def read(self, index: int) -> np.ndarray:
        """Decode frame ``index``; ReaderError when the page's data is cut short or its shape
        is not the first frame's."""
        return self._decode(index, None)

    def read_block(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start .. stop-1``, decoded straight into ``out`` when given. A page of
        another pixel type than ``out`` is decoded on its own and stored only when every value
        fits ``out``'s type (ReaderError otherwise: a cast would wrap them silently)."""
        if out is None:
            return super().read_block(start, stop)
        for k, i in enumerate(range(start, stop)):
            page = self._page(self._pages[i])
            if page.dtype == out.dtype:
                self._decode(i, out[k])
            else:
                out[k] = self._fitting(i, self._decode(i, None), out.dtype)
        return out

    def _fitting(self, index: int, data: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """``data`` of frame ``index`` when its values are representable in ``dtype``."""
        if np.can_cast(data.dtype, dtype, "safe"):
            return data
        if data.dtype.kind in "iub" and dtype.kind in "iu" and data.size:
            info = np.iinfo(dtype)
            if info.min <= data.min() and data.max() <= info.max:
                return data
        raise ReaderError(
            f"{self.path}: page {self._pages[index]} holds {data.dtype} pixels (values "
            f"{data.min()}..{data.max()}) that {dtype}, the type of page {self._pages[0]}, "
            "cannot hold"
        )

    def _frame_extent(self, index: int) -> tuple[int, np.dtype] | None:
        """Where an uncompressed page's pixels lie, when they lie in one piece."""
        if self._plain is not None:
            return self._plain[0], self._plain[1]
        page = self._page(self._pages[index])
        if not (page.is_contiguous and page.is_final) or tuple(page.shape) != self.frame_shape:
            return None
        dtype = np.dtype(page.dtype).newbyteorder(self._tif.byteorder)
        return (int(page.dataoffsets[0]), dtype) if dtype.isnative else None

    def data_end(self, index: int) -> int | None:
        """Where page ``index``'s strips or tiles end, compressed or not, in any byte order."""
        page = self._page(self._pages[index])
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
        return max(ends) if ends else None

    def _decode(self, index: int, out: np.ndarray | None) -> np.ndarray:
        number = self._pages[index]
        page = self._page(number)
        if tuple(page.shape) != self.frame_shape:
            raise ReaderError(
                f"{self.path}: page {number} has shape {tuple(page.shape)}, expected "
                f"{self.frame_shape} as page {self._pages[0]}"
            )
        end = self.data_end(index) or 0
        if end > self._size:
            raise ReaderError(
                f"{self.path}: page {number} is truncated: its data ends at byte {end}, "
                f"file has {self._size} bytes"
            )
        try:
            return page.asarray(out=out)
        except Exception as exc:  # the codec libraries raise their own types on corrupt data
            codec = missing_codec(page)
            if codec is not None:
                raise ReaderError(f"{self.path}: page {number} is {codec}") from exc
            raise ReaderError(
                f"{self.path}: page {number} is truncated or corrupt ({exc})"
            ) from exc

    def close(self) -> None:
        """Close the TIFF file."""
        if self._tif_file is not None:
            self._tif_file.close()
