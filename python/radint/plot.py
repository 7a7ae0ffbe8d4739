"""Pictures for people: lineout and cake PNGs from a radint NeXus file (``radint[plot]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from radint.exceptions import BackendUnavailableError, InvalidInputError, RadintIOError


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


#: ``--peak-param`` names → (FitTable attribute, axis label).
PEAK_PARAMS = {
    "center": ("center_two_theta_deg", "centre 2θ (deg)"),
    "center_px": ("center", "centre R (px)"),
    "d": ("center_d_angstrom", "d (Å)"),
    "fwhm": ("fwhm_deg", "FWHM 2θ (deg)"),
    "area": ("area", "area"),
    "eta_mix": ("eta_mix", "η (Lorentzian fraction)"),
    "chi2": ("chi2", "reduced χ²"),
}


def plot_nexus(
    path: str | Path,
    output: str | Path | None = None,
    frame: int = -1,
    peak_param: str | None = None,
    require_peaks: bool = True,
) -> Path:
    """Plot frame ``frame`` of a radint NeXus file (``.h5`` or ``.zarr``): the lineout vs 2θ with
    the fitted peaks overlaid when the file has them, and the η–2θ cake; with ``peak_param``
    (one of :data:`PEAK_PARAMS`) also that fitted parameter of every peak vs frame.

    ``require_peaks=False`` leaves the peak panel out of a file without fitted peaks (a stream
    that fits nothing, or not yet) instead of raising.

    Returns the PNG path (default: next to the input, ``<stem>.png``).
    """
    from radint.fit import peak_profile, snip_background

    path = Path(path)
    if peak_param is not None and peak_param not in PEAK_PARAMS:
        raise InvalidInputError(
            f"peak_param must be one of {sorted(PEAK_PARAMS)}, got {peak_param!r}"
        )
    _check_image_path(output)
    # Only that frame is read unless every frame's peaks are plotted (a 4 GB result took 10 GB).
    result = _read_result(path, None if peak_param else frame)
    n_frames = int(result.metadata.get("n_frames_in_file", result.n_frames))
    if not -n_frames <= frame < n_frames:
        raise RadintIOError(f"{path}: frame {frame} out of range, the file has {n_frames}")
    pos = 0 if "n_frames_in_file" in result.metadata else frame  # its row in `result`
    one = result.frame(pos)
    if peak_param is not None and result.peaks is None and not require_peaks:
        peak_param = None
    if peak_param is not None and result.peaks is None:
        raise RadintIOError(f"{path}: no fitted peaks (run 'radint fit {path} ... --update')")
    radial, edges, label = _radial_axis(result)
    plt = _pyplot()
    rows = 1 + (one.cake is not None) + (peak_param is not None)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3.2 * rows + 0.6), squeeze=False)
    ax = axes[0, 0]
    ax.plot(radial, one.lineout, lw=0.8, label="lineout")
    if one.peaks is not None:
        x = np.asarray(result.radius_px, dtype=np.float64)
        lineout = np.nan_to_num(np.asarray(one.lineout, dtype=np.float64))
        fitted = snip_background(lineout) + peak_profile(x, one.peaks)
        ax.plot(radial, fitted, lw=0.8, color="C3", label="fitted peaks + SNIP background")
        ok = one.peaks.status == 0
        centres = np.interp(one.peaks.center[ok], x, radial)
        for c in centres:
            ax.axvline(c, color="C3", lw=0.5, ls=":")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("intensity")
    ax.set_xlabel(label)
    k = frame % n_frames
    at = pos % result.n_frames
    fid = int(np.asarray(result.frame_ids).reshape(-1)[at]) if result.frame_ids is not None else k
    ax.set_title(f"{path.name}  frame {k + 1} of {n_frames} (id {fid})")
    row = 1
    if one.cake is not None:
        ax2 = axes[row, 0]
        row += 1
        finite = one.cake[np.isfinite(one.cake)]
        vmax = np.percentile(finite, 99.5) if finite.size else 1
        # Edges, not centres: R-uniform bins are not uniform in 2θ, so imshow would misplace them.
        mesh = ax2.pcolormesh(
            edges, result.eta_edges_deg, one.cake, vmin=0, vmax=vmax, shading="flat"
        )
        fig.colorbar(mesh, ax=ax2, label="intensity", pad=0.01)
        ax2.set_ylabel("η (deg)")
        ax2.set_xlabel(label)
    if peak_param is not None:
        attr, ylabel = PEAK_PARAMS[peak_param]
        ax3 = axes[row, 0]
        status = np.asarray(result.peaks.status).reshape(n_frames, -1)
        values = np.asarray(getattr(result.peaks, attr), dtype=np.float64).reshape(status.shape)
        if peak_param in ("center", "center_px", "d"):
            # Positions of different peaks differ by far more than their drift: show the drift.
            ok = status == 0
            # Slots without a converged fit (a stream's unused slots) have no mean: 0 there.
            mean = np.where(ok, values, 0.0).sum(axis=0) / np.maximum(ok.sum(axis=0), 1)
            values = values - mean
            ylabel = f"{ylabel} − mean"
        # Frame ids restart with each stream connection: plot in file order unless they rise.
        ids = np.asarray(result.frame_ids)
        rising = ids.size < 2 or bool(np.all(np.diff(ids) > 0))
        along = ids if rising else np.arange(n_frames)
        for k in range(status.shape[1]):
            good = status[:, k] == 0
            if good.any():
                ax3.plot(along[good], values[good, k], ".-", ms=3, lw=0.6, label=f"peak {k}")
        ax3.set_xlabel("frame id" if rising else "frame (file order)")
        ax3.set_ylabel(ylabel)
        if status.shape[1] <= 12:
            ax3.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    out = Path(output) if output else path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _check_image_path(output: str | Path | None) -> None:
    """Refuse an output name matplotlib cannot write (its suffix picks the format), before any
    work: ``-o plot.txt`` ended in matplotlib's traceback after the file was read."""
    if output is None:
        return
    _pyplot()  # matplotlib missing: the install hint, not an ImportError
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(output).suffix.lower().lstrip(".")
    supported = FigureCanvasBase.get_supported_filetypes()
    if suffix not in supported:
        raise InvalidInputError(
            f"{output}: no image format for {'.' + suffix if suffix else 'a name without a suffix'}"
            f"; use one of {', '.join('.' + k for k in sorted(supported))}"
        )


