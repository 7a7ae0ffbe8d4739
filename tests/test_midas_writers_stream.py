"""The MIDAS caked.hdf and GSAS-II .zarr.zip writers stream: the files of the writers that laid
the whole tree (and the whole HDF5 file) out in memory, bit for bit (cakes of more than one
bin: the sums of a one-bin cake's frames were pairwise in numpy, in order now, as in
IntegratorZarrOMP), at a small fraction of their memory, and a full disk or file size limit
fails cleanly before or without HDF5 seeing it."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest

from radint._once import warn_once
from radint.io import midas
from radint.io._common import cfg, frame_ids, omegas_deg, stacked
from radint.io.atomic import atomic_output
from radint.result import Result, frame_groups
from tests.io_helpers import make_config, make_result

REPO = Path(__file__).resolve().parents[1]


# --- The writers as they were (radint dad67dd), the reference of the streamed ones. ---------


def _old_midas_tree(result: Result) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    cake = stacked(np.asarray(result.cake, dtype=np.float64), 2)
    area = np.asarray(result.area, dtype=np.float64)
    if area.size:
        empty = np.isnan(cake) & ~(area > 0)
        masked_bins = result.metadata.get("masked_bins")
        if masked_bins is not None:
            flat = empty.reshape(empty.shape[0], -1)
            flat[:, np.asarray(masked_bins, dtype=np.int64)] = False
        cake = np.where(empty, 0.0, cake)
    cakes_r_major = np.transpose(cake, (0, 2, 1))
    n_frames, n_r, n_eta = cakes_r_major.shape
    ids = frame_ids(result)
    if np.unique(ids).size != ids.size:
        warn_once("repeated frame ids", "frame ids repeat %d", ids.size - 1)
        ids = np.arange(ids.size, dtype=np.int64)
    known_omegas = omegas_deg(result)
    omegas = np.zeros(n_frames) if known_omegas is None else known_omegas
    entries: list[tuple[str, np.ndarray, dict[str, Any]]] = [
        (
            "REtaMap",
            midas.reta_map(result, midas.IZ_DEFAULT_WAVELENGTH),
            {
                "nEtaBins": n_eta,
                "nRBins": n_r,
                "Header": "Radius,2Theta,Eta,BinArea,Q",
                "Units": "Pixels,Degrees,Degrees,Pixels,InvAngstrom",
            },
        )
    ]
    if cfg(result, "save_individual_frames"):
        for k in range(n_frames):
            entries.append(
                (
                    f"IntegrationResult/FrameNr_{ids[k]}",
                    cakes_r_major[k],
                    {"omega": float(omegas[k]), "Header": "Radius,Eta", "Units": "Pixels,Degrees"},
                )
            )
    omega_sum_frames = int(cfg(result, "omega_sum_frames"))
    for chunk in frame_groups(n_frames, omega_sum_frames) if omega_sum_frames >= 0 else ():
        first, last = chunk[0], chunk[-1]
        attrs: dict[str, Any] = {
            "LastFrameNumber": int(ids[last]),
            "Number Of Frames Summed": len(chunk),
            "FirstOme": float(omegas[first]),
            "LastOme": float(omegas[last]),
        }
        for key in ("Temperature", "Pressure", "I", "I0"):
            values = result.metadata.get(key)
            if values is None:
                attrs[key] = 0.0
                continue
            v = np.asarray(values, dtype=np.float64).reshape(-1)
            attrs[key] = float(v[last] / len(chunk) if key == "I0" else v[first : last + 1].mean())
        entries.append(
            (f"OmegaSumFrame/LastFrameNumber_{ids[last]}", cakes_r_major[chunk].sum(axis=0), attrs)
        )
    if known_omegas is not None:
        entries.append(("Omegas", omegas, {"Units": "Degrees"}))
    if cfg(result, "sum_images"):
        entries.append(
            (
                "SumFrames",
                np.nansum(result.cakes_before_mask_nan(), axis=0).T,
                {"Header": "Radius,Eta", "Units": "Pixels,Degrees", "nFrames": n_frames},
            )
        )
    instrument = {
        "Polariz": cfg(result, "gsas_polariz"),
        "Lam": cfg(result, "wavelength_angstrom") or midas.IZ_DEFAULT_WAVELENGTH,
        "SH_L": cfg(result, "gsas_sh_l"),
        "U": cfg(result, "gsas_u"),
        "V": cfg(result, "gsas_v"),
        "W": cfg(result, "gsas_w"),
        "X": cfg(result, "gsas_x"),
        "Y": cfg(result, "gsas_y"),
        "Z": cfg(result, "gsas_z"),
        "Distance": cfg(result, "lsd_um"),
    }
    for key, value in instrument.items():
        entries.append((f"InstrumentParameters/{key}", np.array([value], dtype=np.float64), {}))
    return entries


def _old_write_midas_caked(result: Result, path: Path) -> Path:
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        for name, data, attrs in _old_midas_tree(result):
            dataset = f.create_dataset(name, data=data)
            for key, value in attrs.items():
                midas._set_c_attribute(dataset, key, value)
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(image.getbuffer())
    return path


def _old_write_gsas_zarr_zip(result: Result, path: Path) -> Path:
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        store = midas._ZarrV2Zip(zf)
        for name, data, attrs in _old_midas_tree(result):
            store.array(name, data, attrs)
    return path


# --------------------------------------------------------------------------------------------


def _stack(n_frames: int, n_eta: int, n_r: int, seed: int = 0, **config: Any) -> Result:
    """A stack with values over 9 decades, NaN (empty and masked-touched) bins, -0.0, bins no
    pixel reached in some frames, masked bins with their pre-NaN values, per-frame metadata."""
    rng = np.random.default_rng(seed)
    res = make_result(n_frames=n_frames, n_eta=n_eta, n_r=n_r)
    cake = rng.normal(size=res.cake.shape) * 10.0 ** rng.integers(-3, 6, size=res.cake.shape)
    cake[rng.random(cake.shape) < 0.05] = np.nan
    cake[rng.random(cake.shape) < 0.3] = -0.0  # two frames' -0.0 in a bin sum to 0.0 in numpy
    res.cake = cake
    res.area = np.where(rng.random(cake.shape) < 0.1, 0.0, 1.0)
    n_masked = 5
    res.metadata["masked_bins"] = rng.choice(n_eta * n_r, n_masked, replace=False)
    res.metadata["masked_bin_values"] = rng.normal(size=(n_frames, n_masked))
    for key in ("Temperature", "Pressure", "I", "I0"):
        res.metadata[key] = rng.normal(size=n_frames)
    res.frame_ids = 100_000 + 3 * np.arange(n_frames)
    res.config = make_config(save_individual_frames=True, sum_images=True, **config)
    return res


def _zip_entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


@pytest.mark.parametrize(
    ("n_frames", "omega_sum_frames", "dtype"),
    [(23, 10, np.float64), (12, 0, np.float64), (9, -1, np.float32), (1, 3, np.float64)],
)
def test_streamed_midas_files_equal_the_in_memory_writers(
    tmp_path: Path, n_frames: int, omega_sum_frames: int, dtype: type
) -> None:
    """caked.hdf byte for byte, the .zarr.zip entry for entry, as the writers that made the
    whole tree in memory wrote them: a stack with SaveIndividualFrames, OmegaSumFrames chunks
    (of more than 8 frames too: numpy's sums go frame after frame from 0.0), SumFrames with
    masked bins' pre-NaN values, float32 cakes (made float64 per frame now)."""
    res = _stack(n_frames, 16, 40, omega_sum_frames=omega_sum_frames)
    res.cake = res.cake.astype(dtype)
    old = _old_write_midas_caked(res, tmp_path / "old.caked.hdf").read_bytes()
    new = midas.write_midas_caked(res, tmp_path / "new.caked.hdf").read_bytes()
    assert new == old
    with h5py.File(tmp_path / "new.caked.hdf", "r") as f:
        assert len(f["IntegrationResult"]) == n_frames
        sums = len(frame_groups(n_frames, omega_sum_frames)) if omega_sum_frames >= 0 else 0
        assert len(f.get("OmegaSumFrame", {})) == sums and "SumFrames" in f
    old_zip = _old_write_gsas_zarr_zip(res, tmp_path / "old.zarr.zip")
    new_zip = midas.write_gsas_zarr_zip(res, tmp_path / "new.zarr.zip")
    assert _zip_entries(new_zip) == _zip_entries(old_zip)
    # The room reserved for the file bounds it and its tail is cut off.
    assert len(new) <= midas.caked_file_bound(midas.midas_entries(res))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "new.caked.hdf", "new.zarr.zip", "old.caked.hdf", "old.zarr.zip"]  # fmt: skip


