"""mpsntk.diagnostics: drift, alignment, velocity, linearisation error, path kernel, kernel
regression and the Dyson-Brownian-motion experiment, against hand computations, the dense
oracles of mpsntk._reference, compare_mse and closed-form integrals; label-noise training; the
callbacks on a device model (the simulator where no GPU is present)."""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _reference as ref
from mpsntk import diagnostics as dg

import sim_cupy


def _setting(seed=0, n_train=6, n_test=4, n_sites=6):
    """Theory 5.1: 6 sites, 6 train + 4 test points, sum loss, eta = 0.25 / lambda_max."""
    rng = np.random.default_rng(seed)
    phi = mn.features.trig(rng.uniform(size=(n_train + n_test, n_sites)))
    y = rng.standard_normal(n_train)
    eta = 0.25 / np.linalg.eigvalsh(mn.ntk_infinite(phi[:n_train])).max()
    return phi, y, eta


class _Recorder:
    """Keeps a copy of the model at each logged step (small models only)."""

    def __init__(self):
        self.models = []

    def __call__(self, step, mps):
        self.models.append(mps.copy())


# ------------------------------------------------------------------------------ drift


def test_drift_is_exactly_zero_for_a_model_that_does_not_change():
    """Targets equal to the initial outputs: the residual, the gradients and so every update
    are exactly zero, so the model never changes."""
    phi, _, eta = _setting()
    mps = mn.MPS.random(6, 8, seed=1)
    y = mps(phi[:6])
    drift, path = dg.KernelDriftMonitor(phi, per_site=True), dg.PathKernel(phi)
    res = mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=20, log_every=5, reduction="sum",
                   callbacks=[drift, path])
    assert all(np.array_equal(a, b) for a, b in zip(res.mps.cores, mps.cores))
    for c in res.callbacks:
        assert c["ntk_drift"] == 0.0 and c["param_drift"] == 0.0
        assert np.all(c["ntk_drift_per_site"] == 0) and np.all(c["param_drift_per_site"] == 0)
    for c in res.callbacks[1:]:
        assert abs(c["kernel_distance"]) < 1e-15 and abs(c["kernel_velocity"]) < 1e-15
    # The path kernel of a frozen kernel is that kernel, with a vanishing error estimate.
    theta = mn.ntk(mps, phi)
    assert np.max(np.abs(path.kernel - theta)) < 1e-13 * np.abs(theta).max()
    assert path.error_estimate < 1e-13 * np.linalg.norm(theta) and path.time == 20.0


def test_drift_monitor_matches_the_dense_oracle_along_training():
    phi, y, eta = _setting(1)
    mps = mn.MPS.random(6, 8, seed=2)
    y_probe = np.concatenate([y, np.zeros(4)])
    mon, rec = dg.KernelDriftMonitor(phi, y_probe), _Recorder()
    res = mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=60, log_every=20,
                   reduction="sum", callbacks=[mon, rec])
    thetas = [ref.ntk(m, phi) for m in rec.models]
    sites = [ref.ntk_per_site(m, phi) for m in rec.models]
    w0 = np.concatenate([c.ravel() for c in mps.cores])
    for k, (c, m) in enumerate(zip(res.callbacks, rec.models)):
        want = np.linalg.norm(thetas[k] - thetas[0]) / np.linalg.norm(thetas[0])
        assert abs(c["ntk_drift"] - want) < 1e-10
        per = [np.linalg.norm(s - s0) / np.linalg.norm(s0) for s, s0 in zip(sites[k], sites[0])]
        assert np.allclose(c["ntk_drift_per_site"], per, atol=1e-10)
        w = np.concatenate([c_.ravel() for c_ in m.cores])
        assert abs(c["param_drift"] - np.linalg.norm(w - w0) / np.linalg.norm(w0)) < 1e-12
        yc = y_probe - y_probe.mean()
        align = yc @ thetas[k] @ yc / (np.linalg.norm(thetas[k]) * yc @ yc)
        assert abs(c["alignment"] - align) < 1e-10
        assert abs(c["ntk_norm"] - np.linalg.norm(thetas[k])) < 1e-10 * c["ntk_norm"]
        if k:
            a, b = thetas[k - 1], thetas[k]
            s = 1 - np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
            assert abs(c["kernel_distance"] - s) < 1e-12
            assert abs(c["kernel_velocity"] - s / 20) < 1e-12
        else:
            assert np.isnan(c["kernel_distance"]) and np.isnan(c["kernel_velocity"])
    assert 0 < res.callbacks[-1]["ntk_drift"] < 1 and res.callbacks[-1]["param_drift"] > 0


