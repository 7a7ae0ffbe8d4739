"""Batch workflow: MIDAS file series, process pool, skip-existing, failures reported, Dask."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from radint import IntegrationConfig
from radint.batch import midas_file_series, run_batch
from radint.cli import main
from radint.exceptions import RadintError
from radint.io import read_nexus, write_nexus
from radint.result import Result
from radint.testing import ring_image


def test_midas_file_series():
    assert midas_file_series("/d/ceo2_000012.tif", None, 14) == [
        "/d/ceo2_000012.tif", "/d/ceo2_000013.tif", "/d/ceo2_000014.tif"]  # fmt: skip
    assert midas_file_series("/d/x_000001_000001.h5", 1, 2) == [
        "/d/x_000001_000001.h5",
        "/d/x_000002_000002.h5",
    ]
    assert midas_file_series("/d/nonumber.tif") == ["/d/nonumber.tif"]
    # Regression (batch sweep): -endFileNr without a 6-digit number ran one file, exit 0.
    with pytest.raises(RadintError, match="-endFileNr 2: img_0001.h5 holds no 6-digit"):
        midas_file_series("/d/img_0001.h5", None, 2)


@pytest.fixture
def series(tmp_path, small_config):
    files = []
    for k in range(4):
        f = tmp_path / f"scan_{k + 1:06d}.tif"
        tifffile.imwrite(
            f,
            np.stack([ring_image(small_config, amplitude=100 * (k + 1), dtype=np.uint16)] * 2),
            photometric="minisblack",
        )
        files.append(f)
    (tmp_path / "scan_000003.tif").write_bytes(b"II*\x00garbage")  # a truncated TIFF
    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    return tmp_path, files, params


def test_batch_cli_with_midas_flags(series, capsys):
    d, files, params = series
    out = d / "out"
    rc = main(["batch", "-paramFN", str(params), "-dataFN", str(files[0]), "-endFileNr", "4",
               "-nCPUs", "2", "-nCPUsLocal", "1", "-resultFolder", str(out)])  # fmt: skip
    assert rc == 1  # one bad file
    captured = capsys.readouterr()
    assert "3/4 file(s) ok" in captured.out
    assert "scan_000003.tif" in captured.err
    for k in (1, 2, 4):
        with h5py.File(out / f"scan_{k:06d}.h5") as f:
            assert f["entry/azint2d/data/I"].shape[0] == 2
    assert not list(out.glob("scan_000003*"))
    assert not list(out.glob(".*.partial"))
    rc = main(
        ["batch", str(params), str(files[0]), str(files[1]), "-o", str(out), "--skip-existing"]
    )
    printed = capsys.readouterr().out
    assert rc == 0 and "skipped (outputs exist)" in printed
    # Audit: the summary said "2/2 file(s) ok, 0 frames", not that they were skipped.
    assert "2/2 file(s) ok (2 skipped: outputs there already), 0 frames" in printed
    # An output cut short elsewhere (a copy, a killed tool) is not taken as done.
    broken = out / "scan_000002.h5"
    broken.write_bytes(broken.read_bytes()[:3000])
    rc = main(
        ["batch", str(params), str(files[0]), str(files[1]), "-o", str(out), "--skip-existing"]
    )
    assert rc == 0 and capsys.readouterr().out.count("skipped (outputs exist)") == 1
    with h5py.File(broken) as f:
        assert f["entry/azint2d/data/I"].shape[0] == 2
    # -q: nothing on stdout when every file succeeds; the failure and its summary when not.
    rc = main(["batch", str(params), str(files[0]), "-o", str(d / "quiet"), "-q"])
    assert rc == 0 and capsys.readouterr().out == ""
    rc = main(["batch", str(params), str(files[0]), str(d / "scan_000003.tif"), "-o",
               str(d / "quiet2"), "-q"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1 and "1/2 file(s) ok" in captured.out and "scan_000003.tif" in captured.err


def test_batch_on_local_dask(series, small_config):
    pytest.importorskip("dask.distributed")
    d, files, _ = series
    counted: list[int] = []
    outcomes = run_batch(
        small_config, [files[0], files[1]], d / "dask", dask="local:2", n_threads=1,
        on_frames=counted.append,
    )  # fmt: skip
    assert [o.ok for o in outcomes] == [True, True]
    assert all(o.n_frames == 2 for o in outcomes)
    # Frames progress came from the workers too (it was the process pool's alone).
    assert sum(counted) == 4 and all(n > 0 for n in counted)


def test_prefetch_order_errors_and_early_stop():
    from radint.io.prefetch import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    it = prefetch(failing())
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    produced = []

    def counting():
        for k in range(1000):
            produced.append(k)
            yield k

    for k in prefetch(counting(), depth=2):
        if k == 3:
            break
    assert len(produced) < 20  # the producer stopped instead of reading everything


def test_batch_faults_are_reported_and_the_rest_is_processed(series, small_config, monkeypatch):
    """HDF5 without the dataset, wrong frame shape, a simulated full disk on one file's write:
    each failing file gets a one-line reason naming it; the others are written; no temporary or
    half-written file is left."""
    import errno

    import radint.io.nexus as nexus

    d, files, _ = series
    with h5py.File(d / "nodata.h5", "w") as f:
        f["entry/other"] = np.zeros((2, 3))
    with h5py.File(d / "wrongshape.h5", "w") as f:
        f["exchange/data"] = np.zeros((2, 7, 9), dtype=np.uint16)
    original = nexus.NexusWriter.append

    def disk_full_for_scan_4(self, result, **kw):
        if "scan_000004" in self.path.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return original(self, result, **kw)

    monkeypatch.setattr(nexus.NexusWriter, "append", disk_full_for_scan_4)
    inputs = [files[0], d / "nodata.h5", d / "wrongshape.h5", files[3], files[1]]
    out = d / "faults"
    outcomes = run_batch(small_config, inputs, out, n_procs=1, n_threads=1)
    assert [o.ok for o in outcomes] == [True, False, False, False, True]
    assert "nodata.h5" in outcomes[1].error and "exchange/data" in outcomes[1].error
    assert "wrongshape.h5" in outcomes[2].error and "got (2, 7, 9)" in outcomes[2].error
    assert "no space left on device" in outcomes[3].error
    assert all("\n" not in o.error for o in outcomes)
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith(".radint-cache"))
    assert written == ["scan_000001.h5", "scan_000002.h5"]


def test_batch_cli_setup_errors_exit_2_with_one_line(series, capsys):
    d, files, params = series
    rc = main(["batch", str(d / "missing.txt"), str(files[0]), "-o", str(d / "o1")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.txt" in err[0]
    (d / "dark.h5").write_bytes(b"not hdf5 at all")
    rc = main(
        ["batch", str(params), str(files[0]), "-darkFN", str(d / "dark.h5"), "-o", str(d / "o2")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "dark.h5" in err[0]
    blocker = d / "not_a_dir"
    blocker.write_text("a file where the output directory should go")
    rc = main(["batch", str(params), str(files[0]), "-o", str(blocker / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not_a_dir" in err[0]


def test_process_files_in_order_with_results_equal_to_direct_integration(
    series, small_config, monkeypatch
):
    """The cross-file pipeline: outcomes in input order (a bad file among them), each output
    holding that file's frames; the stack buffers it recycles never mix frames up; glibc is
    asked to keep freed result blocks (radint._allocator)."""
    import radint._allocator
    from radint import Integrator
    from radint.batch import process_files
    from radint.io import read_nexus

    asked = []
    monkeypatch.setattr(radint._allocator, "keep_freed_memory", lambda: asked.append(1))
    d, files, _ = series
    integ = Integrator(small_config, n_threads=1)
    inputs = [files[0], files[2], files[1], files[3], files[0]]
    names = ["a", "bad", "b", "c", "a2"]
    outcomes = list(process_files(inputs, str(d / "o"), ("nexus",), names=names, integrator=integ))
    assert [o.ok for o in outcomes] == [True, False, True, True, True]
    assert [o.path for o in outcomes] == [str(p) for p in inputs]
    assert asked
    for name, src in (("a", files[0]), ("b", files[1]), ("c", files[3]), ("a2", files[0])):
        got = read_nexus(d / "o" / f"{name}.h5")
        want = integ.integrate_stack(tifffile.imread(src))
        np.testing.assert_allclose(got.cake, want.cake, rtol=1e-6, equal_nan=True)


def test_process_files_consumer_leaving_early_leaves_no_partial_file(series, small_config):
    from radint import Integrator
    from radint.batch import process_files

    d, files, _ = series
    integ = Integrator(small_config, n_threads=1)
    gen = process_files([files[0], files[1], files[3]] * 3, str(d / "early"), ("nexus",),
                        names=[f"f{k}" for k in range(9)], integrator=integ)  # fmt: skip
    assert next(gen).ok
    gen.close()
    left = [p.name for p in (d / "early").iterdir() if p.name != ".radint-cache"]
    assert not [n for n in left if n.endswith(".partial")], left
    assert "f0.h5" in left
    # the process keeps working: another run (sharing the stack buffers) completes
    again = list(process_files(files[:2], str(d / "again"), ("nexus",), integrator=integ))
    assert [o.ok for o in again] == [True, True]


def test_stack_buffers_recycle_only_their_own_arrays():
    from radint.batch import _StackBuffers

    pool = _StackBuffers(keep=1)
    a = pool.take((2, 3), np.dtype(np.uint32))
    raw = a.base
    pool.give_back(a)
    b = pool.take((1, 3), np.dtype(np.uint16))  # a smaller request reuses the buffer
    assert b.base is raw
    pool.give_back(np.zeros((2, 3), np.uint32))  # foreign: ignored
    assert pool.take((2, 3), np.dtype(np.uint32)).base is not raw  # raw is out (in b)
    pool.give_back(b)
    c = pool.take((4, 4), np.dtype(np.float64))  # larger than any free buffer: a new one
    assert c.base is not raw and c.shape == (4, 4)
    # buffers of other sizes waiting in the pool are skipped by identity, not compared
    pool2 = _StackBuffers(keep=3)
    small, large = pool2.take((3,), np.dtype(np.uint8)), pool2.take((1000,), np.dtype(np.uint8))
    pool2.give_back(small)
    pool2.give_back(large)
    assert pool2.take((500,), np.dtype(np.uint8)).base is large.base
    # buffers of another allocator (page-locked ones for the CUDA backend) are kept apart; a
    # buffer whose memory belongs to a non-array object (as cupyx.empty_pinned's) recycles too
    made = []

    def locked(n, dtype):
        a = np.ndarray((n,), dtype=dtype, buffer=bytearray(n * np.dtype(dtype).itemsize))
        made.append(a)
        return a

    pool3 = _StackBuffers(keep=3)
    plain = pool3.take((64,), np.dtype(np.uint8))
    pool3.give_back(plain)
    pinned = pool3.take((8,), np.dtype(np.uint16), locked, "pinned")
    assert pinned.base is made[0] and pinned.base is not plain.base
    pool3.give_back(pinned)
    assert pool3.take((4,), np.dtype(np.uint32), locked, "pinned").base is made[0]
    assert pool3.take((4,), np.dtype(np.uint32)).base is plain.base and len(made) == 1


def test_batch_reads_cuda_stacks_into_the_integrators_host_buffer(
    series, small_config, monkeypatch
):
    """Under the CUDA backend the reader fills page-locked stacks (Integrator.host_buffer), which
    the GPU then reads by DMA; checked with the integration itself stubbed (no GPU here)."""
    import radint.batch as batch
    from radint import Integrator

    d, files, _ = series
    integ = Integrator(small_config, n_threads=1)
    allocated, seen = [], []

    def host_buffer(shape, dtype):
        a = np.empty(shape, dtype)
        allocated.append(a)
        return a

    cpu = Integrator(small_config, n_threads=1)

    def integrate_stack(data, dark=None):
        seen.append(data)
        return cpu.integrate_stack(data, dark=dark)

    monkeypatch.setitem(vars(integ), "backend", "cuda")  # past the read-only attribute
    monkeypatch.setattr(integ, "host_buffer", host_buffer)
    monkeypatch.setattr(integ, "integrate_stack", integrate_stack)
    monkeypatch.setattr(batch, "_STACK_BUFFERS", batch._StackBuffers(keep=4))
    out = list(batch.process_files(files[:2], str(d / "pinned"), ("nexus",), integrator=integ))
    assert [o.ok for o in out] == [True, True], [o.error for o in out]
    assert allocated and seen
    assert all(any(np.shares_memory(s, a) for a in allocated) for s in seen)


def test_process_files_writer_bug_raises_instead_of_hanging(series, small_config, monkeypatch):
    import threading

    import radint.batch as batch
    from radint import Integrator

    d, files, _ = series
    integ = Integrator(small_config, n_threads=1)
    original = batch._FileWriter._handle

    def broken(self, event):
        if event[0] == "result":
            raise RuntimeError("writer bug")
        return original(self, event)

    monkeypatch.setattr(batch._FileWriter, "_handle", broken)
    caught: list[BaseException] = []

    def run() -> None:
        try:
            list(batch.process_files([files[0], files[1]] * 5, str(d / "w"), ("nexus",),
                                     names=[f"f{k}" for k in range(10)], integrator=integ))  # fmt: skip
        except RuntimeError as e:
            caught.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "process_files hung after its writer died"
    assert caught and "writer bug" in str(caught[0])
    assert not [p for p in (d / "w").iterdir() if p.name.endswith(".partial")]


def test_process_pool_runs_files_in_chunks_in_order(series, small_config):
    """-nCPUs: each worker task is a run of consecutive files through one pipeline; outcomes
    still come back one per file, in input order, a bad file failing alone."""
    d, files, _ = series
    inputs = [files[k % 4] for k in range(16)]  # files[2] is the truncated TIFF
    names = [f"n{k:02d}" for k in range(16)]
    outcomes = run_batch(small_config, inputs, d / "pool", n_procs=2, n_threads=1, names=names)
    assert [o.path for o in outcomes] == [str(p) for p in inputs]
    assert [o.ok for o in outcomes] == [k % 4 != 2 for k in range(16)]
    written = sorted(p.name for p in (d / "pool").glob("n*.h5"))
    assert written == [f"n{k:02d}.h5" for k in range(16) if k % 4 != 2]


def _midas_zip(path, frames, dark, skip, parameters=None, unstored=()):
    """A MIDAS *.analysis.MIDAS.zip (spec §8.2) holding ``frames`` and the ``dark`` stack, and
    ``parameters`` ({name: array}) in its analysis_parameters, each with its chunk stored (as
    MIDAS's zarr 2 writer stores it) but those named in ``unstored``, written as zarr 3 does
    by default: no chunk where the value equals the fill value."""
    import zarr
    from numcodecs import Blosc
    from zarr.storage import ZipStore

    store = ZipStore(path, mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=2)
    blosc = Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)
    chunks = (1, *frames.shape[1:])
    root.create_array("exchange/data", data=frames, chunks=chunks, compressors=blosc)
    root.create_array("exchange/dark", data=dark, chunks=chunks, compressors=blosc)
    params = "analysis/process/analysis_parameters"
    root.create_array(f"{params}/SkipFrame", data=np.array([skip], dtype=np.int32))
    for name, value in (parameters or {}).items():
        root.create_array(f"{params}/{name}", data=np.asarray(value),
                          config={"write_empty_chunks": name not in unstored})  # fmt: skip
    scan = "measurement/process/scan_parameters"
    root.create_array(f"{scan}/start", data=np.array([30.0]))
    root.create_array(f"{scan}/step", data=np.array([0.25]))
    root.create_array(f"{scan}/Temperature", data=np.arange(len(frames)) + 300.0)
    root.create_array(f"{scan}/I0", data=np.arange(len(frames)) * 10.0 + 1000.0)
    store.close()


def test_midas_zip_own_dark_and_c_frame_numbers(tmp_path, small_config, capsys):
    """A MIDAS Zarr zip integrated without --dark: its exchange/dark (after SkipFrame) is
    subtracted, and results number the frames from 0 after SkipFrame (FrameNr_0 is the first
    frame kept), both as IntegratorZarrOMP does; a zip without dark frames after SkipFrame
    integrates with no dark (C: the same) instead of failing."""
    from radint import Integrator

    rng = np.random.default_rng(3)
    frames = np.stack(
        [ring_image(small_config, amplitude=200 + 50 * k, dtype=np.uint16) + 100 for k in range(4)]
    )
    dark = rng.integers(80, 120, size=(3, *frames.shape[1:])).astype(np.uint16)
    _midas_zip(tmp_path / "a.analysis.MIDAS.zip", frames, dark, skip=1)
    _midas_zip(tmp_path / "b.analysis.MIDAS.zip", frames, dark[:1], skip=1)
    out = tmp_path / "out"
    outcomes = run_batch(
        small_config,
        [tmp_path / "a.analysis.MIDAS.zip", tmp_path / "b.analysis.MIDAS.zip"],
        out,
        formats=("nexus", "caked"),
        n_threads=1,
    )
    assert [o.ok for o in outcomes] == [True, True], [o.error for o in outcomes]
    integ = Integrator(small_config, n_threads=1)
    with_dark = integ.integrate_stack(frames[1:], dark=dark[1:].mean(axis=0))
    without = integ.integrate_stack(frames[1:])
    for stem, want in (("a", with_dark), ("b", without)):
        with h5py.File(out / f"{stem}.h5") as f:
            assert f["entry/azint2d/data/frame_id"][()].tolist() == [0, 1, 2]
            np.testing.assert_allclose(f["entry/azint2d/data/I"][()], want.cake, rtol=1e-12)
            # The zip's per-frame ω is kept in the NeXus file too (and read back from it).
            np.testing.assert_allclose(f["entry/scan/omega"][()], [30.25, 30.5, 30.75])
        back = read_nexus(out / f"{stem}.h5")
        np.testing.assert_allclose(back.metadata["omega_deg"], [30.25, 30.5, 30.75])
        # ... and its monitors, so a NeXus file converted to MIDAS files keeps them (they
        # were written as 0.0); ones the zip lacks are not invented.
        np.testing.assert_allclose(back.metadata["Temperature"], [301.0, 302.0, 303.0])
        np.testing.assert_allclose(back.metadata["I0"], [1010.0, 1020.0, 1030.0])
        assert "Pressure" not in back.metadata
        # Provenance: positions in the zip's exchange/data (SkipFrame counted), not frame ids.
        assert back.metadata["source_frame"].tolist() == [1, 2, 3]
        assert set(back.metadata["source_path"]) == {str(tmp_path / f"{stem}.analysis.MIDAS.zip")}
        with h5py.File(out / f"{stem}.caked.hdf") as f:
            assert sorted(f["IntegrationResult"]) == ["FrameNr_0", "FrameNr_1", "FrameNr_2"]
            # ω of every frame of the file = start + index·step (C adds SkipFrame·step to
            # start and counts after it); Temperature averaged per chunk, I0 as C takes it.
            assert f["IntegrationResult/FrameNr_0"].attrs["omega"][0] == 30.25
            np.testing.assert_allclose(f["Omegas"][()], [30.25, 30.5, 30.75])
            chunk = f["OmegaSumFrame/LastFrameNumber_2"].attrs
            assert chunk["Temperature"] == 303.0 and chunk["I0"] == 1030.0
    assert not np.allclose(with_dark.cake, without.cake, equal_nan=True)
    # `radint info` says how many frames a run takes (it said 4 where 3 were integrated).
    from radint.cli import main

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    assert main(["info", str(params), str(tmp_path / "a.analysis.MIDAS.zip")]) == 0
    assert "4 frame(s) (3 integrated: SkipFrame) of" in " ".join(capsys.readouterr().out.split())
    params.write_text(small_config.midas_text() + "SkipFrame 2\n")  # the file's wins, as in a run
    assert main(["info", str(params), str(tmp_path / "a.analysis.MIDAS.zip")]) == 0
    assert "4 frame(s) (2 integrated: SkipFrame) of" in " ".join(capsys.readouterr().out.split())
    params.write_text(small_config.midas_text() + "SkipFrame 4\n")
    assert main(["info", str(params), str(tmp_path / "a.analysis.MIDAS.zip")]) == 1


def test_parameter_file_skipframe_and_omega_replace_the_zips(tmp_path, small_config, caplog):
    """SkipFrame, OmegaStart and OmegaStep set in the parameter file win over the zip's (with a
    warning), as MIDAS's integrator.py has them (it regenerates the zip from the parameter
    file); radint took them from the zip and the rest from the file, matching neither route."""
    from radint import Integrator

    frames = np.stack([ring_image(small_config, amplitude=200 + 50 * k, dtype=np.uint16)
                       for k in range(4)])  # fmt: skip
    dark = np.full((3, *frames.shape[1:]), 5, np.uint16)
    dark[0] = 50  # only in the zip's SkipFrame 1 dark
    _midas_zip(tmp_path / "a.analysis.MIDAS.zip", frames, dark, skip=1)
    cfg = IntegrationConfig.from_text(
        small_config.midas_text() + "SkipFrame 0\nOmegaStart 100\nOmegaStep 2\n", "p.txt"
    )
    with caplog.at_level(logging.WARNING, logger="radint"):
        outcomes = run_batch(cfg, [tmp_path / "a.analysis.MIDAS.zip"], tmp_path / "out",
                             formats=("nexus",), n_threads=1)  # fmt: skip
    assert outcomes[0].ok, outcomes[0].error
    for key, value, own in (
        ("SkipFrame", 0, 1),
        ("OmegaStart", 100, 30.25),
        ("OmegaStep", 2, 0.25),
    ):
        assert f"{key} {value:g} from the parameter file replaces the zip's {own:g}" in caplog.text
    want = Integrator(cfg, n_threads=1).integrate_stack(frames, dark=dark.mean(axis=0))
    with h5py.File(tmp_path / "out" / "a.h5") as f:
        assert f["entry/azint2d/data/frame_id"][()].tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(f["entry/azint2d/data/I"][()], want.cake, rtol=1e-12)
        np.testing.assert_allclose(f["entry/scan/omega"][()], [100, 102, 104, 106])
    replacing = {"SkipFrame", "OmegaStart", "OmegaStep"}
    plain = IntegrationConfig.from_text(small_config.midas_text(), "p.txt").zip_parameters()
    assert not replacing & set(plain)
    # The parameter file the zip was made from: OmegaStart is the ω of the first frame after
    # SkipFrame (the zip stores start = OmegaStart − SkipFrame·OmegaStep): same ω, no warning.
    same = IntegrationConfig.from_text(
        small_config.midas_text() + "SkipFrame 1\nOmegaStart 30.25\nOmegaStep 0.25\n", "q.txt"
    )
    _midas_zip(tmp_path / "b.analysis.MIDAS.zip", frames, dark, skip=1)  # warned once per zip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radint"):
        outcomes = run_batch(same, [tmp_path / "b.analysis.MIDAS.zip"], tmp_path / "same",
                             formats=("nexus",), n_threads=1)  # fmt: skip
    assert outcomes[0].ok and "replaces the zip's" not in caplog.text
    with h5py.File(tmp_path / "same" / "b.h5") as f:
        np.testing.assert_allclose(f["entry/scan/omega"][()], [30.25, 30.5, 30.75])


def test_zip_parameters_radint_does_not_use_are_warned(tmp_path, small_config, caplog):
    """A zip's OmegaSumFrames 2 (and Normalize 0) where the parameter file has none: MIDAS
    given the zip alone sums frame pairs, radint (as MIDAS's integrator.py, from the parameter
    file) integrates single frames: that went without a word. One warning names each key that
    differs; the zip's own values equal to the file's (Lsd, ImTransOpt 0 as none) are not."""
    frames = np.stack([ring_image(small_config, dtype=np.uint16)] * 4)
    dark = np.zeros((1, *frames.shape[1:]), np.uint16)
    zips = [tmp_path / f"{name}.analysis.MIDAS.zip" for name in ("a", "b")]
    for zip_path in zips:  # a scan's zips share their parameters: warned once
        _midas_zip(zip_path, frames, dark, skip=0, parameters={
            "OmegaSumFrames": np.array([2], np.int64), "Normalize": np.array([0], np.int32),
            "Lsd": np.array([small_config.lsd_um]), "ImTransOpt": np.array([0], np.int32),
        })  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="radint"):
        outcomes = run_batch(small_config, zips, tmp_path / "out", formats=("nexus",),
                             n_threads=1)  # fmt: skip
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    lines = [r.getMessage() for r in caplog.records if "analysis_parameters" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].endswith(": Normalize 0 (used: 1); OmegaSumFrames 2 (used: 1) (not "
                             "repeated for other zips alike)"), lines[0]  # fmt: skip
    with h5py.File(tmp_path / "out" / "a.h5") as f:
        assert f["entry/azint2d/data/I"].shape[0] == 4  # the parameter file's rule: 4 frames


def test_a_zip_parameter_with_no_chunk_is_read_as_c_reads_it(tmp_path, small_config, caplog):
    """A zip written by zarr 3 stores no chunk for a value equal to the fill value (Normalize 0):
    zarr reads 0, IntegratorZarrOMP finds no chunk and keeps its default 1. radint integrated
    with the parameter file's 0 without a word (cakes off by the bin area against C given the
    zip); the warning now says what C reads. A stored Normalize 0 equal to the file's is not
    warned about, nor an unstored one where the file has C's default."""
    frames = np.stack([ring_image(small_config, dtype=np.uint16)] * 2)
    dark = np.zeros((1, *frames.shape[1:]), np.uint16)
    normalize_0 = dataclasses.replace(small_config, normalize=0)
    cases = [("unstored", normalize_0, ("Normalize",)), ("stored", normalize_0, ()),
             ("default", small_config, ("Normalize",))]  # fmt: skip
    for name, config, unstored in cases:
        zip_path = tmp_path / f"{name}.analysis.MIDAS.zip"
        _midas_zip(zip_path, frames, dark, skip=0, unstored=unstored,
                   parameters={"Normalize": np.array([0], np.int32)})  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="radint"):
            outcomes = run_batch(config, [zip_path], tmp_path / name, formats=("nexus",),
                                 n_threads=1)  # fmt: skip
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]
        lines = [r.getMessage() for r in caplog.records if "analysis_parameters" in r.getMessage()]
        if name == "unstored":
            assert len(lines) == 1, lines
            assert lines[0].endswith(": Normalize not stored (its value equals the fill value 0, "
                                     "a chunk zarr 3 leaves out: C reads its default 1) (used: 0) "
                                     "(not repeated for other zips alike)"), lines[0]  # fmt: skip
        else:
            assert lines == [], (name, lines)


