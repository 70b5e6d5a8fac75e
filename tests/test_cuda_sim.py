"""The SIMT simulator (``mpsntk._cuda_sim``) that runs the CUDA kernels on the CPU.

``_cuda_sim`` compiles the kernel sources of ``_cuda`` (cuda/src) with the host compiler against
cuda/sim: every simulated thread is a fiber, ``__syncthreads()`` and the warp-wide exchange of
``mma.sync`` are real barriers, and the tensor-core instructions follow the PTX fragment tables.
test_cuda.py runs the engine's accuracy tests on it where there is no GPU; here: running blocks
and threads in other orders must not change a single bit (no data races), the tensor-core model
is the matrix product it stands for, and the faults the simulator must catch are caught.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _device
from mpsntk.ntk import _site_lr

import cases
import sim_cupy
from conftest import random_features, random_model

SIM = _device.simulator()
if not sim_cupy.available():
    pytest.skip("mpsntk was built without the SIMT simulator", allow_module_level=True)

# multi-output open and periodic chains: every kernel and branch of the engine
MODELS = cases.SIMULATOR


def _model(spec, dtype, seed=0):
    rng = np.random.default_rng(seed)
    bonds, boundary, osite, nout = spec
    mps = random_model(rng, bonds, phys_dim=3, boundary=boundary, output_site=osite,
                       n_outputs=nout, dtype=dtype)
    return rng, mps


def sim_ntk(mps, phi1, phi2=None, outputs="trace", per_site=False, tf32=False):
    """What mpsntk.ntk computes on a device, with the simulated engine."""
    full = outputs == "full" and mps.n_outputs > 1
    b1 = SIM.prepare(mps, phi1)
    b2 = None if phi2 is None else SIM.prepare(mps, phi2)
    return SIM.ntk(b1, b2, _site_lr(mps, None), full=full, per_site=per_site, normalized=False,
                   tf32=tf32)[0]


@pytest.mark.parametrize("spec", MODELS, ids=MODELS.ids)
def test_other_schedules_change_no_bit(spec, monkeypatch):
    """A race between threads (or blocks) would make the result depend on their order."""
    rng, mps = _model(spec, np.float64, seed=5)
    phi1 = random_features(rng, 70, mps.n_sites, 3)
    phi2 = random_features(rng, 66, mps.n_sites, 3)
    v = rng.standard_normal((70, mps.n_outputs, 2))
    mps32 = mps.with_cores([c.astype(np.float32) for c in mps.cores])
    phi32 = phi1.astype(np.float32)

    def batch():  # prepared under the schedule being tested
        return SIM.prepare(mps, phi1)

    def everything():
        return [
            sim_ntk(mps, phi1, outputs="full", per_site=True),
            sim_ntk(mps, phi1, phi2, outputs="full"),
            sim_ntk(mps32, phi32, tf32=True),
            *SIM.forward(mps, phi1),
            *SIM.vjp(batch(), v[:, :, 0].copy())[0],
            *SIM.vjp(batch(), v[:, :, 0].copy(), normalized=True)[0],
            SIM.vjp(batch(), v[:, :, 0].copy(), normalized=True)[1],
            SIM.ntk_vp(batch(), v, _site_lr(mps, None))[0],
            *SIM.ntk_vp(batch(), v, _site_lr(mps, None), normalized=True),
        ]

    def all_paths():  # DMMA m16n8k8 (the simulated card is an sm_90 part), m8n8k4, FMAs
        monkeypatch.setenv("MPSNTK_CUDA_SIMT", "0")
        monkeypatch.delenv("MPSNTK_CUDA_DMMA", raising=False)
        results = everything()
        monkeypatch.setenv("MPSNTK_CUDA_DMMA", "m8n8k4")
        results.append(sim_ntk(mps, phi1, phi2))
        monkeypatch.setenv("MPSNTK_CUDA_SIMT", "1")
        return results + [sim_ntk(mps, phi1, phi2)]

    forward = all_paths()
    assert not np.array_equal(forward[-2], forward[-1])  # the switches select other kernels
    try:
        for schedule in ("reverse", "shuffled"):
            SIM.module.set_schedule(schedule, seed=11)
            for a, b in zip(forward, all_paths()):
                assert np.array_equal(a, b), schedule
    finally:
        SIM.module.set_schedule("forward")


def test_work_goes_to_the_current_cupy_stream():
    rng, host = _model(MODELS[0], np.float64, seed=6)
    phi = random_features(rng, 20, host.n_sites, 3)
    cot = rng.standard_normal((20, host.n_outputs))
    with sim_cupy.installed():
        cp = sim_cupy
        mps, x = host.to_device(), cp.asarray(phi)
        SIM.module.streams_used()  # forget earlier work
        mn.ntk(mps, x)
        assert SIM.module.streams_used() == [0]  # the default stream
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            mn.ntk(mps, x, x[:7])
            mps(x)
            mn.vjp(mps, x, cp.asarray(cot))
            mn.ntk_vp(mps, x, cp.asarray(cot))
        assert stream.ptr != 0 and SIM.module.streams_used() == [stream.ptr]


def test_environment_sweeps_take_one_launch_per_site():
    """The left and right sweeps step together in one GEMM launch, and an open chain's steps
    (one channel, no fan-out, D <= 64) normalise in the GEMM: n_sites launches in all.  With
    channels (periodic) each step's rows are normalised after its GEMM."""
    rng = np.random.default_rng(3)
    for bonds, boundary in [((1, 3, 5, 4, 2, 1), "open"), ((3, 2, 5, 3), "periodic")]:
        host = random_model(rng, bonds, phys_dim=3, boundary=boundary)
        phi = random_features(rng, 20, host.n_sites, 3)
        with sim_cupy.installed():
            mps, x = host.to_device(), sim_cupy.asarray(phi)
            SIM.module.launches_made()  # forget earlier work
            mn.ntk(mps, x)
            made = SIM.module.launches_made()
        n = host.n_sites
        assert made["gemm_kernel"] == n and made["ntk_kernel"] == 1
        steps = 2 * n - 1  # n left steps, n - 1 right steps
        want = 0 if boundary == "open" else steps
        assert made.get("normalise_kernel", 0) == want and made.get("fan_logs_kernel", 0) == want


