//! Peak fitting on lineouts (spec §6): TCH pseudo-Voigt peaks on a 2-term Chebyshev background,
//! fitted by a bounded Levenberg–Marquardt with analytic Jacobians, at given positions or after
//! SNIP + Savitzky–Golay auto-detection; plus the height-normalised pV of the per-η fits (§6.4).
//!
//! Rows follow MIDAS `fit.bin`: `[area, center, sig, gam, fwhm, eta_mix, reduced chi2]` with centre
//! and FWHM in x units. Unlike MIDAS (which leaves zeros), a peak whose fit did not converge gets a
//! NaN row and a non-`Converged` [`FitStatus`], so a failure can never pass for a result.
//!
//! Parallelism: rayon over curves × jobs on the caller's pool; nothing here builds a pool.

mod detect;
mod lm;
mod model;
mod pv;
mod roi;

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{Error, Result};

pub use detect::{
    binomial_smooth5, detect_candidates, fit_auto, fit_auto_many, noise_sigma, savgol_smooth7,
    snip_background, AutoFit, AutoOptions, DETECTION_SIGMAS,
};
pub use lm::{levenberg_marquardt, FitStatus, LmOptions, LmResult, Residuals};
pub use model::{
    c_erfc, chebyshev_x, model_gradient, model_value, n_params, pseudo_voigt, tch, tch_terms,
    widths_from_fwhm, EdgeTerms, PeakTerms, TchTerms, N_BACKGROUND, PARAMS_PER_PEAK,
};
pub use pv::{fit_pv, fit_pv_many, pv_height, pv_height_gradient, PvBounds, PvFit, PV_PARAMS};
pub use roi::{
    bin_size, edge_background, initial_guess, plan_jobs, snap_to_bin, Job, JobPeak, Starts,
    NARROW_START_BINS,
};

/// Values per peak row.
pub const ROW_LEN: usize = 7;
/// Column indices of a row.
pub const COL_AREA: usize = 0;
pub const COL_CENTER: usize = 1;
pub const COL_SIG: usize = 2;
pub const COL_GAM: usize = 3;
pub const COL_FWHM: usize = 4;
pub const COL_ETA: usize = 5;
pub const COL_CHI2: usize = 6;

/// How peaks at given positions are fitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// `FitROIPadding`: ROI half-width in bins (MIDAS default 20).
    pub roi_padding: usize,
    /// `FitROIAuto`: padding = max(15, 1.5 · largest estimated FWHM in bins).
    pub auto_roi: bool,
    /// Merged ROIs with more peaks than this are cut into jobs of at most this many at their
    /// widest gaps ([`roi::plan_jobs`]): the normal equations grow as (4·peaks)³.
    pub max_peaks_per_job: usize,
    /// Model each point as the mean of the profile over its bin (edges halfway between bin
    /// centres), as integration makes a lineout, rather than MIDAS's value at the bin centre.
    /// The centre-sampled model is the bin average only for peaks much wider than a bin: it
    /// widens FWHMs by ~Δ²/(12σ²) relatively (2 % at FWHM 3 bins), and for peaks of FWHM ≲ 2
    /// bins it biases FWHM by several standard errors and miscalibrates the errors.
    pub bin_average: bool,
    pub lm: LmOptions,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            roi_padding: 20,
            auto_roi: false,
            max_peaks_per_job: 32,
            bin_average: true,
            lm: LmOptions::default(),
        }
    }
}

/// One fitted peak: the MIDAS row, its standard errors (χ² column: NaN) and how the fit ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakFit {
    pub values: [f64; ROW_LEN],
    pub errors: [f64; ROW_LEN],
    pub status: FitStatus,
    pub iterations: usize,
}

impl PeakFit {
    /// A NaN row with a failure status.
    pub fn failed(status: FitStatus, iterations: usize) -> PeakFit {
        PeakFit {
            values: [f64::NAN; ROW_LEN],
            errors: [f64::NAN; ROW_LEN],
            status,
            iterations,
        }
    }

    pub fn area(&self) -> f64 {
        self.values[COL_AREA]
    }
    pub fn center(&self) -> f64 {
        self.values[COL_CENTER]
    }
    pub fn fwhm(&self) -> f64 {
        self.values[COL_FWHM]
    }
    /// Fitted with the centre-sampled model (`bin_average` off), narrower than
    /// [`detect::SPIKE_FWHM_BINS`] of a `bin` with an area its errors do not bound (NaN, or an
    /// error above the area itself): see there.
    pub(crate) fn is_spike(&self, bin: f64, bin_average: bool) -> bool {
        !bin_average
            && self.fwhm() < detect::SPIKE_FWHM_BINS * bin
            && !(self.errors[COL_AREA] <= self.area())
    }
}

