"""Regressions from a user sweep of the CLI: `info` on radint's own non-NeXus outputs,
`convert` leaving files behind, `plot --follow` on a missing file, stream restarts."""

from __future__ import annotations

import numpy as np
import pytest

from radint import Integrator
from radint.cli import main
from radint.io import write_result


@pytest.fixture
def stored(tmp_path, small_config):
    """A small NeXus result without fitted peaks, `tmp_path/small.h5`."""
    rng = np.random.default_rng(7)
    frames = rng.poisson(50, (2, *small_config.shape)).astype(np.uint16)
    result = Integrator(small_config).integrate_stack(frames)
    (path,) = write_result(result, tmp_path, ["nexus"], name="small")
    return path


def test_convert_checks_every_format_before_writing_any(stored, tmp_path, capsys):
    """`--format caked,gsas,bin,mat,zarr,peaks,fit` failed on `peaks` after writing the others."""
    out = tmp_path / "conv"
    args = ["convert", str(stored), "--format", "caked,gsas,bin,zarr,peaks,fit", "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no fitted peaks" in err and "peaks,fit" in err
    assert not out.exists() or list(out.iterdir()) == []


def test_write_result_removes_its_outputs_when_a_writer_fails(stored, tmp_path, monkeypatch):
    from radint.io import read_nexus, write
    from radint.result import Result

    def broken(result: Result, path):
        raise OSError(f"{path}: disk full")

    monkeypatch.setitem(write.FORMATS, "xy", ("_lineout.xy", broken))
    out = tmp_path / "conv"
    with pytest.raises(OSError, match="disk full"):
        write_result(read_nexus(stored), out, ["caked", "zarr", "bin", "xy"], name="s")
    assert list(out.iterdir()) == []


def test_a_failed_write_keeps_the_files_that_were_there(stored, tmp_path, monkeypatch):
    """Regression (review): the rollback removed every file the call had written, also those
    it had replaced: `radint fit R.h5 --format nexus,xy` rewrites R.h5 in place, and a failing
    xy writer deleted the user's result. Only files the call created go."""
    from radint.io import read_nexus, write
    from radint.result import Result

    result = read_nexus(stored)
    write_result(result, stored.parent, ["caked"], name="small")  # an earlier output

    def broken(result: Result, path):
        raise OSError(f"{path}: No space left on device")

    monkeypatch.setitem(write.FORMATS, "xy", ("_lineout.xy", broken))
    with pytest.raises(OSError, match="No space"):
        write_result(result, stored.parent, ["nexus", "caked", "bin", "xy"], name="small")
    names = sorted(p.name for p in stored.parent.iterdir() if p.is_file())
    assert "small.h5" in names and "small.caked.hdf" in names
    assert "small_lineout.bin" not in names  # created by the failed call: removed
    np.testing.assert_array_equal(read_nexus(stored).lineout, result.lineout)


def test_info_describes_radints_own_non_nexus_outputs(stored, tmp_path, capsys):
    """`radint info X.caked.hdf` said "not a text parameter file (binary content)" and
    `radint info X_lineout.xy` "missing required parameter NrPixelsY"."""
    from radint.io import read_nexus

    out = tmp_path / "conv"
    write_result(read_nexus(stored), out, ["nexus", "caked", "gsas", "bin", "xy"], name="small")
    capsys.readouterr()
    expected = {
        "small.caked.hdf": "a MIDAS caked.hdf result (IntegratorZarrOMP layout): 2 frame(s)",
        "small.zarr.zip": "a GSAS-II .zarr.zip result (MIDAS caked tree, zarr v2): 2 frame(s)",
        "small_lineout.bin": "2 frame(s) x",
        "small_lineout.xy": "2 frame(s) x",
    }
    for name, text in expected.items():
        assert main(["info", str(out / name)]) == 0, name
        printed = capsys.readouterr().out
        assert text in printed and "not a parameter file" in printed, printed
    assert main(["info", str(out / "small.caked.hdf"), "RBinSize", "2"]) == 2
    # A map cache, as `radint info --help` promises ("not a text parameter file" before).
    from radint import DetectorMap, IntegrationConfig

    from .conftest import SMALL

    cfg = IntegrationConfig.from_text(SMALL, "small.txt")
    DetectorMap.cached(cfg, tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("radint-map-*.npz")
    capsys.readouterr()
    assert main(["info", str(cache)]) == 0
    assert "a radint detector-map cache: 100 x 120 pixels, 36 eta x" in capsys.readouterr().out


def test_info_knows_midas_stream_outputs_by_content_and_counts_c_peak_frames(tmp_path, capsys):
    """Audit (MIDAS manual): a stream output named as --output-h5 names it (not
    integrator_output.h5) was read as a parameter file; C's caked_peaks.h5, which lists no
    frame keys, was said to hold 0 frames."""
    import h5py

    with h5py.File(tmp_path / "scan_01_integrated.h5", "w") as f:
        for group in ("lineouts", "geometry_maps", "OmegaSumFrame"):
            f.create_group(group)
    with h5py.File(tmp_path / "scan_000001_caked_peaks.h5", "w") as f:
        f["peaks/frame_idx"] = np.zeros(72, np.int32)
        f["metadata/frame_keys"] = np.array([], dtype="S1")
    assert main(["info", str(tmp_path / "scan_01_integrated.h5")]) == 0
    assert "MIDAS's post-processed stream output" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "scan_000001_caked_peaks.h5")]) == 0
    assert "72 peak row(s), 1 frame(s)" in capsys.readouterr().out