def test_alignment_distance_and_velocity_by_hand():
    theta = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    # Centred y = (-2, -1, 3): Theta y = (-5, -1, 5), y^T Theta y = 26; ||Theta||_F = 4,
    # ||y||^2 = 14.
    assert dg.kernel_alignment(theta, np.array([1.0, 2.0, 6.0])) == pytest.approx(26 / 56)
    assert dg.kernel_alignment(3.0 * theta, np.array([1.0, 2.0, 6.0])) == pytest.approx(26 / 56)
    # Uncentred y = (1, 2, 6): Theta y = (4, 11, 14), y^T Theta y = 110, ||y||^2 = 41.
    assert dg.kernel_alignment(theta, np.array([1, 2, 6]), center=False) == pytest.approx(
        110 / (4 * 41))
    # Two outputs: Y^T Theta Y = [[2, 1], [1, 2]] (trace 4), Y^T Y = I (norm sqrt 2).
    y2 = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert dg.kernel_alignment(theta, y2, center=False) == pytest.approx(1 / np.sqrt(2))
    rng = np.random.default_rng(0)  # the cosine of Theta and Y Y^T, densely
    a = rng.standard_normal((7, 7))
    k, yy = a @ a.T, rng.standard_normal((7, 3))
    yc = yy - yy.mean(0)
    want = np.sum(k * (yc @ yc.T)) / (np.linalg.norm(k) * np.linalg.norm(yc @ yc.T))
    assert dg.kernel_alignment(k, yy) == pytest.approx(want, rel=1e-12)
    # Fort et al.: <I, 11^T> = 2, ||I|| = sqrt 2, ||11^T|| = 2: S = 1 - 1/sqrt 2.
    one, ones = np.eye(2), np.ones((2, 2))
    assert dg.kernel_distance(one, ones) == pytest.approx(1 - 1 / np.sqrt(2))
    assert dg.kernel_velocity(one, ones, 4) == pytest.approx((1 - 1 / np.sqrt(2)) / 4)
    assert dg.kernel_distance(ones, 5 * ones) == pytest.approx(0.0, abs=1e-15)
    assert dg.kernel_distance(ones, -ones) == pytest.approx(2.0)
    # Drift by hand: ||diag(1, 3) - I|| / ||I|| = 2 / sqrt 2.
    assert dg.kernel_drift(np.diag([1.0, 3.0]), one) == pytest.approx(np.sqrt(2))
    per = dg.kernel_drift(np.stack([one, 2 * one, ones]), np.stack([one, one, 0 * one]),
                          per_site=True)
    assert per[0] == 0 and per[1] == pytest.approx(1.0) and np.isnan(per[2])


def test_per_site_drift_of_a_frozen_site_is_nan_and_the_others_move():
    phi, y, eta = _setting(2)
    mps = mn.MPS.random(6, 8, seed=3)
    lr = np.ones(6)
    lr[0] = 0.0  # site 0 is not trained and has no kernel term
    frozen = mps.with_cores(mps.cores)
    frozen.site_lr = lr
    mon = dg.KernelDriftMonitor(phi)
    res = mn.train(frozen, phi[:6], y, learning_rate=eta, n_steps=10, log_every=10,
                   reduction="sum", callbacks=[mon])
    last = res.callbacks[-1]
    assert np.isnan(last["ntk_drift_per_site"][0]) and np.all(last["ntk_drift_per_site"][1:] > 0)
    assert last["param_drift_per_site"][0] == 0 and np.all(last["param_drift_per_site"][1:] > 0)


