"""Live control of the fitted peaks while streaming.

Two drop-in files in the control directory (default: the stream's output directory), each read
once and deleted when applied:

``peak_update.txt`` (MIDAS GPU integrator / live_viewer compatible, spec §6.5)::

    mode replace          # or: mode append (blank and '#' lines before it are skipped)
    211.85                # one peak position per line, R in pixels
    244.72

``peaks.json`` (radint's own, with units)::

    {"mode": "replace", "two_theta_deg": [3.172, 3.663]}
    {"mode": "append", "r_px": [346.6]}
    {"auto": 12}
    {"off": true}

After every change ``active_peaks.txt`` lists the fitted positions as R px (``%.4f`` per line,
as MIDAS writes it); with auto-detection or fitting off it is empty. Write the files atomically
(temporary name + rename) so a half-written file is never read.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from radint.config import IntegrationConfig
from radint.exceptions import InvalidInputError
from radint.fit import FitSpec

log = logging.getLogger("radint")

#: Most positions one update may hold (MIDAS ``MAX_PEAK_LOCATIONS``).
MAX_PEAKS = 100
#: Returned by :meth:`PeakControl.poll` when no control file was waiting.
UNCHANGED = object()


class PeakControl:
    """Polls the control directory and turns drop-in files into a new :class:`FitSpec`.

    Parameters
    ----------
    directory : path
        Where ``peak_update.txt`` / ``peaks.json`` are looked for and ``active_peaks.txt`` written.
    config : IntegrationConfig
        Converts 2θ to R px and supplies ROI settings for new specs.
    """

    def __init__(self, directory: str | Path, config: IntegrationConfig) -> None:
        self.directory = Path(directory)
        self.config = config
        self.updates = 0

    def announce(self, current: FitSpec | None) -> None:
        """Write ``active_peaks.txt`` for the starting peaks (given positions), as the GPU
        program does at start-up, so a viewer shows them before any update."""
        if current is not None and current.positions_px:
            self._write_active(current)

    def poll(self, current: FitSpec | None) -> Any:
        """The spec to use from now on, or :data:`UNCHANGED` when no file is waiting."""
        for name, parse in (
            ("peak_update.txt", self._parse_midas),
            ("peaks.json", self._parse_json),
        ):
            path = self.directory / name
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("peak control: cannot read %s: %s", path, e)
                continue
            try:
                spec = parse(text, current)
            except (ValueError, TypeError, KeyError) as e:
                # Kept, renamed: it may be a user's file of that name, not a command.
                rejected = path.with_name(name + ".rejected")
                try:
                    path.replace(rejected)
                except OSError:
                    _remove(path)
                log.error("peak control: %s ignored (kept as %s): %s", path, rejected.name, e)
                continue
            _remove(path)
            self.updates += 1
            self._write_active(spec)
            log.info("peak control: %s applied: %s", name, _describe(spec))
            return spec
        return UNCHANGED

    # ------------------------------------------------------------------ formats
    def _parse_midas(self, text: str, current: FitSpec | None) -> FitSpec | None:
        lines = text.splitlines()
        if not lines:
            raise InvalidInputError("empty file")
        # MIDAS takes line 1 as the mode line, whatever it holds. Blank and '#' lines before a
        # `mode ...` line are comments (MIDAS's writers put none there; it would take the
        # first of them as the mode line and skip the real one).
        first = next((i for i, line in enumerate(lines) if line.strip()
                      and not line.lstrip().startswith("#")), None)  # fmt: skip
        mode_at = 0
        if first is not None and lines[first].split()[0].lower() == "mode":
            mode_at = first
        elif lines[0].split() and _is_radius(lines[0].split()[0]):
            log.warning(
                "peak control: line 1 (%r) is taken as the mode line, as MIDAS reads it: its "
                "radius is not used; start the file with 'mode replace' or 'mode append'",
                lines[0],
            )  # fmt: skip
        append = "append" in lines[mode_at]
        r_px = []
        for n, line in enumerate(lines[mode_at + 1 :], start=mode_at + 2):
            token = line.split()[0] if line.split() else ""
            if not token:
                continue
            # As the GPU program's sscanf loop: a line that is not a radius > 0 is skipped.
            try:
                value = float(token)
            except ValueError:
                value = math.nan
            if math.isfinite(value) and value > 0:
                r_px.append(value)
            else:
                log.warning("peak control: line %d skipped (not an R value > 0 in pixels): %r",
                            n, line)  # fmt: skip
        if not r_px:
            # MIDAS ignores an update without positions; so do we, keeping the file (a list
            # written without its mode line loses its only radius to line 1).
            raise InvalidInputError("no radius > 0 after the mode line: nothing changed")
        return self._positions(r_px, append, current)

    def _parse_json(self, text: str, current: FitSpec | None) -> FitSpec | None:
        try:
            cmd = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"not JSON: {e}") from None
        if not isinstance(cmd, dict):
            raise InvalidInputError(f"expected a JSON object, got {type(cmd).__name__}")
        known = {"mode", "r_px", "two_theta_deg", "auto", "off"}
        if unknown := set(cmd) - known:
            raise InvalidInputError(f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
        if cmd.get("off"):
            return None
        if "auto" in cmd:
            n = int(cmd["auto"])
            if n > MAX_PEAKS:
                # The stream's peak table holds MAX_PEAKS slots from its first frame on (a wider
                # request failed the writer and stopped the stream).
                raise InvalidInputError(
                    f"auto {n}: at most {MAX_PEAKS} peaks can be asked for while streaming "
                    "(start the stream with --fit-auto N for more)"
                )
            return FitSpec(auto=n, **self._common())
        mode = cmd.get("mode", "replace")
        if mode not in ("replace", "append"):
            raise InvalidInputError(f"mode must be 'replace' or 'append', got {mode!r}")
        if "r_px" in cmd:
            r_px = [float(v) for v in cmd["r_px"]]
        elif "two_theta_deg" in cmd:
            c = self.config
            r_px = [
                math.tan(math.radians(float(v))) * c.lsd_um / c.pixel_size_y_um
                for v in cmd["two_theta_deg"]
            ]
        else:
            raise InvalidInputError("give r_px, two_theta_deg, auto or off")
        if not r_px:
            raise InvalidInputError("no positions given")
        return self._positions(r_px, mode == "append", current)

    # ------------------------------------------------------------------ helpers
    def _common(self) -> dict[str, Any]:
        return FitSpec.config_settings(self.config)

    def _positions(self, r_px: list[float], append: bool, current: FitSpec | None) -> FitSpec:
        if not all(math.isfinite(r) and r > 0 for r in r_px):
            raise InvalidInputError(f"positions must be finite radii > 0 px, got {r_px}")
        base: list[float] = []
        if append and current is not None:
            if current.positions_px:
                base = list(current.positions_px)
            elif current.positions_two_theta_deg:
                c = self.config
                base = [
                    math.tan(math.radians(t)) * c.lsd_um / c.pixel_size_y_um
                    for t in current.positions_two_theta_deg
                ]
        # Sorted by R, as the GPU program's fitPeaks orders them (fit.bin rows follow).
        merged = sorted(base + r_px)[:MAX_PEAKS]
        return FitSpec(positions_px=tuple(merged), **self._common())

    def _write_active(self, spec: FitSpec | None) -> None:
        positions = spec.positions_px if spec is not None else ()
        tmp = self.directory / ".active_peaks.txt.tmp"
        try:
            tmp.write_text("".join(f"{r:.4f}\n" for r in positions))
            os.replace(tmp, self.directory / "active_peaks.txt")
        except OSError as e:
            log.error("peak control: cannot write active_peaks.txt: %s", e)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _describe(spec: FitSpec | None) -> str:
    if spec is None:
        return "fitting off"
    if spec.auto is not None:
        return f"auto-detect up to {spec.auto} peaks"
    return (
        f"{len(spec.positions_px)} peak(s) at R = "
        + ", ".join(f"{r:.2f}" for r in spec.positions_px)
        + " px"
    )


def _is_radius(token: str) -> bool:
    try:
        return math.isfinite(float(token)) and float(token) > 0
    except ValueError:
        return False
