"""Streaming server: wire protocol, TCP reliability, backpressure, drain, PVA, folder, sender.

Every server listens on 127.0.0.1 with an ephemeral port, every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radint import IntegrationConfig
from radint.exceptions import RadintError
from radint.integrator import Integrator
from radint.stream import FolderSource, Pipeline, PvaSource, TcpSource, send_frames
from radint.stream import pipeline as pipeline_mod
from radint.stream.control import UNCHANGED
from radint.stream.protocol import (
    DTYPES,
    ProtocolError,
    decode_frame,
    decode_stream,
    encode_frame_bytes,
    sender_encoding,
)
from radint.stream.sender import expand_inputs, iter_file_frames
from radint.stream.sources import FramePool, SourceStats, decompress_ndarray

NY, NZ = 64, 48
DETECTOR = f"""
NrPixelsY {NY}
NrPixelsZ {NZ}
px 172
Lsd 300000
BC 30.5 22.5
Wavelength 0.172973
RMin 1
RMax 40
RBinSize 2
EtaMin -180
EtaMax 180
EtaBinSize 30
"""
SHAPE = (NZ, NY)
N_PIX = NY * NZ


@pytest.fixture(scope="module")
def config() -> IntegrationConfig:
    return IntegrationConfig.from_text(DETECTOR, "stream.txt")


@pytest.fixture(scope="module")
def integrator(config: IntegrationConfig) -> Integrator:
    return Integrator(config, backend="cpu", n_threads=1)


def frame(i: int, dtype: str = "u4") -> np.ndarray:
    return ((np.arange(N_PIX, dtype=np.int64).reshape(SHAPE) + i) % 251).astype(dtype)


def start_pipeline(integrator, tmp_path, **kw) -> tuple[Pipeline, TcpSource]:
    src = TcpSource(SHAPE, host="127.0.0.1", port=0)
    kw.setdefault("idle_timeout", 20.0)  # bounded even if a test fails half-way
    p = Pipeline(integrator, [src], tmp_path, **kw)
    p.start()
    return p, src


def finish(p: Pipeline, timeout: float = 30.0):
    p.stop()
    summary = p.wait(timeout)
    assert summary is not None, "pipeline did not drain in time"
    return summary


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def stream_rows(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {
            "frame_id": f["entry/azint1d/data/frame_id"][()],
            "I": f["entry/azint1d/data/I"][()],
            "cake": f["entry/azint2d/data/I"][()],
            "source": f["entry/stream/source"].asstr()[()],
            "dataset_num": f["entry/stream/dataset_num"][()],
            "source_timestamp": f["entry/stream/source_timestamp"][()],
        }


# ----------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("dtype", ["u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"])
def test_protocol_round_trip_every_dtype(dtype):
    data = frame(3, dtype)
    raw = encode_frame_bytes(70001, data)
    num, code = struct.unpack("<HH", raw[:4])
    assert num == 70001 % 65536
    assert code == {"u1": 0, "i1": 0, "u2": 1, "i2": 1, "u4": 2, "i4": 2}.get(
        dtype, {"u8": 3, "i8": 3, "f4": 4, "f8": 5}.get(dtype)
    )
    assert len(raw) == 4 + N_PIX * DTYPES[code].itemsize
    (got,), used = decode_stream(raw, N_PIX)
    assert used == len(raw) and got[1] == code
    # signed data arrive re-interpreted as the unsigned type of that width (MIDAS behaviour)
    np.testing.assert_array_equal(got[2].view(data.dtype).reshape(SHAPE), data)


@pytest.mark.parametrize("dtype", [">i2", ">i4", ">u2", ">u4", ">f4", ">f8"])
def test_protocol_big_endian_frames_keep_their_values(dtype):
    """Big-endian frames (HDF5 / .npy written so) go out with their values, not their bytes read
    backwards (a '>i4' 300 arrived as 738 263 040)."""
    data = (np.arange(N_PIX) % 1000 - 300 * ("i" in dtype)).astype(dtype).reshape(SHAPE)
    (got,), _ = decode_stream(encode_frame_bytes(3, data), N_PIX)
    expected = data.astype(data.dtype.newbyteorder("="))
    arrived = got[2].view(expected.dtype) if expected.dtype.kind == "i" else got[2]
    np.testing.assert_array_equal(arrived.reshape(SHAPE), expected)


def test_protocol_byte_exact_layout():
    data = np.array([[1, 2], [3, 4]], dtype=np.uint16)
    assert encode_frame_bytes(5, data) == struct.pack("<HH", 5, 1) + data.tobytes()
    assert encode_frame_bytes(0, data.astype("f8"))[:4] == b"\x00\x00\x05\x00"
    # other types go out as int64 like MIDAS's fallback
    code, pieces = sender_encoding(np.ones(4, dtype=np.float16))
    assert code == 3 and pieces[0].dtype == np.dtype("<i8")


def test_protocol_compress_uint16_and_hybrid():
    small = frame(1, "u4")
    raw = encode_frame_bytes(7, small, compress=True)
    assert struct.unpack("<HH", raw[:4]) == (7, 1) and len(raw) == 4 + 2 * N_PIX
    big = frame(2, "i8")
    big.flat[[5, 17, N_PIX - 1]] = [70000, 2**40, 65536]
    raw = encode_frame_bytes(8, big, compress=True)
    expected = (
        struct.pack("<HHI", 8, 6, 3)
        + big.astype("<u2").tobytes()
        + np.array([5, 17, N_PIX - 1], "<i4").tobytes()
        + np.array([70000, 2**40, 65536], "<i8").tobytes()
    )
    assert raw == expected
    assert len(raw) == 4 + 4 + 2 * N_PIX + 12 * 3
    np.testing.assert_array_equal(decode_frame(6, raw[4:], N_PIX).reshape(SHAPE), big)


def test_protocol_errors():
    with pytest.raises(ProtocolError, match="unknown dtype code 9"):
        decode_frame(9, b"", N_PIX)
    with pytest.raises(ProtocolError, match="expected"):
        decode_frame(1, b"\x00" * 10, N_PIX)
    bad = struct.pack("<I", 1) + b"\x00" * (2 * N_PIX) + struct.pack("<iq", N_PIX, 1)
    with pytest.raises(ProtocolError, match="out of range"):
        decode_frame(6, bad, N_PIX)


# ----------------------------------------------------------------------------- TCP server
def test_2000_frames_written_exactly_once(integrator, tmp_path):
    n = 2000
    p, src = start_pipeline(integrator, tmp_path, max_frames=n, save_interval=500)
    frames = ((frame(i, "u2"), f"f{i}") for i in range(n))
    sent = send_frames(frames, port=src.port, mapping_file=tmp_path / "map.json", shape=SHAPE)
    assert sent == n
    summary = p.wait(120)
    assert summary is not None
    assert (summary.received, summary.integrated, summary.written, summary.dropped) == (n, n, n, 0)
    rows = stream_rows(tmp_path / "stream.h5")
    np.testing.assert_array_equal(rows["frame_id"], np.arange(n))
    assert len(set(rows["frame_id"].tolist())) == n
    assert np.isnan(rows["source_timestamp"]).all()  # MIDAS's protocol carries no time
    # Frame buffers are recycled (bounded by the queues), and no frame was overwritten by a
    # later one before it was integrated: rows spread over the run match direct integrations.
    assert src.pool.allocated <= 6  # slabs of 8 frames
    for k in range(0, n, 97):
        want = integrator.integrate(frame(k, "u2")).lineout
        np.testing.assert_allclose(rows["I"][k], want, rtol=1e-6, equal_nan=True)
    mapping = json.loads((tmp_path / "map.json").read_text())
    assert len(mapping) == n and mapping["1999"]["filename"] == "f1999"


def test_waiting_frames_are_integrated_as_one_stack(integrator, tmp_path):
    """Frames already queued go through one integrate_stack call (up to 8, wherever their
    buffers are); a frame of another type breaks the run; rows and ids come out as sent."""
    from radint.stream.sources import StreamItem

    pool = FramePool()
    items = []
    for i in range(12):
        if i == 8:
            data = frame(i, "u2").copy()  # not a pool row
        elif i == 9:
            data = frame(i, "u2").astype(np.uint32)  # another type
        else:
            data = pool.take(N_PIX, "u2").reshape(SHAPE)
            data[...] = frame(i, "u2")
        items.append(StreamItem(i, data, "test", time.time(), pool=pool))
    calls = []
    real_stack, real_one = integrator.integrate_stack, integrator.integrate

    def spy_stack(frames, **kw):
        calls.append(len(frames))
        return real_stack(frames, **kw)

    def spy_one(f, **kw):
        calls.append(1)
        return real_one(f, **kw)

    integrator.integrate_stack, integrator.integrate = spy_stack, spy_one
    try:
        p = Pipeline(integrator, [], tmp_path, queue_size=32)
        for item in items:
            p.frames.put(item)
        p.start()
        summary = finish(p)
    finally:
        integrator.integrate_stack, integrator.integrate = real_stack, real_one
    assert calls == [8, 1, 1, 2] and summary.written == 12
    rows = stream_rows(tmp_path / "stream.h5")
    np.testing.assert_array_equal(rows["frame_id"], np.arange(12))
    for i in range(12):
        want = integrator.integrate(frame(i, "u2"))
        np.testing.assert_allclose(rows["cake"][i], want.cake, rtol=1e-12, equal_nan=True)


def test_frame_pool_hands_out_slab_rows_and_reuses_only_its_own():
    """Rows of one slab are distinct frames of one allocation; a slab is reused once all its
    rows are given back; foreign arrays are ignored."""
    pool = FramePool(keep=2)
    rows = [pool.take(12, "<u2") for _ in range(FramePool.SLOTS)]
    frames = [r.reshape(3, 4) for r in rows]  # the pipeline sees reshaped frames
    assert pool.allocated == 1
    assert not any(np.shares_memory(frames[0], f) for f in frames[1:])
    other = pool.take(12, "<u4")  # another dtype is another slab
    assert not np.shares_memory(other, rows[0]) and pool.allocated == 2
    pool.give_back(np.zeros((3, 4), "<u2")[1:])  # a view of a foreign array: ignored
    for f in frames[:-1]:
        pool.give_back(f)
    nxt = pool.take(12, "<u2")  # one row still out: a new slab
    assert not np.shares_memory(nxt, rows[0]) and pool.allocated == 3
    pool.give_back(frames[-1])  # now the first slab is free again
    for _ in range(FramePool.SLOTS - 1):
        pool.give_back(pool.take(12, "<u2"))
    assert np.shares_memory(pool.take(12, "<u2"), rows[0]) and pool.allocated == 3


def test_frame_pool_slabs_from_the_integrators_host_buffer(integrator, tmp_path):
    """The pipeline makes its sources' slabs with Integrator.host_buffer (page-locked under the
    CUDA backend); slabs whose memory belongs to a non-array buffer (as cupyx.empty_pinned's)
    are recycled like numpy's own."""
    made = []

    def buffer_backed(shape, dtype):  # the memory is a bytearray, as a pinned allocation's
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        a = np.ndarray(shape, dtype=dtype, buffer=bytearray(n))
        made.append(a)
        return a

    pool = FramePool(allocate=buffer_backed)
    rows = [pool.take(12, "<u2") for _ in range(FramePool.SLOTS)]
    assert len(made) == 1 and all(np.shares_memory(r, made[0]) for r in rows)
    for r in rows:
        pool.give_back(r.reshape(3, 4))
    for _ in range(FramePool.SLOTS):
        pool.give_back(pool.take(12, "<u2"))
    assert pool.allocated == 1 and len(made) == 1  # reused, not reallocated

    p, src = start_pipeline(integrator, tmp_path, max_frames=1)
    assert src.pool.allocate == integrator.host_buffer
    send_frames(((frame(0), "f0"),), port=src.port, mapping_file=None)
    assert p.wait(30).written == 1


def test_dataset_num_wrap_gives_unique_ids(integrator, tmp_path):
    p, src = start_pipeline(integrator, tmp_path, max_frames=6)
    frames = ((frame(i), f"f{i}") for i in range(6))
    send_frames(frames, port=src.port, mapping_file=None, first_dataset_num=65533)
    summary = p.wait(30)
    assert summary is not None and summary.written == 6
    rows = stream_rows(tmp_path / "stream.h5")
    np.testing.assert_array_equal(rows["dataset_num"], [65533, 65534, 65535, 0, 1, 2])
    np.testing.assert_array_equal(rows["frame_id"], [65533, 65534, 65535, 65536, 65537, 65538])
    # Provenance as a batch records it: the TCP client by its source name, the frame's number.
    from radint.io import read_provenance

    prov = read_provenance(tmp_path / "stream.h5")
    assert prov is not None and prov.files == sorted(set(rows["source"].tolist()))
    assert prov.files[0].startswith("tcp:127.0.0.1:")
    assert prov.frame_index.tolist() == rows["frame_id"].tolist()


def test_stream_subtracts_a_dark(integrator, tmp_path):
    dark = np.full(SHAPE, 7.0)
    p, src = start_pipeline(integrator, tmp_path, max_frames=3, dark=dark)
    send_frames(((frame(i), f"f{i}") for i in range(3)), port=src.port, mapping_file=None)
    assert p.wait(30).written == 3
    rows = stream_rows(tmp_path / "stream.h5")
    for k in range(3):
        want = integrator.integrate(frame(k), dark=dark).lineout
        np.testing.assert_allclose(rows["I"][k], want, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("compress", [False, True])
def test_pilatus_gap_values_survive_the_unsigned_wire(config, tmp_path, caplog, compress):
    """Regression (CLI audit): int32 Pilatus frames with -1 / -2 in gaps and bad pixels go out
    unsigned (the MIDAS protocol has no signed types; --compress casts to uint16), so they
    arrived as 4294967295 / 65535 and were integrated as counts. A negative GapIntensity /
    BadPxIntensity now also matches its two's-complement value in unsigned frames; frames
    with values above 65535 under --compress cannot keep them, and the sender says so."""
    pilatus = Integrator(config.replace(gap_intensity=-1.0, bad_px_intensity=-2.0),
                         backend="cpu", n_threads=1)  # fmt: skip
    frames = []
    for i in range(3):
        f = frame(i, "i4")
        f[5:7, :] = -1
        f[:, 40] = -2
        frames.append(f)
    frames.append(frame(3, "i4") * 1000)  # values above 65535: hybrid under --compress
    frames[-1][5:7, :] = -1
    p, src = start_pipeline(pilatus, tmp_path, max_frames=len(frames))
    with caplog.at_level(logging.INFO, logger="radint"):
        send_frames(((f, f"f{i}") for i, f in enumerate(frames)), port=src.port,
                    mapping_file=None, compress=compress)  # fmt: skip
    assert p.wait(30).written == len(frames)
    rows = stream_rows(tmp_path / "stream.h5")
    exact = 3 if compress else len(frames)
    for k in range(exact):
        want = pilatus.integrate(frames[k])
        assert np.isnan(want.cake).sum() < want.cake.size
        np.testing.assert_allclose(rows["cake"][k], want.cake, rtol=1e-12, equal_nan=True)
    if compress:
        assert "--compress sends values as unsigned 16-bit" in caplog.text
        assert "which no receiver can tell from counts" in caplog.text  # the last frame
    else:
        assert "go out as unsigned 32-bit integers" in caplog.text
        assert "-1 arrives as 4294967295" in caplog.text


def test_negative_markers_match_their_unsigned_wrap_in_every_path(config):
    """uint32 / uint16 frames holding the wrapped -1 / -2 give the int32 frame's result, through
    the marker map (integer frames on the CPU) and through the float copy (with dead_below)."""
    base = frame(0, "i4")
    base[3, :] = -1
    base[:, 9] = -2
    for extra in ({}, {"dead_below": -1e9}):
        pilatus = Integrator(config, backend="cpu", n_threads=1, invalid_values=(-1, -2),
                             **extra)  # fmt: skip
        want = pilatus.integrate(base)
        for dtype in ("u4", "u2"):
            got = pilatus.integrate(base.astype(dtype))
            np.testing.assert_allclose(got.cake, want.cake, rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(got.lineout, want.lineout, rtol=1e-12, equal_nan=True)
            assert got.metadata["nan_pixels"] == want.metadata["nan_pixels"] > 0
        # Without markers the wrapped values count: the rule applies to markers only.
        plain = Integrator(config, backend="cpu", n_threads=1, invalid_values=(), **extra)
        assert not np.allclose(plain.integrate(base.astype("u4")).lineout, want.lineout,
                               equal_nan=True)  # fmt: skip


def test_sender_warns_where_compress_changes_float_values(tmp_path, caplog):
    port, _, t = _capture_one_connection()
    f = frame(0, "f4") + 0.25
    with caplog.at_level(logging.WARNING, logger="radint"):
        send_frames([(f, "a"), (f, "b")], port=port, mapping_file=None, compress=True)
    t.join(10)
    assert caplog.text.count("--compress sends whole numbers") == 1  # once per send
    caplog.clear()
    port, _, t = _capture_one_connection()
    with caplog.at_level(logging.WARNING, logger="radint"):
        send_frames([(frame(0, "f4"), "a")], port=port, mapping_file=None, compress=True)
    t.join(10)
    assert "--compress" not in caplog.text  # whole, non-negative values: nothing changes


def test_midas_lineout_bin_follows_the_gpu_program_with_normalize_0(config, tmp_path):
    """The GPU program writes Σ_η I·A / Σ_η A whatever Normalize says; radint's own lineout
    sums over η with Normalize 0 (stream.h5 keeps that)."""
    from radint.io import read_nexus

    integ = Integrator(config.replace(normalize=False), backend="cpu", n_threads=1)
    p, src = start_pipeline(integ, tmp_path, max_frames=2, midas_files=True)
    send_frames(((frame(i), f"f{i}") for i in range(2)), port=src.port, mapping_file=None)
    assert p.wait(30).written == 2
    r = read_nexus(tmp_path / "stream.h5")
    lines = np.fromfile(tmp_path / "lineout.bin", "<f8").reshape(2, r.n_r, 2)[:, :, 1]
    area = np.where(r.area[0] > 1e-9, r.area[0], 0.0)
    want = (np.nan_to_num(r.cake) * area).sum(axis=1) / np.maximum(area.sum(axis=0), 1e-300)
    np.testing.assert_allclose(lines, want, rtol=1e-12)
    assert not np.allclose(lines, np.nan_to_num(r.lineout))


def test_midas_outputs_without_a_mapping_name_frames_of_several_connections_by_id(
    integrator, tmp_path
):
    """Review (D3): frames of one sender over two connections arrived as ids 0 2 4 1 3 5 and,
    without --mapping-file, integrator_output.h5 named them by arrival (lineouts/1 held frame
    2), though its ids say which frame each is. They are sorted and named by id now; ids that
    are no sending indices (PVA's, several senders') keep MIDAS's arrival naming."""
    p, src = start_pipeline(integrator, tmp_path, max_frames=6, midas_files=True)
    first, second = connect(src.port), connect(src.port)  # one sender, two connections
    with first, second:
        for i in (0, 2, 4):
            first.sendall(encode_frame_bytes(i, frame(i)))
        assert wait_for(lambda: p.written == 3)  # this arrival order, whatever the threads do
        for i in (1, 3, 5):
            second.sendall(encode_frame_bytes(i, frame(i)))
        assert p.wait(30).written == 6
    assert stream_rows(tmp_path / "stream.h5")["frame_id"].tolist() == [0, 2, 4, 1, 3, 5]
    with h5py.File(tmp_path / "integrator_output.h5") as f:
        assert list(f["lineouts"]) == [str(i) for i in range(6)]
        for i in range(6):
            want = np.nan_to_num(integrator.integrate(frame(i)).lineout)
            np.testing.assert_allclose(f[f"lineouts/{i}"][:, 1], want, rtol=1e-12, err_msg=i)
    from radint.io.midas import _sender_ids_by_row

    tcp = ["tcp:127.0.0.1:1"] * 3
    assert _sender_ids_by_row([0, 2, 1], tcp) == {0: 0, 1: 2, 2: 1}
    assert _sender_ids_by_row([0, 1, 2], tcp) is None  # one connection: MIDAS's names
    assert _sender_ids_by_row([0, 1, 0], tcp) is None  # two senders one after another
    assert _sender_ids_by_row([7, 3, 5], ["pva:IOC:Image"] * 3) is None


def test_convert_of_a_stream_result_keeps_its_stream_record(integrator, tmp_path):
    """Found by a user check: `radint convert stream.h5 --format nexus,zarr` dropped
    entry/stream (per-row source and dataset_num, the counters `radint info` prints)."""
    from radint.cli import main

    live = tmp_path / "live"
    p, src = start_pipeline(integrator, live, max_frames=3)
    send_frames(((frame(i), f"f{i}") for i in range(3)), port=src.port, mapping_file=None,
                first_dataset_num=7)  # fmt: skip
    assert p.wait(30).written == 3
    with h5py.File(live / "stream.h5", "a") as f:  # as a PVA stream's NDAttributes
        f["entry/stream/attributes/Sample"] = ["a", "b", "c"]
        f["entry/stream/attributes/AcquireTime"] = [0.5, np.nan, 1.0]
        f["entry/stream/attributes"].attrs["NX_class"] = "NXcollection"
    out = tmp_path / "conv"
    assert main(["convert", str(live / "stream.h5"), "--format", "nexus,zarr", "-o", str(out),
                 "-q"]) == 0  # fmt: skip
    want = stream_rows(live / "stream.h5")
    np.testing.assert_array_equal(stream_rows(out / "stream.h5")["source"], want["source"])
    np.testing.assert_array_equal(stream_rows(out / "stream.h5")["dataset_num"], [7, 8, 9])
    with h5py.File(live / "stream.h5") as f, h5py.File(out / "stream.h5") as g:
        assert g["entry/stream"].attrs["frames_written"] == 3
        assert dict(g["entry/stream"].attrs) == dict(f["entry/stream"].attrs)
        for name in f["entry/stream"]:  # the columns' descriptions and units go along
            assert dict(g["entry/stream"][name].attrs) == dict(f["entry/stream"][name].attrs)
        assert g["entry/stream/timestamp"].attrs["units"] == "s"
        assert g["entry/stream/attributes/Sample"].asstr()[()].tolist() == ["a", "b", "c"]
        np.testing.assert_array_equal(g["entry/stream/attributes/AcquireTime"], [0.5, np.nan, 1])
        assert g["entry/stream/attributes"].attrs["NX_class"] == "NXcollection"
    import zarr

    z = zarr.open_group(str(out / "stream.zarr"), mode="r")
    assert list(z["entry/stream/dataset_num"][:]) == [7, 8, 9]
    assert z["entry/stream/source_timestamp"].attrs["units"] == "s"
    assert list(z["entry/stream/attributes/Sample"][:]) == ["a", "b", "c"]
    np.testing.assert_array_equal(z["entry/stream/attributes/AcquireTime"][:], [0.5, np.nan, 1])
    assert list(z["entry/stream/source"][:]) == list(want["source"])
    assert z["entry/stream"].attrs["frames_written"] == 3


def test_a_restarted_stream_keeps_the_previous_runs_files(integrator, tmp_path, caplog):
    for run in range(2):
        p, src = start_pipeline(integrator, tmp_path, max_frames=3)
        send_frames(((frame(i + 10 * run), f"f{i}") for i in range(3)), port=src.port,
                    mapping_file=None, first_dataset_num=10 * run)  # fmt: skip
        assert p.wait(30).written == 3
    kept = list(tmp_path.glob("previous-*/stream.h5"))
    assert len(kept) == 1 and "moved to" in caplog.text
    np.testing.assert_array_equal(stream_rows(kept[0])["frame_id"], [0, 1, 2])
    np.testing.assert_array_equal(stream_rows(tmp_path / "stream.h5")["frame_id"], [10, 11, 12])


@pytest.mark.parametrize(
    ("numbers", "ids"),
    [([0, 0, 0], [0, 0, 0]), ([5, 6, 3, 4], [5, 6, 3, 4]), ([65535, 2, 1], [65535, 65538, 65537])],
)
def test_dataset_num_steps_back_are_the_senders_own_numbers(integrator, tmp_path, caplog,
                                                            numbers, ids):  # fmt: skip
    """Only a step back of more than half the 16-bit range is a wrap past 65535; a sender that
    numbers anew keeps its numbers (ids repeat, logged once)."""
    p, src = start_pipeline(integrator, tmp_path, max_frames=len(numbers))
    client = connect(src.port)
    client.sendall(b"".join(encode_frame_bytes(n, frame(i)) for i, n in enumerate(numbers)))
    assert p.wait(30).written == len(numbers)
    client.close()
    np.testing.assert_array_equal(stream_rows(tmp_path / "stream.h5")["frame_id"], ids)
    assert caplog.text.count("numbers frames anew") == 1


def test_frames_a_sender_sends_after_max_frames_are_counted(integrator, tmp_path, caplog, capsys):
    """A sender that goes on for a while after --max-frames (as `radint send` with more files
    does): every frame it sent is read and counted, written or dropped."""
    p, src = start_pipeline(integrator, tmp_path, max_frames=10)
    client = connect(src.port)
    for i in range(15):
        client.sendall(encode_frame_bytes(i, frame(i)))
        time.sleep(0.02)
    summary = p.wait(30)
    client.close()
    assert (summary.received, summary.written, summary.dropped) == (15, 10, 5)
    assert "5 frame(s) read after the stream stopped taking frames" in caplog.text
    # Regression (stream sweep): the counts were printed only, stream.h5 did not say that
    # frames were dropped (a rejected last frame leaves no gap in frame_id to see).
    with h5py.File(tmp_path / "stream.h5", "r") as f:
        counts = dict(f["entry/stream"].attrs)
    assert counts["frames_received"] == 15 and counts["frames_dropped"] == 5
    assert counts["frames_written"] == 10 and counts["partial_frames_discarded"] == 0
    from radint.cli import main

    capsys.readouterr()
    assert main(["info", str(tmp_path / "stream.h5")]) == 0
    assert "stream: received 15, written 10, dropped 5" in capsys.readouterr().out


def test_a_second_stream_on_the_same_directory_leaves_the_first_alone(integrator, tmp_path):
    """The second fails before it moves or touches the running one's files."""
    p, src = start_pipeline(integrator, tmp_path, max_frames=3)
    second = Pipeline(integrator, [TcpSource(SHAPE, port=0)], tmp_path)
    with pytest.raises(
        RadintError, match=rf"another radint stream writes there \(pid {os.getpid()}"
    ):
        second.start()
    send_frames(((frame(i), f"f{i}") for i in range(3)), port=src.port, mapping_file=None)
    assert p.wait(30).written == 3
    assert not list(tmp_path.glob("previous-*"))
    np.testing.assert_array_equal(stream_rows(tmp_path / "stream.h5")["frame_id"], [0, 1, 2])
    third, src3 = start_pipeline(integrator, tmp_path, max_frames=1)  # the lock went with it
    send_frames(((frame(0), "f0"),), port=src3.port, mapping_file=None)
    assert third.wait(30).written == 1


def test_frames_already_sent_when_the_stream_stops_are_counted(integrator, tmp_path):
    """--max-frames 5 against a client that already sent 12 frames: 5 written, and the 7 that
    sat in the socket buffer are read, refused and counted as dropped, not lost unseen."""
    p, src = start_pipeline(integrator, tmp_path, max_frames=5)
    client = connect(src.port)
    client.sendall(b"".join(encode_frame_bytes(i, frame(i)) for i in range(12)))
    summary = p.wait(30)
    client.close()
    assert summary is not None and summary.written == 5
    assert summary.received == 12 and summary.dropped == 7


def test_stopping_under_a_sender_that_never_pauses(integrator, tmp_path, monkeypatch):
    """Stopping under a sender that never pauses: what it sends in the drain second is read and
    counted as dropped, then the connection closes (the sender sees it) and the stop ends."""
    import threading

    slow = integrator.integrate_stack

    def slow_stack(*args, **kwargs):
        time.sleep(0.05)
        return slow(*args, **kwargs)

    monkeypatch.setattr(integrator, "integrate_stack", slow_stack)
    p, src = start_pipeline(integrator, tmp_path)
    sent, failed = [0], threading.Event()

    def client():
        s = connect(src.port)
        try:
            while True:
                s.sendall(encode_frame_bytes(sent[0], frame(sent[0] % 7, "f8")))
                sent[0] += 1
        except OSError:
            failed.set()
        finally:
            s.close()

    threading.Thread(target=client, daemon=True).start()
    assert wait_for(lambda: p.written >= 3)
    p.stop()
    summary = p.wait(30)
    assert failed.wait(10), "the sender was not told that the stream stopped"
    assert summary.dropped == summary.received - summary.written
    assert summary.written < summary.received <= sent[0]
    assert summary.seconds < 15


@pytest.mark.parametrize("waitall", [True, False])
def test_a_quiet_sender_stays_connected_and_a_stop_ends_it_promptly(
    integrator, tmp_path, caplog, monkeypatch, waitall
):
    """The receive timeout (the kernel's, on a blocking socket, so that a frame is one
    MSG_WAITALL call; Python's where that cannot be, Windows): a sender quiet for longer than
    it between frames and inside one stays connected and its frames whole; a stop ends a
    connection left quiet mid-frame promptly, with the partial frame discarded and said."""
    from radint.stream import sources
    from radint.stream.sources import QUIET_S

    monkeypatch.setattr(sources, "WAITALL", waitall)
    caplog.set_level(logging.INFO, logger="radint.stream")
    p, src = start_pipeline(integrator, tmp_path)
    s = connect(src.port)
    s.sendall(encode_frame_bytes(0, frame(0)))
    time.sleep(3 * QUIET_S)
    one = encode_frame_bytes(1, frame(1))
    s.sendall(one[:100])
    time.sleep(3 * QUIET_S)
    s.sendall(one[100:])
    s.sendall(encode_frame_bytes(2, frame(2))[:500])  # then quiet inside frame 2
    assert wait_for(lambda: p.written == 2)
    t0 = time.monotonic()
    p.stop()
    summary = p.wait(30)
    assert time.monotonic() - t0 < 5
    s.close()
    assert (summary.received, summary.written, summary.partial) == (2, 2, 1)
    assert "went quiet while the stream was stopping" in caplog.text
    assert sorted(stream_rows(tmp_path / "stream.h5")["frame_id"].tolist()) == [0, 1]


def test_midas_outputs_skipped_on_request_say_how_to_make_them(integrator, tmp_path, caplog):
    """A second Ctrl-C of `radint stream --midas-files` skips integrator_output.h5 (a long
    stream's takes a while): none is written, the binary files stay and the log says how to
    make it later."""
    p, src = start_pipeline(integrator, tmp_path, midas_files=True)
    s = connect(src.port)
    s.sendall(b"".join(encode_frame_bytes(i, frame(i)) for i in range(3)))
    assert wait_for(lambda: p.written == 3)
    s.close()
    p.skip_midas_outputs()
    summary = finish(p)
    assert summary.written == 3
    assert (tmp_path / "lineout.bin").stat().st_size > 0
    assert not list(tmp_path.glob("integrator_output*"))
    assert "integrator_output.h5 not written (skipped)" in caplog.text
    assert "write_stream_outputs(" in caplog.text


def test_disconnect_mid_frame_discarded_other_clients_served(integrator, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="radint.stream")
    p, src = start_pipeline(integrator, tmp_path)
    bad = connect(src.port)
    bad.sendall(encode_frame_bytes(0, frame(0)) + encode_frame_bytes(1, frame(1))[:1000])
    good = connect(src.port)
    good.sendall(b"".join(encode_frame_bytes(i, frame(i, "f4")) for i in range(5)))
    bad.close()
    assert wait_for(lambda: p.stats.partial == 1)
    good.sendall(encode_frame_bytes(5, frame(5, "f4")))
    good.close()
    assert wait_for(lambda: p.written == 7)
    summary = finish(p)
    assert (summary.received, summary.written, summary.partial) == (7, 7, 1)
    assert "partial frame discarded" in caplog.text
    rows = stream_rows(tmp_path / "stream.h5")
    assert sorted(rows["frame_id"].tolist()) == [0, 0, 1, 2, 3, 4, 5]
    assert len(set(rows["source"].tolist())) == 2  # the id plus the client name is unique


def test_a_hybrid_frame_with_a_bad_index_is_counted_and_closes_the_connection(
    integrator, tmp_path, caplog
):
    """Found by a stream check: a complete hybrid frame whose pixel index is out of range was in
    no counter. It is received and dropped now; the connection still closes (the review of
    that change: such an index is what a sender of another detector size sends, and reading on
    wrote the bytes after it as frames)."""
    p, src = start_pipeline(integrator, tmp_path)
    bad = struct.pack("<HHI", 1, 6, 1) + b"\x00" * (2 * N_PIX) + struct.pack("<iq", N_PIX, 7)
    s = connect(src.port)
    s.sendall(encode_frame_bytes(0, frame(0)) + bad + encode_frame_bytes(2, frame(2)))
    s.close()
    assert wait_for(lambda: p.stats.bad_connections == 1)
    first = connect(src.port)  # a bad first frame: the detector size is asked about
    first.sendall(bad)
    first.close()
    assert wait_for(lambda: p.stats.bad_connections == 2)
    summary = finish(p)
    assert (summary.received, summary.written, summary.dropped) == (3, 1, 2)
    assert stream_rows(tmp_path / "stream.h5")["frame_id"].tolist() == [0]
    assert "dataset_num 1: hybrid index out of range" in caplog.text
    assert "after 0 frame(s) (is it a sender whose frames are not" in caplog.text


def test_unknown_dtype_and_garbage_close_connection_server_continues(integrator, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="radint.stream")
    p, src = start_pipeline(integrator, tmp_path)
    for payload in (
        encode_frame_bytes(0, frame(0)),  # taken (nothing follows yet), then a bad header
        b"GET / HTTP/1.1\r\n\r\n",
        struct.pack("<HHI", 0, 6, 0xFFFFFFFF),  # hybrid count larger than the frame
    ):
        s = connect(src.port)
        s.sendall(payload)
        if p.stats.bad_connections == 0:
            assert wait_for(lambda: p.written == 1)
            s.sendall(struct.pack("<HH", 1, 7) + b"\x00" * 64)
        # the server closes its end: EOF, or a reset when unread bytes were left behind
        try:
            assert s.recv(16) == b""
        except ConnectionResetError:
            pass
        s.close()
    assert p.stats.bad_connections == 3
    good = connect(src.port)
    good.sendall(encode_frame_bytes(42, frame(42)))
    good.close()
    assert wait_for(lambda: p.written == 2)
    summary = finish(p)
    assert summary.written == 2 and summary.bad_connections == 3
    assert "unknown dtype code 7" in caplog.text and "closing this connection" in caplog.text
    # After frames: the frames already taken from the connection are named as suspect (audit:
    # a sender of another frame size had its glued frames written as valid data, unsaid).
    assert "the 1 from" in caplog.text and "id 0 on, are wrong too: check them" in caplog.text


def test_a_sender_of_another_frame_size_has_no_frame_written_and_the_stream_fails(
    integrator, tmp_path, capsys
):
    """Review (D4): a sender of bigger frames (a 1475x1679 detector into a 300x200 stream) had
    its first 300x200 pixels' worth integrated and written as a frame, the run ending with
    "bad connections 1" and exit 0. The header that cannot be one right after that frame is
    seen before the frame is handed on: it is dropped, not written, and radint stream exits 1
    (as radint batch does when a file failed). A sender that pauses between frames (MIDAS's
    own: no frame size on the wire) has every frame written."""
    from radint.cli import main

    params = tmp_path / "p.txt"
    params.write_text(DETECTOR)
    port = _free_port()
    out = tmp_path / "out"
    big = np.full((NZ + 8, NY), 20 << 16, np.uint32)  # the pixel read as a header: dtype 20

    def senders() -> None:
        assert wait_for(lambda: _port_open(port), 30)
        with connect(port) as s, contextlib.suppress(OSError):
            s.sendall(encode_frame_bytes(0, big))
            s.recv(16)  # until the stream closes it
        with connect(port) as s:
            for i in range(3):
                s.sendall(encode_frame_bytes(i, frame(i)))
                time.sleep(0.1)

    t = threading.Thread(target=senders, daemon=True)
    t.start()
    code = main(["stream", str(params), "-o", str(out), "--port", str(port), "--timeout", "2",
                 "--backend", "cpu", "-j", "1"])  # fmt: skip
    t.join(30)
    captured = capsys.readouterr()
    assert code == 1, captured
    assert "error: 1 connection(s) closed for bytes that are no frames of 64x48 pixels" in (
        captured.err)  # fmt: skip
    assert "written 3, dropped 1" in captured.out, captured
    rows = stream_rows(out / "stream.h5")
    assert rows["frame_id"].tolist() == [0, 1, 2] and len(set(rows["source"])) == 1
    want = integrator.integrate_stack(np.stack([frame(i) for i in range(3)])).lineout
    np.testing.assert_allclose(rows["I"], want, rtol=1e-12, equal_nan=True)


def test_cli_stream_says_which_dropped_frames_came_as_it_stopped(tmp_path, capsys):
    """Review: frames refused once --max-frames was taken (or after a signal) were counted
    with the dropped ones without a word, read as frames lost mid-stream (dropped 650 of a
    --max-frames 300 PVA run)."""
    from radint.cli import main

    params = tmp_path / "p.txt"
    params.write_text(DETECTOR)
    port = _free_port()

    def sender() -> None:
        assert wait_for(lambda: _port_open(port), 30)
        with connect(port) as s, contextlib.suppress(OSError):
            s.sendall(b"".join(encode_frame_bytes(i, frame(i)) for i in range(6)))
            s.recv(16)  # until the stream closes it

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    code = main(["stream", str(params), "-o", str(tmp_path / "out"), "--port", str(port),
                 "--max-frames", "3", "--timeout", "5", "--backend", "cpu", "-j", "1"])  # fmt: skip
    t.join(30)
    out = capsys.readouterr().out
    assert code == 0, out
    dropped = int(out.split("dropped ")[1].split(",")[0])
    assert "written 3" in out and dropped >= 1, out  # frame 3 was in the buffer already
    assert (f"of the {dropped} dropped, {dropped} arrived as the stream stopped (--max-frames "
            "3 taken), not integrated") in out, out  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_server(integrator, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    p, src = start_pipeline(integrator, tmp, idle_timeout=None)
    yield p, src
    finish(p)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    junk=st.one_of(
        st.binary(max_size=3000),
        st.builds(
            lambda code, tail: struct.pack("<HH", 1, code) + tail,
            st.integers(0, 65535),
            st.binary(max_size=2000),
        ),
        st.builds(  # a valid frame with random bytes flipped / cut
            lambda i, cut, flips: bytes(
                b ^ 0xFF if k in flips else b
                for k, b in enumerate(encode_frame_bytes(i, frame(i, "u1"))[:cut])
            ),
            st.integers(0, 10),
            st.integers(0, 4 + N_PIX + 10),
            st.sets(st.integers(0, 8), max_size=3),
        ),
    )
)
def test_random_bytes_never_kill_the_server(fuzz_server, junk):
    p, src = fuzz_server
    before = p.written
    s = connect(src.port)
    try:
        s.sendall(junk)
    except OSError:
        pass  # the server may already have closed a bad connection
    s.close()
    good = connect(src.port)
    good.sendall(encode_frame_bytes(1, frame(1, "u2")))
    good.close()
    # the good frame (plus any whole valid frames inside the junk) gets written
    assert wait_for(lambda: p.written >= before + 1, 20)
    assert not p.stopping


def test_slow_writer_backpressure_reaches_sender(integrator, tmp_path, monkeypatch):
    class SlowWriter(pipeline_mod.NexusWriter):
        def append(self, result, **kw):
            time.sleep(0.02 * result.n_frames)  # slow per frame, however they are grouped
            super().append(result, **kw)

    monkeypatch.setattr(pipeline_mod, "NexusWriter", SlowWriter)
    n = 150
    p, src = start_pipeline(integrator, tmp_path, queue_size=2, write_queue_size=2)
    big = frame(0, "f8")  # 24 KiB per frame
    s = connect(src.port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    sent = [0]

    def sender():
        for i in range(n):
            s.sendall(encode_frame_bytes(i, big))
            sent[0] += 1

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    time.sleep(1.0)
    # ~50 frames were written in 1 s; the rest sit in the sender, not in server memory
    in_server = sent[0] - p.written
    assert sent[0] < n, "sender never blocked"
    assert p.frames.qsize() <= 2 and p.results.qsize() <= 2
    t.join(60)
    s.close()
    assert wait_for(lambda: p.written == n, 60)
    summary = finish(p)
    assert summary.written == n and summary.dropped == 0
    # bounded: what the server held at once is queues + one write block + in flight + sockets
    assert in_server < 2 + 2 + pipeline_mod.WRITE_BATCH + 2 + (8 << 20) // big.nbytes


def test_stop_drains_and_file_is_valid(integrator, tmp_path, monkeypatch):
    class SlowWriter(pipeline_mod.NexusWriter):
        def append(self, result, **kw):
            time.sleep(0.01 * result.n_frames)
            super().append(result, **kw)

    monkeypatch.setattr(pipeline_mod, "NexusWriter", SlowWriter)
    p, src = start_pipeline(integrator, tmp_path, queue_size=4, write_queue_size=4, save_interval=3)
    s = connect(src.port)
    s.sendall(b"".join(encode_frame_bytes(i, frame(i)) for i in range(12)))
    assert wait_for(lambda: p.stats.received == 12)
    summary = finish(p)  # stop while frames are still queued: they are drained, not lost
    s.close()
    assert summary.received == 12 and summary.written == 12 and summary.dropped == 0
    rows = stream_rows(tmp_path / "stream.h5")
    np.testing.assert_array_equal(rows["frame_id"], np.arange(12))
    assert rows["cake"].shape[0] == 12


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_cli_stream_sigterm_and_send(tmp_path, backend):
    """radint send -> radint stream -> SIGTERM. ``cuda``: the CUDA backend on the stand-in CuPy
    (tests/gpu_harness/fake_cupy: frames received into its page-locked buffers, the kernels run on
    its CPU runtime of CUDA), its lineouts equal to the CPU engine's."""
    import subprocess
    import sys

    params = tmp_path / "p.txt"
    params.write_text(DETECTOR)
    port = _free_port()
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if backend == "cuda":
        from tests.test_gpu import _fake_cupy_env

        env = {**_fake_cupy_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "radint.cli", "stream", str(params), "-o", str(out)]
    cmd += [
        "--port",
        str(port),
        "--backend",
        backend,
        "--timeout",
        "60",
        "--midas-files",
        "-j",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        tif = tmp_path / "frames"
        tif.mkdir()
        import tifffile

        for i in range(3):
            tifffile.imwrite(tif / f"img_{i:03d}.tif", frame(i, "u4"))
        # The parameters' mask sits in the folder too: radint send leaves it out.
        tifffile.imwrite(tif / "mask.tif", np.zeros(SHAPE, np.uint8))
        params.write_text(DETECTOR + f"\nMaskFile {tif / 'mask.tif'}\n")
        assert wait_for(lambda: _port_open(port), 30)
        mapping = tmp_path / "frame_mapping.json"
        send = [sys.executable, "-m", "radint.cli", "send", str(params), str(tif)]
        send += ["--port", str(port), "--mapping-file", str(mapping), "--compress"]
        r = subprocess.run(send, capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        m = json.loads(mapping.read_text())
        assert [m[str(i)]["filename"] for i in range(3)] == [f"img_{i:03d}.tif" for i in range(3)]
        assert wait_for(lambda: (out / "stream.h5").exists(), 30)
        time.sleep(1.0)
        proc.terminate()
        text = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text
    assert "written 3" in text and "SIGTERM" in text
    rows = stream_rows(out / "stream.h5")
    np.testing.assert_array_equal(rows["frame_id"], [0, 1, 2])
    if backend == "cuda":
        assert "using cuda (CUDA device radint fake CuPy" in text
        cpu = Integrator(IntegrationConfig.from_text(DETECTOR, "p.txt"), n_threads=1)
        want = cpu.integrate_stack(np.stack([frame(i, "u4") for i in range(3)])).lineout
        np.testing.assert_allclose(rows["I"], want, rtol=1e-9, equal_nan=True)
    n_r = rows["I"].shape[1]
    assert (out / "lineout.bin").stat().st_size == 3 * 16 * n_r
    # Write2D 0 (MIDAS's default): no per-frame cakes, so no GSAS-II zip, as MIDAS.
    import h5py

    assert not (out / "Int2D.bin").exists() and not (out / "integrator_output.zarr.zip").exists()
    with h5py.File(out / "integrator_output.h5") as f:
        assert len(f["lineouts"]) == 3 and "OmegaSumFrame" not in f
    assert "Write2D 0" in text


def test_cli_stream_refusals_leave_no_output_folder(tmp_path, capsys):
    """Regression (review): a missing --channel / --watch, a bad --settle or --watch on the
    output folder were refused after the output folder was made (left behind, empty)."""
    from radint.cli import main

    params = tmp_path / "p.txt"
    params.write_text(DETECTOR)
    out = tmp_path / "out"
    for extra, message in (
        (["--source", "pva"], "needs --channel"),
        (["--source", "folder"], "needs --watch"),
        (["--source", "folder", "--watch", str(out)], "is the output directory"),
        (["--source", "folder", "--watch", str(tmp_path), "--settle", "0"], "--settle"),
        (["--dark", str(tmp_path / "missing.tif")], "missing.tif"),
    ):
        assert main(["stream", str(params), "-o", str(out), *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not out.exists(), extra
    # A port in use fails before the map is built and cached (regression, CLI audit).
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1])
        assert main(["stream", str(params), "-o", str(out), "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err, err
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- sender
def test_sender_names_frames_like_midas(tmp_path):
    import tifffile

    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f["exchange/data"] = np.stack([frame(i, "u2") for i in range(3)])
    tifffile.imwrite(tmp_path / "a.tif", frame(0, "u2"))
    # One frame in a 3-D dataset and in a GE file is still ":frame0" for MIDAS's sender; a 2-D
    # dataset goes by its name alone.
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["exchange/data"] = frame(1, "u2")[np.newaxis]
    with h5py.File(tmp_path / "two_d.h5", "w") as f:
        f["exchange/data"] = frame(2, "u2")
    (tmp_path / "g.ge3").write_bytes(b"\0" * 8192 + frame(3, "u2").astype("<u2").tobytes())
    (tmp_path / ".a.tif.part").write_bytes(b"II*")  # a copy in progress: left out
    (tmp_path / ".hidden.tif").write_bytes(b"I")
    files = expand_inputs([tmp_path])
    names = [name for _, name in iter_file_frames(files, shape=SHAPE)]
    assert names == ["a.tif", "g.ge3:frame0", "one.h5:exchange/data:frame0"] + [
        f"stack.h5:exchange/data:frame{i}" for i in range(3)] + ["two_d.h5:exchange/data"]  # fmt: skip


def test_sender_sends_each_dataset_of_a_group_as_midas_does(integrator, tmp_path):
    """An HDF5 location that is a group of 2-D datasets: each one a frame, in name order, named
    ``file:loc/name`` (MIDAS's integrator_server.py); anything else in it is refused clearly."""
    with h5py.File(tmp_path / "g.h5", "w") as f:
        for k in (2, 0, 1):
            f[f"exchange/data/img{k}"] = frame(k, "u2")
        f["exchange/data/sub/ignored"] = 1  # a subgroup: skipped, as MIDAS skips it
    items = list(iter_file_frames([tmp_path / "g.h5"], shape=SHAPE))
    assert [name for _, name in items] == [f"g.h5:exchange/data/img{k}" for k in range(3)]
    p, src = start_pipeline(integrator, tmp_path / "out", max_frames=3)
    mapping = tmp_path / "m.json"
    assert send_frames(iter(items), port=src.port, mapping_file=mapping) == 3
    assert p.wait(30).written == 3
    assert [v["filename"] for v in json.loads(mapping.read_text()).values()] == [
        name for _, name in items
    ]
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    for k in range(3):
        np.testing.assert_allclose(rows["I"][k], integrator.integrate(frame(k, "u2")).lineout,
                                   rtol=1e-12, equal_nan=True)  # fmt: skip
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["exchange/data/img0"] = np.stack([frame(0, "u2")] * 2)
    with pytest.raises(RadintError, match=r"'exchange/data/img0' is \(2, 48, 64\) uint16"):
        list(iter_file_frames([tmp_path / "bad.h5"], shape=SHAPE))


def _capture_one_connection() -> tuple[int, list[bytes], threading.Thread]:
    """A loopback listener that keeps every byte of its first connection (until it closes)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(20)
    got: list[bytes] = []

    def run() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(20)
                while chunk := conn.recv(1 << 20):
                    got.append(chunk)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return server.getsockname()[1], got, t


def _plain_files(tmp_path: Path) -> tuple[list[Path], list[np.ndarray]]:
    """Frame files of several layouts and dtypes, and their frames in sending order."""
    import tifffile

    frames = [frame(0, "u2"), frame(1, "i4"), frame(2, "f4"), frame(3, "u2"), frame(4, "u2")]
    frames += [frame(5, "u1"), frame(6, "f8")]
    tifffile.imwrite(tmp_path / "a_plain.tif", frames[0])
    tifffile.imwrite(tmp_path / "b_int32.tif", frames[1])
    with h5py.File(tmp_path / "c_stack.h5", "w") as f:  # contiguous: frames in one piece
        f["exchange/data"] = np.stack([frames[2]])
    tifffile.imwrite(tmp_path / "d_zlib.tif", frames[3], compression="zlib")  # decoded
    with h5py.File(tmp_path / "e_chunked.h5", "w") as f:
        f.create_dataset("exchange/data", data=np.stack([frames[4]]), chunks=(1, *SHAPE))
    tifffile.imwrite(tmp_path / "f_u8.tif", frames[5])
    tifffile.imwrite(tmp_path / "g_be.tif", frames[6], byteorder=">")  # big-endian: decoded
    return sorted(tmp_path.glob("*_*.*")), frames


def test_sender_sends_plain_file_frames_without_reading_them(tmp_path):
    """Plain frames go out by sendfile, compressed or big-endian ones decoded: the bytes on the
    wire equal MIDAS's encoding of the decoded frames, with and without --compress."""
    from radint.stream.sender import FileFrame

    files, frames = _plain_files(tmp_path)
    items = list(iter_file_frames(files))
    kinds = [type(data).__name__ for data, _ in items]
    assert kinds == ["FileFrame", "FileFrame", "FileFrame", "ndarray", "FileFrame", "FileFrame",
                     "ndarray"]  # fmt: skip
    for (data, _), want in zip(items, frames):
        got = data.read() if isinstance(data, FileFrame) else data
        np.testing.assert_array_equal(got, want)
    for compress in (False, True):
        port, got, t = _capture_one_connection()
        n = send_frames(iter_file_frames(files), port=port, compress=compress, mapping_file=None)
        t.join(20)
        assert n == len(frames)
        want = b"".join(encode_frame_bytes(i, f, compress) for i, f in enumerate(frames))
        assert b"".join(got) == want


def test_sender_stops_before_a_truncated_file_frame(tmp_path):
    """A plain frame whose file was cut short after it was listed: the frames before it go out
    whole, nothing of it does, and the error names the file."""
    import tifffile

    from radint.io.errors import ReaderError

    for i in range(3):
        tifffile.imwrite(tmp_path / f"f{i}.tif", frame(i, "u2"))
    items = list(iter_file_frames(sorted(tmp_path.glob("f*.tif"))))
    with open(tmp_path / "f1.tif", "r+b") as f:
        f.truncate(1000)
    port, got, t = _capture_one_connection()
    with pytest.raises(ReaderError, match="f1.tif: frame is truncated"):
        send_frames(iter(items), port=port, mapping_file=None)
    t.join(20)
    assert b"".join(got) == encode_frame_bytes(0, frame(0, "u2"))


def _interrupt_after_frame(monkeypatch, target: object, method: str, k: int) -> None:
    """SIGINT to this process right after the k-th call of ``target.method`` (a frame's bytes
    handed to the kernel): where a Ctrl-C lands that is between a frame and its record."""
    import signal

    calls = [0]
    original = getattr(target, method)

    def sent_then_signal(*args, **kw):
        original(*args, **kw)
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(target, method, sent_then_signal)


def _whole_frames(got: list[bytes], nbytes: int) -> int:
    return len(b"".join(got)) // nbytes


def test_ctrl_c_right_after_a_frame_went_out_keeps_it_in_the_mapping(tmp_path, monkeypatch):
    """Review (D2): a Ctrl-C landing after a frame's last byte went out but before its mapping
    entry was made left the receiver with a frame the mapping did not list (1 run in 6 of 450
    Pilatus frames). The frames go out on the connection's thread now; the Ctrl-C stops the
    send with a SendInterrupted that counts them, and the mapping lists each frame the
    receiver got whole."""
    import signal

    from radint.stream import sender

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _interrupt_after_frame(monkeypatch, sender, "_sendmsg_all", 5)
    port, got, t = _capture_one_connection()
    mapping = tmp_path / "m.json"
    items = ((frame(i, "u4"), f"f{i}") for i in range(200))
    with pytest.raises(KeyboardInterrupt) as caught:
        send_frames(items, port=port, mapping_file=mapping)
    t.join(20)
    whole = _whole_frames(got, 4 + 4 * N_PIX)
    assert whole >= 5
    assert list(json.loads(mapping.read_text())) == [str(i) for i in range(whole)]
    e = caught.value
    assert isinstance(e, sender.SendInterrupted), type(e)
    assert (e.sent, e.first_unsent, e.first_unsent_name, e.sent_after) == (
        whole, whole, f"f{whole}", 0)  # fmt: skip


def test_cli_send_interrupted_says_what_was_sent_and_what_to_resend(tmp_path, monkeypatch, capsys):
    """Review (D2): Ctrl-C in radint send printed batch's "outputs not finished were removed,
    finished ones kept". It says how many frames went out, that the mapping lists them, and
    which frame to resend from (plain TIFFs: sent by sendfile)."""
    import tifffile

    from radint.cli import main
    from radint.stream import sender

    params = tmp_path / "p.txt"
    params.write_text(DETECTOR)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(40):
        tifffile.imwrite(folder / f"img_{i:03d}.tif", frame(i, "u4"))
    _interrupt_after_frame(monkeypatch, sender._FileSender, "send", 3)
    port, got, t = _capture_one_connection()
    mapping = tmp_path / "m.json"
    code = main(["send", str(params), str(folder), "--port", str(port),
                 "--mapping-file", str(mapping)])  # fmt: skip
    t.join(20)
    err = capsys.readouterr().err
    whole = _whole_frames(got, 4 + 4 * N_PIX)
    assert code == 130, err
    assert len(json.loads(mapping.read_text())) == whole >= 3
    assert "outputs not finished" not in err
    assert (f"send interrupted: {whole} frame(s) sent whole ({mapping} lists them); the first "
            f"not sent is img_{whole:03d}.tif (frame {whole}): resend from it") in err, err  # fmt: skip


# ----------------------------------------------------------------------------- folder
def test_folder_watch_takes_complete_files_only(integrator, tmp_path):
    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    tifffile.imwrite(watch / "old.tif", frame(0, "u2"))
    src = FolderSource(watch, SHAPE, poll_s=0.05)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    assert wait_for(lambda: p.written == 1)
    # Flushed after its first frame and not locked: HDF5 readers open it while it grows (in
    # this, the writing process, with the writer's locking flag).
    import h5py

    with h5py.File(tmp_path / "out" / "stream.h5", "r", locking=False) as f:
        assert f["entry/azint1d/data/I"].shape[0] == 1
    # a file being written (temporary name) is ignored until renamed into place
    tifffile.imwrite(watch / "new.tif.part", frame(1, "u2"))
    time.sleep(0.3)
    assert p.stats.received == 1
    os.replace(watch / "new.tif.part", watch / "new.tif")
    assert wait_for(lambda: p.written == 2)
    summary = finish(p)
    assert summary.written == 2
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    assert rows["source"].tolist() == ["file:old.tif", "file:new.tif"]
    mtimes = [(watch / name).stat().st_mtime for name in ("old.tif", "new.tif")]
    np.testing.assert_array_equal(rows["source_timestamp"], mtimes)


def test_folder_files_still_settling_at_the_stop_are_counted_and_named(
    integrator, tmp_path, caplog
):
    """Audit (Ctrl-C half a second after the last files landed): files not yet settled were
    neither read nor counted ("dropped 0"). Each is counted as one dropped and named."""
    import tifffile

    caplog.set_level(logging.INFO, logger="radint.stream")
    watch = tmp_path / "in"
    watch.mkdir()
    tifffile.imwrite(watch / "a1.tif", frame(0, "u2"))
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.1)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    assert wait_for(lambda: p.written == 1)
    src.settle_s = 60.0  # the next ones are still settling when the stream stops
    for k in (2, 10, 3):
        tifffile.imwrite(watch / f"a{k}.tif", frame(k, "u2"))
    assert wait_for(lambda: len(src._pending) == 3)
    summary = finish(p)
    assert (summary.written, summary.dropped) == (1, 3)
    assert "3 file(s) new or changed within the last 60.0 s" in caplog.text
    assert "not read: a2.tif, a3.tif, a10.tif" in caplog.text


def test_folder_watch_natural_order_dataset_and_swmr_writers(integrator, tmp_path):
    """Regression (stream audit): files ready together went in text order (img_10 before
    img_2); `radint stream` had no --dataset, so areaDetector's entry/data/data files were all
    dropped; a file held open by a writer in SWMR mode was unreadable until closed."""
    import h5py
    import tifffile

    from radint.cli import main

    watch = tmp_path / "in"
    watch.mkdir()
    for i in (0, 1, 2, 10, 11):
        tifffile.imwrite(watch / f"img_{i}.tif", frame(i, "u2"))
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.1)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    assert wait_for(lambda: p.written == 5)
    finish(p)
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    assert rows["source"].tolist() == [f"file:img_{i}.tif" for i in (0, 1, 2, 10, 11)]

    ad = tmp_path / "ad"
    ad.mkdir()
    for i in range(2):
        with h5py.File(ad / f"scan_{i}.h5", "w") as f:
            f["entry/data/data"] = frame(i, "u2")[None]
    params = tmp_path / "p.txt"
    params.write_text(DETECTOR)
    out = tmp_path / "ad_out"
    argv = ["stream", str(params), "-o", str(out), "--source", "folder", "--watch", str(ad),
            "--dataset", "entry/data/data", "--settle", "0.1", "--timeout", "2", "--backend",
            "cpu", "-q"]  # fmt: skip
    assert main(argv) == 0
    rows = stream_rows(out / "stream.h5")
    for k in range(2):
        np.testing.assert_allclose(rows["I"][k], integrator.integrate(frame(k, "u2")).lineout,
                                   rtol=1e-12, equal_nan=True)  # fmt: skip
    assert main(["stream", str(params), "-o", str(tmp_path / "x"), "--dataset", "a/b"]) == 2

    # A writer in SWMR mode (another process) holds the file open: its frames are read.
    script = (
        "import sys, time, h5py, numpy as np\n"
        "with h5py.File(sys.argv[1], 'w', libver='latest') as f:\n"
        "    ds = f.create_dataset('exchange/data', shape=(0, 48, 64), maxshape=(None, 48, 64),"
        " dtype='u2', chunks=(1, 48, 64))\n"
        "    f.swmr_mode = True\n"
        "    for i in range(2):\n"
        "        ds.resize(i + 1, axis=0); ds[i] = i + 1; ds.flush()\n"
        "    print('ready', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    live = tmp_path / "live.h5"
    writer = subprocess.Popen([sys.executable, "-c", script, str(live)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert writer.stdout.readline().strip() == "ready"
        from radint.io import read_frames

        assert [int(f.data[0, 0]) for f in read_frames(live)] == [1, 2]
    finally:
        writer.communicate("\n", timeout=20)


def test_folder_watch_sends_the_written_frames_of_a_stack_being_filled(integrator, tmp_path):
    """Regression (stream audit): a fixed-size HDF5 stack filled frame by frame (chunks
    allocated as written) sent nothing until its last frame was written, logging "never
    written ... (the writer stopped early?)" and then "rewritten in place"."""
    import h5py

    watch = tmp_path / "in"
    watch.mkdir()
    path = watch / "stack.h5"

    def fill(frames: range) -> None:
        with h5py.File(path, "a") as f:
            ds = f.require_dataset("exchange/data", shape=(6, *SHAPE), dtype="u2",
                                   chunks=(1, *SHAPE), fillvalue=0)  # fmt: skip
            for i in frames:
                ds[i] = frame(i + 1, "u2")

    fill(range(2))
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.1)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    assert wait_for(lambda: p.written == 2)
    time.sleep(0.4)
    assert p.stats.received == 2  # the unwritten frames wait
    fill(range(2, 6))
    assert wait_for(lambda: p.written == 6)
    summary = finish(p)
    assert (summary.written, summary.dropped) == (6, 0)
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    assert rows["source"].tolist() == [f"file:stack.h5:frame{i}" for i in range(6)]
    for k in range(6):
        want = integrator.integrate(frame(k + 1, "u2")).lineout
        np.testing.assert_allclose(rows["I"][k], want, rtol=1e-12, equal_nan=True)


def test_folder_watch_takes_the_parameter_files_skipframe_for_midas_zips(integrator, tmp_path):
    """As `radint batch`, a watched MIDAS zip's SkipFrame comes from the parameter file when it
    sets one (`radint stream` read the zip's own)."""
    import zarr
    from zarr.storage import ZipStore

    watch = tmp_path / "in"
    watch.mkdir()
    tmp = tmp_path / "s.analysis.MIDAS.zip"
    store = ZipStore(tmp, mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=2)
    root.create_array("exchange/data", data=np.stack([frame(k, "u2") for k in range(4)]),
                      chunks=(1, *SHAPE))  # fmt: skip
    root.create_array(
        "analysis/process/analysis_parameters/SkipFrame", data=np.array([1], np.int32)
    )
    store.close()
    os.replace(tmp, watch / tmp.name)
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.15, zip_parameters={"SkipFrame": 0})
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    assert wait_for(lambda: p.written == 4)
    assert finish(p).written == 4


def test_folder_watch_rereads_a_file_its_writer_paused_in(integrator, tmp_path, caplog):
    """A writer that pauses longer than the settle time mid-file: the cut-short file fails to
    read, is tried again once it changes, and its frame arrives once, nothing dropped."""
    import io

    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    buf = io.BytesIO()
    tifffile.imwrite(buf, frame(3, "u2"))
    data = buf.getvalue()
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.15)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    with open(watch / "slow.tif", "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(0.6)  # settles: read, fails (cut short), waits for a change
        f.write(data[len(data) // 2 :])
    assert wait_for(lambda: p.written == 1)
    summary = finish(p)
    assert (summary.written, summary.dropped) == (1, 0)
    assert "slow.tif" in caplog.text and "waiting for it to change" in caplog.text
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    assert rows["source"].tolist() == ["file:slow.tif"]


def test_folder_watch_goes_on_after_files_its_decoders_choke_on(integrator, tmp_path, caplog):
    """Regression (audit): a TIFF cut inside its 8-byte header (struct.error) or with a corrupt
    deflate strip (imagecodecs' own error) killed the watcher: later files were never read and
    the run ended with exit 0. Now each is retried on change, then counted as dropped."""
    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    tifffile.imwrite(tmp_path / "ok.tif", frame(1, "u2"), compression="zlib")
    data = bytearray((tmp_path / "ok.tif").read_bytes())
    strip = tifffile.TiffFile(tmp_path / "ok.tif").pages[0].dataoffsets[0]
    data[strip + 2 : strip + 40] = b"\xff" * 38
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.1)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    (watch / "a_header.tif").write_bytes(data[:6])
    (watch / "b_strip.tif").write_bytes(bytes(data))
    time.sleep(0.5)
    (tmp_path / "ok.tif").rename(watch / "c_ok.tif")
    assert wait_for(lambda: p.written == 1)
    summary = finish(p)
    assert (summary.written, summary.dropped) == (1, 2)
    assert src.failure is None
    assert "a_header.tif: not a readable TIFF file (cut short: 6 bytes" in caplog.text
    assert "b_strip.tif: page 0 is truncated or corrupt" in caplog.text
    assert stream_rows(tmp_path / "out" / "stream.h5")["source"].tolist() == ["file:c_ok.tif"]


def test_folder_streams_midas_files_are_named_by_file_and_a_missing_mapping_is_said(
    integrator, tmp_path, caplog
):
    """Audit (MIDAS manual, folder workflow): integrator_output.h5 named a folder stream's
    frames 0, 1, ... where MIDAS names them by file (its server's mapping); a --mapping-file
    that was never written dropped integrator_output.h5 altogether, with exit 0 (MIDAS's
    post-processing warns and writes it with frame indices)."""
    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    for name in ("scan_000002.tif", "scan_000001.tif"):
        tifffile.imwrite(watch / name, frame(len(name), "u2"))
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.1)
    p = Pipeline(integrator, [src], tmp_path / "out", midas_files=True, idle_timeout=20)
    p.start()
    assert wait_for(lambda: p.written == 2)
    finish(p)
    with h5py.File(tmp_path / "out" / "integrator_output.h5") as f:
        assert sorted(f["lineouts"]) == ["scan_000001", "scan_000002"]
    tcp, tcp_src = start_pipeline(integrator, tmp_path / "tcp", midas_files=True,
                                  mapping_file=tmp_path / "never_written.json")  # fmt: skip
    send_frames(((frame(i), f"f{i}") for i in range(2)), port=tcp_src.port, mapping_file=None)
    assert wait_for(lambda: tcp.written == 2)
    finish(tcp)
    assert "never_written.json not read" in caplog.text
    with h5py.File(tmp_path / "tcp" / "integrator_output.h5") as f:
        assert sorted(f["lineouts"]) == ["0", "1"]


def test_stream_stops_and_fails_when_its_only_source_dies(tmp_path, monkeypatch, capsys):
    """A source thread that stops on a defect stops the stream (nothing left to take frames
    from) and `radint stream` exits 1 naming the error, not 0 after its --timeout."""
    from radint.cli import main

    def broken(self):
        raise RuntimeError("directory listing exploded")

    monkeypatch.setattr(FolderSource, "_complete_files", broken)
    params = tmp_path / "p.txt"
    params.write_text(DETECTOR)
    watch = tmp_path / "in"
    watch.mkdir()
    t0 = time.monotonic()
    rc = main(["stream", str(params), "--source", "folder", "--watch", str(watch),
               "-o", str(tmp_path / "out"), "--timeout", "60", "--backend", "cpu", "-q"])  # fmt: skip
    assert rc == 1 and time.monotonic() - t0 < 30
    assert (
        "folder source failed: RuntimeError: directory listing exploded" in capsys.readouterr().err
    )


def test_folder_watch_waits_for_frames_a_writer_allocated_before_filling(integrator, tmp_path):
    """A fixed-size contiguous HDF5 stack written frame by frame without file locking, with
    pauses longer than the settle time, and a pre-sized zero TIFF filled in place: every frame
    arrives once, with its pixels, none as the zeros the file held before."""
    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.15)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    # The writer in its own process (one HDF5 library cannot open a file with two lockings).
    np.save(tmp_path / "frames.npy", np.stack([frame(k, "u2") for k in range(3)]))
    writer = f"""
import time, h5py, numpy as np
frames = np.load({str(tmp_path / "frames.npy")!r})
with h5py.File({str(watch / "scan.h5")!r}, "w", locking=False) as f:
    ds = f.create_dataset("exchange/data", frames.shape, "u2")
    for k in range(3):
        ds[k] = frames[k]
        f.flush()
        time.sleep(0.8)  # settles: read, the frames after k still zeros
"""
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=60)
    assert wait_for(lambda: p.written == 3)
    tifffile.imwrite(watch / "late.tif", np.zeros(SHAPE, "u2"))
    time.sleep(0.5)
    assert p.written == 3
    buf = tifffile.memmap(watch / "late.tif")  # the same file and size, its pixels now written
    buf[:] = frame(7, "u2")
    buf.flush()
    del buf
    assert wait_for(lambda: p.written == 4)
    summary = finish(p)
    assert (summary.received, summary.written, summary.dropped) == (4, 4, 0)
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    assert rows["source"].tolist() == [f"file:scan.h5:frame{k}" for k in range(3)] + [
        "file:late.tif"
    ]
    for k, want in enumerate([0, 1, 2, 7]):
        np.testing.assert_allclose(rows["I"][k], integrator.integrate(frame(want, "u2")).lineout,
                                   rtol=1e-12, equal_nan=True)  # fmt: skip


def test_folder_watch_resends_only_the_frames_a_rewrite_changed(integrator, tmp_path):
    """A 3-frame TIFF of which frame 1 is rewritten in place, twice: frame 1 again each time,
    frames 0 and 2 never twice."""
    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    tifffile.imwrite(watch / "r.tif", np.stack([frame(k, "u2") for k in range(3)]),
                     photometric="minisblack")  # fmt: skip
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.15)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    assert wait_for(lambda: p.written == 3)
    for n, k in enumerate((5, 6)):
        time.sleep(0.1)
        pages = tifffile.memmap(watch / "r.tif", page=1)
        pages[:] = frame(k, "u2")
        pages.flush()
        del pages
        assert wait_for(lambda n=n: p.written == 4 + n)
        time.sleep(0.5)
    summary = finish(p)
    assert (summary.received, summary.written, summary.dropped) == (5, 5, 0)
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    assert rows["source"].tolist() == [f"file:r.tif:frame{k}" for k in (0, 1, 2, 1, 1)]
    np.testing.assert_allclose(rows["I"][4], integrator.integrate(frame(6, "u2")).lineout,
                               rtol=1e-12, equal_nan=True)  # fmt: skip


def test_folder_watch_sends_zero_frames_that_stay_zero(integrator, tmp_path, caplog):
    """Zero frames inside a file are frames; trailing ones are sent once the file has stayed
    unchanged for hold_s, and ones still held when the stream stops are counted as dropped."""
    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    zero = np.zeros(SHAPE, "u2")
    stack = np.stack([frame(1, "u2"), zero, frame(2, "u2"), zero])
    tifffile.imwrite(watch / "a.tif", stack, photometric="minisblack")
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.1, hold_s=0.5)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    assert wait_for(lambda: p.written == 4)
    src.hold_s = 60.0
    tifffile.imwrite(watch / "b.tif", np.stack([frame(3, "u2"), zero]), photometric="minisblack")
    assert wait_for(lambda: p.written == 5)
    time.sleep(0.3)
    summary = finish(p)
    assert (summary.received, summary.written, summary.dropped) == (6, 5, 1)
    assert "b.tif: its last 1 frame(s) held only zeros" in caplog.text
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    assert rows["source"].tolist() == [f"file:a.tif:frame{k}" for k in range(4)] + [
        "file:b.tif:frame0"
    ]


def test_folder_watch_reads_frames_appended_to_a_file_it_already_read(integrator, tmp_path):
    """A writer that appends pages to a TIFF it keeps writing (or rows to an HDF5 file without
    file locking): each change is read from the first frame not yet sent."""
    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.15)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    for k in range(3):
        tifffile.imwrite(watch / "grow.tif", frame(k, "u2"), append=True)
        assert wait_for(lambda k=k: p.written == k + 1)
    summary = finish(p)
    assert (summary.received, summary.written, summary.dropped) == (3, 3, 0)
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    assert rows["source"].tolist() == [f"file:grow.tif:frame{k}" for k in range(3)][:1] + [
        f"file:grow.tif:frame{k}" for k in (1, 2)
    ] or rows["source"].tolist()[1:] == ["file:grow.tif:frame1", "file:grow.tif:frame2"]
    # The file by its absolute path and each frame's position in it, as a batch records them.
    from radint.io import read_nexus

    back = read_nexus(tmp_path / "out" / "stream.h5")
    assert back.metadata["source_files"] == [str((watch / "grow.tif").absolute())]
    assert back.metadata["source_frame"].tolist() == [0, 1, 2]
    for k in range(3):
        np.testing.assert_allclose(
            rows["I"][k], integrator.integrate(frame(k, "u2")).lineout, rtol=1e-12, equal_nan=True
        )


def test_folder_watch_reads_a_file_written_again_under_an_old_name(integrator, tmp_path):
    """A name used again (files deleted and a new run written, a file replaced by rename, a
    detector's "latest.tif" rewritten in place) is a new file: its frames were skipped as
    frames already sent."""
    import os

    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.15)
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()

    def put(name, k):
        tifffile.imwrite(watch / f".{name}", frame(k, "u2"))
        os.replace(watch / f".{name}", watch / name)

    put("a.tif", 0)
    put("b.tif", 1)
    assert wait_for(lambda: p.written == 2)
    (watch / "a.tif").unlink()
    time.sleep(0.3)
    put("a.tif", 2)  # deleted, then written again
    assert wait_for(lambda: p.written == 3)
    put("b.tif", 3)  # replaced by rename
    assert wait_for(lambda: p.written == 4)
    tifffile.imwrite(watch / ".c.tif", frame(4, "u2"))
    new = (watch / ".c.tif").read_bytes()
    assert len(new) == (watch / "b.tif").stat().st_size
    with open(watch / "b.tif", "r+b") as f:  # rewritten in place, same size and inode
        f.write(new)
    os.utime(watch / "b.tif", (time.time() + 5, time.time() + 5))
    assert wait_for(lambda: p.written == 5)
    os.utime(watch / "b.tif", (time.time() + 9, time.time() + 9))  # touched only: no new frame
    time.sleep(0.6)
    summary = finish(p)
    assert (summary.received, summary.written, summary.dropped) == (5, 5, 0)
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    for row, k in enumerate(range(5)):
        np.testing.assert_allclose(
            rows["I"][row], integrator.integrate(frame(k, "u2")).lineout, rtol=1e-12,
            equal_nan=True,
        )  # fmt: skip


def test_folder_watch_leaves_out_mask_dark_and_other_files(integrator, tmp_path):
    """The parameters' mask and dark in the watched folder are not frames, nor are notes or
    logs: none is integrated or counted as a dropped frame."""
    import tifffile

    watch = tmp_path / "in"
    watch.mkdir()
    tifffile.imwrite(watch / "mask.tif", np.zeros(SHAPE, np.uint8))
    tifffile.imwrite(watch / "dark.tif", frame(9, "u2"))
    (watch / "notes.txt").write_text("beam dump at 10:42\n")
    tifffile.imwrite(watch / "frame_001.tif", frame(1, "u2"))
    src = FolderSource(watch, SHAPE, poll_s=0.05, settle_s=0.15,
                       exclude=(watch / "mask.tif", str(watch / "dark.tif")))  # fmt: skip
    p = Pipeline(integrator, [src], tmp_path / "out", idle_timeout=20)
    p.start()
    assert wait_for(lambda: p.written == 1)
    time.sleep(0.4)
    summary = finish(p)
    assert (summary.received, summary.written, summary.dropped) == (1, 1, 0)
    assert stream_rows(tmp_path / "out" / "stream.h5")["source"].tolist() == ["file:frame_001.tif"]


# ----------------------------------------------------------------------------- PVA
class FakePv(dict):
    """The parts of a pvapy NTNDArray PvObject the source reads."""


def fake_update(uid: int, data: np.ndarray, branch: str = "ushortValue") -> FakePv:
    return FakePv(
        uniqueId=uid,
        value=[{branch: data.ravel()}],
        dimension=[{"size": data.shape[1]}, {"size": data.shape[0]}],
        codec={"name": ""},
    )


class FakeChannel:
    def __init__(self, name, initial=True):
        self.cb = None
        self.initial = initial

    def subscribe(self, name, cb):
        self.cb = cb

    def startMonitor(self, request):
        self.request = request
        # As a PVA server does: the first update is the record's current value (here empty).
        if self.initial:
            self.cb(FakePv(uniqueId=0, value=[{}], dimension=[], codec={"name": ""}))

    def stopMonitor(self):
        self.stopped = True

    def unsubscribe(self, name):
        assert name == "radint"
        self.cb = None


def test_pva_source_stop_releases_its_channel():
    """Found with a real pvAccess server: after a clean stop the process aborted at exit
    ("FATAL: exception not rethrown", exit 134) in 13 of 21 runs: the channel, its monitor
    subscription and callbacks lived into interpreter shutdown. stop() now unsubscribes and
    lets the channel go while Python is whole."""
    chan = {}
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n))
    )
    src.start(lambda item: True, SourceStats())
    src.stop()
    assert chan["c"].stopped and chan["c"].cb is None and src._channel is None
    src.stop()  # twice is harmless


