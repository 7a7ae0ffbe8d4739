"""`radint stream --midas-files` with peak fitting: the GPU program's caked_peaks.h5 (its
per-frame table of the lineout fits, spec §6.5/§9.4), read back against stream.h5 entry/peaks.

Every server listens on 127.0.0.1 with an ephemeral port and stops by itself (idle timeout,
--timeout); every wait is bounded.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from radint import IntegrationConfig
from radint.fit import FitSpec
from radint.integrator import Integrator
from radint.io.describe import describe_output
from radint.io.inputs import is_frame_file
from radint.io.peaks import PEAK_COLUMNS
from radint.stream import Pipeline, TcpSource
from radint.stream.protocol import encode_frame_bytes
from radint.testing import ring_image
from tests import test_stream as stream_tests

# tests/test_stream.py's detector, binned finer in R and as one η bin: lineouts to fit.
DETECTOR = stream_tests.DETECTOR.replace("RBinSize 2\n", "RBinSize 0.5\n").replace(
    "EtaBinSize 30\n", "EtaBinSize 360\n"
)
NY, NZ, SHAPE = stream_tests.NY, stream_tests.NZ, stream_tests.SHAPE
RINGS_PX = np.array([12.0, 20.0, 30.0])


@pytest.fixture(scope="module")
def config() -> IntegrationConfig:
    return IntegrationConfig.from_text(DETECTOR, "caked.txt")


def rings(config: IntegrationConfig, radii_px) -> np.ndarray:
    """A frame with Gaussian rings at ``radii_px`` (none: the flat background)."""
    tth = config.two_theta_deg(np.asarray(radii_px, float))
    return ring_image(config, tth, fwhm_deg=0.08, dtype=np.uint32)


def wait_for(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def run_stream(integrator, out: Path, frames, **kw) -> Pipeline:
    """Stream ``frames`` over TCP into ``out`` (MIDAS files on) and drain."""
    src = TcpSource(SHAPE, host="127.0.0.1", port=0)
    kw.setdefault("idle_timeout", 20.0)  # bounded even if a test fails half-way
    p = Pipeline(integrator, [src], out, midas_files=True, **kw)
    p.start()
    if frames:
        with socket.create_connection(("127.0.0.1", src.port), timeout=10) as s:
            for i, image in enumerate(frames):
                s.sendall(encode_frame_bytes(i, image))
            assert wait_for(lambda: p.written == len(frames))
    p.stop()
    assert p.wait(60) is not None, "pipeline did not drain in time"
    return p


def read_caked(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        meta = f["metadata"]
        got = {
            "groups": sorted(f),
            "source": meta.attrs["zarr_source"],
            "source_type": meta.attrs.get_id("zarr_source").get_type(),
            "tth_axis": meta["tth_axis"][()],
            "eta_axis": meta["eta_axis"][()],
            "frame_keys": [k.decode() for k in meta["frame_keys"][()]],
        }
        if "peaks" in f:
            g = f["peaks"]
            got["dtypes"] = {name: g[name].dtype for name in g}
            got["rows"] = {name: g[name][()] for name in PEAK_COLUMNS}
            got["rows"]["frame_key"] = [k.decode() for k in g["frame_key"][()]]
    return got


def stream_peaks(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[f"entry/peaks/{name}"][()] for name in f["entry/peaks"]
                if isinstance(f[f"entry/peaks/{name}"], h5py.Dataset)
                and f[f"entry/peaks/{name}"].ndim == 2}  # fmt: skip


def check_rows_against_stream(out: Path, caked: dict, order: list[int]) -> None:
    """Every converged peak of stream.h5 entry/peaks is one row, in ``order`` of the frames
    (then by slot), with its values; nothing else is."""
    sp = stream_peaks(out / "stream.h5")
    rows = caked["rows"]
    ok = sp["status"] == 0
    want_frame, want_slot = [], []
    for k in order:
        slots = np.flatnonzero(ok[k])
        want_frame += [k] * len(slots)
        want_slot += slots.tolist()
    np.testing.assert_array_equal(rows["frame_idx"], want_frame)
    np.testing.assert_array_equal(rows["peak_nr"], want_slot)
    f, k = rows["frame_idx"], rows["peak_nr"]
    assert (rows["eta_idx"] == 0).all() and (rows["eta_deg"] == 0).all()
    # The fit's own values, as stored (fit.bin's columns).
    for col, name in (("area", "area"), ("sig", "sig"), ("gam", "gam"),
                      ("eta_mix", "eta_mix"), ("chi_sq", "chi2")):  # fmt: skip
        np.testing.assert_array_equal(rows[col], sp[name][f, k], err_msg=col)
    # The derived ones by the same formulas (atan(R·px/Lsd)): equal to rounding.
    np.testing.assert_allclose(rows["center_2theta"], sp["center_two_theta"][f, k], rtol=1e-13)
    np.testing.assert_allclose(rows["FWHM_deg"], sp["fwhm_two_theta"][f, k], rtol=1e-10)
    np.testing.assert_allclose(rows["d_spacing_A"], sp["center_d"][f, k], rtol=1e-13)
    assert rows["frame_key"] == [caked["frame_keys"][i] for i in f]


def check_layout(caked: dict) -> None:
    """PeakFitIO.c's layout as the GPU program writes it (spec §9.4, .cu:3068-3071)."""
    assert caked["source"] == b"GPU"
    assert caked["source_type"].get_size() == 4  # fixed-length, NUL-terminated, as C's
    assert caked["tth_axis"].shape == (0,) and caked["eta_axis"].shape == (0,)
    assert caked["tth_axis"].dtype == np.float64
    if "dtypes" in caked:
        for name, dtype in PEAK_COLUMNS.items():
            assert caked["dtypes"][name] == np.dtype(dtype), name
        assert h5py.check_string_dtype(caked["dtypes"]["frame_key"]).encoding == "ascii"


