"""The exact detector map: invariants, determinism, zero-copy views, MIDAS files, cache."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from radint import (
    DetectorMap,
    IntegrationConfig,
    InvalidInputError,
    MapFormatError,
    RadintError,
    ShapeError,
)
from radint.corrections import pixel_geometry


def per_pixel_area(m: DetectorMap) -> np.ndarray:
    return np.bincount(m.pixel, weights=m.area, minlength=m.shape[0] * m.shape[1])


def test_invariants(small_config):
    m = DetectorMap.build(small_config)
    assert m.n_entries > 0
    assert np.all(m.area > 0) and np.all(np.isfinite(m.area))
    assert m.pixel.max() < m.shape[0] * m.shape[1]
    assert np.all(np.diff(m.indptr.astype(np.int64)) >= 0)
    # Pixels wholly inside the binned radial range: areas sum to the quad's area. The quad of
    # an undistorted untilted detector is 1 px²; here (tilt + distortion) it differs by the
    # Jacobian, so compare with a map whose bins are one huge annulus.
    g = pixel_geometry(small_config)
    r = g["r_px"]
    inside = (r > small_config.r_min_px + 2) & (r < small_config.r_max_px - 2)
    one_bin = DetectorMap.build(
        small_config.replace(
            r_bin_px=small_config.r_max_px - small_config.r_min_px, eta_bin_deg=360
        )
    )
    a_fine = per_pixel_area(m)[inside]
    a_one = per_pixel_area(one_bin)[inside]
    np.testing.assert_allclose(a_fine, a_one, rtol=1e-6)  # float32 areas
    assert np.all(np.abs(a_one - 1) < 0.05)


def test_eta_cross_weights_are_exact_for_unevenly_split_pixels(small_config):
    """Each shared pixel's lineout covariance weight is 2·Σ_{i<j} wᵢ·wⱼ over its entries in the
    row, to float64 rounding, also for a pixel split very unevenly between η bins (computed as
    (Σw)² − Σw², it cancelled to ~1e-9 relative). The reference sums the pairs exactly."""
    from fractions import Fraction

    config = small_config.replace(eta_bin_deg=7.5, r_bin_px=2.4)
    m = DetectorMap.build(config)
    indptr, pixel, weight = m._core.eta_cross()
    area = np.asarray(m.area, np.float64)
    rows = np.asarray(m.indptr, np.int64)[:: m.n_eta]
    assert indptr.size == m.n_r + 1 and pixel.size > 100
    worst = 0.0
    for r in range(m.n_r):
        lo, hi = rows[r], rows[r + 1]
        entries: dict[int, list[float]] = {}
        for e in range(lo, hi):
            entries.setdefault(int(m.pixel[e]), []).append(float(area[e]))
        shared = {p: w for p, w in entries.items() if len(w) > 1}
        got = dict(
            zip(pixel[indptr[r] : indptr[r + 1]].tolist(), weight[indptr[r] : indptr[r + 1]])
        )
        assert got.keys() == shared.keys()
        for p, w in shared.items():
            exact = 2 * sum(
                Fraction(w[i]) * Fraction(w[j]) for i in range(len(w)) for j in range(i + 1, len(w))
            )
            worst = max(worst, abs(float((Fraction(got[p]) - exact) / exact)))
    assert worst < 1e-14


def test_flat_geometry_pixels_have_unit_area(small_config):
    flat = small_config.replace(tx_deg=0, ty_deg=0, tz_deg=0, distortion=(0.0,) * 15)
    m = DetectorMap.build(flat)
    r = pixel_geometry(flat)["r_px"]
    inside = (r > flat.r_min_px + 2) & (r < flat.r_max_px - 2)
    np.testing.assert_allclose(per_pixel_area(m)[inside], 1.0, rtol=2e-7)


def test_deterministic_across_thread_counts(small_config):
    a = DetectorMap.build(small_config, n_threads=1)
    b = DetectorMap.build(small_config, n_threads=2)
    for name in ("indptr", "pixel", "area", "delta_r", "mask_hit"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name


def test_views_are_zero_copy(small_config):
    m = DetectorMap.build(small_config)
    v1, v2 = m.pixel, m.pixel
    assert v1.__array_interface__["data"][0] == v2.__array_interface__["data"][0]
    assert not v1.flags.writeable and not v1.flags.owndata
    assert type(v1.base).__name__ == "MapCore"


def test_mask_and_imtransopt(small_config, tmp_path, caplog):
    import tifffile

    mask = np.zeros(small_config.shape, np.uint8)
    mask[10:20, 30:40] = 1
    mask[50, 50] = 255  # only value 1 masks (MIDAS)
    tifffile.imwrite(tmp_path / "m.tif", mask)
    with caplog.at_level(logging.WARNING, logger="radint"):
        m = DetectorMap.build(small_config.replace(mask_file=str(tmp_path / "m.tif")))
    assert "masks the 100 pixels holding 1" in caplog.text and "(255) are not masked" in caplog.text
    masked = set(np.flatnonzero(mask.ravel() == 1))
    assert not masked & set(m.pixel.tolist())
    assert 50 * 120 + 50 in set(m.pixel.tolist())
    assert m.mask_hit.sum() > 0
    with pytest.raises(ShapeError, match=r"MaskFile: .*bad.tif: expected shape \(100, 120\)"):
        tifffile.imwrite(tmp_path / "bad.tif", mask[:, :60])
        DetectorMap.build(small_config.replace(mask_file=str(tmp_path / "bad.tif")))
    (tmp_path / "junk.edf").write_bytes(b"not an image")
    with pytest.raises(MapFormatError, match=r"MaskFile: .*junk.edf: cannot be read as an image"):
        DetectorMap.build(small_config.replace(mask_file=str(tmp_path / "junk.edf")))
    fabio = pytest.importorskip("fabio")
    fabio.edfimage.EdfImage(data=mask.astype(np.int8)).write(str(tmp_path / "m.edf"))
    from_edf = DetectorMap.build(small_config.replace(mask_file=str(tmp_path / "m.edf")))
    np.testing.assert_array_equal(from_edf.pixel, m.pixel)

    # A left-right flipped detector (ImTransOpt 1) maps raw pixel (z, y) where the plain map
    # has (z, NY-1-y).
    plain = DetectorMap.build(small_config)
    flipped = DetectorMap.build(small_config.replace(im_trans_opt=(1,)))
    ny = small_config.n_pixels_y
    remap = (plain.pixel // ny) * ny + (ny - 1 - plain.pixel % ny)
    assert sorted(zip(remap.tolist(), plain.area.tolist())) == sorted(
        zip(flipped.pixel.tolist(), flipped.area.tolist())
    )


def test_midas_files_round_trip(small_config, tmp_path):
    m = DetectorMap.build(small_config)
    m.save_midas(tmp_path, small_config)
    raw = (tmp_path / "Map.bin").read_bytes()
    assert raw[:4] == (0x3050414D).to_bytes(4, "little")
    assert (len(raw) - 64) % 24 == 0
    back = DetectorMap.load_midas(tmp_path, small_config)
    assert back.midas_header["hash_matches"] is True
    np.testing.assert_array_equal(back.indptr, m.indptr)
    np.testing.assert_array_equal(back.pixel, m.pixel)
    np.testing.assert_array_equal(back.area, m.area)
    np.testing.assert_array_equal(back.weight, m.area.astype(np.float64))


def test_midas_files_errors(small_config, tmp_path):
    m = DetectorMap.build(small_config)
    m.save_midas(tmp_path, small_config)
    with pytest.raises(
        MapFormatError, match="holds 3528 bins .* parameters give 99 R bins x 36 eta bins"
    ):
        DetectorMap.load_midas(tmp_path, small_config.replace(r_max_px=71))
    data = (tmp_path / "Map.bin").read_bytes()
    (tmp_path / "Map.bin").write_bytes(data[:-5])
    with pytest.raises(MapFormatError, match="must be a multiple of 24"):
        DetectorMap.load_midas(tmp_path, small_config)
    with pytest.raises(RadintError, match="No such file"):
        DetectorMap.load_midas(tmp_path / "missing", small_config)


def test_legacy_headerless_map(small_config, tmp_path):
    m = DetectorMap.build(small_config)
    m.save_midas(tmp_path, small_config)
    for name in ("Map.bin", "nMap.bin"):
        p = tmp_path / name
        p.write_bytes(p.read_bytes()[64:])
    back = DetectorMap.load_midas(tmp_path, small_config)
    assert back.midas_header["has_header"] is False
    np.testing.assert_array_equal(back.pixel, m.pixel)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(map_bytes=st.binary(max_size=400), nmap_bytes=st.binary(max_size=400))
def test_fuzzed_map_files_only_raise_radint_errors(tmp_path_factory, map_bytes, nmap_bytes):
    from radint import IntegrationConfig

    cfg = IntegrationConfig(
        n_pixels_y=8, n_pixels_z=8, r_min_px=0, r_max_px=4, r_bin_px=1, eta_bin_deg=180
    )
    d = tmp_path_factory.mktemp("fuzz")
    (d / "Map.bin").write_bytes(map_bytes)
    (d / "nMap.bin").write_bytes(nmap_bytes)
    try:
        DetectorMap.load_midas(d, cfg)
    except RadintError:
        pass


def test_cache_reuse_and_rebuild(small_config, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="radint")
    a = DetectorMap.cached(small_config, tmp_path)
    b = DetectorMap.cached(small_config, tmp_path)
    assert "reusing cached detector map" in caplog.text
    np.testing.assert_array_equal(a.pixel, b.pixel)
    c = DetectorMap.cached(small_config.replace(r_bin_px=0.9), tmp_path)
    assert c.n_r != a.n_r
    assert len(list(tmp_path.glob("radint-map-*.npz"))) == 2
    # The map version is in the name: a cache of an older mapper (whose map for the same
    # configuration may differ) is never picked up by this one.
    from radint.detector_map import _CACHE_VERSION

    assert all(p.name.startswith(f"radint-map-v{_CACHE_VERSION}-")
               for p in tmp_path.glob("radint-map-*.npz"))  # fmt: skip
    old = tmp_path / f"radint-map-{small_config.map_key()}.npz"
    (tmp_path / f"radint-map-v{_CACHE_VERSION}-{small_config.map_key()}.npz").rename(old)
    caplog.clear()
    DetectorMap.cached(small_config, tmp_path)
    assert "saved detector map cache" in caplog.text and "reusing" not in caplog.text


def test_cache_file_is_an_aligned_npz_and_plain_npz_caches_still_load(small_config, tmp_path):
    """The cache is read as views of the mapped file: its arrays start 64-byte aligned, np.load
    reads it as any npz, and an npz written by np.savez (unaligned members) loads too."""
    import zipfile

    built = DetectorMap.build(small_config)
    path = built.save(tmp_path / "m.npz")
    names = ("indptr", "pixel", "area", "delta_r", "mask_hit", "bin_geometric_area")
    with np.load(path) as z:
        plain = {k: z[k] for k in z.files}
        for k in names:
            np.testing.assert_array_equal(plain[k], getattr(built, k))
    with zipfile.ZipFile(path) as z:
        raw = path.read_bytes()
        for info in z.infolist():
            name_len, extra_len = np.frombuffer(raw, "<u2", 2, info.header_offset + 26)
            start = info.header_offset + 30 + int(name_len) + int(extra_len)
            header_len = len(raw[start:].split(b"\n", 1)[0]) + 1
            assert (start + header_len) % 64 == 0, info.filename
    np.savez(tmp_path / "plain.npz", **plain)
    for p in (path, tmp_path / "plain.npz"):
        loaded = DetectorMap.load(p, small_config)
        for k in names:
            np.testing.assert_array_equal(getattr(loaded, k), getattr(built, k))
        np.testing.assert_array_equal(loaded.r_edges_px, built.r_edges_px)
    (tmp_path / "bad.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MapFormatError):
        DetectorMap.load(tmp_path / "bad.npz", small_config)


def test_a_loaded_cache_reads_its_entries_in_place_and_survives_a_replacement(
    small_config, tmp_path, monkeypatch
):
    """The cache's entry arrays are mapped, not copied. A new cache renamed over the file (as
    save() replaces one) leaves a loaded map as it was; a file renamed over between reading its
    layout and mapping it, or laid out otherwise (np.savez), is read by copying instead."""
    import radint.detector_map as dm
    from radint import Integrator

    monkeypatch.setattr(dm, "_maps_safely", lambda path: True)  # whatever file system tmp is on
    built = DetectorMap.build(small_config)
    path = built.save(tmp_path / "m.npz")
    loaded = DetectorMap.load(path, small_config)
    assert loaded._core.entries_mapped and not built._core.entries_mapped
    frame = np.random.default_rng(5).uniform(0, 100, built.shape).astype(np.float32)
    want = Integrator(small_config, detector_map=built).integrate(frame)

    other = DetectorMap.build(small_config.replace(r_bin_px=0.7))
    other.save(path)  # renamed over the file `loaded` reads
    got = Integrator(small_config, detector_map=loaded).integrate(frame)
    np.testing.assert_array_equal(got.cake, want.cake)
    np.testing.assert_array_equal(loaded.pixel, built.pixel)
    assert DetectorMap.load(path, small_config).n_r == other.n_r

    built.save(path)
    for check in ("_same_file", "_maps_safely"):
        with monkeypatch.context() as patch:
            patch.setattr(dm, check, lambda *args: False)
            copied = DetectorMap.load(path, small_config)
        assert not copied._core.entries_mapped, check
        np.testing.assert_array_equal(copied.area, built.area)


def test_caches_on_network_file_systems_are_copied_not_mapped(tmp_path, monkeypatch):
    """A file another host deletes is gone for this one too on NFS (pages not yet read fail):
    only caches on local Linux file systems are mapped, by the longest mount point above them."""
    import radint.detector_map as dm

    shared = tmp_path / "beamline data"
    (shared / "sub").mkdir(parents=True)
    escaped = str(shared).replace(" ", "\\040")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        f"40 22 0:50 / {escaped} rw,relatime shared:9 - nfs4 server:/export rw,vers=4.2\n"
        f"41 22 0:51 / {escaped}2 rw,relatime - xfs /dev/vdb rw\n"
    )
    monkeypatch.setattr(dm, "_MOUNTINFO", str(mountinfo))
    assert not dm._maps_safely(shared / "sub" / "m.npz")
    assert not dm._maps_safely(shared)
    assert dm._maps_safely(tmp_path / "m.npz")  # ext4 at /
    assert dm._maps_safely(Path(f"{shared}2") / "m.npz")  # a sibling, not below the NFS mount
    monkeypatch.setattr(dm, "_MOUNTINFO", str(tmp_path / "absent"))
    assert not dm._maps_safely(tmp_path / "m.npz")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"indptr": [0, 5, 2]}, "indptr is not non-decreasing"),  # the sums ran before the check
        ({"indptr": [0, 1, 5]}, "indptr must run from 0 to 2 (the entry count), got 0..5"),
        ({"pixel": [0, -1]}, "pixel: values must lie in 0..4294967295, got -1..0"),
        ({"shape": (-10, 10)}, "shape: expected (rows, columns) >= 0"),
        ({"area": [1.0, np.nan]}, "area must be finite and >= 0, got NaN at entry 1"),
        ({"area": [1.0, -0.5]}, "area must be finite and >= 0, got -0.5 at entry 1"),
        ({"r_edges_px": [0.0, 2.0, 1.0]}, "r_edges must increase, got 2 then 1"),
        ({"area": None}, "area: an array is required, got None"),
        ({"mask_hit": [0, 300]}, "mask_hit: values must lie in 0..255, got 0..300"),
    ],
)
def test_from_arrays_refuses_malformed_maps_with_a_message(change, message):
    """Regression (API audit): a decreasing indptr panicked in Rust (PanicException, which
    `except Exception` does not catch), a negative pixel read as 4294967295, NaN areas and
    decreasing edges were taken."""
    arrays = {"shape": (10, 10), "r_edges_px": [0.0, 1.0, 2.0], "eta_edges_deg": [-180.0, 180.0],
              "indptr": [0, 1, 2], "pixel": [0, 1], "area": [1.0, 1.0]}  # fmt: skip
    DetectorMap.from_arrays(**arrays)
    with pytest.raises(InvalidInputError) as info:
        DetectorMap.from_arrays(**{**arrays, **change})
    assert message in str(info.value)


def test_a_cache_whose_members_run_past_its_end_is_refused(small_config, tmp_path):
    """A member's header may claim more data than the file holds (a damaged cache): the map is
    refused with the file named, never read past the mapping, and so is a place past the end
    handed to the binding itself."""
    import zipfile

    from radint import _core

    built = DetectorMap.build(small_config)
    path = built.save(tmp_path / "m.npz")
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("pixel.npy")
    name_len, extra_len = np.frombuffer(bytes(raw), "<u2", 2, info.header_offset + 26)
    start = info.header_offset + 30 + int(name_len) + int(extra_len)
    header = bytes(raw[start : start + 128]).split(b"\n", 1)[0]
    count = int(header.split(b"'shape': (")[1].split(b",")[0])
    bigger = header.replace(f"({count},".encode(), f"({count * 1000},".encode())
    assert bigger.rstrip() == bigger[: len(header)].rstrip()  # the padding absorbs the digits
    raw[start : start + len(header)] = bigger[: len(header)]
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(MapFormatError, match="bad.npz"):
        DetectorMap.load(tmp_path / "bad.npz", small_config)

    size = path.stat().st_size
    n = built.n_entries
    edges = (np.asarray(built.r_edges_px), np.asarray(built.eta_edges_deg))
    for place, message in (((size - 8, n), "run past the end"), ((3, n), "not aligned")):
        with pytest.raises(MapFormatError, match=message):
            _core.MapCore.from_file(
                str(path), built.shape[1], built.shape[0], *edges,
                (0, built.n_bins + 1), place, (0, n), (0, n),
            )  # fmt: skip


def test_a_damaged_cache_is_refused_by_its_crc_and_rebuilt(small_config, tmp_path, caplog):
    """Audit (large jobs): a cache with 64 KiB overwritten inside its areas was used as it was
    (1 576 of 397 440 bins wrong), since the map is read in place and its structural check sees
    indices, not values. The members' CRC-32s are checked now: refused naming the member, and
    `cached` rebuilds it. A file cut short is refused too."""
    import zipfile

    built = DetectorMap.build(small_config)
    DetectorMap.cached(small_config, tmp_path)
    (path,) = tmp_path.glob("radint-map-*.npz")
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("area.npy")
    raw = bytearray(path.read_bytes())
    middle = info.header_offset + info.file_size // 2
    raw[middle : middle + 16] = np.full(4, 0.5, np.float32).tobytes()  # areas that look right
    path.write_bytes(bytes(raw))
    with pytest.raises(MapFormatError, match=r"member area\.npy is damaged \(its CRC-32 is"):
        DetectorMap.load(path, small_config)
    with caplog.at_level(logging.WARNING, logger="radint"):
        rebuilt = DetectorMap.cached(small_config, tmp_path)
    assert "rebuilding detector map" in caplog.text and "area.npy is damaged" in caplog.text
    np.testing.assert_array_equal(rebuilt.area, built.area)
    np.testing.assert_array_equal(DetectorMap.load(path, small_config).area, built.area)

    # A member's offset in the central directory pointing past the file (one byte flipped)
    # raised struct.error from the header read, before any CRC: no rebuild, a bare traceback.
    raw = bytearray(path.read_bytes())
    entries = [k for k in range(len(raw) - 54) if raw[k : k + 4] == b"PK\x01\x02"]
    (directory,) = [k for k in entries if raw[k + 46 : k + 54] == b"area.npy"]
    raw[directory + 45] ^= 0x7F  # the top byte of the member's local header offset
    path.write_bytes(bytes(raw))
    with pytest.raises(MapFormatError, match="not a radint map cache"):
        DetectorMap.load(path, small_config)
    np.testing.assert_array_equal(DetectorMap.cached(small_config, tmp_path).area, built.area)

    cut = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        last = max(z.infolist(), key=lambda i: i.header_offset)
    # Cut inside the last member: the central directory is gone with it, so it is not a ZIP.
    (tmp_path / "cut.npz").write_bytes(cut[: last.header_offset + 40])
    with pytest.raises(MapFormatError, match="cut.npz"):
        DetectorMap.load(tmp_path / "cut.npz", small_config)


# Derandomized so CI is reproducible; a 20,000-case random campaign (tx/ty/tz, BC on and off pixel
# edges, all η widths) found no violation after the tangent-chord fix in polygon.rs.
@settings(max_examples=60, deadline=None, derandomize=True)
# Regression: a tx tilt with BC on a pixel edge made the R=17 circle tangent to a pixel's inner
# edge; the rounding of the tangent point turned an arc into a chord (+6.4e-5 px²).
@example(tilt=(-1.5, 0.0, 0.0), bc=(0.0, 0.5), r_bin=1.0, eta_bin=1.0, eta_min=-160.0, sub=1)
# Regression: a sub-pixel edge through the beam centre (BC y = -3e-52) lost 6 % of a pixel.
@example(
    tilt=(0.0, 0.0, 0.0),
    bc=(-3.3065023375979663e-52, 1.25),
    r_bin=1.0,
    eta_bin=1.0,
    eta_min=-160.0,
    sub=2,
)
@example(tilt=(0.0, 0.0, 0.0), bc=(0.0, 1.0), r_bin=1.0, eta_bin=5.0, eta_min=-180.0, sub=2)
@given(
    tilt=st.tuples(*[st.floats(-3, 3)] * 3),
    bc=st.tuples(st.floats(-20, 60), st.floats(-20, 50)),
    r_bin=st.floats(0.3, 3.0),
    eta_bin=st.sampled_from([1.0, 5.0, 7.5, 30.0, 90.0, 200.0, 360.0]),
    eta_min=st.floats(-560, 560),
    sub=st.sampled_from([1, 2, 3]),
)
def test_property_areas_conserved_positive_in_range(tilt, bc, r_bin, eta_bin, eta_min, sub):
    """Random geometries and binnings: every area is positive and finite, every pixel index is in
    the image, and a pixel wholly inside the radial range keeps its whole quad area."""
    from radint import IntegrationConfig

    n_eta = max(1, round(360 / eta_bin))
    cfg = IntegrationConfig(
        n_pixels_y=40, n_pixels_z=30, pixel_size_y_um=100, pixel_size_z_um=100, lsd_um=1e5,
        tx_deg=tilt[0], ty_deg=tilt[1], tz_deg=tilt[2], bc_y_px=bc[0], bc_z_px=bc[1],
        r_min_px=0.0, r_max_px=120.0, r_bin_px=r_bin, eta_min_deg=eta_min,
        eta_max_deg=eta_min + n_eta * 360 / n_eta, eta_bin_deg=360 / n_eta, sub_pixel_level=sub,
    )  # fmt: skip
    m = DetectorMap.build(cfg)
    assert np.all(m.area > 0) and np.all(np.isfinite(m.area))
    assert m.pixel.max() < 40 * 30
    whole = DetectorMap.build(
        cfg.replace(r_bin_px=120.0, eta_bin_deg=360.0, eta_max_deg=eta_min + 360)
    )
    np.testing.assert_allclose(per_pixel_area(m), per_pixel_area(whole), rtol=2e-6, atol=1e-7)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    tx=st.floats(-180, 180),
    bc=st.tuples(st.floats(5, 35), st.floats(5, 25)),
    r_bin=st.floats(0.3, 2.0),
    eta_bin=st.sampled_from([1.0, 5.0, 7.5, 30.0, 90.0]),
    eta_min=st.floats(-200, -160),
)
def test_property_full_bins_get_the_exact_annular_sector_area(tx, bc, r_bin, eta_bin, eta_min):
    """Without ty/tz tilt the detector plane is the corrected plane: every bin wholly on the
    detector must hold exactly ½(R₂² − R₁²)·Δη px², whatever the in-plane rotation."""
    from radint import IntegrationConfig

    n_eta = round(360 / eta_bin)
    cfg = IntegrationConfig(
        n_pixels_y=40, n_pixels_z=30, pixel_size_y_um=100, pixel_size_z_um=100, lsd_um=1e5,
        tx_deg=tx, bc_y_px=bc[0], bc_z_px=bc[1], r_min_px=0.0, r_max_px=60.0, r_bin_px=r_bin,
        eta_min_deg=eta_min, eta_max_deg=eta_min + 360, eta_bin_deg=360 / n_eta,
    )  # fmt: skip
    m = DetectorMap.build(cfg)
    inscribed = min(bc[0] + 0.5, 39.5 - bc[0], bc[1] + 0.5, 29.5 - bc[1])
    got = m.bin_geometric_area.reshape(m.n_r, m.n_eta)
    edges = m.r_edges_px
    full = edges[1:] < inscribed
    assert full.any()
    want = 0.5 * (edges[1:] ** 2 - edges[:-1] ** 2) * np.deg2rad(360 / n_eta)
    np.testing.assert_allclose(
        got[full], np.broadcast_to(want[full, None], got[full].shape), rtol=1e-6
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    tilt=st.tuples(*[st.floats(-3, 3)] * 3),
    bc=st.tuples(st.floats(-20, 60), st.floats(-20, 50)),
    eta_bin=st.sampled_from([1.0, 5.0, 7.5, 30.0]),
    eta_min=st.floats(-200, -160),
    split=st.floats(0.05, 0.95),
)
def test_property_complementary_partial_eta_ranges_add_up(tilt, bc, eta_bin, eta_min, split):
    """Two maps over complementary partial η ranges hold, pixel by pixel, exactly the area of the
    full-circle map: a pixel straddling a range edge is split at it, never credited whole (the
    defect the C-parity case far_partial found)."""
    from radint import IntegrationConfig

    n_eta = round(360 / eta_bin)
    k = min(max(1, round(split * n_eta)), n_eta - 1)
    cut = eta_min + k * eta_bin
    cfg = IntegrationConfig(
        n_pixels_y=40, n_pixels_z=30, pixel_size_y_um=100, pixel_size_z_um=100, lsd_um=1e5,
        tx_deg=tilt[0], ty_deg=tilt[1], tz_deg=tilt[2], bc_y_px=bc[0], bc_z_px=bc[1],
        r_min_px=0.0, r_max_px=120.0, r_bin_px=1.0, eta_min_deg=eta_min,
        eta_max_deg=eta_min + 360, eta_bin_deg=eta_bin,
    )  # fmt: skip
    first = DetectorMap.build(cfg.replace(eta_max_deg=cut))
    second = DetectorMap.build(cfg.replace(eta_min_deg=cut, eta_max_deg=eta_min + 360))
    whole = DetectorMap.build(cfg)
    np.testing.assert_allclose(
        per_pixel_area(first) + per_pixel_area(second), per_pixel_area(whole), rtol=2e-6, atol=2e-7
    )


@pytest.mark.parametrize(
    "bc", [(29.5, 29.5), (30.0, 29.5), (29.5, 30.0), (30.0, 30.0), (29.3, 30.6)]
)
@pytest.mark.parametrize(("eta_min", "eta_bin"), [(180.0, 360.0), (180.0, 30.0), (180.0, 180.0),
                                                   (-540.0, 180.0), (-540.0, 5.0), (0.0, 30.0),
                                                   (-180.0, 90.0)])  # fmt: skip
def test_full_turn_past_360_keeps_every_pixel(eta_min, eta_bin, bc):
    """A full turn with EtaMin past ±180° (180..540, −540..−180): a pixel on the η = ±180° seam
    unwraps ~720° from the bins holding it; every R ring of the map still has the exact annulus
    area (found by the midas-integrate fuzz: 35.65 vs 37.70 px² in a ring)."""
    cfg = IntegrationConfig(
        n_pixels_y=60, n_pixels_z=60, pixel_size_y_um=100, pixel_size_z_um=100, lsd_um=1e6,
        bc_y_px=bc[0], bc_z_px=bc[1], r_min_px=0.0, r_max_px=20.0, r_bin_px=2.0,
        eta_min_deg=eta_min, eta_max_deg=eta_min + 360.0, eta_bin_deg=eta_bin,
    )  # fmt: skip
    m = DetectorMap.build(cfg)
    area = np.bincount(
        np.repeat(np.arange(m.n_r * m.n_eta), np.diff(np.asarray(m.indptr).astype(np.int64))),
        weights=np.asarray(m.area, np.float64), minlength=m.n_r * m.n_eta,
    ).reshape(m.n_r, m.n_eta)  # fmt: skip
    r = np.asarray(m.r_edges_px)
    exact = math.pi * (r[1:] ** 2 - r[:-1] ** 2)
    np.testing.assert_allclose(area.sum(axis=1), exact, rtol=1e-6)


def test_saved_maps_keep_what_their_weights_already_hold(small_config, tmp_path):
    """Regression (review): pixel fractions, gradient resampling and corrections folded at each
    entry's pixel were not saved, so a reloaded Integrator map got them again (areas 0.2 % off,
    a radint-rules gradient map's cake 3e-3 off) or was accepted by rules it was not made for."""
    from radint import Integrator
    from radint.exceptions import InvalidInputError
    from radint.testing import ring_image

    frame = ring_image(small_config, dtype=np.uint16)
    grad = small_config.replace(gradient_correction=True, solid_angle_correction=True,
                                polarization_correction=True)  # fmt: skip
    cases = [
        (small_config, dict(pixel_weights="fraction"), dict(pixel_weights="area")),
        (grad, dict(compat="midas-cpu"), dict()),  # corrections at each entry's pixel
        (grad, dict(), None),  # radint's rules: corrections after resampling
    ]
    for k, (cfg, kw, refused) in enumerate(cases):
        first = Integrator(cfg, error_model=None, **kw)
        path = first.map.save(tmp_path / f"m{k}.npz")
        loaded = DetectorMap.load(path, cfg)
        for flag in ("pixel_fractions", "gradient_corrected", "corrected_at_source",
                     "corrections_folded"):  # fmt: skip
            assert getattr(loaded, flag) == getattr(first.map, flag), (k, flag)
        again = Integrator(cfg, error_model=None, detector_map=loaded, **kw).integrate(frame)
        np.testing.assert_array_equal(again.cake, first.integrate(frame).cake)
        if refused is not None:
            with pytest.raises(InvalidInputError):
                Integrator(cfg, detector_map=loaded, **refused)


