"""Where a CUDA frame's time goes (issue 8): host staging copy rates, transfer rates, and
per-kernel device times for one Pilatus 2M uint32 frame and one 8-frame pass (by the
frames-in-lanes kernel, then by the lane-split one).

Run on a GPU machine: ``python benches/gpu_profile.py``; for per-kernel times and DRAM bytes
run it under Nsight Compute, which times each kernel launch the script makes::

    ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,\\
        dram__bytes_write.sum --csv python benches/gpu_profile.py --kernels-only

Without a usable GPU it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import _config  # benches/gpu.py: the same detector


def _rate(fn, nbytes: int, reps: int = 20) -> float:
    """GB/s of fn() (which moves nbytes), median of reps after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return nbytes / float(np.median(times)) / 1e9


def _staging_rates(cp, label: str, src: np.ndarray) -> None:
    import cupyx

    from radint import _core

    flat = src.reshape(-1)
    pinned = cupyx.empty_pinned(flat.shape, dtype=flat.dtype)
    dev = cp.empty(flat.shape, dtype=flat.dtype)
    stream = cp.cuda.Stream(non_blocking=True)
    nb = flat.nbytes

    def h2d() -> None:
        dev.data.copy_from_host_async(ctypes.c_void_p(pinned.ctypes.data), nb, stream)
        stream.synchronize()

    def pageable_h2d() -> None:
        dev.set(flat)  # returns once CuPy has staged the data, not when the copy ends
        cp.cuda.get_current_stream().synchronize()

    copyto = _rate(lambda: np.copyto(pinned, flat), nb)
    parallel = _rate(lambda: _core.copy_bytes(pinned.view(np.uint8), flat.view(np.uint8)), nb)
    print(
        f"{label} ({nb / 1e6:.1f} MB): np.copyto -> pinned {copyto:.1f} GB/s; "
        f"_core.copy_bytes -> pinned {parallel:.1f} GB/s; pinned H2D {_rate(h2d, nb):.1f} GB/s; "
        f"pageable H2D {_rate(pageable_h2d, nb):.1f} GB/s"
    )


