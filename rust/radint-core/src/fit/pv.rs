//! Height-normalised pseudo-Voigt of the CPU per-η fits (spec §6.4):
//! `I = BG + Imax·[μ/(1 + 4Δ²/Γ²) + (1 − μ)·exp(−4 ln2 Δ²/Γ²)]`, Δ = x − centre.
//! Parameters `[bg, imax, center, fwhm, mu]`. Only the singlet is provided here.

use std::f64::consts::LN_2;

use std::ops::Range;

use rayon::prelude::*;

use super::lm::{levenberg_marquardt, FitStatus, LmOptions, Residuals};
use super::validate_axis;
use crate::error::{Error, Result};

/// Parameters of the height-normalised pV.
pub const PV_PARAMS: usize = 5;

/// Value of the height-normalised pV at `x`.
pub fn pv_height(x: f64, p: &[f64; PV_PARAMS]) -> f64 {
    let [bg, imax, c, w, mu] = *p;
    let u = 4.0 * (x - c) * (x - c) / (w * w);
    bg + imax * (mu / (1.0 + u) + (1.0 - mu) * (-LN_2 * u).exp())
}

/// Value and analytic gradient (same order as the parameters).
pub fn pv_height_gradient(x: f64, p: &[f64; PV_PARAMS], grad: &mut [f64; PV_PARAMS]) -> f64 {
    let [bg, imax, c, w, mu] = *p;
    let d = x - c;
    let u = 4.0 * d * d / (w * w);
    let l = 1.0 / (1.0 + u);
    let g = (-LN_2 * u).exp();
    let shape = mu * l + (1.0 - mu) * g;
    // ∂shape/∂u, then the chain rule through u(c) and u(w).
    let dshape_du = -mu * l * l - (1.0 - mu) * LN_2 * g;
    *grad = [
        1.0,
        shape,
        imax * dshape_du * (-8.0 * d / (w * w)),
        imax * dshape_du * (-8.0 * d * d / (w * w * w)),
        imax * (l - g),
    ];
    bg + imax * shape
}

/// Result of a height-normalised pV fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PvFit {
    /// `[bg, imax, center, fwhm, mu]`; NaN unless converged.
    pub params: [f64; PV_PARAMS],
    pub std_errors: [f64; PV_PARAMS],
    /// `Imax / sqrt(SSR / N)` (MIDAS accepts per-η peaks with SNR > 1).
    pub snr: f64,
    pub status: FitStatus,
}

/// MIDAS needs at least 6 points for a per-η fit.
const MIN_POINTS: usize = 6;

struct PvProblem<'a> {
    x: &'a [f64],
    y: &'a [f64],
}

impl Residuals for PvProblem<'_> {
    fn n_params(&self) -> usize {
        PV_PARAMS
    }
    fn cost(&self, p: &[f64]) -> f64 {
        let Ok(p): std::result::Result<&[f64; PV_PARAMS], _> = p.try_into() else {
            return f64::NAN;
        };
        self.x
            .iter()
            .zip(self.y)
            .map(|(&x, &y)| {
                let r = pv_height(x, p) - y;
                r * r
            })
            .sum()
    }
    fn for_each_row(&self, p: &[f64], mut row: impl FnMut(f64, &[f64], &[Range<usize>])) {
        // Every parameter is coupled at every point: one range holding all of them.
        let all = std::slice::from_ref(&(0..PV_PARAMS));
        let mut g = [0.0; PV_PARAMS];
        let Ok(p): std::result::Result<&[f64; PV_PARAMS], _> = p.try_into() else {
            row(f64::NAN, &g, all);
            return;
        };
        for (&x, &y) in self.x.iter().zip(self.y) {
            let r = pv_height_gradient(x, p, &mut g) - y;
            row(r, &g, all);
        }
    }
}

/// Which box and start a pV fit uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PvBounds {
    /// radint's: bg = min, imax = y(nearest centre) − bg, FWHM by a half-maximum walk; FWHM in
    /// [bin/10, span], imax in [0, 10·range], bg within a range of the data.
    #[default]
    Radint,
    /// IntegratorZarrOMP's (`PeakFit.c` `pf_fit_singlet_pv`): bg₀ = max(mean of the end
    /// points, 0), Γ₀ = 3 bins, imax₀ = max − bg₀; Γ in [bin/2, bin·n/2], imax in
    /// [(max − bg₀)/100, 1.5·max], bg in [0, 1.5·bg₀] (or [0, max/2] when bg₀ is 0); run from
    /// C's start and from radint's (clipped into the box), the lower SSR kept. Where C pins Γ on
    /// its cap (a ring wider than half the window) the fit is C's, not the best one.
    Midas,
}

/// Fit one height-normalised pV to the points of `(x, y)` with a finite `y`, starting at
/// `center0`, in the box and from the start `bounds` names; the centre stays within the data
/// range and μ ∈ [0, 1] (start 0.5) either way. `x` must be finite and strictly increasing (bin
/// centres), as for every peak fit: an error otherwise.
pub fn fit_pv(
    x: &[f64],
    y: &[f64],
    center0: f64,
    bounds: PvBounds,
    lm: &LmOptions,
) -> Result<PvFit> {
    validate_axis(x)?;
    if y.len() != x.len() {
        return Err(Error::shape("pV fit: curve length", x.len(), y.len()));
    }
    Ok(fit_pv_checked(x, y, center0, bounds, lm))
}