# ------------------------------------------------------------------------ linearisation


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_linearisation_error_equals_compare_mse_on_the_same_run(n_outputs):
    phi, y, eta = _setting(3)
    if n_outputs > 1:
        y = np.random.default_rng(3).standard_normal((6, n_outputs))
    mps = mn.MPS.random(6, 16, seed=4, n_outputs=n_outputs)
    cmp = mn.compare.compare_mse(mps, phi[:6], y, phi[6:], learning_rate=eta, n_steps=120,
                                 log_every=20, reduction="sum")
    mon = dg.LinearizationMonitor(phi[:6], y, phi[6:], learning_rate=eta, reduction="sum")
    res = mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=120, log_every=20,
                   reduction="sum", callbacks=[mon])
    lin = np.array([c["lin_error"] for c in res.callbacks])
    inf = np.array([c["inf_error"] for c in res.callbacks])
    assert abs(lin.max() - cmp.delta_lin) < 1e-12 and abs(inf.max() - cmp.delta_inf) < 1e-12
    assert lin[0] < 1e-14 and inf[0] < 1e-14 and cmp.delta_lin > 0  # f_lin_0 = f_0
    ynorm = np.linalg.norm(y)
    want = np.linalg.norm((cmp.f - cmp.f_lin).reshape(len(lin), -1), axis=1) / ynorm
    assert np.allclose(lin, want, atol=1e-12)
    plain = dg.linearization_error(mps, cmp.steps, cmp.f, phi[:6], y, phi[6:],
                                   learning_rate=eta, reduction="sum")
    assert np.allclose(plain["lin_error"], lin, atol=1e-12)
    assert np.allclose(plain["inf_error"], inf, atol=1e-12)


# ------------------------------------------------------------------------- path kernel


@pytest.mark.parametrize("nodes", ["uniform_even", "uniform_odd", "graded"])
def test_path_kernel_quadrature_and_its_error_estimate_on_a_smooth_integrand(nodes):
    """Theta(t) = A + B exp(-t/tau) + C sin(w t) with the exact mean over [0, T]: the estimate
    bounds the true error and is not loose by more than a factor 10 (3 is its asymptotic value
    on uniform steps)."""
    rng = np.random.default_rng(4)
    a, b, c = (rng.standard_normal((5, 5)) for _ in range(3))
    tau, w, T = 15.0, 0.2, 100.0
    times = {"uniform_even": np.linspace(0, T, 21), "uniform_odd": np.linspace(0, T, 22),
             "graded": T * np.linspace(0, 1, 31) ** 1.5}[nodes]
    exact = a + b * tau * (1 - np.exp(-T / tau)) / T + c * (1 - np.cos(w * T)) / (w * T)
    kernels = (a + b * np.exp(-t / tau) + c * np.sin(w * t) for t in times)  # one at a time
    k, est = dg.path_kernel(kernels, times)
    err = np.linalg.norm(k - exact)
    assert err < est < 10 * err, (err, est)
    trap = np.trapezoid(np.stack([a + b * np.exp(-t / tau) + c * np.sin(w * t) for t in times]),
                        times, axis=0) / T
    assert np.max(np.abs(k - trap)) < 1e-12


def test_path_kernel_callback_is_the_trapezoid_of_the_logged_kernels():
    phi, y, eta = _setting(5)
    mps = mn.MPS.random(6, 8, seed=6)
    path, rec = dg.PathKernel(phi), _Recorder()
    steps = [0, 5, 10, 20, 40, 70, 100]
    res = mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=100, log_steps=steps,
                   reduction="sum", callbacks=[path, rec])
    thetas = np.stack([ref.ntk(m, phi) for m in rec.models])
    want = np.trapezoid(thetas, steps, axis=0) / 100
    assert np.max(np.abs(path.kernel - want)) < 1e-12 * np.abs(want).max()
    assert path.time == 100 and res.callbacks[-1]["path_time"] == 100
    assert res.callbacks[-1]["path_error"] == pytest.approx(
        path.error_estimate / np.linalg.norm(path.kernel))
    assert np.isnan(res.callbacks[1]["path_error"]) and res.callbacks[2]["path_error"] >= 0
    # The pairwise estimate, recomputed: pairs (0, 5, 10), (10, 20, 40), (40, 70, 100).
    delta = 0.0
    for i in (0, 2, 4):
        (t0, t1, t2), (k0, k1, k2) = steps[i:i + 3], thetas[i:i + 3]
        fine = (t1 - t0) * (k0 + k1) / 2 + (t2 - t1) * (k1 + k2) / 2
        delta = delta + fine - (t2 - t0) * (k0 + k2) / 2
    assert path.error_estimate == pytest.approx(np.linalg.norm(delta) / 100, rel=1e-10)


