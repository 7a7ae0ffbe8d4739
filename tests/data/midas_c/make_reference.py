"""Regenerate the C reference maps of tests/data/midas_c (not run by the tests).

Usage::

    python tests/data/midas_c/make_reference.py /path/to/DetectorMapper [case ...]

For every case directory (default: all that hold a ``params.txt``) this writes ``mask.tif``
where the case defines one, runs MIDAS's C ``DetectorMapper params.txt -nCPUs 1`` there (in a
temporary copy, so Map.bin/nMap.bin never land in the tree) and condenses its output into
``c_map.npz``:

* ``bin``, ``pixel`` (int32): one row per (bin, raw pixel) pair the C map holds, sorted; bin
  ``b = r·n_eta + e``, pixel ``z·NrPixelsY + y`` of the raw image (the C record's float y, z
  rounded: with SubPixelLevel > 1 they carry the sub-pixel centre offset, |offset| < ½);
* ``area`` (float64): Σ areaWeight of the C records of that pair (several with sub-pixels);
* ``delta_r`` (float32): their area-weighted mean deltaR;
* ``n_records`` (uint8): how many C records were merged into the pair;
* ``bin_area`` (float64, per bin): Σ areaWeight in record order, as ``DetectorMap.load_midas``
  sums it (``bin_geometric_area`` of the C map);
* ``mask_map`` (uint8, per bin; empty when the C program wrote no maskMap.bin);
* ``header_hash`` (uint8[32]): the parameter hash of the Map.bin header.

The MIDAS commit, compiler command and blosc shim are in tests/data/PROVENANCE.md.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MAGIC = 0x3050414D
HEADER = 64
RECORD = np.dtype([("y", "<f4"), ("z", "<f4"), ("frac", "<f8"), ("dr", "<f4"), ("aw", "<f4")])


def write_masks() -> None:
    """The one masked case: a raw-frame uint8 mask with 1 = masked (plus values MIDAS ignores)."""
    import tifffile

    mask = np.zeros((48, 64), np.uint8)  # (NrPixelsZ, NrPixelsY), raw image orientation
    mask[5:9, 40:52] = 1  # a block (e.g. a beam-stop arm)
    mask[:, 13] = 1  # a dead column
    rng = np.random.default_rng(20260525)
    hot = rng.choice(mask.size, 40, replace=False)
    mask.flat[hot] = 1
    mask[30:34, 2:6] = 255  # MIDAS masks only where the value is exactly 1:
    mask[40, 50:60] = 2  # these stay unmasked
    tifffile.imwrite(HERE / "transopt_mask" / "mask.tif", mask)


def write_residual_map() -> None:
    """residual_transopt's ΔR map (float64, NrPixelsZ × NrPixelsY as stored): it varies along
    both axes, so reading it flipped or not gives different maps."""
    z, y = np.mgrid[0:48, 0:64]
    resid = 0.4 * z / 48 + 0.2 * np.sin(y / 7.0)
    resid.astype("<f8").tofile(HERE / "residual_transopt" / "resid.bin")


def read_bin(path: Path) -> tuple[bytes | None, bytes]:
    raw = path.read_bytes()
    if len(raw) >= HEADER and int.from_bytes(raw[:4], "little") == MAGIC:
        return raw[:HEADER], raw[HEADER:]
    return None, raw


def condense(out_dir: Path, n_pixels_y: int) -> dict[str, np.ndarray]:
    header, body = read_bin(out_dir / "Map.bin")
    records = np.frombuffer(body, RECORD)
    _, nbody = read_bin(out_dir / "nMap.bin")
    nmap = np.frombuffer(nbody, "<i4").reshape(-1, 2)
    counts = nmap[:, 0].astype(np.int64)
    assert (nmap[:, 1] == np.concatenate([[0], np.cumsum(counts)[:-1]])).all()
    bins = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    y = np.rint(records["y"]).astype(np.int64)
    z = np.rint(records["z"]).astype(np.int64)
    assert (np.abs(records["y"] - y) < 0.5).all() and (np.abs(records["z"] - z) < 0.5).all()
    pixel = z * n_pixels_y + y
    aw = records["aw"].astype(np.float64)
    bin_area = np.zeros(len(counts))
    np.add.at(bin_area, bins, aw)
    key = bins * (1 << 32) + pixel
    uniq, inverse, n_records = np.unique(key, return_inverse=True, return_counts=True)
    area = np.zeros(len(uniq))
    np.add.at(area, inverse, aw)
    dr_area = np.zeros(len(uniq))
    np.add.at(dr_area, inverse, records["dr"].astype(np.float64) * aw)
    mask_map = np.zeros(0, np.uint8)
    if (out_dir / "maskMap.bin").exists():
        _, mbody = read_bin(out_dir / "maskMap.bin")
        mask_map = (np.frombuffer(mbody, "<i4") != 0).astype(np.uint8)
    return {
        "bin": (uniq >> 32).astype(np.int32),
        "pixel": (uniq & 0xFFFFFFFF).astype(np.int32),
        "area": area,
        "delta_r": (dr_area / area).astype(np.float32),
        "n_records": n_records.astype(np.uint8),
        "bin_area": bin_area,
        "mask_map": mask_map,
        "header_hash": np.frombuffer(header[8:40], np.uint8) if header else np.zeros(0, np.uint8),
    }


def n_pixels_y(params: Path) -> int:
    for line in params.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("NrPixelsY", "NrPixels"):
            return int(parts[1])
    raise ValueError(f"{params}: no NrPixelsY")


def main(mapper: str, cases: list[str]) -> None:
    write_masks()
    write_residual_map()
    for case in cases:
        src = HERE / case
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for f in src.iterdir():
                if f.suffix in (".txt", ".tif", ".bin"):
                    shutil.copy(f, work / f.name)
            subprocess.run(
                [mapper, "params.txt", "-nCPUs", "1"],
                cwd=work,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            data = condense(work, n_pixels_y(src / "params.txt"))
        np.savez_compressed(src / "c_map.npz", **data)
        print(f"{case}: {len(data['bin'])} (bin, pixel) pairs, {data['n_records'].sum()} records")


if __name__ == "__main__":
    here_cases = sorted(p.parent.name for p in HERE.glob("*/params.txt"))
    main(sys.argv[1], sys.argv[2:] or here_cases)