/// [`fit_pv`] of every row of `ys` (row-major `(n_curves, x.len())`), row i started at
/// `centers[i]`, in parallel over curves on the current rayon pool; the axis is checked once.
pub fn fit_pv_many(
    x: &[f64],
    ys: &[f64],
    centers: &[f64],
    bounds: PvBounds,
    lm: &LmOptions,
) -> Result<Vec<PvFit>> {
    validate_axis(x)?;
    if ys.len() != centers.len() * x.len() {
        return Err(Error::shape(
            "pV fit: curves (n_curves × n_x)",
            format!("{} × {}", centers.len(), x.len()),
            ys.len(),
        ));
    }
    Ok(ys
        .par_chunks(x.len())
        .zip(centers.par_iter())
        .map(|(y, &c)| fit_pv_checked(x, y, c, bounds, lm))
        .collect())
}

/// [`fit_pv`] on a checked axis.
fn fit_pv_checked(x: &[f64], y: &[f64], center0: f64, bounds: PvBounds, lm: &LmOptions) -> PvFit {
    let (fx, fy): (Vec<f64>, Vec<f64>) = x
        .iter()
        .zip(y)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(&a, &b)| (a, b))
        .unzip();
    let failed = |status| PvFit {
        params: [f64::NAN; PV_PARAMS],
        std_errors: [f64::NAN; PV_PARAMS],
        snr: f64::NAN,
        status,
    };
    if fx.len() < MIN_POINTS || !center0.is_finite() {
        return failed(FitStatus::InsufficientData);
    }
    let (xmin, xmax) = fx
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (ymin, ymax) = fy
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if !(center0 >= xmin && center0 <= xmax && xmax > xmin) {
        return failed(FitStatus::OutOfRange);
    }
    let span = xmax - xmin;
    let n = fx.len() as f64;
    let bin = span / (n - 1.0);
    // radint's start: bg = min, imax = y(nearest centre) − bg, FWHM by a half-maximum walk.
    let range = (ymax - ymin).max(1e-12);
    let pk = fx.partition_point(|&v| v < center0).min(fx.len() - 1);
    let imax0 = (fy[pk] - ymin).max(0.5 * range);
    let fwhm0 = half_max_width(&fx, &fy, pk, ymin + imax0 / 2.0).clamp(bin, span);
    let own_start = [ymin, imax0, center0, fwhm0, 0.5];
    let problem = PvProblem { x: &fx, y: &fy };
    let res = match bounds {
        PvBounds::Radint => {
            let lower = [ymin - range, 0.0, xmin, 0.1 * bin, 0.0];
            let upper = [ymax + range, 10.0 * range, xmax, span, 1.0];
            levenberg_marquardt(&problem, &own_start, &lower, &upper, lm)
        }
        PvBounds::Midas => {
            let bg0 = (0.5 * (fy[0] + fy[fy.len() - 1])).max(0.0);
            let bg_cap = if bg0 > 0.0 { 1.5 * bg0 } else { 0.5 * ymax };
            let imax_cap = 1.5 * ymax;
            // A box C's optimiser would reject (all values ≤ 0) is narrowed to a point.
            let lower = [
                0.0,
                ((ymax - bg0) / 100.0).min(imax_cap),
                xmin,
                0.5 * bin,
                0.0,
            ];
            let upper = [bg_cap.max(0.0), imax_cap, xmax, 0.5 * bin * n, 1.0];
            let c_start = [bg0, ymax - bg0, center0, 3.0 * bin, 0.5];
            // C's start first; from it LM can end in a corner of the box (centre on the window's
            // edge, height on its floor) where C's LBFGS finds the peak, so radint's start runs
            // too (clipped into the box) and the lower SSR is kept.
            let c = levenberg_marquardt(&problem, &c_start, &lower, &upper, lm);
            let own = levenberg_marquardt(&problem, &own_start, &lower, &upper, lm);
            match (c.status.is_ok(), own.status.is_ok()) {
                (true, true) if own.ssr < c.ssr => own,
                (false, true) => own,
                _ => c,
            }
        }
    };
    if !res.status.is_ok() {
        return failed(res.status);
    }
    let mut params = [0.0; PV_PARAMS];
    let mut std_errors = [0.0; PV_PARAMS];
    params.copy_from_slice(&res.params);
    std_errors.copy_from_slice(&res.std_errors);
    PvFit {
        params,
        std_errors,
        snr: params[1] / (res.ssr / fx.len() as f64).sqrt(),
        status: res.status,
    }
}

/// Width (x units) of the run of points above `half` around index `pk`, at least one spacing.
fn half_max_width(x: &[f64], y: &[f64], pk: usize, half: f64) -> f64 {
    let mut left = pk;
    while left > 0 && y[left - 1] > half {
        left -= 1;
    }
    let mut right = pk;
    while right + 1 < y.len() && y[right + 1] > half {
        right += 1;
    }
    x[right] - x[left]
}
