//! Peak positions → fitting jobs (spec §6.2 steps 1–2) and per-peak starts and bounds (step 3).
//! Kept public and free of the optimiser so that the GPU fitter plans exactly the same jobs.

use std::f64::consts::LN_2;

use super::model::{n_params, widths_from_fwhm};

/// One requested peak inside a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPeak {
    /// Index of the peak in the caller's `positions`.
    pub slot: usize,
    /// Index of the bin centre the position was snapped to.
    pub index: usize,
    /// The peak's own ROI `x[lo..=hi]` (`index ± padding`, clipped to the axis), inside its job's.
    /// In a merged job the fitter couples the peak's parameters to the others only there
    /// (see `Residuals`); a job of one peak is its own ROI.
    pub lo: usize,
    pub hi: usize,
}

/// A contiguous ROI `x[lo..=hi]` and the peaks fitted together in it (sorted by index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub lo: usize,
    pub hi: usize,
    pub peaks: Vec<JobPeak>,
}

/// GPU FitROIAuto: padding = max(15, 1.5 · largest FWHM in bins) over ±50-bin windows.
const AUTO_ROI_MIN: usize = 15;
const AUTO_ROI_WINDOW: usize = 50;

/// Bin size of a uniform axis: mean spacing (x must be increasing with ≥ 2 points, else 0).
pub fn bin_size(x: &[f64]) -> f64 {
    match (x.first(), x.last()) {
        (Some(a), Some(b)) if x.len() >= 2 => (b - a) / (x.len() - 1) as f64,
        _ => 0.0,
    }
}

/// Index of the bin centre nearest to `position`, kept only if closer than 2 bins (MIDAS rule).
/// `x` must be increasing; NaN positions are never kept.
pub fn snap_to_bin(x: &[f64], position: f64, bin: f64) -> Option<usize> {
    if !position.is_finite() || x.is_empty() {
        return None;
    }
    let right = x.partition_point(|&v| v < position).min(x.len() - 1);
    let left = right.saturating_sub(1);
    let idx = if (position - x[left]).abs() <= (x[right] - position).abs() {
        left
    } else {
        right
    };
    ((x[idx] - position).abs() < 2.0 * bin).then_some(idx)
}

/// Plan fitting jobs: snap `positions` to bins, take ROI `[idx − P, idx + P]` clipped to the axis,
/// merge consecutive peaks whose ROI starts at or before the current job's end into one job.
/// `P = padding`, or with `auto_roi` the GPU FitROIAuto rule from `y`. Positions that do not snap
/// (NaN, outside the axis by 2 bins or more) appear in no job. A merged job of more than
/// `max_peaks` peaks is cut at its widest gaps between neighbouring peaks (each side's ROI ends
/// half-way) until no part has more: evenly spaced rings otherwise chain into one job too big
/// to fit, and every one of their peaks was lost.
pub fn plan_jobs(
    x: &[f64],
    y: &[f64],
    positions: &[f64],
    padding: usize,
    auto_roi: bool,
    max_peaks: usize,
) -> Vec<Job> {
    let bin = bin_size(x);
    let mut peaks: Vec<JobPeak> = positions
        .iter()
        .enumerate()
        .filter_map(|(slot, &pos)| {
            snap_to_bin(x, pos, bin).map(|index| JobPeak {
                slot,
                index,
                lo: index,
                hi: index,
            })
        })
        .collect();
    peaks.sort_by_key(|p| (p.index, p.slot));
    let pad = if auto_roi {
        auto_padding(y, &peaks)
    } else {
        padding
    };
    let last = x.len().saturating_sub(1);
    let mut jobs: Vec<Job> = Vec::new();
    for mut pk in peaks {
        let (lo, hi) = (pk.index.saturating_sub(pad), (pk.index + pad).min(last));
        (pk.lo, pk.hi) = (lo, hi);
        match jobs.last_mut() {
            Some(job) if lo <= job.hi => {
                job.hi = job.hi.max(hi);
                job.peaks.push(pk);
            }
            _ => jobs.push(Job {
                lo,
                hi,
                peaks: vec![pk],
            }),
        }
    }
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        split_job(job, max_peaks.max(1), &mut out);
    }
    out
}

