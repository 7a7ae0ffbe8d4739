"""Keep freed result-sized blocks in the process's heap (glibc), for the batch and stream loops.

Why: every stack a loop integrates gets new result arrays of the same few sizes (a Pilatus 2M
1 px × 5° cake of eight frames: 5.5 MB per array). glibc serves blocks above its mmap threshold
(128 KB, raised only as far as the largest block freed so far) from fresh mappings, trims free
memory at the top of a heap above 128 KB and unmaps a thread's heap once it empties, so each
stack's arrays arrived on fresh pages. On the project's VM, 400 frames of an HDF5 stack through
``radint integrate``: 65 000–160 000 page faults, 1.36–1.46 s; with the blocks kept,
29 000–34 000 and 1.31–1.34 s (benches/README.md, batch section, session 26).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap (glibc's largest mmap threshold on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory a heap keeps at its top before giving it back to the system; the same as the
#: padding each heap keeps, without which a thread's heap that empties is unmapped whole.
TRIM_THRESHOLD = 256 << 20

#: What a user sets to leave glibc's own policy alone (or sets glibc's own variables).
_OPT_OUT = "RADINT_KEEP_FREED_MEMORY"
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc serve blocks of up to 32 MB from the heap and keep up to 256 MB of freed
    memory there, once per process; True where that is in effect.

    Nothing is changed outside glibc, where ``RADINT_KEEP_FREED_MEMORY=0``, or where the user
    set ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_TOP_PAD_`` (their
    choice stands). The cost is a resident size up to 256 MB per heap above what the process
    holds, memory it would soon map again.
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = _apply()
        return _applied


def _apply() -> bool:
    if os.environ.get(_OPT_OUT, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(name in os.environ for name in _GLIBC_VARIABLES):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the interpreter's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value)
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TRIM_THRESHOLD),
        )
    )
    log.debug("glibc keeps freed blocks of up to %d MB: %s", MMAP_THRESHOLD >> 20, ok)
    return ok
