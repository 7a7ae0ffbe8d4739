"""Readers: round trips for every format, and the error messages for bad input."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from numcodecs import Blosc
from zarr.storage import ZipStore

from radint.io import ReaderError, count_frames, open_frames, read_dark, read_frames

RNG = np.random.default_rng(1234)
STACK = RNG.integers(0, 60000, size=(4, 12, 9), dtype=np.uint16)


def frames_of(path: Path, **kw) -> np.ndarray:
    return np.stack([f.data for f in read_frames(path, **kw)])


def test_tiff_single_and_multi_page(tmp_path: Path) -> None:
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, STACK[0])
    multi = tmp_path / "many.tiff"
    tifffile.imwrite(multi, STACK, photometric="minisblack")
    np.testing.assert_array_equal(frames_of(single), STACK[:1])
    np.testing.assert_array_equal(frames_of(multi), STACK)
    assert count_frames(multi) == 4
    got = list(read_frames(multi, frames=[-1]))
    assert got[0].index == 3 and got[0].source == str(multi)


def test_truncated_tiff_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, STACK, photometric="minisblack")
    blob = good.read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ReaderError, match=r"cut\.tif.*truncated"):
        list(read_frames(bad))
    header_only = tmp_path / "header.tif"
    header_only.write_bytes(blob[:100])
    with pytest.raises(ReaderError, match=r"header\.tif"):
        list(read_frames(header_only))


def test_a_missing_file_is_a_file_not_found_error(tmp_path: Path) -> None:
    """Audit: a missing frame file was a ReaderError only, which ``except FileNotFoundError``
    (as a missing parameter file allows) did not catch."""
    for read in (lambda p: list(read_frames(p)), read_dark):
        with pytest.raises(FileNotFoundError, match="nope.tif: no such file") as e:
            read(tmp_path / "nope.tif")
        assert isinstance(e.value, ReaderError)


def test_hdf5_default_named_and_missing_dataset(tmp_path: Path) -> None:
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("exchange/data", data=STACK, chunks=(1, 12, 9), compression="gzip")
        f["entry/image"] = STACK[2]
    np.testing.assert_array_equal(frames_of(path), STACK)
    np.testing.assert_array_equal(frames_of(path, dataset="entry/image"), STACK[2:3])
    with pytest.raises(ReaderError, match=r"scan\.h5: dataset 'entry/nope' does not exist") as e:
        list(read_frames(path, dataset="entry/nope"))
    assert "exchange/data (4, 12, 9)" in str(e.value)


def test_wrong_shape_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["exchange/data"] = STACK
    with pytest.raises(
        ReaderError,
        match=r"scan\.h5:exchange/data: frame 0 has shape \(12, 9\), expected \(10, 10\)",
    ):
        list(read_frames(path, shape=(10, 10)))


def test_hdf5_bitshuffle_lz4_through_hdf5plugin(tmp_path: Path) -> None:
    hdf5plugin = pytest.importorskip("hdf5plugin")
    path = tmp_path / "eiger.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "entry/data/data", data=STACK, chunks=(1, 12, 9), **hdf5plugin.Bitshuffle(cname="lz4")
        )
    np.testing.assert_array_equal(frames_of(path, dataset="entry/data/data"), STACK)
    # A fresh process that never imported hdf5plugin: the reader imports it on seeing the
    # dataset's non-built-in filter (and only then), for read_frames and read_stacks alike.
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from radint.io import read_frames, read_stacks\n"
        "assert 'hdf5plugin' not in sys.modules\n"
        "a = np.stack([f.data for f in read_frames(sys.argv[1], dataset='entry/data/data')])\n"
        "b = np.concatenate([s.data for s in read_stacks(sys.argv[1], dataset='entry/data/data',"
        " size=2)])\n"
        "np.save(sys.argv[2], np.stack([a, b]))\n"
    )
    out = tmp_path / "read.npy"
    subprocess.run([sys.executable, "-c", code, str(path), str(out)], check=True, timeout=60)
    np.testing.assert_array_equal(np.load(out), np.stack([STACK, STACK]))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_directory_array_and_group(tmp_path: Path, zarr_format: int) -> None:
    arr_path = tmp_path / "a.zarr"
    zarr.create_array(str(arr_path), data=STACK, chunks=(1, 12, 9), zarr_format=zarr_format)
    np.testing.assert_array_equal(frames_of(arr_path), STACK)
    # Review: --dataset on a bare array was ignored without a word.
    with pytest.raises(ReaderError, match="a bare Zarr array, not a group, so there is no array"):
        list(read_frames(arr_path, dataset="entry/data"))
    grp_path = tmp_path / "g.zarr"
    root = zarr.open_group(str(grp_path), mode="w", zarr_format=zarr_format)
    root.create_array("exchange/data", data=STACK, chunks=(1, 12, 9))
    np.testing.assert_array_equal(frames_of(grp_path), STACK)
    with pytest.raises(ReaderError, match="array 'missing' does not exist"):
        list(read_frames(grp_path, dataset="missing"))
    for k in range(12):  # a MIDAS zip's ~50 parameter arrays: a few named, the rest counted
        root.create_array(f"params/p{k:02d}", data=np.zeros(1))
    with pytest.raises(ReaderError, match=r"params/p06 \(1,\) and 5 more$"):
        list(read_frames(grp_path, dataset="missing"))


def test_zarr_zip(tmp_path: Path) -> None:
    path = tmp_path / "frames.zip"
    store = ZipStore(path, mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=3)
    root.create_array("images", data=STACK, chunks=(1, 12, 9))
    store.close()
    np.testing.assert_array_equal(frames_of(path, dataset="images"), STACK)


def write_midas_zip(path: Path, skip: int = 1) -> np.ndarray:
    """A MIDAS *.analysis.MIDAS.zip as ffGenerateZipRefactor writes it (spec §8.2)."""
    dark = RNG.integers(0, 100, size=(3, 12, 9)).astype(np.uint16)
    store = ZipStore(path, mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=2)
    blosc = Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)
    root.create_array("exchange/data", data=STACK, chunks=(1, 12, 9), compressors=blosc)
    root.create_array("exchange/dark", data=dark, chunks=(1, 12, 9), compressors=blosc)
    scan = "measurement/process/scan_parameters"
    root.create_array(f"{scan}/start", data=np.array([10.0 - skip * 0.5]))
    root.create_array(f"{scan}/step", data=np.array([0.5]))
    root.create_array(
        "analysis/process/analysis_parameters/SkipFrame", data=np.array([skip], dtype=np.int32)
    )
    store.close()
    return dark


def test_midas_zip_frames_dark_and_omega(tmp_path: Path) -> None:
    path = tmp_path / "scan_000001.analysis.MIDAS.zip"
    dark = write_midas_zip(path, skip=1)
    assert "exchange/data/.zarray" in zipfile.ZipFile(path).namelist()
    frames = list(read_frames(path))
    # SkipFrame = 1: frame 0 is left out; omega = start + index·step, frame 1 at OmegaStart = 10.
    assert [f.index for f in frames] == [1, 2, 3]
    assert [f.metadata["omega_deg"] for f in frames] == [10.0, 10.5, 11.0]
    np.testing.assert_array_equal(np.stack([f.data for f in frames]), STACK[1:])
    assert count_frames(path) == 4
    np.testing.assert_allclose(read_dark(path), dark[1:].mean(axis=0), rtol=0, atol=1e-12)
    assert read_dark(path).dtype == np.float64


def test_midas_zip_omega_follows_the_midas_triple(tmp_path: Path, caplog) -> None:
    """ω of file frame i = OmegaStart + (i − SkipFrame)·OmegaStep, each of the three from the
    parameter file where it sets it, else from the zip (whose OmegaStart is start + SkipFrame·
    step, summed in C's order); a value equal to the zip's up to rounding is not warned about
    (OmegaStart 0.1 with SkipFrame 2 came back as 0.09999999999999998 and was)."""
    path = tmp_path / "s.analysis.MIDAS.zip"
    write_midas_zip(path, skip=1)  # zip: OmegaStart 10, step 0.5, SkipFrame 1

    def omegas(**given: float) -> list[float]:
        return [f.metadata["omega_deg"] for f in read_frames(path, zip_parameters=given)]

    assert omegas() == [10.0, 10.5, 11.0]
    assert omegas(SkipFrame=1, OmegaStart=10.0, OmegaStep=0.5) == [10.0, 10.5, 11.0]
    assert omegas(OmegaStep=0.25) == [10.0, 10.25, 10.5]  # the zip's OmegaStart kept
    assert omegas(SkipFrame=0) == [10.0, 10.5, 11.0, 11.5]  # OmegaStart: the first frame used
    assert omegas(SkipFrame=2, OmegaStart=-1.0) == [-1.0, -0.5]
    messages = [r.getMessage() for r in caplog.records]
    assert not any("OmegaStart 10 " in m for m in messages)
    odd = tmp_path / "o.analysis.MIDAS.zip"
    store = ZipStore(odd, mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=2)
    root.create_array("exchange/data", data=STACK, chunks=(1, 12, 9))
    root.create_array("measurement/process/scan_parameters/start", data=np.array([0.1 - 2 * 0.25]))
    root.create_array("measurement/process/scan_parameters/step", data=np.array([0.25]))
    root.create_array(
        "analysis/process/analysis_parameters/SkipFrame", data=np.array([2], np.int32)
    )
    store.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="radint"):
        frames = list(read_frames(odd, zip_parameters={"OmegaStart": 0.1, "SkipFrame": 2}))
    assert not caplog.records and len(frames) == 2


def test_ge_raw(tmp_path: Path) -> None:
    path = tmp_path / "ff_000123.ge3"
    path.write_bytes(b"\x00" * 8192 + STACK.astype("<u2").tobytes())
    np.testing.assert_array_equal(frames_of(path, shape=(12, 9)), STACK)
    # The default GE frame is 2048 × 2048: a small file is not a whole number of those frames.
    with pytest.raises(ReaderError, match=r"ff_000123\.ge3.*2048"):
        count_frames(path)


def test_raw_binary_and_bad_size(tmp_path: Path) -> None:
    data = STACK.astype(np.float32)
    path = tmp_path / "frames.raw"
    path.write_bytes(data.tobytes())
    np.testing.assert_array_equal(frames_of(path, shape=(12, 9), dtype=np.float32), data)
    with pytest.raises(ReaderError, match=r"frames\.raw.*wrong frame shape"):
        list(read_frames(path, shape=(10, 10), dtype=np.float32))
    with pytest.raises(ReaderError, match="need their shape"):
        list(read_frames(path))


def test_edf_through_fabio(tmp_path: Path) -> None:
    fabio = pytest.importorskip("fabio")
    path = tmp_path / "img.edf"
    fabio.edfimage.EdfImage(data=STACK[0].astype(np.float32)).write(str(path))
    np.testing.assert_array_equal(frames_of(path), STACK[:1].astype(np.float32))


def test_dark_mean_of_tiff_and_cast(tmp_path: Path) -> None:
    path = tmp_path / "dark.tif"
    tifffile.imwrite(path, STACK, photometric="minisblack")
    np.testing.assert_allclose(read_dark(path), STACK.mean(axis=0), rtol=0, atol=1e-9)
    assert next(read_frames(path, dtype=np.float32)).data.dtype == np.float32


def test_unknown_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(ReaderError, match=r"notes\.txt: unrecognised frame format"):
        list(read_frames(junk))
    with pytest.raises(ReaderError, match="no such file"):
        list(read_frames(tmp_path / "absent.tif"))
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["exchange/data"] = STACK
    with pytest.raises(ReaderError, match="frame 9 requested, file holds 4"):
        list(read_frames(path, frames=[9]))


def test_plain_frames_are_read_with_one_call(tmp_path: Path) -> None:
    """Frames stored as plain native pixels (uncompressed TIFF pages, contiguous or
    one-chunk-per-frame HDF5, raw/GE) are read straight into the caller's buffer by
    ``read_plain``; compressed, big-endian or multi-frame-chunk frames are decoded. Both ways
    ``read_stacks`` gives the same frames, and a file cut short under the reader is an error
    naming the frame."""
    from radint.io import open_frames, read_stacks

    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, STACK, photometric="minisblack")
    big_endian = tmp_path / "be.tif"
    tifffile.imwrite(big_endian, STACK, photometric="minisblack", byteorder=">")
    packed = tmp_path / "packed.tif"
    tifffile.imwrite(packed, STACK, photometric="minisblack", compression="zlib")
    h5 = tmp_path / "s.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("contiguous", data=STACK)
        f.create_dataset("chunked", data=STACK, chunks=(1, 12, 9))
        f.create_dataset("two_frames_a_chunk", data=STACK, chunks=(2, 12, 9))
        f.create_dataset("deflate", data=STACK, chunks=(1, 12, 9), compression="gzip")
    raw = tmp_path / "s.ge2"  # GE: an 8192-byte header, then the frames
    raw.write_bytes(b"\0" * 8192 + STACK.astype("<u2").tobytes())
    cases = [(tif, {}, True), (big_endian, {}, False), (packed, {}, False),
             (h5, {"dataset": "contiguous"}, True), (h5, {"dataset": "chunked"}, True),
             (h5, {"dataset": "two_frames_a_chunk"}, False), (h5, {"dataset": "deflate"}, False),
             (raw, {"shape": (12, 9)}, True)]  # fmt: skip
    for path, kw, plain in cases:
        with open_frames(path, **kw) as source:
            out = np.zeros((4, 12, 9), dtype=source.dtype)
            assert [source.read_plain(i, out[i]) for i in range(4)] == [plain] * 4, path.name
            if plain:
                np.testing.assert_array_equal(out, STACK)
            # Another type than the stored one is decoded and cast, never read raw.
            assert not source.read_plain(0, np.zeros((12, 9), np.float64))
        if "shape" in kw:
            continue
        got = list(read_stacks(path, size=3, allocate=lambda s, t: np.empty(s, t), **kw))
        np.testing.assert_array_equal(np.concatenate([s.data for s in got]), STACK)
        assert [i for s in got for i in s.ids] == [0, 1, 2, 3]

    one = tmp_path / "one.tif"
    tifffile.imwrite(one, STACK[0], photometric="minisblack")
    with open_frames(one) as source:
        with open(one, "r+b") as fh:
            fh.truncate(one.stat().st_size - 10)
        with pytest.raises(ReaderError, match="one.tif: frame 0 is truncated"):
            source.read_plain(0, np.empty((12, 9), source.dtype))


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64]
)
def test_plain_single_page_tiffs_open_from_their_header(tmp_path: Path, dtype) -> None:
    """A single-page TIFF stored plain is opened without tifffile: same shape, type and
    pixels (one strip, several strips, rows per strip not dividing the height); everything
    else (compressed, predictor, big-endian, multi-page, RGB, truncated) is left to tifffile."""
    from radint.io import open_frames
    from radint.io.tiff import plain_image

    image = (
        RNG.integers(0, 120, size=(37, 23)) * (-1 if np.dtype(dtype).kind == "i" else 1)
    ).astype(dtype)
    plain = {"one_strip": {}, "strips": {"rowsperstrip": 4}, "strips_uneven": {"rowsperstrip": 5}}
    for name, kw in plain.items():
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, image, photometric="minisblack", **kw)
        found = plain_image(path)
        assert found is not None, name
        with open_frames(path) as source:
            assert source._tif_file is None  # tifffile not opened
            assert source.frame_shape == image.shape and source.dtype == image.dtype
            np.testing.assert_array_equal(source.read(0), image)
        offset, found_dtype, shape = found
        raw = np.frombuffer(path.read_bytes(), found_dtype, count=image.size, offset=offset)
        np.testing.assert_array_equal(raw.reshape(shape), image)
    others = {
        "zlib": dict(data=image, compression="zlib"),
        "predictor": dict(data=image, compression="zlib", predictor=True),
        "big_endian": dict(data=image, byteorder=">"),
        "pages": dict(data=np.stack([image, image])),
        "rgb": dict(data=np.stack([image] * 3, axis=-1).astype(np.uint8), photometric="rgb"),
    }
    for name, kw in others.items():
        if name == "predictor" and np.dtype(dtype).kind == "f":
            continue  # tifffile writes a float predictor only with imagecodecs
        if name == "big_endian" and np.dtype(dtype).itemsize == 1:
            continue  # one byte per pixel has no byte order: plain either way
        path = tmp_path / f"{name}.tif"
        kw.setdefault("photometric", "minisblack")
        tifffile.imwrite(path, **kw)
        assert plain_image(path) is None, name
    cut = tmp_path / "cut.tif"
    tifffile.imwrite(cut, image, photometric="minisblack")
    cut.write_bytes(cut.read_bytes()[:-7])
    assert plain_image(cut) is None
    with pytest.raises(ReaderError, match="truncated"):
        frames_of(cut)


def test_truncated_edf_and_cbf_are_errors_not_zeros(tmp_path: Path) -> None:
    """fabio only logs a short EDF data block and pads it with zeros, and fails a short CBF on
    a bare assert: both are ReaderErrors naming the file and the byte counts."""
    fabio = pytest.importorskip("fabio")
    edf = tmp_path / "img.edf"
    fabio.edfimage.EdfImage(data=STACK[0]).write(str(edf))
    cut_edf = tmp_path / "cut.edf"
    cut_edf.write_bytes(edf.read_bytes()[:-100])
    with pytest.raises(
        ReaderError, match=r"cut\.edf: frame 0 is truncated.*incomplete: 116 < expected 216 bytes"
    ):
        frames_of(cut_edf)
    cbf = tmp_path / "img.cbf"
    fabio.cbfimage.CbfImage(data=STACK[0].astype(np.int32)).write(str(cbf))
    blob = cbf.read_bytes()
    cut_cbf = tmp_path / "cut.cbf"
    cut_cbf.write_bytes(blob[: len(blob) - 150])
    with pytest.raises(
        ReaderError,
        match=r"cut\.cbf: .*truncated: binary section holds \d+ bytes, header declares \d+; fabio: AssertionError",
    ):
        frames_of(cut_cbf)
    np.testing.assert_array_equal(frames_of(cbf), STACK[:1].astype(np.int32))


def write_dectris_master(tmp_path: Path, **filters) -> Path:
    """A Dectris/Eiger master file whose entry/data/data_00000N link to 2 data files of 2
    frames each (STACK[0:2], STACK[2:4])."""
    for k in range(2):
        with h5py.File(tmp_path / f"scan_data_{k + 1:06d}.h5", "w") as f:
            frames = STACK[2 * k : 2 * k + 2]
            f.create_dataset("entry/data/data", data=frames, chunks=(1, 12, 9), **filters)
    master = tmp_path / "scan_master.h5"
    with h5py.File(master, "w") as f:
        for k in (2, 1):  # created out of order: read in numeric order
            name = f"entry/data/data_{k:06d}"
            f[name] = h5py.ExternalLink(f"scan_data_{k:06d}.h5", "/entry/data/data")
        f["entry/instrument/detector/x_pixel_size"] = 75e-6
    return master


def test_dectris_master_file_reads_its_data_files_as_one_stack(tmp_path: Path) -> None:
    from radint.io import open_frames, read_stacks

    master = write_dectris_master(tmp_path, compression="gzip")
    # No dataset given and no exchange/data: entry/data's data_NNNNNN members, in order.
    np.testing.assert_array_equal(frames_of(master), STACK)
    np.testing.assert_array_equal(frames_of(master, dataset="entry/data"), STACK)
    assert [f.index for f in read_frames(master, frames=[1, 2, 3])] == [1, 2, 3]
    for allocate in (None, lambda s, t: np.empty(s, t)):
        got = list(read_stacks(master, size=3, allocate=allocate))
        np.testing.assert_array_equal(np.concatenate([s.data for s in got]), STACK)
        assert [s.ids for s in got] == [[0, 1, 2], [3]]
    with open_frames(master) as source:
        assert source.n_frames == 4
        # Frames reached through external links are never read as plain bytes of the master.
        assert not source.read_plain(0, np.empty((12, 9), source.dtype))
    # One member alone still reads as a dataset.
    np.testing.assert_array_equal(frames_of(master, dataset="entry/data/data_000002"), STACK[2:])

    # The missing-dataset error lists the linked datasets, and a broken link as broken.
    (tmp_path / "scan_data_000002.h5").unlink()
    with pytest.raises(ReaderError, match=r"dataset 'nope' does not exist") as e:
        frames_of(master, dataset="nope")
    assert "entry/data/data_000001 (2, 12, 9)" in str(e.value)
    assert "entry/data/data_000002 (broken link to scan_data_000002.h5:/entry/data/data)" in str(
        e.value
    )
    with pytest.raises(
        ReaderError,
        match=r"scan_master\.h5:entry/data/data_000002: is a broken link to "
        r"scan_data_000002\.h5:/entry/data/data",
    ):
        frames_of(master)


def test_dectris_master_file_data_files_must_match(tmp_path: Path) -> None:
    master = write_dectris_master(tmp_path)
    with h5py.File(tmp_path / "scan_data_000002.h5", "w") as f:
        f["entry/data/data"] = STACK[2:, :10].astype(np.uint32)
    with pytest.raises(
        ReaderError,
        match=r"entry/data/data_000002: frames of shape \(10, 9\) and type uint32, expected "
        r"\(12, 9\) and uint16 as in data_000001",
    ):
        frames_of(master)


def test_dectris_master_file_bitshuffle(tmp_path: Path) -> None:
    hdf5plugin = pytest.importorskip("hdf5plugin")
    from radint.io import read_stacks

    master = write_dectris_master(tmp_path, **hdf5plugin.Bitshuffle(cname="lz4"))
    np.testing.assert_array_equal(frames_of(master), STACK)
    got = read_stacks(master, size=4, allocate=lambda s, t: np.empty(s, t))
    np.testing.assert_array_equal(np.concatenate([s.data for s in got]), STACK)


def test_tiff_pages_unlike_the_first(tmp_path: Path) -> None:
    """Reduced-resolution pages (previews) are not frames; a page of another shape is an
    error; a page of another pixel type is stored into the first frame's type only when its
    values fit (a uint32 page is not wrapped modulo 2^16)."""
    from radint.io import count_frames, read_stacks

    def stacks(path: Path) -> np.ndarray:
        got = read_stacks(path, size=4, allocate=lambda s, t: np.empty(s, t))
        return np.concatenate([s.data for s in got])

    preview = np.zeros((4, 3), np.uint8)
    with_previews = tmp_path / "previews.tif"
    with tifffile.TiffWriter(with_previews) as t:
        t.write(preview, photometric="minisblack", subfiletype=1)
        for frame in STACK[:2]:
            t.write(frame, photometric="minisblack")
        t.write(preview, photometric="minisblack", subfiletype=1)
    assert count_frames(with_previews) == 2
    np.testing.assert_array_equal(frames_of(with_previews), STACK[:2])
    np.testing.assert_array_equal(stacks(with_previews), STACK[:2])

    other_shape = tmp_path / "shape.tif"
    with tifffile.TiffWriter(other_shape) as t:
        t.write(STACK[0], photometric="minisblack")
        t.write(STACK[1, :10], photometric="minisblack")
    with pytest.raises(
        ReaderError, match=r"shape\.tif: page 1 has shape \(10, 9\), expected \(12, 9\) as page 0"
    ):
        frames_of(other_shape)

    fits, wraps = tmp_path / "fits.tif", tmp_path / "wraps.tif"
    for path, offset in ((fits, 0), (wraps, 70000)):
        with tifffile.TiffWriter(path) as t:
            t.write(STACK[0], photometric="minisblack")
            t.write(STACK[1].astype(np.uint32) + offset, photometric="minisblack")
    np.testing.assert_array_equal(stacks(fits), STACK[:2])
    assert frames_of(wraps)[1].max() == int(STACK[1].max()) + 70000  # read_frames: its own type
    with pytest.raises(
        ReaderError,
        match=r"wraps\.tif: page 1 holds uint32 pixels \(values \d+\.\.\d+\) that uint16, the "
        r"type of page 0, cannot hold",
    ):
        stacks(wraps)


def test_tiff_codec_missing_and_no_first_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An LZW page without imagecodecs names the codec and how to install it (not
    "truncated"); a file cut short before its first page (Pillow writes it last) says so,
    and tifffile's own log record of it is not printed besides radint's error."""
    image_module = pytest.importorskip("PIL.Image")

    decompressors = tifffile.TIFF.DECOMPRESSORS

    class WithoutImagecodecs:
        """tifffile's codec table as it is when imagecodecs is not installed."""

        def __getitem__(self, key: int) -> object:
            if key == 5:
                raise KeyError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")
            return decompressors[key]

    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", WithoutImagecodecs())
    lzw = tmp_path / "lzw.tif"
    image_module.fromarray(STACK[0]).save(lzw, compression="tiff_lzw")
    with pytest.raises(
        ReaderError,
        match=r"lzw\.tif: page 0 is compressed with LZW, which needs the imagecodecs package: "
        r"pip install imagecodecs \(or pip install 'radint\[formats\]'\)",
    ):
        frames_of(lzw)

    cut = tmp_path / "cut.tif"
    blob = lzw.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        ReaderError,
        match=rf"cut\.tif: TIFF file without a readable first page \(truncated\? the header "
        rf"puts it at byte \d+, file has {len(blob) // 2} bytes\)",
    ):
        frames_of(cut)
    assert not [r for r in caplog.records if r.name == "tifffile"]


