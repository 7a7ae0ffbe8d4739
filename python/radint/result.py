"""The integration result: one dataclass that every writer, plot and fitter takes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from radint.exceptions import InvalidInputError

if TYPE_CHECKING:
    from radint.config import IntegrationConfig
    from radint.fit import FitTable


@dataclass(eq=False)  # arrays have no one truth value: results compare by identity
class Result:
    """Cake, lineout and axes of one frame or a stack of frames.

    Data arrays of a single frame have the shapes below; a stack adds a leading ``n_frames`` axis.
    The cake is η-major like pyFAI and NXazint2d (MIDAS files store the transpose; the MIDAS
    writers transpose).

    Attributes
    ----------
    cake : ndarray, shape (n_eta, n_r)
        Intensity per (η, R) bin: area-weighted mean pixel value (``normalized``) or the
        weighted sum. Empty bins hold ``empty_value`` (NaN by default).
    cake_sigma : ndarray or None, shape (n_eta, n_r)
        Standard deviation of ``cake`` (None when no error model was used).
    lineout : ndarray, shape (n_r,)
        Azimuthal reduction of the cake (``lineout_mode``).
    lineout_sigma : ndarray or None, shape (n_r,)
    area : ndarray, shape (n_eta, n_r)
        Σ overlap area (px²) of the unmasked pixels that contributed to each bin.
    count : ndarray of uint32, shape (n_eta, n_r)
        Number of map entries (pixel pieces) summed into each bin.
    radius_px, two_theta_deg, q_inv_angstrom, d_spacing_angstrom : ndarray, shape (n_r,)
        Radial bin centres (R centre of each bin; Q and d are NaN when the wavelength is 0).
    eta_deg : ndarray, shape (n_eta,)
        Azimuthal bin centres, degrees (0 along +Z, +90 along +Y).
    r_edges_px : ndarray, shape (n_r + 1,)
    eta_edges_deg : ndarray, shape (n_eta + 1,)
        The axes of an Integrator's results are one set of read-only arrays, shared by all
        of them: convert into a new array (``np.radians(r.two_theta_deg)``), not in place.
    config : IntegrationConfig
        The configuration that produced this result.
    normalized : bool
        True when ``cake`` is signal / area (MIDAS ``Normalize 1``).
    lineout_mode : str
        ``"area_weighted"`` (default) or ``"midas_nonzero_mean"``.
    frame_ids : ndarray or None, shape (n_frames,)
        Frame identifiers of a stack (or of a streamed frame).
    metadata : dict
        Free-form provenance (source file, timestamps, ...). ``nan_pixels``: the pixels left
        out of the call (NaN / ±inf values, marker values, thresholds, NaN dark pixels), summed
        over a stack's frames (:meth:`frame` leaves it out). Under ``compat="midas-cpu"`` also
        ``masked_bins`` (flat indices into an ``(n_eta, n_r)`` cake of the bins a masked pixel
        touched, NaN in ``cake``) and ``masked_bin_values`` ``(n_frames, n_masked)``, their
        intensities before that NaN, which MIDAS's ``SumFrames`` adds up (see
        :meth:`cakes_before_mask_nan`). Where each frame came from, when known:
        ``source_path`` ``(n_frames,)`` object array of str (the input file's absolute path, a
        stream's source name, ``""`` where not known) and ``source_frame`` ``(n_frames,)``
        int64 (the frame's position in that file, −1 where not known); the NeXus writers store
        them in ``entry/provenance``.
    peaks : FitTable or None
        Peaks fitted to the lineout(s) when the Integrator was asked to fit (``fit=``); columns
        of shape ``(n_peaks,)``, or ``(n_frames, n_peaks)`` for a stack.
    """

    cake: np.ndarray
    cake_sigma: np.ndarray | None
    lineout: np.ndarray
    lineout_sigma: np.ndarray | None
    area: np.ndarray
    count: np.ndarray
    radius_px: np.ndarray
    two_theta_deg: np.ndarray
    q_inv_angstrom: np.ndarray
    d_spacing_angstrom: np.ndarray
    eta_deg: np.ndarray
    r_edges_px: np.ndarray
    eta_edges_deg: np.ndarray
    config: IntegrationConfig | None = None
    normalized: bool = True
    lineout_mode: str = "area_weighted"
    frame_ids: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    peaks: FitTable | None = None

    @property
    def n_r(self) -> int:
        """Number of radial bins."""
        return int(self.radius_px.shape[0])

    @property
    def n_eta(self) -> int:
        """Number of azimuthal bins."""
        return int(self.eta_deg.shape[0])

    @property
    def is_stack(self) -> bool:
        """True when the data arrays carry a leading ``n_frames`` axis."""
        return self.cake.ndim == 3

    @property
    def n_frames(self) -> int:
        """Number of frames (1 for a single-frame result)."""
        return int(self.cake.shape[0]) if self.is_stack else 1

    def frame(self, index: int) -> Result:
        """The single-frame result at ``index`` of a stack (``self`` for a single frame)."""
        if not self.is_stack:
            if index not in (0, -1):
                raise IndexError(f"single-frame result has no frame {index}")
            return self

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        ids = None if self.frame_ids is None else self.frame_ids[index : index + 1]
        return Result(
            cake=self.cake[index],
            cake_sigma=pick(self.cake_sigma),
            lineout=self.lineout[index],
            lineout_sigma=pick(self.lineout_sigma),
            area=self.area[index] if self.area.ndim == 3 else self.area,
            count=self.count[index] if self.count.ndim == 3 else self.count,
            radius_px=self.radius_px,
            two_theta_deg=self.two_theta_deg,
            q_inv_angstrom=self.q_inv_angstrom,
            d_spacing_angstrom=self.d_spacing_angstrom,
            eta_deg=self.eta_deg,
            r_edges_px=self.r_edges_px,
            eta_edges_deg=self.eta_edges_deg,
            config=self.config,
            normalized=self.normalized,
            lineout_mode=self.lineout_mode,
            frame_ids=ids,
            metadata={
                k: (_frame_rows(v)[index : index + 1] if k in PER_FRAME_METADATA else v)
                for k, v in self.metadata.items()
                if k not in STACK_TOTAL_METADATA  # not one frame's value
            },
            peaks=None if self.peaks is None else _peaks_of(self.peaks, index),
        )

    @classmethod
    def concatenate(cls, results: Sequence[Result]) -> Result:
        """One stack Result from single-frame and/or stack Results of the same bins, in order.

        Frame ids are kept (a result without ids contributes its positions); fitted peaks are
        concatenated when every part has them.
        """
        if not results:
            raise InvalidInputError("concatenate: no results")
        first = results[0]
        if len(results) == 1 and first.is_stack:
            return first
        for k, r in enumerate(results[1:], 1):
            for axis in ("radius_px", "two_theta_deg", "q_inv_angstrom", "eta_edges_deg"):
                mine, theirs = np.asarray(getattr(first, axis)), np.asarray(getattr(r, axis))
                if mine.shape != theirs.shape or not np.array_equal(mine, theirs, equal_nan=True):
                    raise InvalidInputError(
                        f"concatenate: result {k} has other bins than result 0 ({axis}: "
                        f"{theirs.size} values from {_first(theirs)} against {mine.size} "
                        f"from {_first(mine)}); only results of the same bins stack"
                    )

        def frames(a: Any, r: Result, ndim: int) -> np.ndarray:
            a = np.asarray(a)
            return a if a.ndim == ndim + 1 else np.broadcast_to(a, (r.n_frames, *a.shape[-ndim:]))

        def cat(name: str, ndim: int) -> np.ndarray | None:
            given = [getattr(r, name) for r in results]
            if any(a is None for a in given):
                return None
            present = [frames(a, r, ndim) for a, r in zip(given, results, strict=True)]
            total = sum(p.shape[0] for p in present)
            # Parts that are broadcast views already (Result.without's placeholders and
            # once-held arrays, a batch's parts) stay one view: no n_frames copies. Anything
            # else is concatenated into a new array, as always.
            views = [np.asarray(a) for a in given]
            if total and all(
                v.ndim == ndim + 1 and v.shape[0] and v.strides[0] == 0 for v in views
            ):
                fill = _broadcast_value(present)
                if fill is not None:
                    return np.broadcast_to(fill, (total, *present[0].shape[1:]))
                row = present[0][0]
                if all(np.array_equal(p[0], row, equal_nan=True) for p in present):
                    return np.broadcast_to(row, (total, *row.shape))
            return np.concatenate(present)

        def cat_required(name: str, ndim: int) -> np.ndarray:
            stacked = cat(name, ndim)
            if stacked is None:
                raise InvalidInputError(f"concatenate: a result has no {name}")
            return stacked

        ids, start = [], 0
        for r in results:
            own = None if r.frame_ids is None else np.asarray(r.frame_ids).reshape(-1)
            ids.append(own if own is not None else np.arange(start, start + r.n_frames))
            start += r.n_frames
        peaks = None
        tables = [r.peaks for r in results if r.peaks is not None]
        if len(tables) == len(results):
            from radint.fit import concat_tables

            peaks = concat_tables(tables)
        return dataclasses.replace(
            first,
            cake=cat_required("cake", 2),
            cake_sigma=cat("cake_sigma", 2),
            lineout=cat_required("lineout", 1),
            lineout_sigma=cat("lineout_sigma", 1),
            area=cat_required("area", 2),
            count=cat_required("count", 2),
            frame_ids=np.concatenate(ids).astype(np.int64),
            metadata=_concat_metadata(results),
            peaks=peaks,
        )

    def without(self, keep: Iterable[str]) -> Result:
        """This Result with only the per-frame arrays named in ``keep`` (of ``cake``,
        ``cake_sigma``, ``lineout``, ``lineout_sigma``, ``area``, ``count``) held: the others
        become NaN broadcast over their shape (no memory; :meth:`concatenate` keeps them so),
        or None where a Result may lack them; a kept array equal in every frame (the bin areas of
        frames without NaN pixels) is held once. Axes, metadata, ids and peaks stay. A batch
        keeps such parts of a file for the outputs written at its end."""
        keep = set(keep)
        unknown = keep - set(_PER_FRAME_ARRAYS)
        if unknown:
            raise InvalidInputError(f"without: unknown arrays {sorted(unknown)}")
        changes: dict[str, Any] = {}
        for name in _PER_FRAME_ARRAYS:
            a = getattr(self, name)
            if a is None:
                continue
            if name in keep:
                a = np.asarray(a)
                if a.ndim == 3 and a.shape[0] > 1 and (a == a[:1]).all():
                    # One frame's copy, once (a view of a[0] would keep all of a alive).
                    changes[name] = np.broadcast_to(a[0].copy(), a.shape)
                continue
            a = np.asarray(a)
            fill = np.array(_PLACEHOLDER.get(a.dtype.kind, 0), dtype=a.dtype)
            # A stack's placeholder keeps its frame axis (a single frame's has none).
            changes[name] = None if name.endswith("_sigma") else np.broadcast_to(fill, a.shape)
        return dataclasses.replace(self, **changes)

    def cakes_before_mask_nan(self) -> np.ndarray:
        """The cakes ``(n_frames, n_eta, n_r)`` (a copy) with the bins that the MIDAS CPU rule
        set to NaN for touching a masked pixel holding their intensity from before that rule,
        as IntegratorZarrOMP sums them into ``SumFrames`` (spec §5.5). Other results: the cakes.
        """
        cakes = np.array(self.cake, dtype=np.float64, ndmin=3)
        bins = self.metadata.get("masked_bins")
        values = self.metadata.get("masked_bin_values")
        if bins is not None and values is not None:
            flat = cakes.reshape(cakes.shape[0], -1)
            flat[:, np.asarray(bins)] = np.asarray(values).reshape(cakes.shape[0], -1)
        return cakes


#: The arrays a Result holds per frame (a stack's leading axis).
_PER_FRAME_ARRAYS = ("cake", "cake_sigma", "lineout", "lineout_sigma", "area", "count")
#: What :meth:`Result.without` leaves in the place of an array, by dtype kind.
_PLACEHOLDER = {"f": np.nan}


def _broadcast_value(arrays: Sequence[np.ndarray]) -> Any:
    """The one value every array is a broadcast of (all strides 0), if they all are the same
    such placeholder; else None."""
    first = arrays[0]
    if first.size == 0 or any(first.strides):
        return None
    value = first[(0,) * first.ndim]
    for a in arrays[1:]:
        if a.size == 0 or any(a.strides) or a.dtype != first.dtype:
            return None
        other = a[(0,) * a.ndim]
        if not (other == value or (other != other and value != value)):
            return None
    return value


def frame_groups(n: int, size: int) -> list[range]:
    """MIDAS ``OmegaSumFrames``' groups of ``n`` frames: consecutive runs of ``size``; -1 = all
    in one (integrator_stream_process_h5.py), 0 and other values below 1 = one frame each
    (IntegratorZarrOMP counts 0 as 1)."""
    size = n if size == -1 else max(1, size)
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


def _peaks_of(peaks: FitTable, index: int) -> FitTable:
    from radint.fit import _pick_curve

    return _pick_curve(peaks, index)


#: Metadata keys holding one value (or one row) per frame (joined when stacks are joined).
PER_FRAME_METADATA = (
    "omega_deg", "Temperature", "Pressure", "I", "I0", "masked_bin_values", "source_path",
    "source_frame", "timestamp",
)  # fmt: skip
#: Metadata keys holding a total over a stack's frames, which a single frame taken out of the
#: stack (:meth:`Result.frame`) leaves out rather than misstate.
STACK_TOTAL_METADATA = ("nan_pixels",)
#: Per-frame metadata joined in their own type (the others are float64 values).
_METADATA_DTYPES = {"source_path": object, "source_frame": np.int64}


def _frame_rows(value: Any) -> np.ndarray:
    """A per-frame metadata entry as one row per frame (scalars and vectors: one value each)."""
    a = np.asarray(value)
    return a.reshape(-1) if a.ndim < 2 else a


def _concat_metadata(results: Sequence[Result]) -> dict:
    """The first part's metadata, with the per-frame entries every part has joined in order."""
    out = dict(results[0].metadata)
    for key in PER_FRAME_METADATA:
        parts = [r.metadata.get(key) for r in results]
        if all(p is not None for p in parts):
            dtype = _METADATA_DTYPES.get(key, np.float64)
            out[key] = np.concatenate([_frame_rows(np.asarray(p, dtype=dtype)) for p in parts])
        else:
            out.pop(key, None)
    return out


def _first(values: np.ndarray) -> str:
    return f"{values.flat[0]:g}" if values.size else "none"