def test_save_midas_refuses_maps_midas_would_read_otherwise(small_config, tmp_path):
    """MIDAS rebuilds R (or Q) bins and applies GradientCorrection itself: a 2θ-binned map
    (read back with other bins, past the end of nMap.bin) and a gradient-corrected one (shifted
    twice) are refused instead of written."""
    from radint.exceptions import MapFormatError

    tth = small_config.replace(tth_bin_deg=0.5, tth_min_deg=1.0, tth_max_deg=2.0)
    with pytest.raises(MapFormatError, match="2θ"):
        DetectorMap.build(tth).save_midas(tmp_path / "tth", tth)
    plain = DetectorMap.build(small_config)
    with pytest.raises(MapFormatError, match="gradient-corrected"):
        plain.with_gradient_correction(small_config).save_midas(tmp_path / "g", small_config)
    plain.save_midas(tmp_path / "ok", small_config)
    assert (tmp_path / "ok" / "Map.bin").is_file()


def test_cache_key_ignores_what_does_not_shape_the_map(small_config, tmp_path):
    """The wavelength and Q keys outside Q binning, the 2θ keys outside 2θ binning, the files'
    paths (not their contents) and SubPixelLevel 0 vs 1 do not make a new map; what shapes the
    map still does."""
    import shutil

    import tifffile

    key = small_config.map_key()
    assert small_config.replace(wavelength_angstrom=0.3).map_key() == key
    assert small_config.replace(q_max=2.0, tth_max_deg=20.0).map_key() == key
    assert small_config.replace(sub_pixel_level=0).map_key() == small_config.replace(
        sub_pixel_level=1).map_key()  # fmt: skip
    assert small_config.replace(r_bin_px=0.9).map_key() != key
    q = small_config.replace(q_bin=0.01, q_min=0.1, q_max=1.0)
    assert q.map_key() != q.replace(wavelength_angstrom=0.3).map_key()
    mask = np.zeros(small_config.shape, np.uint8)
    mask[3, 4] = 1
    tifffile.imwrite(tmp_path / "a.tif", mask)
    shutil.copy(tmp_path / "a.tif", tmp_path / "b.tif")
    a = small_config.replace(mask_file=str(tmp_path / "a.tif"))
    assert a.map_key() == small_config.replace(mask_file=str(tmp_path / "b.tif")).map_key()
    assert a.map_key() != key