/// Push `job`, cut at the widest gap between consecutive peaks while it has more than
/// `max_peaks`.
fn split_job(job: Job, max_peaks: usize, out: &mut Vec<Job>) {
    if job.peaks.len() <= max_peaks {
        out.push(job);
        return;
    }
    match halve(&job) {
        Some((left, right)) => {
            split_job(left, max_peaks, out);
            split_job(right, max_peaks, out);
        }
        None => out.push(job),
    }
}

/// `job` cut in two at the widest gap between consecutive peaks (among equal ones the most
/// central): the left part ends half-way across the gap, the right part starts after it, and
/// each peak's own ROI is clipped to its part. `None` when every peak sits on one bin (each
/// side's ROI would end before the other's peak).
pub fn halve(job: &Job) -> Option<(Job, Job)> {
    let n = job.peaks.len();
    let cut = (1..n)
        .filter(|&k| job.peaks[k].index > job.peaks[k - 1].index)
        .max_by_key(|&k| {
            let gap = job.peaks[k].index - job.peaks[k - 1].index;
            (gap, std::cmp::Reverse(k.abs_diff(n / 2)))
        })?;
    let mid = (job.peaks[cut - 1].index + job.peaks[cut].index) / 2;
    let clip = |peaks: &[JobPeak], lo: usize, hi: usize| Job {
        lo,
        hi,
        peaks: peaks
            .iter()
            .map(|pk| JobPeak {
                lo: pk.lo.max(lo),
                hi: pk.hi.min(hi),
                ..*pk
            })
            .collect(),
    };
    Some((
        clip(&job.peaks[..cut], job.lo, mid),
        clip(&job.peaks[cut..], mid + 1, job.hi),
    ))
}

/// FitROIAuto padding: `max(15, 1.5 · max FWHM_bins)` with each FWHM estimated in a ±50-bin window.
fn auto_padding(y: &[f64], peaks: &[JobPeak]) -> usize {
    let widest = peaks
        .iter()
        .filter(|p| p.index < y.len())
        .map(|p| {
            let lo = p.index.saturating_sub(AUTO_ROI_WINDOW);
            let hi = (p.index + AUTO_ROI_WINDOW).min(y.len() - 1);
            let window = &y[lo..=hi];
            let bg = edge_background(window);
            fwhm_bins(
                window,
                p.index - lo,
                bg,
                peak_amplitude(window, p.index - lo, bg),
            )
        })
        .max()
        .unwrap_or(0);
    AUTO_ROI_MIN.max((1.5 * widest as f64).ceil() as usize)
}

/// MIDAS background start: mean of the first and last `bw = clamp(n/4, 1, 5)` points, over the
/// finite ones (0 when none is).
pub fn edge_background(y: &[f64]) -> f64 {
    let n = y.len();
    if n == 0 {
        return 0.0;
    }
    let bw = (n / 4).clamp(1, 5).min(n);
    let (sum, count) = y[..bw]
        .iter()
        .chain(&y[n - bw..])
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, c), &v| (s + v, c + 1));
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// `I[pk] − bg`, or `I[pk]` when that is not positive.
fn peak_amplitude(y: &[f64], pk: usize, bg: f64) -> f64 {
    let v = y.get(pk).copied().unwrap_or(0.0);
    if v - bg > 0.0 {
        v - bg
    } else {
        v
    }
}

/// Bins between the outermost points above half height at or below which a peak is "narrow"
/// (its top one or two bins): see [`Starts::narrow`].
const NARROW_WALK: usize = 1;

/// FWHM in bins by walking out from `pk` while `I > bg + amp/2`, across NaN bins (at least 2).
fn fwhm_bins(y: &[f64], pk: usize, bg: f64, amp: f64) -> usize {
    fwhm_walk(y, pk, bg, amp).max(2)
}

/// Bins between the outermost points above half height on either side of `pk` (0: only `pk`).
fn fwhm_walk(y: &[f64], pk: usize, bg: f64, amp: f64) -> usize {
    let half = bg + amp / 2.0;
    if !half.is_finite() {
        return 0;
    }
    let above = |v: f64| v.is_nan() || v > half;
    let pk = pk.min(y.len().saturating_sub(1));
    let mut left = pk;
    while left > 0 && above(y[left - 1]) {
        left -= 1;
    }
    let mut right = pk;
    while right + 1 < y.len() && above(y[right + 1]) {
        right += 1;
    }
    right - left
}

