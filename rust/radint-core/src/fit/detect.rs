//! Automatic peak detection (spec §6.3): SNIP background, Savitzky–Golay curvature, prominence,
//! minimum separation, greedy selection, fit on the background-subtracted lineout, peaks the
//! fits left in their residual added and refitted, width-outlier filter, keep the largest
//! `max_peaks` by area.

use rayon::prelude::*;

use super::model::PeakTerms;
use super::roi::bin_size;
use super::{
    bin_edges, fit_curve_checked, validate_axis, validate_options, FitOptions, FitStatus, PeakFit,
    Positions, COL_ETA,
};
use crate::error::{Error, Result};

/// `AutoDetectPeaks` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoOptions {
    /// `MaxNPeaks` / `AutoDetectPeaks`: at most this many peaks are returned.
    pub max_peaks: usize,
    /// `SNIPIterations` (MIDAS default 50).
    pub snip_iterations: usize,
    /// Width of the radial bins in detector pixels (their median; 0 where unknown: taken as a
    /// pixel or more). Bins narrower than a pixel share the pixels' counts: on bins of a quarter
    /// pixel or less (lineouts of at least [`MIN_GROUPED_BINS`] groups) peaks are detected on the
    /// lineout averaged [`AutoOptions::group`] bins at a time ([`fit_auto_grouped`]), and where
    /// the bins detection runs on are narrower than a pixel the noise σ is also read from the
    /// lineout's own maxima ([`noise_sigma`]).
    pub bin_width_px: f64,
}

impl Default for AutoOptions {
    fn default() -> Self {
        AutoOptions {
            max_peaks: 10,
            snip_iterations: 50,
            bin_width_px: 0.0,
        }
    }
}

impl AutoOptions {
    /// Bins averaged into one for detection: as many as make at most [`GROUPED_WIDTH_PX`]
    /// (1 for bins wider than a quarter pixel).
    pub fn group(&self) -> usize {
        let w = self.bin_width_px;
        if w > 0.0 && w < GROUPED_WIDTH_PX {
            // A hair of slack: 0.1 px bins make 5 per half pixel, not 4.
            (GROUPED_WIDTH_PX / w + 1e-9).floor() as usize
        } else {
            1
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.bin_width_px >= 0.0 && self.bin_width_px.is_finite()) {
            return Err(Error::Invalid(format!(
                "auto peak fit: bin_width_px must be a finite width >= 0 (0: unknown), got {}",
                self.bin_width_px
            )));
        }
        Ok(())
    }

    /// Whether the bins detection runs on (grouped) are narrower than a pixel, so that their
    /// noise is correlated ([`noise_sigma`]).
    fn correlated_noise(&self) -> bool {
        let w = self.bin_width_px * self.group() as f64;
        w > 0.0 && w < 1.0 - 1e-9
    }
}

/// Result of auto-detection on one lineout.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoFit {
    /// SNIP background that was subtracted before fitting (same length as the lineout); the
    /// fitted Chebyshev background of each peak is relative to it.
    pub background: Vec<f64>,
    /// Kept peaks, ordered by centre; all `Converged`.
    pub peaks: Vec<PeakFit>,
}

/// SNIP background (LLS-transformed, decreasing clipping window `p = iterations … 1`), ≥ 0; 0
/// for 0 iterations.
/// NaN bins (masked or empty) are bridged linearly from their finite neighbours first: read as
/// 0, one such bin pulled the clipped background down to ~0 for hundreds of bins around it.
pub fn snip_background(y: &[f64], iterations: usize) -> Vec<f64> {
    let n = y.len();
    if iterations == 0 {
        // No clipping: no background (C's pf_snip_background), not the data itself, which
        // left nothing above it to detect.
        return vec![0.0; n];
    }
    let mut v: Vec<f64> = bridge_nan(y)
        .iter()
        .map(|&i| ((i.max(0.0) + 1.0).sqrt() + 1.0).ln().ln_1p())
        .collect();
    let mut old = v.clone();
    // A window p with 2p ≥ n clips nothing, so those iterations are skipped by bounding the
    // range instead of testing `2 * p`, which wrapped for iterations ≥ 2^63 (then indexed out of
    // bounds) and spun through every no-op p for a huge count.
    for p in (1..=iterations.min(n.saturating_sub(1) / 2)).rev() {
        old.copy_from_slice(&v);
        for i in p..n - p {
            v[i] = v[i].min(0.5 * (old[i - p] + old[i + p]));
        }
    }
    v.iter()
        .map(|&t| {
            let a = (t.exp() - 1.0).exp() - 1.0;
            (a * a - 1.0).max(0.0)
        })
        .collect()
}

/// `y` with each run of NaN bins replaced by the straight line between the finite bins on either
/// side (the nearest finite value at the ends; all 0 when nothing is finite).
pub fn bridge_nan(y: &[f64]) -> Vec<f64> {
    let finite: Vec<usize> = (0..y.len()).filter(|&i| y[i].is_finite()).collect();
    let (Some(&first), Some(&last)) = (finite.first(), finite.last()) else {
        return vec![0.0; y.len()];
    };
    let mut out = y.to_vec();
    out[..first].fill(y[first]);
    out[last + 1..].fill(y[last]);
    for pair in finite.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        for (k, v) in out.iter_mut().enumerate().take(b).skip(a + 1) {
            *v = y[a] + (y[b] - y[a]) * (k - a) as f64 / (b - a) as f64;
        }
    }
    out
}

