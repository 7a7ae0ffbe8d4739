"""The ``radint`` command line: map, info, integrate, batch, fit, convert, plot, stream, send.

MIDAS habit: ``Key value`` parameter overrides may follow the parameter file, e.g.
``radint integrate parameters.txt frames.tif RMax 800 EtaBinSize 2 -o out``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from radint.config import (
    FILE_KEYS,
    FIT_ROI_PADDING,
    SNIP_ITERATIONS,
    IntegrationConfig,
    near_key,
)
from radint.exceptions import RadintError

if TYPE_CHECKING:
    from radint.stream.sender import SendInterrupted

log = logging.getLogger("radint")


#: MIDAS parameter keys that start lower-case (the others start upper-case).
_LOWER_KEYS = {"px", "pxY", "pxZ", "tx", "ty", "tz"} | {f"p{i}" for i in range(15)}


def _is_key(token: str) -> bool:
    """A MIDAS parameter key: a word of letters and digits starting upper-case, or one of the
    lower-case keys (``px``, ``tx``, ``p0`` ...); never a path (``CeO2_0001.tif``)."""
    word = re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", token) is not None
    return word and (token[:1].isupper() or token in _LOWER_KEYS) and not Path(token).exists()


def _known_key(token: str) -> bool:
    """A parameter key radint reads, in any letter case (MIDAS's own spelling or a near miss)."""
    from radint.config import _MIDAS_KEYS, _OTHER_KEYS

    known = {*_MIDAS_KEYS.values(), *_OTHER_KEYS}
    return token in known or near_key(token) is not None


def _only_overrides(tokens: Sequence[str], command: str) -> list[str]:
    """The ``Key value`` overrides of a command that takes no data paths; anything else is an
    error (silently dropped, ``rmax 20`` or a stray file name went unnoticed)."""
    stray, overrides = _split_overrides(tokens)
    if stray:
        raise RadintError(
            f"radint {command}: {' '.join(stray)!r}: not a 'Key value' parameter override "
            "(keys are MIDAS parameter names, e.g. RMax 20; this command takes no data files)"
        )
    return overrides


def _split_overrides(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate data paths from ``Key value ...`` overrides, wherever these stand. A key takes
    the numbers that follow it; a word that is not a number only as its first value (the path
    of ``MaskFile``, ``PanelShiftsFile`` ...), so ``RMax 80 a.tif b.tif`` keeps both files.
    A key-like word radint does not know counts as a key only when a number follows it (another
    MIDAS program's ``Key 3``); otherwise it is a path, so a missing folder named ``Run8`` is
    reported as missing instead of being dropped as an unknown override. A quoted override
    (``'RBinSize 0.25'``, one argument) is taken as its words: it was reported as a missing
    file. A file key's path with a space is refused: a MIDAS parameter line (which the
    overrides are, and which the outputs record) ends a value at a space."""
    for k, tok in enumerate(tokens):
        words = tok.split(maxsplit=1)
        key, value = (words[0], words[1]) if len(words) == 2 and not Path(tok).exists() else (
            (tok, tokens[k + 1]) if k + 1 < len(tokens) else ("", "")
        )  # fmt: skip
        if key in FILE_KEYS and len(value.split()) > 1:
            raise RadintError(
                f"{key} {value!r}: a path with a space cannot be given (MIDAS parameter lines, "
                "which overrides are and outputs record, end a value at a space): rename it, or "
                "give a link to it without spaces"
            )
    tokens = [
        word
        for tok in tokens
        for word in (
            tok.split()
            if len(tok.split()) > 1 and _is_key(tok.split()[0]) and _known_key(tok.split()[0])
            and not Path(tok).exists()
            else [tok]
        )
    ]  # fmt: skip
    paths: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        followed_by_number = i + 1 < len(tokens) and _is_number(tokens[i + 1])
        if not _is_key(tok) or not (_known_key(tok) or followed_by_number):
            paths.append(tok)
            i += 1
            continue
        values: list[str] = []
        i += 1
        while i < len(tokens) and not _is_key(tokens[i]):
            if not (_is_number(tokens[i]) or not values):
                break
            values.append(tokens[i])
            i += 1
        overrides.append(" ".join([tok, *values]))
    return paths, overrides


def _files_named(*names: str | Path | None) -> list[str]:
    """The files of a run's dark / mask / flat values that are set (the file of a
    ``file.h5::/dataset`` value), which a folder of frames may hold beside them."""
    from radint.io.read import split_dataset

    return [split_dataset(str(name))[0] for name in names if name]


def _expand_data(
    paths: list[str], config: IntegrationConfig, params: str, dark: str | None,
    raw_dtype: str | None,
) -> list[str]:  # fmt: skip
    """DATA as files: folders, ``@list`` files and quoted patterns expanded (see
    :mod:`radint.io.inputs`), without the dark, mask and flat files a folder or pattern holds."""
    from radint.io.inputs import collect_inputs

    aux: list[str | Path] = []
    for name in _files_named(dark, config.dark_file, config.mask_file, config.flat_file):
        # as given, or (a parameter file's names) beside the parameter file
        aux += [name, Path(params).parent / name]
    files = collect_inputs(paths, raw_dtype, exclude=aux)
    if not files:
        raise RadintError("no data files given")
    return files


def _open_input(
    path: str | Path,
    config: IntegrationConfig,
    dataset: str | None,
    raw_dtype: str | None,
    zip_parameters: bool = True,
) -> Any:
    """The frame source of a data file as a run opens it: raw ones (``.raw``/``.bin``) read as
    ``raw_dtype``, MIDAS zips with the parameter file's SkipFrame / ω (``zip_parameters``;
    applying them also says which replace the zip's)."""
    from radint.io import open_frames

    raw = Path(path).suffix.lower() in (".raw", ".bin")
    return open_frames(path, dataset=dataset, shape=config.shape, dtype=raw_dtype if raw else None,
                       zip_parameters=config.zip_parameters() if zip_parameters else None)  # fmt: skip


def _check_frame_shapes(
    paths: list[str], config: IntegrationConfig, dataset: str | None, raw_dtype: str | None
) -> None:
    """Refuse, before the map is built, a run in which no input can be used: a mistyped
    detector size (``NrPixelsY 60000``) built a map of billions of pixels first, or ran out of
    memory doing so, only to refuse every frame; a wrong ``--dataset``, a dataset of strings,
    a truncated TIFF, a file that is not HDF5, a raw file without ``--raw-dtype`` were found
    only after the map was built. Only headers are read (no pixels), and probing stops at the
    first file that opens and fits: a run that has one goes on and reports each other bad file
    on its own, as before (a folder may hold a stray file). Missing files are left to the run
    (``integrate`` refuses them up front, ``batch`` reports them per file)."""
    unreadable: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...]]] = []
    fits = False
    for path in paths:
        if not (Path(path).is_file() or Path(path).is_dir()):
            continue  # missing (see above), or a FIFO or device: opening it may wait for a writer
        try:
            # Without the parameter file's SkipFrame / ω: the shapes do not depend on them,
            # and the run (a pool worker, perhaps) says which replace the zip's.
            with _open_input(path, config, dataset, raw_dtype, zip_parameters=False) as source:
                shape = tuple(source.frame_shape)
                _check_first_frame_extent(source, path)
        except (RadintError, ImportError, OSError) as e:  # ReaderError, DtypeError (strings)
            unreadable.append(str(e) if str(path) in str(e) else f"{path}: {e}")
            continue
        if shape != config.shape:
            mismatched.append((path, shape))
            continue
        fits = True
        break
    if unreadable and not fits and not mismatched:
        more = len(unreadable) - 1
        raise RadintError(
            unreadable[0]
            + (f"; and {more} more file(s) cannot be read" if more else "")
            + "; no map built"
        )
    if fits or not mismatched:
        return
    path, shape = mismatched[0]
    swapped = shape == config.shape[::-1]
    more = len(mismatched) - 1
    raise RadintError(
        f"{path}: frames of shape {shape}, but NrPixelsZ x NrPixelsY is {config.shape} "
        f"({config.where_set('n_pixels_z')}, {config.where_set('n_pixels_y')})"
        + (" (its transpose: are NrPixelsY and NrPixelsZ swapped?)" if swapped else "")
        + (f"; {more} more file(s) do not fit either" if more else "")
        + "; no map built"
    )


def _check_first_frame_extent(source: Any, path: str) -> None:
    """ReaderError where the file ends before its first frame's data does (a TIFF cut short
    behind an intact header), for formats that say where a frame's data lies; no pixels read."""
    from radint.io.errors import ReaderError

    need = source.data_end(0) if source.n_frames else None
    if need is None or not Path(path).is_file():
        return
    size = Path(path).stat().st_size
    if need > size:
        raise ReaderError(
            f"{path}: frame 0 is truncated: its data ends at byte {need}, the file at {size}"
        )


def _dark_path(
    given: str | None, config: IntegrationConfig, params: str, paths: Sequence[str] = ()
) -> str | None:
    """The dark to subtract: the one given on the command line, else the parameter file's
    ``Dark`` (as given, or beside the parameter file)."""
    if given or not config.dark_file:
        return str(Path(given).expanduser()) if given else None
    path = Path(config.dark_file).expanduser()
    if not path.is_absolute() and not path.exists():
        path = Path(params).parent / path
    if not path.exists():
        raise RadintError(f"{config.where_set('dark_file')}: {config.dark_file}: no such file")
    log.info("dark: %s (the parameters' Dark)", path)
    if any(str(p).lower().endswith(".zip") for p in paths):
        log.warning(
            "%s: this dark is subtracted from the MIDAS zips too, in place of their own "
            "exchange/dark (IntegratorZarrOMP ignores Dark and subtracts the zip's)",
            config.where_set("dark_file"),
        )
    return str(path)