def _read_result(path: Path, frame: int | None = None) -> Any:
    """A radint NeXus result, or a MIDAS caked.hdf (IntegratorZarrOMP's) to look at. With
    ``frame``, a NeXus file gives only that frame (among its complete ones), its metadata
    ``n_frames_in_file`` the file's frame count; a frame past the end gives no frame."""
    from radint.io.midas import read_midas_caked
    from radint.io.nexus import read_nexus

    try:
        if frame is None:
            return read_nexus(path)
        n = _frame_count(path)
        one = read_nexus(path, slice(frame, frame + 1 if frame != -1 else None))
        if not one.n_frames:
            raise RadintIOError(f"{path}: frame {frame} out of range, the file has {n}")
        one.metadata["n_frames_in_file"] = n
        return one
    except RadintIOError as nexus_error:
        try:
            return read_midas_caked(path)
        except RadintIOError:
            raise nexus_error from None


def _radial_axis(result: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Bin centres, bin edges and label of the radial axis to plot against: q for Q-mode
    binning, else 2θ, else R in pixels (no geometry or wavelength to convert with)."""
    from radint.io._common import edges_from_centres, q_from_two_theta

    cfg = result.config
    tth = np.asarray(result.two_theta_deg)
    if cfg is None and np.all(np.isfinite(tth)) and tth.size > 1:  # a MIDAS file's 2θ column
        return tth, edges_from_centres(tth), "2θ (deg)"
    if cfg is None or not np.all(np.isfinite(tth)):
        return np.asarray(result.radius_px), np.asarray(result.r_edges_px), "R (px)"
    tth_edges = np.degrees(np.arctan(result.r_edges_px * cfg.pixel_size_y_um / cfg.lsd_um))
    q = np.asarray(result.q_inv_angstrom)
    if cfg.radial_mode == "q" and np.all(np.isfinite(q)):
        return q, q_from_two_theta(tth_edges, cfg.wavelength_angstrom), "q (1/Å)"
    return tth, tth_edges, "2θ (deg)"


def follow_nexus(
    path: str | Path,
    output: str | Path | None = None,
    peak_param: str | None = None,
    interval_s: float = 2.0,
    stop_after_s: float | None = None,
    quiet: bool = False,
) -> int:
    """Redraw the PNG of the newest frame whenever ``path`` (e.g. a growing ``stream.h5``) has
    new frames, until interrupted or ``stop_after_s`` seconds passed. Returns the redraw count.

    A ``path`` that does not exist yet is waited for (said once). With ``peak_param``, the peak
    panel is drawn once the file holds fitted peaks (a stream without fitting has none). Each
    redraw is printed, unless ``quiet``.

    Point an image viewer that reloads on change at the PNG for a live view without a GUI.

    Raises
    ------
    RadintIOError
        ``path`` never appeared (by ``stop_after_s``, or when interrupted): a mistyped path;
        or it was never drawn and its last read failed (not a radint result, e.g. a TIFF).
    """
    import time

    from radint.exceptions import RadintError

    path = Path(path)
    if peak_param is not None and peak_param not in PEAK_PARAMS:  # not a file to wait for
        raise InvalidInputError(
            f"peak_param must be one of {sorted(PEAK_PARAMS)}, got {peak_param!r}"
        )
    _check_image_path(output)
    deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
    seen, redraws = -1, 0
    last_error: str | None = None  # of the latest read, None once one succeeded
    appeared = path.exists()
    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    if not appeared:
        say(f"{path}: does not exist yet; waiting for it to appear")
    try:
        while deadline is None or time.monotonic() < deadline:
            appeared = appeared or path.exists()
            try:
                n = _frame_count(path)
                last_error = None
                if n > 0 and n != seen:
                    out = plot_nexus(
                        path, output, frame=-1, peak_param=peak_param, require_peaks=False
                    )
                    seen, redraws = n, redraws + 1
                    say(f"{time.strftime('%H:%M:%S')} {path.name}: {n} frame(s) -> {out}")
            except (OSError, KeyError, RadintError) as e:
                # The writer may be between flushes; try again on the next tick.
                last_error = str(e)
                say(f"{path}: not readable yet ({e})")
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    if not appeared and not path.exists():
        raise RadintIOError(
            f"{path}: never appeared (check the path; a stream writes DIR/stream.h5)"
        )
    if redraws == 0 and last_error is not None:
        raise RadintIOError(f"{path}: never drawn, not readable as a radint result: {last_error}")
    return redraws


def _frame_count(path: Path) -> int:
    """Complete frames of a result (0 before it exists or holds its tables)."""
    from radint.io.nexus import complete_frames, open_result

    if not path.exists():
        return 0
    with open_result(path) as root:
        if "entry/azint1d/data/I" not in root:
            return 0
    return complete_frames(path)