def test_hdf5_virtual_dataset_with_a_missing_source_is_an_error(tmp_path: Path, monkeypatch):
    """A VDS master (Odin, Eiger filewriter2, LIMA) copied without one of its data files read
    the missing frames as the fill value (zeros, integrated as frames); now the source file and
    its frames are named. Sources are found beside the master from any working directory."""
    data = tmp_path / "run"
    data.mkdir()
    for k in range(2):
        with h5py.File(data / f"src{k}.h5", "w") as f:
            f["data"] = STACK[2 * k : 2 * k + 2]
    layout = h5py.VirtualLayout((4, *STACK.shape[1:]), STACK.dtype)
    for k in range(2):
        layout[2 * k : 2 * k + 2] = h5py.VirtualSource(
            f"src{k}.h5", "data", shape=(2, *STACK.shape[1:])
        )
    with h5py.File(data / "master.h5", "w") as f:
        f.create_virtual_dataset("exchange/data", layout, fillvalue=0)
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(np.stack([fr.data for fr in frames_of(data / "master.h5")]),
                                  STACK[:4])  # fmt: skip
    # Sources named by absolute paths, the folder moved: found beside the master, as HDF5 does.
    moved = tmp_path / "moved"
    moved.mkdir()
    layout = h5py.VirtualLayout((4, *STACK.shape[1:]), STACK.dtype)
    for k in range(2):
        layout[2 * k : 2 * k + 2] = h5py.VirtualSource(
            str(tmp_path / "gone" / f"src{k}.h5"), "data", shape=(2, *STACK.shape[1:])
        )
    with h5py.File(moved / "master.h5", "w") as f:
        f.create_virtual_dataset("exchange/data", layout, fillvalue=0)
    for k in range(2):
        (moved / f"src{k}.h5").write_bytes((data / f"src{k}.h5").read_bytes())
    np.testing.assert_array_equal(np.stack([fr.data for fr in frames_of(moved / "master.h5")]),
                                  STACK[:4])  # fmt: skip
    (data / "src1.h5").rename(data / "src1.moved")
    with pytest.raises(
        ReaderError, match=r"master\.h5:exchange/data: virtual dataset sources missing.*"
        r"src1\.h5 \(file not found\): frames 2\.\.3",
    ):  # fmt: skip
        frames_of(data / "master.h5")