def _looks_int64(path: str, frame_dtype: str, config: IntegrationConfig) -> bool:
    """Whether a raw dark read as ``frame_dtype`` (narrower than 8 bytes) is more likely whole
    int64 frames: a multiple of 8 bytes a pixel long, and each 8-byte value within the frame
    type's range (narrow pixels read 8 bytes at a time would make most of them huge)."""
    width = np.dtype(frame_dtype).itemsize
    n_pixels = config.n_pixels_y * config.n_pixels_z
    try:
        size = Path(path).stat().st_size
    except OSError:
        return False
    if width >= 8 or not n_pixels or size == 0 or size % (8 * n_pixels):
        return False
    values = np.fromfile(path, dtype="<i8", count=min(size // 8, 1 << 22))
    if not ((values != 0) & (values != -1)).any():
        return False  # all 0 / -1: both readings give the same dark, nothing to say
    return bool(((values >= -(1 << (8 * width - 1))) & (values < (1 << (8 * width)))).all())


def _read_dark(
    path: str | None,
    dataset: str | None,
    config: IntegrationConfig,
    raw_dtype: str | None,
    dark_dtype: str | None = None,
) -> np.ndarray | None:
    """The mean dark of ``path`` (None without one), read as the data are: GE and raw darks at
    the detector's shape (raw ones in ``dark_dtype``, else the frames' ``raw_dtype``), every
    other format checked against it, so a wrong dark fails once, naming its file, before any
    data file is read."""
    from radint.io import read_dark

    if not path:
        return None
    raw = Path(path).suffix.lower() in (".raw", ".bin")
    if raw and (dark_dtype or raw_dtype) is None:
        raise RadintError(
            f"{path}: a raw dark needs its pixel type: --dark-dtype, e.g. int64 for MIDAS's "
            "dark_avg.bin"
        )
    if (
        raw
        and dark_dtype is None
        and raw_dtype is not None
        and _looks_int64(path, raw_dtype, config)
    ):
        # MIDAS's darks are int64 frames whatever the frames' type: read in a narrower frame
        # type they pass for 2-4 times as many frames, averaged into nonsense.
        name = np.dtype(raw_dtype).name
        log.warning(
            "%s: read as %s (--raw-dtype, the frames' type), but its size and values look like "
            "int64 frames (MIDAS's dark_avg.bin: every 8-byte value is a small integer): give "
            "--dark-dtype int64 if so, --dark-dtype %s if not", path, name, name,
        )  # fmt: skip
    raw_dtype = dark_dtype or raw_dtype
    from radint.io.errors import ReaderError

    try:
        return read_dark(path, dataset=dataset, shape=config.shape,
                         dtype=raw_dtype if raw else None,
                         zip_parameters=config.zip_parameters())  # fmt: skip
    except ReaderError as e:  # the frames' option named where the dark's is meant
        hint = "(--dataset / -dataLoc chooses one)"
        if hint not in str(e):
            raise
        raise ReaderError(str(e).replace(hint, "(--dark-dataset / -darkLoc chooses one)")) from e


#: Geometry keys MIDAS needs (spec §1.2): their defaults describe no real detector.
_GEOMETRY_KEYS = (("Lsd",), ("BC",), ("px", "pxY"), ("Wavelength",))


def _load_config(
    params: str, overrides: list[str], args: argparse.Namespace | None = None
) -> IntegrationConfig:
    config = _read_config(params, overrides, args)
    if args is not None and getattr(args, "compat", None):
        from radint.integrator import check_compat, config_for_compat

        check_compat(config, args.compat)  # before any data is read (batch workers too)
        config = config_for_compat(config, args.compat)
    return config


def _read_config(
    params: str, overrides: list[str], args: argparse.Namespace | None
) -> IntegrationConfig:
    if _is_poni(params):
        # pyFAI geometry: MIDAS binning keys (RMin, RBinSize, EtaBinSize, ...) come as overrides.
        config = IntegrationConfig.from_poni(params)
        if overrides:
            config = config.with_overrides(overrides)
        if not (config.n_pixels_y and config.n_pixels_z):
            raise RadintError(
                f"{params}: the PONI file names no detector shape (Detector_config max_shape); "
                "give it as overrides: NrPixelsY N NrPixelsZ M"
            )
        config = config.validate()
        log.info(
            "%s: pyFAI geometry as MIDAS: Lsd %.1f µm, BC %.3f %.3f px, tx %.4f ty %.4f tz %.4f "
            "deg, px %g µm%s, Wavelength %g Å, %d x %d pixels%s%s",
            params, config.lsd_um, config.bc_y_px, config.bc_z_px, config.tx_deg, config.ty_deg,
            config.tz_deg, config.pixel_size_y_um,
            f", pxZ {config.pixel_size_z_um:g} µm (PixelShape rectangular: pixels of "
            "pyFAI's pixel1 high)" if config.pixel_shape == "rectangular" else "",
            config.wavelength_angstrom, config.n_pixels_y, config.n_pixels_z,
            f", ImTransOpt {' '.join(map(str, config.im_trans_opt))}" if config.im_trans_opt else "",
            f", ModuleGaps {' '.join(map(str, config.module_gaps))} (the gaps between modules "
            "masked, as pyFAI masks them)" if config.module_gaps else "",
        )  # fmt: skip
        return config if args is None else _with_fit_flags(config, args)
    config = IntegrationConfig.from_midas_params(params, overrides).validate()
    missing = [keys[0] for keys in _GEOMETRY_KEYS if not any(k in config.set_at for k in keys)]
    if missing:
        log.warning(
            "%s: no %s given; using the defaults (%s), which describe no real setup",
            params, ", ".join(missing),
            ", ".join(f"{k} {_default_text(config, k)}" for k in missing),
        )  # fmt: skip
    return config if args is None else _with_fit_flags(config, args)


def _format_list(text: str, flag: str = "--format") -> list[str]:
    """A comma-separated format option as a list of names; RadintError when it names none
    (``--format ""`` from an empty shell variable, or ``","``): the run would write nothing."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    if not formats:
        from radint.io.write import ALIASES, FORMATS

        raise RadintError(
            f"{flag} {text!r}: no output format given; give one or more of "
            f"{', '.join([*FORMATS, *ALIASES])}, comma-separated"
        )
    return formats


def _formats(text: str, config: IntegrationConfig) -> tuple[str, ...]:
    """``--format`` as a tuple, ``midas`` made explicit: with peak fitting on (DoPeakFit,
    --fit-peaks, --fit-auto) it adds IntegratorZarrOMP's fit files (fit.bin, per-η CSV and
    caked_peaks.h5)."""
    from radint.fit import FitSpec
    from radint.io.write import resolve_formats

    formats = tuple(_format_list(text))
    fitting = FitSpec.from_config(config) is not None
    fit_only = [f for f in formats if f.lower() in _FIT_FORMATS]
    if fit_only and not fitting:  # refused before the map is built and any file is read
        raise RadintError(
            f"--format {','.join(fit_only)}: no peaks are fitted; add --fit-peaks 2θ,... or "
            "--fit-auto N, or DoPeakFit 1 with PeakLocation / AutoDetectPeaks N to the "
            "parameters ('radint fit RESULT' fits a stored result)"
        )
    if not any(f.lower() == "midas" for f in formats):
        return formats
    return resolve_formats(formats, fitting)


#: Output formats that hold fitted peaks.
_FIT_FORMATS = ("peaks", "fit", "fit_per_eta", "caked_peaks", "peaks_per_eta")


def _echo(text: str) -> None:
    """print() for a running command's report: a reader that went away (`radint batch ... |
    head`) must not stop the run (it stopped a batch after 2 of 40 files, exit 0); from then
    on the lines go nowhere."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


#: Seconds between progress lines off a terminal, where the progress bars are off.
HEARTBEAT_S = 30.0


def _progress(columns: tuple, quiet: bool) -> Any:
    """Rich progress bars on a terminal; elsewhere (or with ``-q``) a disabled Progress whose
    console writes nowhere: rich < 14.3 printed a blank line on leaving a disabled one."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    if quiet or not sys.stdout.isatty():
        return Progress(*columns, disable=True, console=Console(file=io.StringIO()))
    return Progress(*columns)


def _check_run(
    paths: list[str], out_dir: Path, formats: tuple[str, ...], inputs_must_exist: bool
) -> None:
    """Mistakes found before the map is built: an unknown output format, inputs that do not
    exist (``integrate``; a batch reports them per file and goes on), an output folder that
    cannot be written."""
    from radint.io.write import expand_formats

    try:
        expand_formats(formats)
    except ValueError as e:
        raise RadintError(f"--format: {e}") from None
    missing = [p for p in paths if not Path(p).exists()]
    if inputs_must_exist and missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise RadintError(f"no such file or directory: {shown}")
    _check_writable(out_dir)


def _check_writable(out_dir: Path) -> None:
    """Refuse an output folder that cannot be written, before any work, naming the folder (the
    write failed later naming a hidden temporary file, ``DIR/.x.partial``). The folder is not
    left behind: folders made for the probe are removed, the run creates them when it has
    something to write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RadintError(f"-o {out_dir}: exists and is not a directory")
    missing: list[Path] = []
    here = out_dir.absolute()
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
        probe = out_dir / f".radint-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RadintError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _is_poni(path: str) -> bool:
    """A pyFAI PONI file (by extension, or a ``Poni1:`` line near the top)."""
    if path.lower().endswith(".poni"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace").lower()
    except OSError:
        return False
    return any(line.strip().startswith("poni1:") for line in head.splitlines())


def _default_text(config: IntegrationConfig, key: str) -> str:
    return {
        "Lsd": f"{config.lsd_um:g} µm",
        "BC": f"{config.bc_y_px:g} {config.bc_z_px:g} px",
        "px": f"{config.pixel_size_y_um:g} µm",
        "Wavelength": f"{config.wavelength_angstrom:g} Å",
    }[key]


def _float_list(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise RadintError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise RadintError(f"{flag}: no values given")
    return values


def _with_fit_flags(config: IntegrationConfig, args: argparse.Namespace) -> IntegrationConfig:
    """``--fit-peaks``/``--fit-auto`` as the MIDAS keys they stand for, so batch workers and the
    stream see them in the configuration (``DoPeakFit``, ``PeakLocation`` in R px, ...)."""
    peaks, auto = getattr(args, "fit_peaks", None), getattr(args, "fit_auto", None)
    if peaks and auto:
        raise RadintError("give --fit-peaks or --fit-auto, not both")
    if peaks:
        tth = np.radians(_float_list(peaks, "--fit-peaks"))
        r_px = np.tan(tth) * config.lsd_um / config.pixel_size_y_um
        return config.replace(
            do_peak_fit=True, auto_detect_peaks=False, peak_locations=tuple(map(float, r_px))
        )
    if auto:
        return config.replace(do_peak_fit=True, auto_detect_peaks=True, max_n_peaks=int(auto))
    return config


def cmd_map(args: argparse.Namespace) -> int:
    """Build the exact map and write MIDAS Map.bin / nMap.bin (and maskMap.bin)."""
    from radint.detector_map import DetectorMap

    overrides = _only_overrides(args.overrides, "map")
    config = _load_config(args.params, overrides)
    out = Path(args.output)
    _check_writable(out)  # before the map is built
    t0 = time.perf_counter()
    m = DetectorMap.build(config, n_threads=args.threads)
    elapsed = time.perf_counter() - t0
    m.check_not_empty(config, args.threads)  # an empty map would integrate nothing
    m.save_midas(out, config)
    stats = m.stats()
    files = "Map.bin, nMap.bin" + (", maskMap.bin" if (out / "maskMap.bin").exists() else "")
    print(
        f"map: {stats['n_r']} R x {stats['n_eta']} eta bins, {stats['n_entries']} entries "
        f"({stats['entries_per_pixel']:.2f}/pixel), built in {elapsed:.2f} s -> {out}/{files}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print the parsed configuration, unknown keys, bin counts and (optionally) map statistics;
    for a result file, its frames and the input file (and frame) each came from."""
    from rich.console import Console
    from rich.table import Table

    if _is_result_file(args.params):
        if args.overrides:
            raise RadintError(f"{args.params} is a result file: give it alone (and --row N)")
        if args.map:  # it was silently ignored
            raise RadintError(
                f"{args.params} is a result file: --map builds the map of a parameter file "
                "(radint info PARAMS --map)"
            )
        return _describe_result(args.params, args.row, verbose=args.verbose)
    from radint.io.describe import describe_output

    if (about := describe_output(args.params)) is not None:
        if args.overrides or args.row is not None:
            raise RadintError(f"{args.params} is an output file: give it alone")
        print(about)
        return 0
    if args.row is not None:
        raise RadintError("--row N describes a row of a result file (radint info RESULT --row N)")
    data, overrides = _split_overrides(args.overrides)
    config = _load_config(args.params, overrides)
    console = Console()
    table = Table(title=f"radint configuration: {config.source}")
    # Nothing cut with "…" in 80 columns (a pipe): the title names the file, "set at" its line.
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("set at", overflow="fold")
    for name, value in config.to_dict().items():
        if name in ("unknown", "set_at"):
            continue
        where = ""
        for key, (file, line) in config.set_at.items():
            if _key_matches(key, name, config):
                if file == config.source:
                    where = f"line {line}" if line else "the file"
                else:
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
    return _describe_data(console, config, data, args.dataset, args.raw_dtype)


def _describe_data(
    console: Any, config: IntegrationConfig, paths: list[str], dataset: str | None,
    raw_dtype: str | None,
) -> int:  # fmt: skip
    """One line per data file: format, frames, frame shape and pixel type, and whether the
    parameters' detector shape fits; 1 when a file cannot be read or does not fit."""
    from radint.io.errors import ReaderError

    bad = 0
    for path in paths:
        try:
            with _open_input(path, config, dataset, raw_dtype) as source:
                _check_first_frame_extent(source, path)  # as integrate checks it
                shape = tuple(source.frame_shape)
                fits = shape == config.shape
                bad += not fits
                dtype: object = source.dtype
                if dtype is None and source.n_frames:  # EDF/CBF: a type per frame
                    dtype = f"{source.read(0).dtype} (frame 0; each frame has its own)"
                swapped = " (its transpose: are NrPixelsY and NrPixelsZ swapped?)"
                used = len(source.default_indices())
                skipped = f" ({used} integrated: SkipFrame)" if used != source.n_frames else ""
                if used == 0 and source.n_frames:
                    bad += 1
                    skipped = f" [red](none integrated: SkipFrame {source.n_frames} or more)[/red]"
                console.print(
                    f"data {source.label}: {type(source).__name__.removesuffix('Source')}, "
                    f"{source.n_frames} frame(s){skipped} of {shape} {dtype}; "
                    + ("fits NrPixelsZ x NrPixelsY" if fits else
                       f"[red]NrPixelsZ x NrPixelsY is {config.shape}"
                       f"{swapped if shape == config.shape[::-1] else ''}[/red]")
                )  # fmt: skip
        except (ReaderError, ImportError, OSError) as e:
            bad += 1
            console.print(f"[red]data: {e}[/red]")
    return 1 if bad else 0


def _is_result_file(path: str) -> bool:
    """A radint NeXus result (HDF5 file or Zarr store with ``entry/azint1d``), not parameters."""
    p = Path(path)
    if p.is_dir():
        return (p / "entry" / "azint1d").is_dir()
    import h5py

    from radint.io.nexus import open_result

    try:
        if not p.is_file() or not h5py.is_hdf5(p):
            return False
        with open_result(p) as f:
            return "entry/azint1d/data" in f
    except OSError:
        return False


#: Input files ``radint info RESULT`` lists (all of them with -v).
_INFO_FILES = 20


def _text_value(node: Any) -> str:
    """A scalar string dataset or array of h5py / zarr as str."""
    value = node[()]
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tolist()
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe_result(path: str, row: int | None, verbose: bool = False) -> int:
    """``radint info RESULT``: frames, bins and, from ``entry/provenance``, the input files
    with the frames each gave (or, with ``row``, where that output frame came from)."""
    from radint.io import read_provenance
    from radint.io.nexus import open_result

    with open_result(path) as root:
        n_frames, n_r = root["entry/azint1d/data/I"].shape
        n_eta = root["entry/azint2d/data/I"].shape[1] if "entry/azint2d/data/I" in root else 0
        axis = root["entry/azint1d/data/radial_axis"]
        units = axis.attrs.get("units", "")
        units = units.decode() if isinstance(units, bytes) else units
        radial = np.asarray(axis[()])
        stream_counts = dict(root["entry/stream"].attrs) if "entry/stream" in root else {}
        columns = root["entry/stream/attributes"] if "entry/stream/attributes" in root else {}
        attributes = sorted(str(columns[key].attrs.get("attribute_name", key)) for key in columns)
        peak_columns = None
        if "entry/peaks/status" in root:
            centre = "center_two_theta" if units == "degrees" else "center_q"
            if f"entry/peaks/{centre}" not in root or units not in ("degrees", "1/angstrom"):
                centre = "center_px"
            centres = np.asarray(root[f"entry/peaks/{centre}"][()])
            if np.isnan(centres).all():  # no geometry known to convert R
                centre, centres = "center_px", np.asarray(root["entry/peaks/center_px"][()])
            area = np.asarray(root["entry/peaks/area"][()])
            area_err = (np.asarray(root["entry/peaks/area_errors"][()])
                        if "entry/peaks/area_errors" in root else np.full_like(area, np.nan))  # fmt: skip
            peak_columns = _PeakColumns(
                np.asarray(root["entry/peaks/status"][()]), centres, area, area_err,
                {"center_two_theta": "2θ (deg)", "center_q": "q (1/Å)"}.get(centre, "R (px)"),
            )  # fmt: skip
        made = [
            _text_value(root[f"entry/azint1d/reduction/input/{key}"])
            for key in ("rules", "backend")
            if f"entry/azint1d/reduction/input/{key}" in root
        ]
    span = f", radial axis {radial[0]:.4g}..{radial[-1]:.4g} {units}" if radial.size else ""
    print(f"result {path}: {n_frames} frame(s), {n_eta} eta x {n_r} radial bins{span}")
    if made:
        print(f"  made with: {'; backend '.join(made) if len(made) == 2 else made[0]}")
    if "frames_received" in stream_counts:  # a stream's counters (entry/stream)
        print(f"  stream: received {stream_counts['frames_received']}, written "
              f"{stream_counts.get('frames_written')}, dropped "
              f"{stream_counts.get('frames_dropped')}, partial frames discarded "
              f"{stream_counts.get('partial_frames_discarded')}")  # fmt: skip
    if attributes:
        names = ", ".join(attributes[:_INFO_FILES])
        more = f" and {len(attributes) - _INFO_FILES} more" if len(attributes) > _INFO_FILES else ""
        print(f"  NDAttributes per frame (entry/stream/attributes): {names}{more}")
    if peak_columns is not None and row is None:
        _describe_peaks(peak_columns, verbose=verbose)
    prov = read_provenance(path)
    if prov is None:
        print("  no entry/provenance: written without the input files recorded")
        return 0 if row is None else _no_row(path, row, n_frames)
    if row is not None:
        if not -n_frames <= row < n_frames:
            return _no_row(path, row, n_frames)
        file, index = prov.source(row)
        where = f"{file}, frame {index}" if file else "not known"
        print(f"  row {row % n_frames} (frame_id {prov.frame_id[row]}): {where}")
        if peak_columns is not None:
            _describe_peak_row(peak_columns, row % n_frames)
        return 0
    # Rows grouped by input file in one sort (a 100 000-file result lists quickly with -v).
    order = np.argsort(prov.file_index, kind="stable")
    used, starts, counts = np.unique(prov.file_index[order], return_index=True, return_counts=True)
    print(f"  from {len(prov.files)} input file(s) (entry/provenance):")
    shown = used if verbose else used[:_INFO_FILES]
    for k, start, count in zip(shown, starts, counts, strict=False):
        rows = order[start : start + count]
        frames = prov.frame_index[rows]
        name = prov.files[k] if k >= 0 else "(not known)"
        print(f"  {name}: {count} frame(s), its frames {frames.min()}..{frames.max()}, "
              f"output rows {rows[0]}..{rows[-1]}")  # fmt: skip
    if len(shown) < len(used):
        print(f"  ... and {len(used) - len(shown)} more input file(s) (-v lists them all)")
    return 0


@dataclass(frozen=True)
class _PeakColumns:
    """What ``radint info RESULT`` shows of ``entry/peaks`` ([n_frames, n_slots] each)."""

    status: np.ndarray
    centre: np.ndarray
    area: np.ndarray
    area_err: np.ndarray
    centre_label: str


def _describe_peak_row(peaks: _PeakColumns, row: int) -> None:
    """The fits of one output frame (``radint info RESULT --row N``), slots it filled only."""
    from radint.fit import STATUS_NAMES

    if row >= min(len(peaks.status), len(peaks.centre), len(peaks.area)):
        print("  its peaks: not written yet")  # a stream mid-append
        return
    for k, code in enumerate(peaks.status[row]):
        if code == 255:  # an absent slot
            continue
        if code == 0:
            fit = (f"centre {peaks.centre[row, k]:.6g} {peaks.centre_label}, area "
                   f"{peaks.area[row, k]:.4g} ± {peaks.area_err[row, k]:.2g}")  # fmt: skip
        else:
            fit = STATUS_NAMES.get(int(code), f"code {code}")
        print(f"  peak {k}: {fit}")


def _describe_peaks(peaks: _PeakColumns, verbose: bool) -> None:
    """The fitted peaks of ``entry/peaks``: per slot that any frame filled, how many frames
    converged and the median centre and area of those fits."""
    from radint.fit import STATUS_NAMES

    n_rows = min(
        len(peaks.status), len(peaks.centre), len(peaks.area)
    )  # a stream may be mid-append
    status, centre, area = peaks.status[:n_rows], peaks.centre[:n_rows], peaks.area[:n_rows]
    centre_label = peaks.centre_label
    present = status != 255
    converged = status == 0
    failures = Counter(STATUS_NAMES.get(int(v), f"code {v}") for v in status[present & ~converged])
    why = ", ".join(f"{n} {name}" for name, n in failures.most_common())
    print(f"  peaks (entry/peaks): {status.shape[1]} slot(s) per frame; "
          f"{int(converged.sum())} of {int(present.sum())} fits converged"
          + (f" ({why})" if why else ""))  # fmt: skip
    filled = [k for k in range(status.shape[1]) if present[:, k].any()]
    slots = filled if verbose else filled[:_INFO_FILES]
    if not slots:
        return
    print(f"  {'slot':>4}  {'centre ' + centre_label:>16}  {'area':>11}  converged "
          "(centre, area: medians of the converged fits)")  # fmt: skip
    for k in slots:
        good = converged[:, k]
        n_present = int(present[:, k].sum())
        if good.any():
            mid_centre = f"{np.median(centre[good, k]):.6g}"
            mid_area = f"{np.median(area[good, k]):.4g}"
        else:
            mid_centre = mid_area = "-"
        print(f"  {k:>4}  {mid_centre:>16}  {mid_area:>11}  {int(good.sum())}/{n_present}")
    if len(slots) < len(filled):
        print(f"  ... and {len(filled) - len(slots)} more slot(s) (-v lists them all)")


def _no_row(path: str, row: int, n_frames: int) -> int:
    print(f"radint: error: {path}: no row {row} (it holds {n_frames} frame(s))", file=sys.stderr)
    return 2


def _key_matches(midas_key: str, field_name: str, config: IntegrationConfig) -> bool:
    from radint.config import _MIDAS_KEYS

    if midas_key == "BC":
        return field_name in ("bc_y_px", "bc_z_px")
    if midas_key == "px":
        return field_name in ("pixel_size_y_um", "pixel_size_z_um")
    if field_name == "max_n_peaks" and "AutoDetectPeaks" in config.set_at:
        # `AutoDetectPeaks N` sets the count; a MaxNPeaks line beside it is ignored.
        return midas_key == "AutoDetectPeaks" and config.auto_detect_peaks
    return _MIDAS_KEYS.get(field_name) == midas_key


def _check_midas_map(directory: str | None) -> None:
    """``--midas-map DIR`` names a folder (a missing one failed naming DIR/Map.bin)."""
    if directory and not Path(directory).is_dir():
        from radint.exceptions import RadintFileNotFoundError

        raise RadintFileNotFoundError(f"--midas-map {directory}: no such folder")


def _rules(args: argparse.Namespace, config: IntegrationConfig) -> dict[str, Any]:
    """The Integrator's ``compat`` and ``detector_map`` from ``--compat`` / ``--midas-map``."""
    from radint.detector_map import DetectorMap

    rules: dict[str, Any] = {"compat": args.compat}
    _check_midas_map(args.midas_map)
    if args.midas_map:
        rules["detector_map"] = DetectorMap.load_midas(
            args.midas_map, config, n_threads=args.threads
        )
    return rules


def cmd_integrate(args: argparse.Namespace) -> int:
    """Integrate frame files; write the requested formats per input file (NeXus by default)."""

    from radint.batch import check_outputs, process_files
    from radint.integrator import Integrator, require_backend

    paths, overrides = _split_overrides(args.data)
    if not paths:
        raise RadintError("no data files given")
    require_backend(args.backend)  # before the map is built
    config = _load_config(args.params, overrides, args)
    paths = _expand_data(paths, config, args.params, args.dark, args.raw_dtype)
    _check_frame_shapes(paths, config, args.dataset, args.raw_dtype)
    formats = _formats(args.format, config)
    out_dir = Path(args.output)
    dark_path = _dark_path(args.dark, config, args.params, paths)
    check_outputs(paths, out_dir, formats, config=config, dark=dark_path)
    _check_run(paths, out_dir, formats, inputs_must_exist=True)
    dark = _read_dark(dark_path, args.dark_dataset, config, args.raw_dtype, args.dark_dtype)
    if dark_path:  # recorded in the outputs' configuration (MIDAS key Dark)
        config = config.replace(dark_file=str(Path(dark_path).resolve()))
    integrator = Integrator(
        config, backend=args.backend, n_threads=args.threads, dark=dark,
        cache_dir=_map_cache(args, out_dir), **_rules(args, config),
    )  # fmt: skip
    from radint.io.hdf5 import set_decode_threads

    set_decode_threads(args.threads)  # Eiger frames decoded on as many threads as integrated
    failures = n_done = frames = 0
    reported: set[str] = set()
    t0 = time.perf_counter()
    started = time.time() - 1.0  # file times may be rounded down to the second
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with _progress(columns, args.quiet) as progress:
        task = progress.add_task("files", total=len(paths))
        # Frames as they are integrated: a file of thousands of frames moves this one; its
        # total (and so an ETA) once the files' headers are counted, beside the run.
        frames_task = progress.add_task("frames", total=None)
        # Off a terminal (a batch job's log, nohup) the bars are off: a line every
        # HEARTBEAT_S instead, so a file of thousands of frames does not look stuck.
        heartbeat: dict[str, Any] = {
            "next": t0 + HEARTBEAT_S if not (args.quiet or sys.stdout.isatty()) else None,
            "of": "",
        }

        def set_total(total: int) -> None:
            progress.update(frames_task, total=total)
            heartbeat["of"] = f" of {total}"

        totals = None if args.quiet or len(paths) > _FrameTotal.MAX_FILES else _FrameTotal(
            paths, config, args.dataset, args.raw_dtype,
                                                     set_total)  # fmt: skip

        def on_frames(n: int) -> None:
            done = progress.tasks[frames_task].completed + n
            now = time.perf_counter()
            rate = done / max(now - t0, 1e-9)
            progress.update(frames_task, completed=done, description=f"frames ({rate:.1f}/s)")
            if heartbeat["next"] is not None and now >= heartbeat["next"]:
                heartbeat["next"] = now + HEARTBEAT_S
                _echo(f"radint integrate: {int(done)}{heartbeat['of']} frames in {now - t0:.0f} s "
                      f"({rate:.1f}/s), {n_done}/{len(paths)} file(s) done")  # fmt: skip

        def say(line: str) -> None:
            if not args.quiet:
                progress.console.print(line) if progress.live.is_started else _echo(line)

        try:
            # The batch pipeline (reading, integrating and writing overlap across files);
            # closing(): an interrupt stops it and removes the files it had not finished.
            outcomes = process_files(
                paths, str(out_dir), formats, dataset=args.dataset, dark=integrator.dark,
                skip_existing=args.skip_existing, integrator=integrator,
                compression=args.compression, raw_dtype=args.raw_dtype, on_frames=on_frames,
            )  # fmt: skip
            with contextlib.closing(outcomes):
                for o in outcomes:
                    n_done += 1
                    reported.add(o.path)
                    if o.skipped:
                        say(f"{o.path}: skipped (outputs exist)")
                        if totals is not None:
                            totals.skip(o.path)
                    elif o.ok:
                        frames += o.n_frames
                        rate = o.n_frames / max(o.seconds, 1e-9)
                        say(f"{o.path}: {o.n_frames} frame(s), {rate:.1f} frames/s -> "
                            f"{', '.join(o.outputs)}")  # fmt: skip
                    else:
                        failures += 1
                        print(f"radint: {o.error}", file=sys.stderr)
                    progress.advance(task)
        except KeyboardInterrupt:
            from radint.batch import finished_since, frames_written

            # Files the pipeline finished before it stopped, reported or not (the one after
            # the last reported may have been renamed into place meanwhile): from their outputs.
            extra = [p for p in finished_since(paths, out_dir, formats, None, started)
                     if p not in reported]  # fmt: skip
            for p in extra:
                say(f"{p}: done (its outputs were completed while stopping)")
            more_frames, uncounted = frames_written(extra, out_dir, formats, None)
            n_done += len(extra)
            counted = f" (of {n_done - failures - uncounted} file(s))" if uncounted else ""
            _echo(
                f"radint integrate: {n_done - failures}/{len(paths)} file(s) ok, "
                f"{frames + more_frames} frames{counted} in {time.perf_counter() - t0:.1f} s"
                f"{_interrupted_tail(len(paths) - n_done)}"
            )
            raise
    if len(paths) > 1 and not args.quiet:  # as radint batch ends: the run in one line
        _echo(f"radint integrate: {n_done - failures}/{len(paths)} file(s) ok, {frames} frames "
              f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    if failures:
        print(f"radint: {failures} of {len(paths)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


def _interrupted_tail(not_done: int) -> str:
    """The end of an interrupted run's summary line."""
    if not not_done:
        return " (interrupted after every file was done)"
    return f" (interrupted; {not_done} not done: run again with --skip-existing to finish them)"


def _integrator_py_flags(args: argparse.Namespace) -> None:
    """MIDAS integrator.py flags radint has no step for: those that change no result are
    accepted (with a note), those that would are refused, saying what radint does instead."""
    if args.logLevel:
        level = logging.getLevelName(args.logLevel.upper())
        if not isinstance(level, int):
            raise RadintError(f"-logLevel {args.logLevel}: expected DEBUG, INFO, WARNING or ERROR")
        log.setLevel(level)
    for flag, value, why in (
        ("-convertFiles", args.convertFiles, "frames are read from the files directly, no zip"),
        (
            "-mapDetector",
            args.mapDetector,
            "the map is built once and cached in the output "
            "folder; to integrate with the Map.bin/nMap.bin MIDAS's DetectorMapper wrote, give "
            "--midas-map DIR",
        ),
        ("-numFrameChunks", args.numFrameChunks, "frames are read in bounded stacks anyway"),
        ("-viewerTheme", args.viewerTheme, "no viewer; see radint plot --follow"),
        ("-liveViewer", args.liveViewer or None, "no viewer; see radint plot --follow"),
    ):
        if value is not None:
            log.info("%s: nothing to do in radint (%s)", flag, why)
    refused = (
        (
            "-preProcThresh",
            args.preProcThresh not in (None, -1.0),
            "no threshold step on the command line; in Python, Integrator(dead_below=, "
            "hot_above=) leaves pixels out by value",
        ),
        (
            "-shortNames",
            args.shortNames == 0,
            "outputs are named by the input's short stem; use -outName for another name",
        ),
        ("-csvOutput", bool(args.csvOutput), "use --format xy for text lineouts"),
        (
            "-peakFit / -peakParamsFN",
            args.peakFit or bool(args.peakParamsFN),
            "give DoPeakFit 1 and PeakLocation (or AutoDetectPeaks) in the parameters",
        ),
        ("-brightFN", bool(args.brightFN), "give the flat field as FlatFile in the parameters"),
    )
    for flag, given, instead in refused:
        if given:
            raise RadintError(f"radint batch: {flag} is not supported ({instead})")


def _out_name(name: str) -> str:
    """``-outName`` as the stem outputs are named by: an output format's ending typed with it
    is taken off (``-outName foo.h5`` wrote ``foo.h5.h5``; now ``foo.h5``, ``foo_lineout.xy``)."""
    from radint.io.write import FORMATS

    for suffix in sorted((s for s, _ in FORMATS.values()), key=len, reverse=True):
        if name.lower().endswith(suffix.lower()):
            stem = name[: -len(suffix)]
            if not stem:
                raise RadintError(f"-outName {name}: give the outputs' stem (e.g. scan1)")
            log.info("-outName %s: outputs are named %s + the formats' endings (%s, ...)",
                     name, stem, name)  # fmt: skip
            return stem
    return name


def _at_most(n: int, total: float | None) -> int:
    """``n``, no more than ``total`` where that is known."""
    return n if total is None else min(n, int(total))


class _FrameTotal:
    """The frames a run's files hold, counted from their headers on a thread beside the run
    (thousands of files take a while), for the progress bar's total and ETA: ``on_total(n)``
    once every file is counted, and again as files are skipped (their outputs exist). A file
    that cannot be opened, or is neither a file nor a folder (a FIFO would block), leaves the total
    unknown (the run reports it). :meth:`stop` ends the count before the run returns: a thread
    still inside h5py as the interpreter shut down hung or crashed an interrupted run."""

    def __init__(
        self,
        paths: list[str],
        config: IntegrationConfig,
        dataset: str | None,
        raw_dtype: str | None,
        on_total: Callable[[int], None],
    ) -> None:
        self.paths, self.on_total = paths, on_total
        self.counts: dict[str, int] = {}
        self.skipped: set[str] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        args = (config, dataset, raw_dtype)
        self.thread = threading.Thread(target=self._count, args=args, name="radint-count",
                                       daemon=True)  # fmt: skip
        self.thread.start()
        self.running.append(self)

    #: Runs of more files are not counted: opening each one in the parent cost a batch of 3000
    #: one-frame files 24 % of its time, and the files' bar says as much there.
    MAX_FILES = 256

    #: Counts started by this process's command, stopped as it returns (:func:`main`).
    running: ClassVar[list[_FrameTotal]] = []

    def stop(self) -> None:
        """End the count (after the file it is reading) and wait for it."""
        self.stopped.set()
        self.thread.join(timeout=10.0)

    @classmethod
    def stop_all(cls) -> None:
        """Stop every count still running."""
        while cls.running:
            cls.running.pop().stop()

    def _count(self, config: IntegrationConfig, dataset: str | None, raw_dtype: str | None) -> None:
        for path in self.paths:
            if self.stopped.is_set() or not (Path(path).is_file() or Path(path).is_dir()):
                return  # a Zarr store is a folder; a FIFO would block
            try:
                with _open_input(path, config, dataset, raw_dtype) as source:
                    self.counts[path] = len(source.default_indices())
            except Exception:  # the run reports a file it cannot read
                return
        self._update()

    def skip(self, path: str) -> None:
        """``path`` was skipped: its frames leave the total."""
        self.skipped.add(path)
        self._update()

    def _update(self) -> None:
        with self.lock:
            if len(self.counts) == len(self.paths):
                self.on_total(sum(n for p, n in self.counts.items() if p not in self.skipped))


def _map_cache(args: argparse.Namespace, out_dir: Path) -> Path:
    """``--map-cache DIR``, else the output folder's ``.radint-cache``; a DIR that exists as
    something else than a folder is refused."""
    if not args.map_cache:
        return out_dir / ".radint-cache"
    cache = Path(args.map_cache)
    if cache.exists() and not cache.is_dir():
        raise RadintError(f"--map-cache {cache}: not a folder")
    return cache


def _batch_output(args: argparse.Namespace) -> Path:
    """The output folder of ``radint batch``: ``-o`` or MIDAS's ``-resultFolder`` (the same
    option); two different folders are refused (the run silently wrote to one of them)."""
    given = [(flag, value) for flag, value in (("-o", args.output),
             ("-resultFolder", args.resultFolder)) if value is not None]  # fmt: skip
    if len(given) == 2 and Path(given[0][1]).resolve() != Path(given[1][1]).resolve():
        raise RadintError(
            f"-o {given[0][1]} and -resultFolder {given[1][1]} name two different output "
            "folders; give one of them"
        )
    return Path(given[0][1]) if given else Path(".")


def cmd_batch(args: argparse.Namespace) -> int:
    """Many files → outputs, MIDAS integrator.py flags accepted; exit 0 only if all succeed."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from radint.batch import check_outputs, midas_file_series, run_batch
    from radint.integrator import require_backend

    if args.paramFN and args.params:
        # With -paramFN, the first positional is data, not a parameter file.
        args.data.insert(0, args.params)
        args.params = None
    params = args.paramFN or args.params
    if not params:
        raise RadintError("no parameter file: give PARAMS or -paramFN")
    tokens = list(args.data)
    if args.dataFN:
        tokens = midas_file_series(args.dataFN, args.startFileNr, args.endFileNr) + tokens
    paths, overrides = _split_overrides(tokens)
    if not paths:
        raise RadintError("no data files: give DATA... or -dataFN")
    _integrator_py_flags(args)
    out_dir = _batch_output(args)
    if args.dask is not None:  # a malformed address fails here, not after the map is built
        from radint.batch.distributed import parse_address

        parse_address(args.dask)
    require_backend(args.backend)
    _check_midas_map(args.midas_map)
    config = _load_config(params, overrides, args)
    paths = _expand_data(paths, config, params, args.darkFN, args.raw_dtype)
    _check_frame_shapes(paths, config, args.dataLoc, args.raw_dtype)
    formats = list(_formats(args.format, config))
    if args.writeMat and "mat" not in formats:
        formats.append("mat")
    dark_path = _dark_path(args.darkFN, config, params, paths)
    dark = _read_dark(dark_path, args.darkLoc, config, args.raw_dtype, args.dark_dtype)
    if dark_path:  # recorded in the outputs' configuration (MIDAS key Dark)
        config = config.replace(dark_file=str(Path(dark_path).resolve()))
    if args.outName and len(paths) != 1:
        raise RadintError(f"-outName names the output of one input file; {len(paths)} given")
    names = [_out_name(args.outName)] if args.outName else None
    # before anything is created
    check_outputs(paths, out_dir, tuple(formats), names, config=config, dark=dark_path)
    _check_run(paths, out_dir, tuple(formats), inputs_must_exist=False)
    failed: list[tuple[str, str]] = []
    reported: set[str] = set()
    frames = n_done = skipped = 0
    t0 = time.perf_counter()
    started = time.time() - 1.0  # file times may be rounded down to the second
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())  # fmt: skip
    with _progress(columns, args.quiet) as progress:
        task = progress.add_task("files", total=len(paths), rate="")
        # Frames as the workers integrate them (a file of thousands moves this one), and their
        # total once the headers are counted.
        frames_task = progress.add_task("frames", total=None, rate="")
        live: dict[str, Any] = {"frames": 0, "of": ""}

        def set_total(total: int) -> None:
            progress.update(frames_task, total=total)
            live["of"] = f" of {total}"

        totals = None if args.quiet or len(paths) > _FrameTotal.MAX_FILES else _FrameTotal(
            paths, config, args.dataLoc, args.raw_dtype, set_total)  # fmt: skip

        def on_frames(n: int) -> None:
            live["frames"] += n
            # Files retried after a worker died count their frames again: the bar stops full.
            total = progress.tasks[frames_task].total
            done = live["frames"] if total is None else min(live["frames"], total)
            progress.update(frames_task, completed=done)

        def summary(tail: str, uncounted: int = 0) -> None:
            if args.quiet and not failed and not tail:
                return
            elapsed = time.perf_counter() - t0
            # Frames of files finished while stopping are read from their NeXus/Zarr outputs;
            # those without one cannot be counted, and the line says so.
            counted = f" (of {n_done - len(failed) - uncounted} file(s))" if uncounted else ""
            kept = f" ({skipped} skipped: outputs there already)" if skipped else ""
            _echo(
                f"radint batch: {n_done - len(failed)}/{len(paths)} file(s) ok{kept}, {frames} "
                f"frames{counted} in {elapsed:.1f} s{tail}"
            )

        def on_done(o):
            nonlocal frames, n_done, skipped
            frames += o.n_frames
            n_done += 1
            skipped += bool(o.skipped)
            reported.add(o.path)
            if o.skipped and totals is not None:
                totals.skip(o.path)
            rate = frames / max(time.perf_counter() - t0, 1e-9)
            if not o.ok:  # counted before the bar shows it (the last file's failure too)
                failed.append((o.path, o.error))
            progress.update(task, advance=1, rate=f"{rate:.1f} frames/s, {len(failed)} failed")
            line = (f"{o.path}: skipped (outputs exist)" if o.skipped else
                    f"{o.path}: {o.n_frames} frame(s) -> {', '.join(o.outputs)}" if o.ok
                    else f"FAILED: {o.error}")  # the reason names the file  # fmt: skip
            if not args.quiet:
                progress.console.print(line) if progress.live.is_started else _echo(line)

        # Off a terminal (a job's log) the bars are off: a line every HEARTBEAT_S, so a long
        # file (files are reported when done) does not look stuck.
        quiet_beat = threading.Event()

        def heartbeat() -> None:
            while not quiet_beat.wait(HEARTBEAT_S):
                _echo(f"radint batch: {n_done}/{len(paths)} file(s) done, {frames} frames; "
                      f"{_at_most(live['frames'], progress.tasks[frames_task].total)}"
                      f"{live['of']} integrated, "
                      f"{time.perf_counter() - t0:.0f} s")  # fmt: skip

        if not (args.quiet or sys.stdout.isatty()):
            threading.Thread(target=heartbeat, name="radint-heartbeat", daemon=True).start()
        try:
            run_batch(
                config, paths, out_dir, tuple(formats), n_procs=args.nCPUs,
                n_threads=args.nCPUsLocal, dataset=args.dataLoc, dark=dark,
                skip_existing=args.skipExisting, dask=args.dask, backend=args.backend,
                names=names, on_done=on_done, compression=args.compression,
                raw_dtype=args.raw_dtype, compat=args.compat, midas_map=args.midas_map,
                cache_dir=_map_cache(args, out_dir), on_frames=on_frames,
            )  # fmt: skip
        except KeyboardInterrupt:
            from radint.batch import finished_since, frames_written

            # Files the pipeline finished may not have been reported before the interrupt (a
            # pool reports a run of files when all of it is done): counted from their
            # outputs, files and frames alike, so the two numbers describe the same files.
            finished = finished_since(paths, out_dir, formats, names, started)
            extra = [p for p in finished if p not in reported]
            if not args.quiet:  # each file the count holds has its line
                for p in extra:
                    _echo(f"{p}: done (its outputs were completed while stopping)")
            more_frames, uncounted = frames_written(extra, out_dir, formats, names)
            frames += more_frames
            n_done += len(extra)
            summary(_interrupted_tail(len(paths) - n_done), uncounted)
            raise
        finally:
            quiet_beat.set()
    summary("")
    for _path, why in failed:
        print(f"radint: failed: {why}", file=sys.stderr)  # the reason names the file
    return 1 if failed else 0


def _is_stream_result(path: Path) -> bool:
    """Whether ``path`` is a ``radint stream`` result (it holds ``entry/stream``)."""
    if path.is_dir():
        return (path / "entry" / "stream").is_dir()
    from radint.io.nexus import open_result

    try:
        with open_result(path) as f:
            return "entry/stream" in f
    except OSError:
        return False


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit peaks in the lineouts of an existing result file; write CSV / fit.bin / NeXus."""
    from rich.console import Console
    from rich.table import Table

    from radint.fit import FitSpec
    from radint.io import read_nexus, write_nexus, write_result

    if args.peaks and args.auto is not None:
        raise RadintError("--peaks and --auto exclude each other: give one of them")
    if not args.peaks and args.auto is None:
        raise RadintError("give --peaks LIST or --auto N")
    src = _result_path(args.result)
    if args.update and _is_stream_result(src):
        raise RadintError(
            f"{src}: --update rewrites the file, and a stream's record (entry/stream: its "
            "counters, each frame's source and dataset number) would be lost; write the fits "
            "beside it (--format peaks,fit) or a fitted copy (-o DIR --format nexus)"
        )
    # --update alone (--format "") stores the fits in the result file and writes nothing else.
    formats = _format_list(args.format) if args.format.strip(", ") or not args.update else []
    out_dir = Path(args.output) if args.output else src.parent
    if formats:
        _check_writable(out_dir)  # before the fits run
    result = read_nexus(src)
    # How the result's parameter file fits (FitROIPadding, FitROIAuto, SNIPIterations,
    # DoubletSeparation), with the options given on top: --update records the spec in the file,
    # and its settings must not fall back to defaults there.
    common: dict[str, Any] = (
        FitSpec.config_settings(result.config) if result.config is not None else {}
    )
    given = {"roi_padding": args.roi_padding, "auto_roi": args.roi_auto,
             "snip_iterations": args.snip_iterations}  # fmt: skip
    common |= {k: v for k, v in given.items() if v is not None}
    if args.auto:
        spec = FitSpec(auto=args.auto, **common)
    elif args.unit == "px":
        spec = FitSpec(positions_px=tuple(_float_list(args.peaks, "--peaks")), **common)
    else:
        spec = FitSpec(positions_two_theta_deg=tuple(_float_list(args.peaks, "--peaks")), **common)
    t0 = time.perf_counter()
    result.peaks = spec.apply(result, n_threads=args.threads)
    elapsed = time.perf_counter() - t0
    if result.config is not None:  # the files written say how their peaks were fitted
        result.config = spec.recorded_in(result.config)
    from radint.batch import output_stem

    stem = output_stem(src)
    compression = None if args.compression == "none" else args.compression
    written = (
        write_result(result, out_dir, formats, name=stem, compression=compression)
        if formats
        else []
    )
    if args.update:
        written.append(write_nexus(result, src, backend="zarr" if src.is_dir() else "hdf5",
                                   compression=compression))  # fmt: skip
    peaks = result.peaks
    status = np.asarray(peaks.status).reshape(result.n_frames, -1)
    ok = status == 0
    if not args.quiet:
        table = Table(
            title=f"{src.name}: {result.n_frames} frame(s), {elapsed:.2f} s; "
            "means over the converged frames"
        )
        # short headers: in 80 columns (a pipe) "converged" and "otherwise" were cut with "…"
        columns = ("slot", "ok", "2θ (deg)", "± std", "R (px)", "FWHM (deg)", "area", "failed")
        for col in columns:
            table.add_column(col, justify="right", overflow="fold")
        names = np.asarray(peaks.status_name).reshape(status.shape)

        def failures(k: int) -> str:
            bad, counts = np.unique(names[:, k][~ok[:, k]], return_counts=True)
            return ", ".join(f"{c} {b}" for b, c in zip(bad, counts))

        def mean(attr: str, k: int) -> float:
            v = np.asarray(getattr(peaks, attr), dtype=np.float64).reshape(status.shape)[:, k]
            return float(np.nanmean(v[ok[:, k]])) if ok[:, k].any() else float("nan")

        for k in range(status.shape[1]):
            if not (status[:, k] != 255).any():
                continue
            tth = np.asarray(peaks.center_two_theta_deg).reshape(status.shape)[:, k][ok[:, k]]
            spread = float(np.std(tth)) if tth.size > 1 else float("nan")
            table.add_row(
                str(k), f"{ok[:, k].sum()}/{result.n_frames}", f"{mean('center_two_theta_deg', k):.5f}",
                f"{spread:.2e}", f"{mean('center', k):.3f}", f"{mean('fwhm_deg', k):.5f}",
                f"{mean('area', k):.4g}", failures(k),
            )  # fmt: skip
        Console().print(table)
        print(f"wrote {', '.join(map(str, written))}")
    if not ok.any():
        seen = sorted(set(np.asarray(peaks.status_name).ravel().tolist()))
        print(f"radint: fit: no peak converged ({', '.join(seen)})", file=sys.stderr)
        return 1
    return 0


def _result_path(path: str) -> Path:
    """A result file to read, or RadintFileNotFoundError "PATH: no such file" (h5py's errno
    text was passed through)."""
    from radint.exceptions import RadintFileNotFoundError

    if not Path(path).exists():
        raise RadintFileNotFoundError(f"{path}: no such file")
    return Path(path)


def cmd_convert(args: argparse.Namespace) -> int:
    """Write a stored result (NeXus .h5 / .zarr) in other formats."""
    from radint.batch import output_stem
    from radint.io import read_nexus, write_result
    from radint.io.nexus import copy_stream_table
    from radint.io.write import FORMATS, expand_formats, fitting_of, resolve_formats

    src = _result_path(args.result)
    formats = _format_list(args.format)
    out_dir = Path(args.output) if args.output else src.parent
    _check_writable(out_dir)
    try:
        result = read_nexus(src)
        stem = output_stem(src)
        for fmt in expand_formats(resolve_formats(formats, *fitting_of(result))):
            target = out_dir / f"{stem}{FORMATS[fmt][0]}"
            if target.exists() and target.resolve() == src.resolve():
                raise RadintError(
                    f"{src}: --format {fmt} would write {target}, the result being converted "
                    "(it would be rewritten in place from what was read); give -o DIR"
                )
        compression = None if args.compression == "none" else args.compression
        written = write_result(result, out_dir, formats, name=stem, compression=compression)
        for path in written:  # a stream's record goes along into its NeXus copies
            if Path(path).suffix in (FORMATS["nexus"][0], FORMATS["zarr"][0]):
                copy_stream_table(src, path, result.n_frames)
    except ValueError as e:
        raise RadintError(f"{src}: {e}") from e
    if not args.quiet:
        print(f"wrote {', '.join(map(str, written))}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Lineout and cake PNG of a result file."""
    from radint.plot import follow_nexus, plot_nexus

    if args.follow:
        n = follow_nexus(args.result, args.output, peak_param=args.peak_param,
                         interval_s=args.interval, stop_after_s=args.follow_for,
                         quiet=args.quiet)  # fmt: skip
        if not args.quiet:
            print(f"follow: {n} redraw(s)")
        return 0
    out = plot_nexus(_result_path(args.result), args.output, args.frame, peak_param=args.peak_param)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """Integrate frames as they arrive (TCP / PVA / folder) into DIR/stream.h5."""

    from radint.integrator import Integrator
    from radint.stream import FolderSource, Pipeline, PvaSource, TcpSource
    from radint.stream.sources import Source

    overrides = _only_overrides(args.overrides, "stream")
    config = _load_config(args.params, overrides, args)
    out_dir = Path(args.output)
    # Every check before the output folder is made: a refused run leaves nothing behind.
    if args.source == "pva":
        if not args.channel:
            raise RadintError("--source pva needs --channel NAME")
        from radint.stream.sources import import_pvaccess

        import_pvaccess()
    elif args.source == "folder":
        if not args.watch:
            raise RadintError("--source folder needs --watch DIR")
        if Path(args.watch).resolve() == out_dir.resolve():
            raise RadintError(
                f"--watch {args.watch} is the output directory: the stream would read its own "
                "files; write to another one (-o)"
            )
        if not args.settle > 0:
            raise RadintError(f"--settle: expected seconds > 0, got {args.settle}")
    if args.dataset is not None and args.source != "folder":
        raise RadintError("--dataset names the HDF5 dataset of --source folder's files")
    dark_path = _dark_path(args.dark, config, args.params)
    dark = _read_dark(dark_path, args.dark_dataset, config, None, args.raw_dtype)
    source: Source
    if args.source == "tcp":  # listening first: a port in use fails before the map is built
        source = TcpSource(config.shape, host=args.host, port=args.port)
        source.bind()
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.source == "pva":
        source = PvaSource(args.channel, config.shape)
    elif args.source == "folder":  # the mask, flat and dark may lie among the frames
        aux = _files_named(config.mask_file, config.flat_file, dark_path)
        source = FolderSource(args.watch, config.shape, exclude=aux, dataset=args.dataset,
                              zip_parameters=config.zip_parameters(), settle_s=args.settle)  # fmt: skip
    if dark_path:  # recorded in the outputs' configuration (MIDAS key Dark)
        config = config.replace(dark_file=str(Path(dark_path).resolve()))
    integrator = Integrator(
        config, backend=args.backend, n_threads=args.threads, dark=dark,
        cache_dir=_map_cache(args, out_dir), **_rules(args, config),
    )  # fmt: skip
    pipeline = Pipeline(
        integrator,
        [source],
        out_dir,
        save_interval=args.save_interval,
        max_frames=args.max_frames,
        idle_timeout=args.timeout,
        midas_files=args.midas_files,
        control_dir=args.control_dir,
        mapping_file=args.mapping_file,
        compression=None if args.compression == "none" else args.compression,
        dark=integrator.dark,
    )

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if pipeline.stopping and args.midas_files:
            log.info("stream: %s again: the MIDAS integrator_output / caked_peaks files are "
                     "skipped", name)  # fmt: skip
            pipeline.skip_midas_outputs()
            return
        log.info("stream: %s received, draining", name)
        pipeline.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = pipeline.run(status="none" if args.quiet else "auto")
    except Exception:
        if pipeline.summary is not None:
            print(pipeline.summary.line())  # what was written before the error
        raise
    finally:
        for sig, was in previous.items():  # main() called from Python: its caller's again
            signal.signal(sig, was)
    if not args.quiet or summary.dropped or summary.partial or summary.bad_connections:
        print(summary.line())
        why = []
        upstream = getattr(source, "dropped_upstream", 0)
        if upstream:  # never received: counted from uniqueId gaps
            why.append(f"{upstream} never arrived (gaps in uniqueId: dropped in the IOC or in "
                       "pvAccess's queues)")  # fmt: skip
        late = pipeline.refused_stopping + getattr(source, "dropped_at_stop", 0)
        if late:
            full = args.max_frames is not None and pipeline.accepted >= args.max_frames
            why.append(f"{late} arrived as the stream stopped"
                       f"{f' (--max-frames {args.max_frames} taken)' if full else ''}, "
                       "not integrated")  # fmt: skip
        if why:
            print(f"stream: of the {summary.dropped} dropped, {'; '.join(why)}")
    if source.failure:
        print(f"error: the {source.name} source failed: {source.failure}", file=sys.stderr)
        return 1
    if summary.bad_connections:
        # As a file that failed in `radint batch`: a sender whose bytes were no frames (another
        # frame size misaligns the wire) must not end as a clean run in a script.
        print(f"error: {summary.bad_connections} connection(s) closed for bytes that are no "
              f"frames of {config.shape[1]}x{config.shape[0]} pixels (NrPixelsY x NrPixelsZ; "
              "the log above names them)", file=sys.stderr)  # fmt: skip
        return 1
    rejected = getattr(source, "rejected", 0)
    if rejected:
        # A review: every frame of another shape than the parameter file's was rejected, and
        # the stream ended "nothing written (no frames)" with exit status 0.
        print(f"error: {rejected} frame(s) received but rejected, not integrated (the log "
              f"above says why: e.g. not {config.shape[1]}x{config.shape[0]} pixels, "
              "NrPixelsY x NrPixelsZ, or an undecodable payload)", file=sys.stderr)  # fmt: skip
        return 1
    return 1 if getattr(source, "never_connected", False) else 0


def cmd_send(args: argparse.Namespace) -> int:
    """Send frame files to a MIDAS-protocol server (radint stream or MIDAS's GPU program)."""
    from radint.stream.sender import SendInterrupted, expand_inputs, iter_file_frames, send_frames

    paths, overrides = _split_overrides(args.data)
    config = _load_config(args.params, overrides)
    files = expand_inputs(paths, args.extension)
    # A folder often holds the parameters' own mask or dark beside the frames: not frames.
    aux = {Path(f).resolve() for f in _files_named(config.mask_file, config.dark_file,
                                                   config.flat_file)}  # fmt: skip
    skipped = [f for f in files if Path(f).resolve() in aux]
    if skipped:
        log.info("send: not sending %s (the parameters' MaskFile / Dark / FlatFile)",
                 ", ".join(map(str, skipped)))  # fmt: skip
        files = [f for f in files if Path(f).resolve() not in aux]
    if not files:
        raise RadintError("no frame files to send")
    t0 = time.perf_counter()
    try:
        n = send_frames(
            iter_file_frames(files, args.h5_location, shape=config.shape),
            host=args.host,
            port=args.port,
            compress=args.compress,
            mapping_file=args.mapping_file,
            save_interval=args.save_interval,
            shape=config.shape,
            connections=args.connections,
        )
    except SendInterrupted as e:
        print(f"radint: send interrupted: {_send_stopped(e)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second one while it stopped: nothing counted
        print("radint: send interrupted before the frames sent were counted", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        print(f"send: {n} frame(s) in {elapsed:.2f} s ({n / max(elapsed, 1e-9):.1f} frames/s)")
    return 0


def _send_stopped(e: SendInterrupted) -> str:
    """How far an interrupted ``radint send`` got (a :class:`SendInterrupted`) and what to
    send again: batch's "outputs removed" said nothing a sender's user needs."""
    listed = f" ({e.mapping_file} lists them)" if e.mapping_file and e.sent else ""
    if e.first_unsent is None:
        return f"all {e.sent} frame(s) sent whole{listed}"
    text = f"{e.sent} frame(s) sent whole{listed}"
    first = f"{e.first_unsent_name} (frame {e.first_unsent})" if e.first_unsent_name else (
        f"frame {e.first_unsent} in sending order")  # fmt: skip
    text += f"; the first not sent is {first}: resend from it"
    if e.sent_after:
        text += f" ({e.sent_after} later frame(s) went out on the other connections, listed too)"
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value:g}")
    return value


def _port(lowest: int) -> Callable[[str], int]:
    """An argparse type for a TCP port in ``lowest``..65535 (a bad one raised a traceback
    after the map was built)."""

    def port(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
        if not lowest <= value <= 65535:
            raise argparse.ArgumentTypeError(f"expected a port in {lowest}..65535, got {value}")
        return value

    return port


def _pixel_dtype(text: str) -> str:
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise argparse.ArgumentTypeError(f"not a numpy pixel type: {text!r}") from None
    if dtype.kind not in "uif":
        raise argparse.ArgumentTypeError(f"not a numeric pixel type: {text!r} ({dtype})")
    return text


DATA_HELP = (
    "frame files (tif, h5, zarr, ge, edf, cbf, ...), folders of them, @LIST files or quoted "
    "patterns (see below); then 'Key value' overrides"
)
DATA_EPILOG = """\
DATA may be, in any mix:
  FILE            a frame file (TIFF, HDF5, Zarr store/zip, MIDAS zip, GE, EDF/CBF, raw)
  DIR             its frame files in natural order (frame_2 before frame_10): formats the
                  readers handle (.raw/.bin only with --raw-dtype); hidden files, radint's
                  own outputs, the parameters' Dark/MaskFile and Eiger *_data_NNNNNN.h5
                  files beside their *_master.h5 skipped; not recursive
  @LIST           a text file with one path per line ('#' comment lines and blank lines
                  skipped; relative paths are relative to the list file's folder)
  'PATTERN'       quoted, expanded by radint when no file has that name: 'frames/*.tif',
                  'run*/**/*.h5' (** = any depth); matches filtered as a folder's files
examples:
  radint {cmd} parameters.txt /data/run7/ -o out
  radint {cmd} parameters.txt @frames.txt -o out
  radint {cmd} parameters.txt '/data/run7/*.tif' RMax 800 -o out
"""
RAW_DTYPE_HELP = (
    "pixel type of raw binary frame files (.raw/.bin), e.g. uint16 or <u4; their shape is "
    "NrPixelsZ x NrPixelsY, as for GE files"
)


def _version() -> str:
    from radint import __version__

    return __version__


def version_report() -> str:
    """``radint --version``: the version, how the core was built, its threads and kernels, and
    whether CuPy and a GPU are there (a bug report then carries all of it)."""
    import platform

    from radint import _core

    info = _core.build_info()
    gathers = "AVX-512 gathers" if info["avx512_gathers"] else "scalar gathers"
    lines = [
        f"radint {_version()} (Python {platform.python_version()}, {info['target_arch']})",
        f"core: {info['profile']} build, {info['rayon_threads']} rayon threads, {gathers}",
        f"GPU: {_gpu_report()}",
    ]
    return "\n".join(lines)


def _gpu_report() -> str:
    try:
        import cupy
    except ImportError:
        return "CuPy not installed (pip install 'radint[gpu]')"
    try:
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"CuPy {cupy.__version__}, {name}"
    except Exception as e:  # no driver / no device: say why, do not fail --version
        return f"CuPy {cupy.__version__}, no usable CUDA device ({type(e).__name__}: {e})"


class _VersionAction(argparse.Action):
    """``--version``: the report is built when asked for (it imports CuPy), not per parse."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_report())
        parser.exit()


def _add_compression(
    parser: argparse.ArgumentParser,
    default: str = "blosc-lz4",
    help: str = "NeXus HDF5 compression (see integrate)",
) -> None:
    """``--compression`` of the commands that write NeXus HDF5 (the writer's choices)."""
    from radint.io.nexus import COMPRESSIONS

    choices = [default] + [c for c in COMPRESSIONS if c != default]
    parser.add_argument("--compression", default=default, choices=choices, help=help)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="radint",
        description="Radial (azimuthal) integration of X-ray area-detector images (MIDAS-compatible).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    parser.add_argument("--version", action=_VersionAction, help="version, build and GPU")
    # The same flags after the subcommand (where users type them); SUPPRESS keeps the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more"
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors"
    )
    fitting = argparse.ArgumentParser(add_help=False)
    fitting.add_argument(
        "--fit-peaks",
        metavar="LIST",
        help="fit peaks at these 2θ (deg, comma-separated) on every lineout (= DoPeakFit 1 + "
        "PeakLocation in R px)",
    )
    fitting.add_argument(
        "--fit-auto",
        metavar="N",
        type=_positive_int,
        help="detect and fit up to N peaks per lineout",
    )
    rules = argparse.ArgumentParser(add_help=False)
    rules.add_argument(
        "--compat",
        choices=["midas-cpu", "midas-gpu"],
        default=None,
        help="integrate by a MIDAS program's rules instead of radint's: midas-cpu = "
        "IntegratorZarrOMP (bins a masked pixel touches NaN, lineout = mean of the non-zero η "
        "bins, empty bins 0), midas-gpu = the GPU streaming program",
    )
    rules.add_argument(
        "--midas-map",
        metavar="DIR",
        help="integrate with the Map.bin/nMap.bin (and maskMap.bin) MIDAS's DetectorMapper "
        "wrote in DIR instead of radint's exact map; with --compat midas-cpu the numbers are "
        "IntegratorZarrOMP's",
    )
    rules.add_argument(
        "--map-cache",
        metavar="DIR",
        help="where built detector maps are cached and looked up (default: OUT/.radint-cache); "
        "one folder shared by scans of the same geometry builds and stores each map once",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "map", parents=[common], help="build the exact detector map, write MIDAS Map.bin/nMap.bin"
    )
    p.add_argument("params", help="MIDAS parameter file or pyFAI .poni")
    p.add_argument("overrides", nargs="*", help="MIDAS 'Key value' overrides")
    p.add_argument("-o", "--output", default=".", help="output directory (default: .)")
    p.add_argument(
        "-nCPUs", "-j", "--threads", dest="threads", type=_positive_int, default=None,
        help="threads (default: all; -nCPUs as DetectorMapper's)",
    )  # fmt: skip
    p.set_defaults(func=cmd_map)

    p = sub.add_parser(
        "info", parents=[common],
        help="print the parsed configuration and bin/map statistics, or what a result file holds",
        description="radint info PARAMS [DATA...]: the configuration (and data files checked "
        "against it). radint info RESULT: a NeXus result's frames and the input file and frame "
        "each came from (entry/provenance; a stream's counters); --row N for one output frame. "
        "Other outputs (caked.hdf, zarr.zip, _lineout.xy / .bin, peak CSVs, fit.bin, map "
        "caches) are described in one line.",
    )  # fmt: skip
    p.add_argument(
        "params", help="MIDAS parameter file or pyFAI .poni; or a radint result (.h5 / .zarr)"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="[DATA...] [Key value ...]",
        help="data files to describe and check against the parameters, and overrides",
    )  # fmt: skip
    p.add_argument("--map", action="store_true", help="also build the map and print its statistics")
    p.add_argument(
        "--row", type=int, default=None, metavar="N",
        help="RESULT: the input file and frame output frame N (0-based) came from",
    )  # fmt: skip
    p.add_argument("--dataset", default=None, help="HDF5 dataset of the frames")
    p.add_argument("--raw-dtype", type=_pixel_dtype, default=None, help=RAW_DTYPE_HELP)
    p.add_argument(
        "-j", "--threads", type=_positive_int, default=None, help="threads (default: all cores)"
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "integrate",
        parents=[common, fitting, rules],
        help="integrate frame files into lineouts and cakes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DATA_EPILOG.format(cmd="integrate"),
    )
    p.add_argument("params", help="MIDAS parameter file or pyFAI .poni")
    p.add_argument("data", nargs="+", metavar="DATA", help=DATA_HELP)
    p.add_argument("-o", "--output", default=".", help="output directory (default: .)")
    p.add_argument("--dark", help="dark file (its frames are averaged)")
    p.add_argument(
        "--dark-dataset",
        default=None,
        help="HDF5 dataset of the dark (default exchange/dark where the file has one, else "
        "exchange/data)",
    )
    p.add_argument(
        "--dataset", default=None, help="HDF5 dataset of the frames (default exchange/data)"
    )
    p.add_argument(
        "--format",
        default="nexus",
        help="comma-separated: nexus (default, <stem>.h5), zarr, midas (caked.hdf + zarr.zip; "
        "with fitting also _fit.bin, _fit_per_eta.csv, _caked_peaks.h5), caked, gsas, xy, bin "
        "(<stem>_lineout.bin), mat; with fitting also peaks (<stem>_peaks.csv), fit "
        "(<stem>_fit.bin), fit_per_eta / caked_peaks (IntegratorZarrOMP's per-eta fits: "
        "<stem>_fit_per_eta.csv / <stem>_caked_peaks.h5), peaks_per_eta (both)",
    )
    p.add_argument(
        "--backend",
        default="cpu",
        choices=["cpu", "cuda", "auto"],
        help="cpu (default), cuda, or auto (cuda where it works, else cpu)",
    )
    _add_compression(
        p,
        help=(
            "NeXus HDF5 compression (default blosc-lz4: fast; gzip: readable without hdf5plugin)"
        ),
    )
    p.add_argument(
        "-j", "--threads", type=_positive_int, default=None, help="threads (default: all cores)"
    )
    p.add_argument("--raw-dtype", type=_pixel_dtype, default=None, help=RAW_DTYPE_HELP)
    p.add_argument(
        "--dark-dtype", type=_pixel_dtype, default=None,
        help="pixel type of a raw (.raw/.bin) dark when it differs from the frames', e.g. int64 "
        "for MIDAS's dark_avg.bin (default: --raw-dtype)",
    )  # fmt: skip
    p.add_argument(
        "--skip-existing",
        dest="skip_existing",
        action="store_true",
        help="skip files whose outputs exist and were made with the same parameters (as batch)",
    )
    p.set_defaults(func=cmd_integrate)

    p = sub.add_parser(
        "batch",
        parents=[common, fitting, rules],
        allow_abbrev=False,
        help="integrate many files in parallel (MIDAS integrator.py flags accepted)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DATA_EPILOG.format(cmd="batch"),
    )
    p.add_argument("params", nargs="?", help="MIDAS parameter file or pyFAI .poni (or -paramFN)")
    p.add_argument("data", nargs="*", metavar="DATA", help=DATA_HELP)
    p.add_argument("-paramFN", help="parameter file (MIDAS flag)")
    p.add_argument("-dataFN", help="first data file of a numbered series (MIDAS flag)")
    p.add_argument("-darkFN", "--dark", dest="darkFN", help="dark file (frames averaged)")
    p.add_argument(
        "-dataLoc",
        "--dataset",
        dest="dataLoc",
        default=None,
        help="HDF5 dataset of the frames (default exchange/data)",
    )
    p.add_argument(
        "-darkLoc",
        "--dark-dataset",
        dest="darkLoc",
        default=None,
        help="HDF5 dataset of the dark (default exchange/dark where the file has one, else "
        "exchange/data)",
    )
    p.add_argument("-resultFolder", help="output directory (MIDAS flag; same as -o)")
    p.add_argument("-startFileNr", type=int, default=-1, help="first file number of the series")
    p.add_argument("-endFileNr", type=int, default=-1, help="last file number of the series")
    p.add_argument(
        "-nCPUs",
        type=_positive_int,
        default=1,
        help="files processed in parallel (processes; default 1)",
    )
    p.add_argument(
        "-nCPUsLocal", "-j", "--threads", dest="nCPUsLocal", type=_positive_int, default=None,
        help="threads per process",
    )  # fmt: skip
    p.add_argument("--raw-dtype", type=_pixel_dtype, default=None, help=RAW_DTYPE_HELP)
    p.add_argument(
        "--dark-dtype", type=_pixel_dtype, default=None,
        help="pixel type of a raw (.raw/.bin) dark when it differs from the frames', e.g. int64 "
        "for MIDAS's dark_avg.bin (default: --raw-dtype)",
    )  # fmt: skip
    p.add_argument("-writeMat", type=int, default=0, help="1: also write .mat")
    p.add_argument(
        "-skipExisting",
        "--skip-existing",
        dest="skipExisting",
        action="store_true",
        help="skip files whose outputs exist and were made with the same parameters (outputs "
        "made with others are redone, with a warning)",
    )
    p.add_argument("-outName", help="output stem (single input file)")
    # integrator.py flags that steer MIDAS's own steps (zip conversion, map files, chunked
    # reading, logging): accepted so an existing command line runs; see _integrator_py_flags.
    for flag, kind in (("-convertFiles", int), ("-mapDetector", int), ("-numFrameChunks", int),
                       ("-preProcThresh", float), ("-shortNames", int), ("-csvOutput", int),
                       ("-logLevel", str), ("-viewerTheme", str), ("-peakParamsFN", str),
                       ("-brightFN", str)):  # fmt: skip
        p.add_argument(flag, type=kind, default=None, help=argparse.SUPPRESS)
    for flag in ("-liveViewer", "-peakFit"):
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    # default None, not ".": -o and -resultFolder naming two folders is refused (cmd_batch)
    p.add_argument("-o", "--output", default=None, help="output directory (default: .)")
    p.add_argument(
        "--format", default="nexus", help="comma-separated output formats (see integrate)"
    )
    p.add_argument(
        "--backend",
        default="cpu",
        choices=["cpu", "cuda", "auto"],
        help="cpu (default), cuda, or auto (cuda where it works, else cpu)",
    )
    p.add_argument(
        "--dask", default=None, help="Dask scheduler address, or local:N for a local cluster"
    )
    _add_compression(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser(
        "fit", parents=[common], help="fit peaks in the lineouts of a result file (.h5/.zarr)"
    )
    p.add_argument("result", help="a radint NeXus result (.h5 or .zarr)")
    p.add_argument("--peaks", metavar="LIST", help="approximate peak positions, comma-separated")
    p.add_argument(
        "--unit",
        default="2theta",
        choices=["2theta", "px"],
        help="unit of --peaks (default 2theta)",
    )
    p.add_argument(
        "--auto", metavar="N", type=_positive_int, help="detect and fit up to N peaks instead"
    )
    # Unset, these come from the result's parameter file (its FitROIPadding ...), else defaults.
    p.add_argument("--roi-padding", type=int, default=None,
                   help=f"ROI half-width in bins (the result's FitROIPadding, else {FIT_ROI_PADDING})")  # fmt: skip
    p.add_argument("--roi-auto", action="store_true", default=None,
                   help="ROI from the peak widths (FitROIAuto; default: the result's)")  # fmt: skip
    p.add_argument(
        "--snip-iterations",
        type=int,
        default=None,
        help=f"SNIP background iterations (the result's SNIPIterations, else {SNIP_ITERATIONS})",
    )
    p.add_argument(
        "--format", default="peaks", help="comma-separated: peaks (CSV, default), fit (fit.bin)"
    )
    p.add_argument("-o", "--output", default=None, help="output directory (default: beside it)")
    p.add_argument(
        "--update", action="store_true", help="also store the fits in the result file (peaks group)"
    )
    _add_compression(p)
    p.add_argument(
        "-j", "--threads", type=_positive_int, default=None, help="threads (default: all cores)"
    )
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "convert", parents=[common], help="write a stored result in other formats (midas, xy, ...)"
    )
    p.add_argument("result", help="a radint NeXus result (.h5 or .zarr), e.g. a stream.h5")
    p.add_argument(
        "--format",
        required=True,
        help="comma-separated: nexus, zarr, midas (caked + gsas), caked, gsas, xy, bin, mat, "
        "peaks, fit, fit_per_eta, caked_peaks, peaks_per_eta (see radint integrate --help)",
    )
    p.add_argument("-o", "--output", default=None, help="output directory (default: beside it)")
    _add_compression(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "plot", parents=[common], help="PNG of a result's lineout and cake (radint[plot])"
    )
    p.add_argument("result", help="a radint NeXus file (.h5), or a MIDAS caked.hdf")
    p.add_argument(
        "-o", "--output", default=None,
        help="PNG path (default: beside the result, its name with .png for its last suffix)",
    )  # fmt: skip
    p.add_argument("--frame", type=int, default=-1, help="frame index (default: last)")
    p.add_argument(
        "--peak-param",
        choices=["center", "center_px", "d", "fwhm", "area", "eta_mix", "chi2"],
        help="also plot this fitted peak parameter vs frame (needs fitted peaks in the file)",
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="keep redrawing the PNG as the file grows (e.g. a running 'radint stream')",
    )
    p.add_argument(
        "--interval", type=_positive_float, default=2.0, help="--follow: seconds between checks"
    )
    p.add_argument(
        "--follow-for", type=_positive_float, default=None, help="--follow: stop after S s"
    )
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "stream",
        parents=[common, fitting, rules],
        help="integrate frames live from TCP (MIDAS protocol), PVA or a folder",
    )
    p.add_argument("params", help="MIDAS parameter file or pyFAI .poni")
    p.add_argument("overrides", nargs="*", help="MIDAS 'Key value' overrides")
    p.add_argument("-o", "--output", required=True, help="output directory (stream.h5)")
    p.add_argument("--source", default="tcp", choices=["tcp", "pva", "folder"], help="default: tcp")
    p.add_argument(
        "--host", default="127.0.0.1", help="TCP address to listen on (default 127.0.0.1)"
    )
    p.add_argument(
        "--port",
        type=_port(0),
        default=60439,
        help="TCP port (default 60439; 0: any free port, logged)",
    )
    p.add_argument("--channel", help="PVA channel (NTNDArray), for --source pva")
    p.add_argument(
        "--dark", help="dark file subtracted from every frame (frames averaged; default: the "
        "parameters' Dark)",
    )  # fmt: skip
    p.add_argument("--dark-dataset", default=None, help="HDF5 dataset of the dark")
    p.add_argument(
        "--dark-dtype", "--raw-dtype", dest="raw_dtype", type=_pixel_dtype, default=None,
        help="pixel type of a raw (.bin/.raw) dark, e.g. int64 for the GPU program's "
        "dark_avg.bin (frames of NrPixelsZ x NrPixelsY, averaged)",
    )  # fmt: skip
    p.add_argument("--watch", help="directory to watch, for --source folder")
    p.add_argument(
        "--dataset",
        "--h5-location",  # integrator_server.py's name
        default=None,
        help="--source folder: HDF5 dataset of the frames (default exchange/data, or a Dectris "
        "master's entry/data; areaDetector's HDF5 plugin writes entry/data/data)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="--source folder: seconds a file must stay unchanged before it is read (default 1; "
        "raise it for writers that pause longer between frames)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto (default: cuda where it works, else cpu; live rates need the GPU), cpu, cuda",
    )
    p.add_argument(
        "--save-interval",
        type=_positive_int,
        default=100,
        help="flush every N frames (default 100) and every 5 s",
    )
    p.add_argument("--max-frames", type=_positive_int, default=None, help="stop after N frames")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        help="stop after S s without frames (default: run until Ctrl-C / SIGTERM)",
    )
    p.add_argument(
        "--midas-files",
        action="store_true",
        help="also write MIDAS's lineout.bin, Int2D.bin (with Write2D 1, as MIDAS), fit.bin "
        "(when fitting) and at the end integrator_output.h5 / .zarr.zip and, when fitting, the "
        "GPU program's caked_peaks.h5 (per-frame peak table); a second Ctrl-C skips the end files",
    )
    _add_compression(
        p,
        default="none",
        help=(
            "stream.h5 compression (default none: fastest; a Pilatus 2M 1 px x 5 deg frame with "
            "sigma is 1.4 MB raw, ~0.85 MB with blosc-lz4)"
        ),
    )
    p.add_argument(
        "--mapping-file",
        default=None,
        help="--midas-files: the sender's frame_mapping.json, to sort and name the frames of "
        "integrator_output.h5 and caked_peaks.h5 by file name as MIDAS does (read at the end)",
    )
    p.add_argument(
        "--control-dir",
        default=None,
        help="where peak_update.txt / peaks.json change fitted peaks live (default: -o DIR)",
    )
    p.add_argument(
        "-j", "--threads", type=_positive_int, default=None, help="threads (default: all cores)"
    )
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser(
        "send", parents=[common], help="send frame files to a MIDAS-protocol TCP server"
    )
    p.add_argument("params", help="MIDAS parameter file or pyFAI .poni (frame size)")
    p.add_argument(
        "data",
        nargs="+",
        help="files or directories (their frame files sorted by name: frame_10 before "
        "frame_2), then 'Key value' overrides",
    )
    p.add_argument("--host", default="127.0.0.1", help="server address (default: 127.0.0.1)")
    p.add_argument("--port", type=_port(1), default=60439, help="server port (default: 60439)")
    p.add_argument("--compress", action="store_true", help="uint16, or hybrid dtype 6 above 65535")
    p.add_argument("--extension", help="only files with this suffix in directories (e.g. tif)")
    p.add_argument(
        "--h5-location", "--dataset", dest="h5_location", default="exchange/data",
        help="HDF5 dataset of the frames (default exchange/data); a group: each of its 2-D "
        "datasets is a frame, as MIDAS's sender sends them",
    )  # fmt: skip
    p.add_argument(
        "--mapping-file", default="frame_mapping.json",
        help="JSON of frame number -> source file it writes, as MIDAS's sender (default: "
        "frame_mapping.json in the current folder)",
    )  # fmt: skip
    p.add_argument(
        "--save-interval",
        type=_positive_int,
        default=500,
        help="rewrite the mapping every N frames (default 500)",
    )
    p.add_argument(
        "--connections", type=_positive_int, default=1, metavar="N",
        help="spread the frames round robin over N connections, each sent by its own thread "
        "(default 1, as MIDAS's sender): one connection's copy caps the rate at a few hundred "
        "10 MB frames/s; radint stream and MIDAS's GPU program take a thread per client. "
        "Frame ids keep the sending order, arrival order across connections is not kept "
        "(MIDAS's post-processing names frames by arrival: use 1 for it)",
    )  # fmt: skip
    p.set_defaults(func=cmd_send)
    return parser


#: How many SIGINT / SIGTERM the running command has had.
_SIGNALS: dict[str, int] = {"count": 0}


def _interrupt(signum: int, _frame: object) -> None:
    """The first SIGINT or SIGTERM stops the command as Ctrl-C does. The second must not cut
    its clean-up short (an impatient second Ctrl-C left output sets half renamed and .partial
    files behind, and sometimes a process hung at exit, under a message saying all was
    removed): it is only answered. A third stops at once, clean-up or not (the first may have
    landed where Python drops it, in a finalizer)."""
    _SIGNALS["count"] += 1
    if _SIGNALS["count"] == 2:
        with contextlib.suppress(OSError):
            os.write(2, b"radint: stopping: unfinished outputs are being removed (one more "
                        b"Ctrl-C or SIGTERM stops at once and may leave them)\n")  # fmt: skip
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_send(signum: int, _frame: object) -> None:
    """SIGTERM in ``radint send``: a KeyboardInterrupt, as Ctrl-C."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _take_trailing_tokens(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]
) -> None:
    """Give the words argparse left over to the subcommand's data/overrides list: MIDAS users
    type ``Key value`` overrides (and, with ``radint batch``, ``-Key value``) anywhere on the
    line, also after options (spec §8.1)."""
    target = getattr(args, "data", None)
    if target is None:
        target = getattr(args, "overrides", None)
    unknown = []
    for tok in extras:
        if target is not None and (not tok.startswith("-") or _is_number(tok)):
            target.append(tok)
        else:
            unknown.append(tok)
    if unknown:
        # Said by the subcommand (its usage, not the top level's), with the closest option.
        import difflib

        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices.get(getattr(args, "command", None) or "", parser)
        options = sorted(command._option_string_actions)
        hints = [f"{tok}: did you mean {close[0]}?" for tok in unknown
                 if (close := difflib.get_close_matches(tok.split("=")[0], options, n=1))]  # fmt: skip
        hint = f" ({'; '.join(hints)})" if hints else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def _dash_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``radint batch``: MIDAS's integrator.py takes ``-Key value`` (and ``--Key value``: it
    strips the dashes) as a parameter override (spec §8.1); such a ``-Key`` / ``--Key`` that is
    not one of batch's own options becomes ``Key``."""
    commands = [t for t in argv if not t.startswith("-")]
    if not commands or commands[0] != "batch":
        return argv
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    own = set(sub.choices["batch"]._option_string_actions)

    def key(token: str) -> str:
        name = token[2:] if token.startswith("--") else token[1:]
        if token in own or _is_number(token) or not token.startswith("-"):
            return token
        return name if name[:1].isupper() or name in _LOWER_KEYS else token

    at = argv.index("batch")
    return [*argv[: at + 1], *map(key, argv[at + 1 :])]


def _is_own(record: logging.LogRecord) -> bool:
    return record.name == "radint" or record.name.startswith("radint.")


def _own_or_warning(record: logging.LogRecord) -> bool:
    """The command's log filter: radint's records at its level, other libraries' (Dask sets
    its loggers to INFO) only from warnings up."""
    return _is_own(record) or record.levelno >= logging.WARNING


class _CliLogFormat(logging.Formatter):
    """``radint: message``, or ``<library logger>: message`` for another library's warning."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{'radint' if _is_own(record) else record.name}: {super().format(record)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radint`` command; returns the exit code."""
    parser = build_parser()
    argv = _dash_overrides(parser, list(sys.argv[1:] if argv is None else argv))
    args, extras = parser.parse_known_args(argv)
    _take_trailing_tokens(parser, args, extras)
    # radint's own messages at the asked level; other libraries' (distributed, h5py) only
    # when they warn, so -v is not drowned in their debug lines.
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host application's handlers stay
        handler = logging.StreamHandler()
        handler.setFormatter(_CliLogFormat())
        handler.addFilter(_own_or_warning)
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    log.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    previous: dict[signal.Signals, Any] = {}
    if args.command in ("integrate", "batch"):
        # SLURM's scancel / timeout and `kill` send SIGTERM: stop as Ctrl-C does, so files in
        # progress are removed and the summary still prints.
        _SIGNALS["count"] = 0
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _interrupt)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not `cmd &`'s ignore
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
    elif args.command == "send":
        # `kill` / `timeout` stop a send as Ctrl-C does: its mapping then lists the frames sent.
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _stop_send)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        resume = (" (rerun with --skip-existing to resume)"
                  if getattr(args, "command", None) in ("batch", "integrate") else "")  # fmt: skip
        cut_short = previous and _SIGNALS["count"] >= 3
        print(
            "radint: interrupted while removing unfinished outputs: some may be left (hidden "
            f".*.partial files, which a later run in the folder removes); finished ones kept{resume}"
            if cut_short else
            f"radint: interrupted; outputs not finished were removed, finished ones kept{resume}",
            file=sys.stderr,
        )  # fmt: skip
        return 130
    except BrokenPipeError:
        # The reader of our output went away (radint info ... | head): not an error of ours.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except RadintError as e:
        print(f"radint: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # Setup failures outside any one input file (output directory, parameter or dark file).
        where = f"{e.filename}: " if e.filename else ""
        if e.filename and re.fullmatch(r"\..+\.partial", Path(str(e.filename)).name):
            # an output's hidden temporary name (radint.io.atomic) means nothing to the user
            where = f"cannot write to {Path(str(e.filename)).parent}: "
        print(f"radint: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        _FrameTotal.stop_all()
        for signum, was in previous.items():  # main() called from Python leaves them as they were
            signal.signal(signum, was)


if __name__ == "__main__":
    sys.exit(main())
