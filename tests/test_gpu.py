"""CUDA backend: kernel arithmetic checked on the CPU, NVRTC compile, backend choice, GPU parity.

Without a GPU the kernels are still proven three ways:

* ``test_nvrtc_compiles_every_kernel``: NVRTC (CuPy's NVRTC wheel, no driver needed) compiles
  ``kernels/integrate.cu`` to PTX, so a syntax error never lands;
* ``test_cuh_harness_*``: ``tests/gpu_harness/cuh_harness.cpp`` compiles the same
  ``integrate.cuh`` with g++, emulates the kernels' schedule (one 32-lane warp per bin, strided
  entries, shuffle-down tree, 8-frame batches) and is compared with the Rust engine;
* backend selection falls back / fails with the install hint.

The ``gpu``-marked tests run the real kernels against Rust and skip where no device is usable.
``test_cuda_path_on_fake_cupy`` runs them anyway, with the stand-in CuPy of
``tests/gpu_harness/fake_cupy``, whose ``RawModule`` compiles the kernel sources with g++ on a CPU
runtime of CUDA (``tests/gpu_harness/cuda_emu.h``: a fiber per thread, shuffles as rendezvous of
their lanes, device allocations ending at an inaccessible page), so the kernels themselves (index arithmetic, grid sizes, output layout, warp
reductions) and the Python side of the CUDA backend run on every CI machine.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest

from radint import _core
from radint.detector_map import DetectorMap
from radint.exceptions import BackendUnavailableError, InvalidInputError, ShapeError
from radint.integrator import Integrator

HARNESS = Path(__file__).resolve().parent / "gpu_harness" / "cuh_harness.cpp"
KERNELS = Path(__file__).resolve().parents[1] / "python" / "radint" / "gpu" / "kernels"
SUFFIX = {
    np.dtype(np.uint8): "u8",
    np.dtype(np.uint16): "u16",
    np.dtype(np.uint32): "u32",
    np.dtype(np.int32): "i32",
    np.dtype(np.int64): "i64",
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
}
RULES = {"radint": 0, "midas-cpu": 1, "midas-gpu": 2}
LINEOUT = {"area_weighted": 0, "midas_nonzero_mean": 1}


def _cuda_ok() -> tuple[bool, str]:
    from radint.gpu import cuda_available

    return cuda_available()


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small_map_mod():
    from radint import IntegrationConfig
    from tests.conftest import SMALL

    cfg = IntegrationConfig.from_text(SMALL, "small.txt")
    return cfg, DetectorMap.build(cfg, n_threads=1)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from tests.conftest import compile_cuh_harness

    return compile_cuh_harness(HARNESS, tmp_path_factory.mktemp("cuh") / f"{HARNESS.stem}.so")


def _ptr(a: np.ndarray | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if a is None else a.ctypes.data)


def harness_integrate(
    lib,
    m: DetectorMap,
    frames: np.ndarray,
    dark=None,
    scale=None,
    error_model="poisson",
    variance=None,
    precision="float64",
    batch=8,
    rules="radint",
    lineout="area_weighted",
    normalize=True,
    empty=np.nan,
) -> dict:
    """integrate.cuh on the host, laid out like ``radint._core.integrate``'s dict."""
    frames = np.ascontiguousarray(frames)
    n_pixels = m.shape[0] * m.shape[1]
    n = frames.size // n_pixels
    n_bins = m.n_bins
    var_mode = 2 if variance is not None else (1 if error_model == "poisson" else 0)
    acc = "f32" if precision == "float32" else "f64"
    signal = np.zeros(n * n_bins)
    area = np.zeros(n * n_bins)
    count = np.zeros(n * n_bins, dtype=np.uint32)
    var_out = np.zeros(n * n_bins) if var_mode else None
    fn = getattr(lib, f"ri_host_csr_{SUFFIX[frames.dtype]}_{acc}")
    fn.restype = ctypes.c_int
    u64 = ctypes.c_uint64
    rc = fn(
        _ptr(m.indptr),
        _ptr(m.pixel),
        _ptr(m.area),
        _ptr(m.weight),
        _ptr(frames),
        u64(n_pixels),
        u64(n),
        u64(n_bins),
        _ptr(dark),
        _ptr(scale),
        ctypes.c_int(var_mode),
        _ptr(variance),
        _ptr(signal),
        _ptr(area),
        _ptr(var_out),
        _ptr(count),
        ctypes.c_int(batch),
    )
    assert rc == 0
    cross = None
    if var_mode:
        c_indptr, c_pixel, c_weight = m._core.eta_cross()
        cross = np.zeros(n * m.n_r)
        getattr(lib, f"ri_host_cross_{SUFFIX[frames.dtype]}")(
            _ptr(c_indptr), _ptr(c_pixel), _ptr(c_weight), _ptr(frames), u64(n_pixels),
            u64(m.n_r), u64(n * m.n_r), _ptr(dark), _ptr(scale), ctypes.c_int(var_mode),
            _ptr(variance), _ptr(cross),
        )  # fmt: skip
    cake = np.zeros(n * n_bins)
    line = np.zeros(n * m.n_r)
    sigma = np.zeros(n * n_bins) if var_mode else None
    line_sigma = np.zeros(n * m.n_r) if var_mode else None
    lib.ri_host_finalize(
        _ptr(signal),
        _ptr(area),
        _ptr(var_out),
        _ptr(count),
        _ptr(m.mask_hit),
        _ptr(cross),
        u64(n),
        u64(m.n_r),
        ctypes.c_int(m.n_eta),
        ctypes.c_int(RULES[rules]),
        ctypes.c_int(int(normalize)),
        ctypes.c_int(LINEOUT[lineout]),
        ctypes.c_int(0),
        ctypes.c_double(empty),
        _ptr(cake),
        _ptr(sigma),
        _ptr(line),
        _ptr(line_sigma),
    )

    def eta_major(c: np.ndarray) -> np.ndarray:
        # The kernels' bin-major cake, in the η-major layout the engines return.
        return c.reshape(n, m.n_r, m.n_eta).transpose(0, 2, 1).ravel()

    d = {"n_frames": n, "signal": signal, "area": area, "count": count, "cake": eta_major(cake)}
    d["lineout"] = line
    if var_mode:
        d.update(variance=var_out, cake_sigma=eta_major(sigma), lineout_sigma=line_sigma)
    return d


