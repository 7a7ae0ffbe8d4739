"""Batch integration of many files: one map built once, files spread over processes or Dask.

The same per-file task (:func:`process_file`) runs in a local process pool (``n_procs``, each with
a rayon pool of ``n_threads``, like MIDAS's ``-nCPUs``/``-nCPUsLocal``) or on a Dask distributed
cluster (``dask="local:4"`` or a scheduler address; dask-jobqueue clusters for SLURM/PBS are
created by the user and passed as their scheduler address). No home-made scheduler.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radint.config import IntegrationConfig
from radint.exceptions import RadintError

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
    config: IntegrationConfig, cache_dir: str, n_threads: int | None, backend: str
) -> None:
    from radint.detector_map import DetectorMap
    from radint.integrator import Integrator

    m = DetectorMap.cached(config, cache_dir, n_threads=n_threads)  # loads the parent's cache
    _WORKER["integrator"] = Integrator(config, detector_map=m, n_threads=n_threads, backend=backend)


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
) -> FileOutcome:
    """Integrate every frame of one file and write its outputs (atomically). Never raises for a
    bad file: the outcome carries the reason.

    Three stages overlap: a thread reads the next stack of frames, the integrator (GIL released)
    works on the current one, and a writer thread appends the previous one to the NeXus/Zarr
    outputs. Other formats need the whole file's result and are written at the end.
    """
    from radint.io import NexusWriter, write_result
    from radint.io.prefetch import frame_stacks, prefetch
    from radint.io.write import FORMATS, expand_formats

    integ = integrator or _WORKER.get("integrator")
    stem = name or Path(path).name.split(".")[0]
    t0 = time.perf_counter()
    writers: list[Any] = []
    try:
        wanted = expand_formats(formats)
        expected = [Path(out_dir) / (stem + FORMATS[f][0]) for f in wanted]
        if skip_existing and expected and all(p.exists() for p in expected):
            return FileOutcome(path, True, skipped=True, outputs=[str(p) for p in expected])
        streamed = [f for f in wanted if f in ("nexus", "zarr")]
        at_end = [f for f in wanted if f not in streamed]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        writers = [
            NexusWriter(
                Path(out_dir) / (stem + FORMATS[f][0]),
                backend="hdf5" if f == "nexus" else "zarr",
                compression=compression,
            )
            for f in streamed
        ]
        parts: list[Any] = []
        n_frames = 0
        with ThreadPoolExecutor(1, thread_name_prefix="radint-write") as pool:
            pending: list[Any] = []
            for stack, ids in prefetch(frame_stacks(path, dataset)):
                result = integ.integrate_stack(stack, dark=dark)
                result.frame_ids = np.asarray(ids, dtype=np.int64)
                result.metadata["source"] = str(path)
                n_frames += result.n_frames
                if writers:
                    pending.append(pool.submit(_append_all, writers, result))
                    while len(pending) > 1:  # at most one stack waiting to be written
                        pending.pop(0).result()
                if at_end:
                    parts.append(result)
            for fut in pending:
                fut.result()
        if not n_frames:
            raise RadintError(f"{path}: no frames")
        written = []
        for w in writers:
            w.close()
            written.append(w.path)
        if at_end:
            from radint.result import Result

            whole = Result.concatenate(parts)
            written += write_result(whole, out_dir, at_end, name=stem)
        return FileOutcome(
            path, True, n_frames, time.perf_counter() - t0, [str(p) for p in written]
        )
    except Exception as e:  # one bad file must not stop the batch; the reason is reported
        for w in writers:
            w.abort()
        why = str(e) if isinstance(e, RadintError) else f"{type(e).__name__}: {e}"
        if Path(path).name not in why:
            why = f"{path}: {why}"
        return FileOutcome(
            path, False, seconds=time.perf_counter() - t0, error=" ".join(why.split("\n"))
        )


def _append_all(writers: list[Any], result: Any) -> None:
    for w in writers:
        w.append(result)


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
    names: list[str] | None = None,
    on_done: Callable[[FileOutcome], None] | None = None,
    compression: str | None = "blosc-lz4",
) -> list[FileOutcome]:
    """Integrate many files with one map; returns one outcome per file (in input order).

    The map is built (or loaded) once here and cached in ``out_dir/.radint-cache``; workers
    load that cache instead of rebuilding it.
    """
    from radint.detector_map import DetectorMap

    files = [str(f) for f in files]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / ".radint-cache"
    DetectorMap.cached(config, cache, n_threads=n_threads)
    names = names or [None] * len(files)
    outcomes: dict[int, FileOutcome] = {}

    def done(i: int, o: FileOutcome) -> None:
        outcomes[i] = o
        if on_done:
            on_done(o)

    opts = {"out_dir": str(out_dir), "formats": tuple(formats), "dataset": dataset, "dark": dark,
            "skip_existing": skip_existing, "compression": compression}  # fmt: skip
    if dask:
        from radint.batch.distributed import run_on_dask

        for i, o in run_on_dask(dask, config, str(cache), n_threads, backend, files, names, opts):
            done(i, o)
    elif n_procs <= 1:
        _init_worker(config, str(cache), n_threads, backend)
        for i, f in enumerate(files):
            done(i, process_file(f, name=names[i], **opts))
    else:
        import multiprocessing

        # spawn, not fork: forking a process whose rayon threads may hold locks can deadlock.
        with ProcessPoolExecutor(
            n_procs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(config, str(cache), n_threads, backend),
        ) as pool:
            futures = {
                pool.submit(process_file, f, name=names[i], **opts): i for i, f in enumerate(files)
            }
            for fut in as_completed(futures):
                done(futures[fut], fut.result())
    return [outcomes[i] for i in range(len(files))]