/// Savitzky–Golay smoothing, window 7, quadratic: `(−2, 3, 6, 7, 6, 3, −2)/21`; the 3 points at
/// each edge are copied unchanged (as MIDAS).
pub fn savgol_smooth7(y: &[f64]) -> Vec<f64> {
    const C: [f64; 7] = [-2.0, 3.0, 6.0, 7.0, 6.0, 3.0, -2.0];
    let mut s = y.to_vec();
    if y.len() >= 7 {
        for (i, w) in y.windows(7).enumerate() {
            s[i + 3] = w.iter().zip(C).map(|(a, c)| a * c).sum::<f64>() / 21.0;
        }
    }
    s
}

/// Prominence, in units of the lineout's noise σ, that a candidate must have (see
/// `significance`). Over 100 flat Poisson lineouts of 3 000 bins for each mean 5, 200 and
/// 5 000 the most prominent noise maximum reached 4.0 σ; 6 σ keeps a margin against
/// noise while a peak 6 σ high survives.
pub const DETECTION_SIGMAS: f64 = 6.0;
/// Half-width (bins) of the significance test: wide enough that a peak several bins broad is
/// measured from its foot, not from its own shoulder.
pub const SIGNIFICANCE_WINDOW: usize = 15;

/// Binomial smoothing `(1, 4, 6, 4, 1)/16`; the 2 points at each edge are copied unchanged.
///
/// The significance test reads its cols on this curve, not on the Savitzky–Golay one: the SG7
/// kernel has negative side lobes, so a sharp peak dips below the background 3–6 bins to either
/// side of it. Between two strong peaks ~25 bins apart both dips fell within the test's window,
/// and measured from them, plain background noise stood 8 σ high: dense lineouts came back with
/// a third more "peaks" than they had, all merged into one slow fitting job. A kernel without
/// negative weights has no such dips.
pub fn binomial_smooth5(y: &[f64]) -> Vec<f64> {
    const C: [f64; 5] = [1.0, 4.0, 6.0, 4.0, 1.0];
    let mut s = y.to_vec();
    if y.len() >= 5 {
        for (i, w) in y.windows(5).enumerate() {
            s[i + 2] = w.iter().zip(C).map(|(a, c)| a * c).sum::<f64>() / 16.0;
        }
    }
    s
}

/// Noise σ of `corr` that the detection test measures in: the bin-to-bin estimate
/// ([`white_noise_sigma`]), and with `correlated` the larger of that and one read from the
/// significance of the lineout's own noise maxima ([`maxima_noise_sigma`]). On radial bins
/// finer than a pixel neighbouring bins share the pixels' counts, the bin-to-bin wiggle
/// understates the noise the test sees (at `RBinSize 0.25` about sevenfold) and noise stood for
/// peaks. The maxima's median is that of noise only where noise makes most maxima: on whole-pixel
/// bins a pattern of many weak rings has more ring maxima than noise ones (30 of 38), and read
/// from them the σ doubled and weak rings were lost, so it is used only where bins share pixels.
/// NaN bins and the exact zeros of 0-filled runs take no part.
pub fn noise_sigma(corr: &[f64], correlated: bool) -> f64 {
    noise_sigma_with(corr, &LocalMaxima::of(corr), correlated)
}

/// [`noise_sigma`] with `maxima` already found (on `corr` with its NaN bins bridged).
fn noise_sigma_with(corr: &[f64], maxima: &LocalMaxima, correlated: bool) -> f64 {
    let white = white_noise_sigma(corr);
    if !correlated {
        return white;
    }
    let significances: Vec<f64> = maxima.iter().map(|(_, sig)| sig).collect();
    // Peaks are left out as maxima above the detection threshold, starting at the white σ and
    // rising with the estimate: where peaks are most of the maxima (a noise-free lineout) the
    // median would be a peak's, and a σ started there would leave every peak in.
    let mut sigma = white;
    for _ in 0..8 {
        let noise: Vec<f64> = significances
            .iter()
            .copied()
            .filter(|&sig| sig <= DETECTION_SIGMAS * sigma)
            .collect();
        let next = maxima_noise_sigma(noise).max(white);
        if next <= 1.01 * sigma {
            break;
        }
        sigma = next;
    }
    sigma
}

/// Noise σ of `corr` from the median absolute deviation of its high-frequency part
/// `corr − SG7(corr)`: for white noise that residual has √(2/3) σ (the SG7 quadratic is a
/// projection with centre weight 1/3). Robust against the peaks themselves.
fn white_noise_sigma(corr: &[f64]) -> f64 {
    if corr.len() < 7 {
        return 0.0;
    }
    let s = savgol_smooth7(corr);
    let r: Vec<f64> = corr[3..corr.len() - 3]
        .iter()
        .zip(&s[3..corr.len() - 3])
        .map(|(a, b)| a - b)
        // Bins without data take no part (see `local_noise`): NaN, and the exact zeros of
        // 0-filled runs. Bridged or counted, a lineout half without data had σ ≈ 0, and
        // hundreds of noise maxima passed the 6 σ test.
        .filter(|v| v.is_finite() && *v != 0.0)
        .collect();
    robust_sigma(r) / (2.0f64 / 3.0).sqrt()
}

/// Bins per block over which [`local_noise`] measures the noise.
const LOCAL_NOISE_BINS: usize = 128;