/// Fits of many curves, flat for zero-copy hand-over: `values`/`errors` are
/// `(n_curves, n_peaks, 7)` row-major, `status`/`iterations` are `(n_curves, n_peaks)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FitTable {
    pub n_curves: usize,
    pub n_peaks: usize,
    pub values: Vec<f64>,
    pub errors: Vec<f64>,
    /// [`FitStatus::code`] of each peak.
    pub status: Vec<u8>,
    pub iterations: Vec<u32>,
}

impl FitTable {
    fn from_rows(rows: Vec<Vec<PeakFit>>, n_peaks: usize) -> FitTable {
        let n_curves = rows.len();
        let mut t = FitTable {
            n_curves,
            n_peaks,
            values: Vec::with_capacity(n_curves * n_peaks * ROW_LEN),
            errors: Vec::with_capacity(n_curves * n_peaks * ROW_LEN),
            status: Vec::with_capacity(n_curves * n_peaks),
            iterations: Vec::with_capacity(n_curves * n_peaks),
        };
        for p in rows.iter().flatten() {
            t.values.extend_from_slice(&p.values);
            t.errors.extend_from_slice(&p.errors);
            t.status.push(p.status.code());
            t.iterations
                .push(u32::try_from(p.iterations).unwrap_or(u32::MAX));
        }
        t
    }
}

/// x must be finite and strictly increasing (bin centres) with at least 2 points: the one axis
/// check of every fit entry point (given positions, auto-detection, ROI plans, pV fits).
/// Returns the axis bin size.
fn validate_axis(x: &[f64]) -> Result<f64> {
    if x.len() < 2 {
        return Err(Error::Invalid(format!(
            "peak fit: x axis needs at least 2 bin centres, got {}",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "peak fit: x[{i}] = {} is not finite",
            x[i]
        )));
    }
    if let Some(i) = x.windows(2).position(|w| w[1] <= w[0]) {
        return Err(Error::Invalid(format!(
            "peak fit: x must be strictly increasing, got x[{}] = {} >= x[{}] = {}",
            i,
            x[i],
            i + 1,
            x[i + 1]
        )));
    }
    Ok(bin_size(x))
}

/// The jobs [`fit_many`] fits for `positions` on axis `x` with a fixed ROI padding, and the axis
/// bin size: what the GPU fitter runs, so both backends fit exactly the same ROIs.
pub fn plan_fixed_rois(
    x: &[f64],
    positions: &[f64],
    padding: usize,
    max_peaks_per_job: usize,
) -> Result<(f64, Vec<Job>)> {
    let bin = validate_axis(x)?;
    Ok((
        bin,
        plan_jobs(x, &[], positions, padding, false, max_peaks_per_job),
    ))
}

fn validate_options(opts: &FitOptions) -> Result<()> {
    if opts.max_peaks_per_job == 0 || opts.lm.max_iterations == 0 {
        return Err(Error::Invalid(
            "peak fit: max_peaks_per_job and max_iterations must be >= 1, got 0".into(),
        ));
    }
    Ok(())
}

/// Fit peaks near `positions` (x units) in one lineout `y` (same length as `x`). Returns one
/// [`PeakFit`] per position, in the order given. Positions that snap to no bin get `OutOfRange`.
pub fn fit_curve(
    x: &[f64],
    y: &[f64],
    positions: &[f64],
    opts: &FitOptions,
) -> Result<Vec<PeakFit>> {
    let bin = validate_axis(x)?;
    validate_options(opts)?;
    if y.len() != x.len() {
        return Err(Error::shape("peak fit: lineout length", x.len(), y.len()));
    }
    Ok(fit_curve_checked(
        x,
        y,
        &[],
        positions,
        bin,
        opts,
        Positions::Given,
    ))
}

