"""Sources → bounded queue → Integrator → writer thread → ``DIR/stream.h5`` (+ MIDAS binaries).

Every frame a source hands over is either written (with its id, source name and timestamp) or
counted as dropped; nothing is lost silently. Queues are bounded, so a slow integrator or writer
stops the TCP sources from reading (TCP backpressure reaches the sender). :meth:`Pipeline.stop`
(SIGINT/SIGTERM in ``radint stream``) stops the sources, drains the queues, closes the files.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radint._allocator import keep_freed_memory
from radint.exceptions import InvalidInputError, RadintError
from radint.fit import ABSENT
from radint.io import NexusWriter
from radint.stream.control import MAX_PEAKS, UNCHANGED, PeakControl
from radint.stream.sources import Source, SourceStats, StreamItem

log = logging.getLogger("radint.stream")

__all__ = ["Pipeline", "Summary"]


@dataclass
class Summary:
    """Counts of one streaming run.

    Attributes
    ----------
    received : int
        Frames the sources took in (TCP frames read whole, PVA updates, folder frames),
        refused ones included.
    integrated, written : int
        Frames integrated, and written to the output file(s).
    dropped : int
        Frames received but not written (refused while stopping or with the queues full, lost
        to an error).
    partial : int
        TCP frames cut short (a connection closed mid-frame) and discarded.
    bad_connections : int
        TCP connections closed for a protocol error (an unknown dtype, a bad hybrid frame).
    seconds : float
        Wall time of the run, from its start to its end.
    output : str
        The stream's NeXus file.
    integrate_seconds, write_seconds : float
        Seconds the integration thread spent integrating and the writer writing: with
        ``seconds`` they say which stage bounds the rate.
    """

    received: int
    integrated: int
    written: int
    dropped: int
    partial: int
    bad_connections: int
    seconds: float
    output: str
    #: Seconds the integration thread spent integrating, and the writer writing: with
    #: ``seconds`` they say which stage bounds the rate.
    integrate_seconds: float = 0.0
    write_seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        """Frames written per second of the run (0 for a run of no time)."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one-line summary ``radint stream`` prints at the end."""
        return (
            f"stream: received {self.received}, integrated {self.integrated}, written "
            f"{self.written}, dropped {self.dropped}, partial frames discarded {self.partial}, "
            f"bad connections {self.bad_connections}; {self.seconds:.1f} s, "
            f"{self.frames_per_second:.1f} frames/s (busy: integrating "
            f"{self.integrate_seconds:.1f} s, writing {self.write_seconds:.1f} s) -> "
            + (self.output if self.written else "nothing written (no frames)")
        )

    def as_dict(self) -> dict[str, Any]:
        """The counters as a dict (JSON-ready)."""
        return asdict(self)


#: How often (s) the making of integrator_output.h5 at the end says how far it is.
PROGRESS_EVERY_S = 5.0

#: Longest time (s) frames written to stream.h5 wait for a flush, whatever the save interval.
FLUSH_SECONDS = 5.0
#: Most waiting frames integrated in one call (8: where sharing the map's reads stops paying).
RUN_FRAMES = 8

#: Most integrated frames written to the file in one block, and the longest a frame waits for
#: its block to fill (seconds).
WRITE_BATCH = 32
WRITE_DELAY_S = 0.25


