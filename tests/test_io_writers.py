"""Writers: NeXus required fields, MIDAS caked.hdf layout, GSAS-II zarr.zip, text/mat, atomicity."""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scipy.io
import zarr
from zarr.storage import ZipStore

from radint.exceptions import RadintError
from radint.io import (
    NexusWriter,
    read_nexus,
    write_gsas_zarr_zip,
    write_lineout_bin,
    write_lineout_xy,
    write_mat,
    write_midas_caked,
    write_nexus,
    write_result,
)
from radint.io._common import omegas_deg
from tests.io_helpers import make_config, make_result

# Every field/group/attribute the application definitions make required (no optional="true"):
# nexusformat/definitions applications/NXazint1d.nxdl.xml (72d3cbd) and NXazint2d.nxdl.xml
# (5b84653): NXentry/{definition, solid_angle_applied, polarization_applied,
# normalization_applied}, NXinstrument/{name, NXmonochromator/{wavelength, energy},
# NXsource/{name, type, probe}}, NXprocess "reduction"/{program, version, date, reference,
# NXparameters "input"}, NXdata @axes @interpretation @signal, I (+ long_name, units),
# radial_axis (+ long_name, units). Optional ones radint writes are checked too.
REQUIRED_COMMON = [
    "definition",
    "solid_angle_applied",
    "polarization_applied",
    "normalization_applied",
    "instrument/name",
    "instrument/monochromator/wavelength",
    "instrument/monochromator/energy",
    "instrument/source/name",
    "instrument/source/type",
    "instrument/source/probe",
    "reduction/program",
    "reduction/version",
    "reduction/date",
    "reduction/reference",
    "reduction/input",
    "data/I",
    "data/radial_axis",
]
GROUP_CLASSES = {
    "instrument": "NXinstrument",
    "instrument/monochromator": "NXmonochromator",
    "instrument/source": "NXsource",
    "reduction": "NXprocess",
    "reduction/input": "NXparameters",
    "data": "NXdata",
}


def _s(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def check_nxazint(sub: h5py.Group, ndim: int, n_frames: int, n_eta: int, n_r: int) -> None:
    for name in REQUIRED_COMMON:
        assert name in sub, f"{sub.name}/{name} missing"
    for name, nx_class in GROUP_CLASSES.items():
        assert _s(sub[name].attrs["NX_class"]) == nx_class
    assert _s(sub["definition"][()]) == f"NXazint{ndim}d"
    for flag in ("solid_angle_applied", "polarization_applied", "normalization_applied"):
        assert sub[flag].dtype == np.bool_
    assert _s(sub["instrument/monochromator/wavelength"].attrs["units"]) == "angstrom"
    assert _s(sub["instrument/monochromator/energy"].attrs["units"]) == "keV"
    data = sub["data"]
    axes = [_s(a) for a in data.attrs["axes"]]
    if ndim == 1:
        assert axes == [".", "radial_axis"]
        assert _s(data.attrs["interpretation"]) == "spectrum"
        assert data["I"].shape == (n_frames, n_r)
        assert data["norm"].shape == (n_r,)
    else:
        assert axes == [".", "azimuthal_axis", "radial_axis"]
        assert _s(data.attrs["interpretation"]) == "image"
        assert data["I"].shape == (n_frames, n_eta, n_r)
        assert data["norm"].shape == (n_eta, n_r)
        assert data["azimuthal_axis"].shape == (n_eta,)
        assert data["azimuthal_axis_edges"].shape == (n_eta + 1,)
        assert _s(data["azimuthal_axis"].attrs["long_name"]) == "azimuthal bin center"
        assert int(data.attrs["azimuthal_axis_indices"]) == 1
    assert _s(data.attrs["signal"]) == "I"
    assert int(data.attrs["radial_axis_indices"]) == ndim
    assert _s(data["I"].attrs["long_name"]) == "intensity"
    assert _s(data["I"].attrs["units"]) == "arbitrary units"
    assert _s(data["I_errors"].attrs["long_name"]) == "estimated intensity error"
    assert data["I_errors"].shape == data["I"].shape
    assert _s(data["radial_axis"].attrs["long_name"]) in ("2theta", "q")
    assert data["radial_axis"].shape == (n_r,)
    assert data["radial_axis_edges"].shape == (n_r + 1,)
    assert _s(data["radial_axis_edges"].attrs["long_name"]).endswith("bin edges")
    assert data["radius_px"].shape == (n_r,)
    assert data["I"].chunks is not None and data["I"].maxshape[0] is None
    blosc = 32001  # the registered HDF5 filter id of Blosc (hdf5plugin)
    assert data["I"].id.get_create_plist().get_filter(0)[0] == blosc


@pytest.mark.parametrize("compression", ["gzip", "none", "blosc-lz4"])
def test_nexus_compression_choices_read_back_equal(tmp_path: Path, compression: str) -> None:
    res = make_result(n_frames=2)
    path = write_nexus(res, tmp_path / "c.h5", compression=compression)
    with h5py.File(path) as f:
        ds = f["entry/azint2d/data/I"]
        assert (ds.compression == "gzip") == (compression == "gzip")
        np.testing.assert_array_equal(ds[()], res.cake)
    with pytest.raises(ValueError, match="compression must be one of"):
        write_nexus(res, tmp_path / "d.h5", compression="zip")
    assert not (tmp_path / "d.h5").exists()


def test_nexus_required_fields_and_default_chain(tmp_path: Path) -> None:
    res = make_result(n_frames=3)
    path = write_nexus(res, tmp_path / "scan.h5")
    with h5py.File(path, "r") as f:
        # default chain: / -> entry -> azint1d -> data (NXdata with a signal)
        assert _s(f.attrs["default"]) == "entry"
        entry = f["entry"]
        assert _s(entry.attrs["NX_class"]) == "NXentry"
        for ndim in (1, 2):
            sub = entry[f"azint{ndim}d"]
            assert _s(sub.attrs["NX_class"]) == "NXsubentry"
            assert _s(sub.attrs["default"]) == "data"
            check_nxazint(sub, ndim, 3, res.n_eta, res.n_r)
        assert _s(entry.attrs["default"]) == "azint1d"
        d2 = entry["azint2d/data"]
        np.testing.assert_array_equal(d2["I"][...], res.cake)
        np.testing.assert_array_equal(entry["azint1d/data/I"][...], res.lineout)
        np.testing.assert_array_equal(d2["frame_id"][...], [7, 8, 9])
        np.testing.assert_allclose(d2["radial_axis"][...], res.two_theta_deg)
        # edges: 2θ = atan(R·px/Lsd) at the R edges
        np.testing.assert_allclose(
            d2["radial_axis_edges"][...], np.degrees(np.arctan(res.r_edges_px * 200 / 1e6))
        )
        config = json.loads(entry["azint2d/reduction/input/configuration"][()])
        assert config["lsd_um"] == 1e6 and config["omega_sum_frames"] == 2
        assert _s(entry["azint2d/reduction/program"][()]) == "radint"


def test_nexus_q_axis_and_no_config(tmp_path: Path) -> None:
    res = make_result(n_frames=None)
    path = write_nexus(res, tmp_path / "q.h5", radial_unit="q")
    with h5py.File(path, "r") as f:
        data = f["entry/azint1d/data"]
        assert _s(data["radial_axis"].attrs["units"]) == "1/angstrom"
        np.testing.assert_allclose(data["radial_axis"][...], res.q_inv_angstrom)
        assert data["I"].shape == (1, res.n_r)
    # By default the unit the bins are uniform in: q for MIDAS Q-mode binning (QBinSize).
    res.config = make_config(q_bin=0.05)
    with h5py.File(write_nexus(res, tmp_path / "qmode.h5"), "r") as f:
        data = f["entry/azint2d/data"]
        assert _s(data["radial_axis"].attrs["long_name"]) == "q"
        np.testing.assert_allclose(data["radial_axis"][...], res.q_inv_angstrom)
        np.testing.assert_allclose(data["two_theta"][...], res.two_theta_deg)
    bare = make_result(n_frames=None, config=None, sigma=False)
    with pytest.raises(ValueError, match="wavelength"):
        write_nexus(bare, tmp_path / "bad.h5", radial_unit="q")
    assert not list(tmp_path.glob("*bad.h5*"))
    path = write_nexus(bare, tmp_path / "bare.h5")
    with h5py.File(path, "r") as f:
        assert "radial_axis_edges" not in f["entry/azint2d/data"]
        assert "I_errors" not in f["entry/azint2d/data"]
        assert json.loads(f["entry/azint2d/reduction/input/configuration"][()]) == {}


def test_nexus_writer_appends_frames_incrementally(tmp_path: Path) -> None:
    stack = make_result(n_frames=3)
    path = tmp_path / "stream.h5"
    with NexusWriter(path, atomic=False) as writer:
        for k in range(3):
            writer.append(stack.frame(k), frame_id=100 + k, timestamp=1.5 + k)
            writer.flush()
            with h5py.File(path, "r") as f:  # readable while it grows
                assert f["entry/azint2d/data/I"].shape[0] == k + 1
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["entry/azint2d/data/I"][...], stack.cake)
        np.testing.assert_array_equal(f["entry/azint1d/data/frame_id"][...], [100, 101, 102])
        np.testing.assert_array_equal(f["entry/azint1d/data/timestamp"][...], [1.5, 2.5, 3.5])
    other = make_result(n_frames=1, n_r=5)
    with NexusWriter(tmp_path / "mixed.h5") as writer:
        writer.append(stack)
        with pytest.raises(ValueError, match=r"\(n_eta, n_r\)"):
            writer.append(other)