/// σ of Gaussian samples from the lower quartile of their absolute deviations from the median
/// (0.3186 σ): rings leave most of a block's bin-to-bin scatter to noise only where they are
/// sparse, and a quartile stays noise's while rings fill up to three quarters of it.
fn quartile_sigma(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let m = median(&mut v);
    for x in v.iter_mut() {
        *x = (*x - m).abs();
    }
    let k = v.len() / 4;
    *v.select_nth_unstable_by(k, f64::total_cmp).1 / 0.318_639_363_964_375_7
}

/// Per bin, how much noisier `corr` is in its stretch of about [`LOCAL_NOISE_BINS`] bins than
/// in the median stretch (bin-to-bin scatter, as [`white_noise_sigma`] takes it, measured by
/// [`quartile_sigma`]), at least 1: the 6 σ test counts a candidate's prominence in that many σ
/// more. Why: a profile's noise varies along it (a per-η profile's bins hold few pixels near
/// the beam centre, many far out), and measured against the lineout's median noise, the noisy
/// stretch passed noise for peaks.
///
/// Bins without data take no part: NaN (`corr` is not bridged) and runs of exact zeros (a
/// `compat="midas-cpu"` row beyond the detector's edge), whose scatter is exactly 0. Counted,
/// they pulled the reference towards 0 and every factor up by 10–10⁵: rings were lost on rows
/// half NaN or a quarter 0-filled. Stretches with fewer than a quarter of their bins usable keep
/// factor 1, and so does a lineout with fewer than two such stretches.
fn local_noise(corr: &[f64]) -> Vec<f64> {
    let n = corr.len();
    let mut factor = vec![1.0; n];
    if n < 7 {
        return factor;
    }
    let s = savgol_smooth7(corr);
    let scatter: Vec<f64> = (0..n)
        .map(|i| {
            if (3..n - 3).contains(&i) {
                corr[i] - s[i]
            } else {
                f64::NAN
            }
        })
        .collect();
    // Stretches of n / k bins for the k nearest n / LOCAL_NOISE_BINS: no short last one.
    let n_stretches = ((n as f64 / LOCAL_NOISE_BINS as f64).round() as usize).max(1);
    let bounds = |k: usize| (k * n / n_stretches, (k + 1) * n / n_stretches);
    let sigmas: Vec<Option<f64>> = (0..n_stretches)
        .map(|k| {
            let (lo, hi) = bounds(k);
            let usable: Vec<f64> = scatter[lo..hi]
                .iter()
                .copied()
                .filter(|v| v.is_finite() && *v != 0.0)
                .collect();
            (usable.len() >= (hi - lo) / 4)
                .then(|| quartile_sigma(usable))
                .filter(|&sigma| sigma > 0.0)
        })
        .collect();
    let mut known: Vec<f64> = sigmas.iter().flatten().copied().collect();
    if known.len() < 2 {
        return factor;
    }
    let reference = median(&mut known);
    for (k, sigma) in sigmas.iter().enumerate() {
        if let Some(sigma) = sigma {
            let (lo, hi) = bounds(k);
            factor[lo..hi].fill((sigma / reference).max(1.0));
        }
    }
    factor
}

/// Median `significance` of white-noise maxima per noise σ, rounded up from 0.39 (0.32–0.48 over
/// 60 flat Poisson lineouts of 3 000 bins, means 5, 200 and 5 000) so that white noise keeps
/// its bin-to-bin σ.
const MEDIAN_MAXIMUM_SIGMAS: f64 = 0.5;

/// Noise σ from the median of the noise maxima's `significance`, in the units
/// [`MEDIAN_MAXIMUM_SIGMAS`] calibrates: it measures the noise as the detection test sees it,
/// however neighbouring bins are correlated. Shrunk by `1 − 2/√n` for `n` maxima, so the median
/// of a short lineout's few maxima does not raise the σ of white noise by chance (without it,
/// one in three 60-bin lineouts got 10–150 % more); 0 for fewer than 5.
fn maxima_noise_sigma(mut significances: Vec<f64>) -> f64 {
    let n = significances.len();
    if n < 5 {
        return 0.0;
    }
    let shrink = 1.0 - 2.0 / (n as f64).sqrt();
    median(&mut significances) / MEDIAN_MAXIMUM_SIGMAS * shrink
}

/// 1.4826 × the median absolute deviation: σ for Gaussian samples; 0 for none.
fn robust_sigma(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let m = median(&mut v);
    for x in v.iter_mut() {
        *x = (*x - m).abs();
    }
    1.4826 * median(&mut v)
}

/// The upper median of `v` (reordered); NaN for none.
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let k = v.len() / 2;
    *v.select_nth_unstable_by(k, f64::total_cmp).1
}

/// The maxima of a background-subtracted lineout that may be peaks, with their `significance`.
struct LocalMaxima {
    /// The SG7 curve of the lineout.
    savgol: Vec<f64>,
    /// `(index, significance)` of each maximum of `savgol` with negative curvature where the
    /// lineout is positive.
    maxima: Vec<(usize, f64)>,
}

impl LocalMaxima {
    fn of(corr: &[f64]) -> Self {
        let n = corr.len();
        let s = savgol_smooth7(corr);
        if n < 5 {
            return Self {
                savgol: s,
                maxima: Vec::new(),
            };
        }
        let smooth = binomial_smooth5(corr);
        let curvature = |i: usize| -(s[i - 1] - 2.0 * s[i] + s[i + 1]);
        let maxima = (2..n - 2)
            .filter(|&i| curvature(i) > 0.0 && s[i] >= s[i - 1] && s[i] > s[i + 1] && corr[i] > 0.0)
            .map(|i| (i, significance(&s, &smooth, i, SIGNIFICANCE_WINDOW)))
            .collect();
        Self { savgol: s, maxima }
    }

