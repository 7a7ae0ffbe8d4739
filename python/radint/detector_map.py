"""DetectorMap: the exact pixel → (R, η) bin map, built in Rust, viewed from numpy without copies."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import mmap
import operator
import os
import struct
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radint import _core
from radint.config import IntegrationConfig, check_n_threads
from radint.exceptions import (
    InvalidInputError,
    MapFormatError,
    RadintFileNotFoundError,
    RadintIOError,
    ShapeError,
)

log = logging.getLogger("radint")

#: Version of the map radint builds for a configuration, in every cache file's name and
#: contents: bump it whenever a mapper change alters maps (a fix in the area clipping, the
#: residual map's frame ...), so caches written by an older build are rebuilt, not reused.
_CACHE_VERSION = 4  # 4: pixels with every corner at R < 0 left out, as DetectorMapper does


def module_gap_mask(shape: tuple[int, int], module_gaps: Sequence[int]) -> np.ndarray:
    """The pixels ``(n_z, n_y)`` between the modules of a detector tiled from its first pixel
    by ``(module rows, module columns, gap rows, gap columns)``: pyFAI's mask of a Pilatus or
    Eiger (its ``MODULE_SIZE`` and ``MODULE_GAP``), True = masked."""
    rows, cols, gap_rows, gap_cols = (int(v) for v in module_gaps)
    mask = np.zeros(shape, dtype=bool)
    for start in range(rows, shape[0], rows + gap_rows):
        mask[start : start + gap_rows, :] = True
    for start in range(cols, shape[1], cols + gap_cols):
        mask[:, start : start + gap_cols] = True
    return mask


def _read_mask(config: IntegrationConfig) -> np.ndarray | None:
    """MaskFile as 1 = masked: a TIFF as MIDAS reads it, or any frame format radint reads
    (EDF masks from pyFAI, HDF5, ...); the first frame of a file holding several. With
    ``ModuleGaps``, the gaps between the detector's modules too."""
    gaps = (
        module_gap_mask((config.n_pixels_z, config.n_pixels_y), config.module_gaps)
        if config.module_gaps
        else None
    )
    if not config.mask_file:
        return None if gaps is None else gaps.astype(np.uint8)
    from radint.io.read import read_parameter_image

    mask = read_parameter_image(config, "mask_file")
    path = f"{config.where_set('mask_file')}: {config.mask_file}"
    # MIDAS: a pixel is masked only where the mask holds exactly 1.
    masked = mask == 1
    others = int(np.count_nonzero((mask != 0) & ~masked))
    if others:
        values = np.unique(mask[(mask != 0) & ~masked])
        log.warning(
            "%s: masks the %d pixels holding 1 (the MIDAS rule); %d pixels holding "
            "other non-zero values (%s) are not masked",
            path, int(masked.sum()), others, ", ".join(f"{v:g}" for v in values[:5]),
        )  # fmt: skip
    if gaps is not None:
        masked |= gaps
    return np.ascontiguousarray(masked, dtype=np.uint8)


def _warn_fold(
    fold: tuple[int, float, float, float, int], config: IntegrationConfig | None
) -> None:
    """Warn (once) that some pixel corners mapped to a negative corrected R (and how many of
    them lie behind the sample)."""
    from radint._once import warn_once

    corners, worst, y, z = (int(fold[0]), *(float(v) for v in fold[1:4]))
    behind = int(fold[4]) if len(fold) > 4 else 0
    source = config.source if config is not None else "map"
    if behind:
        warn_once(
            ("behind", source, behind),
            "%s: %d pixel corner(s) lie at 2θ ≥ 90°: the tilted detector plane (tx, ty, tz, "
            "Lsd) passes behind the sample there, where MIDAS's R = Lsd·tan 2θ is negative; "
            "pixels with every corner there are left out of the map, as MIDAS's "
            "DetectorMapper leaves them out; check the tilts and Lsd",
            source, behind,
        )  # fmt: skip
        if corners == behind:
            return
    causes = ""
    if config is not None:
        present = [key for key, on in (
            ("ResidualCorrectionMap", config.residual_correction_map),
            ("DistortionFile", config.distortion_file),
            ("PanelShiftsFile", config.panel_shifts_file),
            ("p0..p14", any(config.distortion)),
            ("Parallax", config.parallax_um),
        ) if on]  # fmt: skip
        if present:
            causes = f" (set here: {', '.join(present)})"
    warn_once(
        ("fold", source, corners, worst),
        "%s: %d pixel corner(s) map to a negative corrected R (worst %.4g px, at (y, z) = "
        "(%g, %g) of the ImTransOpt-transformed image): the corrections%s move them across "
        "the beam centre, so the mapping folds the detector over there and the pixels around "
        "it overlap in the map (pixels with every corner across are left out; MIDAS's "
        "DetectorMapper does both alike); check the residual/distortion maps and panel shifts "
        "near the beam centre",
        source, corners - behind, worst, y, z, causes,
    )  # fmt: skip


