"""A CPU stand-in for the part of CuPy that radint's CUDA backend uses, for tests only.

With this folder first on ``PYTHONPATH``, ``Integrator(backend="cuda")``, ``radint stream
--backend cuda`` and the ``gpu``-marked tests run their whole Python path (staging, passes over
streams, slicing, downloads, the fit launcher and its CPU fallback) on a machine without a GPU.
Kernel launches run the host harnesses (``tests/gpu_harness/*.cpp``), which compile the kernels'
own arithmetic headers (``integrate.cuh``, ``fit.cuh``) with g++; the kernels' thread indexing and
warp reductions are not exercised (NVRTC compiles them in another test; a GPU runs them).

Device arrays are a wrapper, not numpy arrays: as with CuPy, ``numpy.asarray`` of one raises
``TypeError``, so host/device mix-ups fail here as they would on a GPU. Everything is
synchronous; streams and events only record what they are given.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

__version__ = "0.0-fake"

float64, float32, uint8, uint32, uint64, int32 = (
    np.float64, np.float32, np.uint8, np.uint32, np.uint64, np.int32,
)  # fmt: skip
nan = np.nan

HARNESS_DIR = Path(__file__).resolve().parents[2]
KERNELS = HARNESS_DIR.parents[1] / "python" / "radint" / "gpu" / "kernels"
RI_MAX_NB = 8


class _Memory:
    """``ndarray.data``: the device pointer with CuPy's async copy methods."""

    def __init__(self, array: ndarray) -> None:
        self._a = array._a

    @property
    def ptr(self) -> int:
        return self._a.ctypes.data

    def copy_from_host_async(self, src: Any, nbytes: int, stream: Any = None) -> None:
        ctypes.memmove(self._a.ctypes.data, src, nbytes)

    def copy_to_host_async(self, dst: Any, nbytes: int, stream: Any = None) -> None:
        ctypes.memmove(dst, self._a.ctypes.data, nbytes)


class ndarray:  # CuPy's name
    """A device array: a numpy array that cannot be turned into a host array implicitly."""

    #: The GPU it lies on (a test may set another than 0).
    _device = 0

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    device = property(lambda self: Device(self._device))

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly."
        )

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "version": 3,
                "data": (self._a.ctypes.data, False), "strides": None}  # fmt: skip

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    data = property(lambda self: _Memory(self))

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, key: Any) -> ndarray:
        if isinstance(key, ndarray):
            key = key._a
        return ndarray(self._a[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, ndarray):
            key = key._a
        self._a[key] = value._a if isinstance(value, ndarray) else value

    def reshape(self, *shape: Any) -> ndarray:
        return ndarray(self._a.reshape(*shape))

    def ravel(self) -> ndarray:
        return ndarray(self._a.ravel())

    def astype(self, dtype: Any, copy: bool = True) -> ndarray:
        return ndarray(self._a.astype(dtype, copy=copy))

    def copy(self) -> ndarray:
        return ndarray(self._a.copy())

    def get(self) -> np.ndarray:
        return self._a.copy()

    def __repr__(self) -> str:
        return f"fake_cupy.ndarray({self._a!r})"


def _host(a: Any) -> np.ndarray:
    return a._a if isinstance(a, ndarray) else np.asarray(a)


def asarray(a: Any, dtype: Any = None) -> ndarray:
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    if hasattr(a, "__cuda_array_interface__"):  # another library's device array: a view
        iface = a.__cuda_array_interface__
        shape, dt = tuple(iface["shape"]), np.dtype(iface["typestr"])
        raw = (ctypes.c_char * (int(np.prod(shape)) * dt.itemsize)).from_address(iface["data"][0])
        view = ndarray(np.frombuffer(raw, dtype=dt).reshape(shape))
        return view if dtype is None else asarray(view, dtype)
    return ndarray(np.array(a, dtype=dtype, copy=True))


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    if isinstance(a, ndarray):
        return ndarray(np.ascontiguousarray(a._a, dtype=dtype))
    return ndarray(np.array(np.ascontiguousarray(a, dtype=dtype), copy=True))


def asnumpy(a: Any) -> np.ndarray:
    return a._a.copy() if isinstance(a, ndarray) else np.asarray(a)


def empty(shape: Any, dtype: Any = np.float64) -> ndarray:
    # Garbage, as on a device: a kernel that leaves an element unwritten is visible.
    a = np.empty(shape, dtype=dtype)
    a.view(np.uint8)[...] = 0xA5
    return ndarray(a)


def zeros(shape: Any, dtype: Any = np.float64) -> ndarray:
    return ndarray(np.zeros(shape, dtype=dtype))


def full(shape: Any, value: Any, dtype: Any = None) -> ndarray:
    return ndarray(np.full(shape, value, dtype=dtype))


def concatenate(arrays: list, axis: int = 0) -> ndarray:
    return ndarray(np.concatenate([_host(a) for a in arrays], axis=axis))


_PINNED: list[tuple[int, int, np.ndarray]] = []


def empty_pinned(shape: Any, dtype: Any = np.float64) -> np.ndarray:
    """``cupyx.empty_pinned``: a host array, remembered as page-locked."""
    a = np.empty(shape, dtype=dtype)
    _PINNED.append((a.ctypes.data, a.ctypes.data + a.nbytes, a))
    return a


# ----------------------------------------------------------------------------- cuda namespace
class Device:
    def __init__(self, device: int = 0) -> None:
        self.id = int(device)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class Stream:
    def __init__(self, non_blocking: bool = False) -> None:
        self.non_blocking = non_blocking

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def wait_event(self, event: Event) -> None:
        return None


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False) -> None:
        pass

    def record(self, stream: Stream | None = None) -> None:
        return None

    def synchronize(self) -> None:
        return None