def test_kernel_regression_table_against_a_direct_ridge_solve():
    rng = np.random.default_rng(7)
    f = rng.standard_normal((14, 5))
    k = f @ f.T
    y = rng.standard_normal((14, 2))
    table = dg.kernel_regression_table({"k": k, "half": k[:, :10]}, y[:10], y[10:], ridge=0.3)
    pred = k[:, :10] @ np.linalg.solve(k[:10, :10] + 0.3 * np.eye(10), y[:10])
    assert table["k"]["test_mse"] == pytest.approx(np.mean((pred[10:] - y[10:]) ** 2))
    assert table["k"]["train_mse"] == pytest.approx(np.mean((pred[:10] - y[:10]) ** 2))
    assert table["k"]["test_accuracy"] == np.mean(pred[10:].argmax(1) == y[10:].argmax(1))
    assert table["half"] == table["k"]
    # ridge = 0 on a rank-5 kernel: the pseudo-inverse (minimum-norm interpolant of the range).
    t0 = dg.kernel_regression_table({"k": k}, y[:10, 0], y[10:, 0], ridge=0.0)
    pred0 = k[10:, :10] @ np.linalg.pinv(k[:10, :10]) @ y[:10, 0]
    assert t0["k"]["test_mse"] == pytest.approx(np.mean((pred0 - y[10:, 0]) ** 2), rel=1e-8)
    assert "test_accuracy" not in t0["k"]


def test_compare_kernel_regression_uses_the_four_kernels():
    phi, y, eta = _setting(8, n_train=8, n_test=6)
    y_test = np.random.default_rng(8).standard_normal(6)
    mps = mn.MPS.random(6, 8, seed=8)
    path = dg.PathKernel(phi)
    res = mn.train(mps, phi[:8], y, learning_rate=eta, n_steps=50, log_every=5,
                   reduction="sum", callbacks=[path])
    table = dg.compare_kernel_regression(mps, res.mps, path, phi[:8], y, phi[8:], y_test,
                                         ridge=1e-2)
    kernels = {"theta_0": ref.ntk(mps, phi, phi[:8]),
               "theta_inf": 6 * ref.nngp(phi, phi[:8]),
               "theta_T": ref.ntk(res.mps, phi, phi[:8]), "path": path.kernel}
    want = dg.kernel_regression_table(kernels, y, y_test, ridge=1e-2)
    assert set(table) == set(want)
    for name in want:
        for key in want[name]:
            assert table[name][key] == pytest.approx(want[name][key], rel=1e-8)


# --------------------------------------------------------------------- Dyson Brownian motion


def _one_hot_task(n_sites=4, bond_dim=16, copies=4, seed=0):
    """All 2^n_sites bit strings, each ``copies`` times, one-hot features (Theta_inf is then
    a multiple of the identity on the configurations: every function-space mode relaxes at one
    rate), targets of a bond-dimension-2 teacher (realisable: the residual vanishes at the
    minimum and the gradient noise is the label noise)."""
    x = np.repeat(mn.datasets.all_configurations(n_sites, 2), copies, axis=0)
    phi = mn.features.onehot(x, phys_dim=2)
    y = mn.MPS.random(n_sites, 2, seed=100)(phi)
    return mn.MPS.random(n_sites, bond_dim, seed=seed), phi, y


