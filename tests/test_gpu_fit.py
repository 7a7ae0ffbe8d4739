"""CUDA peak fitting (kernels/fit.cu + fit.cuh) checked without a GPU, and on one when present.

* ``test_fit_harness_*``: ``tests/gpu_harness/fit_harness.cpp`` compiles ``fit.cuh`` with g++ and
  runs ``rf_fit_job`` for every (lineout, job) as the kernel's threads do; the results must match
  the Rust fitter (same plan from ``_core.fit_plan``, same starts, bounds and LM steps) to
  rounding, with the same statuses and iteration counts.
* ``test_nvrtc_compiles_fit_kernel``: NVRTC compiles ``fit.cu`` without a driver.
* ``gpu``-marked tests run the kernel on a device against the Rust fitter (1 000 lineouts) and
  the ``Integrator(backend="cuda", fit=...)`` path against the CPU one.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from radint import _core
from radint.exceptions import BackendUnavailableError
from radint.fit import fit_peaks
from radint.testing import peak_lineouts, pseudo_voigt

HARNESS = Path(__file__).resolve().parent / "gpu_harness" / "fit_harness.cpp"
DATA = Path(__file__).resolve().parent / "data"
KERNELS = Path(__file__).resolve().parents[1] / "python" / "radint" / "gpu" / "kernels"
CPU_FALLBACK = 254


pv = pseudo_voigt
lineouts = peak_lineouts


@pytest.fixture(scope="module")
def fit_harness(tmp_path_factory):
    from tests.conftest import compile_cuh_harness

    return compile_cuh_harness(HARNESS, tmp_path_factory.mktemp("cuh") / f"{HARNESS.stem}.so")


def harness_fit(lib, x, ys, positions, padding=20, max_peaks_per_job=32, bin_average=True):
    plan = _core.fit_plan(x, positions, padding, max_peaks_per_job)
    n_curves, n_slots = ys.shape[0], len(positions)
    out = {
        "values": np.full((n_curves, n_slots, 7), np.nan),
        "errors": np.full((n_curves, n_slots, 7), np.nan),
        "status": np.full((n_curves, n_slots), 3, np.uint8),
        "iterations": np.zeros((n_curves, n_slots), np.uint32),
    }
    arrays = [np.ascontiguousarray(plan[k], np.uint32)
              for k in ("job_lo", "job_hi", "peak_start", "peak_slot", "peak_index", "peak_lo",
                        "peak_hi")]  # fmt: skip
    x = np.ascontiguousarray(x, np.float64)
    ys = np.ascontiguousarray(ys, np.float64)
    ptr = [ctypes.c_void_p(a.ctypes.data) for a in (x, ys, *arrays)]
    res = [
        ctypes.c_void_p(out[k].ctypes.data) for k in ("values", "errors", "status", "iterations")
    ]
    rc = lib.rf_fit_jobs_host(
        ptr[0], ptr[1], ctypes.c_uint32(x.size), ctypes.c_uint32(n_curves), *ptr[2:],
        ctypes.c_uint32(arrays[0].size), ctypes.c_uint32(n_slots), ctypes.c_double(plan["bin"]),
        ctypes.c_int(int(bin_average)), ctypes.c_int(500), ctypes.c_int(max_peaks_per_job), ctypes.c_double(1e-8),
        ctypes.c_double(1e-8), *res,
    )  # fmt: skip
    assert rc == 0
    return out


def assert_same_fits(got: dict, ref) -> None:
    """The host harness and the Rust fitter do the same IEEE operations in the same order, and
    both call the host's libm: every status, iteration count, value and error is identical."""
    np.testing.assert_array_equal(got["status"], ref.status)
    np.testing.assert_array_equal(got["iterations"], ref.iterations)
    ok = ref.status == 0
    np.testing.assert_array_equal(got["values"][ok], ref.rows()[ok])
    errs = np.stack([ref.area_err, ref.center_err, ref.sig_err, ref.gam_err, ref.fwhm_err,
                     ref.eta_mix_err], axis=-1)  # fmt: skip
    np.testing.assert_array_equal(got["errors"][..., :6][ok], errs[ok])


