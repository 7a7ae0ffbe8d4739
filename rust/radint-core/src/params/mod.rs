//! MIDAS parameter files (`Key value ...` per line) → typed [`Params`].
//!
//! The syntax is the union of the MIDAS readers (spec §1.1): `#` starts a comment (whole line or
//! inline), a trailing `;` is ignored, the first whitespace token is the key, later lines win,
//! except `ImTransOpt` and `PeakLocation`, which accumulate. Unknown keys are kept, never fatal.
//!
//! Here: [`Params`], its defaults and its queries (radial mode, where each value came from).
//! `line` splits a line into key and values, `keys` holds the key tables (aliases,
//! DetectorMapper's keys, values read per key), `parse` reads files and overrides into a
//! [`Params`], `validate` checks one.

mod keys;
mod line;
mod parse;
mod validate;

use std::collections::BTreeMap;

use crate::error::{Error, Location};

/// How the radial axis is binned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RadialMode {
    /// Uniform bins in R (pixels): `RMin RMax RBinSize`.
    Radius,
    /// Uniform bins in Q (Å⁻¹): `QMin QMax QBinSize` with `Wavelength`.
    Q,
    /// Uniform bins in 2θ (degrees): `TthMin TthMax TthBinSize`.
    TwoTheta,
}

/// A line DetectorMapper reads differently from radint (see `Params::midas_notes`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamNote {
    pub message: String,
    pub location: Location,
}

/// A key the parser does not know: kept so `radint info` can list it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownKey {
    pub key: String,
    pub value: String,
    pub location: Location,
}

