//! Maps made from a map with other weights: a per-pixel scale and dark folded in, pixel
//! fractions instead of areas, MIDAS gradient resampling, and the pooling of weights that read
//! one pixel twice in a bin.

use rayon::prelude::*;

use super::{Derived, DetectorMap};
use crate::error::{Error, Result};
use crate::geometry::ImageTransform;
use crate::midas_files::{bilinear_pieces, gradient_shift};
use crate::storage::Storage;
use crate::tiles::split_runs;

impl DetectorMap {
    /// Moves the weights of entries that read the same pixel within one bin (bilinear pieces,
    /// MIDAS sub-pixel records) onto the first of them and zeroes the others, so the per-entry
    /// variance Σ w²·var becomes the per-pixel Σ (Σ w)²·var. Areas, counts and the signal stay
    /// as they were (up to rounding of the regrouped product).
    pub fn pool_shared_pixel_weights(&mut self) {
        let Some(weight) = self.weight.as_mut().map(Storage::to_mut) else {
            return;
        };
        // Per bin, its entries sorted by (pixel, entry): each run of one pixel pools on its
        // first entry. Bins hold few entries, so no per-pixel table is needed.
        let mut keys: Vec<(u32, usize)> = Vec::new();
        for b in 0..self.indptr.len().saturating_sub(1) {
            let (lo, hi) = (self.indptr[b] as usize, self.indptr[b + 1] as usize);
            keys.clear();
            keys.extend((lo..hi).map(|e| (self.pixel[e], e)));
            keys.sort_unstable();
            for run in keys.chunk_by(|a, b| a.0 == b.0) {
                let first = run[0].1;
                for &(_, e) in &run[1..] {
                    weight[first] += weight[e];
                    weight[e] = 0.0;
                }
            }
        }
    }

    /// This map with a fixed per-pixel `scale` (1 / correction, NaN = masked) and `dark` folded
    /// into its entries, and the per-bin signal offset the dark leaves: entry weights become
    /// `w·scale`, entries whose weight or dark is not finite are dropped (exactly the entries
    /// the integration kernels would leave out), and `offset[b] = Σ w·scale·dark` over the
    /// kept entries. Integrating frames without NaN or ±∞ with the result (no dark, no scale) and
    /// subtracting `offset` gives the sums of the original map with `dark` and `scale`, up to
    /// summation order, through the NaN-free kernel: no per-entry scale and dark loads or
    /// validity checks per frame. `scale` and `dark` are as long as the image.
    pub fn folded(
        &self,
        scale: Option<&[f64]>,
        dark: Option<&[f64]>,
    ) -> Result<(DetectorMap, Vec<f64>)> {
        let n_pixels = self.n_pixels();
        for (what, v) in [("scale", scale), ("dark", dark)] {
            if let Some(v) = v {
                if v.len() != n_pixels {
                    return Err(Error::shape(what, n_pixels, v.len()));
                }
            }
        }
        self.check()?;
        let folded_weight = |e: usize| -> Option<(f64, f64)> {
            let p = self.pixel[e] as usize;
            let base = match &self.weight {
                Some(weight) => weight[e],
                None => self.area[e] as f64,
            };
            let weight = base * scale.map_or(1.0, |s| s[p]);
            let d = dark.map_or(0.0, |d| d[p]);
            (weight.is_finite() && d.is_finite()).then_some((weight, d))
        };
        // Two passes over the bins in parallel: count the kept entries (and sum the offsets),
        // then write each bin's into its own slice of the new arrays.
        let (kept, offset): (Vec<usize>, Vec<f64>) = self
            .indptr
            .par_windows(2)
            .map(|w| {
                let (mut n, mut offset) = (0, 0.0);
                for (weight, d) in (w[0] as usize..w[1] as usize).filter_map(folded_weight) {
                    n += 1;
                    offset += weight * d;
                }
                (n, offset)
            })
            .unzip();
        let mut indptr = Vec::with_capacity(self.indptr.len());
        indptr.push(0u64);
        for &n in &kept {
            indptr.push(indptr[indptr.len() - 1] + n as u64);
        }
        let n_kept = indptr[indptr.len() - 1] as usize;
        let mut pixel = vec![0u32; n_kept];
        let mut area = vec![0f32; n_kept];
        let mut delta_r = vec![0f32; n_kept];
        let mut weight = vec![0f64; n_kept];
        let slices = split_runs(&mut pixel, &kept)
            .into_iter()
            .zip(split_runs(&mut area, &kept))
            .zip(split_runs(&mut delta_r, &kept))
            .zip(split_runs(&mut weight, &kept))
            .collect::<Vec<_>>();
        slices
            .into_par_iter()
            .zip(self.indptr.par_windows(2))
            .for_each(|((((p, a), d), w), bin)| {
                let mut k = 0;
                for e in bin[0] as usize..bin[1] as usize {
                    if let Some((weight, _)) = folded_weight(e) {
                        p[k] = self.pixel[e];
                        a[k] = self.area[e];
                        d[k] = self.delta_r[e];
                        w[k] = weight;
                        k += 1;
                    }
                }
            });
        let map = DetectorMap {
            n_y: self.n_y,
            n_z: self.n_z,
            r_edges: self.r_edges.clone(),
            eta_edges: self.eta_edges.clone(),
            indptr: indptr.into(),
            pixel: pixel.into(),
            area: area.into(),
            delta_r: delta_r.into(),
            weight: Some(weight.into()),
            weights_in_any_order: self.weight.is_none(),
            mask_hit: self.mask_hit.clone(),
            bin_geometric_area: self.bin_geometric_area.clone(),
            derived: Derived::default(),
        };
        Ok((map, offset))
    }

