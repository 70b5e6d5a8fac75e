"""Prepared blocks of samples (mpsntk._blocks): every product against the dense kernel."""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _blocks

from conftest import random_features, random_model, relerr


@pytest.mark.parametrize("boundary", ["open", "periodic"])
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_kernel_products_match_the_dense_kernel(boundary, n_outputs):
    rng = np.random.default_rng(0)
    bonds = [1, 3, 4, 2, 1] if boundary == "open" else [3, 3, 4, 2, 3]
    mps = random_model(rng, bonds, boundary=boundary, output_site=1 if n_outputs > 1 else None,
                       n_outputs=n_outputs)
    x1, x2 = random_features(rng, 7, 4), random_features(rng, 5, 4)
    b1, b2 = _blocks.Batch(mps, x1), _blocks.Batch(mps, x2)
    full = mn.ntk(mps, x1, x2, outputs="full")
    v = rng.standard_normal((5,) if n_outputs == 1 else (5, n_outputs))
    want = full @ v if n_outputs == 1 else np.einsum("ikab,kb->ia", full, v)
    assert relerr(_blocks.kernel_vp(b1, b2, v), want) < 1e-12
    assert relerr(_blocks.kernel_block(b1, b2), mn.ntk(mps, x1, x2)) == 0.0
    assert relerr(_blocks.kernel_block(b1), mn.ntk(mps, x1)) == 0.0
    # Theta(X, X) v over two shards: the J^T v partials summed, then J per shard.
    x = np.concatenate([x1, x2])
    u = rng.standard_normal((12,) if n_outputs == 1 else (12, n_outputs))
    parts = [_blocks.transpose_vp(b1, u[:7]), _blocks.transpose_vp(b2, u[7:])]
    g = [a + b for a, b in zip(*parts)]
    sharded = np.concatenate([_blocks.jacobian_vp(b1, g), _blocks.jacobian_vp(b2, g)])
    assert relerr(sharded, mn.ntk_vp(mps, x, u)) < 1e-12


def test_batches_of_different_models_are_refused():
    rng = np.random.default_rng(1)
    m1, m2 = mn.MPS.random(4, 3, seed=1), mn.MPS.random(4, 3, seed=2)
    x = random_features(rng, 3, 4)
    with pytest.raises(ValueError, match="same MPS"):
        _blocks.kernel_vp(_blocks.Batch(m1, x), _blocks.Batch(m2, x), np.ones(3))
    with pytest.raises(TypeError, match="mps must be an mpsntk.MPS"):
        _blocks.Batch("model", x)


def _counting_prepare(monkeypatch, engine_class):
    """Record the features of every batch ``engine_class.prepare`` contracts."""
    calls = []
    prepare = engine_class.prepare

    def counted(self, mps, phi, **options):
        calls.append(phi)
        return prepare(self, mps, phi, **options)

    monkeypatch.setattr(engine_class, "prepare", counted)
    return calls


def _products_prepare_each_block_once(monkeypatch, mps, x1, x2, xp):
    from mpsntk._engine import DeviceEngine, HostEngine

    rng = np.random.default_rng(3)
    calls = _counting_prepare(monkeypatch, HostEngine if xp is np else DeviceEngine)
    b1, b2 = _blocks.Batch(mps, x1), _blocks.Batch(mps, x2)
    assert calls == []  # prepared at the first product, not before
    C = mps.n_outputs
    v1 = xp.asarray(rng.standard_normal((x1.shape[0], C) if C > 1 else x1.shape[0]))
    v2 = xp.asarray(rng.standard_normal((x2.shape[0], C) if C > 1 else x2.shape[0]))
    got = dict(
        tile=_blocks.kernel_block(b1, b2), sym=_blocks.kernel_block(b1, outputs="full"),
        tv=_blocks.kernel_vp(b1, b2, v2), tv_t=_blocks.kernel_vp(b2, b1, v1),
        g=_blocks.transpose_vp(b2, v2), jt=_blocks.jacobian_vp(b1, _blocks.transpose_vp(b1, v1)),
    )
    assert [c is b1.phi for c in calls] == [True, False]  # each block once, b1 first
    assert calls[1] is b2.phi
    # the public routines prepare at every call (the counter sees them), and agree
    n_before = len(calls)
    want = dict(tile=mn.ntk(mps, x1, x2), sym=mn.ntk(mps, x1, outputs="full"),
                jt=mn.ntk_vp(mps, x1, v1))
    assert len(calls) == n_before + 4
    full12 = mn.ntk(mps, x1, x2, outputs="full")
    host = getattr(xp, "asnumpy", np.asarray)
    full12, v1, v2 = host(full12), host(v1), host(v2)
    if C == 1:
        want["tv"], want["tv_t"] = full12 @ v2, full12.T @ v1
    else:
        want["tv"] = np.einsum("ikab,kb->ia", full12, v2)
        want["tv_t"] = np.einsum("ikab,ia->kb", full12, v1)
    grads = mn.vjp(mps, x2, xp.asarray(v2))
    for key in ("tile", "sym", "tv", "tv_t", "jt"):
        assert relerr(host(got[key]), host(want[key])) < 1e-12, key
    for g, w, r in zip(got["g"], grads, mps.site_lr):
        assert relerr(host(g), r * host(w)) < 1e-12