@pytest.mark.parametrize("bin_average", [True, False])
@pytest.mark.parametrize("shift", [0.0, -100.0])
def test_fit_harness_matches_rust_fitter(fit_harness, shift, bin_average):
    """shift -100 puts the background below 0: the covariance's Poisson-like noise model does
    not apply there and both fitters fall back to HC2. Both models: bin means (default) and
    MIDAS's centre values."""
    x, ys, positions = lineouts(40)
    ys = ys + shift
    got = harness_fit(fit_harness, x, ys, positions, bin_average=bin_average)
    ref = fit_peaks(x, ys, positions=positions, bin_average=bin_average)
    np.testing.assert_array_equal(got["status"], ref.status)
    assert {0, 3} <= set(np.unique(ref.status).tolist())  # converged and out-of-range slots
    np.testing.assert_array_equal(got["iterations"], ref.iterations)
    ok = ref.status == 0
    assert_same_fits(got, ref)
    assert np.isnan(got["values"][~ok]).all()


def test_fit_harness_matches_rust_on_a_long_merged_job(fit_harness):
    """Six narrow peaks 15 bins apart merge into one 115-bin job in which each peak is coupled to
    the others only near its own ROI (fit.rs JobProblem): the kernel must couple the same."""
    rng = np.random.default_rng(4)
    x = np.arange(400.0)
    centres = 150.0 + 15.0 * np.arange(6)
    ys = np.stack([
        rng.poisson(80 + sum(rng.uniform(2e3, 6e3) * pv(x, c + rng.normal(0, 0.2), 1.5, 0.5)
                             for c in centres))
        for _ in range(8)
    ]).astype(float)  # fmt: skip
    plan = _core.fit_plan(x, list(centres), 20)
    assert plan["job_lo"].size == 1 and (plan["peak_hi"] < plan["job_hi"][0]).any()
    got = harness_fit(fit_harness, x, ys, list(centres))
    ref = fit_peaks(x, ys, positions=centres)
    np.testing.assert_array_equal(got["status"], ref.status)
    np.testing.assert_array_equal(got["iterations"], ref.iterations)
    assert (ref.status == 0).all()
    assert_same_fits(got, ref)


@pytest.mark.parametrize("bin_average", [True, False])
def test_fit_harness_matches_rust_on_blended_doublets(fit_harness, bin_average):
    """Doublets whose first fit ends in a wrong minimum (fit.rs hold_centres): the kernel runs the
    same held-centre refit and release and keeps the same winner."""
    from tests.test_fit import X, blended_doublets

    for fwhm, separation in [(20, 20), (5, 6), (3, 2), (2, 3)]:
        ys, positions, _ = blended_doublets(fwhm, separation, 12, seed=7, bin_average=bin_average)
        for y, pos in zip(ys, positions):
            got = harness_fit(fit_harness, X, y[None], list(pos), bin_average=bin_average)
            ref = fit_peaks(X, y[None], positions=pos, bin_average=bin_average)
            assert_same_fits(got, ref)


PARITY_CASES = sorted((Path(__file__).parent / "data" / "fit_parity").glob("*.npz"))


@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda p: p.stem)
def test_fit_harness_matches_rust_on_ill_conditioned_fits(fit_harness, case):
    """Lineouts from a 10 000-lineout sweep where the last bits of the TCH width terms decided
    the fit (widths collapsing onto their floors, crowded multiplets whose slots swapped, status
    flips between converged and no_peak / at_bound): there the kernel once multiplied powers in
    sequence where Rust's powi squares, and formed the covariance in another product order."""
    d = np.load(case)
    x, y, positions = d["x"], d["y"], [float(v) for v in d["positions"]]
    padding, bin_average = int(d["pad"]), bool(d["bin_average"])
    got = harness_fit(fit_harness, x, y[None], positions, padding, bin_average=bin_average)
    ref = fit_peaks(x, y[None], positions=positions, roi_padding=padding, bin_average=bin_average)
    assert_same_fits(got, ref)


def test_fit_harness_statuses_for_jobs_it_cannot_hold(fit_harness):
    """Seven peaks merged in one job exceed the kernel's storage: marked for the CPU fallback;
    with max_peaks_per_job 5 the plan cuts them into jobs it holds, fitted as the Rust fitter
    fits them; a ROI with fewer finite points than parameters: insufficient_data."""
    x = np.arange(300.0)
    y = 10 + sum(500 * pv(x, c, 2.0, 0.5) for c in range(100, 135, 5))
    seven = [float(c) for c in range(100, 135, 5)]
    got = harness_fit(fit_harness, x, y[None], seven)
    assert (got["status"] == CPU_FALLBACK).all()
    got = harness_fit(fit_harness, x, y[None], seven, max_peaks_per_job=5)
    ref = fit_peaks(x, y, positions=seven, max_peaks_per_job=5)
    np.testing.assert_array_equal(got["status"][0], ref.status)
    assert (ref.status == 0).all()
    masked = y.copy()
    masked[:200] = np.nan
    got = harness_fit(fit_harness, x, masked[None], [150.0], padding=3)
    ref = fit_peaks(x, masked, positions=[150.0], roi_padding=3)
    assert got["status"][0, 0] == ref.status[0] == 4


