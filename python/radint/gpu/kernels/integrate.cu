// radint CSR integration kernels. Thin on purpose: index arithmetic, warp shuffles, loads and
// stores. All arithmetic is in integrate.cuh, which the CPU test suite compiles with the host
// C++ compiler and checks against the Rust engine (tests/gpu_harness/cuh_harness.cpp).
//
// Loaded by radint.gpu through one cached cupy.RawModule; the header is inlined into this source
// before compilation (so NVRTC needs no include path). Every kernel is `extern "C"` so names are
// not mangled: ri_csr_<frame dtype>_<accumulator> (sums and the finalized cake; lanes split a
// bin), ri_csr_lanes_<frame dtype>_<accumulator> (the same, frames in lanes),
// ri_interleave_<frame dtype> (a pass's frames pixel by pixel, for the latter),
// ri_cross_<frame dtype>, ri_spread_<frame dtype> (the azimuthal error model), ri_lineout. Null pointers (no weight / dark / scale / variance)
// are passed as 0.
#include "integrate.cuh"

#define RI_FULL_MASK 0xffffffffu

// Store bin b's reduced sums for one frame (bin-major, r·n_eta + e) and, finalized
// (ri_finalize_bin), its cake value and sigma η-major (e·n_r + r), the layout the caller
// returns: no separate finalize pass and no transpose. o: the frame's offset in the outputs.
template <typename A>
__device__ __forceinline__ void ri_write_bin(const RiAcc<A>& acc, ri_u64 b, ri_u64 o,
                                             ri_u64 n_bins, int n_eta,
                                             const ri_u8* __restrict__ mask_hit,
                                             const RiFinalize& f, double* __restrict__ signal,
                                             double* __restrict__ area_out,
                                             double* __restrict__ variance_out,
                                             ri_u32* __restrict__ count,
                                             double* __restrict__ cake,
                                             double* __restrict__ sigma) {
    ri_store<A>(acc, b, signal + o, area_out + o, variance_out ? variance_out + o : 0,
                count + o);
    const int with_var = variance_out != 0;
    const ri_u64 r = b / ri_u64(n_eta);
    const ri_u64 eta_major = (b - r * ri_u64(n_eta)) * (n_bins / ri_u64(n_eta)) + r;
    // The sums as stored (in double), which the Rust finalize reads.
    double value, sig;
    ri_finalize_bin(f, double(acc.s), double(acc.a), with_var ? double(acc.v) : 0.0, acc.c,
                    mask_hit[b], with_var, &value, &sig);
    cake[o + eta_major] = value;
    if (with_var) sigma[o + eta_major] = sig;
}

// Lane split (single frames): RI_BIN_LANES lanes per bin, each summing a strided share of the
// bin's entries, combined with a shuffle tree (offsets RI_BIN_LANES/2 … 1); the bin's first
// lane writes the outputs.
//
// nb frames per launch, interleaved by block: block i integrates frame i % nb over bin block
// i / nb, so the nb blocks that read the same map entries run side by side and all but the
// first find them in L2. Passes of several frames go to the frames-in-lanes kernel below,
// unless the launcher is told otherwise (radint.gpu.LANES_MIN_FRAMES).
template <typename T, typename A>
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
    const ri_u32 lane = threadIdx.x & (RI_BIN_LANES - 1);
    const ri_u64 frame = blockIdx.x % ri_u32(nb);
    const ri_u64 b = (ri_u64(blockIdx.x / ri_u32(nb)) * blockDim.x + threadIdx.x) / RI_BIN_LANES;
    // No early return: the shuffles below need every lane of the warp, also those of a bin
    // past the end (they sum nothing).
    const bool active = b < n_bins;
    RiAcc<A> acc;
    if (active) {
        ri_lane_accumulate<T, A>(acc, indptr, pixel, area, weight, frames + frame * n_pixels,
                                 dark, scale, var_mode, variance, b, lane, RI_BIN_LANES);
    } else {
        ri_acc_zero(acc);
    }
