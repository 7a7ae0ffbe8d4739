"""Batch integration of many files: one map built once, files spread over processes or Dask.

The same per-file task (:func:`process_file`) runs in a local process pool (``n_procs``, each with
a rayon pool of ``n_threads``, like MIDAS's ``-nCPUs``/``-nCPUsLocal``) or on a Dask distributed
cluster (``dask="local:4"`` or a scheduler address; dask-jobqueue clusters for SLURM/PBS are
created by the user and passed as their scheduler address). No home-made scheduler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import glob
import logging
import os
import queue
import re
import shutil
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from radint.config import IntegrationConfig
from radint.exceptions import InvalidInputError, RadintError

log = logging.getLogger("radint")


@dataclass
class FileOutcome:
    """What happened to one input file."""

    path: str
    ok: bool
    n_frames: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    skipped: bool = False


def midas_file_series(data_fn: str, start: int | None = None, end: int | None = None) -> list[str]:
    """File names of a MIDAS series (spec §8.1): every zero-padded 6-digit copy of the start
    number in ``data_fn`` is replaced by ``start + n`` for n = 0 .. end − start.

    ``start`` defaults to the first 6-digit run in the name, ``end`` to ``start``.
    """
    if start is None or start < 0:
        m = re.search(r"(?<!\d)(\d{6})(?!\d)", Path(data_fn).name)
        if m is None:
            if end is not None and end >= 0:
                raise RadintError(
                    f"-endFileNr {end}: {Path(data_fn).name} holds no 6-digit file number to "
                    "count from (MIDAS series are named like scan_000001.h5); give "
                    "-startFileNr, or list the files"
                )
            return [data_fn]
        start = int(m.group(1))
    if end is None or end < 0:
        end = start
    if end < start:
        raise RadintError(f"-endFileNr ({end}) is before -startFileNr ({start})")
    token = f"{start:06d}"
    if token not in data_fn:
        raise RadintError(f"{data_fn}: does not contain the start file number {token}")
    return [data_fn.replace(token, f"{start + n:06d}") for n in range(end - start + 1)]


# One integrator per worker process, created by the pool initializer.
_WORKER: dict[str, Any] = {}


def _init_worker(
    config: IntegrationConfig,
    cache_dir: str,
    n_threads: int | None,
    backend: str,
    detector_map: Any = None,
    dark: Any = None,
    compat: str | None = None,
    midas_map: str | None = None,
) -> None:
    from radint.detector_map import DetectorMap
    from radint.integrator import Integrator
    from radint.io.hdf5 import set_decode_threads

    set_decode_threads(n_threads)  # Eiger frames decoded on as many threads as integrated
    if detector_map is not None:
        m = detector_map
    elif midas_map:
        m = DetectorMap.load_midas(midas_map, config, n_threads=n_threads)
    else:
        m = DetectorMap.cached(config, cache_dir, n_threads=n_threads)  # the parent's cache
    _WORKER["integrator"] = Integrator(
        config, detector_map=m, n_threads=n_threads, backend=backend, dark=dark, compat=compat
    )


def _init_pool_worker(frames_done: Any, *args: Any) -> None:
    """A worker process: SIGTERM and SIGINT stop it (its pipeline then removes the files it
    had not finished), whether they come from the parent, a terminal or a job scheduler; and it
    stops by itself when its parent dies (:func:`_watch_parent`). ``frames_done``: a shared
    counter of the frames integrated (the parent's progress), or None."""
    _WORKER["frames_done"] = frames_done
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Ctrl-C reaches every process of the terminal's group: the worker's own SIGINT, then the
    # parent's SIGTERM, must not cut the first one's clean-up short (Python's default SIGINT
    # handler raised a second KeyboardInterrupt inside it).
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # `cmd &` ignores it: kept so
        signal.signal(signal.SIGINT, _raise_interrupt)
    threading.Thread(
        target=_watch_parent, args=(os.getppid(),), name="radint-parent-watch", daemon=True
    ).start()
    # The parent built the same Integrator first and gave its warnings (the configuration's,
    # the dark's): every worker of every pool repeated them.
    logging.disable(logging.WARNING)
    try:
        _init_worker(*args)
    finally:
        logging.disable(logging.NOTSET)


#: How often a pool worker checks that its parent is alive, and how long it may then take to
#: remove its unfinished outputs before it leaves anyway.
PARENT_POLL_S = 0.5
ORPHAN_GRACE_S = 40.0


def _watch_parent(parent: int) -> None:
    """Stop this worker once its parent process is gone (SIGKILL, a crash, the OOM killer).

    Why: an orphaned worker went on integrating its queued files, then blocked forever on
    the result pipe nobody reads. Polling ``os.getppid()`` (re-parented to init or a
    subreaper when the parent dies) works on every platform, unlike Linux's
    ``PR_SET_PDEATHSIG``, which also fires when the *thread* that spawned the worker exits.
    The worker is stopped as SIGTERM stops it (unfinished outputs removed), then leaves with
    ``os._exit``: the normal exit would flush the pool's queues to the dead parent."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    log.warning("radint batch worker %d: parent process %d is gone; stopping", os.getpid(), parent)
    with contextlib.suppress(OSError):
        os.kill(os.getpid(), signal.SIGTERM)  # _raise_interrupt on the main thread
    deadline = time.monotonic() + ORPHAN_GRACE_S
    time.sleep(PARENT_POLL_S)  # the interrupt reaches the main thread first
    while _WORKER.get("busy") and time.monotonic() < deadline:
        time.sleep(0.05)
    _leave_now(1)


def _leave_now(code: int) -> NoReturn:
    """``os._exit`` once the named semaphores this process made are unlinked (numcodecs'
    Blosc makes one per process): without that the resource tracker warned of "leaked
    semaphore objects" at the end of every interrupted batch. Only multiprocessing's finalizers
    of priority ≥ 0 run (semaphores, queue closing); the lower ones join the pool's queue
    threads, which would flush to a parent that may be gone."""
    import multiprocessing.util

    _WORKER["leaving"] = True  # a second signal must not cut the unlinking short
    with contextlib.suppress(Exception):
        # Private, but stable since Python 3.3; what the normal exit runs first.
        multiprocessing.util._run_finalizers(0)  # type: ignore[attr-defined]
    os._exit(code)


def _raise_interrupt(signum: int, _frame: object) -> None:
    # The pool's worker loop catches the interrupt and takes its next queued run: that run
    # must not start (see _process_run). A second signal (a job scheduler's SIGTERM to the
    # whole process group, then the parent's) must not cut the first one's clean-up short.
    if _WORKER.get("leaving") or (_WORKER.get("stopping") and _WORKER.get("busy")):
        return
    _WORKER["stopping"] = True
    if not _WORKER.get("busy"):
        # Idle between runs: nothing to clean up, so leave at once. Not SystemExit: raised in
        # the pool's own code (queueing a result, starting a run) it is caught and sent back
        # as the run's exception, and the worker, now deaf to SIGTERM, waited for the next
        # run for ever while the pool waited for it to exit (a batch hung after a worker
        # death, 1 in ~20 runs).
        _leave_now(0)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _remove_partials_of_dead_workers(
    files: Sequence[str], names: Sequence[str | None], out_dir: Path, formats: Sequence[str]
) -> None:
    """After a local Dask cluster closed: the temporary outputs its workers left. A task runs
    in a worker thread, which a signal cannot interrupt, so a SIGTERM to the process group
    (a job scheduler's) ended workers midway through files; their writers are dead now."""
    from radint.io.atomic import partials_in, remove_stale_partials
    from radint.io.write import FORMATS, expand_formats

    listing = partials_in(Path(out_dir))
    if not listing:
        return
    wanted = expand_formats(formats)
    finals = [Path(out_dir) / (output_stem(f, n) + FORMATS[fmt][0])
              for f, n in zip(files, names, strict=True) for fmt in wanted]  # fmt: skip
    finals += [Path(out_dir) / f"{output_stem(f, n)}.{spill}" for f, n in zip(files, names)
               for spill in _SpilledCakes.NAMES]  # fmt: skip
    for gone in remove_stale_partials(finals, listing, max_age_s=0.0):
        log.info("removed %s, left by a Dask worker that was stopped", gone)


def _complete(path: Path) -> bool:
    """An output --skip-existing may keep: present, not empty, and whole where that is cheap to
    tell: an HDF5 file h5py opens (its end-of-file address within the file), a zip with its
    central directory, a Zarr store with its root metadata. radint writes atomically, so a
    broken one comes from elsewhere (a copy cut short, a tool killed mid-write)."""
    import zipfile

    try:
        if path.is_dir():
            return any((path / m).is_file() for m in ("zarr.json", ".zgroup", ".zarray"))
        if path.stat().st_size == 0:
            return False
        with path.open("rb") as fh:
            head = fh.read(8)
        if head.startswith(b"\x89HDF"):
            import h5py

            with h5py.File(path, "r"):
                return True
        if path.suffix.lower() == ".zip":
            return zipfile.is_zipfile(path)
        return True
    except OSError:
        return False


def _other_format_outputs(out_dir: Path, stem: str, expected: Sequence[Path]) -> list[Path]:
    """Outputs of ``stem`` in formats this run does not write (an earlier run's ``.mat``)."""
    from radint.io.write import FORMATS

    names = {out_dir / f"{stem}{suffix}" for suffix, _ in FORMATS.values()}
    return sorted(p for p in names - set(expected) if p.exists())


def _made_otherwise(
    outputs: Sequence[Path], config: IntegrationConfig, rules: str, source: str | Path
) -> list[str]:
    """How the first of the NeXus/Zarr ``outputs`` that stores its making was made otherwise:
    its configuration against ``config``, its rules and map against ``rules``
    (:attr:`Integrator.rules`: ``--compat``, ``--midas-map``), its input file against
    ``source`` (another file of the same name that still exists; a moved one is the same), and
    ``source`` changed after it was written (a newer modification time). Empty when none differs, or no output stores its making: the
    other formats carry nothing to compare.

    Why: --skip-existing resumes a run; an output made with other parameters (another RBinSize)
    or from another file kept beside new ones gives a result set that mixes them without a
    word. Such a file is integrated again, as a run without --skip-existing would do."""
    from radint.io.nexus import (
        configuration_changes,
        read_provenance,
        stored_configuration,
        stored_file_digests,
        stored_rules,
    )  # fmt: skip

    for out in outputs:
        stored = stored_configuration(out)
        if stored is None:
            continue
        changes = configuration_changes(stored, config, digests=stored_file_digests(out))
        was = stored_rules(out)  # None: made before outputs stored them
        if was is not None and was != rules:
            changes.insert(0, f"{was} -> {rules}")
        try:
            provenance = read_provenance(out)
        except OSError:
            provenance = None
        # Made from another file that is still there (a file of the same name elsewhere); a
        # stored path that is gone is this file moved (with its folder), not another one.
        here = {os.path.abspath(source), os.path.realpath(source)}
        made_from = [] if provenance is None else provenance.files
        if made_from and not here & {p for f in made_from for p in (f, os.path.realpath(f))}:
            if any(os.path.exists(f) for f in made_from):
                changes.append(f"made from {made_from[0]}")
        try:
            if os.stat(source).st_mtime > os.stat(out).st_mtime:
                changes.append(f"{source} changed after it was written")
        except OSError:
            pass
        return changes
    return []


#: Endings of frame files taken off to name their outputs, longest first (a dot elsewhere in a
#: name, as in ``CeO2.0001.tif`` or ``2026.12.03_run1.h5``, stays).
_FRAME_SUFFIXES = (
    ".analysis.midas.zip", ".midas.zip", ".edf.gz", ".cbf.gz", ".tiff", ".tif", ".hdf5", ".hdf",
    ".h5", ".nxs", ".nx5", ".cxi", ".zarr", ".zip", ".edf", ".cbf", ".raw", ".bin",
)  # fmt: skip


def output_stem(path: str | Path, name: str | None = None) -> str:
    """The stem a file's outputs are named by: ``name``, else its name without its frame
    format's ending (``.tif``, ``.h5``, ``.edf.gz``, ``.geN``, MIDAS ``.analysis.MIDAS.zip``,
    ...), other dots kept."""
    if name:
        return name
    file = Path(path).name
    lower = file.lower()
    for suffix in _FRAME_SUFFIXES:
        if lower.endswith(suffix) and len(file) > len(suffix):
            return file[: -len(suffix)]
    ge = re.search(r"\.ge\d*$", lower)
    if ge and ge.start() > 0:
        return file[: ge.start()]
    return Path(file).stem if Path(file).suffix else file


def finished_since(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    formats: Sequence[str],
    names: Sequence[str | None] | None,
    since: float,
) -> list[str]:
    """Inputs whose outputs are all complete and were written at or after ``since`` (a
    ``time.time()``): after an interrupt, what the run finished, including files whose
    outcome had not been reported yet."""
    from radint.io.write import FORMATS, expand_formats

    wanted = expand_formats(formats)
    names = list(names) if names else [None] * len(paths)
    done = []
    for path, name in zip(paths, names, strict=True):
        stem = output_stem(path, name)
        outputs = [Path(out_dir) / (stem + FORMATS[f][0]) for f in wanted]
        try:
            if outputs and all(_complete(o) and o.stat().st_mtime >= since for o in outputs):
                done.append(str(path))
        except OSError:
            continue
    return done


def frames_written(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    formats: Sequence[str],
    names: Sequence[str | None] | None,
) -> tuple[int, int]:
    """Frames in the outputs of ``paths`` (files a run finished but did not report, e.g. when
    interrupted), read from each file's NeXus/Zarr output (the shape of its lineouts); and
    how many of the files have no such output to tell (other formats only, unreadable)."""
    from radint.io.write import FORMATS, expand_formats

    nexus = [f for f in expand_formats(formats) if f in ("nexus", "zarr")]
    names = list(names) if names else [None] * len(paths)
    name_of = {str(p): n for p, n in zip(paths, names, strict=False)}
    frames = unknown = 0
    for path in paths:
        stem = output_stem(path, name_of.get(str(path)))
        n = None
        for fmt in nexus:
            n = _frames_in(Path(out_dir) / (stem + FORMATS[fmt][0]))
            if n is not None:
                break
        if n is None:
            unknown += 1
        else:
            frames += n
    return frames, unknown


def _frames_in(output: Path) -> int | None:
    """Frames of a radint NeXus result (HDF5 or Zarr), from its lineouts' shape; None if it
    cannot be read."""
    from radint.io.nexus import open_result

    try:
        with open_result(output) as root:
            return int(root["entry/azint1d/data/I"].shape[0])
    except (OSError, KeyError, ValueError):  # not there, not a result: not counted
        return None


def check_outputs(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    formats: Sequence[str],
    names: Sequence[str | None] | None = None,
    config: IntegrationConfig | None = None,
    dark: str | Path | None = None,
) -> None:
    """Refuse, before any work, a run whose outputs would overwrite one of its inputs (an HDF5
    or Zarr input named like its NeXus/Zarr output, in the output directory), a file the run
    reads (``dark``, the parameter file and the files ``config`` names: mask, flat, ...), a
    ``.h5``/``.zarr`` that is not a radint result (raw frames beside the inputs), a folder
    where a file goes, or each other (inputs of the same stem from different folders, a file
    given twice under one name), or an output name that is a path.

    Raises
    ------
    InvalidInputError
        Listing each collision; nothing has been read or written.
    """
    from radint.io.write import FORMATS, expand_formats, missing_format_packages, refusal

    try:
        wanted = expand_formats(formats)
    except ValueError:
        return  # every file then fails with the format's own message
    if missing := missing_format_packages(wanted):
        raise InvalidInputError("; ".join(missing))
    names = list(names) if names else [None] * len(paths)
    resolved = [_resolved(p) for p in paths]
    inputs = {real: str(p) for real, p in zip(resolved, paths, strict=True)}
    read = _files_read(config, dark)
    writers: dict[Path, int] = {}
    problems: list[str] = []
    # What to do about them, once each, in the order met.
    other_dir = "write to another directory (-o DIR)"
    hints: dict[str, None] = {}
    for k, (path, name) in enumerate(zip(paths, names, strict=True)):
        if name is not None and Path(name).name != name:
            problems.append(f"output name {name!r} is a path, not a file stem (-o sets the folder)")
            continue
        stem = output_stem(path, name)
        for fmt in wanted:
            out = _resolved(Path(out_dir) / (stem + FORMATS[fmt][0]))
            first = writers.setdefault(out, k)
            if out in inputs:
                problems.append(f"{out} would overwrite the input {inputs[out]}")
                hints[other_dir] = None
            elif out in read:
                problems.append(f"{out} would overwrite {read[out]}, which this run reads")
                hints[other_dir] = None
            elif (why := refusal(out, fmt)) is not None:
                problems.append(f"{out} {why}")
                hints[other_dir] = None
            elif first != k and resolved[first] == resolved[k]:
                problems.append(f"{path} is given twice (its outputs would be written twice)")
                hints["give each file once"] = None
                break
            elif first != k:
                problems.append(f"{out} would be written for both {paths[first]} and {path}")
                hints["integrate files of the same name in separate runs, each with its own "
                      "-o DIR"] = None  # fmt: skip
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        advice = "; ".join(hints)
        raise InvalidInputError(
            f"outputs refused: {shown}" + (f". To fix: {advice}" if advice else "")
        )


def _resolved(path: str | Path) -> Path:
    """``path`` made absolute with links followed; as given (absolute) where a link loops."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: that file fails on its own
        return Path(os.path.abspath(path))


def _files_read(config: IntegrationConfig | None, dark: str | Path | None) -> dict[Path, str]:
    """The files besides the frames a run reads (parameter file, dark, mask, flat, ...), by
    resolved path, each named for a message."""
    named: list[tuple[str, Any]] = [("the dark", dark)]
    if config is not None:
        named += [("the parameter file", config.source), ("the dark", config.dark_file),
                  ("the mask", config.mask_file), ("the flat", config.flat_file),
                  ("the distortion file", config.distortion_file),
                  ("the residual correction map", config.residual_correction_map),
                  ("the panel shifts file", config.panel_shifts_file)]  # fmt: skip
    from radint.io.read import split_dataset

    files = [(what, split_dataset(str(p))[0]) for what, p in named if p]  # "m.h5::/mask": m.h5
    return {_resolved(p): f"{what} {p}" for what, p in files if Path(p).is_file()}


def process_file(
    path: str,
    out_dir: str,
    formats: tuple[str, ...],
    name: str | None = None,
    dataset: str | None = None,
    dark: np.ndarray | None = None,
    skip_existing: bool = False,
    integrator: Any = None,
    compression: str | None = "blosc-lz4",
    raw_dtype: str | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> FileOutcome:
    """Integrate every frame of one file and write its outputs (atomically). Never raises for a
    bad file: the outcome carries the reason. See :func:`process_files`."""
    outcomes = process_files(
        [path], out_dir, formats, names=[name], dataset=dataset, dark=dark,
        skip_existing=skip_existing, integrator=integrator, compression=compression,
        raw_dtype=raw_dtype, on_frames=on_frames,
    )  # fmt: skip
    return next(iter(outcomes))


def process_files(
    paths: list[str],
    out_dir: str,
    formats: tuple[str, ...],
    names: list[str | None] | None = None,
    dataset: str | None = None,
    dark: np.ndarray | None = None,
    skip_existing: bool = False,
    integrator: Any = None,
    compression: str | None = "blosc-lz4",
    raw_dtype: str | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> Generator[FileOutcome, None, None]:
    """Integrate files one after another, yielding one outcome per file in input order.

    Four stages overlap, across file boundaries too: a reader thread reads the next stack of
    frames (of this file or the next; the frames of consecutive small files, such as one-frame
    TIFFs, share one stack, read straight into its slots: a one-frame call costs ~30 % more CPU
    per frame than a stack of eight), the integrator (GIL released) works on the current one,
    a writer thread appends the previous one to its NeXus/Zarr outputs, and a finisher thread
    closes the files already complete (fsync, rename), so a folder of one-frame files does not
    pay each file's setup and sync in turn. Formats that need the whole file's result are
    written when its last stack is in. Memory stays bounded: two stacks wait for integration,
    two results for writing, four files for closing. A bad file never raises: its outcome
    carries the reason and nothing of it is left behind. Without ``dark``, a MIDAS Zarr zip's
    own dark is subtracted (:func:`own_dark`), as IntegratorZarrOMP does. GE and raw files are
    read with the configuration's frame shape (``raw_dtype``: the pixel type of raw files).
    ``on_frames(n)`` is called (on the caller's thread, between outcomes) as each stack of ``n``
    frames is integrated: progress within a long file.
    """
    from radint._allocator import keep_freed_memory
    from radint.io.prefetch import IDLE, prefetch
    from radint.io.write import resolve_formats

    integ = integrator or _WORKER.get("integrator")
    if integ is None:
        raise RadintError("process_files: pass integrator= (run_batch makes one per worker)")
    dark = integ.same_dark(dark)  # the integrator's own dark keeps its folded map
    keep_freed_memory()  # each stack's results reuse the last one's pages
    paths = [str(p) for p in paths]
    absolute = [os.path.abspath(p) for p in paths]  # not resolve(): symlinked folders kept
    names = list(names) if names else [None] * len(paths)
    # "midas" adds IntegratorZarrOMP's fit files when this integrator fits peaks.
    formats = resolve_formats(formats, integ.fit is not None)
    writer = _FileWriter(out_dir, formats, compression)
    done: dict[int, FileOutcome] = {}
    next_out = 0
    failed: set[int] = set()

    # Temporary outputs a killed run left (hundreds of MB each): one listing of the folder,
    # then each file's own are removed as it comes up (see radint.io.atomic).
    from radint.io.atomic import partials_in, remove_stale_partials

    leftovers = partials_in(Path(out_dir))

    def events() -> Iterator[tuple]:
        from radint.io.read import read_stacks

        # Page-locked stacks under CUDA (read where the GPU DMAs them); plain ones otherwise.
        # Either kind is recycled across the process's runs.
        cuda = integ.backend == "cuda"
        group = _Group(integ.host_buffer, "pinned") if cuda else _Group(np.empty, "plain")
        for i, path in enumerate(paths):
            stem = output_stem(path, names[i])
            expected = writer.expected(stem)
            if leftovers:
                spills = [writer.out_dir / f"{stem}.{n}" for n in _SpilledCakes.NAMES]
                for gone in remove_stale_partials(expected + spills, leftovers):
                    log.info("removed %s, left by a run that was killed", gone)
            if skip_existing and expected and all(_complete(p) for p in expected):
                nexus = [writer.out_dir / (stem + writer.suffix[f][0]) for f in writer.streamed]
                changes = _made_otherwise(nexus, integ.applied_config, integ.rules, path)
                if not changes:
                    yield ("skip", i, path, [str(p) for p in expected])
                    continue
                log.warning(
                    "%s: integrated again: its outputs were made otherwise (%s)",
                    path, "; ".join(changes),
                )  # fmt: skip
                stale = _other_format_outputs(writer.out_dir, stem, expected)
                if stale:
                    log.warning(
                        "%s: %s, from the earlier run, not written by this one: they keep the "
                        "earlier parameters (remove them, or ask for their formats too)",
                        path, ", ".join(p.name for p in stale),
                    )  # fmt: skip
            yield ("start", i, path, stem)
            try:
                # A dark given (or the integrator's own) before the file's own (MIDAS zips).
                file_dark = dark if dark is not None else integ.dark
                if file_dark is None:
                    file_dark = own_dark(path, integ.config.zip_parameters())
                for stack, ids, metadata, indices in read_stacks(
                    path,
                    dataset=dataset,
                    size=STACK_FRAMES,
                    max_bytes=STACK_BYTES,
                    allocate=functools.partial(group.slots, dark=file_dark),
                    shape=integ.config.shape,
                    raw_dtype=raw_dtype,
                    zip_parameters=integ.config.zip_parameters(),
                ):
                    if group.add(i, stack, ids, metadata, indices):
                        if group.full:
                            yield from group.flush()
                        continue
                    yield from group.flush()  # the frames before this stack go first
                    yield ("stack", i, stack, ids, file_dark, metadata, indices)
            except Exception as e:  # handed on: this file fails, the next one is read
                yield ("error", i, e)
                continue
            if group.holds(i):
                group.ends.append(i)
            else:
                yield ("end", i)
        yield from group.flush()

    thread = threading.Thread(target=writer.run, name="radint-write", daemon=True)
    thread.start()
    try:
        # Woken while the reader waits (a slow disk, a file still arriving) to report the files
        # the writer finished meanwhile.
        for ev in prefetch(events(), depth=2, idle=0.2):
            if ev is IDLE:
                for i_done, outcome in writer.finished():
                    done[i_done] = outcome
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
                continue
            kind, i = ev[0], ev[1]
            if kind in ("stack", "group"):
                # A stack is one file's frames; a group holds several files' (members: file
                # index, first frame, frame count, ids, metadata, positions in the file), whose
                # "end"s come with it.
                data, file_dark = ev[2], ev[4]
                members = [(i, 0, len(data), ev[3], ev[5], ev[6])] if kind == "stack" else ev[3]
                live = [m for m in members if m[0] not in failed]
                try:
                    if not live:
                        continue
                    result = integ.integrate_stack(data, dark=file_dark)
                except Exception as e:
                    for i_failed in dict.fromkeys(m[0] for m in live):
                        failed.add(i_failed)
                        writer.put(("error", i_failed, e))
                    continue
                finally:
                    _STACK_BUFFERS.give_back(data)
                if on_frames is not None:  # the caller's progress: its errors are its own
                    on_frames(sum(m[2] for m in live))
                for i_file, first, n, ids, metadata, indices in live:
                    part = _frames(result, first, n)
                    part.frame_ids = np.asarray(ids, dtype=np.int64)
                    # Absolute (caked_peaks.h5's zarr_source, ...): the same from a pool, a
                    # Dask cluster (which is given absolute paths) or one process.
                    part.metadata["source"] = absolute[i_file]
                    # Provenance in the outputs: absolute, so it survives moving the folder.
                    part.metadata["source_path"] = np.full(n, absolute[i_file], dtype=object)
                    part.metadata["source_frame"] = np.asarray(indices, dtype=np.int64)
                    part.metadata.update(
                        {k: np.asarray(v, dtype=np.float64) for k, v in metadata.items()}
                    )
                    writer.put(("result", i_file, part))
                for i_end in ev[5] if kind == "group" else ():
                    if i_end not in failed:
                        writer.put(("end", i_end))
            elif kind in ("end", "error"):
                if i not in failed:  # a file whose integration failed was reported already
                    if kind == "error":
                        failed.add(i)
                    writer.put(ev)
            else:
                writer.put(ev)
            if writer.error is not None:
                break  # the writer died: nothing more can be written
            for i_done, outcome in writer.finished():
                done[i_done] = outcome
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
        writer.put(None)
        thread.join()
        for i_done, outcome in writer.finished():
            done[i_done] = outcome
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1
        if writer.error is not None:
            raise writer.error
    finally:
        writer.stop()
        # Not thread.join(): a join that an interrupt broke off marks the thread as stopped
        # (CPython 3.11), so a second join returned at once while the writer was still
        # committing, and the process left its files half done.
        writer.all_done.wait(timeout=30)


def own_dark(
    path: str | Path, zip_parameters: Mapping[str, Any] | None = None
) -> np.ndarray | None:
    """The dark a file carries and IntegratorZarrOMP subtracts without being asked: a MIDAS
    Zarr zip's ``exchange/dark`` (mean, SkipFrame honoured; ``zip_parameters`` as for
    :func:`~radint.io.read_frames`). None for other files, and for a zip without dark frames
    after SkipFrame (C then subtracts nothing either)."""
    p = Path(path)
    if p.suffix.lower() != ".zip":  # checked first: importing zarr takes ~0.5 s
        return None
    from radint.io import read_dark, zarrstore
    from radint.io.errors import ReaderError

    if not p.is_file() or not zarrstore.is_midas_zip(p):
        return None
    try:
        dark = read_dark(p, zip_parameters=zip_parameters)
    except ReaderError as e:
        log.info("%s: no dark subtracted (%s)", p, e)
        return None
    log.info("%s: subtracting its own dark (exchange/dark)", p)
    return dark


#: Frames per stack read and integrated together (8 = the block kernel's width on CPUs
#: without AVX-512), and the most bytes a stack may hold: smaller stacks cost less to allocate
#: the first time (a 60-frame HDF5 file ran at 48-80 frames/s with 12-frame stacks, 97-106
#: with 8).
STACK_FRAMES = 8
STACK_BYTES = 96 << 20


def _frames(result: Any, first: int, n: int) -> Any:
    """Frames ``first .. first + n − 1`` of a stack result (one frame: a single-frame result)."""
    if first == 0 and n == result.n_frames:
        return result
    if n == 1:
        return result.frame(first)
    from radint.result import Result

    return Result.concatenate([result.frame(k) for k in range(first, first + n)])


class _Group:
    """Stacks of consecutive files integrated together as one stack, their frames read into
    one buffer.

    :meth:`slots` offers the next free frames of the buffer to the reader (as its ``allocate``);
    a stack read into them is then :meth:`add`-ed. Files whose frames differ in shape or type,
    or that have another dark, do not join. Buffers come from ``allocate(shape, dtype)``:
    the Integrator's :meth:`~radint.Integrator.host_buffer`, page-locked under the CUDA
    backend, so the GPU reads the frames by DMA where the reader put them.
    """

    def __init__(self, allocate: Any = np.empty, kind: str = "plain") -> None:
        self.allocate = allocate
        self.kind = kind
        self._empty()

    def _empty(self) -> None:
        self.buffer: np.ndarray | None = None
        self.dark: np.ndarray | None = None
        self.n = 0
        self.members: list[tuple[int, int, int, Any, dict, list[int]]] = []
        self.ends: list[int] = []
        self._offered: np.ndarray | None = None

    def slots(self, shape: tuple[int, ...], dtype: np.dtype, dark: Any) -> np.ndarray:
        """The next ``shape[0]`` free frames, or a buffer of its own where such a stack
        cannot join (see :meth:`add`)."""
        n, frame = shape[0], tuple(shape[1:])
        if self.buffer is None:
            frame_bytes = int(np.prod(frame)) * np.dtype(dtype).itemsize
            capacity = max(1, min(STACK_FRAMES, STACK_BYTES // max(1, frame_bytes)))
            if n > capacity:
                return _STACK_BUFFERS.take(shape, dtype, self.allocate, self.kind)
            self.buffer = _STACK_BUFFERS.take((capacity, *frame), dtype, self.allocate, self.kind)
            self.dark = dark
        elif (
            self.buffer.shape[1:] != frame
            or self.buffer.dtype != dtype
            or self.dark is not dark
            or self.n + n > len(self.buffer)
        ):
            return _STACK_BUFFERS.take(shape, dtype, self.allocate, self.kind)
        self._offered = self.buffer[self.n : self.n + n]
        return self._offered

    def add(self, i: int, stack: np.ndarray, ids: Any, metadata: dict, indices: list[int]) -> bool:
        """Take file ``i``'s ``stack`` (frames ``indices`` of the file) if it was read into the
        offered frames."""
        if self._offered is None or stack is not self._offered:
            return False
        self.members.append((i, self.n, len(stack), ids, metadata, indices))
        self.n += len(stack)
        self._offered = None
        return True

    @property
    def full(self) -> bool:
        return self.buffer is not None and self.n == len(self.buffer)

    def holds(self, i: int) -> bool:
        return any(m[0] == i for m in self.members)

    def flush(self) -> Iterator[tuple]:
        """The group's event (none when empty: its buffer is handed back); then empty."""
        if self.buffer is None:
            return
        buffer, members, dark, ends, n = self.buffer, self.members, self.dark, self.ends, self.n
        self._empty()
        if not members:
            _STACK_BUFFERS.give_back(buffer)
        else:
            yield ("group", None, buffer[:n], members, dark, ends)


class _StackBuffers:
    """Reusable arrays for the stacks :func:`read_stacks` fills, shared by every batch run of
    the process.

    Why: a fresh 100 MB array costs ~1 ms per MB on the project's VM (page faults, huge-page
    compaction), more than reading the frames from the page cache, and glibc returns such
    blocks to the system when they are freed. Up to ``keep`` buffers are kept for reuse (the
    pipeline holds at most four stacks: prefetch depth 2, one being read, one integrated); an
    array never handed back is simply garbage-collected.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        # Free buffers with their kind ("plain", "pinned"): a kind is only reused as itself.
        self._free: list[tuple[Any, str]] = []  # (raw buffer, kind)
        # Buffers made here (ids alone can be reused), with their kind. Only the kind is kept,
        # not the allocator, which may be a method holding an Integrator and its GPU state.
        self._owned: dict[int, tuple[weakref.ref, str]] = {}
        self._lock = threading.Lock()

    def take(
        self, shape: tuple[int, ...], dtype: np.dtype, allocate: Any = np.empty,
        kind: str = "plain",
    ) -> np.ndarray:  # fmt: skip
        """An array of ``shape`` and ``dtype`` (contents undefined), in a recycled buffer of
        ``kind`` when one is free and large enough, else in ``allocate(n, uint8)``."""
        if np.dtype(dtype).hasobject:  # readers refuse these; pointers over recycled bytes crash
            raise TypeError(f"stack buffers hold numbers, not {np.dtype(dtype)}")
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        with self._lock:
            k = next(
                (k for k, (b, c) in enumerate(self._free) if c == kind and b.nbytes >= nbytes),
                None,
            )
            raw = None if k is None else self._free.pop(k)[0]
        if raw is None:
            raw = allocate(nbytes, np.uint8)
            with self._lock:
                self._owned[id(raw)] = (weakref.ref(raw), kind)
        return np.ndarray(shape, dtype=dtype, buffer=raw)

    def give_back(self, array: np.ndarray) -> None:
        """Return an array ``take`` made (other arrays are ignored)."""
        raw = array.base
        with self._lock:
            ref, kind = self._owned.get(id(raw), (None, "plain"))
            if raw is None or ref is None or ref() is not raw:
                return
            if len(self._free) < self.keep:
                self._free.append((raw, kind))
            else:
                del self._owned[id(raw)]


_STACK_BUFFERS = _StackBuffers(keep=4)


def _failure(path: str, error: BaseException, t0: float) -> FileOutcome:
    log.debug("%s failed", path, exc_info=error)  # the traceback, for --verbose
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG):
        # HDF5's own message is a paragraph of internals; the cause is all a user needs.
        where = f" in {Path(error.filename).parent}" if getattr(error, "filename", None) else ""
        cause = "no space left on device" if error.errno == errno.ENOSPC else "file too large"
        # radint's own check says how much was free and needed; HDF5's does not.
        detail = error.strerror or ""
        detail = f" ({detail.partition(': ')[2]})" if ": " in detail and "HDF" not in detail else ""
        why = f"{path}: {cause} while writing its outputs{where}{detail}"
    elif isinstance(error, RadintError):
        why = str(error)
    else:
        why = f"{type(error).__name__}: {error}"
    if not why.startswith(str(path)) and not (
        isinstance(error, RadintError) and Path(path).name in why
    ):
        why = f"{path}: {why}"
    return FileOutcome(path, False, seconds=time.perf_counter() - t0, error=" ".join(why.split()))


class _SpilledCakes:
    """The cakes (and their σ) of a file's results kept for the formats written at its end
    (``caked``, ``gsas``, ``mat``, the per-η fits), held in hidden files beside the outputs
    instead of in memory, and read back mapped when those are written: a long file's cakes
    outgrew memory (6 000 frames of a 1M detector peaked at 5.3 GB with ``--format midas``, 2×
    the cakes while they were joined). Removed when the file's outputs are done or abandoned;
    a run killed meanwhile leaves them as ``.partial`` files, which the next run removes."""

    NAMES = ("cake", "cake_sigma")

    def __init__(self, out_dir: Path, stem: str, names: Iterable[str]) -> None:
        self.out_dir, self.stem = out_dir, stem
        self.names = [n for n in self.NAMES if n in set(names)]
        self.files: dict[str, dict[str, Any]] = {}

    def take(self, part: Any) -> Any:
        """``part`` (a Result) with its cakes written out, a placeholder in their place."""
        from radint.io.atomic import temporary_sibling

        changes = {}
        for name in self.names:
            a = getattr(part, name)
            if a is None:
                continue
            arr = np.asarray(a)
            frames = arr if arr.ndim == 3 else arr[np.newaxis]
            entry = self.files.get(name)
            if entry is None:
                path = temporary_sibling(self.out_dir / f"{self.stem}.{name}")
                entry = self.files[name] = {"path": path, "file": open(path, "wb"), "n": 0,
                                            "dtype": frames.dtype, "shape": frames.shape[1:]}  # fmt: skip
            if (frames.dtype, frames.shape[1:]) != (entry["dtype"], entry["shape"]):
                raise RadintError(f"{self.stem}: results of other bins or types in one file")
            np.ascontiguousarray(frames).tofile(entry["file"])
            entry["n"] += frames.shape[0]
            changes[name] = np.broadcast_to(np.array(np.nan, arr.dtype), arr.shape)
        return dataclasses.replace(part, **changes)

    def restore(self, whole: Any) -> Any:
        """The joined Result ``whole`` with its cakes read back (mapped, read-only)."""
        changes = {}
        for name, entry in self.files.items():
            entry["file"].close()
            if getattr(whole, name) is not None:  # None: a part had none (joined as None)
                changes[name] = np.memmap(entry["path"], dtype=entry["dtype"], mode="r",
                                          shape=(entry["n"], *entry["shape"]))  # fmt: skip
        return dataclasses.replace(whole, **changes)

    def remove(self) -> None:
        """Delete the files (a mapping still open keeps reading them until it is dropped)."""
        for entry in self.files.values():
            with contextlib.suppress(OSError):
                entry["file"].close()
                Path(entry["path"]).unlink()
        self.files.clear()


class _FileWriter:
    """The writer stage of :func:`process_files`: consumes ``(kind, file index, ...)`` events
    on its own thread and reports each file's outcome once its outputs are final."""

    def __init__(self, out_dir: str, formats: tuple[str, ...], compression: str | None) -> None:
        from radint.io.write import FORMAT_ARRAYS, FORMATS, expand_formats

        self.out_dir = Path(out_dir)
        self.compression = compression
        self.suffix = FORMATS
        try:
            self.wanted = expand_formats(formats)
            self.format_error: BaseException | None = None
        except Exception as e:  # every file then fails with this reason
            self.wanted, self.format_error = [], e
        self.streamed = [f for f in self.wanted if f in ("nexus", "zarr")]
        self.at_end = [f for f in self.wanted if f not in self.streamed]
        # A file's results are kept until its end for these formats: only the arrays they read
        # (xy / bin need the lineouts alone; the cakes of a 500-frame Eiger 4M file took 4 GB).
        self.kept_arrays = {a for f in self.at_end for a in FORMAT_ARRAYS[f]}
        # Only results hold memory: at most two wait. Control events (start, end, skip, error)
        # never block, so the reader is not held up by a writer busy with the previous stack.
        self.inbox: queue.Queue = queue.Queue()
        self._results = threading.BoundedSemaphore(2)
        self.outbox: queue.Queue = queue.Queue()
        self.open: dict[int, dict[str, Any]] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        # Closing a file (~5 ms of CPU for a one-frame file) runs on its own thread so the writer
        # goes on with the next file, and syncing + renaming it (~3 ms, mostly waiting for the
        # disk) on another, so the next file is closed meanwhile; a few may be pending at once.
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="radint-finish")
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="radint-sync")
        self._pending = threading.BoundedSemaphore(4)
        #: Set when run() has returned: every file committed or its outputs removed.
        self.all_done = threading.Event()

    def expected(self, stem: str) -> list[Path]:
        """The outputs a file named ``stem`` gets."""
        return [self.out_dir / (stem + self.suffix[f][0]) for f in self.wanted]

    def put(self, event: tuple | None) -> None:
        """Hand an event over (a result blocks while two are waiting; gives up once stopped
        or dead)."""
        if event is not None and event[0] == "result":
            while not self._results.acquire(timeout=0.1):
                if self._stop.is_set() or self.error is not None:
                    return
        self.inbox.put(event)

    def finished(self) -> list[tuple[int, FileOutcome]]:
        """Outcomes reported since the last call."""
        out = []
        while True:
            try:
                out.append(self.outbox.get_nowait())
            except queue.Empty:
                return out

    def stop(self) -> None:
        """Stop consuming and delete every output not finished (the consumer went away)."""
        self._stop.set()

    def run(self) -> None:
        try:
            while not self._stop.is_set():  # stopped: what is open is removed below
                try:
                    event = self.inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                if event is None:
                    break
                try:
                    self._handle(event)
                finally:
                    if event[0] == "result":
                        self._results.release()
        except BaseException as e:  # a bug here must reach the caller, not vanish with the thread
            self.error = e
        finally:
            try:
                self._finisher.shutdown(wait=True)  # first: its tasks hand on to the syncer
                self._syncer.shutdown(wait=True)
                for state in self.open.values():
                    self._abort(state)
                self.open.clear()
            finally:
                self.all_done.set()

    def _handle(self, event: tuple) -> None:
        from radint.io import NexusWriter

        kind, i = event[0], event[1]
        if kind == "skip":
            self.outbox.put((i, FileOutcome(event[2], True, skipped=True, outputs=event[3])))
            return
        if kind == "start":
            path, stem = event[2], event[3]
            state = {"path": path, "stem": stem, "t0": time.perf_counter(), "writers": [],
                     "parts": [], "n_frames": 0, "error": self.format_error}  # fmt: skip
            self.open[i] = state
            if state["error"] is None:
                try:
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    for f in self.streamed:
                        state["writers"].append(
                            NexusWriter(
                                self.out_dir / (stem + self.suffix[f][0]),
                                backend="hdf5" if f == "nexus" else "zarr",
                                compression=self.compression,
                            )
                        )
                except Exception as e:
                    state["error"] = e
            return
        state = self.open[i]
        if kind == "result":
            if state["error"] is None:
                result = event[2]
                try:
                    for w in state["writers"]:
                        w.append(result)
                    if self.at_end:
                        part = result.without(self.kept_arrays)
                        if "spill" not in state:
                            state["spill"] = _SpilledCakes(self.out_dir, state["stem"],
                                                           self.kept_arrays)  # fmt: skip
                        state["parts"].append(state["spill"].take(part))
                    state["n_frames"] += result.n_frames
                except Exception as e:
                    state["error"] = e
            return
        del self.open[i]
        error = event[2] if kind == "error" else state["error"]
        if error is None and not state["n_frames"]:
            error = RadintError(f"{state['path']}: no frames")
        if error is None:
            self._pending.acquire()
            self._finisher.submit(self._finish_or_fail, i, state)
            return
        self._abort(state)
        self.outbox.put((i, _failure(state["path"], error, state["t0"])))

    def _finish_or_fail(self, i: int, state: dict[str, Any]) -> None:
        """On the finisher thread: complete a file's outputs, then hand them to the syncer."""
        try:
            written = self._finish(state)
        except BaseException as e:
            self._abort(state)
            self._pending.release()
            self.outbox.put((i, _failure(state["path"], e, state["t0"])))
            return
        self._syncer.submit(self._commit_or_fail, i, state, written)

    def _finish(self, state: dict[str, Any]) -> list[Path]:
        """Close the streamed outputs (complete, still under temporary names) and write the
        whole-file formats; the paths of all of them."""
        from radint.io import write_result

        written = []
        for w in state["writers"]:
            w.close(commit=False)
            written.append(w.path)
        if self.at_end:
            from radint.result import Result

            whole = Result.concatenate(state["parts"])
            state["parts"] = []  # held once, not twice, while the formats are written
            spill = state.pop("spill", None)
            try:
                if spill is not None:
                    whole = spill.restore(whole)
                # One format at a time, so a failure (a full disk) removes the ones already done.
                for fmt in self.at_end:
                    done = write_result(whole, self.out_dir, [fmt], name=state["stem"])
                    state.setdefault("finals", []).extend(done)
                    written += done
            finally:
                del whole
                if spill is not None:
                    spill.remove()
        return written

    def _commit_or_fail(self, i: int, state: dict[str, Any], written: list[Path]) -> None:
        """On the sync thread: sync and rename the streamed outputs, report the outcome."""
        try:
            for w in state["writers"]:
                w.commit()
            seconds = time.perf_counter() - state["t0"]
            outcome = FileOutcome(
                state["path"], True, state["n_frames"], seconds, [str(p) for p in written]
            )
        except BaseException as e:
            self._abort(state)
            outcome = _failure(state["path"], e, state["t0"])
        finally:
            self._pending.release()
        self.outbox.put((i, outcome))

    @staticmethod
    def _abort(state: dict[str, Any]) -> None:
        """Remove all of a failed file's outputs: the streamed ones in progress and the
        whole-file ones already written, so no output of a file reported failed remains."""
        for w in state["writers"]:
            with contextlib.suppress(Exception):
                w.abort()
        spill = state.pop("spill", None)
        if spill is not None:
            spill.remove()
        for path in state.pop("finals", []):
            with contextlib.suppress(OSError):
                if Path(path).is_dir():
                    shutil.rmtree(path)
                else:
                    Path(path).unlink()


