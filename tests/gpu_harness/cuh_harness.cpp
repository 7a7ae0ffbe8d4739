// Host C++ driver for python/radint/gpu/kernels/integrate.cuh: runs the kernels' arithmetic on
// the CPU the way the CUDA kernels schedule it (single frames: RI_BIN_LANES emulated lanes per bin,
// lanes taking strided entries, the same shuffle-down tree; passes of frames: interleaved pixel by
// pixel, each bin of each frame summed whole by ri_bin_accumulate), so tests/test_gpu.py can compare it with the Rust
// engine without a GPU. Built by the test with g++ into a shared library and called via ctypes.
#include <vector>

#include "integrate.cuh"

// Emulate __shfl_down_sync(off) + merge for offsets RI_BIN_LANES/2..1: after each step lane i holds
// lane i + lane i+off; only lanes below `off` matter for lane 0's final value.
template <typename A>
static void tree_reduce(RiAcc<A> (&lanes)[RI_BIN_LANES]) {
    for (int off = RI_BIN_LANES / 2; off > 0; off >>= 1)
        for (int i = 0; i < off; ++i) {
            const RiAcc<A>& o = lanes[i + off];
            ri_acc_merge(lanes[i], o.s, o.a, o.v, o.c);
        }
}

// n_frames frames, integrated `batch` at a time, as the launcher does: batch 1 by the
// lane-split kernel (RI_BIN_LANES lanes a bin, shuffle tree), batch RI_MAX_NB by the
// frames-in-lanes kernel (each pass interleaved pixel by pixel, each (bin, frame) summed whole).
template <typename T, typename A>
static int csr(const ri_u64* indptr, const ri_u32* pixel, const float* area, const double* weight,
               const T* frames, ri_u64 n_pixels, ri_u64 n_frames, ri_u64 n_bins,
               const double* dark, const double* scale, int var_mode, const double* variance,
               double* signal, double* area_out, double* variance_out, ri_u32* count, int batch) {
    if (batch != 1 && batch != RI_MAX_NB) return 1;
    std::vector<RiPixelFrames<T>> interleaved(batch == 1 ? 0 : n_pixels);
    for (ri_u64 f0 = 0; f0 < n_frames; f0 += batch) {
        const int nb = int(n_frames - f0 < ri_u64(batch) ? n_frames - f0 : batch);
        for (ri_u64 p = 0; p < interleaved.size(); ++p)
            interleaved[p] = ri_interleave_pixel<T>(frames + f0 * n_pixels, n_pixels, nb, p);
        for (int k = 0; k < nb; ++k) {
            const ri_u64 o = (f0 + ri_u64(k)) * n_bins;
            double* vo = variance_out ? variance_out + o : nullptr;
            for (ri_u64 b = 0; b < n_bins; ++b) {
                RiAcc<A> lanes[RI_BIN_LANES];
                if (batch == 1) {
                    for (ri_u32 lane = 0; lane < RI_BIN_LANES; ++lane)
                        ri_lane_accumulate<T, A>(lanes[lane], indptr, pixel, area, weight,
                                                 frames + (f0 + k) * n_pixels, dark, scale,
                                                 var_mode, variance, b, lane, RI_BIN_LANES);
                    tree_reduce<A>(lanes);
                } else {
                    ri_bin_accumulate<T, A>(lanes[0], indptr, pixel, area, weight,
                                            interleaved[0].v + k, RI_MAX_NB, dark, scale,
                                            var_mode, variance, b);
                }
                ri_store<A>(lanes[0], b, signal + o, area_out + o, vo, count + o);
            }
        }
    }
    return 0;
}

