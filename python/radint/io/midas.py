"""MIDAS-compatible outputs: ``<name>.caked.hdf`` (spec §9.1) and the GSAS-II ``.zarr.zip``.

Both hold the same tree; MIDAS stores cakes R-major, so every (n_eta, n_r) cake of the Result
is transposed to (n_r, n_eta) here:

``REtaMap``                              (5, n_r, n_eta): R_c px, 2θ_c deg, η_c deg, bin area px², Q Å⁻¹ (0 if λ ≤ 0)
``IntegrationResult/FrameNr_<id>``       (n_r, n_eta) per frame (config ``save_individual_frames``)
``OmegaSumFrame/LastFrameNumber_<id>``   (n_r, n_eta): sum over chunks of ``omega_sum_frames`` frames (none if < 0)
``Omegas``                               (n_frames,) ω per frame, deg (when the config gives ω)
``SumFrames``                            (n_r, n_eta) NaN-skipping sum over frames, masked-touched bins before their NaN (config ``sum_images``)
``InstrumentParameters/<key>``           (1,) float64: Polariz Lam SH_L U V W X Y Z Distance

GSAS-II (``GSASII/imports/G2pwd_MIDAS.py``) opens the zip with ``zarr.open``, requires
``InstrumentParameters``, ``REtaMap`` and ``OmegaSumFrame``, reads ``REtaMap[1]`` (2θ) and
``REtaMap[3]`` (area, 0 = unused bin), divides each OmegaSumFrame array by its
``Number Of Frames Summed`` attribute and takes ω from ``FirstOme``/``LastOme``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radint._once import warn_once
from radint.exceptions import InvalidInputError
from radint.io._common import cfg, edges_from_centres, frame_ids, omegas_deg, stacked
from radint.io.atomic import atomic_output, commit_path, remove_path, temporary_sibling
from radint.result import Result, frame_groups

log = logging.getLogger(__name__)

__all__ = [
    "STREAM_BINARIES",
    "STREAM_CAKED_PEAKS",
    "MidasEntry",
    "caked_file_bound",
    "midas_entries",
    "midas_tree",
    "read_midas_caked",
    "reta_map",
    "write_gsas_zarr_zip",
    "write_midas_caked",
    "write_stream_outputs",
]

_PER_CHUNK_ATTRS = ("Temperature", "Pressure", "I", "I0")

#: The wavelength (Å) IntegratorZarrOMP assumes without a ``Wavelength`` line: its caked.hdf
#: then holds Q for this λ in REtaMap and as InstrumentParameters/Lam (the map, DetectorMapper's
#: and radint's, has none: λ = 0 there).
IZ_DEFAULT_WAVELENGTH = 0.172978


def _radial_columns(
    result: Result, default_wavelength: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """REtaMap's R, 2θ and Q per radial bin as IntegratorZarrOMP computes them: R the mean of
    the bin's edge radii, 2θ = atan(R·px/Lsd), Q = 4π/λ·sin(θ) (λ = ``default_wavelength``
    without a wavelength, Q = 0 if that is 0 too). In Q mode that R is not the R of the Q-bin
    centre (up to ~1e-5 relative apart)."""
    if result.config is None:  # no geometry to recompute from: the Result's own axes
        return (
            np.asarray(result.radius_px, dtype=np.float64),
            np.asarray(result.two_theta_deg, dtype=np.float64),
            np.nan_to_num(np.asarray(result.q_inv_angstrom, dtype=np.float64), nan=0.0),
        )
    edges = np.asarray(result.r_edges_px, dtype=np.float64)
    radius = (edges[:-1] + edges[1:]) / 2
    two_theta = np.arctan(radius * cfg(result, "pixel_size_y_um") / cfg(result, "lsd_um"))
    wavelength = cfg(result, "wavelength_angstrom") or default_wavelength
    q = 4 * np.pi / wavelength * np.sin(two_theta / 2) if wavelength > 0 else 0 * radius
    return radius, np.degrees(two_theta), q


def reta_map(result: Result, default_wavelength: float = 0.0) -> np.ndarray:
    """MIDAS's per-bin geometry ``(5, n_r, n_eta)``: R px, 2θ deg, η deg, bin area, Q Å⁻¹ (the
    caked.hdf ``REtaMap``; the GPU program's ``RTthEtaAreaMap.bin`` holds the same values).
    ``default_wavelength``: the λ for Q when the configuration has none (IntegratorZarrOMP's
    :data:`IZ_DEFAULT_WAVELENGTH`; the GPU program writes Q = 0)."""
    area = np.asarray(result.area, dtype=np.float64)
    area = area[0] if area.ndim == 3 else area
    n_eta, n_r = area.shape
    radius, two_theta, q = _radial_columns(result, default_wavelength)
    out = np.empty((5, n_r, n_eta))
    out[0] = radius[:, np.newaxis]
    out[1] = two_theta[:, np.newaxis]
    out[2] = np.asarray(result.eta_deg, dtype=np.float64)[np.newaxis, :]
    out[3] = area.T
    out[4] = q[:, np.newaxis]
    return out


@dataclass(frozen=True)
class MidasEntry:
    """One dataset of the MIDAS caked tree, its array not yet made: ``path``, ``shape``
    (R-major), ``attrs`` and ``make()``, which computes the float64 array (a frame's or a
    chunk's worth of memory at a time)."""

    path: str
    shape: tuple[int, ...]
    attrs: dict[str, Any]
    make: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return 8 * int(np.prod(self.shape, dtype=np.int64))


def midas_entries(result: Result) -> list[MidasEntry]:
    """The datasets of the MIDAS caked tree in IntegratorZarrOMP's order, each computed only
    when its :attr:`MidasEntry.make` is called, from the Result's own arrays one frame at a
    time: no copy of the stack is made (a writer knows every dataset's size before it writes
    anything, and holds at most one frame's or one OmegaSumFrame chunk's arrays at once).

    See :func:`midas_tree` for the tree."""
    cake = stacked(np.asarray(result.cake), 2)  # (n_frames, n_eta, n_r), not copied
    n_frames, n_eta, n_r = cake.shape
    area = np.asarray(result.area)
    masked = result.metadata.get("masked_bins")
    masked_bins = None if masked is None else np.asarray(masked, dtype=np.int64)

    def cake_of(k: int) -> np.ndarray:
        """Frame k's cake (n_eta, n_r) with the values IntegratorZarrOMP writes (a fresh
        array where bins change, else the Result's own)."""
        frame = np.asarray(cake[k], dtype=np.float64)
        # IntegratorZarrOMP writes 0 where no pixel reached a bin and NaN wherever a masked
        # pixel did, even a bin that only masked pixels reached (the compat rule): MIDAS's
        # viewers take max() and SNIP over these arrays.
        if area.size:
            frame_area = np.asarray(area[k] if area.ndim == 3 else area, dtype=np.float64)
            empty = np.isnan(frame) & ~(frame_area > 0)
            if masked_bins is not None:
                empty.reshape(-1)[masked_bins] = False
            frame = np.where(empty, 0.0, frame)
        return frame

    ids = frame_ids(result)
    if np.unique(ids).size != ids.size:
        # A stream's runs from several senders restart their ids; MIDAS names datasets by id.
        warn_once(
            "repeated frame ids",
            "frame ids repeat (runs of several senders): the MIDAS caked file and .zarr.zip "
            "name frames by their row, 0..%d, instead",
            ids.size - 1,
        )
        ids = np.arange(ids.size, dtype=np.int64)
    known_omegas = omegas_deg(result)
    # Without ω IntegratorZarrOMP writes 0 for every frame and no /Omegas.
    omegas = np.zeros(n_frames) if known_omegas is None else known_omegas
    cake_shape = (n_r, n_eta)
    entries = [
        MidasEntry(
            "REtaMap",
            (5, n_r, n_eta),
            {
                "nEtaBins": n_eta,
                "nRBins": n_r,
                "Header": "Radius,2Theta,Eta,BinArea,Q",
                "Units": "Pixels,Degrees,Degrees,Pixels,InvAngstrom",
            },
            lambda: reta_map(result, IZ_DEFAULT_WAVELENGTH),
        )
    ]
    if cfg(result, "save_individual_frames"):
        for k in range(n_frames):
            entries.append(
                MidasEntry(
                    f"IntegrationResult/FrameNr_{ids[k]}",
                    cake_shape,
                    {"omega": float(omegas[k]), "Header": "Radius,Eta", "Units": "Pixels,Degrees"},
                    functools.partial(_transposed, cake_of, k),
                )
            )
    omega_sum_frames = int(cfg(result, "omega_sum_frames"))
    if omega_sum_frames < 0:
        # IntegratorZarrOMP writes OmegaSumFrame only for OmegaSumFrames >= 0 (0 counts as 1).
        warn_once(  # once per process, not per file and format
            "OmegaSumFrames < 0",
            "OmegaSumFrames %d: no OmegaSumFrame group in the MIDAS caked file (as "
            "IntegratorZarrOMP); GSAS-II needs it to import the .zarr.zip",
            omega_sum_frames,
        )

    def chunk_sum(chunk: range) -> np.ndarray:
        # Frame after frame onto 0.0: what numpy's sum(axis=0) of the stacked chunk gives (it
        # starts from the identity and adds along the outer axis in order), bit for bit,
        # except for a cake of one bin, whose frames numpy summed pairwise: summed in order
        # here, as IntegratorZarrOMP's loop does.
        total = np.zeros((n_eta, n_r))
        for k in chunk:
            total += cake_of(k)
        return total.T

    for chunk in frame_groups(n_frames, omega_sum_frames) if omega_sum_frames >= 0 else ():
        first, last = chunk[0], chunk[-1]
        attrs: dict[str, Any] = {
            "LastFrameNumber": int(ids[last]),
            "Number Of Frames Summed": len(chunk),
            "FirstOme": float(omegas[first]),
            "LastOme": float(omegas[last]),
        }
        for key in _PER_CHUNK_ATTRS:
            values = result.metadata.get(key)
            if values is None:
                attrs[key] = 0.0
                continue
            v = np.asarray(values, dtype=np.float64).reshape(-1)
            attrs[key] = float(v[last] / len(chunk) if key == "I0" else v[first : last + 1].mean())
        entries.append(
            MidasEntry(
                f"OmegaSumFrame/LastFrameNumber_{ids[last]}",
                cake_shape,
                attrs,
                functools.partial(chunk_sum, chunk),
            )
        )
    if known_omegas is not None:
        entries.append(MidasEntry("Omegas", (n_frames,), {"Units": "Degrees"}, lambda: omegas))
    if cfg(result, "sum_images"):
        entries.append(
            MidasEntry(
                "SumFrames",
                cake_shape,
                {"Header": "Radius,Eta", "Units": "Pixels,Degrees", "nFrames": n_frames},
                lambda: _sum_frames(result, cake).T,
            )
        )
    instrument = {
        "Polariz": cfg(result, "gsas_polariz"),
        "Lam": cfg(result, "wavelength_angstrom") or IZ_DEFAULT_WAVELENGTH,
        "SH_L": cfg(result, "gsas_sh_l"),
        "U": cfg(result, "gsas_u"),
        "V": cfg(result, "gsas_v"),
        "W": cfg(result, "gsas_w"),
        "X": cfg(result, "gsas_x"),
        "Y": cfg(result, "gsas_y"),
        "Z": cfg(result, "gsas_z"),
        "Distance": cfg(result, "lsd_um"),
    }
    for key, value in instrument.items():
        array = np.array([value], dtype=np.float64)
        entries.append(MidasEntry(f"InstrumentParameters/{key}", (1,), {}, array.copy))
    return entries


def _transposed(make: Callable[[int], np.ndarray], k: int) -> np.ndarray:
    return make(k).T


def _sum_frames(result: Result, cake: np.ndarray) -> np.ndarray:
    """``SumFrames`` (n_eta, n_r): the NaN-skipping sum over the frames of their cakes with
    the masked-touched bins holding their intensity from before their NaN (C adds each frame's
    intensity before that NaN, spec §5.5; :meth:`Result.cakes_before_mask_nan`), one frame at
    a time, in the order and with the values ``np.nansum(..., axis=0)`` of the stack gives."""
    bins = result.metadata.get("masked_bins")
    given = result.metadata.get("masked_bin_values")
    restore = bins is not None and given is not None
    values = np.asarray(given).reshape(cake.shape[0], -1) if restore else None
    total = np.zeros(cake.shape[1:])  # numpy's sums start from 0.0 too (-0.0 + 0.0 = 0.0)
    for k in range(cake.shape[0]):
        frame = np.array(cake[k], dtype=np.float64)
        if values is not None:
            frame.reshape(-1)[np.asarray(bins)] = values[k]
        frame[np.isnan(frame)] = 0.0
        total += frame
    return total


def midas_tree(result: Result) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """The MIDAS caked tree as ``(path, array, attrs)`` entries (R-major arrays), made one at a
    time as the iteration reaches them (:func:`midas_entries`): a writer that writes each before
    taking the next holds one frame's (or one OmegaSumFrame chunk's) arrays at a time.

    ``REtaMap``; ``IntegrationResult/FrameNr_<id>`` per frame (``save_individual_frames``);
    ``OmegaSumFrame/LastFrameNumber_<id>`` per chunk (``omega_sum_frames`` >= 0); ``Omegas``
    (ω known); ``SumFrames`` (``sum_images``); ``InstrumentParameters/<key>``.

    Parameters
    ----------
    result : Result
        One frame or a stack. ``metadata`` may carry per-frame ``omega_deg``, ``Temperature``,
        ``Pressure``, ``I``, ``I0`` arrays (n_frames,), averaged per OmegaSumFrame chunk
        (``I0``: last value / frames in chunk, as IntegratorZarrOMP does).

    Yields
    ------
    (str, ndarray, dict)
    """
    for entry in midas_entries(result):
        yield entry.path, entry.make(), entry.attrs


#: What caked.hdf's HDF5 metadata takes at most, per dataset (object header, its link in the
#: group's symbol table and name heap: 0.5-0.75 KiB measured with the datasets' attributes,
#: over trees of 1 to 40 000 datasets), per attribute on top of its name and value, and for the
#: file (superblock, groups).
_CAKED_META_PER_DATASET = 768
_CAKED_META_PER_ATTRIBUTE = 64
_CAKED_META_FIXED = 64 << 10


def caked_file_bound(entries: list[MidasEntry]) -> int:
    """An upper bound of the size of the caked.hdf of ``entries`` (bytes): their float64 data,
    stored contiguous, and the metadata HDF5 writes for them."""
    total = _CAKED_META_FIXED
    for e in entries:
        total += e.nbytes + _CAKED_META_PER_DATASET + 2 * len(e.path.encode())
        for key, value in e.attrs.items():
            size = len(str(value).encode()) + 1 if isinstance(value, str) else 8
            total += _CAKED_META_PER_ATTRIBUTE + len(key.encode()) + size
    return total


def write_midas_caked(result: Result, path: str | Path) -> Path:
    """Write ``<name>.caked.hdf`` in the IntegratorZarrOMP layout (spec §9.1), atomically.

    The datasets are made and written one at a time (memory: one frame's or one OmegaSumFrame
    chunk's arrays, not the stack's). HDF5 meeting a full disk mid-file leaves objects it cannot
    release (errors at garbage collection, a crash at exit), so the file's room is taken before
    HDF5 writes anything: its size is known ahead (:func:`caked_file_bound`) and reserved with
    ``posix_fallocate`` (where that is not available, checked against the free space; glibc
    emulates it on file systems without fallocate by writing each block); a write that fails
    all the same (another program filling a disk without fallocate) is not passed on to HDF5,
    no further dataset is made, HDF5 closes the file normally, and the write then fails with
    that error. The bytes are those HDF5 gives the same tree laid out in memory.

    Parameters
    ----------
    result : Result
    path : str or Path
        Output HDF5 file.

    Returns
    -------
    Path

    Raises
    ------
    OSError
        ENOSPC / EFBIG naming ``path`` when the disk (or ``ulimit -f``) cannot hold the file;
        nothing is left under ``path`` or a temporary name.
    """
    import h5py

    entries = midas_entries(result)
    with atomic_output(path) as tmp:
        with _ReservedFile(tmp, caked_file_bound(entries), Path(path)) as fh:
            # h5py's file-object driver, as for the in-memory image this writer made before:
            # the same bytes.
            with h5py.File(fh, "w") as f:
                for entry in entries:
                    if fh.failed:  # the file fails anyway: no more datasets made or kept
                        break
                    dataset = f.create_dataset(entry.path, data=entry.make())
                    for key, value in entry.attrs.items():
                        _set_c_attribute(dataset, key, value)
            fh.finish()
    return Path(path)


class _ReservedFile(io.RawIOBase):
    """A new file of at most ``reserve`` bytes that HDF5 (h5py's file-object driver) writes
    through, its room taken on the disk before the first byte: ``posix_fallocate`` (the blocks
    are the file's; a full disk or ``ulimit -f`` fails here, cleanly), else the free space is
    checked. The size HDF5 sees is what it wrote (the reserved tail is cut off by
    :meth:`finish`). A write that fails all the same is not passed on to HDF5 (which would leave
    objects it cannot release): it and later writes are kept back (small ones in memory, where
    HDF5 may read them again) and :meth:`finish` raises its error, naming ``final``."""

    #: Writes kept in memory after a failed one (metadata, which HDF5 may read back); raw
    #: data above this is dropped (the file is discarded anyway).
    _KEEP_AFTER_FAILURE = 1 << 20

    def __init__(self, path: Path, reserve: int, final: Path) -> None:
        super().__init__()
        self._final = final
        # Unbuffered: a failing write fails in write(), not in a later seek or flush.
        self._file = open(path, "w+b", buffering=0)  # closed in close()
        self._fd = self._file.fileno()
        self._pos = 0
        self._size = 0
        self._error: OSError | None = None
        self._kept: dict[int, bytes] = {}
        try:
            self._reserve(int(reserve))
        except BaseException:
            self._file.close()
            raise

    def _fail(self, error: OSError, detail: str) -> OSError:
        strerror = error.strerror or os.strerror(error.errno or 0)
        return OSError(error.errno, f"{strerror}: {detail}", str(self._final))

    def _reserve(self, nbytes: int) -> None:
        from radint.io.nexus import _file_size_limit

        limit = _file_size_limit()
        if limit is not None and nbytes > limit:
            raise OSError(
                errno.EFBIG,
                f"File too large: the file size limit (ulimit -f) is {limit} bytes, the file "
                f"needs up to {nbytes}",
                str(self._final),
            )
        fallocate = getattr(os, "posix_fallocate", None)
        if fallocate is not None and nbytes > 0:
            try:
                fallocate(self._fd, 0, nbytes)
                return
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                    raise self._fail(e, f"{nbytes} bytes could not be reserved") from None
        free = shutil.disk_usage(self._final.parent).free
        if free < nbytes:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device: {free} bytes free where writing needs {nbytes}",
                str(self._final),
            )

    # The file-object protocol h5py's driver uses: seek, tell, write, readinto, truncate, flush.
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if self._error is None:
            try:
                done = 0
                while done < n:
                    self._file.seek(self._pos + done)
                    done += self._file.write(view[done:]) or 0
            except OSError as e:
                self._error = e
        if self._error is not None and n <= self._KEEP_AFTER_FAILURE:
            self._kept[self._pos] = bytes(view)
        self._pos += n
        self._size = max(self._size, self._pos)
        return n

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(view.nbytes, self._size - self._pos))
        got = 0
        try:
            while got < n:
                self._file.seek(self._pos + got)
                read = self._file.readinto(view[got:n]) or 0
                if not read:
                    break
                got += read
        except OSError as e:  # not passed on to HDF5 either
            self._error = self._error or e
        view[got:n] = bytes(n - got)
        for start, data in self._kept.items():  # writes kept back, over what the disk holds
            lo, hi = max(start, self._pos), min(start + len(data), self._pos + n)
            if lo < hi:
                view[lo - self._pos : hi - self._pos] = data[lo - start : hi - start]
        self._pos += n
        return n

    def truncate(self, size: int | None = None) -> int:
        self._size = self._pos if size is None else int(size)
        return self._size

    def flush(self) -> None:
        pass

    @property
    def failed(self) -> bool:
        """Whether a write failed (the file will fail at :meth:`finish`)."""
        return self._error is not None

    def finish(self) -> None:
        """After HDF5 closed the file: its error if a write failed (naming the final file),
        else the reserved tail cut off."""
        if self._error is not None:
            raise self._fail(self._error, "the file could not be written") from self._error
        self._file.truncate(self._size)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _set_c_attribute(dataset: Any, key: str, value: Any) -> None:
    """Store an attribute as IntegratorZarrOMP's H5LTset_attribute_{int,double,string} does: a
    1-element int32 or float64 array, or a scalar NUL-terminated string of strlen + 1 bytes
    (a C reader sizes its buffer from the type and relies on the NUL; h5py reads the same text)."""
    import h5py

    if isinstance(value, str):
        text = value.encode() + b"\0"
        string_type = h5py.h5t.C_S1.copy()
        string_type.set_size(len(text))
        string_type.set_strpad(h5py.h5t.STR_NULLTERM)
        scalar = h5py.h5s.create(h5py.h5s.SCALAR)
        attribute = h5py.h5a.create(dataset.id, key.encode(), string_type, scalar)
        attribute.write(np.array(text, dtype=f"S{len(text)}"))
    elif isinstance(value, bool | np.bool_ | int | np.integer):
        # C's int where the value fits; a frame number of a stream past 2^31 frames does not,
        # and is kept whole as int64 (HDF5 converts it for a reader asking for int, or says it
        # cannot) rather than failing the file at the end of the stream.
        fits = np.iinfo(np.int32).min <= int(value) <= np.iinfo(np.int32).max
        dataset.attrs[key] = np.array([value], dtype=np.int32 if fits else np.int64)
    else:
        dataset.attrs[key] = np.array([value], dtype=np.float64)


