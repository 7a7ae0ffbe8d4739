"""The frame files a command-line DATA argument stands for: files, folders, ``@lists``, globs.

A shell cannot pass 100 000 file names (ARG_MAX), and beamline data come as folders of frames,
so ``radint integrate`` and ``radint batch`` expand, in the order given:

* ``DIR`` (not a Zarr store, which is one input): the frame files in it, natural order
  (``frame_2`` before ``frame_10``), only files a reader handles, without hidden files,
  without radint's own outputs (NeXus results, ``.caked.hdf``, ``_lineout.bin``, MIDAS maps)
  and without Eiger ``*_data_NNNNNN.h5`` files whose ``*_master.h5`` is there (it reads them);
* ``@LIST``: one path per line (``#`` comment lines and blank lines skipped, relative paths
  taken from the list file's folder), a listed folder expanded as above;
* a pattern (``'frames/*.tif'``, ``'run*/**/*.h5'``) that is no file's literal name: its
  matches, natural order, as a folder's files are filtered.

Anything else is kept as given (a missing file is reported where missing inputs are).
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from radint.exceptions import InvalidInputError

__all__ = ["collect_inputs", "is_frame_file", "natural_key"]

log = logging.getLogger("radint")

_TIFF_HDF5 = (".tif", ".tiff", ".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")
_HDF5 = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")
_OTHER = (".zip", ".edf", ".cbf", ".edf.gz", ".cbf.gz")
_RAW = (".raw", ".bin")
_GE = re.compile(r"\.ge\d*$", re.IGNORECASE)
_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")
#: An Eiger data file, read through its master file (``<prefix>_master.h5``) when that is there.
_DECTRIS_DATA = re.compile(r"(.+)_data_\d+\.h5", re.IGNORECASE)
#: Files radint or MIDAS write next to results, never frames (``radint map``'s maps, the
#: stream's MIDAS files).
_OUTPUT_NAMES = {
    "map.bin", "nmap.bin", "maskmap.bin", "lineout.bin", "lineout_simple_mean.bin", "int2d.bin",
    "rtthetaareamap.bin", "fit.bin", "integrator_output.h5", "integrator_output.zarr.zip",
    "caked_peaks.h5",
}  # fmt: skip
#: How many leading bytes of an HDF5 file are searched for radint's NeXus marks (the layout
#: template puts the groups, and so these names, within the first ~4 KB).
_HEAD_BYTES = 16384


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``frame_2`` before ``frame_10``.

    Parameters
    ----------
    name : str
        A file name or path.

    Returns
    -------
    tuple
        ``(parts, name)``: ``parts`` alternates the lower-cased text between digit runs and the
        runs' integer values; ``name`` itself breaks ties (names that differ only in case or
        leading zeros).
    """
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if k % 2 else p.lower() for k, p in enumerate(parts)), name


@functools.cache
def _output_suffixes() -> tuple[str, ...]:
    """Endings of radint's whole-file outputs that a frame reader would take for frames
    (``x_lineout.bin`` as raw, ``x.caked.hdf`` as HDF5, ``x.zarr.zip`` as Zarr)."""
    from radint.io.write import FORMATS

    return tuple(s.lower() for s, _ in FORMATS.values() if s not in (".h5", ".zarr"))


def is_reduced_result(path: str | Path) -> bool:
    """Whether ``path`` is an azimuthal-integration result, not frames: a radint NeXus result
    (HDF5 file or Zarr store) or another NXazint1d writer's, judged cheaply from an HDF5 file's
    first bytes (so one cut short by a killed copy still counts), ``entry/azint1d`` in a store.
    Folders and patterns leave such files out; outputs replace only such files."""
    path = Path(path)
    if path.is_dir():
        return (path / "entry" / "azint1d").is_dir()
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return False
    return head.startswith(b"\x89HDF") and b"NXazint1d" in head


def frame_name(name: str) -> bool:
    """Whether a file of this name is one the readers take as frames, by its name alone (no
    file access: for folder watchers that ask again at every poll): TIFF, HDF5, Zarr zip,
    EDF/CBF, GE; not hidden, not one of radint's (or MIDAS's) outputs."""
    low = name.lower()
    if low.startswith(".") or low in _OUTPUT_NAMES or low.endswith(_output_suffixes()):
        return False
    return low.endswith(_TIFF_HDF5 + _OTHER) or _GE.search(low) is not None


