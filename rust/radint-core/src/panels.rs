//! Multi-panel detectors (spec §2.5): panel layout, per-panel shifts, per-pixel offsets.

use crate::error::{Error, Location, Result};
use crate::geometry::PanelOffset;
use crate::params::Params;

#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub y_min: i64,
    pub y_max: i64,
    pub z_min: i64,
    pub z_max: i64,
    pub d_y: f64,
    pub d_z: f64,
    pub d_theta_deg: f64,
    pub d_lsd_um: f64,
    pub d_p2: f64,
}

impl Panel {
    fn contains(&self, y: i64, z: i64) -> bool {
        y >= self.y_min && y <= self.y_max && z >= self.z_min && z <= self.z_max
    }

    /// Offsets (dY, dZ) of a transformed-frame pixel and the panel's geometry offsets. The
    /// rotation dθ turns the panel on the detector: rows `aspect` (pxZ / pxY) times as high as
    /// columns are wide are rotated in those units, not as a shear of pixel indices.
    fn correct(&self, y: i64, z: i64, aspect: f64) -> (f64, f64, PanelOffset) {
        let cy = 0.5 * (self.y_min + self.y_max) as f64;
        let cz = 0.5 * (self.z_min + self.z_max) as f64;
        let (s, c) = self.d_theta_deg.to_radians().sin_cos();
        let (ry, rz) = (y as f64 - cy, z as f64 - cz);
        let y_corr = cy + c * ry - s * rz * aspect + self.d_y;
        let z_corr = cz + s * ry / aspect + c * rz + self.d_z;
        (
            y_corr - y as f64,
            z_corr - z as f64,
            PanelOffset {
                d_lsd_um: self.d_lsd_um,
                d_p2: self.d_p2,
            },
        )
    }
}

/// Panel boxes in Y-major order (id = iy·NPanelsZ + iz), shifts all zero.
pub fn layout(p: &Params) -> Vec<Panel> {
    let starts = |n: usize, size: usize, gaps: &[i64]| -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut pos = 0i64;
        for i in 0..n {
            out.push(pos);
            pos += size as i64 + gaps.get(i).copied().unwrap_or(0);
        }
        out
    };
    let ys = starts(p.n_panels_y, p.panel_size_y, &p.panel_gaps_y);
    let zs = starts(p.n_panels_z, p.panel_size_z, &p.panel_gaps_z);
    let mut panels = Vec::with_capacity(ys.len() * zs.len());
    for &y0 in &ys {
        for &z0 in &zs {
            panels.push(Panel {
                y_min: y0,
                y_max: y0 + p.panel_size_y as i64 - 1,
                z_min: z0,
                z_max: z0 + p.panel_size_z as i64 - 1,
                d_y: 0.0,
                d_z: 0.0,
                d_theta_deg: 0.0,
                d_lsd_um: 0.0,
                d_p2: 0.0,
            });
        }
    }
    panels
}

/// Apply a panel-shifts file: lines `id dY dZ [dTheta dLsd dP2]`, `#` comments. As MIDAS's
/// `LoadPanelShifts`, a line sets only the columns it has: a later, shorter line for the same
/// panel keeps the earlier dTheta / dLsd / dP2.
pub fn apply_shifts(panels: &mut [Panel], text: &str, source: &str) -> Result<()> {
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let location = Location {
            file: source.to_string(),
            line: index + 1,
        };
        let err = |message: String| Error::Parameter {
            location: location.clone(),
            key: "PanelShiftsFile".into(),
            message,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return Err(err(format!(
                "expected 'id dY dZ [dTheta dLsd dP2]', got '{line}'"
            )));
        }
        let id: usize = fields[0]
            .parse()
            .map_err(|_| err(format!("expected a panel id, got '{}'", fields[0])))?;
        let values = fields[1..]
            .iter()
            .take(5)
            .map(|text| {
                text.parse::<f64>()
                    .map_err(|_| err(format!("expected a number, got '{text}'")))
            })
            .collect::<Result<Vec<f64>>>()?;
        let n = panels.len();
        if n == 0 {
            return Err(err(
                "a panel-shifts file but no panels: give NPanelsY, NPanelsZ, PanelSizeY and \
                 PanelSizeZ (DetectorMapper ignores the file without them)"
                    .into(),
            ));
        }
        let panel = panels
            .get_mut(id)
            .ok_or_else(|| err(format!("panel id must be < {n}, got {id}")))?;
        let slots = [
            &mut panel.d_y,
            &mut panel.d_z,
            &mut panel.d_theta_deg,
            &mut panel.d_lsd_um,
            &mut panel.d_p2,
        ];
        for (slot, value) in slots.into_iter().zip(values) {
            *slot = value;
        }
    }
    Ok(())
}