class _ZarrV2Zip:
    """A zarr v2 store written straight into an open ZIP file, one chunk per array, every key
    once: the ``.zgroup``/``.zattrs``/``.zarray`` JSON and chunk bytes zarr itself writes
    (Blosc zstd level 3 with bit-shuffle, as MIDAS's ``Hdf5ToZarr``). zarr's own API spent
    ~5 ms per array in its event loop (~130 ms of a one-frame file's 150 ms)."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        from numcodecs import Blosc

        self._zf = zf
        self._codec = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)
        self._groups: set[str] = set()
        self._group("")

    def _json(self, key: str, value: dict[str, Any]) -> None:
        self._zf.writestr(key, json.dumps(value, indent=2))

    def _group(self, path: str) -> None:
        if path in self._groups:
            return
        if path:
            self._group(path.rpartition("/")[0])
        self._groups.add(path)
        prefix = f"{path}/" if path else ""
        self._json(f"{prefix}.zgroup", {"zarr_format": 2})
        self._json(f"{prefix}.zattrs", {})

    def array(self, name: str, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """``name`` (``a/b/c``) = ``data`` (float64, one chunk) with ``attrs``."""
        data = np.ascontiguousarray(data, dtype="<f8")
        self._group(name.rpartition("/")[0])
        meta = {
            "shape": list(data.shape),
            "chunks": list(data.shape),
            "dtype": "<f8",
            "fill_value": 0.0,
            "order": "C",
            "filters": None,
            "dimension_separator": ".",
            "compressor": self._codec.get_config(),
            "zarr_format": 2,
        }
        self._json(f"{name}/.zarray", meta)
        plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in (attrs or {}).items()}
        self._json(f"{name}/.zattrs", plain)
        chunk_key = ".".join("0" * data.ndim) if data.ndim else "0"
        self._zf.writestr(f"{name}/{chunk_key}", bytes(self._codec.encode(data)))


def write_gsas_zarr_zip(result: Result, path: str | Path) -> Path:
    """Write the ``.zarr.zip`` GSAS-II's MIDAS importer reads (zarr v2 in a ZIP), atomically.

    Arrays are Blosc zstd level 3 with bit-shuffle, as MIDAS's ``Hdf5ToZarr`` writes them, one
    chunk each; every key appears exactly once.

    Parameters
    ----------
    result : Result
    path : str or Path
        Output file, conventionally ``<name>.zarr.zip``.

    Returns
    -------
    Path
    """
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        store = _ZarrV2Zip(zf)
        for name, data, attrs in midas_tree(result):
            store.array(name, data, attrs)
    return Path(path)


#: The GPU program's per-frame binary files in a stream directory (spec §7.3).
STREAM_BINARIES = ("lineout.bin", "lineout_simple_mean.bin", "Int2D.bin", "RTthEtaAreaMap.bin")
_GEOMETRY_MAPS = (
    ("R_map", "R-center for each bin", "pixels"),
    ("TTh_map", "TwoTheta-center for each bin", "degrees"),
    ("Eta_map", "Eta-center for each bin", "degrees"),
    ("Area_map", "Effective pixel area for each bin", "fractional pixels"),
    ("Q_map", "Q-center for each bin", "inv_Angstrom"),
)


#: stream.h5 ``entry/peaks`` columns holding fit.bin's 7 values, in fit.bin's order.
_FIT_COLUMNS = ("area", "center_px", "sig", "gam", "fwhm_px", "eta_mix", "chi2")
#: The GPU program's per-frame peak table in a stream directory (spec §6.5, §9.4).
STREAM_CAKED_PEAKS = "caked_peaks.h5"
#: ``/metadata@zarr_source`` of the GPU program's caked_peaks.h5 (``.cu``: ``"GPU"``).
STREAM_CAKED_PEAKS_SOURCE = "GPU"


#: Wavelength (Å) MIDAS's stream post-processor writes for GSAS-II without a Wavelength line.
STREAM_DEFAULT_LAMBDA = 0.413263


def _stream_omega(config: Any) -> Callable[[int], float]:
    """ω (deg) of stream frame ``k`` as integrator_stream_process_h5.py gives it: the ``Omega``
    key's value for every frame, ``OmegaStart + k·OmegaStep`` when both are set, else ``k``."""
    set_at = getattr(config, "set_at", None) or {}
    if "Omega" in set_at:
        fixed = float(config.omega_deg)
        return lambda k: fixed
    if "OmegaStart" in set_at and "OmegaStep" in set_at:
        start, step = float(config.omega_start_deg), float(config.omega_step_deg)
        return lambda k: start + k * step
    return float


