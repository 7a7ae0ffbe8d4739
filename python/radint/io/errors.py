"""Errors raised by radint's readers and writers."""

from __future__ import annotations

from radint.exceptions import RadintIOError


class ReaderError(RadintIOError):
    """A frame file cannot be read: truncated, missing dataset, wrong shape, unknown format.

    The message always names the file (and the dataset, where there is one), what was expected
    and what was found. Subclasses :class:`radint.RadintError` and :class:`OSError`.
    """


class FrameFileNotFoundError(ReaderError, FileNotFoundError):
    """A frame (or dark) file does not exist: a :class:`ReaderError` that ``except
    FileNotFoundError`` catches too, as for a missing parameter file."""
