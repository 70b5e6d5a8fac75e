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
