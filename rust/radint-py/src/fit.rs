//! Bindings of `radint_core::fit` (peak fitting): extract → validate → release the GIL → convert.
//! Results come back as flat numpy arrays reshaped in place (no copy after the fit).

use numpy::ndarray::Array;
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use radint_core::fit::{
    self as core_fit, AutoOptions, FitOptions, FitStatus, LmOptions, PeakFit, PV_PARAMS, ROW_LEN,
};

use crate::errors::{raise, shape_error};
use crate::run_detached;

/// Status code of the padding rows of auto-detection (slots where no peak was kept).
const STATUS_ABSENT: u8 = 255;

/// A flat vector as a numpy array of `shape` (moves the buffer, no copy).
fn shaped<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let a = Array::from_shape_vec(shape.to_vec(), data)
        .map_err(|e| shape_error(format!("peak fit result: {e}")))?;
    Ok(a.into_pyarray(py))
}

fn slice_1d<'a>(what: &str, a: &'a PyReadonlyArray1<'_, f64>) -> PyResult<&'a [f64]> {
    a.as_slice()
        .map_err(|_| shape_error(format!("{what}: expected a C-contiguous float64 array")))
}

/// `ys` as a flat slice with its number of rows, checked against `x`.
fn curves<'a>(ys: &'a PyReadonlyArray2<'_, f64>, n_x: usize) -> PyResult<(&'a [f64], usize)> {
    let shape = ys.shape();
    if n_x < 2 {
        return Err(raise(
            "InvalidInputError",
            format!("peak fit: x axis needs at least 2 bin centres, got {n_x}"),
        ));
    }
    if shape[1] != n_x {
        return Err(shape_error(format!(
            "ys: expected shape (n_curves, {n_x}) to match x, got ({}, {})",
            shape[0], shape[1]
        )));
    }
    if shape[0] == 0 {
        return Err(shape_error(
            "ys: expected at least one curve, got shape (0, n)".into(),
        ));
    }
    let flat = ys
        .as_slice()
        .map_err(|_| shape_error("ys: expected a C-contiguous float64 array".into()))?;
    Ok((flat, shape[0]))
}

fn fit_options(
    roi_padding: usize,
    auto_roi: bool,
    max_iterations: usize,
    max_peaks_per_job: usize,
    bin_average: bool,
) -> FitOptions {
    FitOptions {
        roi_padding,
        auto_roi,
        max_peaks_per_job,
        bin_average,
        lm: LmOptions {
            max_iterations,
            ..LmOptions::default()
        },
    }
}

/// Fit peaks at `positions` (x units) in every row of `ys` `(n_curves, n_x)`.
///
/// Returns a dict: `values`, `errors` `(n_curves, n_peaks, 7)` (MIDAS fit.bin rows; NaN unless
/// converged), `status` u8 and `iterations` u32 `(n_curves, n_peaks)`.
#[pyfunction]
#[pyo3(signature = (x, ys, positions, roi_padding=20, auto_roi=false, max_iterations=500, max_peaks_per_job=32, n_threads=None, bin_average=true))]
#[allow(clippy::too_many_arguments)]
fn fit_peaks<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    ys: PyReadonlyArray2<'py, f64>,
    positions: Vec<f64>,
    roi_padding: usize,
    auto_roi: bool,
    max_iterations: usize,
    max_peaks_per_job: usize,
    n_threads: Option<usize>,
    bin_average: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let xs = slice_1d("x", &x)?;
    let (flat, n_curves) = curves(&ys, xs.len())?;
    let opts = fit_options(
        roi_padding,
        auto_roi,
        max_iterations,
        max_peaks_per_job,
        bin_average,
    );
    let t = run_detached(py, n_threads, || {
        core_fit::fit_many(xs, flat, &positions, &opts)
    })?;
    let n_peaks = positions.len();
    let d = PyDict::new(py);
    d.set_item(
        "values",
        shaped(py, t.values, &[n_curves, n_peaks, ROW_LEN])?,
    )?;
    d.set_item(
        "errors",
        shaped(py, t.errors, &[n_curves, n_peaks, ROW_LEN])?,
    )?;
    d.set_item("status", shaped(py, t.status, &[n_curves, n_peaks])?)?;
    d.set_item(
        "iterations",
        shaped(py, t.iterations, &[n_curves, n_peaks])?,
    )?;
    Ok(d)
}

