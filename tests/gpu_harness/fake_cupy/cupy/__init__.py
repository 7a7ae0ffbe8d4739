"""A CPU stand-in for the part of CuPy that radint's CUDA backend uses, for tests only.

With this folder first on ``PYTHONPATH``, ``Integrator(backend="cuda")``, ``radint stream
--backend cuda`` and the ``gpu``-marked tests run their whole Python path (staging, passes over
streams, slicing, downloads, the fit launcher and its CPU fallback) on a machine without a GPU.
``RawModule`` compiles the kernel source it is given (the text NVRTC would get) with g++ on a CPU
runtime of CUDA (``tests/gpu_harness/cuda_emu.h``: a fiber per thread, warp shuffles as
rendezvous of their lanes), so each launch runs the kernels themselves over the launcher's grid
and block, with CuPy's argument passing; a broken shuffle, an argument of the wrong size or an
access past the end of a device allocation (each ends at an inaccessible page) fails the launch.
Not modelled: timing and memory races (a GPU and compute-sanitizer find those).

Device arrays are a wrapper, not numpy arrays: as with CuPy, ``numpy.asarray`` of one raises
``TypeError``, so host/device mix-ups fail here as they would on a GPU. Everything is
synchronous; streams and events only record what they are given.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import re
import shutil
import subprocess
import tempfile
import time
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


class _Memory:
    """``ndarray.data``: the device pointer with CuPy's async copy methods."""

    def __init__(self, array: ndarray) -> None:
        self._a = array._a

    @property
    def ptr(self) -> int:
        return self._a.ctypes.data

    def copy_from_host_async(self, mem: Any, size: int, stream: Any = None) -> None:
        ctypes.memmove(self._a.ctypes.data, mem, size)

    def copy_to_host_async(self, mem: Any, size: int, stream: Any = None) -> None:
        ctypes.memmove(mem, self._a.ctypes.data, size)


