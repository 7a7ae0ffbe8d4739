"""CPU stand-in for ``cupyx`` (see ``cupy/__init__.py`` beside it): pinned host buffers."""

from cupy import empty_pinned

__all__ = ["empty_pinned"]
