"""Seeded differential fuzz of the CUDA engine against the CPU engine and the dense oracle.

Each case draws one configuration from a fixed seed: 1..7 sites, bond dimensions 1..40 (unequal,
with 1 and multiples of 16), phys_dim 1..5, open or periodic, 1..3 outputs at any site, 1..150
samples per side, features and cores whose magnitudes span several orders (so the per-sample
log-scales matter).  It then compares, at the accuracy contract, the device's ntk (symmetric and
cross, in a random draw of outputs, per_site, normalized, site_weights, out= and, for float32,
the TF32 opt-in), forward, log_forward, vjp, jvp and ntk_vp with the CPU engine's, and the small
kernels with the dense oracle.  float32 results that cancel can miss the contract on both
engines: then the device must be no further than the host from the float64 result.  TF32 is
judged against the float64 kernel.  Fixed cases follow: kernels out of range are refused alike,
and sites of very unequal magnitude.  Runs where test_cuda.py runs: on a GPU with CuPy, else on
the SIMT simulator.
"""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _reference as ref

import sim_cupy
from conftest import RTOL, relerr

ON_GPU, cp = sim_cupy.device_tests()
pytestmark = pytest.mark.usefixtures("device_engine")

TF32_RTOL = 1e-2
N_CASES = 40


def _draw(seed):
    """A random model (host), two feature sets, and the generator for everything else."""
    rng = np.random.default_rng([2024, seed])
    dtype = np.float64 if seed % 2 == 0 else np.float32
    n_sites = 1 + seed // 2 % 7  # every chain length in both dtypes
    periodic = n_sites >= 2 and rng.random() < 0.4
    choices = [1, 2, 3, 4, 5, 7, 8, 12] if periodic else [1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 32, 40]
    bonds = [int(rng.choice(choices)) for _ in range(n_sites + 1)]
    bonds[0] = bonds[-1] = int(rng.choice([2, 3, 5, 8])) if periodic else 1
    d = int(rng.integers(1, 6))
    osite = None if rng.random() < 0.4 else int(rng.integers(0, n_sites))
    n_out = 1 if osite is None else int(rng.integers(1, 4))
    big = 10.0 if dtype == np.float32 else 1e3  # float32 kernels must stay in range
    cores = []
    for j in range(n_sites):
        shape = (d, bonds[j], bonds[j + 1]) if j != osite else (n_out, d, bonds[j], bonds[j + 1])
        cores.append(rng.standard_normal(shape) * big ** rng.uniform(-1, 1))
    site_lr = rng.uniform(0.5, 2.0, n_sites) * (rng.random(n_sites) > 0.15)
    host = mn.MPS([c.astype(dtype) for c in cores], "periodic" if periodic else "open",
                  scales=10 ** rng.uniform(-1, 1, n_sites), site_lr=site_lr, output_site=osite)

    def features(n):
        phi = rng.standard_normal((n, n_sites, d))
        mode = rng.integers(0, 3)  # as drawn, per-sample scales, per-(sample, site) scales
        if mode:
            phi *= big ** rng.uniform(-1, 1, (n, 1 if mode == 1 else n_sites, 1))
        return phi.astype(dtype)

    sizes = [int(rng.integers(1, 151)) if rng.random() < 0.8 else int(rng.choice([1, 64, 65, 129]))
             for _ in range(2)]
    return host, features(sizes[0]), features(sizes[1]), rng


def _f64(host):
    return host.with_cores([c.astype(np.float64) for c in host.cores])


def _assert_close(got, want, exact, tol, what):
    """got ~ want at tol; failing that (float32 cancellation), got no worse than want vs exact."""
    err = relerr(got, want)
    if err < tol:
        return
    assert exact is not None, f"{what}: relative error {err:.2e} >= {tol:.0e}"
    dev, host = relerr(got, exact), relerr(want, exact)
    assert dev <= max(tol, 2 * host), (
        f"{what}: relative error {err:.2e} >= {tol:.0e} vs the host; vs float64 the device is at "
        f"{dev:.2e}, the host at {host:.2e}"
    )


def _dense(res, full):
    """A normalized triple as the float64 kernel it stands for."""
    t, l1, l2 = (np.asarray(v.get() if hasattr(v, "get") else v, dtype=np.float64) for v in res)
    s = l1[:, None] + l2[None, :]
    return t * np.exp(s[..., None, None] if full else s)


