"""error_model="azimuthal" (pyFAI's): sigma from the spread of the corrected pixel values in
each bin, against its definition on radint's own map, against pyFAI, and how it is asked for
(Integrator, the ErrorModel key, the CLI) or refused."""

from __future__ import annotations

import numpy as np
import pytest

from radint import DetectorMap, IntegrationConfig, Integrator, InvalidInputError, RadintError
from radint.testing import ring_image


@pytest.fixture
def small_map(small_config):
    return DetectorMap.build(small_config)


def _by_definition(m: DetectorMap, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bin σ = √(Σ a²·(x − μ)²) / Σ a over its finite values, and per ring the same with
    each pixel once, its overlaps summed over the ring's η bins (bin-major cake, lineout)."""
    x = x.ravel()
    indptr, pixel, area = m.indptr.astype(np.int64), m.pixel, m.area.astype(np.float64)
    n_r, n_eta = m.n_r, m.n_eta
    cake = np.full(n_r * n_eta, np.nan)
    line = np.full(n_r, np.nan)
    for r in range(n_r):
        ring: dict[int, float] = {}
        for b in range(r * n_eta, (r + 1) * n_eta):
            p, a = pixel[indptr[b] : indptr[b + 1]], area[indptr[b] : indptr[b + 1]]
            ok = np.isfinite(x[p])
            p, a = p[ok], a[ok]
            if a.sum() > 0:
                mu = (a * x[p]).sum() / a.sum()
                cake[b] = np.sqrt((a**2 * (x[p] - mu) ** 2).sum()) / a.sum()
            for pp, aa in zip(p.tolist(), a.tolist()):
                ring[pp] = ring.get(pp, 0.0) + aa
        if ring:
            p = np.fromiter(ring, np.int64)
            a = np.fromiter(ring.values(), np.float64)
            mu = (a * x[p]).sum() / a.sum()
            line[r] = np.sqrt((a**2 * (x[p] - mu) ** 2).sum()) / a.sum()
    return cake.reshape(n_r, n_eta).T, line


def test_sigma_is_the_spread_of_the_corrected_values(small_config, small_map):
    """Cake and lineout sigmas equal the definition on the map's own entries, with a dark, a
    flat, masked and NaN pixels; the intensities are the Poisson integrator's."""
    rng = np.random.default_rng(5)
    shape = small_config.shape
    frame = ring_image(small_config, np.array([0.5, 1.2, 1.9]), fwhm_deg=0.1, amplitude=400.0,
                       background=50.0, dtype=np.float64)  # fmt: skip
    frame = rng.poisson(frame).astype(np.float64)
    frame[10:14, 20:40] = np.nan
    dark = rng.uniform(0.0, 5.0, shape)
    flat = rng.uniform(0.8, 1.2, shape)
    mask = np.zeros(shape, bool)
    mask[60:70, 90:100] = True
    kw = dict(detector_map=small_map, flat=flat, mask=mask, fit=None)
    az = Integrator(small_config, error_model="azimuthal", **kw).integrate(frame, dark=dark)
    po = Integrator(small_config, **kw).integrate(frame, dark=dark)
    np.testing.assert_array_equal(az.cake, po.cake)
    np.testing.assert_array_equal(az.lineout, po.lineout)
    x = (frame - dark) / flat
    x[mask] = np.nan
    cake, line = _by_definition(small_map, x)
    np.testing.assert_allclose(az.cake_sigma, cake, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(az.lineout_sigma, line, rtol=1e-9, atol=1e-12)
    # Another quantity than Poisson's (a ring's spread holds its profile across the bin).
    assert np.nanmedian(np.abs(az.lineout_sigma / po.lineout_sigma - 1)) > 0.05


def test_stacks_dtypes_sums_and_one_eta_bin(small_config, small_map):
    """A stack's frames are each their own; integer frames equal float ones; Normalize 0 gives
    σ of the sum (√ of the variance sum); with one η bin the cake's sigma is the lineout's."""
    rng = np.random.default_rng(8)
    frames = rng.poisson(200.0, (3, *small_config.shape)).astype(np.uint16)
    it = Integrator(small_config, detector_map=small_map, error_model="azimuthal", fit=None)
    stack = it.integrate_stack(frames)
    for k in range(3):
        one = it.integrate(frames[k].astype(np.float32))
        np.testing.assert_allclose(stack.cake_sigma[k], one.cake_sigma, rtol=1e-12)
        np.testing.assert_allclose(stack.lineout_sigma[k], one.lineout_sigma, rtol=1e-12)
    sums = Integrator(small_config.replace(normalize=0), detector_map=small_map,
                      error_model="azimuthal", fit=None).integrate(frames[0])  # fmt: skip
    np.testing.assert_allclose(sums.cake_sigma, stack.cake_sigma[0] * stack.area[0], rtol=1e-9)
    ring = small_config.replace(eta_bin_deg=360.0)
    whole = Integrator(ring, error_model="azimuthal", fit=None).integrate(frames[0])
    np.testing.assert_allclose(whole.cake_sigma[0], whole.lineout_sigma, rtol=1e-9)
    # The one-bin map's areas are its own float32 sums: the same to ~1e-8.
    np.testing.assert_allclose(whole.lineout_sigma, stack.lineout_sigma[0], rtol=1e-6)


def test_the_key_round_trips_and_the_file_says_what_was_applied(small_config, tmp_path):
    """``ErrorModel azimuthal`` (radint's key) is what error_model="config" reads; the result's
    configuration records the model applied, so a written parameter file integrates alike."""
    cfg = IntegrationConfig.from_text(small_config.midas_text() + "ErrorModel azimuthal\n", "p.txt")
    assert cfg.error_model == "azimuthal" and "ErrorModel azimuthal" in cfg.midas_text()
    assert "ErrorModel" not in small_config.midas_text()  # the default is not written
    frame = np.random.default_rng(2).poisson(100.0, cfg.shape)
    by_key = Integrator(cfg, fit=None).integrate(frame)
    by_arg = Integrator(small_config, error_model="azimuthal", fit=None).integrate(frame)
    np.testing.assert_array_equal(by_key.cake_sigma, by_arg.cake_sigma)
    assert by_arg.config.error_model == "azimuthal"
    none = Integrator(cfg.replace(error_model="none"), fit=None).integrate(frame)
    assert none.cake_sigma is None and none.lineout_sigma is None
    assert Integrator(cfg, error_model=None, fit=None).applied_config.error_model == "none"
    with pytest.raises(RadintError, match="ErrorModel.*poisson or azimuthal or none"):
        IntegrationConfig.from_text(small_config.midas_text() + "ErrorModel gaussian\n", "p.txt")


def test_refused_where_it_has_no_meaning(small_config, small_map):
    """MIDAS's compats (Poisson sigmas), the mean of non-zero η bins (no ring) and MIDAS-weighted
    maps (GradientCorrection) say so at construction."""
    cfg = small_config.replace(error_model="azimuthal")
    with pytest.raises(InvalidInputError, match="compat='midas-cpu'"):
        Integrator(cfg, compat="midas-cpu")
    with pytest.raises(InvalidInputError, match="compat='midas-gpu'"):
        Integrator(small_config, error_model="azimuthal", compat="midas-gpu")
    with pytest.raises(InvalidInputError, match="midas_nonzero_mean"):
        Integrator(cfg, detector_map=small_map, lineout_mode="midas_nonzero_mean")
    with pytest.raises(InvalidInputError, match="per-entry weights"):
        Integrator(cfg.replace(gradient_correction=True))
    with pytest.raises(InvalidInputError, match="'config', 'poisson', 'azimuthal' or None"):
        Integrator(small_config, detector_map=small_map, error_model="gaussian")
    # A variance given with a call takes the model's place, as for Poisson.
    it = Integrator(cfg, detector_map=small_map, fit=None)
    frame = np.full(small_config.shape, 4.0)
    given = it.integrate(frame, variance=np.full(small_config.shape, 4.0))
    assert np.nanmax(given.cake_sigma) > 0 == np.nanmax(it.integrate(frame).cake_sigma)


def test_matches_pyfai_azimuthal_error_model(tmp_path):
    """pyFAI's integrate1d(error_model="azimuthal"), unweighted full-split CSR: radint's lineout
    sigma equals the exact two-pass spread on pyFAI's own CSR matrix to a few 1e-6, and pyFAI's
    one-pass estimate (which its source calls an approximation) to its own ~1e-3 departure
    from that; the lineout of a 5° cake is the same (a pixel split between η bins counts once)."""
    pytest.importorskip("pyFAI")
    import scipy.sparse as sp
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    from pyFAI.method_registry import IntegrationMethod

    shape = (160, 140)
    det = Detector(pixel1=100e-6, pixel2=100e-6, max_shape=shape, orientation=2)
    ai = AzimuthalIntegrator(dist=0.08, poni1=0.004, poni2=0.006, rot1=0.3, rot2=-0.1,
                             rot3=1.1, detector=det, wavelength=1e-10)  # fmt: skip
    ai.write(str(tmp_path / "t.poni"))
    rng = np.random.default_rng(3)
    tth = ai.center_array(shape, unit="2th_deg")
    frame = rng.poisson(1000 + 3000 * np.exp(-(((tth - 20) / 0.6) ** 2))).astype(np.float64)
    flat = rng.uniform(0.8, 1.2, shape)
    f, offset_deg = -0.6, 25.0
    lo, step, n = 10.0, 0.25, 80
    method = IntegrationMethod.select_one_available(("full", "csr", "cython"), dim=1)
    ref = ai.integrate1d(frame, n + 10, method=method.unweighted, unit="2th_deg",
                         radial_range=(lo - 5 * step, lo + (n + 5) * step), correctSolidAngle=True,
                         polarization_factor=[f, np.radians(offset_deg)], flat=flat,
                         error_model="azimuthal")  # fmt: skip
    engine = list(ai.engines.values())[-1].engine
    csr = sp.csr_matrix((engine.data, engine.indices, engine.indptr),
                        shape=(engine.output_size, engine.input_size))  # fmt: skip
    norm = ai.solidAngleArray(absolute=False) * flat
    norm = norm * ai.polarization(factor=f, axis_offset=np.radians(offset_deg))
    x = frame.ravel() / norm.ravel()
    a = csr @ np.ones_like(x)
    mu = (csr @ x) / a
    sq = csr.multiply(csr)
    exact = np.sqrt(sq @ (x * x) - 2 * mu * (sq @ x) + mu * mu * (sq @ np.ones_like(x))) / a
    exact, pyfai = exact[5:-5], ref.sigma[5:-5]
    ok = ref.count[5:-5] > 0.5 * np.median(ref.count[ref.count > 0])
    assert ok.sum() > 40
    for eta_bin in (360.0, 5.0):
        cfg = IntegrationConfig.from_poni(
            tmp_path / "t.poni", tth_min_deg=lo, tth_max_deg=lo + n * step - 1e-9,
            tth_bin_deg=step, eta_bin_deg=eta_bin, polarization_fraction=f,
            polarization_plane_eta_deg=90 + offset_deg,
        )  # fmt: skip
        r = Integrator(cfg, pixel_weights="fraction", fit=None, solid_angle="exact",
                       polarization="kahn", flat=flat, error_model="azimuthal").integrate(frame)  # fmt: skip
        to_exact = np.abs(r.lineout_sigma / exact - 1)[ok]
        to_pyfai = np.abs(r.lineout_sigma / pyfai - 1)[ok]
        assert np.median(to_exact) < 1e-5 and to_exact.max() < 5e-5, (eta_bin, to_exact.max())
        assert np.median(to_pyfai) < 2e-3 and to_pyfai.max() < 1e-2, (eta_bin, to_pyfai.max())


def test_cli_integrate_with_the_key(tmp_path, small_config):
    """``radint integrate PARAMS frames 'ErrorModel azimuthal'`` writes the spread as the
    sigma, and the output's stored parameters say so."""
    import h5py
    import hdf5plugin  # noqa: F401  (the outputs' compression filters)
    import tifffile

    from radint.cli import main

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    frame = np.random.default_rng(4).poisson(300.0, small_config.shape).astype(np.uint32)
    tifffile.imwrite(tmp_path / "f.tif", frame)
    out = tmp_path / "out"
    assert main(["integrate", str(params), str(tmp_path / "f.tif"), "ErrorModel azimuthal",
                 "-o", str(out), "--quiet"]) == 0  # fmt: skip
    want = Integrator(small_config, error_model="azimuthal", fit=None).integrate(frame)
    (written,) = out.glob("*.h5")
    with h5py.File(written) as h:
        np.testing.assert_allclose(h["entry/azint1d/data/I_errors"][0], want.lineout_sigma,
                                   rtol=1e-12)  # fmt: skip
        assert h["entry/azint1d/reduction/input/error_model"][()] == b"azimuthal"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_cuda_spread_equals_the_cpu(small_config, small_map, dtype):
    """The CUDA path (ri_spread_* after the CSR sums, then ri_lineout) gives the Rust engine's
    azimuthal sigmas: single frames and stacks (passes of 8 and frames in lanes), with a dark,
    a mask, NaN pixels, one η bin, and a variance given with a call in its place."""
    from radint.gpu import cuda_available

    if not cuda_available()[0]:
        pytest.skip(f"no CUDA: {cuda_available()[1]}")
    rng = np.random.default_rng(11)
    frames = rng.poisson(300.0, (11, *small_config.shape)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        frames[2, 5:9, 30:40] = np.nan
    dark = rng.uniform(0.0, 4.0, small_config.shape)
    mask = np.zeros(small_config.shape, bool)
    mask[40:50, 10:30] = True
    for cfg in (small_config, small_config.replace(eta_bin_deg=360.0)):
        m = small_map if cfg is small_config else DetectorMap.build(cfg)
        kw = dict(detector_map=m, mask=mask, dark=dark, error_model="azimuthal", fit=None)
        cpu = Integrator(cfg, backend="cpu", **kw)
        cuda = Integrator(cfg, backend="cuda", **kw)
        for got, want in (
            (cuda.integrate(frames[0]), cpu.integrate(frames[0])),
            (cuda.integrate_stack(frames), cpu.integrate_stack(frames)),
            (cuda.integrate(frames[1], variance=np.full(cfg.shape, 9.0)),
             cpu.integrate(frames[1], variance=np.full(cfg.shape, 9.0))),
        ):  # fmt: skip
            for k in ("cake", "lineout", "cake_sigma", "lineout_sigma"):
                np.testing.assert_allclose(getattr(got, k), getattr(want, k), rtol=1e-11,
                                           atol=1e-13, equal_nan=True, err_msg=k)  # fmt: skip


def test_a_stack_too_large_for_its_spread_is_an_error_not_an_abort(tmp_path):
    """Review: the integration's memory check counted no variance under the azimuthal model,
    so a stack that fit without one aborted the process (SIGABRT in finalize) when the spread's
    variances and sigmas came on top. They are asked for too: RadintMemoryError, and the
    process goes on."""
    import subprocess
    import sys

    script = tmp_path / "limit.py"
    script.write_text(
        "import resource, numpy as np\n"
        "from radint import IntegrationConfig, Integrator, RadintMemoryError\n"
        "cfg = IntegrationConfig.from_text('NrPixelsY 120\\nNrPixelsZ 100\\npx 172\\nLsd 200000\\n"
        "BC 60 50\\nRMin 0\\nRMax 80\\nRBinSize 0.1\\nEtaBinSize 0.5\\n', 'p.txt')\n"
        "integrator = Integrator(cfg, n_threads=1, error_model='azimuthal', fit=None)\n"
        "frames = np.ones((25, 100, 120), np.uint8)\n"
        "vm = int([x for x in open('/proc/self/status') if x.startswith('VmSize')][0].split()[1])\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + (512 << 20), -1))\n"
        "try:\n"
        "    integrator.integrate_stack(frames)\n"
        "    print('integrated')\n"
        "except RadintMemoryError as e:\n"
        "    print('refused:', e)\n"
        "print('small:', integrator.integrate_stack(frames[:2]).cake_sigma.shape)\n"
    )  # fmt: skip
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused: 25 frame(s) of 576000 bins with their azimuthal variances" in run.stdout, (
        run.stdout
    )
    assert "small: (2, 720, 800)" in run.stdout


def test_float32_sums_and_an_explicit_model_under_a_compat(small_config, small_map):
    """Review: float32 sums put each bin's mean's rounding into the spread (sigmas 4e-3 off at
    1e6 counts): refused. An explicit error_model overrides the file's ErrorModel azimuthal
    under a compat, as an explicit pixel_weights overrides the file's."""
    cfg = small_config.replace(error_model="azimuthal")
    with pytest.raises(InvalidInputError, match="precision='float32'"):
        Integrator(cfg, detector_map=small_map, precision="float32")
    it = Integrator(cfg, error_model="poisson", compat="midas-gpu", fit=None)
    assert it.applied_config.error_model == "poisson"
    assert Integrator(cfg, error_model=None, compat="midas-cpu").error_model is None