def test_jacobian_products_are_one_gemm_launch_for_all_sites():
    """The vjp's gradient GEMMs of every site (and every output of the output site) share one
    launch; so do the jvp's GEMMs, whose partial dots one more launch sums."""
    rng = np.random.default_rng(4)
    host = random_model(rng, (1, 6, 3, 9, 4, 1), phys_dim=3, output_site=2, n_outputs=3)
    phi = random_features(rng, 20, host.n_sites, 3)
    cot = rng.standard_normal((20, host.n_outputs))
    tangents = [rng.standard_normal(c.shape) for c in host.cores]
    with sim_cupy.installed():
        mps, x = host.to_device(), sim_cupy.asarray(phi)
        SIM.module.launches_made()
        mn.vjp(mps, x, sim_cupy.asarray(cot))
        vjp = SIM.module.launches_made()
        mn.jvp(mps, x, [sim_cupy.asarray(t) for t in tangents])
        jvp = SIM.module.launches_made()
    for made in (vjp, jvp):
        assert made["gemm_batch_kernel"] == 1
        assert made["gemm_kernel"] == host.n_sites  # the environments
    assert jvp["jvp_sum_kernel"] == 1


def test_the_largest_float32_target_fits_one_80_gb_card():
    """N = 65 536 samples, 64 sites, D = 64, float32 in one call: the engine's own plan of the
    device memory (environments, factors, scales, weighted features) plus the 16 GiB output stays
    far below 80 GB, where a dense Jacobian alone (what the peers form) would not fit."""
    n_sites, bond, phys, n = 64, 64, 2, 65536
    shapes = [[phys, 1, bond]] + [[phys, bond, bond]] * (n_sites - 2) + [[phys, bond, 1]]
    chain = SIM.module.Chain_float32(cores=[np.zeros(s, np.float32) for s in shapes],
                                     scales=np.ones(n_sites), boundary="open", output_site=-1)
    # the prepared batch (environments and factors) and the call's own workspace (scales,
    # weighted features)
    workspace = (SIM.module.prepare_bytes(chain, n_samples=n)
                 + SIM.module.ntk_workspace_bytes(chain, n1=n, n2=0))
    total = workspace + n * n * 4
    # the output and the left and right environments of every sample at every bond (the
    # rest, log-scales and weighted features, is a few percent)
    bulk = n * n * 4 + 2 * (n_sites + 1) * n * bond * 4
    assert bulk <= total < 1.05 * bulk < 20 * 2**30
    jacobian = n * sum(int(np.prod(s)) for s in shapes) * 4
    assert jacobian > 80e9


