//! The build's plan: geometry, bins and inputs shared by all pixels, the corner grid, and each
//! pixel's (sub-)pixel quads in the corrected plane.

use rayon::prelude::*;

use super::MapInputs;
use crate::bins;
use crate::error::{Error, Location, Result};
use crate::geometry::{Geometry, ImageTransform, PanelOffset, ResidualMap};
use crate::panels::{self, Panel};
use crate::params::Params;
use crate::polygon::{Poly, Pt};

/// Pixel corners whose corrected R came out negative: there the mapping folds the detector over
/// (a residual map below −R near the beam centre, a distortion with D < 0, distortion-map or
/// panel shifts moving corners across the centre), so the pixels around overlap in the map;
/// pixels (or sub-pixels) whose every corner lies at R < 0 are left out, as MIDAS's
/// DetectorMapper leaves them out. Corners at 2θ ≥ 90° (the tilted plane passing behind the
/// sample) have R < 0 too and are counted apart (`behind`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fold {
    /// How many pixel corners map to R < 0 (each pixel's own corners where pixels are shifted
    /// one by one, else the corners of the pixel grid, shared by neighbours).
    pub corners: u64,
    /// The most negative corrected R (px) of the corners not behind the sample.
    pub worst_r_px: f64,
    /// Where: (y, z) of that corner in the transformed image (pixel centres at integers).
    pub worst_at: (f64, f64),
    /// Of `corners`, those at 2θ ≥ 90°, where the tilted detector plane passes behind the
    /// sample (with an infinite R, at exactly 90°: such a pixel is left out whole).
    pub behind: u64,
}

impl Fold {
    pub(super) fn none() -> Fold {
        Fold {
            corners: 0,
            worst_r_px: 0.0,
            worst_at: (0.0, 0.0),
            behind: 0,
        }
    }

    fn add(&mut self, corner: &Corner, y: f64, z: f64) {
        let r = corner.r;
        if corner.behind {
            self.corners += 1;
            self.behind += 1;
        } else if r < 0.0 {
            self.corners += 1;
            if r < self.worst_r_px {
                self.worst_r_px = r;
                self.worst_at = (y, z);
            }
        }
    }

    pub(super) fn merge(mut self, other: Fold) -> Fold {
        self.corners += other.corners;
        self.behind += other.behind;
        if other.worst_r_px < self.worst_r_px {
            self.worst_r_px = other.worst_r_px;
            self.worst_at = other.worst_at;
        }
        self
    }
}

/// A pixel corner in the corrected plane ([`Plan::to_plane`]).
pub(super) struct Corner {
    /// (R cos η, R sin η); NaN where R is infinite.
    pub(super) point: Pt,
    /// Corrected R (px).
    r: f64,
    /// At 2θ ≥ 90°: the tilted detector plane passes behind the sample there.
    behind: bool,
}

/// Whether a (sub-)pixel quad is left out of the map: every corner at a negative corrected R
/// (DetectorMapper picks its radial bins between the corners' signed R, none of them below 0)
/// or one without a place (R infinite).
fn left_out(negative: &[bool; 4], corners: &[Pt; 4]) -> bool {
    negative.iter().all(|&n| n) || corners.iter().any(|p| p[0].is_nan())
}