def _check_ntk(host, dev, phi1, phi2, opts, what):
    p2 = None if opts.pop("sym") else phi2
    tf32, use_out = opts.pop("tf32"), opts.pop("use_out")
    full = opts["outputs"] == "full" and host.n_outputs > 1
    f32 = host.dtype == np.float32
    try:
        want = mn.ntk(host, phi1, p2, **opts)
    except FloatingPointError:  # out of the dtype's range: the device must refuse it too
        with pytest.raises(FloatingPointError):
            mn.ntk(dev, cp.asarray(phi1), None if p2 is None else cp.asarray(p2), **opts)
        return
    kw = dict(opts, precision="tf32") if tf32 else dict(opts)
    if use_out:
        shape = want[0].shape if opts["normalized"] else want.shape
        kw["out"] = cp.asarray(np.full(shape, np.nan, dtype=host.dtype))
    got = mn.ntk(dev, cp.asarray(phi1), None if p2 is None else cp.asarray(p2), **kw)
    first = got[0] if opts["normalized"] else got
    assert isinstance(first, cp.ndarray) and first.dtype == host.dtype, what
    if use_out:
        assert first is kw["out"], what
    exact = None
    if f32:
        e64 = mn.ntk(_f64(host), phi1.astype(np.float64),
                     None if p2 is None else p2.astype(np.float64), **opts)
        exact = _dense(e64, full) if opts["normalized"] else e64
    if opts["normalized"]:
        got, want = _dense(got, full), _dense(want, full)
    else:
        got = got.get()
    if tf32:
        assert relerr(got, exact) < TF32_RTOL, what
    else:
        _assert_close(got, want, exact, RTOL[host.dtype], what)


