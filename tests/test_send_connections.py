"""``radint send --connections N``: frames spread round robin over N connections, each sent by
its own thread, into radint's stream (a thread per client). Every frame arrives once, under its
dataset number, so the frame ids keep the sending order; the mapping lists every frame sent."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest
import tifffile

from radint import IntegrationConfig, Integrator
from radint.exceptions import RadintError
from radint.stream.protocol import encode_frame_bytes
from radint.stream.sender import iter_file_frames, send_frames
from tests.test_stream import DETECTOR, frame, start_pipeline, stream_rows


@pytest.fixture(scope="module")
def integrator() -> Integrator:
    return Integrator(IntegrationConfig.from_text(DETECTOR, "stream.txt"), n_threads=1)


@pytest.mark.parametrize("connections", [2, 3])
def test_frames_over_several_connections_arrive_once_with_their_ids(
    integrator, tmp_path, connections
):
    """Plain TIFF files (sent by sendfile) and decoded ones (zlib), over 2 and 3 connections:
    the stream gets each frame once, integrated as sent, with id = its place in the series,
    from `connections` clients; the mapping names every frame in sending order."""
    n = 11
    for k in range(n):
        tifffile.imwrite(tmp_path / f"f{k:02d}.tif", frame(k, "u2"),
                         compression="zlib" if k % 4 == 3 else None)  # fmt: skip
    files = sorted(tmp_path.glob("f*.tif"))
    p, src = start_pipeline(integrator, tmp_path / "out", max_frames=n)
    mapping = tmp_path / "m.json"
    sent = send_frames(iter_file_frames(files), port=src.port, mapping_file=mapping,
                       save_interval=4, connections=connections)  # fmt: skip
    assert sent == n
    summary = p.wait(30)
    assert summary is not None and summary.written == n and summary.dropped == 0
    rows = stream_rows(tmp_path / "out" / "stream.h5")
    assert sorted(rows["frame_id"].tolist()) == list(range(n))
    assert len(set(rows["source"].tolist())) == connections
    for row, fid in enumerate(rows["frame_id"]):
        want = integrator.integrate(frame(int(fid), "u2")).lineout
        np.testing.assert_allclose(rows["I"][row], want, rtol=1e-12, equal_nan=True)
    entries = json.loads(mapping.read_text())
    assert list(entries) == [str(k) for k in range(n)]
    assert [v["filename"] for v in entries.values()] == [f.name for f in files]
    assert [v["dataset_num"] for v in entries.values()] == list(range(n))


def test_several_connections_carry_midas_encoding_and_numbering(tmp_path):
    """On the wire each connection carries its share in order, byte for byte as one
    connection would send those frames (headers with the global dataset numbers), also with
    --compress, counting on from first_dataset_num past 65535."""
    frames = [frame(k, "u4") * (70000 if k == 2 else 1) for k in range(7)]
    for compress in (False, True):
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(20)
        got: dict[int, bytearray] = {}

        def run(server=server, got=got) -> None:
            with server:
                conns = [server.accept()[0] for _ in range(3)]
                threads = []
                for k, conn in enumerate(conns):
                    got[k] = bytearray()

                    def drain(conn=conn, buf=got[k]) -> None:
                        with conn:
                            conn.settimeout(20)
                            while chunk := conn.recv(1 << 20):
                                buf.extend(chunk)

                    threads.append(threading.Thread(target=drain, daemon=True))
                    threads[-1].start()
                for t in threads:
                    t.join(20)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        port = server.getsockname()[1]
        items = ((f, f"f{k}") for k, f in enumerate(frames))
        assert send_frames(items, port=port, compress=compress, mapping_file=None,
                           first_dataset_num=65534, connections=3) == 7  # fmt: skip
        t.join(20)
        # Connections are accepted in the order they were opened: connection j got frames
        # j, j + 3, ...
        for j in range(3):
            want = b"".join(encode_frame_bytes((65534 + k) % 65536, frames[k], compress)
                            for k in range(j, 7, 3))  # fmt: skip
            assert bytes(got[j]) == want


def test_a_server_closing_one_connection_ends_the_send_with_the_count(integrator, tmp_path):
    """The server stops after 5 frames: the send ends with the frames handed over counted and
    the mapping listing exactly those."""
    p, src = start_pipeline(integrator, tmp_path / "out", max_frames=5)
    mapping = tmp_path / "m.json"
    items = ((frame(k % 7, "u4"), f"f{k}") for k in range(100_000))
    with pytest.raises(RadintError, match=r"closed the connection after \d+ frame\(s\)") as e:
        send_frames(items, port=src.port, mapping_file=mapping, connections=2)
    assert p.wait(30).written == 5
    count = int(str(e.value).split("after ")[1].split(" ")[0])
    assert len(json.loads(mapping.read_text())) == count >= 5


def test_connections_are_checked(tmp_path):
    with pytest.raises(RadintError, match="connections must be 1..64, got 0"):
        send_frames(iter([]), port=1, mapping_file=None, connections=0)
    with pytest.raises(RadintError, match="nothing listens"):
        send_frames(iter([]), port=1, mapping_file=None, connections=2)


def test_midas_files_name_frames_by_id_when_connections_reorder_them(integrator, tmp_path):
    """Audit: over several connections frames arrive out of sending order; integrator_output.h5
    named arrival row k after mapping entry k (MIDAS's keying, right for one connection) and
    so stored lineouts under other frames' names. Rows are named by their frame id now: every
    lineouts/<name> is that file's frame."""
    import h5py

    n = 12
    for k in range(n):
        tifffile.imwrite(tmp_path / f"f{k:02d}.tif", frame(3 * k, "u2"))
    files = sorted(tmp_path.glob("f*.tif"))
    mapping = tmp_path / "m.json"
    p, src = start_pipeline(integrator, tmp_path / "out", max_frames=n, midas_files=True,
                            mapping_file=mapping)  # fmt: skip
    assert send_frames(iter_file_frames(files), port=src.port, mapping_file=mapping,
                       connections=3) == n  # fmt: skip
    assert p.wait(60).written == n
    with h5py.File(tmp_path / "out" / "integrator_output.h5") as f:
        for k in range(n):
            got = f[f"lineouts/f{k:02d}"][()][:, 1]
            want = integrator.integrate(frame(3 * k, "u2")).lineout
            np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True, err_msg=f"f{k:02d}")