def test_auto_detected_peaks_sorted_and_named_by_the_frame_mapping(config, tmp_path):
    """Auto-detection (a different number of peaks per frame, one frame with none) on the CPU
    backend: one row per converged peak, frames in the order and under the names
    integrator_output.h5 gives them from the sender's frame_mapping.json."""
    integ = Integrator(config, backend="cpu", n_threads=1, fit=FitSpec(auto=4))
    frames = [rings(config, RINGS_PX[:1]), rings(config, RINGS_PX), rings(config, RINGS_PX[:2]),
              rings(config, [])]  # fmt: skip
    mapping = tmp_path / "frame_mapping.json"
    names = ["c.tif", "a.tif", "b.tif", "d.tif"]
    mapping.write_text(json.dumps({str(i): {"filename": n, "uniqueId": i, "dataset_num": i}
                                   for i, n in enumerate(names)}))  # fmt: skip
    out = tmp_path / "out"
    run_stream(integ, out, frames, mapping_file=mapping)
    caked = read_caked(out / "caked_peaks.h5")
    check_layout(caked)
    assert caked["groups"] == ["metadata", "peaks"]
    assert caked["frame_keys"] == ["c", "a", "b", "d"]  # frame_keys[frame_idx] == frame_key
    check_rows_against_stream(out, caked, order=[1, 2, 0, 3])
    counts = np.bincount(caked["rows"]["frame_idx"], minlength=4)
    assert counts.tolist() == [1, 3, 2, 0]
    np.testing.assert_allclose(
        np.sort(caked["rows"]["center_2theta"][caked["rows"]["frame_idx"] == 1]),
        config.two_theta_deg(RINGS_PX), atol=7e-4,  # 0.02 px: ring_image vs the fit
    )  # fmt: skip
    # The same fits as integrator_output.h5's fit/<name> tables (fit.bin's rows).
    with h5py.File(out / "integrator_output.h5") as f:
        rows = caked["rows"]
        for i in range(len(rows["frame_idx"])):
            table = f[f"fit/{rows['frame_key'][i]}"][()]
            assert table[rows["peak_nr"][i], 0] == rows["area"][i]
    assert "GPU stream program" in (describe_output(out / "caked_peaks.h5") or "")
    # A folder watch or batch over the output folder does not take it for frames.
    assert not is_frame_file(out / "caked_peaks.h5")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_cli_stream_writes_caked_peaks_for_given_positions(tmp_path, backend, config):
    """radint send -> radint stream --midas-files (DoPeakFit 1, PeakLocation) -> SIGTERM, on the
    CPU backend and the CUDA one (the stand-in CuPy of tests/gpu_harness: its GPU fitter fits
    the given positions). A PeakLocation outside the R range is a slot that never converges:
    no row, a gap in peak_nr."""
    import tifffile

    params = tmp_path / "p.txt"
    params.write_text(DETECTOR + "DoPeakFit 1\nPeakLocation 12\nPeakLocation 20\n"
                      "PeakLocation 30\nPeakLocation 90\n")  # fmt: skip
    port = _free_port()
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if backend == "cuda":
        from tests.test_gpu import _fake_cupy_env

        env = {**_fake_cupy_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "radint.cli", "stream", str(params), "-o", str(out), "--port",
           str(port), "--backend", backend, "--timeout", "60", "--midas-files", "-j", "1",
           "--mapping-file", str(tmp_path / "frame_mapping.json")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        tif = tmp_path / "frames"
        tif.mkdir()
        for name, radii in (("img_2", RINGS_PX[:2]), ("img_0", RINGS_PX), ("img_1", RINGS_PX)):
            tifffile.imwrite(tif / f"{name}.tif", rings(config, radii))
        assert wait_for(lambda: _port_open(port), 60)
        send = [sys.executable, "-m", "radint.cli", "send", str(params), str(tif), "--port",
                str(port), "--mapping-file", str(tmp_path / "frame_mapping.json")]  # fmt: skip
        r = subprocess.run(send, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: (out / "stream.h5").exists(), 60)
        time.sleep(1.0)
        proc.terminate()
        text = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text
    assert "written 3" in text and "caked_peaks.h5" in text
    if backend == "cuda":
        assert "using cuda (CUDA device radint fake CuPy" in text
    mapping = json.loads((tmp_path / "frame_mapping.json").read_text())
    arrival = [mapping[str(i)]["filename"] for i in range(3)]
    assert arrival == ["img_0.tif", "img_1.tif", "img_2.tif"]  # natural order, as sent
    caked = read_caked(out / "caked_peaks.h5")
    check_layout(caked)
    assert caked["frame_keys"] == ["img_0", "img_1", "img_2"]
    check_rows_against_stream(out, caked, order=[0, 1, 2])
    rows = caked["rows"]
    # Frames 0-1 have all three rings: rows for slots 0-2; slot 3 (R=90, outside the R range)
    # is never a row. (img_2's R=30 slot, on the flat background, may or may not converge:
    # check_rows_against_stream holds either way.)
    assert 3 not in rows["peak_nr"].tolist()
    assert rows["frame_idx"].tolist()[:6] == [0, 0, 0, 1, 1, 1]
    assert rows["peak_nr"].tolist()[:6] == [0, 1, 2, 0, 1, 2]
    np.testing.assert_allclose(rows["center_2theta"][:3], config.two_theta_deg(RINGS_PX),
                               atol=7e-4)  # fmt: skip
    # Given positions: fit.bin holds every slot (NaN rows for failures), as many per frame.
    fit_bin = np.fromfile(out / "fit.bin", "<f8").reshape(3, 4, 7)
    np.testing.assert_array_equal(rows["area"][:3], fit_bin[0, :3, 0])
    assert np.isnan(fit_bin[:, 3]).all()


def test_no_converged_peak_no_fit_and_no_frame(config, tmp_path, caplog):
    """Fits that all fail: caked_peaks.h5 names the frames and has no /peaks group (PeakFitIO's
    rule). No fitting: no caked_peaks.h5. No frame: no MIDAS end file at all."""
    flat = rings(config, [])
    integ = Integrator(config, backend="cpu", n_threads=1, fit=FitSpec(positions_px=(20.0,)))
    run_stream(integ, tmp_path / "none", [flat, flat])
    status = stream_peaks(tmp_path / "none" / "stream.h5")["status"]
    assert status.shape[0] == 2 and not (status == 0).any()
    caked = read_caked(tmp_path / "none" / "caked_peaks.h5")
    check_layout(caked)
    assert caked["groups"] == ["metadata"] and caked["frame_keys"] == ["0", "1"]
    assert "0 peak row(s), 2 frame(s)" in (describe_output(tmp_path / "none" / "caked_peaks.h5")
                                          or "")  # fmt: skip

    plain = Integrator(config, backend="cpu", n_threads=1, fit=None)
    caplog.clear()  # the fitted stream's lines, captured where an earlier test left INFO on
    with caplog.at_level(logging.INFO, logger="radint.stream"):
        run_stream(plain, tmp_path / "nofit", [rings(config, RINGS_PX)])
    assert (tmp_path / "nofit" / "integrator_output.h5").exists()
    assert not (tmp_path / "nofit" / "caked_peaks.h5").exists()
    assert not (tmp_path / "nofit" / "fit.bin").exists()
    assert "caked_peaks" not in caplog.text

    run_stream(integ, tmp_path / "empty", [])
    assert not list((tmp_path / "empty").glob("*.h5")) and not list(
        (tmp_path / "empty").glob("*.bin")
    )


def test_second_ctrl_c_skips_caked_peaks_and_a_failed_write_names_it(
    config, tmp_path, caplog, monkeypatch
):
    """A second Ctrl-C skips caked_peaks.h5 with the other end files (and says how to make
    them); a write that fails (HDF5's error names only its temporary file) is logged naming
    caked_peaks.h5, with how to make the files later; making them later writes it."""
    from radint.io import midas
    from radint.io import peaks as peaks_mod

    integ = Integrator(config, backend="cpu", n_threads=1, fit=FitSpec(auto=3))
    out = tmp_path / "skip"
    src = TcpSource(SHAPE, host="127.0.0.1", port=0)
    p = Pipeline(integ, [src], out, midas_files=True, idle_timeout=20.0)
    p.start()
    with socket.create_connection(("127.0.0.1", src.port), timeout=10) as s:
        s.sendall(encode_frame_bytes(0, rings(config, RINGS_PX)))
        assert wait_for(lambda: p.written == 1)
    p.stop()
    p.skip_midas_outputs()
    with caplog.at_level(logging.INFO, logger="radint.stream"):
        assert p.wait(60) is not None
    assert not (out / "caked_peaks.h5").exists() and (out / "fit.bin").stat().st_size == 3 * 56
    assert "integrator_output.h5, caked_peaks.h5 not written (skipped)" in caplog.text
    assert "write_stream_outputs(" in caplog.text
    # Made later from the folder, as the log says.
    made = midas.write_stream_outputs(out, config, stream_file=out / "stream.h5")
    assert [m.name for m in made] == ["integrator_output.h5", "caked_peaks.h5"]
    check_rows_against_stream(out, read_caked(out / "caked_peaks.h5"), order=[0])

    def h5_failure(*args, **kw):
        raise OSError("Can't write data (file write failed: time = ..., filename = "
                      "'/x/.caked_peaks.h5.abc.partial', errno = 28)")  # fmt: skip

    monkeypatch.setattr(peaks_mod, "write_caked_peaks_file", h5_failure)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="radint.stream"):
        run_stream(integ, tmp_path / "full", [rings(config, RINGS_PX)])
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1, caplog.text
    # Named by its final name, with the errno HDF5's text gives.
    assert "[Errno 28] not written (Can't write data" in failed[0]
    assert f"'{tmp_path / 'full' / 'caked_peaks.h5'}'" in failed[0]
    assert "write_stream_outputs(" in failed[0]
    assert not (tmp_path / "full" / "caked_peaks.h5").exists()
    assert not [n for n in os.listdir(tmp_path / "full") if n.endswith(".partial")]


