//! `radint._core`: extract → validate → release the GIL → convert. Logic lives in radint-core.

mod errors;
mod fit;
mod params;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use numpy::ndarray::ArrayView1;
use numpy::{
    IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use radint_core::geometry::ImageTransform;
use radint_core::integrate as core_integrate;
use radint_core::integrate::{ErrorModel, FinalizeOptions, LineoutMode, Precision, Rules, Sums};
use radint_core::map::{self, DetectorMap, MapInputs};
use radint_core::midas_files::{self, MapHeader, ReadOptions, Sampling};
use radint_core::params::Params;
use radint_core::storage::{MappedFile, Storage};
use radint_core::{bins, panels, scan};

use errors::{raise, shape_error, CoreError};

/// A rayon pool and the lock that lets one call at a time into it.
///
/// Why one at a time: parts of a map are built lazily, in parallel, inside a `OnceLock`
/// (`DetectorMap::tiles`, `eta_cross`, ...). A worker waiting there for its own parallel work
/// steals whatever else is queued; were that another Python thread's call on the same map, it
/// would wait on the very `OnceLock` its thread is initializing: a deadlock (found with four
/// threads integrating through one Integrator, session 24). Calls sharing a pool share its
/// threads anyway, so taking turns costs them little.
pub(crate) struct Pool {
    threads: rayon::ThreadPool,
    one_call: Mutex<()>,
}

/// Threads per CPU a pool may have at most.
const MAX_THREADS_PER_CPU: usize = 4;

/// The threads of the pool for `n_threads` (None or 0: one per CPU).
fn pool_size(n_threads: Option<usize>) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Beyond a few threads per CPU a pool only thrashes, and a mistyped count (10**6) would
    // start OS threads until the machine runs out of them. Results do not depend on the count,
    // so a larger one (a command line written for a bigger node) is held to the limit.
    n_threads
        .filter(|&n| n > 0)
        .unwrap_or(cpus)
        .min(MAX_THREADS_PER_CPU * cpus)
}

/// What a pool's threads do: integration and fitting share one pool per thread count; frames
/// are decoded on pools of their own, so a reader thread decoding the next frames does not wait
/// for the integration of the last ones (each pool runs one call at a time).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Work {
    Compute,
    Decode,
}

/// The pools of one process: a forked child finds its parent's here.
struct Pools {
    pid: u32,
    by_size: HashMap<(Work, usize), Arc<Pool>>,
}

/// One pool per thread count, built on first use (the global pool is never touched).
pub(crate) fn pool(n_threads: Option<usize>) -> PyResult<Arc<Pool>> {
    pool_for(Work::Compute, n_threads)
}

/// One pool per kind of work and thread count, built on first use.
pub(crate) fn pool_for(work: Work, n_threads: Option<usize>) -> PyResult<Arc<Pool>> {
    static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();
    let n = pool_size(n_threads);
    let pools = POOLS.get_or_init(|| {
        Mutex::new(Pools {
            pid: std::process::id(),
            by_size: HashMap::new(),
        })
    });
    let mut guard = pools
        .lock()
        .map_err(|_| raise("InvalidInputError", "thread-pool cache poisoned".into()))?;
    if guard.pid != std::process::id() {
        // A child forked (multiprocessing's default on Linux) after the parent used radint:
        // the pools' threads stayed in the parent and a call waited for them for ever. The
        // child starts its own; the parent's are leaked, not dropped, as nothing runs them.
        guard.pid = std::process::id();
        for (_, stale) in guard.by_size.drain() {
            std::mem::forget(stale);
        }
    }
    let guard = &mut guard.by_size;
    if let Some(p) = guard.get(&(work, n)) {
        return Ok(p.clone());
    }
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("radint-{i}"))
        .build()
        .map_err(|e| {
            raise(
                "InvalidInputError",
                format!("cannot start {n} threads: {e}"),
            )
        })?;
    let p = Arc::new(Pool {
        threads,
        one_call: Mutex::new(()),
    });
    guard.insert((work, n), p.clone());
    Ok(p)
}

/// Run `f` on a pool of `n_threads` with the GIL released (waiting, also without the GIL, for
/// the pool's other calls: see [`Pool`]), mapping core errors.
pub(crate) fn run_detached<T: Send>(
    py: Python<'_>,
    n_threads: Option<usize>,
    f: impl FnOnce() -> radint_core::Result<T> + Send,
) -> PyResult<T> {
    run_on(py, pool(n_threads)?, f)
}

/// Run `f` on `pool` with the GIL released, as [`run_detached`].
fn run_on<T: Send>(
    py: Python<'_>,
    pool: Arc<Pool>,
    f: impl FnOnce() -> radint_core::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| {
        // A call that panicked leaves nothing behind the lock to repair.
        let _turn = pool
            .one_call
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.threads.install(f)
    })
    .map_err(|e| CoreError(e).into())
}

/// Serial core work with the GIL released, its error mapped as `run_detached` maps it.
///
/// No pool, so only for core calls that use no rayon at all, directly or through a map's
/// lazily built parts (`bin_area`, `check_areas`, `eta_cross`, tiles, ...): rayon work here
/// would start rayon's global pool. Anything that may run in parallel goes through
/// [`run_detached`] with the caller's `n_threads`.
pub(crate) fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> radint_core::Result<T> + Send,
) -> PyResult<T> {
    py.detach(f).map_err(|e| CoreError(e).into())
}

/// How this extension was built and what it finds at run time, for `radint --version` and bug
/// reports: build profile, the threads a call without `n_threads` runs on, whether the AVX-512
/// gather kernels run here.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    d.set_item("profile", profile)?;
    // Not rayon::current_num_threads(): called outside a pool, it starts rayon's global one.
    d.set_item("rayon_threads", pool_size(None))?;
    d.set_item("avx512_gathers", radint_core::gather::available::<u32>())?;
    d.set_item("target_arch", std::env::consts::ARCH)?;
    Ok(d)
}

