//! Per-pixel geometry from the build's plan: each pixel's whole area in the corrected plane, and
//! the R, η and solid angle of its centre.

use rayon::prelude::*;

use super::plan::Plan;
use super::MapInputs;
use crate::error::Result;
use crate::geometry::PanelOffset;
use crate::panels;
use crate::params::Params;

/// Each raw pixel's whole area (px², flat raw index) in the plane where bins are cut, after
/// tilt, distortion and panel corrections: what its map entries add up to when it lies wholly
/// inside the binned range (1 on an untilted, undistorted detector; 0 for a pixel the map leaves
/// out). Masks play no part.
pub fn pixel_areas(params: &Params, inputs: MapInputs) -> Result<Vec<f64>> {
    let plan = Plan::new(
        params,
        MapInputs {
            mask: None,
            ..inputs
        },
    )?;
    let (n_y, n_z) = (plan.transform.n_y, plan.transform.n_z);
    let mut transformed = plan
        .pixels_blame
        .vec_with_capacity::<f64>(n_y * n_z, "the pixels' areas")?;
    // Rounded as the map's entries are: a pixel wholly inside one bin then has fraction 1
    // exactly (unrounded, the quotient of the two roundings drifts, mostly below 1).
    transformed.par_extend(
        (0..n_y * n_z)
            .into_par_iter()
            .map(|k| plan.pixel_area(k % n_y, k / n_y) as f32 as f64),
    );
    let mut raw = plan
        .pixels_blame
        .vec_filled::<f64>(n_y * n_z, 0.0, "the pixels' areas")?;
    for (k, &area) in transformed.iter().enumerate() {
        let (ry, rz) = plan.transform.raw_of_transformed(k % n_y, k / n_y);
        raw[rz * n_y + ry] = area;
    }
    Ok(raw)
}

/// Per raw pixel: R (px) and η (deg) of its centre, and its exact relative solid angle
/// ([`Geometry::relative_solid_angle`](crate::geometry::Geometry::relative_solid_angle)).
pub fn pixel_centres(
    params: &Params,
    inputs: &MapInputs,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let plan = Plan::new(params, inputs.clone())?;
    let aspect = plan.geometry.pixel_aspect();
    let (n_y, n_z) = (plan.transform.n_y, plan.transform.n_z);
    let n = n_y * n_z;
    let mut r = vec![0.0; n];
    let mut eta = vec![0.0; n];
    let mut solid = vec![0.0; n];
    let rows: Vec<Vec<(usize, f64, f64, f64)>> = (0..n_z)
        .into_par_iter()
        .map(|j| {
            (0..n_y)
                .map(|i| {
                    let idx = j * n_y + i;
                    let (mut y, mut z) = (i as f64, j as f64);
                    let mut panel = PanelOffset::default();
                    if !plan.panels.is_empty() {
                        let (dy, dz, off) = panels::pixel_offset(&plan.panels, i, j, aspect);
                        y += dy;
                        z += dz;
                        panel = off;
                    }
                    if let (Some(sy), Some(sz)) = (&plan.shift_y, &plan.shift_z) {
                        y += sy[idx];
                        z += sz[idx];
                    }
                    let p = plan.geometry.point(y, z, panel);
                    let (ry, rz) = plan.transform.raw_of_transformed(i, j);
                    (
                        rz * n_y + ry,
                        p.r_px,
                        p.eta_deg,
                        plan.geometry.relative_solid_angle(y, z, panel),
                    )
                })
                .collect()
        })
        .collect();
    for row in rows {
        for (k, rr, ee, cc) in row {
            r[k] = rr;
            eta[k] = ee;
            solid[k] = cc;
        }
    }
    Ok((r, eta, solid))
}