/// Starting point and box of one job (layout of `fit::model`).
#[derive(Debug, Clone, PartialEq)]
pub struct Starts {
    pub start: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    /// Some peak is narrow (only its top bin or two above half height): its FWHM start was
    /// `narrow_fwhm_bins`. MIDAS starts such a peak at 2 bins, from where peaks of ~0.7 bin at
    /// high S/N stopped in a wrong minimum (reduced χ² 20 against ~0 at the truth), while a
    /// 1-bin start biases barely resolved (0.5 bin) widths up: the fitter tries both.
    pub narrow: bool,
}

/// FWHM start (bins) of narrow peaks in the first fit of a job; the second fit, where some peak
/// is narrow, starts them at MIDAS's 2 bins ([`Starts::narrow`]).
pub const NARROW_START_BINS: f64 = 1.0;

/// MIDAS starts and bounds (§6.2 step 3) for peaks at local indices `pks` of the ROI data
/// `(x, y)` (finite values only), with the axis bin size `bin`; narrow peaks (see
/// [`Starts::narrow`]) start at a FWHM of `narrow_fwhm_bins`.
pub fn initial_guess(
    x: &[f64],
    y: &[f64],
    pks: &[usize],
    bin: f64,
    narrow_fwhm_bins: f64,
) -> Starts {
    let n = y.len();
    let (ymin, ymax) = y
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let range = (ymax - ymin).max(1.0);
    let span = n as f64 * bin;
    let bg = edge_background(y);
    let np = n_params(pks.len());
    let (mut start, mut lower, mut upper) = (vec![0.0; np], vec![0.0; np], vec![0.0; np]);

    start[0] = bg;
    lower[0] = (ymin - range / 2.0).min(-1.0);
    upper[0] = ymax + range;
    start[1] = 0.0;
    lower[1] = -range;
    upper[1] = range;

    let width_cap = 200.0 * bin * 100.0;
    let mut narrow = false;
    for (k, &pk) in pks.iter().enumerate() {
        let pk = pk.min(n.saturating_sub(1));
        let amp = peak_amplitude(y, pk, bg);
        let walk = fwhm_walk(y, pk, bg, amp);
        narrow |= walk <= NARROW_WALK;
        let fwhm = if walk <= NARROW_WALK {
            narrow_fwhm_bins
        } else {
            walk as f64
        } * bin;
        let (sig0, gam0) = widths_from_fwhm(fwhm);
        let c0 = x.get(pk).copied().unwrap_or(f64::NAN);
        let dc = fwhm.max(span / 2.0);
        let o = n_params(k);
        start[o..o + 4].copy_from_slice(&[1.5 * amp * fwhm, c0, sig0, gam0]);
        // Width floors in the axis' own unit (sig is (100·x)², gam 100·x): MIDAS's 1e-6 and
        // 0.01 for 1-unit bins, so an axis in Å⁻¹ or radians is not held above 1e-4 of a unit.
        lower[o..o + 4].copy_from_slice(&[0.0, c0 - dc, 1e-6 * bin * bin, 0.01 * bin]);
        upper[o..o + 4].copy_from_slice(&[
            (2.0 * range * span).max(1.0),
            c0 + dc,
            width_cap * width_cap / (8.0 * LN_2),
            width_cap,
        ]);
    }
    for i in 0..np {
        start[i] = strictly_inside(start[i], lower[i], upper[i]);
    }
    Starts {
        start,
        lower,
        upper,
        narrow,
    }
}

/// Clamp into the open interval, as MIDAS does, so no parameter starts frozen on a bound.
fn strictly_inside(v: f64, lo: f64, hi: f64) -> f64 {
    // max/min rather than clamp: clamp panics on NaN bounds, and bounds come from user data.
    let eps = 1e-6 * (hi - lo);
    if eps > 0.0 {
        v.max(lo + eps).min(hi - eps)
    } else {
        v.max(lo).min(hi)
    }
}
