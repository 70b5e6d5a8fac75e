"""Values of the MPS model: forward / log_forward against independent references, the
statistics of MPS.random, gauge invariance, with_cores and copy (persistence: test_save_load.py).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpsntk as mn
from mpsntk import _reference as ref

from conftest import assert_same_model

# (boundary, bond dims D_0..D_N or uniform D, n_sites, phys_dim, n_outputs, output_site)
CONFIGS = [
    ("open", 3, 5, 2, 1, None),
    ("open", [1, 2, 4, 3, 1], 4, 2, 1, None),
    ("open", [1, 1], 1, 3, 1, None),  # one-site open chain: f = phi . A
    ("open", [1, 1], 1, 2, 4, 0),  # one site carrying 4 outputs
    ("open", [1, 2, 3, 2, 1], 4, 3, 3, 2),
    ("open", 4, 6, 2, 2, 0),
    ("open", 4, 6, 2, 5, 5),
    ("periodic", 3, 5, 2, 1, None),
    ("periodic", [2, 3, 1, 4, 2], 4, 2, 1, None),
    ("periodic", [3, 2, 3], 2, 3, 1, None),
    ("periodic", 2, 4, 2, 3, 1),
    ("periodic", [2, 4, 3, 2], 3, 2, 2, 0),
]
IDS = [f"{b}-D{d}-N{n}-d{p}-C{c}@{o}" for b, d, n, p, c, o in CONFIGS]


def make(config, seed=0, dtype=np.float64, **kwargs):
    boundary, bonds, n_sites, phys_dim, n_outputs, output_site = config
    return mn.MPS.random(n_sites, bonds, phys_dim=phys_dim, boundary=boundary,
                         n_outputs=n_outputs, output_site=output_site, seed=seed, dtype=dtype,
                         **kwargs)


def features(n_samples, n_sites, phys_dim, seed=1, dtype=np.float64):
    """Generic (not unit-norm, signed) features: poly of a random input, then a random mixing."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n_samples, n_sites))
    phi = mn.features.poly(x, degree=phys_dim - 1) if phys_dim > 1 else x[..., None]
    return phi.astype(dtype)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_forward_matches_reference_float64(config, parametrization):
    mps = make(config, seed=3, parametrization=parametrization,
               sigma=np.linspace(0.7, 1.4, config[2]))
    phi = features(7, mps.n_sites, mps.phys_dim)
    f = mps.forward(phi)
    expected = ref.forward(mps, phi)
    assert f.dtype == np.float64
    assert f.shape == ((7,) if mps.output_site is None else (7, mps.n_outputs))
    np.testing.assert_allclose(f, expected, rtol=1e-12, atol=1e-14 * np.abs(expected).max())
    np.testing.assert_array_equal(mps(phi), f)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_forward_matches_reference_float32(config):
    mps = make(config, seed=4, dtype=np.float32)
    assert mps.dtype == np.float32 and all(c.dtype == np.float32 for c in mps.cores)
    phi = features(6, mps.n_sites, mps.phys_dim, dtype=np.float32)
    f = mps.forward(phi)
    assert f.dtype == np.float32
    expected = ref.forward(mps, phi)  # float64 arithmetic on the same float32 numbers
    np.testing.assert_allclose(f, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_forward_with_hand_built_cores():
    # open chain, explicit numbers: f = phi_1^T A_1 ... with scales
    a1 = np.array([[[1.0, 2.0]], [[0.5, -1.0]]])  # (2, 1, 2)
    a2 = np.array([[[3.0], [1.0]], [[-2.0], [4.0]]])  # (2, 2, 1)
    mps = mn.MPS([a1, a2], scales=[2.0, 0.5])
    phi = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.3, 0.7], [0.9, -0.2]]])
    expected = []
    for x in phi:
        m1 = 2.0 * (x[0, 0] * a1[0] + x[0, 1] * a1[1])
        m2 = 0.5 * (x[1, 0] * a2[0] + x[1, 1] * a2[1])
        expected.append((m1 @ m2)[0, 0])
    np.testing.assert_allclose(mps.forward(phi), expected, rtol=1e-14)
    assert mps.forward(phi[:1])[0] == pytest.approx(2.0 * 0.5 * (1.0 * -2.0 + 2.0 * 4.0))
    # periodic: trace of the product
    p = mn.MPS([np.ones((1, 2, 2)), np.eye(2)[None] * 3.0], "periodic")
    assert p.forward(np.ones((1, 2, 1)))[0] == pytest.approx(np.trace(np.ones((2, 2)) * 3.0))


