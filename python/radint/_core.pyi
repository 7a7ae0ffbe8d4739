"""Type stubs of the compiled module radint._core (Rust, PyO3)."""

from pathlib import Path
from typing import Any, final

import numpy as np

__version__: str

def parse_params(
    path: str, overrides: list[str] = ..., text: str | None = ...
) -> dict[str, Any]: ...
def validate_params(config: dict[str, Any]) -> None: ...
def bin_edges(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]: ...
def distortion_fold(config: dict[str, Any]) -> tuple[float, float] | None: ...
def param_hash(config: dict[str, Any]) -> tuple[str, str]: ...
def build_map(
    config: dict[str, Any],
    mask: np.ndarray | None = ...,
    distortion_y: np.ndarray | None = ...,
    distortion_z: np.ndarray | None = ...,
    residual: np.ndarray | None = ...,
    panel_shifts: tuple[str, str] | None = ...,
    n_threads: int | None = ...,
) -> MapCore: ...
def pixel_centres(
    config: dict[str, Any],
    distortion_y: np.ndarray | None = ...,
    distortion_z: np.ndarray | None = ...,
    residual: np.ndarray | None = ...,
    panel_shifts: tuple[str, str] | None = ...,
    n_threads: int | None = ...,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def load_midas(
    directory: str | Path,
    config: dict[str, Any],
    sampling: str = ...,
    gradient_centre: tuple[float, float] | None = ...,
) -> tuple[MapCore, dict[str, Any]]: ...
def integrate(
    map: MapCore,
    frames: np.ndarray | list[np.ndarray],
    dark: np.ndarray | None = ...,
    scale: np.ndarray | None = ...,
    error_model: str = ...,
    variance: np.ndarray | None = ...,
    precision: str = ...,
    normalize: bool = ...,
    rules: str = ...,
    lineout: str = ...,
    empty_value: float = ...,
    nan_masked_bins: bool = ...,
    n_threads: int | None = ...,
    signal_offset: np.ndarray | None = ...,
) -> dict[str, Any]:
    """Flat frame-major arrays: per-bin sums (``signal``, ``area``, ``count``, ``variance``)
    in bin order ``r·n_eta + e``; ``cake`` and ``cake_sigma`` η-major (``e·n_r + r``);
    ``lineout``/``lineout_sigma`` ``n_r`` per frame; ``n_frames``. ``signal_offset`` (per
    bin) is subtracted from every frame's signal (the dark of a :meth:`MapCore.folded` map)."""

@final
class MapCore:
    n_y: int
    n_z: int
    n_r: int
    n_eta: int
    n_entries: int
    r_edges: np.ndarray
    eta_edges: np.ndarray
    indptr: np.ndarray
    pixel: np.ndarray
    area: np.ndarray
    delta_r: np.ndarray
    weight: np.ndarray | None
    mask_hit: np.ndarray
    bin_geometric_area: np.ndarray
    fold: tuple[int, float, float, float] | None
    @staticmethod
    def from_arrays(
        n_y: int,
        n_z: int,
        r_edges: np.ndarray,
        eta_edges: np.ndarray,
        indptr: np.ndarray,
        pixel: np.ndarray,
        area: np.ndarray,
        delta_r: np.ndarray | None = ...,
        weight: np.ndarray | None = ...,
        mask_hit: np.ndarray | None = ...,
        bin_geometric_area: np.ndarray | None = ...,
    ) -> MapCore: ...
    def eta_cross(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def gradient_resampled(self, config: dict[str, Any]) -> MapCore: ...
    def folded(
        self,
        scale: np.ndarray | None = ...,
        dark: np.ndarray | None = ...,
        n_threads: int | None = ...,
    ) -> tuple[MapCore, np.ndarray]:
        """This map with the per-pixel ``scale`` and ``dark`` folded into its weights (entries
        whose weight or dark is not finite dropped) and the per-bin signal offset to pass to
        :func:`integrate` as ``signal_offset``."""
    def save_midas(
        self, directory: str | Path, config: dict[str, Any], frac_factor: np.ndarray | None = ...
    ) -> None: ...

def count_equal(frame: np.ndarray, values: list[int], n_threads: int | None = ...) -> int:
    """How many elements of the contiguous integer array ``frame`` equal any of ``values``."""

def gather_kernels() -> bool:
    """Whether this CPU runs the AVX-512 gather kernels."""

def copy_bytes(dst: np.ndarray, src: np.ndarray, n_threads: int | None = ...) -> None:
    """Copy the bytes of ``src`` into ``dst`` (1-D contiguous uint8 arrays of equal length) on
    ``n_threads`` threads (default: all cores) with the GIL released."""