/// Parse a MIDAS parameter file (or text when `text` is given) with `Key value` overrides.
#[pyfunction]
#[pyo3(signature = (path, overrides=Vec::new(), text=None))]
fn parse_params<'py>(
    py: Python<'py>,
    path: String,
    overrides: Vec<String>,
    text: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut p = match text {
        Some(t) => Params::parse(&t, &path),
        None => Params::from_file(&path),
    }
    .map_err(CoreError)?;
    p.apply_overrides(&overrides).map_err(CoreError)?;
    params::to_dict(py, &p)
}

/// Validate a configuration dict; raises ParameterError naming file, line and key.
#[pyfunction]
fn validate_params(config: &Bound<'_, PyDict>) -> PyResult<()> {
    params::from_dict(config)?
        .validate()
        .map_err(|e| CoreError(e).into())
}

/// Where the configuration's distortion folds the detector over: (R px, η deg) of the first
/// point on a ray from the beam centre at which the corrected radius stops growing, or None.
#[pyfunction]
fn distortion_fold(config: &Bound<'_, PyDict>) -> PyResult<Option<(f64, f64)>> {
    let p = params::from_dict(config)?;
    Ok(radint_core::geometry::Geometry::new(&p).distortion_fold(p.n_pixels_y, p.n_pixels_z))
}

/// Radial edges (R px) and η edges (deg) of a configuration.
#[allow(clippy::type_complexity)]
#[pyfunction]
fn bin_edges<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>)> {
    let p = params::from_dict(config)?;
    p.validate().map_err(CoreError)?;
    let r = bins::radial_edges(&p).map_err(CoreError)?;
    let eta = bins::eta_edges(&p).map_err(CoreError)?;
    Ok((r.into_pyarray(py), eta.into_pyarray(py)))
}

/// The MIDAS C parameter-hash string and its SHA-256 in hex (spec §4.3).
#[pyfunction]
fn param_hash(config: &Bound<'_, PyDict>) -> PyResult<(String, String)> {
    let p = params::from_dict(config)?;
    Ok((
        midas_files::param_hash_string(&p),
        midas_files::hex(&midas_files::param_hash(&p)),
    ))
}

/// An optional array copied out of Python: the map builder owns its inputs (mask, distortion
/// maps: one image each, read once per map) while the GIL is released.
fn optional_vec<T: numpy::Element + Copy>(
    what: &str,
    a: Option<PyReadonlyArrayDyn<'_, T>>,
) -> PyResult<Option<Vec<T>>> {
    a.map(|a| {
        a.as_slice()
            .map(|s| s.to_vec())
            .map_err(|_| shape_error(format!("{what}: expected a C-contiguous array")))
    })
    .transpose()
}

fn map_inputs(
    p: &Params,
    mask: Option<PyReadonlyArrayDyn<'_, u8>>,
    distortion_y: Option<PyReadonlyArrayDyn<'_, f64>>,
    distortion_z: Option<PyReadonlyArrayDyn<'_, f64>>,
    residual: Option<PyReadonlyArrayDyn<'_, f64>>,
    panel_shifts: Option<(String, String)>,
) -> PyResult<MapInputs> {
    let mut panel_list = if p.n_panels_y > 0 && p.n_panels_z > 0 {
        panels::layout(p)
    } else {
        Vec::new()
    };
    if let Some((source, text)) = panel_shifts {
        panels::apply_shifts(&mut panel_list, &text, &source).map_err(CoreError)?;
    }
    Ok(MapInputs {
        mask: optional_vec("mask", mask)?,
        distortion_y: optional_vec("distortion map ΔY", distortion_y)?,
        distortion_z: optional_vec("distortion map ΔZ", distortion_z)?,
        residual: optional_vec("residual correction map", residual)?,
        panels: panel_list,
    })
}

/// Build the exact detector map.
#[pyfunction]
#[pyo3(signature = (config, mask=None, distortion_y=None, distortion_z=None, residual=None, panel_shifts=None, n_threads=None))]
#[allow(clippy::too_many_arguments)]
fn build_map(
    py: Python<'_>,
    config: &Bound<'_, PyDict>,
    mask: Option<PyReadonlyArrayDyn<'_, u8>>,
    distortion_y: Option<PyReadonlyArrayDyn<'_, f64>>,
    distortion_z: Option<PyReadonlyArrayDyn<'_, f64>>,
    residual: Option<PyReadonlyArrayDyn<'_, f64>>,
    panel_shifts: Option<(String, String)>,
    n_threads: Option<usize>,
) -> PyResult<MapCore> {
    let p = params::from_dict(config)?;
    let inputs = map_inputs(&p, mask, distortion_y, distortion_z, residual, panel_shifts)?;
    let (map, fold) = run_detached(py, n_threads, || map::build_with_fold(&p, inputs))?;
    let mut core = MapCore::new(map);
    core.fold = fold;
    Ok(core)
}

/// Per raw pixel: R (px), η (deg) of its centre and its exact relative solid angle.
#[pyfunction]
#[pyo3(signature = (config, distortion_y=None, distortion_z=None, residual=None, panel_shifts=None, n_threads=None))]
#[allow(clippy::type_complexity)]
fn pixel_centres<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyDict>,
    distortion_y: Option<PyReadonlyArrayDyn<'py, f64>>,
    distortion_z: Option<PyReadonlyArrayDyn<'py, f64>>,
    residual: Option<PyReadonlyArrayDyn<'py, f64>>,
    panel_shifts: Option<(String, String)>,
    n_threads: Option<usize>,
) -> PyResult<(
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
)> {
    let p = params::from_dict(config)?;
    let inputs = map_inputs(&p, None, distortion_y, distortion_z, residual, panel_shifts)?;
    let (r, eta, solid_angle) = run_detached(py, n_threads, || map::pixel_centres(&p, &inputs))?;
    Ok((
        r.into_pyarray(py),
        eta.into_pyarray(py),
        solid_angle.into_pyarray(py),
    ))
}

/// Each raw pixel's whole area (px², flat) in the corrected plane (see the core's
/// `map::pixel_areas`).
#[pyfunction]
#[pyo3(signature = (config, distortion_y=None, distortion_z=None, residual=None, panel_shifts=None, n_threads=None))]
fn pixel_areas<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyDict>,
    distortion_y: Option<PyReadonlyArrayDyn<'py, f64>>,
    distortion_z: Option<PyReadonlyArrayDyn<'py, f64>>,
    residual: Option<PyReadonlyArrayDyn<'py, f64>>,
    panel_shifts: Option<(String, String)>,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let p = params::from_dict(config)?;
    let inputs = map_inputs(&p, None, distortion_y, distortion_z, residual, panel_shifts)?;
    let areas = run_detached(py, n_threads, || map::pixel_areas(&p, inputs))?;
    Ok(areas.into_pyarray(py))
}