def test_forward_is_linear_in_each_core():
    mps = make(CONFIGS[1], seed=5)
    phi = features(4, mps.n_sites, mps.phys_dim)
    f = mps.forward(phi)
    for j in range(mps.n_sites):
        cores = [c.copy() for c in mps.cores]
        cores[j] *= -2.5
        np.testing.assert_allclose(mps.with_cores(cores).forward(phi), -2.5 * f, rtol=1e-12)
        scales = mps.scales.copy()
        scales[j] *= 3.0
        scaled = mn.MPS(mps.cores, scales=scales)
        np.testing.assert_allclose(scaled.forward(phi), 3.0 * f, rtol=1e-12)


# --------------------------------------------------------------------------- log_forward


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_log_forward_matches_forward(config):
    mps = make(config, seed=6)
    phi = features(9, mps.n_sites, mps.phys_dim, seed=2)
    f = mps.forward(phi)
    sign, logabs = mps.log_forward(phi)
    assert sign.shape == f.shape and logabs.shape == f.shape
    assert logabs.dtype == np.float64
    np.testing.assert_array_equal(sign, np.sign(f))
    np.testing.assert_allclose(logabs, np.log(np.abs(f)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sign * np.exp(logabs), f, rtol=1e-12)


def test_log_forward_float32_model():
    mps = make(CONFIGS[4], seed=7, dtype=np.float32)
    phi = features(5, mps.n_sites, mps.phys_dim, dtype=np.float32)
    expected = ref.forward(mps, phi)
    sign, logabs = mps.log_forward(phi)
    np.testing.assert_array_equal(sign, np.sign(expected))
    np.testing.assert_allclose(logabs, np.log(np.abs(expected)), atol=1e-5)


def test_log_forward_of_a_zero_output():
    # phi = (1, 0) picks slice 0, which is zero on site 1: f = 0 exactly
    a1 = np.array([[[0.0]], [[1.0]]])
    mps = mn.MPS([np.ones((2, 1, 1)), a1])
    phi = np.array([[[1.0, 1.0], [1.0, 0.0]], [[1.0, 1.0], [0.0, 2.0]]])
    sign, logabs = mps.log_forward(phi)
    assert sign[0] == 0 and logabs[0] == -np.inf
    assert sign[1] == 1 and logabs[1] == pytest.approx(np.log(4.0))
    np.testing.assert_allclose(mps.forward(phi), [0.0, 4.0], rtol=1e-14, atol=0)


def log_space_reference(mps, phi):
    """Independent evaluation with per-step renormalisation (scalar models, any boundary).

    Carries the running product P_j (D_0 x D_j, float64) divided by its max-abs entry and the
    accumulated log of the divisors; returns (sign, log|f|).
    """
    n, n_sites, _ = phi.shape
    D0 = mps.bond_dims[0]
    prod = np.broadcast_to(np.eye(D0), (n, D0, D0)).copy()
    log_norm = np.zeros(n)
    for j, core in enumerate(mps.cores):
        m = mps.scales[j] * np.einsum("ns,sab->nab", phi[:, j].astype(np.float64),
                                      core.astype(np.float64))
        prod = prod @ m
        scale = np.abs(prod).max(axis=(1, 2))
        prod /= scale[:, None, None]
        log_norm += np.log(scale)
    value = np.trace(prod, axis1=1, axis2=2)
    return np.sign(value), np.log(np.abs(value)) + log_norm


@pytest.mark.parametrize("boundary, bond_dim", [("open", 2), ("open", 5), ("periodic", 3)])
def test_log_forward_long_chain_sigma_one(boundary, bond_dim):
    n_sites = 1000
    mps = mn.MPS.random(n_sites, bond_dim, boundary=boundary, sigma=1.0, seed=11)
    x = np.random.default_rng(12).uniform(size=(16, n_sites))
    phi = mn.features.trig(x)
    sign, logabs = mps.log_forward(phi)
    ref_sign, ref_log = log_space_reference(mps, phi)
    assert np.all(np.isfinite(logabs))
    np.testing.assert_array_equal(sign, ref_sign)
    np.testing.assert_allclose(logabs, ref_log, rtol=1e-12, atol=1e-9)
    # at sigma = 1 and D >= 2 the outputs stay within float64: forward agrees
    f = mps.forward(phi)
    np.testing.assert_allclose(f, ref_sign * np.exp(ref_log), rtol=1e-9)


def test_log_forward_long_chain_beyond_float64():
    n_sites = 1000
    x = np.random.default_rng(13).uniform(size=(12, n_sites))
    phi = mn.features.trig(x)
    # sigma = 3: log|f| ~ 1000 log 3 - 300 > 709, the plain product overflows
    big = mn.MPS.random(n_sites, 2, sigma=3.0, seed=14)
    sign, logabs = big.log_forward(phi)
    ref_sign, ref_log = log_space_reference(big, phi)
    assert np.all(np.isfinite(logabs)) and np.all(logabs > np.log(np.finfo(np.float64).max))
    np.testing.assert_array_equal(sign, ref_sign)
    np.testing.assert_allclose(logabs, ref_log, rtol=1e-12, atol=1e-9)
    with pytest.raises(FloatingPointError, match=r"overflows .*float64.*log_forward"):
        big.forward(phi)
    # sigma = 0.5: log|f| ~ -1000 log 2 - 300 < -745, the plain product underflows to 0
    small = mn.MPS.random(n_sites, 2, sigma=0.5, seed=14)
    sign, logabs = small.log_forward(phi)
    ref_sign, ref_log = log_space_reference(small, phi)
    assert np.all(logabs < np.log(np.finfo(np.float64).smallest_subnormal))
    np.testing.assert_array_equal(sign, ref_sign)
    np.testing.assert_allclose(logabs, ref_log, rtol=1e-12, atol=1e-9)
    with pytest.raises(FloatingPointError, match=r"underflows .*float64.*log_forward"):
        small.forward(phi)  # zeros would silently lose every output
    # the same models differ only by the scales: log|f| shifts by n_sites * log(6)
    np.testing.assert_allclose(
        big.log_forward(phi)[1] - logabs, n_sites * np.log(6.0), rtol=1e-12
    )


def test_forward_overflow_raises():
    # every M_j = 1e40 * (phi_0 + phi_1) = 1e40 (|phi| = 1 at x = 0): f = 1e400
    n_sites = 10
    cores = [np.ones((2, 1, 1)) for _ in range(n_sites)]
    mps = mn.MPS(cores, scales=1e40)
    phi = mn.features.trig(np.zeros((3, n_sites)))
    with pytest.raises(FloatingPointError, match=r"overflows the range of float64"):
        mps.forward(phi)
    with pytest.raises(FloatingPointError):
        mps(phi)
    sign, logabs = mps.log_forward(phi)
    np.testing.assert_array_equal(sign, 1.0)
    np.testing.assert_allclose(logabs, n_sites * 40 * np.log(10.0), rtol=1e-13)
    # a negative overflow as well
    neg = mps.with_cores([-c if j == 0 else c for j, c in enumerate(mps.cores)])
    with pytest.raises(FloatingPointError):
        neg.forward(phi)
    np.testing.assert_array_equal(neg.log_forward(phi)[0], -1.0)


def test_forward_overflow_raises_float32():
    # 1e5^10 = 1e50 fits float64 but not float32 (max 3.4e38)
    n_sites = 10
    mps = mn.MPS([np.ones((2, 1, 1), np.float32) for _ in range(n_sites)], scales=1e5)
    phi = mn.features.trig(np.zeros((2, n_sites)), dtype=np.float32)
    with pytest.raises(FloatingPointError, match=r"float32"):
        mps.forward(phi)
    sign, logabs = mps.log_forward(phi)
    np.testing.assert_allclose(logabs, 50 * np.log(10.0), rtol=1e-6)
    # and a value that does fit float32 is returned
    ok = mn.MPS([np.ones((2, 1, 1), np.float32) for _ in range(n_sites)], scales=1e3)
    np.testing.assert_allclose(ok.forward(phi), 1e30, rtol=1e-5)


# --------------------------------------------------------------------------- MPS.random


@pytest.mark.parametrize("boundary, bonds", [
    ("open", 4), ("open", [1, 3, 5, 2, 1]), ("periodic", 3), ("periodic", [2, 3, 4, 5, 2]),
])
def test_random_scales_and_rates(boundary, bonds):
    sigma = np.array([0.5, 1.0, 1.5, 2.0])
    dims = np.array(mn.MPS.random(4, bonds, boundary=boundary, seed=0).bond_dims, dtype=float)
    if isinstance(bonds, int):
        end = 1 if boundary == "open" else bonds
        assert dims.tolist() == [end, bonds, bonds, bonds, end]
    else:
        assert dims.tolist() == bonds
    fan = dims[:-1] * dims[1:]

    ntp = mn.MPS.random(4, bonds, boundary=boundary, sigma=sigma, seed=1)
    assert ntp.parametrization == "ntk"
    np.testing.assert_allclose(ntp.scales, sigma * fan ** -0.25, rtol=1e-15)
    np.testing.assert_array_equal(ntp.site_lr, 1.0)

    sp = mn.MPS.random(4, bonds, boundary=boundary, sigma=sigma, seed=1,
                       parametrization="standard")
    assert sp.parametrization == "standard"
    np.testing.assert_array_equal(sp.scales, 1.0)
    np.testing.assert_allclose(sp.site_lr, fan ** -0.5, rtol=1e-15)
    # both draw the same A_j = c_j W_j from the same seed
    for j in range(4):
        np.testing.assert_allclose(sp.cores[j], ntp.scales[j] * ntp.cores[j], rtol=1e-14)
    phi = features(5, 4, 2)
    np.testing.assert_allclose(sp.forward(phi), ntp.forward(phi), rtol=1e-12)
    # NTP weights site j by lambda_j = c_j^2 = sigma_j^2 / sqrt(D D'), the standard rates by
    # 1 / sqrt(D D') = c_j^2 / sigma_j^2 (rho_j = sigma_j^-2, spec section 1)
    np.testing.assert_allclose(mn.ntk(sp, phi), mn.ntk(ntp, phi, site_weights=fan**-0.5),
                               rtol=1e-11)
    np.testing.assert_allclose(mn.ntk(sp, phi, site_weights=ntp.scales**2), mn.ntk(ntp, phi),
                               rtol=1e-11)


def test_random_attributes():
    mps = mn.MPS.random(6, 3, phys_dim=4, n_outputs=5, seed=0)
    assert mps.output_site == 3  # default n_sites // 2
    assert mps.cores[3].shape == (5, 4, 3, 3)
    assert mps.n_outputs == 5 and mps.phys_dim == 4 and mps.n_sites == 6
    assert mps.bond_dims == (1, 3, 3, 3, 3, 3, 1)
    assert mps.boundary == "open" and mps.dtype == np.float64
    assert mps.n_params == sum(c.size for c in mps.cores) == 12 + 3 * 36 + 5 * 36 + 12
    assert all(c.flags.c_contiguous for c in mps.cores)
    assert mps.scales.shape == mps.site_lr.shape == (6,)
    f32 = mn.MPS.random(3, 2, dtype=np.float32, seed=0)
    assert f32.dtype == np.float32 and all(c.dtype == np.float32 for c in f32.cores)
    assert f32.scales.dtype == np.float64
    # seeds: the same seed gives the same model, a Generator is consumed
    a, b = mn.MPS.random(4, 3, seed=5), mn.MPS.random(4, 3, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.cores, b.cores))
    gen = np.random.default_rng(5)
    c, d = mn.MPS.random(4, 3, seed=gen), mn.MPS.random(4, 3, seed=gen)
    assert not np.array_equal(c.cores[1], d.cores[1])


