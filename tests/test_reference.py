"""Tests for the slow reference oracles in mpsntk._reference.

Each oracle is checked against a computation that does not share its code path:
brute-force einsum over all bond indices, finite differences, unit-tensor
enumeration (multilinearity), the environment formulas of the theory and
Monte Carlo averages over random initialisations.
"""

import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsntk import _reference as ref
from mpsntk.features import trig
from mpsntk.infinite import nngp_infinite

import cases

# (boundary, bond_dims D_0..D_N, phys_dim, output_site, n_outputs)
CONFIGS = [(c.boundary, c.bonds, phys_dim, c.output_site, c.n_outputs)
           for c, phys_dim in ((cases.CASES[name], d) for name, d in cases.REFERENCE)]
CONFIG_IDS = [f"{b}-D{'x'.join(map(str, d))}-d{p}-out{c}x{n}" for b, d, p, c, n in CONFIGS]


def _model(config, seed=0, site_lr=None):
    boundary, dims, phys_dim, output_site, n_outputs = config
    n_sites = len(dims) - 1
    rng = np.random.default_rng(seed)
    mps = ref.random_model(
        n_sites,
        phys_dim,
        dims,
        boundary=boundary,
        output_site=output_site,
        n_outputs=n_outputs,
        sigma=rng.uniform(0.7, 1.3, size=n_sites),
        rng=rng,
    )
    if site_lr is not None:
        mps.site_lr = np.asarray(site_lr, dtype=float)
    return mps


def _features(config, n_samples, seed=1):
    _, dims, phys_dim, _, _ = config
    return np.random.default_rng(seed).normal(size=(n_samples, len(dims) - 1, phys_dim))


def _brute_force_forward(mps, phi):
    """Sum over every bond and physical index with a single einsum.

    Index labels: 0 = sample, 1 = output, 2 + j = physical index of site j,
    2 + n_sites + j = bond j (for periodic boundaries bond N is bond 0).
    """
    n_sites = len(mps.cores)
    operands = []
    for j, core in enumerate(mps.cores):
        left = 2 + n_sites + j
        right = 2 + n_sites + j + 1
        if mps.boundary == "periodic" and j == n_sites - 1:
            right = 2 + n_sites
        labels = [2 + j, left, right]
        if j == mps.output_site:
            labels = [1] + labels
        operands += [mps.scales[j] * core, labels, phi[:, j, :], [0, 2 + j]]
    out_labels = [0] if mps.output_site is None else [0, 1]
    return np.einsum(*operands, out_labels, optimize=False)


def _flat_offsets(mps):
    sizes = [core.size for core in mps.cores]
    return np.concatenate([[0], np.cumsum(sizes)])


def _as_3d(values, mps):
    """Reshape forward-like (n,) or jacobian-like (n, P) arrays to carry an output axis."""
    return values[:, None] if mps.output_site is None else values


def _copy_model(mps, cores):
    return types.SimpleNamespace(
        cores=cores,
        scales=mps.scales.copy(),
        site_lr=mps.site_lr.copy(),
        boundary=mps.boundary,
        output_site=mps.output_site,
    )


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_forward_matches_brute_force_einsum(config):
    mps = _model(config)
    phi = _features(config, 5)
    f = ref.forward(mps, phi)
    expected = _brute_force_forward(mps, phi)
    assert f.shape == expected.shape
    assert f.dtype == np.float64
    np.testing.assert_allclose(f, expected, rtol=1e-12, atol=1e-14)
    assert np.abs(expected).max() > 1e-3  # the comparison is not between zeros


