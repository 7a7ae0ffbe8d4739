//! Sums → intensities: cake, lineout and their sigmas under radint's or MIDAS's rules.

use rayon::prelude::*;

use super::Sums;
use crate::map::DetectorMap;

/// Which rules turn accumulators into intensities (spec §5.2–5.3 for the MIDAS ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// radint: I = S/A (or S), empty bins = `empty_value`, lineout = Σ_η S / Σ_η A (or Σ_η S).
    Radint,
    /// MIDAS C CPU: I = S/A when S ≠ 0, masked-touched bins NaN, empty 0,
    /// lineout = mean of the non-zero, non-NaN η bins (0 if none).
    MidasCpu,
    /// MIDAS GPU: I = S/A (or S) where A > 1e-9 else 0, lineout = Σ I·A / Σ A over A > 1e-9.
    MidasGpu,
}

/// Lineout reduction over η for [`Rules::Radint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineoutMode {
    AreaWeighted,
    /// The MIDAS CPU rule, by name, on radint's cake.
    NonzeroMean,
}

#[derive(Debug, Clone, Copy)]
pub struct FinalizeOptions {
    pub normalize: bool,
    pub rules: Rules,
    pub lineout: LineoutMode,
    pub empty_value: f64,
    /// NaN out bins a masked pixel touched (MIDAS CPU rule; implied by `Rules::MidasCpu`).
    pub nan_masked_bins: bool,
}

impl FinalizeOptions {
    /// Sigma of an empty bin under radint's rules: the fill value where it could be a sigma
    /// (NaN, 0, positive), NaN for a negative fill, so no sigma is ever negative.
    pub fn empty_sigma(&self) -> f64 {
        if self.empty_value >= 0.0 {
            self.empty_value
        } else {
            f64::NAN
        }
    }
}

/// Cake and its sigma, η-major per frame (index `f·n_bins + e·n_r + r`, the layout of
/// `Result.cake` and of NXazint2d rows, so writers take them as they are), lineout (n_r) and its
/// sigma, per frame, frame-major. The sigmas are empty without variance.
#[derive(Debug, Clone, Default)]
pub struct Finalized {
    pub cake: Vec<f64>,
    pub cake_sigma: Vec<f64>,
    pub lineout: Vec<f64>,
    pub lineout_sigma: Vec<f64>,
}

const MIDAS_GPU_MIN_AREA: f64 = 1e-9;

/// Radial rows finalized per task: enough that each η row of the cake is written in runs of
/// whole cache lines.
const FINALIZE_ROWS: usize = 32;

/// Output buffers written through raw pointers by the finalize tasks, each task owning the
/// disjoint set of elements of its (frame, radial rows) block.
#[derive(Clone, Copy)]
struct Outputs {
    cake: *mut f64,
    cake_sigma: *mut f64,
    lineout: *mut f64,
    lineout_sigma: *mut f64,
}

// SAFETY: the pointers are only written at indices no other task writes (see `finalize`).
unsafe impl Send for Outputs {}
unsafe impl Sync for Outputs {}

impl Outputs {
    /// Write `x` at element `i` of the buffer `field` picks.
    ///
    /// # Safety
    /// `i` lies within that buffer's capacity and no other task writes element `i`.
    /// (A method, so that closures capture the whole `Sync` struct, not a raw-pointer field.)
    unsafe fn write(&self, field: fn(&Outputs) -> *mut f64, i: usize, x: f64) {
        field(self).add(i).write(x);
    }
}

