"""Peak fitting inside integration: Integrator(fit=...), the NeXus peaks group, `radint fit`,
`--fit-peaks`/`--fit-auto`, the peaks CSV / fit.bin formats and `radint plot --peak-param`."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from radint import IntegrationConfig, Integrator
from radint.exceptions import InvalidInputError, RadintIOError
from radint.fit import FitSpec, concat_tables, fit_result, peak_profile
from radint.io import NexusWriter, read_nexus, write_nexus
from radint.testing import ring_image

# R = 18, 31 and 44 px on the small detector; well inside RMin..RMax and apart by > 2 ROIs' padding.
RING_R_PX = np.array([18.0, 31.0, 44.0])


@pytest.fixture
def ring_config(small_config) -> IntegrationConfig:
    return small_config.replace(r_bin_px=0.25, eta_bin_deg=360.0, r_max_px=55.0)


def ring_frames(config: IntegrationConfig, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    tth = np.degrees(np.arctan(RING_R_PX * config.pixel_size_y_um / config.lsd_um))
    frames = np.stack(
        [
            ring_image(config, tth, fwhm_deg=0.1, noise=True, seed=k, dtype=np.uint32)
            for k in range(n)
        ]
    )
    return frames, tth


def test_fit_from_the_parameter_file(ring_config):
    frames, _ = ring_frames(ring_config)
    cfg = ring_config.replace(do_peak_fit=True, peak_locations=tuple(RING_R_PX + 0.3))
    r = Integrator(cfg).integrate_stack(frames)
    assert r.peaks is not None and r.peaks.center.shape == (3, 3)
    assert (r.peaks.status == 0).all()
    # The synthetic rings are Gaussian in 2θ about the tilted/distorted pixel geometry, so their
    # centres in corrected R sit within a small fraction of a pixel of RING_R_PX.
    np.testing.assert_allclose(r.peaks.center, np.broadcast_to(RING_R_PX, (3, 3)), atol=0.05)
    np.testing.assert_allclose(r.peaks.center_two_theta_deg, cfg.two_theta_deg(r.peaks.center))
    one = r.frame(1)
    np.testing.assert_array_equal(one.peaks.center, r.peaks.center[1])
    assert Integrator(cfg, fit=None).integrate(frames[0]).peaks is None
    assert Integrator(ring_config).integrate(frames[0]).peaks is None  # DoPeakFit 0


def test_a_fit_dict_takes_the_parameter_files_fit_settings(ring_config):
    """Found by a user check: ``fit={...}`` fitted with FitSpec's defaults (padding 20) where
    the file said FitROIPadding 10 and ``--fit-peaks`` took 10: the same request gave other
    areas, and two rings no peak, in Python."""
    frames, _ = ring_frames(ring_config, 1)
    cfg = ring_config.replace(
        fit_roi_padding=10, fit_roi_auto=True, snip_iterations=30, doublet_separation=2.5
    )
    from_file = {"roi_padding": 10, "auto_roi": True, "snip_iterations": 30,
                 "doublet_separation": 2.5}  # fmt: skip
    assert FitSpec.config_settings(cfg) == from_file
    integ = Integrator(cfg, fit={"positions_px": list(RING_R_PX)})
    assert integ.fit == FitSpec(positions_px=tuple(RING_R_PX), **from_file)
    given = Integrator(cfg, fit={"auto": 3, "roi_padding": 7}).fit
    assert given == FitSpec(auto=3, **(from_file | {"roi_padding": 7}))
    explicit = FitSpec(positions_px=tuple(RING_R_PX))  # an object is taken as it is
    assert Integrator(cfg, fit=explicit).fit.roi_padding == explicit.roi_padding == 20
    r = integ.integrate(frames[0])
    cfg_fit = cfg.replace(do_peak_fit=True, peak_locations=tuple(RING_R_PX))
    np.testing.assert_array_equal(r.peaks.area, Integrator(cfg_fit).integrate(frames[0]).peaks.area)


def test_compat_fits_the_midas_model(ring_config):
    """compat='midas-cpu'/'midas-gpu' fit MIDAS's model (profile values at bin centres), also
    for a spec assigned later (live peak control); radint's own rules fit bin means."""
    frames, _ = ring_frames(ring_config, 1)
    cfg = ring_config.replace(do_peak_fit=True, peak_locations=tuple(RING_R_PX))
    own = Integrator(cfg)
    assert own.fit.bin_average
    for compat in ("midas-cpu", "midas-gpu"):
        integ = Integrator(cfg, compat=compat)
        assert integ.fit is not None and not integ.fit.bin_average
        integ.fit = FitSpec(positions_px=(18.0,))
        assert not integ.fit.bin_average
    r = Integrator(cfg, compat="midas-gpu").integrate(frames[0])
    want = FitSpec(positions_px=tuple(RING_R_PX), bin_average=False).apply(r)
    np.testing.assert_array_equal(r.peaks.fwhm, want.fwhm)
    assert not np.allclose(r.peaks.fwhm, own.integrate(frames[0]).peaks.fwhm, rtol=1e-6)