def is_frame_file(path: str | Path, raw_dtype: str | None = None) -> bool:
    """Whether a file found in a folder (or by a pattern) is one to integrate: a format the
    readers handle (TIFF, HDF5, Zarr store or zip, EDF/CBF, GE; raw ``.raw``/``.bin`` only
    with ``raw_dtype``), not hidden, not one of radint's (or MIDAS's) outputs.

    Parameters
    ----------
    path : str or Path
        The file or folder (a Zarr store). A link that loops or dangles counts as its name
        says (it then fails when read, with its reason).
    raw_dtype : str, optional
        The dtype raw frames are read as (e.g. ``"uint16"``); only whether it is given matters
        here: with it ``.raw``/``.bin`` files are frame files. Default None: they are not.

    Returns
    -------
    bool
        False for a path that does not exist, a hidden name, an output name, an HDF5 file or
        Zarr store folder holding an integration result, or an unknown format.
    """
    p = Path(path)
    # A link that loops or dangles is named like a frame file: taken, it fails on its own with
    # its reason (as in a folder listing), where dropping it hid it.
    return os.path.lexists(p) and _is_frame(p, p.is_dir(), raw_dtype)


def _is_store(path: Path) -> bool:
    return any((path / m).is_file() for m in _ZARR_MARKERS)


def _is_frame(p: Path, is_dir: bool, raw_dtype: str | None) -> bool:
    """:func:`is_frame_file` for an existing path whose kind is known (a folder listing
    knows it without another system call per file)."""
    name = p.name.lower()
    if name.startswith(".") or name in _OUTPUT_NAMES or name.endswith(_output_suffixes()):
        return False
    if is_dir:
        return _is_store(p) and not is_reduced_result(p)
    if name.endswith(_HDF5):
        return not is_reduced_result(p)
    if name.endswith(_TIFF_HDF5 + _OTHER) or _GE.search(name):
        return True
    return raw_dtype is not None and name.endswith(_RAW)


def _read_by_master(files: list[str], names: set[str] | None = None) -> list[str]:
    """The Eiger data files of ``files`` (``<prefix>_data_NNNNNN.h5``) whose
    ``<prefix>_master.h5`` is beside them: the master reads them, so each frame is taken once.
    ``names``: the lower-cased names in their folder when known (else looked up on disk)."""
    out = []
    for f in files:
        m = _DECTRIS_DATA.fullmatch(Path(f).name)
        if m is None:
            continue
        master = f"{m[1]}_master.h5"
        if names is not None:
            beside = master.lower() in names
        else:
            beside = (Path(f).parent / master).is_file()
        if beside:
            out.append(f)
    return out


