"""Born machines: doubled-MPS Z and its gradient against enumeration, exact sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _reference as ref
from mpsntk import born


def _brute(mps, scale):
    x = np.array(list(itertools.product(range(mps.phys_dim), repeat=mps.n_sites)))
    f = ref.forward(mps, mn.features.onehot(x, phys_dim=mps.phys_dim, scale=scale))
    return x, f


@pytest.mark.parametrize(
    "boundary,bonds",
    [("open", 3), ("periodic", 3), ("open", [1, 2, 5, 3, 2, 1]), ("periodic", [2, 3, 1, 4, 2, 2])],
)
@pytest.mark.parametrize("phys_dim", [2, 3])
def test_log_partition_equals_enumeration(boundary, bonds, phys_dim):
    mps = mn.MPS.random(5, bonds, phys_dim=phys_dim, boundary=boundary, seed=3)
    for scale in (1.0, 2**-0.5):
        _, f = _brute(mps, scale)
        assert abs(born.log_partition(mps, scale) - np.log(np.sum(f**2))) < 1e-12
    p = born.probabilities(mps, 2**-0.5)
    assert abs(p.sum() - 1) < 1e-12
    assert np.allclose(p, f**2 / np.sum(f**2), rtol=1e-11, atol=0)


@pytest.mark.parametrize(
    "boundary,bonds",
    [
        ("open", 3),
        ("periodic", 3),
        ("open", [1, 200, 150, 90, 1]),  # large enough for the threaded GEMMs
        ("periodic", [10, 12, 9, 11, 10]),  # 100 channels: the channel-parallel path
    ],
)
def test_log_partition_gradient(boundary, bonds):
    mps = mn.MPS.random(4, bonds, boundary=boundary, seed=4)
    logz, grads = born.log_partition_grad(mps, 0.7)
    # d log Z / dW = (2/Z) sum_x Psi(x) dPsi(x)/dW, with the dense oracle Jacobian.
    x, f = _brute(mps, 0.7)
    J = ref.jacobian(mps, mn.features.onehot(x, scale=0.7))
    want = 2 * (f @ J) / np.sum(f**2)
    got = np.concatenate([g.ravel() for g in grads])
    assert np.max(np.abs(got - want)) < 1e-12 * np.max(np.abs(want))
    assert abs(logz - np.log(np.sum(f**2))) < 1e-12


def test_long_chain_log_partition_is_finite():
    mps = mn.MPS.random(2000, 4, sigma=1.5, seed=0)  # Z ~ (2 * 2.25)^2000 overflows float64
    logz = born.log_partition(mps)
    assert np.isfinite(logz) and logz > 709
    # Exact in expectation: E Z = prod_j sigma^2 * sum_s |phi_s|^2 = (2.25 * 2)^2000; compare
    # log Z of a short chain with enumeration instead (the long one has no oracle).
    short = mn.MPS.random(6, 4, sigma=1.5, seed=0)
    _, f = _brute(short, 1.0)
    assert abs(born.log_partition(short) - np.log(np.sum(f**2))) < 1e-12


@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_nll_and_gradient(boundary):
    mps = mn.MPS.random(5, 3, boundary=boundary, seed=5)
    data = np.array([[0, 1, 0, 1, 1], [1, 1, 0, 0, 1], [0, 0, 0, 1, 0]])
    x, f = _brute(mps, 1.0)
    p = f**2 / np.sum(f**2)
    idx = data @ (2 ** np.arange(4, -1, -1))
    assert abs(born.nll(mps, data, reduction="sum") + np.sum(np.log(p[idx]))) < 1e-11
    loss, grads = born.nll_grad(mps, data, reduction="mean")
    assert abs(loss + np.mean(np.log(p[idx]))) < 1e-11
    j, k, eps = 2, (1, 2, 0), 1e-6

    def nll_at(delta):
        cores = [c.copy() for c in mps.cores]
        cores[j][k] += delta
        return born.nll(mps.with_cores(cores), data)

    fd = (nll_at(eps) - nll_at(-eps)) / (2 * eps)
    assert abs(grads[j][k] - fd) < 1e-7 * max(1.0, abs(fd))


@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_sampling_frequencies_match_p(boundary):
    """Chi-square goodness of fit of exact samples against p(x) on all 2^5 configurations."""
    mps = mn.MPS.random(5, 3, boundary=boundary, seed=6)
    p = born.probabilities(mps, 2**-0.5)
    n = 40000
    s = born.sample(mps, n, seed=1, feature_scale=2**-0.5)
    counts = np.bincount(s @ (2 ** np.arange(4, -1, -1)), minlength=32)
    expected = n * p
    keep = expected > 5
    chi2 = np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep])
    dof = keep.sum() - 1
    # chi2 with dof ~ 31: mean 31, sd ~ 7.9; 31 + 5 sd is a p < 1e-5 failure threshold.
    assert chi2 < dof + 5 * np.sqrt(2 * dof), chi2
    # and a wrong distribution is rejected by the same statistic
    q = np.roll(p, 1)
    chi2_wrong = np.sum((counts[keep] - n * q[keep]) ** 2 / np.maximum(n * q[keep], 1e-300))
    assert chi2_wrong > dof + 5 * np.sqrt(2 * dof)


def test_born_rejects_multi_output_and_bad_configs():
    with pytest.raises(ValueError, match="scalar-output"):
        born.log_partition(mn.MPS.random(4, 2, n_outputs=3, seed=0))
    mps = mn.MPS.random(4, 2, seed=0)
    with pytest.raises(ValueError, match="x must take values in"):
        born.nll(mps, np.array([[0, 1, 2, 0]]))
    with pytest.raises(ValueError, match="shape"):
        born.nll(mps, np.array([[0, 1, 1]]))
    with pytest.raises(ValueError, match="x must contain integers"):  # as in datasets
        born.nll(mps, np.array([[0.5, 1, 1, 0]]))
    with pytest.raises(TypeError, match="x must be an integer array"):
        born.nll(mps, np.array([["0", "1", "1", "0"]]))
    with pytest.raises(ValueError, match="feature_scale"):
        born.log_partition(mps, feature_scale=-1.0)


def _suffix_slots(mps, scale, j):
    """Right doubled slot j by enumeration: channel (a, a') holds sum_x M_x[:, a] M_x[:, a']^T,
    M_x = prod_{k >= j} scale * c_k * W_k[x_k] over the suffixes x (shape D_j x D_0)."""
    cores = [scale * c * w.astype(np.float64) for c, w in zip(mps.scales, mps.cores)]
    D0, Dj = mps.bond_dims[0], mps.bond_dims[j]
    slot = np.zeros((D0, D0, Dj, Dj))
    for x in itertools.product(range(mps.phys_dim), repeat=mps.n_sites - j):
        m = np.eye(Dj)
        for k, s in enumerate(x):
            m = m @ cores[j + k][s]
        slot += np.einsum("ia,jb->abij", m, m)
    return slot.reshape(D0 * D0, Dj, Dj)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "boundary,bonds",
    [
        ("periodic", [5, 3, 7, 2, 5]),  # D_0 != D_j: 15 stored channels of 25 (odd counts)
        ("periodic", [9, 20, 17, 20, 9]),  # 45 stored channels: channel-parallel steps
        ("open", [1, 37, 70, 23, 1]),  # one channel, dimensions off the SIMD width
    ],
)
def test_doubled_contractions_against_enumeration(boundary, bonds, dtype):
    """log Z, its gradient and the right slots of d = 3 chains against the sum over all 81
    configurations; every thread count gives the same bits (the work split depends on the
    sizes alone)."""
    mps = mn.MPS.random(4, bonds, phys_dim=3, boundary=boundary, seed=7, dtype=dtype)
    scale = 0.7
    x, f = _brute(mps, scale)
    J = ref.jacobian(mps, mn.features.onehot(x, phys_dim=3, scale=scale))
    want = 2 * (f @ J) / np.sum(f**2)
    before = mn.get_num_threads()
    runs = []
    try:
        for n_threads in (1, 2, 3):
            mn.set_num_threads(n_threads)
            logz, grads = born.log_partition_grad(mps, scale)
            slots, log_scale = born._engine("doubled_right_environments", mps)(
                mps.cores, mps.scales, mps.boundary, born._weights(mps, scale)
            )
            runs.append((logz, born.log_partition(mps, scale), grads, slots, log_scale))
    finally:
        mn.set_num_threads(before)
    logz, logz_only, grads, slots, log_scale = runs[0]
    assert abs(logz - np.log(np.sum(f**2))) < 1e-12 and logz_only == logz
    assert all(g.dtype == dtype for g in grads)
    got = np.concatenate([g.ravel() for g in grads]).astype(np.float64)
    # float32 gradients are rounded once, from float64 accumulations
    rtol = 1e-12 if dtype == np.float64 else 2e-7
    assert np.max(np.abs(got - want)) < rtol * np.max(np.abs(want))
    for j in range(mps.n_sites + 1):
        exact = _suffix_slots(mps, scale, j)
        err = np.max(np.abs(slots[j] * np.exp(log_scale[j]) - exact))
        assert err < 1e-12 * np.max(np.abs(exact))
    for other in runs[1:]:
        assert other[0] == logz and other[1] == logz_only
        assert all(np.array_equal(a, b) for a, b in zip(other[2], grads))
        assert all(np.array_equal(a, b) for a, b in zip(other[3], slots))