def test_atomic_writer_starts_writeback_and_releases_its_descriptor(tmp_path: Path) -> None:
    """An atomic multi-frame file is handed to the kernel for writeback as it grows (through a
    read-only descriptor of the writer's own), closed with the file; the rows are intact."""
    import os

    from radint.io.atomic import start_writeback

    start_writeback(-1)  # a bad descriptor is ignored: writeback is only a head start
    stack = make_result(n_frames=3)
    before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else None
    writer = NexusWriter(tmp_path / "a.h5")
    writer.append(stack.frame(0))
    writer.append(stack)  # the second append opens the HDF5 tree: writeback from here on
    assert writer._writeback_fd is not None and writer._writeback_fd >= 0
    writer.close()
    assert writer._writeback_fd is None
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
    with h5py.File(tmp_path / "a.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/azint2d/data/I"][1:], stack.cake)
    aborted = NexusWriter(tmp_path / "b.h5")
    aborted.append(stack)
    aborted.abort()
    assert aborted._writeback_fd is None and not (tmp_path / "b.h5").exists()


def test_zarr_v3_store_has_the_same_tree(tmp_path: Path) -> None:
    res = _with_sources(make_result(n_frames=2), ["/d/a.h5", "/d/b.h5"], [3, 0])
    h5 = write_nexus(res, tmp_path / "a.h5")
    store = write_nexus(res, tmp_path / "a.zarr", backend="zarr")
    root = zarr.open_group(str(store), mode="r")
    assert root.metadata.zarr_format == 3
    with h5py.File(h5, "r") as f:
        names: list[str] = []
        f.visit(names.append)
        for name in names:
            assert name in root, name
            for key, value in f[name].attrs.items():
                got = root[name].attrs[key]
                if isinstance(value, np.ndarray):
                    assert [_s(v) for v in value] == list(got)
                else:
                    assert _s(value) == got or np.isclose(value, got)
        np.testing.assert_array_equal(
            root["entry/azint2d/data/I"][...], f["entry/azint2d/data/I"][...]
        )


@pytest.mark.parametrize("omega_sum_frames", [-1, 0, 4])
def test_midas_caked_omega_sums_follow_integratorzarromp(
    tmp_path, omega_sum_frames, caplog, monkeypatch
):
    """IntegratorZarrOMP writes OmegaSumFrame chunks only for OmegaSumFrames >= 0, 0 counting
    as 1 (IntegratorZarrOMP.c: chunkFiles > 0); radint summed all frames for -1 (found
    against C on a MIDAS zip)."""
    import radint._once

    monkeypatch.setattr(radint._once, "GIVEN", set())  # the warning is given once per process
    res = make_result(n_frames=5)
    res.config = make_config(omega_sum_frames=omega_sum_frames)
    with caplog.at_level(logging.WARNING, logger="radint"):
        path = write_midas_caked(res, tmp_path / "scan.caked.hdf")
        write_midas_caked(res, tmp_path / "again.caked.hdf")
    with h5py.File(path, "r") as f:
        sums = sorted(f["OmegaSumFrame"]) if "OmegaSumFrame" in f else []
    ids = [int(i) for i in res.frame_ids]
    lasts = {-1: [], 0: ids, 4: [ids[3], ids[4]]}[omega_sum_frames]
    want = sorted(f"LastFrameNumber_{i}" for i in lasts)
    assert sums == want
    assert caplog.text.count("GSAS-II needs it") == (omega_sum_frames < 0)


def test_midas_caked_hdf_layout(tmp_path: Path) -> None:
    res = make_result(n_frames=3)
    res.config = make_config(omega_sum_frames=2)
    res.config.sum_images = True
    res.metadata["Temperature"] = np.array([300.0, 310.0, 320.0])
    path = write_midas_caked(res, tmp_path / "scan.caked.hdf")
    n_eta, n_r = res.n_eta, res.n_r
    with h5py.File(path, "r") as f:
        rem = f["REtaMap"]
        assert rem.shape == (5, n_r, n_eta)
        assert _s(rem.attrs["Header"]) == "Radius,2Theta,Eta,BinArea,Q"
        assert _s(rem.attrs["Units"]) == "Pixels,Degrees,Degrees,Pixels,InvAngstrom"
        # As IntegratorZarrOMP's H5LT calls store them: (1,) int32 / float64, fixed-length bytes.
        assert rem.attrs["nRBins"].dtype == np.int32 and rem.attrs["nRBins"].shape == (1,)
        assert rem.attrs["nRBins"][0] == n_r and rem.attrs["nEtaBins"][0] == n_eta
        assert isinstance(rem.attrs["Header"], bytes)
        # H5LTset_attribute_string: scalar, strlen + 1 bytes, NUL-terminated (a C reader sizes
        # its buffer from the type and relies on the NUL).
        header_type = rem.attrs.get_id("Header").get_type()
        assert header_type.get_size() == len("Radius,2Theta,Eta,BinArea,Q") + 1
        assert header_type.get_strpad() == h5py.h5t.STR_NULLTERM
        assert rem.attrs.get_id("Header").shape == ()
        np.testing.assert_allclose(rem[0][:, 0], res.radius_px)
        np.testing.assert_allclose(rem[1][:, 0], res.two_theta_deg)
        np.testing.assert_allclose(rem[2][0], res.eta_deg)
        np.testing.assert_allclose(rem[3], res.area.T)
        np.testing.assert_allclose(rem[4][:, 0], res.q_inv_angstrom)
        # Bins no pixel reached are 0, as IntegratorZarrOMP writes them (radint's NaN elsewhere).
        want = np.where(np.isnan(res.cake) & ~(res.area > 0), 0.0, res.cake)
        assert np.isnan(res.cake).any() and not np.isnan(want).any()
        for k, fid in enumerate((7, 8, 9)):
            ds = f[f"IntegrationResult/FrameNr_{fid}"]
            assert ds.shape == (n_r, n_eta)
            np.testing.assert_array_equal(ds[...], want[k].T)  # MIDAS is R-major
            assert ds.attrs["omega"].dtype == np.float64 and ds.attrs["omega"].shape == (1,)
            assert ds.attrs["omega"][0] == pytest.approx(5.0 + 0.25 * k)
        assert sorted(f["OmegaSumFrame"]) == ["LastFrameNumber_8", "LastFrameNumber_9"]
        s8 = f["OmegaSumFrame/LastFrameNumber_8"]
        np.testing.assert_array_equal(s8[...], (want[0] + want[1]).T)
        assert s8.attrs["Number Of Frames Summed"].dtype == np.int32
        assert s8.attrs["Number Of Frames Summed"][0] == 2 and s8.attrs["LastFrameNumber"][0] == 8
        assert (s8.attrs["FirstOme"][0], s8.attrs["LastOme"][0]) == (5.0, 5.25)
        assert s8.attrs["Temperature"][0] == 305.0
        for key in ("Pressure", "I", "I0"):
            assert key in s8.attrs
        np.testing.assert_allclose(f["Omegas"][...], [5.0, 5.25, 5.5])
        np.testing.assert_allclose(f["SumFrames"][...], np.nansum(res.cake, axis=0).T)
        for key in ("Polariz", "Lam", "SH_L", "U", "V", "W", "X", "Y", "Z", "Distance"):
            assert f[f"InstrumentParameters/{key}"].shape == (1,)
        assert f["InstrumentParameters/Distance"][0] == 1e6
        assert f["InstrumentParameters/Lam"][0] == pytest.approx(0.172979)


def test_midas_caked_omegas_only_when_the_parameter_file_gives_them(tmp_path: Path) -> None:
    """IntegratorZarrOMP knows ω only from OmegaStart/OmegaFirstFile (or a zip's scan start):
    without it every frame's ω is 0, even with OmegaStep, and there is no /Omegas."""
    res = make_result(n_frames=2)
    res.config = make_config(omega_start_deg=0.0, omega_step_deg=0.25, set_at={"Lsd": ("p", 1)})
    with h5py.File(write_midas_caked(res, tmp_path / "a.caked.hdf"), "r") as f:
        assert "Omegas" not in f
        assert f["IntegrationResult/FrameNr_8"].attrs["omega"][0] == 0.0
    res.config = make_config(omega_start_deg=0.0, omega_step_deg=0.25,
                             set_at={"OmegaStart": ("p", 3)})  # fmt: skip
    with h5py.File(write_midas_caked(res, tmp_path / "b.caked.hdf"), "r") as f:
        np.testing.assert_array_equal(f["Omegas"][...], [0.0, 0.25])
        assert f["IntegrationResult/FrameNr_8"].attrs["omega"][0] == 0.25
    # A configuration built in Python gives ω by its values, also once replace() (an
    # Integrator's own settings) marked keys as set: a review found ω lost there.
    res.config = make_config(omega_start_deg=10.0, omega_step_deg=0.5, source="<defaults>",
                             set_at={"PixelWeights": ("<defaults>, changed by replace()", 0)})  # fmt: skip
    np.testing.assert_array_equal(omegas_deg(res), [10.0, 10.5])


