"""One entry point for every output format: :func:`write_result`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from radint.exceptions import InvalidInputError, RadintError
from radint.io.midas import write_gsas_zarr_zip, write_midas_caked
from radint.io.nexus import SpaceHold, ensure_space, write_nexus
from radint.io.text import write_lineout_bin, write_lineout_xy, write_mat, write_peaks_csv
from radint.result import Result

__all__ = ["FORMATS", "expand_formats", "output_name", "resolve_formats", "write_result"]


def _write_fit_bin(result: Result, path: Path) -> Path:
    from radint.fit import write_fit_bin

    if result.peaks is None:
        raise InvalidInputError(
            f"{path}: the result has no fitted peaks (use fit= or 'radint fit')"
        )
    return write_fit_bin(result.peaks, path)


def _write_fit_per_eta(result: Result, path: Path) -> Path:
    from radint.io.peaks import peaks_per_eta, write_fit_per_eta_csv

    return write_fit_per_eta_csv(peaks_per_eta(result), path)


def _write_caked_peaks(result: Result, path: Path) -> Path:
    from radint.io.peaks import peaks_per_eta, write_caked_peaks_per_eta

    return write_caked_peaks_per_eta(peaks_per_eta(result), path)


#: format name → (file-name suffix appended to ``name``, writer)
FORMATS: dict[str, tuple[str, Callable[[Result, Path], Path]]] = {
    "nexus": (".h5", write_nexus),
    "zarr": (".zarr", lambda r, p: write_nexus(r, p, backend="zarr")),
    "caked": (".caked.hdf", write_midas_caked),
    "gsas": (".zarr.zip", write_gsas_zarr_zip),
    "xy": ("_lineout.xy", write_lineout_xy),
    "bin": ("_lineout.bin", write_lineout_bin),
    "mat": (".mat", write_mat),
    "peaks": ("_peaks.csv", write_peaks_csv),
    "fit": ("_fit.bin", _write_fit_bin),
    "fit_per_eta": ("_fit_per_eta.csv", _write_fit_per_eta),
    "caked_peaks": ("_caked_peaks.h5", _write_caked_peaks),
}
#: The per-frame arrays of a Result each format's writer reads (:meth:`Result.without` keeps
#: only these for the formats a batch writes at a file's end; the axes, metadata and peaks
#: always stay).
_ALL_ARRAYS = ("cake", "cake_sigma", "lineout", "lineout_sigma", "area", "count")
FORMAT_ARRAYS: dict[str, tuple[str, ...]] = {
    "nexus": _ALL_ARRAYS, "zarr": _ALL_ARRAYS, "mat": _ALL_ARRAYS,
    "caked": ("cake", "area"), "gsas": ("cake", "area"),
    "xy": ("lineout",), "bin": ("lineout",),
    "peaks": (), "fit": (),
    "fit_per_eta": ("cake",), "caked_peaks": ("cake",),
}  # fmt: skip
#: "midas" names the pair MIDAS users expect; "peaks_per_eta" IntegratorZarrOMP's per-η fit files.
ALIASES = {"midas": ("caked", "gsas"), "peaks_per_eta": ("fit_per_eta", "caked_peaks")}
#: What "midas" adds when peaks are fitted (IntegratorZarrOMP with DoPeakFit 1 writes them).
MIDAS_FIT_FORMATS = ("fit", "fit_per_eta", "caked_peaks")
#: Formats whose writer needs an optional package: format → (module, radint extra).
FORMAT_EXTRAS = {"mat": ("scipy.io", "formats")}


#: Formats that need fitted peaks in the result (``peaks``, ``fit``) or a fit to run per η.
NEEDS_PEAKS = ("peaks", "fit")
NEEDS_FIT_SPEC = ("fit_per_eta", "caked_peaks")


def check_formats(result: Result, formats: Sequence[str]) -> None:
    """Refuse, before anything is written, formats ``result`` cannot give.

    Raises
    ------
    ValueError
        ``peaks``/``fit`` asked of a result without fitted peaks, ``fit_per_eta``/``caked_peaks``
        of one without a configured fit, or a format whose optional package is missing.
    """
    wanted = expand_formats(formats)
    no_peaks = [f for f in wanted if f in NEEDS_PEAKS and result.peaks is None]
    if no_peaks:
        raise InvalidInputError(
            f"--format {','.join(no_peaks)}: the result has no fitted peaks (use fit= or 'radint fit'); "
            "nothing was written"
        )
    per_eta = [f for f in wanted if f in NEEDS_FIT_SPEC]
    if per_eta:
        from radint.fit import fit_spec_of

        if fit_spec_of(result) is None:
            raise InvalidInputError(
                f"--format {','.join(per_eta)}: per-eta peak fits need peaks to fit: DoPeakFit 1 with "
                "PeakLocation or AutoDetectPeaks (or --fit-peaks / --fit-auto, fit=); nothing was written"
            )
    missing = missing_format_packages(wanted)
    if missing:
        raise InvalidInputError("; ".join(missing) + "; nothing was written")


def _remove(path: Path) -> None:
    import shutil

    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def missing_format_packages(formats: Sequence[str]) -> list[str]:
    """One line per wanted format whose writer's optional package is not installed, e.g.
    "--format mat needs scipy (No module named 'scipy'): pip install 'radint[formats]'"."""
    import importlib

    missing = []
    for fmt in expand_formats(formats):
        if fmt in FORMAT_EXTRAS:
            module, extra = FORMAT_EXTRAS[fmt]
            try:
                importlib.import_module(module)
            except ImportError as e:
                missing.append(f"--format {fmt} needs {module.split('.')[0]} ({e}): "
                               f"pip install 'radint[{extra}]'")  # fmt: skip
    return missing


def fitting_of(result: Result) -> tuple[bool, bool]:
    """Whether ``result`` has fitted peaks, and whether a fit is known to run per η."""
    from radint.fit import fit_spec_of

    fitted = result.peaks is not None
    return fitted, fitted and fit_spec_of(result) is not None


def resolve_formats(
    formats: Sequence[str], fitting: bool, per_eta: bool | None = None
) -> tuple[str, ...]:
    """``formats`` with ``"midas"`` made explicit: caked + gsas, and when peaks are fitted
    (``fitting``: DoPeakFit / ``--fit-peaks`` / ``fit=``) also IntegratorZarrOMP's fit files
    ``fit``, ``fit_per_eta`` and ``caked_peaks``. Other names are kept as given.

    Parameters
    ----------
    formats : sequence of str or str
        Format names or aliases (:data:`FORMATS`, :data:`ALIASES`); one string is one name.
        ``"midas"`` is matched in any case; names are not checked here.
    fitting : bool
        Whether peaks are fitted: ``"midas"`` then also adds :data:`MIDAS_FIT_FORMATS`.
    per_eta : bool, optional
        Whether the per-η fits can run (a fit is known: :func:`radint.fit.fit_spec_of`);
        default ``fitting``. Where not, ``"midas"`` adds only ``fit`` (peaks fitted by hand
        into a result whose configuration fits nothing).

    Returns
    -------
    tuple of str
        The names in order, each ``"midas"`` replaced by its formats (duplicates kept).
    """
    if isinstance(formats, str):  # "nexus" is one format, not five letters
        formats = [formats]
    fit_formats: tuple[str, ...] = MIDAS_FIT_FORMATS if fitting else ()
    if fitting and per_eta is False:
        fit_formats = tuple(f for f in fit_formats if f not in NEEDS_FIT_SPEC)
    out: list[str] = []
    for fmt in formats:
        if fmt.lower() == "midas":
            out += [*ALIASES["midas"], *fit_formats]
        else:
            out.append(fmt)
    return tuple(out)


def expand_formats(formats: Sequence[str]) -> list[str]:
    """Format names with aliases expanded, lower-cased, de-duplicated, in order (``"midas"`` as
    caked + gsas; :func:`resolve_formats` first adds the fit files where peaks are fitted).

    Parameters
    ----------
    formats : sequence of str or str
        Format names (:data:`FORMATS`) or aliases (:data:`ALIASES`), in any case; one string
        is one name.

    Returns
    -------
    list of str
        Known format names (keys of :data:`FORMATS`), each once, in first-given order.

    Raises
    ------
    InvalidInputError
        An unknown format name, or no format at all (an empty name or list, e.g. ``--format ""``
        from an unset shell variable, would otherwise integrate everything and write nothing);
        or ``zarr`` asked where zarr >= 3 is not installed. A ``ValueError``.
    """
    if isinstance(formats, str):  # "nexus" is one format, not five letters
        formats = [formats]
    known = ", ".join([*FORMATS, *ALIASES])
    if not formats or any(not str(f).strip() for f in formats):
        raise InvalidInputError(f"no output format given (got {list(formats)!r}); known: {known}")
    wanted: list[str] = []
    for fmt in formats:
        for f in ALIASES.get(fmt.lower(), (fmt.lower(),)):
            if f not in FORMATS:
                raise InvalidInputError(f"unknown output format {fmt!r}; known: {known}")
            if f not in wanted:
                wanted.append(f)
    if "zarr" in wanted:  # refused before any work, not when the first result is written
        from radint.io._common import zarr3

        try:
            zarr3("zarr")
        except RadintError as e:
            raise InvalidInputError(str(e)) from None
    return wanted


#: Formats the HDF5 library writes into the file itself (a full disk met there crashes the
#: process later, so the free space is checked first). caked.hdf, which HDF5 writes too, takes
#: its computed size on the disk itself before HDF5 starts (posix_fallocate, see
#: :func:`radint.io.midas.write_midas_caked`): a full disk fails it with a plain OSError, as it
#: does the formats written as bytes.
HDF5_DIRECT_FORMATS = ("nexus",)


def estimated_bytes(result: Result, fmt: str) -> int:
    """About the size of the ``fmt`` file of ``result`` (uncompressed, so at most a few times
    too large; text as ~14 bytes a number), which the write holds (:class:`SpaceHold`) while it
    runs and, for :data:`HDF5_DIRECT_FORMATS`, checks against the free space first."""
    cake = 8 * int(result.cake.size)  # float64 on disk
    lineout = 8 * int(result.lineout.size)
    bins = 8 * int(np.prod(result.cake.shape[-2:]))  # one frame's
    if fmt in ("nexus", "zarr", "mat"):
        arrays = [result.cake, result.cake_sigma, result.lineout, result.lineout_sigma,
                  result.area, result.count]  # fmt: skip
        return sum(int(a.nbytes) for a in arrays if a is not None) + (64 << 10)
    if fmt == "caked":  # cakes and their ω sums, the R/2θ/η/area/Q maps, lineouts
        return 2 * cake + 5 * bins + 2 * lineout + (64 << 10)
    if fmt == "gsas":
        return cake + 5 * bins + (64 << 10)
    if fmt == "xy":  # a line per bin: "%.6f" 2θ/Q, two spaces, "%.10g" intensity (≤ 28 bytes)
        return int(result.lineout.size) * 28 + (64 << 10)
    if fmt == "bin":
        return lineout + (64 << 10)
    return 1 << 20  # peak tables


def output_name(result: Result, name: str | None) -> str:
    """``name``, or the input file's stem from ``result.metadata['source']``, or ``"result"``.

    Parameters
    ----------
    result : Result
        Its ``metadata["source"]`` (the input, possibly followed by ``:`` and a location in
        it) names the output when ``name`` is not given.
    name : str or None
        The output's base name; used as is when non-empty.

    Returns
    -------
    str
        ``name``; else the source's file name up to its first ``.`` (text after the first
        ``:`` dropped); else ``"result"`` (no source, or an empty stem).
    """
    if name:
        return name
    source = result.metadata.get("source")
    if source:
        return Path(str(source).split(":", 1)[0]).name.split(".", 1)[0] or "result"
    return "result"


def refusal(path: Path, fmt: str) -> str | None:
    """Why the existing ``path`` must not be replaced by a ``fmt`` output (an earlier run's
    output may be; a user's data may not): a folder where a file goes, a ``.h5``/``.zarr`` that
    is no integration result (raw frames beside the inputs), a ``.zarr.zip``/``.caked.hdf``/
    ``_caked_peaks.h5`` holding detector frames. None where nothing is there or it may go."""
    from radint.io.inputs import is_reduced_result

    if not os.path.lexists(path):
        return None
    if fmt != "zarr" and path.is_dir():
        return "exists and is a folder (a file goes there)"
    if fmt in ("nexus", "zarr"):
        if is_reduced_result(path):
            return None
        return "exists and is not a radint result (raw data?); it is not replaced"
    if fmt in ("gsas", "caked", "caked_peaks") and _holds_frames(path):
        return "exists and holds detector frames (exchange/data); it is not replaced"
    return None


def _holds_frames(path: Path) -> bool:
    """Whether an HDF5 file or a zip holds ``exchange/data`` (a MIDAS zip, a frame file)."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return any(n.startswith("exchange/data") for n in z.namelist())
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            return "exchange/data" in f
    except Exception:  # unreadable: not frames radint could have read either
        return False


def write_result(
    result: Result,
    path_or_dir: str | Path,
    formats: Sequence[str] = ("nexus",),
    name: str | None = None,
    compression: str | None = "blosc-lz4",
) -> list[Path]:
    """Write ``result`` in each requested format into a directory, every file atomically.

    Parameters
    ----------
    result : Result
        One frame or a stack.
    path_or_dir : str or Path
        Output directory (created if missing).
    formats : sequence of str
        Any of ``"nexus"`` (``<name>.h5``, NXazint1d/NXazint2d), ``"zarr"`` (``<name>.zarr``,
        Zarr v3, same tree), ``"caked"`` (``<name>.caked.hdf``, MIDAS §9.1), ``"gsas"``
        (``<name>.zarr.zip`` for GSAS-II), ``"midas"`` (caked + gsas), ``"xy"``
        (``<name>_lineout.xy``), ``"bin"`` (``<name>_lineout.bin``, raw float64 lineouts as
        IntegratorZarrOMP writes them), ``"mat"`` (``<name>.mat``), and for results with fitted peaks
        ``"peaks"`` (``<name>_peaks.csv``) and ``"fit"`` (``<name>_fit.bin``, MIDAS §6.5),
        ``"fit_per_eta"`` (``<name>_fit_per_eta.csv``) and ``"caked_peaks"``
        (``<name>_caked_peaks.h5``): IntegratorZarrOMP's per-η fits of the cake
        (:func:`radint.fit.fit_per_eta`), ``"peaks_per_eta"`` both. For a result with fitted
        peaks, ``"midas"`` also writes ``fit``, ``fit_per_eta`` and ``caked_peaks``, as
        IntegratorZarrOMP does with ``DoPeakFit 1``.
    name : str, optional
        File stem; default the stem of ``result.metadata['source']`` (text before the first
        dot), else ``"result"``.
    compression : {"blosc-lz4", "gzip", None}
        Of the NeXus HDF5 file (:func:`~radint.io.write_nexus`; gzip is readable without
        hdf5plugin).

    Returns
    -------
    list of Path
        The files written, in the order of ``formats``.

    Raises
    ------
    ValueError
        An unknown format name, or none; a format the result cannot give (``peaks``/``fit``
        without fitted peaks, per-η fits without a configured fit, ``mat`` without scipy):
        checked for every format before anything is written.
    OSError
        The directory cannot be created or written; no partial file is left behind.

    A writer that fails removes the files this call created before it, so a call leaves either
    all of its new outputs or none; a file that was there before (an earlier output replaced,
    or the result being rewritten in place, as ``radint fit`` does) is left as it now is.
    """
    wanted = expand_formats(resolve_formats(formats, *fitting_of(result)))
    check_formats(result, wanted)
    out_dir = Path(path_or_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_name(result, name)
    targets = [out_dir / f"{stem}{FORMATS[f][0]}" for f in wanted]
    refused = [f"{t} {why}" for f, t in zip(wanted, targets, strict=True)
               if (why := refusal(t, f)) is not None]  # fmt: skip
    if refused:
        raise InvalidInputError(f"outputs refused: {'; '.join(refused)}; write elsewhere (-o DIR)")
    existed = {t for t in targets if os.path.lexists(t)}
    written: list[Path] = []
    try:
        for f, target in zip(wanted, targets, strict=True):
            # Held while the file is written (a batch appends to the next file's NeXus output
            # meanwhile, whose check counts it); room checked first where HDF5 writes the
            # file itself: HDF5 meeting a full disk crashes the process later.
            nbytes = estimated_bytes(result, f)
            if f in HDF5_DIRECT_FORMATS:
                ensure_space(target, nbytes)
            with SpaceHold(nbytes):
                if f == "nexus":
                    written.append(write_nexus(result, target, compression=compression))
                else:
                    written.append(FORMATS[f][1](result, target))
    except BaseException:
        for path in written:
            if path not in existed:
                _remove(path)
        raise
    return written
