"""radint's file readers and writers.

Readers: :func:`read_frames` (lazy iterator of :class:`Frame`), :func:`read_stacks` (the
same as ``(n, z, y)`` stacks, for batch work), :func:`read_dark`,
:func:`count_frames`. Writers take a :class:`radint.result.Result`: :func:`write_result`
(NeXus HDF5, Zarr v3, MIDAS caked.hdf, GSAS-II zarr.zip, ``_lineout.xy``, ``.mat``) and
:class:`NexusWriter` for frames that arrive one at a time; :func:`read_nexus` reads a result back,
:func:`read_provenance` only where its frames came from.
"""

from radint.io.errors import FrameFileNotFoundError, ReaderError
from radint.io.frame import Frame
from radint.io.midas import write_gsas_zarr_zip, write_midas_caked
from radint.io.nexus import NexusWriter, Provenance, read_nexus, read_provenance, write_nexus
from radint.io.read import count_frames, open_frames, read_dark, read_frames, read_stacks
from radint.io.text import write_lineout_bin, write_lineout_xy, write_mat, write_peaks_csv
from radint.io.write import write_result

__all__ = [
    "Frame",
    "FrameFileNotFoundError",
    "NexusWriter",
    "Provenance",
    "ReaderError",
    "count_frames",
    "open_frames",
    "read_dark",
    "read_frames",
    "read_nexus",
    "read_provenance",
    "read_stacks",
    "write_gsas_zarr_zip",
    "write_lineout_bin",
    "write_lineout_xy",
    "write_mat",
    "write_midas_caked",
    "write_nexus",
    "write_peaks_csv",
    "write_result",
]
