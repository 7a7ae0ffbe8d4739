"""IntegratorZarrOMP's peak-fit side files (spec §6.5, §9.4): ``<prefix>_fit_per_eta.csv`` and
``<prefix>_caked_peaks.h5``, written from the per-η fits (:func:`radint.fit.fit_per_eta`)."""

from __future__ import annotations

import math
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from radint.exceptions import InvalidInputError
from radint.io.atomic import atomic_output

if TYPE_CHECKING:
    from radint.fit import EtaPeaks
    from radint.result import Result

__all__ = [
    "CSV_HEADER",
    "PEAK_COLUMNS",
    "peaks_per_eta",
    "write_caked_peaks",
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

    ``/metadata``: attribute ``zarr_source`` (fixed-length ASCII string, NUL-terminated),
    ``tth_axis`` (n_r,) and ``eta_axis`` (n_eta,) float64, ``frame_keys`` (variable-length
    ASCII strings); ``/peaks`` (omitted when there are no rows): the :data:`PEAK_COLUMNS`
    (int32 / float64, contiguous, unfiltered) and ``frame_key`` (variable-length ASCII).
    ``columns`` holds every :data:`PEAK_COLUMNS` entry; ``row_keys`` one string per row.
    """
    import h5py

    ascii_vlen = h5py.string_dtype("ascii")
    n = len(row_keys)
    path = Path(path)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        meta = f.create_group("metadata")
        raw = source.encode("ascii", "replace")
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(len(raw) + 1)
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        meta.attrs.create("zarr_source", np.array(raw, dtype=f"S{len(raw) + 1}"),
                          dtype=h5py.Datatype(tid))  # fmt: skip
        meta.create_dataset("tth_axis", data=np.asarray(tth_axis, dtype="<f8"))
        meta.create_dataset("eta_axis", data=np.asarray(eta_axis, dtype="<f8"))
        keys = np.array([k.encode("ascii", "replace") for k in frame_keys], dtype=object)
        meta.create_dataset("frame_keys", shape=(len(frame_keys),), dtype=ascii_vlen, data=keys)
        if n:
            g = f.create_group("peaks")
            for name, dtype in PEAK_COLUMNS.items():
                values = np.asarray(columns[name])
                if values.shape != (n,):
                    raise InvalidInputError(f"caked_peaks: column {name} has shape {values.shape}, "
                                     f"expected ({n},)")  # fmt: skip
                g.create_dataset(name, data=values.astype(dtype))
            rows = np.array([k.encode("ascii", "replace") for k in row_keys], dtype=object)
            g.create_dataset("frame_key", shape=(n,), dtype=ascii_vlen, data=rows)
    return path


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
