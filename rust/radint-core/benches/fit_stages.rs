//! Where the time of auto-detection goes, stage by stage, on one thread: SNIP background, noise
//! estimate, Savitzky–Golay detection, job planning, the Levenberg–Marquardt fits, and the whole
//! `fit_auto` for comparison. Plain `main` (no criterion): `cargo bench -p radint-core --bench
//! fit_stages` prints one table. Numbers are quoted in benches/README.md.
//!
//! Data: 200 lineouts of 3 000 bins, 20 Gaussian peaks (FWHM 3–5 bins, areas 2–6·10⁴) on a
//! sloping background of ~200 counts with Poisson-like noise, peaks either 140 bins apart (20
//! one-peak jobs) or 25 bins apart (all 20 merged into one job at the default ROI padding 20).

use std::time::Instant;

use radint_core::fit::{
    detect_candidates, fit_auto, fit_curve, noise_sigma, plan_jobs, snip_background, AutoOptions,
    FitOptions, DETECTION_SIGMAS,
};

const N_X: usize = 3000;
const N_CURVES: usize = 200;
const N_PEAKS: usize = 20;

/// splitmix64 with Box–Muller normals (as tests/fit.rs).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    /// Poisson-like count: Gaussian with variance = mean, rounded (means here are ≥ 50).
    fn poisson(&mut self, mean: f64) -> f64 {
        let u1 = self.uniform(1e-300, 1.0);
        let u2 = self.uniform(0.0, 1.0);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (mean + mean.sqrt() * z).round().max(0.0)
    }
}

fn lineouts(spacing: f64, rng: &mut Rng) -> Vec<Vec<f64>> {
    (0..N_CURVES)
        .map(|_| {
            let peaks: Vec<(f64, f64, f64)> = (0..N_PEAKS)
                .map(|k| {
                    let c = 100.0 + spacing * k as f64 + rng.uniform(-0.5, 0.5);
                    let s = rng.uniform(3.0, 5.0) / 2.3548;
                    (
                        c,
                        s,
                        rng.uniform(2e4, 6e4) / (s * (2.0 * std::f64::consts::PI).sqrt()),
                    )
                })
                .collect();
            (0..N_X)
                .map(|i| {
                    let x = i as f64;
                    let mean = 200.0 - 0.05 * x
                        + peaks
                            .iter()
                            .map(|&(c, s, h)| h * (-0.5 * ((x - c) / s).powi(2)).exp())
                            .sum::<f64>();
                    rng.poisson(mean)
                })
                .collect()
        })
        .collect()
}

fn main() {
    let x: Vec<f64> = (0..N_X).map(|i| i as f64).collect();
    let opts = FitOptions::default();
    let auto = AutoOptions {
        max_peaks: N_PEAKS,
        ..AutoOptions::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let mut rng = Rng(2024);
    println!(
        "{N_CURVES} lineouts x {N_X} bins, {N_PEAKS} peaks, 1 thread; ms per lineout\n\
         {:<24} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8} {:>7}",
        "case", "snip", "noise", "detect", "plan", "fit", "fit_auto", "fits/s", "found"
    );
    for (name, spacing) in [("20 one-peak jobs", 140.0), ("one 20-peak job", 25.0)] {
        let ys = lineouts(spacing, &mut rng);
        let mut t = [0.0; 6];
        let mut found = 0;
        pool.install(|| {
            for y in &ys {
                let clock = Instant::now();
                let bg = snip_background(y, auto.snip_iterations);
                t[0] += clock.elapsed().as_secs_f64();
                let corr: Vec<f64> = y.iter().zip(&bg).map(|(&v, &b)| (v - b).max(0.0)).collect();
                let clock = Instant::now();
                let sigma = noise_sigma(&corr, false);
                t[1] += clock.elapsed().as_secs_f64();
                let clock = Instant::now();
                let cand = detect_candidates(&corr, 3 * N_PEAKS, 3, DETECTION_SIGMAS * sigma);
                t[2] += clock.elapsed().as_secs_f64();
                let positions: Vec<f64> = cand.iter().map(|&i| x[i]).collect();
                let clock = Instant::now();
                let jobs = plan_jobs(
                    &x,
                    &corr,
                    &positions,
                    opts.roi_padding,
                    false,
                    opts.max_peaks_per_job,
                );
                t[3] += clock.elapsed().as_secs_f64();
                let clock = Instant::now();
                let fits = fit_curve(&x, &corr, &positions, &opts).expect("valid input");
                t[4] += clock.elapsed().as_secs_f64();
                let clock = Instant::now();
                let full = fit_auto(&x, y, &auto, &opts).expect("valid input");
                t[5] += clock.elapsed().as_secs_f64();
                found += full.peaks.len();
                assert!(!jobs.is_empty() && fits.len() == positions.len());
            }
        });
        let ms = t.map(|s| s * 1e3 / N_CURVES as f64);
        println!(
            "{name:<24} {:>7.3} {:>7.3} {:>7.3} {:>7.4} {:>7.3} {:>9.3} {:>8.0} {:>7.1}",
            ms[0],
            ms[1],
            ms[2],
            ms[3],
            ms[4],
            ms[5],
            found as f64 / t[5],
            found as f64 / N_CURVES as f64
        );
    }
}