def test_nvrtc_compiles_fit_kernel():
    pytest.importorskip("cupy", reason="NVRTC compile check needs CuPy (pip install 'radint[gpu]')")
    from radint.gpu import compile_ptx, kernel_source

    assert '#include "fit.cuh"' not in kernel_source("fit")
    try:
        ptx = compile_ptx("fit", arch="compute_80")
    except BackendUnavailableError as e:
        pytest.skip(f"NVRTC library not loadable here: {e}")
    assert ".entry rf_fit_jobs(" in ptx


def test_cuda_fitter_without_a_usable_device_names_the_extra(monkeypatch):
    """CUDA audit: CuPy installed without a usable driver made ``CudaFitter`` raise CuPy's bare
    ``cudaErrorInsufficientDriver``; it now says what ``Integrator(backend="cuda")`` says."""
    import radint.gpu.fit as gpu_fit

    why = "no usable CUDA driver/runtime (...); pip install 'radint[gpu]'"
    monkeypatch.setattr(gpu_fit, "_import_cupy", lambda: object())
    monkeypatch.setattr(gpu_fit, "cuda_available", lambda: (False, why))
    with pytest.raises(BackendUnavailableError, match=r"not available: .*radint\[gpu\]"):
        gpu_fit.CudaFitter(np.arange(100.0), [50.0])


def _cuda_ok() -> tuple[bool, str]:
    from radint.gpu import cuda_available

    return cuda_available()


gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not _cuda_ok()[0], reason=f"no CUDA: {_cuda_ok()[1]}")


@gpu
@needs_cuda
def test_cuda_fitter_matches_rust_on_1000_lineouts():
    from radint.gpu.fit import CudaFitter

    x, ys, positions = lineouts(1000, seed=7)
    got = CudaFitter(x, positions).fit(ys)
    ref = fit_peaks(x, ys, positions=positions)
    np.testing.assert_array_equal(got["status"], ref.status)
    ok = ref.status == 0
    bin_size = x[1] - x[0]
    assert np.abs(got["values"][..., 1][ok] - ref.center[ok]).max() < 0.005 * bin_size
    np.testing.assert_allclose(got["values"][..., 0][ok], ref.area[ok], rtol=2e-3)


@gpu
@needs_cuda
def test_cuda_fitter_fits_a_repeated_position_once_as_the_cpu():
    from radint.gpu.fit import CudaFitter

    x, ys, positions = lineouts(4, seed=11)
    repeated = [positions[2], *positions, positions[2], positions[0]]
    got = CudaFitter(x, repeated).fit(ys)
    ref = fit_peaks(x, ys, positions=repeated)
    assert got["status"].shape == (4, len(repeated))
    np.testing.assert_array_equal(got["status"], ref.status)
    np.testing.assert_array_equal(got["values"][:, 0], got["values"][:, 3])
    ok = ref.status == 0
    np.testing.assert_allclose(got["values"][..., 1][ok], ref.center[ok], atol=0.005 * 0.5)


