"""pyFAI PONI files ⇄ MIDAS geometry, exactly (no small-angle approximation).

pyFAI places a pixel at ``r_P = R·(p1, p2, L)`` with ``p1 = (i + ½)·pixel1 − poni1`` (rows),
``p2 = (j + ½)·pixel2 − poni2`` (columns), ``L = dist`` and ``R`` built from rot1..rot3.
MIDAS places pixel (Y = j, Z = i) at ``r_M = (Lsd, 0, 0) + TRs·(0, (Ycen − Y)·px, (Z − Zcen)·px)``.
The two lab frames differ by the fixed rotation ``C: (t1, t2, t3) ↦ (t3, −t2, t1)``, so
``TRs = C·R·Cᵀ``, and Lsd, Ycen, Zcen follow from matching the pixel (0, 0). Both directions are
tested against pyFAI's own pixel 2θ/χ arrays. η (MIDAS) = 90° − χ (pyFAI), modulo 360°.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from radint.exceptions import ParameterError, RadintFileNotFoundError

log = logging.getLogger(__name__)

#: MIDAS lab axes expressed in pyFAI's (t1, t2, t3) = (row, column, beam).
C = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])


def pyfai_rotation(rot1: float, rot2: float, rot3: float) -> np.ndarray:
    """pyFAI's rotation matrix (``Geometry.calc_pos_zyx``): columns map (p1, p2, L) to the lab."""
    c1, s1 = math.cos(rot1), math.sin(rot1)
    c2, s2 = math.cos(rot2), math.sin(rot2)
    c3, s3 = math.cos(rot3), math.sin(rot3)
    return np.array(
        [
            [c2 * c3, c3 * s1 * s2 - c1 * s3, -(c1 * c3 * s2 + s1 * s3)],
            [c2 * s3, c1 * c3 + s1 * s2 * s3, -(-c3 * s1 + c1 * s2 * s3)],
            [s2, -c2 * s1, c1 * c2],
        ]
    )


