"""The Integrator: the one integration API used by the CLI, batch, streaming and GPU code."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import numbers
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from radint import _core
from radint._once import info_once, warn_once
from radint.config import IntegrationConfig, check_n_threads
from radint.corrections import pixel_geometry, polarization, solid_angle
from radint.detector_map import DetectorMap
from radint.exceptions import (
    BackendUnavailableError,
    DtypeError,
    InvalidInputError,
    ShapeError,
)
from radint.fit import FitSpec
from radint.result import Result, frame_groups

log = logging.getLogger("radint")

BACKENDS = ("cpu", "cuda", "auto")
COMPAT = (None, "midas-cpu", "midas-gpu")
_SUPPORTED_DTYPES = {np.dtype(t) for t in ("u1", "u2", "u4", "i4", "i8", "f4", "f8")}
# What both backends' integration dicts hold η-major per frame (e·n_r + r: Result.cake's layout);
# the per-bin sums (area, count, ...) are bin-major (r·n_eta + e).
_ETA_MAJOR_KEYS = ("cake", "cake_sigma")
#: Results of one CUDA pass over a stack at most (device memory, and page-locked host memory
#: for the downloads): larger stacks are integrated in blocks of frames.
GPU_BLOCK_BYTES = 1 << 30

# float64 frames per call narrowed to float32 at most (a scratch buffer of that many frames
# per thread); larger stacks keep the float64 kernels.
_NARROW_MAX_FRAMES = 8


def cuda_unavailable(why: str) -> str:
    """The message of ``backend='cuda'`` refused for ``why``, with the install hint once (the
    reasons :func:`radint.gpu.cuda_available` gives name it already: it was said twice)."""
    if "pip install" in why:
        return f"backend='cuda' is not available: {why}; or use backend='cpu'"
    return (
        f"backend='cuda' is not available: {why}. Install the GPU extra (pip install "
        "'radint[gpu]' for CUDA 12, 'radint[gpu-cuda13]' for CUDA 13) on a machine with "
        "an NVIDIA GPU, or use backend='cpu'."
    )


def require_backend(backend: str) -> None:
    """Raise BackendUnavailableError now when ``backend`` is 'cuda' and CUDA cannot run here (the
    command line checks before building the map)."""
    if backend == "cuda":
        ok, why = _cuda_status()
        if not ok:
            raise BackendUnavailableError(cuda_unavailable(why))


def _cuda_status() -> tuple[bool, str]:
    """Whether the CUDA backend can run here, and why not."""
    try:
        from radint.gpu import cuda_available
    except ImportError as e:
        return False, f"radint.gpu unavailable ({e})"
    return cuda_available()


def config_for_compat(config: IntegrationConfig, compat: str | None) -> IntegrationConfig:
    """``config`` as ``compat`` bins it: under ``"midas-gpu"`` 2θ bins are counted as
    midas-integrate counts them (``tth_bins_ceil``; said when that count differs from
    radint's). Every place that builds a map for a compat run calls this first (the CLI,
    :func:`~radint.batch.run_batch`, :class:`Integrator`), so maps and results agree. Under
    ``"midas-cpu"`` a ``PolarizationPlaneEtaDeg`` is dropped, with a warning: neither C program
    reads it (their plane is at η = 0); midas-integrate's does, so ``"midas-gpu"`` keeps it."""
    if compat == "midas-cpu" and config.polarization_plane_eta_deg != 0.0:
        if config.polarization_correction:
            warn_once(
                ("midas-cpu PolarizationPlaneEtaDeg", config.source),
                "%s %g ignored with compat='midas-cpu': DetectorMapper and IntegratorZarrOMP "
                "do not read it (their polarization plane is at η = 0)",
                config.where_set("polarization_plane_eta_deg"),
                config.polarization_plane_eta_deg,
            )
        return config.replace(polarization_plane_eta_deg=0.0)
    if compat != "midas-gpu" or config.tth_bins_ceil or config.radial_mode != "2theta":
        return config
    adjusted = config.replace(tth_bins_ceil=True)
    ours, theirs = len(config.bin_edges()[0]) - 1, len(adjusted.bin_edges()[0]) - 1
    if ours != theirs:
        warn_once(
            ("midas-gpu 2θ count", config.source, theirs),
            "%s: %g..%g° in %g° bins is %d bins as midas-integrate counts them "
            "(compat='midas-gpu': ⌈(max − min)/size⌉ of the floating-point quotient; the last "
            "ends at %g°, past TthMax), %d in radint's own count",
            config.where_set("tth_max_deg"), config.tth_min_deg, config.tth_max_deg,
            config.tth_bin_deg, theirs, config.tth_min_deg + theirs * config.tth_bin_deg, ours,
        )  # fmt: skip
    return adjusted


def check_compat(
    config: IntegrationConfig,
    compat: str | None,
    weights_from_config: bool = True,
    error_model_from_config: bool = True,
) -> None:
    """Refuse parameters that a MIDAS compat's rules cannot honour, naming where they were set
    (the CLI calls this before reading any data; :class:`Integrator` on construction).

    Raises
    ------
    InvalidInputError
        ``PixelWeights fraction`` with a compat: MIDAS's rules weigh by area, and dropping the
        key silently would leave outputs whose stored configuration says fraction; likewise
        ``SolidAngleModel exact`` / ``PolarizationModel kahn`` for a correction that is on;
        2θ bins (``TthBinSize``) with ``compat="midas-cpu"``: neither C program reads those
        keys, both bin in R there; ``PixelShape rectangular`` with pxZ ≠ pxY: MIDAS's
        geometry has one pixel size; ``ErrorModel azimuthal``: MIDAS's sigmas are Poisson;
        ``ModuleGaps``: neither MIDAS program reads it (C leaves those pixels in).
    """
    if compat and weights_from_config and config.pixel_weights == "fraction":
        raise InvalidInputError(
            f"{config.where_set('pixel_weights')} fraction is radint's pyFAI-like weighting: not "
            f"with compat={compat!r} (MIDAS's rules weigh by area); remove the key or the compat"
        )
    for name, on in (("solid_angle_model", config.solid_angle_correction),
                     ("polarization_model", config.polarization_correction)):  # fmt: skip
        if compat and on and getattr(config, name) != "midas":
            raise InvalidInputError(
                f"{config.where_set(name)} {getattr(config, name)} is pyFAI's model: not with "
                f"compat={compat!r} (MIDAS corrects by its own); remove the key or the compat"
            )
    if compat and error_model_from_config and config.error_model == "azimuthal":
        raise InvalidInputError(
            f"{config.where_set('error_model')} azimuthal is pyFAI's error model: not with "
            f"compat={compat!r} (MIDAS's sigmas are Poisson); remove the key or the compat"
        )
    if (
        compat
        and config.pixel_shape == "rectangular"
        and (config.pixel_size_z_um != config.pixel_size_y_um)
    ):
        raise InvalidInputError(
            f"{config.where_set('pixel_shape')} rectangular (pxZ {config.pixel_size_z_um:g} µm, "
            f"pxY {config.pixel_size_y_um:g} µm): not with compat={compat!r} (MIDAS's geometry "
            "has one pixel size, pxY, for both axes); remove the key or the compat"
        )
    if compat and config.module_gaps:
        raise InvalidInputError(
            f"{config.where_set('module_gaps')} {' '.join(map(str, config.module_gaps))} is "
            f"radint's key (pyFAI's module gaps, set from a PONI): not with compat={compat!r} "
            "(neither MIDAS program reads it, so C leaves those pixels in); remove the key, or "
            "the compat, or give the gaps in a MaskFile"
        )
    if compat == "midas-cpu" and config.radial_mode == "2theta":
        raise InvalidInputError(
            f"{config.where_set('tth_bin_deg')} {config.tth_bin_deg:g}: DetectorMapper and "
            "IntegratorZarrOMP have no 2θ bins (they ignore TthMin/TthMax/TthBinSize and bin "
            "in R), so compat='midas-cpu' cannot give C's numbers for them; remove the keys for "
            "C's R bins, give Q bins (QMin/QMax/QBinSize, which C reads), or use "
            "compat='midas-gpu' (midas-integrate's 2θ bins) or no compat"
        )


def _warn_where_integratorzarromp_writes_otherwise(config: IntegrationConfig) -> None:
    """Parameter files that IntegratorZarrOMP reads otherwise than its DetectorMapper (and
    radint) do: compat='midas-cpu' gives DetectorMapper's numbers and says what C writes."""
    if "pxY" in config.set_at and "px" not in config.set_at:
        warn_once(
            ("midas-cpu pxY", config.source),
            "%s: no px line; IntegratorZarrOMP reads only px and without it writes 2θ = Q = 0 "
            "into REtaMap and _lineout.xy (radint, like DetectorMapper, uses pxY)",
            config.where_set("pixel_size_y_um"),
        )
    if 3 in config.im_trans_opt:
        warn_once(
            ("midas-cpu ImTransOpt 3", config.source),
            '%s 3 (transpose): IntegratorZarrOMP refuses it ("TransformationOptions can only '
            'be 0, 1, 2": no output, exit 0); radint transposes, as DetectorMapper does',
            config.where_set("im_trans_opt"),
        )


def _midas_map_identity(directory: Path) -> str:
    """``"MIDAS Map.bin sha256:..."``: one digest of the directory's Map.bin and nMap.bin, so
    an output made from another map differs and one from the same map moved elsewhere does not."""
    from radint.io.nexus import file_digest

    parts = [
        file_digest(Path(directory) / name) or "unreadable" for name in ("Map.bin", "nMap.bin")
    ]
    combined = hashlib.sha256(" ".join(parts).encode()).hexdigest()
    return f"MIDAS Map.bin sha256:{combined}"


def rules_identity(compat: str | None, midas_dir: str | Path | None) -> str:
    """:attr:`Integrator.rules` of an Integrator with this ``compat`` on the MIDAS map in
    ``midas_dir`` (None: radint's own map)."""
    where = _midas_map_identity(Path(midas_dir)) if midas_dir is not None else "radint map"
    return f"{compat or 'radint'} rules, {where}"


