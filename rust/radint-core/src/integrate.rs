//! CSR integration: frames × [`DetectorMap`] → per-bin accumulators → cake and lineout.
//!
//! Per bin, over its unmasked entries (pixel p, overlap a, signal weight w = a unless the map
//! carries MIDAS weights), with D = raw − dark and per-pixel scale s = 1/c (c = solid angle ×
//! polarization × flat; NaN = masked):
//! `signal = Σ w·D·s`, `area = Σ a`, `variance = Σ (w·s)²·var`, `count = #entries`.
//! Entries whose value is NaN (NaN pixel, NaN dark, masked pixel) are skipped entirely.
//! Work is split over rayon by runs of whole radial rows holding similar entry counts, so the
//! lineout can be reduced in the same pass and no two threads ever write one bin (no atomics).
//!
//! Kernels: where the CPU has AVX-512 (and gathers are not slowed, see
//! [`gather::gathers_wanted`]) every frame with area weights goes through the gather kernels of
//! [`crate::gather`]; where gathers are slowed, integer frames without dark or per-pixel scale go
//! through the run-length kernels of [`crate::runs`] (contiguous masked loads); maps with MIDAS
//! weights and the remaining cases take the scalar loops here, which share one pass over the map
//! among 8 frames of a stack.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gather::{self, GatherKind};
use crate::map::DetectorMap;
use crate::runs::{self, PixelRuns};
use crate::scan::count_nonfinite;
use crate::tiles::Tiles;

/// A pixel type a frame may hold; read in place, converted per entry.
pub trait Pixel: Copy + Send + Sync + 'static {
    /// Whether values can be NaN (and so need the masking checks).
    const IS_FLOAT: bool;
    /// How the SIMD gather kernel loads this type (if at all).
    const GATHER: GatherKind;
    fn to_f64(self) -> f64;
    fn to_f32(self) -> f32;
    /// How many of `values` are NaN or ±∞ (none for integers).
    fn count_nonfinite(values: &[Self]) -> usize;
}

macro_rules! impl_pixel {
    ($is_float:expr, $count:expr; $($t:ty => $gather:ident),*) => {$(
        impl Pixel for $t {
            const IS_FLOAT: bool = $is_float;
            const GATHER: GatherKind = GatherKind::$gather;
            #[inline(always)]
            fn to_f64(self) -> f64 { self as f64 }
            #[inline(always)]
            fn to_f32(self) -> f32 { self as f32 }
            fn count_nonfinite(values: &[Self]) -> usize { $count(values) }
        }
    )*};
}
impl_pixel!(false, |_| 0; u8 => U8, u16 => U16, u32 => U32, i32 => I32, i64 => None, u64 => None);
// The exponent bits, summed in u32 per block: 2.7x faster than `is_finite` (0.07 against
// 0.19 ms for a Pilatus 2M frame at 2 threads, session 24).
impl_pixel!(true, |v: &[f32]| v
    .chunks(1 << 16)
    .map(|c| c
        .iter()
        .map(|x| (x.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32)
        .sum::<u32>() as usize)
    .sum(); f32 => F32);
impl_pixel!(true, |v: &[f64]| v.iter().filter(|x| !x.is_finite()).count(); f64 => F64);

/// Accumulator precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Float64 sums (default): exact to ~1e-15 relative.
    Double,
    /// Float32 sums within a bin (~1e-6 relative error for typical bins), used by the scalar
    /// kernels (CPUs without AVX-512, maps with MIDAS weights): faster there. The AVX-512 gather
    /// kernels sum in float64 whatever is asked, as fast.
    Single,
}

/// How per-pixel variance is obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorModel<'a> {
    None,
    /// `var = max(raw, 1)` with raw the value before dark subtraction.
    Poisson,
    /// A supplied per-pixel variance (one frame's worth, shared by every frame of a stack).
    Given(&'a [f64]),
}

