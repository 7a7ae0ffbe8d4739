"""Type stubs of the compiled module radint._core (Rust, PyO3)."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, final

import numpy as np

__all__ = [
    "MapCore",
    "__version__",
    "bin_edges",
    "build_info",
    "build_map",
    "copy_bytes",
    "count_equal",
    "count_nonfinite",
    "crc32",
    "decode_bitshuffle_lz4",
    "distortion_fold",
    "fit_auto",
    "fit_peaks",
    "fit_plan",
    "fit_pv",
    "fit_status_names",
    "integrate",
    "load_midas",
    "narrow_to_f32",
    "nonfinite_pixels",
    "param_hash",
    "parse_params",
    "pixel_areas",
    "pixel_centres",
    "snip_background",
    "validate_params",
]

__version__: str

def build_info() -> dict[str, Any]:
    """How this extension was built and what it finds at run time: ``profile`` ("release" /
    "debug"), ``rayon_threads`` (the threads of a call without ``n_threads``),
    ``avx512_gathers`` (the gather kernels run here), ``target_arch``."""

def parse_params(
    path: str, overrides: list[str] = ..., text: str | None = None
) -> dict[str, Any]: ...
def validate_params(config: dict[str, Any]) -> None: ...
def bin_edges(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]: ...
def distortion_fold(config: dict[str, Any]) -> tuple[float, float] | None: ...
def param_hash(config: dict[str, Any]) -> tuple[str, str]: ...
def build_map(
    config: dict[str, Any],
    mask: np.ndarray | None = None,
    distortion_y: np.ndarray | None = None,
    distortion_z: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    panel_shifts: tuple[str, str] | None = None,
    n_threads: int | None = None,
) -> MapCore: ...
def pixel_centres(
    config: dict[str, Any],
    distortion_y: np.ndarray | None = None,
    distortion_z: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    panel_shifts: tuple[str, str] | None = None,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def pixel_areas(
    config: dict[str, Any],
    distortion_y: np.ndarray | None = None,
    distortion_z: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    panel_shifts: tuple[str, str] | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Each raw pixel's whole area (px², flat) in the plane where bins are cut."""

def load_midas(
    directory: str | Path,
    config: dict[str, Any],
    sampling: str = "bilinear",
    gradient_centre: tuple[float, float] | None = None,
    n_threads: int | None = None,
) -> tuple[MapCore, dict[str, Any]]: ...
def integrate(
    map: MapCore,
    frames: np.ndarray | list[np.ndarray],
    dark: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    error_model: str = "none",
    variance: np.ndarray | None = None,
    precision: str = "float64",
    normalize: bool = True,
    rules: str = "radint",
    lineout: str = "area_weighted",
    empty_value: float = ...,
    nan_masked_bins: bool = False,
    n_threads: int | None = None,
    signal_offset: np.ndarray | None = None,
    nonfinite: int | None = None,
    offset_dark: np.ndarray | None = None,
) -> dict[str, Any]:
    """Flat frame-major arrays: per-bin sums (``signal``, ``area``, ``count``, ``variance``)
    in bin order ``r·n_eta + e``; ``cake`` and ``cake_sigma`` η-major (``e·n_r + r``);
    ``lineout``/``lineout_sigma`` ``n_r`` per frame; ``n_frames``; ``nonfinite``, the NaN and
    ±inf values over all the frames (0 for integer frames; the caller's count when it passes
    one as ``nonfinite``). ``signal_offset`` (per bin) is subtracted from every frame's signal
    (the dark of a :meth:`MapCore.folded` map). Frames with NaN or inf take it only where
    :meth:`MapCore.spoils_few_bins`, with ``offset_dark``, the dark it stands for: their
    spoiled bins are summed again subtracting it entry by entry. ``error_model``: ``"none"``,
    ``"poisson"``, ``"given"`` (with ``variance``) or ``"azimuthal"`` (pyFAI's: ``variance``
    holds Σ a²·(x − I)² per bin, a second pass over the map; radint's rules, area-weighted
    lineout and an area-weighted map without ``signal_offset`` only)."""

