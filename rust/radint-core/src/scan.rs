//! Whole-frame scans outside the CSR kernels: counting the pixels that hold gap / bad-pixel
//! marker values, which the Integrator does for every integer frame when such values are
//! configured (numpy's one pass per value took ~1.5 ms of a Pilatus 2M frame on 2 cores), and
//! the NaN and ±∞ values of float frames, which decide their kernels; narrowing float64 frames
//! whose values are all float32 values; the CRC-32 of a map cache's members.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::integrate::Pixel;

/// Pixels per rayon task (counted in u32 lanes: 32-bit sums vectorize twice as wide).
const CHUNK: usize = 64 * 1024;

/// How many elements of `data` equal any of `values`, on the current rayon pool.
pub fn count_equal<T: Copy + PartialEq + Send + Sync>(data: &[T], values: &[T]) -> usize {
    let mut distinct: Vec<T> = Vec::with_capacity(values.len());
    for &v in values {
        if !distinct.contains(&v) {
            distinct.push(v);
        }
    }
    // One branch-free pass per value over a cache-resident chunk: the compiler vectorizes it
    // (a per-element search of the value list did not, and took 3x as long).
    let count = |chunk: &[T]| -> usize {
        distinct
            .iter()
            .map(|&v| chunk.iter().map(|&x| u32::from(x == v)).sum::<u32>() as usize)
            .sum()
    };
    if data.len() <= CHUNK {
        return count(data);
    }
    data.par_chunks(CHUNK).map(count).sum()
}

/// The NaN and ±∞ values in `frames` (0 for integer pixels, without reading them), on the
/// current rayon pool.
pub fn count_nonfinite<T: Pixel>(frames: &[&[T]]) -> usize {
    if !T::IS_FLOAT {
        return 0;
    }
    frames
        .par_iter()
        .map(|f| f.par_chunks(CHUNK).map(T::count_nonfinite).sum::<usize>())
        .sum()
}

/// Where `frame` holds NaN or ±∞: the flat indices, ascending (none for integer pixels), on the
/// current rayon pool. Chunks without any (counted in one vectorized pass) add nothing, so a
/// frame with a few such values costs about a count (numpy's `flatnonzero(~isfinite(f))`
/// took ~3 ms of a Pilatus 2M frame).
pub fn nonfinite_pixels<T: Pixel>(frame: &[T]) -> Vec<u32> {
    if !T::IS_FLOAT {
        return Vec::new();
    }
    let parts: Vec<Vec<u32>> = frame
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(k, chunk)| {
            if T::count_nonfinite(chunk) == 0 {
                return Vec::new();
            }
            let base = k * CHUNK;
            (0..chunk.len())
                .filter(|&i| !chunk[i].to_f64().is_finite())
                .map(|i| (base + i) as u32)
                .collect()
        })
        .collect();
    parts.concat()
}

/// `src` written into `dst` as float32, and its NaN and ±∞ values counted, where every finite
/// value is exactly a float32 (integer counts below 2²⁴ stored as float64, say): float64
/// frames of such values then take the float32 kernels, whose half-size gathers give the same
/// sums bit for bit (each value widens back to itself). None, with `dst` partly written, where
/// a value is not; the pass stops early then.
///
/// # Panics
/// If `dst` is not as long as `src`.
pub fn narrow_to_f32(src: &[f64], dst: &mut [f32]) -> Option<usize> {
    assert_eq!(src.len(), dst.len(), "narrow_to_f32: lengths differ");
    let failed = AtomicBool::new(false);
    let nonfinite = src
        .par_chunks(CHUNK)
        .zip(dst.par_chunks_mut(CHUNK))
        .map(|(s, d)| {
            if failed.load(Ordering::Relaxed) {
                return 0;
            }
            // The difference a narrowing leaves is ±0 for an exact value, else nonzero, or NaN
            // for NaN and ±∞: its bits without the sign, or-ed, flag a chunk in one
            // vectorized pass (0.31 ms for a Pilatus 2M frame at 2 threads, where counting
            // both kinds in the same pass took 0.69).
            let mut flags = 0u64;
            for (d, &x) in d.iter_mut().zip(s) {
                let narrow = x as f32;
                *d = narrow;
                flags |= (f64::from(narrow) - x).to_bits() << 1;
            }
            if flags == 0 {
                return 0;
            }
            // A chunk holding a NaN, ±∞ or an inexact value: sorted out the slow way.
            let (mut inexact, mut nonfinite) = (0u32, 0u32);
            for &x in s {
                let finite = x.is_finite();
                inexact += u32::from(finite & (f64::from(x as f32) != x));
                nonfinite += u32::from(!finite);
            }
            if inexact > 0 {
                failed.store(true, Ordering::Relaxed);
            }
            nonfinite as usize
        })
        .sum();
    (!failed.load(Ordering::Relaxed)).then_some(nonfinite)
}

