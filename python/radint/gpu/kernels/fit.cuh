// radint peak-fitting arithmetic, shared by the CUDA kernel (fit.cu, compiled by NVRTC) and the
// host C++ harness (tests/gpu_harness/fit_harness.cpp, compiled by g++).
//
// A line-by-line port of the Rust fitter (rust/radint-core/src/fit/{model,roi,lm}.rs and
// fit.rs::fit_job): the MIDAS model of spec §6.1 (TCH pseudo-Voigt peaks on a 2-term Chebyshev
// background, centi-scaled widths), the MIDAS starts and bounds of §6.2 step 3, and the same
// bounded Levenberg–Marquardt (projection onto the box, bound-active parameters frozen, Marquardt
// scaling by the running max of diag(JᵀJ), λ ÷3 on success and ×4 on failure). One job (one ROI
// with its peaks, planned on the host by the Rust planner) is fitted by one call of rf_fit_job
// by a team of lanes: one warp on the GPU, one thread in the host harness (see "the team"
// below); the CPU test suite checks rf_fit_job against the Rust fitter.
// As in Rust, each peak's x-independent terms are computed once per model evaluation, and in a
// merged job a peak's parameters enter JᵀJ and the covariance only within its own planned ROI
// (widened to ±10 Γ around its centre): the plan passes each peak's ROI as peak_lo / peak_hi.
//
// Storage is fixed per job: at most RF_MAX_PEAKS peaks and RF_MAX_ROI ROI bins (the team's
// scratch is sized for the plan's largest job up to those); bigger jobs return RF_CPU_FALLBACK
// and the launcher fits them with the Rust fitter.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__) || defined(__NVRTC__)
#define RF_HD __host__ __device__ __forceinline__
#define RF_SQRT(x) sqrt(x)
#define RF_EXP(x) exp(x)
#define RF_POW(x, y) pow(x, y)
#define RF_FMAX(x, y) fmax(x, y)
#define RF_FMIN(x, y) fmin(x, y)
#define RF_ERFC(x) erfc(x)
#define RF_ATAN(x) atan(x)
#define RF_FABS(x) fabs(x)
#define RF_OUTLINED __device__ __noinline__
#else
#include <cmath>
#define RF_HD inline
#define RF_OUTLINED inline
#define RF_SQRT(x) std::sqrt(x)
#define RF_EXP(x) std::exp(x)
#define RF_POW(x, y) std::pow(x, y)
#define RF_FMAX(x, y) std::fmax(x, y)
#define RF_FMIN(x, y) std::fmin(x, y)
#define RF_ERFC(x) std::erfc(x)  // glibc's, as the Rust fitter calls (model.rs c_erfc)
#define RF_ATAN(x) std::atan(x)
#define RF_FABS(x) std::fabs(x)
#endif

// RF_OUTLINED: the large steps a fit calls a few times (each LM iteration, each refit) stay
// out of line on the device. Inlined, the kernel was 1 MB of code (the LM four times over),
// NVRTC took ~20 s to compile it and it needed 186 registers; outlined, 345 KB, ~3 s and 164
// registers (ptxas for sm_90, benches/kernel_resources.py), for a call per step.
typedef unsigned int rf_u32;
typedef unsigned char rf_u8;

#define RF_MAX_PEAKS 6
#define RF_MAX_PARAMS (2 + 4 * RF_MAX_PEAKS)
#define RF_MAX_ROI 1024
#define RF_ROW 7

// FitStatus codes (rust/radint-core/src/fit/lm.rs), plus the launcher's fallback marker.
#define RF_CONVERGED 0
#define RF_MAX_ITERATIONS 1
#define RF_NON_FINITE 2
#define RF_OUT_OF_RANGE 3
#define RF_INSUFFICIENT_DATA 4
#define RF_TOO_MANY_PEAKS 5
#define RF_NO_PEAK 6
#define RF_AT_BOUND 7
#define RF_CPU_FALLBACK 254

#define RF_LN2 0.693147180559945309417232121458176568
#define RF_PI 3.14159265358979323846264338327950288
#define RF_FRAC_1_PI 0.318309886183790671537767526745028724  // Rust's FRAC_1_PI, not 1.0 / RF_PI
#define RF_SQRT_2 1.41421356237309504880168872420969808  // Rust's SQRT_2
#define RF_SIG_FLOOR 1e-12
#define RF_GAM_FLOOR 1e-6
#define RF_GAMMA_FLOOR 1e-15
#define RF_LAMBDA_MAX 1e16
// lm.rs STALE_SCALE and LmOptions::default(): stalled when ten accepted steps together lower
// the cost by < 1e-4 relatively.
#define RF_STALE_SCALE 300.0
#define RF_STALL_WINDOW 10
#define RF_STALL_FTOL 1e-4

RF_HD bool rf_finite(double v) { return v == v && v - v == 0.0; }

// Rust's f64::powi (compiler-rt __powidf2) squares repeatedly; multiplying in sequence rounds
// differently, and the TCH terms' last bits then steer ill-conditioned fits apart.
RF_HD double rf_powi(double x, int n) {  // n >= 0
    double r = 1.0;
    while (true) {
        if (n & 1) r *= x;
        n /= 2;
        if (n == 0) break;
        x *= x;
    }
    return r;
}

// ------------------------------------------------------------------------------- model (§6.1)
struct RfTch {
    double gamma, eta, dgamma_dsig, dgamma_dgam, deta_dsig, deta_dgam;
};

// TCH Γ, η and their derivatives; clamped quantities have zero derivative (model.rs tch_terms).
RF_HD RfTch rf_tch_terms(double sig, double gam) {
    const double tch[6] = {1.0, 2.69269, 2.42843, 4.47163, 0.07842, 1.0};
    const double fg = RF_SQRT(8.0 * RF_LN2 * RF_FMAX(sig, RF_SIG_FLOOR)) / 100.0;
    const double dfg_dsig = sig > RF_SIG_FLOOR ? fg / (2.0 * sig) : 0.0;
    const double fl = RF_FMAX(gam, RF_GAM_FLOOR) / 100.0;
    const double dfl_dgam = gam > RF_GAM_FLOOR ? 0.01 : 0.0;
    double s = 0.0, ds_dfg = 0.0, ds_dfl = 0.0;
    for (int k = 0; k < 6; ++k) {
        const int eg = 5 - k, el = k;
        s += tch[k] * rf_powi(fg, eg) * rf_powi(fl, el);
        if (eg > 0) ds_dfg += tch[k] * double(eg) * rf_powi(fg, eg - 1) * rf_powi(fl, el);
        if (el > 0) ds_dfl += tch[k] * double(el) * rf_powi(fg, eg) * rf_powi(fl, el - 1);
    }
    const double raw = RF_POW(s, 0.2);
    double gamma = RF_GAMMA_FLOOR, dgamma_dfg = 0.0, dgamma_dfl = 0.0;
    if (raw >= RF_GAMMA_FLOOR) {
        const double d = 5.0 * rf_powi(raw, 4);
        gamma = raw;
        dgamma_dfg = ds_dfg / d;
        dgamma_dfl = ds_dfl / d;
    }
    const double q = fl / gamma;
    const double eta_raw = 1.36603 * q + -0.47719 * q * q + 0.11116 * q * q * q;
    const double deta_dq = (eta_raw >= 0.0 && eta_raw <= 1.0)
                               ? 1.36603 + 2.0 * -0.47719 * q + 3.0 * 0.11116 * q * q
                               : 0.0;
    const double dq_dfg = -fl / (gamma * gamma) * dgamma_dfg;
    const double dq_dfl = 1.0 / gamma - fl / (gamma * gamma) * dgamma_dfl;
    RfTch t;
    t.gamma = gamma;
    t.eta = eta_raw < 0.0 ? 0.0 : (eta_raw > 1.0 ? 1.0 : eta_raw);
    t.dgamma_dsig = dgamma_dfg * dfg_dsig;
    t.dgamma_dgam = dgamma_dfl * dfl_dgam;
    t.deta_dsig = deta_dq * dq_dfg * dfg_dsig;
    t.deta_dgam = deta_dq * dq_dfl * dfl_dgam;
    return t;
}