_STALLED = """
import socket, sys, threading
import numpy as np
from radint.stream.sender import send_frames
n = int(sys.argv[1])
server = socket.create_server(("127.0.0.1", 0))
held = []  # accepted, never read
threading.Thread(target=lambda: [held.append(server.accept()[0]) for _ in range(n)],
                 daemon=True).start()
frames = ((np.full((512, 512), k, dtype="u4"), f"f{k}") for k in range(100000))
print("sending", flush=True)
try:
    send_frames(frames, port=server.getsockname()[1], mapping_file=None, connections=n)
except KeyboardInterrupt:
    print("interrupted", [t.name for t in threading.enumerate() if t.name == "radint-send"],
          flush=True)
"""


def test_ctrl_c_against_a_server_that_stopped_reading_ends_at_once(tmp_path):
    """Audit: Ctrl-C with 8 connections into a server that accepts but never reads took 40 s
    (each connection's thread waited for in turn) and left the sending threads running. The
    sockets are shut first now: the send ends at once, no sending thread left."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _STALLED, "8"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "sending"
    time.sleep(2.0)  # every socket buffer full, every thread blocked in a send
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 10, (out, err)
    assert "interrupted []" in out, (out, err)


def test_a_bad_frame_with_several_connections_sends_every_frame_before_it(integrator, tmp_path):
    """Audit: a frame of the wrong shape in the middle of a 4-connection send dropped good
    frames already handed to the connections (frames 0, 1, 2, 6 of 0..7 arrived). As over one
    connection, every frame before it goes out, the mapping lists them, and the error names
    the bad frame."""
    import json

    good = [(frame(k, "u4"), f"f{k}") for k in range(8)]
    bad = (np.zeros((40, 64), np.uint32), "f8")
    p, src = start_pipeline(integrator, tmp_path / "out", max_frames=8)
    mapping = tmp_path / "m.json"
    with pytest.raises(RadintError, match=r"f8: frame shape \(40, 64\)"):
        send_frames(iter([*good, bad, *good]), port=src.port, mapping_file=mapping,
                    shape=good[0][0].shape, connections=4)  # fmt: skip
    assert p.wait(30).written == 8
    assert sorted(stream_rows(tmp_path / "out" / "stream.h5")["frame_id"].tolist()) == list(
        range(8)
    )
    assert list(json.loads(mapping.read_text())) == [str(k) for k in range(8)]