def _entry_is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether a folder entry is a folder; a link that loops (or cannot be followed) is not:
    it is then taken as a file and fails on its own, naming its reason."""
    try:
        return entry.is_dir()
    except OSError:
        return False


class _Collector:
    """Expands DATA tokens with one pixel type for raw files and one set of files to leave
    out of folders and patterns (their real paths)."""

    def __init__(self, raw_dtype: str | None, skip: set[str]) -> None:
        self.raw_dtype = raw_dtype
        self.skip = skip

    def _aux(self, files: list[str]) -> list[str]:
        """The files of ``files`` to leave out (the parameters' dark and mask)."""
        return [f for f in files if os.path.realpath(f) in self.skip] if self.skip else []

    def folder(self, path: Path) -> list[str]:
        """The frame files of a folder (not recursive), natural order; an error when none."""
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: natural_key(e.name))
        files = [
            str(path / e.name)
            for e in entries
            if _is_frame(path / e.name, _entry_is_dir(e), self.raw_dtype)
        ]
        aux = self._aux(files)
        eiger = _read_by_master(files, {e.name.lower() for e in entries})
        files = [f for f in files if f not in aux and f not in eiger]
        hidden = sum(e.name.startswith(".") for e in entries)
        others = len(entries) - len(files) - len(aux) - len(eiger) - hidden
        skipped = ", ".join(
            f"{n} {what}"
            for n, what in (
                (hidden, "hidden"),
                (len(aux), "dark/mask/flat"),
                (len(eiger), "Eiger data read through their master"),
                (others, "not frames: radint outputs, MIDAS maps, other formats"),
            )
            if n
        )
        if not files:
            kinds = "TIFF, HDF5, Zarr, EDF/CBF, GE" + (", raw" if self.raw_dtype else "")
            raise InvalidInputError(
                f"{path}: no frame files in this folder ({kinds}; not hidden, not radint "
                f"outputs{'; skipped ' + skipped if skipped else ''}; subfolders are not "
                f"searched: give a pattern such as '{path}/**/*.tif')"
            )
        log.info(
            "%s: %d frame file(s)%s", path, len(files), f" (skipped {skipped})" * bool(skipped)
        )
        return files

    def pattern(self, token: str) -> list[str]:
        """The frame files a glob pattern matches (``**``: any depth), natural order; a
        matched folder stands for its frame files."""
        matches = sorted(glob.glob(os.path.expanduser(token), recursive=True), key=natural_key)
        files: list[str] = []
        for m in matches:
            if Path(m).is_dir() and not _is_store(Path(m)):
                files += self.folder(Path(m))  # 'run*/' stands for the runs' frames
            elif is_frame_file(m, self.raw_dtype):
                files.append(m)
        aux = self._aux(files)
        # 'run/*.h5' matches an Eiger master and its data files: each frame once, as a folder.
        eiger = _read_by_master(files)
        left_out = {*aux, *eiger}
        files = [f for f in files if f not in left_out]
        if not files:
            found = f"{len(matches)} match(es), none a frame file" if matches else "nothing matches"
            raise InvalidInputError(f"{token}: {found}")
        skipped = ", ".join(
            f"{n} {what}"
            for n, what in (
                (len(aux), "dark/mask/flat"),
                (len(eiger), "Eiger data read through their master"),
            )
            if n
        )
        log.info("%s: %d frame file(s)%s", token, len(files),
                 f" (skipped {skipped})" * bool(skipped))  # fmt: skip
        return files

    def listed(self, token: str) -> list[str]:
        """The files ``@LIST`` names, one per line, in its order (a folder expanded)."""
        listing = Path(os.path.expanduser(token[1:]))
        try:
            text = listing.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInputError(f"{token}: cannot read the list file ({e})") from None
        files: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            path = Path(os.path.expanduser(entry))
            if not path.is_absolute():
                path = listing.parent / path
            if not path.exists():
                raise InvalidInputError(f"{listing}:{number}: {entry}: no such file or directory")
            is_folder = path.is_dir() and not _is_store(path)
            files += self.folder(path) if is_folder else [str(path)]
        if not files:
            raise InvalidInputError(f"{listing}: lists no files")
        log.info("%s: %d file(s) listed", listing, len(files))
        return files


def collect_inputs(
    tokens: Sequence[str], raw_dtype: str | None = None, exclude: Iterable[str | Path] = ()
) -> list[str]:
    """The input files DATA arguments stand for, in order (see the module docstring).

    Parameters
    ----------
    tokens : sequence of str
        Paths, folders, ``@list`` files and glob patterns as typed.
    raw_dtype : str, optional
        The pixel type given for raw frames (``--raw-dtype``): only then are ``.raw``/``.bin``
        files in folders and pattern matches taken as frames.
    exclude : iterable of path
        Files never taken from a folder or a pattern (the dark and the mask the parameters
        name, often kept among the frames); named on their own they stay.

    Returns
    -------
    list of str
        Files given by name are kept as typed (missing ones included: the caller reports
        them); expanded ones are the folder / list / pattern path joined with the file name.

    Raises
    ------
    InvalidInputError
        A folder with no frame files, a pattern matching none, a list file that cannot be
        read, lists nothing or lists a missing path (named with its line number).
    """
    collect = _Collector(raw_dtype, {os.path.realpath(p) for p in exclude if p})
    out: list[str] = []
    for token in tokens:
        path = Path(token)
        if token.startswith("@") and len(token) > 1 and not path.exists():
            out += collect.listed(token)
        elif path.is_dir() and not _is_store(path):
            out += collect.folder(path)
        elif not path.exists() and re.search(r"[*?[]", token):
            out += collect.pattern(token)
        else:
            out.append(token)
    return out
