//! Detector geometry (spec §2): transformed-frame pixel (Y, Z) → (R px, η deg), MIDAS conventions.
//!
//! η = 0 along +Z (increasing row), +90 along +Y (increasing column), range (−180, 180].

use crate::params::Params;

pub type Matrix3 = [[f64; 3]; 3];

/// `TRs = Rx(tx) · Ry(ty) · Rz(tz)` (degrees), column-vector convention (spec §2.3).
pub fn tilt_matrix(tx_deg: f64, ty_deg: f64, tz_deg: f64) -> Matrix3 {
    let (sx, cx) = tx_deg.to_radians().sin_cos();
    let (sy, cy) = ty_deg.to_radians().sin_cos();
    let (sz, cz) = tz_deg.to_radians().sin_cos();
    let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
    matmul(&rx, &matmul(&ry, &rz))
}

fn matmul(a: &Matrix3, b: &Matrix3) -> Matrix3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// Per-pixel geometry offsets from a detector panel (spec §2.5).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PanelOffset {
    pub d_lsd_um: f64,
    pub d_p2: f64,
}

/// A residual ΔR map (px) in the transformed frame, sampled bilinearly (spec §2.2 step 9).
#[derive(Debug, Clone)]
pub struct ResidualMap {
    pub n_y: usize,
    pub n_z: usize,
    pub delta_r_px: Vec<f64>,
}

impl ResidualMap {
    fn sample(&self, y: f64, z: f64) -> f64 {
        let y = y.clamp(0.0, self.n_y as f64 - 1.001);
        let z = z.clamp(0.0, self.n_z as f64 - 1.001);
        let (iy, iz) = (y.floor() as usize, z.floor() as usize);
        let (fy, fz) = (y - iy as f64, z - iz as f64);
        let at = |zz: usize, yy: usize| self.delta_r_px[zz * self.n_y + yy];
        let iy1 = (iy + 1).min(self.n_y - 1);
        let iz1 = (iz + 1).min(self.n_z - 1);
        at(iz, iy) * (1.0 - fy) * (1.0 - fz)
            + at(iz, iy1) * fy * (1.0 - fz)
            + at(iz1, iy) * (1.0 - fy) * fz
            + at(iz1, iy1) * fy * fz
    }
}

/// Everything the forward transform needs, precomputed.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub lsd_um: f64,
    pub bc_y_px: f64,
    pub bc_z_px: f64,
    /// pxY: the pixel's width along Y, and the unit of R ("px").
    pub pixel_size_um: f64,
    /// The pixel's height along Z: pxY unless `PixelShape rectangular` (MIDAS has one size).
    pub pixel_size_z_um: f64,
    pub tilt: Matrix3,
    pub rho_d_um: f64,
    pub p: [f64; 15],
    pub parallax_um: f64,
    pub residual: Option<ResidualMap>,
    /// Whether the distortion polynomial has any non-zero term (skips it when not).
    has_distortion: bool,
    /// (cos, sin) of every p_k used as a phase (degrees), indexed by k.
    phases: [(f64, f64); 15],
}

/// Result of the forward transform of one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub r_px: f64,
    pub eta_deg: f64,
    /// Distance in the detector plane before distortion (µm), for reference and tests.
    pub rad_um: f64,
    pub distortion_factor: f64,
}

impl Geometry {
    pub fn new(params: &Params) -> Geometry {
        let p = params.distortion;
        let has_distortion = [0usize, 1, 2, 4, 5, 7, 9, 11, 13]
            .iter()
            .any(|&i| p[i] != 0.0);
        Geometry {
            lsd_um: params.lsd_um,
            bc_y_px: params.bc_y_px,
            bc_z_px: params.bc_z_px,
            // The MIDAS C geometry uses pxY for both axes (spec §10.2 item 11); pyFAI's
            // rectangular pixels (PixelShape rectangular) take pxZ along Z.
            pixel_size_um: params.pixel_size_y_um,
            pixel_size_z_um: if params.rectangular_pixels() {
                params.pixel_size_z_um
            } else {
                params.pixel_size_y_um
            },
            tilt: tilt_matrix(params.tx_deg, params.ty_deg, params.tz_deg),
            rho_d_um: params.rho_d_um,
            p,
            parallax_um: params.parallax_um,
            residual: None,
            has_distortion,
            phases: std::array::from_fn(|k| {
                let (s, c) = p[k].to_radians().sin_cos();
                (c, s)
            }),
        }
    }

