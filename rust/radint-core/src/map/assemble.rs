//! The build: every pixel's entries, row by row in parallel, then a counting sort into CSR.

use rayon::prelude::*;

use super::plan::{Fold, Plan};
use super::{Derived, DetectorMap, MapInputs};
use crate::error::Result;
use crate::params::Params;

/// One overlap of an unmasked pixel with a bin, before the sort into CSR.
#[derive(Clone, Copy)]
struct Entry {
    bin: u32,
    pixel: u32,
    area: f32,
    delta_r: f32,
}

/// What one image row of pixels yields.
#[derive(Default)]
struct RowOutput {
    entries: Vec<Entry>,
    masked: Vec<(u32, f64)>,
    /// Bins DetectorMapper flags for the row's masked pixels (see `midas_masked_bins`).
    mask_flags: Vec<u32>,
    fold: Option<Fold>,
}

/// Build the exact map for `params` (validated first). `n_threads = None` uses rayon's current pool.
pub fn build(params: &Params, inputs: MapInputs) -> Result<DetectorMap> {
    Ok(build_with_fold(params, inputs)?.0)
}

/// [`build`], also returning the pixel corners whose corrected R is negative, if any.
pub fn build_with_fold(params: &Params, inputs: MapInputs) -> Result<(DetectorMap, Option<Fold>)> {
    let plan = Plan::new(params, inputs)?;
    let (n_y, n_z) = (plan.transform.n_y, plan.transform.n_z);
    let rows: Vec<RowOutput> = (0..n_z)
        .into_par_iter()
        .map(|j| {
            let mut row = RowOutput::default();
            let mut scratch = Vec::with_capacity(16);
            let mut eta_scratch = Vec::with_capacity(8);
            let mut fold = Fold::none();
            for i in 0..n_y {
                plan.map_pixel_folding(i, j, &mut scratch, &mut eta_scratch, &mut fold);
                let (ry, rz) = plan.transform.raw_of_transformed(i, j);
                let pixel = (rz * n_y + ry) as u32;
                let masked = plan.mask.as_ref().is_some_and(|m| m[j * n_y + i] == 1);
                let grown = if masked {
                    row.masked.try_reserve(scratch.len())
                } else {
                    row.entries.try_reserve(scratch.len())
                };
                grown.map_err(|_| {
                    plan.pixels_blame.error(&format!(
                        "its entries need more memory than can be allocated, at row {j} of {n_z}"
                    ))
                })?;
                if masked {
                    plan.midas_masked_bins(i, j, &mut row.mask_flags);
                }
                for &(bin, area, dr_area) in scratch.iter() {
                    if masked {
                        row.masked.push((bin, area));
                    } else {
                        row.entries.push(Entry {
                            bin,
                            pixel,
                            area: area as f32,
                            delta_r: (dr_area / area) as f32,
                        });
                    }
                }
            }
            row.fold = Some(fold);
            Ok(row)
        })
        .collect::<Result<_>>()?;
    let fold = rows
        .iter()
        .filter_map(|row| row.fold)
        .fold(plan.grid_fold, Fold::merge);
    let map = assemble(&plan, rows)?;
    Ok((map, (fold.corners > 0).then_some(fold)))
}

/// Raw pointers to the CSR arrays, for the parallel scatter below.
struct Scatter {
    pixel: *mut u32,
    area: *mut f32,
    delta_r: *mut f32,
}
// SAFETY: every thread writes only the slots its own counting pass reserved (disjoint ranges).
unsafe impl Sync for Scatter {}

