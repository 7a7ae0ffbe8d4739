//! MIDAS parameter files (`Key value ...` per line) → typed [`Params`].
//!
//! The syntax is the union of the MIDAS readers (spec §1.1): `#` starts a comment (whole line or
//! inline), a trailing `;` is ignored, the first whitespace token is the key, later lines win,
//! except `ImTransOpt` and `PeakLocation`, which accumulate. Unknown keys are kept, never fatal.

use std::collections::BTreeMap;

use crate::error::{Error, Location, Result};

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
            module_gaps: Vec::new(),
            bad_px_intensity: 0.0,
            unknown: Vec::new(),
            midas_notes: Vec::new(),
            set_at: BTreeMap::new(),
        }
    }
}

/// One `Key values...` line after comment and `;` stripping.
struct Line<'a> {
    key: &'a str,
    values: Vec<&'a str>,
    rest: &'a str,
    location: Location,
    /// A file name that ended in `;` (stripped here).
    semicolon_name: bool,
}

impl Line<'_> {
    fn err(&self, message: impl Into<String>) -> Error {
        Error::Parameter {
            location: self.location.clone(),
            key: self.key.to_string(),
            message: message.into(),
        }
    }

    fn need(&self, n: usize, what: &str) -> Result<()> {
        if self.values.len() < n {
            return Err(self.err(format!(
                "expected {n} value(s) ({what}), got {}",
                self.values.len()
            )));
        }
        Ok(())
    }

    fn f64_at(&self, i: usize) -> Result<f64> {
        self.need(i + 1, "a number")?;
        let text = self.values[i];
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.err(format!("expected a finite number, got '{text}'"))),
        }
    }

    fn f64(&self) -> Result<f64> {
        self.f64_at(0)
    }

    fn int_at(&self, i: usize) -> Result<i64> {
        self.need(i + 1, "an integer")?;
        let text = self.values[i];
        // MIDAS reads integers with atoi / sscanf("%d"), which stop at the first character that
        // is not a digit: "2.0" is 2 there as here, but "1e3" is 1 and "53.5" is 53 there. Only
        // spellings both read alike are accepted (digits, then at most a '.' and zeros).
        let digits = match text.split_once('.') {
            Some((whole, zeros)) if zeros.bytes().all(|b| b == b'0') => whole,
            _ => text,
        };
        digits
            .parse::<i64>()
            .map_err(|_| self.err(format!("expected an integer, got '{text}'")))
    }

    fn usize(&self) -> Result<usize> {
        let v = self.int_at(0)?;
        usize::try_from(v)
            .map_err(|_| self.err(format!("expected a non-negative integer, got {v}")))
    }

    fn flag(&self) -> Result<bool> {
        Ok(self.int_at(0)? != 0)
    }

    /// A switch IntegratorZarrOMP tests with `== 1` (SumImages, SaveIndividualFrames): 2 is
    /// off there, so it is off here too.
    fn exactly_one(&self) -> Result<bool> {
        Ok(self.int_at(0)? == 1)
    }

    /// The first word of the value: DetectorMapper reads file names and words with
    /// `sscanf("%s %s")`, so anything after them is ignored there too.
    fn text(&self) -> Result<String> {
        match self.values.first() {
            Some(word) => Ok(word.to_string()),
            None => Err(self.err("expected a value, got nothing")),
        }
    }

    /// The value, one of `choices`.
    fn one_of(&self, choices: &[&str]) -> Result<String> {
        let value = self.text()?;
        if !choices.contains(&value.as_str()) {
            return Err(self.err(format!("expected {}, got '{value}'", choices.join(" or "))));
        }
        Ok(value)
    }
}

/// Keys whose value is a file name: a '#' inside it is part of the name.
const FILE_KEYS: [&str; 8] = [
    "MaskFile",
    "MaskFN",
    "DistortionFile",
    "DistortionFN",
    "ResidualCorrectionMap",
    "PanelShiftsFile",
    "Dark",
    "FlatFile",
];

fn split_line<'a>(raw: &'a str, location: Location) -> Option<Line<'a>> {
    // A '#' starts a comment (`RMax 60#outer` is 60, as MIDAS's sscanf reads it), except inside
    // a file name (/data/run#3/mask.tif), where only a word beginning with '#' does.
    let start = raw.len() - raw.trim_start().len();
    let first_end = raw[start..]
        .find(char::is_whitespace)
        .map_or(raw.len(), |i| start + i);
    // A '#' inside the first word makes it another word (`Lsd#old` is no Lsd line for C, which
    // compares the whole key), not a comment.
    let anywhere = match raw.find('#') {
        Some(i) if i > start && i < first_end => raw[first_end..].find('#').map(|j| first_end + j),
        found => found,
    };
    let key = raw[..anywhere.unwrap_or(raw.len())]
        .split_whitespace()
        .next();
    let comment = if key.is_some_and(|k| FILE_KEYS.contains(&k)) {
        raw.char_indices()
            .find(|&(i, c)| {
                c == '#' && raw[..i].chars().next_back().is_none_or(char::is_whitespace)
            })
            .map(|(i, _)| i)
    } else {
        anywhere
    };
    let without_comment = match comment {
        Some(pos) => &raw[..pos],
        None => raw,
    };
    let trimmed = without_comment.trim().trim_end_matches(';').trim_end();
    let mut parts = trimmed.splitn(2, char::is_whitespace);
    let key = parts.next()?;
    if key.is_empty() {
        return None;
    }
    let rest = parts.next().unwrap_or("").trim();
    let values = rest
        .split_whitespace()
        .map(|v| v.trim_end_matches(';'))
        .collect();
    // DetectorMapper reads a file name with `%s`, so a `;` after it is part of the name there.
    let semicolon_name = FILE_KEYS.contains(&key) && without_comment.trim_end().ends_with(';');
    Some(Line {
        key,
        values,
        rest,
        location,
        semicolon_name,
    })
}