def test_random_core_distribution():
    # NTP: W ~ N(0, 1); standard: A ~ N(0, sigma^2 / sqrt(D_j D_{j+1})); 2*40*40 = 3200 draws
    ntp = mn.MPS.random(3, 40, sigma=1.7, seed=2)
    sp = mn.MPS.random(3, 40, sigma=1.7, seed=3, parametrization="standard")
    w, a = ntp.cores[1].ravel(), sp.cores[1].ravel()
    n = w.size
    assert abs(w.mean()) < 5 / np.sqrt(n)
    assert abs(w.var() - 1.0) < 5 * np.sqrt(2.0 / n)
    target = 1.7**2 / 40.0
    assert abs(a.var() / target - 1.0) < 5 * np.sqrt(2.0 / n)


@pytest.mark.parametrize("boundary, bonds, parametrization", [
    ("open", 2, "ntk"),
    ("open", [1, 3, 2, 1], "standard"),
    ("periodic", 2, "ntk"),
    ("periodic", [2, 1, 3, 2], "standard"),
])
def test_random_second_moment(boundary, bonds, parametrization):
    """E f(x)^2 = prod_j sigma_j^2 |phi(x_j)|^2 exactly at every D (spec section 1)."""
    n_sites, n_draws = 3, 4000
    sigma = np.array([0.8, 1.3, 1.1])
    rng = np.random.default_rng(31)
    phi = features(3, n_sites, 2, seed=32)
    expected = np.prod(sigma**2 * np.sum(phi**2, axis=2), axis=1)
    f2 = np.empty((n_draws, phi.shape[0]))
    for k in range(n_draws):
        mps = mn.MPS.random(n_sites, bonds, boundary=boundary, sigma=sigma, seed=rng,
                            parametrization=parametrization)
        f2[k] = mps.forward(phi) ** 2
    mean = f2.mean(axis=0)
    stderr = f2.std(axis=0, ddof=1) / np.sqrt(n_draws)
    z = (mean - expected) / stderr
    assert np.all(np.abs(z) < 4.0), (mean, expected, z)
    # and the estimate is not trivially loose
    assert np.all(stderr < 0.1 * expected)