// model.rs PeakTerms: what one peak contributes independently of x, computed once per evaluation.
struct RfPeak {
    double area, center;
    RfTch t;
    double inv_two_s2, inv_s2, inv_s3, inv_s, inv_norm, inv_k, h2, h_pi;
    double inv_s_sqrt2, h, inv_gamma;  // bin averages
};

RF_HD RfPeak rf_peak_terms(const double* q) {
    RfPeak pk;
    pk.area = q[0];
    pk.center = q[1];
    pk.t = rf_tch_terms(q[2], q[3]);
    const double k = 2.0 * RF_SQRT(2.0 * RF_LN2);
    const double sigma = pk.t.gamma / k;
    const double h = pk.t.gamma / 2.0;
    pk.inv_two_s2 = 1.0 / (2.0 * sigma * sigma);
    pk.inv_s2 = 1.0 / (sigma * sigma);
    pk.inv_s3 = 1.0 / (sigma * sigma * sigma);
    pk.inv_s = 1.0 / sigma;
    pk.inv_norm = 1.0 / (sigma * RF_SQRT(2.0 * RF_PI));
    pk.inv_k = 1.0 / k;
    pk.h2 = h * h;
    pk.h_pi = h / RF_PI;
    pk.inv_s_sqrt2 = 1.0 / (sigma * RF_SQRT_2);
    pk.h = h;
    pk.inv_gamma = 1.0 / pk.t.gamma;
    return pk;
}

// Unit-area Gaussian g and Lorentzian l at offset d, with d² and 1/(d² + h²). Below −746 exp
// underflows to exactly 0, so skipping it changes nothing (NaN still takes the exp path).
RF_HD void rf_components(const RfPeak& pk, double d, double* g, double* l, double* dd,
                         double* inv_den) {
    *dd = d * d;
    const double arg = -*dd * pk.inv_two_s2;
    *g = !(arg < -746.0) ? RF_EXP(arg) * pk.inv_norm : 0.0;
    *inv_den = 1.0 / (*dd + pk.h2);
    *l = pk.h_pi * *inv_den;
}

// Unit-area η L + (1 − η) G at x (single total FWHM Γ).
RF_HD double rf_profile(const RfPeak& pk, double x) {
    double g, l, dd, inv_den;
    rf_components(pk, x - pk.center, &g, &l, &dd, &inv_den);
    return pk.t.eta * l + (1.0 - pk.t.eta) * g;
}

// Profile at x; gradient of area · profile w.r.t. [area, center, sig, gam] into grad[0..4).
RF_HD double rf_profile_gradient(const RfPeak& pk, double x, double* grad) {
    const double eta = pk.t.eta;
    const double d = x - pk.center;
    double g, l, dd, inv_den;
    rf_components(pk, d, &g, &l, &dd, &inv_den);
    const double ld = inv_den * inv_den;
    const double dl_dd = -2.0 * pk.h_pi * d * ld;
    const double dl_dgamma = (0.5 * RF_FRAC_1_PI) * (dd - pk.h2) * ld;
    double dg_dd = 0.0, dg_dgamma = 0.0;
    if (g != 0.0) {
        dg_dd = -d * pk.inv_s2 * g;
        dg_dgamma = g * (dd * pk.inv_s3 - pk.inv_s) * pk.inv_k;
    }
    const double v = eta * l + (1.0 - eta) * g;
    const double dv_dd = eta * dl_dd + (1.0 - eta) * dg_dd;
    const double dv_dgamma = eta * dl_dgamma + (1.0 - eta) * dg_dgamma;
    const double dv_deta = l - g;
    grad[0] = v;
    grad[1] = -pk.area * dv_dd;
    grad[2] = pk.area * (dv_dgamma * pk.t.dgamma_dsig + dv_deta * pk.t.deta_dsig);
    grad[3] = pk.area * (dv_dgamma * pk.t.dgamma_dgam + dv_deta * pk.t.deta_dgam);
    return v;
}

// ------------------------------------------------- bin averages (model.rs PeakTerms::edge etc.)
// The peak at bin edge e: offset d = e − c, Gaussian and Lorentzian densities, and the mass of
// each beyond e on its own side of the centre (erfc, atan).
struct RfEdge {
    double d, g, l, tail_g, tail_l;
};

RF_HD RfEdge rf_edge(const RfPeak& pk, double e) {
    RfEdge r;
    r.d = e - pk.center;
    const double ad = RF_FABS(r.d);
    const double dd = r.d * r.d;
    const double arg = -dd * pk.inv_two_s2;
    if (!(arg < -746.0)) {
        r.g = RF_EXP(arg) * pk.inv_norm;
        r.tail_g = 0.5 * RF_ERFC(ad * pk.inv_s_sqrt2);
    } else {
        r.g = 0.0;
        r.tail_g = 0.0;
    }
    r.l = pk.h_pi / (dd + pk.h2);
    r.tail_l = RF_ATAN(pk.h / ad) * RF_FRAC_1_PI;
    return r;
}

// Gaussian and Lorentzian masses between the edges lo < hi (model.rs PeakTerms::masses).
RF_HD void rf_masses(const RfEdge& lo, const RfEdge& hi, double* mg, double* ml) {
    if (lo.d >= 0.0) {
        *mg = lo.tail_g - hi.tail_g;
        *ml = lo.tail_l - hi.tail_l;
    } else if (hi.d < 0.0) {
        *mg = hi.tail_g - lo.tail_g;
        *ml = hi.tail_l - lo.tail_l;
    } else {
        *mg = 1.0 - lo.tail_g - hi.tail_g;
        *ml = 1.0 - lo.tail_l - hi.tail_l;
    }
}

RF_HD double rf_bin_mean(const RfPeak& pk, const RfEdge& lo, const RfEdge& hi,
                         double inv_width) {
    double mg, ml;
    rf_masses(lo, hi, &mg, &ml);
    return (pk.t.eta * ml + (1.0 - pk.t.eta) * mg) * inv_width;
}

// Bin mean; gradient of area · mean w.r.t. [area, center, sig, gam] into grad[0..4).
RF_HD double rf_bin_mean_gradient(const RfPeak& pk, const RfEdge& lo, const RfEdge& hi,
                                  double inv_width, double* grad) {
    const double eta = pk.t.eta;
    double mg, ml;
    rf_masses(lo, hi, &mg, &ml);
    const double f_lo = eta * lo.l + (1.0 - eta) * lo.g;
    const double f_hi = eta * hi.l + (1.0 - eta) * hi.g;
    const double v = (eta * ml + (1.0 - eta) * mg) * inv_width;
    const double dv_dc = (f_lo - f_hi) * inv_width;
    const double dv_dgamma = (lo.d * f_lo - hi.d * f_hi) * pk.inv_gamma * inv_width;
    const double dv_deta = (ml - mg) * inv_width;
    grad[0] = v;
    grad[1] = pk.area * dv_dc;
    grad[2] = pk.area * (dv_dgamma * pk.t.dgamma_dsig + dv_deta * pk.t.deta_dsig);
    grad[3] = pk.area * (dv_dgamma * pk.t.dgamma_dgam + dv_deta * pk.t.deta_dgam);
    return v;
}

RF_HD double rf_chebyshev_x(double x, double x_lo, double x_hi) {
    const double span = x_hi - x_lo;
    return span != 0.0 ? 2.0 * (x - x_lo) / span - 1.0 : 0.0;
}