def test_midas_tree_makes_its_entries_one_at_a_time() -> None:
    res = _stack(4, 3, 5, omega_sum_frames=2)
    tree = midas.midas_tree(res)
    assert not isinstance(tree, list)
    names = [name for name, _, _ in tree]
    assert names == [name for name, _, _ in _old_midas_tree(res)]


def _peak(write: Any, *args: Any) -> int:
    tracemalloc.start()
    try:
        write(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("writer", ["caked", "gsas"])
def test_midas_writers_hold_a_frame_not_the_stack(tmp_path: Path, writer: str) -> None:
    """Audit (a 10 000-frame batch with --format midas died of OOM): the writers copied the
    cakes (np.where), summed every OmegaSumFrame chunk at once, copied the stack again for
    SumFrames and laid the whole caked.hdf out in memory: 3.5x the 50 MB of cakes at the peak
    (tracemalloc, which numpy reports its buffers to). Now ~0.05x (caked) and 0.1x (zip)."""
    res = _stack(100, 72, 870, omega_sum_frames=10)  # 50 MB of float64 cakes
    cakes = res.cake.nbytes
    assert cakes > 49e6
    write = {"caked": midas.write_midas_caked, "gsas": midas.write_gsas_zarr_zip}[writer]
    peak = _peak(write, res, tmp_path / f"s.{writer}")
    assert peak < 0.5 * cakes, (peak, cakes)


def test_caked_hdf_refused_when_its_room_cannot_be_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's size is known before HDF5 writes anything and its blocks are reserved
    (posix_fallocate): a full disk fails there, naming the file, and leaves nothing."""
    res = _stack(6, 8, 30, omega_sum_frames=2)
    path = tmp_path / "s.caked.hdf"
    need = midas.caked_file_bound(midas.midas_entries(res))
    asked = []

    def full(fd: int, offset: int, length: int) -> None:
        asked.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="No space left on device") as e:
        midas.write_midas_caked(res, path)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert asked == [need] and list(tmp_path.iterdir()) == []
    # Without posix_fallocate (or a file system that has none): the free space is checked.
    monkeypatch.delattr(os, "posix_fallocate")
    free = {"bytes": need - 1}
    monkeypatch.setattr(midas.shutil, "disk_usage", lambda p: SimpleNamespace(free=free["bytes"]))
    with pytest.raises(OSError, match=f"{need - 1} bytes free where writing needs {need}") as e:
        midas.write_midas_caked(res, path)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []
    free["bytes"] = need
    assert (
        midas.write_midas_caked(res, path).read_bytes()
        == _old_write_midas_caked(res, tmp_path / "old.caked.hdf").read_bytes()
    )


_LIMITED = """
import errno, os, resource, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
import numpy as np
from radint.io import midas, nexus
from tests.test_midas_writers_stream import _stack
out = Path({out!r})
res = _stack(40, 16, 200, omega_sum_frames=5)  # ~1 MB of cakes, written twice (frames, sums)
resource.setrlimit(resource.RLIMIT_FSIZE, (600 << 10, resource.RLIM_INFINITY))
if {unchecked}:
    # As on a disk that other programs fill meanwhile, without posix_fallocate: the writes
    # themselves fail (EFBIG past the limit, as ENOSPC would), under HDF5.
    nexus._file_size_limit = lambda: None
    del os.posix_fallocate
made = []
entries = midas.midas_entries
def counted(result):
    out = entries(result)
    for e in out:
        object.__setattr__(e, "make", lambda make=e.make: made.append(1) or make())
    return out
midas.midas_entries = counted
try:
    midas.write_midas_caked(res, out / "s.caked.hdf")
except OSError as e:
    print("error", e.errno == errno.EFBIG, e.filename == str(out / "s.caked.hdf"), e.strerror)
# After a failed write no more datasets are made (nor held in memory): of 40 frames and 8
# chunk sums, those up to the limit.
print("made", 0 < len(made) < len(entries(res)) if {unchecked} else len(made) == 0)
midas.midas_entries = entries
print("left", sorted(p.name for p in out.iterdir()))
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print("size", midas.write_midas_caked(res, out / "s.caked.hdf").stat().st_size > 600 << 10)
"""


@pytest.mark.parametrize("unchecked", [False, True])
def test_caked_hdf_under_a_file_size_limit_fails_cleanly(tmp_path: Path, unchecked: bool) -> None:
    """A real limit (ulimit -f; the kernel fails writes past it with EFBIG as a full disk does
    with ENOSPC): refused before HDF5 writes anything, or, where the limit is not known ahead,
    the failing writes are kept from HDF5, which closes the file normally; the error names the
    file, nothing is left, no HDF5 error is printed, not even at exit, and the process exits 0."""
    out = tmp_path / "out"
    out.mkdir()
    script = _LIMITED.format(repo=str(REPO), out=str(out), unchecked=unchecked)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    why = "the file could not be written" if unchecked else "the file size limit (ulimit -f)"
    assert lines[0].startswith(f"error True True File too large: {why}"), lines
    assert lines[1:] == ["made True", "left []", "size True"]


def test_c_int_attributes_past_int32_are_kept_whole(tmp_path: Path) -> None:
    """Integer attributes are C ints (int32) as IntegratorZarrOMP writes them, except a value
    int32 cannot hold (a frame number of a stream past 2^31 frames): kept whole as int64, where
    it used to fail the whole file at the end of the stream."""
    with h5py.File(tmp_path / "a.h5", "w") as f:
        d = f.create_dataset("x", data=[0.0])
        for key, value in (("small", 7), ("negative", -5), ("big", 2**31 + 5), ("edge", 2**31 - 1)):
            midas._set_c_attribute(d, key, value)
    with h5py.File(tmp_path / "a.h5") as f:
        a = f["x"].attrs
        assert {k: (a[k].dtype, int(a[k][0])) for k in a} == {
            "small": (np.int32, 7), "negative": (np.int32, -5), "big": (np.int64, 2**31 + 5),
            "edge": (np.int32, 2**31 - 1),
        }  # fmt: skip
