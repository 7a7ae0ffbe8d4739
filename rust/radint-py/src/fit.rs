//! Bindings of `radint_core::fit` (peak fitting): extract → validate → detached rayon → numpy.

use numpy::{
    IntoPyArray, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use radint_core::fit::{self, AutoOptions, FitOptions, LmOptions};

use crate::errors::shape_error;
use crate::run_detached;

fn options(roi_padding: usize, auto_roi: bool, max_iterations: usize) -> FitOptions {
    FitOptions {
        roi_padding,
        auto_roi,
        lm: LmOptions {
            max_iterations,
            ..LmOptions::default()
        },
        ..FitOptions::default()
    }
}

fn curves<'a>(
    x: &'a PyReadonlyArray1<'_, f64>,
    ys: &'a PyReadonlyArray2<'_, f64>,
) -> PyResult<(&'a [f64], &'a [f64])> {
    let xs = x
        .as_slice()
        .map_err(|_| shape_error("x: expected a contiguous float64 array".into()))?;
    if ys.shape()[1] != xs.len() {
        return Err(shape_error(format!(
            "lineouts: expected shape (n_curves, {}) to match x, got {:?}",
            xs.len(),
            ys.shape()
        )));
    }
    let ysl = ys
        .as_slice()
        .map_err(|_| shape_error("lineouts: expected a C-contiguous float64 array".into()))?;
    Ok((xs, ysl))
}

/// Fit pseudo-Voigt peaks at given positions on every curve (rows of `ys`).
#[pyfunction]
#[pyo3(signature = (x, ys, positions, roi_padding=20, auto_roi=false, max_iterations=500, n_threads=None))]
#[allow(clippy::too_many_arguments)]
fn fit_peaks<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    ys: PyReadonlyArray2<'py, f64>,
    positions: Vec<f64>,
    roi_padding: usize,
    auto_roi: bool,
    max_iterations: usize,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let (xs, ysl) = curves(&x, &ys)?;
    let opts = options(roi_padding, auto_roi, max_iterations);
    let table = run_detached(py, n_threads, || fit::fit_many(xs, ysl, &positions, &opts))?;
    let d = PyDict::new(py);
    let shape = [table.n_curves, table.n_peaks, fit::ROW_LEN];
    d.set_item("values", table.values.into_pyarray(py).reshape(shape)?)?;
    d.set_item("errors", table.errors.into_pyarray(py).reshape(shape)?)?;
    d.set_item(
        "status",
        table
            .status
            .into_pyarray(py)
            .reshape([table.n_curves, table.n_peaks])?,
    )?;
    d.set_item(
        "iterations",
        table
            .iterations
            .into_pyarray(py)
            .reshape([table.n_curves, table.n_peaks])?,
    )?;
    Ok(d)
}

/// Auto-detect (SNIP + Savitzky–Golay) and fit up to `max_peaks` peaks per curve.
/// Returns one dict per curve: values (n, 7), errors (n, 7), status (n,), background (n_x,).
#[pyfunction]
#[pyo3(signature = (x, ys, max_peaks=10, snip_iterations=50, roi_padding=20, max_iterations=500, n_threads=None))]
#[allow(clippy::too_many_arguments)]
fn fit_auto<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    ys: PyReadonlyArray2<'py, f64>,
    max_peaks: usize,
    snip_iterations: usize,
    roi_padding: usize,
    max_iterations: usize,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyList>> {
    let (xs, ysl) = curves(&x, &ys)?;
    let opts = options(roi_padding, false, max_iterations);
    let auto = AutoOptions {
        max_peaks,
        snip_iterations,
    };
    let fits = run_detached(py, n_threads, || fit::fit_auto_many(xs, ysl, &auto, &opts))?;
    let out = PyList::empty(py);
    for f in fits {
        let n = f.peaks.len();
        let values: Vec<f64> = f.peaks.iter().flat_map(|p| p.values).collect();
        let errors: Vec<f64> = f.peaks.iter().flat_map(|p| p.errors).collect();
        let status: Vec<u8> = f.peaks.iter().map(|p| p.status.code()).collect();
        let d = PyDict::new(py);
        d.set_item(
            "values",
            values.into_pyarray(py).reshape([n, fit::ROW_LEN])?,
        )?;
        d.set_item(
            "errors",
            errors.into_pyarray(py).reshape([n, fit::ROW_LEN])?,
        )?;
        d.set_item("status", status.into_pyarray(py))?;
        d.set_item("background", f.background.into_pyarray(py))?;
        out.append(d)?;
    }
    Ok(out)
}

/// SNIP background of one curve (spec §6.3).
#[pyfunction]
#[pyo3(signature = (y, iterations=50))]
fn snip_background<'py>(
    py: Python<'py>,
    y: PyReadonlyArray1<'py, f64>,
    iterations: usize,
) -> PyResult<Bound<'py, numpy::PyArray1<f64>>> {
    let y = y.to_vec()?;
    Ok(fit::snip_background(&y, iterations).into_pyarray(py))
}

/// Names of the fit status codes, index = code.
#[pyfunction]
fn fit_status_names() -> Vec<&'static str> {
    use fit::FitStatus::*;
    [
        Converged,
        MaxIterations,
        NonFinite,
        OutOfRange,
        InsufficientData,
        TooManyPeaks,
    ]
    .iter()
    .map(|s| s.name())
    .collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fit_peaks, m)?)?;
    m.add_function(wrap_pyfunction!(fit_auto, m)?)?;
    m.add_function(wrap_pyfunction!(snip_background, m)?)?;
    m.add_function(wrap_pyfunction!(fit_status_names, m)?)?;
    Ok(())
}