class ndarray:  # CuPy's name
    """A device array: a numpy array that cannot be turned into a host array implicitly."""

    #: The GPU it lies on (a test may set another than 0).
    _device = 0

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    device = property(lambda self: _Device(self._device))

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

    def __int__(self) -> int:
        return int(self._a)

    def __getitem__(self, slices: Any) -> ndarray:
        if isinstance(slices, ndarray):
            slices = slices._a
        return ndarray(self._a[slices])

    def __setitem__(self, slices: Any, value: Any) -> None:
        if isinstance(slices, ndarray):
            slices = slices._a
        self._a[slices] = value._a if isinstance(value, ndarray) else value

    def reshape(self, *shape: Any) -> ndarray:
        return ndarray(self._a.reshape(*shape))

    def ravel(self) -> ndarray:
        return ndarray(self._a.ravel())

    def astype(self, dtype: Any, *, copy: bool = True) -> ndarray:
        if not copy and self._a.dtype == np.dtype(dtype):
            return self
        return ndarray(_guarded(self._a.astype(dtype)))

    def copy(self) -> ndarray:
        return ndarray(_guarded(self._a))

    def get(self, stream: Any = None, *, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return self._a.copy()
        out[...] = self._a
        return out

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        """Copy a host array of the same shape and dtype in, as CuPy's ``set``."""
        if arr.shape != self._a.shape or arr.dtype != self._a.dtype:
            raise ValueError(f"set: {arr.shape} {arr.dtype} into {self._a.shape} {self._a.dtype}")
        self._a[...] = arr

    def __repr__(self) -> str:
        return f"fake_cupy.ndarray({self._a!r})"


_PAGE = mmap.PAGESIZE
_LIBC = ctypes.CDLL(None, use_errno=True)
_PROT_NONE = 0


def _guarded_empty(shape: Any, dtype: Any) -> np.ndarray:
    """A host array standing for a device allocation: its last byte is followed by a page that
    cannot be read or written, so a kernel running past the end of an allocation crashes the
    test (as compute-sanitizer would report it) instead of reading a neighbour."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    span = -(-max(nbytes, 1) // _PAGE) * _PAGE
    buf = mmap.mmap(-1, span + _PAGE)
    anchor = ctypes.c_char.from_buffer(buf)
    base = ctypes.addressof(anchor)
    del anchor  # the array below keeps the mapping alive
    if _LIBC.mprotect(ctypes.c_void_p(base + span), _PAGE, _PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "fake CuPy: mprotect of a guard page failed")
    # span - nbytes is a multiple of the item size (a power of two <= 16, dividing the page).
    return np.frombuffer(buf, np.uint8, nbytes, span - nbytes).view(dt).reshape(shape)


def _guarded(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` in a guarded allocation."""
    out = _guarded_empty(a.shape, a.dtype)
    out[...] = a
    return out


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
    return ndarray(_guarded(np.asarray(a, dtype=dtype)))


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    if isinstance(a, ndarray):
        a = a._a
    return ndarray(_guarded(np.asarray(a, dtype=dtype)))


def asnumpy(a: Any) -> np.ndarray:
    return a._a.copy() if isinstance(a, ndarray) else np.asarray(a)


def empty(shape: Any, dtype: Any = np.float64) -> ndarray:
    # Garbage, as on a device: a kernel that leaves an element unwritten is visible.
    a = _guarded_empty(shape, dtype)
    a.view(np.uint8)[...] = 0xA5
    return ndarray(a)


def zeros(shape: Any, dtype: Any = np.float64) -> ndarray:
    return ndarray(_guarded(np.zeros(shape, dtype=dtype)))


def full(shape: Any, fill_value: Any, dtype: Any = None) -> ndarray:
    return ndarray(_guarded(np.full(shape, fill_value, dtype=dtype)))


def concatenate(tup: list, axis: int = 0) -> ndarray:
    return ndarray(_guarded(np.concatenate([_host(a) for a in tup], axis=axis)))


_PINNED: list[tuple[int, int, np.ndarray]] = []


def isfinite(x: ndarray, /) -> ndarray:
    return ndarray(_guarded(np.isfinite(x._a)))


def logical_not(x: ndarray, /) -> ndarray:
    return ndarray(_guarded(np.logical_not(x._a)))


def logical_or(x1: ndarray, x2: ndarray, /) -> ndarray:
    return ndarray(_guarded(np.logical_or(_host(x1), _host(x2))))


def count_nonzero(a: ndarray) -> ndarray:
    """A 0-d device array, as CuPy's (``int()`` of it synchronises)."""
    return ndarray(np.asarray(np.count_nonzero(a._a)))


def empty_pinned(shape: Any, dtype: Any = np.float64) -> np.ndarray:
    """``cupyx.empty_pinned``: a host array, remembered as page-locked."""
    a = np.empty(shape, dtype=dtype)
    _PINNED.append((a.ctypes.data, a.ctypes.data + a.nbytes, a))
    return a


# ----------------------------------------------------------------------------- cuda namespace
# CuPy has these under cupy.cuda only: private here, so a `cupy.Stream` fails as it would there.
class _Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = int(device or 0)
        # One SM by default: the launcher's "enough work to fill the GPU" tests pass for the
        # tests' maps. RADINT_FAKE_CUPY_SMS=132 reports an H100's, whose size keeps those maps'
        # passes off the interleaved path (a test that assumed otherwise fails then, as on one).
        self.attributes = {"MultiProcessorCount": int(os.environ.get("RADINT_FAKE_CUPY_SMS", "1"))}

    def synchronize(self) -> None:
        return None

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _Stream:
    def __init__(self, *, non_blocking: bool = False) -> None:
        self._non_blocking = non_blocking

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def wait_event(self, event: _Event) -> None:
        return None


class _Event:
    """Kernels run when launched here, so an event's time is the host clock when recorded."""

    def __init__(self, block: bool = False, disable_timing: bool = False) -> None:
        self._time: float | None = None
        self._disable_timing = disable_timing

    def record(self, stream: _Stream | None = None) -> None:
        self._time = time.perf_counter()

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


def _elapsed_ms(start_event: _Event, end_event: _Event) -> float:
    """cupy.cuda.get_elapsed_time: both events recorded, with timing, else CUDA's error."""
    start, stop = start_event, end_event
    if start._time is None or stop._time is None or start._disable_timing or stop._disable_timing:
        raise RuntimeError("cudaErrorInvalidResourceHandle: an event not recorded or untimed")
    return (stop._time - start._time) * 1e3


cuda = types.SimpleNamespace(
    Device=_Device, Stream=_Stream, Event=_Event, runtime=_runtime,
    get_current_stream=lambda device_id=-1: _Stream(), get_elapsed_time=_elapsed_ms,
)  # fmt: skip


class _MemoryPool:
    """CuPy's default device (or pinned host) pool: counts the times its free blocks were
    handed back."""

    def __init__(self) -> None:
        self.freed = 0

    def free_all_blocks(self) -> None:
        self.freed += 1


_POOL = _MemoryPool()


def get_default_memory_pool() -> _MemoryPool:
    return _POOL


_PINNED_POOL = _MemoryPool()  # CuPy's page-locked host pool: the same free_all_blocks()


def get_default_pinned_memory_pool() -> _MemoryPool:
    return _PINNED_POOL


# ----------------------------------------------------------------------------- kernels
# `extern __shared__ T name[];`: a kernel's dynamic shared memory, the runtime's per-block buffer.
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(\w[\w\s]*?)\s+(\w+)\s*\[\s*\]\s*;")
_KERNEL_NAME = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\(\s*(\d+)[^)]*\)\s*)?'
    r"(\w+)\s*\("
)


