"""Tests for mpsntk.dynamics: closed-form kernel-regime dynamics (theory section 4)."""

import numpy as np
import pytest

from mpsntk import datasets, dynamics
from mpsntk.features import onehot, trig
from mpsntk.infinite import nngp_infinite, ntk_infinite
from mpsntk.repro.experiments import born_kernel_check


@pytest.fixture
def rng():
    return np.random.default_rng(20240517)


def _singular_problem(rng, n_outputs=3):
    """A rank-deficient PSD kernel (a duplicated input) with train and test blocks."""
    feats = rng.normal(size=(7, 4))
    feats[6] = feats[1]  # duplicate input: Theta is singular (rank 4 < 7)
    test_feats = rng.normal(size=(3, 4))
    k = feats @ feats.T
    k_test = test_feats @ feats.T
    shape = (7, n_outputs) if n_outputs else (7,)
    y = rng.normal(size=shape)
    f0 = rng.normal(size=shape)
    f0_test = rng.normal(size=(3,) + shape[1:])
    return k, k_test, y, f0, f0_test


def _rk4(k, k_test, y, f0, f0_test, rate, t_final, n_steps):
    """Integrate df/dt = -rate Theta(x, X) (f(X) - Y) jointly on train and test inputs."""

    def deriv(state):
        f, _ = state
        resid = f - y
        return -rate * (k @ resid), -rate * (k_test @ resid)

    f, g = f0.copy(), f0_test.copy()
    dt = t_final / n_steps
    for _ in range(n_steps):
        a = deriv((f, g))
        b = deriv((f + 0.5 * dt * a[0], g + 0.5 * dt * a[1]))
        c = deriv((f + 0.5 * dt * b[0], g + 0.5 * dt * b[1]))
        d = deriv((f + dt * c[0], g + dt * c[1]))
        f = f + dt / 6 * (a[0] + 2 * b[0] + 2 * c[0] + d[0])
        g = g + dt / 6 * (a[1] + 2 * b[1] + 2 * c[1] + d[1])
    return f, g


# ---------------------------------------------------------------------------
# gradient_descent_mse
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["mean", "sum"])
@pytest.mark.parametrize("n_outputs", [0, 3])
def test_gradient_flow_matches_rk4_on_singular_kernel(rng, loss, n_outputs):
    k, k_test, y, f0, f0_test = _singular_problem(rng, n_outputs)
    assert np.linalg.matrix_rank(k) == 4
    eta = 0.7
    s = y.size if loss == "mean" else 1
    rate = eta / s
    lam_max = np.linalg.eigvalsh(k)[-1]
    t_final = 3.0 / (rate * lam_max) * 2  # several decay times of the top mode
    predict = dynamics.gradient_descent_mse(k, y, eta, loss=loss)
    train, test = predict(t_final, f0, f0_test, k_test)
    ref_train, ref_test = _rk4(k, k_test, y, f0, f0_test, rate, t_final, 2000)
    np.testing.assert_allclose(train, ref_train, rtol=0, atol=1e-10)
    np.testing.assert_allclose(test, ref_test, rtol=0, atol=1e-10)
    # The null-space component of the residual does not move.
    null = np.linalg.eigh(k)[1][:, :3]
    np.testing.assert_allclose(null.T @ (train - y), null.T @ (f0 - y), atol=1e-10)


def test_infinite_time_is_pseudo_inverse_solution(rng):
    k, k_test, y, f0, f0_test = _singular_problem(rng)
    predict = dynamics.gradient_descent_mse(k, y, 1.3, loss="sum")
    train, test = predict(np.inf, f0, f0_test, k_test)
    pinv = np.linalg.pinv(k)
    np.testing.assert_allclose(train, f0 - k @ pinv @ (f0 - y), atol=1e-10)
    np.testing.assert_allclose(test, f0_test - k_test @ pinv @ (f0 - y), atol=1e-10)
    # Large finite times approach the limit.
    np.testing.assert_allclose(predict(1e4, f0, f0_test, k_test)[1], test, atol=1e-9)


