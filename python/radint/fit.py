"""Peak fitting on lineouts: TCH pseudo-Voigt + 2-term Chebyshev background (MIDAS spec §6).

The fitter runs in Rust (bounded Levenberg–Marquardt with analytic Jacobian, rayon over curves
and jobs). Failed fits are NaN rows with a status, never zeros that look like a result.
Standard errors come from the fit covariance of MIDAS's unweighted objective Σ(M − I)²; with
Poisson data they are optimistic (about 2× small at the peak), see the peak-fitting tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radint import _core
from radint.exceptions import InvalidInputError, ShapeError

if TYPE_CHECKING:
    from radint.result import Result

#: MIDAS column order of one fitted peak (spec §6.2 step 5).
COLUMNS = ("area", "center", "sig", "gam", "fwhm", "eta_mix", "chi2")
STATUS_NAMES: tuple[str, ...] = tuple(_core.fit_status_names())


@dataclass
class FitTable:
    """Fitted peaks, one numpy array per column, each ``(n_peaks,)`` (or ``(n_curves, n_peaks)``).

    ``center`` and ``fwhm`` are in the units of the fitted x; ``sig``/``gam`` in MIDAS's
    centi-units; ``chi2`` is the reduced χ² of the peak's job; ``status`` 0 = converged (see
    ``status_name``). ``*_err`` are standard errors. Columns derived from a Result's geometry
    (``center_two_theta_deg``, ``center_q``, ``center_d_angstrom``, ``fwhm_deg``) are filled by
    :func:`fit_result`.
    """

    area: np.ndarray
    center: np.ndarray
    sig: np.ndarray
    gam: np.ndarray
    fwhm: np.ndarray
    eta_mix: np.ndarray
    chi2: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    area_err: np.ndarray
    center_err: np.ndarray
    sig_err: np.ndarray
    gam_err: np.ndarray
    fwhm_err: np.ndarray
    eta_mix_err: np.ndarray
    derived: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def _from_arrays(
        cls, values: np.ndarray, errors: np.ndarray, status: np.ndarray, iterations: np.ndarray
    ) -> FitTable:
        v = np.moveaxis(values, -1, 0)
        e = np.moveaxis(errors, -1, 0)
        return cls(*v, status=status, iterations=iterations, area_err=e[0], center_err=e[1],
                   sig_err=e[2], gam_err=e[3], fwhm_err=e[4], eta_mix_err=e[5])  # fmt: skip

    @property
    def status_name(self) -> np.ndarray:
        """Status of each peak as text (``"converged"``, ``"max_iterations"``, ...)."""
        return np.vectorize(lambda s: STATUS_NAMES[int(s)])(self.status)

    @property
    def ok(self) -> np.ndarray:
        """True where the fit converged."""
        return self.status == 0

    def rows(self) -> np.ndarray:
        """The MIDAS 7-column rows, shape ``(..., n_peaks, 7)``."""
        return np.stack([getattr(self, c) for c in COLUMNS], axis=-1)

    def __getattr__(self, name: str) -> Any:
        derived = self.__dict__.get("derived", {})
        if name in derived:
            return derived[name]
        raise AttributeError(name)


def _curves(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    single = y.ndim == 1
    y2 = np.ascontiguousarray(y[np.newaxis] if single else y)
    if x.ndim != 1 or y2.ndim != 2 or y2.shape[1] != x.shape[0]:
        raise ShapeError(
            f"fit: x must be (n,) and y (n,) or (n_curves, n); got {x.shape} and {y.shape}"
        )
    return x, y2, single


def fit_peaks(
    x: Any,
    y: Any,
    positions: Any = None,
    auto: int | None = None,
    roi_padding: int = 20,
    auto_roi: bool = False,
    snip_iterations: int = 50,
    max_iterations: int = 500,
    n_threads: int | None = None,
) -> FitTable | list[FitTable]:
    """Fit peaks on one lineout ``y`` (n,) or many ``(n_curves, n)`` over the axis ``x`` (n,).

    Parameters
    ----------
    positions : sequence of float, optional
        Peak positions in x units (MIDAS ``PeakLocation``): snapped to the nearest bin (kept
        within 2 bins), ROIs of ±``roi_padding`` bins, overlapping ROIs fitted together.
    auto : int, optional
        Instead of positions: detect up to this many peaks (SNIP background, Savitzky–Golay second
        derivative, prominence). Returns a list of tables (one per curve: counts differ).
    roi_padding, auto_roi, snip_iterations, max_iterations, n_threads
        MIDAS ``FitROIPadding``, ``FitROIAuto``, ``SNIPIterations``; LM iteration cap; threads.
    """
    x, y2, single = _curves(x, y)
    if (positions is None) == (auto is None):
        raise InvalidInputError("fit_peaks: give exactly one of positions= or auto=")
    if auto is not None:
        if auto < 1:
            raise InvalidInputError(f"auto: expected a number of peaks >= 1, got {auto}")
        fits = _core.fit_auto(
            x, y2, int(auto), snip_iterations, roi_padding, max_iterations, n_threads
        )
        tables = [
            FitTable._from_arrays(
                f["values"], f["errors"], f["status"], np.zeros(len(f["status"]), np.uint32)
            )
            for f in fits
        ]
        return tables[0] if single else tables
    pos = [float(p) for p in np.atleast_1d(positions)]
    out = _core.fit_peaks(x, y2, pos, roi_padding, auto_roi, max_iterations, n_threads)
    table = FitTable._from_arrays(out["values"], out["errors"], out["status"], out["iterations"])
    if single:
        table = FitTable._from_arrays(
            out["values"][0], out["errors"][0], out["status"][0], out["iterations"][0]
        )
    return table


def fit_result(
    result: Result, positions_px: Any = None, auto: int | None = None, **kwargs: Any
) -> FitTable | list[FitTable]:
    """Fit the lineout(s) of a Result against R (px) and add 2θ, Q, d and FWHM in degrees."""
    tables = fit_peaks(
        result.radius_px, result.lineout, positions=positions_px, auto=auto, **kwargs
    )
    cfg = result.config
    for t in tables if isinstance(tables, list) else [tables]:
        if cfg is None:
            continue
        c = t.center
        t.derived["center_two_theta_deg"] = cfg.two_theta_deg(c)
        t.derived["center_q"] = cfg.q_inv_angstrom(c)
        with np.errstate(divide="ignore", invalid="ignore"):
            t.derived["center_d_angstrom"] = 2 * np.pi / t.derived["center_q"]
        half = t.fwhm / 2
        t.derived["fwhm_deg"] = cfg.two_theta_deg(c + half) - cfg.two_theta_deg(c - half)
    return tables


def write_fit_bin(table: FitTable, path: str | Path) -> Path:
    """MIDAS ``fit.bin``: 7 float64 per peak per frame (spec §6.5), frame after frame."""
    path = Path(path)
    rows = np.ascontiguousarray(table.rows(), dtype="<f8")
    tmp = path.with_name(path.name + ".partial")
    rows.tofile(tmp)
    tmp.replace(path)
    return path