/// Detect and fit up to `max_peaks` peaks in every row of `ys` `(n_curves, n_x)`.
///
/// Returns a dict: `values`, `errors` `(n_curves, max_peaks, 7)` padded with NaN rows after the
/// `counts[i]` kept peaks (ordered by centre), `status` (255 on padding), `iterations`,
/// `counts` u32 `(n_curves,)` and the subtracted SNIP `background` `(n_curves, n_x)`.
/// `bin_width_px`: the radial bins' width in detector pixels (0: unknown, taken as ≥ 1; see the
/// core's `AutoOptions`).
#[pyfunction]
#[pyo3(signature = (x, ys, max_peaks, snip_iterations=50, roi_padding=20, auto_roi=false, max_iterations=500, n_threads=None, bin_average=true, bin_width_px=0.0))]
#[allow(clippy::too_many_arguments)]
fn fit_auto<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    ys: PyReadonlyArray2<'py, f64>,
    max_peaks: usize,
    snip_iterations: usize,
    roi_padding: usize,
    auto_roi: bool,
    max_iterations: usize,
    n_threads: Option<usize>,
    bin_average: bool,
    bin_width_px: f64,
) -> PyResult<Bound<'py, PyDict>> {
    if max_peaks == 0 {
        return Err(raise(
            "InvalidInputError",
            "auto peak fit: max_peaks must be >= 1, got 0".into(),
        ));
    }
    let xs = slice_1d("x", &x)?;
    let (flat, n_curves) = curves(&ys, xs.len())?;
    // At most one peak per bin: the table's slots are allocated up front (an AutoDetectPeaks
    // of 1e11 aborted the process asking for 16 TB).
    let max_peaks = max_peaks.min(xs.len());
    let opts = fit_options(roi_padding, auto_roi, max_iterations, 32, bin_average);
    let auto = AutoOptions {
        max_peaks,
        snip_iterations,
        bin_width_px,
    };
    let fits = run_detached(py, n_threads, || {
        core_fit::fit_auto_many(xs, flat, &auto, &opts)
    })?;
    let slots = n_curves * max_peaks;
    let mut values = vec![f64::NAN; slots * ROW_LEN];
    let mut errors = vec![f64::NAN; slots * ROW_LEN];
    let mut status = vec![STATUS_ABSENT; slots];
    let mut iterations = vec![0u32; slots];
    let mut counts = Vec::with_capacity(n_curves);
    let mut background = Vec::with_capacity(flat.len());
    for (i, f) in fits.into_iter().enumerate() {
        let kept: &[PeakFit] = &f.peaks[..f.peaks.len().min(max_peaks)];
        counts.push(u32::try_from(kept.len()).unwrap_or(u32::MAX));
        for (k, p) in kept.iter().enumerate() {
            let s = i * max_peaks + k;
            values[s * ROW_LEN..(s + 1) * ROW_LEN].copy_from_slice(&p.values);
            errors[s * ROW_LEN..(s + 1) * ROW_LEN].copy_from_slice(&p.errors);
            status[s] = p.status.code();
            iterations[s] = u32::try_from(p.iterations).unwrap_or(u32::MAX);
        }
        background.extend_from_slice(&f.background);
    }
    let d = PyDict::new(py);
    d.set_item(
        "values",
        shaped(py, values, &[n_curves, max_peaks, ROW_LEN])?,
    )?;
    d.set_item(
        "errors",
        shaped(py, errors, &[n_curves, max_peaks, ROW_LEN])?,
    )?;
    d.set_item("status", shaped(py, status, &[n_curves, max_peaks])?)?;
    d.set_item(
        "iterations",
        shaped(py, iterations, &[n_curves, max_peaks])?,
    )?;
    d.set_item("counts", shaped(py, counts, &[n_curves])?)?;
    d.set_item("background", shaped(py, background, &[n_curves, xs.len()])?)?;
    Ok(d)
}

/// SNIP background (spec §6.3) of one lineout; non-finite bins are filled linearly from their
/// finite neighbours first (all non-finite: 0).
#[pyfunction]
#[pyo3(signature = (y, iterations=50))]
fn snip_background<'py>(
    py: Python<'py>,
    y: PyReadonlyArray1<'py, f64>,
    iterations: usize,
) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
    let ys = slice_1d("y", &y)?;
    let bg = crate::detached(py, || Ok(core_fit::snip_background(ys, iterations)))?;
    shaped(py, bg, &[ys.len()])
}