def _read_f64_maps(path_text: str, config: IntegrationConfig, count: int, what: str) -> list:
    path = Path(path_text)
    if not path.is_file():
        raise RadintFileNotFoundError(f"{path}: {what} not found")
    n = config.n_pixels_y * config.n_pixels_z
    data = np.fromfile(path, dtype="<f8")
    if data.size != count * n:
        raise ShapeError(
            f"{path}: {what} must hold {count}x{n} float64 values "
            f"({count} map(s) of {config.n_pixels_z}x{config.n_pixels_y}), got {data.size}"
        )
    return [np.ascontiguousarray(data[k * n : (k + 1) * n]) for k in range(count)]


def _map_inputs(config: IntegrationConfig) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if config.distortion_file:
        inputs["distortion_y"], inputs["distortion_z"] = _read_f64_maps(
            config.distortion_file, config, 2, "DistortionFile"
        )
    if config.residual_correction_map:
        (inputs["residual"],) = _read_f64_maps(
            config.residual_correction_map, config, 1, "ResidualCorrectionMap"
        )
    if config.panel_shifts_file:
        path = Path(config.panel_shifts_file)
        if not path.is_file():
            raise RadintFileNotFoundError(f"{path}: PanelShiftsFile not found")
        inputs["panel_shifts"] = (str(path), path.read_text())
    return inputs


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists), so stored and fresh compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def _shown(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, list):
        return " ".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class DetectorMap:
    """Sparse CSR map from raw-image pixels to (R, η) bins with exact overlap areas.

    Bin ``b = r·n_eta + e``; the entries of bin b are ``indptr[b]:indptr[b+1]``. The arrays
    (``indptr``, ``pixel``, ``area``, ``delta_r``, ``weight``, ``mask_hit``,
    ``bin_geometric_area``) are read-only numpy views of memory owned by the compiled core.
    """

    def __init__(self, core: Any, config: IntegrationConfig | None = None) -> None:
        self._core = core
        self.config = config
        self.origin = "built"
        #: The signal weights already hold solid-angle/polarization factors (MIDAS C maps, or
        #: any map given with weights), so the Integrator does not apply them again.
        self.corrections_folded = core.weight is not None
        #: The weights sample each entry at its bin's centre radius (``GradientCorrection``).
        self.gradient_corrected = False
        #: The areas are pixel fractions (:meth:`with_pixel_fractions`).
        self.pixel_fractions = False
        #: ``(solid_angle, polarization)`` models an Integrator under a MIDAS compat folded into
        #: the weights at each entry's own pixel before gradient resampling, or None.
        self.corrected_at_source: tuple[str | None, str | None] | None = None
        #: How a map read from MIDAS files sampled fractional positions (``load_midas``):
        #: ``(directory, sampling, asked)``, ``asked`` False when the default was taken.
        self.midas_sampling: tuple[Path, str, bool] | None = None
        #: The ``Map.bin`` header as ``load_midas`` read it (its hash check included), or None.
        self.midas_header: dict[str, Any] | None = None
        #: ``(corners, worst R px, y, z, behind)`` of the pixel corners the build mapped to a
        #: negative corrected R, and the count of those at 2θ ≥ 90° whose pixels it left out
        #: (warned when built or loaded from the cache), or None.
        self.fold: tuple[int, float, float, float, int] | None = getattr(core, "fold", None)
        #: ``IntegrationConfig.map_shaping()`` of the configuration the map was built from (kept
        #: in radint's cache), or None where unknown (arrays, MIDAS files): what
        #: :meth:`check_built_for` compares.
        self.built_for: dict[str, Any] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        config: IntegrationConfig,
        n_threads: int | None = None,
        mask: np.ndarray | None = None,
    ) -> DetectorMap:
        """Build the exact map of ``config`` (MaskFile, DistortionFile, panels, ImTransOpt applied).

        Parameters
        ----------
        config : IntegrationConfig
        n_threads : int, optional
            Threads for the build (default: all cores).
        mask : ndarray of bool/uint8, shape (n_pixels_z, n_pixels_y), optional
            Extra map-time mask (True/1 = masked), OR-ed with ``MaskFile``.
        """
        config.validate()
        file_mask = _read_mask(config)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != config.shape:
                raise ShapeError(f"mask: expected shape {config.shape}, got {mask.shape}")
            mask = mask.astype(bool)
            file_mask = mask if file_mask is None else (file_mask.astype(bool) | mask)
        if file_mask is not None:
            file_mask = np.ascontiguousarray(file_mask, dtype=np.uint8).ravel()
        core = _core.build_map(
            config.core_dict(), mask=file_mask, n_threads=check_n_threads(n_threads),
            **_map_inputs(config),
        )  # fmt: skip
        m = cls(core, config)
        m.built_for = _plain(config.map_shaping())
        if m.fold is not None:
            _warn_fold(m.fold, config)
        return m

    @classmethod
    def from_arrays(
        cls,
        shape: tuple[int, int],
        r_edges_px: np.ndarray,
        eta_edges_deg: np.ndarray,
        indptr: np.ndarray,
        pixel: np.ndarray,
        area: np.ndarray,
        delta_r: np.ndarray | None = None,
        weight: np.ndarray | None = None,
        mask_hit: np.ndarray | None = None,
        bin_geometric_area: np.ndarray | None = None,
        config: IntegrationConfig | None = None,
        n_threads: int | None = None,
    ) -> DetectorMap:
        """Assemble a map from CSR arrays (validated: lengths, monotone indptr, pixel range,
        increasing edges, finite non-negative areas; :class:`InvalidInputError` otherwise).

        ``n_threads`` (default: all cores) runs the checks and the per-bin area sums.
        """

        def optional(a: Any, dtype: Any, name: str) -> np.ndarray | None:
            return None if a is None else arr(a, dtype, name)

        def arr(a: Any, dtype: Any, name: str) -> np.ndarray:
            if a is None:
                raise InvalidInputError(f"{name}: an array is required, got None")
            a = np.asarray(a)
            # Integers are converted only where they fit: -1 is no pixel 4294967295.
            if np.dtype(dtype).kind == "u" and a.size and a.dtype.kind in "iu":
                if a.min() < 0 or a.max() > np.iinfo(dtype).max:
                    raise InvalidInputError(
                        f"{name}: values must lie in 0..{np.iinfo(dtype).max}, got "
                        f"{a.min()}..{a.max()}"
                    )
            return np.ascontiguousarray(a, dtype=dtype)

        try:
            n_z, n_y = (operator.index(v) for v in shape)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"shape: expected (rows, columns), got {shape!r}") from e
        if n_z < 0 or n_y < 0:
            raise InvalidInputError(f"shape: expected (rows, columns) >= 0, got {shape!r}")
        core = _core.MapCore.from_arrays(
            n_y,
            n_z,
            arr(r_edges_px, np.float64, "r_edges_px"),
            arr(eta_edges_deg, np.float64, "eta_edges_deg"),
            arr(indptr, np.uint64, "indptr"),
            arr(pixel, np.uint32, "pixel"),
            arr(area, np.float32, "area"),
            optional(delta_r, np.float32, "delta_r"),
            optional(weight, np.float64, "weight"),
            optional(mask_hit, np.uint8, "mask_hit"),
            optional(bin_geometric_area, np.float64, "bin_geometric_area"),
            n_threads=check_n_threads(n_threads),
        )
        return cls(core, config)

    @classmethod
    def load_midas(
        cls,
        directory: str | Path,
        config: IntegrationConfig,
        sampling: str | None = None,
        gradient_correction: bool | None = None,
        n_threads: int | None = None,
    ) -> DetectorMap:
        """Read MIDAS ``Map.bin``/``nMap.bin``/``maskMap.bin`` from ``directory``.

        Fractional positions become bilinear weights over up to 4 pixels (``sampling=
        "bilinear"``, the C CPU integrator) or the truncated pixel (``"floor"``, the C GPU
        program). By default (``None``) bilinear, and an ``Integrator(compat="midas-gpu")``
        given the map reads it again with ``"floor"``, so each compat samples as its C program
        does. The C ``frac`` (corrections folded in) becomes the signal weight and
        ``areaWeight`` the area, so integrating reproduces C numbers. With gradient correction
        (default: the config's ``GradientCorrection``) positions are first moved by −δR along
        the radial direction from the beam centre, as MIDAS does. ``n_threads`` (default: all
        cores) sums the per-bin areas.
        """
        gradient = (
            config.gradient_correction if gradient_correction is None else gradient_correction
        )
        centre = (config.bc_y_px, config.bc_z_px) if gradient else None
        used = "bilinear" if sampling is None else sampling
        core, info = _core.load_midas(
            str(directory), config.core_dict(), used, centre, n_threads=check_n_threads(n_threads)
        )
        if info.get("hash_matches") is False:
            log.warning(
                "%s: Map.bin header hash differs from these parameters' C hash; "
                "the map may have been built for another geometry",
                directory,
            )
        m = cls(core, config)
        m.origin = f"MIDAS files in {directory}"
        m.midas_header = info
        m.gradient_corrected = bool(gradient)
        m.midas_sampling = (Path(directory), used, sampling is not None)
        return m

    @staticmethod
    def pixel_areas(config: IntegrationConfig, n_threads: int | None = None) -> np.ndarray:
        """Each raw pixel's area (px², flat, float64; units of pxY·pxZ with ``PixelShape
        rectangular``) in the plane where the bins are cut (after tilt, distortion and panel
        corrections): what its map entries add up to when it lies wholly inside the binned
        range. 1 on an untilted, undistorted detector; 0 for a pixel the map leaves out (e.g.
        one reaching 2θ = 90°). Masks play no part.
        """
        config.validate()
        return _core.pixel_areas(
            config.core_dict(), n_threads=check_n_threads(n_threads), **_map_inputs(config)
        )

    def with_pixel_fractions(self, n_threads: int | None = None) -> DetectorMap:
        """This map with each entry's area divided by its pixel's whole area
        (:meth:`pixel_areas`): every pixel then counts once, split over bins in proportion to
        its overlap, as in pyFAI. With ``Normalize 0`` a bin's sum is then its share of the
        pixel values, so totals are conserved on tilted detectors too; areas become pixel
        equivalents.

        Raises
        ------
        MapFormatError
            For maps whose signal weights are not their areas (MIDAS C maps, gradient
            correction) or without their configuration.
        """
        if self.pixel_fractions:
            return self  # e.g. another Integrator's map: divided once only
        if self.config is None:
            raise MapFormatError("with_pixel_fractions needs the map's IntegrationConfig")
        if self.weight is not None:
            raise MapFormatError(
                f"{self.origin}: pixel fractions need a map whose weights are its areas "
                "(radint's own, without GradientCorrection), not MIDAS C factors or resampling"
            )
        whole = self.pixel_areas(self.config, n_threads)
        try:
            core = self._core.with_pixel_fractions(whole, n_threads=check_n_threads(n_threads))
        except InvalidInputError as e:
            raise MapFormatError(
                f"{self.origin}: pixel fractions: {e} (DetectorMap.pixel_areas); "
                "use pixel_weights='area'"
            ) from e
        m = DetectorMap(core, self.config)
        m.origin = f"{self.origin}, pixel fractions"
        m.pixel_fractions = True
        return m

    def with_gradient_correction(self, config: IntegrationConfig | None = None) -> DetectorMap:
        """This map with MIDAS ``GradientCorrection`` applied (spec §5.2): each entry's pixel
        is sampled bilinearly at its centre moved by −δR along the ray from the beam centre,
        i.e. at the bin's centre radius, which sharpens steep peaks split across bins.

        The ray is taken in the transformed frame, where the beam centre is given, so
        ImTransOpt flips keep its direction (the C integrator uses raw pixel coordinates
        there, spec §10.2). Areas are unchanged; signal weights spread over up to four
        pixels, so integration takes the scalar loop (about 2× slower).

        Raises
        ------
        MapFormatError
            The map's weights already hold MIDAS C factors: read it with
            ``DetectorMap.load_midas(..., gradient_correction=True)`` instead.
        """
        config = config or self.config
        if config is None:
            raise MapFormatError("with_gradient_correction needs the map's IntegrationConfig")
        if self.gradient_corrected:
            return self
        if self.corrections_folded:
            raise MapFormatError(
                f"{self.origin}: a MIDAS C map takes gradient correction when it is read: "
                "DetectorMap.load_midas(directory, config, gradient_correction=True)"
            )
        m = DetectorMap(self._core.gradient_resampled(config.core_dict()), config)
        m.built_for = self.built_for
        m.corrections_folded = False
        m.gradient_corrected = True
        m.corrected_at_source = self.corrected_at_source
        m.origin = f"{self.origin}, gradient-corrected"
        return m

    def save_midas(self, directory: str | Path, config: IntegrationConfig | None = None) -> Path:
        """Write MIDAS ``Map.bin``, ``nMap.bin`` (and ``maskMap.bin`` when a bin is flagged).

        ``frac`` carries the C mapper's solid-angle / polarization factors when the config asks
        for them (evaluated at pixel centres); ``areaWeight`` is the exact overlap area.
        """
        if config is not None:
            self.check_built_for(config, "the configuration given to save_midas")
        config = config or self.config
        if config is None:
            raise MapFormatError("save_midas needs the IntegrationConfig the map was built from")
        if config.radial_mode == "2theta":
            # MIDAS programs rebuild the R bins from RMin/RMax/RBinSize (or Q) and take the
            # header hash from them: a 2θ-binned map would be read with other bins.
            raise MapFormatError(
                "save_midas: a map binned in 2θ (TthBinSize) cannot be written as MIDAS "
                "Map.bin/nMap.bin: MIDAS bins R (RBinSize) or Q (QBinSize)"
            )
        if self.gradient_corrected or self.weight is not None:
            # Map.bin holds the plain overlap areas; IntegratorZarrOMP applies GradientCorrection
            # itself when it reads them, so a resampled map would be shifted twice.
            raise MapFormatError(
                "save_midas: this map is gradient-corrected or carries per-entry weights; write "
                "the plain map (DetectorMap.build) and let the reader apply GradientCorrection"
            )
        for on, name, default in (
            (config.solid_angle_correction, "solid_angle_model", "midas"),
            (config.polarization_correction, "polarization_model", "midas"),
        ):
            if on and getattr(config, name) != default:
                raise MapFormatError(
                    f"save_midas: {config.where_set(name)} {getattr(config, name)}: Map.bin's "
                    "weights hold MIDAS's corrections (DetectorMapper folds cos³2θ and its "
                    "polarization into them); write the map without the key"
                )
        factor = None
        if config.solid_angle_correction or config.polarization_correction:
            from radint.corrections import midas_frac_factor

            factor = midas_frac_factor(config)
        directory = Path(directory)
        self._core.save_midas(str(directory), config.core_dict(), factor)
        return directory

    def check_built_for(self, config: IntegrationConfig, what: str) -> None:
        """Refuse ``config`` where it shapes another map than this one was built for.

        Parameters
        ----------
        config : IntegrationConfig
            The configuration the map is to be used or saved with.
        what : str
            Names ``config`` in the message.

        Raises
        ------
        MapFormatError
            A geometry, bin or file field differs, each named with both values (a map reused
            after a recalibration would give wrong axes with no error). Maps whose origin is
            unknown (``from_arrays``, MIDAS files) are not checked.
        """
        if self.built_for is None:
            return
        # A file that cannot be read here (a mask on another machine) is not compared.
        want = _plain(config.map_shaping(unreadable="skip"))
        if want == self.built_for:
            return
        from radint.config import _MIDAS_KEYS

        differ = []
        for name in [*want, *(k for k in self.built_for if k not in want)]:
            built, asked = self.built_for.get(name), want.get(name)
            if built == asked or (name.endswith(("_file", "_map")) and asked is None and built):
                continue
            if name.endswith(("_file", "_map")):
                differ.append(f"{_MIDAS_KEYS.get(name, name)}: another file or contents")
            else:
                differ.append(f"{config.where_set(name)} {_shown(asked)} (map: {_shown(built)})")
        if not differ:  # only files that cannot be read here differ: not compared
            return
        raise MapFormatError(
            f"detector map ({self.origin}) was built for other parameters than {what}: "
            + "; ".join(differ)
            + "; build the map for these parameters (or leave the map out)"
        )

    # ------------------------------------------------------------------ cache
    def save(self, path: str | Path) -> Path:
        """Save to radint's own cache format (an uncompressed ``.npz``), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "version": np.array(_CACHE_VERSION),
            "shape": np.array(self.shape),
            "r_edges": self.r_edges_px,
            "eta_edges": self.eta_edges_deg,
            "indptr": self.indptr,
            "pixel": self.pixel,
            "area": self.area,
            "delta_r": self.delta_r,
            "mask_hit": self.mask_hit,
            "bin_geometric_area": self.bin_geometric_area,
        }
        if self.weight is not None:
            arrays["weight"] = self.weight
        if self.fold is not None:
            arrays["fold"] = np.array(self.fold, dtype=np.float64)
        # What the weights and areas already hold: a reloaded map must not get them again.
        flags = {
            "corrections_folded": self.corrections_folded,
            "gradient_corrected": self.gradient_corrected,
            "pixel_fractions": self.pixel_fractions,
            "corrected_at_source": self.corrected_at_source,
        }
        arrays["flags"] = np.frombuffer(json.dumps(flags).encode(), dtype=np.uint8)
        if self.built_for is not None:
            text = json.dumps(self.built_for, sort_keys=True)
            arrays["built_for"] = np.frombuffer(text.encode(), dtype=np.uint8)
        from radint.io.atomic import remove_stale_partials, temporary_sibling

        # A killed save left its temporary (tens of MB) under a name with no owner; named
        # after this process now, so the next save removes it once that process is gone.
        remove_stale_partials([path])
        tmp = temporary_sibling(path)
        try:
            _save_aligned_npz(tmp, arrays)
            os.replace(tmp, path)
        except OSError as e:
            raise RadintIOError(f"{path}: cannot save the map ({e.strerror or e})") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        config: IntegrationConfig | None = None,
        n_threads: int | None = None,
    ) -> DetectorMap:
        """Load a map saved with :meth:`save` (checked on ``n_threads`` threads, default all
        cores).

        Its entry arrays are read in place from the file mapped into memory, not copied: processes
        that load one cache (a batch's workers) share its pages. :meth:`save` replaces a cache by
        renaming a new file over it, which leaves a loaded map's file as it was. Caches on
        other file systems than local Linux ones are copied as before (:func:`_maps_safely`).
        """
        path = Path(path)
        try:
            with _stored_npz(path, n_threads) as z:
                if int(z["version"]) != _CACHE_VERSION:
                    raise MapFormatError(
                        f"{path}: cache version {int(z['version'])} is not supported"
                    )
                common = (z["r_edges"], z["eta_edges"])
                tail = (z.get("weight"), z["mask_hit"], z["bin_geometric_area"])
                places = _places_in_file(z, _ENTRY_DTYPES)
                core = None
                if places is not None and _maps_safely(path):
                    n_z, n_y = (int(v) for v in z["shape"])
                    core = _core.MapCore.from_file(
                        str(path),
                        n_y,
                        n_z,
                        np.ascontiguousarray(common[0], np.float64),
                        np.ascontiguousarray(common[1], np.float64),
                        places["indptr"],
                        places["pixel"],
                        places["area"],
                        places["delta_r"],
                        places.get("weight"),
                        np.ascontiguousarray(tail[1], np.uint8),
                        np.ascontiguousarray(tail[2], np.float64),
                        n_threads=check_n_threads(n_threads),
                    )
                    if not _same_file(path, z[_FILE]):  # renamed over since: may be another map
                        core = None
                if core is not None:
                    m = cls(core, config)
                else:  # not laid out as save() writes it: copied (and converted)
                    n_z, n_y = (int(v) for v in z["shape"])
                    m = cls.from_arrays(
                        (n_z, n_y),
                        *common,
                        z["indptr"],
                        z["pixel"],
                        z["area"],
                        z["delta_r"],
                        *tail,
                        config=config,
                        n_threads=n_threads,
                    )
                fold = z.get("fold")
                fold = None if fold is None else np.array(fold)  # a copy: the file is unmapped
                flags = z.get("flags")
                flags = {} if flags is None else json.loads(bytes(np.asarray(flags)).decode())
                built_for = z.get("built_for")
                if built_for is not None:
                    built_for = json.loads(bytes(np.asarray(built_for)).decode())
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, struct.error) as e:
            if isinstance(e, MapFormatError):
                raise
            if isinstance(e, OSError) and (e.errno == errno.ENOMEM or "os error 12" in str(e)):
                # Not a damaged cache: rebuilding it would need the same memory and more.
                raise RadintIOError(
                    f"{path}: the detector map cannot be loaded: out of memory (a memory limit "
                    f"such as ulimit -v, or too little free memory) ({e})"
                ) from e
            raise MapFormatError(f"{path}: not a radint map cache ({e})") from e
        m.origin = f"cache {path}"
        m.built_for = built_for
        if config is not None:
            m.check_built_for(config, "the configuration it is loaded with")
        m.corrections_folded = bool(flags.get("corrections_folded", m.corrections_folded))
        m.gradient_corrected = bool(flags.get("gradient_corrected", False))
        m.pixel_fractions = bool(flags.get("pixel_fractions", False))
        at_source = flags.get("corrected_at_source")
        m.corrected_at_source = tuple(at_source) if at_source is not None else None
        if fold is not None and fold.shape == (5,):
            m.fold = (int(fold[0]), float(fold[1]), float(fold[2]), float(fold[3]), int(fold[4]))
            _warn_fold(m.fold, config)
        return m

    @classmethod
    def cached(
        cls, config: IntegrationConfig, cache_dir: str | Path, n_threads: int | None = None
    ) -> DetectorMap:
        """Load the map for ``config`` from ``cache_dir`` if its key matches, else build and save it."""
        path = Path(cache_dir) / f"radint-map-v{_CACHE_VERSION}-{config.map_key()}.npz"
        if path.is_file():
            try:
                m = cls.load(path, config, n_threads=n_threads)
                log.info("reusing cached detector map %s", path)
                return m
            except MapFormatError as e:
                log.warning("rebuilding detector map: %s", e)
        # A large detector's build takes tens of seconds: say what is happening.
        log.info("building the detector map (%d x %d pixels; cached in %s for the next run)",
                 config.n_pixels_z, config.n_pixels_y, path.parent)  # fmt: skip
        m = cls.build(config, n_threads=n_threads)
        if m.n_entries == 0:
            return m  # refused by its user (check_not_empty): no cache, no output folder
        try:
            m.save(path)
            log.info("saved detector map cache %s", path)
        except OSError as e:
            log.warning("could not cache detector map at %s: %s", path, e)
        return m

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int]:
        """Raw image shape (rows, columns) = (n_pixels_z, n_pixels_y)."""
        return (self._core.n_z, self._core.n_y)

    @property
    def n_r(self) -> int:
        """Number of radial bins."""
        return self._core.n_r

    @property
    def n_eta(self) -> int:
        """Number of azimuthal bins."""
        return self._core.n_eta

    @property
    def n_bins(self) -> int:
        """``n_r · n_eta``."""
        return self.n_r * self.n_eta

    @property
    def n_entries(self) -> int:
        """Number of (pixel, bin) entries."""
        return self._core.n_entries

    @property
    def r_edges_px(self) -> np.ndarray:
        """Radial bin edges in R pixels, shape (n_r + 1,)."""
        return self._core.r_edges

    @property
    def eta_edges_deg(self) -> np.ndarray:
        """Azimuthal bin edges in degrees, shape (n_eta + 1,)."""
        return self._core.eta_edges

    @property
    def indptr(self) -> np.ndarray:
        """CSR row pointer, uint64, shape (n_bins + 1,)."""
        return self._core.indptr

    @property
    def pixel(self) -> np.ndarray:
        """Flat raw-image pixel index ``z·n_y + y`` of each entry, uint32."""
        return self._core.pixel

    @property
    def area(self) -> np.ndarray:
        """Overlap area (px²) of each entry, float32."""
        return self._core.area

    @property
    def delta_r(self) -> np.ndarray:
        """R of the pixel centre minus R of the bin centre (px), float32."""
        return self._core.delta_r

    @property
    def weight(self) -> np.ndarray | None:
        """Per-entry signal weight of MIDAS C maps (None for radint maps: weight = area)."""
        return self._core.weight

    @property
    def mask_hit(self) -> np.ndarray:
        """1 where a masked pixel overlaps the bin, uint8, shape (n_bins,)."""
        return self._core.mask_hit

    @property
    def bin_geometric_area(self) -> np.ndarray:
        """Σ overlap of all pixels incl. masked ones per bin, float64, shape (n_bins,)."""
        return self._core.bin_geometric_area

    def check_not_empty(
        self, config: IntegrationConfig | None = None, n_threads: int | None = None
    ) -> None:
        """Refuse a map that no pixel reaches (every integration would be empty), saying what
        misses: the R range (RMin/RMax, BC), the η range of the pixels within it
        (EtaMin/EtaMax), or, where both hold pixels, the mask.

        Raises
        ------
        InvalidInputError
            The map has no entry.
        """
        if self.n_entries:
            return
        config = config or self.config
        r_edges, eta_edges = self.r_edges_px, self.eta_edges_deg
        bins = (
            f"no detector pixel reaches a bin: bins R {r_edges[0]:g}..{r_edges[-1]:g} px, "
            f"η {eta_edges[0]:g}..{eta_edges[-1]:g}°"
        )
        if config is None:
            raise InvalidInputError(f"{bins} ({self.origin})")
        from radint.corrections import pixel_geometry

        geometry = pixel_geometry(config, n_threads)
        r, eta = geometry["r_px"], geometry["eta_deg"]
        in_r = (r >= r_edges[0]) & (r <= r_edges[-1])
        if not in_r.any():
            raise InvalidInputError(
                f"{bins}; the detector's pixels lie at R {r.min():.1f}..{r.max():.1f} px from "
                "the beam centre (check RMin/RMax, BC)"
            )
        eta_width = eta_edges[-1] - eta_edges[0]
        in_eta = (np.mod(eta - eta_edges[0], 360.0) <= eta_width) | (eta_width >= 360.0)
        if not (in_r & in_eta).any():
            start, end = _eta_arc(eta[in_r])
            raise InvalidInputError(
                f"{bins}; the detector's pixels within that R range lie at η {start:.1f}.."
                f"{end:.1f}° (0° along +Z, 90° along +Y; check EtaMin/EtaMax, BC)"
            )
        masks = [f"{config.where_set('mask_file')} {config.mask_file}"] if config.mask_file else []
        if config.module_gaps:
            masks.append(config.where_set("module_gaps"))
        why = (
            f"every pixel there is masked ({', '.join(masks)}; MIDAS masks the pixels where a "
            "mask holds 1)"
            if masks
            else f"the detector covers the bins but {self.origin} holds no entry"
        )
        raise InvalidInputError(f"{bins}; {why}")

    def stats(self) -> dict[str, Any]:
        """Summary numbers for ``radint info`` and benchmarks."""
        counts = np.diff(self.indptr.astype(np.int64))
        cumulative = np.concatenate([[0.0], np.cumsum(self.area, dtype=np.float64)])
        indptr = self.indptr.astype(np.int64)
        bin_area = cumulative[indptr[1:]] - cumulative[indptr[:-1]]
        n_pix = self.shape[0] * self.shape[1]
        return {
            "shape": self.shape,
            "n_r": self.n_r,
            "n_eta": self.n_eta,
            "n_bins": self.n_bins,
            "n_entries": self.n_entries,
            "entries_per_pixel": self.n_entries / max(n_pix, 1),
            "empty_bins": int((counts == 0).sum()),
            "masked_touched_bins": int(self.mask_hit.sum()),
            "total_area_px2": float(bin_area.sum()),
            "memory_mb": sum(a.nbytes for a in (self.indptr, self.pixel, self.area, self.delta_r))
            / 1e6,
            "origin": self.origin,
        }

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Pickled as its arrays and attributes (the compiled core cannot be pickled), so a
        map goes to worker processes (``multiprocessing``, dask) and ``copy.deepcopy``."""
        state = dict(self.__dict__)
        del state["_core"]
        state["_arrays"] = (
            self.shape, self.r_edges_px, self.eta_edges_deg, self.indptr, self.pixel, self.area,
            self.delta_r, self.weight, self.mask_hit, self.bin_geometric_area,
        )  # fmt: skip
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """The map again from :meth:`__getstate__`'s arrays, checked as :meth:`from_arrays`
        checks them."""
        state = dict(state)
        self._core = DetectorMap.from_arrays(*state.pop("_arrays"))._core
        self.built_for = None  # maps pickled before it was kept
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"DetectorMap(shape={self.shape}, n_r={self.n_r}, n_eta={self.n_eta}, "
            f"entries={self.n_entries}, origin={self.origin!r})"
        )


