"""IntegrationConfig: every setting that shapes a map or an integration, from MIDAS or PONI files.

Field names carry their units and match the Rust core's ``Params`` one for one; the parsing
itself (comments, aliases, accumulating keys, precise errors) happens in Rust.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radint import _core
from radint._once import warn_once
from radint.exceptions import InvalidInputError, ParameterError, RadintFileNotFoundError

log = logging.getLogger("radint")

#: MIDAS's FitROIPadding (ROI half-width, bins) and SNIPIterations defaults, which the fitting
#: API's defaults are too.
FIT_ROI_PADDING = 20
SNIP_ITERATIONS = 50

#: Keys of MIDAS files that name other files, stored as absolute paths (relative names resolved
#: beside the parameter file, or in the current directory for overrides).
FILE_FIELDS = (
    "mask_file",
    "distortion_file",
    "residual_correction_map",
    "panel_shifts_file",
    "dark_file",
    "flat_file",
)


@dataclass(frozen=True)
class IntegrationConfig:
    """Geometry, binning, corrections and outputs of an integration (MIDAS conventions).

    Lengths in µm, angles in degrees, radii and beam centre in pixels of the (ImTransOpt-)
    transformed image; ``img[z][y]`` with y the column (fast axis) and z the row. See
    ``from_midas_params`` for the MIDAS key of each field.
    """

    source: str = "<defaults>"
    lsd_um: float = 1e6
    bc_y_px: float = 1024.0
    bc_z_px: float = 1024.0
    tx_deg: float = 0.0
    ty_deg: float = 0.0
    tz_deg: float = 0.0
    pixel_size_y_um: float = 200.0
    pixel_size_z_um: float = 200.0
    n_pixels_y: int = 0
    n_pixels_z: int = 0
    rho_d_um: float = 2e5
    distortion: tuple[float, ...] = (0.0,) * 15
    parallax_um: float = 0.0
    im_trans_opt: tuple[int, ...] = ()
    r_min_px: float = 10.0
    r_max_px: float = 1524.0
    r_bin_px: float = 0.25
    eta_min_deg: float = -180.0
    eta_max_deg: float = 180.0
    eta_bin_deg: float = 5.0
    q_min: float = 0.0
    q_max: float = 0.0
    q_bin: float = 0.0
    tth_min_deg: float = 0.0
    tth_max_deg: float = 0.0
    tth_bin_deg: float = 0.0
    #: 2θ bins counted as midas-integrate counts them: ⌈(max − min)/size⌉ of the floating-point
    #: quotient (0.5…4.4 in 0.3° bins: 14, the last past TthMax), where radint's own count takes
    #: a quotient within 1e-9 of a whole n as n (13). ``compat="midas-gpu"`` sets it; no key.
    tth_bins_ceil: bool = False
    wavelength_angstrom: float = 0.0
    mask_file: str = ""
    distortion_file: str = ""
    residual_correction_map: str = ""
    panel_shifts_file: str = ""
    dark_file: str = ""
    #: ``FlatFile`` (midas-integrate's key): pixels divided by it, see ``Integrator(flat=)``.
    flat_file: str = ""
    n_panels_y: int = 0
    n_panels_z: int = 0
    panel_size_y: int = 0
    panel_size_z: int = 0
    panel_gaps_y: tuple[int, ...] = ()
    panel_gaps_z: tuple[int, ...] = ()
    sub_pixel_level: int = 1
    sub_pixel_cardinal_width_deg: float = 10.0
    solid_angle_correction: bool = False
    polarization_correction: bool = False
    polarization_fraction: float = 0.99
    polarization_plane_eta_deg: float = 0.0
    #: ``Normalize`` as written (IntegratorZarrOMP divides only for 1, the GPU program and
    #: midas-integrate for any non-zero value; see ``Integrator``).
    normalize: int = 1
    gradient_correction: bool = False
    omega_sum_frames: int = 1
    sum_images: bool = False
    save_individual_frames: bool = True
    skip_frame: int = 0
    omega_start_deg: float = 0.0
    omega_step_deg: float = 0.0
    omega_deg: float = 0.0
    write_2d: bool = False
    do_peak_fit: bool = False
    peak_locations: tuple[float, ...] = ()
    fit_roi_padding: int = FIT_ROI_PADDING
    fit_roi_auto: bool = False
    auto_detect_peaks: bool = False
    max_n_peaks: int = 10
    snip_iterations: int = SNIP_ITERATIONS
    doublet_separation: float = 0.0
    multiple_peaks: bool = False
    do_smoothing: bool = False
    gsas_polariz: float = 0.99
    gsas_sh_l: float = 0.002
    gsas_u: float = 1.163
    gsas_v: float = -0.126
    gsas_w: float = 0.063
    gsas_x: float = 0.0
    gsas_y: float = 0.0
    gsas_z: float = 0.0
    #: Raw values marking gap / bad pixels (0 = none); left out of the integration.
    gap_intensity: float = 0.0
    bad_px_intensity: float = 0.0
    #: "area" (MIDAS) or "fraction" (pyFAI): see ``Integrator(pixel_weights=)``.
    pixel_weights: str = "area"
    #: The models ``SolidAngleCorrection 1`` / ``PolarizationCorrection 1`` apply: "midas"
    #: (cos³2θ; 1 − f·sin²2θ·cos²η) or pyFAI's "exact" solid angle / "kahn" polarization
    #: (radint's keys ``SolidAngleModel``, ``PolarizationModel``).
    solid_angle_model: str = "midas"
    polarization_model: str = "midas"
    #: "square" (MIDAS: pxY along both axes, pxZ unused) or "rectangular" (pyFAI's pixel1 ≠
    #: pixel2: pxZ is the pixels' height; R stays in units of pxY) (radint's key ``PixelShape``).
    pixel_shape: str = "square"
    #: How each bin's sigma is estimated (radint's key ``ErrorModel``): "poisson" (variance =
    #: counts), "azimuthal" (pyFAI's: the spread of the corrected pixel values within the bin)
    #: or "none" (no sigma). See ``Integrator(error_model=)``.
    error_model: str = "poisson"
    #: ``(module rows, module columns, gap rows, gap columns)`` of a detector tiled by modules
    #: from its raw image's first pixel (pyFAI's MODULE_SIZE / MODULE_GAP): the gap pixels are
    #: masked, as pyFAI masks them; () = none. Set from a PONI file naming a Pilatus or Eiger.
    module_gaps: tuple[int, ...] = ()
    #: Keys the parser did not know: (key, value, file, line).
    unknown: tuple[tuple[str, str, str, int], ...] = field(default=(), compare=False)
    #: Where each key was last set: key → (file, line).
    set_at: dict[str, tuple[str, int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.module_gaps and not any(self.module_gaps):  # 0 0 0 0: none, as the key reads
            object.__setattr__(self, "module_gaps", ())

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_midas_params(
        cls, path: str | Path, overrides: list[str] | dict[str, Any] | None = None
    ) -> IntegrationConfig:
        """Read a MIDAS parameter file, then apply ``Key value`` overrides.

        Parameters
        ----------
        path : str or Path
            The parameter file (``Key value ...`` per line, ``#`` comments).
        overrides : list of str or dict, optional
            MIDAS-style replacements, e.g. ``["RMax 800", "EtaBinSize 2"]`` or
            ``{"RMax": 800}``; they replace file values (lists such as ImTransOpt are replaced).
            Files named (``MaskFile``, ``Dark``, ...) are stored as absolute paths: relative
            names in the file are looked up beside it, those in overrides in the current
            directory.

        Raises
        ------
        ParameterError
            On an unreadable value, naming file, line and key.
        RadintFileNotFoundError
            When the file does not exist.
        """
        path = Path(path)
        if path.is_dir():
            raise RadintFileNotFoundError(
                f"{path}: a directory, not a parameter file (the parameter file comes first, "
                "then the data)"
            )
        if not path.is_file():
            raise RadintFileNotFoundError(f"{path}: parameter file not found")
        with path.open("rb") as f:
            head = f.read(4096)
        if b"\0" in head:  # a frame or other binary file given where the parameters go
            raise ParameterError(
                f"{path}: not a text parameter file (binary content); give the MIDAS parameter "
                "file first, then the data"
            )
        parsed = _core.parse_params(str(path), _override_lines(overrides))
        _log_midas_notes(parsed)
        config = cls._from_core_dict(parsed)
        for key, rest, file, line in config.unknown:
            if file != "<override>" and (near := near_key(key)):
                key_part, eq, value = key.partition("=")
                if eq and value and key_part == near:  # Lsd=657000, BC=55.3 47.8
                    spelled = " ".join(v for v in (near, value, rest) if v)
                    near = f"'{spelled}' (a space between key and value, not '=')"
                log.warning("%s:%d: %s is not a key radint reads (ignored); did you mean %s?",
                            file, line, key, near)  # fmt: skip
        _refuse_unknown_overrides(config)
        return config._resolve_files(path.parent)

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> IntegrationConfig:
        """Parse parameter-file text (as :meth:`from_midas_params`, without a file)."""
        parsed = _core.parse_params(source, [], text)
        _log_midas_notes(parsed)
        return cls._from_core_dict(parsed)

    @classmethod
    def from_poni(cls, path: str | Path, **overrides: Any) -> IntegrationConfig:
        """Convert a pyFAI ``.poni`` file to MIDAS geometry (exact, no small-angle approximation).

        The PONI frame (dim1 = rows, dim2 = columns, beam along x3) is related to MIDAS's
        (beam along x, y = −column, z = row) by a fixed rotation C, so the MIDAS tilt matrix is
        ``TRs = C·R·Cᵀ`` with R pyFAI's rotation; Lsd and the beam centre follow from the point
        of the detector plane the beam hits. Pixels with pixel1 ≠ pixel2 (rectangular) set
        ``PixelShape rectangular``: pxZ = pixel1, pxY = pixel2 (R's unit, as px).

        Binning and other settings may be given as keyword overrides, by field name
        (``r_bin_px=2``) or by MIDAS key (``RBinSize=2``, read as :meth:`from_midas_params` reads
        a ``RBinSize 2`` override; ``set_at`` then names ``<override>:N``), e.g.
        ``from_poni("g.poni", RMin=10, RMax=1200, RBinSize=1, EtaBinSize=5)``.

        Raises
        ------
        ParameterError
            An override that is neither a field name nor a MIDAS key radint reads (naming the
            closest key), or a MIDAS value it cannot read.
        """
        from radint.poni import midas_geometry_from_poni, read_poni

        poni = read_poni(path)
        fields = midas_geometry_from_poni(poni)
        alias = {"bc_y_px": "BC", "bc_z_px": "BC", "pixel_size_y_um": "px", "pixel_size_z_um": "px"}
        if fields.get("pixel_shape") == "rectangular":
            alias["pixel_size_z_um"] = "pxZ"  # its own size: an override of PixelShape is warned
        keys = {k for name in fields if (k := alias.get(name, _MIDAS_KEYS.get(name))) is not None}
        set_at = {key: (str(path), 0) for key in sorted(keys)}  # the PONI file, no line
        names = {f.name for f in dataclasses.fields(cls)}
        midas = {k: v for k, v in overrides.items() if k not in names}
        fields.update({k: v for k, v in overrides.items() if k in names})
        fields.setdefault("source", str(path))
        # File names (mask_file=, MaskFile=, ...) are the caller's: taken from the current
        # directory and stored absolute, as overrides are.
        config = cls(**_tupled(fields), set_at=set_at)._resolve_files(Path.cwd())
        if not midas:
            return config
        config = config._overridden(midas)._resolve_files(None)
        for key, *_ in config.unknown:
            if key in midas:
                near = near_key(key) or _closest_field(key, names, cutoff=0.75)
                raise ParameterError(
                    f"{path}: from_poni override {key}={midas[key]!r}: neither a field of "
                    f"IntegrationConfig (e.g. r_bin_px=2) nor a MIDAS key (e.g. RBinSize=2)"
                    + (f"; did you mean {near}?" if near else "")
                )
        return config

    @classmethod
    def _from_core_dict(cls, d: dict[str, Any]) -> IntegrationConfig:
        d = dict(d)
        d.pop("midas_notes", None)
        d["unknown"] = tuple(tuple(u) for u in d.get("unknown", ()))
        return cls(**_tupled(d))

    def _resolve_files(self, base: Path | None) -> IntegrationConfig:
        """The files named as absolute paths, so the configuration names the same files after
        ``os.chdir`` or in a worker process started elsewhere: relative names written in the
        parameter file in folder ``base`` are looked up beside it (where they exist there, or
        nowhere else; None: left as they are), names given as overrides in the current
        directory, like any path on a command line; ``~`` is the home folder."""
        from radint.io.read import split_dataset

        changes: dict[str, Any] = {}
        for name in FILE_FIELDS:
            value = getattr(self, name)
            if not value:
                continue
            file, dataset = split_dataset(value)  # "mask.h5::/entry/mask": resolve the file
            path = Path(file).expanduser()  # a home folder, as a shell would expand it
            if not path.is_absolute():
                if self.set_at.get(_MIDAS_KEYS.get(name, ""), ("",))[0] != "<override>":
                    if base is None:
                        continue
                    if (base / path).exists() or not path.exists():
                        path = base / path
                path = path.absolute()
            resolved = str(path) if dataset is None else f"{path}::{dataset}"
            if resolved != value:
                changes[name] = resolved
        return dataclasses.replace(self, **changes) if changes else self

    # ----------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> IntegrationConfig:
        """A copy with some fields changed (field names, not MIDAS keys). The values are
        checked where the configuration is used (:meth:`validate`), as a parameter file's are;
        a changed field's MIDAS key is marked as set by ``replace()`` (``set_at``), so an error
        about it names that, not the parameter file's line that no longer holds the value.

        Raises
        ------
        ParameterError
            A name that is no field (naming the closest one).
        """
        names = {f.name for f in dataclasses.fields(self)}
        for name in changes:
            if name not in names:
                # A MIDAS key (replace(RBinSize=2)) names its field; else the closest name.
                pairs = {"BC": "bc_y_px and bc_z_px", "px": "pixel_size_y_um and pixel_size_z_um",
                         "NrPixels": "n_pixels_y and n_pixels_z"}  # fmt: skip
                by_key = [f for f, key in _MIDAS_KEYS.items() if key == name]
                if name in pairs:
                    by_key = [pairs[name]]
                close = by_key or [c for c in [_closest_field(name, names)] if c]
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ParameterError(f"IntegrationConfig has no field {name!r}{hint}")
        if "set_at" not in changes:
            keys = {"BC" if n in ("bc_y_px", "bc_z_px") else _MIDAS_KEYS.get(n) for n in changes}
            by = (f"{self.source}, changed by replace()" if self.source else "replace()", 0)
            changes["set_at"] = {**self.set_at, **{k: by for k in keys if k and k != "p"}}
        return dataclasses.replace(self, **_tupled(changes))

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> IntegrationConfig:
        """A copy with MIDAS ``Key value`` overrides applied, as :meth:`from_midas_params`
        applies them: lists such as ImTransOpt and PeakLocation are replaced, errors and
        :attr:`set_at` name ``<override>:N``; keys not overridden keep where they were set.

        Raises
        ------
        ParameterError
            An override key radint does not read (a typo such as ``RBinSzie``), naming the
            closest key; the file's own unknown keys (other MIDAS programs') are tolerated."""
        new = self._overridden(overrides)
        _refuse_unknown_overrides(new)
        return new._resolve_files(None)

    def _overridden(self, overrides: list[str] | dict[str, Any]) -> IntegrationConfig:
        """:meth:`with_overrides` without refusing unknown keys (kept in :attr:`unknown`)."""
        lines = [f"{k} {_format_value(v)}" for k, v in self._midas_items()]
        parsed = _core.parse_params("<config>", _override_lines(overrides), "\n".join(lines))
        new = self._from_core_dict(parsed)
        set_at = dict(self.set_at)
        set_at.update({k: v for k, v in new.set_at.items() if v[0] == "<override>"})
        unknown = self.unknown + tuple(u for u in new.unknown if u[2] == "<override>")
        return dataclasses.replace(new, source=self.source, set_at=set_at, unknown=unknown)

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-serialisable Python values."""
        d = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            d[f.name] = value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntegrationConfig:
        """The inverse of :meth:`to_dict` (e.g. the JSON stored in a result file); keys that are
        not fields (written by another radint version) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = _tupled({k: v for k, v in d.items() if k in known and k != "set_at"})
        if "unknown" in values:
            values["unknown"] = tuple(
                tuple(u) if isinstance(u, list) else u for u in values["unknown"]
            )
        set_at = {k: tuple(v) for k, v in d.get("set_at", {}).items()}
        return dataclasses.replace(cls(), **values, set_at=set_at)

    def core_dict(self) -> dict[str, Any]:
        """The dict the compiled core takes."""
        d = self.to_dict()
        d.pop("unknown")
        return d

    def zip_parameters(self) -> dict[str, Any]:
        """What a MIDAS Zarr zip's ``analysis_parameters`` are read against. The ``SkipFrame``,
        ``OmegaStart`` and ``OmegaStep`` this parameter file sets replace the zip's own values,
        as MIDAS's integrator.py, which regenerates the zip from the parameter file, has them do
        (the zip's fill in what the file leaves out). The other keys (:data:`ZIP_KEYS`) are the
        values radint integrates with, set or default: a zip that holds others is warned about
        (IntegratorZarrOMP given the zip alone would use the zip's)."""
        fields = (("SkipFrame", "skip_frame"), ("OmegaStart", "omega_start_deg"),
                  ("OmegaStep", "omega_step_deg"))  # fmt: skip
        out: dict[str, Any] = {key: getattr(self, name) for key, name in fields
                               if key in self.set_at}  # fmt: skip
        for key, value in ZIP_KEYS.items():
            out[key] = value(self) if callable(value) else getattr(self, value)
        return out

    def validate(self) -> IntegrationConfig:
        """Check the configuration; raises :class:`ParameterError` naming file, line and key.
        Settings that are valid but probably not what was meant are logged (once each)."""
        _core.validate_params(self.core_dict())
        for note in self._doubtful():
            warn_once(note, "%s", note)
        return self

    def _doubtful(self) -> list[str]:
        """Warnings about valid settings that lose or double-count data silently."""
        notes = []

        def where(key: str) -> str:
            file, line = self.set_at.get(key, (self.source, 0))
            return f"{file}:{line}: {key}" if line else f"{file}: {key}"

        if any(self.distortion) and (fold := _core.distortion_fold(self.core_dict())):
            notes.append(
                f"{self.source}: the distortion folds the detector over: along η {fold[1]:g}° "
                f"the corrected radius stops growing at R ≈ {fold[0]:.4g} px (or D ≤ 0), so "
                "pixels beyond map onto smaller radii and the map means nothing there (MIDAS's "
                "neither); check p0..p14 and RhoD (a RhoD much smaller than the detector?)"
            )
        if self.module_gaps and (
            self.module_gaps[0] >= self.n_pixels_z and self.module_gaps[1] >= self.n_pixels_y
        ):
            notes.append(
                f"{where('ModuleGaps')}: modules of {self.module_gaps[0]} x "
                f"{self.module_gaps[1]} pixels cover the whole {self.n_pixels_z} x "
                f"{self.n_pixels_y} detector: no gap is masked"
            )
        if self.radial_mode == "q" and self.tth_bin_deg > 0:
            notes.append(
                f"{where('TthBinSize')}: {self.tth_bin_deg}° 2θ bins ignored: QBinSize "
                f"{self.q_bin} Å⁻¹ is given too, and Q bins take precedence (as in MIDAS, which "
                "has no 2θ bins)"
            )
        if self.q_bin < 0 or (self.q_bin == 0 and (self.q_min != 0 or self.q_max != 0)):
            # MIDAS bins in R unless QBinSize > 0 (DetectorMapper, integrator.py,
            # midas-integrate): kept, but a Q range with no Q bins is likely a slip.
            notes.append(
                f"{where('QBinSize')}: QBinSize {self.q_bin:g} with QMin {self.q_min:g} / QMax "
                f"{self.q_max:g}: no Q bins (as in MIDAS, which bins in R unless QBinSize > 0); "
                "the radial bins are RMin/RMax/RBinSize"
            )
        if "Wavelength" in self.set_at and self.wavelength_angstrom == 0:
            # MIDAS's "no wavelength" (DetectorMapper's default; its integrators then write
            # Q 0), so accepted; but it is easy to mistake for a value.
            notes.append(
                f"{where('Wavelength')}: 0 means no wavelength (as in MIDAS): no Q axis and no "
                "Q bins; the NeXus monochromator's wavelength and energy are written as 0 "
                "(unknown)"
            )
        if 0 < self.wavelength_angstrom < 0.01:
            notes.append(
                f"{where('Wavelength')}: {self.wavelength_angstrom:g} Å is below 0.01 Å (1.2 MeV): "
                "Wavelength is in Å; a value in metres (pyFAI's unit, 1e-10 m = 1 Å) gives Q "
                "and d wrong by 1e10"
            )
        if not -1.0 <= self.polarization_fraction <= 1.0:
            notes.append(
                f"{where('PolarizationFraction')}: {self.polarization_fraction:g} is outside "
                "-1 .. 1 (1: fully polarized along η = PolarizationPlaneEtaDeg): the "
                "polarization factor 1 - f·sin²2θ·cos²η then turns negative or grows with 2θ"
            )
        if (
            "pxZ" in self.set_at
            and self.pixel_size_z_um != self.pixel_size_y_um
            and self.pixel_shape != "rectangular"
        ):
            notes.append(
                f"{where('pxZ')}: {self.pixel_size_z_um} µm differs from pxY "
                f"{self.pixel_size_y_um} µm; MIDAS's geometry has one pixel size, pxY, so pxZ "
                "is not used (as in MIDAS); for pixels pxZ high, add 'PixelShape rectangular'"
            )
        span = self.eta_max_deg - self.eta_min_deg
        n_eta = math.ceil(span / self.eta_bin_deg - 1e-9)
        overlap = self.eta_min_deg + n_eta * self.eta_bin_deg - (self.eta_min_deg + 360.0)
        if span > 360.0 + 1e-9:
            times = math.ceil(n_eta * self.eta_bin_deg / 360.0 - 1e-9)
            notes.append(
                f"{where('EtaMax')}: the η range {self.eta_min_deg}..{self.eta_max_deg}° spans "
                f"{span:g}°, more than a full turn: pixels in the last {overlap:g}° are counted "
                f"in {times} η bins and {times} times in the lineout (MIDAS's mapper does so "
                "for ranges from -180°; from 0° it leaves the bins past 360° empty)"
            )
        elif overlap > 1e-6:
            notes.append(
                f"{where('EtaBinSize')}: {self.eta_bin_deg}° bins do not divide the η range "
                f"{self.eta_min_deg}..{self.eta_max_deg}°: the last bin runs to "
                f"{self.eta_min_deg + n_eta * self.eta_bin_deg:g}°, {overlap:g}° past a full "
                "turn, so pixels there are counted in the first and the last bin (as MIDAS does) "
                "and twice in the lineout; choose a bin size that divides 360°"
            )
        return notes

    # ----------------------------------------------------------------------------------------
    @property
    def radial_mode(self) -> str:
        """``"q"``, ``"2theta"`` or ``"r"``: the unit in which radial bins are uniform."""
        if self.q_bin > 0 and self.wavelength_angstrom > 0:
            return "q"
        if self.tth_bin_deg > 0:
            return "2theta"
        return "r"

    def bin_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Radial edges in R pixels ``(n_r + 1,)`` and η edges in degrees ``(n_eta + 1,)``."""
        r, eta = _core.bin_edges(self.core_dict())
        return np.asarray(r), np.asarray(eta)

    @property
    def shape(self) -> tuple[int, int]:
        """Raw image shape ``(n_pixels_z, n_pixels_y)`` = (rows, columns)."""
        return (self.n_pixels_z, self.n_pixels_y)

    def two_theta_deg(self, r_px: np.ndarray) -> np.ndarray:
        """2θ (degrees) of radii in pixels: ``atan(R·px / Lsd)``."""
        return np.degrees(np.arctan(np.asarray(r_px) * self.pixel_size_y_um / self.lsd_um))

    def q_inv_angstrom(self, r_px: np.ndarray) -> np.ndarray:
        """Q (Å⁻¹) of radii in pixels; NaN when the wavelength is not set."""
        if self.wavelength_angstrom <= 0:
            return np.full(np.shape(r_px), np.nan)
        tth = np.arctan(np.asarray(r_px) * self.pixel_size_y_um / self.lsd_um)
        return 4 * math.pi / self.wavelength_angstrom * np.sin(tth / 2)

    def map_shaping(self, unreadable: str = "raise") -> dict[str, Any]:
        """Everything that shapes the detector map, by field name: geometry, bins, and for the
        mask / distortion / residual / panel files the SHA-256 of their contents (False when
        not set). What does not shape this map stays out, so it is not rebuilt for it: the Q
        keys and the wavelength outside Q binning, the 2θ keys outside 2θ binning, the files'
        paths, SubPixelLevel 0 (= 1). ``unreadable="skip"``: a file that cannot be read gives
        None instead of an error."""
        import hashlib

        shaping = self._shaping_fields()
        for name, path in self._shaping_files():
            try:
                shaping[name] = hashlib.sha256(self._shaping_bytes(path)).hexdigest()
            except OSError as e:
                if unreadable == "skip":
                    shaping[name] = None
                    continue
                raise RadintFileNotFoundError(
                    f"{self.where_set(name)}: {path}: cannot read: {e.strerror or e}"
                ) from e
        return shaping

    def map_key(self) -> str:
        """A hash of what shapes this configuration's map (:meth:`map_shaping`): its name in a
        cache. Computed as since cache version 4, so existing caches keep their names."""
        import hashlib

        h = hashlib.sha256(json.dumps(self._shaping_fields(), sort_keys=True).encode())
        for name, path in self._shaping_files():
            try:
                h.update(self._shaping_bytes(path))
            except OSError as e:
                raise RadintFileNotFoundError(
                    f"{self.where_set(name)}: {path}: cannot read: {e.strerror or e}"
                ) from e
        return h.hexdigest()[:24]

    _SHAPING_FILES = (
        "mask_file",
        "distortion_file",
        "residual_correction_map",
        "panel_shifts_file",
    )

    def _shaping_fields(self) -> dict[str, Any]:
        """:meth:`map_shaping` with each file field only True / False (whether one is set)."""
        shaping: dict[str, Any] = {k: v for k, v in self.core_dict().items() if k in _MAP_FIELDS}
        mode = self.radial_mode
        if mode != "q":
            for k in ("q_min", "q_max", "q_bin", "wavelength_angstrom"):
                shaping.pop(k, None)
        if mode != "2theta" or not shaping.get("tth_bins_ceil"):
            shaping.pop("tth_bins_ceil", None)  # as before the field existed: caches kept
        if mode != "2theta":
            for k in ("tth_min_deg", "tth_max_deg", "tth_bin_deg"):
                shaping.pop(k, None)
        if shaping.get("pixel_shape") == "square":  # as before the key existed: caches kept
            del shaping["pixel_shape"]
        for k in self._SHAPING_FILES:
            if k in shaping:
                shaping[k] = bool(shaping[k])
        if "sub_pixel_level" in shaping:
            shaping["sub_pixel_level"] = max(1, int(shaping["sub_pixel_level"]))
        return shaping

    def _shaping_files(self) -> list[tuple[str, str]]:
        """The map-shaping files that are set, ``(field, path)``, in the order map_key hashes."""
        return [(k, getattr(self, k)) for k in self._SHAPING_FILES if getattr(self, k)]

    @staticmethod
    def _shaping_bytes(value: str) -> bytes:
        """What :meth:`map_key` hashes of a map-shaping file: its contents, and the dataset of a
        ``file.h5::/dataset`` value (one file can hold several masks)."""
        from radint.io.read import split_dataset

        file, dataset = split_dataset(value)
        data = Path(file).read_bytes()
        return data if dataset is None else data + b"::" + dataset.encode()

    def where_set(self, name: str) -> str:
        """``file:line: Key`` where the field ``name`` was set (its MIDAS key alone when the
        configuration was not read from a file), for error messages about its value."""
        key = _MIDAS_KEYS.get(name, name)
        if key in ("pxY", "pxZ") and key not in self.set_at and "px" in self.set_at:
            key = "px"  # `px` sets both sizes
        file, line = self.set_at.get(key, ("", 0))
        return f"{file}:{line}: {key}" if file and line else (f"{file}: {key}" if file else key)

    def midas_text(self) -> str:
        """The configuration as a MIDAS parameter file (for MIDAS tools and provenance)."""
        return "\n".join(f"{k} {_format_value(v)}" for k, v in self._midas_items()) + "\n"

    def _midas_items(self) -> list[tuple[str, Any]]:
        items: list[tuple[str, Any]] = []
        for name, key in _MIDAS_KEYS.items():
            value = getattr(self, name)
            if name == "distortion":
                items.extend((f"p{i}", v) for i, v in enumerate(value))
            elif name in ("im_trans_opt", "peak_locations"):
                items.extend((key, v) for v in value)
            elif name == "pixel_size_y_um":
                # `px` is the key every MIDAS program reads (IntegratorZarrOMP ignores pxY and
                # would compute 2θ = 0); it sets both sizes, pxZ below overrides when they differ.
                items.append(("px", value))
            elif name == "pixel_size_z_um":
                if value != self.pixel_size_y_um:
                    items.append((key, value))
            elif name in ("skip_frame", "omega_start_deg", "omega_step_deg", "omega_deg"):
                # Written when set: they replace a MIDAS zip's own values (zip_parameters).
                if value or key in self.set_at:
                    items.append((key, value))
            elif name in ("gap_intensity", "bad_px_intensity"):
                if value:  # 0 = unset, as MIDAS reads it
                    items.append((key, value))
            elif name in (
                "pixel_weights",
                "solid_angle_model",
                "polarization_model",
                "pixel_shape",
                "error_model",
            ):
                if value != getattr(type(self), name):  # radint's keys: MIDAS files keep their own
                    items.append((key, value))
            elif name == "max_n_peaks":
                if not self.auto_detect_peaks:  # else AutoDetectPeaks N
                    items.append((key, value))
            elif name == "auto_detect_peaks":
                # "AutoDetectPeaks N" means up to N peaks and switches fitting on (MIDAS);
                # DoPeakFit, written last, then says whether fitting is on.
                if value:
                    items.append((key, self.max_n_peaks))
            elif isinstance(value, str):
                if value:
                    items.append((key, value))
            elif isinstance(value, tuple):
                if value:
                    items.append((key, value))
            else:
                items.append((key, value))
        items.insert(1, ("BC", (self.bc_y_px, self.bc_z_px)))
        # PeakLocation and AutoDetectPeaks switch fitting on as they are read: DoPeakFit last.
        do_fit = _MIDAS_KEYS["do_peak_fit"]
        return [i for i in items if i[0] != do_fit] + [i for i in items if i[0] == do_fit]


_MIDAS_KEYS = {
    "lsd_um": "Lsd",
    "tx_deg": "tx",
    "ty_deg": "ty",
    "tz_deg": "tz",
    "pixel_size_y_um": "pxY",
    "pixel_size_z_um": "pxZ",
    "n_pixels_y": "NrPixelsY",
    "n_pixels_z": "NrPixelsZ",
    "rho_d_um": "RhoD",
    "distortion": "p",
    "parallax_um": "Parallax",
    "im_trans_opt": "ImTransOpt",
    "r_min_px": "RMin",
    "r_max_px": "RMax",
    "r_bin_px": "RBinSize",
    "eta_min_deg": "EtaMin",
    "eta_max_deg": "EtaMax",
    "eta_bin_deg": "EtaBinSize",
    "q_min": "QMin",
    "q_max": "QMax",
    "q_bin": "QBinSize",
    "tth_min_deg": "TthMin",
    "tth_max_deg": "TthMax",
    "tth_bin_deg": "TthBinSize",
    "wavelength_angstrom": "Wavelength",
    "mask_file": "MaskFile",
    "distortion_file": "DistortionFile",
    "residual_correction_map": "ResidualCorrectionMap",
    "panel_shifts_file": "PanelShiftsFile",
    "dark_file": "Dark",
    "flat_file": "FlatFile",
    "n_panels_y": "NPanelsY",
    "n_panels_z": "NPanelsZ",
    "panel_size_y": "PanelSizeY",
    "panel_size_z": "PanelSizeZ",
    "panel_gaps_y": "PanelGapsY",
    "panel_gaps_z": "PanelGapsZ",
    "sub_pixel_level": "SubPixelLevel",
    "sub_pixel_cardinal_width_deg": "SubPixelCardinalWidth",
    "solid_angle_correction": "SolidAngleCorrection",
    "polarization_correction": "PolarizationCorrection",
    "polarization_fraction": "PolarizationFraction",
    "polarization_plane_eta_deg": "PolarizationPlaneEtaDeg",
    "normalize": "Normalize",
    "gradient_correction": "GradientCorrection",
    "omega_sum_frames": "OmegaSumFrames",
    "sum_images": "SumImages",
    "save_individual_frames": "SaveIndividualFrames",
    "skip_frame": "SkipFrame",
    "omega_start_deg": "OmegaStart",
    "omega_step_deg": "OmegaStep",
    "omega_deg": "Omega",
    "write_2d": "Write2D",
    "do_peak_fit": "DoPeakFit",
    "peak_locations": "PeakLocation",
    "fit_roi_padding": "FitROIPadding",
    "fit_roi_auto": "FitROIAuto",
    "auto_detect_peaks": "AutoDetectPeaks",
    "max_n_peaks": "MaxNPeaks",
    "snip_iterations": "SNIPIterations",
    "doublet_separation": "DoubletSeparation",
    "multiple_peaks": "MultiplePeaks",
    "do_smoothing": "DoSmoothing",
    "gsas_polariz": "Polariz",
    "gsas_sh_l": "SHpL",
    "gsas_u": "U",
    "gsas_v": "V",
    "gsas_w": "W",
    "gsas_x": "X",
    "gsas_y": "Y",
    "gsas_z": "Z",
    "gap_intensity": "GapIntensity",
    "bad_px_intensity": "BadPxIntensity",
    "pixel_weights": "PixelWeights",
    "solid_angle_model": "SolidAngleModel",
    "polarization_model": "PolarizationModel",
    "pixel_shape": "PixelShape",
    "error_model": "ErrorModel",
    "module_gaps": "ModuleGaps",
}

#: The MIDAS keys of :data:`FILE_FIELDS` (values that are a file's path).
FILE_KEYS = frozenset(_MIDAS_KEYS[name] for name in FILE_FIELDS)


def _distortion_term(k: int) -> Callable[[IntegrationConfig], float]:
    return lambda config: config.distortion[k]


#: ``analysis_parameters`` of a MIDAS Zarr zip that IntegratorZarrOMP or DetectorMapper read
#: (their names there) → the configuration field (or how to get it) radint uses instead.
#: Paths (MaskFile, DistortionFN, ...) are left out: a zip's are another machine's.
ZIP_KEYS: dict[str, str | Callable[[IntegrationConfig], Any]] = {
    "Lsd": "lsd_um", "YCen": "bc_y_px", "ZCen": "bc_z_px", "tx": "tx_deg", "ty": "ty_deg",
    "tz": "tz_deg", "PixelSize": "pixel_size_y_um", "PixelSizeY": "pixel_size_y_um",
    "PixelSizeZ": "pixel_size_z_um", "RhoD": "rho_d_um", "MaxRingRad": "rho_d_um",
    **{f"p{k}": _distortion_term(k) for k in range(15)},
    "ImTransOpt": "im_trans_opt", "RMin": "r_min_px", "RMax": "r_max_px",
    "RBinSize": "r_bin_px", "EtaMin": "eta_min_deg", "EtaMax": "eta_max_deg",
    "EtaBinSize": "eta_bin_deg", "QMin": "q_min", "QMax": "q_max", "QBinSize": "q_bin",
    "Wavelength": "wavelength_angstrom", "Normalize": "normalize",
    "OmegaSumFrames": "omega_sum_frames", "SumImages": "sum_images",
    "SaveIndividualFrames": "save_individual_frames", "GapIntensity": "gap_intensity",
    "BadPxIntensity": "bad_px_intensity", "NPanelsY": "n_panels_y", "NPanelsZ": "n_panels_z",
    "PanelSizeY": "panel_size_y", "PanelSizeZ": "panel_size_z", "DoPeakFit": "do_peak_fit",
    "FitROIPadding": "fit_roi_padding",
}  # fmt: skip

#: Fields that shape a detector map (and so its cache key).
_MAP_FIELDS = {
    "lsd_um", "bc_y_px", "bc_z_px", "tx_deg", "ty_deg", "tz_deg", "pixel_size_y_um",
    "pixel_size_z_um", "n_pixels_y", "n_pixels_z", "rho_d_um", "distortion", "parallax_um",
    "im_trans_opt", "r_min_px", "r_max_px", "r_bin_px", "eta_min_deg", "eta_max_deg",
    "eta_bin_deg", "q_min", "q_max", "q_bin", "tth_min_deg", "tth_max_deg", "tth_bin_deg",
    "tth_bins_ceil", "wavelength_angstrom", "mask_file", "distortion_file",
    "residual_correction_map", "panel_shifts_file", "n_panels_y", "n_panels_z", "panel_size_y", "panel_size_z",
    "panel_gaps_y", "panel_gaps_z", "sub_pixel_level", "sub_pixel_cardinal_width_deg",
    "module_gaps", "pixel_shape",
}  # fmt: skip


def _format_value(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return " ".join(_format_value(v) for v in value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest exact form; numpy scalars repr as np.float64(...)
    return str(value)


#: Keys read beyond the fields' own (aliases, keys several fields share, accumulating ones).
_OTHER_KEYS = (
    "NrPixels", "px", "BC", "DetDist", "PixelSize", "YPixelSize", "MinEta", "MaxEta", "MaskFN",
    "DistortionFN", "PeakLocation", "ImTransOpt", "AutoDetectPeaks", "DoPeakFit",
    *(f"p{i}" for i in range(15)),
)  # fmt: skip


#: Keys of other MIDAS programs that differ from one radint reads only in case (checked against
#: MIDAS_ParamParser.c, the C programs' strncmp keys and MIDAS's example parameter files).
_OTHER_PROGRAMS_KEYS = frozenset({"doPeakFit"})


def _refuse_unknown_overrides(config: IntegrationConfig) -> None:
    """A key given as an override that radint does not read is an error: a typo
    (``RBinSzie 0.5``) was only warned about and the run went on with the default binning.
    Unknown keys inside the parameter file stay tolerated (MIDAS files carry other programs'
    keys)."""
    typed = [(key, value) for key, value, where, _ in config.unknown if where == "<override>"]
    if not typed:
        return
    problems = []
    fields = {f.name for f in dataclasses.fields(IntegrationConfig)}
    for key, value in typed:
        near = near_key(key)
        hint = f" (did you mean {near}?)" if near else ""
        if key in fields:  # with_overrides({"r_bin_px": 2})
            midas = "p0 .. p14" if key == "distortion" else _MIDAS_KEYS.get(key)
            hint = (
                f" ({key} is a field name: give its MIDAS key {midas} here, or use "
                f"replace({key}=...))"
                if midas
                else f" ({key} is a field name: use replace({key}=...))"
            )
        if not hint:  # no typo of a key radint reads: perhaps another MIDAS program's
            hint = " (keys of other MIDAS programs belong in the parameter file)"
        problems.append(f"override {' '.join(v for v in (key, value) if v)}: not a parameter "
                        f"radint knows{hint}")  # fmt: skip
    raise ParameterError("; ".join(problems))


def _closest_field(name: str, names: set[str], cutoff: float = 0.6) -> str | None:
    """The field ``name`` most likely means: one it begins (``r_bin`` → ``r_bin_px``), else
    the closest spelling."""
    begun = sorted((n for n in names if n.startswith(name)), key=lambda n: (len(n), n))
    if begun:  # all of the shortest: pixel_size -> pixel_size_y_um or pixel_size_z_um
        return " or ".join(n for n in begun if len(n) == len(begun[0]))
    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=cutoff)
    return close[0] if close else None


def near_key(key: str) -> str | None:
    """The parameter key ``key`` is most likely a misspelling of (same letters in another
    case, or a close match), or None: MIDAS files also carry keys of other MIDAS programs,
    which are not mistakes and get no suggestion."""
    known = {*_MIDAS_KEYS.values(), *_OTHER_KEYS}
    if key in _OTHER_PROGRAMS_KEYS:
        return None
    # A known key with punctuation or a plural glued on (``RBinSize:``, ``EtaBinSizes``).
    for stem in (key.rstrip(":=;,"), key.removesuffix("s"), key.split("=")[0], key.split(":")[0]):
        if stem != key and stem in known:
            return stem
    if any(k in key for k in known if len(k) > 3):
        return None  # another MIDAS program's key (doPeakFit, FitWavelength, tolWavelength...)
    same = [k for k in known if k.lower() == key.lower()]
    if same:
        return same[0]
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.85)
    return close[0] if close else None


def _log_midas_notes(parsed: dict[str, Any]) -> None:
    """Warn about lines MIDAS reads differently (alias keys, several ImTransOpt values on one
    line, panel gaps before the panel count, MaxNPeaks beside AutoDetectPeaks): the C programs'
    map or fits would differ from radint's."""
    for message, file, line in parsed.get("midas_notes", ()):
        log.warning("%s:%d: %s", file, line, message)


def _override_lines(overrides: list[str] | dict[str, Any] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return [f"{k} {_format_value(v)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        raise ParameterError(
            "overrides: expected a list of 'Key value' strings or a dict, got a str"
        )
    return [str(o) for o in overrides]


def _tupled(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def check_n_threads(n_threads: Any) -> int | None:
    """``n_threads`` as radint takes it everywhere: None (every CPU) or a positive integer;
    anything else is an :class:`~radint.exceptions.InvalidInputError`. (The compiled module
    runs at most 4 threads per CPU: more only thrash, and results do not depend on the count.)"""
    if n_threads is None:
        return None
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral) or n_threads < 1:
        raise InvalidInputError(f"n_threads must be a positive integer or None, got {n_threads!r}")
    return int(n_threads)
