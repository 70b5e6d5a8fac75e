"""Distance of real training from its kernel-regime predictions (theory 5.2).

``lin_error(k) = ||f_k(P) - f_lin_k(P)|| / ||Y||`` with ``f_lin`` the exact gradient descent of the
model linearised at ``W_0`` (empirical ``Theta_0``), and ``inf_error(k)`` the same against the
infinite-bond-dimension prediction (``Theta_inf``), both started from the model's own ``f_0``.
The predictions are those of :func:`mpsntk.compare.kernel_predictions`, the routine
:func:`mpsntk.compare.compare_mse` uses, so ``max_k lin_error(k)`` is its ``delta_lin``.
They describe full-batch gradient descent on the squared loss (as :func:`mpsntk.train` runs it
without ``batch_size`` and ``label_noise``) with the same ``learning_rate`` and ``reduction``.
"""

from __future__ import annotations

import numpy as np

from .._backend import array_module
from .._validate import _check_choice, _check_positive_float, _describe
from ..compare import kernel_predictions
from ._common import _as_probe, _check_mps, _StepCallback, _to_host

__all__ = ["LinearizationMonitor", "linearization_error"]


def _probe_set(phi_train, phi_test):
    phi_train = _as_probe(phi_train, "phi_train")
    if phi_test is None:
        return phi_train, phi_train
    phi_test = _as_probe(phi_test, "phi_test")
    xp = array_module(phi_train, phi_test, names=["phi_train", "phi_test"])
    if phi_test.shape[1:] != phi_train.shape[1:] or phi_test.dtype != phi_train.dtype:
        raise ValueError(f"phi_test must have the (n_sites, phys_dim) and dtype of phi_train, "
                         f"{phi_train.shape[1:]} {phi_train.dtype}; got {phi_test.shape} "
                         f"{phi_test.dtype}")
    return phi_train, xp.concatenate([phi_train, phi_test])


def _errors(pred, steps, f):
    """Per-step relative distances of the real outputs ``f`` (n_steps, n_probe[, C]) from the
    linearised and infinite-width predictions."""
    ynorm = float(np.linalg.norm(pred.y))
    if ynorm == 0.0:
        raise ValueError("y_train is zero: the errors relative to ||Y|| are undefined")
    f_lin, f_inf = pred.outputs(steps)
    n = len(steps)
    return tuple(np.linalg.norm((f - g).reshape(n, -1), axis=1) / ynorm for g in (f_lin, f_inf))


def linearization_error(mps_0, steps, outputs, phi_train, y_train, phi_test=None, *,
                        learning_rate, reduction="mean", sigma=None):
    """Distance of a logged trajectory from the linearised and infinite-width predictions.

    Parameters
    ----------
    mps_0 : MPS
        The initial model of the run.
    steps : array_like of int, shape (n_logged,)
        Logged steps (``TrainResult.steps``).
    outputs : ndarray, shape (n_logged, n_probe) or (n_logged, n_probe, n_outputs)
        Real outputs on the probe set ``phi_train`` followed by ``phi_test``
        (``TrainResult.probe_outputs`` of ``mn.train(..., probe=probe)``); host or device.
    phi_train, y_train, phi_test
        Training features and targets (model dtype) and optional test features.
    learning_rate : float
    reduction : {"mean", "sum"}
        As given to :func:`mpsntk.train` (its default is "mean").
    sigma : optional per-site initial scale for ``Theta_inf`` (default: from ``MPS.random``)

    Returns
    -------
    dict
        ``lin_error`` and ``inf_error``: ndarrays of shape (n_logged,); their maxima are
        ``compare_mse``'s ``delta_lin`` and ``delta_inf`` (theory 5.2).
    """
    _check_mps(mps_0, "mps_0")
    learning_rate = _check_positive_float(learning_rate, "learning_rate")
    reduction = _check_choice(reduction, "reduction", ("mean", "sum"))
    phi_train, probe = _probe_set(phi_train, phi_test)
    st = np.asarray(steps)
    if st.ndim != 1 or st.size == 0 or st.dtype.kind not in "iu" or np.any(st < 0):
        raise ValueError(f"steps must be a non-empty 1-D array of integers >= 0; got {st!r}")
    f = _to_host(outputs, array_module(outputs, names=["outputs"]))
    want = (st.size, probe.shape[0]) + (() if mps_0.output_site is None else (mps_0.n_outputs,))
    if f.shape != want:
        raise ValueError(f"outputs must have shape {want} (logged steps, probe samples"
                         f"{'' if len(want) == 2 else ', outputs'}); got {f.shape}")
    if f.dtype.kind != "f" or not np.all(np.isfinite(f)):
        raise ValueError("outputs must be finite floating-point values")
    pred = kernel_predictions(mps_0, phi_train, y_train, probe, learning_rate=learning_rate,
                              reduction=reduction, sigma=sigma)
    lin, inf = _errors(pred, st, f.astype(np.float64))
    return {"lin_error": lin, "inf_error": inf}