@gpu
@needs_cuda
@pytest.mark.parametrize("failures", [1, 2])
def test_cuda_fitter_out_of_device_memory_frees_the_pool_then_fits_on_the_cpu(failures, caplog):
    """Review: the kernel's per-thread stack (KBs × every resident thread) is reserved at
    launch; a launch that finds no room retries once after CuPy's pool hands back its free
    blocks, and fits on the CPU (same plan, same results) when it still finds none."""
    import cupy as cp

    from radint.gpu.fit import CudaFitter

    x, ys, positions = lineouts(6, seed=3)
    fitter = CudaFitter(x, positions)
    want = fitter.fit(ys)
    kernel, calls = fitter._kernel, []

    def short_of_memory(*args, **kwargs):
        calls.append(1)
        if failures == 2 or len(calls) == 1:  # 2: the device never has room
            raise RuntimeError(
                "cudaErrorMemoryAllocation: out of memory (CUDA_ERROR_OUT_OF_MEMORY)"
            )
        return kernel(*args, **kwargs)

    fitter._kernel = short_of_memory
    pool = cp.get_default_memory_pool()
    freed = getattr(pool, "freed", None)
    got = fitter.fit(ys)
    if freed is not None:  # the fake pool counts
        assert pool.freed == freed + 1
    assert len(calls) == 2
    cpu = fit_peaks(x, ys, positions=positions)
    np.testing.assert_array_equal(got["status"], want["status"] if failures == 1 else cpu.status)
    ok = got["status"] == 0
    np.testing.assert_allclose(got["values"][..., 1][ok], cpu.center[ok], atol=1e-6)
    warned = [r for r in caplog.records if "fitting on the CPU instead" in r.getMessage()]
    assert len(warned) == (failures == 2)
    fitter.fit(ys)  # warned once per fitter
    assert len([r for r in caplog.records if "on the CPU instead" in r.getMessage()]) == len(warned)


@gpu
@needs_cuda
def test_integrator_cuda_fit_equals_cpu(small_config):
    from radint import Integrator
    from radint.testing import ring_image

    cfg = small_config.replace(r_bin_px=0.25, eta_bin_deg=360.0, r_max_px=55.0)
    ring_r = np.array([18.0, 31.0, 44.0])
    tth = np.degrees(np.arctan(ring_r * cfg.pixel_size_y_um / cfg.lsd_um))
    frames = np.stack([ring_image(cfg, tth, fwhm_deg=0.1, noise=True, seed=k) for k in range(4)])
    spec = {"positions_two_theta_deg": list(tth)}
    cpu = Integrator(cfg, fit=spec).integrate_stack(frames)
    cuda = Integrator(cfg, backend="cuda", fit=spec).integrate_stack(frames)
    np.testing.assert_array_equal(cuda.peaks.status, cpu.peaks.status)
    np.testing.assert_allclose(cuda.peaks.center, cpu.peaks.center, atol=1e-6)
    np.testing.assert_allclose(
        cuda.peaks.center_two_theta_deg, cpu.peaks.center_two_theta_deg, atol=1e-7
    )


def test_fit_harness_matches_rust_on_lineouts_without_a_fit(fit_harness):
    """no_peak (a frame without counts, a constant lineout, a peak whose area falls to 0),
    insufficient_data (a NaN gap over a peak's own bin) and at_bound (a peak wider than its
    ROI pushes the background onto its floor): the kernel decides as the Rust fitter."""
    rng = np.random.default_rng(9)
    x = np.arange(400.0)
    peak = 2e4 * pv(x, 200.3, 4.0, 0.3)
    gap = rng.poisson(100 + peak).astype(float)
    gap[195:206] = np.nan
    wide = rng.poisson(2000 + 3e5 * pv(x, 200.0, 30.0, 0.0)).astype(float)
    ys = np.stack([np.zeros_like(x), np.full_like(x, 100.0), 50 + 0.2 * x, gap,
                   wide, rng.poisson(100 + peak)]).astype(float)  # fmt: skip
    got = harness_fit(fit_harness, x, ys, [200.0], padding=10)
    ref = fit_peaks(x, ys, positions=[200.0], roi_padding=10)
    np.testing.assert_array_equal(got["status"], ref.status)
    assert [ref.status_name[i][0] for i in range(5)] == [
        "no_peak", "no_peak", "no_peak", "insufficient_data", "at_bound"
    ]  # fmt: skip
    assert ref.status_name[5][0] == "converged"
    np.testing.assert_allclose(got["values"][5], ref.rows()[5], rtol=1e-10)
    assert np.isnan(got["values"][:5]).all() and np.isnan(ref.rows()[:5]).all()


