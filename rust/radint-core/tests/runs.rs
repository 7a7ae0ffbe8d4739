//! The run-length map form and its AVX-512 kernels (one frame and a pair) against a plain scalar
//! sum, on random CSR maps made of runs of consecutive pixels of every length (longer than one
//! word holds, single pixels, repeats of the previous pixel), empty bins, and runs that end on
//! the frame's last pixel (where an unmasked 8-lane load would read past the frame).
// The run kernels exist on x86-64 only (elsewhere the scalar loop runs).
#![cfg(target_arch = "x86_64")]

mod common;

use common::{close, reference, Csr, Lcg};
use radint_core::integrate::Pixel;
use radint_core::runs::{self, PixelRuns, MAX_RUN};

fn random_runs_csr(rng: &mut Lcg, n_bins: usize, n_pixels: usize) -> Csr {
    let mut indptr = vec![0u64];
    let (mut pixel, mut area) = (Vec::new(), Vec::new());
    for b in 0..n_bins {
        let n_runs = if b % 9 == 0 { 0 } else { rng.next() % 12 };
        for _ in 0..n_runs {
            let len = 1 + (rng.next() % 19) as usize;
            let len = len.min(n_pixels);
            // One run in four ends on the frame's last pixel.
            let start = if rng.next().is_multiple_of(4) {
                n_pixels - len
            } else {
                (rng.next() % (n_pixels - len + 1) as u64) as usize
            };
            for p in start..start + len {
                pixel.push(p as u32);
                area.push((rng.next() % 1_000_000) as f32 / 1_000_000.0);
                // Now and then the same pixel twice in a row (a run must break there).
                if rng.next().is_multiple_of(23) {
                    pixel.push(p as u32);
                    area.push(0.25);
                }
            }
        }
        indptr.push(pixel.len() as u64);
    }
    Csr {
        indptr,
        pixel,
        area,
    }
}

#[test]
fn runs_cover_every_entry_in_order() {
    let mut rng = Lcg(3);
    for n_pixels in [1usize, 8, 9, 1000] {
        let csr = random_runs_csr(&mut rng, 200, n_pixels);
        let runs = PixelRuns::build(&csr.indptr, &csr.pixel, n_pixels).expect("valid map");
        assert_eq!(runs.n_bins(), 200);
        assert!(runs.n_runs() <= csr.pixel.len());
        // Entries in consecutive runs of at most MAX_RUN: at least ⌈entries / MAX_RUN⌉ runs.
        assert!(runs.n_runs() * MAX_RUN >= csr.pixel.len());
    }
    // A pixel past the image, an indptr out of order or past the entries: no run form.
    assert!(PixelRuns::build(&[0, 2], &[4, 10], 10).is_none());
    assert!(PixelRuns::build(&[0, 2, 1], &[0, 1], 10).is_none());
    assert!(PixelRuns::build(&[0, 3], &[0, 1], 10).is_none());
    assert!(PixelRuns::build(&[0, 1], &[0], (1 << 29) + 1).is_none());
}

/// Whether this CPU runs the run kernels for `T` (else the test says so and compares nothing).
fn runs_here<T: Pixel>() -> bool {
    let here = runs::available::<T>();
    if !here {
        eprintln!(
            "no AVX-512 run kernel for {:?} on this CPU: nothing to compare",
            T::GATHER
        );
    }
    here
}

fn check<T: Pixel>(make: impl Fn(u64) -> T) {
    if !runs_here::<T>() {
        return;
    }
    let mut rng = Lcg(11);
    // Odd frame lengths put the last pixel at every alignment relative to a vector load.
    for n_pixels in [1usize, 3, 17, 1000, 4097] {
        let frame: Vec<T> = (0..n_pixels).map(|_| make(rng.next())).collect();
        let other: Vec<T> = (0..n_pixels).map(|_| make(rng.next())).collect();
        let csr = random_runs_csr(&mut rng, 300, n_pixels);
        let runs = PixelRuns::build(&csr.indptr, &csr.pixel, n_pixels).expect("valid map");
        for (lo, hi) in [(0, 300), (13, 214), (299, 300), (40, 40)] {
            let (want_s, want_v) = reference(&csr, &frame, lo, hi);
            let (other_s, other_v) = reference(&csr, &other, lo, hi);
            let n = hi - lo;
            let mut s = vec![f64::NAN; n];
            let mut v = vec![f64::NAN; n];
            runs::dense_bins(&runs, &csr.area, &frame, lo, hi, &mut s, &mut v);
            close(&s, &want_s, "signal with variance");
            close(&v, &want_v, "variance");
            let mut s_only = vec![f64::NAN; n];
            runs::dense_bins(&runs, &csr.area, &frame, lo, hi, &mut s_only, &mut []);
            close(&s_only, &want_s, "signal only");
            let (mut sa, mut sb) = (vec![f64::NAN; n], vec![f64::NAN; n]);
            let (mut va, mut vb) = (vec![f64::NAN; n], vec![f64::NAN; n]);
            runs::dense_bins_pair(
                &runs,
                &csr.area,
                [&frame, &other],
                lo,
                hi,
                [&mut sa, &mut sb],
                [&mut va, &mut vb],
            );
            close(&sa, &want_s, "pair frame 0 signal");
            close(&va, &want_v, "pair frame 0 variance");
            close(&sb, &other_s, "pair frame 1 signal");
            close(&vb, &other_v, "pair frame 1 variance");
            runs::dense_bins_pair(
                &runs,
                &csr.area,
                [&other, &frame],
                lo,
                hi,
                [&mut sa, &mut sb],
                [&mut [], &mut []],
            );
            close(&sa, &other_s, "pair signal only, frame 0");
            close(&sb, &want_s, "pair signal only, frame 1");
        }
    }
}

#[test]
fn runs_u8_match_scalar() {
    check::<u8>(|r| r as u8);
}

#[test]
fn runs_u16_match_scalar() {
    check::<u16>(|r| r as u16);
}

#[test]
fn runs_u32_match_scalar() {
    check::<u32>(|r| (r as u32) ^ 0x8000_0000);
}

#[test]
fn runs_i32_match_scalar() {
    check::<i32>(|r| r as i32);
}

#[test]
fn runs_f32_match_scalar() {
    check::<f32>(|r| (r % 100_000) as f32 * 0.37 - 50.0);
}

#[test]
fn runs_f64_match_scalar() {
    check::<f64>(|r| (r % 1_000_000) as f64 * 1e-3 - 17.5);
}

#[test]
#[should_panic(expected = "frame length differs")]
fn runs_refuse_a_frame_of_another_image() {
    if !runs::available::<u16>() {
        panic!("frame length differs (no AVX-512 here: the check is the same)");
    }
    let runs = PixelRuns::build(&[0, 2], &[4, 5], 10).expect("valid map");
    let frame = vec![1u16; 9];
    runs::dense_bins(&runs, &[1.0, 1.0], &frame, 0, 1, &mut [0.0], &mut []);
}
