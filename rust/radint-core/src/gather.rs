//! AVX-512 gather kernels for single frames with map weights = areas, float64 sums:
//! [`dense_bins`] for the NaN-free case (integer frames, no dark, no per-pixel scale), over the
//! map's [`Tiles`] layout, and [`masked_bins`] for the rest (float frames, dark, per-pixel scale
//! with NaN = masked, given variances), which also counts area and entries per bin since NaN
//! entries drop out.
//!
//! Why: a single frame is bound by the latency of its random pixel loads, not by bandwidth (the
//! CSR walks a ring, one image row per entry). Eight-lane hardware gathers plus software prefetch
//! far ahead keep many more of those loads in flight than the scalar loop: on the project's
//! Zen 4 machine the Pilatus 2M 1 px × 5° cake went from 1.8 to 1.1 ns per entry and thread.
//! Issuing that prefetch for every entry then became the largest cost (session 23, Zen 5: the
//! prefetch instructions alone 0.43 of a Pilatus 2M cake's 1.6 ms), so the dense kernels walk
//! the tile layout and prefetch only the lines its schedule lists. Sums are taken in eight lanes
//! and reduced per bin (or piece), so the last bits differ from the scalar loop's order
//! (relative ~1e-16 per bin).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::integrate::Pixel;
#[cfg(target_arch = "x86_64")]
use crate::tiles::{self, Tiles};

/// How a frame's pixels are gathered (32-bit gathers for the narrow types, 64-bit for f64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatherKind {
    /// No gather path (64-bit integer pixels): the scalar kernel runs.
    None,
    U8,
    U16,
    U32,
    I32,
    F32,
    F64,
}

#[cfg(target_arch = "x86_64")]
impl GatherKind {
    fn bytes(self) -> usize {
        match self {
            GatherKind::U8 => 1,
            GatherKind::U16 => 2,
            GatherKind::U32 | GatherKind::I32 | GatherKind::F32 => 4,
            GatherKind::F64 => 8,
            GatherKind::None => 0,
        }
    }

    /// The const code `load8` dispatches on.
    fn code(self) -> u8 {
        match self {
            GatherKind::U8 => 0,
            GatherKind::U16 => 1,
            GatherKind::U32 => 2,
            GatherKind::I32 => 3,
            GatherKind::F32 => 4,
            GatherKind::F64 => 5,
            GatherKind::None => u8::MAX,
        }
    }
}

/// `$run!(KIND, CLAMP)` for the pixel kind `$code` ([`GatherKind::code`]: 0–3, the integer
/// kinds) and the clamp flag `$clamp` (see [`lanes`]), each pair its own instantiation.
#[cfg(target_arch = "x86_64")]
macro_rules! integer_kinds {
    ($code:expr, $clamp:expr, $run:ident) => {
        match ($code, $clamp) {
            (0, false) => $run!(0, false),
            (0, true) => $run!(0, true),
            (1, false) => $run!(1, false),
            (1, true) => $run!(1, true),
            (2, false) => $run!(2, false),
            (2, true) => $run!(2, true),
            (3, false) => $run!(3, false),
            (3, true) => $run!(3, true),
            _ => unreachable!("checked by the caller: integer pixels only"),
        }
    };
}

/// [`integer_kinds`] and the float kinds (codes 4, 5).
#[cfg(target_arch = "x86_64")]
macro_rules! any_kinds {
    ($code:expr, $clamp:expr, $run:ident) => {
        match ($code, $clamp) {
            (4, false) => $run!(4, false),
            (4, true) => $run!(4, true),
            (5, false) => $run!(5, false),
            (5, true) => $run!(5, true),
            (code, clamp) => integer_kinds!(code, clamp, $run),
        }
    };
}

/// Whether the gather kernels run here for pixels of type `T` ([`dense_bins`] also needs an
/// integer `T`): AVX-512F/VL present and gathers not slowed down (see [`gathers_wanted`]).
pub fn available<T: Pixel>() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        T::GATHER != GatherKind::None
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && gathers_wanted()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether to use hardware gathers at all, decided once per process: `RADINT_GATHER=0` / `=1`
/// forces it; otherwise no on Intel CPUs whose "Gather Data Sampling" (Downfall) microcode
/// mitigation is active, which makes every gather several times slower (Linux reports it in
/// `/sys/devices/system/cpu/vulnerabilities/gather_data_sampling`), where the scalar loop wins.
pub fn gathers_wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| match std::env::var("RADINT_GATHER").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => {
            !std::fs::read_to_string("/sys/devices/system/cpu/vulnerabilities/gather_data_sampling")
                .is_ok_and(|state| state.contains("Mitigation: Microcode"))
        }
    })
}

/// Entries ahead whose pixel the masked kernels prefetch (measured best between 96 and 768 on
/// Zen 4; on the Zen 5 VM of session 22, 384–512 beat 192 by 10–25 % for single frames). The
/// dense kernels walk a [`Tiles`] layout and prefetch from its schedule instead.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 512;

/// Entries ahead whose CSR lines (pixel index and area) are prefetched. The hardware streamer
/// alone left the area loads stalling on the Intel VM: single Pilatus 2D frames took 7.0 instead
/// of 8.8 ms at 2 threads with this (512–1536 measured alike). The masked kernel, bound by its
/// extra per-pixel gathers, measured no gain and goes without.
#[cfg(target_arch = "x86_64")]
const CSR_PREFETCH_AHEAD: usize = 1024;

