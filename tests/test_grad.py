"""vjp, jvp and the explicit Jacobian against the dense oracles, plus adjointness."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpsntk as mn
from mpsntk import _reference as ref

import cases
from conftest import random_features, random_model, relerr

SPECS = cases.GRAD


def _model(rng, spec, dtype=np.float64):
    bonds, boundary, osite, nout = spec
    return random_model(
        rng, bonds, boundary=boundary, output_site=osite, n_outputs=nout, dtype=dtype
    )


@pytest.mark.parametrize("spec", SPECS, ids=SPECS.ids)
def test_jacobian_matches_oracle_and_finite_differences(spec, isa):
    rng = np.random.default_rng(10)
    mps = _model(rng, spec)
    phi = random_features(rng, 7, mps.n_sites)
    J = mn.jacobian(mps, phi)
    assert relerr(J, ref.jacobian(mps, phi)) < 1e-13
    assert relerr(J, ref.finite_difference_jacobian(mps, phi, eps=1e-5)) < 1e-8


@pytest.mark.parametrize("spec", SPECS, ids=SPECS.ids)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vjp_jvp_match_oracle(spec, dtype, place):
    rng = np.random.default_rng(11)
    mps = _model(rng, spec, dtype)
    phi = random_features(rng, 21, mps.n_sites, dtype=dtype)
    shape = (21,) if mps.output_site is None else (21, mps.n_outputs)
    cot = rng.standard_normal(shape).astype(dtype)
    tangents = [rng.standard_normal(c.shape).astype(dtype) for c in mps.cores]
    tol = 1e-12 if dtype == np.float64 else 1e-5
    m64 = mps.with_cores([c.astype(np.float64) for c in mps.cores])
    model, x = place.model(mps), place.put(phi)
    got = place.get(mn.vjp(model, x, place.put(cot)))
    want = ref.vjp(m64, phi.astype(np.float64), cot.astype(np.float64))
    for g, w, c in zip(got, want, mps.cores):
        assert g.shape == c.shape and g.dtype == dtype
        assert relerr(g, w) < tol
    got = place.get(mn.jvp(model, x, [place.put(t) for t in tangents]))
    want = ref.jvp(m64, phi.astype(np.float64), [t.astype(np.float64) for t in tangents])
    assert got.shape == shape and got.dtype == dtype
    assert relerr(got, want) < tol


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spec=st.sampled_from(SPECS), n=st.integers(1, 12))
def test_vjp_jvp_adjoint(seed, spec, n):
    """<J t, c> = <t, J^T c> for random tangents t and cotangents c."""
    rng = np.random.default_rng(seed)
    mps = _model(rng, spec)
    phi = random_features(rng, n, mps.n_sites)
    shape = (n,) if mps.output_site is None else (n, mps.n_outputs)
    cot = rng.standard_normal(shape)
    tangents = [rng.standard_normal(c.shape) for c in mps.cores]
    lhs = np.sum(mn.jvp(mps, phi, tangents) * cot)
    rhs = sum(np.sum(t * g) for t, g in zip(tangents, mn.vjp(mps, phi, cot)))
    assert abs(lhs - rhs) <= 1e-11 * max(abs(lhs), 1.0) * 10


def test_vjp_is_the_gradient_of_a_loss(place):
    """vjp with dL/df gives the gradient of L = sum (f - y)^2 / 2 (checked by differences)."""
    rng = np.random.default_rng(12)
    mps = mn.MPS.random(5, 3, seed=1)
    phi = mn.features.trig(rng.uniform(size=(9, 5)))
    y = rng.standard_normal(9)
    model, x = place.model(mps), place.put(phi)
    grads = place.get(mn.vjp(model, x, model(x) - place.put(y)))
    j, idx, eps = 2, (1, 0, 2), 1e-6

    def loss(delta):
        cores = [c.copy() for c in mps.cores]
        cores[j][idx] += delta
        return 0.5 * np.sum((mps.with_cores(cores)(phi) - y) ** 2)

    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    assert abs(grads[j][idx] - fd) < 1e-7 * max(1.0, abs(fd))


def test_products_that_overflow_are_errors_not_infinities(place):
    """Outputs near e^850: Theta v, the vjp and the jvp overflow float64 (the inputs are
    finite), and say so instead of returning Inf or NaN, as forward and ntk do."""
    cores = [np.array([-0.27, -0.94]).reshape(2, 1, 1), np.array([0.45, 1.0]).reshape(2, 1, 1)]
    model = place.model(mn.MPS(cores))
    phi = 1e92 * np.array([[[11.3, 0.04], [-0.5, 11.1]], [[3.6, 3.7], [-1.7, 7.5]],
                           [[10.5, -4.6], [4.4, 3.6]]])
    v = place.put(np.array([-0.9, 0.15, -0.33]))
    with pytest.raises(FloatingPointError, match="Theta v overflows the range of float64"):
        mn.ntk_vp(model, place.put(phi), v)
    big = place.model(mn.MPS([c * 1e160 for c in cores]))
    with pytest.raises(FloatingPointError, match="the vjp overflows"):
        mn.vjp(big, place.put(phi[:, :, :] * 1e-92 * 1e150), v)
    with pytest.raises(FloatingPointError, match="the jvp overflows"):
        mn.jvp(model, place.put(phi), [place.put(c * 1e200) for c in cores])
    assert np.all(np.isfinite(place.get(mn.ntk_vp(model, place.put(phi * 1e-92), v))))


@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_products_of_row_and_panel_batches_agree(boundary):
    """A host batch prepared for the Jacobian products alone keeps its factors as rows; one
    prepared for NTK tiles stores them as packed panels.  Every product reads both layouts to
    the same result (the dense Jacobian is the oracle); only the panel batch enters an NTK."""
    from mpsntk._engine import HOST

    rng = np.random.default_rng(11)
    bonds = [1, 3, 4, 2, 1] if boundary == "open" else [3, 3, 4, 2, 3]
    mps = random_model(rng, bonds, boundary=boundary, output_site=1, n_outputs=2)
    phi = random_features(rng, 13, 4)
    rows, panels = HOST.prepare(mps, phi, tiles=False), HOST.prepare(mps, phi, tiles=True)
    J = ref.jacobian(mps, phi)  # (n, C, n_params)
    cot = rng.standard_normal((13, 2))
    tangents = [rng.standard_normal(c.shape) for c in mps.cores]
    t = np.concatenate([x.ravel() for x in tangents])
    want_g = np.einsum("xlp,xl->p", J, cot)
    for b in (rows, panels):
        assert relerr(HOST.jacobian(b), J) < 1e-12
        g = np.concatenate([x.ravel() for x in HOST.vjp(b, cot)[0]])
        assert relerr(g, want_g) < 1e-12
        assert relerr(HOST.jvp(b, tangents)[0], J @ t) < 1e-12
    HOST.ntk(panels, None, mps.site_lr, full=False, per_site=False, normalized=False)
    with pytest.raises(ValueError, match="panels=true"):
        HOST.ntk(rows, None, mps.site_lr, full=False, per_site=False, normalized=False)
