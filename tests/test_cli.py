"""The radint command line on the bundled example."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from radint.cli import main
from tests.conftest import EXAMPLES


def test_map_info_integrate(tmp_path, capsys):
    params = str(EXAMPLES / "parameters.txt")
    assert main(["map", params, "RBinSize", "4", "EtaBinSize", "30", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "Map.bin").stat().st_size > 64
    assert (tmp_path / "maskMap.bin").exists()
    assert main(["info", params, "RBinSize", "4"]) == 0
    out = capsys.readouterr().out
    assert "298 radial bins" in out
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    assert main(["info", params, data, "RBinSize", "4"]) == 0
    assert "3 frame(s) of (1679, 1475) uint16; fits" in " ".join(capsys.readouterr().out.split())
    assert main(["info", params, data, "NrPixelsY", "1000"]) == 1
    assert main(["info", params, data, "NrPixelsY", "1679", "NrPixelsZ", "1475"]) == 1
    assert "are NrPixelsY and NrPixelsZ swapped?" in " ".join(capsys.readouterr().out.split())
    assert main(["info", params, str(tmp_path / "missing.h5")]) == 1
    # A TIFF cut short behind its header: info says so, as integrate refuses it (info said it
    # fits; found by a user check).
    import tifffile

    cut = tmp_path / "cut.tif"
    tifffile.imwrite(cut, tifffile.imread(data, key=0))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    capsys.readouterr()
    assert main(["info", params, str(cut)]) == 1
    assert "frame 0 is truncated" in " ".join(capsys.readouterr().out.split())
    args = ["integrate", params, data, "RBinSize", "2", "-o", str(tmp_path), "--format", "nexus,xy"]
    assert main(args) == 0
    with h5py.File(tmp_path / "ceo2_pilatus.h5") as f:
        assert f["entry/azint1d/data/I"].shape == (3, 595)
    lines = (tmp_path / "ceo2_pilatus_lineout.xy").read_text().splitlines()
    assert lines[0].startswith("#") and len([ln for ln in lines if not ln.startswith("#")]) >= 595


def test_info_names_the_pixel_type_of_an_edf(tmp_path, capsys):
    """EDF/CBF learn their pixel type per frame; `radint info` said only "per frame"."""
    fabio = pytest.importorskip("fabio")
    params = str(EXAMPLES / "parameters.txt")
    edf = tmp_path / "f.edf"
    fabio.edfimage.EdfImage(data=np.zeros((1679, 1475), np.int32)).write(str(edf))
    assert main(["info", params, str(edf)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 frame(s) of (1679, 1475) int32 (frame 0; each frame has its own); fits" in out


def test_bad_input_exit_code(tmp_path, capsys):
    bad = tmp_path / "p.txt"
    bad.write_text("NrPixels 10\nRBinSize -1\n")
    assert main(["map", str(bad), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "p.txt:2: RBinSize: must be > 0, got -1" in err


def test_plot(tmp_path, capsys):
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    assert main(["integrate", params, data, "RBinSize", "4", "-o", str(tmp_path), "-q"]) == 0
    assert main(["plot", str(tmp_path / "ceo2_pilatus.h5"), "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Audit: a suffix matplotlib cannot write ended in its traceback (exit 1).
    assert main(["plot", str(tmp_path / "ceo2_pilatus.h5"), "-o", str(tmp_path / "p.txt")]) == 2
    assert "no image format for .txt; use one of" in capsys.readouterr().err
    assert not (tmp_path / "p.txt").exists()
    # Review: checking the suffix closed every figure of the caller's (a notebook's) session.
    import matplotlib.pyplot as plt

    from radint.plot import plot_nexus

    mine = plt.figure()
    plot_nexus(tmp_path / "ceo2_pilatus.h5", tmp_path / "q.png")
    assert plt.fignum_exists(mine.number)
    plt.close(mine)


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    """Audit: with ``-o`` a missing matplotlib ended in a ModuleNotFoundError traceback."""
    import sys

    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    assert main(["integrate", params, data, "RBinSize", "4", "-o", str(tmp_path), "-q"]) == 0
    capsys.readouterr()
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    for extra in ([], ["-o", str(tmp_path / "p.png")]):
        assert main(["plot", str(tmp_path / "ceo2_pilatus.h5"), *extra]) == 2
        assert "pip install 'radint[plot]'" in capsys.readouterr().err


def test_convert_a_stored_result(tmp_path, capsys):
    import h5py
    import numpy as np

    from radint.io import read_nexus

    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    assert main(["integrate", params, data, "RBinSize", "4", "-o", str(tmp_path), "-q"]) == 0
    src = tmp_path / "ceo2_pilatus.h5"
    out = tmp_path / "conv"
    assert main(["convert", str(src), "--format", "midas,xy", "-o", str(out)]) == 0
    stored = read_nexus(src)
    with h5py.File(out / "ceo2_pilatus.caked.hdf") as f:
        assert len(f["IntegrationResult"]) == stored.n_frames
    xy = np.loadtxt(out / "ceo2_pilatus_lineout.xy")
    np.testing.assert_allclose(xy[: stored.n_r, 1], stored.lineout[0], rtol=1e-6, atol=1e-6)
    assert main(["convert", str(src), "--format", "fit", "-o", str(out)]) == 2  # no peaks stored
    assert "no fitted peaks" in capsys.readouterr().err
    # convert takes --compression as integrate does (gzip: readable without hdf5plugin).
    assert (
        main(["convert", str(src), "--format", "nexus", "-o", str(out), "--compression", "gzip"])
        == 0
    )
    with h5py.File(out / "ceo2_pilatus.h5") as f:
        assert f["entry/azint1d/data/I"].compression == "gzip"
    # Regression: without -o, --format nexus rewrote the result itself (a stream's counters lost).
    before = src.read_bytes()
    assert main(["convert", str(src), "--format", "nexus,xy"]) == 2
    assert "the result being converted" in capsys.readouterr().err
    assert src.read_bytes() == before and not (tmp_path / "ceo2_pilatus_lineout.xy").exists()


def test_convert_midas_after_fit_update(tmp_path, capsys):
    """README walk-through: `radint fit --update` then `radint convert --format midas` failed
    ("per-eta peak fits need peaks to fit", naming formats never typed): the stored
    configuration did not say how the peaks were fitted. It now does, so the per-η fits run
    at the same positions; a result whose peaks came from elsewhere gets the other MIDAS files."""
    from radint.fit import FitSpec
    from radint.io import read_nexus, write_result

    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    assert main(["integrate", params, data, "RBinSize", "4", "-o", str(tmp_path), "-q"]) == 0
    src = tmp_path / "ceo2_pilatus.h5"
    assert main(["fit", str(src), "--peaks", "3.172,3.663", "--update", "-q"]) == 0
    stored = read_nexus(src)
    spec = FitSpec.from_config(stored.config)
    assert spec is not None and len(spec.positions_px) == 2
    np.testing.assert_allclose(stored.config.two_theta_deg(np.array(spec.positions_px)),
                               [3.172, 3.663], atol=1e-9)  # fmt: skip
    # The parameter file's fit settings stay (review: --update wrote the CLI's defaults over
    # DoubletSeparation and FitROIPadding, and the per-η fits changed).
    fitted = tmp_path / "fitted"
    args = ["integrate", params, data, "RBinSize", "4", "DoPeakFit", "1", "PeakLocation", "211.8",
            "PeakLocation", "220", "DoubletSeparation", "10", "FitROIPadding", "10",
            "-o", str(fitted), "-q"]  # fmt: skip
    assert main(args) == 0
    refit = fitted / "ceo2_pilatus.h5"
    assert main(["fit", str(refit), "--peaks", "211.8,220", "--unit", "px", "--update", "-q"]) == 0
    kept = read_nexus(refit).config
    assert (kept.doublet_separation, kept.fit_roi_padding) == (10.0, 10)
    out = tmp_path / "conv"
    assert main(["convert", str(src), "--format", "midas,xy", "-o", str(out), "-q"]) == 0
    for suffix in (".caked.hdf", ".zarr.zip", "_fit.bin", "_fit_per_eta.csv", "_caked_peaks.h5"):
        assert (out / f"ceo2_pilatus{suffix}").exists(), suffix
    # Peaks fitted in Python into a result whose configuration fits nothing.
    plain = read_nexus(src)
    plain.config = plain.config.replace(do_peak_fit=False, peak_locations=())
    written = write_result(plain, tmp_path / "plain", ["midas"])
    assert sorted(p.name for p in map(Path, written)) == [
        "ceo2_pilatus.caked.hdf", "ceo2_pilatus.zarr.zip", "ceo2_pilatus_fit.bin"
    ]  # fmt: skip


def test_a_mistyped_option_is_answered_by_its_subcommand(tmp_path, capsys):
    """README walk-through: `radint integrate ... --formt xy` printed the top-level usage and
    no hint; now the subcommand's usage and the closest option."""
    params, data = str(EXAMPLES / "parameters.txt"), str(EXAMPLES / "ceo2_pilatus.tif")
    with pytest.raises(SystemExit) as e:
        main(["integrate", params, data, "--formt", "xy", "-o", str(tmp_path)])
    assert e.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "usage: radint integrate" in err and "did you mean --format?" in err
    assert not list(tmp_path.iterdir())