@pytest.mark.parametrize("boundary,n_outputs", [("open", 1), ("periodic", 3)])
def test_each_block_is_prepared_once_host(monkeypatch, boundary, n_outputs):
    rng = np.random.default_rng(4)
    bonds = [1, 3, 4, 2, 1] if boundary == "open" else [3, 3, 4, 2, 3]
    mps = random_model(rng, bonds, boundary=boundary, output_site=2 if n_outputs > 1 else None,
                       n_outputs=n_outputs)
    _products_prepare_each_block_once(monkeypatch, mps, random_features(rng, 9, 4),
                                      random_features(rng, 6, 4), np)


def test_each_block_is_prepared_once_device(monkeypatch):
    import sim_cupy

    if not (mn.cuda_available() or sim_cupy.available()):
        pytest.skip("no CUDA engine and no simulator")
    with sim_cupy.engine():
        cp = sim_cupy.device_tests()[1]
        rng = np.random.default_rng(5)
        host = random_model(rng, [1, 3, 4, 2, 1], output_site=1, n_outputs=2)
        x1, x2 = random_features(rng, 9, 4), random_features(rng, 6, 4)
        _products_prepare_each_block_once(monkeypatch, host.to_device(), cp.asarray(x1),
                                          cp.asarray(x2), cp)


def test_a_pickled_block_is_prepared_again():
    import pickle

    rng = np.random.default_rng(6)
    mps = random_model(rng, [1, 3, 4, 2, 1])
    x1, x2 = random_features(rng, 5, 4), random_features(rng, 4, 4)
    b1, b2 = _blocks.Batch(mps, x1), _blocks.Batch(mps, x2)
    want = _blocks.kernel_block(b1, b2)
    c1, c2 = pickle.loads(pickle.dumps((b1, b2)))
    assert c1.mps is c2.mps  # one model, as the products need
    assert relerr(_blocks.kernel_block(c1, c2), want) == 0.0


def test_block_arguments_are_checked_as_in_the_public_routines():
    rng = np.random.default_rng(7)
    mps = random_model(rng, [1, 3, 4, 2, 1])
    b = _blocks.Batch(mps, random_features(rng, 5, 4))
    with pytest.raises(TypeError, match="unexpected keyword"):
        _blocks.kernel_block(b, tiles=64)
    with pytest.raises(ValueError, match="outputs must be one of"):
        _blocks.kernel_block(b, outputs="diagonal")
    with pytest.raises(ValueError, match=r"cotangent must have shape \(5,\)"):
        _blocks.transpose_vp(b, np.ones(4))
    with pytest.raises(ValueError, match="one array per core"):
        _blocks.jacobian_vp(b, [np.ones(2)])
    with pytest.raises(TypeError, match="list of arrays"):
        _blocks.jacobian_vp(b, np.ones(3))


def test_a_block_that_does_not_keep_prepares_at_every_product(monkeypatch):
    """keep=False: the same numbers as a kept block, the environments contracted per product
    and never stored."""
    from mpsntk._engine import HostEngine

    rng = np.random.default_rng(7)
    mps = random_model(rng, [1, 3, 4, 2, 1])
    x1, x2 = random_features(rng, 6, 4), random_features(rng, 5, 4)
    v = rng.standard_normal(5)
    kept = _blocks.kernel_vp(_blocks.Batch(mps, x1), _blocks.Batch(mps, x2), v)
    calls = _counting_prepare(monkeypatch, HostEngine)
    b1, b2 = _blocks.Batch(mps, x1, keep=False), _blocks.Batch(mps, x2, keep=False)
    for _ in range(2):
        assert np.array_equal(_blocks.kernel_vp(b1, b2, v), kept)
    assert relerr(_blocks.kernel_block(b1, b2), mn.ntk(mps, x1, x2)) == 0.0
    assert len(calls) == 2 * 2 + 2 + 2  # both blocks per product, then mn.ntk's two batches
    assert b1._prepared is None and b2._prepared is None
    # a kept block (panels, NTK tiles) with one prepared for the product alone (rows)
    mixed = _blocks.Batch(mps, x1)
    assert relerr(_blocks.kernel_block(mixed, b2), mn.ntk(mps, x1, x2)) == 0.0
    assert relerr(_blocks.kernel_vp(mixed, b2, v), kept) < 1e-14
    u = rng.standard_normal(6)
    assert relerr(_blocks.kernel_vp(b2, mixed, u), _blocks.kernel_vp(b2, b1, u)) < 1e-14
    with pytest.raises(TypeError, match="keep must be a bool"):
        _blocks.Batch(mps, x1, keep=1)
