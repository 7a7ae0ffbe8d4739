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
