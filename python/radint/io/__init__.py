"""radint's file readers and writers.

Readers: :func:`read_frames` (lazy iterator of :class:`Frame`), :func:`read_dark`,
:func:`count_frames`. Writers take a :class:`radint.result.Result`: :func:`write_result`
(NeXus HDF5, Zarr v3, MIDAS caked.hdf, GSAS-II zarr.zip, ``_lineout.xy``, ``.mat``) and
:class:`NexusWriter` for frames that arrive one at a time.
"""

from radint.io.errors import ReaderError
from radint.io.frame import Frame
from radint.io.read import count_frames, open_frames, read_dark, read_frames

__all__ = [
    "Frame",
    "ReaderError",
    "count_frames",
    "open_frames",
    "read_dark",
    "read_frames",
]
