"""One entry point for every frame format: :func:`read_frames`, :func:`read_dark`, :func:`count_frames`.

The format is chosen from the extension, then from the file's first bytes:

=====================================  ==================================================
``.tif .tiff``                         TIFF, one frame per page (tifffile)
``.h5 .hdf5 .hdf .nxs .nx5 .cxi``      HDF5 dataset ``dataset`` (default ``exchange/data``)
directory / ``.zarr`` / ``.zip``       Zarr v2/v3 array, or group at ``dataset``
``*.zip`` with ``exchange/data``       MIDAS Zarr zip (spec §8.2): ω per frame, SkipFrame
``.ge1`` … ``.ge5``, ``.geN``          GE raw: 8192-byte header, uint16, ``shape`` or 2048²
``.raw .bin`` or ``dtype`` given       raw binary frames of ``shape`` and ``dtype``
``.edf .cbf``                          fabio (extra ``radint[formats]``)
=====================================  ==================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from radint.io._source import FrameSource, check_pixel_dtype
from radint.io.errors import FrameFileNotFoundError, ReaderError
from radint.io.frame import Frame

__all__ = [
    "FrameSelection",
    "count_frames",
    "open_frames",
    "read_dark",
    "read_frames",
    "read_parameter_image",
    "split_dataset",
]

FrameSelection = int | slice | Sequence[int] | None

_TIFF = {".tif", ".tiff"}
_HDF5 = {".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi"}
_FABIO = {".edf", ".cbf"}
_RAW = {".raw", ".bin"}
_GE = re.compile(r"\.ge\d*$", re.IGNORECASE)


def _sniff(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    return ""


def open_frames(
    path: str | Path,
    *,
    dataset: str | None = None,
    shape: tuple[int, int] | None = None,
    dtype: npt.DTypeLike | None = None,
    zip_parameters: Mapping[str, Any] | None = None,
    frames: FrameSelection = None,
) -> FrameSource:
    """Open a frame file and return its :class:`~radint.io._source.FrameSource` (a context manager).

    Parameters are those of :func:`read_frames`; the returned source has ``n_frames``,
    ``frame_shape`` and ``read(index) -> ndarray (n_z, n_y)``. ``frames``: the frames that
    will be read; an HDF5 stack's unwritten frames outside them are no error (default: all
    must be written).

    Raises
    ------
    ReaderError
        The file does not exist, its format is not recognised, it cannot be opened, or its
        pixels are not real numbers (object, string, compound, complex...).
    """
    source = _open_source(Path(path), dataset, shape, dtype, zip_parameters, frames)
    if source.dtype is not None:  # formats that know it up front: before any frame is read
        try:
            check_pixel_dtype(source.label, source.dtype)
        except ReaderError:
            with source:  # closes it
                raise
    return source


def _open_source(
    p: Path,
    dataset: str | None,
    shape: tuple[int, int] | None,
    dtype: npt.DTypeLike | None,
    zip_parameters: Mapping[str, Any] | None,
    frames: FrameSelection = None,
) -> FrameSource:
    """The format's source for ``p`` (see :func:`open_frames`)."""
    # Each reader is imported where it is needed: zarr alone takes ~0.5 s to import, which a
    # batch of TIFF files should not pay.
    if not p.exists():
        raise FrameFileNotFoundError(f"{p}: no such file or directory")
    suffix = p.suffix.lower()
    if p.is_dir():
        from radint.io import zarrstore

        return zarrstore.ZarrSource(p, dataset)
    if _GE.search(p.name):
        from radint.io import ge

        return ge.open_ge(p, shape, None if dtype is None else np.dtype(dtype))
    if suffix in _RAW or (dtype is not None and shape is not None and suffix not in _TIFF | _HDF5):
        from radint.io import ge

        if shape is None or dtype is None:
            raise ReaderError(
                f"{p}: raw binary frames need their shape (n_z, n_y) and pixel type "
                f"(got shape={shape}, dtype={dtype}; on the command line: --raw-dtype, "
                "e.g. uint16; the shape is NrPixelsZ x NrPixelsY)"
            )
        return ge.RawSource(p, shape, np.dtype(dtype))
    if suffix in _FABIO or p.name.lower().endswith((".edf.gz", ".cbf.gz")):
        from radint.io import fabio_formats

        return fabio_formats.FabioSource(p)
    kind = "tiff" if suffix in _TIFF else "hdf5" if suffix in _HDF5 else ""
    kind = kind or ("zip" if suffix == ".zip" else _sniff(p))
    if kind == "tiff":
        from radint.io import tiff

        return tiff.TiffSource(p)
    if kind == "hdf5":
        from radint.io import hdf5

        return hdf5.Hdf5Source(p, dataset, frames)
    if kind == "zip":
        from radint.io import zarrstore

        if zarrstore.is_midas_zip(p):
            return zarrstore.MidasZipSource(p, dataset, zip_parameters)
        return zarrstore.ZarrSource(p, dataset)
    raise ReaderError(
        f"{p}: unrecognised frame format (extension '{suffix}'); supported: TIFF, HDF5, Zarr "
        "(directory or .zip), MIDAS Zarr zip, GE (.geN), raw (.raw/.bin with shape and dtype), "
        "EDF/CBF"
    )


