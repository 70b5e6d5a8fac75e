"""A NumPy-backed stand-in for CuPy whose arrays present themselves as CUDA arrays.

With :func:`installed`, ``import cupy`` gives this module and mpsntk's CUDA engine is
``_cuda_sim`` (the CUDA kernels on the SIMT simulator), so mpsntk's whole device path (array
routing, validation, :mod:`mpsntk._device`, training on the device) runs where no GPU is present.
Arrays are NumPy arrays of the subclass :class:`ndarray`, which exposes
``__cuda_array_interface__`` and a CUDA ``__dlpack_device__``; every NumPy function reached
through this module returns them.  Only what mpsntk and test_cuda.py use is provided; streams
and the memory pool are placeholders (the simulator runs each kernel when it is launched).
"""

from __future__ import annotations

import contextlib
import os
import sys
import types

import numpy as np

from mpsntk import _backend, _device

_KDL_CUDA = 2


class ndarray(np.ndarray):  # noqa: N801 - the name CuPy uses
    """Host memory that says it is device memory."""

    @property
    def __cuda_array_interface__(self):
        iface = self.view(np.ndarray).__array_interface__
        return {"shape": iface["shape"], "typestr": iface["typestr"], "data": iface["data"],
                "strides": iface["strides"], "version": 3}

    def __dlpack_device__(self):
        return (_KDL_CUDA, 0)

    def __dlpack__(self, **kwargs):
        return self.view(np.ndarray).__dlpack__(**kwargs)

    def get(self):
        """Copy to a plain NumPy array (the device-to-host copy of CuPy)."""
        return np.array(self.view(np.ndarray), copy=True)


def _device_result(x):
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
        return x.view(ndarray)
    if isinstance(x, (tuple, list)):
        return type(x)(_device_result(v) for v in x)
    return x


def _wrap(fn):
    def call(*args, **kwargs):
        return _device_result(fn(*args, **kwargs))

    call.__name__ = getattr(fn, "__name__", "call")
    return call


def asarray(a, dtype=None):
    """Host data are copied "to the device"; device arrays are returned as they are."""
    if isinstance(a, ndarray):
        return a if dtype is None else a.astype(dtype, copy=False)
    return np.array(a, dtype=dtype, copy=True).view(ndarray)


def from_dlpack(a):
    return np.from_dlpack(a).view(ndarray)


class _Namespace(types.SimpleNamespace):
    def __init__(self, inner):
        super().__init__()
        self._inner = inner

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        return _wrap(attr) if callable(attr) and not isinstance(attr, type) else attr


linalg = _Namespace(np.linalg)


class Stream:
    """A stream handle; ``with stream:`` makes it current, as in CuPy."""

    _current: list = []

    def __init__(self, non_blocking=False):
        self.ptr = id(self)

    def __enter__(self):
        Stream._current.append(self)
        return self

    def __exit__(self, *exc):
        Stream._current.pop()

    def synchronize(self):
        pass


_NULL_STREAM = Stream()
_NULL_STREAM.ptr = 0


def _current_stream():
    return Stream._current[-1] if Stream._current else _NULL_STREAM


def _free_memory():
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 2**20
    return pages * os.sysconf("SC_PAGE_SIZE"), pages * os.sysconf("SC_PAGE_SIZE")


cuda = types.SimpleNamespace(
    Stream=Stream,
    get_current_stream=_current_stream,
    runtime=types.SimpleNamespace(memGetInfo=_free_memory, getDevice=lambda: 0),
)


def asnumpy(a):
    return np.array(np.asarray(a), copy=True)


class _MemoryPool:
    """CuPy's pool interface; the stand-in allocates from the host heap and pools nothing."""

    def free_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


def get_default_memory_pool():
    return _MemoryPool()


def __getattr__(name):  # everything else: NumPy's function, returning device arrays
    attr = getattr(np, name)
    return _wrap(attr) if callable(attr) and not isinstance(attr, type) else attr


def available():
    """Whether mpsntk was built with the SIMT simulator.  Where the run expects it
    (``MPSNTK_EXPECT_SIM=1``, as CI sets it), its absence fails the test instead: the device tests
    must not skip silently there."""
    if _device.simulator() is not None:
        return True
    if os.environ.get("MPSNTK_EXPECT_SIM") == "1":
        import pytest

        pytest.fail("MPSNTK_EXPECT_SIM=1 but mpsntk was built without the SIMT simulator "
                    "(build with MPSNTK_SIM=ON)")
    return False


def device_tests():
    """``(on_gpu, cupy)`` for a module of device tests: CuPy where a GPU is usable, else this
    stand-in; skips the module where neither is (use it with the ``device_engine`` fixture)."""
    import pytest

    from mpsntk import build_info, cuda_available

    if cuda_available():  # pragma: no cover - needs a GPU
        return True, pytest.importorskip("cupy")
    if available():
        return False, sys.modules[__name__]
    pytest.skip(f"CUDA engine unavailable: {build_info()['cuda_reason']}; no simulator",
                allow_module_level=True)  # pragma: no cover - the simulator is built on POSIX


@contextlib.contextmanager
def engine():
    """The real CUDA engine on a GPU, else the simulator behind this stand-in."""
    if _backend.cuda_available():  # pragma: no cover - needs a GPU
        yield
    else:
        with installed():
            yield


@contextlib.contextmanager
def installed():
    """Within: ``import cupy`` is this module and mpsntk's CUDA engine is the simulator."""
    sim = _device.simulator().module
    saved = (sys.modules.get("cupy"), _backend._cuda, _backend._cuda_reason, _device._cuda,
             _device._gpu)
    sys.modules["cupy"] = sys.modules[__name__]
    _backend._cuda, _backend._cuda_reason = sim, None
    _device._cuda, _device._gpu = sim, None
    try:
        yield
    finally:
        cupy, _backend._cuda, _backend._cuda_reason, _device._cuda, _device._gpu = saved
        if cupy is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = cupy
