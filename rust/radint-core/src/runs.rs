//! Run-length form of a CSR map and the AVX-512 kernels that read frames through it, for CPUs
//! with AVX-512 whose hardware gathers are slow (Intel's "Gather Data Sampling" microcode
//! mitigation, see [`crate::gather::gathers_wanted`]), where the scalar loop ran before.
//!
//! Within a bin, consecutive entries mostly hold consecutive raw-image pixels (a ring crosses an
//! image row in short runs: 2.7 entries per run for a Pilatus 2M 3000-bin lineout, 3.5 for a
//! 1 px × 5° cake). Each run is one word (`start << 3 | (len − 1)`, at most [`MAX_RUN`] pixels)
//! read with one contiguous masked load: no gather, and 4 bytes per run instead of a 4-byte
//! pixel index per entry. Measured on the Intel VM with gathers off (Pilatus 2M, 2 threads, one
//! frame): 3000-bin lineout 16.2 → 7.2 ms, 1 px × 5° cake 11–12 → 7.1 ms against the scalar
//! loop. Where gathers are fast they still win (5.5–8.5 vs 7–11 ms there): a run costs a full
//! 8-lane convert and FMA for its ~3 pixels. The areas stay the map's own array in the same
//! entry order, so sums differ from the other kernels' only in summation order (~1e-16).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::integrate::Pixel;

/// Longest run one word holds (3 bits of length): one masked 8-lane load.
pub const MAX_RUN: usize = 8;

/// Pixels a run's start can name (29 bits); larger frames keep the scalar loop.
const MAX_PIXELS: usize = 1 << 29;

/// A CSR map's pixel indices as runs of consecutive pixels, bin by bin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PixelRuns {
    /// Per bin, the index of its first run (`n_bins + 1` values).
    run_ptr: Vec<u64>,
    /// Per bin, the index of its first entry (the map's `indptr` the runs were built from): the
    /// kernels index areas by it, so the runs always match the entries they read.
    entry_ptr: Vec<u64>,
    /// `start << 3 | (len − 1)`: `len` consecutive raw-image pixels from `start`, whose areas are
    /// the bin's next `len` entries.
    runs: Vec<u32>,
    /// Frame length the runs were checked against.
    n_pixels: usize,
}

impl PixelRuns {
    /// The runs of the CSR `(indptr, pixel)` over an image of `n_pixels`, or None where a pixel
    /// index is past `n_pixels`, the image is too large for 29-bit starts, or `indptr` is out of
    /// order or longer than `pixel` (the other kernels check those per entry).
    pub fn build(indptr: &[u64], pixel: &[u32], n_pixels: usize) -> Option<Self> {
        if n_pixels > MAX_PIXELS || indptr.last().is_some_and(|&e| e as usize > pixel.len()) {
            return None;
        }
        // An optional layout: without the memory for it the other kernels run.
        let bytes = indptr.len() * 16 + pixel.len() * 4;
        if crate::error::check_room(bytes, String::new).is_err() {
            return None;
        }
        let mut run_ptr = Vec::with_capacity(indptr.len());
        let mut runs = Vec::with_capacity(pixel.len() / 2);
        run_ptr.push(0);
        for w in indptr.windows(2) {
            let (e0, e1) = (w[0] as usize, w[1] as usize);
            if e0 > e1 {
                return None;
            }
            let mut e = e0;
            while e < e1 {
                let start = pixel[e];
                if start as usize >= n_pixels {
                    return None;
                }
                let mut len = 1;
                while len < MAX_RUN && e + len < e1 && pixel[e + len] == start + len as u32 {
                    len += 1;
                }
                runs.push(start << 3 | (len as u32 - 1));
                e += len;
            }
            run_ptr.push(runs.len() as u64);
        }
        Some(PixelRuns {
            run_ptr,
            entry_ptr: indptr.to_vec(),
            runs,
            n_pixels,
        })
    }

    pub fn n_bins(&self) -> usize {
        self.run_ptr.len().saturating_sub(1)
    }

    pub fn n_runs(&self) -> usize {
        self.runs.len()
    }
}

/// Whether the run kernels run here for pixels of type `T`: AVX-512F/VL/BW (masked 8- and 16-bit
/// loads), BMI2 and a pixel type they load. `RADINT_RUNS=0` turns them off (the scalar loop runs
/// instead), for comparisons.
pub fn available<T: Pixel>() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let wanted = *WANTED.get_or_init(|| {
            std::env::var("RADINT_RUNS").as_deref() != Ok("0")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("bmi2")
        });
        wanted && T::GATHER != crate::gather::GatherKind::None
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs ahead whose first pixel is prefetched. A bin's ring was mostly just read by its
/// neighbour bin, but the rings of a large detector's thin lineout bins outgrow L2.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 64;