impl Params {
    /// Parse parameter-file text; `source` names the file in error messages.
    pub fn parse(text: &str, source: &str) -> Result<Params> {
        let mut params = Params {
            source: source.to_string(),
            ..Params::default()
        };
        // Keys given under their MIDAS name in this file: an alias line (DetDist, MaskFN, ...)
        // never overrides them, whatever the order, since DetectorMapper reads only that name.
        let mut spelled_out = std::collections::BTreeSet::new();
        // A UTF-8 byte-order mark would glue itself to the first key; files from old Macs end
        // their lines with a lone CR.
        let first_line = Location {
            file: source.to_string(),
            line: 1,
        };
        let without_mark = text.strip_prefix('\u{feff}');
        if without_mark.is_some() {
            params.midas_notes.push(ParamNote {
                message: "the file starts with a UTF-8 byte-order mark: radint reads the first \
                          line, MIDAS's C programs do not (its key does not match)"
                    .to_string(),
                location: first_line.clone(),
            });
        }
        let text = without_mark.unwrap_or(text);
        let cr_only = text.contains('\r') && !text.contains('\n');
        if cr_only && text.trim_end_matches('\r').contains('\r') {
            params.midas_notes.push(ParamNote {
                message: "lines end in a lone CR (old Mac text): radint reads every line, MIDAS's \
                          C programs read the file as one line (only its first key); save it \
                          with LF line ends for them"
                    .to_string(),
                location: first_line,
            });
        }
        let lines: Box<dyn Iterator<Item = &str>> = if cr_only {
            Box::new(text.split('\r'))
        } else {
            Box::new(text.lines())
        };
        for (index, raw) in lines.enumerate() {
            let location = Location {
                file: source.to_string(),
                line: index + 1,
            };
            if let Some(line) = split_line(raw, location) {
                let canonical = canonical_key(line.key);
                let (apply, note) = if !detector_mapper_ignores(line.key) {
                    spelled_out.insert(canonical.to_string());
                    (true, params.midas_difference(&line))
                } else if spelled_out.contains(canonical) {
                    let note = format!(
                        "{} ignored: {canonical} is given in this file (DetectorMapper reads only {canonical})",
                        line.key
                    );
                    (false, Some(note))
                } else {
                    let kept = if canonical == "pxY" && params.set_at.contains_key("px") {
                        format!("keeps px's {}", number_text(params.pixel_size_y_um))
                    } else {
                        "keeps its default".to_string()
                    };
                    let note = format!(
                        "{} read as {canonical}; DetectorMapper ignores {} and {kept}",
                        line.key, line.key
                    );
                    (true, Some(note))
                };
                let unmatched = detector_mapper_skips(raw, line.key).then(|| {
                    format!(
                        "{}: DetectorMapper reads a line only when it starts with \"{} \" (no \
                         leading blanks, one space, not a tab), so it ignores this one and keeps \
                         its default; radint reads it",
                        line.key, line.key
                    )
                });
                let semicolon = line.semicolon_name.then(|| {
                    format!(
                        "{} {};: radint reads the name without the ';', DetectorMapper with it \
                         (and finds no such file)",
                        line.key,
                        line.values.first().copied().unwrap_or("")
                    )
                });
                for message in note.into_iter().chain(unmatched).chain(semicolon) {
                    params.midas_notes.push(ParamNote {
                        message,
                        location: line.location.clone(),
                    });
                }
                if apply {
                    params.apply(&line)?;
                }
            }
        }
        Ok(params)
    }

    /// How DetectorMapper reads a line with a MIDAS key differently, if it does.
    fn midas_difference(&self, line: &Line) -> Option<String> {
        match line.key {
            "PeakLocation" if line.values.len() > 1 => Some(format!(
                "PeakLocation with {} values on one line: radint fits them all, \
                 IntegratorZarrOMP (and MIDAS's GPU and Python programs) only the first; give \
                 one PeakLocation line per peak for them",
                line.values.len()
            )),
            // Only where AutoDetectPeaks N > 0 counts peaks: `AutoDetectPeaks 0` counts none.
            "MaxNPeaks" if self.auto_detect_peaks => Some(
                "MaxNPeaks ignored: AutoDetectPeaks N sets the number of peaks (IntegratorZarrOMP \
                 does not read MaxNPeaks)"
                    .to_string(),
            ),
            "AutoDetectPeaks"
                if self.set_at.contains_key("MaxNPeaks") && line.int_at(0).is_ok_and(|n| n > 0) =>
            {
                Some(
                    "AutoDetectPeaks N sets the number of peaks, not the earlier MaxNPeaks \
                     (IntegratorZarrOMP does not read MaxNPeaks)"
                        .to_string(),
                )
            }
            "pxY"
                if self.set_at.contains_key("px")
                    && line.f64().is_ok_and(|v| v != self.pixel_size_y_um) =>
            {
                Some(format!(
                    "pxY {} after px {}: the map (radint's, DetectorMapper's) uses pxY, but \
                     IntegratorZarrOMP computes the 2θ and Q it writes from px",
                    line.rest, self.pixel_size_y_um
                ))
            }
            "PanelGapsY" | "PanelGapsZ" => {
                let count = if line.key == "PanelGapsY" {
                    "NPanelsY"
                } else {
                    "NPanelsZ"
                };
                (!self.set_at.contains_key(count)).then(|| {
                    format!(
                        "{} before {count}: radint applies the gaps, DetectorMapper ignores them",
                        line.key
                    )
                })
            }
            _ => None,
        }
    }