// ------------------------------------------------------------------ starts and bounds (§6.2)
// The job's finite points: global indices fidx[0..n) into x / y.
struct RfData {
    const double* x;
    const double* y;
    const rf_u32* fidx;
    int n;
    double x_lo, x_hi;  // first and last x of the ROI (finite or not): the Chebyshev frame
    rf_u32 roi_lo, roi_hi;  // the ROI's global bin range (inclusive): bin edges
    double bin;
    int bin_average;  // fit.rs FitOptions::bin_average: peaks as bin means, else centre values
    // Each peak's planned ROI as a half-open range of finite-point indices (fit.rs JobProblem).
    int win_lo[RF_MAX_PEAKS], win_hi[RF_MAX_PEAKS];
};

RF_HD double rf_fy(const RfData& d, int k) { return d.y[d.fidx[k]]; }

// Edges of the bin of global index gi in the ROI (fit.rs bin_edges): halfway to the neighbours,
// the outer edges of the ROI's first and last bin mirrored.
RF_HD void rf_bin_edges(const RfData& d, rf_u32 gi, double* lo, double* hi) {
    const double* x = d.x;
    const bool many = d.roi_hi > d.roi_lo;
    if (gi > d.roi_lo) *lo = 0.5 * (x[gi - 1] + x[gi]);
    else if (many) *lo = x[gi] - 0.5 * (x[gi + 1] - x[gi]);
    else *lo = x[gi] - 0.5 * d.bin;
    if (gi < d.roi_hi) *hi = 0.5 * (x[gi] + x[gi + 1]);
    else if (many) *hi = x[gi] + 0.5 * (x[gi] - x[gi - 1]);
    else *hi = x[gi] + 0.5 * d.bin;
}

// Unit-area profile of peak pk at finite point i: its mean over the bin, or MIDAS's centre value.
RF_HD double rf_point_profile(const RfData& d, const RfPeak& pk, int i) {
    const rf_u32 gi = d.fidx[i];
    if (!d.bin_average) return rf_profile(pk, d.x[gi]);
    double lo, hi;
    rf_bin_edges(d, gi, &lo, &hi);
    return rf_bin_mean(pk, rf_edge(pk, lo), rf_edge(pk, hi), 1.0 / (hi - lo));
}

// rf_point_profile with the gradient of area · profile into grad[0..4).
RF_HD double rf_point_gradient(const RfData& d, const RfPeak& pk, int i, double* grad) {
    const rf_u32 gi = d.fidx[i];
    if (!d.bin_average) return rf_profile_gradient(pk, d.x[gi], grad);
    double lo, hi;
    rf_bin_edges(d, gi, &lo, &hi);
    return rf_bin_mean_gradient(pk, rf_edge(pk, lo), rf_edge(pk, hi), 1.0 / (hi - lo), grad);
}

// Mean of the first and last bw = clamp(n/4, 1, 5) points (roi.rs edge_background).
RF_HD double rf_edge_background(const RfData& d) {
    const int n = d.n;
    if (n == 0) return 0.0;
    int bw = n / 4;
    bw = bw < 1 ? 1 : (bw > 5 ? 5 : bw);
    bw = bw > n ? n : bw;
    double sum = 0.0;
    for (int k = 0; k < bw; ++k) sum += rf_fy(d, k);
    for (int k = n - bw; k < n; ++k) sum += rf_fy(d, k);
    return sum / double(2 * bw);
}

RF_HD double rf_peak_amplitude(const RfData& d, int pk, double bg) {
    const double v = pk < d.n ? rf_fy(d, pk) : 0.0;
    return v - bg > 0.0 ? v - bg : v;
}

// roi.rs fwhm_walk: bins between the outermost points above half height around pk.
RF_HD int rf_fwhm_walk(const RfData& d, int pk, double bg, double amp) {
    const double half = bg + amp / 2.0;
    if (pk > d.n - 1) pk = d.n - 1;
    if (pk < 0) pk = 0;
    int left = pk, right = pk;
    while (left > 0 && rf_fy(d, left - 1) > half) --left;
    while (right + 1 < d.n && rf_fy(d, right + 1) > half) ++right;
    return right - left;
}

// roi.rs NARROW_WALK / NARROW_START_BINS: a peak with only its top bin or two above half height
// is narrow; the first fit starts it at 1 bin, a second one at MIDAS's 2 (Starts::narrow).
#define RF_NARROW_WALK 1
#define RF_NARROW_START_BINS 1.0
// fit.rs REFIT_TIE: relative cost within which a multi-peak job's held-centre refit wins.
#define RF_REFIT_TIE 1e-9

RF_HD double rf_strictly_inside(double v, double lo, double hi) {
    const double eps = 1e-6 * (hi - lo);
    if (eps > 0.0) return RF_FMIN(RF_FMAX(v, lo + eps), hi - eps);
    return RF_FMIN(RF_FMAX(v, lo), hi);
}

// roi.rs initial_guess for peaks at finite-point indices pks[0..n_peaks), narrow peaks started
// at narrow_fwhm_bins; returns Starts::narrow (some peak is narrow).
RF_OUTLINED bool rf_initial_guess(const RfData& d, const int* pks, int n_peaks, double bin,
                            double narrow_fwhm_bins, double* start, double* lower,
                            double* upper) {
    double ymin = 1.0 / 0.0, ymax = -1.0 / 0.0;
    for (int k = 0; k < d.n; ++k) {
        ymin = RF_FMIN(ymin, rf_fy(d, k));
        ymax = RF_FMAX(ymax, rf_fy(d, k));
    }
    const double range = RF_FMAX(ymax - ymin, 1.0);
    const double span = double(d.n) * bin;
    const double bg = rf_edge_background(d);
    start[0] = bg;
    lower[0] = RF_FMIN(ymin - range / 2.0, -1.0);
    upper[0] = ymax + range;
    start[1] = 0.0;
    lower[1] = -range;
    upper[1] = range;
    const double width_cap = 200.0 * bin * 100.0;
    bool narrow = false;
    for (int k = 0; k < n_peaks; ++k) {
        int pk = pks[k];
        if (pk > d.n - 1) pk = d.n - 1;
        const double amp = rf_peak_amplitude(d, pk, bg);
        const int walk = rf_fwhm_walk(d, pk, bg, amp);
        narrow = narrow || walk <= RF_NARROW_WALK;
        const double fwhm = (walk <= RF_NARROW_WALK ? narrow_fwhm_bins : double(walk)) * bin;
        const double half = 0.5 * fwhm * 100.0;
        const double sig0 = half * half / (8.0 * RF_LN2), gam0 = half;
        const double c0 = d.x[d.fidx[pk]];
        const double dc = RF_FMAX(fwhm, span / 2.0);
        const int o = 2 + 4 * k;
        start[o] = 1.5 * amp * fwhm;
        start[o + 1] = c0;
        start[o + 2] = sig0;
        start[o + 3] = gam0;
        lower[o] = 0.0;
        lower[o + 1] = c0 - dc;
        lower[o + 2] = 1e-6 * bin * bin;  // roi.rs: width floors in the axis' own unit
        lower[o + 3] = 0.01 * bin;
        upper[o] = RF_FMAX(2.0 * range * span, 1.0);
        upper[o + 1] = c0 + dc;
        upper[o + 2] = width_cap * width_cap / (8.0 * RF_LN2);
        upper[o + 3] = width_cap;
    }
    for (int i = 0; i < 2 + 4 * n_peaks; ++i) start[i] = rf_strictly_inside(start[i], lower[i], upper[i]);
    return narrow;
}

