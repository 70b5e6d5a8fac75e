"""The CUDA engine against the CPU engine and the dense oracles, through the public API.

Every device routine is compared at the accuracy contract (1e-12 relative in float64, 1e-5 in
float32) on odd sizes (sample counts that are not multiples of the 64-row tile, bond dimensions
that are not powers of two, D = 1 ends), periodic chains, multi-output models, and a non-default
CuPy stream.

With a usable GPU the tests run there, on CuPy arrays.  Without one they run on the SIMT
simulator (``_cuda_sim``: the same CUDA kernels compiled for the host) with a NumPy-backed
stand-in for CuPy (sim_cupy.py), which exercises everything but the CUDA runtime itself:
kernels, launches, workspaces, array routing and the device paths of the Python layer.
"""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _reference as ref

import cases
import sim_cupy
from conftest import RTOL, DLPackOnly, random_features, random_model, relerr

ON_GPU, cp = sim_cupy.device_tests()
pytestmark = pytest.mark.usefixtures("device_engine")


MODELS = cases.DEVICE


def _pair(spec, dtype, seed=0):
    rng = np.random.default_rng(seed)
    bonds, boundary, osite, nout = spec
    host = random_model(rng, bonds, phys_dim=3, boundary=boundary, output_site=osite,
                        n_outputs=nout, dtype=dtype)
    return rng, host, host.to_device()


@pytest.mark.parametrize("spec", MODELS, ids=MODELS.ids)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n1,n2", [(1, 1), (63, 65), (130, 7)])
def test_ntk_device_matches_host_and_oracle(spec, dtype, n1, n2):
    rng, host, dev = _pair(spec, dtype)
    phi1 = random_features(rng, n1, host.n_sites, 3, dtype)
    phi2 = random_features(rng, n2, host.n_sites, 3, dtype)
    tol = RTOL[np.dtype(dtype)]
    for outputs in ("trace", "full"):
        for per_site in (False, True):
            want_sym = mn.ntk(host, phi1, outputs=outputs, per_site=per_site)
            want = mn.ntk(host, phi1, phi2, outputs=outputs, per_site=per_site)
            got_sym = mn.ntk(dev, cp.asarray(phi1), outputs=outputs, per_site=per_site)
            got = mn.ntk(dev, cp.asarray(phi1), cp.asarray(phi2), outputs=outputs,
                         per_site=per_site)
            assert isinstance(got, cp.ndarray) and got.dtype == dtype
            assert relerr(got_sym.get(), want_sym) < tol
            assert relerr(got.get(), want) < tol
    if n1 <= 70:
        oracle = ref.ntk(host, phi1.astype(np.float64), phi2.astype(np.float64))
        got = mn.ntk(dev, cp.asarray(phi1), cp.asarray(phi2)).get()
        assert relerr(got, oracle) < tol


@pytest.mark.parametrize("spec", MODELS, ids=MODELS.ids)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_vjp_jvp_ntk_vp_on_device(spec, dtype):
    rng, host, dev = _pair(spec, dtype, seed=1)
    phi = random_features(rng, 77, host.n_sites, 3, dtype)
    dphi = cp.asarray(phi)
    tol = RTOL[np.dtype(dtype)]
    assert relerr(dev(dphi).get(), host(phi)) < tol
    shape = (77,) if host.output_site is None else (77, host.n_outputs)
    cot = rng.standard_normal(shape).astype(dtype)
    for g, w in zip(mn.vjp(dev, dphi, cp.asarray(cot)), mn.vjp(host, phi, cot)):
        assert isinstance(g, cp.ndarray) and relerr(g.get(), w) < tol
    tangents = [rng.standard_normal(c.shape).astype(dtype) for c in host.cores]
    got = mn.jvp(dev, dphi, [cp.asarray(t) for t in tangents])
    assert relerr(got.get(), mn.jvp(host, phi, tangents)) < tol
    v = rng.standard_normal(shape + (2,)).astype(dtype)
    assert relerr(mn.ntk_vp(dev, dphi, cp.asarray(v)).get(), mn.ntk_vp(host, phi, v)) < tol