#pragma unroll
    for (int off = RI_BIN_LANES / 2; off > 0; off >>= 1) {
        const A s = __shfl_down_sync(RI_FULL_MASK, acc.s, off, RI_BIN_LANES);
        const A a = __shfl_down_sync(RI_FULL_MASK, acc.a, off, RI_BIN_LANES);
        const A v = __shfl_down_sync(RI_FULL_MASK, acc.v, off, RI_BIN_LANES);
        const ri_u32 c = __shfl_down_sync(RI_FULL_MASK, acc.c, off, RI_BIN_LANES);
        ri_acc_merge(acc, s, a, v, c);
    }
    if (!active || lane != 0) return;
    ri_write_bin<A>(acc, b, frame * n_bins, n_bins, n_eta, mask_hit, f, signal, area_out,
                    variance_out, count, cake, sigma);
}

// Frames in lanes (passes of several frames): thread t sums bin t / nb of frame t % nb over the
// whole bin (ri_bin_accumulate: the lane-split kernel's sums, bit for bit), from the pass's
// frames interleaved pixel by pixel (ri_interleave_*).
// The nb threads of a bin load its map entries, dark and scale at the same addresses (one
// request for all frames) and its frames' values of a pixel from one or two 32-byte sectors,
// where frames apart would each cost a request and a sector: the lane-split kernel spent most
// of its time waiting on those loads (Nsight Compute on an H200). A thread has a chunk's 8
// gathers in flight at once (ri_bin_accumulate). No shuffles, so threads past the last bin
// simply leave.
template <typename T, typename A>
__device__ __forceinline__ void ri_csr_lanes(const ri_u64* __restrict__ indptr,
                                             const ri_u32* __restrict__ pixel,
                                             const float* __restrict__ area,
                                             const double* __restrict__ weight,
                                             const T* __restrict__ interleaved,
                                             ri_u64 /* n_pixels */, int nb, ri_u64 n_bins,
                                             int n_eta,
                                             const double* __restrict__ dark,
                                             const double* __restrict__ scale, int var_mode,
                                             const double* __restrict__ variance,
                                             const ri_u8* __restrict__ mask_hit,
                                             const RiFinalize& f, double* __restrict__ signal,
                                             double* __restrict__ area_out,
                                             double* __restrict__ variance_out,
                                             ri_u32* __restrict__ count,
                                             double* __restrict__ cake,
                                             double* __restrict__ sigma) {
    const ri_u64 t = ri_u64(blockIdx.x) * blockDim.x + threadIdx.x;
    const ri_u64 b = t / ri_u64(nb);
    if (b >= n_bins) return;
    const ri_u64 frame = t - b * ri_u64(nb);
    RiAcc<A> acc;
    ri_bin_accumulate<T, A>(acc, indptr, pixel, area, weight, interleaved + frame, RI_MAX_NB,
                            dark, scale, var_mode, variance, b);
    ri_write_bin<A>(acc, b, frame * n_bins, n_bins, n_eta, mask_hit, f, signal, area_out,
                    variance_out, count, cake, sigma);
}

// Both CSR kernels take the same parameters (for the frames-in-lanes one, `frames` is the
// interleaved pass and n_pixels is unused). Its blocks are RI_LANES_BLOCK threads, small so
// that an SM holds as many warps as its registers allow (ptxas for sm_90: 128 registers with
// float64 sums, 16 warps; 80-94 with float32, 20-24).
#define RI_LANES_BLOCK 64
#define RI_CSR_KERNEL(NAME, BODY, BOUNDS, T, A)                                                 \
    extern "C" __global__ void __launch_bounds__(BOUNDS)                                       \
        NAME(const ri_u64* indptr, const ri_u32* pixel, const float* area,                     \
             const double* weight, const T* frames, ri_u64 n_pixels, int nb, ri_u64 n_bins,    \
             int n_eta, const double* dark, const double* scale, int var_mode,                 \
             const double* variance, const ri_u8* mask_hit, int rules, int normalize,          \
             int lineout, int nan_masked, double empty, double* signal, double* area_out,      \
             double* variance_out, ri_u32* count, double* cake, double* sigma) {               \
        const RiFinalize f = {rules, normalize, lineout, nan_masked, empty};                   \
        BODY<T, A>(indptr, pixel, area, weight, frames, n_pixels, nb, n_bins, n_eta, dark,     \
                   scale, var_mode, variance, mask_hit, f, signal, area_out, variance_out,     \
                   count, cake, sigma);                                                        \
    }

