//! Checks of a [`Params`] before mapping and integration; each error names the key, where it was
//! set, and the values it is about.

use super::{number_text, Params, RadialMode};
use crate::error::{Error, Result};

impl Params {
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
        if self.rectangular_pixels()
            && self.set_at.contains_key("PixelShape")
            && !self.set_at.contains_key("pxZ")
        {
            // Until PixelShape, pxZ was read and unused: its default (200) or a px line after it
            // would now set the rows' height without a word.
            return Err(self.invalid(
                "PixelShape",
                format!(
                    "rectangular needs the rows' height: no pxZ line sets it{} (pxZ is {} µm)",
                    if self.set_at.contains_key("px") {
                        ", or a later px set both sizes; give pxZ after px"
                    } else {
                        "; give pxZ"
                    },
                    crate::params::number_text(self.pixel_size_z_um)
                ),
            ));
        }
        let aspect = self.pixel_aspect();
        if !(1e-4..=1e4).contains(&aspect) {
            // A strip detector's pixels are ~160:1; past 10⁴:1 the sizes are mistyped (a unit).
            let key = if self.set_at.contains_key("pxZ") {
                "pxZ"
            } else {
                "PixelShape"
            };
            let width_key = if self.set_at.contains_key("pxY") {
                "pxY"
            } else {
                "px"
            };
            return Err(self.invalid(
                key,
                format!(
                    "pxZ / pxY = {} with PixelShape rectangular; expected 1e-4 to 1e4 ({})",
                    crate::params::number_text(aspect),
                    self.described(&[
                        (width_key, self.pixel_size_y_um),
                        ("pxZ", self.pixel_size_z_um)
                    ])
                ),
            ));
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
            (
                "PixelWeights",
                &self.pixel_weights,
                &["area", "fraction"][..],
            ),
            (
                "SolidAngleModel",
                &self.solid_angle_model,
                &["midas", "exact"],
            ),
            (
                "PolarizationModel",
                &self.polarization_model,
                &["midas", "kahn"],
            ),
            ("PixelShape", &self.pixel_shape, &["square", "rectangular"]),
            (
                "ErrorModel",
                &self.error_model,
                &["poisson", "azimuthal", "none"],
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