def _indices(source: FrameSource, frames: FrameSelection) -> Sequence[int]:
    if frames is None:
        return source.default_indices()
    if isinstance(frames, slice):
        return range(source.n_frames)[frames]
    if isinstance(frames, int | np.integer):
        return [source.check_index(int(frames))]
    return [source.check_index(int(i)) for i in frames]


def _iter_source(
    source: FrameSource,
    frames: FrameSelection,
    shape: tuple[int, int] | None,
    dtype: npt.DTypeLike | None,
    cast: bool,
) -> Iterator[Frame]:
    for index in _indices(source, frames):
        data = source.read(index)
        if source.dtype is None:  # formats that learn it per frame (EDF, CBF)
            check_pixel_dtype(f"{source.label}: frame {index}", data.dtype)
        if data.ndim != 2:
            raise ReaderError(f"{source.label}: frame {index} has shape {data.shape}, not 2-D")
        if shape is not None and tuple(data.shape) != tuple(shape):
            swapped = tuple(data.shape) == tuple(shape)[::-1]
            raise ReaderError(
                f"{source.label}: frame {index} has shape {data.shape}, expected {tuple(shape)}"
                + (" (its transpose: is the file stored transposed, or are NrPixelsY and "
                   "NrPixelsZ swapped?)" if swapped else "")
            )  # fmt: skip
        if cast and dtype is not None:
            data = data.astype(dtype, copy=False)
        yield Frame(index, data, source.label, source.frame_metadata(index))


def read_frames(
    path: str | Path,
    *,
    dataset: str | None = None,
    shape: tuple[int, int] | None = None,
    dtype: npt.DTypeLike | None = None,
    frames: FrameSelection = None,
    zip_parameters: Mapping[str, Any] | None = None,
) -> Iterator[Frame]:
    """Yield the frames of a detector file one at a time (only one frame held in memory).

    Parameters
    ----------
    path : str or Path
        TIFF, HDF5, Zarr (directory or zip), MIDAS Zarr zip, GE, raw, EDF or CBF file.
    dataset : str, optional
        HDF5 dataset / Zarr array path inside the file (default ``exchange/data``).
    shape : (n_z, n_y), optional
        Frame shape in pixels. Required for raw files; for GE files the default is
        (2048, 2048); for every other format the frames are checked against it.
    dtype : numpy dtype, optional
        On-disk pixel type of raw files (GE default ``<u2``); for other formats the frames are
        cast to it.
    frames : int, slice or sequence of int, optional
        Which frames to read (negative indices count from the end). Default: all frames, except
        that a MIDAS Zarr zip starts at its ``SkipFrame``.
    zip_parameters : mapping, optional
        ``SkipFrame``, ``OmegaStart``, ``OmegaStep`` that replace a MIDAS Zarr zip's own (a
        parameter file's: :meth:`~radint.IntegrationConfig.zip_parameters`).

    Yields
    ------
    Frame
        ``index`` (position in the file), ``data`` (n_z, n_y), ``source``, ``metadata``.

    Raises
    ------
    ReaderError
        Missing file or dataset, unknown format, truncated data, or a frame whose shape is not
        ``shape``; the message names the file.
    ImportError
        EDF/CBF without fabio installed (extra ``radint[formats]``).
    """
    source = open_frames(path, dataset=dataset, shape=shape, dtype=dtype,
                         zip_parameters=zip_parameters, frames=frames)  # fmt: skip
    with source:
        yield from _iter_source(source, frames, shape, dtype, cast=not source.dtype_on_disk)


class Stack(NamedTuple):
    """Frames read together by :func:`read_stacks`: ``data`` is one ``(n, n_z, n_y)`` array,
    ``ids`` the numbers results carry, ``indices`` the frames' positions in the file (the same
    but for a MIDAS Zarr zip, whose ids count from ``SkipFrame``)."""

    data: np.ndarray
    ids: list[int]
    metadata: dict[str, list[Any]]
    indices: list[int]


