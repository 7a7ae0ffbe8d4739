"""The Integrator: invariants, error propagation, MIDAS compat rules, bad input, pyFAI parity."""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import pytest

import radint
from radint import (
    DetectorMap,
    DtypeError,
    IntegrationConfig,
    Integrator,
    InvalidInputError,
    MapFormatError,
    RadintError,
    ShapeError,
)
from radint.testing import ring_image


@pytest.fixture
def small_map(small_config):
    return DetectorMap.build(small_config)


def test_flat_image_gives_flat_lineout(small_config, small_map):
    from radint.testing import assert_lineout_close

    r = Integrator(small_config, detector_map=small_map).integrate(np.full(small_config.shape, 7.0))
    assert_lineout_close(r.lineout, np.full_like(r.lineout, 7.0), rtol=1e-6)
    with pytest.raises(AssertionError, match="max relative difference"):
        assert_lineout_close(r.lineout, np.full_like(r.lineout, 7.1), rtol=1e-6)
    np.testing.assert_allclose(r.cake[np.isfinite(r.cake)], 7.0, rtol=1e-6)
    assert r.cake.shape == (small_map.n_eta, small_map.n_r)


def test_total_intensity_conserved_without_normalize(small_config):
    """Normalize 0 sums pixel value × overlap. By area (MIDAS), a pixel weighs its area in the
    tilt-corrected plane (DetectorMap.pixel_areas, ≠ 1 px² when tilted); by fraction (pyFAI),
    every pixel counts once: Σ cake = Σ pixels, the issue's invariant, here on a detector tilted
    by 8° whose bins cover it whole."""
    cfg = small_config.replace(normalize=False, r_min_px=0, r_max_px=400, ty_deg=8.0, tz_deg=-5.0)
    frame = np.random.default_rng(1).uniform(0, 10, cfg.shape)
    whole = DetectorMap.pixel_areas(cfg)
    assert whole.min() < 0.99 or whole.max() > 1.01  # the tilt changes pixel areas
    m = DetectorMap.build(cfg)
    np.testing.assert_allclose(np.bincount(m.pixel, weights=m.area, minlength=frame.size),
                               whole, rtol=1e-6)  # fmt: skip
    r = Integrator(cfg, detector_map=m, error_model=None).integrate(frame)
    assert np.nansum(r.cake) == pytest.approx((frame.ravel() * whole).sum(), rel=1e-6)
    assert np.nansum(r.lineout) == pytest.approx(np.nansum(r.cake), rel=1e-12)
    counted = Integrator(cfg, error_model=None, pixel_weights="fraction").integrate(frame)
    assert np.nansum(counted.cake) == pytest.approx(frame.sum(), rel=1e-6)
    from_file = cfg.with_overrides(["PixelWeights fraction"])
    assert "PixelWeights fraction" in from_file.midas_text()
    again = Integrator(from_file, error_model=None).integrate(frame)
    np.testing.assert_array_equal(again.cake, counted.cake)
    assert np.nansum(counted.area) == pytest.approx(frame.size, rel=1e-6)
    with pytest.raises(InvalidInputError, match="pixel_weights='fraction'"):
        Integrator(cfg, compat="midas-cpu", pixel_weights="fraction")
    # Regression: another fraction Integrator's map was divided by the pixel areas again.
    fractions = Integrator(cfg, error_model=None, pixel_weights="fraction")
    shared = Integrator(cfg, detector_map=fractions.map, error_model=None, pixel_weights="fraction")
    assert shared.map is fractions.map
    np.testing.assert_array_equal(shared.integrate(frame).cake, counted.cake)
    with pytest.raises(InvalidInputError, match="weighs pixels by fraction"):
        Integrator(cfg, detector_map=fractions.map, pixel_weights="area")


@pytest.mark.parametrize(
    "change",
    [{}, {"sub_pixel_level": 3, "sub_pixel_cardinal_width_deg": 20.0},
     {"im_trans_opt": (2,), "bc_y_px": 0.5, "bc_z_px": 40.0}, {"ty_deg": 40.0, "tz_deg": 30.0}],
)  # fmt: skip
def test_pixel_areas_are_what_one_bin_holding_every_pixel_adds_up(small_config, change):
    """pixel_areas is measured directly from each pixel's quads (no second map is built); it
    must equal the sum of the entries of a map whose one bin holds every pixel whole, rounded as
    map entries are, so that a pixel inside one bin has fraction exactly 1. Beam centre inside the
    detector (a pixel holding it), sub-pixels, a flip and a steep tilt."""
    cfg = small_config.replace(**change)
    whole = DetectorMap.pixel_areas(cfg)
    one_bin = DetectorMap.build(cfg.replace(
        r_min_px=0.0, r_max_px=1e6, r_bin_px=1e6, eta_min_deg=-180.0, eta_max_deg=180.0,
        eta_bin_deg=360.0, mask_file="", gradient_correction=False,
    ))  # fmt: skip
    assert one_bin.n_bins == 1
    np.testing.assert_array_equal(
        whole, np.bincount(one_bin.pixel, weights=one_bin.area, minlength=whole.size)
    )
    if change.get("ty_deg"):
        assert whole.min() < 0.9 or whole.max() > 1.1
    coarse = cfg.replace(r_bin_px=40.0, eta_bin_deg=90.0)
    areas = DetectorMap.build(coarse)
    inside = areas.area == whole[areas.pixel].astype(np.float32)  # wholly inside one bin
    assert inside.mean() > 0.5
    fractions = Integrator(coarse, error_model=None, pixel_weights="fraction").map
    np.testing.assert_array_equal(fractions.pixel, areas.pixel)
    np.testing.assert_array_equal(fractions.area[inside], 1.0)


def test_pixel_fractions_on_a_detector_on_a_two_theta_arm(tmp_path):
    """Found beside pyFAI: on a steep tilt (2θ 66-80°) R = Lsd tan 2θ runs far past the
    detector's size; the one-bin map measuring whole pixel areas stopped short of it, so pixels
    straddling its edge counted more than once (silently) and pixels past it failed the build."""
    pyfai = pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector

    from radint.corrections import pixel_geometry

    shape = (60, 80)
    path = tmp_path / "arm.poni"
    detector = Detector(pixel1=1e-4, pixel2=1e-4, max_shape=shape)
    pyfai.load({"dist": 0.03, "poni1": 0.003, "poni2": 0.004, "rot1": 0.05, "rot2": 1.3,
                "rot3": 0.4, "detector": detector, "wavelength": 1e-10}).write(str(path))  # fmt: skip
    cfg = IntegrationConfig.from_poni(path, TthMin=60, TthMax=85, TthBinSize=0.5,
                                      EtaBinSize=360, Normalize=0)  # fmt: skip
    r = pixel_geometry(cfg)["r_px"]
    assert r.max() > 4 * (cfg.n_pixels_y + cfg.n_pixels_z + abs(cfg.bc_y_px)
                          + abs(cfg.bc_z_px)) + 16  # fmt: skip
    assert DetectorMap.pixel_areas(cfg).min() > 0
    counted = Integrator(cfg, error_model=None, pixel_weights="fraction").integrate(np.ones(shape))
    assert np.nansum(counted.area) == pytest.approx(r.size, rel=1e-9)
    assert np.nansum(counted.cake) == pytest.approx(r.size, rel=1e-9)


def test_poisson_sigma_matches_scatter(small_config, small_map):
    rng = np.random.default_rng(2)
    mean = ring_image(small_config, amplitude=400, background=50, dtype=np.float64)
    frames = rng.poisson(mean, size=(200, *small_config.shape)).astype(np.uint32)
    r = Integrator(small_config, detector_map=small_map).integrate_stack(frames)
    scatter = np.nanstd(r.lineout, axis=0, ddof=1)
    predicted = np.nanmean(r.lineout_sigma, axis=0)
    ok = np.isfinite(scatter) & (predicted > 0)
    ratio = np.median(scatter[ok] / predicted[ok])
    assert ratio == pytest.approx(1.0, abs=0.05)


def test_stack_equals_single_frames_and_dtypes(small_config, small_map):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 1000, size=(11, *small_config.shape)).astype(np.uint16)
    # error_model=None takes the 8-frame block kernel for integer frames; Poisson the per-frame one.
    for error_model in (None, "poisson"):
        integ = Integrator(small_config, detector_map=small_map, error_model=error_model)
        stack = integ.integrate_stack(frames)
        for k in (0, 7, 10):
            one = integ.integrate(frames[k])
            np.testing.assert_allclose(stack.cake[k], one.cake, rtol=1e-13, equal_nan=True)
            np.testing.assert_array_equal(stack.count[k], one.count)
    integ = Integrator(small_config, detector_map=small_map)
    ref = integ.integrate(frames[0].astype(np.float64))
    for dtype in (np.uint8, np.uint32, np.int32, np.float32, np.int64):
        r = integ.integrate((frames[0] % 200).astype(dtype))
        ref = integ.integrate((frames[0] % 200).astype(np.float64))
        np.testing.assert_allclose(r.cake, ref.cake, rtol=1e-12, equal_nan=True)
    # Regression (stream sweep): a float64 frame viewed after a 4-byte header (a MIDAS wire
    # payload) is C-contiguous but unaligned; it was refused, "expected a C-contiguous array".
    wire = (frames[0] % 200).astype("<f8")
    buf = bytearray(4) + wire.tobytes()
    unaligned = np.frombuffer(buf, "<f8", wire.size, 4).reshape(wire.shape)
    assert not unaligned.flags.aligned
    np.testing.assert_array_equal(integ.integrate(unaligned).cake, ref.cake)
    f32 = Integrator(small_config, detector_map=small_map, precision="float32").integrate(frames[0])
    np.testing.assert_allclose(
        f32.lineout, integ.integrate(frames[0]).lineout, rtol=1e-5, equal_nan=True
    )


