"""Closed-form training dynamics in the kernel regime (spec section 4).

With a constant neural tangent kernel ``Theta`` the outputs of a model trained
by gradient descent on a squared loss evolve linearly, and the whole trajectory
has a closed form (Jacot et al. 2018; Lee et al. 2019). This module evaluates
it, in the spirit of the ``predict`` module of neural-tangents, for

* gradient flow and discrete gradient descent on the mean squared error
  (:func:`gradient_descent_mse`, :func:`mse_loss_curve`, :func:`mse_loss`);
* the mean and covariance over random initialisations of an infinitely wide
  ensemble (:func:`ensemble_mean_cov`);
* the Born machine with kernel ``Theta = kappa I`` on the configuration space
  (:func:`born_closed_form`, :func:`born_tau`, :func:`born_kappa_infinite`)
  and the frozen-kernel function-space iteration of a Born machine with any
  kernel (:func:`born_frozen_kernel`).

Conventions
-----------
The squared loss is ``L = sum_i ||f(x_i) - y_i||**2 / (2 s)`` with ``s = 1``
for ``loss="sum"`` and ``s = y_train.size = m C`` for ``loss="mean"`` (the
neural-tangents convention). Gradient flow at learning rate ``eta`` is
``df/dt = -(eta / s) Theta(x, X) (f(X) - Y)``; discrete gradient descent is
the update ``f <- f - (eta / s) Theta(x, X) (f(X) - Y)`` and its time is the
number of steps.

NTKs are only positive semi-definite (spec section 3.4: duplicate inputs or
more samples than ``d**N`` make them singular), so no kernel is ever inverted.
One eigendecomposition ``Theta = U diag(lam) U^T`` is computed per problem and
eigenvalues below ``m * eps * lam_max`` (including rounding-level negative ones,
down to ``-1e-4 lam_max``) are treated as exact zeros, for which every formula
takes its ``lam -> 0`` limit.

Everything is computed and returned in float64.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from ._spectral import _spectrum
from ._validate import (
    _as_site_vector,
    _check_array_fits,
    _check_bool,
    _check_choice,
    _check_fits,
    _check_int,
    _check_positive_float,
    _describe,
)
from .infinite import _site_rates

__all__ = [
    "gradient_descent_mse",
    "mse_loss",
    "mse_loss_curve",
    "ensemble_mean_cov",
    "born_closed_form",
    "born_tau",
    "born_kappa_infinite",
    "born_frozen_kernel",
    "BornTrajectory",
]

_LOSSES = ("mean", "sum")
_PARAMETRIZATIONS = ("ntk", "standard")

# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _as_real(value, name, expected):
    """Return ``value`` as a finite float64 ndarray; ``expected`` describes the wanted shape."""
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array {expected}; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got NaN or Inf entries")
    return arr


def _tolerance(value):
    """Relative tolerance for asymmetry and negative eigenvalues of a kernel.

    ``max(1e-4, sqrt(eps))`` of the input dtype: loose enough for kernels
    accumulated in float32 and cast to float64, tight enough to reject
    matrices that are not kernels at all.
    """
    dtype = np.asarray(value).dtype
    eps = np.finfo(dtype).eps if dtype.kind == "f" else np.finfo(np.float64).eps
    return max(1e-4, float(np.sqrt(eps)))


def _as_square_kernel(value, name, size=None):
    """Validate a finite, symmetric ``(size, size)`` kernel and return it symmetrised."""
    expected = "of shape (n, n)" if size is None else f"of shape ({size}, {size})"
    arr = _as_real(value, name, expected)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty square array {expected}; got shape {arr.shape}"
        )
    if size is not None and arr.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size}, {size}); got {arr.shape}")
    scale = float(np.max(np.abs(arr)))
    asym = float(np.max(np.abs(arr - arr.T)))
    if asym > _tolerance(value) * scale:
        raise ValueError(
            f"{name} must be symmetric; got max |k - k^T| = {asym:.3g} for max |k| = {scale:.3g}"
        )
    return 0.5 * (arr + arr.T)


def _as_cross_kernel(value, name, n_train):
    """Validate a finite ``(n_test, n_train)`` kernel."""
    arr = _as_real(value, name, f"of shape (n_test, {n_train})")
    if arr.ndim != 2 or arr.shape[1] != n_train or arr.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (n_test, n_train) = (n_test, {n_train}) with n_test >= 1; "
            f"got shape {arr.shape}"
        )
    return arr


def _as_targets(value, name="y_train"):
    """Return ``(y2d, one_dim)``: targets as ``(m, C)`` and whether they came in 1-D."""
    arr = _as_real(value, name, "of shape (m,) or (m, C)")
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ValueError(
            f"{name} must be a non-empty array of shape (m,) or (m, C); got shape {arr.shape}"
        )
    return (arr[:, None], True) if arr.ndim == 1 else (arr, False)


def _as_outputs(value, name, shape):
    """Validate initial outputs of exactly ``shape`` (a scalar broadcasts) as float64."""
    arr = _as_real(value, name, f"of shape {shape}")
    if arr.ndim == 0:
        return np.full(shape, float(arr))
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (or be a scalar); got {arr.shape}")
    return arr


def _check_nonnegative_float(value, name):
    """Return ``value`` as a float after checking that it is real, finite and >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative finite real number; got {_describe(value)}")
    value = float(value)
    if not np.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a non-negative finite real number; got {value}")
    return value