    /// Forward transform of a transformed-frame point (spec §2.2).
    #[inline]
    pub fn point(&self, y: f64, z: f64, panel: PanelOffset) -> Point {
        let (r_px, cos_eta, sin_eta, rad_um, d) = self.polar(y, z, panel);
        Point {
            r_px,
            eta_deg: sin_eta.atan2(cos_eta).to_degrees(),
            rad_um,
            distortion_factor: d,
        }
    }

    /// R (px), cos η, sin η, Rad (µm) and D of a point, without any inverse trigonometry:
    /// η's direction comes straight from the rotated vector, and the distortion harmonics
    /// cos(kη_T + φ) from powers of e^{iη_T} (η_T = 90° − η).
    #[inline]
    pub fn polar(&self, y: f64, z: f64, panel: PanelOffset) -> (f64, f64, f64, f64, f64) {
        let l = self.lsd_um + panel.d_lsd_um;
        let yc = (self.bc_y_px - y) * self.pixel_size_um;
        let zc = (z - self.bc_z_px) * self.pixel_size_z_um;
        let t = &self.tilt;
        let a = t[0][1] * yc + t[0][2] * zc;
        let b = t[1][1] * yc + t[1][2] * zc;
        let c = t[2][1] * yc + t[2][2] * zc;
        let x = l + a;
        let rho = (b * b + c * c).sqrt();
        let rad = (l / x) * rho;
        // η = atan2(−b, c); on the axis itself MIDAS gets atan2(−0, 0) = 0.
        let (cos_eta, sin_eta) = if rho > 0.0 {
            (c / rho, -b / rho)
        } else {
            (1.0, 0.0)
        };
        let d = if self.has_distortion || panel.d_p2 != 0.0 {
            self.distortion_factor(rad, cos_eta, sin_eta, panel.d_p2)
        } else {
            1.0
        };
        let mut r_px = rad * d / self.pixel_size_um * (self.lsd_um / l);
        if self.parallax_um != 0.0 {
            r_px += self.parallax_um * (rad / l).atan().sin() / self.pixel_size_um;
        }
        if let Some(residual) = &self.residual {
            r_px += residual.sample(y, z);
        }
        (r_px, cos_eta, sin_eta, rad, d)
    }

    /// Radial distortion factor D (spec §2.4); phases in degrees; RhoD ≤ 0 means no distortion.
    fn distortion_factor(&self, rad_um: f64, cos_eta: f64, sin_eta: f64, d_p2: f64) -> f64 {
        let p = &self.p;
        let rho = if self.rho_d_um > 0.0 {
            rad_um / self.rho_d_um
        } else {
            0.0
        };
        // e^{iη_T} with η_T = 90° − η: cos η_T = sin η, sin η_T = cos η.
        let w1 = (sin_eta, cos_eta);
        let mul = |a: (f64, f64), b: (f64, f64)| (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0);
        let w2 = mul(w1, w1);
        let w3 = mul(w2, w1);
        let w4 = mul(w2, w2);
        let w5 = mul(w4, w1);
        let w6 = mul(w3, w3);
        let ph = &self.phases;
        // cos(kη_T + φ) = Re(w^k · e^{iφ})
        let harmonic = |w: (f64, f64), k: usize| w.0 * ph[k].0 - w.1 * ph[k].1;
        let rho2 = rho * rho;
        let rho3 = rho2 * rho;
        let rho4 = rho2 * rho2;
        let rho5 = rho4 * rho;
        let rho6 = rho3 * rho3;
        1.0 + p[0] * rho2 * harmonic(w2, 6)
            + p[1] * rho4 * harmonic(w4, 3)
            + (p[2] + d_p2) * rho2
            + p[4] * rho6
            + p[5] * rho4
            + p[7] * rho4 * harmonic(w1, 8)
            + p[9] * rho3 * harmonic(w3, 10)
            + p[11] * rho5 * harmonic(w5, 12)
            + p[13] * rho6 * harmonic(w6, 14)
    }