def host_rates(cp, frame: np.ndarray, out_bytes: int) -> None:
    """Staging copies (pageable → pinned) and transfers, for one frame and for 8."""
    import cupyx

    _staging_rates(cp, "1 frame", frame)
    _staging_rates(cp, "8 frames", np.stack([frame] * 8))
    res = cp.empty(out_bytes // 8, dtype=np.float64)
    pinned = cupyx.empty_pinned(res.shape, dtype=res.dtype)
    print(
        f"results ({out_bytes / 1e6:.1f} MB/frame): D2H pageable (asnumpy) "
        f"{_rate(lambda: cp.asnumpy(res), out_bytes):.1f} GB/s, D2H pinned "
        f"{_rate(lambda: res.get(out=pinned), out_bytes):.1f} GB/s"
    )


def kernel_sweep(cp, gpu, dev, reps: int, label: str, counts: Any) -> None:
    """Device time per frame of a pass of n frames on the device (n in ``counts``), by the
    lane-split kernel and by the frames-in-lanes one (CUDA events around each pass's kernels):
    where the second starts to pay, i.e. what ``radint.gpu.LANES_MIN_FRAMES`` and
    ``LANES_WARPS_PER_SM`` should be."""
    import radint.gpu

    saved = radint.gpu.LANES_MIN_FRAMES, gpu._resident_lane_threads
    print(f"{label} ({gpu.n_bins} bins): a pass of n frames, device ms per frame")
    print(f"{'n':>2} {'lane split':>11} {'frames in lanes':>16}")
    try:
        for n in counts:
            times = []
            for lanes_min in (radint.gpu.MAX_NB + 1, 1):
                radint.gpu.LANES_MIN_FRAMES = lanes_min
                gpu._resident_lane_threads = 0
                gpu.integrate_device(dev[:n])  # warm-up (the interleaved buffer)
                gpu._pass_events = []
                for _ in range(reps):
                    gpu.integrate_device(dev[:n])
                cp.cuda.Device().synchronize()
                events, gpu._pass_events = gpu._pass_events, None
                ms = sum(cp.cuda.get_elapsed_time(a, b) for a, b in events) / len(events)
                times.append(ms / n)
            print(f"{n:>2} {times[0]:11.4f} {times[1]:16.4f}")
    finally:
        radint.gpu.LANES_MIN_FRAMES, gpu._resident_lane_threads = saved


def breakdown(cp, integ, gpu, rng, n: int = 64) -> None:
    """ms/frame of the end-to-end path with one part left out at a time (host vs device frames,
    downloads or not, the Integrator's Result around it), then where the host time goes."""
    import cProfile
    import pstats

    host = rng.integers(0, 100000, (n, *integ.config.shape)).astype(np.uint32)
    dev = cp.asarray(host)
    keys = ("cake", "cake_sigma", "lineout", "lineout_sigma", "area", "count")
    cases = {
        "Integrator.integrate_stack(host frames)": lambda: integ.integrate_stack(host),
        "run(host frames, download Result keys)": lambda: gpu.run(host, None, None, keys),
        "run(host frames, no download)": lambda: gpu.run(host, None, None, ()),
        "run(device frames, download Result keys)": lambda: gpu.run(dev, None, None, keys),
        "run(device frames, no download)": lambda: gpu.run(dev, None, None, ()),
    }
    for label, fn in cases.items():
        fn()
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        cp.cuda.Device().synchronize()
        print(f"{label:44} {(time.perf_counter() - t0) / (5 * n) * 1e3:7.3f} ms/frame")
    for label, frames, reps in (("64-frame stacks", host, 5), ("single frames", host[0], 100)):
        run = integ.integrate_stack if frames.ndim == 3 else integ.integrate
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(reps):
            run(frames)
        prof.disable()
        print(f"--- host time, Integrator with {label} (top 12 by own time)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels-only", action="store_true", help="only the launches ncu times")
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny detector: check the script runs (the tests do, on the fake CuPy)")  # fmt: skip
    args = ap.parse_args(argv)
    from radint.gpu import cuda_available

    ok, why = cuda_available()
    if not ok:
        print(f"benches/gpu_profile.py: nothing to profile here: {why}")
        return 0
    import cupy as cp

    import radint.gpu
    from radint import Integrator

    cfg = _config((47, 43) if args.smoke else (1679, 1475), 172)
    integ = Integrator(cfg, backend="cuda", solid_angle=None, polarization=None)
    gpu = integ._gpu_backend()
    rng = np.random.default_rng(0)
    host = rng.integers(0, 100000, (8, *cfg.shape)).astype(np.uint32)
    dev = cp.asarray(host)
    gpu.integrate_device(dev)  # compile, allocate, upload the cross-term arrays
    cp.cuda.Device().synchronize()
    if not args.kernels_only:
        host_rates(cp, host[0], out_bytes=integ.map.n_bins * 8 * 5)
        for label, frames in (("1 frame", dev[0]), ("8 frames", dev)):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for _ in range(20):
                gpu.integrate_device(frames)
            stop.record()
            stop.synchronize()
            # The events are on the legacy stream, which does not wait for radint's non-blocking
            # streams: this is the host's wall time per call (each call ends synchronised).
            print(f"integrate_device {label}: {cp.cuda.get_elapsed_time(start, stop) / 20:.3f} ms "
                  "per call (wall time between events, launch overhead included)")  # fmt: skip
        reps = 1 if args.smoke else 20
        kernel_sweep(cp, gpu, dev, reps, "1 px x 5 deg cake", range(1, radint.gpu.MAX_NB + 1))
        # A 1-D map (one eta bin a radius: few, long bins), where the lane split should stay.
        line = Integrator(cfg.replace(eta_bin_deg=360.0), backend="cuda", solid_angle=None,
                          polarization=None)._gpu_backend()  # fmt: skip
        kernel_sweep(cp, line, dev, reps, "1-D, 1 px x 360 deg", (1, 4, radint.gpu.MAX_NB))
        breakdown(cp, integ, gpu, rng)
        return 0
    gpu.integrate_device(dev[0])  # lane split
    gpu.integrate_device(dev)  # interleaved, frames in lanes
    radint.gpu.LANES_MIN_FRAMES = radint.gpu.MAX_NB + 1
    gpu.integrate_device(dev)  # the same pass by the lane split, for comparison
    cp.cuda.Device().synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