@pytest.mark.parametrize("spec", MODELS[:5], ids=MODELS[:5].ids)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normalised_vjp_jvp_ntk_vp_on_device(spec, dtype):
    """Far below the dtype's range (every scale times alpha): the device, like the host, raises
    for the plain forms and returns normalised ones equal to the host's (log-scales included);
    log_forward keeps the scales out of the dtype (its logs match float64 on the host)."""
    rng, host, _ = _pair(spec, dtype, seed=2)
    log_alpha = (np.log(np.finfo(dtype).tiny) - 40) / host.n_sites
    host = host.with_cores(host.cores)
    host.scales = host.scales * np.exp(log_alpha)
    dev = host.to_device()
    phi = random_features(rng, 40, host.n_sites, 3, dtype)
    dphi = cp.asarray(phi)
    tol = RTOL[np.dtype(dtype)] * 10
    shape = (40,) if host.output_site is None else (40, host.n_outputs)
    cot = rng.standard_normal(shape).astype(dtype)
    tangents = [rng.standard_normal(c.shape).astype(dtype) for c in host.cores]
    v = rng.standard_normal(shape + (2,)).astype(dtype)

    def same(dev_pair, host_pair):
        (a, la), (b, lb) = dev_pair, host_pair
        for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            assert isinstance(x, cp.ndarray) and relerr(x.get(), y) < tol
        assert isinstance(la, cp.ndarray) and np.max(np.abs(la.get() - lb)) < tol * np.abs(lb).max()

    same(mn.vjp(dev, dphi, cp.asarray(cot), normalized=True),
         mn.vjp(host, phi, cot, normalized=True))
    same(mn.jvp(dev, dphi, [cp.asarray(t) for t in tangents], normalized=True),
         mn.jvp(host, phi, tangents, normalized=True))
    same(mn.ntk_vp(dev, dphi, cp.asarray(v), normalized=True),
         mn.ntk_vp(host, phi, v, normalized=True))
    with pytest.raises(FloatingPointError, match="vjp underflows"):
        mn.vjp(dev, dphi, cp.asarray(cot))
    with pytest.raises(FloatingPointError, match="Theta v underflows"):
        mn.ntk_vp(dev, dphi, cp.asarray(v))
    want = host.with_cores([c.astype(np.float64) for c in host.cores]).log_forward(
        phi.astype(np.float64))[1]
    # log|f| to an absolute error of f's relative precision (float32 features of both signs
    # cancel: a few 1e-4 for some samples), where the scale cast to float32 gave -inf
    assert np.max(np.abs(dev.log_forward(dphi)[1].get() - want)) < (1e-9 if tol < 1e-8 else 1e-2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grams_deeper_than_one_staged_chunk(dtype):
    """Bond dimensions whose Grams span several 16-deep chunks, with partial last chunks, and
    environments wider than one 64-column GEMM tile (normalised across tiles)."""
    rng = np.random.default_rng(12)
    tol = RTOL[np.dtype(dtype)]
    for bonds, boundary in [((1, 17, 33, 40, 1), "open"), ((3, 20, 5, 3), "periodic"),
                            ((1, 70, 66, 1), "open")]:
        host = random_model(rng, bonds, phys_dim=3, boundary=boundary, dtype=dtype)
        dev = host.to_device()
        phi1 = random_features(rng, 70, host.n_sites, 3, dtype)
        phi2 = random_features(rng, 9, host.n_sites, 3, dtype)
        assert relerr(mn.ntk(dev, cp.asarray(phi1)).get(), mn.ntk(host, phi1)) < tol
        got = mn.ntk(dev, cp.asarray(phi1), cp.asarray(phi2)).get()
        assert relerr(got, mn.ntk(host, phi1, phi2)) < tol


def test_more_tile_rows_than_one_scheduling_group():
    """The fused kernel orders its 64 x 64 tiles in groups of 8 tile rows: with 10 row tiles (a
    full group and a partial one) every tile of the symmetric and of the cross kernels, in both
    shapes, is computed exactly once."""
    rng = np.random.default_rng(21)
    host = random_model(rng, (1, 3, 2, 1), phys_dim=2, dtype=np.float64)
    dev = host.to_device()
    big = random_features(rng, 9 * 64 + 5, host.n_sites, 2, np.float64)
    small = random_features(rng, 3 * 64 + 1, host.n_sites, 2, np.float64)
    tol = RTOL[np.dtype(np.float64)]
    assert relerr(mn.ntk(dev, cp.asarray(big)).get(), mn.ntk(host, big)) < tol
    for a, b in [(big, small), (small, big)]:
        got = mn.ntk(dev, cp.asarray(a), cp.asarray(b)).get()
        assert relerr(got, mn.ntk(host, a, b)) < tol


def test_long_chain_normalized_on_device():
    host = mn.MPS.random(600, 4, sigma=2.0, seed=3)
    dev = host.to_device()
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(9, 600)))
    t_h, c1_h, _ = mn.ntk(host, phi, normalized=True)
    t_d, c1_d, _ = mn.ntk(dev, cp.asarray(phi), normalized=True)
    assert np.allclose(c1_d.get(), c1_h, rtol=0, atol=1e-9)
    assert relerr(t_d.get(), t_h) < 1e-12