/// Prefetch the CSR lines `CSR_PREFETCH_AHEAD` entries past `e` (one line of each array per 16
/// entries; addresses past the arrays are harmless hints).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn prefetch_csr(pixel: &[u32], area: &[f32], e: usize) {
    _mm_prefetch::<_MM_HINT_T0>(pixel.as_ptr().wrapping_add(e + CSR_PREFETCH_AHEAD) as *const i8);
    _mm_prefetch::<_MM_HINT_T0>(area.as_ptr().wrapping_add(e + CSR_PREFETCH_AHEAD) as *const i8);
}

/// Per piece `lo..hi` of `tiles` ([`Tiles`]): `signal = Σ area·v` and, with `variance`,
/// `Σ area²·max(v, 1)` (Poisson), for a frame whose every value counts: integer, or float
/// without NaN or ±∞ (the caller checks: one would make its pieces' sums NaN). `variance` is
/// empty or as long as `signal` (`hi − lo`).
/// `max_pixel`: the largest map pixel index where the caller knows it (the map caches it,
/// [`crate::map::DetectorMap::max_pixel`]); below the frame's gatherable length it spares the
/// per-lane bounds check (a wrong value gives wrong sums, never a read out of bounds). Callers
/// check [`available`] first.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub fn dense_bins<T: Pixel>(
    tiles: &Tiles,
    max_pixel: Option<u32>,
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
    assert!(hi <= tiles.n_pieces() && lo <= hi && signal.len() == hi - lo);
    assert!(variance.is_empty() || variance.len() == hi - lo);
    check_tiles(tiles, lo, hi);
    macro_rules! run {
        ($kind:literal, $clamp:literal) => {
            bins::<T, $kind, $clamp>(tiles, frame, lo, hi, signal, variance)
        };
    }
    // SAFETY: AVX-512F/VL were detected by `available`; every gathered index is either compared
    // with the frame's gatherable length or clamped below it (`lanes`), so even a corrupt map
    // cannot read out of bounds.
    unsafe { any_kinds!(T::GATHER.code(), clamp_ok(max_pixel, frame), run) }
}

/// The layout invariants the kernels' unchecked loads of pieces `lo..hi` rely on that the
/// layout itself does not keep ([`Tiles`] keeps the rest from its construction on: a check per
/// piece inside the kernels cost 5 %, session 24).
#[cfg(target_arch = "x86_64")]
fn check_tiles(tiles: &Tiles, lo: usize, hi: usize) {
    assert!(lo <= hi && hi <= tiles.n_pieces() && tiles.indptr.len() == tiles.n_pieces() + 1);
    assert!(tiles.prefetch_slots > 0);
}

/// Issue the prefetches of [`Tiles::prefetch`] for groups `*next..=group` (16 entries each)
/// and move `next` past them. Prefetch is a hint: an address past the frame never faults.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn prefetch_groups<T>(tiles: &Tiles, frames: &[&[T]], next: &mut usize, group: usize) {
    let per_group = tiles.prefetch_slots;
    let slots = &tiles.prefetch;
    let last = (slots.len() / per_group).min(group + 1);
    let ask = |p: u32| {
        for f in frames {
            _mm_prefetch::<_MM_HINT_T0>(f.as_ptr().wrapping_add(p as usize) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(f.as_ptr().wrapping_add(p as usize + 15) as *const i8);
        }
    };
    while *next < last {
        let first = *next * per_group;
        // The usual two slots unrolled: a loop of a count known only at run time cost 5 %.
        if per_group == 2 {
            ask(*slots.get_unchecked(first));
            ask(*slots.get_unchecked(first + 1));
        } else {
            for j in 0..per_group {
                ask(*slots.get_unchecked(first + j));
            }
        }
        *next += 1;
    }
}