def midas_tilt_matrix(tx_deg: float, ty_deg: float, tz_deg: float) -> np.ndarray:
    """``TRs = Rx(tx)·Ry(ty)·Rz(tz)`` (MIDAS, degrees)."""
    sx, cx = math.sin(math.radians(tx_deg)), math.cos(math.radians(tx_deg))
    sy, cy = math.sin(math.radians(ty_deg)), math.cos(math.radians(ty_deg))
    sz, cz = math.sin(math.radians(tz_deg)), math.cos(math.radians(tz_deg))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def read_poni(path: str | Path) -> dict[str, Any]:
    """Read a PONI file (pyFAI versions 1–2.1) into a dict with SI values.

    Returns keys ``dist, poni1, poni2, rot1, rot2, rot3`` (m, rad), ``pixel1, pixel2`` (m),
    ``wavelength`` (m, 0 when absent), ``shape`` (rows, columns) or None and ``orientation``
    (pyFAI's detector orientation 1–4, 3 when absent: pyFAI's default).
    """
    path = Path(path)
    if not path.is_file():
        raise RadintFileNotFoundError(f"{path}: PONI file not found")
    values: dict[str, tuple[str, int]] = {}
    for line_no, raw in enumerate(path.read_text().splitlines(), start=1):
        content = raw.split("#", 1)[0].strip()
        if not content or ":" not in content:
            continue
        key, value = content.split(":", 1)
        values[key.strip().lower()] = (value.strip(), line_no)

    def number(key: str, default: float | None = None) -> float:
        if key not in values:
            if default is None:
                raise ParameterError(f"{path}: missing PONI key '{key}'")
            return default
        text, line = values[key]
        try:
            value = float(text)
        except ValueError:
            raise ParameterError(f"{path}:{line}: {key}: expected a number, got '{text}'") from None
        if not math.isfinite(value):
            raise ParameterError(f"{path}:{line}: {key}: expected a finite number, got '{text}'")
        return value

    pixel1 = pixel2 = None
    shape: tuple[int, int] | None = None
    orientation = 3
    binning: tuple[int, int] | None = None
    det: dict[str, Any] = {}
    if "detector_config" in values:
        text, line = values["detector_config"]
        try:
            det = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParameterError(f"{path}:{line}: Detector_config: invalid JSON ({e})") from None
        if not isinstance(det, dict):
            raise ParameterError(
                f"{path}:{line}: Detector_config: expected a JSON object, got {text!r}"
            )
        pixel1, pixel2 = (_config_pixel(det, key, f"{path}:{line}") for key in ("pixel1", "pixel2"))
        if (pixel1 is None) != (pixel2 is None):
            raise ParameterError(
                f"{path}:{line}: Detector_config: pixel1 and pixel2 go together, got only "
                f"{'pixel1' if pixel2 is None else 'pixel2'}"
            )
        if det.get("max_shape"):
            shape = _config_shape(det["max_shape"], f"{path}:{line}")
        if det.get("splineFile") or det.get("splinefile"):
            raise ParameterError(
                f"{path}:{line}: detectors with a distortion spline are not supported"
            )
        if det.get("binning") is not None:
            b = det["binning"]
            b = tuple(b) if isinstance(b, (list, tuple)) else (b, b)
            if len(b) != 2 or not all(_positive_whole(v) for v in b):
                raise ParameterError(
                    f"{path}:{line}: Detector_config: binning {det['binning']!r} is not one or two "
                    "positive integers"
                )
            binning = (int(b[0]), int(b[1]))
            if pixel1 is not None and pixel2 is not None:
                # pyFAI builds the detector at the pixel given, then bins it (pixel x binning).
                pixel1, pixel2 = pixel1 * binning[0], pixel2 * binning[1]
        orientation = det.get("orientation") or 3  # 0 = unset, pyFAI reads it as 3
        if not _positive_whole(orientation) or int(orientation) not in _ORIENTATION_FLIPS:
            raise ParameterError(
                f"{path}:{line}: Detector_config: orientation {orientation!r} is not one of "
                "pyFAI's 1-4"
            )
        orientation = int(orientation)
    spline, line = values.get("splinefile", ("", 0))
    if spline.lower() not in ("", "none"):  # PONI v1: the spline as its own key
        raise ParameterError(
            f"{path}:{line}: SplineFile {spline}: detectors with a distortion spline are not "
            "supported"
        )
    images: dict[str, str] | None = {}  # None: a NexusDetector whose file was not read
    dummies: tuple[float | None, float | None] = (None, None)
    if "detector" in values and _detector_key(values["detector"][0]) == "nexusdetector":
        line = values.get("detector_config", values["detector"])[1]
        nexus = _read_nexus_detector(path, line, det.get("filename"))
        images = nexus.images if nexus.read else None
        dummies = nexus.dummies
        if pixel1 is None and "pixelsize1" not in values and nexus.pixel is not None:
            pixel1, pixel2 = nexus.pixel
        # The file's own (binned) shape: Detector_config's max_shape is the unbinned one.
        shape = nexus.shape or shape
    if "detector" in values:
        name, line = values["detector"]
        key = _detector_key(name)
        if shape is None:
            shape = _known_detector_shape(name)
        listed = key.startswith(_IRREGULAR_DETECTORS) and key not in _REGULAR_FAMILY_MEMBERS
        if listed or _off_one_grid(name):
            raise ParameterError(
                f"{path}:{line}: Detector '{name}': pyFAI places its pixels on an irregular grid "
                "(tiles at angles, double-size pixels, hexagons), which a MIDAS geometry of one "
                "grid cannot describe; radint reads plain 'Detector' grids and named detectors "
                "of one grid of square or rectangular pixels"
            )
    native = (
        _DETECTOR_PIXEL.get(_detector_key(values["detector"][0])) if "detector" in values else None
    )
    if binning is None and native and pixel1 and pixel2:
        # pyFAI writes a binned named detector as its binned pixel size, no binning key.
        ratio = (pixel1 / native, pixel2 / native)
        integral = all(_whole(r) for r in ratio)
        if integral and max(ratio) > 1.5:
            binning = (round(ratio[0]), round(ratio[1]))
    if pixel1 is None and "pixelsize1" not in values and native:
        # Named detectors carry their pixel size in pyFAI, not in the file.
        b = binning or (1, 1)
        pixel1, pixel2 = native * b[0], native * b[1]
    elif pixel1 is None and "pixelsize1" not in values and images is None:
        name, line = values["detector"]
        raise ParameterError(
            f"{path}:{line}: Detector '{name}': neither Detector_config nor its detector file "
            "(see the warning above) gives the pixel size"
        )
    elif pixel1 is None and "pixelsize1" not in values and "detector" in values:
        pixel1, pixel2, pyfai_shape = _pyfai_detector(path, *values["detector"], binning)
        shape = shape or pyfai_shape
    if pixel1 is None or pixel2 is None:
        pixel1, pixel2 = number("pixelsize1"), number("pixelsize2")
    if binning is not None and shape is not None:
        # The full (max_shape or pyFAI's own) shape, read out binned: pyFAI's detector.shape.
        shape = (shape[0] // binning[0], shape[1] // binning[1])
    module_gaps = None
    if "detector" in values and _detector_key(values["detector"][0]) not in _FILE_DETECTORS:
        shape, module_gaps = _named_layout(
            path, *values["detector"], shape, (float(pixel1), float(pixel2)), binning
        )
        dummies = _named_dummies(values["detector"][0])
    if dummies[0] == 0:
        log.warning("%s: Detector '%s': pyFAI leaves out its pixels holding 0 (the detector's "
                    "dummy value), radint integrates them as counts: mask them (MaskFile) to "
                    "match", path, values["detector"][0])  # fmt: skip
    return {
        "dist": number("distance"),
        "poni1": number("poni1"),
        "poni2": number("poni2"),
        "rot1": number("rot1", 0.0),
        "rot2": number("rot2", 0.0),
        "rot3": number("rot3", 0.0),
        "pixel1": float(pixel1),
        "pixel2": float(pixel2),
        "wavelength": number("wavelength", 0.0),
        "shape": shape,
        "orientation": orientation,
        "module_gaps": module_gaps,
        "invalid_values": _markers(*dummies),
        **(images or {}),
        "source": str(path),
    }


#: pyFAI's ``DUMMY`` and ``DELTA_DUMMY`` of Pilatus and Eiger detectors: it leaves out pixels
#: within 1.5 of -2 (the -1 of gaps, -2 of bad pixels; in unsigned frames 2^N - 1, 2^N - 2).
_PILATUS_EIGER_DUMMIES = (-2.0, 1.5)


def _named_dummies(name: str) -> tuple[float | None, float | None]:
    """pyFAI's dummy value and its tolerance for the detector ``name`` (None, None: none)."""
    if _detector_key(name).startswith(("pilatus", "eiger")):
        return _PILATUS_EIGER_DUMMIES
    det = _pyfai_lookup(name)
    if det is None or det.dummy is None:
        return None, None
    return float(det.dummy), None if det.delta_dummy is None else float(det.delta_dummy)


def _markers(dummy: float | None, delta: float | None) -> tuple[float, ...]:
    """The pixel values pyFAI's ``dummy`` ± ``delta_dummy`` leaves out, as radint's exact
    markers (``GapIntensity``, ``BadPxIntensity``): the whole numbers in that range, the two
    nearest the dummy (the third of -2 ± 1.5, -3, no detector writes); the dummy alone when it
    is not whole or without a tolerance."""
    if dummy is None or not math.isfinite(dummy) or dummy == 0:
        return ()
    if not delta or not math.isfinite(delta) or not float(dummy).is_integer():
        return (float(dummy),)
    whole = range(math.ceil(dummy - delta), math.floor(dummy + delta) + 1)
    nearest = sorted((v for v in whole if v != 0), key=lambda v: (abs(v - dummy), -v))
    return tuple(sorted((float(v) for v in nearest[:2]), reverse=True))  # gap -1, bad -2


#: Detectors a PONI names by a file of their own rather than by a name pyFAI knows.
_FILE_DETECTORS = ("detector", "nexusdetector")


class _NexusDetector(NamedTuple):
    read: bool
    pixel: tuple[float, float] | None
    shape: tuple[int, int] | None
    #: ``mask_file`` / ``flat_file`` as ``file.h5::/dataset``.
    images: dict[str, str]
    #: pyFAI's ``dummy`` and ``delta_dummy`` (None where the file gives none).
    dummies: tuple[float | None, float | None]


def _read_nexus_detector(path: Path, line: int, filename: Any) -> _NexusDetector:
    """Pixel size, shape, mask and flat field of the detector file a PONI's ``NexusDetector``
    names (pyFAI's ``Detector.save``): pyFAI masks and divides by what that file holds, so
    radint takes the same pixels out and divides by the same flat.

    The file is looked up as pyFAI does (from the current folder), then beside the PONI file.
    """
    where = f"{path}:{line}: Detector 'NexusDetector'"
    nothing = _NexusDetector(False, None, None, {}, (None, None))
    if not isinstance(filename, str) or not filename:
        log.warning("%s: Detector_config names no detector file: a mask or flat field kept "
                    "there is not applied (give them as MaskFile / FlatFile)", where)  # fmt: skip
        return nothing
    file = next((p for p in (Path(filename), path.parent / filename) if p.is_file()), None)
    if file is None:
        log.warning("%s: its detector file %s is not found (looked in the current folder and "
                    "beside the PONI file): a mask or flat field kept there is not applied",
                    where, filename)  # fmt: skip
        return nothing
    import h5py

    try:
        with h5py.File(file, "r") as f:
            group = _nx_detector(f)
            if group is None:
                raise ParameterError(f"{where}: {file} holds no NXdetector group")
            if "pixel_corners" in group:
                raise ParameterError(
                    f"{where}: {file} places its pixels by their corners ({group.name}/"
                    "pixel_corners), which a MIDAS geometry of one pixel size cannot describe"
                )
            pixel = shape = None
            if "pixel_size" in group:
                p1, p2 = (float(v) for v in np.ravel(group["pixel_size"][()])[:2])
                pixel = (p1, p2)
            for key in ("shape", "max_shape", "mask"):
                if shape is None and key in group:
                    value = group[key]
                    dims = value.shape if key == "mask" else np.ravel(value[()])
                    shape = (int(dims[0]), int(dims[1])) if len(dims) == 2 else None
            images: dict[str, str] = {}
            absolute = file.resolve()
            mask = group.get("mask")
            if isinstance(mask, h5py.Dataset) and np.any(mask[()]):
                images["mask_file"] = f"{absolute}::{mask.name}"
            flat = group.get("flatfield")
            if isinstance(flat, h5py.Dataset):
                images["flat_file"] = f"{absolute}::{flat.name}"
            if "darkcurrent" in group:
                log.warning("%s: %s's darkcurrent is not applied by radint: give the dark with "
                            "--dark (or Dark)", where, file)  # fmt: skip
            dummies = tuple(
                float(group[key][()]) if key in group and np.ndim(group[key]) == 0 else None
                for key in ("dummy", "delta_dummy")
            )
            return _NexusDetector(True, pixel, shape, images, (dummies[0], dummies[1]))
    except OSError as e:
        raise ParameterError(f"{where}: {file}: not a readable HDF5 file ({e})") from None


def _nx_detector(f: Any) -> Any:
    """The first NXdetector group of an HDF5 file (where pyFAI's ``NexusDetector`` looks)."""
    found: list[Any] = []

    def visit(_name: str, obj: Any) -> Any:
        nx_class = obj.attrs.get("NX_class")
        if isinstance(nx_class, bytes):
            nx_class = nx_class.decode()
        if nx_class == "NXdetector":
            found.append(obj)
            return True
        return None

    f.visititems(visit)
    return found[0] if found else None


#: pyFAI detector orientation → the MIDAS ImTransOpt flips that put the image in orientation 3
#: (pyFAI's default, what the geometry conversion assumes): pyFAI places pixel row i of an
#: orientation-2 detector where orientation 3 has row N−1−i (a top-bottom flip, ImTransOpt 2),
#: column j of orientation 4 where it has column N−1−j (left-right, ImTransOpt 1), both for 1.
_ORIENTATION_FLIPS = {1: (1, 2), 2: (2,), 3: (), 4: (1,)}


_DETECTOR_SHAPES = {
    "pilatus2m": (1679, 1475),
    "pilatus1m": (1043, 981),
    "pilatus300k": (619, 487),
    "eiger4m": (2167, 2070),
    "eiger9m": (3269, 3110),
    "eiger16m": (4371, 4150),
    "eiger1m": (1065, 1030),
}


#: pyFAI's spelling of those names.
_PYFAI_NAMES = {
    key: key.replace("pilatus", "Pilatus").replace("eiger", "Eiger").replace("m", "M")
    for key in _DETECTOR_SHAPES
}

#: Module rows, columns and the gap rows, columns between them (pyFAI's MODULE_SIZE and
#: MODULE_GAP) of the detectors above; pyFAI masks those gaps.
_MODULE_GAPS = {
    name: (195, 487, 17, 7) if name.startswith("pilatus") else (514, 1030, 37, 10)
    for name in _DETECTOR_SHAPES
}

#: pyFAI detector families whose pixels do not sit on one regular grid (name prefixes); the
#: Pixirad's hexagons (rows shifted by half a pixel) were refused as rectangles until radint
#: read rectangular pixels, and must still be.
_IRREGULAR_DETECTORS = (
    "imxpad", "xpad", "cirpad", "xcirpad", "aarhus", "rapid", "d5", "jungfrau", "pixirad",
)  # fmt: skip
#: Members of those families that pyFAI places on a regular grid (checked against its pixel
#: positions, binned too): the assembled Jungfrau 1M / 4M (module gaps, as an Eiger's).
_REGULAR_FAMILY_MEMBERS = ("jungfrau1m", "jungfrau4m")

#: Their pixel size (m): Pilatus 172 µm, Eiger 75 µm.
_DETECTOR_PIXEL = {
    name: 172e-6 if name.startswith("pilatus") else 75e-6 for name in _DETECTOR_SHAPES
}


def _config_pixel(det: dict[str, Any], key: str, where: str) -> float | None:
    """``Detector_config``'s pixel size ``key`` in m, None when absent."""
    value = det.get(key)
    if value is None:
        return None
    size = math.nan
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            size = float(value)
    if not size > 0 or math.isinf(size):
        raise ParameterError(
            f"{where}: Detector_config: {key} must be a positive pixel size in m, got {value!r}"
        )
    return size


def _config_shape(value: Any, where: str) -> tuple[int, int]:
    """``Detector_config``'s ``max_shape``: (rows, columns)."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ParameterError(
            f"{where}: Detector_config: max_shape must be two positive integers "
            f"[rows, columns], got {value!r}"
        )
    return int(value[0]), int(value[1])


@contextlib.contextmanager
def _quiet_pyfai() -> Iterator[None]:
    """pyFAI logs its whole detector list for a wrong name and notes on some masks, silx (on
    import) a missing pyopencl: none of it concerns a radint user."""
    loggers = [logging.getLogger(n) for n in ("pyFAI", "silx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _off_one_grid(name: str) -> bool:
    """Whether pyFAI (when installed) says its detector ``name`` has pixels off one flat grid
    of equal pixels (``uniform_pixel``, ``IS_CONTIGUOUS``, ``IS_FLAT``): detectors a later pyFAI
    adds are refused as :data:`_IRREGULAR_DETECTORS` are, not read as a grid."""
    key = _detector_key(name)
    if key in _REGULAR_FAMILY_MEMBERS or key in _DETECTOR_SHAPES:
        return False
    det = _pyfai_lookup(name)
    if det is None:
        return False
    flags = (getattr(det, name, True) for name in ("uniform_pixel", "IS_CONTIGUOUS", "IS_FLAT"))
    return not all(bool(flag) for flag in flags)


def _pyfai_lookup(name: str) -> Any:
    """pyFAI's detector ``name``; None when pyFAI is not installed or does not know it."""
    with _quiet_pyfai():
        try:
            import pyFAI.detectors

            return pyFAI.detectors.detector_factory(name)
        except Exception:  # not installed, or not a name pyFAI knows
            return None


def _pyfai_detector(
    path: Path, name: str, line: int, binning: tuple[int, int] | None = None
) -> tuple[float, float, Any]:
    """Pixel size (m) and shape of a pyFAI detector named in a PONI file without its pixel
    size, looked up in pyFAI (when installed). With the file's ``binning``, the pixel is
    pyFAI's at that binning and the shape its full one (the caller bins it)."""
    det = _pyfai_lookup(name)
    if det is None:
        try:
            import pyFAI  # noqa: F401
        except ImportError:
            raise ParameterError(
                f"{path}:{line}: Detector '{name}': the file gives no pixel size and radint "
                f"knows only {', '.join(sorted(_DETECTOR_SHAPES))} without pyFAI: install "
                "pyFAI, or save the PONI with Detector_config (pyFAI >= 0.21 writes pixel1/pixel2 "
                "there)"
            ) from None
        raise ParameterError(
            f"{path}:{line}: Detector '{name}': not a detector pyFAI knows, and the file gives "
            "no pixel size (PixelSize1/PixelSize2 or Detector_config)"
        )
    if not (det.pixel1 and det.pixel2):
        raise ParameterError(f"{path}:{line}: Detector '{name}': pyFAI gives it no pixel size")
    if binning is not None:
        with _quiet_pyfai():
            try:
                det.binning = binning  # pyFAI's own table of binned pixel sizes
            except Exception as e:
                raise ParameterError(
                    f"{path}:{line}: Detector '{name}': pyFAI cannot bin it {binning}: {e}"
                ) from None
        full = det.max_shape
        return float(det.pixel1), float(det.pixel2), tuple(int(v) for v in full) if full else None
    # pyFAI's shape and pixel size as it reads this file (some detectors are binned by default).
    shape = tuple(int(v) for v in det.shape) if det.shape else None
    return float(det.pixel1), float(det.pixel2), shape


def _named_layout(
    path: Path,
    name: str,
    line: int,
    shape: tuple[int, int] | None,
    pixel: tuple[float, float],
    binning: tuple[int, int] | None,
) -> tuple[tuple[int, int] | None, tuple[int, int, int, int] | None]:
    """The shape (when the file gives none) and the module gaps (pyFAI's mask of a Pilatus or
    Eiger) of a detector the PONI file names, from radint's table or from pyFAI.

    Why: pyFAI masks the gaps between a named detector's modules by itself. Frames hold 0 or
    a marker (-1, 2^32 - 1) there, which would be integrated into the rings.
    """
    where = f"{path}:{line}: Detector '{name}'"
    key = _detector_key(name)
    builtin = _MODULE_GAPS.get(key)
    det = _pyfai_lookup(name) if shape is None or builtin is None else None
    if det is not None and not (det.pixel1 and det.pixel2):  # a template (NexusDetector)
        det = None
    file_binning = binning or (1, 1)
    if det is not None:
        # The file's readout against pyFAI's unbinned detector (pyFAI writes a binned
        # detector as its binned pixel size; its tables round some sizes: Rayonix 44.2708 µm).
        unbinned = (det.pixel1 / det.binning[0], det.pixel2 / det.binning[1])
        found = _pyfai_binning(det, pixel, unbinned)
        if found is not None:
            file_binning, binned_shape = found
            shape = shape or binned_shape
        else:
            log.warning(
                "%s: pixel %.4g x %.4g µm, not pyFAI's %.4g x %.4g µm nor a binning of it: its "
                "shape and module gaps are not taken from pyFAI",
                where,
                *(v * 1e6 for v in (*pixel, *unbinned)),
            )
            det, builtin = None, None
    if shape is None:
        why = (
            "pyFAI is not installed"
            if not _has_pyfai()
            else "pyFAI does not know this detector"
            if _pyfai_lookup(name) is None
            else "pyFAI gives it no shape at this pixel size"
        )
        log.warning(
            "%s: the file gives no detector shape and %s; give NrPixelsY and NrPixelsZ "
            "(from_poni(..., NrPixelsY=..., NrPixelsZ=...)) or save the PONI with "
            "Detector_config max_shape",
            where,
            why,
        )
    layout = builtin
    module, module_gap = getattr(det, "MODULE_SIZE", None), getattr(det, "MODULE_GAP", None)
    if layout is None and module and module_gap:  # ImXPadS10 has a module size, no gap
        (rows, cols), (gap_rows, gap_cols) = module, module_gap
        layout = (int(rows), int(cols), int(gap_rows), int(gap_cols))
    if layout is not None and shape is not None and layout[0] >= shape[0] and layout[1] >= shape[1]:
        # One module (Eiger 500k, Pilatus 100k): no gaps; a CdTe one's chip borders are masked.
        _warn_of_pyfai_mask(where, det, shape, "chip borders")
        return shape, None
    if layout is None:
        _warn_of_pyfai_mask(where, det, shape, "e.g. chip borders, or outside a round sensor")
        if det is None and key.startswith(("pilatus", "eiger")) and not _has_pyfai():
            log.warning(
                "%s: pyFAI is not installed, so the gaps between its modules are not known and "
                "not masked; install pyFAI or give a MaskFile",
                where,
            )
        return shape, None
    if file_binning != (1, 1):
        (b0, b1), (rows, cols, gap_rows, gap_cols) = file_binning, layout
        if rows % b0 or gap_rows % b0 or cols % b1 or gap_cols % b1:
            log.warning(
                "%s: read out binned %dx%d, which splits the gaps between its modules: they "
                "are not masked; give a MaskFile (pyFAI's detector.mask)",
                where,
                *file_binning,
            )
            return shape, None
        if det is None:  # radint's table gave the layout: pyFAI's binned mask checks it
            det = _pyfai_lookup(name)
            with _quiet_pyfai():
                try:
                    det.binning = file_binning
                except Exception:  # pyFAI not installed, or cannot bin it so
                    det = None
        det_mask = _pyfai_mask(det)
        if det_mask is None or tuple(det_mask.shape) != shape:
            log.warning(
                "%s: read out binned %dx%d, for which pyFAI makes no mask to check the gaps "
                "between its modules against: they are not masked; give a MaskFile",
                where,
                *file_binning,
            )
            return shape, None
        # Gaps of whole binned pixels: the same tiling at the binned scale, checked against
        # pyFAI's binned mask below.
        layout = (rows // b0, cols // b1, gap_rows // b0, gap_cols // b1)
    gaps = (layout[0], layout[1], layout[2], layout[3])
    det_mask = _pyfai_mask(det)
    if det_mask is not None and tuple(det_mask.shape) == shape:
        from radint.detector_map import module_gap_mask

        pyfai_mask, ours = np.asarray(det_mask, dtype=bool), module_gap_mask(shape, gaps)
        if not pyfai_mask.any():  # pyFAI masks none (Lambda 9M): neither does radint
            return shape, None
        if (ours & ~pyfai_mask).any():  # not tiled evenly from the first pixel
            log.warning(
                "%s: its modules are not tiled evenly, so radint does not mask their gaps; "
                "give pyFAI's detector.mask as MaskFile",
                where,
            )
            return shape, None
        extra = pyfai_mask & ~ours
        if extra.any():
            log.warning(
                "%s: pyFAI masks %d pixels besides the gaps between modules (chip borders); "
                "radint masks the gaps only: give pyFAI's detector.mask as MaskFile to match",
                where,
                int(extra.sum()),
            )
    return shape, gaps


def _warn_of_pyfai_mask(where: str, det: Any, shape: tuple[int, int] | None, what: str) -> None:
    """Warn where pyFAI masks pixels of the detector (``what``: which) that radint does not."""
    det_mask = _pyfai_mask(det)
    if det_mask is not None and tuple(det_mask.shape) == shape and np.any(det_mask):
        log.warning(
            "%s: pyFAI masks %d of its pixels (%s), radint none: give pyFAI's detector.mask "
            "as MaskFile to match",
            where,
            int(np.count_nonzero(det_mask)),
            what,
        )


def _pyfai_binning(
    det: Any, pixel: tuple[float, float], unbinned: tuple[float, float]
) -> tuple[tuple[int, int], tuple[int, int] | None] | None:
    """The binning of pyFAI detector ``det`` whose pixel is ``pixel`` (m), and pyFAI's shape at
    that binning; None when none fits. Rayonix and Mar detectors list their binned pixel
    sizes rounded (MX325 at 3x3: 119.135 µm, 3.0029 unbinned pixels): pyFAI's own table
    decides there."""
    ratio = (pixel[0] / unbinned[0], pixel[1] / unbinned[1])
    guess = (max(1, round(ratio[0])), max(1, round(ratio[1])))
    exact = all(_whole(r) for r in ratio)
    with _quiet_pyfai():
        try:
            det.binning = guess
            pyfai_pixel = (float(det.pixel1), float(det.pixel2))
            pyfai_shape = tuple(int(v) for v in det.shape) if det.shape else None
        except Exception:  # a detector pyFAI cannot bin
            pyfai_pixel, pyfai_shape = (math.nan, math.nan), None
    listed = all(math.isclose(p, q, rel_tol=1e-6) for p, q in zip(pixel, pyfai_pixel, strict=True))
    if not (exact or listed):
        return None
    if pyfai_shape is None and det.max_shape:
        pyfai_shape = (int(det.max_shape[0]) // guess[0], int(det.max_shape[1]) // guess[1])
    return guess, (pyfai_shape[0], pyfai_shape[1]) if pyfai_shape else None


def _pyfai_mask(det: Any) -> np.ndarray | None:
    """pyFAI's mask of ``det`` (None without one, or where pyFAI cannot make it)."""
    if det is None:
        return None
    with _quiet_pyfai():
        try:
            mask = det.mask
        except Exception:  # e.g. a binning its mask does not divide
            return None
    return None if mask is None else np.asarray(mask)


def _positive_whole(value: Any) -> bool:
    """Whether a JSON value is a positive whole number (2 or 2.0; not true, "2" or [2])."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and value >= 1 and float(value).is_integer()


def _whole(ratio: float) -> bool:
    """Whether a pixel-size ratio is a binning (a positive integer, to pyFAI's rounding)."""
    return ratio > 0.5 and abs(ratio - round(ratio)) < 1e-4 * round(ratio)


def _has_pyfai() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyFAI") is not None


def _detector_key(name: str) -> str:
    return name.strip().lower().replace("_", "").replace(" ", "")


def _known_detector_shape(name: str) -> tuple[int, int] | None:
    return _DETECTOR_SHAPES.get(_detector_key(name))


def midas_geometry_from_poni(poni: dict[str, Any]) -> dict[str, Any]:
    """MIDAS fields (``IntegrationConfig`` names) equivalent to a PONI geometry."""
    # pixel1 is the rows' height (MIDAS Z), pixel2 the columns' width (MIDAS Y, R's unit).
    p1, p2 = poni["pixel1"], poni["pixel2"]
    square = math.isclose(p1, p2, rel_tol=1e-9)
    if square:
        p2 = p1  # pixel1, as before rectangular pixels were read
    rot = C @ pyfai_rotation(poni["rot1"], poni["rot2"], poni["rot3"])
    trs = rot @ C.T
    u = rot.T @ np.array([1.0, 0.0, 0.0])
    if u[2] <= 0:
        raise ParameterError(
            f"{poni.get('source', 'PONI')}: the forward beam never meets the detector plane "
            f"(rot1 {poni['rot1']:g} rad, rot2 {poni['rot2']:g} rad tilt it by 90° or more), so "
            "MIDAS's Lsd and beam centre, which radint's geometry is built on, do not exist; "
            "back-reflection geometries are not supported"
        )
    a1 = 0.5 * p1 - poni["poni1"]
    a2 = 0.5 * p2 - poni["poni2"]
    lsd = poni["dist"] / u[2]
    z_cen = (lsd * u[0] - a1) / p1
    y_cen = (lsd * u[1] - a2) / p2
    ty = math.degrees(math.asin(max(-1.0, min(1.0, trs[0, 2]))))
    tz = math.degrees(math.atan2(-trs[0, 1], trs[0, 0]))
    tx = math.degrees(math.atan2(-trs[1, 2], trs[2, 2]))
    fields: dict[str, Any] = {
        "lsd_um": float(lsd * 1e6),
        "bc_y_px": float(y_cen),
        "bc_z_px": float(z_cen),
        "tx_deg": tx,
        "ty_deg": ty,
        "tz_deg": tz,
        "pixel_size_y_um": p2 * 1e6,
        "pixel_size_z_um": p1 * 1e6,
        "wavelength_angstrom": poni["wavelength"] * 1e10,
    }
    if not square:
        fields["pixel_shape"] = "rectangular"
    if poni.get("shape"):
        fields["n_pixels_z"], fields["n_pixels_y"] = poni["shape"]
    if poni.get("module_gaps"):
        fields["module_gaps"] = tuple(poni["module_gaps"])
    for name in ("mask_file", "flat_file"):
        if poni.get(name):
            fields[name] = poni[name]
    # pyFAI leaves the detector's dummy values out (as MIDAS's GapIntensity / BadPxIntensity).
    for name, value in zip(("gap_intensity", "bad_px_intensity"), poni.get("invalid_values", ())):
        fields[name] = value
    flips = _ORIENTATION_FLIPS[poni.get("orientation", 3)]
    if flips:
        fields["im_trans_opt"] = flips
    return fields


def poni_from_midas(config: Any) -> dict[str, Any]:
    """The PONI geometry of a MIDAS configuration (inverse of :func:`midas_geometry_from_poni`).

    Distortion (pN, DistortionFile, ResidualCorrectionMap), panels, parallax and ImTransOpt
    move pixels in ways a PONI cannot describe, so they must be absent.
    """
    moved = _pixel_moves(config)
    if moved:
        raise ParameterError(
            "PONI export needs a geometry pyFAI can describe: "
            + ", ".join(moved)
            + " move pixels in ways a PONI file has no key for"
        )
    px = config.pixel_size_y_um * 1e-6
    px_z = config.pixel_size_z_um * 1e-6 if config.pixel_shape == "rectangular" else px
    trs = midas_tilt_matrix(config.tx_deg, config.ty_deg, config.tz_deg)
    rot = C.T @ trs @ C
    rot2 = math.asin(max(-1.0, min(1.0, rot[2, 0])))
    rot3 = math.atan2(rot[1, 0], rot[0, 0])
    rot1 = math.atan2(-rot[2, 1], rot[2, 2])
    lsd = config.lsd_um * 1e-6
    u = rot[2]  # third row of R = Rᵀ·e3 = (C·R)ᵀ·x̂
    dist = lsd * u[2]
    a1 = lsd * u[0] - config.bc_z_px * px_z
    a2 = lsd * u[1] - config.bc_y_px * px
    return {
        "dist": dist,
        "poni1": 0.5 * px_z - a1,
        "poni2": 0.5 * px - a2,
        "rot1": rot1,
        "rot2": rot2,
        "rot3": rot3,
        "pixel1": px_z,
        "pixel2": px,
        "wavelength": config.wavelength_angstrom * 1e-10,
        "shape": (config.n_pixels_z, config.n_pixels_y),
    }


def _pixel_moves(config: Any) -> list[str]:
    """The MIDAS keys of ``config`` that place pixels where a PONI geometry would not."""
    moves = {
        "p0 .. p14": any(config.distortion),
        "DistortionFile": bool(config.distortion_file),
        "ResidualCorrectionMap": bool(config.residual_correction_map),
        # Panels move pixels only by the shifts file's offsets.
        "PanelShiftsFile": bool(config.panel_shifts_file),
        "Parallax": bool(config.parallax_um),
        "ImTransOpt": bool(config.im_trans_opt),
    }
    return [key for key, present in moves.items() if present]


def _left_to_the_user(config: Any, detector_name: str) -> list[str]:
    """What radint leaves out or corrects per pixel that pyFAI, given only the written PONI,
    would not: each with the pyFAI argument that does it."""
    left = []
    if config.mask_file:
        left.append(f"MaskFile {config.mask_file} (pyFAI: ai.detector.mask = ..., or mask=)")
    if config.flat_file:
        left.append(f"FlatFile {config.flat_file} (pyFAI: flat=)")
    if config.dark_file:
        left.append(f"Dark {config.dark_file} (pyFAI: dark=)")
    dummy, delta = _named_dummies(detector_name) if detector_name != "Detector" else (None, None)
    # pyFAI moves a negative dummy to its unsigned form in unsigned frames (get_dummies).
    dummies = [] if dummy is None else [dummy] + [dummy + 2.0**n for n in (16, 32) if dummy < 0]
    markers = {key: float(value)
               for key, value in (("GapIntensity", config.gap_intensity),
                                  ("BadPxIntensity", config.bad_px_intensity))
               if value and not any(abs(float(value) - d) <= (delta or 0.0) for d in dummies)}  # fmt: skip
    if not markers:
        return left
    said = " and ".join(f"{key} {_exact(value)}" for key, value in markers.items())
    low, high = min(markers.values()), max(markers.values())
    if high - low <= 2:  # one window takes them all, and no whole number between
        centre, half = (low + high) / 2, (high - low) / 2 + 0.5
        left.append(f"{said} (pyFAI: dummy={_exact(centre)}, delta_dummy={_exact(half)})")
    else:
        left.append(f"{said} (pyFAI takes one dummy value: mask those pixels instead)")
    return left


def _exact(value: float) -> str:
    """A number as written in a file: whole numbers without a fraction, others in full."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _detector_named_by(config: Any) -> tuple[str, tuple[int, int]]:
    """pyFAI's name of the detector ``config`` describes with its module gaps (so pyFAI masks
    them too), and the binning it is read out at: radint's Pilatus/Eiger table, else pyFAI's
    own detectors when it is installed; the generic "Detector" otherwise."""
    if not config.module_gaps:
        return "Detector", (1, 1)
    shape, gaps = (config.n_pixels_z, config.n_pixels_y), tuple(config.module_gaps)
    # (rows' height, columns' width) in m, as pyFAI's (pixel1, pixel2).
    rectangular = config.pixel_shape == "rectangular"
    pixel_m = (
        (config.pixel_size_z_um if rectangular else config.pixel_size_y_um) * 1e-6,
        config.pixel_size_y_um * 1e-6,
    )

    def binning(
        full_shape: Any, layout: Any, pixel: float | None = None, rel_tol: float = 1e-9
    ) -> tuple[int, int]:
        """The binning (rows, columns) that reads the detector out as ``config`` has it; (0, 0)
        if none: the shape a whole multiple, the pixel (unless None) that multiple of the
        detector's, the gaps whole binned pixels laid out as ``ModuleGaps`` says (from_poni's
        rule)."""
        full_shape, layout = tuple(full_shape or ()), tuple(layout)
        if len(full_shape) != 2 or len(layout) != 4 or full_shape[0] % shape[0]:
            return 0, 0
        b = (full_shape[0] // shape[0], full_shape[1] // shape[1])
        if full_shape != (shape[0] * b[0], shape[1] * b[1]):
            return 0, 0
        if pixel is not None and not all(
            math.isclose(pixel * k, size, rel_tol=rel_tol) for k, size in zip(b, pixel_m)
        ):
            return 0, 0
        per_axis = (b[0], b[1], b[0], b[1])  # module rows, columns, gap rows, gap columns
        if any(n % k for n, k in zip(layout, per_axis)):
            return 0, 0
        if tuple(n // k for n, k in zip(layout, per_axis)) != gaps:
            return 0, 0
        return b

    for key, known in _DETECTOR_SHAPES.items():
        found = binning(known, _MODULE_GAPS[key], _DETECTOR_PIXEL[key])
        if found[0]:
            return _PYFAI_NAMES[key], found
    with _quiet_pyfai():
        try:
            import pyFAI.detectors

            classes = set(pyFAI.detectors.ALL_DETECTORS.values())
        except Exception:
            return "Detector", (1, 1)
        # A CdTe variant of the same layout also masks its chip borders: the plain one first.
        for cls in sorted(classes, key=lambda c: ("cdte" in c.__name__.lower(), c.__name__)):
            layout = (*getattr(cls, "MODULE_SIZE", ()), *getattr(cls, "MODULE_GAP", ()))
            max_shape = getattr(cls, "MAX_SHAPE", None)
            if not binning(max_shape, layout)[0]:
                continue  # the layout first: instances of some classes are slow to make
            try:
                det = cls()
            except Exception:
                continue
            found = binning(max_shape, layout, det.pixel1 or 0.0, 1e-6)
            if found[0]:
                return cls.__name__, found
    return "Detector", (1, 1)


def write_poni(config: Any, path: str | Path) -> Path:
    """Write a PONI file (version 2) for a MIDAS configuration.

    The PONI holds the geometry and, where the configuration's ``ModuleGaps`` are a Pilatus's or
    an Eiger's, that detector's name (pyFAI then masks its gaps and dummy values). What else
    radint leaves out or corrects per pixel (``MaskFile``, ``FlatFile``, a dark,
    ``GapIntensity``/``BadPxIntensity`` the named detector does not cover) has no PONI key:
    one warning names each, with the pyFAI argument that applies it.

    Parameters
    ----------
    config : IntegrationConfig
        The MIDAS configuration.
    path : str or Path
        The PONI file to write.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ParameterError
        The geometry moves pixels in a way a PONI cannot describe (distortion, panels,
        parallax, ImTransOpt).
    """
    g: dict[str, Any] = {
        k: (float(v) if isinstance(v, (float, np.floating)) else v)
        for k, v in poni_from_midas(config).items()
    }
    name, binned = _detector_named_by(config)
    det = {"pixel1": g["pixel1"], "pixel2": g["pixel2"]}
    if binned == (1, 1):  # pyFAI takes the binning from the pixel size, and fails on max_shape
        det["max_shape"] = list(g["shape"])
    if config.module_gaps and name == "Detector":
        log.warning(
            "%s: ModuleGaps %s: no pyFAI detector of this shape, pixel and modules to name, so "
            "pyFAI integrates the gaps unless given the mask",
            path,
            " ".join(map(str, config.module_gaps)),
        )
    left = _left_to_the_user(config, name)
    if left:
        log.warning(
            "%s: a PONI file has no key for %s: pyFAI given this file alone does not apply "
            "them as radint does",
            path,
            "; ".join(left),
        )
    text = (
        "# Written by radint from MIDAS geometry\n"
        "poni_version: 2\n"
        f"Detector: {name}\n"
        f"Detector_config: {json.dumps(det)}\n"
        f"Distance: {g['dist']!r}\n"
        f"Poni1: {g['poni1']!r}\nPoni2: {g['poni2']!r}\n"
        f"Rot1: {g['rot1']!r}\nRot2: {g['rot2']!r}\nRot3: {g['rot3']!r}\n"
        f"Wavelength: {g['wavelength']!r}\n"
    )
    path = Path(path)
    path.write_text(text)
    return path