def test_hdf5_virtual_dataset_mapped_frame_by_frame_opens_each_source_once(
    tmp_path: Path, monkeypatch
):
    """Found by a user check: a VDS with one mapping per frame opened its source file once per
    mapping to check it (5 000 frames: 34 s before anything showed); a missing dataset is
    still named with its frames."""
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["data"] = STACK[:2]
    layout = h5py.VirtualLayout((40, *STACK.shape[1:]), STACK.dtype)
    for k in range(40):
        dataset = "nodata" if k in (7, 8, 30) else "data"
        layout[k] = h5py.VirtualSource("src.h5", dataset, shape=(2, *STACK.shape[1:]))[k % 2]
    with h5py.File(tmp_path / "master.h5", "w") as f:
        f.create_virtual_dataset("exchange/data", layout, fillvalue=0)
    opened: list[str] = []
    real_file = h5py.File

    def counting_file(name, *args, **kwargs):
        opened.append(Path(name).name)
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", counting_file)
    with pytest.raises(ReaderError, match=r"src\.h5 \(no dataset nodata\): frames 7\.\.8, 30"):
        frames_of(tmp_path / "master.h5")
    assert opened.count("src.h5") == 1


def test_hdf5_damaged_chunk_names_its_frame(tmp_path: Path) -> None:
    """Found by a user check: a damaged chunk of one frame failed the block read, and the
    message named all the block's frames (8..15 for frame 13)."""
    stack = np.stack([STACK[0]] * 20)
    path = tmp_path / "gz.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("exchange/data", data=stack, chunks=(1, *stack.shape[1:]),
                         compression="gzip")  # fmt: skip
    with h5py.File(path) as f:
        info = f["exchange/data"].id.get_chunk_info(13)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset : info.byte_offset + info.size] = bytes(info.size)
    path.write_bytes(raw)
    with open_frames(path) as src, pytest.raises(ReaderError) as e:
        src.read_block(8, 16)
    assert ": cannot read frame 13: " in str(e.value), e.value
    with open_frames(path) as src:
        np.testing.assert_array_equal(src.read_block(0, 8), stack[:8])


