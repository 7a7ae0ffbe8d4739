//! Bin edges (spec §2.8): radial edges are always expressed in R pixels, whatever the binning unit.

use crate::error::{Error, Result};
use crate::params::{Params, RadialMode};

/// `ceil` as the MIDAS C code does it, guarded against absurd counts.
fn count(span: f64, step: f64, key: &str, source: &str) -> Result<usize> {
    let n = (span / step).ceil();
    if !(1.0..1e9).contains(&n) {
        return Err(Error::Parameter {
            location: crate::error::Location {
                file: source.to_string(),
                line: 0,
            },
            key: key.to_string(),
            message: format!("range / bin size gives {n} bins; expected 1 to 1e9"),
        });
    }
    Ok(n as usize)
}

/// Number of radial bins in the active mode.
pub fn radial_count(p: &Params) -> Result<usize> {
    match p.radial_mode() {
        RadialMode::Radius => count(p.r_max_px - p.r_min_px, p.r_bin_px, "RBinSize", &p.source),
        RadialMode::Q => count(p.q_max - p.q_min, p.q_bin, "QBinSize", &p.source),
        // radint's own 2θ keys: a bin size given as span / n (pyFAI's npt) whose quotient
        // rounds a hair above n must give n bins, not n + 1 with a sliver (the MIDAS keys keep
        // C's plain ceil, for bin-for-bin parity).
        RadialMode::TwoTheta => {
            let x = (p.tth_max_deg - p.tth_min_deg) / p.tth_bin_deg;
            let near = x.round();
            if near >= 1.0 && (x - near).abs() <= 1e-9 * near {
                count(near, 1.0, "TthBinSize", &p.source)
            } else {
                count(x, 1.0, "TthBinSize", &p.source)
            }
        }
    }
}

/// Number of azimuthal bins.
pub fn eta_count(p: &Params) -> usize {
    let n = ((p.eta_max_deg - p.eta_min_deg) / p.eta_bin_deg).ceil();
    if (1.0..1e9).contains(&n) {
        n as usize
    } else {
        1
    }
}

/// R (px) at which a ray of scattering angle `two_theta_rad` meets the untilted detector.
pub fn r_px_of_two_theta(p: &Params, two_theta_rad: f64) -> f64 {
    p.lsd_um / p.pixel_size_y_um * two_theta_rad.tan()
}

/// Radial bin edges in R pixels, `n_r + 1` values, strictly increasing.
pub fn radial_edges(p: &Params) -> Result<Vec<f64>> {
    let n = radial_count(p)?;
    let edges: Vec<f64> = match p.radial_mode() {
        RadialMode::Radius => (0..=n)
            .map(|k| p.r_min_px + k as f64 * p.r_bin_px)
            .collect(),
        RadialMode::Q => (0..=n)
            .map(|k| {
                let q = p.q_min + k as f64 * p.q_bin;
                let s = (q * p.wavelength_angstrom / (4.0 * std::f64::consts::PI)).min(1.0);
                r_px_of_two_theta(p, 2.0 * s.asin())
            })
            .collect(),
        RadialMode::TwoTheta => (0..=n)
            .map(|k| {
                let tth = (p.tth_min_deg + k as f64 * p.tth_bin_deg).to_radians();
                r_px_of_two_theta(p, tth)
            })
            .collect(),
    };
    if edges
        .windows(2)
        .any(|w| !(w[1] > w[0]) || !w[1].is_finite())
    {
        return Err(Error::Invalid(format!(
            "{}: radial bin edges are not strictly increasing and finite (check QMax/TthMax against the detector)",
            p.source
        )));
    }
    Ok(edges)
}

/// Azimuthal bin edges in degrees, `n_eta + 1` values.
pub fn eta_edges(p: &Params) -> Vec<f64> {
    let n = eta_count(p);
    (0..=n)
        .map(|k| p.eta_min_deg + k as f64 * p.eta_bin_deg)
        .collect()
}
