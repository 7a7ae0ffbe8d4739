//! The MIDAS peak model (spec §6.1): TCH pseudo-Voigt peaks on a 2-term Chebyshev background, with
//! its analytic gradient.
//!
//! Parameter layout of one job (a flat slice, so the GPU fitter can use the same layout):
//! `[bg0, bg1, A_1, c_1, sig_1, gam_1, A_2, c_2, sig_2, gam_2, ...]`.
//! `sig` and `gam` are "centi"-scaled (GSAS-II centidegree convention applied to x units):
//! `F_G = sqrt(8 ln2 · sig) / 100` and `F_L = gam / 100` are widths in x units.

use std::f64::consts::{FRAC_1_PI, LN_2, PI, SQRT_2};

/// Parameters per peak: area, centre, sig, gam.
pub const PARAMS_PER_PEAK: usize = 4;
/// Background parameters per job: bg0, bg1.
pub const N_BACKGROUND: usize = 2;

/// Number of parameters of a job with `n_peaks` peaks.
pub fn n_params(n_peaks: usize) -> usize {
    N_BACKGROUND + PARAMS_PER_PEAK * n_peaks
}

/// Floors used by MIDAS so that widths never reach 0 (`PeakFit.c:17-90`).
const SIG_FLOOR: f64 = 1e-12;
const GAM_FLOOR: f64 = 1e-6;
const GAMMA_FLOOR: f64 = 1e-15;
/// TCH polynomial coefficients for Γ⁵ (F_G⁵, F_G⁴F_L, …, F_L⁵).
const TCH: [f64; 6] = [1.0, 2.69269, 2.42843, 4.47163, 0.07842, 1.0];
/// η(q) = 1.36603 q − 0.47719 q² + 0.11116 q³.
const ETA_POLY: [f64; 3] = [1.36603, -0.47719, 0.11116];

/// Total FWHM Γ (x units) and Lorentzian fraction η of a TCH pseudo-Voigt with centi-scaled
/// `sig`, `gam`.
pub fn tch(sig: f64, gam: f64) -> (f64, f64) {
    let t = tch_terms(sig, gam);
    (t.gamma, t.eta)
}

/// Γ and η with their derivatives with respect to sig and gam.
#[derive(Debug, Clone, Copy)]
pub struct TchTerms {
    pub gamma: f64,
    pub eta: f64,
    pub dgamma_dsig: f64,
    pub dgamma_dgam: f64,
    pub deta_dsig: f64,
    pub deta_dgam: f64,
}

/// TCH Γ, η and their analytic derivatives. Where MIDAS clamps (width floors, Γ floor, η ∈ [0, 1])
/// the derivative of the clamped quantity is 0, as the model is flat there.
pub fn tch_terms(sig: f64, gam: f64) -> TchTerms {
    let fg = (8.0 * LN_2 * sig.max(SIG_FLOOR)).sqrt() / 100.0;
    let dfg_dsig = if sig > SIG_FLOOR {
        fg / (2.0 * sig)
    } else {
        0.0
    };
    let fl = gam.max(GAM_FLOOR) / 100.0;
    let dfl_dgam = if gam > GAM_FLOOR { 0.01 } else { 0.0 };

    // Γ⁵ = Σ_k TCH[k] F_G^(5−k) F_L^k, with its partial derivatives.
    let (mut s, mut ds_dfg, mut ds_dfl) = (0.0, 0.0, 0.0);
    for (k, c) in TCH.iter().enumerate() {
        let (eg, el) = ((5 - k) as i32, k as i32);
        s += c * fg.powi(eg) * fl.powi(el);
        if eg > 0 {
            ds_dfg += c * eg as f64 * fg.powi(eg - 1) * fl.powi(el);
        }
        if el > 0 {
            ds_dfl += c * el as f64 * fg.powi(eg) * fl.powi(el - 1);
        }
    }
    let raw = s.powf(0.2);
    let (gamma, dgamma_dfg, dgamma_dfl) = if raw >= GAMMA_FLOOR {
        let d = 5.0 * raw.powi(4);
        (raw, ds_dfg / d, ds_dfl / d)
    } else {
        (GAMMA_FLOOR, 0.0, 0.0)
    };

    let q = fl / gamma;
    let eta_raw = ETA_POLY[0] * q + ETA_POLY[1] * q * q + ETA_POLY[2] * q * q * q;
    let deta_dq = if (0.0..=1.0).contains(&eta_raw) {
        ETA_POLY[0] + 2.0 * ETA_POLY[1] * q + 3.0 * ETA_POLY[2] * q * q
    } else {
        0.0
    };
    let dq_dfg = -fl / (gamma * gamma) * dgamma_dfg;
    let dq_dfl = 1.0 / gamma - fl / (gamma * gamma) * dgamma_dfl;

    TchTerms {
        gamma,
        eta: eta_raw.clamp(0.0, 1.0),
        dgamma_dsig: dgamma_dfg * dfg_dsig,
        dgamma_dgam: dgamma_dfl * dfl_dgam,
        deta_dsig: deta_dq * dq_dfg * dfg_dsig,
        deta_dgam: deta_dq * dq_dfl * dfl_dgam,
    }
}