def test_gsas_zarr_zip_opens_the_way_gsas_ii_reads_it(tmp_path: Path) -> None:
    res = make_result(n_frames=4)
    path = write_gsas_zarr_zip(res, tmp_path / "scan.zarr.zip")
    names = zipfile.ZipFile(path).namelist()
    assert len(names) == len(set(names)), "duplicate zip entries"
    assert "REtaMap/.zarray" in names  # zarr v2 keys, as zarr 2.18 (GSAS-II's pin) expects
    # GSAS-II's G2pwd_MIDAS.readMidas, step by step (zarr 3 needs the ZipStore spelled out).
    fp = zarr.open(ZipStore(path, mode="r"), mode="r")
    assert all(k in fp for k in ("InstrumentParameters", "REtaMap", "OmegaSumFrame"))
    retamap = np.array(fp["REtaMap"])
    n_bins, n_azim = retamap[1].shape
    assert (n_bins, n_azim) == (res.n_r, res.n_eta)
    arrays = [fp["OmegaSumFrame"][k] for k in fp["OmegaSumFrame"]]
    attrs = [dict(fp["OmegaSumFrame"][k].attrs.items()) for k in fp["OmegaSumFrame"]]
    assert len(arrays) == 2  # omega_sum_frames = 2
    # GSAS-II iterates .items() (zarr 2); zarr 3 spells it .members().
    instprm = {i: j[0] for i, j in fp["InstrumentParameters"].members()}
    assert set(instprm) == {"Polariz", "Lam", "SH_L", "U", "V", "W", "X", "Y", "Z", "Distance"}
    # Keys iterate in name order ("_10" before "_8"), so find the first chunk by its attribute.
    first = next(i for i, a in enumerate(attrs) if a["LastFrameNumber"] == 8)
    unmasked = retamap[3][:, 1] != 0
    y = arrays[first][:, 1][unmasked] / attrs[first]["Number Of Frames Summed"]
    np.testing.assert_allclose(y, ((res.cake[0] + res.cake[1]) / 2)[1][unmasked])
    omega = 0.5 * (attrs[first]["FirstOme"] + attrs[first]["LastOme"])
    assert omega == pytest.approx(5.125)


def test_lineout_xy_and_mat(tmp_path: Path) -> None:
    res = make_result(n_frames=2)
    xy = write_lineout_xy(res, tmp_path / "scan_lineout.xy")
    lines = xy.read_text().splitlines()
    assert lines[0] == "# 2theta_deg  intensity"
    assert len(lines) == 1 + 2 * res.n_r
    assert lines[1] == f"{res.two_theta_deg[0]:.6f}  {res.lineout[0, 0]:.10g}"
    # C's "%.6f" for C's lineout rule; radint's keeps 10 digits of small intensities (a
    # reviewer's frames scaled by 1e-7 came out as 0.000005, 0.000006, ...).
    res.lineout_mode = "midas_nonzero_mean"
    c_lines = write_lineout_xy(res, tmp_path / "c_lineout.xy").read_text().splitlines()
    assert c_lines[1] == f"{res.two_theta_deg[0]:.6f}  {res.lineout[0, 0]:.6f}"
    res.lineout_mode = "area_weighted"
    small = dataclasses.replace(res, lineout=res.lineout * 1e-7)
    values = np.loadtxt(write_lineout_xy(small, tmp_path / "small_lineout.xy"))[:, 1]
    np.testing.assert_allclose(values, small.lineout.reshape(-1), rtol=1e-9)
    q = write_lineout_xy(res, tmp_path / "q_lineout.xy", radial_unit="q")
    assert q.read_text().startswith("# Q_invA  intensity\n")
    # n_r lines per frame, an empty (NaN) bin as 0 as IntegratorZarrOMP's lineout holds it, so
    # the file splits into frames by line count; Q-binned results get Q.
    res.lineout[1, 3] = np.nan
    lines = write_lineout_xy(res, tmp_path / "nan_lineout.xy").read_text().splitlines()
    assert len(lines) == 1 + 2 * res.n_r
    assert lines[1 + res.n_r + 3] == f"{res.two_theta_deg[3]:.6f}  0"
    res.config = make_config(q_bin=0.01, q_min=0.5, q_max=3.0, wavelength_angstrom=0.17)
    q_mode = write_lineout_xy(res, tmp_path / "q_mode_lineout.xy").read_text().splitlines()
    assert q_mode[0] == "# Q_invA  intensity"
    assert q_mode[1] == f"{res.q_inv_angstrom[0]:.6f}  {res.lineout[0, 0]:.10g}"
    raw = np.fromfile(write_lineout_bin(res, tmp_path / "scan_lineout.bin"), dtype="<f8")
    np.testing.assert_array_equal(raw.reshape(2, res.n_r), res.lineout)  # NaN kept, as C
    mat = scipy.io.loadmat(write_mat(res, tmp_path / "scan.mat"))
    np.testing.assert_array_equal(mat["cake"], res.cake)
    np.testing.assert_array_equal(mat["lineout"], res.lineout)
    assert json.loads(str(mat["configuration"][0]))["lsd_um"] == 1e6


def test_lineout_xy_q_column_is_c_s_bin_centre(tmp_path: Path) -> None:
    """C fuzz round: IntegratorZarrOMP prints QMin + QBinSize·(j + 0.5) with %.6f; radint
    printed the edges' midpoint, an ulp apart, so a value on a rounding tie printed one unit
    lower in the 6th decimal (0.088346 for C's 0.088347, 25 of 782 rows of the case found)."""
    res = make_result(n_frames=1)
    assert res.n_r > 7
    q_min, q_bin = 0.013402, 0.0099926
    edges = q_min + q_bin * np.arange(res.n_r + 1)
    res.q_inv_angstrom = 0.5 * (edges[:-1] + edges[1:])
    assert f"{res.q_inv_angstrom[7]:.6f}" == "0.088346"  # the midpoint
    res.config = make_config(q_bin=q_bin, q_min=q_min, q_max=9.0, wavelength_angstrom=0.5858)
    lines = write_lineout_xy(res, tmp_path / "q_lineout.xy").read_text().splitlines()
    assert lines[1 + 7].split()[0] == "0.088347"  # C's


def test_write_result_names_and_formats(tmp_path: Path) -> None:
    res = make_result(n_frames=2)
    out = write_result(res, tmp_path / "out", formats=("nexus", "zarr", "midas", "xy", "mat"))
    assert [p.name for p in out] == [
        "scan_000001.h5",
        "scan_000001.zarr",
        "scan_000001.caked.hdf",
        "scan_000001.zarr.zip",
        "scan_000001_lineout.xy",
        "scan_000001.mat",
    ]
    assert all(p.exists() for p in out)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in out)
    # rewriting replaces in place (directories too)
    assert write_result(res, tmp_path / "out", formats=("zarr",), name="scan_000001") == [out[1]]
    with pytest.raises(ValueError, match="unknown output format 'tiff'"):
        write_result(res, tmp_path / "out", formats=("tiff",))


def test_failed_writes_leave_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = make_result(n_frames=2)

    class DiskFull(OSError):
        pass

    original = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing_create(self: h5py.Group, name: str, *args: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] > 1:
            raise DiskFull(28, "No space left on device")
        return original(self, name, *args, **kw)

    def failing_append(self: object, *args: object, **kw: object) -> None:
        # A NeXus file copies its layout from a cached template and creates nothing itself:
        # its first own write is the first row's (extent, then data, through h5py's low-level
        # calls, which cannot be patched: the whole append fails here).
        raise DiskFull(28, "No space left on device")

    from radint.io import nexus as nexus_module

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    monkeypatch.setattr(nexus_module._H5Tree, "append", failing_append)
    for writer, name in ((write_midas_caked, "a.caked.hdf"), (write_nexus, "a.h5")):
        calls["n"] = 0
        with pytest.raises(DiskFull):
            writer(res, tmp_path / name)
    monkeypatch.undo()

    # A stream that dies mid-run: the context manager removes the partial file.
    with pytest.raises(RuntimeError, match="detector died"), NexusWriter(tmp_path / "s.h5") as w:
        w.append(res.frame(0))
        raise RuntimeError("detector died")

    # An existing good file survives a failed rewrite untouched.
    good = write_nexus(res, tmp_path / "good.h5")
    before = good.read_bytes()
    monkeypatch.setattr(nexus_module._H5Tree, "append", failing_append)
    with pytest.raises(DiskFull):
        write_nexus(res, good)
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.h5"]