def test_ndattribute_names_map_one_to_one_onto_column_names():
    """Review: "a/b" was stored as "a_b" (the real "a_b" then went to "a_b_"), and a "\\"
    made a nested group in Zarr. Names are now escaped one to one."""
    from radint.stream.pipeline import _attribute_key

    names = ["a/b", "a_b", "a%2Fb", "a\\b", ".", "..", "...", ".x", "%", "e f"]
    keys = [_attribute_key(name) for name in names]
    assert len(set(keys)) == len(names)
    assert keys[:4] == ["a%2Fb", "a_b", "a%252Fb", "a%5Cb"]
    assert keys[4:] == ["%2E", "%2E%2E", "%2E%2E%2E", ".x", "%25", "e f"]


def test_pva_frames_still_on_their_way_at_a_stop_are_counted(caplog):
    """Review: with the callback waiting for room, frames radint was behind on sat in
    pvAccess's queues and the network; stop() discarded them uncounted (1 200-2 500 frames
    of a 1.2 kHz publisher). Those published before the stop are now taken and counted as
    dropped until one published after it arrives (or none comes for DRAIN_QUIET_S)."""
    import threading

    caplog.set_level(logging.INFO, logger="radint")
    chan, stats, taken = {}, SourceStats(), []
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n))
    )
    src.start(lambda item: taken.append(item.frame_id) or item.release() or True, stats)
    cb = chan["c"].cb
    before = time.time() - 1

    def stamped(uid, at):
        update = fake_update(uid, frame(uid, "u2"))
        update["timeStamp"] = {"secondsPastEpoch": int(at), "nanoseconds": 0}
        return update

    cb(stamped(9, before))
    stopping = threading.Thread(target=src.stop)
    started = time.monotonic()
    stopping.start()
    assert wait_for(src._draining.is_set)
    for uid in (10, 11, 13):  # published before the stop; 12 never arrives
        cb(stamped(uid, before))
    cb(stamped(14, time.time() + 5))  # published after the stop: not this run's, ends the wait
    stopping.join(5)
    assert time.monotonic() - started < src.DRAIN_MAX_S
    assert taken == [9] and src.dropped_at_stop == 3 and src.dropped_upstream == 1
    assert (stats.received, stats.dropped) == (1 + 3, 3 + 1)
    assert "3 frame(s) published before the stop were still on their way" in caplog.text
    assert chan["c"].stopped