@pytest.mark.parametrize(
    ("message", "hinted"),
    [("Can't synchronously read data (can't open directory (/usr/local/lib/plugin). Please "
      "verify its existence)", True),
     ("can't find plugin. Check either HDF5_VOL_CONNECTOR, HDF5_PLUGIN_PATH", True),
     ("required filter 'bshuf' is not registered", True),
     ("Can't synchronously read data (filter returned failure during read)", False)],
)  # fmt: skip
def test_a_missing_filter_plugin_is_named_and_a_damaged_chunk_is_not(message, hinted):
    """Found by reviews: HDF5 says 'no plugin' in several ways (the block read, which integrate
    uses, gave no hint at all); a damaged chunk must not be blamed on a missing plugin."""
    from radint.io.hdf5 import _missing_filter_hint

    assert ("install hdf5plugin" in _missing_filter_hint(OSError(message))) == hinted


def test_hdf5_frames_never_written_are_errors(tmp_path: Path) -> None:
    """A chunked dataset pre-allocated for more frames than a (killed) writer stored reads the
    rest as fill values: the frames with a chunk never written are named, whatever the chunk
    layout; a contiguous dataset cannot tell and reads as before."""
    path = tmp_path / "killed.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "exchange/data",
            shape=(4, 12, 9),
            dtype=np.uint16,
            chunks=(1, 12, 9),
            compression="gzip",
        )
        ds[:2] = STACK[:2]
        tiles = f.create_dataset("tiles", shape=(6, 12, 9), dtype=np.uint16, chunks=(2, 6, 9))
        tiles[:2] = STACK[:2]
        tiles[2, :6] = STACK[2, :6]  # frames 2-3 share chunks: only their upper half written
        tiles[4:] = STACK[2:]
        f.create_dataset("empty", shape=(3, 12, 9), dtype=np.uint16, chunks=(1, 12, 9), fillvalue=7)
        f.create_dataset("contiguous", shape=(3, 12, 9), dtype=np.uint16)[0] = STACK[0]
        f.create_dataset("frame", shape=(12, 9), dtype=np.uint16, chunks=(6, 9))[:6] = 1
    with pytest.raises(
        ReaderError,
        match=r"killed\.h5:exchange/data: frames 2\.\.3 of 4 never written: their chunks are not "
        r"allocated in .*killed\.h5 \(the writer stopped early\?\)",
    ):
        frames_of(path)
    with pytest.raises(ReaderError, match=r"killed\.h5:tiles: frames 2\.\.3 of 6 never written"):
        frames_of(path, dataset="tiles")
    with pytest.raises(ReaderError, match=r"killed\.h5:empty: frames 0\.\.2 of 3 never written"):
        frames_of(path, dataset="empty")
    with pytest.raises(ReaderError, match=r"killed\.h5:frame: frame 0 of 1 never written"):
        frames_of(path, dataset="frame")
    assert frames_of(path, dataset="contiguous").shape == (3, 12, 9)

    # In a Dectris master file, the frame numbers run on across the data files.
    master = write_dectris_master(tmp_path)
    with h5py.File(tmp_path / "scan_data_000002.h5", "w") as f:
        ds = f.create_dataset(
            "entry/data/data", shape=(2, 12, 9), dtype=np.uint16, chunks=(1, 12, 9)
        )
        ds[0] = STACK[2]
    with pytest.raises(
        ReaderError,
        match=r"scan_master\.h5:entry/data: frame 3 of 4 never written.*scan_data_000002",
    ):
        frames_of(master)