    fn iter(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.maxima.iter().copied()
    }
}

/// Candidate peak indices of the background-subtracted `corr`, best prominence first, at least
/// `min_sep` bins apart, at most `max_candidates`, each standing at least `min_prominence` above
/// its foot (see [`DETECTION_SIGMAS`]).
pub fn detect_candidates(
    corr: &[f64],
    max_candidates: usize,
    min_sep: usize,
    min_prominence: f64,
) -> Vec<usize> {
    candidates_among(&LocalMaxima::of(corr), max_candidates, min_sep, &|_| {
        min_prominence
    })
}

/// [`detect_candidates`] among `maxima`, a candidate at bin i standing at least `needed(i)`.
fn candidates_among(
    maxima: &LocalMaxima,
    max_candidates: usize,
    min_sep: usize,
    needed: &dyn Fn(usize) -> f64,
) -> Vec<usize> {
    let cands: Vec<(f64, usize)> = maxima
        .iter()
        .filter(|&(i, sig)| sig >= needed(i))
        .map(|(i, _)| (prominence(&maxima.savgol, i, min_sep), i))
        .collect();
    best_spaced(cands, max_candidates, min_sep)
}

/// Greedy pick of `(score, index)` candidates, best score first (ties: lower index), each at
/// least `min_sep` bins from those picked before, at most `limit`.
fn best_spaced(mut cands: Vec<(f64, usize)>, limit: usize, min_sep: usize) -> Vec<usize> {
    cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<usize> = Vec::new();
    for (_, i) in cands {
        if chosen.len() >= limit {
            break;
        }
        if chosen.iter().all(|&c| c.abs_diff(i) >= min_sep) {
            chosen.push(i);
        }
    }
    chosen
}

/// Prominence of the candidate at `i` (`0 < i < len − 1`, a maximum of the SG7 curve `s`): on
/// each side, walk out up to `w` bins, stopping before the first point where `s` is higher than
/// at `i`; the col is the lowest point passed, read on the ringing-free [`binomial_smooth5`]
/// curve `b`; the prominence is `s[i]` minus the higher of the two cols.
///
/// Measured from the lowest points within the window instead, a noise wiggle on the flank of a
/// stronger peak (its tail, or the top of a broad one) stood as high as the flank itself: broad
/// peaks came back split, and a narrow peak got a "neighbour" 5 bins out that fitted as a
/// 70-bin-wide peak with twice its area. Its col towards the stronger peak is the shallow dip
/// beside it, so now it stands no higher than the noise.
fn significance(s: &[f64], b: &[f64], i: usize, w: usize) -> f64 {
    let n = s.len();
    let top = s[i];
    let col = |side: &mut dyn Iterator<Item = usize>| {
        side.take_while(|&k| s[k] <= top)
            .map(|k| b[k])
            .fold(f64::INFINITY, f64::min)
    };
    let left = col(&mut (i.saturating_sub(w)..i).rev());
    let right = col(&mut (i + 1..=(i + w).min(n - 1)));
    top - left.max(right)
}

/// MIDAS prominence: `s[i] − max(min left, min right)` within `w` bins; the value itself if that
/// is negative.
fn prominence(s: &[f64], i: usize, w: usize) -> f64 {
    let lo = i.saturating_sub(w);
    let hi = (i + w).min(s.len() - 1);
    let min_of = |r: &[f64]| r.iter().copied().fold(f64::INFINITY, f64::min);
    let p = s[i] - min_of(&s[lo..i]).max(min_of(&s[i + 1..=hi]));
    if p < 0.0 {
        s[i]
    } else {
        p
    }
}

/// Detect and fit up to `auto.max_peaks` peaks in one lineout.
pub fn fit_auto(x: &[f64], y: &[f64], auto: &AutoOptions, opts: &FitOptions) -> Result<AutoFit> {
    validate_axis(x)?;
    validate_options(opts)?;
    auto.validate()?;
    if y.len() != x.len() {
        return Err(Error::shape(
            "auto peak fit: lineout length",
            x.len(),
            y.len(),
        ));
    }
    Ok(fit_auto_checked(x, y, auto, opts))
}

/// [`fit_auto`] over `n_curves` lineouts `ys` (row-major), in parallel on the current rayon pool.
pub fn fit_auto_many(
    x: &[f64],
    ys: &[f64],
    auto: &AutoOptions,
    opts: &FitOptions,
) -> Result<Vec<AutoFit>> {
    validate_axis(x)?;
    validate_options(opts)?;
    auto.validate()?;
    if !ys.len().is_multiple_of(x.len()) {
        return Err(Error::shape(
            "auto peak fit: lineouts (n_curves × n_x)",
            format!("a multiple of n_x = {}", x.len()),
            ys.len(),
        ));
    }
    Ok(ys
        .par_chunks(x.len())
        .map(|y| fit_auto_checked(x, y, auto, opts))
        .collect())
}