/// Everything about one peak of a parameter vector that does not depend on x: the TCH terms and
/// the profile's width constants, as reciprocals. A job evaluates its model at every ROI point for
/// the same parameters, and in a merged job every peak at every point, so these are computed once
/// per evaluation: the TCH polynomial with its fifth root and the divisions cost more than the
/// profile itself. `fit.cuh` (the GPU port) computes the same expressions in the same order.
#[derive(Debug, Clone, Copy)]
pub struct PeakTerms {
    pub area: f64,
    pub center: f64,
    pub tch: TchTerms,
    /// Gaussian σ = Γ / (2·sqrt(2 ln 2)) of the total FWHM: 1/(2σ²), 1/σ², 1/σ³, 1/σ, and
    /// 1/(σ·sqrt(2π)); `inv_k` = 1 / (2·sqrt(2 ln 2)).
    inv_two_s2: f64,
    inv_s2: f64,
    inv_s3: f64,
    inv_s: f64,
    inv_norm: f64,
    inv_k: f64,
    /// Square of the Lorentzian half width Γ/2, and (Γ/2)/π.
    h2: f64,
    h_pi: f64,
    /// Bin averages: 1/(σ·sqrt 2) (erfc argument per unit offset), Γ/2 and 1/Γ.
    inv_s_sqrt2: f64,
    h: f64,
    inv_gamma: f64,
}

/// The peak at one bin edge `e` (see [`PeakTerms::edge`]): offset `d = e − c`, the unit-area
/// Gaussian and Lorentzian densities there, and the mass of each beyond `e` on its own side of
/// the centre (the tail away from the centre: `P(X > e)` for `e ≥ c`, `P(X < e)` below).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeTerms {
    pub d: f64,
    pub g: f64,
    pub l: f64,
    pub tail_g: f64,
    pub tail_l: f64,
}

extern "C" {
    /// The C library's complementary error function (glibc on Linux: the same function the
    /// GPU fitter's host harness calls, so both give the same bits). Rust's std has no erfc.
    fn erfc(x: f64) -> f64;
}

/// `erfc(x)` from the C math library.
#[inline]
pub fn c_erfc(x: f64) -> f64 {
    // SAFETY: erfc is a pure function of one double in the C math library, which std links.
    unsafe { erfc(x) }
}

/// Below this, `exp` underflows to exactly +0 (the smallest subnormal is exp(−744.4)): skipping
/// the call there changes no bit, and far from a peak the exponential is most of the cost.
const EXP_UNDERFLOW: f64 = -746.0;
const HALF_INV_PI: f64 = 0.5 * FRAC_1_PI;

impl PeakTerms {
    /// Terms of the peak `[area, center, sig, gam]` (at least 4 values; extra ones are ignored).
    pub fn new(p: &[f64]) -> PeakTerms {
        let tch = tch_terms(p[2], p[3]);
        let k = 2.0 * (2.0 * LN_2).sqrt();
        let sigma = tch.gamma / k;
        let h = tch.gamma / 2.0;
        PeakTerms {
            area: p[0],
            center: p[1],
            tch,
            inv_two_s2: 1.0 / (2.0 * sigma * sigma),
            inv_s2: 1.0 / (sigma * sigma),
            inv_s3: 1.0 / (sigma * sigma * sigma),
            inv_s: 1.0 / sigma,
            inv_norm: 1.0 / (sigma * (2.0 * PI).sqrt()),
            inv_k: 1.0 / k,
            h2: h * h,
            h_pi: h / PI,
            inv_s_sqrt2: 1.0 / (sigma * SQRT_2),
            h,
            inv_gamma: 1.0 / tch.gamma,
        }
    }

