//! Float frames with a few NaN / ±∞: when the dense kernels may take them, and the spoiled bins
//! summed again afterwards by the kernels that leave those values out.

use rayon::prelude::*;

use super::row_parts::block_bins;
use super::{row_partition, Kernels, Options, OutBlock, Pixel, Sums};
use crate::gather;
use crate::map::DetectorMap;

/// Whether `nonfinite` NaN / ±∞ values over `n_frames` frames are few enough for the dense
/// kernels plus [`resum_spoiled_bins`] to beat the kernels that test every value. Each such
/// value spoils the bins of its pixel (entries/pixels of them); summing a bin again costs its
/// entries plus ~[`RESUM_BIN_COST`] entries' worth of load latency (a lone bin's loads are not
/// prefetched far ahead as a whole pass's are), while the testing kernels cost ~0.4 entry more
/// per map entry than the dense ones (measured on a Pilatus 2M, Zen 5, 2 threads: break-even
/// near 2 100 NaN a frame for a 1 px × 5° cake, 190 for a 1190-bin lineout). 0.3 keeps a
/// margin. Only for maps whose weights may be summed in any order: areas, or a folded map's
/// (MIDAS weights keep the C summation order).
pub fn few_spoiled_bins(map: &DetectorMap, n_frames: usize, nonfinite: usize) -> bool {
    let (pixels, bins) = (map.n_pixels() as f64, map.n_bins() as f64);
    let entries = map.pixel.len() as f64;
    map.gather_weights()
        && entries > 0.0
        && bins > 0.0
        && nonfinite as f64 <= n_frames as f64 * 0.3 * pixels / (RESUM_BIN_COST + entries / bins)
}

/// What summing one bin again costs beyond its own entries, in entries ([`few_spoiled_bins`]).
const RESUM_BIN_COST: f64 = 400.0;

/// After the dense kernels summed float frames holding a few NaN / ±∞ values: the bins whose
/// signal such a value spoiled (NaN or ±∞: a finite frame's sum never is) summed again by the
/// kernels that leave those values out, as if the whole frame had taken them (the lineout
/// covariance of shared pixels leaves them out in every kernel family). A frame whose spoiled
/// bins hold over a third of the map's entries (its NaN in a few wide patches) is summed
/// again whole.
pub(super) fn resum_spoiled_bins<T: Pixel>(
    map: &DetectorMap,
    frames: &[&[T]],
    opts: &Options,
    sums: &mut Sums,
) {
    let n_bins = sums.n_bins;
    if n_bins == 0 {
        return;
    }
    let with_var = !sums.variance.is_empty();
    let n_entries = map.pixel.len();
    let entries = |lo: usize, hi: usize| (map.indptr[hi] - map.indptr[lo]) as usize;
    let mut ranges: Vec<(usize, usize, usize)> = Vec::new(); // (frame, first bin, end)
    for (f, signal) in sums.signal.chunks(n_bins).enumerate() {
        let first = ranges.len();
        let mut spoiled_entries = 0;
        let mut b = 0;
        while b < n_bins {
            if signal[b].is_finite() {
                b += 1;
                continue;
            }
            let lo = b;
            while b < n_bins && !signal[b].is_finite() {
                b += 1;
            }
            spoiled_entries += entries(lo, b);
            let joins = ranges.len() > first;
            match ranges.last_mut() {
                // A few clean bins between two spoiled ones are summed again with them: one
                // kernel call instead of two.
                Some((_, _, hi)) if joins && lo - *hi <= RESUM_GAP => *hi = b,
                _ => ranges.push((f, lo, b)),
            }
        }
        if spoiled_entries * 3 > n_entries {
            ranges.truncate(first);
            let parts = row_partition(map, 8 * rayon::current_num_threads());
            ranges.extend(parts.into_iter().map(|(lo, hi)| (f, lo, hi)));
        }
    }
    if ranges.is_empty() {
        return;
    }
    // Tasks of consecutive ranges holding about equal entries (thousands of small ranges:
    // one task each would cost more in scheduling than their sums).
    let n_tasks = 8 * rayon::current_num_threads();
    let total: usize = ranges.iter().map(|&(_, lo, hi)| entries(lo, hi) + 1).sum();
    let per_task = total.div_ceil(n_tasks).max(1);
    let mut tasks: Vec<&[(usize, usize, usize)]> = Vec::new();
    let (mut start, mut held) = (0, 0);
    for (k, &(_, lo, hi)) in ranges.iter().enumerate() {
        held += entries(lo, hi) + 1;
        if held >= per_task {
            tasks.push(&ranges[start..=k]);
            (start, held) = (k + 1, 0);
        }
    }
    if start < ranges.len() {
        tasks.push(&ranges[start..]);
    }
    let kernels = Kernels {
        dense: false,
        // As the whole-map pass picks them: weighted maps take the scalar loop.
        use_masked_gather: map.weight.is_none() && gather::available::<T>(),
        run_form: None,
    };
    let redone: Vec<BinSums> = tasks
        .par_iter()
        .map(|task| {
            let n: usize = task.iter().map(|&(_, lo, hi)| hi - lo).sum();
            let mut r = BinSums {
                s: vec![0.0; n],
                a: vec![0.0; n],
                v: vec![0.0; if with_var { n } else { 0 }],
                c: vec![0; n],
            };
            let mut at = 0;
            for &(f, lo, hi) in task.iter() {
                let m = hi - lo;
                let (mut sr, mut ar) = ([&mut r.s[at..at + m]], [&mut r.a[at..at + m]]);
                let mut cr = [&mut r.c[at..at + m]];
                let mut vr = [if with_var {
                    &mut r.v[at..at + m]
                } else {
                    &mut []
                }];
                let mut out = OutBlock {
                    signal: &mut sr,
                    area: &mut ar,
                    variance: if with_var { &mut vr } else { &mut [] },
                    count: &mut cr,
                };
                block_bins(
                    map,
                    kernels,
                    &frames[f..f + 1],
                    (lo, hi),
                    false,
                    opts,
                    &mut out,
                );
                at += m;
            }
            r
        })
        .collect();
    for (task, r) in tasks.iter().zip(redone) {
        let mut at = 0;
        for &(f, lo, hi) in task.iter() {
            let (m, o) = (hi - lo, f * n_bins);
            sums.signal[o + lo..o + hi].copy_from_slice(&r.s[at..at + m]);
            sums.area[o + lo..o + hi].copy_from_slice(&r.a[at..at + m]);
            sums.count[o + lo..o + hi].copy_from_slice(&r.c[at..at + m]);
            if with_var {
                sums.variance[o + lo..o + hi].copy_from_slice(&r.v[at..at + m]);
            }
            at += m;
        }
    }
}

/// Clean bins between two spoiled ones that [`resum_spoiled_bins`] sums again with them.
const RESUM_GAP: usize = 4;

/// The sums of one task's bin ranges in [`resum_spoiled_bins`], one after another.
struct BinSums {
    s: Vec<f64>,
    a: Vec<f64>,
    v: Vec<f64>,
    c: Vec<u32>,
}
