//! Exact pixel splitting → [`DetectorMap`], a CSR matrix over (R, η) bins.
//!
//! Each (sub-)pixel is the quad of its four corners mapped into the corrected plane (spec §3.3 step
//! 1); its overlap with every annular sector is computed exactly ([`crate::polygon`]). Unlike the
//! MIDAS C mapper, chords are never integrated as arcs and no sliver is missed (spec §10.2 item 1).
//!
//! Here: the map's type, its lazily built forms and its checks. The build: `plan` (geometry,
//! bins, each pixel's quads), `split` (one quad's exact overlaps with the bins), `assemble` (all
//! pixels → CSR). Beside it: `eta_cross` (pixels a radial row shares between η bins),
//! `reweighted` (maps with other weights made from a map), `pixel_geometry` (per-pixel areas
//! and centres).

mod assemble;
mod eta_cross;
mod pixel_geometry;
mod plan;
mod reweighted;
mod split;

pub use assemble::{build, build_with_fold};
pub use eta_cross::EtaCross;
pub use pixel_geometry::{pixel_areas, pixel_centres};
pub use plan::Fold;
pub use reweighted::gradient_resampled;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::panels::Panel;
use crate::runs::PixelRuns;
use crate::storage::Storage;
use crate::tiles::Tiles;

/// Overlaps below this (px²) are dropped, as midas-integrate 0.9 does (per-pixel loss ≤ 1e-8).
pub const AREA_EPSILON: f64 = 1e-9;

/// The sparse pixel → bin map. Bin `b = r·n_eta + e`; entries of bin b are `indptr[b]..indptr[b+1]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DetectorMap {
    /// Raw image shape (columns, rows).
    pub n_y: usize,
    pub n_z: usize,
    /// Radial edges in R px (`n_r + 1`) and η edges in degrees (`n_eta + 1`).
    pub r_edges: Vec<f64>,
    pub eta_edges: Vec<f64>,
    pub indptr: Storage<u64>,
    /// Flat raw-image index `z·n_y + y`.
    pub pixel: Storage<u32>,
    /// Overlap area of pixel and bin (px², corrected plane).
    pub area: Storage<f32>,
    /// R of the pixel centre minus R of the bin centre (px), for gradient correction.
    pub delta_r: Storage<f32>,
    /// Per-entry signal weight when it differs from `area` (MIDAS C maps fold corrections and
    /// bilinear sampling into it); `None` means the weight is `area`.
    pub weight: Option<Storage<f64>>,
    /// Whether `weight` may be summed in any order: radint's own weights folded with a scale
    /// ([`DetectorMap::folded`]), which the gather kernels take. False for MIDAS weights, whose
    /// kernel keeps the C summation order.
    pub weights_in_any_order: bool,
    /// 1 where MIDAS's rule flags the bin for a masked pixel (`maskMap.bin`): every bin of the
    /// R × η box the pixel's corners span, as DetectorMapper does, overlap or not.
    pub mask_hit: Vec<u8>,
    /// Σ overlap area of all pixels, masked ones included (coverage = area / this).
    pub bin_geometric_area: Vec<f64>,
    /// Forms derived from the fields above on first use; build a new map rather than change
    /// a field of one that has integrated.
    pub derived: Derived,
}

