// radint CSR integration arithmetic, shared by the CUDA kernels (integrate.cu, compiled by NVRTC)
// and the host C++ harness (tests/gpu_harness/cuh_harness.cpp, compiled by g++).
//
// Everything numerical lives here as __host__ __device__ inline functions so that the CPU-only
// test suite checks the exact arithmetic the GPU runs against the Rust engine
// (rust/radint-core/src/integrate/). The kernels only add index arithmetic, warp shuffles,
// loads and stores.
//
// Contract (same as the Rust engine), per bin over its map entries e (pixel p, overlap a,
// signal weight w = a unless the map carries MIDAS weights), D = raw − dark, s = per-pixel scale
// (1 / correction, NaN = masked):
//   signal = Σ w·s·D,  area = Σ a,  variance = Σ (w·s)²·var,  count = #entries summed,
// where entries whose contribution w·s·D is NaN are skipped entirely, and var = max(raw, 1)
// (Poisson) or a supplied per-pixel variance.
//
// No standard headers on the device side: NVRTC ships none, so fixed-width types are spelled with
// builtin types and NaN is tested as x != x (valid: neither NVRTC nor the harness uses fast-math).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__) || defined(__NVRTC__)
#define RI_HD __host__ __device__ __forceinline__
#define RI_SQRT(x) sqrt(x)
#else
#include <cmath>
#define RI_HD inline
#define RI_SQRT(x) std::sqrt(x)
#endif

typedef unsigned long long ri_u64;
typedef unsigned int ri_u32;
typedef unsigned short ri_u16;
typedef unsigned char ri_u8;
typedef int ri_i32;
typedef long long ri_i64;

// Warp width; the cross-term and lineout kernels give each radial row a whole warp.
#define RI_WARP 32
// Lanes that share one bin in the CSR kernels (a power of two ≤ RI_WARP): a bin holds a few
// tens of map entries, so 8 lanes each take several, a shuffle tree of 3 steps combines them,
// and the 4 bins of a warp are finalized and stored side by side. The host harness emulates
// the same lane split and tree.
#define RI_BIN_LANES 8
// Entries a lane of the lane-split kernel loads at once (ri_lane_accumulate).
#define RI_LANE_BATCH 4
// Frames per pass: one staging buffer, one CSR launch reading the map once for all of them.
#define RI_MAX_NB 8

// Error models.
#define RI_VAR_NONE 0
#define RI_VAR_POISSON 1
#define RI_VAR_GIVEN 2

// Rule sets (spec §5.2–5.3), as Rust's `Rules`.
#define RI_RULES_RADINT 0
#define RI_RULES_MIDAS_CPU 1
#define RI_RULES_MIDAS_GPU 2

// Lineout reduction for RI_RULES_RADINT, as Rust's `LineoutMode`.
#define RI_LINEOUT_AREA_WEIGHTED 0
#define RI_LINEOUT_NONZERO_MEAN 1

// MIDAS GPU: bins with area ≤ this are empty.
#define RI_MIDAS_GPU_MIN_AREA 1e-9

template <typename X>
RI_HD bool ri_isnan(X x) {
    return x != x;
}

// NaN or ±inf (x − x is NaN for both, 0 for every finite x): such entries are left out.
template <typename X>
RI_HD bool ri_invalid(X x) {
    return !((x - x) == X(0));
}

RI_HD double ri_nan() {
    // 0/0 would be folded with a warning by some compilers; build the bit pattern instead.
    union {
        ri_u64 u;
        double d;
    } v;
    v.u = 0x7ff8000000000000ULL;
    return v.d;
}

// ---------------------------------------------------------------------------------------------
// Accumulation
// ---------------------------------------------------------------------------------------------

// The four accumulators of one bin and one frame, in accumulator precision A (double or float).
template <typename A>
struct RiAcc {
    A s;
    A a;
    A v;
    ri_u32 c;
};

template <typename A>
RI_HD void ri_acc_zero(RiAcc<A>& acc) {
    acc.s = A(0);
    acc.a = A(0);
    acc.v = A(0);
    acc.c = 0;
}

