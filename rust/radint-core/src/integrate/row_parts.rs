//! Every kernel family but the dense gathers, over parts of whole radial rows: a pass per block
//! of frames, each followed by the block's lineout covariance of those rows.

use rayon::prelude::*;

use super::scalar::{bins_frames, dense_dispatch, prefetch_pixel};
use super::simd::{
    masked_gather_bins, masked_gather_stack_bins, poisson_cross, run_bins, run_pair_bins,
};
use super::{
    split_parts, ErrorModel, Kernels, Options, OutBlock, Pixel, Precision, Sums, FRAME_BLOCK,
};
use crate::gather;
use crate::map::DetectorMap;

/// Every kernel family but the dense gathers: parts of whole radial rows (`parts`; `row_parts`
/// the same as row ranges), each pass over a block of frames followed by that block's lineout
/// covariance of the rows (their shared pixels' values are still in cache).
pub(super) fn block_sums<T: Pixel>(
    map: &DetectorMap,
    kernels: Kernels,
    frames: &[&[T]],
    opts: &Options,
    parts: &[(usize, usize)],
    row_parts: &[(usize, usize)],
    sums: &mut Sums,
) {
    let n_frames = frames.len();
    let n_bins = sums.n_bins;
    let with_var = !sums.variance.is_empty();
    let finite = sums.nonfinite == 0;
    let signal = split_parts(&mut sums.signal, n_bins, parts);
    let area = split_parts(&mut sums.area, n_bins, parts);
    let variance = split_parts(&mut sums.variance, n_bins, parts);
    let count = split_parts(&mut sums.count, n_bins, parts);
    let cross = split_parts(&mut sums.lineout_cross, map.n_r(), row_parts);
    parts
        .par_iter()
        .zip(row_parts)
        .zip(signal)
        .zip(area)
        .zip(variance)
        .zip(count)
        .zip(cross)
        .for_each(
            |((((((&bins, &rows), mut s), mut a), mut v), mut c), mut x)| {
                let mut f0 = 0;
                while f0 < n_frames {
                    // Frames in pairs share the CSR stream (see `gather::STACK_BLOCK`).
                    let paired = kernels.run_form.is_some() && n_frames - f0 >= gather::STACK_BLOCK;
                    let nb = if paired {
                        gather::STACK_BLOCK
                    } else {
                        (n_frames - f0).min(FRAME_BLOCK)
                    };
                    let block = &frames[f0..f0 + nb];
                    let mut out = OutBlock {
                        signal: &mut s[f0..f0 + nb],
                        area: &mut a[f0..f0 + nb],
                        variance: if with_var {
                            &mut v[f0..f0 + nb]
                        } else {
                            &mut []
                        },
                        count: &mut c[f0..f0 + nb],
                    };
                    block_bins(map, kernels, block, bins, paired, opts, &mut out);
                    // The block's pixels of these rows were just read: their shared pixels' values
                    // are still in cache (a pass of its own read each from memory: a tenth of a
                    // Pilatus 2M stack's time).
                    if with_var {
                        for (k, frame) in block.iter().enumerate() {
                            cross_rows(map, frame, opts, kernels.dense, finite, rows, x[f0 + k]);
                        }
                    }
                    f0 += nb;
                }
            },
        );
}

/// Sums of one block of frames over bins `lo..hi` into `out`; `paired`: the block is one
/// [`gather::STACK_BLOCK`] for the pair kernels.
pub(super) fn block_bins<T: Pixel>(
    map: &DetectorMap,
    kernels: Kernels,
    block: &[&[T]],
    (lo, hi): (usize, usize),
    paired: bool,
    opts: &Options,
    out: &mut OutBlock,
) {
    if paired {
        let runs = kernels.run_form.expect("pairs run only with the run form");
        run_pair_bins(map, runs, block, lo, hi, out);
        return;
    }
    if kernels.dense {
        for (k, &one) in block.iter().enumerate() {
            let mut single = out.frame(k);
            if let Some(r) = kernels.run_form {
                run_bins(map, r, one, lo, hi, &mut single);
            } else {
                match opts.precision {
                    Precision::Double => {
                        dense_dispatch::<T, f64>(map, one, lo, hi, opts, &mut single)
                    }
                    Precision::Single => {
                        dense_dispatch::<T, f32>(map, one, lo, hi, opts, &mut single)
                    }
                }
            }
        }
        return;
    }
    if kernels.use_masked_gather {
        let mut k = 0;
        while k < block.len() {
            if block.len() - k >= gather::STACK_BLOCK {
                let pair = k..k + gather::STACK_BLOCK;
                let mut sub = out.frames(pair.clone());
                masked_gather_stack_bins(map, &block[pair], lo, opts, &mut sub);
                k += gather::STACK_BLOCK;
            } else {
                masked_gather_bins(map, block[k], lo, hi, opts, &mut out.frame(k));
                k += 1;
            }
        }
        return;
    }
    match opts.precision {
        Precision::Double => bins_frames::<T, f64>(map, block, lo, hi, opts, out),
        Precision::Single => bins_frames::<T, f32>(map, block, lo, hi, opts, out),
    }
}

/// Shared pixels ahead whose frame values [`cross_rows`] prefetches.
const CROSS_PREFETCH_AHEAD: usize = 16;

/// [`Sums::lineout_cross`] of one frame for radial rows `rows` (into `out`, one per row): Σ over
/// each row's shared pixels of weight·scale²·var, over the pixels the bins count (value·scale
/// finite), as the kernels do. `dense`: every value of the frame counts (see `integrate`).
pub(super) fn cross_rows<T: Pixel>(
    map: &DetectorMap,
    frame: &[T],
    opts: &Options,
    dense: bool,
    finite: bool,
    rows: (usize, usize),
    out: &mut [f64],
) {
    let cross = map.eta_cross();
    // No dark or scale (`dense`): max(raw, 1) gathered in 8 lanes, NaN and ±∞ left out unless
    // the frames hold none (`finite`).
    let gathered =
        dense && matches!(opts.error_model, ErrorModel::Poisson) && gather::available::<T>();
    for (r, acc) in (rows.0..rows.1).zip(out.iter_mut()) {
        let (lo, hi) = (cross.indptr[r] as usize, cross.indptr[r + 1] as usize);
        if gathered {
            *acc = poisson_cross(
                map,
                &cross.pixel[lo..hi],
                &cross.weight[lo..hi],
                frame,
                finite,
            );
            continue;
        }
        let mut sum = 0.0;
        for e in lo..hi {
            // Shared pixels lie around the row's ring, each on another image row.
            if let Some(&ahead) = cross.pixel[..hi].get(e + CROSS_PREFETCH_AHEAD) {
                prefetch_pixel(frame, ahead as usize);
            }
            let p = cross.pixel[e] as usize;
            let scale = opts.scale.map_or(1.0, |s| s[p]);
            let dark = opts.dark.map_or(0.0, |d| d[p]);
            let raw = frame[p].to_f64();
            if !(scale * (raw - dark)).is_finite() {
                continue;
            }
            let var = match opts.error_model {
                ErrorModel::Poisson => raw.max(1.0),
                ErrorModel::Given(given) => given[p],
                ErrorModel::None => 0.0,
            };
            sum += cross.weight[e] * scale * scale * var;
        }
        *acc = sum;
    }
}