def test_nexus_layout_template_follows_each_files_configuration(tmp_path: Path) -> None:
    """HDF5 files copy their layout from a template cached per configuration: files written in
    turn with different settings each carry their own, and equal settings give equal trees."""
    a = make_result(n_frames=1)
    b = make_result(n_frames=1, config=make_config(lsd_um=123456.0, wavelength_angstrom=0.5))
    c = make_result(n_frames=1, n_eta=6, n_r=12, sigma=False)
    paths = [write_nexus(r, tmp_path / f"{k}.h5") for k, r in enumerate((a, b, a, c))]

    def tree(path: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        with h5py.File(path) as f:
            f.visititems(lambda name, obj: out.__setitem__(name, type(obj).__name__))
        return out

    with h5py.File(paths[0]) as f0, h5py.File(paths[1]) as f1, h5py.File(paths[3]) as f3:
        inp = "entry/azint1d/reduction/input"
        assert f0[f"{inp}/lsd_um"][()] == a.config.lsd_um
        assert f1[f"{inp}/lsd_um"][()] == 123456.0
        assert f1["entry/azint2d/instrument/monochromator/wavelength"][()] == 0.5
        assert json.loads(f1[f"{inp}/configuration"][()])["lsd_um"] == 123456.0
        assert f3["entry/azint2d/data/I"].shape == (1, 6, 12)
        assert "I_errors" not in f3["entry/azint2d/data"] and "I_errors" in f0["entry/azint2d/data"]
        # azint2d shares azint1d's metadata groups (hard links survive the copy)
        assert f0["entry/azint2d/instrument"] == f0["entry/azint1d/instrument"]
        assert f0["entry/azint2d/reduction/date"][()] == f0["entry/azint1d/reduction/date"][()]
        np.testing.assert_array_equal(f0["entry/azint2d/data/I"][0], a.cake[0])
        np.testing.assert_array_equal(f1["entry/azint1d/data/I"][0], b.lineout[0])
    assert tree(paths[0]) == tree(paths[2])


def test_nexus_norm_and_count_follow_each_file_not_the_template(tmp_path: Path) -> None:
    """norm and count come from each file's first frame: a file whose mask differs from the
    one the cached layout template was built with gets its own values."""
    a = make_result(n_frames=1)
    b = make_result(n_frames=1)
    b.area = np.asarray(b.area) * 0.5
    b.area[2, 3] = 0.0
    b.count = (b.area > 0).astype(np.int64) * 3
    paths = [write_nexus(r, tmp_path / f"{k}.h5") for k, r in enumerate((a, b, a))]
    for path, r in zip(paths, (a, b, a)):
        with h5py.File(path) as f:
            np.testing.assert_array_equal(f["entry/azint2d/data/norm"][()], r.area)
            np.testing.assert_array_equal(f["entry/azint1d/data/norm"][()], r.area.sum(axis=0))
            np.testing.assert_array_equal(f["entry/azint2d/data/count"][()], r.count)


def _h5_contents(path: Path) -> dict[str, object]:
    """Every object of an HDF5 file: groups as their attributes, datasets as (dtype, shape,
    chunks, filters, value, attributes)."""
    out: dict[str, object] = {}

    def attrs(obj: h5py.HLObject) -> dict[str, object]:
        return {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Group):
            out[name] = attrs(obj)
            return
        plist = obj.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        value = obj[()]
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            value = np.where(np.isnan(value), -12345.0, value).tolist()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[name] = (
            str(obj.dtype),
            obj.shape,
            obj.maxshape,
            obj.chunks,
            filters,
            value,
            attrs(obj),
        )

    with h5py.File(path) as f:
        out["/"] = attrs(f)
        f.visititems(visit)
    return out


@pytest.mark.parametrize("compression", ["blosc-lz4", "gzip", "none"])
@pytest.mark.parametrize("sigma", [True, False])
@pytest.mark.parametrize("radial_unit", ["2theta", "q"])
def test_one_frame_files_from_the_byte_image_equal_h5py_files(
    tmp_path: Path, compression: str, sigma: bool, radial_unit: str
) -> None:
    """A one-frame atomic file is written from its layout's byte image; every object, value,
    attribute, dtype, maximum shape and filter equals the file h5py writes for the same frame
    (chunks hold one row instead of ~1 MB)."""
    rng = np.random.default_rng(3)
    for k in range(3):  # the first file builds the image, the next ones reuse it
        res = make_result(n_frames=1, n_eta=36, n_r=400, sigma=sigma)
        res.cake = rng.poisson(50.0, res.cake.shape).astype(np.float64)
        res.cake[0, 0, 0] = np.nan
        res.lineout = np.nanmean(res.cake, axis=1)
        stamp, fid = 1.7e9 + k, 40 + k
        kwargs = {"compression": compression, "radial_unit": radial_unit}
        with NexusWriter(tmp_path / f"image{k}.h5", **kwargs) as w:
            w.append(res, frame_id=fid, timestamp=stamp)
            assert w._tree is None  # held for the image
        with NexusWriter(tmp_path / f"h5py{k}.h5", atomic=False, **kwargs) as w:
            w.append(res, frame_id=fid, timestamp=stamp)
        image, reference = (_h5_contents(tmp_path / f"{n}{k}.h5") for n in ("image", "h5py"))
        for name, item in image.items():  # the image's growing datasets have one-row chunks
            if isinstance(item, tuple) and item[2] and item[2][0] is None:
                assert item[3][0] == 1, name
                image[name] = item[:3] + reference[name][3:4] + item[4:]
        dates = [c.pop("entry/azint1d/reduction/date")[5] for c in (image, reference)]
        assert [len(d) for d in dates] == [32, 32] and dates[0] <= dates[1]  # image first
        assert image == reference
        back = read_nexus(tmp_path / f"image{k}.h5")
        np.testing.assert_array_equal(back.cake, res.cake)
        assert list(back.frame_ids) == [fid]
        with h5py.File(tmp_path / f"image{k}.h5") as f:
            if sigma and compression == "blosc-lz4":  # what check_nxazint expects
                check_nxazint(f["entry/azint2d"], 2, 1, 36, 400)
            assert f["entry/azint2d/reduction"] == f["entry/azint1d/reduction"]
        with h5py.File(tmp_path / f"image{k}.h5", "r+") as f:  # HDF5 can extend it
            for path in ("entry/azint2d/data/I", "entry/azint1d/data/frame_id"):
                f[path].resize(40, axis=0)
                f[path][1:] = f[path][0]
        with h5py.File(tmp_path / f"image{k}.h5") as f:
            np.testing.assert_array_equal(f["entry/azint2d/data/I"][39], res.cake[0])
            assert list(f["entry/azint1d/data/frame_id"][()]) == [fid] * 40
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_one_frame_image_falls_back_to_h5py_where_it_cannot_serve(tmp_path: Path) -> None:
    """Per-file fields that differ from the template's (norm/count), fitted peaks and a second
    frame all go through h5py; the files hold what was appended."""
    a = make_result(n_frames=1)
    b = make_result(n_frames=1)
    b.area = np.asarray(b.area) * 0.25
    write_nexus(a, tmp_path / "a.h5")
    write_nexus(b, tmp_path / "b.h5")
    with h5py.File(tmp_path / "b.h5") as f:
        np.testing.assert_array_equal(f["entry/azint2d/data/norm"][()], b.area)
    with NexusWriter(tmp_path / "two.h5") as w:
        w.append(a, frame_id=1)
        w.append(a, frame_id=2)
    back = read_nexus(tmp_path / "two.h5")
    assert list(back.frame_ids) == [1, 2] and back.cake.shape[0] == 2
    np.testing.assert_array_equal(back.cake[1], a.cake[0])


def test_a_held_frame_leaves_nothing_when_aborted(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "x.h5")
    w.append(make_result(n_frames=1))
    w.abort()
    assert list(tmp_path.iterdir()) == []
    w = NexusWriter(tmp_path / "y.h5")
    with pytest.raises(ValueError, match="nothing appended"):
        w.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        NexusWriter(tmp_path / "no" / "such" / "dir.h5")


@pytest.mark.parametrize("n_frames", [1, 3])  # the byte image and the h5py path
def test_close_without_commit_keeps_the_temporary_name_until_commit(
    tmp_path: Path, n_frames: int
) -> None:
    """``close(commit=False)`` leaves a complete file under its hidden name; ``commit`` syncs
    and renames it; ``abort`` in between deletes it; a second close commits."""
    result = make_result(n_frames=n_frames)
    w = NexusWriter(tmp_path / "x.h5")
    w.append(result)
    w.close(commit=False)
    (hidden,) = tmp_path.iterdir()
    assert hidden.name.startswith(".x.h5.") and hidden.name.endswith(".partial")
    with h5py.File(hidden, "r") as f:  # complete before its rename
        assert f["entry/azint2d/data/I"].shape[0] == n_frames
    w.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]
    w.commit()  # nothing left to do
    w = NexusWriter(tmp_path / "y.h5")
    w.append(result)
    w.close(commit=False)
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5", "y.h5"]
    w = NexusWriter(tmp_path / "z.h5")
    w.append(result)
    w.close(commit=False)
    w.abort()
    w.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5", "y.h5"]