    /// This map with each entry's area divided by its pixel's whole area `whole[pixel]`
    /// ([`pixel_areas`](super::pixel_areas)): every pixel then counts once, split over bins in
    /// proportion to its overlap, as in pyFAI. The per-bin sums of the new areas become
    /// `bin_geometric_area`. Refused for maps with signal weights of their own (MIDAS C factors,
    /// resampling) and where an entry's pixel has no positive whole area.
    pub fn with_pixel_fractions(&self, whole: &[f64]) -> Result<DetectorMap> {
        if self.weight.is_some() {
            return Err(Error::Invalid(
                "pixel fractions need a map whose signal weights are its areas".into(),
            ));
        }
        if whole.len() != self.n_pixels() {
            return Err(Error::shape(
                "whole pixel areas",
                self.n_pixels(),
                whole.len(),
            ));
        }
        self.check()?;
        let no_area = self
            .pixel
            .par_iter()
            .filter(|&&p| !(whole[p as usize] > 0.0))
            .count();
        if no_area > 0 {
            return Err(Error::Invalid(format!(
                "{no_area} map entries belong to pixels whose whole area measures 0 in this \
                 geometry"
            )));
        }
        let mut area = Vec::new();
        area.par_extend(
            self.pixel
                .par_iter()
                .zip(self.area.par_iter())
                .map(|(&p, &a)| (a as f64 / whole[p as usize]) as f32),
        );
        let mut map = DetectorMap {
            n_y: self.n_y,
            n_z: self.n_z,
            r_edges: self.r_edges.clone(),
            eta_edges: self.eta_edges.clone(),
            indptr: self.indptr.clone(),
            pixel: self.pixel.clone(),
            area: area.into(),
            delta_r: self.delta_r.clone(),
            weight: None,
            weights_in_any_order: false,
            mask_hit: self.mask_hit.clone(),
            bin_geometric_area: Vec::new(),
            derived: Derived::default(),
        };
        map.bin_geometric_area = map.bin_area();
        Ok(map)
    }
}