/// A detector map owned by Rust; its arrays are exposed as read-only numpy views (no copy).
#[pyclass(module = "radint._core", name = "MapCore", frozen)]
pub struct MapCore {
    map: DetectorMap,
    /// Σ area per bin, computed on first integration and kept.
    bin_area: OnceLock<Vec<f64>>,
    /// Pixel corners the build found at a negative corrected R (None when built otherwise).
    fold: Option<map::Fold>,
}

impl MapCore {
    fn new(map: DetectorMap) -> MapCore {
        MapCore {
            map,
            bin_area: OnceLock::new(),
            fold: None,
        }
    }
}

/// A read-only numpy view of a slice owned by `owner`.
fn view<'py, T: numpy::Element>(
    owner: &Bound<'py, MapCore>,
    data: &[T],
) -> Bound<'py, PyArray1<T>> {
    let array = ArrayView1::from(data);
    // SAFETY: `data` lives inside the frozen `MapCore` that the array keeps alive as its base object,
    // and nothing mutates a MapCore after construction.
    let out = unsafe { PyArray1::borrow_from_array(&array, owner.clone().into_any()) };
    out.readwrite().make_nonwriteable();
    out
}

/// A map's per-entry arrays, owned or read in place from a file.
struct Entries {
    indptr: Storage<u64>,
    pixel: Storage<u32>,
    area: Storage<f32>,
    delta_r: Option<Storage<f32>>,
    weight: Option<Storage<f64>>,
}

/// A map's per-bin arrays, copied out of numpy.
struct Bins {
    r_edges: Vec<f64>,
    eta_edges: Vec<f64>,
    mask_hit: Option<Vec<u8>>,
    bin_geometric_area: Option<Vec<f64>>,
}

impl Bins {
    fn from_numpy(
        r_edges: PyReadonlyArray1<'_, f64>,
        eta_edges: PyReadonlyArray1<'_, f64>,
        mask_hit: Option<PyReadonlyArray1<'_, u8>>,
        bin_geometric_area: Option<PyReadonlyArray1<'_, f64>>,
    ) -> PyResult<Bins> {
        Ok(Bins {
            r_edges: r_edges.to_vec()?,
            eta_edges: eta_edges.to_vec()?,
            mask_hit: mask_hit.map(|m| m.to_vec()).transpose()?,
            bin_geometric_area: bin_geometric_area.map(|g| g.to_vec()).transpose()?,
        })
    }
}

/// The map of `bins` and `entries` (no delta_r: zeros; no mask_hit: none hit; no geometric
/// areas: the entries' own), checked. Runs rayon (`bin_area`): call it inside `run_detached`.
fn assemble(n_y: usize, n_z: usize, bins: Bins, entries: Entries) -> radint_core::Result<MapCore> {
    let nnz = entries.pixel.len();
    let mut map = DetectorMap {
        n_y,
        n_z,
        r_edges: bins.r_edges,
        eta_edges: bins.eta_edges,
        indptr: entries.indptr,
        pixel: entries.pixel,
        area: entries.area,
        delta_r: entries.delta_r.unwrap_or_else(|| vec![0.0; nnz].into()),
        weight: entries.weight,
        // Weights read back are MIDAS's (or unknown): summed in the C order.
        weights_in_any_order: false,
        mask_hit: Vec::new(),
        bin_geometric_area: Vec::new(),
        derived: Default::default(),
    };
    let n_bins = map.n_bins();
    map.mask_hit = bins.mask_hit.unwrap_or_else(|| vec![0; n_bins]);
    let derive_area = bins.bin_geometric_area.is_none();
    map.bin_geometric_area = bins.bin_geometric_area.unwrap_or_else(|| vec![0.0; n_bins]);
    map.check()?;
    if derive_area {
        // Only once the entries are known to be well formed: the sums index by `indptr`.
        map.bin_geometric_area = map.bin_area();
    }
    Ok(MapCore::new(map))
}