/// (dY, dZ, offsets) of a transformed pixel: the first panel whose box holds it; gaps get none.
/// `aspect`: pxZ / pxY (1 for square pixels).
pub fn pixel_offset(panels: &[Panel], y: usize, z: usize, aspect: f64) -> (f64, f64, PanelOffset) {
    let (y, z) = (y as i64, z as i64);
    panels
        .iter()
        .find(|p| p.contains(y, z))
        .map(|p| p.correct(y, z, aspect))
        .unwrap_or((0.0, 0.0, PanelOffset::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel() -> Panel {
        Panel {
            y_min: 0,
            y_max: 9,
            z_min: 0,
            z_max: 9,
            d_y: 0.0,
            d_z: 0.0,
            d_theta_deg: 0.0,
            d_lsd_um: 0.0,
            d_p2: 0.0,
        }
    }

    #[test]
    fn a_shorter_later_line_keeps_the_earlier_columns_as_midas_does() {
        let mut panels = vec![panel(), panel()];
        apply_shifts(&mut panels, "0 0.3 0.2 1.5 400 0.001\n0 0.5 0.4\n", "s.txt").unwrap();
        let p = &panels[0];
        assert_eq!((p.d_y, p.d_z), (0.5, 0.4));
        assert_eq!((p.d_theta_deg, p.d_lsd_um, p.d_p2), (1.5, 400.0, 0.001));
        assert_eq!(panels[1], panel());
    }

    #[test]
    fn a_panel_turns_on_the_detector_whatever_its_pixels_aspect() {
        // 90° about the panel's centre (4.5, 4.5); rows twice as high as columns are wide.
        let p = Panel {
            d_theta_deg: 90.0,
            ..panel()
        };
        let turned = |y: i64, z: i64, aspect: f64| {
            let (dy, dz, _) =
                pixel_offset(std::slice::from_ref(&p), y as usize, z as usize, aspect);
            (y as f64 + dy, z as f64 + dz)
        };
        let close =
            |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).abs() < 1e-12 && (a.1 - b.1).abs() < 1e-12;
        // (4, 5) lies (−0.5, +1.0) column widths from the centre on the detector; turned by 90°
        // that is (−1.0, −0.5): column 3.5, row 4.5 − 0.5 / 2. Square pixels: (4.0, 4.0).
        assert!(
            close(turned(4, 5, 2.0), (3.5, 4.25)),
            "{:?}",
            turned(4, 5, 2.0)
        );
        assert!(
            close(turned(6, 4, 2.0), (5.5, 5.25)),
            "{:?}",
            turned(6, 4, 2.0)
        );
        assert!(
            close(turned(4, 5, 1.0), (4.0, 4.0)),
            "{:?}",
            turned(4, 5, 1.0)
        );
        // A rigid turn: the distance between two pixels on the detector is kept.
        let on_detector = |(y, z): (f64, f64)| (y, 2.0 * z);
        let dist = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).hypot(a.1 - b.1);
        let (a, b) = (on_detector((4.0, 5.0)), on_detector((6.0, 4.0)));
        let (ta, tb) = (
            on_detector(turned(4, 5, 2.0)),
            on_detector(turned(6, 4, 2.0)),
        );
        assert!((dist(a, b) - dist(ta, tb)).abs() < 1e-12);
    }

    #[test]
    fn shifts_without_panels_name_the_missing_layout() {
        let err = apply_shifts(&mut [], "0 0.3 0.2\n", "s.txt").unwrap_err();
        assert!(err.to_string().contains("give NPanelsY, NPanelsZ"), "{err}");
    }
}