def test_forward_hand_computed_open_and_periodic():
    # Two sites, phys_dim 1, phi = 1: f is a plain product of two matrices.
    a = np.array([[[1.0, 2.0]]])  # (1, 1, 2)
    b = np.array([[[3.0], [4.0]]])  # (1, 2, 1)
    mps = ref.make_model([a, b], scales=[2.0, 0.5])
    assert ref.forward(mps, np.ones((1, 2, 1))) == pytest.approx([1.0 * (1 * 3 + 2 * 4)])
    g = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    h = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    ring = ref.make_model([g, h], boundary="periodic")
    # Tr([[1, 2], [3, 4]] @ [[0, 1], [1, 0]]) = Tr([[2, 1], [4, 3]]) = 5, scaled by phi = 2 * 3.
    assert ref.forward(ring, np.array([[[2.0], [3.0]]])) == pytest.approx([30.0])


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_forward_is_gauge_invariant(config):
    mps = _model(config)
    phi = _features(config, 4)
    f = ref.forward(mps, phi)
    rng = np.random.default_rng(7)
    n_sites = len(mps.cores)
    n_bonds = n_sites if mps.boundary == "periodic" else n_sites - 1
    for bond in range(n_bonds):
        left, right = bond, (bond + 1) % n_sites
        dim = mps.cores[left].shape[-1]
        gauge = rng.normal(size=(dim, dim)) + 2.0 * np.eye(dim)
        cores = [core.copy() for core in mps.cores]
        cores[left] = cores[left] @ gauge
        cores[right] = np.linalg.solve(gauge, cores[right])
        transformed = _copy_model(mps, cores)
        assert not np.allclose(cores[left], mps.cores[left])
        np.testing.assert_allclose(ref.forward(transformed, phi), f, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# Jacobian
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_jacobian_matches_finite_differences(config):
    mps = _model(config)
    phi = _features(config, 3)
    jac = ref.jacobian(mps, phi)
    n_params = sum(core.size for core in mps.cores)
    expected_shape = (3, n_params) if mps.output_site is None else (3, config[4], n_params)
    assert jac.shape == expected_shape
    np.testing.assert_allclose(jac, ref.finite_difference_jacobian(mps, phi), rtol=1e-6, atol=1e-8)
    # f is linear in every core, so even a large step is exact up to rounding.
    np.testing.assert_allclose(
        jac, ref.finite_difference_jacobian(mps, phi, eps=0.5), rtol=1e-11, atol=1e-13
    )


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_jacobian_equals_unit_tensor_enumeration(config):
    """f is linear in W_j: df/dW_j[p] is f with core j replaced by the unit tensor e_p."""
    mps = _model(config)
    phi = _features(config, 3)
    jac = _as_3d(ref.jacobian(mps, phi), mps)
    f = _as_3d(ref.forward(mps, phi), mps)
    offsets = _flat_offsets(mps)
    for j, core in enumerate(mps.cores):
        block = jac[:, :, offsets[j] : offsets[j + 1]]
        for p in range(core.size):
            unit = np.zeros(core.size)
            unit[p] = 1.0
            cores = [c.copy() for c in mps.cores]
            cores[j] = unit.reshape(core.shape)
            value = _as_3d(ref.forward(_copy_model(mps, cores), phi), mps)
            np.testing.assert_allclose(block[:, :, p], value, rtol=1e-12, atol=1e-14)
        # Euler's identity for a function linear in W_j: f = sum_p W_j[p] df/dW_j[p].
        np.testing.assert_allclose(block @ core.ravel(), f, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_finite_difference_jacobian_does_not_mutate_the_model(config):
    mps = _model(config)
    cores_before = list(mps.cores)
    values_before = [core.copy() for core in mps.cores]
    scales_before = mps.scales.copy()
    ref.finite_difference_jacobian(mps, _features(config, 2), eps=0.25)
    for core, original, value in zip(mps.cores, cores_before, values_before):
        assert core is original
        np.testing.assert_array_equal(core, value)
    np.testing.assert_array_equal(mps.scales, scales_before)


def test_jacobian_includes_scales():
    config = CONFIGS[0]
    mps = _model(config)
    phi = _features(config, 3)
    jac = ref.jacobian(mps, phi)
    scaled = _copy_model(mps, [core.copy() for core in mps.cores])
    scaled.scales = mps.scales * 3.0
    # f scales by 3**n_sites; the derivative w.r.t. W_j by the same factor.
    np.testing.assert_allclose(ref.jacobian(scaled, phi), 3.0 ** len(mps.cores) * jac, rtol=1e-12)


# ---------------------------------------------------------------------------
# NTK
# ---------------------------------------------------------------------------


def _environment_ntk_per_site(mps, phi1, phi2):
    """Spec section 2: Theta_j = r_j c_j^2 k_j <E_j(x), E_j(x')>_F (scalar output).

    E_j = S_j P_j with prefix P_j = M_0..M_{j-1} and suffix S_j = M_{j+1}..M_{N-1};
    for open boundaries <E_j, E_j'> = (L_j . L_j')(R_j . R_j').
    """

    def environments(phi):
        mats = [
            mps.scales[j] * np.einsum("ns,sab->nab", phi[:, j], core)
            for j, core in enumerate(mps.cores)
        ]
        n = phi.shape[0]
        envs = []
        for j in range(len(mats)):
            prefix = np.broadcast_to(np.eye(mats[0].shape[1]), (n,) + (mats[0].shape[1],) * 2)
            for mat in mats[:j]:
                prefix = prefix @ mat
            suffix = np.broadcast_to(np.eye(mats[j].shape[2]), (n,) + (mats[j].shape[2],) * 2)
            for mat in mats[j + 1 :]:
                suffix = suffix @ mat
            envs.append(suffix @ prefix)
        return envs

    env1, env2 = environments(phi1), environments(phi2)
    out = []
    for j in range(len(mps.cores)):
        k_j = phi1[:, j] @ phi2[:, j].T
        gram = np.einsum("nba,mba->nm", env1[j], env2[j])
        out.append(mps.site_lr[j] * mps.scales[j] ** 2 * k_j * gram)
    return np.array(out)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[3] is None], ids=str)