@final
class MapCore:
    n_y: int
    n_z: int
    n_r: int
    n_eta: int
    n_entries: int
    #: Whether the entry arrays are read in place from a mapped file (``from_file``).
    entries_mapped: bool
    r_edges: np.ndarray
    eta_edges: np.ndarray
    indptr: np.ndarray
    pixel: np.ndarray
    area: np.ndarray
    delta_r: np.ndarray
    weight: np.ndarray | None
    mask_hit: np.ndarray
    bin_geometric_area: np.ndarray
    fold: tuple[int, float, float, float, int] | None
    @staticmethod
    def from_arrays(
        n_y: int,
        n_z: int,
        r_edges: np.ndarray,
        eta_edges: np.ndarray,
        indptr: np.ndarray,
        pixel: np.ndarray,
        area: np.ndarray,
        delta_r: np.ndarray | None = None,
        weight: np.ndarray | None = None,
        mask_hit: np.ndarray | None = None,
        bin_geometric_area: np.ndarray | None = None,
        n_threads: int | None = None,
    ) -> MapCore: ...
    @staticmethod
    def from_file(
        path: str,
        n_y: int,
        n_z: int,
        r_edges: np.ndarray,
        eta_edges: np.ndarray,
        indptr: tuple[int, int],
        pixel: tuple[int, int],
        area: tuple[int, int],
        delta_r: tuple[int, int],
        weight: tuple[int, int] | None = None,
        mask_hit: np.ndarray | None = None,
        bin_geometric_area: np.ndarray | None = None,
        n_threads: int | None = None,
    ) -> MapCore:
        """A map whose entry arrays (each ``(byte offset, count)`` of little-endian values in
        ``from_arrays``'s dtypes) are read in place from ``path``, mapped read-only."""
    def eta_cross(
        self, n_threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def spoils_few_bins(self, n_frames: int, nonfinite: int) -> bool:
        """Whether ``nonfinite`` NaN / inf values over ``n_frames`` frames are few enough for
        the kernels of frames whose every value counts plus a resum of their spoiled bins."""
    def gradient_resampled(self, config: dict[str, Any]) -> MapCore: ...
    def with_pixel_fractions(self, whole: np.ndarray, n_threads: int | None = None) -> MapCore:
        """This map with each entry's area divided by its pixel's ``whole`` area."""
    def folded(
        self,
        scale: np.ndarray | None = None,
        dark: np.ndarray | None = None,
        n_threads: int | None = None,
    ) -> tuple[MapCore, np.ndarray]:
        """This map with the per-pixel ``scale`` and ``dark`` folded into its weights (entries
        whose weight or dark is not finite dropped) and the per-bin signal offset to pass to
        :func:`integrate` as ``signal_offset``."""
    def save_midas(
        self, directory: str | Path, config: dict[str, Any], frac_factor: np.ndarray | None = None
    ) -> None: ...

def count_equal(frame: np.ndarray, values: list[int], n_threads: int | None = None) -> int:
    """How many elements of the contiguous integer array ``frame`` equal any of ``values``."""

def decode_bitshuffle_lz4(
    chunks: list[bytes], elem_size: int, out: np.ndarray, n_threads: int | None = None
) -> None:
    """Decode bitshuffle/LZ4 chunks (HDF5 filter 32008) into the rows of ``out`` (uint8, 2-D,
    C-contiguous, one row per chunk); a damaged chunk raises InvalidInputError naming it."""

def count_nonfinite(frames: np.ndarray | list[np.ndarray], n_threads: int | None = None) -> int:
    """The NaN and ±inf values in ``frames`` (a contiguous array of any shape or a list of
    them; 0 for integer dtypes)."""

def crc32(data: np.ndarray, n_threads: int | None = None) -> int:
    """The CRC-32 (ZIP's, IEEE) of the contiguous uint8 array ``data``."""

def nonfinite_pixels(frame: np.ndarray, n_threads: int | None = None) -> np.ndarray:
    """The flat indices (uint32, ascending) of the NaN and ±inf values of one contiguous float
    ``frame`` (empty for integer dtypes)."""

def narrow_to_f32(src: np.ndarray, dst: np.ndarray, n_threads: int | None = None) -> int | None:
    """``src`` (float64) written into ``dst`` (float32, as many elements, both C-contiguous)
    where every finite value is exactly a float32: the NaN and ±inf count; else None (``dst``
    partly written)."""

def copy_bytes(dst: np.ndarray, src: np.ndarray, n_threads: int | None = None) -> None:
    """Copy the bytes of ``src`` into ``dst`` (1-D contiguous uint8 arrays of equal length) on
    ``n_threads`` threads (default: all cores) with the GIL released."""

def fit_plan(
    x: np.ndarray, positions: Sequence[float], roi_padding: int = 20, max_peaks_per_job: int = 32
) -> dict[str, Any]:
    """The fitting jobs of ``positions`` on axis ``x`` with a fixed ROI padding (the plan the CPU
    fitter uses), flattened for the GPU fitter.

    Returns a dict: ``bin`` (axis bin size), ``job_lo``, ``job_hi`` u32 ``(n_jobs,)`` (inclusive
    ROI bin range), ``peak_start`` u32 ``(n_jobs + 1,)`` (job j's peaks are
    ``peak_start[j]..peak_start[j+1]``), ``peak_slot``, ``peak_index``, ``peak_lo``, ``peak_hi``
    u32 ``(n_planned,)`` (position index, snapped bin, the peak's own inclusive ROI bin range).
    Positions in no job are out of range."""

def fit_peaks(
    x: np.ndarray,
    ys: np.ndarray,
    positions: Sequence[float],
    roi_padding: int = 20,
    auto_roi: bool = False,
    max_iterations: int = 500,
    max_peaks_per_job: int = 32,
    n_threads: int | None = None,
    bin_average: bool = True,
) -> dict[str, Any]:
    """Fit peaks at ``positions`` (x units) in every row of ``ys`` ``(n_curves, n_x)`` float64.

    Returns a dict: ``values``, ``errors`` ``(n_curves, n_peaks, 7)`` (MIDAS fit.bin rows; NaN
    unless converged), ``status`` u8 and ``iterations`` u32 ``(n_curves, n_peaks)``."""

def fit_auto(
    x: np.ndarray,
    ys: np.ndarray,
    max_peaks: int,
    snip_iterations: int = 50,
    roi_padding: int = 20,
    auto_roi: bool = False,
    max_iterations: int = 500,
    n_threads: int | None = None,
    bin_average: bool = True,
    bin_width_px: float = 0.0,
) -> dict[str, Any]:
    """Detect and fit up to ``max_peaks`` peaks in every row of ``ys`` ``(n_curves, n_x)``.

    Returns a dict: ``values``, ``errors`` ``(n_curves, max_peaks, 7)`` padded with NaN rows
    after the ``counts[i]`` kept peaks (ordered by centre), ``status`` (255 on padding),
    ``iterations``, ``counts`` u32 ``(n_curves,)`` and the subtracted SNIP ``background``
    ``(n_curves, n_x)``. ``bin_width_px``: the radial bins' width in detector pixels (0:
    unknown, taken as a pixel or more; bins of a quarter pixel or less are detected on
    half-pixel averages)."""

def snip_background(y: np.ndarray, iterations: int = 50) -> np.ndarray:
    """SNIP background (spec §6.3) of one lineout ``(n_x,)`` float64; non-finite bins are filled
    linearly from their finite neighbours first (all non-finite: 0)."""

def fit_pv(
    x: np.ndarray,
    ys: np.ndarray,
    centers: np.ndarray,
    max_iterations: int = 500,
    n_threads: int | None = None,
    bounds: str = "radint",
) -> dict[str, Any]:
    """Height-normalised pV fits (spec §6.4) of every row of ``ys`` ``(n_curves, n_x)``, row i
    started at ``centers[i]`` (x units); e.g. the rows of a cake for per-η fits. ``bounds``:
    ``"radint"`` or ``"midas"`` (IntegratorZarrOMP's box and start).

    Returns a dict: ``params``, ``std_errors`` ``(n_curves, 5)`` as ``[bg, imax, center, fwhm,
    mu]`` (NaN unless converged), ``snr`` ``(n_curves,)`` and ``status`` u8 ``(n_curves,)``."""

def fit_status_names() -> list[tuple[int, str]]:
    """Names of the status codes, as ``(code, name)`` pairs (255: no peak in this slot)."""
