"""The structured NTK against the dense oracles of mpsntk._reference (J diag(r) J^T)."""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _reference as ref

import cases
from conftest import RTOL, random_features, random_model, relerr

MODELS = cases.ENGINE


def _model(rng, spec, dtype=np.float64):
    bonds, boundary, osite, nout = spec
    return random_model(
        rng, bonds, phys_dim=3, boundary=boundary, output_site=osite, n_outputs=nout, dtype=dtype
    )


@pytest.mark.parametrize("spec", MODELS, ids=MODELS.ids)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ntk_matches_dense_oracle(spec, dtype, isa):
    rng = np.random.default_rng(1)
    mps = _model(rng, spec, dtype)
    phi1 = random_features(rng, 37, mps.n_sites, 3, dtype)  # 37: not a multiple of any tile
    phi2 = random_features(rng, 11, mps.n_sites, 3, dtype)
    for outputs in ("trace", "mean", "full"):
        want_sym = ref.ntk(mps, phi1.astype(np.float64), outputs=outputs)
        want = ref.ntk(mps, phi1.astype(np.float64), phi2.astype(np.float64), outputs=outputs)
        for tile in (1, 16, 128):  # tiles smaller than, around, and larger than the data
            got_sym = mn.ntk(mps, phi1, outputs=outputs, tile=tile)
            got = mn.ntk(mps, phi1, phi2, outputs=outputs, tile=tile)
            assert got_sym.dtype == dtype and got.dtype == dtype
            assert relerr(got_sym, want_sym) < RTOL[np.dtype(dtype)]
            assert relerr(got, want) < RTOL[np.dtype(dtype)]


@pytest.mark.parametrize("spec", MODELS, ids=MODELS.ids)
def test_ntk_equals_jacobian_gram_and_finite_differences(spec):
    rng = np.random.default_rng(2)
    mps = _model(rng, spec)
    phi = random_features(rng, 6, mps.n_sites, 3)
    J = ref.finite_difference_jacobian(mps, phi, eps=1e-5)  # independent of every fast path
    J = J.reshape(6, mps.n_outputs, -1)
    r = np.concatenate([np.full(c.size, mps.site_lr[j]) for j, c in enumerate(mps.cores)])
    full = np.einsum("ilp,kmp,p->iklm", J, J, r)
    got = mn.ntk(mps, phi, outputs="full")
    want = full if mps.output_site is not None else full[:, :, 0, 0]
    assert relerr(got, want) < 1e-8


@pytest.mark.parametrize("spec", MODELS, ids=MODELS.ids)
def test_per_site_terms(spec):
    rng = np.random.default_rng(3)
    mps = _model(rng, spec)
    phi1 = random_features(rng, 9, mps.n_sites, 3)
    phi2 = random_features(rng, 5, mps.n_sites, 3)
    per = mn.ntk(mps, phi1, phi2, per_site=True)
    assert per.shape == (mps.n_sites, 9, 5)
    assert relerr(per, ref.ntk_per_site(mps, phi1, phi2)) < 1e-12
    assert relerr(per.sum(0), mn.ntk(mps, phi1, phi2)) < 1e-12
    full = mn.ntk(mps, phi1, per_site=True, outputs="full")
    assert relerr(full.sum(0), mn.ntk(mps, phi1, outputs="full")) < 1e-12
    # Re-weighting sites is free with the per-site terms.
    w = rng.uniform(0.1, 3.0, mps.n_sites)
    assert (
        relerr(
            mn.ntk(mps, phi1, phi2, site_weights=w),
            np.einsum("j,jik->ik", w / (mps.scales**2 * mps.site_lr), per),
        )
        < 1e-12
    )


def test_output_site_term_is_diagonal_in_outputs():
    rng = np.random.default_rng(4)
    mps = _model(rng, MODELS[2])
    phi = random_features(rng, 7, mps.n_sites, 3)
    per = mn.ntk(mps, phi, per_site=True, outputs="full")[mps.output_site]
    off = per.copy()
    for ell in range(mps.n_outputs):
        off[:, :, ell, ell] = 0
    assert np.max(np.abs(off)) == 0.0
    assert np.max(np.abs(per)) > 0.0