/// Build-time description shared by all pixels.
pub(super) struct Plan {
    pub(super) geometry: Geometry,
    pub(super) transform: ImageTransform,
    pub(super) r_edges: Vec<f64>,
    pub(super) eta_min: f64,
    pub(super) eta_bin: f64,
    pub(super) n_eta: usize,
    /// What an area in the corrected plane (pxY²) is in entry areas, whose unit is a whole
    /// pixel's plane area (px² for square pixels): 1 / (pxZ / pxY).
    pub(super) area_scale: f64,
    sub_pixel_level: u32,
    cardinal_width: f64,
    /// Transformed-frame per-pixel inputs.
    pub(super) mask: Option<Vec<u8>>,
    pub(super) shift_y: Option<Vec<f64>>,
    pub(super) shift_z: Option<Vec<f64>>,
    pub(super) panels: Vec<Panel>,
    /// (cos, sin) of every η edge, so wedge clipping needs no trigonometry per pixel.
    pub(super) eta_edge_dirs: Vec<Pt>,
    /// Plane positions of all pixel corners ((n_y+1)·(n_z+1), corner (i−½, j−½) at
    /// j·(n_y+1)+i) when pixels are not shifted individually; shared by neighbouring pixels.
    corner_grid: Option<Vec<Pt>>,
    /// η (degrees) of the same corners.
    corner_eta: Vec<f64>,
    /// Whether the same corners lie at a negative corrected R.
    corner_negative: Vec<bool>,
    /// The grid's corners with a negative corrected R.
    pub(super) grid_fold: Fold,
    /// Who is named when memory that grows with the pixels, or with the bins, runs out.
    pub(super) pixels_blame: Blame,
    pub(super) bins_blame: Blame,
}

/// The key a failed allocation is reported at, and the values that asked for the memory: a
/// mistyped detector size (NrPixelsY 60000) or bin count must fail with a message naming them,
/// not abort the process (Rust aborts when an infallible allocation fails).
pub(super) struct Blame {
    key: String,
    location: Location,
    values: String,
}

impl Blame {
    pub(super) fn error(&self, what: &str) -> Error {
        Error::Parameter {
            location: self.location.clone(),
            key: self.key.clone(),
            message: format!(
                "the detector map cannot be built: {what}; {}: check these values if they \
                 are not the detector's",
                self.values
            ),
        }
    }

    /// An empty Vec with room for `n` elements, or this blame's error.
    pub(super) fn vec_with_capacity<T>(&self, n: usize, what: &str) -> Result<Vec<T>> {
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| {
            let bytes = n as f64 * std::mem::size_of::<T>() as f64;
            self.error(&format!(
                "{what} need {:.3} GB, which cannot be allocated (a memory limit such as \
                 ulimit -v, or too little free memory for this detector and binning)",
                bytes / 1e9
            ))
        })?;
        Ok(v)
    }

    /// `n` copies of `value`, or this blame's error.
    pub(super) fn vec_filled<T: Clone>(&self, n: usize, value: T, what: &str) -> Result<Vec<T>> {
        let mut v = self.vec_with_capacity(n, what)?;
        v.resize(n, value);
        Ok(v)
    }
}

fn check_len(what: &str, v: &Option<Vec<impl Sized>>, n: usize) -> Result<()> {
    match v {
        Some(v) if v.len() != n => Err(Error::shape(what, format!("{n} pixels"), v.len())),
        _ => Ok(()),
    }
}