// ------------------------------------------------------------- the team that fits one job
// A job is fitted by a team of lanes: a warp on the GPU (RF_TEAM 32), one thread in the host
// harness (RF_TEAM 1). Every lane runs the same control flow on the same values (starts, LM
// steps, verdicts); the per-point work (model, gradient, the sums over the points) is split
// over the lanes through the job's scratch (shared memory on the GPU): the lanes each evaluate
// one point of a chunk of RF_TEAM points into a row of the scratch, then each sum (an entry of
// JᵀJ, of Jᵀr, the cost) belongs to one lane, which adds the chunk's rows in point order. So
// every sum is taken in the order of one thread's loop: the team's results are the serial
// fitter's bit for bit (the host harness checks that against the Rust fitter; on the GPU the
// device's libm and contracted multiply-adds differ from the host's in the last bits).
// Small serial steps (Cholesky solves, the covariance's inverse) run on lane 0, their results
// handed to every lane through the scratch. Shared values are written, then the team syncs,
// then read, then the team syncs again before anyone writes them anew.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__) || defined(__NVRTC__)
#define RF_TEAM 32
RF_HD void rf_team_sync() { __syncwarp(); }
#else
#define RF_TEAM 1
inline void rf_team_sync() {}
#endif

// A job's scratch, laid out by rf_scratch for jobs of at most max_params parameters and
// max_roi ROI bins; jtj / jtr / cost are the normal equations at the team's current parameters.
struct RfScratch {
    int lane;
    int stride;     // doubles per row: a weight or residual, the gradient, a χ² term
    double* cost;   // [1] Σ r²
    double* sum;    // [1] the covariance's Σ r²/level
    double* flag;   // [1] lane 0's verdict, for every lane
    double* jtj;    // [P·P] JᵀJ, n×n packed for a job of n parameters; the covariance's inverse
    double* jtr;    // [P] Jᵀr
    double* work;   // [P·P] the Cholesky factor; the covariance's middle term
    double* step;   // [P] the damped step; the covariance's variances
    double* cov_sg; // [RF_MAX_PEAKS] the covariance's C(sig, gam) per peak
    double* rows;   // [team · stride] one point's row per lane
    rf_u32* fidx;   // [max_roi] the job's finite points (global bin indices)
};

RF_HD unsigned long long rf_scratch_doubles(int max_params, int team) {
    const unsigned long long p = (unsigned long long)max_params;
    return 3 + 2 * p * p + 2 * p + RF_MAX_PEAKS + (unsigned long long)team * (p + 2);
}

// Bytes of one job's scratch (a multiple of 8); the launcher (gpu/fit.py) sizes shared memory
// with the same formula, and the kernel refuses a job whose scratch would not fit.
RF_HD unsigned long long rf_scratch_bytes(int max_params, int max_roi, int team) {
    return 8 * rf_scratch_doubles(max_params, team) + 8 * (((unsigned long long)max_roi + 1) / 2);
}

RF_HD RfScratch rf_scratch(void* base, int max_params, int lane) {
    RfScratch s;
    double* q = static_cast<double*>(base);
    const int p = max_params;
    s.lane = lane;
    s.stride = p + 2;
    s.cost = q;
    s.sum = q + 1;
    s.flag = q + 2;
    s.jtj = q + 3;
    s.jtr = s.jtj + p * p;
    s.work = s.jtr + p;
    s.step = s.work + p * p;
    s.cov_sg = s.step + p;
    s.rows = s.cov_sg + RF_MAX_PEAKS;
    s.fidx = reinterpret_cast<rf_u32*>(q + rf_scratch_doubles(max_params, RF_TEAM));
    return s;
}

// Lane 0's verdict to every lane.
RF_HD bool rf_team_flag(const RfScratch& s, bool mine) {
    if (s.lane == 0) *s.flag = mine ? 1.0 : 0.0;
    rf_team_sync();
    const bool all = *s.flag != 0.0;
    rf_team_sync();
    return all;
}

// ---------------------------------------------------------------- Levenberg–Marquardt (lm.rs)
// fit.rs COUPLING_FWHMS: a peak is always coupled within this many FWHMs of its centre.
#define RF_COUPLING_FWHMS 10.0

