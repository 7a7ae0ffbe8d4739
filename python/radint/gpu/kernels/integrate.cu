// radint CSR integration kernels. Thin on purpose: index arithmetic, warp shuffles, loads and
// stores. All arithmetic is in integrate.cuh, which the CPU test suite compiles with the host
// C++ compiler and checks against the Rust engine (tests/gpu_harness/cuh_harness.cpp).
//
// Loaded by radint.gpu through one cached cupy.RawModule; the header is inlined into this source
// before compilation (so NVRTC needs no include path). Every kernel is `extern "C"` so names are
// not mangled: ri_csr_<frame dtype>_<accumulator>_nb<frames per pass>, ri_finalize_cake,
// ri_cross_<frame dtype>, ri_lineout. Null pointers (no weight / dark / scale / variance) are passed as 0.
#include "integrate.cuh"

#define RI_FULL_MASK 0xffffffffu

// One warp per bin: each lane sums a strided share of the bin's entries for nb ≤ NB frames
// (the map entry is read once for all of them), then the lanes are combined with a shuffle tree
// (offsets 16, 8, 4, 2, 1) and lane 0 writes the four accumulators of each frame.
template <typename T, typename A, int NB>
__device__ __forceinline__ void ri_csr(const ri_u64* __restrict__ indptr,
                                       const ri_u32* __restrict__ pixel,
                                       const float* __restrict__ area,
                                       const double* __restrict__ weight,
                                       const T* __restrict__ frames, ri_u64 n_pixels, int nb,
                                       ri_u64 n_bins, const double* __restrict__ dark,
                                       const double* __restrict__ scale, int var_mode,
                                       const double* __restrict__ variance,
                                       double* __restrict__ signal, double* __restrict__ area_out,
                                       double* __restrict__ variance_out,
                                       ri_u32* __restrict__ count) {
    const ri_u32 lane = threadIdx.x & (RI_WARP - 1);
    const ri_u64 b = (ri_u64(blockIdx.x) * blockDim.x + threadIdx.x) / RI_WARP;
    // blockDim.x is a multiple of 32, so a whole warp leaves together (shuffles stay full-mask).
    if (b >= n_bins) return;
    RiAcc<A> acc[NB];
    ri_lane_accumulate<T, A, NB>(acc, nb, indptr, pixel, area, weight, frames, n_pixels, dark,
                                 scale, var_mode, variance, b, lane, RI_WARP);
#pragma unroll
    for (int off = RI_WARP / 2; off > 0; off >>= 1) {
#pragma unroll
        for (int k = 0; k < NB; ++k) {
            const A s = __shfl_down_sync(RI_FULL_MASK, acc[k].s, off);
            const A a = __shfl_down_sync(RI_FULL_MASK, acc[k].a, off);
            const A v = __shfl_down_sync(RI_FULL_MASK, acc[k].v, off);
            const ri_u32 c = __shfl_down_sync(RI_FULL_MASK, acc[k].c, off);
            ri_acc_merge(acc[k], s, a, v, c);
        }
    }
    if (lane == 0) ri_store<A, NB>(acc, nb, b, n_bins, signal, area_out, variance_out, count);
}

#define RI_CSR_KERNEL(NAME, T, A, NB)                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        NAME(const ri_u64* indptr, const ri_u32* pixel, const float* area,                     \
             const double* weight, const T* frames, ri_u64 n_pixels, int nb, ri_u64 n_bins,    \
             const double* dark, const double* scale, int var_mode, const double* variance,    \
             double* signal, double* area_out, double* variance_out, ri_u32* count) {          \
        ri_csr<T, A, NB>(indptr, pixel, area, weight, frames, n_pixels, nb, n_bins, dark,      \
                         scale, var_mode, variance, signal, area_out, variance_out, count);    \
    }