impl Plan {
    pub(super) fn new(params: &Params, inputs: MapInputs) -> Result<Plan> {
        params.validate()?;
        let (n_y, n_z) = (params.n_pixels_y, params.n_pixels_z);
        let n = n_y * n_z;
        check_len("mask", &inputs.mask, n)?;
        check_len("distortion map ΔY", &inputs.distortion_y, n)?;
        check_len("distortion map ΔZ", &inputs.distortion_z, n)?;
        check_len("residual correction map", &inputs.residual, n)?;
        let transform = ImageTransform::new(&params.im_trans_opt, n_y, n_z);
        let mut geometry = Geometry::new(params);
        if let Some(res) = inputs.residual {
            // Unlike the mask and the distortion maps, DetectorMapper reads the residual map as
            // stored and samples it at transformed (Y, Z): the file is in the transformed frame.
            geometry.residual = Some(ResidualMap {
                n_y,
                n_z,
                delta_r_px: res,
            });
        }
        let eta_edges = bins::eta_edges(params)?;
        let eta_edge_dirs = eta_edges
            .iter()
            .map(|e| {
                let (sn, cs) = e.to_radians().sin_cos();
                [cs, sn]
            })
            .collect();
        let pixels_blame = Blame {
            key: "NrPixelsY".into(),
            location: params.location_of("NrPixelsY"),
            values: params.described(&[
                ("NrPixelsY", params.n_pixels_y as f64),
                ("NrPixelsZ", params.n_pixels_z as f64),
            ]),
        };
        let bin_sizes = [params.radial_keys()[2], params.eta_keys()[2]];
        let bins_key = params.set_last(&bin_sizes.map(|(k, _)| k));
        let bins_blame = Blame {
            key: bins_key.into(),
            location: params.location_of(bins_key),
            values: params.described(&bin_sizes),
        };
        let area_scale = 1.0 / geometry.pixel_aspect();
        let mut plan = Plan {
            geometry,
            area_scale,
            r_edges: bins::radial_edges(params)?,
            eta_min: eta_edges[0],
            eta_bin: params.eta_bin_deg,
            n_eta: eta_edges.len() - 1,
            sub_pixel_level: params.sub_pixel_level.max(1),
            cardinal_width: params.sub_pixel_cardinal_width_deg,
            mask: inputs.mask.map(|m| transform.to_transformed(&m)),
            shift_y: inputs.distortion_y.map(|m| transform.to_transformed(&m)),
            shift_z: inputs.distortion_z.map(|m| transform.to_transformed(&m)),
            panels: inputs.panels,
            transform,
            eta_edge_dirs,
            corner_grid: None,
            corner_eta: Vec::new(),
            corner_negative: Vec::new(),
            grid_fold: Fold::none(),
            pixels_blame,
            bins_blame,
        };
        let shifted = !plan.panels.is_empty() || plan.shift_y.is_some();
        if !shifted {
            let (n_y, n_z) = (plan.transform.n_y, plan.transform.n_z);
            let n_corners = (n_y + 1) * (n_z + 1);
            // Reserved up front (fallibly) and filled in place: par_extend of an indexed
            // iterator writes into the reserved capacity without growing it.
            let mut grid = plan.pixels_blame.vec_filled::<Pt>(
                n_corners,
                [0.0, 0.0],
                "the pixel corners' positions",
            )?;
            let mut negative = plan.pixels_blame.vec_filled::<bool>(
                n_corners,
                false,
                "the pixel corners' signs",
            )?;
            plan.grid_fold = grid
                .par_chunks_mut(n_y + 1)
                .zip(negative.par_chunks_mut(n_y + 1))
                .enumerate()
                .map(|(j, (row, row_negative))| {
                    let mut fold = Fold::none();
                    for (i, (corner, neg)) in row.iter_mut().zip(row_negative).enumerate() {
                        let (y, z) = (i as f64 - 0.5, j as f64 - 0.5);
                        let c = plan.to_plane(y, z, PanelOffset::default());
                        *corner = c.point;
                        *neg = c.r < 0.0;
                        fold.add(&c, y, z);
                    }
                    fold
                })
                .reduce(Fold::none, Fold::merge);
            plan.corner_negative = negative;
            let mut corner_eta = plan
                .pixels_blame
                .vec_with_capacity::<f64>(n_corners, "the pixel corners' η")?;
            corner_eta.par_extend(grid.par_iter().map(|p| p[1].atan2(p[0]).to_degrees()));
            plan.corner_eta = corner_eta;
            plan.corner_grid = Some(grid);
        }
        Ok(plan)
    }

    pub(super) fn eta_edges(&self) -> Vec<f64> {
        (0..=self.n_eta)
            .map(|k| self.eta_min + k as f64 * self.eta_bin)
            .collect()
    }