def test_default_tile_is_chosen_per_problem_and_equals_explicit_tiles():
    """tile=None (the default) picks 512..64 from the sizes and threads; the kernel is the same."""
    from mpsntk._engine import default_tile as _default_tile

    assert _default_tile(4096, 4096, True, 2) == 512  # 36 upper tiles for 2 threads
    assert _default_tile(1024, 1024, True, 2) == 256  # 512 would leave 3 tiles
    assert _default_tile(1024, 1024, True, 64) == 64  # never below 64
    assert _default_tile(300, 2000, False, 2) == 256  # 2 x 8 tiles
    rng = np.random.default_rng(12)
    mps = _model(rng, MODELS[2])
    phi = random_features(rng, 700, mps.n_sites, 3)
    want = mn.ntk(mps, phi, outputs="full", tile=48)
    assert relerr(mn.ntk(mps, phi, outputs="full"), want) < 1e-13


def test_out_argument_and_memmap(tmp_path):
    rng = np.random.default_rng(5)
    mps = _model(rng, MODELS[0])
    phi = random_features(rng, 20, mps.n_sites, 3)
    want = mn.ntk(mps, phi)
    out = np.full((20, 20), np.nan)
    got = mn.ntk(mps, phi, out=out)
    assert got is out and relerr(out, want) < 1e-15
    mm = np.lib.format.open_memmap(
        tmp_path / "theta.npy", mode="w+", dtype=np.float64, shape=(20, 20)
    )
    mn.ntk(mps, phi, out=mm, tile=8)
    mm.flush()
    assert relerr(np.load(tmp_path / "theta.npy"), want) < 1e-15


@pytest.mark.parametrize(
    "bonds, boundary, osite, nout, n",
    [
        ((1, 24, 24, 24, 24, 1), "open", 2, 3, 150),
        ((10, 20, 20, 20, 10), "periodic", None, 1, 300),
    ],
)
def test_batches_large_enough_for_parallel_sample_blocks(bonds, boundary, osite, nout, n):
    """Batches big enough that the environment sweep splits into sample blocks across threads
    (and NTK rows into several tiles): every routine still agrees with the oracles, and with a
    single thread to the last bits that the summation order allows."""
    rng = np.random.default_rng(11)
    mps = random_model(rng, bonds, phys_dim=3, boundary=boundary, output_site=osite, n_outputs=nout)
    phi = random_features(rng, n, mps.n_sites, 3)
    cot = rng.standard_normal((n, nout)) if nout > 1 else rng.standard_normal(n)
    want_f = ref.forward(mps, phi)
    want_k = ref.ntk(mps, phi, outputs="full")
    want_g = ref.vjp(mps, phi, cot)
    threads = mn.get_num_threads()
    results = {}
    try:
        for t in (1, 2):
            mn.set_num_threads(t)
            got_f = mps.forward(phi)
            got_k = mn.ntk(mps, phi, outputs="full", tile=64)
            got_g = mn.vjp(mps, phi, cot)
            assert relerr(got_f, want_f) < 1e-12
            assert relerr(got_k, want_k) < 1e-12
            for g, w in zip(got_g, want_g):
                assert relerr(g, w) < 1e-12
            results[t] = (got_f, got_k)
    finally:
        mn.set_num_threads(threads)
    # Each sample's environments are computed by one thread in one order: identical results.
    assert np.array_equal(results[1][0], results[2][0])
    assert np.array_equal(results[1][1], results[2][1])


def test_long_chain_normalized_form():
    """1000 sites: Theta = exp(c_i + c_k) Theta~ stays representable in float64."""
    rng = np.random.default_rng(6)
    n_sites = 1000
    mps = mn.MPS.random(n_sites, 4, sigma=2.0, seed=7)  # E f^2 = 4^1000: overflows
    phi = mn.features.trig(rng.uniform(size=(5, n_sites)))
    theta_t, c1, c2 = mn.ntk(mps, phi, normalized=True)
    assert np.all(np.isfinite(theta_t)) and np.all(np.isfinite(c1))
    assert np.array_equal(c1, c2)
    with pytest.raises(FloatingPointError, match="normalized=True"):
        mn.ntk(mps, phi)
    # Compare log Theta_ii with an independent log-space oracle: per-site terms from
    # renormalised dense prefix/suffix products.
    sign, logf = mps.log_forward(phi)
    for i in range(2):
        A = [
            mps.scales[j] * np.einsum("s,sab->ab", phi[i, j], mps.cores[j]) for j in range(n_sites)
        ]
        left, llog = [np.ones((1, 1))], [0.0]
        for j in range(n_sites - 1):
            v = left[-1] @ A[j]
            m = np.abs(v).max()
            left.append(v / m)
            llog.append(llog[-1] + np.log(m))
        right, rlog = [np.ones((1, 1))] * n_sites, [0.0] * n_sites
        for j in range(n_sites - 1, 0, -1):
            v = A[j] @ right[j]
            m = np.abs(v).max()
            right[j - 1], rlog[j - 1] = v / m, rlog[j] + np.log(m)
        terms = np.array([2 * (llog[j] + rlog[j]) for j in range(n_sites)])
        vals = np.array(
            [
                mps.scales[j] ** 2
                * (phi[i, j] @ phi[i, j])
                * (left[j] @ left[j].T).item()
                * (right[j].T @ right[j]).item()
                for j in range(n_sites)
            ]
        )
        top = terms.max()
        want = top + np.log(np.sum(vals * np.exp(terms - top)))
        got = 2 * c1[i] + np.log(theta_t[i, i])
        assert abs(got - want) < 1e-10 * abs(want)
        # f itself: the last left environment is f up to its log-scale.
        assert np.isfinite(logf[i])


