"""Facts every writer derives from a Result: config values with defaults, frame axes, version."""

from __future__ import annotations

import functools
import importlib.metadata
import math
from typing import Any, overload

import numpy as np

from radint.result import Result


def zarr3(path: Any) -> Any:
    """The zarr module, for a Zarr v3 store at ``path``: zarr >= 3 (Python >= 3.11) reads and
    writes those; with zarr 2 (Python 3.10) a RadintError says so instead of failing inside."""
    import zarr

    from radint.exceptions import RadintError

    if int(zarr.__version__.split(".")[0]) < 3:
        raise RadintError(
            f"{path}: a Zarr v3 result needs zarr >= 3 (which needs Python >= 3.11); this "
            f"environment has zarr {zarr.__version__}: install zarr >= 3 or use HDF5 results "
            "(--format nexus)"
        )
    return zarr


HC_KEV_ANGSTROM = 12.398419843320026


def cfg(result: Result, name: str) -> Any:
    """``result.config.<name>``, or the MIDAS default (IntegrationConfig's) where the result
    has no config or its config no such field."""
    config = result.config if hasattr(result.config, name) else _default_config()
    return getattr(config, name)


@functools.cache
def _default_config() -> Any:
    from radint.config import IntegrationConfig

    return IntegrationConfig()


def config_dict(result: Result) -> dict[str, Any]:
    """The full configuration as a JSON-serialisable dict (empty without a config)."""
    return {} if result.config is None else dict(result.config.to_dict())


@functools.cache
def software_version() -> str:
    """Installed radint version, ``"unknown"`` when running from a source tree (looked up once:
    reading package metadata costs ~1 ms, paid per written file otherwise)."""
    try:
        return importlib.metadata.version("radint")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@overload
def stacked(a: np.ndarray, ndim: int) -> np.ndarray: ...
@overload
def stacked(a: None, ndim: int) -> None: ...
def stacked(a: np.ndarray | None, ndim: int) -> np.ndarray | None:
    """``a`` with a leading frame axis (a single-frame array gets one of length 1)."""
    if a is None:
        return None
    return a[np.newaxis] if a.ndim == ndim else a


def frame_ids(result: Result) -> np.ndarray:
    """Frame identifiers of the result, shape (n_frames,), int64 (0..n-1 when not set)."""
    if result.frame_ids is not None:
        return np.asarray(result.frame_ids, dtype=np.int64).reshape(-1)
    return np.arange(result.n_frames, dtype=np.int64)


def two_theta_edges_deg(result: Result) -> np.ndarray | None:
    """2θ of the radial bin edges (deg), shape (n_r + 1,); None without a config.

    2θ = atan(R·px / Lsd), the relation MIDAS uses for bin centres (spec §5.4).
    """
    if result.config is None:
        return None
    r_um = np.asarray(result.r_edges_px, dtype=np.float64) * cfg(result, "pixel_size_y_um")
    return np.degrees(np.arctan(r_um / cfg(result, "lsd_um")))


def q_from_two_theta(two_theta_deg: np.ndarray, wavelength_angstrom: float) -> np.ndarray:
    """Q = 4π/λ·sin(2θ/2) in Å⁻¹ (NaN when λ ≤ 0)."""
    if not wavelength_angstrom > 0:
        return np.full_like(two_theta_deg, math.nan, dtype=np.float64)
    return 4 * math.pi / wavelength_angstrom * np.sin(np.radians(two_theta_deg) / 2)


def omegas_deg(result: Result) -> np.ndarray | None:
    """ω of each frame (deg), shape (n_frames,): ``metadata['omega_deg']`` when present, else
    ``omega_start_deg + position·omega_step_deg`` when ω is known; None when it is not.

    Known as IntegratorZarrOMP decides it: the parameter file names ``OmegaStart`` (or
    ``OmegaFirstFile``), or the frames carry ω (a MIDAS zip's scan start). A configuration built
    in Python rather than read from a file (``source`` ``"<defaults>"``) counts as giving ω when
    start or step is not 0."""
    given = result.metadata.get("omega_deg")
    if given is not None:
        return np.asarray(given, dtype=np.float64).reshape(-1)
    if result.config is None:
        return None
    start, step = cfg(result, "omega_start_deg"), cfg(result, "omega_step_deg")
    set_at = getattr(result.config, "set_at", None) or {}
    # Not whether set_at is empty: replace() marks what it changes (an Integrator's own
    # settings too), which made a Python-built configuration lose its ω.
    source = getattr(result.config, "source", None)
    from_file = bool(set_at) if source is None else source not in ("", "<defaults>")
    known = "OmegaStart" in set_at if from_file else bool(start or step)
    return start + step * np.arange(result.n_frames, dtype=np.float64) if known else None


def edges_from_centres(centres: np.ndarray) -> np.ndarray:
    """Bin edges (n + 1) of bins with these centres: midpoints between them, the outer edges
    mirrored (a single bin gets a width of 1)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size < 2:
        return np.array([c[0] - 0.5, c[0] + 0.5]) if c.size else np.zeros(1)
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])