// Combine two partial sums of the same bin (the warp reduction step).
template <typename A>
RI_HD void ri_acc_merge(RiAcc<A>& acc, A s, A a, A v, ri_u32 c) {
    acc.s = acc.s + s;
    acc.a = acc.a + a;
    acc.v = acc.v + v;
    acc.c = acc.c + c;
}

// Per-map-entry factors shared by every frame of a batch: the signal weight w·s (scale folded
// in), the area in accumulator precision and −dark.
template <typename A>
struct RiEntry {
    A w;
    A area;
    A minus_dark;
    bool has_dark;
};

// Entry e of the map: w = weight[e] (MIDAS maps) or area[e], times scale[p] when given.
// Mirrors the Rust order of operations: w = w · scale; value = raw + (−dark).
template <typename A>
RI_HD RiEntry<A> ri_entry(float area_e, const double* weight, ri_u64 e, const double* scale,
                          const double* dark, ri_u64 p) {
    RiEntry<A> en;
    en.area = A(area_e);
    en.w = weight ? A(weight[e]) : en.area;
    if (scale) en.w = en.w * A(scale[p]);
    en.has_dark = dark != 0;
    en.minus_dark = en.has_dark ? A(-dark[p]) : A(0);
    return en;
}

// Accumulate one raw pixel value of one frame for one map entry. `given_var` is read only for
// RI_VAR_GIVEN. NaN or infinite contributions (NaN / inf pixel, NaN dark, masked pixel) are
// skipped entirely.
// `count` is the counter to increment: acc.c, or one shared by several partial sums (the count
// is an integer, so its order does not matter, and one counter saves registers).
template <typename A, typename T>
RI_HD void ri_accumulate(RiAcc<A>& acc, ri_u32& count, const RiEntry<A>& en, T raw_px,
                         int var_mode, double given_var) {
    const A raw = A(raw_px);
    const A value = en.has_dark ? raw + en.minus_dark : raw;
    const A contribution = en.w * value;
    if (ri_invalid(contribution)) return;
    acc.s = acc.s + contribution;
    acc.a = acc.a + en.area;
    count = count + 1;
    if (var_mode != RI_VAR_NONE) {
        A var;
        if (var_mode == RI_VAR_POISSON) {
            const double r = double(raw);
            var = A(r > 1.0 ? r : 1.0);
        } else {
            var = A(given_var);
        }
        acc.v = acc.v + en.w * en.w * var;
    }
}

// N entries e, e + stride, ...: their pixel indices p, then the frame's values raw at
// p · px_stride, all loaded before the caller sums any (summing branches, and the compiler does
// not move a global load above a branch, so loads interleaved with the sums would wait for one
// another).
template <typename T, int N>
RI_HD void ri_gather_batch(const ri_u32* pixel, const T* frame, ri_u64 e, ri_u64 stride,
                           ri_u64 px_stride, ri_u32 (&p)[N], T (&raw)[N]) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
    for (int i = 0; i < N; ++i) p[i] = pixel[e + ri_u64(i) * stride];
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
    for (int i = 0; i < N; ++i) raw[i] = frame[ri_u64(p[i]) * px_stride];
}