// A pass's nb frames (frame-major, n_pixels each) interleaved pixel by pixel: RI_MAX_NB values
// per pixel (RiPixelFrames), one thread per pixel. Each frame's loads are coalesced across the
// warp; each thread stores its pixel's group with vector stores.
#define RI_INTERLEAVE_KERNEL(SUFFIX, T)                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        ri_interleave_##SUFFIX(const T* frames, ri_u64 n_pixels, int nb, T* out) {             \
        const ri_u64 p = ri_u64(blockIdx.x) * blockDim.x + threadIdx.x;                        \
        if (p >= n_pixels) return;                                                             \
        reinterpret_cast<RiPixelFrames<T>*>(out)[p] =                                         \
            ri_interleave_pixel<T>(frames, n_pixels, nb, p);                                   \
    }

#define RI_CSR_KERNELS(SUFFIX, T)                                                      \
    RI_CSR_KERNEL(ri_csr_##SUFFIX##_f64, ri_csr, 256, T, double)                        \
    RI_CSR_KERNEL(ri_csr_##SUFFIX##_f32, ri_csr, 256, T, float)                         \
    RI_CSR_KERNEL(ri_csr_lanes_##SUFFIX##_f64, ri_csr_lanes, RI_LANES_BLOCK, T, double) \
    RI_CSR_KERNEL(ri_csr_lanes_##SUFFIX##_f32, ri_csr_lanes, RI_LANES_BLOCK, T, float)  \
    RI_INTERLEAVE_KERNEL(SUFFIX, T)

RI_CSR_KERNELS(u8, ri_u8)
RI_CSR_KERNELS(u16, ri_u16)
RI_CSR_KERNELS(u32, ri_u32)
RI_CSR_KERNELS(i32, ri_i32)
RI_CSR_KERNELS(i64, ri_i64)
RI_CSR_KERNELS(f32, float)
RI_CSR_KERNELS(f64, double)

// One warp per (frame, radial row): the covariance term of the row's lineout variance
// (ri_lane_cross: lane-strided, then a shuffle tree) for nb frames of n_pixels values
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
        double acc = ri_lane_cross<T>(indptr, pixel, weight, frame, r, dark, scale, var_mode,  \
                                      variance, lane, RI_WARP);                                \
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

// One warp per (frame, radial row): pyFAI's azimuthal error model (Rust integrate/azimuthal.rs)
// after the CSR kernel's sums, for nb frames of n_pixels values each, contiguous. Each bin's
// Σ a²·(x − mean)² goes to its variance sum and its finalized sigma (η-major, as ri_csr_*): with
// 32 η bins or more a lane takes whole bins (in entry order, the Rust sum's bits), with fewer
// the lanes share a bin's entries and a shuffle tree merges them. The row's ring term (about
// the ring's mean, each pixel once) less the bins' goes to cross[row], which ri_lineout adds as
// it adds the Poisson covariance term. Every lane computes the ring's mean itself, from the
// row's sums in order (the Rust sum's bits).
#define RI_SPREAD_KERNEL(SUFFIX, T)                                                             \
    extern "C" __global__ void __launch_bounds__(256) ri_spread_##SUFFIX(                      \
        const ri_u64* indptr, const ri_u32* pixel, const float* area,                          \
        const ri_u64* cross_indptr, const ri_u32* cross_pixel, const double* cross_weight,     \
        const T* frames, ri_u64 n_pixels, int n_eta, ri_u64 n_r, ri_u64 n_rows,                \
        const double* dark, const double* scale, const double* signal,                         \
        const double* area_sum, const ri_u32* count, const ri_u8* mask_hit, int rules,         \
        int normalize, int lineout, int nan_masked, double empty, double* variance,            \
        double* sigma, double* cross) {                                                        \
        const ri_u32 lane = threadIdx.x & (RI_WARP - 1);                                       \
        const ri_u64 row = (ri_u64(blockIdx.x) * blockDim.x + threadIdx.x) / RI_WARP;          \
        /* blockDim.x is a multiple of 32: a whole warp leaves together (full-mask shuffles). */ \
        if (row >= n_rows) return;                                                             \
        const RiFinalize f = {rules, normalize, lineout, nan_masked, empty};                   \
        const ri_u64 r = row % n_r;                                                            \
        const T* frame = frames + (row / n_r) * n_pixels;                                      \
        const ri_u64 i0 = row * ri_u64(n_eta); /* this row's bins in the frame-major sums */   \
        const ri_u64 n_bins = n_r * ri_u64(n_eta);                                             \
        const ri_u64 c0 = (row / n_r) * n_bins + r; /* its η-major cake column */              \
        double ring_signal = 0.0, ring_area = 0.0;                                             \
        for (int e = 0; e < n_eta; ++e) {                                                      \
            ring_signal += signal[i0 + e];                                                     \
            ring_area += area_sum[i0 + e];                                                     \
        }                                                                                      \
        const double ring_mean = ri_spread_mean(ring_signal, ring_area);                       \
        double ring = 0.0, bins_total = 0.0;                                                   \
        if (n_eta >= RI_WARP) {                                                                \
            /* Lanes take whole bins (a cake's η bins hold few entries each): no shuffles. */  \
            for (int e = lane; e < n_eta; e += RI_WARP) {                                      \
                const ri_u64 i = i0 + ri_u64(e);                                               \
                const double mean = ri_spread_mean(signal[i], area_sum[i]);                    \
                const double own = ri_lane_spread<T>(indptr, pixel, area, frame, r * n_eta + e, \
                                                     dark, scale, mean, ring_mean, &ring, 0, 1); \
                ri_spread_write(f, own, signal[i], area_sum[i], count[i],                      \
                                mask_hit[r * n_eta + e], variance + i,                         \
                                sigma + c0 + ri_u64(e) * n_r);                                 \
                bins_total += own;                                                             \
            }                                                                                  \
        } else {                                                                               \
            /* Lanes share each bin's entries (a lineout's bins hold many). */                 \
            for (int e = 0; e < n_eta; ++e) {                                                  \
                const ri_u64 i = i0 + ri_u64(e);                                               \
                const double mean = ri_spread_mean(signal[i], area_sum[i]);                    \
                double own = ri_lane_spread<T>(indptr, pixel, area, frame, r * n_eta + e,      \
                                               dark, scale, mean, ring_mean, &ring, lane,      \
                                               RI_WARP);                                       \
                for (int off = RI_WARP / 2; off > 0; off >>= 1)                                \
                    own += __shfl_down_sync(RI_FULL_MASK, own, off);                           \
                if (lane == 0) {                                                               \
                    ri_spread_write(f, own, signal[i], area_sum[i], count[i],                  \
                                    mask_hit[r * n_eta + e], variance + i,                     \
                                    sigma + c0 + ri_u64(e) * n_r);                             \
                    bins_total += own;                                                         \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        ring += ri_lane_spread_cross<T>(cross_indptr, cross_pixel, cross_weight, frame, r,     \
                                        dark, scale, ring_mean, lane, RI_WARP);                \
        for (int off = RI_WARP / 2; off > 0; off >>= 1) {                                      \
            ring += __shfl_down_sync(RI_FULL_MASK, ring, off);                                 \
            bins_total += __shfl_down_sync(RI_FULL_MASK, bins_total, off);                     \
        }                                                                                      \
        if (lane == 0) cross[row] = ring - bins_total;                                         \
    }

RI_SPREAD_KERNEL(u8, ri_u8)
RI_SPREAD_KERNEL(u16, ri_u16)
RI_SPREAD_KERNEL(u32, ri_u32)
RI_SPREAD_KERNEL(i32, ri_i32)
RI_SPREAD_KERNEL(i64, ri_i64)
RI_SPREAD_KERNEL(f32, float)
RI_SPREAD_KERNEL(f64, double)

// One warp per (frame, radial row): lineout value and sigma over the row's n_eta bins, lanes
// taking strided bins (ri_line_add), merged by a shuffle tree; the per-bin sums are bin-major,
// the cake and its sigma η-major (as ri_csr_* writes them). `cross` (per row, from ri_cross_*)
// may be 0: no shared-pixel term.
extern "C" __global__ void __launch_bounds__(256)
    ri_lineout(const double* signal, const double* area, const double* variance,
               const ri_u32* count, const ri_u8* mask_hit, const double* cake,
               const double* sigma, const double* cross, int n_eta, ri_u64 n_r, ri_u64 n_rows,
               int rules, int normalize, int lineout, int nan_masked, double empty, double* line,
               double* line_sigma) {
    const ri_u32 lane = threadIdx.x & (RI_WARP - 1);
    const ri_u64 row = (ri_u64(blockIdx.x) * blockDim.x + threadIdx.x) / RI_WARP;
    // blockDim.x is a multiple of 32, so a whole warp leaves together (shuffles stay full-mask).
    if (row >= n_rows) return;
    const RiFinalize f = {rules, normalize, lineout, nan_masked, empty};
    const int kind = ri_line_kind(f);
    const int with_var = variance != 0;
    const ri_u64 i0 = row * ri_u64(n_eta);
    const ri_u64 r = row % n_r;
    const ri_u64 m0 = r * ri_u64(n_eta);
    // Row r of frame k in the η-major cake: k·n_bins + e·n_r + r.
    const ri_u64 c0 = (row / n_r) * n_r * ri_u64(n_eta) + r;
    RiLineAcc acc;
    ri_line_zero(acc);
    for (int e = lane; e < n_eta; e += RI_WARP) {
        const ri_u64 i = i0 + ri_u64(e);
        const ri_u64 ci = c0 + ri_u64(e) * n_r;
        const bool uses_cake = kind != RI_LINE_AREA_WEIGHTED;
        ri_line_add(f, kind, acc, with_var, signal[i], area[i], with_var ? variance[i] : 0.0,
                    count[i], mask_hit[m0 + e], uses_cake ? cake[ci] : 0.0,
                    uses_cake && with_var ? sigma[ci] : 0.0);
    }
    for (int off = RI_WARP / 2; off > 0; off >>= 1) {
        const double x = __shfl_down_sync(RI_FULL_MASK, acc.x, off);
        const double y = __shfl_down_sync(RI_FULL_MASK, acc.y, off);
        const double z = __shfl_down_sync(RI_FULL_MASK, acc.z, off);
        const ri_u64 n = __shfl_down_sync(RI_FULL_MASK, acc.n, off);
        const int dropped = __shfl_down_sync(RI_FULL_MASK, acc.dropped, off);
        ri_line_merge(acc, x, y, z, n, dropped);
    }
    if (lane != 0) return;
    double value, sig;
    ri_line_final(f, kind, acc, with_var, cross ? cross[row] : 0.0, &value, &sig);
    line[row] = value;
    if (with_var) line_sigma[row] = sig;
}