def test_fit_roi_auto_is_ignored_like_integratorzarromp_under_midas_cpu(
    ring_config, caplog, monkeypatch
):
    """IntegratorZarrOMP never reads FitROIAuto (only the GPU program does): under
    compat='midas-cpu' the parameter file's FitROIAuto 1 is dropped with a warning (it changed
    the fit silently, where C's fit.bin stays byte-identical), also from a spec assigned later
    (a live peak update builds one from the parameter file)."""
    import radint._once

    monkeypatch.setattr(radint._once, "GIVEN", set())  # warned once per process
    cfg = ring_config.replace(do_peak_fit=True, peak_locations=(18.0,), fit_roi_auto=True)
    with caplog.at_level("WARNING", logger="radint"):
        cpu = Integrator(cfg, compat="midas-cpu")
        cpu.fit = "config"  # a live peak update: dropped again, not warned again
    assert not cpu.fit.auto_roi
    assert caplog.text.count("FitROIAuto ignored under compat='midas-cpu'") == 1
    assert Integrator(cfg, compat="midas-gpu").fit.auto_roi and Integrator(cfg).fit.auto_roi
    cpu.fit = FitSpec(positions_px=(18.0,), auto_roi=True)
    assert not cpu.fit.auto_roi


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("AutoDetectPeaks -1\n", "p.txt:2: AutoDetectPeaks <= 0 turns fitting on (as IntegratorZ"),
        ("DoPeakFit 1\n", "p.txt:2: DoPeakFit 1 without PeakLocation or AutoDetectPeaks N > 0"),
        # As in MIDAS's own example files: the AutoDetectPeaks line switches fitting back on.
        ("DoPeakFit 0\nAutoDetectPeaks 0\n", "p.txt:3: AutoDetectPeaks <= 0 turns fitting on"),
    ],
)
def test_fitting_switched_on_without_peaks_says_which_line(lines, message, caplog, monkeypatch):
    """Audit: `AutoDetectPeaks -1` (no DoPeakFit line) was reported as "DoPeakFit 1 without
    PeakLocation or AutoDetectPeaks", at info level, twice; after `DoPeakFit 0` it still was
    (the user was told of a DoPeakFit 1 they had switched off)."""
    import radint._once

    monkeypatch.setattr(radint._once, "GIVEN", set())
    cfg = IntegrationConfig.from_text("NrPixelsY 64\n" + lines, "p.txt")
    assert FitSpec.from_config(cfg) is None and FitSpec.from_config(cfg) is None
    assert caplog.text.count(message) == 1


def test_fit_spec_forms_and_errors(ring_config):
    frames, tth = ring_frames(ring_config, 1)
    by_dict = Integrator(ring_config, fit={"positions_two_theta_deg": list(tth)}).integrate(
        frames[0]
    )
    auto = Integrator(ring_config, fit=FitSpec(auto=5)).integrate(frames[0])
    found = auto.peaks.center[auto.peaks.status == 0]
    np.testing.assert_allclose(found, by_dict.peaks.center, atol=0.05)  # the 3 rings, nothing else
    with pytest.raises(InvalidInputError, match="exactly one"):
        FitSpec()
    with pytest.raises(InvalidInputError, match="exactly one"):
        FitSpec(positions_px=(1.0,), auto=3)
    with pytest.raises(InvalidInputError, match="auto must be"):
        FitSpec(auto=0)
    with pytest.raises(InvalidInputError, match="fit:"):
        Integrator(ring_config, fit="sometimes")
    with pytest.raises(InvalidInputError, match="fit:"):
        Integrator(ring_config, fit={"positions": [3.0]})
    # Regression (review): AutoDetectPeaks 1e11 aborted the process (a 16 TB table asked
    # for); at most one peak per bin. An empty x axis panicked in the pV fit.
    huge = Integrator(ring_config, fit=FitSpec(auto=10**11)).integrate(frames[0])
    assert huge.peaks.center.shape[-1] == huge.n_r
    np.testing.assert_allclose(huge.peaks.center[huge.peaks.status == 0], found)
    from radint.fit import fit_pv

    with pytest.raises(InvalidInputError, match="at least 2 bin centres, got 0"):
        fit_pv(np.array([]), np.ones((1, 0)), 1.0)