/// Per-frame inputs besides the frame itself, all flat raw-image arrays.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    pub dark: Option<&'a [f64]>,
    /// 1 / correction per pixel; NaN marks a masked pixel.
    pub scale: Option<&'a [f64]>,
    pub error_model: ErrorModel<'a>,
    pub precision: Precision,
    /// `map.bin_area()`, when the caller keeps it between frames (it costs a pass over the map).
    pub bin_area: Option<&'a [f64]>,
    /// Per bin, subtracted from every frame's signal: the dark of a map from
    /// [`DetectorMap::folded`]. Frames with NaN or ±∞ values take it only where those are few
    /// enough to sum their bins again ([`few_spoiled_bins`]), with `offset_dark`.
    pub signal_offset: Option<&'a [f64]>,
    /// The dark that `signal_offset` stands for (raw-image order): the bins summed again for
    /// NaN or ±∞ values subtract it entry by entry, from the entries that count.
    pub offset_dark: Option<&'a [f64]>,
    /// The NaN and ±∞ values in the frames ([`crate::scan::count_nonfinite`]), where the caller has counted
    /// them already; counted here otherwise.
    pub nonfinite: Option<usize>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            dark: None,
            scale: None,
            error_model: ErrorModel::None,
            precision: Precision::Double,
            bin_area: None,
            signal_offset: None,
            offset_dark: None,
            nonfinite: None,
        }
    }
}

/// Accumulators of `n_frames` frames, each `n_bins` long, frame-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sums {
    pub n_frames: usize,
    pub n_bins: usize,
    pub signal: Vec<f64>,
    pub area: Vec<f64>,
    /// Empty when the error model is `None`.
    pub variance: Vec<f64>,
    pub count: Vec<u32>,
    /// Per frame and radial row (`n_frames·n_r`, empty without variance): the covariance of the
    /// row's η bins from pixels split between them ([`DetectorMap::eta_cross`]), which the
    /// area-weighted lineout's variance adds to the bins' own.
    pub lineout_cross: Vec<f64>,
    /// NaN and ±∞ values over all the frames (0 for integer frames), counted whatever the
    /// other inputs: the pixels a frame itself leaves out.
    pub nonfinite: usize,
}

/// `nonfinite`: the frames' NaN and ±∞ values.
fn check_inputs<T: Pixel>(
    map: &DetectorMap,
    frames: &[&[T]],
    opts: &Options,
    nonfinite: usize,
) -> Result<()> {
    let n = map.n_pixels();
    if let Some((k, f)) = frames.iter().enumerate().find(|(_, f)| f.len() != n) {
        return Err(Error::shape(
            format!("frame {k}"),
            format!("{}x{} (rows x columns) = {n} values", map.n_z, map.n_y),
            format!("{} values", f.len()),
        ));
    }
    for (what, v) in [
        ("dark", opts.dark),
        ("per-pixel scale", opts.scale),
        ("offset dark", opts.offset_dark),
    ] {
        if let Some(v) = v {
            if v.len() != n {
                return Err(Error::shape(
                    what,
                    format!("{n} values ({}x{})", map.n_z, map.n_y),
                    v.len(),
                ));
            }
        }
    }
    if let Some(offset) = opts.signal_offset {
        if offset.len() != map.n_bins() {
            return Err(Error::shape("signal offset", map.n_bins(), offset.len()));
        }
        // The offset stands for a dark and scale already folded into the map. A NaN pixel drops
        // its entry, not its share of the offset: its bins are summed again with the dark
        // itself, which only the dense kernels' resum does.
        if opts.dark.is_some()
            || opts.scale.is_some()
            || (nonfinite > 0
                && (opts.offset_dark.is_none() || !few_spoiled_bins(map, frames.len(), nonfinite)))
        {
            return Err(Error::Invalid(
                "signal offset: only on a folded map, without dark or scale, for frames without \
                 NaN or inf or with few enough to sum their bins again (and the offset's dark)"
                    .into(),
            ));
        }
    }
    if let ErrorModel::Given(v) = opts.error_model {
        if v.len() != n {
            return Err(Error::shape("variance", format!("{n} values"), v.len()));
        }
    }
    Ok(())
}

