"""radint: fast, exact radial (azimuthal) integration of X-ray area-detector images.

A compatible re-implementation of the MIDAS radial-integration suite: MIDAS parameter files and
``Map.bin`` files in, lineouts, (η, R) cakes and fitted peaks out, on CPU (Rust) or GPU (CUDA).

>>> import radint
>>> config = radint.IntegrationConfig.from_midas_params("examples/parameters.txt")
>>> integrator = radint.Integrator(config)
>>> result = integrator.integrate(frame)          # doctest: +SKIP
>>> result.lineout, result.two_theta_deg          # doctest: +SKIP
"""

from radint import fit
from radint._core import __version__
from radint.config import IntegrationConfig
from radint.detector_map import DetectorMap
from radint.exceptions import (
    BackendUnavailableError,
    DtypeError,
    InvalidInputError,
    MapFormatError,
    ParameterError,
    RadintError,
    RadintFileNotFoundError,
    RadintIOError,
    RadintMemoryError,
    ShapeError,
)
from radint.integrator import Integrator
from radint.result import Result

__all__ = [
    "BackendUnavailableError",
    "DetectorMap",
    "DtypeError",
    "IntegrationConfig",
    "Integrator",
    "InvalidInputError",
    "MapFormatError",
    "ParameterError",
    "RadintError",
    "RadintFileNotFoundError",
    "RadintIOError",
    "RadintMemoryError",
    "Result",
    "ShapeError",
    "__version__",
    "fit",
]
