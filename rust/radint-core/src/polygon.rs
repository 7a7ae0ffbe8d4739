//! Exact areas of a polygon intersected with an annular sector.
//!
//! Points are in the "corrected plane" as (u, v) = (R cos η, R sin η) in pixels, so η is the ordinary
//! polar angle. The sector [R_lo, R_hi) × [η_lo, η_hi) is handled as: clip the polygon by the wedge
//! (two half-planes; a wedge wider than 180° as the full polygon minus its complement wedge), then
//! area(clipped ∩ disk(R_hi)) − area(clipped ∩ disk(R_lo)), each disk area summed exactly over
//! edges as triangle(origin, edge) ∩ disk. No arc/chord approximation anywhere.

pub type Pt = [f64; 2];

/// A polygon with at most `MAX_VERTS` vertices, stored inline (no allocation per pixel).
pub const MAX_VERTS: usize = 16;

#[derive(Clone, Copy)]
pub struct Poly {
    pub n: usize,
    pub v: [Pt; MAX_VERTS],
}

impl Poly {
    pub fn from_slice(points: &[Pt]) -> Poly {
        let mut p = Poly {
            n: points.len(),
            v: [[0.0; 2]; MAX_VERTS],
        };
        p.v[..points.len()].copy_from_slice(points);
        p
    }

    pub fn points(&self) -> &[Pt] {
        &self.v[..self.n]
    }

    fn push(&mut self, p: Pt) {
        if self.n < MAX_VERTS {
            self.v[self.n] = p;
            self.n += 1;
        }
    }

    /// Signed shoelace area (positive when counter-clockwise).
    pub fn signed_area(&self) -> f64 {
        let pts = self.points();
        let mut s = 0.0;
        for i in 0..pts.len() {
            let a = pts[i];
            let b = pts[(i + 1) % pts.len()];
            s += a[0] * b[1] - a[1] * b[0];
        }
        0.5 * s
    }

    pub fn make_ccw(&mut self) {
        if self.signed_area() < 0.0 {
            self.v[..self.n].reverse();
        }
    }

    /// Whether the origin lies inside (or on the border of) a counter-clockwise convex polygon.
    pub fn contains_origin(&self) -> bool {
        let pts = self.points();
        (0..pts.len()).all(|i| {
            let a = pts[i];
            let b = pts[(i + 1) % pts.len()];
            // cross(b - a, O - a) >= 0
            (b[0] - a[0]) * (-a[1]) - (b[1] - a[1]) * (-a[0]) >= 0.0
        })
    }

