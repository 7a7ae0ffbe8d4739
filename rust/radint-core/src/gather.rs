//! AVX-512 gather kernel for the NaN-free single-frame case (integer frames, no dark, no
//! per-pixel scale, map weights = areas, float64 sums).
//!
//! Why: a single frame is bound by the latency of its random pixel loads, not by bandwidth (the
//! CSR walks a ring, one image row per entry). Eight-lane hardware gathers plus software prefetch
//! far ahead keep many more of those loads in flight than the scalar loop: on the project's
//! Zen 4 machine the Pilatus 2M 1 px × 5° cake went from 1.8 to 1.1 ns per entry and thread.
//! Sums are taken in eight lanes and reduced per bin, so the last bits differ from the scalar
//! loop's order (relative ~1e-16 per bin).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::integrate::Pixel;

/// How a frame's pixels are loaded by a 32-bit gather.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatherKind {
    /// No gather path (64-bit or float pixels): the scalar kernel runs.
    None,
    U8,
    U16,
    U32,
    I32,
}

impl GatherKind {
    fn bytes(self) -> usize {
        match self {
            GatherKind::U8 => 1,
            GatherKind::U16 => 2,
            GatherKind::U32 | GatherKind::I32 => 4,
            GatherKind::None => 0,
        }
    }
}

/// Whether [`dense_bins`] can run here for pixels of type `T`.
pub fn available<T: Pixel>() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        T::GATHER != GatherKind::None
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Entries ahead whose pixel is prefetched (measured best between 96 and 768 on Zen 4).
const PREFETCH_AHEAD: usize = 192;

/// Per bin `lo..hi`: `signal = Σ area·v` and, with `variance`, `Σ area²·max(v, 1)` (Poisson).
/// `variance` is empty or as long as `signal` (`hi − lo`). Callers check [`available`] first.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub fn dense_bins<T: Pixel>(
    indptr: &[u64],
    pixel: &[u32],
    area: &[f32],
    frame: &[T],
    lo: usize,
    hi: usize,
    signal: &mut [f64],
    variance: &mut [f64],
) {
    assert!(
        available::<T>(),
        "AVX-512 gather kernel called without AVX-512 or for {:?}",
        T::GATHER
    );
    assert!(hi <= indptr.len().saturating_sub(1) && signal.len() == hi - lo);
    assert!(variance.is_empty() || variance.len() == hi - lo);
    assert!(*indptr.get(hi).unwrap_or(&0) as usize <= pixel.len().min(area.len()));
    // SAFETY: AVX-512F/VL were detected by `available`; every gathered index is compared with the
    // frame length inside, so even a corrupt map cannot read out of bounds.
    unsafe {
        match (T::GATHER, variance.is_empty()) {
            (GatherKind::U8, true) => {
                bins::<T, 0, false>(indptr, pixel, area, frame, lo, hi, signal, variance)
            }
            (GatherKind::U8, false) => {
                bins::<T, 0, true>(indptr, pixel, area, frame, lo, hi, signal, variance)
            }
            (GatherKind::U16, true) => {
                bins::<T, 1, false>(indptr, pixel, area, frame, lo, hi, signal, variance)
            }
            (GatherKind::U16, false) => {
                bins::<T, 1, true>(indptr, pixel, area, frame, lo, hi, signal, variance)
            }
            (GatherKind::U32, true) => {
                bins::<T, 2, false>(indptr, pixel, area, frame, lo, hi, signal, variance)
            }
            (GatherKind::U32, false) => {
                bins::<T, 2, true>(indptr, pixel, area, frame, lo, hi, signal, variance)
            }
            (GatherKind::I32, true) => {
                bins::<T, 3, false>(indptr, pixel, area, frame, lo, hi, signal, variance)
            }
            (GatherKind::I32, false) => {
                bins::<T, 3, true>(indptr, pixel, area, frame, lo, hi, signal, variance)
            }
            (GatherKind::None, _) => unreachable!("checked by available()"),
        }
    }
}