@gpu
@needs_cuda
def test_integrator_cuda_integrates_a_large_stack_in_blocks(small_config, monkeypatch):
    """Review: a whole stack's results were allocated on the device (and page-locked on the
    host) at once, ~44 bytes per bin and frame. Stacks whose results pass GPU_BLOCK_BYTES run in
    blocks of frames, fitted block by block: the Result is the one-pass Result."""
    import radint.integrator
    from radint import Integrator
    from radint.testing import ring_image

    cfg = small_config.replace(r_bin_px=0.25, eta_bin_deg=90.0, r_max_px=55.0)
    ring_r = np.array([18.0, 31.0, 44.0])
    tth = np.degrees(np.arctan(ring_r * cfg.pixel_size_y_um / cfg.lsd_um))
    frames = np.stack([ring_image(cfg, tth, fwhm_deg=0.1, noise=True, seed=k) for k in range(5)])
    spec = {"positions_two_theta_deg": list(tth)}
    whole = Integrator(cfg, backend="cuda", fit=spec).integrate_stack(frames)
    integ = Integrator(cfg, backend="cuda", fit=spec)
    per_frame = integ.map.n_r * integ.map.n_eta * 44 + integ.map.n_r * 16
    monkeypatch.setattr(radint.integrator, "GPU_BLOCK_BYTES", 2 * per_frame)
    assert [len(b) for b in integ._gpu_blocks(frames)] == [2, 2, 1]
    for given in (frames, list(frames)):
        blocked = integ.integrate_stack(given)
        for key in ("cake", "cake_sigma", "lineout", "lineout_sigma", "area", "count"):
            np.testing.assert_array_equal(getattr(blocked, key), getattr(whole, key), err_msg=key)
        np.testing.assert_array_equal(blocked.peaks.status, whole.peaks.status)
        np.testing.assert_array_equal(blocked.peaks.center, whole.peaks.center)


def test_a_centre_that_leaves_its_roi_is_no_peak(fit_harness):
    """Stress audit: positions 2.0 and 39.5 near the ends of a lineout (x 1.15 .. 39.85) were
    reported converged at centres -12.7 and 20.4, outside their own ROIs (a slope and a
    neighbour's ring). Such a peak is now ``no_peak``, in the Rust fitter and the kernel alike,
    and the other peaks of the lineout keep their fits."""
    d = np.load(DATA / "fit_centre_leaves_roi.npz")
    x, y = d["x"], d["y"]
    positions = [10, 18.3, 19.8, 30, 33, 2.0, 39.5]
    ref = fit_peaks(x, y[None], positions=positions, bin_average=False)
    status = np.asarray(ref.status).reshape(-1)
    assert list(status) == [0, 0, 0, 0, 0, 6, 6]
    centres = np.asarray(ref.center).reshape(-1)
    assert np.isnan(centres[5:]).all() and np.all(np.abs(centres[:5] - positions[:5]) < 0.2)
    # The kernel (its jobs hold at most RF_MAX_PEAKS peaks: smaller jobs) says the same.
    for subset, want in (([2.0, 10], [6, 0]), ([30, 33, 39.5], [0, 0, 6])):
        ref = fit_peaks(x, y[None], positions=subset, bin_average=False)
        assert list(np.asarray(ref.status).reshape(-1)) == want
        assert_same_fits(harness_fit(fit_harness, x, y[None], subset, bin_average=False), ref)


def test_launcher_sizes_the_scratch_as_the_kernel_lays_it_out(fit_harness):
    from radint.gpu.fit import scratch_bytes

    fit_harness.rf_scratch_bytes_host.restype = ctypes.c_ulonglong
    for params, roi, team in [(6, 41, 32), (26, 1024, 32), (10, 1, 32), (6, 41, 1), (14, 333, 32)]:
        want = fit_harness.rf_scratch_bytes_host(params, roi, team)
        assert scratch_bytes(params, roi, team) == want
        assert want % 8 == 0


def _on_the_cpu_runtime() -> bool:
    import cupy

    return cupy.__version__ == "0.0-fake"