def run_batch(
    config: IntegrationConfig,
    files: Iterable[str],
    out_dir: str | Path,
    formats: tuple[str, ...] = ("nexus",),
    n_procs: int = 1,
    n_threads: int | None = None,
    dataset: str | None = None,
    dark: np.ndarray | None = None,
    skip_existing: bool = False,
    dask: str | None = None,
    backend: str = "cpu",
    names: Sequence[str | None] | None = None,
    on_done: Callable[[FileOutcome], None] | None = None,
    compression: str | None = "blosc-lz4",
    raw_dtype: str | None = None,
    compat: str | None = None,
    midas_map: str | None = None,
    cache_dir: str | Path | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> list[FileOutcome]:
    """Integrate many files with one map; returns one outcome per file (in input order).

    ``on_frames(n)`` is called as frames are integrated (from another thread with worker
    processes or Dask), for progress within long files; a file retried after its worker died
    counts its frames again. The map is built (or loaded)
    once here and cached in ``cache_dir`` (default ``out_dir/.radint-cache``); workers
    load that cache instead of rebuilding it. ``compat`` is the Integrator's (MIDAS rules);
    ``midas_map`` a directory whose MIDAS ``Map.bin``/``nMap.bin`` replace radint's map.
    With ``n_procs > 1`` the workers are spawned processes that import the calling script: a
    script calls this under ``if __name__ == "__main__":``.
    """
    from radint.detector_map import DetectorMap
    from radint.fit import FitSpec
    from radint.integrator import config_for_compat
    from radint.io.write import resolve_formats

    config = config_for_compat(config, compat)  # the map built here is the workers'
    files = [str(f) for f in files]
    out_dir = Path(out_dir)
    # The workers' Integrators fit as the configuration says (fit="config").
    formats = resolve_formats(formats, FitSpec.from_config(config) is not None)
    check_outputs(files, out_dir, formats, names, config=config)
    if dask:  # refused before the map is built
        from radint.batch.distributed import parse_address, require_distributed

        parse_address(dask)
        require_distributed()
    cache = Path(cache_dir) if cache_dir is not None else out_dir / ".radint-cache"
    if config.flat_file and compat != "midas-cpu":
        from radint.corrections import read_flat_file

        read_flat_file(config)  # a wrong FlatFile fails before the map is built and cached
    # Built before any worker runs: with the threads of all of them (-nCPUs × -nCPUsLocal).
    build_threads = n_threads * max(1, n_procs) if n_threads and not dask else n_threads
    if midas_map:
        midas_map = os.path.abspath(midas_map)  # Dask workers run elsewhere
        detector_map = DetectorMap.load_midas(midas_map, config, n_threads=build_threads)
    else:
        detector_map = DetectorMap.cached(config, cache, n_threads=build_threads)
    detector_map.check_not_empty(config, build_threads)  # before the output folder is made
    if dask or n_procs > 1:
        # Other processes build their Integrators, where a refused setup (no pixel left to
        # integrate, an all-NaN dark) read as workers that died: refused here first, once.
        from radint.integrator import Integrator

        Integrator(config, detector_map=detector_map, dark=dark, compat=compat, n_threads=n_threads)
    # Made once the map is there: a run refused before (a wrong MIDAS map folder) leaves no folder.
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names) if names else [None] * len(files)
    outcomes: dict[int, FileOutcome] = {}

    def done(i: int, o: FileOutcome) -> None:
        outcomes[i] = o
        if on_done:
            on_done(o)

    opts: dict[str, Any] = {"out_dir": str(out_dir), "formats": tuple(formats), "dataset": dataset, "dark": dark,
            "skip_existing": skip_existing, "compression": compression,
            "raw_dtype": raw_dtype}  # fmt: skip
    if dask:
        from radint.batch.distributed import run_on_dask

        # Workers of a cluster run in their own working directories: absolute paths only (a
        # relative one was read, and its outputs written, relative to the worker's).
        opts["out_dir"] = os.path.abspath(out_dir)
        absolute = [os.path.abspath(f) for f in files]
        cache_dir = os.path.abspath(cache)
        rules = {"compat": compat, "midas_map": midas_map}
        try:
            for i, o in run_on_dask(
                dask,
                config,
                cache_dir,
                n_threads,
                backend,
                absolute,
                names,
                opts,
                rules,
                on_frames,
            ):
                done(i, dataclasses.replace(o, path=files[i]))
        finally:
            if parse_address(dask) is not None:
                _remove_partials_of_dead_workers(files, names, out_dir, formats)
    elif n_procs <= 1:
        _init_worker(config, str(cache), n_threads, backend, detector_map, dark, compat)
        # closing(): an interrupt in `done` (Ctrl-C, SIGTERM) still stops the pipeline and
        # removes the files it had not finished.
        with contextlib.closing(process_files(files, names=names, on_frames=on_frames,
                                              **opts)) as outcomes_:  # fmt: skip
            for i, o in enumerate(outcomes_):
                done(i, o)
    else:
        # What a worker compares stored outputs with under --skip-existing.
        from radint.integrator import rules_identity

        skipping = (config.validate(), rules_identity(compat, midas_map)) if skip_existing else None
        initargs = (config, str(cache), n_threads, backend, None, dark, compat, midas_map)
        _run_in_pools(files, names, opts, n_procs, initargs, cache, formats, skipping,
                      detector_map.n_r, done, on_frames)  # fmt: skip
    return [outcomes[i] for i in range(len(files))]