def _gxx() -> str:
    gxx = shutil.which("g++")
    if gxx is None:
        raise RuntimeError("fake CuPy needs g++ to run the kernels on the CPU")
    return gxx


def _cache_dir() -> Path:
    """Where built kernel modules are kept: ``RADINT_FAKE_CUPY_CACHE``, else a folder of this
    user's in the temporary directory that nobody else can write (a module another user put
    in a shared folder under the expected name would otherwise be loaded and run)."""
    given = os.environ.get("RADINT_FAKE_CUPY_CACHE")
    if given:
        return Path(given)
    mine = Path(tempfile.gettempdir()) / f"radint-fake-cupy-{os.getuid()}"
    mine.mkdir(mode=0o700, exist_ok=True)
    info = mine.stat()
    if mine.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return Path(tempfile.mkdtemp(prefix="radint-fake-cupy-"))  # private, for this process
    return mine


def _build(code: str) -> tuple[ctypes.CDLL, tuple[str, ...]]:
    """g++ a kernel module's source on the CPU runtime (cuda_emu.h) once per process, cached
    on disk by the digest of both; returns the library and the module's kernel names."""
    emu = HARNESS_DIR / "cuda_emu.h"
    digest = hashlib.sha256(code.encode() + emu.read_bytes()).hexdigest()[:16]
    cache = _cache_dir()
    out = cache / f"radint-fake-cupy-{digest}.so"
    # Kernels as NVRTC sees them (macro-generated ones expanded), __global__ still spelled out.
    expanded = subprocess.run(
        [_gxx(), "-E", "-P", "-x", "c++", "-std=c++17", "-D__CUDACC_RTC__=1", "-"],
        input=code, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    # Each kernel with the most threads a block may have: its __launch_bounds__, else CUDA's 1024.
    bounds = {name: int(bound or 1024) for bound, name in _KERNEL_NAME.findall(expanded)}
    names = tuple(bounds)
    if not out.exists():
        exports = "".join(f"EMU_EXPORT({n}, {b})\n" for n, b in bounds.items())
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "module.cpp"
            body = _DYNAMIC_SHARED.sub(
                r"\1* const \2 = reinterpret_cast<\1*>(emu::dynamic_shared());", code
            )
            src.write_text(f'#include "cuda_emu.h"\n{body}\n{exports}')
            built = Path(tmp) / "module.so"
            run = subprocess.run(
                [_gxx(), "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC",
                 f"-I{HARNESS_DIR}", str(src), "-o", str(built)],
                capture_output=True, text=True,
            )  # fmt: skip
            if run.returncode != 0:
                raise RuntimeError(f"fake CuPy: g++ could not build the kernels:\n{run.stderr}")
            shutil.copy(built, out.with_suffix(f".{os.getpid()}.tmp"))
            os.replace(out.with_suffix(f".{os.getpid()}.tmp"), out)
    return ctypes.CDLL(str(out)), names


def _argument(a: Any) -> ctypes.Array | ctypes.c_void_p | np.ndarray:
    """A kernel argument as CuPy passes it: a device array by its pointer, a numpy scalar by
    value in its own size, a Python int / float / bool as int64 / float64 / bool."""
    if isinstance(a, ndarray):
        return ctypes.c_void_p(a._a.ctypes.data)
    if isinstance(a, (bool, np.bool_)):
        return np.array(a, dtype=np.bool_)
    if isinstance(a, np.generic):
        return np.array(a)
    if isinstance(a, int):
        return np.array(a, dtype=np.int64)
    if isinstance(a, float):
        return np.array(a, dtype=np.float64)
    raise TypeError(f"Unsupported type {type(a)}")  # CuPy's words for a host array, None, ...


class _Kernel:
    """``cupy.RawKernel``: ``kernel(grid, block, args, shared_mem=0)`` runs it on the CPU
    runtime; ``max_dynamic_shared_size_bytes`` is the opt-in past 48 KiB of shared memory."""

    def __init__(self, lib: ctypes.CDLL, name: str) -> None:
        self.name = name
        self.max_dynamic_shared_size_bytes = 0
        self._launch = getattr(lib, f"emu_launch_{name}")
        self._launch.restype = ctypes.c_int

    def __call__(self, grid: tuple, block: tuple, args: tuple, *, shared_mem: int = 0) -> None:
        dims = lambda d: (ctypes.c_uint * 3)(*(*d, 1, 1, 1)[:3])  # noqa: E731
        values = [_argument(a) for a in args]
        ptrs = (ctypes.c_void_p * max(1, len(values)))()
        sizes = (ctypes.c_ulonglong * max(1, len(values)))()
        for i, v in enumerate(values):
            if isinstance(v, np.ndarray):
                ptrs[i], sizes[i] = v.ctypes.data, v.itemsize
            else:
                ptrs[i], sizes[i] = ctypes.addressof(v), ctypes.sizeof(v)
        err = ctypes.create_string_buffer(1024)
        rc = self._launch(
            dims(grid),
            dims(block),
            ctypes.c_ulonglong(int(shared_mem)),
            ctypes.c_ulonglong(int(self.max_dynamic_shared_size_bytes)),
            ptrs,
            sizes,
            len(values),
            err,
            len(err),
        )
        if rc != 0:
            raise RuntimeError(f"fake CuPy: kernel {self.name}: {err.value.decode()}")


class RawModule:
    """``cupy.RawModule``: the module's source compiled with g++ on a CPU runtime of CUDA
    (``tests/gpu_harness/cuda_emu.h``), so launches run the kernels themselves."""

    def __init__(self, code: str | None = None, *, options: tuple = ()) -> None:
        self._lib, self._names = _build(code)

    def get_function(self, name: str) -> _Kernel:
        if name not in self._names:
            raise AttributeError(f"fake CuPy: no kernel {name!r} in this module")
        return _Kernel(self._lib, name)
