"""The path kernel: the NTK averaged along the training trajectory.

``K_path = (1/T) int_0^T Theta_t dt`` is the classical analogue of the quantum path kernel of
Incudini et al. 2022 (after Domingos 2020: a model trained by gradient flow is a kernel machine
with this kernel, weighted by the loss derivatives).  :class:`PathKernel` accumulates it from the
kernels at the logged steps of :func:`mpsntk.train` by the trapezoid rule, holding the running
integral, its error estimate and the last two kernels; :func:`compare_kernel_regression`
compares ridge regression with ``Theta_0``, ``Theta_inf``, ``Theta_T`` and ``K_path`` on one
split.

Error estimate.  The trapezoid rule is exact for kernels linear between logged steps.  On the
pairs of intervals ``[t_0, t_2], [t_2, t_4], ...`` it is compared with the coarse rule on the
pairs' end points: for a smooth integrand and equal steps the difference ``delta`` is ``-3 e``
to leading order, with ``e`` the fine rule's error (Richardson: the coarse step is twice as
long, its error four times as large).  The estimate is ``||sum_pairs delta||_F / T``, three
times that leading-order error (a safety factor of 3 over Richardson's ``delta / 3``, for steps
where higher orders still matter).  An unpaired last interval contributes half the ``delta`` of
the overlapping pair ``[t_{n-2}, t_n]`` (one interval's share, times three).  The integral, the
sum of the ``delta`` and the last two kernels are held: four kernels in all.
"""

from __future__ import annotations

import numpy as np

from .. import dynamics
from .._validate import _describe
from ..compare import _model_sigma, model_rho
from ..infinite import ntk_infinite
from ..ntk import ntk
from ._common import _as_probe, _as_real_array, _check_mps, _frobenius, _StepCallback, _to_host

__all__ = ["PathKernel", "compare_kernel_regression", "kernel_regression_table", "path_kernel"]


class _Trapezoid:
    """Running trapezoid integral of a kernel over increasing times, with the fine-versus-coarse
    error estimate of the module docstring."""

    def __init__(self):
        self.n = 0  # nodes added
        self.t0 = None
        self.t = []  # the last two times
        self.k = []  # the last two kernels
        self.integral = None
        self.delta = None  # sum of fine - coarse over the pairs (0, 1, 2), (2, 3, 4), ...
        self.tail = None  # fine - coarse on the overlapping last pair, after an odd node

    def add(self, t, kernel):
        if self.n == 0:
            self.t0 = t
        else:
            if t <= self.t[-1]:
                raise ValueError(f"times must increase; got {t} after {self.t[-1]}")
            if kernel.shape != self.k[-1].shape:
                raise ValueError(f"kernels must keep one shape; got {kernel.shape} after "
                                 f"{self.k[-1].shape}")
            piece = (0.5 * (t - self.t[-1])) * (self.k[-1] + kernel)
            self.integral = piece if self.integral is None else self.integral + piece
        if self.n >= 2:  # nodes n-2, n-1, n: fine rule minus coarse rule on the pair
            (t0, t1), (k0, k1) = self.t, self.k
            h1, h2 = t1 - t0, t - t1
            delta = (0.5 * h1) * (k0 + k1) + (0.5 * h2) * (k1 + kernel)
            delta -= (0.5 * (h1 + h2)) * (k0 + kernel)
            if self.n % 2 == 0:  # a new pair of the non-overlapping sequence
                self.delta = delta if self.delta is None else self.delta + delta
                self.tail = None
            else:
                self.tail = delta
        self.t = (self.t + [t])[-2:]
        self.k = (self.k + [kernel])[-2:]
        self.n += 1

    @property
    def time(self):
        return self.t[-1] - self.t0 if self.n else 0.0

    def kernel(self):
        return self.k[-1] if self.n == 1 else self.integral / self.time

    def error(self, xp):
        """Estimated error of :meth:`kernel` (Frobenius norm); NaN with fewer than 3 nodes."""
        if self.n < 3:
            return float("nan")
        total = self.delta if self.tail is None else (
            self.tail / 2 if self.delta is None else self.delta + self.tail / 2)
        return _frobenius(total, xp) / self.time


