"""GPU integration and fitting benchmark (issues 8, 9): radint CUDA vs the hardware limits.

Detectors: Pilatus 2M (u32) and Eiger 4M (u32, u16); 1 px × 5° cake + lineout, float64
accumulation, Poisson variance. For each: kernel-only time per frame (frames already on the
device; single frames: CUDA events around the kernels, stacks: wall time), end-to-end frames/s
from host memory through ``Integrator.integrate`` / ``integrate_stack`` (pinned staging, upload
and the Result's downloads included), single frame and batched (8 frames per pass over the map;
by the frames-in-lanes kernel and, for comparison, by the lane-split one), from pageable and
from page-locked (``Integrator.host_buffer``) host frames, next to two limits:

* HBM limit: bytes the kernels read per frame (map + frame + outputs) ÷ measured device-to-device
  bandwidth (batched passes also read and write each frame once more to interleave it, which
  this limit does not count);
* host→device limit: frame bytes ÷ measured pinned host→device bandwidth.

midas-integrate's torch CUDA path is timed on the same frames when it is importable (the
``bench`` extra); otherwise its column says why not.

Run on a GPU machine: ``python benches/gpu.py [--frames 64] [--markdown]``. Without a usable GPU
it prints why and exits 0. ``--smoke`` runs every step on tiny detectors (the test suite does so
on the fake CuPy, so a device run never finds the script broken).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time

import numpy as np

DETECTORS = [
    # name, (rows, columns), pixel µm, dtype
    ("Pilatus 2M", (1679, 1475), 172, np.uint32),
    ("Eiger 4M", (2167, 2070), 75, np.uint32),
    ("Eiger 4M", (2167, 2070), 75, np.uint16),
]
#: --smoke: every code path of the table on detectors the fake CuPy integrates in moments.
SMOKE_DETECTORS = [("tiny", (47, 43), 172, np.uint32), ("tiny", (47, 43), 172, np.uint16)]


def _config(shape: tuple[int, int], px_um: float):
    from radint import IntegrationConfig

    rows, cols = shape
    r_max = 0.5 * float(np.hypot(rows, cols))
    text = f"""
