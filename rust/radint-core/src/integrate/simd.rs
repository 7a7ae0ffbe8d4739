//! Adapters from [`OutBlock`] and [`Options`] to the AVX-512 kernels of [`crate::gather`]
//! (gathers) and [`crate::runs`] (run-length loads), with their stand-ins off x86-64, which
//! nothing calls there.

use super::{Options, OutBlock, Pixel};
use crate::map::DetectorMap;
use crate::runs::PixelRuns;
// The stand-ins off x86-64 need neither.
#[cfg(target_arch = "x86_64")]
use super::ErrorModel;
#[cfg(target_arch = "x86_64")]
use crate::{gather, runs};

/// [`gather::poisson_weighted_sum`] of one row's shared pixels (they are map pixels, so the
/// map's largest pixel bounds them).
#[cfg(target_arch = "x86_64")]
pub(super) fn poisson_cross<T: Pixel>(
    map: &DetectorMap,
    pixel: &[u32],
    weight: &[f64],
    frame: &[T],
    finite: bool,
) -> f64 {
    gather::poisson_weighted_sum(pixel, weight, map.max_pixel(), frame, !finite)
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn poisson_cross<T: Pixel>(
    _: &DetectorMap,
    _: &[u32],
    _: &[f64],
    _: &[T],
    _: bool,
) -> f64 {
    unreachable!("gather::available() is false off x86-64")
}

/// [`runs::dense_bins`] for one frame (area and count are the map's, set by `integrate`).
#[cfg(target_arch = "x86_64")]
pub(super) fn run_bins<T: Pixel>(
    map: &DetectorMap,
    runs: &PixelRuns,
    frame: &[T],
    lo: usize,
    hi: usize,
    out: &mut OutBlock,
) {
    let variance: &mut [f64] = match out.variance.first_mut() {
        Some(v) => v,
        None => &mut [],
    };
    runs::dense_bins(runs, &map.area, frame, lo, hi, out.signal[0], variance);
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn run_bins<T: Pixel>(
    _: &DetectorMap,
    _: &PixelRuns,
    _: &[T],
    _: usize,
    _: usize,
    _: &mut OutBlock,
) {
    unreachable!("runs::available() is false off x86-64")
}

/// [`runs::dense_bins_pair`] for one pair of frames (area and count set by `integrate`).
#[cfg(target_arch = "x86_64")]
pub(super) fn run_pair_bins<T: Pixel>(
    map: &DetectorMap,
    runs: &PixelRuns,
    frames: &[&[T]],
    lo: usize,
    hi: usize,
    out: &mut OutBlock,
) {
    let frames: [&[T]; 2] = frames.try_into().expect("a pair of frames");
    let [s0, s1] = out.signal else {
        unreachable!("outputs of a pair")
    };
    let variance: [&mut [f64]; 2] = match out.variance {
        [v0, v1] => [v0, v1],
        _ => [&mut [], &mut []],
    };
    runs::dense_bins_pair(runs, &map.area, frames, lo, hi, [s0, s1], variance);
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn run_pair_bins<T: Pixel>(
    _: &DetectorMap,
    _: &PixelRuns,
    _: &[&[T]],
    _: usize,
    _: usize,
    _: &mut OutBlock,
) {
    unreachable!("runs::available() is false off x86-64")
}

/// [`gather::masked_bins`] for one frame.
#[cfg(target_arch = "x86_64")]
pub(super) fn masked_gather_bins<T: Pixel>(
    map: &DetectorMap,
    frame: &[T],
    lo: usize,
    hi: usize,
    opts: &Options,
    out: &mut OutBlock,
) {
    let (inputs, model) = masked_inputs(opts);
    let variance: &mut [f64] = match out.variance.first_mut() {
        Some(v) => v,
        None => &mut [],
    };
    let sums = gather::MaskedSums {
        signal: out.signal[0],
        area: out.area[0],
        variance,
        count: out.count[0],
    };
    gather::masked_bins(
        &map.indptr,
        &map.pixel,
        &map.area,
        map.max_pixel(),
        frame,
        inputs,
        model,
        lo,
        hi,
        sums,
    );
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn masked_gather_bins<T: Pixel>(
    _: &DetectorMap,
    _: &[T],
    _: usize,
    _: usize,
    _: &Options,
    _: &mut OutBlock,
) {
    unreachable!("gather::available() is false off x86-64")
}

/// The per-pixel inputs and variance model of `opts` for the masked gather kernels.
#[cfg(target_arch = "x86_64")]
fn masked_inputs<'a>(opts: &Options<'a>) -> (gather::PixelInputs<'a>, gather::MaskedVariance) {
    let (model, given) = match opts.error_model {
        ErrorModel::None => (gather::MaskedVariance::None, None),
        ErrorModel::Poisson => (gather::MaskedVariance::Poisson, None),
        ErrorModel::Given(v) => (gather::MaskedVariance::Given, Some(v)),
    };
    let inputs = gather::PixelInputs {
        dark: opts.dark,
        scale: opts.scale,
        variance: given,
    };
    (inputs, model)
}

/// [`gather::masked_bins_stack`] for one block of [`gather::STACK_BLOCK`] frames (`out` holds
/// exactly their outputs).
#[cfg(target_arch = "x86_64")]
pub(super) fn masked_gather_stack_bins<T: Pixel>(
    map: &DetectorMap,
    frames: &[&[T]],
    lo: usize,
    opts: &Options,
    out: &mut OutBlock,
) {
    let (inputs, model) = masked_inputs(opts);
    let mut signal = out.signal.iter_mut();
    let mut area = out.area.iter_mut();
    let mut variance = out.variance.iter_mut();
    let mut count = out.count.iter_mut();
    let sums: [gather::MaskedSums; gather::STACK_BLOCK] =
        std::array::from_fn(|_| gather::MaskedSums {
            signal: signal.next().expect("one output per frame"),
            area: area.next().expect("one output per frame"),
            variance: match variance.next() {
                Some(v) => v,
                None => &mut [],
            },
            count: count.next().expect("one output per frame"),
        });
    gather::masked_bins_stack(
        &map.indptr,
        &map.pixel,
        &map.area,
        map.max_pixel(),
        frames,
        inputs,
        model,
        lo,
        sums,
    );
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn masked_gather_stack_bins<T: Pixel>(
    _: &DetectorMap,
    _: &[&[T]],
    _: usize,
    _: &Options,
    _: &mut OutBlock,
) {
    unreachable!("gather::available() is false off x86-64")
}
