//! Parameter files and overrides → [`Params`]: each line applied in order, with notes where
//! MIDAS's C programs read it otherwise.

use super::keys::{
    canonical_key, detector_mapper_ignores, detector_mapper_skips, distortion_index, values_read,
};
use super::line::{split_line, Line};
use super::{number_text, ParamNote, Params, UnknownKey};
use crate::error::{Error, Location, Result};

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
            "PixelShape" => self.pixel_shape = line.one_of(&["square", "rectangular"])?,
            "ErrorModel" => {
                self.error_model = line.one_of(&["poisson", "azimuthal", "none"])?;
            }
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
    fn overrides_replace_values() {
        let mut p = Params::parse("NrPixels 10\nImTransOpt 1\nRMax 50\n", "p.txt").unwrap();
        p.apply_overrides(&["RMax 80".into(), "ImTransOpt 2".into()])
            .unwrap();
        assert_eq!(p.r_max_px, 80.0);
        assert_eq!(p.im_trans_opt, vec![2]);
    }
}