def test_file_image_refuses_what_it_cannot_patch() -> None:
    """Filters it does not know and the newer HDF5 file format raise ImageUnsupported."""
    from radint.io.h5image import FileImage, ImageUnsupported

    def memory_file(**kw: object) -> h5py.File:
        return h5py.File(f"m{id(kw)}", "w", driver="core", backing_store=False, **kw)

    with memory_file() as f:
        f.create_dataset(
            "d", shape=(0, 4), maxshape=(None, 4), chunks=(1, 4), dtype="f4", fletcher32=True
        )
        with pytest.raises(ImageUnsupported, match="filter 3"):
            FileImage.from_file(f, {"d": "d"}, {})
    with memory_file(libver="latest") as f:
        f.create_dataset("d", shape=(0, 4), maxshape=(None, 4), chunks=(1, 4), dtype="f4")
        with pytest.raises(ImageUnsupported, match="superblock"):
            FileImage.from_file(f, {"d": "d"}, {})
    with memory_file() as f:
        f.create_dataset("d", shape=(0, 4), maxshape=(None, 4), chunks=(1, 4), dtype="f4")
        f["t"] = "some text"
        img = FileImage.from_file(f, {"d": "d"}, {"t": ("t", 12)})
        out = img.render({"d": np.arange(4, dtype="f4")}, {"t": "twelve chars"})
        with pytest.raises(ValueError, match="must be 12 bytes"):
            img.render({"d": np.arange(4, dtype="f4")}, {"t": "short"})
    import io

    with h5py.File(io.BytesIO(bytes(out))) as g:
        np.testing.assert_array_equal(g["d"][()], [np.arange(4)])
        assert g["t"].asstr()[()] == "twelve chars"


def test_nexus_swmr_reader_sees_frames_while_the_file_grows(tmp_path: Path) -> None:
    """swmr=True: a reader opened with swmr=True sees each flushed block of frames (the
    layout is written in the 1.10 format SWMR needs, not copied from the earliest-format
    template)."""
    res = make_result(n_frames=3, n_eta=6, n_r=50)
    path = tmp_path / "live.h5"
    writer = NexusWriter(path, atomic=False, swmr=True)
    writer.append(res)
    writer.flush()
    with h5py.File(path, "r", swmr=True, libver="latest") as f:
        ds = f["entry/azint2d/data/I"]
        np.testing.assert_array_equal(ds[()], res.cake)
        writer.append(res, frame_id=[10, 11, 12])
        writer.flush()
        ds.refresh()
        assert ds.shape == (6, 6, 50)
        np.testing.assert_array_equal(ds[3:], res.cake)
    writer.close()
    assert list(read_nexus(path).frame_ids) == [7, 8, 9, 10, 11, 12]


def test_stream_outputs_sorted_and_named_by_the_frame_mapping(tmp_path: Path) -> None:
    """integrator_output.h5 as MIDAS's post-processing makes it with the sender's mapping:
    mapped frames sorted by file name (unmapped after), named without the extension, groups of
    OmegaSumFrames summed in that order and labelled by their last frame."""
    from radint import IntegrationConfig
    from radint.io.midas import write_stream_outputs
    from tests.conftest import SMALL

    cfg = IntegrationConfig.from_text(SMALL + "OmegaSumFrames 2\n", "small.txt")
    r_edges, eta_edges = cfg.bin_edges()
    n_r, n_eta = len(r_edges) - 1, len(eta_edges) - 1
    rng = np.random.default_rng(3)
    cakes = rng.uniform(0, 10, (4, n_r, n_eta))
    lines = np.stack([np.column_stack([np.arange(n_r), c.mean(axis=1)]) for c in cakes])
    (tmp_path / "RTthEtaAreaMap.bin").write_bytes(rng.uniform(1, 2, (5, n_r, n_eta)).tobytes())
    (tmp_path / "Int2D.bin").write_bytes(cakes.tobytes())
    (tmp_path / "lineout.bin").write_bytes(lines.tobytes())
    (tmp_path / "lineout_simple_mean.bin").write_bytes((2 * lines).tobytes())
    mapping = {0: {"filename": "b.tif"}, 1: {"filename": "a.tif"}, 2: {"filename": "c.tif"}}
    h5_path, zip_path = write_stream_outputs(tmp_path, cfg, mapping=mapping)
    with h5py.File(h5_path, "r") as f:
        assert sorted(f["lineouts"]) == ["3", "a", "b", "c"]
        np.testing.assert_array_equal(f["lineouts/a"][...], lines[1])
        assert f["lineouts/a"].attrs["frame_index"] == 1
        np.testing.assert_array_equal(f["lineouts_simple_mean/b"][...], 2 * lines[0])
        first = f["OmegaSumFrame/Summed_from_a_to_b"]
        np.testing.assert_allclose(first[...], cakes[1] + cakes[0], rtol=1e-15)
        assert first.attrs["original_frame_indices"].tolist() == [1, 0]
        assert _s(first.attrs["last_frame_identifier"]) == "b"
        np.testing.assert_allclose(f["OmegaSumFrame/Summed_from_c_to_3"][...], cakes[2] + cakes[3])
    root = zarr.open_group(ZipStore(zip_path, mode="r"), mode="r")
    np.testing.assert_allclose(root["OmegaSumFrame/LastFrameNumber_0"][...], cakes[1] + cakes[0])
    assert root["OmegaSumFrame/LastFrameNumber_3"].attrs["Number Of Frames Summed"] == 2


@pytest.mark.parametrize(
    ("extra", "omegas"),
    [("", [0, 1, 2]), ("Omega 42\n", [42, 42, 42]), ("OmegaStart 5\n", [0, 1, 2]),
     ("OmegaStart 5\nOmegaStep 0.5\n", [5, 5.5, 6])],
)  # fmt: skip
def test_stream_zip_omega_and_wavelength_as_midas_post_processing(tmp_path, extra, omegas):
    """Regression (GSAS-II reading a stream's zarr.zip): without a Wavelength line Lam was 0
    (MIDAS's integrator_stream_process_h5.py writes 0.413263); ω came from OmegaStart alone
    (MIDAS: from OmegaStart and OmegaStep together, else the frame index) and its `Omega`
    key (one ω for every frame) was ignored."""
    from radint import IntegrationConfig
    from radint.io.midas import write_stream_outputs
    from tests.conftest import SMALL

    text = SMALL.replace("Wavelength 0.172973\n", "") + extra
    cfg = IntegrationConfig.from_text(text, "small.txt")
    r_edges, eta_edges = cfg.bin_edges()
    n_r, n_eta = len(r_edges) - 1, len(eta_edges) - 1
    cakes = np.ones((3, n_r, n_eta))
    lines = np.stack([np.column_stack([np.arange(n_r), c.mean(axis=1)]) for c in cakes])
    (tmp_path / "RTthEtaAreaMap.bin").write_bytes(np.ones((5, n_r, n_eta)).tobytes())
    (tmp_path / "Int2D.bin").write_bytes(cakes.tobytes())
    (tmp_path / "lineout.bin").write_bytes(lines.tobytes())
    (tmp_path / "lineout_simple_mean.bin").write_bytes(lines.tobytes())
    _, zip_path = write_stream_outputs(tmp_path, cfg)
    root = zarr.open_group(ZipStore(zip_path, mode="r"), mode="r")
    got = [root[f"OmegaSumFrame/LastFrameNumber_{k}"].attrs["FirstOme"] for k in range(3)]
    assert got == omegas
    assert root["InstrumentParameters/Lam"][0] == 0.413263


def test_stream_outputs_say_progress_and_can_be_cancelled(tmp_path):
    """Audit (Ctrl-C of a 25 000-frame stream with --midas-files: 37 s of silence making
    integrator_output.h5, a second Ctrl-C ignored): the work reports its progress and stops,
    writing nothing, when cancelled."""
    from radint import IntegrationConfig
    from radint.io.midas import write_stream_outputs
    from tests.conftest import SMALL

    cfg = IntegrationConfig.from_text(SMALL, "small.txt")
    r_edges, eta_edges = cfg.bin_edges()
    n_r, n_eta = len(r_edges) - 1, len(eta_edges) - 1
    lines = np.zeros((6, n_r, 2))
    (tmp_path / "RTthEtaAreaMap.bin").write_bytes(np.ones((5, n_r, n_eta)).tobytes())
    (tmp_path / "lineout.bin").write_bytes(lines.tobytes())
    (tmp_path / "lineout_simple_mean.bin").write_bytes(lines.tobytes())
    seen: list[tuple[int, int]] = []
    write_stream_outputs(tmp_path, cfg, progress=lambda done, n: seen.append((done, n)))
    assert seen == [(k, 6) for k in range(1, 6)]
    (tmp_path / "integrator_output.h5").unlink()
    with pytest.raises(KeyboardInterrupt, match="cancelled after 4 of 6 frames"):
        write_stream_outputs(tmp_path, cfg, cancelled=lambda: len(seen) >= 8,
                             progress=lambda done, n: seen.append((done, n)))  # fmt: skip
    assert not list(tmp_path.glob("integrator_output*"))


def test_nexus_written_with_q_bins_but_no_wavelength_reads_back(tmp_path: Path) -> None:
    """Before QBinSize without a Wavelength became an error such runs were binned in R; their
    stored configuration must still read back (as R bins)."""
    import json

    res = make_result(n_frames=2)
    path = write_nexus(res, tmp_path / "old.h5", compression="gzip")
    key = "entry/azint1d/reduction/input/configuration"
    with h5py.File(path, "r+") as f:
        conf = json.loads(f[key][()])
        conf.update(q_min=0.0, q_max=5.0, q_bin=0.01, wavelength_angstrom=0.0)
        del f[key]
        f[key] = json.dumps(conf)
    back = read_nexus(path)
    assert back.config is not None and back.config.radial_mode == "r"
    np.testing.assert_array_equal(back.lineout, res.lineout)