def test_pva_a_sink_may_stop_its_source_from_the_callback():
    """stop() waits for the callbacks in progress but the one it is called from."""
    chan = {}
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n))
    )

    def sink(item):
        item.release()
        src.stop()
        return True

    src.start(sink, SourceStats())
    started = time.monotonic()
    chan["c"].cb(fake_update(1, frame(1, "u2")))
    assert time.monotonic() - started < 1.0 and chan["c"].stopped


def test_pva_a_stop_without_timestamps_waits_for_a_quiet_channel(monkeypatch):
    """Without timestamps the stop takes updates until none came for DRAIN_QUIET_S, at most
    DRAIN_MAX_S (a publisher that never pauses)."""
    import threading

    monkeypatch.setattr(PvaSource, "DRAIN_MAX_S", 0.6)

    def stopping_source(uids, gap_s):
        """A source told to stop while ``uids`` arrive ``gap_s`` apart: it and its stats."""
        chan, stats = {}, SourceStats()
        src = PvaSource(
            "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n))
        )
        src.start(lambda item: item.release() or True, stats)
        cb = chan["c"].cb
        cb(fake_update(1, frame(1, "u2")))
        stopping = threading.Thread(target=src.stop)
        stopping.start()
        assert wait_for(src._draining.is_set)
        for uid in uids:
            if not stopping.is_alive():
                break
            cb(fake_update(uid, frame(uid, "u2")))
            time.sleep(gap_s)
        stopping.join(5)
        return src, stats

    src, stats = stopping_source(range(2, 6), 0.02)  # a short backlog, then quiet
    assert src.dropped_at_stop == 4 and stats.dropped == 4
    # A publisher that never pauses: the stop ends at DRAIN_MAX_S all the same.
    started = time.monotonic()
    src, stats = stopping_source(range(2, 10_000), 0.01)
    took = time.monotonic() - started
    assert 0.6 <= took < 1.5 and src.dropped_at_stop > 10