def rust_integrate(m, frames, dark=None, scale=None, error_model="poisson", variance=None,
                   precision="float64", rules="radint", lineout="area_weighted", normalize=True,
                   empty=np.nan) -> dict:  # fmt: skip
    """The CPU engine's outputs, less its count of non-finite values (the CUDA path has none:
    the Integrator counts those with numpy there)."""
    out = _core.integrate(
        m._core,
        np.ascontiguousarray(frames),
        dark=dark,
        scale=scale,
        error_model="given" if variance is not None else error_model,
        variance=variance,
        precision=precision,
        normalize=normalize,
        rules=rules,
        lineout=lineout,
        empty_value=empty,
        nan_masked_bins=False,
        n_threads=1,
    )
    del out["nonfinite"]
    return out


def assert_same(got: dict, want: dict, rtol: float) -> None:
    """Same keys; counts exact; floats within ``rtol`` relative, with an absolute floor of
    ``rtol`` × the array's largest magnitude (dark subtraction can cancel a bin to ~0)."""
    assert set(got) == set(want)
    assert got["n_frames"] == want["n_frames"]
    for k, w in want.items():
        if k == "n_frames":
            continue
        g, w = np.asarray(got[k]), np.asarray(w)
        assert g.shape == w.shape, k
        if k == "count":
            np.testing.assert_array_equal(g, w, err_msg=k)
            continue
        finite = w[np.isfinite(w)]
        floor = rtol * (np.abs(finite).max() if finite.size else 1.0)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=floor, equal_nan=True, err_msg=k)


def _inputs(shape, rng, n_frames, dtype):
    if np.dtype(dtype).kind == "f":
        f = rng.uniform(-2, 500, (n_frames, *shape)).astype(dtype)
        f.reshape(n_frames, -1)[:, rng.choice(f[0].size, 40, replace=False)] = np.nan
    else:
        hi = min(np.iinfo(dtype).max, 5000)
        f = rng.integers(0, hi, (n_frames, *shape)).astype(dtype)
    return f


def _random_map(rng, shape=(37, 41), n_r=23, n_eta=7, weights=True) -> DetectorMap:
    """A random CSR map with empty bins, repeated pixels, MIDAS weights and masked-touched bins."""
    n_bins = n_r * n_eta
    counts = rng.integers(0, 90, n_bins)
    counts[rng.choice(n_bins, 10, replace=False)] = 0
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
    nnz = int(indptr[-1])
    pixel = rng.integers(0, shape[0] * shape[1], nnz).astype(np.uint32)
    area = rng.uniform(0, 1, nnz).astype(np.float32)
    weight = rng.uniform(0, 2, nnz) if weights else None
    mask_hit = (rng.uniform(0, 1, n_bins) < 0.1).astype(np.uint8)
    return DetectorMap.from_arrays(
        shape,
        np.linspace(0, n_r, n_r + 1),
        np.linspace(-180, 180, n_eta + 1),
        indptr,
        pixel,
        area,
        weight=weight,
        mask_hit=mask_hit,
    )


# ---------------------------------------------------------------------------------- harness
@pytest.mark.parametrize("dtype", list(SUFFIX))
def test_cuh_harness_matches_rust_all_dtypes(harness, small_map_mod, dtype):
    """Every frame dtype, 11 frames (one 8-frame batch + a 3-frame tail), dark + NaN-masked
    scale + Poisson variance: the header's float64 arithmetic equals Rust's to 1e-12 (only the
    summation order differs), and the frames-in-lanes sums (passes of frames, interleaved)
    equal the lane-split sums (single frames) bit for bit."""
    _, m = small_map_mod
    rng = np.random.default_rng(10)
    frames = _inputs(m.shape, rng, 11, dtype)
    n_pix = frames[0].size
    dark = rng.uniform(0, 3, n_pix)
    scale = rng.uniform(0.5, 1.5, n_pix)
    scale[rng.choice(n_pix, 300, replace=False)] = np.nan
    by_batch = {}
    for batch in (1, 8):
        got = by_batch[batch] = harness_integrate(
            harness, m, frames, dark=dark, scale=scale, batch=batch
        )
        assert_same(got, rust_integrate(m, frames, dark=dark, scale=scale), 1e-12)
    for key, single in by_batch[1].items():
        np.testing.assert_array_equal(by_batch[8][key], single, err_msg=key)


@pytest.mark.parametrize("rules", list(RULES))
@pytest.mark.parametrize("lineout", list(LINEOUT))
@pytest.mark.parametrize("normalize", [True, False])
def test_cuh_harness_finalize_rules(harness, rules, lineout, normalize):
    """The three rule sets × both lineout reductions × Normalize on a random map with MIDAS
    weights, empty bins and masked-touched bins; given variance; dense and NaN paths."""
    rng = np.random.default_rng(11)
    m = _random_map(rng)
    empty = 0.0 if rules != "radint" else np.nan
    kw = dict(rules=rules, lineout=lineout, normalize=normalize, empty=empty)
    u16 = rng.integers(0, 900, (3, *m.shape)).astype(np.uint16)
    f64 = rng.uniform(-1, 50, (2, *m.shape))
    f64[0, 3, 4] = np.nan
    variance = rng.uniform(0, 4, u16[0].size)
    for frames, extra in ((u16, {}), (f64, {"variance": variance}), (u16, {"error_model": "none"})):
        got = harness_integrate(harness, m, frames, **extra, **kw)
        assert_same(got, rust_integrate(m, frames, **extra, **kw), 1e-12)