def test_non_default_stream_and_no_host_round_trip(monkeypatch):
    """Work goes to the current stream and the data stay on the device.  On a GPU a launch on
    another stream than the caller's would be read before it finished; the simulator runs each
    kernel at its launch, so there the test asks the simulator which streams the launches named,
    and refuses every device-to-host copy during the call."""
    _, host, dev = _pair(MODELS[0], np.float64, seed=2)
    phi = cp.asarray(random_features(np.random.default_rng(5), 200, host.n_sites, 3))
    want = mn.ntk(host, phi.get())
    # the copies above ran on the null stream, which a non-blocking stream does not wait for
    cp.cuda.get_current_stream().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    if not ON_GPU:
        mn._backend._cuda.streams_used()  # forget earlier work

        def no_copy(*args, **kwargs):
            raise AssertionError("a device array was copied to the host")

        monkeypatch.setattr(sim_cupy.ndarray, "get", no_copy)
        monkeypatch.setattr(sim_cupy, "asnumpy", no_copy)
    with stream:
        got = mn.ntk(dev, phi)
    stream.synchronize()
    assert isinstance(got, cp.ndarray)
    if not ON_GPU:
        assert stream.ptr != 0 and mn._backend._cuda.streams_used() == [stream.ptr]
        monkeypatch.undo()
    assert relerr(got.get(), want) < 1e-12


@pytest.mark.parametrize("spec", [MODELS[0], MODELS[2], MODELS[4]])
def test_float64_tensor_cores_match_fma_path(spec, monkeypatch):
    """float64 runs on the FP64 tensor cores (DMMA: the m16n8k8 shape on sm_90 and newer,
    m8n8k4 before; MPSNTK_CUDA_DMMA=m8n8k4 forces the latter); MPSNTK_CUDA_SIMT=1 selects plain
    FMAs.  All are IEEE double arithmetic: each agrees with the host at the float64 contract."""
    rng, host, dev = _pair(spec, np.float64, seed=9)
    phi = random_features(rng, 131, host.n_sites, 3)
    want = mn.ntk(host, phi, outputs="full")
    dmma = mn.ntk(dev, cp.asarray(phi), outputs="full").get()
    monkeypatch.setenv("MPSNTK_CUDA_DMMA", "m8n8k4")
    dmma_m8n8k4 = mn.ntk(dev, cp.asarray(phi), outputs="full").get()
    monkeypatch.setenv("MPSNTK_CUDA_SIMT", "1")
    simt = mn.ntk(dev, cp.asarray(phi), outputs="full").get()
    for got in (dmma, dmma_m8n8k4, simt):
        assert relerr(got, want) < 1e-12