    /// The peak at bin edge `e`: densities and the outer tail masses (erfc, atan). Far from the
    /// centre the Gaussian terms are exactly 0 (both underflow there) and are not computed.
    #[inline]
    pub fn edge(&self, e: f64) -> EdgeTerms {
        let d = e - self.center;
        let ad = d.abs();
        let dd = d * d;
        let arg = -dd * self.inv_two_s2;
        let (g, tail_g) = if !(arg < EXP_UNDERFLOW) {
            (
                arg.exp() * self.inv_norm,
                0.5 * c_erfc(ad * self.inv_s_sqrt2),
            )
        } else {
            (0.0, 0.0)
        };
        EdgeTerms {
            d,
            g,
            l: self.h_pi / (dd + self.h2),
            tail_g,
            // atan(h/|d|)/π = P(X beyond e) of the Lorentzian; 1/2 at the centre (atan(+∞)).
            tail_l: (self.h / ad).atan() * FRAC_1_PI,
        }
    }

    /// Masses of the Gaussian and Lorentzian between edges `lo < hi`, from their outer tails:
    /// a difference of two small tails on one side of the centre, or one minus both tails when
    /// the bin holds the centre, so a bin far out in a tail keeps its relative precision.
    #[inline]
    fn masses(lo: &EdgeTerms, hi: &EdgeTerms) -> (f64, f64) {
        if lo.d >= 0.0 {
            (lo.tail_g - hi.tail_g, lo.tail_l - hi.tail_l)
        } else if hi.d < 0.0 {
            (hi.tail_g - lo.tail_g, hi.tail_l - lo.tail_l)
        } else {
            (1.0 - lo.tail_g - hi.tail_g, 1.0 - lo.tail_l - hi.tail_l)
        }
    }

    /// Mean of the unit-area profile over the bin between edges `lo` and `hi` (from
    /// [`PeakTerms::edge`]); `inv_width` = 1/(hi − lo).
    #[inline]
    pub fn bin_mean(&self, lo: &EdgeTerms, hi: &EdgeTerms, inv_width: f64) -> f64 {
        let (mg, ml) = Self::masses(lo, hi);
        (self.tch.eta * ml + (1.0 - self.tch.eta) * mg) * inv_width
    }

    /// Bin mean of the unit-area profile, and the gradient of `area · mean` with respect to
    /// `[area, center, sig, gam]` written to `grad` (4 entries). With F the profile's CDF and f
    /// its density: ∂F(e)/∂c = −f(e) and ∂F(e)/∂Γ = −(e − c)·f(e)/Γ (both components scale with
    /// the one Γ), ∂/∂η = F_L − F_G.
    #[inline]
    pub fn bin_mean_gradient(
        &self,
        lo: &EdgeTerms,
        hi: &EdgeTerms,
        inv_width: f64,
        grad: &mut [f64],
    ) -> f64 {
        let (t, eta) = (&self.tch, self.tch.eta);
        let (mg, ml) = Self::masses(lo, hi);
        let f_lo = eta * lo.l + (1.0 - eta) * lo.g;
        let f_hi = eta * hi.l + (1.0 - eta) * hi.g;
        let v = (eta * ml + (1.0 - eta) * mg) * inv_width;
        let dv_dc = (f_lo - f_hi) * inv_width;
        let dv_dgamma = (lo.d * f_lo - hi.d * f_hi) * self.inv_gamma * inv_width;
        let dv_deta = (ml - mg) * inv_width;
        grad[0] = v;
        grad[1] = self.area * dv_dc;
        grad[2] = self.area * (dv_dgamma * t.dgamma_dsig + dv_deta * t.deta_dsig);
        grad[3] = self.area * (dv_dgamma * t.dgamma_dgam + dv_deta * t.deta_dgam);
        v
    }

    /// Unit-area Gaussian and Lorentzian at offset `d = x − c`, with `d²` and `1/(d² + h²)`.
    #[inline]
    fn components(&self, d: f64) -> (f64, f64, f64, f64) {
        let dd = d * d;
        let arg = -dd * self.inv_two_s2;
        // `!(arg < …)` keeps NaN on the exp path, so NaN parameters still give a NaN model.
        let g = if !(arg < EXP_UNDERFLOW) {
            arg.exp() * self.inv_norm
        } else {
            0.0
        };
        let inv_den = 1.0 / (dd + self.h2);
        (g, self.h_pi * inv_den, dd, inv_den)
    }

    /// Unit-area profile `η L + (1 − η) G` at `x` (Gaussian and Lorentzian share the total FWHM
    /// Γ; MIDAS does not use separate widths here).
    #[inline]
    pub fn profile(&self, x: f64) -> f64 {
        let eta = self.tch.eta;
        let (g, l, _, _) = self.components(x - self.center);
        eta * l + (1.0 - eta) * g
    }