def test_corners_folded_across_the_beam_centre_are_warned(tmp_path, caplog, monkeypatch):
    # A residual map below -R at the beam centre puts pixel corners at a negative corrected
    # R: the map folds there, and the build said nothing (only a RhoD fold was warned).
    import radint._once
    from tests.conftest import SMALL

    monkeypatch.setattr(radint._once, "GIVEN", set())
    shape = (100, 120)
    np.full(shape, -0.8).tofile(tmp_path / "resid.bin")
    path = tmp_path / "p.txt"
    path.write_text(SMALL + "RMin 0\nResidualCorrectionMap resid.bin\n")
    config = IntegrationConfig.from_midas_params(path)
    with caplog.at_level(logging.WARNING, logger="radint"):
        m = DetectorMap.cached(config, tmp_path / "cache", n_threads=1)
    # BC (55.3, 47.8): corners (55.5, 47.5) and (55.5, 48.5) lie 0.36 and 0.73 px from it,
    # the next one, (54.5, 47.5), 0.85 px.
    assert m.fold is not None and m.fold[0] == 2
    assert -0.6 < m.fold[1] < -0.3 and (m.fold[2], m.fold[3]) == (55.5, 47.5)
    assert caplog.text.count("pixel corner(s) map to a negative corrected R") == 1
    assert "2 pixel corner(s)" in caplog.text and "ResidualCorrectionMap" in caplog.text
    # A cached map says it again (a later run reuses the cache), once per process.
    monkeypatch.setattr(radint._once, "GIVEN", set())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radint"):
        again = DetectorMap.cached(config, tmp_path / "cache", n_threads=1)
        DetectorMap.cached(config, tmp_path / "cache", n_threads=1)
    assert again.origin.startswith("cache") and again.fold == m.fold
    assert caplog.text.count("pixel corner(s) map to a negative corrected R") == 1
    # Panels shifted one by one (corners per pixel) count each pixel's own corners.
    np.zeros(2 * shape[0] * shape[1]).tofile(tmp_path / "dist.bin")
    shifted = config.replace(distortion_file=str(tmp_path / "dist.bin"))
    assert DetectorMap.build(shifted, n_threads=1).fold[0] == 8  # 2 corners of 4 pixels each
    assert DetectorMap.build(config.replace(residual_correction_map=""), n_threads=1).fold is None