def test_cuh_harness_float32_accumulation(harness, small_map_mod):
    """float32 accumulators: same tolerance the GPU parity test uses (1e-4 relative)."""
    _, m = small_map_mod
    rng = np.random.default_rng(12)
    frames = _inputs(m.shape, rng, 9, np.uint32)
    dark = rng.uniform(0, 3, frames[0].size)
    got = harness_integrate(harness, m, frames, dark=dark, precision="float32")
    assert_same(got, rust_integrate(m, frames, dark=dark, precision="float32"), 1e-4)


# ---------------------------------------------------------------------------------- NVRTC
def test_nvrtc_compiles_every_kernel():
    """NVRTC compiles integrate.cu (header inlined) to PTX without a GPU or driver, and every
    kernel the launcher asks for is in it."""
    pytest.importorskip("cupy", reason="NVRTC compile check needs CuPy (pip install 'radint[gpu]')")
    from radint.gpu import FRAME_DTYPES, compile_ptx, cupy_nvrtc_options

    cupy_nvrtc_options()  # CuPy without the CUDA headers fails here, not as a skip below
    try:
        ptx = compile_ptx(arch="compute_80")
    except BackendUnavailableError as e:  # NVRTC shared library absent (no nvidia-cuda-nvrtc)
        pytest.skip(f"NVRTC library not loadable here: {e}")
    names = ["ri_lineout"]
    for s in FRAME_DTYPES.values():
        names += [f"ri_csr_{s}_{a}" for a in ("f64", "f32")]
        names.append(f"ri_cross_{s}")
    for name in names:
        assert f".entry {name}(" in ptx, name


def test_kernels_compile_with_the_options_and_headers_cupy_uses():
    """Audit: CuPy 14 compiles every kernel with the CUDA runtime headers on its include path
    and refuses ("Failed to find CUDA headers") where they are missing, which the NVRTC wheel
    alone left them: Integrator(backend="cuda") failed at set-up, "auto" fell back to the CPU.
    The extras bring nvidia-cuda-runtime; compile_ptx compiles with CuPy's options (its include
    paths, -ftz=true), so this CPU check fails where a GPU would."""
    cupy = pytest.importorskip("cupy", reason="needs CuPy (pip install 'radint[gpu]')")
    from radint.gpu import cupy_nvrtc_options

    options = cupy_nvrtc_options()
    assert options.count("--fmad=false") == 1 and options[-1] == "-ftz=true"
    if int(cupy.__version__.split(".")[0]) >= 14:
        includes = [Path(o[2:]) for o in options if o.startswith("-I")]
        assert any((d / "cuda_runtime.h").is_file() for d in includes), options


def test_missing_cuda_headers_name_the_extra_that_brings_them(monkeypatch):
    pytest.importorskip("cupy", reason="needs CuPy")
    core = pytest.importorskip("cupy._core.core")
    if not hasattr(core, "assemble_cupy_compiler_options"):
        pytest.skip("this CuPy needs no CUDA headers")
    import radint.gpu

    def no_headers(options):
        raise RuntimeError("Failed to find CUDA headers.")

    monkeypatch.setattr(core, "assemble_cupy_compiler_options", no_headers)
    monkeypatch.setattr(radint.gpu, "_headers_hint", lambda: "install radint[gpu]")
    with pytest.raises(BackendUnavailableError, match=r"no CUDA headers.*radint\[gpu\]"):
        radint.gpu.cupy_nvrtc_options()
    radint.gpu._module.cache_clear()
    try:  # the module set-up says so before CuPy compiles (or needs a device)
        with pytest.raises(BackendUnavailableError, match="no CUDA headers"):
            radint.gpu._module(0)
    finally:
        radint.gpu._module.cache_clear()

    def no_nvrtc(options):
        raise RuntimeError("CuPy failed to load libnvrtc.so.12")

    monkeypatch.setattr(core, "assemble_cupy_compiler_options", no_nvrtc)
    with pytest.raises(BackendUnavailableError, match="cannot prepare a kernel compile"):
        radint.gpu.cupy_nvrtc_options()


def test_the_headers_hint_names_an_installed_wheel_cupy_does_not_see(tmp_path, monkeypatch):
    """Review: where Python imports the nvidia-cuda-runtime wheel but CuPy does not look there
    (an environment layered through .pth files), "install radint[gpu]" misled."""
    import importlib.util

    import radint.gpu

    include = tmp_path / "nvidia" / "cuda_runtime" / "include"
    include.mkdir(parents=True)
    (include / "cuda_runtime.h").write_text("")
    spec = importlib.machinery.ModuleSpec("nvidia.cuda_runtime", None, is_package=True)
    spec.submodule_search_locations = [str(include.parent)]
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: spec if name == "nvidia.cuda_runtime" else None
    )
    assert "set CUDA_PATH to that folder" in radint.gpu._headers_hint()
    assert str(include.parent) in radint.gpu._headers_hint()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "radint[gpu]" in radint.gpu._headers_hint()