/// Where the positions of [`fit_curve_checked`] come from.
#[derive(Clone, Copy)]
pub(crate) enum Positions<'a> {
    /// The caller's: each job is fitted as planned.
    Given,
    /// Auto-detection's: every one stands well above the noise, so a merged job in which some
    /// fail is fitted again in parts ([`fit_job_or_parts`]). `earlier`: the fits of a first part
    /// of the positions (same slots), which the rest extend: a job planned exactly as for those
    /// alone, with none of the new positions, keeps its earlier fits (the same bits a new fit
    /// would give), so positions added in one place refit only the jobs they join.
    Detected { earlier: Option<&'a [PeakFit]> },
}

/// [`fit_curve`] on a checked axis. `offset` (same length as `y`, or empty for none) is what was
/// subtracted from the counts before `y` (auto-detection's background): it carries noise too.
fn fit_curve_checked(
    x: &[f64],
    y: &[f64],
    offset: &[f64],
    positions: &[f64],
    bin: f64,
    opts: &FitOptions,
    source: Positions,
) -> Vec<PeakFit> {
    let plan = |positions: &[f64]| {
        plan_jobs(
            x,
            y,
            positions,
            opts.roi_padding,
            opts.auto_roi,
            opts.max_peaks_per_job,
        )
    };
    let jobs = plan(positions);
    let earlier = match source {
        Positions::Detected { earlier } => earlier,
        Positions::Given => None,
    };
    let kept_jobs = earlier.map_or_else(Vec::new, |fits| plan(&positions[..fits.len()]));
    let fitted: Vec<Vec<(usize, PeakFit)>> = jobs
        .par_iter()
        .map(|job| match (source, earlier) {
            (_, Some(fits)) if kept_jobs.contains(job) => {
                job.peaks.iter().map(|p| (p.slot, fits[p.slot])).collect()
            }
            (Positions::Detected { .. }, _) => {
                let model = (bin, opts.bin_average);
                fit_job_or_parts(job, model, positions, SPLIT_DEPTH, &|part: &Job| {
                    fit_job(x, y, offset, part, bin, opts)
                })
            }
            (Positions::Given, _) => fit_job(x, y, offset, job, bin, opts),
        })
        .collect();
    let mut out = vec![PeakFit::failed(FitStatus::OutOfRange, 0); positions.len()];
    for (slot, fit) in fitted.into_iter().flatten() {
        if let Some(o) = out.get_mut(slot) {
            *o = fit;
        }
    }
    out
}

/// Fit the same `positions` in `n_curves` lineouts `ys` (row-major `(n_curves, x.len())`), in
/// parallel over curves × jobs on the current rayon pool.
pub fn fit_many(x: &[f64], ys: &[f64], positions: &[f64], opts: &FitOptions) -> Result<FitTable> {
    let bin = validate_axis(x)?;
    validate_options(opts)?;
    if !ys.len().is_multiple_of(x.len()) {
        return Err(Error::shape(
            "peak fit: lineouts (n_curves × n_x)",
            format!("a multiple of n_x = {}", x.len()),
            ys.len(),
        ));
    }
    let rows: Vec<Vec<PeakFit>> = ys
        .par_chunks(x.len())
        .map(|y| fit_curve_checked(x, y, &[], positions, bin, opts, Positions::Given))
        .collect();
    Ok(FitTable::from_rows(rows, positions.len()))
}

/// The least-squares problem of one job: model (§6.1) minus data over the ROI's finite points.
///
/// Every peak is evaluated at every point (the MIDAS model of a merged job), but a peak's
/// parameters are coupled (see [`Residuals`]) only within its window: its own planned ROI,
/// widened to ±[`COUPLING_FWHMS`]·Γ around its current centre when the peak is that broad. Far
/// from its window a peak contributes only tails, whose products with other peaks' gradients
/// are below 1e-4 of the JᵀJ entries kept; a one-peak job's window is the whole ROI.
struct JobProblem<'a> {
    x: &'a [f64],
    y: &'a [f64],
    x_lo: f64,
    x_hi: f64,
    n_params: usize,
    /// Each peak's planned ROI as a half-open range of indices into `x`.
    windows: Vec<(usize, usize)>,
    /// Counts subtracted from `y` before the fit (auto-detection's SNIP background), or empty:
    /// the noise of point i goes with `model_i + offset_i` (see [`Residuals::noise_levels`]).
    offset: Vec<f64>,
    /// Bin edges `(lo, hi)` of each point when peaks are averaged over bins
    /// ([`FitOptions::bin_average`]); empty for MIDAS's centre-sampled model.
    edges: Vec<(f64, f64)>,
}

