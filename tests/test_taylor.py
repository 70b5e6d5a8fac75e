"""The exact Taylor (RKBS) expansion, the order-k kernels and the diagnostics built on them,
against independent oracles on tiny models:

* the dense expansion by explicit enumeration of site subsets (the chain contracted with the step
  on S and the cores elsewhere, by the dense forward of ``mpsntk._reference``);
* the polynomial eps -> f(W + eps Delta), sampled by the dense forward and interpolated exactly
  at n_sites + 1 Chebyshev points (P_k is its eps^k coefficient);
* the dense derivative tensors d_S f(x), built by contracting the chain with open indices on S,
  for the order kernels; ``mn.ntk`` for K_1; the NNGP kernel for E K_k (Monte Carlo, T9).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _reference as ref
from mpsntk import _taylor_xp
from mpsntk import diagnostics as dg

import cases
import sim_cupy
from conftest import RTOL, random_features, random_model, relerr

# (bond dimensions, boundary, output site, n_outputs); periodic chains of n_sites / 2 < D_0^2
# carry one channel per first site in the order kernels, the others D_0^2 boundary channels.
MODELS = cases.TAYLOR
IDS = MODELS.ids


def _model_and_step(spec, rng, dtype=np.float64, step_scale=1.0):
    bonds, boundary, osite, nout = spec
    mps = random_model(rng, bonds, phys_dim=2, boundary=boundary, output_site=osite,
                       n_outputs=nout, dtype=dtype)
    step = [(step_scale * rng.standard_normal(c.shape)).astype(dtype) for c in mps.cores]
    return mps, step


def _dense_terms(mps, step, phi):
    """P_k by enumeration of the subsets S of sites: the step on S, the cores elsewhere."""
    N = mps.n_sites
    out = np.zeros((N + 1,) + ref.forward(mps, phi).shape)
    for S in itertools.product((0, 1), repeat=N):
        cores = [np.asarray(step[j] if S[j] else mps.cores[j], np.float64) for j in range(N)]
        model = ref.make_model(cores, mps.scales, mps.site_lr, mps.boundary, mps.output_site)
        out[sum(S)] += ref.forward(model, phi)
    return out


def _polynomial_terms(mps, step, phi):
    """The coefficients of eps -> f(W + eps Delta), interpolated at n_sites + 1 points."""
    N = mps.n_sites
    eps = np.cos(np.pi * (np.arange(N + 1) + 0.5) / (N + 1))  # Chebyshev points in (-1, 1)
    values = []
    for e in eps:
        cores = [np.asarray(c, np.float64) + e * np.asarray(t, np.float64)
                 for c, t in zip(mps.cores, step)]
        model = ref.make_model(cores, mps.scales, mps.site_lr, mps.boundary, mps.output_site)
        values.append(ref.forward(model, phi))
    values = np.array(values).reshape(N + 1, -1)
    coef = np.linalg.solve(np.vander(eps, N + 1, increasing=True), values)
    return coef.reshape((N + 1,) + values.shape[1:]).reshape((N + 1,) + ref.forward(mps, phi).shape)


# ------------------------------------------------------------------------------- Taylor terms
@pytest.mark.parametrize("spec", MODELS, ids=IDS)
def test_terms_sum_to_the_stepped_model(spec, isa):
    rng = np.random.default_rng(1)
    mps, step = _model_and_step(spec, rng)
    phi = random_features(rng, 37, mps.n_sites)
    P = dg.taylor_terms(mps, phi, step)
    assert P.shape[0] == mps.n_sites + 1 and P.dtype == np.float64
    stepped = mps.with_cores([c + t for c, t in zip(mps.cores, step)])
    want = ref.forward(stepped, phi)
    assert relerr(P.sum(0), want) < 1e-12
    assert relerr(P[0], ref.forward(mps, phi)) < 1e-12
    assert relerr(P[1], ref.jvp(mps, phi, step)) < 1e-12
    # the MPS form of the step: its cores minus the model's
    assert relerr(dg.taylor_terms(mps, phi, stepped), P) < 1e-12


@pytest.mark.parametrize("spec", MODELS, ids=IDS)
def test_each_term_against_the_subset_expansion_and_interpolation(spec):
    rng = np.random.default_rng(2)
    mps, step = _model_and_step(spec, rng)
    phi = random_features(rng, 9, mps.n_sites)
    P = dg.taylor_terms(mps, phi, step)
    dense = _dense_terms(mps, step, phi)
    assert relerr(P, dense) < 1e-12
    for k in range(mps.n_sites + 1):  # every order on its own scale, not just the largest
        assert relerr(P[k], dense[k]) < 1e-12
    poly = _polynomial_terms(mps, step, phi)
    assert relerr(poly, dense) < 1e-10  # the interpolation itself is the less accurate oracle
    for K in range(mps.n_sites + 1):
        assert relerr(dg.taylor_terms(mps, phi, step, max_order=K), P[: K + 1]) < 1e-13
        # the remainder row: every order above K, summed exactly
        with_rest = dg.taylor_terms(mps, phi, step, max_order=K, remainder=True)
        assert with_rest.shape[0] == K + 2
        assert relerr(with_rest[: K + 1], dense[: K + 1]) < 1e-12
        rest = dense[K + 1 :].sum(0)
        assert np.max(np.abs(with_rest[-1] - rest)) <= 1e-12 * np.max(np.abs(dense[K + 1 :]),
                                                                       initial=0.0)


@pytest.mark.parametrize("spec", MODELS[:4], ids=IDS[:4])
def test_float32_terms(spec):
    rng = np.random.default_rng(3)
    mps64, step64 = _model_and_step(spec, rng)
    mps = mps64.with_cores([c.astype(np.float32) for c in mps64.cores])
    step = [t.astype(np.float32) for t in step64]
    phi = random_features(rng, 21, mps.n_sites, dtype=np.float32)
    P = dg.taylor_terms(mps, phi, step)
    assert P.dtype == np.float32
    dense = _dense_terms(mps, step, phi.astype(np.float64))
    # relative to the scale of all terms (a sum of terms may cancel below it)
    assert np.max(np.abs(P - dense)) < 2 * RTOL[np.dtype(np.float32)] * np.max(np.abs(dense))
    stepped = ref.forward(mps64.with_cores([c + t for c, t in zip(mps.cores, step)]),
                          phi.astype(np.float64))
    assert np.max(np.abs(P.sum(0) - stepped)) < 2e-5 * np.max(np.sum(np.abs(dense), axis=0))


def test_a_step_on_one_site_is_linear():
    """f is linear in each core: a step on one site has P_k = 0 exactly for k >= 2, nu = 0."""
    rng = np.random.default_rng(4)
    for spec in MODELS:
        mps, step = _model_and_step(spec, rng)
        j = mps.n_sites // 2
        step = [t if i == j else np.zeros_like(t) for i, t in enumerate(step)]
        phi = random_features(rng, 8, mps.n_sites)
        P = dg.taylor_terms(mps, phi, step)
        assert np.all(P[2:] == 0)
        moved = mps.with_cores([c + t for c, t in zip(mps.cores, step)])
        r = dg.nonlinear_fraction(mps, moved, phi)
        assert r.nu == 0.0 and r.nonlinear == 0.0
        assert r.change == pytest.approx(np.linalg.norm(ref.jvp(mps, phi, step)), rel=1e-12)


def test_long_chain_stays_in_range():
    """400 sites whose partial products leave the float64 range: the same model with every core
    of the first half multiplied by 2^8 and of the second by 2^-8 has the same terms (each
    subset's product is unchanged), which the log-scaled environments reproduce, while the dense
    forward of that chain overflows."""
    rng = np.random.default_rng(5)
    N, D = 400, 3
    mps = mn.MPS.random(N, D, seed=rng, sigma=1.0)
    step = [0.05 * rng.standard_normal(c.shape) for c in mps.cores]
    phi = mn.features.trig(rng.uniform(size=(6, N)))
    factor = [2.0**8 if j < N // 2 else 2.0**-8 for j in range(N)]
    big = mps.with_cores([f * c for f, c in zip(factor, mps.cores)])
    big_step = [f * t for f, t in zip(factor, step)]
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.all(np.isfinite(ref.forward(big, phi)))
    mant, lg = dg.taylor_terms(mps, phi, step, log_scale=True)
    mant_big, lg_big = dg.taylor_terms(big, phi, big_step, log_scale=True)
    # powers of two change only the log-scales
    assert np.array_equal(mant, mant_big)
    assert np.allclose(lg, lg_big, rtol=0, atol=1e-9)
    # the terms that are in range are the exact expansion of f along the step
    stepped = mps.with_cores([c + t for c, t in zip(mps.cores, step)])
    sign, logabs = stepped.log_forward(phi)
    ref_scale = np.max(np.where(mant != 0, lg, -np.inf), axis=0)
    total = np.sum(mant * np.exp(lg - ref_scale), axis=0)
    assert np.allclose(np.log(np.abs(total)) + ref_scale, logabs, rtol=0, atol=1e-9)
    assert np.array_equal(np.sign(total), sign)
    sign0, log0 = mps.log_forward(phi)
    assert np.allclose(np.log(np.abs(mant[0])) + lg[0], log0, rtol=0, atol=1e-9)
    # the nonlinear fraction of the rescaled model is that of the original
    r, r_big = (dg.nonlinear_fraction(a, b, phi) for a, b in
                ((mps, stepped), (big, big.with_cores([c + t for c, t in
                                                      zip(big.cores, big_step)]))))
    assert r_big.nu == pytest.approx(r.nu, rel=1e-9)


def test_terms_overflow_raises_but_log_scale_holds():
    rng = np.random.default_rng(6)
    mps = mn.MPS.random(40, 2, seed=rng, dtype=np.float32)
    big = mps.with_cores([8.0 * c for c in mps.cores])  # f ~ 8^40 = 2^120 times more
    step = [np.float32(4.0) * c for c in big.cores]
    phi = mn.features.trig(rng.uniform(size=(3, 40))).astype(np.float32)
    with pytest.raises(FloatingPointError, match="log_scale=True"):
        dg.taylor_terms(big, phi, step)
    mant, lg = dg.taylor_terms(big, phi, step, log_scale=True)
    assert np.all(np.isfinite(mant)) and np.all(np.isfinite(lg))


# ------------------------------------------------------------------------------- order kernels
def _derivative_tensor(mps, phi_x, S, out):
    """d_S f_out(x) in the trainable cores: the chain contracted with open indices
    (output, s, a, b) on the sites of S, as a flat vector."""
    D0 = mps.bond_dims[0]
    A = np.eye(D0)  # (boundary alpha, current bond)
    for j in range(mps.n_sites):
        core = np.asarray(mps.cores[j], np.float64)
        sl = core[out] if j == mps.output_site else core
        c = mps.scales[j]
        if j not in S:
            A = A @ (c * np.einsum("s,sab->ab", phi_x[j], sl))
            continue
        u = c * np.asarray(phi_x[j], np.float64)
        if j == mps.output_site:
            u = np.multiply.outer(np.eye(mps.n_outputs)[out], u)
        Dr = mps.bond_dims[j + 1]
        # new open index (u, a, b): A[..., alpha, a] u delta(b, b')
        T = np.multiply.outer(np.moveaxis(A, (-2, -1), (0, 1)),
                              np.multiply.outer(u.ravel(), np.eye(Dr)))
        n = T.ndim
        A = np.transpose(T, list(range(2, n - 3)) + [1, n - 3, n - 2, 0, n - 1])
    tail = A[..., 0, 0] if mps.boundary == "open" else np.trace(A, axis1=-2, axis2=-1)
    return tail.ravel()


def _dense_order_kernel(mps, phi1, phi2, k):
    out = np.zeros((len(phi1), len(phi2)))
    for S in itertools.combinations(range(mps.n_sites), k):
        rate = np.prod(mps.site_lr[list(S)])
        for o in range(mps.n_outputs):
            T1 = np.array([_derivative_tensor(mps, p, S, o) for p in phi1])
            T2 = np.array([_derivative_tensor(mps, p, S, o) for p in phi2])
            out += rate * T1 @ T2.T
    return out


@pytest.mark.parametrize("spec", MODELS, ids=IDS)
def test_order_kernels_against_dense_derivatives(spec):
    rng = np.random.default_rng(7)
    mps, _ = _model_and_step(spec, rng)
    phi1 = random_features(rng, 3, mps.n_sites)
    phi2 = random_features(rng, 4, mps.n_sites)
    orders = tuple(range(1, mps.n_sites + 1))
    K12 = dg.order_kernels(mps, phi1, phi2, orders=orders)
    K11 = dg.order_kernels(mps, phi1, orders=orders[::-1])[::-1]
    assert K12.shape == (len(orders), 3, 4)
    for i, k in enumerate(orders):
        assert relerr(K12[i], _dense_order_kernel(mps, phi1, phi2, k)) < 1e-12
        assert relerr(K11[i], _dense_order_kernel(mps, phi1, phi1, k)) < 1e-12
    assert np.array_equal(K11, np.swapaxes(K11, 1, 2))  # each pair once, mirrored
    assert relerr(K12[0], mn.ntk(mps, phi1, phi2)) < 1e-12
    assert relerr(K11[0], mn.ntk(mps, phi1)) < 1e-12


def test_order_kernels_with_boundary_channels_and_float32(isa):
    """A periodic chain with n_sites / 2 >= D_0^2 carries the (alpha, alpha') channels; float32
    runs the same recursion at its precision."""
    rng = np.random.default_rng(8)
    mps = random_model(rng, (2,) * 9, boundary="periodic")
    phi1, phi2 = random_features(rng, 2, 8), random_features(rng, 3, 8)
    got = dg.order_kernels(mps, phi1, phi2, orders=(1, 2, 3))
    for i, k in enumerate((1, 2, 3)):
        assert relerr(got[i], _dense_order_kernel(mps, phi1, phi2, k)) < 1e-12
    mps32 = mps.with_cores([c.astype(np.float32) for c in mps.cores])
    got32 = dg.order_kernels(mps32, phi1.astype(np.float32), phi2.astype(np.float32),
                             orders=(1, 2, 3))
    assert got32.dtype == np.float32
    assert relerr(got32, got) < 5 * RTOL[np.dtype(np.float32)]


def test_order_kernels_are_the_covariance_of_the_terms():
    """E[P_k(x; Delta) P_k(x'; Delta)] = K_k(x, x') for a step with independent entries of
    variance r_j (Monte Carlo over steps; the same z-bound as T1)."""
    rng = np.random.default_rng(9)
    mps = random_model(rng, (1, 2, 3, 2, 1))
    phi = random_features(rng, 3, 4)
    K = dg.order_kernels(mps, phi, orders=(2, 3))
    draws = 4000
    prods = np.empty((draws, 2, 3, 3))
    for t in range(draws):
        step = [np.sqrt(r) * rng.standard_normal(c.shape) for r, c in zip(mps.site_lr, mps.cores)]
        P = dg.taylor_terms(mps, phi, step, max_order=3)
        prods[t] = P[2:, :, None] * P[2:, None, :]
    iu = np.triu_indices(3)
    z = np.abs(prods.mean(0) - K)[:, iu[0], iu[1]] / (
        prods.std(0, ddof=1)[:, iu[0], iu[1]] / np.sqrt(draws))
    assert z.max() < 5.0, z


@pytest.mark.parametrize("boundary", ["open", "periodic"])
@pytest.mark.parametrize("D", [2, 4])
def test_T9_expected_order_kernels(boundary, D):
    """T9: E K_k = C(N, k) K in the NTK parametrisation (K the NNGP kernel), every k-subset
    contributing K exactly, at every bond dimension.  Over random draws the mean of each entry
    is compared with C(N, k) K by its standard error.  The bound is 5, not the spec's 4, for
    the reasons of T1 (heavy tails at small D; 18 correlated statistics); a kernel 25 % off is
    rejected by the same statistic."""
    n_sites, m, draws = 5, 3, 3000
    rng = np.random.default_rng(200 + D + (boundary == "periodic"))
    phi = mn.features.trig(rng.uniform(size=(m, n_sites)))
    K = mn.nngp_infinite(phi)
    orders = (1, 2, 3)
    samples = np.empty((draws, len(orders), m, m))
    for t in range(draws):
        mps = mn.MPS.random(n_sites, D, boundary=boundary, seed=rng)
        samples[t] = dg.order_kernels(mps, phi, orders=orders)
    iu = np.triu_indices(m)
    mean = samples.mean(0)[:, iu[0], iu[1]]
    se = samples.std(0, ddof=1)[:, iu[0], iu[1]] / np.sqrt(draws)
    want = np.array([math.comb(n_sites, k) * K[iu] for k in orders])
    z = np.abs(mean - want) / se
    assert z.max() < 5.0, z
    ratio = (mean / want)[1]  # E K_2 / (C(N, 2) K)
    assert np.all(np.abs(ratio - 1) < 5 * se[1] / want[1])
    assert (np.abs(mean - 1.25 * want) / se).max() > 5.0


# ------------------------------------------------------------------------------- diagnostics
def test_nonlinear_fraction_against_the_dense_expansion():
    rng = np.random.default_rng(10)
    for spec in MODELS:
        mps, step = _model_and_step(spec, rng, step_scale=0.3)
        moved = mps.with_cores([c + t for c, t in zip(mps.cores, step)])
        phi = random_features(rng, 11, mps.n_sites)
        dense = _dense_terms(mps, step, phi)
        change = ref.forward(moved, phi) - ref.forward(mps, phi)
        nonlinear = dense[2:].sum(0)
        norms = [np.linalg.norm(d) for d in dense]
        N = mps.n_sites
        for max_order in (1, 3, N):
            r = dg.nonlinear_fraction(mps, moved, phi, max_order=max_order)
            K = min(max_order, N)
            assert r.change == pytest.approx(np.linalg.norm(change), rel=1e-12)
            assert r.nonlinear == pytest.approx(np.linalg.norm(nonlinear), rel=1e-12)
            assert r.nu == pytest.approx(np.linalg.norm(nonlinear) / np.linalg.norm(change),
                                         rel=1e-12)
            assert np.allclose(r.term_norms, norms[: K + 1], rtol=1e-12, atol=0)
            assert r.remainder == pytest.approx(np.linalg.norm(dense[K + 1 :].sum(0)), rel=1e-12,
                                                abs=1e-300)
            assert r.term_norm(K) == r.term_norms[K]
            assert r.term_norm(N + 1) == 0.0
            if K < N:
                with pytest.raises(ValueError, match=f"pass max_order >= {K + 1}"):
                    r.term_norm(K + 1)
    same = dg.nonlinear_fraction(mps, mps, phi)
    assert same.nu == 0.0 and same.change == 0.0


def test_weak_correlations_against_dense_oracles():
    rng = np.random.default_rng(11)
    for spec in MODELS[:5]:
        mps, _ = _model_and_step(spec, rng)
        phi = random_features(rng, 7, mps.n_sites)
        probe = random_features(rng, 5, mps.n_sites)
        y = rng.standard_normal(ref.forward(mps, phi).shape)
        if mps.n_sites < 3:
            continue
        res = dg.weak_correlations(mps, phi, y, probe, orders=(2, 3))
        a = ref.forward(mps, phi) - y
        v = [r * g for r, g in zip(mps.site_lr, ref.vjp(mps, phi, a))]
        dense = _dense_terms(mps, v, probe)
        rms = {k: np.sqrt(np.mean(dense[k] ** 2)) for k in (1, 2, 3)}
        assert res.direction_norm == pytest.approx(
            np.sqrt(sum(np.sum(t**2) for t in v)), rel=1e-12)
        for k in (1, 2, 3):
            assert res.rms[k] == pytest.approx(rms[k], rel=1e-11)
        for k in (2, 3):
            assert res.ratios[k] == pytest.approx(rms[k] / rms[1], rel=1e-11)
        # Gamma_k scales as scale^k; the default probe is the training set
        half = dg.weak_correlations(mps, phi, y, probe, orders=(3, 2), scale=-0.5)
        assert half.ratios[2] == pytest.approx(0.5 * res.ratios[2], rel=1e-11)
        assert half.ratios[3] == pytest.approx(0.25 * res.ratios[3], rel=1e-11)
        own = dg.weak_correlations(mps, phi, y, orders=(2,))
        assert own.ratios[2] == pytest.approx(
            np.sqrt(np.mean(_dense_terms(mps, v, phi)[2] ** 2))
            / np.sqrt(np.mean(_dense_terms(mps, v, phi)[1] ** 2)), rel=1e-11)


def test_nonlinearity_monitor_in_training():
    rng = np.random.default_rng(12)
    mps = mn.MPS.random(6, 4, seed=rng)
    x = rng.uniform(size=(8, 6))
    phi, probe = mn.features.trig(x[:6]), mn.features.trig(x)
    y = np.sin(3 * x[:6, 0])
    monitor = dg.NonlinearityMonitor(mps, probe)
    state = set(vars(monitor))
    res = mn.train(mps, phi, y, learning_rate=0.5, n_steps=20, log_every=10, reduction="sum",
                   callbacks=monitor)
    assert set(vars(monitor)) == state  # nothing kept per step
    logged = res.callbacks
    assert [set(c) for c in logged] == [{"nonlinear_fraction", "taylor_norm_1", "taylor_norm_2",
                                         "taylor_norm_3"}] * 3
    assert logged[0] == {"nonlinear_fraction": 0.0, "taylor_norm_1": 0.0, "taylor_norm_2": 0.0,
                         "taylor_norm_3": 0.0}
    final = dg.nonlinear_fraction(mps, res.mps, probe)
    assert logged[-1]["nonlinear_fraction"] == pytest.approx(final.nu, rel=1e-13)
    assert logged[-1]["taylor_norm_2"] == pytest.approx(final.term_norm(2), rel=1e-13)
    # an intermediate step against the model that training stops at there (full-batch GD is
    # deterministic)
    middle = mn.train(mps, phi, y, learning_rate=0.5, n_steps=10, reduction="sum").mps
    assert logged[1]["nonlinear_fraction"] == pytest.approx(
        dg.nonlinear_fraction(mps, middle, probe).nu, rel=1e-13)
    assert logged[1]["nonlinear_fraction"] > 0
    # the monitor's own copy: training in place does not move its initial model
    assert np.array_equal(monitor.mps_0.cores[0], mps.cores[0])


# ------------------------------------------------------------------------------- devices
def test_device_model_stays_on_the_device():
    """A model on the device (here the CuPy stand-in over the simulator where no GPU is present)
    expands with the array module; the results equal the host engine's."""
    if not (mn.cuda_available() or sim_cupy.available()):  # pragma: no cover
        pytest.skip("no CUDA engine and no simulator")
    rng = np.random.default_rng(13)
    with sim_cupy.engine():
        import cupy as cp

        for spec in MODELS:
            mps, step = _model_and_step(spec, rng)
            phi = random_features(rng, 9, mps.n_sites)
            dev = mps.to_device()
            dstep = [cp.asarray(t) for t in step]
            dphi = cp.asarray(phi)
            for K in (None, 0, 1, mps.n_sites - 1):
                for rest in (False, True):
                    got = dg.taylor_terms(dev, dphi, dstep, max_order=K, remainder=rest)
                    assert isinstance(got, cp.ndarray)
                    want = dg.taylor_terms(mps, phi, step, max_order=K, remainder=rest)
                    assert got.shape == want.shape
                    assert relerr(got.get(), want) < 1e-12
            moved = mps.with_cores([c + t for c, t in zip(mps.cores, step)])
            r = dg.nonlinear_fraction(dev, moved.to_device(), dphi)
            assert r.nu == pytest.approx(dg.nonlinear_fraction(mps, moved, phi).nu, rel=1e-12)
            with pytest.raises(TypeError, match="host"):
                dg.taylor_terms(dev, phi, dstep)
            # the order kernels, by the same recursion over tiles of pairs
            orders = tuple(range(1, mps.n_sites + 1))
            dphi2 = cp.asarray(random_features(rng, 4, mps.n_sites))
            for other in (None, dphi2):
                got = dg.order_kernels(dev, dphi, other, orders=orders)
                assert isinstance(got, cp.ndarray) and got.dtype == mps.dtype
                want = dg.order_kernels(mps, phi, None if other is None else other.get(),
                                        orders=orders)
                assert relerr(got.get(), want) < 1e-12
                # tiles of 2 x 2 pairs (and the mirrored ones of the symmetric case)
                tiled = _taylor_xp.order_kernels(dev, dphi, other, orders, edge=2)
                assert relerr(tiled.get(), want) < 1e-12
        # the log-scales of a long chain on the device are the engine's
        mps = mn.MPS.random(300, 3, seed=rng)
        step = [0.1 * rng.standard_normal(c.shape) for c in mps.cores]
        phi = mn.features.trig(rng.uniform(size=(4, 300)))
        mant, lg = dg.taylor_terms(mps, phi, step, max_order=3, log_scale=True)
        dm, dl = dg.taylor_terms(mps.to_device(), cp.asarray(phi), [cp.asarray(t) for t in step],
                                 max_order=3, log_scale=True)
        assert np.allclose(dm.get() * np.exp(dl.get() - lg), mant, rtol=1e-10, atol=0)
        assert np.max(lg) < -40  # the terms themselves are far from 1: the scales matter


# ------------------------------------------------------------------------------- bad input
def test_bad_input():
    rng = np.random.default_rng(14)
    mps = random_model(rng, (1, 2, 3, 1))
    step = [np.zeros_like(c) for c in mps.cores]
    phi = random_features(rng, 4, 3)
    with pytest.raises(TypeError, match="mps must be an mpsntk.MPS"):
        dg.taylor_terms(mps.cores, phi, step)
    with pytest.raises(TypeError, match="delta must be a list"):
        dg.taylor_terms(mps, phi, np.zeros(3))
    with pytest.raises(ValueError, match=r"one array per core \(3\); got 2"):
        dg.taylor_terms(mps, phi, step[:2])
    with pytest.raises(ValueError, match=r"delta\[1\] must have the shape"):
        dg.taylor_terms(mps, phi, [step[0], step[1].T, step[2]])
    with pytest.raises(TypeError, match=r"delta\[0\] must have the model's dtype"):
        dg.taylor_terms(mps, phi, [step[0].astype(np.float32)] + step[1:])
    bad = [s.copy() for s in step]
    bad[2][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"delta\[2\] must be finite"):
        dg.taylor_terms(mps, phi, bad)
    with pytest.raises(ValueError, match="max_order must lie in 0..n_sites = 0..3; got 4"):
        dg.taylor_terms(mps, phi, step, max_order=4)
    with pytest.raises(ValueError, match="max_order must be an integer >= 0"):
        dg.taylor_terms(mps, phi, step, max_order=-1)
    with pytest.raises(TypeError, match="max_order must be an integer"):
        dg.taylor_terms(mps, phi, step, max_order=2.0)
    with pytest.raises(ValueError, match="n_sites"):
        dg.taylor_terms(mps, random_features(rng, 4, 4), step)
    with pytest.raises(TypeError, match="dtype"):
        dg.taylor_terms(mps, phi.astype(np.float32), step)
    with pytest.raises(TypeError, match="log_scale must be True or False"):
        dg.taylor_terms(mps, phi, step, log_scale=1)
    with pytest.raises(TypeError, match="remainder must be True or False"):
        dg.taylor_terms(mps, phi, step, remainder=None)
    with pytest.raises(ValueError, match="max_order must be an integer >= 1"):
        dg.nonlinear_fraction(mps, mps, phi, max_order=0)
    # mismatched models
    other = random_model(rng, (1, 3, 3, 1))
    with pytest.raises(ValueError, match="bond dimensions"):
        dg.taylor_terms(mps, phi, other)
    with pytest.raises(ValueError, match="boundary"):
        dg.nonlinear_fraction(mps, mn.MPS(mps.cores, "periodic", scales=mps.scales), phi)
    with pytest.raises(ValueError, match="scales"):
        dg.nonlinear_fraction(mps, mn.MPS(mps.cores, scales=2 * mps.scales), phi)
    with pytest.raises(ValueError, match="dtype"):
        dg.nonlinear_fraction(mps, mps.with_cores([c.astype(np.float32) for c in mps.cores]), phi)
    with pytest.raises(TypeError, match="mps_t must be an mpsntk.MPS"):
        dg.nonlinear_fraction(mps, step, phi)
    # order kernels
    for orders, err, msg in (
        ((0, 1), ValueError, r"orders must lie in 1..n_sites = 1..3; got 0"),
        ((4,), ValueError, "got 4"),
        ((), ValueError, "at least one"),
        ((1, 1), ValueError, "distinct"),
        ((1.0,), TypeError, "integers"),
        (2, TypeError, "sequence of integers"),
    ):
        with pytest.raises(err, match=msg):
            dg.order_kernels(mps, phi, orders=orders)
    with pytest.raises(ValueError, match="phi2"):
        dg.order_kernels(mps, phi, random_features(rng, 2, 4))
    nan_phi = phi.copy()
    nan_phi[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="phi1 must be finite"):
        dg.order_kernels(mps, nan_phi)
    # weak correlations
    y = rng.standard_normal(4)
    with pytest.raises(ValueError, match=r"y_train must have shape \(4,\)"):
        dg.weak_correlations(mps, phi, y[:3])
    with pytest.raises(TypeError, match="y_train must be a real array of the model's dtype"):
        dg.weak_correlations(mps, phi, y.astype(np.float32))
    with pytest.raises(ValueError, match="y_train must be finite"):
        dg.weak_correlations(mps, phi, np.full(4, np.nan))
    with pytest.raises(ValueError, match="probe has n_sites"):
        dg.weak_correlations(mps, phi, y, random_features(rng, 2, 5))
    with pytest.raises(ValueError, match="orders must lie in 1..n_sites"):
        dg.weak_correlations(mps, phi, y, orders=(2, 4))
    with pytest.raises(ValueError, match="scale must be a finite non-zero"):
        dg.weak_correlations(mps, phi, y, scale=0.0)
    with pytest.raises(TypeError, match="scale must be a finite non-zero"):
        dg.weak_correlations(mps, phi, y, scale="1")
    # the monitor
    with pytest.raises(ValueError, match="probe has n_sites"):
        dg.NonlinearityMonitor(mps, random_features(rng, 2, 5))
    with pytest.raises(TypeError, match="mps must be an mpsntk.MPS"):
        dg.NonlinearityMonitor(mps, phi)(0, step)
