"""Atomic output: write under a hidden temporary name in the target directory, then rename.

An interrupted or failed write leaves no file under the final name (at most a hidden
``.<name>.<random>-<host>-<pid>.partial`` that no reader mistakes for a result, removed on any
Python-level failure); a successful one replaces the target in one ``os.replace``.

A process killed outright (SIGKILL, the OOM killer, a node lost) cannot remove its temporary
file. The next run writing the same output removes it (:func:`remove_stale_partials`) when it
is clearly abandoned: its name says it was written on this host by a process that no longer
runs, or, where that cannot be told (another host on a shared file system, a name without a
process id, Windows), nothing in it has changed for :data:`STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import shutil
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: A temporary output whose writer cannot be checked is abandoned once nothing in it has
#: changed for this long (seconds): radint's writers touch their files at least once per
#: frame or stack, far more often.
STALE_AFTER_S = 3600.0
#: A dead writer's temporary file is removed once unchanged for this long (seconds).
DEAD_WRITER_QUIET_S = 60.0


@functools.cache
def _host_tag() -> str:
    """4 hex digits naming this host in temporary names (its name's CRC-32)."""
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"


def _partial_name(name: str, tag: str) -> str:
    """``.<name>.<tag>.partial``, ``name`` cut short so the whole fits in 255 bytes."""
    room = 255 - len(f"..{tag}.partial")
    return f".{name.encode()[:room].decode(errors='ignore')}.{tag}.partial"


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name next to ``path`` (same directory, so the final rename is atomic),
    ``.<name>.<random>-<host>-<pid>.partial``: the host and process id let a later run tell an
    abandoned one (:func:`remove_stale_partials`). No longer than a file name may be (255
    bytes) whenever ``path``'s own name fits: the name inside it is cut short near that limit."""
    tag = f"{uuid.uuid4().hex[:10]}-{_host_tag()}-{os.getpid()}"
    return path.with_name(_partial_name(path.name, tag))


#: The tag of a temporary name: this version's (random-host-pid) or the former random one.
_TAG = re.compile(r"\.(?:[0-9a-f]{10}-(?P<host>[0-9a-f]{4})-(?P<pid>\d+)|[0-9a-f]{12})\.partial$")


def partials_in(directory: Path) -> list[str]:
    """Names of the hidden temporary outputs in ``directory`` (one listing; empty when it
    cannot be read)."""
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries if e.name[:1] == "." and _TAG.search(e.name)]
    except OSError:
        return []


def _pid_alive(pid: int) -> bool | None:
    """Whether process ``pid`` runs on this host (a zombie does not); None where that cannot
    be asked without harm (Windows: ``os.kill`` would terminate it)."""
    if os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _newest_change(path: Path) -> float:
    """The latest modification time in ``path`` (a file, or a directory tree: a Zarr store)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def is_stale(partial: Path, max_age_s: float = STALE_AFTER_S) -> bool:
    """Whether the temporary output ``partial`` was abandoned: written on this host by a
    process that no longer runs, or (writer unknown: another host, an older radint's name,
    Windows) unchanged for ``max_age_s`` seconds. A live writer's file never is."""
    m = _TAG.search(partial.name)
    if m is None:
        return False
    try:
        age = time.time() - _newest_change(partial)
    except OSError:
        return False
    if m["pid"] is not None and m["host"] == _host_tag():
        alive = _pid_alive(int(m["pid"]))
        if alive is not None:
            # Also quiet for a minute: a writer in another PID namespace of this host (a
            # container sharing its hostname) has a pid this process cannot see.
            return not alive and age > min(DEAD_WRITER_QUIET_S, max_age_s)
    return age > max_age_s