def test_directory_that_is_not_a_zarr_store(tmp_path: Path) -> None:
    """A folder of TIFF files given as frames says it is not a Zarr store and how to pass the
    files inside, with examples of them."""
    folder = tmp_path / "tifdir"
    folder.mkdir()
    for k in range(4):
        tifffile.imwrite(folder / f"scan_{k:05d}.tif", STACK[k])
    (folder / "notes.txt").write_text("beam down at 3 am")
    with pytest.raises(
        ReaderError,
        match=r"tifdir: a directory given as frames, but not a Zarr store \(no \.zarray, \.zgroup, "
        r"zarr\.json in it\); it holds 5 file\(s\): notes\.txt, scan_00000\.tif, scan_00001\.tif, "
        r"\.\.\.; to read the files inside, pass them, e\.g\. '.*tifdir/\*\.tif'",
    ):
        frames_of(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReaderError, match=r"empty: .*not a Zarr store.*; it holds no files"):
        frames_of(empty)


def test_hdf5_without_the_dataset_lists_frame_like_ones_first(tmp_path):
    import h5py

    from radint.io import read_frames
    from radint.io.errors import ReaderError

    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        for k in range(30):
            f[f"meta/v{k:02d}"] = np.arange(3)
        f["scan/images"] = np.zeros((2, 4, 5), np.uint16)
    with pytest.raises(ReaderError) as info:
        next(read_frames(path))
    msg = str(info.value)
    assert "available datasets: scan/images (2, 4, 5)" in msg and "(19 more)" in msg
    assert "--dataset" in msg