class Integrator:
    """Integrate frames into (η, R) cakes and radial lineouts with one detector map.

    The settings it is built with (attributes such as ``normalize``, ``invalid_values``,
    ``map``) are read-only; only :attr:`fit` may be assigned later.

    Parameters
    ----------
    config : IntegrationConfig
        Geometry, binning and corrections.
    backend : {"cpu", "cuda", "auto"}
        ``"cpu"``: Rust/rayon. ``"cuda"``: CuPy kernels on the same map (``radint[gpu]``).
        ``"auto"``: cuda when usable, else cpu (with a log line saying why).
    n_threads : int, optional
        CPU threads (default: all cores; more than 4 per core are held to that, as results
        do not depend on the count). The library never sizes a global pool: it keeps one
        pool per thread count, and calls from several Python threads at once (one Integrator
        or several) take turns in it, each call using all of its threads.
    detector_map : DetectorMap, optional
        A prebuilt map (e.g. ``DetectorMap.load_midas``); built (or loaded from ``cache_dir``)
        when omitted.
    compat : {None, "midas-cpu", "midas-gpu"}
        Intensity rules: radint's own (default: empty bins NaN, area-weighted lineout), the
        MIDAS C CPU integrator's (masked-touched bins NaN, empty 0, lineout = mean of non-zero η
        bins) or the MIDAS GPU program's (A > 1e-9 else 0, area-weighted lineout; 2θ bins
        counted as midas-integrate counts them, so a ``detector_map`` given is built for
        ``config_for_compat(config, "midas-gpu")``).
    mask : ndarray of bool, shape (n_pixels_z, n_pixels_y), optional
        Integration-time pixel mask (True = ignore), on top of the map's MaskFile.
    flat : ndarray, shape (n_pixels_z, n_pixels_y), optional
        Flat-field response; pixels are divided by it (≤ 0, NaN or masked in a numpy masked
        array ⇒ masked). Without it the
        parameters' ``FlatFile`` is the flat (midas-integrate's rules: values ≤ 1e-12 or NaN
        leave the pixel undivided; ignored with ``compat="midas-cpu"``, whose C program does
        not read the key).
    dark : ndarray, shape (n_pixels_z, n_pixels_y), optional
        Dark image subtracted from every frame (NaN pixels, or masked in a numpy masked array,
        ⇒ masked), copied once here. The same as passing it to every ``integrate`` call (a
        ``dark=`` there takes precedence), but faster: on the CPU with float64 sums, radint's
        own map weights and no ``compat``, integer frames (and float frames with few or no NaN
        / inf) take a copy of the map's weights with dark, mask, flat, solid angle and
        polarization folded in, made once on the first such frame, so a frame costs what an
        uncorrected one does.
    solid_angle : {"midas", "exact", None, "config"}
        Solid-angle correction model; ``"config"`` (default) = the parameter file's
        ``SolidAngleModel`` (``"midas"`` unless set) if it sets ``SolidAngleCorrection 1``,
        else none.
    polarization : {"midas", "kahn", None, "config"}
        Polarization model; ``"config"`` = ``PolarizationModel`` (``"midas"`` unless set) if
        ``PolarizationCorrection 1``, else none.
    error_model : {"config", "poisson", "azimuthal", None}
        How sigmas are estimated; ``"config"`` (default) = the parameter file's ``ErrorModel``
        (``poisson`` unless set). ``"poisson"``: per-pixel variance ``max(raw, 1)``, propagated.
        ``"azimuthal"``: pyFAI's ``error_model="azimuthal"``, the spread of the corrected pixel
        values within each bin: σ = √(Σ a²·(x − I)²) / Σ a over a bin's pixels (values x,
        overlaps a, mean I), the lineout's over its whole ring (a pixel split between η bins
        counted once); a second pass over the map (CPU: 4.5-5x a Poisson integration; CUDA:
        its own kernel after the sums). Not with
        ``compat``, ``lineout_mode="midas_nonzero_mean"`` or MIDAS-weighted maps
        (GradientCorrection, MIDAS C maps). None: no sigma (faster). A ``variance=`` given to
        :meth:`integrate` / :meth:`integrate_stack` takes the place of either for that call.
    precision : {"float64", "float32"}
        Accumulator precision: float64 (default, ~1e-15 relative) or float32 (~1e-6, faster
        on CPUs without AVX-512 and with MIDAS-weighted maps; the AVX-512 kernels always sum in
        float64, as fast).
    lineout_mode : {"area_weighted", "midas_nonzero_mean"}
        η reduction of the lineout: Σ signal / Σ area (default) or MIDAS CPU's mean of the
        non-zero η bins. ``compat="midas-cpu"`` sets the latter; ``compat="midas-gpu"`` takes
        only the former (the GPU program's) and refuses the latter.
    empty_value : float
        Value of cake bins no pixel reached (NaN by default); their sigma takes it too unless
        it is negative (then NaN: a sigma is never negative).
    dead_below, hot_above : float, optional
        Raw values below / above these are treated as masked (costs one float copy per frame).
    pixel_weights : {"config", "area", "fraction"}
        ``"config"`` (default): the parameter file's ``PixelWeights`` (``area`` unless set). How
        a pixel's value is shared among the bins it overlaps: by the overlap's area in the
        tilt-corrected plane (default, MIDAS: a pixel weighs its area there, 1 px² untilted) or
        by the fraction of the pixel in each bin (pyFAI: every pixel counts once, so with
        ``Normalize 0`` totals are conserved on tilted detectors too;
        :meth:`~radint.detector_map.DetectorMap.with_pixel_fractions`). Not with ``compat``,
        GradientCorrection or MIDAS C maps, whose weights are MIDAS's.
    invalid_values : "config" or sequence of float
        Raw values that mark gap / bad pixels, left out like masked pixels (e.g. 65535 or
        4294967295 in Eiger frames, −1 and −2 in Pilatus frames; one float copy per frame).
        In unsigned integer frames a negative marker also matches its two's-complement value
        (−1: 4294967295 in uint32, 65535 in uint16), as Pilatus frames sent over the MIDAS
        stream protocol (which has no signed types) or cast to uint16 by ``--compress`` hold it.
        ``"config"`` (default) takes the parameter file's non-zero ``GapIntensity`` and
        ``BadPxIntensity`` (as MIDAS's calibrant integrator does; IntegratorZarrOMP ignores them,
        so with ``compat`` set they are not applied).
    cache_dir : path, optional
        Where to cache the built map (keyed by everything that shapes it).
    fit : {"config", None} or FitSpec or dict
        Peaks to fit on every lineout, into ``result.peaks``: ``"config"`` (default) follows the
        parameter file (``DoPeakFit``, ``PeakLocation`` in R px, ``AutoDetectPeaks``/``MaxNPeaks``,
        ``FitROIPadding``, ``FitROIAuto``, ``SNIPIterations``); None switches fitting off; a
        :class:`~radint.fit.FitSpec` (or a dict of its fields, e.g.
        ``{"positions_two_theta_deg": [3.1, 3.6]}``) chooses explicitly.
    """

    def __init__(
        self,
        config: IntegrationConfig,
        backend: str = "cpu",
        n_threads: int | None = None,
        detector_map: DetectorMap | None = None,
        compat: str | None = None,
        mask: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        dark: np.ndarray | None = None,
        solid_angle: str | None = "config",
        polarization: str | None = "config",
        error_model: str | None = "config",
        precision: str = "float64",
        lineout_mode: str = "area_weighted",
        empty_value: float = math.nan,
        dead_below: float | None = None,
        hot_above: float | None = None,
        invalid_values: Any = "config",
        pixel_weights: str = "config",
        cache_dir: str | Path | None = None,
        fit: Any = "config",
    ) -> None:
        # What pickling rebuilds this Integrator from (see __reduce__): the arrays as they are
        # now (a caller reusing its dark buffer must not change a copy made later).
        self._arguments: dict[str, Any] = {
            "config": config, "backend": backend, "n_threads": n_threads, "compat": compat,
            "mask": _kept(mask), "flat": _kept(flat), "dark": _kept(dark),
            "solid_angle": solid_angle,
            "polarization": polarization, "error_model": error_model, "precision": precision,
            "lineout_mode": lineout_mode, "empty_value": empty_value, "dead_below": dead_below,
            "hot_above": hot_above, "invalid_values": invalid_values,
            "pixel_weights": pixel_weights, "cache_dir": cache_dir,
        }  # fmt: skip
        if backend not in BACKENDS:
            raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if compat not in COMPAT:
            raise InvalidInputError(f"compat must be one of {COMPAT}, got {compat!r}")
        if error_model not in ("config", "poisson", "azimuthal", None):
            raise InvalidInputError(
                f"error_model must be 'config', 'poisson', 'azimuthal' or None, got {error_model!r}"
            )
        error_model_from_config = error_model == "config"
        if error_model_from_config:
            error_model = None if config.error_model == "none" else config.error_model
        elif error_model == "azimuthal" and compat:
            raise InvalidInputError(
                f"error_model='azimuthal' is pyFAI's error model: not with compat={compat!r} "
                "(MIDAS's sigmas are Poisson)"
            )
        if error_model == "azimuthal" and precision == "float32":
            raise InvalidInputError(
                "error_model='azimuthal' with precision='float32': the spread is taken about "
                "each bin's mean, and float32 sums put that mean's rounding into it (sigmas off "
                "by ~1e-3 at 1e6 counts); use precision='float64'"
            )
        if error_model == "azimuthal" and lineout_mode == "midas_nonzero_mean":
            raise InvalidInputError(
                "error_model='azimuthal' with lineout_mode='midas_nonzero_mean': the azimuthal "
                "spread of a lineout is taken over its whole ring, which the area-weighted "
                "lineout averages; the mean of the non-zero η bins has no such ring"
            )
        if precision not in ("float64", "float32"):
            raise InvalidInputError(f"precision must be 'float64' or 'float32', got {precision!r}")
        if lineout_mode not in ("area_weighted", "midas_nonzero_mean"):
            raise InvalidInputError(
                f"lineout_mode must be 'area_weighted' or 'midas_nonzero_mean', got {lineout_mode!r}"
            )
        if compat == "midas-gpu" and lineout_mode == "midas_nonzero_mean":
            raise InvalidInputError(
                "lineout_mode='midas_nonzero_mean' with compat='midas-gpu': MIDAS's GPU "
                "integrator and midas-integrate average the lineout over the bins' area, so "
                "compat='midas-gpu' does too; the mean of the non-zero η bins is "
                "IntegratorZarrOMP's (compat='midas-cpu' sets it) or radint's own without compat"
            )
        check_compat(config, compat, weights_from_config=pixel_weights == "config",
                     error_model_from_config=error_model_from_config)  # fmt: skip
        if pixel_weights == "config":
            pixel_weights = config.pixel_weights
        if pixel_weights not in ("area", "fraction"):
            raise InvalidInputError(
                f"pixel_weights must be 'config', 'area' or 'fraction', got {pixel_weights!r}"
            )
        if pixel_weights == "fraction" and (compat or config.gradient_correction):
            raise InvalidInputError(
                "pixel_weights='fraction' is radint's pyFAI-like weighting: not with compat "
                "(MIDAS's rules weigh by area) or GradientCorrection"
            )
        self.n_threads = check_n_threads(n_threads)
        self.config = config = config_for_compat(config, compat).validate()
        self.compat = compat
        if compat == "midas-cpu":
            _warn_where_integratorzarromp_writes_otherwise(self.config)
        self._corrections_at_source = False  # see _corrected_at_source
        #: Whether bins are divided by their area: ``Normalize`` 1 for IntegratorZarrOMP's
        #: rules (``== 1``), any non-zero value otherwise (the GPU program, midas-integrate).
        self.normalize = config.normalize == 1 if compat == "midas-cpu" else bool(config.normalize)
        self.fit = fit
        self.error_model = error_model
        self.precision = precision
        self.lineout_mode = "midas_nonzero_mean" if compat == "midas-cpu" else lineout_mode
        for name, value, optional in (("empty_value", empty_value, False),
                                      ("dead_below", dead_below, True),
                                      ("hot_above", hot_above, True)):  # fmt: skip
            if not (optional and value is None) and (
                isinstance(value, bool) or not isinstance(value, numbers.Real)
            ):
                raise InvalidInputError(
                    f"{name} must be a number{' or None' if optional else ''}, got {value!r}"
                )
        self.empty_value = 0.0 if compat else float(empty_value)
        self.dead_below = dead_below
        self.hot_above = hot_above
        if isinstance(invalid_values, str):
            if invalid_values != "config":
                raise InvalidInputError(
                    f"invalid_values must be 'config' or a sequence of numbers, got {invalid_values!r}"
                )
            markers = (self.config.gap_intensity, self.config.bad_px_intensity)
            invalid_values = () if compat else tuple(v for v in markers if v != 0)
            if invalid_values:
                log.info(
                    "pixels holding %s (GapIntensity / BadPxIntensity) are left out; "
                    "IntegratorZarrOMP ignores these keys, as compat='midas-cpu' does",
                    " or ".join(f"{v:g}" for v in invalid_values),
                )
        try:
            self.invalid_values = tuple(float(v) for v in invalid_values)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(
                f"invalid_values must be numbers, got {invalid_values!r}"
            ) from e
        self._markers_checked = False
        # Flat indices of the pixels marked in the last frames, and the map without them.
        self._marker_cache: tuple[np.ndarray, DetectorMap] | None = None
        # Float frames' NaN / inf pixels: those of the last call, and a map without them once
        # two calls in a row shared most of them (see _nan_map).
        self._nan_last: np.ndarray | None = None
        self._nan_cache: tuple[np.ndarray, DetectorMap] | None = None
        # Per thread: the float32 copies of float64 frames (see _narrowed).
        self._scratch = threading.local()
        self.backend = self._choose_backend(backend)
        # Read before the map is built: a wrong FlatFile fails at once (and leaves no cache).
        if flat is None and config.flat_file:
            if compat == "midas-cpu":
                warn_once(
                    ("flat_file", config.flat_file),
                    "%s %s ignored with compat='midas-cpu': IntegratorZarrOMP does not read "
                    "FlatFile (midas-integrate's key; radint's default and compat='midas-gpu' "
                    "divide by it)", config.where_set("flat_file"), config.flat_file,
                )  # fmt: skip
            else:
                from radint.corrections import read_flat_file

                flat = read_flat_file(config)
                # A copy gets the flat read now, not the file as it is where it is unpickled.
                self._arguments["flat"] = flat
        elif flat is not None and config.flat_file:
            log.info("flat given: the parameters' FlatFile %s is not used", config.flat_file)
        if detector_map is None:
            if cache_dir is not None:
                detector_map = DetectorMap.cached(config, cache_dir, n_threads=n_threads)
            else:
                detector_map = DetectorMap.build(config, n_threads=n_threads)
        elif detector_map.config is not config:
            # Not for a map built from this very configuration (an unpickled Integrator's own:
            # its files need not be readable where it is unpickled).
            detector_map.check_built_for(config, "the Integrator's configuration")
        if detector_map.shape != config.shape:
            raise ShapeError(
                f"detector map is for {detector_map.shape} (rows, columns) images, "
                f"the configuration for {config.shape}"
            )
        detector_map = self._sampled_as_compat(detector_map, config)
        midas_dir = detector_map.midas_sampling[0] if detector_map.midas_sampling else None
        if config.gradient_correction and not detector_map.gradient_corrected:
            if detector_map.corrections_folded:
                log.info("GradientCorrection: %s was read without it; used as is",
                         detector_map.origin)  # fmt: skip
            else:
                if compat:
                    detector_map = self._corrected_at_source(
                        detector_map, solid_angle, polarization
                    )
                detector_map = detector_map.with_gradient_correction(config)
        elif detector_map.corrected_at_source is not None:
            # Another Integrator's map: its weights hold the corrections already.
            models = self._models(solid_angle, polarization)
            if not compat or tuple(models) != detector_map.corrected_at_source:
                raise InvalidInputError(
                    f"detector_map ({detector_map.origin}) holds solid-angle/polarization "
                    f"corrections {detector_map.corrected_at_source} at each entry's pixel "
                    f"(GradientCorrection under a compat); this Integrator asks for {models} "
                    f"with compat={compat!r}: give its own map"
                )
            self._corrections_at_source = True
        if pixel_weights == "fraction":
            detector_map.check_not_empty(config, n_threads)
            detector_map = detector_map.with_pixel_fractions(n_threads)
        elif detector_map.pixel_fractions:
            raise InvalidInputError(
                f"detector_map ({detector_map.origin}) weighs pixels by fraction "
                "(an Integrator's with pixel_weights='fraction'): give pixel_weights='fraction', "
                "or a map of areas"
            )
        self.pixel_weights = pixel_weights
        self.map = detector_map
        if error_model == "azimuthal" and detector_map.weight is not None:
            raise InvalidInputError(
                f"error_model='azimuthal': the map ({detector_map.origin}) carries per-entry "
                "weights (GradientCorrection, or a MIDAS C map's folded corrections); the "
                "spread is taken about the mean over overlap areas, so it needs radint's own map "
                "without GradientCorrection"
            )
        #: What shaped the numbers beyond the configuration, as outputs store it (``radint
        #: batch --skip-existing`` compares it): the rules and whose map.
        self.rules = rules_identity(compat, midas_dir)
        self._scale = self._pixel_scale(mask, flat, solid_angle, polarization)
        #: The configuration results carry (and files store): :attr:`config` with the
        #: corrections and pixel weights given as arguments in place of the file's.
        self.applied_config = self._applied_config(solid_angle, polarization)
        if (
            "PolarizationFraction" in config.set_at
            and not self.polarization_model
            and not self.map.corrections_folded  # a C map's weights hold the polarization
        ):
            warn_once(
                ("PolarizationFraction unused", config.where_set("polarization_fraction")),
                "%s: no polarization correction is applied (PolarizationCorrection 1, or "
                "polarization='midas' / 'kahn', turns it on), so the fraction is not used",
                config.where_set("polarization_fraction"),
            )
        self._dark = self._prepare_dark(dark)
        if self._dark is not None:
            self._dark = self._dark.copy()  # ours: a caller's later change cannot reach it
            self._dark.flags.writeable = False
        bad = None if self._dark is None else ~np.isfinite(self._dark)
        self._dark_bad = bad if bad is not None and bad.any() else None
        self._check_pixels_left(mask)
        self._dark_image = None if self._dark is None else self._dark.reshape(config.shape)
        # (map core, that core with scale and dark folded in, the dark's per-bin offset).
        self._folded: tuple[Any, Any, np.ndarray | None] | None = None
        self._axes = self._make_axes()
        self._gpu: Any = None
        self._gpu_fit: tuple[Any, Any] = (None, None)
        if self.backend == "cuda":
            # Map upload and kernel compilation (seconds, the first time on a machine) now,
            # not on the first frame of a stream. A device that is there but cannot take the
            # kernels (NVRTC missing or too old for it, out of memory) is the same as none.
            try:
                self._gpu_backend().warm_up()
                if self.fit is not None and self.fit.runs_on_gpu:
                    self._gpu_fitter(self.fit)
            except Exception as e:
                why = f"{type(e).__name__}: {e}".strip()
                if backend != "auto":
                    raise BackendUnavailableError(
                        f"backend='cuda': the CUDA kernels cannot be set up on this machine "
                        f"({why}); use backend='cpu' or 'auto'"
                    ) from e
                log.warning("backend auto: using cpu (the CUDA kernels cannot be set up: %s)", why)
                self.backend = "cpu"
                self._gpu, self._gpu_fit = None, (None, None)
        # The settings are fixed once built: the map, pixel scale and caches follow from them,
        # and a value of another form (a list for invalid_values, 0 for normalize) broke every
        # later call. ``fit`` (a property, checked on assignment) may change.
        self._read_only = frozenset(name for name in vars(self) if not name.startswith("_"))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in getattr(self, "_read_only", ()):
            raise AttributeError(
                f"Integrator.{name} is read-only: the Integrator's map, corrections and caches "
                f"are set up from it when it is built; build another Integrator for another "
                f"{name} (configuration fields: Integrator(config.replace(...)))"
            )
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ setup
    def _sampled_as_compat(
        self, detector_map: DetectorMap, config: IntegrationConfig
    ) -> DetectorMap:
        """A MIDAS map read with the default sampling, read again the way the compat's C
        program samples (the GPU program reads the truncated pixel, the CPU one bilinearly)."""
        source = detector_map.midas_sampling
        if source is None or self.compat not in ("midas-cpu", "midas-gpu"):
            return detector_map
        directory, sampling, asked = source
        wanted = "floor" if self.compat == "midas-gpu" else "bilinear"
        if sampling == wanted:
            return detector_map
        if asked:
            log.warning(
                "compat=%r: the map from %s was read with sampling=%r; the C program samples "
                "%r, so numbers may differ from it", self.compat, directory, sampling, wanted,
            )  # fmt: skip
            return detector_map
        log.info("compat=%r: reading %s again with sampling=%r", self.compat, directory, wanted)
        return DetectorMap.load_midas(
            directory,
            config,
            sampling=wanted,
            gradient_correction=detector_map.gradient_corrected,
            n_threads=self.n_threads,
        )

    def _choose_backend(self, backend: str) -> str:
        if backend == "cpu":
            return "cpu"
        ok, why = _cuda_status()
        if backend == "cuda" and not ok:
            raise BackendUnavailableError(cuda_unavailable(why))
        if backend == "auto" and not ok:
            log.info("backend auto: using cpu (%s)", why)
            return "cpu"
        log.info("backend %s: using cuda (%s)", backend, why)
        return "cuda"

    def _applied_config(
        self, solid_angle: str | None, polarization: str | None
    ) -> IntegrationConfig:
        """The configuration results carry (and files store): :attr:`config` with the
        corrections and pixel weights given as arguments instead of the file's, so a file says
        what was applied (it said "no solid angle" after ``solid_angle="exact"``)."""
        changes: dict[str, Any] = {}
        for name, model in (("solid_angle", solid_angle), ("polarization", polarization)):
            if model != "config":
                changes[f"{name}_correction"] = model is not None
                if model is not None:
                    changes[f"{name}_model"] = model
        if self.pixel_weights != self.config.pixel_weights:
            changes["pixel_weights"] = self.pixel_weights
        if (self.error_model or "none") != self.config.error_model:
            changes["error_model"] = self.error_model or "none"
        return self.config.replace(**changes) if changes else self.config

    def _models(
        self, solid_angle_model: str | None, polarization_model: str | None
    ) -> tuple[str | None, str | None]:
        """The solid-angle and polarization models asked for, ``"config"`` resolved."""
        cfg = self.config
        if solid_angle_model == "config":
            solid_angle_model = cfg.solid_angle_model if cfg.solid_angle_correction else None
        if polarization_model == "config":
            polarization_model = cfg.polarization_model if cfg.polarization_correction else None
        return solid_angle_model, polarization_model

    def _geometric_correction(
        self, solid_angle_model: str | None, polarization_model: str | None
    ) -> np.ndarray:
        """Solid angle × polarization per pixel (flat, raw frame order)."""
        cfg = self.config
        correction = np.ones(cfg.shape[0] * cfg.shape[1])
        g = pixel_geometry(cfg, self.n_threads)
        if solid_angle_model:
            correction *= solid_angle(g, solid_angle_model)
        if polarization_model:
            correction *= polarization(
                g, polarization_model, cfg.polarization_fraction, cfg.polarization_plane_eta_deg
            )
        return correction

    def _corrected_at_source(
        self, detector_map: DetectorMap, solid_angle_model: str | None,
        polarization_model: str | None,
    ) -> DetectorMap:  # fmt: skip
        """``detector_map`` with 1 / (solid angle × polarization) of each entry's own pixel
        folded into its weight, before gradient resampling moves the weight onto the pixels
        around the shifted point: DetectorMapper bakes the correction of the entry's pixel
        into ``frac`` and IntegratorZarrOMP multiplies the value sampled there by it (applied
        per sampled pixel instead, cakes differed from the C program's by up to 1.7e-4)."""
        models = self._models(solid_angle_model, polarization_model)
        self._corrections_at_source = any(models)
        if not any(models):
            return detector_map
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = 1.0 / self._geometric_correction(*models)
        scale[~np.isfinite(scale)] = np.nan
        folded, _ = detector_map._core.folded(scale=scale, n_threads=self.n_threads)
        m = DetectorMap(folded, detector_map.config)
        m.built_for = detector_map.built_for
        m.corrections_folded = False  # radint's weights: resampled as its own map's
        m.corrected_at_source = models
        m.origin = f"{detector_map.origin}, corrections at each entry's pixel"
        return m

    def _check_pixels_left(self, mask: np.ndarray | None) -> None:
        """Refuse a setup that leaves no pixel to integrate (every result would be NaN): an R
        range off the detector, a mask or dark that takes every pixel, an empty value window;
        warn when the dark takes some pixels out."""
        cfg = self.config
        self.map.check_not_empty(cfg, self.n_threads)
        if self._scale is not None and not np.isfinite(self._scale).any():
            raise InvalidInputError(
                "every pixel is masked"
                + (" (mask= is non-zero everywhere: non-zero masks a pixel, as in MIDAS)"
                   if mask is not None else " (flat <= 0 or NaN everywhere)")
            )  # fmt: skip
        if cfg.radial_mode == "r" and "RMax" not in cfg.set_at:
            # MIDAS's default RMax (1524 px) suits a large detector: on a small one (a PONI
            # file without RMin/RMax overrides, say) most radial bins would be NaN.
            counts = np.diff(np.asarray(self.map.indptr, dtype=np.int64))
            reached = np.flatnonzero(counts.reshape(self.map.n_r, self.map.n_eta).any(axis=1))
            if reached.size and 4 * (reached[-1] + 1) < 3 * self.map.n_r:  # a quarter empty
                edges = np.asarray(self.map.r_edges_px)
                warn_once(
                    ("default RMax past the detector", cfg.r_max_px, float(edges[reached[-1] + 1])),
                    "RMax %g px (MIDAS's default) lies far past the detector, whose pixels end "
                    "at R %.1f px: %d of %d radial bins hold nothing; set RMax (and RBinSize)",
                    cfg.r_max_px, float(edges[reached[-1] + 1]),
                    self.map.n_r - reached[-1] - 1, self.map.n_r,
                )  # fmt: skip
        usable = None if self._scale is None else np.isfinite(self._scale)
        if self._dark_bad is not None:
            usable = ~self._dark_bad if usable is None else usable & ~self._dark_bad
        if usable is not None and not usable[np.asarray(self.map.pixel)].any():
            raise InvalidInputError(
                "every pixel the bins reach is masked (mask= / MaskFile, a flat <= 0 or NaN, "
                "a NaN dark): nothing would be integrated"
            )
        if self._dark_bad is not None:
            n_bad, n = int(self._dark_bad.sum()), self._dark_bad.size
            log.warning(
                "dark: %d of %d pixels are NaN or inf: they are left out of every frame "
                "(counted in metadata['nan_pixels'])", n_bad, n,
            )  # fmt: skip
        if (self.dead_below is not None and self.hot_above is not None
                and self.dead_below > self.hot_above):  # fmt: skip
            raise InvalidInputError(
                f"dead_below {self.dead_below:g} > hot_above {self.hot_above:g}: every pixel "
                "would be left out"
            )

    def _pixel_scale(
        self,
        mask: np.ndarray | None,
        flat: np.ndarray | None,
        solid_angle_model: str | None,
        polarization_model: str | None,
    ) -> np.ndarray | None:
        """1 / (solid angle × polarization × flat) per pixel, NaN where masked; None if all 1."""
        cfg = self.config
        solid_angle_model, polarization_model = self._models(solid_angle_model, polarization_model)
        if self.map.corrections_folded and (solid_angle_model or polarization_model):
            other = [f"{what} {model}" for what, model in (("solid angle", solid_angle_model),
                     ("polarization", polarization_model)) if model not in (None, "midas")]  # fmt: skip
            if other:
                raise InvalidInputError(
                    f"{self.map.origin}: its weights hold MIDAS's solid-angle / polarization "
                    f"corrections (DetectorMapper folds them in), which {', '.join(other)} "
                    "cannot replace: drop the MIDAS map (--midas-map) or the model"
                )
            log.info(
                "MIDAS map: corrections are already folded into its weights; not applied again"
            )
            solid_angle_model = polarization_model = None
        self.solid_angle_model = solid_angle_model
        self.polarization_model = polarization_model
        if self._corrections_at_source:  # in the map's weights already
            solid_angle_model = polarization_model = None
        shape = cfg.shape
        if not (solid_angle_model or polarization_model) and flat is None and mask is None:
            return None
        correction = np.ones(shape[0] * shape[1])
        used = False
        if solid_angle_model or polarization_model:
            correction = self._geometric_correction(solid_angle_model, polarization_model)
            used = True
        if flat is not None:
            dtype = np.asarray(flat).dtype
            if dtype.kind not in "biuf":
                raise DtypeError(f"flat: expected a real numeric array, got dtype {dtype}")
            flat = _as_float64(flat)
            if flat.shape != shape:
                raise ShapeError(f"flat: expected shape {shape} (rows, columns), got {flat.shape}")
            flat = flat.ravel()
            correction = correction * np.where(flat > 0, flat, np.nan)
            used = True
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = 1.0 / correction
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != shape:
                raise ShapeError(f"mask: expected shape {shape} (rows, columns), got {mask.shape}")
            scale[mask.ravel().astype(bool)] = np.nan
            used = True
        scale[~np.isfinite(scale)] = np.nan
        return np.ascontiguousarray(scale) if used else None

    def _make_axes(self) -> dict[str, np.ndarray]:
        cfg = self.config
        r_edges = np.asarray(self.map.r_edges_px, dtype=np.float64)
        eta_edges = np.asarray(self.map.eta_edges_deg, dtype=np.float64)
        # Centres in the unit the bins are uniform in (as MIDAS's Q-mode text axis); the other
        # units are that centre converted, so every axis names the same point of the bin.
        k = np.arange(len(r_edges) - 1) + 0.5
        scale = cfg.lsd_um / cfg.pixel_size_y_um
        if cfg.radial_mode == "2theta":
            tth = cfg.tth_min_deg + k * cfg.tth_bin_deg
            r = scale * np.tan(np.radians(tth))
        elif cfg.radial_mode == "q":
            q_c = cfg.q_min + k * cfg.q_bin
            tth = np.degrees(2 * np.arcsin(q_c * cfg.wavelength_angstrom / (4 * math.pi)))
            r = scale * np.tan(np.radians(tth))
        else:
            r = 0.5 * (r_edges[1:] + r_edges[:-1])
            tth = cfg.two_theta_deg(r)
        q = cfg.q_inv_angstrom(r)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(q > 0, 2 * math.pi / q, np.nan)
        axes = {
            "radius_px": r,
            "two_theta_deg": tth,
            "q_inv_angstrom": q,
            "d_spacing_angstrom": d,
            "eta_deg": 0.5 * (eta_edges[1:] + eta_edges[:-1]),
            "r_edges_px": r_edges,
            "eta_edges_deg": eta_edges,
        }
        # Every Result of this integrator holds these very arrays (writers key their layout
        # caches on them): read-only, so an in-place edit of one result's axis raises instead
        # of changing all the others.
        for axis in axes.values():
            axis.flags.writeable = False
        return axes

    # ------------------------------------------------------------------ checks
    def _check_frames(self, frames: Any, ndim: int, what: str) -> np.ndarray:
        if _on_device(frames):
            if self.backend != "cuda":
                raise InvalidInputError(
                    f"{what}: on the GPU, but this Integrator runs on the CPU (backend "
                    f"{self.backend!r}): use backend='cuda', or copy the frames to the host"
                )
            if self.dead_below is None and self.hot_above is None and not self.invalid_values:
                return self._device_frames(frames, ndim, what)
            # Those test pixel values on the host (GapIntensity / BadPxIntensity set them by
            # default): the frames come to the host for it, once per call.
            info_once(
                "device frames to host",
                "GPU frames are copied to the host: dead_below / hot_above / invalid_values "
                "(GapIntensity, BadPxIntensity) test the pixel values there; "
                "Integrator(..., invalid_values=()) reads them in place",
            )
            frames = _on_host(frames)
        if isinstance(frames, Iterator):  # np.asarray makes a 0-d object array of it
            raise InvalidInputError(
                f"{what}: expected an array or a list of arrays, got {type(frames).__name__} "
                "(an iterator: pass list(...) of it)"
            )
        # A numpy masked array's masked pixels are left out as NaN pixels are (np.asarray
        # keeps only the values, the masked ones included).
        masked = np.ma.getmask(frames) if isinstance(frames, np.ma.MaskedArray) else None
        a = np.asarray(frames)
        if a.dtype not in _SUPPORTED_DTYPES:
            if a.dtype.kind in "iub" and a.dtype.itemsize <= 8:
                a = a.astype(
                    np.int64
                    if a.dtype.kind == "i"
                    else np.uint32
                    if a.dtype.itemsize <= 4
                    else np.float64
                )
            elif a.dtype.kind == "f":
                a = a.astype(np.float64)
            else:
                raise DtypeError(
                    f"{what}: dtype must be a real number type (integers of 1-8 bytes, float16/"
                    f"32/64 or bool; uint8/16/32, int32/64 and float32/64 are read in place), "
                    f"got {a.dtype}"
                )
        shape = self.config.shape
        if a.ndim != ndim or a.shape[-2:] != shape:
            rows, cols = shape
            want = f"({rows}, {cols})" if ndim == 2 else f"(n_frames, {rows}, {cols})"
            swapped = a.ndim == ndim and a.shape[-2:] == shape[::-1] and rows != cols
            hint = " (its transpose: are NrPixelsY and NrPixelsZ swapped?)" if swapped else ""
            raise ShapeError(
                f"{what}: expected shape {want} (NrPixelsZ rows, NrPixelsY columns), got "
                f"{a.shape}{hint}"
            )
        # Aligned too: a frame viewed in a byte buffer after a 4-byte header (a MIDAS wire
        # payload of 8-byte pixels) is C-contiguous but cannot be read in place.
        a = np.require(a, requirements=("C", "A"))
        left_out = None if masked is None or not masked.any() else np.array(masked, dtype=bool)
        if left_out is None and self._markers_by_map(a):
            return a  # _run leaves the marked pixels out through a map without them
        if (left_out is not None or self.dead_below is not None or self.hot_above is not None
                or self.invalid_values):  # fmt: skip
            bad = np.zeros(a.shape, dtype=bool) if left_out is None else left_out
            for v in self._stored_markers(a.dtype):  # on the stored values, before any conversion
                bad |= a == v
            if self.dead_below is not None:
                bad |= a < self.dead_below
            if self.hot_above is not None:
                bad |= a > self.hot_above
            a = a.astype(_exact_float(a, bad))
            a[bad] = np.nan
        elif not self._markers_checked:
            self._markers_checked = True
            self._warn_marker_values(a, what)
        return a

    def _stored_markers(self, dtype: np.dtype) -> tuple[float | int, ...]:
        """``invalid_values`` as frames of ``dtype`` hold them: in unsigned integer frames a
        negative whole marker also matches its two's-complement value (−1 → 4294967295 in
        uint32, 65535 in uint16). Pilatus frames (int32, −1 / −2 in gaps and bad pixels) hold
        those where they went through an unsigned type: the MIDAS stream protocol has no
        signed types, so senders pass them on as unsigned, and MIDAS's ``--compress`` casts
        frames up to 65535 to uint16."""
        values = self.invalid_values
        if dtype.kind != "u":
            return values
        bits = 8 * dtype.itemsize
        wrapped = tuple(
            int(v) + (1 << bits)
            for v in values
            if v < 0 and v.is_integer() and v >= -(1 << (bits - 1))
        )
        return values + wrapped

    def _markers_by_map(self, a: np.ndarray) -> bool:
        """Whether the pixels holding ``invalid_values`` are left out by integrating the
        integer frames with a map without them (see :meth:`_marker_map`) rather than through a
        float copy with NaN: integer frames on the CPU, markers the only per-frame rule."""
        return (
            bool(self.invalid_values) and self.dead_below is None and self.hot_above is None
            and a.dtype.kind in "iu" and self.backend == "cpu" and self.map.weight is None
        )  # fmt: skip

    def _marker_map(self, parts: list[np.ndarray]) -> tuple[Any, list[np.ndarray], int]:
        """The map core to integrate ``parts`` with, the parts to integrate, and the pixels left
        out per frame. Detectors mark the same gap / dead pixels in every frame: when all
        frames of the call mark the same pixels, a map without those pixels' entries (cached
        while they stay the same) keeps the integer kernels, which leave out exactly what NaN
        would (signal, area, count, variance), at the speed of an unmasked frame. Frames that
        differ take the float copy with NaN."""
        # In the frames' own integer type (a float comparison costs ~3× as much); a value that
        # type cannot hold marks nothing.
        info = np.iinfo(parts[0].dtype)
        values = np.array(
            [
                v for v in self._stored_markers(parts[0].dtype)
                if float(v).is_integer() and info.min <= v <= info.max
            ],
            dtype=parts[0].dtype,
        )  # fmt: skip
        frames = [f for p in parts for f in p.reshape(-1, p.shape[-2] * p.shape[-1])]
        cached = self._marker_cache
        # The cached pixels still marked and no others (a few thousand lookups, and one
        # multithreaded count per frame): the cheap check for the common case.
        wanted = [int(v) for v in values]
        if cached is None or not all(
            np.isin(f[cached[0]], values).all()
            and _core.count_equal(f, wanted, self.n_threads) == cached[0].size
            for f in frames
        ):
            marked = [np.isin(f, values) for f in frames]
            first = marked[0]
            if not all(np.array_equal(m, first) for m in marked[1:]):
                slow = []
                for p in parts:
                    m = np.isin(p, values)
                    q: np.ndarray = p.astype(_exact_float(p, m))
                    q[m] = np.nan
                    slow.append(q)
                return self.map._core, slow, -1
            cached = self._marker_cache = (np.flatnonzero(first), self._without(first))
        return cached[1]._core, parts, int(cached[0].size)

    def _narrowed(self, parts: list[np.ndarray]) -> tuple[list[np.ndarray], int] | None:
        """The float64 frames ``parts`` as float32 copies, and their NaN / inf count, where
        every finite value is exactly a float32 (counts stored as float64, the usual case) and
        the call holds at most ``_NARROW_MAX_FRAMES`` frames; None otherwise. The float32
        kernels then give the same sums bit for bit (each value widens back to itself), with
        gathers half the size: a Pilatus 2M cake 3.4 → 1.7 ms (Zen 5, 2 threads). The copies
        live in a buffer of this thread's, reused call after call (a fresh one costs its page
        faults)."""
        n_pixels = parts[0].shape[-1] * parts[0].shape[-2]
        n = sum(p.size for p in parts)
        if n > _NARROW_MAX_FRAMES * n_pixels:
            return None
        buf = getattr(self._scratch, "f32", None)
        if buf is None or buf.size < n:
            buf = self._scratch.f32 = np.empty(n, np.float32)
        out, at, nonfinite = [], 0, 0
        for p in parts:
            view = buf[at : at + p.size].reshape(p.shape)
            count = _core.narrow_to_f32(p, view, self.n_threads)
            if count is None:
                return None
            out.append(view)
            at += p.size
            nonfinite += count
        return out, nonfinite

    def _nan_map(
        self, parts: list[np.ndarray], own_dark: bool, nonfinite: int
    ) -> tuple[Any, int] | None:
        """A map core without the pixels where the float frames ``parts`` (``nonfinite`` NaN /
        inf values in all) hold NaN or inf call after call, and how many such values the frames
        hold elsewhere; None where no such map serves. Gaps or dead pixels set to NaN then
        integrate as fast as frames without NaN: through the kernels of frames whose every value
        counts (a fixed scale or dark folds), or, with a few NaN elsewhere too (hot pixels that
        come and go), those kernels with their spoiled bins summed again (Pilatus 2M float32
        cake with NaN gap rows and columns, Zen 5, 2 threads: 4.2–4.5 → 1.5 ms). Each call
        leaves out exactly what NaN would.

        The map is built (~0.1 s for a Pilatus 2M) once two calls in a row share non-finite
        pixels that make up most of each call's (every frame non-finite there), and kept while
        every frame stays non-finite there; frames whose NaN move from call to call never pay
        for it."""
        foldable = own_dark and self.precision == "float64"
        if (
            nonfinite == 0 or self.backend != "cpu" or self.compat or self.map.weight is not None
            or not (foldable or (self._scale is None and self._dark is None and own_dark))
        ):  # fmt: skip
            return None
        n_pixels = parts[0].shape[-1] * parts[0].shape[-2]
        frames = [f for p in parts for f in p.reshape(-1, n_pixels)]

        def elsewhere(pixels: np.ndarray) -> int | None:
            # Non-finite values off `pixels`, where every frame is non-finite there; else None.
            rest = nonfinite - len(frames) * pixels.size
            if rest < 0 or any(np.isfinite(f[pixels]).any() for f in frames):
                return None
            return rest

        cached = self._nan_cache
        fallback = None
        if cached is not None:
            rest = elsewhere(cached[0])
            if rest is not None:
                fallback = cached[1]._core, rest
                if rest <= len(frames) * cached[0].size:
                    return fallback
                # More non-finite values elsewhere than at the cached pixels: a wider fixed
                # pattern (a larger gap set) replaces the cached one once two calls share it.
        # Non-finite in every frame of this call.
        pixels = _core.nonfinite_pixels(np.ascontiguousarray(frames[0]), self.n_threads)
        pixels = pixels.astype(np.intp)
        for f in frames[1:]:
            pixels = pixels[~np.isfinite(f[pixels])]
        last, self._nan_last = self._nan_last, pixels
        if last is None:
            return fallback  # seen once: built if the next call shares most of them
        shared = np.intersect1d(last, pixels, assume_unique=True)
        if shared.size == 0 or 2 * shared.size < pixels.size or 2 * shared.size < last.size:
            return fallback
        marked = np.zeros(n_pixels, dtype=bool)
        marked[shared] = True
        self._nan_cache = (shared, self._without(marked))
        rest = elsewhere(shared)
        return self._nan_cache[1]._core, 0 if rest is None else rest

    def _without(self, marked: np.ndarray) -> DetectorMap:
        """This integrator's map without the entries of the ``marked`` pixels (flat bool)."""
        m = self.map
        if not marked.any():
            return m
        keep = ~marked[m.pixel]
        if keep.all():  # marked pixels the map never reads
            return m
        counts: np.ndarray = np.diff(np.asarray(m.indptr, dtype=np.int64))
        bins = np.repeat(np.arange(counts.size), counts)
        indptr = np.zeros(counts.size + 1, dtype=np.uint64)
        np.cumsum(np.bincount(bins[keep], minlength=counts.size), out=indptr[1:])
        return DetectorMap.from_arrays(
            m.shape, m.r_edges_px, m.eta_edges_deg, indptr, m.pixel[keep], m.area[keep],
            m.delta_r[keep], None, m.mask_hit, m.bin_geometric_area, m.config,
            n_threads=self.n_threads,
        )  # fmt: skip

    def _warn_marker_values(self, a: np.ndarray, what: str) -> None:
        """Warn (once per Integrator, on its first frames) when integer frames hold, in pixels
        that reach a bin unmasked, the values detectors use to mark gaps and bad pixels."""
        # Most frames hold none: a count (multithreaded, no temporary) or a minimum says so
        # before a mask of the whole stack is made (~40 ms of fresh pages for eight Pilatus
        # 2M frames in a new process, against ~2 ms).
        if a.dtype.kind == "u" and a.dtype.itemsize >= 2:
            top = int(np.iinfo(a.dtype).max)
            if a.dtype.itemsize <= 4 and not _core.count_equal(a, [top], self.n_threads):
                return
            marked = a == top
        elif a.dtype.kind == "i":
            if a.size == 0 or a.min() >= 0:
                return
            marked = a < 0
        else:
            return
        marked = marked.reshape(-1, marked.shape[-1] * marked.shape[-2]).any(axis=0)
        if not marked.any():
            return
        used = np.zeros(marked.size, dtype=bool)
        used[self.map.pixel] = True
        if self._scale is not None:
            used &= np.isfinite(self._scale)
        values = np.unique(a.reshape(-1, marked.size)[:, marked & used])
        configured = {self.config.gap_intensity, self.config.bad_px_intensity} - {0.0}
        if self.compat and configured & set(values.tolist()):
            return  # set in the parameters; the compat rules integrate them, as C does
        n = int((marked & used).sum())
        if n and a.dtype.kind == "u":
            top = int(np.iinfo(a.dtype).max)
            log.warning(
                "%s: %d pixel(s) hold %d, the %s maximum, which Eiger-type detectors write in "
                "gaps and bad pixels (and a Pilatus frame's -1 becomes when sent unsigned, as "
                "over the MIDAS stream protocol); they are integrated as counts. To leave them "
                "out, add 'GapIntensity %d' (Pilatus: 'GapIntensity -1' and 'BadPxIntensity -2') "
                "to the parameter file or the command line, or mask them",
                what, n, top, a.dtype, top,
            )  # fmt: skip
        elif n:
            log.warning(
                "%s: %d pixel(s) hold negative counts (%s), which Pilatus-type detectors write "
                "in gaps (-1) and bad pixels (-2); they are integrated as counts. To leave them "
                "out, add 'GapIntensity -1' and 'BadPxIntensity -2' to the parameter file or the "
                "command line, or mask them",
                what, n, ", ".join(str(int(v)) for v in values[:4]),
            )  # fmt: skip

    def _device_frames(self, frames: Any, ndim: int, what: str) -> Any:
        """Frames on the GPU (CuPy, or any ``__cuda_array_interface__`` array) as a CuPy view,
        for the CUDA backend to read in place; their dtype and device are checked there."""
        from radint.gpu import _import_cupy

        a = _import_cupy().asarray(frames)  # a view of the same device memory
        shape = self.config.shape
        if a.ndim != ndim or tuple(a.shape[-2:]) != shape:
            want = (
                f"({shape[0]}, {shape[1]})" if ndim == 2 else f"(n_frames, {shape[0]}, {shape[1]})"
            )
            raise ShapeError(f"{what}: expected shape {want} (on the GPU), got {tuple(a.shape)}")
        return a

    def _prepare_dark(self, dark: Any) -> np.ndarray | None:
        if dark is None:
            return None
        dark = _on_host(dark)
        d = np.asarray(dark)
        if d.dtype.kind not in "iuf":
            raise DtypeError(f"dark: expected a real numeric array, got dtype {d.dtype}")
        if d.shape != self.config.shape:
            raise ShapeError(
                f"dark: expected shape {self.config.shape} (rows, columns), got {d.shape}"
            )
        flat = np.ascontiguousarray(_as_float64(dark)).ravel()
        if (d.dtype.kind == "f" or np.ma.is_masked(dark)) and not np.isfinite(flat).any():
            raise InvalidInputError(f"dark: every pixel is NaN or inf ({flat.size} pixels)")
        return flat

    def _prepare_variance(self, variance: Any) -> np.ndarray | None:
        if variance is None:
            return None
        variance = _on_host(variance)
        v = np.asarray(variance)
        if v.dtype.kind not in "biuf":
            raise DtypeError(f"variance: expected real numbers, got dtype {v.dtype}")
        v = _as_float64(variance)
        if v.shape != self.config.shape:
            raise ShapeError(
                f"variance: expected shape {self.config.shape} (rows, columns), got {v.shape}"
            )
        bad = (v < 0) | np.isinf(v)  # NaN is let through: it marks the bins' sigma unknown
        if bad.any():
            raise InvalidInputError(
                f"variance: must be >= 0 and not infinite (NaN marks a pixel's variance "
                f"unknown: its bins' sigma is NaN), found {int((v < 0).sum())} negative and "
                f"{int(np.isinf(v).sum())} infinite values"
            )
        return np.ascontiguousarray(v).ravel()

    # ------------------------------------------------------------------ integration
    def integrate(self, frame: Any, dark: Any = None, variance: Any = None) -> Result:
        """Integrate one frame ``(n_pixels_z, n_pixels_y)`` (raw orientation).

        NaN and ±inf pixels (float frames) are treated as masked: they contribute neither signal
        nor area, and ``result.metadata["nan_pixels"]`` counts them, with the pixels ``dead_below``
        / ``hot_above`` / ``invalid_values`` leave out, those whose dark is NaN and the masked
        pixels of a numpy masked array (``frame.filled(nan)``, for integer frames too). Frames
        holding them at the same pixels as the previous call integrate through a map without
        those pixels (built then, kept while they stay), as fast as frames without NaN.

        Parameters
        ----------
        frame : ndarray ``(n_pixels_z, n_pixels_y)``
            Integer (1–8 bytes), float or bool pixels; uint8/16/32, int32/64 and float32/64 are
            read in place, other types converted once. A ``numpy.ma.MaskedArray``'s masked
            pixels are left out (a float copy with NaN there). With ``backend="cuda"`` also a
            GPU array (CuPy, torch, any ``__cuda_array_interface__``), read in place.
        dark : ndarray ``(n_pixels_z, n_pixels_y)``, optional
            Subtracted from the frame, in place of the Integrator's own dark (NaN pixels, and a
            masked array's masked ones, are left out).
        variance : ndarray ``(n_pixels_z, n_pixels_y)``, optional
            Per-pixel variance, used for this call in place of the Integrator's ``error_model``
            (also when that is None): propagated into ``cake_sigma`` and ``lineout_sigma``; NaN
            marks a pixel's variance unknown (its bins' sigma is NaN).

        Returns
        -------
        Result
            ``cake (n_eta, n_r)``, ``lineout (n_r,)``, their sigmas, areas, counts and axes.

        Raises
        ------
        ShapeError, DtypeError, InvalidInputError
            A frame, dark or variance of the wrong shape or type, negative variances.
        """
        a = self._check_frames(frame, 2, "frame")
        return self._run(a, dark, variance, stack=False)

    def integrate_stack(self, frames: Any, dark: Any = None, variance: Any = None) -> Result:
        """Integrate a stack ``(n_frames, n_pixels_z, n_pixels_y)``, reading the map once per
        block of frames (sparse matrix × many vectors: 4 frames in the AVX-512 kernels of
        frames whose every value counts, pairs in the others, 8 frames in the portable one,
        which shares the map only for sums without variance).

        ``frames`` may also be a list of frames ``(n_pixels_z, n_pixels_y)``, each in a buffer
        of its own (frames received or read separately): they are integrated as one stack on
        the CPU without being copied into one first.

        Parameters
        ----------
        frames : ndarray ``(n_frames, n_pixels_z, n_pixels_y)`` or list of 2-D ndarrays
            Integer (1–8 bytes), float or bool pixels; masked arrays' masked pixels are left
            out. An empty array gives a 0-frame Result; an empty list or an iterator is refused.
            With ``backend="cuda"`` also GPU arrays (or a list of them), read in place.
        dark : ndarray ``(n_pixels_z, n_pixels_y)``, optional
            Subtracted from every frame, in place of the Integrator's own dark (NaN pixels, and
            a masked array's masked ones, are left out).
        variance : ndarray ``(n_pixels_z, n_pixels_y)``, optional
            Per-pixel variance of every frame, in place of the Integrator's ``error_model``
            (as in :meth:`integrate`); one for the stack.

        Returns
        -------
        Result
            ``cake (n_frames, n_eta, n_r)``, ``lineout (n_frames, n_r)`` and their sigmas;
            ``metadata["nan_pixels"]`` is the total over the frames.

        Raises
        ------
        ShapeError, DtypeError, InvalidInputError
            Frames, dark or variance of the wrong shape or type, negative variances.
        """
        if isinstance(frames, (list, tuple)):
            if not frames:
                raise ShapeError("frames: an empty list")
            parts = [self._check_frames(f, 2, f"frames[{k}]") for k, f in enumerate(frames)]
            if any(not isinstance(p, np.ndarray) for p in parts):  # on the GPU: checked there
                return self._run(parts, dark, variance, stack=True)
            dtype = np.result_type(*parts)
            if any(p.dtype != dtype for p in parts):
                # Integrated in the common type, so checked again in it: an integer part whose
                # marker values were left for the marker map gets them masked once it is float.
                parts = [
                    self._check_frames(p.astype(dtype), 2, f"frames[{k}]")
                    for k, p in enumerate(parts)
                ]
            return self._run(parts, dark, variance, stack=True)
        a = self._check_frames(frames, 3, "frames")
        return self._run(a, dark, variance, stack=True)

    def _folds(self, a: np.ndarray, nonfinite: int, core: Any = None, n_frames: int = 1) -> bool:
        """Whether ``n_frames`` frames like ``a`` (holding ``nonfinite`` NaN / inf values in
        all) integrate through the folded map of ``core`` (:meth:`_folded_map`; this
        integrator's map by default): frames whose every value counts (integer, or float
        without NaN or inf), or float frames with few enough NaN / inf that the bins they spoil
        are summed again (with the dark entry by entry), on the CPU with a fixed scale or dark,
        float64 sums, radint's own map weights (MIDAS-weighted maps keep the C summation
        order). The folded map's weights go through the same gather kernels as plain areas
        where those run (Pilatus 2M cake with a dark and Poisson sigma, Zen 5: 2.0 ms folded
        against 6.1 with the dark read per entry; 1.9 without a dark)."""
        core = self.map._core if core is None else core
        return (
            (self._scale is not None or self._dark is not None)
            and (nonfinite == 0 or core.spoils_few_bins(n_frames, nonfinite))
            and a.dtype.kind in "iuf" and self.backend == "cpu"
            and self.precision == "float64" and not self.compat and self.map.weight is None
            and self.error_model != "azimuthal"  # the spread needs each pixel's own value
        )  # fmt: skip

    def _folded_map(self, core: Any) -> tuple[Any, np.ndarray | None]:
        """``core`` (this integrator's map, or its marker map) with the scale and dark folded
        into its weights, and the signal offset per bin the dark leaves (None without a dark;
        built once per core, ~one frame's integration time)."""
        cached = self._folded  # one read: another thread may replace it meanwhile
        if cached is None or cached[0] is not core:
            folded, offset = core.folded(
                scale=self._scale, dark=self._dark, n_threads=self.n_threads
            )
            cached = self._folded = (core, folded, None if self._dark is None else offset)
        return cached[1], cached[2]

    def _run(
        self, frames: np.ndarray | list[np.ndarray], dark: Any, variance: Any, stack: bool
    ) -> Result:
        own_dark = dark is None or (self._dark_image is not None and dark is self._dark_image)
        dark_flat = self._dark if own_dark else self._prepare_dark(dark)
        var_flat = self._prepare_variance(variance)
        gpu_fit = None
        marked = 0  # pixels per frame the marker map leaves out
        frames_nonfinite = 0  # NaN / inf values in the frames (CPU: counted below)
        parts = frames if isinstance(frames, list) else [frames]
        if self.backend == "cuda":
            gpu = self._gpu_backend()
            # What the Result holds (the per-bin signal only for the MIDAS CPU masked-bin
            # values); the variance sums stay on the device.
            keys: tuple[str, ...] = ("cake", "cake_sigma", "lineout", "lineout_sigma", "area")
            keys += ("count", "signal") if self.compat == "midas-cpu" else ("count",)
            fits_on_gpu = self.fit is not None and self.fit.runs_on_gpu
            outs, fits = [], []
            # A list of frames is staged frame by frame, never stacked on the host first.
            for block in self._gpu_blocks(frames):
                dev, block_out = gpu.run(block, dark_flat, var_flat, host_keys=keys)
                outs.append(block_out)
                if self.fit is not None and fits_on_gpu:
                    # Fitted where the lineouts already are; only the fit table comes back.
                    lineouts = dev["lineout"].reshape(-1, self.map.n_r)
                    fits.append(self._gpu_fitter(self.fit).fit(lineouts))
                del dev  # the block's device results go back to the pool before the next
            out = outs[0] if len(outs) == 1 else _joined(outs)
            gpu_fit = None if not fits else fits[0] if len(fits) == 1 else _joined(fits)
        else:
            core, scale, offset = self.map._core, self._scale, None
            if self._markers_by_map(parts[0]):
                core, parts, marked = self._marker_map(parts)
                frames = parts if isinstance(frames, list) else parts[0]
            narrowed = self._narrowed(parts) if parts[0].dtype == np.float64 else None
            if narrowed is not None:
                parts, nonfinite = narrowed
                frames = parts if isinstance(frames, list) else parts[0]
            else:
                # Counted once here: float frames without NaN or inf fold as integer frames do,
                # and take the kernels that skip the NaN tests.
                nonfinite = (
                    _core.count_nonfinite(frames, self.n_threads)
                    if parts[0].dtype.kind == "f"
                    else 0
                )
            frames_nonfinite = nonfinite
            nan_map = self._nan_map(parts, own_dark, nonfinite)
            if nan_map is not None:
                core, nonfinite = nan_map  # the map reads none of the fixed pixels
            n_frames = sum(1 if p.ndim == 2 else p.shape[0] for p in parts)
            if own_dark and self._folds(parts[0], nonfinite, core, n_frames):
                core, offset = self._folded_map(core)
                scale = None
            out = _core.integrate(
                core,
                frames,
                dark=dark_flat if offset is None else None,
                scale=scale,
                signal_offset=offset,
                error_model="given" if var_flat is not None else (self.error_model or "none"),
                variance=var_flat,
                precision=self.precision,
                normalize=self.normalize,
                rules=self.compat or "radint",
                lineout=self.lineout_mode,
                empty_value=self.empty_value,
                nan_masked_bins=False,
                n_threads=self.n_threads,
                nonfinite=nonfinite,
                # The folded dark, for bins that NaN / inf values make the kernels sum again.
                offset_dark=None if offset is None else self._dark,
            )
        # When the frames were integrated (Unix s, one per frame): every output of the result
        # stores this, not the time it happens to be written.
        n_done = int(out["n_frames"])
        meta: dict[str, Any] = {"backend": self.backend, "timestamp": np.full(n_done, time.time()),
                                "rules": self.rules}  # fmt: skip
        if dark_flat is self._dark:
            dark_bad = self._dark_bad
        else:
            dark_bad = None if dark_flat is None else ~np.isfinite(dark_flat)
            if dark_bad is not None and not dark_bad.any():
                dark_bad = None
        if parts[0].dtype.kind == "f" and dark_bad is None and self.backend == "cpu":
            # NaN / ±inf values (masked by dead_below, hot_above, invalid_values, or in the frame
            # itself), counted above in the pass that picks the kernels.
            meta["nan_pixels"] = frames_nonfinite
        elif parts[0].dtype.kind == "f" or dark_bad is not None:
            # Pixels left out of this call: NaN / ±inf values and NaN dark pixels, counted per
            # frame.
            def left_out(p: np.ndarray) -> int:
                if not isinstance(p, np.ndarray):  # frames on the GPU: counted there
                    from radint.gpu import _import_cupy

                    cp = _import_cupy()
                    rows = p.reshape(-1, p.shape[-1] * p.shape[-2])
                    bad_d = (
                        cp.logical_not(cp.isfinite(rows))
                        if p.dtype.kind == "f"
                        else cp.zeros(rows.shape, dtype=bool)
                    )
                    if dark_bad is not None:
                        bad_d = cp.logical_or(bad_d, cp.asarray(dark_bad.reshape(1, -1)))
                    return int(cp.count_nonzero(bad_d))
                flat = p.reshape(-1, p.shape[-1] * p.shape[-2])
                bad = ~np.isfinite(flat) if p.dtype.kind == "f" else np.zeros(flat.shape, bool)
                # count_nonzero: bool.sum() widens every element to int64 first (0.5 ms a
                # Pilatus 2M frame, a tenth of a float frame's integration).
                return int(np.count_nonzero(bad | dark_bad if dark_bad is not None else bad))

            meta["nan_pixels"] = sum(left_out(p) for p in parts)
        else:  # integer frames, a finite dark: nothing left out but the markers below
            meta["nan_pixels"] = 0
        if self.invalid_values and parts[0].dtype.kind in "iu":
            # Left out through the marker map (the same pixels in every frame of the call).
            n_frames = sum(1 if p.ndim == 2 else p.shape[0] for p in parts)
            meta["nan_pixels"] = meta.get("nan_pixels", 0) + max(marked, 0) * n_frames
        result = self._result(out, stack, meta)
        if gpu_fit is not None:
            from radint.fit import FitTable, with_units

            result.peaks = with_units(FitTable._from_core(gpu_fit, not stack), result)
            result.peaks.metadata["fit_spec"] = self.fit
        elif self.fit is not None:
            result.peaks = self.fit.apply(result, n_threads=self.n_threads)
        return result

    @property
    def dark(self) -> np.ndarray | None:
        """The dark given at construction, float64 ``(n_pixels_z, n_pixels_y)``, read-only
        (None without one). Passing this very array as ``dark=`` counts as passing none."""
        return self._dark_image

    def same_dark(self, dark: Any) -> Any:
        """``dark``, or :attr:`dark` when it holds the same values (NaN = NaN): callers that
        receive a dark separately hand it on this way, so integer frames keep the folded map."""
        own = self._dark_image
        if dark is None or own is None or dark is own:
            return dark
        dark = _on_host(dark)
        d = _as_float64(dark) if np.ma.is_masked(dark) else np.asarray(dark)
        if (
            d.shape == own.shape
            and d.dtype.kind in "iuf"
            and np.array_equal(d, own, equal_nan=True)
        ):
            return own
        return dark

    @property
    def fit(self) -> FitSpec | None:
        """Peaks fitted in every frame's lineout (None: no fitting). Assign a FitSpec, a dict of
        its fields, ``"config"`` or None; with ``compat`` the MIDAS programs' model is fitted
        (values at bin centres, ``bin_average=False``) and the per-η fits take
        IntegratorZarrOMP's box (``per_eta_bounds="midas"``)."""
        return self._fit

    @fit.setter
    def fit(self, value: Any) -> None:
        spec = FitSpec.coerce(value, self.config)
        if spec is not None and self.compat:
            spec = dataclasses.replace(spec, bin_average=False, per_eta_bounds="midas")
        if spec and spec.auto_roi and self.compat == "midas-cpu":
            # Only the GPU program reads FitROIAuto; IntegratorZarrOMP keeps FitROIPadding
            # (also for specs a live peak update builds from the parameter file).
            warn_once(  # once per process, not per live peak update
                "FitROIAuto under midas-cpu",
                "FitROIAuto ignored under compat='midas-cpu': IntegratorZarrOMP does not read "
                "it (the GPU program does)",
            )
            spec = dataclasses.replace(spec, auto_roi=False)
        self._fit = spec

    def host_buffer(self, shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised host array to read or receive frames into before integrating them.

        Under the CUDA backend it is page-locked (pinned) memory, which the GPU reads by DMA with
        no staging copy (a pageable frame is first copied into a pinned buffer, ~10 GB/s); on
        the CPU backend a plain ``numpy.empty``. ``radint stream`` receives frames into such
        buffers.
        """
        if self.backend == "cuda":
            import cupyx

            return cupyx.empty_pinned(shape, dtype=dtype)
        return np.empty(shape, dtype=dtype)

    def _gpu_fitter(self, spec: FitSpec) -> Any:
        """The CUDA fitter of the current fit spec (rebuilt when ``fit`` changes)."""
        if self._gpu_fit[0] != spec:
            from radint.gpu.fit import CudaFitter

            fitter = CudaFitter(
                self._axes["radius_px"], spec.positions_in_px(self.config),
                roi_padding=spec.roi_padding, max_iterations=spec.max_iterations,
                bin_average=spec.bin_average, device_id=self._gpu_backend().device_id,
            )  # fmt: skip
            self._gpu_fit = (spec, fitter)
        return self._gpu_fit[1]

    def _gpu_blocks(self, frames: Any) -> list[Any]:
        """``frames`` in blocks whose results fit in :data:`GPU_BLOCK_BYTES` (one block for
        all but very large stacks: the whole stack's results would otherwise be allocated on
        the device, and page-locked on the host, at once)."""
        n_frames = len(frames) if isinstance(frames, list) or frames.ndim == 3 else 1
        # Sums, cake, sigma, count per bin; lineout and sigma per radial bin (bytes).
        per_frame = self.map.n_r * self.map.n_eta * 44 + self.map.n_r * 16
        size = max(1, GPU_BLOCK_BYTES // max(1, per_frame))
        if n_frames <= size:
            return [frames]
        return [frames[k : k + size] for k in range(0, n_frames, size)]

    def _gpu_backend(self) -> Any:
        if self._gpu is None:
            from radint.gpu import CudaIntegrator

            self._gpu = CudaIntegrator(self)
        return self._gpu

    def _result(self, out: dict[str, Any], stack: bool, meta: dict[str, Any]) -> Result:
        n_r, n_eta = self.map.n_r, self.map.n_eta
        n = int(out["n_frames"])

        def cake(key: str) -> np.ndarray:
            if key in _ETA_MAJOR_KEYS:
                c = np.asarray(out[key]).reshape(n, n_eta, n_r)
            else:  # per-bin sums, bin-major (r·n_eta + e): a transposed view
                c = np.asarray(out[key]).reshape(n, n_r, n_eta).transpose(0, 2, 1)
            return c if stack else c[0]

        def line(key: str) -> np.ndarray:
            v = np.asarray(out[key]).reshape(n, n_r)
            return v if stack else v[0]

        if self.compat == "midas-cpu":
            meta.update(self._masked_bin_values(out, n))
        return Result(
            cake=cake("cake"),
            cake_sigma=cake("cake_sigma") if "cake_sigma" in out else None,
            lineout=line("lineout"),
            lineout_sigma=line("lineout_sigma") if "lineout_sigma" in out else None,
            area=cake("area"),
            count=cake("count"),
            config=self.applied_config,
            normalized=self.normalize,
            lineout_mode=self.lineout_mode,
            frame_ids=np.arange(n) if stack else None,
            metadata=meta,
            **self._axes,  # type: ignore[arg-type]  # the axis fields, all arrays
        )

    def _masked_bin_values(self, out: dict[str, Any], n: int) -> dict[str, np.ndarray]:
        """The MIDAS CPU intensities of the bins its rule sets to NaN for touching a masked
        pixel, from before that NaN (IntegratorZarrOMP sums them into ``SumFrames``)."""
        hit = np.flatnonzero(np.asarray(self.map.mask_hit).reshape(-1))  # bin-major r·n_eta + e
        if hit.size == 0:
            return {}
        s = np.asarray(out["signal"]).reshape(n, -1)[:, hit]
        a = np.asarray(out["area"]).reshape(n, -1)[:, hit]
        divide = (s != 0) & (a != 0) & self.normalize
        values = np.where(divide, s / np.where(divide, a, 1.0), s)
        n_r, n_eta = self.map.n_r, self.map.n_eta
        r, e = np.divmod(hit, n_eta)
        return {"masked_bins": e * n_r + r, "masked_bin_values": values}

    # ------------------------------------------------------------------ frame combinations
    @staticmethod
    def sum_frames(result: Result, group: int | None = None) -> Result:
        """MIDAS ``OmegaSumFrames`` as a stack reduction: the caked file's ``OmegaSumFrame``.

        Sums the per-frame (normalised) cakes of a stack result in consecutive groups of
        ``group`` frames (``None`` or -1: all frames; 0 or below -1: one each, as the MIDAS
        programs group them, :func:`radint.result.frame_groups`). NaN bins propagate, as in
        MIDAS. Lineouts and sigmas are combined the same way (sums; sigmas in quadrature).
        """
        n = result.n_frames if result.is_stack else 1
        return Integrator._sum_groups(result, frame_groups(n, -1 if group is None else group),
                                      whole_frames=False)  # fmt: skip

    @staticmethod
    def sum_images(result: Result) -> Result:
        """MIDAS ``SumImages``: every frame of a stack result summed into one, the caked file's
        ``SumFrames`` (which holds 0 where this holds NaN).

        A bin NaN in some frames (a NaN pixel, a masked-touched bin under
        ``compat="midas-cpu"``, which adds its intensity from before that NaN as
        IntegratorZarrOMP does, spec §5.5) sums the frames that have it; NaN where no frame
        has it.
        """
        n = result.n_frames if result.is_stack else 1
        return Integrator._sum_groups(result, frame_groups(n, -1), whole_frames=True)

    @staticmethod
    def _sum_groups(result: Result, groups: list[range], whole_frames: bool) -> Result:
        if not result.is_stack:
            raise InvalidInputError("summing frames needs a stack result (integrate_stack)")

        def summed(values: np.ndarray, squares: bool = False) -> np.ndarray:
            parts = []
            for g in groups:
                block = values[g.start : g.stop] ** 2 if squares else values[g.start : g.stop]
                total = np.nansum(block, axis=0) if whole_frames else block.sum(axis=0)
                if whole_frames:
                    total[np.isnan(block).all(axis=0)] = np.nan
                parts.append(np.sqrt(total) if squares else total)
            return np.stack(parts)

        frames = result.cakes_before_mask_nan() if whole_frames else result.cake
        cakes = summed(frames)
        lineouts = summed(result.lineout)
        sig = None if result.cake_sigma is None else summed(result.cake_sigma, squares=True)
        lsig = None if result.lineout_sigma is None else summed(result.lineout_sigma, True)
        area = result.area[0] if result.area.ndim == 3 else result.area
        count = result.count[0] if result.count.ndim == 3 else result.count
        last = [g.stop - 1 for g in groups]
        meta = {**result.metadata, "summed_groups": [(g.start, g.stop - 1) for g in groups]}
        if "timestamp" in meta:  # a sum is integrated when its last frame is
            stamps = np.asarray(meta["timestamp"], dtype=np.float64).reshape(-1)
            meta["timestamp"] = stamps[last]
        if "masked_bin_values" in meta:  # summed alike, so the sums carry their pre-NaN values
            values = np.asarray(meta["masked_bin_values"])
            meta["masked_bin_values"] = np.stack([values[g.start : g.stop].sum(0) for g in groups])
        return Result(
            cake=cakes,
            cake_sigma=sig,
            lineout=lineouts,
            lineout_sigma=lsig,
            area=np.broadcast_to(area, cakes.shape).copy(),
            count=np.broadcast_to(count, cakes.shape).copy(),
            radius_px=result.radius_px,
            two_theta_deg=result.two_theta_deg,
            q_inv_angstrom=result.q_inv_angstrom,
            d_spacing_angstrom=result.d_spacing_angstrom,
            eta_deg=result.eta_deg,
            r_edges_px=result.r_edges_px,
            eta_edges_deg=result.eta_edges_deg,
            config=result.config,
            normalized=result.normalized,
            lineout_mode=result.lineout_mode,
            frame_ids=np.array(last),
            metadata=meta,
        )

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickled (``multiprocessing`` with spawn, dask, joblib; ``copy.deepcopy``) as its
        constructor's arguments with its map and current fit: unpickling builds the Integrator
        again without building the map (its thread pools, caches and GPU state belong to one
        process; the backend is chosen again where it is unpickled)."""
        return _rebuilt, ({**self._arguments, "detector_map": self.map, "fit": self.fit},)

    def __repr__(self) -> str:
        return f"Integrator(backend={self.backend!r}, map={self.map!r}, compat={self.compat!r})"


def _rebuilt(arguments: dict[str, Any]) -> Integrator:
    """An unpickled Integrator (see :meth:`Integrator.__reduce__`)."""
    return Integrator(**arguments)


def _kept(a: Any) -> Any:
    """A copy of an array argument (numpy, masked or CuPy; others as given) for pickling."""
    return a.copy() if isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__") else a


def _on_device(a: Any) -> bool:
    """Whether ``a`` lies in GPU memory (CuPy, torch, Numba: ``__cuda_array_interface__``)."""
    return hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray)


