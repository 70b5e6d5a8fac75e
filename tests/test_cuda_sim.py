"""The CUDA engine's kernels on the SIMT simulator (``mpsntk._cuda_sim``), against the CPU engine.

``_cuda_sim`` compiles the kernel sources of ``_cuda`` (cuda/src) with the host compiler against
cuda/sim: every simulated thread is a fiber, ``__syncthreads()`` and the warp-wide exchange of
``mma.sync`` are real barriers, and the tensor-core instructions follow the PTX fragment tables.
So these tests run the kernels' indexing, tiling, symmetric-tile decoding, fragment placement
and epilogues on any machine, at the same accuracy contract as test_cuda.py (which runs them on
a GPU).  Running blocks and threads in reverse order must not change a single bit: that checks
the kernels for data races.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _device
from mpsntk import _reference as ref
from mpsntk.ntk import _site_lr

from conftest import RTOL, random_features, random_model, relerr

SIM = _device.simulator()
if SIM is None:  # pragma: no cover - the simulator is built on POSIX systems
    pytest.skip("mpsntk was built without the SIMT simulator", allow_module_level=True)

MODELS = [
    ((1, 3, 5, 7, 2, 1), "open", None, 1),
    ((1, 1, 1, 1), "open", None, 1),
    ((1, 6, 3, 9, 4, 1), "open", 2, 3),
    ((3, 2, 5, 3), "periodic", None, 1),
    ((2, 3, 2, 5, 2), "periodic", 1, 3),
]


def _model(spec, dtype, seed=0):
    rng = np.random.default_rng(seed)
    bonds, boundary, osite, nout = spec
    mps = random_model(rng, bonds, phys_dim=3, boundary=boundary, output_site=osite,
                       n_outputs=nout, dtype=dtype)
    return rng, mps


def sim_ntk(mps, phi1, phi2=None, outputs="trace", per_site=False, normalized=False, tf32=False):
    """What mpsntk.ntk computes on a device, with the simulated engine."""
    full = outputs == "full" and mps.n_outputs > 1
    n2 = phi1.shape[0] if phi2 is None else phi2.shape[0]
    shape = (phi1.shape[0], n2) + ((mps.n_outputs,) * 2 if full else ())
    if per_site:
        shape = (mps.n_sites,) + shape
    out, log1, log2 = SIM.ntk(mps, phi1, phi2, _site_lr(mps, None), shape, None, full, per_site,
                              normalized, tf32)
    return (out, log1, log2) if normalized else out


@pytest.mark.parametrize("spec", MODELS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n1,n2", [(1, 1), (63, 65), (130, 7)])
def test_ntk_kernel_matches_host_engine(spec, dtype, n1, n2):
    rng, mps = _model(spec, dtype)
    phi1 = random_features(rng, n1, mps.n_sites, 3, dtype)
    phi2 = random_features(rng, n2, mps.n_sites, 3, dtype)
    tol = RTOL[np.dtype(dtype)]
    for outputs in ("trace", "full"):
        for per_site in (False, True):
            kw = dict(outputs=outputs, per_site=per_site)
            got = sim_ntk(mps, phi1, **kw)
            assert got.dtype == dtype
            assert relerr(got, mn.ntk(mps, phi1, **kw)) < tol
            assert relerr(sim_ntk(mps, phi1, phi2, **kw), mn.ntk(mps, phi1, phi2, **kw)) < tol


@pytest.mark.parametrize("spec", MODELS)
def test_ntk_kernel_matches_dense_oracle(spec):
    rng, mps = _model(spec, np.float64, seed=3)
    phi1 = random_features(rng, 66, mps.n_sites, 3)
    phi2 = random_features(rng, 5, mps.n_sites, 3)
    assert relerr(sim_ntk(mps, phi1, phi2), ref.ntk(mps, phi1, phi2)) < 1e-12


@pytest.mark.parametrize("spec", [MODELS[0], MODELS[2], MODELS[4]])
def test_float64_tensor_core_and_fma_paths(spec, monkeypatch):
    """float64 runs on the DMMA path by default; MPSNTK_CUDA_SIMT=1 selects plain FMAs."""
    rng, mps = _model(spec, np.float64, seed=9)
    phi = random_features(rng, 131, mps.n_sites, 3)
    want = mn.ntk(mps, phi, outputs="full")
    dmma = sim_ntk(mps, phi, outputs="full")
    monkeypatch.setenv("MPSNTK_CUDA_SIMT", "1")
    simt = sim_ntk(mps, phi, outputs="full")
    assert relerr(dmma, want) < 1e-12 and relerr(simt, want) < 1e-12
    assert not np.array_equal(dmma, simt)  # two paths, two summation orders


def test_tf32_rounding_is_visible_and_bounded():
    rng, mps = _model(MODELS[2], np.float32, seed=10)
    phi = random_features(rng, 100, mps.n_sites, 3, np.float32)
    mps64 = mps.with_cores([c.astype(np.float64) for c in mps.cores])
    exact = mn.ntk(mps64, phi.astype(np.float64))
    assert relerr(sim_ntk(mps, phi), exact) < 1e-5
    assert 1e-6 < relerr(sim_ntk(mps, phi, tf32=True), exact) < 1e-2


def test_normalized_long_chain():
    mps = mn.MPS.random(300, 4, sigma=2.0, seed=3)
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(9, 300)))
    t_h, c1_h, c2_h = mn.ntk(mps, phi, normalized=True)
    t_s, c1_s, c2_s = sim_ntk(mps, phi, normalized=True)
    assert np.all(np.abs(c1_h) > 50)  # the unnormalised kernel would be far out of range
    assert np.allclose(c1_s, c1_h, rtol=0, atol=1e-9) and np.allclose(c2_s, c2_h, rtol=0, atol=1e-9)
    assert relerr(t_s, t_h) < 1e-12


@pytest.mark.parametrize("spec", MODELS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_vjp_jvp_ntk_vp(spec, dtype):
    rng, mps = _model(spec, dtype, seed=1)
    n = 77
    phi = random_features(rng, n, mps.n_sites, 3, dtype)
    tol = RTOL[np.dtype(dtype)]
    mant, lg = SIM.forward(mps, phi)
    assert relerr(mps._squeeze_outputs(mant * np.exp(lg)), mps(phi)) < tol
    C = mps.n_outputs
    cot = rng.standard_normal((n, C)).astype(dtype)
    want = mn.vjp(mps, phi, cot[:, 0] if mps.output_site is None else cot)
    for g, w in zip(SIM.vjp(mps, phi, cot), want):
        assert relerr(g, w) < tol
    tangents = [rng.standard_normal(c.shape).astype(dtype) for c in mps.cores]
    got = SIM.jvp(mps, phi, tangents)
    assert relerr(mps._squeeze_outputs(got), mn.jvp(mps, phi, tangents)) < tol
    v = rng.standard_normal((n, C, 2)).astype(dtype)
    want = mn.ntk_vp(mps, phi, v if mps.output_site is not None else v[:, 0])
    got = SIM.ntk_vp(mps, phi, _site_lr(mps, None), v)
    assert relerr(got if mps.output_site is not None else got[:, 0], want) < tol


@pytest.mark.parametrize("spec", [MODELS[2], MODELS[4]])
def test_other_schedules_change_no_bit(spec, monkeypatch):
    """A race between threads (or blocks) would make the result depend on their order."""
    rng, mps = _model(spec, np.float64, seed=5)
    phi1 = random_features(rng, 70, mps.n_sites, 3)
    phi2 = random_features(rng, 66, mps.n_sites, 3)
    v = rng.standard_normal((70, mps.n_outputs, 2))
    mps32 = mps.with_cores([c.astype(np.float32) for c in mps.cores])
    phi32 = phi1.astype(np.float32)

    def everything():
        return [
            sim_ntk(mps, phi1, outputs="full", per_site=True),
            sim_ntk(mps, phi1, phi2, outputs="full"),
            sim_ntk(mps32, phi32, tf32=True),
            *SIM.forward(mps, phi1),
            *SIM.vjp(mps, phi1, v[:, :, 0].copy()),
            SIM.ntk_vp(mps, phi1, _site_lr(mps, None), v),
        ]

    def both_paths():
        monkeypatch.setenv("MPSNTK_CUDA_SIMT", "0")
        results = everything()
        monkeypatch.setenv("MPSNTK_CUDA_SIMT", "1")
        return results + [sim_ntk(mps, phi1, phi2)]

    forward = both_paths()
    try:
        for schedule in ("reverse", "shuffled"):
            SIM.module.set_schedule(schedule, seed=11)
            for a, b in zip(forward, both_paths()):
                assert np.array_equal(a, b), schedule
    finally:
        SIM.module.set_schedule("forward")


# ---------------------------------------------------------------- the simulator itself


def _tf32(x):
    """cvt.rna.tf32.f32, written independently: keep 10 mantissa bits, ties away from zero."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    sign, mag = bits & 0x80000000, bits & 0x7FFFFFFF
    mag = ((mag + 0x1000) >> 13) << 13
    return (sign | mag).astype(np.uint32).view(np.float32)


