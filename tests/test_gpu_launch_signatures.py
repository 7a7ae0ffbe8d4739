"""CUDA kernel launches checked against the kernels' C signatures, on the CPU.

A kernel launched with the wrong number, order or type of arguments (an int64 where the kernel
takes ``int``, a float32 array where it takes ``double*``, an argument missing after a signature
change) compiles fine and only fails, or silently reads garbage, on a GPU. Here:

* the source the launcher hands to ``cupy.RawModule`` (``kernel_source(name)``, header inlined)
  is run through the C preprocessor (``g++ -E``, with ``__CUDACC_RTC__`` defined as NVRTC does),
  so macro-generated kernels appear as compiled, and every ``extern "C" __global__`` signature is
  parsed, typedefs resolved (``ri_u64`` → ``unsigned long long`` → uint64, ...);
* the real launch code (``Integrator(backend="cuda")``, :class:`radint.gpu.CudaIntegrator`,
  :class:`radint.gpu.fit.CudaFitter`) runs against a fake ``cupy`` (numpy-backed device arrays
  that refuse implicit host conversion, no-op streams and events) whose ``RawModule`` returns
  recorders: each launch must pass exactly one argument per parameter, a device array of the
  pointee's dtype (C-contiguous) or a null pointer (``None`` / ``np.uint64(0)``) for a pointer,
  a numpy scalar of exactly the parameter's C type for a scalar, and a grid / block within the
  kernel's ``__launch_bounds__``;
* the launches cover every kernel the sources define.

The parser itself is checked against NVRTC's PTX (parameter counts and widths) where NVRTC loads.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import re
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import radint.gpu
from radint import IntegrationConfig, Integrator
from radint.detector_map import DetectorMap
from radint.gpu import FRAME_DTYPES, MAX_NB, kernel_source

CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="needs a C++ preprocessor (g++)")

MODULES = ("integrate", "fit")

# C type (qualifiers dropped, words in canonical order) → numpy dtype. `long` is left out on
# purpose: its width differs between Linux and Windows, so a kernel must not take one.
C_TYPES = {
    "bool": np.bool_,
    "char": np.int8,  # signed on every CUDA host
    "signed char": np.int8,
    "unsigned char": np.uint8,
    "short": np.int16,
    "unsigned short": np.uint16,
    "int": np.int32,
    "unsigned int": np.uint32,
    "long long": np.int64,
    "unsigned long long": np.uint64,
    "float": np.float32,
    "double": np.float64,
}
_TYPE_WORDS = {
    "void",
    "bool",
    "char",
    "short",
    "int",
    "long",
    "float",
    "double",
    "signed",
    "unsigned",
    "const",
    "volatile",
    "__restrict__",
}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "struct"}


# ---------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # resolved C type of the value (pointee for pointers)
    pointer: bool
    const: bool

    @property
    def dtype(self) -> np.dtype | None:
        """numpy dtype of the value / pointee (None: ``void``)."""
        return None if self.ctype == "void" else np.dtype(C_TYPES[self.ctype])

    def __str__(self) -> str:
        return (
            f"{'const ' if self.const else ''}{self.ctype}{'*' if self.pointer else ''} {self.name}"
        )


@dataclass(frozen=True)
class Kernel:
    name: str
    params: tuple[Param, ...]
    max_threads: int | None  # __launch_bounds__, if any


def _canonical(words: list[str]) -> str:
    """'long long int' → 'long long', 'int unsigned' → 'unsigned int', 'signed int' → 'int'."""
    words = [w for w in words if w not in _QUALIFIERS]
    unsigned = "unsigned" in words
    signed = "signed" in words
    rest = [w for w in words if w not in ("unsigned", "signed")]
    if rest.count("long") or rest.count("short"):
        rest = [w for w in rest if w != "int"]
    if not rest:
        rest = ["int"]
    base = " ".join(rest)
    if unsigned:
        return f"unsigned {base}"
    if signed and base == "char":
        return "signed char"
    return base


def preprocess(code: str) -> str:
    """The source as NVRTC compiles it, macros expanded (``g++ -E``, NVRTC's predefines)."""
    r = subprocess.run(
        [CXX, "-E", "-P", "-x", "c++", "-D__CUDACC__", "-D__CUDACC_RTC__", "-"],
        input=code, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"preprocessing the kernel source failed:\n{r.stderr}")
    return r.stdout


_KERNEL_RE = re.compile(
    r'extern\s*"C"\s*__global__\s*(?:__launch_bounds__\s*\(([^()]*)\)\s*)?void\s*'
    r"(?:__launch_bounds__\s*\(([^()]*)\)\s*)?(\w+)\s*\(([^()]*)\)"
)


@functools.lru_cache(maxsize=8)
def parse_kernels(code: str) -> dict[str, Kernel]:
    """Every ``extern "C" __global__`` kernel of ``code`` (preprocessed), by name."""
    text = re.sub(r"\s+", " ", preprocess(code))
    typedefs: dict[str, str] = {}
    for base, alias in re.findall(r"\btypedef ([\w ]+?) (\w+) ?;", text):
        typedefs[alias] = base
    for alias, base in re.findall(r"\busing (\w+) ?= ?([\w ]+?) ?;", text):
        typedefs[alias] = base

    def resolve(words: list[str]) -> str:
        words = [w for w in words if w not in _QUALIFIERS]
        for _ in range(16):
            if len(words) == 1 and words[0] in typedefs:
                words = [w for w in typedefs[words[0]].split() if w not in _QUALIFIERS]
            else:
                break
        ctype = _canonical(words)
        if ctype != "void" and ctype not in C_TYPES:
            raise ValueError(f"unknown C type {' '.join(words)!r} in a kernel signature")
        return ctype

    kernels: dict[str, Kernel] = {}
    for lb1, lb2, name, plist in _KERNEL_RE.findall(text):
        params = []
        for k, p in enumerate(x.strip() for x in plist.split(",") if x.strip()):
            toks = p.replace("*", " * ").replace("&", " & ").split()
            if "&" in toks or toks.count("*") > 1:
                raise ValueError(f"{name}: parameter {p!r} is not a value or a plain pointer")
            named = toks[-1] not in _TYPE_WORDS and toks[-1] not in typedefs and toks[-1] != "*"
            pname = toks[-1] if named else f"arg{k}"
            words = [t for t in (toks[:-1] if named else toks) if t != "*"]
            params.append(Param(pname, resolve(words), "*" in toks, "const" in words))
        bound = (lb1 or lb2).split(",")[0].strip()
        if name in kernels:
            raise ValueError(f"kernel {name} defined twice")
        kernels[name] = Kernel(name, tuple(params), int(bound, 0) if bound else None)
    n_global = len(re.findall(r"\b__global__\b", text))
    if n_global != len(kernels):
        raise ValueError(
            f'{n_global} __global__ functions but {len(kernels)} parsed extern "C" kernels '
            '(a kernel the parser cannot read, or one that is not extern "C")'
        )
    return kernels


def all_kernels() -> dict[str, Kernel]:
    out: dict[str, Kernel] = {}
    for m in MODULES:
        out.update(parse_kernels(kernel_source(m)))
    return out


# ---------------------------------------------------------------------------------- fake CuPy
class LaunchError(AssertionError):
    """A launch that would fail or misbehave on a GPU."""


class _MemoryPointer:
    def __init__(self, owner: DeviceArray) -> None:
        self._owner = owner

    @property
    def ptr(self) -> int:
        return self._owner._a.ctypes.data

    def copy_from_host_async(self, mem: Any, size: int, stream: Any = None) -> None:
        a = self._owner._a
        if not isinstance(size, (int, np.integer)) or not 0 <= size <= a.nbytes:
            raise LaunchError(f"copy_from_host_async: {size} bytes into a {a.nbytes}-byte buffer")
        if stream is not None and not isinstance(stream, _Stream):
            raise LaunchError(f"copy_from_host_async: stream {stream!r}")
        addr = mem.value if isinstance(mem, ctypes.c_void_p) else int(mem)
        ctypes.memmove(a.ctypes.data, addr, int(size))
        if isinstance(stream, _Stream):
            stream._pending.append((addr, addr + int(size), next(_COPY_IDS)))

    def copy_to_host_async(self, mem: Any, size: int, stream: Any = None) -> None:
        a = self._owner._a
        if not isinstance(size, (int, np.integer)) or not 0 <= size <= a.nbytes:
            raise LaunchError(f"copy_to_host_async: {size} bytes from a {a.nbytes}-byte buffer")
        if stream is not None and not isinstance(stream, _Stream):
            raise LaunchError(f"copy_to_host_async: stream {stream!r}")
        if not a.flags.c_contiguous:
            raise LaunchError("copy_to_host_async: from a non-contiguous view")
        addr = mem.value if isinstance(mem, ctypes.c_void_p) else int(mem)
        ctypes.memmove(addr, a.ctypes.data, int(size))


class DeviceArray:
    """A CuPy array stand-in: numpy memory, but no implicit conversion to the host."""

    __slots__ = ("_a",)

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    dtype = property(lambda self: self._a.dtype)
    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    data = property(lambda self: _MemoryPointer(self))
    T = property(lambda self: DeviceArray(self._a.T))

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "version": 3,
                "data": (self._a.ctypes.data, False), "strides": None}  # fmt: skip

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed (fake CuPy)")

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, slices: Any) -> DeviceArray:
        if isinstance(slices, DeviceArray):
            slices = slices._a
        elif isinstance(slices, tuple):
            slices = tuple(k._a if isinstance(k, DeviceArray) else k for k in slices)
        return DeviceArray(self._a[slices])

    def __setitem__(self, slices: Any, value: Any) -> None:
        self._a[slices] = value._a if isinstance(value, DeviceArray) else value

    def reshape(self, *shape: Any) -> DeviceArray:
        return DeviceArray(self._a.reshape(*shape))

    def transpose(self, *axes: Any) -> DeviceArray:
        return DeviceArray(self._a.transpose(*axes))

    def ravel(self) -> DeviceArray:
        return DeviceArray(self._a.ravel())

    def astype(self, dtype: Any, *, copy: bool = True) -> DeviceArray:
        return DeviceArray(self._a.astype(dtype, copy=copy))

    def copy(self) -> DeviceArray:
        return DeviceArray(self._a.copy())

    def get(self) -> np.ndarray:
        return self._a.copy()

    def __repr__(self) -> str:
        return f"DeviceArray({self.dtype}, shape={self.shape})"