def test_follow_says_it_waits_for_a_missing_file_and_fails_if_it_never_appears(tmp_path, capsys):
    """`radint plot live_typo/stream.h5 --follow-for 3` waited silently and exited 0."""
    pytest.importorskip("matplotlib")
    missing = tmp_path / "live_typo" / "stream.h5"
    args = ["plot", str(missing), "--follow", "--interval", "0.05", "--follow-for", "0.3"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out.count("waiting for it to appear") == 1
    assert "never appeared" in captured.err
    assert main([*args, "-q"]) == 2  # -q: the error only
    captured = capsys.readouterr()
    assert captured.out == "" and "never appeared" in captured.err


def test_follow_of_a_file_that_is_no_radint_result_is_an_error(tmp_path, capsys):
    """Regression (review): `radint plot frame.tif --follow -q` printed nothing and exited 0."""
    pytest.importorskip("matplotlib")
    tif = tmp_path / "frame.tif"
    tif.write_bytes(b"II*\x00" + bytes(200))
    args = ["plot", str(tif), "--follow", "-q", "--interval", "0.05", "--follow-for", "0.3"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "never drawn, not readable as a radint result" in captured.err


def test_follow_without_fitted_peaks_leaves_the_peak_panel_out(stored, tmp_path, capsys):
    """A stream without fitting was reported "not readable yet (... no fitted peaks ...)"."""
    pytest.importorskip("matplotlib")
    png = tmp_path / "f.png"
    args = ["plot", str(stored), "--follow", "--peak-param", "center", "-o", str(png),
            "--interval", "0.05", "--follow-for", "0.3"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "not readable" not in out and "follow: 1 redraw(s)" in out
    assert png.stat().st_size > 1000


def test_a_restarted_stream_moves_everything_made_from_the_previous_stream(tmp_path, small_config):
    """Only stream.h5 and the MIDAS binaries moved to previous-<time>/; stream.caked.hdf,
    stream_lineout.xy, ... made from it by `radint convert` stayed behind."""
    from radint.stream import Pipeline, TcpSource

    before = ["stream.h5", "stream.caked.hdf", "stream.zarr.zip", "stream_lineout.xy",
              "stream_lineout.bin", "stream.png", "lineout.bin", "Int2D.bin", "fit.bin",
              "active_peaks.txt"]  # fmt: skip
    for name in before:
        (tmp_path / name).write_bytes(b"previous run")
    (tmp_path / "stream.zarr").mkdir()
    (tmp_path / "stream.zarr" / "zarr.json").write_text("{}")
    for name in ("notes.txt", "streams.txt", "dark.h5", "stream_params.txt", "stream_mask.tif"):
        (tmp_path / name).write_text("not the stream's")
    p = Pipeline(Integrator(small_config, n_threads=1), [TcpSource(small_config.shape, host="127.0.0.1", port=0)],
                 tmp_path, idle_timeout=20.0)  # fmt: skip
    p.start()
    p.stop()
    assert p.wait(30) is not None
    (kept,) = tmp_path.glob("previous-*")
    assert sorted(q.name for q in kept.iterdir()) == sorted([*before, "stream.zarr"])
    for name in ("notes.txt", "streams.txt", "dark.h5", "stream_params.txt", "stream_mask.tif"):
        assert (tmp_path / name).read_text() == "not the stream's"
    for name in before[1:]:
        assert name == "active_peaks.txt" or not (tmp_path / name).exists(), name


def test_a_first_stream_moves_nothing_of_the_users(tmp_path, small_config):
    """Regression (review): a first stream into a folder holding the user's
    `stream_params.txt` moved it to previous-<time>/ (its name began with `stream_`), and the
    next run found no parameter file."""
    from radint.stream import Pipeline, TcpSource

    for name in ("stream_params.txt", "stream.txt", "active_peaks.txt"):
        (tmp_path / name).write_text("the user's")
    p = Pipeline(Integrator(small_config, n_threads=1), [TcpSource(small_config.shape, host="127.0.0.1", port=0)],
                 tmp_path, idle_timeout=20.0)  # fmt: skip
    p.start()
    p.stop()
    assert p.wait(30) is not None
    assert (tmp_path / "stream_params.txt").read_text() == "the user's"
    assert (tmp_path / "stream.txt").read_text() == "the user's"
    # A file under a name the stream writes (active_peaks.txt, integrator_output.h5, fit.bin)
    # is moved aside, not written over (output sweep: without a stream.h5 beside it, it was).
    (kept,) = tmp_path.glob("previous-*")
    assert [q.name for q in kept.iterdir()] == ["active_peaks.txt"]
    assert (kept / "active_peaks.txt").read_text() == "the user's"


PONI = (
    "poni_version: 2.1\nDetector: Detector\n"
    'Detector_config: {"pixel1": 7.5e-05, "pixel2": 7.5e-05, "max_shape": [300, 260]}\n'
    "Distance: 0.2\nPoni1: 0.0121\nPoni2: 0.0093\nRot1: 0.021\nRot2: -0.013\nRot3: 0.4\n"
    "Wavelength: 1.0e-10\n"
)


def test_from_poni_takes_midas_keys_as_from_midas_params_does(tmp_path):
    """`from_poni('g.poni', RBinSize=2)` raised a raw TypeError (field names only)."""
    from radint import IntegrationConfig
    from radint.exceptions import ParameterError

    path = tmp_path / "g.poni"
    path.write_text(PONI)
    by_field = IntegrationConfig.from_poni(
        path, r_min_px=1, r_max_px=200, r_bin_px=2, eta_bin_deg=10
    )
    by_key = IntegrationConfig.from_poni(path, RMin=1, RMax=200, RBinSize=2, EtaBinSize=10)
    key_d, field_d = by_key.to_dict(), by_field.to_dict()
    assert key_d.pop("set_at") != field_d.pop("set_at")
    assert key_d == field_d
    assert by_key.set_at["RBinSize"][0] == "<override>" and by_key.set_at["Lsd"][0] == str(path)
    mixed = IntegrationConfig.from_poni(path, r_bin_px=2, RMax=200)
    assert (mixed.r_bin_px, mixed.r_max_px) == (2, 200)
    with pytest.raises(ParameterError, match="RBinSze=2.*neither a field.*did you mean RBinSize"):
        IntegrationConfig.from_poni(path, RBinSze=2)


def test_follow_refuses_an_unknown_peak_param_at_once(stored, tmp_path):
    """Review: once the check raised a RadintError, follow_nexus took a bad peak_param for a
    file not readable yet and waited (forever without stop_after_s)."""
    pytest.importorskip("matplotlib")
    from radint.exceptions import InvalidInputError
    from radint.plot import follow_nexus

    with pytest.raises(InvalidInputError, match="peak_param must be one of"):
        follow_nexus(stored, tmp_path / "x.png", peak_param="bogus", interval_s=0.05)


def test_an_output_that_is_a_symlink_is_replaced_as_a_link(tmp_path):
    """Review: a .zarr output that was a symlink to an earlier result store failed after the
    work ("a file is in the way of a folder"); the link is replaced, its target kept."""
    from radint.io.atomic import commit_path, temporary_sibling

    target = tmp_path / "elsewhere.zarr"
    target.mkdir()
    (target / "zarr.json").write_text("{}")
    link = tmp_path / "x.zarr"
    link.symlink_to(target)
    new = temporary_sibling(link)
    new.mkdir()
    (new / "zarr.json").write_text('{"new": 1}')
    commit_path(new, link)
    assert not link.is_symlink() and (link / "zarr.json").read_text() == '{"new": 1}'
    assert (target / "zarr.json").read_text() == "{}"