def write_stream_outputs(
    directory: str | Path,
    config: Any,
    name: str = "integrator_output",
    stream_file: str | Path | None = None,
    mapping: dict[int, dict[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[Path]:
    """MIDAS's post-processing of a stream (``integrator_stream_process_h5.py``, spec §7.4):
    ``<name>.h5`` and the GSAS-II ``<name>.zarr.zip`` from the binary files of ``directory``
    (:data:`STREAM_BINARIES`), read one OmegaSumFrames group of frames at a time, so memory
    does not grow with the length of the run.

    ``<name>.h5``: root attrs ``creation_date``, ``num_frames``; ``geometry_maps/{R,TTh,Eta,
    Area,Q}_map`` (n_r × n_eta); ``lineouts/<i>`` and ``lineouts_simple_mean/<i>`` (n_r × 2:
    R, I; attr ``frame_index``); ``OmegaSumFrame/Summed_from_<first>_to_<last>`` (Σ of the
    group's R-major cakes; attrs ``Number Of Frames Summed``, ``original_frame_indices``);
    with fitted peaks in ``stream_file`` (a stream's NeXus file) also ``fit/<i>`` (the frame's
    fitted peaks × the 7 fit.bin values; attr ``frame_index``). Without ``mapping`` frames are
    named by their index in arrival order, except the rows of one TCP sender (``stream_file``'s
    frame ids, each once), sorted and named by frame id: its sending index, which is the
    arrival index over one connection but not over several (``radint send --connections N``);
    with the sender's frame mapping (``frame_mapping.json``:
    arrival index → ``filename``/``uniqueId``/``dataset_num``) they are sorted by file name and
    named by it (extension dropped), and each sum carries ``last_frame_identifier``, as MIDAS
    does. The zip: ``REtaMap``, ``OmegaSumFrame/LastFrameNumber_<last>`` (attrs as MIDAS's:
    ω from OmegaStart/OmegaStep, else the frame index) and ``InstrumentParameters``.

    Without ``Int2D.bin`` (a stream run with ``Write2D 0``, MIDAS's default) there are no cakes
    to sum: as MIDAS, ``<name>.h5`` has no ``OmegaSumFrame`` group and no zip is written.

    With fitted peaks (``stream_file``'s ``entry/peaks``, else ``fit.bin``) also
    ``caked_peaks.h5`` (:data:`STREAM_CAKED_PEAKS`), the per-frame table of the lineout fits
    that MIDAS's GPU program writes at shutdown, in PeakFitIO.c's layout
    (:func:`radint.io.peaks.write_caked_peaks`): one ``/peaks`` row per converged peak
    (``peak_nr`` its slot, the row of its frame's ``fit.bin`` record), in the frame order of
    ``<name>.h5``, with ``frame_idx`` the frame's arrival index (its ``stream.h5`` row and
    ``frame_index`` above; the GPU program writes the sender's ``dataset_num``, the same for
    one sender counting from 0) and ``frame_key`` its name here; ``eta_idx = 0`` and
    ``eta_deg = 0`` (lineout rows); ``center_2theta = atan(R·px/Lsd)``, ``d_spacing_A =
    λ/(2 sin θ)`` (0 without a wavelength); ``area``, ``sig``, ``gam``, ``eta_mix`` and
    ``chi_sq`` the fit.bin values; ``FWHM_deg`` the FWHM in degrees 2θ (the GPU program writes
    Γ in pixels there). ``/metadata``: ``zarr_source = "GPU"`` and empty ``tth_axis`` /
    ``eta_axis``, as the GPU program writes them; ``frame_keys`` every frame's name in arrival
    order, so ``frame_keys[frame_idx] == frame_key`` (the GPU program writes ``["0"]``). Names
    are stored whole, as UTF-8 bytes (in PeakFitIO.c's ASCII-typed strings). A stream whose
    fits all failed gets no ``/peaks`` group (PeakFitIO.c's rule). Frames past the stream
    file's last flush (a stream killed outright) take their rows from ``fit.bin`` only with
    given positions (``PeakLocation`` in ``config``: a record of every slot per frame, where
    every finite row counts as converged); with auto-detected peaks fit.bin does not say which
    rows are whose, and those frames' fits are left out (a warning says how many). Without
    fits (a stream that fitted nothing) the file is not written.

    ``progress(done, n_frames)`` is called after each frame group; ``cancelled()``, checked
    there, stops the work (:class:`KeyboardInterrupt`, nothing written): a long stream's files
    take a while (~1.5 ms per frame, a dataset each per lineout kind).

    Returns
    -------
    list of Path
        The files written: ``<name>.h5``, then ``<name>.zarr.zip`` (with ``Int2D.bin``) and
        ``caked_peaks.h5`` (with fits). All or none: each is written under a temporary name
        and they are renamed into place one after another once every one is written, closed
        and synced (a failure between two renames can leave some renamed).

    Raises
    ------
    OSError
        A file could not be written (disk full: the error names the file that failed, by its
        final name; none of the files is left). caked_peaks.h5 is checked against the free
        space and the file size limit with its size bound before HDF5 writes it.
    """
    import h5py

    directory = Path(directory)
    geometry = np.fromfile(directory / "RTthEtaAreaMap.bin", dtype=np.float64)
    n_r_eta = geometry.size // 5
    line_size = directory.joinpath("lineout.bin").stat().st_size
    if n_r_eta == 0 or line_size == 0:
        raise InvalidInputError(f"{directory}: no frames in lineout.bin / RTthEtaAreaMap.bin")
    r_edges, eta_edges = config.bin_edges()
    n_r, n_eta = len(r_edges) - 1, len(eta_edges) - 1
    if n_r * n_eta != n_r_eta:
        raise InvalidInputError(
            f"{directory}: RTthEtaAreaMap.bin holds {n_r_eta} bins per row, the parameters "
            f"give {n_r} x {n_eta}"
        )
    geometry = geometry.reshape(5, n_r, n_eta)
    n_frames = line_size // (16 * n_r)
    osf = int(getattr(config, "omega_sum_frames", 1))
    omega = _stream_omega(config)

    def frames(file: str, shape: tuple[int, ...], rows: range) -> np.ndarray:
        size = int(np.prod(shape)) * 8
        with open(directory / file, "rb") as f:
            f.seek(rows.start * size)
            data = np.fromfile(f, dtype="<f8", count=len(rows) * size // 8)
        return data.reshape(len(rows), *shape)

    h5_path, zip_path = directory / f"{name}.h5", directory / f"{name}.zarr.zip"
    caked_path = directory / STREAM_CAKED_PEAKS
    with_2d = (directory / "Int2D.bin").exists()
    # Every file is made under a temporary name and none is committed before all of them are
    # written and closed: a failure anywhere (a full disk at integrator_output.h5's last flush,
    # a second Ctrl-C) leaves none of them, and its error names the file that failed.
    temps = {final: temporary_sibling(final) for final in (h5_path, zip_path, caked_path)}
    try:
        with _naming(h5_path, temps), contextlib.ExitStack() as files:
            h5 = files.enter_context(h5py.File(temps[h5_path], "w"))
            store = None
            if with_2d:
                zf = zipfile.ZipFile(temps[zip_path], "w", zipfile.ZIP_STORED)
                files.callback(_close_naming, zf, zip_path, temps)  # closed before the h5
                store = _NamedZarrV2Zip(zf, zip_path, temps)
                store.array("REtaMap", geometry)
            row_ids, sources = _stream_rows(stream_file)
            by_row = _mapping_by_row(mapping, row_ids, n_frames)
            ids = None if by_row else _sender_ids_by_row(row_ids, sources)
            caked, labels = _stream_h5(
                h5, store, directory, config, frames, geometry, n_frames, (n_r, n_eta),
                osf, omega, stream_file, by_row, ids, name, progress, cancelled,
            )  # fmt: skip
        written = [h5_path, zip_path] if with_2d else [h5_path]
        if caked is not None:
            if cancelled is not None and cancelled():
                raise KeyboardInterrupt(f"{name}: cancelled before {STREAM_CAKED_PEAKS}")
            caked.write(temps[caked_path], caked_path, [labels[k] for k in range(n_frames)])
            written.append(caked_path)
        _commit_together({final: temps[final] for final in written})
    except BaseException:
        for temp in temps.values():
            with contextlib.suppress(OSError):
                remove_path(temp)
        raise
    return written


def _stream_h5(
    h5: Any, store: _ZarrV2Zip | None, directory: Path, config: Any,
    frames: Callable[[str, tuple[int, ...], range], np.ndarray], geometry: np.ndarray,
    n_frames: int, shape: tuple[int, int], osf: int, omega: Callable[[int], float],
    stream_file: str | Path | None, mapping: dict[int, dict[str, Any]] | None,
    ids: dict[int, int] | None, name: str,
    progress: Callable[[int, int], None] | None, cancelled: Callable[[], bool] | None,
) -> tuple[_CakedRows | None, dict[int, str]]:  # fmt: skip
    """The body of :func:`write_stream_outputs`: ``<name>.h5`` into ``h5``, the zip into
    ``store``; returns caked_peaks.h5's rows (None without fits) and the frames' names
    (``ids``: the frame id naming each row without a mapping, see :func:`_stream_frame_order`)."""
    import datetime

    h5.attrs["creation_date"] = np.bytes_(datetime.datetime.now().isoformat())
    h5.attrs["num_frames"] = n_frames
    maps = h5.create_group("geometry_maps")
    for values, (key, description, units) in zip(geometry, _GEOMETRY_MAPS, strict=True):
        ds = maps.create_dataset(key, data=values, track_times=False)
        ds.attrs.update({"description": np.bytes_(description), "units": np.bytes_(units)})
    peaks = _open_peaks(stream_file)
    try:
        return _stream_h5_rows(
            h5, store, directory, config, frames, n_frames, shape, osf, omega, peaks,
            mapping, ids, name, progress, cancelled,
        )  # fmt: skip
    finally:
        if peaks is not None:
            peaks.file.close()


def _stream_h5_rows(
    h5: Any, store: _ZarrV2Zip | None, directory: Path, config: Any,
    frames: Callable[[str, tuple[int, ...], range], np.ndarray], n_frames: int,
    shape: tuple[int, int], osf: int, omega: Callable[[int], float], peaks: Any,
    mapping: dict[int, dict[str, Any]] | None, ids: dict[int, int] | None, name: str,
    progress: Callable[[int, int], None] | None, cancelled: Callable[[], bool] | None,
) -> tuple[_CakedRows | None, dict[int, str]]:  # fmt: skip
    """:func:`_stream_h5` past the geometry, with the stream file's ``entry/peaks`` open."""
    n_r, n_eta = shape
    line_groups = {f: h5.create_group(g) for f, g in (("lineout.bin", "lineouts"),
                   ("lineout_simple_mean.bin", "lineouts_simple_mean"))}  # fmt: skip
    summed = h5.create_group("OmegaSumFrame") if store is not None else None
    fit_table = _stream_fit_tables(directory, peaks, n_frames, config)
    fits = h5.create_group("fit") if fit_table is not None else None
    order, labels = _stream_frame_order(n_frames, mapping, ids)
    caked = _CakedRows(config) if fit_table is not None else None
    done = 0
    for positions in frame_groups(n_frames, osf):
        if cancelled is not None and cancelled():
            raise KeyboardInterrupt(f"{name}: cancelled after {done} of {n_frames} frames")
        if progress is not None and done:
            progress(done, n_frames)
        done += len(positions)
        rows = [order[p] for p in positions]
        for k in rows:
            frame_fits = fit_table(k) if fit_table is not None else None
            if frame_fits is not None and fits is not None:
                ds = fits.create_dataset(labels[k], data=frame_fits.rows, track_times=False)
                ds.attrs["frame_index"] = k
                if caked is not None:
                    caked.add(k, labels[k], frame_fits)
            for file, group in line_groups.items():
                values = frames(file, (n_r, 2), range(k, k + 1))[0]
                ds = group.create_dataset(labels[k], data=values, track_times=False)
                ds.attrs["frame_index"] = k
        if summed is None or store is None:
            continue
        total = np.zeros((n_r, n_eta))
        for k in rows:  # one frame at a time: memory does not grow with the group
            total += frames("Int2D.bin", (n_r, n_eta), range(k, k + 1))[0]
        first, last = rows[0], rows[-1]
        ds = summed.create_dataset(f"Summed_from_{labels[first]}_to_{labels[last]}", data=total)
        ds.attrs["Number Of Frames Summed"] = len(rows)
        ds.attrs["original_frame_indices"] = np.asarray(rows)
        if mapping:
            ds.attrs["last_frame_identifier"] = np.bytes_(labels[last])
        store.array(
            f"OmegaSumFrame/LastFrameNumber_{last}", total,
            {"Number Of Frames Summed": len(rows), "LastFrameNumber": int(last),
             "FirstOme": omega(first), "LastOme": omega(last)},
        )  # fmt: skip
    set_at = getattr(config, "set_at", None) or {}
    # integrator_stream_process_h5.py's λ without a Wavelength line (IntegratorZarrOMP's
    # is 0.172978): GSAS-II takes it from here, and 0 is no wavelength.
    lam = config.wavelength_angstrom if "Wavelength" in set_at else STREAM_DEFAULT_LAMBDA
    instrument = {"Lam": lam, "Polariz": config.gsas_polariz,
                  "SH_L": config.gsas_sh_l, "U": config.gsas_u, "V": config.gsas_v,
                  "W": config.gsas_w, "X": config.gsas_x, "Y": config.gsas_y,
                  "Z": config.gsas_z, "Distance": config.lsd_um}  # fmt: skip
    if store is not None:
        for key, value in instrument.items():
            store.array(f"InstrumentParameters/{key}", np.array([value], np.float64))
    return caked, labels


def _naming_error(error: OSError, final: Path, temps: dict[Path, Path]) -> OSError:
    """``error`` naming ``final`` (the file being written) where it names a temporary file
    or none: HDF5's errors carry no errno or file name, only a text naming the temporary."""
    from radint.exceptions import RadintIOError

    names = {str(t): str(f) for f, t in temps.items()}
    if error.filename is not None and str(error.filename) not in names:
        return error  # names a file of its own (an input, a final name)
    text = str(error.strerror or error) if error.errno is not None else str(error)
    for temp, real in names.items():
        text = text.replace(temp, real).replace(Path(temp).name, Path(real).name)
    code = error.errno
    if code is None:  # HDF5's text carries the system error: "..., errno = 28, ..."
        found = re.search(r"errno = (\d+)", text)
        code = int(found[1]) if found and int(found[1]) else None
    if code is None:
        return RadintIOError(f"{final}: not written ({text})")
    return RadintIOError(code, f"not written ({text})", str(final))


@contextlib.contextmanager
def _naming(final: Path, temps: dict[Path, Path]) -> Iterator[None]:
    """OSErrors raised inside name ``final`` (:func:`_naming_error`)."""
    try:
        yield
    except OSError as e:
        raise _naming_error(e, final, temps) from e


def _close_naming(zf: zipfile.ZipFile, final: Path, temps: dict[Path, Path]) -> None:
    with _naming(final, temps):
        zf.close()


class _NamedZarrV2Zip(_ZarrV2Zip):
    """A :class:`_ZarrV2Zip` whose write errors name the final file (:func:`_naming`)."""

    def __init__(self, zf: zipfile.ZipFile, final: Path, temps: dict[Path, Path]) -> None:
        self._final, self._temps = final, temps
        with _naming(final, temps):
            super().__init__(zf)

    def array(self, name: str, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        with _naming(self._final, self._temps):
            super().array(name, data, attrs)


def _commit_together(files: dict[Path, Path]) -> None:
    """Move the finished temporary files onto their final names (``{final: temp}``), all
    synced to disk first: a failure there (its error naming the final file) commits none; the
    renames follow one another, so a failure between two leaves the earlier ones done."""
    for final, temp in files.items():
        with _naming(final, files), temp.open("rb") as fh:
            os.fsync(fh.fileno())
    for final, temp in files.items():
        with _naming(final, files):
            commit_path(temp, final, synced=True)


@dataclass
class _FrameFits:
    """One frame's fitted peaks: ``rows`` (n, 7) fit.bin values of its present slots,
    ``slots`` (n,) their slot numbers, ``converged`` (n,) which of them converged."""

    rows: np.ndarray
    slots: np.ndarray
    converged: np.ndarray


def _stream_fit_tables(
    directory: Path, peaks: Any, n_frames: int, config: Any
) -> Callable[[int], _FrameFits | None] | None:
    """Frame k's fitted peaks × the 7 fit.bin values: from the stream file's ``entry/peaks``
    (which knows each frame's peak count and status), and for frames past its last flush (a
    stream killed outright: the binaries are written every frame, stream.h5 every few seconds)
    from ``fit.bin`` where its framing is known (:func:`_fixed_peak_count`: given positions,
    a record of every slot per frame) and its size fits it; there a row counts as converged
    when all its values are finite (failed fits are NaN rows). Auto-detected peaks vary in
    number from frame to frame and fit.bin does not say how many each frame has: those
    frames' fits are left out, said in a warning. None without peaks."""
    from radint.fit import ABSENT, CONVERGED

    stored = int(peaks["status"].shape[0]) if peaks is not None else 0
    status = [np.asarray(peaks["status"][k]) for k in range(stored)]
    present = [s != ABSENT for s in status]
    fit_bin = directory / "fit.bin"
    tail: dict[int, np.ndarray] = {}
    if stored < n_frames and fit_bin.is_file():
        missing = n_frames - stored
        width = int(peaks["status"].shape[1]) if peaks is not None else None
        count = _fixed_peak_count(config, width, any(not p.all() for p in present))
        done = sum(int(p.sum()) for p in present)
        values = np.fromfile(fit_bin, dtype="<f8")
        if values.size % 7:  # a stream killed mid-record: its last row is not whole
            log.warning("%s: %d byte(s) of an unfinished last row left out", fit_bin,
                        8 * (values.size % 7))  # fmt: skip
        rows = values[: values.size - values.size % 7].reshape(-1, 7)
        if count is None:
            log.warning(
                "%s: the fits of %d frame(s) past the stream file's last flush are left out: "
                "the peaks were auto-detected (or the parameters give no PeakLocation), so "
                "their number varies by frame, and fit.bin, which has no per-frame count, "
                "does not say which of its last %d row(s) are whose",
                directory, missing, len(rows) - done,
            )  # fmt: skip
        elif count > 0 and len(rows) == done + missing * count:
            tail = {stored + i: rows[done + i * count : done + (i + 1) * count]
                    for i in range(missing)}  # fmt: skip
        else:
            log.warning(
                "%s: the fits of %d frame(s) past the stream file's last flush are left out: "
                "fit.bin's %d row(s) do not give them %d peak(s) each after the stored "
                "frames' %d",
                directory, missing, len(rows), count, done,
            )  # fmt: skip
    if not stored and not tail:
        return None

    def table(k: int) -> _FrameFits | None:
        if k < stored:
            rows = np.stack([peaks[c][k][present[k]] for c in _FIT_COLUMNS], axis=-1)
            return _FrameFits(rows, np.flatnonzero(present[k]),
                              status[k][present[k]] == CONVERGED)  # fmt: skip
        found = tail.get(k)
        if found is None:
            return None
        return _FrameFits(found, np.arange(len(found)), np.isfinite(found).all(axis=1))

    return table


def _fixed_peak_count(config: Any, width: int | None, any_absent: bool) -> int | None:
    """How many fit.bin rows every frame of a stream has, where that is fixed: with given
    positions (``DoPeakFit 1`` with ``PeakLocation`` and no ``AutoDetectPeaks``) every slot
    is a row (a failed or out-of-range one a NaN row), ``width`` of them per stored frame
    (else one per position). None where it varies: auto-detected peaks (fit.bin holds only
    the peaks each frame found; a stored frame with an absent slot shows it too)."""
    positions = tuple(getattr(config, "peak_locations", ()) or ())
    given = (
        bool(getattr(config, "do_peak_fit", False))
        and not getattr(config, "auto_detect_peaks", False)
        and len(positions) > 0
    )
    if not given or any_absent:
        return None
    return width if width is not None else len(positions)


class _CakedRows:
    """The rows of the GPU program's ``caked_peaks.h5``, gathered frame by frame in the order
    of integrator_output.h5 (see :func:`write_stream_outputs`)."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.frames: list[np.ndarray] = []
        self.keys: list[str] = []
        self.slots: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []

    def add(self, k: int, key: str, fits: _FrameFits) -> None:
        ok = np.asarray(fits.converged, dtype=bool)
        n = int(ok.sum())
        if n:
            self.frames.append(np.full(n, k))
            self.keys.extend([key] * n)
            self.slots.append(fits.slots[ok])
            self.rows.append(np.asarray(fits.rows, dtype=np.float64)[ok])

    def write(self, path: Path, final: Path, frame_keys: list[str]) -> None:
        """Write the file to ``path`` (a temporary name the caller commits as ``final``):
        first checked against the free space and the file size limit with its size bound
        (:func:`radint.io.peaks.caked_peaks_bound`, not the margin an open HDF5 file's
        appends need: it is written whole, small), so that HDF5 never meets a full disk;
        errors name ``final``."""
        from radint.io.nexus import ensure_space
        from radint.io.peaks import caked_peaks_bound, write_caked_peaks_file

        n = len(self.keys)
        rows = np.concatenate(self.rows) if n else np.zeros((0, 7))
        c, w = rows[:, 1], rows[:, 4]
        tth = np.asarray(self.config.two_theta_deg(c), dtype=np.float64)
        fwhm = self.config.two_theta_deg(c + w / 2) - self.config.two_theta_deg(c - w / 2)
        lam = float(self.config.wavelength_angstrom)
        theta = np.radians(tth) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            # PeakFitIO.c: 0 without a wavelength or at θ ≈ 0
            d = np.where((theta > 1e-10) & (lam > 0), lam / (2 * np.sin(theta)), 0.0)
        columns = {
            "frame_idx": np.concatenate(self.frames) if n else np.zeros(0, np.int32),
            "eta_idx": np.zeros(n, np.int32),
            "peak_nr": np.concatenate(self.slots) if n else np.zeros(0, np.int32),
            "eta_deg": np.zeros(n), "center_2theta": tth, "area": rows[:, 0],
            "sig": rows[:, 2], "gam": rows[:, 3], "FWHM_deg": np.asarray(fwhm, np.float64),
            "eta_mix": rows[:, 5], "d_spacing_A": d, "chi_sq": rows[:, 6],
        }  # fmt: skip
        need = caked_peaks_bound(n, self.keys, frame_keys, STREAM_CAKED_PEAKS_SOURCE)
        with _naming(final, {final: path}):
            ensure_space(path, need, what=str(final), margin=0)
            write_caked_peaks_file(path, columns, np.zeros(0), np.zeros(0), frame_keys,
                                   STREAM_CAKED_PEAKS_SOURCE, self.keys)  # fmt: skip


def _stream_frame_order(
    n_frames: int, mapping: dict[int, dict[str, Any]] | None, ids: dict[int, int] | None = None
) -> tuple[list[int], dict[int, str]]:
    """The frames of a stream in the order MIDAS's post-processing writes them, and their
    names: without ``mapping`` by arrival index, or, given ``ids`` (arrival row → frame id,
    :func:`_sender_ids_by_row`), those rows by frame id and the rows without one after;
    with ``mapping`` mapped frames by file name (or uniqueId), unmapped ones after by their
    number (as integrator_stream_process_h5.py sorts them); a name seen twice followed by
    ``_<index>``."""
    order = list(range(n_frames))
    if mapping:
        order.sort(key=lambda k: (0, _mapped_name(mapping[k]), 0) if k in mapping else (1, "", k))
    elif ids:
        order.sort(key=lambda k: (0, ids[k]) if k in ids else (1, k))
    labels: dict[int, str] = {}
    taken: set[str] = set()
    for k in order:
        label = str(ids[k]) if not mapping and ids and k in ids else _frame_label(k, mapping)
        labels[k] = f"{label}_{k}" if label in taken else label
        taken.add(labels[k])
    return order, labels


def _stream_rows(stream_file: str | Path | None) -> tuple[list[int] | None, list[str] | None]:
    """The frame id and the source of each row of a stream's NeXus file (rows in arrival
    order, as the binary files'); None for what it does not hold (no file, none readable)."""
    if stream_file is None or not Path(stream_file).is_file():
        return None, None
    import h5py

    try:
        with h5py.File(stream_file, "r", locking=False) as f:
            ids = f.get("entry/azint1d/data/frame_id")
            sources = f.get("entry/stream/source")
            return (
                None if ids is None else [int(v) for v in ids[()]],
                None if sources is None else list(sources.asstr()[()]),
            )
    except OSError:
        return None, None


def _sender_ids_by_row(
    row_ids: list[int] | None, sources: list[str] | None
) -> dict[int, int] | None:
    """Without a mapping: arrival row → frame id where the rows came from one TCP sender
    (every id once), whose ids are its sending indices. Over several connections (``radint
    send --connections``) frames arrive out of that order, and named by arrival index a frame
    had another frame's name. None where the ids are the arrival indices already (one
    connection: MIDAS's naming) or are no sending indices (PVA uniqueIds, which an IOC
    restart starts anew; several senders, whose ids repeat): frames keep MIDAS's naming."""
    if not row_ids or sources is None or len(sources) != len(row_ids):
        return None
    if row_ids == list(range(len(row_ids))) or len(set(row_ids)) != len(row_ids):
        return None
    if not all(s.startswith("tcp:") for s in sources):
        return None
    return dict(enumerate(row_ids))


def _mapping_by_row(
    mapping: dict[int, dict[str, Any]] | None, row_ids: list[int] | None, n_frames: int
) -> dict[int, dict[str, Any]] | None:
    """The sender's mapping keyed by arrival row. MIDAS keys it by sending index, the arrival
    row when one connection carries the frames; over several (``radint send --connections``)
    frames arrive out of sending order, and a row's frame id (its dataset number: the sending
    index for a sender counting from 0) names its entry. Rows past the stream file's last flush
    (a killed stream) keep their arrival index where that entry is not taken; ids that do not
    name entries (another numbering) leave MIDAS's keying."""
    if not mapping or not row_ids or row_ids == list(range(len(row_ids))):
        return mapping
    if len(set(row_ids)) != len(row_ids) or not all(i in mapping for i in row_ids):
        return mapping  # other ids (PVA uniqueIds, several senders): MIDAS's keying
    by_row = {row: mapping[i] for row, i in enumerate(row_ids)}
    taken = set(row_ids)
    unsure = 0
    for row in range(len(row_ids), n_frames):
        if row in mapping and row not in taken:
            by_row[row] = mapping[row]
            unsure += 1
    if unsure:
        log.warning(
            "stream: %d frame(s) past the stream file's last flush are named by their arrival "
            "index; with several sender connections that may not be their file",
            unsure,
        )
    return by_row


def _mapped_name(entry: dict[str, Any]) -> str:
    return str(entry.get("filename") or entry.get("uniqueId", ""))


def _frame_label(index: int, mapping: dict[int, dict[str, Any]] | None) -> str:
    """A frame's dataset name as MIDAS's post-processing gives it: the mapped file name without
    its extension, else its uniqueId / dataset_num, else the arrival index (the caller appends
    the index to a name seen twice: one file sent twice)."""
    entry = (mapping or {}).get(index)
    if entry is None:
        return str(index)
    if entry.get("filename"):
        label = os.path.splitext(str(entry["filename"]))[0]
    else:
        label = str(entry.get("uniqueId") or entry.get("dataset_num", index))
    # HDF5 names cannot hold "/"; MIDAS's mapping names are base names with ":frameK" suffixes.
    return label.replace("/", "_")


def _open_peaks(stream_file: str | Path | None) -> Any:
    """The ``entry/peaks`` group of a stream's NeXus file, or None (no file, no peaks)."""
    if stream_file is None or not Path(stream_file).is_file():
        return None
    import h5py
    import hdf5plugin  # noqa: F401  (the file's filters)

    f = h5py.File(stream_file, "r")
    if "entry/peaks/status" not in f:
        f.close()
        return None
    return f["entry/peaks"]


def read_midas_caked(path: str | Path) -> Result:
    """A MIDAS ``<name>.caked.hdf`` (IntegratorZarrOMP's, or radint's) as a Result, to look at
    (``radint plot``): the per-frame cakes of ``IntegrationResult`` (else the
    ``OmegaSumFrame`` sums, else ``SumFrames``), axes and bin areas from ``REtaMap``, and the
    lineout by MIDAS's CPU rule (mean of the non-zero η bins). No configuration, no sigmas.

    Raises
    ------
    RadintIOError
        Not such a file (no ``REtaMap`` or no cake in it).
    """
    import h5py

    from radint.exceptions import RadintIOError

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise RadintIOError(f"{path}: cannot open as HDF5 ({e})") from e
    with f:
        if "REtaMap" not in f:
            raise RadintIOError(f"{path}: no REtaMap (not a MIDAS caked.hdf)")
        geometry = np.asarray(f["REtaMap"][()], dtype=np.float64)
        cakes, ids = [], []
        for group in ("IntegrationResult", "OmegaSumFrame"):
            if group in f and len(f[group]):
                names = sorted(f[group], key=lambda n: int(n.rsplit("_", 1)[-1]))
                cakes = [np.asarray(f[group][n][()], dtype=np.float64) for n in names]
                ids = [int(n.rsplit("_", 1)[-1]) for n in names]
                break
        if not cakes and "SumFrames" in f:
            cakes, ids = [np.asarray(f["SumFrames"][()], dtype=np.float64)], [0]
    if not cakes:
        raise RadintIOError(f"{path}: no IntegrationResult, OmegaSumFrame or SumFrames cake")
    cake = np.transpose(np.stack(cakes), (0, 2, 1))  # R-major in the file
    valid = (cake != 0) & np.isfinite(cake)
    n_valid = valid.sum(axis=1)
    total = np.where(valid, cake, 0.0).sum(axis=1)
    lineout = np.divide(total, n_valid, out=np.zeros_like(total), where=n_valid > 0)
    radius, two_theta, eta = geometry[0][:, 0], geometry[1][:, 0], geometry[2][0, :]
    q = geometry[4][:, 0] if geometry.shape[0] > 4 else np.zeros_like(radius)
    q = np.where(q > 0, q, np.nan)

    area = geometry[3].T
    with np.errstate(divide="ignore", invalid="ignore"):
        d_spacing = 2 * np.pi / q
    return Result(
        cake=cake,
        cake_sigma=None,
        lineout=lineout,
        lineout_sigma=None,
        area=np.broadcast_to(area, cake.shape).copy(),
        count=np.zeros(cake.shape, dtype=np.uint32),  # not stored; the integrator's dtype
        radius_px=radius,
        two_theta_deg=two_theta,
        q_inv_angstrom=q,
        d_spacing_angstrom=d_spacing,
        eta_deg=eta,
        r_edges_px=edges_from_centres(radius),
        eta_edges_deg=edges_from_centres(eta),
        config=None,
        lineout_mode="midas_nonzero_mean",
        frame_ids=np.asarray(ids, dtype=np.int64),
        metadata={"source": str(path), "n_frames": len(ids)},
    )