class _FrameBudget:
    """Frames integrated but not yet taken by the writer, at most ``limit`` (the integrated
    results queue holds whole runs of up to RUN_FRAMES frames, so it is bounded in frames here,
    not in queue entries). A run larger than the limit still passes when nothing is held, so
    no run waits forever."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.held = 0
        self._cv = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cv:
            while self.held > 0 and self.held + n > self.limit:
                self._cv.wait(0.1)
            self.held += n

    def release(self, n: int) -> None:
        with self._cv:
            self.held -= n
            self._cv.notify_all()


class _StreamTable:
    """Per-frame ``entry/stream/{frame_id,source,timestamp,source_timestamp,dataset_num}`` next
    to the NeXus rows.

    NexusWriter stores frame_id and timestamp; the source name (which client / PV / file) is
    stream-specific, so it lives in its own NXcollection of the same file.
    """

    def __init__(self, h5file: Any) -> None:
        import h5py

        g = h5file.require_group("entry/stream")
        self.group = g
        #: NDAttributes columns (``entry/stream/attributes/NAME``), made as names first appear.
        self.attributes: dict[str, Any] = {}
        g.attrs["NX_class"] = "NXcollection"
        g.attrs["description"] = "one row per written frame, in the order of entry/azint*/data"

        def grow(name: str, dtype: Any, description: str, units: str | None = None) -> Any:
            ds = g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=dtype)
            ds.attrs["description"] = description
            if units:
                ds.attrs["units"] = units
            return ds

        self.ds = {
            "frame_id": grow("frame_id", np.int64, "TCP dataset_num unwrapped, PVA uniqueId, "
                             "or a running count (folder)"),
            "source": grow("source", h5py.string_dtype(), "tcp:HOST:PORT, pva:CHANNEL or file:NAME"),
            "timestamp": grow("timestamp", np.float64, "Unix time radint had the whole frame",
                              "s"),
            "source_timestamp": grow(
                "source_timestamp", np.float64, "Unix time the source gives the frame: PVA "
                "timeStamp (dataTimeStamp where that is 0), a folder file's modification time; "
                "NaN where none (TCP)", "s",
            ),
            "dataset_num": grow("dataset_num", np.int64, "the TCP header's dataset_num, -1 "
                                "for other sources"),
        }  # fmt: skip

    def record(self, counts: dict[str, int]) -> None:
        """The stream's counters so far (frames received, dropped, ...) as attributes of
        ``entry/stream``: what the file lacks is said there, not only in the log."""
        self.ds["frame_id"].parent.attrs.update(counts)

    def append(self, items: list[StreamItem]) -> None:
        values = {
            "frame_id": [i.frame_id for i in items],
            "source": [i.source for i in items],
            "timestamp": [i.timestamp for i in items],
            "source_timestamp": [float(i.metadata.get("source_timestamp", np.nan)) for i in items],
            "dataset_num": [int(i.metadata.get("dataset_num", -1)) for i in items],
        }
        n = self.ds["frame_id"].shape[0]
        for key, ds in self.ds.items():
            ds.resize(n + len(items), axis=0)
            ds[n:] = values[key]
        self._append_attributes(items, n)

    def _append_attributes(self, items: list[StreamItem], n: int) -> None:
        """Each frame's NDAttributes (PVA) in a column per name: NaN (numbers) or "" (text)
        where a frame has none, including the rows before the name first appeared. A column of
        numbers that meets text becomes a column of text (its numbers written as text)."""
        given = [i.metadata.get("attributes") or {} for i in items]
        for name, value in (kv for attrs in given for kv in attrs.items()):
            text = isinstance(value, str)
            if name not in self.attributes:
                self.attributes[name] = self._attribute_column(name, text, n)
            elif text and self.attributes[name].dtype.kind != "O":
                self.attributes[name] = self._as_text_column(self.attributes[name], name, n)
        for name, ds in self.attributes.items():
            text = ds.dtype.kind == "O"
            column = [_attribute_value(attrs.get(name), text) for attrs in given]
            ds.resize(n + len(items), axis=0)
            ds[n:] = column

    def _attribute_column(self, name: str, text: bool, rows: int, key: str | None = None) -> Any:
        import h5py

        g = self.group.require_group("attributes")
        if not g.attrs.get("NX_class"):
            g.attrs["NX_class"] = "NXcollection"
            g.attrs["description"] = (
                "areaDetector NDAttributes of each frame (PVA), one column per name (its "
                "attribute_name; in the column's name %, / and \\ are written %25, %2F, %5C): "
                "NaN or an empty string where a frame had none"
            )
        dtype = h5py.string_dtype() if text else np.float64
        ds = g.create_dataset(key or _attribute_key(name), shape=(rows,), maxshape=(None,),
                              chunks=(1024,), dtype=dtype, fillvalue=None if text else np.nan)  # fmt: skip
        ds.attrs["attribute_name"] = name
        return ds

    def _as_text_column(self, ds: Any, name: str, rows: int) -> Any:
        """A column of numbers rewritten as text, for a name whose value turned to text."""
        numbers = ds[:rows]
        key = ds.name.rsplit("/", 1)[1]
        del self.group["attributes"][key]
        column = self._attribute_column(name, True, rows, key)
        column[:rows] = ["" if np.isnan(v) else repr(float(v)) for v in numbers]
        log.info("stream: NDAttribute %r sent text after numbers: its column holds text from "
                 "here on (the numbers before as text)", name)  # fmt: skip
        return column


def _attribute_key(name: str) -> str:
    """An NDAttribute's name as an HDF5 / Zarr member name, one to one: "%", "/" and "\\"
    written %25, %2F, %5C, and a name of dots only (".", "..") as %2E each."""
    key = name.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")
    return "%2E" * len(key) if set(key) == {"."} else key


def _attribute_value(value: float | str | None, text: bool) -> float | str:
    """A frame's NDAttribute as its column holds it (text once any frame sent text)."""
    if value is None:
        return "" if text else np.nan
    if text:
        return str(value)
    return float(value)


def _mark_provenance(result: Any, items: list[StreamItem]) -> None:
    """Where ``result``'s frames came from, for ``entry/provenance`` as a batch records it: a
    folder source's file (absolute path) and position in it; a TCP client or PVA channel by
    its source name and the frame's number there."""
    paths, frames = [], []
    for item in items:
        file = item.metadata.get("file")
        if file is not None:
            paths.append(os.path.abspath(file))
            frames.append(int(item.metadata.get("frame", -1)))
        else:
            paths.append(item.source)
            frames.append(int(item.frame_id))
    result.metadata["source_path"] = np.array(paths, dtype=object)
    result.metadata["source_frame"] = np.array(frames, dtype=np.int64)


