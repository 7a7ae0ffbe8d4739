"""IntegratorZarrOMP's peak-fit side files (spec §6.5, §9.4): ``<prefix>_fit_per_eta.csv`` and
``<prefix>_caked_peaks.h5``, written from the per-η fits (:func:`radint.fit.fit_per_eta`)."""

from __future__ import annotations

import math
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radint.exceptions import InvalidInputError
from radint.io.atomic import atomic_output

if TYPE_CHECKING:
    from radint.fit import EtaPeaks
    from radint.result import Result

__all__ = [
    "CSV_HEADER",
    "PEAK_COLUMNS",
    "caked_peaks_bound",
    "peaks_per_eta",
    "write_caked_peaks",
    "write_caked_peaks_file",
    "write_caked_peaks_per_eta",
    "write_fit_per_eta_csv",
]

#: Header line of IntegratorZarrOMP's ``_fit_per_eta.csv``.
CSV_HEADER = (
    "Frame,EtaBin,EtaCen,PeakIdx,R_px,R_um,TwoTheta_deg,"
    "Area,Sig_centideg2,Gam_centideg,FWHM_deg,Eta,ChiSq,Area2"
)
# Its row format (IntegratorZarrOMP.c, fprintf of the per-η loop).
_CSV_ROW = "%d,%d,%.4f,%d,%.6f,%.4f,%.6f,%.4f,%.6f,%.6f,%.4f,%.4f,%.4f,%.4f\n"
#: ``/peaks`` datasets of ``caked_peaks.h5`` in PeakFitIO.c's order: name → dtype.
PEAK_COLUMNS: dict[str, str] = {
    "frame_idx": "<i4", "eta_idx": "<i4", "peak_nr": "<i4", "eta_deg": "<f8",
    "center_2theta": "<f8", "area": "<f8", "sig": "<f8", "gam": "<f8", "FWHM_deg": "<f8",
    "eta_mix": "<f8", "d_spacing_A": "<f8", "chi_sq": "<f8",
}  # fmt: skip

_CACHE: dict[int, EtaPeaks] = {}


def peaks_per_eta(result: Result) -> EtaPeaks:
    """The per-η fits of ``result`` for the MIDAS side files, computed once per result (both
    files of a result share them): the fit that made ``result.peaks``, else the parameter
    file's ``DoPeakFit``/``PeakLocation``/``AutoDetectPeaks``/``DoubletSeparation``.

    Raises
    ------
    ValueError
        No fit is configured.
    """
    from radint.fit import fit_spec_of

    key = id(result)
    hit = _CACHE.get(key)
    if hit is None:
        spec = fit_spec_of(result)
        if spec is None:
            raise InvalidInputError(
                "per-eta peak fits need peaks to fit: DoPeakFit 1 with PeakLocation or "
                "AutoDetectPeaks (or --fit-peaks / --fit-auto, fit=)"
            )
        hit = spec.per_eta(result)
        _CACHE[key] = hit
        weakref.finalize(result, _CACHE.pop, key, None)
    return hit


def write_fit_per_eta_csv(peaks: EtaPeaks, path: str | Path) -> Path:
    """Write ``<prefix>_fit_per_eta.csv`` as IntegratorZarrOMP does, atomically.

    Header :data:`CSV_HEADER`, then one line per row of ``peaks`` (frame, η bin, peak index
    order) with C's number formats: ``R_um = R_px·px``, ``TwoTheta_deg = atan(R_um/Lsd)``,
    ``Area2`` repeats ``Area``; for given positions (pV fits) only ``R_px`` and ``ChiSq``
    (= the fit's SNR) are filled, the other fit columns are 0. Difference from MIDAS:
    ``FWHM_deg`` holds the FWHM in degrees 2θ, as its name says (C writes Γ in pixels there),
    as in :func:`write_caked_peaks_per_eta`.
    """
    px = peaks.pixel_size_um
    lines = [CSV_HEADER + "\n"]
    for i in range(peaks.n_rows):
        c = float(peaks.center[i])
        area = float(peaks.area[i])
        lines.append(_CSV_ROW % (
            peaks.frame[i], peaks.eta_bin[i], peaks.eta_deg[i], peaks.peak[i], c,
            c * px if math.isfinite(px) else math.nan, peaks.center_two_theta_deg[i], area,
            peaks.sig[i], peaks.gam[i], peaks.fwhm_deg[i], peaks.eta_mix[i], peaks.chi2[i],
            area,
        ))  # fmt: skip
    path = Path(path)
    with atomic_output(path) as tmp:
        Path(tmp).write_text("".join(lines), encoding="ascii")
    return path