    /// Corrected-plane position (R cos η, R sin η) and R of a transformed-frame point.
    pub(super) fn to_plane(&self, y: f64, z: f64, panel: PanelOffset) -> Corner {
        let (r, c, s, rad, _) = self.geometry.polar(y, z, panel);
        Corner {
            // Where R < 0, (R cos η, R sin η) lies across the beam centre, as DetectorMapper
            // places it; a point at 2θ = 90° (R infinite) has no place.
            point: if r.is_finite() {
                [r * c, r * s]
            } else {
                [f64::NAN; 2]
            },
            r,
            behind: !(rad >= 0.0 && rad.is_finite()),
        }
    }

    fn near_cardinal(&self, eta_deg: f64) -> bool {
        let a = eta_deg.abs();
        let w = self.cardinal_width;
        a <= w || (a - 90.0).abs() <= w || (a - 180.0).abs() <= w
    }

    /// Centre (Y, Z) of transformed pixel (i, j) after panel and distortion-map shifts, its
    /// panel's offsets, and its sub-pixel count per side.
    fn pixel_centre(&self, i: usize, j: usize) -> (f64, f64, PanelOffset, usize) {
        let idx = j * self.transform.n_y + i;
        let (mut ypr, mut zpr) = (i as f64, j as f64);
        let mut panel = PanelOffset::default();
        if !self.panels.is_empty() {
            let (dy, dz, off) =
                panels::pixel_offset(&self.panels, i, j, self.geometry.pixel_aspect());
            ypr += dy;
            zpr += dz;
            panel = off;
        }
        if let (Some(sy), Some(sz)) = (&self.shift_y, &self.shift_z) {
            ypr += sy[idx];
            zpr += sz[idx];
        }
        let mut n_sub = 1usize;
        if self.sub_pixel_level > 1 {
            let eta = self.geometry.point(ypr, zpr, panel).eta_deg;
            if self.near_cardinal(eta) {
                n_sub = self.sub_pixel_level as usize;
            }
        }
        (ypr, zpr, panel, n_sub)
    }