def test_unknown_tensor_core_shape_is_refused(monkeypatch):
    _, host, dev = _pair(MODELS[0], np.float64)
    monkeypatch.setenv("MPSNTK_CUDA_DMMA", "m8n8k16")
    with pytest.raises(ValueError, match="MPSNTK_CUDA_DMMA must be 'm8n8k4' or 'm16n8k8'"):
        mn.ntk(dev, cp.asarray(random_features(np.random.default_rng(1), 5, host.n_sites, 3)))


def test_tf32_is_an_explicit_opt_in():
    rng, host, dev = _pair(MODELS[2], np.float32, seed=10)
    phi = random_features(rng, 100, host.n_sites, 3, np.float32)
    host64 = host.with_cores([c.astype(np.float64) for c in host.cores])
    exact = mn.ntk(host64, phi.astype(np.float64))
    fp32 = mn.ntk(dev, cp.asarray(phi)).get()
    tf32 = mn.ntk(dev, cp.asarray(phi), precision="tf32").get()
    assert relerr(fp32, exact) < 1e-5
    assert 1e-6 < relerr(tf32, exact) < 1e-2  # TF32 rounding is visible, and bounded


def test_dlpack_only_device_arrays():
    _, host, dev = _pair(MODELS[2], np.float64, seed=4)
    phi = random_features(np.random.default_rng(8), 40, host.n_sites, 3)
    got = mn.ntk(dev, DLPackOnly(cp.asarray(phi)))
    assert isinstance(got, cp.ndarray) and relerr(got.get(), mn.ntk(host, phi)) < 1e-12


@pytest.mark.skipif(not ON_GPU, reason="PyTorch and JAX device arrays need a GPU")
@pytest.mark.parametrize("library", ["torch", "jax"])
def test_torch_and_jax_device_arrays(library):  # pragma: no cover - needs a GPU
    _, host, dev = _pair(MODELS[2], np.float64, seed=4)
    phi = random_features(np.random.default_rng(8), 40, host.n_sites, 3)
    want = mn.ntk(host, phi)
    lib = pytest.importorskip(library)
    if library == "torch":
        if not lib.cuda.is_available():
            pytest.skip("PyTorch without CUDA")
        x = lib.as_tensor(phi, device="cuda")
    else:
        gpus = [d for d in lib.devices() if d.platform == "gpu"]
        if not gpus:
            pytest.skip("JAX without a GPU backend")
        lib.config.update("jax_enable_x64", True)
        x = lib.device_put(phi, gpus[0])
    assert relerr(mn.ntk(dev, x).get(), want) < 1e-12


def test_mixed_devices_are_refused():
    _, host, dev = _pair(MODELS[0], np.float64)
    phi = random_features(np.random.default_rng(6), 5, host.n_sites, 3)
    with pytest.raises(TypeError, match="host"):
        mn.ntk(dev, phi)
    with pytest.raises(TypeError, match="CUDA device"):
        mn.ntk(host, cp.asarray(phi))
    with pytest.raises(TypeError):
        mn.ntk(dev, cp.asarray(phi), phi)


def test_out_of_device_memory_is_a_python_error():
    _, host, dev = _pair(MODELS[0], np.float64)
    phi = cp.asarray(random_features(np.random.default_rng(2), 2**20, host.n_sites, 3))
    with pytest.raises(ValueError, match="GiB of GPU memory is free"):
        mn.ntk(dev, phi)  # an 8 TiB kernel: refused before anything is allocated


def test_training_stays_on_the_device():
    rng = np.random.default_rng(7)
    host = mn.MPS.random(6, 8, seed=3)
    phi = mn.features.trig(rng.uniform(size=(12, 6)))
    y = rng.standard_normal(12)
    want = mn.train(host, phi, y, learning_rate=0.2, n_steps=20, probe=phi, log_every=10)
    got = mn.train(host.to_device(), cp.asarray(phi), cp.asarray(y), learning_rate=0.2,
                   n_steps=20, probe=cp.asarray(phi), log_every=10)
    assert isinstance(got.mps.cores[0], cp.ndarray) and isinstance(got.probe_outputs, cp.ndarray)
    assert np.allclose(got.loss, want.loss, rtol=1e-10)
    assert relerr(got.probe_outputs.get(), want.probe_outputs) < 1e-10