def test_the_binding_checks_every_shape_in_cpp():
    """The device engine refuses, in C++, what the host engine refuses: features of another site
    count or phys_dim, outputs and operands of the wrong shape or dtype, too little memory,
    batches of two models -- before any kernel reads past a buffer (the outputs stay untouched).
    Arguments are named: positional ones are refused."""
    mod = SIM.module
    rng, host = _model(MODELS[0], np.float64, seed=7)
    C, N = host.n_outputs, host.n_sites

    def chain(mps):
        return mod.Chain_float64(cores=mps.cores, scales=mps.scales, boundary=mps.boundary,
                                 output_site=mps.output_site)

    ch = chain(host)
    phi = random_features(rng, 5, N, 3)

    def memory(n=5):
        return np.empty(mod.prepare_bytes(ch, n_samples=n), np.uint8)

    for bad, match in [(random_features(rng, 5, N + 1, 3), rf"phi: n_sites = {N + 1} does not "
                        rf"match the MPS \({N} sites\)"),
                       (random_features(rng, 5, N, 2), r"phi: phys_dim = 2 does not match the MPS "
                        r"\(3\)"),
                       (phi[0], r"phi: expected shape \(n_samples, n_sites, phys_dim\)")]:
        with pytest.raises(ValueError, match=match):
            mod.prepare(ch, phi=bad, memory=memory(), stream=0)
        mant, lg = np.full((5, C), 7.0), np.full((5, C), 7.0)
        ws = np.empty(mod.forward_workspace_bytes(ch, n_samples=5), np.uint8)
        with pytest.raises(ValueError, match=match.split(":")[0]):
            mod.forward(ch, phi=bad, mantissa=mant, log_scale=lg, workspace=ws, stream=0)
        assert np.all(mant == 7.0) and np.all(lg == 7.0)
    with pytest.raises(TypeError, match="phi must have typestr <f8; got <f4"):
        mod.prepare(ch, phi=phi.astype(np.float32), memory=memory(), stream=0)
    with pytest.raises(ValueError, match="memory: too small"):
        mod.prepare(ch, phi=phi, memory=memory(2), stream=0)
    with pytest.raises(TypeError):  # positional arguments
        mod.prepare(ch, phi, memory(), 0)
    with pytest.raises(ValueError, match=r"cores\[1\]: left bond does not match"):
        mod.Chain_float64(cores=[host.cores[1]] + host.cores[1:],
                          scales=host.scales, boundary="open", output_site=2)

    batch = mod.prepare(ch, phi=phi, memory=memory(), stream=0)
    lr = np.ones(N)
    ws = np.empty(mod.ntk_workspace_bytes(ch, n1=5, n2=0), np.uint8)
    logs = dict(log_scale1=np.empty(5), log_scale2=np.empty(5))
    out = np.full((5, 4), 7.0)
    with pytest.raises(ValueError, match="out: expected 25 elements"):
        mod.ntk(batch, None, site_lr=lr, out=out, **logs, full_outputs=False, per_site=False,
                normalized=False, tf32=False, workspace=ws, stream=0)
    assert np.all(out == 7.0)
    with pytest.raises(ValueError, match="site_lr: need one per site"):
        mod.ntk(batch, None, site_lr=lr[:-1], out=np.empty((5, 5)), **logs, full_outputs=False,
                per_site=False, normalized=False, tf32=False, workspace=ws, stream=0)
    with pytest.raises(ValueError, match="workspace: 1 bytes, the call needs"):
        mod.ntk(batch, None, site_lr=lr, out=np.empty((5, 5)), **logs, full_outputs=False,
                per_site=False, normalized=False, tf32=False, workspace=np.empty(1, np.uint8),
                stream=0)
    grads = [np.empty_like(c) for c in host.cores]
    pws = np.empty(mod.product_workspace_bytes(ch, n1=5), np.uint8)
    with pytest.raises(ValueError, match=rf"cotangent must have shape \(5, {C}\); got \(4, {C}\)"):
        mod.vjp(batch, cotangent=np.ones((4, C)), grads=grads, workspace=pws, stream=0)
    with pytest.raises(ValueError, match=r"grads\[2\]: expected \d+ elements"):
        mod.vjp(batch, cotangent=np.ones((5, C)), grads=grads[:2] + [grads[3]] + grads[3:],
                workspace=pws, stream=0)
    with pytest.raises(ValueError, match=r"v: expected shape \(n_samples2, n_outputs, k\)"):
        mod.ntk_vp(batch, None, site_lr=lr, v=np.ones((6, C, 2)), out=np.empty((5, C, 2)),
                   workspace=pws, stream=0)
    other = host.copy()
    b_other = mod.prepare(chain(other), phi=phi, memory=memory(), stream=0)
    with pytest.raises(ValueError, match="prepared for different models"):
        mod.ntk(batch, b_other, site_lr=lr, out=np.empty((5, 5)), **logs, full_outputs=False,
                per_site=False, normalized=False, tf32=False, workspace=ws, stream=0)


