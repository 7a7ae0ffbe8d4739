"""Warnings given once per process: a batch of files or a live stream would repeat their cause
on every file or frame."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

log = logging.getLogger("radint")

#: Keys of the warnings given so far in this process.
GIVEN: set[Hashable] = set()


def warn_once(key: Hashable, message: str, *args: Any) -> None:
    """``log.warning(message, *args)`` unless a warning with ``key`` was given before."""
    if key in GIVEN:
        return
    GIVEN.add(key)
    log.warning(message, *args)


def info_once(key: Hashable, message: str, *args: Any) -> None:
    """``log.info(message, *args)`` unless a message with ``key`` was given before."""
    if key in GIVEN:
        return
    GIVEN.add(key)
    log.info(message, *args)