def test_fp64_mma_model_is_the_matrix_product():
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((8, 4)), rng.standard_normal((4, 8)), rng.standard_normal((8, 8))
    d = c.copy()
    SIM.module.selftest_mma("f64", a, b, d)
    assert np.allclose(d, c + a @ b, rtol=0, atol=1e-14)


def test_tf32_mma_model_rounds_inputs_and_accumulates_in_float32():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8, 8)).astype(np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    d = c.copy()
    SIM.module.selftest_mma("tf32", a, b, d)
    exact_tf32 = c.astype(np.float64) + _tf32(a).astype(np.float64) @ _tf32(b).astype(np.float64)
    unrounded = c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    assert np.max(np.abs(d - exact_tf32)) < 1e-5
    assert np.max(np.abs(d - unrounded)) > 1e-4  # the rounding to TF32 happened
    assert _tf32(np.float32(1 + 2**-11)) == np.float32(1 + 2**-10)  # a tie rounds away from 0


def test_reversed_schedule_exposes_a_missing_barrier():
    sim = SIM.module
    want = 7000 + (np.arange(256) + 1) % 256
    assert np.array_equal(sim.selftest_shared_exchange(7, True), want)
    first = sim.selftest_shared_exchange(8, False)
    sim.set_schedule("reverse")
    try:
        assert np.array_equal(sim.selftest_shared_exchange(7, True), want)
        second = sim.selftest_shared_exchange(9, False)
    finally:
        sim.set_schedule("forward")
    assert not np.array_equal(first - 8000, second - 9000)


@pytest.mark.parametrize("kind,message", [
    ("divergent", "__syncthreads"),
    ("deadlock", "deadlock: 32 threads wait at __syncthreads.. and 32 in mma.sync"),
])
def test_barrier_faults_are_cuda_errors(kind, message):
    with pytest.raises(mn.CudaError, match=message):
        SIM.module.selftest_fault(kind)


def test_shared_memory_overflow_traps():
    """The simulator is compiled with array-bounds traps: an index past a __shared__ array
    kills the process (here a child process) instead of reading a neighbour's data."""
    code = "from mpsntk import _device; _device.simulator().module.selftest_fault({!r})"
    bad = subprocess.run([sys.executable, "-c", code.format("bounds")], capture_output=True)
    assert bad.returncode == -signal.SIGILL
    ok = subprocess.run([sys.executable, "-c", code.format("deadlock")], capture_output=True)
    assert ok.returncode == 1 and b"CudaError: deadlock_kernel: deadlock" in ok.stderr


@pytest.mark.parametrize("grid,threads", [((0, 1, 1), 32), ((1, 1, 1), 2048), ((1, 70000, 1), 32)])
def test_invalid_launch_configurations_are_cuda_errors(grid, threads):
    with pytest.raises(mn.CudaError, match="cudaErrorInvalidConfiguration"):
        SIM.module.selftest_launch(list(grid), threads)
    SIM.module.selftest_launch([2, 1, 1], 64)  # a valid launch still works afterwards