/// Counting sort of the rows' entries into CSR, in parallel over contiguous groups of rows.
/// Within a bin, entries keep row order (group by group), so the bytes do not depend on the
/// thread count.
fn assemble(plan: &Plan, rows: Vec<RowOutput>) -> Result<DetectorMap> {
    let n_r = plan.r_edges.len() - 1;
    let n_bins = n_r * plan.n_eta;
    let n_groups = (2 * rayon::current_num_threads()).clamp(1, rows.len().max(1));
    let per_group = rows.len().div_ceil(n_groups).max(1);
    let groups: Vec<&[RowOutput]> = rows.chunks(per_group).collect();
    let bins = &plan.bins_blame;
    let per_bin = format!("the entry counts of its {n_bins} bins");
    // Entries per (group, bin), turned into each group's first slot per bin.
    let mut starts: Vec<Vec<u64>> = groups
        .par_iter()
        .map(|g| {
            let mut c = bins.vec_filled(n_bins, 0u64, &per_bin)?;
            for row in g.iter() {
                for e in &row.entries {
                    c[e.bin as usize] += 1;
                }
            }
            Ok(c)
        })
        .collect::<Result<_>>()?;
    let mut indptr = bins.vec_filled(n_bins + 1, 0u64, &per_bin)?;
    for b in 0..n_bins {
        let mut next = indptr[b];
        for g in starts.iter_mut() {
            let count = g[b];
            g[b] = next;
            next += count;
        }
        indptr[b + 1] = next;
    }
    let nnz = indptr[n_bins] as usize;
    let entries = format!("its {nnz} entries");
    let mut pixel = plan.pixels_blame.vec_filled(nnz, 0u32, &entries)?;
    let mut area = plan.pixels_blame.vec_filled(nnz, 0f32, &entries)?;
    let mut delta_r = plan.pixels_blame.vec_filled(nnz, 0f32, &entries)?;
    let out = Scatter {
        pixel: pixel.as_mut_ptr(),
        area: area.as_mut_ptr(),
        delta_r: delta_r.as_mut_ptr(),
    };
    groups
        .par_iter()
        .zip(starts.par_iter_mut())
        .for_each(|(g, cursor)| {
            let out = &out;
            for row in g.iter() {
                for e in &row.entries {
                    let slot = &mut cursor[e.bin as usize];
                    let k = *slot as usize;
                    *slot += 1;
                    // SAFETY: k < nnz and slot k belongs to this group alone (counted above).
                    unsafe {
                        *out.pixel.add(k) = e.pixel;
                        *out.area.add(k) = e.area;
                        *out.delta_r.add(k) = e.delta_r;
                    }
                }
            }
        });
    let mut mask_hit =
        bins.vec_filled(n_bins, 0u8, &format!("the mask flags of its {n_bins} bins"))?;
    let mut map = DetectorMap {
        n_y: plan.transform.n_y,
        n_z: plan.transform.n_z,
        r_edges: plan.r_edges.clone(),
        eta_edges: plan.eta_edges(),
        indptr: indptr.into(),
        pixel: pixel.into(),
        area: area.into(),
        delta_r: delta_r.into(),
        weight: None,
        weights_in_any_order: false,
        mask_hit: Vec::new(),
        bin_geometric_area: Vec::new(),
        derived: Derived::default(),
    };
    let mut geometric = map.bin_area();
    for row in &rows {
        for &(bin, a) in &row.masked {
            geometric[bin as usize] += a as f32 as f64;
        }
        for &bin in &row.mask_flags {
            mask_hit[bin as usize] = 1;
        }
    }
    map.mask_hit = mask_hit;
    map.bin_geometric_area = geometric;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::test_detector::flat;

    fn entries_of(map: &DetectorMap, pixel: u32) -> Vec<(usize, usize, f64)> {
        let mut out = Vec::new();
        for b in 0..map.n_bins() {
            for k in map.indptr[b] as usize..map.indptr[b + 1] as usize {
                if map.pixel[k] == pixel {
                    out.push((b / map.n_eta(), b % map.n_eta(), map.area[k] as f64));
                }
            }
        }
        out
    }

    #[test]
    fn build_is_deterministic_and_conserves_area() {
        let p = flat(0.0, 0.7, 7.0);
        let map = build(&p, MapInputs::default()).unwrap();
        map.check().unwrap();
        let again = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| build(&p, MapInputs::default()).unwrap());
        assert_eq!(map, again);
        // Pixel (15, 15) is fully inside R 0..40: its areas sum to 1.
        let e = entries_of(&map, 15 * 20 + 15);
        let s: f64 = e.iter().map(|x| x.2).sum();
        assert!((s - 1.0).abs() < 1e-6, "{s}");
    }

    #[test]
    fn rectangular_pixels_are_pxz_high_and_each_counts_as_one() {
        // Pixels 100 µm wide (R's unit) and 250 µm high: pixel (3, 4)'s rows lie 2.5 px apart.
        let square = flat(0.0, 0.5, 360.0);
        let mut p = square.clone();
        p.pixel_size_z_um = 250.0;
        assert_eq!(build(&p, MapInputs::default()).unwrap(), {
            build(&square, MapInputs::default()).unwrap() // pxZ unused until PixelShape says
        });
        p.pixel_shape = "rectangular".into();
        let map = build(&p, MapInputs::default()).unwrap();
        map.check().unwrap();
        // Pixel (y 3, z 4): R from hypot(2.5, 3.5 · 2.5) to hypot(3.5, 4.5 · 2.5) px, area 1.
        let e = entries_of(&map, 4 * 20 + 3);
        let r_lo = 2.5f64.hypot(3.5 * 2.5);
        let r_hi = 3.5f64.hypot(4.5 * 2.5);
        let s: f64 = e.iter().map(|x| x.2).sum();
        assert!((s - 1.0).abs() < 1e-6, "{s}");
        for &(k, _, _) in &e {
            let (lo, hi) = (map.r_edges[k], map.r_edges[k + 1]);
            assert!(
                hi > r_lo && lo < r_hi,
                "bin {lo}..{hi} outside {r_lo}..{r_hi}"
            );
        }
        let reaches = |r: f64| {
            e.iter()
                .any(|&(k, _, _)| map.r_edges[k] <= r && r < map.r_edges[k + 1])
        };
        assert!(reaches(r_lo + 1e-3) && reaches(r_hi - 1e-3));
    }
}