/// Edges `(lo, hi)` of the bins of the ROI axis `xr`: halfway between neighbouring centres, the
/// outer edges of the first and last bin mirrored (`bin` for a one-point ROI).
pub fn bin_edges(xr: &[f64], bin: f64) -> Vec<(f64, f64)> {
    let m = xr.len();
    (0..m)
        .map(|j| {
            let lo = if j > 0 {
                0.5 * (xr[j - 1] + xr[j])
            } else if m > 1 {
                xr[0] - 0.5 * (xr[1] - xr[0])
            } else {
                xr[0] - 0.5 * bin
            };
            let hi = if j + 1 < m {
                0.5 * (xr[j] + xr[j + 1])
            } else if m > 1 {
                xr[m - 1] + 0.5 * (xr[m - 1] - xr[m - 2])
            } else {
                xr[0] + 0.5 * bin
            };
            (lo, hi)
        })
        .collect()
}

/// Edge terms of one peak along the points of a job, in order: a bin's lower edge is the upper
/// edge of the bin before it (same value, so the same terms) unless a NaN bin was left out.
struct EdgeCursor {
    at: f64,
    terms: EdgeTerms,
}

impl EdgeCursor {
    fn new() -> EdgeCursor {
        EdgeCursor {
            at: f64::NAN,
            terms: EdgeTerms {
                d: 0.0,
                g: 0.0,
                l: 0.0,
                tail_g: 0.0,
                tail_l: 0.0,
            },
        }
    }

    /// Terms at the edges `(lo, hi)` of the next bin.
    #[inline]
    fn next(&mut self, t: &PeakTerms, (lo, hi): (f64, f64)) -> (EdgeTerms, EdgeTerms) {
        let lo_terms = if lo == self.at {
            self.terms
        } else {
            t.edge(lo)
        };
        let hi_terms = t.edge(hi);
        self.at = hi;
        self.terms = hi_terms;
        (lo_terms, hi_terms)
    }
}

/// Half-width, in FWHMs, of the stretch around a peak's centre where it is always coupled: there
/// a Lorentzian falls to 1/401 of its top.
const COUPLING_FWHMS: f64 = 10.0;

impl JobProblem<'_> {
    fn peak_terms(&self, p: &[f64]) -> Vec<PeakTerms> {
        p.get(N_BACKGROUND..)
            .unwrap_or_default()
            .chunks_exact(PARAMS_PER_PEAK)
            .map(PeakTerms::new)
            .collect()
    }

    /// Model at every point, in order (bin means of the peaks, or their values at the centres).
    fn model_values(&self, terms: &[PeakTerms], p: &[f64]) -> Vec<f64> {
        let mut cursors: Vec<EdgeCursor> = terms.iter().map(|_| EdgeCursor::new()).collect();
        self.x
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let mut m = p[0] + p[1] * chebyshev_x(x, self.x_lo, self.x_hi);
                match self.edges.get(i) {
                    Some(&(lo, hi)) => {
                        let inv_width = 1.0 / (hi - lo);
                        for (t, cur) in terms.iter().zip(&mut cursors) {
                            let (a, b) = cur.next(t, (lo, hi));
                            m += t.area * t.bin_mean(&a, &b, inv_width);
                        }
                    }
                    None => {
                        for t in terms {
                            m += t.area * t.profile(x);
                        }
                    }
                }
                m
            })
            .collect()
    }
}