    /// Where the distortion folds the detector over, if it does: the first (R px, η deg) of a
    /// grid over the detector at which the corrected radius Rad·D stops growing with Rad along
    /// the ray from the beam centre (or D ≤ 0). There pixels land on radii nearer the centre
    /// than their inner neighbours': the calibration means nothing (MIDAS's map neither).
    /// None without distortion or when it is monotonic everywhere on the detector. Panels'
    /// dP2, residual and distortion-file maps are not included (the global polynomial only).
    pub fn distortion_fold(&self, n_y: usize, n_z: usize) -> Option<(f64, f64)> {
        if !self.has_distortion || self.rho_d_um <= 0.0 {
            return None;
        }
        const GRID: usize = 128;
        for i in 0..=GRID {
            for j in 0..=GRID {
                let y = -0.5 + n_y as f64 * i as f64 / GRID as f64;
                let z = -0.5 + n_z as f64 * j as f64 / GRID as f64;
                let (_, cos_eta, sin_eta, rad, d) = self.polar(y, z, PanelOffset::default());
                let step = 1e-4 * rad + 1e-6;
                let outer =
                    (rad + step) * self.distortion_factor(rad + step, cos_eta, sin_eta, 0.0);
                if d <= 0.0 || outer <= rad * d {
                    let eta = sin_eta.atan2(cos_eta).to_degrees();
                    return Some(((rad * d).max(0.0) / self.pixel_size_um, eta));
                }
            }
        }
        None
    }

    /// Area of a pixel in px² (pxY²) of the detector plane: pxZ / pxY.
    pub fn pixel_aspect(&self) -> f64 {
        self.pixel_size_z_um / self.pixel_size_um
    }

    /// 2θ (radians) of a radius in pixels: `atan(R·px/Lsd)` with the global Lsd (spec §2.2).
    pub fn two_theta_rad(&self, r_px: f64) -> f64 {
        (r_px * self.pixel_size_um / self.lsd_um).atan()
    }

    /// Exact solid angle of a pixel at a transformed-frame point relative to a pixel at normal
    /// incidence on the main detector plane: `d0²·(n̂·r)/|r|³`, r the point's lab position on its
    /// panel's plane (Lsd + dLsd along the beam), n̂ = TRs·x̂, d0 = Lsd·TRs₀₀. Without a panel
    /// offset this is cos³ of the incidence angle.
    pub fn relative_solid_angle(&self, y: f64, z: f64, panel: PanelOffset) -> f64 {
        let l = self.lsd_um + panel.d_lsd_um;
        let yc = (self.bc_y_px - y) * self.pixel_size_um;
        let zc = (z - self.bc_z_px) * self.pixel_size_z_um;
        let t = &self.tilt;
        let x = l + t[0][1] * yc + t[0][2] * zc;
        let b = t[1][1] * yc + t[1][2] * zc;
        let c = t[2][1] * yc + t[2][2] * zc;
        // TRs is orthonormal, so n̂·(TRs·(0,Yc,Zc)) = 0 and n̂·r = l·TRs₀₀.
        let d0 = self.lsd_um * t[0][0];
        let r = (x * x + b * b + c * c).sqrt();
        d0 * d0 * (l * t[0][0]) / (r * r * r)
    }
}

/// ImTransOpt (spec §2.7): maps between the transformed frame (where the geometry lives) and the
/// raw image (what the detector writes and what maps index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTransform {
    pub ops: Vec<i32>,
    pub n_y: usize,
    pub n_z: usize,
}