#[pymethods]
impl MapCore {
    /// Assemble a map from CSR arrays (copied into Rust memory once); checked on `n_threads`
    /// threads with the GIL released.
    #[staticmethod]
    #[pyo3(signature = (n_y, n_z, r_edges, eta_edges, indptr, pixel, area, delta_r=None, weight=None, mask_hit=None, bin_geometric_area=None, n_threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_arrays(
        py: Python<'_>,
        n_y: usize,
        n_z: usize,
        r_edges: PyReadonlyArray1<'_, f64>,
        eta_edges: PyReadonlyArray1<'_, f64>,
        indptr: PyReadonlyArray1<'_, u64>,
        pixel: PyReadonlyArray1<'_, u32>,
        area: PyReadonlyArray1<'_, f32>,
        delta_r: Option<PyReadonlyArray1<'_, f32>>,
        weight: Option<PyReadonlyArray1<'_, f64>>,
        mask_hit: Option<PyReadonlyArray1<'_, u8>>,
        bin_geometric_area: Option<PyReadonlyArray1<'_, f64>>,
        n_threads: Option<usize>,
    ) -> PyResult<MapCore> {
        let entries = Entries {
            indptr: indptr.to_vec()?.into(),
            pixel: pixel.to_vec()?.into(),
            area: area.to_vec()?.into(),
            delta_r: delta_r.map(|d| d.to_vec()).transpose()?.map(Storage::from),
            weight: weight.map(|w| w.to_vec()).transpose()?.map(Storage::from),
        };
        let bins = Bins::from_numpy(r_edges, eta_edges, mask_hit, bin_geometric_area)?;
        run_detached(py, n_threads, || {
            let core = assemble(n_y, n_z, bins, entries)?;
            core.map.check_areas()?;
            Ok(core)
        })
    }

    /// Assemble a map whose entry arrays are read in place from the file at `path`, mapped
    /// read-only into memory (not copied): each is given as `(byte offset, count)` of
    /// little-endian values of the `from_arrays` dtype. On `n_threads` threads with the GIL
    /// released.
    #[staticmethod]
    #[pyo3(signature = (path, n_y, n_z, r_edges, eta_edges, indptr, pixel, area, delta_r, weight=None, mask_hit=None, bin_geometric_area=None, n_threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_file(
        py: Python<'_>,
        path: PathBuf,
        n_y: usize,
        n_z: usize,
        r_edges: PyReadonlyArray1<'_, f64>,
        eta_edges: PyReadonlyArray1<'_, f64>,
        indptr: (usize, usize),
        pixel: (usize, usize),
        area: (usize, usize),
        delta_r: (usize, usize),
        weight: Option<(usize, usize)>,
        mask_hit: Option<PyReadonlyArray1<'_, u8>>,
        bin_geometric_area: Option<PyReadonlyArray1<'_, f64>>,
        n_threads: Option<usize>,
    ) -> PyResult<MapCore> {
        if cfg!(target_endian = "big") {
            return Err(raise(
                "InvalidInputError",
                "map caches are little-endian; read them with from_arrays on this machine".into(),
            ));
        }
        let bins = Bins::from_numpy(r_edges, eta_edges, mask_hit, bin_geometric_area)?;
        run_detached(py, n_threads, || {
            let file = MappedFile::open(&path)?;
            let entries = Entries {
                indptr: Storage::mapped(&file, indptr.0, indptr.1, "indptr")?,
                pixel: Storage::mapped(&file, pixel.0, pixel.1, "pixel")?,
                area: Storage::mapped(&file, area.0, area.1, "area")?,
                delta_r: Some(Storage::mapped(&file, delta_r.0, delta_r.1, "delta_r")?),
                weight: weight
                    .map(|(at, n)| Storage::mapped(&file, at, n, "weight"))
                    .transpose()?,
            };
            assemble(n_y, n_z, bins, entries)
        })
    }

    #[getter]
    fn n_y(&self) -> usize {
        self.map.n_y
    }
    /// `(corners, worst R px, y, z, behind)` of the pixel corners the build mapped to a
    /// negative corrected R (y, z of the worst one, transformed image), and of those at
    /// 2θ ≥ 90° (their pixels left out), or None.
    #[getter]
    fn fold(&self) -> Option<(u64, f64, f64, f64, u64)> {
        self.fold.map(|f| {
            (
                f.corners,
                f.worst_r_px,
                f.worst_at.0,
                f.worst_at.1,
                f.behind,
            )
        })
    }
    #[getter]
    fn n_z(&self) -> usize {
        self.map.n_z
    }
    #[getter]
    fn n_r(&self) -> usize {
        self.map.n_r()
    }
    #[getter]
    fn n_eta(&self) -> usize {
        self.map.n_eta()
    }
    #[getter]
    fn n_entries(&self) -> usize {
        self.map.n_entries()
    }
    /// Whether the entry arrays are read in place from a mapped file (`from_file`).
    #[getter]
    fn entries_mapped(&self) -> bool {
        self.map.pixel.is_mapped()
    }
    #[getter]
    fn r_edges<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyArray1<f64>> {
        view(slf, &slf.get().map.r_edges)
    }
    #[getter]
    fn eta_edges<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyArray1<f64>> {
        view(slf, &slf.get().map.eta_edges)
    }
    #[getter]
    fn indptr<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyArray1<u64>> {
        view(slf, &slf.get().map.indptr)
    }
    #[getter]
    fn pixel<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyArray1<u32>> {
        view(slf, &slf.get().map.pixel)
    }
    #[getter]
    fn area<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyArray1<f32>> {
        view(slf, &slf.get().map.area)
    }
    #[getter]
    fn delta_r<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyArray1<f32>> {
        view(slf, &slf.get().map.delta_r)
    }
    #[getter]
    fn weight<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyArray1<f64>>> {
        slf.get().map.weight.as_deref().map(|w| view(slf, w))
    }
    #[getter]
    fn mask_hit<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyArray1<u8>> {
        view(slf, &slf.get().map.mask_hit)
    }
    #[getter]
    fn bin_geometric_area<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyArray1<f64>> {
        view(slf, &slf.get().map.bin_geometric_area)
    }

    /// The pixels each radial row shares between η bins and the weights of their covariance
    /// in the row's lineout variance: `(indptr` (n_r + 1), `pixel`, `weight)`, built on first use
    /// on `n_threads` threads with the GIL released.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (n_threads=None))]
    fn eta_cross<'py>(
        slf: &Bound<'py, Self>,
        n_threads: Option<usize>,
    ) -> PyResult<(
        Bound<'py, PyArray1<u64>>,
        Bound<'py, PyArray1<u32>>,
        Bound<'py, PyArray1<f64>>,
    )> {
        let map = &slf.get().map;
        let cross = run_detached(slf.py(), n_threads, || Ok(map.eta_cross()))?;
        Ok((
            view(slf, &cross.indptr),
            view(slf, &cross.pixel),
            view(slf, &cross.weight),
        ))
    }

    /// Whether `nonfinite` NaN / ±inf values over `n_frames` frames are few enough that the
    /// kernels of frames whose every value counts, with the bins those values spoil summed
    /// again, beat the kernels that test every value (then a folded map takes such frames).
    fn spoils_few_bins(&self, n_frames: usize, nonfinite: usize) -> bool {
        core_integrate::few_spoiled_bins(&self.map, n_frames, nonfinite)
    }

    /// This map with MIDAS `GradientCorrection` applied (bilinear signal weights at each
    /// entry's bin radius), for `config`'s beam centre and ImTransOpt.
    fn gradient_resampled(&self, py: Python<'_>, config: &Bound<'_, PyDict>) -> PyResult<MapCore> {
        let p = params::from_dict(config)?;
        let (n_y, n_z) = (self.map.n_y, self.map.n_z);
        if (p.n_pixels_y, p.n_pixels_z) != (n_y, n_z) {
            return Err(shape_error(format!(
                "gradient correction: the map is {n_y}x{n_z} pixels, the parameters say {}x{}",
                p.n_pixels_y, p.n_pixels_z
            )));
        }
        let transform = ImageTransform::new(&p.im_trans_opt, n_y, n_z);
        let bc = (p.bc_y_px, p.bc_z_px);
        let aspect = p.pixel_aspect();
        let map = detached(py, || {
            Ok(map::gradient_resampled(&self.map, &transform, bc, aspect))
        })?;
        Ok(MapCore::new(map))
    }

    /// This map with each entry's area divided by its pixel's `whole` area (see the core's
    /// `DetectorMap::with_pixel_fractions`).
    #[pyo3(signature = (whole, n_threads=None))]
    fn with_pixel_fractions(
        &self,
        py: Python<'_>,
        whole: PyReadonlyArray1<'_, f64>,
        n_threads: Option<usize>,
    ) -> PyResult<MapCore> {
        let whole = whole
            .as_slice()
            .map_err(|_| shape_error("whole: expected a contiguous array".into()))?;
        let map = run_detached(py, n_threads, || self.map.with_pixel_fractions(whole))?;
        Ok(MapCore::new(map))
    }

    /// This map with a fixed per-pixel `scale` and `dark` folded into its weights, and the
    /// per-bin signal offset to pass to `integrate(..., signal_offset=)` (see the core's
    /// `DetectorMap::folded`): integer frames then take the NaN-free kernel.
    #[pyo3(signature = (scale=None, dark=None, n_threads=None))]
    fn folded<'py>(
        &self,
        py: Python<'py>,
        scale: Option<PyReadonlyArray1<'py, f64>>,
        dark: Option<PyReadonlyArray1<'py, f64>>,
        n_threads: Option<usize>,
    ) -> PyResult<(MapCore, Bound<'py, PyArray1<f64>>)> {
        let scale = contiguous_opt(&scale, "scale")?;
        let dark = contiguous_opt(&dark, "dark")?;
        let (map, offset) = run_detached(py, n_threads, || self.map.folded(scale, dark))?;
        Ok((MapCore::new(map), offset.into_pyarray(py)))
    }

    /// Write Map.bin / nMap.bin / maskMap.bin (MIDAS format) into `directory`.
    #[pyo3(signature = (directory, config, frac_factor=None))]
    fn save_midas(
        &self,
        py: Python<'_>,
        directory: PathBuf,
        config: &Bound<'_, PyDict>,
        frac_factor: Option<PyReadonlyArray1<'_, f64>>,
    ) -> PyResult<()> {
        let p = params::from_dict(config)?;
        let header = MapHeader::for_params(&p);
        let factor = frac_factor.map(|f| f.to_vec()).transpose()?;
        if let Some(f) = &factor {
            if f.len() != self.map.n_pixels() {
                return Err(shape_error(format!(
                    "frac_factor: expected {} values, got {}",
                    self.map.n_pixels(),
                    f.len()
                )));
            }
        }
        detached(py, || {
            midas_files::write(&self.map, &directory, &header, factor.as_deref())
        })
    }
}