// One lane's share of bin b of one frame: entries e0 + lane, e0 + lane + n_lanes, ... This is
// the whole per-lane body of the lane-split CSR kernel, which then reduces the lanes with warp
// shuffles (the host harness with the same tree).
template <typename T, typename A>
RI_HD void ri_lane_accumulate(RiAcc<A>& acc, const ri_u64* indptr, const ri_u32* pixel,
                              const float* area, const double* weight, const T* frame,
                              const double* dark, const double* scale, int var_mode,
                              const double* variance, ri_u64 b, ri_u32 lane, ri_u32 n_lanes) {
    ri_acc_zero(acc);
    const ri_u64 e1 = indptr[b + 1];
    ri_u64 e = indptr[b] + lane;
    // RI_LANE_BATCH of the lane's entries at a time, loaded together (the loop is bound by
    // load latency: the gathers are in flight at once). The sums keep their order.
    for (; e + (RI_LANE_BATCH - 1) * ri_u64(n_lanes) < e1; e += RI_LANE_BATCH * ri_u64(n_lanes)) {
        ri_u32 p[RI_LANE_BATCH];
        T raw[RI_LANE_BATCH];
        float a[RI_LANE_BATCH];
        ri_gather_batch<T, RI_LANE_BATCH>(pixel, frame, e, n_lanes, 1, p, raw);
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
        for (int i = 0; i < RI_LANE_BATCH; ++i) a[i] = area[e + ri_u64(i) * n_lanes];
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
        for (int i = 0; i < RI_LANE_BATCH; ++i) {
            const ri_u64 ei = e + ri_u64(i) * n_lanes;
            const RiEntry<A> en = ri_entry<A>(a[i], weight, ei, scale, dark, p[i]);
            const double gv = var_mode == RI_VAR_GIVEN ? variance[p[i]] : 0.0;
            ri_accumulate<A, T>(acc, acc.c, en, raw[i], var_mode, gv);
        }
    }
    for (; e < e1; e += n_lanes) {
        const ri_u64 p = pixel[e];
        const RiEntry<A> en = ri_entry<A>(area[e], weight, e, scale, dark, p);
        const double gv = var_mode == RI_VAR_GIVEN ? variance[p] : 0.0;
        ri_accumulate<A, T>(acc, acc.c, en, frame[p], var_mode, gv);
    }
}

// Bin b summed whole by one thread, bit for bit as RI_BIN_LANES lanes of ri_lane_accumulate and
// the shuffle tree of the lane-split kernel sum it: partial sum j takes entries e0 + j,
// e0 + j + RI_BIN_LANES, ... in order, then the partials merge pairwise at offsets
// RI_BIN_LANES/2 … 1. So a frame's result does not depend on which kernel, i.e. how many
// frames at a time, integrated it. The entries go RI_BIN_LANES at a time, a whole chunk loaded
// before any is summed (ri_gather_batch).
template <typename T, typename A>
RI_HD void ri_bin_accumulate(RiAcc<A>& acc, const ri_u64* indptr, const ri_u32* pixel,
                             const float* area, const double* weight, const T* frame,
                             ri_u64 px_stride, const double* dark, const double* scale,
                             int var_mode, const double* variance, ri_u64 b) {
    RiAcc<A> part[RI_BIN_LANES];
    ri_u32 count = 0;
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
    for (int j = 0; j < RI_BIN_LANES; ++j) ri_acc_zero(part[j]);
    const ri_u64 e1 = indptr[b + 1];
    ri_u64 e0 = indptr[b];
    // Constant indices into the arrays once unrolled: they stay in registers.
    for (; e0 + RI_BIN_LANES <= e1; e0 += RI_BIN_LANES) {
        ri_u32 p[RI_BIN_LANES];
        T raw[RI_BIN_LANES];
        float a[RI_BIN_LANES];
        ri_gather_batch<T, RI_BIN_LANES>(pixel, frame, e0, 1, px_stride, p, raw);
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
        for (int j = 0; j < RI_BIN_LANES; ++j) a[j] = area[e0 + ri_u64(j)];
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
        for (int j = 0; j < RI_BIN_LANES; ++j) {
            const ri_u64 e = e0 + ri_u64(j);
            const RiEntry<A> en = ri_entry<A>(a[j], weight, e, scale, dark, p[j]);
            const double gv = var_mode == RI_VAR_GIVEN ? variance[p[j]] : 0.0;
            ri_accumulate<A, T>(part[j], count, en, raw[j], var_mode, gv);
        }
    }
    // The last, partial chunk: entries e0 .. e1 - 1 to partials 0 .. e1 - e0 - 1.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
    for (int j = 0; j < RI_BIN_LANES; ++j) {
        const ri_u64 e = e0 + ri_u64(j);
        if (e >= e1) break;
        const ri_u64 p = pixel[e];
        const RiEntry<A> en = ri_entry<A>(area[e], weight, e, scale, dark, p);
        const double gv = var_mode == RI_VAR_GIVEN ? variance[p] : 0.0;
        ri_accumulate<A, T>(part[j], count, en, frame[p * px_stride], var_mode, gv);
    }
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
    for (int off = RI_BIN_LANES / 2; off > 0; off >>= 1) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
        for (int i = 0; i < off; ++i)
            ri_acc_merge(part[i], part[i + off].s, part[i + off].a, part[i + off].v,
                         part[i + off].c);
    }
    acc = part[0];
    acc.c = count;
}

