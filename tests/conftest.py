"""Shared fixtures: small synthetic detectors so the suite stays fast on 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from radint import IntegrationConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SMALL = """
NrPixelsY 120
NrPixelsZ 100
px 172
Lsd 300000
BC 55.3 47.8
tx 0.3
ty 0.8
tz -0.6
Wavelength 0.172973
RhoD 200000
p0 0.0002
p1 0.0001
p2 -0.0005
p3 -13.77
p4 0.0019
RMin 2
RMax 70
RBinSize 0.7
EtaMin -180
EtaMax 180
EtaBinSize 10
"""


@pytest.fixture
def small_config() -> IntegrationConfig:
    """A tilted, distorted 120x100 detector with the beam inside it."""
    return IntegrationConfig.from_text(SMALL, "small.txt")


@pytest.fixture
def example_config() -> IntegrationConfig:
    """The bundled Pilatus 2M example (MIDAS calibration geometry)."""
    return IntegrationConfig.from_midas_params(EXAMPLES / "parameters.txt")


def compile_cuh_harness(
    source: Path, out: Path, kernels: Path | None = None, defines: tuple[str, ...] = ()
):
    """Build a host C++ harness of a kernel header (tests/gpu_harness/*.cpp) with g++ and load it
    with ctypes (the headers from ``kernels``, radint's own by default; ``defines`` as
    ``NAME=VALUE``); skips the calling test where no g++ exists."""
    import ctypes
    import shutil
    import subprocess

    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip(f"g++ not found: the host harness {source.name} needs a C++ compiler")
    if kernels is None:
        kernels = Path(__file__).resolve().parents[1] / "python" / "radint" / "gpu" / "kernels"
    # -ffp-contract=off: no FMA contraction, so the host sums are the plain IEEE ones Rust does.
    cmd = [gxx, "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
           "-shared", "-fPIC", f"-I{kernels}", *(f"-D{d}" for d in defines), str(source),
           "-o", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(out))
