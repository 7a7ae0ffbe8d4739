"""Per-pixel correction factors (solid angle, polarization, flat), kept apart from the map.

The integrator divides each pixel by ``c = solid_angle × polarization × flat``; changing a
correction never needs a new map. ``FlatFile`` in the parameters is the flat (``read_flat_file``). Conventions (η in MIDAS convention, 0 along +Z, +90 along +Y):

* solid angle ``"midas"``: ``cos³(2θ)`` with ``2θ = atan(R·px/Lsd)`` (ignores tilt, as MIDAS C);
  ``"exact"``: ``d0²·(n̂·r)/|r|³``, r the pixel's position on its (tilted) plane, n̂ the plane
  normal, d0 the main plane's normal distance: ``cos³(α)`` of the incidence angle α, 1 at the
  point of normal incidence (pyFAI's convention), and for a panel moved along the beam
  (``PanelShiftsFile`` dLsd) also its 1/distance² factor.
* polarization ``"midas"``: ``1 − f·sin²2θ·cos²(η − η_pol)`` (MIDAS C, whose plane is η_pol = 0:
  f is the fraction polarized along η = 0); ``"kahn"``: ``½(1 + cos²2θ − f·cos(2(η − η_pol))·sin²2θ)``, with η_pol the η of the
  polarization plane (``PolarizationPlaneEtaDeg``; 90 = horizontal plane for a detector whose
  +Y axis is horizontal), f ∈ [−1, 1]. Both equal 1 at 2θ = 0.
"""

from __future__ import annotations

import numpy as np

from radint import _core
from radint.config import IntegrationConfig
from radint.exceptions import InvalidInputError

SOLID_ANGLE_MODELS = ("midas", "exact")
POLARIZATION_MODELS = ("midas", "kahn")


def pixel_geometry(
    config: IntegrationConfig, n_threads: int | None = None
) -> dict[str, np.ndarray]:
    """R (px), η (deg), 2θ (rad) and exact relative solid angle (1 at normal incidence on the
    main detector plane; panels moved along the beam included) of every raw pixel centre, flat
    arrays."""
    from radint.detector_map import _map_inputs

    inputs = _map_inputs(config)
    inputs.pop("mask", None)
    r, eta, solid = _core.pixel_centres(config.core_dict(), n_threads=n_threads, **inputs)
    r = np.asarray(r)
    two_theta = np.arctan(r * config.pixel_size_y_um / config.lsd_um)
    return {
        "r_px": r,
        "eta_deg": np.asarray(eta),
        "two_theta_rad": two_theta,
        "solid_angle_exact": np.asarray(solid),
    }


def solid_angle(geometry: dict[str, np.ndarray], model: str) -> np.ndarray:
    """Relative solid angle per pixel (1 at normal incidence)."""
    if model == "midas":
        return np.cos(geometry["two_theta_rad"]) ** 3
    if model == "exact":
        return geometry["solid_angle_exact"]
    raise InvalidInputError(
        f"solid_angle must be one of {SOLID_ANGLE_MODELS} or None, got {model!r}"
    )


def polarization(
    geometry: dict[str, np.ndarray], model: str, fraction: float, plane_eta_deg: float = 0.0
) -> np.ndarray:
    """Polarization factor per pixel (see module docstring for the conventions)."""
    tth = geometry["two_theta_rad"]
    eta = np.radians(geometry["eta_deg"])
    s2 = np.sin(tth) ** 2
    if model == "midas":
        return 1.0 - fraction * s2 * np.cos(eta - np.radians(plane_eta_deg)) ** 2
    if model == "kahn":
        return 0.5 * (
            1.0 + np.cos(tth) ** 2 - fraction * np.cos(2 * (eta - np.radians(plane_eta_deg))) * s2
        )
    raise InvalidInputError(
        f"polarization must be one of {POLARIZATION_MODELS} or None, got {model!r}"
    )


#: Flat values at or below this (and NaN) leave a ``FlatFile`` pixel undivided (midas-integrate).
FLAT_FLOOR = 1e-12


def read_flat_file(config: IntegrationConfig) -> np.ndarray | None:
    """``FlatFile`` as the flat-field divisor per raw pixel (None without one), with
    midas-integrate's rules: each pixel is divided by its flat value as stored (not normalised);
    a value ≤ 1e-12 or NaN leaves the pixel undivided (warned, with the count). The file is in
    the raw orientation, like the frames, the dark and the mask (midas-integrate reads it at
    the ImTransOpt-transformed pixel, as it reads the mask). Any frame format radint reads (TIFF,
    EDF, HDF5, ...); the first frame of a file holding several."""
    if not config.flat_file:
        return None
    import logging

    from radint.io.read import read_parameter_image

    flat = read_parameter_image(config, "flat_file")
    where, path = config.where_set("flat_file"), config.flat_file
    flat = np.asarray(flat, dtype=np.float64)
    low = ~(flat > FLAT_FLOOR)
    if low.any():
        logging.getLogger("radint").warning(
            "%s: %s: %d pixel(s) hold a flat value <= %g or NaN and are integrated undivided "
            "(as midas-integrate does); mask them (MaskFile) to leave them out",
            where, path, int(low.sum()), FLAT_FLOOR,
        )  # fmt: skip
        flat = np.where(low, 1.0, flat)
    return np.ascontiguousarray(flat)


def midas_frac_factor(config: IntegrationConfig) -> np.ndarray:
    """Factor the MIDAS C mapper folds into ``frac`` (1/cos³2θ, 1/P where P > 1e-6)."""
    g = pixel_geometry(config)
    factor = np.ones_like(g["r_px"])
    if config.solid_angle_correction:
        factor /= solid_angle(g, "midas")
    if config.polarization_correction:
        p = polarization(g, "midas", config.polarization_fraction)
        factor = np.where(p > 1e-6, factor / np.where(p > 1e-6, p, 1.0), factor)
    return factor