// Store the reduced accumulators of bin b (outputs of one frame, n_bins long).
template <typename A>
RI_HD void ri_store(const RiAcc<A>& acc, ri_u64 b, double* signal, double* area_out,
                    double* variance_out, ri_u32* count) {
    signal[b] = double(acc.s);
    area_out[b] = double(acc.a);
    count[b] = acc.c;
    if (variance_out) variance_out[b] = double(acc.v);
}

// Pixel p of a pass's nb ≤ RI_MAX_NB frames (frame-major, n_pixels values each) as one group of
// RI_MAX_NB values, frame k at k, 0 past nb: the layout in which the frames-in-lanes CSR kernel
// reads every frame's value of a map entry from one or two 32-byte sectors. Aligned to its
// size, so the kernel stores a pixel's group with vector stores.
template <typename T>
struct alignas(sizeof(T) * RI_MAX_NB < 16 ? sizeof(T) * RI_MAX_NB : 16) RiPixelFrames {
    T v[RI_MAX_NB];
};

template <typename T>
RI_HD RiPixelFrames<T> ri_interleave_pixel(const T* frames, ri_u64 n_pixels, int nb, ri_u64 p) {
    RiPixelFrames<T> g;
    for (int k = 0; k < RI_MAX_NB; ++k) g.v[k] = k < nb ? frames[ri_u64(k) * n_pixels + p] : T(0);
    return g;
}

// ---------------------------------------------------------------------------------------------
// Finalize (Rust `finalize_row`), one bin at a time, then the lineout of one radial row
// ---------------------------------------------------------------------------------------------

struct RiFinalize {
    int rules;        // RI_RULES_*
    int normalize;    // MIDAS Normalize: I = S/A (1) or S (0)
    int lineout;      // RI_LINEOUT_* (RI_RULES_RADINT only; MIDAS CPU always uses nonzero mean)
    int nan_masked;   // NaN out bins a masked pixel touched (implied by RI_RULES_MIDAS_CPU)
    double empty;     // value of empty bins under RI_RULES_RADINT
};

RI_HD bool ri_nan_masked(const RiFinalize& f) {
    return f.nan_masked != 0 || f.rules == RI_RULES_MIDAS_CPU;
}

// Sigma of an empty bin under radint's rules (Rust `FinalizeOptions::empty_sigma`): the fill
// value where it could be a sigma, NaN for a negative fill.
RI_HD double ri_empty_sigma(const RiFinalize& f) {
    return f.empty >= 0.0 ? f.empty : ri_nan();
}

// Cake value and sigma of one bin. with_var = 0: sigma is 0 (or the empty/NaN value, unused).
RI_HD void ri_finalize_bin(const RiFinalize& f, double s, double a, double v, ri_u32 c,
                           ri_u8 masked, int with_var, double* value, double* sigma) {
    double val, sig;
    const double sq = with_var ? RI_SQRT(v) : 0.0;
    if (f.rules == RI_RULES_RADINT) {
        if (c == 0 || a <= 0.0) {
            val = f.empty;
            sig = ri_empty_sigma(f);
        } else if (f.normalize) {
            val = s / a;
            sig = with_var ? sq / a : 0.0;
        } else {
            val = s;
            sig = sq;
        }
    } else if (f.rules == RI_RULES_MIDAS_CPU) {
        // C's `s != 0` test only spares 0 / a for the value; the sigma of a normalized bin is
        // per area whatever its signal.
        const bool per_area = f.normalize && a != 0.0;
        val = s != 0.0 && per_area ? s / a : s;
        sig = per_area ? sq / a : sq;
    } else {
        if (a > RI_MIDAS_GPU_MIN_AREA) {
            if (f.normalize) {
                val = s / a;
                sig = with_var ? sq / a : 0.0;
            } else {
                val = s;
                sig = sq;
            }
        } else {
            val = 0.0;
            sig = 0.0;
        }
    }
    const bool nan = ri_nan_masked(f) && masked != 0;
    *value = nan ? ri_nan() : val;
    *sigma = nan ? ri_nan() : sig;
}