/// Read a MIDAS map from `directory` on `n_threads` threads with the GIL released; returns the
/// map and a dict of header facts.
#[pyfunction]
#[pyo3(signature = (directory, config, sampling="bilinear", gradient_centre=None, n_threads=None))]
fn load_midas<'py>(
    py: Python<'py>,
    directory: PathBuf,
    config: &Bound<'py, PyDict>,
    sampling: &str,
    gradient_centre: Option<(f64, f64)>,
    n_threads: Option<usize>,
) -> PyResult<(MapCore, Bound<'py, PyDict>)> {
    let p = params::from_dict(config)?;
    let sampling = match sampling {
        "bilinear" => Sampling::Bilinear,
        "floor" => Sampling::Floor,
        other => {
            return Err(raise(
                "InvalidInputError",
                format!("sampling must be 'bilinear' or 'floor', got '{other}'"),
            ))
        }
    };
    let opts = ReadOptions {
        sampling,
        gradient_centre,
    };
    let (map, info) = run_detached(py, n_threads, || midas_files::read(&directory, &p, opts))?;
    let d = PyDict::new(py);
    d.set_item("has_header", info.header.is_some())?;
    d.set_item("hash_matches", info.hash_matches)?;
    d.set_item("n_records", info.n_records)?;
    if let Some(h) = info.header {
        d.set_item("param_hash", midas_files::hex(&h.param_hash))?;
        d.set_item("q_mode", h.q_mode)?;
        d.set_item("gradient_mode", h.gradient_mode)?;
        d.set_item("wavelength_angstrom", h.wavelength_angstrom)?;
    }
    Ok((MapCore::new(map), d))
}