/// [`prefetch_csr`] for a tile layout: its pixel indices and the weights the kernel reads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn prefetch_tile_entries<const W64: bool>(tiles: &Tiles, e: usize) {
    if W64 {
        let ahead = e + CSR_PREFETCH_AHEAD;
        _mm_prefetch::<_MM_HINT_T0>(tiles.pixel.as_ptr().wrapping_add(ahead) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(tiles.weight.as_ptr().wrapping_add(ahead) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(tiles.weight.as_ptr().wrapping_add(ahead + 8) as *const i8);
    } else {
        prefetch_csr(&tiles.pixel, &tiles.area, e);
    }
}

/// The signal weight of entry `e` of `tiles`: its own weight (`W64`, folded maps) or its area.
#[cfg(target_arch = "x86_64")]
#[inline]
fn entry_weight<const W64: bool>(tiles: &Tiles, e: usize) -> f64 {
    if W64 {
        tiles.weight[e]
    } else {
        tiles.area[e] as f64
    }
}

/// The first prefetch group a walk starting at entry `e0` issues: the lead's worth before it.
#[cfg(target_arch = "x86_64")]
fn first_prefetch_group(e0: usize) -> usize {
    (e0 / 16).saturating_sub(tiles::PREFETCH_LEAD_GROUPS)
}

/// `Σ weight[i]·max(frame[pixel[i]], 1)`: the Poisson variance of a row's shared pixels in its
/// lineout (`integrate::cross_rows`) for a frame without dark or per-pixel scale, gathered 8
/// lanes at a time; over the finite values with `skip_nonfinite` (a NaN or ±∞ pixel counts in
/// no bin, so in no covariance either), else over all (the frame holds none). `max_pixel` as
/// for [`dense_bins`]. Callers check [`available`].
#[cfg(target_arch = "x86_64")]
pub fn poisson_weighted_sum<T: Pixel>(
    pixel: &[u32],
    weight: &[f64],
    max_pixel: Option<u32>,
    frame: &[T],
    skip_nonfinite: bool,
) -> f64 {
    assert!(available::<T>(), "gather kernel called for {:?}", T::GATHER);
    assert_eq!(pixel.len(), weight.len(), "one weight per pixel");
    macro_rules! run {
        ($kind:literal, $clamp:literal) => {
            poisson_sum::<T, $kind, $clamp>(pixel, weight, frame, skip_nonfinite)
        };
    }
    // SAFETY: AVX-512F/VL were detected by `available`; every gathered index is compared with or
    // clamped below (`lanes`) the frame's gatherable length.
    unsafe { any_kinds!(T::GATHER.code(), clamp_ok(max_pixel, frame), run) }
}

/// Shared pixels ahead whose frame value [`poisson_sum`] prefetches: each lies on another
/// image row of the ring.
#[cfg(target_arch = "x86_64")]
const POISSON_PREFETCH_AHEAD: usize = 64;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn poisson_sum<T: Pixel, const KIND: u8, const CLAMP: bool>(
    pixel: &[u32],
    weight: &[f64],
    frame: &[T],
    skip_nonfinite: bool,
) -> f64 {
    let base = frame.as_ptr() as *const i32;
    let limit = gather_limit(frame);
    let one = _mm512_set1_pd(1.0);
    let n = pixel.len();
    let (mut acc0, mut acc1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    let mut rest = 0.0;
    let mut e = 0;
    while e < n {
        if e + POISSON_PREFETCH_AHEAD + 8 <= n {
            for k in 0..8 {
                let p = *pixel.get_unchecked(e + POISSON_PREFETCH_AHEAD + k) as usize;
                _mm_prefetch::<_MM_HINT_T0>(frame.as_ptr().wrapping_add(p) as *const i8);
            }
        }
        let len = (n - e).min(8);
        let mask: __mmask8 = (0xffu32 >> (8 - len)) as u8;
        let idx = _mm256_maskz_loadu_epi32(mask, pixel.as_ptr().add(e) as *const i32);
        let (idx, inside) = lanes::<CLAMP>(idx, mask, limit);
        if inside != mask {
            for k in 0..len {
                if inside & (1 << k) == 0 {
                    let x = frame[pixel[e + k] as usize].to_f64();
                    if !skip_nonfinite || x.is_finite() {
                        rest += weight[e + k] * if x > 1.0 { x } else { 1.0 };
                    }
                }
            }
        }
        let raw = load8::<KIND>(base, idx, inside);
        // |x| < ∞ (ordered): false exactly for NaN and ±∞, whose lanes add nothing.
        // A test per lane only where the frames hold NaN or ±∞ (~5 % of a σ cake otherwise).
        let counted = if skip_nonfinite {
            _mm512_mask_cmp_pd_mask::<_CMP_LT_OQ>(
                inside,
                _mm512_abs_pd(raw),
                _mm512_set1_pd(f64::INFINITY),
            )
        } else {
            inside
        };
        let w = _mm512_maskz_loadu_pd(counted, weight.as_ptr().add(e));
        let var = _mm512_maskz_max_pd(counted, raw, one);
        // Two sums: each group's FMA need not wait for the previous one.
        if (e / 8) % 2 == 0 {
            acc0 = _mm512_fmadd_pd(w, var, acc0);
        } else {
            acc1 = _mm512_fmadd_pd(w, var, acc1);
        }
        e += 8;
    }
    _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1)) + rest
}

/// Eight pixels (lanes where `mask` is set) as f64. `KIND`: 0 u8, 1 u16, 2 u32, 3 i32, 4 f32,
/// 5 f64 ([`GatherKind::code`]).
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
        3 => _mm512_cvtepi32_pd(_mm256_mmask_i32gather_epi32::<4>(zero, mask, idx, base)),
        4 => _mm512_cvtps_pd(_mm256_mmask_i32gather_ps::<4>(
            _mm256_setzero_ps(),
            mask,
            idx,
            base as *const f32,
        )),
        _ => gather_f64(base as *const f64, idx, mask),
    }
}

/// Eight f64 values `base[idx]` (lanes where `mask` is set, else 0).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn gather_f64(base: *const f64, idx: __m256i, mask: __mmask8) -> __m512d {
    _mm512_mask_i32gather_pd::<8>(_mm512_setzero_pd(), mask, idx, base)
}

/// Pixels of `frame` a 32-bit-indexed gather may read: indices at or past it go to the scalar
/// (bounds-checked) fix-up. A 32-bit gather of a narrower pixel reads up to 3 bytes past it, and
/// gather indices are signed 32-bit.
#[cfg(target_arch = "x86_64")]
fn gatherable_len<T: Pixel>(frame: &[T]) -> usize {
    let bytes = T::GATHER.bytes();
    let frame_bytes = frame.len() * bytes;
    let gatherable = if frame_bytes >= 4 {
        (frame_bytes - 4) / bytes + 1
    } else {
        0
    };
    gatherable.min(1 << 31)
}

