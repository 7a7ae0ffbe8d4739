//! `radint_core::Params` ⇄ Python dict (keys are the Rust field names, values plain Python types).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use radint_core::params::Params;

use crate::errors::raise;

/// A scalar field's value, or a ParameterError saying what it needed and what it got (an
/// OverflowError's "can't convert negative int to unsigned" told neither).
fn field<'a, 'py, T: FromPyObject<'a, 'py>>(
    key: &str,
    value: &'a Bound<'py, PyAny>,
) -> PyResult<T> {
    value.extract().map_err(|_| {
        let wanted = match std::any::type_name::<T>() {
            "usize" | "u32" | "u64" | "u8" => "an integer >= 0 (in range)",
            "i64" | "i32" => "an integer (in range)",
            "f64" | "f32" => "a number",
            "bool" => "True or False",
            _ => "a string",
        };
        let got = value
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into());
        raise(
            "ParameterError",
            format!("configuration field {key}: expected {wanted}, got {got}"),
        )
    })
}

macro_rules! params_conversion {
    (scalars: [$($s:ident),* $(,)?], lists: [$($l:ident),* $(,)?]) => {
        pub fn to_dict<'py>(py: Python<'py>, p: &Params) -> PyResult<Bound<'py, PyDict>> {
            let d = PyDict::new(py);
            $( d.set_item(stringify!($s), p.$s.clone())?; )*
            $( d.set_item(stringify!($l), p.$l.to_vec())?; )*
            let unknown = PyList::empty(py);
            for u in &p.unknown {
                unknown.append((u.key.clone(), u.value.clone(), u.location.file.clone(), u.location.line))?;
            }
            d.set_item("unknown", unknown)?;
            let notes = PyList::empty(py);
            for n in &p.midas_notes {
                notes.append((n.message.clone(), n.location.file.clone(), n.location.line))?;
            }
            d.set_item("midas_notes", notes)?;
            let set_at = PyDict::new(py);
            for (k, loc) in &p.set_at {
                set_at.set_item(k, (loc.file.clone(), loc.line))?;
            }
            d.set_item("set_at", set_at)?;
            Ok(d)
        }

        pub fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<Params> {
            let mut p = Params::default();
            for (key, value) in d.iter() {
                let key: String = key.extract()?;
                let bad = |e: PyErr| raise("ParameterError", format!("configuration field {key}: {e}"));
                match key.as_str() {
                    $( stringify!($s) => p.$s = field(&key, &value)?, )*
                    $( stringify!($l) => {
                        let v: Vec<_> = value.extract().map_err(bad)?;
                        p.$l = v.into_iter().collect::<Vec<_>>().try_into().map_err(|_| {
                            raise("ParameterError", format!("configuration field {key}: wrong length"))
                        })?;
                    } )*
                    "set_at" => {
                        let places: std::collections::BTreeMap<String, (String, usize)> =
                            value.extract().map_err(bad)?;
                        p.set_at = places
                            .into_iter()
                            .map(|(k, (file, line))| (k, radint_core::error::Location { file, line }))
                            .collect();
                    }
                    "unknown" | "midas_notes" => {}
                    other => {
                        return Err(raise("ParameterError", format!("unknown configuration field '{other}'")));
                    }
                }
            }
            Ok(p)
        }
    };
}

params_conversion! {
    scalars: [
        source, lsd_um, bc_y_px, bc_z_px, tx_deg, ty_deg, tz_deg, pixel_size_y_um, pixel_size_z_um,
        n_pixels_y, n_pixels_z, rho_d_um, parallax_um, r_min_px, r_max_px, r_bin_px, eta_min_deg,
        eta_max_deg, eta_bin_deg, q_min, q_max, q_bin, tth_min_deg, tth_max_deg, tth_bin_deg,
        tth_bins_ceil,
        wavelength_angstrom, mask_file, distortion_file, residual_correction_map, panel_shifts_file,
        dark_file, flat_file, n_panels_y, n_panels_z, panel_size_y, panel_size_z, sub_pixel_level,
        sub_pixel_cardinal_width_deg, solid_angle_correction, polarization_correction,
        polarization_fraction, polarization_plane_eta_deg, normalize, gradient_correction,
        omega_sum_frames, sum_images, save_individual_frames, skip_frame, omega_start_deg,
        omega_step_deg, omega_deg, write_2d, do_peak_fit, fit_roi_padding, fit_roi_auto, auto_detect_peaks,
        max_n_peaks, snip_iterations, doublet_separation, multiple_peaks, do_smoothing, gsas_polariz,
        gsas_sh_l, gsas_u, gsas_v, gsas_w, gsas_x, gsas_y, gsas_z, gap_intensity, bad_px_intensity, pixel_weights,
        solid_angle_model, polarization_model, pixel_shape, error_model,
    ],
    lists: [distortion, im_trans_opt, panel_gaps_y, panel_gaps_z, peak_locations, module_gaps]
}