/// Turn accumulators into intensities, in parallel over blocks of radial rows of every frame.
/// Reads bin-major sums (r·n_eta + e) and writes the cake η-major (see [`Finalized`]).
pub fn finalize(map: &DetectorMap, sums: &Sums, opts: &FinalizeOptions) -> Finalized {
    let n_eta = map.n_eta();
    let n_r = map.n_r();
    let n_bins = sums.n_bins;
    let n_frames = sums.n_frames;
    let with_var = !sums.variance.is_empty();
    let sized = |n: usize| if with_var { n } else { 0 };
    let mut cake = Vec::<f64>::with_capacity(n_frames * n_bins);
    let mut cake_sigma = Vec::<f64>::with_capacity(sized(n_frames * n_bins));
    let mut lineout = Vec::<f64>::with_capacity(n_frames * n_r);
    let mut lineout_sigma = Vec::<f64>::with_capacity(sized(n_frames * n_r));
    let out = Outputs {
        cake: cake.as_mut_ptr(),
        cake_sigma: cake_sigma.as_mut_ptr(),
        lineout: lineout.as_mut_ptr(),
        lineout_sigma: lineout_sigma.as_mut_ptr(),
    };
    let nan_masked = opts.nan_masked_bins || opts.rules == Rules::MidasCpu;
    let blocks_per_frame = n_r.div_ceil(FINALIZE_ROWS);
    (0..n_frames * blocks_per_frame)
        .into_par_iter()
        .for_each_init(
            || {
                let block = FINALIZE_ROWS * n_eta;
                (vec![0.0; block], vec![0.0; sized(block)])
            },
            |(block_cake, block_sigma), task| {
                let f = task / blocks_per_frame;
                let r0 = (task % blocks_per_frame) * FINALIZE_ROWS;
                let rows = (r0 + FINALIZE_ROWS).min(n_r) - r0;
                for k in 0..rows {
                    let bin0 = (r0 + k) * n_eta;
                    let b0 = f * n_bins + bin0;
                    let bins = b0..b0 + n_eta;
                    let v = if with_var {
                        &sums.variance[bins.clone()]
                    } else {
                        &[][..]
                    };
                    let row = k * n_eta..(k + 1) * n_eta;
                    let (line, line_sigma) = finalize_row(
                        &sums.signal[bins.clone()],
                        &sums.area[bins.clone()],
                        v,
                        &sums.count[bins],
                        &map.mask_hit[bin0..bin0 + n_eta],
                        nan_masked,
                        sums.lineout_cross
                            .get(f * n_r + r0 + k)
                            .copied()
                            .unwrap_or(0.0),
                        opts,
                        &mut block_cake[row.clone()],
                        if with_var {
                            &mut block_sigma[row]
                        } else {
                            &mut []
                        },
                    );
                    // SAFETY: lineout element f·n_r + r belongs to this task alone and lies
                    // within the capacity reserved above.
                    unsafe {
                        out.write(|o| o.lineout, f * n_r + r0 + k, line);
                        if with_var {
                            out.write(|o| o.lineout_sigma, f * n_r + r0 + k, line_sigma);
                        }
                    }
                }
                // Rows r0..r0 + rows of every η row, written as runs along r.
                // SAFETY: cake elements f·n_bins + e·n_r + r for r in this task's rows belong
                // to it alone and lie within the capacities reserved above.
                unsafe {
                    for e in 0..n_eta {
                        let at = f * n_bins + e * n_r + r0;
                        for k in 0..rows {
                            out.write(|o| o.cake, at + k, block_cake[k * n_eta + e]);
                        }
                        if with_var {
                            for k in 0..rows {
                                out.write(|o| o.cake_sigma, at + k, block_sigma[k * n_eta + e]);
                            }
                        }
                    }
                }
            },
        );
    // SAFETY: the tasks above covered every (frame, r) and so every element (n_bins = n_r·n_eta).
    unsafe {
        cake.set_len(n_frames * n_bins);
        lineout.set_len(n_frames * n_r);
        if with_var {
            cake_sigma.set_len(n_frames * n_bins);
            lineout_sigma.set_len(n_frames * n_r);
        }
    }
    Finalized {
        cake,
        cake_sigma,
        lineout,
        lineout_sigma,
    }
}