/// A frame (or stack) of any supported dtype, borrowed in place.
enum Frames<'py> {
    U8(PyReadonlyArrayDyn<'py, u8>),
    U16(PyReadonlyArrayDyn<'py, u16>),
    U32(PyReadonlyArrayDyn<'py, u32>),
    I32(PyReadonlyArrayDyn<'py, i32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

impl<'py> Frames<'py> {
    fn extract(obj: &Bound<'py, PyAny>) -> PyResult<Frames<'py>> {
        macro_rules! try_type {
            ($t:ty, $v:ident) => {
                if let Ok(a) = obj.cast::<PyArrayDyn<$t>>() {
                    return Ok(Frames::$v(a.readonly()));
                }
            };
        }
        try_type!(u16, U16);
        try_type!(u32, U32);
        try_type!(i32, I32);
        try_type!(f32, F32);
        try_type!(f64, F64);
        try_type!(u8, U8);
        try_type!(i64, I64);
        let dtype = obj
            .getattr("dtype")
            .map(|d| d.to_string())
            .unwrap_or_else(|_| obj.get_type().to_string());
        Err(raise(
            "DtypeError",
            format!("frame dtype must be uint8, uint16, uint32, int32, int64, float32 or float64, got {dtype}"),
        ))
    }

    fn dtype_name(&self) -> &'static str {
        match self {
            Frames::U8(_) => "uint8",
            Frames::U16(_) => "uint16",
            Frames::U32(_) => "uint32",
            Frames::I32(_) => "int32",
            Frames::I64(_) => "int64",
            Frames::F32(_) => "float32",
            Frames::F64(_) => "float64",
        }
    }

    fn shape(&self) -> Vec<usize> {
        match self {
            Frames::U8(a) => a.shape().to_vec(),
            Frames::U16(a) => a.shape().to_vec(),
            Frames::U32(a) => a.shape().to_vec(),
            Frames::I32(a) => a.shape().to_vec(),
            Frames::I64(a) => a.shape().to_vec(),
            Frames::F32(a) => a.shape().to_vec(),
            Frames::F64(a) => a.shape().to_vec(),
        }
    }
}

/// An optional 1-D array as a slice; a non-contiguous one is refused, naming it.
fn contiguous_opt<'a>(
    a: &'a Option<PyReadonlyArray1<'_, f64>>,
    what: &str,
) -> PyResult<Option<&'a [f64]>> {
    a.as_ref()
        .map(|a| a.as_slice())
        .transpose()
        .map_err(|_| shape_error(format!("{what}: expected a contiguous array")))
}

fn contiguous<'a, T: numpy::Element>(a: &'a PyReadonlyArrayDyn<'_, T>) -> PyResult<&'a [T]> {
    let refuse =
        || shape_error("frame: expected a C-contiguous array (use numpy.ascontiguousarray)".into());
    // as_slice also takes Fortran order, whose memory order is the transposed frame.
    if !a.is_c_contiguous() {
        return Err(refuse());
    }
    a.as_slice().map_err(|_| {
        shape_error(
            "frame: its pixels are not aligned to their dtype (e.g. viewed in a byte buffer at \
             an odd offset); pass a copy (numpy.array(frame))"
                .into(),
        )
    })
}

/// Integrate one frame `(n_z, n_y)`, a stack `(n_frames, n_z, n_y)` or a list of frames
/// `(n_z, n_y)` of one dtype (integrated as one stack); returns a dict of flat frame-major
/// arrays: per-bin sums (`signal`, `area`, `count`, `variance`) in bin order `r·n_eta + e`,
/// `cake` and `cake_sigma` η-major (`e·n_r + r`), lineouts `n_r` per frame.
#[pyfunction]
#[pyo3(signature = (map, frames, dark=None, scale=None, error_model="none", variance=None, precision="float64", normalize=true, rules="radint", lineout="area_weighted", empty_value=f64::NAN, nan_masked_bins=false, n_threads=None, signal_offset=None, nonfinite=None, offset_dark=None))]
#[allow(clippy::too_many_arguments)]
fn integrate<'py>(
    py: Python<'py>,
    map: &Bound<'py, MapCore>,
    frames: &Bound<'py, PyAny>,
    dark: Option<PyReadonlyArray1<'py, f64>>,
    scale: Option<PyReadonlyArray1<'py, f64>>,
    error_model: &str,
    variance: Option<PyReadonlyArray1<'py, f64>>,
    precision: &str,
    normalize: bool,
    rules: &str,
    lineout: &str,
    empty_value: f64,
    nan_masked_bins: bool,
    n_threads: Option<usize>,
    signal_offset: Option<PyReadonlyArray1<'py, f64>>,
    nonfinite: Option<usize>,
    offset_dark: Option<PyReadonlyArray1<'py, f64>>,
) -> PyResult<Bound<'py, PyDict>> {
    let core = map.get();
    let m = &core.map;
    // One array (a frame or a stack), or a list of frames that may live anywhere: integrated
    // as one stack all the same, without gathering them into one buffer first.
    let parts = frame_parts(frames)?;
    let listed = frames.is_instance_of::<PyList>();
    let mut n_frames = 0;
    for (k, part) in parts.iter().enumerate() {
        let shape = part.shape();
        n_frames += match shape.as_slice() {
            [z, y] if (*z, *y) == (m.n_z, m.n_y) => 1,
            [n, z, y] if !listed && (*z, *y) == (m.n_z, m.n_y) => *n,
            _ if listed => {
                return Err(shape_error(format!(
                    "frames[{k}]: expected shape ({}, {}) (rows, columns), got {:?}",
                    m.n_z, m.n_y, shape
                )))
            }
            _ => {
                return Err(shape_error(format!(
                "frame: expected shape ({}, {}) or (n_frames, {}, {}) (rows, columns), got {:?}",
                m.n_z, m.n_y, m.n_z, m.n_y, shape
            )))
            }
        };
    }
    let n_pixels = m.n_pixels().max(1);
    let dark = contiguous_opt(&dark, "dark")?;
    let scale = contiguous_opt(&scale, "scale")?;
    let variance = contiguous_opt(&variance, "variance")?;
    // The azimuthal spread is a pass of its own after the sums (which then need no variance).
    let azimuthal = error_model == "azimuthal";
    let error_model = match (error_model, variance) {
        ("none" | "azimuthal", _) => ErrorModel::None,
        ("poisson", _) => ErrorModel::Poisson,
        ("given", Some(v)) => ErrorModel::Given(v),
        (other, _) => {
            return Err(raise(
                "InvalidInputError",
                format!(
                "error_model must be 'none', 'poisson', 'azimuthal' or 'given' (with variance=), \
                 got '{other}'"
            ),
            ))
        }
    };
    let precision = match precision {
        "float64" => Precision::Double,
        "float32" => Precision::Single,
        other => {
            return Err(raise(
                "InvalidInputError",
                format!("precision must be 'float64' or 'float32', got '{other}'"),
            ))
        }
    };
    let rules = match rules {
        "radint" => Rules::Radint,
        "midas-cpu" => Rules::MidasCpu,
        "midas-gpu" => Rules::MidasGpu,
        other => {
            return Err(raise(
                "InvalidInputError",
                format!("compat must be None, 'midas-cpu' or 'midas-gpu', got '{other}'"),
            ))
        }
    };
    let lineout = match lineout {
        "area_weighted" => LineoutMode::AreaWeighted,
        "midas_nonzero_mean" => LineoutMode::NonzeroMean,
        other => {
            return Err(raise(
                "InvalidInputError",
                format!(
                    "lineout_mode must be 'area_weighted' or 'midas_nonzero_mean', got '{other}'"
                ),
            ))
        }
    };
    let signal_offset = contiguous_opt(&signal_offset, "signal_offset")?;
    let offset_dark = contiguous_opt(&offset_dark, "offset_dark")?;
    if azimuthal && (rules != Rules::Radint || lineout != LineoutMode::AreaWeighted) {
        return Err(raise(
            "InvalidInputError",
            "error_model='azimuthal' takes radint's rules and the area-weighted lineout (no \
             compat, no midas_nonzero_mean)"
                .to_string(),
        ));
    }
    if azimuthal && precision != Precision::Double {
        return Err(raise(
            "InvalidInputError",
            "error_model='azimuthal' takes float64 sums: the spread is taken about each bin's \
             mean, and float32 sums put that mean's rounding into it"
                .to_string(),
        ));
    }
    if azimuthal && signal_offset.is_some() {
        return Err(raise(
            "InvalidInputError",
            "error_model='azimuthal' needs the pixels' own values: not on a folded map \
             (signal_offset)"
                .to_string(),
        ));
    }
    let opts = core_integrate::Options {
        dark,
        scale,
        error_model,
        precision,
        // Filled in inside the pool: the first call sums it in parallel.
        bin_area: None,
        signal_offset,
        offset_dark,
        nonfinite,
    };
    let fin = FinalizeOptions {
        normalize,
        rules,
        lineout,
        empty_value,
        nan_masked_bins,
    };
    macro_rules! run {
        ($variant:ident) => {{
            let mut slices = Vec::with_capacity(n_frames);
            for (k, part) in parts.iter().enumerate() {
                let Frames::$variant(a) = part else {
                    return Err(raise(
                        "DtypeError",
                        format!(
                            "frames[{k}]: all frames must share one dtype, got {} and {}",
                            parts[0].dtype_name(),
                            part.dtype_name()
                        ),
                    ));
                };
                slices.extend(contiguous(a)?.chunks_exact(n_pixels));
            }
            run_detached(py, n_threads, || {
                let opts = core_integrate::Options {
                    bin_area: Some(core.bin_area.get_or_init(|| m.bin_area())),
                    ..opts
                };
                let mut sums = core_integrate::integrate(m, &slices, &opts)?;
                if azimuthal {
                    let spread = core_integrate::azimuthal_spread(m, &slices, dark, scale, &sums)?;
                    sums.variance = spread.variance;
                    sums.lineout_cross = spread.lineout_cross;
                }
                let f = core_integrate::finalize(m, &sums, &fin);
                Ok((sums, f))
            })?
        }};
    }
    let Some(first) = parts.first() else {
        return Err(shape_error("frames: an empty list".into()));
    };
    let (sums, fin): (Sums, core_integrate::Finalized) = match first {
        Frames::U8(_) => run!(U8),
        Frames::U16(_) => run!(U16),
        Frames::U32(_) => run!(U32),
        Frames::I32(_) => run!(I32),
        Frames::I64(_) => run!(I64),
        Frames::F32(_) => run!(F32),
        Frames::F64(_) => run!(F64),
    };
    let d = PyDict::new(py);
    d.set_item("n_frames", n_frames)?;
    d.set_item("nonfinite", sums.nonfinite)?;
    d.set_item("signal", sums.signal.into_pyarray(py))?;
    d.set_item("area", sums.area.into_pyarray(py))?;
    d.set_item("count", sums.count.into_pyarray(py))?;
    if !sums.variance.is_empty() {
        d.set_item("variance", sums.variance.into_pyarray(py))?;
        d.set_item("cake_sigma", fin.cake_sigma.into_pyarray(py))?;
        d.set_item("lineout_sigma", fin.lineout_sigma.into_pyarray(py))?;
    }
    d.set_item("cake", fin.cake.into_pyarray(py))?;
    d.set_item("lineout", fin.lineout.into_pyarray(py))?;
    Ok(d)
}

