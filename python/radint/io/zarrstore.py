"""Zarr reader: v2/v3 directory stores and ``.zip`` stores, plus the MIDAS Zarr zip (spec §8.2).

A store holding a bare array is read as that array; a group is read at ``dataset`` (default
``exchange/data``). Only the chunks of the requested frame are decompressed.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import ZipStore

from radint._once import warn_once
from radint.config import IntegrationConfig
from radint.io._source import FrameSource, check_pixel_dtype, frames_from_stack
from radint.io.errors import ReaderError

log = logging.getLogger("radint")

DEFAULT_DATASET = "exchange/data"
MIDAS_DARK_DATASET = "exchange/dark"
_MIDAS_SCAN = "measurement/process/scan_parameters"
_MIDAS_PARAMS = "analysis/process/analysis_parameters"


def _list_arrays(group: zarr.Group) -> list[str]:
    return [f"{name} {arr.shape}" for name, arr in group.arrays()] + [
        f"{name}/{sub}" for name, g in group.groups() for sub in _list_arrays(g)
    ]


#: Files at the top of a Zarr directory store: v2 array, v2 group, v3 node.
_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")


def _check_zarr_directory(path: Path) -> None:
    """ReaderError for a directory that is not a Zarr store (e.g. a folder of TIFF files),
    saying how to pass the files inside instead."""
    if any((path / marker).is_file() for marker in _ZARR_MARKERS):
        return
    files = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        found = "it holds no files"
    else:
        suffixes = Counter(Path(name).suffix for name in files)
        suffix = suffixes.most_common(1)[0][0]
        examples = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
        pattern = f"{path}/*{suffix}" if suffix else f"{path}/*"
        found = (
            f"it holds {len(files)} file(s): {examples}; to read the files inside, pass them, "
            f"e.g. '{pattern}'"
        )
    raise ReaderError(
        f"{path}: a directory given as frames, but not a Zarr store (no "
        f"{', '.join(_ZARR_MARKERS)} in it); {found}"
    )


class ZarrSource(FrameSource):
    """Frames of one Zarr array (v2 or v3; directory or zip)."""

    def __init__(self, path: Path, dataset: str | None = None) -> None:
        super().__init__(path)
        self._store: ZipStore | None = None
        if path.is_dir():
            _check_zarr_directory(path)
        try:
            if path.is_dir():
                root = zarr.open(str(path), mode="r")
            else:
                self._store = ZipStore(path, mode="r")
                root = zarr.open(self._store, mode="r")
        except Exception as exc:  # zarr raises many unrelated types for a bad store
            self.close()
            raise ReaderError(f"{path}: not a readable Zarr store ({exc})") from exc
        self.root: Any = root  # a Group, or the Array itself
        if isinstance(root, zarr.Array):
            if dataset not in (None, "", "/"):
                self.close()
                raise ReaderError(
                    f"{path}: a bare Zarr array, not a group, so there is no array "
                    f"'{dataset}' to choose (--dataset / -dataLoc): leave it out"
                )
            arr = root
            self.label = str(path)
        else:
            name = dataset or DEFAULT_DATASET
            self.label = f"{path}:{name}"
            found = root.get(name)
            if not isinstance(found, zarr.Array):
                available = sorted(_list_arrays(root))
                self.close()
                # A MIDAS zip holds ~50 parameter arrays: name the first, count the rest.
                shown = ", ".join(available[:8]) if available else "none"
                more = f" and {len(available) - 8} more" if len(available) > 8 else ""
                raise ReaderError(
                    f"{path}: array '{name}' does not exist; available arrays: {shown}{more}"
                )
            arr = found
        self._arr = arr
        try:
            self.dtype = check_pixel_dtype(self.label, arr.dtype)  # before any buffer is made
            self.n_frames, self.frame_shape = frames_from_stack(self.label, arr.shape)
            self._check_written()
        except BaseException:
            self.close()
            raise

    def _check_written(self) -> None:
        """Warn (once per store) naming the frames whose chunks are not in the store: zarr
        reads them as the fill value. zarr leaves out chunks that hold only the fill value
        unless written with ``write_empty_chunks=True`` (zarr 3's default), so an all-zero
        frame or tile is stored that way; a writer that stopped early leaves them out too. HDF5
        has no such convention, and :func:`radint.io.hdf5.unwritten_frames` refuses there."""
        frames = unwritten_frames(self._arr)
        if not frames:
            return
        if len(frames) == self.n_frames:  # an array made with zeros() (a MIDAS zip's dark)
            log.info("%s: no chunk stored: every frame reads as the fill value %s", self.label,
                     self._arr.fill_value)  # fmt: skip
            return
        from radint.io.hdf5 import _ranges

        warn_once(
            ("zarr-unstored-chunks", self.label),
            "%s: frame%s %s of %d touch chunks that are not in the store: read as the fill "
            "value %s (zarr leaves out chunks holding only the fill value unless written with "
            "write_empty_chunks=True; a writer that stopped early leaves them out too)",
            self.label, "s" if len(frames) > 1 else "", _ranges(frames), self.n_frames,
            self._arr.fill_value,
        )  # fmt: skip

    def read(self, index: int) -> np.ndarray:
        """Read frame ``index`` (decompressing only its chunks)."""
        try:
            if self._arr.ndim == 2:
                return np.asarray(self._arr[...])
            return np.asarray(self._arr[(0,) * (self._arr.ndim - 3) + (index,)])
        except Exception as exc:  # codec errors surface as assorted types
            raise ReaderError(f"{self.label}: cannot read frame {index}: {exc}") from exc

    def close(self) -> None:
        """Close the zip store (no-op for directories)."""
        if self._store is not None:
            self._store.close()


def _stored_keys(arr: zarr.Array) -> set[str]:
    """Keys under ``arr``'s node in its store, relative to it (one listing of the store: a
    directory walk, or the zip's index)."""
    from zarr.core.sync import sync

    store, path = arr.store_path.store, arr.store_path.path
    prefix = f"{path}/" if path else ""

    async def listing() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    return {key[len(prefix) :] for key in sync(listing())}


def unwritten_frames(arr: zarr.Array) -> list[int]:
    """Frames of a 2-D frame or 3-D stack (leading axes of length 1 allowed) that touch a chunk
    (a shard, where the array is sharded) not in the store: zarr reads those as the fill value,
    e.g. the frames a killed writer never stored. One listing of the store's keys; the chunk
    grid is then looked up in it."""
    if arr.size == 0:
        return []
    block = getattr(arr, "shards", None) or arr.chunks
    grid = [-(-n // c) for n, c in zip(arr.shape, block)]
    if int(zarr.__version__.split(".")[0]) < 3:  # Python 3.10: the store is a mapping
        legacy: Any = arr  # zarr 2's Array (the type hints are zarr 3's)
        stored, encode = set(legacy.store.keys()), legacy._chunk_key
    else:
        stored, encode = _stored_keys(arr), arr.metadata.encode_chunk_key
    missing = [c for c in itertools.product(*map(range, grid)) if encode(c) not in stored]
    if not missing:
        return []
    if arr.ndim < 3:
        return [0]
    axis = arr.ndim - 3
    step = block[axis]
    gone = {c[axis] for c in missing}
    return [f for f in range(arr.shape[axis]) if f // step in gone]


class MidasZipSource(ZarrSource):
    """The MIDAS ``*.analysis.MIDAS.zip`` of spec §8.2.

    Frames come from ``exchange/data`` (or the dark stack from ``exchange/dark``); frames before
    ``analysis_parameters/SkipFrame`` are left out by default, as IntegratorZarrOMP does, and
    results number the rest from 0 as it does. ω is MIDAS's: ``OmegaStart`` is the ω of the
    first frame after ``SkipFrame`` (the zip stores ``start = OmegaStart − SkipFrame·step`` in
    ``scan_parameters``, and IntegratorZarrOMP adds SkipFrame·step back), so frame ``index`` of
    the file has ``omega_deg = OmegaStart + (index − SkipFrame)·OmegaStep``, summed in C's
    order. ``parameters`` (``SkipFrame``, ``OmegaStart``, ``OmegaStep``: a parameter file's,
    :meth:`IntegrationConfig.zip_parameters`) replace the zip's values, with a warning where
    they differ; the zip's fill in the others. Its other ``analysis_parameters`` are not used
    (the parameter file's are): one warning names those that differ.
    """

    def __init__(
        self,
        path: Path,
        dataset: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(path, dataset)
        skip = int(self._scalar(f"{_MIDAS_PARAMS}/SkipFrame", 0))
        start = self._scalar(f"{_MIDAS_SCAN}/start", None)
        step = self._scalar(f"{_MIDAS_SCAN}/step", None)
        own = {
            "SkipFrame": skip,
            "OmegaStep": step,
            "OmegaStart": None if start is None else start + skip * (step or 0.0),
        }
        values = dict(own)
        parameters = dict(parameters or {})
        self._warn_unused_parameters(path, {k: parameters.pop(k) for k in list(parameters)
                                            if k not in own})  # fmt: skip
        for key, value in parameters.items():
            was = own[key]
            differs = was is not None and not math.isclose(value, was, rel_tol=1e-12, abs_tol=1e-9)
            if differs:  # once per zip, not for its dark and its data
                warn_once((str(path), key), "%s: %s %g from the parameter file replaces the zip's %g",
                          path, key, value, was)  # fmt: skip
            values[key] = value
        self.skip_frame = int(values["SkipFrame"])
        #: ω of the first frame after SkipFrame, and the step (None where not known).
        self.omega_first_deg = None if values["OmegaStart"] is None else float(values["OmegaStart"])
        self.omega_step_deg = None if values["OmegaStep"] is None else float(values["OmegaStep"])
        # Per-frame monitors IntegratorZarrOMP averages into each OmegaSumFrame's attributes.
        self.monitors = {}
        for key in ("Temperature", "Pressure", "I", "I0"):
            arr = self._member(f"{_MIDAS_SCAN}/{key}")
            if isinstance(arr, zarr.Array) and arr.size:
                self.monitors[key] = np.asarray(arr[...], dtype=np.float64).reshape(-1)

    def _warn_unused_parameters(self, path: Path, in_effect: Mapping[str, Any]) -> None:
        """One warning per zip naming the ``analysis_parameters`` it holds that differ from
        the values radint integrates with (the parameter file's, or defaults): MIDAS's
        integrator.py rebuilds the zip from the parameter file, but IntegratorZarrOMP given
        this zip alone would use them (OmegaSumFrames 2 in a zip: frame pairs summed there,
        single frames here, with no word)."""
        differ = []
        defaults = IntegrationConfig().zip_parameters()
        for key, value in in_effect.items():
            arr = self._member(f"{_MIDAS_PARAMS}/{key}")
            if not isinstance(arr, zarr.Array) or arr.size == 0:
                continue
            stored = np.asarray(arr[...]).reshape(-1)
            if stored.dtype.kind not in "biuf":
                continue
            ours = np.asarray(value, dtype=np.float64).reshape(-1)
            # IntegratorZarrOMP reads the chunk files: an array whose value equals its fill
            # value has none where zarr 3 wrote it (write_empty_chunks=False), and C then
            # keeps its default, not the fill value zarr reads.
            unstored = arr.nchunks_initialized == 0
            if unstored:
                stored = np.asarray(defaults.get(key, 0), dtype=np.float64).reshape(-1)
            theirs = stored.astype(np.float64) if key == "ImTransOpt" else stored[:1]
            if key == "ImTransOpt":  # 0 is no transform
                theirs, ours = theirs[theirs != 0], ours[ours != 0]
            same = theirs.shape == ours.shape and np.allclose(theirs, ours, rtol=1e-9, atol=1e-9)
            if not same:
                shown = " ".join(f"{v:g}" for v in theirs) or "(none)"
                if unstored:
                    shown = (
                        f"not stored (its value equals the fill value {arr.fill_value}, a "
                        f"chunk zarr 3 leaves out: C reads its default {shown})"
                    )
                differ.append(f"{key} {shown} (used: {' '.join(f'{v:g}' for v in ours) or 'none'})")
        if differ:
            # Once per difference, not per zip: a scan's zips share their parameters.
            warn_once(("zip analysis_parameters", *differ),
                      "%s: the zip's analysis_parameters differ from the parameter file (or its "
                      "defaults), which radint uses, as MIDAS's integrator.py does by rebuilding "
                      "the zip from it; IntegratorZarrOMP given the zip alone would use the "
                      "zip's: %s (not repeated for other zips alike)", path,
                      "; ".join(differ))  # fmt: skip

    def _member(self, name: str) -> Any:
        """The array or group at ``name``; None where there is none (or the store is one
        array, not a MIDAS zip's tree)."""
        return self.root.get(name) if isinstance(self.root, zarr.Group) else None

    def _scalar(self, name: str, default: Any) -> Any:
        arr = self._member(name)
        if not isinstance(arr, zarr.Array) or arr.size == 0:
            return default
        return np.asarray(arr[...]).reshape(-1)[0].item()

    def default_indices(self) -> range:
        """Frames from ``SkipFrame`` on."""
        return range(min(self.skip_frame, self.n_frames), self.n_frames)

    def frame_id(self, index: int) -> int:
        """Counted from the first frame after ``SkipFrame``, as IntegratorZarrOMP names its
        ``FrameNr_<i>`` / ``LastFrameNumber_<i>`` datasets."""
        return index - self.skip_frame

    def frame_metadata(self, index: int) -> dict[str, Any]:
        """``omega_deg`` of the frame when the scan parameters give start and step, and its
        ``Temperature``, ``Pressure``, ``I``, ``I0`` where the zip stores them."""
        out: dict[str, Any] = {
            key: float(values[index])
            for key, values in self.monitors.items()
            if index < len(values)
        }
        if self.omega_first_deg is not None and self.omega_step_deg is not None:
            out["omega_deg"] = (
                self.omega_first_deg + (index - self.skip_frame) * self.omega_step_deg
            )
        return out


def is_midas_zip(path: Path) -> bool:
    """True when ``path`` is a zip holding the MIDAS ``exchange/data`` zarr v2 array."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return "exchange/data/.zarray" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
