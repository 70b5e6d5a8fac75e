"""mpsntk: neural tangent kernels of matrix product states.

A C++ engine (and an optional CUDA one) for the empirical NTK of MPS models, never forming the
Jacobian; infinite-bond-dimension kernels; products with the Jacobian for training.

>>> import numpy as np, mpsntk as mn
>>> mps = mn.MPS.random(n_sites=8, bond_dim=16, seed=0)
>>> phi = mn.features.trig(np.random.default_rng(0).uniform(size=(32, 8)))
>>> theta = mn.ntk(mps, phi)          # (32, 32)
"""

from . import _core, born, compare, datasets, diagnostics, dynamics, features, infinite, linalg
from ._backend import (
    CudaError,
    CudaUnavailableError,
    build_info,
    cuda_available,
    get_num_threads,
    set_num_threads,
)
from .grad import jacobian, jvp, vjp
from .infinite import nngp_infinite, ntk_infinite
from .mps import MPS
from .ntk import ntk, ntk_vp
from .train import TrainResult, train

__version__ = _core.build_info()["version"]  # (build_info() would initialise CUDA)

__all__ = [
    "MPS",
    "TrainResult",
    "CudaError",
    "CudaUnavailableError",
    "born",
    "build_info",
    "compare",
    "cuda_available",
    "datasets",
    "diagnostics",
    "dynamics",
    "features",
    "get_num_threads",
    "infinite",
    "jacobian",
    "jvp",
    "linalg",
    "nngp_infinite",
    "ntk",
    "ntk_infinite",
    "ntk_vp",
    "set_num_threads",
    "train",
    "vjp",
]