def test_dyson_scaling_equal_ratios_collapse_and_the_control_does_not():
    """Quick setting (4 sites, D = 16, 64 samples, sigma = 0.5, t in [40, 240], samples every
    2 units of t).  Over model and run seeds 0..5 it gave collapse spreads 0.03-0.24 (the
    scatter of a variance estimated from about 100 correlated samples; seed 0 is the worst),
    control spreads 1.36-2.03 and control / pairs variance ratios 3.0-4.9 for the predicted 4.
    The bounds (collapse < 0.5, control > 1.0 and > 3 x collapse, ratio in (2, 8)) leave a
    factor of about 2 to spare; the seed is fixed."""
    mps, phi, y = _one_hot_task()
    out = dg.dyson_scaling(mps, phi, y, pairs=((0.1, 8), (0.2, 16), (0.4, 32)),
                           controls=((0.4, 8),), label_noise=0.5, duration=240, burn_in=40,
                           sample_every=2.0, top_k=3, seed=0)
    assert out.sites == [1, 2] and len(out.runs) == 4
    assert [r["n_steps"] for r in out.runs] == [2400, 1200, 600, 600]
    assert [r["control"] for r in out.runs] == [False, False, False, True]
    assert out.collapse_rel_spread < 0.5
    assert out.control_rel_spread[0] > max(1.0, 3 * out.collapse_rel_spread)
    assert 2 < out.control_variance_ratio[0] < 8 and out.control_ratio_predicted == [4.0]
    for r in out.runs:  # one clock: samples at t = 0, 2, ..., 240
        assert np.allclose(r["times"], np.arange(0, 241, 2.0))
        assert r["top"].shape == (121, 2, 3) and np.all(np.diff(r["top"], axis=2) <= 0)
        assert r["raw_variance"] >= r["variance"] * 0.9  # the trend adds to the raw variance
        assert r["loss_mean"] < 0.05  # near the minimum: stationary


def test_detrending_over_blocks_removes_a_curved_drift():
    """White noise of variance 1e-4 on the drift 0.3 (t / T)^2: one line over the window leaves
    the curvature, 0.3^2 / 180 = 5e-4, in the variance; lines over blocks of 50 (1/40 of the
    window) leave 40^-4 of it and recover the noise within 0.14 (the sampling error of a
    variance from 1000 samples is 0.045: 3 standard errors)."""
    from mpsntk.diagnostics._dbm import _detrended_variance

    rng = np.random.default_rng(11)
    t = np.arange(0.0, 2000.0, 2.0)
    series = (0.3 * (t / 2000) ** 2)[:, None] + 0.01 * rng.standard_normal((1000, 1))
    whole = _detrended_variance(t, series)[0]
    blocks = _detrended_variance(t, series, 50.0)[0]
    assert abs(whole / 6e-4 - 1) < 0.1 and abs(blocks / 1e-4 - 1) < 0.14
    line = 3.0 + 0.01 * t  # a straight drift is removed exactly in either way
    assert _detrended_variance(t, line[:, None])[0] < 1e-20
    assert _detrended_variance(t[:-3], line[:-3, None], 50.0)[0] < 1e-20  # short last block


# ------------------------------------------------------------------------- label noise


def test_label_noise_fits_noisy_targets_drawn_from_the_seed():
    phi, y, eta = _setting(9)
    mps = mn.MPS.random(6, 8, seed=9)
    noisy = y + 0.3 * np.random.default_rng(5).standard_normal(6)  # the first draw of seed 5
    got = mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=1, reduction="sum",
                   label_noise=0.3, seed=5)
    want = mn.train(mps, phi[:6], noisy, learning_rate=eta, n_steps=1, reduction="sum")
    assert all(np.array_equal(a, b) for a, b in zip(got.mps.cores, want.mps.cores))
    # The logged loss is that of the clean targets.
    f = got.mps(phi[:6])
    assert got.loss[-1] == pytest.approx(0.5 * np.sum((f - y) ** 2))
    plain = mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=3, batch_size=2, seed=1)
    zero = mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=3, batch_size=2, seed=1,
                    label_noise=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(plain.mps.cores, zero.mps.cores))
    with pytest.raises(ValueError, match="label_noise applies to loss='mse' only"):
        mn.train(mps, phi[:6], np.zeros(6, dtype=np.int64), loss="cross_entropy",
                 learning_rate=eta, n_steps=1, label_noise=0.1)
    with pytest.raises(ValueError, match="label_noise must be a non-negative"):
        mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=1, label_noise=-0.1)
    with pytest.raises(TypeError, match="label_noise must be a non-negative"):
        mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=1, label_noise="0.1")


