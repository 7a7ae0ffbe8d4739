"""The ``radint`` command line: map, info, integrate, stream, send.

MIDAS habit: ``Key value`` parameter overrides may follow the parameter file, e.g.
``radint integrate parameters.txt frames.tif RMax 800 EtaBinSize 2 -o out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from radint.config import IntegrationConfig
from radint.exceptions import RadintError

log = logging.getLogger("radint")


def _split_overrides(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate data paths from trailing ``Key value ...`` overrides (keys start uppercase or
    are known lower-case MIDAS keys like ``px``, ``tx``)."""
    lower_keys = {"px", "pxY", "pxZ", "tx", "ty", "tz"} | {f"p{i}" for i in range(15)}
    paths: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        is_key = (tok[:1].isupper() or tok in lower_keys) and not Path(tok).exists()
        if is_key:
            values = []
            i += 1
            while i < len(tokens) and not (tokens[i][:1].isupper() or tokens[i] in lower_keys):
                values.append(tokens[i])
                i += 1
            overrides.append(" ".join([tok, *values]))
        else:
            paths.append(tok)
            i += 1
    return paths, overrides


def _load_config(params: str, overrides: list[str]) -> IntegrationConfig:
    return IntegrationConfig.from_midas_params(params, overrides).validate()


def cmd_map(args: argparse.Namespace) -> int:
    """Build the exact map and write MIDAS Map.bin / nMap.bin (and maskMap.bin)."""
    from radint.detector_map import DetectorMap

    _, overrides = _split_overrides(args.overrides)
    config = _load_config(args.params, overrides)
    t0 = time.perf_counter()
    m = DetectorMap.build(config, n_threads=args.threads)
    elapsed = time.perf_counter() - t0
    out = Path(args.output)
    m.save_midas(out, config)
    stats = m.stats()
    print(
        f"map: {stats['n_r']} R x {stats['n_eta']} eta bins, {stats['n_entries']} entries "
        f"({stats['entries_per_pixel']:.2f}/pixel), built in {elapsed:.2f} s -> {out}/Map.bin, nMap.bin"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print the parsed configuration, unknown keys, bin counts and (optionally) map statistics."""
    from rich.console import Console
    from rich.table import Table

    _, overrides = _split_overrides(args.overrides)
    config = _load_config(args.params, overrides)
    console = Console()
    table = Table(title=f"radint configuration: {config.source}")
    table.add_column("field")
    table.add_column("value")
    table.add_column("set at")
    for name, value in config.to_dict().items():
        if name in ("unknown", "set_at"):
            continue
        where = ""
        for key, (file, line) in config.set_at.items():
            if _key_matches(key, name):
                where = f"{file}:{line}" if line else file
        table.add_row(name, str(value), where)
    console.print(table)
    r_edges, eta_edges = config.bin_edges()
    console.print(
        f"radial mode: {config.radial_mode}; {len(r_edges) - 1} radial bins "
        f"(R {r_edges[0]:.3f}..{r_edges[-1]:.3f} px), {len(eta_edges) - 1} eta bins"
    )
    if config.unknown:
        console.print("[yellow]keys radint does not use:[/yellow]")
        for key, value, file, line in config.unknown:
            console.print(f"  {file}:{line}: {key} {value}")
    if args.map:
        from radint.detector_map import DetectorMap

        t0 = time.perf_counter()
        m = DetectorMap.build(config, n_threads=args.threads)
        stats = m.stats()
        stats["build_seconds"] = round(time.perf_counter() - t0, 3)
        for k, v in stats.items():
            console.print(f"map.{k}: {v}")
    return 0


def _key_matches(midas_key: str, field_name: str) -> bool:
    from radint.config import _MIDAS_KEYS

    if midas_key == "BC":
        return field_name in ("bc_y_px", "bc_z_px")
    if midas_key == "px":
        return field_name in ("pixel_size_y_um", "pixel_size_z_um")
    return _MIDAS_KEYS.get(field_name) == midas_key


def _read_frames(path: Path) -> np.ndarray:
    """All frames of a TIFF / HDF5 / NumPy file as a stack (n, rows, columns)."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        data = tifffile.imread(path)
    elif suffix == ".npy":
        data = np.load(path)
    elif suffix in (".h5", ".hdf5", ".hdf", ".nxs"):
        import h5py

        with h5py.File(path, "r") as f:
            if "exchange/data" not in f:
                raise RadintError(f"{path}: no dataset 'exchange/data'")
            data = f["exchange/data"][()]
    else:
        raise RadintError(f"{path}: unsupported file type '{suffix}' (tif, h5, npy)")
    return data[np.newaxis] if data.ndim == 2 else data


def cmd_integrate(args: argparse.Namespace) -> int:
    """Integrate frames; write <stem>_lineout.xy and <stem>.npz (cake, lineout, axes) per file."""
    from rich.progress import Progress

    from radint.integrator import Integrator

    paths, overrides = _split_overrides(args.data)
    if not paths:
        raise RadintError("no data files given")
    config = _load_config(args.params, overrides)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    integrator = Integrator(
        config, backend=args.backend, n_threads=args.threads, cache_dir=out_dir / ".radint-cache"
    )
    dark = None
    if args.dark:
        dark = _read_frames(Path(args.dark)).astype(np.float64).mean(axis=0)
    failures = 0
    with Progress(disable=args.quiet or not sys.stdout.isatty()) as progress:
        task = progress.add_task("integrating", total=len(paths))
        for p in map(Path, paths):
            try:
                frames = _read_frames(p)
                t0 = time.perf_counter()
                result = integrator.integrate_stack(frames, dark=dark)
                rate = len(frames) / max(time.perf_counter() - t0, 1e-9)
                written = _write_simple(result, out_dir / p.name.split(".")[0])
                msg = f"{p}: {len(frames)} frame(s), {rate:.1f} frames/s -> {', '.join(map(str, written))}"
                progress.console.print(msg) if progress.live.is_started else print(msg)
            except (RadintError, OSError, ValueError) as e:
                failures += 1
                print(f"radint: {p}: {e}", file=sys.stderr)
            progress.advance(task)
    if failures:
        print(f"radint: {failures} of {len(paths)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


def _write_simple(result, stem: Path) -> list[Path]:
    """Lineouts as MIDAS-style ``_lineout.xy`` text and everything as ``.npz``."""
    xy = stem.with_name(stem.name + "_lineout.xy")
    with open(xy, "w") as f:
        f.write("# 2theta_deg  intensity\n")
        for k in range(result.n_frames):
            line = result.frame(k).lineout
            for x, y in zip(result.two_theta_deg, line):
                f.write(f"{x:.6f}  {y:.6f}\n")
    npz = stem.with_suffix(".npz")
    np.savez_compressed(
        npz,
        cake=result.cake,
        lineout=result.lineout,
        lineout_sigma=result.lineout_sigma if result.lineout_sigma is not None else np.array([]),
        radius_px=result.radius_px,
        two_theta_deg=result.two_theta_deg,
        q_inv_angstrom=result.q_inv_angstrom,
        eta_deg=result.eta_deg,
    )
    return [xy, npz]


def cmd_stream(args: argparse.Namespace) -> int:
    """Integrate frames as they arrive (TCP / PVA / folder) into DIR/stream.h5."""
    import signal

    from radint.integrator import Integrator
    from radint.stream import FolderSource, Pipeline, PvaSource, TcpSource

    _, overrides = _split_overrides(args.overrides)
    config = _load_config(args.params, overrides)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.source == "tcp":
        source = TcpSource(config.shape, host=args.host, port=args.port)
    elif args.source == "pva":
        if not args.channel:
            raise RadintError("--source pva needs --channel NAME")
        source = PvaSource(args.channel, config.shape)
    else:
        if not args.watch:
            raise RadintError("--source folder needs --watch DIR")
        source = FolderSource(args.watch, config.shape)
    integrator = Integrator(
        config, backend=args.backend, n_threads=args.threads, cache_dir=out_dir / ".radint-cache"
    )
    pipeline = Pipeline(
        integrator,
        [source],
        out_dir,
        save_interval=args.save_interval,
        max_frames=args.max_frames,
        idle_timeout=args.timeout,
        midas_files=args.midas_files,
    )

    def on_signal(signum: int, _frame: object) -> None:
        log.info("stream: %s received, draining", signal.Signals(signum).name)
        pipeline.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    summary = pipeline.run(status="none" if args.quiet else "auto")
    print(summary.line())
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """Send frame files to a MIDAS-protocol server (radint stream or MIDAS's GPU program)."""
    from radint.stream.sender import expand_inputs, iter_file_frames, send_frames

    paths, overrides = _split_overrides(args.data)
    config = _load_config(args.params, overrides)
    files = expand_inputs(paths, args.extension)
    if not files:
        raise RadintError("no frame files to send")
    t0 = time.perf_counter()
    n = send_frames(
        iter_file_frames(files, args.h5_location),
        host=args.host,
        port=args.port,
        compress=args.compress,
        mapping_file=args.mapping_file,
        save_interval=args.save_interval,
        shape=config.shape,
    )
    elapsed = time.perf_counter() - t0
    print(f"send: {n} frame(s) in {elapsed:.2f} s ({n / max(elapsed, 1e-9):.1f} frames/s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="radint",
        description="Radial (azimuthal) integration of X-ray area-detector images (MIDAS-compatible).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("map", help="build the exact detector map, write MIDAS Map.bin/nMap.bin")
    p.add_argument("params", help="MIDAS parameter file")
    p.add_argument("overrides", nargs="*", help="MIDAS 'Key value' overrides")
    p.add_argument("-o", "--output", default=".", help="output directory (default: .)")
    p.add_argument("-j", "--threads", type=int, default=None, help="threads (default: all)")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("info", help="print the parsed configuration and bin/map statistics")
    p.add_argument("params")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--map", action="store_true", help="also build the map and print its statistics")
    p.add_argument("-j", "--threads", type=int, default=None)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("integrate", help="integrate frame files into lineouts and cakes")
    p.add_argument("params")
    p.add_argument("data", nargs="+", help="frame files (tif, h5, npy), then 'Key value' overrides")
    p.add_argument("-o", "--output", default=".", help="output directory")
    p.add_argument("--dark", help="dark file (frames are averaged)")
    p.add_argument("--backend", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("-j", "--threads", type=int, default=None)
    p.set_defaults(func=cmd_integrate)

    p = sub.add_parser(
        "stream", help="integrate frames live from TCP (MIDAS protocol), PVA or a folder"
    )
    p.add_argument("params", help="MIDAS parameter file")
    p.add_argument("overrides", nargs="*", help="MIDAS 'Key value' overrides")
    p.add_argument("-o", "--output", required=True, help="output directory (stream.h5)")
    p.add_argument("--source", default="tcp", choices=["tcp", "pva", "folder"])
    p.add_argument("--host", default="127.0.0.1", help="TCP address to listen on")
    p.add_argument("--port", type=int, default=60439, help="TCP port (default 60439)")
    p.add_argument("--channel", help="PVA channel (NTNDArray), for --source pva")
    p.add_argument("--watch", help="directory to watch, for --source folder")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--save-interval", type=int, default=100, help="flush every N frames")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--timeout", type=float, default=None, help="stop after S s without frames")
    p.add_argument("--midas-files", action="store_true", help="also write lineout.bin, Int2D.bin")
    p.add_argument("-j", "--threads", type=int, default=None)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("send", help="send frame files to a MIDAS-protocol TCP server")
    p.add_argument("params", help="MIDAS parameter file (frame size)")
    p.add_argument("data", nargs="+", help="files or directories, then 'Key value' overrides")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=60439)
    p.add_argument("--compress", action="store_true", help="uint16, or hybrid dtype 6 above 65535")
    p.add_argument("--extension", help="only files with this suffix in directories (e.g. tif)")
    p.add_argument("--h5-location", default="exchange/data", help="HDF5 dataset of the frames")
    p.add_argument("--mapping-file", default="frame_mapping.json")
    p.add_argument("--save-interval", type=int, default=500, help="rewrite the mapping every N")
    p.set_defaults(func=cmd_send)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radint`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO,
        format="radint: %(message)s",
    )
    try:
        return args.func(args)
    except RadintError as e:
        print(f"radint: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
