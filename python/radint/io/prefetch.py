"""Read ahead on a thread so file I/O overlaps integration (which releases the GIL)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


#: Yielded by :func:`prefetch` with ``idle`` set when no item came within that time.
IDLE = object()


def prefetch(items: Iterable[T], depth: int = 2, idle: float | None = None) -> Iterator[T]:
    """Yield ``items`` while a background thread produces up to ``depth`` of them ahead.

    Memory stays bounded (``depth`` items in flight); an exception raised by the producer is
    re-raised in the consumer at the point it occurred; stopping early stops the producer.
    With ``idle`` (seconds), :data:`IDLE` is yielded whenever the producer is that long
    without an item, so the consumer can do other work meanwhile.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(e)

    thread = threading.Thread(target=produce, name="radint-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = q.get(timeout=idle)
            except queue.Empty:
                yield IDLE  # type: ignore[misc]
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
