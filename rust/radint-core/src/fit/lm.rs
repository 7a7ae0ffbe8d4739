//! Bounded Levenberg–Marquardt with analytic Jacobians.
//!
//! Bounds are handled by projection: a trial point is clamped into the box, and a parameter that
//! sits on a bound while the gradient pushes it outwards is frozen for that iteration (removed from
//! the normal equations), so the remaining parameters still get a proper Gauss–Newton step.
//! Damping uses Marquardt's diagonal scaling with the running maximum of diag(JᵀJ) (as MINPACK),
//! which makes the step invariant to the very different scales of area, centre and centi-widths.
//! The running maximum is capped at [`STALE_SCALE`] times the current diagonal: a parameter whose
//! curvature fell by orders of magnitude since the start (a width grown 50×) would otherwise stay
//! damped as at the start and creep.
//!
//! Stopping: one accepted step lowers the cost by less than `ftol` relatively, a step smaller
//! than `xtol`, no descent step at any damping, or *stalled progress*: the last `stall_window`
//! accepted steps together lowered the cost by less than `stall_ftol` relatively. The last rule
//! ends jobs in which a degenerate peak (a weak peak under a strong one turning into a broad
//! hump, widths running to their bounds) opens a flat curved valley that Gauss–Newton crawls
//! along for tens of thousands of steps while the well-determined peaks no longer move.

use std::ops::Range;

/// A least-squares problem: residuals `r_i(p) = model_i(p) − data_i` with their gradients, visited
/// point by point so that JᵀJ and Jᵀr are accumulated without storing J.
///
/// Each point also names the parameters *coupled* at it: products of their gradient entries enter
/// JᵀJ (and the covariance), the other entries enter only Jᵀr. A problem whose parameters act on
/// separate stretches of the data — the peaks of a merged job, each with its own ROI — so builds
/// JᵀJ at a cost that grows with the points each parameter touches rather than with all
/// parameters squared at every point. Jᵀr, the cost, and therefore the minimum found stay exact;
/// the neglected products (far tails) only shade the step direction and the covariance.
pub trait Residuals {
    fn n_params(&self) -> usize;
    /// `Σ r_i²` at `p`.
    fn cost(&self, p: &[f64]) -> f64;
    /// Calls `row(r_i, ∂r_i/∂p, coupled_i)` for every point at `p`, in a fixed order: the gradient
    /// has `n_params` entries, `coupled_i` lists the coupled parameters as increasing, disjoint
    /// index ranges (contiguous runs keep the JᵀJ loops free of gathers).
    fn for_each_row(&self, p: &[f64], row: impl FnMut(f64, &[f64], &[Range<usize>]));
    /// Noise model at `p`: the variance of each point's data is `g · levels[i]` (points in
    /// [`Residuals::for_each_row`] order) with one common factor `g` — counts, or counts scaled
    /// by one factor, have `levels` = the expected counts. `None` (the default): no model, the
    /// covariance then estimates each point's variance from its own residual.
    fn noise_levels(&self, _p: &[f64]) -> Option<Vec<f64>> {
        None
    }
    /// Whether parameter `i`, when it ends on a bound, is held there in the covariance (its rows
    /// and columns 0, its error NaN: the default), or counted as free. A bound that the true value
    /// may well sit next to (a width floor) is better counted free: holding it reports the errors
    /// of a fit that knew the width, while the fitted width only landed there by noise.
    fn held_at_bound(&self, _i: usize) -> bool {
        true
    }
}

/// Why a fit stopped, or why it never ran. Stored as a small integer in tables (`code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FitStatus {
    /// Relative change of cost or parameters fell below tolerance.
    Converged = 0,
    /// The iteration limit was reached before convergence.
    MaxIterations = 1,
    /// The cost or Jacobian became NaN/∞ (overflowing data, degenerate widths).
    NonFinite = 2,
    /// The requested position is NaN or farther than 2 bins from every bin centre.
    OutOfRange = 3,
    /// Fewer finite data points in the ROI than parameters + 1.
    InsufficientData = 4,
    /// More peaks merged into one job than the configured maximum.
    TooManyPeaks = 5,
    /// No peak to fit: the ROI data are constant (e.g. a frame without counts) or the peak's
    /// area collapsed onto 0, where its centre and widths mean nothing.
    NoPeak = 6,
    /// The fit stopped with a parameter on a limit of MIDAS's starting box (background floor or
    /// ceiling, area cap, centre or width cap; not the physical floors area ≥ 0 and the width
    /// floors): the numbers and errors are those of a constrained fit, typically of a peak
    /// wider than its ROI (`FitROIAuto` or more `FitROIPadding`).
    AtBound = 7,
}