class _Stream:
    """Tracks the host ranges its host→device copies read until they are known complete (the
    stream or an event recorded after them synchronised): a host write into such a range is
    the race the staging buffers must avoid (see ``_checked_copy_bytes``)."""

    def __init__(self, null: bool = False, non_blocking: bool = False) -> None:
        self._non_blocking = non_blocking
        self._pending: list[tuple[int, int, int]] = []  # (lo, hi, copy id)
        _FAKE_STATE.setdefault("streams", []).append(self)

    def synchronize(self) -> None:
        self._pending.clear()

    def wait_event(self, event: Any) -> None:
        if not isinstance(event, _Event):
            raise LaunchError(f"Stream.wait_event({event!r})")

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _Event:
    def __init__(self, block: bool = False, disable_timing: bool = False,
                 interprocess: bool = False) -> None:  # fmt: skip
        self._recorded = False
        self._stream: _Stream | None = None
        self._covers: set[int] = set()  # ids of the copies enqueued before the record

    def record(self, stream: Any = None) -> None:
        if stream is not None and not isinstance(stream, _Stream):
            raise LaunchError(f"Event.record({stream!r})")
        self._recorded = True
        self._stream = stream
        self._covers = {c for _, _, c in stream._pending} if stream is not None else set()

    def synchronize(self) -> None:
        if not self._recorded:
            raise LaunchError("Event.synchronize() before record()")
        if self._stream is not None:  # the copies enqueued before the record are done
            self._stream._pending = [r for r in self._stream._pending if r[2] not in self._covers]


class _Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = 0 if device is None else int(device)
        self.attributes = {"MultiProcessorCount": 1}  # the test maps fill it frames-in-lanes

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def use(self) -> None:
        pass


@dataclass
class Launch:
    kernel: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple[Any, ...]


