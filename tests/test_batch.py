"""Batch workflow: MIDAS file series, process pool, skip-existing, failures reported, Dask."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile

from radint.batch import midas_file_series, run_batch
from radint.cli import main
from radint.testing import ring_image


def test_midas_file_series():
    assert midas_file_series("/d/ceo2_000012.tif", None, 14) == [
        "/d/ceo2_000012.tif", "/d/ceo2_000013.tif", "/d/ceo2_000014.tif"]  # fmt: skip
    assert midas_file_series("/d/x_000001_000001.h5", 1, 2) == [
        "/d/x_000001_000001.h5",
        "/d/x_000002_000002.h5",
    ]
    assert midas_file_series("/d/nonumber.tif") == ["/d/nonumber.tif"]


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
    assert rc == 0 and "skipped (outputs exist)" in capsys.readouterr().out


def test_batch_on_local_dask(series, small_config):
    pytest.importorskip("dask.distributed")
    d, files, _ = series
    outcomes = run_batch(
        small_config, [files[0], files[1]], d / "dask", dask="local:2", n_threads=1
    )
    assert [o.ok for o in outcomes] == [True, True]
    assert all(o.n_frames == 2 for o in outcomes)


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