impl FitStatus {
    /// Only a converged fit yields numbers; every other status comes with a NaN row.
    pub fn is_ok(self) -> bool {
        self == FitStatus::Converged
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            FitStatus::Converged => "converged",
            FitStatus::MaxIterations => "max_iterations",
            FitStatus::NonFinite => "non_finite",
            FitStatus::OutOfRange => "out_of_range",
            FitStatus::InsufficientData => "insufficient_data",
            FitStatus::TooManyPeaks => "too_many_peaks",
            FitStatus::NoPeak => "no_peak",
            FitStatus::AtBound => "at_bound",
        }
    }
}

/// Stopping rules of the Levenberg–Marquardt loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmOptions {
    /// Accepted steps before giving up with `MaxIterations`.
    pub max_iterations: usize,
    /// Converged when an accepted step lowers the cost by less than `ftol` relatively.
    pub ftol: f64,
    /// Converged when every parameter moves by less than `xtol·(|p| + xtol)`.
    pub xtol: f64,
    /// Converged when the last `stall_window` accepted steps together lowered the cost by less
    /// than `stall_ftol` relatively (a window of 0 disables the test).
    pub stall_window: usize,
    /// See `stall_window`.
    pub stall_ftol: f64,
}

impl Default for LmOptions {
    fn default() -> Self {
        LmOptions {
            // MIDAS allows 500·nParams objective evaluations; LM steps are worth far more each.
            max_iterations: 500,
            // 1e-8 relative in SSR is ~1e-8·n·σ², far below one unit of χ²; tighter values only
            // make degenerate jobs (auto-detect candidates with area → 0) crawl.
            ftol: 1e-8,
            xtol: 1e-8,
            // Well-posed fits converge quadratically and stop on `ftol` long before. 1e-4 of the
            // cost is ~1e-4·n units of χ² (≤ 0.05 for ROIs up to 500 points).
            stall_window: 10,
            stall_ftol: 1e-4,
        }
    }
}

/// Result of a least-squares fit.
#[derive(Debug, Clone, PartialEq)]
pub struct LmResult {
    pub params: Vec<f64>,
    /// Sum of squared residuals at `params`.
    pub ssr: f64,
    /// Accepted steps taken.
    pub iterations: usize,
    pub status: FitStatus,
    /// Standard errors `sqrt(diag(covariance))`; NaN for a held parameter (see `finish`).
    pub std_errors: Vec<f64>,
    /// Sandwich covariance (see `finish`), row-major `n_params × n_params`; empty when JᵀJ is
    /// not finite.
    pub covariance: Vec<f64>,
}

/// Above this damping no step can lower the cost any more: the point is a (numerical) minimum.
const LAMBDA_MAX: f64 = 1e16;

/// Cap of the Marquardt scale relative to the current `(JᵀJ)_ii`. 100 let a peak of a random
/// test set collapse to area 0; 1000 let the degenerate job of the fit tests crawl for 475 steps.
const STALE_SCALE: f64 = 300.0;

/// Marquardt scale of one parameter: the running maximum of its `(JᵀJ)_ii`, capped at
/// [`STALE_SCALE`] times the current value. A parameter without curvature now (the centre of a
/// peak whose area reached 0) keeps its running maximum and so stays damped.
fn marquardt_scale(running: f64, current: f64) -> f64 {
    let scale = running.max(current);
    let scale = if current > 0.0 {
        scale.min(STALE_SCALE * current)
    } else {
        scale
    };
    scale.max(1e-300)
}

