"""Peak fitting of lineouts (MIDAS spec §6): TCH pseudo-Voigt peaks on a 2-term Chebyshev
background, fitted in Rust by a bounded Levenberg–Marquardt with analytic Jacobians.

>>> import numpy as np, radint.fit
>>> x = np.arange(200.0)
>>> y = 5 + 300 * np.exp(-0.5 * ((x - 80.3) / 1.7) ** 2)
>>> t = radint.fit.fit_peaks(x, y, positions=[80])
>>> round(float(t.center[0]), 2), str(t.status_name[0])
(80.3, 'converged')

Rows follow MIDAS ``fit.bin``: ``[area, center, sig, gam, fwhm, eta_mix, chi2]`` with ``center``
and ``fwhm`` in the units of x (R pixels for a :class:`~radint.result.Result`); ``sig`` and ``gam``
are MIDAS's "centi"-scaled widths (``F_G = sqrt(8 ln2 · sig)/100``, ``F_L = gam/100`` in x units).
Unlike MIDAS, which leaves zeros, a peak whose fit failed keeps a NaN row and a failure ``status``,
so a failure can never pass for a result.

Standard errors come from a sandwich covariance of MIDAS's unweighted fit,
``(JᵀJ)⁻¹ (Σ vᵢ gᵢgᵢᵀ) (JᵀJ)⁻¹``, with point variances ``vᵢ = g·(Mᵢ + bᵢ)``: lineouts are counts
(or counts scaled by one factor), so the noise goes with the model ``M`` plus any background
``b`` subtracted before the fit (auto-detection's SNIP), and ``g`` is the Poisson-weighted reduced
χ² of the fit. Where ``M + b`` is not positive everywhere in a job (data already background-
subtracted), the variances fall back to each point's own residual (HC2, ``rᵢ²/(1 − hᵢ)``). A
parameter that ended on a bound is held there: its own error is NaN, the others are those of the
fit with it fixed; the width floors (``gam`` of a Gaussian-like, ``sig`` of a Lorentzian-like
peak) are counted free instead, as the true width is often just near them. Over Poisson repeats
centre, area and FWHM of peaks of FWHM ≥ 2 bins scatter as their errors say within ~15 % (the
textbook ``(JᵀJ)⁻¹ · SSR/(n − p)`` was 2–2.6× small for centres, HC2 alone 1.1–1.9×); sub-bin
peaks get conservative errors (benches/fit_calibration.py, README). Narrow peaks (top one or two
bins above half height) are fitted from a 1-bin and MIDAS's 2-bin FWHM start, the lower SSR kept:
from 2 bins alone, ~0.7-bin peaks at high S/N stopped in wrong minima reported as converged.

Each point is modelled as the mean of the profile over its bin (``bin_average=True``), which is
what an integrated lineout holds; MIDAS's model (``bin_average=False``) takes the value at the bin
centre, which widens FWHMs by the bin and biases sub-bin peaks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radint import _core
from radint._once import warn_once
from radint.config import FIT_ROI_PADDING, SNIP_ITERATIONS, check_n_threads
from radint.exceptions import (
    InvalidInputError,
    RadintFileNotFoundError,
    RadintIOError,
    ShapeError,
)

log = logging.getLogger("radint")

if TYPE_CHECKING:
    from radint.config import IntegrationConfig
    from radint.result import Result

#: Columns of a MIDAS fit.bin row, in order.
COLUMNS = ("area", "center", "sig", "gam", "fwhm", "eta_mix", "chi2")
#: Status code → name (0 is the only success; 255 marks an empty auto-detection slot).
STATUS_NAMES: dict[int, str] = dict(_core.fit_status_names())
#: Levenberg–Marquardt steps a fit may take (status ``max_iterations`` beyond).
MAX_ITERATIONS = 500
#: Most peaks fitted together in one job (longer chains of overlapping ROIs are cut).
MAX_PEAKS_PER_JOB = 32
CONVERGED = 0
AT_BOUND = next(code for code, name in STATUS_NAMES.items() if name == "at_bound")
OUT_OF_RANGE = next(code for code, name in STATUS_NAMES.items() if name == "out_of_range")
ABSENT = 255


@dataclass
class FitTable:
    """Fitted peaks, one numpy array per column.

    For a single lineout every array has shape ``(n_peaks,)``; for a stack of lineouts a leading
    ``n_curves`` axis is added: ``(n_curves, n_peaks)``. Slot k is the k-th requested position
    (given positions) or the k-th kept peak ordered by centre (auto-detection, padded with
    ``status == 255`` "absent" rows up to ``auto``).

    Attributes
    ----------
    area, center, sig, gam, fwhm, eta_mix, chi2 : ndarray of float64
        The MIDAS fit.bin columns: integrated area, centre (x units), centi-scaled Gaussian
        ``sig`` and Lorentzian ``gam``, TCH total FWHM Γ (x units), Lorentzian fraction η and
        the reduced χ² of the job (ROI) the peak was fitted in. NaN unless ``status == 0``.
    area_err, center_err, sig_err, gam_err, fwhm_err, eta_mix_err : ndarray of float64
        Standard errors from the fit covariance (FWHM, η by the delta method; see the module
        docs); NaN where the covariance is singular, the fit failed, or the parameter itself
        ended on a bound (typically ``gam`` on its floor for a Gaussian peak).
    status : ndarray of uint8
        0 converged, 1 max_iterations, 2 non_finite, 3 out_of_range, 4 insufficient_data (too
        few finite points, or the peak's own bin is NaN), 5 too_many_peaks, 6 no_peak (constant
        data, or the area fell to 0), 7 at_bound (a parameter stopped on a non-physical limit of
        the starting box: background, area cap, centre, width cap; usually a peak wider than its
        ROI), 255 absent (see :data:`STATUS_NAMES`).
    status_name : ndarray of str
        ``status`` as names.
    iterations : ndarray of uint32
        Accepted Levenberg–Marquardt steps.
    n_found : ndarray of int or None
        Auto-detection only: kept peaks per lineout, shape ``()`` or ``(n_curves,)``.
    background : ndarray or None
        Auto-detection only: the SNIP background subtracted before fitting, shape of y.
    center_two_theta_deg, center_q, center_d_angstrom, fwhm_deg : ndarray or None
        Set by :func:`fit_result`: centre as 2θ (deg), Q (Å⁻¹), d (Å) (NaN without a
        wavelength) and the FWHM in degrees 2θ.
    center_two_theta_deg_err, center_q_err, center_d_angstrom_err, fwhm_deg_err : ndarray or None
        Their standard errors, propagated from ``center_err``/``fwhm_err`` through the px → 2θ
        → Q, d conversion (first order: the conversion's derivative at the centre times the px
        error; the FWHM's from both its ends, the centre–FWHM covariance taken as 0, which it
        is for a symmetric profile).
    metadata : dict
        Free-form extras, empty by default: :func:`with_units` sets ``"wavelength_angstrom"``
        (float, 0.0 without a configuration) and :meth:`FitSpec.apply` sets ``"fit_spec"`` (the
        :class:`FitSpec` that made the table).
    """

    area: np.ndarray
    center: np.ndarray
    sig: np.ndarray
    gam: np.ndarray
    fwhm: np.ndarray
    eta_mix: np.ndarray
    chi2: np.ndarray
    status: np.ndarray
    area_err: np.ndarray
    center_err: np.ndarray
    sig_err: np.ndarray
    gam_err: np.ndarray
    fwhm_err: np.ndarray
    eta_mix_err: np.ndarray
    status_name: np.ndarray
    iterations: np.ndarray
    n_found: np.ndarray | None = None
    background: np.ndarray | None = None
    center_two_theta_deg: np.ndarray | None = None
    center_q: np.ndarray | None = None
    center_d_angstrom: np.ndarray | None = None
    fwhm_deg: np.ndarray | None = None
    center_two_theta_deg_err: np.ndarray | None = None
    center_q_err: np.ndarray | None = None
    center_d_angstrom_err: np.ndarray | None = None
    fwhm_deg_err: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _from_core(cls, d: dict[str, Any], single: bool) -> FitTable:
        values, errors = d["values"], d["errors"]
        status = d["status"]
        pick = (lambda a: a[0]) if single else (lambda a: a)
        names = np.array(
            [STATUS_NAMES.get(int(s), f"unknown_{s}") for s in status.ravel()], dtype=np.str_
        )
        cols = {c: pick(values[..., i]) for i, c in enumerate(COLUMNS)}
        errs = {f"{c}_err": pick(errors[..., i]) for i, c in enumerate(COLUMNS[:-1])}
        counts = d.get("counts")
        bg = d.get("background")
        return cls(
            **cols,
            **errs,
            status=pick(status),
            status_name=pick(names.reshape(status.shape)),
            iterations=pick(d["iterations"]),
            n_found=None if counts is None else pick(counts.astype(np.int64)),
            background=None if bg is None else pick(bg),
        )

    @property
    def is_stack(self) -> bool:
        """True when the columns carry a leading ``n_curves`` axis."""
        return self.center.ndim == 2

    @property
    def n_peaks(self) -> int:
        """Peak slots per lineout."""
        return int(self.center.shape[-1])

    @property
    def n_curves(self) -> int:
        """Number of lineouts (1 for a single lineout)."""
        return int(self.center.shape[0]) if self.is_stack else 1

    @property
    def converged(self) -> np.ndarray:
        """Boolean mask of the slots whose fit converged."""
        return self.status == CONVERGED

    def rows(self) -> np.ndarray:
        """The MIDAS fit.bin rows, shape ``(..., n_peaks, 7)`` float64 (NaN rows for failures)."""
        return np.stack([getattr(self, c) for c in COLUMNS], axis=-1).astype(np.float64)


def _as_float(name: str, a: Any, ndims: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iuf":
        raise InvalidInputError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ShapeError(f"{name}: expected a {want} array, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def fit_peaks(
    x: Any,
    y: Any,
    positions: Any = None,
    auto: int | None = None,
    roi_padding: int = FIT_ROI_PADDING,
    auto_roi: bool = False,
    snip_iterations: int = SNIP_ITERATIONS,
    max_iterations: int = MAX_ITERATIONS,
    max_peaks_per_job: int = MAX_PEAKS_PER_JOB,
    n_threads: int | None = None,
    bin_average: bool = True,
    bin_width_px: float | None = None,
) -> FitTable:
    """Fit pseudo-Voigt peaks in one lineout or a stack of lineouts.

    Parameters
    ----------
    x : array_like, shape (n_x,)
        Bin centres, finite and strictly increasing (any unit; results are in this unit).
    y : array_like, shape (n_x,) or (n_curves, n_x)
        Intensities; NaN bins (masked/empty) are left out of the fit.
    positions : sequence of float, optional
        Approximate peak centres (x units), each snapped to the nearest bin (within 2 bins, else
        ``out_of_range``). Peaks whose ROIs overlap are fitted together in one job.
    auto : int, optional
        Instead of ``positions``: detect (SNIP + Savitzky–Golay) and fit up to ``auto`` peaks.
        A candidate must stand 6 σ above the col towards its nearest higher neighbour (within
        ±15 bins), σ being the lineout's noise estimated from the data (NaN and 0-filled bins
        left out; on bins narrower than a pixel, times how much noisier the candidate's own
        ~128-bin stretch is than the median stretch); pure noise reaches ~4 σ, so a flat
        lineout gives no peaks.
    roi_padding : int
        ROI half-width in bins (MIDAS ``FitROIPadding``).
    auto_roi : bool
        ``FitROIAuto``: padding = max(15, 1.5 · largest estimated FWHM in bins).
    snip_iterations : int
        ``SNIPIterations`` of the auto-detection background.
    max_iterations : int
        Levenberg–Marquardt step limit (status ``max_iterations`` beyond it).
    max_peaks_per_job : int
        Most peaks fitted together: a chain of overlapping ROIs with more is cut into jobs of at
        most this many at its widest gaps between neighbouring peaks (each part's ROI ends
        half-way across the gap).
    n_threads : int, optional
        Threads (default: all cores). The GIL is released while fitting.
    bin_average : bool
        Model each point as the mean of the peak profile over its bin (edges halfway between the
        centres in ``x``), which is what an integrated lineout holds (default). False: MIDAS's
        model, the profile's value at the bin centre, which widens FWHMs by the bin
        (~Δ²/(12σ²) relatively) and for peaks of FWHM ≲ 2 bins biases FWHM, area and their
        errors (see the module docs).
    bin_width_px : float, optional
        With ``auto``: the radial bins' width in detector pixels (:func:`fit_result` and the
        per-η fits take it from the result; None: a pixel or more). Bins narrower than a pixel
        share each pixel's counts, so their noise moves in humps about a pixel wide. On bins of
        a quarter pixel or less, peaks are detected on the lineout averaged ⌊0.5/width⌋ bins
        at a time (about half a pixel each; ROIs ``roi_padding`` of the lineout's bins, at least
        10 of those; lineouts of at least 16 such bins) and fitted again on the lineout itself at
        the centres found there; on the bins detection runs on, where narrower than a pixel, the
        noise σ of the 6 σ test is also read from the lineout's own noise maxima. A NaN or
        negative width is refused.

    Returns
    -------
    FitTable
        Columns of shape ``(n_peaks,)``, or ``(n_curves, n_peaks)`` for a 2-D ``y``.

    Raises
    ------
    ShapeError
        ``x``/``y`` shapes do not fit together.
    InvalidInputError
        Neither or both of ``positions``/``auto``, non-increasing or non-finite ``x``, bad options.
    """
    return _fit_peaks(x, y, positions, auto, roi_padding, auto_roi, snip_iterations,
                      max_iterations, max_peaks_per_job, n_threads, bin_average, bin_width_px)  # fmt: skip


def _fit_peaks(
    x: Any,
    y: Any,
    positions: Any,
    auto: int | None,
    roi_padding: int,
    auto_roi: bool,
    snip_iterations: int,
    max_iterations: int,
    max_peaks_per_job: int,
    n_threads: int | None,
    bin_average: bool,
    bin_width_px: float | None,
    described: Callable[[np.ndarray], str] | None = None,
) -> FitTable:
    """:func:`fit_peaks`; ``described(positions)`` names out-of-range positions in the
    caller's terms (default: in ``x``'s)."""
    if (positions is None) == (auto is None):
        raise InvalidInputError("fit_peaks: give exactly one of positions= or auto=")
    xs = _as_float("x", x, (1,))
    ys = _as_float("y", y, (1, 2))
    single = ys.ndim == 1
    if ys.shape[-1] != xs.shape[0]:
        raise ShapeError(
            f"y: expected last axis of length {xs.shape[0]} (len(x)), got shape {ys.shape}"
        )
    n_threads = check_n_threads(n_threads)
    for name, v in (("roi_padding", roi_padding), ("snip_iterations", snip_iterations)):
        if int(v) < 0:
            raise InvalidInputError(f"fit_peaks: {name} must be >= 0, got {v}")
    for name, v in (("max_iterations", max_iterations), ("max_peaks_per_job", max_peaks_per_job)):
        if int(v) < 1:
            raise InvalidInputError(f"fit_peaks: {name} must be >= 1, got {v}")
    ys2 = ys.reshape(1, -1) if single else ys
    # No curves (a 0-frame stack): the table's columns from one curve of NaN, then no rows.
    no_curves = ys2.shape[0] == 0
    if no_curves:
        ys2 = np.full((1, xs.shape[0]), np.nan)
    if auto is not None:
        if int(auto) < 1:
            raise InvalidInputError(f"fit_peaks: auto must be >= 1 peaks, got {auto}")
        d = _core.fit_auto(
            xs,
            ys2,
            int(auto),
            # Windows past half the lineout clip nothing: a larger count is the same, and
            # held to the lineout's length it always fits the core's integer.
            snip_iterations=min(int(snip_iterations), xs.shape[0]),
            roi_padding=int(roi_padding),
            auto_roi=bool(auto_roi),
            max_iterations=int(max_iterations),
            n_threads=n_threads,
            bin_average=bool(bin_average),
            bin_width_px=0.0 if bin_width_px is None else float(bin_width_px),
        )
    else:
        try:
            pos = np.atleast_1d(np.asarray(positions, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"positions: expected numbers, got {positions!r}") from e
        if pos.ndim != 1:
            raise ShapeError(f"positions: expected a 1-D sequence, got shape {pos.shape}")
        unique, slots = unique_positions(pos, "fit_peaks")
        d = _core.fit_peaks(
            xs,
            ys2,
            unique.tolist(),
            roi_padding=int(roi_padding),
            auto_roi=bool(auto_roi),
            max_iterations=int(max_iterations),
            max_peaks_per_job=int(max_peaks_per_job),
            n_threads=n_threads,
            bin_average=bool(bin_average),
        )
    if no_curves:
        d = {k: np.asarray(v)[:0] for k, v in d.items()}
    table = FitTable._from_core(d, single)
    if auto is None:
        warn_out_of_range(unique, table.status, xs, described)
        if len(slots) != len(unique):
            table = _take_slots(table, slots)
    if not auto_roi:
        _warn_wide_peaks(table, roi_padding * float(np.median(np.diff(xs))))
    return table


def warn_out_of_range(
    positions: np.ndarray,
    status: np.ndarray,
    x: np.ndarray,
    described: Callable[[np.ndarray], str] | None = None,
) -> None:
    """Warn once about requested positions the fit found outside the lineout ``x``;
    ``described(values)`` writes positions (and the lineout's ends) in the caller's terms."""
    outside = positions[(np.atleast_2d(status) == OUT_OF_RANGE).any(axis=0)]
    if outside.size:
        say = described or (lambda v: ", ".join(f"{p:g}" for p in v))
        warn_once(
            ("positions out of range", tuple(outside), x[0], x[-1]),
            "fit: peak position(s) %s lie outside the lineout (%s .. %s): not fitted "
            "(status out_of_range)",
            say(outside), say(x[:1]), say(x[-1:]),
        )  # fmt: skip


def unique_positions(positions: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """``(unique, slots)``: the positions without repeats, in their first order, and the index
    into ``unique`` of each given position. Two peaks started at one place split its intensity
    between them arbitrarily (half the area each, or a sliver and the rest), so a position
    given twice (a ring listed twice, a repeated ``PeakLocation``) is fitted once."""
    _, first, slots = np.unique(positions, return_index=True, return_inverse=True)
    order = np.argsort(first)  # np.unique sorts; keep the caller's order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    unique = positions[np.sort(first)]
    if len(unique) != len(positions):
        counts = np.bincount(slots)
        repeated = [
            f"{v:g} ({n} times)" for v, n in zip(unique, counts[order], strict=True) if n > 1
        ]
        warn_once(
            (caller, "repeated positions", tuple(repeated)),
            "%s: peak position(s) given more than once: %s; each is fitted once (two peaks "
            "started at one place would split its intensity between them)",
            caller, ", ".join(repeated),
        )  # fmt: skip
    return unique, rank[slots.ravel()]


def _take_slots(table: FitTable, slots: np.ndarray) -> FitTable:
    """``table`` with its peak slots (last axis) picked by ``slots``."""
    picked: dict[str, Any] = {
        f.name: np.take(getattr(table, f.name), slots, axis=-1)
        for f in dataclasses.fields(table)
        if f.name not in ("n_found", "background", "metadata")
        and getattr(table, f.name) is not None
    }
    return dataclasses.replace(table, **picked)


def _warn_wide_peaks(table: FitTable, half_width: float) -> None:
    """Warn once when converged peaks are wider than their fixed ROI's half-width: the
    background then takes up the peak's tails and area and FWHM come out biased (their errors
    do not show it), which a FitROIAuto ROI avoids; and when at least half the fits ended on
    a bound (peaks too wide for the ROI: all NaN rows otherwise without a word)."""
    ok = table.status == CONVERGED
    bound = table.status == AT_BOUND
    if bound.any() and bound.sum() * 2 >= np.count_nonzero(table.status != ABSENT):
        warn_once(
            ("peaks at bound", half_width),
            "%d of %d peak fit(s) ended on a bound of their ROI (status at_bound, NaN rows): "
            "peaks wider than the ROI (%.4g either side: FitROIPadding bins) cannot be fitted "
            "in it; raise FitROIPadding, or FitROIAuto 1 (auto_roi=True)",
            int(bound.sum()), int(np.count_nonzero(table.status != ABSENT)), half_width,
        )  # fmt: skip
    wide = ok & (np.abs(table.fwhm) > half_width)
    if wide.any():
        warn_once(
            ("wide peaks", half_width),
            "%d of %d converged peak(s) are wider (FWHM up to %.4g) than their ROI's half-width "
            "(%.4g: FitROIPadding bins either side): area and FWHM are biased; fit with a "
            "larger FitROIPadding, or FitROIAuto 1 (auto_roi=True; not read under "
            "compat='midas-cpu', as IntegratorZarrOMP)",
            int(wide.sum()), int(ok.sum()), float(np.nanmax(np.abs(table.fwhm)[wide])),
            half_width,
        )  # fmt: skip


def _r_from_two_theta_px(result: Result, tth_deg: np.ndarray) -> np.ndarray:
    cfg = result.config
    if cfg is not None:
        return np.tan(np.radians(tth_deg)) * cfg.lsd_um / cfg.pixel_size_y_um
    return np.interp(tth_deg, result.two_theta_deg, result.radius_px)


def _two_theta_deg(result: Result, r_px: np.ndarray) -> np.ndarray:
    if result.config is not None:
        return result.config.two_theta_deg(r_px)
    return np.interp(r_px, result.radius_px, result.two_theta_deg, left=np.nan, right=np.nan)


def _two_theta_slope(result: Result, r_px: np.ndarray) -> np.ndarray:
    """d(2θ)/dR in degrees per pixel at ``r_px``: exact for ``atan(R·px/Lsd)``, else the slope of
    the piecewise-linear 2θ column the result holds (a MIDAS caked.hdf without configuration)."""
    r = np.asarray(r_px, dtype=np.float64)
    if result.config is not None:
        k = result.config.pixel_size_y_um / result.config.lsd_um
        return np.degrees(k / (1 + (k * r) ** 2))
    h = 1e-3
    return (_two_theta_deg(result, r + h) - _two_theta_deg(result, r - h)) / (2 * h)


def fit_result(
    result: Result,
    positions_px: Any = None,
    auto: int | None = None,
    positions_two_theta_deg: Any = None,
    roi_padding: int = FIT_ROI_PADDING,
    auto_roi: bool = False,
    snip_iterations: int = SNIP_ITERATIONS,
    max_iterations: int = MAX_ITERATIONS,
    n_threads: int | None = None,
    bin_average: bool = True,
) -> FitTable:
    """Fit peaks in the lineout(s) of an integration :class:`~radint.result.Result`.

    Fits ``result.lineout`` (shape ``(n_r,)`` or ``(n_frames, n_r)``) against
    ``result.radius_px`` — the x axis of MIDAS fits — and adds the centre in 2θ, Q and d and the
    FWHM in degrees 2θ (``atan(R·px/Lsd)``, via ``result.config``).

    Parameters
    ----------
    result : Result
    positions_px : sequence of float, optional
        Peak positions as radii in pixels (MIDAS ``PeakLocation``).
    auto : int, optional
        Detect and fit up to this many peaks instead.
    positions_two_theta_deg : sequence of float, optional
        Peak positions in degrees 2θ (converted to R px).
    roi_padding, auto_roi, snip_iterations, max_iterations, n_threads, bin_average
        As in :func:`fit_peaks`.

    Returns
    -------
    FitTable
        With ``center``/``fwhm`` in R px plus ``center_two_theta_deg``, ``center_q``,
        ``center_d_angstrom`` and ``fwhm_deg``; a stack result gives ``(n_frames, n_peaks)``.
    """
    if positions_two_theta_deg is not None:
        if positions_px is not None:
            raise InvalidInputError(
                "fit_result: give positions_px= or positions_two_theta_deg=, not both"
            )
        positions_px = _r_from_two_theta_px(
            result, np.asarray(positions_two_theta_deg, dtype=np.float64)
        )

    def described(r_px: np.ndarray) -> str:
        # A position given in 2θ is named in 2θ (the user's number), with its R.
        two_theta = _two_theta_deg(result, r_px)
        if positions_two_theta_deg is None:
            return ", ".join(f"R {r:g} px" for r in r_px)
        return ", ".join(f"2θ {t:g}° (R {r:g} px)" for t, r in zip(two_theta, r_px, strict=True))

    table = _fit_peaks(result.radius_px, result.lineout, positions_px, auto, roi_padding,
                       auto_roi, snip_iterations, max_iterations, MAX_PEAKS_PER_JOB, n_threads, bin_average,
                       radial_bin_width_px(result), described)  # fmt: skip
    return with_units(table, result)


def radial_bin_width_px(result: Result) -> float | None:
    """Median width of ``result``'s radial bins in detector pixels (``r_edges_px``; None
    without finite ones): ``bin_width_px`` of :func:`fit_peaks`."""
    widths = np.diff(np.asarray(result.r_edges_px, dtype=np.float64))
    widths = widths[np.isfinite(widths)]
    return float(np.median(widths)) if widths.size else None


def with_units(table: FitTable, result: Result) -> FitTable:
    """Add the centre in 2θ, Q and d and the FWHM in degrees 2θ to a table fitted against
    ``result.radius_px`` (``atan(R·px/Lsd)``, via ``result.config``).

    Without a configuration 2θ is interpolated in the result's ``radius_px``/``two_theta_deg``
    columns (NaN outside them); without a positive wavelength Q and d (and their errors) are NaN.

    Parameters
    ----------
    table : FitTable
        Fitted with ``center``/``fwhm`` in R pixels on ``result.radius_px`` (single or stack).
        Changed in place: its 2θ, Q, d and FWHM-in-degrees columns and their ``*_err`` columns
        are set, and ``metadata["wavelength_angstrom"]`` (0.0 without a configuration).
    result : Result
        The result the table was fitted from; ``result.config`` gives the distance ``Lsd``
        (um), pixel size (um) and wavelength (Angstrom).

    Returns
    -------
    FitTable
        ``table`` itself: ``center_two_theta_deg`` and ``fwhm_deg`` in degrees 2θ,
        ``center_q`` in Å⁻¹, ``center_d_angstrom`` in Å, each with its standard error.
    """
    c, w = table.center, table.fwhm
    table.center_two_theta_deg = _two_theta_deg(result, c)
    table.fwhm_deg = _two_theta_deg(result, c + w / 2) - _two_theta_deg(result, c - w / 2)
    wavelength = 0.0 if result.config is None else float(result.config.wavelength_angstrom)
    theta = np.radians(table.center_two_theta_deg) / 2
    if wavelength > 0:
        table.center_q = 4 * math.pi / wavelength * np.sin(theta)
        with np.errstate(divide="ignore", invalid="ignore"):
            table.center_d_angstrom = wavelength / (2 * np.sin(theta))
    else:
        table.center_q = np.full_like(c, np.nan)
        table.center_d_angstrom = np.full_like(c, np.nan)
    table.metadata["wavelength_angstrom"] = wavelength
    # Errors: first-order propagation of the px errors (see the FitTable attributes).
    slope = _two_theta_slope(result, c)
    c_err, w_err = np.asarray(table.center_err), np.asarray(table.fwhm_err)
    table.center_two_theta_deg_err = np.abs(slope) * c_err
    hi, lo = _two_theta_slope(result, c + w / 2), _two_theta_slope(result, c - w / 2)
    table.fwhm_deg_err = np.hypot((hi + lo) / 2 * w_err, (hi - lo) * c_err)
    dtheta_rad = np.radians(table.center_two_theta_deg_err) / 2  # σ of θ in radians
    if wavelength > 0:
        table.center_q_err = 4 * math.pi / wavelength * np.abs(np.cos(theta)) * dtheta_rad
        with np.errstate(divide="ignore", invalid="ignore"):
            table.center_d_angstrom_err = (
                wavelength * np.abs(np.cos(theta)) / (2 * np.sin(theta) ** 2) * dtheta_rad
            )
    else:
        table.center_q_err = np.full_like(c, np.nan)
        table.center_d_angstrom_err = np.full_like(c, np.nan)
    return table


def write_fit_bin(table: FitTable, path: str | Path) -> Path:
    """Write MIDAS ``fit.bin`` (spec §6.5): per frame, 7 little-endian float64 per peak.

    Rows are ``[area, center, sig, gam, fwhm, eta_mix, chi2]``, frames one after another. Given
    positions keep every slot per frame (a failed or out-of-range peak is a NaN row, where the
    C integrator drops positions more than 2 bins outside the R range), so the file is
    ``n_frames × n_peaks × 7`` doubles, in slot order (parameter-file positions are sorted by R
    as in PeakFit.c); auto-detection writes only the peaks found in each frame (like the MIDAS
    GPU integrator), so frames may differ in length. Atomic.

    Parameters
    ----------
    table : FitTable
        Single-lineout (``(n_peaks,)``, written as one frame) or stacked (``(n_frames,
        n_peaks)``) table; slots with ``status == 255`` (absent) are left out.
    path : str or Path
        File to write (replaced if it exists); its parent directory must exist.

    Returns
    -------
    Path
        ``path``.
    """
    from radint.io.atomic import atomic_output

    rows = table.rows()
    if rows.ndim == 2:
        rows = rows[None]
    status = np.asarray(table.status).reshape(rows.shape[:2])
    keep = status != ABSENT
    data = np.concatenate([rows[i][keep[i]] for i in range(rows.shape[0])], axis=0)
    path = Path(path)
    with atomic_output(path) as tmp:
        np.ascontiguousarray(data, dtype="<f8").tofile(tmp)
    return path


def read_fit_bin(path: str | Path, n_peaks: int | None = None) -> np.ndarray:
    """Read a ``fit.bin``: shape ``(n_rows, 7)``, or ``(n_frames, n_peaks, 7)`` given ``n_peaks``.

    Parameters
    ----------
    path : str or Path
        The file: little-endian float64, 7 per row (:data:`COLUMNS` order).
    n_peaks : int, optional
        Rows per frame, to split the rows into frames. Default None: the rows unsplit.

    Returns
    -------
    ndarray of float64
        Shape ``(n_rows, 7)``, or ``(n_frames, n_peaks, 7)`` given ``n_peaks``.

    Raises
    ------
    RadintFileNotFoundError
        ``path`` does not exist.
    RadintIOError
        ``path`` cannot be read.
    ShapeError
        The number of doubles is not a multiple of 7, or ``n_peaks`` is below 1 or does not
        divide the number of rows.
    """
    try:
        data = np.fromfile(path, dtype="<f8")
    except FileNotFoundError as e:
        raise RadintFileNotFoundError(f"{path}: no such fit.bin") from e
    except OSError as e:
        raise RadintIOError(f"{path}: cannot read ({e.strerror or e})") from e
    if data.size % 7:
        raise ShapeError(f"{path}: {data.size} doubles is not a multiple of 7 (one row per peak)")
    rows = data.reshape(-1, 7)
    if n_peaks is None:
        return rows
    if n_peaks < 1 or rows.shape[0] % n_peaks:
        raise ShapeError(f"{path}: {rows.shape[0]} rows do not split into frames of {n_peaks}")
    return rows.reshape(-1, n_peaks, 7)


def write_caked_peaks_h5(table: FitTable, result: Result, path: str | Path) -> Path:
    """Write ``caked_peaks.h5`` (spec §9.4) from lineout fits, atomically.

    Layout: ``/metadata`` (attr ``zarr_source``; ``tth_axis`` (n_r,), ``eta_axis`` (n_eta,),
    ``frame_keys`` vlen str) and ``/peaks/{frame_idx, eta_idx, peak_nr}`` int32,
    ``{eta_deg, center_2theta, area, sig, gam, FWHM_deg, eta_mix, d_spacing_A, chi_sq}`` float64,
    ``frame_key`` vlen str (PeakFitIO.c's layout, :func:`radint.io.peaks.write_caked_peaks`)
    — one row per converged peak (``peak_nr`` = slot, so failures show as
    gaps); ``/peaks`` is omitted when there are none. Lineout rows have ``eta_idx = 0`` and
    ``eta_deg = 0`` as in the MIDAS GPU writer. Difference from MIDAS: ``FWHM_deg`` holds the FWHM
    in degrees 2θ, as its name says (MIDAS stores Γ in pixels there). IntegratorZarrOMP's
    own file holds per-η fits instead: :func:`radint.io.peaks.write_caked_peaks_per_eta`.

    ``table`` must come from :func:`fit_result` on ``result`` (it needs the 2θ columns).

    Parameters
    ----------
    table : FitTable
        Single or stacked lineout fits with the 2θ columns (:func:`fit_result`,
        :func:`with_units`); ``d_spacing_A`` is NaN where ``center_d_angstrom`` is None.
    result : Result
        The result fitted: gives the axes (``two_theta_deg``, ``eta_deg``, degrees), the frame
        keys (``frame_ids`` when there is one per lineout, else ``"0"``, ``"1"``, ...) and
        ``zarr_source`` (``metadata["source"]``, empty when not set).
    path : str or Path
        File to write (replaced if it exists); its parent directory must exist.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InvalidInputError
        ``table`` has no 2θ columns (``center_two_theta_deg`` or ``fwhm_deg`` is None).
    """
    from radint.io.peaks import write_caked_peaks

    if table.center_two_theta_deg is None or table.fwhm_deg is None:
        raise InvalidInputError("write_caked_peaks_h5: table has no 2θ columns; use fit_result()")

    def frames(a: np.ndarray) -> np.ndarray:
        return np.asarray(a).reshape(table.n_curves, table.n_peaks)

    ok = frames(table.status) == CONVERGED
    n_frames = table.n_curves
    if result.frame_ids is not None and len(result.frame_ids) == n_frames:
        keys = [str(k) for k in np.asarray(result.frame_ids).tolist()]
    else:
        keys = [str(i) for i in range(n_frames)]
    fi, pk = np.nonzero(ok)
    d_spacing = table.center_d_angstrom
    columns = {
        "frame_idx": fi.astype(np.int32),
        "eta_idx": np.zeros(fi.size, np.int32),
        "peak_nr": pk.astype(np.int32),
        "eta_deg": np.zeros(fi.size),
        "center_2theta": frames(table.center_two_theta_deg)[ok],
        "area": frames(table.area)[ok],
        "sig": frames(table.sig)[ok],
        "gam": frames(table.gam)[ok],
        "FWHM_deg": frames(table.fwhm_deg)[ok],
        "eta_mix": frames(table.eta_mix)[ok],
        "d_spacing_A": np.full(fi.size, np.nan) if d_spacing is None else frames(d_spacing)[ok],
        "chi_sq": frames(table.chi2)[ok],
    }
    return write_caked_peaks(
        path, columns, np.asarray(result.two_theta_deg, np.float64),
        np.asarray(result.eta_deg, np.float64), keys, str(result.metadata.get("source", "")),
        [keys[i] for i in fi],
    )  # fmt: skip


def snip_background(y: Any, iterations: int = 50) -> np.ndarray:
    """SNIP background (spec §6.3) of a lineout, shape ``(n_x,)``; NaN or ±inf bins (masked,
    empty) are first filled linearly from their finite neighbours (all non-finite: 0).

    Parameters
    ----------
    y : array_like, shape (n_x,)
        The lineout's intensities (real numbers).
    iterations : int
        SNIP iterations (MIDAS ``SNIPIterations``), default 50; counts above ``n_x`` clip
        nothing more and are taken as ``n_x``.

    Returns
    -------
    ndarray of float64, shape (n_x,)
        The background, in the units of ``y``.

    Raises
    ------
    InvalidInputError
        ``y`` is not real numeric, or ``iterations`` is negative.
    ShapeError
        ``y`` is not 1-D.
    """
    ys = _as_float("y", y, (1,))
    if int(iterations) < 0:
        raise InvalidInputError(f"snip_background: iterations must be >= 0, got {iterations}")
    # Windows past half the lineout clip nothing (see fit_peaks).
    return _core.snip_background(ys, min(int(iterations), ys.shape[0]))


def fit_pv(
    x: Any,
    y: Any,
    centers: Any,
    max_iterations: int = MAX_ITERATIONS,
    n_threads: int | None = None,
    bounds: str = "radint",
) -> dict[str, np.ndarray]:
    """Height-normalised pseudo-Voigt fits (spec §6.4), e.g. per η bin of a cake.

    Parameters
    ----------
    x : array_like, shape (n_x,)
    y : array_like, shape (n_x,) or (n_curves, n_x)
        One curve per row (e.g. ``result.cake`` rows, η-major); NaN points are left out.
    centers : float or array_like, shape (n_curves,)
        Starting centre of each curve (x units).
    bounds : {"radint", "midas"}
        The box and start: radint's (FWHM up to the window's span, height from the data's
        range) or IntegratorZarrOMP's (``pf_fit_singlet_pv``: Γ in [bin/2, bin·n/2] from 3
        bins, Imax in [(max − bg₀)/100, 1.5·max], bg in [0, 1.5·bg₀], bg₀ the end points'
        mean), whose Γ cap pins a ring wider than half the window where radint fits it.
    max_iterations : int
        Levenberg–Marquardt steps per fit (status ``max_iterations`` beyond).
    n_threads : int, optional
        Threads fitting the curves (default: all cores).

    Returns
    -------
    dict
        ``params``/``std_errors`` ``(..., 5)`` as ``[bg, imax, center, fwhm, mu]`` (NaN unless
        converged), ``snr`` ``Imax/sqrt(SSR/N)`` and ``status`` (uint8), per curve.
    """
    xs = _as_float("x", x, (1,))
    ys = _as_float("y", y, (1, 2))
    single = ys.ndim == 1
    ys2 = ys.reshape(1, -1) if single else ys
    if ys2.shape[1] != xs.shape[0]:
        raise ShapeError(
            f"y: expected last axis of length {xs.shape[0]} (len(x)), got shape {ys.shape}"
        )
    c = np.asarray(centers, dtype=np.float64)
    if c.ndim > 1 or (c.ndim == 1 and c.size != ys2.shape[0]):
        raise ShapeError(
            f"centers: expected a scalar or {ys2.shape[0]} values (one per curve), got {c.shape}"
        )
    c = np.ascontiguousarray(np.broadcast_to(c, (ys2.shape[0],)))
    d = _core.fit_pv(xs, ys2, c, max_iterations=int(max_iterations),
                     n_threads=check_n_threads(n_threads),
                     bounds=_pv_bounds(bounds))  # fmt: skip
    return {k: v[0] for k, v in d.items()} if single else dict(d)


def _pv_bounds(bounds: str) -> str:
    if bounds not in ("radint", "midas"):
        raise InvalidInputError(f"bounds must be 'radint' or 'midas', got {bounds!r}")
    return bounds


#: Parameters of :func:`fit_pv_doublet`, in order (as MIDAS's ``pf_fit_doublet_pv``).
DOUBLET_PARAMS = ("center1", "center2", "mu", "fwhm1", "imax1", "fwhm2", "imax2", "bg")


def _doublet_model(x: np.ndarray, p: np.ndarray, jac: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Height-normalised pV doublet (spec §6.4) of parameters ``p`` (m, 8) on ``x`` (n,):
    values (m, n) and, with ``jac``, the Jacobian (m, n, 8)."""
    c1, c2, mu, g1, a1, g2, a2, bg = (p[:, k : k + 1] for k in range(8))
    total = np.broadcast_to(bg, (p.shape[0], x.size)).copy()
    parts = []
    for c, g, a in ((c1, g1, a1), (c2, g2, a2)):
        d = x - c
        u = 4.0 * d * d / (g * g)
        lor = 1.0 / (1.0 + u)
        gau = np.exp(-math.log(2.0) * u)
        shape = mu * lor + (1.0 - mu) * gau
        total += a * shape
        parts.append((d, g, a, lor, gau, shape))
    if not jac:
        return total, None
    j = np.empty((*total.shape, 8))
    for k, (d, g, a, lor, gau, shape) in enumerate(parts):
        dshape_du = -mu * lor * lor - (1.0 - mu) * math.log(2.0) * gau
        j[..., k] = a * dshape_du * (-8.0 * d / (g * g))  # centre
        j[..., 3 + 2 * k] = a * dshape_du * (-8.0 * d * d / (g * g * g))  # fwhm
        j[..., 4 + 2 * k] = shape  # imax
    (_, _, a1_, l1, gg1, _), (_, _, a2_, l2, gg2, _) = parts
    j[..., 2] = a1_ * (l1 - gg1) + a2_ * (l2 - gg2)
    j[..., 7] = 1.0
    return total, j