# ---------------------------------------------------------------- the simulator itself


def _tf32(x):
    """cvt.rna.tf32.f32, written independently: keep 10 mantissa bits, ties away from zero."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    sign, mag = bits & 0x80000000, bits & 0x7FFFFFFF
    mag = ((mag + 0x1000) >> 13) << 13
    return (sign | mag).astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("kind,m,k", [("f64", 8, 4), ("f64_sm90", 16, 8)])
def test_fp64_mma_models_are_the_matrix_product(kind, m, k):
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((m, k)), rng.standard_normal((k, 8)), rng.standard_normal((m, 8))
    d = c.copy()
    SIM.module.selftest_mma(kind, a, b, d)
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


def test_async_copies_land_only_once_waited_for_and_published():
    """cp.async copies land when the issuing thread waits (forward schedule), at once (reverse)
    or either way at random (shuffled): the wait-then-barrier exchange is right under every
    schedule, and dropping the wait or the barrier reads memory no copy has reached yet."""
    sim = SIM.module
    src = np.arange(256, dtype=np.int32) * 3 + 1
    want = np.roll(src, -1)
    try:
        for schedule in ("forward", "reverse", "shuffled"):
            sim.set_schedule(schedule, 5)
            assert np.array_equal(sim.selftest_async_exchange(src, True, True), want)
        sim.set_schedule("forward")
        # dynamic shared memory starts as 0xFF bytes: -1 as an int (the last thread at the
        # barrier runs on at once, and its final wait lands one copy before the others read)
        assert np.sum(sim.selftest_async_exchange(src, False, True) == -1) >= 255
        no_barrier = sim.selftest_async_exchange(src, True, False)
        assert np.all(no_barrier[:-1] == -1) and no_barrier[-1] == src[0]
        sim.set_schedule("reverse")  # copies land at once, and threads run last to first
        eager = sim.selftest_async_exchange(src, False, False)
        assert np.array_equal(eager[:-1], want[:-1]) and eager[-1] == -1
    finally:
        sim.set_schedule("forward")


@pytest.mark.parametrize("kind,message", [
    ("async_pending", "async_fault_kernel: thread 0 of block .0, 0.: exited with cp.async copies "
                      "it never waited for"),
    ("async_misaligned", "async_fault_kernel: thread 0 of block .0, 0.: misaligned cp.async of 8 "
                         "bytes"),
    ("divergent", "divergent_kernel: thread 32 of block .0, 0.: exited while other threads wait "
                  "at __syncthreads"),
    ("deadlock", "deadlock_kernel: deadlock: 32 threads wait at __syncthreads.. and 32 in "
                 "mma.sync"),
])
def test_barrier_faults_are_cuda_errors_naming_the_launch(kind, message):
    with pytest.raises(mn.CudaError, match=r"selftest\.cpp:\d+: " + message):
        SIM.module.selftest_fault(kind)


def test_shared_memory_overflow_traps():
    """The simulator is compiled with array-bounds traps: an index past a __shared__ array
    kills the process (here a child process) instead of reading a neighbour's data."""
    code = "from mpsntk import _device; _device.simulator().module.selftest_fault({!r})"
    bad = subprocess.run([sys.executable, "-c", code.format("bounds")], capture_output=True)
    assert bad.returncode == -signal.SIGILL
    ok = subprocess.run([sys.executable, "-c", code.format("deadlock")], capture_output=True)
    assert ok.returncode == 1 and b"deadlock_kernel: deadlock" in ok.stderr


@pytest.mark.parametrize("grid,threads", [((0, 1, 1), 32), ((1, 1, 1), 2048), ((1, 70000, 1), 32)])
def test_invalid_launch_configurations_are_cuda_errors(grid, threads):
    with pytest.raises(mn.CudaError, match=r"selftest\.cpp:\d+: empty_kernel: "
                                           "cudaErrorInvalidConfiguration"):
        SIM.module.selftest_launch(list(grid), threads)
    SIM.module.selftest_launch([2, 1, 1], 64)  # a valid launch still works afterwards