def test_peak_profile_integrates_to_the_areas(ring_config):
    frames, tth = ring_frames(ring_config, 1)
    r = Integrator(ring_config, fit={"positions_two_theta_deg": list(tth)}).integrate(frames[0])
    x = np.linspace(0, 80, 16001)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # noqa: NPY201 (numpy < 2: trapz)
    total = trapezoid(peak_profile(x, r.peaks), x)
    assert total == pytest.approx(r.peaks.area.sum(), rel=2e-3)  # Lorentzian tails beyond x


@pytest.mark.parametrize("backend", ["hdf5", "zarr"])
def test_nexus_peaks_roundtrip(ring_config, tmp_path, backend):
    frames, tth = ring_frames(ring_config)
    r = Integrator(ring_config, fit={"positions_two_theta_deg": list(tth)}).integrate_stack(frames)
    path = write_nexus(r, tmp_path / ("r.h5" if backend == "hdf5" else "r.zarr"), backend=backend)
    back = read_nexus(path)
    for name in ("center", "area", "fwhm", "eta_mix", "chi2", "center_err", "area_err",
                 "center_two_theta_deg", "center_q", "center_d_angstrom", "fwhm_deg"):  # fmt: skip
        np.testing.assert_array_equal(getattr(back.peaks, name), getattr(r.peaks, name), name)
    np.testing.assert_array_equal(back.peaks.status, r.peaks.status)
    np.testing.assert_array_equal(back.lineout, r.lineout)
    np.testing.assert_array_equal(back.cake, r.cake)
    np.testing.assert_array_equal(back.count, r.count)
    assert back.config == r.config


def test_writer_pads_changing_peak_sets(ring_config, tmp_path):
    frames, tth = ring_frames(ring_config, 1)
    integ = Integrator(ring_config, fit=None)
    with NexusWriter(tmp_path / "s.h5", peak_slots=3) as w:
        w.append(integ.integrate(frames[0]))  # before any fit: absent rows are back-filled
        integ.fit = FitSpec(positions_two_theta_deg=tuple(tth[:1]))
        w.append(integ.integrate(frames[0]))
        integ.fit = FitSpec(positions_two_theta_deg=tuple(tth))
        w.append(integ.integrate(frames[0]))
        integ.fit = FitSpec(auto=4)  # 4 slots do not fit a file laid out for 3
        with pytest.raises(ValueError, match="4 peak slots"):
            w.append(integ.integrate(frames[0]))
    back = read_nexus(tmp_path / "s.h5")
    assert back.peaks.status.tolist() == [[255] * 3, [0, 255, 255], [0, 0, 0]]


def test_read_nexus_of_a_file_still_open_for_writing(ring_config, tmp_path):
    frames, _ = ring_frames(ring_config, 2)
    integ = Integrator(ring_config)
    w = NexusWriter(tmp_path / "live.h5", atomic=False)
    try:
        w.append(integ.integrate(frames[0]))
        w.append(integ.integrate(frames[1]))
        w.flush()
        assert read_nexus(tmp_path / "live.h5").n_frames == 2
    finally:
        w.close()


