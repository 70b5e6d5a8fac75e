"""Shared fixtures: engine instruction sets, where a test runs (``place``: the host engine on
every instruction set, and the device), tolerances per dtype, and small random models (the
catalogue of model shapes is cases.py).
The CUDA engine's tests live in test_cuda.py: on a GPU when one is usable, else on the SIMT
simulator (test_cuda_sim.py tests the simulator itself)."""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _core

RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


@pytest.fixture(scope="module")
def device_engine():
    """For modules of device tests (``pytestmark = pytest.mark.usefixtures("device_engine")``):
    the CUDA engine on a usable GPU, else the simulator behind the CuPy stand-in."""
    import sim_cupy

    with sim_cupy.engine():
        yield


@pytest.fixture(params=_core.available_isas())
def isa(request):
    """Run a test once per instruction set compiled in and usable on this CPU."""
    before = _core.current_isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


class Place:
    """Where a test runs, through the public API only: the host engine (NumPy arrays) or the
    device (CuPy arrays: on a GPU, else NumPy-backed stand-ins on the simulated engine).

    ``model(mps)`` moves a host model there, ``put(a)`` host data, ``get(a)`` brings a result
    (an array or a list of arrays) back as NumPy; ``xp`` is the array module there."""

    def __init__(self, name, xp):
        self.name, self.xp = name, xp

    @property
    def on_device(self):
        return self.xp is not np

    def model(self, mps):
        return mps.to_device() if self.on_device else mps

    def put(self, a):
        return self.xp.asarray(a) if self.on_device else a

    def get(self, a):
        if isinstance(a, (list, tuple)):
            return type(a)(self.get(x) for x in a)
        if self.on_device:
            assert isinstance(a, self.xp.ndarray), f"a result left the device: {type(a)}"
            return a.get()
        assert isinstance(a, np.ndarray), f"a host result is a {type(a)}"
        return a

    def __repr__(self):
        return self.name


@pytest.fixture(params=[f"host-{isa}" for isa in _core.available_isas()] + ["device"])
def place(request):
    """Run a test once on the host engine per instruction set and once on the device, written
    once (see :class:`Place`); the device is skipped where neither a GPU nor the simulator is."""
    if request.param != "device":
        before = _core.current_isa()
        _core.set_isa(request.param[len("host-"):])
        yield Place(request.param, np)
        _core.set_isa(before)
        return
    import sim_cupy

    _, cp = sim_cupy.device_tests()
    with sim_cupy.engine():
        yield Place("device", cp)


def relerr(a, b):
    """max |a - b| / max |b| (the scale of the reference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def random_features(rng, n_samples, n_sites, phys_dim=2, dtype=np.float64):
    """Features with entries of both signs and unequal norms (harder than trig)."""
    return rng.standard_normal((n_samples, n_sites, phys_dim)).astype(dtype)


def random_model(
    rng, bonds, phys_dim=2, boundary="open", output_site=None, n_outputs=1, dtype=np.float64
):
    """An MPS with given bond dimensions, random scales and per-site rates."""
    n_sites = len(bonds) - 1
    cores = []
    for j in range(n_sites):
        shape = (phys_dim, bonds[j], bonds[j + 1])
        if j == output_site:
            shape = (n_outputs,) + shape
        cores.append(rng.standard_normal(shape).astype(dtype))
    return mn.MPS(
        cores,
        boundary,
        scales=rng.uniform(0.5, 1.5, n_sites),
        site_lr=rng.uniform(0.5, 2.0, n_sites),
        output_site=output_site,
    )


def assert_same_model(a, b):
    assert type(b) is mn.MPS
    assert len(a.cores) == len(b.cores)
    for ca, cb in zip(a.cores, b.cores):
        assert ca.dtype == cb.dtype and ca.shape == cb.shape
        assert ca.tobytes() == cb.tobytes()  # bitwise
    assert a.scales.tobytes() == b.scales.tobytes()
    assert a.site_lr.tobytes() == b.site_lr.tobytes()
    assert (a.boundary, a.output_site, a.parametrization) == \
        (b.boundary, b.output_site, b.parametrization)
    assert (a.n_sites, a.phys_dim, a.n_outputs, a.bond_dims, a.dtype, a.n_params) == \
        (b.n_sites, b.phys_dim, b.n_outputs, b.bond_dims, b.dtype, b.n_params)


class DLPackOnly:
    """An array that speaks only DLPack (no ``__array__``, no ``__cuda_array_interface__``),
    as JAX arrays do; on the host or a device, wherever the wrapped array lives."""

    def __init__(self, a):
        self._a = a

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)
