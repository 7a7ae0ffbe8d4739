//! The AVX-512 gather kernels (one frame and a block of frames, over a [`Tiles`] layout that
//! walks the map's bins in order, with areas or with f64 weights of their own) against a plain scalar sum, on random CSR maps whose bins are
//! unsorted, empty, long and short, and reach the frame's last pixels (where a 32-bit gather of a
//! u8/u16 pixel would read past the frame and the kernel must fall back per lane), each with and
//! without the map's largest pixel as a hint (with it, lanes are clamped instead of checked where
//! every pixel can be gathered).
// The gather kernels exist on x86-64 only (elsewhere the scalar loop runs).
#![cfg(target_arch = "x86_64")]

mod common;

use common::{close, reference, Csr, Lcg};
use radint_core::gather::{self, GatherKind, DENSE_STACK_BLOCK};
use radint_core::integrate::Pixel;
use radint_core::tiles::Tiles;

fn random_csr(rng: &mut Lcg, n_bins: usize, n_pixels: usize) -> Csr {
    let mut indptr = vec![0u64];
    let (mut pixel, mut area) = (Vec::new(), Vec::new());
    for b in 0..n_bins {
        let len = match b % 7 {
            0 => 0,
            1 => 1 + (rng.next() % 7) as usize,
            2 => 40 + (rng.next() % 200) as usize,
            _ => (rng.next() % 33) as usize,
        };
        for _ in 0..len {
            // One pixel in four from the last 5 of the frame.
            let p = if rng.next().is_multiple_of(4) {
                (n_pixels - 1).saturating_sub((rng.next() % 5) as usize)
            } else {
                (rng.next() % n_pixels as u64) as usize
            };
            pixel.push(p as u32);
            area.push((rng.next() % 1_000_000) as f32 / 1_000_000.0);
        }
        indptr.push(pixel.len() as u64);
    }
    Csr {
        indptr,
        pixel,
        area,
    }
}

/// Whether this CPU runs the gather kernels for `T` (else the test says so and compares nothing).
fn gather_here<T: Pixel>() -> bool {
    let here = gather::available::<T>();
    if !here {
        eprintln!(
            "no AVX-512 gather path for {:?} on this CPU: nothing to compare",
            T::GATHER
        );
    }
    here
}

fn check<T: Pixel>(make: impl Fn(u64) -> T) {
    if !gather_here::<T>() {
        return;
    }
    let mut rng = Lcg(7);
    // Odd frame lengths put the last pixel at every alignment relative to a 4-byte load.
    for n_pixels in [1usize, 3, 17, 1000, 4097] {
        let frame: Vec<T> = (0..n_pixels).map(|_| make(rng.next())).collect();
        let other: Vec<T> = (0..n_pixels).map(|_| make(rng.next())).collect();
        // Maps reaching the frame's last pixels, and (a u8 gather's limit) keeping 4 short of it.
        let reaching = random_csr(&mut rng, 300, n_pixels);
        let short = random_csr(&mut rng, 300, n_pixels.saturating_sub(4).max(1));
        for csr in [&reaching, &short] {
            for hint in [None, csr.pixel.iter().copied().max()] {
                check_dense(csr, hint, &frame, &other);
            }
        }
    }
}

/// [`gather::dense_bins_stack`] of one block of frames over pieces `lo..hi`: per frame, signal
/// and (with `with_var`) variance.
fn stack_sums<T: Pixel>(
    tiles: &Tiles,
    hint: Option<u32>,
    frames: &[&[T]],
    lo: usize,
    hi: usize,
    with_var: bool,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut s = vec![vec![f64::NAN; hi - lo]; frames.len()];
    let mut v = vec![vec![f64::NAN; hi - lo]; if with_var { frames.len() } else { 0 }];
    let mut s_rows: Vec<&mut [f64]> = s.iter_mut().map(|r| &mut r[..]).collect();
    let mut v_rows: Vec<&mut [f64]> = v.iter_mut().map(|r| &mut r[..]).collect();
    gather::dense_bins_stack(tiles, hint, frames, lo, hi, &mut s_rows, &mut v_rows);
    (s, v)
}