// Number of finite points with x < v (strict) or x <= v: Rust's partition_point.
RF_HD int rf_count_below(const RfData& d, double v, bool inclusive) {
    int lo = 0, hi = d.n;
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        const double xm = d.x[d.fidx[mid]];
        if (inclusive ? xm <= v : xm < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// Per-evaluation terms of every peak and its coupling window (JobProblem::for_each_row).
RF_HD void rf_prepare(const RfData& d, const double* p, int np, RfPeak* pk, int* lo, int* hi) {
    for (int k = 0; 2 + 4 * k + 4 <= np; ++k) {
        pk[k] = rf_peak_terms(p + 2 + 4 * k);
        const double reach = RF_COUPLING_FWHMS * pk[k].t.gamma;
        const int near_lo = rf_count_below(d, pk[k].center - reach, false);
        const int near_hi = rf_count_below(d, pk[k].center + reach, true);
        lo[k] = d.win_lo[k] < near_lo ? d.win_lo[k] : near_lo;
        hi[k] = d.win_hi[k] > near_hi ? d.win_hi[k] : near_hi;
    }
}

// Whether parameter a enters JᵀJ at finite point i: the background always, a peak's four
// within its coupling window.
RF_HD bool rf_coupled(int a, int i, const int* lo, const int* hi) {
    if (a < 2) return true;
    const int k = (a - 2) / 4;
    return i >= lo[k] && i < hi[k];
}

// Residual and full gradient at finite point i; the coupled parameters as increasing, disjoint
// ranges [rs[j], re[j]) (background first, then runs of peaks whose window holds i).
RF_HD double rf_row(const RfData& d, int i, const double* p, int np, const RfPeak* pk,
                    const int* lo, const int* hi, double* grad, int* rs, int* re, int* nr) {
    const rf_u32 gi = d.fidx[i];
    const double x = d.x[gi];
    const double xn = rf_chebyshev_x(x, d.x_lo, d.x_hi);
    double m = p[0] + p[1] * xn;
    grad[0] = 1.0;
    grad[1] = xn;
    rs[0] = 0;
    re[0] = 2;
    *nr = 1;
    for (int k = 0; 2 + 4 * k + 4 <= np; ++k) {
        const int o = 2 + 4 * k;
        m += pk[k].area * rf_point_gradient(d, pk[k], i, grad + o);
        if (i >= lo[k] && i < hi[k]) {
            if (re[*nr - 1] == o) re[*nr - 1] = o + 4;
            else {
                rs[*nr] = o;
                re[*nr] = o + 4;
                *nr += 1;
            }
        }
    }
    return m - d.y[gi];
}

// Entry e of an n×n matrix's upper triangle, row by row: (a, b) with a <= b.
RF_HD void rf_upper_entry(int e, int n, int* a, int* b) {
    int r = 0;
    while (e >= n - r) {
        e -= n - r;
        ++r;
    }
    *a = r;
    *b = r + e;
}

// The normal equations at p into s.cost / s.jtj / s.jtr: JᵀJ over the coupled pairs, Jᵀr and
// Σ r² over every point, each entry summed over the points in order.
RF_OUTLINED void rf_normal_equations(const RfData& d, const double* p, int n, const RfScratch& s) {
    RfPeak pk[RF_MAX_PEAKS];
    int lo[RF_MAX_PEAKS], hi[RF_MAX_PEAKS], rs[RF_MAX_PEAKS + 1], re[RF_MAX_PEAKS + 1], nr;
    rf_prepare(d, p, n, pk, lo, hi);
    rf_team_sync();  // every lane is done reading the previous equations
    for (int e = s.lane; e < n * n; e += RF_TEAM) s.jtj[e] = 0.0;
    for (int e = s.lane; e < n; e += RF_TEAM) s.jtr[e] = 0.0;
    if (s.lane == 0) *s.cost = 0.0;
    rf_team_sync();
    const int n_upper = n * (n + 1) / 2, n_sums = n_upper + n + 1;
    for (int base = 0; base < d.n; base += RF_TEAM) {
        if (base + s.lane < d.n) {
            double* row = s.rows + s.lane * s.stride;
            row[0] = rf_row(d, base + s.lane, p, n, pk, lo, hi, row + 1, rs, re, &nr);
        }
        rf_team_sync();
        const int m = d.n - base < RF_TEAM ? d.n - base : RF_TEAM;
        for (int e = s.lane; e < n_sums; e += RF_TEAM) {
            if (e < n_upper) {
                int a, b;
                rf_upper_entry(e, n, &a, &b);
                double acc = s.jtj[a * n + b];
                for (int j = 0; j < m; ++j) {
                    const double* row = s.rows + j * s.stride;
                    const double ga = row[1 + a];
                    if (ga != 0.0 && rf_coupled(a, base + j, lo, hi) &&
                        rf_coupled(b, base + j, lo, hi))
                        acc += ga * row[1 + b];
                }
                s.jtj[a * n + b] = acc;
            } else if (e < n_upper + n) {
                const int a = e - n_upper;
                double acc = s.jtr[a];
                for (int j = 0; j < m; ++j) acc += s.rows[j * s.stride + 1 + a] * s.rows[j * s.stride];
                s.jtr[a] = acc;
            } else {
                double acc = *s.cost;
                for (int j = 0; j < m; ++j) acc += s.rows[j * s.stride] * s.rows[j * s.stride];
                *s.cost = acc;
            }
        }
        rf_team_sync();
    }
    for (int e = s.lane; e < n * n; e += RF_TEAM) {
        const int a = e / n, b = e % n;
        if (b < a) s.jtj[e] = s.jtj[b * n + a];
    }
    rf_team_sync();
}

// Σ r² at p (every lane gets it).
RF_OUTLINED double rf_cost(const RfData& d, const double* p, int n, const RfScratch& s) {
    RfPeak pk[RF_MAX_PEAKS];
    int n_peaks = 0;
    for (int o = 2; o + 4 <= n; o += 4) pk[n_peaks++] = rf_peak_terms(p + o);
    double c = 0.0;
    for (int base = 0; base < d.n; base += RF_TEAM) {
        const int i = base + s.lane;
        if (i < d.n) {
            const rf_u32 gi = d.fidx[i];
            const double x = d.x[gi];
            double m = p[0] + p[1] * rf_chebyshev_x(x, d.x_lo, d.x_hi);
            for (int k = 0; k < n_peaks; ++k) m += pk[k].area * rf_point_profile(d, pk[k], i);
            s.rows[s.lane * s.stride] = m - d.y[gi];
        }
        rf_team_sync();
        const int m = d.n - base < RF_TEAM ? d.n - base : RF_TEAM;
        for (int j = 0; j < m; ++j) {
            const double r = s.rows[j * s.stride];
            c += r * r;
        }
        rf_team_sync();
    }
    return c;
}

// lm.rs cholesky: in place, lower factor; the column whose pivot is not > 0, or -1 when a is
// positive definite.
RF_HD int rf_cholesky(double* a, int n) {
    for (int j = 0; j < n; ++j) {
        double dj = a[j * n + j];
        for (int k = 0; k < j; ++k) dj -= a[j * n + k] * a[j * n + k];
        if (!(dj > 0.0 && rf_finite(dj))) return j;
        dj = RF_SQRT(dj);
        a[j * n + j] = dj;
        for (int i = j + 1; i < n; ++i) {
            double s = a[i * n + j];
            for (int k = 0; k < j; ++k) s -= a[i * n + k] * a[j * n + k];
            a[i * n + j] = s / dj;
        }
    }
    return -1;
}

RF_HD void rf_cholesky_solve(const double* l, int n, double* b) {
    for (int i = 0; i < n; ++i) {
        double s = b[i];
        for (int k = 0; k < i; ++k) s -= l[i * n + k] * b[k];
        b[i] = s / l[i * n + i];
    }
    for (int i = n - 1; i >= 0; --i) {
        double s = b[i];
        for (int k = i + 1; k < n; ++k) s -= l[k * n + i] * b[k];
        b[i] = s / l[i * n + i];
    }
}

// Damped step over the free parameters into step[0..n) (every lane); false when singular or
// none free. Lane 0 solves in the scratch.
RF_HD bool rf_damped_step(const RfScratch& s, const double* diag, const bool* free_, int n,
                          double lambda, double* step) {
    bool ok = false;
    if (s.lane == 0) {
        int idx[RF_MAX_PARAMS];
        int m = 0;
        for (int i = 0; i < n; ++i)
            if (free_[i]) idx[m++] = i;
        if (m > 0) {
            double b[RF_MAX_PARAMS];
            for (int r = 0; r < m; ++r) {
                const int i = idx[r];
                for (int c = 0; c < m; ++c) s.work[r * m + c] = s.jtj[i * n + idx[c]];
                s.work[r * m + r] += lambda * diag[i];
                b[r] = -s.jtr[i];
            }
            ok = rf_cholesky(s.work, m) < 0;
            if (ok) {
                rf_cholesky_solve(s.work, m, b);
                for (int i = 0; i < n; ++i) s.step[i] = 0.0;
                for (int r = 0; r < m; ++r) s.step[idx[r]] = b[r];
            }
        }
    }
    if (!rf_team_flag(s, ok)) return false;  // its syncs also order s.step
    for (int i = 0; i < n; ++i) step[i] = s.step[i];
    rf_team_sync();
    return true;
}

RF_HD bool rf_finite_normal(const RfScratch& s, int n) {
    if (!rf_finite(*s.cost)) return false;
    for (int i = 0; i < n; ++i) {
        if (!rf_finite(s.jtr[i])) return false;
        for (int j = 0; j < n; ++j)
            if (!rf_finite(s.jtj[i * n + j])) return false;
    }
    return true;
}

// lm.rs levenberg_marquardt; p holds the start (clamped here) and receives the solution. The
// normal equations at the solution are left in the scratch.
RF_OUTLINED int rf_levenberg_marquardt(const RfData& d, double* p, const double* lower,
                                 const double* upper, int n, int max_iterations, double ftol,
                                 double xtol, const RfScratch& s, int* iterations) {
    *iterations = 0;
    for (int i = 0; i < n; ++i) p[i] = RF_FMIN(RF_FMAX(p[i], lower[i]), upper[i]);
    rf_normal_equations(d, p, n, s);
    bool ok = rf_finite_normal(s, n);
    for (int i = 0; i < n; ++i) ok = ok && rf_finite(p[i]);
    if (!ok) return RF_NON_FINITE;
    double diag[RF_MAX_PARAMS], step[RF_MAX_PARAMS], trial[RF_MAX_PARAMS];
    bool free_[RF_MAX_PARAMS];
    for (int i = 0; i < n; ++i) diag[i] = s.jtj[i * n + i];
    double lambda = 1e-3;
    double recent[RF_STALL_WINDOW];
    for (int k = 0; k < RF_STALL_WINDOW; ++k) recent[k] = *s.cost;
    while (*iterations < max_iterations) {
        for (int i = 0; i < n; ++i) {
            // lm.rs marquardt_scale
            const double c = s.jtj[i * n + i];
            double scale = RF_FMAX(diag[i], c);
            if (c > 0.0) scale = RF_FMIN(scale, RF_STALE_SCALE * c);
            diag[i] = RF_FMAX(scale, 1e-300);
            const double g = s.jtr[i];
            free_[i] = !((p[i] <= lower[i] && g > 0.0) || (p[i] >= upper[i] && g < 0.0));
        }
        for (;;) {
            double cost = 1.0 / 0.0;
            const bool have = rf_damped_step(s, diag, free_, n, lambda, step);
            if (have) {
                for (int i = 0; i < n; ++i)
                    trial[i] = RF_FMIN(RF_FMAX(p[i] + step[i], lower[i]), upper[i]);
                cost = rf_cost(d, trial, n, s);
            }
            if (have && cost < *s.cost) {
                *iterations += 1;
                lambda = RF_FMAX(lambda / 3.0, 1e-12);
                const double rel_drop = (*s.cost - cost) / RF_FMAX(*s.cost, 1e-300);
                bool tiny = true;
                for (int i = 0; i < n; ++i) {
                    const double a = p[i], b = trial[i];
                    tiny = tiny && (b - a < 0 ? a - b : b - a) <= xtol * ((a < 0 ? -a : a) + xtol);
                }
                for (int i = 0; i < n; ++i) p[i] = trial[i];
                rf_normal_equations(d, p, n, s);
                if (!rf_finite_normal(s, n)) return RF_NON_FINITE;
                const int slot = *iterations % RF_STALL_WINDOW;
                const double before = recent[slot];
                recent[slot] = *s.cost;
                const bool stalled = *iterations >= RF_STALL_WINDOW &&
                                     before - *s.cost < RF_STALL_FTOL * before;
                if (rel_drop <= ftol || tiny || *s.cost == 0.0 || stalled) return RF_CONVERGED;
                break;
            }
            lambda *= 4.0;
            if (lambda > RF_LAMBDA_MAX) return RF_CONVERGED;
        }
    }
    return RF_MAX_ITERATIONS;
}

// Sandwich covariance, as lm.rs `finish`: C = A⁻¹ (Σ vᵢ gᵢgᵢᵀ) A⁻¹ with A = JᵀJ over the
// parameters not on a bound (pinned ones get zero rows and columns, and pinned[i] = true). The
// point variances are vᵢ = g · Mᵢ (Poisson-like, g the Poisson-weighted reduced χ²) when the
// model Mᵢ is positive at every point, else HC2, vᵢ = rᵢ²/(1 − hᵢ) with hᵢ = gᵢᵀA⁻¹gᵢ. Writes
// diag(C) into var[0..n) and C(sig, gam) of each peak into cov_sg[k] (every lane); false when A
// is not finite. A parameter the data do not determine (its Cholesky pivot fails) is held too
// (lm.rs free_inverse). A (s.jtj) and the rest of the scratch are overwritten.
RF_OUTLINED bool rf_covariance(const RfData& d, const double* p, const double* lower,
                         const double* upper, int n, const RfScratch& s, double* var,
                         double* cov_sg, bool* pinned) {
    int fr[RF_MAX_PARAMS];
    int m = 0;
    for (int i = 0; i < n; ++i) {
        // fit.rs held_at_bound: the width floors (sig, gam) are counted free.
        const bool width = i >= 2 && (i - 2) % 4 >= 2;
        pinned[i] = (p[i] <= lower[i] || p[i] >= upper[i]) && !width;
    }
    rf_team_sync();  // every lane is done reading the normal equations
    bool inverted = false;
    if (s.lane == 0) {
        bool finite = true;
        for (int k = 0; k < n * n; ++k) finite = finite && rf_finite(s.jtj[k]);
        // lm.rs free_inverse / spd_inverse: equilibrated Cholesky of the free block; a failed
        // pivot holds its parameter and the rest is factorised again.
        while (finite && !inverted) {
            m = 0;
            for (int i = 0; i < n; ++i)
                if (!pinned[i]) fr[m++] = i;
            double scale[RF_MAX_PARAMS];
            for (int r = 0; r < m; ++r) {
                const double dd = s.jtj[fr[r] * n + fr[r]];
                scale[r] = dd > 0.0 ? 1.0 / RF_SQRT(dd) : 1.0;
            }
            for (int r = 0; r < m; ++r)
                for (int c = 0; c < m; ++c)
                    s.work[r * m + c] = s.jtj[fr[r] * n + fr[c]] * scale[r] * scale[c];
            const int failed = rf_cholesky(s.work, m);
            if (failed >= 0) {
                pinned[fr[failed]] = true;
                continue;
            }
            inverted = true;
            double* inv = s.jtj;  // A is not needed any more
            double col[RF_MAX_PARAMS];
            for (int k = 0; k < n * n; ++k) inv[k] = 0.0;
            for (int c = 0; c < m; ++c) {
                for (int r = 0; r < m; ++r) col[r] = 0.0;
                col[c] = 1.0;
                rf_cholesky_solve(s.work, m, col);
                for (int r = 0; r < m; ++r) inv[fr[r] * n + fr[c]] = col[r] * scale[r] * scale[c];
            }
        }
        for (int i = 0; i < n; ++i) s.step[i] = pinned[i] ? 1.0 : 0.0;  // free until the variances
    }
    if (!rf_team_flag(s, inverted)) return false;  // its syncs also order s.step
    m = 0;
    for (int i = 0; i < n; ++i) {
        pinned[i] = s.step[i] != 0.0;
        m += !pinned[i];
    }
    rf_team_sync();
    const double* inv = s.jtj;
    // Noise model: the model must be positive at every point (lm.rs noise_levels filter).
    RfPeak lp[RF_MAX_PEAKS];
    int n_peaks = 0;
    for (int o = 2; o + 4 <= n; o += 4) lp[n_peaks++] = rf_peak_terms(p + o);
    bool modelled = true;
    for (int base = 0; base < d.n && modelled; base += RF_TEAM) {
        const int i = base + s.lane;
        if (i < d.n) {
            const double x = d.x[d.fidx[i]];
            double mi = p[0] + p[1] * rf_chebyshev_x(x, d.x_lo, d.x_hi);
            for (int k = 0; k < n_peaks; ++k) mi += lp[k].area * rf_point_profile(d, lp[k], i);
            s.rows[s.lane * s.stride] = mi;
        }
        rf_team_sync();
        const int rows = d.n - base < RF_TEAM ? d.n - base : RF_TEAM;
        for (int j = 0; j < rows && modelled; ++j) {
            const double mi = s.rows[j * s.stride];
            modelled = mi > 0.0 && rf_finite(mi);
        }
        rf_team_sync();
    }
    // meat = Σ vᵢ gᵢgᵢᵀ over the coupled pairs: each row holds vᵢ, gᵢ and rᵢ²/Mᵢ.
    double* meat = s.work;  // the factor is not needed any more
    for (int e = s.lane; e < n * n; e += RF_TEAM) meat[e] = 0.0;
    if (s.lane == 0) *s.sum = 0.0;
    RfPeak pk[RF_MAX_PEAKS];
    int lo[RF_MAX_PEAKS], hi[RF_MAX_PEAKS], rs[RF_MAX_PEAKS + 1], re[RF_MAX_PEAKS + 1], nr;
    rf_prepare(d, p, n, pk, lo, hi);
    rf_team_sync();
    for (int base = 0; base < d.n; base += RF_TEAM) {
        const int i = base + s.lane;
        if (i < d.n) {
            double* row = s.rows + s.lane * s.stride;
            double* grad = row + 1;
            const double r = rf_row(d, i, p, n, pk, lo, hi, grad, rs, re, &nr);
            double w, term = 0.0;
            if (modelled) {
                const double x = d.x[d.fidx[i]];
                double level = p[0] + p[1] * rf_chebyshev_x(x, d.x_lo, d.x_hi);
                for (int k = 0; k < n_peaks; ++k)
                    level += lp[k].area * rf_point_profile(d, lp[k], i);
                term = r * r / level;
                w = level;
            } else {
                double h = 0.0;
                for (int ka = 0; ka < nr; ++ka) {
                    for (int a = rs[ka]; a < re[ka]; ++a) {
                        double hrow = 0.0;
                        for (int kb = 0; kb < nr; ++kb) {
                            double t = 0.0;
                            for (int b = rs[kb]; b < re[kb]; ++b) t += inv[a * n + b] * grad[b];
                            hrow += t;
                        }
                        h += grad[a] * hrow;
                    }
                }
                const double shrink = RF_FMAX(1.0 - h, 1e-3);
                w = r * r / shrink;
            }
            row[0] = w;
            row[1 + n] = term;
        }
        rf_team_sync();
        const int rows = d.n - base < RF_TEAM ? d.n - base : RF_TEAM;
        for (int e = s.lane; e <= n * n; e += RF_TEAM) {
            if (e < n * n) {
                const int a = e / n, b = e % n;
                double acc = meat[e];
                for (int j = 0; j < rows; ++j) {
                    if (!rf_coupled(a, base + j, lo, hi) || !rf_coupled(b, base + j, lo, hi))
                        continue;
                    const double* row = s.rows + j * s.stride;
                    const double ga = row[0] * row[1 + a];
                    if (ga != 0.0) acc += ga * row[1 + b];
                }
                meat[e] = acc;
            } else if (modelled) {
                double acc = *s.sum;
                for (int j = 0; j < rows; ++j) acc += s.rows[j * s.stride + 1 + n];
                *s.sum = acc;
            }
        }
        rf_team_sync();
    }
    if (modelled) {
        const double gain = *s.sum / double(d.n - m > 1 ? d.n - m : 1);
        for (int e = s.lane; e < n * n; e += RF_TEAM) meat[e] *= gain;
        rf_team_sync();
    }
    // C = (inv·meat)·inv in lm.rs's order (half = inv·meat, then half·inv): errors match bit
    // for bit. One lane per diagonal entry.
    for (int k = s.lane; k < n; k += RF_TEAM) {
        const bool gam_row = k >= 2 && (k - 2) % 4 == 3;  // also C(sig, gam) of peak (k − 2) / 4
        double half_k[RF_MAX_PARAMS], half_sig[RF_MAX_PARAMS];
        for (int j = 0; j < n; ++j) {
            double t = 0.0, u = 0.0;
            for (int a = 0; a < n; ++a) {
                t += inv[k * n + a] * meat[a * n + j];
                if (gam_row) u += inv[(k - 1) * n + a] * meat[a * n + j];
            }
            half_k[j] = t;
            half_sig[j] = u;
        }
        double v = 0.0;
        for (int j = 0; j < n; ++j) v += half_k[j] * inv[j * n + k];
        s.step[k] = v;
        if (gam_row) {
            double c = 0.0;
            for (int j = 0; j < n; ++j) c += half_sig[j] * inv[j * n + k];
            s.cov_sg[(k - 2) / 4] = c;
        }
    }
    rf_team_sync();
    for (int k = 0; k < n; ++k) var[k] = s.step[k];
    for (int k = 0; k < n_peaks; ++k) cov_sg[k] = s.cov_sg[k];
    rf_team_sync();
    return true;
}

// fit.rs hold_centres: each centre held within half the distance to its nearest neighbour's
// start (peaks starting on one bin keep the full box), a start wider than that gap narrowed to
// it (area scaled alike); returns whether some peak is blended (gap ≤ 2 × its start FWHM).
RF_HD bool rf_hold_centres(int n_peaks, double* start, double* lower, double* upper) {
    double centre[RF_MAX_PEAKS];
    for (int k = 0; k < n_peaks; ++k) centre[k] = start[2 + 4 * k + 1];
    bool blended = false;
    for (int k = 0; k < n_peaks; ++k) {
        double gap = 1.0 / 0.0;
        for (int j = 0; j < n_peaks; ++j)
            if (j != k) gap = RF_FMIN(gap, RF_FABS(centre[j] - centre[k]));
        const int o = 2 + 4 * k;
        const double fwhm = rf_tch_terms(start[o + 2], start[o + 3]).gamma;
        blended = blended || gap <= 2.0 * fwhm;
        if (!(gap > 0.0) || !rf_finite(gap)) continue;
        lower[o + 1] = RF_FMAX(lower[o + 1], centre[k] - gap / 2.0);
        upper[o + 1] = RF_FMIN(upper[o + 1], centre[k] + gap / 2.0);
        if (fwhm > gap) {
            const double half = 0.5 * gap * 100.0;
            start[o] *= gap / fwhm;
            start[o + 2] = half * half / (8.0 * RF_LN2);
            start[o + 3] = half;
        }
    }
    return blended;
}

// fit.rs peak_row: a variance that is not > 0 (singular, NaN) gives NaN, never an error of 0.
RF_HD double rf_delta(double ds, double dg, double vs, double csg, double vg) {
    const double v = ds * ds * vs + 2.0 * ds * dg * csg + dg * dg * vg;
    return v > 0.0 ? RF_SQRT(v) : 0.0 / 0.0;
}

// Fit one job: ROI x/y[lo..=hi], peaks at global bin indices peak_index[0..n_peaks), written to
// the rows of their slots (values/errors: RF_ROW doubles per slot; status, iterations) by lane
// 0. Every lane of the team calls it with the same job; s is the team's scratch, laid out for at
// most max_roi ROI bins (a longer ROI, or more than RF_MAX_PEAKS peaks: RF_CPU_FALLBACK).
RF_HD void rf_fit_job(const double* x, const double* y, rf_u32 lo, rf_u32 hi,
                      const rf_u32* peak_slot, const rf_u32* peak_index, const rf_u32* peak_lo,
                      const rf_u32* peak_hi, int n_peaks, double bin, int bin_average,
                      int max_iterations, int max_peaks_per_job, double ftol, double xtol,
                      int max_roi, const RfScratch& s, double* values, double* errors,
                      rf_u8* status, rf_u32* iterations) {
    const double nan = 0.0 / 0.0;
    int code = RF_CONVERGED;
    if (n_peaks > max_peaks_per_job) code = RF_TOO_MANY_PEAKS;
    else if (n_peaks > RF_MAX_PEAKS || 2 + 4 * n_peaks > s.stride - 2 ||
             hi - lo + 1 > rf_u32(max_roi))
        code = RF_CPU_FALLBACK;
    RfData d;
    d.x = x;
    d.y = y;
    d.fidx = s.fidx;
    d.n = 0;
    d.x_lo = x[lo];
    d.x_hi = x[hi];
    d.roi_lo = lo;
    d.roi_hi = hi;
    d.bin = bin;
    d.bin_average = bin_average;
    const int np = 2 + 4 * n_peaks;
    if (code == RF_CONVERGED) {
        // Every lane counts the finite points; point k is stored by lane k mod RF_TEAM.
        for (rf_u32 i = lo; i <= hi; ++i) {
            if (!rf_finite(y[i])) continue;
            if (d.n % RF_TEAM == s.lane) s.fidx[d.n] = i;
            ++d.n;
        }
        rf_team_sync();
        if (d.n <= np) code = RF_INSUFFICIENT_DATA;
        // fit.rs fit_job: a peak whose own bin is NaN; constant data hold no peak.
        for (int k = 0; k < n_peaks && code == RF_CONVERGED; ++k)
            if (!rf_finite(y[peak_index[k]])) code = RF_INSUFFICIENT_DATA;
        if (code == RF_CONVERGED) {
            bool constant = true;
            for (int i = 1; i < d.n && constant; ++i) constant = y[s.fidx[i]] == y[s.fidx[0]];
            if (constant) code = RF_NO_PEAK;
        }
    }
    int iters = 0;
    double p[RF_MAX_PARAMS], lower[RF_MAX_PARAMS], upper[RF_MAX_PARAMS];
    if (code == RF_CONVERGED) {
        int pks[RF_MAX_PEAKS] = {0};
        for (int k = 0; k < n_peaks; ++k) {
            // fit.rs: partition_point of the finite x below x[index], i.e. finite points before it.
            int c = 0;
            while (c < d.n && s.fidx[c] < peak_index[k]) ++c;
            pks[k] = c < d.n - 1 ? c : d.n - 1;
            // The peak's own ROI among the finite points: [first at or after peak_lo, first after
            // peak_hi).
            int w = 0;
            while (w < d.n && s.fidx[w] < peak_lo[k]) ++w;
            d.win_lo[k] = w;
            while (w < d.n && s.fidx[w] <= peak_hi[k]) ++w;
            d.win_hi[k] = w;
        }
        double start_bins = RF_NARROW_START_BINS;
        const bool narrow =
            rf_initial_guess(d, pks, n_peaks, bin, start_bins, p, lower, upper);
        code = rf_levenberg_marquardt(d, p, lower, upper, np, max_iterations, ftol, xtol, s,
                                      &iters);
        if (narrow) {
            // fit.rs: a narrow peak is also fitted from MIDAS's 2-bin start; the lower SSR wins.
            const double cost = *s.cost;
            double p2[RF_MAX_PARAMS], lower2[RF_MAX_PARAMS], upper2[RF_MAX_PARAMS];
            int iters2 = 0;
            rf_initial_guess(d, pks, n_peaks, bin, 2.0, p2, lower2, upper2);
            const int code2 = rf_levenberg_marquardt(d, p2, lower2, upper2, np, max_iterations,
                                                     ftol, xtol, s, &iters2);
            if (code2 == RF_CONVERGED && (code != RF_CONVERGED || *s.cost < cost)) {
                for (int i = 0; i < np; ++i) {
                    p[i] = p2[i];
                    lower[i] = lower2[i];
                    upper[i] = upper2[i];
                }
                code = code2;
                iters = iters2;
                start_bins = 2.0;
            } else if (code == RF_CONVERGED) {
                rf_normal_equations(d, p, np, s);  // the first fit's, as it ended
            }
        }
        if (n_peaks > 1) {
            // fit.rs: blended peaks, or a fit that may have ended in a wrong minimum (fit.rs
            // suspect), refitted with each centre held near its start, that fit released into
            // the full box; the lower SSR wins.
            double p3[RF_MAX_PARAMS], lower3[RF_MAX_PARAMS], upper3[RF_MAX_PARAMS];
            double start_fwhm[RF_MAX_PEAKS];
            rf_initial_guess(d, pks, n_peaks, bin, start_bins, p3, lower3, upper3);
            for (int k = 0; k < n_peaks; ++k)
                start_fwhm[k] = rf_tch_terms(p3[2 + 4 * k + 2], p3[2 + 4 * k + 3]).gamma;
            const bool blended = rf_hold_centres(n_peaks, p3, lower3, upper3);
            bool suspect = code != RF_CONVERGED;
            for (int k = 0; k < n_peaks && !suspect; ++k) {
                const int o = 2 + 4 * k;
                const double fwhm = rf_tch_terms(p[o + 2], p[o + 3]).gamma;
                suspect = p[o + 1] < lower3[o + 1] || p[o + 1] > upper3[o + 1] ||
                          fwhm < 0.25 * start_fwhm[k];
            }
            if (blended || suspect) {
                const double cost = *s.cost;
                int iters3 = 0;
                int code3 = rf_levenberg_marquardt(d, p3, lower3, upper3, np, max_iterations,
                                                   ftol, xtol, s, &iters3);
                if (code3 == RF_CONVERGED)
                    code3 = rf_levenberg_marquardt(d, p3, lower, upper, np, max_iterations, ftol,
                                                   xtol, s, &iters3);
                // fit.rs REFIT_TIE: the refit wins a tie (the first fit may hold the same
                // minimum with two peaks swapped between their slots).
                if (code3 == RF_CONVERGED &&
                    (code != RF_CONVERGED || *s.cost <= cost * (1.0 + RF_REFIT_TIE))) {
                    for (int i = 0; i < np; ++i) p[i] = p3[i];
                    code = code3;
                    iters = iters3;
                } else if (code == RF_CONVERGED) {
                    rf_normal_equations(d, p, np, s);
                }
            }
        }
    }
    if (code != RF_CONVERGED) {
        for (int k = 0; k < n_peaks && s.lane == 0; ++k) {
            const rf_u32 s = peak_slot[k];
            for (int c = 0; c < RF_ROW; ++c) values[s * RF_ROW + c] = errors[s * RF_ROW + c] = nan;
            status[s] = rf_u8(code);
            iterations[s] = rf_u32(code == RF_CPU_FALLBACK ? 0 : iters);
        }
        return;
    }
    // fit.rs bound_verdict: area collapsed onto 0, or the centre outside the peak's own ROI →
    // no_peak; the background or the peak's own parameter on a non-physical limit
    // of the starting box → at_bound.
    rf_u8 verdict[RF_MAX_PEAKS];
    const bool background =
        p[0] <= lower[0] || p[0] >= upper[0] || p[1] <= lower[1] || p[1] >= upper[1];
    for (int k = 0; k < n_peaks; ++k) {
        const int o = 2 + 4 * k;
        const bool own = p[o] >= upper[o] || p[o + 1] <= lower[o + 1] || p[o + 1] >= upper[o + 1] ||
                         p[o + 2] >= upper[o + 2] || p[o + 3] >= upper[o + 3];
        // Its centre outside its own ROI's finite points: another feature (fit.rs own_range).
        const bool left_roi =
            d.win_hi[k] > d.win_lo[k] && !(p[o + 1] >= d.x[d.fidx[d.win_lo[k]]] &&
                                           p[o + 1] <= d.x[d.fidx[d.win_hi[k] - 1]]);
        verdict[k] = (p[o] <= lower[o] || p[o] <= 1e-9 * upper[o]) ? rf_u8(RF_NO_PEAK)
                     : left_roi                                    ? rf_u8(RF_NO_PEAK)
                     : (background || own)                         ? rf_u8(RF_AT_BOUND)
                                                                   : rf_u8(RF_CONVERGED);
    }
    const double dof = double(d.n - np > 1 ? d.n - np : 1);
    const double chi2 = *s.cost / dof;
    double var[RF_MAX_PARAMS], cov_sg[RF_MAX_PEAKS];
    bool pinned[RF_MAX_PARAMS];
    const bool have_cov = rf_covariance(d, p, lower, upper, np, s, var, cov_sg, pinned);
    for (int k = 0; k < n_peaks && s.lane == 0; ++k) {
        const rf_u32 s = peak_slot[k];
        const int o = 2 + 4 * k;
        if (verdict[k] != RF_CONVERGED) {
            for (int c = 0; c < RF_ROW; ++c) values[s * RF_ROW + c] = errors[s * RF_ROW + c] = nan;
            status[s] = verdict[k];
            iterations[s] = rf_u32(iters);
            continue;
        }
        const RfTch t = rf_tch_terms(p[o + 2], p[o + 3]);
        double* v = values + s * RF_ROW;
        double* e = errors + s * RF_ROW;
        v[0] = p[o];
        v[1] = p[o + 1];
        v[2] = p[o + 2];
        v[3] = p[o + 3];
        v[4] = t.gamma;
        v[5] = t.eta;
        v[6] = chi2;
        for (int c = 0; c < 4; ++c)
            e[c] = have_cov && !pinned[o + c] && var[o + c] > 0.0 ? RF_SQRT(var[o + c]) : nan;
        e[4] = have_cov ? rf_delta(t.dgamma_dsig, t.dgamma_dgam, var[o + 2], cov_sg[k], var[o + 3]) : nan;
        e[5] = have_cov ? rf_delta(t.deta_dsig, t.deta_dgam, var[o + 2], cov_sg[k], var[o + 3]) : nan;
        e[6] = nan;
        status[s] = RF_CONVERGED;
        iterations[s] = rf_u32(iters);
    }
}