#: Worker deaths outside any file, in a row with nothing done between, that fail the files
#: left (workers that always die as they start would otherwise be restarted for ever).
EMPTY_BREAKS_TO_FAIL = 3

#: Rounds of pools a batch may go through when a worker process dies: runs of several files on
#: every process; then the files that were in flight, each its own run, on every process; then
#: those again, each alone on one process, where a death can only be the file's own.
RETRY_LEVELS = 3


def _quiet_pool_manager_race() -> None:
    """Keep Python 3.11's pool-manager race out of the user's output: when a worker dies while
    the pool is starting another, the pool's manager thread can fail with "dictionary changed
    size during iteration" as it shuts the broken pool down (a race inside CPython 3.11's
    concurrent.futures), and its traceback was printed under a batch that then completed every
    file. Logged at debug level instead; any other thread error is reported as before.
    Installed once."""
    if getattr(threading.excepthook, "_radint_pool_race", False):
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        tb = args.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        in_pool = tb is not None and tb.tb_frame.f_code.co_filename.endswith(
            os.path.join("concurrent", "futures", "process.py")
        )
        if args.exc_type is RuntimeError and in_pool and "changed size" in str(args.exc_value):
            log.debug("process pool manager thread: %s (CPython race, harmless)", args.exc_value)
            return
        previous(args)

    hook._radint_pool_race = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _run_in_pools(
    files: list[str],
    names: list[str | None],
    opts: dict[str, Any],
    n_procs: int,
    initargs: tuple,
    cache: Path,
    formats: Sequence[str],
    skipping: tuple[IntegrationConfig, str] | None,
    n_r: int,
    done: Callable[[int, FileOutcome], None],
    on_frames: Callable[[int], None] | None = None,
) -> None:
    """Integrate ``files`` on ``n_procs`` spawned worker processes, reporting each with
    ``done(index, outcome)``.

    A worker that dies (the OOM killer, a crash inside a compression filter) breaks Python's
    pool and every file not yet reported with it. Those files go on in a new pool: files whose
    outputs the dead worker had completed are reported done; files that were in flight on a
    worker that died (their marker files outlive it: a worker the pool stopped removes its own)
    are retried one file per run, and if a worker dies again on one of them, alone on a single
    process, where a death can only be that file's. Only a file that kills its worker alone
    fails; a one-off death (memory pressure from its neighbours) costs a retry."""
    import multiprocessing

    started = time.time() - 1.0  # outputs written since (mtime; coarse clocks allowed)
    out_dir = Path(opts["out_dir"])
    marks = Path(cache) / f"in-flight-{os.getpid()}"
    marks.mkdir(parents=True, exist_ok=True)
    # Each task is a run of consecutive files through one process_files pipeline, so a worker
    # overlaps reading, integrating and writing across them as a single process does; runs are
    # short enough (4 per process at least) to keep the processes busy.
    size = max(1, min(16, len(files) // (4 * n_procs)))
    todo: list[list[int]] = [list(range(len(files)))] + [[] for _ in range(RETRY_LEVELS - 1)]
    anything_done = False  # in the whole batch: a run reported, or a file found complete
    empty_breaks = 0  # pool breaks in a row with no file in flight and nothing done between
    workers = n_procs  # halved after each such break (memory for fewer maps at once)
    _quiet_pool_manager_race()
    # Frames the workers integrated, read every 0.25 s for on_frames (a file retried after a
    # worker died counts its frames again: progress, not the outcome).
    counter = multiprocessing.get_context("spawn").Value("q", 0) if on_frames else None
    initargs = (counter, *initargs)
    polled = threading.Event()

    def poll() -> None:
        seen = 0
        while True:
            stop = polled.wait(0.25)
            now = counter.value if counter is not None else 0
            if now > seen and on_frames is not None:
                on_frames(now - seen)
                seen = now
            if stop:
                return

    poller = threading.Thread(target=poll, name="radint-frames", daemon=True)
    if on_frames is not None:
        poller.start()
    try:
        while any(todo):
            level = next(k for k, pending in enumerate(todo) if pending)
            indices, todo[level] = todo[level], []
            step = size if level == 0 else 1
            alone = level == RETRY_LEVELS - 1
            lost: list[int] = []
            progressed = False
            # spawn, not fork: forking a process whose rayon threads may hold locks deadlocks.
            pool = ProcessPoolExecutor(
                1 if alone else workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_pool_worker,
                initargs=initargs,
            )
            try:
                runs = [indices[k : k + step] for k in range(0, len(indices), step)]
                futures = {}
                for n, run in enumerate(runs):
                    try:
                        fut = pool.submit(_process_run, [files[i] for i in run],
                                          [names[i] for i in run], opts,
                                          [str(marks / str(i)) for i in run])  # fmt: skip
                    except (BrokenProcessPool, OSError) as e:
                        # A worker died while the runs were queued (Python 3.11 may say so as
                        # "handle is closed", the pool's wake-up pipe already shut).
                        if not isinstance(e, BrokenProcessPool) and not getattr(
                            pool, "_broken", False
                        ):
                            raise
                        lost += [i for later in runs[n:] for i in later]
                        break
                    futures[fut] = run
                for fut in as_completed(futures):
                    try:
                        outcomes = fut.result()
                    except BrokenProcessPool:
                        lost += futures[fut]
                        continue
                    progressed = True
                    for i, o in zip(futures[fut], outcomes, strict=True):
                        done(i, o)
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM) or failed: runs not started are dropped and the
                # workers are told to stop as this process was; each removes the files it had
                # not finished (files it finished stay, reported or not: --skip-existing
                # resumes).
                for process in list(getattr(pool, "_processes", {}).values()):
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(process.pid, signal.SIGTERM)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            if lost:
                # Python's pool stops its workers when one dies, but not one it spawned for a
                # submit racing with that (3.11): the pool then waited for it for ever.
                for process in list(getattr(pool, "_processes", {}).values()):
                    with contextlib.suppress(OSError, ValueError, AttributeError):
                        process.terminate()
            pool.shutdown(wait=True)
            if not lost:
                anything_done = True
                continue
            in_flight = {i for i in lost if (marks / str(i)).exists()}
            for i in in_flight:
                (marks / str(i)).unlink(missing_ok=True)
            retry = []
            for i in sorted(lost):
                salvaged = _salvaged(files[i], names[i], out_dir, formats, started, skipping, n_r)
                if salvaged is not None:
                    progressed = True
                    done(i, salvaged)
                else:
                    retry.append(i)
            anything_done = anything_done or progressed
            suspects = [i for i in retry if i in in_flight]
            if suspects:
                empty_breaks = 0
                if alone:  # one file at a time on one process: the file in flight killed it
                    for i in suspects:
                        done(i, _died(files[i], "alone"))
                else:
                    log.warning(
                        "a radint batch worker process died (killed, e.g. out of memory, or "
                        "crashed) while it integrated %s; retrying %s%s",
                        ", ".join(files[i] for i in suspects[:3])
                        + (" ..." if len(suspects) > 3 else ""),
                        "them" if len(suspects) > 1 else "it",
                        " alone" if level + 1 == RETRY_LEVELS - 1 else "",
                    )  # fmt: skip
                    todo[level + 1] += suspects
                todo[level] += [i for i in retry if i not in suspects]
                continue
            # No file was in flight: the worker died as it started (loading the map, where
            # the OOM killer strikes when every worker loads one at once) or between files.
            # The files go on in a new pool of half as many workers; a third such death with
            # nothing done between fails them (workers that die as they start, as a script
            # without a __main__ guard makes them, die in any pool).
            empty_breaks = 0 if progressed else empty_breaks + 1
            if empty_breaks >= EMPTY_BREAKS_TO_FAIL:
                why = "died_between" if anything_done else "never_started"
                for i in retry:
                    done(i, _died(files[i], why))
                continue
            if not progressed:
                workers = max(1, workers // 2)
            log.warning(
                "a radint batch worker process died (killed, e.g. out of memory, or crashed) "
                "outside any file (starting, or between files); %d file(s) go on in a new pool "
                "of %d worker process(es)",
                len(retry), workers,
            )  # fmt: skip
            todo[level] += retry
    finally:
        polled.set()
        if poller.is_alive():
            poller.join()  # the last frames counted before the batch returns
        shutil.rmtree(marks, ignore_errors=True)


def _salvaged(
    path: str,
    name: str | None,
    out_dir: Path,
    formats: Sequence[str],
    since: float,
    skipping: tuple[IntegrationConfig, str] | None = None,
    n_r: int = 0,
) -> FileOutcome | None:
    """The outcome of a file whose worker process died before reporting it (a run reports all
    its files at its end) where its outputs tell it, else None, with the temporary outputs and
    the final ones this batch made removed (a file redone or failed leaves none of its own).

    A file whose every output is whole and was written since ``since`` (the batch's start, wall
    clock) was completed before the worker died: it is done, with the frames its NeXus output
    holds. Under --skip-existing (``skipping``: the configuration and :attr:`Integrator.rules`
    the worker compares with) a file whose outputs are whole and were made with those is
    skipped, as the worker reports it. ``n_r``: the map's radial bins, which count the frames
    of lineout-only outputs."""
    from radint.io.write import FORMATS, expand_formats

    stem = output_stem(path, name)
    finals = [Path(out_dir) / (stem + FORMATS[fmt][0]) for fmt in expand_formats(formats)]
    for final in finals:
        for temp in Path(out_dir).glob(f".{glob.escape(final.name)}.*.partial"):
            with contextlib.suppress(OSError):
                shutil.rmtree(temp) if temp.is_dir() else temp.unlink()
    complete = bool(finals) and all(_complete(f) for f in finals)
    if complete and all(_written_since(f, since) for f in finals):
        log.info("%s: its outputs were complete when its worker process died", path)
        return FileOutcome(path, True, _frames_written(finals, n_r), 0.0, list(map(str, finals)))
    if complete and skipping is not None and not _made_otherwise(finals, *skipping, path):
        return FileOutcome(path, True, skipped=True, outputs=list(map(str, finals)))
    # Outputs the worker had already put in place (caked.hdf before the .h5, say) go, unless
    # they are an earlier run's.
    for final in finals:
        if _written_since(final, since):
            with contextlib.suppress(OSError):
                shutil.rmtree(final) if final.is_dir() else final.unlink()
    return None


def _died(path: str, how: str) -> FileOutcome:
    """The failure of a file whose worker process died: ``how`` is "alone" (integrating this
    file, also when retried alone), "never_started" (every worker died as it started, before
    any file) or "died_between" (workers died :data:`EMPTY_BREAKS_TO_FAIL` times in a row
    outside any file)."""
    if how == "never_started":
        # Spawned workers import the caller's script, which without a __main__ guard starts
        # the batch again inside them (multiprocessing's RuntimeError, printed by each worker).
        hint = (
            "; a Python script that runs a batch with several processes must start it under "
            '`if __name__ == "__main__":`'
            if not _main_is_the_cli()
            else ""
        )
        why = RadintError(
            f"{path}: not integrated: the batch's worker processes died as they started, before "
            f"any file, {EMPTY_BREAKS_TO_FAIL} times{hint}"
        )
    elif how == "died_between":
        why = RadintError(
            f"{path}: not integrated: the batch's worker processes died {EMPTY_BREAKS_TO_FAIL} "
            "times in a row outside any file (killed, e.g. out of memory); rerun with "
            "--skip-existing to retry what is missing"
        )
    else:
        why = RadintError(
            f"{path}: the worker process integrating it died (killed, e.g. out of memory, or "
            "crashed, e.g. in a compression filter reading a corrupt chunk), also when it "
            "integrated this file alone; rerun with --skip-existing to retry what is missing"
        )
    return _failure(path, why, time.perf_counter())


def _main_is_the_cli() -> bool:
    """Whether this process is the ``radint`` command (whose workers cannot re-run it)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return (spec is not None and spec.name == "radint.cli") or Path(
        getattr(main, "__file__", None) or ""
    ).name == "radint"


def _written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def _frames_written(outputs: Sequence[Path], n_r: int = 0) -> int:
    """Rows of the first NeXus (HDF5 or Zarr) output among ``outputs``, else the frames of a
    lineout output of ``n_r`` bins (`_lineout.bin`: n_r float64 per frame; `_lineout.xy`: a
    header line, then n_r lines per frame); 0 where neither is there (MIDAS caked files
    only: the summary then counts no frames for the file)."""
    from radint.io.nexus import open_result

    lineouts = [p for p in outputs if p.name.endswith(("_lineout.bin", "_lineout.xy"))]
    for path in outputs:
        if path in lineouts:
            continue
        try:
            with open_result(path) as root:
                if "entry/azint1d/data/I" in root:
                    return int(root["entry/azint1d/data/I"].shape[0])
        except (OSError, KeyError, ValueError):
            continue
    for path in lineouts if n_r > 0 else []:
        try:
            if path.name.endswith(".bin"):
                return path.stat().st_size // (8 * n_r)
            with open(path, "rb") as f:
                return max(sum(1 for _ in f) - 1, 0) // n_r
        except OSError:
            continue
    return 0


def _add_frames(counter: Any, n: int) -> None:
    """Count ``n`` frames integrated in the parent's shared counter."""
    with counter.get_lock():
        counter.value += n


def _process_run(
    paths: list[str], names: list[str | None], opts: dict[str, Any], marks: list[str]
) -> list:
    """A worker's task: :func:`process_files` over consecutive files, all outcomes; nothing
    once the worker was told to stop (runs already queued to it are not started). ``marks``:
    a file per path that exists while the path is in flight here, so that a worker that dies
    tells which files it was on (one that stops removes them)."""
    if _WORKER.get("stopping"):
        _leave_now(0)  # a run queued before the stop (see below)
    _WORKER["busy"] = True
    for mark in marks:
        Path(mark).touch()
    outcomes = []
    try:
        # closing(): an interrupt between two outcomes still runs the pipeline's clean-up
        # (its unfinished outputs removed) before the worker leaves.
        counter = _WORKER.get("frames_done")
        on_frames = None if counter is None else functools.partial(_add_frames, counter)
        with contextlib.closing(process_files(paths, names=names, on_frames=on_frames,
                                              **opts)) as run:  # fmt: skip
            for outcome, mark in zip(run, marks, strict=True):
                outcomes.append(outcome)
                os.unlink(mark)
        return outcomes
    finally:
        for mark in marks[len(outcomes) :]:
            with contextlib.suppress(OSError):
                os.unlink(mark)
        _WORKER["busy"] = False
        if _WORKER.get("stopping"):
            # Told to stop while busy (its unfinished outputs are removed by now): leave,
            # rather than wait for another run. A pool that broke meanwhile (another worker
            # left) signals it only once, and that signal came while this one was busy.
            _leave_now(0)