/// MIDAS `GradientCorrection` (spec §5.2) on a map: every entry's pixel value is sampled at the
/// pixel centre moved by −δR along the ray from the beam centre, i.e. at its bin's centre radius,
/// bilinearly, so its signal weight spreads over up to four pixels. Unlike the C integrator the
/// ray lives in the transformed frame (where `bc` is given), so ImTransOpt flips keep the
/// direction right. Areas stay with the entry's first piece; positions past the image edge
/// clamp as in C. `aspect`: pxZ / pxY (see [`gradient_shift`]).
pub fn gradient_resampled(
    map: &DetectorMap,
    transform: &ImageTransform,
    bc: (f64, f64),
    aspect: f64,
) -> DetectorMap {
    let (n_y, n_z) = (map.n_y, map.n_z);
    let n = map.n_entries();
    let mut indptr = Vec::with_capacity(map.indptr.len());
    indptr.push(0u64);
    let mut pixel = Vec::with_capacity(2 * n);
    let mut area = Vec::with_capacity(2 * n);
    let mut delta_r = Vec::with_capacity(2 * n);
    let mut weight = Vec::with_capacity(2 * n);
    for b in 0..map.n_bins() {
        for e in map.indptr[b] as usize..map.indptr[b + 1] as usize {
            let p = map.pixel[e] as usize;
            let (ty, tz) = transform.transformed_of_raw(p % n_y, p / n_y);
            let dr = map.delta_r[e];
            let (y, z) = gradient_shift(ty as f64, tz as f64, dr as f64, bc, aspect);
            let w0 = map.weight.as_ref().map_or(map.area[e] as f64, |w| w[e]);
            let mut first = true;
            for (tp, w) in bilinear_pieces(y, z, n_y, n_z) {
                if w == 0.0 {
                    continue;
                }
                let (ry, rz) = transform.raw_of_transformed(tp % n_y, tp / n_y);
                pixel.push((rz * n_y + ry) as u32);
                area.push(if first { map.area[e] } else { 0.0 });
                first = false;
                delta_r.push(dr);
                weight.push(w0 * w);
            }
        }
        indptr.push(pixel.len() as u64);
    }
    let mut resampled = DetectorMap {
        n_y,
        n_z,
        r_edges: map.r_edges.clone(),
        eta_edges: map.eta_edges.clone(),
        indptr: indptr.into(),
        pixel: pixel.into(),
        area: area.into(),
        delta_r: delta_r.into(),
        weight: Some(weight.into()),
        weights_in_any_order: false,
        mask_hit: map.mask_hit.clone(),
        bin_geometric_area: map.bin_geometric_area.clone(),
        derived: Derived::default(),
    };
    resampled.pool_shared_pixel_weights();
    resampled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::test_detector::flat;
    use crate::map::{build, MapInputs};

    #[test]
    fn shared_pixel_weights_pool_on_the_first_entry_of_each_bin() {
        let mut map = build(&flat(1.0, 1.0, 30.0), MapInputs::default()).unwrap();
        // Bin 0 reads pixel 7 three times, bin 1 once more (another bin: not pooled).
        map.indptr = vec![0, 4, 6].into();
        map.pixel = vec![7, 3, 7, 7, 7, 3].into();
        map.area = vec![1.0; 6].into();
        map.delta_r = vec![0.0; 6].into();
        map.weight = Some(vec![0.5, 1.0, 0.25, 0.125, 2.0, 4.0].into());
        map.pool_shared_pixel_weights();
        assert_eq!(
            map.weight.as_deref(),
            Some(&[0.875, 1.0, 0.0, 0.0, 2.0, 4.0][..])
        );
    }

    #[test]
    fn folded_drops_invalid_entries_and_sums_the_dark_offset() {
        let map = build(&flat(1.0, 1.0, 30.0), MapInputs::default()).unwrap();
        let n = map.n_pixels();
        let scale: Vec<f64> = (0..n)
            .map(|p| {
                if p % 17 == 3 {
                    f64::NAN
                } else {
                    0.5 + (p % 7) as f64 * 0.1
                }
            })
            .collect();
        let dark: Vec<f64> = (0..n)
            .map(|p| {
                if p % 23 == 5 {
                    f64::NAN
                } else {
                    (p % 5) as f64
                }
            })
            .collect();
        let (f, offset) = map.folded(Some(&scale), Some(&dark)).unwrap();
        f.check().unwrap();
        assert_eq!((f.n_bins(), offset.len()), (map.n_bins(), map.n_bins()));
        let weight = f.weight.as_ref().unwrap();
        for b in 0..map.n_bins() {
            let (lo, hi) = (map.indptr[b] as usize, map.indptr[b + 1] as usize);
            let kept: Vec<usize> = (lo..hi)
                .filter(|&e| {
                    let p = map.pixel[e] as usize;
                    scale[p].is_finite() && dark[p].is_finite()
                })
                .collect();
            let (flo, fhi) = (f.indptr[b] as usize, f.indptr[b + 1] as usize);
            assert_eq!(fhi - flo, kept.len(), "bin {b}");
            let mut want_offset = 0.0;
            for (k, &e) in kept.iter().enumerate() {
                let p = map.pixel[e] as usize;
                let w = map.area[e] as f64 * scale[p];
                assert_eq!(
                    (f.pixel[flo + k], f.area[flo + k]),
                    (map.pixel[e], map.area[e])
                );
                assert_eq!(weight[flo + k], w);
                want_offset += w * dark[p];
            }
            assert_eq!(offset[b], want_offset, "bin {b}");
        }
        // Without scale and dark: the same entries, weights = areas, no offset.
        let (plain, zero) = map.folded(None, None).unwrap();
        assert_eq!((&plain.pixel, &plain.indptr), (&map.pixel, &map.indptr));
        assert!(zero.iter().all(|&o| o == 0.0));
        assert!(map.folded(Some(&scale[1..]), None).is_err());
        assert!(map.folded(None, Some(&dark[..3])).is_err());
    }

    #[test]
    fn gradient_resampling_keeps_areas_and_spreads_weights() {
        let p = flat(0.0, 0.7, 7.0);
        let map = build(&p, MapInputs::default()).unwrap();
        let t = ImageTransform::new(&[], map.n_y, map.n_z);
        let g = gradient_resampled(&map, &t, (p.bc_y_px, p.bc_z_px), 1.0);
        g.check().unwrap();
        assert!(g.n_entries() > map.n_entries());
        let w = g.weight.as_ref().unwrap();
        for b in 0..map.n_bins() {
            let (lo, hi) = (g.indptr[b] as usize, g.indptr[b + 1] as usize);
            let areas: f64 = g.area[lo..hi].iter().map(|&a| a as f64).sum();
            let weights: f64 = w[lo..hi].iter().sum();
            let before: f64 = map.bin_area()[b];
            assert!(
                (areas - before).abs() < 1e-9,
                "bin {b}: {areas} vs {before}"
            );
            // Bilinear coefficients sum to 1 per entry: the signal weight of a flat image
            // equals the area.
            assert!((weights - before).abs() < 1e-6 * before.max(1.0), "bin {b}");
        }
    }
}
