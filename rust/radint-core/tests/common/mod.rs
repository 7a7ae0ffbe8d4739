//! Helpers shared by the kernel tests: a seeded generator, a CSR map, and the scalar sums the
//! SIMD kernels are compared with.

use radint_core::integrate::Pixel;

pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

pub struct Csr {
    pub indptr: Vec<u64>,
    pub pixel: Vec<u32>,
    pub area: Vec<f32>,
}

/// Per bin `lo..hi`: `Σ area·v` and `Σ area²·max(v, 1)` in entry order.
pub fn reference<T: Pixel>(csr: &Csr, frame: &[T], lo: usize, hi: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut s, mut v) = (Vec::new(), Vec::new());
    for b in lo..hi {
        let (mut sb, mut vb) = (0.0, 0.0);
        for e in csr.indptr[b] as usize..csr.indptr[b + 1] as usize {
            let x = frame[csr.pixel[e] as usize].to_f64();
            let w = csr.area[e] as f64;
            sb += w * x;
            vb += w * w * x.max(1.0);
        }
        s.push(sb);
        v.push(vb);
    }
    (s, v)
}

/// Every value within 1e-12 relative (absolute below 1) of the reference.
pub fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
    for (b, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-12 * w.abs().max(1.0);
        assert!((g - w).abs() <= tol, "{what}: bin {b}: got {g}, want {w}");
    }
}