def test_only_the_nvrtc_of_cupy_s_cuda_major_is_preloaded(monkeypatch):
    """Audit: the first libnvrtc found was loaded (CUDA 12's wheel before CUDA 13's), and CuPy
    takes an NVRTC already loaded over the one it looks for: a CUDA 13 CuPy beside torch's
    CUDA 12 wheel would compile with NVRTC 12."""
    import importlib.util

    import radint.gpu

    names = ["libnvrtc.so.12", "libnvrtc.so.12.9.86", "libnvrtc.so.13", "libnvrtc.so.130"]
    libs = [Path("/x", n) for n in names]
    assert [p.name for p in radint.gpu._of_cuda_major(libs, 12)] == names[:2]
    assert [p.name for p in radint.gpu._of_cuda_major(libs, 13)] == ["libnvrtc.so.13"]
    assert radint.gpu._of_cuda_major(libs, None) == libs
    cupy = pytest.importorskip("cupy", reason="needs CuPy")
    try:
        built_for = cupy.cuda.runtime.runtimeGetVersion() // 1000
    except Exception:  # no CUDA runtime library to ask (or the fake CuPy)
        built_for = None
    if built_for is not None:
        assert radint.gpu._cupy_cuda_major() == built_for
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    except ImportError:  # no nvidia namespace package at all
        spec = None
    if spec is None:
        pytest.skip("no CUDA 12 NVRTC wheel here")
    monkeypatch.setattr(radint.gpu, "_cupy_cuda_major", lambda: 13)
    loaded = radint.gpu._preload_nvrtc.__wrapped__()
    assert loaded is None or ".so.13" in loaded
    monkeypatch.setattr(radint.gpu, "_cupy_cuda_major", lambda: 12)
    assert ".so.12" in str(radint.gpu._preload_nvrtc.__wrapped__())


def test_kernel_source_inlines_header():
    from radint.gpu import kernel_source

    src = kernel_source()
    assert '#include "integrate.cuh"' not in src
    assert "ri_lane_accumulate" in src


def test_launcher_constants_match_header():
    """The launcher sizes grids with the header's lane counts and batch size."""
    import re

    import radint.gpu

    src = radint.gpu.kernel_source()
    defined = dict(re.findall(r"^#define (RI_\w+) (\d+)$", src, flags=re.M))
    assert int(defined["RI_BIN_LANES"]) == radint.gpu.BIN_LANES
    assert int(defined["RI_WARP"]) == radint.gpu.ROW_LANES
    assert int(defined["RI_MAX_NB"]) == radint.gpu.MAX_NB
    assert int(defined["RI_LANES_BLOCK"]) == radint.gpu.LANES_BLOCK


# ---------------------------------------------------------------------------------- backend choice
def test_import_radint_gpu_without_cupy_import():
    """Importing radint.gpu must not import CuPy (lazy)."""
    code = "import sys, radint, radint.gpu; assert 'cupy' not in sys.modules"
    import sys

    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_backend_unavailable_message(small_config, monkeypatch):
    import radint.gpu

    monkeypatch.setattr(radint.gpu, "cuda_available", lambda: (False, "no CUDA device found"))
    with pytest.raises(BackendUnavailableError, match=r"pip install 'radint\[gpu\]'"):
        Integrator(small_config, backend="cuda")


def test_cuda_available_reason_names_extra_when_unusable():
    ok, why = _cuda_ok()
    assert isinstance(why, str) and why
    if not ok:
        assert "radint[gpu]" in why


def test_auto_falls_back_to_cpu(small_config, monkeypatch):
    import radint.gpu

    monkeypatch.setattr(radint.gpu, "cuda_available", lambda: (False, "no CUDA device found"))
    integ = Integrator(small_config, backend="auto")
    assert integ.backend == "cpu"
    assert integ.integrate(np.ones(small_config.shape)).metadata["backend"] == "cpu"


# ---------------------------------------------------------------------------------- GPU parity
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not _cuda_ok()[0], reason=f"no CUDA: {_cuda_ok()[1]}")


@gpu
@needs_cuda
def test_integrator_takes_device_frames_darks_and_variances(small_map_mod):
    """Stress audit: README says device frames are taken without a copy, but the Integrator
    ran np.asarray on them (TypeError); only CudaIntegrator took them. Frames, lists of frames,
    darks and variances on the GPU now give the CPU engine's results, NaN pixels counted."""
    import cupy

    cfg, m = small_map_mod
    rng = np.random.default_rng(8)
    ints = rng.integers(0, 1000, (3, *m.shape)).astype(np.uint16)
    floats = rng.uniform(0, 100, (3, *m.shape)).astype(np.float32)
    floats[1, 3:6, 4:9] = np.nan
    dark = rng.uniform(0, 3, m.shape)
    dark[0, :5] = np.nan
    variance = rng.uniform(1, 5, m.shape)
    cpu = Integrator(cfg, backend="cpu", detector_map=m)
    cuda = Integrator(cfg, backend="cuda", detector_map=m)
    for frames in (ints, floats):
        dev = cupy.asarray(frames)
        for got, want in (
            (cuda.integrate(dev[0]), cpu.integrate(frames[0])),
            (cuda.integrate_stack(dev), cpu.integrate_stack(frames)),
            (cuda.integrate_stack([dev[0], dev[1]]), cpu.integrate_stack(frames[:2])),
            (cuda.integrate_stack(dev, dark=cupy.asarray(dark)),
             cpu.integrate_stack(frames, dark=dark)),
            (cuda.integrate(dev[1], variance=cupy.asarray(variance)),
             cpu.integrate(frames[1], variance=variance)),
        ):  # fmt: skip
            for k in ("cake", "lineout", "cake_sigma", "lineout_sigma"):
                np.testing.assert_allclose(getattr(got, k), getattr(want, k), rtol=1e-12,
                                           equal_nan=True, err_msg=k)  # fmt: skip
            assert got.metadata["nan_pixels"] == want.metadata["nan_pixels"]
    with pytest.raises(ShapeError, match="on the GPU"):
        cuda.integrate(cupy.asarray(ints))
    with pytest.raises(InvalidInputError, match="on the GPU, but this Integrator runs on the CPU"):
        cpu.integrate(cupy.asarray(ints[0]))
    # Options that test values on the host (GapIntensity sets invalid_values): copied there.
    for kw in ({"dead_below": 1}, {"invalid_values": (0.0,)}):
        marked = Integrator(cfg, backend="cuda", detector_map=m, **kw)
        want = Integrator(cfg, backend="cpu", detector_map=m, **kw).integrate(ints[0])
        got = marked.integrate(cupy.asarray(ints[0]))
        np.testing.assert_allclose(got.cake, want.cake, rtol=1e-12, equal_nan=True)
        assert got.metadata["nan_pixels"] == want.metadata["nan_pixels"]
    with_dark = Integrator(cfg, backend="cuda", detector_map=m, dark=dark)
    assert with_dark.same_dark(cupy.asarray(dark)) is with_dark.dark  # was numpy's TypeError


