//! The MIDAS peak model (spec §6.1): TCH pseudo-Voigt peaks on a 2-term Chebyshev background, with
//! its analytic gradient.
//!
//! Parameter layout of one job (a flat slice, so the GPU fitter can use the same layout):
//! `[bg0, bg1, A_1, c_1, sig_1, gam_1, A_2, c_2, sig_2, gam_2, ...]`.
//! `sig` and `gam` are "centi"-scaled (GSAS-II centidegree convention applied to x units):
//! `F_G = sqrt(8 ln2 · sig) / 100` and `F_L = gam / 100` are widths in x units.

use std::f64::consts::{LN_2, PI};

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

/// The unit-area pseudo-Voigt `η L + (1 − η) G` at offset `d = x − c`, both components with the
/// single total FWHM Γ (MIDAS does not use separate Gaussian/Lorentzian widths here).
/// Returns (value, ∂/∂d, ∂/∂Γ, ∂/∂η).
fn unit_pv(d: f64, gamma: f64, eta: f64) -> [f64; 4] {
    let k = 2.0 * (2.0 * LN_2).sqrt();
    let sigma = gamma / k;
    let g = (-d * d / (2.0 * sigma * sigma)).exp() / (sigma * (2.0 * PI).sqrt());
    let h = gamma / 2.0;
    let den = d * d + h * h;
    let l = h / PI / den;

    let dg_dd = -d / (sigma * sigma) * g;
    let dl_dd = -(h / PI) * 2.0 * d / (den * den);
    let dg_dgamma = g * (d * d / sigma.powi(3) - 1.0 / sigma) / k;
    let dl_dgamma = 0.5 * (d * d - h * h) / (PI * den * den);
    [
        eta * l + (1.0 - eta) * g,
        eta * dl_dd + (1.0 - eta) * dg_dd,
        eta * dl_dgamma + (1.0 - eta) * dg_dgamma,
        l - g,
    ]
}

/// Unit-area TCH pseudo-Voigt of centre `center` and centi-scaled widths at `x`.
pub fn pseudo_voigt(x: f64, center: f64, sig: f64, gam: f64) -> f64 {
    let (gamma, eta) = tch(sig, gam);
    unit_pv(x - center, gamma, eta)[0]
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
        m += p[0] * pseudo_voigt(x, p[1], p[2], p[3]);
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
        let (area, center) = (p[0], p[1]);
        let t = tch_terms(p[2], p[3]);
        let [v, dv_dd, dv_dgamma, dv_deta] = unit_pv(x - center, t.gamma, t.eta);
        m += area * v;
        g[0] = v;
        g[1] = -area * dv_dd;
        g[2] = area * (dv_dgamma * t.dgamma_dsig + dv_deta * t.deta_dsig);
        g[3] = area * (dv_dgamma * t.dgamma_dgam + dv_deta * t.deta_dgam);
    }
    m
}

/// Centi-scaled (sig, gam) that give FWHM `fwhm` (x units) split evenly into F_G = F_L = fwhm/2,
/// the MIDAS starting point (§6.2 step 3).
pub fn widths_from_fwhm(fwhm: f64) -> (f64, f64) {
    let half = 0.5 * fwhm * 100.0;
    (half * half / (8.0 * LN_2), half)
}