impl Residuals for JobProblem<'_> {
    fn n_params(&self) -> usize {
        self.n_params
    }

    fn cost(&self, p: &[f64]) -> f64 {
        let terms = self.peak_terms(p);
        let mut cost = 0.0;
        for (m, &y) in self.model_values(&terms, p).into_iter().zip(self.y) {
            let r = m - y;
            cost += r * r;
        }
        cost
    }

    /// Lineouts are integrated counts, Poisson or scaled by one factor (a mean over pixels): the
    /// variance of a point goes with its expected value, the model plus what was subtracted.
    /// A data set that breaks this (e.g. background already subtracted, so the level is ≤ 0
    /// somewhere) shows it by a level ≤ 0, and the covariance falls back to HC2.
    fn noise_levels(&self, p: &[f64]) -> Option<Vec<f64>> {
        let terms = self.peak_terms(p);
        let mut levels = self.model_values(&terms, p);
        for (l, &o) in levels.iter_mut().zip(&self.offset) {
            *l += o;
        }
        Some(levels)
    }

    /// The width floors (sig, gam) are counted free: a peak that is Gaussian or Lorentzian within
    /// its noise lands on one in a good part of the fits, and holding it there gave area errors
    /// 1.5–3× smaller than the scatter of those fits (they lose the other shape's tails), and
    /// η errors of 0. Every other bound ends the peak's fit as `AtBound` or `NoPeak`.
    fn held_at_bound(&self, i: usize) -> bool {
        i < N_BACKGROUND || (i - N_BACKGROUND) % PARAMS_PER_PEAK < 2
    }

    fn for_each_row(&self, p: &[f64], mut row: impl FnMut(f64, &[f64], &[Range<usize>])) {
        let terms = self.peak_terms(p);
        let windows: Vec<(usize, usize)> = terms
            .iter()
            .zip(&self.windows)
            .map(|(t, &(lo, hi))| {
                let reach = COUPLING_FWHMS * t.tch.gamma;
                let near_lo = self.x.partition_point(|&v| v < t.center - reach);
                let near_hi = self.x.partition_point(|&v| v <= t.center + reach);
                (lo.min(near_lo), hi.max(near_hi))
            })
            .collect();
        let mut grad = vec![0.0; self.n_params];
        let mut coupled = Vec::with_capacity(self.n_params);
        let mut cursors: Vec<EdgeCursor> = terms.iter().map(|_| EdgeCursor::new()).collect();
        for (i, (&x, &y)) in self.x.iter().zip(self.y).enumerate() {
            let xn = chebyshev_x(x, self.x_lo, self.x_hi);
            let mut m = p[0] + p[1] * xn;
            grad[0] = 1.0;
            grad[1] = xn;
            coupled.clear();
            coupled.push(0..N_BACKGROUND);
            let edges = self.edges.get(i).copied();
            for (k, (t, &(lo, hi))) in terms.iter().zip(&windows).enumerate() {
                let o = N_BACKGROUND + PARAMS_PER_PEAK * k;
                let g = &mut grad[o..o + PARAMS_PER_PEAK];
                m += t.area
                    * match edges {
                        Some(e) => {
                            let (a, b) = cursors[k].next(t, e);
                            t.bin_mean_gradient(&a, &b, 1.0 / (e.1 - e.0), g)
                        }
                        None => t.profile_gradient(x, g),
                    };
                if (lo..hi).contains(&i) {
                    // Extend the last run when it ends where this peak starts.
                    match coupled.last_mut() {
                        Some(last) if last.end == o => last.end = o + PARAMS_PER_PEAK,
                        _ => coupled.push(o..o + PARAMS_PER_PEAK),
                    }
                }
            }
            row(m - y, &grad, &coupled);
        }
    }
}

/// Fit one job; returns `(slot, fit)` for each of its peaks.
/// Times [`fit_job_or_parts`] cuts a job, at most (into 16 parts): cut at its widest gap, a job
/// whose gaps grow steadily was otherwise peeled one peak at a time, every part refitted (10×
/// the time on a lineout of single-bin spikes; 4× with this bound). Three cuts were too few for
/// a 9-ring chain on SNIP's bulge.
const SPLIT_DEPTH: usize = 4;