def test_a_pyfai_poni_file_as_parameters(tmp_path, capsys):
    """`radint integrate g.poni frames... Key value`: pyFAI geometry, MIDAS binning overrides;
    the same numbers as the MIDAS parameter file it came from."""
    from radint import IntegrationConfig
    from radint.poni import write_poni

    config = IntegrationConfig.from_midas_params(EXAMPLES / "parameters.txt").replace(
        distortion=(0.0,) * 15, mask_file="", r_bin_px=4.0
    )  # PONI holds neither distortion nor a mask
    params = tmp_path / "p.txt"
    params.write_text(config.midas_text())
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    poni = write_poni(config, tmp_path / "g.poni")
    assert main(["integrate", str(params), data, "-o", str(tmp_path / "m"), "-q"]) == 0
    rc = main(["integrate", str(poni), data, "RMin", "10", "RMax", "1200", "RBinSize", "4",
               "EtaBinSize", "5", "-o", str(tmp_path / "p"), "-q"])  # fmt: skip
    assert rc == 0
    with h5py.File(tmp_path / "m" / "ceo2_pilatus.h5") as a, \
            h5py.File(tmp_path / "p" / "ceo2_pilatus.h5") as b:  # fmt: skip
        ia, ib = a["entry/azint1d/data/I"][0], b["entry/azint1d/data/I"][0]
    n = min(ia.size, ib.size)
    np.testing.assert_allclose(ib[:n], ia[:n], rtol=1e-6, equal_nan=True)
    bare = tmp_path / "bare.poni"
    bare.write_text("poni_version: 2\nDetector: Detector\nDistance: 0.1\nPoni1: 0.01\n"
                    "Poni2: 0.01\nPixelSize1: 1e-4\nPixelSize2: 1e-4\n")  # fmt: skip
    assert main(["integrate", str(bare), data, "-o", str(tmp_path / "x")]) == 2
    assert "names no detector shape" in capsys.readouterr().err


