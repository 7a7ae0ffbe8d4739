//! pyFAI's `error_model="azimuthal"`: a bin's uncertainty from the spread of the corrected pixel
//! values within it, not from counting statistics.
//!
//! With x = (raw − dark)·s a pixel's corrected value and a its overlap with the bin, the bin's
//! mean is μ = Σ a·x / Σ a (radint's intensity) and its variance sum VV = Σ a²·(x − μ)², so that
//! σ = √VV / Σ a, the standard error of that weighted mean. pyFAI (its CSR engine, unweighted
//! average) accumulates the same quantity with a one-pass update that its own source calls an
//! approximation; this is the exact two-pass value. The lineout's bin is the whole ring: its
//! VV takes each pixel once, with its weight summed over the η bins it is split between, about
//! the ring's mean.

use rayon::prelude::*;

use super::{Pixel, Sums};
use crate::error::{Error, Result};
use crate::map::DetectorMap;

/// Entries ahead whose pixel's frame value the spread prefetches (a random line each: 1-D
/// Pilatus 2M at one thread 34 -> 28 ms with it; 16 to 256 measured alike).
const AHEAD: usize = 64;

/// Prefetch the frame's value of entry `k`'s pixel when `k` is before `end` (a hint: nothing
/// is read).
#[inline(always)]
fn prefetch_value<T>(frame: &[T], pixel: &[u32], k: usize, end: usize) {
    #[cfg(target_arch = "x86_64")]
    if k < end {
        if let Some(&p) = pixel.get(k) {
            // SAFETY: a prefetch never faults; the address is computed, not dereferenced.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(frame.as_ptr().wrapping_add(p as usize) as *const i8);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (frame, pixel, k, end);
}

/// Per-bin variance sums (`n_frames·n_bins`, bin-major) and, per frame and radial row, what the
/// ring's VV adds to the sum of its bins' ([`super::Sums::lineout_cross`]'s meaning), so that
/// [`super::finalize`] turns them into sigmas as it does Poisson variances.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AzimuthalSpread {
    pub variance: Vec<f64>,
    pub lineout_cross: Vec<f64>,
}

/// The azimuthal spread of `frames` (each `n_pixels` long) under `map`, about the bin means of
/// `sums` (their integration, with the same `dark` and per-pixel `scale`, NaN: masked). Values
/// that are NaN or ±∞ after dark and scale are left out, as the integration leaves them out.
/// Maps with per-entry weights (MIDAS's, or a dark folded into them) are refused: the spread
/// is about the mean over areas.
pub fn azimuthal_spread<T: Pixel>(
    map: &DetectorMap,
    frames: &[&[T]],
    dark: Option<&[f64]>,
    scale: Option<&[f64]>,
    sums: &Sums,
) -> Result<AzimuthalSpread> {
    if map.weight.is_some() {
        return Err(Error::Invalid(
            "error_model='azimuthal': the map carries per-entry weights (MIDAS's, \
             GradientCorrection or a MIDAS C map); the spread is taken about the mean over \
             overlap areas, so it needs a map weighted by area"
                .into(),
        ));
    }
    let n = map.n_pixels();
    for (what, v) in [("dark", dark), ("per-pixel scale", scale)] {
        if let Some(v) = v.filter(|v| v.len() != n) {
            return Err(Error::shape(what, n, v.len()));
        }
    }
    if let Some((k, f)) = frames.iter().enumerate().find(|(_, f)| f.len() != n) {
        return Err(Error::shape(format!("frame {k}"), n, f.len()));
    }
    let (n_r, n_eta) = (map.n_r(), map.n_eta());
    let n_bins = n_r * n_eta;
    if sums.n_frames != frames.len()
        || sums.n_bins != n_bins
        || sums.area.len() != sums.signal.len()
    {
        return Err(Error::shape(
            "sums",
            format!("{} frames of {n_bins} bins", frames.len()),
            format!("{} frames of {} bins", sums.n_frames, sums.n_bins),
        ));
    }
    // The integration checked room for its sums and cake without a variance: the variance and
    // the sigmas finalize makes of it come on top, beside the sums already held.
    let n = frames.len() * n_bins;
    crate::error::check_room(n * 24 + frames.len() * n_r * 24, || {
        format!(
            "{} frame(s) of {n_bins} bins with their azimuthal variances and sigmas",
            frames.len()
        )
    })?;
    let mut spread = AzimuthalSpread {
        variance: vec![0.0; frames.len() * n_bins],
        lineout_cross: vec![0.0; frames.len() * n_r],
    };
    if n_bins == 0 {
        return Ok(spread);
    }
    let cross = map.eta_cross();
    // Plain slices, dereferenced once (a possibly file-mapped Storage is an enum).
    let (indptr, entry_pixel, entry_area): (&[u64], &[u32], &[f32]) =
        (&map.indptr, &map.pixel, &map.area);
    // A row of one frame per task: its bins (bin-major) and its ring, frame-major like `Sums`.
    spread
        .variance
        .par_chunks_mut(n_eta)
        .zip(spread.lineout_cross.par_iter_mut())
        .enumerate()
        .for_each(|(task, (bins_vv, ring_extra))| {
            let (frame, r) = (frames[task / n_r], task % n_r);
            let value = |p: usize| {
                let d = frame[p].to_f64() - dark.map_or(0.0, |d| d[p]);
                let x = scale.map_or(d, |s| d * s[p]);
                x.is_finite().then_some(x)
            };
            let first = task * n_eta; // this row's first bin in `sums`
            let signal = &sums.signal[first..first + n_eta];
            let area = &sums.area[first..first + n_eta];
            let (ring_signal, ring_area) = (signal.iter().sum::<f64>(), area.iter().sum::<f64>());
            let ring_mean = if ring_area > 0.0 {
                ring_signal / ring_area
            } else {
                0.0
            };
            // Squared deviations about each bin's mean and about the ring's.
            let (mut bins_total, mut ring_vv) = (0.0, 0.0);
            let row_end = indptr[(r + 1) * n_eta] as usize;
            for (e, vv) in bins_vv.iter_mut().enumerate() {
                let mean = if area[e] > 0.0 {
                    signal[e] / area[e]
                } else {
                    0.0
                };
                let b = r * n_eta + e;
                let mut own = 0.0;
                for j in indptr[b] as usize..indptr[b + 1] as usize {
                    prefetch_value(frame, entry_pixel, j + AHEAD, row_end);
                    if let Some(x) = value(entry_pixel[j] as usize) {
                        let w2 = (entry_area[j] as f64).powi(2);
                        own += w2 * (x - mean).powi(2);
                        ring_vv += w2 * (x - ring_mean).powi(2);
                    }
                }
                *vv = own;
                bins_total += own;
            }
            // A pixel split between η bins is one value in the ring: its weight there is
            // (Σ a)², the entries above gave Σ a², the row's cross weight the difference.
            for k in cross.indptr[r] as usize..cross.indptr[r + 1] as usize {
                if let Some(x) = value(cross.pixel[k] as usize) {
                    ring_vv += cross.weight[k] * (x - ring_mean).powi(2);
                }
            }
            *ring_extra = ring_vv - bins_total;
        });
    Ok(spread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrate::{integrate, Options};

    fn spread(map: &DetectorMap, frame: &[f64], scale: Option<&[f64]>) -> Result<AzimuthalSpread> {
        let opts = Options {
            scale,
            ..Options::default()
        };
        let sums = integrate(map, &[frame], &opts)?;
        azimuthal_spread(map, &[frame], None, scale, &sums)
    }
    use crate::map::test_detector::flat;

    /// 20 × 20 pixels around the beam, 0.7 px × 7° bins: many pixels split between η bins.
    fn small_map() -> DetectorMap {
        crate::map::build(&flat(0.0, 0.7, 7.0), Default::default()).unwrap()
    }

    /// The definition, pixel by pixel: the ring's VV with each pixel's weight summed over the
    /// ring's entries, each bin's VV over its own entries.
    fn by_definition(map: &DetectorMap, frame: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (n_r, n_eta) = (map.n_r(), map.n_eta());
        let mut bins = vec![0.0; n_r * n_eta];
        let mut rings = vec![0.0; n_r];
        for r in 0..n_r {
            let mut per_pixel = std::collections::BTreeMap::<u32, f64>::new();
            for e in 0..n_eta {
                let b = r * n_eta + e;
                let entries = map.indptr[b] as usize..map.indptr[b + 1] as usize;
                let (s, a) = entries.clone().fold((0.0, 0.0), |(s, a), j| {
                    let w = map.area[j] as f64;
                    (s + w * frame[map.pixel[j] as usize], a + w)
                });
                for j in entries {
                    let w = map.area[j] as f64;
                    bins[b] += w * w * (frame[map.pixel[j] as usize] - s / a).powi(2);
                    *per_pixel.entry(map.pixel[j]).or_default() += w;
                }
            }
            let a: f64 = per_pixel.values().sum();
            let mean = per_pixel
                .iter()
                .map(|(&p, w)| w * frame[p as usize])
                .sum::<f64>()
                / a;
            rings[r] = per_pixel
                .iter()
                .map(|(&p, w)| w * w * (frame[p as usize] - mean).powi(2))
                .sum();
        }
        (bins, rings)
    }

    #[test]
    fn bins_and_rings_match_the_definition() {
        let map = small_map();
        let frame: Vec<f64> = (0..map.n_pixels())
            .map(|p| 100.0 + ((p * 7919) % 97) as f64)
            .collect();
        let got = spread(&map, &frame, None).unwrap();
        let (bins, rings) = by_definition(&map, &frame);
        let n_eta = map.n_eta();
        let mut shared = 0;
        for r in 0..map.n_r() {
            let row = &got.variance[r * n_eta..(r + 1) * n_eta];
            for (g, want) in row.iter().zip(&bins[r * n_eta..(r + 1) * n_eta]) {
                assert!((g - want).abs() <= 1e-9 * want.max(1.0), "{g} vs {want}");
            }
            let ring = row.iter().sum::<f64>() + got.lineout_cross[r];
            assert!(
                (ring - rings[r]).abs() <= 1e-9 * rings[r].max(1.0),
                "{ring} vs {}",
                rings[r]
            );
            shared += (got.lineout_cross[r] != 0.0) as usize;
        }
        assert!(
            shared > 0,
            "the test map should split pixels between η bins"
        );
    }

    #[test]
    fn masked_and_nonfinite_values_are_left_out() {
        let map = small_map();
        let n = map.n_pixels();
        let frame: Vec<f64> = (0..n).map(|p| ((p * 31) % 13) as f64).collect();
        let mut masked = frame.clone();
        let mut scale = vec![1.0; n];
        for p in (0..n).step_by(5) {
            masked[p] = f64::NAN;
            scale[p] = f64::NAN;
        }
        let by_nan = spread(&map, &masked, None).unwrap();
        let by_scale = spread(&map, &frame, Some(&scale)).unwrap();
        assert_eq!(by_nan, by_scale);
        assert!(by_nan.variance.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn weighted_maps_and_wrong_lengths_are_refused() {
        let mut map = small_map();
        let frame = vec![1.0; map.n_pixels()];
        let sums = integrate(&map, &[&frame[..]], &Options::default()).unwrap();
        let short = vec![0.0; 3];
        let err = azimuthal_spread(&map, &[&frame[..]], Some(&short), None, &sums).unwrap_err();
        assert!(err.to_string().contains("dark"), "{err}");
        let err = azimuthal_spread(&map, &[&frame[..], &frame[..]], None, None, &sums).unwrap_err();
        assert!(err.to_string().contains("sums"), "{err}");
        map.weight = Some(
            map.area
                .iter()
                .map(|&a| a as f64)
                .collect::<Vec<_>>()
                .into(),
        );
        let err = azimuthal_spread(&map, &[&frame[..]], None, None, &sums).unwrap_err();
        assert!(err.to_string().contains("weighted by area"), "{err}");
    }
}
