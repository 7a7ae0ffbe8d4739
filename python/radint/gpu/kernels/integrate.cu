// radint CSR integration kernels. Thin on purpose: index arithmetic, warp shuffles, loads and
// stores. All arithmetic is in integrate.cuh, which the CPU test suite compiles with the host
// C++ compiler and checks against the Rust engine (tests/gpu_harness/cuh_harness.cpp).
//
// Loaded by radint.gpu through one cached cupy.RawModule; the header is inlined into this source
// before compilation (so NVRTC needs no include path). Every kernel is `extern "C"` so names are
// not mangled: ri_csr_<frame dtype>_<accumulator>_nb<frames per pass> (sums and the finalized
// cake), ri_cross_<frame dtype>, ri_lineout. Null pointers (no weight / dark / scale / variance)
// are passed as 0.
#include "integrate.cuh"

#define RI_FULL_MASK 0xffffffffu

// One warp per bin: each lane sums a strided share of the bin's entries for nb ≤ NB frames
// (the map entry is read once for all of them), then the lanes are combined with a shuffle tree
// (offsets 16, 8, 4, 2, 1) and lane 0 writes the four accumulators of each frame (bin-major,
// r·n_eta + e) and, finalized (ri_finalize_bin), its cake value and sigma η-major (e·n_r + r),
// the layout the caller returns: no separate finalize pass and no transpose.
template <typename T, typename A, int NB>
__device__ __forceinline__ void ri_csr(const ri_u64* __restrict__ indptr,
                                       const ri_u32* __restrict__ pixel,
                                       const float* __restrict__ area,
                                       const double* __restrict__ weight,
                                       const T* __restrict__ frames, ri_u64 n_pixels, int nb,
                                       ri_u64 n_bins, int n_eta, const double* __restrict__ dark,
                                       const double* __restrict__ scale, int var_mode,
                                       const double* __restrict__ variance,
                                       const ri_u8* __restrict__ mask_hit, const RiFinalize& f,
                                       double* __restrict__ signal, double* __restrict__ area_out,
                                       double* __restrict__ variance_out,
                                       ri_u32* __restrict__ count, double* __restrict__ cake,
                                       double* __restrict__ sigma) {
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
    if (lane != 0) return;
    ri_store<A, NB>(acc, nb, b, n_bins, signal, area_out, variance_out, count);
    const int with_var = variance_out != 0;
    const ri_u64 r = b / ri_u64(n_eta);
    const ri_u64 eta_major = (b - r * ri_u64(n_eta)) * (n_bins / ri_u64(n_eta)) + r;
    const ri_u8 masked = mask_hit[b];
#pragma unroll
    for (int k = 0; k < NB; ++k) {
        if (k >= nb) break;
        // The sums as stored (in double), which the Rust finalize reads.
        double value, sig;
        ri_finalize_bin(f, double(acc[k].s), double(acc[k].a), with_var ? double(acc[k].v) : 0.0,
                        acc[k].c, masked, with_var, &value, &sig);
        cake[ri_u64(k) * n_bins + eta_major] = value;
        if (with_var) sigma[ri_u64(k) * n_bins + eta_major] = sig;
    }
}

#define RI_CSR_KERNEL(NAME, T, A, NB)                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        NAME(const ri_u64* indptr, const ri_u32* pixel, const float* area,                     \
             const double* weight, const T* frames, ri_u64 n_pixels, int nb, ri_u64 n_bins,    \
             int n_eta, const double* dark, const double* scale, int var_mode,                 \
             const double* variance, const ri_u8* mask_hit, int rules, int normalize,          \
             int lineout, int nan_masked, double empty, double* signal, double* area_out,      \
             double* variance_out, ri_u32* count, double* cake, double* sigma) {               \
        const RiFinalize f = {rules, normalize, lineout, nan_masked, empty};                   \
        ri_csr<T, A, NB>(indptr, pixel, area, weight, frames, n_pixels, nb, n_bins, n_eta,     \
                         dark, scale, var_mode, variance, mask_hit, f, signal, area_out,       \
                         variance_out, count, cake, sigma);                                    \
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

// One warp per (frame, radial row): the covariance term of the row's lineout variance
// (ri_cross_term summed lane-strided, then a shuffle tree) for nb frames of n_pixels values
// each, contiguous.
#define RI_CROSS_KERNEL(SUFFIX, T)                                                              \
    extern "C" __global__ void __launch_bounds__(256) ri_cross_##SUFFIX(                       \
        const ri_u64* indptr, const ri_u32* pixel, const double* weight, const T* frames,      \
        ri_u64 n_pixels, ri_u64 n_r, ri_u64 n_rows, const double* dark, const double* scale,   \
        int var_mode, const double* variance, double* cross) {                                 \
        const ri_u32 lane = threadIdx.x & (RI_WARP - 1);                                       \
        const ri_u64 row = (ri_u64(blockIdx.x) * blockDim.x + threadIdx.x) / RI_WARP;          \
        if (row >= n_rows) return;                                                             \
        const ri_u64 r = row % n_r;                                                            \
        const T* frame = frames + (row / n_r) * n_pixels;                                      \
        double acc = 0.0;                                                                      \
        for (ri_u64 e = indptr[r] + lane; e < indptr[r + 1]; e += RI_WARP)                     \
            acc += ri_cross_term<T>(pixel, weight, frame, e, dark, scale, var_mode, variance); \
        for (int off = RI_WARP / 2; off > 0; off >>= 1)                                        \
            acc += __shfl_down_sync(RI_FULL_MASK, acc, off);                                   \
        if (lane == 0) cross[row] = acc;                                                       \
    }

RI_CROSS_KERNEL(u8, ri_u8)
RI_CROSS_KERNEL(u16, ri_u16)
RI_CROSS_KERNEL(u32, ri_u32)
RI_CROSS_KERNEL(i32, ri_i32)
RI_CROSS_KERNEL(i64, ri_i64)
RI_CROSS_KERNEL(f32, float)
RI_CROSS_KERNEL(f64, double)

// One thread per (frame, radial row): lineout value and sigma over the row's n_eta bins; the
// per-bin sums are bin-major, the cake and its sigma η-major (as ri_csr_* writes them).
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
    const ri_u64 r = row % n_r;
    const ri_u64 m0 = r * ri_u64(n_eta);
    // Row r of frame k in the η-major cake: k·n_bins + e·n_r + r.
    const ri_u64 c0 = (row / n_r) * n_r * ri_u64(n_eta) + r;
    double value, sig;
    ri_lineout_row(f, n_eta, signal + i0, area + i0, with_var ? variance + i0 : 0, count + i0,
                   mask_hit + m0, cake + c0, with_var ? sigma + c0 : 0, n_r, with_var,
                   cross ? cross[row] : 0.0, &value, &sig);
    line[row] = value;
    if (with_var) line_sigma[row] = sig;
}