#: HDF5's global heap, where variable-length strings live: each string is a 16-byte element of
#: its dataset plus a heap object (16-byte header, the bytes padded to 8) in a collection of at
#: least 4 KiB (16-byte header; an object that does not fit starts the next one).
_HEAP_COLLECTION = 4096
_HEAP_OVERHEAD = 32
#: The rest of a caked_peaks.h5: superblock, groups, 14 object headers, the zarr_source
#: attribute (3-7 KiB measured), and its axes.
_CAKED_PEAKS_FIXED = 64 << 10
#: The int32 / float64 columns of one /peaks row, and 4 bytes more for a frame_idx that needs
#: int64 (:func:`_column`).
_ROW_BYTES = sum(np.dtype(d).itemsize for d in PEAK_COLUMNS.values()) + 4


def _column(values: Any, dtype: str) -> np.ndarray:
    """A /peaks column in its C type; an int32 column whose values int32 cannot hold (the frame
    index of a stream past 2^31 frames) is kept whole as int64 rather than wrapped."""
    a = np.asarray(values)
    if np.dtype(dtype) == np.int32 and a.size and a.dtype.kind in "iu":
        info = np.iinfo(np.int32)
        if a.min() < info.min or a.max() > info.max:
            return a.astype(np.int64)
    return a.astype(dtype)


