"""CUDA integration backend: CuPy raw kernels on the Rust-built detector map.

CuPy is imported lazily, so ``import radint`` (and ``import radint.gpu``) work without it; the
backend needs the GPU extra, ``pip install 'radint[gpu]'``, and an NVIDIA GPU with a working
driver. The kernels live in ``kernels/integrate.cu``; their arithmetic is in
``kernels/integrate.cuh``, which the CPU test suite also compiles with the host C++ compiler and
checks against the Rust engine.

Copies that remain (everything else is zero-copy):

* **Map, once per** :class:`CudaIntegrator`: ``indptr``, ``pixel``, ``area``, ``weight``,
  ``mask_hit`` (numpy views of Rust memory or of the mapped map cache, no host copy) and the
  per-pixel scale go host → device once through ``cupy.asarray``.
* **Frames, per call**: a frame already in page-locked memory (``Integrator.host_buffer``, which
  ``radint stream`` receives into) goes host → device by DMA straight from there. Any other numpy
  frame is first copied into a pinned buffer — pageable memory cannot be DMA'd asynchronously —
  by all cores (``_core.copy_bytes``), in chunks, each chunk's DMA starting while the next one
  is copied. Passes of ``MAX_NB`` frames rotate over several CUDA streams, so one pass's upload
  overlaps the previous pass's kernels. CuPy (device) frames are used in place, no copy at all.
* **Dark / variance, per call**: host → device (one frame's worth of float64 each), when given.
* **Results**: :meth:`CudaIntegrator.integrate_device` leaves them on the device (CuPy arrays);
  :meth:`CudaIntegrator.integrate` copies the arrays asked for device → host straight into
  pinned host arrays (from CuPy's pinned memory pool, returned to it when the caller drops them),
  each pass's share as soon as its kernels finish, overlapping the next pass.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from radint.exceptions import (
    BackendUnavailableError,
    DtypeError,
    InvalidInputError,
    ShapeError,
)

__all__ = [
    "FRAME_DTYPES",
    "KERNEL_DIR",
    "CudaIntegrator",
    "compile_ptx",
    "cuda_available",
    "cupy_nvrtc_options",
    "kernel_source",
]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'radint[gpu]' (CUDA 12) or 'radint[gpu-cuda13]' (CUDA 13)"
KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
#: Frame dtypes with a kernel, by the suffix of its name.
FRAME_DTYPES = {
    np.dtype(np.uint8): "u8",
    np.dtype(np.uint16): "u16",
    np.dtype(np.uint32): "u32",
    np.dtype(np.int32): "i32",
    np.dtype(np.int64): "i64",
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
}
#: Frames per pass: one pinned staging buffer, one CSR launch reading the map once
#: (RI_MAX_NB in the header).
MAX_NB = 8
#: Passes of at least this many frames are interleaved pixel by pixel on the device and
#: integrated with the frames in lanes (``ri_csr_lanes_*``: a bin's map entries loaded once for
#: all its frames, a pixel's values of every frame in one or two 32-byte sectors); smaller ones
#: by the lane-split kernel (``ri_csr_*``, 8 lanes a bin), which keeps more threads busy when
#: there are few frames. ``benches/gpu.py`` times both.
LANES_MIN_FRAMES = 4
#: ... and only when the pass's (bin, frame) threads fill every SM at least once: warps of
#: ``ri_csr_lanes_*`` an SM holds (float64 sums on sm_90: 128 registers, blocks of 64 threads;
#: float32 sums hold 20-24, so there the test asks a little more than one wave). A map of few,
#: long bins (a 1-D integration: one η bin per radius) would otherwise leave most of the GPU
#: idle, each thread summing thousands of entries, where the lane split has 8 threads a bin.
LANES_WARPS_PER_SM = 16
#: Threads per block of every integration kernel (8 warps); must be a multiple of 32.
CSR_BLOCK = 256
#: Threads per block of the frames-in-lanes CSR kernel (RI_LANES_BLOCK in integrate.cu).
LANES_BLOCK = 64
#: Lanes per bin in the CSR kernels (RI_BIN_LANES in the header).
BIN_LANES = 8
#: Lanes per radial row in the cross-term and lineout kernels (a warp).
ROW_LANES = 32
#: Frame bytes staged (copied into pinned memory, then DMA'd) per step: the copy of one piece
#: overlaps the DMA of the one before (and passes on other streams). Large on purpose: each copy wakes the rayon pool, ~0.1 ms
#: and more (on the H200 machine 4 MiB chunks copied at ~14 GB/s in the pipeline, one 10 MB
#: call at 40-76 GB/s, one 80 MB call at 116-140 GB/s).
STAGE_CHUNK_BYTES = 64 << 20
#: Result arrays :meth:`CudaIntegrator.integrate` downloads by default.
HOST_KEYS = ("signal", "area", "count", "variance", "cake", "cake_sigma", "lineout",
             "lineout_sigma")  # fmt: skip
_RULES = {None: 0, "radint": 0, "midas-cpu": 1, "midas-gpu": 2}
_LINEOUT = {"area_weighted": 0, "midas_nonzero_mean": 1}
# No fused multiply-adds: the kernels then round as the host harness that checks their
# arithmetic does (the CSR kernels are memory-bound, so it costs nothing measurable there).
# CuPy adds its own to these (cupy_nvrtc_options), -ftz=true among them.
_NVRTC_OPTIONS = ("-std=c++17", "--fmad=false")
#: What CuPy appends to every NVRTC compile of a RawModule (cupy/cuda/compiler.py), after the
#: options it is given: a later -ftz wins, so float32 subnormals are flushed on the device.
_CUPY_APPENDS = ("--device-as-default-execution-space", "-ftz=true")


def _out_of_memory(error: BaseException) -> bool:
    """Whether a CuPy error says the device is out of memory (the driver's
    CUDA_ERROR_OUT_OF_MEMORY, the runtime's cudaErrorMemoryAllocation, or the pool's own)."""
    text = f"{type(error).__name__} {error}"
    return any(k in text for k in ("OutOfMemory", "OUT_OF_MEMORY", "MemoryAllocation"))


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as e:
        raise BackendUnavailableError(f"the CUDA backend needs CuPy ({INSTALL_HINT}): {e}") from e
    return cupy


def cuda_available() -> tuple[bool, str]:
    """Whether the CUDA backend can run here.

    Returns
    -------
    (ok, reason) : (bool, str)
        ``reason`` names the device when ``ok``, else says what is missing (CuPy, driver,
        device) and how to install the extra.
    """
    try:
        import cupy
    except ImportError as e:
        return False, f"CuPy is not installed ({e}); install it with {INSTALL_HINT}"
    except Exception as e:  # a broken CuPy install raises all sorts of things on import
        return False, f"CuPy failed to import ({type(e).__name__}: {e}); reinstall {INSTALL_HINT}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, (
            f"no usable CUDA driver/runtime ({type(e).__name__}: {e}); needs an NVIDIA GPU with "
            f"a driver matching CuPy's CUDA version ({INSTALL_HINT})"
        )
    if n < 1:
        return False, f"no CUDA device found ({INSTALL_HINT} and an NVIDIA GPU are needed)"
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception as e:
        return False, f"CUDA device unusable ({type(e).__name__}: {e})"
    return True, f"CUDA device {name}"


def kernel_source(name: str = "integrate") -> str:
    """Source of ``kernels/<name>.cu`` with its ``#include "<name>.cuh"`` inlined, so NVRTC needs
    no include path and the module cache key covers the header too.

    Parameters
    ----------
    name : str
        Kernel file stem in :data:`KERNEL_DIR`: ``"integrate"`` (default) or ``"fit"``.

    Returns
    -------
    str
        The CUDA C++ source, header inlined.

    Raises
    ------
    RuntimeError
        ``<name>.cu`` does not contain ``#include "<name>.cuh"``.
    """
    cu = (KERNEL_DIR / f"{name}.cu").read_text()
    cuh = (KERNEL_DIR / f"{name}.cuh").read_text()
    include = f'#include "{name}.cuh"'
    if include not in cu:
        raise RuntimeError(f"{name}.cu does not include {name}.cuh")
    return cu.replace(include, cuh)


def cupy_nvrtc_options() -> tuple[str, ...]:
    """The NVRTC options CuPy compiles radint's kernels with, except the architecture.

    radint's own options, CuPy's include paths (its CCCL headers and, from CuPy 14, the CUDA
    runtime headers, without which CuPy compiles no kernel) and the flags CuPy appends.

    Returns
    -------
    tuple of str
        The options, as ``cupy.RawModule`` hands them to NVRTC on a GPU.

    Raises
    ------
    BackendUnavailableError
        CuPy is not installed, NVRTC cannot be loaded, or CuPy finds no CUDA headers (the
        ``nvidia-cuda-runtime`` wheel of the ``gpu`` extras, or a CUDA toolkit).
    """
    _import_cupy()
    _preload_nvrtc()  # CuPy asks NVRTC its version while it assembles the options
    try:
        from cupy._core.core import assemble_cupy_compiler_options
    except ImportError:  # older CuPy: it adds its include path when it compiles
        return (*_NVRTC_OPTIONS, *_CUPY_APPENDS)
    try:
        options = tuple(assemble_cupy_compiler_options(_NVRTC_OPTIONS))
    except RuntimeError as e:
        if "header" not in str(e).lower():
            raise BackendUnavailableError(
                f"CuPy cannot prepare a kernel compile ({e}); NVRTC comes with {INSTALL_HINT}"
            ) from e
        raise BackendUnavailableError(
            f"CuPy finds no CUDA headers to compile the kernels with ({e}); " + _headers_hint()
        ) from e
    return (*options, *_CUPY_APPENDS)


def _headers_hint() -> str:
    """What to do about missing CUDA headers: where the wheel lies when Python can import it
    but CuPy does not look there (an environment layered through .pth files), else what to
    install."""
    # nvidia-cuda-runtime-cu12: nvidia/cuda_runtime/include; nvidia-cuda-runtime 13: cu13.
    for folder in _wheel_folders((("nvidia.cuda_runtime", "include"), ("nvidia", "cu13/include"))):
        if (folder / "cuda_runtime.h").is_file():
            return (
                f"the nvidia-cuda-runtime wheel is installed at {folder.parent} but CuPy does "
                "not look there: set CUDA_PATH to that folder"
            )
    return f"{INSTALL_HINT} brings them (the nvidia-cuda-runtime wheel), or set CUDA_PATH to a CUDA toolkit"


def compile_ptx(name: str = "integrate", arch: str = "compute_80") -> str:
    """Compile ``kernels/<name>.cu`` to PTX with NVRTC, without a GPU or driver.

    Uses CuPy's NVRTC binding directly (``cupy.cuda.compiler`` asks the driver for the device's
    architecture first, which fails on machines without a GPU), with the options CuPy would
    use (:func:`cupy_nvrtc_options`), so a kernel that compiles here compiles on a GPU.

    Parameters
    ----------
    name : str
        Kernel file stem, as :func:`kernel_source`: ``"integrate"`` (default) or ``"fit"``.
    arch : str
        NVRTC virtual architecture (``-arch=``), default ``"compute_80"``.

    Returns
    -------
    str
        The PTX text.

    Raises
    ------
    BackendUnavailableError
        CuPy is not installed, finds no CUDA headers, or NVRTC cannot be loaded.
    RuntimeError
        NVRTC failed to compile (the message holds its log).
    """
    options = cupy_nvrtc_options()
    from cupy_backends.cuda.libs import nvrtc

    try:
        prog = nvrtc.createProgram(kernel_source(name), f"{name}.cu", [], [])
    except Exception as e:  # the NVRTC shared library itself could not be found or loaded
        raise BackendUnavailableError(
            f"NVRTC is not loadable ({type(e).__name__}: {e}); install a CUDA toolkit or the "
            "NVRTC wheel (pip install nvidia-cuda-nvrtc-cu12)"
        ) from e
    try:
        try:
            nvrtc.compileProgram(prog, [f"-arch={arch}", *options])
        except nvrtc.NVRTCError as e:
            raise RuntimeError(
                f"NVRTC failed on {name}.cu: {e}\n{nvrtc.getProgramLog(prog)}"
            ) from e
        ptx = nvrtc.getPTX(prog)
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(prog)


@functools.lru_cache(maxsize=1)
def _preload_nvrtc() -> str | None:
    """Load ``libnvrtc`` from the ``nvidia-cuda-nvrtc`` wheel if Python can import it.

    CuPy's library finder looks in the interpreter's own site-packages; in a virtual environment
    that reaches its packages through a ``.pth`` path (or a similar layering) it misses the wheel
    and NVRTC fails to load although it is installed. Loading it once with ``RTLD_GLOBAL`` makes
    the later lookup by soname succeed. Only the NVRTC of CuPy's own CUDA major is loaded: CuPy
    takes an NVRTC already loaded over the one it would find (a CUDA 12 wheel, which torch
    brings, would otherwise compile a CUDA 13 CuPy's kernels against CUDA 13 headers). Returns
    the path loaded, or None (nothing to do).
    """
    # nvidia-cuda-nvrtc-cu12: nvidia/cuda_nvrtc/lib; nvidia-cuda-nvrtc 13: nvidia/cu13/lib.
    folders = _wheel_folders((("nvidia.cuda_nvrtc", "lib"), ("nvidia", "cu13/lib")))
    libs = [lib for folder in folders for lib in sorted(folder.glob("libnvrtc.so.*"))]
    for lib in _of_cuda_major(libs, _cupy_cuda_major()):
        try:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            return str(lib)
        except OSError:
            continue
    return None


def _wheel_folders(places: tuple[tuple[str, str], ...]) -> list[Path]:
    """The folders ``sub`` of the packages ``module`` Python can import, for each
    ``(module, sub)`` of ``places`` (the NVIDIA wheels' layouts)."""
    import importlib.util

    folders = []
    for module, sub in places:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):  # no nvidia namespace package at all
            continue
        for loc in (spec.submodule_search_locations or []) if spec else []:
            folders.append(Path(loc, sub))
    return folders


def _of_cuda_major(libs: list[Path], major: int | None) -> list[Path]:
    """The ``libnvrtc.so.<major>[.minor…]`` among ``libs`` (all of them where major is None)."""
    return [lib for lib in libs if major is None or lib.name.split(".")[2:3] == [str(major)]]


def _cupy_cuda_major() -> int | None:
    """The CUDA major version CuPy was built for (no GPU needed); None where CuPy does not say."""
    try:
        from cupy_backends.cuda.api import runtime

        return int(runtime._getCUDAMajorVersion())
    except Exception:  # another CuPy layout: keep the first NVRTC found
        return None


@functools.lru_cache(maxsize=8)
def _module(device_id: int, name: str = "integrate") -> Any:
    """The RawModule of ``kernels/<name>.cu`` for one device, compiled once per process (and
    cached on disk by CuPy)."""
    cupy = _import_cupy()
    cupy_nvrtc_options()  # NVRTC loaded; no CUDA headers: say what brings them, before CuPy does
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=kernel_source(name), options=_NVRTC_OPTIONS)