@gpu
@needs_cuda
def test_one_cuda_integrator_from_two_threads(small_map_mod):
    """Stress audit: two threads on one CUDA Integrator staged into the same buffers and got
    each other's frames (24 of 60 results wrong, no error); calls now take turns."""
    import threading

    cfg, m = small_map_mod
    rng = np.random.default_rng(15)
    stacks = {k: rng.integers(lo, lo + 4000, (9, *m.shape)).astype(np.uint16)
              for k, lo in (("a", 0), ("b", 5000))}  # fmt: skip
    cpu = Integrator(cfg, backend="cpu", detector_map=m)
    want = {k: cpu.integrate_stack(v).cake for k, v in stacks.items()}
    cuda = Integrator(cfg, backend="cuda", detector_map=m)
    wrong: list[str] = []

    def work(key: str) -> None:
        for _ in range(15):
            try:
                got = cuda.integrate_stack(stacks[key]).cake
            except Exception as e:  # a buffer in use by the other call
                wrong.append(f"{key}: {e}")
                continue
            if not np.allclose(got, want[key], rtol=1e-12, equal_nan=True):
                wrong.append(key)

    threads = [threading.Thread(target=work, args=(k,)) for k in stacks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


@gpu
@needs_cuda
@pytest.mark.parametrize("precision,rtol", [("float64", 1e-6), ("float32", 1e-4)])
@pytest.mark.parametrize("dtype", list(SUFFIX))
def test_cuda_matches_rust(small_map_mod, precision, rtol, dtype):
    cfg, m = small_map_mod
    rng = np.random.default_rng(20)
    frames = _inputs(m.shape, rng, 11, dtype)
    dark = rng.uniform(0, 3, m.shape)
    kw = dict(detector_map=m, precision=precision, mask=rng.uniform(0, 1, m.shape) < 0.02)
    cpu = Integrator(cfg, backend="cpu", **kw)
    cuda = Integrator(cfg, backend="cuda", **kw)
    # A dark given once (the CPU folds it into its map for integer frames; CUDA reads it per entry).
    cpu_dark = Integrator(cfg, backend="cpu", dark=dark, **kw)
    cuda_dark = Integrator(cfg, backend="cuda", dark=dark, **kw)
    for got, want in (
        (cuda.integrate_stack(frames, dark=dark), cpu.integrate_stack(frames, dark=dark)),
        (cuda.integrate(frames[0]), cpu.integrate(frames[0])),
        (cuda_dark.integrate_stack(frames), cpu_dark.integrate_stack(frames)),
        (cuda_dark.integrate_stack(frames), cpu.integrate_stack(frames, dark=dark)),
    ):
        assert got.metadata["backend"] == "cuda"
        for k in ("cake", "lineout", "cake_sigma", "lineout_sigma", "area"):
            np.testing.assert_allclose(
                getattr(got, k), getattr(want, k), rtol=rtol, atol=rtol, equal_nan=True, err_msg=k
            )
        np.testing.assert_array_equal(got.count, want.count)


@gpu
@needs_cuda
@pytest.mark.parametrize("compat", [None, "midas-cpu", "midas-gpu"])
def test_cuda_rules_on_random_map(compat):
    from radint.gpu import CudaIntegrator

    rng = np.random.default_rng(21)
    m = _random_map(rng)

    class Stub:  # the attributes CudaIntegrator reads from an Integrator
        map = m
        _scale = None
        error_model = "poisson"
        precision = "float64"
        lineout_mode = "midas_nonzero_mean" if compat == "midas-cpu" else "area_weighted"
        empty_value = 0.0 if compat else np.nan
        n_threads = None
        normalize = 1

    Stub.compat = compat
    frames = rng.integers(0, 900, (5, *m.shape)).astype(np.uint16)
    got = CudaIntegrator(Stub()).integrate(frames)
    want = rust_integrate(
        m, frames, rules=compat or "radint", lineout=Stub.lineout_mode, empty=Stub.empty_value
    )
    assert_same(got, want, 1e-6)


@gpu
@needs_cuda
def test_cuda_example_frame(example_config):
    """The bundled Pilatus example (a 3-frame stack), CUDA vs Rust (float64, 1e-6 relative):
    the stack and its first frame alone, with Poisson sigma."""
    import tifffile

    from tests.conftest import EXAMPLES

    frames = tifffile.imread(EXAMPLES / "ceo2_pilatus.tif")
    assert frames.ndim == 3
    cpu = Integrator(example_config, backend="cpu", error_model="poisson")
    cuda = Integrator(example_config, backend="cuda", detector_map=cpu.map, error_model="poisson")
    for got, want in (
        (cuda.integrate_stack(frames), cpu.integrate_stack(frames)),
        (cuda.integrate(frames[0]), cpu.integrate(frames[0])),
    ):
        for key in ("cake", "cake_sigma", "lineout", "lineout_sigma", "area", "count"):
            np.testing.assert_allclose(
                getattr(got, key), getattr(want, key), rtol=1e-6, atol=1e-9, equal_nan=True,
                err_msg=key,
            )  # fmt: skip


@gpu
@needs_cuda
def test_cuda_staging_streams_and_device_frames(small_map_mod, monkeypatch):
    """Host frames (a stack, a list of frames) staged in many small chunks, page-locked frames
    DMA'd as they are, over rotating streams (more passes than streams); device frames used in
    place; downloads of a subset of the results: all equal the Rust engine, and keys not asked
    for are not downloaded."""
    import cupy as cp

    import radint.gpu

    cfg, m = small_map_mod
    monkeypatch.setattr(radint.gpu, "STAGE_CHUNK_BYTES", 4096)
    rng = np.random.default_rng(22)
    frames = rng.integers(0, 60000, (4 * radint.gpu.MAX_NB + 3, *m.shape)).astype(np.uint16)
    cpu = Integrator(cfg, backend="cpu", detector_map=m)
    want = cpu.integrate_stack(frames)
    gpu = radint.gpu.CudaIntegrator(Integrator(cfg, backend="cuda", detector_map=m))
    n, n_r, n_eta = frames.shape[0], m.n_r, m.n_eta
    host = gpu.integrate(frames, keys=("cake", "lineout"))
    assert set(host) == {"cake", "lineout", "n_frames"}
    dev = gpu.integrate_device(cp.asarray(frames))
    listed = gpu.integrate(list(frames), keys=("cake", "lineout"))
    locked = gpu.integrator.host_buffer(frames.shape, frames.dtype)  # DMA'd with no staging
    locked[...] = frames
    assert gpu._page_locked(locked) and not gpu._page_locked(frames)
    pinned = gpu.integrate(locked, keys=("cake", "lineout"))
    for got in (host, listed, pinned, {k: cp.asnumpy(dev[k]) for k in ("cake", "lineout")}):
        np.testing.assert_allclose(
            got["cake"].reshape(n, n_eta, n_r), want.cake, rtol=1e-6, atol=1e-9, equal_nan=True
        )
        np.testing.assert_allclose(
            got["lineout"].reshape(n, n_r), want.lineout, rtol=1e-6, atol=1e-9, equal_nan=True
        )


@gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float64])
def test_cuda_frames_in_lanes_equal_the_lane_split_bit_for_bit(monkeypatch, precision, dtype):
    """Passes of several frames (interleaved pixel by pixel, a thread per bin and frame) and single
    frames (8 lanes a bin, shuffle tree) sum in the same order: a frame's cake, sums and sigmas
    are the same bits whichever kernel integrated it, i.e. however many frames came at once
    (passes of 1 to 8 frames here); both equal the Rust engine. A random map with MIDAS weights,
    empty bins and repeated pixels; dark, NaN-masked scale, given variance and NaN frames."""
    import radint.gpu
    from radint.gpu import CudaIntegrator

    rng = np.random.default_rng(23)
    m = _random_map(rng)
    n_pix = m.shape[0] * m.shape[1]
    scale = rng.uniform(0.5, 1.5, n_pix)
    scale[rng.choice(n_pix, 60, replace=False)] = np.nan

    class Stub:  # the attributes CudaIntegrator reads from an Integrator
        map = m
        _scale = scale
        error_model = "poisson"
        lineout_mode = "area_weighted"
        empty_value = np.nan
        n_threads = None
        normalize = 1
        compat = None

    Stub.precision = precision
    frames = _inputs(m.shape, rng, 2 * radint.gpu.MAX_NB + 5, dtype)  # passes of 8, 8 and 5
    dark = rng.uniform(0, 3, n_pix)
    variance = rng.uniform(0, 9, n_pix)
    keys = ("signal", "area", "count", "variance", "cake", "cake_sigma", "lineout",
            "lineout_sigma")  # fmt: skip
    for extra in ({"dark": dark}, {"variance": variance}):
        runs = {}
        for lanes_min in (1, radint.gpu.MAX_NB + 1, 2):  # every pass / none / passes of 2+
            monkeypatch.setattr(radint.gpu, "LANES_MIN_FRAMES", lanes_min)
            gpu = CudaIntegrator(Stub())
            gpu._resident_lane_threads = 0  # whatever the (fake) device's size
            runs[lanes_min] = gpu.integrate(frames, keys=keys, **extra)
            # One frame at a time and uneven pieces give the same bits as well.
            for pieces in ([1] * 3, [3, 7]):
                f0 = 0
                for n in pieces:
                    part = gpu.integrate(frames[f0 : f0 + n], keys=("cake", "count"), **extra)
                    for key in ("cake", "count"):
                        whole = runs[lanes_min][key].reshape(len(frames), -1)[f0 : f0 + n]
                        np.testing.assert_array_equal(
                            part[key].reshape(n, -1), whole, err_msg=f"{key} {pieces}"
                        )
                    f0 += n
        for lanes_min, got in runs.items():
            for key in keys:
                np.testing.assert_array_equal(got[key], runs[1][key], err_msg=f"{key} {lanes_min}")
        want = rust_integrate(m, frames, scale=scale, precision=precision, **extra)
        rtol = 1e-4 if precision == "float32" else 1e-9
        for key in ("signal", "area", "count", "variance"):
            w = np.asarray(want[key]).reshape(len(frames), -1)
            g = runs[1][key].reshape(w.shape)
            floor = rtol * np.nanmax(np.abs(w))
            np.testing.assert_allclose(g, w, rtol=rtol, atol=floor, equal_nan=True, err_msg=key)