@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_discrete_matches_iterated_updates(rng, loss):
    k, k_test, y, f0, f0_test = _singular_problem(rng)
    s = y.size if loss == "mean" else 1
    lam_max = np.linalg.eigvalsh(k)[-1]
    eta = 1.9 * s / lam_max  # close to the stability edge: oscillating top mode
    predict = dynamics.gradient_descent_mse(k, y, eta, loss=loss, discrete=True)
    steps = np.arange(0, 41)
    train, test = predict(steps, f0, f0_test, k_test)
    assert train.shape == (41, 7, 3) and test.shape == (41, 3, 3)
    f, g = f0.copy(), f0_test.copy()
    for step in steps:
        np.testing.assert_allclose(train[step], f, rtol=0, atol=1e-12)
        np.testing.assert_allclose(test[step], g, rtol=0, atol=1e-12)
        resid = f - y
        f, g = f - eta / s * (k @ resid), g - eta / s * (k_test @ resid)


def test_discrete_small_rate_and_integer_float_steps(rng):
    k, k_test, y, f0, f0_test = _singular_problem(rng, n_outputs=0)
    eta = 1e-3
    predict = dynamics.gradient_descent_mse(k, y, eta, loss="sum", discrete=True)
    f, g = f0.copy(), f0_test.copy()
    for _ in range(250):
        resid = f - y
        f, g = f - eta * (k @ resid), g - eta * (k_test @ resid)
    train, test = predict(np.array([250.0]), f0, f0_test, k_test)
    np.testing.assert_allclose(train[0], f, atol=1e-12)
    np.testing.assert_allclose(test[0], g, atol=1e-12)


