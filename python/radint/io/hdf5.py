"""HDF5 reader (h5py): one dataset holding a 2-D frame or a 3-D stack, read frame by frame.

Eiger/Dectris files need the bitshuffle/LZ4 filters of ``hdf5plugin``; it is imported (which
registers the filters) when a file is opened, and its absence only matters for such files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import h5py
import numpy as np

from radint.io._source import FrameSource, frames_from_stack
from radint.io.errors import ReaderError

DEFAULT_DATASET = "exchange/data"


def list_datasets(group: h5py.Group) -> list[str]:
    """Paths of every dataset below ``group``, with their shapes, e.g. ``"entry/data (10, 5, 5)"``."""
    found: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(f"{name} {obj.shape}")

    group.visititems(visit)
    return found


#: Filters HDF5 itself provides (deflate, shuffle, fletcher32, szip, n-bit, scale-offset, LZF).
_BUILTIN = {1, 2, 3, 4, 5, 6, 32000}


def _filter_ids(ds: h5py.Dataset) -> list[int]:
    """The filter ids of a dataset's pipeline."""
    plist = ds.id.get_create_plist()
    return [plist.get_filter(k)[0] for k in range(plist.get_nfilters())]


class Hdf5Source(FrameSource):
    """Frames of one HDF5 dataset (default ``exchange/data``)."""

    def __init__(self, path: Path, dataset: str | None = None) -> None:
        super().__init__(path)
        name = dataset or DEFAULT_DATASET
        self.label = f"{path}:{name}"
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise ReaderError(f"{path}: not a readable HDF5 file ({exc})") from exc
        obj = self._file.get(name)
        if not isinstance(obj, h5py.Dataset):
            available = list_datasets(self._file)
            self._file.close()
            what = "is not a dataset" if obj is not None else "does not exist"
            raise ReaderError(
                f"{path}: dataset '{name}' {what}; available datasets: "
                f"{', '.join(available) if available else 'none'}"
            )
        self._ds = obj
        self._layout: tuple[str, int] | None = None
        self.n_frames, self.frame_shape = frames_from_stack(self.label, obj.shape)
        self.dtype = obj.dtype
        if set(_filter_ids(obj)) - _BUILTIN:
            # hdf5plugin registers the Eiger/Dectris filters (bitshuffle, LZ4, Blosc...) with
            # h5py on import; imported only when needed, as it costs ~0.2 s.
            with contextlib.suppress(ImportError):
                import hdf5plugin  # noqa: F401

    def read_block(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start .. stop-1`` in one HDF5 read (no per-frame copies), into ``out`` when
        given."""
        if self._ds.ndim != 3:
            return super().read_block(start, stop, out)
        try:
            if out is None:
                return self._ds[start:stop]
            self._ds.read_direct(out, np.s_[start:stop])
            return out
        except OSError as exc:
            raise ReaderError(
                f"{self.label}: cannot read frames {start}..{stop - 1}: {exc}"
            ) from exc

    def read(self, index: int) -> np.ndarray:
        """Read frame ``index`` (decompressing only its chunks)."""
        try:
            if self._ds.ndim == 2:
                return self._ds[()]
            return self._ds[(0,) * (self._ds.ndim - 3) + (index,)]
        except OSError as exc:
            hint = ""
            if "filter" in str(exc).lower():
                hint = " (compressed with a filter h5py lacks: install hdf5plugin)"
            raise ReaderError(f"{self.label}: cannot read frame {index}{hint}: {exc}") from exc

    def _frame_extent(self, index: int) -> tuple[int, np.dtype] | None:
        """Where a frame's pixels lie: unfiltered data, contiguous or one chunk per frame."""
        if self._layout is None:  # the dataset's storage, looked up once (h5py's properties
            self._layout = self._storage()  # cost ~20 µs a call)
        kind, where = self._layout
        dtype = self.dtype
        frame_bytes = int(np.prod(self.frame_shape)) * dtype.itemsize
        if kind == "contiguous":
            offset = where if where >= 0 else self._ds.id.get_offset()  # < 0: not yet written
            return None if offset is None else (offset + index * frame_bytes, dtype)
        if kind != "chunked":
            return None
        coord = (0,) * (where - 3) + (index, 0, 0) if where >= 3 else (0, 0)
        info = self._ds.id.get_chunk_info_by_coord(coord)
        if info.byte_offset is None or info.size != frame_bytes or info.filter_mask:
            return None
        return info.byte_offset, dtype

    def _storage(self) -> tuple[str, int]:
        """("contiguous", byte offset or -1 while nothing is written), ("chunked", n_dims) for
        one unfiltered chunk per frame, or ("other", 0) for storage whose frames cannot be read
        as they lie."""
        ds, dtype = self._ds, self.dtype
        plain = dtype.kind in "iuf" and dtype.isnative and not ds.external and not _filter_ids(ds)
        layout = ds.id.get_create_plist().get_layout() if plain else -1
        if layout == h5py.h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            return "contiguous", -1 if offset is None else offset
        one_frame = (1,) * (ds.ndim - 2) + tuple(self.frame_shape)
        if layout == h5py.h5d.CHUNKED and ds.chunks == one_frame:
            return "chunked", ds.ndim
        return "other", 0

    def close(self) -> None:
        """Close the HDF5 file."""
        self._file.close()