/// Lazily built forms of a [`DetectorMap`], not part of its value (equality ignores them).
#[derive(Debug, Clone, Default)]
pub struct Derived {
    runs: std::sync::OnceLock<Option<PixelRuns>>,
    max_pixel: std::sync::OnceLock<Option<u32>>,
    eta_cross: std::sync::OnceLock<EtaCross>,
    tiles: std::sync::OnceLock<Option<Tiles>>,
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl DetectorMap {
    pub fn n_r(&self) -> usize {
        self.r_edges.len().saturating_sub(1)
    }
    pub fn n_eta(&self) -> usize {
        self.eta_edges.len().saturating_sub(1)
    }
    pub fn n_bins(&self) -> usize {
        self.n_r() * self.n_eta()
    }
    pub fn n_entries(&self) -> usize {
        self.pixel.len()
    }
    pub fn n_pixels(&self) -> usize {
        self.n_y * self.n_z
    }

    /// The run-length form of the pixel indices ([`PixelRuns`]), built on first use; None for
    /// maps with MIDAS weights (their kernel keeps the C summation order) or that runs cannot
    /// describe.
    pub fn runs(&self) -> Option<&PixelRuns> {
        self.derived
            .runs
            .get_or_init(|| {
                if self.weight.is_some() {
                    return None;
                }
                PixelRuns::build(&self.indptr, &self.pixel, self.n_pixels())
            })
            .as_ref()
    }

    /// The largest pixel index of the entries (None without entries), found on first use: the
    /// gather kernels skip their per-lane bounds check where it lies inside the frame.
    pub fn max_pixel(&self) -> Option<u32> {
        *self
            .derived
            .max_pixel
            .get_or_init(|| self.pixel.iter().copied().max())
    }

    /// The tile-by-tile layout of the entries for the dense gather kernels ([`Tiles`]), built on
    /// first use; None for maps with MIDAS weights (their kernel keeps the C summation order)
    /// and where memory cannot hold the layout (integration then takes the kernels that read
    /// the map as it is: slower, no failed allocation aborting the process).
    pub fn tiles(&self) -> Option<&Tiles> {
        self.derived
            .tiles
            .get_or_init(|| {
                (self.gather_weights() && Tiles::fits_in_memory(self)).then(|| Tiles::build(self))
            })
            .as_ref()
    }

    /// Whether the gather kernels may sum this map's weights: areas, or weights in any order.
    pub fn gather_weights(&self) -> bool {
        self.weight.is_none() || self.weights_in_any_order
    }

    /// Σ area of the unmasked entries per bin.
    pub fn bin_area(&self) -> Vec<f64> {
        self.indptr
            .par_windows(2)
            .map(|w| {
                self.area[w[0] as usize..w[1] as usize]
                    .iter()
                    .map(|&a| a as f64)
                    .sum()
            })
            .collect()
    }

    /// Areas finite and non-negative: a pass over every entry, for arrays from elsewhere; not
    /// for maps radint built or cached (on a cache it costs a fresh process ~10 ms of page
    /// faults).
    pub fn check_areas(&self) -> Result<()> {
        match self
            .area
            .par_iter()
            .position_any(|&a| !(a >= 0.0 && a.is_finite()))
        {
            Some(k) => Err(Error::Invalid(format!(
                "area must be finite and >= 0, got {} at entry {k}",
                self.area[k]
            ))),
            None => Ok(()),
        }
    }

    /// Structural checks: lengths agree, indptr monotone, pixel indices inside the image,
    /// edges increasing.
    pub fn check(&self) -> Result<()> {
        let n_bins = self.n_bins();
        if self.indptr.len() != n_bins + 1 {
            return Err(Error::shape("indptr length", n_bins + 1, self.indptr.len()));
        }
        let nnz = self.pixel.len();
        if self.area.len() != nnz || self.delta_r.len() != nnz {
            return Err(Error::shape(
                "area/delta_r length",
                nnz,
                format!("{}/{}", self.area.len(), self.delta_r.len()),
            ));
        }
        if let Some(w) = &self.weight {
            if w.len() != nnz {
                return Err(Error::shape("weight length", nnz, w.len()));
            }
        }
        if self.indptr.first() != Some(&0) || self.indptr.last() != Some(&(nnz as u64)) {
            return Err(Error::Invalid(format!(
                "indptr must run from 0 to {nnz} (the entry count), got {}..{}",
                self.indptr.first().unwrap_or(&0),
                self.indptr.last().unwrap_or(&0)
            )));
        }
        if self.indptr.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::Invalid("indptr is not non-decreasing".into()));
        }
        let n_pixels = self.n_pixels() as u64;
        if let Some(bad) = self.pixel.iter().find(|&&p| p as u64 >= n_pixels) {
            return Err(Error::Invalid(format!(
                "pixel index {bad} outside the {}x{} image",
                self.n_y, self.n_z
            )));
        }
        for (what, edges) in [("r_edges", &self.r_edges), ("eta_edges", &self.eta_edges)] {
            if let Some(k) = edges.windows(2).position(|w| !(w[1] > w[0])) {
                return Err(Error::Invalid(format!(
                    "{what} must increase, got {} then {} at {k}",
                    edges[k],
                    edges[k + 1]
                )));
            }
        }
        if self.mask_hit.len() != n_bins || self.bin_geometric_area.len() != n_bins {
            return Err(Error::shape(
                "mask_hit/bin_geometric_area length",
                n_bins,
                self.mask_hit.len(),
            ));
        }
        Ok(())
    }
}

/// Optional per-pixel inputs that shape the map, all in raw image orientation (z·NY + y).
#[derive(Debug, Clone, Default)]
pub struct MapInputs {
    /// 1 = masked (exactly 1, as MIDAS reads mask TIFFs).
    pub mask: Option<Vec<u8>>,
    /// Distortion maps ΔY, ΔZ in pixels (the `DistortionFile` contents).
    pub distortion_y: Option<Vec<f64>>,
    pub distortion_z: Option<Vec<f64>>,
    /// Residual ΔR map (px).
    pub residual: Option<Vec<f64>>,
    /// Panel layout with shifts applied; empty = a monolithic detector.
    pub panels: Vec<Panel>,
}

/// The unit tests' detector.
#[cfg(test)]
pub(crate) mod test_detector {
    use crate::params::Params;

    /// 20 × 20 pixels of 100 µm at 1 m, untilted, beam centre on pixel (0, 0); R bins from
    /// `r_min` over 40 px.
    pub(crate) fn flat(r_min: f64, r_bin: f64, eta_bin: f64) -> Params {
        Params {
            lsd_um: 1e6,
            bc_y_px: 0.0,
            bc_z_px: 0.0,
            pixel_size_y_um: 100.0,
            pixel_size_z_um: 100.0,
            n_pixels_y: 20,
            n_pixels_z: 20,
            r_min_px: r_min,
            r_max_px: r_min + 40.0,
            r_bin_px: r_bin,
            eta_min_deg: -180.0,
            eta_max_deg: 180.0,
            eta_bin_deg: eta_bin,
            ..Params::default()
        }
    }
}