def test_disk_full_and_cancel_before_caked_peaks_leave_no_end_file(config, tmp_path, monkeypatch):
    """Making the end files later: a disk without room for caked_peaks.h5 fails naming it
    (ENOSPC, before HDF5 writes), a cancel after the last frame group stops before it; either
    way none of the end files is left (made again later, all of them are)."""
    import shutil

    from radint.io import midas

    integ = Integrator(config, backend="cpu", n_threads=1, fit=FitSpec(auto=3))
    out = tmp_path / "out"
    run_stream(integ, out, [rings(config, RINGS_PX), rings(config, RINGS_PX[:1])])
    for name in ("integrator_output.h5", "caked_peaks.h5"):
        (out / name).unlink()
    calls: list[int] = []  # one check per frame group (2), then one before caked_peaks.h5
    with pytest.raises(KeyboardInterrupt, match="cancelled before caked_peaks.h5"):
        midas.write_stream_outputs(out, config, stream_file=out / "stream.h5",
                                   cancelled=lambda: calls.append(1) or len(calls) > 2)  # fmt: skip
    assert len(calls) == 3
    assert not list(out.glob("integrator_output*")) and not (out / "caked_peaks.h5").exists()

    usage = shutil.disk_usage(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(OSError) as e:
        midas.write_stream_outputs(out, config, stream_file=out / "stream.h5")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out / "caked_peaks.h5")
    assert not list(out.glob("integrator_output*")) and not (out / "caked_peaks.h5").exists()
    monkeypatch.undo()
    made = midas.write_stream_outputs(out, config, stream_file=out / "stream.h5")
    assert [m.name for m in made] == ["integrator_output.h5", "caked_peaks.h5"]
    # A stream restarted into the folder keeps it with the run's other files.
    run_stream(integ, out, [])
    kept = list(out.glob("previous-*/caked_peaks.h5"))
    assert len(kept) == 1 and not (out / "caked_peaks.h5").exists()
    assert (kept[0].parent / "integrator_output.h5").exists()