/// A ShapeError naming `what` unless its `dst` and `src` hold as many `unit`s.
fn check_same_length(what: &str, dst: usize, src: usize, unit: &str) -> PyResult<()> {
    if dst != src {
        return Err(shape_error(format!(
            "{what}: dst holds {dst} {unit}, src {src}"
        )));
    }
    Ok(())
}

/// Copy the bytes of `src` into `dst` (1-D uint8 views of equal length) on `n_threads` threads
/// with the GIL released: the CUDA backend stages frames into pinned host memory with it.
#[pyfunction]
#[pyo3(signature = (dst, src, n_threads=None))]
fn copy_bytes(
    py: Python<'_>,
    mut dst: numpy::PyReadwriteArray1<'_, u8>,
    src: PyReadonlyArray1<'_, u8>,
    n_threads: Option<usize>,
) -> PyResult<()> {
    let src = src
        .as_slice()
        .map_err(|_| shape_error("copy_bytes: src must be contiguous".into()))?;
    let dst = dst
        .as_slice_mut()
        .map_err(|_| shape_error("copy_bytes: dst must be contiguous".into()))?;
    check_same_length("copy_bytes", dst.len(), src.len(), "bytes")?;
    run_detached(py, n_threads, || {
        radint_core::copy::copy_parallel(dst, src);
        Ok(())
    })
}

/// Decode bitshuffle/LZ4 chunks (HDF5 filter 32008, Eiger/Dectris frames) into the rows of
/// `out` (uint8, one contiguous row per chunk) on `n_threads` threads with the GIL released;
/// a damaged chunk is an InvalidInputError naming it, never a read past its end.
#[pyfunction]
#[pyo3(signature = (chunks, elem_size, out, n_threads=None))]
fn decode_bitshuffle_lz4(
    py: Python<'_>,
    chunks: Vec<Bound<'_, PyBytes>>,
    elem_size: usize,
    mut out: numpy::PyReadwriteArray2<'_, u8>,
    n_threads: Option<usize>,
) -> PyResult<()> {
    let row_bytes = out.shape()[1];
    let out = out
        .as_slice_mut()
        .map_err(|_| shape_error("decode_bitshuffle_lz4: out must be contiguous".into()))?;
    let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
    run_on(py, pool_for(Work::Decode, n_threads)?, || {
        radint_core::bitshuffle::decode_bitshuffle_lz4_many(&chunks, elem_size, out, row_bytes)
    })
}