/// Cost, JᵀJ (row-major) and Jᵀr at `p`.
struct Normal {
    cost: f64,
    jtj: Vec<f64>,
    jtr: Vec<f64>,
}

fn normal_equations(prob: &impl Residuals, p: &[f64]) -> Normal {
    let n = prob.n_params();
    let mut jtj = vec![0.0; n * n];
    let mut jtr = vec![0.0; n];
    let mut cost = 0.0;
    prob.for_each_row(p, |r, grad, coupled| {
        cost += r * r;
        for (j, &g) in jtr.iter_mut().zip(grad) {
            *j += g * r;
        }
        for (k, ra) in coupled.iter().enumerate() {
            for a in ra.clone() {
                let ga = grad[a];
                if ga == 0.0 {
                    continue;
                }
                // Upper triangle only (the ranges increase); mirrored below.
                let row = &mut jtj[a * n..(a + 1) * n];
                add_scaled(&mut row[a..ra.end], ga, &grad[a..ra.end]);
                for rb in &coupled[k + 1..] {
                    add_scaled(&mut row[rb.clone()], ga, &grad[rb.clone()]);
                }
            }
        }
    });
    for a in 0..n {
        for b in 0..a {
            jtj[a * n + b] = jtj[b * n + a];
        }
    }
    Normal { cost, jtj, jtr }
}

/// In-place Cholesky factorisation of a symmetric positive-definite `n × n` matrix (lower factor).
/// `Err(j)` when the matrix is not numerically positive definite: column `j`'s pivot is not > 0.
fn cholesky(a: &mut [f64], n: usize) -> std::result::Result<(), usize> {
    for j in 0..n {
        let (row_j, below) = a[j * n..].split_at_mut(n);
        let d = minus_dot(row_j[j], &row_j[..j], &row_j[..j]);
        if !(d > 0.0 && d.is_finite()) {
            return Err(j);
        }
        let d = d.sqrt();
        row_j[j] = d;
        let lj = &row_j[..j];
        for row_i in below.chunks_exact_mut(n) {
            row_i[j] = minus_dot(row_i[j], &row_i[..j], lj) / d;
        }
    }
    Ok(())
}

/// `init − Σ a_k b_k`, subtracting term by term in index order (as the GPU port).
fn minus_dot(init: f64, a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(init, |s, (x, y)| s - x * y)
}