impl ImageTransform {
    pub fn new(ops: &[i32], n_y: usize, n_z: usize) -> ImageTransform {
        ImageTransform {
            ops: ops.iter().copied().filter(|&op| op != 0).collect(),
            n_y,
            n_z,
        }
    }

    fn apply_op(&self, op: i32, y: usize, z: usize) -> (usize, usize) {
        match op {
            1 => (self.n_y - 1 - y, z),
            2 => (y, self.n_z - 1 - z),
            3 => (z, y),
            _ => (y, z),
        }
    }

    /// Raw pixel holding transformed pixel (y, z): the ops undone in reverse order.
    #[inline]
    pub fn raw_of_transformed(&self, y: usize, z: usize) -> (usize, usize) {
        self.ops
            .iter()
            .rev()
            .fold((y, z), |(y, z), &op| self.apply_op(op, y, z))
    }

    /// Transformed pixel of raw pixel (y, z): the ops in list order.
    #[inline]
    pub fn transformed_of_raw(&self, y: usize, z: usize) -> (usize, usize) {
        self.ops
            .iter()
            .fold((y, z), |(y, z), &op| self.apply_op(op, y, z))
    }

    /// Re-order a raw-orientation image (row-major z·NY + y) into the transformed frame.
    pub fn to_transformed<T: Copy>(&self, raw: &[T]) -> Vec<T> {
        let mut out = Vec::with_capacity(raw.len());
        for z in 0..self.n_z {
            for y in 0..self.n_y {
                let (ry, rz) = self.raw_of_transformed(y, z);
                out.push(raw[rz * self.n_y + ry]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Params {
        let mut p = Params {
            lsd_um: 657436.895687981043,
            bc_y_px: 685.485459654125,
            bc_z_px: 921.034377043941,
            ty_deg: 0.200888234849,
            tz_deg: 0.446902376310,
            pixel_size_y_um: 172.0,
            pixel_size_z_um: 172.0,
            rho_d_um: 219964.42411013643,
            wavelength_angstrom: 0.172973,
            ..Params::default()
        };
        p.distortion[..5].copy_from_slice(&[
            0.000230535992,
            0.000172564332,
            -0.000542224078,
            -13.773706892191,
            0.001909017437,
        ]);
        p
    }

    #[test]
    fn rectangular_pixels_take_pxz_along_z_only_when_said() {
        let mut p = Params {
            lsd_um: 1e6,
            bc_y_px: 10.0,
            bc_z_px: 20.0,
            pixel_size_y_um: 100.0,
            pixel_size_z_um: 40.0,
            ..Params::default()
        };
        let up = |g: &Geometry| g.point(10.0, 30.0, PanelOffset::default());
        let side = |g: &Geometry| g.point(0.0, 20.0, PanelOffset::default());
        let square = Geometry::new(&p);
        assert!((up(&square).r_px - 10.0).abs() < 1e-12 && square.pixel_aspect() == 1.0);
        p.pixel_shape = "rectangular".into();
        let rect = Geometry::new(&p);
        // Ten rows of 40 µm: 400 µm, 4 px of pxY; columns keep pxY; η as before.
        assert!((up(&rect).r_px - 4.0).abs() < 1e-12, "{:?}", up(&rect));
        assert!((up(&rect).eta_deg - up(&square).eta_deg).abs() < 1e-12);
        assert!((side(&rect).r_px - 10.0).abs() < 1e-12);
        assert!((rect.pixel_aspect() - 0.4).abs() < 1e-15);
    }

    #[test]
    fn a_distortion_that_folds_the_detector_over_is_found() {
        let p = example();
        assert_eq!(Geometry::new(&p).distortion_fold(1475, 1679), None);
        // RhoD far inside the detector with a strong negative p2: Rad·D turns back.
        let mut folded = Params {
            lsd_um: 1e6,
            bc_y_px: 20.3,
            bc_z_px: 20.2,
            pixel_size_y_um: 100.0,
            pixel_size_z_um: 100.0,
            rho_d_um: 1500.0,
            ..Params::default()
        };
        folded.distortion[2] = -1.0;
        let (r_px, _) = Geometry::new(&folded).distortion_fold(41, 41).unwrap();
        assert!(r_px < 10.0, "{r_px}");
    }

    #[test]
    fn tilt_matrix_matches_spec() {
        let p = example();
        let t = tilt_matrix(p.tx_deg, p.ty_deg, p.tz_deg);
        let want = [
            [0.99996343440, -0.0077997908700, 0.0035061539430],
            [0.0077998388123, 0.99996958079, 0.0],
            [-0.0035060472886, 0.000027347435607, 0.99999385342],
        ];
        for i in 0..3 {
            for j in 0..3 {
                assert!((t[i][j] - want[i][j]).abs() < 1e-10, "{i}{j}");
            }
        }
    }

    #[test]
    fn worked_example_of_spec_2_9() {
        let p = example();
        let g = Geometry::new(&p);
        // (Y, Z, Rad µm, D, R px, η deg, 2θ deg, Q)
        let rows = [
            (
                1000.0,
                921.034377,
                54060.1597,
                0.9999822056,
                314.297661,
                90.001567,
                4.700696,
                2.979335,
            ),
            (
                685.485460,
                1300.0,
                65159.0359,
                0.9999347711,
                378.806893,
                -0.0,
                5.659774,
                3.586752,
            ),
            (
                100.0,
                200.0,
                160047.3382,
                0.9999235042,
                930.436600,
                -140.923194,
                13.681017,
                8.652968,
            ),
            (
                1400.0,
                1600.0,
                169175.9465,
                1.0000244585,
                983.605141,
                46.461478,
                14.430981,
                9.124860,
            ),
        ];
        for (y, z, rad, d, r, eta, tth, q) in rows {
            let pt = g.point(y, z, PanelOffset::default());
            assert!((pt.rad_um - rad).abs() < 1e-4, "rad {} vs {rad}", pt.rad_um);
            assert!(
                (pt.distortion_factor - d).abs() < 1e-10,
                "D {}",
                pt.distortion_factor
            );
            assert!((pt.r_px - r).abs() < 1e-6, "R {} vs {r}", pt.r_px);
            assert!(
                (pt.eta_deg - eta).abs() < 1e-6,
                "eta {} vs {eta}",
                pt.eta_deg
            );
            let two_theta = g.two_theta_rad(pt.r_px);
            assert!((two_theta.to_degrees() - tth).abs() < 1e-6);
            let qq = 4.0 * std::f64::consts::PI / p.wavelength_angstrom * (two_theta / 2.0).sin();
            assert!((qq - q).abs() < 1e-6, "Q {qq} vs {q}");
        }
    }

    #[test]
    fn flat_eta_convention() {
        let p = Params {
            bc_y_px: 0.0,
            bc_z_px: 0.0,
            pixel_size_y_um: 100.0,
            ..Params::default()
        };
        let g = Geometry::new(&p);
        let o = PanelOffset::default();
        assert!((g.point(100.0, 0.0, o).eta_deg - 90.0).abs() < 1e-12);
        assert!(g.point(0.0, 100.0, o).eta_deg.abs() < 1e-12);
        assert!((g.point(-100.0, 0.0, o).eta_deg + 90.0).abs() < 1e-12);
        assert!((g.point(0.0, -100.0, o).eta_deg.abs() - 180.0).abs() < 1e-12);
    }

    #[test]
    fn transforms_round_trip() {
        for ops in [vec![1], vec![2], vec![1, 2], vec![3, 1], vec![2, 3, 1]] {
            let t = ImageTransform::new(&ops, 5, 5);
            for z in 0..5 {
                for y in 0..5 {
                    let (ry, rz) = t.raw_of_transformed(y, z);
                    assert_eq!(t.transformed_of_raw(ry, rz), (y, z));
                }
            }
        }
    }
}