fn fit_auto_checked(x: &[f64], y: &[f64], auto: &AutoOptions, opts: &FitOptions) -> AutoFit {
    let group = auto.group();
    if group > 1 && x.len() / group >= MIN_GROUPED_BINS {
        return fit_auto_grouped(x, y, group, auto, opts);
    }
    let bin = bin_size(x);
    let background = snip_background(y, auto.snip_iterations);
    // Candidates are found on the NaN-bridged curve (smoothing would spread a NaN over its
    // neighbours); the fits see the NaN bins as NaN, so they leave them out.
    let bridged = bridge_nan(y);
    let (corr, corr_bridged) = (
        above_background(y, &background),
        above_background(&bridged, &background),
    );
    // x is uniform here, so MIDAS's max(3, 3·RBinSize/|x1 − x0|) is 3 bins.
    let min_sep = 3;
    let max_candidates = (3 * auto.max_peaks).min(x.len() / 2);
    let maxima = LocalMaxima::of(&corr_bridged);
    let min_prominence =
        DETECTION_SIGMAS * noise_sigma_with(&corr, &maxima, auto.correlated_noise());
    // On bins of a pixel or more a sharp ring is a bin or two wide: its own curvature fills
    // the bin-to-bin scatter of its block, and measured there its weak neighbours were lost.
    let local = if auto.correlated_noise() {
        local_noise(&corr)
    } else {
        vec![1.0; corr_bridged.len()]
    };
    let cand = candidates_among(&maxima, max_candidates, min_sep, &|i| {
        min_prominence * local[i]
    });
    let mut positions: Vec<f64> = cand.iter().map(|&i| x[i]).collect();
    let mut fits = fit_curve_checked(
        x,
        &corr,
        &background,
        &positions,
        bin,
        opts,
        Positions::Detected { earlier: None },
    );
    let limits = selection_limits(x, bin, auto, opts);
    let search = ResidualSearch::new(
        x,
        (&corr, &corr_bridged),
        &bridged,
        &background,
        min_prominence,
        opts,
    );
    if let Some(search) = search {
        for _ in 0..REFINE_ROUNDS {
            let room = max_candidates.saturating_sub(positions.len());
            let missed = search.candidates(&positions, &fits, min_sep, room);
            if missed.is_empty() {
                break;
            }
            let mut more = positions.clone();
            more.extend(missed.iter().map(|&i| x[i]));
            let refit = fit_curve_checked(
                x,
                &corr,
                &background,
                &more,
                bin,
                opts,
                Positions::Detected {
                    earlier: Some(&fits),
                },
            );
            // Kept only when it adds a distinct peak (counted before `max_peaks` keeps the
            // largest): a candidate that fits to nothing, a refit that loses what the first fit
            // found, or one that splits a peak into a pair or a spike, leaves the first fit.
            let all = (usize::MAX, bin, limits.2, limits.3);
            let kept = select_peaks(refit.clone(), all);
            if kept.len() <= select_peaks(fits.clone(), all).len() || !distinct(&kept, bin) {
                break;
            }
            (positions, fits) = (more, refit);
        }
    }
    AutoFit {
        background,
        peaks: select_peaks(fits, limits),
    }
}

/// `y − background`, at least 0; NaN bins stay NaN.
fn above_background(y: &[f64], background: &[f64]) -> Vec<f64> {
    y.iter()
        .zip(background)
        .map(|(&v, &b)| if v.is_nan() { v } else { (v - b).max(0.0) })
        .collect()
}

/// Width (px) of the bins auto-detection runs on where the lineout's are narrower: half a pixel
/// keeps rings of FWHM 1.5–2.5 px a handful of bins wide (on whole-pixel bins a weak ring 2.6
/// FWHM beside a strong one merged into it) while the noise humps a pixel's spread counts make
/// no longer pass for peaks.
pub const GROUPED_WIDTH_PX: f64 = 0.5;

/// Fewest grouped bins a lineout is detected on ([`fit_auto_grouped`]); shorter ones are
/// detected bin by bin.
const MIN_GROUPED_BINS: usize = 16;

/// Narrowest ROI half-width, in grouped bins (about pixels), of the fits that decide which
/// candidates are peaks: `FitROIPadding 20` on tenth-pixel bins is 4 of them, too few points
/// for a peak and its background. MIDAS's default, 20 bins of `RBinSize 0.25`, is 10.
const MIN_GROUPED_PADDING: usize = 10;

/// [`fit_auto`] on bins of a quarter pixel or less: peaks are found on the lineout averaged
/// `group` bins at a time (about [`GROUPED_WIDTH_PX`] each; its SNIP background, candidates,
/// fits and residual search, ROIs `roi_padding / group` such bins wide, at least
/// [`MIN_GROUPED_PADDING`]), then fitted again on the lineout itself, at the centres found
/// there, under its own SNIP background.
///
/// Why: a pixel's counts spread over every bin it overlaps, so on bins of a tenth of a pixel
/// the noise moves in humps about a pixel wide; SG7 curves and significance windows counted in
/// bins measured them as peaks (synthetic CeO2 frames at `RBinSize 0.1`: 5–16 of 20 peaks
/// noise, per-η 5° fits 236–457 false), and detection now sees a lineout as it would at
/// `RBinSize 0.5`, whatever the finer bins.
fn fit_auto_grouped(
    x: &[f64],
    y: &[f64],
    group: usize,
    auto: &AutoOptions,
    opts: &FitOptions,
) -> AutoFit {
    let mean = |v: &[f64]| {
        let finite = v.iter().filter(|v| v.is_finite());
        let n = finite.clone().count();
        if n == 0 {
            f64::NAN
        } else {
            finite.sum::<f64>() / n as f64
        }
    };
    let grouped_x: Vec<f64> = x.chunks_exact(group).map(mean).collect();
    let grouped_y: Vec<f64> = y.chunks_exact(group).map(mean).collect();
    let grouped_auto = AutoOptions {
        bin_width_px: auto.bin_width_px * group as f64,
        snip_iterations: auto.snip_iterations.min(grouped_x.len()),
        ..*auto
    };
    let grouped_opts = FitOptions {
        roi_padding: opts.roi_padding.div_ceil(group).max(MIN_GROUPED_PADDING),
        ..*opts
    };
    let found = fit_auto_checked(&grouped_x, &grouped_y, &grouped_auto, &grouped_opts);
    let mut positions: Vec<f64> = found.peaks.iter().map(PeakFit::center).collect();
    let bin = bin_size(x);
    let background = snip_background(y, auto.snip_iterations);
    let corr = above_background(y, &background);
    let near_found = |i: usize| {
        found
            .peaks
            .iter()
            .any(|p| (x[i] - p.center()).abs() < p.fwhm().max(2.0 * group as f64 * bin))
    };
    let edges = edge_candidates(y, &background, group, auto);
    positions.extend(edges.into_iter().filter(|&i| !near_found(i)).map(|i| x[i]));
    let fits = fit_curve_checked(
        x,
        &corr,
        &background,
        &positions,
        bin,
        opts,
        Positions::Detected { earlier: None },
    );
    let limits = selection_limits(x, bin, auto, opts);
    AutoFit {
        background,
        peaks: select_peaks(fits, limits),
    }
}