/// Bin ranges of whole radial rows, each holding about `target` entries.
pub fn row_partition(map: &DetectorMap, n_parts: usize) -> Vec<(usize, usize)> {
    let n_eta = map.n_eta().max(1);
    let n_r = map.n_r();
    let nnz = map.n_entries().max(1);
    let target = (nnz / n_parts.max(1)).max(1) as u64;
    let mut parts = Vec::with_capacity(n_parts + 1);
    let mut start_row = 0;
    while start_row < n_r {
        let start_entries = map.indptr[start_row * n_eta];
        let mut end_row = start_row + 1;
        while end_row < n_r && map.indptr[end_row * n_eta] - start_entries < target {
            end_row += 1;
        }
        parts.push((start_row * n_eta, end_row * n_eta));
        start_row = end_row;
    }
    parts
}

/// Split `data` (n_frames × n_bins, frame-major) into per-part mutable views: part k gets, for each
/// frame, the slice of its bin range.
fn split_parts<'a, T>(
    data: &'a mut [T],
    n_bins: usize,
    parts: &[(usize, usize)],
) -> Vec<Vec<&'a mut [T]>> {
    let mut out: Vec<Vec<&'a mut [T]>> = parts.iter().map(|_| Vec::new()).collect();
    if n_bins == 0 {
        return out;
    }
    for frame in data.chunks_mut(n_bins) {
        let mut rest = frame;
        let mut offset = 0;
        for (k, &(lo, hi)) in parts.iter().enumerate() {
            let (_, tail) = rest.split_at_mut(lo - offset);
            let (mine, tail) = tail.split_at_mut(hi - lo);
            out[k].push(mine);
            rest = tail;
            offset = hi;
        }
    }
    out
}

/// Number of frames integrated together per pass over the map.
const FRAME_BLOCK: usize = 8;