def test_interrupted_training_on_the_device_resumes_bit_for_bit(tmp_path):
    rng = np.random.default_rng(8)
    dev = mn.MPS.random(5, 4, seed=2).to_device()
    phi, y = cp.asarray(mn.features.trig(rng.uniform(size=(20, 5)))), cp.asarray(rng.random(20))
    kw = dict(learning_rate=0.1, n_steps=12, batch_size=6, seed=1, probe=phi[:3], log_every=2)

    def stop(step, model):
        assert isinstance(model.cores[0], cp.ndarray)
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mn.train(dev, phi, y, **kw, callbacks=stop, checkpoint=tmp_path / "c", checkpoint_every=3)
    got = mn.train(dev, phi, y, **kw, resume=tmp_path / "c")
    want = mn.train(dev, phi, y, **kw)
    assert isinstance(got.mps.cores[0], cp.ndarray) and isinstance(got.probe_outputs, cp.ndarray)
    assert all(np.array_equal(a.get(), b.get()) for a, b in zip(got.mps.cores, want.mps.cores))
    assert np.array_equal(got.loss, want.loss)
    assert np.array_equal(got.probe_outputs.get(), want.probe_outputs.get())


sim_only = pytest.mark.skipif(ON_GPU, reason="fakes what the simulated card reports")


@sim_only
def test_float64_path_follows_the_code_that_runs(monkeypatch):
    """m16n8k8 needs sm_90 code, not only an sm_90 card: an sm_90 card that JIT-compiles
    compute_80 PTX (a build for 80 only) must take the m8n8k4 shape."""
    module = mn._backend._cuda
    monkeypatch.delenv("MPSNTK_CUDA_DMMA", raising=False)
    monkeypatch.delenv("MPSNTK_CUDA_SIMT", raising=False)
    rng, host, dev = _pair(MODELS[2], np.float64, seed=12)
    phi = random_features(rng, 70, host.n_sites, 3)
    want = mn.ntk(host, phi)
    assert module.float64_path() == "m16n8k8"
    try:
        module.set_image_arch(80)
        assert module.float64_path() == "m8n8k4"
        assert relerr(mn.ntk(dev, cp.asarray(phi)).get(), want) < 1e-12
        monkeypatch.setenv("MPSNTK_CUDA_DMMA", "m16n8k8")
        with pytest.raises(ValueError, match="needs sm_90 code.*compute_80"):
            mn.ntk(dev, cp.asarray(phi))
    finally:
        module.set_image_arch(90)
    monkeypatch.setenv("MPSNTK_CUDA_SIMT", "1")
    assert module.float64_path() == "fma"


class _OnDevice1(sim_cupy.ndarray):
    def __dlpack_device__(self):
        return (2, 1)


@sim_only
def test_arrays_on_another_device_are_refused(monkeypatch):
    _, host, dev = _pair(MODELS[0], np.float64)
    phi = cp.asarray(random_features(np.random.default_rng(3), 5, host.n_sites, 3))
    with pytest.raises(ValueError, match="phi2 is on CUDA device 1 but the current device is 0"):
        mn.ntk(dev, phi, phi.view(_OnDevice1))
    with pytest.raises(ValueError, match=r"cores\[0\] is on CUDA device 1"):
        mn.MPS([c.view(_OnDevice1) for c in dev.cores])
    monkeypatch.setattr(sim_cupy.cuda.runtime, "getDevice", lambda: 1)  # the model stays on 0
    with pytest.raises(ValueError, match="the MPS cores is on CUDA device 0 but the current"):
        mn.ntk(dev, phi.view(_OnDevice1))


def test_host_only_routines_refuse_device_arrays():
    """The explicit Jacobian and the Born machine's doubled-MPS contractions are host code:
    device arrays get a reason, not a copy."""
    _, host, dev = _pair(MODELS[0], np.float64)
    phi = cp.asarray(random_features(np.random.default_rng(3), 4, host.n_sites, 3))
    with pytest.raises(mn.CudaUnavailableError, match="phi: this routine runs on the host only"):
        mn.jacobian(dev, phi)
    with pytest.raises(mn.CudaUnavailableError, match="mps.cores: this routine runs on the host"):
        mn.born.log_partition(dev)