class Pipeline:
    """Run sources into an Integrator and a NeXus writer.

    Parameters
    ----------
    integrator : Integrator
    sources : list of Source
    output_dir : path
        ``stream.h5`` (NeXus NXazint1d/2d, one row per frame, written in place without HDF5's
        file lock and flushed after the first frame, every ``save_interval`` frames and at
        least every ``FLUSH_SECONDS``, so it can be read while it grows); with ``midas_files``
        also the GPU program's files as frames arrive (spec §7.3: ``lineout.bin`` and
        ``lineout_simple_mean.bin``, n_r pairs (R, I) float64 per frame; with ``Write2D 1``
        ``Int2D.bin``, n_r·n_eta float64, R-major, per frame; ``RTthEtaAreaMap.bin``; ``fit.bin``)
        and at the end ``integrator_output.h5`` + (with ``Int2D.bin``) the GSAS-II
        ``integrator_output.zarr.zip`` (spec §7.4) and, when peaks were fitted, the GPU
        program's ``caked_peaks.h5`` (its per-frame peak table, ``eta_idx = 0``; spec §9.4,
        :func:`radint.io.midas.write_stream_outputs`).
    save_interval : int
        Flush every this many frames.
    max_frames : int, optional
        Stop (and drain) after this many frames were accepted.
    idle_timeout : float, optional
        Stop when no frame arrived for this many seconds.
    queue_size, write_queue_size : int
        Bounds, in frames, of the frame queue and of the integrated frames waiting for the
        writer.
    compression : str or None
        HDF5 filter for the per-frame rows. ``None`` (the default, unlike the other writers'
        Blosc-LZ4): readers in other processes open the growing file without ``hdf5plugin``,
        and the one writer thread spends no compression time per frame.
    control_dir : path, optional
        Where ``peak_update.txt`` / ``peaks.json`` change the fitted peaks live
        (:mod:`radint.stream.control`); default ``output_dir``. Fitted peaks go to
        ``stream.h5`` ``entry/peaks`` (and ``fit.bin`` with ``midas_files``).
    mapping_file : path, optional
        With ``midas_files``: the sender's ``frame_mapping.json`` (arrival index → file name),
        read at the end to sort and name the frames of ``integrator_output.h5`` (and
        ``caked_peaks.h5``) as MIDAS does.
    dark : ndarray (n_pixels_z, n_pixels_y), optional
        Subtracted from every frame (the GPU program's dark argument).
    """

    def __init__(
        self,
        integrator: Any,
        sources: list[Source],
        output_dir: str | Path,
        *,
        save_interval: int = 100,
        max_frames: int | None = None,
        idle_timeout: float | None = None,
        queue_size: int = 8,
        write_queue_size: int = 32,
        midas_files: bool = False,
        compression: str | None = None,
        control_dir: str | Path | None = None,
        mapping_file: str | Path | None = None,
        dark: np.ndarray | None = None,
    ) -> None:
        if save_interval < 1:
            raise InvalidInputError(f"save_interval must be >= 1, got {save_interval}")
        self.integrator = integrator
        self.sources = sources
        self.output_dir = Path(output_dir)
        self.output = self.output_dir / "stream.h5"
        self.save_interval = save_interval
        self.max_frames = max_frames
        self.idle_timeout = idle_timeout
        self.midas_files = midas_files
        self.mapping_file = None if mapping_file is None else Path(mapping_file)
        self.compression = compression
        self.dark = integrator.same_dark(dark)  # the integrator's own keeps its folded map
        self.control = PeakControl(control_dir or self.output_dir, integrator.config)
        self._next_poll = 0.0
        self.stats = SourceStats()
        self.frames: queue.Queue[StreamItem] = queue.Queue(maxsize=queue_size)
        # Whole runs of frames; bounded in frames by _write_budget.
        self.results: queue.Queue[tuple[list[StreamItem], Any] | None] = queue.Queue()
        self._write_budget = _FrameBudget(write_queue_size)
        self.integrated = 0
        self.written = 0
        self._busy = {"integrate": 0.0, "write": 0.0}  # seconds each thread spent working
        self.accepted = 0
        self._accept_lock = threading.Lock()
        self._stopping = threading.Event()
        self._skip_midas_outputs = threading.Event()
        self._fitted = False  # some frame was fitted (--midas-files: fit.bin was opened)
        self._refusal_logged = False
        #: Frames refused because the stream was stopping (or had its --max-frames).
        self.refused_stopping = 0
        self._sources_done = threading.Event()
        self._finished = threading.Event()
        self._last_frame = time.monotonic()
        self._t0 = 0.0
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._summary: Summary | None = None
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ sinks
    def _admit(self) -> bool:
        with self._accept_lock:
            if self._stopping.is_set() or (
                self.max_frames is not None and self.accepted >= self.max_frames
            ):
                return False
            self.accepted += 1
            if self.max_frames is not None and self.accepted >= self.max_frames:
                threading.Thread(target=self.stop, name="radint-stop", daemon=True).start()
            return True

    def _blocking_sink(self, item: StreamItem) -> bool:
        """Wait for room. TCP/folder: the source stops reading meanwhile (backpressure reaches
        the sender). PVA: pvAccess's client queue (up to 100 updates) holds what the IOC sends
        meanwhile; what overflows it shows as gaps in uniqueId, counted as dropped upstream.
        (PVA dropped a frame at once when this queue was full: a pause of ~40 ms at 200 Hz
        lost frames with the client queue empty. The source's stop waits for this.)"""
        if not self._admit():
            self.stats.add("dropped")
            with self._accept_lock:
                self.refused_stopping += 1
            if not self._refusal_logged:  # once: the summary counts them all
                self._refusal_logged = True
                log.warning(
                    "%s: frame %d refused (stopping); later refusals are only counted",
                    item.source,
                    item.frame_id,
                )
            return False
        self._last_frame = time.monotonic()
        while True:
            try:
                self.frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self._error is not None:
                    self.stats.add("dropped")
                    return False

    # ------------------------------------------------------------------ threads
    def _poll_control(self) -> None:
        """Apply a waiting peak-control file (at most every 0.2 s: a stat call per frame is
        cheap, but not free at kHz rates)."""
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + 0.2
        spec = self.control.poll(self.integrator.fit)
        if spec is not UNCHANGED:
            self.integrator.fit = spec

    def _integrate_run(self, run: list[StreamItem]) -> None:
        """Integrate frames that were waiting together as one stack, straight from their
        buffers: the map is read once for all of them (~25 % less CPU per frame than one call
        each)."""
        self._poll_control()
        t0 = time.perf_counter()
        try:
            if len(run) == 1:
                result = self.integrator.integrate(run[0].data, dark=self.dark)
            else:
                result = self.integrator.integrate_stack(
                    [item.data for item in run], dark=self.dark
                )
        except BaseException:
            self.stats.add("dropped", len(run))
            raise
        finally:
            self._busy["integrate"] += time.perf_counter() - t0
        for item in run:
            item.release()  # the writer needs only the result and the item's id fields
        self.integrated += len(run)
        # The run stays one stack result: the writer appends it with one write per dataset
        # (per-frame appends cost ~0.1 ms each in h5py).
        self._write_budget.acquire(len(run))
        self.results.put((run, result))

    def _integrate_loop(self) -> None:
        pending: StreamItem | None = None
        try:
            while True:
                if pending is not None:
                    item, pending = pending, None
                else:
                    try:
                        item = self.frames.get(timeout=0.05)
                    except queue.Empty:
                        if self._sources_done.is_set() and self.frames.empty():
                            break
                        continue
                # Frames already waiting of the same type join the run; nothing waits for
                # frames still to come.
                run = [item]
                while len(run) < RUN_FRAMES:
                    try:
                        nxt = self.frames.get_nowait()
                    except queue.Empty:
                        break
                    if nxt.data.dtype != item.data.dtype or nxt.data.shape != item.data.shape:
                        pending = nxt
                        break
                    run.append(nxt)
                self._integrate_run(run)
        except BaseException as e:
            self._error = e
            log.error("stream: integration failed: %s", e)
            self.stop()
            while not self.frames.empty():
                self.frames.get_nowait()
                self.stats.add("dropped")
            if pending is not None:
                self.stats.add("dropped")
        finally:
            self.results.put(None)

    def _next_batch(
        self, idle: float | None = None
    ) -> tuple[list[tuple[list[StreamItem], Any]], bool]:
        """The next block of integrated frames (waiting for the first, at most ``idle`` s: an
        empty block then) and whether the end marker came with it. The block grows until it
        holds WRITE_BATCH frames or its oldest frame waited WRITE_DELAY_S: h5py holds the GIL
        through each append, stalling the integration thread, so one append per dataset per
        block instead of per frame is what keeps the stream near the integration rate."""
        try:
            first = self.results.get(timeout=idle)
        except queue.Empty:
            return [], False
        if first is None:
            return [], True
        self._write_budget.release(len(first[0]))
        batch = [first]
        n_frames = len(first[0])
        deadline = time.monotonic() + WRITE_DELAY_S
        while n_frames < WRITE_BATCH:
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                job = self.results.get(timeout=wait)
            except queue.Empty:
                break
            if job is None:
                return batch, True
            self._write_budget.release(len(job[0]))
            batch.append(job)
            n_frames += len(job[0])
        return batch, False

    def _write_loop(self) -> None:
        writer: NexusWriter | None = None
        table: _StreamTable | None = None
        bins: dict[str, Any] = {}
        last_flush = time.monotonic()
        unflushed = False
        done = False  # the end marker was taken
        in_hand = 0  # frames taken from the queue and not yet counted as written
        try:
            while not done:
                # With frames not yet flushed, wake up in time to flush them even if no more
                # come (a burst's end must be readable too, not only at exit).
                idle = max(0.05, FLUSH_SECONDS - (time.monotonic() - last_flush))
                batch, done = self._next_batch(idle if unflushed else None)
                if not batch:
                    if unflushed and writer is not None:
                        writer.flush()
                        for f in bins.values():
                            f.flush()
                        last_flush, unflushed = time.monotonic(), False
                    continue
                items = [item for group, _ in batch for item in group]
                in_hand = len(items)
                t_write = time.perf_counter()
                if writer is None:
                    self.output_dir.mkdir(parents=True, exist_ok=True)
                    writer = NexusWriter(
                        self.output,
                        atomic=False,
                        lock=False,  # other processes read it while it grows
                        compression=self.compression,
                        source_name=items[0].source,
                        peak_slots=MAX_PEAKS,
                    )
                results = [r for _, r in batch]
                if self.midas_files:
                    # The binaries' room first: a disk filling between stream.h5 and them left
                    # the frames in one and a partial record in the other.
                    self._midas_room(results)
                # Run by run: a concatenated block would copy every array once more.
                for group, result in batch:
                    _mark_provenance(result, group)
                    writer.append(
                        result,
                        frame_id=[i.frame_id for i in group],
                        timestamp=[i.timestamp for i in group],
                    )
                if table is None:
                    table = _StreamTable(writer.h5_file)
                table.append(items)
                if self.midas_files:
                    bins = self._write_midas(results, bins)
                    for f in bins.values():  # the GPU program flushes every frame: live viewers
                        f.flush()  # tail these files
                before = self.written
                self.written += len(items)
                in_hand = 0
                now = time.monotonic()
                if (
                    before == 0
                    or self.written // self.save_interval != before // self.save_interval
                    or now - last_flush >= FLUSH_SECONDS
                ):
                    table.record(self._counts())
                    writer.flush()
                    for f in bins.values():
                        f.flush()
                    last_flush, unflushed = now, False
                else:
                    unflushed = True
                self._busy["write"] += time.perf_counter() - t_write
        except BaseException as e:
            self._error = e
            # Named by the error where it has a file (a MIDAS binary file, the disk check's
            # folder), else the stream file.
            target = getattr(e, "filename", None) or self.output
            log.error("stream: writing %s failed: %s", target, getattr(e, "strerror", None) or e)
            self.stop()
            # The block that failed and what was still coming are dropped (and counted, frame by
            # frame); the end marker may have come with the failed block.
            self.stats.add("dropped", in_hand)
            while not done and (job := self.results.get()) is not None:
                self._write_budget.release(len(job[0]))
                self.stats.add("dropped", len(job[0]))
        finally:
            # After a write error (disk full) closing can fail too; it must not hide the first
            # error or kill the thread with a traceback.
            for close in ([writer.close] if writer is not None else []) + [
                f.close for f in bins.values()
            ]:
                try:
                    close()
                except Exception as e:
                    log.error("stream: closing output after the error failed: %s", e)
        if writer is not None and self.midas_files and self._error is None:
            self._write_final_midas()

    def _write_final_midas(self) -> None:
        """The files MIDAS makes from a stream at its end, from the binary files written as
        frames arrived (read a frame group at a time): its post-processing's
        ``integrator_output.h5`` and GSAS-II ``integrator_output.zarr.zip`` (spec §7.4), and,
        when peaks were fitted, the GPU program's ``caked_peaks.h5`` (its per-frame peak table,
        spec §6.5/§9.4, from ``stream.h5`` ``entry/peaks``), all in the same frame order."""
        from radint.io.midas import STREAM_CAKED_PEAKS, write_stream_outputs

        names = "integrator_output.h5" + (" / .zarr.zip" if self.integrator.config.write_2d else "")
        if self._fitted:
            names += f", {STREAM_CAKED_PEAKS}"
        later = (f"make them later with radint.io.midas.write_stream_outputs"
                 f"('{self.output_dir}', config, stream_file='{self.output}')")  # fmt: skip
        if self._skip_midas_outputs.is_set():
            log.warning("stream: %s not written (skipped); %s", names, later)
            return
        log.info("stream: writing %s from the binary files (a second Ctrl-C skips them)", names)
        said = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - said[0] >= PROGRESS_EVERY_S:
                said[0] = time.monotonic()
                log.info("stream: %s: %d of %d frames", names, done, total)

        try:
            mapping = self._frame_mapping()
            written = write_stream_outputs(
                self.output_dir, self.integrator.config, stream_file=self.output,
                mapping=mapping, progress=progress, cancelled=self._skip_midas_outputs.is_set,
            )  # fmt: skip
            log.info("stream: wrote %s", ", ".join(map(str, written)))
        except KeyboardInterrupt as e:
            log.warning("stream: %s not written (%s); %s", names, e, later)
        except (OSError, ValueError, MemoryError) as e:
            # An OSError's text names its file (disk full: which of them).
            log.error("stream: MIDAS %s not written: %s; %s", names, e, later)

    def _frame_mapping(self) -> dict[int, dict[str, Any]] | None:
        """How integrator_output.h5 names the frames: the sender's ``frame_mapping.json``
        (``mapping_file``), else the files a folder stream read them from (as MIDAS's folder
        workflow names them: ``name`` or ``name:frameK``), else None (frame indices)."""
        if self.mapping_file is not None:
            try:
                raw = json.loads(self.mapping_file.read_text())
                return {int(k): v for k, v in raw.items()}
            except (OSError, ValueError, AttributeError) as e:
                # As integrator_stream_process_h5.py: said, and the files written all the same.
                log.warning("stream: mapping file %s not read (%s): frames named as without "
                            "one (by index)", self.mapping_file, e)  # fmt: skip
                return None
        from radint.io.nexus import open_result

        with open_result(self.output) as f:
            if "entry/stream/source" not in f:
                return None
            sources = f["entry/stream/source"].asstr()[()]
        named = {k: {"filename": s.removeprefix("file:")} for k, s in enumerate(sources)
                 if s.startswith("file:")}  # fmt: skip
        return named or None

    def _midas_room(self, results: list[Any]) -> None:
        """OSError (ENOSPC) unless the disk holds this block's MIDAS binary records on top of
        its stream.h5 rows (counted uncompressed, as the writer's own check counts them)."""
        from radint.io.nexus import ensure_space

        need = 0
        for r in results:
            need += sum(np.asarray(a).nbytes for a in (r.cake, r.cake_sigma, r.lineout,
                                                       r.lineout_sigma) if a is not None)  # fmt: skip
            per_frame = 2 * 16 * r.n_r  # lineout.bin, lineout_simple_mean.bin: (R, I) pairs
            if self.integrator.config.write_2d:
                per_frame += 8 * r.n_r * r.n_eta  # Int2D.bin
            need += r.n_frames * per_frame
            if r.peaks is not None:
                need += 7 * 8 * int(np.asarray(r.peaks.status).size)  # fit.bin rows
        ensure_space(
            self.output_dir / "lineout.bin", need, what=f"{self.output_dir} (MIDAS binary files)"
        )

    def _write_midas(self, results: list[Any], bins: dict[str, Any]) -> dict[str, Any]:
        """Append the GPU program's per-frame files (spec §7.3): lineout.bin,
        lineout_simple_mean.bin, Int2D.bin (and fit.bin when fitting); RTthEtaAreaMap.bin once."""
        from radint.io.midas import STREAM_BINARIES, reta_map

        if not bins:
            # As the GPU program: Int2D.bin (and so the GSAS-II zip made from it) only with
            # Write2D 1, since it is n_r × n_eta doubles per frame.
            skip = {"RTthEtaAreaMap.bin"} | (
                set() if self.integrator.config.write_2d else {"Int2D.bin"}
            )
            per_frame = [name for name in STREAM_BINARIES if name not in skip]
            if "Int2D.bin" in skip:
                log.info("stream: Int2D.bin and the GSAS-II zarr.zip are not written (Write2D 0, "
                         "as in MIDAS; set Write2D 1 in the parameters for them)")  # fmt: skip
            bins = {name: open(self.output_dir / name, "wb") for name in per_frame}
            (self.output_dir / "RTthEtaAreaMap.bin").write_bytes(
                reta_map(results[0].frame(0)).astype("<f8").tobytes()
            )
        singles = [r.frame(k) for r in results for k in range(r.n_frames)]
        for result in singles:
            r = np.asarray(result.radius_px, dtype=np.float64)
            # The GPU program writes 0, not NaN, where no pixel reached (spec §5.2-5.3), and its
            # lineout is Σ_η I·A / Σ_η A of the cake whatever Normalize says (radint's own
            # lineout sums over η with Normalize 0).
            cake = np.nan_to_num(np.asarray(result.cake, dtype=np.float64), nan=0.0)
            area = np.asarray(result.area, dtype=np.float64)
            used = area > 1e-9
            weight = np.where(used, area, 0.0)
            a_sum = weight.sum(axis=0)
            line = np.divide((cake * weight).sum(axis=0), a_sum, out=np.zeros_like(a_sum),
                             where=a_sum > 0)  # fmt: skip
            bins["lineout.bin"].write(np.column_stack([r, line]).tobytes())
            # GPU simple mean: plain mean over the η bins of area > 1e-9, zeros included.
            n_used = used.sum(axis=0)
            total = np.where(used, cake, 0.0).sum(axis=0)
            mean = np.divide(total, n_used, out=np.zeros_like(total), where=n_used > 0)
            bins["lineout_simple_mean.bin"].write(np.column_stack([r, mean]).tobytes())
            if "Int2D.bin" in bins:
                bins["Int2D.bin"].write(np.ascontiguousarray(cake.T, np.float64).tobytes())
            if result.peaks is not None:
                if "fit.bin" not in bins:
                    bins["fit.bin"] = open(self.output_dir / "fit.bin", "wb")
                    self._fitted = True  # caked_peaks.h5 at the end
                # MIDAS GPU layout: 7 doubles per fitted peak, frames back to back.
                rows = result.peaks.rows()[result.peaks.status != ABSENT]
                bins["fit.bin"].write(np.ascontiguousarray(rows, "<f8").tobytes())
        return bins

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the sources and the worker threads (returns at once)."""
        self._lock_output()
        try:
            self._start()
        except BaseException:
            self._unlock_output()
            raise

    def _start(self) -> None:
        keep_freed_memory()  # each frame's results reuse the last one's pages
        self._keep_previous_run()
        self.control.announce(self.integrator.fit)
        self._t0 = time.monotonic()
        self._last_frame = self._t0
        for target, name in ((self._integrate_loop, "integrate"), (self._write_loop, "write")):
            t = threading.Thread(target=target, name=f"radint-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        for src in self.sources:
            pool = getattr(src, "pool", None)
            if pool is not None:  # frames land where the integrator reads them best
                pool.allocate = self.integrator.host_buffer
            src.start(self._blocking_sink, self.stats)
        threading.Thread(target=self._shutdown, name="radint-shutdown", daemon=True).start()

    def stop(self) -> None:
        """Stop taking frames; what was taken is integrated and written, then files close."""
        self._stopping.set()

    def skip_midas_outputs(self) -> None:
        """Do not make (or stop making) ``integrator_output.h5`` / ``.zarr.zip`` /
        ``caked_peaks.h5`` at the end: a long stream's take a while; they can be made later
        from the folder (:func:`radint.io.midas.write_stream_outputs`)."""
        self._skip_midas_outputs.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a signal, the timeout or --max-frames did)."""
        return self._stopping.is_set()

    def _shutdown(self) -> None:
        while not self._stopping.wait(0.1):
            if self.sources and all(src.failure for src in self.sources):
                log.error("stream: no source left to take frames from, stopping")
                self.stop()
            if self.idle_timeout is not None:
                if time.monotonic() - self._last_frame > self.idle_timeout:
                    log.info("stream: no frame for %.1f s, stopping", self.idle_timeout)
                    self.stop()
        for src in self.sources:
            src.stop()
        for src in self.sources:
            src.join(10.0)
        self._sources_done.set()
        for t in self._threads:
            t.join()
        # A frame a source put after the integration thread's last look (it stopped on an
        # error) is dropped here, counted, and its buffer handed back.
        while True:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                break
            item.release()
            self.stats.add("dropped")
        self._summary = self._make_summary()
        self._record_counts()
        self._unlock_output()
        self._finished.set()

    def _lock_output(self) -> None:
        """Hold ``DIR/.radint-stream.lock`` while running: a second stream started on the same
        directory stops there, before it moves or touches the first one's files."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): nothing to hold
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.output_dir / ".radint-stream.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RadintError(
                f"{self.output_dir}: another radint stream writes there (pid {holder}); stop "
                "it first or write to another directory (-o)"
            ) from None
        except OSError as e:  # a file system without flock (some NFS / Lustre mounts)
            os.close(fd)
            log.warning("stream: cannot lock %s (%s): a second stream there would not be "
                        "stopped", self.output_dir, e)  # fmt: skip
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a full disk: said with the file, before any frame is taken
            os.close(fd)
            raise OSError(e.errno, e.strerror, str(self.output_dir / ".radint-stream.lock")) from e
        self._lock_fd = fd

    def _unlock_output(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def _counts(self) -> dict[str, int]:
        s = self.stats
        return {"frames_received": s.received, "frames_integrated": self.integrated,
                "frames_written": self.written, "frames_dropped": s.dropped,
                "partial_frames_discarded": s.partial,
                "bad_connections": s.bad_connections}  # fmt: skip

    def _record_counts(self) -> None:
        """The final counters into ``entry/stream`` (frames dropped while draining come after
        the writer's last flush)."""
        if not self.written or not self.output.is_file():
            return
        import h5py

        try:
            with h5py.File(self.output, "r+", locking=False) as f:
                if "entry/stream" in f:
                    f["entry/stream"].attrs.update(self._counts())
        except OSError as e:
            log.error("stream: recording the frame counts in %s failed: %s", self.output, e)

    def _make_summary(self) -> Summary:
        s = self.stats
        return Summary(
            received=s.received,
            integrated=self.integrated,
            written=self.written,
            dropped=s.dropped,
            partial=s.partial,
            bad_connections=s.bad_connections,
            seconds=time.monotonic() - self._t0,
            output=str(self.output),
            integrate_seconds=self._busy["integrate"],
            write_seconds=self._busy["write"],
        )

    @property
    def summary(self) -> Summary | None:
        """The final counters once the pipeline has drained (also after an error)."""
        return self._summary

    def wait(self, timeout: float | None = None) -> Summary | None:
        """Block until drained and closed; the summary, or None on timeout. Re-raises the error
        that stopped the pipeline (e.g. the disk filled up); :attr:`summary` still has the
        counters then.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most (None: until the pipeline has finished).

        Returns
        -------
        Summary or None
            The run's counts, or None when ``timeout`` passed first.

        Raises
        ------
        Exception
            The error that stopped the pipeline (an ``OSError`` of a full disk, ...).
        """
        self._finished.wait(timeout)
        if self._error is not None and self._finished.is_set():
            raise self._error
        return self._summary

    def status(self) -> dict[str, Any]:
        """Live counters: received, integrated, written, dropped, queue depth."""
        return {
            "received": self.stats.received,
            "integrated": self.integrated,
            "written": self.written,
            "dropped": self.stats.dropped,
            "queue": self.frames.qsize(),
            "write_queue": self._write_budget.held,
        }

    def _keep_previous_run(self) -> None:
        """Move a previous run's files out of the way into ``DIR/previous-<time>/`` (a
        restarted stream must not overwrite what the last one recorded): ``stream.h5``, every
        file or folder made from it under its stem (``stream.caked.hdf``, ``stream.zarr.zip``,
        ``stream_lineout.xy``, ``stream.png``... by ``radint convert`` / ``plot``), the MIDAS
        GPU program's files (``--midas-files``) and ``active_peaks.txt``, so they stay together.
        Only when a file of one of those names is there, and only names radint writes: a
        ``stream_params.txt`` of the user's stays."""
        from radint.io.midas import STREAM_BINARIES, STREAM_CAKED_PEAKS
        from radint.io.write import FORMATS

        names = [self.output.name, *STREAM_BINARIES, "fit.bin", "integrator_output.h5",
                 "integrator_output.zarr.zip", STREAM_CAKED_PEAKS, "active_peaks.txt"]  # fmt: skip
        # Any of them: one of those names holding a user's file (no stream.h5 beside it) was
        # written over.
        if not any((self.output_dir / n).exists() for n in names):
            return
        stem = self.output.stem
        derived = [f"{stem}{suffix}" for suffix, _ in FORMATS.values()] + [f"{stem}.png"]
        found = [self.output_dir / n for n in dict.fromkeys([*names, *derived])]
        found = [p for p in found if p.exists()]
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(found[0].stat().st_mtime))
        keep = self.output_dir / f"previous-{stamp}"
        k = 1
        while keep.exists():
            k += 1
            keep = self.output_dir / f"previous-{stamp}-{k}"
        keep.mkdir()
        for p in found:
            p.rename(keep / p.name)
        log.warning(
            "stream: %s already held a run's files (%s); moved to %s", self.output_dir,
            ", ".join(p.name for p in found), keep,
        )  # fmt: skip

    def run(self, status: str = "auto") -> Summary:
        """Start, show a status line until drained, return the summary.

        Parameters
        ----------
        status : {"auto", "rich", "log", "none"}
            ``"rich"``: a live line on stderr; ``"log"``: a log line every 5 s; ``"none"``;
            ``"auto"``: rich on a TTY, else log.

        Returns
        -------
        Summary
            The run's counts.

        Raises
        ------
        Exception
            The error that stopped the pipeline (see :meth:`wait`).
        """
        if status == "auto":
            status = "rich" if sys.stderr.isatty() else "log"
        self.start()
        if status == "rich":
            from rich.live import Live

            with Live(self._status_text(0.0), refresh_per_second=4, transient=False) as live:
                last, t_last = 0, time.monotonic()
                while not self._finished.wait(0.25):
                    now = time.monotonic()
                    rate = (self.written - last) / max(now - t_last, 1e-9)
                    last, t_last = self.written, now
                    live.update(self._status_text(rate))
        else:
            last, t_last = 0, time.monotonic()
            while not self._finished.wait(5.0 if status == "log" else 0.25):
                if status == "log":
                    now = time.monotonic()
                    rate = (self.written - last) / max(now - t_last, 1e-9)
                    last, t_last = self.written, now
                    log.info("%s", self._status_text(rate))
        summary = self.wait()
        assert summary is not None
        return summary

    def _status_text(self, rate: float) -> str:
        st = self.status()
        return (
            f"received {st['received']}  integrated {st['integrated']}  written {st['written']}  "
            f"{rate:.1f} frames/s  queue {st['queue']}/{self.frames.maxsize}  "
            f"dropped {st['dropped']}"
        )