/// [`fit_job`], and where a peak of a merged job fails, the job again in two parts
/// ([`roi::halve`], each in turn the same way, [`SPLIT_DEPTH`] deep). A peak fails where it ends
/// `at_bound` or `no_peak`, converges wider than its whole ROI or as a spike
/// ([`PeakFit::is_spike`]), or moves from its start (`starts[slot]`) onto another peak of the
/// job, closer than 0.75 of the wider FWHM as [`detect`]'s distinct peaks are not (it left its
/// ring for the neighbour's, which then counts twice). A merged job has one straight
/// background: across a long chain of rings the lineout left by SNIP can bulge (the rings'
/// tails, a sloping background), and the whole chain failed, every peak lost, or one peak took
/// the bulge as a 100-bin-wide peak, where each part's background follows it.
///
/// A failed peak takes its fit in the parts where it fits there; a peak the whole job fitted
/// keeps that fit (in a part cut through a strong ring's tail its area came out 11–13 % high),
/// unless the whole job left its area without a bounding error (NaN, or above the area: a
/// near-spike beside it leaves the whole job's areas undetermined, up to 3× the true one at
/// RBinSize 2) and its part gives one.
fn fit_job_or_parts(
    job: &Job,
    (bin, bin_average): (f64, bool),
    starts: &[f64],
    cuts_left: usize,
    fit: &impl Fn(&Job) -> Vec<(usize, PeakFit)>,
) -> Vec<(usize, PeakFit)> {
    let whole = fit(job);
    let fitted = |slot: usize, f: &PeakFit, fits: &[(usize, PeakFit)]| {
        let roi = job.peaks.iter().find(|p| p.slot == slot);
        let moved = starts
            .get(slot)
            .is_some_and(|&s| (f.center() - s).abs() > 0.75 * f.fwhm());
        let collapsed = moved
            && fits.iter().any(|(other, g)| {
                *other != slot
                    && g.status.is_ok()
                    && (g.center() - f.center()).abs() < 0.75 * f.fwhm().max(g.fwhm())
            });
        f.status.is_ok()
            && !f.is_spike(bin, bin_average)
            && !collapsed
            && roi.is_none_or(|p| f.fwhm() <= (p.hi - p.lo + 1) as f64 * bin)
    };
    if cuts_left == 0 || whole.iter().all(|(slot, f)| fitted(*slot, f, &whole)) {
        return whole;
    }
    let Some((left, right)) = roi::halve(job) else {
        return whole;
    };
    let parts: Vec<(usize, PeakFit)> = [left, right]
        .iter()
        .flat_map(|part| fit_job_or_parts(part, (bin, bin_average), starts, cuts_left - 1, fit))
        .collect();
    whole
        .iter()
        .map(|&(slot, w)| {
            let part = parts.iter().find(|(s, _)| *s == slot).map(|(_, f)| *f);
            match part {
                Some(p) if fitted(slot, &p, &parts) => {
                    // An error above the area bounds nothing: a near-spike beside it left the
                    // whole job's area undetermined (held in the covariance, or 10³× the area).
                    let without_errors = |f: &PeakFit| !(f.errors[COL_AREA] <= f.area());
                    if !fitted(slot, &w, &whole) || (without_errors(&w) && !without_errors(&p)) {
                        (slot, p)
                    } else {
                        (slot, w)
                    }
                }
                _ => (slot, w),
            }
        })
        .collect()
}

