"""The unit every reader yields: one 2-D detector frame and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Frame:
    """One detector frame.

    Attributes
    ----------
    index : int
        Position of the frame in its file (0-based, counting every frame the file holds).
    data : ndarray, shape (n_z, n_y)
        Pixel values in the file's dtype (rows = Z, slow axis; columns = Y, fast axis).
    source : str
        ``"<path>"`` or ``"<path>:<dataset>"``.
    metadata : dict
        Per-frame facts the file provides (e.g. ``omega_deg`` from a MIDAS Zarr zip).
    """

    index: int
    data: np.ndarray
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