def _as_times(t, discrete, name="t"):
    """Validate times; return ``(times_1d, is_scalar)``.

    Times are non-negative reals (``inf`` allowed, meaning the ``t -> inf``
    limit); in discrete mode finite times must be integers (numbers of steps).
    """
    arr = np.asarray(t)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must be a non-negative real scalar or 1-D array; got {_describe(t)}"
        )
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array; got shape {arr.shape}")
    times = np.atleast_1d(arr).astype(np.float64)
    if np.any(np.isnan(times)):
        raise ValueError(f"{name} must not contain NaN")
    if np.any(times < 0):
        raise ValueError(f"{name} must be >= 0; got minimum {times.min()}")
    if discrete:
        finite = times[np.isfinite(times)]
        if np.any(finite != np.round(finite)):
            bad = finite[finite != np.round(finite)][0]
            raise ValueError(
                f"{name} must be a non-negative integer number of steps when discrete=True; "
                f"got {bad}"
            )
    return times, arr.ndim == 0


# ---------------------------------------------------------------------------
# Spectral machinery
# ---------------------------------------------------------------------------


def _decay_and_solve(spec, times, rate, discrete):
    """Per-mode decay factors and ``S_t`` entries, each of shape ``(n_times, m)``.

    Gradient flow: ``decay = exp(-rate lam t)``, ``S = (1 - decay) / lam``.
    Discrete: ``decay = (1 - rate lam)**t``, ``S = (1 - decay) / lam``.
    Zero modes: ``decay = 1``, ``S = rate t`` (``S = 0`` at ``t = inf``, the
    pseudo-inverse limit).
    """
    lam, zero = spec.lam, spec.zero
    safe = np.where(zero, 1.0, lam)
    tt = times[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        if not discrete:
            exponent = -rate * lam * tt
            decay = np.exp(exponent)
            solve = -np.expm1(exponent) / safe
        else:
            a = rate * lam
            small = a < 1.0
            log_q = np.log1p(-np.where(small, a, 0.0))
            exponent = tt * log_q
            decay_small = np.exp(exponent)
            solve_small = -np.expm1(exponent) / safe
            decay_large = np.power(1.0 - a, tt)
            solve_large = (1.0 - decay_large) / safe
            decay = np.where(small, decay_small, decay_large)
            solve = np.where(small, solve_small, solve_large)
    finite = np.isfinite(tt)
    decay = np.where(zero, 1.0, decay)
    solve = np.where(zero, np.where(finite, rate * tt, 0.0), solve)
    return decay, solve


def _prepare(k_train_train, y_train, learning_rate, diag_reg, loss, discrete):
    """Shared validation and eigendecomposition for the MSE routines."""
    learning_rate = _check_positive_float(learning_rate, "learning_rate")
    diag_reg = _check_nonnegative_float(diag_reg, "diag_reg")
    _check_choice(loss, "loss", _LOSSES)
    discrete = _check_bool(discrete, "discrete")
    y2d, one_dim = _as_targets(y_train)
    m = y2d.shape[0]
    # float64 copies of the kernel (validation, ridge) and the eigenvectors, beside the input
    _check_fits(4 * 8 * m * m, f"the eigendecomposition of a ({m}, {m}) kernel",
                "use mpsntk.linalg.gradient_descent_mse, which never forms the kernel")
    kernel = _as_square_kernel(k_train_train, "k_train_train", m)
    if diag_reg:
        kernel = kernel + diag_reg * np.eye(m)
    spec = _spectrum(kernel, "k_train_train", _tolerance(k_train_train))
    s = float(y2d.size) if loss == "mean" else 1.0
    rate = learning_rate / s
    if discrete and rate * spec.lam_max >= 2.0:
        raise ValueError(
            "learning_rate is too large for discrete gradient descent: stability needs "
            f"learning_rate * lam_max / s < 2; got {learning_rate:g} * {spec.lam_max:.6g} / "
            f"{s:g} = {rate * spec.lam_max:.6g}"
        )
    return y2d, one_dim, spec, rate, discrete


def _shape_out(arr, one_dim, scalar):
    """Drop the output axis of 1-D targets and the time axis of scalar times."""
    if one_dim:
        arr = arr[..., 0]
    if scalar:
        arr = arr[0]
    return arr


# ---------------------------------------------------------------------------
# Mean squared error
# ---------------------------------------------------------------------------


def gradient_descent_mse(
    k_train_train, y_train, learning_rate=1.0, diag_reg=0.0, loss="mean", discrete=False
):
    """Closed-form outputs of a kernel-regime model trained on the squared loss.

    For a constant kernel ``Theta`` (spec section 4.1), gradient flow gives

    ``f_t(X) = Y + exp(-eta Theta t / s) (f_0(X) - Y)``,
    ``f_t(x*) = f_0(x*) - Theta(x*, X) S_t (f_0(X) - Y)``,

    with ``S_t = U diag((1 - exp(-eta lam_a t / s)) / lam_a) U^T`` for
    ``Theta = U diag(lam) U^T`` and the ``lam_a -> 0`` limit ``eta t / s``.
    Discrete gradient descent replaces ``exp(-eta lam t / s)`` by
    ``(1 - eta lam / s)**t`` with ``t`` the number of steps; it is exactly the
    iteration ``f <- f - (eta / s) Theta (f(X) - Y)``.

    The eigendecomposition of ``k_train_train + diag_reg I`` is computed once,
    here; the returned function only applies it.

    Parameters
    ----------
    k_train_train : array_like, shape (m, m)
        Symmetric positive semi-definite kernel on the training inputs, e.g.
        an empirical NTK (:func:`mpsntk.ntk`) or its infinite-bond-dimension
        limit (:func:`mpsntk.ntk_infinite`). Singular kernels are allowed.
    y_train : array_like, shape (m,) or (m, C)
        Training targets.
    learning_rate : float, optional
        Positive, finite learning rate ``eta``.
    diag_reg : float, optional
        Non-negative ridge ``r`` added to the diagonal: the dynamics use the
        kernel ``k_train_train + r I`` on the training set (and
        ``k_test_train`` unchanged between test and training inputs).
    loss : {"mean", "sum"}, optional
        ``"mean"``: ``L = sum ||f - y||**2 / (2 y_train.size)``; ``"sum"``:
        ``L = sum ||f - y||**2 / 2``.
    discrete : bool, optional
        If true, ``t`` counts discrete gradient-descent steps; otherwise it is
        the continuous time of gradient flow.

    Returns
    -------
    predict_fn : callable
        ``predict_fn(t, fx_train_0, fx_test_0=None, k_test_train=None)``.

        ``t`` is a non-negative scalar or 1-D array (``numpy.inf`` gives the
        converged limit; with ``discrete=True`` finite entries must be
        integers). ``fx_train_0`` are the initial outputs on the training
        inputs, of the shape of ``y_train`` (a scalar broadcasts).
        ``fx_test_0``, of shape ``(n_test,)`` or ``(n_test, C)`` (or a
        scalar), and ``k_test_train``, of shape ``(n_test, m)``, are given
        together to predict test outputs.

        It returns the training outputs ``fx_train_t`` (shape of ``y_train``)
        when ``fx_test_0`` is None, and ``(fx_train_t, fx_test_t)`` otherwise.
        For a 1-D ``t`` each result gets a leading axis of length ``len(t)``.

    Raises
    ------
    TypeError
        If an array is not real numeric, ``learning_rate`` or ``diag_reg`` is
        not a real number, or ``discrete`` is not a bool.
    ValueError
        If shapes are inconsistent, an array contains NaN/Inf, the kernel is
        not symmetric or has a clearly negative eigenvalue,
        ``learning_rate`` is not positive, ``diag_reg`` is negative, ``loss``
        is unknown, or, for ``discrete=True``, ``learning_rate * lam_max / s
        >= 2`` (the iteration diverges).

    Notes
    -----
    Eigenvalues below ``m * eps * lam_max`` are treated as exactly zero: such
    modes of the training residual do not decay. At ``t = inf`` the test
    prediction uses the pseudo-inverse of the kernel, the limit of finite
    ``t`` whenever ``k_test_train`` vanishes on the kernel's null space (true
    when both kernels are Gram matrices of one feature map, as NTKs are).

    Examples
    --------
    >>> import numpy as np
    >>> from mpsntk.dynamics import gradient_descent_mse
    >>> k = np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> predict = gradient_descent_mse(k, np.array([1.0, -1.0]), loss="sum")
    >>> predict(np.inf, np.zeros(2)).round(12)
    array([ 1., -1.])
    """
    y2d, one_dim, spec, rate, discrete = _prepare(
        k_train_train, y_train, learning_rate, diag_reg, loss, discrete
    )
    m, n_out = y2d.shape
    vecs = spec.vecs

    def predict_fn(t, fx_train_0, fx_test_0=None, k_test_train=None):
        """Outputs at times ``t``; see :func:`gradient_descent_mse`."""
        times, scalar = _as_times(t, discrete)
        f0 = _as_outputs(fx_train_0, "fx_train_0", (m,) if one_dim else (m, n_out))
        f0 = f0.reshape(m, n_out)
        if fx_test_0 is None and k_test_train is not None:
            raise ValueError(
                "fx_test_0 must be given with k_test_train (use 0.0 for zero initial outputs)"
            )
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("k_test_train of shape (n_test, m) must be given with fx_test_0")
        decay, solve = _decay_and_solve(spec, times, rate, discrete)
        proj = vecs.T @ (f0 - y2d)
        train = y2d + np.einsum("ia,ta,ac->tic", vecs, decay, proj)
        train = _shape_out(train, one_dim, scalar)
        if fx_test_0 is None:
            return train
        k_tx = _as_cross_kernel(k_test_train, "k_test_train", m)
        n_test = k_tx.shape[0]
        f0_test = _as_outputs(fx_test_0, "fx_test_0", (n_test,) if one_dim else (n_test, n_out))
        f0_test = f0_test.reshape(n_test, n_out)
        k_vecs = k_tx @ vecs
        test = f0_test - np.einsum("na,ta,ac->tnc", k_vecs, solve, proj)
        return train, _shape_out(test, one_dim, scalar)

    return predict_fn


def mse_loss(fx, y_train, loss="mean"):
    """Squared loss ``L = sum ||f - y||**2 / (2 s)`` of outputs against targets.

    Parameters
    ----------
    fx : array_like, shape y_train.shape or (n_times,) + y_train.shape
        Outputs, optionally with a leading time axis (as returned by the
        ``predict_fn`` of :func:`gradient_descent_mse` for a 1-D ``t``).
    y_train : array_like, shape (m,) or (m, C)
        Targets.
    loss : {"mean", "sum"}, optional
        ``s = y_train.size`` for ``"mean"``, ``s = 1`` for ``"sum"``.

    Returns
    -------
    float or ndarray of shape (n_times,)
        The loss (per time when ``fx`` has a leading time axis).

    Raises
    ------
    TypeError
        If an array is not real numeric.
    ValueError
        If the shapes disagree, an array contains NaN/Inf or ``loss`` is
        unknown.
    """
    _check_choice(loss, "loss", _LOSSES)
    y2d, one_dim = _as_targets(y_train)
    y = y2d[:, 0] if one_dim else y2d
    f = _as_real(fx, "fx", f"of shape {y.shape} or (n_times,) + {y.shape}")
    if f.shape == y.shape:
        batched = False
    elif f.ndim == y.ndim + 1 and f.shape[1:] == y.shape:
        batched = True
    else:
        raise ValueError(f"fx must have shape {y.shape} or (n_times,) + {y.shape}; got {f.shape}")
    s = float(y.size) if loss == "mean" else 1.0
    sq = (f - y) ** 2
    if batched:
        return sq.reshape(f.shape[0], -1).sum(axis=1) / (2.0 * s)
    return float(sq.sum() / (2.0 * s))


def mse_loss_curve(
    k_train_train,
    y_train,
    fx_train_0,
    t,
    learning_rate=1.0,
    diag_reg=0.0,
    loss="mean",
    discrete=False,
):
    """Closed-form training loss ``L_t = (1/2s) sum_a decay_a(t)**2 (u_a . e_0)**2``.

    ``e_0 = f_0(X) - Y`` is the initial residual, ``u_a`` the eigenvectors of
    the kernel, and ``decay_a(t) = exp(-eta lam_a t / s)`` (gradient flow) or
    ``(1 - eta lam_a / s)**t`` (discrete steps); for several outputs the
    squared projections are summed over outputs (spec section 4.1 (d)).

    Parameters
    ----------
    k_train_train : array_like, shape (m, m)
        Symmetric positive semi-definite training kernel.
    y_train : array_like, shape (m,) or (m, C)
        Training targets.
    fx_train_0 : array_like, shape of y_train, or scalar
        Initial training outputs.
    t : float or array_like of shape (n_times,)
        Non-negative times (integers when ``discrete=True``; ``inf`` allowed).
    learning_rate, diag_reg, loss, discrete
        As in :func:`gradient_descent_mse`.

    Returns
    -------
    float or ndarray of shape (n_times,)
        The loss at each time.

    Raises
    ------
    TypeError, ValueError
        As :func:`gradient_descent_mse` and its ``predict_fn``.
    """
    y2d, one_dim, spec, rate, discrete = _prepare(
        k_train_train, y_train, learning_rate, diag_reg, loss, discrete
    )
    times, scalar = _as_times(t, discrete)
    m, n_out = y2d.shape
    f0 = _as_outputs(fx_train_0, "fx_train_0", (m,) if one_dim else (m, n_out)).reshape(m, n_out)
    weights = np.sum((spec.vecs.T @ (f0 - y2d)) ** 2, axis=1)
    decay, _ = _decay_and_solve(spec, times, rate, discrete)
    s = float(y2d.size) if loss == "mean" else 1.0
    curve = (decay**2 @ weights) / (2.0 * s)
    return float(curve[0]) if scalar else curve


def ensemble_mean_cov(
    ntk_train_train,
    ntk_test_train,
    nngp_train_train,
    nngp_test_train,
    nngp_test_test,
    y_train,
    t,
    learning_rate=1.0,
    diag_reg=0.0,
    loss="mean",
    discrete=False,
):
    """Mean and covariance of test outputs over an ensemble of initialisations.

    For infinitely wide models the initial outputs are a centred Gaussian
    process with kernel ``K`` (the NNGP kernel) and training follows the
    constant NTK ``Theta``; the outputs at time ``t`` are then Gaussian with
    (spec section 4.1, Lee et al. 2019)

    ``mu_t(x*) = Theta(x*, X) S_t Y``,
    ``Sigma_t = K** + Theta*X S_t K S_t Theta_X* - (Theta*X S_t K_X* + h.c.)``,

    with ``S_t`` as in :func:`gradient_descent_mse`. For MPS models
    ``Theta_inf = (sum_j rho_j) K`` (spec section 3.2), and at ``t = inf`` this
    is exactly the noise-free GP posterior ``K*X K^{-1} Y``,
    ``K** - K*X K^{-1} KX*``.

    Parameters
    ----------
    ntk_train_train : array_like, shape (m, m)
        NTK on the training inputs (symmetric positive semi-definite).
    ntk_test_train : array_like, shape (n_test, m)
        NTK between test and training inputs.
    nngp_train_train : array_like, shape (m, m)
        NNGP kernel on the training inputs (symmetric).
    nngp_test_train : array_like, shape (n_test, m)
        NNGP kernel between test and training inputs.
    nngp_test_test : array_like, shape (n_test, n_test)
        NNGP kernel on the test inputs (symmetric).
    y_train : array_like, shape (m,) or (m, C)
        Training targets. Outputs are independent and identically
        distributed given the kernels, so the covariance is shared by all
        ``C`` outputs.
    t : float or array_like of shape (n_times,)
        Non-negative times (numbers of steps if ``discrete``); ``inf`` gives
        the converged ensemble.
    learning_rate, diag_reg, loss, discrete
        As in :func:`gradient_descent_mse` (``diag_reg`` regularises
        ``ntk_train_train``).

    Returns
    -------
    mean : ndarray, shape (n_test,) or (n_test, C)
        Ensemble mean of the test outputs, with a leading time axis for 1-D
        ``t``.
    cov : ndarray, shape (n_test, n_test)
        Covariance of the test outputs (of each output), with a leading time
        axis for 1-D ``t``.

    Raises
    ------
    TypeError, ValueError
        As :func:`gradient_descent_mse`, and for kernels of the wrong shape,
        non-symmetric square kernels or NaN/Inf entries.
    """
    y2d, one_dim, spec, rate, discrete = _prepare(
        ntk_train_train, y_train, learning_rate, diag_reg, loss, discrete
    )
    times, scalar = _as_times(t, discrete)
    m = y2d.shape[0]
    theta_tx = _as_cross_kernel(ntk_test_train, "ntk_test_train", m)
    n_test = theta_tx.shape[0]
    k_xx = _as_square_kernel(nngp_train_train, "nngp_train_train", m)
    k_tx = _as_cross_kernel(nngp_test_train, "nngp_test_train", m)
    if k_tx.shape[0] != n_test:
        raise ValueError(
            f"nngp_test_train must have shape ({n_test}, {m}) like ntk_test_train; got {k_tx.shape}"
        )
    k_tt = _as_square_kernel(nngp_test_test, "nngp_test_test", n_test)

    _, solve = _decay_and_solve(spec, times, rate, discrete)
    vecs = spec.vecs
    # A_t = Theta*X S_t, shape (n_times, n_test, m).
    a = np.einsum("na,ta,ia->tni", theta_tx @ vecs, solve, vecs)
    mean = np.einsum("tni,ic->tnc", a, y2d)
    cross = np.einsum("tni,ki->tnk", a, k_tx)
    cov = k_tt + np.einsum("tni,ij,tkj->tnk", a, k_xx, a) - cross - np.swapaxes(cross, 1, 2)
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    mean = _shape_out(mean, one_dim, scalar)
    return mean, (cov[0] if scalar else cov)


# ---------------------------------------------------------------------------
# Born machine
# ---------------------------------------------------------------------------


def born_closed_form(p_hat, p_0, t, tau):
    """Born-machine distribution under the kernel ``Theta = kappa I`` (spec section 4.3).

    ``p_t(x) = p_hat(x) + (p_0(x) - p_hat(x)) exp(-t / tau)`` for every
    configuration ``x``: the model relaxes to the empirical distribution at
    the single rate ``1 / tau`` (:func:`born_tau`).

    Parameters
    ----------
    p_hat : array_like
        Empirical distribution ``n(x) / m`` on the configurations.
    p_0 : array_like
        Initial distribution ``Psi_0(x)**2 / Z_0``, same shape as ``p_hat``.
    t : float or array_like of shape (n_times,)
        Non-negative times, in the units of ``tau`` (``inf`` allowed). For a
        Born machine trained by gradient descent the time is the number of
        steps, each step being one unit of time of
        ``dPsi/dt = -eta Theta g``.
    tau : float
        Positive, finite relaxation time.

    Returns
    -------
    p_t : ndarray
        Shape of ``p_hat``, with a leading time axis for 1-D ``t``.

    Raises
    ------
    TypeError
        If an argument is not real numeric.
    ValueError
        If ``p_hat`` and ``p_0`` differ in shape, are empty, contain negative
        or non-finite entries, ``t`` is negative or NaN, or ``tau`` is not
        positive and finite.
    """
    p_hat = _as_real(p_hat, "p_hat", "of probabilities")
    p_0 = _as_real(p_0, "p_0", f"of shape {p_hat.shape}")
    if p_hat.size == 0:
        raise ValueError("p_hat must be non-empty")
    if p_0.shape != p_hat.shape:
        raise ValueError(f"p_0 must have the shape of p_hat, {p_hat.shape}; got {p_0.shape}")
    for name, arr in (("p_hat", p_hat), ("p_0", p_0)):
        if np.any(arr < 0):
            raise ValueError(f"{name} must be non-negative; got minimum {arr.min()}")
    tau = _check_positive_float(tau, "tau")
    times, scalar = _as_times(t, discrete=False)
    shape = (-1,) + (1,) * p_hat.ndim
    decay = np.exp(-times / tau).reshape(shape)
    p_t = p_hat * -np.expm1(-times / tau).reshape(shape) + p_0 * decay
    return p_t[0] if scalar else p_t


def born_tau(z_0, learning_rate, n_data, kappa, loss="sum"):
    """Relaxation time of a Born machine with kernel ``Theta = kappa I``.

    ``tau = Z_0 / (4 eta m kappa)`` for the summed negative log-likelihood and
    ``tau = Z_0 / (4 eta kappa)`` for the mean one (spec section 4.3), in units
    of gradient-descent steps at learning rate ``eta``.

    Parameters
    ----------
    z_0 : float
        Initial normalisation ``Z_0 = sum_x Psi_0(x)**2`` (conserved by the
        flow), positive.
    learning_rate : float
        Positive learning rate ``eta``.
    n_data : int
        Number of training samples ``m >= 1`` (counted with multiplicity).
    kappa : float
        Positive kernel constant (:func:`born_kappa_infinite` for the
        infinite-bond-dimension limit, or the mean diagonal of an empirical
        kernel).
    loss : {"sum", "mean"}, optional
        Summed or mean negative log-likelihood.

    Returns
    -------
    float
        ``tau``.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If a number is not positive and finite or ``loss`` is unknown.
    """
    z_0 = _check_positive_float(z_0, "z_0")
    learning_rate = _check_positive_float(learning_rate, "learning_rate")
    n_data = _check_int(n_data, "n_data", 1)
    kappa = _check_positive_float(kappa, "kappa")
    _check_choice(loss, "loss", _LOSSES)
    scale = n_data if loss == "sum" else 1
    return z_0 / (4.0 * learning_rate * scale * kappa)


def born_kappa_infinite(n_sites, rho=None, sigma=1.0, phi_norm2=0.5, parametrization="ntk"):
    """Constant of the infinite-bond-dimension NTK of a one-hot Born machine.

    With one-hot features ``k_j(x, x') = |phi|**2 delta(x_j, x'_j)``, so
    ``Theta_inf(x, x') = kappa delta(x, x')`` on the configuration space with

    ``kappa = (sum_j rho_j) prod_j sigma_j**2 |phi_j|**2``

    (spec section 4.3); the NTK parametrisation gives
    ``kappa = n_sites prod_j sigma_j**2 |phi_j|**2``.

    Parameters
    ----------
    n_sites : int
        Number of sites ``N >= 1``.
    rho : float or array_like of shape (n_sites,), optional
        Non-negative per-site weights ``rho_j``; overrides
        ``parametrization``.
    sigma : float or array_like of shape (n_sites,), optional
        Positive prior scales ``sigma_j``.
    phi_norm2 : float or array_like of shape (n_sites,), optional
        Squared feature norms ``|phi_j|**2``; ``0.5`` for
        ``features.onehot(bits, scale=1/sqrt(2))``, ``1`` for plain one-hot.
    parametrization : {"ntk", "standard"}, optional
        ``"ntk"``: ``rho_j = 1``; ``"standard"`` (Guo & Draper's per-site
        rates): ``rho_j = sigma_j**(-2)``. As in
        :func:`mpsntk.infinite.ntk_infinite`.

    Returns
    -------
    float
        ``kappa``.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If a value is out of range or has the wrong shape.
    """
    n_sites = _check_int(n_sites, "n_sites", 1)
    _check_choice(parametrization, "parametrization", _PARAMETRIZATIONS)
    sigma = _as_site_vector(sigma, "sigma", n_sites, positive=True)
    phi_norm2 = _as_site_vector(phi_norm2, "phi_norm2", n_sites, positive=True)
    rho = _site_rates(rho, sigma, n_sites, parametrization)
    return float(np.sum(rho) * np.prod(sigma**2 * phi_norm2))


class BornTrajectory(NamedTuple):
    """Logged states of :func:`born_frozen_kernel`.

    Attributes
    ----------
    steps : ndarray of int, shape (n_logged,)
        Step numbers ``k`` that were logged (always including 0 and the last).
    psi : ndarray, shape (n_logged, n_configurations)
        Amplitudes ``Psi_k`` on the configuration space.
    p : ndarray, shape (n_logged, n_configurations)
        Probabilities ``p_k = Psi_k**2 / Z_k``.
    z : ndarray, shape (n_logged,)
        Normalisations ``Z_k = sum_x Psi_k(x)**2``.
    """

    steps: np.ndarray
    psi: np.ndarray
    p: np.ndarray
    z: np.ndarray


def born_frozen_kernel(theta, psi_0, counts, learning_rate, n_steps, loss="sum", log_every=1):
    """Iterate the function-space dynamics of a Born machine with a frozen kernel.

    ``Psi_{k+1} = Psi_k - eta Theta g(Psi_k)`` on the whole configuration
    space ``Omega`` (spec section 4.3), with the gradient of the summed
    negative log-likelihood

    ``g(x) = -2 n(x) / Psi(x) + 2 m Psi(x) / Z``,  ``Z = sum_x Psi(x)**2``

    recomputed every step (divided by ``m`` for the mean negative
    log-likelihood). This is the training of the model linearised around its
    initialisation (kernel ``Theta_0``) or, with ``Theta = kappa I``, the
    Euler discretisation of the flow solved by :func:`born_closed_form`.

    Parameters
    ----------
    theta : float, array_like of shape (n_configurations,) or (n_configurations, n_configurations)
        The kernel on ``Omega``: a scalar ``kappa`` means ``kappa I``, a 1-D
        array a diagonal kernel, a 2-D array a full symmetric kernel.
    psi_0 : array_like, shape (n_configurations,)
        Initial amplitudes ``Psi_0(x)``, non-zero wherever ``counts > 0``.
    counts : array_like of int, shape (n_configurations,)
        Multiplicities ``n(x)`` of each configuration in the training data
        (see :func:`mpsntk.datasets.configuration_counts`), with
        ``m = sum(counts) >= 1``.
    learning_rate : float
        Positive learning rate ``eta``.
    n_steps : int
        Number of steps ``>= 0``.
    loss : {"sum", "mean"}, optional
        Summed or mean negative log-likelihood.
    log_every : int, optional
        Log every ``log_every``-th step (and always steps 0 and ``n_steps``);
        every step is integrated regardless.

    Returns
    -------
    BornTrajectory
        ``(steps, psi, p, z)`` at the logged steps.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If shapes disagree, values are out of range (negative or non-integer
        counts, ``Psi_0 = 0`` on a training configuration, NaN/Inf), the
        full kernel is not symmetric, or the iteration produces non-finite
        amplitudes (the learning rate is too large).
    """
    learning_rate = _check_positive_float(learning_rate, "learning_rate")
    n_steps = _check_int(n_steps, "n_steps", 0)
    log_every = _check_int(log_every, "log_every", 1)
    _check_choice(loss, "loss", _LOSSES)
    psi = _as_real(psi_0, "psi_0", "of shape (n_configurations,)")
    if psi.ndim != 1 or psi.size == 0:
        raise ValueError(
            f"psi_0 must be a non-empty 1-D array of shape (n_configurations,); got {psi.shape}"
        )
    n_conf = psi.size
    n = _as_real(counts, "counts", f"of shape ({n_conf},)")
    if n.shape != (n_conf,):
        raise ValueError(f"counts must have shape ({n_conf},) like psi_0; got {n.shape}")
    if np.any(n < 0) or np.any(n != np.round(n)):
        raise ValueError("counts must contain non-negative integers")
    m = float(n.sum())
    if m < 1:
        raise ValueError("counts must sum to at least 1 (the number of training samples)")
    if np.any(psi[n > 0] == 0.0):
        raise ValueError("psi_0 must be non-zero on every configuration with counts > 0")

    theta_arr = _as_real(theta, "theta", f"scalar, ({n_conf},) or ({n_conf}, {n_conf})")
    if theta_arr.ndim < 2 and np.any(theta_arr < 0):
        raise ValueError(
            f"theta must be non-negative when given as a scalar or a diagonal; "
            f"got minimum {theta_arr.min()}"
        )
    if theta_arr.ndim == 0:
        kappa = float(theta_arr)

        def apply(g):
            return kappa * g
    elif theta_arr.ndim == 1:
        if theta_arr.shape != (n_conf,):
            raise ValueError(f"theta must have shape ({n_conf},) when 1-D; got {theta_arr.shape}")
        diag = theta_arr

        def apply(g):
            return diag * g
    else:
        full = _as_square_kernel(theta, "theta", n_conf)

        def apply(g):
            return full @ g

    scale = 1.0 / m if loss == "mean" else 1.0
    logged = list(range(0, n_steps + 1, log_every))
    if logged[-1] != n_steps:
        logged.append(n_steps)
    _check_array_fits((2, len(logged), n_conf), np.float64, "the logged Born trajectory",
                      "increase log_every")
    steps = np.asarray(logged, dtype=np.int64)
    psi_log = np.empty((len(logged), n_conf))
    z_log = np.empty(len(logged))
    data = n > 0
    two_n = 2.0 * n[data]
    slot = 0
    for k in range(n_steps + 1):
        with np.errstate(over="ignore", invalid="ignore"):
            z = float(psi @ psi)
        if not np.isfinite(z) or z == 0.0:
            raise ValueError(
                f"the Born iteration produced non-finite or vanishing amplitudes at step {k}; "
                f"reduce learning_rate (got {learning_rate:g})"
            )
        if k == logged[slot]:
            psi_log[slot] = psi
            z_log[slot] = z
            slot += 1
        if k == n_steps:
            break
        g = (2.0 * m / z) * psi
        g[data] -= two_n / psi[data]
        psi = psi - (learning_rate * scale) * apply(g)
    p_log = psi_log**2 / z_log[:, None]
    return BornTrajectory(steps, psi_log, p_log, z_log)
