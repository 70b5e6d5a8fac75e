"""compare_mse / compare_born: the kernel predictions they return are checked against
independent iterations, then used for the theory targets T3 (reduced) and T5 (reduced)."""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn
from mpsntk.compare import compare_mse
from mpsntk.repro.experiments import born_case, mse_run, mse_setting


def _setting(seed, n_outputs=1):
    """Spec 5.1: N = 6 sites, 6 train + 4 test points, sum loss, eta = 0.25 / lambda_max."""
    return mse_setting(seed, n_outputs)


def _iterate(kernel, f0, y, eta, steps, s=1.0):
    """f <- f - (eta / s) K(P, X) (f(X) - y), logged at `steps` (independent of dynamics)."""
    f, out, loss = f0.copy(), [], []
    m = y.size
    for k in range(steps[-1] + 1):
        if k in steps:
            out.append(f.copy())
            loss.append(0.5 * np.sum((f[:m] - y) ** 2) / s)
        f = f - (eta / s) * kernel @ (f[:m] - y)
    return np.array(out), np.array(loss)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_kernel_paths_equal_iterated_linear_models(reduction):
    phi, y, eta = _setting(0)
    if reduction == "mean":
        eta *= y.size
    mps = mn.MPS.random(6, 8, seed=1)
    c = compare_mse(mps, phi[:6], y, phi[6:], learning_rate=eta, n_steps=60, log_every=15,
                    reduction=reduction)
    s = 1.0 if reduction == "sum" else y.size
    f0 = mps(phi)
    lin, loss_lin = _iterate(mn.ntk(mps, phi, phi[:6]), f0, y, eta, list(c.steps), s)
    inf, loss_inf = _iterate(mn.ntk_infinite(phi, phi[:6]), f0, y, eta, list(c.steps), s)
    assert np.max(np.abs(c.f_lin - lin)) < 1e-10 * np.abs(lin).max()
    assert np.max(np.abs(c.f_inf - inf)) < 1e-10 * np.abs(inf).max()
    assert np.max(np.abs(c.loss_lin - loss_lin)) < 1e-10 * loss_lin[0]
    assert np.max(np.abs(c.loss_inf - loss_inf)) < 1e-10 * loss_inf[0]
    assert np.allclose(c.f[0], f0) and np.allclose(c.f[-1], c.result.mps(phi))
    want = np.max(np.linalg.norm(c.f - lin, axis=1)) / np.linalg.norm(y)
    assert abs(c.delta_lin - want) < 1e-12


def test_multi_output_linearisation_uses_the_full_kernel():
    phi, y, eta = _setting(1, n_outputs=3)
    mps = mn.MPS.random(6, 8, n_outputs=3, seed=2)
    c = compare_mse(mps, phi[:6], y, phi[6:], learning_rate=eta, n_steps=40, log_every=20,
                    reduction="sum")
    full = mn.ntk(mps, phi, phi[:6], outputs="full")
    kernel = full.transpose(0, 2, 1, 3).reshape(30, 18)
    lin, _ = _iterate(kernel, mps(phi).reshape(-1), y.reshape(-1), eta, list(c.steps))
    assert c.f_lin.shape == (3, 10, 3)
    assert np.max(np.abs(c.f_lin.reshape(3, -1) - lin)) < 1e-10 * np.abs(lin).max()


def test_T3_linearisation_error_meets_the_spec_targets():
    """Delta_lin shrinks with D; OBC D = 256 < 0.02 and PBC D = 64 < 0.01 (spec T3), mean of 2
    seeds each."""
    def delta(D, boundary, seed):
        c = mse_run(D, boundary, seed, n_steps=400, log_every=20).comparison
        assert c.loss[-1] < 1e-3 * c.loss[0]
        return c.delta_lin, c.delta_inf
    obc8 = np.mean([delta(8, "open", s) for s in range(2)], axis=0)
    obc256 = np.mean([delta(256, "open", s) for s in range(2)], axis=0)
    pbc8 = np.mean([delta(8, "periodic", s) for s in range(2)], axis=0)
    pbc64 = np.mean([delta(64, "periodic", s) for s in range(2)], axis=0)
    assert obc256[0] < 0.02 and pbc64[0] < 0.01, (obc256, pbc64)
    assert obc256[0] < obc8[0] / 5 and pbc64[0] < pbc8[0] / 5
    assert obc256[1] < obc8[1] and pbc64[1] < pbc8[1]  # the infinite-D prediction improves too


def test_ensemble_matches_gp_prediction_roughly():
    phi, y, eta = _setting(3)
    c = compare_mse(mn.MPS.random(6, 128, seed=4), phi[:6], y, phi[6:], learning_rate=eta,
                    n_steps=100, log_every=100, n_ensemble=40, reduction="sum")
    e = c.ensemble
    se = np.sqrt(e["var"] / e["n"])
    assert np.all(np.abs(e["mean"] - e["mean_pred"]) < 4 * se + 0.05), e
    assert np.all(e["var_pred"] > 0)
    ratio = e["var"] / e["var_pred"]
    assert np.all((ratio > 0.4) & (ratio < 2.5)), ratio


def _born_case(boundary, D):
    return born_case(boundary, D, data_seed=0, model_seed=1, learning_rate=2e-3)


def test_T5_born_machine_approaches_the_closed_form_with_D():
    """Spec T5 (reduced sizes): N = 8 bits, m = 10, eta = 2e-3, t = 4 tau; the error against
    p_t = p_hat + (p_0 - p_hat) e^{-t/tau} shrinks with D for both boundaries."""
    small, large = _born_case("open", 4), _born_case("open", 32)
    assert large.err_closed_inf < 0.7 * small.err_closed_inf
    assert large.err_frozen < small.err_frozen
    psmall, plarge = _born_case("periodic", 4), _born_case("periodic", 8)
    assert plarge.err_closed_inf < 0.7 * psmall.err_closed_inf
    assert plarge.err_closed_inf < 0.07
    for c in (small, large, psmall, plarge):
        assert abs(c.p[0].sum() - 1) < 1e-12 and abs(c.p_hat.sum() - 1) < 1e-15
        assert c.kl[-1] < c.kl[0]  # training moves toward the data
        assert np.all(np.abs(c.p_frozen.sum(1) - 1) < 1e-12)
