"""Frames whose every value counts (integer, or float without NaN or inf) with a fixed dark and
per-pixel corrections go through a copy of the map with both folded in (``DetectorMap.folded``
in the core): the results must be those of the general kernel, which reads dark and scale per
entry. Float frames holding a few NaN or inf go through it too, the bins those spoil summed again
with the dark entry by entry; frames holding many take the general kernel."""

from __future__ import annotations

import numpy as np
import pytest

from radint import DetectorMap, Integrator, ShapeError
from radint.batch import process_file
from radint.testing import ring_image

FIELDS = ("cake", "cake_sigma", "lineout", "lineout_sigma", "area", "count")


@pytest.fixture
def small_map(small_config):
    return DetectorMap.build(small_config)


def _inputs(config, seed: int = 0):
    rng = np.random.default_rng(seed)
    dark = rng.normal(4.0, 1.5, config.shape)
    dark[10:13, 20:40] = np.nan  # NaN dark pixels are left out, as masked ones
    mask = np.zeros(config.shape, bool)
    mask[:, 57:60] = True
    mask[30:34, :] = True
    flat = rng.uniform(0.8, 1.2, config.shape)
    flat[70, 70:75] = 0.0  # a flat of 0 masks its pixel
    return dark, mask, flat


def _assert_same(folded, general, rtol=1e-12):
    for name in FIELDS:
        if getattr(general, name) is None:  # no sigma without an error model
            assert getattr(folded, name) is None, name
            continue
        a, b = np.asarray(getattr(folded, name)), np.asarray(getattr(general, name))
        assert a.shape == b.shape, name
        assert np.array_equal(np.isfinite(a), np.isfinite(b)), name
        ok = np.isfinite(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=rtol, atol=1e-9 * np.abs(b[ok]).max(),
                                   err_msg=name)  # fmt: skip
    assert folded.metadata.get("nan_pixels", 0) == general.metadata.get("nan_pixels", 0)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.float32, np.float64, "float32+nan"]
)
@pytest.mark.parametrize("error_model", ["poisson", None])
def test_folded_map_equals_the_general_kernel(small_config, small_map, dtype,
                                              error_model):  # fmt: skip
    config = small_config.replace(solid_angle_correction=True, polarization_correction=True)
    dark, mask, flat = _inputs(config)
    mean = ring_image(config, noise=False, dtype=np.float64) * 0.05 + 6
    rng = np.random.default_rng(1)
    frames = rng.poisson(mean, size=(3, *config.shape)).astype(np.float64)
    with_nan = dtype == "float32+nan"
    if with_nan:  # one NaN pixel in one frame: its bins are summed again
        frames[1, 40, 50] = np.nan
        dtype = np.float32
    elif np.dtype(dtype).kind == "f":
        frames -= 0.75  # values below 1 too, whose Poisson variance is 1
    frames = frames.astype(dtype)
    kw = {"detector_map": small_map, "mask": mask, "flat": flat, "error_model": error_model}
    fast = Integrator(config, dark=dark, **kw)
    general = Integrator(config, **kw)
    assert fast._folds(frames[0], 0) and fast._folds(frames[0], 1)
    assert not fast._folds(frames[0], frames[0].size // 4)  # many: the general kernel
    for got, want in (
        (fast.integrate(frames[0]), general.integrate(frames[0].astype(np.float64), dark=dark)),
        (fast.integrate_stack(frames), general.integrate_stack(frames.astype(float), dark=dark)),
        (fast.integrate_stack(list(frames)), general.integrate_stack(frames.astype(float), dark=dark)),
    ):  # fmt: skip
        _assert_same(got, want)
    # The folded map was used and kept (with a NaN frame: by the single frames without one).
    assert fast._folded is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eta_bin", [5.0, 360.0])
def test_moving_nan_and_inf_fold_with_their_bins_summed_again(small_config, small_map, dtype,
                                                              eta_bin):  # fmt: skip
    """Float frames whose few NaN / ±inf move from frame to frame (hot pixels, cosmic-ray
    filters) take the folded map: each spoiled bin is summed again with the dark per entry, and
    every output equals the general kernel's; a frame with NaN over most of it does not fold."""
    config = small_config.replace(
        solid_angle_correction=True, polarization_correction=True, eta_bin_deg=eta_bin
    )
    dark, mask, flat = _inputs(config)
    mean = ring_image(config, noise=False, dtype=np.float64) * 0.05 + 6
    rng = np.random.default_rng(7)
    frames = rng.poisson(mean, size=(4, *config.shape)).astype(np.float64) + 0.1
    for k, f in enumerate(frames):  # a few bad values per frame, each frame elsewhere
        rows, cols = rng.integers(0, config.shape[0], 3), rng.integers(0, config.shape[1], 3)
        f[rows, cols] = (np.nan, np.inf, -np.inf)
        f[20 + k, 5 + k] = np.nan
    frames = frames.astype(dtype)
    kw = {"mask": mask, "flat": flat, "error_model": "poisson"}
    fast = Integrator(config, dark=dark, **kw)
    general = Integrator(config, detector_map=fast.map, **kw)
    got = fast.integrate(frames[0])
    assert fast._folded is not None  # the first frame, with its NaN, took the folded map
    _assert_same(got, general.integrate(frames[0].astype(np.float64), dark=dark))
    _assert_same(fast.integrate_stack(frames),
                 general.integrate_stack(frames.astype(np.float64), dark=dark))  # fmt: skip
    _assert_same(fast.integrate_stack(list(frames)),
                 general.integrate_stack(frames.astype(np.float64), dark=dark))  # fmt: skip
    many = frames[1].copy()
    many[::2] = np.nan  # half the frame: the general kernel
    assert not fast._folds(many, int(np.isnan(many).sum()))
    _assert_same(fast.integrate(many), general.integrate(many.astype(np.float64), dark=dark))


@pytest.mark.parametrize("eta_bin", [360.0, 90.0])
def test_folded_lineout_maps_equal_the_general_kernel(small_config, eta_bin):
    """With few η bins the gather kernels add each bin's image-block pieces; a folded map's
    weights go through them too."""
    config = small_config.replace(eta_bin_deg=eta_bin, solid_angle_correction=True)
    dark, mask, flat = _inputs(config)
    mean = ring_image(config, noise=False, dtype=np.float64) * 0.05 + 6
    frames = np.random.default_rng(2).poisson(mean, size=(3, *config.shape)).astype(np.uint16)
    kw = {"mask": mask, "flat": flat, "error_model": "poisson"}
    fast = Integrator(config, dark=dark, **kw)
    general = Integrator(config, detector_map=fast.map, **kw)
    assert fast._folds(frames[0], 0)
    _assert_same(
        fast.integrate_stack(frames), general.integrate_stack(frames.astype(float), dark=dark)
    )
    _assert_same(fast.integrate(frames[1]), general.integrate(frames[1].astype(float), dark=dark))


def test_fold_with_scale_only_and_given_variances(small_config, small_map):
    config = small_config.replace(solid_angle_correction=True)
    _, mask, _ = _inputs(config)
    frame = np.random.default_rng(2).poisson(50, config.shape).astype(np.uint16)
    var = np.random.default_rng(3).uniform(1, 80, config.shape)
    fast = Integrator(config, detector_map=small_map, mask=mask)
    general = Integrator(config, detector_map=small_map, mask=mask)
    zero = np.zeros(config.shape)  # a dark given per call: the general kernel
    assert fast._folds(frame, 0)
    _assert_same(fast.integrate(frame), general.integrate(frame.astype(np.float32), dark=zero))
    _assert_same(fast.integrate(frame, variance=var),
                 general.integrate(frame.astype(np.float64), variance=var, dark=zero))  # fmt: skip


def test_a_dark_given_per_call_takes_precedence(small_config, small_map):
    dark, mask, _ = _inputs(small_config)
    other = np.full(small_config.shape, 2.5)
    frame = np.random.default_rng(4).poisson(30, small_config.shape).astype(np.uint32)
    with_dark = Integrator(small_config, detector_map=small_map, mask=mask, dark=dark)
    plain = Integrator(small_config, detector_map=small_map, mask=mask)
    _assert_same(with_dark.integrate(frame, dark=other), plain.integrate(frame, dark=other))
    # The integrator's own dark passed back (or an equal copy through same_dark) is no override.
    _assert_same(with_dark.integrate(frame, dark=with_dark.dark), with_dark.integrate(frame))
    assert with_dark.same_dark(dark.copy()) is with_dark.dark
    assert with_dark.same_dark(other) is other
    assert plain.same_dark(other) is other


def test_the_dark_is_copied_read_only_and_checked(small_config, small_map):
    dark = np.full(small_config.shape, 1.0)
    integ = Integrator(small_config, detector_map=small_map, dark=dark)
    dark[:] = 100.0  # the caller's array is not the integrator's
    assert (integ.dark == 1.0).all()
    with pytest.raises(ValueError):
        integ.dark[0, 0] = 5.0
    with pytest.raises(ShapeError, match="dark"):
        Integrator(small_config, detector_map=small_map, dark=np.zeros((3, 3)))
    assert Integrator(small_config, detector_map=small_map).dark is None


def test_no_fold_where_it_would_change_the_rules(small_config, small_map):
    dark, mask, _ = _inputs(small_config)
    frame = np.ones(small_config.shape, np.uint16)
    assert not Integrator(small_config, detector_map=small_map)._folds(frame, 0)  # nothing to fold
    kw = {"detector_map": small_map, "mask": mask, "dark": dark}
    # NaN in a quarter of the pixels: the folded kernels would sum most bins again
    assert not Integrator(small_config, **kw)._folds(frame.astype(np.float32), frame.size // 4)
    assert not Integrator(small_config, precision="float32", **kw)._folds(frame, 0)
    assert not Integrator(small_config, compat="midas-gpu", **kw)._folds(frame, 0)


def test_batch_hands_an_equal_dark_to_the_integrator(small_config, small_map,
                                                     tmp_path):  # fmt: skip
    import tifffile

    dark, mask, _ = _inputs(small_config)
    frames = np.random.default_rng(5).poisson(40, (2, *small_config.shape)).astype(np.uint32)
    tifffile.imwrite(tmp_path / "f.tif", frames)
    fast = Integrator(small_config, detector_map=small_map, mask=mask, dark=dark)
    out = process_file(tmp_path / "f.tif", str(tmp_path / "out"), ["xy"], dark=dark.copy(),
                       integrator=fast)  # fmt: skip
    assert out.ok, out.error
    assert fast._folded is not None


def test_fold_on_top_of_the_marker_map(small_config, small_map):
    """Gap / bad-pixel values (``invalid_values``) leave their pixels out through a map without
    them; with a fixed dark that map is folded in turn (and again when the marked pixels move)."""
    dark, mask, _ = _inputs(small_config)
    rng = np.random.default_rng(6)
    kw = {"detector_map": small_map, "mask": mask, "invalid_values": [65535]}
    fast = Integrator(small_config, dark=dark, **kw)
    general = Integrator(small_config, **kw)
    for gap in ((slice(40, 44), slice(None)), (slice(None), slice(80, 83))):
        frames = rng.poisson(60, (2, *small_config.shape)).astype(np.uint16)
        frames[(slice(None), *gap)] = 65535
        floats = frames.astype(np.float64)
        floats[frames == 65535] = np.nan
        _assert_same(fast.integrate_stack(frames), general.integrate_stack(floats, dark=dark))
        assert fast._folded is not None and fast._folded[0] is not small_map._core


def test_a_signal_offset_only_goes_with_a_folded_map(small_config, small_map):
    from radint import RadintError, _core

    offset = np.zeros(small_map.n_r * small_map.n_eta)
    frame = np.ones(small_config.shape, np.uint16)
    _core.integrate(small_map._core, frame, signal_offset=offset)  # integer frame: accepted
    for kw in ({"dark": np.zeros(frame.size)}, {"scale": np.ones(frame.size)}):
        with pytest.raises(RadintError, match="signal offset"):
            _core.integrate(small_map._core, frame, signal_offset=offset, **kw)
    _core.integrate(small_map._core, frame.astype(np.float32), signal_offset=offset)  # finite
    nan = frame.astype(np.float32)
    nan[3, 4] = np.nan
    with pytest.raises(RadintError, match="signal offset"):
        _core.integrate(small_map._core, nan, signal_offset=offset)
    with pytest.raises(RadintError, match="signal offset"):  # the caller's count is believed
        _core.integrate(small_map._core, frame.astype(np.float32), signal_offset=offset,
                        nonfinite=1)  # fmt: skip
    with pytest.raises(ShapeError, match="signal offset"):
        _core.integrate(small_map._core, frame, signal_offset=offset[:-1])
    # A few NaN with the dark the offset stands for: their bins are summed again with it.
    dark = np.zeros(frame.size)
    _core.integrate(small_map._core, nan, signal_offset=offset, offset_dark=dark)
    many = nan.copy()
    many[::2] = np.nan  # too many to sum their bins again
    with pytest.raises(RadintError, match="signal offset"):
        _core.integrate(small_map._core, many, signal_offset=offset, offset_dark=dark)
    with pytest.raises(ShapeError, match="offset dark"):
        _core.integrate(small_map._core, nan, signal_offset=offset, offset_dark=dark[:-1])


def test_count_nonfinite_counts_nan_and_inf_of_float_frames():
    from radint import _core

    a = np.zeros((2, 50, 30), np.float32)
    a[0, 1, 2] = np.nan
    a[1, 3, 4] = np.inf
    a[1, 49, 29] = -np.inf
    assert _core.count_nonfinite(a, n_threads=2) == 3
    assert _core.count_nonfinite([a[0], a[1].astype(np.float64)]) == 3
    assert _core.count_nonfinite(np.full(7, 65535, np.uint16)) == 0


def test_narrow_to_f32_checks_its_buffers():
    from radint import _core

    src = np.arange(12, dtype=np.float64).reshape(3, 4)
    dst = np.empty((3, 4), np.float32)
    assert _core.narrow_to_f32(src, dst) == 0 and np.array_equal(dst, src)
    assert _core.narrow_to_f32(src + 0.1, dst) is None
    with pytest.raises(ShapeError, match="dst holds 11 values, src 12"):
        _core.narrow_to_f32(src, np.empty(11, np.float32))
    with pytest.raises(ShapeError, match="C-contiguous"):
        _core.narrow_to_f32(src, np.empty((4, 3), np.float32).T)


def test_count_equal_counts_marker_values_in_the_frames_own_type():
    from radint import DtypeError, _core

    frame = np.array([[0, 65535, 7], [65535, 3, 7]], dtype=np.uint16)
    assert _core.count_equal(frame.ravel(), [65535, 7]) == 4
    assert _core.count_equal(frame.ravel(), [-1]) == 0  # -1 is no uint16 value
    big = np.tile(np.arange(-3, 4, dtype=np.int32), 100_000)
    assert _core.count_equal(big, [-1, -2, -1], n_threads=2) == 200_000
    with pytest.raises(DtypeError, match="integer frames only"):
        _core.count_equal(np.zeros(3, np.float32), [0])


def test_marker_values_in_a_mixed_dtype_list_are_left_out(small_config, small_map):
    """A list mixing integer and float frames is integrated in the common (float) type: the
    integer frame's marker values must be masked there too, not integrated as counts."""
    integ = Integrator(small_config, detector_map=small_map, invalid_values=[65535])
    rng = np.random.default_rng(7)
    ints = rng.poisson(40, small_config.shape).astype(np.uint16)
    ints[20:22, :] = 65535
    floats = rng.poisson(40, small_config.shape).astype(np.float32)
    want_int = ints.astype(np.float64)
    want_int[ints == 65535] = np.nan
    for frames, wants in (
        ([ints, floats], [want_int, floats]),
        ([floats, ints], [floats, want_int]),
    ):
        got = integ.integrate_stack(frames)
        want = integ.integrate_stack(np.stack(wants).astype(np.float64))
        np.testing.assert_allclose(got.cake, want.cake, rtol=1e-6, equal_nan=True)


def test_fortran_ordered_frames_are_refused_by_the_core(small_config, small_map):
    from radint import _core

    frame = np.asfortranarray(np.arange(small_config.shape[0] * small_config.shape[1],
                                        dtype=np.uint32).reshape(small_config.shape))  # fmt: skip
    with pytest.raises(ShapeError, match="C-contiguous"):
        _core.integrate(small_map._core, frame)
    # The Integrator makes such frames C-ordered itself.
    integ = Integrator(small_config, detector_map=small_map)
    np.testing.assert_allclose(integ.integrate(frame).cake,
                               integ.integrate(np.ascontiguousarray(frame)).cake, equal_nan=True)  # fmt: skip


@pytest.mark.parametrize("corrected", [False, True])
def test_fixed_nan_pixels_with_a_few_moving_ones_keep_the_map_without_the_fixed(
    small_config, small_map, corrected
):
    """Gap rows set to NaN in every frame plus a few NaN / inf pixels that move from frame to
    frame (hot pixels): two calls in a row sharing the gaps build the map without them, kept
    while every frame is non-finite there; the moving ones are left out per frame. Every call
    equals the general kernel's, also when a gap pixel turns finite (the map is then not used)
    and when the moving pixels land on the gaps."""
    config = small_config.replace(solid_angle_correction=corrected)
    dark, mask, flat = _inputs(config) if corrected else (None, None, None)
    kw = {"detector_map": small_map, "mask": mask, "flat": flat}
    fast = Integrator(config, dark=dark, error_model="poisson", **kw)
    general = Integrator(config, error_model="poisson", **kw)
    want_dark = np.zeros(config.shape) if dark is None else dark
    rng = np.random.default_rng(21)
    n_pixels = int(np.prod(config.shape))

    def frames(n: int, moving: int = 6) -> np.ndarray:
        f = rng.poisson(30, (n, *config.shape)).astype(np.float32) - 0.5
        f[:, 40:42, :] = np.nan
        for k in range(n):
            f[k].reshape(-1)[rng.choice(n_pixels, moving, replace=False)] = rng.choice(
                [np.nan, np.inf, -np.inf], moving
            )
        return f

    def check(stack: np.ndarray) -> None:
        got = fast.integrate_stack(stack)
        want = general.integrate_stack(stack, dark=want_dark)
        _assert_same(got, want)
        assert got.metadata["nan_pixels"] == want.metadata["nan_pixels"]

    check(frames(2))
    assert fast._nan_cache is None  # seen once
    check(frames(3))  # shares the gap rows with the last call: the map without them
    cached = fast._nan_cache
    assert cached is not None and cached[0].size >= 2 * config.shape[1]
    for _ in range(3):
        check(frames(1))
        check(frames(4, moving=40))
    assert fast._nan_cache is cached
    healed = frames(2)
    healed[1, 40, 3] = 7.0  # a gap pixel with a value: this call cannot take the map
    check(healed)
    check(frames(1, moving=0))
    # A wider fixed pattern (more gap rows) replaces the cached one after two calls.
    wider = frames(2)
    wider[:, 60:66, :] = np.nan
    check(wider)
    check(wider[::-1].copy())
    assert fast._nan_cache[0].size >= 8 * config.shape[1]


@pytest.mark.parametrize("corrected", [False, True])
def test_float_frames_with_nan_at_fixed_pixels_take_a_map_without_them(small_config, small_map,
                                                                        corrected):  # fmt: skip
    """Float frames holding NaN / inf at the same pixels call after call (gaps, dead pixels)
    integrate through a map without those pixels once two calls in a row had them, folded with
    a fixed dark and corrections: the general kernel's results, every time, whatever moves."""
    config = small_config.replace(solid_angle_correction=corrected)
    dark, mask, flat = _inputs(config) if corrected else (None, None, None)
    kw = {"detector_map": small_map, "mask": mask, "flat": flat}
    fast = Integrator(config, dark=dark, **kw)
    general = Integrator(config, **kw)
    zero = np.zeros(config.shape)
    rng = np.random.default_rng(8)

    def frames(n: int, gap: tuple) -> np.ndarray:
        f = rng.poisson(30, (n, *config.shape)).astype(np.float32) - 0.5
        f[(slice(None), *gap)] = np.nan
        f[:, 5, 7] = -np.inf
        return f

    def check(stack: np.ndarray) -> None:
        want = general.integrate_stack(stack, dark=zero if dark is None else dark)
        _assert_same(fast.integrate_stack(stack), want)
        _assert_same(fast.integrate(stack[0]), general.integrate(stack[0], dark=want_dark))

    want_dark = zero if dark is None else dark
    rows = (slice(40, 43), slice(None))
    first = frames(2, rows)
    _assert_same(fast.integrate_stack(first), general.integrate_stack(first, dark=want_dark))
    assert fast._nan_cache is None  # seen once
    check(frames(3, rows))  # its stack call builds the map
    cached = fast._nan_cache
    assert cached is not None and cached[0].size == 3 * config.shape[1] + 1
    check(frames(1, rows))
    assert fast._nan_cache is cached  # kept while the pixels stay
    one = frames(1, rows)
    assert fast._nan_map([one], True, cached[0].size) == (cached[1]._core, 0)  # the map taken
    moved = frames(2, (slice(None), slice(60, 62)))
    _assert_same(fast.integrate_stack(moved), general.integrate_stack(moved, dark=want_dark))
    assert fast._nan_cache is cached  # other pixels, once: the general kernel
    check(moved)  # twice: a map without those
    assert fast._nan_cache is not cached and fast._nan_cache[0].size == 2 * config.shape[0] + 1
    check(np.concatenate([frames(1, rows), moved[:1]]))  # frames that differ: general kernel
    if dark is not None:
        assert fast._folded is not None and fast._folded[0] is fast._nan_cache[1]._core
