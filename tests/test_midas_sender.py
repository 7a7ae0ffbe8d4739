"""MIDAS's own frame sender (FF_HEDM/workflows/integrator_server.py) against radint's TCP server.

The sender is MIDAS code under its own licence, so it is not bundled: point
``RADINT_MIDAS_SENDER`` at a copy of ``integrator_server.py`` (from marinerhemant/MIDAS; see
tests/data/PROVENANCE.md) to run these tests; they skip otherwise (as in CI). The sender always
connects to 127.0.0.1:60439, so the server here listens there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from radint import IntegrationConfig, Integrator
from radint.stream import Pipeline, TcpSource
from tests.test_stream import DETECTOR, SHAPE

SENDER = os.environ.get("RADINT_MIDAS_SENDER", "")
pytestmark = pytest.mark.skipif(
    not Path(SENDER).is_file(), reason="RADINT_MIDAS_SENDER (MIDAS integrator_server.py) not set"
)


def frames(n: int, dtype: str, big: bool) -> list[np.ndarray]:
    """Distinct frames; with ``big`` some pixels exceed 65535 (the sender's hybrid format)."""
    out = []
    for k in range(n):
        f = ((np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE) * (k + 3)) % 1000).astype(dtype)
        if big:
            f[5, 7 + k] = 70000 + k
            f[40, 3] = 123456
        out.append(f)
    return out


def run_sender(tmp_path: Path, data_dir: Path, extension: str, compress: bool, n: int):
    """Start radint's pipeline on :60439, run MIDAS's sender on ``data_dir``, return the rows."""
    config = IntegrationConfig.from_text(DETECTOR, "sender.txt")
    integ = Integrator(config, n_threads=1)
    out = tmp_path / "out"
    pipe = Pipeline(integ, [TcpSource(SHAPE, port=60439)], out, max_frames=n, idle_timeout=30)
    pipe.start()
    cmd = [sys.executable, SENDER, "--folder", str(data_dir), "--extension", extension,
           "--mapping-file", str(tmp_path / "map.json")]  # fmt: skip
    if compress:
        cmd.append("--compress")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    summary = pipe.wait(60)
    assert summary is not None and summary.written == n, (summary, proc.stdout, proc.stderr)
    with h5py.File(out / "stream.h5") as f:
        ids = f["entry/azint2d/data/frame_id"][()]
        cake = f["entry/azint2d/data/I"][()]
    mapping = json.loads((tmp_path / "map.json").read_text())
    return integ, ids, cake, mapping


@pytest.mark.parametrize("compress", [False, True])
def test_midas_sender_tiff_frames_integrate_like_the_files(tmp_path, compress):
    data = tmp_path / "tif"
    data.mkdir()
    sent = frames(4, "uint32", big=True)
    for k, f in enumerate(sent):
        tifffile.imwrite(data / f"scan_{k:06d}.tif", f)
    integ, ids, cake, mapping = run_sender(tmp_path, data, "tif", compress, len(sent))
    assert sorted(ids.tolist()) == [0, 1, 2, 3]
    # The sender orders files by name; each row matches its file integrated directly.
    for row, frame_id in enumerate(ids):
        name = Path(mapping[str(frame_id)]["filename"]).name
        want = integ.integrate(tifffile.imread(data / name)).cake
        np.testing.assert_allclose(cake[row], want, rtol=1e-12, equal_nan=True)


def test_midas_sender_hdf5_stack(tmp_path):
    data = tmp_path / "h5"
    data.mkdir()
    sent = np.stack(frames(5, "uint16", big=False))
    with h5py.File(data / "stack.h5", "w") as f:
        f["exchange/data"] = sent
    integ, ids, cake, mapping = run_sender(tmp_path, data, "h5", False, len(sent))
    assert ids.tolist() == [0, 1, 2, 3, 4] and len(mapping) == 5
    np.testing.assert_allclose(cake, integ.integrate_stack(sent).cake, rtol=1e-12, equal_nan=True)
