"""One line about a file radint (or a MIDAS program) wrote that is not a radint NeXus result:
what ``radint info`` prints for ``X.caked.hdf``, ``X.zarr.zip``, ``X_lineout.bin``, ``X.mat``,
``X_caked_peaks.h5``, ``X_lineout.xy``, ... instead of reading it as a parameter file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["describe_output"]

#: Said after the description: the file was given where a parameter file goes.
HINT = "an output file, not a parameter file"


def _caked_tree(shapes: dict[str, tuple[int, ...]], kind: str) -> str:
    """``shapes``: array path → shape of a MIDAS caked tree (HDF5 or zarr)."""
    frames = sum(1 for n in shapes if n.startswith("IntegrationResult/"))
    sums = sum(1 for n in shapes if n.startswith("OmegaSumFrame/"))
    geometry = shapes.get("REtaMap")
    bins = (
        f", {geometry[2]} eta x {geometry[1]} radial bins"
        if geometry and len(geometry) == 3
        else ""
    )
    parts = [f"{frames} frame(s) in IntegrationResult"]
    if sums:
        parts.append(f"{sums} OmegaSumFrame sum(s)")
    if "SumFrames" in shapes:
        parts.append("SumFrames")
    return f"{kind}: {', '.join(parts)}{bins}"


def _h5_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import h5py

    shapes: dict[str, tuple[int, ...]] = {}
    with h5py.File(path, "r", locking=False) as f:
        f.visititems(
            lambda name, obj: shapes.__setitem__(name, obj.shape) if hasattr(obj, "shape") else None
        )
    return shapes


def _stream_output_groups(path: Path) -> list[str]:
    """The top groups of an ``integrator_stream_process_h5.py`` output (it has ``lineouts``
    and ``geometry_maps``), else []."""
    import h5py

    if not h5py.is_hdf5(path):
        return []
    with h5py.File(path, "r", locking=False) as f:
        groups = sorted(f)
    return groups if {"lineouts", "geometry_maps"} <= set(groups) else []


def _zip_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith("/.zarray"):
                shapes[name.removesuffix("/.zarray")] = tuple(json.loads(zf.read(name))["shape"])
    return shapes


def _text_lines(path: Path) -> tuple[str, int]:
    """The first line and the number of data lines (not starting with ``#``)."""
    first, n = "", 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        for k, line in enumerate(fh):
            if k == 0:
                first = line.strip()
            if line.strip() and not line.startswith("#"):
                n += 1
    return first, n


def _sibling_n_r(path: Path, suffix: str) -> int | None:
    """The radial bin count of the NeXus result ``<stem>.h5`` beside ``<stem><suffix>``."""
    from radint.io.nexus import open_result

    nexus = path.with_name(path.name.removesuffix(suffix) + ".h5")
    try:
        with open_result(nexus) as f:
            return int(f["entry/azint1d/data/I"].shape[-1])
    except (OSError, KeyError, ValueError):
        return None


def _per_frame(n: int, path: Path, suffix: str, what: str) -> str:
    n_r = _sibling_n_r(path, suffix)
    if n_r and n % n_r == 0:
        return f"{n // n_r} frame(s) x {n_r} radial bins (from {path.name.removesuffix(suffix)}.h5 beside it)"
    return f"{n} {what}, n_r per frame (the file stores no bin count)"


def _describe(path: Path) -> str | None:
    name = path.name
    size = path.stat().st_size if path.is_file() else 0
    if name.endswith(".caked.hdf"):
        return _caked_tree(_h5_shapes(path), "a MIDAS caked.hdf result (IntegratorZarrOMP layout)")
    if name.endswith(".zarr.zip"):
        return _caked_tree(
            _zip_shapes(path), "a GSAS-II .zarr.zip result (MIDAS caked tree, zarr v2)"
        )
    if name.endswith("caked_peaks.h5"):
        shapes = _h5_shapes(path)
        rows = shapes.get("peaks/frame_idx", (0,))[0]
        frames = shapes.get("metadata/frame_keys", (0,))[0]
        if rows and not frames:  # C's file lists no frame keys: its rows name their frames
            import h5py

            with h5py.File(path, "r", locking=False) as f:
                frames = len(np.unique(f["peaks/frame_idx"][()]))
        n_r = shapes.get("metadata/tth_axis", (0,))[0]
        n_eta = shapes.get("metadata/eta_axis", (0,))[0]
        if not n_eta:  # the GPU stream program's: lineout fits (eta_idx 0), no axes
            if rows:
                import h5py

                with h5py.File(path, "r", locking=False) as f:  # its frame_keys is ["0"]
                    frames = max(frames, len(np.unique(f["peaks/frame_idx"][()])))
            return (
                "a MIDAS per-frame peak-fit table of lineout fits (GPU stream program "
                f"caked_peaks.h5): {rows} peak row(s), {frames} frame(s)"
            )
        return (
            f"a MIDAS per-eta peak-fit table (IntegratorZarrOMP caked_peaks.h5): {rows} peak row(s), "
            f"{frames} frame(s), {n_eta} eta x {n_r} radial bins"
        )
    if name.endswith(".h5") and (groups := _stream_output_groups(path)):
        # integrator_output.h5, or any name MIDAS's --output-h5 gave it
        return f"MIDAS's post-processed stream output (integrator_output.h5): {', '.join(groups)}"
    if name.endswith(".mat"):
        try:
            from scipy.io import whosmat
        except ImportError:
            return "a MATLAB result (radint --format mat; scipy is needed to list its variables)"
        shapes = {n: s for n, s, _ in whosmat(str(path))}
        lineout = shapes.get("lineout", ())
        cake = shapes.get("cake", ())
        bins = (
            f": {cake[0]} frame(s), {cake[1]} eta x {cake[2]} radial bins" if len(cake) == 3 else ""
        )
        if not bins and len(lineout) == 2:
            bins = f": {lineout[0]} frame(s) x {lineout[1]} radial bins"
        return f"a MATLAB result (radint --format mat){bins}; variables {', '.join(sorted(shapes))}"
    if name.endswith("_lineout.xy"):
        header, n = _text_lines(path)
        per_frame = _per_frame(n, path, "_lineout.xy", "line(s)")
        return (
            f"a lineout text file (IntegratorZarrOMP _lineout.xy, header {header!r}): {per_frame}"
        )
    if name.endswith("_fit_per_eta.csv"):
        _, n = _text_lines(path)
        return (
            f"a MIDAS per-eta peak-fit table (IntegratorZarrOMP _fit_per_eta.csv): {n - 1} row(s)"
        )
    if name.endswith("_peaks.csv"):
        _, n = _text_lines(path)
        return f"a fitted-peak table (radint --format peaks): {n - 1} row(s)"
    if name in ("Map.bin", "nMap.bin", "maskMap.bin"):
        return f"a MIDAS detector map file ({name}, radint map / DetectorMapper; {size} bytes)"
    if name.endswith("fit.bin"):
        return f"MIDAS fit.bin peak rows (7 float64 each): {size // 56} row(s), {size} bytes"
    if name.endswith("_lineout.bin"):
        per_frame = _per_frame(size // 8, path, "_lineout.bin", "float64 value(s)")
        return f"raw float64 lineouts (IntegratorZarrOMP _lineout.bin): {per_frame}"
    if name.startswith("radint-map-") and name.endswith(".npz"):
        with np.load(path) as z:
            rows, cols = (int(v) for v in z["shape"])
            n_r, n_eta = len(z["r_edges"]) - 1, len(z["eta_edges"]) - 1
            entries = int(z["pixel"].shape[0])
        return (
            f"a radint detector-map cache: {rows} x {cols} pixels, {n_eta} eta x {n_r} radial "
            f"bins, {entries} entries (rebuilt when missing; safe to delete)"
        )
    if name in _STREAM_BINS:
        return f"a MIDAS GPU-stream raw float64 file ({name}): {size // 8} value(s), no header"
    return None


#: The GPU stream program's binaries besides lineout files (radint stream --midas-files).
_STREAM_BINS = ("lineout.bin", "Int2D.bin", "RTthEtaAreaMap.bin", "lineout_simple_mean.bin")


def describe_output(path: str | Path) -> str | None:
    """One line describing ``path`` if it is one of radint's (or MIDAS's) non-NeXus outputs
    (``caked.hdf``, ``.zarr.zip``, ``_caked_peaks.h5``, ``.mat``, ``_lineout.xy``,
    ``_lineout.bin``, ``fit.bin``, peak CSVs, MIDAS map and stream files), else ``None``.

    The line names the kind of file, its frames and bins where the file holds them, and says it
    is not a parameter file. A file of such a name that cannot be read is described by its name.

    Parameters
    ----------
    path : str or Path
        The file (or directory) to look at; one that does not exist gives ``None``.

    Returns
    -------
    str or None
        ``"<path>: <description> (<hint>)"``, the hint saying what radint reads instead; or
        ``None`` when ``path`` does not exist or is not recognised as such an output.
    """
    p = Path(path)
    if not p.exists():
        return None
    try:
        text: Any = _describe(p)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        text = _describe_by_name(p, e)
    return None if text is None else f"{p}: {text} ({HINT})"


def _describe_by_name(path: Path, error: Exception) -> str | None:
    for suffix, kind in ((".caked.hdf", "a MIDAS caked.hdf"), (".zarr.zip", "a GSAS-II .zarr.zip"),
                         ("caked_peaks.h5", "a MIDAS caked_peaks.h5"), (".mat", "a MATLAB result")):  # fmt: skip
        if path.name.endswith(suffix):
            return f"named as {kind} but not readable as one ({error})"
    return None