@pytest.mark.parametrize(
    ("dtype", "what"),
    [
        (h5py.vlen_dtype("i4"), r"type object \(variable-length or references\)"),
        (h5py.string_dtype(), r"type object"),
        (np.dtype("S4"), r"type \|S4 \(byte string\)"),
        (np.dtype([("a", "<u2"), ("b", "<f4")]), r"compound type"),
        (np.dtype("c8"), r"type complex64 \(complex\)"),
    ],
)
def test_non_numeric_pixels_are_refused_before_any_buffer(tmp_path: Path, dtype, what) -> None:
    """Regression: a variable-length (object) HDF5 dataset read into the batch path's recycled
    stack buffers made an object array over raw bytes (a segfault); every reader refuses
    non-numeric pixels when it opens the file, naming file, dataset and type."""
    from radint.io import open_frames
    from radint.io.read import read_stacks

    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("exchange/data", shape=(2, 12, 9), dtype=dtype)
    pattern = rf"odd\.h5:exchange/data: pixels of {what}.*expected real numbers"
    with pytest.raises(ReaderError, match=pattern):
        open_frames(path)
    with pytest.raises(ReaderError, match=pattern):
        frames_of(path)
    with pytest.raises(ReaderError, match=pattern):
        list(read_stacks(path, allocate=lambda shape, dt: np.empty(shape, dt)))
    for zarr_format, dt in ((3, "c8"), (2, "c16")):
        store = tmp_path / f"odd{zarr_format}.zarr"
        zarr.create_array(store, shape=(2, 12, 9), dtype=dt, zarr_format=zarr_format)[:] = 1
        with pytest.raises(ReaderError, match=r"odd\d\.zarr: pixels of type complex"):
            frames_of(store)
    tiff = tmp_path / "odd.tif"
    tifffile.imwrite(tiff, STACK[0].astype(np.complex64))
    with pytest.raises(ReaderError, match=r"odd\.tif: pixels of type complex64"):
        frames_of(tiff)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("kind", ["directory", "zip", "group"])