@pytest.mark.parametrize("spec", MODELS, ids=MODELS.ids)
def test_ntk_vp_equals_ntk_times_v(spec):
    rng = np.random.default_rng(8)
    mps = _model(rng, spec)
    phi = random_features(rng, 13, mps.n_sites, 3)
    full = mn.ntk(mps, phi, outputs="full")
    if mps.output_site is None:
        for v in (rng.standard_normal(13), rng.standard_normal((13, 3))):
            assert relerr(mn.ntk_vp(mps, phi, v), full @ v) < 1e-12
    else:
        C = mps.n_outputs
        mat = full.transpose(0, 2, 1, 3).reshape(13 * C, 13 * C)
        for v in (rng.standard_normal((13, C)), rng.standard_normal((13, C, 2))):
            want = (mat @ v.reshape(13 * C, -1)).reshape(v.shape)
            assert relerr(mn.ntk_vp(mps, phi, v), want) < 1e-12


def test_float32_matches_float64_oracle():
    rng = np.random.default_rng(9)
    mps64 = mn.MPS.random(12, 16, seed=3)
    mps32 = mps64.with_cores([c.astype(np.float32) for c in mps64.cores])
    x = rng.uniform(size=(50, 12))
    want = mn.ntk(mps64, mn.features.trig(x))
    got = mn.ntk(mps32, mn.features.trig(x, dtype=np.float32))
    assert got.dtype == np.float32
    assert relerr(got, want) < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_underflowing_kernel_is_an_error_not_zeros(dtype):
    """A long chain with a small sigma has a kernel below the dtype's normal range: an error that
    points to normalized=True, whose form holds it, as for overflow."""
    n_sites = 2000
    x = np.random.default_rng(31).uniform(size=(4, n_sites))
    phi = mn.features.trig(x).astype(dtype)
    model = mn.MPS.random(n_sites, 3, sigma=0.9 if dtype == np.float32 else 0.5, seed=32,
                          dtype=dtype)
    for args in ((phi,), (phi, phi[:2])):
        with pytest.raises(FloatingPointError, match="underflows .*use normalized=True"):
            mn.ntk(model, *args)
    theta, c1, _ = mn.ntk(model, phi, normalized=True)
    assert np.all(np.diag(theta) > 0) and np.all(c1 < np.log(np.finfo(dtype).tiny) / 2)
    # an exactly zero kernel is not an underflow: zero features at a site zero every derivative
    phi0 = phi[:, :50].copy()
    phi0[:, 7] = 0
    np.testing.assert_array_equal(mn.ntk(mn.MPS.random(50, 3, seed=33, dtype=dtype), phi0), 0)


def test_scale_beyond_float32_with_kernel_within_it():
    """f = A_0 phi_0 A_1 phi_1 with phi = (1e-19, 1e19) and unit cores: Theta = 2, while the
    scale exp(c_i + c_k) that takes the normalised kernel back is far beyond float32."""
    host = mn.MPS([np.ones((1, 1, 1), np.float32)] * 2)
    phi = np.array([[[1e-19], [1e19]]], np.float32)
    theta, c1, c2 = mn.ntk(host, phi, normalized=True)
    assert np.exp(c1[0] + c2[0]) > np.finfo(np.float32).max
    np.testing.assert_allclose(mn.ntk(host, phi), [[2.0]], rtol=1e-6)