def test_pixels_behind_the_sample_are_left_out_as_detectormapper_does(
    tmp_path, caplog, monkeypatch
):
    """A detector tilted so that part of its plane passes behind the sample (2θ ≥ 90°: MIDAS's
    R = Lsd·tan 2θ < 0). DetectorMapper picks radial bins between a pixel's signed corner R,
    so it leaves out every pixel whose corners all lie there; radint mapped them mirrored
    through the beam centre instead (58× C's area in a sweep case). Pixels wholly in front
    stay, those wholly behind go, the build warns, and the per-pixel corner path agrees with
    the shared corner grid. (This case against C's DetectorMapper: the same 3 840 pixels bar
    one straddling 2θ = 90°, where R is infinite.)"""
    import radint._once

    monkeypatch.setattr(radint._once, "GIVEN", set())
    text = (
        "NrPixelsY 64\nNrPixelsZ 64\npx 100\nLsd 4532\nBC 32 870\ntx 0\nty 3\ntz 0\nRMin 0\n"
        "RMax 1000000\nRBinSize 5000\nEtaMin -180\nEtaMax 180\nEtaBinSize 30\nWavelength 0.2\n"
    )
    config = IntegrationConfig.from_text(text, "behind.txt")
    with caplog.at_level(logging.WARNING, logger="radint"):
        m = DetectorMap.build(config, n_threads=1)
    assert "lie at 2θ ≥ 90°" in caplog.text and "left out" in caplog.text
    assert m.fold is not None and m.fold[4] > 0 and m.fold[0] >= m.fold[4]
    # x = Lsd + (tilted offset along the beam) per corner, written out (ty only).
    zz = np.repeat(np.arange(65) - 0.5, 65).reshape(65, 65)  # corner rows (z), any column
    x = 4532.0 + np.sin(np.radians(3.0)) * (zz - 870.0) * 100.0
    corners_in_front = np.stack([x[:-1, :-1], x[:-1, 1:], x[1:, :-1], x[1:, 1:]]) > 0
    front = corners_in_front.all(axis=0).ravel()
    behind = (~corners_in_front).all(axis=0).ravel()
    assert front.sum() > 3000 and behind.sum() >= 4 * 64  # four rows behind, one across
    mapped = np.zeros(64 * 64, bool)
    mapped[np.asarray(m.pixel)] = True
    assert mapped[front].all() and not mapped[behind].any()
    # Pixels shifted one by one (a zero distortion map) take each pixel's own corners.
    np.zeros(2 * 64 * 64).tofile(tmp_path / "dist.bin")
    shifted = DetectorMap.build(config.replace(distortion_file=str(tmp_path / "dist.bin")))
    np.testing.assert_array_equal(np.asarray(shifted.pixel), np.asarray(m.pixel))
    np.testing.assert_allclose(shifted.bin_geometric_area, m.bin_geometric_area, rtol=1e-12)
    # A detector wholly behind the sample maps nothing.
    wholly = config.replace(n_pixels_y=16, n_pixels_z=16, bc_y_px=8.0, bc_z_px=1000.0)
    assert DetectorMap.build(wholly, n_threads=1).n_entries == 0