def test_zarr_frames_with_unstored_chunks_are_named(
    tmp_path: Path, zarr_format: int, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Zarr store's missing chunks read as the fill value: zarr leaves out chunks holding only
    the fill value by default (all-zero frames and tiles are stored so), and a writer that
    stopped early leaves them out too. Read, with a warning naming the frames (v2 and v3,
    directory and zip)."""
    path = tmp_path / ("part.zip" if kind == "zip" else "part.zarr")
    store = ZipStore(path, mode="w") if kind == "zip" else path
    if kind == "group":
        root = zarr.open_group(store, mode="w", zarr_format=zarr_format)
        arr = root.create_array("exchange/data", shape=(5, 12, 9), dtype="u2", chunks=(1, 12, 9))
        complete = root.create_array("full", shape=(5, 12, 9), dtype="u2", chunks=(2, 6, 9))
        complete[:] = STACK[np.arange(5) % 4]
    else:
        arr = zarr.create_array(store, shape=(5, 12, 9), dtype="u2", chunks=(1, 12, 9),
                                fill_value=0, zarr_format=zarr_format)  # fmt: skip
    arr[0] = STACK[0]
    arr[2] = STACK[2]
    arr[4, :6] = STACK[3, :6]  # frame 4 written in its upper half only: still complete chunks
    if kind == "zip":
        store.close()
    with caplog.at_level(logging.WARNING, logger="radint"):
        stack = frames_of(path)
    np.testing.assert_array_equal(stack[[1, 3]], 0)
    assert re.search(
        r"part\.z(arr|ip)(:exchange/data)?: frames 1, 3 of 5 touch chunks that are not in the "
        r"store: read as the fill value 0",
        caplog.text,
    )
    if kind == "group":
        assert frames_of(path, dataset="full").shape == (5, 12, 9)


_GROWING_WRITER = r"""
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "w", libver="earliest", locking=False)
d = f.create_dataset("entry/x", shape=(0, 64), maxshape=(None, 64), chunks=(1, 64), dtype="f8")
def grow(n):
    d.resize(d.shape[0] + n, axis=0)
    d[-n:] = 1.0
    f.flush()