def test_consecutive_small_files_are_integrated_as_one_stack(tmp_path, small_config):
    """Frames of consecutive files share a stack until it holds 8 frames or a file's frames
    differ in type; each file's output holds its own frames and ids, and a bad file in the
    middle of a group fails alone."""
    from radint import Integrator
    from radint.batch import process_files
    from radint.io import read_nexus

    base = ring_image(small_config, amplitude=50, dtype=np.float64)
    rng = np.random.default_rng(5)
    spec = [("f0", 1, np.uint16), ("f1", 3, np.uint16), ("f2", 1, np.uint32),
            ("f3", 1, np.uint16), ("bad", 0, None), ("f4", 5, np.uint16)]  # fmt: skip
    paths, frames = [], {}
    for name, n, dtype in spec:
        path = tmp_path / f"{name}.tif"
        if dtype is None:
            path.write_bytes(b"II*\x00garbage")
        else:
            frames[name] = rng.poisson(base, size=(n, *base.shape)).astype(dtype)
            tifffile.imwrite(path, frames[name], photometric="minisblack")
        paths.append(path)
    integ = Integrator(small_config, n_threads=1)
    calls = []
    original = integ.integrate_stack

    def spy(data, dark=None):
        assert isinstance(data, np.ndarray)  # one buffer the files were read into
        calls.append((len(data), data[0].dtype))
        return original(data, dark=dark)

    integ.integrate_stack = spy
    outcomes = list(process_files(paths, str(tmp_path / "o"), ("nexus",), integrator=integ))
    assert [o.ok for o in outcomes] == [True, True, True, True, False, True]
    assert [o.n_frames for o in outcomes if o.ok] == [1, 3, 1, 1, 5]
    assert calls == [(4, np.uint16), (1, np.uint32), (6, np.uint16)]
    for name, stack in frames.items():
        got = read_nexus(tmp_path / "o" / f"{name}.h5")
        want = original(stack)
        assert list(got.frame_ids) == list(range(len(stack)))
        # Each file's frames of a shared stack are traced to that file, not to the group's.
        assert got.metadata["source_files"] == [str(tmp_path / f"{name}.tif")]
        assert got.metadata["source_frame"].tolist() == list(range(len(stack)))
        np.testing.assert_allclose(got.cake, want.cake, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(got.cake_sigma, want.cake_sigma, rtol=1e-12, equal_nan=True)


def _h5_frames(path, frames, dark=None) -> None:
    with h5py.File(path, "w") as f:
        f["exchange/data"] = frames
        if dark is not None:
            f["exchange/dark"] = dark


def _h5_inputs(
    tmp_path: Path, config: IntegrationConfig, n_files: int, n_frames: int = 2
) -> tuple[Path, list[str]]:
    """``p.txt`` for ``config`` and ``n_files`` HDF5 files ``a00.h5``... of ``n_frames`` ring
    frames each, in ``tmp_path``."""
    params = tmp_path / "p.txt"
    params.write_text(config.midas_text())
    frames = np.stack([ring_image(config, dtype=np.uint16)] * n_frames)
    inputs = []
    for j in range(n_files):
        _h5_frames(tmp_path / f"a{j:02d}.h5", frames)
        inputs.append(str(tmp_path / f"a{j:02d}.h5"))
    return params, inputs


def test_outputs_never_overwrite_inputs_or_each_other(tmp_path, small_config, capsys):
    """An HDF5 input named like its NeXus output in the output directory, or two inputs of one
    stem from different folders: refused before anything is read or written."""
    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    frames = np.stack([ring_image(small_config, dtype=np.uint16)] * 2)
    data = tmp_path / "data.h5"
    _h5_frames(data, frames)
    before = data.read_bytes()
    for argv in (["integrate", str(params), str(data), "-o", str(tmp_path)],
                 ["batch", "-paramFN", str(params), "-dataFN", str(data),
                  "-resultFolder", str(tmp_path), "--skip-existing"]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "would overwrite the input" in err and str(data) in err
        assert err.rstrip().endswith("To fix: write to another directory (-o DIR)")
        assert data.read_bytes() == before
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "x.tif", frames[0])
    out = tmp_path / "out"
    assert main(["batch", str(params), str(tmp_path / "a" / "x.tif"), str(tmp_path / "b" / "x.tif"),
                 "-o", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "would be written for both" in err
    # The advice fits the problem (it offered -outName, which takes a single input, here).
    assert "separate runs, each with its own -o DIR" in err and "another directory" not in err
    assert not out.exists()
    a = str(tmp_path / "a" / "x.tif")
    assert main(["batch", str(params), a, a, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is given twice" in err and err.rstrip().endswith("To fix: give each file once")
    assert main(["batch", str(params), a, "-outName", "sub/y", "-o", str(out)]) == 2
    assert "is a path, not a file stem" in capsys.readouterr().err
    assert not out.exists()


def test_batch_midas_flags_dark_location_overrides_and_out_name(tmp_path, small_config, capsys):
    """integrator.py habits: -darkFN of a file holding data and dark takes exchange/dark (its
    -darkLoc default); with -paramFN every positional is data; Key value and -Key value
    overrides anywhere on the line; -outName names one file's output and refuses several."""
    from radint import Integrator

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    frames = np.stack([ring_image(small_config, dtype=np.uint16)] * 2)
    data = tmp_path / "scan.h5"
    _h5_frames(data, frames, dark=np.full((3, *small_config.shape), 7, np.uint16))
    out = tmp_path / "o1"
    assert main(["batch", "-paramFN", str(params), "-dataFN", str(data), "-darkFN", str(data),
                 "-resultFolder", str(out)]) == 0  # fmt: skip
    want = Integrator(small_config).integrate_stack(frames, dark=np.full(small_config.shape, 7.0))
    with h5py.File(out / "scan.h5") as f:
        np.testing.assert_allclose(f["entry/azint2d/data/I"][...], want.cake, rtol=1e-12)
        conf = f["entry/azint2d/reduction/input/configuration"][()].decode()
        assert str(data) in conf  # the dark file is recorded
    other = tmp_path / "other.h5"
    _h5_frames(other, frames)
    n_r = Integrator(small_config.replace(r_bin_px=2.0)).map.n_r
    assert main(["batch", "-paramFN", str(params), str(data), str(other), "-o", str(tmp_path / "o2"),
                 "RBinSize", "2"]) == 0  # fmt: skip
    assert main(["batch", "-paramFN", str(params), "-dataFN", str(other), "-resultFolder",
                 str(tmp_path / "o3"), "-RBinSize", "2", "-outName", "named"]) == 0  # fmt: skip
    # integrator.py strips the dashes of --Key value too (audit: it was "unrecognized").
    assert main(["batch", "-paramFN", str(params), "-dataFN", str(other), "-resultFolder",
                 str(tmp_path / "o6"), "--RBinSize", "2"]) == 0  # fmt: skip
    for path in (tmp_path / "o2" / "scan.h5", tmp_path / "o2" / "other.h5",
                 tmp_path / "o3" / "named.h5", tmp_path / "o6" / "other.h5"):  # fmt: skip
        with h5py.File(path) as f:
            assert f["entry/azint2d/data/I"].shape[-1] == n_r
    capsys.readouterr()
    assert main(["batch", "-paramFN", str(params), str(data), str(other), "-outName", "x",
                 "-o", str(tmp_path / "o4")]) == 2  # fmt: skip
    assert "-outName names the output of one input file; 2 given" in capsys.readouterr().err
    assert main(["integrate", str(params), str(other), "-o", str(tmp_path / "o5"), "RBinSize",
                 "2", "--dark", str(data)]) == 0  # fmt: skip


def test_ge_and_raw_frames_take_the_detector_shape(tmp_path, small_config, capsys):
    """GE files of a detector that is not 2048², and raw files given their pixel type."""
    from radint import Integrator

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    frames = np.stack([ring_image(small_config, amplitude=a, dtype=np.uint16) for a in (50, 90)])
    (tmp_path / "s.ge2").write_bytes(bytes(8192) + frames.astype("<u2").tobytes())
    (tmp_path / "s2.raw").write_bytes(frames.astype("<u4").tobytes())
    want = Integrator(small_config).integrate_stack(frames).cake
    # refused before the map is built (it was a per-file failure after it, exit 1)
    assert main(["integrate", str(params), str(tmp_path / "s2.raw"), "-o", str(tmp_path)]) == 2
    assert "--raw-dtype" in capsys.readouterr().err
    assert main(["batch", str(params), str(tmp_path / "s.ge2"), str(tmp_path / "s2.raw"),
                 "--raw-dtype", "uint32", "-o", str(tmp_path / "o")]) == 0  # fmt: skip
    for name in ("s.h5", "s2.h5"):
        with h5py.File(tmp_path / "o" / name) as f:
            np.testing.assert_allclose(f["entry/azint2d/data/I"][...], want, rtol=1e-12)


@pytest.mark.parametrize(
    ("procs", "group", "signame"),
    [([], False, "SIGTERM"), (["-nCPUs", "2", "-nCPUsLocal", "1"], False, "SIGTERM"),
     (["-nCPUs", "2", "-nCPUsLocal", "1"], True, "SIGTERM"),
     (["-nCPUs", "2", "-nCPUsLocal", "1"], True, "SIGINT"),
     ([], True, "SIGINT SIGINT"), (["-nCPUs", "2", "-nCPUsLocal", "1"], True, "SIGINT SIGINT")],
    ids=["1proc", "2procs", "2procs-group", "2procs-ctrl-c", "1proc-ctrl-c-twice",
         "2procs-ctrl-c-twice"],
)  # fmt: skip
def test_sigterm_removes_unfinished_outputs_and_prints_a_summary(
    tmp_path, small_config, procs, group, signame
):
    """What SLURM's scancel sends: files finished stay, the one in progress (its reader held up
    by a FIFO that never delivers) leaves nothing, the summary says so, exit code 130; with a
    process pool the workers are stopped the same way, also when the signal goes to the whole
    process group (each worker then gets it twice: the group's and the parent's), and for
    Ctrl-C in a terminal (SIGINT to the group), pressed once or twice (the second one cut the
    clean-up short: output sets half renamed, .partial files left)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    _h5_frames(tmp_path / "a.h5", np.stack([ring_image(small_config, dtype=np.uint16)] * 8))
    os.mkfifo(tmp_path / "b.tif")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "batch", str(params), str(tmp_path / "a.h5"),
         str(tmp_path / "b.tif"), "-o", str(out), "--format", "nexus,xy,mat", *procs],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group,
        preexec_fn=_sigint_as_in_a_terminal,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "a.h5").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "a.h5").exists()
        time.sleep(0.3)  # the reader is now waiting on the FIFO
        for k, name in enumerate(signame.split()):
            time.sleep(0.05 * k)
            if group:
                os.killpg(proc.pid, getattr(signal, name))
            else:
                proc.send_signal(getattr(signal, name))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "1/2 file(s) ok" in stdout and "interrupted; 1 not done" in stdout
    # a.h5's 8 frames, also when it finished unreported while stopping (counted from its
    # output: the line once read "1/2 file(s) ok, 0 frames (of 0 file(s))").
    assert "1/2 file(s) ok, 8 frames in" in stdout
    assert "interrupted" in stderr
    # An idle worker's exit can still interrupt its pool's pipe read on Ctrl-C (a traceback
    # from multiprocessing, rarely); the files and the summary are right either way.
    assert signame.startswith("SIGINT") or "Traceback" not in stderr, stderr
    # A worker leaving with os._exit left numcodecs' Blosc semaphore to the resource tracker.
    assert "leaked semaphore" not in stderr, stderr
    assert sorted(p.name for p in out.iterdir() if p.name != ".radint-cache") == [
        "a.h5", "a.mat", "a_lineout.xy"]  # fmt: skip
    with h5py.File(out / "a.h5") as f:
        assert f["entry/azint2d/data/I"].shape[0] == 8


def test_a_file_failing_in_its_last_format_leaves_none_of_its_outputs(
    tmp_path, small_config, monkeypatch
):
    """A full disk while writing the last whole-file format: the formats already written for
    that file are removed with its NeXus file, the reason is one line, other files are whole."""
    import errno

    from radint.io import write as io_write

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.tif", ring_image(small_config, dtype=np.uint16))
    suffix, write_mat = io_write.FORMATS["mat"]

    def full_for_b(result, path):
        if path.name.startswith("b"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write_mat(result, path)

    monkeypatch.setitem(io_write.FORMATS, "mat", (suffix, full_for_b))
    out = tmp_path / "out"
    outcomes = run_batch(small_config, [tmp_path / "a.tif", tmp_path / "b.tif"], out,
                         ("nexus", "midas", "xy", "mat"))  # fmt: skip
    assert [o.ok for o in outcomes] == [True, False]
    assert outcomes[1].error.startswith(f"{tmp_path / 'b.tif'}: no space left on device")
    names = sorted(p.name for p in out.iterdir() if p.name != ".radint-cache")
    assert names == ["a.caked.hdf", "a.h5", "a.mat", "a.zarr.zip", "a_lineout.xy"]


def test_nexus_output_refused_before_hdf5_meets_a_full_disk(tmp_path, small_config, monkeypatch):
    """HDF5 running out of space mid-write leaves objects it cannot release (the process crashed
    at exit): a NeXus append first checks the free space and fails that file cleanly."""
    import collections

    from radint.io import nexus

    data = tmp_path / "many.h5"
    _h5_frames(data, np.stack([ring_image(small_config, dtype=np.uint16)] * 4))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(nexus.shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 1 << 20))
    out = tmp_path / "out"
    [outcome] = run_batch(small_config, [data], out, ("nexus",))
    assert not outcome.ok
    assert outcome.error == (
        f"{data}: no space left on device while writing its outputs in {out} ({1 << 20} bytes "
        f"free where writing needs {outcome.error.split()[-1][:-1]})"
    )
    assert [p.name for p in out.iterdir()] == [".radint-cache"]
    # Regression (batch sweep): under a file size limit (ulimit -f) HDF5 met EFBIG mid-write
    # and the process segfaulted (exit 139) at exit; the limit is checked as the free space is.
    monkeypatch.undo()
    monkeypatch.setattr(nexus, "_file_size_limit", lambda: 600 << 10)
    [outcome] = run_batch(small_config, [data], tmp_path / "limited", ("nexus",))
    assert not outcome.ok and "file too large while writing its outputs" in outcome.error
    assert "the file size limit (ulimit -f) is 614400 bytes" in outcome.error
    assert not list((tmp_path / "limited").glob(".*.partial"))


def test_space_held_by_other_outputs_counts_as_used(tmp_path, small_config, monkeypatch):
    """Audit (batch on a filling 200 MB disk, --format nexus,midas,xy: segfaults and bus errors,
    no summary): the free-space check of a NeXus append did not see the caked.hdf, zip and xy
    outputs the batch wrote meanwhile on another thread, so HDF5 met the full disk and crashed
    the process. Writes in progress and each open HDF5 output's close now hold their bytes."""
    import shutil

    from radint import Integrator
    from radint.io import NexusWriter, nexus, write_result
    from radint.io.write import estimated_bytes

    result = Integrator(small_config, n_threads=1).integrate(ring_image(small_config))
    free = {"bytes": 1 << 30}
    real = shutil.disk_usage
    monkeypatch.setattr(nexus.shutil, "disk_usage", lambda p: real(p)._replace(free=free["bytes"]))
    with NexusWriter(tmp_path / "a.h5") as writer:
        writer.append(result)
        writer.append(result)  # an HDF5 tree now: its close is held for
        need = estimated_bytes(result, "nexus")
        free["bytes"] = need + nexus.SPACE_MARGIN + nexus.CLOSE_RESERVE - 1
        with pytest.raises(OSError, match=f"{nexus.CLOSE_RESERVE} of them held for other outputs"):
            write_result(result, tmp_path / "whole", ["nexus"])
        free["bytes"] += 1
        write_result(result, tmp_path / "whole", ["nexus"])
        with nexus.SpaceHold(10 << 20):  # another thread's write in progress
            with pytest.raises(OSError, match="No space left on device"):
                writer.append(result)
        free["bytes"] = 1 << 30
    assert read_nexus(tmp_path / "a.h5").n_frames == 2


def test_outputs_written_as_plain_bytes_are_not_refused_on_a_nearly_full_disk(
    tmp_path, small_config, monkeypatch
):
    """Review: every whole-file output was checked against the free space with its arrays'
    sizes (text x3, caked.hdf with four maps more): a 0.2 MB _lineout.xy was refused with 30 MB
    free ("needs 64976000"). Only NeXus, which HDF5 writes into the file itself, is checked;
    the others fail cleanly on a full disk, and their estimates are near their sizes."""
    import shutil

    from radint import Integrator
    from radint.io import nexus, write_result
    from radint.io.write import estimated_bytes

    stack = Integrator(small_config, n_threads=1).integrate_stack(
        np.stack([ring_image(small_config)] * 20)
    )
    free = {"bytes": nexus.SPACE_MARGIN // 2}
    real = shutil.disk_usage
    monkeypatch.setattr(nexus.shutil, "disk_usage", lambda p: real(p)._replace(free=free["bytes"]))
    written = write_result(stack, tmp_path, ["xy", "bin", "caked", "gsas"])
    for fmt, path in zip(["xy", "bin", "caked", "gsas"], written, strict=True):
        size = path.stat().st_size
        assert size <= estimated_bytes(stack, fmt), (fmt, size)
        if fmt != "gsas":  # (its chunks are compressed)
            assert estimated_bytes(stack, fmt) <= 3 * size + (64 << 10), (fmt, size)
    with pytest.raises(OSError, match="No space left on device"):
        write_result(stack, tmp_path / "n", ["nexus"])


def test_darks_are_read_at_the_detector_shape(series, small_config, capsys, caplog):
    """GE / raw darks take NrPixelsY × NrPixelsZ as the data do; a dark of another shape fails
    once, naming the dark file, before any data file is read."""
    d, files, params = series
    rows, cols = small_config.shape
    ge = d / "dark_00001.ge2"
    ge.write_bytes(b"\0" * 8192 + np.full((2, rows, cols), 7, "<u2").tobytes())
    raw = d / "dark.raw"
    np.full((rows, cols), 7, "<u2").tofile(raw)
    # MIDAS's dark_avg.bin is int64 whatever the frames' type (found by a user check: with
    # uint16 frames its bytes were read as 4 uint16 frames, averaged, without a word).
    raw64 = d / "dark_avg.bin"
    np.full((rows, cols), 7, "<i8").tofile(raw64)
    want = main(["integrate", str(params), str(files[0]), "-o", str(d / "nodark"), "-q"])
    assert want == 0
    for dark, extra in ((ge, []), (raw, ["--raw-dtype", "uint16"]),
                        (raw64, ["--raw-dtype", "uint16", "--dark-dtype", "int64"])):  # fmt: skip
        out = d / f"with_{dark.name}"
        assert main(["batch", str(params), str(files[0]), "--dark", str(dark), "-o", str(out),
                     "-q", *extra]) == 0  # fmt: skip
        with h5py.File(out / f"{files[0].stem}.h5") as f, \
                h5py.File(d / "nodark" / f"{files[0].stem}.h5") as g:  # fmt: skip
            lineout, plain = f["entry/azint1d/data/I"][0], g["entry/azint1d/data/I"][0]
            ok = np.isfinite(plain)
            np.testing.assert_allclose(lineout[ok], plain[ok] - 7, rtol=1e-9)
    capsys.readouterr()
    # Without --dark-dtype the int64 dark passes for 4 uint16 frames: said (the review found
    # it read without a word).
    with caplog.at_level(logging.WARNING, logger="radint"):
        assert main(["integrate", str(params), str(files[0]), "--dark", str(raw64),
                     "--raw-dtype", "uint16", "-o", str(d / "narrow"), "-q"]) == 0  # fmt: skip
    assert "its size and values look like int64 frames" in caplog.text
    assert "give --dark-dtype int64 if so" in caplog.text
    # Several int64 frames (MIDAS averages them) are said too; a uint16 stack of that size is
    # not (its 8-byte values are huge).
    np.full((3, rows, cols), 7, "<i8").tofile(raw64)
    stack16 = d / "stack16.raw"
    np.full((12, rows, cols), 7, "<u2").tofile(stack16)
    zeros16 = d / "zeros16.raw"  # either reading gives the same dark: nothing to say
    np.zeros((4, rows, cols), "<u2").tofile(zeros16)
    for dark, said in ((raw64, True), (stack16, False), (zeros16, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="radint"):
            assert main(["integrate", str(params), str(files[0]), "--dark", str(dark),
                         "--raw-dtype", "uint16", "-o", str(d / f"n_{dark.stem}"),
                         "-q"]) == 0  # fmt: skip
        assert ("look like int64 frames" in caplog.text) == said, dark
    assert main(["integrate", str(params), str(files[0]), "--dark", str(raw), "-o", str(d)]) == 2
    assert "a raw dark needs its pixel type" in capsys.readouterr().err
    small = d / "small_dark.tif"
    tifffile.imwrite(small, np.zeros((rows // 2, cols), np.uint16))
    rc = main(["batch", str(params), str(files[0]), str(files[1]), "--dark", str(small),
               "-o", str(d / "bad")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("small_dark.tif") == 1
    assert f"expected {(rows, cols)}" in err and not (d / "bad").exists()


def test_output_names_keep_dots_that_are_not_the_format_ending():
    from radint.batch import output_stem

    assert output_stem("d/CeO2.0001.tif") == "CeO2.0001"
    assert output_stem("2026.12.03_run1.h5") == "2026.12.03_run1"
    assert output_stem("scan_000001.analysis.MIDAS.zip") == "scan_000001"
    assert output_stem("frame.edf.gz") == "frame" and output_stem("ff_00012.ge3") == "ff_00012"
    assert output_stem(".bg.tif") == ".bg" and output_stem("x.tif", "y") == "y"


@pytest.mark.parametrize("n_procs", ["1", "2"])
def test_outputs_trace_every_frame_to_its_input_file_and_frame(
    series, capsys, monkeypatch, n_procs
):
    """radint batch with relative input paths: every output (NeXus HDF5 and Zarr) records, per
    frame, the input's absolute path and the frame's position in it; ``radint info RESULT``
    lists them and ``--row`` answers for one frame."""
    from radint.io import read_provenance

    d, files, _ = series
    monkeypatch.chdir(d)  # relative paths in, absolute paths recorded
    rc = main(["batch", "p.txt", files[0].name, files[1].name, "-o", "out", "-nCPUs", n_procs,
               "--format", "nexus,zarr,caked"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    for f in files[:2]:
        stem = f.name.removesuffix(".tif")
        for out in (d / "out" / f"{stem}.h5", d / "out" / f"{stem}.zarr"):
            prov = read_provenance(out)
            assert prov is not None and prov.files == [str(f)], out
            assert prov.file_index.tolist() == [0, 0]
            assert prov.frame_index.tolist() == [0, 1]
        assert main(["info", str(d / "out" / f"{stem}.h5")]) == 0
        shown = capsys.readouterr().out
        assert f"{f}: 2 frame(s), its frames 0..1, output rows 0..1" in shown
    assert main(["info", "out/scan_000002.zarr", "--row", "1"]) == 0
    assert f"row 1 (frame_id 1): {files[1]}, frame 1" in capsys.readouterr().out
    assert main(["info", "out/scan_000002.h5", "--row", "2"]) == 2
    assert "no row 2 (it holds 2 frame(s))" in capsys.readouterr().err


@pytest.fixture
def frame_folder(tmp_path, small_config):
    """A folder of one-frame TIFFs frame_1 .. frame_12 among files that are not frames: a
    hidden file, notes, MIDAS maps, the parameters' dark and flat, and radint outputs of an earlier run
    (NeXus .h5, Zarr store, caked.hdf, _lineout.bin, the map cache)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(1, 13):
        image = ring_image(small_config, amplitude=50 * k, dtype=np.uint16)
        tifffile.imwrite(folder / f"frame_{k}.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / ".hidden.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "dark.tif", np.zeros_like(image), photometric="minisblack")
    tifffile.imwrite(folder / "flat.tif", np.ones(image.shape, np.float32))
    (folder / "notes.txt").write_text("beamtime notes")
    (folder / "Map.bin").write_bytes(b"\0" * 64)
    params = tmp_path / "p.txt"
    params.write_text(
        small_config.midas_text() + f"Dark {folder / 'dark.tif'}\nFlatFile {folder / 'flat.tif'}\n"
    )
    assert main(["integrate", str(params), str(folder / "frame_1.tif"), "-o", str(folder), "-q",
                 "--format", "nexus,zarr,caked,bin"]) == 0  # fmt: skip
    return tmp_path, folder, params


def _names(out):
    return sorted(p.name for p in out.glob("*.h5"))


def test_a_folder_is_its_frame_files_in_natural_order(frame_folder, capsys, caplog):
    """A folder as DATA: its frame files in natural order (frame_2 before frame_10), without
    hidden files, other files, the parameters' dark or radint's own outputs; the log says how
    many; the provenance of each output names its file."""
    import logging

    from radint.io.inputs import collect_inputs, is_frame_file

    tmp_path, folder, params = frame_folder
    got = collect_inputs([str(folder)], exclude=[folder / "dark.tif", folder / "flat.tif"])
    assert got == [str(folder / f"frame_{k}.tif") for k in range(1, 13)]
    # Outputs are known by content, not name: written through h5py (2 frames) as well.
    one = read_nexus(folder / "frame_1.h5")
    write_nexus(Result.concatenate([one, one]), folder / "stack.h5")
    with h5py.File(folder / "scan.h5", "w") as f:
        f["exchange/data"] = np.zeros((1, 100, 120), np.uint16)
    assert not is_frame_file(folder / "stack.h5") and is_frame_file(folder / "scan.h5")
    (folder / "scan.h5").unlink()
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="radint"):
        rc = main(["integrate", str(params), str(folder), "-o", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    # several files end with the run in one line, as radint batch does
    assert "radint integrate: 12/12 file(s) ok, 12 frames in " in printed.out, printed.out
    # hidden: .hidden.tif, .radint-cache; other: notes, Map.bin and 5 outputs of earlier runs
    want = (
        f"{folder}: 12 frame file(s) (skipped 2 hidden, 2 dark/mask/flat, 7 not frames: radint "
        "outputs, MIDAS maps, other formats)"
    )
    assert want in caplog.messages
    assert _names(out) == sorted(f"frame_{k}.h5" for k in range(1, 13))
    from radint.io import read_provenance

    assert read_provenance(out / "frame_10.h5").files == [str(folder / "frame_10.tif")]
    # batch the same, across a process pool.
    rc = main(["batch", str(params), str(folder), "-o", str(tmp_path / "b"), "-q", "-nCPUs", "2"])
    assert rc == 0 and _names(tmp_path / "b") == _names(out)


def test_natural_order_and_empty_folder_error(tmp_path, capsys):
    from radint.io.inputs import collect_inputs, natural_key

    names = ["f_10.tif", "f_2.tif", "F_1.tif", "f_2b.tif", "f_100.tif"]
    assert sorted(names, key=natural_key) == ["F_1.tif", "f_2.tif", "f_2b.tif", "f_10.tif",
                                              "f_100.tif"]  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"x")
    (empty / "readme.txt").write_text("x")
    with pytest.raises(RadintError, match=r"empty: no frame files in this folder .*skipped 1 "
                       r"hidden, 1 not frames"):  # fmt: skip
        collect_inputs([str(empty)])
    eiger = tmp_path / "eiger"
    eiger.mkdir()
    for name in ("b_master.h5", "b_data_000001.h5", "b_data_000002.h5", "c_data_000001.h5"):
        with h5py.File(eiger / name, "w"):
            pass
    # The master reads its data files; a data file without its master is taken.
    assert collect_inputs([str(eiger)]) == [str(eiger / "b_master.h5"),
                                            str(eiger / "c_data_000001.h5")]  # fmt: skip
    params = tmp_path / "p.txt"
    params.write_text("NrPixelsY 20\nNrPixelsZ 20\nLsd 1e6\nBC 10 10\npx 200\nWavelength 0.2\n")
    for cmd in ("integrate", "batch"):
        assert main([cmd, str(params), str(empty), "-o", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert f"error: {empty}: no frame files in this folder" in err
        assert len(err.strip().splitlines()) == 1


def test_list_file_paths_comments_and_errors(frame_folder, capsys, monkeypatch):
    """@LIST: one path per line, '#' comment lines and blank lines skipped, relative paths from
    the list's folder, absolute ones as they are, a folder expanded; a missing file is an error
    naming the list file and line before anything is read."""
    from radint.io.inputs import collect_inputs

    tmp_path, folder, params = frame_folder
    lists = tmp_path / "lists"
    lists.mkdir()
    listing = lists / "run.txt"
    listing.write_text(
        "# frames of run 7\n\n"
        "../frames/frame_3.tif\n"
        f"  {folder / 'frame_11.tif'}  \n"
        "   # indented comment\n"
        "../frames/frame_1.tif\n"
    )
    monkeypatch.chdir(tmp_path / "frames")  # relative to the list, not to the working folder
    want = [str(lists / "../frames/frame_3.tif"), str(folder / "frame_11.tif"),
            str(lists / "../frames/frame_1.tif")]  # fmt: skip
    assert collect_inputs([f"@{listing}"]) == want
    out = tmp_path / "from_list"
    assert main(["integrate", str(params), f"@{listing}", "RMax", "40", "-o", str(out), "-q"]) == 0
    assert _names(out) == ["frame_1.h5", "frame_11.h5", "frame_3.h5"]
    with h5py.File(out / "frame_3.h5") as f:
        assert f["entry/azint1d/data/I"].shape[1] < 60  # RMax 40 after the list: an override
    listing.write_text("../frames/frame_2.tif\n# next one is gone\n../frames/frame_99.tif\n")
    for cmd in ("integrate", "batch"):
        rc = main([cmd, str(params), f"@{listing}", "-o", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert rc == 2 and f"{listing}:3: ../frames/frame_99.tif: no such file" in err
    assert not (tmp_path / "x").exists()  # refused before anything was written
    (lists / "nothing.txt").write_text("# only a comment\n")
    assert main(["batch", str(params), f"@{lists / 'nothing.txt'}", "-o", str(tmp_path / "x")]) == 2
    assert "lists no files" in capsys.readouterr().err
    assert main(["batch", str(params), "@missing.txt", "-o", str(tmp_path / "x")]) == 2
    assert "@missing.txt: cannot read the list file" in capsys.readouterr().err


def test_quoted_patterns_expand_when_no_file_has_that_name(frame_folder, capsys):
    """'frames/*.tif' is expanded by radint (natural order, filtered like a folder's files; the
    parameters' dark left out); a pattern matching nothing is an error naming it; a file whose
    literal name looks like a pattern is taken as it is."""
    from radint.io.inputs import collect_inputs

    tmp_path, folder, params = frame_folder
    got = collect_inputs([str(folder / "frame_1?.tif")])
    assert got == [str(folder / f"frame_{k}.tif") for k in (10, 11, 12)]
    with pytest.raises(RadintError, match=r"\*\.h5: 1 match\(es\), none a frame file"):
        collect_inputs([str(folder / "*.h5")])  # only the earlier run's output
    out = tmp_path / "pat"
    assert main(["batch", str(params), str(folder / "*"), "-o", str(out), "-q"]) == 0
    assert len(_names(out)) == 12  # not the dark, the hidden file, Map.bin or the outputs
    odd = tmp_path / "odd[1].tif"
    odd.write_bytes((folder / "frame_1.tif").read_bytes())
    assert collect_inputs([str(odd)]) == [str(odd)]
    for cmd in ("integrate", "batch"):
        assert main([cmd, str(params), str(tmp_path / "none_*.tif"), "-o", str(out)]) == 2
        assert f"{tmp_path / 'none_*.tif'}: nothing matches" in capsys.readouterr().err


def test_expanded_inputs_keep_the_up_front_checks(frame_folder, capsys):
    """Folders and patterns go through the same checks as names: outputs that would collide
    (frame_1.tif in two folders), an input an output would overwrite, an unwritable -o;
    raw .bin files are taken from a folder only with --raw-dtype."""
    from radint.io.inputs import collect_inputs

    tmp_path, folder, params = frame_folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "frame_1.tif").write_bytes((folder / "frame_1.tif").read_bytes())
    rc = main(["batch", str(params), str(folder), str(other), "-o", str(tmp_path / "c")])
    assert rc == 2 and "would be written for both" in capsys.readouterr().err
    h5in = tmp_path / "h5in"
    h5in.mkdir()
    with h5py.File(h5in / "scan.h5", "w") as f:
        f["exchange/data"] = np.zeros((1, 100, 120), np.uint16)
    rc = main(["integrate", str(params), str(h5in), "-o", str(h5in)])
    assert rc == 2 and "would overwrite the input" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main(["integrate", str(params), str(folder), "-o", str(blocker)])
    assert rc == 2 and "exists and is not a directory" in capsys.readouterr().err
    raw = tmp_path / "raw"
    raw.mkdir()
    np.zeros((100, 120), np.uint16).tofile(raw / "f_1.bin")
    with pytest.raises(RadintError, match="no frame files"):
        collect_inputs([str(raw)])
    assert collect_inputs([str(raw)], raw_dtype="uint16") == [str(raw / "f_1.bin")]


def test_pattern_leaves_out_eiger_data_files_beside_their_master(tmp_path, small_config):
    """'run/*.h5' matches an Eiger master and its data files: the master reads them, so the
    data files are left out as in a folder (they were integrated again, or failed: 2 of 3
    files failed, exit code 1)."""
    from radint.io.inputs import collect_inputs

    run = tmp_path / "run"
    run.mkdir()
    frames = np.stack([ring_image(small_config, dtype=np.uint16)] * 2)
    for j in (1, 2):
        with h5py.File(run / f"scan_data_{j:06d}.h5", "w") as f:
            f["entry/data/data"] = frames
    with h5py.File(run / "scan_master.h5", "w") as f:
        for j in (1, 2):
            f[f"entry/data/data_{j:06d}"] = h5py.ExternalLink(
                f"scan_data_{j:06d}.h5", "entry/data/data"
            )
    with h5py.File(run / "other_data_000001.h5", "w") as f:  # no master: taken
        f["entry/data/data"] = frames
    pattern = str(run / "*.h5")
    assert collect_inputs([pattern]) == [str(run / "other_data_000001.h5"),
                                         str(run / "scan_master.h5")]  # fmt: skip
    assert collect_inputs([str(run / "scan_*")]) == [str(run / "scan_master.h5")]
    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    out = tmp_path / "out"
    assert main(["integrate", str(params), str(run / "scan*.h5"), "-o", str(out), "-q"]) == 0
    assert _names(out) == ["scan_master.h5"]
    assert read_nexus(out / "scan_master.h5").n_frames == 4


def test_a_reused_dask_worker_takes_new_zip_parameters(tmp_path, small_config):
    """Configs equal but for where keys were set (a SkipFrame line added) differ in
    zip_parameters(): a long-lived Dask worker rebuilds its integrator for them (it kept the
    old one and read the zip's SkipFrame)."""
    from radint.batch import _WORKER
    from radint.batch.distributed import _task

    frames = np.stack([ring_image(small_config, amplitude=300, dtype=np.uint16)] * 4)
    _midas_zip(tmp_path / "a.analysis.MIDAS.zip", frames, frames[:1] * 0, skip=1)
    plain = IntegrationConfig.from_text(small_config.midas_text(), "p.txt")
    skip0 = IntegrationConfig.from_text(small_config.midas_text() + "SkipFrame 0\n", "p.txt")
    assert plain == skip0 and plain.zip_parameters() != skip0.zip_parameters()
    saved = dict(_WORKER)
    try:
        _WORKER.clear()
        counts = []
        for k, cfg in enumerate((plain, skip0)):
            opts = {"out_dir": str(tmp_path / f"w{k}"), "formats": ("nexus",), "dataset": None,
                    "dark": None, "skip_existing": False, "compression": None, "raw_dtype": None}  # fmt: skip
            o = _task(cfg, str(tmp_path / "cache"), 1, "cpu", tmp_path / "a.analysis.MIDAS.zip",
                      None, opts, {"compat": None, "midas_map": None})  # fmt: skip
            assert o.ok, o.error
            counts.append(o.n_frames)
        assert counts == [3, 4]
    finally:
        _WORKER.clear()
        _WORKER.update(saved)


def test_a_given_dark_beats_a_zips_own_and_workers_forget_an_old_dark(tmp_path, small_config):
    """The integrator's own dark (Integrator(dark=), as --dark makes it) is subtracted from a
    MIDAS zip instead of the zip's exchange/dark; a Dask worker reused by a later run keeps its
    integrator only while the dark is the same (a run without --dark subtracts nothing)."""
    from radint import Integrator
    from radint.batch import _WORKER, process_file, process_files
    from radint.batch.distributed import _task

    rng = np.random.default_rng(4)
    frames = np.stack([ring_image(small_config, amplitude=300, dtype=np.uint16) + 100] * 2)
    zip_dark = rng.integers(80, 120, size=(2, *frames.shape[1:])).astype(np.uint16)
    _midas_zip(tmp_path / "a.analysis.MIDAS.zip", frames, zip_dark, skip=0)
    given = np.full(frames.shape[1:], 7.0)
    plain = Integrator(small_config, n_threads=1)
    want_given = plain.integrate_stack(frames, dark=given).cake
    o = process_file(tmp_path / "a.analysis.MIDAS.zip", str(tmp_path / "o1"), ["nexus"],
                     integrator=Integrator(small_config, n_threads=1, dark=given))  # fmt: skip
    assert o.ok, o.error
    with h5py.File(tmp_path / "o1" / "a.h5") as f:
        np.testing.assert_allclose(f["entry/azint2d/data/I"][()], want_given, rtol=1e-12)

    tifffile.imwrite(tmp_path / "t.tif", frames)
    saved = dict(_WORKER)
    try:
        _WORKER.clear()
        for k, dark in enumerate((given, None, given + 1)):
            opts = {"out_dir": str(tmp_path / f"w{k}"), "formats": ("nexus",), "dataset": None,
                    "dark": dark, "skip_existing": False, "compression": None, "raw_dtype": None}  # fmt: skip
            rules = {"compat": None, "midas_map": None}
            o = _task(small_config, str(tmp_path / "cache"), 1, "cpu", tmp_path / "t.tif", None,
                      opts, rules)  # fmt: skip
            # Another run's task swapping the worker's integrator meanwhile does not reach this
            # one's next task: it is checked, and rebuilt, before every task.
            _WORKER["integrator"] = Integrator(small_config, n_threads=1, dark=given * 3)
            assert o.ok, o.error
            want = plain.integrate_stack(frames, dark=dark).cake
            with h5py.File(tmp_path / f"w{k}" / "t.h5") as f:
                np.testing.assert_allclose(f["entry/azint2d/data/I"][()], want, rtol=1e-12)
        _WORKER.clear()  # no worker integrator and none given: a clear error
        with pytest.raises(RadintError, match="integrator="):
            list(process_files([tmp_path / "t.tif"], str(tmp_path / "none"), ["nexus"]))
    finally:
        _WORKER.clear()
        _WORKER.update(saved)


def test_a_worker_killed_fails_its_files_not_the_batch(tmp_path, small_config):
    """A pool worker killed (SIGKILL, the OOM killer) while it integrates: its files fail with
    that reason, the other files' results stand, no temporary output is left and the run ends
    with a summary and exit code 1, not a BrokenProcessPool traceback."""
    import os
    import subprocess
    import sys

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    _h5_frames(tmp_path / "a.h5", np.stack([ring_image(small_config, dtype=np.uint16)] * 4))
    os.mkfifo(tmp_path / "b.tif")  # a worker that reads it is killed
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "batch", str(params), str(tmp_path / "a.h5"),
         str(tmp_path / "b.tif"), "-o", str(out), "-nCPUs", "2", "-nCPUsLocal", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    stdout, stderr, kills = _kill_workers_reading(proc, tmp_path / "b.tif", 120)
    assert proc.returncode == 1, stderr
    assert kills == 3, stderr  # in its run, in a run of its own, alone on one process
    assert "Traceback" not in stderr and "worker process integrating it died" in stderr
    assert "also when it integrated this file alone" in stderr
    assert "__main__" not in stderr  # the radint command is not a script to guard
    assert "1/2 file(s) ok" in stdout
    assert sorted(p.name for p in out.iterdir() if p.name != ".radint-cache") == ["a.h5"]


def test_files_of_a_worker_killed_once_are_retried_not_failed(tmp_path, small_config):
    """A pool worker SIGKILLed once mid-batch (the OOM killer under memory pressure) broke the
    pool: every file not yet reported failed. The file it was on is retried and the rest go on
    in a new pool: every file done, each once, exit code 0."""
    import os
    import subprocess
    import sys

    import h5py

    params, inputs = _h5_inputs(tmp_path, small_config, 16)
    frames = np.stack([ring_image(small_config, dtype=np.uint16)] * 2)
    os.mkfifo(tmp_path / "m.tif")  # its reader is killed once, then it is a TIFF
    tifffile.imwrite(tmp_path / "real.tif", frames[0])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "batch", str(params), *inputs[:8],
         str(tmp_path / "m.tif"), *inputs[8:], "-o", str(out), "-nCPUs", "2",
         "-nCPUsLocal", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout, stderr, kills = _kill_workers_reading(
        proc, tmp_path / "m.tif", 120, tmp_path / "real.tif"
    )
    assert kills == 1 and proc.returncode == 0, stderr
    assert "17/17 file(s) ok" in stdout, stdout
    retried = [line for line in stderr.splitlines() if "retrying" in line]
    assert len(retried) == 1 and "worker process died" in retried[0], stderr
    assert "m.tif" in retried[0] and "alone" not in retried[0], stderr
    assert stderr.count("PolarizationFraction") == 1, stderr  # not once more per worker
    made = sorted(p.name for p in out.iterdir() if p.name != ".radint-cache")
    assert made == sorted([f"a{j:02d}.h5" for j in range(16)] + ["m.h5"])
    assert not list((out / ".radint-cache").glob("in-flight-*"))
    for name in made:
        with h5py.File(out / name) as f:
            assert f["entry/azint2d/data/I"].shape[0] == (1 if name == "m.h5" else 2)


def test_a_worker_killed_as_it_starts_costs_a_new_pool_not_the_batch(tmp_path, small_config):
    """Review: one pool worker killed as it started (loading the map, where the OOM killer
    strikes when all of them load at once) failed every file as "died as they started, before
    any file", or ended the batch with a BrokenProcessPool traceback when it died while the
    runs were being queued. The files go on in a new pool: all done, exit code 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    params, inputs = _h5_inputs(tmp_path, small_config, 8)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "batch", str(params), *inputs, "-o", str(out),
         "-nCPUs", "2", "-nCPUsLocal", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = _pool_workers(proc.pid)
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                break
            time.sleep(0.002)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "8/8 file(s) ok" in stdout, stdout + stderr
    assert "outside any file" in stderr, stderr


def _pool_workers(parent: int) -> list[int]:
    """The spawned pool worker processes of ``parent``."""
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                continue
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_a_script_without_a_main_guard_is_told_why_its_workers_died(tmp_path, small_config):
    """Spawned pool workers import the calling script; one that starts a multi-process batch
    at its top level starts it again inside them, and they die before any file. Each file's
    failure then says what the script needs."""
    import subprocess
    import sys

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    files = [tmp_path / f"a{j}.h5" for j in range(2)]
    for f in files:
        _h5_frames(f, np.stack([ring_image(small_config, dtype=np.uint16)] * 2))
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from radint import IntegrationConfig\n"
        "from radint.batch import run_batch\n"
        f"config = IntegrationConfig.from_midas_params({str(params)!r})\n"
        f"for o in run_batch(config, {[str(f) for f in files]!r}, {str(tmp_path / 'out')!r},\n"
        "                   n_procs=2, n_threads=1):\n"
        "    print('OUTCOME', o.ok, o.error)\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=180, cwd=tmp_path)  # fmt: skip
    outcomes = [line for line in run.stdout.splitlines() if line.startswith("OUTCOME")]
    assert len(outcomes) == 2, run.stdout + run.stderr
    for line in outcomes:
        assert line.startswith("OUTCOME False") and "worker process" in line, line
        assert 'if __name__ == "__main__":' in line, line


def test_files_a_killed_worker_completed_are_reported_done(tmp_path, small_config):
    """A worker reports a run of files at its end: killed mid-run, the files of that run it had
    completed (outputs whole, written by this batch) are reported done with their frames, only
    the file it was on fails (all of its run failed before)."""
    import os
    import subprocess
    import sys

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    frames = np.stack([ring_image(small_config, dtype=np.uint16)] * 8)
    for j in range(15):  # 8 frames fill a stack: a14 is integrated before z is read
        _h5_frames(tmp_path / f"a{j:02d}.h5", frames[: 8 if j == 14 else 2])
    os.mkfifo(tmp_path / "z.tif")  # 16 files, -nCPUs 2: runs of 2; (a14, z) is the last
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "batch", str(params),
         *[str(tmp_path / f"a{j:02d}.h5") for j in range(15)], str(tmp_path / "z.tif"),
         "-o", str(out), "-nCPUs", "2", "-nCPUsLocal", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout, stderr, _ = _kill_workers_reading(proc, tmp_path / "z.tif", 120)
    assert proc.returncode == 1, stderr
    assert "15/16 file(s) ok" in stdout, stdout
    assert "z.tif: the worker process integrating it died" in stderr
    assert "a14.h5: the worker process" not in stderr
    import h5py

    with h5py.File(out / "a14.h5") as f:
        assert f["entry/azint2d/data/I"].shape[0] == 8
    assert "a14.h5: 8 frame(s)" in stdout


def test_a_file_failed_by_a_dead_worker_leaves_none_of_its_outputs(tmp_path):
    """Audit (worker SIGKILLed mid-file): a file reported FAILED kept the outputs its worker had
    already put in place (scan.caked.hdf, .zarr.zip, _lineout.xy without the .h5), which a
    script globbing *.caked.hdf would take. Outputs of an earlier run stay."""
    import os
    import time

    from radint.batch import _salvaged

    out = tmp_path / "out"
    out.mkdir()
    since = time.time() - 5
    for name in ("scan.caked.hdf", "scan_lineout.xy"):
        (out / name).write_bytes(b"x")
    (out / "old.caked.hdf").write_bytes(b"x")
    os.utime(out / "old.caked.hdf", (since - 100, since - 100))
    for path in ("scan.tif", "old.tif"):
        assert _salvaged(path, None, out, ["nexus", "caked", "xy"], since) is None
    assert sorted(p.name for p in out.iterdir()) == ["old.caked.hdf"]


def _kill_workers_reading(
    proc: subprocess.Popen[str], fifo: Path, timeout: float, then: Path | None = None
) -> tuple[str, str, int]:
    """SIGKILL every pool worker of the batch process ``proc`` that opens ``fifo`` to read it,
    as a file that crashes its reader would, until ``proc`` ends (or ``timeout`` s); returns
    the batch's (stdout, stderr) and how many workers were killed. With ``then``, a file, the
    first kill is the only one: ``then`` replaces the fifo (a death that does not recur)."""
    import errno
    import os
    import signal
    import threading
    import time

    killed: set[int] = set()
    stop = threading.Event()

    def running() -> bool:
        return not stop.is_set() and proc.poll() is None

    def killer() -> None:
        while running() and not (then and killed):
            try:  # succeeds once a reader has the fifo open (or is blocked opening it)
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                assert e.errno == errno.ENXIO, e
                time.sleep(0.02)
                continue
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and running():
                    # Only the batch's own pool workers (the killed may linger): a process
                    # this one forks holds this thread's fd on the fifo until its exec (the
                    # next test's `radint batch` Popen, say), and was SIGKILLed as a reader.
                    readers = (_pids_with_open(fifo) & set(_pool_workers(proc.pid))) - killed
                    if readers:
                        for pid in readers:
                            os.kill(pid, signal.SIGKILL)
                        killed.update(readers)
                        if then:
                            os.replace(then, fifo)
                        break
                    time.sleep(0.01)
            finally:
                os.close(fd)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        # Stopped and joined here, never left running past the test: it outlived
        # `thread.join(5)` by up to 10 s, holding its fd on the fifo (see above).
        stop.set()
        thread.join()
        if proc.poll() is None:
            proc.kill()
    return stdout, stderr, len(killed)


def _pids_with_open(path: Path) -> set[int]:
    """Processes other than this one that have ``path`` open (a scan of /proc, where
    processes come and go)."""
    import os

    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if int(pid) != os.getpid() and any(
                os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in fds
            ):
                pids.add(int(pid))
        except OSError:
            continue
    return pids


def _kill_pool_workers_when(
    proc: subprocess.Popen[str], ready: Path, timeout: float
) -> tuple[str, str]:
    """Once ``ready`` exists (or after ``timeout`` s), SIGKILL the pool workers of the batch
    process ``proc`` (as the OOM killer would); returns the batch's (stdout, stderr)."""
    import os
    import signal
    import time

    def parent(stat: Path) -> int:
        try:
            return int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return -1

    def is_worker(pid_dir: Path) -> bool:
        try:
            return b"spawn_main" in (pid_dir / "cmdline").read_bytes()
        except OSError:
            return False

    try:
        deadline = time.monotonic() + timeout
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        workers = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                   if parent(p) == proc.pid and is_worker(p.parent)]  # fmt: skip
        assert workers
        for k in workers:
            os.kill(k, signal.SIGKILL)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stopping_worker_still_exits_on_sigterm_once_idle(monkeypatch):
    """A second SIGTERM is ignored only while the worker is still cleaning up (busy); an idle
    worker that was told to stop exits on the next one (it stayed, orphaned, until SIGKILL),
    at once: a SystemExit raised in the pool's own code was caught there and the worker,
    deaf to SIGTERM after it, hung the pool (review: 1 batch in ~20 after a worker death)."""
    import signal

    from radint import batch

    class Exited(Exception):
        pass

    def exit_now(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(batch, "_leave_now", exit_now)
    saved = dict(batch._WORKER)
    try:
        batch._WORKER.update(stopping=True, busy=True)
        batch._raise_interrupt(signal.SIGTERM, None)  # ignored: the clean-up goes on
        batch._WORKER["busy"] = False
        with pytest.raises(Exited):
            batch._raise_interrupt(signal.SIGTERM, None)
        batch._WORKER.update(stopping=False, busy=False)  # idle, first signal: leaves too
        with pytest.raises(Exited):
            batch._raise_interrupt(signal.SIGTERM, None)
        # Leaving (unlinking its semaphores): a second signal (Ctrl-C reaches the whole
        # group, then the parent's SIGTERM) must not cut that short.
        batch._WORKER.update(leaving=True)
        assert batch._raise_interrupt(signal.SIGTERM, None) is None
    finally:
        batch._WORKER.clear()
        batch._WORKER.update(saved)


def test_pool_workers_keep_an_ignored_sigint(monkeypatch):
    """A batch started with SIGINT ignored (`cmd &` in a script) must not have its workers
    stopped by Ctrl-C; otherwise they take SIGINT as SIGTERM."""
    import signal

    from radint import batch

    monkeypatch.setattr(batch, "_init_worker", lambda *a: None)
    monkeypatch.setattr(batch, "_watch_parent", lambda parent: None)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        batch._init_pool_worker(None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is batch._raise_interrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
        batch._init_pool_worker(None)
        assert signal.getsignal(signal.SIGINT) is batch._raise_interrupt
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def test_dask_without_distributed_is_refused_before_the_map(tmp_path, small_config, monkeypatch):
    """--dask without dask.distributed ended in a traceback after the map was built; now a
    BackendUnavailableError naming the extra, with nothing written."""
    import sys

    from radint.exceptions import BackendUnavailableError

    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    tifffile.imwrite(tmp_path / "a.tif", np.zeros(small_config.shape, np.uint16))
    with pytest.raises(BackendUnavailableError, match=r"radint\[dask\]"):
        run_batch(small_config, [tmp_path / "a.tif"], tmp_path / "out", dask="local:1")
    assert not (tmp_path / "out").exists()


def test_pool_workers_exit_when_the_batch_is_killed(tmp_path, small_config):
    """Regression: SIGKILL of `radint batch -nCPUs 2` left its workers running as orphans
    (parent PID 1): they went on writing outputs, then blocked forever. Each worker watches
    its parent and stops (unfinished outputs removed) within a few seconds of its death."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    _h5_frames(tmp_path / "a.h5", np.stack([ring_image(small_config, dtype=np.uint16)] * 4))
    os.mkfifo(tmp_path / "b.tif")  # its worker waits here, mid-file, when the batch is killed
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "batch", str(params), str(tmp_path / "a.h5"),
         str(tmp_path / "b.tif"), "-o", str(out), "-nCPUs", "2", "-nCPUsLocal", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def alive(pid: int) -> bool:  # a zombie (not reaped by PID 1 in a container) is gone
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (out / "a.h5").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "a.h5").exists()
        time.sleep(0.5)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmd = (stat.parent / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == proc.pid and b"spawn_main" in cmd:
                workers.append(int(stat.parent.name))
        assert len(workers) == 2
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "orphaned workers still running"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)
    assert not list(out.glob(".*.partial")), "an unfinished output was left"


def test_rerun_removes_the_partials_a_killed_run_left(tmp_path, small_config):
    """Regression: after a SIGKILL the hidden temporary outputs stayed for ever; a rerun or a
    --skip-existing resume into the folder removes those of its own outputs whose writer is
    gone, and leaves others alone."""
    import os
    import time

    from radint.io.atomic import DEAD_WRITER_QUIET_S, _host_tag

    for n in "ab":
        tifffile.imwrite(tmp_path / f"{n}.tif", ring_image(small_config, dtype=np.uint16))
    out = tmp_path / "out"
    run_batch(small_config, [tmp_path / "a.tif"], out)  # a.h5 done: skipped below
    dead = "99999"  # above this machine's pid_max: no process has it
    tag = f"0123456789-{_host_tag()}"
    # .b.cake: the cakes a killed run kept for b's caked/gsas outputs (review: never removed).
    stale = [f".a.h5.{tag}-{dead}.partial", f".b.h5.{tag}-{dead}.partial",
             f".b.cake.{tag}-{dead}.partial"]  # fmt: skip
    kept = [f".b.h5.{tag}-{os.getpid()}.partial", f".c.h5.{tag}-{dead}.partial"]
    quiet = time.time() - DEAD_WRITER_QUIET_S - 10  # a dead writer's file, unchanged a while
    for name in stale + kept:
        (out / name).write_bytes(b"\0" * 1000)
        os.utime(out / name, (quiet, quiet))
    recent = f".b.h5.{tag}-{int(dead) - 1}.partial"  # a writer this pid namespace cannot see
    (out / recent).write_bytes(b"\0")
    kept.append(recent)
    outcomes = run_batch(small_config, [tmp_path / "a.tif", tmp_path / "b.tif"], out,
                         skip_existing=True)  # fmt: skip
    assert [o.skipped for o in outcomes] == [True, False] and all(o.ok for o in outcomes)
    assert sorted(p.name for p in out.glob(".*.partial")) == sorted(kept)


def test_a_setup_with_no_pixel_is_refused_before_worker_processes_start(tmp_path, small_config):
    """Review: with -nCPUs 2 the refusal came from each worker's initializer, and every file
    then failed as "the worker process integrating it died (killed ... or crashed ...)"."""
    from radint.exceptions import InvalidInputError

    files = [tmp_path / f"{name}.tif" for name in "ab"]
    for f in files:
        tifffile.imwrite(f, ring_image(small_config, dtype=np.uint16))
    off = small_config.replace(r_min_px=5000.0, r_max_px=6000.0)
    with pytest.raises(InvalidInputError, match="no detector pixel reaches a bin"):
        run_batch(off, files, tmp_path / "out", n_procs=2, n_threads=1)


def test_skip_existing_skips_outputs_of_an_integrator_given_corrections(tmp_path, small_config,
                                                                       caplog):  # fmt: skip
    """Review: results store the corrections an Integrator was given as arguments; the skip
    compared the files with its parameter-file configuration and redid every file ("made
    otherwise: solid_angle_correction True -> False")."""
    from radint import Integrator
    from radint.batch import process_files

    tifffile.imwrite(tmp_path / "a.tif", ring_image(small_config, dtype=np.uint16))
    integ = Integrator(small_config, solid_angle="exact", pixel_weights="fraction", n_threads=1)
    runs = [list(process_files([str(tmp_path / "a.tif")], tmp_path / "out", formats=["nexus"],
                               integrator=integ, skip_existing=True)) for _ in range(2)]  # fmt: skip
    assert [o.skipped for o in runs[0] + runs[1]] == [False, True]
    assert "made otherwise" not in caplog.text


def test_skip_existing_redoes_outputs_made_with_other_parameters(tmp_path, small_config, caplog):
    """Regression: --skip-existing kept an output made with RBinSize 1 beside new ones made
    with RBinSize 2, a mixed result set without a word. The configuration each NeXus/Zarr
    output stores is compared: a file made otherwise is integrated again (as a run without
    --skip-existing would), with a warning naming what differs; the same parameters skip."""
    for n in "ab":
        tifffile.imwrite(tmp_path / f"{n}.tif", ring_image(small_config, dtype=np.uint16))
    files = [tmp_path / "a.tif", tmp_path / "b.tif"]
    out = tmp_path / "out"
    run_batch(small_config, files[:1], out, formats=("nexus", "xy", "bin"))
    n_r = read_nexus(out / "a.h5").lineout.shape[-1]
    again = run_batch(small_config, files, out, formats=("nexus", "xy"), skip_existing=True)
    assert [o.skipped for o in again] == [True, False]
    wider = small_config.replace(r_bin_px=small_config.r_bin_px * 2)
    with caplog.at_level(logging.WARNING, logger="radint"):
        redone = run_batch(wider, files, out, formats=("nexus", "xy"), skip_existing=True)
    assert [o.skipped for o in redone] == [False, False] and all(o.ok for o in redone)
    warned = [r.getMessage() for r in caplog.records if "integrated again" in r.getMessage()]
    assert len(warned) == 2 and all("r_bin_px" in w for w in warned), warned
    # The first run's _lineout.bin of a.tif is not rewritten: said, not silently kept.
    stale = [r.getMessage() for r in caplog.records if "from the earlier run" in r.getMessage()]
    assert len(stale) == 1 and "a_lineout.bin" in stale[0], stale
    for n in "ab":
        assert read_nexus(out / f"{n}.h5").lineout.shape[-1] < n_r
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radint"):
        done = run_batch(wider, files, out, formats=("nexus", "xy"), skip_existing=True)
    assert [o.skipped for o in done] == [True, True] and not caplog.records


def test_skip_existing_keeps_outputs_of_a_radint_that_lacked_a_newer_field(small_config):
    """Regression (review): outputs written before the ``Omega`` key existed were all redone
    ("omega_deg None -> 0.0"). A field the stored configuration lacks counts as its default;
    ``Omega`` (only the stream's GSAS-II zip uses it) is not compared at all."""
    from radint.io.nexus import configuration_changes

    older = small_config.to_dict()
    del older["omega_deg"], older["omega_step_deg"]
    assert configuration_changes(older, small_config) == []
    assert configuration_changes(older, small_config.replace(omega_deg=30.0)) == []
    stepped = small_config.replace(omega_step_deg=0.25)
    assert configuration_changes(older, stepped) == ["omega_step_deg 0.0 -> 0.25"]


def test_skip_existing_compares_mask_and_dark_files_by_name_and_contents(tmp_path, small_config):
    """A run folder moved elsewhere (the mask's absolute path changed, same file) still skips;
    a mask of the same name with other contents, both present, redoes."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    tifffile.imwrite(run / "a.tif", ring_image(small_config, dtype=np.uint16))
    mask = np.zeros(small_config.shape, np.uint8)
    tifffile.imwrite(run / "mask.tif", mask)
    out = tmp_path / "out"
    run_batch(small_config.replace(mask_file=str(run / "mask.tif")), [run / "a.tif"], out)
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    config = small_config.replace(mask_file=str(moved / "mask.tif"))
    again = run_batch(config, [moved / "a.tif"], out, skip_existing=True)
    assert [o.skipped for o in again] == [True]
    other = tmp_path / "other"
    other.mkdir()
    mask[0, :5] = 1
    tifffile.imwrite(other / "mask.tif", mask)
    tifffile.imwrite(moved / "mask.tif", np.zeros_like(mask))  # the stored path exists again
    shutil.move(moved, run)  # the first run's paths are back
    redo = run_batch(small_config.replace(mask_file=str(other / "mask.tif")), [run / "a.tif"],
                     out, skip_existing=True)  # fmt: skip
    assert [o.skipped for o in redo] == [False]


def test_skip_existing_redoes_outputs_whose_mask_or_dark_was_rewritten(
    tmp_path, small_config, caplog
):
    """Regression: a mask or dark rewritten under its old path has the same name, so
    --skip-existing kept outputs made with the old one. The outputs store the digests of the
    files their configuration names; a rewritten file redoes, a conversion keeps them."""
    from radint.cli import main

    tifffile.imwrite(tmp_path / "a.tif", ring_image(small_config, dtype=np.uint16))
    mask, dark = tmp_path / "mask.tif", tmp_path / "dark.tif"
    tifffile.imwrite(mask, np.zeros(small_config.shape, np.uint8))
    tifffile.imwrite(dark, np.zeros(small_config.shape, np.uint16))
    params = tmp_path / "p.txt"
    params.write_text(small_config.replace(mask_file=str(mask)).midas_text())
    out = tmp_path / "out"
    args = ["batch", str(params), str(tmp_path / "a.tif"), "-o", str(out), "--dark", str(dark)]
    assert main([*args, "-q"]) == 0
    first = read_nexus(out / "a.h5")
    assert set(json.loads(first.metadata["file_digests"])) == {"mask_file", "dark_file"}
    assert main([*args, "-q", "--skip-existing"]) == 0
    assert read_nexus(out / "a.h5").metadata["reduction_date"] == first.metadata["reduction_date"]
    for path, value in ((mask, 1), (dark, 7)):
        stored = tifffile.imread(path)
        stored[:4, :4] = value
        tifffile.imwrite(path, stored)
        with caplog.at_level(logging.WARNING, logger="radint"):
            assert main([*args, "-q", "--skip-existing"]) == 0
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert "integrated again" in warned and f"{path.name}' has other contents" in warned
        caplog.clear()
        assert main([*args, "-q", "--skip-existing"]) == 0  # made with these files: kept
        assert not caplog.records


def test_skip_existing_redoes_outputs_made_with_other_rules_or_map(tmp_path, small_config, caplog):
    """Regression (review): --skip-existing kept outputs made with --compat midas-cpu for a run
    without it (other lineout rule, NaN bins: up to 3.4 % apart), and those made with a MIDAS
    Map.bin (--midas-map) for one with radint's map. The outputs store the rules and map."""
    from radint import DetectorMap

    tifffile.imwrite(tmp_path / "a.tif", ring_image(small_config, dtype=np.uint16))
    files, out = [tmp_path / "a.tif"], tmp_path / "out"
    maps = tmp_path / "maps"
    DetectorMap.build(small_config).save_midas(maps, small_config)
    run_batch(small_config, files, out, compat="midas-cpu")
    assert read_nexus(out / "a.h5").metadata["rules"] == "midas-cpu rules, radint map"
    for kw, label in (({}, "radint rules, radint map"),
                      ({"midas_map": str(maps)}, "radint rules, MIDAS Map.bin sha256:")):  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="radint"):
            (o,) = run_batch(small_config, files, out, skip_existing=True, **kw)
        assert not o.skipped and f"-> {label}" in caplog.text
        (again,) = run_batch(small_config, files, out, skip_existing=True, **kw)
        assert again.skipped
    # Regression (review): another Map.bin folder skipped (the rules named no map contents).
    # The same map moved elsewhere still skips; one built for another tilt redoes.
    moved = tmp_path / "moved"
    maps.rename(moved)
    (kept,) = run_batch(small_config, files, out, skip_existing=True, midas_map=str(moved))
    assert kept.skipped
    other = tmp_path / "other"
    other_config = small_config.replace(ty_deg=small_config.ty_deg + 0.3)
    DetectorMap.build(other_config).save_midas(other, other_config)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radint"):
        (o,) = run_batch(small_config, files, out, skip_existing=True, midas_map=str(other))
    assert not o.skipped and "MIDAS Map.bin sha256:" in caplog.text


def test_interrupted_pool_summary_counts_the_files_it_finished(tmp_path, small_config):
    """Regression: an interrupted -nCPUs 2 batch printed "31/80 file(s) ok, 60 frames (of 20
    file(s))" (3 frames per file): a pool reports a run of files only when all of it is done,
    and the frames of files finished but unreported were not counted. Files and frames now
    describe the same files, those on disk."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    data = tmp_path / "in"
    data.mkdir()
    # 8 frames: a full stack, so f_01's frames are integrated without waiting for f_02's
    frames = np.stack([ring_image(small_config, dtype=np.uint16)] * 8)
    names = [f"f_{k:02d}.tif" for k in range(24)]  # runs of 3 files per task with 2 processes
    for name in names:
        if name == "f_02.tif":
            os.mkfifo(data / name)  # ends the first run: it never reports f_00, f_01
        else:
            tifffile.imwrite(data / name, frames, photometric="minisblack")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "batch", str(params), *[str(data / n) for n in names],
         "-o", str(out), "-nCPUs", "2", "-nCPUsLocal", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while len(list(out.glob("f_*.h5"))) < 23 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(list(out.glob("f_*.h5"))) == 23
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    m = re.search(r"(\d+)/24 file\(s\) ok, (\d+) frames( \(of \d+ file\(s\)\))? in", stdout)
    assert m, stdout
    assert (int(m[1]), int(m[2]), m[3]) == (23, 23 * 8, None), stdout
    assert "interrupted; 1 not done" in stdout


def test_interrupted_integrate_prints_a_summary_and_resumes_with_skip_existing(
    tmp_path, small_config
):
    """Ctrl-C during `radint integrate many/` exited 130 with nothing half-written but no
    summary: the files done were not logged. It now prints batch's summary and, as the README
    says, resumes with --skip-existing (which integrate did not have)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    _h5_frames(tmp_path / "a.h5", np.stack([ring_image(small_config, dtype=np.uint16)] * 8))
    os.mkfifo(tmp_path / "b.tif")  # its reader waits: the run is stopped while on it
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "radint.cli", "integrate", str(params), str(tmp_path / "a.h5"),
            str(tmp_path / "b.tif"), "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)  # fmt: skip
    try:
        deadline = time.monotonic() + 180  # a loaded CI machine: slow to start
        while not (out / "a.h5").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "a.h5").exists()
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "a.h5" in stdout
    assert "radint integrate: 1/2 file(s) ok, 8 frames in" in stdout, stdout
    assert "interrupted; 1 not done: run again with --skip-existing" in stdout
    assert "rerun with --skip-existing to resume" in stderr
    assert sorted(p.name for p in out.iterdir() if p.name != ".radint-cache") == ["a.h5"]
    os.unlink(tmp_path / "b.tif")
    tifffile.imwrite(tmp_path / "b.tif", ring_image(small_config, dtype=np.uint16))
    run = subprocess.run([*argv, "--skip-existing"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "a.h5: skipped (outputs exist)" in run.stdout and (out / "b.h5").exists()


def _sigint_as_in_a_terminal() -> None:
    """A child's Ctrl-C handling as a terminal starts it: a suite run in the background (`cmd &`
    in a script) hands its children SIGINT ignored, which radint keeps, as it should."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _params_and_frame(tmp_path: Path, config: IntegrationConfig) -> tuple[Path, Path, np.ndarray]:
    """A parameter file, a folder ``d`` holding one frame as ``x.tif``, and that frame."""
    params = tmp_path / "p.txt"
    params.write_text(config.midas_text())
    frame = ring_image(config, dtype=np.uint16)
    d = tmp_path / "d"
    d.mkdir()
    tifffile.imwrite(d / "x.tif", frame)
    return params, d, frame


def test_outputs_never_replace_raw_data_a_file_the_run_reads_or_a_folder(
    tmp_path, small_config, capsys, monkeypatch
):
    """Regression (batch sweep): outputs replaced whatever held their name but this run's
    frame files: raw frames x.h5 beside x.tif, the run's own dark (bg.h5 for bg.tif), a folder
    (removed). Each is refused before any work; radint's own results are replaced on a rerun.
    A dark named with ~ is the home folder's (was looked up as a folder named ~)."""
    import h5py

    params, d, frame = _params_and_frame(tmp_path, small_config)
    with h5py.File(d / "x.h5", "w") as f:  # raw frames, not part of this run
        f["exchange/data"] = np.stack([frame] * 2)
    raw = (d / "x.h5").read_bytes()
    assert main(["batch", str(params), str(d / "x.tif"), "-o", str(d), "-q"]) == 2
    err = capsys.readouterr().err
    assert "x.h5 exists and is not a radint result" in err and (d / "x.h5").read_bytes() == raw
    # the run's own dark
    tifffile.imwrite(d / "bg.tif", frame)
    tifffile.imwrite(tmp_path / "bg.tif", np.zeros_like(frame))
    args = ["batch", str(params), str(d / "bg.tif"), "-o", str(tmp_path), "-q"]
    assert main([*args, "--format", "xy", "--dark", str(tmp_path / "bg.tif")]) == 0
    with h5py.File(tmp_path / "bg.h5", "w") as f:  # the dark under the output's name
        f["exchange/data"] = np.zeros((1, *frame.shape), frame.dtype)
    assert main([*args, "--dark", str(tmp_path / "bg.h5")]) == 2
    assert "which this run reads" in capsys.readouterr().err
    # a folder where a file goes
    out = tmp_path / "out"
    (out / "x.h5").mkdir(parents=True)
    (out / "x.h5" / "notes.txt").write_text("keep")
    assert main(["batch", str(params), str(d / "x.tif"), "-o", str(out), "-q"]) == 2
    assert "x.h5 exists and is a folder" in capsys.readouterr().err
    assert (out / "x.h5" / "notes.txt").read_text() == "keep"
    # radint's own result is replaced by a rerun; a ~ dark is the home folder's
    monkeypatch.setenv("HOME", str(tmp_path))
    again = ["batch", str(params), str(d / "x.tif"), "-o", str(tmp_path / "r"), "-q"]
    assert main(again) == 0
    assert main([*again, "--dark", "~/bg.tif"]) == 0
    assert read_nexus(tmp_path / "r" / "x.h5").config.dark_file == str(tmp_path / "bg.tif")


def test_a_symlink_loop_fails_on_its_own(tmp_path, small_config, capsys):
    """Regression (batch sweep): a link that loops refused the whole folder ("Too many levels
    of symbolic links", exit 2), named on the command line gave a traceback, matched by a
    pattern was dropped unsaid; it is one failed file now, the others are integrated."""
    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    d = tmp_path / "d"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", ring_image(small_config, dtype=np.uint16))
    (d / "loop.tif").symlink_to(d / "loop.tif")
    cases = ([str(d)], [str(d / "a.tif"), str(d / "loop.tif")], [str(d / "*.tif")])
    for k, data in enumerate(cases):
        out = tmp_path / f"out{k}"
        assert main(["batch", str(params), *data, "-o", str(out)]) == 1
        captured = capsys.readouterr()
        assert "1/2 file(s) ok" in captured.out and "loop.tif" in captured.err
        assert (out / "a.h5").is_file() and "Traceback" not in captured.err


def test_partials_of_stopped_dask_workers_are_removed_after_the_run(tmp_path):
    """Regression (batch sweep): SIGTERM to the process group of a `--dask local:N` batch (a
    job scheduler's) left the temporary outputs of the files its workers were writing: a task
    runs in a worker thread that no signal interrupts. After a local cluster closes, the
    temporaries of this run's outputs whose writer is dead are removed; a live writer's stay."""
    import os
    import subprocess

    from radint.batch import _remove_partials_of_dead_workers
    from radint.io.atomic import _host_tag

    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = tmp_path / f".a.h5.0123456789-{_host_tag()}-{dead.pid}.partial"
    live = tmp_path / f".b.h5.0123456789-{_host_tag()}-{os.getpid()}.partial"
    other = tmp_path / f".c.h5.0123456789-{_host_tag()}-{dead.pid}.partial"  # not this run's
    for p in (gone, live, other):
        p.write_bytes(b"half")
    _remove_partials_of_dead_workers(["/d/a.tif", "/d/b.tif"], [None, None], tmp_path, ["nexus"])
    assert not gone.exists() and live.exists() and other.exists()


def test_convert_fit_and_other_formats_never_replace_a_users_files(tmp_path, small_config, capsys):
    """Regression (output sweep): convert and fit wrote over a raw x.h5 beside a result and
    deleted a folder named like an output with all it held; integrate --format midas replaced
    a frame zip x.zarr.zip (which radint reads as frames) with its GSAS-II zip."""
    import h5py
    import zarr

    params, d, frame = _params_and_frame(tmp_path, small_config)
    assert main(["integrate", str(params), str(d / "x.tif"), "-o", str(d), "--format",
                 "zarr", "-q"]) == 0  # fmt: skip
    with h5py.File(d / "x.h5", "w") as f:  # raw frames under the NeXus output's name
        f["exchange/data"] = np.stack([frame] * 2)
    raw = (d / "x.h5").read_bytes()
    assert main(["convert", str(d / "x.zarr"), "--format", "nexus"]) == 2
    assert "x.h5 exists and is not a radint result" in capsys.readouterr().err
    assert (d / "x.h5").read_bytes() == raw
    (d / "x_lineout.xy").mkdir()
    (d / "x_lineout.xy" / "precious").write_text("keep")
    assert main(["convert", str(d / "x.zarr"), "--format", "xy"]) == 2
    assert "x_lineout.xy exists and is a folder" in capsys.readouterr().err
    assert (d / "x_lineout.xy" / "precious").read_text() == "keep"
    # a frame zip named like the GSAS-II output
    store = zarr.storage.ZipStore(d / "y.zarr.zip", mode="w")
    zarr.open_group(store, mode="w").create_array("exchange/data", data=np.stack([frame] * 2))
    store.close()
    zipped = (d / "y.zarr.zip").read_bytes()
    tifffile.imwrite(d / "y.tif", frame)
    assert main(["integrate", str(params), str(d / "y.tif"), "-o", str(d), "--format",
                 "midas", "-q"]) == 2  # fmt: skip
    assert "y.zarr.zip exists and holds detector frames" in capsys.readouterr().err
    assert (d / "y.zarr.zip").read_bytes() == zipped
    # a rerun over radint's own outputs still replaces them
    assert main(["convert", str(d / "x.zarr"), "--format", "bin", "-q"]) == 0
    assert main(["convert", str(d / "x.zarr"), "--format", "bin", "-q"]) == 0


def test_files_a_killed_worker_skipped_are_reported_skipped(tmp_path, small_config):
    """--skip-existing with -nCPUs: a worker killed mid-run, the files of that run it skipped
    (outputs whole, made with these parameters, by an earlier batch) are reported skipped, not
    failed; only the file it was on fails."""
    import os
    import subprocess
    import sys
    import time

    params, inputs = _h5_inputs(tmp_path, small_config, 15)
    out = tmp_path / "out"
    assert main(["-q", "batch", str(params), *inputs, "-o", str(out)]) == 0
    for made in out.glob("a*.h5"):  # an earlier batch's outputs: written before this one began
        os.utime(made, (time.time() - 3600, time.time() - 3600))
    for given in inputs:  # (and after their inputs: an input newer than its outputs is redone)
        os.utime(given, (time.time() - 7200, time.time() - 7200))
    fifo = tmp_path / "z.tif"
    os.mkfifo(fifo)  # 16 files, -nCPUs 2: runs of 2; (a14, z) is the last
    proc = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "batch", str(params), *inputs, str(fifo),
         "-o", str(out), "-nCPUs", "2", "-nCPUsLocal", "1", "--skip-existing"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout, stderr, _ = _kill_workers_reading(proc, fifo, 120)
    assert proc.returncode == 1, stderr
    assert "15/16 file(s) ok" in stdout, stdout
    assert "z.tif: the worker process integrating it died" in stderr
    assert "a14.h5: the worker process" not in stderr and "a00.h5: the worker" not in stderr
    assert "a14.h5: skipped (outputs exist)" in stdout


def test_frames_of_a_killed_workers_lineout_only_outputs_are_counted(tmp_path, small_config):
    """A killed worker's completed file with only xy / bin outputs was reported with 0 frames:
    their frames are counted from the map's radial bins (a NeXus output, where there is one,
    is read first)."""
    from radint import Integrator
    from radint.batch import _frames_written
    from radint.io.text import write_lineout_bin, write_lineout_xy

    frames = np.stack([ring_image(small_config, dtype=np.uint16)] * 3)
    integ = Integrator(small_config, n_threads=1)
    result = integ.integrate_stack(frames)
    n_r = result.lineout.shape[-1]
    xy = write_lineout_xy(result, tmp_path / "a_lineout.xy")
    binary = write_lineout_bin(result, tmp_path / "a_lineout.bin")
    assert _frames_written([xy], n_r) == 3
    assert _frames_written([binary], n_r) == 3
    assert _frames_written([xy], 0) == 0  # no map size: not counted
    nexus = write_nexus(integ.integrate_stack(frames[:2]), tmp_path / "b.h5")
    assert _frames_written([xy, Path(nexus)], n_r) == 2


def test_skip_existing_redoes_outputs_of_another_or_a_changed_input(tmp_path, small_config, caplog):
    """Regression (batch audit): --skip-existing kept outputs made from another file of the
    same name (run A's sample_1.tif, then run B's into the same folder) and from an input
    overwritten since; both are integrated again with a warning. A moved input folder (the
    stored path gone, the file unchanged) still skips."""
    import os
    import shutil

    a, b = tmp_path / "runA", tmp_path / "runB"
    a.mkdir()
    b.mkdir()
    tifffile.imwrite(a / "s.tif", ring_image(small_config, dtype=np.uint16))
    tifffile.imwrite(b / "s.tif", ring_image(small_config, dtype=np.uint16) // 2)
    out = tmp_path / "out"
    run_batch(small_config, [a / "s.tif"], out)
    with caplog.at_level(logging.WARNING, logger="radint"):
        again = run_batch(small_config, [b / "s.tif"], out, skip_existing=True)
    assert not again[0].skipped and f"made from {a / 's.tif'}" in caplog.text
    from radint import Integrator

    want = Integrator(small_config).integrate(tifffile.imread(b / "s.tif")).lineout
    np.testing.assert_allclose(read_nexus(out / "s.h5").lineout[0], want, rtol=1e-12,
                               equal_nan=True)  # fmt: skip
    # The same input, unchanged: skipped. Rewritten after its outputs: redone.
    assert run_batch(small_config, [b / "s.tif"], out, skip_existing=True)[0].skipped
    later = os.stat(out / "s.h5").st_mtime + 5
    tifffile.imwrite(b / "s.tif", ring_image(small_config, dtype=np.uint16))
    os.utime(b / "s.tif", (later, later))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radint"):
        assert not run_batch(small_config, [b / "s.tif"], out, skip_existing=True)[0].skipped
    assert "changed after it was written" in caplog.text
    # The input folder moved, the file as it was: still skipped.
    moved = tmp_path / "moved"
    shutil.move(b, moved)
    past = os.stat(out / "s.h5").st_mtime - 5
    os.utime(moved / "s.tif", (past, past))
    assert run_batch(small_config, [moved / "s.tif"], out, skip_existing=True)[0].skipped


def test_whole_file_formats_from_slim_parts_equal_those_of_the_whole_result(tmp_path, small_config):
    """Scale audit: a batch kept every array of every result of a file for the formats written
    at its end (4 GB for a 500-frame Eiger 4M file with --format midas; xy and bin need the
    lineouts alone). The parts now keep what each format reads; each output equals the one
    written from the full Result of the same frames."""
    import zipfile

    from radint import Integrator
    from radint.batch import process_files
    from radint.fit import FitSpec
    from radint.io import write_result
    from radint.io.write import FORMAT_ARRAYS

    rng = np.random.default_rng(3)
    frames = rng.poisson(50.0, size=(19, *small_config.shape)).astype(np.uint16)
    frames[3, 10:20, 10:30] = 60000
    src = tmp_path / "scan.tif"
    tifffile.imwrite(src, frames)
    config = small_config.with_overrides(["OmegaSumFrames 4"])
    fit = FitSpec(auto=2)
    integ = Integrator(config, fit=fit)
    for formats in (("xy", "bin"), ("midas", "peaks", "fit", "peaks_per_eta"), ("mat", "xy")):
        kept = {a for f in formats for a in FORMAT_ARRAYS.get(f, ())}
        out = tmp_path / "-".join(formats)
        outcome = list(process_files([str(src)], str(out), formats, integrator=integ))
        assert outcome[0].ok, outcome[0].error
        want = write_result(integ.integrate_stack(frames), tmp_path / "want", formats, name="scan")
        for path in want:
            got = out / path.name
            if path.suffix == ".hdf" or path.name.endswith("_caked_peaks.h5"):
                with h5py.File(path) as a, h5py.File(got) as b:
                    names: list[str] = []
                    a.visit(names.append)
                    for name in names:
                        if isinstance(a[name], h5py.Dataset):
                            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
            elif path.name.endswith(".zip"):
                with zipfile.ZipFile(path) as a, zipfile.ZipFile(got) as b:
                    assert sorted(a.namelist()) == sorted(b.namelist())
                    for member in a.namelist():
                        assert a.read(member) == b.read(member), member
            elif path.suffix == ".mat":
                from scipy.io import loadmat

                a, b = loadmat(path), loadmat(got)
                for key in a:
                    if not key.startswith("__"):
                        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            else:
                assert path.read_bytes() == got.read_bytes(), path.name
        if "mat" not in formats:
            assert "cake_sigma" not in kept and "count" not in kept


def test_one_frame_files_with_auto_fits_and_whole_file_formats(tmp_path, small_config, monkeypatch):
    """Review: a folder of one-frame files with auto-fitted peaks and any format written at a
    file's end failed every file (one frame's table held its peak count as a numpy scalar,
    which concatenate could not stack)."""
    import tifffile

    from radint import Integrator
    from radint.batch import process_files
    from radint.fit import FitSpec

    frames = [ring_image(small_config, noise=True, seed=k) for k in range(2)]
    paths = []
    for k, frame in enumerate(frames):
        paths.append(str(tmp_path / f"f{k}.tif"))
        tifffile.imwrite(paths[-1], frame.astype(np.uint32))
    integ = Integrator(small_config, fit=FitSpec(auto=2))
    for formats in (("xy",), ("midas", "fit"), ("mat",)):
        outcomes = list(process_files(paths, str(tmp_path / formats[0]), formats, integrator=integ))
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    # caked_peaks.h5's zarr_source is the input's absolute path, given relative or not (it was
    # as typed from a pool, absolute from Dask).
    monkeypatch.chdir(tmp_path)
    outcomes = list(process_files(["f0.tif"], "cp", ("caked_peaks",), integrator=integ))
    assert outcomes[0].ok, outcomes[0].error
    with h5py.File(tmp_path / "cp" / "f0_caked_peaks.h5") as f:
        assert f["metadata"].attrs["zarr_source"].decode() == str(tmp_path / "f0.tif")


def test_a_batch_whose_output_reader_goes_away_integrates_every_file(series):
    """Found by a review: `radint batch ... | head -2` stopped the batch after 2 of 40 files
    with exit code 0 (BrokenPipe taken as "not an error"); the run now goes on without its
    report."""
    import os
    import subprocess
    import sys

    d, files, params = series
    good = []
    for k in range(30):  # enough files that the batch is still running when the reader goes
        good.append(d / f"many_{k:02d}.tif")
        os.link(files[k % 2], good[-1])
    out = d / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "batch", str(params), *map(str, good), "-o", str(out),
         "-nCPUs", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.readline()
    proc.stdout.close()  # the reader went away
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert sorted(p.name for p in out.glob("*.h5")) == sorted(f"{f.stem}.h5" for f in good)


def test_cakes_for_formats_written_at_a_files_end_wait_on_disk(tmp_path, small_config, monkeypatch):
    """Audit (large jobs): `--format midas` held a file's cakes in memory until its end and
    joined them (2× at that moment): 6 000 frames of a 1M detector peaked at 5.3 GB. They now
    wait in hidden files beside the outputs, read back mapped when caked.hdf / .zarr.zip are
    written (2 000 frames: 352 MB of own memory), and are gone afterwards, also when the
    file fails. The outputs are the same as from the results in memory."""
    from radint import Integrator
    from radint.io import write_result

    rng = np.random.default_rng(3)
    frames = np.stack([ring_image(small_config, amplitude=50 + 10 * k, dtype=np.uint16)
                       for k in range(20)])  # fmt: skip
    frames[5] += rng.integers(0, 9, frames.shape[1:], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", frames)
    seen = []

    def spy(result, *args, **kwargs):
        seen.append(type(result.cake))
        if len(seen) == 4:  # the second run's second format
            raise OSError(28, "No space left on device")
        return write_result(result, *args, **kwargs)

    monkeypatch.setattr("radint.io.write_result", spy)
    outcomes = run_batch(small_config, [tmp_path / "stack.tif"], tmp_path / "out",
                         formats=("caked", "mat"), n_threads=1)  # fmt: skip
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert seen == [np.memmap, np.memmap], seen
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".radint-cache", "stack.caked.hdf", "stack.mat"]  # fmt: skip
    direct = Integrator(small_config, n_threads=1).integrate_stack(frames)
    write_result(direct, tmp_path / "direct", ["caked"], name="stack")
    with h5py.File(tmp_path / "out" / "stack.caked.hdf") as a, \
            h5py.File(tmp_path / "direct" / "stack.caked.hdf") as b:  # fmt: skip
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert len(names) > 20
        for n in names:
            np.testing.assert_array_equal(a[n][()], b[n][()], err_msg=n)
    outcomes = run_batch(small_config, [tmp_path / "stack.tif"], tmp_path / "full",
                         formats=("caked", "mat"), n_threads=1)  # fmt: skip
    assert not outcomes[0].ok and "no space left on device" in str(outcomes[0].error)
    assert [p.name for p in (tmp_path / "full").iterdir()] == [".radint-cache"]