/// Eight pixels (lanes where `mask` is set) as f64. `KIND`: 0 u8, 1 u16, 2 u32, 3 i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn load8<const KIND: u8>(base: *const i32, idx: __m256i, mask: __mmask8) -> __m512d {
    let zero = _mm256_setzero_si256();
    match KIND {
        0 => {
            let v = _mm256_mmask_i32gather_epi32::<1>(zero, mask, idx, base);
            _mm512_cvtepu32_pd(_mm256_and_si256(v, _mm256_set1_epi32(0xff)))
        }
        1 => {
            let v = _mm256_mmask_i32gather_epi32::<2>(zero, mask, idx, base);
            _mm512_cvtepu32_pd(_mm256_and_si256(v, _mm256_set1_epi32(0xffff)))
        }
        2 => _mm512_cvtepu32_pd(_mm256_mmask_i32gather_epi32::<4>(zero, mask, idx, base)),
        _ => _mm512_cvtepi32_pd(_mm256_mmask_i32gather_epi32::<4>(zero, mask, idx, base)),
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn bins<T: Pixel, const KIND: u8, const VAR: bool>(
    indptr: &[u64],
    pixel: &[u32],
    area: &[f32],
    frame: &[T],
    lo: usize,
    hi: usize,
    signal: &mut [f64],
    variance: &mut [f64],
) {
    let base = frame.as_ptr() as *const i32;
    let bytes = T::GATHER.bytes();
    // A 32-bit gather of a narrower pixel reads up to 3 bytes past it, and gather indices are
    // signed: lanes beyond this limit are left to the scalar (bounds-checked) fix-up below.
    let frame_bytes = frame.len() * bytes;
    let gatherable = if frame_bytes >= 4 {
        (frame_bytes - 4) / bytes + 1
    } else {
        0
    };
    let limit = _mm256_set1_epi32(gatherable.min(1 << 31) as u32 as i32);
    let one = _mm512_set1_pd(1.0);
    let n_entries = pixel.len();
    for b in lo..hi {
        let (e0, e1) = (indptr[b] as usize, indptr[b + 1] as usize);
        assert!(
            e0 <= e1 && e1 <= n_entries.min(area.len()),
            "CSR row {b} out of order"
        );
        let i = b - lo;
        // Contributions of lanes the gather could not take (pixels at the very end of the frame).
        let (mut s_rest, mut v_rest) = (0.0, 0.0);
        let mut s0 = _mm512_setzero_pd();
        let mut s1 = _mm512_setzero_pd();
        let mut v0 = _mm512_setzero_pd();
        let mut v1 = _mm512_setzero_pd();
        let mut e = e0;
        while e < e1 {
            if e + PREFETCH_AHEAD + 16 <= n_entries {
                for k in 0..16 {
                    let p = *pixel.get_unchecked(e + PREFETCH_AHEAD + k) as usize;
                    // Prefetch is a hint: an address past the frame never faults.
                    _mm_prefetch::<_MM_HINT_T0>(frame.as_ptr().wrapping_add(p) as *const i8);
                }
            }
            for half in 0..2 {
                let start = e + 8 * half;
                if start >= e1 {
                    break;
                }
                let n = (e1 - start).min(8);
                let mask: __mmask8 = (0xffu32 >> (8 - n)) as u8;
                let idx = _mm256_maskz_loadu_epi32(mask, pixel.as_ptr().add(start) as *const i32);
                let inside = _mm256_mask_cmplt_epu32_mask(mask, idx, limit);
                if inside != mask {
                    for k in 0..n {
                        if inside & (1 << k) == 0 {
                            let x = frame[pixel[start + k] as usize].to_f64();
                            let w = area[start + k] as f64;
                            s_rest += w * x;
                            v_rest += w * w * if x > 1.0 { x } else { 1.0 };
                        }
                    }
                }
                let mask = inside;
                let w = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, area.as_ptr().add(start)));
                let x = load8::<KIND>(base, idx, mask);
                if half == 0 {
                    s0 = _mm512_fmadd_pd(w, x, s0);
                    if VAR {
                        let var = _mm512_maskz_max_pd(mask, x, one);
                        v0 = _mm512_fmadd_pd(_mm512_mul_pd(w, w), var, v0);
                    }
                } else {
                    s1 = _mm512_fmadd_pd(w, x, s1);
                    if VAR {
                        let var = _mm512_maskz_max_pd(mask, x, one);
                        v1 = _mm512_fmadd_pd(_mm512_mul_pd(w, w), var, v1);
                    }
                }
            }
            e += 16;
        }
        signal[i] = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) + s_rest;
        if VAR {
            variance[i] = _mm512_reduce_add_pd(_mm512_add_pd(v0, v1)) + v_rest;
        }
    }
}