def remove_stale_partials(
    finals: list[Path], listing: list[str] | None = None, max_age_s: float = STALE_AFTER_S
) -> list[Path]:
    """Remove the abandoned temporary files (:func:`is_stale`) of the outputs ``finals`` (a
    killed run's ``.<name>.<tag>.partial``, often hundreds of MB); returns those removed.

    Only temporary names of exactly these outputs are considered (``a.zarr``'s are not
    ``a.zarr.zip``'s). ``listing``: the names in their directory (:func:`partials_in`), when
    the caller lists it once for many outputs."""
    removed = []
    by_dir: dict[Path, list[str]] = {}
    for final in finals:
        names = (
            listing
            if listing is not None
            else by_dir.setdefault(final.parent, partials_in(final.parent))
        )
        whole = final.name.encode()
        for name in names:
            m = _TAG.search(name)
            inner = name[1 : m.start()].encode() if m and name[:1] == "." else b""
            # The name inside is the output's, or its start where the name was cut to fit.
            if not inner or not (inner == whole or (len(name.encode()) >= 250 and
                                                    whole.startswith(inner))):  # fmt: skip
                continue
            partial = final.parent / name
            if is_stale(partial, max_age_s):
                try:
                    remove_path(partial)
                except OSError:
                    continue
                removed.append(partial)
    return removed


def remove_path(path: Path) -> None:
    """Delete a file or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@functools.cache
def _sync_file_range() -> Callable[..., int] | None:
    """libc's ``sync_file_range`` (Linux), or None."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):  # not Linux (Windows has no CDLL(None))
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


def start_writeback(fd: int) -> None:
    """Have the kernel start writing the file's dirty pages to disk now, without waiting for
    them (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; nothing elsewhere). A writer that
    calls this as it goes finds little left for the fsync before its final rename (a 120-frame
    NeXus file: 56 ms at the end of the run without it, ~1 ms with it)."""
    call = _sync_file_range()
    if call is not None:
        call(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE; a failure only means a longer fsync later


def commit_path(tmp: Path, final: Path, synced: bool = False) -> None:
    """Move the finished ``tmp`` (file or directory) onto ``final``, replacing what was there.

    A file is fsync-ed first (unless the caller did: ``synced``) so the data is on disk before
    the name appears. A directory that replaces a directory goes through a hidden backup name,
    because ``os.replace`` cannot overwrite a non-empty directory.
    """
    if not synced and tmp.is_file():
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.is_dir() and not final.is_symlink() and not (tmp.is_dir() and _is_store(final)):
        # A user's folder where a file goes, or a folder that is no Zarr store where one goes:
        # it was moved aside and deleted with everything in it.
        raise IsADirectoryError(
            errno.EISDIR, "a folder that is not an earlier output is in the way", str(final)
        )
    if final.is_dir() and not final.is_symlink():
        backup = temporary_sibling(final)
        os.replace(final, backup)
        os.replace(tmp, final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        if final.is_symlink():
            final.unlink()  # the link is replaced, never what it points to
        elif tmp.is_dir() and final.exists():
            raise FileExistsError(errno.EEXIST, "a file is in the way of a folder", str(final))
        os.replace(tmp, final)


def _is_store(path: Path) -> bool:
    """A Zarr store (v2 or v3 root metadata): what a ``.zarr`` output replaces."""
    return any((path / m).is_file() for m in ("zarr.json", ".zgroup", ".zattrs"))


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Context manager yielding a temporary path to write; renamed to ``path`` on success.

    Parameters
    ----------
    path : str or Path
        Final file or directory name. Its parent directory must exist.

    Yields
    ------
    Path
        Where to write. On an exception it is deleted and the exception propagates; ``path``
        is left untouched.

    Examples
    --------
    >>> with atomic_output(out) as tmp:  # doctest: +SKIP
    ...     tmp.write_text("done")
    """
    final = Path(path)
    if not final.parent.is_dir():  # else the writer's error names the hidden temporary file
        raise FileNotFoundError(
            errno.ENOENT, f"cannot write {final}: no folder {final.parent}", str(final)
        )
    tmp = temporary_sibling(final)
    try:
        yield tmp
        commit_path(tmp, final)
    except BaseException:
        remove_path(tmp)
        raise
