//! The dense gather kernels over the map's [`Tiles`] layout: frames whose every value counts,
//! area weights, AVX-512.

use rayon::prelude::*;

use super::row_parts::cross_rows;
use super::{Options, Pixel, Sums};
use crate::gather;
use crate::map::DetectorMap;
use crate::tiles::Tiles;

/// Bins one task of [`pieces_to_bins`] fills.
const BIN_CHUNK: usize = 4096;

/// Radial rows one task of the tiled path's lineout covariance takes.
const CROSS_ROW_CHUNK: usize = 64;

/// The dense gather kernels over the map's [`Tiles`]: parts of about equal entries, frames in
/// blocks of [`gather::DENSE_STACK_BLOCK`] sharing each entry's load (the rest one by one), each part's piece sums written straight into their bins
/// where every bin is one piece (cakes), else summed into the bins afterwards; then, with a
/// variance, the lineout covariance of shared pixels in a pass of its own (a part holds whole
/// wedges or image blocks, not whole radial rows).
pub(super) fn tiled_sums<T: Pixel>(
    map: &DetectorMap,
    tiles: &Tiles,
    frames: &[&[T]],
    opts: &Options,
    sums: &mut Sums,
) {
    let n_frames = frames.len();
    let n_pieces = tiles.n_pieces();
    let n_bins = sums.n_bins;
    let finite = sums.nonfinite == 0;
    let with_var = !sums.variance.is_empty();
    let direct = tiles.one_piece_per_bin();
    let (mut piece_signal, mut piece_variance) = (Vec::new(), Vec::new());
    let (signal_out, variance_out, stride) = if direct {
        (
            Scatter::of(&mut sums.signal),
            Scatter::of(&mut sums.variance),
            n_bins,
        )
    } else {
        piece_signal = vec![0.0; n_frames * n_pieces];
        if with_var {
            piece_variance = vec![0.0; n_frames * n_pieces];
        }
        (
            Scatter::of(&mut piece_signal),
            Scatter::of(&mut piece_variance),
            n_pieces,
        )
    };
    let max_pixel = map.max_pixel();
    let parts = tiles.partition(8 * rayon::current_num_threads());
    parts.par_iter().for_each(|&(lo, hi)| {
        let n = hi - lo;
        // With the layout's own invariant (every bin below its bin count), what makes every
        // `put` below land inside its array.
        assert!(hi <= n_pieces && tiles.n_bins() == n_bins);
        let block = gather::DENSE_STACK_BLOCK;
        let mut s = vec![0.0; block * n];
        let mut v = vec![0.0; if with_var { block * n } else { 0 }];
        let mut f0 = 0;
        while f0 < n_frames {
            // A whole block, or the rest one frame at a time.
            let nb = if n_frames - f0 >= block { block } else { 1 };
            {
                let mut s_rows: Vec<&mut [f64]> = s.chunks_mut(n).take(nb).collect();
                let mut v_rows: Vec<&mut [f64]> = v.chunks_mut(n.max(1)).take(nb).collect();
                if nb == block {
                    let frame_block = &frames[f0..f0 + nb];
                    dense_pieces_stack(
                        tiles,
                        max_pixel,
                        frame_block,
                        (lo, hi),
                        &mut s_rows,
                        &mut v_rows,
                    );
                } else {
                    let var: &mut [f64] = match v_rows.first_mut() {
                        Some(v) => v,
                        None => &mut [],
                    };
                    dense_pieces(tiles, max_pixel, frames[f0], (lo, hi), s_rows[0], var);
                }
            }
            for k in 0..nb {
                let row = (f0 + k) * stride;
                for i in 0..n {
                    let at = row
                        + if direct {
                            tiles.bin[lo + i] as usize
                        } else {
                            lo + i
                        };
                    // SAFETY: `at` is frame f0+k's slot of piece lo+i (or of its bin, which has
                    // no other piece), inside the array (asserted above): the parts partition
                    // the pieces, so no two tasks write the same element, and nothing else
                    // reads the arrays until the loop ends.
                    unsafe {
                        signal_out.put(at, s[k * n + i]);
                        if with_var {
                            variance_out.put(at, v[k * n + i]);
                        }
                    }
                }
            }
            f0 += nb;
        }
    });
    if !direct {
        pieces_to_bins(tiles, &piece_signal, &mut sums.signal);
        if with_var {
            pieces_to_bins(tiles, &piece_variance, &mut sums.variance);
        }
    }
    if with_var {
        map.eta_cross();
        let n_r = map.n_r().max(1);
        sums.lineout_cross
            .par_chunks_mut(n_r)
            .zip(frames.par_iter())
            .for_each(|(cross, frame)| {
                cross
                    .par_chunks_mut(CROSS_ROW_CHUNK)
                    .enumerate()
                    .for_each(|(c, rows)| {
                        let first = c * CROSS_ROW_CHUNK;
                        cross_rows(
                            map,
                            frame,
                            opts,
                            true,
                            finite,
                            (first, first + rows.len()),
                            rows,
                        )
                    });
            });
    }
}