/// Bytes per rayon task of [`crc32`].
const CRC_CHUNK: usize = 4 << 20;

/// The CRC-32 (ZIP's, IEEE) of `data`, chunks on the current rayon pool, combined in order.
///
/// Why: a map cache is read in place rather than through `np.load`, which checked its members'
/// CRCs; checked here instead, a 1.5 GB map costs ~0.1 s where zlib's one thread took 0.7.
pub fn crc32(data: &[u8]) -> u32 {
    let parts: Vec<crc32fast::Hasher> = data
        .par_chunks(CRC_CHUNK)
        .map(|chunk| {
            let mut h = crc32fast::Hasher::new();
            h.update(chunk);
            h
        })
        .collect();
    let mut whole = crc32fast::Hasher::new();
    for part in &parts {
        whole.combine(part);
    }
    whole.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_chunks_combined_is_the_whole_ones() {
        // Known value: CRC-32 of "123456789" is 0xCBF43926.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(&[]), 0);
        let data: Vec<u8> = (0..2 * CRC_CHUNK + 12_345)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut h = crc32fast::Hasher::new();
        h.update(&data);
        assert_eq!(crc32(&data), h.finalize());
        let mut damaged = data.clone();
        damaged[CRC_CHUNK + 7] ^= 1;
        assert_ne!(crc32(&damaged), crc32(&data));
    }

    #[test]
    fn float64_values_narrow_only_when_every_one_is_a_float32() {
        let n = 3 * CHUNK + 5;
        let mut src: Vec<f64> = (0..n).map(|i| (i % 5000) as f64 * 0.25 - 7.0).collect();
        src[1] = f64::NAN;
        src[CHUNK] = f64::INFINITY;
        src[n - 1] = f64::NEG_INFINITY;
        src[2] = f64::from(f32::MAX);
        src[3] = f64::from(f32::MIN_POSITIVE) / 4.0; // a float32 subnormal: exact
        let mut dst = vec![0.0f32; n];
        assert_eq!(narrow_to_f32(&src, &mut dst), Some(3));
        for (d, s) in dst.iter().zip(&src) {
            assert!(f64::from(*d) == *s || (d.is_nan() && s.is_nan()));
        }
        for bad in [0.1, 1e300, f64::from(f32::MAX) * 2.0, 16_777_217.0] {
            let mut one = src.clone();
            one[n - 2] = bad; // in the last chunk
            assert_eq!(narrow_to_f32(&one, &mut dst), None, "{bad}");
        }
        assert_eq!(narrow_to_f32(&[], &mut []), Some(0));
    }

    #[test]
    fn nonfinite_pixels_lists_every_nan_and_infinity_in_order() {
        for n in [0usize, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17] {
            let mut frame: Vec<f32> = (0..n).map(|i| (i % 9) as f32 - 4.0).collect();
            let want: Vec<u32> = (0..n as u32)
                .filter(|i| i % 1009 == 3 || i % 4001 == 0)
                .collect();
            for (k, &i) in want.iter().enumerate() {
                frame[i as usize] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k % 3];
            }
            assert_eq!(nonfinite_pixels(&frame), want, "{n}");
            let wide: Vec<f64> = frame.iter().map(|&x| f64::from(x)).collect();
            assert_eq!(nonfinite_pixels(&wide), want, "{n}");
        }
        assert!(nonfinite_pixels(&[u16::MAX; 10]).is_empty());
    }

    #[test]
    fn counts_every_listed_value_at_any_length() {
        for n in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<i32> = (0..n).map(|i| (i % 7) as i32 - 2).collect();
            let want = data.iter().filter(|&&x| x == -1 || x == -2).count();
            assert_eq!(count_equal(&data, &[-1, -2]), want, "length {n}");
            assert_eq!(
                count_equal(&data, &[-1, -2, -1]),
                want,
                "a value listed twice"
            );
            assert_eq!(count_equal(&data, &[]), 0);
        }
    }

    #[test]
    fn nonfinite_values_are_counted_over_every_frame() {
        let mut a = vec![1.5f32; 200_003];
        a[0] = f32::NAN;
        a[70_000] = f32::INFINITY;
        a[200_002] = f32::NEG_INFINITY;
        a[5] = f32::MAX;
        a[6] = f32::MIN_POSITIVE / 2.0; // subnormal: finite
        let b: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        assert_eq!(count_nonfinite(&[&a[..], &a[..]]), 6);
        assert_eq!(count_nonfinite(&[&b[..]]), 3);
        assert_eq!(count_nonfinite::<f32>(&[]), 0);
        assert_eq!(count_nonfinite(&[&[u32::MAX; 9][..]]), 0);
    }
}