#[allow(clippy::too_many_arguments)]
fn finalize_row(
    s: &[f64],
    a: &[f64],
    v: &[f64],
    c: &[u32],
    masked: &[u8],
    nan_masked: bool,
    cross: f64,
    opts: &FinalizeOptions,
    cake: &mut [f64],
    sigma: &mut [f64],
) -> (f64, f64) {
    let with_var = !v.is_empty();
    // One loop per rule (the rule is the same for every bin): branch-free bodies that vectorize.
    let n = cake.len();
    let (s, a, c) = (&s[..n], &a[..n], &c[..n]);
    let scale = |x: f64, area: f64| if opts.normalize { x / area } else { x };
    match opts.rules {
        Rules::Radint => {
            let empty = opts.empty_value;
            let empty_sigma = opts.empty_sigma();
            // `&`, not `&&`, and the quotient taken for every bin: selects, no branches.
            if opts.normalize {
                for e in 0..n {
                    let q = s[e] / a[e];
                    cake[e] = if (c[e] != 0) & (a[e] > 0.0) { q } else { empty };
                }
            } else {
                for e in 0..n {
                    cake[e] = if (c[e] != 0) & (a[e] > 0.0) {
                        s[e]
                    } else {
                        empty
                    };
                }
            }
            if with_var {
                let (v, sigma) = (&v[..n], &mut sigma[..n]);
                let norm = if opts.normalize { 1.0 } else { 0.0 };
                for e in 0..n {
                    // a⁰ = 1 without normalization: one branch-free body for both.
                    let q = v[e].sqrt() / (norm * a[e] + (1.0 - norm));
                    sigma[e] = if (c[e] != 0) & (a[e] > 0.0) {
                        q
                    } else {
                        empty_sigma
                    };
                }
            }
        }
        Rules::MidasCpu => {
            for e in 0..n {
                let divide = s[e] != 0.0 && opts.normalize && a[e] != 0.0;
                cake[e] = if divide { s[e] / a[e] } else { s[e] };
                if with_var {
                    // C's `s != 0` test only spares 0 / a for the value (0 either way); the
                    // sigma of a normalized bin is per area whatever its signal.
                    sigma[e] = if opts.normalize && a[e] != 0.0 {
                        v[e].sqrt() / a[e]
                    } else {
                        v[e].sqrt()
                    };
                }
            }
        }
        Rules::MidasGpu => {
            for e in 0..n {
                let filled = a[e] > MIDAS_GPU_MIN_AREA;
                cake[e] = if filled { scale(s[e], a[e]) } else { 0.0 };
                if with_var {
                    sigma[e] = if filled {
                        scale(v[e].sqrt(), a[e])
                    } else {
                        0.0
                    };
                }
            }
        }
    }
    if nan_masked {
        for e in 0..n {
            if masked[e] != 0 {
                cake[e] = f64::NAN;
                if with_var {
                    sigma[e] = f64::NAN;
                }
            }
        }
    }
    let use_nonzero_mean = opts.rules == Rules::MidasCpu
        || (opts.rules == Rules::Radint && opts.lineout == LineoutMode::NonzeroMean);
    if use_nonzero_mean {
        // Empty bins never count, whatever value they were filled with (`empty_value`).
        let (mut sum, mut var, mut n, mut inv_area, mut left_out) = (0.0, 0.0, 0usize, 0.0, false);
        for e in 0..cake.len() {
            let x = cake[e];
            if x != 0.0 && !x.is_nan() && c[e] != 0 && a[e] > 0.0 {
                sum += x;
                if with_var {
                    var += sigma[e] * sigma[e];
                }
                inv_area += 1.0 / a[e];
                n += 1;
            } else if c[e] != 0 {
                left_out = true;
            }
        }
        if with_var && n > 0 && !left_out {
            // Pixels shared between η bins correlate them: Σ_{e≠e'} w·w'·var, per area² of
            // the bins (taken at their mean 1/area) when the cake is normalized.
            let per_area = if opts.normalize {
                inv_area / n as f64
            } else {
                1.0
            };
            var += cross * per_area * per_area;
        }
        return if n == 0 {
            if opts.rules == Rules::MidasCpu {
                (0.0, 0.0)
            } else {
                (opts.empty_value, opts.empty_sigma())
            }
        } else {
            (sum / n as f64, var.sqrt() / n as f64)
        };
    }
    match opts.rules {
        Rules::MidasGpu => {
            let (mut num, mut den, mut var, mut left_out) = (0.0, 0.0, 0.0, false);
            for e in 0..cake.len() {
                if a[e] > MIDAS_GPU_MIN_AREA {
                    num += cake[e] * a[e];
                    den += a[e];
                    if with_var {
                        var += sigma[e] * sigma[e] * a[e] * a[e];
                    }
                } else if c[e] != 0 {
                    left_out = true;
                }
            }
            if with_var && opts.normalize && !left_out {
                var += cross; // the shared pixels' covariance, as in radint's lineout
            }
            if den > 0.0 {
                (num / den, var.sqrt() / den)
            } else {
                (0.0, 0.0)
            }
        }
        _ => {
            // Four partial sums per quantity: independent add chains (the single chain's
            // latency was most of this function's time).
            const LANES: usize = 4;
            let (mut ss, mut aa, mut vv, mut cc) = ([0.0; LANES], [0.0; LANES], [0.0; LANES], 0u64);
            let keep = |e: usize| !nan_masked || masked[e] == 0;
            let mut add = |e: usize, lane: usize| {
                let k = keep(e);
                ss[lane] += if k { s[e] } else { 0.0 };
                aa[lane] += if k { a[e] } else { 0.0 };
                cc += if k { c[e] as u64 } else { 0 };
                if with_var {
                    vv[lane] += if k { v[e] } else { 0.0 };
                }
            };
            let whole = n - n % LANES;
            for e0 in (0..whole).step_by(LANES) {
                for lane in 0..LANES {
                    add(e0 + lane, lane);
                }
            }
            for e in whole..n {
                add(e, 0);
            }
            let total = |x: [f64; LANES]| (x[0] + x[1]) + (x[2] + x[3]);
            // Pixels shared between η bins: their covariance, unless a bin left out here
            // (masked-touched, NaN'd) may hold some of them.
            let dropped = nan_masked && masked[..n].iter().any(|&m| m != 0);
            let shared = if dropped { 0.0 } else { cross };
            let (ss, aa, vv) = (total(ss), total(aa), total(vv) + shared);
            if cc == 0 || aa <= 0.0 {
                (opts.empty_value, opts.empty_sigma())
            } else if opts.normalize {
                (ss / aa, vv.sqrt() / aa)
            } else {
                (ss, vv.sqrt())
            }
        }
    }
}