/// How many elements of the integer array `frame` equal any of `values` (values its dtype
/// cannot hold match nothing), on `n_threads` threads with the GIL released.
#[pyfunction]
#[pyo3(signature = (frame, values, n_threads=None))]
fn count_equal(
    py: Python<'_>,
    frame: &Bound<'_, PyAny>,
    values: Vec<i64>,
    n_threads: Option<usize>,
) -> PyResult<usize> {
    let frames = Frames::extract(frame)?;
    macro_rules! count {
        ($a:expr) => {{
            let data = contiguous($a)?;
            let wanted: Vec<_> = values.iter().filter_map(|&v| v.try_into().ok()).collect();
            run_detached(py, n_threads, || Ok(scan::count_equal(data, &wanted)))
        }};
    }
    match &frames {
        Frames::U8(a) => count!(a),
        Frames::U16(a) => count!(a),
        Frames::U32(a) => count!(a),
        Frames::I32(a) => count!(a),
        Frames::I64(a) => count!(a),
        _ => Err(raise(
            "DtypeError",
            format!(
                "count_equal: integer frames only, got {}",
                frames.dtype_name()
            ),
        )),
    }
}

/// The arrays of `frames`: one array (a frame or a stack), or each of a list of frames that may
/// live anywhere.
fn frame_parts<'py>(frames: &Bound<'py, PyAny>) -> PyResult<Vec<Frames<'py>>> {
    match frames.cast::<PyList>() {
        Ok(list) => list.iter().map(|f| Frames::extract(&f)).collect(),
        Err(_) => Ok(vec![Frames::extract(frames)?]),
    }
}

/// The CRC-32 (ZIP's) of the contiguous uint8 array `data`, on `n_threads` threads with the
/// GIL released.
#[pyfunction]
#[pyo3(signature = (data, n_threads=None))]
fn crc32(
    py: Python<'_>,
    data: PyReadonlyArray1<'_, u8>,
    n_threads: Option<usize>,
) -> PyResult<u32> {
    let bytes = data
        .as_slice()
        .map_err(|_| shape_error("crc32: data must be contiguous".into()))?;
    run_detached(py, n_threads, || Ok(scan::crc32(bytes)))
}

/// The NaN and ±inf values in `frames` (an array of any shape, or a list of arrays; 0 for
/// integer dtypes), on `n_threads` threads with the GIL released.
#[pyfunction]
#[pyo3(signature = (frames, n_threads=None))]
fn count_nonfinite(
    py: Python<'_>,
    frames: &Bound<'_, PyAny>,
    n_threads: Option<usize>,
) -> PyResult<usize> {
    let parts = frame_parts(frames)?;
    let mut total = 0;
    for part in &parts {
        total += match part {
            Frames::F32(a) => {
                let data = contiguous(a)?;
                run_detached(py, n_threads, || Ok(scan::count_nonfinite(&[data])))?
            }
            Frames::F64(a) => {
                let data = contiguous(a)?;
                run_detached(py, n_threads, || Ok(scan::count_nonfinite(&[data])))?
            }
            _ => 0,
        };
    }
    Ok(total)
}

/// The flat indices of the NaN and ±inf values of one float `frame` (any shape,
/// C-contiguous), ascending, as uint32 (empty for integer dtypes); `n_threads` threads with the
/// GIL released.
#[pyfunction]
#[pyo3(signature = (frame, n_threads=None))]
fn nonfinite_pixels<'py>(
    py: Python<'py>,
    frame: &Bound<'py, PyAny>,
    n_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<u32>>> {
    let pixels = match Frames::extract(frame)? {
        Frames::F32(a) => {
            let data = contiguous(&a)?;
            run_detached(py, n_threads, || Ok(scan::nonfinite_pixels(data)))?
        }
        Frames::F64(a) => {
            let data = contiguous(&a)?;
            run_detached(py, n_threads, || Ok(scan::nonfinite_pixels(data)))?
        }
        _ => Vec::new(),
    };
    Ok(pixels.into_pyarray(py))
}

/// `src` (float64, C-contiguous) written into `dst` (float32, as many elements) where every
/// finite value is exactly a float32: the NaN and ±inf count, else None (`dst` partly
/// written). On `n_threads` threads with the GIL released.
#[pyfunction]
#[pyo3(signature = (src, dst, n_threads=None))]
fn narrow_to_f32(
    py: Python<'_>,
    src: PyReadonlyArrayDyn<'_, f64>,
    mut dst: numpy::PyReadwriteArrayDyn<'_, f32>,
    n_threads: Option<usize>,
) -> PyResult<Option<usize>> {
    let src = contiguous(&src)?;
    if !dst.is_c_contiguous() {
        return Err(shape_error(
            "narrow_to_f32: dst must be C-contiguous".into(),
        ));
    }
    let dst = dst
        .as_slice_mut()
        .map_err(|_| shape_error("narrow_to_f32: dst must be contiguous".into()))?;
    check_same_length("narrow_to_f32", dst.len(), src.len(), "values")?;
    run_detached(py, n_threads, || Ok(scan::narrow_to_f32(src, dst)))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<MapCore>()?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(parse_params, m)?)?;
    m.add_function(wrap_pyfunction!(validate_params, m)?)?;
    m.add_function(wrap_pyfunction!(bin_edges, m)?)?;
    m.add_function(wrap_pyfunction!(distortion_fold, m)?)?;
    m.add_function(wrap_pyfunction!(param_hash, m)?)?;
    m.add_function(wrap_pyfunction!(build_map, m)?)?;
    m.add_function(wrap_pyfunction!(pixel_centres, m)?)?;
    m.add_function(wrap_pyfunction!(pixel_areas, m)?)?;
    m.add_function(wrap_pyfunction!(load_midas, m)?)?;
    m.add_function(wrap_pyfunction!(integrate, m)?)?;
    m.add_function(wrap_pyfunction!(copy_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(count_equal, m)?)?;
    m.add_function(wrap_pyfunction!(decode_bitshuffle_lz4, m)?)?;
    m.add_function(wrap_pyfunction!(count_nonfinite, m)?)?;
    m.add_function(wrap_pyfunction!(crc32, m)?)?;
    m.add_function(wrap_pyfunction!(nonfinite_pixels, m)?)?;
    m.add_function(wrap_pyfunction!(narrow_to_f32, m)?)?;
    fit::register(m)?;
    Ok(())
}
