"""Synthetic diffraction images and comparison helpers for tests, examples and benchmarks."""

from __future__ import annotations

import math

import numpy as np

from radint.config import IntegrationConfig
from radint.corrections import pixel_geometry

#: CeO2 (fluorite, a = 5.411651 Å) reflections (h, k, l) used for synthetic rings.
CEO2_A_ANGSTROM = 5.411651
CEO2_HKL = [(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1), (2, 2, 2), (4, 0, 0), (3, 3, 1),
            (4, 2, 0), (4, 2, 2), (5, 1, 1), (4, 4, 0), (5, 3, 1), (6, 0, 0), (6, 2, 0)]  # fmt: skip


def ceo2_two_theta_deg(wavelength_angstrom: float) -> np.ndarray:
    """2θ (degrees) of the CeO2 reflections reachable at this wavelength."""
    d = np.array([CEO2_A_ANGSTROM / math.sqrt(h * h + k * k + l * l) for h, k, l in CEO2_HKL])
    s = wavelength_angstrom / (2 * d)
    return np.degrees(2 * np.arcsin(s[s < 1]))


def ring_image(
    config: IntegrationConfig,
    ring_two_theta_deg: np.ndarray | None = None,
    fwhm_deg: float = 0.03,
    amplitude: float = 1000.0,
    background: float = 20.0,
    noise: bool = False,
    seed: int = 0,
    dtype: type = np.uint32,
) -> np.ndarray:
    """A synthetic powder image ``(n_pixels_z, n_pixels_y)`` in raw orientation.

    Rings are Gaussian in 2θ (computed from the exact pixel-centre geometry of ``config``),
    amplitudes falling with ring index; ``noise=True`` draws Poisson counts.
    """
    if ring_two_theta_deg is None:
        ring_two_theta_deg = ceo2_two_theta_deg(config.wavelength_angstrom or 0.172973)
    g = pixel_geometry(config)
    tth = np.degrees(g["two_theta_rad"])
    sigma = fwhm_deg / (2 * math.sqrt(2 * math.log(2)))
    img = np.full(tth.shape, float(background))
    for k, centre in enumerate(ring_two_theta_deg):
        img += amplitude / (1 + 0.15 * k) * np.exp(-0.5 * ((tth - centre) / sigma) ** 2)
    img = img.reshape(config.shape)
    if noise:
        img = np.random.default_rng(seed).poisson(img).astype(np.float64)
    return np.rint(img).astype(dtype) if np.dtype(dtype).kind in "iu" else img.astype(dtype)


def assert_lineout_close(
    actual: np.ndarray, expected: np.ndarray, rtol: float, where: np.ndarray | None = None
) -> None:
    """Assert two lineouts agree to ``rtol`` (relative) on the bins where both are finite."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    ok = np.isfinite(actual) & np.isfinite(expected)
    if where is not None:
        ok &= where
    if not ok.any():
        raise AssertionError("no finite bins to compare")
    rel = np.abs(actual[ok] - expected[ok]) / np.maximum(np.abs(expected[ok]), 1e-300)
    worst = int(np.argmax(rel))
    if rel[worst] > rtol:
        raise AssertionError(
            f"lineouts differ: max relative difference {rel[worst]:.3g} > {rtol:g} "
            f"(bin {np.flatnonzero(ok)[worst]}: {actual[ok][worst]!r} vs {expected[ok][worst]!r})"
        )
