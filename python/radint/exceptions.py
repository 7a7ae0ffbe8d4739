"""radint's exception tree: every error subclasses :class:`RadintError` and the matching built-in.

The compiled core raises these classes directly (``radint._core`` looks them up here), so a user can
catch ``RadintError`` for anything radint reports, or the built-in (``ValueError``, ``OSError``)
as usual.
"""

from __future__ import annotations


class RadintError(Exception):
    """Base class of every error radint raises on purpose."""


class ParameterError(RadintError, ValueError):
    """A parameter file or configuration value is missing, unreadable or out of range."""


class MapFormatError(RadintError, ValueError):
    """A Map.bin / nMap.bin / maskMap.bin or cached map is malformed or does not fit the parameters."""


class ShapeError(RadintError, ValueError):
    """Array shapes do not fit together (frame vs map, dark vs frame, mask vs detector)."""


class DtypeError(RadintError, TypeError):
    """An array has an unsupported dtype (complex, object, ...)."""


class InvalidInputError(RadintError, ValueError):
    """An argument is outside its valid range."""


class RadintMemoryError(RadintError, MemoryError):
    """The memory a call's arrays need (the frames and bins given) cannot be allocated."""


class RadintIOError(RadintError, OSError):
    """A file could not be read or written."""


class RadintFileNotFoundError(RadintIOError, FileNotFoundError):
    """A file radint needs does not exist."""


class BackendUnavailableError(RadintError, RuntimeError):
    """The requested compute backend (e.g. CUDA) cannot be used here."""


__all__ = [
    "BackendUnavailableError",
    "DtypeError",
    "InvalidInputError",
    "MapFormatError",
    "ParameterError",
    "RadintError",
    "RadintFileNotFoundError",
    "RadintIOError",
    "RadintMemoryError",
    "ShapeError",
]
