"""CUDA peak fitting: one warp per (lineout, job) runs the Levenberg–Marquardt of
``kernels/fit.cuh`` (a port of the Rust fitter, checked against it on the CPU by the test suite)
on lineouts that are already on the device. Only the fit table comes back to the host.

The warp's lanes share the per-point work (model, gradient, the sums over the ROI) through the
job's scratch in shared memory and take every decision together. Jobs are planned once by the
Rust planner (``radint._core.fit_plan``, the same code the CPU fitter uses), so both backends fit
the same ROIs with the same starts and bounds. A job with more than ``RF_MAX_PEAKS`` (6) peaks or
more than 1024 ROI bins exceeds the kernel's fixed storage and is fitted by the Rust fitter
instead (its lineouts are copied back for that).
Auto-detection (SNIP + Savitzky–Golay + prominence) and ``FitROIAuto`` depend on the data in ways
that are sequential per lineout; they run on the CPU after the lineouts come back.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from radint import _core
from radint.config import FIT_ROI_PADDING
from radint.exceptions import BackendUnavailableError, InvalidInputError
from radint.fit import MAX_ITERATIONS, unique_positions, warn_out_of_range
from radint.gpu import _import_cupy, _module, _out_of_memory, cuda_available

__all__ = ["CPU_FALLBACK", "CudaFitter", "scratch_bytes"]

log = logging.getLogger(__name__)

#: Status the kernel leaves for jobs it cannot hold (the launcher refits them on the CPU).
CPU_FALLBACK = 254
_OUT_OF_RANGE = 3
#: fit.cuh's RF_MAX_PEAKS and RF_MAX_ROI: larger jobs go to the CPU fitter.
_MAX_PEAKS = 6
_MAX_ROI = 1024
#: Warps (jobs) per block, at most; fewer when their scratch passes 48 KiB of shared memory.
_WARPS_PER_BLOCK = 4
_SHARED_LIMIT = 48 * 1024


def scratch_bytes(max_params: int, max_roi: int, team: int = 32) -> int:
    """Shared memory one warp's job needs: ``rf_scratch_bytes`` of ``kernels/fit.cuh`` (the
    kernel checks it got at least that much and leaves the job to the CPU otherwise).

    Parameters
    ----------
    max_params : int
        Fit parameters of the largest job (``2 + 4 · peaks``: background and 4 per peak).
    max_roi : int
        ROI bins of the largest job.
    team : int
        Lanes sharing the job (a warp, 32, by default).

    Returns
    -------
    int
        Bytes of shared memory.
    """
    p = int(max_params)
    doubles = 3 + 2 * p * p + 2 * p + _MAX_PEAKS + team * (p + 2)
    return 8 * doubles + 8 * ((int(max_roi) + 1) // 2)


class CudaFitter:
    """Fit peaks at fixed positions in many lineouts on the device.

    Parameters
    ----------
    x : ndarray, shape (n_x,)
        Bin centres of the lineouts (R px for an Integrator's results).
    positions : sequence of float
        Peak positions in x units.
    roi_padding, max_iterations, max_peaks_per_job, bin_average
        As in :func:`radint.fit.fit_peaks`.
    device_id : int, optional
        The GPU that holds the lineouts (default: the current device).
    """

    def __init__(
        self,
        x: np.ndarray,
        positions: list[float],
        roi_padding: int = FIT_ROI_PADDING,
        max_iterations: int = MAX_ITERATIONS,
        max_peaks_per_job: int = 32,
        bin_average: bool = True,
        device_id: int | None = None,
    ) -> None:
        cp = _import_cupy()
        ok, why = cuda_available()
        if not ok:  # as CudaIntegrator says it, not the driver's bare error
            raise BackendUnavailableError(f"the CUDA backend is not available: {why}")
        self._cp = cp
        self.x = np.ascontiguousarray(x, dtype=np.float64)
        unique, self._slots = unique_positions(np.asarray(positions, np.float64), "fit")
        self.positions = [float(p) for p in unique]
        self.roi_padding = int(roi_padding)
        self.max_iterations = int(max_iterations)
        self.max_peaks_per_job = int(max_peaks_per_job)
        self.bin_average = bool(bin_average)
        plan = _core.fit_plan(self.x, self.positions, self.roi_padding, self.max_peaks_per_job)
        self.bin = float(plan["bin"])
        self.n_jobs = int(plan["job_lo"].size)
        # Slots no job fits (positions outside the lineout): set on the host after each launch.
        self._uncovered = np.setdiff1d(
            np.arange(len(self.positions)), np.asarray(plan["peak_slot"], np.int64)
        )
        # The scratch is laid out for the plan's largest job the kernel holds.
        rois = np.asarray(plan["job_hi"], np.int64) - np.asarray(plan["job_lo"], np.int64) + 1
        peaks = np.diff(np.asarray(plan["peak_start"], np.int64))
        self._max_roi = int(min(rois.max(initial=1), _MAX_ROI))
        self._max_params = 2 + 4 * int(min(peaks.max(initial=1), _MAX_PEAKS))
        self._scratch = scratch_bytes(self._max_params, self._max_roi)
        self._warps = max(1, min(_WARPS_PER_BLOCK, _SHARED_LIMIT // self._scratch))
        self.device_id = cp.cuda.Device().id if device_id is None else int(device_id)
        self._warned_memory = False
        with cp.cuda.Device(self.device_id):
            self._plan = {k: cp.asarray(plan[k]) for k in
                          ("job_lo", "job_hi", "peak_start", "peak_slot", "peak_index",
                           "peak_lo", "peak_hi")}  # fmt: skip
            self._x = cp.asarray(self.x)
            # The uploads run on this thread's current stream; the fits may launch on another
            # thread's (a stream's integration thread, per-thread default streams).
            cp.cuda.get_current_stream().synchronize()
            self._kernel = _module(self.device_id, "fit").get_function("rf_fit_jobs")

    def fit(self, lineouts: Any) -> dict[str, np.ndarray]:
        """Fit every row of ``lineouts`` (CuPy or numpy, shape ``(n_curves, n_x)``).

        Returns the dict :func:`radint._core.fit_peaks` returns (host arrays): ``values`` and
        ``errors`` ``(n_curves, n_peaks, 7)``, ``status`` u8, ``iterations`` u32.

        Jobs the kernel cannot hold (or all of them, when the device has no room for the
        kernel's per-thread memory) are fitted by the Rust fitter instead, with the same plan.

        Parameters
        ----------
        lineouts : CuPy or numpy array, shape (n_curves, n_x) or (n_x,)
            Intensities on the bins ``x`` the fitter was built for (converted to float64; a
            1-D array is one curve); device arrays should be on the fitter's GPU.

        Returns
        -------
        dict of ndarray
            ``values``/``errors`` ``(n_curves, n_peaks, 7)`` float64 in
            :data:`radint.fit.COLUMNS` order (NaN unless fitted; ``center``/``fwhm`` in x
            units), ``status`` ``(n_curves, n_peaks)`` uint8 and ``iterations`` uint32, one
            slot per position given (a repeated position's slots hold the same fit).

        Raises
        ------
        InvalidInputError
            Rows not of ``n_x`` bins.
        """
        with self._cp.cuda.Device(self.device_id):
            out = self._fit(lineouts)
        warn_out_of_range(np.asarray(self.positions), out["status"], self.x)
        if len(self._slots) != len(self.positions):  # a position given twice: fitted once
            out = {k: np.take(v, self._slots, axis=1) for k, v in out.items()}
        return out

    def _fit(self, lineouts: Any) -> dict[str, np.ndarray]:
        cp = self._cp
        ys = cp.ascontiguousarray(cp.asarray(lineouts, dtype=cp.float64))
        if ys.ndim == 1:
            ys = ys.reshape(1, -1)
        n_curves, n_x = (int(v) for v in ys.shape)
        if n_x != self.x.size:
            raise InvalidInputError(f"lineouts: expected rows of {self.x.size} bins, got {n_x}")
        n_slots = len(self.positions)
        # No fills on the device: the kernel writes every slot of every job (a job it refuses
        # gets its status, and the CPU fitter its values); the slots of no job are set on the
        # host below. One launch, four copies into page-locked memory, one wait.
        values = cp.empty((n_curves, n_slots, 7), dtype=cp.float64)
        errors = cp.empty((n_curves, n_slots, 7), dtype=cp.float64)
        status = cp.empty((n_curves, n_slots), dtype=cp.uint8)
        iterations = cp.empty((n_curves, n_slots), dtype=cp.uint32)
        total = n_curves * self.n_jobs
        launched = True
        if total:
            p = self._plan
            launched = self._launch(
                ((total + self._warps - 1) // self._warps,),
                (self._x, ys, np.uint32(n_x), np.uint32(n_curves), p["job_lo"], p["job_hi"],
                 p["peak_start"], p["peak_slot"], p["peak_index"], p["peak_lo"], p["peak_hi"],
                 np.uint32(self.n_jobs),
                 np.uint32(n_slots), np.float64(self.bin), np.int32(self.bin_average),
                 np.int32(self.max_iterations),
                 np.int32(self.max_peaks_per_job), np.float64(1e-8), np.float64(1e-8),
                 np.int32(self._max_params), np.int32(self._max_roi), np.uint64(self._scratch),
                 values, errors, status, iterations),
            )  # fmt: skip
        out = self._download(
            {"values": values, "errors": errors, "status": status, "iterations": iterations}
        )
        out["values"][:, self._uncovered] = np.nan
        out["errors"][:, self._uncovered] = np.nan
        out["status"][:, self._uncovered] = _OUT_OF_RANGE
        out["iterations"][:, self._uncovered] = 0
        if not launched:  # every job to the CPU fitter
            out["status"][...] = CPU_FALLBACK
        self._cpu_fallback(out, ys)
        return out

    def _download(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        """The device arrays copied into page-locked host arrays on the current stream, after
        what it holds (the fit), with one wait for all of them."""
        import ctypes

        import cupyx

        stream = self._cp.cuda.get_current_stream()
        host = {k: cupyx.empty_pinned(a.shape, dtype=a.dtype) for k, a in arrays.items()}
        for k, a in arrays.items():
            if a.nbytes:
                a.data.copy_to_host_async(ctypes.c_void_p(host[k].ctypes.data), a.nbytes, stream)
        stream.synchronize()
        return host

    def _launch(self, grid: tuple[int], args: tuple) -> bool:
        """Launch the fitting kernel; False when the device cannot hold its threads' stacks.

        Why: each lane keeps its fit's parameters, bounds and peak terms in local memory
        (5.4 KB), which the driver reserves for every resident thread at launch: 1.4 GiB on an
        H100. Memory that CuPy's pool keeps but does not use is handed back first; if the
        launch still does not fit, the jobs are fitted on the CPU (same plan, same fitter) with
        one warning.
        """
        for attempt in range(2):
            try:
                self._kernel(grid, (32 * self._warps,), args,
                             shared_mem=self._warps * self._scratch)  # fmt: skip
                return True
            except Exception as e:  # CuPy raises driver, runtime or pool errors for this
                if not _out_of_memory(e):
                    raise
                if attempt == 0:
                    self._cp.get_default_memory_pool().free_all_blocks()
                    continue
                if not self._warned_memory:
                    log.warning(
                        "GPU %d has no room for the fitting kernel's per-thread memory (%s); "
                        "fitting on the CPU instead",
                        self.device_id,
                        e,
                    )
                    self._warned_memory = True
        return False

    def _cpu_fallback(self, out: dict[str, np.ndarray], ys: Any) -> None:
        """Refit on the CPU the jobs the kernel could not hold (same plan, same fitter)."""
        rows = np.flatnonzero((out["status"] == CPU_FALLBACK).any(axis=1))
        if rows.size == 0:
            return
        host = self._cp.asnumpy(ys[self._cp.asarray(rows)])
        # All positions, so the plan is the kernel's: a job cut out of a crowded chain has its
        # ROI clipped at the gap, which its own peaks alone would not reproduce.
        d = _core.fit_peaks(self.x, np.ascontiguousarray(host), self.positions,
                            roi_padding=self.roi_padding, max_iterations=self.max_iterations,
                            max_peaks_per_job=self.max_peaks_per_job,
                            bin_average=self.bin_average)  # fmt: skip
        redo = out["status"][rows] == CPU_FALLBACK
        for key in ("values", "errors", "status", "iterations"):
            block = out[key][rows]
            block[redo] = d[key][redo]
            out[key][rows] = block