/// Whether every index of a map whose largest pixel index is `max_pixel` can be gathered from
/// `frame` without a per-lane check (see [`lanes`]).
#[cfg(target_arch = "x86_64")]
fn clamp_ok<T: Pixel>(max_pixel: Option<u32>, frame: &[T]) -> bool {
    max_pixel.is_some_and(|m| (m as usize) < gatherable_len(frame))
}

/// [`gatherable_len`] of `frame` in every lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn gather_limit<T: Pixel>(frame: &[T]) -> __m256i {
    _mm256_set1_epi32(gatherable_len(frame) as u32 as i32)
}

/// The indices to gather and the lanes to gather them in, for the lanes `mask` holds. With
/// `CLAMP` (the caller knows every map pixel is below `limit`, [`clamp_ok`]) the indices are
/// clamped below it and every lane is kept: one instruction, where the compare and the branch on
/// its result made single Pilatus 2M frames 12 % slower (session 22, Zen 5). A wrong hint then
/// gives wrong sums, never a read past the frame. Without `CLAMP`, lanes at or past `limit`
/// leave the mask for the caller's scalar fix-up.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn lanes<const CLAMP: bool>(
    idx: __m256i,
    mask: __mmask8,
    limit: __m256i,
) -> (__m256i, __mmask8) {
    if CLAMP {
        let last = _mm256_sub_epi32(limit, _mm256_set1_epi32(1));
        (_mm256_min_epu32(idx, last), mask)
    } else {
        (idx, _mm256_mask_cmplt_epu32_mask(mask, idx, limit))
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn bins<T: Pixel, const KIND: u8, const CLAMP: bool>(
    tiles: &Tiles,
    frame: &[T],
    lo: usize,
    hi: usize,
    signal: &mut [f64],
    variance: &mut [f64],
) {
    // The variance and the weights' type as constants: a variance test left in the loop cost
    // 3 % (session 22).
    match (variance.is_empty(), tiles.weight.is_empty()) {
        (true, true) => {
            bins_with::<T, KIND, CLAMP, false, false>(tiles, frame, lo, hi, signal, variance)
        }
        (false, true) => {
            bins_with::<T, KIND, CLAMP, true, false>(tiles, frame, lo, hi, signal, variance)
        }
        (true, false) => {
            bins_with::<T, KIND, CLAMP, false, true>(tiles, frame, lo, hi, signal, variance)
        }
        (false, false) => {
            bins_with::<T, KIND, CLAMP, true, true>(tiles, frame, lo, hi, signal, variance)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn bins_with<
    T: Pixel,
    const KIND: u8,
    const CLAMP: bool,
    const VAR: bool,
    const W64: bool,
>(
    tiles: &Tiles,
    frame: &[T],
    lo: usize,
    hi: usize,
    signal: &mut [f64],
    variance: &mut [f64],
) {
    let (indptr, pixel) = (&tiles.indptr, &tiles.pixel);
    let base = frame.as_ptr() as *const i32;
    let limit = gather_limit16(frame);
    let mut next_prefetch = first_prefetch_group(indptr[lo] as usize);
    for b in lo..hi {
        // SAFETY of the loads below: `check_pieces` ran for lo..hi.
        let (e0, e1) = (
            *indptr.get_unchecked(b) as usize,
            *indptr.get_unchecked(b + 1) as usize,
        );
        let mut sums = DenseSums::default();
        let mut e = e0;
        while e < e1 {
            prefetch_groups(tiles, &[frame], &mut next_prefetch, e / 16);
            prefetch_tile_entries::<W64>(tiles, e);
            let n = (e1 - e).min(16);
            let mask: __mmask16 = (0xffffu32 >> (16 - n)) as u16;
            let idx = _mm512_maskz_loadu_epi32(mask, pixel.as_ptr().add(e) as *const i32);
            let (idx, inside) = lanes16::<CLAMP>(idx, mask, limit);
            if inside != mask {
                sums.add_outside::<T, W64, VAR>(tiles, frame, e, n, inside);
            }
            let w = weights16::<W64>(tiles, inside, e);
            sums.add::<VAR>(w, load16::<KIND>(base, idx, inside), inside);
            e += 16;
        }
        let i = b - lo;
        signal[i] = sums.signal();
        if VAR {
            variance[i] = sums.variance();
        }
    }
}

/// One piece's running sums in the dense kernels: entries 0–7 and 8–15 of each 16 in
/// separate vectors, and the lanes a gather could not take (pixels at the very end of the
/// frame) as scalars.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct DenseSums {
    signal: [__m512d; 2],
    variance: [__m512d; 2],
    signal_rest: f64,
    variance_rest: f64,
}

#[cfg(target_arch = "x86_64")]
impl Default for DenseSums {
    fn default() -> Self {
        // SAFETY: a zeroed vector is a valid __m512d (all-zero bits: 0.0 in every lane).
        let zero: __m512d = unsafe { std::mem::zeroed() };
        DenseSums {
            signal: [zero; 2],
            variance: [zero; 2],
            signal_rest: 0.0,
            variance_rest: 0.0,
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl DenseSums {
    /// Add 16 entries: weights `w` and values `x` (lanes 0–7, 8–15), zero where `mask` is clear.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn add<const VAR: bool>(&mut self, w: [__m512d; 2], x: [__m512d; 2], mask: __mmask16) {
        let one = _mm512_set1_pd(1.0);
        for h in 0..2 {
            self.signal[h] = _mm512_fmadd_pd(w[h], x[h], self.signal[h]);
            if VAR {
                let half_mask = (mask >> (8 * h)) as __mmask8;
                let var = _mm512_maskz_max_pd(half_mask, x[h], one);
                self.variance[h] =
                    _mm512_fmadd_pd(_mm512_mul_pd(w[h], w[h]), var, self.variance[h]);
            }
        }
    }

    /// Add the entries `e..e + n` outside `inside` one by one, bounds-checked.
    #[inline(never)]
    fn add_outside<T: Pixel, const W64: bool, const VAR: bool>(
        &mut self,
        tiles: &Tiles,
        frame: &[T],
        e: usize,
        n: usize,
        inside: __mmask16,
    ) {
        for k in (0..n).filter(|k| inside & (1 << k) == 0) {
            let x = frame[tiles.pixel[e + k] as usize].to_f64();
            let w = entry_weight::<W64>(tiles, e + k);
            self.signal_rest += w * x;
            if VAR {
                self.variance_rest += w * w * if x > 1.0 { x } else { 1.0 };
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn signal(&self) -> f64 {
        _mm512_reduce_add_pd(_mm512_add_pd(self.signal[0], self.signal[1])) + self.signal_rest
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn variance(&self) -> f64 {
        _mm512_reduce_add_pd(_mm512_add_pd(self.variance[0], self.variance[1])) + self.variance_rest
    }
}

/// Sixteen pixels (lanes where `mask` is set, else 0) as f64, lanes 0–7 and 8–15: one
/// 16-lane gather, 4 % faster than two of 8 lanes on Zen 5 (session 24, kernel alone); two
/// for f64 pixels. `KIND` as for [`load8`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn load16<const KIND: u8>(base: *const i32, idx: __m512i, mask: __mmask16) -> [__m512d; 2] {
    let zero = _mm512_setzero_si512();
    let (idx_lo, idx_hi) = (
        _mm512_castsi512_si256(idx),
        _mm512_extracti64x4_epi64::<1>(idx),
    );
    if KIND == 5 {
        let base = base as *const f64;
        return [
            gather_f64(base, idx_lo, mask as __mmask8),
            gather_f64(base, idx_hi, (mask >> 8) as __mmask8),
        ];
    }
    if KIND == 4 {
        let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, base as *const f32);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        return [
            _mm512_cvtps_pd(_mm512_castps512_ps256(v)),
            _mm512_cvtps_pd(hi),
        ];
    }
    let v = match KIND {
        0 => _mm512_and_si512(
            _mm512_mask_i32gather_epi32::<1>(zero, mask, idx, base),
            _mm512_set1_epi32(0xff),
        ),
        1 => _mm512_and_si512(
            _mm512_mask_i32gather_epi32::<2>(zero, mask, idx, base),
            _mm512_set1_epi32(0xffff),
        ),
        _ => _mm512_mask_i32gather_epi32::<4>(zero, mask, idx, base),
    };
    let (lo, hi) = (_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    if KIND == 3 {
        [_mm512_cvtepi32_pd(lo), _mm512_cvtepi32_pd(hi)]
    } else {
        [_mm512_cvtepu32_pd(lo), _mm512_cvtepu32_pd(hi)]
    }
}

/// [`entry_weight`] of entries `e..e + 16` (lanes where `mask` is set, else 0), lanes 0–7 and
/// 8–15.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn weights16<const W64: bool>(tiles: &Tiles, mask: __mmask16, e: usize) -> [__m512d; 2] {
    if W64 {
        let w = tiles.weight.as_ptr().add(e);
        [
            _mm512_maskz_loadu_pd(mask as __mmask8, w),
            _mm512_maskz_loadu_pd((mask >> 8) as __mmask8, w.add(8)),
        ]
    } else {
        let a = _mm512_maskz_loadu_ps(mask, tiles.area.as_ptr().add(e));
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
        [
            _mm512_cvtps_pd(_mm512_castps512_ps256(a)),
            _mm512_cvtps_pd(hi),
        ]
    }
}

/// [`gather_limit`] in 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn gather_limit16<T: Pixel>(frame: &[T]) -> __m512i {
    _mm512_set1_epi32(gatherable_len(frame) as u32 as i32)
}

/// [`lanes`] in 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn lanes16<const CLAMP: bool>(
    idx: __m512i,
    mask: __mmask16,
    limit: __m512i,
) -> (__m512i, __mmask16) {
    if CLAMP {
        let last = _mm512_sub_epi32(limit, _mm512_set1_epi32(1));
        (_mm512_min_epu32(idx, last), mask)
    } else {
        (idx, _mm512_mask_cmplt_epu32_mask(mask, idx, limit))
    }
}

/// Per-pixel inputs of [`masked_bins`], all flat raw-image arrays as long as the frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelInputs<'a> {
    pub dark: Option<&'a [f64]>,
    /// 1 / correction; NaN marks a masked pixel.
    pub scale: Option<&'a [f64]>,
    /// Given variances (used when the error model is [`MaskedVariance::Given`]).
    pub variance: Option<&'a [f64]>,
}

/// Variance model of [`masked_bins`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskedVariance {
    None,
    /// `max(raw, 1)` of the value before dark subtraction.
    Poisson,
    /// `PixelInputs::variance[p]`.
    Given,
}

/// Accumulators of one bin range for [`masked_bins`], each `hi − lo` long (`variance` may be
/// empty when the model is `None`).
pub struct MaskedSums<'a> {
    pub signal: &'a mut [f64],
    pub area: &'a mut [f64],
    pub variance: &'a mut [f64],
    pub count: &'a mut [u32],
}

/// Per bin `lo..hi`, over entries whose value is not NaN (w = area·scale, value = raw − dark):
/// `signal = Σ w·value`, `area = Σ area`, `variance = Σ w²·var`, `count = #entries`: the
/// scalar kernel's sums (`integrate::bins_block`) for one frame; `max_pixel` as for
/// [`dense_bins`]. Callers check [`available`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub fn masked_bins<T: Pixel>(
    indptr: &[u64],
    pixel: &[u32],
    area: &[f32],
    max_pixel: Option<u32>,
    frame: &[T],
    inputs: PixelInputs,
    model: MaskedVariance,
    lo: usize,
    hi: usize,
    out: MaskedSums,
) {
    assert_eq!(out.signal.len(), hi - lo, "outputs for bins {lo}..{hi}");
    masked_run(
        indptr,
        pixel,
        area,
        max_pixel,
        [frame],
        inputs,
        model,
        lo,
        [out],
    );
}

/// [`masked_bins`] for [`STACK_BLOCK`] frames at once: the CSR entry, the per-pixel scale,
/// dark and given variance are loaded once and shared by the block; each frame keeps its own
/// sums (its NaN pixels drop out of its own area and count). `out[k]` is frame k's, for bins
/// `lo..lo + out[k].signal.len()`. Callers check [`available`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub fn masked_bins_stack<T: Pixel>(
    indptr: &[u64],
    pixel: &[u32],
    area: &[f32],
    max_pixel: Option<u32>,
    frames: &[&[T]],
    inputs: PixelInputs,
    model: MaskedVariance,
    lo: usize,
    out: [MaskedSums; STACK_BLOCK],
) {
    let frames: [&[T]; STACK_BLOCK] = frames.try_into().expect("one block of frames");
    masked_run(
        indptr, pixel, area, max_pixel, frames, inputs, model, lo, out,
    );
}

/// Checks the inputs of the masked kernel for `NB` frames and runs it.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn masked_run<T: Pixel, const NB: usize>(
    indptr: &[u64],
    pixel: &[u32],
    area: &[f32],
    max_pixel: Option<u32>,
    frames: [&[T]; NB],
    inputs: PixelInputs,
    model: MaskedVariance,
    lo: usize,
    out: [MaskedSums; NB],
) {
    assert!(available::<T>(), "gather kernel called for {:?}", T::GATHER);
    let n = out[0].signal.len();
    assert!(lo + n <= indptr.len().saturating_sub(1));
    for (sums, frame) in out.iter().zip(&frames) {
        assert_eq!(
            frame.len(),
            frames[0].len(),
            "frames of a block differ in length"
        );
        assert!(sums.signal.len() == n && sums.area.len() == n && sums.count.len() == n);
        assert!(model == MaskedVariance::None || sums.variance.len() == n);
    }
    for v in [inputs.dark, inputs.scale, inputs.variance]
        .into_iter()
        .flatten()
    {
        assert_eq!(
            v.len(),
            frames[0].len(),
            "per-pixel input of another length than the frame"
        );
    }
    assert!(model != MaskedVariance::Given || inputs.variance.is_some());
    macro_rules! run {
        ($kind:literal, $clamp:literal) => {
            masked::<T, $kind, NB, $clamp>(indptr, pixel, area, frames, inputs, model, lo, out)
        };
    }
    // SAFETY: AVX-512F/VL were detected by `available`; gathered indices are bounds-checked or
    // clamped (`lanes`) against the (common) frame length, which every per-pixel input shares.
    unsafe { any_kinds!(T::GATHER.code(), clamp_ok(max_pixel, frames[0]), run) }
}