def test_pva_shape_dtype_gaps_and_full_queue(integrator, tmp_path):
    chan = {}
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n))
    )
    p = Pipeline(integrator, [src], tmp_path, queue_size=2, idle_timeout=20)
    p.start()
    cb = chan["c"].cb
    cb(FakePv(uniqueId=0, value=[{}], dimension=[], codec={"name": ""}))  # initial empty record
    for k, uid in enumerate((1, 2, 5)):  # 3 and 4 never arrived
        cb(fake_update(uid, frame(uid, "i4"), "intValue"))
        assert wait_for(lambda k=k: p.written == k + 1)
    cb(fake_update(6, frame(6, "u2")[:, :10]))  # wrong shape: rejected, counted
    assert wait_for(lambda: p.written == 3)
    # A burst larger than the queue waits for room in the monitor callback, as pvAccess's
    # client queue then holds the updates (a 200 Hz stream lost frames 10-18 at its start,
    # dropped at once when this queue was full).
    for uid in range(7, 47):
        cb(fake_update(uid, frame(uid, "f4"), "floatValue"))
    summary = finish(p)
    assert summary.written == 3 + 40
    assert src.dropped_upstream == 2 and src.rejected == 1
    assert summary.dropped == 2 + 1
    # The rejected update arrived (audit: it was dropped but not received); those dropped
    # upstream never did.
    assert summary.received == summary.written + summary.dropped - src.dropped_upstream
    rows = stream_rows(tmp_path / "stream.h5")
    assert rows["frame_id"][:3].tolist() == [1, 2, 5]
    assert set(rows["source"].tolist()) == {"pva:sim:img"}


