"""Small exports: the MIDAS ``_lineout.xy`` text file (spec §9.2), a MATLAB ``.mat`` and the
fitted-peak table as CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from radint.exceptions import BackendUnavailableError, InvalidInputError
from radint.io._common import cfg, config_dict, frame_ids, stacked
from radint.io.atomic import atomic_output
from radint.result import Result

__all__ = ["write_lineout_bin", "write_lineout_xy", "write_mat", "write_peaks_csv"]


def write_lineout_xy(result: Result, path: str | Path, *, radial_unit: str | None = None) -> Path:
    """Write the lineout(s) as IntegratorZarrOMP's ``<prefix>_lineout.xy``, atomically.

    One header line (``# 2theta_deg  intensity`` or ``# Q_invA  intensity``), then one line
    per bin, the frames of a stack one after another without separators: n_r lines per frame,
    so the file splits into frames by line count. A bin with no unmasked pixel (NaN in the
    Result) is written as 0, as IntegratorZarrOMP's lineout holds it (its NaN test never fires:
    its empty bins are 0). The lines are C's ``"%.6f  %.6f"`` for a lineout by C's rule (a
    ``compat="midas-cpu"`` result: the file is then IntegratorZarrOMP's to the byte); other
    intensities are written to 10 significant digits (``%.10g``), as six decimals would round
    small intensities (scaled or normalised frames) to one or two digits, or to 0.

    Parameters
    ----------
    result : Result
    path : str or Path
    radial_unit : {"2theta", "q"}, optional
        x column: 2θ in degrees or Q in Å⁻¹. Default: Q when the bins are uniform in Q
        (``QBinSize``), else 2θ, as IntegratorZarrOMP chooses.

    Returns
    -------
    Path
    """
    if radial_unit is None:
        q_mode = cfg(result, "q_bin") > 0 and cfg(result, "wavelength_angstrom") > 0
        radial_unit = "q" if q_mode else "2theta"  # IntegrationConfig.radial_mode == "q"
    if radial_unit == "2theta":
        x, header = np.asarray(result.two_theta_deg, dtype=np.float64), "# 2theta_deg  intensity"
    elif radial_unit == "q":
        x, header = np.asarray(result.q_inv_angstrom, dtype=np.float64), "# Q_invA  intensity"
        q_min, q_bin = cfg(result, "q_min"), cfg(result, "q_bin")
        if q_bin > 0 and x.size:
            # IntegratorZarrOMP's centre, QMin + QBinSize·(j + 0.5): the edges' midpoint can
            # differ by an ulp, which "%.6f" shows where the value ends on a rounding tie.
            centres = q_min + q_bin * (np.arange(x.size) + 0.5)
            x = np.where(np.isclose(centres, x, rtol=1e-12, atol=0.0), centres, x)
    else:
        raise InvalidInputError(f"radial_unit must be '2theta' or 'q', got {radial_unit!r}")
    lineouts = stacked(np.asarray(result.lineout, dtype=np.float64), 1)
    columns = np.column_stack(
        [np.tile(x, lineouts.shape[0]), lineouts.reshape(-1)]
    )  # (n_frames·n_r, 2)
    columns[np.isnan(columns[:, 1]), 1] = 0.0
    with atomic_output(path) as tmp, tmp.open("w") as fh:
        fh.write(header + "\n")
        c_rule = getattr(result, "lineout_mode", "") == "midas_nonzero_mean"
        np.savetxt(fh, columns, fmt=("%.6f", "%.6f" if c_rule else "%.10g"), delimiter="  ")
    return Path(path)


def write_lineout_bin(result: Result, path: str | Path) -> Path:
    """Write the lineout(s) as IntegratorZarrOMP's ``<prefix>_lineout.bin``, atomically: n_r
    little-endian float64 per frame, frames one after another, no R column, NaN kept.

    Parameters
    ----------
    result : Result
    path : str or Path

    Returns
    -------
    Path
    """
    lineouts = stacked(np.asarray(result.lineout, dtype="<f8"), 1)
    with atomic_output(path) as tmp:
        lineouts.tofile(tmp)
    return Path(path)


def write_mat(result: Result, path: str | Path) -> Path:
    """Write the Result's arrays to a MATLAB v5 ``.mat`` file (scipy), atomically.

    Variables: ``cake`` (n_frames, n_eta, n_r), ``cake_sigma``, ``lineout`` (n_frames, n_r),
    ``lineout_sigma``, ``area``, ``radius_px``, ``two_theta_deg``, ``q_inv_angstrom``,
    ``eta_deg``, ``r_edges_px``, ``eta_edges_deg``, ``frame_ids``, ``configuration`` (JSON).

    Parameters
    ----------
    result : Result
    path : str or Path

    Returns
    -------
    Path

    Raises
    ------
    BackendUnavailableError
        scipy is not installed (the ``formats`` extra).
    """
    try:
        from scipy.io import savemat
    except ImportError as e:
        raise BackendUnavailableError(
            f"{path}: the .mat format needs scipy ({e}): pip install 'radint[formats]'"
        ) from e

    arrays = {
        "cake": stacked(np.asarray(result.cake), 2),
        "cake_sigma": stacked(result.cake_sigma, 2),
        "lineout": stacked(np.asarray(result.lineout), 1),
        "lineout_sigma": stacked(result.lineout_sigma, 1),
        "area": np.asarray(result.area),
        "radius_px": result.radius_px,
        "two_theta_deg": result.two_theta_deg,
        "q_inv_angstrom": result.q_inv_angstrom,
        "eta_deg": result.eta_deg,
        "r_edges_px": result.r_edges_px,
        "eta_edges_deg": result.eta_edges_deg,
        "frame_ids": frame_ids(result),
        "configuration": json.dumps(config_dict(result), sort_keys=True),
    }
    with atomic_output(path) as tmp, tmp.open("wb") as fh:
        savemat(fh, {k: v for k, v in arrays.items() if v is not None}, do_compression=True)
    return Path(path)


#: Columns of the peaks CSV: (header, FitTable attribute).
_PEAK_CSV = (
    ("center_px", "center"), ("center_px_err", "center_err"),
    ("center_two_theta_deg", "center_two_theta_deg"),
    ("center_two_theta_deg_err", "center_two_theta_deg_err"),
    ("center_q_invA", "center_q"), ("center_q_invA_err", "center_q_err"),
    ("center_d_A", "center_d_angstrom"), ("center_d_A_err", "center_d_angstrom_err"),
    ("area", "area"), ("area_err", "area_err"),
    ("fwhm_px", "fwhm"), ("fwhm_px_err", "fwhm_err"),
    ("fwhm_two_theta_deg", "fwhm_deg"), ("fwhm_two_theta_deg_err", "fwhm_deg_err"),
    ("eta_mix", "eta_mix"), ("eta_mix_err", "eta_mix_err"),
    ("sig", "sig"), ("sig_err", "sig_err"), ("gam", "gam"), ("gam_err", "gam_err"),
    ("chi2", "chi2"),
)  # fmt: skip


def write_peaks_csv(result: Result, path: str | Path) -> Path:
    """Write ``result.peaks`` as CSV, atomically: one line per (frame, peak slot) with
    ``frame_id, slot, status`` and the centre (px, 2θ deg, Q Å⁻¹, d Å), area, FWHM (px, 2θ deg),
    η-mix, MIDAS sig/gam and reduced χ², each but χ² followed by its standard error (``_err``;
    those of 2θ, Q, d and FWHM in 2θ propagated from the pixel ones). Absent auto-detection
    slots are left out.

    Parameters
    ----------
    result : Result
        A result with fitted peaks (``result.peaks``); frames are named by
        ``result.frame_ids`` (0, 1, ... when not set). Columns the table lacks (the 2θ, Q, d
        ones of a table fitted without units) are written as NaN.
    path : str or Path
        The CSV file to write (replaced if it exists); its parent directory must exist.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InvalidInputError
        The result has no fitted peaks (integrate with ``fit=`` or run ``radint fit``); a
        ``ValueError``.
    """
    peaks = result.peaks
    if peaks is None:
        raise InvalidInputError(
            f"{path}: the result has no fitted peaks (use fit= or 'radint fit')"
        )
    ids = frame_ids(result)
    status = np.asarray(peaks.status).reshape(len(ids), -1)
    names = np.asarray(peaks.status_name).reshape(status.shape)

    def column(attr: str) -> np.ndarray:
        v = getattr(peaks, attr)
        if v is None:
            return np.full(status.shape, np.nan)
        return np.asarray(v, dtype=np.float64).reshape(status.shape)

    cols = [column(attr) for _, attr in _PEAK_CSV]
    header = "frame_id,slot,status," + ",".join(h for h, _ in _PEAK_CSV)
    with atomic_output(path) as tmp, tmp.open("w") as fh:
        fh.write(header + "\n")
        for i, fid in enumerate(ids):
            for k in range(status.shape[1]):
                if status[i, k] == 255:
                    continue
                values = ",".join(f"{c[i, k]:.9g}" for c in cols)
                fh.write(f"{fid},{k},{names[i, k]},{values}\n")
    return Path(path)