grow(10)
print("ready", flush=True)
sys.stdin.readline()
grow(5000)
print("grown", flush=True)
sys.stdin.readline()
"""


def test_a_file_growing_in_another_process_reads_past_its_end_at_open(tmp_path):
    """Audit (read_nexus every 0.3 s of a stream.h5 written at 1000 frames/s: 10 of 14 reads
    failed, "addr overflow"): a reader opened before a flush that grew the file refused the new
    chunks beyond the end its superblock gave at open. Results open in SWMR-read mode, which
    reads them."""
    import subprocess
    import sys

    from radint.io.nexus import open_result

    path = tmp_path / "growing.h5"
    writer = subprocess.Popen([sys.executable, "-c", _GROWING_WRITER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert writer.stdout.readline().strip() == "ready"
        with open_result(path) as root:
            writer.stdin.write("\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "grown"
            rows = root["entry/x"][()]
        assert rows.shape == (5010, 64) and np.all(rows == 1.0)
    finally:
        writer.stdin.write("\n")
        writer.stdin.flush()
        writer.wait(30)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "uint32", "float32", "float64"])
@pytest.mark.parametrize(("shape", "nelems"), [((37, 53), 0), ((64, 40), 256), ((5, 3), 0)])
def test_bitshuffle_lz4_chunks_decoded_by_radint_equal_hdf5plugins(tmp_path, dtype, shape, nelems):
    """Eiger/Dectris frames (one bitshuffle/LZ4 chunk each) are decoded by radint's bounds-checked
    decoder: the same values as hdf5plugin's filter for every pixel type, frames not a
    multiple of 8 pixels (the raw tail) or of the block (a short last block), other block
    sizes, and single frames as blocks of frames."""
    hdf5plugin = pytest.importorskip("hdf5plugin")
    from radint.io.hdf5 import Hdf5Source, _bitshuffle_lz4_frames

    rng = np.random.default_rng(7)
    stack = (rng.gamma(0.5, 300.0, size=(6, *shape)) * (rng.random((6, *shape)) > 0.3)).astype(
        dtype
    )
    path = tmp_path / "eiger.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("exchange/data", data=stack, chunks=(1, *shape),
                         **hdf5plugin.Bitshuffle(nelems=nelems, cname="lz4"))  # fmt: skip
    source = Hdf5Source(path)
    assert _bitshuffle_lz4_frames(source._ds, source.frame_shape)
    np.testing.assert_array_equal(source.read_block(0, 6), stack)
    np.testing.assert_array_equal(source.read_block(2, 5), stack[2:5])
    np.testing.assert_array_equal(source.read(5), stack[5])
    source.close()


def test_a_damaged_bitshuffle_chunk_names_its_frame_and_does_not_crash(tmp_path):
    """Audit (large jobs): a damaged bitshuffle/LZ4 chunk (a block size past the chunk's end)
    made hdf5plugin's filter read out of bounds: `radint integrate` died with a segfault (rc
    139), no file or frame named, the next files never read. Now a ReaderError names the
    frame, and the other frames read."""
    hdf5plugin = pytest.importorskip("hdf5plugin")
    from radint.io.hdf5 import Hdf5Source

    stack = np.arange(4 * 64 * 48, dtype=np.uint16).reshape(4, 64, 48) % 1000
    path = tmp_path / "eiger.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("exchange/data", data=stack, chunks=(1, 64, 48),
                              **hdf5plugin.Bitshuffle(cname="lz4"))  # fmt: skip
        offset = ds.id.get_chunk_info_by_coord((2, 0, 0)).byte_offset
    with open(path, "r+b") as f:  # the first block's byte count (after the 12-byte header)
        f.seek(offset + 12)
        f.write(b"\xff\xff\xff\xf0")
    source = Hdf5Source(path)
    for read in (lambda: source.read_block(0, 4), lambda: source.read(2)):
        with pytest.raises(ReaderError, match=r"eiger.h5:exchange/data: cannot read frame 2: "
                           r"damaged bitshuffle/LZ4 chunk: block 0 says 4294967280 bytes"):  # fmt: skip
            read()
    np.testing.assert_array_equal(source.read_block(0, 2), stack[:2])
    np.testing.assert_array_equal(source.read(3), stack[3])
    source.close()
    # The audit's damage, random bytes over the LZ4 data: a segfault before (rc 139), so read
    # in a process of its own.
    stack = np.arange(4 * 256 * 192, dtype=np.uint16).reshape(4, 256, 192) % 1000
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("exchange/data", data=stack, chunks=(1, 256, 192),
                              **hdf5plugin.Bitshuffle(cname="lz4"))  # fmt: skip
        info = ds.id.get_chunk_info_by_coord((2, 0, 0))
    garbage = np.random.default_rng(5).integers(0, 256, info.size - 32, dtype=np.uint8)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + 16)
        f.write(garbage.tobytes())
    script = (
        "import sys, numpy as np\nfrom pathlib import Path\n"
        "from radint.io import ReaderError\nfrom radint.io.hdf5 import Hdf5Source\n"
        "source = Hdf5Source(Path(sys.argv[1]))\n"
        "try:\n    source.read_block(0, 4)\nexcept ReaderError as e:\n    print(e)\n"
        "print(int(source.read_block(3, 4).sum()))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-1500:])
    assert "cannot read frame 2: damaged bitshuffle/LZ4 chunk: block 1 says " in run.stdout
    assert run.stdout.splitlines()[-1] == str(int(stack[3].sum()))


def test_bitshuffle_frames_stored_unfiltered_or_unwritten_beside_a_damaged_one(tmp_path):
    """Review: a block holding a chunk stored unfiltered (filter mask set) fell back to HDF5
    for the whole block, so a damaged chunk beside it reached hdf5plugin's filter (segfault).
    Each frame is read on its own terms now: unfiltered ones as stored, unwritten ones as
    the fill value, the damaged one a ReaderError naming it. In a process of its own."""
    pytest.importorskip("hdf5plugin")
    script = (
        "import sys, h5py, hdf5plugin, numpy as np\nfrom pathlib import Path\n"
        "from radint.io import ReaderError\nfrom radint.io.hdf5 import Hdf5Source\n"
        "a = np.random.default_rng(1).integers(0, 1000, (6, 64, 48)).astype(np.uint32)\n"
        "path = Path(sys.argv[1])\n"
        "with h5py.File(path, 'w') as f:\n"
        "    ds = f.create_dataset('exchange/data', shape=a.shape, dtype=a.dtype,\n"
        "                          chunks=(1, 64, 48), **hdf5plugin.Bitshuffle(cname='lz4'))\n"
        "    for i in (0, 1, 3, 5):\n        ds[i] = a[i]\n"
        "    c = ds.id.read_direct_chunk((3, 0, 0))[1]\n"
        "    ds.id.write_direct_chunk((3, 0, 0), c[: len(c) // 3])\n"
        "    ds.id.write_direct_chunk((1, 0, 0), a[1].tobytes(), filter_mask=1)\n"
        "source = Hdf5Source(path, frames=[0, 1, 3, 5])\n"
        "try:\n    source.read_block(0, 6)\nexcept ReaderError as e:\n    print(e)\n"
        "got = source.read_block(0, 3)\n"
        "print(np.array_equal(got[:2], a[:2]), int(got[2].max()), np.array_equal(source.read(5), a[5]))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "e.h5")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-1500:])
    lines = run.stdout.splitlines()
    assert "cannot read frame 3: damaged bitshuffle/LZ4 chunk" in lines[0], lines
    assert lines[-1] == "True 0 True", lines