/// [`gather::dense_bins`] over pieces `lo..hi`.
#[cfg(target_arch = "x86_64")]
fn dense_pieces<T: Pixel>(
    tiles: &Tiles,
    max_pixel: Option<u32>,
    frame: &[T],
    (lo, hi): (usize, usize),
    signal: &mut [f64],
    variance: &mut [f64],
) {
    gather::dense_bins(tiles, max_pixel, frame, lo, hi, signal, variance);
}

#[cfg(not(target_arch = "x86_64"))]
fn dense_pieces<T: Pixel>(
    _: &Tiles,
    _: Option<u32>,
    _: &[T],
    _: (usize, usize),
    _: &mut [f64],
    _: &mut [f64],
) {
    unreachable!("gather::available() is false off x86-64")
}

/// [`gather::dense_bins_stack`] over pieces `lo..hi`.
#[cfg(target_arch = "x86_64")]
fn dense_pieces_stack<T: Pixel>(
    tiles: &Tiles,
    max_pixel: Option<u32>,
    frames: &[&[T]],
    (lo, hi): (usize, usize),
    signal: &mut [&mut [f64]],
    variance: &mut [&mut [f64]],
) {
    gather::dense_bins_stack(tiles, max_pixel, frames, lo, hi, signal, variance);
}

#[cfg(not(target_arch = "x86_64"))]
fn dense_pieces_stack<T: Pixel>(
    _: &Tiles,
    _: Option<u32>,
    _: &[&[T]],
    _: (usize, usize),
    _: &mut [&mut [f64]],
    _: &mut [&mut [f64]],
) {
    unreachable!("gather::available() is false off x86-64")
}

/// An output array the parts of [`tiled_sums`] write into at disjoint places.
#[derive(Clone, Copy)]
struct Scatter {
    base: *mut f64,
    len: usize,
}

// SAFETY: a `Scatter` is only written through `put`, whose callers guarantee that no two
// threads write the same element and that the array outlives the parallel loop.
unsafe impl Send for Scatter {}
unsafe impl Sync for Scatter {}

impl Scatter {
    fn of(data: &mut [f64]) -> Scatter {
        Scatter {
            base: data.as_mut_ptr(),
            len: data.len(),
        }
    }

    /// # Safety
    /// `at` is below the array's length and no other thread writes or reads element `at`
    /// meanwhile.
    #[inline(always)]
    unsafe fn put(&self, at: usize, value: f64) {
        debug_assert!(at < self.len, "scatter index {at} past {}", self.len);
        *self.base.add(at) = value;
    }
}

/// Per frame, each bin's value = the sum of its pieces' (`pieces`: n_frames × n_pieces).
fn pieces_to_bins(tiles: &Tiles, pieces: &[f64], bins: &mut [f64]) {
    let n_pieces = tiles.n_pieces();
    let n_bins = tiles.n_bins();
    if n_bins == 0 || n_pieces == 0 {
        return;
    }
    bins.par_chunks_mut(n_bins)
        .zip(pieces.par_chunks(n_pieces))
        .for_each(|(out, piece)| {
            out.par_chunks_mut(BIN_CHUNK)
                .enumerate()
                .for_each(|(c, chunk)| {
                    for (j, value) in chunk.iter_mut().enumerate() {
                        let b = c * BIN_CHUNK + j;
                        let (lo, hi) = (
                            tiles.bin_indptr[b] as usize,
                            tiles.bin_indptr[b + 1] as usize,
                        );
                        *value = tiles.bin_pieces[lo..hi]
                            .iter()
                            .map(|&k| piece[k as usize])
                            .sum();
                    }
                });
        });
}