def caked_peaks_bound(
    n_rows: int, row_keys: list[str], frame_keys: list[str], source: str = "", n_axes: int = 0
) -> int:
    """An upper bound of the size (bytes) of the ``caked_peaks.h5`` :func:`write_caked_peaks`
    writes for ``n_rows`` rows, these keys (UTF-8) and ``n_axes`` axis values: 84 bytes of
    int32/float64 columns per row (88 with an int64 frame_idx), and per string its element,
    heap object and the room a heap collection may leave unused; measured over 0-100 000 rows
    and names of 0-5 000 bytes (within 0.3-2 % of the files, with 1/64 more for other HDF5
    versions)."""
    sizes = [len(k.encode()) for k in frame_keys] + [len(k.encode()) for k in row_keys]
    largest = max((16 + -(-b // 8) * 8 for b in sizes), default=16)
    per_collection = max(1, (_HEAP_COLLECTION - _HEAP_OVERHEAD) // largest)
    collections = -(-len(sizes) // per_collection)
    heap = collections * max(_HEAP_COLLECTION, largest + _HEAP_OVERHEAD)
    total = (_CAKED_PEAKS_FIXED + len(source.encode()) + 8 * n_axes
             + int(n_rows) * _ROW_BYTES + 16 * len(sizes) + heap)  # fmt: skip
    return total + total // 64


def _utf8_keys(keys: list[str]) -> np.ndarray:
    """Variable-length strings as PeakFitIO.c's (ASCII-tagged, what its readers and
    peak_io.py take) holding each name's UTF-8 bytes: a non-ASCII name is kept whole, and
    ``h5py`` reads back the bytes whose ``decode()`` is the name."""
    return np.array([k.encode() for k in keys], dtype=object)


def write_caked_peaks(
    path: str | Path,
    columns: dict[str, np.ndarray],
    tth_axis: np.ndarray,
    eta_axis: np.ndarray,
    frame_keys: list[str],
    source: str,
    row_keys: list[str],
) -> Path:
    """Write a ``caked_peaks.h5`` (spec §9.4) with PeakFitIO.c's exact layout, atomically.

    ``/metadata``: attribute ``zarr_source`` (fixed-length string, NUL-terminated),
    ``tth_axis`` (n_r,) and ``eta_axis`` (n_eta,) float64, ``frame_keys`` (variable-length
    strings); ``/peaks`` (omitted when there are no rows): the :data:`PEAK_COLUMNS`
    (int32 / float64, contiguous, unfiltered; a ``frame_idx`` past int32 as int64) and
    ``frame_key`` (variable-length strings).
    ``columns`` holds every :data:`PEAK_COLUMNS` entry; ``row_keys`` one string per row.
    The strings have PeakFitIO.c's (and peak_io.py's) ASCII type and hold UTF-8 bytes, so a
    non-ASCII name is stored whole (``.decode()`` of what h5py reads gives it back). The file
    takes at most :func:`caked_peaks_bound` bytes.
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        write_caked_peaks_file(tmp, columns, tth_axis, eta_axis, frame_keys, source, row_keys)
    return path


def write_caked_peaks_file(
    path: str | Path,
    columns: dict[str, np.ndarray],
    tth_axis: np.ndarray,
    eta_axis: np.ndarray,
    frame_keys: list[str],
    source: str,
    row_keys: list[str],
) -> None:
    """:func:`write_caked_peaks` in place, not atomically: for a writer that commits the file
    itself (with others, :func:`radint.io.midas.write_stream_outputs`)."""
    import h5py

    ascii_vlen = h5py.string_dtype("ascii")
    n = len(row_keys)
    for name in PEAK_COLUMNS:
        shape = np.shape(columns[name])
        if n and shape != (n,):
            raise InvalidInputError(f"caked_peaks: column {name} has shape {shape}, "
                                    f"expected ({n},)")  # fmt: skip
    with h5py.File(path, "w") as f:
        meta = f.create_group("metadata")
        raw = source.encode()
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(len(raw) + 1)
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        meta.attrs.create("zarr_source", np.array(raw, dtype=f"S{len(raw) + 1}"),
                          dtype=h5py.Datatype(tid))  # fmt: skip
        meta.create_dataset("tth_axis", data=np.asarray(tth_axis, dtype="<f8"))
        meta.create_dataset("eta_axis", data=np.asarray(eta_axis, dtype="<f8"))
        meta.create_dataset("frame_keys", shape=(len(frame_keys),), dtype=ascii_vlen,
                            data=_utf8_keys(frame_keys))  # fmt: skip
        if n:
            g = f.create_group("peaks")
            for name, dtype in PEAK_COLUMNS.items():
                g.create_dataset(name, data=_column(columns[name], dtype))
            g.create_dataset("frame_key", shape=(n,), dtype=ascii_vlen, data=_utf8_keys(row_keys))


def write_caked_peaks_per_eta(peaks: EtaPeaks, path: str | Path) -> Path:
    """Write IntegratorZarrOMP's ``<prefix>_caked_peaks.h5`` from per-η fits, atomically.

    Rows as in the CSV (:func:`write_fit_per_eta_csv`): ``frame_idx``/``eta_idx``/``peak_nr``,
    ``eta_deg`` the η bin centre, ``center_2theta = atan(R·px/Lsd)``, ``d_spacing_A =
    λ/(2 sin θ)`` (0 without a wavelength), ``chi_sq`` the SNR of a pV fit or the χ² of an
    auto-detected peak; ``frame_key`` = ``str(frame_idx)``. Axes: ``tth_axis`` the 2θ of the R
    bin centres, ``eta_axis`` the η bin centres. Differences from MIDAS: ``frame_keys`` holds
    one key per frame (C writes as many as the input has ImTransOpt entries: none for a
    parameter-file run), and ``FWHM_deg`` the FWHM in degrees 2θ (C: Γ in pixels).
    """
    columns = {
        "frame_idx": peaks.frame, "eta_idx": peaks.eta_bin, "peak_nr": peaks.peak,
        "eta_deg": peaks.eta_deg, "center_2theta": peaks.center_two_theta_deg,
        "area": peaks.area, "sig": peaks.sig, "gam": peaks.gam, "FWHM_deg": peaks.fwhm_deg,
        "eta_mix": peaks.eta_mix, "d_spacing_A": peaks.center_d_angstrom, "chi_sq": peaks.chi2,
    }  # fmt: skip
    return write_caked_peaks(
        path, columns, peaks.two_theta_axis_deg, peaks.eta_axis_deg,
        [str(i) for i in range(peaks.n_frames)], peaks.source,
        [str(int(i)) for i in peaks.frame],
    )  # fmt: skip