def fit_pv_doublet(
    x: Any, y: Any, low: float, high: float, max_iterations: int = 200, bounds: str = "radint"
) -> dict[str, np.ndarray]:
    """Two height-normalised pseudo-Voigts with a shared mixing μ and background (spec §6.4,
    MIDAS ``pf_fit_doublet_pv``), fitted to each curve of ``y`` (e.g. the η rows of a cake).

    ``I = BG + Σₖ Imaxₖ[μ/(1+4Δₖ²/Γₖ²) + (1−μ)exp(−4 ln2 Δₖ²/Γₖ²)]``, Δₖ = x − centreₖ. As in
    MIDAS the centres are split at the midpoint ``m = (low + high)/2``: centre1 ∈ [x₀, m],
    centre2 ∈ [m, x_last]; starts at ``low`` and ``high``; each Imax ≥ (max − bg₀)/100 with
    bg₀ the mean of the end points (MIDAS's floor). Other bounds (radint's, as :func:`fit_pv`):
    Γ ∈ [bin/10, span], Imax ≤ 10·range, BG ∈ [min − range, max + range], μ ∈ [0, 1]. Fitted
    by a bounded Levenberg–Marquardt (analytic Jacobian, all curves at once) from two starts,
    radint's (heights at the starting centres over the minimum) and MIDAS's (half of max − bg₀
    each, BG bg₀), keeping the lower SSR; NaN points are left out, a curve needs 9 finite
    points. ``bounds="midas"`` takes IntegratorZarrOMP's box (Γ in [bin/2, bin·n/2], Imax in
    [(max − bg₀)/100, 1.5·max], BG in [0, 1.5·bg₀]) and its start (Γ 3 bins, half of max − bg₀
    each, BG bg₀) beside radint's, as :func:`fit_pv`.

    Parameters
    ----------
    x : array_like, shape (n_x,)
        Strictly increasing (R px for a cake).
    y : array_like, shape (n_x,) or (n_curves, n_x)
    low, high : float
        Starting centres, ``low <= high`` (x units; equal ones, e.g. a ``PeakLocation``
        given twice, start both centres at the midpoint, one on each side, as MIDAS fits them).
    max_iterations : int
        Levenberg–Marquardt steps per curve (status ``max_iterations`` beyond).
    bounds : {"radint", "midas"}
        The box and start described above.

    Returns
    -------
    dict
        ``params`` ``(..., 8)`` in :data:`DOUBLET_PARAMS` order (NaN unless converged),
        ``snr`` ``(..., 2)`` = ``Imaxₖ / sqrt(SSR/N)`` (MIDAS's per-peak SNR) and ``status``
        (uint8, as :data:`STATUS_NAMES`: 0 converged, 1 max_iterations, 2 non_finite,
        4 insufficient_data).
    """
    xs = _as_float("x", x, (1,))
    ys = _as_float("y", y, (1, 2))
    single = ys.ndim == 1
    ys2 = ys.reshape(1, -1) if single else ys
    if ys2.shape[1] != xs.size:
        raise ShapeError(f"y: expected last axis of length {xs.size} (len(x)), got {ys.shape}")
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise InvalidInputError(f"fit_pv_doublet: need finite low <= high, got {low}, {high}")
    if xs.size < 2 or np.any(np.diff(xs) <= 0):
        raise InvalidInputError("fit_pv_doublet: x must hold 2+ strictly increasing values")
    m = ys2.shape[0]
    w = np.isfinite(ys2)
    yz = np.where(w, ys2, 0.0)
    n_ok = w.sum(axis=1)
    status = np.where(n_ok >= 9, 0, 4).astype(np.uint8)
    big = np.finfo(np.float64).max
    ymin = np.where(w, ys2, big).min(axis=1, initial=big)
    ymax = np.where(w, ys2, -big).max(axis=1, initial=-big)
    rng = np.maximum(ymax - ymin, 1e-12)
    x0, x1 = float(xs[0]), float(xs[-1])
    span = x1 - x0
    step = span / (xs.size - 1)
    mid = 0.5 * (low + high)
    lo = np.column_stack([np.full(m, x0), np.full(m, mid), np.zeros(m), np.full(m, 0.1 * step),
                          np.zeros(m), np.full(m, 0.1 * step), np.zeros(m), ymin - rng])  # fmt: skip
    hi = np.column_stack([np.full(m, mid), np.full(m, x1), np.ones(m), np.full(m, span),
                          10 * rng, np.full(m, span), 10 * rng, ymax + rng])  # fmt: skip

    def height_at(c: float) -> np.ndarray:
        k = int(np.clip(np.searchsorted(xs, c), 0, xs.size - 1))
        return np.maximum(yz[:, k] - ymin, 0.1 * rng)

    g0 = min(3.0 * step, span)
    own = np.column_stack([np.full(m, low), np.full(m, high), np.full(m, 0.5), np.full(m, g0),
                           height_at(low), np.full(m, g0), height_at(high), ymin])  # fmt: skip
    # MIDAS's start (PeakFit.c pf_fit_doublet_pv): half the maximum over the end-point
    # background for each peak. In windows holding other rings it often reaches a lower
    # minimum than the start above (and the other way round), so both run, the lower kept.
    first = np.argmax(w, axis=1)
    last = xs.size - 1 - np.argmax(w[:, ::-1], axis=1)
    rows = np.arange(m)
    bg0 = np.maximum(0.5 * (yz[rows, first] + yz[rows, last]), 0.0)
    half = 0.5 * np.maximum(ymax - bg0, 1e-6)
    midas = own.copy()
    midas[:, 4], midas[:, 6], midas[:, 7] = half, half, bg0
    # MIDAS's floor on both heights (a hundredth of max − background): at Imax = 0 a peak's
    # centre and width have no gradient left, and the fit stalls with one peak gone.
    lo[:, 4] = lo[:, 6] = np.minimum(0.02 * half, hi[:, 4])
    if _pv_bounds(bounds) == "midas":  # PeakFit.c pf_fit_doublet_pv's box and start
        top = np.maximum(ymax, 0.0)
        midas[:, 3] = midas[:, 5] = 3.0 * step
        lo[:, 3] = lo[:, 5] = 0.5 * step
        hi[:, 3] = hi[:, 5] = 0.5 * step * xs.size
        hi[:, 4] = hi[:, 6] = 1.5 * top
        lo[:, 4] = lo[:, 6] = np.minimum(0.02 * half, hi[:, 4])
        lo[:, 7], hi[:, 7] = 0.0, np.where(bg0 > 0, 1.5 * bg0, 0.5 * top)
    # Both starts, in the one box; radint's is clipped into C's. Per curve: a converged fit
    # over a failed one, then the lower cost (from C's start alone LM can stall where C's
    # LBFGS does not, and the other way round).
    starts = np.concatenate([own, midas])
    lo2, hi2 = np.concatenate([lo, lo]), np.concatenate([hi, hi])
    p, cost, st = _doublet_lm(xs, starts, lo2, hi2, np.concatenate([yz, yz]),
                              np.concatenate([w, w]), np.concatenate([status, status]),
                              int(max_iterations))  # fmt: skip
    rank = np.where(st == 0, cost, np.inf).reshape(2, m)
    pick = np.where(rank[1] < rank[0], m + rows, rows)
    p, cost, status = p[pick], cost[pick], st[pick]
    ok = status == 0
    snr = np.full((m, 2), np.nan)
    rms = np.sqrt(cost / np.maximum(n_ok, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr[ok] = p[ok][:, [4, 6]] / rms[ok, None]
    params = np.where(ok[:, None], p, np.nan)
    out = {"params": params, "snr": snr, "status": status}
    return {k: v[0] for k, v in out.items()} if single else out


#: Steps over which a doublet fit whose cost no longer falls (relatively 1e-8) is converged.
STALL_ITERATIONS = 20


def _doublet_lm(
    xs: np.ndarray,
    p: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    yz: np.ndarray,
    w: np.ndarray,
    status: np.ndarray,
    max_iterations: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounded Levenberg–Marquardt of :func:`_doublet_model` on every curve from start ``p``
    (curves with ``status`` ≠ 0 are not fitted); returns the parameters, costs and statuses."""
    p = p.copy()
    status = status.copy()
    # Starts strictly inside the box (a centre on the midpoint bound could not move off it).
    pad = 1e-6 * (hi - lo)
    p = np.clip(p, lo + pad, hi - pad)
    active = status == 0
    p[~active] = 0.5 * (lo[~active] + hi[~active])
    m = p.shape[0]
    cost = _doublet_cost(xs, p, yz, w)
    lam = np.full(m, 1e-3)
    done = ~active
    iters = 0
    reference = cost.copy()
    while not done.all() and iters < max_iterations:
        iters += 1
        idx = np.flatnonzero(~done)
        pi = p[idx]
        model, jac = _doublet_model(xs, pi, jac=True)
        assert jac is not None
        r = (model - yz[idx]) * w[idx]
        jw = jac * w[idx][..., None]
        a = np.einsum("mni,mnj->mij", jw, jw)
        g = np.einsum("mni,mn->mi", jw, r)
        # Parameters on a bound that the gradient pushes further out are held there.
        held = ((pi <= lo[idx]) & (g > 0)) | ((pi >= hi[idx]) & (g < 0))
        g = np.where(held, 0.0, g)
        a = np.where(held[:, :, None] | held[:, None, :], 0.0, a)
        diag = np.einsum("mii->mi", a)
        damp = lam[idx, None] * np.maximum(diag, 1e-12 * diag.max(axis=1, keepdims=True))
        a_d = a + np.einsum("mi,ij->mij", damp + held, np.eye(8))
        try:
            delta = np.linalg.solve(a_d, -g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            delta = -g / np.maximum(np.einsum("mii->mi", a_d), 1e-300)
        trial = np.clip(pi + delta, lo[idx], hi[idx])
        new_cost = _doublet_cost(xs, trial, yz[idx], w[idx])
        better = np.isfinite(new_cost) & (new_cost < cost[idx])
        gain = cost[idx] - new_cost
        moved = np.abs(trial - pi) <= 1e-10 * (np.abs(pi) + 1e-10)
        p[idx[better]] = trial[better]
        conv = better & ((gain <= 1e-12 * cost[idx]) | moved.all(axis=1))
        cost[idx[better]] = new_cost[better]
        lam[idx] = np.where(better, lam[idx] / 3.0, lam[idx] * 4.0)
        # No step lowers the cost even with a tiny step: a minimum within the box.
        stuck = ~better & (lam[idx] > 1e12)
        bad = ~np.isfinite(cost[idx])
        status[idx[bad]] = 2
        done[idx[conv | stuck | bad]] = True
        if iters % STALL_ITERATIONS == 0:
            # Creeping along a narrow valley (a peak on a bound of the box): the cost fell by
            # less than 1e-8 of itself (C's ftol per step) over STALL_ITERATIONS steps: converged.
            done |= ~done & (reference - cost <= 1e-8 * np.abs(cost))
            reference = cost.copy()
    status[~done] = 1
    return p, cost, status


def _doublet_cost(x: np.ndarray, p: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    model, _ = _doublet_model(x, p, jac=False)
    return (((model - y) * w) ** 2).sum(axis=1)


@dataclass
class EtaPeaks:
    """Peaks fitted in every η bin of a cake (IntegratorZarrOMP's per-η fits, spec §6.5): one
    row per accepted peak, ordered by frame, η bin, then peak index — the rows of MIDAS's
    ``_fit_per_eta.csv`` and ``_caked_peaks.h5``.

    Attributes
    ----------
    frame, eta_bin, peak : ndarray of int64, shape (n_rows,)
        Frame position in the result, η bin, and peak index: the position's index in the list
        fitted (``PeakLocation`` order of the parameter file), or the k-th detected peak by R.
    eta_deg : ndarray, shape (n_rows,)
        η bin centre (deg).
    area, center, sig, gam, fwhm, eta_mix, chi2 : ndarray, shape (n_rows,)
        The fit.bin columns as IntegratorZarrOMP fills them: auto-detected peaks carry the TCH
        fit (``center``/``fwhm`` in R px, ``chi2`` its reduced χ²); for given positions (pV fits)
        only ``center`` is set, the others are 0 and ``chi2`` holds the fit's SNR.
    snr : ndarray, shape (n_rows,)
        ``Imax/sqrt(SSR/N)`` of the pV fit (NaN for auto-detected peaks).
    pv_fwhm, pv_mu, pv_imax, pv_background : ndarray, shape (n_rows,)
        The pV fit's Γ (R px), Lorentzian fraction, peak height and background (NaN for
        auto-detected peaks); not written to the MIDAS files, which have no column for them.
    center_two_theta_deg, center_d_angstrom, fwhm_deg : ndarray, shape (n_rows,)
        ``atan(R·px/Lsd)``, ``λ/(2 sin θ)`` (0 without a wavelength, as MIDAS) and the FWHM in
        degrees 2θ (0 where ``fwhm`` is 0).
    n_frames : int
        Frames of the result (rows exist only for accepted peaks). Default 0.
    eta_axis_deg, two_theta_axis_deg : ndarray
        The cake's η bin centres and the 2θ of its R bin centres (the HDF5 file's axes), in
        degrees. Default: empty.
    source : str
        The input the result came from (``zarr_source`` of the HDF5 file). Default ``""``.
    pixel_size_um : float
        For the CSV's ``R_um`` (NaN without a config, the default).
    """

    frame: np.ndarray
    eta_bin: np.ndarray
    peak: np.ndarray
    eta_deg: np.ndarray
    area: np.ndarray
    center: np.ndarray
    sig: np.ndarray
    gam: np.ndarray
    fwhm: np.ndarray
    eta_mix: np.ndarray
    chi2: np.ndarray
    snr: np.ndarray
    pv_fwhm: np.ndarray
    pv_mu: np.ndarray
    pv_imax: np.ndarray
    pv_background: np.ndarray
    center_two_theta_deg: np.ndarray
    center_d_angstrom: np.ndarray
    fwhm_deg: np.ndarray
    n_frames: int = 0
    eta_axis_deg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    two_theta_axis_deg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    source: str = ""
    pixel_size_um: float = math.nan

    @property
    def n_rows(self) -> int:
        """Accepted peaks over all frames and η bins."""
        return int(self.center.size)


#: Per-η rows need this many R bins of a profile that are neither 0 nor NaN (IntegratorZarrOMP).
PER_ETA_MIN_NONZERO = 5
#: ... and this many R bin centres within the ±FitROIPadding·RBinSize window of a position.
PER_ETA_MIN_POINTS = 6


def fit_per_eta(
    result: Result,
    positions_px: Any = None,
    auto: int | None = None,
    doublet_separation: float = 0.0,
    roi_padding: int = FIT_ROI_PADDING,
    snip_iterations: int = SNIP_ITERATIONS,
    r_bin_px: float | None = None,
    max_iterations: int = MAX_ITERATIONS,
    n_threads: int | None = None,
    bin_average: bool = True,
    bounds: str = "radint",
) -> EtaPeaks:
    """Fit peaks in every η bin of ``result.cake`` as IntegratorZarrOMP does with ``DoPeakFit``
    (spec §6.4–6.5), for every frame.

    A bin's R profile is fitted when at least 5 of its R bins are neither 0 nor NaN. With
    ``positions_px`` (MIDAS ``PeakLocation``, in the order given): each position gets a
    height-normalised pV (:func:`fit_pv`) on the R bin centres within ``±roi_padding·r_bin_px``
    (at least 6 of them), starting at the position; two positions adjacent in the list and
    closer than ``doublet_separation`` are fitted together (:func:`fit_pv_doublet`, window from
    the lower one's minus to the upper one's plus padding, centres split at their midpoint), as
    pairs taken from the start of the list. A peak is kept when its fit converged with
    ``SNR = Imax/sqrt(SSR/N) > 1``; its row holds the centre and the SNR (in ``chi2``, as
    MIDAS). With ``auto``: up to ``auto`` peaks are detected and fitted in each profile
    (:func:`fit_peaks`, TCH model) and the converged ones kept with all their columns.

    Parameters
    ----------
    result : Result
        One frame or a stack; uses ``cake``, ``radius_px``, ``eta_deg`` and ``config``
        (pixel size, Lsd, wavelength for the 2θ/d columns).
    positions_px, auto
        Exactly one: positions (R px) or the number of peaks to detect.
    doublet_separation : float
        MIDAS ``DoubletSeparation`` (R px; 0 = no doublets).
    roi_padding : int
        MIDAS ``FitROIPadding`` (bins).
    snip_iterations : int
        Auto-detection background (``SNIPIterations``).
    r_bin_px : float, optional
        The window's bin size; default ``result.config.r_bin_px`` (the median spacing of
        ``radius_px`` when the bins are in Q or 2θ or there is no config).
    bin_average : bool
        Auto-detected peaks: the TCH model as bin means (True) or MIDAS's values at bin
        centres (False), as :func:`fit_peaks`; the pV fits at given positions are MIDAS's.
    max_iterations : int
        Levenberg–Marquardt steps per fit (status ``max_iterations`` beyond).
    n_threads : int, optional
        Threads fitting the profiles (default: all cores).
    bounds : {"radint", "midas"}
        The pV fits' box and start (:func:`fit_pv`): ``"midas"`` is IntegratorZarrOMP's, as
        ``compat`` selects.

    Returns
    -------
    EtaPeaks
    """
    if (positions_px is None) == (auto is None):
        raise InvalidInputError("fit_per_eta: give exactly one of positions_px= or auto=")
    r = np.asarray(result.radius_px, dtype=np.float64)
    cake = np.asarray(result.cake, dtype=np.float64)
    cakes = cake[None] if cake.ndim == 2 else cake  # (n_frames, n_eta, n_r)
    n_frames, n_eta, n_r = cakes.shape
    cfg = result.config
    if r_bin_px is None:
        if cfg is not None and not (cfg.q_bin > 0 or cfg.tth_bin_deg > 0):
            r_bin_px = float(cfg.r_bin_px)
        else:
            r_bin_px = float(np.median(np.diff(r)))
    profiles = cakes.reshape(-1, n_r)
    # IntegratorZarrOMP skips bins with < 5 nonzero values (it counts NaN as nonzero; radint
    # does not, so a masked-out profile is skipped rather than fitted on NaNs).
    fitted = (np.isfinite(profiles) & (profiles != 0)).sum(axis=1) >= PER_ETA_MIN_NONZERO
    rows: list[tuple[np.ndarray, int, dict[str, np.ndarray]]] = []  # (curve ids, peak, cols)

    def keep(curves: np.ndarray, peak: int, center: np.ndarray, snr: np.ndarray,
             pv: np.ndarray, flat: np.ndarray, x: np.ndarray,
             box: tuple[float, float] | None = None) -> None:  # fmt: skip
        # A centre stopped on the window's edge is a ring's flank outside it, not a peak in it
        # (the 1-D fits call it at_bound): no row, where C keeps it when its SNR passes. A
        # doublet member whose position lies past the data has the pair's midpoint as an edge
        # too (``box``): it stopped there in every η bin.
        low, high = box if box is not None else (x[0], x[-1])
        tol = 1e-6 * (x[-1] - x[0])
        inside = (center > low + tol) & (center < high - tol)
        ok = np.isfinite(snr) & (snr > 1.0) & (center != 0) & ~flat & inside
        if ok.any():
            zero = np.zeros(int(ok.sum()))
            rows.append((curves[ok], peak, {
                "area": zero, "center": center[ok], "sig": zero, "gam": zero, "fwhm": zero,
                "eta_mix": zero, "chi2": snr[ok], "snr": snr[ok], "pv_fwhm": pv[ok, 0],
                "pv_mu": pv[ok, 1], "pv_imax": pv[ok, 2], "pv_background": pv[ok, 3],
            }))  # fmt: skip

    curves = np.flatnonzero(fitted)
    if auto is not None and curves.size:
        table = fit_peaks(r, profiles[curves], auto=int(auto), roi_padding=roi_padding,
                          snip_iterations=snip_iterations, max_iterations=max_iterations,
                          n_threads=n_threads, bin_average=bin_average,
                          bin_width_px=radial_bin_width_px(result))  # fmt: skip
        for k in range(table.center.shape[-1]):
            ok = (table.status[:, k] == CONVERGED) & (table.center[:, k] != 0)
            if not ok.any():
                continue
            nan = np.full(int(ok.sum()), np.nan)
            cols = {c: getattr(table, c)[:, k][ok] for c in COLUMNS}
            cols.update(snr=nan, pv_fwhm=nan, pv_mu=nan, pv_imax=nan, pv_background=nan)
            rows.append((curves[ok], k, cols))
    elif curves.size:
        pos = [float(v) for v in np.atleast_1d(np.asarray(positions_px, dtype=np.float64))]
        pad = roi_padding * r_bin_px
        k = 0
        while k < len(pos):
            pair = (k + 1 < len(pos) and doublet_separation > 0
                    and abs(pos[k + 1] - pos[k]) < doublet_separation)  # fmt: skip
            lo_r, hi_r = (min(pos[k], pos[k + 1]), max(pos[k], pos[k + 1])) if pair else (
                pos[k], pos[k])  # fmt: skip
            inside = np.flatnonzero((r >= lo_r - pad) & (r <= hi_r + pad))
            if inside.size and inside[-1] - inside[0] + 1 >= PER_ETA_MIN_POINTS:
                window = slice(int(inside[0]), int(inside[-1]) + 1)
                x, y = r[window], profiles[curves, window]
                # A constant window (all 0 where a ring misses this η bin's R range in the
                # 0-filled midas-cpu cake) holds no peak: C's fit there is exact, its SNR
                # then 1 (rms 0) and the row dropped; radint's fit ends with Imax and rms
                # both ~0 and an arbitrary SNR (up to 1e29), so it is refused outright.
                with warnings.catch_warnings():  # all-NaN windows: flat too
                    warnings.simplefilter("ignore", RuntimeWarning)
                    flat = ~(np.nanmax(y, axis=1) > np.nanmin(y, axis=1))
                if pair:
                    d = fit_pv_doublet(x, y, lo_r, hi_r, max_iterations=max_iterations,
                                       bounds=bounds)  # fmt: skip
                    low_first = pos[k] <= pos[k + 1]
                    mid = (lo_r + hi_r) / 2
                    for j, slot in enumerate((k, k + 1) if low_first else (k + 1, k)):
                        prm = d["params"]
                        pv = np.column_stack([prm[:, 3 + 2 * j], prm[:, 2], prm[:, 4 + 2 * j],
                                              prm[:, 7]])  # fmt: skip
                        # The midpoint is an edge only for a member whose own position
                        # lies past the window's data (no ring of its own can be there); one
                        # inside keeps C's rule (a ring by the midpoint is fitted on it).
                        own = pos[slot]
                        past = own < x[0] or own > x[-1]
                        box = None if not past else (x[0], mid) if j == 0 else (mid, x[-1])
                        keep(curves, slot, prm[:, j], d["snr"][:, j], pv, flat, x, box)
                else:
                    d = fit_pv(x, y, pos[k], max_iterations=max_iterations,
                               n_threads=n_threads, bounds=bounds)  # fmt: skip
                    prm = d["params"]  # [bg, imax, center, fwhm, mu]
                    pv = np.column_stack([prm[:, 3], prm[:, 4], prm[:, 1], prm[:, 0]])
                    keep(curves, k, prm[:, 2], d["snr"], pv, flat, x)
            k += 2 if pair else 1
    return _eta_peaks(result, rows, n_frames, n_eta)


def _eta_peaks(
    result: Result, rows: list[tuple[np.ndarray, int, dict[str, np.ndarray]]], n_frames: int,
    n_eta: int,
) -> EtaPeaks:  # fmt: skip
    """The accepted rows as an :class:`EtaPeaks`, sorted by (frame, η bin, peak)."""
    names = ("area", "center", "sig", "gam", "fwhm", "eta_mix", "chi2", "snr", "pv_fwhm",
             "pv_mu", "pv_imax", "pv_background")  # fmt: skip
    if rows:
        curve = np.concatenate([c for c, _, _ in rows])
        peak = np.concatenate([np.full(c.size, k, np.int64) for c, k, _ in rows])
        cols = {n: np.concatenate([d[n] for _, _, d in rows]).astype(np.float64) for n in names}
    else:
        curve, peak = np.zeros(0, np.int64), np.zeros(0, np.int64)
        cols = {n: np.zeros(0) for n in names}
    order = np.lexsort((peak, curve))
    curve, peak = curve[order], peak[order]
    cols = {n: v[order] for n, v in cols.items()}
    frame, eta_bin = np.divmod(curve, n_eta)
    eta_axis = np.asarray(result.eta_deg, dtype=np.float64)
    c, w = cols["center"], cols["fwhm"]
    cfg = result.config
    if cfg is not None:
        tth = np.degrees(np.arctan(c * cfg.pixel_size_y_um / cfg.lsd_um))
        tth_axis = np.degrees(np.arctan(np.asarray(result.radius_px) * cfg.pixel_size_y_um
                                        / cfg.lsd_um))  # fmt: skip
        lam = float(cfg.wavelength_angstrom)
    else:
        tth = _two_theta_deg(result, c)
        tth_axis = np.asarray(result.two_theta_deg, dtype=np.float64)
        lam = 0.0
    theta = np.radians(tth) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        d_spacing = np.where(theta > 1e-10, lam / (2 * np.sin(theta)), 0.0)
    fwhm_deg = np.where(w != 0, _two_theta_deg(result, c + w / 2)
                        - _two_theta_deg(result, c - w / 2), 0.0)  # fmt: skip
    return EtaPeaks(
        frame=frame.astype(np.int64), eta_bin=eta_bin.astype(np.int64), peak=peak,
        eta_deg=eta_axis[eta_bin] if eta_bin.size else np.zeros(0), **cols,
        center_two_theta_deg=tth, center_d_angstrom=d_spacing, fwhm_deg=fwhm_deg,
        n_frames=n_frames, eta_axis_deg=eta_axis, two_theta_axis_deg=tth_axis,
        source=str(result.metadata.get("source", "")),
        pixel_size_um=math.nan if cfg is None else float(cfg.pixel_size_y_um),
    )  # fmt: skip


def _pick_curve(table: FitTable, index: int) -> FitTable:
    """Lineout ``index`` of a stacked table (the table itself when it is not stacked)."""
    if not table.is_stack:
        return table
    picked = {}
    for f in dataclasses.fields(table):
        v = getattr(table, f.name)
        picked[f.name] = v[index] if isinstance(v, np.ndarray) and v.ndim >= 1 else v
    picked["metadata"] = dict(table.metadata)
    return FitTable(**picked)


def concat_tables(tables: list[FitTable]) -> FitTable:
    """One stacked table ``(Σ n_curves, n_peaks)`` from single or stacked tables; tables with
    fewer peak slots (e.g. peaks changed during a stream) are padded with absent slots.

    Parameters
    ----------
    tables : list of FitTable
        At least one table, in order. Absent slots have ``status == 255``, NaN values and 0
        ``iterations``. An optional column (``n_found``, ``background``, the 2θ/Q/d columns)
        that any table lacks is None in the result; ``metadata`` is a copy of the first table's.

    Returns
    -------
    FitTable
        Stacked, with ``n_peaks`` the largest of the tables'.
    """
    stacked = [t if t.is_stack else _add_curve_axis(t) for t in tables]
    width = max(int(t.center.shape[-1]) for t in stacked)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(FitTable):
        values = [getattr(t, f.name) for t in stacked]
        if f.name == "metadata":
            out[f.name] = dict(values[0])
        elif any(v is None for v in values):
            out[f.name] = None
        elif f.name in ("n_found", "background"):
            out[f.name] = np.concatenate(values)
        else:
            out[f.name] = np.concatenate([_pad_slots(f.name, v, width) for v in values])
    return FitTable(**out)


def _pad_slots(name: str, values: np.ndarray, width: int) -> np.ndarray:
    missing = width - values.shape[-1]
    if missing == 0:
        return values
    fill: Any = {"status": ABSENT, "status_name": STATUS_NAMES.get(ABSENT, "absent"),
                 "iterations": 0}.get(name, np.nan)  # fmt: skip
    pad = np.full((*values.shape[:-1], missing), fill, dtype=values.dtype)
    return np.concatenate([values, pad], axis=-1)


def _add_curve_axis(table: FitTable) -> FitTable:
    lifted: dict[str, Any] = {}
    for f in dataclasses.fields(table):
        v = getattr(table, f.name)
        # Numpy scalars too: one curve's n_found (auto fits) is one.
        lifted[f.name] = np.asarray(v)[np.newaxis] if isinstance(v, (np.ndarray, np.generic)) else v
    return FitTable(**lifted)


def peak_profile(x: Any, table: FitTable) -> np.ndarray:
    """The fitted peaks (without background) evaluated on ``x`` (spec §6.1 TCH pseudo-Voigt).

    ``table`` must be a single lineout's table; failed or absent slots contribute nothing.
    Returns shape ``(len(x),)`` in the lineout's intensity units.

    Parameters
    ----------
    x : array_like, shape (n_x,)
        Where to evaluate, in the units the table was fitted in (R px for a
        :class:`~radint.result.Result`).
    table : FitTable
        One lineout's fits (columns of shape ``(n_peaks,)``); each converged slot adds
        ``area`` times a unit-area pseudo-Voigt of FWHM ``fwhm`` and Lorentzian fraction
        ``eta_mix`` about ``center``.

    Returns
    -------
    ndarray of float64, shape (n_x,)
        The sum of the converged peaks at each ``x`` (the profile's value at the point, not
        its mean over a bin).

    Raises
    ------
    ShapeError
        ``table`` is stacked, or ``x`` is not 1-D.
    InvalidInputError
        ``x`` is not real numeric.
    """
    xs = _as_float("x", x, (1,))
    if table.is_stack:
        raise ShapeError("peak_profile: give one lineout's table (FitTable of shape (n_peaks,))")
    total = np.zeros_like(xs)
    ok = table.status == CONVERGED
    for a, c, g, mix in zip(table.area[ok], table.center[ok], table.fwhm[ok], table.eta_mix[ok]):
        sigma = g / (2 * math.sqrt(2 * math.log(2)))
        gauss = np.exp(-0.5 * ((xs - c) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        lorentz = (g / 2) / math.pi / ((xs - c) ** 2 + (g / 2) ** 2)
        total += a * (mix * lorentz + (1 - mix) * gauss)
    return total


@dataclass(frozen=True)
class FitSpec:
    """Which peaks to fit on every integrated lineout (``Integrator(fit=...)``).

    Give exactly one of ``positions_px`` (MIDAS ``PeakLocation``: radii in pixels),
    ``positions_two_theta_deg`` or ``auto`` (detect up to this many peaks, MIDAS
    ``AutoDetectPeaks 1`` + ``MaxNPeaks``). The other fields are as in :func:`fit_peaks`.

    Attributes
    ----------
    positions_px : tuple of float
        Peak positions as radii in pixels (MIDAS ``PeakLocation``); any sequence of finite
        numbers (a numpy array too) is stored as a tuple of floats. Default: none.
    positions_two_theta_deg : tuple of float
        Peak positions in degrees 2θ (converted to R px with the result's configuration),
        stored like ``positions_px``. Default: none.
    auto : int or None
        Detect and fit up to this many peaks (>= 1) per lineout. Default None.
    roi_padding : int
        ROI half-width in R bins (MIDAS ``FitROIPadding``), >= 0. Default 20.
    auto_roi : bool
        MIDAS ``FitROIAuto``: padding = max(15, 1.5 · largest estimated FWHM in bins). Default
        False.
    snip_iterations : int
        SNIP iterations of the auto-detection background (MIDAS ``SNIPIterations``), >= 0.
        Default 50.
    max_iterations : int
        Levenberg–Marquardt steps per fit, >= 1. Default 500.
    doublet_separation : float
        Per-η fits only (:meth:`per_eta`): MIDAS ``DoubletSeparation`` in R pixels; adjacent
        positions closer than this are fitted as a doublet (0, the default: none).
    bin_average : bool
        Model each point as the profile's mean over its bin (True, the default) or MIDAS's
        value at the bin centre (False), as :func:`fit_peaks`.
    per_eta_bounds : {"radint", "midas"}
        The per-η pV fits' box and start (``bounds`` of :func:`fit_per_eta`). Default
        ``"radint"``.

    Raises
    ------
    InvalidInputError
        Not exactly one of ``positions_px``, ``positions_two_theta_deg`` and ``auto`` given;
        positions that are not finite numbers or have more than one dimension; ``auto`` below 1; ``roi_padding`` or
        ``snip_iterations`` not an integer >= 0, ``max_iterations`` not an integer >= 1; or
        ``per_eta_bounds`` not ``"radint"`` or ``"midas"``.

    Examples
    --------
    >>> FitSpec(positions_two_theta_deg=(3.1, 3.58))  # doctest: +SKIP
    >>> Integrator(config, fit=FitSpec(auto=12))  # doctest: +SKIP
    """

    # Any sequence of numbers (a numpy array too), stored as a tuple of floats.
    positions_px: Sequence[float] | np.ndarray = ()
    positions_two_theta_deg: Sequence[float] | np.ndarray = ()
    auto: int | None = None
    roi_padding: int = FIT_ROI_PADDING
    auto_roi: bool = False
    snip_iterations: int = SNIP_ITERATIONS
    max_iterations: int = MAX_ITERATIONS
    doublet_separation: float = 0.0
    bin_average: bool = True
    #: The per-η pV fits' box and start (:func:`fit_per_eta`); a compat Integrator sets
    #: ``"midas"`` (IntegratorZarrOMP's).
    per_eta_bounds: str = "radint"

    def __post_init__(self) -> None:
        _pv_bounds(self.per_eta_bounds)
        # Any sequence of numbers (a numpy array too) becomes a tuple of floats; checked here,
        # not at the first integrate().
        for name in ("positions_px", "positions_two_theta_deg"):
            value = getattr(self, name)
            try:
                positions = tuple(float(v) for v in np.atleast_1d(np.asarray(value, np.float64)))
            except (TypeError, ValueError) as e:
                raise InvalidInputError(f"FitSpec: {name}: expected numbers, got {value!r}") from e
            if not all(math.isfinite(v) for v in positions) or np.ndim(value) > 1:
                raise InvalidInputError(f"FitSpec: {name}: expected finite numbers, got {value!r}")
            object.__setattr__(self, name, positions)
        for name, least in (("roi_padding", 0), ("snip_iterations", 0), ("max_iterations", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise InvalidInputError(
                    f"FitSpec: {name} must be an integer >= {least}, got {value!r}"
                )
        given = sum(bool(v) for v in (self.positions_px, self.positions_two_theta_deg))
        if given + (self.auto is not None) != 1:
            raise InvalidInputError(
                "FitSpec: give exactly one of positions_px=, positions_two_theta_deg= or auto="
            )
        if self.auto is not None and int(self.auto) < 1:
            raise InvalidInputError(f"FitSpec: auto must be >= 1 peaks, got {self.auto}")

    @classmethod
    def from_config(cls, config: IntegrationConfig) -> FitSpec | None:
        """The parameter file's fit (``DoPeakFit``, ``PeakLocation``, ``AutoDetectPeaks``,
        ``MaxNPeaks``, ``FitROIPadding``, ``FitROIAuto``, ``SNIPIterations``,
        ``DoubletSeparation``), or None.

        As IntegratorZarrOMP decides: ``AutoDetectPeaks N`` (N > 0; it also switches
        ``DoPeakFit`` on) detects up to N peaks and wins over ``PeakLocation``; otherwise the
        ``PeakLocation`` list is fitted; ``DoPeakFit 1`` with neither fits nothing (logged).
        """
        if not config.do_peak_fit:
            return None
        common = cls.config_settings(config)
        if config.auto_detect_peaks:
            return cls(auto=int(config.max_n_peaks), **common)
        if not config.peak_locations:
            # An AutoDetectPeaks line turns fitting on whatever its value (as IntegratorZarrOMP),
            # also after `DoPeakFit 0`: name the line that did.
            source, line = config.set_at.get("AutoDetectPeaks", ("", 0))
            if source:
                why = (
                    f"{source}:{line}: AutoDetectPeaks <= 0 turns fitting on (as IntegratorZarrOMP) "
                    "without detecting peaks, and no PeakLocation is given"
                )
            else:
                source, line = config.set_at.get("DoPeakFit", ("", 0))
                where = f"{source}:{line}: " if source else ""
                why = f"{where}DoPeakFit 1 without PeakLocation or AutoDetectPeaks N > 0"
            warn_once(("no peaks to fit", why), "%s: no peaks fitted", why)
            return None
        # Sorted, as PeakFit.c orders its jobs (and so its fit.bin rows) by R.
        return cls(positions_px=tuple(sorted(map(float, config.peak_locations))), **common)

    @staticmethod
    def config_settings(config: IntegrationConfig) -> dict[str, Any]:
        """How the parameter file fits, whichever peaks: ``FitROIPadding``, ``FitROIAuto``,
        ``SNIPIterations`` and ``DoubletSeparation`` as FitSpec fields (their defaults where
        the file does not set them)."""
        return {
            "roi_padding": int(config.fit_roi_padding),
            "auto_roi": bool(config.fit_roi_auto),
            "snip_iterations": int(config.snip_iterations),
            "doublet_separation": float(config.doublet_separation),
        }

    @classmethod
    def coerce(cls, value: Any, config: IntegrationConfig) -> FitSpec | None:
        """Accept ``"config"`` (the parameter file decides), None/False (no fitting), a FitSpec
        (taken as it is) or a dict of FitSpec fields (the fields it leaves out come from the
        parameter file's fit keys, :meth:`config_settings`, as ``--fit-peaks`` takes them)."""
        if value is None or value is False:
            return None
        if isinstance(value, str):
            if value != "config":
                raise InvalidInputError(
                    f"fit: expected 'config', None, FitSpec or dict, got {value!r}"
                )
            return cls.from_config(config)
        if isinstance(value, FitSpec):
            return value
        if isinstance(value, dict):
            fields: dict[str, Any] = cls.config_settings(config) | {
                k: tuple(v) if isinstance(v, list) else v for k, v in value.items()
            }
            try:
                return cls(**fields)
            except TypeError as e:
                raise InvalidInputError(f"fit: {e}") from e
        raise InvalidInputError(
            f"fit: expected 'config', None, FitSpec or dict, got {type(value).__name__}"
        )

    @property
    def runs_on_gpu(self) -> bool:
        """Given positions with a fixed ROI padding: the jobs do not depend on the data, so the
        CUDA fitter can fit them where the lineouts are. Auto-detection and FitROIAuto run on
        the CPU."""
        return self.auto is None and not self.auto_roi

    def positions_in_px(self, config: IntegrationConfig) -> list[float]:
        """The requested positions as radii in pixels.

        Parameters
        ----------
        config : IntegrationConfig
            Converts ``positions_two_theta_deg`` with ``R = tan(2θ) · Lsd / pixel size`` (its
            ``lsd_um`` and ``pixel_size_y_um``); not used when ``positions_px`` is set.

        Returns
        -------
        list of float
            ``positions_px`` as given, else the converted 2θ positions, in R px (empty for
            auto-detection).
        """
        if self.positions_px:
            return list(self.positions_px)
        tth = np.radians(np.asarray(self.positions_two_theta_deg, dtype=np.float64))
        return list(np.tan(tth) * config.lsd_um / config.pixel_size_y_um)

    def recorded_in(self, config: IntegrationConfig) -> IntegrationConfig:
        """``config`` with this fit as its parameter file would give it (``DoPeakFit 1`` with
        ``PeakLocation`` in R px or ``AutoDetectPeaks N``, ``FitROIPadding``, ``FitROIAuto``,
        ``SNIPIterations``, ``DoubletSeparation``), so a result file that stores it says how
        its peaks were fitted and :meth:`from_config` gives them again (``radint convert
        --format midas`` fits the same peaks per η).

        Parameters
        ----------
        config : IntegrationConfig
            The result's configuration; 2θ positions are converted with it
            (:meth:`positions_in_px`).

        Returns
        -------
        IntegrationConfig
            A copy with the fit fields replaced.
        """
        fields: dict[str, Any] = {
            "do_peak_fit": True,
            "fit_roi_padding": int(self.roi_padding),
            "fit_roi_auto": bool(self.auto_roi),
            "snip_iterations": int(self.snip_iterations),
            "doublet_separation": float(self.doublet_separation),
        }
        if self.auto is not None:
            fields |= {"auto_detect_peaks": True, "max_n_peaks": int(self.auto)}
        else:
            fields |= {"auto_detect_peaks": False,
                       "peak_locations": tuple(map(float, self.positions_in_px(config)))}  # fmt: skip
        return config.replace(**fields)

    def apply(self, result: Result, n_threads: int | None = None) -> FitTable:
        """Fit the lineout(s) of ``result`` (see :func:`fit_result`); the table's
        ``metadata["fit_spec"]`` is this spec (for :meth:`per_eta`).

        Parameters
        ----------
        result : Result
            One frame or a stack; its ``lineout`` is fitted against ``radius_px``.
        n_threads : int, optional
            Threads fitting (default: all cores).

        Returns
        -------
        FitTable
            As :func:`fit_result`: ``center``/``fwhm`` in R px plus the 2θ, Q and d columns.
        """
        table = fit_result(
            result,
            positions_px=list(self.positions_px) or None,
            positions_two_theta_deg=list(self.positions_two_theta_deg) or None,
            auto=self.auto,
            roi_padding=self.roi_padding,
            auto_roi=self.auto_roi,
            snip_iterations=self.snip_iterations,
            max_iterations=self.max_iterations,
            n_threads=n_threads,
            bin_average=self.bin_average,
        )
        table.metadata["fit_spec"] = self
        return table

    def per_eta(self, result: Result, n_threads: int | None = None) -> EtaPeaks:
        """IntegratorZarrOMP's per-η fits of ``result``'s cake (see :func:`fit_per_eta`).

        Positions that are the parameter file's ``PeakLocation`` lines are taken in the file's
        order, as IntegratorZarrOMP pairs doublets and numbers its per-η peaks in that order
        (its fit.bin, like :attr:`positions_px`, is in R order).

        Parameters
        ----------
        result : Result
            One frame or a stack with a ``cake``. Without a configuration only
            ``positions_px`` are fitted (``positions_two_theta_deg`` need one to convert).
        n_threads : int, optional
            Threads fitting (default: all cores).

        Returns
        -------
        EtaPeaks
            One row per accepted peak, by frame, η bin and peak.
        """
        common: dict[str, Any] = {"roi_padding": self.roi_padding, "snip_iterations": self.snip_iterations,
                  "max_iterations": self.max_iterations, "n_threads": n_threads,
                  "bounds": self.per_eta_bounds}  # fmt: skip
        if self.auto is not None:  # the spec's model (compat: MIDAS's, bin_average=False)
            return fit_per_eta(result, auto=self.auto, bin_average=self.bin_average, **common)
        cfg = result.config
        positions = self.positions_in_px(cfg) if cfg is not None else list(self.positions_px)
        if (
            cfg is not None
            and self.positions_px
            and cfg.peak_locations
            and sorted(map(float, cfg.peak_locations)) == list(self.positions_px)
        ):
            positions = [float(v) for v in cfg.peak_locations]
        return fit_per_eta(result, positions_px=positions,
                           doublet_separation=self.doublet_separation, **common)  # fmt: skip


def fit_spec_of(result: Result) -> FitSpec | None:
    """The fit that made ``result.peaks`` (recorded by :meth:`FitSpec.apply`), else the
    parameter file's (``DoPeakFit`` ...), else None.

    Parameters
    ----------
    result : Result
        Read for ``peaks.metadata["fit_spec"]`` and ``config``.

    Returns
    -------
    FitSpec or None
        The recorded spec, else :meth:`FitSpec.from_config` of ``result.config``, else None
        (no recorded spec and no configuration, or a configuration that fits nothing).
    """
    if result.peaks is not None:
        spec = result.peaks.metadata.get("fit_spec")
        if isinstance(spec, FitSpec):
            return spec
    return FitSpec.from_config(result.config) if result.config is not None else None


__all__ = [
    "COLUMNS",
    "DOUBLET_PARAMS",
    "STATUS_NAMES",
    "EtaPeaks",
    "FitSpec",
    "FitTable",
    "concat_tables",
    "fit_peaks",
    "fit_per_eta",
    "fit_pv",
    "fit_pv_doublet",
    "fit_result",
    "fit_spec_of",
    "peak_profile",
    "radial_bin_width_px",
    "read_fit_bin",
    "snip_background",
    "with_units",
    "write_caked_peaks_h5",
    "write_fit_bin",
]