def _caked_bound_of(path: Path) -> int:
    """caked_peaks_bound for the rows and names of the file at ``path``."""
    from radint.io.midas import STREAM_CAKED_PEAKS_SOURCE
    from radint.io.peaks import caked_peaks_bound

    caked = read_caked(path)
    rows = caked.get("rows", {"frame_key": []})
    return caked_peaks_bound(len(rows["frame_key"]), rows["frame_key"], caked["frame_keys"],
                             STREAM_CAKED_PEAKS_SOURCE)  # fmt: skip


@pytest.mark.parametrize(
    ("n_frames", "per_frame", "name"),
    [
        (0, 0, ""),
        (1, 1, "0"),
        (10, 3, "img"),
        (100_000, 1, "s" * 53),
        (20_000, 5, "µ" * 53),
        (3_000, 1, "x" * 2100),
    ],
)
def test_caked_peaks_size_bound_holds(tmp_path, n_frames, per_frame, name):
    """Regression (review): the space asked for caked_peaks.h5 left out its variable-length
    strings (a frame_key per row, a frame_keys entry per frame: ~32 bytes + the name each, in
    HDF5's global heap), so a nearly full disk let HDF5 meet ENOSPC (SIGSEGV in HDF5, .partial
    files left). caked_peaks_bound is an upper bound of the file, here for 100 000 rows with
    60-byte names, multi-byte names and names past half a heap collection."""
    from radint.io.peaks import caked_peaks_bound, write_caked_peaks

    keys = [f"{name}_{k:06d}" for k in range(n_frames)]
    row_keys = [k for k in keys for _ in range(per_frame)]
    n = len(row_keys)
    columns = {c: np.zeros(n, dtype=d) for c, d in PEAK_COLUMNS.items()}
    path = write_caked_peaks(tmp_path / "c.h5", columns, np.zeros(0), np.zeros(0), keys, "GPU",
                             row_keys)  # fmt: skip
    size = path.stat().st_size
    bound = caked_peaks_bound(n, row_keys, keys, "GPU")
    assert size <= bound, (size, bound)
    # and not far above it for many short names (names past half a 4 KiB heap collection are
    # counted a collection each: up to 2x)
    if n >= 3000 and len(name.encode()) < 1000:
        assert bound < 1.1 * size, (size, bound)