fn check_dense<T: Pixel>(csr: &Csr, hint: Option<u32>, frame: &[T], other: &[T]) {
    let tiles = Tiles::in_order(&csr.indptr, &csr.pixel, &csr.area, frame.len());
    for (lo, hi) in [(0, 300), (13, 214), (299, 300)] {
        let (want_s, want_v) = reference(csr, frame, lo, hi);
        let mut s = vec![f64::NAN; hi - lo];
        let mut v = vec![f64::NAN; hi - lo];
        gather::dense_bins(&tiles, hint, frame, lo, hi, &mut s, &mut v);
        close(&s, &want_s, "signal with variance");
        close(&v, &want_v, "variance");
        let mut s_only = vec![f64::NAN; hi - lo];
        gather::dense_bins(&tiles, hint, frame, lo, hi, &mut s_only, &mut []);
        close(&s_only, &want_s, "signal only");
        // Frames alternating with another one, sharing the CSR pass.
        let (other_s, other_v) = reference(csr, other, lo, hi);
        for with_var in [true, false] {
            for first in [0, 1] {
                let block: Vec<&[T]> = (0..DENSE_STACK_BLOCK)
                    .map(|k| if (k + first) % 2 == 0 { frame } else { other })
                    .collect();
                let (s, v) = stack_sums(&tiles, hint, &block, lo, hi, with_var);
                for k in 0..DENSE_STACK_BLOCK {
                    let (ws, wv) = if (k + first) % 2 == 0 {
                        (&want_s, &want_v)
                    } else {
                        (&other_s, &other_v)
                    };
                    close(&s[k], ws, &format!("stack frame {k} signal"));
                    if with_var {
                        close(&v[k], wv, &format!("stack frame {k} variance"));
                    }
                }
            }
        }
    }
    // Weights of their own (a folded map's, f64): twice the areas here, so the reference is
    // the same CSR with doubled (exactly representable) areas.
    let weighted = tiles
        .clone()
        .with_weights(csr.area.iter().map(|&a| 2.0 * a as f64).collect());
    let doubled = Csr {
        indptr: csr.indptr.clone(),
        pixel: csr.pixel.clone(),
        area: csr.area.iter().map(|&a| 2.0 * a).collect(),
    };
    let n = csr.indptr.len() - 1;
    let (want_s, want_v) = reference(&doubled, frame, 0, n);
    let (other_s, other_v) = reference(&doubled, other, 0, n);
    let (mut s, mut v) = (vec![f64::NAN; n], vec![f64::NAN; n]);
    gather::dense_bins(&weighted, hint, frame, 0, n, &mut s, &mut v);
    close(&s, &want_s, "weighted signal");
    close(&v, &want_v, "weighted variance");
    let block: Vec<&[T]> = (0..DENSE_STACK_BLOCK)
        .map(|k| if k % 2 == 0 { frame } else { other })
        .collect();
    let (s, v) = stack_sums(&weighted, hint, &block, 0, n, true);
    for k in 0..DENSE_STACK_BLOCK {
        let (ws, wv) = if k % 2 == 0 {
            (&want_s, &want_v)
        } else {
            (&other_s, &other_v)
        };
        close(&s[k], ws, &format!("weighted stack frame {k} signal"));
        close(&v[k], wv, &format!("weighted stack frame {k} variance"));
    }
}

/// A hint below the map's real largest pixel gives wrong sums but reads nothing past the frame:
/// the lanes are clamped to the last pixel a gather can take.
#[test]
fn a_false_hint_stays_inside_the_frame() {
    if !gather_here::<u8>() {
        return;
    }
    // 17 u8 pixels: a 32-bit gather can take pixels 0..=13; pixel 16 is clamped to 13.
    let frame: Vec<u8> = (0..17).map(|k| 10 + k as u8).collect();
    let csr = Csr {
        indptr: vec![0, 2],
        pixel: vec![2, 16],
        area: vec![1.0, 0.5],
    };
    let tiles = Tiles::in_order(&csr.indptr, &csr.pixel, &csr.area, frame.len());
    let mut s = [0.0];
    gather::dense_bins(&tiles, Some(0), &frame, 0, 1, &mut s, &mut []);
    assert_eq!(s[0], 12.0 + 0.5 * 23.0);
    // With the true largest pixel the last one is summed the checked way.
    gather::dense_bins(&tiles, Some(16), &frame, 0, 1, &mut s, &mut []);
    assert_eq!(s[0], 12.0 + 0.5 * 26.0);
}

#[test]
fn gather_u8_matches_scalar() {
    check::<u8>(|r| r as u8);
}

#[test]
fn gather_u16_matches_scalar() {
    check::<u16>(|r| r as u16);
}

#[test]
fn gather_u32_matches_scalar() {
    check::<u32>(|r| (r as u32) ^ 0x8000_0000);
}

#[test]
fn gather_i32_matches_scalar() {
    check::<i32>(|r| r as i32);
}

#[test]
fn gather_finite_f32_matches_scalar() {
    // Negative values and values below 1 (whose Poisson variance is 1) among large ones.
    check::<f32>(|r| (r % 100_000) as f32 / 7.0 - 20.0);
}

#[test]
fn gather_finite_f64_matches_scalar() {
    check::<f64>(|r| (r % 1_000_003) as f64 * 1.25e-3 - 1.0);
}