/// Every MIDAS key radint uses, with MIDAS DetectorMapper defaults where it has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub source: String,
    // geometry
    pub lsd_um: f64,
    pub bc_y_px: f64,
    pub bc_z_px: f64,
    pub tx_deg: f64,
    pub ty_deg: f64,
    pub tz_deg: f64,
    pub pixel_size_y_um: f64,
    pub pixel_size_z_um: f64,
    pub n_pixels_y: usize,
    pub n_pixels_z: usize,
    pub rho_d_um: f64,
    pub distortion: [f64; 15],
    pub parallax_um: f64,
    pub im_trans_opt: Vec<i32>,
    // binning
    pub r_min_px: f64,
    pub r_max_px: f64,
    pub r_bin_px: f64,
    pub eta_min_deg: f64,
    pub eta_max_deg: f64,
    pub eta_bin_deg: f64,
    pub q_min: f64,
    pub q_max: f64,
    pub q_bin: f64,
    pub tth_min_deg: f64,
    pub tth_max_deg: f64,
    pub tth_bin_deg: f64,
    /// 2θ bins counted as midas-integrate counts them, ⌈(max − min)/size⌉ of the floating-point
    /// quotient (`compat="midas-gpu"` sets it; no key): radint's own count takes a quotient
    /// within 1e-9 of a whole n as n bins.
    pub tth_bins_ceil: bool,
    pub wavelength_angstrom: f64,
    // files that shape the map
    pub mask_file: String,
    pub distortion_file: String,
    pub residual_correction_map: String,
    pub panel_shifts_file: String,
    pub dark_file: String,
    /// Flat field (`FlatFile`, midas-integrate's key): pixels are divided by it. The MIDAS C
    /// integrators do not read it.
    pub flat_file: String,
    // panels
    pub n_panels_y: usize,
    pub n_panels_z: usize,
    pub panel_size_y: usize,
    pub panel_size_z: usize,
    pub panel_gaps_y: Vec<i64>,
    pub panel_gaps_z: Vec<i64>,
    // splitting
    pub sub_pixel_level: u32,
    pub sub_pixel_cardinal_width_deg: f64,
    // corrections and normalisation
    pub solid_angle_correction: bool,
    pub polarization_correction: bool,
    pub polarization_fraction: f64,
    pub polarization_plane_eta_deg: f64,
    /// `Normalize` as written: IntegratorZarrOMP divides by the area only for 1, the GPU
    /// program and midas-integrate for any non-zero value.
    pub normalize: i64,
    pub gradient_correction: bool,
    // frames
    pub omega_sum_frames: i64,
    pub sum_images: bool,
    pub save_individual_frames: bool,
    pub skip_frame: usize,
    pub omega_start_deg: f64,
    pub omega_step_deg: f64,
    /// `Omega`: one ω for every frame, read by MIDAS's stream post-processor only
    /// (integrator_stream_process_h5.py); used when the parameters set it.
    pub omega_deg: f64,
    pub write_2d: bool,
    // peak fitting
    pub do_peak_fit: bool,
    pub peak_locations: Vec<f64>,
    pub fit_roi_padding: usize,
    pub fit_roi_auto: bool,
    pub auto_detect_peaks: bool,
    pub max_n_peaks: usize,
    pub snip_iterations: usize,
    pub doublet_separation: f64,
    pub multiple_peaks: bool,
    pub do_smoothing: bool,
    // GSAS-II instrument parameters copied to outputs
    pub gsas_polariz: f64,
    pub gsas_sh_l: f64,
    pub gsas_u: f64,
    pub gsas_v: f64,
    pub gsas_w: f64,
    pub gsas_x: f64,
    pub gsas_y: f64,
    pub gsas_z: f64,
    /// Raw pixel values marking gap / bad pixels (`GapIntensity`, `BadPxIntensity`); 0 = none,
    /// as in MIDAS's calibrant integrator. IntegratorZarrOMP parses and ignores them.
    pub gap_intensity: f64,
    /// How a pixel's value is shared among its bins: "area" (MIDAS: overlap area in the
    /// corrected plane) or "fraction" (pyFAI: the fraction of the pixel in each bin).
    pub pixel_weights: String,
    /// The models `SolidAngleCorrection 1` and `PolarizationCorrection 1` apply (radint's keys
    /// `SolidAngleModel`, `PolarizationModel`): "midas" (cos³2θ; 1 − f·sin²2θ·cos²η, as MIDAS)
    /// or pyFAI's "exact" solid angle and "kahn" polarization.
    pub solid_angle_model: String,
    pub polarization_model: String,
    /// `PixelShape` (radint's key): "square" (MIDAS: pxY along both axes, pxZ unused) or
    /// "rectangular" (pyFAI's pixel1 ≠ pixel2: pxZ along Z; R stays in units of pxY).
    pub pixel_shape: String,
    /// `ErrorModel` (radint's key): how each bin's sigma is estimated: "poisson" (variance =
    /// counts), "azimuthal" (pyFAI's: the spread of the pixel values within the bin) or "none".
    pub error_model: String,
    /// `ModuleGaps` (radint's key): module rows, module columns, gap rows, gap columns of a
    /// detector tiled by modules from the raw image's first pixel (pyFAI's MODULE_SIZE and
    /// MODULE_GAP); the gap pixels are masked. Empty: none.
    pub module_gaps: Vec<i64>,
    pub bad_px_intensity: f64,
    /// Keys radint does not use, in file order.
    pub unknown: Vec<UnknownKey>,
    /// Lines radint reads differently from MIDAS's DetectorMapper (an alias key, several
    /// ImTransOpt values on one line, panel gaps before the panel count), in file order: for a
    /// user comparing maps with the C program; also lines with values that radint and MIDAS
    /// both ignore (`px 172 999`). Warned by the Python layer, not part of the configuration.
    pub midas_notes: Vec<ParamNote>,
    /// Where each known key was last set (for validation messages).
    pub set_at: BTreeMap<String, Location>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            source: "<defaults>".into(),
            lsd_um: 1e6,
            bc_y_px: 1024.0,
            bc_z_px: 1024.0,
            tx_deg: 0.0,
            ty_deg: 0.0,
            tz_deg: 0.0,
            pixel_size_y_um: 200.0,
            pixel_size_z_um: 200.0,
            n_pixels_y: 0,
            n_pixels_z: 0,
            rho_d_um: 2e5,
            distortion: [0.0; 15],
            parallax_um: 0.0,
            im_trans_opt: Vec::new(),
            r_min_px: 10.0,
            r_max_px: 1524.0,
            r_bin_px: 0.25,
            eta_min_deg: -180.0,
            eta_max_deg: 180.0,
            eta_bin_deg: 5.0,
            q_min: 0.0,
            q_max: 0.0,
            q_bin: 0.0,
            tth_min_deg: 0.0,
            tth_max_deg: 0.0,
            tth_bin_deg: 0.0,
            tth_bins_ceil: false,
            wavelength_angstrom: 0.0,
            mask_file: String::new(),
            distortion_file: String::new(),
            residual_correction_map: String::new(),
            panel_shifts_file: String::new(),
            dark_file: String::new(),
            flat_file: String::new(),
            n_panels_y: 0,
            n_panels_z: 0,
            panel_size_y: 0,
            panel_size_z: 0,
            panel_gaps_y: Vec::new(),
            panel_gaps_z: Vec::new(),
            sub_pixel_level: 1,
            sub_pixel_cardinal_width_deg: 10.0,
            solid_angle_correction: false,
            polarization_correction: false,
            polarization_fraction: 0.99,
            polarization_plane_eta_deg: 0.0,
            normalize: 1,
            gradient_correction: false,
            omega_sum_frames: 1,
            sum_images: false,
            save_individual_frames: true,
            skip_frame: 0,
            omega_start_deg: 0.0,
            omega_step_deg: 0.0,
            omega_deg: 0.0,
            write_2d: false,
            do_peak_fit: false,
            peak_locations: Vec::new(),
            fit_roi_padding: 20,
            fit_roi_auto: false,
            auto_detect_peaks: false,
            max_n_peaks: 10,
            snip_iterations: 50,
            doublet_separation: 0.0,
            multiple_peaks: false,
            do_smoothing: false,
            gsas_polariz: 0.99,
            gsas_sh_l: 0.002,
            gsas_u: 1.163,
            gsas_v: -0.126,
            gsas_w: 0.063,
            gsas_x: 0.0,
            gsas_y: 0.0,
            gsas_z: 0.0,
            gap_intensity: 0.0,
            pixel_weights: "area".to_string(),
            solid_angle_model: "midas".to_string(),
            polarization_model: "midas".to_string(),
            pixel_shape: "square".to_string(),
            error_model: "poisson".to_string(),
            module_gaps: Vec::new(),
            bad_px_intensity: 0.0,
            unknown: Vec::new(),
            midas_notes: Vec::new(),
            set_at: BTreeMap::new(),
        }
    }
}