def test_a_killed_map_cache_save_leaves_nothing_for_long(tmp_path, small_config):
    """Regression (batch sweep): a run killed while saving the map cache left its 69 MB
    temporary (tmpXXXX.partial.npz, no owner in its name) for good. The temporary is named
    after its process now, and the next save removes one whose process is gone."""
    import os
    import subprocess

    from radint import DetectorMap
    from radint.io.atomic import _host_tag

    dead = subprocess.Popen(["true"])
    dead.wait()
    path = tmp_path / "radint-map.npz"
    left = tmp_path / f".radint-map.npz.0123456789-{_host_tag()}-{dead.pid}.partial"
    left.write_bytes(b"half a map")
    old = os.stat(left).st_mtime - 120  # writers dead for a minute count as gone
    os.utime(left, (old, old))
    DetectorMap.build(small_config).save(path)
    assert path.is_file() and not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["radint-map.npz"]


def _midas_integrate_hash(c) -> bytes:
    """midas-integrate 0.9.0's ``compute_param_hash`` (bin_io.py), for R bins."""
    import hashlib

    head = "|".join([
        f"BC={c.bc_y_px:.6f},{c.bc_z_px:.6f}", f"EtaBinSize={c.eta_bin_deg:.6f}",
        f"EtaMax={c.eta_max_deg:.6f}", f"EtaMin={c.eta_min_deg:.6f}", f"Lsd={c.lsd_um:.6f}",
        f"NrPixelsY={c.n_pixels_y}", f"NrPixelsZ={c.n_pixels_z}", f"Parallax={c.parallax_um:.6f}",
        f"RBinSize={c.r_bin_px:.6f}", f"RMax={c.r_max_px:.6f}", f"RMin={c.r_min_px:.6f}",
        f"RhoD={c.rho_d_um:.6f}", f"TransOpt={len(c.im_trans_opt)}",
        f"Wavelength={c.wavelength_angstrom:.8f}",
    ])  # fmt: skip
    head += "".join(f",{int(t)}" for t in c.im_trans_opt)
    tail = [f"p{i}={p:.6f}" for i, p in enumerate(c.distortion)]
    tail += [f"pxY={c.pixel_size_y_um:.6f}", f"pxZ={c.pixel_size_z_um:.6f}",
             f"tx={c.tx_deg:.6f}", f"ty={c.ty_deg:.6f}", f"tz={c.tz_deg:.6f}"]  # fmt: skip
    return hashlib.sha256((head + "|" + "|".join(tail)).encode("ascii")).digest()