#define RI_HOST_CSR(SUFFIX, T, A)                                                              \
    extern "C" int ri_host_csr_##SUFFIX(                                                       \
        const ri_u64* indptr, const ri_u32* pixel, const float* area, const double* weight,    \
        const T* frames, ri_u64 n_pixels, ri_u64 n_frames, ri_u64 n_bins, const double* dark,  \
        const double* scale, int var_mode, const double* variance, double* signal,             \
        double* area_out, double* variance_out, ri_u32* count, int batch) {                    \
        return csr<T, A>(indptr, pixel, area, weight, frames, n_pixels, n_frames, n_bins,      \
                         dark, scale, var_mode, variance, signal, area_out, variance_out,      \
                         count, batch);                                                        \
    }

#define RI_HOST_CSR_BOTH(SUFFIX, T) \
    RI_HOST_CSR(SUFFIX##_f64, T, double) RI_HOST_CSR(SUFFIX##_f32, T, float)

RI_HOST_CSR_BOTH(u8, ri_u8)
RI_HOST_CSR_BOTH(u16, ri_u16)
RI_HOST_CSR_BOTH(u32, ri_u32)
RI_HOST_CSR_BOTH(i32, ri_i32)
RI_HOST_CSR_BOTH(i64, ri_i64)
RI_HOST_CSR_BOTH(f32, float)
RI_HOST_CSR_BOTH(f64, double)

// ri_cross_<dtype>: one value per (frame, radial row).
#define RI_HOST_CROSS(SUFFIX, T)                                                              \
    extern "C" void ri_host_cross_##SUFFIX(                                                   \
        const ri_u64* indptr, const ri_u32* pixel, const double* weight, const T* frames,     \
        ri_u64 n_pixels, ri_u64 n_r, ri_u64 n_rows, const double* dark, const double* scale,  \
        int var_mode, const double* variance, double* cross) {                                \
        for (ri_u64 row = 0; row < n_rows; ++row)                                             \
            cross[row] = ri_lane_cross<T>(indptr, pixel, weight,                              \
                                          frames + (row / n_r) * n_pixels, row % n_r, dark,   \
                                          scale, var_mode, variance, 0, 1);                   \
    }

RI_HOST_CROSS(u8, ri_u8)
RI_HOST_CROSS(u16, ri_u16)
RI_HOST_CROSS(u32, ri_u32)
RI_HOST_CROSS(i32, ri_i32)
RI_HOST_CROSS(i64, ri_i64)
RI_HOST_CROSS(f32, float)
RI_HOST_CROSS(f64, double)

// ri_finalize_cake then ri_lineout, thread loops unrolled into host loops.
extern "C" void ri_host_finalize(const double* signal, const double* area, const double* variance,
                                 const ri_u32* count, const ri_u8* mask_hit, const double* cross,
                                 ri_u64 n_frames, ri_u64 n_r, int n_eta, int rules, int normalize,
                                 int lineout, int nan_masked, double empty, double* cake,
                                 double* sigma, double* line, double* line_sigma) {
    const RiFinalize f = {rules, normalize, lineout, nan_masked, empty};
    const int with_var = variance != nullptr;
    const ri_u64 n_bins = n_r * ri_u64(n_eta);
    for (ri_u64 i = 0; i < n_frames * n_bins; ++i) {
        double value, sig;
        ri_finalize_bin(f, signal[i], area[i], with_var ? variance[i] : 0.0, count[i],
                        mask_hit[i % n_bins], with_var, &value, &sig);
        cake[i] = value;
        if (with_var) sigma[i] = sig;
    }
    for (ri_u64 row = 0; row < n_frames * n_r; ++row) {
        const ri_u64 i0 = row * ri_u64(n_eta);
        double value, sig;
        ri_lineout_row(f, n_eta, signal + i0, area + i0, with_var ? variance + i0 : nullptr,
                       count + i0, mask_hit + (row % n_r) * ri_u64(n_eta), cake + i0,
                       with_var ? sigma + i0 : nullptr, 1, with_var, cross ? cross[row] : 0.0,
                       &value, &sig);
        line[row] = value;
        if (with_var) line_sigma[row] = sig;
    }
}
