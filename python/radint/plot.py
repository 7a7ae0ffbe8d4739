"""Pictures for people: lineout and cake PNGs from a radint NeXus file (``radint[plot]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radint.exceptions import BackendUnavailableError, RadintIOError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise BackendUnavailableError(
            f"plotting needs matplotlib ({e}); install the extra: pip install 'radint[plot]'"
        ) from e
    return plt


def plot_nexus(path: str | Path, output: str | Path | None = None, frame: int = -1) -> Path:
    """Plot frame ``frame`` of a radint NeXus file: lineout vs 2θ (top) and the η–2θ cake.

    Returns the PNG path (default: next to the input, ``<stem>.png``).
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise RadintIOError(f"{path}: cannot open as HDF5 ({e})") from e
    with f:
        if "entry/azint1d/data/I" not in f:
            raise RadintIOError(f"{path}: no entry/azint1d/data/I (not a radint NeXus result)")
        d1 = f["entry/azint1d/data"]
        radial = d1["radial_axis"][()]
        unit = d1["radial_axis"].attrs.get("units", "")
        lineout = d1["I"][frame]
        cake = radial_edges = eta_edges = None
        if "entry/azint2d/data/I" in f:
            d2 = f["entry/azint2d/data"]
            cake = d2["I"][frame]
            # Edges, not centres: R-uniform bins are not uniform in 2θ, so imshow would misplace them.
            radial_edges = d2["radial_axis_edges"][()]
            eta_edges = d2["azimuthal_axis_edges"][()]
        n_frames = d1["I"].shape[0]
    plt = _pyplot()
    rows = 2 if cake is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3.2 * rows + 0.6), sharex=True, squeeze=False)
    label = "2θ (deg)" if "deg" in str(unit) else f"q ({unit})"
    ax = axes[0, 0]
    ax.plot(radial, lineout, lw=0.8)
    ax.set_ylabel("intensity")
    ax.set_title(f"{path.name}  frame {frame % n_frames} of {n_frames}")
    if cake is not None:
        ax2 = axes[1, 0]
        finite = cake[np.isfinite(cake)]
        vmax = np.percentile(finite, 99.5) if finite.size else 1
        ax2.pcolormesh(radial_edges, eta_edges, cake, vmin=0, vmax=vmax, shading="flat")
        ax2.set_ylabel("η (deg)")
    axes[-1, 0].set_xlabel(label)
    fig.tight_layout()
    out = Path(output) if output else path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