#[test]
fn no_gather_for_64_bit_integer_pixels() {
    assert_eq!(<f64 as Pixel>::GATHER, GatherKind::F64);
    assert_eq!(<u64 as Pixel>::GATHER, GatherKind::None);
    assert!(!gather::available::<u64>() && !gather::available::<i64>());
}

// ------------------------------------------------------------------ masked kernel

use radint_core::gather::{MaskedSums, MaskedVariance, PixelInputs};

struct Sums4 {
    signal: Vec<f64>,
    area: Vec<f64>,
    variance: Vec<f64>,
    count: Vec<u32>,
}

fn masked_reference<T: Pixel>(
    csr: &Csr,
    frame: &[T],
    inputs: &PixelInputs,
    model: MaskedVariance,
    lo: usize,
    hi: usize,
) -> Sums4 {
    let mut out = Sums4 {
        signal: vec![],
        area: vec![],
        variance: vec![],
        count: vec![],
    };
    for b in lo..hi {
        let (mut s, mut a, mut v, mut c) = (0.0, 0.0, 0.0, 0u32);
        for e in csr.indptr[b] as usize..csr.indptr[b + 1] as usize {
            let p = csr.pixel[e] as usize;
            let raw = frame[p].to_f64();
            let area = csr.area[e] as f64;
            let w = inputs.scale.map_or(area, |sc| area * sc[p]);
            let value = inputs.dark.map_or(raw, |d| raw - d[p]);
            if (w * value).is_nan() {
                continue;
            }
            s += w * value;
            a += area;
            c += 1;
            v += w
                * w
                * match model {
                    MaskedVariance::None => 0.0,
                    MaskedVariance::Poisson => raw.max(1.0),
                    MaskedVariance::Given => inputs.variance.unwrap()[p],
                };
        }
        out.signal.push(s);
        out.area.push(a);
        out.variance.push(v);
        out.count.push(c);
    }
    out
}

fn check_masked<T: Pixel>(make: impl Fn(u64) -> T) {
    if !gather_here::<T>() {
        return;
    }
    let mut rng = Lcg(11);
    for n_pixels in [1usize, 3, 17, 4097] {
        let frame: Vec<T> = (0..n_pixels).map(|_| make(rng.next())).collect();
        let other: Vec<T> = (0..n_pixels).map(|_| make(rng.next())).collect();
        let dark: Vec<f64> = (0..n_pixels)
            .map(|_| (rng.next() % 50) as f64 * 0.5)
            .collect();
        // One pixel in seven masked (NaN scale), the others scaled by 0.5 .. 1.5.
        let scale: Vec<f64> = (0..n_pixels)
            .map(|_| match rng.next() % 7 {
                0 => f64::NAN,
                r => 0.5 + r as f64 / 6.0,
            })
            .collect();
        let given: Vec<f64> = (0..n_pixels)
            .map(|_| (rng.next() % 1000) as f64 / 7.0)
            .collect();
        let reaching = random_csr(&mut rng, 200, n_pixels);
        let short = random_csr(&mut rng, 200, n_pixels.saturating_sub(4).max(1));
        for csr in [&reaching, &short] {
            for hint in [None, csr.pixel.iter().copied().max()] {
                check_masked_map(csr, hint, &frame, &other, &dark, &scale, &given);
            }
        }
    }
}