    /// Unit-area profile at `x`, and the gradient of `area · profile` with respect to
    /// `[area, center, sig, gam]` written to `grad` (4 entries).
    #[inline]
    pub fn profile_gradient(&self, x: f64, grad: &mut [f64]) -> f64 {
        let (t, eta) = (&self.tch, self.tch.eta);
        let d = x - self.center;
        let (g, l, dd, inv_den) = self.components(d);
        let ld = inv_den * inv_den;
        let dl_dd = -2.0 * self.h_pi * d * ld;
        let dl_dgamma = HALF_INV_PI * (dd - self.h2) * ld;
        // Far from the peak the Gaussian is exactly 0, and so are its derivatives.
        let (dg_dd, dg_dgamma) = if g != 0.0 {
            (
                -d * self.inv_s2 * g,
                g * (dd * self.inv_s3 - self.inv_s) * self.inv_k,
            )
        } else {
            (0.0, 0.0)
        };
        let v = eta * l + (1.0 - eta) * g;
        let dv_dd = eta * dl_dd + (1.0 - eta) * dg_dd;
        let dv_dgamma = eta * dl_dgamma + (1.0 - eta) * dg_dgamma;
        let dv_deta = l - g;
        grad[0] = v;
        grad[1] = -self.area * dv_dd;
        grad[2] = self.area * (dv_dgamma * t.dgamma_dsig + dv_deta * t.deta_dsig);
        grad[3] = self.area * (dv_dgamma * t.dgamma_dgam + dv_deta * t.deta_dgam);
        v
    }
}

/// Unit-area TCH pseudo-Voigt of centre `center` and centi-scaled widths at `x`.
pub fn pseudo_voigt(x: f64, center: f64, sig: f64, gam: f64) -> f64 {
    PeakTerms::new(&[1.0, center, sig, gam]).profile(x)
}

/// Chebyshev abscissa `x_n = 2(x − x_lo)/(x_hi − x_lo) − 1` of the job's ROI (0 for a one-point ROI,
/// where the slope term is meaningless).
pub fn chebyshev_x(x: f64, x_lo: f64, x_hi: f64) -> f64 {
    let span = x_hi - x_lo;
    if span != 0.0 {
        2.0 * (x - x_lo) / span - 1.0
    } else {
        0.0
    }
}

/// Model value `bg0 + bg1·x_n + Σ A·pV(x)` for a flat parameter slice (layout in the module docs;
/// an incomplete trailing peak is ignored).
pub fn model_value(x: f64, x_lo: f64, x_hi: f64, params: &[f64]) -> f64 {
    let (bg, peaks) = params.split_at(N_BACKGROUND.min(params.len()));
    let mut m = bg.first().copied().unwrap_or(0.0)
        + bg.get(1).copied().unwrap_or(0.0) * chebyshev_x(x, x_lo, x_hi);
    for p in peaks.chunks_exact(PARAMS_PER_PEAK) {
        m += p[0] * PeakTerms::new(p).profile(x);
    }
    m
}

/// Model value and its analytic gradient with respect to every parameter, written to `grad`
/// (same layout and length as `params`). Returns the model value.
pub fn model_gradient(x: f64, x_lo: f64, x_hi: f64, params: &[f64], grad: &mut [f64]) -> f64 {
    grad.iter_mut().for_each(|g| *g = 0.0);
    if params.len() < N_BACKGROUND || grad.len() < params.len() {
        return model_value(x, x_lo, x_hi, params);
    }
    let xn = chebyshev_x(x, x_lo, x_hi);
    let mut m = params[0] + params[1] * xn;
    grad[0] = 1.0;
    grad[1] = xn;
    let peaks = params[N_BACKGROUND..].chunks_exact(PARAMS_PER_PEAK);
    let grads = grad[N_BACKGROUND..].chunks_exact_mut(PARAMS_PER_PEAK);
    for (p, g) in peaks.zip(grads) {
        m += p[0] * PeakTerms::new(p).profile_gradient(x, g);
    }
    m
}

/// Centi-scaled (sig, gam) that give FWHM `fwhm` (x units) split evenly into F_G = F_L = fwhm/2,
/// the MIDAS starting point (§6.2 step 3).
pub fn widths_from_fwhm(fwhm: f64) -> (f64, f64) {
    let half = 0.5 * fwhm * 100.0;
    (half * half / (8.0 * LN_2), half)
}