NrPixelsY {cols}
NrPixelsZ {rows}
px {px_um}
Lsd 1000000
BC {cols / 2 + 0.3} {rows / 2 - 0.7}
Wavelength 0.172973
RMin 1
RMax {r_max:.0f}
RBinSize 1
EtaMin -180
EtaMax 180
EtaBinSize 5
"""
    return IntegrationConfig.from_text(text, "bench.txt")


def _bandwidths(cp, n: int = 1 << 28) -> tuple[float, float]:
    """(device→device GB/s counted as read + write, pinned host→device GB/s), copying n bytes
    (256 MiB)."""
    import cupyx

    a = cp.empty(n, dtype=np.uint8)
    b = cp.empty(n, dtype=np.uint8)
    b[...] = a
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(10):
        b[...] = a
    stop.record()
    stop.synchronize()
    d2d = 2 * n * 10 / (cp.cuda.get_elapsed_time(start, stop) * 1e-3) / 1e9
    h = cupyx.empty_pinned((n,), dtype=np.uint8)
    h[:] = 1
    a.set(h)
    start.record()
    for _ in range(5):
        a.data.copy_from_host_async(ctypes.c_void_p(h.ctypes.data), n, cp.cuda.get_current_stream())
    stop.record()
    stop.synchronize()
    h2d = n * 5 / (cp.cuda.get_elapsed_time(start, stop) * 1e-3) / 1e9
    return d2d, h2d


def _kernel_ms_per_frame(cp, gpu, frames_dev, reps: int) -> float:
    """Device time of the kernels per frame, frames already on the device. A stack: wall time
    of the calls (the device is the bottleneck; passes overlap on the streams). A single frame:
    CUDA events around the pass's kernels, since a call's host time (~0.1 ms of Python and
    launches) would otherwise be most of what is measured."""
    gpu.integrate_device(frames_dev)  # warm-up (compile, allocations)
    cp.cuda.Device().synchronize()
    if frames_dev.ndim == 2:
        gpu._pass_events = []
        for _ in range(max(reps, 20)):
            gpu.integrate_device(frames_dev)
        cp.cuda.Device().synchronize()
        events, gpu._pass_events = gpu._pass_events, None
        return sum(cp.cuda.get_elapsed_time(a, b) for a, b in events) / len(events)
    t0 = time.perf_counter()
    for _ in range(reps):
        gpu.integrate_device(frames_dev)
    cp.cuda.Device().synchronize()
    return (time.perf_counter() - t0) / (reps * frames_dev.shape[0]) * 1e3


def _end_to_end_fps(integ, frames_host, reps: int) -> float:
    """Frames/s through the user's call: host frames in, a Result (cake, lineout, their sigmas,
    area, count as host arrays) out."""
    run = integ.integrate if frames_host.ndim == 2 else integ.integrate_stack
    run(frames_host)
    t0 = time.perf_counter()
    for _ in range(reps):
        run(frames_host)
    n = 1 if frames_host.ndim == 2 else frames_host.shape[0]
    return reps * n / (time.perf_counter() - t0)


_MIDAS_GEOMS: dict = {}


def _midas_integrate(cfg, host: np.ndarray, reps: int, device: str = "cuda") -> tuple[str, str]:
    """midas-integrate 0.9.0's torch CUDA path on the same frames, as its ``FrameServer`` runs
    a frame (pinned upload, CSR SpMV into the cake, area-weighted lineout, both back to the
    host): (kernel ms/frame with the frame already on the device, end-to-end frames/s), as
    text, or why not."""
    try:
        import torch
        from midas_integrate.detector_mapper import build_map
        from midas_integrate.kernels import build_csr, integrate, profile_1d
        from midas_integrate.params import parse_params
    except ImportError as e:
        why = f"n/a ({e.name or e} not importable: pip install 'radint[bench]' && pip install --no-deps midas-integrate==0.9.0)"
        return why, why
    import os
    import tempfile
    from pathlib import Path

    if device == "cuda" and not torch.cuda.is_available():
        return "n/a (torch sees no CUDA device)", "n/a"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    key = host.shape[1:]
    if key not in _MIDAS_GEOMS:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "params.txt"
            path.write_text(cfg.midas_text())
            params = parse_params(str(path))
            pixmap = build_map(params, n_jobs=os.cpu_count() or 1).as_pixel_map()
            _MIDAS_GEOMS[key] = build_csr(
                pixmap, n_r=params.n_r_bins, n_eta=params.n_eta_bins,
                n_pixels_y=params.NrPixelsY, n_pixels_z=params.NrPixelsZ,
                dtype=torch.float32, build_modes=("floor",), device=device,
            )  # fmt: skip
    geom = _MIDAS_GEOMS[key]

    def run(img):
        cake = integrate(img, geom)
        return cake, profile_1d(cake, geom, mode="area_weighted")

    dev = torch.from_numpy(host[0].astype(np.float32)).to(device)
    run(dev)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps * 10):
        run(dev)
    sync()
    kernel_ms = (time.perf_counter() - t0) / (reps * 10) * 1e3

    def end_to_end(frame: np.ndarray) -> None:
        pinned = torch.from_numpy(np.ascontiguousarray(frame))
        if device == "cuda":
            pinned = pinned.pin_memory()
        try:
            img = pinned.to(device=geom.device, dtype=geom.dtype, non_blocking=True)
        except (RuntimeError, TypeError):  # a torch without this integer type on the device
            img = torch.from_numpy(frame.astype(np.float32)).to(device)
        cake, lineout = run(img)
        cake.cpu().numpy(), lineout.cpu().numpy()

    end_to_end(host[0])
    t0 = time.perf_counter()
    for frame in host:
        end_to_end(frame)
    fps = host.shape[0] / (time.perf_counter() - t0)
    return f"{kernel_ms:.3f}", f"{fps:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64, help="frames per batched run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument(
        "--smoke", action="store_true",
        help="tiny detectors and fit set: check the script runs (the tests do, on the fake CuPy)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    detectors = SMOKE_DETECTORS if args.smoke else DETECTORS

    from radint.gpu import cuda_available

    ok, why = cuda_available()
    if not ok:
        print(f"benches/gpu.py: no GPU benchmark here: {why}")
        return 0
    import cupy as cp

    import radint.gpu
    from radint import Integrator

    default_lanes_min = radint.gpu.LANES_MIN_FRAMES

    print(f"device: {why}")
    d2d, h2d = _bandwidths(cp, 1 << 20) if args.smoke else _bandwidths(cp)
    print(f"measured bandwidth: device {d2d:.0f} GB/s, pinned host->device {h2d:.1f} GB/s")
    rows = []
    spread_lines = []  # pyFAI's azimuthal error model against Poisson, batched from pinned frames
    rng = np.random.default_rng(0)
    for name, shape, px, dtype in detectors:
        cfg = _config(shape, px)
        integ = Integrator(cfg, backend="cuda", solid_angle=None, polarization=None)
        gpu = integ._gpu_backend()
        m = integ.map
        hi = 4000 if dtype == np.uint16 else 100000
        host = rng.integers(0, hi, (args.frames, *shape)).astype(dtype)
        dev = cp.asarray(host)
        frame_bytes = host[0].nbytes
        map_bytes = m.n_entries * (4 + 4) + (m.n_bins + 1) * 8
        out_bytes = m.n_bins * (4 * 8 + 4)
        try:  # per frame: the same for both rows
            peer = _midas_integrate(cfg, host, args.reps)
        except Exception as e:  # the peer's failure must not lose radint's numbers
            peer = (f"n/a ({type(e).__name__}: {e})",) * 2
        # Frames in page-locked memory (Integrator.host_buffer, as radint stream receives
        # them) go to the GPU by DMA with no staging copy.
        pinned = integ.host_buffer(host.shape, host.dtype)
        pinned[...] = host
        kernel_ms: dict[tuple[int, int], float] = {}
        for mode, nf, frames, lanes_min in (
            ("single", 1, host, default_lanes_min),
            ("batch", args.frames, host, default_lanes_min),
            # The same passes through the lane-split kernel (frames interleaved by block).
            ("batch, lane split", args.frames, host, radint.gpu.MAX_NB + 1),
            ("single, pinned frames", 1, pinned, default_lanes_min),
            ("batch, pinned frames", args.frames, pinned, default_lanes_min),
        ):
            radint.gpu.LANES_MIN_FRAMES = lanes_min
            # Kernel time does not depend on where the host frames lie: pinned rows repeat it.
            if (nf, lanes_min) not in kernel_ms:
                kernel_ms[nf, lanes_min] = _kernel_ms_per_frame(
                    cp, gpu, dev[0] if nf == 1 else dev, args.reps
                )
            k_ms = kernel_ms[nf, lanes_min]
            fps = _end_to_end_fps(integ, frames[0] if nf == 1 else frames, args.reps)
            radint.gpu.LANES_MIN_FRAMES = default_lanes_min
            if mode == "batch, pinned frames":
                spread = Integrator(cfg, backend="cuda", detector_map=m, solid_angle=None,
                                    polarization=None, error_model="azimuthal")  # fmt: skip
                spread_fps = _end_to_end_fps(spread, frames, args.reps)
                spread_lines.append(
                    f"{name} {np.dtype(dtype).name}: azimuthal {spread_fps:.0f} fps, Poisson "
                    f"{fps:.0f} fps ({spread_fps / fps:.2f}x)"
                )
            # Batched, the map is read once per 8 frames.
            per_frame_read = frame_bytes + out_bytes + map_bytes / (1 if nf == 1 else 8)
            hbm_ms = per_frame_read / (d2d / 2 * 1e9) * 1e3
            h2d_fps = h2d * 1e9 / frame_bytes
            rows.append(
                (
                    f"{name} {np.dtype(dtype).name}",
                    mode,
                    f"{k_ms:.3f}",
                    f"{hbm_ms:.3f}",
                    f"{100 * hbm_ms / k_ms:.0f}%",
                    f"{fps:.0f}",
                    f"{h2d_fps:.0f}",
                    f"{100 * fps / h2d_fps:.0f}%",
                    *peer,
                )
            )
    head = (
        "detector",
        "mode",
        "kernel ms/frame",
        "HBM limit ms",
        "of HBM limit",
        "end-to-end fps",
        "H2D limit fps",
        "of H2D limit",
        "midas-integrate kernel ms",
        "midas-integrate fps",
    )
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in rows:
            print("  ".join(f"{h}={v}" for h, v in zip(head, r)))
    print(
        "\nerror_model='azimuthal' (ri_spread_* after the sums), batch, pinned frames, end to end:"
    )
    for line in spread_lines:
        print(f"  {line}")
    if args.smoke:
        _fit_section(cp, args.frames, args.reps, shape=(168, 148), n_lineouts=20)
    else:
        _fit_section(cp, args.frames, args.reps)
    return 0


def _fit_section(
    cp, n_frames: int, reps: int, shape: tuple[int, int] = (1679, 1475), n_lineouts: int = 1000
) -> None:
    """Issue 9: 10 fitted peaks per frame on the device vs integration alone, and the CUDA
    fitter vs the Rust fitter on the same ``n_lineouts`` lineouts (Pilatus 2M geometry; rings
    at the same fractions of the detector on another shape)."""
    from radint import Integrator
    from radint.fit import fit_peaks
    from radint.gpu.fit import CudaFitter
    from radint.testing import ring_image

    cfg = _config(shape, 172).replace(r_bin_px=0.25, eta_bin_deg=360.0)
    ring_px = np.linspace(150, 700, 10) * shape[0] / 1679
    tth = np.degrees(np.arctan(ring_px * 172 / cfg.lsd_um))
    host = np.stack(
        [ring_image(cfg, tth, fwhm_deg=0.03, noise=True, seed=k) for k in range(n_frames)]
    )
    plain = Integrator(cfg, backend="cuda")
    fitted = Integrator(cfg, backend="cuda", fit={"positions_two_theta_deg": list(tth)})
    for integ in (plain, fitted):
        integ.integrate_stack(host)  # warm-up
    # Stacks, and single frames as a stream mostly gets them (10 fits: 10 warps in flight).
    for what, call in ((f"{n_frames}-frame stacks", lambda i: i.integrate_stack(host)),
                       ("single frames", lambda i: [i.integrate(f) for f in host])):  # fmt: skip
        timings = {}
        for label, integ in (("integrate", plain), ("integrate + fit 10 peaks", fitted)):
            t0 = time.perf_counter()
            for _ in range(reps):
                call(integ)
            timings[label] = (time.perf_counter() - t0) / (reps * n_frames) * 1e3
        base = timings["integrate"]
        for label, ms in timings.items():
            print(f"{what:17} {label:26} {ms:8.3f} ms/frame  "
                  f"({100 * (ms / base - 1):+.0f} % vs integrate)")  # fmt: skip
    lines = plain.integrate_stack(host).lineout
    ys = np.ascontiguousarray(np.tile(lines, (n_lineouts // n_frames + 1, 1))[:n_lineouts])
    x = plain.integrate(host[0]).radius_px
    positions = list(ring_px)
    fitter = CudaFitter(x, positions)
    fitter.fit(ys)
    t0 = time.perf_counter()
    fitter.fit(ys)
    gpu_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_peaks(x, ys, positions=positions)
    cpu_s = time.perf_counter() - t0
    n = ys.shape[0] * len(positions)
    print(f"fits/s on {n_lineouts} lineouts x 10 peaks: CUDA {n / gpu_s:,.0f}, Rust CPU {n / cpu_s:,.0f} "
          f"({cpu_s / gpu_s:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
