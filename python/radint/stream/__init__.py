"""Live integration: sources (MIDAS TCP, EPICS PVA, folder watch) → bounded queue →
Integrator → NeXus writer. See :class:`Pipeline`, ``radint stream`` and ``radint send``."""

from radint.stream.pipeline import Pipeline, Summary
from radint.stream.protocol import ProtocolError, decode_frame, encode_frame_bytes
from radint.stream.sender import send_frames
from radint.stream.sources import FolderSource, PvaSource, StreamItem, TcpSource

__all__ = [
    "FolderSource",
    "Pipeline",
    "ProtocolError",
    "PvaSource",
    "StreamItem",
    "Summary",
    "TcpSource",
    "decode_frame",
    "encode_frame_bytes",
    "send_frames",
]
