//! Bin edges (spec §2.8): radial edges are always expressed in R pixels, whatever the binning unit.

use crate::error::{Error, Result};
use crate::params::{Params, RadialMode};

/// Check a bin count (`ceil` of range / bin size, as the MIDAS C code computes it) against the
/// limits. `keys` are the axis's (min, max, bin size) with their values; the error is reported at
/// the one set last (the likeliest cause) and names all three and where they come from.
fn checked(p: &Params, n: f64, keys: [(&str, f64); 3], axis: &str) -> Result<usize> {
    // Bin counts past 1e9 are mistakes (a bin size in the wrong unit, a typo'd exponent): the
    // map would need tens of GB, and past 2^53 the edges would repeat.
    if !(1.0..1e9).contains(&n) {
        let key = p.set_last(&keys.map(|(k, _)| k));
        let count = if n.is_finite() && n.abs() < 1e15 {
            format!("{n}")
        } else {
            crate::params::number_text(n)
        };
        return Err(p.invalid(
            key,
            format!(
                "{axis} range / bin size gives {count} bins; expected 1 to 1e9 ({})",
                p.described(&keys)
            ),
        ));
    }
    Ok(n as usize)
}

/// Number of radial bins in the active mode.
pub fn radial_count(p: &Params) -> Result<usize> {
    let keys = p.radial_keys();
    let n = match p.radial_mode() {
        RadialMode::Radius => ((p.r_max_px - p.r_min_px) / p.r_bin_px).ceil(),
        RadialMode::Q => ((p.q_max - p.q_min) / p.q_bin).ceil(),
        // radint's own 2θ keys: a bin size given as span / n (pyFAI's npt) whose quotient
        // rounds a hair above n must give n bins, not n + 1 with a sliver (the MIDAS keys keep
        // C's plain ceil, for bin-for-bin parity).
        RadialMode::TwoTheta => {
            let x = (p.tth_max_deg - p.tth_min_deg) / p.tth_bin_deg;
            let near = x.round();
            if !p.tth_bins_ceil && near >= 1.0 && (x - near).abs() <= 1e-9 * near {
                near
            } else {
                x.ceil()
            }
        }
    };
    checked(p, n, keys, "radial")
}

/// Number of azimuthal bins; the same limits as the radial count (a tiny EtaBinSize or a huge
/// η range is refused, not collapsed to one bin).
pub fn eta_count(p: &Params) -> Result<usize> {
    let n = ((p.eta_max_deg - p.eta_min_deg) / p.eta_bin_deg).ceil();
    checked(p, n, p.eta_keys(), "η")
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

/// Azimuthal bin edges in degrees, `n_eta + 1` values, strictly increasing.
pub fn eta_edges(p: &Params) -> Result<Vec<f64>> {
    let n = eta_count(p)?;
    let edges: Vec<f64> = (0..=n)
        .map(|k| p.eta_min_deg + k as f64 * p.eta_bin_deg)
        .collect();
    // A bin size below the spacing of doubles at EtaMin (EtaMin 1e12, EtaBinSize 1e-3) would
    // give empty bins of zero width.
    if edges.windows(2).any(|w| !(w[1] > w[0])) {
        let key = p.set_last(&p.eta_keys().map(|(k, _)| k));
        return Err(p.invalid(
            key,
            format!(
                "η bin edges are not strictly increasing: the bin size is below the precision of \
                 the range ({})",
                p.described(&p.eta_keys())
            ),
        ));
    }
    Ok(edges)
}
