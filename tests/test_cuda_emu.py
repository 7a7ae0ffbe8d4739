"""The CPU runtime of CUDA behind the fake CuPy (``tests/gpu_harness/cuda_emu.h``).

The fake CuPy's GPU-path tests are only as good as this runtime: here it runs small kernels whose
results CUDA's documentation fixes (shuffle semantics per mode and width, thread and block
coordinates of 3-D launches, partial warps), and it must refuse what is undefined on a GPU
(a shuffle naming an exited lane, lanes diverging at different shuffles, a read of a lane the
mask leaves out) and arguments CuPy would pass with another size than the parameter's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

FAKE_CUPY = Path(__file__).resolve().parent / "gpu_harness" / "fake_cupy" / "cupy" / "__init__.py"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

SOURCE = r"""
extern "C" __global__ void shuffles(const int* in, int* down, int* up, int* xr, int* idx,
                                    int delta, int width) {
    const int t = threadIdx.x;
    const int v = in[t];
    down[t] = __shfl_down_sync(0xffffffffu, v, delta, width);
    up[t] = __shfl_up_sync(0xffffffffu, v, delta, width);
    xr[t] = __shfl_xor_sync(0xffffffffu, v, delta, width);
    idx[t] = __shfl_sync(0xffffffffu, v, delta, width);
}

extern "C" __global__ void warp_sums(const double* in, double* out, unsigned long long n) {
    const unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    double x = i < n ? in[i] : 0.0;
    for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xffffffffu, x, off);
    if ((threadIdx.x & 31) == 0 && i < n) out[i / 32] = x;
}

extern "C" __global__ void coordinates(unsigned* out) {
    const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    const unsigned i = block * blockDim.x * blockDim.y * blockDim.z + thread;
    out[4 * i + 0] = blockIdx.x + 10 * blockIdx.y + 100 * blockIdx.z;
    out[4 * i + 1] = threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z;
    out[4 * i + 2] = gridDim.x + 10 * gridDim.y + 100 * gridDim.z;
    out[4 * i + 3] = blockDim.x + 10 * blockDim.y + 100 * blockDim.z;
}

// Lanes past n leave first: a full-mask shuffle after that is undefined on a GPU.
extern "C" __global__ void early_exit(double* out, int n) {
    if (int(threadIdx.x) >= n) return;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0, 1);
}

// Odd lanes shuffle twice, even lanes once: they meet at different calls.
extern "C" __global__ void diverging(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x & 1) v = __shfl_down_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 1);
}

// Half-warp masks: lanes 0-15 and 16-31 shuffle among themselves (width 16), or read across
// the halves (width 32: undefined).
extern "C" __global__ void half_mask(int* out, int delta, int width) {
    const unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffff0000u;
    out[threadIdx.x] = __shfl_down_sync(mask, int(threadIdx.x), delta, width);
}

extern "C" __global__ void offset_copy(const double* in, double* out, int offset) {
    out[threadIdx.x] = in[threadIdx.x + offset];
}

extern "C" __global__ void __launch_bounds__(64) bounded(int* out) {
    out[threadIdx.x] = int(threadIdx.x);
}

// Valid since Volta: lane 0 shuffles alone, then every lane together.
extern "C" __global__ void solo_then_all(int* out) {
    int v = int(threadIdx.x) * 10;
    if (threadIdx.x == 0) v = __shfl_sync(0x1u, v + 1, 0);
    out[threadIdx.x] = __shfl_sync(0xffffffffu, v, 0);
}

// A local array larger than a lane's stack.
extern "C" __global__ void deep(double* out) {
    volatile double big[80000];
    for (int i = 0; i < 80000; i += 512) big[i] = i;
    out[threadIdx.x] = big[79872];
}

extern "C" __global__ void self_excluded(int* out) {
    out[threadIdx.x] = __shfl_down_sync(0xfffffffeu, int(threadIdx.x), 1);
}

// Each warp its own slice of the block's shared memory: every lane writes its slot, then
// reads its neighbour's (after a __syncwarp when `synced`); `reach` slots per warp.
extern "C" __global__ void rotate_shared(int* out, int synced, int reach) {
    extern __shared__ int slots[];
    int* mine = slots + (threadIdx.x / 32) * reach;
    const int lane = threadIdx.x & 31;
    mine[lane] = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (synced) __syncwarp();
    out[blockIdx.x * blockDim.x + threadIdx.x] = mine[(lane + 1) % reach];
}