@pytest.mark.parametrize("failures", [2, 9])
def test_read_nexus_tries_again_a_read_that_meets_a_flush(ring_config, tmp_path, monkeypatch,
                                                          failures):  # fmt: skip
    """Audit: reading a stream.h5 while the stream flushed failed now and then ("addr
    overflow", 5 of 143 reads at --save-interval 1); such a read is tried again."""
    import h5py

    import radint.io.nexus as nexus

    frames, _ = ring_frames(ring_config, 1)
    with NexusWriter(tmp_path / "s.h5") as w:
        w.append(Integrator(ring_config).integrate(frames[0]))
    monkeypatch.setattr(nexus, "READ_RETRY_PAUSES_S", (0.0, 0.0, 0.0))
    calls = []
    read = h5py.Dataset.__getitem__

    def flushing(self, key):
        if self.name.endswith("azint2d/data/I_errors"):
            calls.append(self.name)
            if len(calls) <= failures:
                raise OSError("Can't synchronously read data (addr overflow)")
        return read(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", flushing)
    if failures == 2:
        assert read_nexus(tmp_path / "s.h5").n_frames == 1
        assert len(calls) == 3
    else:
        with pytest.raises(RadintIOError, match=r"s.h5: cannot read .*I_errors: .*addr overflow"):
            read_nexus(tmp_path / "s.h5")


def test_concat_tables(ring_config):
    frames, tth = ring_frames(ring_config)
    integ = Integrator(ring_config, fit={"positions_two_theta_deg": list(tth)})
    parts = [integ.integrate(frames[0]).peaks, integ.integrate_stack(frames[1:]).peaks]
    joined = concat_tables(parts)
    assert joined.center.shape == (3, 3)
    np.testing.assert_array_equal(joined.center[0], parts[0].center)


def test_cli_fit_flags_formats_and_radint_fit(ring_config, tmp_path):
    import tifffile

    from radint.cli import main

    frames, tth = ring_frames(ring_config)
    params = tmp_path / "p.txt"
    params.write_text(ring_config.midas_text())
    tifffile.imwrite(tmp_path / "scan.tif", frames, photometric="minisblack")
    peaks = ",".join(f"{t:.5f}" for t in tth)
    out = tmp_path / "out"
    args = ["integrate", str(params), str(tmp_path / "scan.tif"), "--fit-peaks", peaks,
            "--format", "nexus,peaks,fit", "-o", str(out), "-q"]  # fmt: skip
    assert main(args) == 0
    r = read_nexus(out / "scan.h5")
    assert (r.peaks.status == 0).all()
    np.testing.assert_allclose(
        r.peaks.center_two_theta_deg, np.broadcast_to(tth, (3, 3)), atol=2e-3
    )
    fit_bin = np.fromfile(out / "scan_fit.bin", "<f8").reshape(3, 3, 7)
    np.testing.assert_array_equal(fit_bin, r.peaks.rows())
    csv = (out / "scan_peaks.csv").read_text().splitlines()
    assert csv[0].startswith("frame_id,slot,status,center_px") and len(csv) == 1 + 9
    # every column but χ² with its error, the derived ones propagated (were left out)
    header = csv[0].split(",")
    rows = np.array([line.split(",")[3:] for line in csv[1:]], dtype=np.float64)
    by_name = dict(zip(header[3:], rows.T, strict=True))
    np.testing.assert_allclose(by_name["center_two_theta_deg_err"],
                               r.peaks.center_two_theta_deg_err.ravel(), rtol=1e-8)  # fmt: skip
    for name in ("center_two_theta_deg", "center_q_invA", "center_d_A", "fwhm_two_theta_deg"):
        assert name + "_err" in by_name and np.isfinite(by_name[name + "_err"]).all(), name
    # re-fit the stored lineouts by auto-detection and store them in the file
    assert main(["fit", str(out / "scan.h5"), "--auto", "4", "--update", "-q"]) == 0
    again = read_nexus(out / "scan.h5")
    direct = fit_result(r, auto=4)  # the same fit through the library API
    np.testing.assert_array_equal(again.peaks.status, direct.status)
    np.testing.assert_array_equal(again.peaks.center, direct.center)
    np.testing.assert_array_equal(again.lineout, r.lineout)
    assert main(["fit", str(out / "scan.h5"), "-q"]) == 2  # neither --peaks nor --auto
    # The backend record survives the rewrite; a stream's record would not: refused.
    import h5py

    with h5py.File(out / "scan.h5") as f:
        assert f["entry/azint1d/reduction/input/backend"].asstr()[()] == "cpu"
    with h5py.File(out / "scan.h5", "a") as f:
        f["entry/stream/frame_id"] = np.arange(3)
    before = (out / "scan.h5").read_bytes()
    assert main(["fit", str(out / "scan.h5"), "--auto", "4", "--update", "-q"]) == 2
    assert (out / "scan.h5").read_bytes() == before
    assert main(["integrate", str(params), str(tmp_path / "scan.tif"), "--format", "fit",
                 "-o", str(tmp_path / "none"), "-q"]) == 2  # fmt: skip
    assert not (tmp_path / "none").exists()  # refused before the map is built


def test_plot_overlay_and_peak_trend(ring_config, tmp_path):
    pytest.importorskip("matplotlib")
    from radint.cli import main
    from radint.plot import follow_nexus

    frames, tth = ring_frames(ring_config)
    r = Integrator(ring_config, fit={"positions_two_theta_deg": list(tth)}).integrate_stack(frames)
    path = write_nexus(r, tmp_path / "r.h5")
    png = tmp_path / "r.png"
    assert main(["plot", str(path), "--peak-param", "fwhm", "-o", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert follow_nexus(path, tmp_path / "f.png", interval_s=0.05, stop_after_s=0.3) == 1
    plain = write_nexus(Integrator(ring_config).integrate(frames[0]), tmp_path / "plain.h5")
    assert main(["plot", str(plain), "--peak-param", "area", "-o", str(png)]) == 2


def test_concat_tables_pads_fewer_slots_and_result_concatenate(ring_config):
    from radint.result import Result

    frames, tth = ring_frames(ring_config, 2)
    one = Integrator(ring_config, fit={"positions_two_theta_deg": list(tth[:1])})
    three = Integrator(ring_config, fit={"positions_two_theta_deg": list(tth)})
    a, b = one.integrate(frames[0]), three.integrate(frames[1])
    joined = Result.concatenate([a, b])
    assert joined.cake.shape == (2, *a.cake.shape) and joined.frame_ids.tolist() == [0, 1]
    assert joined.peaks.status.tolist() == [[0, 255, 255], [0, 0, 0]]
    assert np.isnan(joined.peaks.center[0, 1:]).all()
    np.testing.assert_array_equal(joined.lineout[1], b.lineout)


def test_read_nexus_in_a_fresh_process(ring_config, tmp_path):
    """The default Blosc compression must be readable by a process that never imported the
    writer (hdf5plugin registered by read_nexus itself)."""
    import subprocess
    import sys

    frames, _ = ring_frames(ring_config, 1)
    path = write_nexus(Integrator(ring_config).integrate(frames[0]), tmp_path / "r.h5")
    code = f"from radint.io import read_nexus; print(read_nexus({str(path)!r}).lineout.shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"(1, {ring_config.bin_edges()[0].size - 1})"


@pytest.mark.parametrize("one_frame", [False, True])
def test_derived_peak_columns_have_propagated_errors(ring_config, tmp_path, one_frame):
    """entry/peaks had _errors only for the px columns; center_two_theta, center_q, center_d and
    fwhm_two_theta now carry the px errors propagated through the conversion, read back too."""
    import copy
    import dataclasses

    import h5py

    from radint.fit import with_units
    from radint.io import read_nexus

    frames, tth = ring_frames(ring_config)
    r = Integrator(ring_config, fit={"positions_two_theta_deg": list(tth)}).integrate_stack(frames)
    if one_frame:  # the one-frame fast path (a byte image of the layout)
        r = r.frame(0)
    p = r.peaks
    cfg = ring_config
    # Finite-difference propagation: |f(c + h) - f(c - h)| / 2h · σ_c, per derived column.
    h = 1e-4
    lam = cfg.wavelength_angstrom

    def tth_of(c):
        return cfg.two_theta_deg(c)

    def q_of(c):
        return 4 * np.pi / lam * np.sin(np.radians(tth_of(c)) / 2)

    def d_of(c):
        return lam / (2 * np.sin(np.radians(tth_of(c)) / 2))

    c, w, sc, sw = p.center, p.fwhm, p.center_err, p.fwhm_err
    assert np.isfinite(sc).all() and (sc > 0).all()
    for f, err in (
        (tth_of, p.center_two_theta_deg_err),
        (q_of, p.center_q_err),
        (d_of, p.center_d_angstrom_err),
    ):
        want = np.abs(f(c + h) - f(c - h)) / (2 * h) * sc
        np.testing.assert_allclose(err, want, rtol=1e-6)  # central difference error ~h²

    def fwhm_of(c, w):
        return tth_of(c + w / 2) - tth_of(c - w / 2)

    dw = (fwhm_of(c, w + h) - fwhm_of(c, w - h)) / (2 * h)
    dc = (fwhm_of(c + h, w) - fwhm_of(c - h, w)) / (2 * h)
    np.testing.assert_allclose(p.fwhm_deg_err, np.hypot(dw * sw, dc * sc), rtol=1e-6)
    path = write_nexus(r, tmp_path / "r.h5")
    with h5py.File(path) as f:
        for name in ("center_two_theta", "center_q", "center_d", "fwhm_two_theta"):
            assert (
                f[f"entry/peaks/{name}_errors"].attrs["units"]
                == f[f"entry/peaks/{name}"].attrs["units"]
            )
    back = read_nexus(path).peaks
    for attr in (
        "center_two_theta_deg_err",
        "center_q_err",
        "center_d_angstrom_err",
        "fwhm_deg_err",
    ):
        np.testing.assert_allclose(
            getattr(back, attr).reshape(c.shape), getattr(p, attr), rtol=1e-12
        )
    # Without a configuration (a MIDAS caked.hdf) 2θ is interpolated from the bin centres: the
    # slope of that interpolation times σ_c.
    bare = with_units(copy.copy(p), dataclasses.replace(r, config=None))
    slope = np.interp(
        c,
        r.radius_px[1:] - np.diff(r.radius_px) / 2,
        np.diff(r.two_theta_deg) / np.diff(r.radius_px),
    )
    np.testing.assert_allclose(bare.center_two_theta_deg_err, slope * sc, rtol=1e-3)
    # A file written before the derived errors were stored reads them propagated (a
    # conversion wrote NaN for them).
    with h5py.File(path, "r+") as f:
        for name in ("center_two_theta", "center_q", "center_d", "fwhm_two_theta"):
            del f[f"entry/peaks/{name}_errors"]
    old = read_nexus(path).peaks
    np.testing.assert_allclose(
        old.center_two_theta_deg_err.reshape(c.shape), p.center_two_theta_deg_err, rtol=1e-12
    )
    np.testing.assert_allclose(old.fwhm_deg_err.reshape(c.shape), p.fwhm_deg_err, rtol=1e-12)


def test_uncompressed_peaks_of_a_stream_do_not_take_megabytes_up_front(ring_config, tmp_path):
    """Regression (stream sweep): stream.h5 (uncompressed by default) with 100 peak slots took
    17 MB for its first 12 frames: 21 float64 datasets in ~1 MB chunks, each allocated whole at
    the first row. Uncompressed chunks are now ~64 kB."""
    frames, tth = ring_frames(ring_config, 1)
    integ = Integrator(ring_config, fit=FitSpec(positions_two_theta_deg=tuple(tth)))
    path = tmp_path / "s.h5"
    with NexusWriter(path, compression="none", peak_slots=100) as w:
        w.append(integ.integrate(frames[0]))
    with h5py.File(path, "r") as f:
        peaks = sum(f["entry/peaks"][k].id.get_storage_size() for k in f["entry/peaks"]
                    if isinstance(f["entry/peaks"][k], h5py.Dataset))  # fmt: skip
    assert peaks < 3 << 20, peaks
    assert read_nexus(path).peaks.status.shape == (1, 100)


def test_a_position_outside_the_lineout_is_named_in_the_unit_it_was_given(
    small_config, monkeypatch, caplog
):
    """Review: `fit={"positions_two_theta_deg": [40]}` warned "peak position(s) 1258.65 lie
    outside the lineout (5.5 .. 159.5)": pixels, no unit, not the number the user gave."""
    import radint._once

    monkeypatch.setattr(radint._once, "GIVEN", set())
    result = Integrator(small_config, fit=None).integrate(ring_image(small_config))
    far = fit_result(result, positions_two_theta_deg=[40.0])
    assert far.status_name.tolist() == ["out_of_range"]
    assert "peak position(s) 2θ 40° (R " in caplog.text
    assert f"(2θ {result.two_theta_deg[0]:g}° (R {result.radius_px[0]:g} px) .." in caplog.text
    fit_result(result, positions_px=[5000.0])
    assert "peak position(s) R 5000 px lie outside the lineout (R " in caplog.text