def test_pva_rejected_updates_are_logged_once_a_second(integrator, tmp_path, caplog):
    """Audit (a detector ROI change: every update of the wrong shape): one error line per
    rejected update (1000 lines a second at 1 kHz); now one a second, the rest summed."""
    chan = {}
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n))
    )
    p = Pipeline(integrator, [src], tmp_path, idle_timeout=20)
    p.start()
    for uid in range(1, 101):
        chan["c"].cb(fake_update(uid, frame(uid, "u2")[:, :10]))
    summary = finish(p)
    assert src.rejected == 100 and summary.received == 100 and summary.dropped == 100
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "99 more update(s) rejected since the last such line" in lines[-1]


def test_pva_queue_gap_lines_and_a_late_first_frame(integrator, tmp_path, caplog, monkeypatch):
    """Audit with pvapy's AdSimServer: (1) pvAccess's default client queue squashed ~5 % of a
    400 fps stream radint kept up with: the monitor asks for a queue of up to 100 updates
    (512 MB of 4-byte frames); (2) a publisher far faster than radint logged every uniqueId
    jump (2891 lines in 4 s): one line a second, the rest summed; (3) frames published before
    the channel connected went unmentioned: the first uniqueId received is said."""
    caplog.set_level(logging.INFO, logger="radint")
    monkeypatch.setattr(PvaSource, "LATE_CONNECT_S", 0.0)  # its server started after radint
    assert PvaSource("x", (2167, 2070)).queue_size == 29  # Pilatus 2M: 512 MB / 17.9 MB
    assert PvaSource("x", (4362, 4148)).queue_size == 7  # Eiger 16M
    chan = {}
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n, False))
    )
    assert src.queue_size == 100
    p = Pipeline(integrator, [src], tmp_path, queue_size=64, idle_timeout=20)
    p.start()
    assert chan["c"].request == f"record[queueSize=100]{PvaSource.REQUEST}"
    cb = chan["c"].cb
    uids = list(range(14, 14 + 2 * 30, 2))  # every other frame lost upstream
    for uid in uids:
        cb(fake_update(uid, frame(uid, "u2")))
    assert wait_for(lambda: p.written == len(uids))
    summary = finish(p)
    assert src.dropped_upstream == len(uids) - 1 and summary.dropped == len(uids) - 1
    assert "the first frame received is uniqueId 14: frames the publisher sent" in caplog.text
    assert caplog.text.count("uniqueId jumped") == 1
    assert f"{len(uids) - 2} more uniqueId jump(s), {len(uids) - 2} frame(s)" in caplog.text