def path_kernel(kernels, times):
    """``(1/T) int Theta_t dt`` of kernels given at increasing times, by the trapezoid rule.

    Parameters
    ----------
    kernels : iterable of ndarray
        Kernels of one shape at ``times`` (NumPy or CuPy; a generator keeps one in memory at a
        time).
    times : array_like, shape (n_times,)
        Strictly increasing times (steps, or ``learning_rate * steps``: ``K_path`` does not
        depend on the unit).

    Returns
    -------
    kernel : ndarray
        ``K_path`` (the single kernel itself when ``n_times == 1``), float64.
    error : float
        Estimated error ``||K_path - K_exact||_F`` (see the module docstring; NaN with fewer than
        3 times).
    """
    ts = np.asarray(times)
    if ts.ndim != 1 or ts.size == 0 or ts.dtype.kind not in "iuf" or not np.all(
            np.isfinite(ts)):
        raise ValueError(f"times must be a non-empty 1-D array of finite numbers; got "
                         f"{_describe(times)}")
    acc = _Trapezoid()
    count = 0
    for i, k in enumerate(kernels):
        if i >= ts.size:
            raise ValueError(f"kernels must hold one kernel per time ({ts.size}); got more")
        arr, xp = _as_real_array(k, f"kernels[{i}]", "(a kernel)")
        acc.add(float(ts[i]), arr)
        count += 1
    if count != ts.size:
        raise ValueError(f"kernels must hold one kernel per time ({ts.size}); got {count}")
    return acc.kernel(), acc.error(xp)


class PathKernel(_StepCallback):
    """Callback for :func:`mpsntk.train` accumulating ``K_path = (1/T) int Theta_t dt``.

    At each logged step it computes ``Theta_t = mn.ntk(mps, probe)`` (for label-site models
    ``outputs="mean"``, the kernel that multiplies ``I_C`` in the infinite-width limit) and adds
    it to a running trapezoid integral over the steps; the time origin is the first call.
    Memory: the running integral, its error estimate and the last two kernels, in float64 on the
    model's device; nothing grows with the number of logged steps.
    Each call returns ``path_time`` (steps integrated so far) and ``path_error``: the
    estimated relative error ``||K_path - K_exact||_F / ||K_path||_F`` of the quadrature (module
    docstring; NaN before the third logged step).  The quadrature sees only the logged steps:
    log often enough for the kernel to be nearly linear in between.

    Attributes
    ----------
    kernel : ndarray, shape (n_probe, n_probe)
        ``K_path`` so far (``Theta`` itself after one call).
    error_estimate : float
        Estimated absolute error (Frobenius norm) of ``kernel``.
    time : float
        ``T``, in steps.

    Parameters
    ----------
    probe : ndarray, shape (n_probe, n_sites, phys_dim)
        Features on the model's device and in its dtype; for :func:`compare_kernel_regression`
        the training samples followed by the test samples.
    """

    def __init__(self, probe):
        self.probe = _as_probe(probe)
        super().__init__()

    def reset(self):
        super().reset()
        self._acc, self._xp = None, np

    def _compute(self, step, mps, first):
        if first:
            mps.check_features(self.probe, "probe")
            self._acc = _Trapezoid()
        theta = ntk(mps, self.probe, outputs="mean").astype(mps.xp.float64)
        self._acc.add(float(step), theta)
        self._xp = mps.xp
        return {"path_time": self.time, "path_error": self.relative_error}

    def _require(self):
        if self._acc is None or self._acc.n == 0:
            raise ValueError("PathKernel has not been called yet (pass it to mn.train)")
        return self._acc

    @property
    def kernel(self):
        return self._require().kernel()

    @property
    def error_estimate(self):
        return self._require().error(self._xp)

    @property
    def relative_error(self):
        acc = self._require()
        if acc.n < 3:
            return float("nan")
        return acc.error(self._xp) / _frobenius(acc.kernel(), self._xp)

    @property
    def time(self):
        return self._require().time


def _as_targets(y, name, outputs=None):
    """Host float64 targets of shape (n,) or (n, C); ``outputs`` fixes the trailing shape."""
    t, xp = _as_real_array(y, name, "of shape (n_samples,) or (n_samples, n_outputs)")
    if t.ndim not in (1, 2) or (outputs is not None and t.shape[1:] != outputs):
        want = ("(n_samples,) or (n_samples, n_outputs)" if outputs is None
                else "(n_samples,)" if not outputs else f"(n_samples, {outputs[0]})")
        like = "" if outputs is None else " (the outputs of y_train)"
        raise ValueError(f"{name} must have shape {want}{like}; got {t.shape}")
    return _to_host(t, xp)