def test_caked_peaks_bound_holds_under_a_file_size_limit(config, tmp_path):
    """The bound holds where the system enforces it: under ``ulimit -f`` of exactly the bound
    (a child process), the stream's 100 000-row caked_peaks.h5 with 60-character names is
    written; one byte less is refused up front (EFBIG naming caked_peaks.h5) before HDF5
    writes, nothing left."""
    script = """
import resource, sys
from pathlib import Path
import numpy as np
from radint import IntegrationConfig
from radint.io.midas import STREAM_CAKED_PEAKS_SOURCE, _CakedRows, _FrameFits
from radint.io.peaks import caked_peaks_bound
from radint.io.atomic import temporary_sibling
cfg = IntegrationConfig.from_text(sys.argv[1], "p.txt")
out = Path(sys.argv[2])
rows = _CakedRows(cfg)
keys = [f"{'k' * 53}_{k:06d}" for k in range(100_000)]
fit = _FrameFits(np.tile([1e3, 20.0, 1.0, 1.0, 4.0, 0.5, 1.0], (1, 1)), np.arange(1),
                 np.ones(1, bool))
for k, key in enumerate(keys):
    rows.add(k, key, fit)
bound = caked_peaks_bound(len(keys), keys, keys, STREAM_CAKED_PEAKS_SOURCE)
limit = bound - int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
final = out / "caked_peaks.h5"
tmp = temporary_sibling(final)
try:
    rows.write(tmp, final, keys)
except OSError as e:
    tmp.unlink(missing_ok=True)
    print("ERROR", e.errno, e.filename)
    sys.exit(0)
print("OK", tmp.stat().st_size, bound)
"""
    for less, want in ((0, "OK"), (1, "ERROR")):
        out = tmp_path / str(less)
        out.mkdir()
        r = subprocess.run([sys.executable, "-c", script, DETECTOR, str(out), str(less)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr
        words = r.stdout.split()
        assert words[0] == want, r.stdout + r.stderr
        if want == "OK":
            assert int(words[1]) <= int(words[2])
        else:
            assert words[1:] == [str(errno.EFBIG), str(out / "caked_peaks.h5")]
            assert not os.listdir(out)


def test_nearly_full_disk_small_caked_peaks_needs_its_bound_not_the_append_margin(
    config, tmp_path, monkeypatch
):
    """Regression (review): with fitting on and under ~4 MiB free, the ~15 KB caked_peaks.h5
    asked for radint.io.nexus.SPACE_MARGIN (4 MiB) on top of its size, and its failure
    discarded integrator_output.h5 too (written there before caked_peaks.h5 existed). It now
    needs its size bound: with exactly that free all the files are written; a byte less is a
    clean ENOSPC naming caked_peaks.h5 before HDF5 writes, with no file and no .partial left."""
    import shutil

    from radint.io import midas
    from radint.io.nexus import SPACE_MARGIN

    integ = Integrator(config, backend="cpu", n_threads=1, fit=FitSpec(auto=3))
    out = tmp_path / "out"
    run_stream(integ, out, [rings(config, RINGS_PX), rings(config, RINGS_PX[:1])])
    bound = _caked_bound_of(out / "caked_peaks.h5")
    assert (out / "caked_peaks.h5").stat().st_size <= bound < SPACE_MARGIN // 32
    for name in ("integrator_output.h5", "caked_peaks.h5"):
        (out / name).unlink()
    usage = shutil.disk_usage(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=bound - 1))
    with pytest.raises(OSError) as e:
        midas.write_stream_outputs(out, config, stream_file=out / "stream.h5")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out / "caked_peaks.h5")
    assert not [n for n in os.listdir(out) if n.endswith((".partial", "output.h5", "peaks.h5"))]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=bound))
    made = midas.write_stream_outputs(out, config, stream_file=out / "stream.h5")
    assert [m.name for m in made] == ["integrator_output.h5", "caked_peaks.h5"]


