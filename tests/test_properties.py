"""Property tests of the NTK (hypothesis): symmetry, PSD, transpose law, tiles = whole,
gauge invariance of the kernel."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import mpsntk as mn

from conftest import random_features, random_model, relerr


@st.composite
def models(draw):
    boundary = draw(st.sampled_from(["open", "periodic"]))
    n_sites = draw(st.integers(2 if boundary == "periodic" else 1, 5))
    inner = [draw(st.integers(1, 5)) for _ in range(n_sites - 1)]
    end = 1 if boundary == "open" else draw(st.integers(1, 4))
    bonds = [end] + inner + [end]
    multi = draw(st.booleans())
    osite = draw(st.integers(0, n_sites - 1)) if multi else None
    nout = draw(st.integers(2, 3)) if multi else 1
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    return random_model(
        rng,
        bonds,
        phys_dim=draw(st.integers(1, 3)),
        boundary=boundary,
        output_site=osite,
        n_outputs=nout,
    ), rng


@settings(max_examples=60, deadline=None)
@given(mr=models(), n1=st.integers(1, 30), n2=st.integers(1, 30), tile=st.integers(1, 40))
def test_symmetry_psd_and_transpose(mr, n1, n2, tile):
    mps, rng = mr
    phi1 = random_features(rng, n1, mps.n_sites, mps.phys_dim)
    phi2 = random_features(rng, n2, mps.n_sites, mps.phys_dim)
    theta = mn.ntk(mps, phi1, tile=tile)
    assert np.array_equal(theta, theta.T)  # the mirror writes exact copies
    lam = np.linalg.eigvalsh(theta)
    assert lam.min() >= -1e-10 * max(lam.max(), 1e-300)
    t12 = mn.ntk(mps, phi1, phi2, tile=tile)
    t21 = mn.ntk(mps, phi2, phi1, tile=tile)
    assert relerr(t12, t21.T) < 1e-13
    # The symmetric path and the general path agree.
    assert relerr(mn.ntk(mps, phi1, phi1.copy(), tile=tile), theta) < 1e-13
    if mps.output_site is not None:
        full = mn.ntk(mps, phi1, outputs="full", tile=tile)
        n, C = phi1.shape[0], mps.n_outputs
        mat = full.transpose(0, 2, 1, 3).reshape(n * C, n * C)
        assert relerr(mat, mat.T) < 1e-14
        lam = np.linalg.eigvalsh(mat)
        assert lam.min() >= -1e-10 * max(lam.max(), 1e-300)


@settings(max_examples=40, deadline=None)
@given(mr=models(), n=st.integers(2, 40), cut=st.floats(0.1, 0.9), tile=st.integers(1, 50))
def test_tiles_assembled_equal_the_whole(mr, n, cut, tile):
    mps, rng = mr
    phi = random_features(rng, n, mps.n_sites, mps.phys_dim)
    whole = mn.ntk(mps, phi, tile=tile)
    k = max(1, int(cut * n))
    a, b = phi[:k], phi[k:]
    blocks = np.zeros_like(whole)
    blocks[:k, :k] = mn.ntk(mps, a, tile=tile)
    if k < n:
        blocks[:k, k:] = mn.ntk(mps, a, b, tile=tile)
        blocks[k:, :k] = mn.ntk(mps, b, a, tile=tile)
        blocks[k:, k:] = mn.ntk(mps, b, tile=tile)
    assert relerr(blocks, whole) < 1e-13


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), boundary=st.sampled_from(["open", "periodic"]))
def test_gauge_invariance(seed, boundary):
    """A_j -> A_j G, A_{j+1} -> G^{-1} A_{j+1} leaves f unchanged; with an orthogonal G it also
    leaves the NTK unchanged (the parameter metric is preserved)."""
    rng = np.random.default_rng(seed)
    bonds = [1, 3, 4, 2, 1] if boundary == "open" else [2, 3, 4, 2, 2]
    mps = random_model(rng, bonds, boundary=boundary)
    mps = mn.MPS(mps.cores, boundary)  # unit scales and rates: gauge acts on the parameters
    phi = random_features(rng, 8, mps.n_sites)
    j = int(rng.integers(0, mps.n_sites - 1))
    D = mps.bond_dims[j + 1]
    G = rng.standard_normal((D, D)) + 3 * np.eye(D)
    cores = [c.copy() for c in mps.cores]
    cores[j] = cores[j] @ G
    cores[j + 1] = np.einsum("ab,sbc->sac", np.linalg.inv(G), cores[j + 1])
    assert relerr(mps.with_cores(cores)(phi), mps(phi)) < 1e-11
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    cores = [c.copy() for c in mps.cores]
    cores[j] = cores[j] @ Q
    cores[j + 1] = np.einsum("ab,sbc->sac", Q.T, cores[j + 1])
    assert relerr(mn.ntk(mps.with_cores(cores), phi), mn.ntk(mps, phi)) < 1e-11