def test_misaligned_device_arrays_are_refused():
    _, host, dev = _pair(MODELS[0], np.float64)
    n = 5 * host.n_sites * 3
    raw = cp.asarray(np.zeros(8 * n + 4, dtype=np.uint8))
    phi = raw[4:].view(np.float64).reshape(5, host.n_sites, 3)  # 4 bytes past an 8-byte boundary
    with pytest.raises(ValueError, match="phi1: the data of a CUDA array must be aligned"):
        mn.ntk(dev, phi)


def test_device_model_pickles():
    import pickle

    rng, host, dev = _pair(MODELS[4], np.float64, seed=13)
    back = pickle.loads(pickle.dumps(dev))
    assert back.device == "cuda" and isinstance(back.cores[0], cp.ndarray)
    phi = random_features(rng, 9, host.n_sites, 3)
    assert relerr(mn.ntk(back, cp.asarray(phi)).get(), mn.ntk(host, phi)) < 1e-12


def test_jvp_past_one_launch_of_tasks():
    """A jvp runs one GEMM per site and output; past 65535 (the grid's z limit) it takes more
    than one launch."""
    rng = np.random.default_rng(14)
    host = random_model(rng, (1, 2, 1), phys_dim=2, output_site=1, n_outputs=33000)
    phi = random_features(rng, 3, 2, 2)
    tangents = [rng.standard_normal(c.shape) for c in host.cores]
    want = mn.jvp(host, phi, tangents)
    got = mn.jvp(host.to_device(), cp.asarray(phi), [cp.asarray(t) for t in tangents])
    assert relerr(got.get(), want) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_environments_on_device(dtype):
    """A site whose features are subnormal makes environments far below the dtype's normal
    range: they are rescaled by the largest finite power of two (no inf or NaN)."""
    host64, phi = _tiny_site_problem(dtype)
    host = host64.with_cores([c.astype(dtype) for c in host64.cores])
    dev = host.to_device()
    d_phi = cp.asarray(phi.astype(dtype))
    _, want = host64.log_forward(phi)
    _, got = dev.log_forward(d_phi)
    assert np.all(np.isfinite(got.get()))
    np.testing.assert_allclose(got.get(), want, rtol=1e-5 if dtype == np.float32 else 1e-12)
    t, c1, _ = mn.ntk(dev, d_phi, normalized=True)  # (every Jacobian entry carries phi at site 1)
    assert np.all(np.isfinite(t.get())) and np.all(np.isfinite(c1.get()))


def _tiny_site_problem(dtype):
    """A float64 model and features (float64 holding values of ``dtype``) whose site 1 features
    are subnormal in ``dtype``."""
    rng = np.random.default_rng(15)
    host = mn.MPS.random(4, 3, phys_dim=2, seed=16)
    host = host.with_cores([c.astype(dtype).astype(np.float64) for c in host.cores])
    phi = rng.uniform(0.5, 1.0, size=(6, 4, 2))
    phi[:, 1] *= 1e-39 if dtype == np.float32 else 1e-310
    return host, phi.astype(dtype).astype(np.float64)


def test_overflowing_products_are_errors_on_device():
    cores = [np.array([-0.27, -0.94]).reshape(2, 1, 1), np.array([0.45, 1.0]).reshape(2, 1, 1)]
    dev = mn.MPS(cores).to_device()
    phi = cp.asarray(1e92 * np.array([[[11.3, 0.04], [-0.5, 11.1]], [[3.6, 3.7], [-1.7, 7.5]],
                                      [[10.5, -4.6], [4.4, 3.6]]]))
    v = cp.asarray(np.array([-0.9, 0.15, -0.33]))
    with pytest.raises(FloatingPointError, match="Theta v overflows the range of float64"):
        mn.ntk_vp(dev, phi, v)
    with pytest.raises(FloatingPointError, match="the jvp overflows"):
        mn.jvp(dev, phi, [cp.asarray(c * 1e200) for c in cores])