def test_outputs_near_the_file_name_limit_are_written(tmp_path: Path) -> None:
    """The temporary sibling of an output whose name fits (255 bytes) fits too."""
    from radint.io.atomic import temporary_sibling

    long = tmp_path / ("é" * 60 + "x" * 125 + ".h5")  # 248 bytes
    tmp = temporary_sibling(long)
    assert len(tmp.name.encode()) <= 255 and tmp.name.endswith(".partial")
    res = make_result(n_frames=1)
    assert write_nexus(res, long, compression="gzip") == long and long.is_file()


def _with_sources(res, paths: list[str], frames: list[int]):
    res.metadata["source_path"] = np.array(paths, dtype=object)
    res.metadata["source_frame"] = np.array(frames, dtype=np.int64)
    return res


@pytest.mark.parametrize("backend", ["hdf5", "zarr"])
def test_provenance_file_table_and_per_frame_rows(tmp_path: Path, backend: str) -> None:
    """Frames from several inputs, appended over several calls: each input path is stored once
    in entry/provenance/file, each frame gets its row there and its position in that file;
    frames that do not say where they came from get -1, also when they come first (the group
    is then created later); the file still passes the NXazint checks and reads back."""
    from radint.io import read_provenance

    path = tmp_path / ("p.h5" if backend == "hdf5" else "p.zarr")
    a, b = "/beamline/run 7/scan_000001.h5", "/beamline/run 7/données/frame_2.tif"
    with NexusWriter(path, backend=backend) as w:
        w.append(make_result(n_frames=1))  # no provenance
        w.append(_with_sources(make_result(n_frames=3), [a, a, b], [10, 11, 0]))
        w.append(_with_sources(make_result(n_frames=2), [a, b], [12, 0]))
    prov = read_provenance(path)
    assert prov is not None and prov.files == [a, b]
    assert prov.file_index.tolist() == [-1, 0, 0, 1, 0, 1]
    assert prov.frame_index.tolist() == [-1, 10, 11, 0, 12, 0]
    assert prov.source(3) == (b, 0) and prov.source(0) == ("", -1)
    back = read_nexus(path)
    assert back.metadata["source_path"].tolist() == ["", a, a, b, a, b]
    assert back.metadata["source_frame"].tolist() == [-1, 10, 11, 0, 12, 0]
    assert back.metadata["source_files"] == [a, b]
    if backend == "zarr":
        root = zarr.open_group(str(path), mode="r")
        assert root["entry/provenance"].attrs["NX_class"] == "NXcollection"
        assert root["entry/provenance/file_index"].dtype == np.int32
        return
    with h5py.File(path) as f:
        for ndim in (1, 2):
            check_nxazint(f[f"entry/azint{ndim}d"], ndim, 6, 4, 10)
        g = f["entry/provenance"]
        assert _s(g.attrs["NX_class"]) == "NXcollection"
        assert "file[file_index]" in _s(g.attrs["description"])
        assert h5py.check_string_dtype(g["file"].dtype).encoding == "utf-8"
        assert g["file"].maxshape == (None,) and g["file_index"].dtype == np.int32
        for name in ("file", "file_index", "frame_index"):
            assert _s(g[name].attrs["long_name"])
        assert g["file_index"].shape == f["entry/azint1d/data/frame_id"].shape


def test_provenance_survives_frame_and_concatenate() -> None:
    """Result.frame / Result.concatenate keep the per-frame paths (as str) and positions
    (as int), as the batch's whole-file formats and the stream rely on."""
    from radint.result import Result

    first = _with_sources(make_result(n_frames=2), ["/x/a.tif", "/x/a.tif"], [0, 1])
    second = _with_sources(make_result(n_frames=1), ["/x/b.tif"], [5])
    whole = Result.concatenate([first, second])
    assert whole.metadata["source_path"].tolist() == ["/x/a.tif", "/x/a.tif", "/x/b.tif"]
    assert whole.metadata["source_frame"].dtype == np.int64
    one = whole.frame(2)
    assert one.metadata["source_path"].tolist() == ["/x/b.tif"]
    assert one.metadata["source_frame"].tolist() == [5]


def test_one_frame_files_from_the_byte_image_record_their_input(tmp_path: Path) -> None:
    """One-frame files with provenance are still written from the byte image (the input path
    patched in place, one image per path length in bytes, UTF-8 included) and equal, object
    for object, the file h5py writes; paths of every length read back exactly."""
    from radint.io import nexus
    from radint.io.h5image import FileImage

    names = ["frame_2.tif", "frame_10.tif", "frame_11.tif", "é_frame_3.tif", "frame_100.tif"]
    for k, name in enumerate(names):
        src = f"/data/sample ä/{name}"
        res = _with_sources(make_result(n_frames=1, n_eta=6, n_r=40), [src], [k])
        with NexusWriter(tmp_path / f"image{k}.h5") as w:
            w.append(res, frame_id=k, timestamp=1.7e9)
            assert w._tree is None  # held for the image
        with NexusWriter(tmp_path / f"h5py{k}.h5", atomic=False) as w:
            w.append(res, frame_id=k, timestamp=1.7e9)
        image, reference = (_h5_contents(tmp_path / f"{n}{k}.h5") for n in ("image", "h5py"))
        for key, item in image.items():  # growing datasets: one-row chunks in the image
            if isinstance(item, tuple) and item[2] and item[2][0] is None:
                image[key] = item[:3] + reference[key][3:4] + item[4:]
        for c in (image, reference):
            c.pop("entry/azint1d/reduction/date")
        assert image == reference
        prov = nexus.read_provenance(tmp_path / f"image{k}.h5")
        assert prov is not None and prov.files == [src] and prov.source(0) == (src, k)
    images = [e.image for key, e in nexus._TEMPLATES.items() if key[-1] == len(
        "/data/sample ä/frame_10.tif".encode())]  # fmt: skip
    assert images and all(isinstance(i, FileImage) for i in images)


def test_one_frame_images_do_not_thrash_on_many_path_lengths(tmp_path: Path, monkeypatch) -> None:
    """More provenance path lengths taking turns than the template cache holds (8): a length
    whose image was pushed out is written through h5py, not imaged again for every file (each
    image cost ~100 ms, the h5py write ~10-25 ms: 117 ms/file against 14 ms/file on 12 lengths
    in turn); the files are the same either way."""
    from radint.io import nexus
    from radint.io.h5image import FileImage

    built = []
    real = FileImage.from_file.__func__

    def counting(cls, *args, **kwargs):
        built.append(1)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(FileImage, "from_file", classmethod(counting))
    monkeypatch.setattr(nexus, "_TEMPLATES", {})
    monkeypatch.setattr(nexus, "_EVICTED", set())
    lengths = list(range(20, 32))
    for k in range(3 * len(lengths)):
        src = "/data/" + "x" * lengths[k % len(lengths)] + ".tif"
        res = _with_sources(make_result(n_frames=1, n_eta=6, n_r=40), [src], [k])
        write_nexus(res, tmp_path / f"f{k}.h5")
        prov = nexus.read_provenance(tmp_path / f"f{k}.h5")
        assert prov is not None and prov.source(0) == (src, k)
    assert len(built) == len(lengths)  # each length imaged once, not once per file


def test_mat_without_scipy_is_refused_before_any_work(tmp_path, monkeypatch):
    """--format mat without scipy (the formats extra) failed every file with a bare
    ModuleNotFoundError and wrote none of its other formats; now the run is refused up front
    naming the extra, and the writer itself says the same."""
    import sys

    from radint.batch import check_outputs
    from radint.exceptions import BackendUnavailableError, InvalidInputError

    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import scipy.io -> ImportError
    with pytest.raises(InvalidInputError, match=r"--format mat needs scipy .*radint\[formats\]"):
        check_outputs([tmp_path / "a.tif"], tmp_path / "out", ("nexus", "mat"))
    check_outputs([tmp_path / "a.tif"], tmp_path / "out", ("nexus", "xy"))
    with pytest.raises(BackendUnavailableError, match=r"radint\[formats\]"):
        write_mat(make_result(n_frames=1), tmp_path / "a.mat")
    assert not list(tmp_path.iterdir())


