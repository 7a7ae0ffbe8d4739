"""EDF and CBF through fabio (the optional extra ``radint[formats]``)."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from radint.io._source import FrameSource
from radint.io.errors import ReaderError

T = TypeVar("T")

#: Start of a CBF binary section (after its MIME header).
_CBF_BINARY_START = b"\x0c\x1a\x04\xd5"
_CBF_BINARY_SIZE = re.compile(rb"X-Binary-Size:\s*(\d+)")


class _ErrorLog(logging.Handler):
    """Collects the ERROR records fabio logs on the current thread while a read is watched.

    Why: fabio reports a truncated EDF ("Data stream is incomplete: X < expected Y bytes") or a
    CBF checksum mismatch only through ``logging`` and returns zero-padded pixels. The list is
    per thread as frames may be read on a prefetch thread.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        watched: list[str] | None = getattr(self._local, "messages", None)
        if watched is not None:
            watched.append(record.getMessage())

    @contextlib.contextmanager
    def watch(self) -> Iterator[list[str]]:
        """The messages fabio logs at ERROR level on this thread inside the block."""
        messages: list[str] = []
        self._local.messages = messages
        try:
            yield messages
        finally:
            self._local.messages = None


_FABIO_ERRORS = _ErrorLog()
logging.getLogger("fabio").addHandler(_FABIO_ERRORS)


def cbf_shortfall(path: Path) -> tuple[int, int] | None:
    """``(bytes present, bytes declared)`` of a CBF file whose binary section is shorter than
    its ``X-Binary-Size``; None when it is complete or the header cannot be parsed."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    start = blob.find(_CBF_BINARY_START)
    declared = _CBF_BINARY_SIZE.search(blob, 0, start if start >= 0 else len(blob))
    if start < 0 or declared is None:
        return None
    present, expected = len(blob) - start - len(_CBF_BINARY_START), int(declared.group(1))
    return (present, expected) if present < expected else None


class FabioSource(FrameSource):
    """Frames of an EDF/CBF file (multi-frame EDF included).

    Raises ReaderError, not fabio's zero-padded pixels, for a file whose data is cut short
    or fails its checksum.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            import fabio
        except ImportError as exc:
            raise ImportError(
                f"{path}: reading EDF/CBF needs fabio; install the extra: pip install 'radint[formats]'"
            ) from exc
        try:
            self._img: Any = self._checked(0, lambda: fabio.open(str(path)))
        except ReaderError:
            raise
        except Exception as exc:  # fabio raises bare Exception/IOError/ValueError/AssertionError
            detail = str(exc) or type(exc).__name__  # a truncated CBF fails a bare assert
            shortfall = cbf_shortfall(path)
            if shortfall is not None:
                detail = (
                    f"truncated: binary section holds {shortfall[0]} bytes, header declares "
                    f"{shortfall[1]}; fabio: {detail}"
                )
            raise ReaderError(f"{path}: fabio cannot read this file ({detail})") from exc
        self.n_frames = int(self._img.nframes)
        self.frame_shape = tuple(self.read(0).shape)  # fabio decodes frame 0 here: checked

    def _checked(self, index: int, read: Callable[[], T]) -> T:
        """``read()``; ReaderError naming the file and frame when fabio logs an error meanwhile."""
        with _FABIO_ERRORS.watch() as errors:
            value = read()
        if errors:
            raise ReaderError(
                f"{self.path}: frame {index} is truncated or corrupt (fabio: {'; '.join(errors)})"
            )
        return value

    def read(self, index: int) -> np.ndarray:
        """Read frame ``index``."""

        def decode() -> np.ndarray:
            img = self._img if index == self._img.currentframe else self._img.getframe(index)
            return np.asarray(img.data)

        return self._checked(index, decode)

    def close(self) -> None:
        """Close fabio's handle."""
        self._img.close()