    /// Read and parse a parameter file.
    pub fn from_file(path: &str) -> Result<Params> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8_lossy(&bytes);
        Params::parse(&text, path)
    }

    /// Apply MIDAS-style overrides: each item is one `Key value ...` line (the CLI habit).
    /// Accumulating keys (`ImTransOpt`, `PeakLocation`) are replaced, not extended, by an override.
    pub fn apply_overrides(&mut self, overrides: &[String]) -> Result<()> {
        let mut replaced_lists: Vec<String> = Vec::new();
        for (index, raw) in overrides.iter().enumerate() {
            let location = Location {
                file: "<override>".to_string(),
                line: index + 1,
            };
            let Some(line) = split_line(raw, location) else {
                continue;
            };
            if (line.key == "ImTransOpt" || line.key == "PeakLocation")
                && !replaced_lists.iter().any(|k| k == line.key)
            {
                replaced_lists.push(line.key.to_string());
                match line.key {
                    "ImTransOpt" => self.im_trans_opt.clear(),
                    _ => self.peak_locations.clear(),
                }
            }
            // Said for an override as for a file's line (`MaxNPeaks 2` beside AutoDetectPeaks
            // on the command line was ignored without a word).
            if let Some(message) = self.midas_difference(&line) {
                self.midas_notes.push(ParamNote {
                    message,
                    location: line.location.clone(),
                });
            }
            self.apply(&line)?;
        }
        Ok(())
    }

    fn apply(&mut self, line: &Line) -> Result<()> {
        let known = self.apply_known(line)?;
        if known {
            self.set_at
                .insert(canonical_key(line.key).to_string(), line.location.clone());
            if line.key == "NrPixels" {
                // It sets both sizes: a message about NrPixelsZ names this line, not "default".
                self.set_at
                    .insert("NrPixelsZ".to_string(), line.location.clone());
            }
            if canonical_key(line.key) == "px" {
                // It sets both sizes: earlier pxY/pxZ lines no longer hold the values.
                self.set_at.remove("pxY");
                self.set_at.remove("pxZ");
            }
            // MIDAS's sscanf reads as many values as it asks for and drops the rest without a
            // word, and so does radint; but a dropped value is usually a typo (`px 172 999`).
            if let Some(n) = values_read(line.key).filter(|&n| line.values.len() > n) {
                let extra = &line.values[n..];
                let hint = if line.key == "ImTransOpt" {
                    " (one transform per line, as DetectorMapper and midas-integrate read it: \
                     give each on its own ImTransOpt line to apply it too)"
                } else {
                    ""
                };
                self.midas_notes.push(ParamNote {
                    message: format!(
                        "{}: {} extra value(s) ignored: {}{hint}",
                        line.key,
                        extra.len(),
                        extra.join(" ")
                    ),
                    location: line.location.clone(),
                });
            }
        } else {
            self.unknown.push(UnknownKey {
                key: line.key.to_string(),
                value: line.rest.to_string(),
                location: line.location.clone(),
            });
        }
        Ok(())
    }

    fn apply_known(&mut self, line: &Line) -> Result<bool> {
        match line.key {
            "Lsd" | "DetDist" => self.lsd_um = line.f64()?,
            "BC" => {
                line.need(2, "BC y z")?;
                self.bc_y_px = line.f64_at(0)?;
                self.bc_z_px = line.f64_at(1)?;
            }
            // DetectorMapper skips it: the distortion terms present are the order.
            "DistortionOrder" => {}
            "tx" => self.tx_deg = line.f64()?,
            "ty" => self.ty_deg = line.f64()?,
            "tz" => self.tz_deg = line.f64()?,
            "px" | "PixelSize" => {
                let v = line.f64()?;
                self.pixel_size_y_um = v;
                self.pixel_size_z_um = v;
            }
            "pxY" | "YPixelSize" | "PixelSizeY" => self.pixel_size_y_um = line.f64()?,
            "pxZ" | "ZPixelSize" | "PixelSizeZ" => self.pixel_size_z_um = line.f64()?,
            "NrPixels" => {
                let v = line.usize()?;
                self.n_pixels_y = v;
                self.n_pixels_z = v;
            }
            "NrPixelsY" => self.n_pixels_y = line.usize()?,
            "NrPixelsZ" => self.n_pixels_z = line.usize()?,
            "RhoD" | "MaxRingRad" => self.rho_d_um = line.f64()?,
            "Parallax" => self.parallax_um = line.f64()?,
            // One transform per line, as DetectorMapper (which bakes them into Map.bin) and
            // midas-integrate read it: `ImTransOpt 1 2` is a flip left-right only there
            // (IntegratorZarrOMP parses the rest but applies none), so the rest is ignored with
            // the extra-values warning.
            "ImTransOpt" => {
                line.need(1, "image transform 0..3")?;
                let op = line.int_at(0)?;
                if !(0..=3).contains(&op) {
                    return Err(line.err(format!(
                        "expected an image transform 0 (none), 1 (flip left-right), 2 (flip top-bottom) or 3 (transpose), got {op}"
                    )));
                }
                self.im_trans_opt.push(op as i32);
            }
            "RMin" => self.r_min_px = line.f64()?,
            "RMax" => self.r_max_px = line.f64()?,
            "RBinSize" => self.r_bin_px = line.f64()?,
            "EtaMin" | "MinEta" => self.eta_min_deg = line.f64()?,
            "EtaMax" | "MaxEta" => self.eta_max_deg = line.f64()?,
            "EtaBinSize" => self.eta_bin_deg = line.f64()?,
            "QMin" => self.q_min = line.f64()?,
            "QMax" => self.q_max = line.f64()?,
            "QBinSize" => self.q_bin = line.f64()?,
            "TthMin" => self.tth_min_deg = line.f64()?,
            "TthMax" => self.tth_max_deg = line.f64()?,
            "TthBinSize" => self.tth_bin_deg = line.f64()?,
            "Wavelength" => self.wavelength_angstrom = line.f64()?,
            "MaskFile" | "MaskFN" => self.mask_file = line.text()?,
            "DistortionFile" | "DistortionFN" => self.distortion_file = line.text()?,
            "ResidualCorrectionMap" => self.residual_correction_map = line.text()?,
            "PanelShiftsFile" => self.panel_shifts_file = line.text()?,
            "Dark" => self.dark_file = line.text()?,
            "FlatFile" => self.flat_file = line.text()?,
            "NPanelsY" => self.n_panels_y = line.usize()?,
            "NPanelsZ" => self.n_panels_z = line.usize()?,
            "PanelSizeY" => self.panel_size_y = line.usize()?,
            "PanelSizeZ" => self.panel_size_z = line.usize()?,
            "PanelGapsY" => {
                self.panel_gaps_y = (0..line.values.len())
                    .map(|i| line.int_at(i))
                    .collect::<Result<_>>()?
            }
            "PanelGapsZ" => {
                self.panel_gaps_z = (0..line.values.len())
                    .map(|i| line.int_at(i))
                    .collect::<Result<_>>()?
            }
            "SubPixelLevel" => {
                let v = line.int_at(0)?;
                if !(0..=64).contains(&v) {
                    return Err(line.err(format!("expected an integer in 0..=64, got {v}")));
                }
                // 0 means no sub-pixels, as in the C mapper (which splits only above 1).
                self.sub_pixel_level = v.max(1) as u32;
            }
            "SubPixelCardinalWidth" => self.sub_pixel_cardinal_width_deg = line.f64()?,
            "SolidAngleCorrection" => self.solid_angle_correction = line.flag()?,
            "PolarizationCorrection" => self.polarization_correction = line.flag()?,
            "PolarizationFraction" => self.polarization_fraction = line.f64()?,
            "PolarizationPlaneEtaDeg" => self.polarization_plane_eta_deg = line.f64()?,
            "Normalize" => {
                // Kept as written: the MIDAS programs disagree about values other than 0 and 1.
                let v = line.int_at(0)?;
                if v != 0 && v != 1 {
                    self.midas_notes.push(ParamNote {
                        message: format!(
                            "Normalize {v}: IntegratorZarrOMP divides by the bin area only for \
                             Normalize 1 (so compat='midas-cpu' does not), the GPU program and \
                             midas-integrate for any non-zero value (so radint's default and \
                             compat='midas-gpu' do); write 0 or 1"
                        ),
                        location: line.location.clone(),
                    });
                }
                self.normalize = v;
            }
            "GradientCorrection" => self.gradient_correction = line.flag()?,
            "OmegaSumFrames" => {
                // C reads 0 as 1 (each frame its own sum).
                let v = line.int_at(0)?;
                self.omega_sum_frames = if v == 0 { 1 } else { v };
            }
            "SumImages" => self.sum_images = line.exactly_one()?,
            "SaveIndividualFrames" => self.save_individual_frames = line.exactly_one()?,
            "SkipFrame" => self.skip_frame = line.usize()?,
            "OmegaStart" | "OmegaFirstFile" => self.omega_start_deg = line.f64()?,
            "OmegaStep" => self.omega_step_deg = line.f64()?,
            "Omega" => self.omega_deg = line.f64()?,
            "Write2D" => self.write_2d = line.flag()?,
            "DoPeakFit" => self.do_peak_fit = line.flag()?,
            "PeakLocation" => {
                line.need(1, "a peak position in R px")?;
                for i in 0..line.values.len() {
                    self.peak_locations.push(line.f64_at(i)?);
                }
                self.do_peak_fit = true;
            }
            "FitROIPadding" => self.fit_roi_padding = line.usize()?,
            "FitROIAuto" => self.fit_roi_auto = line.flag()?,
            "AutoDetectPeaks" => {
                // IntegratorZarrOMP: N > 0 = detect up to N peaks; any value turns fitting on.
                let n = line.int_at(0)?;
                self.auto_detect_peaks = n > 0;
                if n > 0 {
                    self.max_n_peaks = n as usize;
                }
                self.do_peak_fit = true;
            }
            "MaxNPeaks" => {
                // IntegratorZarrOMP never reads MaxNPeaks (a key of MIDAS's 2-D peak search):
                // `AutoDetectPeaks N` sets the count, whichever line comes first.
                let n = line.usize()?;
                if !self.set_at.contains_key("AutoDetectPeaks") {
                    self.max_n_peaks = n;
                }
            }
            "SNIPIterations" => self.snip_iterations = line.usize()?,
            "DoubletSeparation" => self.doublet_separation = line.f64()?,
            "MultiplePeaks" => self.multiple_peaks = line.flag()?,
            "DoSmoothing" => self.do_smoothing = line.flag()?,
            "Polariz" => self.gsas_polariz = line.f64()?,
            "SHpL" => self.gsas_sh_l = line.f64()?,
            "U" => self.gsas_u = line.f64()?,
            "V" => self.gsas_v = line.f64()?,
            "W" => self.gsas_w = line.f64()?,
            "X" => self.gsas_x = line.f64()?,
            "Y" => self.gsas_y = line.f64()?,
            "Z" => self.gsas_z = line.f64()?,
            "GapIntensity" => self.gap_intensity = line.f64()?,
            "PixelWeights" => self.pixel_weights = line.one_of(&["area", "fraction"])?,
            "SolidAngleModel" => self.solid_angle_model = line.one_of(&["midas", "exact"])?,
            "PolarizationModel" => self.polarization_model = line.one_of(&["midas", "kahn"])?,
            "ModuleGaps" => {
                line.need(4, "module rows, module columns, gap rows, gap columns")?;
                let values = (0..4).map(|i| line.int_at(i)).collect::<Result<Vec<_>>>()?;
                // All zeros: none (an override switching off what a PONI file's detector set).
                self.module_gaps = if values.iter().all(|&v| v == 0) {
                    Vec::new()
                } else {
                    values
                };
            }
            "BadPxIntensity" => self.bad_px_intensity = line.f64()?,
            key => {
                if let Some(index) = distortion_index(key) {
                    self.distortion[index] = line.f64()?;
                } else {
                    return Ok(false);
                }
            }
        }
        Ok(true)
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

    /// `low < high` (the values of `low_key` and `high_key`), else an error at the key set last
    /// (the line just added or changed; `high_key` where neither was set), naming the other's
    /// value and where it comes from.
    fn check_ordered(&self, low_key: &str, low: f64, high_key: &str, high: f64) -> Result<()> {
        if high > low {
            return Ok(());
        }
        Err(if self.set_last(&[low_key, high_key]) == low_key {
            let other = self.origin(high_key);
            self.invalid(
                low_key,
                format!("must be < {high_key} ({high}, {other}), got {low}"),
            )
        } else {
            let other = self.origin(low_key);
            self.invalid(
                high_key,
                format!("must be > {low_key} ({low}, {other}), got {high}"),
            )
        })
    }

    /// Check everything mapping and integration need; the first problem is reported.
    pub fn validate(&self) -> Result<()> {
        for key in ["NrPixelsY", "NrPixelsZ"] {
            let value = if key == "NrPixelsY" {
                self.n_pixels_y
            } else {
                self.n_pixels_z
            };
            if value == 0 {
                let set = self.set_at.contains_key(key);
                return Err(if set {
                    self.invalid(key, "must be > 0, got 0".into())
                } else {
                    Error::MissingParameter {
                        file: self.source.clone(),
                        key: key.into(),
                        hint: "give NrPixels N, or NrPixelsY and NrPixelsZ".into(),
                    }
                });
            }
        }
        if self.n_pixels_y.saturating_mul(self.n_pixels_z) > u32::MAX as usize {
            return Err(self.invalid(
                "NrPixelsY",
                format!(
                    "detector of {}x{} pixels exceeds 2^32 pixels",
                    self.n_pixels_y, self.n_pixels_z
                ),
            ));
        }
        // Values set through the API (not parsed) may be NaN or infinite: the map would come out
        // empty without a word.
        let p = &self.distortion;
        let numbers = [
            ("Lsd", self.lsd_um),
            ("BC", self.bc_y_px),
            ("BC", self.bc_z_px),
            ("tx", self.tx_deg),
            ("ty", self.ty_deg),
            ("tz", self.tz_deg),
            ("pxY", self.pixel_size_y_um),
            ("pxZ", self.pixel_size_z_um),
            ("RhoD", self.rho_d_um),
            ("Parallax", self.parallax_um),
            ("RMin", self.r_min_px),
            ("RMax", self.r_max_px),
            ("RBinSize", self.r_bin_px),
            ("EtaMin", self.eta_min_deg),
            ("EtaMax", self.eta_max_deg),
            ("EtaBinSize", self.eta_bin_deg),
            ("QMin", self.q_min),
            ("QMax", self.q_max),
            ("QBinSize", self.q_bin),
            ("TthMin", self.tth_min_deg),
            ("TthMax", self.tth_max_deg),
            ("TthBinSize", self.tth_bin_deg),
            ("Wavelength", self.wavelength_angstrom),
            ("p0", p[0]),
            ("p1", p[1]),
            ("p2", p[2]),
            ("p3", p[3]),
            ("p4", p[4]),
            ("p5", p[5]),
            ("p6", p[6]),
            ("p7", p[7]),
            ("p8", p[8]),
            ("p9", p[9]),
            ("p10", p[10]),
            ("p11", p[11]),
            ("p12", p[12]),
            ("p13", p[13]),
            ("p14", p[14]),
        ];
        for (key, value) in numbers {
            if !value.is_finite() {
                return Err(self.invalid(key, format!("must be a finite number, got {value}")));
            }
        }
        for (key, value) in [("ty", self.ty_deg), ("tz", self.tz_deg)] {
            if value.abs() >= 90.0 {
                return Err(self.invalid(
                    key,
                    format!("must be within ±90° (the detector would be edge-on), got {value}"),
                ));
            }
        }
        if let Some(&bad) = self.im_trans_opt.iter().find(|&&t| !(0..=3).contains(&t)) {
            return Err(self.invalid(
                "ImTransOpt",
                format!("must be 0 (none), 1 (flip Y), 2 (flip Z) or 3 (transpose), got {bad}"),
            ));
        }
        let positive = [
            ("Lsd", self.lsd_um),
            ("pxY", self.pixel_size_y_um),
            ("pxZ", self.pixel_size_z_um),
            ("RhoD", self.rho_d_um),
            ("EtaBinSize", self.eta_bin_deg),
        ];
        for (key, value) in positive {
            if value <= 0.0 {
                let key = if key.starts_with("px") && !self.set_at.contains_key(key) {
                    "px"
                } else {
                    key
                };
                return Err(self.invalid(key, format!("must be > 0, got {value}")));
            }
        }
        if self.wavelength_angstrom < 0.0 {
            return Err(self.invalid(
                "Wavelength",
                format!(
                    "must be > 0 Å (or 0 for none, as MIDAS reads it), got {}",
                    self.wavelength_angstrom
                ),
            ));
        }
        // TthBinSize ≤ 0 (radint's own key; 0 = no 2θ bins, as radint's midas_text writes it)
        // with a range given, or negative, is a mistake that would silently bin in R instead.
        // QBinSize ≤ 0 is MIDAS's "R bins" whatever the Q range (DetectorMapper, integrator.py
        // and midas-integrate read it so): accepted, and warned about by the Python layer.
        for (size_key, size, lo_key, lo, hi_key, hi) in [(
            "TthBinSize",
            self.tth_bin_deg,
            "TthMin",
            self.tth_min_deg,
            "TthMax",
            self.tth_max_deg,
        )] {
            if size < 0.0 || (size == 0.0 && (lo != 0.0 || hi != 0.0)) {
                let range = if lo != 0.0 || hi != 0.0 {
                    format!(
                        " ({}; leave {size_key} and the range out for R bins)",
                        self.described(&[(lo_key, lo), (hi_key, hi)])
                    )
                } else {
                    String::new()
                };
                return Err(self.invalid(
                    size_key,
                    format!("expected > 0, got {}{range}", number_text(size)),
                ));
            }
        }
        self.check_ordered("EtaMin", self.eta_min_deg, "EtaMax", self.eta_max_deg)?;
        if self.q_bin > 0.0 && self.wavelength_angstrom <= 0.0 {
            // DetectorMapper silently bins in R then; the user asked for Q.
            return Err(self.invalid(
                "QBinSize",
                format!(
                    "Q bins need the wavelength: Wavelength (Å) must be > 0, got {}",
                    self.wavelength_angstrom
                ),
            ));
        }
        match self.radial_mode() {
            RadialMode::Radius => {
                if self.r_bin_px <= 0.0 {
                    return Err(
                        self.invalid("RBinSize", format!("must be > 0, got {}", self.r_bin_px))
                    );
                }
                if self.r_min_px < 0.0 {
                    return Err(
                        self.invalid("RMin", format!("must be >= 0, got {}", self.r_min_px))
                    );
                }
                self.check_ordered("RMin", self.r_min_px, "RMax", self.r_max_px)?;
            }
            RadialMode::Q => {
                if self.q_min < 0.0 {
                    return Err(self.invalid("QMin", format!("must be >= 0, got {}", self.q_min)));
                }
                self.check_ordered("QMin", self.q_min, "QMax", self.q_max)?;
                // R = Lsd·tan 2θ: a flat detector ends at 2θ = 90°, Q = 4π/λ·sin 45°.
                let q_limit = 4.0 * std::f64::consts::PI / self.wavelength_angstrom
                    * std::f64::consts::FRAC_1_SQRT_2;
                if self.q_max >= q_limit {
                    return Err(self.invalid(
                        "QMax",
                        format!(
                            "must be < 4π/λ·sin 45° = {q_limit:.6} Å⁻¹ (2θ < 90°, as far as a \
                             flat detector reaches), got {}",
                            self.q_max
                        ),
                    ));
                }
            }
            RadialMode::TwoTheta => {
                if self.tth_min_deg < 0.0 {
                    return Err(
                        self.invalid("TthMin", format!("must be >= 0, got {}", self.tth_min_deg))
                    );
                }
                self.check_ordered("TthMin", self.tth_min_deg, "TthMax", self.tth_max_deg)?;
                if self.tth_max_deg >= 90.0 {
                    return Err(self.invalid(
                        "TthMax",
                        format!(
                            "must be < 90 degrees for a flat detector, got {}",
                            self.tth_max_deg
                        ),
                    ));
                }
            }
        }
        let n_r = crate::bins::radial_count(self)?;
        let n_eta = crate::bins::eta_count(self)?;
        let n_bins = n_r as u128 * n_eta as u128;
        if n_bins > u32::MAX as u128 {
            // R and η bins multiply: blame the axis with more bins, and within it the key set
            // last; name both bin sizes and where they come from.
            let (radial, eta) = (self.radial_keys(), self.eta_keys());
            let axis = if n_eta >= n_r { eta } else { radial };
            let key = self.set_last(&axis.map(|(k, _)| k));
            return Err(self.invalid(
                key,
                format!(
                    "{n_r} radial bins x {n_eta} η bins = {n_bins} bins, more than the 2^32 - 1 \
                     a map can index ({}); use larger bins or a smaller range",
                    self.described(&[radial[2], eta[2]])
                ),
            ));
        }
        if let Some(message) = module_gaps_problem(&self.module_gaps) {
            return Err(self.invalid("ModuleGaps", message));
        }
        // The parser checks these; a configuration built in Python (replace()) is not parsed.
        for (key, value, choices) in [
            ("PixelWeights", &self.pixel_weights, ["area", "fraction"]),
            (
                "SolidAngleModel",
                &self.solid_angle_model,
                ["midas", "exact"],
            ),
            (
                "PolarizationModel",
                &self.polarization_model,
                ["midas", "kahn"],
            ),
        ] {
            if !choices.contains(&value.as_str()) {
                return Err(self.invalid(
                    key,
                    format!("expected {}, got '{value}'", choices.join(" or ")),
                ));
            }
        }
        if self.n_panels_y > 0 || self.n_panels_z > 0 {
            if self.panel_size_y == 0 || self.panel_size_z == 0 {
                return Err(self.invalid(
                    "PanelSizeY",
                    "PanelSizeY and PanelSizeZ must be > 0 when NPanelsY/NPanelsZ are given".into(),
                ));
            }
            for (key, gaps, n) in [
                ("PanelGapsY", &self.panel_gaps_y, self.n_panels_y),
                ("PanelGapsZ", &self.panel_gaps_z, self.n_panels_z),
            ] {
                if n > 0 && gaps.len() != n - 1 {
                    return Err(self.invalid(
                        key,
                        format!(
                            "expected {} gap values (NPanels - 1), got {}",
                            n - 1,
                            gaps.len()
                        ),
                    ));
                }
            }
        }
        for &op in &self.im_trans_opt {
            if op == 3 && self.n_pixels_y != self.n_pixels_z {
                return Err(self.invalid(
                    "ImTransOpt",
                    format!(
                        "transpose (3) needs a square detector, got {}x{}",
                        self.n_pixels_y, self.n_pixels_z
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What is wrong with a `ModuleGaps` value (empty = none), if anything.
fn module_gaps_problem(gaps: &[i64]) -> Option<String> {
    let shown = || {
        let words: Vec<String> = gaps.iter().map(|v| v.to_string()).collect();
        words.join(" ")
    };
    match gaps {
        [] => None,
        [rows, cols, gap_rows, gap_cols]
            if *rows >= 1 && *cols >= 1 && *gap_rows >= 0 && *gap_cols >= 0 =>
        {
            None
        }
        [_, _, _, _] => Some(format!(
            "expected module rows, module columns (> 0), gap rows, gap columns (>= 0), got {} \
             (0 0 0 0: no gaps)",
            shown()
        )),
        _ => Some(format!(
            "expected 4 integers, got {} ({})",
            gaps.len(),
            shown()
        )),
    }
}

/// How many values a known key reads: the rest of its line is ignored (as by MIDAS's sscanf).
/// `None` for keys that read every value (PeakLocation, PanelGapsY/Z) and for
/// DistortionOrder, which nothing reads.
fn values_read(key: &str) -> Option<usize> {
    match key {
        "PeakLocation" | "PanelGapsY" | "PanelGapsZ" | "DistortionOrder" => None,
        "BC" => Some(2),
        "ModuleGaps" => Some(4),
        _ => Some(1),
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

/// `pN` for N in 0..15, spelled as DetectorMapper matches it (`p01`, `p+4` are other keys).
fn distortion_index(key: &str) -> Option<usize> {
    let digits = key.strip_prefix('p')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    let index: usize = digits.parse().ok()?;
    (index < 15).then_some(index)
}

/// The keys DetectorMapper's text mode reads (DetectorMapper.c), each matched as `"Key "` at
/// the very start of a line.
#[rustfmt::skip]
const DETECTOR_MAPPER_KEYS: [&str; 56] = [
    "tx", "ty", "tz", "pxY", "pxZ", "NPanelsY", "NPanelsZ", "PanelSizeY", "PanelSizeZ",
    "PanelShiftsFile", "PanelGapsY", "PanelGapsZ", "px", "BC", "Lsd", "RhoD", "MaxRingRad",
    "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12", "p13",
    "p14", "DistortionOrder", "EtaBinSize", "RBinSize", "RMax", "RMin", "EtaMax", "EtaMin",
    "QBinSize", "SubPixelLevel", "SubPixelCardinalWidth", "QMin", "QMax", "Wavelength",
    "NrPixelsY", "NrPixelsZ", "NrPixels", "DistortionFile", "ImTransOpt", "MaskFile",
    "Parallax", "SolidAngleCorrection", "PolarizationCorrection", "PolarizationFraction",
    "ResidualCorrectionMap",
];

/// Whether DetectorMapper passes over a line radint reads as `key`: it has leading blanks or
/// another separator than a space after the key (`RMin\t5`).
fn detector_mapper_skips(raw: &str, key: &str) -> bool {
    DETECTOR_MAPPER_KEYS.contains(&key)
        && !raw
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(' '))
}

/// Aliases radint reads (from other MIDAS tools) that DetectorMapper's text mode does not know.
fn detector_mapper_ignores(key: &str) -> bool {
    matches!(
        key,
        "DetDist"
            | "PixelSize"
            | "YPixelSize"
            | "ZPixelSize"
            | "PixelSizeY"
            | "PixelSizeZ"
            | "MinEta"
            | "MaxEta"
            | "MaskFN"
            | "DistortionFN"
    )
}

/// The name validation messages use for a key and its aliases.
fn canonical_key(key: &str) -> &str {
    match key {
        "DetDist" => "Lsd",
        "PixelSize" => "px",
        "YPixelSize" | "PixelSizeY" => "pxY",
        "ZPixelSize" | "PixelSizeZ" => "pxZ",
        "MaxRingRad" => "RhoD",
        "MinEta" => "EtaMin",
        "MaxEta" => "EtaMax",
        "MaskFN" => "MaskFile",
        "DistortionFN" => "DistortionFile",
        "OmegaFirstFile" => "OmegaStart",
        "NrPixels" => "NrPixelsY",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_midas_reads_otherwise_is_said_as_a_file_line_is() {
        let mut p = Params::parse("AutoDetectPeaks 1\n", "p.txt").unwrap();
        p.apply_overrides(&["MaxNPeaks 2".to_string()]).unwrap();
        assert_eq!(p.max_n_peaks, 1);
        assert!(
            p.midas_notes
                .iter()
                .any(|n| n.message.starts_with("MaxNPeaks ignored")
                    && n.location.file == "<override>")
        );
    }

    #[test]
    fn max_n_peaks_beside_auto_detect_peaks_0_is_not_said_to_be_ignored() {
        // MIDAS's own example files: `DoPeakFit 0`, `AutoDetectPeaks 0`, `MaxNPeaks 10`.
        for text in [
            "AutoDetectPeaks 0\nMaxNPeaks 10\n",
            "MaxNPeaks 10\nAutoDetectPeaks 0\n",
        ] {
            let p = Params::parse(text, "p.txt").unwrap();
            assert!(p.midas_notes.is_empty(), "{text:?}: {:?}", p.midas_notes);
        }
        for text in [
            "AutoDetectPeaks 3\nMaxNPeaks 10\n",
            "MaxNPeaks 10\nAutoDetectPeaks 3\n",
        ] {
            let p = Params::parse(text, "p.txt").unwrap();
            assert_eq!(p.midas_notes.len(), 1, "{text:?}");
        }
    }

    #[test]
    fn nr_pixels_is_where_both_sizes_were_set() {
        let p = Params::parse("NrPixels 2048\n", "p.txt").unwrap();
        assert_eq!((p.n_pixels_y, p.n_pixels_z), (2048, 2048));
        assert_eq!(p.origin("NrPixelsY"), "p.txt:1");
        assert_eq!(p.origin("NrPixelsZ"), "p.txt:1");
    }

    #[test]
    fn an_alias_never_overrides_the_midas_key_of_the_same_file() {
        for text in [
            "Lsd 400000\nDetDist 500000\n",
            "DetDist 500000\nLsd 400000\n",
        ] {
            assert_eq!(
                Params::parse(text, "p.txt").unwrap().lsd_um,
                400000.0,
                "{text}"
            );
        }
        let alone = Params::parse("DetDist 500000\nMinEta -90\n", "p.txt").unwrap();
        assert_eq!((alone.lsd_um, alone.eta_min_deg), (500000.0, -90.0));
        let notes = |text: &str| {
            let p = Params::parse(text, "p.txt").unwrap();
            p.midas_notes
                .iter()
                .map(|n| {
                    (
                        n.location.line,
                        n.message.split(' ').take(2).collect::<Vec<_>>().join(" "),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            notes("Lsd 400000\nDetDist 500000\nMaskFN m.tif\n"),
            [(2, "DetDist ignored:".into()), (3, "MaskFN read".into())]
        );
        assert_eq!(
            notes("ImTransOpt 1 2\nPanelGapsY 3\nNPanelsY 2\nPanelGapsZ 1\nNPanelsZ 2\nImTransOpt 2\n"),
            [(1, "ImTransOpt: 1".into()), (2, "PanelGapsY before".into()), (4, "PanelGapsZ before".into())]
        );
        // DetectorMapper matches "Key " at the start of a line only.
        assert_eq!(
            notes("RMin\t5\n  RMax 40\nRBinSize  1\nDistortionOrder 2\nNormalize\t1\nOmegaSumFrames 1\n"),
            [(1, "RMin: DetectorMapper".into()), (2, "RMax: DetectorMapper".into())]
        );
        assert!(Params::parse("DistortionOrder 2\n", "p.txt")
            .unwrap()
            .unknown
            .is_empty());
        assert_eq!(
            notes("px 172\npxY 172\npxY 150\npxZ 150\n"),
            [(3, "pxY 150".into())]
        );
        let mut overridden = Params::parse("Lsd 400000\n", "p.txt").unwrap();
        overridden
            .apply_overrides(&["DetDist 600000".into()])
            .unwrap();
        assert_eq!(overridden.lsd_um, 600000.0);
    }

    #[test]
    fn parses_comments_semicolons_and_accumulating_keys() {
        let text = "# header\nLsd 1000; # inline\nNrPixels 100\nImTransOpt 1\nImTransOpt 2\nPeakLocation 10\nPeakLocation 20 30\nFoo bar baz\nLsd 2000\n";
        let p = Params::parse(text, "p.txt").unwrap();
        assert_eq!(p.lsd_um, 2000.0);
        assert_eq!((p.n_pixels_y, p.n_pixels_z), (100, 100));
        assert_eq!(p.im_trans_opt, vec![1, 2]);
        assert_eq!(p.peak_locations, vec![10.0, 20.0, 30.0]);
        assert_eq!(p.unknown.len(), 1);
        assert_eq!(p.unknown[0].key, "Foo");
        assert_eq!(p.unknown[0].location.line, 8);
    }

    #[test]
    fn switches_read_as_the_c_integrator_reads_them() {
        // IntegratorZarrOMP: SumImages/SaveIndividualFrames on only when == 1,
        // OmegaSumFrames 0 → 1; DetectorMapper splits pixels only for SubPixelLevel > 1.
        // Normalize is kept as written (IntegratorZarrOMP tests == 1, the GPU program != 0),
        // with a note for values other than 0 and 1.
        let text = "Normalize 2\nSumImages 2\nSaveIndividualFrames 3\nOmegaSumFrames 0\nSubPixelLevel 0\nSolidAngleCorrection 2\n";
        let p = Params::parse(text, "p.txt").unwrap();
        assert!(!p.sum_images && !p.save_individual_frames);
        assert_eq!(p.normalize, 2);
        assert_eq!(p.midas_notes.len(), 1);
        assert!(p.midas_notes[0]
            .message
            .starts_with("Normalize 2: IntegratorZarrOMP"));
        assert_eq!(p.midas_notes[0].location.line, 1);
        assert_eq!(p.omega_sum_frames, 1);
        assert_eq!(p.sub_pixel_level, 1);
        assert!(p.solid_angle_correction);
        let p = Params::parse("AutoDetectPeaks 3\n", "p.txt").unwrap();
        assert!(p.do_peak_fit && p.auto_detect_peaks && p.max_n_peaks == 3);
        let p = Params::parse("Normalize 1\nSumImages 1\nOmegaSumFrames -1\n", "p.txt").unwrap();
        assert!(p.normalize == 1 && p.sum_images && p.midas_notes.is_empty());
        assert_eq!(p.omega_sum_frames, -1);
    }

    #[test]
    fn bad_number_names_file_line_key() {
        let err = Params::parse("Lsd 1e6\nRBinSize abc\n", "p.txt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.txt:2: RBinSize: expected a finite number, got 'abc'"
        );
    }

    #[test]
    fn validation_names_line() {
        let p = Params::parse("NrPixels 10\nRBinSize -0.5\n", "p.txt").unwrap();
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "p.txt:2: RBinSize: must be > 0, got -0.5"
        );
        let p = Params::parse("Lsd 1\n", "p.txt").unwrap();
        assert!(p.validate().unwrap_err().to_string().contains("NrPixelsY"));
    }

    /// Base of the validation tests below: a 53 x 37 detector binned 1..30 px x 10°.
    const SMALL: &str = "NrPixelsY 53\nNrPixelsZ 37\npx 172\nLsd 500000\nBC 26 18\n\
                         Wavelength 0.17\nRMin 1\nRMax 30\nRBinSize 1\nEtaBinSize 10\n";

    #[test]
    fn module_gaps_reads_four_integers_and_refuses_empty_modules() {
        let p = Params::parse(&format!("{SMALL}ModuleGaps 195 487 17 7\n"), "p.txt").unwrap();
        assert_eq!(p.module_gaps, vec![195, 487, 17, 7]);
        assert!(p.midas_notes.is_empty());
        let mut p = Params::parse(&format!("{SMALL}ModuleGaps 195 0 17 7\n"), "p.txt").unwrap();
        let e = p.validate().unwrap_err().to_string();
        assert!(
            e.contains("p.txt:11: ModuleGaps: expected module rows"),
            "{e}"
        );
        p.module_gaps = vec![195, 487];
        let e = p.validate().unwrap_err().to_string();
        assert!(
            e.contains("ModuleGaps: expected 4 integers, got 2 (195 487)"),
            "{e}"
        );
        let e = Params::parse(&format!("{SMALL}ModuleGaps 195 487\n"), "p.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 4 value(s) (module rows"), "{e}");
        let text = format!("{SMALL}ModuleGaps 195 487 17 7\nModuleGaps 0 0 0 0\n");
        assert!(Params::parse(&text, "p.txt")
            .unwrap()
            .module_gaps
            .is_empty());
    }

    fn error_with(overrides: &[&str]) -> String {
        let mut p = Params::parse(SMALL, "p.txt").unwrap();
        let lines: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        match p.apply_overrides(&lines) {
            Err(e) => e.to_string(),
            Ok(()) => p.validate().unwrap_err().to_string(),
        }
    }

    #[test]
    fn integers_are_read_only_where_atoi_reads_the_same() {
        // atoi reads "1e3" as 1 and "53.5" as 53: both refused; "2.0" and "2." are 2 there too.
        for bad in ["1e3", "53.5", "1.0e3", ".0", "0x10"] {
            let err = Params::parse(&format!("NrPixelsY {bad}\n"), "p.txt").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("p.txt:1: NrPixelsY: expected an integer, got '{bad}'")
            );
        }
        let p = Params::parse("NrPixelsY 2.0\nNrPixelsZ 3.\nSubPixelLevel +4\n", "p.txt").unwrap();
        assert_eq!((p.n_pixels_y, p.n_pixels_z, p.sub_pixel_level), (2, 3, 4));
        assert!(Params::parse("ImTransOpt 1e0\n", "p.txt").is_err());
    }

    #[test]
    fn extra_values_are_noted_once_per_line() {
        let text = "px 172 999\nLsd 500000 junk\nBC 26 18 5\nRBinSize 1 7 8\nImTransOpt 1 2\n\
                    PeakLocation 10 20 30\nNPanelsY 3\nPanelGapsY 1 2\nMaskFile m.tif x\n";
        let mut p = Params::parse(text, "p.txt").unwrap();
        p.apply_overrides(&["EtaBinSize 5 6".into()]).unwrap();
        let notes: Vec<(String, usize, &str)> = p
            .midas_notes
            .iter()
            .filter(|n| n.message.contains("extra"))
            .map(|n| (n.location.file.clone(), n.location.line, n.message.as_str()))
            .collect();
        let at = |line: usize, m: &'static str| ("p.txt".to_string(), line, m);
        assert_eq!(
            notes,
            [
                at(1, "px: 1 extra value(s) ignored: 999"),
                at(2, "Lsd: 1 extra value(s) ignored: junk"),
                at(3, "BC: 1 extra value(s) ignored: 5"),
                at(4, "RBinSize: 2 extra value(s) ignored: 7 8"),
                at(
                    5,
                    "ImTransOpt: 1 extra value(s) ignored: 2 (one transform per line, as \
                     DetectorMapper and midas-integrate read it: give each on its own \
                     ImTransOpt line to apply it too)"
                ),
                at(9, "MaskFile: 1 extra value(s) ignored: x"),
                (
                    "<override>".into(),
                    1,
                    "EtaBinSize: 1 extra value(s) ignored: 6"
                ),
            ]
        );
        assert_eq!(
            (p.pixel_size_y_um, p.bc_z_px, p.r_bin_px),
            (172.0, 18.0, 1.0)
        );
        assert_eq!(p.im_trans_opt, [1]);
    }

    #[test]
    fn eta_bin_counts_are_limited_like_radial_ones() {
        // Too many η bins collapsed silently to one bin (all NaN for EtaBinSize 1e-12).
        assert_eq!(
            error_with(&["EtaBinSize 1e-7"]),
            "<override>:1: EtaBinSize: η range / bin size gives 3600000000 bins; expected 1 to \
             1e9 (EtaMin -180 (default), EtaMax 180 (default), EtaBinSize 1e-7 (command line))"
        );
        assert!(error_with(&["EtaMax 1e12"]).starts_with("<override>:1: EtaMax: η range"));
        // 5e-324 gives an infinite count.
        let p = Params::parse(&format!("{SMALL}EtaBinSize 5e-324\n"), "p.txt").unwrap();
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("p.txt:11: EtaBinSize: η range / bin size gives inf bins"));
        assert!(error_with(&["RBinSize 1e-9"]).starts_with("<override>:1: RBinSize: radial range"));
    }

    #[test]
    fn too_many_bins_names_the_bin_sizes_and_where_they_come_from() {
        // Blamed RBinSize at p.txt:9 though EtaBinSize on the command line caused it.
        assert_eq!(
            error_with(&["EtaBinSize 1e-6"]),
            "<override>:1: EtaBinSize: 29 radial bins x 360000000 η bins = 10440000000 bins, \
             more than the 2^32 - 1 a map can index (RBinSize 1 (p.txt:9), EtaBinSize 1e-6 \
             (command line)); use larger bins or a smaller range"
        );
        let p = Params::parse(&format!("{SMALL}RMax 300000\nRBinSize 0.001\n"), "p.txt").unwrap();
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("p.txt:12: RBinSize: "));
    }

    #[test]
    fn q_and_two_theta_bin_sizes_and_the_wavelength_must_be_positive() {
        // They were ignored (R bins instead) or accepted (Wavelength -0.17 in the outputs).
        // QBinSize <= 0 is MIDAS's R bins, with or without a Q range.
        for extra in [
            &["QMin 0.5", "QMax 5"][..],
            &["QMax 0.5", "QBinSize -1"][..],
        ] {
            let mut text = SMALL.to_string();
            for line in extra {
                text.push_str(line);
                text.push('\n');
            }
            let p = Params::parse(&text, "p.txt").unwrap();
            p.validate().unwrap();
            assert_eq!(p.radial_mode(), RadialMode::Radius);
        }
        // A flat detector ends at 2θ = 90°: λ 1 Å reaches Q 8.886 Å⁻¹ (QMax 9 once passed
        // this check, claiming 2θ < 180°, then failed on bin edges past the detector plane).
        assert!(
            error_with(&["Wavelength 1", "QMin 1", "QMax 9", "QBinSize 0.1"])
                .starts_with("<override>:3: QMax: must be < 4π/λ·sin 45° = 8.885766 Å⁻¹ (2θ < 90°")
        );
        assert!(error_with(&["TthMax 1", "TthBinSize 0"])
            .starts_with("<override>:2: TthBinSize: expected > 0, got 0"));
        assert!(error_with(&["TthBinSize -0.1"])
            .starts_with("<override>:1: TthBinSize: expected > 0, got -0.1"));
        assert_eq!(
            error_with(&["Wavelength -0.17"]),
            "<override>:1: Wavelength: must be > 0 Å (or 0 for none, as MIDAS reads it), got -0.17"
        );
        // 0 is MIDAS's "none" (radint's own midas_text writes QBinSize 0 and Wavelength 0).
        let p = Params::parse(
            &format!("{SMALL}Wavelength 0\nQBinSize 0\nTthBinSize 0\n"),
            "p.txt",
        )
        .unwrap();
        assert!(p.validate().is_ok());
        assert_eq!(p.radial_mode(), RadialMode::Radius);
    }

    #[test]
    fn overrides_replace_values() {
        let mut p = Params::parse("NrPixels 10\nImTransOpt 1\nRMax 50\n", "p.txt").unwrap();
        p.apply_overrides(&["RMax 80".into(), "ImTransOpt 2".into()])
            .unwrap();
        assert_eq!(p.r_max_px, 80.0);
        assert_eq!(p.im_trans_opt, vec![2]);
    }
}