@pytest.mark.parametrize("kind", ["u16", "u16+dark", "f32+nan", "f32", "f64", "f64+inf"])
def test_cake_is_eta_major_and_bins_match_the_map(small_config, small_map, kind):
    """Cakes and their sigmas come out C-contiguous (n_eta, n_r); every value is the map's bin
    (r, η) summed independently here, and integer frames, and float frames without NaN or inf,
    carry the map's area and entry count."""
    m, shape = small_map, small_config.shape
    rng = np.random.default_rng(11)
    frames = rng.integers(0, 900, size=(3, *shape)).astype(np.float64)
    dark = None
    if kind == "u16+dark":
        dark = rng.uniform(0, 5, shape)
    if kind == "f32+nan":
        frames.reshape(3, -1)[:, rng.choice(frames[0].size, 30, replace=False)] = np.nan
    if kind == "f64+inf":  # one frame of three: the stack takes the NaN-testing kernels
        frames[1].reshape(-1)[rng.choice(frames[0].size, 30, replace=False)] = -np.inf
    dtype = {"f32": np.float32, "f32+nan": np.float32, "f64": np.float64, "f64+inf": np.float64}
    if kind in dtype:
        frames -= 2.5  # values below 1, whose Poisson variance is 1
    typed = frames.astype(dtype.get(kind, np.uint16))
    integ = Integrator(small_config, detector_map=m)
    stack = integ.integrate_stack(typed, dark=dark)
    bins = np.repeat(np.arange(m.n_bins), np.diff(m.indptr).astype(np.int64))
    for k in range(3):
        one = integ.integrate(typed[k], dark=dark)
        for res, idx in ((one, ()), (stack, (k,))):
            assert res.cake[idx].flags.c_contiguous and res.cake_sigma[idx].flags.c_contiguous
            assert res.cake[idx].shape == (m.n_eta, m.n_r)
        value = typed[k].astype(np.float64).ravel() - (0 if dark is None else dark.ravel())
        ok = np.isfinite(value[m.pixel])
        assert one.metadata.get("nan_pixels", 0) == np.count_nonzero(~np.isfinite(value))
        w = m.area.astype(np.float64)[ok]
        signal = np.bincount(bins[ok], weights=w * value[m.pixel][ok], minlength=m.n_bins)
        area = np.bincount(bins[ok], weights=w, minlength=m.n_bins)
        count = np.bincount(bins[ok], minlength=m.n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            want = np.where(count > 0, signal / area, np.nan).reshape(m.n_r, m.n_eta).T
        np.testing.assert_allclose(one.cake, want, rtol=1e-12, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(stack.cake[k], want, rtol=1e-12, atol=1e-9, equal_nan=True)
        np.testing.assert_array_equal(one.count, count.reshape(m.n_r, m.n_eta).T)
        np.testing.assert_allclose(one.area, area.reshape(m.n_r, m.n_eta).T, rtol=1e-12)
        np.testing.assert_array_equal(stack.count[k], one.count)
        if dark is None:  # Poisson sigma: sqrt(Σ a²·max(raw, 1)) / Σ a
            var = w**2 * np.maximum(value[m.pixel][ok], 1.0)
            var = np.bincount(bins[ok], weights=var, minlength=m.n_bins)
            with np.errstate(invalid="ignore", divide="ignore"):
                want = np.where(count > 0, np.sqrt(var) / area, np.nan).reshape(m.n_r, m.n_eta).T
            np.testing.assert_allclose(one.cake_sigma, want, rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(stack.cake_sigma[k], want, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("error_model", [None, "poisson"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_a_list_of_frames_is_one_stack(small_config, small_map, error_model, dtype):
    """integrate_stack takes frames in separate buffers (here strided rows of a bigger array
    and lone copies) as one stack, equal to the stacked array; bad lists fail clearly."""
    rng = np.random.default_rng(9)
    frames = rng.integers(0, 1000, size=(11, *small_config.shape)).astype(dtype)
    integ = Integrator(small_config, detector_map=small_map, error_model=error_model)
    want = integ.integrate_stack(frames)
    parts = [f.copy() if k % 2 else frames[k] for k, f in enumerate(frames)]
    got = integ.integrate_stack(parts)
    for key in ("cake", "cake_sigma", "lineout", "area", "count"):
        a, b = getattr(got, key), getattr(want, key)
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-13, equal_nan=True, err_msg=key)
    assert got.n_frames == 11
    with pytest.raises(ShapeError, match="empty list"):
        integ.integrate_stack([])
    with pytest.raises(ShapeError, match=r"frames\[1\]"):
        integ.integrate_stack([frames[0], frames[1][:-1]])
    mixed = integ.integrate_stack([frames[0], frames[1].astype(np.float64)])  # promoted
    np.testing.assert_allclose(mixed.cake, want.cake[:2], rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("eta_bin", [10, 360, "wide"])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_float_frames_with_a_few_nan_equal_the_masked_kernels(small_config, eta_bin, precision):
    """Float frames holding a few NaN / ±inf values (moving from frame to frame) take the dense
    kernels, then their spoiled bins are summed again: every output equals the kernels that
    test each value (reached here through a zero dark given per call), for scattered values,
    a patch, values in most bins (summed again whole), and stacks whose frames differ."""
    # "wide": six bins, so one NaN spoils a third of the map (summed again whole).
    wide = {"eta_bin_deg": 180, "r_bin_px": 30} if eta_bin == "wide" else {"eta_bin_deg": eta_bin}
    config = small_config.replace(**wide)
    rng = np.random.default_rng(23)
    integ = Integrator(config, error_model="poisson", precision=precision)
    zero = np.zeros(config.shape)
    n = int(np.prod(config.shape))

    def spoiled(count: int, patch: bool) -> np.ndarray:
        frame = rng.poisson(40.0, config.shape).astype(np.float32)
        flat = frame.reshape(-1)
        at = (rng.integers(0, n - count) + np.arange(count)) if patch else rng.choice(n, count)
        flat[at] = rng.choice([np.nan, np.inf, -np.inf], count)
        return frame

    cases = [[spoiled(c, patch)] for c in (1, 3, 12, 40, 400) for patch in (False, True)]
    cases.append([spoiled(c, False) for c in (0, 5, 60, 2)])  # a stack, each frame its own
    for frames in cases:
        stack = np.stack(frames)
        got = integ.integrate_stack(stack)
        want = integ.integrate_stack(stack, dark=zero)
        for key in ("cake", "cake_sigma", "lineout", "lineout_sigma", "area", "count"):
            a, b = getattr(got, key), getattr(want, key)
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, equal_nan=True, err_msg=key)
        assert got.metadata["nan_pixels"] == np.count_nonzero(~np.isfinite(stack))
        one = integ.integrate(frames[-1])  # one frame, then the same again (the same NaN)
        np.testing.assert_allclose(one.lineout_sigma, want.lineout_sigma[-1], rtol=1e-12)
        np.testing.assert_allclose(one.cake, want.cake[-1], rtol=1e-12, equal_nan=True)


def test_dark_nan_and_mask(small_config, small_map):
    integ = Integrator(small_config, detector_map=small_map)
    frame = np.full(small_config.shape, 10.0)
    dark = np.full(small_config.shape, 3.0)
    r = integ.integrate(frame, dark=dark)
    np.testing.assert_allclose(r.lineout[np.isfinite(r.lineout)], 7.0)
    assert r.metadata["nan_pixels"] == 0
    # Audit: integer frames had no count at all (a KeyError for code reading it).
    assert integ.integrate(frame.astype(np.uint16)).metadata["nan_pixels"] == 0
    assert integ.integrate_stack(np.zeros((2, *frame.shape), np.int32)).metadata["nan_pixels"] == 0
    frame[5:60, 5:60] = np.nan  # NaN pixels are masked and counted
    r = integ.integrate(frame)
    assert r.metadata["nan_pixels"] == 55 * 55
    np.testing.assert_allclose(r.cake[np.isfinite(r.cake)], 10.0, rtol=1e-14)
    # ±inf pixels are not counts either (pyFAI drops them too); NaN dark pixels are counted.
    for f in (frame, frame.astype(np.float32)):
        f = f.copy()
        f[70:72, 80:90] = np.inf
        f[72, 80:90] = -np.inf
        d = np.zeros(small_config.shape)
        d[90, 90:95] = np.nan
        for r in (integ.integrate(f, dark=d), integ.integrate_stack(np.stack([f, f]), dark=d)):
            assert r.metadata["nan_pixels"] == (55 * 55 + 30 + 5) * r.n_frames
            np.testing.assert_allclose(r.cake[np.isfinite(r.cake)], 10.0, rtol=1e-6)
            assert np.array_equal(np.isfinite(r.lineout), np.isfinite(r.cake).any(axis=-2))
    mask = np.zeros(small_config.shape, bool)
    mask[:, :60] = True
    masked = Integrator(small_config, detector_map=small_map, mask=mask).integrate(
        np.ones(small_config.shape)
    )
    assert np.nanmax(np.abs(masked.cake - 1)) < 1e-12
    assert np.nansum(masked.area) < np.nansum(r.area)


def test_bad_input_errors(small_config, small_map):
    integ = Integrator(small_config, detector_map=small_map)
    with pytest.raises(ShapeError, match=r"expected shape \(100, 120\)") as e:
        integ.integrate(np.zeros((100, 121)))
    assert "swapped" not in str(e.value)
    with pytest.raises(ShapeError, match=r"got \(120, 100\) \(its transpose: are NrPixelsY and "):
        integ.integrate(np.zeros((120, 100)))
    with pytest.raises(DtypeError, match="complex128"):
        integ.integrate(np.zeros(small_config.shape, complex))
    with pytest.raises(ShapeError, match="dark"):
        integ.integrate(np.zeros(small_config.shape), dark=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="negative"):
        integ.integrate(np.zeros(small_config.shape), variance=-np.ones(small_config.shape))


def test_bad_thread_counts_and_variances_are_refused(small_config, small_map):
    from radint import DetectorMap
    from radint.fit import fit_peaks

    x = np.arange(40.0)
    for n in (-1, 0, 1.5, True, "2"):  # "2": a bare TypeError before (API audit)
        with pytest.raises(InvalidInputError, match="n_threads"):
            Integrator(small_config, detector_map=small_map, n_threads=n)
        with pytest.raises(InvalidInputError, match="n_threads"):
            fit_peaks(x, np.exp(-((x - 20) ** 2) / 8), positions=[20], n_threads=n)
        with pytest.raises(InvalidInputError, match="n_threads"):
            DetectorMap.build(small_config, n_threads=n)
    assert Integrator(small_config, detector_map=small_map, n_threads=np.int64(2)).n_threads == 2
    # A huge count started OS threads until the machine ran out (API audit): now held to 4 per
    # CPU, with the same result.
    frame = np.arange(np.prod(small_config.shape), dtype=np.float64).reshape(small_config.shape)
    want = Integrator(small_config, detector_map=small_map, n_threads=1).integrate(frame)
    got = Integrator(small_config, detector_map=small_map, n_threads=10**6).integrate(frame)
    np.testing.assert_array_equal(got.cake, want.cake)  # unclamped, this never returned
    integ = Integrator(small_config, detector_map=small_map)
    frame = np.ones(small_config.shape)
    with pytest.raises(DtypeError, match="variance"):
        integ.integrate(frame, variance=np.full(small_config.shape, 1 + 1j))
    with pytest.raises(InvalidInputError, match="1 infinite"):
        v = np.ones(small_config.shape)
        v[3, 4] = np.inf
        integ.integrate(frame, variance=v)


@pytest.mark.parametrize("fill", [0.0, -1.0, float("nan")])
def test_empty_bins_take_the_fill_and_never_a_negative_sigma(small_config, small_map, fill):
    integ = Integrator(small_config, detector_map=small_map, empty_value=fill)
    r = integ.integrate(ring_image(small_config, dtype=np.float64))
    empty = r.area == 0
    assert empty.any()
    np.testing.assert_array_equal(r.cake[empty], fill)
    want_sigma = fill if fill >= 0 else np.nan
    np.testing.assert_array_equal(r.cake_sigma[empty], want_sigma)
    assert not (r.cake_sigma < 0).any() and not (r.lineout_sigma < 0).any()


def _c_cpu_reference(map_dir, cfg, frame):
    """MIDAS C CPU integration (spec §5.2-5.3) straight from Map.bin records, in numpy."""
    rec = np.dtype([("y", "<f4"), ("z", "<f4"), ("frac", "<f8"), ("dr", "<f4"), ("a", "<f4")])
    entries = np.frombuffer((map_dir / "Map.bin").read_bytes()[64:], rec)
    pairs = np.frombuffer((map_dir / "nMap.bin").read_bytes()[64:], "<i4").reshape(-1, 2)
    img = frame.astype(np.float64)
    out = np.zeros(len(pairs))
    for b, (count, offset) in enumerate(pairs):
        e = entries[offset : offset + count]
        s = (e["frac"] * img[e["z"].astype(int), e["y"].astype(int)]).sum()
        a = e["a"].astype(np.float64).sum()
        out[b] = s / a if (s != 0 and cfg.normalize) else s
    return out


def test_midas_cpu_compat_with_written_map(small_config, tmp_path):
    cfg = small_config.replace(solid_angle_correction=True, polarization_correction=True)
    DetectorMap.build(cfg).save_midas(tmp_path, cfg)
    m = DetectorMap.load_midas(tmp_path, cfg)
    frame = ring_image(cfg, noise=True, dtype=np.float64)
    r = Integrator(cfg, detector_map=m, compat="midas-cpu").integrate(frame)
    ref = _c_cpu_reference(tmp_path, cfg, frame).reshape(m.n_r, m.n_eta).T
    np.testing.assert_allclose(r.cake, ref, rtol=1e-12)
    nonzero = np.where(ref != 0, ref, np.nan)
    expected_line = np.nan_to_num(np.nanmean(nonzero, axis=0))
    np.testing.assert_allclose(r.lineout, expected_line, rtol=1e-12)


def test_each_midas_compat_samples_a_midas_map_as_its_c_program(small_config, tmp_path, caplog):
    """Map.bin positions are fractional with SubPixelLevel > 1: the C CPU integrator samples
    them bilinearly, the GPU program reads the truncated pixel. A map read with the default
    sampling is read again by Integrator(compat="midas-gpu") with "floor"; an explicit choice
    is kept, with a warning when it is not the compat's."""
    cfg = small_config
    DetectorMap.build(cfg).save_midas(tmp_path, cfg)
    path = tmp_path / "Map.bin"
    raw = bytearray(path.read_bytes())
    rec = np.dtype([("y", "<f4"), ("z", "<f4"), ("frac", "<f8"), ("dr", "<f4"), ("a", "<f4")])
    entries = np.frombuffer(raw, rec, offset=64)
    shifted = entries.copy()
    # Quarter-pixel shifts that stay on the image (and inside the last pixel's floor).
    shifted["y"] = np.minimum(shifted["y"] + 0.25, cfg.n_pixels_y - 1.5)
    shifted["z"] = np.minimum(shifted["z"] + 0.4, cfg.n_pixels_z - 1.5)
    raw[64:] = shifted.tobytes()
    path.write_bytes(bytes(raw))
    frame = ring_image(cfg, noise=True, dtype=np.float64)

    def run(compat, sampling=None):
        m = DetectorMap.load_midas(tmp_path, cfg, sampling=sampling)
        return Integrator(cfg, detector_map=m, compat=compat).integrate(frame).cake

    floor = run("midas-gpu", "floor")
    np.testing.assert_array_equal(run("midas-gpu"), floor)
    bilinear_gpu = run("midas-gpu", "bilinear")
    assert np.nanmax(np.abs(bilinear_gpu - floor) / np.abs(floor).max()) > 1e-3
    assert "sampling='bilinear'" in caplog.text and "samples 'floor'" in caplog.text
    np.testing.assert_array_equal(run("midas-cpu"), run("midas-cpu", "bilinear"))


def test_midas_gpu_rules(small_config, small_map):
    frame = ring_image(small_config, dtype=np.float64)
    r = Integrator(small_config, detector_map=small_map, compat="midas-gpu").integrate(frame)
    assert not np.isnan(r.cake).any()
    radint_rules = Integrator(small_config, detector_map=small_map).integrate(frame)
    finite = np.isfinite(radint_rules.lineout)
    np.testing.assert_allclose(r.lineout[finite], radint_rules.lineout[finite], rtol=1e-12)


def test_midas_gpu_counts_2theta_bins_as_midas_integrate(tmp_path, caplog):
    """Found reading midas-integrate 0.9.0 (``build_tth_bin_edges_in_R``): its 2θ bins are
    ⌈(max − min)/size⌉ of the floating-point quotient, 0.5…4.4 in 0.3° bins 14 (3.9 / 0.3 =
    13.000000000000002; the 14th a whole bin, 4.4–4.7°), where radint's own count is 13 (a
    quotient within 1e-9 of n is n): under compat="midas-gpu" the cake had one bin fewer than
    the peer's. Now its count, said once; the Integrator, run_batch and the CLI agree (the
    map they build and cache is the compat's)."""
    import math

    import tifffile

    from radint.batch import run_batch
    from radint.cli import main
    from radint.io import read_nexus
    from tests.conftest import SMALL

    text = SMALL + "TthMin 0.5\nTthMax 4.4\nTthBinSize 0.3\nEtaBinSize 360\nWavelength 0.5\n"
    (tmp_path / "p.txt").write_text(text)
    cfg = IntegrationConfig.from_midas_params(tmp_path / "p.txt")
    theirs = math.ceil((4.4 - 0.5) / 0.3)  # midas_integrate.params.n_r_bins
    frame = ring_image(cfg, dtype=np.float64)
    with caplog.at_level(logging.WARNING, logger="radint"):
        r = Integrator(cfg, compat="midas-gpu", fit=None).integrate(frame)
    assert "is 14 bins as midas-integrate counts them" in caplog.text
    assert (r.n_r, theirs) == (14, 14)
    np.testing.assert_allclose(r.two_theta_deg[-1], 4.55, atol=1e-9)  # 4.4–4.7°, centre
    own = Integrator(cfg, fit=None).integrate(frame)
    assert own.n_r == 13
    finite = np.isfinite(own.lineout)  # the compat's empty bins are 0
    assert finite.sum() >= 5
    np.testing.assert_allclose(r.lineout[:13][finite], own.lineout[finite], rtol=1e-12)
    tifffile.imwrite(tmp_path / "f.tif", frame.astype(np.float32))
    (done,) = run_batch(cfg, [tmp_path / "f.tif"], tmp_path / "b", compat="midas-gpu")
    assert done.ok
    rc = main(["integrate", str(tmp_path / "p.txt"), str(tmp_path / "f.tif"), "-o",
               str(tmp_path / "c"), "--compat", "midas-gpu", "-q"])  # fmt: skip
    assert rc == 0
    for out in (tmp_path / "b" / "f.h5", tmp_path / "c" / "f.h5"):
        assert read_nexus(out).n_r == 14


def test_sum_frames(small_config, small_map):
    frames = np.stack([np.full(small_config.shape, v, np.float64) for v in (1, 2, 3, 4, 5)])
    r = Integrator(small_config, detector_map=small_map).integrate_stack(frames)
    s = Integrator.sum_frames(r, group=2)
    assert s.n_frames == 3
    np.testing.assert_allclose(np.nanmax(s.cake[0]), 3.0)
    np.testing.assert_allclose(np.nanmax(s.cake[2]), 5.0)
    # OmegaSumFrames' rule, as the MIDAS writers group (radint.result.frame_groups).
    assert [Integrator.sum_frames(r, g).n_frames for g in (None, -1, 0, -3, 1, 5, 9)] == [
        1, 1, 5, 5, 5, 1, 1,
    ]  # fmt: skip


def test_sum_images_is_what_the_caked_file_sums(small_config, small_map, tmp_path):
    """Review: sum_images (NaN wherever any frame had NaN) and the caked.hdf's SumFrames
    (np.nansum) disagreed on a NaN patch in one frame: 2620 NaN bins against none. Both sum
    the frames that have a bin; NaN (SumFrames: 0) only where none has it."""
    import h5py

    from radint.io import write_midas_caked

    frames = np.stack([ring_image(small_config, dtype=np.float64)] * 2)
    frames[0, 10:40, 20:60] = np.nan
    r = Integrator(small_config, detector_map=small_map).integrate_stack(frames)
    s = Integrator.sum_images(r)
    patch = np.isnan(r.cake[0]) & ~np.isnan(r.cake[1])
    assert patch.sum() > 50
    np.testing.assert_allclose(s.cake[0][patch], r.cake[1][patch], rtol=1e-12)
    np.testing.assert_array_equal(np.isnan(s.cake[0]), np.isnan(r.cake).all(axis=0))
    cfg = small_config.replace(sum_images=True)
    r.config = cfg
    with h5py.File(write_midas_caked(r, tmp_path / "s.caked.hdf"), "r") as f:
        np.testing.assert_allclose(f["SumFrames"][...], np.nan_to_num(s.cake[0]).T, rtol=1e-12)


# The kernels a CPU without AVX-512 (or with Intel's gather mitigation) runs: the same numbers.
_KERNEL_CASES = """
import sys
import numpy as np
from radint import IntegrationConfig, Integrator
from radint.testing import ring_image
from tests.conftest import SMALL

config = IntegrationConfig.from_text(SMALL, "small.txt")
rng = np.random.default_rng(3)
mean = ring_image(config, dtype=np.float64)
u16 = rng.poisson(mean, size=(9, *config.shape)).astype(np.uint16)
f32 = u16[:2].astype(np.float32)
f32[0, 10, 10:20] = np.nan
dark = rng.uniform(0, 3, config.shape)
out = {}
plain = Integrator(config, n_threads=2, error_model="poisson")
out["u16_one"] = plain.integrate(u16[0]).cake
out["u16_one_sigma"] = plain.integrate(u16[0]).cake_sigma
out["u16_stack"] = Integrator(config, n_threads=2, error_model=None).integrate_stack(u16).cake
out["u8_one"] = plain.integrate((u16[2] % 256).astype(np.uint8)).cake
out["i32_stack_sigma"] = plain.integrate_stack(u16[:3].astype(np.int32)).cake_sigma
out["u16_stack_sigma"] = plain.integrate_stack(u16).cake_sigma  # frames in pairs + one
out["u16_dark_stack_sigma"] = plain.integrate_stack(u16, dark=dark).cake_sigma
corr = Integrator(config, n_threads=2, solid_angle="midas", polarization="midas")
out["f32_dark_corr"] = corr.integrate_stack(f32, dark=dark).cake
out["f32_dark_corr_sigma"] = corr.integrate_stack(f32, dark=dark).cake_sigma
out["given"] = plain.integrate(u16[1], variance=np.full(config.shape, 2.0)).cake_sigma
# Float frames without NaN or inf take the kernels of integer frames.
finite = u16[:5].astype(np.float32) - 3.5
out["f32_finite_one_sigma"] = plain.integrate(finite[0]).cake_sigma
out["f32_finite_stack"] = plain.integrate_stack(finite).cake
out["f64_finite_stack_lineout_sigma"] = plain.integrate_stack(finite.astype(np.float64)).lineout_sigma
# Few η bins: the gather kernels cut each bin into image blocks and add the pieces.
for name, eta_bin in (("ring", 360.0), ("quadrants", 90.0)):
    few = Integrator(config.replace(eta_bin_deg=eta_bin), n_threads=2, error_model="poisson")
    out[f"{name}_one"] = few.integrate(u16[0]).cake
    stack = few.integrate_stack(u16[:5])
    out[f"{name}_stack"] = stack.cake
    out[f"{name}_stack_sigma"] = stack.cake_sigma
    out[f"{name}_stack_lineout_sigma"] = stack.lineout_sigma
# Random geometries: beam centre on or off the image, tilts, 1 to 360 η bins, odd stacks.
geo = np.random.default_rng(11)
for case in range(8):
    ny, nz = (int(v) for v in geo.integers(20, 160, 2))
    cfg = IntegrationConfig(
        n_pixels_y=ny, n_pixels_z=nz, pixel_size_y_um=float(geo.uniform(50, 200)),
        pixel_size_z_um=float(geo.uniform(50, 200)), lsd_um=float(geo.uniform(5e4, 1e6)),
        bc_y_px=float(geo.uniform(-0.3, 1.3) * ny), bc_z_px=float(geo.uniform(-0.3, 1.3) * nz),
        ty_deg=float(geo.uniform(-3, 3)), tz_deg=float(geo.uniform(-3, 3)),
        wavelength_angstrom=0.2, r_min_px=float(geo.uniform(0, 20)),
        r_max_px=float(geo.uniform(60, 250)), r_bin_px=float(geo.choice([0.3, 1.0, 2.5])),
        eta_bin_deg=float(geo.choice([1.0, 10.0, 22.5, 45.0, 90.0, 180.0, 360.0])),
    )
    dtype = [np.uint8, np.uint16, np.uint32, np.int32, np.float32, np.float64][case % 6]
    frames = geo.integers(0, 250, size=(1 + case % 5, nz, ny)).astype(dtype)
    random_integ = Integrator(cfg, n_threads=1 + case % 3, error_model="poisson")
    stack = random_integ.integrate_stack(frames)
    out[f"random{case}_cake"] = stack.cake
    out[f"random{case}_sigma"] = stack.cake_sigma
    out[f"random{case}_lineout_sigma"] = stack.lineout_sigma
np.savez(sys.argv[1], **out)
"""


def test_scalar_run_and_gather_kernels_agree(tmp_path):
    """The three kernel families, forced with RADINT_GATHER / RADINT_RUNS, give the same cakes
    and sigmas: scalar loops, run-length (AVX-512 without gathers: integer or finite float frames
    without dark) and gathers (on a CPU without AVX-512 every run takes the scalar loops and agrees trivially)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    results = {}
    modes = {"scalar": ("0", "0"), "runs": ("0", "1"), "gather": ("1", "1")}
    for mode, (gather, runs) in modes.items():
        path = tmp_path / f"{mode}.npz"
        env = {**os.environ, "RADINT_GATHER": gather, "RADINT_RUNS": runs,
               "PYTHONPATH": str(root)}  # fmt: skip
        subprocess.run([sys.executable, "-c", _KERNEL_CASES, str(path)], check=True, env=env,
                       cwd=root, timeout=120)  # fmt: skip
        results[mode] = dict(np.load(path))
    for mode in ("runs", "gather"):
        for key, scalar in results["scalar"].items():
            np.testing.assert_allclose(results[mode][key], scalar, rtol=1e-12, atol=1e-12,
                                       equal_nan=True, err_msg=f"{mode}: {key}")  # fmt: skip


def test_gap_and_bad_pixel_values_are_left_out(caplog):
    """GapIntensity / BadPxIntensity (and ``invalid_values``) leave out the pixels holding those
    raw values, exactly as a mask of them would; compat modes keep MIDAS's integrator rule
    (parsed, unused); an unmasked frame with such values draws one warning."""
    cfg = IntegrationConfig(
        n_pixels_y=90, n_pixels_z=70, pixel_size_y_um=172, pixel_size_z_um=172, lsd_um=200000,
        bc_y_px=41.3, bc_z_px=30.2, wavelength_angstrom=0.2, r_min_px=2, r_max_px=45,
        r_bin_px=1, eta_bin_deg=30,
    )  # fmt: skip
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 1000, cfg.shape).astype(np.int32)
    frame[10:12, :] = -1  # Pilatus gaps
    frame[rng.random(cfg.shape) < 0.01] = -2  # bad pixels
    markers = frame < 0
    expected = Integrator(cfg, mask=markers).integrate(frame)
    with caplog.at_level(logging.WARNING, logger="radint"):
        plain = Integrator(cfg).integrate(frame)
    assert "negative counts (-2, -1)" in caplog.text and "GapIntensity -1" in caplog.text
    assert not np.allclose(plain.lineout, expected.lineout, equal_nan=True)
    marked = cfg.with_overrides(["GapIntensity -1", "BadPxIntensity -2"])
    assert "GapIntensity -1" in marked.midas_text() and "GapIntensity" not in cfg.midas_text()
    got = Integrator(marked).integrate(frame)
    np.testing.assert_allclose(got.cake, expected.cake, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got.lineout, expected.lineout, rtol=1e-12, equal_nan=True)
    assert got.metadata["nan_pixels"] == markers.sum()
    explicit = Integrator(cfg, invalid_values=[-1, -2]).integrate(frame)
    np.testing.assert_allclose(explicit.cake, expected.cake, rtol=1e-12, equal_nan=True)
    # Integer frames marking the same pixels take a map without them (cached); frames marking
    # other pixels, in one call or the next, the float copy: the same numbers either way.
    other = frame.copy()
    other[30, 5:9] = -2
    marks = Integrator(marked)
    for frames in ([frame, frame], [frame, other], [other, other], [frame]):
        got = marks.integrate_stack(np.stack(frames))
        for k, f in enumerate(frames):
            want = Integrator(cfg, mask=f < 0).integrate(f)
            np.testing.assert_allclose(got.cake[k], want.cake, rtol=1e-12, equal_nan=True)
        assert got.metadata["nan_pixels"] == sum(int((f < 0).sum()) for f in frames)
    midas = Integrator(marked, compat="midas-cpu").integrate(frame)
    np.testing.assert_array_equal(
        midas.cake, Integrator(cfg, compat="midas-cpu").integrate(frame).cake
    )
    eiger = rng.integers(0, 1000, cfg.shape).astype(np.uint16)
    eiger[:, 30:33] = 65535
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radint"):
        Integrator(cfg).integrate(eiger)
    assert "hold 65535, the uint16 maximum" in caplog.text
    # No warning where they are already left out (a mask) or set and ignored on purpose (compat).
    caplog.clear()
    gaps = np.zeros(cfg.shape, bool)
    gaps[:, 30:33] = True
    with caplog.at_level(logging.WARNING, logger="radint"):
        Integrator(cfg, mask=gaps).integrate(eiger)
        Integrator(cfg.with_overrides(["GapIntensity 65535"]), compat="midas-cpu").integrate(eiger)
    assert "maximum" not in caplog.text
    got = Integrator(cfg.with_overrides(["GapIntensity 65535"])).integrate(eiger)
    want = Integrator(cfg, mask=gaps).integrate(eiger)
    np.testing.assert_allclose(got.cake, want.cake, rtol=1e-12, equal_nan=True)
    with pytest.raises(InvalidInputError, match="invalid_values"):
        Integrator(cfg, invalid_values="all")


def test_midas_polarization_follows_the_plane_angle(small_config):
    """PolarizationPlaneEtaDeg rotates the MIDAS formula's plane (0 = MIDAS C's η = 0 plane)."""
    from radint.corrections import pixel_geometry, polarization

    g = pixel_geometry(small_config)
    s2, eta = np.sin(g["two_theta_rad"]) ** 2, np.radians(g["eta_deg"])
    np.testing.assert_allclose(polarization(g, "midas", 0.9), 1 - 0.9 * s2 * np.cos(eta) ** 2)
    np.testing.assert_allclose(
        polarization(g, "midas", 0.9, 90.0), 1 - 0.9 * s2 * np.sin(eta) ** 2, atol=1e-15
    )
    cfg = small_config.replace(polarization_correction=True, polarization_fraction=0.9)
    frame = ring_image(cfg, dtype=np.float64) + 50
    flat0 = Integrator(cfg).integrate(frame).cake
    turned = Integrator(cfg.replace(polarization_plane_eta_deg=90.0)).integrate(frame).cake
    assert not np.allclose(flat0, turned, equal_nan=True)


def test_exact_solid_angle_follows_panel_distance(tmp_path):
    """solid_angle="exact" on a panel moved along the beam (PanelShiftsFile dLsd) is
    d0²·(n̂·r)/|r|³ with r on the panel's plane (Lsd + dLsd), from the tilt matrix alone; it was
    cos³ of the incidence angle on the main plane (2·dLsd/Lsd off)."""
    shifts = tmp_path / "shifts.txt"
    shifts.write_text("0 0 0 0 0\n1 0 0 0 2000\n")  # panel 1 (z 40..79) 2 mm further away
    lsd, px, bc = 200_000.0, 100.0, (30.3, 41.7)
    cfg = IntegrationConfig(
        n_pixels_y=60, n_pixels_z=80, pixel_size_y_um=px, pixel_size_z_um=px, lsd_um=lsd,
        bc_y_px=bc[0], bc_z_px=bc[1], tx_deg=0.4, ty_deg=1.5, tz_deg=-2.0, r_min_px=0.0,
        r_max_px=60.0, r_bin_px=1.0, n_panels_y=1, n_panels_z=2, panel_size_y=60,
        panel_size_z=40, panel_gaps_z=(0,), panel_shifts_file=str(shifts),
    )  # fmt: skip
    scale = Integrator(cfg, solid_angle="exact", error_model=None)._scale.reshape(80, 60)
    ty, tz, tx = np.radians([1.5, -2.0, 0.4])
    rx = np.array([[1, 0, 0], [0, np.cos(tx), -np.sin(tx)], [0, np.sin(tx), np.cos(tx)]])
    ry = np.array([[np.cos(ty), 0, np.sin(ty)], [0, 1, 0], [-np.sin(ty), 0, np.cos(ty)]])
    rz = np.array([[np.cos(tz), -np.sin(tz), 0], [np.sin(tz), np.cos(tz), 0], [0, 0, 1]])
    t = rx @ ry @ rz
    z, y = np.mgrid[0:80, 0:60].astype(float)
    d_lsd = np.where(z >= 40, 2000.0, 0.0)
    v = np.stack([np.zeros_like(y), (bc[0] - y) * px, (z - bc[1]) * px])
    r = np.einsum("ij,jkl->ikl", t, v)
    r[0] += lsd + d_lsd
    n_dot_r = np.einsum("i,ikl->kl", t[:, 0], r)
    expected = (lsd * t[0, 0]) ** 2 * n_dot_r / np.linalg.norm(r, axis=0) ** 3
    np.testing.assert_allclose(1.0 / scale, expected, rtol=1e-12)


@pytest.mark.parametrize("eta_bin", [360.0, 5.0, 1.0])
def test_lineout_sigma_counts_a_pixel_once_across_eta_bins(eta_bin):
    """The lineout's variance is Σ_p (Σ_η w_pη)²·var_p: a pixel split between η bins of a radial
    row carries one value, not independent ones (found against pyFAI's 1-D sigma: 2.6 % low at
    5° bins, 15 % at 1°). Poisson and given variances, a NaN-masked pixel scale, a dark."""
    cfg = IntegrationConfig(
        n_pixels_y=120, n_pixels_z=100, pixel_size_y_um=172, pixel_size_z_um=172,
        lsd_um=300000, bc_y_px=55.3, bc_z_px=47.1, ty_deg=1.0, r_min_px=5, r_max_px=45,
        r_bin_px=1, eta_bin_deg=eta_bin,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    frame = rng.poisson(200, cfg.shape).astype(np.uint32)
    m = DetectorMap.build(cfg)
    ip = np.asarray(m.indptr).astype(np.int64)
    pix = np.asarray(m.pixel).astype(np.int64)
    area = np.asarray(m.area, np.float64)
    row = np.repeat(np.arange(m.n_bins), np.diff(ip)) // m.n_eta
    given = rng.uniform(1, 9, frame.size)

    def brute(var, scale):
        keep = np.isfinite(scale[pix])
        key, inv = np.unique(row[keep] * frame.size + pix[keep], return_inverse=True)
        w = np.bincount(inv, area[keep]) * scale[key % frame.size]
        v = np.bincount(key // frame.size, w**2 * var[key % frame.size], minlength=m.n_r)
        a = np.bincount(row[keep], area[keep], minlength=m.n_r)
        return np.sqrt(v) / a

    ones = np.ones(frame.size)
    got = Integrator(cfg, detector_map=m, n_threads=2).integrate(frame).lineout_sigma
    want = brute(np.maximum(frame.ravel(), 1.0), ones)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # Stacks take each part's shared pixels right after its pass (pairs, then a single frame).
    stack = rng.poisson(50, (3, *cfg.shape))
    for dtype in (np.uint16, np.uint32, np.float64):
        frames = stack.astype(dtype)
        got = Integrator(cfg, detector_map=m, n_threads=2).integrate_stack(frames).lineout_sigma
        for k in range(3):
            want = brute(np.maximum(frames[k].ravel().astype(float), 1.0), ones)
            np.testing.assert_allclose(got[k], want, rtol=1e-12)
    scale = rng.uniform(0.5, 2.0, frame.size)
    scale[rng.choice(frame.size, 200, replace=False)] = np.nan
    integ = Integrator(cfg, detector_map=m, n_threads=1, flat=(1 / scale).reshape(cfg.shape))
    got = integ.integrate(frame, dark=np.full(cfg.shape, 3.0), variance=given.reshape(cfg.shape))
    np.testing.assert_allclose(got.lineout_sigma, brute(given, scale), rtol=1e-12)


@pytest.mark.parametrize(
    "kw", [{}, {"compat": "midas-gpu"}, {"lineout_mode": "midas_nonzero_mean"}]
)
def test_lineout_sigma_counts_shared_pixels_in_every_mode(small_config, kw):
    """Poisson Monte Carlo: the lineout's scatter is what its sigma says in each mode. The
    covariance of pixels shared between η bins was added only in the area-weighted mode, so
    under midas-gpu and the nonzero mean the sigma was up to 1.7x small near the centre."""
    rng = np.random.default_rng(3)
    frames = rng.poisson(200, size=(400, *small_config.shape)).astype(np.uint16)
    r = Integrator(small_config, fit=None, **kw).integrate_stack(frames)
    ratio = r.lineout.std(axis=0) / r.lineout_sigma.mean(axis=0)
    ok = np.isfinite(ratio)
    assert ok.sum() > 50
    assert 0.8 < np.median(ratio[ok]) < 1.2 and ratio[ok][:8].max() < 1.25


def test_midas_cpu_sigma_of_a_zero_bin_is_per_area(small_config):
    """compat="midas-cpu" keeps C's value rule (a zero bin is not divided by its area, 0 either
    way) but the sigma of every normalized bin is per area (it was √V for zero bins)."""
    frame = np.full(small_config.shape, 100, np.uint16)
    frame[:, :60] = 0
    var = np.full(small_config.shape, 4.0)
    cpu = Integrator(small_config, fit=None, compat="midas-cpu").integrate(frame, variance=var)
    own = Integrator(small_config, fit=None).integrate(frame, variance=var)
    zero = (cpu.cake == 0) & (own.count > 0) & np.isfinite(cpu.cake)
    assert zero.any()
    np.testing.assert_allclose(cpu.cake_sigma[zero], own.cake_sigma[zero], rtol=1e-12)


def test_nonzero_mean_lineout_ignores_the_empty_fill_value(small_config):
    """A finite empty_value fills empty cake bins; it must not enter the nonzero-mean lineout
    (7 raised a flat 5 to 6.44 where 26 of 36 η bins were empty)."""
    frame = np.full(small_config.shape, 5, np.uint16)
    for fill in (np.nan, 0.0, 7.0, -1.0):
        r = Integrator(
            small_config, fit=None, empty_value=fill, lineout_mode="midas_nonzero_mean"
        ).integrate(frame)
        seen = r.count.sum(axis=0) > 0
        np.testing.assert_allclose(r.lineout[seen], 5.0, rtol=1e-12)


def test_cake_sigma_counts_a_pixel_once_within_a_bin_of_a_resampled_map(small_config, tmp_path):
    """Gradient correction spreads each entry bilinearly over up to four pixels, so one bin can
    read a pixel through several entries (as MIDAS sub-pixel records do): its variance is
    Σ_p (Σ_entries w)²·var_p. Summed per entry it was 0.62–0.98 of that (found side by side
    with midas-integrate). Own map and a C-format map read back, both with gradient correction."""
    cfg = small_config.replace(gradient_correction=True)
    rng = np.random.default_rng(4)
    frame = rng.poisson(300, cfg.shape).astype(np.uint16)
    plain = DetectorMap.build(cfg.replace(gradient_correction=False))
    plain.save_midas(tmp_path, cfg.replace(gradient_correction=False))
    maps = {
        "own": plain.with_gradient_correction(cfg),
        "midas": DetectorMap.load_midas(tmp_path, cfg, gradient_correction=True),
    }
    for name, m in maps.items():
        ip = np.asarray(m.indptr).astype(np.int64)
        pix = np.asarray(m.pixel).astype(np.int64)
        w = np.asarray(m.weight, np.float64)
        b = np.repeat(np.arange(m.n_bins), np.diff(ip))
        key, inv = np.unique(b * frame.size + pix, return_inverse=True)
        assert len(key) < len(pix), name  # the map does read pixels twice within a bin
        w_px = np.bincount(inv, w)
        var = np.maximum(frame.ravel(), 1.0)[key % frame.size]
        v = np.bincount(key // frame.size, w_px**2 * var, minlength=m.n_bins)
        for kw in ({}, {"compat": "midas-cpu"}):
            r = Integrator(cfg, detector_map=m, fit=None, **kw).integrate(frame)
            ok = np.isfinite(r.cake_sigma) & (r.area > 0) & (r.cake != 0)
            with np.errstate(invalid="ignore", divide="ignore"):  # empty bins
                want = np.sqrt(v).reshape(m.n_r, m.n_eta).T / r.area
            np.testing.assert_allclose(r.cake_sigma[ok], want[ok], rtol=1e-12, err_msg=name)
            assert ok.sum() > 100


# ---------------------------------------------------------------- FlatFile, Normalize values
def _params_file(tmp_path, extra: str) -> IntegrationConfig:
    from tests.conftest import SMALL

    path = tmp_path / "p.txt"
    path.write_text(SMALL + extra)
    return IntegrationConfig.from_midas_params(path)


def test_flat_file_divides_as_midas_integrate_does(tmp_path, small_map, caplog, monkeypatch):
    # FlatFile was listed as an unused key and silently ignored; midas-integrate's mapper
    # divides each pixel's weight by the flat where it is > 1e-12 (not normalised; 0 and NaN
    # leave the pixel undivided).
    import tifffile

    import radint._once

    monkeypatch.setattr(radint._once, "GIVEN", set())
    rng = np.random.default_rng(3)
    shape = (100, 120)
    flat = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    flat[10, 20], flat[30, 40] = 0.0, np.nan
    tifffile.imwrite(tmp_path / "flat.tif", flat)
    config = _params_file(tmp_path, "FlatFile flat.tif\n")
    assert config.flat_file == str(tmp_path / "flat.tif") and not config.unknown
    frame = rng.uniform(100, 200, shape)
    expected_flat = np.where(flat > 1e-12, flat, 1.0).astype(np.float64)
    plain = config.replace(flat_file="")
    with caplog.at_level(logging.WARNING, logger="radint"):
        for compat in (None, "midas-gpu"):
            got = Integrator(config, detector_map=small_map, compat=compat).integrate(frame)
            want = Integrator(plain, detector_map=small_map, compat=compat).integrate(
                frame / expected_flat
            )
            np.testing.assert_allclose(got.cake, want.cake, rtol=1e-12)
            np.testing.assert_allclose(got.lineout, want.lineout, rtol=1e-12)
    assert "2 pixel(s) hold a flat value <= 1e-12 or NaN" in caplog.text
    assert "p.txt:23: FlatFile" in caplog.text
    # IntegratorZarrOMP does not read FlatFile: compat="midas-cpu" ignores it, warning once.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radint"):
        for _ in range(2):
            got = Integrator(config, detector_map=small_map, compat="midas-cpu").integrate(frame)
    want = Integrator(plain, detector_map=small_map, compat="midas-cpu").integrate(frame)
    np.testing.assert_array_equal(got.cake, want.cake)
    assert caplog.text.count("IntegratorZarrOMP does not read FlatFile") == 1
    # An explicit flat= wins over the file.
    got = Integrator(config, detector_map=small_map, flat=np.full(shape, 2.0)).integrate(frame)
    want = Integrator(plain, detector_map=small_map).integrate(frame / 2.0)
    np.testing.assert_allclose(got.cake, want.cake, rtol=1e-12)


def test_mask_file_errors_name_the_parameter_line(tmp_path):
    """Regression (CLI audit): MaskFile errors named neither the parameter file and line nor a
    transposed mask, where FlatFile's did (both now read through read_parameter_image)."""
    import tifffile

    tifffile.imwrite(tmp_path / "mask.tif", np.zeros((120, 100), np.uint8))
    config = _params_file(tmp_path, "MaskFile mask.tif\n")
    with pytest.raises(ShapeError, match=r"p.txt:23: MaskFile: .*mask.tif: expected shape "
                       r"\(100, 120\).*got \(120, 100\) \(its transpose: are NrPixelsY"):  # fmt: skip
        DetectorMap.build(config)
    (tmp_path / "junk.tif").write_text("not an image")
    junk = _params_file(tmp_path, "MaskFile junk.tif\n")
    with pytest.raises(MapFormatError, match="p.txt:23: MaskFile: .*junk.tif: cannot be read"):
        DetectorMap.build(junk)
    missing = _params_file(tmp_path, "MaskFile nothing.tif\n")
    with pytest.raises(RadintError, match="p.txt:23: MaskFile: .*nothing.tif: no such file"):
        DetectorMap.build(missing)


def test_flat_file_of_the_wrong_shape_is_refused(tmp_path, small_map):
    import tifffile

    tifffile.imwrite(tmp_path / "flat.tif", np.ones((120, 100), np.float32))
    config = _params_file(tmp_path, "FlatFile flat.tif\n")
    with pytest.raises(ShapeError, match=r"p.txt:23: FlatFile: .*flat.tif: expected shape "
                       r"\(100, 120\).*got \(120, 100\) \(its transpose: are NrPixelsY"):  # fmt: skip
        Integrator(config, detector_map=small_map)
    missing = _params_file(tmp_path, "FlatFile nothing.tif\n")
    with pytest.raises(RadintError, match="p.txt:23: FlatFile: .*nothing.tif: no such file"):
        Integrator(missing, detector_map=small_map)
    # ignored under compat="midas-cpu": not read at all
    Integrator(missing, detector_map=small_map, compat="midas-cpu")
    # Regression: `radint integrate` built and cached the map (64 MB for a Pilatus) first.
    from radint.cli import main

    tifffile.imwrite(tmp_path / "frame.tif", np.zeros((100, 120), np.uint16))
    out = tmp_path / "out"
    assert main(["integrate", str(tmp_path / "p.txt"), str(tmp_path / "frame.tif"),
                 "-o", str(out), "FlatFile", "flat.tif"]) == 2  # fmt: skip
    assert not out.exists()


def test_normalize_values_other_than_0_and_1(tmp_path, small_map, caplog):
    # `Normalize 2` turned normalisation off everywhere (read as `== 1`, IntegratorZarrOMP's
    # test); the GPU program tests `if (Normalize)` and midas-integrate bool(Normalize).
    with caplog.at_level(logging.WARNING, logger="radint"):
        two = _params_file(tmp_path, "Normalize 2\n")
    assert two.normalize == 2
    assert (
        "p.txt:23: Normalize 2: IntegratorZarrOMP divides by the bin area only for" in caplog.text
    )
    one, zero = two.replace(normalize=1), two.replace(normalize=0)
    frame = ring_image(two, noise=True)
    for compat, same_as in ((None, one), ("midas-gpu", one), ("midas-cpu", zero)):
        got = Integrator(two, detector_map=small_map, compat=compat).integrate(frame)
        want = Integrator(same_as, detector_map=small_map, compat=compat).integrate(frame)
        np.testing.assert_array_equal(got.cake, want.cake)
        np.testing.assert_array_equal(got.lineout, want.lineout)
        assert got.normalized == bool(same_as.normalize)


def test_float64_frames_of_float32_values_integrate_as_float32(small_config, small_map):
    """float64 frames whose values are all float32 values (counts stored as float64) go
    through float32 copies: the same results bit for bit, NaN counted, from any thread; other
    float64 frames, and stacks past the copy's size, keep the float64 kernels."""
    from concurrent.futures import ThreadPoolExecutor

    from radint.integrator import _NARROW_MAX_FRAMES

    integ = Integrator(small_config, detector_map=small_map)
    rng = np.random.default_rng(21)
    counts = rng.poisson(40, (3, *small_config.shape)).astype(np.float64) - 0.25
    counts[1, 7, 3:9] = np.nan
    assert integ._narrowed([counts]) is not None
    inexact = counts + 0.1
    assert integ._narrowed([inexact]) is None
    assert integ._narrowed([np.zeros((_NARROW_MAX_FRAMES + 1, *small_config.shape))]) is None

    def run(frames):  # one frame, a stack, or a list of frames
        single = not isinstance(frames, list) and frames.ndim == 2
        return integ.integrate(frames) if single else integ.integrate_stack(frames)

    for frames, as_f32 in (
        (counts, counts.astype(np.float32)),
        (counts[0], counts[0].astype(np.float32)),
        (list(counts), [f.astype(np.float32) for f in counts]),
    ):
        got, want = run(frames), run(as_f32)
        for key in ("cake", "cake_sigma", "lineout", "lineout_sigma", "area", "count"):
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
        assert got.metadata.get("nan_pixels") == want.metadata.get("nan_pixels")
    assert integ.integrate_stack(counts).metadata["nan_pixels"] == 6
    assert integ._scratch.f32.size >= counts.size  # this thread's copies were made
    # Inexact values: the float64 kernels, against the values as given.
    want = Integrator(small_config, detector_map=small_map).integrate(
        inexact[0], dark=np.zeros(small_config.shape)
    )
    np.testing.assert_allclose(integ.integrate(inexact[0]).cake, want.cake, rtol=1e-12,
                               equal_nan=True)  # fmt: skip
    # One Integrator, four threads, each its own copies.
    singles = [integ.integrate(counts[k % 3]).cake for k in range(3)]
    with ThreadPoolExecutor(4) as pool:
        for k, cake in enumerate(pool.map(lambda k: integ.integrate(counts[k % 3]).cake,
                                          range(24))):  # fmt: skip
            np.testing.assert_array_equal(cake, singles[k % 3])


def test_threads_integrating_through_one_fresh_integrator_never_deadlock(small_config):
    """Calls from several Python threads at once, on a map whose lazily built parts (tile
    layout, shared-pixel list, NaN map, folded map) are made by the first of them: each part is
    built under a lock inside the thread pool, and a worker waiting there must never take up
    another call that waits on the same lock (a deadlock, found in session 24)."""
    import threading
    import time

    rng = np.random.default_rng(31)
    frames = rng.poisson(30, (4, *small_config.shape)).astype(np.float64)
    frames[1, 3, :] = np.nan
    kw = {"n_threads": 2, "solid_angle": "midas", "dark": np.full(small_config.shape, 0.5)}
    want = [Integrator(small_config, **kw).integrate(f).cake for f in frames]
    for _ in range(3):
        integ = Integrator(small_config, detector_map=DetectorMap.build(small_config), **kw)
        got: dict[int, np.ndarray] = {}

        def work(k: int, integ=integ, got=got) -> None:
            for _ in range(3):
                got[k] = integ.integrate(frames[k % 4]).cake

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        for t in threads:
            t.join(timeout=max(deadline - time.monotonic(), 0))
        assert not any(t.is_alive() for t in threads), "integration threads deadlocked"
        assert sorted(got) == list(range(6))
        for k, cake in got.items():
            np.testing.assert_allclose(cake, want[k % 4], rtol=1e-12, equal_nan=True)


_ONLY_RADINT_THREADS = """
import os, sys, tempfile, threading
import numpy as np
import radint
from radint import DetectorMap, Integrator, IntegrationConfig, _core

def tids():
    return set(os.listdir("/proc/self/task"))

before = tids()
cfg = IntegrationConfig.from_text(sys.argv[1], "small.txt")
frame = np.random.default_rng(3).poisson(30, cfg.shape).astype(np.uint16)
with tempfile.TemporaryDirectory() as d:
    Integrator(cfg, n_threads=1, cache_dir=d).integrate(frame)  # built, cached
    integ = Integrator(cfg, n_threads=1, cache_dir=d, error_model="poisson")  # MapCore.from_file
    integ.integrate(frame)  # bin areas, shared-pixel list (lineout sigma)
    m = integ.map
    m._core.eta_cross(1)
    DetectorMap.from_arrays(m.shape, m.r_edges_px, m.eta_edges_deg, m.indptr, m.pixel, m.area,
                            config=cfg, n_threads=1)
    m.save_midas(d, cfg)
    c_map = DetectorMap.load_midas(d, cfg, n_threads=1)
    Integrator(cfg, detector_map=c_map, n_threads=1, compat="midas-gpu").integrate(frame)
    x = np.linspace(1.0, 10.0, 200)
    y = 100 * np.exp(-(((x - 5) / 0.1) ** 2)) + 1
    radint.fit.fit_pv(x, y, 5.0, n_threads=1)
    radint.fit.fit_peaks(x, y, [5.0], n_threads=1)
    _core.build_info()
python_threads = {str(t.native_id) for t in threading.enumerate()}
others = {}
for t in tids() - before - python_threads:
    name = open(f"/proc/self/task/{t}/comm").read().strip()
    if not name.startswith("radint-"):
        others[t] = name
print(others)
sys.exit(1 if others else 0)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists threads from /proc")
def test_n_threads_1_starts_no_thread_beyond_radints_pool():
    """Regression: building, caching and loading maps (radint's cache, MIDAS files,
    from_arrays), integrating and fitting with ``n_threads=1`` ran rayon work (per-bin area
    sums, area checks, the shared-pixel list) outside radint's pool, some of it with the GIL
    held, so rayon's global pool started a thread per CPU. A fresh process, so no earlier test
    has started that pool already."""
    import subprocess
    import sys

    from tests.conftest import SMALL

    run = subprocess.run([sys.executable, "-c", _ONLY_RADINT_THREADS, SMALL],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


_FORKED_CHILD_INTEGRATES = """
import os, signal, sys
import numpy as np
from radint import IntegrationConfig, Integrator
config = IntegrationConfig.from_text(sys.argv[1], "small.txt")
frame = np.ones(config.shape)
parent = Integrator(config, n_threads=2)
expected = parent.integrate(frame).lineout
for reuse in (True, False):
    pid = os.fork()
    if pid == 0:
        signal.alarm(60)  # a hang dies of SIGALRM
        child = parent if reuse else Integrator(config, n_threads=2)
        ok = np.array_equal(child.integrate(frame).lineout, expected, equal_nan=True)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (reuse, status)
"""


def test_a_forked_child_integrates_after_the_parent_did():
    """Regression (library audit): a child forked after its parent had built an Integrator
    (``multiprocessing``'s default on Linux before Python 3.14) hung for ever in its first
    call, with the parent's Integrator or a new one of the same thread count: radint's thread
    pools had no threads in the child. A fresh process, not a fork of pytest."""
    import subprocess
    import sys

    from tests.conftest import SMALL

    run = subprocess.run([sys.executable, "-c", _FORKED_CHILD_INTEGRATES, SMALL],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_api_arguments_are_checked_with_radint_errors(small_config, small_map, tmp_path):
    """Regression (API audit): Result.concatenate joined results of other bins under the first
    one's axes; a complex flat lost its imaginary part; a generator of frames was called a
    dtype error; hot_above / empty_value strings failed at the first frame; stack totals were
    copied into each frame taken out of a stack."""
    from radint import Result

    integ = Integrator(small_config, detector_map=small_map)
    frame = np.arange(np.prod(small_config.shape), dtype=np.float64).reshape(small_config.shape)
    a = integ.integrate(frame)
    other = Integrator(small_config.replace(r_min_px=small_config.r_min_px + 3)).integrate(frame)
    with pytest.raises(InvalidInputError, match="result 1 has other bins than result 0"):
        Result.concatenate([a, other])
    assert Result.concatenate([a, a]).cake.shape == (2, *a.cake.shape)
    with pytest.raises(DtypeError, match="flat: expected a real numeric array"):
        Integrator(small_config, detector_map=small_map, flat=np.ones(small_config.shape, complex))
    with pytest.raises(InvalidInputError, match="an iterator"):
        integ.integrate_stack(f for f in [frame, frame])
    for bad in ({"hot_above": "x"}, {"dead_below": [1]}, {"empty_value": None}):
        with pytest.raises(InvalidInputError, match=next(iter(bad))):
            Integrator(small_config, detector_map=small_map, **bad)
    holes = np.stack([frame, frame])
    holes[0, 3, :] = np.nan
    stack = integ.integrate_stack(holes)
    assert stack.metadata["nan_pixels"] == small_config.shape[1]
    assert "nan_pixels" not in stack.frame(1).metadata
    # A misspelt field of a PONI override is named with the closest field.
    poni = tmp_path / "g.poni"
    poni.write_text(
        'poni_version: 2\nDetector: Detector\nDetector_config: {"pixel1": 0.000172, '
        '"pixel2": 0.000172, "max_shape": [100, 120]}\nDistance: 0.3\nPoni1: 0.01\n'
        "Poni2: 0.01\nRot1: 0\nRot2: 0\nRot3: 0\nWavelength: 1e-10\n"
    )
    with pytest.raises(radint.exceptions.ParameterError, match="did you mean r_bin_px"):
        IntegrationConfig.from_poni(poni, r_bin_pxx=2)


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ({"r_min_px": 5000.0, "r_max_px": 6000.0}, {},
         r"no detector pixel reaches a bin: bins R 5000\.\.6000[.0-9]* px, η -180\.\.180°; the "
         r"detector's pixels lie at R 0\.\d\.\.\d+\.\d px"),
        ({}, {"mask": np.ones((100, 120), np.uint8)}, "every pixel is masked .mask= is non-zero"),
        ({}, {"dark": np.full((100, 120), np.nan)}, "dark: every pixel is NaN or inf"),
        ({}, {"dead_below": 100, "hot_above": 10}, "dead_below 100 > hot_above 10"),
    ],
)  # fmt: skip
def test_a_setup_that_leaves_no_pixel_is_refused(small_config, change, kwargs, message):
    """Regression (audit): an R range off the detector, a mask or dark taking every pixel and
    an empty dead/hot window gave all-NaN results with exit 0 and no word."""
    cfg = small_config.replace(**change) if change else small_config
    with pytest.raises(InvalidInputError, match=message):
        Integrator(cfg, **kwargs)


def test_a_mask_file_that_masks_everything_is_refused(small_config, tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "ones.tif", np.ones((100, 120), np.uint8))
    cfg = small_config.replace(mask_file=str(tmp_path / "ones.tif"))
    with pytest.raises(InvalidInputError, match="MaskFile .*ones.tif.*MIDAS masks the pixels"):
        Integrator(cfg)


def test_a_dark_with_nan_pixels_is_warned_about_and_counted(small_config, caplog):
    dark = np.zeros((100, 120))
    dark[:5] = np.nan
    integrator = Integrator(small_config, dark=dark)
    assert "dark: 600 of 12000 pixels are NaN or inf" in caplog.text
    frame = ring_image(small_config, dtype=np.uint32)
    assert integrator.integrate(frame).metadata["nan_pixels"] == 600


def test_pyfai_correction_models_from_the_parameter_file(small_config, tmp_path):
    """Audit (pyFAI users): pyFAI's exact solid angle and Kahn polarization were reachable only
    as Integrator arguments, so the CLI, batch and stream could not apply them (2.4 % off
    pyFAI on a tilted detector). SolidAngleModel / PolarizationModel (radint's keys) choose the
    model SolidAngleCorrection 1 / PolarizationCorrection 1 apply."""
    frame = ring_image(small_config, dtype=np.float64)
    keys = ["SolidAngleCorrection 1", "SolidAngleModel exact", "PolarizationCorrection 1",
            "PolarizationModel kahn", "PolarizationFraction 0.95"]  # fmt: skip
    cfg = small_config.with_overrides(keys)
    by_keys = Integrator(cfg).integrate(frame)
    by_args = Integrator(
        small_config.replace(polarization_fraction=0.95), solid_angle="exact", polarization="kahn"
    ).integrate(frame)
    np.testing.assert_array_equal(by_keys.lineout, by_args.lineout)
    midas = Integrator(small_config.with_overrides(keys[::2] + keys[4:])).integrate(frame)
    assert np.nanmax(np.abs(midas.lineout / by_keys.lineout - 1)) > 1e-4  # models differ
    again = IntegrationConfig.from_text(cfg.midas_text(), "again.txt")
    assert (again.solid_angle_model, again.polarization_model) == ("exact", "kahn")
    with pytest.raises(InvalidInputError, match="SolidAngleModel exact is pyFAI's model: not"):
        Integrator(cfg, compat="midas-cpu")
    with pytest.raises(radint.ParameterError, match="SolidAngleModel: expected midas or exact"):
        small_config.with_overrides(["SolidAngleModel cos3"])


def test_files_record_the_corrections_the_integrator_applied(small_config, tmp_path):
    """Audit: Integrator(solid_angle="exact", polarization="kahn", pixel_weights="fraction")
    corrected the numbers, but the NeXus file said no solid angle, no polarization, area
    weights: a re-reduction from the stored configuration dropped them."""
    import h5py

    from radint.io import read_nexus, write_nexus

    frame = ring_image(small_config, dtype=np.float64)
    integrator = Integrator(
        small_config, solid_angle="exact", polarization="kahn", pixel_weights="fraction"
    )
    path = write_nexus(integrator.integrate(frame), tmp_path / "r.h5")
    stored = read_nexus(path).config
    assert stored.solid_angle_correction and stored.solid_angle_model == "exact"
    assert stored.polarization_correction and stored.polarization_model == "kahn"
    assert stored.pixel_weights == "fraction"
    with h5py.File(path) as f:
        sub = "entry/azint1d"
        assert f[f"{sub}/solid_angle_applied"][()] and f[f"{sub}/polarization_applied"][()]
    again = Integrator(stored).integrate(frame)
    np.testing.assert_allclose(again.lineout, read_nexus(path).lineout[0], rtol=1e-12)
    assert integrator.config is small_config  # the Integrator's own is left as given


def test_pyfai_habits_that_change_nothing_silently_are_warned(small_config, caplog, monkeypatch):
    """Audit (pyFAI users): a wavelength in metres (pyFAI's unit) gave Q off by 1e10 without a
    word; PolarizationFraction without a polarization correction did nothing without a word."""
    import radint._once

    monkeypatch.setattr(radint._once, "GIVEN", set())
    with caplog.at_level(logging.WARNING, logger="radint"):
        cfg = small_config.with_overrides(["Wavelength 1e-10", "PolarizationFraction 0.95"])
        cfg.validate()
        Integrator(cfg)
        Integrator(cfg, polarization="kahn")  # used there: no second warning
    assert "Wavelength: 1e-10 Å is below 0.01 Å (1.2 MeV): Wavelength is in Å" in caplog.text
    assert caplog.text.count("no polarization correction is applied") == 1


def test_no_pixel_left_is_judged_on_the_pixels_the_bins_reach(small_config):
    """Review: a mask (or NaN dark) over every pixel the bins reach, leaving only detector
    corners outside RMax, passed the whole-detector check and gave all-NaN results; an all-NaN
    dark given per call too."""
    from radint.corrections import pixel_geometry

    r = pixel_geometry(small_config, 1)["r_px"].reshape(small_config.shape)
    inside = r < small_config.r_max_px + 2
    assert not inside.all()
    with pytest.raises(InvalidInputError, match="every pixel the bins reach is masked"):
        Integrator(small_config, mask=inside.astype(np.uint8))
    with pytest.raises(InvalidInputError, match="every pixel the bins reach is masked"):
        Integrator(small_config, dark=np.where(inside, np.nan, 0.0))
    frame = ring_image(small_config, dtype=np.float64)
    with pytest.raises(InvalidInputError, match="dark: every pixel is NaN or inf"):
        Integrator(small_config).integrate(frame, dark=np.full(small_config.shape, np.nan))


def test_pyfai_models_cannot_ride_on_a_midas_map(small_config, tmp_path):
    """Review: `radint map` with SolidAngleModel exact wrote MIDAS's cos³2θ into Map.bin, and a
    run with that map and the key stored "exact" while cos³2θ was applied."""
    from radint.exceptions import MapFormatError

    midas = small_config.with_overrides(["SolidAngleCorrection 1"])
    exact = midas.with_overrides(["SolidAngleModel exact"])
    with pytest.raises(MapFormatError, match="SolidAngleModel exact: Map.bin's weights hold"):
        DetectorMap.build(exact).save_midas(tmp_path / "exact", exact)
    DetectorMap.build(midas).save_midas(tmp_path / "midas", midas)
    c_map = DetectorMap.load_midas(tmp_path / "midas", exact)
    with pytest.raises(InvalidInputError, match="which solid angle exact cannot replace"):
        Integrator(exact, detector_map=c_map)
    with pytest.raises(radint.ParameterError, match="SolidAngleModel: expected midas or exact"):
        small_config.replace(solid_angle_model="kahn").validate()


def test_the_default_rmax_far_past_a_small_detector_is_warned(small_config, caplog, monkeypatch):
    """Audit (pyFAI users): a PONI file run without RMin/RMax took MIDAS's RMax 1524 px; on a
    300x200 detector whose corner is at R 222 px, 85 % of the radial bins were empty."""
    import radint._once

    monkeypatch.setattr(radint._once, "GIVEN", set())
    lines = small_config.midas_text().splitlines()
    text = "\n".join(line for line in lines if not line.startswith("RMax "))
    default = IntegrationConfig.from_text(text, "p.txt")
    assert "RMax" not in default.set_at and default.r_max_px == 1524
    with caplog.at_level(logging.WARNING, logger="radint"):
        Integrator(small_config)
        assert "MIDAS's default" not in caplog.text
        Integrator(default)
    assert "RMax 1524 px (MIDAS's default) lies far past the detector" in caplog.text


def test_result_axes_are_read_only_and_shared(small_config, small_map):
    """Audit: every Result of an Integrator holds the same axis arrays, which were writeable:
    ``np.radians(a.two_theta_deg, out=a.two_theta_deg)`` changed every other result's axis and
    later lineout files. They are read-only now; a converted copy leaves the others alone."""
    integrator = Integrator(small_config, detector_map=small_map)
    frame = ring_image(small_config)
    a, b = integrator.integrate(frame), integrator.integrate_stack(frame[None])
    axes = ("radius_px", "two_theta_deg", "q_inv_angstrom", "d_spacing_angstrom", "eta_deg",
            "r_edges_px", "eta_edges_deg")  # fmt: skip
    before = {name: getattr(b, name).copy() for name in axes}
    for name in axes:
        assert not getattr(a, name).flags.writeable, name
    with pytest.raises(ValueError, match="read-only"):
        np.radians(a.two_theta_deg, out=a.two_theta_deg)
    with pytest.raises(ValueError, match="read-only"):
        a.eta_deg += 180
    radians = np.radians(a.two_theta_deg)  # the way to convert: a new array
    later = integrator.integrate(frame)
    for name in axes:
        np.testing.assert_array_equal(getattr(b, name), before[name])
        np.testing.assert_array_equal(getattr(later, name), before[name])
    np.testing.assert_allclose(radians, np.radians(before["two_theta_deg"]), rtol=1e-15)
    # Results derived from them (a frame of a stack, frame sums) keep working on the shared axes.
    assert b.frame(0).two_theta_deg is b.two_theta_deg
    summed = Integrator.sum_images(integrator.integrate_stack(np.stack([frame, frame])))
    np.testing.assert_allclose(np.nan_to_num(summed.cake[0]), np.nan_to_num(2 * a.cake),
                               rtol=1e-12)  # fmt: skip


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_masked_array_pixels_are_left_out_as_nan_pixels(small_config, small_map, dtype):
    """Audit: a numpy masked array was integrated with its mask ignored (saturated pixels the
    user had masked were summed in). Its masked pixels are left out as NaN pixels are, in
    integrate and integrate_stack (an array or a list of frames), for integer frames too, and
    invalid_values (the marker map of integer frames) still applies to the rest."""
    frame = ring_image(small_config).astype(dtype)
    saturated = np.zeros(small_config.shape, dtype=bool)
    saturated[40:50, :] = True
    frame[saturated] = 60000
    masked = np.ma.masked_array(frame, mask=saturated)
    as_nan = np.where(saturated, np.nan, frame.astype(np.float64))
    integrator = Integrator(small_config, detector_map=small_map)
    expected = integrator.integrate(as_nan)
    got = integrator.integrate(masked)
    # The same pixels' same values; the sums' order may differ (a call holding the NaN pixels
    # of the one before takes a map without them): ~1e-16 relative.
    np.testing.assert_allclose(got.cake, expected.cake, rtol=1e-12)
    np.testing.assert_allclose(got.cake_sigma, expected.cake_sigma, rtol=1e-12)
    np.testing.assert_allclose(got.area, expected.area, rtol=1e-12)
    assert got.metadata["nan_pixels"] == saturated.sum()
    assert np.nanmax(got.cake) < 60000
    stack = np.ma.stack([masked, masked])
    for frames in (stack, [masked, masked]):
        s = integrator.integrate_stack(frames)
        np.testing.assert_allclose(s.cake[1], expected.cake, rtol=1e-12)
        assert s.metadata["nan_pixels"] == 2 * saturated.sum()
    if np.dtype(dtype).kind in "iu":
        marked = frame.copy()
        marked[0, :] = 7
        with_markers = Integrator(small_config, detector_map=small_map, invalid_values=[7])
        both = with_markers.integrate(np.ma.masked_array(marked, mask=saturated))
        as_nan[0, :] = np.nan
        np.testing.assert_allclose(both.cake, integrator.integrate(as_nan).cake, rtol=1e-12)
    # A mask that masks nothing: the frame as it is.
    np.testing.assert_allclose(
        integrator.integrate(np.ma.masked_array(frame)).cake,
        integrator.integrate(frame).cake,
        rtol=1e-12,
    )


def test_masked_dark_flat_and_variance_count_their_masked_pixels_as_nan(small_config, small_map):
    """A masked dark's or flat's masked pixels are left out (as their NaN pixels are); a
    masked variance's are unknown (NaN sigma), as a NaN variance is."""
    frame = ring_image(small_config).astype(np.uint16)
    hole = np.zeros(small_config.shape, dtype=bool)
    hole[:, 60:64] = True
    dark = np.full(small_config.shape, 3, dtype=np.int32)
    nan_dark = np.where(hole, np.nan, 3.0)
    plain = Integrator(small_config, detector_map=small_map)
    expected = plain.integrate(frame, dark=nan_dark)
    np.testing.assert_allclose(
        plain.integrate(frame, dark=np.ma.masked_array(dark, mask=hole)).cake,
        expected.cake,
        rtol=1e-12,
    )
    own = Integrator(small_config, detector_map=small_map, dark=np.ma.masked_array(dark, hole))
    np.testing.assert_allclose(own.integrate(frame).cake, expected.cake, rtol=1e-12)
    assert own.same_dark(np.ma.masked_array(dark, hole)) is own.dark
    assert own.same_dark(dark) is dark  # not the same: the masked pixels hold 3 there
    flat = np.full(small_config.shape, 2.0)
    masked_flat = Integrator(
        small_config, detector_map=small_map, flat=np.ma.masked_array(flat, hole)
    )
    nan_flat = Integrator(small_config, detector_map=small_map, flat=np.where(hole, np.nan, 2.0))
    np.testing.assert_allclose(
        masked_flat.integrate(frame).cake, nan_flat.integrate(frame).cake, rtol=1e-12
    )
    variance = np.ma.masked_array(frame.astype(np.float64), mask=hole)
    sigma = plain.integrate(frame, variance=variance).cake_sigma
    nan_sigma = plain.integrate(frame, variance=np.where(hole, np.nan, frame)).cake_sigma
    np.testing.assert_allclose(sigma, nan_sigma, rtol=1e-12)
    assert np.isnan(sigma).any()


def _picklable_integrators(config, tmp_path):
    """Integrators whose maps and settings differ in every way pickling must keep."""
    rng = np.random.default_rng(3)
    mask = np.zeros(config.shape, dtype=bool)
    mask[10:14, :] = True
    gradient = config.replace(gradient_correction=True, solid_angle_correction=True)
    DetectorMap.build(config).save_midas(tmp_path, config)
    return {
        "plain": Integrator(config, n_threads=1),
        "corrections": Integrator(
            config,
            n_threads=1,
            mask=mask,
            flat=rng.uniform(0.9, 1.1, config.shape),
            dark=np.full(config.shape, 2.0),
            polarization="kahn",
            invalid_values=[7],
            fit={"positions_px": [30.0]},
        ),
        "fractions": Integrator(config, n_threads=1, pixel_weights="fraction"),
        "midas-cpu gradient": Integrator(gradient, n_threads=1, compat="midas-cpu"),
        "midas map": Integrator(
            config,
            n_threads=1,
            detector_map=DetectorMap.load_midas(tmp_path, config),
            compat="midas-gpu",
        ),
    }


def test_integrators_and_maps_pickle_and_deepcopy(small_config, tmp_path):
    """Audit: Integrator and DetectorMap could not be pickled or deep-copied ("cannot pickle
    '_thread._local' object", "cannot pickle 'radint._core.MapCore'"), so Pool.map(it.integrate,
    ...) with spawn, dask's submit(it.integrate, frame) and copy.deepcopy failed. A map pickles
    as its arrays, an Integrator as its arguments with its map: the copies integrate to the
    same numbers, bit for bit, without building the map again."""
    import copy
    import pickle

    frame = ring_image(small_config)
    frame[0, :] = 7
    for name, integrator in _picklable_integrators(small_config, tmp_path).items():
        expected = integrator.integrate(frame)
        for again in (pickle.loads(pickle.dumps(integrator)), copy.deepcopy(integrator)):
            assert again.map is not integrator.map, name
            for attr in ("indptr", "pixel", "area", "delta_r", "mask_hit", "bin_geometric_area"):
                np.testing.assert_array_equal(getattr(again.map, attr),
                                              getattr(integrator.map, attr))  # fmt: skip
            assert (again.map.origin, again.map.gradient_corrected, again.map.pixel_fractions,
                    again.map.corrections_folded, again.rules, again.fit) == (
                integrator.map.origin, integrator.map.gradient_corrected,
                integrator.map.pixel_fractions, integrator.map.corrections_folded,
                integrator.rules, integrator.fit)  # fmt: skip
            got = again.integrate(frame)
            for field in ("cake", "cake_sigma", "lineout", "area", "count"):
                np.testing.assert_array_equal(getattr(got, field), getattr(expected, field),
                                              err_msg=f"{name}: {field}")  # fmt: skip
            assert got.config == expected.config
            if expected.peaks is not None:
                np.testing.assert_array_equal(got.peaks.center, expected.peaks.center)
        assert copy.copy(integrator).map is integrator.map  # shallow: the same map


def test_a_copied_integrator_keeps_the_arrays_and_flat_file_it_was_built_with(
    small_config, tmp_path
):
    """Review: a pickled or deep-copied Integrator was rebuilt from the caller's dark, flat and
    mask as they were at copy time (a reused dark buffer changed the copies: cake 517 off), and
    read FlatFile again where it was unpickled (a rewritten flat changed them; a worker
    without the file failed). Copies keep what the original was built with."""
    import copy
    import pickle

    import tifffile

    frame = ring_image(small_config)
    dark = np.full(small_config.shape, 3.0)
    flat = np.full(small_config.shape, 1.5)
    mask = np.zeros(small_config.shape, bool)
    integrator = Integrator(small_config, n_threads=1, dark=dark, flat=flat, mask=mask)
    expected = integrator.integrate(frame).cake
    dark[:] = 0
    flat[:] = 2
    mask[:5] = True
    for again in (copy.deepcopy(integrator), pickle.loads(pickle.dumps(integrator))):
        np.testing.assert_array_equal(again.integrate(frame).cake, expected)
    flat_file = tmp_path / "flat.tif"
    tifffile.imwrite(flat_file, np.full(small_config.shape, 1.5, np.float32))
    from_file = Integrator(small_config.replace(flat_file=str(flat_file)), n_threads=1)
    expected = from_file.integrate(frame).cake
    tifffile.imwrite(flat_file, np.full(small_config.shape, 4.0, np.float32))
    np.testing.assert_array_equal(copy.deepcopy(from_file).integrate(frame).cake, expected)
    flat_file.unlink()
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(from_file)).integrate(frame).cake, expected
    )


def test_an_integrator_goes_to_spawned_worker_processes(small_config):
    """Pool.map(integrator.integrate, frames) under the spawn start method (macOS, Windows,
    dask, joblib's loky) pickles the bound method, so the Integrator."""
    import concurrent.futures
    import multiprocessing

    integrator = Integrator(small_config, n_threads=1)
    frames = [ring_image(small_config, seed=k, noise=True) for k in range(2)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        results = list(pool.map(integrator.integrate, frames))
    for got, frame in zip(results, frames):
        np.testing.assert_array_equal(got.cake, integrator.integrate(frame).cake)


def test_integrator_docs_name_what_exists(small_config, small_map):
    """Audit: the docs named ``error_model="given"`` (refused) for ``variance=`` and
    ``DetectorMap.folded`` (no such method). Every ``DetectorMap.x`` the Integrator's docs name
    exists, and a variance is used without an error model, as the docs now say."""
    import inspect
    import re

    docs = [inspect.getdoc(Integrator) or ""]
    docs += [inspect.getdoc(getattr(Integrator, name)) or "" for name in dir(Integrator)]
    named = {m for doc in docs for m in re.findall(r"DetectorMap\.(\w+)", doc)}
    assert named and all(hasattr(DetectorMap, m) for m in named), named
    assert not any("given" in m for doc in docs for m in re.findall(r"error_model=\S+", doc))
    with pytest.raises(
        InvalidInputError, match="error_model must be 'config', 'poisson', 'azimuthal' or None"
    ):
        Integrator(small_config, detector_map=small_map, error_model="given")
    frame = ring_image(small_config)
    no_model = Integrator(small_config, detector_map=small_map, error_model=None)
    assert no_model.integrate(frame).cake_sigma is None
    poisson = Integrator(small_config, detector_map=small_map).integrate(frame).cake_sigma
    given = no_model.integrate(frame, variance=np.maximum(frame, 1)).cake_sigma
    np.testing.assert_allclose(given, poisson, rtol=1e-12)


def test_results_compare_by_identity_and_integrator_settings_are_read_only(small_config, small_map):
    """Audit: ``result == other`` raised "truth value of an array is ambiguous" (a dataclass
    comparing arrays), and assigning a public Integrator setting (``invalid_values =
    [65535.0]``, ``normalize = 0``) broke every later call with a TypeError. Results compare by
    identity; settings are read-only, with a message saying what to do; fit may change."""
    integrator = Integrator(small_config, detector_map=small_map)
    frame = ring_image(small_config)
    a, b = integrator.integrate(frame), integrator.integrate(frame)
    assert a == a and a != b and len({a, b}) == 2
    for name, value in (("invalid_values", [65535.0]), ("normalize", 0), ("map", small_map),
                        ("n_threads", 2), ("backend", "cuda"), ("empty_value", 0.0)):  # fmt: skip
        with pytest.raises(AttributeError, match=rf"Integrator\.{name} is read-only.*build"):
            setattr(integrator, name, value)
    integrator.fit = {"positions_px": [30.0]}
    assert integrator.fit is not None and integrator.fit.positions_px == (30.0,)
    with pytest.raises(InvalidInputError, match="fit: expected"):
        integrator.fit = 3
    integrator.label = "run 7"  # attributes of the user's own, and method overrides, stay free
    integrator.label = "run 8"
    integrator.integrate_stack = integrator.integrate_stack
    np.testing.assert_array_equal(integrator.integrate(frame).cake, a.cake)


@pytest.mark.parametrize(
    ("bc_z_px", "eta_min_deg", "eta_max_deg", "arc"),
    [
        (150.0, -90.0, 90.0, r"η 1\d\d\.\d\.\.2\d\d\.\d°"),  # the pixels' arc crosses ±180°
        (-50.0, 100.0, 250.0, r"η -4\d\.\d\.\.5\d\.\d°"),
    ],
)
def test_an_eta_range_that_misses_the_detector_is_named(
    small_config, tmp_path, bc_z_px, eta_min_deg, eta_max_deg, arc
):
    """Audit: with the R range on the detector and the η range off it, the refusal blamed
    RMin/RMax and BC, gave only the pixels' R span and spoke of masks with none in use. It
    gives the η the pixels within the R range cover and names EtaMin/EtaMax; masks only where
    the detector's pixels reach the bins and a mask takes them all."""
    import tifffile

    cfg = small_config.replace(bc_z_px=bc_z_px, r_min_px=60.0, r_max_px=100.0,
                               eta_min_deg=eta_min_deg, eta_max_deg=eta_max_deg)  # fmt: skip
    with pytest.raises(InvalidInputError) as refused:
        Integrator(cfg)
    text = str(refused.value)
    assert re.search(rf"within that R range lie at {arc} .*check EtaMin/EtaMax", text), text
    assert "RMin" not in text and "mask" not in text.lower()
    tifffile.imwrite(tmp_path / "mask.tif", np.zeros(cfg.shape, np.uint8))
    with pytest.raises(InvalidInputError, match="EtaMin/EtaMax") as refused:
        Integrator(cfg.replace(mask_file=str(tmp_path / "mask.tif")))  # a mask that is no cause
    assert "mask" not in str(refused.value).lower()
    off = small_config.replace(
        r_min_px=5000.0, r_max_px=6000.0, mask_file=str(tmp_path / "mask.tif")
    )
    with pytest.raises(InvalidInputError, match=r"check RMin/RMax, BC\)$"):
        Integrator(off)


def test_what_the_readme_says_differs_from_midas_integrate(small_config, small_map):
    """README (against midas-integrate): with ``Normalize 0`` radint's lineout is the sum of the
    η bins and compat="midas-gpu"'s the area-weighted mean Σ I·A / Σ A (midas-integrate's, with
    area weights too); GapIntensity pixels are left out by default and integrated under
    compat="midas-gpu" (midas-integrate never applies the key)."""
    cfg = small_config.with_overrides(["Normalize 0", "GapIntensity -1"])
    frame = ring_image(small_config).astype(np.int32)
    frame[30:33, :] = -1
    sums = Integrator(cfg, detector_map=small_map, error_model=None).integrate(frame)
    gpu = Integrator(cfg, detector_map=small_map, error_model=None, compat="midas-gpu")
    mean = gpu.integrate(frame)
    reached = sums.area.sum(axis=0) > 0
    # Sums of the same bins in another order: rounding only.
    np.testing.assert_allclose(sums.lineout[reached], np.nansum(sums.cake, axis=0)[reached],
                               rtol=1e-12)  # fmt: skip
    weights = np.where(mean.area > 1e-9, mean.area, 0.0)
    expected = (mean.cake * weights).sum(axis=0) / weights.sum(axis=0)
    np.testing.assert_allclose(mean.lineout[reached], expected[reached], rtol=1e-12)
    assert sums.metadata["nan_pixels"] == 3 * frame.shape[1]  # the -1 rows left out
    assert mean.metadata.get("nan_pixels", 0) == 0  # integrated, as midas-integrate does
    without_gaps = gpu.integrate(np.where(frame == -1, 0, frame))
    assert not np.allclose(mean.cake, without_gaps.cake)  # the -1 values count


def test_a_nonzero_mean_lineout_with_midas_gpu_rules_is_refused(small_config):
    """midas-integrate side by side: Integrator(compat="midas-gpu",
    lineout_mode="midas_nonzero_mean") was taken, the result said midas_nonzero_mean, and its
    lineout was the area-weighted one of the GPU rules (2.7 % off the non-zero mean)."""
    with pytest.raises(InvalidInputError, match="compat='midas-cpu' sets it"):
        Integrator(small_config, compat="midas-gpu", lineout_mode="midas_nonzero_mean")
    cpu = Integrator(small_config, compat="midas-cpu", fit=None)
    assert cpu.lineout_mode == "midas_nonzero_mean"
    gpu = Integrator(small_config, compat="midas-gpu", fit=None)
    assert gpu.lineout_mode == "area_weighted"


def test_a_stack_too_large_for_memory_is_an_error_not_an_abort(tmp_path):
    """Audit (large jobs): under a job's memory limit a 16M detector's fine cake aborted the
    Python process inside Rust ("memory allocation of 344448000 bytes failed", SIGABRT). The
    sums and results a call needs are now asked for first: RadintMemoryError (a MemoryError)
    with the size, and the process goes on."""
    import subprocess
    import sys

    script = tmp_path / "limit.py"
    script.write_text(
        "import resource, numpy as np\n"
        "from radint import IntegrationConfig, Integrator, RadintMemoryError\n"
        "cfg = IntegrationConfig.from_text('NrPixelsY 120\\nNrPixelsZ 100\\npx 172\\nLsd 200000\\n"
        "BC 60 50\\nRMin 0\\nRMax 80\\nRBinSize 0.1\\nEtaBinSize 0.5\\n', 'p.txt')\n"
        "integrator = Integrator(cfg, n_threads=1)\n"
        "frames = np.ones((400, 100, 120), np.uint8)\n"
        "vm = int([x for x in open('/proc/self/status') if x.startswith('VmSize')][0].split()[1])\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + (512 << 20), -1))\n"
        "try:\n"
        "    integrator.integrate_stack(frames)\n"
        "except RadintMemoryError as e:\n"
        "    assert isinstance(e, MemoryError)\n"
        "    print('refused:', e)\n"
        "print('small:', integrator.integrate_stack(frames[:2]).cake.shape)\n"
    )  # fmt: skip
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused: 400 frame(s) integrated into 576000 bins (their sums and results) need " in (
        run.stdout
    ), run.stdout
    assert "cannot be allocated" in run.stdout and "small: (2, 720, 800)" in run.stdout


def test_compat_keys_the_c_programs_do_not_read(small_config, small_map, caplog):
    """Fuzz round against the C programs: ``ModuleGaps`` (radint's key) masked the gaps under
    ``compat="midas-cpu"`` on radint's own map, which C leaves in (25 NaN bins against C's 17,
    the lineout up to 100 % off, no word); it is refused now, naming the key's line.
    ``PolarizationPlaneEtaDeg`` tilted the polarization plane under midas-cpu although neither
    C program reads it (cakes 5e-3 off C's): ignored there with a warning, kept under
    midas-gpu (midas-integrate reads it)."""
    text = small_config.midas_text()
    gaps = IntegrationConfig.from_text(text + "ModuleGaps 40 60 3 2\n", "gaps.txt")
    for compat in ("midas-cpu", "midas-gpu"):
        with pytest.raises(InvalidInputError, match=r"gaps.txt:\d+: ModuleGaps 40 60 3 2"):
            Integrator(gaps, compat=compat)
    assert Integrator(gaps, fit=None).config.module_gaps == (40, 60, 3, 2)  # radint's own rules
    polarized = "PolarizationCorrection 1\nPolarizationFraction 0.99\n"
    plain = IntegrationConfig.from_text(text + polarized, "p.txt")
    tilted = IntegrationConfig.from_text(text + polarized + "PolarizationPlaneEtaDeg 30\n", "t.txt")
    frame = ring_image(small_config)
    with caplog.at_level(logging.WARNING):
        cpu = Integrator(tilted, compat="midas-cpu", fit=None)
    assert "PolarizationPlaneEtaDeg 30 ignored with compat='midas-cpu'" in caplog.text
    assert cpu.config.polarization_plane_eta_deg == 0.0
    want = Integrator(plain, compat="midas-cpu", fit=None).integrate(frame)
    np.testing.assert_array_equal(cpu.integrate(frame).cake, want.cake)
    gpu_rules = Integrator(tilted, compat="midas-gpu", fit=None)
    assert gpu_rules.config.polarization_plane_eta_deg == 30.0
    untilted = Integrator(plain, compat="midas-gpu", fit=None).integrate(frame)
    assert np.nanmax(np.abs(gpu_rules.integrate(frame).cake - untilted.cake)) > 0