def _on_host(a: Any) -> Any:
    """``a``, copied to the host if it lies on the GPU (a dark or variance: one frame, read
    on the host for its checks and NaN pixels)."""
    if _on_device(a):
        from radint.gpu import _import_cupy

        return _import_cupy().asnumpy(_import_cupy().asarray(a))
    return a


def _as_float64(a: Any) -> np.ndarray:
    """``a`` as float64, the masked values of a numpy masked array NaN (``a.filled(nan)``, which
    an integer array cannot take): a dark's, flat's or variance's masked pixels count as NaN."""
    if isinstance(a, np.ma.MaskedArray):
        return np.ma.filled(a.astype(np.float64), np.nan)
    return np.asarray(a, dtype=np.float64)


def _exact_float(a: np.ndarray, bad: np.ndarray) -> type:
    """float32 where it holds every value ``a`` keeps exactly (integers below 2²⁴ in size, as
    16-bit detectors' always are: half the bytes of float64 and the faster kernel), else float64."""
    if a.dtype == np.float32 or (a.dtype.kind in "iub" and a.dtype.itemsize <= 2):
        return np.float32
    if a.dtype.kind in "iu":
        keep = ~bad
        if not keep.any():
            return np.float32
        lo, hi = a.min(where=keep, initial=0), a.max(where=keep, initial=0)
        if -(2**24) <= int(lo) and int(hi) <= 2**24:
            return np.float32
    return np.float64


def _joined(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-block result dicts as one: arrays joined frame after frame, ``n_frames`` summed."""
    return {
        key: sum(int(p[key]) for p in parts)
        if key == "n_frames"
        else np.concatenate([p[key] for p in parts])
        for key in parts[0]
    }
