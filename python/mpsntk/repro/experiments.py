"""The experiments of the reproduction targets, as plain functions (theory section 6).

The suite (``python -m mpsntk.repro``) and the test-suite call these, so that each experiment
exists once. Each one runs on the engine and the package's closed forms (:mod:`mpsntk.compare`,
:mod:`mpsntk.dynamics`, :mod:`mpsntk.diagnostics`); nothing here re-derives the maths.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import born, datasets, dynamics, features
from ..compare import compare_born, compare_mse
from ..infinite import ntk_infinite
from ..mps import MPS
from ..ntk import ntk
from ..train import train

__all__ = [
    "BORN_FEATURE_SCALE",
    "MeanModeRun",
    "MseRun",
    "born_case",
    "born_kernel_check",
    "dbm_task",
    "mean_mode_run",
    "mean_mode_setting",
    "mse_run",
    "mse_setting",
    "positive_definiteness_cases",
]

BORN_FEATURE_SCALE = 2**-0.5  # Guo-Draper's Born-machine map on bits: |phi|^2 = 1/2


def mse_setting(seed, n_outputs=1):
    """The regression setting of theory 5.1 (targets T3, T9).

    ``n_sites = 6``, 6 training and 4 test points uniform in ``[0, 1]^6`` with the
    trigonometric map, standard normal targets, and ``eta = 0.25 / lambda_max(Theta_inf)`` on
    the training set (sum loss).

    Returns
    -------
    phi : ndarray, shape (10, 6, 2)
        Training points first, then the test points.
    y : ndarray, shape (6,) or (6, n_outputs)
    eta : float
    """
    rng = np.random.default_rng(seed)
    phi = features.trig(rng.uniform(size=(10, 6)))
    y = rng.standard_normal((6, n_outputs) if n_outputs > 1 else 6)
    eta = 0.25 / np.linalg.eigvalsh(ntk_infinite(phi[:6])).max()
    return phi, y, eta


@dataclasses.dataclass
class MseRun:
    """One run of the theory-5.1 setting: the comparison and the NTK drift on the probe set.

    Attributes
    ----------
    comparison : mpsntk.compare.MseComparison
    ntk_drift : float
        ``||Theta_T - Theta_0||_F / ||Theta_0||_F`` on the probe set (train and test) between the
        initial and the final model.
    initial : MPS
        The model before training (``comparison.result.mps`` is the trained one).
    probe : ndarray, shape (10, 6, 2)
        The probe features (training points first).
    """

    comparison: object
    ntk_drift: float
    initial: object
    probe: np.ndarray


def mse_run(bond_dim, boundary, seed, *, n_steps=400, log_every=20):
    """Train the theory-5.1 setting of ``seed`` (model seed ``seed + 10``) with
    :func:`mpsntk.compare.compare_mse` (sum loss) and measure the NTK drift.

    Returns
    -------
    MseRun
    """
    phi, y, eta = mse_setting(seed)
    mps = MPS.random(6, bond_dim, boundary=boundary, seed=seed + 10)
    c = compare_mse(mps, phi[:6], y, phi[6:], learning_rate=eta, n_steps=n_steps,
                    log_every=log_every, reduction="sum")
    theta_0 = ntk(mps, phi)
    drift = np.linalg.norm(ntk(c.result.mps, phi) - theta_0) / np.linalg.norm(theta_0)
    return MseRun(comparison=c, ntk_drift=float(drift), initial=mps, probe=phi)


def mean_mode_setting(n_sites=6, a=0.3, delta=0.4):
    """Pairwise-equidistant training points of theory 4.2 (``m = n_sites``) and their kernel.

    Returns
    -------
    phi : ndarray, shape (n_sites, n_sites, 2)
    lam : ndarray, shape (n_sites,)
        Eigenvalues of ``Theta_inf`` on the points, ascending; ``lam[-1] = N (1 + (m - 1) r)``
        with ``r = cos(pi delta / 2)^2``.
    """
    phi = features.trig(datasets.equidistant_points(n_sites, n_sites, a=a, delta=delta))
    return phi, np.linalg.eigvalsh(ntk_infinite(phi))


@dataclasses.dataclass
class MeanModeRun:
    """Real gradient descent on the theory-4.2 points: the mean residual and its decay rate.

    Attributes
    ----------
    steps : ndarray (n_steps + 1,)
    mean_residual : ndarray (n_steps + 1,)
        ``e_k = mean_i (f_k(x_i) - y_i)``.
    rate : float
        Least-squares slope of ``-log |e_k|`` against the time ``eta k``.
    predicted_rate : float
        ``-log(1 - eta lambda_max(Theta_inf)) / eta``, the rate of the infinite-D kernel.
    """

    steps: np.ndarray
    mean_residual: np.ndarray
    rate: float
    predicted_rate: float


def mean_mode_run(bond_dim, boundary, seed, *, n_steps=60, eta_factor=0.1):
    """Train an MPS on the theory-4.2 points (sum loss, ``eta = eta_factor /
    lambda_max(Theta_inf)``) and fit the decay rate of the mean residual.

    The targets are ``y = f_0(X) - 1``, so the initial residual is exactly the mean mode
    ``e_0 = 1`` (the top eigenvector of ``Theta_inf``): with random targets the mean of
    ``f_0`` fluctuates by O(1) (the points are strongly correlated) and ``e_0`` can nearly
    vanish.  The rate is the least-squares slope of ``-log |e_k|`` against the time
    ``eta k`` while ``|e_k| >= 0.05 |e_0|`` (28 steps in the kernel limit): at finite D the
    mean mode leaks into the slow modes (rate ``N (1 - r)``, 12 times slower), whose residue
    flattens ``|e_k|`` later on and is not the decay the theory describes.
    """
    phi, lam = mean_mode_setting()
    eta = eta_factor / lam[-1]
    mps = MPS.random(phi.shape[1], bond_dim, boundary=boundary, seed=seed)
    y = mps(phi) - 1.0
    res = train(mps, phi, y, learning_rate=eta, n_steps=n_steps, reduction="sum", probe=phi,
                log_every=1)
    e = (np.asarray(res.probe_outputs) - y).mean(axis=1)
    below = np.flatnonzero(np.abs(e) < 0.05 * abs(e[0]))
    n = max(3, below[0] if below.size else e.size)  # the leading window, at least 3 points
    slope = np.polyfit(eta * res.steps[:n], np.log(np.abs(e[:n])), 1)[0]
    return MeanModeRun(steps=res.steps, mean_residual=e, rate=float(-slope),
                       predicted_rate=float(-np.log1p(-eta * lam[-1]) / eta))


def born_case(boundary, bond_dim, *, data_seed=0, model_seed=1, n_sites=8, n_data=10,
              learning_rate=2e-3, n_tau=4.0, logs_per_tau=5):
    """The Born machine of target T5, trained for ``n_tau`` relaxation times.

    ``n_data`` distinct configurations of ``n_sites`` bits (drawn with ``data_seed``), one-hot
    features of norm ``2^-1/2``, an NTK-parametrised model (``model_seed``), summed NLL, and
    ``tau = Z_0 / (4 eta m kappa_inf)`` (theory 4.3) from the model's own ``Z_0``.

    Returns
    -------
    mpsntk.compare.BornComparison
    """
    rng = np.random.default_rng(data_seed)
    omega = datasets.all_configurations(n_sites)
    data = omega[rng.choice(omega.shape[0], n_data, replace=False)]
    mps = MPS.random(n_sites, bond_dim, boundary=boundary, seed=model_seed)
    z0 = np.exp(born.log_partition(mps, BORN_FEATURE_SCALE))
    kappa = dynamics.born_kappa_infinite(n_sites, phi_norm2=BORN_FEATURE_SCALE**2)
    tau = dynamics.born_tau(z0, learning_rate, n_data, kappa)
    return compare_born(mps, data, learning_rate=learning_rate, n_steps=int(n_tau * tau),
                        log_every=max(1, int(tau / logs_per_tau)),
                        feature_scale=BORN_FEATURE_SCALE)


def born_kernel_check(learning_rate, theta=None, *, seed=0, n_sites=8, n_data=10,
                      n_tau=4.0, log_every=25):
    """The pure-kernel Born machine of T5: Euler steps of ``Theta = kappa I`` against the
    closed form ``p_t = p_hat + (p_0 - p_hat) e^{-t/tau}``.

    ``Psi_0`` is Gaussian with ``E Psi_0(x)^2 = K(x, x) = 2^-N`` (so ``E Z_0 = 1``); the data
    are ``n_data`` distinct random patterns. ``theta`` overrides the kernel (default
    ``kappa_inf``, a scalar).

    Returns
    -------
    dict with
        ``trajectory`` (:class:`mpsntk.dynamics.BornTrajectory`); ``closed``, the closed form
        at the logged steps, shape (n_logged, 2^n_sites); ``max_err``,
        ``max_k max_x |p_k - closed_k|``; ``z_drift``, ``|Z_T / Z_0 - 1|`` (the flow conserves
        Z, Euler steps to O(eta)); ``counts``, shape (2^n_sites,); ``n_steps``; ``tau``.
    """
    data = datasets.random_patterns(n_sites, n_data, seed=seed, distinct=True)
    counts = datasets.configuration_counts(data)
    kappa = dynamics.born_kappa_infinite(n_sites, phi_norm2=BORN_FEATURE_SCALE**2)
    psi_0 = np.random.default_rng(seed).normal(size=2**n_sites) * 2.0 ** (-n_sites / 2)
    m = int(counts.sum())
    z_0 = float(psi_0 @ psi_0)
    tau = dynamics.born_tau(z_0, learning_rate, m, kappa)
    n_steps = int(np.ceil(n_tau * tau))
    traj = dynamics.born_frozen_kernel(kappa if theta is None else theta, psi_0, counts,
                                       learning_rate, n_steps, log_every=log_every)
    closed = dynamics.born_closed_form(counts / m, psi_0**2 / z_0, traj.steps, tau)
    return dict(trajectory=traj, closed=closed, max_err=float(np.max(np.abs(traj.p - closed))),
                z_drift=float(abs(traj.z[-1] / z_0 - 1)), counts=counts, n_steps=n_steps,
                tau=float(tau))


def dbm_task(seed=0, *, n_sites=4, bond_dim=16, copies=4, teacher_seed=100):
    """The regression task of target T8 (label-noise SGD, theory 5.5).

    All ``2^n_sites`` bit strings, each ``copies`` times, with one-hot features (so
    ``Theta_inf`` is a multiple of the identity on the configurations), and the outputs of a
    bond-dimension-2 teacher as targets (realisable: at the minimum the gradient noise is the
    label noise alone).

    Returns
    -------
    mps : MPS
        The student, ``MPS.random(n_sites, bond_dim, seed=seed)``.
    phi : ndarray, shape (copies 2^n_sites, n_sites, 2)
    y : ndarray, shape (copies 2^n_sites,)
    """
    x = np.repeat(datasets.all_configurations(n_sites), copies, axis=0)
    phi = features.onehot(x)
    y = MPS.random(n_sites, 2, seed=teacher_seed)(phi)
    return MPS.random(n_sites, bond_dim, seed=seed), phi, y


def _bits(n_sites):
    return datasets.all_configurations(n_sites)


def positive_definiteness_cases(n_sites=4, seed=0):
    """Feature sets of target T6 (theory 3.4) and the one-hot kernel constant.

    Returns
    -------
    dict with
        ``distinct``: one-hot features of 5 distinct configurations (``Theta_inf = kappa I``);
        ``duplicate``: 4 configurations, one repeated (singular);
        ``too_many``: ``1.5 * 2^N`` random configurations (rank ``<= d^N``);
        ``continuous``: 40 trig samples on 5 sites (``m > 2^5``: rank ``<= 32``);
        ``kappa``: ``N 2^-N`` (NTK parametrisation, ``|phi|^2 = 1/2``);
        ``rank_bound``: ``2^N``.
    """
    bits = _bits(n_sites)
    rng = np.random.default_rng(seed)

    def onehot(idx):
        return features.onehot(bits[idx], scale=BORN_FEATURE_SCALE)

    n_conf = 2**n_sites
    return dict(
        distinct=onehot([0, 3, 5, 9, 14]),
        duplicate=onehot([0, 3, 5, 3]),
        too_many=onehot(rng.integers(0, n_conf, size=3 * n_conf // 2)),
        continuous=features.trig(rng.uniform(size=(40, 5))),
        kappa=dynamics.born_kappa_infinite(n_sites, phi_norm2=BORN_FEATURE_SCALE**2),
        rank_bound=n_conf,
    )