def test_array_times_shapes_and_consistency(rng):
    k, k_test, y, f0, f0_test = _singular_problem(rng, n_outputs=0)
    predict = dynamics.gradient_descent_mse(k, y, 0.4)
    times = np.array([0.0, 0.5, 2.0, 10.0])
    train, test = predict(times, f0, f0_test, k_test)
    assert train.shape == (4, 7) and test.shape == (4, 3)
    np.testing.assert_allclose(train[0], f0, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(test[0], f0_test)
    for i, t in enumerate(times):
        tr, te = predict(t, f0, f0_test, k_test)
        np.testing.assert_allclose(tr, train[i], rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(te, test[i], rtol=1e-14, atol=1e-14)
    only_train = predict(times, f0)
    np.testing.assert_array_equal(only_train, train)
    # Scalar initial outputs broadcast.
    np.testing.assert_allclose(
        predict(2.0, 0.0, 0.0, k_test)[1], predict(2.0, np.zeros(7), np.zeros(3), k_test)[1]
    )


def test_mean_loss_is_sum_loss_with_rescaled_rate(rng):
    k, k_test, y, f0, f0_test = _singular_problem(rng)
    eta = 2.0
    mean = dynamics.gradient_descent_mse(k, y, eta, loss="mean")
    summed = dynamics.gradient_descent_mse(k, y, eta / y.size, loss="sum")
    times = [0.3, 4.0, 50.0]
    for a, b in zip(mean(times, f0, f0_test, k_test), summed(times, f0, f0_test, k_test)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert dynamics.mse_loss(f0, y, loss="mean") == pytest.approx(
        dynamics.mse_loss(f0, y, loss="sum") / y.size, rel=1e-14
    )


def test_diag_reg_is_kernel_plus_ridge(rng):
    k, k_test, y, f0, f0_test = _singular_problem(rng)
    ridge = 0.25
    reg = dynamics.gradient_descent_mse(k, y, 0.5, diag_reg=ridge)
    plain = dynamics.gradient_descent_mse(k + ridge * np.eye(7), y, 0.5)
    for a, b in zip(reg([1.0, 7.0], f0, f0_test, k_test), plain([1.0, 7.0], f0, f0_test, k_test)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # t -> inf: kernel ridge regression of the residual; training targets are interpolated.
    train, test = reg(np.inf, f0, f0_test, k_test)
    np.testing.assert_allclose(train, y, atol=1e-11)
    ridge_solution = np.linalg.solve(k + ridge * np.eye(7), f0 - y)
    np.testing.assert_allclose(test, f0_test - k_test @ ridge_solution, atol=1e-11)


def test_rounding_level_negative_eigenvalues_are_zero_modes(rng):
    k, k_test, y, f0, f0_test = _singular_problem(rng, n_outputs=0)
    vals, vecs = np.linalg.eigh(k)
    vals[:3] = [-1e-13, 0.0, 1e-16]
    k_noisy = (vecs * vals) @ vecs.T
    k_noisy = 0.5 * (k_noisy + k_noisy.T)
    predict = dynamics.gradient_descent_mse(k_noisy, y, 0.5, loss="sum")
    train, test = predict(10.0, f0, f0_test, k_test)
    assert np.all(np.isfinite(train)) and np.all(np.isfinite(test))
    ref_train, ref_test = _rk4(k, k_test, y, f0, f0_test, 0.5, 10.0, 4000)
    np.testing.assert_allclose(train, ref_train, atol=1e-8)
    np.testing.assert_allclose(test, ref_test, atol=1e-8)


def test_mse_loss_curve_matches_predicted_outputs(rng):
    k, _, y, f0, _ = _singular_problem(rng)
    for discrete, times in ((False, [0.0, 0.1, 1.0, 5.0, np.inf]), (True, [0, 1, 5, 30])):
        predict = dynamics.gradient_descent_mse(k, y, 0.9, discrete=discrete)
        curve = dynamics.mse_loss_curve(k, y, f0, times, 0.9, discrete=discrete)
        np.testing.assert_allclose(
            curve, dynamics.mse_loss(predict(times, f0), y), rtol=1e-12, atol=1e-15
        )
    assert dynamics.mse_loss_curve(k, y, f0, 0.0, 0.9) == pytest.approx(
        np.sum((f0 - y) ** 2) / (2 * y.size), rel=1e-13
    )
    # The floor at t = inf is the squared null-space residual.
    null = np.linalg.eigh(k)[1][:, :3]
    floor = np.sum((null.T @ (f0 - y)) ** 2) / (2 * y.size)
    assert dynamics.mse_loss_curve(k, y, f0, np.inf, 0.9) == pytest.approx(floor, rel=1e-9)


def test_mean_mode_decays_at_top_eigenvalue():
    """Spec section 4.2: equidistant points, lam_max = N (1 + (m - 1) r), rate 27.0 (T4)."""
    n_sites = m = 6
    x = datasets.equidistant_points(n_sites, m, a=0.3, delta=0.4)
    theta = ntk_infinite(trig(x))
    r = np.cos(np.pi * 0.4 / 2) ** 2
    lam = np.linalg.eigvalsh(theta)
    np.testing.assert_allclose(lam[-1], n_sites * (1 + (m - 1) * r), rtol=1e-12)
    np.testing.assert_allclose(lam[-1], 25.635, atol=5e-4)
    np.testing.assert_allclose(lam[:-1], n_sites * (1 - r), rtol=1e-10)
    np.testing.assert_allclose(lam[0], 2.073, atol=5e-4)

    rng = np.random.default_rng(3)
    y, f0 = rng.normal(size=m), rng.normal(size=m)
    eta = 0.1 / lam[-1]
    steps = np.arange(61)
    train = dynamics.gradient_descent_mse(theta, y, eta, loss="sum", discrete=True)(steps, f0)
    mean_resid = (train - y).mean(axis=1)
    np.testing.assert_allclose(mean_resid, mean_resid[0] * 0.9**steps, rtol=1e-11)
    rate = -np.log(1 - eta * lam[-1]) / eta
    assert rate == pytest.approx(27.0, abs=0.05)
    flow = dynamics.gradient_descent_mse(theta, y, eta, loss="sum")(steps.astype(float), f0)
    np.testing.assert_allclose(
        (flow - y).mean(axis=1), mean_resid[0] * np.exp(-eta * lam[-1] * steps), rtol=1e-11
    )


# ---------------------------------------------------------------------------
# ensemble_mean_cov
# ---------------------------------------------------------------------------


def _gp_problem(rng, n_outputs=2):
    x_train = rng.uniform(size=(5, 3))
    x_test = rng.uniform(size=(4, 3))
    phi_tr, phi_te = trig(x_train), trig(x_test)
    sigma = 1.1
    k = nngp_infinite(phi_tr, sigma=sigma)
    k_tx = nngp_infinite(phi_te, phi_tr, sigma=sigma)
    k_tt = nngp_infinite(phi_te, sigma=sigma)
    theta = ntk_infinite(phi_tr, sigma=sigma)
    theta_tx = ntk_infinite(phi_te, phi_tr, sigma=sigma)
    y = rng.normal(size=(5, n_outputs))
    return theta, theta_tx, k, k_tx, k_tt, y


def test_ensemble_at_time_zero_is_prior(rng):
    theta, theta_tx, k, k_tx, k_tt, y = _gp_problem(rng)
    mean, cov = dynamics.ensemble_mean_cov(theta, theta_tx, k, k_tx, k_tt, y, 0.0)
    np.testing.assert_array_equal(mean, np.zeros((4, 2)))
    np.testing.assert_allclose(cov, k_tt, rtol=0, atol=1e-15)


def test_ensemble_at_infinite_time_is_gp_posterior(rng):
    theta, theta_tx, k, k_tx, k_tt, y = _gp_problem(rng)
    np.testing.assert_allclose(theta, 3 * k, rtol=1e-13)  # Theta_inf = N K
    mean, cov = dynamics.ensemble_mean_cov(theta, theta_tx, k, k_tx, k_tt, y, np.inf, 0.3)
    np.testing.assert_allclose(mean, k_tx @ np.linalg.solve(k, y), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(cov, k_tt - k_tx @ np.linalg.solve(k, k_tx.T), atol=1e-10)
    # Discrete steps converge to the same posterior.
    lam_max = np.linalg.eigvalsh(theta)[-1]
    eta = 1.0 * y.size / lam_max
    mean_d, cov_d = dynamics.ensemble_mean_cov(
        theta, theta_tx, k, k_tx, k_tt, y, np.inf, eta, discrete=True
    )
    np.testing.assert_allclose(mean_d, mean, atol=1e-10)
    np.testing.assert_allclose(cov_d, cov, atol=1e-10)


def test_ensemble_finite_time_matches_linear_map_of_prior(rng):
    """f_t(x*) = f_0(x*) - Theta*X S_t (f_0(X) - Y) with (f_0(x*), f_0(X)) ~ N(0, K)."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    theta, theta_tx, k, k_tx, k_tt, y = _gp_problem(rng, n_outputs=1)
    eta, t = 0.8, 0.6
    rate = eta / y.size
    s_t = np.linalg.solve(theta, np.eye(5) - scipy_linalg.expm(-rate * t * theta))
    a = theta_tx @ s_t
    joint = np.block([[k_tt, k_tx], [k_tx.T, k]])
    b = np.hstack([np.eye(4), -a])
    mean, cov = dynamics.ensemble_mean_cov(theta, theta_tx, k, k_tx, k_tt, y[:, 0], [t], eta)
    assert mean.shape == (1, 4) and cov.shape == (1, 4, 4)
    np.testing.assert_allclose(mean[0], a @ y[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cov[0], b @ joint @ b.T, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# Born machine
# ---------------------------------------------------------------------------


def test_born_kappa_matches_infinite_ntk_on_all_configurations():
    omega = datasets.all_configurations(5)
    phi = onehot(omega, scale=1 / np.sqrt(2))
    sigma = np.array([0.9, 1.1, 1.0, 1.2, 0.8])
    for parametrization in ("ntk", "standard"):
        theta = ntk_infinite(phi, sigma=sigma, parametrization=parametrization)
        kappa = dynamics.born_kappa_infinite(5, sigma=sigma, parametrization=parametrization)
        np.testing.assert_allclose(theta, kappa * np.eye(32), rtol=1e-13, atol=1e-300)
    assert dynamics.born_kappa_infinite(8) == pytest.approx(8 * 2.0**-8, rel=1e-15)
    assert dynamics.born_kappa_infinite(4, phi_norm2=1.0, rho=[1, 2, 3, 4]) == 10.0


def test_born_tau_and_closed_form():
    assert dynamics.born_tau(2.0, 0.1, 5, 0.25) == pytest.approx(2.0 / (4 * 0.1 * 5 * 0.25))
    assert dynamics.born_tau(2.0, 0.1, 5, 0.25, loss="mean") == pytest.approx(20.0)
    p_hat = np.array([0.5, 0.5, 0.0, 0.0])
    p_0 = np.array([0.1, 0.2, 0.3, 0.4])
    out = dynamics.born_closed_form(p_hat, p_0, [0.0, 3.0, np.inf], 3.0)
    np.testing.assert_array_equal(out[0], p_0)
    np.testing.assert_allclose(out[1], p_hat + (p_0 - p_hat) / np.e, rtol=1e-15)
    np.testing.assert_array_equal(out[2], p_hat)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-15)
    assert dynamics.born_closed_form(p_hat, p_0, 3.0, 3.0).shape == (4,)


def _t5_errors(eta, theta=None):
    r = born_kernel_check(eta, theta, seed=0)
    return r["trajectory"], r["max_err"], r["z_drift"], r["n_steps"]


def test_t5_pure_kernel_born_machine_follows_closed_form():
    """Spec T5 unit test: Theta = kappa I on Omega, eta = 2e-4, t = 4 tau."""
    counts = datasets.configuration_counts(datasets.random_patterns(8, 10, seed=0))
    kappa = dynamics.born_kappa_infinite(8)  # NTP, one-hot with |phi|^2 = 1/2
    assert np.count_nonzero(counts) == 10 and counts.sum() == 10 and counts.size == 256
    assert np.array_equal(born_kernel_check(2e-4, seed=0)["counts"], counts)
    traj, err, z_drift, n_steps = _t5_errors(2e-4, theta=kappa * np.eye(256))
    assert n_steps > 10_000
    assert traj.steps[0] == 0 and traj.steps[-1] == n_steps
    assert err < 1e-4
    assert z_drift < 1e-3
    # The model memorises: the mass on the data approaches 1 - e^-4 of the way from p_0.
    on_data = traj.p[:, counts > 0].sum(axis=1)
    assert on_data[-1] > 0.97
    # Euler error is O(eta): ten times the rate gives a clearly larger error.
    _, err_big, drift_big, _ = _t5_errors(2e-3)
    assert err_big > 3 * err and drift_big > 3 * z_drift


def test_born_frozen_kernel_forms_and_reductions(rng):
    counts = np.array([2, 0, 1, 0, 0, 3, 0, 1])
    psi_0 = rng.normal(size=8)
    kappa, eta = 0.3, 1e-3
    full = dynamics.born_frozen_kernel(kappa * np.eye(8), psi_0, counts, eta, 40, log_every=7)
    scalar = dynamics.born_frozen_kernel(kappa, psi_0, counts, eta, 40, log_every=7)
    diag = dynamics.born_frozen_kernel(np.full(8, kappa), psi_0, counts, eta, 40, log_every=7)
    np.testing.assert_array_equal(full.steps, [0, 7, 14, 21, 28, 35, 40])
    for other in (scalar, diag):
        np.testing.assert_allclose(other.psi, full.psi, rtol=1e-14, atol=1e-15)
    # The mean NLL at rate eta is the summed NLL at rate eta / m.
    mean = dynamics.born_frozen_kernel(kappa, psi_0, counts, eta, 40, loss="mean")
    summed = dynamics.born_frozen_kernel(kappa, psi_0, counts, eta / counts.sum(), 40)
    np.testing.assert_allclose(mean.psi, summed.psi, rtol=1e-13)
    # One explicit step with a full symmetric kernel.
    a = rng.normal(size=(8, 8))
    theta = a @ a.T
    one = dynamics.born_frozen_kernel(theta, psi_0, counts, eta, 1)
    z = psi_0 @ psi_0
    g = -2 * counts / np.where(counts > 0, psi_0, 1.0) + 2 * counts.sum() * psi_0 / z
    np.testing.assert_allclose(one.psi[1], psi_0 - eta * theta @ g, rtol=1e-14)
    np.testing.assert_allclose(one.p, one.psi**2 / one.z[:, None], rtol=1e-15)
    np.testing.assert_allclose(one.p.sum(axis=1), 1.0, rtol=1e-14)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def _good():
    k = np.array([[2.0, 1.0], [1.0, 2.0]])
    return k, np.array([1.0, -1.0])


def test_discrete_stability_error_names_learning_rate():
    k, y = _good()  # lam_max = 3
    with pytest.raises(ValueError, match=r"learning_rate.*= 2"):
        dynamics.gradient_descent_mse(k, y, 2.0 / 3.0, loss="sum", discrete=True)
    with pytest.raises(ValueError, match="learning_rate"):
        dynamics.gradient_descent_mse(k, y, 4 * 2.0 / 3.0, loss="mean", discrete=True)
    dynamics.gradient_descent_mse(k, y, 0.66, loss="sum", discrete=True)
    dynamics.gradient_descent_mse(k, y, 100.0, loss="sum")  # gradient flow: no limit


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(k_train_train=np.array([[2.0, 1.0], [0.0, 2.0]])), ValueError, "symmetric"),
        (dict(k_train_train=np.array([[1.0, 2.0], [2.0, 1.0]])), ValueError, "semi-definite"),
        (dict(k_train_train=np.eye(3)), ValueError, r"k_train_train.*\(2, 2\)"),
        (dict(k_train_train=np.ones((2, 3))), ValueError, "k_train_train"),
        (dict(k_train_train=np.array([[1.0, np.nan], [np.nan, 1.0]])), ValueError, "finite"),
        (dict(k_train_train=np.eye(2, dtype=complex)), TypeError, "k_train_train"),
        (dict(y_train=np.ones((2, 2, 1))), ValueError, "y_train"),
        (dict(y_train=np.array([1.0, np.inf])), ValueError, "y_train"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate"),
        (dict(learning_rate=0.0), ValueError, "learning_rate"),
        (dict(learning_rate=np.nan), ValueError, "learning_rate"),
        (dict(learning_rate=np.inf), ValueError, "learning_rate"),
        (dict(learning_rate="1"), TypeError, "learning_rate"),
        (dict(diag_reg=-0.1), ValueError, "diag_reg"),
        (dict(loss="l2"), ValueError, "loss"),
        (dict(discrete=1), TypeError, "discrete"),
    ],
)
def test_gradient_descent_mse_rejects_bad_inputs(kwargs, exc, pattern):
    k, y = _good()
    args = dict(k_train_train=k, y_train=y)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        dynamics.gradient_descent_mse(**args)


def test_predict_fn_rejects_bad_inputs():
    k, y = _good()
    flow = dynamics.gradient_descent_mse(k, y, 0.1)
    steps = dynamics.gradient_descent_mse(k, y, 0.1, discrete=True)
    f0 = np.zeros(2)
    with pytest.raises(ValueError, match="t must be >= 0"):
        flow(-1.0, f0)
    with pytest.raises(ValueError, match="NaN"):
        flow(np.nan, f0)
    with pytest.raises(ValueError, match="integer"):
        steps(2.5, f0)
    with pytest.raises(ValueError, match="integer"):
        steps([1, 2.5], f0)
    with pytest.raises(TypeError, match="t must"):
        flow("1", f0)
    with pytest.raises(ValueError, match="1-D"):
        flow(np.ones((2, 2)), f0)
    with pytest.raises(ValueError, match=r"fx_train_0.*\(2,\)"):
        flow(1.0, np.zeros(3))
    with pytest.raises(ValueError, match="k_test_train"):
        flow(1.0, f0, np.zeros(3))
    with pytest.raises(ValueError, match="fx_test_0"):
        flow(1.0, f0, None, np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"k_test_train.*n_train"):
        flow(1.0, f0, np.zeros(3), np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"fx_test_0.*\(3,\)"):
        flow(1.0, f0, np.zeros(4), np.ones((3, 2)))
    np.testing.assert_allclose(steps(3, f0), steps(3.0, f0))


def test_ensemble_and_loss_reject_bad_inputs(rng):
    theta, theta_tx, k, k_tx, k_tt, y = _gp_problem(rng)
    with pytest.raises(ValueError, match="nngp_test_train"):
        dynamics.ensemble_mean_cov(theta, theta_tx, k, k_tx[:3], k_tt, y, 1.0)
    with pytest.raises(ValueError, match="nngp_test_test"):
        dynamics.ensemble_mean_cov(theta, theta_tx, k, k_tx, k_tt[:3, :3], y, 1.0)
    with pytest.raises(ValueError, match="nngp_train_train"):
        dynamics.ensemble_mean_cov(theta, theta_tx, k + np.triu(k, 1), k_tx, k_tt, y, 1.0)
    with pytest.raises(ValueError, match="fx"):
        dynamics.mse_loss(np.zeros((5, 3)), y)


def test_born_functions_reject_bad_inputs():
    counts = np.array([1, 0, 2, 0])
    psi = np.array([0.5, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="psi_0 must be non-zero"):
        dynamics.born_frozen_kernel(1.0, np.array([0.0, 1.0, 1.0, 1.0]), counts, 0.1, 3)
    with pytest.raises(ValueError, match="counts"):
        dynamics.born_frozen_kernel(1.0, psi, np.array([1, -1, 0, 0]), 0.1, 3)
    with pytest.raises(ValueError, match="counts"):
        dynamics.born_frozen_kernel(1.0, psi, np.zeros(4), 0.1, 3)
    with pytest.raises(ValueError, match="counts"):
        dynamics.born_frozen_kernel(1.0, psi, np.ones(5), 0.1, 3)
    with pytest.raises(ValueError, match="theta"):
        dynamics.born_frozen_kernel(np.ones(3), psi, counts, 0.1, 3)
    with pytest.raises(ValueError, match="theta must be symmetric"):
        dynamics.born_frozen_kernel(np.triu(np.ones((4, 4))), psi, counts, 0.1, 3)
    with pytest.raises(ValueError, match="learning_rate"):
        dynamics.born_frozen_kernel(1.0, psi, counts, -0.1, 3)
    with pytest.raises(ValueError, match="n_steps"):
        dynamics.born_frozen_kernel(1.0, psi, counts, 0.1, -3)
    with pytest.raises(ValueError, match="non-finite"):
        dynamics.born_frozen_kernel(1.0, psi, counts, 1e200, 3)
    with pytest.raises(ValueError, match="non-negative"):
        dynamics.born_frozen_kernel(-1.0, psi, counts, 0.1, 3)
    with pytest.raises(ValueError, match="p_0"):
        dynamics.born_closed_form(np.ones(3) / 3, np.ones(4) / 4, 1.0, 1.0)
    with pytest.raises(ValueError, match="p_hat"):
        dynamics.born_closed_form(np.array([-0.5, 1.5]), np.ones(2) / 2, 1.0, 1.0)
    with pytest.raises(ValueError, match="tau"):
        dynamics.born_closed_form(np.ones(2) / 2, np.ones(2) / 2, 1.0, 0.0)
    with pytest.raises(ValueError, match="t must be >= 0"):
        dynamics.born_closed_form(np.ones(2) / 2, np.ones(2) / 2, -1.0, 1.0)
    with pytest.raises(ValueError, match="n_data"):
        dynamics.born_tau(1.0, 0.1, 0, 1.0)
    with pytest.raises(ValueError, match="z_0"):
        dynamics.born_tau(-1.0, 0.1, 3, 1.0)
    with pytest.raises(ValueError, match="loss"):
        dynamics.born_tau(1.0, 0.1, 3, 1.0, loss="avg")
    with pytest.raises(ValueError, match="sigma"):
        dynamics.born_kappa_infinite(3, sigma=[1.0, 2.0])
    with pytest.raises(ValueError, match="parametrization"):
        dynamics.born_kappa_infinite(3, parametrization="sp")