    /// Smallest distance from the origin to the polygon's boundary.
    pub fn min_radius(&self) -> f64 {
        let pts = self.points();
        let mut best = f64::INFINITY;
        for i in 0..pts.len() {
            let a = pts[i];
            let b = pts[(i + 1) % pts.len()];
            let d = [b[0] - a[0], b[1] - a[1]];
            let len2 = d[0] * d[0] + d[1] * d[1];
            let t = if len2 > 0.0 {
                (-(a[0] * d[0] + a[1] * d[1]) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let q = [a[0] + t * d[0], a[1] + t * d[1]];
            best = best.min((q[0] * q[0] + q[1] * q[1]).sqrt());
        }
        best
    }

    pub fn max_radius(&self) -> f64 {
        self.points()
            .iter()
            .map(|p| (p[0] * p[0] + p[1] * p[1]).sqrt())
            .fold(0.0, f64::max)
    }

    /// Keep the part on the left of the ray direction `dir` through the origin
    /// (`cross(dir, p) * side >= 0`); Sutherland–Hodgman for one half-plane.
    fn clip_half_plane(&self, dir: Pt, side: f64) -> Poly {
        let mut out = Poly {
            n: 0,
            v: [[0.0; 2]; MAX_VERTS],
        };
        let pts = self.points();
        if pts.is_empty() {
            return out;
        }
        let f = |p: &Pt| side * (dir[0] * p[1] - dir[1] * p[0]);
        for i in 0..pts.len() {
            let cur = pts[i];
            let next = pts[(i + 1) % pts.len()];
            let (fc, fn_) = (f(&cur), f(&next));
            if fc >= 0.0 {
                out.push(cur);
            }
            if (fc >= 0.0) != (fn_ >= 0.0) {
                let t = fc / (fc - fn_);
                out.push([
                    cur[0] + t * (next[0] - cur[0]),
                    cur[1] + t * (next[1] - cur[1]),
                ]);
            }
        }
        out
    }

    /// The part of the polygon inside the wedge counter-clockwise from direction `lo` to `hi`
    /// (unit vectors (cos, sin); the wedge must span at most π).
    pub fn clip_wedge(&self, lo: Pt, hi: Pt) -> Poly {
        self.clip_half_plane(lo, 1.0).clip_half_plane(hi, -1.0)
    }

    /// Exact area of this (counter-clockwise) polygon ∩ disk of radius `r` about the origin.
    ///
    /// `origin_outside` promises the origin is not inside the polygon: then the arcs' angles sum
    /// to less than π in magnitude and are obtained with one `atan2` of their complex product
    /// instead of one per arc.
    pub fn disk_area(&self, r: f64, origin_outside: bool) -> f64 {
        let pts = self.points();
        let r2 = r * r;
        let mut arcs = Arcs {
            product: [1.0, 0.0],
            angle: 0.0,
            combine: origin_outside,
        };
        let mut total = 0.0;
        for i in 0..pts.len() {
            total += triangle_disk_area(pts[i], pts[(i + 1) % pts.len()], r2, &mut arcs);
        }
        let angle = if origin_outside {
            arcs.product[1].atan2(arcs.product[0])
        } else {
            arcs.angle
        };
        total + 0.5 * r2 * angle
    }
}

/// Arc angles outside the circle, summed either directly or as a complex product.
struct Arcs {
    product: [f64; 2],
    angle: f64,
    combine: bool,
}

impl Arcs {
    #[inline]
    fn add(&mut self, p: Pt, q: Pt) {
        // conj(p)·q has argument angle(p → q).
        let z = [p[0] * q[0] + p[1] * q[1], p[0] * q[1] - p[1] * q[0]];
        if self.combine {
            let (a, b) = (self.product, z);
            let re = a[0] * b[0] - a[1] * b[1];
            let im = a[0] * b[1] + a[1] * b[0];
            // Keep the product near unit size whatever the radius (no overflow over many arcs).
            let norm = re.abs().max(im.abs());
            self.product = if norm > 0.0 {
                [re / norm, im / norm]
            } else {
                [re, im]
            };
        } else {
            self.angle += z[1].atan2(z[0]);
        }
    }
}

/// Signed area of triangle (origin, a, b) ∩ disk(r) without its arcs: straight pieces inside the
/// circle contribute triangles, pieces outside are handed to `arcs` (their sector area is
/// ½ r² · angle).
#[inline]
fn triangle_disk_area(a: Pt, b: Pt, r2: f64, arcs: &mut Arcs) -> f64 {
    let d = [b[0] - a[0], b[1] - a[1]];
    let qa = d[0] * d[0] + d[1] * d[1];
    if qa == 0.0 {
        return 0.0;
    }
    let a2 = a[0] * a[0] + a[1] * a[1];
    let b2 = b[0] * b[0] + b[1] * b[1];
    if a2 <= r2 && b2 <= r2 {
        return 0.5 * (a[0] * b[1] - a[1] * b[0]);
    }
    let qb = 2.0 * (a[0] * d[0] + a[1] * d[1]);
    let qc = a2 - r2;
    let disc = qb * qb - 4.0 * qa * qc;
    let mut cuts = [0.0f64, 1.0, 1.0, 1.0];
    let mut n_cuts = 1;
    // The line is inside the circle exactly between its roots; a piece is classified by where its
    // mid-parameter falls against those same roots, never by re-measuring its midpoint (at tangency
    // the midpoint's radius rounds either way, turning a whole arc into a chord).
    let mut inside = (f64::INFINITY, f64::NEG_INFINITY);
    if disc > 0.0 {
        let sq = disc.sqrt();
        // Numerically stable roots (q ≠ 0 because disc > 0).
        let q = -0.5 * (qb + qb.signum() * sq);
        let (t1, t2) = {
            let (x, y) = (q / qa, qc / q);
            if x <= y {
                (x, y)
            } else {
                (y, x)
            }
        };
        inside = (t1, t2);
        for t in [t1, t2] {
            if t > 0.0 && t < 1.0 {
                cuts[n_cuts] = t;
                n_cuts += 1;
            }
        }
    }
    cuts[n_cuts] = 1.0;
    let at = |t: f64| [a[0] + t * d[0], a[1] + t * d[1]];
    let mut area = 0.0;
    for k in 0..n_cuts {
        let (t0, t1) = (cuts[k], cuts[k + 1]);
        if t1 <= t0 {
            continue;
        }
        let p = at(t0);
        let q = at(t1);
        let mid = 0.5 * (t0 + t1);
        if mid > inside.0 && mid < inside.1 {
            area += 0.5 * (p[0] * q[1] - p[1] * q[0]);
        } else {
            arcs.add(p, q);
        }
    }
    area
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(cx: f64, cy: f64, h: f64) -> Poly {
        Poly::from_slice(&[
            [cx - h, cy - h],
            [cx + h, cy - h],
            [cx + h, cy + h],
            [cx - h, cy + h],
        ])
    }

    #[test]
    fn disk_areas() {
        let sq = square(0.0, 0.0, 1.0);
        assert!((sq.disk_area(10.0, false) - 4.0).abs() < 1e-14);
        assert!((sq.disk_area(0.5, false) - std::f64::consts::PI * 0.25).abs() < 1e-14);
        // Square [0,2]^2 ∩ unit disk = quarter disk.
        let q = square(1.0, 1.0, 1.0);
        assert!((q.disk_area(1.0, true) - std::f64::consts::PI / 4.0).abs() < 1e-14);
    }

    #[test]
    fn wedge_clip_quarter() {
        let sq = square(0.0, 0.0, 1.0);
        let w = sq.clip_wedge([1.0, 0.0], [0.0, 1.0]);
        assert!((w.signed_area() - 1.0).abs() < 1e-14);
        assert!((w.disk_area(0.5, false) - std::f64::consts::PI * 0.25 / 4.0).abs() < 1e-14);
    }

    #[test]
    fn circle_tangent_to_an_edge_meets_the_polygon_nowhere() {
        // A rotated wedge piece whose inner edge lies at distance 17 (up to rounding) from the
        // origin: the disk of radius 17 touches it at one point, so the overlap is zero, not the
        // sector-minus-triangle sliver (−6.4e-5) a chord would give.
        for k in 0..200 {
            let phi = 0.013 * k as f64;
            let (s, c) = phi.sin_cos();
            let rot = |x: f64, y: f64| [c * x - s * y, s * x + c * y];
            let half = 17.0 * (0.5f64).to_radians().tan();
            let outer = 18.0 * (0.5f64).to_radians().tan();
            let mut p = Poly::from_slice(&[
                rot(17.0, -half),
                rot(18.0, -outer),
                rot(18.0, outer),
                rot(17.0, half),
            ]);
            p.make_ccw();
            for combine in [false, true] {
                assert!(p.disk_area(17.0, combine).abs() < 1e-12, "phi {phi}");
            }
        }
    }
}