// One map entry's share of the covariance term of its radial row (DetectorMap.eta_cross):
// weight·scale²·var for a pixel p the bins count (scale·(raw − dark) finite), else 0. Mirrors
// the Rust `lineout_cross`.
template <typename T>
RI_HD double ri_cross_value(double weight, ri_u64 p, T raw_px, const double* dark,
                            const double* scale, int var_mode, const double* variance) {
    const double sc = scale ? scale[p] : 1.0;
    const double raw = double(raw_px);
    const double d = dark ? dark[p] : 0.0;
    if (ri_invalid(sc * (raw - d))) return 0.0;
    double var = 0.0;
    if (var_mode == RI_VAR_POISSON) {
        var = raw > 1.0 ? raw : 1.0;
    } else if (var_mode == RI_VAR_GIVEN) {
        var = variance[p];
    }
    return weight * sc * sc * var;
}

// One lane's share of the covariance term of radial row `row` of one frame: entries
// indptr[row] + lane, + n_lanes, ... summed in order (n_lanes = 1: the whole row; the kernel's
// lanes are then combined with a shuffle tree). RI_LANE_BATCH entries at a time, loaded
// together (ri_gather_batch), as ri_lane_accumulate.
template <typename T>
RI_HD double ri_lane_cross(const ri_u64* indptr, const ri_u32* pixel, const double* weight,
                           const T* frame, ri_u64 row, const double* dark, const double* scale,
                           int var_mode, const double* variance, ri_u32 lane, ri_u32 n_lanes) {
    double acc = 0.0;
    const ri_u64 e1 = indptr[row + 1];
    ri_u64 e = indptr[row] + lane;
    for (; e + (RI_LANE_BATCH - 1) * ri_u64(n_lanes) < e1; e += RI_LANE_BATCH * ri_u64(n_lanes)) {
        ri_u32 p[RI_LANE_BATCH];
        T raw[RI_LANE_BATCH];
        ri_gather_batch<T, RI_LANE_BATCH>(pixel, frame, e, n_lanes, 1, p, raw);
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#pragma unroll
#endif
        for (int i = 0; i < RI_LANE_BATCH; ++i)
            acc += ri_cross_value<T>(weight[e + ri_u64(i) * n_lanes], p[i], raw[i], dark, scale,
                                     var_mode, variance);
    }
    for (; e < e1; e += n_lanes) {
        const ri_u64 p = pixel[e];
        acc += ri_cross_value<T>(weight[e], p, frame[p], dark, scale, var_mode, variance);
    }
    return acc;
}

// Lineout of one radial row, in pieces a warp can share: each lane adds some of the row's bins
// (ri_line_add), lanes are merged (ri_line_merge), and the total gives the value and sigma
// (ri_line_final). Which sums are kept depends on the reduction:
//   area-weighted (radint):   x = Σ signal, y = Σ area, z = Σ variance, n = Σ count, dropped
//   mean of non-zero bins:    x = Σ cake, y = Σ 1/area, z = Σ sigma², n = #bins, dropped
//   MIDAS GPU:                x = Σ cake·area, y = Σ area, z = Σ sigma²·area², dropped
// (dropped: a bin holding pixels was left out, so the row's covariance term is not added)
#define RI_LINE_AREA_WEIGHTED 0
#define RI_LINE_NONZERO_MEAN 1
#define RI_LINE_MIDAS_GPU 2

struct RiLineAcc {
    double x;
    double y;
    double z;
    ri_u64 n;
    int dropped;  // a bin holding pixels was left out (masked-touched, or not counted)
};

RI_HD int ri_line_kind(const RiFinalize& f) {
    if (f.rules == RI_RULES_MIDAS_CPU ||
        (f.rules == RI_RULES_RADINT && f.lineout == RI_LINEOUT_NONZERO_MEAN))
        return RI_LINE_NONZERO_MEAN;
    return f.rules == RI_RULES_MIDAS_GPU ? RI_LINE_MIDAS_GPU : RI_LINE_AREA_WEIGHTED;
}

