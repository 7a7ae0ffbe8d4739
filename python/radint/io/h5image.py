"""One-row HDF5 files written as bytes from the image of a template file.

A batch over single-frame detector files writes one small NeXus file per frame. Through h5py
each costs ~19 ms of GIL-holding work (copying the layout, ten dataset writes, compressing the
chunks at close), more than integrating the frame. Yet every file of a run has the same layout
and differs only in the chunks of its row datasets and in a few same-length strings (the
reduction date). :class:`FileImage` takes the bytes of one such file, written once by h5py, and
produces the next ones by compressing the new rows itself and patching where they lie:

* HDF5 files of the "earliest" format (version-0 superblock, version-1 object headers and chunk
  B-trees) carry no metadata checksums, so a chunk's B-tree entry (size, address) and the
  superblock's end-of-file address can be rewritten in place;
* a chunk that fits where the template's chunk lies is written there, a larger one is appended
  at the end of the file; every filter is applied, even where HDF5 would have skipped an
  optional one for a chunk it could not shrink (the entry's filter mask says which ran);
* a string is replaced by one of the same length in bytes where the global heap holds it (the
  reduction date; the input file of ``entry/provenance/file``, so images are made per length).

The image is checked when it is made: a file rendered from it with random rows is read back
by HDF5, and anything HDF5 reads differently (or a filter this module does not know) makes
:meth:`FileImage.from_file` raise :class:`ImageUnsupported`, so callers write through h5py.
"""

from __future__ import annotations

import functools
import io
import struct
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from radint.exceptions import InvalidInputError

__all__ = ["FileImage", "ImageUnsupported", "chunk_encoder", "filters_of"]

#: Byte offset of the end-of-file address in a version-0 superblock with 8-byte addresses.
_SUPERBLOCK_EOF_AT = 40
_FILTER_DEFLATE, _FILTER_SHUFFLE, _FILTER_BLOSC = 1, 2, 32001
_BLOSC_CODECS = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}


class ImageUnsupported(Exception):
    """The file cannot be reproduced by patching its bytes (format, filter or layout)."""


def filters_of(ds: Any) -> list[tuple[int, tuple[int, ...]]]:
    """An h5py dataset's filter pipeline as ``[(filter id, client values), ...]``.

    Parameters
    ----------
    ds : h5py.Dataset
        The dataset whose creation property list is read.

    Returns
    -------
    list of (int, tuple of int)
        One ``(filter id, client data values)`` pair per filter, in pipeline order (empty for
        an unfiltered dataset).
    """
    plist = ds.id.get_create_plist()
    return [plist.get_filter(i)[:3:2] for i in range(plist.get_nfilters())]


def _deflate(raw: Any, size: int, level: int) -> bytes:
    return zlib.compress(raw, level)


def _blosc(raw: Any, size: int, codec: Any) -> Any:
    # Blosc shuffles by the element size it is given: the dataset's, as HDF5's filter.
    return codec.encode(np.frombuffer(raw, f"u{size}") if size in (1, 2, 4, 8) else raw)


def chunk_encoder(filters: list[tuple[int, tuple[int, ...]]]) -> Callable[[np.ndarray], Any]:
    """The chunk encoder of an HDF5 filter pipeline ``[(filter id, client values), ...]``,
    applied in order; it returns a bytes-like object (an unfiltered chunk is not copied).
    Blosc and zlib run without the GIL, unlike HDF5's own filters called through h5py.

    Parameters
    ----------
    filters : list of (int, tuple of int)
        The pipeline as :func:`filters_of` gives it: shuffle (2), deflate (1; client value 0
        the level, default 6) and Blosc (32001; client values 4, 5, 6 the level, shuffle mode
        and compressor code).

    Returns
    -------
    callable
        ``encode(chunk)``: the chunk (an ndarray of its dataset's dtype) filtered into the
        bytes stored in the file.

    Raises
    ------
    ImageUnsupported
        A filter other than shuffle, deflate or Blosc.
    """
    steps: list[Callable[[Any, int], Any]] = []
    for code, values in filters:
        if code == _FILTER_SHUFFLE:
            steps.append(
                lambda raw, size: np.frombuffer(raw, np.uint8).reshape(-1, size).T.tobytes()
            )
        elif code == _FILTER_DEFLATE:
            level = values[0] if values else 6
            steps.append(functools.partial(_deflate, level=level))
        elif code == _FILTER_BLOSC and len(values) >= 7 and values[6] in _BLOSC_CODECS:
            from numcodecs import Blosc

            codec = Blosc(cname=_BLOSC_CODECS[values[6]], clevel=values[4], shuffle=values[5])
            steps.append(functools.partial(_blosc, codec=codec))
        else:
            raise ImageUnsupported(f"HDF5 filter {code} {values}")

    def encode(chunk: np.ndarray) -> Any:
        data: Any = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
        for step in steps:
            data = step(data, chunk.dtype.itemsize)
        return memoryview(data).cast("B")

    return encode