def read_stacks(
    path: str | Path,
    *,
    dataset: str | None = None,
    size: int = 16,
    max_bytes: int | None = None,
    allocate: Callable[[tuple[int, ...], np.dtype], np.ndarray] | None = None,
    shape: tuple[int, int] | None = None,
    raw_dtype: npt.DTypeLike | None = None,
    zip_parameters: Mapping[str, Any] | None = None,
) -> Iterator[Stack]:
    """Yield the frames of a file as :class:`Stack` ``(data (n ≤ size, n_z, n_y), ids,
    metadata, indices)``: frame ids are the positions in the file (for a MIDAS Zarr zip counted
    after ``SkipFrame``), metadata the per-frame values the file stores (key → one value per
    frame, e.g. ``omega_deg``, ``Temperature`` of a MIDAS zip), indices the positions.

    The batch path's reader: a stacked format (HDF5) is read ``size`` frames per call instead
    of frame by frame. Frame selection is the default one of :func:`read_frames`. With
    ``allocate(shape, dtype)``, multi-frame stacks are read into the arrays it returns (a
    caller's reusable buffers: fresh 100 MB arrays cost their page faults on every stack).
    ``shape`` is the frame shape of GE and raw files (the detector's, from the parameters) and
    ``raw_dtype`` the pixel type of raw files; other formats carry their own;
    ``zip_parameters`` as for :func:`read_frames`. ``max_bytes`` caps a stack's size where the format knows its pixel type up front. Frames
    stored as plain pixels (uncompressed TIFF, HDF5 without filters, raw/GE) are read into
    those arrays with one system call each (:meth:`~radint.io._source.FrameSource.read_plain`).

    Raises
    ------
    ReaderError
        As :func:`read_frames`; also for frames that are not 2-D.
    """
    p = Path(path)
    raw = p.suffix.lower() in _RAW
    opened = open_frames(
        p,
        dataset=dataset,
        shape=shape if raw or _GE.search(p.name) else None,
        dtype=raw_dtype if raw else None,  # GE files are uint16
        zip_parameters=zip_parameters,
    )
    with opened as source:
        indices = list(source.default_indices())
        frame_shape = tuple(source.frame_shape)
        if max_bytes is not None and source.dtype is not None:
            frame_bytes = int(np.prod(frame_shape)) * source.dtype.itemsize
            size = max(1, min(size, max_bytes // max(1, frame_bytes)))
        for k in range(0, len(indices), size):
            chunk = indices[k : k + size]
            contiguous = chunk == list(range(chunk[0], chunk[-1] + 1))
            per_frame = [source.frame_metadata(i) for i in chunk]
            keys = set().union(*per_frame)
            metadata = {key: [m.get(key, np.nan) for m in per_frame] for key in keys}
            ids = [source.frame_id(i) for i in chunk]
            if allocate is not None and source.dtype is not None and len(frame_shape) == 2:
                out = allocate((len(chunk), *frame_shape), source.dtype)
                if all(source.read_plain(i, out[j]) for j, i in enumerate(chunk)):
                    data = out
                elif contiguous:
                    data = source.read_block(chunk[0], chunk[-1] + 1, out)
                else:
                    for j, i in enumerate(chunk):
                        out[j] = source.read(i)
                    data = out
            elif len(chunk) == 1:
                data = source.read(chunk[0])[np.newaxis]
            elif contiguous:
                data = source.read_block(chunk[0], chunk[-1] + 1)
            else:
                data = np.stack([source.read(i) for i in chunk])
            if source.dtype is None:
                check_pixel_dtype(f"{source.label}: frames {chunk[0]}..{chunk[-1]}", data.dtype)
            if data.ndim != 3:
                raise ReaderError(
                    f"{source.label}: frames {chunk[0]}..{chunk[-1]} have shape "
                    f"{data.shape[1:]}, not 2-D"
                )
            yield Stack(data, ids, metadata, list(chunk))


def count_frames(
    path: str | Path,
    *,
    dataset: str | None = None,
    shape: tuple[int, int] | None = None,
    dtype: npt.DTypeLike | None = None,
) -> int:
    """Number of frames the file holds (all of them, ``SkipFrame`` not applied).

    Parameters are those of :func:`read_frames`.

    Returns
    -------
    int
    """
    with open_frames(path, dataset=dataset, shape=shape, dtype=dtype) as source:
        return source.n_frames


#: The dark dataset of an HDF5 file that holds both data and dark (MIDAS ``-darkLoc`` default).
HDF5_DARK_DATASET = "exchange/dark"


def _hdf5_has(path: Path, dataset: str) -> bool:
    """Whether ``path`` is an HDF5 file with ``dataset`` in it (False for other files)."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            return isinstance(f.get(dataset), h5py.Dataset)
    except OSError:
        return False


def read_dark(
    path: str | Path,
    *,
    dataset: str | None = None,
    shape: tuple[int, int] | None = None,
    dtype: npt.DTypeLike | None = None,
    frames: FrameSelection = None,
    zip_parameters: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Mean of the frames of a dark file, accumulated in float64 one frame at a time.

    For a MIDAS Zarr zip the dark stack ``exchange/dark`` is used (unless ``dataset`` names
    another array) and its first ``SkipFrame`` frames are left out, as IntegratorZarrOMP does
    (spec §5.1). An HDF5 file with an ``exchange/dark`` dataset gives that dataset (MIDAS's
    ``-darkLoc`` default), not its data, unless ``dataset`` says otherwise.

    Parameters
    ----------
    path, dataset, shape, dtype, frames, zip_parameters
        As for :func:`read_frames`.

    Returns
    -------
    ndarray, shape (n_z, n_y), float64
        Mean dark, counts per pixel.

    Raises
    ------
    ReaderError
        As :func:`read_frames`, and when no frame is selected.
    """
    from radint.io import zarrstore

    p = Path(path)
    if dataset is None and p.is_file() and zarrstore.is_midas_zip(p):
        dataset = zarrstore.MIDAS_DARK_DATASET
    elif dataset is None and p.is_file() and _hdf5_has(p, HDF5_DARK_DATASET):
        # A file that carries its own dark (MIDAS's -darkLoc default) is not a stack of darks.
        dataset = HDF5_DARK_DATASET
    total: np.ndarray | None = None
    n = 0
    for frame in read_frames(p, dataset=dataset, shape=shape, dtype=dtype, frames=frames,
                             zip_parameters=zip_parameters):  # fmt: skip
        if total is None:
            total = np.zeros(frame.data.shape, dtype=np.float64)
        elif frame.data.shape != total.shape:
            raise ReaderError(
                f"{frame.source}: dark frame {frame.index} has shape {frame.data.shape}, "
                f"expected {total.shape}"
            )
        total += frame.data
        n += 1
    if total is None:
        raise ReaderError(f"{p}: no dark frames selected")
    return total / n


def split_dataset(name: str) -> tuple[str, str | None]:
    """``"file.h5::/entry/mask"`` → ``("file.h5", "/entry/mask")``: the file and the dataset
    inside it that a ``MaskFile``/``FlatFile`` value names (the ``file::path`` form pyFAI and
    fabio take); a name without ``::``, or naming an existing file as a whole, is the file
    alone (dataset None)."""
    file, sep, dataset = name.rpartition("::")
    if not sep or not file or not dataset or Path(name).exists():
        return name, None
    return file, dataset


def read_parameter_image(config: Any, name: str) -> np.ndarray:
    """The per-pixel image a parameter names (``mask_file``: ``MaskFile``, ``flat_file``:
    ``FlatFile``), as stored: the first frame of any format :func:`read_frames` reads, in the
    raw orientation of the frames, checked to be real numbers of the detector's shape. A value
    ``file.h5::/path`` names a dataset inside an HDF5 (or Zarr) file (:func:`split_dataset`).

    Parameters
    ----------
    config : IntegrationConfig
        The parameters: the attribute ``name`` holds the image's path, ``shape`` the
        detector's ``(NrPixelsZ, NrPixelsY)`` and ``where_set`` the line that set it.
    name : str
        The attribute naming the image: ``"mask_file"`` or ``"flat_file"``.

    Returns
    -------
    ndarray, shape (NrPixelsZ, NrPixelsY)
        The image's first frame in its stored dtype (bool, integer or float).

    Raises
    ------
    RadintFileNotFoundError, MapFormatError, ShapeError
        Naming the parameter file, line and key, and the image's path.
    """
    from radint.exceptions import MapFormatError, RadintFileNotFoundError, ShapeError

    value = getattr(config, name)
    file, dataset = split_dataset(value)
    path = Path(file)
    where = config.where_set(name)
    if not path.exists():
        raise RadintFileNotFoundError(f"{where}: {path}: no such file")
    path = Path(value) if dataset is None else path
    try:
        image = next(read_frames(path, dataset=dataset, frames=0)).data
    except (ReaderError, ImportError, OSError, ValueError, StopIteration) as e:
        # The reader's hint names the frames' option; here the dataset is the value's "::" part.
        why = str(e).replace("(--dataset / -dataLoc chooses one)", f"(name one: {file}::/path)")
        raise MapFormatError(f"{where}: {path}: cannot be read as an image ({why})") from e
    if image.dtype.kind not in "biuf":
        raise MapFormatError(f"{where}: {path}: expected real numbers, got dtype {image.dtype}")
    shape = config.shape
    if image.shape != shape:
        rows, cols = shape
        swapped = image.shape == shape[::-1] and rows != cols
        raise ShapeError(
            f"{where}: {path}: expected shape ({rows}, {cols}) (NrPixelsZ rows, NrPixelsY "
            f"columns), got {image.shape}"
            + (" (its transpose: are NrPixelsY and NrPixelsZ swapped?)" if swapped else "")
        )
    return image