RI_HD void ri_line_zero(RiLineAcc& acc) {
    acc.x = 0.0;
    acc.y = 0.0;
    acc.z = 0.0;
    acc.n = 0;
    acc.dropped = 0;
}

// Add one bin: its sums s/a/v/c, masked flag and finalized cake value and sigma (v and sigma
// are read only with with_var; cake and sigma only by the reductions that use them).
RI_HD void ri_line_add(const RiFinalize& f, int kind, RiLineAcc& acc, int with_var, double s,
                       double a, double v, ri_u32 c, ri_u8 masked, double cake, double sigma) {
    if (kind == RI_LINE_NONZERO_MEAN) {
        // Empty bins never count, whatever value they were filled with.
        if (cake != 0.0 && !ri_isnan(cake) && c != 0 && a > 0.0) {
            acc.x += cake;
            acc.y += 1.0 / a;
            if (with_var) acc.z += sigma * sigma;
            acc.n += 1;
        } else if (c != 0) {
            acc.dropped = 1;
        }
    } else if (kind == RI_LINE_MIDAS_GPU) {
        if (a > RI_MIDAS_GPU_MIN_AREA) {
            acc.x += cake * a;
            acc.y += a;
            if (with_var) acc.z += sigma * sigma * a * a;
        } else if (c != 0) {
            acc.dropped = 1;
        }
    } else if (ri_nan_masked(f) && masked != 0) {
        acc.dropped = 1;
    } else {
        acc.x += s;
        acc.y += a;
        acc.n += c;
        if (with_var) acc.z += v;
    }
}

RI_HD void ri_line_merge(RiLineAcc& acc, double x, double y, double z, ri_u64 n, int dropped) {
    acc.x += x;
    acc.y += y;
    acc.z += z;
    acc.n += n;
    acc.dropped |= dropped;
}

RI_HD void ri_line_final(const RiFinalize& f, int kind, const RiLineAcc& acc, int with_var,
                         double cross, double* line, double* line_sigma) {
    if (kind == RI_LINE_NONZERO_MEAN) {
        if (acc.n == 0) {
            const int cpu = f.rules == RI_RULES_MIDAS_CPU;
            *line = cpu ? 0.0 : f.empty;
            *line_sigma = cpu ? 0.0 : ri_empty_sigma(f);
        } else {
            // Shared pixels correlate the bins: the row's term per area² (mean 1/area).
            const double per_area = f.normalize ? acc.y / double(acc.n) : 1.0;
            const double z = with_var && !acc.dropped ? acc.z + cross * per_area * per_area
                                                      : acc.z;
            *line = acc.x / double(acc.n);
            *line_sigma = RI_SQRT(z) / double(acc.n);
        }
        return;
    }
    if (kind == RI_LINE_MIDAS_GPU) {
        if (acc.y > 0.0) {
            const double z = with_var && f.normalize && !acc.dropped ? acc.z + cross : acc.z;
            *line = acc.x / acc.y;
            *line_sigma = RI_SQRT(z) / acc.y;
        } else {
            *line = 0.0;
            *line_sigma = 0.0;
        }
        return;
    }
    // Pixels shared between the row's η bins: their covariance, unless a bin left out here may
    // hold some of them (as the Rust finalize).
    const double vv = with_var && !acc.dropped ? acc.z + cross : acc.z;
    if (acc.n == 0 || acc.y <= 0.0) {
        *line = f.empty;
        *line_sigma = ri_empty_sigma(f);
    } else if (f.normalize) {
        *line = acc.x / acc.y;
        *line_sigma = RI_SQRT(vv) / acc.y;
    } else {
        *line = acc.x;
        *line_sigma = RI_SQRT(vv);
    }
}

