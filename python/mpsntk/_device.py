"""The CUDA engine's instances: :func:`gpu` on CuPy arrays, :func:`simulator` on the SIMT
simulator.

The engine itself is :class:`mpsntk._engine.DeviceEngine`; here it is bound to an extension module
and an array library.  ``_cuda_sim`` is the CUDA engine's kernels compiled for the host against a
SIMT simulator (``cuda/sim``), with NumPy arrays as "device" memory: a test tool, built for
development installs and CI only (``MPSNTK_SIM``), which the test-suite uses to run the kernels
where no GPU is present.
"""

from __future__ import annotations

import numpy as np

from ._backend import _cuda
from ._engine import DeviceEngine

_gpu = None


def gpu():
    """The CUDA engine on CuPy arrays (memory from CuPy's pool, work on its current stream)."""
    global _gpu
    if _gpu is None:
        import cupy as cp

        def free_bytes():
            free, _ = cp.cuda.runtime.memGetInfo()
            return free + cp.get_default_memory_pool().free_bytes()

        _gpu = DeviceEngine(_cuda, cp, lambda: cp.cuda.get_current_stream().ptr, free_bytes)
    return _gpu


def simulator():
    """The CUDA engine's kernels on the SIMT simulator, on NumPy arrays (None if not built)."""
    try:
        from . import _cuda_sim  # type: ignore[attr-defined]
    except ImportError:
        return None
    from ._backend import CudaError

    _cuda_sim._set_error_class(CudaError)
    return DeviceEngine(_cuda_sim, np, lambda: 0, lambda: None)