/// Solve L Lᵀ x = b with the factor from [`cholesky`]; `b` is overwritten with x.
fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// Inverse of a symmetric positive-definite matrix; `Err(j)` when singular, `j` the column
/// whose Cholesky pivot failed.
fn spd_inverse(a: &[f64], n: usize) -> std::result::Result<Vec<f64>, usize> {
    // Equilibrate first: the parameters differ by many orders of magnitude in scale.
    let scale: Vec<f64> = (0..n)
        .map(|i| {
            let d = a[i * n + i];
            if d > 0.0 {
                1.0 / d.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    let mut l: Vec<f64> = (0..n * n)
        .map(|k| a[k] * scale[k / n] * scale[k % n])
        .collect();
    cholesky(&mut l, n)?;
    let mut inv = vec![0.0; n * n];
    let mut col = vec![0.0; n];
    for j in 0..n {
        col.iter_mut().for_each(|c| *c = 0.0);
        col[j] = 1.0;
        cholesky_solve(&l, n, &mut col);
        for i in 0..n {
            inv[i * n + j] = col[i] * scale[i] * scale[j];
        }
    }
    Ok(inv)
}

/// A parameter on a bound whose descent direction (−gradient) points out of the box is frozen.
fn free_mask(p: &[f64], g: &[f64], lower: &[f64], upper: &[f64]) -> Vec<bool> {
    (0..p.len())
        .map(|i| !((p[i] <= lower[i] && g[i] > 0.0) || (p[i] >= upper[i] && g[i] < 0.0)))
        .collect()
}

/// Damped Gauss–Newton step restricted to the free parameters; None if the system is singular.
fn damped_step(nrm: &Normal, diag: &[f64], free: &[bool], lambda: f64) -> Option<Vec<f64>> {
    let n = free.len();
    let idx: Vec<usize> = (0..n).filter(|&i| free[i]).collect();
    let m = idx.len();
    if m == 0 {
        return None;
    }
    let mut a = vec![0.0; m * m];
    let mut b = vec![0.0; m];
    for (r, &i) in idx.iter().enumerate() {
        for (c, &j) in idx.iter().enumerate() {
            a[r * m + c] = nrm.jtj[i * n + j];
        }
        a[r * m + r] += lambda * diag[i];
        b[r] = -nrm.jtr[i];
    }
    if cholesky(&mut a, m).is_err() {
        return None;
    }
    cholesky_solve(&a, m, &mut b);
    let mut step = vec![0.0; n];
    for (r, &i) in idx.iter().enumerate() {
        step[i] = b[r];
    }
    Some(step)
}

fn project(p: &[f64], step: &[f64], lower: &[f64], upper: &[f64]) -> Vec<f64> {
    (0..p.len())
        .map(|i| (p[i] + step[i]).max(lower[i]).min(upper[i]))
        .collect()
}

fn small_step(old: &[f64], new: &[f64], xtol: f64) -> bool {
    old.iter()
        .zip(new)
        .all(|(a, b)| (b - a).abs() <= xtol * (a.abs() + xtol))
}

/// Minimise Σ r_i(p)² over the box `[lower, upper]` from `start` (clamped into the box).
/// `start`, `lower`, `upper` must have `prob.n_params()` entries; otherwise the result is
/// `NonFinite` with NaN parameters rather than a panic.
pub fn levenberg_marquardt(
    prob: &impl Residuals,
    start: &[f64],
    lower: &[f64],
    upper: &[f64],
    opts: &LmOptions,
) -> LmResult {
    let n = prob.n_params();
    if start.len() != n || lower.len() != n || upper.len() != n {
        return failed_result(n, FitStatus::NonFinite, 0);
    }
    let mut p: Vec<f64> = (0..n)
        .map(|i| start[i].max(lower[i]).min(upper[i]))
        .collect();
    let mut nrm = normal_equations(prob, &p);
    if !finite_normal(&nrm) || p.iter().any(|v| !v.is_finite()) {
        return failed_result(n, FitStatus::NonFinite, 0);
    }
    let mut diag: Vec<f64> = (0..n).map(|i| nrm.jtj[i * n + i]).collect();
    let mut lambda = 1e-3;
    let mut status = FitStatus::MaxIterations;
    let mut iterations = 0;
    // Cost after each of the last `stall_window` accepted steps, step k in slot k % window
    // (every slot starts with the initial cost, which step `window` is compared with).
    let window = opts.stall_window;
    let mut recent = vec![nrm.cost; window];

    'outer: while iterations < opts.max_iterations {
        for (i, d) in diag.iter_mut().enumerate() {
            *d = marquardt_scale(*d, nrm.jtj[i * n + i]);
        }
        let free = free_mask(&p, &nrm.jtr, lower, upper);
        loop {
            let trial =
                damped_step(&nrm, &diag, &free, lambda).map(|s| project(&p, &s, lower, upper));
            let cost = trial.as_ref().map_or(f64::INFINITY, |t| prob.cost(t));
            if let (Some(t), true) = (trial, cost < nrm.cost) {
                iterations += 1;
                lambda = (lambda / 3.0).max(1e-12);
                let rel_drop = (nrm.cost - cost) / nrm.cost.max(1e-300);
                let tiny_step = small_step(&p, &t, opts.xtol);
                p = t;
                nrm = normal_equations(prob, &p);
                if !finite_normal(&nrm) {
                    return failed_result(n, FitStatus::NonFinite, iterations);
                }
                let stalled = window > 0 && {
                    let before = std::mem::replace(&mut recent[iterations % window], nrm.cost);
                    iterations >= window && before - nrm.cost < opts.stall_ftol * before
                };
                if rel_drop <= opts.ftol || tiny_step || nrm.cost == 0.0 || stalled {
                    status = FitStatus::Converged;
                    break 'outer;
                }
                break;
            }
            lambda *= 4.0;
            if lambda > LAMBDA_MAX {
                // No damped step lowers the cost: p is a minimum to working precision.
                status = FitStatus::Converged;
                break 'outer;
            }
        }
    }
    finish(prob, p, nrm, iterations, status, lower, upper)
}

fn finite_normal(nrm: &Normal) -> bool {
    nrm.cost.is_finite() && nrm.jtj.iter().chain(&nrm.jtr).all(|v| v.is_finite())
}

/// Sandwich covariance and standard errors at the final point: `A⁻¹ (Σ vᵢ gᵢ gᵢᵀ) A⁻¹` with
/// `A = JᵀJ` and `vᵢ` the variance of point i.
///
/// The objective is MIDAS's unweighted Σ r², but lineout noise is not uniform (Poisson: larger
/// on a peak than on its background), so the textbook `A⁻¹ · SSR/(n − p)` averages the quiet
/// background into the variance of the parameters the peak decides: centre errors came out 2–2.6×
/// too small. The sandwich puts each point's own variance in:
///
/// * With a noise model ([`Residuals::noise_levels`], all levels positive), `vᵢ = g · levelᵢ`
///   with `g = Σ rᵢ²/levelᵢ / (n − p_free)`, the reduced χ² a Poisson-weighted fit would report.
///   The factor is pooled over every point of the ROI, so it is as well determined as the fit.
/// * Otherwise HC2, `vᵢ = rᵢ²/(1 − hᵢ)` with the leverages `hᵢ = gᵢᵀA⁻¹gᵢ`: no assumption about
///   the noise, but the few points that decide a narrow peak's centre each bring one noisy
///   χ²₁ draw, and residuals there shrink more than 1 − hᵢ restores. Over Poisson repeats its
///   centre errors were 1.1–1.25× small, for peaks of FWHM 2 bins 1.9×; with the model all
///   centre and area errors are within 0.85–1.05 of the scatter.
///
/// A parameter that ended on a bound is held there: its rows and columns of the covariance are
/// 0 and its standard error is NaN (the linearised error of a parameter on its bound means
/// nothing). Half of all fits of Gaussian peaks end with `gam` on its floor (η = 0); counting
/// `gam` as free there let area errors absorb a Lorentzian freedom the fit did not have, and
/// came out 1.3–1.8× the scatter of the areas. A parameter the data do not determine (JᵀJ
/// singular: its Cholesky pivot fails) is held alike, and the others keep their errors.
fn finish(
    prob: &impl Residuals,
    p: Vec<f64>,
    nrm: Normal,
    iterations: usize,
    status: FitStatus,
    lower: &[f64],
    upper: &[f64],
) -> LmResult {
    let n = p.len();
    let mut pinned: Vec<bool> = (0..n)
        .map(|i| (p[i] <= lower[i] || p[i] >= upper[i]) && prob.held_at_bound(i))
        .collect();
    let inverse = free_inverse(&nrm.jtj, n, &mut pinned);
    let n_free = pinned.iter().filter(|&&b| !b).count();
    let levels = prob
        .noise_levels(&p)
        .filter(|l| l.iter().all(|&v| v > 0.0 && v.is_finite()));
    let covariance: Vec<f64> = inverse
        .map(|inv| {
            let meat = match &levels {
                Some(l) => modelled_outer(prob, &p, l, n_free),
                None => residual_outer(prob, &p, &inv),
            };
            let half = mat_mul(&inv, &meat, n);
            mat_mul(&half, &inv, n)
        })
        .unwrap_or_default();
    let std_errors = (0..n)
        .map(|i| match covariance.get(i * n + i) {
            // A free parameter's variance of 0 (a width floor where the model does not move
            // with it) is no error of 0: NaN, as for a singular covariance.
            Some(&v) if !pinned[i] && v > 0.0 => v.sqrt(),
            _ => f64::NAN,
        })
        .collect();
    LmResult {
        params: p,
        ssr: nrm.cost,
        iterations,
        status,
        std_errors,
        covariance,
    }
}

/// `g · Σ levelᵢ gᵢ gᵢᵀ` (row-major n × n, coupled entries only) with
/// `g = Σ rᵢ²/levelᵢ / max(n_points − n_free, 1)`.
fn modelled_outer(prob: &impl Residuals, p: &[f64], levels: &[f64], n_free: usize) -> Vec<f64> {
    let n = p.len();
    let mut out = vec![0.0; n * n];
    let (mut i, mut chi2) = (0, 0.0);
    prob.for_each_row(p, |r, grad, coupled| {
        let level = levels.get(i).copied().unwrap_or(f64::NAN);
        i += 1;
        chi2 += r * r / level;
        for a in coupled.iter().flat_map(Clone::clone) {
            let ga = level * grad[a];
            if ga == 0.0 {
                continue;
            }
            let row = &mut out[a * n..(a + 1) * n];
            for rb in coupled {
                add_scaled(&mut row[rb.clone()], ga, &grad[rb.clone()]);
            }
        }
    });
    let gain = chi2 / i.saturating_sub(n_free).max(1) as f64;
    out.iter_mut().for_each(|v| *v *= gain);
    out
}

/// Inverse of the `n × n` SPD matrix `a` restricted to the parameters not `pinned`, spread back to
/// `n × n` with zero rows and columns for the pinned ones. Where that block is singular, the
/// parameter whose Cholesky pivot failed is pinned too (flagged in `pinned`) and the rest inverted
/// again: a listed peak that is not there (area 0) leaves its centre and widths without
/// curvature, and every other peak of its job lost its errors with it (half the fits of a ring
/// beside such a position). None only for a non-finite `a`.
fn free_inverse(a: &[f64], n: usize, pinned: &mut [bool]) -> Option<Vec<f64>> {
    if !a.iter().all(|v| v.is_finite()) {
        return None;
    }
    let (free, inv) = loop {
        let free: Vec<usize> = (0..n).filter(|&i| !pinned[i]).collect();
        let m = free.len();
        let block: Vec<f64> = free
            .iter()
            .flat_map(|&i| free.iter().map(move |&j| a[i * n + j]))
            .collect();
        match spd_inverse(&block, m) {
            Ok(inv) => break (free, inv),
            Err(j) => pinned[free[j]] = true,
        }
    };
    let m = free.len();
    let mut out = vec![0.0; n * n];
    for (r, &i) in free.iter().enumerate() {
        for (c, &j) in free.iter().enumerate() {
            out[i * n + j] = inv[r * m + c];
        }
    }
    Some(out)
}

/// Only coupled entries are used, as in JᵀJ (see [`Residuals`]).
fn residual_outer(prob: &impl Residuals, p: &[f64], inv: &[f64]) -> Vec<f64> {
    let n = p.len();
    let mut out = vec![0.0; n * n];
    prob.for_each_row(p, |r, grad, coupled| {
        let mut h = 0.0;
        for a in coupled.iter().flat_map(Clone::clone) {
            let inv_row = &inv[a * n..(a + 1) * n];
            let mut row = 0.0;
            for rb in coupled {
                row += dot(&inv_row[rb.clone()], &grad[rb.clone()]);
            }
            h += grad[a] * row;
        }
        // A point that alone fixes a parameter (h → 1) carries no residual information.
        let shrink = (1.0 - h).max(1e-3);
        let r2 = r * r / shrink;
        for a in coupled.iter().flat_map(Clone::clone) {
            let ga = r2 * grad[a];
            if ga == 0.0 {
                continue;
            }
            let row = &mut out[a * n..(a + 1) * n];
            for rb in coupled {
                add_scaled(&mut row[rb.clone()], ga, &grad[rb.clone()]);
            }
        }
    });
    out
}

/// `dst += s · src`, element by element.
fn add_scaled(dst: &mut [f64], s: f64, src: &[f64]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += s * v;
    }
}

/// `Σ a_i b_i`, summed in index order (the GPU port sums in the same order).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0.0, |s, (x, y)| s + x * y)
}

fn mat_mul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

fn failed_result(n: usize, status: FitStatus, iterations: usize) -> LmResult {
    LmResult {
        params: vec![f64::NAN; n],
        ssr: f64::NAN,
        iterations,
        status,
        std_errors: vec![f64::NAN; n],
        covariance: Vec::new(),
    }
}