class _Attributes:
    def __init__(self, kind: int) -> None:
        self.type = kind


def _pointer_attributes(ptr: int) -> _Attributes:
    pinned = any(lo <= ptr < hi for lo, hi, _ in _PINNED)
    return _Attributes(1 if pinned else 0)  # cudaMemoryTypeHost / unregistered


_runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1,
    getDeviceProperties=lambda device: {"name": b"radint fake CuPy (CPU harness)"},
    pointerGetAttributes=_pointer_attributes,
)
cuda = types.SimpleNamespace(
    Device=Device, Stream=Stream, Event=Event, runtime=_runtime,
    get_current_stream=lambda: Stream(),
)  # fmt: skip


class _MemoryPool:
    """CuPy's default device pool: counts the times its free blocks were handed back."""

    def __init__(self) -> None:
        self.freed = 0

    def free_all_blocks(self) -> None:
        self.freed += 1


_POOL = _MemoryPool()


def get_default_memory_pool() -> _MemoryPool:
    return _POOL


# ----------------------------------------------------------------------------- kernels
def _build(source: str) -> ctypes.CDLL:
    """g++ the harness once per process (cached by its sources' digest)."""
    cpp = HARNESS_DIR / source
    digest = hashlib.sha256()
    for p in (cpp, *sorted(KERNELS.glob("*.cuh"))):
        digest.update(p.read_bytes())
    cache = Path(os.environ.get("RADINT_FAKE_CUPY_CACHE", tempfile.gettempdir()))
    out = cache / f"radint-fake-cupy-{cpp.stem}-{digest.hexdigest()[:16]}.so"
    if not out.exists():
        gxx = shutil.which("g++")
        if gxx is None:
            raise RuntimeError("fake CuPy needs g++ to build the kernel harnesses")
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            [gxx, "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", f"-I{KERNELS}",
             str(cpp), "-o", str(tmp)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        os.replace(tmp, out)
    return ctypes.CDLL(str(out))


def _ptr(a: Any) -> ctypes.c_void_p | None:
    """A kernel pointer argument: a device array, or radint's null (numpy uint64 0)."""
    if isinstance(a, ndarray):
        return ctypes.c_void_p(a._a.ctypes.data)
    if isinstance(a, np.integer) and int(a) == 0:
        return None
    raise TypeError(f"kernel pointer argument: expected a device array, got {type(a).__name__}")


def _u64(v: Any) -> ctypes.c_uint64:
    return ctypes.c_uint64(int(v))


def _int(v: Any) -> ctypes.c_int:
    return ctypes.c_int(int(v))


def _dbl(v: Any) -> ctypes.c_double:
    return ctypes.c_double(float(v))


class RawModule:
    """``cupy.RawModule``: kernels by name, each run by its host harness."""

    def __init__(self, code: str = "", options: tuple = (), **kwargs: Any) -> None:
        self._fit = "rf_fit_jobs" in code
        self._lib = _build("fit_harness.cpp" if self._fit else "cuh_harness.cpp")

    def get_function(self, name: str) -> Any:
        if name == "rf_fit_jobs":
            return lambda grid, block, args: self._fit_jobs(args)
        if name.startswith("ri_csr_"):
            return lambda grid, block, args: self._csr(name[len("ri_csr_") :], args)
        if name.startswith("ri_cross_"):
            return lambda grid, block, args: self._cross(name[len("ri_cross_") :], args)
        if name == "ri_lineout":
            return lambda grid, block, args: self._lineout(args)
        raise AttributeError(f"fake CuPy: no kernel {name!r}")

    def _finalize(self, signal, area, variance, count, mask_hit, cross, n_frames, n_r, n_eta,
                  fin, cake, sigma, line, line_sigma) -> None:  # fmt: skip
        rules, normalize, lineout, nan_masked, empty_value = fin
        self._lib.ri_host_finalize(
            signal, area, variance, count, mask_hit, cross, _u64(n_frames), _u64(n_r),
            _int(n_eta), _int(rules), _int(normalize), _int(lineout), _int(nan_masked),
            _dbl(empty_value), cake, sigma, line, line_sigma,
        )  # fmt: skip

    def _csr(self, suffix: str, args: tuple) -> None:
        (indptr, pixel, area, weight, frames, n_pixels, nb, n_bins, n_eta, dark, scale,
         var_mode, variance, mask_hit, *fin, signal, area_out, variance_out, count, cake,
         sigma) = args  # fmt: skip
        nb, n_bins, n_eta = int(nb), int(n_bins), int(n_eta)
        rc = getattr(self._lib, f"ri_host_csr_{suffix}")(
            _ptr(indptr), _ptr(pixel), _ptr(area), _ptr(weight), _ptr(frames), _u64(n_pixels),
            _u64(nb), _u64(n_bins), _ptr(dark), _ptr(scale), _int(var_mode), _ptr(variance),
            _ptr(signal), _ptr(area_out), _ptr(variance_out), _ptr(count), _int(RI_MAX_NB),
        )  # fmt: skip
        assert rc == 0
        n_r = n_bins // n_eta
        with_var = isinstance(variance_out, ndarray)
        tmp = np.empty(nb * n_bins)
        tmp_sigma = np.empty(nb * n_bins) if with_var else None
        line, line_sigma = np.empty(nb * n_r), np.empty(nb * n_r)
        c = lambda a: None if a is None else ctypes.c_void_p(a.ctypes.data)  # noqa: E731
        self._finalize(_ptr(signal), _ptr(area_out), _ptr(variance_out), _ptr(count),
                       _ptr(mask_hit), None, nb, n_r, n_eta, fin, c(tmp), c(tmp_sigma),
                       c(line), c(line_sigma))  # fmt: skip
        # The kernel writes the cake η-major (e·n_r + r) per frame; the harness bin-major.
        eta_major = lambda a: a.reshape(nb, n_r, n_eta).transpose(0, 2, 1).reshape(-1)  # noqa: E731
        cake._a[: nb * n_bins] = eta_major(tmp)
        if with_var:
            sigma._a[: nb * n_bins] = eta_major(tmp_sigma)

    def _cross(self, suffix: str, args: tuple) -> None:
        (indptr, pixel, weight, frames, n_pixels, n_r, n_rows, dark, scale, var_mode, variance,
         cross) = args  # fmt: skip
        getattr(self._lib, f"ri_host_cross_{suffix}")(
            _ptr(indptr), _ptr(pixel), _ptr(weight), _ptr(frames), _u64(n_pixels), _u64(n_r),
            _u64(n_rows), _ptr(dark), _ptr(scale), _int(var_mode), _ptr(variance), _ptr(cross),
        )  # fmt: skip

    def _lineout(self, args: tuple) -> None:
        # As the kernel: the MIDAS reductions read the η-major cake and sigma it is given.
        (signal, area, variance, count, mask_hit, cake, sigma, cross, n_eta, n_r, n_rows,
         *fin, line, line_sigma) = args  # fmt: skip
        rules, normalize, lineout, nan_masked, empty_value = fin
        self._lib.ri_host_lineout(
            _ptr(signal), _ptr(area), _ptr(variance), _ptr(count), _ptr(mask_hit), _ptr(cake),
            _ptr(sigma), _ptr(cross), _int(n_eta), _u64(n_r), _u64(n_rows), _int(rules),
            _int(normalize), _int(lineout), _int(nan_masked), _dbl(empty_value), _ptr(line),
            _ptr(line_sigma),
        )  # fmt: skip

    def _fit_jobs(self, args: tuple) -> None:
        (x, lineouts, n_x, n_curves, job_lo, job_hi, peak_start, peak_slot, peak_index, peak_lo,
         peak_hi, n_jobs, n_slots, bin_size, bin_average, max_iterations, max_peaks_per_job,
         ftol, xtol, values, errors, status, iterations) = args  # fmt: skip
        u32 = lambda v: ctypes.c_uint32(int(v))  # noqa: E731
        rc = self._lib.rf_fit_jobs_host(
            _ptr(x), _ptr(lineouts), u32(n_x), u32(n_curves), _ptr(job_lo), _ptr(job_hi),
            _ptr(peak_start), _ptr(peak_slot), _ptr(peak_index), _ptr(peak_lo), _ptr(peak_hi),
            u32(n_jobs), u32(n_slots), _dbl(bin_size), _int(bin_average), _int(max_iterations),
            _int(max_peaks_per_job), _dbl(ftol), _dbl(xtol), _ptr(values), _ptr(errors),
            _ptr(status), _ptr(iterations),
        )  # fmt: skip
        assert rc == 0