/// Checks shared by the kernels: bins `lo..hi` exist, the frames are as long as the image the
/// runs were built for, and `area` holds every entry of the runs.
#[cfg(target_arch = "x86_64")]
fn check(runs: &PixelRuns, area: &[f32], n_pixels: usize, lo: usize, hi: usize) {
    let n_bins = runs.n_bins();
    assert!(lo <= hi && hi <= n_bins, "bins {lo}..{hi} of {n_bins}");
    assert_eq!(
        n_pixels, runs.n_pixels,
        "frame length differs from the map's"
    );
    assert!(
        runs.entry_ptr[hi] as usize <= area.len(),
        "fewer areas than entries"
    );
}

/// Per bin `lo..hi`: `signal = Σ area·v` and, with `variance`, `Σ area²·max(v, 1)` (Poisson), as
/// [`crate::gather::dense_bins`] computes them; `area` is the map's per-entry areas. Callers
/// check [`available`] first.
#[cfg(target_arch = "x86_64")]
pub fn dense_bins<T: Pixel>(
    runs: &PixelRuns,
    area: &[f32],
    frame: &[T],
    lo: usize,
    hi: usize,
    signal: &mut [f64],
    variance: &mut [f64],
) {
    assert!(available::<T>(), "run kernel called for {:?}", T::GATHER);
    check(runs, area, frame.len(), lo, hi);
    assert!(signal.len() == hi - lo && (variance.is_empty() || variance.len() == hi - lo));
    let mut signal = [signal];
    let mut variance = if variance.is_empty() {
        None
    } else {
        Some([variance])
    };
    dispatch::<T, 1>(runs, area, [frame], lo, &mut signal, &mut variance);
}

/// [`dense_bins`] for two frames at once, sharing the map's stream: `signal[k]` and
/// `variance[k]` (both empty without a variance) are frame k's.
#[cfg(target_arch = "x86_64")]
pub fn dense_bins_pair<T: Pixel>(
    runs: &PixelRuns,
    area: &[f32],
    frames: [&[T]; 2],
    lo: usize,
    hi: usize,
    signal: [&mut [f64]; 2],
    variance: [&mut [f64]; 2],
) {
    assert!(available::<T>(), "run kernel called for {:?}", T::GATHER);
    assert_eq!(
        frames[0].len(),
        frames[1].len(),
        "frames of a pair differ in length"
    );
    check(runs, area, frames[0].len(), lo, hi);
    assert!(signal.iter().all(|s| s.len() == hi - lo));
    let with_var = !variance[0].is_empty();
    let var_len = if with_var { hi - lo } else { 0 };
    assert!(variance.iter().all(|v| v.len() == var_len));
    let mut signal = signal;
    let mut variance = if with_var { Some(variance) } else { None };
    dispatch::<T, 2>(runs, area, frames, lo, &mut signal, &mut variance);
}

#[cfg(target_arch = "x86_64")]
fn dispatch<T: Pixel, const NB: usize>(
    runs: &PixelRuns,
    area: &[f32],
    frames: [&[T]; NB],
    lo: usize,
    signal: &mut [&mut [f64]; NB],
    variance: &mut Option<[&mut [f64]; NB]>,
) {
    use crate::gather::GatherKind as K;
    macro_rules! run {
        ($kind:literal) => {
            dense::<T, $kind, NB>(runs, area, frames, lo, signal, variance)
        };
    }
    // SAFETY: the CPU features were detected by `available`; `check` holds the frames to the
    // image the runs were built for (every run lies inside it, checked by `build`) and `area` to
    // the runs' entries (each bin's runs cover exactly its `entry_ptr` range, by `build`).
    unsafe {
        match T::GATHER {
            K::U8 => run!(0),
            K::U16 => run!(1),
            K::U32 => run!(2),
            K::I32 => run!(3),
            K::F32 => run!(4),
            K::F64 => run!(5),
            K::None => unreachable!("checked by available()"),
        }
    }
}

