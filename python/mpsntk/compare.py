"""Real gradient descent side by side with its kernel-regime predictions (theory 4.1, 4.3).

:func:`compare_mse` trains an MPS on a squared loss and returns, on a probe set (train and
test), (a) the real outputs f_k, (b) the exact GD of the model linearised at W_0 (empirical
Theta_0), (c) the same with the infinite-bond-dimension kernel Theta_inf, (d) the loss against
its closed form, and (e) optionally the ensemble mean and variance over initialisations against
the Gaussian-process prediction.  :func:`compare_born` does the same for a Born machine: the real
p_k on all configurations, the frozen-kernel ODE, the closed form with kappa_inf and with the
empirical kappa, the drift of Z, and KL(p_hat || p_k).

Everything runs on the one engine: :func:`mpsntk.train`, :func:`mpsntk.ntk`,
:mod:`mpsntk.dynamics`, :mod:`mpsntk.born`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import born, datasets, dynamics, features
from ._validate import _as_site_vector, _check_int, _check_seed
from .infinite import nngp_infinite, ntk_infinite
from .mps import MPS
from .ntk import ntk
from .train import _check_targets, train

__all__ = [
    "BornComparison",
    "KernelPredictions",
    "MseComparison",
    "compare_born",
    "compare_mse",
    "kernel_predictions",
    "model_rho",
]


def _model_sigma(mps, sigma):
    if sigma is None:
        if mps.init is None:
            raise ValueError(
                "sigma is needed for the infinite-width kernel of a model not drawn by "
                "MPS.random; pass sigma= (the per-site scale of the initial distribution)"
            )
        sigma = mps.init["sigma"]
    return _as_site_vector(sigma, "sigma", mps.n_sites, positive=True)


def model_rho(mps, sigma=None):
    """Per-site ``rho_j`` with ``E Theta_D = (sum_j rho_j) K`` for this model (theory 1, 3.2).

    ``lambda_j = scales_j^2 site_lr_j = rho_j sigma_j^2 / sqrt(D_j D_{j+1})`` for core ``j`` of
    shape ``(phys_dim, D_j, D_{j+1})``; NTK
    parametrisation gives ``rho_j = 1``, Guo-Draper's rates ``rho_j = sigma_j^-2``.
    """
    sigma = _model_sigma(mps, sigma)
    D = np.asarray(mps.bond_dims, dtype=float)
    lam = mps.scales**2 * mps.site_lr
    return lam * np.sqrt(D[:-1] * D[1:]) / sigma**2


@dataclasses.dataclass
class MseComparison:
    """Trajectories on the probe set (train rows first), all with a leading logged-step axis.

    Attributes
    ----------
    steps : ndarray (n_logged,)
    f, f_lin, f_inf : ndarray (n_logged, n_probe[, C])
        Real GD, linearised GD with Theta_0, and GD with Theta_inf (same f_0).
    loss, loss_lin, loss_inf : ndarray (n_logged,)
        Real training loss and the closed forms (4.1 (d)) with Theta_0 and Theta_inf.
    delta_lin, delta_inf : float
        ``max_k ||f_k - f_lin_k|| / ||Y||`` and the same for f_inf (theory 5.2).
    theta_0, theta_inf : ndarray
        The kernels (probe x train).
    ensemble : dict or None
        With ``n_ensemble``: ``mean``/``var`` of the test outputs over fresh initialisations
        and the predictions ``mean_pred``/``var_pred`` of ``dynamics.ensemble_mean_cov``.
    result : TrainResult
    """

    steps: np.ndarray
    f: np.ndarray
    f_lin: np.ndarray
    f_inf: np.ndarray
    loss: np.ndarray
    loss_lin: np.ndarray
    loss_inf: np.ndarray
    delta_lin: float
    delta_inf: float
    theta_0: np.ndarray
    theta_inf: np.ndarray
    ensemble: dict | None
    result: object


def _flat_kernel(theta, n_outputs):
    """(P, m[, C, C]) -> (P*C, m*C) so multi-output GD is one linear system."""
    if theta.ndim == 2:
        return theta
    P, m, C, _ = theta.shape
    return theta.transpose(0, 2, 1, 3).reshape(P * C, m * C)


def _host(a, xp):
    return np.asarray(a) if xp is np else xp.asnumpy(a)  # explicit device-to-host copy


@dataclasses.dataclass
class KernelPredictions:
    """Full-batch GD on the squared loss in the kernel regime, from one initial model.

    (b) and (c) of theory 4.1: the exact GD of the model linearised at ``W_0`` (kernel
    ``Theta_0``) and of the infinite-bond-dimension model (``Theta_inf``), both started from the
    model's own initial outputs ``f_0``, on a probe set whose first ``n_train`` rows are the
    training samples.  Each kernel is eigendecomposed once, here.  Host float64 arrays (a model
    on the GPU has its kernels and outputs copied to the host once).

    Attributes
    ----------
    theta_0 : ndarray (n_probe, n_train) or (n_probe, n_train, C, C)
        Empirical NTK at ``W_0``, output-resolved for label-site models.
    theta_inf : ndarray (n_probe, n_train)
        Infinite-bond-dimension NTK (times ``I_C`` for ``C`` outputs).
    f0 : ndarray (n_probe,) or (n_probe, C)
        Initial outputs.
    """

    theta_0: np.ndarray
    theta_inf: np.ndarray
    f0: np.ndarray
    y: np.ndarray
    n_train: int
    learning_rate: float
    reduction: str
    _k: dict = dataclasses.field(repr=False)
    _predict: dict = dataclasses.field(repr=False)

    def outputs(self, steps):
        """``(f_lin, f_inf)`` after the given numbers of steps, each of shape
        ``(n_steps, n_probe[, C])``."""
        return tuple(self._path(kind, steps) for kind in ("lin", "inf"))

    def losses(self, steps):
        """``(loss_lin, loss_inf)``: the closed-form training loss (4.1 (d)) at ``steps``."""
        mc = self.y.size
        f0 = self.f0.reshape(-1)[:mc]
        return tuple(
            dynamics.mse_loss_curve(self._k[kind][:mc], self.y, f0, steps, self.learning_rate,
                                    loss=self.reduction, discrete=True)
            for kind in ("lin", "inf"))

    def _path(self, kind, steps):
        mc = self.y.size
        f0, k = self.f0.reshape(-1), self._k[kind]
        predict = self._predict[kind]
        if f0.shape[0] > mc:
            tr, te = predict(steps, f0[:mc], f0[mc:], k[mc:])
            out = np.concatenate([tr, te], axis=-1)
        else:
            out = predict(steps, f0[:mc])
        return out.reshape(np.shape(steps) + self.f0.shape)


def kernel_predictions(mps, phi_train, y_train, probe=None, *, learning_rate, reduction="mean",
                       sigma=None):
    """The kernel-regime predictions of full-batch GD of ``mps`` on the squared loss.

    Parameters
    ----------
    mps : MPS
        The initial model.
    phi_train : ndarray, shape (m, n_sites, phys_dim)
    y_train : ndarray, shape (m,) or (m, C)
        Targets in the model's dtype (as :func:`mpsntk.train` takes them).
    probe : ndarray, shape (n_probe, n_sites, phys_dim), optional
        Where to predict; its first ``m`` rows must be ``phi_train`` (default: ``phi_train``).
    learning_rate : float
    reduction : {"mean", "sum"}
        The loss normalisation of the training run (``s = y.size`` or 1).
    sigma : optional per-site initial scale for ``Theta_inf`` (default: from ``MPS.random``)

    Returns
    -------
    KernelPredictions
    """
    if not isinstance(mps, MPS):
        raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
    phi_train = mps.check_features(phi_train, "phi_train")
    probe = phi_train if probe is None else mps.check_features(probe, "probe")
    m, C = phi_train.shape[0], mps.n_outputs
    if probe.shape[0] < m:
        raise ValueError(f"probe must start with the {m} training samples; got {probe.shape[0]} "
                         "rows")
    multi = mps.output_site is not None
    sig, rho = _model_sigma(mps, sigma), model_rho(mps, sigma)
    y = _host(_check_targets("mse", mps, phi_train, y_train, "y_train"), mps.xp)
    y = y.astype(np.float64)
    xp = mps.xp
    f0 = _host(mps(probe), xp).astype(np.float64)
    theta_0 = _host(ntk(mps, probe, phi_train, outputs="full"), xp).astype(np.float64)
    theta_inf = ntk_infinite(_host(probe, xp), _host(phi_train, xp), sigma=sig, rho=rho)
    k = {"lin": _flat_kernel(theta_0, C),
         "inf": np.kron(theta_inf, np.eye(C)) if multi else theta_inf}
    mc = y.size
    predict = {kind: dynamics.gradient_descent_mse(kk[:mc], y.reshape(-1), learning_rate,
                                                   loss=reduction, discrete=True)
               for kind, kk in k.items()}
    return KernelPredictions(theta_0=theta_0, theta_inf=theta_inf, f0=f0, y=y.reshape(-1),
                             n_train=m, learning_rate=learning_rate, reduction=reduction, _k=k,
                             _predict=predict)


def compare_mse(mps, phi_train, y_train, phi_test=None, *, learning_rate, n_steps, log_every=1,
                reduction="mean", sigma=None, n_ensemble=0, seed=0):
    """Train ``mps`` by full-batch GD on the squared loss next to its kernel predictions.

    Parameters
    ----------
    mps : MPS
    phi_train, y_train : training features (m, n_sites, d) and targets (m,) or (m, C)
    phi_test : optional test features; the probe set is train followed by test
    learning_rate, n_steps, log_every : as in :func:`mpsntk.train`
    reduction : {"mean", "sum"}
        ``s = y.size`` (the default, as in :func:`mpsntk.train` and
        :func:`mpsntk.dynamics.gradient_descent_mse`, so that one ``learning_rate`` means the same
        step everywhere) or ``s = 1`` (the sum form of theory 4.1, in which the spec states its
        step sizes, e.g. ``eta = 0.25 / lambda_max`` in T3).
    sigma : optional per-site initial scale for Theta_inf (default: from ``MPS.random``)
    n_ensemble : int
        Also train this many fresh initialisations (``MPS.random`` with seeds seed+1, ...)
        and compare the test-output mean and variance with the GP prediction (4.1 (e)).
        Needs a scalar-output model drawn by ``MPS.random`` and ``phi_test``.
    seed : int >= 0
        Base seed of the ensemble.

    All arguments are validated before any training starts.

    Returns
    -------
    MseComparison
    """
    if not isinstance(mps, MPS):
        raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
    phi_train = mps.check_features(phi_train, "phi_train")
    probe = phi_train if phi_test is None else np.concatenate(
        [phi_train, mps.check_features(phi_test, "phi_test")])
    m = phi_train.shape[0]
    multi = mps.output_site is not None
    # Everything the kernel predictions need is checked here, before the (long) training run.
    sig = _model_sigma(mps, sigma)
    n_ensemble = _check_int(n_ensemble, "n_ensemble", 0)
    seed = _check_seed(seed, base=True)
    if n_ensemble:
        missing = [why for bad, why in (
            (mps.init is None, "a model drawn by MPS.random (to draw fresh initialisations)"),
            (multi, "a scalar-output model (output_site=None)"),
            (phi_test is None, "phi_test (the ensemble statistics are test outputs)"),
        ) if bad]
        if missing:
            raise ValueError(f"n_ensemble = {n_ensemble} needs {' and '.join(missing)}")
        if n_ensemble < 2:
            raise ValueError(
                f"n_ensemble must be 0 (no ensemble) or >= 2 (the variance needs two "
                f"members); got {n_ensemble}"
            )
    res = train(mps, phi_train, y_train, learning_rate=learning_rate, n_steps=n_steps,
                reduction=reduction, probe=probe, log_every=log_every)
    y = np.asarray(y_train, dtype=np.float64)
    pred = kernel_predictions(mps, phi_train, y_train, probe, learning_rate=learning_rate,
                              reduction=reduction, sigma=sigma)
    theta_0, theta_inf = pred.theta_0, pred.theta_inf
    f_lin, f_inf = pred.outputs(res.steps)
    loss_lin, loss_inf = pred.losses(res.steps)
    f = np.asarray(res.probe_outputs, dtype=np.float64)
    ynorm = np.linalg.norm(y)

    def delta(other):
        diff = (f - other).reshape(len(res.steps), -1)
        return float(np.max(np.linalg.norm(diff, axis=1)) / ynorm)

    ensemble = None
    if n_ensemble:
        outs = []
        for s in range(n_ensemble):
            fresh = MPS.random(**{**mps.init, "seed": seed + 1 + s})
            r = train(fresh, phi_train, y_train, learning_rate=learning_rate, n_steps=n_steps,
                      reduction=reduction, probe=probe[m:], log_steps=[n_steps],
                      check_stability=False)  # same step size as the checked main run
            outs.append(r.probe_outputs[-1])
        outs = np.array(outs)
        k_nngp = nngp_infinite(probe, phi_train, sigma=sig)
        k_tt = nngp_infinite(probe[m:], sigma=sig)
        mean_pred, cov_pred = dynamics.ensemble_mean_cov(
            theta_inf[:m], theta_inf[m:], k_nngp[:m], k_nngp[m:], k_tt, y, n_steps,
            learning_rate, loss=reduction, discrete=True)
        ensemble = dict(mean=outs.mean(0), var=outs.var(0, ddof=1), mean_pred=mean_pred,
                        var_pred=np.diag(cov_pred), n=n_ensemble)
    return MseComparison(
        steps=res.steps, f=f, f_lin=f_lin, f_inf=f_inf, loss=res.loss, loss_lin=loss_lin,
        loss_inf=loss_inf, delta_lin=delta(f_lin), delta_inf=delta(f_inf), theta_0=theta_0,
        theta_inf=theta_inf, ensemble=ensemble, result=res)


@dataclasses.dataclass
class BornComparison:
    """A Born machine's real training next to its kernel-regime predictions (theory 4.3).

    Attributes
    ----------
    steps : ndarray (n_logged,)
    p : ndarray (n_logged, |Omega|)           real p_k on all configurations (a)
    p_frozen : ndarray (n_logged, |Omega|)    frozen-kernel ODE with Theta_0 and the same eta (b)
    p_closed_inf, p_closed_emp : ndarray      closed form with kappa_inf / mean diag Theta_0 (c)
    z_ratio : ndarray (n_logged,)             Z_k / Z_0 of the real model (d)
    kl : ndarray (n_logged,)                  KL(p_hat || p_k) (e)
    tau_inf, tau_emp : float                  relaxation times in steps
    err_closed_inf, err_closed_emp, err_frozen : float
        ``max_k max_x |p_k - prediction_k|``.
    p_hat : ndarray (|Omega|,)                empirical distribution of the data
    result : TrainResult
    """

    steps: np.ndarray
    p: np.ndarray
    p_frozen: np.ndarray
    p_closed_inf: np.ndarray
    p_closed_emp: np.ndarray
    z_ratio: np.ndarray
    kl: np.ndarray
    tau_inf: float
    tau_emp: float
    err_closed_inf: float
    err_closed_emp: float
    err_frozen: float
    p_hat: np.ndarray
    result: object


def compare_born(mps, data, *, learning_rate, n_steps, log_every=1, feature_scale=2**-0.5,
                 reduction="sum", sigma=None):
    """Train a Born machine on configurations ``data`` next to its kernel predictions.

    Enumerates all ``phys_dim ** n_sites`` configurations (small chains).  The NLL uses
    ``reduction`` ("sum": theory 4.3; tau = Z_0 / (4 eta m kappa)).  Its default, "sum", is
    that of the Born-machine closed forms it is compared with (:func:`mpsntk.dynamics.born_tau`,
    :func:`mpsntk.dynamics.born_frozen_kernel`), not :func:`mpsntk.train`'s "mean": pass
    ``reduction="mean"`` to train with the step of ``train(loss="born_nll")``.  ``sigma`` is
    the per-site initial scale for kappa_inf (default: from ``MPS.random``; required for other
    models).
    All arguments are validated before any training starts.
    """
    if not isinstance(mps, MPS):
        raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
    born._check_born_mps(mps)
    # Checked before the training run: the kernel predictions need sigma.
    sig = _model_sigma(mps, sigma)
    rho = model_rho(mps, sigma)
    data = born._as_configs(mps, data, "data")
    omega = datasets.all_configurations(mps.n_sites, mps.phys_dim)
    counts = datasets.configuration_counts(data, mps.phys_dim).astype(np.float64)
    m = data.shape[0]
    p_hat = counts / m

    def log_z(step, model):
        return {"log_z": born.log_partition(model, feature_scale)}

    res = train(mps, data, loss="born_nll", learning_rate=learning_rate, n_steps=n_steps,
                reduction=reduction, probe=omega, log_every=log_every, callbacks=[log_z],
                feature_scale=feature_scale)
    p = np.asarray(res.probe_outputs, dtype=np.float64)
    logz = np.array([c["log_z"] for c in res.callbacks])
    z_ratio = np.exp(logz - logz[0])
    phi_omega = features.onehot(omega, phys_dim=mps.phys_dim, scale=feature_scale,
                                dtype=mps.dtype)
    theta_0 = ntk(mps, phi_omega).astype(np.float64)
    psi_0 = np.asarray(mps(phi_omega), dtype=np.float64)
    frozen = dynamics.born_frozen_kernel(theta_0, psi_0, counts, learning_rate, n_steps,
                                         loss=reduction, log_every=log_every)
    z0 = float(np.exp(logz[0]))
    kappa_inf = float(np.sum(rho) * np.prod(sig**2 * feature_scale**2))
    kappa_emp = float(np.mean(np.diag(theta_0)))
    tau_inf = dynamics.born_tau(z0, learning_rate, m, kappa_inf, loss=reduction)
    tau_emp = dynamics.born_tau(z0, learning_rate, m, kappa_emp, loss=reduction)
    p0 = p[0]
    closed_inf = dynamics.born_closed_form(p_hat, p0, res.steps, tau_inf)
    closed_emp = dynamics.born_closed_form(p_hat, p0, res.steps, tau_emp)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p_hat > 0, p_hat * (np.log(p_hat) - np.log(p)), 0.0)
    frozen_p = frozen.p[np.searchsorted(frozen.steps, res.steps)]
    return BornComparison(
        steps=res.steps, p=p, p_frozen=frozen_p, p_closed_inf=closed_inf,
        p_closed_emp=closed_emp, z_ratio=z_ratio, kl=terms.sum(1), tau_inf=float(tau_inf),
        tau_emp=float(tau_emp), err_closed_inf=float(np.max(np.abs(p - closed_inf))),
        err_closed_emp=float(np.max(np.abs(p - closed_emp))),
        err_frozen=float(np.max(np.abs(p - frozen_p))), p_hat=p_hat, result=res)