def _fit_cases():
    """(x, ys, positions, roi_padding, bin_average, max_iterations) of every kind the harness
    tests check, and the LM's failure paths: a damped step whose Cholesky fails (values near
    the float64 limit) until λ passes its cap, non-finite equations (±inf), the iteration cap."""
    from tests.test_fit import X, blended_doublets

    x, ys, positions = lineouts(24, seed=7)
    yield x, ys, positions, 20, True, 500
    yield x, ys - 100, positions, 20, False, 500  # background below 0: HC2 errors
    yield x, ys[:6], positions, 20, True, 2  # max_iterations
    extreme = ys[:6].copy()
    extreme[0] *= 1e200
    extreme[1] *= 1e154
    extreme[2] *= 1e-300
    extreme[3, 150] = 1e300
    extreme[4, 90] = np.inf
    extreme[5, 205] = -np.inf
    yield x, extreme, positions, 20, True, 500
    rng = np.random.default_rng(4)
    xl = np.arange(400.0)
    centres = 150.0 + 15.0 * np.arange(6)
    merged = np.stack([
        rng.poisson(80 + sum(rng.uniform(2e3, 6e3) * pv(xl, c + rng.normal(0, 0.2), 1.5, 0.5)
                             for c in centres))
        for _ in range(3)
    ]).astype(float)  # fmt: skip
    yield xl, merged, list(centres), 20, True, 500
    for fwhm, separation in [(5, 6), (2, 3)]:
        ys_d, pos_d, _ = blended_doublets(fwhm, separation, 4, seed=7, bin_average=True)
        for y, pos in zip(ys_d, pos_d):
            yield X, y[None], list(pos), 20, True, 500
    for case in PARITY_CASES:
        d = np.load(case)
        yield (
            d["x"],
            d["y"][None],
            [float(v) for v in d["positions"]],
            int(d["pad"]),
            bool(d["bin_average"]),
            500,
        )
    # A listed position where no ring is, in the ring's job: its parameters fail the
    # covariance's Cholesky and are held (some draws fit a spike there instead).
    phantom = rng.poisson(50 + 0.05 * xl + 3e3 * pv(xl, 100.0, 4.0, 0.0), (8, xl.size))
    for bin_average in (True, False):
        yield xl, phantom.astype(float), [100.0, 110.0], 20, bin_average, 500
    peak = 2e4 * pv(xl, 200.3, 4.0, 0.3)
    gap = rng.poisson(100 + peak).astype(float)
    gap[195:206] = np.nan
    odd = np.stack([np.zeros_like(xl), np.full_like(xl, 100.0), gap,
                    rng.poisson(2000 + 3e5 * pv(xl, 200.0, 30.0, 0.0)).astype(float)])  # fmt: skip
    yield xl, odd, [200.0], 10, True, 500


@gpu
@needs_cuda
@pytest.mark.parametrize("order", ["forward", "reverse", "random:1", "random:2"])
def test_cuda_fitter_on_the_cpu_runtime_is_the_rust_fitter_bit_for_bit(order, monkeypatch):
    """The kernel splits each job's points over a warp's lanes but sums every entry of the
    normal equations and the covariance in point order: on the fake CuPy (host libm, no
    contracted multiply-adds) its fits are the Rust fitter's exactly, status, iterations, values
    and errors, whichever lane runs first between two __syncwarp (a lane reading a row before
    its writer synced would change them)."""
    if not _on_the_cpu_runtime():
        pytest.skip(
            "a GPU's libm and multiply-adds differ in the last bits (see the 1 000-lineout test)"
        )
    from radint.gpu.fit import CudaFitter

    monkeypatch.setenv("RADINT_FAKE_CUPY_LANE_ORDER", order)
    statuses = set()
    for x, ys, positions, padding, bin_average, iterations in _fit_cases():
        options = dict(roi_padding=padding, bin_average=bin_average, max_iterations=iterations)
        got = CudaFitter(x, positions, **options).fit(ys)
        ref = fit_peaks(x, ys, positions=positions, **options)
        assert_same_fits(got, ref)
        statuses |= set(np.unique(ref.status).tolist())
    assert {0, 1, 2, 3, 4, 6, 7} <= statuses


@gpu
@needs_cuda
def test_cuda_fitter_slots_of_no_job_are_out_of_range():
    """The device outputs are not filled before the launch (the kernel writes every slot of
    its jobs): positions outside the lineout, a job-less plan included, come back NaN with
    status out_of_range and 0 iterations, as from the CPU fitter; no rows, no error."""
    from radint.gpu.fit import CudaFitter

    x, ys, positions = lineouts(3, seed=1)
    for given in ([1e9, -5.0], [positions[0], 1e9, positions[3]]):
        got = CudaFitter(x, given).fit(ys)
        ref = fit_peaks(x, ys, positions=given)
        np.testing.assert_array_equal(got["status"], ref.status)
        ok = ref.status == 0  # a GPU's libm may differ in the last bits: the parity criteria
        np.testing.assert_allclose(got["values"][ok], ref.rows()[ok], rtol=2e-3, atol=1e-9)
        outside = np.array([p == 1e9 or p == -5.0 for p in given])
        assert (got["status"][:, outside] == 3).all() and (got["iterations"][:, outside] == 0).all()
        assert (
            np.isnan(got["values"][:, outside]).all() and np.isnan(got["errors"][:, outside]).all()
        )
    empty = CudaFitter(x, positions).fit(ys[:0])
    assert empty["values"].shape == (0, len(positions), 7) and empty["status"].shape == (0, 10)