// Lineout value and sigma of one radial row, its bins added in order: the n_eta consecutive
// bins (bin order r·n_eta + e) starting at s/a/v/c/masked; `cake` and `sigma` are this row's
// finalized values (ri_finalize_bin), bin e at cake[e·cake_stride]. v and sigma may be null
// (with_var = 0).
RI_HD void ri_lineout_row(const RiFinalize& f, int n_eta, const double* s, const double* a,
                          const double* v, const ri_u32* c, const ri_u8* masked,
                          const double* cake, const double* sigma, ri_u64 cake_stride,
                          int with_var, double cross, double* line, double* line_sigma) {
    const int kind = ri_line_kind(f);
    RiLineAcc acc;
    ri_line_zero(acc);
    for (int e = 0; e < n_eta; ++e)
        ri_line_add(f, kind, acc, with_var, s[e], a[e], with_var ? v[e] : 0.0, c[e], masked[e],
                    cake[e * cake_stride], with_var ? sigma[e * cake_stride] : 0.0);
    ri_line_final(f, kind, acc, with_var, cross, line, line_sigma);
}

// pyFAI's azimuthal error model (Rust integrate/azimuthal.rs): pixel p's corrected value
// x = (raw − dark)·scale, NaN where the integration leaves it out (NaN or ±inf).
template <typename T>
RI_HD double ri_spread_value(ri_u64 p, T raw_px, const double* dark, const double* scale) {
    const double d = double(raw_px) - (dark ? dark[p] : 0.0);
    const double x = scale ? d * scale[p] : d;
    return ri_invalid(x) ? ri_nan() : x;
}

// A bin's or a ring's mean from its sums; 0 where it holds no area (azimuthal.rs).
RI_HD double ri_spread_mean(double s, double a) {
    return a > 0.0 ? s / a : 0.0;
}

// One lane's share of bin b's squared deviations, entries indptr[b] + lane, + n_lanes, ... in
// order: returned about the bin's mean (Σ a²·(x − mean)²), added to *ring about the ring's.
template <typename T>
RI_HD double ri_lane_spread(const ri_u64* indptr, const ri_u32* pixel, const float* area,
                            const T* frame, ri_u64 b, const double* dark, const double* scale,
                            double mean, double ring_mean, double* ring, ri_u32 lane,
                            ri_u32 n_lanes) {
    double own = 0.0;
    double around_ring = *ring;
    const ri_u64 e1 = indptr[b + 1];
    for (ri_u64 e = indptr[b] + lane; e < e1; e += n_lanes) {
        const ri_u64 p = pixel[e];
        const double x = ri_spread_value<T>(p, frame[p], dark, scale);
        if (x != x) continue;
        const double w = double(area[e]);
        const double w2 = w * w;
        const double to_bin = x - mean;
        const double to_ring = x - ring_mean;
        own += w2 * (to_bin * to_bin);
        around_ring += w2 * (to_ring * to_ring);
    }
    *ring = around_ring;
    return own;
}

// One lane's share of the ring's squared deviations of the pixels split between its η bins
// (DetectorMap.eta_cross: each such pixel's weight (Σ a)² − Σ a²), entries of radial row r.
template <typename T>
RI_HD double ri_lane_spread_cross(const ri_u64* cross_indptr, const ri_u32* cross_pixel,
                                  const double* cross_weight, const T* frame, ri_u64 r,
                                  const double* dark, const double* scale, double ring_mean,
                                  ri_u32 lane, ri_u32 n_lanes) {
    double acc = 0.0;
    const ri_u64 k1 = cross_indptr[r + 1];
    for (ri_u64 k = cross_indptr[r] + lane; k < k1; k += n_lanes) {
        const ri_u64 p = cross_pixel[k];
        const double x = ri_spread_value<T>(p, frame[p], dark, scale);
        if (x != x) continue;
        const double to_ring = x - ring_mean;
        acc += cross_weight[k] * (to_ring * to_ring);
    }
    return acc;
}

// A bin's azimuthal variance sum and its finalized sigma (ri_finalize_bin with that variance).
RI_HD void ri_spread_write(const RiFinalize& f, double own, double s, double a, ri_u32 c,
                           ri_u8 masked, double* variance, double* sigma) {
    double value, sig;
    ri_finalize_bin(f, s, a, own, c, masked, 1, &value, &sig);
    *variance = own;
    *sigma = sig;
}