    /// The bins DetectorMapper flags for masked pixel (i, j), into `out`: every bin of the box
    /// of R × η its (first sub-pixel's) corners span, closed intervals, whether the pixel
    /// overlaps the bin or not. IntegratorZarrOMP sets these bins NaN (`maskMap.bin`).
    pub(super) fn midas_masked_bins(&self, i: usize, j: usize, out: &mut Vec<u32>) {
        let (ypr, zpr, panel, n_sub) = self.pixel_centre(i, j);
        let step = 1.0 / n_sub as f64;
        let (y0, z0) = (ypr - 0.5, zpr - 0.5);
        let (mut r_lo, mut r_hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut eta_lo, mut eta_hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (dy, dz) in [(0.0, 0.0), (0.0, step), (step, 0.0), (step, step)] {
            let Corner { point: p, r, .. } = self.to_plane(y0 + dy, z0 + dz, panel);
            if !r.is_finite() {
                return; // a pixel the map leaves out
            }
            let eta = p[1].atan2(p[0]).to_degrees();
            r_lo = r_lo.min(r);
            r_hi = r_hi.max(r);
            eta_lo = eta_lo.min(eta);
            eta_hi = eta_hi.max(eta);
        }
        if eta_hi - eta_lo > 180.0 {
            (eta_lo, eta_hi) = (eta_hi, 360.0 + eta_lo);
        }
        let r_edges = &self.r_edges;
        for k in 0..r_edges.len() - 1 {
            if !(r_edges[k + 1] >= r_lo && r_edges[k] <= r_hi) {
                continue;
            }
            for e in 0..self.n_eta {
                let lo = self.eta_min + e as f64 * self.eta_bin;
                let hi = self.eta_min + (e + 1) as f64 * self.eta_bin;
                if [0.0, 360.0, -360.0]
                    .iter()
                    .any(|s| hi >= eta_lo + s && lo <= eta_hi + s)
                {
                    out.push((k * self.n_eta + e) as u32);
                }
            }
        }
    }

    /// All entries of transformed pixel (i, j), merged per bin.
    #[cfg(test)]
    pub(super) fn map_pixel(
        &self,
        i: usize,
        j: usize,
        out: &mut Vec<(u32, f64, f64)>,
        eta_bins: &mut Vec<usize>,
    ) {
        self.map_pixel_folding(i, j, out, eta_bins, &mut Fold::none());
    }

    /// [`Plan::map_pixel`], adding the pixel's own corners with a negative corrected R to
    /// `fold` where pixels are shifted one by one (the shared grid's are counted in `new`).
    pub(super) fn map_pixel_folding(
        &self,
        i: usize,
        j: usize,
        out: &mut Vec<(u32, f64, f64)>,
        eta_bins: &mut Vec<usize>,
        fold: &mut Fold,
    ) {
        out.clear();
        self.for_each_quad(i, j, fold, |quad, angles, r_centre| {
            self.split(quad, angles, r_centre(), out, eta_bins)
        });
    }

    /// Transformed pixel (i, j)'s whole area in the corrected plane: the sum of its (sub-)pixel
    /// quads as [`Plan::split`] takes them, which is what its entries add up to when it lies
    /// wholly inside the binned range.
    pub(super) fn pixel_area(&self, i: usize, j: usize) -> f64 {
        let mut whole = 0.0;
        self.for_each_quad(i, j, &mut Fold::none(), |quad, _, _| {
            let area = quad.signed_area();
            if area > 0.0 {
                whole += area;
            }
        });
        whole * self.area_scale
    }

    /// Calls `visit(quad, corner η in degrees, centre R)` for each counter-clockwise (sub-)pixel
    /// quad of transformed pixel (i, j) that the map does not leave out. The centre R is asked
    /// for lazily: finding it costs a full geometry evaluation.
    fn for_each_quad(
        &self,
        i: usize,
        j: usize,
        fold: &mut Fold,
        mut visit: impl FnMut(&Poly, &[f64; 4], &dyn Fn() -> f64),
    ) {
        let (ypr, zpr, panel, n_sub) = self.pixel_centre(i, j);
        if let (Some(grid), 1) = (&self.corner_grid, n_sub) {
            let w = self.transform.n_y + 1;
            let ids = [
                j * w + i,
                j * w + i + 1,
                (j + 1) * w + i + 1,
                (j + 1) * w + i,
            ];
            let corners = ids.map(|k| grid[k]);
            if left_out(&ids.map(|k| self.corner_negative[k]), &corners) {
                return;
            }
            let angles = ids.map(|k| self.corner_eta[k]);
            let mut quad = Poly::from_slice(&corners);
            quad.make_ccw();
            visit(&quad, &angles, &|| self.geometry.polar(ypr, zpr, panel).0);
            return;
        }
        let step = 1.0 / n_sub as f64;
        for si in 0..n_sub {
            for sj in 0..n_sub {
                let y0 = ypr - 0.5 + si as f64 * step;
                let z0 = zpr - 0.5 + sj as f64 * step;
                let offsets = [(0, 0), (1, 0), (1, 1), (0, 1)];
                let mut negative = [false; 4];
                let corners = std::array::from_fn(|k| {
                    let (a, b) = offsets[k];
                    let (y, z) = (y0 + a as f64 * step, z0 + b as f64 * step);
                    let c = self.to_plane(y, z, panel);
                    // The pixel's own corners (not those inside it, between its sub-pixels).
                    let outer = |k: usize| k == 0 || k == n_sub;
                    if self.corner_grid.is_none() && outer(si + a) && outer(sj + b) {
                        fold.add(&c, y, z);
                    }
                    negative[k] = c.r < 0.0;
                    c.point
                });
                if left_out(&negative, &corners) {
                    continue;
                }
                let angles = corners.map(|p| p[1].atan2(p[0]).to_degrees());
                let mut quad = Poly::from_slice(&corners);
                quad.make_ccw();
                visit(&quad, &angles, &|| {
                    self.to_plane(y0 + 0.5 * step, z0 + 0.5 * step, panel).r
                });
            }
        }
    }
}
