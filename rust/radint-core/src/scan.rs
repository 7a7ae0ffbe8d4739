//! Whole-frame scans outside the CSR kernels: counting the pixels that hold gap / bad-pixel
//! marker values, which the Integrator does for every integer frame when such values are
//! configured (numpy's one pass per value took ~1.5 ms of a Pilatus 2M frame on 2 cores), and
//! the NaN and ±∞ values of float frames, which decide their kernels.

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

#[cfg(test)]
mod tests {
    use super::*;

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
