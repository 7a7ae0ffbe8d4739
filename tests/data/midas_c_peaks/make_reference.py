"""Regenerate the IntegratorZarrOMP per-η peak-fit references of this folder (not run by tests).

Usage::

    python tests/data/midas_c_peaks/make_reference.py /path/to/bin [CASE...]
    # /path/to/bin holds DetectorMapper and IntegratorZarrOMP; default: every case

Writes ``ring.tif`` (uint16, 128 × 128, four Gaussian rings at R = 22, 36, 39.5, 52 px with
Poisson noise; the beam centre is near the left edge so the outer ring leaves the detector in
some η bins), ``ring_wide.tif`` (the same with rings ~6.5 px wide, for case ``wide``) and, for
each case ``specified`` / ``auto`` / ``offset`` / ``wide`` (``params_<case>.txt``), runs in a
temporary folder::

    DetectorMapper params_<case>.txt -nCPUs 1
    IntegratorZarrOMP -paramFN params_<case>.txt -dataFN <case>.tif -nCPUs 1

(``<case>.tif`` a copy of ``ring.tif``, so the C output prefix is the case name) and keeps the
C program's ``<case>_fit_per_eta.csv``, ``<case>_caked_peaks.h5`` and ``<case>_fit.bin`` as
``c_<case>_...``, plus ``c_<case>_cake.npz``: ``cake`` = the caked.hdf's
``IntegrationResult/FrameNr_0`` (n_r × n_eta, the profiles C fitted) and ``r_px``/``eta_deg``
its bin centres (``REtaMap`` rows 0 and 2). The MIDAS commit and build are in
tests/data/PROVENANCE.md.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
LSD, PX = 250000.0, 172.0
RINGS_PX = (22.0, 36.0, 39.5, 52.0)

COMMON = """\
Lsd 250000
BC 50.3 63.7
tx 0
ty 0.2
tz 0.1
px 172
NrPixelsY 128
NrPixelsZ 128
RMin 10
RMax 60
RBinSize 0.5
EtaMin -180
EtaMax 180
EtaBinSize 20
Wavelength 0.1729
Normalize 1
SaveIndividualFrames 1
"""
CASES = {
    # PeakLocation not in R order: C pairs doublets and numbers PeakIdx in file order.
    "specified": "DoPeakFit 1\nFitROIPadding 10\nDoubletSeparation 5\n"
    "PeakLocation 52\nPeakLocation 22\nPeakLocation 36\nPeakLocation 39.5\n",
    "auto": "DoPeakFit 1\nFitROIPadding 10\nAutoDetectPeaks 5\nSNIPIterations 30\n",
    # 24.2: 2.2 px off the ring at 22; 58: beyond the detector (all-0 window) in η bin 4.
    "offset": "DoPeakFit 1\nFitROIPadding 6\nPeakLocation 58\nPeakLocation 24.2\nPeakLocation 36\n",
    # Rings wider than half the 20-bin window: C caps the pV's Γ at RBinSize·nPts/2 = 5 px.
    "wide": "DoPeakFit 1\nFitROIPadding 10\nPeakLocation 22\nPeakLocation 36\nPeakLocation 52\n",
}
#: The image each case integrates (``<case>.tif`` is a copy of it).
IMAGES = {"wide": "ring_wide.tif"}


def write_images() -> None:
    import tifffile

    from radint.config import IntegrationConfig
    from radint.testing import ring_image

    cfg = IntegrationConfig.from_midas_params(HERE / "params_specified.txt")
    tth = np.degrees(np.arctan(np.asarray(RINGS_PX) * PX / LSD))
    for name, width_px in (("ring.tif", 2.0), ("ring_wide.tif", 6.5)):
        fwhm = math.degrees(math.atan(width_px * PX / LSD))
        img = ring_image(cfg, tth, fwhm_deg=fwhm, amplitude=800.0, background=30.0,
                         noise=True, seed=7, dtype=np.uint16)  # fmt: skip
        tifffile.imwrite(HERE / name, img)


def main(bindir: str, cases: list[str]) -> None:
    for case, extra in CASES.items():
        (HERE / f"params_{case}.txt").write_text(COMMON + extra)
    write_images()
    for case in cases or CASES:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            shutil.copy(HERE / f"params_{case}.txt", work)
            shutil.copy(HERE / IMAGES.get(case, "ring.tif"), work / f"{case}.tif")
            run = {"cwd": work, "check": True, "stdout": subprocess.DEVNULL}
            subprocess.run([f"{bindir}/DetectorMapper", f"params_{case}.txt", "-nCPUs", "1"], **run)
            subprocess.run([f"{bindir}/IntegratorZarrOMP", "-paramFN", f"params_{case}.txt",
                            "-dataFN", f"{case}.tif", "-nCPUs", "1"], **run)  # fmt: skip
            for suffix in ("_fit_per_eta.csv", "_caked_peaks.h5", "_fit.bin"):
                shutil.copy(work / f"{case}{suffix}", HERE / f"c_{case}{suffix}")
            with h5py.File(work / f"{case}.tif.caked.hdf") as f:
                remap = f["REtaMap"][()]
                np.savez_compressed(
                    HERE / f"c_{case}_cake.npz",
                    cake=f["IntegrationResult/FrameNr_0"][()],
                    r_px=remap[0, :, 0],
                    eta_deg=remap[2, 0, :],
                )
        print(case, "done")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
