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


def pseudo_voigt(x: np.ndarray, center: float, fwhm: float, eta: float) -> np.ndarray:
    """Unit-area pseudo-Voigt ``eta · L + (1 − eta) · G`` of one FWHM at ``x``.

    Parameters
    ----------
    x : ndarray
        Positions (any unit; ``center`` and ``fwhm`` in the same).
    center, fwhm : float
        Peak centre and full width at half maximum of both components.
    eta : float
        Lorentzian fraction, 0 (Gaussian) to 1 (Lorentzian).

    Returns
    -------
    ndarray
        The profile, integrating to 1 over the real line.
    """
    s = fwhm / (2 * np.sqrt(2 * np.log(2)))
    g = np.exp(-0.5 * ((x - center) / s) ** 2) / (s * np.sqrt(2 * np.pi))
    return eta * (fwhm / 2) / np.pi / ((x - center) ** 2 + (fwhm / 2) ** 2) + (1 - eta) * g


def peak_lineouts(n_curves: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Synthetic lineouts for peak fitting: a doublet and a triplet that merge into one job
    each, isolated peaks, a sloped background, Poisson noise, a masked (NaN) stretch in one
    lineout.

    Parameters
    ----------
    n_curves : int
        Lineouts to make (600 bins each, x = 10 .. 309.5 in steps of 0.5).
    seed : int
        Seed of the random areas, widths, shapes, centre offsets and noise.

    Returns
    -------
    x : ndarray, shape (600,)
    ys : ndarray, shape (n_curves, 600)
        Counts; row ``min(3, n_curves - 1)`` has NaN at bins 100-109.
    positions : list of float
        The eight peak positions (0.3 off the true centres), then two out of range (500, NaN).
    """
    rng = np.random.default_rng(seed)
    x = np.arange(600.0) * 0.5 + 10
    centres = np.array([40.0, 47.0, 48.8, 90.0, 150.0, 200.0, 203.5, 260.0])
    ys = np.empty((n_curves, x.size))
    for i in range(n_curves):
        y = 50 + 0.05 * x
        for c in centres:
            y += rng.uniform(500, 3000) * pseudo_voigt(
                x, c + rng.normal(0, 0.1), rng.uniform(1, 3), rng.uniform(0, 1)
            )
        ys[i] = rng.poisson(y)
    ys[min(3, n_curves - 1), 100:110] = np.nan
    positions = [*(centres + 0.3), 500.0, float("nan")]
    return x, ys, positions