/// Height-normalised pV fits (spec §6.4) of every row of `ys` `(n_curves, n_x)`, row i started at
/// `centers[i]` (x units); e.g. the rows of a cake for per-η fits.
///
/// `bounds` is "radint" or "midas" (IntegratorZarrOMP's box and start).
///
/// Returns a dict: `params`, `std_errors` `(n_curves, 5)` as `[bg, imax, center, fwhm, mu]` (NaN
/// unless converged), `snr` `(n_curves,)` and `status` u8 `(n_curves,)`.
#[pyfunction]
#[pyo3(signature = (x, ys, centers, max_iterations=500, n_threads=None, bounds="radint"))]
fn fit_pv<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    ys: PyReadonlyArray2<'py, f64>,
    centers: PyReadonlyArray1<'py, f64>,
    max_iterations: usize,
    n_threads: Option<usize>,
    bounds: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let bounds = match bounds {
        "radint" => core_fit::PvBounds::Radint,
        "midas" => core_fit::PvBounds::Midas,
        other => {
            return Err(raise(
                "InvalidInputError",
                format!("pV fit: bounds must be 'radint' or 'midas', got {other:?}"),
            ))
        }
    };
    let xs = slice_1d("x", &x)?;
    let (flat, n_curves) = curves(&ys, xs.len())?;
    let c0 = slice_1d("centers", &centers)?;
    if c0.len() != n_curves {
        return Err(shape_error(format!(
            "centers: expected {n_curves} starting centres (one per curve), got {}",
            c0.len()
        )));
    }
    if max_iterations == 0 {
        return Err(raise(
            "InvalidInputError",
            "pV fit: max_iterations must be >= 1, got 0".into(),
        ));
    }
    let lm = LmOptions {
        max_iterations,
        ..LmOptions::default()
    };
    let fits = run_detached(py, n_threads, || {
        core_fit::fit_pv_many(xs, flat, c0, bounds, &lm)
    })?;
    let mut params = Vec::with_capacity(n_curves * PV_PARAMS);
    let mut errs = Vec::with_capacity(n_curves * PV_PARAMS);
    let mut snr = Vec::with_capacity(n_curves);
    let mut status = Vec::with_capacity(n_curves);
    for f in &fits {
        params.extend_from_slice(&f.params);
        errs.extend_from_slice(&f.std_errors);
        snr.push(f.snr);
        status.push(f.status.code());
    }
    let d = PyDict::new(py);
    d.set_item("params", shaped(py, params, &[n_curves, PV_PARAMS])?)?;
    d.set_item("std_errors", shaped(py, errs, &[n_curves, PV_PARAMS])?)?;
    d.set_item("snr", shaped(py, snr, &[n_curves])?)?;
    d.set_item("status", shaped(py, status, &[n_curves])?)?;
    Ok(d)
}

/// Names of the status codes, indexed by code (255: no peak in this slot).
#[pyfunction]
fn fit_status_names() -> Vec<(u8, &'static str)> {
    let all = [
        FitStatus::Converged,
        FitStatus::MaxIterations,
        FitStatus::NonFinite,
        FitStatus::OutOfRange,
        FitStatus::InsufficientData,
        FitStatus::TooManyPeaks,
        FitStatus::NoPeak,
        FitStatus::AtBound,
    ];
    let mut v: Vec<(u8, &'static str)> = all.iter().map(|s| (s.code(), s.name())).collect();
    v.push((STATUS_ABSENT, "absent"));
    v
}

/// The fitting jobs of `positions` on axis `x` with a fixed ROI padding (the plan the CPU fitter
/// uses), flattened for the GPU fitter.
///
/// Returns a dict: `bin` (axis bin size), `job_lo`, `job_hi` u32 `(n_jobs,)` (inclusive ROI bin
/// range), `peak_start` u32 `(n_jobs + 1,)` (job j's peaks are `peak_start[j]..peak_start[j+1]`),
/// `peak_slot`, `peak_index`, `peak_lo`, `peak_hi` u32 `(n_planned,)` (position index, snapped
/// bin, the peak's own inclusive ROI bin range). Positions in no job are out of range.
#[pyfunction]
#[pyo3(signature = (x, positions, roi_padding=20, max_peaks_per_job=32))]
fn fit_plan<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    positions: Vec<f64>,
    roi_padding: usize,
    max_peaks_per_job: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let xs = slice_1d("x", &x)?;
    let (bin, jobs) = core_fit::plan_fixed_rois(xs, &positions, roi_padding, max_peaks_per_job)
        .map_err(crate::errors::CoreError::from)?;
    let (mut lo, mut hi, mut start, mut slot, mut index) =
        (Vec::new(), Vec::new(), vec![0u32], Vec::new(), Vec::new());
    let (mut peak_lo, mut peak_hi) = (Vec::new(), Vec::new());
    for job in &jobs {
        lo.push(job.lo as u32);
        hi.push(job.hi as u32);
        for pk in &job.peaks {
            slot.push(pk.slot as u32);
            index.push(pk.index as u32);
            peak_lo.push(pk.lo as u32);
            peak_hi.push(pk.hi as u32);
        }
        start.push(slot.len() as u32);
    }
    let d = PyDict::new(py);
    d.set_item("bin", bin)?;
    let n_jobs = lo.len();
    let n_planned = slot.len();
    d.set_item("job_lo", shaped(py, lo, &[n_jobs])?)?;
    d.set_item("job_hi", shaped(py, hi, &[n_jobs])?)?;
    d.set_item("peak_start", shaped(py, start, &[n_jobs + 1])?)?;
    d.set_item("peak_slot", shaped(py, slot, &[n_planned])?)?;
    d.set_item("peak_index", shaped(py, index, &[n_planned])?)?;
    d.set_item("peak_lo", shaped(py, peak_lo, &[n_planned])?)?;
    d.set_item("peak_hi", shaped(py, peak_hi, &[n_planned])?)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fit_plan, m)?)?;
    m.add_function(wrap_pyfunction!(fit_peaks, m)?)?;
    m.add_function(wrap_pyfunction!(fit_auto, m)?)?;
    m.add_function(wrap_pyfunction!(snip_background, m)?)?;
    m.add_function(wrap_pyfunction!(fit_pv, m)?)?;
    m.add_function(wrap_pyfunction!(fit_status_names, m)?)?;
    Ok(())
}