def test_random_second_moment_multi_output():
    # each output is an independent draw of the same scalar law
    n_draws = 2000
    phi = features(2, 3, 2, seed=33)
    expected = np.prod(np.sum(phi**2, axis=2), axis=1)
    rng = np.random.default_rng(34)
    f2 = np.stack([mn.MPS.random(3, 2, n_outputs=3, seed=rng).forward(phi) ** 2
                   for _ in range(n_draws)])  # (draws, samples, outputs)
    mean = f2.mean(axis=0)
    stderr = f2.std(axis=0, ddof=1) / np.sqrt(n_draws)
    assert np.all(np.abs(mean - expected[:, None]) < 4.0 * stderr)


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
@pytest.mark.parametrize("bonds", [4, [1, 2, 5, 3, 3, 1]])
def test_near_identity_open(parametrization, bonds):
    n_sites = 5
    mps = mn.MPS.random(n_sites, bonds, init="near_identity", parametrization=parametrization,
                        sigma=2.0, seed=41)
    np.testing.assert_array_equal(mps.scales, 1.0)
    for core in mps.cores:
        eye = np.eye(core.shape[-2], core.shape[-1])
        np.testing.assert_allclose(core, np.broadcast_to(eye, core.shape), rtol=0, atol=1e-8)
        assert np.any(core != np.broadcast_to(eye, core.shape))  # the noise is there
    phi = mn.features.trig(np.random.default_rng(42).uniform(size=(6, n_sites)))
    # M_j = scales_j (sum_s phi_s) (identity + noise): the rectangular identities multiply to 1
    expected = np.prod(mps.scales * phi.sum(axis=2), axis=1)
    np.testing.assert_allclose(mps.forward(phi), expected, rtol=1e-6)