# ----------------------------------------------------------------------------- device


def test_callbacks_on_a_device_model_stay_there_and_match_the_host():
    """On a GPU when one is usable, else the CUDA kernels on the simulator behind the CuPy
    stand-in: kernels stay device arrays, and every diagnostic equals the host run's."""
    on_gpu, cp = sim_cupy.device_tests()
    rng = np.random.default_rng(10)
    phi = mn.features.trig(rng.uniform(size=(8, 4)))
    y = rng.standard_normal(6)
    host = mn.MPS.random(4, 8, seed=10)

    def callbacks(p, yy):
        return [dg.KernelDriftMonitor(p, xp_of(p).concatenate([yy, 0 * yy[:2]])),
                dg.LinearizationMonitor(p[:6], yy, p[6:], learning_rate=0.05, reduction="sum"),
                dg.SpectrumMonitor(top_k=2), dg.PathKernel(p)]

    def xp_of(a):
        return np if isinstance(a, np.ndarray) and not isinstance(a, cp.ndarray) else cp

    want_cbs = callbacks(phi, y)
    want = mn.train(host, phi[:6], y, learning_rate=0.05, reduction="sum", n_steps=6,
                    log_every=2, callbacks=want_cbs)
    with sim_cupy.engine():
        got_cbs = callbacks(cp.asarray(phi), cp.asarray(y))
        got = mn.train(host.to_device(), cp.asarray(phi[:6]), cp.asarray(y), learning_rate=0.05,
                       reduction="sum", n_steps=6, log_every=2, callbacks=got_cbs)
        assert isinstance(got_cbs[3].kernel, cp.ndarray)
        assert isinstance(got_cbs[0]._theta_0, cp.ndarray)
        k_dev = got_cbs[3].kernel.get()
    assert np.max(np.abs(k_dev - want_cbs[3].kernel)) < 1e-12 * np.abs(k_dev).max()
    assert len(got.callbacks) == len(want.callbacks) == 4
    for a, b in zip(want.callbacks, got.callbacks):
        assert set(a) == set(b)
        for key in a:
            x, z = np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)
            assert np.allclose(x, z, rtol=1e-9, atol=1e-12, equal_nan=True), key