def test_pva_restart_and_silent_channel_are_logged(integrator, tmp_path, caplog, monkeypatch):
    """uniqueId going back (the IOC restarted) is said in the log, not only in repeated ids;
    a channel that never sends anything is said after CONNECT_WARNING_S."""
    from radint.stream import sources

    monkeypatch.setattr(sources, "CONNECT_WARNING_S", 0.2)
    monkeypatch.setattr(PvaSource, "LATE_CONNECT_S", 60.0)  # the first value: held before
    caplog.set_level(logging.INFO, logger="radint")
    chan = {}
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n, False))
    )
    p = Pipeline(integrator, [src], tmp_path, idle_timeout=20)
    p.start()
    assert wait_for(lambda: "no update in" in caplog.text)
    cb = chan["c"].cb
    cb(fake_update(3, frame(3, "u2")))  # the current value: published before the subscription
    for connected in (False, True, False, True):  # pvapy's first call may say "not yet"
        src.on_connection(connected)
    assert caplog.text.count("disconnected (the IOC stopped") == 1
    assert caplog.text.count("connected again") == 1
    for k, uid in enumerate((4, 5, 1)):
        cb(fake_update(uid, frame(uid, "u2")))
        assert wait_for(lambda k=k: p.written == k + 1)
    summary = finish(p)
    assert summary.written == 3 and summary.dropped == 0
    assert "uniqueId went back 5 -> 1" in caplog.text
    assert (
        "not integrating the channel's value at connection (uniqueId 3, no timestamp" in caplog.text
    )
    assert stream_rows(tmp_path / "stream.h5")["frame_id"].tolist() == [4, 5, 1]


def test_pva_a_channel_connecting_with_a_new_frame_has_it_integrated(integrator, tmp_path):
    """radint waiting for a channel whose record appears holding a frame published after the
    subscription: its first update is that frame, and it is integrated."""
    chan = {}
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n, False))
    )
    p = Pipeline(integrator, [src], tmp_path, idle_timeout=20)
    p.start()
    first = fake_update(1, frame(1, "u2"))
    stamp = int(time.time()) + 1
    first["timeStamp"] = {"secondsPastEpoch": stamp, "nanoseconds": 250_000_000}
    chan["c"].cb(first)
    chan["c"].cb(fake_update(2, frame(2, "u2")))
    assert wait_for(lambda: p.written == 2)
    summary = finish(p)
    assert (summary.written, summary.dropped) == (2, 0)
    rows = stream_rows(tmp_path / "stream.h5")
    assert rows["frame_id"].tolist() == [1, 2]
    # The IOC's time of the frame is kept (NaN for the update that carries none).
    np.testing.assert_array_equal(rows["source_timestamp"], [stamp + 0.25, np.nan])


def test_pva_reconnect_resend_is_skipped_a_publisher_without_ids_is_not(integrator, tmp_path):
    """A value re-sent on reconnect (same uniqueId and timeStamp) is not integrated twice; a
    publisher that sets neither (uniqueId 0 throughout) still has every frame taken."""
    chan = {}
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n))
    )
    p = Pipeline(integrator, [src], tmp_path, idle_timeout=20)
    p.start()
    cb = chan["c"].cb
    stamped = fake_update(7, frame(7, "u2"))
    stamped["timeStamp"] = {"secondsPastEpoch": int(time.time()) + 1, "nanoseconds": 5}
    cb(stamped)
    cb(FakePv(stamped))  # the reconnect's re-send
    for k in range(3):
        cb(fake_update(0, frame(k, "u2")))
    assert wait_for(lambda: p.written == 4)
    summary = finish(p)
    assert (summary.written, summary.dropped) == (4, 0)
    assert stream_rows(tmp_path / "stream.h5")["frame_id"].tolist() == [7, 0, 0, 0]


def test_pva_publishers_without_timestamps(integrator, tmp_path, caplog, monkeypatch):
    """p4p leaves timeStamp at 0 unless told. Regressions: (1) a server that started after
    radint subscribed had its first frame skipped as "published before radint subscribed",
    uncounted; (2) the value re-sent on a reconnect was integrated a second time. Now a first
    update that comes LATE_CONNECT_S after subscribing is integrated, dataTimeStamp stands in
    for timeStamp, and after a reconnect the same uniqueId with the same pixels is skipped
    (other pixels are a new frame of a publisher that does not number them)."""
    monkeypatch.setattr(PvaSource, "LATE_CONNECT_S", 0.2)
    caplog.set_level(logging.INFO, logger="radint")
    chan = {}
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n, False))
    )
    p = Pipeline(integrator, [src], tmp_path, idle_timeout=20)
    p.start()
    time.sleep(0.3)  # the server starts late: its first frame is new
    cb = chan["c"].cb
    src.on_connection(True)
    cb(fake_update(1, frame(1, "u2")))
    cb(fake_update(2, frame(2, "u2")))
    assert wait_for(lambda: p.written == 2)
    src.on_connection(False)
    src.on_connection(True)
    cb(fake_update(2, frame(2, "u2")))  # the reconnect's re-send: skipped
    cb(fake_update(3, frame(3, "u2")))
    src.on_connection(False)
    src.on_connection(True)
    cb(fake_update(3, frame(4, "u2")))  # same id, other pixels: a new frame
    assert wait_for(lambda: p.written == 4)
    summary = finish(p)
    assert (summary.written, summary.dropped) == (4, 0)
    assert stream_rows(tmp_path / "stream.h5")["frame_id"].tolist() == [1, 2, 3, 3]
    assert "uniqueId 2 again, same pixels, first update after a reconnect" in caplog.text
    stamped = fake_update(5, frame(5, "u2"))
    stamped["timeStamp"] = {"secondsPastEpoch": 0, "nanoseconds": 0}
    stamped["dataTimeStamp"] = {"secondsPastEpoch": 1_700_000_000, "nanoseconds": 7}
    assert sources_stamp(stamped) == (1_700_000_000, 7)


def sources_stamp(pv):
    from radint.stream.sources import _stamp

    return _stamp(pv)


def test_pva_a_channel_that_never_connects_is_said_at_the_end(integrator, tmp_path, caplog):
    """Regression: with --timeout shorter than the silence warning, a mistyped channel name
    ended like an idle detector (exit 0, no word about the channel)."""
    caplog.set_level(logging.INFO, logger="radint")
    src = PvaSource("nosuch:img", SHAPE, channel_factory=lambda n: FakeChannel(n, False))
    p = Pipeline(integrator, [src], tmp_path, idle_timeout=20)
    p.start()
    summary = finish(p)
    assert summary.written == 0 and src.never_connected
    assert "pva nosuch:img: the channel never connected in" in caplog.text


def test_pva_frames_land_in_slab_rows_and_refused_ones_are_released():
    """PVA updates are copied (int16 widened to int32) into slab rows; a refused update gives
    its row back."""
    from radint.stream.sources import SourceStats

    chan, items = {}, []
    src = PvaSource(
        "sim:img", SHAPE, channel_factory=lambda n: chan.setdefault("c", FakeChannel(n))
    )
    src.start(lambda item: len(items) < 3 and not items.append(item), SourceStats())
    for uid in range(1, 5):
        chan["c"].cb(fake_update(uid, frame(uid, "i2"), "shortValue"))
    assert [i.frame_id for i in items] == [1, 2, 3]
    assert all(i.data.dtype == np.int32 for i in items)
    np.testing.assert_array_equal([i.data for i in items], [frame(uid, "i2") for uid in (1, 2, 3)])
    slab = next(iter(src.pool._live.values()))
    assert (slab.handed, slab.outstanding) == (4, 3)  # the refused fourth came back
    src.stop()


def _adcore_payload(codec: str, data: np.ndarray) -> np.ndarray:
    """``data`` compressed as areaDetector's NDPluginCodec sends it (ubyteValue bytes)."""
    import numcodecs

    if codec == "lz4":  # LZ4_compress_default: a raw block (numcodecs prefixes the size)
        return np.frombuffer(numcodecs.LZ4().encode(data)[4:], np.uint8)
    if codec == "bslz4":  # bshuf_compress_lz4(..., block_size=0), no header
        import bitshuffle

        return bitshuffle.compress_lz4(data.ravel())
    return np.frombuffer(numcodecs.Blosc(cname="lz4", shuffle=1).encode(data), np.uint8)