def test_a_map_midas_integrate_built_for_these_parameters_is_not_called_another(
    small_config, tmp_path, caplog
):
    """Audit: midas-integrate hashes all fifteen distortion terms, Parallax and Wavelength into
    Map.bin's header, the C programs fewer: loading its map of the very same parameter file
    warned "the map may have been built for another geometry". Either program's hash is taken;
    a header of other parameters still warns."""
    import logging

    config = small_config.replace(im_trans_opt=(1, 2), parallax_um=3.0)
    DetectorMap.build(config, n_threads=1).save_midas(tmp_path, config)
    header = bytearray((tmp_path / "Map.bin").read_bytes())
    with caplog.at_level(logging.WARNING, logger="radint"):
        header[8:40] = _midas_integrate_hash(config)
        (tmp_path / "Map.bin").write_bytes(header)
        DetectorMap.load_midas(tmp_path, config, n_threads=1)
        assert "hash differs" not in caplog.text
        header[8:40] = _midas_integrate_hash(config.replace(tz_deg=config.tz_deg + 0.5))
        (tmp_path / "Map.bin").write_bytes(header)
        DetectorMap.load_midas(tmp_path, config, n_threads=1)
        assert "hash differs" in caplog.text


def test_a_map_is_refused_with_another_geometry_than_it_was_built_for(small_config, tmp_path):
    """A saved map reused after a recalibration (another Lsd, other bins) would integrate with
    the old geometry under the new axes: load, the Integrator and save_midas name what differs;
    the same parameters (and pickled maps) pass."""
    import pickle

    from radint import Integrator
    from radint.exceptions import MapFormatError

    m = DetectorMap.build(small_config)
    path = m.save(tmp_path / "m.npz")
    other = small_config.with_overrides(["RBinSize 2", "Lsd 500000"])
    for use, what in (
        (lambda: DetectorMap.load(path, other), "the configuration it is loaded with"),
        (lambda: Integrator(other, detector_map=DetectorMap.load(path)), "the Integrator's"),
        (lambda: m.save_midas(tmp_path / "midas", other), "the configuration given to save_midas"),
    ):
        with pytest.raises(MapFormatError, match=what) as e:
            use()
        assert "Lsd 500000 (map: " in str(e.value) and "RBinSize 2 (map: " in str(e.value)
    mask = tmp_path / "mask.tif"
    import tifffile

    tifffile.imwrite(mask, np.zeros(small_config.shape, np.int8))
    with pytest.raises(MapFormatError, match="MaskFile: another file or contents"):
        DetectorMap.load(path, small_config.with_overrides([f"MaskFile {mask}"]))
    DetectorMap.load(path, small_config)
    Integrator(small_config, detector_map=pickle.loads(pickle.dumps(DetectorMap.load(path))))
    m.save_midas(tmp_path / "midas", small_config)
    # What does not shape the map does not count (the wavelength outside Q binning).
    DetectorMap.load(path, small_config.replace(wavelength_angstrom=0.3))