def test_dyson_scaling_and_kernel_regression_on_a_device_model_match_the_host():
    on_gpu, cp = sim_cupy.device_tests()
    host, phi, y = _one_hot_task(bond_dim=8)
    kw = dict(pairs=((0.1, 8), (0.2, 16)), controls=((0.2, 8),), label_noise=0.5, duration=2.0,
              burn_in=0.4, sample_every=0.4, top_k=2, seed=3)
    want = dg.dyson_scaling(host, phi, y, **kw)
    rng = np.random.default_rng(12)
    x = mn.features.trig(rng.uniform(size=(10, 4)))
    yy = rng.standard_normal(10)
    path_h = dg.PathKernel(x)
    trained_h = mn.train(host, x[:6], yy[:6], learning_rate=0.05, n_steps=4, log_every=2,
                         callbacks=[path_h]).mps
    table_h = dg.compare_kernel_regression(host, trained_h, path_h, x[:6], yy[:6], x[6:], yy[6:],
                                           ridge=0.1)
    with sim_cupy.engine():
        dev = host.to_device()
        got = dg.dyson_scaling(dev, cp.asarray(phi), cp.asarray(y), **kw)
        xd, yd = cp.asarray(x), cp.asarray(yy)
        path_d = dg.PathKernel(xd)
        trained_d = mn.train(dev, xd[:6], yd[:6], learning_rate=0.05, n_steps=4, log_every=2,
                             callbacks=[path_d]).mps
        table_d = dg.compare_kernel_regression(dev, trained_d, path_d, xd[:6], yd[:6], xd[6:],
                                               yd[6:], ridge=0.1)
    for a, b in zip(want.runs, got.runs):
        assert np.allclose(a["top"], b["top"], rtol=1e-10)
        assert a["variance"] == pytest.approx(b["variance"], rel=1e-6)
    for name in table_h:
        for key in table_h[name]:
            assert table_d[name][key] == pytest.approx(table_h[name][key], rel=1e-9)


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused():
    phi, y, eta = _setting()
    mps = mn.MPS.random(6, 8, seed=0)
    with pytest.raises(ValueError, match="probe must be a 3-D array"):
        dg.KernelDriftMonitor(phi[:, :, 0])
    bad = phi.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="probe must be finite"):
        dg.PathKernel(bad)
    with pytest.raises(ValueError, match="y must have shape"):
        dg.KernelDriftMonitor(phi, np.zeros(3))
    with pytest.raises(ValueError, match="probe has n_sites = 6"):
        dg.KernelDriftMonitor(phi)(0, mn.MPS.random(5, 8, seed=0))
    mon = dg.KernelDriftMonitor(phi)
    mon(3, mps)
    with pytest.raises(ValueError, match="steps must increase within one run"):
        mon(3, mps)
    mon.reset()
    mon(0, mps)  # a new run after reset()
    with pytest.raises(ValueError, match="must first be called at step 0"):
        dg.LinearizationMonitor(phi[:6], y, learning_rate=eta)(5, mps)
    with pytest.raises(ValueError, match="same shape"):
        dg.kernel_drift(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="theta_0 is zero"):
        dg.kernel_drift(np.eye(3), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        dg.kernel_distance(np.full((2, 2), np.inf), np.eye(2))
    with pytest.raises(ValueError, match="constant targets"):
        dg.kernel_alignment(np.eye(3), np.ones(3))
    with pytest.raises(ValueError, match="times must increase"):
        dg.path_kernel([np.eye(2)] * 3, [0, 2, 1])
    with pytest.raises(ValueError, match="one kernel per time"):
        dg.path_kernel([np.eye(2)] * 2, [0, 1, 2])
    with pytest.raises(ValueError, match="PathKernel has not been called"):
        _ = dg.PathKernel(phi).kernel
    path = dg.PathKernel(phi[:7])
    path(0, mps)
    with pytest.raises(ValueError, match="probe set .* must be phi_train followed by phi_test"):
        dg.compare_kernel_regression(mps, mps, path, phi[:6], y, phi[6:], np.zeros(4), ridge=0.1)
    with pytest.raises(ValueError, match="outputs must have shape"):
        dg.linearization_error(mps, [0, 1], np.zeros((2, 9)), phi[:6], y, phi[6:],
                               learning_rate=eta)
    model, p, t = _one_hot_task(bond_dim=8)
    common = dict(label_noise=0.5, duration=20, burn_in=4, sample_every=2.0)
    with pytest.raises(ValueError, match="pairs must share one learning_rate / batch_size"):
        dg.dyson_scaling(model, p, t, pairs=((0.1, 8), (0.2, 8)), **common)
    with pytest.raises(ValueError, match="controls must have a learning_rate / batch_size"):
        dg.dyson_scaling(model, p, t, pairs=((0.1, 8), (0.2, 16)), controls=((0.4, 32),),
                         **common)
    with pytest.raises(ValueError, match="whole number of steps"):
        dg.dyson_scaling(model, p, t, pairs=((0.3, 8), (0.6, 16)), controls=(), **common)
    with pytest.raises(ValueError, match="burn_in must lie in"):
        dg.dyson_scaling(model, p, t, pairs=((0.1, 8), (0.2, 16)), label_noise=0.5,
                         duration=20, burn_in=20, sample_every=2.0)
    with pytest.raises(ValueError, match="sites entries must be a site index"):
        dg.dyson_scaling(model, p, t, pairs=((0.1, 8), (0.2, 16)), sites=[9], **common)
    with pytest.raises(ValueError, match="must span at least 3 samples"):
        dg.dyson_scaling(model, p, t, pairs=((0.1, 8), (0.2, 16)), detrend=4.0, **common)
    with pytest.raises(ValueError, match="label_noise must be a positive"):
        dg.dyson_scaling(model, p, t, pairs=((0.1, 8), (0.2, 16)), label_noise=0.0,
                         duration=20, burn_in=4, sample_every=2.0)