@dataclass(frozen=True)
class _Chunk:
    """Where one row dataset's only chunk and its B-tree entry lie in the image."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fill: Any
    encode: Callable[[np.ndarray], Any]
    size_at: int
    address_at: int
    address: int
    room: int


class FileImage:
    """The bytes of a one-row HDF5 file and how to put other rows (and strings) in them.

    Made by :meth:`from_file`, which fills the parameters below.

    Parameters
    ----------
    image : bytes
        The template file's bytes.
    chunks : dict
        Row name → where that row dataset's only chunk and its B-tree entry lie in ``image``.
    texts : dict of str to (int, int)
        Text name → (byte offset in ``image``, length in bytes) of the string to replace.
    """

    def __init__(self, image: bytes, chunks: dict[str, _Chunk], texts: dict[str, tuple[int, int]]):
        self._image = image
        self._chunks = chunks
        self._texts = texts

    @classmethod
    def from_file(
        cls, h5file: Any, rows: Mapping[str, str], texts: Mapping[str, tuple[str, int]]
    ) -> FileImage:
        """Image of the open, in-memory (``driver="core"``) ``h5file``.

        Parameters
        ----------
        h5file : h5py.File
            Holds the layout; every dataset named in ``rows`` is chunked, extendable along axis
            0 and still empty. It is modified (one row written per dataset).
        rows : mapping
            Row name → dataset path.
        texts : mapping
            Text name → (path of a variable-length string dataset, scalar or an empty
            extendable 1-D one (given one element), length in bytes of the UTF-8 strings it
            will hold).

        Raises
        ------
        ImageUnsupported
            The file's format, a filter or a read-back check does not allow patching.
        """
        import h5py

        sentinels = {}
        for name, (path, length) in texts.items():
            sentinels[name] = (uuid.uuid4().hex * (length // 32 + 1))[:length].encode()
            ds = h5file[path]
            if ds.shape == (0,):
                ds.resize(1, axis=0)
                ds[0] = sentinels[name].decode()
            else:
                ds[()] = sentinels[name].decode()
        datasets = {name: h5file[path] for name, path in rows.items()}
        for ds in datasets.values():
            if ds.shape[0] != 0 or ds.chunks is None:
                raise ImageUnsupported(f"{ds.name}: not an empty chunked dataset")
            ds.resize(1, axis=0)
            ds[0] = ds.fillvalue
        h5file.flush()
        image = bytes(h5file.id.get_file_image())
        if image[8] != 0 or image[13] != 8 or image[14] != 8:
            raise ImageUnsupported("not a version-0 superblock with 8-byte addresses and lengths")
        chunks = {}
        for name, ds in datasets.items():
            if ds.id.get_num_chunks() != 1 or ds.dtype.byteorder == ">":
                raise ImageUnsupported(f"{ds.name}: not one little-endian chunk")
            info = ds.id.get_chunk_info(0)
            key = struct.pack(
                f"<II{ds.ndim + 1}QQ",
                info.size,
                info.filter_mask,
                *info.chunk_offset,
                0,
                info.byte_offset,
            )
            if image.count(key) != 1:
                raise ImageUnsupported(f"{ds.name}: chunk B-tree entry not found once")
            size_at = image.find(key)
            chunks[name] = _Chunk(
                shape=tuple(ds.chunks),
                dtype=ds.dtype,
                fill=ds.fillvalue,
                encode=chunk_encoder(filters_of(ds)),
                size_at=size_at,
                address_at=size_at + len(key) - 8,
                address=info.byte_offset,
                room=info.size,
            )
        text_at = {}
        for name, sentinel in sentinels.items():
            if image.count(sentinel) != 1:
                raise ImageUnsupported(f"text {name!r} not found once in the image")
            text_at[name] = (image.find(sentinel), len(sentinel))
        made = cls(image, chunks, text_at)
        made._check(h5py, datasets, texts)
        return made

    def _check(
        self, h5py: Any, datasets: Mapping[str, Any], texts: Mapping[str, tuple[str, int]]
    ) -> None:
        """Render random rows and texts and read them back with HDF5."""
        rng = np.random.default_rng(0)
        rows = {}
        for name, chunk in self._chunks.items():
            if chunk.dtype.kind not in "fiu":
                raise ImageUnsupported(f"{name}: dtype {chunk.dtype}")
            rows[name] = rng.integers(0, 100, size=chunk.shape[1:]).astype(chunk.dtype)
        strings = {name: "x" * size for name, (_, size) in self._texts.items()}
        try:
            with h5py.File(io.BytesIO(self.render(rows, strings)), "r") as f:
                for name, ds in datasets.items():
                    back = f[ds.name]
                    if back.shape != ds.shape or not np.array_equal(back[0], rows[name]):
                        raise ImageUnsupported(f"{ds.name}: read back differs")
                for name, (path, _) in texts.items():
                    back_text = f[path].asstr()[()]
                    if f[path].shape == (1,):
                        back_text = back_text[0]
                    if back_text != strings[name]:
                        raise ImageUnsupported(f"{path}: text read back differs")
        except ImageUnsupported:
            raise
        except Exception as e:
            raise ImageUnsupported(f"rendered image does not read back: {e}") from e

    def render(self, rows: Mapping[str, np.ndarray], texts: Mapping[str, str]) -> bytearray:
        """The file with ``rows`` (name → one row, shape = the dataset's row) and ``texts``
        (name → string of exactly the byte length given to :meth:`from_file`, in UTF-8).

        Parameters
        ----------
        rows : mapping of str to ndarray
            One entry per row name of :meth:`from_file`: the row, converted to the dataset's
            dtype and compressed with its filters.
        texts : mapping of str to str
            Text name → new string; texts not given keep the image's bytes.

        Returns
        -------
        bytearray
            The whole HDF5 file (chunks that do not fit in the template's place appended at
            the end).

        Raises
        ------
        InvalidInputError
            A text whose UTF-8 encoding is not exactly its length in bytes.
        """
        out = bytearray(self._image)
        tail: list[Any] = []
        end = len(out)
        for name, chunk in self._chunks.items():
            if chunk.shape[0] == 1:
                block = np.ascontiguousarray(rows[name], dtype=chunk.dtype)
            else:
                block = np.full(chunk.shape, chunk.fill, dtype=chunk.dtype)
                block[0] = rows[name]
            data = chunk.encode(block)
            if len(data) <= chunk.room:
                address = chunk.address
                out[address : address + len(data)] = data
            else:
                address = end
                tail.append(data)
                end += len(data)
            # Size, and a filter mask of 0: every filter applied (HDF5 skips an optional filter
            # that does not shrink a small chunk and says so in the mask).
            struct.pack_into("<II", out, chunk.size_at, len(data), 0)
            struct.pack_into("<Q", out, chunk.address_at, address)
        for name, value in texts.items():
            at, size = self._texts[name]
            raw = value.encode("utf-8")
            if len(raw) != size:
                raise InvalidInputError(f"text {name!r} must be {size} bytes, got {len(raw)}")
            out[at : at + size] = raw
        struct.pack_into("<Q", out, _SUPERBLOCK_EOF_AT, end)
        for data in tail:
            out += data
        return out