class KernelRecorder:
    """What ``RawModule.get_function`` returns: checks each launch against the C signature."""

    def __init__(self, kernel: Kernel, log: list[Launch], hook: Any = None,
                 extents: bool = True) -> None:  # fmt: skip
        self.kernel = kernel
        self.log = log
        self.hook = hook
        self.extents = extents

    def __call__(self, grid: Any, block: Any, args: Any, *, shared_mem: int = 0,
                 enable_cooperative_groups: bool = False) -> None:  # fmt: skip
        k = self.kernel
        grid, block = _dims(k.name, "grid", grid), _dims(k.name, "block", block)
        threads = int(np.prod(block))
        limit = min(1024, k.max_threads or 1024)
        if threads > limit:
            raise LaunchError(f"{k.name}: block of {threads} threads exceeds {limit}")
        if not isinstance(args, (tuple, list)):
            raise LaunchError(f"{k.name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(k.params):
            raise LaunchError(
                f"{k.name}: {len(args)} arguments for {len(k.params)} parameters "
                f"({', '.join(map(str, k.params))})"
            )
        for i, (p, a) in enumerate(zip(k.params, args)):
            why = _mismatch(p, a)
            if why:
                raise LaunchError(f"{k.name}: argument {i} ({p}): {why}")
        if self.extents:
            _check_extents(k, grid, block, dict(zip((p.name for p in k.params), args)))
        self.log.append(Launch(k.name, grid, block, tuple(args)))
        if self.hook is not None:
            self.hook(k, dict(zip((p.name for p in k.params), args)))


# What each kernel indexes, from its scalar arguments (kernels/*.cu): per kernel-name pattern,
# a function of the arguments giving the threads it needs and, per pointer, (relation, size).
# A kernel missing here is checked for its signature only.
def _csr_extents(a: dict[str, int]) -> tuple[int, dict[str, tuple[str, int]]]:
    nb, n_bins, n_pix, n_e = a["nb"], a["n_bins"], a["n_pixels"], a["pixel"]
    keys = ("signal", "area_out", "variance_out", "count", "cake", "sigma")
    if n_bins % a["n_eta"]:
        raise LaunchError(f"n_bins {n_bins} is not a multiple of n_eta {a['n_eta']}")
    return nb * n_bins * radint.gpu.BIN_LANES, {
        "indptr": ("==", n_bins + 1), "area": ("==", n_e), "weight": ("==", n_e),
        "frames": (">=", nb * n_pix), "dark": ("==", n_pix), "scale": ("==", n_pix),
        "variance": ("==", n_pix), "mask_hit": ("==", n_bins),
        **{k: (">=", nb * n_bins) for k in keys},
    }  # fmt: skip


def _csr_lanes_extents(a: dict[str, int]) -> tuple[int, dict[str, tuple[str, int]]]:
    nb, n_bins, n_pix, n_e = a["nb"], a["n_bins"], a["n_pixels"], a["pixel"]
    keys = ("signal", "area_out", "variance_out", "count", "cake", "sigma")
    if not 1 <= nb <= radint.gpu.MAX_NB:
        raise LaunchError(f"nb {nb} outside 1..{radint.gpu.MAX_NB}")
    return nb * n_bins, {
        "indptr": ("==", n_bins + 1), "area": ("==", n_e), "weight": ("==", n_e),
        "frames": (">=", radint.gpu.MAX_NB * n_pix), "dark": ("==", n_pix),
        "scale": ("==", n_pix), "variance": ("==", n_pix), "mask_hit": ("==", n_bins),
        **{k: (">=", nb * n_bins) for k in keys},
    }  # fmt: skip


def _interleave_extents(a: dict[str, int]) -> tuple[int, dict[str, tuple[str, int]]]:
    nb, n_pix = a["nb"], a["n_pixels"]
    if not 1 <= nb <= radint.gpu.MAX_NB:
        raise LaunchError(f"nb {nb} outside 1..{radint.gpu.MAX_NB}")
    return n_pix, {"frames": (">=", nb * n_pix), "out": (">=", radint.gpu.MAX_NB * n_pix)}


def _cross_extents(a: dict[str, int]) -> tuple[int, dict[str, tuple[str, int]]]:
    n_rows, n_r, n_pix = a["n_rows"], a["n_r"], a["n_pixels"]
    return n_rows * radint.gpu.ROW_LANES, {
        "indptr": ("==", n_r + 1), "weight": ("==", a["pixel"]),
        "frames": (">=", -(-n_rows // n_r) * n_pix), "dark": ("==", n_pix),
        "scale": ("==", n_pix), "variance": ("==", n_pix), "cross": (">=", n_rows),
    }  # fmt: skip


def _lineout_extents(a: dict[str, int]) -> tuple[int, dict[str, tuple[str, int]]]:
    n_rows, n_eta = a["n_rows"], a["n_eta"]
    keys = ("signal", "area", "variance", "count", "cake", "sigma")
    return n_rows * radint.gpu.ROW_LANES, {
        "mask_hit": ("==", a["n_r"] * n_eta), **{k: (">=", n_rows * n_eta) for k in keys},
        "cross": (">=", n_rows), "line": (">=", n_rows), "line_sigma": (">=", n_rows),
    }  # fmt: skip


def _fit_extents(a: dict[str, int]) -> tuple[int, dict[str, tuple[str, int]]]:
    n_curves, n_jobs, n_slots = a["n_curves"], a["n_jobs"], a["n_slots"]
    peaks = {k: ("==", a["peak_slot"]) for k in ("peak_index", "peak_lo", "peak_hi")}
    return n_curves * n_jobs, {
        "x": ("==", a["n_x"]), "lineouts": (">=", n_curves * a["n_x"]),
        "job_lo": ("==", n_jobs), "job_hi": ("==", n_jobs), "peak_start": ("==", n_jobs + 1),
        **peaks, "values": (">=", n_curves * n_slots * 7), "errors": (">=", n_curves * n_slots * 7),
        "status": (">=", n_curves * n_slots), "iterations": (">=", n_curves * n_slots),
    }  # fmt: skip


EXTENTS = {  # the first pattern a kernel's name matches applies
    "ri_csr_lanes_*": _csr_lanes_extents,
    "ri_csr_*": _csr_extents,
    "ri_interleave_*": _interleave_extents,
    "ri_cross_*": _cross_extents,
    "ri_lineout": _lineout_extents,
    "rf_fit_jobs": _fit_extents,
}


def _check_extents(k: Kernel, grid: tuple, block: tuple, args: dict[str, Any]) -> None:
    import fnmatch

    rules = [f for pat, f in EXTENTS.items() if fnmatch.fnmatchcase(k.name, pat)]
    if not rules:
        return
    # Scalars by value; pointers by their size (as the rules use `pixel` for the entry count).
    sizes = {n: (v.size if isinstance(v, DeviceArray) else int(v)) for n, v in args.items()
             if isinstance(v, (DeviceArray, np.integer))}  # fmt: skip
    try:
        threads, want = rules[0](sizes)
    except KeyError as e:
        raise LaunchError(f"{k.name}: EXTENTS names a parameter it no longer has: {e}") from e
    unknown = set(want) - {p.name for p in k.params}
    if unknown:
        raise LaunchError(f"{k.name}: EXTENTS names parameters it no longer has: {unknown}")
    if grid[0] * block[0] < threads:
        raise LaunchError(f"{k.name}: {grid[0]}×{block[0]} threads for {threads} work items")
    if grid[0] >= 2**31:
        raise LaunchError(f"{k.name}: grid {grid[0]} beyond CUDA's 2^31 - 1")
    for name, (rel, n) in want.items():
        v = args[name]
        if not isinstance(v, DeviceArray):
            continue  # null pointer
        if (v.size != n) if rel == "==" else (v.size < n):
            raise LaunchError(f"{k.name}: {name} holds {v.size} elements, needs {rel} {n}")


def _dims(kernel: str, what: str, v: Any) -> tuple[int, ...]:
    t = v if isinstance(v, tuple) else (v,)
    if not 1 <= len(t) <= 3 or not all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in t
    ):
        raise LaunchError(f"{kernel}: {what} {v!r} is not 1-3 integers")
    if any(int(x) < 1 for x in t):
        raise LaunchError(f"{kernel}: {what} {v!r} has a zero or negative dimension")
    return tuple(int(x) for x in t)


def _kind(a: Any) -> str:
    if isinstance(a, DeviceArray):
        return f"device {a.dtype}[{a.size}]"
    if isinstance(a, np.ndarray):
        return f"host numpy {a.dtype}[{a.size}]"
    if isinstance(a, np.generic):
        return f"np.{type(a).__name__}({a.item()!r})"
    return f"{type(a).__name__} {a!r}"


def _mismatch(p: Param, a: Any) -> str | None:
    if p.pointer:
        if a is None or (type(a) is np.uint64 and int(a) == 0):
            return None  # null pointer (CuPy passes None / a uint64 0 as one)
        if not isinstance(a, DeviceArray):
            return f"expected a device array or a null pointer, got {_kind(a)}"
        if p.dtype is not None and a.dtype != p.dtype:
            return f"expected {p.dtype} elements, got {_kind(a)}"
        if not a.flags.c_contiguous:
            return f"device array is not C-contiguous ({_kind(a)})"
        return None
    if isinstance(a, (DeviceArray, np.ndarray)) or a is None:
        return f"expected a {p.dtype} scalar, got {_kind(a)}"
    if not isinstance(a, np.generic):
        return (
            f"expected np.{p.dtype.type.__name__}, got a Python {type(a).__name__} "
            "(CuPy passes it as a 64-bit value)"
        )
    if a.dtype != p.dtype:
        return f"expected np.{p.dtype.type.__name__}, got {_kind(a)}"
    return None


class _RawModule:
    def __init__(self, code: str | None = None, *, options: tuple = (),
                 name_expressions: Any = None) -> None:  # fmt: skip
        self.kernels = parse_kernels(code or "")
        self.options = tuple(options)
        _FAKE_STATE["modules"].append(self)

    def get_function(self, name: str) -> KernelRecorder:
        if name not in self.kernels:
            raise LaunchError(f"get_function({name!r}): no such kernel in the module")
        return KernelRecorder(self.kernels[name], _FAKE_STATE["log"], _FAKE_STATE["hook"])


_FAKE_STATE: dict[str, Any] = {"log": [], "hook": None, "modules": [], "streams": []}
_COPY_IDS = itertools.count()


def _checked_copy_bytes(real: Any) -> Any:
    """``_core.copy_bytes`` that first refuses to write host memory a host→device copy may
    still be reading (a staging buffer reused before its DMA finished)."""

    def copy_bytes(dst: np.ndarray, src: np.ndarray, n_threads: Any = None) -> None:
        lo, hi = dst.ctypes.data, dst.ctypes.data + dst.nbytes
        for stream in _FAKE_STATE["streams"]:
            for a, b, _ in stream._pending:
                if lo < b and a < hi:
                    raise LaunchError(
                        "host write into pinned memory that a host→device copy may still read"
                    )
        real(dst, src, n_threads=n_threads)

    return copy_bytes


def _host(a: Any) -> np.ndarray:
    return a._a if isinstance(a, DeviceArray) else np.asarray(a)


def make_fake_cupy() -> tuple[types.ModuleType, types.ModuleType]:
    pinned: list[np.ndarray] = []  # "page-locked" host arrays, for pointerGetAttributes

    def empty_pinned(shape: Any, dtype: Any = float) -> np.ndarray:
        a = np.empty(shape, dtype=dtype)
        pinned.append(a)
        return a

    def pointer_attributes(ptr: int) -> types.SimpleNamespace:
        locked = any(a.ctypes.data <= ptr < a.ctypes.data + max(a.nbytes, 1) for a in pinned)
        return types.SimpleNamespace(type=1 if locked else 0)  # cudaMemoryTypeHost / pageable

    cp = types.ModuleType("cupy")
    cp.__version__ = "0.0-fake"
    cp.ndarray = DeviceArray
    for t in ("float64", "float32", "uint8", "uint16", "uint32", "uint64", "int32", "int64"):
        setattr(cp, t, getattr(np, t))
    cp.nan = np.nan

    def asarray(a: Any, dtype: Any = None, order: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        return DeviceArray(np.array(a, dtype=dtype, copy=True))

    cp.asarray = asarray
    cp.array = lambda obj, dtype=None, copy=True: DeviceArray(np.array(_host(obj), dtype=dtype))
    cp.zeros = lambda shape, dtype=float: DeviceArray(np.zeros(shape, dtype=dtype))
    # Uninitialised device memory: NaN / all-ones bits, never conveniently zero.
    cp.empty = lambda shape, dtype=float: DeviceArray(
        np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1).astype(dtype)
    )
    cp.full = lambda shape, fill_value, dtype=None: DeviceArray(np.full(shape, fill_value, dtype))
    cp.concatenate = lambda tup: DeviceArray(np.concatenate([_host(a) for a in tup]))
    cp.ascontiguousarray = lambda a, dtype=None: DeviceArray(
        np.ascontiguousarray(_host(a), dtype=dtype)
    )

    def asnumpy(a: Any, stream: Any = None) -> np.ndarray:
        return _host(a).copy()

    cp.asnumpy = asnumpy
    cp.RawModule = _RawModule
    pinned_pool = types.SimpleNamespace(free_all_blocks=lambda: None)
    cp.get_default_pinned_memory_pool = lambda: pinned_pool

    cuda = types.SimpleNamespace(
        Device=_Device,
        Stream=_Stream,
        Event=_Event,
        get_current_stream=lambda: _Stream(null=True),
        runtime=types.SimpleNamespace(
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda device: {"name": b"fake GPU (launch signature test)"},
            pointerGetAttributes=pointer_attributes,
        ),
    )
    cp.cuda = cuda
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = empty_pinned
    return cp, cupyx


@pytest.fixture
def fake_cupy(monkeypatch):
    """Fake ``cupy``/``cupyx`` in sys.modules; the launcher's module cache cleared before and
    after (so real GPU tests in the same process never get a fake module)."""
    _FAKE_STATE.update(log=[], hook=None, modules=[], streams=[])
    cp, cupyx = make_fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setattr(radint._core, "copy_bytes", _checked_copy_bytes(radint._core.copy_bytes))
    radint.gpu._module.cache_clear()
    try:
        yield cp
    finally:
        radint.gpu._module.cache_clear()
        _FAKE_STATE.update(log=[], hook=None, modules=[], streams=[])


def launched() -> list[Launch]:
    return _FAKE_STATE["log"]


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def config() -> IntegrationConfig:
    from tests.conftest import SMALL

    return IntegrationConfig.from_text(SMALL, "small.txt")


@pytest.fixture(scope="module")
def maps(config) -> dict[str, DetectorMap]:
    m = DetectorMap.build(config, n_threads=1)
    g = m.with_gradient_correction(config)
    assert m.weight is None and g.weight is not None
    return {"plain": m, "weighted": g}


def _frames(config: IntegrationConfig, dtype: Any, n: int | None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = config.shape if n is None else (n, *config.shape)
    return rng.integers(0, 200, size=shape).astype(dtype)


# Every launcher option that changes what is launched or with which arguments.
_RULE_SETS = (
    (None, "area_weighted"),
    (None, "midas_nonzero_mean"),
    ("midas-cpu", "area_weighted"),
    ("midas-gpu", "area_weighted"),
)
OPTIONS = [
    pytest.param(
        dict(compat=c, lineout_mode=lm, error_model=em, precision=pr, scale=sc, wmap=wm),
        id=f"{c or 'radint'}-{lm[:4]}-{em}-{pr}-{sc}-{wm}",
    )
    for c, lm in _RULE_SETS
    for em in ("poisson", None)
    for pr in ("float64", "float32")
    for sc, wm in (("noscale", "plain"), ("scale", "weighted"))
] + [
    # pyFAI's azimuthal model: radint's rules, float64 sums and area-weighted maps only.
    pytest.param(
        dict(
            compat=None,
            lineout_mode="area_weighted",
            error_model="azimuthal",
            precision=pr,
            scale=sc,
            wmap="plain",
        ),
        id=f"radint-area-azimuthal-{pr}-{sc}-plain",
    )
    for pr in ("float64",)
    for sc in ("noscale", "scale")
]


def _integrator(config, maps, opts: dict, **kw: Any) -> Integrator:
    scale = {}
    if opts["scale"] == "scale":
        mask = np.zeros(config.shape, bool)
        mask[:3] = True
        scale = dict(mask=mask, flat=np.full(config.shape, 0.9))
    it = Integrator(
        config, backend="cuda", detector_map=maps[opts["wmap"]], compat=opts["compat"],
        lineout_mode=opts["lineout_mode"], error_model=opts["error_model"],
        precision=opts["precision"], fit=None, **scale, **kw,
    )  # fmt: skip
    assert it.backend == "cuda" and isinstance(it._gpu, radint.gpu.CudaIntegrator)
    assert (it._scale is not None) == (opts["scale"] == "scale")
    return it


def _drive_integrator(it: Integrator, config, dtypes, counts=(None, 1, 3, 9), extras=True) -> None:
    """Single frames and stacks (one pass, a partial pass, 8 + 1), with and without dark and
    variance, through Integrator and straight through CudaIntegrator with device inputs."""
    dark = np.full(config.shape, 2.0)
    var = np.full(config.shape, 3.0)
    for dtype in dtypes:
        for n in counts:
            f = _frames(config, dtype, n)
            for d, v in (
                ((None, None), (dark, None), (None, var), (dark, var))
                if extras
                else ((None, None),)
            ):
                r = (
                    it.integrate(f, dark=d, variance=v)
                    if n is None
                    else it.integrate_stack(f, dark=d, variance=v)
                )
                assert r.lineout.shape[-1] == it.map.n_r
        if extras:
            # A list of frames (stacked for the one upload) and device frames used in place.
            it.integrate_stack([_frames(config, dtype, None, s) for s in range(2)])
            cp = sys.modules["cupy"]
            gpu = it._gpu
            dev = cp.asarray(_frames(config, dtype, MAX_NB + 2))
            out = gpu.integrate_device(
                dev, dark=cp.asarray(dark.ravel()), variance=cp.asarray(var.ravel())
            )
            assert (
                out["n_frames"] == MAX_NB + 2 and out["lineout"].size == (MAX_NB + 2) * it.map.n_r
            )
            assert gpu.integrate(np.zeros((0, *config.shape), dtype))["n_frames"] == 0


# ---------------------------------------------------------------------------------- parser tests
def test_parser_reads_every_kernel_as_compiled():
    ks = parse_kernels(kernel_source("integrate"))
    expected = {"ri_lineout"}
    for s in FRAME_DTYPES.values():
        expected |= {f"ri_csr{k}_{s}_{a}" for k in ("", "_lanes") for a in ("f64", "f32")}
        expected |= {f"ri_cross_{s}", f"ri_interleave_{s}", f"ri_spread_{s}"}
    assert set(ks) == expected
    csr = ks["ri_csr_u16_f32"]
    assert csr.max_threads == 256
    assert [str(p) for p in csr.params[:7]] == [
        "const unsigned long long* indptr", "const unsigned int* pixel", "const float* area",
        "const double* weight", "const unsigned short* frames", "unsigned long long n_pixels",
        "int nb",
    ]  # fmt: skip
    line = ks["ri_lineout"]
    assert str(line.params[7]) == "const double* cross"
    assert [p.name for p in line.params][-2:] == ["line", "line_sigma"]
    assert ks["ri_cross_i64"].params[3].dtype == np.int64
    fit = parse_kernels(kernel_source("fit"))
    assert set(fit) == {"rf_fit_jobs"}
    names = [p.name for p in fit["rf_fit_jobs"].params]
    assert names[names.index("bin") + 1] == "bin_average"
    assert fit["rf_fit_jobs"].params[names.index("bin_average")].dtype == np.int32


def test_parser_agrees_with_nvrtc_ptx():
    """Parameter counts and widths of the parsed signatures equal those NVRTC compiles."""
    pytest.importorskip("cupy", reason="NVRTC check needs CuPy")
    from radint.exceptions import BackendUnavailableError

    for m in MODULES:
        try:
            ptx = radint.gpu.compile_ptx(m, arch="compute_80")
        except BackendUnavailableError as e:
            pytest.skip(f"NVRTC not loadable here: {e}")
        entries = dict(re.findall(r"\.entry (\w+)\(([^)]*)\)", ptx))
        ks = parse_kernels(kernel_source(m))
        assert set(entries) == set(ks), m
        for name, k in ks.items():
            widths = [int(w) for w in re.findall(r"\.param \.[usbf](\d+)", entries[name])]
            want = [64 if p.pointer else p.dtype.itemsize * 8 for p in k.params]
            assert widths == want, (name, widths, want)


def test_recorder_rejects_wrong_launches(fake_cupy):
    """The checker itself: a wrong count, an int64 for `int`, a float32 array for `double*`, a
    host array, a Python int, a block beyond __launch_bounds__."""
    ks = parse_kernels(kernel_source("fit"))
    k = ks["rf_fit_jobs"]
    cp = fake_cupy
    good = []
    for p in k.params:
        good.append(cp.zeros(4, dtype=p.dtype) if p.pointer else p.dtype.type(1))
    rec = KernelRecorder(k, [], extents=False)
    rec((1,), (64,), tuple(good))
    i_int = [p.name for p in k.params].index("bin_average")
    i_ptr = [p.name for p in k.params].index("values")

    def with_arg(i: int, v: Any) -> tuple:
        return (*good[:i], v, *good[i + 1 :])

    bad = {
        "arguments for": tuple(good[:-1]),
        "expected np.int32": with_arg(i_int, np.int64(1)),
        "expected float64 elements": with_arg(i_ptr, cp.zeros(4, dtype=np.float32)),
        "host numpy": with_arg(i_ptr, np.zeros(4)),
        "Python int": with_arg(i_int, 1),
        "not C-contiguous": with_arg(i_ptr, cp.zeros((4, 4)).transpose(1, 0)),
    }
    for match, args in bad.items():
        with pytest.raises(LaunchError, match=match):
            rec((1,), (64,), args)
    csr = KernelRecorder(
        parse_kernels(kernel_source("integrate"))["ri_csr_u8_f64"], [], extents=False
    )
    args = tuple(
        cp.zeros(4, dtype=p.dtype) if p.pointer else p.dtype.type(1) for p in csr.kernel.params
    )
    with pytest.raises(LaunchError, match="exceeds 256"):
        csr((1,), (512,), args)
    with pytest.raises(LaunchError, match="zero"):
        csr((0,), (256,), args)


# ---------------------------------------------------------------------------------- launch tests
@pytest.mark.parametrize("opts", OPTIONS)
def test_integrator_launches_match_signatures(fake_cupy, config, maps, opts):
    it = _integrator(config, maps, opts)
    _drive_integrator(it, config, list(FRAME_DTYPES))
    names = {launch.kernel for launch in launched()}
    acc = "f32" if opts["precision"] == "float32" else "f64"
    want = {"ri_lineout"}
    want |= {f"ri_csr{k}_{s}_{acc}" for k in ("", "_lanes") for s in FRAME_DTYPES.values()}
    want |= {f"ri_interleave_{s}" for s in FRAME_DTYPES.values()}
    # Variance given or Poisson in every drive: every lineout mode adds the shared-pixel term.
    want |= {f"ri_cross_{s}" for s in FRAME_DTYPES.values()}
    if opts["error_model"] == "azimuthal":  # the spread where no variance is given
        want |= {f"ri_spread_{s}" for s in FRAME_DTYPES.values()}
    assert names == want, (sorted(want - names), sorted(names - want))


def test_every_kernel_is_launched(fake_cupy, config, maps):
    """Both accumulators, every frame dtype, one and eight frames per pass, the shared-pixel
    term, the fitter with and without bin averaging: every kernel of both sources."""
    for precision in ("float64", "float32"):
        opts = dict(compat=None, lineout_mode="area_weighted", error_model="poisson",
                    precision=precision, scale="scale", wmap="plain")  # fmt: skip
        it = _integrator(config, maps, opts)
        _drive_integrator(it, config, list(FRAME_DTYPES), counts=(None, MAX_NB + 1), extras=False)
    opts = dict(compat=None, lineout_mode="area_weighted", error_model="azimuthal",
                precision="float64", scale="scale", wmap="plain")  # fmt: skip
    it = _integrator(config, maps, opts)
    _drive_integrator(it, config, list(FRAME_DTYPES), counts=(None,), extras=False)
    _drive_fitter(config, maps)
    names = {launch.kernel for launch in launched()}
    assert names <= set(all_kernels())  # get_function refuses any other name
    missing = sorted(set(all_kernels()) - names)
    assert not missing, f"kernels no launch path reaches: {missing}"


def _drive_fitter(config, maps) -> None:
    from radint.gpu.fit import CudaFitter

    cp = sys.modules["cupy"]
    x = np.arange(200, dtype=np.float64) * 0.5
    for bin_average in (True, False):
        f = CudaFitter(x, [20.0, 40.5, 70.0], bin_average=bin_average)
        ys = np.random.default_rng(1).poisson(50, size=(5, x.size)).astype(np.float64)
        for lineouts in (ys, ys[0], cp.asarray(ys), ys.astype(np.float32)):
            out = f.fit(lineouts)
            assert out["values"].shape[-2:] == (3, 7) and out["status"].dtype == np.uint8
    rf = [launch for launch in launched() if launch.kernel == "rf_fit_jobs"]
    params = [p.name for p in all_kernels()["rf_fit_jobs"].params]
    flags = {int(launch.args[params.index("bin_average")]) for launch in rf}
    assert flags == {0, 1}


def test_cuda_fitter_launches_match_signature(fake_cupy, config, maps):
    _drive_fitter(config, maps)
    assert {launch.kernel for launch in launched()} == {"rf_fit_jobs"}


def test_cuda_fitter_cpu_fallback_path(fake_cupy):
    """Jobs the kernel leaves to the CPU (status 254) are refitted from the device lineouts."""
    from radint.gpu.fit import CPU_FALLBACK, CudaFitter

    def hook(kernel: Kernel, args: dict[str, Any]) -> None:
        args["status"][0] = CPU_FALLBACK

    _FAKE_STATE["hook"] = hook
    x = np.arange(200, dtype=np.float64)
    ys = np.random.default_rng(2).poisson(50, size=(3, x.size)).astype(np.float64)
    out = CudaFitter(x, [50.0, 120.0]).fit(ys)
    assert (out["status"][0] != CPU_FALLBACK).all()
    # Refitted with every position, so a job cut from a crowded chain keeps the kernel's ROI:
    # the same numbers as the CPU fitter on the whole row.
    crowd = [float(c) for c in range(20, 181, 5)]  # 33 peaks: one chain, cut at peak 16

    def second_job(kernel: Kernel, args: dict[str, Any]) -> None:
        args["status"][0, 16:] = CPU_FALLBACK

    _FAKE_STATE["hook"] = second_job
    out = CudaFitter(x, crowd, max_peaks_per_job=28).fit(ys)
    cpu = radint._core.fit_peaks(x, ys[:1], crowd, max_peaks_per_job=28)
    np.testing.assert_array_equal(out["status"][0, 16:], cpu["status"][0, 16:])
    np.testing.assert_array_equal(out["values"][0, 16:], cpu["values"][0, 16:])


@pytest.mark.parametrize("bin_average", [True, False])
def test_integrator_with_gpu_fit_launches_match(fake_cupy, config, maps, bin_average):
    """Integrator(backend="cuda", fit=...) fits on the device the lineouts it integrated."""
    it = Integrator(config, backend="cuda", detector_map=maps["plain"],
                    fit={"positions_px": [20.0, 40.0], "bin_average": bin_average})  # fmt: skip
    assert it.fit.runs_on_gpu
    r = it.integrate_stack(_frames(config, np.uint16, MAX_NB + 1))
    assert r.peaks is not None
    rf = [launch for launch in launched() if launch.kernel == "rf_fit_jobs"]
    assert len(rf) == 1
    params = [p.name for p in all_kernels()["rf_fit_jobs"].params]
    assert int(rf[0].args[params.index("bin_average")]) == int(bin_average)
    n_curves = int(rf[0].args[params.index("n_curves")])
    assert n_curves == MAX_NB + 1


def test_cuda_integrator_streams_reuse_buffers(fake_cupy, config, maps):
    """One stream: the pinned buffer is reused only after its copy's event (a reuse without
    the wait is caught); dtype changes reallocate; warm_up looks up only kernels that exist;
    lists of host or device frames, checked element by element."""
    it = Integrator(config, backend="cuda", detector_map=maps["plain"], fit=None)
    gpu = radint.gpu.CudaIntegrator(it, n_streams=1)
    gpu.warm_up()
    for dtype in (np.uint8, np.float64, np.uint8):
        out = gpu.integrate(_frames(config, dtype, 3 * MAX_NB + 1))
        assert out["lineout"].shape == ((3 * MAX_NB + 1) * it.map.n_r,)
    # A list of separately held frames is staged frame by frame into the pinned buffer.
    frames = _frames(config, np.uint16, MAX_NB + 2)
    staged = []
    real_stage = gpu._stage

    def stage(k, dtype, parts, stream):
        dev = real_stage(k, dtype, parts, stream)
        staged.append(np.concatenate(parts))
        assert np.array_equal(dev._a[: staged[-1].size], staged[-1])
        return dev

    gpu._stage = stage
    # Frames in page-locked memory (Integrator.host_buffer) are DMA'd from there: no staging.
    locked = it.host_buffer(frames.shape, frames.dtype)
    locked[...] = frames
    copies = []
    real_copy = radint._core.copy_bytes
    radint._core.copy_bytes = lambda *a, **k: copies.append(a)
    try:
        gpu.integrate(locked, keys=("lineout",))
    finally:
        radint._core.copy_bytes = real_copy
    assert copies == [] and np.array_equal(np.concatenate(staged), frames.reshape(-1))
    staged.clear()
    out = gpu.integrate(list(frames), keys=("lineout",))
    assert set(out) == {"lineout", "n_frames"} and out["n_frames"] == MAX_NB + 2
    assert np.array_equal(np.concatenate(staged), frames.reshape(-1))
    with pytest.raises(radint.exceptions.DtypeError, match="one dtype"):
        gpu.integrate([frames[0], frames[1].astype(np.uint32)])
    cp = fake_cupy
    with pytest.raises(radint.exceptions.DtypeError, match="one kind"):
        gpu.integrate([frames[0], cp.asarray(frames[1])])
    with pytest.raises(radint.exceptions.ShapeError, match="expected shape"):
        gpu.integrate([cp.asarray(frames[0]), cp.asarray(frames[1][:, :-1].copy())])
    dev = gpu.integrate([cp.asarray(f) for f in frames[:3]], keys=("lineout",))
    assert dev["n_frames"] == 3

    # The staging race the streams' events prevent: without the wait for the previous copy
    # from a pinned buffer, the next pass would write into it while the DMA may still read it.
    real_sync = type(cp.cuda.Event()).synchronize
    type(cp.cuda.Event()).synchronize = lambda self: None
    try:
        with pytest.raises(LaunchError, match="may still read"):
            gpu.integrate(_frames(config, np.uint16, 2 * MAX_NB))
    finally:
        type(cp.cuda.Event()).synchronize = real_sync
    for s in gpu._streams:
        s.synchronize()
    blocks = {(launch.kernel.startswith("ri_csr_lanes"), launch.block) for launch in launched()
              if launch.kernel.startswith("ri_csr")}  # fmt: skip
    assert blocks == {(False, (radint.gpu.CSR_BLOCK,)), (True, (radint.gpu.LANES_BLOCK,))}


def test_frames_in_lanes_only_for_passes_that_fill_the_gpu(fake_cupy, config, maps):
    """A pass goes to the frames-in-lanes kernel only with LANES_MIN_FRAMES frames or more and
    (bins × frames) threads to fill every SM (a 1-D map's few long bins would leave most of
    the GPU idle); otherwise to the lane-split kernel."""
    it = Integrator(config, backend="cuda", detector_map=maps["plain"], fit=None)
    gpu = radint.gpu.CudaIntegrator(it)
    frames = _frames(config, np.uint16, MAX_NB + radint.gpu.LANES_MIN_FRAMES - 1)

    def kernels(resident_threads: int) -> list[str]:
        gpu._resident_lane_threads = resident_threads
        _FAKE_STATE["log"].clear()
        gpu.integrate(frames, keys=("cake",))
        return [launch.kernel for launch in launched() if launch.kernel.startswith("ri_csr")]

    # Passes of 8 and LANES_MIN_FRAMES - 1 frames.
    assert kernels(0) == ["ri_csr_lanes_u16_f64", "ri_csr_u16_f64"]
    assert kernels(it.map.n_bins * MAX_NB) == ["ri_csr_lanes_u16_f64", "ri_csr_u16_f64"]
    assert kernels(it.map.n_bins * MAX_NB + 1) == ["ri_csr_u16_f64", "ri_csr_u16_f64"]
    # The real sizing: SMs × LANES_WARPS_PER_SM warps of 32 threads.
    fresh = radint.gpu.CudaIntegrator(it)
    assert fresh._resident_lane_threads == radint.gpu.LANES_WARPS_PER_SM * 32


def test_recorder_checks_extents(fake_cupy):
    """Sizes the kernel indexes (from its scalar arguments) and enough threads for them."""
    cp = fake_cupy
    k = parse_kernels(kernel_source("integrate"))["ri_lineout"]
    n_r, n_eta, rows = 3, 2, 6  # two frames
    sizes = {"mask_hit": n_r * n_eta, "cross": rows, "line": rows, "line_sigma": rows}

    def args(**override: Any) -> tuple:
        scal = {"n_eta": np.int32(n_eta), "n_r": np.uint64(n_r), "n_rows": np.uint64(rows)}
        out = []
        for p in k.params:
            n = override.get(p.name, sizes.get(p.name, rows * n_eta))
            out.append(
                cp.zeros(n, dtype=p.dtype) if p.pointer else scal.get(p.name, p.dtype.type(0))
            )
        return tuple(out)

    rec = KernelRecorder(k, [])
    rec((1,), (256,), args())
    with pytest.raises(LaunchError, match="line holds 5 elements, needs >= 6"):
        rec((1,), (256,), args(line=rows - 1))
    with pytest.raises(LaunchError, match="mask_hit holds 12 elements, needs == 6"):
        rec((1,), (256,), args(mask_hit=rows * n_eta))
    with pytest.raises(LaunchError, match="threads for 192 work items"):  # a warp per row
        rec((1,), (32,), args())


# ------------------------------------------------------------------------------ staging layouts
@pytest.mark.parametrize("seed", range(40))
def test_staging_random_layouts(fake_cupy, config, maps, monkeypatch, seed):
    """Random frame layouts (2-D frames and 3-D stacks of 0..19 frames, some page-locked, as a
    list or one array), chunk sizes and stream counts: every pass's device buffer is written
    once, contiguously and in order, up to its frames and no further, and the passes together
    hold exactly the input frames."""
    import random

    rng = random.Random(seed)
    writes: list[tuple[int, int]] = []
    real_copy = _MemoryPointer.copy_from_host_async

    def recording(self, src, nbytes, stream=None):
        writes.append((self._owner._a.ctypes.data, int(nbytes)))
        return real_copy(self, src, nbytes, stream)

    monkeypatch.setattr(_MemoryPointer, "copy_from_host_async", recording)
    dtype = np.dtype(rng.choice([np.uint8, np.uint16, np.uint32, np.float32, np.float64]))
    monkeypatch.setattr(radint.gpu, "STAGE_CHUNK_BYTES", rng.choice([4001, 7777, 96000, 64 << 20]))
    it = Integrator(config, backend="cuda", detector_map=maps["plain"], fit=None)
    gpu = radint.gpu.CudaIntegrator(it, n_streams=rng.randint(1, 3))
    n_pix = gpu.n_pixels
    blocks, n = [], 0
    for _ in range(rng.randint(1, 7)):
        stack = rng.random() < 0.5
        k = rng.randint(0, 2 * MAX_NB + 3) if stack else 1
        data = (np.arange(n, n + k)[:, None] * 7 + np.arange(n_pix)[None, :]) % 200
        data = data.astype(dtype).reshape(k, *config.shape)
        n += k
        if rng.random() < 0.3:
            locked = it.host_buffer(data.shape, dtype)
            locked[...] = data
            data = locked
        blocks.append(data if stack else data[0])
    want = np.concatenate([b.reshape(-1) for b in blocks])
    staged = []
    real_stage = gpu._stage

    def stage(k, dt, parts, stream):
        dev_buf = gpu._frame_buffers(k, dt)[1]
        writes.clear()
        dev = real_stage(k, dt, parts, stream)
        m = sum(p.size for p in parts)
        pos = 0
        for ptr, nbytes in writes:
            assert ptr - dev_buf._a.ctypes.data == pos
            pos += nbytes
        assert pos == m * dt.itemsize and m % n_pix == 0 and m // n_pix <= MAX_NB
        staged.append(dev._a[:m].copy())
        return dev

    gpu._stage = stage
    arg = blocks if (len(blocks) > 1 or rng.random() < 0.8) else blocks[0]
    assert gpu.integrate(arg, keys=("lineout",))["n_frames"] == n
    assert len(staged) == -(-n // MAX_NB)
    assert all(s.size == MAX_NB * n_pix for s in staged[:-1])
    got = np.concatenate(staged) if staged else want[:0]
    assert np.array_equal(got, want)


def test_pass_blocks_and_empty_inputs(fake_cupy, config, maps):
    """The blocks of a pass are the frames f0 .. f0+nb-1 in order, whatever the block sizes;
    0-frame inputs integrate nothing; an empty list is refused; device views need not be
    contiguous in a list (they are concatenated)."""
    import random

    cp = fake_cupy
    it = Integrator(config, backend="cuda", detector_map=maps["plain"], fit=None)
    gpu = radint.gpu.CudaIntegrator(it, n_streams=1)
    n_pix = gpu.n_pixels
    rng = random.Random(1)
    for _ in range(500):
        sizes = [rng.randint(0, 6) for _ in range(rng.randint(1, 6))]
        starts = np.cumsum([0, *sizes])
        if starts[-1] == 0:
            continue
        blocks = [np.arange(a * n_pix, b * n_pix) for a, b in itertools.pairwise(starts)]
        f0 = rng.randint(0, starts[-1] - 1)
        nb = rng.randint(1, starts[-1] - f0)
        got = np.concatenate(gpu._pass_blocks(blocks, f0, nb))
        assert np.array_equal(got, np.arange(f0 * n_pix, (f0 + nb) * n_pix))
    empty = np.zeros((0, *config.shape), np.uint16)
    assert gpu.integrate(empty, keys=("lineout",))["n_frames"] == 0
    assert gpu.integrate([empty, empty], keys=("lineout",))["n_frames"] == 0
    assert gpu.integrate([cp.asarray(empty)], keys=("lineout",))["n_frames"] == 0
    with pytest.raises(radint.exceptions.ShapeError, match="empty list"):
        gpu.integrate([])
    frame = cp.asarray(np.ones(config.shape[::-1], np.uint16)).T  # a non-contiguous view
    assert gpu.integrate([frame, frame], keys=("lineout",))["n_frames"] == 2


def test_kernels_that_cannot_be_set_up_fall_back_under_auto(fake_cupy, config, maps, monkeypatch,
                                                            caplog):  # fmt: skip
    """A GPU that is there but cannot take the kernels (NVRTC missing or too old for it):
    backend="auto" integrates on the CPU with a warning saying why; backend="cuda" raises
    BackendUnavailableError naming the cause (a raw CuPy error escaped before)."""
    from radint.exceptions import BackendUnavailableError

    def broken(*args, **kwargs):
        raise RuntimeError("NVRTC_ERROR_INVALID_OPTION: --gpu-architecture=sm_120")

    broken.cache_clear = lambda: None  # as the lru_cache it stands in for (fixture teardown)
    monkeypatch.setattr(radint.gpu, "_module", broken)
    with caplog.at_level("WARNING", logger="radint"):
        it = Integrator(config, backend="auto", detector_map=maps["plain"], fit=None)
    assert it.backend == "cpu" and "NVRTC_ERROR_INVALID_OPTION" in caplog.text
    frame = _frames(config, np.uint16, 1)[0]
    cpu = Integrator(config, backend="cpu", detector_map=maps["plain"], fit=None)
    np.testing.assert_array_equal(it.integrate(frame).cake, cpu.integrate(frame).cake)
    with pytest.raises(BackendUnavailableError, match="NVRTC_ERROR_INVALID_OPTION"):
        Integrator(config, backend="cuda", detector_map=maps["plain"], fit=None)


def test_own_dark_is_uploaded_once(fake_cupy, config, maps):
    """Integrator(dark=) on CUDA: the dark goes to the device once, not with every call; a
    per-call dark is uploaded for its call."""
    dark = np.full(config.shape, 3.0)
    it = Integrator(config, backend="cuda", detector_map=maps["plain"], fit=None, dark=dark)
    frames = _frames(config, np.uint16, 2)
    it.integrate(frames[0])
    gpu = it._gpu_backend()
    first = gpu._own_dark_d
    assert first is not None
    it.integrate(frames[1])
    assert gpu._own_dark_d is first and gpu._per_pixel(it._dark, "dark") is first
    assert gpu._per_pixel(np.full(dark.size, 2.0), "dark") is not first