def test_an_unpickled_integrators_own_map_is_not_checked_against_its_files(small_config, tmp_path):
    """Review: unpickling an Integrator re-read its MaskFile to compare with its own map, so a
    worker that cannot see the mask (or a mask edited since) failed; maps pickled before
    ``built_for`` existed could not be loaded."""
    import pickle

    import tifffile

    from radint import Integrator

    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, np.zeros(small_config.shape, np.int8))
    config = small_config.with_overrides([f"MaskFile {mask}"])
    integ = Integrator(config)
    saved = integ.map.save(tmp_path / "m.npz")
    frame = np.full(config.shape, 5.0)
    blob = pickle.dumps(integ)
    mask.unlink()  # not reachable where it is unpickled
    np.testing.assert_array_equal(pickle.loads(blob).integrate(frame).lineout,
                                  integ.integrate(frame).lineout)  # fmt: skip
    # A saved map loaded where its mask cannot be read: that file is not compared (the
    # refusal named nothing).
    DetectorMap.load(saved, config)
    Integrator(
        small_config.with_overrides([f"MaskFile {mask}"]), detector_map=DetectorMap.load(saved)
    )
    state = integ.map.__getstate__()
    del state["built_for"]  # as pickled by a version without it
    old = DetectorMap.__new__(DetectorMap)
    old.__setstate__(state)
    assert old.built_for is None