_BIN_KEYS = ("signal", "area", "count", "variance", "cake", "cake_sigma")


def _opt(a: Any) -> Any:
    """A device array, or a null device pointer for ``None``: CuPy passes numpy scalars by
    value, and a uint64 0 has the size and value of a null pointer."""
    return np.uint64(0) if a is None else a


def _upload(cupy: Any, a: np.ndarray | None, dtype: Any, what: str) -> Any:
    """One host → device copy of a contiguous array of the expected dtype (no host copy)."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype != np.dtype(dtype) or not a.flags.c_contiguous:
        raise DtypeError(
            f"{what}: expected a C-contiguous {np.dtype(dtype)} array, got {a.dtype} "
            f"(contiguous: {a.flags.c_contiguous})"
        )
    return cupy.asarray(a.ravel())


class CudaIntegrator:
    """The CUDA engine behind ``Integrator(backend="cuda")``.

    Parameters
    ----------
    integrator : radint.Integrator
        Supplies the map (uploaded once), the per-pixel scale, and the integration options
        (precision, error model, rules, lineout mode, empty value, threads for staging).
    n_streams : int
        CUDA streams (each with its own pinned and device frame buffer) that blocks of frames
        rotate over, so host → device copies overlap kernels.
    """

    def __init__(self, integrator: Any, n_streams: int = 3) -> None:
        cupy = _import_cupy()
        ok, why = cuda_available()
        if not ok:
            raise BackendUnavailableError(f"the CUDA backend is not available: {why}")
        self._cp = cupy
        self.integrator = integrator
        m = integrator.map
        self.shape: tuple[int, int] = tuple(m.shape)
        self.n_pixels = self.shape[0] * self.shape[1]
        self.n_r, self.n_eta = int(m.n_r), int(m.n_eta)
        self.n_bins = self.n_r * self.n_eta
        self.device_id = cupy.cuda.Device().id
        sm_count = int(cupy.cuda.Device(self.device_id).attributes["MultiProcessorCount"])
        self._resident_lane_threads = sm_count * LANES_WARPS_PER_SM * 32
        # Map: numpy views of Rust memory straight to cupy.asarray, one H→D copy each.
        self.indptr = _upload(cupy, m.indptr, np.uint64, "map indptr")
        self.pixel = _upload(cupy, m.pixel, np.uint32, "map pixel")
        self.area = _upload(cupy, m.area, np.float32, "map area")
        self.weight = _upload(cupy, m.weight, np.float64, "map weight")
        self.mask_hit = _upload(cupy, m.mask_hit, np.uint8, "map mask_hit")
        self.scale = _upload(cupy, integrator._scale, np.float64, "per-pixel scale")
        self._eta_cross: tuple[Any, Any, Any] | None = None  # uploaded when a sigma is asked
        self._own_dark_d: Any = None  # the integrator's own dark on the device (first use)
        self._mod = _module(self.device_id)
        self._kernels: dict[str, Any] = {}
        # The uploads above are asynchronous on the current stream, which the non-blocking
        # worker streams do not wait for.
        cupy.cuda.get_current_stream().synchronize()
        # CuPy staged each upload through page-locked memory of its size, which its pinned pool
        # keeps (hundreds of MB for a large map): hand it back to the system. (CuPy 14 first
        # returns the staging blocks whose copies are done to the pool, then frees them.)
        cupy.get_default_pinned_memory_pool().free_all_blocks()
        self._streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(max(1, n_streams))]
        # Per stream: (pinned host buffer, device buffer, event after its H→D copy), grown on use.
        self._buffers: list[tuple[np.ndarray, Any, Any] | None] = [None] * len(self._streams)
        # Per stream: a pass's frames interleaved pixel by pixel (ri_interleave_*), made on use.
        self._interleaved: list[Any] = [None] * len(self._streams)
        # Once the device had no room for an interleaved buffer, passes keep the lane split
        # (trying again every pass would cost CuPy's pool a purge and a GC each time).
        self._no_room_to_interleave = False
        # Benchmarks set a list here to get (start, stop) CUDA events around each pass's kernels.
        self._pass_events: list[tuple[Any, Any]] | None = None
        # Calls from several threads take turns: they would stage into the same buffers (two
        # threads on one Integrator got each other's frames, with no error).
        self._lock = threading.Lock()

    # -------------------------------------------------------------- launch helpers
    def _cross_arrays(self) -> tuple[Any, Any, Any]:
        """The map's pixels shared between η bins of a radial row and their covariance weights
        (``MapCore.eta_cross``), on the device: built and uploaded on first use."""
        if self._eta_cross is None:
            cp = self._cp
            indptr, pixel, weight = self.integrator.map._core.eta_cross(self.integrator.n_threads)
            self._eta_cross = tuple(cp.asarray(a) for a in (indptr, pixel, weight))
            cp.cuda.get_current_stream().synchronize()  # the worker streams do not wait for it
        return self._eta_cross

    def _kernel(self, name: str) -> Any:
        # Looked up once: get_function builds a new RawKernel on every call.
        kernel = self._kernels.get(name)
        if kernel is None:
            kernel = self._kernels[name] = self._mod.get_function(name)
        return kernel

    def warm_up(self) -> None:
        """Compile the module and look up every kernel now (NVRTC takes seconds the first time
        on a machine; a stream's first frames should not wait for it)."""
        for dtype in FRAME_DTYPES.values():
            self._kernel(f"ri_cross_{dtype}")
            self._kernel(f"ri_spread_{dtype}")
            self._kernel(f"ri_interleave_{dtype}")
            for acc in ("f64", "f32"):
                self._kernel(f"ri_csr_{dtype}_{acc}")
                self._kernel(f"ri_csr_lanes_{dtype}_{acc}")
        self._kernel("ri_lineout")

    def _frame_buffers(self, k: int, dtype: np.dtype) -> tuple[np.ndarray, Any, Any]:
        import cupyx

        cp = self._cp
        n = MAX_NB * self.n_pixels
        buf = self._buffers[k]
        if buf is None or buf[0].dtype != dtype:
            buf = (cupyx.empty_pinned((n,), dtype=dtype), cp.empty((n,), dtype=dtype), None)
            self._buffers[k] = buf
        return buf

    def _lanes_buffer(self, k: int, nb: int, dtype: np.dtype) -> Any:
        """Stream k's device buffer for a pass of nb frames interleaved pixel by pixel
        (MAX_NB values a pixel), or None where the pass goes to the lane-split kernel, which
        reads the frames where they lie (same results, bit for bit): too few frames, too little
        work to fill the GPU (:data:`LANES_WARPS_PER_SM`), or no room on the device for the
        buffer (then for the rest of this object's life, with one warning)."""
        if nb < LANES_MIN_FRAMES or self._no_room_to_interleave:
            return None
        if self.n_bins * nb < self._resident_lane_threads:
            return None
        buf = self._interleaved[k]
        if buf is not None and buf.dtype == dtype:
            return buf
        self._interleaved[k] = None  # another dtype's buffer goes back to the pool first
        for attempt in range(2):
            try:
                buf = self._interleaved[k] = self._cp.empty(MAX_NB * self.n_pixels, dtype=dtype)
                return buf
            except Exception as e:  # CuPy's pool raises its own OutOfMemoryError
                if not _out_of_memory(e):
                    raise
                if attempt == 0:
                    self._cp.get_default_memory_pool().free_all_blocks()
                    continue
                log.warning(
                    "GPU %d has no room to interleave a pass of frames (%.0f MB); integrating "
                    "passes with the lane-split kernel from now on (%s)",
                    self.device_id, MAX_NB * self.n_pixels * dtype.itemsize / 1e6, e,
                )  # fmt: skip
                self._no_room_to_interleave = True
                # Other streams' interleaved buffers will not be used again either.
                self._interleaved = [None] * len(self._streams)
        return None

    def _check_frames(self, frames: Any) -> tuple[Any, int, bool, np.dtype]:
        """(frames, n, on_device, dtype): device frames as one flat CuPy array; host frames as a
        list of flat blocks of whole frames, one per contiguous input array (a list of
        separately received frames is staged frame by frame, never stacked into one host array
        first)."""
        if isinstance(frames, (list, tuple)):
            if not frames:
                raise ShapeError("frames: an empty list")
            # Each one's dtype and shape; device frames are concatenated (copied) anyway, so
            # views need not be contiguous.
            parts = [
                self._check_frames(
                    self._cp.ascontiguousarray(self._device_array(f, "frames"))
                    if hasattr(f, "__cuda_array_interface__")
                    else f
                )
                for f in frames
            ]
            if len({p[2] for p in parts}) > 1:
                raise DtypeError(
                    "frames: a list holds host (numpy) and device (CuPy) frames; pass one kind"
                )
            dtypes = {p[3] for p in parts}
            if len(dtypes) > 1:
                raise DtypeError(
                    f"frames: a list must hold frames of one dtype, got "
                    f"{sorted(str(d) for d in dtypes)}"
                )
            n = sum(p[1] for p in parts)
            if parts[0][2]:  # device frames: one device copy into one array
                return self._cp.concatenate([p[0] for p in parts]), n, True, parts[0][3]
            return [v for p in parts for v in p[0]], n, False, parts[0][3]
        on_device = hasattr(frames, "__cuda_array_interface__")
        a = self._device_array(frames, "frames") if on_device else np.asarray(frames)
        dtype = np.dtype(a.dtype)
        if dtype not in FRAME_DTYPES:
            raise DtypeError(
                f"frames: CUDA kernels take {sorted(str(d) for d in FRAME_DTYPES)}, got {a.dtype}"
            )
        if a.ndim not in (2, 3) or tuple(a.shape[-2:]) != self.shape:
            raise ShapeError(
                f"frames: expected shape {self.shape} or (n_frames, *{self.shape}), got {a.shape}"
            )
        if not a.flags.c_contiguous:
            raise ShapeError("frames: expected a C-contiguous array")
        n = 1 if a.ndim == 2 else int(a.shape[0])
        flat = a.reshape(n * self.n_pixels)
        return (flat if on_device else [flat]), n, on_device, dtype

    def _pass_blocks(self, blocks: list[np.ndarray], f0: int, nb: int) -> list[np.ndarray]:
        """The parts of host ``blocks`` (flat, whole frames each) holding frames f0 .. f0+nb-1."""
        out, start = [], 0  # start: index of the block's first frame
        for block in blocks:
            n_frames = block.size // self.n_pixels
            lo, hi = max(f0, start), min(f0 + nb, start + n_frames)
            if lo < hi:
                out.append(block[(lo - start) * self.n_pixels : (hi - start) * self.n_pixels])
            start += n_frames
            if start >= f0 + nb:
                break
        return out

    def _device_array(self, a: Any, what: str) -> Any:
        """Device array ``a`` as a CuPy array (a torch or Numba array becomes a view, no copy),
        refused when it lies on another GPU than the map (the kernels would read foreign
        memory)."""
        if not isinstance(a, self._cp.ndarray):
            a = self._cp.asarray(a)
        device = getattr(getattr(a, "device", None), "id", self.device_id)
        if device != self.device_id:
            raise InvalidInputError(
                f"{what}: on GPU {device}, but this Integrator's map is on GPU {self.device_id}; "
                f"move it (cupy.asarray under cupy.cuda.Device({self.device_id})) or build the "
                "Integrator under that device"
            )
        return a

    def _per_pixel(self, v: Any, what: str) -> Any:
        if v is None:
            return None
        a = self._device_array(v, what) if hasattr(v, "__cuda_array_interface__") else np.asarray(v)
        if a.dtype != np.float64 or a.size != self.n_pixels or not a.flags.c_contiguous:
            raise ShapeError(
                f"{what}: expected {self.n_pixels} contiguous float64 values, got "
                f"{a.size} {a.dtype}"
            )
        own = getattr(self.integrator, "_dark", None)
        if own is not None and a is own:
            # The integrator's own dark (read-only, never changes): uploaded once, not with
            # every call (an Eiger 4M float64 dark is 36 MB of pageable copy).
            if self._own_dark_d is None:
                self._own_dark_d = self._cp.asarray(own.reshape(-1))
            return self._own_dark_d
        return self._cp.asarray(a.reshape(-1))  # H→D once per call (no copy if on device)

    # -------------------------------------------------------------- integration
    def integrate_device(
        self, frames: Any, dark: Any = None, variance: Any = None
    ) -> dict[str, Any]:
        """Integrate frames ``(n_z, n_y)``, ``(n_frames, n_z, n_y)`` or a list of frames (numpy
        or CuPy) of one dtype; results stay on the device (CuPy arrays, flat, frame-major; per-bin sums in bin order ``r·n_eta + e``, cake
        and cake sigma η-major, ``e·n_r + r``, as the CPU engine returns them).

        Parameters
        ----------
        frames : ndarray or CuPy array or list of them
            Detector frames of shape ``(n_z, n_y)`` (the map's shape) or ``(n_frames, n_z,
            n_y)``, C-contiguous, of one of the :data:`FRAME_DTYPES`; a list holds such
            arrays, all host (numpy) or all device, of one dtype. Device arrays must be on the
            map's GPU: one is read in place, a list of them is concatenated on the device
            (its members need not be contiguous there). Work queued on the calling thread's
            current stream (the frames' upload or the kernel that wrote them) finishes before
            they are read; work on another of the caller's streams must be synchronised first.
        dark : ndarray or CuPy array, optional
            Per-pixel dark, ``n_z · n_y`` C-contiguous float64 values (flat or ``(n_z, n_y)``)
            in the frames' units, subtracted from every frame. Default None: none.
        variance : ndarray or CuPy array, optional
            Per-pixel variance of every frame, ``n_z · n_y`` contiguous float64 values, used
            in place of the Integrator's ``error_model``. Default None: Poisson variances when
            the Integrator's ``error_model`` is ``"poisson"``, else no variance.

        Returns
        -------
        dict
            ``n_frames`` (int) and CuPy arrays ``signal``, ``area``, ``count`` (uint32),
            ``cake`` (``n_frames · n_r · n_eta`` each) and ``lineout`` (``n_frames · n_r``);
            with a variance (given or Poisson) also ``variance``, ``cake_sigma`` and
            ``lineout_sigma``.

        Raises
        ------
        ShapeError
            Frames of the wrong shape, not C-contiguous, an empty list; ``dark`` or
            ``variance`` not ``n_z · n_y`` contiguous float64 values.
        DtypeError
            Frames of a dtype without a kernel, a list mixing dtypes or host and device frames.
        InvalidInputError
            A device array on another GPU than the map.
        """
        return self.run(frames, dark, variance, host_keys=())[0]

    def integrate(
        self, frames: Any, dark: Any = None, variance: Any = None,
        keys: tuple[str, ...] = HOST_KEYS,
    ) -> dict[str, Any]:  # fmt: skip
        """As :meth:`integrate_device`, with the results in ``keys`` (those present) copied to
        host numpy arrays: the dict ``radint._core.integrate`` returns (``n_frames``,
        ``signal``, ``area``, ``count``, [``variance``, ``cake_sigma``, ``lineout_sigma``],
        ``cake``, ``lineout``), restricted to ``keys``.

        Parameters
        ----------
        frames, dark, variance
            As in :meth:`integrate_device`.
        keys : tuple of str
            Result arrays to copy to the host; default :data:`HOST_KEYS` (all of them). Keys
            the call does not produce (the variance arrays without a variance) are left out.

        Returns
        -------
        dict
            ``n_frames`` (int) and the arrays of ``keys`` that exist, as pinned host numpy
            arrays, flat in the layout of :meth:`integrate_device`.

        Raises
        ------
        ShapeError, DtypeError, InvalidInputError
            As :meth:`integrate_device`.
        """
        return self.run(frames, dark, variance, host_keys=keys)[1]

    def run(
        self, frames: Any, dark: Any, variance: Any, host_keys: tuple[str, ...]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Integrate; return the device results and host copies of those in ``host_keys``
        (pinned numpy arrays, each pass downloaded as soon as its kernels finish). Both dicts
        hold ``n_frames``.

        Calls from several threads take turns (one lock per integrator); the work runs on this
        integrator's device whatever the calling thread's current one.

        Parameters
        ----------
        frames : ndarray or CuPy array or list of them
            As in :meth:`integrate_device`.
        dark, variance : ndarray or CuPy array or None
            As in :meth:`integrate_device` (no default here: pass None for none).
        host_keys : tuple of str
            Result arrays to copy to the host (those the call does not produce are left out);
            ``()`` for none.

        Returns
        -------
        (device, host) : (dict, dict)
            The device results as :meth:`integrate_device` returns them, and pinned numpy
            copies of those in ``host_keys``.

        Raises
        ------
        ShapeError, DtypeError, InvalidInputError
            As :meth:`integrate_device`.
        """
        # On this integrator's device whatever the calling thread's current one (its streams,
        # module and map live there).
        with self._lock, self._cp.cuda.Device(self.device_id):
            return self._run(frames, dark, variance, host_keys)

    def _run(
        self, frames: Any, dark: Any, variance: Any, host_keys: tuple[str, ...]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        import cupyx

        cp = self._cp
        it = self.integrator
        flat, n, on_device, dtype = self._check_frames(frames)
        dark_d = self._per_pixel(dark, "dark")
        var_d = self._per_pixel(variance, "variance")
        var_mode = 2 if var_d is not None else (1 if it.error_model == "poisson" else 0)
        # pyFAI's azimuthal error model: the CSR kernel sums no variance, ri_spread_* adds it.
        azimuthal = var_d is None and it.error_model == "azimuthal"
        acc = "f32" if it.precision == "float32" else "f64"
        total = n * self.n_bins
        # Every element is written by the kernels: no zeroing needed.
        out: dict[str, Any] = {
            "signal": cp.empty(total, dtype=np.float64),
            "area": cp.empty(total, dtype=np.float64),
            "count": cp.empty(total, dtype=np.uint32),
            "cake": cp.empty(total, dtype=np.float64),
            "lineout": cp.empty(n * self.n_r, dtype=np.float64),
        }
        if var_mode or azimuthal:
            out["variance"] = cp.empty(total, dtype=np.float64)
            out["cake_sigma"] = cp.empty(total, dtype=np.float64)
            out["lineout_sigma"] = cp.empty(n * self.n_r, dtype=np.float64)
        host = {
            key: cupyx.empty_pinned(out[key].shape, dtype=out[key].dtype)
            for key in host_keys
            if key in out
        }
        if n > 0 and self.n_bins > 0:
            fin = (
                np.int32(_RULES[it.compat]),
                np.int32(it.normalize),
                np.int32(_LINEOUT[it.lineout_mode]),
                np.int32(0),
                np.float64(it.empty_value),
            )
            # What the caller's stream holds so far (dark and variance uploads, whatever
            # produced a device frame) must land before the worker streams read it:
            # non-blocking streams do not wait for the default stream by themselves.
            ready = cp.cuda.Event(block=False, disable_timing=True)
            ready.record()
            streams = self._streams[: -(-n // MAX_NB)]  # one pass per stream at most
            for s in streams:
                s.wait_event(ready)
            try:
                self._launch_passes(
                    streams, flat, n, on_device, dtype, dark_d, var_d, var_mode, azimuthal,
                    acc, fin, out, host,
                )  # fmt: skip
            finally:
                # Also after an error or an interrupt: nothing may still be copying into or
                # out of buffers the memory pools are about to hand out again.
                for s in streams:
                    s.synchronize()
        out["n_frames"] = n
        host["n_frames"] = n
        return out, host

    def _stage(self, k: int, dtype: np.dtype, blocks: list[np.ndarray], stream: Any) -> Any:
        """Copy host frames (``blocks``: flat, contiguous, whole frames each) into stream k's
        pinned buffer and on to its device buffer, chunk by chunk (all cores copy a chunk while
        the DMA of the previous one runs); page-locked blocks go by DMA as they are. Return the
        device buffer."""
        from radint import _core

        pinned, dev_buf, done = self._frame_buffers(k, dtype)
        if done is not None:
            done.synchronize()  # the previous H→D copy from this pinned buffer finished
        step = max(1, STAGE_CHUNK_BYTES // dtype.itemsize)
        size = dtype.itemsize
        pinned_bytes = pinned.view(np.uint8)
        base = 0  # elements of the pass staged so far
        for block in blocks:
            if self._page_locked(block):  # DMA straight from the caller's memory
                dev_buf[base : base + block.size].data.copy_from_host_async(
                    ctypes.c_void_p(block.ctypes.data), block.nbytes, stream
                )
                base += block.size
                continue
            src_bytes = block.view(np.uint8)
            for c0 in range(0, block.size, step):
                c1 = min(block.size, c0 + step)
                _core.copy_bytes(
                    pinned_bytes[(base + c0) * size : (base + c1) * size],
                    src_bytes[c0 * size : c1 * size],
                    n_threads=self.integrator.n_threads,  # -nCPUsLocal, as the CPU engine
                )
                dev_buf[base + c0 : base + c1].data.copy_from_host_async(
                    ctypes.c_void_p(pinned[base + c0 :].ctypes.data), (c1 - c0) * size, stream
                )
            base += block.size
        ev = self._cp.cuda.Event(block=False, disable_timing=True)
        ev.record(stream)
        self._buffers[k] = (pinned, dev_buf, ev)
        return dev_buf

    def _page_locked(self, a: np.ndarray) -> bool:
        """Whether ``a``'s memory is page-locked for CUDA (``Integrator.host_buffer``,
        ``cupyx.empty_pinned``, registered memory): the GPU can DMA it directly."""
        try:
            attrs = self._cp.cuda.runtime.pointerGetAttributes(a.ctypes.data)
        except Exception:  # pageable memory on drivers that answer with an error
            return False
        return int(attrs.type) == 1  # cudaMemoryTypeHost

    def _launch_passes(
        self, streams: list[Any], flat: Any, n: int, on_device: bool, dtype: np.dtype,
        dark_d: Any, var_d: Any, var_mode: int, azimuthal: bool, acc: str, fin: tuple,
        out: dict[str, Any], host: dict[str, np.ndarray],
    ) -> None:  # fmt: skip
        """Enqueue every pass of up to MAX_NB frames (upload, CSR + finalize, cross term or
        the azimuthal spread, lineout, downloads of ``host``'s arrays) on ``streams`` in turn;
        the caller synchronises them."""
        cp = self._cp
        lane_split_grid = (self.n_bins * BIN_LANES + CSR_BLOCK - 1) // CSR_BLOCK
        # Pixels shared between η bins add to every lineout's variance (rules as the Rust
        # finalize: ri_line_final scales or leaves it out per mode).
        use_cross = bool(var_mode) or azimuthal
        cross_arrays = self._cross_arrays() if use_cross else None
        for j, f0 in enumerate(range(0, n, MAX_NB)):
            nb = min(MAX_NB, n - f0)
            k = j % len(streams)
            stream = streams[k]
            if on_device:
                dev = flat[f0 * self.n_pixels : (f0 + nb) * self.n_pixels]
            else:
                dev = self._stage(k, dtype, self._pass_blocks(flat, f0, nb), stream)
            o0, o1 = f0 * self.n_bins, (f0 + nb) * self.n_bins
            r0, r1 = f0 * self.n_r, (f0 + nb) * self.n_r
            per_bin: dict[str, Any]
            per_row: dict[str, Any]
            if nb == n:  # one pass: the whole arrays (slicing costs microseconds per array)
                per_bin = {key: out[key] for key in _BIN_KEYS if key in out}
                per_row = {key: out[key] for key in ("lineout", "lineout_sigma") if key in out}
            else:
                per_bin = {key: out[key][o0:o1] for key in _BIN_KEYS if key in out}
                per_row = {
                    key: out[key][r0:r1] for key in ("lineout", "lineout_sigma") if key in out
                }
            suffix = FRAME_DTYPES[dtype]
            events = self._pass_events
            if events is not None:
                started = cp.cuda.Event()
                started.record(stream)
            with stream:
                csr_frames = self._lanes_buffer(k, nb, dtype)
                if csr_frames is not None:
                    self._kernel(f"ri_interleave_{suffix}")(
                        ((self.n_pixels + CSR_BLOCK - 1) // CSR_BLOCK,), (CSR_BLOCK,),
                        (dev, np.uint64(self.n_pixels), np.int32(nb), csr_frames),
                    )  # fmt: skip
                    name = f"ri_csr_lanes_{suffix}_{acc}"
                    # A thread per (bin, frame).
                    grid, block = (self.n_bins * nb + LANES_BLOCK - 1) // LANES_BLOCK, LANES_BLOCK
                else:
                    csr_frames, name = dev, f"ri_csr_{suffix}_{acc}"
                    grid, block = lane_split_grid * nb, CSR_BLOCK  # frames interleaved by block
                self._kernel(name)(
                    (grid,),
                    (block,),
                    (
                        self.indptr,
                        self.pixel,
                        self.area,
                        _opt(self.weight),
                        csr_frames,
                        np.uint64(self.n_pixels),
                        np.int32(nb),
                        np.uint64(self.n_bins),
                        np.int32(self.n_eta),
                        _opt(dark_d),
                        _opt(self.scale),
                        np.int32(var_mode),
                        _opt(var_d),
                        self.mask_hit,
                        *fin,
                        per_bin["signal"],
                        per_bin["area"],
                        _opt(None if azimuthal else per_bin.get("variance")),
                        per_bin["count"],
                        per_bin["cake"],
                        _opt(None if azimuthal else per_bin.get("cake_sigma")),
                    ),
                )
                rows = nb * self.n_r
                cross = None
                if azimuthal and cross_arrays is not None:
                    cross = cp.empty(rows, dtype=np.float64)
                    self._kernel(f"ri_spread_{suffix}")(
                        ((rows * ROW_LANES + CSR_BLOCK - 1) // CSR_BLOCK,), (CSR_BLOCK,),
                        (self.indptr, self.pixel, self.area, *cross_arrays, dev,
                         np.uint64(self.n_pixels), np.int32(self.n_eta), np.uint64(self.n_r),
                         np.uint64(rows), _opt(dark_d), _opt(self.scale), per_bin["signal"],
                         per_bin["area"], per_bin["count"], self.mask_hit, *fin,
                         per_bin["variance"], per_bin["cake_sigma"], cross),
                    )  # fmt: skip
                elif cross_arrays is not None:
                    cross = cp.empty(rows, dtype=np.float64)
                    self._kernel(f"ri_cross_{suffix}")(
                        ((rows * ROW_LANES + CSR_BLOCK - 1) // CSR_BLOCK,), (CSR_BLOCK,),
                        (*cross_arrays, dev, np.uint64(self.n_pixels), np.uint64(self.n_r),
                         np.uint64(rows), _opt(dark_d), _opt(self.scale), np.int32(var_mode),
                         _opt(var_d), cross),
                    )  # fmt: skip
                self._kernel("ri_lineout")(
                    ((rows * ROW_LANES + CSR_BLOCK - 1) // CSR_BLOCK,),
                    (CSR_BLOCK,),
                    (
                        per_bin["signal"],
                        per_bin["area"],
                        _opt(per_bin.get("variance")),
                        per_bin["count"],
                        self.mask_hit,
                        per_bin["cake"],
                        _opt(per_bin.get("cake_sigma")),
                        _opt(cross),
                        np.int32(self.n_eta),
                        np.uint64(self.n_r),
                        np.uint64(rows),
                        *fin,
                        per_row["lineout"],
                        _opt(per_row.get("lineout_sigma")),
                    ),
                )
            if events is not None:
                stopped = cp.cuda.Event()
                stopped.record(stream)
                events.append((started, stopped))
            for key, h in host.items():
                part = per_bin[key] if key in per_bin else per_row[key]
                lo = o0 if key in per_bin else r0
                part.data.copy_to_host_async(
                    ctypes.c_void_p(h[lo:].ctypes.data), part.nbytes, stream
                )

    def __repr__(self) -> str:
        return (
            f"CudaIntegrator(device={self.device_id}, bins={self.n_bins}, "
            f"entries={int(self.pixel.size)}, streams={len(self._streams)})"
        )