@pytest.mark.parametrize("seed", range(N_CASES))
def test_device_matches_host(seed):
    host, phi1, phi2, rng = _draw(seed)
    dev = host.to_device()
    dphi = cp.asarray(phi1)
    f32 = host.dtype == np.float32
    tol = RTOL[host.dtype]
    h64, p64 = _f64(host), phi1.astype(np.float64)
    desc = f"{host!r} bonds={host.bond_dims} n1={phi1.shape[0]} n2={phi2.shape[0]}"

    for _ in range(6):
        opts = dict(
            sym=bool(rng.random() < 0.4),
            outputs=str(rng.choice(["trace", "mean", "full"])),
            per_site=bool(rng.random() < 0.4),
            normalized=bool(rng.random() < 0.3),
            site_weights=None if rng.random() < 0.7 else rng.uniform(0.0, 2.0, host.n_sites),
            tf32=bool(f32 and rng.random() < 0.3),
            use_out=bool(rng.random() < 0.2),
        )
        _check_ntk(host, dev, phi1, phi2, dict(opts), f"ntk {opts} of {desc}")

    try:
        want = host(phi1)
    except FloatingPointError:
        with pytest.raises(FloatingPointError):
            dev(dphi)
    else:
        _assert_close(dev(dphi).get(), want, h64(p64) if f32 else None, tol, f"forward, {desc}")
    sign, logabs = (a.get() for a in dev.log_forward(dphi))
    want_sign, want_logabs = host.log_forward(phi1)
    top = np.max(want_logabs)  # compare sign * |f| / max |f|, safe at any scale
    if np.isfinite(top):
        exact = None
        if f32:
            exact_sign, exact_logabs = h64.log_forward(p64)
            exact = exact_sign * np.exp(exact_logabs - top)
        _assert_close(sign * np.exp(logabs - top), want_sign * np.exp(want_logabs - top), exact,
                      tol, f"log_forward, {desc}")

    shape = (phi1.shape[0],) if host.output_site is None else (phi1.shape[0], host.n_outputs)
    cot = rng.standard_normal(shape).astype(host.dtype)
    exact = mn.vjp(h64, p64, cot.astype(np.float64)) if f32 else [None] * host.n_sites
    for j, (g, w, e) in enumerate(zip(mn.vjp(dev, dphi, cp.asarray(cot)),
                                      mn.vjp(host, phi1, cot), exact)):
        _assert_close(g.get(), w, e, tol, f"vjp core {j}, {desc}")

    tangents = [rng.standard_normal(c.shape).astype(host.dtype) for c in host.cores]
    got = mn.jvp(dev, dphi, [cp.asarray(t) for t in tangents]).get()
    exact = mn.jvp(h64, p64, [t.astype(np.float64) for t in tangents]) if f32 else None
    _assert_close(got, mn.jvp(host, phi1, tangents), exact, tol, f"jvp, {desc}")

    v = rng.standard_normal(shape + ((2,) if rng.random() < 0.5 else ())).astype(host.dtype)
    sw = None if rng.random() < 0.6 else rng.uniform(0.0, 2.0, host.n_sites)
    got = mn.ntk_vp(dev, dphi, cp.asarray(v), site_weights=sw).get()
    exact = mn.ntk_vp(h64, p64, v.astype(np.float64), site_weights=sw) if f32 else None
    _assert_close(got, mn.ntk_vp(host, phi1, v, site_weights=sw), exact, tol, f"ntk_vp, {desc}")

    n1, n2 = min(phi1.shape[0], 12), min(phi2.shape[0], 12)
    if n1 * n2 * host.n_outputs**2 * host.n_params <= 2e6:  # the dense oracle, where cheap
        a, b = phi1[:n1], phi2[:n2]
        oracle = ref.ntk(h64, a.astype(np.float64), b.astype(np.float64), outputs="full")
        if not host.n_outputs > 1:
            oracle = oracle.reshape(n1, n2)
        try:
            got = mn.ntk(dev, cp.asarray(a), cp.asarray(b), outputs="full").get()
        except FloatingPointError:  # out of the dtype's range: so for the host
            with pytest.raises(FloatingPointError):
                mn.ntk(host, a, b, outputs="full")
        else:
            _assert_close(got, oracle.astype(host.dtype), oracle, tol, f"oracle ntk, {desc}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_overflow_is_refused_alike(dtype):
    """A kernel beyond the dtype's range raises on both engines; its normalized form agrees."""
    rng = np.random.default_rng(11)
    host = mn.MPS([rng.standard_normal((3, 4, 4)).astype(dtype) for _ in range(6)], "periodic")
    big = 1e8 if dtype == np.float32 else 1e60
    phi = big * rng.standard_normal((70, 6, 3)) * 10 ** rng.uniform(-1, 0, (70, 1, 1))
    phi = phi.astype(dtype)
    dev, dphi = host.to_device(), cp.asarray(phi)
    for call in (lambda m, p: mn.ntk(m, p), lambda m, p: mn.ntk(m, p, p[:9], outputs="full"),
                 lambda m, p: m(p)):
        with pytest.raises(FloatingPointError):
            call(host, phi)
        with pytest.raises(FloatingPointError):
            call(dev, dphi)
    want = mn.ntk(host, phi, normalized=True, per_site=True)
    got = mn.ntk(dev, dphi, normalized=True, per_site=True)
    assert relerr(got[0].get(), want[0]) < RTOL[np.dtype(dtype)]
    assert np.allclose(got[1].get(), want[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype, boundary, s, normalized", [
    (np.float32, "open", 1e4, True),
    (np.float64, "periodic", 1e30, False),
    (np.float32, "open", 1e12, False),  # the row weights' product underflowed float32
    (np.float64, "periodic", 1e100, False),  # ... and float64
    (np.float32, "open", 1e19, True),  # the Gram of unweighted features overflowed float32
    (np.float32, "open", 1e19, False),  # ... and exp(c_i + c_k) float32 (not the kernel)
])
def test_sites_of_very_unequal_magnitude(dtype, boundary, s, normalized):
    """Features 1/s and s at two sites: the kernel is O(1) (f does not depend on s)."""
    rng = np.random.default_rng(3)
    bonds = (1, 3, 2, 1) if boundary == "open" else (2, 3, 2, 2)
    cores = [rng.standard_normal((2, bonds[j], bonds[j + 1])).astype(dtype) for j in range(3)]
    host = mn.MPS(cores, boundary)
    phi = rng.standard_normal((5, 3, 2)) * np.array([1 / s, s, 1.0])[None, :, None]
    phi = phi.astype(dtype)

    def kernel(m, p):
        return _dense(mn.ntk(m, p, normalized=True), False) if normalized else mn.ntk(m, p)

    want = kernel(host, phi)
    tol = RTOL[np.dtype(dtype)]
    assert relerr(kernel(_f64(host), phi.astype(np.float64)), want) < tol
    got = kernel(host.to_device(), cp.asarray(phi))
    assert relerr(got if normalized else got.get(), want) < tol