#define RI_CSR_KERNELS(SUFFIX, T)                                \
    RI_CSR_KERNEL(ri_csr_##SUFFIX##_f64_nb1, T, double, 1)       \
    RI_CSR_KERNEL(ri_csr_##SUFFIX##_f64_nb8, T, double, RI_MAX_NB) \
    RI_CSR_KERNEL(ri_csr_##SUFFIX##_f32_nb1, T, float, 1)        \
    RI_CSR_KERNEL(ri_csr_##SUFFIX##_f32_nb8, T, float, RI_MAX_NB)

RI_CSR_KERNELS(u8, ri_u8)
RI_CSR_KERNELS(u16, ri_u16)
RI_CSR_KERNELS(u32, ri_u32)
RI_CSR_KERNELS(i32, ri_i32)
RI_CSR_KERNELS(i64, ri_i64)
RI_CSR_KERNELS(f32, float)
RI_CSR_KERNELS(f64, double)

// One thread per (frame, bin): cake value and sigma. variance / sigma may be 0 (no error model).
extern "C" __global__ void ri_finalize_cake(const double* signal, const double* area,
                                            const double* variance, const ri_u32* count,
                                            const ri_u8* mask_hit, ri_u64 n_bins,
                                            ri_u64 n_total, int rules, int normalize,
                                            int lineout, int nan_masked, double empty,
                                            double* cake, double* sigma) {
    const ri_u64 i = ri_u64(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_total) return;
    const RiFinalize f = {rules, normalize, lineout, nan_masked, empty};
    const int with_var = variance != 0;
    double value, sig;
    ri_finalize_bin(f, signal[i], area[i], with_var ? variance[i] : 0.0, count[i],
                    mask_hit[i % n_bins], with_var, &value, &sig);
    cake[i] = value;
    if (with_var) sigma[i] = sig;
}

// One thread per (frame, radial row): the covariance term of the row's lineout variance
// (ri_row_cross) for nb frames of n_pixels values each, contiguous.
#define RI_CROSS_KERNEL(SUFFIX, T)                                                              \
    extern "C" __global__ void ri_cross_##SUFFIX(                                              \
        const ri_u64* indptr, const ri_u32* pixel, const double* weight, const T* frames,      \
        ri_u64 n_pixels, ri_u64 n_r, ri_u64 n_rows, const double* dark, const double* scale,   \
        int var_mode, const double* variance, double* cross) {                                 \
        const ri_u64 row = ri_u64(blockIdx.x) * blockDim.x + threadIdx.x;                      \
        if (row >= n_rows) return;                                                             \
        cross[row] = ri_row_cross<T>(indptr, pixel, weight, frames + (row / n_r) * n_pixels,   \
                                     row % n_r, dark, scale, var_mode, variance);              \
    }

RI_CROSS_KERNEL(u8, ri_u8)
RI_CROSS_KERNEL(u16, ri_u16)
RI_CROSS_KERNEL(u32, ri_u32)
RI_CROSS_KERNEL(i32, ri_i32)
RI_CROSS_KERNEL(i64, ri_i64)
RI_CROSS_KERNEL(f32, float)
RI_CROSS_KERNEL(f64, double)

// One thread per (frame, radial row): lineout value and sigma over the row's n_eta bins.
// `cross` (per row, from ri_cross_*) may be 0: no shared-pixel term.
extern "C" __global__ void ri_lineout(const double* signal, const double* area,
                                      const double* variance, const ri_u32* count,
                                      const ri_u8* mask_hit, const double* cake,
                                      const double* sigma, const double* cross, int n_eta,
                                      ri_u64 n_r, ri_u64 n_rows, int rules, int normalize,
                                      int lineout, int nan_masked, double empty, double* line,
                                      double* line_sigma) {
    const ri_u64 row = ri_u64(blockIdx.x) * blockDim.x + threadIdx.x;
    if (row >= n_rows) return;
    const RiFinalize f = {rules, normalize, lineout, nan_masked, empty};
    const int with_var = variance != 0;
    const ri_u64 i0 = row * ri_u64(n_eta);
    const ri_u64 m0 = (row % n_r) * ri_u64(n_eta);
    double value, sig;
    ri_lineout_row(f, n_eta, signal + i0, area + i0, with_var ? variance + i0 : 0, count + i0,
                   mask_hit + m0, cake + i0, with_var ? sigma + i0 : 0, with_var,
                   cross ? cross[row] : 0.0, &value, &sig);
    line[row] = value;
    if (with_var) line_sigma[row] = sig;
}