/// Grouped bins at each end of a lineout where no maximum is taken (SG7 needs two neighbours
/// on each side): [`LocalMaxima::of`]'s margin.
const EDGE_GROUPS: usize = 2;

/// Candidates of the lineout itself, bin by bin (as on bins of more than a quarter pixel),
/// within the bins its grouped detection ([`fit_auto_grouped`]) cannot reach: the first and
/// last [`EDGE_GROUPS`] groups, and the bins past the last whole group. A ring centred within
/// ~1 px of either end of the radial range was lost there, and its neighbour, fitted alone,
/// came back converged with half its area.
fn edge_candidates(y: &[f64], background: &[f64], group: usize, auto: &AutoOptions) -> Vec<usize> {
    let n = y.len();
    let head = EDGE_GROUPS * group;
    let tail = (n / group).saturating_sub(EDGE_GROUPS) * group;
    let corr = above_background(y, background);
    let mut maxima = LocalMaxima::of(&above_background(&bridge_nan(y), background));
    let sigma = noise_sigma_with(&corr, &maxima, auto.bin_width_px < 1.0);
    maxima.maxima.retain(|&(i, _)| i < head || i >= tail);
    let local = local_noise(&corr);
    candidates_among(&maxima, 2 * auto.max_peaks, 3, &|i| {
        DETECTION_SIGMAS * sigma * local[i]
    })
}

/// Rounds of looking for peaks the fits left in their residual (a second peak 1–2 FWHM from a
/// stronger one has no maximum of its own on the smoothed curve: it was fitted into its
/// neighbour as one broad peak, "converged"; MIDAS's maxima of −Δ² see such shoulders).
const REFINE_ROUNDS: usize = 2;

/// Smallest peak the residual search looks for, relative to the fitted peaks' height within
/// [`SIGNIFICANCE_WINDOW`] bins: a strong peak's model misfit is a few % of it.
const RESIDUAL_NEAR: f64 = 0.03;

/// Smallest peak the residual search looks for, relative to the lineout's largest value: on
/// (nearly) noise-free lineouts the 6 σ test alone would take the fits' own small misfits, and
/// the job backgrounds they leave out, for peaks.
const RESIDUAL_FLOOR: f64 = 0.01;

/// The search for peaks the fits left in their residual `corr − Σ fitted peaks`.
struct ResidualSearch<'a> {
    x: &'a [f64],
    /// Background-subtracted lineout, NaN where masked or empty.
    corr: &'a [f64],
    edges: Vec<(f64, f64)>,
    bin_average: bool,
    /// Prominence a residual peak needs, per bin: [`DETECTION_SIGMAS`] noise σ scaled for
    /// counting statistics (variance ∝ level: `√max(1, y / median background)`, y binomially
    /// smoothed), at least [`RESIDUAL_FLOOR`] of the largest value.
    needed: Vec<f64>,
    /// Bins where the lineout itself has a peak of curvature (MIDAS's candidates: maxima of
    /// −Δ² of its SG7 curve) standing [`CURVATURE_SIGMAS`] above the noise there. A second
    /// peak has one even as a shoulder without a maximum of its own; what a symmetric model
    /// leaves of an asymmetric peak (a tail, a steeper side) has none: the lineout is convex
    /// there. Only residual peaks at such a bin count.
    shoulders: Vec<bool>,
}

/// Curvature, in noise σ of −Δ² of the SG7 curve, that a shoulder needs (see
/// `ResidualSearch::shoulders`).
const CURVATURE_SIGMAS: f64 = 3.0;
/// ‖SG7 ∗ (−1, 2, −1)‖₂: the noise σ of −Δ² of the SG7 curve per noise σ of the lineout.
const CURVATURE_NOISE: f64 = 0.534_522_483_824_848_7;

