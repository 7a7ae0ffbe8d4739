"""NeXus writer (HDF5 or Zarr v3) following the NXazint1d and NXazint2d application definitions.

Layout (one file, the NXsubentry "multi-method" convention both definitions prescribe for
1-D and 2-D results stored together)::

    /                        @default="entry"
    entry/        NXentry    @default="azint1d"
      azint1d/    NXsubentry @default="data"   definition="NXazint1d"
      azint2d/    NXsubentry @default="data"   definition="NXazint2d"
        solid_angle_applied, polarization_applied, normalization_applied, monitor_applied
        instrument/  NXinstrument     name; monochromator/{wavelength, energy}; source/{name,type,probe}
        reduction/   NXprocess        program, version, date, reference, note,
                                      input/ NXparameters (configuration JSON + every scalar)
        data/        NXdata           I [n_frames, n_eta, n_r] (azint1d: [n_frames, n_r]), I_errors,
                                      radial_axis (2θ deg, or q Å⁻¹ for Q binning) [+ _edges], azimuthal_axis [+ _edges],
                                      norm, count, radius_px (R, px), two_theta/q (the other
                                      unit), frame_id, timestamp
      scan/       NXcollection (when the frames carry it: a MIDAS zip) omega [n_frames], degree
      provenance/ NXcollection (when the frames say where they came from: batch, integrate,
                               stream) file [n_files] (UTF-8: absolute input paths, or a stream's
                               source name), file_index [n_frames] int32 (row of file; -1: not
                               known), frame_index [n_frames] int64 (position in that file)
      peaks/      NXprocess    (when the Result carries fitted peaks) program, model, and per-frame
                               [n_frames, n_peaks] columns: area, center_px, center_two_theta,
                               center_q, center_d, sig, gam, fwhm_px, fwhm_two_theta, eta_mix, chi2,
                               status (0 = converged; status_names attribute), their *_errors
                               (all but chi2; those of the 2θ/q/d columns propagated from the px
                               errors), frame_id

Per-frame datasets grow along axis 0 (chunked one frame per chunk, compressed), so a stream can
append frames as they come (:class:`NexusWriter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from radint.exceptions import InvalidInputError
from radint.io._common import (
    HC_KEV_ANGSTROM,
    cfg,
    config_dict,
    edges_from_centres,
    frame_ids,
    q_from_two_theta,
    software_version,
    stacked,
    two_theta_edges_deg,
    zarr3,
)
from radint.io.atomic import commit_path, remove_path, start_writeback, temporary_sibling
from radint.io.h5image import FileImage, ImageUnsupported, chunk_encoder, filters_of
from radint.result import Result

__all__ = ["NexusWriter", "Provenance", "read_nexus", "read_provenance", "write_nexus"]

log = logging.getLogger(__name__)

REFERENCE = (
    "radint: exact-area pixel splitting re-implementation of the MIDAS radial integration suite "
    "(H. Sharma et al., https://github.com/marinerhemant/MIDAS)"
)
NOTE = (
    "MIDAS geometry: eta = 0 along +Z (up), +90 along +Y; R is the radial bin centre in pixels; "
    "2theta = atan(R*px/Lsd); I is the area-weighted mean pixel value per bin when "
    "normalization_applied is true, else the area-weighted sum; empty bins are NaN."
)
#: NeXus peaks column → (FitTable attribute, units); errors follow as ``<name>_errors``.
PEAK_COLUMNS = {
    "area": ("area", "intensity*pixel"),
    "center_px": ("center", "pixel"),
    "center_two_theta": ("center_two_theta_deg", "degrees"),
    "center_q": ("center_q", "1/angstrom"),
    "center_d": ("center_d_angstrom", "angstrom"),
    "sig": ("sig", "centi-pixel^2 (MIDAS)"),
    "gam": ("gam", "centi-pixel (MIDAS)"),
    "fwhm_px": ("fwhm", "pixel"),
    "fwhm_two_theta": ("fwhm_deg", "degrees"),
    "eta_mix": ("eta_mix", ""),
    "chi2": ("chi2", ""),
}
_PEAK_ERRORS = {"area": "area_err", "center_px": "center_err", "sig": "sig_err", "gam": "gam_err",
                "fwhm_px": "fwhm_err", "eta_mix": "eta_mix_err",
                "center_two_theta": "center_two_theta_deg_err", "center_q": "center_q_err",
                "center_d": "center_d_angstrom_err", "fwhm_two_theta": "fwhm_deg_err"}  # fmt: skip
#: Errors of the derived columns, propagated from the px ones: files written before they
#: existed lack them (read as None).
_DERIVED_ERRORS = ("center_two_theta", "center_q", "center_d", "fwhm_two_theta")
_UNITS_BY_SUFFIX = {"_um": "um", "_deg": "degree", "_px": "pixel", "_angstrom": "angstrom"}


#: Per-frame values of ``entry/scan`` (a MIDAS Zarr zip's ω and monitors, which the MIDAS
#: writers average per OmegaSumFrames chunk), with their attributes.
_SCAN_FIELDS: dict[str, dict[str, str]] = {
    "omega": {"units": "degree", "long_name": "omega"},
    "Temperature": {"long_name": "Temperature (MIDAS zip scan parameter)"},
    "Pressure": {"long_name": "Pressure (MIDAS zip scan parameter)"},
    "I": {"long_name": "I (MIDAS zip scan parameter)"},
    "I0": {"long_name": "I0 (MIDAS zip scan parameter)"},
}


def _scan_key(name: str) -> str:
    """The Result.metadata key of an ``entry/scan`` field."""
    return "omega_deg" if name == "omega" else name


#: The most bytes of one frame's 2-D array (a cake) in one chunk: a finely binned cake (a 16M
#: detector's 1 px x 0.1 deg: 86 MB a frame) is split along η, so reading some η rows does not
#: decompress the whole frame (a row of a 0.1 deg cake took as long as its frame, ~30 ms).
FRAME_CHUNK_BYTES = 4 << 20


def _frame_chunk(row: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Chunk of a per-frame 2-D dataset ``(n, *row)``: one frame, as many of its leading rows
    (η) as fit :data:`FRAME_CHUNK_BYTES` (all of a usual cake's)."""
    per_row = max(1, int(np.prod(row[1:])) * np.dtype(dtype).itemsize)
    return (1, max(1, min(row[0], FRAME_CHUNK_BYTES // per_row)), *row[1:])


def _json_attr(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


#: Names accepted for ``compression``.
COMPRESSIONS = ("blosc-lz4", "gzip", "none")


def _h5_filter(compression: str | None) -> dict[str, Any]:
    """h5py dataset keywords for a compression name.

    Blosc-LZ4 level 1 with byte shuffle is the default: it compresses float64 cakes to ~0.64 of
    their size, about as well as gzip, at ~25× its speed (~1.2 vs ~30 ms per Pilatus frame),
    so writing no longer dominates a batch; level 5 saved 2 % more for ~1.8× the time. Reading
    it needs the ``hdf5plugin`` filters, which silx, h5web, nexpy, pyFAI and radint load;
    ``"gzip"`` is readable by any HDF5 library.
    """
    if compression in (None, "none"):
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if compression == "blosc-lz4":
        import hdf5plugin

        return dict(hdf5plugin.Blosc(cname="lz4", clevel=1, shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise InvalidInputError(
        f"compression must be one of {COMPRESSIONS} or None, got {compression!r}"
    )


@dataclass
class _Template:
    """An in-memory HDF5 file holding a file layout already written, with its row paths."""

    file: Any
    rows: dict[str, str]
    #: The per-file fields (path → value) the layout was written with.
    built_with: dict[str, np.ndarray]
    #: Byte image of a one-frame file of this layout: None until tried, False if unsupported.
    image: FileImage | bool | None = None


# Templates by layout key (see NexusWriter._layout_key), the few most recent ones.
_TEMPLATES: dict[Any, _Template] = {}
_TEMPLATES_LOCK = threading.Lock()
#: Keys pushed out of _TEMPLATES. A one-frame image of a provenance path length asked for again
#: after that means more lengths take turns than the cache holds (one-frame files whose paths
#: have more than 8 lengths, interleaved): building each image anew (~100 ms) costs far more
#: than writing the file through h5py (~10-25 ms), so that length is written that way from then.
_EVICTED: set[Any] = set()
# NexusWriter._axes_key by the ids of the objects it reads (which each value holds).
_AXES_KEYS: dict[tuple[int, ...], tuple[tuple, tuple[str, str]]] = {}


def _in_memory_h5() -> Any:
    import h5py

    return h5py.File(f"radint-{uuid.uuid4().hex}", "w", driver="core", backing_store=False)


def _template(
    key: Any,
    build: Callable[[Any], dict[str, str]],
    data: dict[str, np.ndarray],
    compression: str | None,
) -> _Template:
    """The template for ``key``, built with ``build(tree)`` if new. Caller holds the lock."""
    entry = _TEMPLATES.get(key)
    if entry is None:
        file = _in_memory_h5()
        rows = build(_H5Tree(file, compression, swmr=False))
        # Copies in the values' own memory order, so later results compare in memory order.
        entry = _Template(file, rows, {path: v.copy(order="K") for path, v in data.items()})
        while len(_TEMPLATES) >= 8:
            if len(_EVICTED) > 4096:
                _EVICTED.clear()
            old = next(iter(_TEMPLATES))
            _EVICTED.add(old)
            _TEMPLATES.pop(old).file.close()
        _TEMPLATES[key] = entry
    return entry


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, dtype and bytes (NaN equals NaN). Compared as unsigned integers of the item
    size: ~15x faster than comparing ``tobytes()`` copies, ~300x than
    ``np.array_equal(equal_nan=True)`` on a cake-sized array."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    size = a.dtype.itemsize
    if size not in (1, 2, 4, 8):
        return a.tobytes() == b.tobytes()
    if a.flags.f_contiguous and b.flags.f_contiguous and not a.flags.c_contiguous:
        a, b = a.T, b.T  # transposed views (area, count: R-major sums): compared in memory order
    # A same-size view needs no contiguity: nothing is copied, whatever the layouts.
    bits = np.dtype(f"u{size}")
    return bool(np.array_equal(a.view(bits), b.view(bits)))


def _copy_template(template: Any, file: Any) -> None:
    # One copy call per top-level group keeps hard links inside it as links.
    for name in template:
        template.copy(template[name], file, name)
    file.attrs.update(template.attrs)


def _one_frame_image(
    key: Any,
    build: Callable[[Any], dict[str, str]],
    data: dict[str, np.ndarray],
    compression: str | None,
    texts: dict[str, tuple[str, int]] | None = None,
) -> _Template | None:
    """The template for ``key`` with its one-frame byte image, or None where the image cannot
    serve: ``data`` differs from what the template was built with, or
    :class:`~radint.io.h5image.FileImage` does not support the layout. ``texts``: strings
    patched besides the date (name → (path, length in bytes), the length part of ``key``)."""
    with _TEMPLATES_LOCK:
        if texts and key in _EVICTED and key not in _TEMPLATES:
            return None  # path lengths take turns: h5py, not an image built anew per file
        entry = _template(key, build, data, compression)
        if not all(_same(entry.built_with[path], v) for path, v in data.items()):
            return None
        if entry.image is None:
            file = _in_memory_h5()
            try:
                # One-row chunks: a one-frame file has no use for the ~1 MB lineout chunks
                # that suit a growing file (and compressing them cost ~1 ms per file).
                rows = build(_H5Tree(file, compression, swmr=False, rows_per_chunk=1))
                # The file table is text, patched as the date is; the rest are numeric rows.
                numeric = {k: v for k, v in rows.items() if k != "provenance/file"}
                entry.image = FileImage.from_file(
                    file, numeric, {"date": (_DATE_PATH, len(_now_iso())), **(texts or {})}
                )
            except ImageUnsupported as e:
                log.debug("NeXus one-frame files are written through h5py: %s", e)
                entry.image = False
            finally:
                file.close()
        return entry if entry.image else None


def _now_iso() -> str:
    """UTC now, ISO 8601 with microseconds (always 32 characters)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _reduction_date(result: Result) -> str:
    """The reduction's date: the one a stored result carries (``metadata['reduction_date']``,
    so ``radint convert`` keeps it), else now; always 32 characters (the one-frame file image
    patches it in place)."""
    given = result.metadata.get("reduction_date")
    if isinstance(given, str) and len(given) == len(_now_iso()):
        return given
    return _now_iso()


_DIGEST_PATH = "entry/azint1d/reduction/input/file_digests"
_RULES_PATH = "entry/azint1d/reduction/input/rules"
_BACKEND_PATH = "entry/azint1d/reduction/input/backend"
_DIGESTS: dict[tuple[str, int, int, int, str | None], str] = {}
_DIGESTS_LOCK = threading.Lock()


def file_digest(path: str | Path) -> str | None:
    """``"sha256:<hex>"`` of a file's contents, None when it cannot be read. Cached per
    process by (path, inode, size, mtime): a batch writes it into every output, and the dark
    or mask it names is read once per run anyway. A ``file.h5::/dataset`` value: the file's
    contents and the dataset's name (:func:`radint.io.read.split_dataset`)."""
    from radint.io.read import split_dataset

    path, dataset = split_dataset(str(path))
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, dataset)
        with _DIGESTS_LOCK:
            if key in _DIGESTS:
                return _DIGESTS[key]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        if dataset is not None:
            h.update(b"::" + dataset.encode())
    except OSError:
        return None
    digest = f"sha256:{h.hexdigest()}"
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest
    return digest


def _file_digests_json(result: Result) -> str:
    """The contents' digests of the files the configuration names (mask, dark, ...), as JSON
    ``{field: digest}``: what a stored result carries (``metadata['file_digests']``, so
    ``radint convert`` keeps the originals), else those of the files now.

    Why: --skip-existing compares a rerun's configuration with the stored one; a mask
    rewritten under its old path has the same name, and only its digest tells."""
    given = result.metadata.get("file_digests")
    if isinstance(given, str):
        return given
    digests = {}
    for key in sorted(_FILE_FIELDS):
        path = getattr(result.config, key, None)
        if path and (digest := file_digest(path)) is not None:
            digests[key] = digest
    return json.dumps(digests, sort_keys=True)


def _integrated_at(result: Result) -> np.ndarray:
    """Per frame, when it was integrated (Unix s): ``metadata['timestamp']``, which the
    Integrator sets and :func:`read_nexus` reads back, so every format of one run, and a
    conversion, store the same times; now for a result that has none."""
    n = result.n_frames
    given = result.metadata.get("timestamp")
    if given is not None:
        stamps = np.asarray(given, dtype=np.float64).reshape(-1)
        if stamps.size == n:
            return stamps
    return np.full(n, time.time())


#: The reduction date both subentries share (azint2d's reduction group is a hard link).
_DATE_PATH = "entry/azint1d/reduction/date"

#: Where each frame came from: a table of input files (a 500-file batch into one stream file
#: stores each path once) and, per frame, its row in the table and its position in that file.
PROVENANCE = "entry/provenance"
_PROVENANCE_PATHS = {
    "provenance/file": f"{PROVENANCE}/file",
    "provenance/file_index": f"{PROVENANCE}/file_index",
    "provenance/frame_index": f"{PROVENANCE}/frame_index",
}
_PROVENANCE_DESCRIPTION = (
    "where each frame came from, one row per frame in the order of entry/azint*/data: "
    "file[file_index] is its input file (absolute path; for a stream, its source: the file, "
    "tcp:HOST:PORT or pva:CHANNEL), frame_index its position in that file (0-based, counting "
    "every frame the file stores; for TCP/PVA the frame's number at its source)"
)


def _provenance(result: Result) -> tuple[list[str], np.ndarray] | None:
    """Per frame, the input file and the position in it (``metadata['source_path']``,
    ``['source_frame']``; ``""`` and −1 where not known); None when the result says neither."""
    paths, frames = result.metadata.get("source_path"), result.metadata.get("source_frame")
    if paths is None and frames is None:
        return None
    n = result.n_frames
    if paths is None:
        texts = [""] * n
    else:
        values = np.asarray(paths, dtype=object).reshape(-1)
        if values.size == 1 and n > 1:
            values = np.repeat(values, n)
        if values.size != n:
            raise InvalidInputError(f"got {values.size} source paths for {n} frame(s)")
        texts = [_utf8(v) for v in values]
    where = _as_rows(frames, n, np.full(n, -1), np.int64)
    return texts, where


def _utf8(value: Any) -> str:
    """A path as text HDF5 and Zarr store as UTF-8 (bytes and undecodable names included)."""
    if value is None:
        return ""
    text = os.fsdecode(value) if isinstance(value, bytes | os.PathLike) else str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _H5Tree:
    """Writes the tree into an open HDF5 file (h5py)."""

    def __init__(
        self, file: Any, compression: str | None, swmr: bool, rows_per_chunk: int | None = None
    ) -> None:
        self.file = file
        # Rows per chunk of growing datasets; None: ~1 MB chunks (64 kB uncompressed) and one
        # row of a 2-D row.
        self._rows_per_chunk = rows_per_chunk
        self._filter = _h5_filter(compression)
        self._compression = compression
        self._groups: dict[str, Any] = {}
        self._swmr = swmr
        self._encoders: dict[int, tuple[Any, Callable[[np.ndarray], Any] | None]] = {}

    @classmethod
    def create(
        cls, path: Path, compression: str | None, swmr: bool, shared: bool = False
    ) -> _H5Tree:
        """A new file at ``path`` (the latest format for SWMR, else the most widely readable).
        ``shared``: without HDF5's file lock, so readers (h5py, h5ls, silx) can open a file
        written in place while it grows (they see what was last flushed)."""
        import h5py

        libver = "latest" if swmr else "earliest"
        file = h5py.File(path, "w", libver=libver, locking=False if shared else None)
        return cls(file, compression, swmr)

    def group(self, path: str, attrs: dict[str, Any]) -> None:
        g = self.file.require_group(path) if path else self.file
        g.attrs.update(attrs)

    def field(self, path: str, value: Any, attrs: dict[str, Any] | None = None) -> None:
        parent, _, name = path.rpartition("/")
        # Per-bin arrays (norm, count) are as large as a cake row: compressed like the rows.
        big = isinstance(value, np.ndarray) and value.nbytes >= 1 << 16
        ds = self._parent(parent).create_dataset(name, data=value, **(self._filter if big else {}))
        if attrs:
            ds.attrs.update(attrs)

    def _parent(self, path: str) -> Any:
        # h5py resolves every intermediate group of a path again on each create; a file holds
        # ~100 small fields, so the groups are looked up once.
        group = self._groups.get(path)
        if group is None:
            group = self._groups[path] = self.file.require_group(path) if path else self.file
        return group

    def link(self, source: str, path: str) -> bool:
        """Hard-link ``path`` to the existing object ``source``."""
        self.file[path] = self.file[source]
        return True

    def layout(
        self,
        key: Any,
        build: Callable[[Any], dict[str, str]],
        data: dict[str, np.ndarray],
    ) -> dict[str, str]:
        """Copy into this (empty) file the tree ``build(tree)`` writes, from an in-memory
        template made once per ``key``; returns what ``build`` returned.

        ``data`` are the fields ``build`` writes from the first frame rather than from the
        configuration (path → value): the template keeps the values it was built with and
        only those that differ are rewritten, since with an unmasked integer detector they
        are the same for every file of a run.
        """
        if self._swmr:  # SWMR needs objects of the 1.10 format; templates are the earliest
            return build(self)
        with _TEMPLATES_LOCK:
            entry = _template(key, build, data, self._compression)
            _copy_template(entry.file, self.file)
        self._groups.clear()
        for path, value in data.items():
            if not _same(entry.built_with[path], value):
                self.file[path][...] = value
        return entry.rows

    def dataset(self, path: str) -> Any:
        """The dataset at ``path``."""
        return self.file[path]

    def set_text(self, path: str, value: str) -> None:
        """Overwrite an existing scalar string field."""
        self.file[path][()] = value

    def growing(
        self, path: str, row: tuple[int, ...], dtype: np.dtype, attrs: dict[str, Any]
    ) -> Any:
        # Uncompressed, a chunk takes its full size on disk at the first row: a stream fitting
        # peaks (21 datasets of 100 slots) took 17 MB for its first frames with ~1 MB chunks.
        chunk_bytes = (1 << 20) if self._filter else (1 << 16)
        rows_per_chunk = self._rows_per_chunk or max(
            1, min(1024, chunk_bytes // max(1, int(np.prod(row)) * dtype.itemsize))
        )
        ds = self.file.create_dataset(
            path,
            shape=(0, *row),
            maxshape=(None, *row),
            chunks=(rows_per_chunk, *row) if len(row) < 2 else _frame_chunk(row, dtype),
            dtype=dtype,
            fillvalue=np.nan if dtype.kind == "f" else 0,
            # One value per frame (frame ids, timestamps) is not worth a filter: Blosc's header
            # alone is twice a one-frame file's row, and each encode cost ~0.1 ms per file.
            **(self._filter if row else {}),
        )
        ds.attrs.update(attrs)
        return ds

    def growing_text(self, path: str, attrs: dict[str, Any]) -> Any:
        """An empty extendable 1-D dataset of variable-length UTF-8 strings."""
        import h5py

        ds = self.file.create_dataset(
            path, shape=(0,), maxshape=(None,), chunks=(self._rows_per_chunk or 64,),
            dtype=h5py.string_dtype(),
        )  # fmt: skip
        ds.attrs.update(attrs)
        return ds

    def ready(self) -> None:
        if self._swmr:
            self.file.swmr_mode = True

    def append(self, ds: Any, rows: np.ndarray) -> None:
        """Extend ``ds`` along its first axis by ``rows``. Numeric rows go through h5py's
        low-level calls (extent, hyperslab, write): its high-level ``resize`` and ``ds[n:] =``
        cost ~0.1 ms of Python per small dataset, ~1 ms per stream frame over its ids,
        timestamps and lineouts."""
        dsid = ds.id
        shape = dsid.shape
        n = shape[0]
        dsid.set_extent((n + rows.shape[0], *shape[1:]))
        encode = self._row_encoder(ds)
        if encode is not None:
            rows = np.asarray(rows, dtype=ds.dtype)
            origin = (0,) * (len(shape) - 1)
            for k, row in enumerate(rows):
                dsid.write_direct_chunk((n + k, *origin), encode(row))
            return
        if ds.dtype.kind not in "iuf" or not ds.dtype.isnative:
            ds[n:] = rows  # strings and the rest: h5py converts
            return
        import h5py

        rows = np.ascontiguousarray(rows, dtype=ds.dtype)
        file_space = dsid.get_space()
        file_space.select_hyperslab((n, *(0,) * (len(shape) - 1)), rows.shape)
        dsid.write(h5py.h5s.create_simple(rows.shape), file_space, rows)

    def _row_encoder(self, ds: Any) -> Callable[[np.ndarray], Any] | None:
        """For a dataset whose chunks are single rows (the cakes), the encoder that makes a
        row's chunk outside HDF5, written as is: compression runs without the GIL, so a writer
        thread no longer stalls integration for the ~1 ms per row it takes, and an unfiltered
        row skips HDF5's write path (~1.4 → ~0.3 ms per Pilatus frame). None for other
        datasets. Looked up by the dataset object (kept with its encoder): ``ds.name`` asks
        HDF5 for the path on every call."""
        known = self._encoders.get(id(ds))
        if known is None or known[0] is not ds:
            filters = filters_of(ds)
            one_row = ds.chunks is not None and ds.chunks == (1, *ds.shape[1:])
            encoder = None
            if one_row and ds.dtype.kind in "fiu" and ds.dtype.byteorder != ">":
                with contextlib.suppress(ImageUnsupported):
                    encoder = chunk_encoder(filters)
            known = self._encoders[id(ds)] = (ds, encoder)
        return known[1]

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        # Dataset handles go first: one freed after a close that failed (EFBIG, EDQUOT: the
        # file half closed) crashed HDF5 (segfault in H5D_close).
        self._encoders.clear()
        self._groups.clear()
        self.file.close()


class _ZarrTree:
    """Writes the same tree into a Zarr v3 directory store.

    Fixed fields are created together, concurrently on zarr's event loop, when the tree is next
    read or grown: created one by one, each a round trip through that loop, the ~190 fields of a
    one-frame file took ~1.4 s."""

    def __init__(self, path: Path) -> None:
        zarr = zarr3(path)
        self.root = zarr.open_group(str(path), mode="w", zarr_format=3)
        self._pending: list[tuple[str, Any, dict[str, Any]]] = []

    def group(self, path: str, attrs: dict[str, Any]) -> None:
        g = self.root.require_group(path) if path else self.root
        g.attrs.update({k: _json_attr(v) for k, v in attrs.items()})

    def field(self, path: str, value: Any, attrs: dict[str, Any] | None = None) -> None:
        attributes = {k: _json_attr(v) for k, v in (attrs or {}).items()}
        self._pending.append((path, value, attributes))

    def _create_pending(self) -> None:
        if not self._pending:
            return
        from zarr.core.sync import sync

        group = self.root._async_group
        fields, self._pending = self._pending, []

        async def create(path: str, value: Any, attributes: dict[str, Any]) -> None:
            if isinstance(value, str):
                arr = await group.create_array(path, shape=(), dtype=str, attributes=attributes)
                await arr.setitem((), value)
            else:  # create_array(data=) needs zarr 3.1: created, then written
                data = np.asarray(value)
                arr = await group.create_array(
                    path, shape=data.shape, dtype=data.dtype, attributes=attributes
                )
                await arr.setitem(Ellipsis, data)

        async def create_all() -> None:
            # Every create ends before the first error is raised: those still running after
            # it wrote into the folder an abort had removed (a full disk left them behind).
            done = await asyncio.gather(*(create(*f) for f in fields), return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, BaseException):
                    raise outcome

        sync(create_all())

    def link(self, source: str, path: str) -> bool:
        """Zarr has no links: the caller writes a copy."""
        return False

    def layout(
        self,
        key: Any,
        build: Callable[[Any], dict[str, str]],
        data: dict[str, np.ndarray],
    ) -> dict[str, str]:
        """Write the tree directly (no templates for Zarr; ``build`` writes ``data``)."""
        return build(self)

    def dataset(self, path: str) -> Any:
        """The array at ``path``."""
        self._create_pending()
        return self.root[path]

    def set_text(self, path: str, value: str) -> None:
        """Overwrite an existing scalar string field."""
        self.dataset(path)[()] = value

    def growing(
        self, path: str, row: tuple[int, ...], dtype: np.dtype, attrs: dict[str, Any]
    ) -> Any:
        self._create_pending()
        arr = self.root.create_array(
            path,
            shape=(0, *row),
            chunks=_frame_chunk(row, dtype) if len(row) >= 2 else (1024, *row),
            dtype=dtype,
            fill_value=np.nan if dtype.kind == "f" else 0,
            attributes={k: _json_attr(v) for k, v in attrs.items()},
        )
        return arr

    def growing_text(self, path: str, attrs: dict[str, Any]) -> Any:
        """An empty extendable 1-D array of variable-length strings."""
        self._create_pending()
        return self.root.create_array(
            path, shape=(0,), chunks=(1024,), dtype=str, fill_value="",
            attributes={k: _json_attr(v) for k, v in attrs.items()},
        )  # fmt: skip

    def ready(self) -> None:
        """The fixed fields are written; Zarr chunks are visible to readers as soon as written."""
        self._create_pending()

    def append(self, arr: Any, rows: np.ndarray) -> None:
        self._create_pending()
        arr.append(rows, axis=0)

    def flush(self) -> None:
        """Zarr writes each chunk when assigned; only fields not yet created wait."""
        self._create_pending()

    def close(self) -> None:
        """Directory stores hold no open handle."""
        self._create_pending()


#: Room an HDF5 append leaves beyond its own bytes, for the metadata HDF5 writes at close.
SPACE_MARGIN = 4 << 20
#: Held for each open HDF5 output of this process until it closes: the metadata its close
#: writes. Other writes of the process (a batch writes one file's caked.hdf, zip and text
#: outputs while it appends to the next file's NeXus file) leave it free.
CLOSE_RESERVE = 1 << 20

_space_lock = threading.Lock()
_space_held: dict[int, int] = {}  # id of a hold -> bytes


class SpaceHold:
    """Bytes this process's writers keep free for a write in progress or an open HDF5 file's
    close; :func:`ensure_space` counts the holds of the others."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        with _space_lock:
            _space_held[id(self)] = self.nbytes

    def release(self) -> None:
        with _space_lock:
            _space_held.pop(id(self), None)

    def __enter__(self) -> SpaceHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def ensure_space(
    path: Path,
    nbytes: int,
    own: SpaceHold | None = None,
    what: str | None = None,
    margin: int | None = None,
) -> None:
    """Fail before HDF5 writes what the disk, or the file size limit (``ulimit -f``), cannot
    hold: HDF5 failing mid-write leaves objects it cannot release, and the process crashes at
    exit (segfault in HDF5's library shutdown). The space other writes of this process hold
    (:class:`SpaceHold`; not ``own``) counts as used: it is theirs. ``what``: the error's file
    name where it is not ``path`` (several files checked at once). ``margin``: the room asked
    beyond ``nbytes`` (default :data:`SPACE_MARGIN` free, 1 MiB under the size limit: what an
    append's close may write); a whole file whose size ``nbytes`` bounds from above needs
    little or none."""
    free = shutil.disk_usage(path.parent).free
    with _space_lock:
        others = sum(_space_held.values()) - (_space_held.get(id(own), 0) if own else 0)
    need = nbytes + (SPACE_MARGIN if margin is None else int(margin)) + others
    if free < need:
        held = f", {others} of them held for other outputs being written" if others else ""
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: {free} bytes free where writing needs {need}{held}",
            what or str(path),
        )
    limit = _file_size_limit()
    if limit is not None:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        # the metadata at close is far below a megabyte
        grown = size + nbytes + ((1 << 20) if margin is None else int(margin))
        if grown > limit:
            raise OSError(
                errno.EFBIG,
                f"File too large: the file size limit (ulimit -f) is {limit} bytes, the file "
                f"would need {grown}",
                str(path),
            )


def _file_size_limit() -> int | None:
    """The process's file size limit in bytes (RLIMIT_FSIZE), None where there is none."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _as_rows(value: Any, n: int, default: np.ndarray, dtype: type) -> np.ndarray:
    if value is None:
        return default.astype(dtype)
    rows: np.ndarray = np.asarray(value, dtype=dtype).reshape(-1)
    if rows.shape[0] != n:
        raise InvalidInputError(f"got {rows.shape[0]} frame ids/timestamps for {n} frame(s)")
    return rows


class NexusWriter:
    """Write Results frame by frame into a NeXus NXazint1d + NXazint2d file.

    Parameters
    ----------
    path : str or Path
        Output file (``backend="hdf5"``, conventionally ``.h5``/``.nxs``) or directory
        (``backend="zarr"``, conventionally ``.zarr``).
    backend : {"hdf5", "zarr"}
        HDF5 through h5py, or a Zarr v3 directory store with the same tree.
    radial_unit : {"2theta", "q"}, optional
        Unit of ``radial_axis``: 2θ in degrees (always available) or q in Å⁻¹ (needs a
        wavelength). The other one, when defined, and R in pixels are written alongside.
        Default: the unit the bins are uniform in (q for MIDAS Q-mode binning, else 2θ).
    atomic : bool
        Write under a hidden temporary name and rename on :meth:`close` (default). With
        ``False`` the file is written in place, so it can be read while it grows.
    compression : {"blosc-lz4", "gzip", "none"} or None
        HDF5 filter of the per-frame datasets: Blosc-LZ4 + shuffle (default; fast, needs the
        ``hdf5plugin`` filters that silx/h5web/nexpy/pyFAI load), gzip (any HDF5 reader, ~15×
        slower to write) or none. Zarr uses its default codec.
    swmr : bool
        HDF5 only: switch on single-writer/multiple-reader mode after the layout is written, so
        readers opening with ``swmr=True`` see frames while the file grows (needs
        ``atomic=False`` to be useful).
    lock : bool
        HDF5 only: take HDF5's file lock (default). ``False`` lets other processes (h5web,
        silx, h5ls) open a file written in place while it grows; a reader in the writing process
        itself must then open it with ``locking=False`` too (HDF5 wants the same flag).
    instrument_name, source_name, source_type, probe : str
        Values of ``instrument/name`` and ``instrument/source/{name,type,probe}``.
    peak_slots : int, optional
        Width of the ``entry/peaks`` rows. The group is created with the first result that
        carries fitted peaks, ``max(peak_slots, its slots)`` wide; results with fewer slots are
        padded with absent slots (status 255), so fitted peaks may change during a stream.

    Examples
    --------
    >>> with NexusWriter(tmp / "scan.h5") as w:  # doctest: +SKIP
    ...     for i, res in enumerate(results):
    ...         w.append(res, frame_id=i)
    """

    def __init__(
        self,
        path: str | Path,
        *,
        backend: str = "hdf5",
        radial_unit: str | None = None,
        atomic: bool = True,
        compression: str | None = "blosc-lz4",
        swmr: bool = False,
        lock: bool = True,
        instrument_name: str = "unknown",
        source_name: str = "unknown",
        source_type: str = "Synchrotron X-ray Source",
        probe: str = "x-ray",
        peak_slots: int | None = None,
    ) -> None:
        if backend not in ("hdf5", "zarr"):
            raise InvalidInputError(f"backend must be 'hdf5' or 'zarr', got {backend!r}")
        if radial_unit not in (None, "2theta", "q"):
            raise InvalidInputError(f"radial_unit must be '2theta' or 'q', got {radial_unit!r}")
        self.path = Path(path)
        self.backend = backend
        self.radial_unit = radial_unit
        self.n_frames = 0
        self.peak_slots = peak_slots
        self._labels = {
            "instrument": instrument_name,
            "source_name": source_name,
            "source_type": source_type,
            "probe": probe,
        }
        self._compression = compression
        self._swmr = swmr
        self._lock = lock
        self._target = temporary_sibling(self.path) if atomic else self.path
        self._tree: _H5Tree | _ZarrTree | None = None
        self._close_hold: SpaceHold | None = None  # while an HDF5 tree is open
        # An atomic HDF5 file's first frame is held back: if no other comes, close() writes the
        # file from its layout's byte image (~10x faster than h5py for one-frame files).
        self._may_hold = backend == "hdf5" and atomic and not swmr
        self._held: tuple[Result, np.ndarray, np.ndarray] | None = None
        # The held file's handle, opened here so that an unwritable path fails now, not at close.
        self._image_file: Any = None
        if self._may_hold:
            self._image_file = open(self._target, "wb")  # closed by close() or abort()
        else:
            if not atomic:
                remove_path(self.path)
            self._open()
        self._rows: dict[str, Any] = {}
        self._files: dict[str, int] = {}  # entry/provenance/file: path → row
        self._shape: tuple[int, int] | None = None
        self._closed = False
        self._writeback_fd: int | None = None
        self._uncommitted = False  # closed, complete, still under its temporary name
        self._synced = False  # ... and already fsync-ed

    @property
    def h5_file(self) -> Any:
        """The open ``h5py.File`` of an HDF5 output, once a result is appended (others:
        RuntimeError)."""
        if not isinstance(self._tree, _H5Tree):
            raise RuntimeError(f"{self.path}: no HDF5 file open (nothing appended, or Zarr)")
        return self._tree.file

    def _open(self) -> _H5Tree | _ZarrTree:
        """The open output tree, created on first use (with the held frame written to it)."""
        if self._tree is None:
            self._close_image_file()
            if self.backend == "hdf5":
                ensure_space(self._target, CLOSE_RESERVE)
                self._close_hold = SpaceHold(CLOSE_RESERVE)
                self._tree = _H5Tree.create(
                    self._target, self._compression, self._swmr, shared=not self._lock
                )
            else:
                self._tree = _ZarrTree(self._target)
            if self._held is not None:
                held, self._held = self._held, None
                self._write_rows(*held)
        return self._tree

    # -- layout ---------------------------------------------------------------------------
    def _unit(self, result: Result) -> str:
        """``radial_unit``, or by default the unit the bins are uniform in."""
        if self.radial_unit is not None:
            return self.radial_unit
        q_mode = cfg(result, "q_bin") > 0  # IntegrationConfig.radial_mode == "q"
        return "q" if q_mode and np.all(np.isfinite(result.q_inv_angstrom)) else "2theta"

    def _radial(self, result: Result) -> tuple[np.ndarray, np.ndarray | None, dict[str, str]]:
        tth_edges = two_theta_edges_deg(result)
        if self._unit(result) == "2theta":
            return (
                np.asarray(result.two_theta_deg, dtype=np.float64),
                tth_edges,
                {"long_name": "2theta", "units": "degrees"},
            )
        q = np.asarray(result.q_inv_angstrom, dtype=np.float64)
        if not np.all(np.isfinite(q)):
            raise InvalidInputError(
                f"{self.path}: radial_unit='q' needs a wavelength > 0; the result's q axis is NaN"
            )
        q_edges = None
        if tth_edges is not None:
            q_edges = q_from_two_theta(tth_edges, cfg(result, "wavelength_angstrom"))
        return q, q_edges, {"long_name": "q", "units": "1/angstrom"}

    def _write_common(
        self, t: Any, sub: str, definition: str, result: Result, same_as: str | None = None
    ) -> None:
        """The NXsubentry fields both definitions require. With ``same_as``, the instrument and
        reduction groups are hard links to that subentry's (HDF5), not a second copy."""
        t.group(sub, {"NX_class": "NXsubentry", "default": "data"})
        t.field(f"{sub}/definition", definition)
        t.field(f"{sub}/solid_angle_applied", bool(cfg(result, "solid_angle_correction")))
        t.field(f"{sub}/polarization_applied", bool(cfg(result, "polarization_correction")))
        t.field(f"{sub}/normalization_applied", bool(result.normalized))
        t.field(f"{sub}/monitor_applied", False)
        if same_as is not None and t.link(f"{same_as}/instrument", f"{sub}/instrument"):
            t.link(f"{same_as}/reduction", f"{sub}/reduction")
            return
        self._write_metadata(t, sub, result, config_dict(result))

    def _write_metadata(self, t: Any, sub: str, result: Result, params: dict[str, Any]) -> None:
        """``sub/instrument`` and ``sub/reduction``: the ~100 fields that depend only on the
        configuration and the writer's labels."""
        t.group(f"{sub}/instrument", {"NX_class": "NXinstrument"})
        t.field(f"{sub}/instrument/name", self._labels["instrument"])
        wl = float(cfg(result, "wavelength_angstrom"))
        t.group(f"{sub}/instrument/monochromator", {"NX_class": "NXmonochromator"})
        t.field(f"{sub}/instrument/monochromator/wavelength", wl, {"units": "angstrom"})
        # The application definitions require both fields; without a wavelength both are 0,
        # MIDAS's "unknown" (its integrators write Q 0 then), not NaN.
        energy = HC_KEV_ANGSTROM / wl if wl > 0 else 0.0
        t.field(f"{sub}/instrument/monochromator/energy", energy, {"units": "keV"})
        t.group(f"{sub}/instrument/source", {"NX_class": "NXsource"})
        t.field(f"{sub}/instrument/source/name", self._labels["source_name"])
        t.field(f"{sub}/instrument/source/type", self._labels["source_type"])
        t.field(f"{sub}/instrument/source/probe", self._labels["probe"])
        red = f"{sub}/reduction"
        t.group(red, {"NX_class": "NXprocess"})
        t.field(f"{red}/program", "radint")
        t.field(f"{red}/version", software_version())
        t.field(f"{red}/date", _now_iso())
        t.field(f"{red}/reference", REFERENCE)
        t.field(f"{red}/note", NOTE)
        t.group(f"{red}/input", {"NX_class": "NXparameters"})
        t.field(f"{red}/input/configuration", json.dumps(params, sort_keys=True))
        t.field(f"{red}/input/file_digests", _file_digests_json(result))
        if isinstance(result.metadata.get("rules"), str):
            t.field(f"{red}/input/rules", result.metadata["rules"])
        if isinstance(result.metadata.get("backend"), str):  # cpu / cuda: which engine ran
            t.field(f"{red}/input/backend", result.metadata["backend"])
        t.field(f"{red}/input/lineout_mode", result.lineout_mode)
        for key, value in sorted(params.items()):
            if isinstance(value, bool | int | float | str):
                units = next((u for s, u in _UNITS_BY_SUFFIX.items() if key.endswith(s)), None)
                t.field(f"{red}/input/{key}", value, {"units": units} if units else None)

    def _write_axes(self, t: Any, data: str, result: Result) -> None:
        radial, radial_edges, radial_attrs = self._radial(result)
        t.field(f"{data}/radial_axis", radial, radial_attrs)
        if radial_edges is not None:
            edge_attrs = {
                "long_name": f"{radial_attrs['long_name']} bin edges",
                "units": radial_attrs["units"],
            }
            t.field(f"{data}/radial_axis_edges", radial_edges, edge_attrs)
        t.field(
            f"{data}/radius_px",
            np.asarray(result.radius_px, dtype=np.float64),
            {"long_name": "R (radial bin centre)", "units": "pixel"},
        )
        if self._unit(result) == "2theta":
            q = np.asarray(result.q_inv_angstrom, dtype=np.float64)
            if np.all(np.isfinite(q)):
                t.field(f"{data}/q", q, {"long_name": "q", "units": "1/angstrom"})
        else:
            t.field(
                f"{data}/two_theta",
                np.asarray(result.two_theta_deg, dtype=np.float64),
                {"long_name": "2theta", "units": "degrees"},
            )

    def _start(self, result: Result) -> None:
        t = self._open()
        data = self._data_fields(result)
        rows = t.layout(
            self._layout_key(result),
            lambda tree: self._write_layout(tree, result, data),
            {path: value for path, (value, _) in data.items()},
        )
        self._rows = {name: t.dataset(path) for name, path in rows.items()}
        now = _reduction_date(result)
        for sub in ("azint1d", "azint2d"):  # one object in HDF5 (hard link), two in Zarr
            t.set_text(f"entry/{sub}/reduction/date", now)
        t.ready()

    @staticmethod
    def _data_fields(result: Result) -> dict[str, tuple[np.ndarray, dict[str, str]]]:
        """The fields that come from the first result's data rather than from its
        configuration: path → (value, attributes)."""
        area = np.asarray(result.area, dtype=np.float64)
        area = area[0] if area.ndim == 3 else area
        count = np.asarray(result.count)
        norm_attrs = {
            "long_name": "effective number of pixels contributing to the corresponding bin",
            "units": "arbitrary units",
        }
        return {
            "entry/azint1d/data/norm": (area.sum(axis=0), norm_attrs),
            "entry/azint2d/data/norm": (area, norm_attrs),
            "entry/azint2d/data/count": (
                (count[0] if count.ndim == 3 else count).astype(np.int64),
                {"long_name": "number of pixel pieces summed into the bin"},
            ),
        }

    def _layout_key(self, result: Result) -> tuple:
        """Everything :meth:`_write_layout` reads, so equal keys give identical layouts.

        Results of one Integrator share their configuration and axis arrays, so the costly part
        (hashing the axes, the configuration as JSON: ~0.7 ms per one-frame file) is kept per
        identity of those objects; the memo holds them, so their ids stay theirs.
        """
        sources = (result.config, result.radius_px, result.two_theta_deg, result.q_inv_angstrom,
                   result.eta_deg, result.eta_edges_deg, result.r_edges_px)  # fmt: skip
        ids = tuple(map(id, sources))
        with _TEMPLATES_LOCK:
            memo = _AXES_KEYS.get(ids)
        if memo is None:
            memo = (sources, self._axes_key(result))
            with _TEMPLATES_LOCK:
                while len(_AXES_KEYS) >= 8:
                    _AXES_KEYS.pop(next(iter(_AXES_KEYS)))
                _AXES_KEYS[ids] = memo
        return (
            software_version(),
            self._unit(result),
            self._compression,
            tuple(self._labels.items()),
            memo[1],
            result.lineout_mode,
            bool(result.normalized),
            str(np.result_type(result.cake.dtype, np.float32)),
            result.cake_sigma is not None,
            "source_path" in result.metadata or "source_frame" in result.metadata,
            result.n_r,
            result.n_eta,
            _file_digests_json(result),  # a mask rewritten under its name: the same config
            result.metadata.get("rules"),
        )

    @staticmethod
    def _axes_key(result: Result) -> tuple[str, str]:
        """The configuration (as JSON) and a digest of the axes of ``result``."""
        digest = hashlib.sha256()
        for values in (result.radius_px, result.two_theta_deg, result.q_inv_angstrom,
                       result.eta_deg, result.eta_edges_deg, two_theta_edges_deg(result)):  # fmt: skip
            digest.update(b"|" if values is None else np.asarray(values, np.float64).tobytes())
        return json.dumps(config_dict(result), sort_keys=True), digest.hexdigest()

    def _write_layout(
        self, t: Any, result: Result, per_frame: dict[str, tuple[np.ndarray, dict[str, str]]]
    ) -> dict[str, str]:
        """The file's groups, metadata, axes, ``per_frame`` fields and empty growing datasets
        (whose paths are returned by row name): fixed by the configuration but for ``per_frame``,
        so HDF5 files copy it from a template made once per configuration (a one-frame file
        took ~28 ms to write, most of it in ~200 h5py creates; a copy is one H5Ocopy)."""
        rows: dict[str, str] = {}

        def growing(name: str, path: str, row: tuple[int, ...], dtype: Any, attrs: dict) -> None:
            t.growing(path, row, np.dtype(dtype), attrs)
            rows[name] = path

        t.group("", {"default": "entry", "creator": f"radint {software_version()}"})
        t.group("entry", {"NX_class": "NXentry", "default": "azint1d"})
        dtype = np.result_type(result.cake.dtype, np.float32)
        has_err = result.cake_sigma is not None
        aux = ["radius_px"]
        if self._unit(result) == "q":
            aux.append("two_theta")
        elif np.all(np.isfinite(result.q_inv_angstrom)):
            aux.append("q")
        i_attrs = {"long_name": "intensity", "units": "arbitrary units"}
        e_attrs = {"long_name": "estimated intensity error", "units": "arbitrary units"}
        for sub, definition, ndim in (("azint1d", "NXazint1d", 1), ("azint2d", "NXazint2d", 2)):
            self._write_common(
                t, f"entry/{sub}", definition, result, None if ndim == 1 else "entry/azint1d"
            )
            data = f"entry/{sub}/data"
            radial_index = ndim
            axes = [".", "radial_axis"] if ndim == 1 else [".", "azimuthal_axis", "radial_axis"]
            attrs: dict[str, Any] = {
                "NX_class": "NXdata",
                "signal": "I",
                "axes": axes,
                "interpretation": "spectrum" if ndim == 1 else "image",
                "radial_axis_indices": radial_index,
                "frame_id_indices": 0,
                "timestamp_indices": 0,
            }
            for name in aux:
                attrs[f"{name}_indices"] = radial_index
            if ndim == 2:
                attrs["azimuthal_axis_indices"] = 1
            t.group(data, attrs)
            self._write_axes(t, data, result)
            row = (result.n_r,) if ndim == 1 else (result.n_eta, result.n_r)
            growing(f"{sub}/I", f"{data}/I", row, dtype, i_attrs)
            if has_err:
                growing(f"{sub}/I_errors", f"{data}/I_errors", row, dtype, e_attrs)
            growing(f"{sub}/frame_id", f"{data}/frame_id", (), np.int64,
                    {"long_name": "frame identifier"})  # fmt: skip
            growing(f"{sub}/timestamp", f"{data}/timestamp", (), np.float64,
                    {"long_name": "time the frame was integrated (Unix epoch)", "units": "s"})  # fmt: skip
            if ndim == 2:
                t.field(
                    f"{data}/azimuthal_axis",
                    np.asarray(result.eta_deg, dtype=np.float64),
                    {"long_name": "azimuthal bin center", "units": "degrees"},
                )
                t.field(
                    f"{data}/azimuthal_axis_edges",
                    np.asarray(result.eta_edges_deg, dtype=np.float64),
                    {"long_name": "azimuthal bin edges", "units": "degrees"},
                )
        if "source_path" in result.metadata or "source_frame" in result.metadata:
            self._provenance_layout(t)
            rows.update(_PROVENANCE_PATHS)
        for path, (value, attrs) in per_frame.items():
            t.field(path, value, attrs)
        return rows

    @staticmethod
    def _provenance_layout(t: Any) -> dict[str, Any]:
        """Create ``entry/provenance`` (empty); its datasets by row name."""
        t.group(PROVENANCE, {"NX_class": "NXcollection", "description": _PROVENANCE_DESCRIPTION})
        made = {
            "provenance/file": t.growing_text(
                _PROVENANCE_PATHS["provenance/file"],
                {"long_name": "input file (absolute path) or stream source, one row per source"},
            )
        }
        for name, dtype, long_name in (
            ("provenance/file_index", np.int32, "row of file the frame came from (-1: not known)"),
            ("provenance/frame_index", np.int64,
             "position of the frame in its input file, 0-based (-1: not known)"),
        ):  # fmt: skip
            made[name] = t.growing(_PROVENANCE_PATHS[name], (), np.dtype(dtype),
                                   {"long_name": long_name})  # fmt: skip
        return made

    def _start_peaks(self, n_peaks: int) -> None:
        """Create the peaks group; frames appended before it existed get absent rows."""
        from radint.fit import STATUS_NAMES

        t = self._open()
        t.group("entry/peaks", {"NX_class": "NXprocess"})
        t.field("entry/peaks/program", "radint")
        t.field("entry/peaks/version", software_version())
        t.field(
            "entry/peaks/model",
            "TCH pseudo-Voigt peaks on a 2-term Chebyshev background per fitted ROI, fitted to "
            "the azint1d lineout against R (pixels); MIDAS fit.bin columns (spec 6.1)",
        )
        f64 = np.dtype(np.float64)
        for name, (_, units) in PEAK_COLUMNS.items():
            attrs = {"units": units} if units else {}
            self._rows[f"peaks/{name}"] = t.growing(f"entry/peaks/{name}", (n_peaks,), f64, attrs)
            if name in _PEAK_ERRORS:
                self._rows[f"peaks/{name}_errors"] = t.growing(
                    f"entry/peaks/{name}_errors", (n_peaks,), f64, attrs
                )
        names = json.dumps({str(k): v for k, v in sorted(STATUS_NAMES.items())})
        self._rows["peaks/status"] = t.growing(
            "entry/peaks/status", (n_peaks,), np.dtype(np.uint8), {"status_names": names}
        )
        self._rows["peaks/frame_id"] = t.growing(
            "entry/peaks/frame_id", (), np.dtype(np.int64), {"long_name": "frame identifier"}
        )
        written = self._rows["azint1d/frame_id"].shape[0]
        if written:
            earlier = self._peak_rows(None, written)
            earlier["peaks/frame_id"] = np.asarray(self._rows["azint1d/frame_id"][()])
            for key, value in earlier.items():
                t.append(self._rows[key], value)

    def _start_scan(self) -> None:
        """Create ``entry/scan`` for per-frame scan values the frames carry (ω and the
        monitors of a MIDAS Zarr zip); frames appended before it existed get NaN."""
        t = self._open()
        t.group("entry/scan", {"NX_class": "NXcollection"})
        written = self._rows["azint1d/frame_id"].shape[0]
        for name, attrs in _SCAN_FIELDS.items():
            self._rows[f"scan/{name}"] = t.growing(
                f"entry/scan/{name}", (), np.dtype(np.float64), attrs
            )
            if written:
                t.append(self._rows[f"scan/{name}"], np.full(written, np.nan))

    def _start_provenance(self) -> None:
        """Create ``entry/provenance`` for frames that say where they came from after some
        that did not (their rows: -1, not known)."""
        t = self._open()
        self._rows.update(self._provenance_layout(t))
        written = self._rows["azint1d/frame_id"].shape[0]
        if written:
            for key, value in self._provenance_rows(None, written)[1].items():
                t.append(self._rows[key], value)

    def _provenance_rows(
        self, provenance: tuple[list[str], np.ndarray] | None, n: int
    ) -> tuple[list[str], dict[str, np.ndarray]]:
        """The paths new to the file table (now given their rows) and the rows of
        ``file_index`` / ``frame_index`` for ``n`` frames."""
        if provenance is None:
            return [], {
                "provenance/file_index": np.full(n, -1, dtype=np.int32),
                "provenance/frame_index": np.full(n, -1, dtype=np.int64),
            }
        paths, where = provenance
        new: list[str] = []
        index = np.full(n, -1, dtype=np.int32)
        for k, path in enumerate(paths):
            if path:
                row = self._files.get(path)
                if row is None:
                    row = self._files[path] = len(self._files)
                    new.append(path)
                index[k] = row
        return new, {"provenance/file_index": index, "provenance/frame_index": where}

    # -- public API -------------------------------------------------------------------------
    def append(
        self,
        result: Result,
        *,
        frame_id: int | Sequence[int] | None = None,
        timestamp: float | Sequence[float] | None = None,
    ) -> None:
        """Append the frame(s) of ``result`` as new rows.

        Parameters
        ----------
        result : Result
            One frame (cake (n_eta, n_r)) or a stack (n_frames, n_eta, n_r). The first append
            fixes the axes; later results must have the same (n_eta, n_r).
        frame_id : int or sequence of int, optional
            Identifier(s) of the frame(s); default ``result.frame_ids``, else the running row
            number.
        timestamp : float or sequence of float, optional
            Unix time(s) in seconds; default when the frames were integrated
            (``result.metadata["timestamp"]``, set by the Integrator), else now.

        Raises
        ------
        ValueError
            Bin counts differ from the first result, or the number of ids/timestamps is wrong.
        """
        if self._closed:
            raise InvalidInputError(f"{self.path}: writer is closed")
        if self._shape is not None and (result.n_eta, result.n_r) != self._shape:
            raise InvalidInputError(
                f"{self.path}: result has (n_eta, n_r) = {(result.n_eta, result.n_r)}, "
                f"file has {self._shape}"
            )
        n = result.n_frames
        default_ids = (
            frame_ids(result)
            if result.frame_ids is not None
            else np.arange(self.n_frames, self.n_frames + n)
        )
        ids = _as_rows(frame_id, n, default_ids, np.int64)
        stamps = _as_rows(timestamp, n, _integrated_at(result), np.float64)
        plain = result.peaks is None and not any(
            _scan_key(name) in result.metadata for name in _SCAN_FIELDS
        )
        if self._may_hold and self.n_frames == 0 and n == 1 and plain:
            self._held = (result, ids, stamps)
        else:
            self._open()
            self._write_rows(result, ids, stamps)
            self._start_writeback()
        self._shape = (result.n_eta, result.n_r)
        self.n_frames += n

    def _row_values(
        self, result: Result, ids: np.ndarray, stamps: np.ndarray, with_errors: bool
    ) -> dict[str, np.ndarray]:
        """The new rows of the azint1d/azint2d datasets by row name."""
        cake = stacked(np.asarray(result.cake), 2)
        lineout = stacked(np.asarray(result.lineout), 1)
        rows = {"azint2d/I": cake, "azint1d/I": lineout}
        if with_errors:
            rows["azint2d/I_errors"] = (
                np.full_like(cake, np.nan)
                if result.cake_sigma is None
                else stacked(result.cake_sigma, 2)
            )
            rows["azint1d/I_errors"] = (
                np.full_like(lineout, np.nan)
                if result.lineout_sigma is None
                else stacked(result.lineout_sigma, 1)
            )
        for sub in ("azint1d", "azint2d"):
            rows[f"{sub}/frame_id"] = ids
            rows[f"{sub}/timestamp"] = stamps
        return rows

    def _write_rows(self, result: Result, ids: np.ndarray, stamps: np.ndarray) -> None:
        if not self._rows:
            self._start(result)
        rows = self._row_values(result, ids, stamps, "azint2d/I_errors" in self._rows)
        n = result.n_frames
        if result.peaks is not None and "peaks/frame_id" not in self._rows:
            self._start_peaks(max(int(result.peaks.center.shape[-1]), self.peak_slots or 0))
        if "peaks/frame_id" in self._rows:
            rows.update(self._peak_rows(result.peaks, n))
            rows["peaks/frame_id"] = ids
        carried = {name: result.metadata.get(_scan_key(name)) for name in _SCAN_FIELDS}
        if any(v is not None for v in carried.values()) and "scan/omega" not in self._rows:
            self._start_scan()
        if "scan/omega" in self._rows:
            for name, value in carried.items():
                given = None if value is None else np.asarray(value, np.float64).reshape(-1)
                rows[f"scan/{name}"] = (
                    given if given is not None and given.size == n else np.full(n, np.nan)
                )
        provenance = _provenance(result)
        if provenance is not None and "provenance/file_index" not in self._rows:
            self._start_provenance()
        if "provenance/file_index" in self._rows:
            new_files, provenance_rows = self._provenance_rows(provenance, n)
            if new_files:  # the table first: a reader of a growing file never meets a row
                # pointing past it
                self._open().append(self._rows["provenance/file"], np.array(new_files, object))
            rows.update(provenance_rows)
        if self.backend == "hdf5":
            nbytes = sum(np.asarray(v).nbytes for v in rows.values())
            ensure_space(self._target, nbytes, own=self._close_hold)
        for key, value in rows.items():
            self._open().append(self._rows[key], value)

    def _write_image(self, sync: bool) -> bool:
        """Write the held frame as the whole file from its layout's byte image (fsync-ed with
        ``sync``, else only handed to writeback); False where the image cannot serve (then
        nothing was written)."""
        assert self._held is not None
        result, ids, stamps = self._held
        fields = self._data_fields(result)
        data = {path: value for path, (value, _) in fields.items()}
        key = self._layout_key(result)
        provenance = _provenance(result)
        texts: dict[str, tuple[str, int]] = {}
        if provenance is not None:
            path = provenance[0][0]
            if not path:
                return False  # an empty file table: not the image's layout
            # The path is patched in place, so each length in bytes has its own image.
            texts["file"] = (_PROVENANCE_PATHS["provenance/file"], len(path.encode()))
            key = (*key, texts["file"][1])
        entry = _one_frame_image(
            key,
            lambda tree: self._write_layout(tree, result, fields),
            data,
            self._compression,
            texts,
        )
        if entry is None:
            return False
        assert isinstance(entry.image, FileImage)
        rows = self._row_values(result, ids, stamps, "azint2d/I_errors" in entry.rows)
        strings = {"date": _reduction_date(result)}
        if provenance is not None:
            rows.update(self._provenance_rows(provenance, 1)[1])
            strings["file"] = provenance[0][0]
        image = entry.image.render({k: v[0] for k, v in rows.items()}, strings)
        fh, self._image_file = self._image_file, None
        with fh:
            fh.write(image)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
            else:
                start_writeback(fh.fileno())
        return True

    def _start_writeback(self) -> None:
        """An atomic HDF5 file is fsync-ed before its rename: start writing it out as it grows
        (through a read-only descriptor of our own; HDF5's is not exposed)."""
        if self._target == self.path or self.backend != "hdf5":
            return
        if self._writeback_fd is None:
            try:
                self._writeback_fd = os.open(self._target, os.O_RDONLY)
            except OSError:
                self._writeback_fd = -1
        if self._writeback_fd >= 0:
            start_writeback(self._writeback_fd)

    def _close_writeback_fd(self) -> None:
        if self._writeback_fd is not None and self._writeback_fd >= 0:
            os.close(self._writeback_fd)
        self._writeback_fd = None

    def _close_image_file(self) -> None:
        if self._image_file is not None:
            self._image_file.close()
            self._image_file = None

    def _peak_rows(self, peaks: Any, n: int) -> dict[str, np.ndarray]:
        """Rows of the peaks datasets for ``n`` frames; fewer slots than the file are padded as
        absent (status 255, NaN), no peaks at all gives absent rows."""
        n_peaks = self._rows["peaks/status"].shape[1]
        if peaks is None:
            nan = np.full((n, n_peaks), np.nan)
            rows = {k: nan for k in self._rows if k.startswith("peaks/") and k != "peaks/frame_id"}
            rows["peaks/status"] = np.full((n, n_peaks), 255, dtype=np.uint8)
            return rows
        have = int(peaks.center.shape[-1])
        if have > n_peaks:
            raise InvalidInputError(
                f"{self.path}: result has {have} peak slots, the file was laid out for {n_peaks} "
                "(NexusWriter(peak_slots=...))"
            )

        def padded(values: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full((n, n_peaks), fill, dtype=values.dtype)
            out[:, :have] = values.reshape(n, have)
            return out

        def rows_of(attr: str) -> np.ndarray:
            v = getattr(peaks, attr)
            if v is None:
                return np.full((n, n_peaks), np.nan)
            return padded(np.asarray(v, dtype=np.float64), np.nan)

        rows = {}
        for name, (attr, _) in PEAK_COLUMNS.items():
            rows[f"peaks/{name}"] = rows_of(attr)
            if name in _PEAK_ERRORS:
                rows[f"peaks/{name}_errors"] = rows_of(_PEAK_ERRORS[name])
        rows["peaks/status"] = padded(np.asarray(peaks.status, dtype=np.uint8), 255)
        return rows

    def flush(self) -> None:
        """Push written frames to disk so readers of a non-atomic file see them."""
        if self._tree is not None:
            self._tree.flush()

    def close(self, commit: bool = True) -> None:
        """Finish the file and, when atomic, sync it and rename it to its final name.

        Parameters
        ----------
        commit : bool
            With False an atomic file is complete but keeps its temporary name until
            :meth:`commit` (which syncs and renames it): a batch closes the next file while the
            previous one syncs.

        Raises
        ------
        ValueError
            No frame was ever appended (the temporary file is removed).
        """
        if self._closed:
            if commit:
                self.commit()
            return
        if self._shape is None:
            self.abort()
            raise InvalidInputError(f"{self.path}: nothing appended, no file written")
        try:
            if self._tree is None and self._write_image(sync=commit):
                self._synced = commit
            else:
                tree = self._open()
                self._rows = {}  # dataset handles closed before the file (see _H5Tree.close)
                tree.close()
                self._release_close_hold()
        except BaseException:
            self.abort()
            raise
        finally:
            self._close_writeback_fd()
        self._closed = True
        self._uncommitted = self._target != self.path
        if commit:
            self.commit()

    def commit(self) -> None:
        """Sync and rename a file closed with ``close(commit=False)`` (else nothing to do).

        Raises
        ------
        OSError
            The sync or rename failed (the temporary file is then removed).
        """
        if not self._uncommitted:
            return
        try:
            commit_path(self._target, self.path, synced=self._synced)
        except BaseException:
            self.abort()
            raise
        self._uncommitted = False

    def abort(self) -> None:
        """Close and delete the output (used when a run fails part-way)."""
        self._closed = True
        self._uncommitted = False
        self._held = None
        self._close_image_file()
        self._close_writeback_fd()
        self._rows = {}
        if self._tree is not None:
            with contextlib.suppress(Exception):
                self._tree.close()
        self._release_close_hold()
        remove_path(self._target)

    def _release_close_hold(self) -> None:
        if self._close_hold is not None:
            self._close_hold.release()
            self._close_hold = None

    def __enter__(self) -> NexusWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@contextlib.contextmanager
def open_result(path: str | Path) -> Iterator[Any]:
    """A radint result opened for reading, closed on exit: a Zarr store's root group (a
    directory; zarr >= 3 checked) or the HDF5 file. A file a writer holds locked (a stream,
    flushed as it goes, not SWMR) is opened without the lock, so its flushed frames read; in
    the writing process itself with the same locking flag as the writer, as HDF5 requires.

    Raises
    ------
    RadintIOError
        It cannot be opened (missing, not HDF5 or Zarr).
    """
    from radint.exceptions import RadintIOError

    path = Path(path)
    try:
        if path.is_dir():
            root: Any = zarr3(path).open_group(str(path), mode="r")
        else:
            import hdf5plugin  # noqa: F401  (registers the Blosc filter the writer's default uses)

            # swmr: HDF5 then reads past the end of allocation its superblock gave at open (a
            # stream writer flushing meanwhile grows the file: "addr overflow" failed most reads
            # of a stream.h5 written at 1000 frames/s) and retries metadata whose checksum
            # fails (a block being rewritten).
            root = _open_h5_reading(path)
    except (OSError, ValueError) as e:
        raise RadintIOError(f"{path}: cannot open as a NeXus file ({e})") from e
    try:
        yield root
    finally:
        if hasattr(root, "close"):
            root.close()


def _open_h5_reading(path: Path) -> Any:
    """``path`` opened to read, SWMR where it can be. A file another process holds locked is
    opened without the lock; a file this process has open already (a notebook's own
    ``h5py.File``) is shared by HDF5 only with the same SWMR and locking flags: without SWMR,
    then also without the lock."""
    import h5py

    tries: list[dict[str, bool]] = [{"swmr": True}, {"swmr": True, "locking": False}, {}]
    for kwargs in tries:
        try:
            return h5py.File(path, "r", **kwargs)
        except OSError as e:
            message = str(e)
            if not ("SWMR read access flag" in message or "lock" in message
                    or isinstance(e, BlockingIOError)):  # fmt: skip
                raise
    return h5py.File(path, "r", locking=False)


def copy_stream_table(src: str | Path, dst: str | Path, n_frames: int) -> bool:
    """Copy a ``radint stream`` result's ``entry/stream`` (per row: frame id, source, timestamps,
    dataset_num, ``attributes/`` NDAttributes; the stream's counters as attributes) into
    ``dst``, a NeXus result (HDF5 or Zarr) written from it with ``n_frames`` rows (rows past
    them are left out). False when ``src`` has none."""
    groups: dict[str, dict[str, Any]] = {}  # path under entry/stream -> its attributes
    columns: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}

    def read(node: Any, path: str) -> None:
        groups[path] = dict(node.attrs)
        for name in node:
            child, where = node[name], f"{path}/{name}"
            if not hasattr(child, "shape"):
                read(child, where)
                continue
            text = np.dtype(child.dtype).kind in "OSUT"
            values = (
                child.asstr()[:n_frames] if hasattr(child, "asstr") and text else child[:n_frames]
            )
            columns[where] = (np.asarray(values, dtype=object if text else None), dict(child.attrs))

    with open_result(src) as root:
        if "entry/stream" not in root:
            return False
        read(root["entry/stream"], "entry/stream")
    dst = Path(dst)
    if dst.is_dir():
        root = zarr3(dst).open_group(str(dst), mode="a")
        for path, attrs in groups.items():
            root.require_group(path).attrs.update({k: _json_attr(v) for k, v in attrs.items()})
        for path, (values, attrs) in columns.items():
            if values.dtype == object:
                arr = root.create_array(path, shape=values.shape, dtype=str, fill_value="")
                arr[:] = values.astype(str)
            else:
                arr = root.create_array(path, shape=values.shape, dtype=values.dtype)
                arr[:] = values
            arr.attrs.update({k: _json_attr(v) for k, v in attrs.items()})
        return True
    import h5py

    with h5py.File(dst, "a") as f:
        for path, attrs in groups.items():
            f.require_group(path).attrs.update(attrs)
        for path, (values, attrs) in columns.items():
            if values.dtype == object:
                ds = f.create_dataset(path, data=values.astype(str).tolist(),
                                      dtype=h5py.string_dtype())  # fmt: skip
            else:
                ds = f.create_dataset(path, data=values)
            ds.attrs.update(attrs)
    return True


def write_nexus(
    result: Result,
    path: str | Path,
    *,
    backend: str = "hdf5",
    radial_unit: str | None = None,
    timestamp: float | Sequence[float] | None = None,
    compression: str | None = "blosc-lz4",
) -> Path:
    """Write a whole Result (one frame or a stack) as a NeXus NXazint1d/NXazint2d file, atomically.

    Parameters
    ----------
    result : Result
    path : str or Path
        ``.h5`` file (``backend="hdf5"``) or ``.zarr`` directory (``backend="zarr"``).
    backend, radial_unit, compression
        As for :class:`NexusWriter`.
    timestamp : float or sequence of float, optional
        Unix time(s) of the frame(s); default now.

    Returns
    -------
    Path
        ``path``.
    """
    with NexusWriter(
        path, backend=backend, radial_unit=radial_unit, compression=compression
    ) as writer:
        writer.append(result, timestamp=timestamp)
    return Path(path)


@dataclass
class Provenance:
    """Where the frames of a result file came from (its ``entry/provenance``).

    Attributes
    ----------
    files : list of str
        The input files (absolute paths; a stream's TCP/PVA sources by name), each once.
    file_index : ndarray, shape (n_frames,), int32
        Row of ``files`` each output frame came from; −1 where not known.
    frame_index : ndarray, shape (n_frames,), int64
        Position of each output frame in its input file (0-based); −1 where not known.
    frame_id : ndarray, shape (n_frames,), int64
        The output frames' ``frame_id`` (as in ``entry/azint*/data``).
    """

    files: list[str]
    file_index: np.ndarray
    frame_index: np.ndarray
    frame_id: np.ndarray

    def source(self, row: int) -> tuple[str, int]:
        """(input file, position in it) of output frame ``row`` (``("", -1)`` if not known)."""
        k = int(self.file_index[row])
        return (self.files[k] if 0 <= k < len(self.files) else ""), int(self.frame_index[row])


def read_provenance(path: str | Path) -> Provenance | None:
    """Read only ``entry/provenance`` (and the frame ids) of a radint result file, HDF5 or
    Zarr: cheap on a file of many frames, where :func:`read_nexus` reads every cake.

    Returns
    -------
    Provenance or None
        None for a file written without it (before radint recorded it, or from frames that
        did not say where they came from).

    Raises
    ------
    RadintIOError
        The file cannot be opened or is not a radint NeXus result.
    """
    from radint.exceptions import RadintIOError

    path = Path(path)
    with open_result(path) as root:
        try:
            frame_id = np.asarray(root["entry/azint1d/data/frame_id"][()], dtype=np.int64)
        except KeyError:
            raise RadintIOError(f"{path}: missing entry/azint1d/data/frame_id (not a radint "
                                "NeXus result)") from None  # fmt: skip
        try:
            table = np.asarray(root[f"{PROVENANCE}/file"][()])
            file_index = np.asarray(root[f"{PROVENANCE}/file_index"][()], dtype=np.int32)
            frame_index = np.asarray(root[f"{PROVENANCE}/frame_index"][()], dtype=np.int64)
        except KeyError:
            return None
        n = min(len(frame_id), len(file_index), len(frame_index))
        files = [v.decode() if isinstance(v, bytes) else str(v) for v in table.ravel()]
        return Provenance(files, file_index[:n], frame_index[:n], frame_id[:n])


def _read_provenance(table: np.ndarray, file_index: np.ndarray) -> dict[str, Any]:
    """``source_files`` (the stored table, list of str) and ``source_path`` (per frame, ``""``
    where not known) from ``entry/provenance``."""
    files = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(table).ravel()]
    lookup = np.array([*files, ""], dtype=object)  # -1 (not known) picks the ""
    index = np.asarray(file_index, dtype=np.int64)
    index = np.where((index >= 0) & (index < len(files)), index, -1)
    return {"source_files": files, "source_path": lookup[index]}


#: Configuration fields that say where a value came from, not what was computed, and those
#: no batch output depends on (``Omega`` is the ω of a stream's GSAS-II zarr.zip).
_NOT_RESULT_FIELDS = frozenset({"source", "set_at", "unknown", "omega_deg"})


def _stored_json(path: str | Path, name: str) -> Any:
    """The JSON text stored at ``name`` in a radint NeXus result (HDF5 file or Zarr store),
    parsed; None when it holds none or cannot be read."""
    text = stored_text(path, name)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def stored_text(path: str | Path, name: str) -> str | None:
    """The text stored at ``name`` in a radint NeXus result (HDF5 file or Zarr store); None
    when it holds none or cannot be read."""
    try:
        with open_result(path) as root:
            value = np.asarray(root[name][()])
        v = value.item() if value.shape == () else value
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # not a result, unreadable, written by something else
        return None


def stored_configuration(path: str | Path) -> dict[str, Any] | None:
    """The configuration a radint NeXus result (HDF5 file or Zarr store) was made with, as
    :meth:`IntegrationConfig.to_dict` gives it, fields an older radint did not store filled
    with their defaults; None when the file holds none or cannot be read."""
    from radint.config import IntegrationConfig

    stored = _stored_json(path, "entry/azint1d/reduction/input/configuration")
    try:
        return IntegrationConfig.from_dict(stored).to_dict() if stored else None
    except Exception:  # written by something else: nothing to compare
        return None


#: Configuration fields naming a file (mask, dark, distortion, ...): stored as given.
_FILE_FIELDS = frozenset(
    {
        "mask_file",
        "dark_file",
        "flat_file",
        "distortion_file",
        "residual_correction_map",
        "panel_shifts_file",
    }
)


def _same_file(was: Any, now: Any) -> bool:
    """Whether two stored paths name the same file: equal names, and where both files are
    there, equal contents (a folder moved or mounted elsewhere is the same run; the contents
    of a file rewritten under its old path cannot be compared). ``file.h5::/dataset`` values:
    the same dataset of the same file."""
    from radint.io.read import split_dataset

    if was and now:
        (was, was_dataset), (now, now_dataset) = split_dataset(str(was)), split_dataset(str(now))
        if was_dataset != now_dataset:
            return False
    if not was or not now or Path(was).name != Path(now).name:
        return was == now
    old, new = Path(was), Path(now)
    try:
        if not (old.is_file() and new.is_file()) or old.resolve() == new.resolve():
            return True
        return old.stat().st_size == new.stat().st_size and old.read_bytes() == new.read_bytes()
    except OSError:
        return True


def stored_rules(path: str | Path) -> str | None:
    """The rules and map a radint NeXus result was made with (:attr:`Integrator.rules`, e.g.
    ``"midas-cpu rules, MIDAS Map.bin sha256:..."``); None where it does not say (older radint)."""
    return stored_text(path, _RULES_PATH)


def stored_file_digests(path: str | Path) -> dict[str, str]:
    """The file digests a radint NeXus result stored (:func:`file_digest` per configuration
    field naming a file); empty when it stores none (older radint) or cannot be read."""
    digests = _stored_json(path, _DIGEST_PATH)
    return {str(k): str(d) for k, d in digests.items()} if isinstance(digests, dict) else {}


def configuration_changes(
    stored: dict[str, Any], current: Any, limit: int = 6, digests: dict[str, str] | None = None
) -> list[str]:
    """What differs between a stored configuration (:func:`stored_configuration`) and the
    IntegrationConfig ``current``, as ``"r_bin_px 1.0 -> 2.0"`` (at most ``limit``, then a
    count); where values come from (parameter file, lines) is not compared. Files (mask,
    dark, ...) compare by the stored ``digests`` of their contents where the result has them
    and the file is there now, else by name and contents (:func:`_same_file`). A field the
    stored configuration lacks (written by a radint before the field existed) counts as its
    default, which is what that radint used."""
    now = json.loads(json.dumps(current.to_dict()))  # tuples as lists, as stored
    defaults = json.loads(json.dumps(type(current)().to_dict()))
    was = {
        **{k: v for k, v in defaults.items() if k not in stored},
        **json.loads(json.dumps(stored)),
    }
    digests = digests or {}
    rewritten = set()

    def differs(k: str) -> bool:
        if k in _NOT_RESULT_FIELDS:
            return False
        if k in _FILE_FIELDS and k in digests and now.get(k):
            digest = file_digest(now[k])
            if digest is not None:
                if digest != digests[k] and now.get(k) == was.get(k):
                    rewritten.add(k)
                return digest != digests[k]
        if k in _FILE_FIELDS and _same_file(was.get(k), now.get(k)):
            return False
        return now.get(k) != was.get(k)

    keys = sorted(k for k in set(now) | set(was) if differs(k))
    out = [
        f"{k} {now.get(k)!r} has other contents" if k in rewritten
        else f"{k} {was.get(k)!r} -> {now.get(k)!r}"
        for k in keys[:limit]
    ]  # fmt: skip
    if len(keys) > limit:
        out.append(f"and {len(keys) - limit} more")
    return out


#: Reads of a file that fail mid-way, tried again after these pauses (s): a stream writer
#: flushing at that moment can leave a reader (not SWMR) a block it has not finished.
READ_RETRY_PAUSES_S = (0.05, 0.2, 0.5)


class _ReadFailed(Exception):
    """A dataset of an opened HDF5 file could not be read (see READ_RETRY_PAUSES_S)."""


def read_nexus(path: str | Path, frames: slice | None = None) -> Result:
    """Read a radint NeXus file (HDF5 ``.h5`` or Zarr ``.zarr``) back into a stack :class:`Result`.

    ``frames``: the frames to read, as a slice of the complete frames (e.g. ``slice(-1, None)``
    for the newest, ``slice(k, k + 1)`` for frame k); only those rows are read from the file
    (default: all).

    A file that ``radint stream`` is still writing can be read too (the frames flushed so far;
    a read that meets a flush half-way is tried again, up to ~0.75 s).
    Everything the writer stored comes back: cake, lineout, their errors, bin areas and counts,
    the axes, frame ids, the configuration (from ``reduction/input/configuration``), when the
    file has an ``entry/peaks`` group the fitted peaks as ``result.peaks``, and where it has
    ``entry/provenance``, in ``result.metadata``: ``source_path`` (per frame, the input file's
    absolute path), ``source_frame`` (per frame, the position in that file) and
    ``source_files`` (the file table, each input once).

    Raises
    ------
    RadintIOError
        The file cannot be opened or is not a radint NeXus result (names the missing path).
    """
    from radint.exceptions import RadintIOError

    path = Path(path)
    if frames is not None and (not isinstance(frames, slice) or frames.step == 0):
        raise InvalidInputError(
            f"frames: expected a slice with a step other than 0, got {frames!r}"
        )
    for pause in READ_RETRY_PAUSES_S:
        try:
            return _read_nexus(path, frames)
        except _ReadFailed:
            time.sleep(pause)
    try:
        return _read_nexus(path, frames)
    except _ReadFailed as e:
        raise RadintIOError(f"{path}: {e}") from e.__cause__


def _read_nexus(path: Path, frames: slice | None = None) -> Result:
    with open_result(path) as root:
        return _result_of(root, path, frames)


def _dataset(root: Any, path: Path, name: str, required: bool = True) -> Any:
    """A dataset of an open result, not read yet (None where absent and not required)."""
    from radint.exceptions import RadintIOError

    try:
        return root[name]
    except KeyError:
        if required:
            raise RadintIOError(f"{path}: missing {name} (not a radint NeXus result)") from None
        return None
    except OSError as e:
        raise _ReadFailed(f"cannot open {name}: {e}") from e


def _per_frame_datasets(root: Any, path: Path) -> dict[str, Any]:
    """The tables a frame needs a row in (not read yet): a file a stream is still writing may
    hold more rows of one than of another (each grows on its own), so only frames every one
    has are complete."""
    node = functools.partial(_dataset, root, path)
    d1, d2 = "entry/azint1d/data", "entry/azint2d/data"
    per_frame = {
        "lineout": node(f"{d1}/I"),
        "cake": node(f"{d2}/I"),
        "cake_sigma": node(f"{d2}/I_errors", required=False),
        "lineout_sigma": node(f"{d1}/I_errors", required=False),
        "frame_id": node(f"{d1}/frame_id"),
        "file_index": node(f"{PROVENANCE}/file_index", required=False),
        "frame_index": node(f"{PROVENANCE}/frame_index", required=False),
    }
    if "peaks" in root["entry"]:
        for name, (attr, _) in PEAK_COLUMNS.items():
            per_frame[f"peak:{attr}"] = node(f"entry/peaks/{name}")
        for name, attr in _PEAK_ERRORS.items():
            per_frame[f"error:{attr}"] = node(
                f"entry/peaks/{name}_errors", required=name not in _DERIVED_ERRORS
            )
        per_frame["status"] = node("entry/peaks/status")
    return per_frame


def complete_frames(path: str | Path) -> int:
    """How many complete frames a radint result holds (of a file a stream is still writing:
    those every per-frame table has a row of), without reading them."""
    path = Path(path)
    with open_result(path) as root:
        tables = _per_frame_datasets(root, path).values()
        return min(v.shape[0] for v in tables if v is not None)


def _result_of(root: Any, path: Path, frames: slice | None = None) -> Result:
    from radint.config import IntegrationConfig
    from radint.fit import STATUS_NAMES, FitTable

    def get(name: str, required: bool = True) -> Any:
        ds = _dataset(root, path, name, required)
        if ds is None:
            return None
        try:
            return np.asarray(ds[()])
        except OSError as e:
            raise _ReadFailed(f"cannot read {name}: {e}") from e

    def text(name: str) -> str:
        v = get(name, required=False)
        if v is None:
            return ""
        v = v.item() if v.shape == () else v
        return v.decode() if isinstance(v, bytes) else str(v)

    d1, d2 = "entry/azint1d/data", "entry/azint2d/data"
    conf = json.loads(text("entry/azint1d/reduction/input/configuration") or "{}")
    config = IntegrationConfig.from_dict(conf) if conf else None
    if config is not None and config.q_bin > 0 and config.wavelength_angstrom <= 0:
        # Written before QBinSize without a wavelength became an error: binned in R then.
        config = config.replace(q_min=0.0, q_max=0.0, q_bin=0.0)
    per_frame = _per_frame_datasets(root, path)
    has_peaks = "status" in per_frame
    node = functools.partial(_dataset, root, path)
    n_complete = min(v.shape[0] for v in per_frame.values() if v is not None)
    chosen = range(n_complete)[frames if frames is not None else slice(None)]
    n = len(chosen)

    def read(key: str) -> Any:
        ds = per_frame.get(key)
        if ds is None:
            return None
        forward = chosen if chosen.step > 0 else chosen[::-1]  # HDF5 reads forward only
        try:
            if not n:
                return np.asarray(ds[0:0])
            rows = np.asarray(ds[forward.start : forward.stop : forward.step])
        except OSError as e:
            raise _ReadFailed(f"cannot read {ds.name}: {e}") from e
        return rows if forward is chosen else rows[::-1]

    lineout, cake, frame_id = read("lineout"), read("cake"), read("frame_id")
    cake_sigma, lineout_sigma = read("cake_sigma"), read("lineout_sigma")
    file_index, frame_index = read("file_index"), read("frame_index")
    area = get(f"{d2}/norm")
    count = get(f"{d2}/count", required=False)
    radius = get(f"{d1}/radius_px")
    if config is not None:
        r_edges = config.bin_edges()[0]
        tth = config.two_theta_deg(radius)
    else:
        r_edges = edges_from_centres(radius)
        tth = np.full_like(radius, np.nan)
    wavelength = float(config.wavelength_angstrom) if config is not None else 0.0
    q = q_from_two_theta(tth, wavelength)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_spacing = 2 * np.pi / q
    peaks = None
    if has_peaks:
        cols = {attr: read(f"peak:{attr}") for _, (attr, _) in PEAK_COLUMNS.items()}
        errs = {attr: read(f"error:{attr}") for attr in _PEAK_ERRORS.values()}
        errs = {k: v for k, v in errs.items() if v is not None}
        status = read("status")
        names = np.array([STATUS_NAMES.get(int(v), f"unknown_{v}") for v in status.ravel()])
        peaks = FitTable(
            **cols,
            **errs,
            status=status,
            status_name=names.reshape(status.shape),
            iterations=np.zeros(status.shape, dtype=np.uint32),
            metadata={"source": str(path)},
        )
    metadata: dict[str, Any] = {"source": str(path), "n_frames": n}
    # When the frames were integrated, and the reduction's date: kept by a conversion.
    per_frame["timestamp"] = node("entry/azint1d/data/timestamp", required=False)
    if per_frame["timestamp"] is not None and per_frame["timestamp"].shape[0] >= n_complete:
        metadata["timestamp"] = np.asarray(read("timestamp"), dtype=np.float64).reshape(-1)
    if date := text(_DATE_PATH):
        metadata["reduction_date"] = date
    if digests := text(_DIGEST_PATH):
        metadata["file_digests"] = digests
    if rules := text(_RULES_PATH):
        metadata["rules"] = rules
    if backend := text(_BACKEND_PATH):  # kept when the result is written again
        metadata["backend"] = backend
    if file_index is not None and frame_index is not None:
        metadata.update(_read_provenance(get(f"{PROVENANCE}/file"), file_index))
        metadata["source_frame"] = frame_index.astype(np.int64)
    for name in _SCAN_FIELDS:  # per-frame ω and monitors (a MIDAS zip's), for its writers
        per_frame[name] = node(f"entry/scan/{name}", required=False)
        if per_frame[name] is None or per_frame[name].shape[0] < n_complete:
            continue
        values = read(name)
        if not (name != "omega" and np.isnan(values).all()):
            metadata[_scan_key(name)] = values
    result = Result(
        cake=cake,
        cake_sigma=cake_sigma,
        lineout=lineout,
        lineout_sigma=lineout_sigma,
        area=np.broadcast_to(area, cake.shape).copy(),
        # uint32, as the integrator counts (the file stores int64).
        count=(
            np.broadcast_to(count, cake.shape).astype(np.uint32)
            if count is not None
            else np.zeros(cake.shape, dtype=np.uint32)
        ),
        radius_px=radius,
        two_theta_deg=tth,
        q_inv_angstrom=q,
        d_spacing_angstrom=d_spacing,
        eta_deg=get(f"{d2}/azimuthal_axis"),
        r_edges_px=np.asarray(r_edges, dtype=np.float64),
        eta_edges_deg=get(f"{d2}/azimuthal_axis_edges"),
        config=config,
        normalized=bool(get("entry/azint1d/normalization_applied")),
        lineout_mode=text("entry/azint1d/reduction/input/lineout_mode") or "area_weighted",
        frame_ids=frame_id.astype(np.int64),
        metadata=metadata,
        peaks=peaks,
    )
    if peaks is not None and config is not None and peaks.center_two_theta_deg_err is None:
        # Written before the derived columns' errors were stored: propagated as the
        # fitter does, so a conversion writes them rather than NaN.
        from radint.fit import with_units

        result.peaks = with_units(peaks, result)
    return result