def test_near_identity_periodic_and_multi_output():
    n_sites, D = 6, 3
    phi = mn.features.trig(np.random.default_rng(43).uniform(size=(4, n_sites)))
    prod = np.prod(phi.sum(axis=2), axis=1)
    per = mn.MPS.random(n_sites, D, boundary="periodic", init="near_identity", seed=44)
    np.testing.assert_allclose(per.forward(phi), D * prod, rtol=1e-6)  # Tr(I_D) = D
    multi = mn.MPS.random(n_sites, D, n_outputs=3, init="near_identity", seed=45)
    np.testing.assert_allclose(multi.forward(phi), np.repeat(prod[:, None], 3, axis=1),
                               rtol=1e-6)


# --------------------------------------------------------------------------- gauge invariance


def well_conditioned(rng, n):
    """Q diag(s) with Q orthogonal and s in [0.5, 2]: condition number <= 4."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q *= np.sign(np.diag(r))
    return q * rng.uniform(0.5, 2.0, size=n)


def gauge(mps, bond, g):
    """Insert G G^{-1} on bond ``bond`` (between sites bond-1 and bond; 0 = the closing bond)."""
    g_inv = np.linalg.inv(g)
    cores = [c.astype(np.float64) for c in mps.cores]
    left, right = (bond - 1) % mps.n_sites, bond % mps.n_sites
    cores[left] = cores[left] @ g  # batched over (outputs,) phys, acting on the right index
    cores[right] = np.einsum("ab,...bc->...ac", g_inv, cores[right])
    return mps.with_cores([c.astype(mps.dtype) for c in cores])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_sites=st.integers(2, 7),
    bond_dim=st.integers(1, 5),
    periodic=st.booleans(),
    n_outputs=st.sampled_from([1, 1, 3]),
    data=st.data(),
)
def test_gauge_invariance(seed, n_sites, bond_dim, periodic, n_outputs, data):
    boundary = "periodic" if periodic else "open"
    output_site = data.draw(st.integers(0, n_sites - 1)) if n_outputs > 1 else None
    mps = mn.MPS.random(n_sites, bond_dim, boundary=boundary, n_outputs=n_outputs,
                        output_site=output_site, seed=seed)
    # open chains have D_0 = D_N = 1, so only the inner bonds can carry a gauge
    bond = data.draw(st.integers(0 if periodic else 1, n_sites - 1))
    rng = np.random.default_rng(seed)
    g = well_conditioned(rng, mps.bond_dims[bond])
    gauged = gauge(mps, bond, g)
    phi = features(5, n_sites, 2, seed=seed % 1000)
    f, fg = mps.forward(phi), gauged.forward(phi)
    scale = np.abs(ref.forward(mps, phi)).max() + 1e-300
    np.testing.assert_allclose(fg, f, rtol=1e-10, atol=1e-12 * scale)
    # the gauge changes the cores (unless the bond is one-dimensional and g = +-1 scaling)
    if mps.bond_dims[bond] > 1:
        assert not all(np.array_equal(a, b) for a, b in zip(mps.cores, gauged.cores))


# --------------------------------------------------------------------------- with_cores / copy


def test_with_cores_keeps_metadata():
    mps = mn.MPS.random(5, [2, 3, 1, 4, 2, 2], boundary="periodic", n_outputs=3, output_site=2,
                        sigma=0.7, seed=51, parametrization="standard")
    rng = np.random.default_rng(52)
    new_cores = [rng.standard_normal(c.shape) for c in mps.cores]
    new = mps.with_cores(new_cores)
    assert new is not mps
    assert (new.boundary, new.output_site, new.parametrization, new.dtype) == \
        (mps.boundary, mps.output_site, mps.parametrization, mps.dtype)
    assert (new.n_sites, new.phys_dim, new.n_outputs, new.bond_dims, new.n_params) == \
        (mps.n_sites, mps.phys_dim, mps.n_outputs, mps.bond_dims, mps.n_params)
    np.testing.assert_array_equal(new.scales, mps.scales)
    np.testing.assert_array_equal(new.site_lr, mps.site_lr)
    for a, b in zip(new.cores, new_cores):
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)  # copy=True by default
    phi = features(3, 5, 2)
    np.testing.assert_allclose(new.forward(phi), ref.forward(new, phi), rtol=1e-12)
    # copy=False uses C-contiguous arrays in place
    shared = mps.with_cores(new_cores, copy=False)
    assert all(a is b for a, b in zip(shared.cores, new_cores))
    # float32 cores give a float32 model with the same metadata
    f32 = mps.with_cores([c.astype(np.float32) for c in new_cores])
    assert f32.dtype == np.float32 and f32.parametrization == "standard"


def test_with_cores_rejects_shape_changes():
    mps = mn.MPS.random(4, 3, seed=53)
    grown = [np.ones((2, 1, 4)), np.ones((2, 4, 3)), np.ones((2, 3, 3)), np.ones((2, 3, 1))]
    with pytest.raises(ValueError, match=r"cores\[0\] must keep shape \(2, 1, 3\); got \(2, 1, 4"):
        mps.with_cores(grown)
    wider_phys = [np.ones((3,) + c.shape[1:]) for c in mps.cores]
    with pytest.raises(ValueError, match=r"cores\[0\] must keep shape"):
        mps.with_cores(wider_phys)
    multi = mn.MPS.random(4, 3, n_outputs=2, output_site=1, seed=54)
    more_outputs = [c if j != 1 else np.ones((3,) + c.shape[1:]) for j, c in
                    enumerate(multi.cores)]
    with pytest.raises(ValueError, match=r"cores\[1\] must keep shape \(2, 2, 3, 3\)"):
        multi.with_cores(more_outputs)


def test_copy_is_deep():
    mps = mn.MPS.random(4, 3, n_outputs=2, seed=55, sigma=[0.5, 1.0, 1.5, 2.0])
    phi = features(3, 4, 2)
    before = mps.forward(phi)
    scales, site_lr = mps.scales.copy(), mps.site_lr.copy()
    dup = mps.copy()
    assert_same_model(mps, dup)
    for a, b in zip(mps.cores, dup.cores):
        assert not np.shares_memory(a, b)
    assert not np.shares_memory(mps.scales, dup.scales)
    assert not np.shares_memory(mps.site_lr, dup.site_lr)
    dup.cores[0][...] = 0.0
    dup.scales[1] = 10.0
    dup.site_lr[2] = 0.0
    np.testing.assert_array_equal(mps.forward(phi), before)
    np.testing.assert_array_equal(mps.scales, scales)
    np.testing.assert_array_equal(mps.site_lr, site_lr)
    np.testing.assert_array_equal(dup.forward(phi), 0.0)


def test_constructor_copy_flag():
    rng = np.random.default_rng(56)
    cores = [rng.standard_normal((2, 1, 3)), rng.standard_normal((2, 3, 1))]
    copied = mn.MPS(cores)
    assert not any(np.shares_memory(a, b) for a, b in zip(copied.cores, cores))
    shared = mn.MPS(cores, copy=False)
    assert all(a is b for a, b in zip(shared.cores, cores))
    # a non-contiguous core is made contiguous even with copy=False
    strided = [np.asfortranarray(rng.standard_normal((2, 1, 3))), cores[1]]
    made = mn.MPS(strided, copy=False)
    assert made.cores[0].flags.c_contiguous
    np.testing.assert_array_equal(made.cores[0], strided[0])


def test_model_pickles_and_deep_copies():
    import copy
    import pickle

    model = mn.MPS.random(5, 3, phys_dim=2, boundary="periodic", n_outputs=2, output_site=1,
                         seed=21)
    phi = mn.features.trig(np.random.default_rng(22).uniform(size=(4, 5)))
    for back in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert back.xp is np and back.boundary == "periodic" and back.output_site == 1
        np.testing.assert_array_equal(back(phi), model(phi))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_environments_are_rescaled_within_range(dtype):
    """Features that are subnormal in the dtype at one site make environments below its normal
    range; they are rescaled by the largest finite power of two, not by an infinite one."""
    rng = np.random.default_rng(23)
    model64 = mn.MPS.random(4, 3, phys_dim=2, seed=24)
    model64 = model64.with_cores([c.astype(dtype).astype(np.float64) for c in model64.cores])
    model = model64.with_cores([c.astype(dtype) for c in model64.cores])
    phi = rng.uniform(0.5, 1.0, size=(6, 4, 2))
    phi[:, 1] *= 1e-39 if dtype == np.float32 else 1e-310
    phi = phi.astype(dtype)
    sign, logabs = model.log_forward(phi)
    want_sign, want = model64.log_forward(phi.astype(np.float64))
    np.testing.assert_array_equal(sign, want_sign)
    np.testing.assert_allclose(logabs, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
    theta, c1, _ = mn.ntk(model, phi, normalized=True)
    assert np.all(np.isfinite(theta)) and np.all(np.isfinite(c1))