/// One entry the scalar way: `(w·value, area, w²·var)`, or None when the value is NaN.
#[inline]
#[cfg(target_arch = "x86_64")]
fn scalar_entry<T: Pixel>(
    p: usize,
    a: f32,
    frame: &[T],
    inputs: &PixelInputs,
    model: MaskedVariance,
) -> Option<(f64, f64, f64)> {
    let raw = frame[p].to_f64();
    let area = a as f64;
    let w = inputs.scale.map_or(area, |s| area * s[p]);
    let value = inputs.dark.map_or(raw, |d| raw + -d[p]);
    let contribution = w * value;
    if !contribution.is_finite() {
        return None;
    }
    let var = match model {
        MaskedVariance::None => 0.0,
        MaskedVariance::Poisson => {
            if raw > 1.0 {
                raw
            } else {
                1.0
            }
        }
        MaskedVariance::Given => inputs.variance.map_or(0.0, |v| v[p]),
    };
    Some((contribution, area, w * w * var))
}

/// Frames one pass of the masked kernels ([`masked_bins_stack`]) and of the run kernels
/// takes. Stacks are bound by the CSR stream (pixel index + area, 8 bytes per entry, from
/// memory for every frame) and by the frames' own pixels, which come fresh from memory: sharing
/// the CSR by two frames took Pilatus 2M stacks from 122 to 151 frames/s and Eiger 4M 1D from
/// 81 to 106 at 2 threads (Intel VM, Poisson variance); blocks of 3 and 4 measured the same as 2
/// or slower, their frame gathers then dominate.
pub const STACK_BLOCK: usize = 2;

