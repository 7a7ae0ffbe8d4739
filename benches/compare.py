"""radint vs pyFAI vs midas-integrate on the same synthetic CeO2 frames: one table.

Each (peer, detector, task, threads) case runs in its own subprocess so peak RSS and thread
counts are that case's alone. Run: ``python benches/compare.py [--quick]``; midas-integrate is
included when importable (the ``bench`` extra). Times are medians after half a second of
warm-up calls. The frames are uint32; the ``radint f32`` rows integrate them as float32 (the
type midas-integrate computes in). ``radint x``: each row's time over radint's on uint32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DETECTORS = {
    "Pilatus 2M": {"n_y": 1475, "n_z": 1679, "px": 172.0, "bc": (685.49, 921.03)},
    "Eiger 4M": {"n_y": 2070, "n_z": 2167, "px": 75.0, "bc": (1035.2, 1083.7)},
}
GEOMETRY = {"lsd_um": 657436.9, "ty_deg": 0.2, "tz_deg": 0.45, "wavelength_angstrom": 0.172973}


def config_for(detector: str, task: str):
    import numpy as np

    from radint import IntegrationConfig

    d = DETECTORS[detector]
    corners = [(0, 0), (d["n_y"], 0), (0, d["n_z"]), (d["n_y"], d["n_z"])]
    r_max = max(np.hypot(y - d["bc"][0], z - d["bc"][1]) for y, z in corners)
    base = IntegrationConfig(
        n_pixels_y=d["n_y"],
        n_pixels_z=d["n_z"],
        pixel_size_y_um=d["px"],
        pixel_size_z_um=d["px"],
        bc_y_px=d["bc"][0],
        bc_z_px=d["bc"][1],
        **GEOMETRY,
    )
    if task == "2D":
        return base.replace(
            r_min_px=1.0, r_max_px=float(np.floor(r_max)), r_bin_px=1.0, eta_bin_deg=5.0
        )
    tth_max = float(np.degrees(np.arctan(r_max * d["px"] / GEOMETRY["lsd_um"])))
    return base.replace(
        tth_min_deg=0.0, tth_max_deg=tth_max, tth_bin_deg=tth_max / 3000, eta_bin_deg=360.0
    )


def frames_for(config, n: int):
    import numpy as np

    from radint.testing import ring_image

    mean = ring_image(config, noise=False, dtype=np.float64)
    rng = np.random.default_rng(0)
    return rng.poisson(mean, size=(n, *config.shape)).astype(np.uint32)


def median_time(fn, repeats: int, warm_s: float = 0.5) -> float:
    """Median of ``repeats`` calls after at least ``warm_s`` of calls (3 at least): the steady
    rate a stream sees (radint's first ~20 calls after the map build run up to 15 % slower)."""
    t_end = time.perf_counter() + warm_s
    for k in range(1_000_000):
        fn()
        if k >= 2 and time.perf_counter() > t_end:
            break
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(peer: str, detector: str, task: str, threads: int, n_stack: int, repeats: int) -> dict:
    """One measurement, in this (child) process."""
    import numpy as np

    config = config_for(detector, task)
    frames = frames_for(config, n_stack)
    frame = frames[0]
    out: dict = {"peer": peer, "detector": detector, "task": task, "threads": threads}
    if peer == "radint f32":  # the frames as float32, as midas-integrate reads them
        frames = frames.astype(np.float32)
        frame = frames[0]
    t0 = time.perf_counter()
    if peer.startswith("radint"):
        from radint import DetectorMap, Integrator

        m = DetectorMap.build(config, n_threads=threads)
        integ = Integrator(config, detector_map=m, n_threads=threads, error_model=None)
        integ.integrate(frame)
        out["setup_s"] = time.perf_counter() - t0
        out["frame_ms"] = 1e3 * median_time(lambda: integ.integrate(frame), repeats)
        t1 = time.perf_counter()
        integ.integrate_stack(frames)
        out["stack_fps"] = n_stack / (time.perf_counter() - t1)
        out["entries"] = m.n_entries
        csr_bytes = m.n_entries * 8 + m.indptr.nbytes
        out["traffic_mb"] = (csr_bytes + frame.nbytes) / 1e6
    elif peer.startswith("pyFAI"):
        import pyFAI

        from radint.poni import write_poni

        split = "full" if "full" in peer else "bbox"
        poni = Path(os.environ.get("TMPDIR", "/tmp")) / f"radint-bench-{os.getpid()}.poni"
        write_poni(config, poni)
        ai = pyFAI.load(str(poni))
        method = (split, "csr", "cython")
        if task == "1D":
            rng = (config.tth_min_deg, config.tth_max_deg)

            def call(f=frame):
                return ai.integrate1d(
                    f,
                    3000,
                    unit="2th_deg",
                    radial_range=rng,
                    method=method,
                    correctSolidAngle=False,
                )
        else:
            r_mm = (
                config.r_min_px * config.pixel_size_y_um / 1e3,
                config.r_max_px * config.pixel_size_y_um / 1e3,
            )
            n_r = round(config.r_max_px - config.r_min_px)

            def call(f=frame):
                return ai.integrate2d(
                    f,
                    n_r,
                    72,
                    unit="r_mm",
                    radial_range=r_mm,
                    method=method,
                    correctSolidAngle=False,
                )

        call()
        out["setup_s"] = time.perf_counter() - t0
        out["frame_ms"] = 1e3 * median_time(call, repeats)
        t1 = time.perf_counter()
        for f in frames:
            call(f)
        out["stack_fps"] = n_stack / (time.perf_counter() - t1)
        poni.unlink()
    elif peer == "midas-integrate":
        import torch

        torch.set_num_threads(threads)
        from midas_integrate.detector_mapper import build_map
        from midas_integrate.kernels import build_csr, integrate
        from midas_integrate.params import parse_params

        p = Path(os.environ.get("TMPDIR", "/tmp")) / f"radint-bench-{os.getpid()}.txt"
        p.write_text(config.midas_text())
        params = parse_params(str(p))
        res = build_map(params, n_jobs=threads)
        geom = build_csr(
            res.as_pixel_map(),
            n_r=params.n_r_bins,
            n_eta=params.n_eta_bins,
            n_pixels_y=params.NrPixelsY,
            n_pixels_z=params.NrPixelsZ,
            dtype=torch.float32,
            build_modes=("floor",),
        )
        img = torch.from_numpy(frame.astype(np.float32))
        integrate(img, geom)
        out["setup_s"] = time.perf_counter() - t0
        out["frame_ms"] = 1e3 * median_time(lambda: integrate(img, geom), repeats)
        t1 = time.perf_counter()
        for f in frames:
            integrate(torch.from_numpy(f.astype(np.float32)), geom)
        out["stack_fps"] = n_stack / (time.perf_counter() - t1)
        p.unlink()
    out["rss_mb"] = peak_rss_mb()
    return out


def copy_bandwidth_gbs() -> float:
    import numpy as np

    a = np.ones(64 * 2**20 // 8)
    b = np.empty_like(a)
    t = median_time(lambda: np.copyto(b, a), 9)
    return 2 * a.nbytes / t / 1e9  # read + write


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return
    quick = "--quick" in sys.argv
    if len(sys.argv) > 2 and sys.argv[1] == "--case":
        args = json.loads(sys.argv[2])
        print(json.dumps(run_case(**args)))
        return
    peers = ["radint", "radint f32", "pyFAI full", "pyFAI bbox"]
    try:
        import midas_integrate  # noqa: F401

        peers.append("midas-integrate")
    except ImportError:
        print(
            "# midas-integrate not installed (pip install '.[bench]' && pip install --no-deps midas-integrate==0.9.0): its columns are skipped"
        )
    n_stack, repeats = (20, 5) if quick else (100, 15)
    rows = []
    for detector in DETECTORS:
        for task in ("2D", "1D"):
            for threads in (1, 2):
                for peer in peers:
                    case = {"peer": peer, "detector": detector, "task": task, "threads": threads,
                            "n_stack": n_stack, "repeats": repeats}  # fmt: skip
                    env = dict(
                        os.environ, OMP_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads)
                    )
                    proc = subprocess.run(
                        [sys.executable, __file__, "--case", json.dumps(case)],
                        capture_output=True, text=True, env=env, timeout=1800,
                    )  # fmt: skip
                    if proc.returncode != 0:
                        print(
                            f"# {peer} {detector} {task} {threads}t failed: {proc.stderr.strip().splitlines()[-1:]}"
                        )
                        continue
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                    print(f"# done {peer} {detector} {task} {threads}t", file=sys.stderr)
    bw = copy_bandwidth_gbs()
    print(f"copy bandwidth (numpy, 1 thread): {bw:.1f} GB/s")
    header = f"{'detector':11} {'task':4} {'thr':>3} {'peer':16} {'setup s':>8} {'ms/frame':>9} {'stack f/s':>9} {'RSS MB':>7} {'radint x':>8}"
    print(header)
    print("-" * len(header))
    for detector in DETECTORS:
        for task in ("2D", "1D"):
            for threads in (1, 2):
                group = [
                    r
                    for r in rows
                    if (r["detector"], r["task"], r["threads"]) == (detector, task, threads)
                ]
                ours = next((r for r in group if r["peer"] == "radint"), None)
                for r in group:
                    ratio = r["frame_ms"] / ours["frame_ms"] if ours else float("nan")
                    print(
                        f"{detector:11} {task:4} {threads:3d} {r['peer']:16} {r['setup_s']:8.2f} {r['frame_ms']:9.2f} {r['stack_fps']:9.1f} {r['rss_mb']:7.0f} {ratio:8.2f}"
                    )
                if ours:
                    floor_ms = ours["traffic_mb"] / 1e3 / bw * 1e3
                    print(
                        f"{'':11} {'':4} {'':3} {'  memory floor':16} {'':8} {floor_ms:9.2f}   (frame + CSR {ours['traffic_mb']:.0f} MB / copy bandwidth; radint stack = {1e3 / ours['stack_fps'] / floor_ms:.1f}x floor)"
                    )


if __name__ == "__main__":
    main()