def test_ntk_matches_environment_formula(config):
    n_sites = len(config[1]) - 1
    mps = _model(config, site_lr=np.linspace(0.5, 2.0, n_sites))
    phi1 = _features(config, 4, seed=2)
    phi2 = _features(config, 3, seed=3)
    expected = _environment_ntk_per_site(mps, phi1, phi2)
    np.testing.assert_allclose(ref.ntk_per_site(mps, phi1, phi2), expected, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(ref.ntk(mps, phi1, phi2), expected.sum(0), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_ntk_equals_weighted_jacobian_gram(config):
    n_sites = len(config[1]) - 1
    site_lr = np.linspace(0.3, 1.7, n_sites)
    mps = _model(config, site_lr=site_lr)
    phi1 = _features(config, 4, seed=2)
    phi2 = _features(config, 3, seed=3)
    jac1 = _as_3d(ref.jacobian(mps, phi1), mps)
    jac2 = _as_3d(ref.jacobian(mps, phi2), mps)
    offsets = _flat_offsets(mps)
    rates = np.repeat(site_lr, np.diff(offsets))
    n_outputs = jac1.shape[1]
    full = np.zeros((4, 3, n_outputs, n_outputs))
    for a in range(4):
        for b in range(3):
            full[a, b] = (jac1[a] * rates) @ jac2[b].T
    trace = np.einsum("abll->ab", full)
    if mps.output_site is None:
        for mode in ("trace", "mean", "full"):
            np.testing.assert_allclose(ref.ntk(mps, phi1, phi2, outputs=mode), full[:, :, 0, 0])
    else:
        np.testing.assert_allclose(ref.ntk(mps, phi1, phi2, outputs="full"), full, rtol=1e-12)
        np.testing.assert_allclose(ref.ntk(mps, phi1, phi2), trace, rtol=1e-12)
        np.testing.assert_allclose(
            ref.ntk(mps, phi1, phi2, outputs="mean"), trace / n_outputs, rtol=1e-12
        )
    per_site = ref.ntk_per_site(mps, phi1, phi2)
    assert per_site.shape == (n_sites, 4, 3)
    np.testing.assert_allclose(per_site.sum(0), trace, rtol=1e-12, atol=1e-14)
    for j in range(n_sites):
        block = slice(offsets[j], offsets[j + 1])
        expected = site_lr[j] * np.einsum("alp,blp->ab", jac1[:, :, block], jac2[:, :, block])
        np.testing.assert_allclose(per_site[j], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[3] is not None], ids=str)
def test_multi_output_label_site_is_diagonal_in_outputs(config):
    """Spec section 2: the label-site term is delta_{l l'} times a common kernel."""
    mps = _model(config)
    phi = _features(config, 3)
    jac = ref.jacobian(mps, phi)
    offsets = _flat_offsets(mps)
    c = mps.output_site
    block = jac[:, :, offsets[c] : offsets[c + 1]]
    label_term = np.einsum("alp,bmp->ablm", block, block)
    n_outputs = jac.shape[1]
    off_diagonal = label_term * (1 - np.eye(n_outputs))
    assert np.abs(off_diagonal).max() == 0.0
    diagonal = np.einsum("abll->lab", label_term)
    np.testing.assert_allclose(diagonal, np.broadcast_to(diagonal[0], diagonal.shape), rtol=1e-10)


@st.composite
def _random_setup(draw):
    boundary = draw(st.sampled_from(["open", "periodic"]))
    n_sites = draw(st.integers(2 if boundary == "periodic" else 1, 4))
    phys_dim = draw(st.integers(1, 3))
    inner = draw(st.lists(st.integers(1, 3), min_size=n_sites - 1, max_size=n_sites - 1))
    edge = 1 if boundary == "open" else draw(st.integers(1, 3))
    dims = (edge, *inner, edge)
    output_site = draw(st.one_of(st.none(), st.integers(0, n_sites - 1)))
    n_outputs = draw(st.integers(1, 3))
    n1 = draw(st.integers(1, 5))
    n2 = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    return (boundary, dims, phys_dim, output_site, n_outputs), n1, n2, seed


@settings(max_examples=30, deadline=None)
@given(_random_setup())
def test_ntk_is_symmetric_psd_and_transposes(setup):
    config, n1, n2, seed = setup
    n_sites = len(config[1]) - 1
    site_lr = np.random.default_rng(seed).uniform(0.1, 2.0, size=n_sites)
    mps = _model(config, seed=seed, site_lr=site_lr)
    phi1 = _features(config, n1, seed=seed + 1)
    phi2 = _features(config, n2, seed=seed + 2)
    theta = ref.ntk(mps, phi1)
    np.testing.assert_allclose(theta, theta.T, rtol=1e-12, atol=1e-14)
    eigenvalues = np.linalg.eigvalsh(theta)
    assert eigenvalues.min() >= -1e-10 * max(1.0, eigenvalues.max())
    np.testing.assert_allclose(ref.ntk(mps, phi2, phi1), ref.ntk(mps, phi1, phi2).T, rtol=1e-12)
    if mps.output_site is not None:
        full = ref.ntk(mps, phi1, outputs="full")
        n_out = full.shape[-1]
        flat = full.transpose(0, 2, 1, 3).reshape(n1 * n_out, n1 * n_out)
        np.testing.assert_allclose(flat, flat.T, rtol=1e-12, atol=1e-14)
        flat_eigenvalues = np.linalg.eigvalsh(flat)
        assert flat_eigenvalues.min() >= -1e-10 * max(1.0, flat_eigenvalues.max())
    # Per-site terms are individually PSD Gram matrices.
    for term in ref.ntk_per_site(mps, phi1):
        assert np.linalg.eigvalsh(term).min() >= -1e-10 * max(1.0, np.abs(term).max())


def test_ntk_scales_linearly_with_site_lr():
    config = CONFIGS[4]
    phi = _features(config, 4)
    base = ref.ntk_per_site(_model(config), phi)
    doubled = ref.ntk_per_site(_model(config, site_lr=[2.0, 0.0, 1.0, 3.0]), phi)
    np.testing.assert_allclose(doubled, base * np.array([2.0, 0.0, 1.0, 3.0])[:, None, None])


# ---------------------------------------------------------------------------
# VJP / JVP
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_vjp_and_jvp(config):
    mps = _model(config)
    phi = _features(config, 4)
    rng = np.random.default_rng(11)
    f = ref.forward(mps, phi)
    cotangent = rng.normal(size=f.shape)
    tangents = [rng.normal(size=core.shape) for core in mps.cores]
    jac = ref.jacobian(mps, phi)
    flat_tangent = np.concatenate([t.ravel() for t in tangents])

    grads = ref.vjp(mps, phi, cotangent)
    assert [g.shape for g in grads] == [core.shape for core in mps.cores]
    flat_grad = np.concatenate([g.ravel() for g in grads])
    expected_grad = np.einsum("ip,i->p", jac.reshape(-1, jac.shape[-1]), cotangent.ravel())
    np.testing.assert_allclose(flat_grad, expected_grad, rtol=1e-12, atol=1e-14)

    df = ref.jvp(mps, phi, tangents)
    assert df.shape == f.shape
    np.testing.assert_allclose(df, jac @ flat_tangent, rtol=1e-12, atol=1e-14)
    # Adjoint identity <J t, c> = <t, J^T c>.
    assert np.sum(df * cotangent) == pytest.approx(float(flat_grad @ flat_tangent), rel=1e-11)
    # Directional central difference of the forward pass.
    eps = 1e-5
    plus = _copy_model(mps, [c + eps * t for c, t in zip(mps.cores, tangents)])
    minus = _copy_model(mps, [c - eps * t for c, t in zip(mps.cores, tangents)])
    directional = (ref.forward(plus, phi) - ref.forward(minus, phi)) / (2 * eps)
    np.testing.assert_allclose(df, directional, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# NNGP and Monte Carlo checks of the infinite-width statements
# ---------------------------------------------------------------------------


def test_nngp_matches_closed_form_for_trig():
    rng = np.random.default_rng(5)
    x1, x2 = rng.uniform(size=(4, 3)), rng.uniform(size=(2, 3))
    sigma = np.array([0.8, 1.1, 1.3])
    kernel = ref.nngp(trig(x1), trig(x2), sigma=sigma)
    diff = x1[:, None, :] - x2[None, :, :]
    expected = np.prod(sigma**2 * np.cos(np.pi * diff / 2), axis=-1)
    np.testing.assert_allclose(kernel, expected, rtol=1e-13)
    np.testing.assert_allclose(kernel, nngp_infinite(trig(x1), trig(x2), sigma=sigma), rtol=1e-13)
    np.testing.assert_allclose(ref.nngp(trig(x1), sigma=1.5), 1.5**6 * ref.nngp(trig(x1)))


@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_nngp_and_ntk_equal_monte_carlo_averages(boundary):
    """Spec section 3: E f f' = K and E Theta = n_sites K, exactly at D = 2."""
    n_sites, bond_dim, n_draws = 3, 2, 3000
    sigma = np.array([0.9, 1.2, 1.0])
    x = np.array([[0.1, 0.5, 0.9], [0.2, 0.4, 0.8], [0.9, 0.1, 0.3]])
    phi = trig(x)
    rng = np.random.default_rng(12345)
    products = np.empty((n_draws, 3, 3))
    thetas = np.empty((n_draws // 3, 3, 3))
    for draw in range(n_draws):
        mps = ref.random_model(n_sites, 2, bond_dim, boundary=boundary, sigma=sigma, rng=rng)
        f = ref.forward(mps, phi)
        products[draw] = np.outer(f, f)
        if draw < thetas.shape[0]:
            thetas[draw] = ref.ntk(mps, phi)
    kernel = ref.nngp(phi, sigma=sigma)

    def z_scores(samples, target):
        mean = samples.mean(0)
        standard_error = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
        return np.abs(mean - target) / standard_error

    assert z_scores(products, kernel).max() < 5.0
    assert z_scores(thetas, n_sites * kernel).max() < 5.0
    # The test has power: a wrong normalisation of the kernel is rejected.
    assert z_scores(products, 1.3 * kernel).max() > 5.0


# ---------------------------------------------------------------------------
# Model helpers
# ---------------------------------------------------------------------------


def test_random_model_uses_ntk_parametrisation():
    sigma = np.array([0.5, 1.0, 2.0, 1.5])
    mps = ref.random_model(4, 2, (1, 2, 3, 4, 1), sigma=sigma, rng=0)
    dims = np.array([1, 2, 3, 4, 1])
    np.testing.assert_allclose(mps.scales, sigma * (dims[:-1] * dims[1:]) ** -0.25)
    np.testing.assert_array_equal(mps.site_lr, np.ones(4))
    assert [c.shape for c in mps.cores] == [(2, 1, 2), (2, 2, 3), (2, 3, 4), (2, 4, 1)]
    ring = ref.random_model(3, 2, 4, boundary="periodic", output_site=1, n_outputs=5, rng=1)
    assert [c.shape for c in ring.cores] == [(2, 4, 4), (5, 2, 4, 4), (2, 4, 4)]
    np.testing.assert_allclose(ring.scales, np.full(3, 4**-0.5))
    chain = ref.random_model(3, 2, 4, rng=1)
    assert [c.shape[1:] for c in chain.cores] == [(1, 4), (4, 4), (4, 1)]
    np.testing.assert_allclose(chain.scales, [4**-0.25, 4**-0.5, 4**-0.25])
    # Same seed, same model.
    again = ref.random_model(3, 2, 4, rng=1)
    for a, b in zip(chain.cores, again.cores):
        np.testing.assert_array_equal(a, b)


def test_make_model_defaults_and_copies():
    cores = [np.ones((2, 1, 2)), np.ones((2, 2, 1))]
    mps = ref.make_model(cores)
    np.testing.assert_array_equal(mps.scales, [1.0, 1.0])
    np.testing.assert_array_equal(mps.site_lr, [1.0, 1.0])
    assert mps.boundary == "open" and mps.output_site is None
    mps.cores[0][0, 0, 0] = 5.0
    assert cores[0][0, 0, 0] == 1.0


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def _valid_namespace():
    return types.SimpleNamespace(
        cores=[np.ones((2, 1, 2)), np.ones((2, 2, 3)), np.ones((2, 3, 1))],
        scales=np.ones(3),
        site_lr=np.ones(3),
        boundary="open",
        output_site=None,
    )


def _broken(**changes):
    mps = _valid_namespace()
    for key, value in changes.items():
        setattr(mps, key, value)
    return mps


BAD_MODELS = [
    (types.SimpleNamespace(cores=[np.ones((2, 1, 1))]), TypeError, "mps"),
    (_broken(cores=np.ones((3, 2, 1, 1))), TypeError, "mps.cores"),
    (_broken(cores=[]), ValueError, "mps.cores"),
    (_broken(boundary="closed"), ValueError, "mps.boundary"),
    (
        _broken(cores=[np.ones((2, 1, 2)), np.ones((2, 3, 1)), np.ones((2, 1, 1))]),
        ValueError,
        "mps.cores",
    ),
    (
        _broken(cores=[np.ones((2, 2, 2)), np.ones((2, 2, 3)), np.ones((2, 3, 1))]),
        ValueError,
        "D_0",
    ),
    (
        _broken(
            cores=[np.ones((2, 2, 2)), np.ones((2, 2, 3)), np.ones((2, 3, 3))],
            boundary="periodic",
        ),
        ValueError,
        "D_0",
    ),
    (_broken(cores=[np.ones((2, 2, 2))], boundary="periodic"), ValueError, "mps.cores"),
    (
        _broken(cores=[np.ones((2, 1, 2)), np.ones((3, 2, 3)), np.ones((2, 3, 1))]),
        ValueError,
        "phys_dim",
    ),
    (
        _broken(cores=[np.ones((1, 2, 1, 2)), np.ones((2, 2, 3)), np.ones((2, 3, 1))]),
        ValueError,
        "mps.cores[0]",
    ),
    (
        _broken(cores=[np.ones((2, 1, 2), dtype=int), np.ones((2, 2, 3)), np.ones((2, 3, 1))]),
        TypeError,
        "mps.cores[0]",
    ),
    (
        _broken(cores=[np.full((2, 1, 2), np.nan), np.ones((2, 2, 3)), np.ones((2, 3, 1))]),
        ValueError,
        "mps.cores[0]",
    ),
    (_broken(output_site=3), ValueError, "mps.output_site"),
    (_broken(output_site=1.0), TypeError, "mps.output_site"),
    (_broken(output_site=True), TypeError, "mps.output_site"),
    (_broken(output_site=1), ValueError, "mps.cores[1]"),
    (_broken(scales=np.ones(2)), ValueError, "mps.scales"),
    (_broken(scales=np.array([1.0, np.inf, 1.0])), ValueError, "mps.scales"),
    (_broken(site_lr=np.array(["a", "b", "c"])), TypeError, "mps.site_lr"),
    (_broken(site_lr=np.array([1.0, np.nan, 1.0])), ValueError, "mps.site_lr"),
]


@pytest.mark.parametrize(("mps", "exc", "name"), BAD_MODELS)
@pytest.mark.parametrize(
    "call",
    [
        lambda m, p: ref.forward(m, p),
        lambda m, p: ref.jacobian(m, p),
        lambda m, p: ref.ntk(m, p),
        lambda m, p: ref.ntk_per_site(m, p),
        lambda m, p: ref.finite_difference_jacobian(m, p),
    ],
    ids=["forward", "jacobian", "ntk", "ntk_per_site", "finite_difference_jacobian"],
)
def test_bad_models_are_rejected(mps, exc, name, call):
    with pytest.raises(exc) as info:
        call(mps, np.ones((2, 3, 2)))
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("phi", "exc", "name"),
    [
        (np.ones((2, 3)), ValueError, "phi"),
        (np.ones((2, 4, 2)), ValueError, "phi"),
        (np.ones((2, 3, 3)), ValueError, "phi"),
        (np.ones((2, 3, 2), dtype=int), TypeError, "phi"),
        (np.full((2, 3, 2), np.inf), ValueError, "phi"),
        (np.ones((0, 3, 2)), ValueError, "phi"),
    ],
)
def test_bad_features_are_rejected(phi, exc, name):
    with pytest.raises(exc, match=name):
        ref.forward(_valid_namespace(), phi)
    with pytest.raises(exc, match="phi1"):
        ref.ntk(_valid_namespace(), phi)
    with pytest.raises(exc, match="phi2"):
        ref.ntk(_valid_namespace(), np.ones((2, 3, 2)), phi)


def test_bad_keyword_arguments_are_rejected():
    mps, phi = _valid_namespace(), np.ones((2, 3, 2))
    with pytest.raises(ValueError, match="outputs"):
        ref.ntk(mps, phi, outputs="sum")
    with pytest.raises(ValueError, match="eps"):
        ref.finite_difference_jacobian(mps, phi, eps=0.0)
    with pytest.raises(TypeError, match="eps"):
        ref.finite_difference_jacobian(mps, phi, eps="small")
    with pytest.raises(ValueError, match="cotangent"):
        ref.vjp(mps, phi, np.ones(3))
    with pytest.raises(ValueError, match="cotangent"):
        ref.vjp(mps, phi, np.ones((2, 1)))
    with pytest.raises(TypeError, match="cotangent"):
        ref.vjp(mps, phi, np.array(["a", "b"]))
    with pytest.raises(ValueError, match="cotangent"):
        ref.vjp(mps, phi, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="tangents"):
        ref.jvp(mps, phi, [np.ones((2, 1, 2))])
    with pytest.raises(ValueError, match=r"tangents\[1\]"):
        ref.jvp(mps, phi, [np.ones((2, 1, 2)), np.ones((2, 3, 2)), np.ones((2, 3, 1))])
    with pytest.raises(TypeError, match="tangents"):
        ref.jvp(mps, phi, np.ones(16))
    with pytest.raises(ValueError, match="sigma"):
        ref.nngp(phi, sigma=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        ref.nngp(phi, sigma=np.ones(2))
    with pytest.raises(ValueError, match="bond_dims"):
        ref.random_model(3, 2, (1, 2, 1))
    with pytest.raises(ValueError, match="bond_dims"):
        ref.random_model(2, 2, (2, 2, 2), boundary="open")
    with pytest.raises(TypeError, match="rng"):
        ref.random_model(2, 2, 2, rng="seed")
    with pytest.raises(ValueError, match="boundary"):
        ref.random_model(2, 2, 2, boundary="ring")