impl<'a> ResidualSearch<'a> {
    /// `None` when the background is not positive (e.g. dark-subtracted to 0): the noise scale
    /// says nothing then, and noise on a strong peak's flank would pass for a peak.
    fn new(
        x: &'a [f64],
        (corr, corr_bridged): (&'a [f64], &[f64]),
        bridged: &[f64],
        background: &[f64],
        min_prominence: f64,
        opts: &FitOptions,
    ) -> Option<Self> {
        let mut bg: Vec<f64> = background
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        if bg.is_empty() || x.len() < 5 {
            return None;
        }
        let k = bg.len() / 2;
        bg.select_nth_unstable_by(k, f64::total_cmp);
        let level = bg[k];
        let largest = corr
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let floor = RESIDUAL_FLOOR * largest;
        if !(level > 0.0 && floor > 0.0) {
            return None;
        }
        let scale: Vec<f64> = binomial_smooth5(bridged)
            .iter()
            .map(|&v| (v / level).max(1.0).sqrt())
            .collect();
        let s = savgol_smooth7(corr_bridged);
        let n = s.len();
        let neg_d2: Vec<f64> = (0..n)
            .map(|i| {
                if i == 0 || i + 1 == n {
                    0.0
                } else {
                    -(s[i + 1] - 2.0 * s[i] + s[i - 1])
                }
            })
            .collect();
        let sigma = min_prominence / DETECTION_SIGMAS;
        let shoulders = (0..n)
            .map(|i| {
                (2..n - 2).contains(&i)
                    && neg_d2[i] >= neg_d2[i - 1]
                    && neg_d2[i] >= neg_d2[i + 1]
                    && neg_d2[i] > CURVATURE_SIGMAS * CURVATURE_NOISE * sigma * scale[i]
            })
            .collect();
        Some(ResidualSearch {
            x,
            corr,
            edges: bin_edges(x, bin_size(x)),
            bin_average: opts.bin_average,
            needed: scale
                .iter()
                .map(|&k| (min_prominence * k).max(floor))
                .collect(),
            shoulders,
        })
    }

    /// Bins where the residual holds a peak of its own: a maximum of its SG7 curve standing
    /// `needed` above its foot (as [`detect_candidates`] measures it), within a bin of one of
    /// the lineout's `shoulders`, at least `min_sep` bins from every position already tried,
    /// most significant first, at most `room`.
    fn candidates(
        &self,
        positions: &[f64],
        fits: &[PeakFit],
        min_sep: usize,
        room: usize,
    ) -> Vec<usize> {
        let (x, n) = (self.x, self.x.len());
        if room == 0 {
            return Vec::new();
        }
        let mut residual = self.corr.to_vec();
        for fit in fits
            .iter()
            .filter(|f| f.status == FitStatus::Converged && f.area() > 0.0 && f.fwhm() > 0.0)
        {
            // The peak as the fit modelled it, out to where it is < 1/400 of its height, far
            // below what the search takes (RESIDUAL_NEAR): 3 FWHM of a Gaussian, 10 of a
            // Lorentzian's tail (Γ²/4d² of the height).
            let peak = PeakTerms::new(&fit.values[..4]);
            let reach = (3.0 + 7.0 * fit.values[COL_ETA].clamp(0.0, 1.0)) * fit.fwhm();
            let lo = x.partition_point(|&v| v < fit.center() - reach);
            let hi = x.partition_point(|&v| v <= fit.center() + reach);
            if self.bin_average && lo < hi {
                // Neighbouring bins share an edge: each edge's terms are computed once.
                let mut left = peak.edge(self.edges[lo].0);
                for i in lo..hi {
                    let (a, b) = self.edges[i];
                    let right = peak.edge(b);
                    residual[i] -= fit.area() * peak.bin_mean(&left, &right, 1.0 / (b - a));
                    left = right;
                }
            } else if !self.bin_average {
                for i in lo..hi {
                    residual[i] -= fit.area() * peak.profile(x[i]);
                }
            }
        }
        // Masked bins take their neighbours' residual, not the bridged lineout's.
        let residual = bridge_nan(&residual);
        // The fitted peaks' height near each bin: a residual peak under RESIDUAL_NEAR of it is
        // the fits' own misfit (where SNIP bends under a strong peak's tails), not a peak.
        let model: Vec<f64> = bridge_nan(self.corr)
            .iter()
            .zip(&residual)
            .map(|(c, r)| c - r)
            .collect();
        let near_height = |i: usize| {
            let (lo, hi) = (
                i.saturating_sub(SIGNIFICANCE_WINDOW),
                (i + SIGNIFICANCE_WINDOW).min(n - 1),
            );
            model[lo..=hi].iter().copied().fold(0.0, f64::max)
        };
        let taken: Vec<usize> = positions
            .iter()
            .map(|&p| x.partition_point(|&v| v < p).min(n - 1))
            .collect();
        let s = savgol_smooth7(&residual);
        let smooth = binomial_smooth5(&residual);
        let curvature = |i: usize| -(s[i - 1] - 2.0 * s[i] + s[i + 1]);
        let cands: Vec<(f64, usize)> = (2..n - 2)
            .filter(|&i| {
                curvature(i) > 0.0 && s[i] >= s[i - 1] && s[i] > s[i + 1] && residual[i] > 0.0
            })
            .filter(|&i| taken.iter().all(|&t| t.abs_diff(i) >= min_sep))
            .filter(|&i| self.shoulders[i - 1..=i + 1].iter().any(|&b| b))
            .map(|i| {
                let needed = self.needed[i].max(RESIDUAL_NEAR * near_height(i));
                let z = significance(&s, &smooth, i, SIGNIFICANCE_WINDOW) / needed;
                (z, i)
            })
            .filter(|&(z, _)| z >= 1.0)
            .collect();
        best_spaced(cands, room, min_sep)
    }
}

/// Whether peaks (ordered by centre) are distinct ones: none narrower than a quarter bin (a
/// spike on a noise point), no two closer than 3/4 of the wider one's FWHM (one peak split in
/// two), and of two within 3 FWHM, the smaller at least [`RESIDUAL_NEAR`] of the larger's area
/// (a sliver of misfit beside a strong peak).
fn distinct(peaks: &[PeakFit], bin: f64) -> bool {
    peaks.iter().all(|p| p.fwhm() >= SPIKE_FWHM_BINS * bin)
        && peaks.windows(2).all(|w| {
            let (gap, wide) = (w[1].center() - w[0].center(), w[0].fwhm().max(w[1].fwhm()));
            let (small, large) = (w[0].area().min(w[1].area()), w[0].area().max(w[1].area()));
            gap >= 0.75 * wide && (gap >= 3.0 * wide || small >= RESIDUAL_NEAR * large)
        })
}

/// A detected peak that fits narrower than this many bins under MIDAS's centre-sampled model
/// (`bin_average` off), with an area its errors do not bound ([`PeakFit::is_spike`]), is a
/// spike, not a ring: its area is a height times a vanishing width (33× a ring's true area
/// where a candidate collapsed onto a bin centre, error NaN or 1e6×). Such a peak is dropped,
/// and its job counts as failed ([`fit_job_or_parts`]). With bin means (the default) a ring
/// inside one bin fits as narrow, its width undetermined (error NaN), but its area is the
/// bin's excess: it is kept.
///
/// [`fit_job_or_parts`]: super::fit_job_or_parts
pub(crate) const SPIKE_FWHM_BINS: f64 = 0.25;

/// What [`select_peaks`] keeps a lineout's fits within: at most `max_peaks`, its bin size, its
/// x range, and the model's sampling.
fn selection_limits(
    x: &[f64],
    bin: f64,
    auto: &AutoOptions,
    opts: &FitOptions,
) -> (usize, f64, (f64, f64), bool) {
    (
        auto.max_peaks,
        bin,
        (x[0], x[x.len() - 1]),
        opts.bin_average,
    )
}

/// Keep converged peaks with area > 0, Γ > 0, no spike ([`SPIKE_FWHM_BINS`]) and the centre on the axis
/// (a candidate at the lineout's edge can slide off it onto the edge's slope); with more than 2,
/// drop widths above `max(5 · upper-median Γ, 2 · bin)`; keep the `max_peaks` largest areas,
/// ordered by centre.
fn select_peaks(
    fits: Vec<PeakFit>,
    (max_peaks, bin, x_range, bin_average): (usize, f64, (f64, f64), bool),
) -> Vec<PeakFit> {
    let mut kept: Vec<PeakFit> = fits
        .into_iter()
        .filter(|f| {
            f.status == FitStatus::Converged
                && f.area() > 0.0
                && f.fwhm() > 0.0
                && !f.is_spike(bin, bin_average)
                && f.center() >= x_range.0
                && f.center() <= x_range.1
        })
        .collect();
    if kept.len() > 2 {
        let mut widths: Vec<f64> = kept.iter().map(|f| f.fwhm()).collect();
        widths.sort_by(f64::total_cmp);
        let limit = (5.0 * widths[widths.len() / 2]).max(2.0 * bin);
        kept.retain(|f| f.fwhm() <= limit);
    }
    kept.sort_by(|a, b| b.area().total_cmp(&a.area()));
    kept.truncate(max_peaks);
    kept.sort_by(|a, b| a.center().total_cmp(&b.center()));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop as it was before the iteration count was bounded: every p, skipping 2p ≥ n.
    fn snip_unbounded(y: &[f64], iterations: usize) -> Vec<f64> {
        let n = y.len();
        let mut v: Vec<f64> = bridge_nan(y)
            .iter()
            .map(|&i| ((i.max(0.0) + 1.0).sqrt() + 1.0).ln().ln_1p())
            .collect();
        let mut old = v.clone();
        for p in (1..=iterations).rev() {
            if 2 * p >= n {
                continue;
            }
            old.copy_from_slice(&v);
            for i in p..n - p {
                v[i] = v[i].min(0.5 * (old[i - p] + old[i + p]));
            }
        }
        v.iter()
            .map(|&t| {
                let a = (t.exp() - 1.0).exp() - 1.0;
                (a * a - 1.0).max(0.0)
            })
            .collect()
    }

    fn lineout(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let x = i as f64;
                50.0 + 0.1 * x + 400.0 * (-((x - 0.4 * n as f64) / 2.0).powi(2)).exp()
            })
            .collect()
    }

    #[test]
    fn snip_bounded_loop_is_bit_identical() {
        for n in [0, 1, 2, 3, 4, 5, 7, 8, 100, 101] {
            let y = lineout(n);
            assert!(snip_background(&y, 0).iter().all(|&v| v == 0.0), "n={n}");
            for it in [1, 2, 3, 20, 49, 50, 51, 200] {
                let a = snip_background(&y, it);
                let b = snip_unbounded(&y, it);
                assert_eq!(
                    a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "n={n} iterations={it}"
                );
            }
        }
    }

    #[test]
    fn snip_huge_iteration_count_no_panic() {
        // 2^63 + 50 wrapped `2 * p` to 100 and indexed past the end; usize::MAX spun for ages.
        let y = lineout(200);
        let half = snip_background(&y, 100);
        for it in [1usize << 63, (1usize << 63) + 50, usize::MAX] {
            assert_eq!(snip_background(&y, it), half, "iterations={it}");
        }
        assert!(snip_background(&[], usize::MAX).is_empty());
        assert_eq!(snip_background(&[3.0], usize::MAX).len(), 1);
    }
}