def kernel_regression_table(kernels, y_train, y_test, *, ridge):
    """Kernel ridge regression with several kernels on one train/test split.

    Each kernel predicts ``f(x) = K(x, X) (K(X, X) + ridge I)^+ Y`` (the ``t -> inf`` limit of
    :func:`mpsntk.dynamics.gradient_descent_mse` with ``diag_reg=ridge``; the pseudo-inverse
    where ``ridge = 0`` leaves a null space) on the training and the test samples.  ``ridge``
    is the same absolute number for every kernel.

    Parameters
    ----------
    kernels : dict
        Name -> kernel of shape ``(m + n_test, m)`` or ``(m + n_test, m + n_test)`` on the
        training samples followed by the test samples (only the first ``m`` columns are used);
        NumPy or CuPy.
    y_train : ndarray, shape (m,) or (m, C)
    y_test : ndarray, shape (n_test,) or (n_test, C)
    ridge : float >= 0

    Returns
    -------
    dict
        Name -> ``{"train_mse", "test_mse"}`` (mean over entries of the squared error), plus
        ``"test_accuracy"`` (argmax of the outputs against argmax of ``y_test``) for 2-D
        targets.
    """
    if not isinstance(kernels, dict) or not kernels:
        raise TypeError(f"kernels must be a non-empty dict name -> kernel; got "
                        f"{_describe(kernels)}")
    ridge = dynamics._check_nonnegative_float(ridge, "ridge")
    y_tr = _as_targets(y_train, "y_train")
    y_te = _as_targets(y_test, "y_test", y_tr.shape[1:])
    m, n_test = y_tr.shape[0], y_te.shape[0]
    y_all = np.concatenate([y_tr, y_te])
    table = {}
    for name, k in kernels.items():
        arr, xp = _as_real_array(k, f"kernels[{name!r}]", f"of shape ({m + n_test}, >= {m})")
        if arr.ndim != 2 or arr.shape[0] != m + n_test or arr.shape[1] < m:
            raise ValueError(f"kernels[{name!r}] must have shape ({m + n_test}, {m}) or "
                             f"({m + n_test}, {m + n_test}) (train rows, then test); got "
                             f"{arr.shape}")
        arr = _to_host(arr, xp)[:, :m]
        predict = dynamics.gradient_descent_mse(arr[:m], y_tr, diag_reg=ridge, loss="sum")
        _, f = predict(np.inf, 0.0, 0.0, arr)
        err = (f - y_all) ** 2
        row = {"train_mse": float(err[:m].mean()), "test_mse": float(err[m:].mean())}
        if y_tr.ndim == 2:
            row["test_accuracy"] = float(np.mean(f[m:].argmax(1) == y_te.argmax(1)))
        table[name] = row
    return table


def compare_kernel_regression(mps_0, mps_t, path, phi_train, y_train, phi_test, y_test, *,
                              ridge, sigma=None):
    """Ridge regression with ``Theta_0``, ``Theta_inf``, ``Theta_T`` and ``K_path`` (same ridge,
    same split).

    Parameters
    ----------
    mps_0, mps_t : MPS
        The initial and the trained model (``TrainResult.mps``).
    path : PathKernel
        The callback of the training run, with ``probe`` = ``phi_train`` followed by
        ``phi_test``.
    phi_train, y_train, phi_test, y_test
        The split: features (model dtype and device) and float targets, ``(n,)`` or ``(n, C)``.
    ridge : float >= 0
    sigma : optional per-site initial scale for ``Theta_inf`` (default: from ``MPS.random``)

    Returns
    -------
    dict
        :func:`kernel_regression_table` with rows ``"theta_0"``, ``"theta_inf"``,
        ``"theta_T"`` and ``"path"``.  Label-site models use the output-averaged kernels
        (``outputs="mean"``), the ones that multiply ``I_C`` in the infinite-width limit.
    """
    _check_mps(mps_0, "mps_0")
    _check_mps(mps_t, "mps_t")
    if not isinstance(path, PathKernel):
        raise TypeError(f"path must be a PathKernel callback; got {_describe(path)}")
    phi_train = mps_0.check_features(phi_train, "phi_train")
    phi_test = mps_0.check_features(phi_test, "phi_test")
    xp = mps_0.xp
    m, n_test = phi_train.shape[0], phi_test.shape[0]
    k_path = path.kernel
    probe = xp.concatenate([phi_train, phi_test])
    if path.probe.shape != probe.shape or not bool(xp.array_equal(path.probe, probe)):
        raise ValueError(f"the path kernel's probe set (shape {path.probe.shape}) must be "
                         f"phi_train followed by phi_test ({m} + {n_test} samples)")
    for name, t, n in (("y_train", y_train, m), ("y_test", y_test, n_test)):
        if np.ndim(t) not in (1, 2) or np.shape(t)[0] != n:
            raise ValueError(f"{name} must have {n} rows, one per sample; got {_describe(t)}")
    host = [_to_host(a, xp) for a in (probe, phi_train)]
    kernels = {
        "theta_0": ntk(mps_0, probe, phi_train, outputs="mean"),
        "theta_inf": ntk_infinite(*host, sigma=_model_sigma(mps_0, sigma),
                                  rho=model_rho(mps_0, sigma)),
        "theta_T": ntk(mps_t, probe, phi_train, outputs="mean"),
        "path": k_path,
    }
    return kernel_regression_table(kernels, y_train, y_test, ridge=ridge)