def _eta_arc(eta_deg: np.ndarray) -> tuple[float, float]:
    """The shortest arc ``(start, end)`` of the circle holding every η (degrees; ``start`` in
    −180..180, ``end`` ≥ ``start``, past 180 where the arc crosses it)."""
    e = np.sort(np.mod(np.asarray(eta_deg, dtype=np.float64) + 180.0, 360.0) - 180.0)
    gaps = np.diff(e, append=e[0] + 360.0)
    k = int(np.argmax(gaps))  # the largest empty arc follows e[k]
    if k == e.size - 1:
        return float(e[0]), float(e[-1])
    return float(e[k + 1]), float(e[k] + 360.0)


#: Alignment of the array data inside a map cache (the map takes the arrays without realigning).
_NPZ_ALIGN = 64
#: ZIP extra-field id of the padding that aligns them (unknown ids are skipped by readers).
_NPZ_PAD_ID = 0x7261


def _save_aligned_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` (uncompressed, readable by ``np.load``) with every array's data starting
    at a multiple of 64 bytes in the file, so :func:`_stored_npz` can hand out views of it."""
    with open(path, "wb") as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as z:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            # The .npy header keeps the data 64-aligned within the member; pad the member's start.
            start = file.tell() + 30 + len(info.filename) + 4
            info.extra = struct.pack("<HH", _NPZ_PAD_ID, (-start) % _NPZ_ALIGN) + bytes(
                (-start) % _NPZ_ALIGN
            )
            z.writestr(info, buf.getbuffer())


#: Key of :func:`_stored_npz`'s member locations (not a member name: those end in ``.npy``).
_PLACES = ".places"
#: Key of the ``os.stat_result`` of the file :func:`_stored_npz` read.
_FILE = ".file"
#: The dtypes the map takes its entry arrays in, little-endian as caches store them.
_ENTRY_DTYPES: dict[str, np.dtype] = {
    "indptr": np.dtype("<u8"),
    "pixel": np.dtype("<u4"),
    "area": np.dtype("<f4"),
    "delta_r": np.dtype("<f4"),
    "weight": np.dtype("<f8"),
}


def _places_in_file(
    stored: dict[str, Any], dtypes: dict[str, np.dtype]
) -> dict[str, tuple[int, int]] | None:
    """``(byte offset, count)`` in the file of each member of ``dtypes`` that ``stored`` holds,
    or None where one is not stored, as a one-dimensional array, in that dtype and aligned."""
    places: dict[str, tuple[int, int]] = {}
    for name, dtype in dtypes.items():
        if name not in stored:
            continue
        place = stored[_PLACES].get(name)
        if place is None or place[1] != dtype or stored[name].ndim != 1:
            return None
        places[name] = (place[0], place[2])
    return places


#: Linux file systems whose unlinked files stay readable while mapped. Not network or cluster
#: file systems: there a file another host deletes or renames over is gone for this one too,
#: and pages not yet read fail (SIGBUS), nor Windows, where a mapped file cannot be replaced.
_LOCAL_FILE_SYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "bcachefs"}
)


_MOUNTINFO = "/proc/self/mountinfo"


def _maps_safely(path: Path) -> bool:
    """Whether ``path`` lies on a file system in :data:`_LOCAL_FILE_SYSTEMS` (by the longest
    mount point of ``/proc/self/mountinfo`` above it)."""
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="replace") as fh:
            mounts = fh.read().splitlines()
        where = os.path.realpath(path)
    except OSError:  # not Linux
        return False
    best, fs_type = "", ""
    for line in mounts:
        fields, _, after = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not after:
            continue
        point = parts[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fs_type = point, after.split()[0]
    return fs_type in _LOCAL_FILE_SYSTEMS


def _check_member_crc(
    path: Path, info: zipfile.ZipInfo, mapped: mmap.mmap, start: int, n_threads: int | None
) -> None:
    """Raise :class:`MapFormatError` unless the ``info.file_size`` bytes of ``mapped`` from
    ``start`` (a stored member's data) have the CRC-32 the ZIP gives for them."""
    if start + info.file_size > len(mapped):
        raise MapFormatError(
            f"{path}: member {info.filename} is cut short ({len(mapped) - start} of "
            f"{info.file_size} bytes in the file)"
        )
    data = np.frombuffer(mapped, np.uint8, count=info.file_size, offset=start)
    crc = _core.crc32(data, n_threads=check_n_threads(n_threads))
    del data  # no view may outlive the mapping
    if crc != info.CRC:
        raise MapFormatError(
            f"{path}: member {info.filename} is damaged (its CRC-32 is {crc:08x}, the file "
            f"records {info.CRC:08x})"
        )


def _same_file(path: Path, read: os.stat_result) -> bool:
    """Whether ``path`` still names the file whose stat is ``read``."""
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino, now.st_size) == (read.st_dev, read.st_ino, read.st_size)


@contextlib.contextmanager
def _stored_npz(path: Path, n_threads: int | None = None) -> Iterator[dict[str, Any]]:
    """The arrays of an uncompressed ``.npz`` (what :meth:`DetectorMap.save` writes) as
    read-only views of the file mapped into memory, valid inside the ``with``; under the key
    ``_PLACES``, where in the file the aligned ones lie (see :func:`_places_in_file`), and
    under ``_FILE`` the file's ``os.fstat``. Every member's CRC-32 is checked against the
    ZIP's (on ``n_threads`` threads): a damaged member raises :class:`MapFormatError`.

    Why: ``np.load`` copies every member (~50 ms for a Pilatus 2M map, on every batch run and
    stream start); the map takes its entry arrays from the file in place
    (:meth:`DetectorMap.load`). Its structural check (monotone indptr, pixel range) cannot see
    damaged areas, which the CRCs do.
    """
    with open(path, "rb") as fh, zipfile.ZipFile(fh) as z:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            arrays: dict[str, Any] = {}
            places: dict[str, tuple[int, np.dtype, int]] = {}
            for info in z.infolist():
                if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                    raise InvalidInputError(f"member {info.filename}: not a stored .npy")
                # Local header: 30 fixed bytes, then the name and an extra field of its own length.
                name_len, extra_len = struct.unpack_from("<HH", mapped, info.header_offset + 26)
                start = info.header_offset + 30 + name_len + extra_len
                member = io.BytesIO(mapped[start : start + 4096])  # room for the .npy header
                version = np.lib.format.read_magic(member)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(member)
                if fortran or dtype.hasobject:
                    raise InvalidInputError(f"member {info.filename}: not a plain C-order array")
                _check_member_crc(path, info, mapped, start, n_threads)
                count = int(np.prod(shape))
                view = np.frombuffer(mapped, dtype, count=count, offset=start + member.tell())
                if view.flags.aligned:
                    places[info.filename[: -len(".npy")]] = (start + member.tell(), dtype, count)
                else:  # an npz not written by _save_aligned_npz
                    view = view.copy()
                arrays[info.filename[: -len(".npy")]] = view.reshape(shape)
            arrays[_PLACES] = places
            arrays[_FILE] = os.fstat(fh.fileno())
            yield arrays
        finally:
            arrays.clear()
            try:
                mapped.close()
            except BufferError:  # a view escaped the ``with``: the mapping goes with it
                pass