// Lanes past n leave before a full-mask __syncwarp: undefined on a GPU.
extern "C" __global__ void sync_after_exit(int* out, int n) {
    if (int(threadIdx.x) >= n) return;
    __syncwarp();
    out[threadIdx.x] = 1;
}

// Shared memory as the block starts: CUDA leaves whatever was there.
extern "C" __global__ void read_shared(unsigned* out, int n) {
    extern __shared__ unsigned words[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = words[i];
}
"""


@pytest.fixture(scope="module")
def cupy(tmp_path_factory):
    import os

    os.environ["RADINT_FAKE_CUPY_CACHE"] = str(tmp_path_factory.mktemp("emu"))
    spec = importlib.util.spec_from_file_location("fake_cupy_under_test", FAKE_CUPY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mod(cupy):
    return cupy.RawModule(code=SOURCE)


def _cuda_shuffle(values, mode, delta, width):
    """CUDA's documented source lane of each lane (CUDA C++ Programming Guide, warp shuffle)."""
    out = []
    for lane in range(len(values)):
        seg, pos = lane - lane % width, lane % width
        if mode == "down":
            src = lane + delta if pos + delta < width else lane
        elif mode == "up":
            src = lane - delta if pos >= delta else lane
        elif mode == "xor":  # may read an earlier width-group; a later one: its own value
            src = lane ^ (delta % 32)
            src = src if src <= seg + width - 1 else lane
        else:
            src = seg + delta % width
        out.append(values[src])
    return out


@pytest.mark.parametrize("width", [32, 16, 8, 4, 2, 1])
@pytest.mark.parametrize("delta", [0, 1, 3, 5, 16, 31])
def test_shuffle_modes_and_widths(cupy, mod, width, delta):
    values = (np.arange(64, dtype=np.int32) * 7 + 3) % 101
    dev = cupy.asarray(values)
    outs = [cupy.asarray(np.full(64, -1, np.int32)) for _ in range(4)]
    mod.get_function("shuffles")((1,), (64,), (dev, *outs, np.int32(delta), np.int32(width)))
    for got, mode in zip(outs, ("down", "up", "xor", "idx"), strict=True):
        want = [*_cuda_shuffle(list(values[:32]), mode, delta, width),
                *_cuda_shuffle(list(values[32:]), mode, delta, width)]  # fmt: skip
        np.testing.assert_array_equal(got.get(), want, err_msg=f"{mode} Δ{delta} w{width}")


def test_warp_reduction_over_many_blocks(cupy, mod):
    n = 32 * 1000 + 32 * 3
    x = np.random.default_rng(1).normal(size=n)
    out = cupy.asarray(np.zeros(n // 32))
    mod.get_function("warp_sums")((n // 96 + 1,), (96,), (cupy.asarray(x), out, np.uint64(n)))
    np.testing.assert_allclose(out.get(), x.reshape(-1, 32).sum(axis=1), rtol=1e-12)


def test_three_dimensional_launch_coordinates(cupy, mod):
    grid, block = (3, 2, 2), (4, 3, 2)
    n = int(np.prod(grid) * np.prod(block))
    out = cupy.asarray(np.zeros(4 * n, np.uint32))
    mod.get_function("coordinates")(grid, block, (out,))
    got = out.get().reshape(n, 4)
    want = [
        (bx + 10 * by + 100 * bz, tx + 10 * ty + 100 * tz, 3 + 20 + 200, 4 + 30 + 200)
        for bz in range(2) for by in range(2) for bx in range(3)
        for tz in range(2) for ty in range(3) for tx in range(4)
    ]  # fmt: skip
    np.testing.assert_array_equal(got, np.array(want, np.uint32))


def test_refuses_a_shuffle_naming_an_exited_lane(cupy, mod):
    out = cupy.asarray(np.zeros(32))
    with pytest.raises(RuntimeError, match="names lane 20, which has exited"):
        mod.get_function("early_exit")((1,), (32,), (out, np.int32(20)))
    mod.get_function("early_exit")((1,), (32,), (out, np.int32(32)))  # every lane: fine
    np.testing.assert_array_equal(out.get(), 1.0)


def test_refuses_a_full_mask_in_a_partial_warp(cupy, mod):
    with pytest.raises(RuntimeError, match="past the block's last thread"):
        mod.get_function("early_exit")((1,), (40,), (cupy.asarray(np.zeros(40)), np.int32(40)))


def test_refuses_lanes_at_different_shuffles(cupy, mod):
    with pytest.raises(RuntimeError, match="meet at different shuffles"):
        mod.get_function("diverging")((1,), (32,), (cupy.asarray(np.zeros(32, np.int32)),))


def test_partial_masks(cupy, mod):
    out = cupy.asarray(np.zeros(32, np.int32))
    half = mod.get_function("half_mask")
    half((1,), (32,), (out, np.int32(2), np.int32(16)))
    np.testing.assert_array_equal(out.get(), [*range(2, 16), 14, 15, *range(18, 32), 30, 31])
    with pytest.raises(
        RuntimeError, match="lane 15 reads lane 16, which the shuffle's mask 0x0000"
    ):
        half((1,), (32,), (out, np.int32(1), np.int32(32)))
    with pytest.raises(RuntimeError, match="lane 0 waits at a shuffle whose mask 0xfffffffe does"):
        mod.get_function("self_excluded")((1,), (32,), (out,))


def test_out_of_bounds_access_fails_the_launch(cupy, mod):
    """Device allocations end at an inaccessible page: one element past the end is a failed
    launch naming the thread (as compute-sanitizer reports it), and the process carries on."""
    src, out = cupy.asarray(np.arange(40.0)), cupy.zeros(32)
    copy = mod.get_function("offset_copy")
    copy((1,), (32,), (src, out, np.int32(8)))
    np.testing.assert_array_equal(out.get(), np.arange(8.0, 40.0))
    with pytest.raises(RuntimeError, match=r"thread \(31, 0, 0\): invalid memory access at"):
        copy((1,), (32,), (src, out, np.int32(9)))
    with pytest.raises(RuntimeError, match="invalid memory access"):  # a write past the end
        copy((1,), (33,), (src, out, np.int32(0)))
    copy((1,), (32,), (src, out, np.int32(0)))
    np.testing.assert_array_equal(out.get(), np.arange(32.0))


def test_divergent_shuffles_with_their_own_masks(cupy, mod):
    out = cupy.asarray(np.zeros(32, np.int32))
    mod.get_function("solo_then_all")((1,), (32,), (out,))
    np.testing.assert_array_equal(out.get(), 1)


def test_a_lane_overflowing_its_stack_fails_the_launch(cupy, mod):
    out = cupy.zeros(32)
    with pytest.raises(RuntimeError, match="invalid memory access .* stack"):
        mod.get_function("deep")((1,), (32,), (out,))
    mod.get_function("offset_copy")((1,), (32,), (cupy.asarray(np.arange(40.0)), out, np.int32(0)))


def test_block_sizes_are_checked_against_the_launch_bounds(cupy, mod):
    out = cupy.asarray(np.zeros(2048, np.int32))
    mod.get_function("bounded")((1,), (64,), (out,))
    with pytest.raises(RuntimeError, match=r"a block of 1-64 threads \(its __launch_bounds__"):
        mod.get_function("bounded")((1,), (65,), (out,))
    with pytest.raises(RuntimeError, match="a block of 1-1024 threads"):
        mod.get_function("coordinates")((1,), (2048,), (out,))
    with pytest.raises(RuntimeError, match="non-empty grid"):
        mod.get_function("coordinates")((0,), (32,), (out,))


def test_arguments_are_checked_like_the_parameters(cupy, mod):
    dev = cupy.asarray(np.zeros(32, np.int32))
    outs = [cupy.asarray(np.zeros(32, np.int32)) for _ in range(4)]
    kernel = mod.get_function("shuffles")
    with pytest.raises(RuntimeError, match="argument 5 is 8 bytes, the parameter 4"):
        kernel((1,), (32,), (dev, *outs, np.int64(1), np.int32(32)))
    with pytest.raises(RuntimeError, match="argument 5 is 8 bytes"):
        kernel((1,), (32,), (dev, *outs, 1, np.int32(32)))  # a Python int goes as int64
    with pytest.raises(RuntimeError, match="6 arguments for a kernel of 7 parameters"):
        kernel((1,), (32,), (dev, *outs, np.int32(1)))
    with pytest.raises(TypeError):
        kernel((1,), (32,), (np.zeros(32, np.int32), *outs, np.int32(1), np.int32(32)))
    with pytest.raises(AttributeError, match="no kernel 'missing'"):
        mod.get_function("missing")


def test_syncwarp_orders_shared_memory_between_lanes(cupy, mod, monkeypatch):
    """Dynamic shared memory is one buffer per block; with __syncwarp every lane reads its
    neighbour's write in either lane order, without it the result depends on the order: the
    switch the tests use to find intra-warp races."""
    kernel = mod.get_function("rotate_shared")
    n = 2 * 64
    want = (np.arange(n) // 32 * 32 + (np.arange(n) % 32 + 1) % 32).astype(np.int32)
    racy = {}
    for order in ("forward", "reverse", "random:1", "random:2"):
        monkeypatch.setenv("RADINT_FAKE_CUPY_LANE_ORDER", order)
        out = cupy.asarray(np.zeros(n, np.int32))
        kernel((2,), (64,), (out, np.int32(1), np.int32(32)), shared_mem=2 * 32 * 4)
        np.testing.assert_array_equal(out.get(), want)
        kernel((2,), (64,), (out, np.int32(0), np.int32(32)), shared_mem=2 * 32 * 4)
        racy[order] = out.get()
    assert not np.array_equal(racy["forward"], racy["reverse"])
    assert (racy["forward"] == -1).sum() == 2 * 2 * 31  # unwritten slots read as 0xffffffff
    # A shuffled order: some lanes read their neighbour's write, some the poison, and another
    # seed another mix (neither end first).
    for order in ("random:1", "random:2"):
        read_poison = (racy[order] == -1).sum()
        assert 0 < read_poison < 2 * 2 * 31, order
    assert not np.array_equal(racy["random:1"], racy["random:2"])


def test_shared_memory_bounds_and_limits(cupy, mod):
    kernel = mod.get_function("rotate_shared")
    out = cupy.asarray(np.zeros(64, np.int32))
    with pytest.raises(RuntimeError, match="invalid memory access"):  # one slot short
        kernel((1,), (64,), (out, np.int32(1), np.int32(32)), shared_mem=2 * 32 * 4 - 16)
    with pytest.raises(RuntimeError, match="past the 49152 a block may have"):
        kernel((1,), (64,), (out, np.int32(1), np.int32(32)), shared_mem=49153)
    big = mod.get_function("rotate_shared")
    big.max_dynamic_shared_size_bytes = 100_000
    big((1,), (64,), (out, np.int32(1), np.int32(32)), shared_mem=100_000)
    words = cupy.asarray(np.zeros(100, np.uint32))
    mod.get_function("read_shared")((1,), (32,), (words, np.int32(100)), shared_mem=400)
    np.testing.assert_array_equal(words.get(), 0xFFFFFFFF)


def test_refuses_a_syncwarp_naming_an_exited_lane(cupy, mod):
    out = cupy.asarray(np.zeros(32, np.int32))
    with pytest.raises(RuntimeError, match="__syncwarp's mask 0xffffffff names lane 7"):
        mod.get_function("sync_after_exit")((1,), (32,), (out, np.int32(7)))
    mod.get_function("sync_after_exit")((1,), (32,), (out, np.int32(32)))
    np.testing.assert_array_equal(out.get(), 1)


def test_the_fitters_team_flag_reaches_every_lane_call_after_call(cupy):
    """fit.cuh's rf_team_flag hands lane 0's verdict to the warp; called again at once (a damped
    step failing, then succeeding at a larger λ), no lane may read the next verdict for the
    previous one: the review found no fit that takes that path, so it is pinned here."""
    from radint.gpu import kernel_source

    source = (
        kernel_source("fit")
        + r"""
extern "C" __global__ void team_flags(const int* verdicts, int* seen, int n) {
    extern __shared__ double scratch[];
    const RfScratch s = rf_scratch(scratch, 6, int(threadIdx.x % 32));
    for (int k = 0; k < n; ++k) {
        const bool mine = threadIdx.x % 32 == 0 ? verdicts[k] != 0 : verdicts[k] == 0;
        seen[k * 32 + threadIdx.x] = rf_team_flag(s, mine) ? 1 : 0;
    }
}
"""
    )
    verdicts = np.array([1, 0, 0, 1, 1, 0, 1], np.int32)
    kernel = cupy.RawModule(code=source).get_function("team_flags")
    for order in ("forward", "reverse", "random:3"):
        os.environ["RADINT_FAKE_CUPY_LANE_ORDER"] = order
        try:
            seen = cupy.asarray(np.full(7 * 32, -1, np.int32))
            kernel((1,), (32,), (cupy.asarray(verdicts), seen, np.int32(7)), shared_mem=4096)
        finally:
            del os.environ["RADINT_FAKE_CUPY_LANE_ORDER"]
        np.testing.assert_array_equal(
            seen.get().reshape(7, 32), np.repeat(verdicts[:, None], 32, 1)
        )