@pytest.mark.parametrize(
    ("codec", "dtype", "scalar_type"),
    [("lz4", "u2", 6), ("bslz4", "u4", 7), ("bslz4", "i4", 3), ("blosc", "f4", 9)],
)
def test_pva_decompresses_areadetector_codecs(integrator, codec, dtype, scalar_type):
    """lz4 / bslz4 / blosc NTNDArrays (ubyteValue payload, the pixel type in codec.parameters as
    pvapy delivers the variant union) arrive as the original frame; without parameters the type
    follows from uncompressedSize; jpeg and unknown codecs are rejected with a reason."""
    got = []
    src = PvaSource("sim:img", SHAPE, channel_factory=FakeChannel)
    src.start(lambda item: got.append(item) or True, pipeline_mod.SourceStats())
    data = frame(3, dtype) * 37
    payload = _adcore_payload(codec, data)
    assert payload.nbytes < data.nbytes
    params = ({"value": scalar_type}, {"value": "INT"})
    update = FakePv(uniqueId=1, value=[{"ubyteValue": payload}], codec={"name": codec,
                    "parameters": params}, dimension=[{"size": NY}, {"size": NZ}],
                    uncompressedSize=data.nbytes)  # fmt: skip
    src._channel.cb(update)
    assert len(got) == 1
    np.testing.assert_array_equal(got[0].data.astype(data.dtype), data)
    if dtype in ("u2", "u4"):  # no parameters: uint from uncompressedSize / pixels
        update["uniqueId"], update["codec"] = 2, {"name": codec, "parameters": ()}
        src._channel.cb(update)
        np.testing.assert_array_equal(got[1].data, data)
    for name in ("jpeg", "zstd"):
        update["uniqueId"], update["codec"] = 9, {"name": name, "parameters": params}
        src._channel.cb(update)
    assert src.rejected == 2
    corrupt = dict(update, uniqueId=10, codec={"name": codec, "parameters": params})
    corrupt["value"] = [{"ubyteValue": payload[: len(payload) // 2]}]
    src._channel.cb(FakePv(corrupt))
    assert src.rejected == 3


@pytest.mark.parametrize(("codec", "dtype"), [("bslz4", "u4"), ("bslz4", "u2"), ("lz4", "i4")])
def test_pva_decompresses_payloads_with_the_hdf5_filter_header(codec, dtype):
    """Payloads framed as HDF5's bitshuffle / LZ4 filters frame them (u64 BE size, u32 BE block
    bytes, then blocks: Dectris streams, areaDetector's direct-chunk modes) are read too."""
    import bitshuffle
    import numcodecs

    data = frame(4, dtype) * 37
    raw = data.tobytes()
    if codec == "bslz4":
        block = 256  # elements
        body = bitshuffle.compress_lz4(data.ravel(), block).tobytes()
        header = len(raw).to_bytes(8, "big") + (block * data.itemsize).to_bytes(4, "big")
    else:
        block_bytes, body = 1000, b""
        for at in range(0, len(raw), block_bytes):
            piece = numcodecs.LZ4().encode(raw[at : at + block_bytes])[4:]
            if at == 0:  # the filter stores a block that does not shrink as it is
                piece = raw[:block_bytes]
            body += len(piece).to_bytes(4, "big") + piece
        header = len(raw).to_bytes(8, "big") + block_bytes.to_bytes(4, "big")
    payload = np.frombuffer(header + body, np.uint8)
    scalar = {"u4": 7, "u2": 6, "i4": 3}[dtype]
    codec_field = {"name": codec, "parameters": ({"value": scalar},)}
    got = decompress_ndarray(codec, payload, codec_field, SHAPE, len(raw))
    np.testing.assert_array_equal(got.reshape(SHAPE), data)
    with pytest.raises(ValueError, match="cut short|cannot decompress"):
        decompress_ndarray(codec, payload[:-40], codec_field, SHAPE, len(raw))


def test_pva_blosc_payload_of_the_pixels_size_is_the_pixels():
    """An HDF5 chunk Blosc could not shrink is stored unfiltered; the simulator's direct-chunk
    mode still labels it blosc. A real Blosc frame that happens to be exactly the pixels' size
    (its header says so) is decoded."""
    import numcodecs

    data = frame(2, "u2")
    codec_field = {"name": "blosc", "parameters": ({"value": 6},)}
    got = decompress_ndarray("blosc", np.frombuffer(data.tobytes(), np.uint8), codec_field,
                             SHAPE, data.nbytes)  # fmt: skip
    np.testing.assert_array_equal(got.reshape(SHAPE), data)
    # Leading zeros then noise: find a frame whose Blosc encoding is exactly its size.
    rng = np.random.default_rng(0)
    for zeros in range(0, 400):
        noisy = rng.integers(0, 65536, SHAPE).astype("u2")
        noisy.flat[:zeros] = 0
        encoded = numcodecs.Blosc(cname="lz4", shuffle=0).encode(noisy)
        if len(encoded) == noisy.nbytes:
            break
    else:
        pytest.skip("no Blosc frame of exactly the data's size found")
    got = decompress_ndarray("blosc", np.frombuffer(encoded, np.uint8), codec_field, SHAPE,
                             noisy.nbytes)  # fmt: skip
    np.testing.assert_array_equal(got.reshape(SHAPE), noisy)


def test_pva_missing_pvapy_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pvaccess(name, *a, **kw):
        if name == "pvaccess":
            raise ImportError("No module named 'pvaccess'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pvaccess)

    with pytest.raises(RadintError, match=r"radint\[pva\]"):
        PvaSource("x", SHAPE).start(lambda item: True, pipeline_mod.SourceStats())


def test_pva_real_server_on_loopback(integrator, tmp_path, monkeypatch, capsys):
    port, bport = _free_port(), _free_port()
    for k, v in {
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_SERVER_PORT": str(port),
        "EPICS_PVA_BROADCAST_PORT": str(bport),
        "EPICS_PVAS_BROADCAST_PORT": str(bport),
    }.items():
        monkeypatch.setenv(k, v)
    pva = pytest.importorskip("pvaccess")
    server = pva.PvaServer()
    name = f"radint:test{port}:image"
    server.addRecord(name, pva.NtNdArray())
    src = PvaSource(name, SHAPE)
    p = Pipeline(integrator, [src], tmp_path, idle_timeout=30)
    try:
        p.start()
        # Connected once the record's initial (empty) value arrived; a fixed sleep was too
        # short on a loaded machine.
        assert wait_for(lambda: src.updates >= 1, 20)
        attributes = {  # areaDetector's NDAttributes: each frame's exposure, sample, ...
            1: [pva.NtAttribute("AcquireTime", pva.PvDouble(0.5)),
                pva.NtAttribute("Sample", pva.PvString("CeO2")),
                pva.NtAttribute("ROI", pva.PvObject({"value": [pva.INT]}, {"value": [1, 2]})),
                pva.NtAttribute("Flip", pva.PvDouble(1.5))],
            2: [pva.NtAttribute("AcquireTime", pva.PvDouble(0.25)),
                pva.NtAttribute("a/b", pva.PvInt(7)), pva.NtAttribute("a_b", pva.PvInt(8)),
                pva.NtAttribute("Flip", pva.PvString("up"))],
            4: [],
        }  # fmt: skip
        for uid in (1, 2, 4):
            nt = pva.NtNdArray()
            nt["uniqueId"] = uid
            nt["value"] = {"ushortValue": frame(uid, "u2").ravel()}
            nt["dimension"] = [
                pva.PvDimension(NY, 0, NY, 1, False),
                pva.PvDimension(NZ, 0, NZ, 1, False),
            ]
            nt["attribute"] = attributes[uid]
            server.update(name, nt)
            time.sleep(0.2)
        # As areaDetector sends a frame through its codec plugin: bslz4 bytes, uint32 (pvUInt 7).
        data = frame(5, "u4") * 1000
        nt = pva.NtNdArray()
        nt["uniqueId"] = 5
        nt["value"] = {"ubyteValue": _adcore_payload("bslz4", data)}
        nt["codec"] = pva.PvCodec("bslz4", pva.PvInt(7))
        nt["uncompressedSize"] = data.nbytes
        nt["dimension"] = [
            pva.PvDimension(NY, 0, NY, 1, False),
            pva.PvDimension(NZ, 0, NZ, 1, False),
        ]
        server.update(name, nt)
        assert wait_for(lambda: p.written == 4, 20)
        summary = finish(p)
    finally:
        p.stop()
        server.stop()
    assert summary.written == 4 and src.dropped_upstream == 1
    rows = stream_rows(tmp_path / "stream.h5")
    assert rows["frame_id"].tolist() == [1, 2, 4, 5]
    # Scalar NDAttributes, a column each, empty where a frame has none; arrays left out; a
    # name with "/" cannot take another's column (review: "a/b" was written as "a_b", and the
    # real "a_b" moved to "a_b_"); numbers that turn to text keep their values as text (they
    # became NaN without a word).
    with h5py.File(tmp_path / "stream.h5") as f:
        g = f["entry/stream/attributes"]
        assert sorted(g) == ["AcquireTime", "Flip", "Sample", "a%2Fb", "a_b"]
        np.testing.assert_array_equal(g["AcquireTime"][()], [0.5, 0.25, np.nan, np.nan])
        assert g["Sample"].asstr()[()].tolist() == ["CeO2", "", "", ""]
        np.testing.assert_array_equal(g["a%2Fb"][()], [np.nan, 7, np.nan, np.nan])
        np.testing.assert_array_equal(g["a_b"][()], [np.nan, 8, np.nan, np.nan])
        assert g["a%2Fb"].attrs["attribute_name"] == "a/b"
        assert g["Flip"].asstr()[()].tolist() == ["1.5", "up", "", ""]
        assert g["Flip"].attrs["attribute_name"] == "Flip"
    from radint.cli import main

    assert main(["info", str(tmp_path / "stream.h5")]) == 0
    assert "(entry/stream/attributes): AcquireTime, Flip, Sample, a/b, a_b" in (
        capsys.readouterr().out
    )
    want = integrator.integrate(frame(4, "u2")).lineout
    np.testing.assert_allclose(rows["I"][2], want, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(rows["I"][3], integrator.integrate(data).lineout, rtol=1e-6)


def _loopback_pva_env() -> tuple[int, dict[str, str]]:
    """EPICS ports of a process's own on loopback: the server port and the environment."""
    port, bport = _free_port(), _free_port()
    return port, {
        **os.environ, "PYTHONUNBUFFERED": "1", "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO", "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_SERVER_PORT": str(port), "EPICS_PVAS_SERVER_PORT": str(port),
        "EPICS_PVA_BROADCAST_PORT": str(bport), "EPICS_PVAS_BROADCAST_PORT": str(bport),
    }  # fmt: skip


def _pva_stream_process(
    tmp_path: Path, tag: str, max_frames: int, timeout_s: int = 30
) -> tuple[str, dict[str, str], Path, subprocess.Popen]:
    """`radint stream --source pva` in its own process, on EPICS ports of its own on
    loopback (pvapy's client context keeps the ports it first saw in a process): the
    channel name, the environment to start the server with, the output folder, the process."""
    port, env = _loopback_pva_env()
    params = tmp_path / "p.txt"
    params.write_text(DETECTOR)
    channel = f"radint:{tag}{port}:image"
    out = tmp_path / "out"
    stream = subprocess.Popen(
        [sys.executable, "-m", "radint.cli", "stream", str(params), "-o", str(out), "--source",
         "pva", "--channel", channel, "--backend", "cpu", "-j", "1", "--max-frames",
         str(max_frames), "--timeout", str(timeout_s)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    return channel, env, out, stream


_P4P_SERVER = """
import sys, threading, time
import numpy as np
from p4p.nt import NTNDArray
from p4p.server import Server
from p4p.server.thread import SharedPV

name, ny, nz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
nt = NTNDArray()
connected = threading.Event()

class Handler:
    def onFirstConnect(self, pv):
        connected.set()

def frame(uid, dtype):  # as tests/test_stream.py's frame(); p4p leaves timeStamp at 0
    data = ((np.arange(ny * nz).reshape(nz, ny) + uid) % 251).astype(dtype)
    value = nt.wrap(data)
    value["uniqueId"] = uid
    return value

pv = SharedPV(handler=Handler())
pv.open(nt.wrap(np.zeros((0,), np.uint16)))  # a record without a frame yet
with Server(providers=[{name: pv}]):
    if not connected.wait(60):
        sys.exit("radint never connected")
    time.sleep(1.0)  # its monitor is up
    last = None
    for uid, dtype in ((1, "u2"), (2, "i4"), (3, "f4"), (4, "f8")):
        last = frame(uid, dtype)
        pv.post(last)
        time.sleep(0.2)
    pv.close()  # clients disconnect; reopened with the same value, re-sent on reconnect
    time.sleep(1.0)
    pv.open(last)
    time.sleep(1.0)
    pv.post(frame(5, "u1"))
    time.sleep(1.0)
"""


def _p4p_into_stream(
    tmp_path: Path, tag: str, n_z: int, timeout_s: int = 30
) -> tuple[int, str, Path]:
    """Run :data:`_P4P_SERVER` (frames of NY x ``n_z`` pixels) into `radint stream --source pva
    --max-frames 5`: the stream's exit status, its output and its output folder."""
    pytest.importorskip("p4p")
    pytest.importorskip("pvaccess")
    channel, env, out, stream = _pva_stream_process(tmp_path, tag, 5, timeout_s)
    try:
        server = subprocess.run(
            [sys.executable, "-c", _P4P_SERVER, channel, str(NY), str(n_z)],
            capture_output=True, text=True, timeout=90, env=env,
        )  # fmt: skip
        text = stream.communicate(timeout=60)[0].decode()
    finally:
        if stream.poll() is None:
            stream.kill()
    assert server.returncode == 0, server.stdout + server.stderr
    return stream.returncode, text, out


def test_p4p_server_without_timestamps_streams_into_radint(integrator, tmp_path):
    """A real PVA server of the other Python EPICS library (p4p): its NTNDArray value types,
    its dimension order, no timeStamps (p4p's default) and a server-side disconnect whose
    reconnect re-sends the current value. `radint stream` writes every frame once, equal to
    integrating it directly. Both in their own processes (pvapy's client context keeps the
    EPICS ports it first saw)."""
    returncode, text, out = _p4p_into_stream(tmp_path, "p4p", NZ)
    assert returncode == 0, text
    assert "written 5" in text and "dropped 0" in text, text
    assert "uniqueId 4 again, same pixels, first update after a reconnect" in text, text
    rows = stream_rows(out / "stream.h5")
    assert rows["frame_id"].tolist() == [1, 2, 3, 4, 5]
    for row, (uid, dtype) in enumerate(((1, "u2"), (2, "i4"), (3, "f4"), (4, "f8"), (5, "u1"))):
        want = integrator.integrate(frame(uid, dtype)).lineout
        np.testing.assert_allclose(rows["I"][row], want, rtol=1e-12, equal_nan=True)


_STOPPED_WHILE_BUSY = """
import sys, threading, time
import numpy as np
import pvaccess as pva
from radint.stream.pipeline import SourceStats
from radint.stream.sources import PvaSource

name = sys.argv[1]
server = pva.PvaServer()

def update(uid):
    value = pva.NtNdArray()
    value["uniqueId"] = uid
    value["dimension"] = [pva.PvDimension(8, 0, 8, 1, False), pva.PvDimension(4, 0, 4, 1, False)]
    value["value"] = {"ushortValue": np.full(32, uid, np.uint16)}
    value["timeStamp"] = pva.PvTimeStamp(time.time(), 0)
    return value

server.addRecord(name, update(0))
source = PvaSource(name, (4, 8))
inside, leave = threading.Event(), threading.Event()

def sink(item):  # the stream is busy with this frame when it is told to stop
    item.release()
    inside.set()
    leave.wait(5)
    return True

source.start(sink, SourceStats())
time.sleep(0.5)
server.update(name, update(1))
if not inside.wait(10):
    sys.exit("no frame arrived")
stopping = threading.Thread(target=source.stop)
stopping.start()
time.sleep(0.5)  # past the 0.1 s pvapy's channel destructor waits for its monitor thread
leave.set()
stopping.join()
time.sleep(0.5)
print("stopped cleanly", flush=True)
"""


def test_a_pva_source_stopped_inside_a_callback_does_not_crash(tmp_path):
    """CI (two full runs, 1 stop in ~7 of a fast publisher's stream): a PVA stream stopped
    while pvapy's monitor thread was in radint's callback ended by a segmentation fault. The
    source dropped pvapy's channel, whose destructor waits only 0.1 s for that thread; the
    thread then freed the callback without the GIL. stop() now waits for the callback and
    keeps the channel."""
    pytest.importorskip("pvaccess")
    _, env = _loopback_pva_env()
    done = subprocess.run(
        [sys.executable, "-c", _STOPPED_WHILE_BUSY, f"radint:busy{env['EPICS_PVA_SERVER_PORT']}"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stdout + done.stderr)
    assert "stopped cleanly" in done.stdout


def test_a_pva_stream_whose_frames_were_all_rejected_exits_1(tmp_path):
    """Review: an IOC sending frames of another shape than the parameter file's had every
    frame rejected (each logged), and `radint stream` ended "nothing written (no frames)" with
    exit status 0, as if it had worked."""
    returncode, text, _ = _p4p_into_stream(tmp_path, "shape", NZ + 1, timeout_s=4)  # a row more
    assert returncode == 1, text
    assert "frame(s) received but rejected, not integrated" in text, text
    assert "written 0" in text or "nothing written" in text, text


# ----------------------------------------------------------------------------- live peak control
def test_live_peak_control_midas_file_and_json(config, tmp_path):
    """peak_update.txt (MIDAS live_viewer format) and peaks.json change the fitted peaks between
    frames; stream.h5 entry/peaks and fit.bin follow, active_peaks.txt lists the positions."""
    from radint.io import read_nexus
    from radint.testing import ring_image

    fine = config.replace(
        r_bin_px=0.5, eta_bin_deg=360.0, eta_min_deg=-180, eta_max_deg=180, write_2d=True
    )
    ring_r = np.array([20.0, 30.0])
    ring_tth = np.degrees(np.arctan(ring_r * fine.pixel_size_y_um / fine.lsd_um))
    image = ring_image(fine, ring_tth, fwhm_deg=0.08, dtype=np.uint32)
    integ = Integrator(fine, backend="cpu", n_threads=1, fit=None)
    p, src = start_pipeline(integ, tmp_path, midas_files=True)
    s = connect(src.port)

    def send(ids):
        for i in ids:
            s.sendall(encode_frame_bytes(i, image))
        assert wait_for(lambda: p.written == ids[-1] + 1)
        time.sleep(0.25)  # past the 0.2 s control poll interval

    def drop(name, text):
        tmp = tmp_path / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, tmp_path / name)  # applied before the next frame is integrated

    send([0, 1])  # no fitting yet
    drop("peak_update.txt", "mode replace\n20.1\n")
    send([2, 3])
    assert not (tmp_path / "peak_update.txt").exists()
    assert (tmp_path / "active_peaks.txt").read_text() == "20.1000\n"
    drop("peaks.json", json.dumps({"mode": "append", "two_theta_deg": [float(ring_tth[1])]}))
    send([4, 5])
    drop("peaks.json", '{"mode": "sideways", "r_px": [1]}')  # rejected with a log line
    send([6])
    # kept under another name, not deleted: it may be a user's file (output sweep)
    assert (tmp_path / "peaks.json.rejected").read_text() == '{"mode": "sideways", "r_px": [1]}'
    assert not (tmp_path / "peaks.json").exists()
    drop("peaks.json", '{"off": true}')
    send([7])
    s.close()
    summary = finish(p)
    assert summary.written == 8 and summary.dropped == 0
    r = read_nexus(tmp_path / "stream.h5")
    status = r.peaks.status
    assert status.shape[1] >= 2
    assert (status[:2] == 255).all() and (status[7] == 255).all()
    assert (status[2:4, 0] == 0).all() and (status[2:4, 1:] == 255).all()
    assert (status[4:7, :2] == 0).all()
    # Alone, the R=20 peak's ±10 px ROI reaches the R=30 ring's flank, which biases its
    # background (0.06 px); fitted together the two share one job and land within 0.005 px.
    np.testing.assert_allclose(r.peaks.center[2:4, 0], 20.0, atol=0.1)
    np.testing.assert_allclose(r.peaks.center[4:7, :2], [[20.0, 30.0]] * 3, atol=0.01)
    fit_bin = np.fromfile(tmp_path / "fit.bin", "<f8").reshape(-1, 7)
    assert fit_bin.shape[0] == 2 * 1 + 3 * 2  # one peak in frames 2-3, two in frames 4-6
    np.testing.assert_allclose(fit_bin[:, 1], [20, 20, 20, 30, 20, 30, 20, 30], atol=0.1)
    # --midas-files also leaves the post-processed MIDAS files of the whole run (spec §7.4),
    # made from the GPU program's binary files (spec §7.3).
    n_r, n_eta = r.n_r, r.n_eta
    lines = np.fromfile(tmp_path / "lineout.bin", "<f8").reshape(8, n_r, 2)
    means = np.fromfile(tmp_path / "lineout_simple_mean.bin", "<f8").reshape(8, n_r, 2)
    cakes = np.fromfile(tmp_path / "Int2D.bin", "<f8").reshape(8, n_r, n_eta)
    np.testing.assert_allclose(lines[:, :, 1], np.nan_to_num(r.lineout), rtol=1e-12)  # 0 as GPU
    used = r.area[0] > 1e-9
    want_mean = np.where(used, np.nan_to_num(r.cake), 0).sum(axis=1) / np.maximum(used.sum(0), 1)
    np.testing.assert_allclose(means[:, :, 1], want_mean, rtol=1e-12)
    with h5py.File(tmp_path / "integrator_output.h5") as f:
        assert f.attrs["num_frames"] == 8 and len(f["lineouts"]) == 8
        np.testing.assert_array_equal(f["lineouts/5"][...], lines[5])
        np.testing.assert_array_equal(f["lineouts_simple_mean/7"][...], means[7])
        np.testing.assert_array_equal(f["geometry_maps/Area_map"][...], r.area[0].T)
        # Frames 4-6 fitted two peaks: the fit table holds their 7 fit.bin values each.
        assert f["fit/5"].shape == (2, 7) and f["fit/0"].shape == (0, 7)
        np.testing.assert_array_equal(f["fit/5"][...], fit_bin[4:6])
        summed = f["OmegaSumFrame/Summed_from_3_to_3"]
        np.testing.assert_array_equal(summed[...], cakes[3])
        assert summed.attrs["Number Of Frames Summed"] == 1
    import zarr
    from zarr.storage import ZipStore

    root = zarr.open_group(ZipStore(tmp_path / "integrator_output.zarr.zip", mode="r"), mode="r")
    assert root["REtaMap"].shape == (5, n_r, n_eta)
    last = root["OmegaSumFrame/LastFrameNumber_7"]
    np.testing.assert_array_equal(last[...], cakes[7])
    assert last.attrs["LastOme"] == 7.0
    assert root["InstrumentParameters/Distance"][0] == r.config.lsd_um


def test_disk_full_stops_the_stream_cleanly(integrator, tmp_path, monkeypatch):
    """A write failing with ENOSPC (as a 10-minute soak on this machine really did): the pipeline
    stops taking frames, wait() raises that error, the summary counts what was written, the file
    closes and keeps the frames written before, and no thread dies with a traceback."""
    import errno

    original = pipeline_mod.NexusWriter.append
    calls = {"n": 0}

    def fill_disk(self, result, **kw):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, result, **kw)

    monkeypatch.setattr(pipeline_mod.NexusWriter, "append", fill_disk)
    monkeypatch.setattr(pipeline_mod, "WRITE_DELAY_S", 0.0)  # one append per frame
    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args))
    p, src = start_pipeline(integrator, tmp_path, queue_size=2)
    s = connect(src.port)
    for i in range(2):
        s.sendall(encode_frame_bytes(i, frame(i)))
        assert wait_for(lambda i=i: p.written == i + 1)
    with pytest.raises(OSError, match="No space left"):
        try:
            for i in range(2, 40):
                s.sendall(encode_frame_bytes(i, frame(i)))
        except OSError:
            pass  # the server closed the connection when it stopped
        p.wait(30)
    s.close()
    assert p.summary is not None and p.summary.written == 2
    assert not errors
    assert stream_rows(tmp_path / "stream.h5")["frame_id"].tolist() == [0, 1]


def test_pvapy_area_detector_simulator_streams_into_radint(tmp_path):
    """pvapy's own areaDetector simulator (pvapy-ad-sim-server, what beamlines test PVA
    clients with) publishing uint16 NTNDArrays on loopback: `radint stream --source pva` takes
    shape and type from the arrays and writes every frame it is sent, ids from uniqueId."""
    import subprocess
    import sys

    pytest.importorskip("pvaccess")
    sim = shutil.which("pvapy-ad-sim-server", path=str(Path(sys.executable).parent))
    if sim is None:
        pytest.skip("pvapy-ad-sim-server not installed")
    channel, env, out, stream = _pva_stream_process(tmp_path, "sim", max_frames=30)
    try:
        server = subprocess.run(
            [sim, "-cn", channel, "-nx", str(NY), "-ny", str(NZ), "-dt", "uint16", "-fps", "20",
             "-nf", "10", "-rt", "8", "-std", "2", "-dc"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        text = stream.communicate(timeout=60)[0].decode()
    finally:
        if stream.poll() is None:
            stream.kill()
    assert server.returncode == 0, server.stdout + server.stderr
    assert stream.returncode == 0, text
    assert "written 30" in text and "dropped 0" in text, text
    rows = stream_rows(out / "stream.h5")
    ids, stamps = rows["frame_id"], rows["source_timestamp"]
    assert len(ids) == 30 and (np.diff(ids) == 1).all()
    # the simulator's timeStamps: when it published each frame, 20 a second
    assert (np.diff(stamps) > 0).all() and abs(np.median(np.diff(stamps)) - 0.05) < 0.02, stamps


def test_peak_update_txt_reads_as_the_gpu_program_does(config, tmp_path):
    """Lines that are not a radius > 0 are skipped (the GPU's sscanf loop), not the whole
    update; positions come out sorted by R (its fitPeaks order, so fit.bin rows follow); the
    starting PeakLocation peaks are listed in active_peaks.txt before any update."""
    from radint.fit import FitSpec
    from radint.stream.control import PeakControl

    control = PeakControl(tmp_path, config)
    start = FitSpec(positions_px=(30.0,))
    control.announce(start)
    assert (tmp_path / "active_peaks.txt").read_text() == "30.0000\n"
    (tmp_path / "peak_update.txt").write_text("mode append\n# picked in viewer\n24.5\n-3\n12.25\n")
    spec = control.poll(start)
    assert spec.positions_px == (12.25, 24.5, 30.0)
    assert (tmp_path / "active_peaks.txt").read_text() == "12.2500\n24.5000\n30.0000\n"
    # A comment above the mode line (as a person writes one) does not hide the mode.
    (tmp_path / "peak_update.txt").write_text("# from the viewer\n\nmode append\n80\n")
    spec = control.poll(spec)
    assert spec.positions_px == (12.25, 24.5, 30.0, 80.0)
    # Without a mode line, line 1 is the mode line as in MIDAS (a comment here): replace with
    # every position after it; a comment alone changes nothing and is kept as .rejected.
    (tmp_path / "peak_update.txt").write_text("# picked in viewer\n12.25\n24.5\n")
    assert control.poll(spec).positions_px == (12.25, 24.5)
    (tmp_path / "peak_update.txt").write_text("# placeholder\n")
    assert control.poll(spec) is UNCHANGED
    assert (tmp_path / "peak_update.txt.rejected").read_text() == "# placeholder\n"


def test_peak_update_txt_without_its_mode_line_is_said(config, tmp_path, caplog):
    """Audit: a plain list of radii lost its first radius to the mode line without a word, and
    a file with no radius (junk, `mode replace` alone) was logged "applied" and deleted."""
    from radint.fit import FitSpec
    from radint.stream.control import PeakControl

    control = PeakControl(tmp_path, config)
    start = FitSpec(positions_px=(30.0,))
    (tmp_path / "peak_update.txt").write_text("57.66\n78.70\n")
    assert control.poll(start).positions_px == (78.7,)  # as MIDAS reads it
    assert "line 1 ('57.66') is taken as the mode line, as MIDAS reads it" in caplog.text
    for junk in ("garbage\n", "mode replace\n"):
        (tmp_path / "peak_update.txt").write_text(junk)
        assert control.poll(start) is UNCHANGED
        assert "no radius > 0 after the mode line" in caplog.text


def _write_failure_run(integrator, tmp_path, monkeypatch, runs: list[int], end_with_first: bool):
    """The writer's NexusWriter fails on its first block; runs of the given sizes were
    integrated (the first one fails to be written). Returns (pipeline, writer thread)."""
    from radint.stream.sources import StreamItem

    class Boom:
        def __init__(self, *a, **k):
            raise OSError("disk full")

    monkeypatch.setattr(pipeline_mod, "NexusWriter", Boom)
    if not end_with_first:  # a block is one run; else the block waits for, and takes, the end
        monkeypatch.setattr(pipeline_mod, "WRITE_DELAY_S", 0.0)
    p = Pipeline(integrator, [], tmp_path / "out")
    start = 0
    for k, n in enumerate(runs):
        items = [
            StreamItem(frame_id=start + i, data=frame(start + i), source="x", timestamp=0.0)
            for i in range(n)
        ]
        start += n
        p._write_budget.acquire(n)
        p.results.put((items, integrator.integrate_stack([it.data for it in items])))
        if k == 0 and end_with_first:
            p.results.put(None)
    if not end_with_first:
        p.results.put(None)
    t = threading.Thread(target=p._write_loop, daemon=True)
    t.start()
    t.join(10)
    return p, t


def test_write_error_counts_every_lost_frame(integrator, tmp_path, monkeypatch, caplog):
    """Runs of several frames: each frame the writer could not write is counted as dropped
    (the failed block and the runs still queued), so received = written + dropped."""
    p, t = _write_failure_run(integrator, tmp_path, monkeypatch, [3, 8, 8], end_with_first=False)
    assert not t.is_alive()
    assert p.stats.dropped == 19 and p.written == 0
    assert isinstance(p._error, OSError) and p._write_budget.held == 0


def test_write_error_on_the_last_block_does_not_hang(integrator, tmp_path, monkeypatch):
    """The end marker taken with the block whose write fails: the writer stops at once."""
    p, t = _write_failure_run(integrator, tmp_path, monkeypatch, [4], end_with_first=True)
    assert not t.is_alive() and p.stats.dropped == 4


def test_write_budget_bounds_frames_not_runs():
    """Integrated frames waiting for the writer are bounded in frames; a run larger than the
    bound passes alone (never waits forever)."""
    budget = pipeline_mod._FrameBudget(10)
    budget.acquire(8)
    waited = threading.Event()

    def second():
        budget.acquire(8)  # 16 > 10: waits for the writer
        waited.set()

    th = threading.Thread(target=second, daemon=True)
    th.start()
    assert not waited.wait(0.3)
    budget.release(8)
    assert waited.wait(5) and budget.held == 8
    budget.release(8)
    budget.acquire(25)  # larger than the bound, nothing held: passes
    assert budget.held == 25


@pytest.mark.parametrize("seed", range(12))
def test_writer_failures_at_random_points_never_hang_or_lose_count(
    integrator, tmp_path, monkeypatch, seed
):
    """The integrate and write threads with a writer failing after 0, 1, 2, 5 or no appends,
    various block delays, write bounds and frame counts: both threads end, nothing stays held,
    written + dropped = frames, and at most max(bound, RUN_FRAMES) frames wait for the writer."""
    import random

    from radint.stream.sources import StreamItem

    rng = random.Random(seed)
    fail_after = rng.choice([0, 1, 2, 5, 10**9])
    appends = {"n": 0}

    class Failing(pipeline_mod.NexusWriter):
        def append(self, *a, **k):
            appends["n"] += 1
            if appends["n"] > fail_after:
                raise OSError("disk full")
            return super().append(*a, **k)

    monkeypatch.setattr(pipeline_mod, "NexusWriter", Failing)
    monkeypatch.setattr(pipeline_mod, "WRITE_DELAY_S", rng.choice([0.0, 0.01, 0.25]))
    total = rng.randint(1, 60)
    p = Pipeline(integrator, [], tmp_path / "out", queue_size=total + 1,
                 write_queue_size=rng.choice([1, 2, 5, 8, 32]))  # fmt: skip
    peak, watching = [0], threading.Event()

    def watch():
        while not watching.is_set():
            peak[0] = max(peak[0], p._write_budget.held)
            time.sleep(0.0005)

    threading.Thread(target=watch, daemon=True).start()
    for i in range(total):
        p.stats.add("received")
        p.frames.put(StreamItem(frame_id=i, data=frame(i), source="x", timestamp=0.0))
    threads = [threading.Thread(target=f, daemon=True) for f in (p._integrate_loop, p._write_loop)]
    for t in threads:
        t.start()
    p._sources_done.set()
    for t in threads:
        t.join(30)
    watching.set()
    assert not any(t.is_alive() for t in threads)
    assert p._write_budget.held == 0
    assert p.written + p.stats.dropped == total
    assert peak[0] <= max(p._write_budget.limit, pipeline_mod.RUN_FRAMES)


def test_frame_left_in_the_queue_after_an_integration_error_is_counted(integrator, tmp_path):
    """A frame a source puts after the integration thread stopped on an error is dropped at
    shutdown: counted (received = written + dropped) and its buffer handed back to its pool."""
    from radint.stream.sources import FramePool, StreamItem

    p = Pipeline(integrator, [], tmp_path / "out")
    p._t0 = time.monotonic()
    pool = FramePool()
    row = pool.take(int(np.prod(frame(0).shape)), frame(0).dtype)
    late = StreamItem(frame_id=7, data=row.reshape(frame(0).shape), source="x", timestamp=0.0,
                      pool=pool)  # fmt: skip
    p.stats.add("received")
    p.frames.put(late)
    p.stop()
    p._shutdown()
    assert p.stats.dropped == 1 and p.summary is not None and p.summary.dropped == 1
    assert late.pool is None  # released


def test_summary_says_how_long_each_stage_worked(integrator, tmp_path):
    """The summary splits the run's time: seconds spent integrating and writing (which stage
    bounds the rate), each within the run's wall time."""
    p, src = start_pipeline(integrator, tmp_path, max_frames=5)
    send_frames(((frame(i), f"f{i}") for i in range(5)), port=src.port, mapping_file=None)
    summary = p.wait(30)
    assert summary is not None and summary.written == 5
    assert 0 < summary.integrate_seconds <= summary.seconds
    assert 0 < summary.write_seconds <= summary.seconds
    assert "busy: integrating" in summary.line() and summary.as_dict()["write_seconds"] > 0


def test_live_auto_beyond_the_peak_table_is_refused(tmp_path, config, caplog):
    """{"auto": N} with N above the stream's 100 peak slots is refused with a log line and the
    current peaks stay (it was applied, and the writer then failed and stopped the stream)."""
    from radint.stream.control import MAX_PEAKS, PeakControl

    control = PeakControl(tmp_path, config)
    (tmp_path / "peaks.json").write_text(json.dumps({"auto": MAX_PEAKS + 50}))
    with caplog.at_level(logging.ERROR, logger="radint"):
        assert control.poll(None) is UNCHANGED
    assert f"at most {MAX_PEAKS} peaks" in caplog.text
    (tmp_path / "peaks.json").write_text(json.dumps({"auto": MAX_PEAKS}))
    assert control.poll(None).auto == MAX_PEAKS


def test_disk_full_keeps_stream_h5_and_the_midas_files_in_step(integrator, tmp_path, monkeypatch):
    """With --midas-files, a disk that holds a block's stream.h5 rows but not its binary records
    as well is refused before either is written: stream.h5 and lineout.bin keep the same frames
    (the rows were in stream.h5, a partial record in Int2D.bin and the frames counted dropped)."""
    import errno
    import shutil as shutil_mod

    from radint.io import nexus

    real = shutil_mod.disk_usage
    full = {"on": False}

    def usage(path):
        u = real(path)
        return u._replace(free=nexus.SPACE_MARGIN + 100) if full["on"] else u

    monkeypatch.setattr(nexus.shutil, "disk_usage", usage)
    monkeypatch.setattr(pipeline_mod, "WRITE_DELAY_S", 0.0)
    p, src = start_pipeline(integrator, tmp_path, queue_size=2, midas_files=True)
    s = connect(src.port)
    for i in range(2):
        s.sendall(encode_frame_bytes(i, frame(i)))
        assert wait_for(lambda i=i: p.written == i + 1)
    full["on"] = True
    with pytest.raises(OSError, match="No space left") as caught:
        try:
            for i in range(2, 10):
                s.sendall(encode_frame_bytes(i, frame(i)))
        except OSError:
            pass
        p.wait(30)
    s.close()
    assert caught.value.errno == errno.ENOSPC
    # Named as what was checked (audit: "Int2D.bin", a file a Write2D 0 stream never makes).
    assert caught.value.filename == f"{tmp_path} (MIDAS binary files)"
    rows = stream_rows(tmp_path / "stream.h5")["frame_id"].tolist()
    n_r = integrator.map.n_r
    lines = np.fromfile(tmp_path / "lineout.bin", "<f8").size // (2 * n_r)
    assert rows == [0, 1] and lines == 2 and p.summary.written == 2