def test_first_mistakes_are_reported_before_any_work(tmp_path, capsys):
    """An unknown format, a missing input, an output path that is a file: one clear error,
    exit 2, before the map is built (no cache folder left behind)."""
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    out = tmp_path / "o"
    assert main(["integrate", params, data, "--format", "nexus,foo", "-o", str(out)]) == 2
    assert "--format: unknown output format 'foo'" in capsys.readouterr().err
    assert main(["integrate", params, str(tmp_path / "ceo2.tif"), "-o", str(out)]) == 2
    assert "no such file or directory: " in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["batch", params, data, "-o", str(afile)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert not out.exists()


def test_info_on_a_result_without_provenance_and_row_on_parameters(tmp_path, capsys):
    """A result written before provenance was recorded (or from frames that did not say where
    they came from) is described and says so; --row needs a result file."""
    from radint.io import read_provenance, write_nexus
    from tests.io_helpers import make_result

    path = write_nexus(make_result(n_frames=2), tmp_path / "old.h5")
    assert read_provenance(path) is None
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 frame(s), 4 eta x 10 radial bins" in out and "no entry/provenance" in out
    assert main(["info", str(EXAMPLES / "parameters.txt"), "--row", "0"]) == 2
    assert "--row N describes a row of a result file" in capsys.readouterr().err


def test_info_on_a_result_summarises_its_fitted_peaks(tmp_path, capsys):
    """`radint info RESULT` said nothing of entry/peaks: now per slot the converged fits and
    their median centre (in the radial axis's unit) and area, and why the others failed."""
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    out = tmp_path / "out"
    assert main(["integrate", params, data, "--fit-peaks", "3.172,3.663,40", "-o", str(out),
                 "--format", "nexus,zarr", "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    for result in ("ceo2_pilatus.h5", "ceo2_pilatus.zarr"):
        assert main(["info", str(out / result)]) == 0
        lines = capsys.readouterr().out.splitlines()
        summary = next(line for line in lines if "entry/peaks" in line)
        assert "3 slot(s) per frame; 6 of 9 fits converged (3 out_of_range)" in summary
        rows = {int(line.split()[0]): line.split() for line in lines
                if line.strip()[:1].isdigit()}  # fmt: skip
        assert abs(float(rows[0][1]) - 3.172) < 0.01 and rows[0][3] == "3/3"
        assert abs(float(rows[1][1]) - 3.663) < 0.01 and float(rows[1][2]) > 0
        assert rows[2][1:] == ["-", "-", "0/3"]
        # One frame: its source and its own fits, with the area's error.
        assert main(["info", str(out / result), "--row", "1"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert any("row 1 (frame_id 1)" in line for line in lines)
        peaks = [line.split() for line in lines if line.strip().startswith("peak ")]
        assert [p[:3] for p in peaks] == [["peak", "0:", "centre"], ["peak", "1:", "centre"],
                                          ["peak", "2:", "out_of_range"]]  # fmt: skip
        assert abs(float(peaks[0][3]) - 3.172) < 0.01 and "±" in peaks[0]
        assert float(peaks[0][-1]) > 0  # the area's error


def test_fit_formats_without_fitting_are_refused_up_front(tmp_path, capsys):
    """`--format peaks` (fit, fit_per_eta, caked_peaks) with nothing fitted: one error before
    the map is built (it failed per file after the map, as a ValueError)."""
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    out = tmp_path / "out"
    for cmd, fmt in (("integrate", "nexus,peaks"), ("batch", "peaks_per_eta")):
        assert main([cmd, params, data, "--format", fmt, "-o", str(out), "-q"]) == 2
        err = capsys.readouterr().err
        assert f"--format {fmt.removeprefix('nexus,')}: no peaks are fitted" in err
        assert not out.exists()


def test_info_table_shows_where_each_key_was_set_in_80_columns(capsys, monkeypatch):
    """`radint info PARAMS | less` (80 columns): 'set at' was cut to 'examples/parameters.tx…',
    hiding the line; now `line N` (the title names the file) or `<override>:N`, nothing cut."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["info", str(EXAMPLES / "parameters.txt"), "RMax", "800"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    lsd = next(line for line in out.splitlines() if "lsd_um" in line)
    assert "line 6" in lsd
    assert "<override>:1" in next(line for line in out.splitlines() if "r_max_px" in line)
    # The peak count comes from AutoDetectPeaks; a MaxNPeaks beside it is ignored, and the
    # table named its line all the same.
    assert main(["info", str(EXAMPLES / "parameters.txt"), "AutoDetectPeaks", "3",
                 "MaxNPeaks", "7"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "max_n_peaks" in line)
    assert "3" in row and "<override>:1" in row, row


def test_missing_data_folder_is_an_error_not_an_override(tmp_path, capsys, monkeypatch):
    """A data folder named like a parameter key (``Run8``) that does not exist is reported as
    missing (it was taken as an unknown override, dropped with a warning, and the run exited 0);
    an unknown key followed by a number still reads as another MIDAS program's override."""
    import shutil

    monkeypatch.chdir(tmp_path)
    params = str(EXAMPLES / "parameters.txt")
    (tmp_path / "Run7").mkdir()
    shutil.copy(EXAMPLES / "ceo2_pilatus.tif", tmp_path / "Run7" / "a.tif")
    for order in (["Run7", "Run8"], ["Run8", "Run7"]):
        assert main(["-q", "batch", params, *order, "RBinSize", "8", "-o", "out"]) == 1
        assert "Run8: no such file or directory" in capsys.readouterr().err
    assert main(["info", params, "SpaceGroup", "225"]) == 2  # an override radint does not read
    assert "override SpaceGroup 225: not a parameter radint knows" in capsys.readouterr().err


def test_a_quoted_override_is_an_override_not_a_missing_file(tmp_path, capsys):
    """``radint integrate p.txt frames.tif 'RBinSize 0.25'`` (the override quoted as one
    argument) said "no such file or directory: RBinSize 0.25"; it is taken as its words, and a
    file whose name has a space and that exists stays a file."""
    from radint import IntegrationConfig
    from radint.cli import _split_overrides

    assert _split_overrides(["a.tif", "RBinSize 0.25", "RMax 800"]) == (
        ["a.tif"], ["RBinSize 0.25", "RMax 800"],
    )  # fmt: skip
    spaced = tmp_path / "RMax 800"
    spaced.write_bytes(b"")
    assert _split_overrides([str(spaced)]) == ([str(spaced)], [])
    out = tmp_path / "out"
    params = str(EXAMPLES / "parameters.txt")
    frames = str(EXAMPLES / "ceo2_pilatus.tif")
    assert (
        main(["-q", "integrate", params, frames, "RMax 300", "-o", str(out), "--format", "xy"]) == 0
    )
    lineout = np.loadtxt(next(out.glob("*_lineout.xy")), comments="#")
    n_r = (
        len(IntegrationConfig.from_midas_params(params).replace(r_max_px=300.0).bin_edges()[0]) - 1
    )
    assert lineout.shape[0] == 3 * n_r  # three frames' lines


def test_a_file_override_with_a_space_is_refused_by_name(tmp_path):
    """Review: ``MaskFile "my mask.tif"`` was cut at the space ("MaskFile: .../my: cannot
    read"), and ``"MaskFile my mask.tif"`` (one argument) said "no such file: mask.tif"."""
    from radint.cli import _split_overrides
    from radint.exceptions import RadintError

    (tmp_path / "my mask.tif").write_bytes(b"")
    spaced = str(tmp_path / "my mask.tif")
    for tokens in (["a.tif", "MaskFile", spaced], ["a.tif", f"MaskFile {spaced}"]):
        with pytest.raises(RadintError, match=r"MaskFile '.*my mask.tif': a path with a space"):
            _split_overrides(tokens)
    assert _split_overrides(["MaskFile", "m.tif", spaced]) == ([spaced], ["MaskFile m.tif"])


def test_map_and_stream_refuse_what_is_not_an_override(tmp_path, capsys):
    """``radint map`` / ``radint stream`` take no data: a stray word or a lower-case key is an
    error naming it (both were dropped silently)."""
    params = str(EXAMPLES / "parameters.txt")
    for extra in (["rmax", "20"], ["RMax", "20", "extra.tif"]):
        assert main(["map", params, *extra, "-o", str(tmp_path)]) == 2
        assert "not a 'Key value' parameter override" in capsys.readouterr().err
    assert main(["stream", params, "extra.tif", "-o", str(tmp_path), "--timeout", "1"]) == 2
    assert "'extra.tif'" in capsys.readouterr().err


def test_batch_takes_the_rest_of_an_integrator_py_command_line(tmp_path, capsys):
    """integrator.py flags for MIDAS's own steps run (nothing to do in radint); those that would
    change the result here are refused naming what radint does instead."""
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    flags = ["-convertFiles", "1", "-mapDetector", "1", "-numFrameChunks", "-1", "-logLevel",
             "WARNING", "-shortNames", "1", "-preProcThresh", "-1", "-csvOutput", "0"]  # fmt: skip
    argv = ["-q", "batch", "-paramFN", params, "-dataFN", data, "RBinSize", "8"]
    assert main([*argv, *flags, "-resultFolder", str(tmp_path)]) == 0
    assert (tmp_path / "ceo2_pilatus.h5").exists()
    for refused in (["-peakFit"], ["-preProcThresh", "20"], ["-shortNames", "0"]):
        assert main([*argv, *refused, "-resultFolder", str(tmp_path / "x")]) == 2
        assert "is not supported" in capsys.readouterr().err


SMALL = (
    "NrPixelsY 53\nNrPixelsZ 37\npx 172\nLsd 500000\nBC 26 18\nWavelength 0.17\nRMin 1\n"
    "RMax 30\nRBinSize 1\nEtaBinSize 10\n"
)


def test_frames_of_another_shape_are_refused_before_the_map_is_built(tmp_path, capsys):
    """`NrPixelsY 60000 NrPixelsZ 60000` with 37 x 53 frames built a 3.6e9-pixel map first and
    aborted in Rust (memory allocation failed, rc 134)."""
    import tifffile

    (tmp_path / "p.txt").write_text(SMALL)
    tifffile.imwrite(tmp_path / "ok.tif", np.full((37, 53), 100, "u2"))
    for command in ("integrate", "batch"):
        argv = [command, str(tmp_path / "p.txt"), str(tmp_path / "ok.tif"), "NrPixelsY", "60000",
                "NrPixelsZ", "60000", "-o", str(tmp_path / "o")]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"radint: error: {tmp_path / 'ok.tif'}: frames of shape (37, 53), but NrPixelsZ x "
            "NrPixelsY is (60000, 60000) (<override>:2: NrPixelsZ, <override>:1: NrPixelsY); "
            "no map built"
        )
        assert not (tmp_path / "o" / ".radint-cache").exists()


def test_a_tiff_cut_short_behind_its_header_is_refused_before_the_map(tmp_path, capsys):
    """Regression (review): the header probe passed a TIFF whose pixels were cut off (its
    header intact), so the map was built before "frame 0 is truncated" (exit 1)."""
    import tifffile

    (tmp_path / "p.txt").write_text(SMALL)
    rng = np.random.default_rng(0)
    for kind, kw in (("plain", {}), ("big-endian", {"byteorder": ">"}),
                     ("zlib", {"compression": "zlib"})):  # fmt: skip
        tifffile.imwrite(tmp_path / "whole.tif", rng.integers(0, 60000, (37, 53), "u2"), **kw)
        data = (tmp_path / "whole.tif").read_bytes()
        (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
        out = tmp_path / "o"
        argv = ["integrate", str(tmp_path / "p.txt"), str(tmp_path / "cut.tif"), "-o", str(out)]
        assert main(argv) == 2, kind
        err = capsys.readouterr().err
        assert "cut.tif: frame 0 is truncated" in err and "no map built" in err, (kind, err)
        assert not out.exists()


def test_a_map_too_big_for_memory_is_an_error_not_an_abort(tmp_path):
    """The map build's large allocations are fallible: under an 8 GB address-space limit a
    60000 x 60000 detector fails with a message naming NrPixelsY/NrPixelsZ (it aborted)."""
    import subprocess
    import sys

    import pytest

    resource = pytest.importorskip("resource")
    (tmp_path / "p.txt").write_text(SMALL)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 * 10**9, 8 * 10**9))

    argv = [sys.executable, "-c", "import sys; from radint.cli import main; sys.exit(main())",
            "map", "p.txt", "NrPixelsY", "60000", "NrPixelsZ", "60000", "-o", "m"]  # fmt: skip
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit,
                         timeout=300)  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        "radint: error: <override>:1: NrPixelsY: the detector map cannot be built: the pixel "
        "corners' positions need 57.602 GB, which cannot be allocated (a memory limit such as "
        "ulimit -v, or too little free memory for this detector and binning); NrPixelsY 60000 "
        "(command line), NrPixelsZ 60000 (command line): check these values if they are not the "
        "detector's"
    )


def test_wavelength_zero_writes_no_nan_energy(tmp_path, caplog):
    """`Wavelength 0` (MIDAS's "none") wrote energy NaN; now both 0, and a warning."""
    import tifffile

    (tmp_path / "p.txt").write_text(SMALL)
    tifffile.imwrite(tmp_path / "ok.tif", np.full((37, 53), 100, "u2"))
    argv = ["integrate", str(tmp_path / "p.txt"), str(tmp_path / "ok.tif"), "Wavelength", "0",
            "-o", str(tmp_path / "o"), "-q"]  # fmt: skip
    with caplog.at_level("WARNING", logger="radint"):
        assert main(argv) == 0
    assert "<override>:1: Wavelength: 0 means no wavelength" in caplog.text
    with h5py.File(tmp_path / "o" / "ok.h5") as f:
        mono = f["entry/azint1d/instrument/monochromator"]
        assert (mono["wavelength"][()], mono["energy"][()]) == (0.0, 0.0)


def test_non_numeric_frames_fail_cleanly_and_later_files_go_on(tmp_path, small_config):
    """Regression: a variable-length (object) HDF5 dataset crashed `radint integrate` with a
    segfault (a folder run lost every later file; with -nCPUs 2 the pool reported the worker
    "killed"); `radint info` said it "fits". Now it fails with one line naming the file and
    its type, the other files are integrated. Run in a subprocess: a crash must not take the
    test session with it."""
    import subprocess
    import sys

    import tifffile

    params = tmp_path / "p.txt"
    params.write_text(small_config.midas_text())
    d = tmp_path / "dir"
    d.mkdir()
    for n in "ac":
        tifffile.imwrite(d / f"{n}.tif", np.full(small_config.shape, 100, np.uint16))
    with h5py.File(d / "b.h5", "w") as f:
        f.create_dataset("exchange/data", shape=small_config.shape, dtype=h5py.vlen_dtype("i4"))
    cli = [sys.executable, "-m", "radint.cli"]
    for extra in ([], ["-nCPUs", "2"]):
        out = tmp_path / f"out{len(extra)}"
        command = "batch" if extra else "integrate"
        run = subprocess.run([*cli, command, str(params), str(d), "-o", str(out), *extra],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 1, run.stderr
        assert "b.h5:exchange/data: pixels of type object (variable-length" in run.stderr
        assert "died" not in run.stderr + run.stdout
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
            "a.h5", "c.h5"]  # fmt: skip
    info = subprocess.run([*cli, "info", str(params), str(d / "b.h5")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert info.returncode == 1
    assert "fits" not in info.stdout and "pixels of type object" in " ".join(info.stdout.split())


def test_an_empty_format_list_is_refused(tmp_path, capsys):
    """Regression: --format "" (an unset shell variable) or "," integrated everything, wrote
    nothing and exited 0."""
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    for fmt in ("", ",", " , "):
        for command in ("integrate", "batch"):
            out = tmp_path / "out"
            assert main([command, params, data, "--format", fmt, "-o", str(out)]) == 2
            assert "no output format given" in capsys.readouterr().err
            assert not out.exists()
    assert main(["integrate", params, data, "RBinSize", "8", "-o", str(tmp_path), "-q"]) == 0
    assert main(["convert", str(tmp_path / "ceo2_pilatus.h5"), "--format", ","]) == 2
    assert "no output format given" in capsys.readouterr().err
    from radint.io import read_nexus, write_result
    from radint.io.write import expand_formats

    with pytest.raises(ValueError, match="no output format given"):
        expand_formats([])
    with pytest.raises(ValueError, match="no output format given"):
        write_result(read_nexus(tmp_path / "ceo2_pilatus.h5"), tmp_path / "w", [""])
    assert not (tmp_path / "w").exists()


def test_timestamps_are_the_integration_time_and_survive_convert(tmp_path, monkeypatch):
    """Regression: ``timestamp`` ("time the frame was integrated") was the time each output was
    written (the .h5 and .zarr of one run differed), and `radint convert` replaced it and
    reduction/date with the conversion's time. Write and convert now run "later" (time.time
    moved on by an hour once integration is done): the stored times do not move."""
    import time
    from types import SimpleNamespace

    import zarr

    import radint.io.nexus as nexus

    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    before = time.time()
    real_time = time.time
    later = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    later["time"] = lambda: real_time() + 3600
    monkeypatch.setattr(nexus, "time", SimpleNamespace(**later))  # the writers' clock only
    monkeypatch.setattr(nexus, "_now_iso", lambda: "2099-01-01T00:00:00.000000+00:00")
    args = ["integrate", params, data, "RBinSize", "10", "--format", "nexus,zarr", "-q"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    path = "entry/azint1d/data/timestamp"
    with h5py.File(tmp_path / "out" / "ceo2_pilatus.h5") as f:
        stamps = f[path][()]
        date = f["entry/azint1d/reduction/date"][()].decode()
        assert f[path].attrs["long_name"].startswith("time the frame was integrated")
    assert stamps.shape == (3,) and np.all((stamps >= before) & (stamps <= real_time()))
    assert date.startswith("2099")  # written by the writer (the reduction's date)
    same_run = zarr.open_group(str(tmp_path / "out" / "ceo2_pilatus.zarr"), mode="r")
    np.testing.assert_array_equal(same_run[path][()], stamps)
    monkeypatch.setattr(nexus, "_now_iso", lambda: "2100-01-01T00:00:00.000000+00:00")
    src = str(tmp_path / "out" / "ceo2_pilatus.h5")
    assert main(["convert", src, "--format", "zarr,nexus", "-o", str(tmp_path / "conv")]) == 0
    conv = zarr.open_group(str(tmp_path / "conv" / "ceo2_pilatus.zarr"), mode="r")
    np.testing.assert_array_equal(conv[path][()], stamps)
    assert str(np.asarray(conv["entry/azint1d/reduction/date"][()])) == date
    with h5py.File(tmp_path / "conv" / "ceo2_pilatus.h5") as f:
        np.testing.assert_array_equal(f[path][()], stamps)
        assert f["entry/azint1d/reduction/date"][()].decode() == date


def test_pixel_weights_fraction_with_compat_is_refused(tmp_path, capsys):
    # `PixelWeights fraction` with --compat midas-cpu was dropped silently while the NeXus
    # output said pixel_weights=fraction; Integrator(compat=, pixel_weights="fraction") refused.
    from radint import IntegrationConfig, Integrator, InvalidInputError
    from tests.conftest import SMALL

    params = tmp_path / "p.txt"
    params.write_text(SMALL + "PixelWeights fraction\n")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    for compat in ("midas-cpu", "midas-gpu"):
        code = main(["integrate", str(params), data, "-o", str(tmp_path / "out"), "--compat",
                     compat, "-q"])  # fmt: skip
        assert code == 2
        err = capsys.readouterr().err
        assert "p.txt:23: PixelWeights fraction is radint's pyFAI-like weighting" in err
        assert f"compat={compat!r}" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    config = IntegrationConfig.from_midas_params(params)
    with pytest.raises(InvalidInputError, match="p.txt:23: PixelWeights fraction"):
        Integrator(config, compat="midas-cpu")
    # On the command line too, naming it.
    code = main(["integrate", str(EXAMPLES / "parameters.txt"), data, "PixelWeights", "fraction",
                 "-o", str(tmp_path / "out2"), "--compat", "midas-cpu", "-q"])  # fmt: skip
    assert code == 2 and "<override>:1: PixelWeights fraction" in capsys.readouterr().err


def test_a_malformed_dask_address_is_one_line_and_exit_2(tmp_path, capsys):
    """`--dask local:abc` raised a ValueError traceback from the cluster setup, `local:0` waited
    for workers forever, `localhost:8786` started a local cluster of 8786 workers; now each
    malformed value is refused before anything runs (nothing created)."""
    from radint.batch.distributed import parse_address

    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    out = tmp_path / "o"
    for value, says in (
        ("local:abc", "--dask local:N needs a whole number N >= 1, got 'abc'"),
        ("local:0", "--dask local:N needs a whole number N >= 1, got '0'"),
        ("tcp://", "--dask 'tcp://': expected local:N or a scheduler's address HOST:PORT"),
        (":8786", "expected local:N or a scheduler's address HOST:PORT"),
        ("tcp://node1:99999", "port 99999 is not in 1..65535"),
    ):
        assert main(["batch", params, data, "-o", str(out), "--dask", value]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    assert parse_address("local") == 2 and parse_address("local:3") == 3
    for scheduler in ("localhost:8786", "tcp://10.0.0.5:8786", "tls://[::1]:8786"):
        assert parse_address(scheduler) is None


def test_a_misspelled_override_is_an_error_not_a_warning(tmp_path, capsys):
    """`RBinSzie 0.5` on the command line was warned about and ignored: the run exited 0 with
    the default binning. A key typed there is an error in every command taking overrides;
    unknown keys inside the parameter file stay tolerated."""
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    out = tmp_path / "o"
    for argv in (
        ["integrate", params, data, "RBinSzie", "0.5", "-o", str(out)],
        ["batch", params, data, "-RBinSzie", "0.5", "-o", str(out)],
        ["map", params, "RBinSzie", "0.5", "-o", str(out)],
        ["info", params, "RBinSzie", "0.5"],
        ["stream", params, "RBinSzie", "0.5", "-o", str(out), "--timeout", "1"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "override RBinSzie 0.5: not a parameter radint knows (did you mean RBinSize?)" in err
        assert not out.exists()
    tolerant = tmp_path / "p.txt"
    tolerant.write_text((EXAMPLES / "parameters.txt").read_text() + "SpaceGroup 225\n")
    assert main(["info", str(tolerant)]) == 0


def test_batch_refuses_two_different_output_folders(tmp_path, capsys, monkeypatch):
    """`-o c2 -resultFolder c3` silently wrote to c3; two folders are refused naming both, the
    same folder given twice is fine."""
    monkeypatch.chdir(tmp_path)
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    argv = ["-q", "batch", params, data, "RBinSize", "8"]
    assert main([*argv, "-o", "c2", "-resultFolder", "c3"]) == 2
    err = capsys.readouterr().err
    assert "-o c2 and -resultFolder c3 name two different output folders" in err
    assert not (tmp_path / "c2").exists() and not (tmp_path / "c3").exists()
    assert main([*argv, "-o", "c2", "-resultFolder", str(tmp_path / "c2")]) == 0
    assert (tmp_path / "c2" / "ceo2_pilatus.h5").exists()


def test_out_name_with_an_output_ending_is_not_doubled(tmp_path):
    """`-outName foo.h5` wrote `foo.h5.h5`: the ending of an output format is taken off."""
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    argv = ["-q", "batch", params, data, "RBinSize", "8", "--format", "nexus,xy"]
    assert main([*argv, "-o", str(tmp_path), "-outName", "foo.h5"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "foo.h5", "foo_lineout.xy",
    ]  # fmt: skip
    assert main([*argv, "-o", str(tmp_path / "b"), "-outName", "bar.caked.hdf"]) == 0
    assert (tmp_path / "b" / "bar.h5").exists()
    assert main([*argv, "-o", str(tmp_path / "c"), "-outName", ".h5"]) == 2


def test_messages_name_the_option_and_the_folder(tmp_path, capsys):
    """Messages a user sweep found unclear: --peaks with --auto, -j 0 (named n_threads), an
    unwritable -o (named a hidden temporary file), a missing result (h5py's errno text),
    `info RESULT --map` (--map ignored), a transposed dark (no hint)."""
    import tifffile

    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    out = tmp_path / "r"
    assert main(["integrate", params, data, "RBinSize", "8", "-o", str(out), "-q"]) == 0
    result = str(out / "ceo2_pilatus.h5")
    assert main(["fit", result, "--peaks", "3.17", "--auto", "4"]) == 2
    assert "--peaks and --auto exclude each other" in capsys.readouterr().err
    for command in (["integrate", params, data], ["batch", params, data], ["map", params]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "-j", "0", "-o", str(tmp_path / "x")])
        assert stop.value.code == 2
        assert "-j/--threads: expected a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # -nCPUs 0 ran one process without a word
        main(["batch", params, data, "-nCPUs", "0", "-o", str(tmp_path / "x")])
    assert stop.value.code == 2
    assert "-nCPUs: expected a positive integer, got 0" in capsys.readouterr().err
    # Review: --port 70000 gave a traceback after the map was built (send: "nothing
    # listens"), --fit-auto 0 was taken as not given, --timeout -1 "no frame for -1.0 s".
    for argv, said in (
        (["stream", params, "-o", str(tmp_path / "s"), "--port", "70000"],
         "--port: expected a port in 0..65535, got 70000"),
        (["send", params, data, "--port", "0"], "--port: expected a port in 1..65535, got 0"),
        (["integrate", params, data, "--fit-auto", "0"],
         "--fit-auto: expected a positive integer, got 0"),
        (["stream", params, "-o", str(tmp_path / "s"), "--timeout", "-1"],
         "--timeout: expected a positive number, got -1"),
        (["stream", params, "-o", str(tmp_path / "s"), "--max-frames", "-1"],
         "--max-frames: expected a positive integer, got -1"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and said in capsys.readouterr().err, argv
    afile = tmp_path / "afile"
    afile.write_text("")
    blocked = afile / "sub"  # a folder that cannot be made (a file is in the way), even as root
    for argv in (
        ["map", params, "RBinSize", "8", "-o", str(blocked)],
        ["fit", result, "--auto", "4", "-o", str(blocked)],
        ["convert", result, "--format", "xy", "-o", str(blocked)],
        ["integrate", params, data, "-o", str(blocked)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"cannot write to {blocked}: Not a directory" in err and ".partial" not in err
    for argv in (
        ["plot", "nosuch.h5"],
        ["convert", "nosuch.h5", "--format", "xy"],
        ["fit", "nosuch.h5", "--auto", "3"],
    ):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == "radint: error: nosuch.h5: no such file"
    assert main(["info", result, "--map"]) == 2
    assert "--map builds the map of a parameter file" in capsys.readouterr().err
    dark = tmp_path / "darkbad.tif"
    tifffile.imwrite(dark, np.zeros((1475, 1679), "u2"))  # (NrPixelsY, NrPixelsZ)
    assert main(["integrate", params, data, "--dark", str(dark), "-o", str(tmp_path / "d")]) == 2
    assert "(its transpose: is the file stored transposed" in capsys.readouterr().err


def test_early_errors_leave_no_output_folder(tmp_path, capsys, monkeypatch):
    """A bad dark, a missing --midas-map folder, --backend cuda without CUDA: refused before
    the map is built and without an empty -o folder left behind; the CUDA message gives the
    install hint once (it was repeated)."""
    import tifffile

    from radint import integrator

    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    dark = tmp_path / "darkbad.tif"
    tifffile.imwrite(dark, np.zeros((10, 10), "u2"))
    hint = "pip install 'radint[gpu]' (CUDA 12) or 'radint[gpu-cuda13]' (CUDA 13)"
    monkeypatch.setattr(
        integrator,
        "_cuda_status",
        lambda: (False, f"CuPy is not installed; install it with {hint}"),
    )
    out = tmp_path / "o" / "deeper"
    for command in ("integrate", "batch"):
        for extra, says in (
            (["--dark", str(dark)], "darkbad.tif"),
            (["--midas-map", str(tmp_path / "nosuchdir")], "nosuchdir: no such folder"),
            (["--backend", "cuda"], "backend='cuda' is not available"),
        ):
            assert main([command, params, data, *extra, "-o", str(out)]) == 2, (command, extra)
            err = capsys.readouterr().err
            assert says in err and err.count("pip install") <= 1
            assert not (tmp_path / "o").exists(), (command, extra)


def test_unreadable_inputs_are_refused_before_the_map_is_built(tmp_path, capsys):
    """A wrong --dataset, a dataset of strings, a truncated TIFF, a text file named .h5, a raw
    file without --raw-dtype: found only after the map was built (seconds, and a cache saved).
    Now their headers are opened first: exit 2, no map, no output folder. A run with one good
    file still integrates it and reports the bad one."""
    import tifffile

    (tmp_path / "p.txt").write_text(SMALL)
    params = str(tmp_path / "p.txt")
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.full((37, 53), 100, "u2"))
    with h5py.File(tmp_path / "frames.h5", "w") as f:
        f["exchange/data"] = np.zeros((1, 37, 53), "u2")
    with h5py.File(tmp_path / "strings.h5", "w") as f:
        f["exchange/data"] = np.array([b"abc", b"def"])
    whole = tmp_path / "two.tif"
    tifffile.imwrite(whole, np.zeros((2, 37, 53), "u2"))
    (tmp_path / "trunc.tif").write_bytes(whole.read_bytes()[:200])
    (tmp_path / "text.h5").write_text("not hdf5")
    np.zeros((37, 53), "u2").tofile(tmp_path / "f.raw")
    out = tmp_path / "o"
    for name, extra, says in (
        ("frames.h5", ["--dataset", "wrong/path"], "dataset 'wrong/path' does not exist"),
        ("strings.h5", [], "byte string"),
        ("trunc.tif", [], "truncated TIFF"),
        ("text.h5", [], "not a readable HDF5 file"),
        ("f.raw", [], "--raw-dtype"),
    ):
        for command in ("integrate", "batch"):
            argv = [command, params, str(tmp_path / name), *extra, "-o", str(out)]
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert says in err and len(err.strip().splitlines()) == 1, err
            assert not out.exists(), argv
    for bad in ("trunc.tif", "strings.h5"):
        for command in ("integrate", "batch"):
            where = out / command / bad
            argv = ["-q", command, params, str(tmp_path / bad), str(good), "-o", str(where)]
            assert main(argv) == 1, argv
            assert (where / "good.h5").exists() and bad in capsys.readouterr().err


def test_version_says_how_the_core_was_built_and_what_gpu_there_is(capsys):
    """STYLE: `radint --version` carries what a bug report needs: version, build profile,
    rayon threads, the gather kernels, and CuPy / GPU (or why there is none)."""
    from radint import __version__, _core

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    info = _core.build_info()
    assert out.startswith(f"radint {__version__} (Python ")
    assert f"core: {info['profile']} build, {info['rayon_threads']} rayon threads" in out
    assert info["profile"] in ("release", "debug") and info["rayon_threads"] >= 1
    assert "\nGPU: " in out


def test_python_dash_m_radint_is_the_radint_command():
    """`python -m radint` runs the CLI (a build tree on PYTHONPATH has no entry point)."""
    import subprocess
    import sys

    from radint import __version__

    run = subprocess.run([sys.executable, "-m", "radint", "--version"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"radint {__version__} (Python ")
    bad = subprocess.run([sys.executable, "-m", "radint", "integrate"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "usage: radint integrate" in bad.stderr


def test_map_refuses_a_map_no_pixel_reaches(tmp_path, capsys):
    """Audit: ``radint map`` wrote an empty Map.bin (exit 0) for an η range off the detector,
    which ``radint integrate`` refuses; it refuses too, saying what misses, and writes nothing."""
    params = str(EXAMPLES / "parameters.txt")
    out = tmp_path / "m"
    assert main(["map", params, "RBinSize", "4", "EtaMin", "100", "EtaMax", "120",
                 "BC", "0", "0", "-o", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no detector pixel reaches a bin" in err and "check EtaMin/EtaMax" in err
    assert not (out / "Map.bin").exists()
    # integrate and batch refuse it too, and leave no -o folder with a cached map behind.
    frame = EXAMPLES / "ceo2_pilatus.tif"
    for command, extra in (("integrate", []), ("batch", []),
                           ("integrate", ["PixelWeights", "fraction"])):  # fmt: skip
        out = tmp_path / command
        assert main([command, params, str(frame), "RMin", "2000", "RMax", "3000", *extra,
                     "-o", str(out)]) == 2  # fmt: skip
        assert "no detector pixel reaches a bin" in capsys.readouterr().err
        assert not out.exists()


def test_a_second_interrupt_lets_the_clean_up_finish_and_a_third_stops_it(capfd):
    """Found by a user check: an impatient second Ctrl-C during a batch's clean-up left output
    sets half renamed and .partial files behind (and could hang the process at exit) under a
    message saying all was removed. The second signal is only answered; a third stops at once
    (the first may have landed where Python drops it)."""
    import signal

    from radint import cli

    cli._SIGNALS["count"] = 0
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        cli._interrupt(signal.SIGINT, None)
    cli._interrupt(signal.SIGTERM, None)  # returns
    assert "stopping: unfinished outputs are being removed (one more" in capfd.readouterr().err
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        cli._interrupt(signal.SIGINT, None)


def test_integrate_off_a_terminal_prints_progress_lines(tmp_path, capsys, monkeypatch):
    """Found by a user check: off a terminal (a batch job's log) a 5 000-frame file ran 105 s
    without a line; progress now comes every HEARTBEAT_S there."""
    from radint import cli

    monkeypatch.setattr(cli, "HEARTBEAT_S", 0.0)
    params = str(EXAMPLES / "parameters.txt")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    assert main(["integrate", params, data, "RBinSize", "4", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # "3 of 3 frames" once the files' frames are counted (beside the run, so maybe not yet).
    assert re.search(r"radint integrate: 3( of 3)? frames in", out) and "0/1 file(s) done" in out
    assert main(["integrate", params, data, "RBinSize", "4", "-o", str(tmp_path / "q"), "-q"]) == 0
    assert "frames in" not in capsys.readouterr().out
    # radint batch reports files as they finish: a line every HEARTBEAT_S in between.
    monkeypatch.setattr(cli, "HEARTBEAT_S", 0.05)
    assert main(["batch", params, data, "RBinSize", "4", "-o", str(tmp_path / "b")]) == 0
    assert "radint batch: 0/1 file(s) done, 0 frames; " in capsys.readouterr().out


def test_batch_counts_frames_within_files(tmp_path, monkeypatch):
    """Audit (large jobs): `radint batch` counted whole files only: its heartbeat said "1/2
    file(s) done, 500 frames" while a 6000-frame file was nearly through, and the bar's ETA sat
    still. Worker processes now count the frames they integrate for the parent (in-process
    runs too), and the files' frames are counted from their headers for the total."""
    from radint.batch import run_batch
    from radint.config import IntegrationConfig

    config = IntegrationConfig.from_midas_params(EXAMPLES / "parameters.txt").with_overrides(
        ["RBinSize 4"]
    )
    data = []
    for k in range(3):
        (tmp_path / f"f{k}.tif").write_bytes((EXAMPLES / "ceo2_pilatus.tif").read_bytes())
        data.append(str(tmp_path / f"f{k}.tif"))
    for n_procs in (1, 2):
        seen: list[int] = []
        outcomes = run_batch(config, data, tmp_path / f"out{n_procs}", n_procs=n_procs,
                             n_threads=1, on_frames=seen.append)  # fmt: skip
        assert all(o.ok for o in outcomes)
        assert sum(seen) == 9 and all(n > 0 for n in seen), (n_procs, seen)
    from radint import cli

    lines: list[str] = []
    monkeypatch.setattr(cli, "HEARTBEAT_S", 0.02)
    monkeypatch.setattr(cli, "_echo", lines.append)
    assert main(["batch", str(EXAMPLES / "parameters.txt"), *data, "RBinSize", "4", "-o",
                 str(tmp_path / "cli")]) == 0  # fmt: skip
    # The count beside the run has ended with it (a thread left inside h5py as the
    # interpreter shut down hung or crashed an interrupted run).
    import threading

    assert not [t for t in threading.enumerate() if t.name == "radint-count" and t.is_alive()]
    beats = [line for line in lines if "integrated" in line]
    assert beats and all(re.search(r"; \d+( of 9)? integrated, ", b) for b in beats), beats


def test_two_theta_bins_with_midas_cpu_compat_are_refused(tmp_path, capsys):
    """Audit (MIDAS C sweep): TthMin/TthMax/TthBinSize under --compat midas-cpu were integrated
    in 2θ bins (140 of them), while DetectorMapper and IntegratorZarrOMP ignore the keys and
    bin in R (390): "C's numbers" that C never writes. Refused now, naming the line; the GPU
    compat (midas-integrate has 2θ bins), no compat and an explicit pixel_weights keep them."""
    from radint import IntegrationConfig, Integrator, InvalidInputError
    from tests.conftest import SMALL

    params = tmp_path / "p.txt"
    params.write_text(SMALL + "TthMin 1\nTthMax 5\nTthBinSize 0.05\n")
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    code = main(["integrate", str(params), data, "-o", str(tmp_path / "out"), "--compat",
                 "midas-cpu", "-q"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "p.txt:25: TthBinSize 0.05: DetectorMapper and IntegratorZarrOMP have no 2θ bins" in err
    config = IntegrationConfig.from_midas_params(params)
    for weights in ("config", "area"):
        with pytest.raises(InvalidInputError, match="p.txt:25: TthBinSize 0.05: Detector"):
            Integrator(config, compat="midas-cpu", pixel_weights=weights)
    for compat in ("midas-gpu", None):
        assert Integrator(config, compat=compat).map.n_r == 80


def test_map_cache_is_shared_between_output_folders(tmp_path):
    """Audit (large jobs): the map cache lived in each output folder, so one folder per scan
    rebuilt the map every time (a 9M detector: 16 s and 826 MiB a scan). `--map-cache DIR`
    names one folder for integrate, batch and stream; later scans reuse its map (the file is
    not written again) and leave no cache of their own."""
    data = str(EXAMPLES / "ceo2_pilatus.tif")
    params = str(EXAMPLES / "parameters.txt")
    shared = tmp_path / "maps"
    runs = [["integrate", params, data, "-o", str(tmp_path / "scan1")],
            ["batch", params, data, "-o", str(tmp_path / "scan2")],
            ["integrate", params, data, "-o", str(tmp_path / "scan3")]]  # fmt: skip
    stamp = None
    for k, run in enumerate(runs):
        assert main([*run, "--map-cache", str(shared), "-q"]) == 0
        (cached,) = shared.glob("radint-map-*.npz")
        stamp = stamp or cached.stat().st_mtime_ns
        assert cached.stat().st_mtime_ns == stamp, k  # reused, not rebuilt
        assert not (tmp_path / f"scan{k + 1}" / ".radint-cache").exists()
        assert list((tmp_path / f"scan{k + 1}").glob("*.h5")), k
    (tmp_path / "afile").write_text("")  # review: batch -nCPUs 2 failed late, "Not a directory"
    for command, extra in (("integrate", []), ("batch", ["-nCPUs", "2"])):
        assert main([command, params, data, "-o", str(tmp_path / "x"), *extra, "--map-cache",
                     str(tmp_path / "afile"), "-q"]) == 2  # fmt: skip
        assert not (tmp_path / "x").exists()