@gpu
@needs_cuda
def test_cuda_fitter_leaves_jobs_to_the_cpu_when_the_scratch_is_short():
    """The kernel checks the shared memory it was given against the layout it needs; short of
    it (a launcher out of step with fit.cuh), its jobs come back for the CPU fitter, not
    written past their scratch."""
    from radint.gpu.fit import CudaFitter

    x, ys, positions = lineouts(3, seed=5)
    fitter = CudaFitter(x, positions)
    fitter._scratch -= 8
    got = fitter.fit(ys)
    ref = fit_peaks(x, ys, positions=positions)
    np.testing.assert_array_equal(got["status"], ref.status)
    ok = ref.status == 0
    np.testing.assert_array_equal(got["values"][ok], ref.rows()[ok])


# One result in 2^shift of exp / pow / erfc / atan moved by one ulp, chosen by a hash of the
# input (salted): CUDA's libdevice is not correctly rounded, glibc's libm differs from it in
# the last bits. These three patterns swapped a doublet's peaks between their slots before the
# refit won ties (fit.rs REFIT_TIE).
_ONE_ULP_OFF = """
#include <cstring>
inline double rf_one_ulp_off(double in, double out) {
    if (!(out == out) || out == 0.0 || out - out != 0.0) return out;
    unsigned long long u;
    std::memcpy(&u, &in, 8);
    u += RF_SALT;
    u ^= u >> 33; u *= 0xff51afd7ed558ccdULL; u ^= u >> 33; u *= 0xc4ceb9fe1a85ec53ULL;
    u ^= u >> 33;
    if ((u & ((1ULL << RF_SHIFT) - 1)) != 0) return out;
    return std::nextafter(out, (u >> 40) & 1 ? 1e308 : -1e308);
}
#define RF_EXP(x) rf_one_ulp_off((x), std::exp(x))
#define RF_POW(x, y) rf_one_ulp_off((x) * 1.000001 + (y), std::pow(x, y))
#define RF_ERFC(x) rf_one_ulp_off((x) * 3.0, std::erfc(x))
#define RF_ATAN(x) rf_one_ulp_off((x) * 5.0, std::atan(x))
"""


@pytest.mark.parametrize(("shift", "salt"), [(3, 0), (1, 1), (1, 2)])
def test_fits_do_not_hinge_on_the_last_bits_of_libm(tmp_path, shift, salt):
    """The 1 000-lineout GPU test's fits, with the header's exp, pow, erfc and atan one ulp off
    for some inputs (what a GPU's math library may do): same statuses, centres within 1e-6 bin
    and areas within 1e-6 of the Rust fitter's. Before the refit won ties, a blended doublet's
    two peaks came back swapped between their slots in each of these patterns (a centre 6.7
    bins off, an area 25 %), which a GPU would have shown as a failed parity test."""
    from tests.conftest import compile_cuh_harness

    text = (KERNELS / "fit.cuh").read_text()
    host = {
        "#define RF_EXP(x) std::exp(x)": "",
        "#define RF_POW(x, y) std::pow(x, y)": "",
        "#define RF_ERFC(x) std::erfc(x)": "",
        "#define RF_ATAN(x) std::atan(x)": _ONE_ULP_OFF,
    }
    for line, replacement in host.items():
        assert text.count(line) == 1, line
        text = text.replace(line, replacement)
    (tmp_path / "fit.cuh").write_text(text)
    lib = compile_cuh_harness(HARNESS, tmp_path / "h.so", kernels=tmp_path,
                              defines=(f"RF_SHIFT={shift}", f"RF_SALT={salt}ULL"))  # fmt: skip
    x, ys, positions = lineouts(1000, seed=7)
    ref = fit_peaks(x, ys, positions=positions)
    got = harness_fit(lib, x, ys, positions)
    np.testing.assert_array_equal(got["status"], ref.status)
    ok = ref.status == 0
    bin_size = x[1] - x[0]
    np.testing.assert_allclose(got["values"][..., 1][ok], ref.center[ok], rtol=0,
                               atol=1e-6 * bin_size)  # fmt: skip
    np.testing.assert_allclose(got["values"][..., 0][ok], ref.area[ok], rtol=1e-6)