/// Integrate `frames` (each one frame in raw-image order, wherever it lives: a stack's rows,
/// separate buffers, a file mapped into memory), as one stack: each part of the map is read
/// once for all of them.
pub fn integrate<T: Pixel>(map: &DetectorMap, frames: &[&[T]], opts: &Options) -> Result<Sums> {
    let nonfinite = match opts.nonfinite {
        Some(n) if T::IS_FLOAT => n,
        _ => count_nonfinite(frames),
    };
    check_inputs(map, frames, opts, nonfinite)?;
    let n_frames = frames.len();
    let n_bins = map.n_bins();
    let with_var = !matches!(opts.error_model, ErrorModel::None);
    let n = n_frames * n_bins;
    // Frames without NaN or ±∞ (all integer frames; float frames checked in one pass), without
    // dark or per-pixel scale, cannot produce NaN: every entry counts, so area and count are
    // properties of the map, the same for every frame, made here once (no zeroed buffers
    // refilled per part), and the kernels only sum signal (and variance). Float frames with a
    // few such values take them too: those values spoil only their own bins, summed again
    // afterwards by the kernels that leave them out.
    let resum = nonfinite > 0 && few_spoiled_bins(map, n_frames, nonfinite);
    let dense = (nonfinite == 0 || resum) && opts.dark.is_none() && opts.scale.is_none();
    let (area, count) = if dense {
        let area = match opts.bin_area {
            Some(a) if a.len() == n_bins => a.repeat(n_frames),
            _ => map.bin_area().repeat(n_frames),
        };
        // Filled in place: a temporary freed here would let glibc trim the heap under the
        // buffers that come next (measured: 1.7x the page faults of a batch run).
        let mut count = Vec::with_capacity(n);
        for _ in 0..n_frames {
            count.extend(map.indptr.windows(2).map(|w| (w[1] - w[0]) as u32));
        }
        (area, count)
    } else {
        (vec![0.0; n], vec![0; n])
    };
    let mut sums = Sums {
        n_frames,
        n_bins,
        signal: vec![0.0; n],
        area,
        variance: if with_var { vec![0.0; n] } else { Vec::new() },
        count,
        lineout_cross: if with_var {
            vec![0.0; n_frames * map.n_r()]
        } else {
            Vec::new()
        },
        nonfinite,
    };
    let parts = row_partition(map, 8 * rayon::current_num_threads());
    // The parts are whole radial rows: each fills its rows of the lineout covariance.
    let n_eta = map.n_eta().max(1);
    let row_parts: Vec<(usize, usize)> = parts
        .iter()
        .map(|&(lo, hi)| (lo / n_eta, hi / n_eta))
        .collect();
    if with_var {
        map.eta_cross(); // built here once, not by the first part that needs it
    }
    // The gather and run kernels sum in float64 whatever `precision` asks: as fast as float32
    // there. Gathers where they are fast, else runs (contiguous loads, no gather unit).
    let dense_simd = dense
        && map.gather_weights()
        && matches!(opts.error_model, ErrorModel::None | ErrorModel::Poisson);
    // Gathers run on the tile layout: where memory cannot hold it, the other kernels.
    let tiles = if dense_simd && gather::available::<T>() {
        map.tiles()
    } else {
        None
    };
    let use_gather = tiles.is_some();
    let kernels = Kernels {
        dense,
        run_form: if dense_simd && !use_gather && runs::available::<T>() {
            map.runs()
        } else {
            None
        },
        // Everything else with area weights has the masked gather kernel (also float64 sums).
        use_masked_gather: !dense && map.weight.is_none() && gather::available::<T>(),
    };
    if let Some(tiles) = tiles {
        tiled_sums(map, tiles, frames, opts, &mut sums);
    } else {
        block_sums(map, kernels, frames, opts, &parts, &row_parts, &mut sums);
    }
    if let Some(offset) = opts.signal_offset {
        for frame in sums.signal.chunks_mut(n_bins.max(1)) {
            for (s, o) in frame.iter_mut().zip(offset) {
                *s -= o;
            }
        }
    }
    if dense && resum {
        // Bins summed again replace their sums whole: with the offset's dark entry by entry.
        let opts = Options {
            dark: opts.offset_dark.filter(|_| opts.signal_offset.is_some()),
            ..*opts
        };
        resum_spoiled_bins(map, frames, &opts, &mut sums);
    }
    Ok(sums)
}

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
fn resum_spoiled_bins<T: Pixel>(
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

/// Every kernel family but the dense gathers: parts of whole radial rows (`parts`; `row_parts`
/// the same as row ranges), each pass over a block of frames followed by that block's lineout
/// covariance of the rows (their shared pixels' values are still in cache).
fn block_sums<T: Pixel>(
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

/// Bins one task of [`pieces_to_bins`] fills.
const BIN_CHUNK: usize = 4096;

/// Radial rows one task of the tiled path's lineout covariance takes.
const CROSS_ROW_CHUNK: usize = 64;

/// The dense gather kernels over the map's [`Tiles`]: parts of about equal entries, frames in
/// blocks of [`gather::DENSE_STACK_BLOCK`] sharing each entry's load (the rest one by one), each part's piece sums written straight into their bins
/// where every bin is one piece (cakes), else summed into the bins afterwards; then, with a
/// variance, the lineout covariance of shared pixels in a pass of its own (a part holds whole
/// wedges or image blocks, not whole radial rows).
fn tiled_sums<T: Pixel>(
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

/// The kernel family [`integrate`] chose for its frames and map.
#[derive(Clone, Copy)]
struct Kernels<'m> {
    /// Frames without dark or per-pixel scale whose every value counts (area and count from the
    /// map), or float frames with a few NaN / ±∞, their spoiled bins summed again afterwards.
    dense: bool,
    use_masked_gather: bool,
    run_form: Option<&'m PixelRuns>,
}

/// Sums of one block of frames over bins `lo..hi` into `out`; `paired`: the block is one
/// [`gather::STACK_BLOCK`] for the pair kernels.
fn block_bins<T: Pixel>(
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
fn cross_rows<T: Pixel>(
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

/// [`gather::poisson_weighted_sum`] of one row's shared pixels (they are map pixels, so the
/// map's largest pixel bounds them).
#[cfg(target_arch = "x86_64")]
fn poisson_cross<T: Pixel>(
    map: &DetectorMap,
    pixel: &[u32],
    weight: &[f64],
    frame: &[T],
    finite: bool,
) -> f64 {
    gather::poisson_weighted_sum(pixel, weight, map.max_pixel(), frame, !finite)
}

#[cfg(not(target_arch = "x86_64"))]
fn poisson_cross<T: Pixel>(_: &DetectorMap, _: &[u32], _: &[f64], _: &[T], _: bool) -> f64 {
    unreachable!("gather::available() is false off x86-64")
}

/// [`runs::dense_bins`] for one frame (area and count are the map's, set by `integrate`).
#[cfg(target_arch = "x86_64")]
fn run_bins<T: Pixel>(
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
fn run_bins<T: Pixel>(
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
fn run_pair_bins<T: Pixel>(
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
fn run_pair_bins<T: Pixel>(
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
fn masked_gather_bins<T: Pixel>(
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
fn masked_gather_bins<T: Pixel>(
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
fn masked_gather_stack_bins<T: Pixel>(
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
fn masked_gather_stack_bins<T: Pixel>(
    _: &DetectorMap,
    _: &[&[T]],
    _: usize,
    _: &Options,
    _: &mut OutBlock,
) {
    unreachable!("gather::available() is false off x86-64")
}

/// Output views of one block of frames over one bin range: `signal[k]` is frame k's slice.
struct OutBlock<'a, 'b> {
    signal: &'a mut [&'b mut [f64]],
    area: &'a mut [&'b mut [f64]],
    variance: &'a mut [&'b mut [f64]],
    count: &'a mut [&'b mut [u32]],
}

impl<'b> OutBlock<'_, 'b> {
    fn frame(&mut self, k: usize) -> OutBlock<'_, 'b> {
        self.frames(k..k + 1)
    }

    fn frames(&mut self, range: std::ops::Range<usize>) -> OutBlock<'_, 'b> {
        OutBlock {
            signal: &mut self.signal[range.clone()],
            area: &mut self.area[range.clone()],
            variance: if self.variance.is_empty() {
                &mut []
            } else {
                &mut self.variance[range.clone()]
            },
            count: &mut self.count[range],
        }
    }
}

/// Arithmetic of one accumulator type.
trait Acc: Copy + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    fn from_f64(v: f64) -> Self;
    fn from_f32(v: f32) -> Self;
    fn from_pixel<T: Pixel>(v: T) -> Self;
    fn to_f64(self) -> f64;
    /// NaN or ±∞: the entry is left out (masked pixels are NaN; an ∞ pixel is not a count).
    fn is_invalid(self) -> bool;
}

impl Acc for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    #[inline(always)]
    fn from_pixel<T: Pixel>(v: T) -> Self {
        v.to_f64()
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn is_invalid(self) -> bool {
        !self.is_finite()
    }
}

impl Acc for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn from_pixel<T: Pixel>(v: T) -> Self {
        v.to_f32()
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn is_invalid(self) -> bool {
        !self.is_finite()
    }
}

/// [`bins_block`] over `frames`: one pass for a full block, else frame by frame.
fn bins_frames<T: Pixel, A: Acc>(
    map: &DetectorMap,
    frames: &[&[T]],
    lo: usize,
    hi: usize,
    opts: &Options,
    out: &mut OutBlock,
) {
    if frames.len() == FRAME_BLOCK {
        bins_block::<T, A, FRAME_BLOCK>(map, frames, lo, hi, opts, out);
        return;
    }
    for k in 0..frames.len() {
        bins_block::<T, A, 1>(map, &frames[k..k + 1], lo, hi, opts, &mut out.frame(k));
    }
}

/// Accumulate bins `lo..hi` for `NB` frames at once (each map entry is read once per block).
#[inline(never)]
fn bins_block<T: Pixel, A: Acc, const NB: usize>(
    map: &DetectorMap,
    frames: &[&[T]],
    lo: usize,
    hi: usize,
    opts: &Options,
    out: &mut OutBlock,
) {
    let weight = map.weight.as_deref();
    let with_var = !out.variance.is_empty();
    for b in lo..hi {
        let (e0, e1) = (map.indptr[b] as usize, map.indptr[b + 1] as usize);
        let pixel = &map.pixel[e0..e1];
        let areas = &map.area[e0..e1];
        let weights = weight.map(|w| &w[e0..e1]);
        let ahead = map.pixel.get(e0 + PREFETCH_DISTANCE..).unwrap_or(&[]);
        let mut s = [A::default(); NB];
        let mut a = [A::default(); NB];
        let mut v = [A::default(); NB];
        let mut c = [0u32; NB];
        for (j, (&p, &area)) in pixel.iter().zip(areas).enumerate() {
            if let Some(&ahead) = ahead.get(j) {
                let ahead = ahead as usize;
                for f in frames.iter().take(NB) {
                    prefetch_pixel(f, ahead);
                }
                // The per-pixel inputs are read at the same scattered pixels as the frames.
                if let Some(scale) = opts.scale {
                    prefetch_pixel(scale, ahead);
                }
                if let Some(dark) = opts.dark {
                    prefetch_pixel(dark, ahead);
                }
                if let ErrorModel::Given(given) = opts.error_model {
                    prefetch_pixel(given, ahead);
                }
            }
            let p = p as usize;
            let area = A::from_f32(area);
            let mut w = match weights {
                Some(w) => A::from_f64(w[j]),
                None => area,
            };
            if let Some(scale) = opts.scale {
                w = w * A::from_f64(scale[p]);
            }
            let dark = opts.dark.map(|d| A::from_f64(-d[p]));
            for k in 0..NB {
                let raw = A::from_pixel(frames[k][p]);
                let value = match dark {
                    Some(minus_dark) => raw + minus_dark,
                    None => raw,
                };
                let contribution = w * value;
                if contribution.is_invalid() {
                    continue;
                }
                s[k] = s[k] + contribution;
                a[k] = a[k] + area;
                c[k] += 1;
                if with_var {
                    let var = match opts.error_model {
                        ErrorModel::Poisson => {
                            let r = raw.to_f64();
                            A::from_f64(if r > 1.0 { r } else { 1.0 })
                        }
                        ErrorModel::Given(given) => A::from_f64(given[p]),
                        ErrorModel::None => A::default(),
                    };
                    v[k] = v[k] + w * w * var;
                }
            }
        }
        let i = b - lo;
        for k in 0..NB {
            out.signal[k][i] = s[k].to_f64();
            out.area[k][i] = a[k].to_f64();
            out.count[k][i] = c[k];
            if with_var {
                out.variance[k][i] = v[k].to_f64();
            }
        }
    }
}

/// How many entries ahead the frame value is prefetched: the CSR walks a ring of the image, so
/// each entry's pixel sits on another image row and its load would otherwise wait on L2/L3.
/// Measured on Zen 3 (2 threads, one frame, every entry prefetched): 192–320 alike; against 48
/// (one prefetch per 4 entries), Pilatus 2M cake 4.6 → 3.7 ms, lineout 8.6 → 6.9, Eiger 4M cake
/// 10.3 → 9.1, lineout 17.2 → 15.6.
const PREFETCH_DISTANCE: usize = 192;

#[inline(always)]
fn prefetch_pixel<T>(frame: &[T], p: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults or writes, whatever the address (an index
    // past the frame, which the checked loads then refuse, prefetches nothing useful).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            frame.as_ptr().wrapping_add(p).cast::<i8>(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (frame, p);
}

/// Generates `$dispatch`, which runs `$kernel` compiled for AVX2+FMA when the CPU has them (the
/// wheel targets baseline x86-64), else the baseline build of it.
macro_rules! avx2_dispatch {
    ($dispatch:ident, $avx2:ident, $kernel:ident, ($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        #[inline(never)]
        fn $dispatch<T: Pixel, A: Acc>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were detected on this CPU just above.
                unsafe { $avx2::<T, A>($($arg),*) };
                return;
            }
            $kernel::<T, A>($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<T: Pixel, A: Acc>($($arg: $ty),*) {
            $kernel::<T, A>($($arg),*)
        }
    };
}

avx2_dispatch!(dense_dispatch, dense_bins_avx2, dense_bins, (map: &DetectorMap, frame: &[T],
    lo: usize, hi: usize, opts: &Options, out: &mut OutBlock));

/// The NaN-free kernel: `signal = Σ w·v` (and `variance = Σ w²·max(v, 1)`, or `Σ w²·var` with
/// given variances) per bin, over the bin's own slices of the map so only the frame reads are
/// bounds-checked (checking every CSR read cost a quarter of the time).
#[inline(always)]
fn dense_bins<T: Pixel, A: Acc>(
    map: &DetectorMap,
    frame: &[T],
    lo: usize,
    hi: usize,
    opts: &Options,
    out: &mut OutBlock,
) {
    let with_var = !out.variance.is_empty();
    let given = match opts.error_model {
        ErrorModel::Given(v) => Some(v),
        _ => None,
    };
    for b in lo..hi {
        let (e0, e1) = (map.indptr[b] as usize, map.indptr[b + 1] as usize);
        let pixel = &map.pixel[e0..e1];
        // The pixels whose values are prefetched while this bin's are summed.
        let ahead = map.pixel.get(e0 + PREFETCH_DISTANCE..).unwrap_or(&[]);
        let i = b - lo;
        let (signal, variance) = match map.weight.as_deref() {
            Some(w) => bin_sums(
                frame,
                pixel,
                &w[e0..e1],
                ahead,
                A::from_f64,
                with_var,
                given,
            ),
            None => bin_sums(
                frame,
                pixel,
                &map.area[e0..e1],
                ahead,
                A::from_f32,
                with_var,
                given,
            ),
        };
        out.signal[0][i] = signal.to_f64();
        if with_var {
            out.variance[0][i] = variance.to_f64();
        }
    }
}

/// One bin of [`dense_bins`]: its pixels and weights, `ahead` the map's pixels from the bin's
/// first entry plus [`PREFETCH_DISTANCE`]. Signal alone takes four independent partial sums so
/// consecutive entries do not wait on one another.
#[inline(always)]
fn bin_sums<T: Pixel, A: Acc, W: Copy>(
    frame: &[T],
    pixel: &[u32],
    weight: &[W],
    ahead: &[u32],
    to_acc: impl Fn(W) -> A,
    with_var: bool,
    given: Option<&[f64]>,
) -> (A, A) {
    let prefetch = |j: usize| {
        if let Some(&p) = ahead.get(j) {
            prefetch_pixel(frame, p as usize);
            if let Some(g) = given {
                prefetch_pixel(g, p as usize);
            }
        }
    };
    if !with_var {
        let mut s = [A::default(); 4];
        let mut pixels = pixel.chunks_exact(4);
        let mut weights = weight.chunks_exact(4);
        for (j, (p4, w4)) in (&mut pixels).zip(&mut weights).enumerate() {
            for k in 0..4 {
                prefetch(4 * j + k);
            }
            for k in 0..4 {
                s[k] = s[k] + to_acc(w4[k]) * A::from_pixel(frame[p4[k] as usize]);
            }
        }
        for (&p, &w) in pixels.remainder().iter().zip(weights.remainder()) {
            s[0] = s[0] + to_acc(w) * A::from_pixel(frame[p as usize]);
        }
        return ((s[0] + s[1]) + (s[2] + s[3]), A::default());
    }
    let (mut s, mut v) = (A::default(), A::default());
    for (j, (&p, &w)) in pixel.iter().zip(weight).enumerate() {
        prefetch(j);
        let p = p as usize;
        let w = to_acc(w);
        let raw = A::from_pixel(frame[p]);
        s = s + w * raw;
        let var = match given {
            Some(g) => A::from_f64(g[p]),
            None => {
                let r = raw.to_f64();
                A::from_f64(if r > 1.0 { r } else { 1.0 })
            }
        };
        v = v + w * w * var;
    }
    (s, v)
}

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