/// Frames one pass of [`dense_bins_stack`] takes: on the tile layout, whose walk reuses each
/// frame line while it is cached, 4 beat 2 (Zen 5 VM, 40-frame stacks, 2 threads, three
/// alternating rounds: Pilatus 2M cake 537–693 against 487–505 frames/s, 3000-bin lineout
/// 463–480 against 438–443; with Poisson σ 405–414 against 379–393).
pub const DENSE_STACK_BLOCK: usize = 4;

/// [`dense_bins`] for [`DENSE_STACK_BLOCK`] frames at once: each CSR entry (pixel index and area) is
/// loaded once and gathered from every frame. `signal[k]` / `variance[k]` are frame k's outputs
/// for bins `lo..hi` (`variance` empty without a variance); `max_pixel` as for [`dense_bins`].
/// Callers check [`available`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub fn dense_bins_stack<T: Pixel>(
    tiles: &Tiles,
    max_pixel: Option<u32>,
    frames: &[&[T]],
    lo: usize,
    hi: usize,
    signal: &mut [&mut [f64]],
    variance: &mut [&mut [f64]],
) {
    assert!(
        available::<T>(),
        "AVX-512 gather kernel called without AVX-512 or for {:?}",
        T::GATHER
    );
    let nb = DENSE_STACK_BLOCK;
    assert!(frames.len() == nb && signal.len() == nb);
    assert!(frames.iter().all(|f| f.len() == frames[0].len()));
    assert!(hi <= tiles.n_pieces() && lo <= hi);
    assert!(signal.iter().all(|s| s.len() == hi - lo));
    assert!(
        variance.is_empty()
            || (variance.len() == nb && variance.iter().all(|v| v.len() == hi - lo))
    );
    check_tiles(tiles, lo, hi);
    macro_rules! run {
        ($kind:literal, $clamp:literal) => {
            stack::<T, $kind, DENSE_STACK_BLOCK, $clamp>(tiles, frames, lo, hi, signal, variance)
        };
    }
    // SAFETY: AVX-512F/VL were detected by `available`; every gathered index is compared with or
    // clamped below (`lanes`) the (common) frame's gatherable length.
    unsafe { any_kinds!(T::GATHER.code(), clamp_ok(max_pixel, frames[0]), run) }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn stack<T: Pixel, const KIND: u8, const NB: usize, const CLAMP: bool>(
    tiles: &Tiles,
    frames: &[&[T]],
    lo: usize,
    hi: usize,
    signal: &mut [&mut [f64]],
    variance: &mut [&mut [f64]],
) {
    // The variance and the weights' type as constants, as in `bins`.
    match (variance.is_empty(), tiles.weight.is_empty()) {
        (true, true) => {
            stack_with::<T, KIND, NB, CLAMP, false, false>(tiles, frames, lo, hi, signal, variance)
        }
        (false, true) => {
            stack_with::<T, KIND, NB, CLAMP, true, false>(tiles, frames, lo, hi, signal, variance)
        }
        (true, false) => {
            stack_with::<T, KIND, NB, CLAMP, false, true>(tiles, frames, lo, hi, signal, variance)
        }
        (false, false) => {
            stack_with::<T, KIND, NB, CLAMP, true, true>(tiles, frames, lo, hi, signal, variance)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn stack_with<
    T: Pixel,
    const KIND: u8,
    const NB: usize,
    const CLAMP: bool,
    const VAR: bool,
    const W64: bool,
>(
    tiles: &Tiles,
    frames: &[&[T]],
    lo: usize,
    hi: usize,
    signal: &mut [&mut [f64]],
    variance: &mut [&mut [f64]],
) {
    let (indptr, pixel) = (&tiles.indptr, &tiles.pixel);
    let mut next_prefetch = first_prefetch_group(indptr[lo] as usize);
    let base: [*const i32; NB] = std::array::from_fn(|k| frames[k].as_ptr() as *const i32);
    let limit = gather_limit16(frames[0]);
    for b in lo..hi {
        // SAFETY of the loads below: `check_pieces` ran for lo..hi.
        let (e0, e1) = (
            *indptr.get_unchecked(b) as usize,
            *indptr.get_unchecked(b + 1) as usize,
        );
        let mut sums = [DenseSums::default(); NB];
        let mut e = e0;
        while e < e1 {
            prefetch_groups(tiles, &frames[..NB], &mut next_prefetch, e / 16);
            prefetch_tile_entries::<W64>(tiles, e);
            let n = (e1 - e).min(16);
            let mask: __mmask16 = (0xffffu32 >> (16 - n)) as u16;
            let idx = _mm512_maskz_loadu_epi32(mask, pixel.as_ptr().add(e) as *const i32);
            let (idx, inside) = lanes16::<CLAMP>(idx, mask, limit);
            if inside != mask {
                for k in 0..NB {
                    sums[k].add_outside::<T, W64, VAR>(tiles, frames[k], e, n, inside);
                }
            }
            let w = weights16::<W64>(tiles, inside, e);
            for k in 0..NB {
                sums[k].add::<VAR>(w, load16::<KIND>(base[k], idx, inside), inside);
            }
            e += 16;
        }
        let i = b - lo;
        for k in 0..NB {
            signal[k][i] = sums[k].signal();
            if VAR {
                variance[k][i] = sums[k].variance();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn masked<T: Pixel, const KIND: u8, const NB: usize, const CLAMP: bool>(
    indptr: &[u64],
    pixel: &[u32],
    area: &[f32],
    frames: [&[T]; NB],
    inputs: PixelInputs,
    model: MaskedVariance,
    lo: usize,
    out: [MaskedSums; NB],
) {
    let base: [*const i32; NB] = std::array::from_fn(|k| frames[k].as_ptr() as *const i32);
    let limit = gather_limit(frames[0]);
    let one = _mm512_set1_pd(1.0);
    let n_entries = pixel.len();
    let n_bins = out[0].signal.len();
    let mut out = out;
    for b in lo..lo + n_bins {
        let (e0, e1) = (indptr[b] as usize, indptr[b + 1] as usize);
        assert!(
            e0 <= e1 && e1 <= n_entries.min(area.len()),
            "CSR row {b} out of order"
        );
        let i = b - lo;
        let mut s = [_mm512_setzero_pd(); NB];
        let mut a = [_mm512_setzero_pd(); NB];
        let mut v = [_mm512_setzero_pd(); NB];
        let mut rest = [(0.0, 0.0, 0.0); NB];
        let mut c = [0u32; NB];
        let mut e = e0;
        while e < e1 {
            if e + PREFETCH_AHEAD + 8 <= n_entries {
                for j in 0..8 {
                    let p = *pixel.get_unchecked(e + PREFETCH_AHEAD + j) as usize;
                    // Prefetch is a hint: an address past an array never faults.
                    for f in frames.iter().take(NB) {
                        _mm_prefetch::<_MM_HINT_T0>(f.as_ptr().wrapping_add(p) as *const i8);
                    }
                    for arr in [inputs.dark, inputs.scale].into_iter().flatten() {
                        _mm_prefetch::<_MM_HINT_T0>(arr.as_ptr().wrapping_add(p) as *const i8);
                    }
                }
            }
            let n = (e1 - e).min(8);
            let mask: __mmask8 = (0xffu32 >> (8 - n)) as u8;
            let idx = _mm256_maskz_loadu_epi32(mask, pixel.as_ptr().add(e) as *const i32);
            let (idx, inside) = lanes::<CLAMP>(idx, mask, limit);
            if inside != mask {
                for j in 0..n {
                    if inside & (1 << j) == 0 {
                        let p = pixel[e + j] as usize;
                        for k in 0..NB {
                            if let Some((cs, ca, cv)) =
                                scalar_entry(p, area[e + j], frames[k], &inputs, model)
                            {
                                rest[k].0 += cs;
                                rest[k].1 += ca;
                                rest[k].2 += cv;
                                c[k] += 1;
                            }
                        }
                    }
                }
            }
            let ar = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(inside, area.as_ptr().add(e)));
            let w = match inputs.scale {
                Some(sc) => _mm512_mul_pd(ar, gather_f64(sc.as_ptr(), idx, inside)),
                None => ar,
            };
            let w2 = _mm512_mul_pd(w, w);
            let dark = inputs.dark.map(|d| gather_f64(d.as_ptr(), idx, inside));
            let given = match model {
                MaskedVariance::Given => inputs
                    .variance
                    .map(|gv| gather_f64(gv.as_ptr(), idx, inside)),
                _ => None,
            };
            for k in 0..NB {
                let raw = load8::<KIND>(base[k], idx, inside);
                let value = match dark {
                    Some(d) => _mm512_sub_pd(raw, d),
                    None => raw,
                };
                let contribution = _mm512_mul_pd(w, value);
                // |c| < ∞ (ordered): false exactly for NaN and ±∞.
                let valid = _mm512_mask_cmp_pd_mask::<_CMP_LT_OQ>(
                    inside,
                    _mm512_abs_pd(contribution),
                    _mm512_set1_pd(f64::INFINITY),
                );
                s[k] = _mm512_mask_add_pd(s[k], valid, s[k], contribution);
                a[k] = _mm512_mask_add_pd(a[k], valid, a[k], ar);
                c[k] += valid.count_ones();
                let var = match model {
                    MaskedVariance::None => None,
                    MaskedVariance::Poisson => Some(_mm512_max_pd(raw, one)),
                    MaskedVariance::Given => given,
                };
                if let Some(var) = var {
                    v[k] = _mm512_mask3_fmadd_pd(w2, var, v[k], valid);
                }
            }
            e += n;
        }
        for k in 0..NB {
            let sums = &mut out[k];
            sums.signal[i] = _mm512_reduce_add_pd(s[k]) + rest[k].0;
            sums.area[i] = _mm512_reduce_add_pd(a[k]) + rest[k].1;
            sums.count[i] = c[k];
            if model != MaskedVariance::None {
                sums.variance[i] = _mm512_reduce_add_pd(v[k]) + rest[k].2;
            }
        }
    }
}