class LinearizationMonitor(_StepCallback):
    """Callback for :func:`mpsntk.train`: distance from the kernel-regime predictions.

    The first call must be at step 0 (the predictions start from the initial model); it
    computes ``Theta_0`` and ``Theta_inf`` on the probe set (training samples, then
    ``phi_test``) and eigendecomposes them once.  Every call returns ``lin_error`` and
    ``inf_error`` at that step (theory 5.2; see :mod:`mpsntk.diagnostics`), whose maxima over
    the logged steps are ``compare_mse``'s ``delta_lin`` and ``delta_inf``.  The run must be
    full-batch gradient descent on the squared loss with the same ``learning_rate`` and
    ``reduction``.

    The kernels are ``n_probe x n_train`` (times ``C^2`` for ``C`` outputs) and live on the host
    in float64: a model on the GPU has them, and its probe outputs at each call, copied to the
    host.

    Parameters
    ----------
    phi_train : ndarray, shape (m, n_sites, phys_dim)
    y_train : ndarray, shape (m,) or (m, n_outputs)
        The training run's features and targets (the model's dtype and device).
    phi_test : ndarray, optional
        More probe samples.
    learning_rate : float
    reduction : {"mean", "sum"}
        As given to :func:`mpsntk.train` (its default is "mean").
    sigma : optional per-site initial scale for ``Theta_inf`` (default: from ``MPS.random``)
    """

    def __init__(self, phi_train, y_train, phi_test=None, *, learning_rate, reduction="mean",
                 sigma=None):
        self.phi_train, self.probe = _probe_set(phi_train, phi_test)
        m = self.phi_train.shape[0]
        if np.ndim(y_train) not in (1, 2) or np.shape(y_train)[0] != m:
            raise ValueError(f"y_train must have shape ({m},) or ({m}, n_outputs) like phi_train; "
                             f"got {_describe(y_train)}")
        self.y_train = y_train
        self.learning_rate = _check_positive_float(learning_rate, "learning_rate")
        self.reduction = _check_choice(reduction, "reduction", ("mean", "sum"))
        self.sigma = sigma
        super().__init__()

    def reset(self):
        super().reset()
        self.predictions = None

    def _compute(self, step, mps, first):
        if first:
            if step != 0:
                raise ValueError(
                    f"LinearizationMonitor must first be called at step 0 (the predictions start "
                    f"from the initial model); got step {step}: log step 0"
                )
            self.predictions = kernel_predictions(
                mps, self.phi_train, self.y_train, self.probe, learning_rate=self.learning_rate,
                reduction=self.reduction, sigma=self.sigma)
        f = _to_host(mps(self.probe), mps.xp).astype(np.float64)
        lin, inf = _errors(self.predictions, [step], f[None])
        return {"lin_error": float(lin[0]), "inf_error": float(inf[0])}
