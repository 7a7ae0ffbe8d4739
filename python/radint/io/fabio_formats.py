"""EDF and CBF through fabio (the optional extra ``radint[formats]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from radint.io._source import FrameSource
from radint.io.errors import ReaderError


class FabioSource(FrameSource):
    """Frames of an EDF/CBF file (multi-frame EDF included)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            import fabio
        except ImportError as exc:
            raise ImportError(
                f"{path}: reading EDF/CBF needs fabio; install the extra: pip install 'radint[formats]'"
            ) from exc
        try:
            self._img: Any = fabio.open(str(path))
        except Exception as exc:  # fabio raises bare Exception/IOError/ValueError
            raise ReaderError(f"{path}: fabio cannot read this file ({exc})") from exc
        self.n_frames = int(self._img.nframes)
        self.frame_shape = tuple(self._img.data.shape)

    def read(self, index: int) -> np.ndarray:
        """Read frame ``index``."""
        img = self._img if index == self._img.currentframe else self._img.getframe(index)
        return np.asarray(img.data)

    def close(self) -> None:
        """Close fabio's handle."""
        self._img.close()
