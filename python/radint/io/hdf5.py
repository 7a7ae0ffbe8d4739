"""HDF5 reader (h5py): one dataset holding a 2-D frame or a 3-D stack, read frame by frame, or
the ``data_NNNNNN`` datasets of a Dectris/Eiger master file read as one stack.

Eiger/Dectris files store frames as bitshuffle/LZ4 chunks: one chunk per frame is decoded by
radint's bounds-checked decoder (a damaged chunk made the filter of ``hdf5plugin`` read past its
end and kill the process), other layouts by ``hdf5plugin``'s filters, imported (which registers
them) when a file needs them.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from radint import _core
from radint._once import info_once
from radint.io._source import FrameSource, check_pixel_dtype, frames_from_stack
from radint.io.errors import ReaderError

DEFAULT_DATASET = "exchange/data"
#: The group of a Dectris/Eiger master file whose ``data_NNNNNN`` members (external links to
#: the data files) hold the frames; read when the file has no ``exchange/data``.
DECTRIS_GROUP = "entry/data"
_DECTRIS_MEMBER = re.compile(r"data_(\d+)")

log = logging.getLogger(__name__)


def list_datasets(group: h5py.Group) -> list[str]:
    """Paths of every dataset below ``group``, with their shapes, e.g. ``"entry/data (10, 5, 5)"``,
    sorted. Soft and external links (an Eiger master file's ``data_NNNNNN``) are followed one
    level: a link to a dataset is listed with its shape, a link that resolves to nothing as
    ``"name (broken link to file:path)"``."""
    found: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(f"{name} {obj.shape}")

    def visit_link(name: str, link: Any) -> None:
        if isinstance(link, h5py.HardLink):
            return  # seen by visititems
        target = (
            f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else link.path
        )
        try:
            obj = group.get(name)
        except (OSError, KeyError, ValueError):
            obj = None
        if isinstance(obj, h5py.Dataset):
            found.append(f"{name} {obj.shape}")
        elif isinstance(obj, h5py.Group):
            obj.visititems(lambda sub, o: visit(f"{name}/{sub}", o))
        elif obj is None:
            found.append(f"{name} (broken link to {target})")

    group.visititems(visit)  # objects reached through hard links only
    # Every link of every group visititems reaches (Group.visititems_links needs h5py 3.11).
    groups = [""]

    def add_group(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group):
            groups.append(name)

    group.visititems(add_group)
    for where in groups:
        parent = group[where] if where else group
        for member in parent:
            link = parent.get(member, getlink=True)
            visit_link(f"{where}/{member}" if where else member, link)
    return sorted(found)


def dectris_members(obj: object) -> list[str]:
    """Names of the ``data_NNNNNN`` members of a group, in frame order; empty for anything else."""
    if not isinstance(obj, h5py.Group):
        return []
    numbered = sorted((int(m[1]), m[0]) for name in obj if (m := _DECTRIS_MEMBER.fullmatch(name)))
    return [name for _, name in numbered]


def unwritten_frames(ds: h5py.Dataset) -> list[int]:
    """Frames of a chunked 2-D frame or 3-D stack (leading axes of length 1 allowed) that touch
    a chunk never written: HDF5 reads those as the fill value, e.g. the frames a killed writer
    pre-allocated but never stored. Contiguous datasets cannot tell and give [].

    Cheap for complete datasets (one count of the allocated chunks); only when chunks are
    missing is each allocated chunk's position looked up.
    """
    if ds.chunks is None or ds.size == 0:
        return []
    grid = [-(-n // c) for n, c in zip(ds.shape, ds.chunks)]
    n_written = ds.id.get_num_chunks()
    if n_written >= math.prod(grid):
        return []
    if ds.ndim < 3:
        return [0]
    axis = ds.ndim - 3
    per_row = math.prod(grid) // grid[axis]  # chunks in each row of chunks along the frames
    step = ds.chunks[axis]
    written: Counter[int] = Counter()
    if hasattr(ds.id, "chunk_iter"):  # one pass over the chunk index (HDF5 >= 1.12.3)
        ds.id.chunk_iter(lambda info: written.update((info.chunk_offset[axis],)))
    else:  # get_chunk_info(i) walks the index from its start: slower
        written.update(ds.id.get_chunk_info(i).chunk_offset[axis] for i in range(n_written))
    return [f for f in range(ds.shape[axis]) if written[f - f % step] < per_row]


def _missing_filter_hint(exc: BaseException) -> str:
    """What to do about a read that failed for want of a filter plugin (HDF5 says so in several
    ways); nothing for a damaged chunk ("filter returned failure during read")."""
    text = str(exc)
    missing = ("not registered", "can't open directory", "can't find plugin",
               "unable to load plugin")  # fmt: skip
    if any(m in text for m in missing):
        return " (compressed with a filter this HDF5 has no plugin for: install hdf5plugin)"
    return ""


def _ranges(numbers: list[int]) -> str:
    """``[2, 3, 4, 7]`` as ``"2..4, 7"``."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in runs)


#: Filters HDF5 itself provides (deflate, shuffle, fletcher32, szip, n-bit, scale-offset, LZF).
_BUILTIN = {1, 2, 3, 4, 5, 6, 32000}


def _filter_ids(ds: h5py.Dataset) -> list[int]:
    """The filter ids of a dataset's pipeline."""
    plist = ds.id.get_create_plist()
    return [plist.get_filter(k)[0] for k in range(plist.get_nfilters())]


#: HDF5's id of the bitshuffle filter; its options: version (2), element size, block size,
#: compression (2: LZ4).
_BITSHUFFLE, _BITSHUFFLE_LZ4 = 32008, 2
#: Threads decoding bitshuffle/LZ4 frames (None: one per CPU); see set_decode_threads.
_DECODE_THREADS: list[int | None] = [None]


def set_decode_threads(n_threads: int | None) -> None:
    """Decode bitshuffle/LZ4 frames on ``n_threads`` threads (None: one per CPU), as a run's
    ``--threads`` asks; the decoding runs on a pool of its own, beside the integration."""
    _DECODE_THREADS[0] = n_threads


def _bitshuffle_lz4_frames(ds: h5py.Dataset, frame_shape: tuple[int, ...]) -> bool:
    """Whether ``ds`` is a stack of one bitshuffle/LZ4 chunk per frame (the Eiger/Dectris
    layout), in a little-endian type: those chunks radint decodes itself."""
    if ds.ndim != 3 or ds.chunks != (1, *frame_shape) or ds.dtype.byteorder == ">":
        return False
    plist = ds.id.get_create_plist()
    if plist.get_nfilters() != 1:
        return False
    code, _, values, _ = plist.get_filter(0)
    return code == _BITSHUFFLE and len(values) > 4 and values[4] == _BITSHUFFLE_LZ4


class UnwrittenFramesError(ReaderError):
    """Frames of a chunked stack whose chunks were never written (``frames``, sorted)."""

    def __init__(self, frames: list[int], message: str) -> None:
        super().__init__(message)
        self.frames = frames


def _selected(selection: Any, n_frames: int) -> list[int]:
    """The frame numbers a ``read_frames`` selection names (negative ones from the end)."""
    if isinstance(selection, slice):
        return list(range(n_frames)[selection])
    values = [selection] if isinstance(selection, int) else list(selection)
    return [v + n_frames if v < 0 else v for v in values]


class Hdf5Source(FrameSource):
    """Frames of one HDF5 dataset (default ``exchange/data``), or of the ``data_NNNNNN``
    datasets of a group (a Dectris/Eiger master file's ``entry/data``, the default when the
    file has no ``exchange/data``) numbered consecutively across them."""

    dtype: np.dtype  # known once the dataset is open

    def __init__(self, path: Path, dataset: str | None = None, frames: Any = None) -> None:
        """``frames`` (a selection as :func:`~radint.io.read_frames` takes): the frames to be
        read; unwritten frames outside it are not an error (a stack still being filled)."""
        super().__init__(path)
        self._selection = frames
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            try:  # held by a writer in SWMR mode (areaDetector's live HDF5): read as SWMR lets
                self._file = h5py.File(path, "r", swmr=True)
            except OSError:
                raise ReaderError(f"{path}: not a readable HDF5 file ({exc})") from exc
        try:
            self._open(dataset)
        except BaseException:
            self._file.close()
            raise

    def _open(self, dataset: str | None) -> None:
        """Find the dataset(s) to read and check they form one stack of frames."""
        path, name = self.path, dataset or DEFAULT_DATASET
        if dataset is None and name not in self._file:
            members = dectris_members(self._file.get(DECTRIS_GROUP))
            if members:
                # Once per process: a batch of master files would say it for every file.
                info_once(
                    "Dectris master read",
                    "%s: no %s; reading the Dectris master file's %s (%d data file(s)); other "
                    "master files likewise",
                    path, DEFAULT_DATASET, DECTRIS_GROUP, len(members),
                )  # fmt: skip
                name = DECTRIS_GROUP
        self.label = f"{path}:{name}"
        obj = self._file.get(name)
        members = dectris_members(obj)
        if members:
            self._parts = [self._member(obj, m) for m in members]
            self._part_names = members
        elif isinstance(obj, h5py.Dataset):
            self._parts, self._part_names = [obj], [""]
        else:
            if "entry/azint1d" in self._file or "entry/azint2d" in self._file:
                raise ReaderError(
                    f"{path}: a reduced result (NXazint1d/2d lineouts and cakes), not detector "
                    "frames; radint plot / convert / fit read it"
                )
            available = list_datasets(self._file)
            what = "is not a dataset" if obj is not None else "does not exist"
            # Frames are 2-D or 3-D: list those first; a long list is cut short.
            available.sort(key=lambda d: ", " not in d[d.rfind("(") :])
            shown = ", ".join(available[:12]) + (
                f", ... ({len(available) - 12} more)" if len(available) > 12 else ""
            )
            raise ReaderError(
                f"{path}: dataset '{name}' {what}; available datasets: {shown or 'none'} "
                "(--dataset / -dataLoc chooses one)"
            )
        self._ds = self._parts[0]
        self._layout: tuple[str, int] | None = None
        self.dtype = check_pixel_dtype(self.label, self._ds.dtype)  # before any buffer is made
        counts: list[int] = []
        for ds, member in zip(self._parts, self._part_names):
            label = f"{self.label}/{member}" if member else self.label
            n, shape = frames_from_stack(label, ds.shape)
            if counts and (shape != self.frame_shape or ds.dtype != self.dtype):
                raise ReaderError(
                    f"{label}: frames of shape {shape} and type {ds.dtype}, expected "
                    f"{self.frame_shape} and {self.dtype} as in {self._part_names[0]}"
                )
            self.frame_shape = shape
            counts.append(n)
        #: First frame of each dataset (frames are numbered on across the data files).
        self._starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        self.n_frames = self._starts[-1]
        self._check_written()
        if any(set(_filter_ids(ds)) - _BUILTIN for ds in self._parts):
            # hdf5plugin registers the Eiger/Dectris filters (bitshuffle, LZ4, Blosc...) with
            # h5py on import; imported only when needed, as it costs ~0.2 s.
            with contextlib.suppress(ImportError):
                import hdf5plugin  # noqa: F401

    def _check_virtual_sources(self, ds: h5py.Dataset, first_frame: int) -> None:
        """ReaderError naming a virtual dataset's missing source files (or datasets) and the
        frames they hold. Sources are looked up as HDF5 does: under ``HDF5_VDS_PREFIX``, beside
        the file holding the virtual dataset, then as written."""
        prefix = os.environ.get("HDF5_VDS_PREFIX", "")
        frame_axis = max(ds.ndim - 3, 0)
        sources = ds.virtual_sources()
        # A virtual dataset often maps every frame separately from a few files: each file is
        # looked up and opened once (opened per mapping, 5 000 frames took 34 s).
        by_file: dict[str, set[str]] = {}
        for vs in sources:
            by_file.setdefault(vs.file_name, set()).add(vs.dset_name)
        problems: dict[tuple[str, str], str | None] = {}
        for name, dset_names in by_file.items():
            for dset_name, problem in self._source_problems(ds, name, dset_names, prefix).items():
                problems[(name, dset_name)] = problem
        gone: dict[str, list[int]] = {}
        for vs in sources:
            problem = problems[(vs.file_name, vs.dset_name)]
            if problem is None:
                continue
            lo, hi = vs.vspace.get_select_bounds()
            frames = range(first_frame + lo[frame_axis], first_frame + hi[frame_axis] + 1)
            gone.setdefault(f"{vs.file_name} ({problem})", []).extend(frames)
        if gone:
            detail = "; ".join(f"{src}: frames {_ranges(sorted(f))}" for src, f in gone.items())
            raise ReaderError(
                f"{self.label}: virtual dataset sources missing, whose frames would read as "
                f"fill values: {detail} (copy the data files with the master)"
            )

    @staticmethod
    def _source_problems(
        ds: h5py.Dataset, name: str, dset_names: set[str], prefix: str
    ) -> dict[str, str | None]:
        """What is wrong with each of ``dset_names`` in the virtual source file ``name`` (None:
        nothing), the file found as HDF5 finds it."""
        if name == ".":
            return {d: None if d in ds.file else "dataset not in this file" for d in dset_names}
        here = Path(ds.file.filename).parent
        written = Path(name)
        if written.is_absolute():
            # An absolute source that moved with its master is found by its name beside it
            # (as HDF5 finds it).
            candidates = [written, *([Path(prefix) / written.name] if prefix else []),
                          here / written.name]  # fmt: skip
        else:
            candidates = [*([Path(prefix) / written] if prefix else []), here / written,
                          written]  # fmt: skip
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            return dict.fromkeys(dset_names, "file not found")
        try:
            with h5py.File(found, "r") as src:
                return {d: None if d in src else f"no dataset {d}" for d in dset_names}
        except OSError as e:
            return dict.fromkeys(dset_names, f"cannot open: {e}")

    def _check_written(self) -> None:
        """ReaderError naming the frames whose chunks were never written (a killed writer's
        pre-allocated frames), or whose virtual-dataset source file or dataset is missing (a
        master copied without its data files): HDF5 reads both as fill values, which would be
        integrated as frames."""
        for k, ds in enumerate(self._parts):
            if ds.is_virtual:
                self._check_virtual_sources(ds, self._starts[k])
        missing = {k: unwritten_frames(ds) for k, ds in enumerate(self._parts)}
        frames = [self._starts[k] + i for k, local in missing.items() for i in local]
        if self._selection is not None:
            wanted = set(_selected(self._selection, self.n_frames))
            frames = [f for f in frames if f in wanted]
        if not frames:
            return
        files = sorted({self._parts[k].file.filename for k, local in missing.items() if local})
        raise UnwrittenFramesError(
            frames,
            f"{self.label}: frame{'s' if len(frames) > 1 else ''} {_ranges(frames)} of "
            f"{self.n_frames} never written: their chunks are not allocated in "
            f"{', '.join(files)} (the writer stopped early?), and would read as fill values",
        )

    def _member(self, group: h5py.Group, member: str) -> h5py.Dataset:
        """Dataset ``member`` of a master file's group; ReaderError for a broken link."""
        obj = group.get(member)
        if isinstance(obj, h5py.Dataset):
            return obj
        link = group.get(member, getlink=True)
        target = f" to {link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else ""
        what = "is not a dataset" if obj is not None else f"is a broken link{target}"
        raise ReaderError(f"{self.label}/{member}: {what} (expected the frames of a data file)")

    def _locate(self, index: int) -> tuple[int, int]:
        """The dataset holding frame ``index`` and the frame's position in it."""
        k = bisect.bisect_right(self._starts, index) - 1
        return k, index - self._starts[k]

    def _where(self, k: int, first: int, last: int) -> str:
        """``"frames 4..5"`` (or ``"frame 4"``), naming the data file's member and its own frame
        numbers when the frames come from several datasets."""
        what = f"frame {first}" if first == last else f"frames {first}..{last}"
        if len(self._parts) == 1:
            return what
        lo, hi = first - self._starts[k], last - self._starts[k]
        inner = f"frame {lo}" if lo == hi else f"frames {lo}..{hi}"
        return f"{what} ({inner} of {self._part_names[k]} in {self._parts[k].file.filename})"

    def read_block(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start .. stop-1`` with one HDF5 read per dataset (no per-frame copies), into
        ``out`` when given."""
        if any(ds.ndim != 3 for ds in self._parts):
            return super().read_block(start, stop, out)
        if out is None:
            out = np.empty((stop - start, *self.frame_shape), self.dtype)
        for k, ds in enumerate(self._parts):
            lo, hi = max(start, self._starts[k]), min(stop, self._starts[k + 1])
            if lo >= hi:
                continue
            if self._decode_chunks(k, lo, hi, out[lo - start : hi - start]):
                continue
            try:
                ds.read_direct(
                    out[lo - start : hi - start], np.s_[lo - self._starts[k] : hi - self._starts[k]]
                )
            except OSError:
                self._read_one_by_one(k, lo, hi, out[lo - start : hi - start])
        return out

    def _decode_chunks(self, k: int, lo: int, hi: int, out: np.ndarray) -> bool:
        """Frames ``lo .. hi-1`` of dataset ``k`` decoded by radint from their bitshuffle/LZ4
        chunks, in parallel; False (nothing read) where the dataset is laid out otherwise.
        Frames whose chunk was stored unfiltered are copied as stored, and unwritten ones read
        by HDF5 (its fill value: no filter runs), each on its own, so no chunk of the block
        reaches the filter. A damaged chunk is a ReaderError naming its frame."""
        ds = self._parts[k]
        if not (out.flags.c_contiguous and _bitshuffle_lz4_frames(ds, self.frame_shape)):
            return False
        rows = out.reshape(hi - lo, -1).view(np.uint8)
        chunks, filtered = [], []
        for j, index in enumerate(range(lo, hi)):
            i = index - self._starts[k]
            try:
                mask, chunk = ds.id.read_direct_chunk((i, 0, 0))
            except (OSError, KeyError, ValueError, RuntimeError):  # not stored (unwritten)
                ds.read_direct(out[j : j + 1], np.s_[i : i + 1])
                continue
            if not mask:
                chunks.append(chunk)
                filtered.append(j)
            elif len(chunk) == rows.shape[1]:  # the filter skipped this chunk: stored as is
                rows[j] = np.frombuffer(chunk, np.uint8)
            else:
                raise ReaderError(
                    f"{self.label}: cannot read {self._where(k, index, index)}: its chunk is "
                    f"stored unfiltered with {len(chunk)} bytes, the frame has {rows.shape[1]}"
                )
        if not chunks:
            return True
        whole = len(filtered) == hi - lo  # decoded in place, else through a copy
        target = rows if whole else np.empty((len(filtered), rows.shape[1]), np.uint8)
        try:
            _core.decode_bitshuffle_lz4(
                chunks, ds.dtype.itemsize, target, n_threads=_DECODE_THREADS[0]
            )
        except ValueError as exc:
            bad = re.match(r"chunk (\d+): (.*)", str(exc), re.S)
            index, why = (lo + filtered[int(bad[1])], bad[2]) if bad else (lo, str(exc))
            raise ReaderError(
                f"{self.label}: cannot read {self._where(k, index, index)}: {why}"
            ) from exc
        if not whole:
            rows[filtered] = target
        return True

    def _read_one_by_one(self, k: int, lo: int, hi: int, out: np.ndarray) -> None:
        """Frames ``lo .. hi-1`` of dataset ``k`` read one at a time after the block read
        failed: a ReaderError names the frames that cannot be read (a damaged chunk of one
        frame was reported as the whole block's frames)."""
        bad: list[int] = []
        first_error: OSError | None = None
        for index in range(lo, hi):
            i = index - self._starts[k]
            try:
                self._parts[k].read_direct(out[index - lo : index - lo + 1], np.s_[i : i + 1])
            except OSError as exc:
                bad.append(index)
                first_error = first_error or exc
        if first_error is not None:
            where = self._where(k, bad[0], bad[0])
            if len(bad) > 1:
                where = f"frames {_ranges(bad)}"
                if len(self._parts) > 1:
                    inner = _ranges([i - self._starts[k] for i in bad])
                    where += (f" (frames {inner} of {self._part_names[k]} in "
                              f"{self._parts[k].file.filename})")  # fmt: skip
            raise ReaderError(
                f"{self.label}: cannot read {where}{_missing_filter_hint(first_error)}: "
                f"{first_error}"
            ) from first_error

    def read(self, index: int) -> np.ndarray:
        """Read frame ``index`` (decompressing only its chunks)."""
        k, i = self._locate(index)
        ds = self._parts[k]
        if ds.ndim == 3:
            frame = np.empty(self.frame_shape, self.dtype)
            if self._decode_chunks(k, index, index + 1, frame[np.newaxis]):
                return frame
        try:
            if ds.ndim == 2:
                return ds[()]
            return ds[(0,) * (ds.ndim - 3) + (i,)]
        except OSError as exc:
            raise ReaderError(
                f"{self.label}: cannot read {self._where(k, index, index)}"
                f"{_missing_filter_hint(exc)}: {exc}"
            ) from exc

    def _frame_extent(self, index: int) -> tuple[int, np.dtype] | None:
        """Where a frame's pixels lie: unfiltered data, contiguous or one chunk per frame, of a
        dataset stored in the file opened (not reached through an external link, whose byte
        offsets are in another file)."""
        if len(self._parts) != 1 or self._ds.file != self._file:
            return None
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


def stored_ndim(path: Path, location: str) -> int:
    """Dimensions of the HDF5 dataset at ``location`` (3 for a group of data files, as a stack)."""
    with h5py.File(path, "r") as f:
        return int(getattr(f.get(location), "ndim", 3))


def group_members(path: Path, location: str) -> list[str] | None:
    """The datasets of the HDF5 group at ``location`` in h5py's (name) order, as MIDAS's sender
    takes them; None where ``location`` is not such a group (a dataset, a Dectris master
    file's ``data_NNNNNN`` stack, or nothing: the frame reader reports those)."""
    with h5py.File(path, "r") as f:
        group = f.get(location)
        if not isinstance(group, h5py.Group) or dectris_members(group):
            return None
        return [k for k in group if isinstance(group.get(k), h5py.Dataset)]


def group_frames(
    path: Path, location: str, members: list[str], base: str
) -> Iterator[tuple[np.ndarray, str]]:
    """Each 2-D dataset of a group as one frame named ``base/NAME`` (MIDAS's sender takes a
    group of frames so; :func:`group_members` gives ``members``)."""
    if not members:
        raise ReaderError(f"{path}: group '{location}' holds no dataset to send")
    with h5py.File(path, "r") as f:
        for key in members:
            ds = f[location][key]
            if ds.ndim != 2 or ds.dtype.kind not in "iuf":
                raise ReaderError(
                    f"{path}: '{location}/{key}' is {ds.shape} {ds.dtype}; each dataset of a "
                    "group is sent as one frame: expected a 2-D numeric array"
                )
            yield ds[()], f"{base}/{key}"