def test_stale_partials_of_killed_writers_are_removed(tmp_path: Path) -> None:
    """Regression: a SIGKILLed run's `.NAME.<tag>.partial` files (hundreds of MB) stayed
    forever. Only abandoned ones of the outputs named are removed: a dead pid on this host, or
    (writer unknown) unchanged for STALE_AFTER_S; a live writer's, another output's (a.zarr vs
    a.zarr.zip) and a cut-short long name's are handled as such."""
    import os
    import time

    from radint.io import atomic

    def running(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    # A pid no process has now (pids wrap at 32768 here: one that just exited may be reused
    # by the time a long suite gets here), as many digits long as ours (names cut to 255 bytes).
    digits = len(str(os.getpid()))
    dead = next(str(p) for p in range(10**digits - 1, 10 ** (digits - 1), -1) if not running(p))
    host = atomic._host_tag()
    other_host = f"{(int(host, 16) + 1) % 0x10000:04x}"
    made = {
        "dead": f".a.h5.0123456789-{host}-{dead}.partial",
        "live": f".a.h5.0123456789-{host}-{os.getpid()}.partial",
        "old_format": ".a.h5.0123456789ab.partial",
        "other_host_recent": f".a.h5.0123456789-{other_host}-{dead}.partial",
        "zarr_dir_dead": f".a.zarr.0123456789-{host}-{dead}.partial",
        "gsas_live": f".a.zarr.zip.0123456789-{host}-{os.getpid()}.partial",
        "other_output": f".b.h5.0123456789-{host}-{dead}.partial",
    }
    for key, name in made.items():
        if key.startswith("zarr_dir"):
            (tmp_path / name / "c").mkdir(parents=True)
            (tmp_path / name / "c" / "0").write_bytes(b"x")
        else:
            (tmp_path / name).write_bytes(b"x")
    quiet = time.time() - atomic.DEAD_WRITER_QUIET_S - 10  # unchanged for a while
    for name in made.values():
        for path in (tmp_path / name, *(tmp_path / name).rglob("*")):
            os.utime(path, (quiet, quiet))
    old = time.time() - atomic.STALE_AFTER_S - 60
    os.utime(tmp_path / made["old_format"], (old, old))
    # a dead pid's file written to just now: a writer in another PID namespace, kept
    recent = tmp_path / f".a.h5.0123456789-{host}-{dead}9.partial"
    recent.write_bytes(b"x")
    assert not atomic.is_stale(recent)
    recent.unlink()
    # the temporary name radint writes now carries host and pid, and a live one is kept
    fresh = atomic.temporary_sibling(tmp_path / "a.h5")
    assert fresh.name.endswith(f"-{host}-{os.getpid()}.partial") and not atomic.is_stale(fresh)

    finals = [tmp_path / "a.h5", tmp_path / "a.zarr"]
    removed = atomic.remove_stale_partials(finals)
    assert sorted(p.name for p in removed) == sorted(
        made[k] for k in ("dead", "old_format", "zarr_dir_dead")
    )
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {made[k] for k in ("live", "other_host_recent", "gsas_live", "other_output")}
    # where the writer cannot be checked, only the age counts
    assert atomic.remove_stale_partials(finals, max_age_s=-1) == [
        tmp_path / made["other_host_recent"]]  # fmt: skip
    # a name cut short to fit 255 bytes is still recognised as the long output's
    long = tmp_path / ("x" * 250 + ".h5")
    cut = atomic.temporary_sibling(long).name.replace(f"-{os.getpid()}.", f"-{dead}.")
    (tmp_path / cut).write_bytes(b"x")
    os.utime(tmp_path / cut, (quiet, quiet))
    assert atomic.remove_stale_partials([long]) == [tmp_path / cut]


def _stream_binaries(directory: Path, cfg: Any, n_frames: int) -> np.ndarray:
    """Write a stream's lineout/Int2D/geometry binaries of ``n_frames`` random cakes."""
    r_edges, eta_edges = cfg.bin_edges()
    n_r, n_eta = len(r_edges) - 1, len(eta_edges) - 1
    rng = np.random.default_rng(5)
    cakes = rng.uniform(0, 10, (n_frames, n_r, n_eta))
    lines = np.stack([np.column_stack([np.arange(n_r), c.mean(axis=1)]) for c in cakes])
    (directory / "RTthEtaAreaMap.bin").write_bytes(np.ones((5, n_r, n_eta)).tobytes())
    (directory / "Int2D.bin").write_bytes(cakes.tobytes())
    (directory / "lineout.bin").write_bytes(lines.tobytes())
    (directory / "lineout_simple_mean.bin").write_bytes(lines.tobytes())
    return cakes


def test_stream_outputs_group_omega_sum_frames_below_minus_one_one_each(tmp_path: Path) -> None:
    """Regression (stream sweep): OmegaSumFrames -2 summed every frame into one group; MIDAS's
    integrator_stream_process_h5.py takes -1 as all frames and any other value below 1 as 1."""
    from radint import IntegrationConfig
    from radint.io.midas import write_stream_outputs
    from tests.conftest import SMALL

    for osf, groups in (("-2", 3), ("0", 3), ("-1", 1), ("2", 2)):
        cfg = IntegrationConfig.from_text(SMALL + f"OmegaSumFrames {osf}\n", "small.txt")
        _stream_binaries(tmp_path, cfg, 3)
        h5_path, _ = write_stream_outputs(tmp_path, cfg)
        with h5py.File(h5_path, "r") as f:
            assert len(f["OmegaSumFrame"]) == groups, osf


def test_stream_outputs_after_a_killed_stream_take_the_last_fits_from_fit_bin(
    tmp_path: Path, caplog
) -> None:
    """Regression (stream sweep): after a SIGKILL the binaries held 30 frames (written every
    frame) and stream.h5 22 (flushed every 5 s); write_stream_outputs raised IndexError. With
    given positions (a fit.bin record of every slot per frame) frames past the stream file's
    rows take their fits from fit.bin where its size fits, else they are left out with a
    warning."""
    from radint import IntegrationConfig
    from radint.io.midas import _FIT_COLUMNS, write_stream_outputs
    from tests.conftest import SMALL

    cfg = IntegrationConfig.from_text(
        SMALL + "DoPeakFit 1\nPeakLocation 10\nPeakLocation 20\n", "small.txt"
    )
    _stream_binaries(tmp_path, cfg, 4)
    fits = np.arange(4 * 2 * 7, dtype="<f8").reshape(4, 2, 7)
    stream = tmp_path / "stream.h5"
    with h5py.File(stream, "w") as f:  # two frames flushed, 2 slots (one failed fit: status 4)
        f["entry/peaks/status"] = np.array([[0, 0], [0, 4]], np.uint8)
        for i, name in enumerate(_FIT_COLUMNS):
            f[f"entry/peaks/{name}"] = fits[:2, :, i]
    fits[3, 1, 2] = np.nan  # a failed fit past the flush: a NaN row in fit.bin
    (tmp_path / "fit.bin").write_bytes(fits.tobytes())
    h5_path, _, caked_path = write_stream_outputs(tmp_path, cfg, stream_file=stream)
    with h5py.File(h5_path, "r") as f:
        assert sorted(f["fit"]) == ["0", "1", "2", "3"]
        for k in range(4):
            np.testing.assert_array_equal(f[f"fit/{k}"][...], fits[k])
    # caked_peaks.h5: the converged slots of the stored frames (status 0), the finite fit.bin
    # rows of the later ones.
    with h5py.File(caked_path, "r") as f:
        assert f["peaks/frame_idx"][()].tolist() == [0, 0, 1, 2, 2, 3]
        assert f["peaks/peak_nr"][()].tolist() == [0, 1, 0, 0, 1, 0]
        want = fits[[0, 0, 1, 2, 2, 3], [0, 1, 0, 0, 1, 0]]
        np.testing.assert_array_equal(f["peaks/area"][()], want[:, 0])
        np.testing.assert_allclose(f["peaks/center_2theta"][()], cfg.two_theta_deg(want[:, 1]))
    (tmp_path / "fit.bin").write_bytes(fits.tobytes() + b"\0" * 24)  # a row cut short
    with caplog.at_level(logging.WARNING, logger="radint"):
        h5_path = write_stream_outputs(tmp_path, cfg, stream_file=stream)[0]
    assert "24 byte(s) of an unfinished last row left out" in caplog.text
    with h5py.File(h5_path, "r") as f:
        np.testing.assert_array_equal(f["fit/3"][...], fits[3])
    (tmp_path / "fit.bin").write_bytes(fits[:3].tobytes())  # a count that does not fit
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radint"):
        h5_path = write_stream_outputs(tmp_path, cfg, stream_file=stream)[0]
    assert "the fits of 2 frame(s) past the stream file's last flush are left out" in caplog.text
    assert "do not give them 2 peak(s) each" in caplog.text
    with h5py.File(h5_path, "r") as f:
        assert sorted(f["fit"]) == ["0", "1"]


def test_stream_outputs_after_a_killed_stream_leave_out_auto_detected_fits(
    tmp_path: Path, caplog
) -> None:
    """Regression (review of caked_peaks.h5): after a kill -9, frames past stream.h5's last
    flush took fit.bin's rows in runs of the last stored frame's peak count whenever the total
    matched; auto-detected peaks vary in number from frame to frame (2, 1, 3 here: 6 rows, as
    3 frames of 2), so peaks landed on the wrong frames. fit.bin has no per-frame count: the
    fits of those frames are left out, said in a warning naming how many and why."""
    from radint import IntegrationConfig
    from radint.io.midas import _FIT_COLUMNS, write_stream_outputs
    from tests.conftest import SMALL

    for extra in ("DoPeakFit 1\nAutoDetectPeaks 4\n", ""):  # auto-detection; no fit given
        cfg = IntegrationConfig.from_text(SMALL + extra, "small.txt")
        _stream_binaries(tmp_path, cfg, 4)
        counts = [2, 2, 1, 3]  # frame 0 stored with 2 of its 4 slots found
        rows = [np.full((c, 7), 10.0 * k + 1) for k, c in enumerate(counts)]
        with h5py.File(tmp_path / "stream.h5", "w") as f:
            f["entry/peaks/status"] = np.array([[0, 0, 255, 255]], np.uint8)
            for i, name in enumerate(_FIT_COLUMNS):
                f[f"entry/peaks/{name}"] = np.pad(rows[0][:, i], (0, 2))[None]
        (tmp_path / "fit.bin").write_bytes(np.concatenate(rows).astype("<f8").tobytes())
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="radint"):
            h5_path, _, caked_path = write_stream_outputs(
                tmp_path, cfg, stream_file=tmp_path / "stream.h5"
            )
        assert "the fits of 3 frame(s) past the stream file's last flush are left out" in (
            caplog.text
        )
        assert "auto-detected" in caplog.text and "no per-frame count" in caplog.text
        with h5py.File(h5_path, "r") as f:
            assert sorted(f["fit"]) == ["0"]
            np.testing.assert_array_equal(f["fit/0"][...], rows[0])
        with h5py.File(caked_path, "r") as f:
            assert f["peaks/frame_idx"][()].tolist() == [0, 0]
            np.testing.assert_array_equal(f["peaks/area"][()], rows[0][:, 0])