fn fit_job(
    x: &[f64],
    y: &[f64],
    offset: &[f64],
    job: &Job,
    bin: f64,
    opts: &FitOptions,
) -> Vec<(usize, PeakFit)> {
    let fail_all = |status| {
        job.peaks
            .iter()
            .map(|p| (p.slot, PeakFit::failed(status, 0)))
            .collect()
    };
    if job.peaks.len() > opts.max_peaks_per_job {
        return fail_all(FitStatus::TooManyPeaks);
    }
    let (Some(xr), Some(yr)) = (x.get(job.lo..=job.hi), y.get(job.lo..=job.hi)) else {
        return fail_all(FitStatus::InsufficientData);
    };
    // NaN bins (e.g. fully masked) carry no information: fit the finite points only.
    let (fx, fy): (Vec<f64>, Vec<f64>) = xr
        .iter()
        .zip(yr)
        .filter(|(_, v)| v.is_finite())
        .map(|(&a, &b)| (a, b))
        .unzip();
    let offset: Vec<f64> = offset
        .get(job.lo..=job.hi)
        .map(|o| {
            o.iter()
                .zip(yr)
                .filter(|(_, v)| v.is_finite())
                .map(|(&a, _)| a)
                .collect()
        })
        .unwrap_or_default();
    let edges: Vec<(f64, f64)> = if opts.bin_average {
        bin_edges(xr, bin)
            .into_iter()
            .zip(yr)
            .filter(|(_, v)| v.is_finite())
            .map(|(e, _)| e)
            .collect()
    } else {
        Vec::new()
    };
    let np = n_params(job.peaks.len());
    if fx.len() <= np
        || job
            .peaks
            .iter()
            .any(|p| !y.get(p.index).is_some_and(|v| v.is_finite()))
    {
        // A peak whose own bin is NaN (masked gap over its top) cannot be placed or sized.
        return fail_all(FitStatus::InsufficientData);
    }
    if fy.iter().all(|&v| v == fy[0]) {
        return fail_all(FitStatus::NoPeak);
    }
    // Positions on the axis → indices among the finite points (x is increasing).
    let finite_index = |v: f64| fx.partition_point(|&f| f < v);
    let pks: Vec<usize> = job
        .peaks
        .iter()
        .map(|p| finite_index(x[p.index]).min(fx.len() - 1))
        .collect();
    let windows = job
        .peaks
        .iter()
        .map(|p| {
            let hi = x
                .get(p.hi)
                .map_or(fx.len(), |&v| fx.partition_point(|&f| f <= v));
            (x.get(p.lo).map_or(0, |&v| finite_index(v)), hi)
        })
        .collect();
    let mut s = initial_guess(&fx, &fy, &pks, bin, NARROW_START_BINS);
    let prob = JobProblem {
        x: &fx,
        y: &fy,
        x_lo: xr[0],
        x_hi: xr[xr.len() - 1],
        n_params: np,
        windows,
        offset,
        edges,
    };
    let mut res = levenberg_marquardt(&prob, &s.start, &s.lower, &s.upper, &opts.lm);
    if s.narrow {
        // A narrow peak: also from MIDAS's 2-bin start; the lower SSR wins (see Starts::narrow).
        let wide = initial_guess(&fx, &fy, &pks, bin, 2.0);
        let alt = levenberg_marquardt(&prob, &wide.start, &wide.lower, &wide.upper, &opts.lm);
        if alt.status == FitStatus::Converged
            && (res.status != FitStatus::Converged || alt.ssr < res.ssr)
        {
            (s, res) = (wide, alt);
        }
    }
    let (held, blended) = hold_centres(&s, job.peaks.len());
    if job.peaks.len() > 1 && (blended || suspect(&res, &s, &held, job.peaks.len())) {
        // Blended peaks can end in a wrong minimum marked converged: one peak collapsed onto a
        // spike, both on one line, or their widths traded. Refit with each centre held within
        // half the distance to its neighbours, release that fit into the full box; the lower
        // SSR wins, the refit on a tie ([`REFIT_TIE`]).
        let staged = levenberg_marquardt(&prob, &held.start, &held.lower, &held.upper, &opts.lm);
        if staged.status == FitStatus::Converged {
            let freed = levenberg_marquardt(&prob, &staged.params, &s.lower, &s.upper, &opts.lm);
            if freed.status == FitStatus::Converged
                && (res.status != FitStatus::Converged || freed.ssr <= res.ssr * (1.0 + REFIT_TIE))
            {
                res = freed;
            }
        }
    }
    let chi2 = res.ssr / (fx.len() - np).max(1) as f64;
    let own_range: Vec<Option<(f64, f64)>> = prob
        .windows
        .iter()
        .map(|&(lo, hi)| (hi > lo).then(|| (fx[lo], fx[hi - 1])))
        .collect();
    let verdict = bound_verdict(&res.params, &s.lower, &s.upper, &own_range);
    job.peaks
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let fit = match verdict[k] {
                Some(status) if res.status.is_ok() => PeakFit::failed(status, res.iterations),
                _ => peak_row(&res, k, chi2),
            };
            (p.slot, fit)
        })
        .collect()
}

/// Relative SSR difference within which the held-centre refit of a multi-peak job wins over the
/// first fit. A first fit can end with two blended peaks swapped between their slots: the same
/// model, and the same minimum as the refit (whose centres start at their own positions), here
/// to a few 1e-14; which of the two a strict `<` kept was then left to the last bits of
/// `exp`/`erfc`, which differ between libm and CUDA's (the 1 000-lineout GPU test's doublet
/// swapped in 6 of 12 one-ulp patterns, none now). Not a cure for every such case: from two
/// starts the solver stops within its `ftol` (1e-8) of a minimum, so for heavily blended jobs
/// (peaks under ~1.5 FWHM apart) the CPU and the GPU may still put the same peaks in swapped
/// slots.
pub const REFIT_TIE: f64 = 1e-9;

/// A multi-peak fit that may have ended in a wrong minimum: not converged, a centre outside its
/// held range, or a peak narrowed to under a quarter of its starting FWHM.
fn suspect(res: &LmResult, s: &Starts, held: &Starts, n_peaks: usize) -> bool {
    res.status != FitStatus::Converged
        || (0..n_peaks).any(|k| {
            let o = n_params(k);
            let (c, fwhm) = (
                res.params[o + 1],
                tch(res.params[o + 2], res.params[o + 3]).0,
            );
            c < held.lower[o + 1]
                || c > held.upper[o + 1]
                || fwhm < 0.25 * tch(s.start[o + 2], s.start[o + 3]).0
        })
}