def test_end_files_all_or_nothing_when_integrator_output_fails_at_close(
    config, tmp_path, monkeypatch, caplog
):
    """Regression (review): caked_peaks.h5 was committed before integrator_output.h5 was
    closed; that close (its last flush) could then fail on a full disk, leaving one file
    without the other and a log saying neither was written, its error naming the .partial
    temporary. Now the files are committed together once all are closed: a failing close
    leaves none, and the error (and the stream's log) names integrator_output.h5."""
    import h5py as h5py_mod

    integ = Integrator(config, backend="cpu", n_threads=1, fit=FitSpec(auto=3))
    original = h5py_mod.File.close

    def failing_close(self):
        name = self.filename if self.id.valid else ""
        original(self)
        if "integrator_output.h5" in name:
            raise OSError(f"Can't close file (file write failed: time = ..., filename = "
                          f"'{name}', file descriptor = 3, errno = 28, error message = "
                          f"'No space left on device')")  # fmt: skip

    monkeypatch.setattr(h5py_mod.File, "close", failing_close)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="radint.stream"):
        run_stream(integ, out, [rings(config, RINGS_PX)])
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1, caplog.text
    assert "integrator_output.h5, caked_peaks.h5 not written: [Errno 28]" in failed[0]
    assert f"'{out / 'integrator_output.h5'}'" in failed[0] and ".partial" not in failed[0]
    assert not (out / "caked_peaks.h5").exists() and not (out / "integrator_output.h5").exists()
    assert not [n for n in os.listdir(out) if n.endswith(".partial")]

    from radint.io import midas

    with pytest.raises(OSError) as e:
        midas.write_stream_outputs(out, config, stream_file=out / "stream.h5")
    assert e.value.errno == errno.ENOSPC
    assert e.value.filename == str(out / "integrator_output.h5")
    assert "filename = 'integrator_output.h5'" not in str(e.value)  # the whole final path
    assert str(out / "integrator_output.h5") in str(e.value.strerror)
    monkeypatch.undo()
    made = midas.write_stream_outputs(out, config, stream_file=out / "stream.h5")
    assert [m.name for m in made] == ["integrator_output.h5", "caked_peaks.h5"]