impl Params {
    /// Whether pxZ is the pixels' height (`PixelShape rectangular`), not pxY as in MIDAS.
    pub fn rectangular_pixels(&self) -> bool {
        self.pixel_shape == "rectangular"
    }

    /// The pixels' height over their width (pxZ / pxY): 1 unless `PixelShape rectangular`.
    pub fn pixel_aspect(&self) -> f64 {
        if self.rectangular_pixels() {
            self.pixel_size_z_um / self.pixel_size_y_um
        } else {
            1.0
        }
    }

    /// The radial binning mode: Q when `QBinSize > 0` and `Wavelength > 0` (as DetectorMapper),
    /// else 2θ when `TthBinSize > 0`, else R.
    pub fn radial_mode(&self) -> RadialMode {
        if self.q_bin > 0.0 && self.wavelength_angstrom > 0.0 {
            RadialMode::Q
        } else if self.tth_bin_deg > 0.0 {
            RadialMode::TwoTheta
        } else {
            RadialMode::Radius
        }
    }

    pub(crate) fn location_of(&self, key: &str) -> Location {
        self.set_at.get(key).cloned().unwrap_or_else(|| Location {
            file: self.source.clone(),
            line: 0,
        })
    }

    /// Where a key's value came from, for messages: `p.txt:9`, `command line` (an override),
    /// `default` (set nowhere), or the file alone where it has no line (a PONI file).
    pub fn origin(&self, key: &str) -> String {
        match self.set_at.get(key) {
            None => "default".to_string(),
            Some(loc) if loc.file == "<override>" => "command line".to_string(),
            Some(loc) => loc.to_string(),
        }
    }

    /// `Key value (origin)` for each key, comma-separated: the values a message is about.
    pub fn described(&self, keys: &[(&str, f64)]) -> String {
        keys.iter()
            .map(|&(key, value)| format!("{key} {} ({})", number_text(value), self.origin(key)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Of several keys that together give a value, the one set last (an override after any
    /// file line, a later line after an earlier one, a default never; on a tie the last key
    /// listed): the likeliest cause when that value is wrong.
    pub fn set_last<'k>(&self, keys: &[&'k str]) -> &'k str {
        let rank = |key: &str| match self.set_at.get(key) {
            None => (0, 0),
            Some(loc) if loc.file == "<override>" => (2, loc.line),
            Some(loc) => (1, loc.line),
        };
        keys.iter()
            .copied()
            .max_by_key(|&key| rank(key))
            .unwrap_or_default()
    }

    /// The radial binning keys of the active mode: (min, max, bin size), with their values.
    pub fn radial_keys(&self) -> [(&'static str, f64); 3] {
        match self.radial_mode() {
            RadialMode::Radius => [
                ("RMin", self.r_min_px),
                ("RMax", self.r_max_px),
                ("RBinSize", self.r_bin_px),
            ],
            RadialMode::Q => [
                ("QMin", self.q_min),
                ("QMax", self.q_max),
                ("QBinSize", self.q_bin),
            ],
            RadialMode::TwoTheta => [
                ("TthMin", self.tth_min_deg),
                ("TthMax", self.tth_max_deg),
                ("TthBinSize", self.tth_bin_deg),
            ],
        }
    }

    /// The η binning keys: (EtaMin, EtaMax, EtaBinSize), with their values.
    pub fn eta_keys(&self) -> [(&'static str, f64); 3] {
        [
            ("EtaMin", self.eta_min_deg),
            ("EtaMax", self.eta_max_deg),
            ("EtaBinSize", self.eta_bin_deg),
        ]
    }

    pub(crate) fn invalid(&self, key: &str, message: String) -> Error {
        Error::Parameter {
            location: self.location_of(key),
            key: key.to_string(),
            message,
        }
    }
}

/// A number as messages show it: `1e-7`, not `0.0000001` (nor 324 digits for 5e-324).
pub(crate) fn number_text(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e15).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}