def test_commit_never_deletes_a_folder_that_is_not_an_earlier_output(tmp_path: Path) -> None:
    """Regression (output sweep): a finished file replacing a folder of the same name moved the
    folder aside and deleted it with all it held. Only a Zarr store is replaced by a folder."""
    from radint.io.atomic import commit_path, temporary_sibling

    final = tmp_path / "x_lineout.xy"
    (final / "sub").mkdir(parents=True)
    (final / "sub" / "precious").write_text("keep")
    tmp = temporary_sibling(final)
    tmp.write_text("lineout")
    with pytest.raises(IsADirectoryError, match="not an earlier output"):
        commit_path(tmp, final)
    assert (final / "sub" / "precious").read_text() == "keep"
    store = tmp_path / "x.zarr"  # an earlier Zarr output: replaced
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    new = temporary_sibling(store)
    new.mkdir()
    (new / "zarr.json").write_text('{"new": 1}')
    commit_path(new, store)
    assert (store / "zarr.json").read_text() == '{"new": 1}'


def test_zarr_result_with_zarr_2_says_why(tmp_path: Path, monkeypatch) -> None:
    """zarr 3 needs Python 3.11; where zarr 2 is installed (Python 3.10) a .zarr result is
    refused by name instead of failing inside zarr."""
    (written,) = write_result(make_result(n_frames=1), tmp_path / "out", formats=("zarr",))
    monkeypatch.setattr(zarr, "__version__", "2.18.3")
    with pytest.raises(RadintError, match=r"a Zarr v3 result needs zarr >= 3 .* has zarr 2.18.3"):
        write_result(make_result(n_frames=1), tmp_path / "again", formats=("zarr",))
    with pytest.raises(RadintError, match=r"needs zarr >= 3 .* has zarr 2.18.3"):
        read_nexus(written)
    # Refused with the format names, which the commands check before any work (audit: the
    # map was built and cached first, then every file failed).
    from radint.exceptions import InvalidInputError
    from radint.io.write import expand_formats

    with pytest.raises(InvalidInputError, match=r"zarr: a Zarr v3 result needs zarr"):
        expand_formats(["nexus", "zarr"])


def test_format_given_as_one_string_is_one_format(tmp_path: Path) -> None:
    """Audit: ``write_result(r, dir, "nexus")`` read the string letter by letter ("unknown
    output format 'n'")."""
    (written,) = write_result(make_result(n_frames=1), tmp_path / "out", "nexus")
    assert written.name.endswith(".h5")


def test_midas_outputs_of_a_stream_with_repeated_frame_ids(tmp_path: Path) -> None:
    """Docs walkthrough: two senders one after another give ids 0,1,2,0,1,2; `radint convert
    --format midas` failed (FrameNr_0 created twice) and the .zarr.zip held duplicate keys.
    The frames are named by their row instead."""
    res = make_result(n_frames=4)
    res.frame_ids = np.array([0, 1, 0, 1])
    res.config = make_config(omega_sum_frames=1)
    with h5py.File(write_midas_caked(res, tmp_path / "s.caked.hdf"), "r") as f:
        assert sorted(f["IntegrationResult"]) == [f"FrameNr_{k}" for k in range(4)]
        assert len(f["OmegaSumFrame"]) == 4
    with zipfile.ZipFile(write_gsas_zarr_zip(res, tmp_path / "s.zarr.zip")) as z:
        names = z.namelist()
    assert len(names) == len(set(names))


def test_read_nexus_keeps_the_count_dtype(tmp_path: Path) -> None:
    """Audit: read_nexus returned ``count`` as int64 where the Result had uint32 (the file
    stores int64); it reads back as the integrator made it."""
    res = make_result(n_frames=2)
    back = read_nexus(write_nexus(res, tmp_path / "c.h5"))
    assert back.count.dtype == res.count.dtype == np.uint32
    np.testing.assert_array_equal(back.count, np.broadcast_to(res.count, back.count.shape))


def test_read_nexus_of_a_file_already_open_in_h5py(tmp_path: Path) -> None:
    """Found by a user check: a file open in the same process (a notebook's ``h5py.File``)
    failed read_nexus ("SWMR read access flag not the same for file that is already open")."""
    res = make_result(n_frames=2)
    path = write_nexus(res, tmp_path / "open.h5")
    for flags in ({}, {"locking": False}, {"swmr": True}):
        with h5py.File(path, "r", **flags) as f:
            back = read_nexus(path)
            assert f["entry"] is not None  # the caller's handle still works
        np.testing.assert_array_equal(back.cake, res.cake)


@pytest.mark.parametrize("backend", ["hdf5", "zarr"])
def test_read_nexus_reads_only_the_frames_asked_for(tmp_path: Path, backend: str) -> None:
    """Scale audit: plotting one frame of a 4 GB result read all of it (10 GB RSS). With
    ``frames`` only those rows are read; each equals the whole file's row."""
    res = make_result(n_frames=6)
    path = write_nexus(res, tmp_path / ("r.h5" if backend == "hdf5" else "r.zarr"), backend=backend)
    whole = read_nexus(path)
    assert whole.area.flags.writeable  # as before: a user may mask bins in place
    for frames in (
        slice(-1, None),
        slice(2, 3),
        slice(1, 5, 2),
        slice(None, None, -2),
        slice(9, 12),
    ):
        rows = list(range(6))[frames]
        part = read_nexus(path, frames)
        assert part.n_frames == len(rows) and part.metadata["n_frames"] == len(rows)
        for name in ("cake", "lineout", "cake_sigma", "lineout_sigma", "frame_ids"):
            np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[rows])
    for bad in (3, slice(0, 5, 0)):
        with pytest.raises(ValueError, match="frames: expected a slice"):
            read_nexus(path, bad)  # type: ignore[arg-type]


def test_plot_reads_one_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import radint.io.nexus as nexus
    from radint.plot import plot_nexus

    path = write_nexus(make_result(n_frames=5), tmp_path / "r.h5")
    asked: list[Any] = []
    real = nexus.read_nexus
    monkeypatch.setattr(
        nexus, "read_nexus", lambda p, frames=None: asked.append(frames) or real(p, frames)
    )
    plot_nexus(path, tmp_path / "a.png", frame=-1)
    plot_nexus(path, tmp_path / "b.png", frame=3)
    assert asked == [slice(-1, None), slice(3, 4)]
    with pytest.raises(RadintError, match="frame 5 out of range, the file has 5"):
        plot_nexus(path, tmp_path / "c.png", frame=5)


def test_finely_binned_cakes_are_chunked_along_eta(tmp_path: Path) -> None:
    """Scale audit: a 0.1 deg cake of a 4M detector was one 43 MB chunk per frame, so reading
    one η row decompressed the whole frame. Chunks hold one frame's η rows up to
    FRAME_CHUNK_BYTES; a usual cake stays one chunk per frame."""
    from radint.io.nexus import FRAME_CHUNK_BYTES

    small = write_nexus(make_result(n_frames=2, n_eta=72, n_r=300), tmp_path / "s.h5")
    fine = make_result(n_frames=2, n_eta=3600, n_r=300)
    big = write_nexus(fine, tmp_path / "f.h5")
    with h5py.File(small) as f:
        assert f["entry/azint2d/data/I"].chunks == (1, 72, 300)
    with h5py.File(big) as f:
        chunks = f["entry/azint2d/data/I"].chunks
        assert chunks[0] == 1 and chunks[2] == 300 and 1 < chunks[1] < 3600
        assert chunks[1] * 300 * 8 <= FRAME_CHUNK_BYTES
    np.testing.assert_array_equal(read_nexus(big).cake, fine.cake)


def test_concatenate_gives_new_writeable_arrays(tmp_path: Path) -> None:
    """Review: concatenating single frames (or a stack with itself) returned read-only views
    of the first part, and an empty first part raised IndexError."""
    from radint.result import Result

    res = make_result(n_frames=3)
    one = res.frame(0)
    stack = Result.concatenate([one, one])
    for name in ("cake", "lineout", "area", "count"):
        a = getattr(stack, name)
        assert a.flags.writeable and not np.shares_memory(a, getattr(one, name)), name
    empty = read_nexus(write_nexus(res, tmp_path / "r.h5"), slice(0, 0))
    assert Result.concatenate([empty, res]).n_frames == 3