def test_non_ascii_frame_names_are_kept_whole(config, tmp_path):
    """Regression (review): names from the sender's mapping such as sample_µ_0.tif collapsed
    to '?' in frame_keys / frame_key (encode('ascii', 'replace')), so keys collided and no
    longer named integrator_output.h5's fit/ groups. They are stored as UTF-8 bytes in
    PeakFitIO.c's (and peak_io.py's) ASCII-typed variable-length strings: h5py reads back
    bytes whose decode() is the group name."""
    from radint.io import midas

    integ = Integrator(config, backend="cpu", n_threads=1, fit=FitSpec(auto=4))
    out = tmp_path / "out"
    run_stream(integ, out, [rings(config, RINGS_PX[:2]), rings(config, RINGS_PX)] * 2)
    mapping = {i: {"filename": f"sample_{'µé'[i % 2]}_{i // 2}.tif"} for i in range(4)}
    midas.write_stream_outputs(out, config, stream_file=out / "stream.h5", mapping=mapping)
    caked = read_caked(out / "caked_peaks.h5")
    check_layout(caked)  # still PeakFitIO.c's ASCII-typed vlen strings
    names = ["sample_µ_0", "sample_é_0", "sample_µ_1", "sample_é_1"]
    assert caked["frame_keys"] == names
    check_rows_against_stream(out, caked, order=[0, 2, 1, 3])  # sorted by name: µ before é
    with h5py.File(out / "integrator_output.h5") as f:
        assert sorted(f["fit"]) == sorted(names)
        assert all(key in f["fit"] for key in caked["rows"]["frame_key"])
        for name in names:
            assert caked["frame_keys"][int(f[f"fit/{name}"].attrs["frame_index"])] == name


def test_caked_peaks_frame_index_past_int32_is_kept_whole(tmp_path):
    """A /peaks frame_idx int32 cannot hold (a stream past 2^31 frames) is stored as int64,
    exact, where it was wrapped to a negative number beside its frame_key; the other columns
    keep their C types and the size bound still holds."""
    import h5py

    from radint.io.peaks import caked_peaks_bound, write_caked_peaks

    n = 20_000
    keys = [str(2**31 + k) for k in range(n)]
    columns = {c: np.zeros(n, dtype=d) for c, d in PEAK_COLUMNS.items()}
    columns["frame_idx"] = np.arange(2**31, 2**31 + n, dtype=np.int64)
    path = write_caked_peaks(tmp_path / "c.h5", columns, np.zeros(0), np.zeros(0), keys, "GPU",
                             keys)  # fmt: skip
    with h5py.File(path) as f:
        frame_idx = f["peaks/frame_idx"]
        assert (
            frame_idx.dtype == np.int64 and frame_idx[0] == 2**31 and frame_idx[-1] == 2**31 + n - 1
        )
        assert f["peaks/peak_nr"].dtype == np.int32 and f["peaks/eta_idx"].dtype == np.int32
    assert path.stat().st_size <= caked_peaks_bound(n, keys, keys, "GPU")
    small = {**columns, "frame_idx": np.arange(n, dtype=np.int64)}
    path = write_caked_peaks(tmp_path / "d.h5", small, np.zeros(0), np.zeros(0), keys, "GPU", keys)
    with h5py.File(path) as f:
        assert f["peaks/frame_idx"].dtype == np.int32  # C's int where it fits