/// The `len` (1–8, set in `mask`) pixels from `p` as f64. `KIND`: 0 u8, 1 u16, 2 u32, 3 i32,
/// 4 f32, 5 f64. Masked-off lanes are neither read nor faulted on.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
#[inline]
unsafe fn load_run<T, const KIND: u8>(p: *const T, mask: __mmask8) -> __m512d {
    match KIND {
        0 => _mm512_cvtepu32_pd(_mm256_cvtepu8_epi32(_mm_maskz_loadu_epi8(
            mask as __mmask16,
            p as *const i8,
        ))),
        1 => _mm512_cvtepu32_pd(_mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(
            mask,
            p as *const i16,
        ))),
        2 => _mm512_cvtepu32_pd(_mm256_maskz_loadu_epi32(mask, p as *const i32)),
        3 => _mm512_cvtepi32_pd(_mm256_maskz_loadu_epi32(mask, p as *const i32)),
        4 => _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, p as *const f32)),
        _ => _mm512_maskz_loadu_pd(mask, p as *const f64),
    }
}

/// Adds one run (its word, its areas from `area`) of each frame into `s` / `v`; returns its length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,bmi2")]
#[inline]
unsafe fn add_run<T, const KIND: u8, const NB: usize>(
    word: u32,
    area: *const f32,
    frames: &[*const T; NB],
    with_var: bool,
    s: &mut [__m512d; NB],
    v: &mut [__m512d; NB],
) -> usize {
    let start = (word >> 3) as usize;
    let len = (word & 7) as usize + 1;
    let mask = _bzhi_u32(0xff, len as u32) as __mmask8;
    let w = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, area));
    for k in 0..NB {
        let x = load_run::<T, KIND>(frames[k].add(start), mask);
        s[k] = _mm512_fmadd_pd(w, x, s[k]);
        if with_var {
            let var = _mm512_maskz_max_pd(mask, x, _mm512_set1_pd(1.0));
            v[k] = _mm512_fmadd_pd(_mm512_mul_pd(w, w), var, v[k]);
        }
    }
    len
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,bmi2")]
unsafe fn dense<T: Pixel, const KIND: u8, const NB: usize>(
    runs: &PixelRuns,
    area: &[f32],
    frames: [&[T]; NB],
    lo: usize,
    signal: &mut [&mut [f64]; NB],
    variance: &mut Option<[&mut [f64]; NB]>,
) {
    let words = runs.runs.as_ptr();
    let n_runs = runs.runs.len();
    let with_var = variance.is_some();
    let ptrs: [*const T; NB] = std::array::from_fn(|k| frames[k].as_ptr());
    for i in 0..signal[0].len() {
        let b = lo + i;
        let (r0, r1) = (runs.run_ptr[b] as usize, runs.run_ptr[b + 1] as usize);
        let mut a = area.as_ptr().add(runs.entry_ptr[b] as usize);
        // Four independent sums per frame: a run takes a few cycles, an FMA's latency is four.
        let zero = [_mm512_setzero_pd(); NB];
        let (mut s0, mut s1, mut s2, mut s3) = (zero, zero, zero, zero);
        let (mut v0, mut v1, mut v2, mut v3) = (zero, zero, zero, zero);
        let mut j = r0;
        while j + 4 <= r1 {
            if j + 4 + PREFETCH_AHEAD <= n_runs {
                for u in 0..4 {
                    let ahead = (*words.add(j + u + PREFETCH_AHEAD) >> 3) as usize;
                    for p in &ptrs {
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead) as *const i8);
                    }
                }
            }
            let len = add_run::<T, KIND, NB>(*words.add(j), a, &ptrs, with_var, &mut s0, &mut v0);
            a = a.add(len);
            let len =
                add_run::<T, KIND, NB>(*words.add(j + 1), a, &ptrs, with_var, &mut s1, &mut v1);
            a = a.add(len);
            let len =
                add_run::<T, KIND, NB>(*words.add(j + 2), a, &ptrs, with_var, &mut s2, &mut v2);
            a = a.add(len);
            let len =
                add_run::<T, KIND, NB>(*words.add(j + 3), a, &ptrs, with_var, &mut s3, &mut v3);
            a = a.add(len);
            j += 4;
        }
        while j < r1 {
            let len = add_run::<T, KIND, NB>(*words.add(j), a, &ptrs, with_var, &mut s0, &mut v0);
            a = a.add(len);
            j += 1;
        }
        for k in 0..NB {
            let s = _mm512_add_pd(_mm512_add_pd(s0[k], s1[k]), _mm512_add_pd(s2[k], s3[k]));
            signal[k][i] = _mm512_reduce_add_pd(s);
            if let Some(var) = variance.as_mut() {
                let v = _mm512_add_pd(_mm512_add_pd(v0[k], v1[k]), _mm512_add_pd(v2[k], v3[k]));
                var[k][i] = _mm512_reduce_add_pd(v);
            }
        }
    }
}