/// The job's box with each peak's centre held within half the distance to its nearest
/// neighbour's start, and whether some peak is blended with it (starting on the same bin or
/// wider than half their gap). Peaks starting on one bin keep the full box.
fn hold_centres(s: &Starts, n_peaks: usize) -> (Starts, bool) {
    let mut held = s.clone();
    let mut blended = false;
    let centre = |k: usize| s.start[n_params(k) + 1];
    for k in 0..n_peaks {
        let gap = (0..n_peaks)
            .filter(|&j| j != k)
            .map(|j| (centre(j) - centre(k)).abs())
            .fold(f64::INFINITY, f64::min);
        let o = n_params(k);
        let fwhm = tch(s.start[o + 2], s.start[o + 3]).0;
        blended |= gap <= 2.0 * fwhm;
        if gap > 0.0 && gap.is_finite() {
            held.lower[o + 1] = held.lower[o + 1].max(centre(k) - gap / 2.0);
            held.upper[o + 1] = held.upper[o + 1].min(centre(k) + gap / 2.0);
            // A half-height walk from a blended peak spans its neighbour too: start no wider
            // than the gap.
            if fwhm > gap {
                let (sig, gam) = widths_from_fwhm(gap);
                held.start[o] *= gap / fwhm;
                held.start[o + 2] = sig;
                held.start[o + 3] = gam;
            }
        }
    }
    (held, blended)
}

/// Per peak of a converged job: `NoPeak` where its area collapsed onto 0 (≤ 1e-9 of the area
/// cap) or where its centre left the x range of its own ROI (`own_range`, its first and last
/// finite point: no peak there, the fit describes another feature, e.g. a neighbour's ring, or
/// a slope pushed off the lineout's end); else `AtBound` where the background, or one of the
/// peak's own parameters, sits on a limit of the starting box that is not physical
/// (background, area cap, centre, width caps; area ≥ 0 and the width floors are physical);
/// else None (a result).
pub(crate) fn bound_verdict(
    p: &[f64],
    lower: &[f64],
    upper: &[f64],
    own_range: &[Option<(f64, f64)>],
) -> Vec<Option<FitStatus>> {
    let on_lower = |i: usize| p[i] <= lower[i];
    let on_upper = |i: usize| p[i] >= upper[i];
    let background = (0..N_BACKGROUND).any(|i| on_lower(i) || on_upper(i));
    own_range
        .iter()
        .enumerate()
        .map(|(k, range)| {
            let o = n_params(k);
            let centre = p[o + 1];
            let left_roi = range.is_some_and(|(lo, hi)| !(centre >= lo && centre <= hi));
            if on_lower(o) || p[o] <= 1e-9 * upper[o] || left_roi {
                Some(FitStatus::NoPeak)
            } else if background
                || on_upper(o)
                || on_lower(o + 1)
                || on_upper(o + 1)
                || on_upper(o + 2)
                || on_upper(o + 3)
            {
                Some(FitStatus::AtBound)
            } else {
                None
            }
        })
        .collect()
}

/// Row k of a job's result, with standard errors; FWHM and η errors by the delta method on the
/// (sig, gam) covariance block.
fn peak_row(res: &LmResult, k: usize, chi2: f64) -> PeakFit {
    if !res.status.is_ok() {
        return PeakFit::failed(res.status, res.iterations);
    }
    let o = n_params(k);
    let np = res.params.len();
    let p = &res.params[o..o + PARAMS_PER_PEAK];
    let se = &res.std_errors[o..o + PARAMS_PER_PEAK];
    let t = tch_terms(p[2], p[3]);
    let cov = |a: usize, b: usize| {
        res.covariance
            .get((o + a) * np + o + b)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let delta = |ds: f64, dg: f64| {
        let v = ds * ds * cov(2, 2) + 2.0 * ds * dg * cov(2, 3) + dg * dg * cov(3, 3);
        // A variance that is not > 0 (singular covariance, NaN) has no error: NaN, never 0.
        if v > 0.0 {
            v.sqrt()
        } else {
            f64::NAN
        }
    };
    PeakFit {
        values: [p[0], p[1], p[2], p[3], t.gamma, t.eta, chi2],
        errors: [
            se[0],
            se[1],
            se[2],
            se[3],
            delta(t.dgamma_dsig, t.dgamma_dgam),
            delta(t.deta_dsig, t.deta_dgam),
            f64::NAN,
        ],
        status: res.status,
        iterations: res.iterations,
    }
}