fn check_masked_map<T: Pixel>(
    csr: &Csr,
    hint: Option<u32>,
    frame: &[T],
    other: &[T],
    dark: &[f64],
    scale: &[f64],
    given: &[f64],
) {
    {
        let variants = [
            (None, None, MaskedVariance::None),
            (Some(dark), None, MaskedVariance::Poisson),
            (None, Some(scale), MaskedVariance::Given),
            (Some(dark), Some(scale), MaskedVariance::Poisson),
        ];
        for (dark, scale, model) in variants {
            let inputs = PixelInputs {
                dark,
                scale,
                variance: Some(given),
            };
            for (lo, hi) in [(0, 200), (7, 150)] {
                let want = masked_reference(csr, frame, &inputs, model, lo, hi);
                let n = hi - lo;
                let (mut s, mut a, mut v, mut c) = (
                    vec![f64::NAN; n],
                    vec![f64::NAN; n],
                    vec![f64::NAN; n],
                    vec![u32::MAX; n],
                );
                let sums = MaskedSums {
                    signal: &mut s,
                    area: &mut a,
                    variance: &mut v,
                    count: &mut c,
                };
                gather::masked_bins(
                    &csr.indptr,
                    &csr.pixel,
                    &csr.area,
                    hint,
                    frame,
                    inputs,
                    model,
                    lo,
                    hi,
                    sums,
                );
                close(&s, &want.signal, "masked signal");
                close(&a, &want.area, "masked area");
                assert_eq!(c, want.count, "masked count");
                if model != MaskedVariance::None {
                    close(&v, &want.variance, "masked variance");
                }
                // The frame and another one (its own NaNs) sharing one pass.
                let want_other = masked_reference(csr, other, &inputs, model, lo, hi);
                let mut outs: Vec<Sums4> = (0..2)
                    .map(|_| Sums4 {
                        signal: vec![f64::NAN; n],
                        area: vec![f64::NAN; n],
                        variance: vec![f64::NAN; n],
                        count: vec![u32::MAX; n],
                    })
                    .collect();
                {
                    let [o0, o1] = &mut outs[..] else {
                        unreachable!()
                    };
                    let sums = [o0, o1].map(|o| MaskedSums {
                        signal: &mut o.signal,
                        area: &mut o.area,
                        variance: &mut o.variance,
                        count: &mut o.count,
                    });
                    gather::masked_bins_stack(
                        &csr.indptr,
                        &csr.pixel,
                        &csr.area,
                        hint,
                        &[other, frame],
                        inputs,
                        model,
                        lo,
                        sums,
                    );
                }
                for (got, want) in outs.iter().zip([&want_other, &want]) {
                    close(&got.signal, &want.signal, "stack masked signal");
                    close(&got.area, &want.area, "stack masked area");
                    assert_eq!(got.count, want.count, "stack masked count");
                    if model != MaskedVariance::None {
                        close(&got.variance, &want.variance, "stack masked variance");
                    }
                }
            }
        }
    }
}

#[test]
fn masked_gather_u16_matches_scalar() {
    check_masked::<u16>(|r| r as u16);
}

#[test]
fn masked_gather_u32_matches_scalar() {
    check_masked::<u32>(|r| r as u32 >> 8);
}

#[test]
fn masked_gather_float_frames_with_nan_match_scalar() {
    check_masked::<f32>(|r| {
        if r % 11 == 0 {
            f32::NAN
        } else {
            (r % 100_000) as f32 * 0.25
        }
    });
    check_masked::<f64>(|r| {
        if r % 13 == 0 {
            f64::NAN
        } else {
            (r % 100_000) as f64 * 0.125
        }
    });
}

// ------------------------------------------------------------------ shared-pixel Poisson sum

fn check_poisson_sum<T: Pixel>(make: impl Fn(u64) -> T) {
    if !gather_here::<T>() {
        return;
    }
    let mut rng = Lcg(23);
    for n_pixels in [1usize, 3, 17, 4097] {
        let frame: Vec<T> = (0..n_pixels).map(|_| make(rng.next())).collect();
        for len in [0usize, 1, 7, 8, 9, 100, 1000] {
            // One pixel in four from the frame's last 5 (past a narrow gather's reach).
            let pixel: Vec<u32> = (0..len)
                .map(|_| {
                    if rng.next().is_multiple_of(4) {
                        (n_pixels - 1).saturating_sub((rng.next() % 5) as usize) as u32
                    } else {
                        (rng.next() % n_pixels as u64) as u32
                    }
                })
                .collect();
            let weight: Vec<f64> = (0..len)
                .map(|_| (rng.next() % 1_000_000) as f64 / 250_000.0)
                .collect();
            let want: f64 = pixel
                .iter()
                .zip(&weight)
                .map(|(&p, &w)| (w, frame[p as usize].to_f64()))
                .filter(|(_, x)| x.is_finite()) // NaN / ±inf pixels count in no bin
                .map(|(w, x)| w * x.max(1.0))
                .sum();
            for hint in [None, pixel.iter().copied().max()] {
                let got = gather::poisson_weighted_sum(&pixel, &weight, hint, &frame, true);
                close(&[got], &[want], "shared-pixel Poisson sum");
                if frame.iter().all(|x| x.to_f64().is_finite()) {
                    let got = gather::poisson_weighted_sum(&pixel, &weight, hint, &frame, false);
                    close(&[got], &[want], "shared-pixel Poisson sum, finite frame");
                }
            }
        }
    }
}

#[test]
fn poisson_sum_matches_scalar() {
    check_poisson_sum::<u8>(|r| r as u8);
    check_poisson_sum::<u16>(|r| r as u16);
    check_poisson_sum::<u32>(|r| (r as u32) >> 4);
    check_poisson_sum::<i32>(|r| r as i32);
    let spoiled = |r: u64| match r % 11 {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        _ => (r % 4096) as f64 / 8.0,
    };
    check_poisson_sum::<f32>(|r| spoiled(r) as f32);
    check_poisson_sum::<f64>(spoiled);
}
