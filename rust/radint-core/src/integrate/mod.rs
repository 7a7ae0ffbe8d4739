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
//! weights and the remaining cases take the scalar loops (`scalar`), which share one pass over
//! the map among 8 frames of a stack.
//!
//! Here: the entry point, its options and sums, and what the kernel families share. `row_parts`
//! runs every family but the dense gathers over parts of whole radial rows, `tiled` the dense
//! gathers over the map's tiles; `simd` adapts the AVX-512 kernels; `spoiled` sums again the bins
//! a few NaN / ±∞ spoiled; `finalize` turns sums into cake and lineout; `azimuthal` gives the
//! variances of pyFAI's azimuthal error model.

mod azimuthal;
mod finalize;
mod row_parts;
mod scalar;
mod simd;
mod spoiled;
mod tiled;

pub use azimuthal::{azimuthal_spread, AzimuthalSpread};
pub use finalize::{finalize, FinalizeOptions, Finalized, LineoutMode, Rules};
pub use spoiled::few_spoiled_bins;

use row_parts::block_sums;
use spoiled::resum_spoiled_bins;
use tiled::tiled_sums;

use crate::error::{Error, Result};
use crate::gather::{self, GatherKind};
use crate::map::DetectorMap;
use crate::runs::{self, PixelRuns};
use crate::scan::count_nonfinite;

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
    // The sums (signal, area, count, variance) and what finalize makes of them (cake, σ).
    let per_bin = 8 + 8 + 4 + 8 + if with_var { 8 + 8 } else { 0 };
    crate::error::check_room(n * per_bin + n_frames * map.n_r() * 32, || {
        format!("{n_frames} frame(s) integrated into {n_bins} bins (their sums and results)")
    })?;
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

/// The kernel family [`integrate`] chose for its frames and map.
#[derive(Clone, Copy)]
struct Kernels<'m> {
    /// Frames without dark or per-pixel scale whose every value counts (area and count from the
    /// map), or float frames with a few NaN / ±∞, their spoiled bins summed again afterwards.
    dense: bool,
    use_masked_gather: bool,
    run_form: Option<&'m PixelRuns>,
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