@gpu
@needs_cuda
def test_cuda_pass_without_room_to_interleave_uses_the_lane_split(small_map_mod, caplog):
    """A device with no room for the interleaved copy of a pass (here: the second stream's): the
    pool's unused blocks are handed back and the allocation tried again, then the pass goes to
    the lane-split kernel with one warning, and the results are the same bits; later passes and
    calls do not try again (each failed try purges CuPy's pool and collects garbage), and the
    buffer the first stream holds is let go."""
    import cupy as cp

    import radint.gpu

    cfg, m = small_map_mod
    rng = np.random.default_rng(24)
    frames = rng.integers(0, 60000, (2 * radint.gpu.MAX_NB, *m.shape)).astype(np.uint16)
    keys = ("cake", "cake_sigma", "lineout", "lineout_sigma", "area", "count")
    want = radint.gpu.CudaIntegrator(Integrator(cfg, backend="cuda", detector_map=m))
    want = want.integrate(frames, keys=keys)
    gpu = radint.gpu.CudaIntegrator(Integrator(cfg, backend="cuda", detector_map=m))
    # This map's passes are too small to fill a real GPU's SMs (98 x 36 bins x 8 frames against
    # 132 SMs x 16 warps on an H100), which would keep them off the interleaved path altogether.
    gpu._resident_lane_threads = 0
    interleaved_size = radint.gpu.MAX_NB * gpu.n_pixels
    freed, tries = [], []

    class OutOfMemoryError(Exception):  # what CuPy's pool raises, by name
        pass

    class NoRoom:  # cupy, except that only the first interleaved buffer fits
        def __getattr__(self, name):
            return getattr(cp, name)

        def empty(self, shape, dtype=float):
            if shape == interleaved_size and np.dtype(dtype) == frames.dtype:
                tries.append(shape)
                if len(tries) == 1:
                    return cp.empty(shape, dtype=dtype)
                raise OutOfMemoryError(f"Out of memory allocating {interleaved_size} values")
            return cp.empty(shape, dtype=dtype)

        def get_default_memory_pool(self):
            pool = cp.get_default_memory_pool()
            freed.append(pool)
            return pool

    gpu._cp = NoRoom()
    with caplog.at_level("WARNING", logger="radint.gpu"):
        for _ in range(2):
            got = gpu.integrate(frames, keys=keys)
            for key in keys:
                np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # Stream 0's buffer, made before the device ran short, is let go too: no pass uses it again.
    assert all(buf is None for buf in gpu._interleaved)
    assert len(freed) == 1, "the pool's unused blocks: handed back once, before giving up"
    assert len(tries) == 3, "stream 0's, then stream 1's try and retry after the purge, no more"
    warnings = [r for r in caplog.records if "no room to interleave" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


@gpu
@needs_cuda
def test_cuda_pass_events_time_each_pass(small_map_mod):
    """The benchmark's hook: with ``_pass_events`` a list, each pass's kernels are bracketed by
    two timed events on its stream (benches/gpu.py reads single-frame kernel time from them);
    without it, no events are made."""
    import cupy as cp

    import radint.gpu

    cfg, m = small_map_mod
    frames = np.random.default_rng(25).integers(0, 900, (2 * radint.gpu.MAX_NB + 1, *m.shape))
    gpu = radint.gpu.CudaIntegrator(Integrator(cfg, backend="cuda", detector_map=m))
    gpu._pass_events = []
    gpu.integrate(frames.astype(np.uint16), keys=("cake",))
    gpu.integrate(frames[0].astype(np.uint16), keys=("cake",))
    cp.cuda.Device().synchronize()
    assert len(gpu._pass_events) == 4  # passes of 8, 8 and 1 frames, then the single frame
    assert all(cp.cuda.get_elapsed_time(a, b) >= 0 for a, b in gpu._pass_events)
    gpu._pass_events = None
    gpu.integrate(frames[0].astype(np.uint16), keys=("cake",))


class _ForeignDeviceArray:
    """Another library's device array (torch, Numba): only ``__cuda_array_interface__``."""

    def __init__(self, array) -> None:
        self._array = array  # keeps the memory alive

    @property
    def __cuda_array_interface__(self) -> dict:
        return self._array.__cuda_array_interface__


@gpu
@needs_cuda
def test_cuda_takes_other_libraries_device_arrays_and_refuses_another_gpus(small_map_mod):
    """Review: a torch/Numba array was taken for a CuPy array (its .flags failed), and a CuPy
    array on another GPU than the map was read as if it were on the map's."""
    import cupy as cp

    import radint.gpu
    from radint.exceptions import InvalidInputError

    cfg, m = small_map_mod
    rng = np.random.default_rng(5)
    frames = rng.random((3, *m.shape)).astype(np.float32) * 1000
    want = Integrator(cfg, backend="cpu", detector_map=m).integrate_stack(frames)
    gpu = radint.gpu.CudaIntegrator(Integrator(cfg, backend="cuda", detector_map=m))
    on_device = cp.asarray(frames)
    for given in (_ForeignDeviceArray(on_device), [_ForeignDeviceArray(f) for f in on_device]):
        got = gpu.integrate(given, keys=("cake",))
        np.testing.assert_allclose(
            got["cake"].reshape(want.cake.shape), want.cake, rtol=1e-6, atol=1e-9, equal_nan=True
        )
    dark = np.zeros(m.shape[0] * m.shape[1])
    if cp.__version__ == "0.0-fake":
        elsewhere, dark_elsewhere = cp.asarray(frames), cp.asarray(dark)
        elsewhere._device = dark_elsewhere._device = gpu.device_id + 1
    elif cp.cuda.runtime.getDeviceCount() > 1:
        with cp.cuda.Device((gpu.device_id + 1) % cp.cuda.runtime.getDeviceCount()):
            elsewhere, dark_elsewhere = cp.asarray(frames), cp.asarray(dark)
    else:
        return
    other = elsewhere.device.id
    with pytest.raises(InvalidInputError, match=f"frames: on GPU {other}, but"):
        gpu.integrate(elsewhere, keys=("cake",))
    with pytest.raises(InvalidInputError, match=f"dark: on GPU {other}, but"):
        gpu.integrate(frames, dark=dark_elsewhere, keys=("cake",))


# ---------------------------------------------------------------------------------- fake CuPy
FAKE_CUPY = Path(__file__).resolve().parent / "gpu_harness" / "fake_cupy"
REPO = Path(__file__).resolve().parents[1]


def _fake_cupy_env(tmp_path: Path) -> dict[str, str]:
    import os
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("the fake CuPy runs the kernels through g++")
    path = os.pathsep.join(p for p in (str(FAKE_CUPY), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "RADINT_FAKE_CUPY_CACHE": str(tmp_path)}


@pytest.mark.parametrize("sms", [1, 132])
def test_cuda_path_on_fake_cupy(tmp_path, sms):
    """Every ``gpu``-marked test passes on the fake CuPy: launches, staging over streams, device
    and page-locked frames, downloads, the fit launcher and its CPU fallback (a test's stand-in
    Integrator once lacked an attribute CudaIntegrator reads, which only a GPU run would have
    shown). With one SM (the fake's default) and with an H100's 132: a test whose small map
    counted on its passes being interleaved failed only on a real device's size (review)."""
    import sys

    env = {**_fake_cupy_env(tmp_path), "RADINT_FAKE_CUPY_SMS": str(sms)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
         "-m", "gpu", "tests/test_gpu.py", "tests/test_gpu_fit.py", "tests/test_azimuthal_error.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


def test_gpu_bench_scripts_run_on_fake_cupy(tmp_path):
    """The GPU benchmark scripts that benches/gpu_device.sh runs on a GPU machine (whose time is
    scarce) run to the end on tiny inputs: every table row, both CSR kernels, the fitting
    section, the profile's launches and breakdown, the small fitter run."""
    import sys

    env = _fake_cupy_env(tmp_path)
    runs = {
        "gpu": ["benches/gpu.py", "--smoke", "--frames", "9", "--reps", "1", "--markdown"],
        "profile": ["benches/gpu_profile.py", "--smoke"],
        "profile-kernels": ["benches/gpu_profile.py", "--smoke", "--kernels-only"],
        "fit-small": ["benches/gpu_fit_small.py", "--lineouts", "5"],
    }
    out = {}
    for name, args in runs.items():
        run = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, f"{name}: {run.stdout[-2000:]} {run.stderr[-3000:]}"
        out[name] = run.stdout
    table = [line for line in out["gpu"].splitlines() if line.startswith("| tiny")]
    modes = [line.split(" | ")[1] for line in table]
    assert modes == ["single", "batch", "batch, lane split", "single, pinned frames",
                     "batch, pinned frames"] * 2, modes  # fmt: skip
    assert "fits/s on 20 lineouts x 10 peaks" in out["gpu"]
    assert out["gpu"].count(": azimuthal ") == 2, out["gpu"]
    assert "integrate_device 8 frames" in out["profile"]
    assert "1 px x 5 deg cake" in out["profile"] and "1-D, 1 px x 360 deg" in out["profile"]
    assert "statuses equal 50/50" in out["fit-small"]


def test_cli_cuda_backend_on_fake_cupy(tmp_path, example_config):
    """``radint integrate --backend auto`` on the example stack with GPU peak fits, on the fake
    CuPy: it picks cuda (and says so), and its NeXus result and fit table equal the CPU run's."""
    import sys

    import h5py
    import hdf5plugin  # noqa: F401  (the NeXus data are Blosc-compressed)

    from tests.conftest import EXAMPLES

    args = [str(EXAMPLES / "parameters.txt"), str(EXAMPLES / "ceo2_pilatus.tif"),
            "--fit-peaks", "3.172,3.664,5.184", "--format", "nexus,fit"]  # fmt: skip
    outputs, logs = {}, {}
    for backend, env in (("auto", _fake_cupy_env(tmp_path)), ("cpu", None)):
        run = subprocess.run(
            [sys.executable, "-m", "radint.cli", "integrate", *args, "-o", str(tmp_path / backend),
             "--backend", backend],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        outputs[backend], logs[backend] = tmp_path / backend, run.stderr
    assert "backend auto: using cuda (CUDA device radint fake CuPy" in logs["auto"], logs["auto"]
    for backend in ("auto", "cpu"):  # which engine made each file is recorded
        with h5py.File(outputs[backend] / "ceo2_pilatus.h5") as f:
            stored = f["entry/azint1d/reduction/input/backend"].asstr()[()]
        assert stored == ("cuda" if backend == "auto" else "cpu")
    fits = [np.fromfile(outputs[b] / "ceo2_pilatus_fit.bin") for b in ("auto", "cpu")]
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-9)
    with (
        h5py.File(outputs["auto"] / "ceo2_pilatus.h5") as g,
        h5py.File(outputs["cpu"] / "ceo2_pilatus.h5") as c,
    ):
        for name in ("entry/azint2d/data/I", "entry/azint1d/data/I", "entry/peaks/center_px"):
            np.testing.assert_allclose(g[name][()], c[name][()], rtol=1e-9, equal_nan=True)


@pytest.mark.gpu
def test_the_pinned_staging_of_the_map_upload_is_handed_back(small_config):
    """Audit: cupy.asarray stages each host array through page-locked memory of its size, and
    CuPy's pinned pool keeps those blocks; the CUDA engine hands them back once its map is on
    the device."""
    cupy = pytest.importorskip("cupy")
    from radint.gpu import cuda_available

    if not cuda_available()[0]:
        pytest.skip("no CUDA device")
    import gc

    pool = cupy.get_default_pinned_memory_pool()
    gc.collect()  # earlier tests' page-locked arrays back in the pool now, not mid-test
    pool.free_all_blocks()
    before = getattr(pool, "freed", None)
    m = DetectorMap.build(small_config)
    Integrator(small_config, detector_map=m, backend="cuda")._gpu_backend()
    if before is not None:  # the fake CuPy counts the hand-backs
        assert pool.freed > before
    else:
        assert pool.n_free_blocks() == 0
