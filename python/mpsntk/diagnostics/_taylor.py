"""The exact finite Taylor (RKBS) expansion of an MPS, its order-k kernels, the nonlinear fraction
of a training step and the weak-correlation ratios (theory sections 5.3 and 5.4).

An MPS is linear in each core, so for any step ``Delta`` in the trainable cores ``W``

``f(x; W + Delta) = sum_{k=0}^{n_sites} P_k(x; Delta)``  exactly,

where ``P_k`` sums, over the ``k``-subsets ``S`` of sites, the chain contracted with
``c_j Delta_j`` on ``S`` and ``c_j W_j`` elsewhere (``P_0 = f(W)``, ``P_1`` the Jacobian-vector
product).  The C++ engine computes every ``P_k`` at once with polynomial environments
(``L^(k) <- L^(k) M_j + L^(k-1) V_j``), in ``O(n_samples n_sites min(n_sites, K) d D^2)`` for open
chains (``D_0`` times that for periodic ones), with per-(sample, order) log-scales so that long
chains stay in range.

The order-``k`` kernels ``K_k(x, x') = sum_{|S|=k} prod_{j in S} r_j <d_S f(x), d_S f(x')>``
(derivatives in ``W``, one per core of ``S``; ``r_j`` the per-site rates) are the Gram matrices
of the data maps of that expansion: ``K_1`` is the NTK, and in the NTK parametrisation
``E K_k = C(n_sites, k) K`` with ``K`` the NNGP kernel.

Models on a CUDA device (CuPy cores) run the same recursions with their array module and keep
their results on the device; the C++ engine runs those on the host.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from .._backend import array_module, as_array
from .._engine import engine_for
from .._taylor_xp import apply_log_scale as _apply_log_scale
from .._validate import _check_bool, _check_int, _describe
from ..grad import vjp
from ..mps import MPS
from ..ntk import _check_mps

__all__ = [
    "NonlinearFraction",
    "NonlinearityMonitor",
    "WeakCorrelations",
    "nonlinear_fraction",
    "order_kernels",
    "taylor_terms",
    "weak_correlations",
]


# ----------------------------------------------------------------------------- validation
def _as_step(mps, delta, name="delta"):
    """The step as a list of C-contiguous arrays shaped like ``mps.cores`` on the model's device.

    ``delta`` is a list of arrays, or an :class:`MPS` of the same structure (then the step is its
    cores minus ``mps.cores``)."""
    xp = mps.xp
    if isinstance(delta, MPS):
        mismatch = [
            (what, getattr(delta, attr), getattr(mps, attr))
            for what, attr in (
                ("boundary", "boundary"),
                ("bond dimensions", "bond_dims"),
                ("phys_dim", "phys_dim"),
                ("output site", "output_site"),
                ("n_outputs", "n_outputs"),
                ("dtype", "dtype"),
            )
            if getattr(delta, attr) != getattr(mps, attr)
        ]
        if mismatch:
            what, got, want = mismatch[0]
            raise ValueError(
                f"{name} must be an MPS of the same structure as the model; its {what} is {got} "
                f"but the model's is {want}"
            )
        if not np.array_equal(delta.scales, mps.scales):
            raise ValueError(
                f"{name} must be an MPS with the model's scales (the step is the difference of "
                "the trainable cores, which only means the same function change when the scales "
                "agree)"
            )
        mps.same_device(delta.xp, f"the cores of {name}")
        return [xp.ascontiguousarray(b - a) for a, b in zip(mps.cores, delta.cores)]
    if isinstance(delta, (str, bytes)) or not isinstance(delta, (list, tuple)):
        raise TypeError(
            f"{name} must be a list of arrays shaped like mps.cores, or an MPS; "
            f"got {_describe(delta)}"
        )
    if len(delta) != mps.n_sites:
        raise ValueError(
            f"{name} must hold one array per core ({mps.n_sites}); got {len(delta)}"
        )
    names = [f"{name}[{j}]" for j in range(len(delta))]
    mps.same_device(array_module(*delta, names=names), name)
    steps = []
    for j, (t, c) in enumerate(zip(delta, mps.cores)):
        t = as_array(t, xp)
        if t.dtype != mps.dtype:
            raise TypeError(f"{name}[{j}] must have the model's dtype {mps.dtype}; got {t.dtype}")
        if t.shape != c.shape:
            raise ValueError(f"{name}[{j}] must have the shape of mps.cores[{j}], {c.shape}; "
                             f"got {t.shape}")
        if not bool(xp.all(xp.isfinite(t))):
            raise ValueError(f"{name}[{j}] must be finite; got NaN or Inf entries")
        steps.append(xp.ascontiguousarray(t))
    return steps


def _check_orders(orders, n_sites, name="orders"):
    """A non-empty tuple of distinct integers in 1..n_sites."""
    if isinstance(orders, (str, bytes)) or not hasattr(orders, "__iter__"):
        raise TypeError(f"{name} must be a sequence of integers in 1..n_sites; "
                        f"got {_describe(orders)}")
    out = tuple(orders)
    if not out:
        raise ValueError(f"{name} must hold at least one order")
    for k in out:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
            raise TypeError(f"{name} must hold integers; got {_describe(k)}")
        if not 1 <= k <= n_sites:
            raise ValueError(f"{name} must lie in 1..n_sites = 1..{n_sites}; got {k}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must be distinct; got {out}")
    return tuple(int(k) for k in out)


def _check_max_order(max_order, n_sites):
    if max_order is None:
        return n_sites
    max_order = _check_int(max_order, "max_order", 0)
    if max_order > n_sites:
        raise ValueError(f"max_order must lie in 0..n_sites = 0..{n_sites}; got {max_order}")
    return max_order


# ----------------------------------------------------------------------------- Taylor terms
def _raw_taylor(mps, phi, steps, max_order, remainder=False):
    """Mantissas and log-scales (max_order + 1 [+ 1], n, C) on the model's device; with
    ``remainder`` the last row is ``sum_{k > max_order} P_k``."""
    return engine_for(mps).taylor_terms(mps, phi, steps, max_order, remainder)


def _squeeze(mps, a):
    return a[..., 0] if mps.output_site is None else a


def taylor_terms(mps, phi, delta, *, max_order=None, remainder=False, log_scale=False):
    """Every term of the exact Taylor expansion of the MPS in a step of its cores.

    ``f(x; W + Delta) = sum_{k=0}^{n_sites} P_k(x; Delta)`` exactly: ``P_k`` sums, over the
    ``k``-subsets ``S`` of sites, the chain contracted with the step on ``S`` and the cores
    elsewhere, ``P_k = (1/k!) d^k f[Delta, ..., Delta]`` (``P_0 = f``, ``P_1 = J Delta``).

    Cost: ``O(n_samples n_sites min(n_sites, K) d D^2)`` for open chains and ``D_0`` times that
    for periodic ones, with ``K = max_order``; the memory is the output and a few blocks of
    polynomial environments per thread.

    Parameters
    ----------
    mps : MPS
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Features in the model's dtype.
    delta : list of ndarray or MPS
        The step in the trainable cores, one array shaped like each of ``mps.cores`` (the
        effective step of site ``j`` is ``scales[j] * delta[j]``); or a model of the same
        structure and scales, whose cores minus ``mps.cores`` are the step.
    max_order : int, optional
        Highest order ``K`` in ``0..n_sites`` (default ``n_sites``: all terms).
    remainder : bool
        Append ``sum_{k > K} P_k`` as one more row, computed exactly (as one more polynomial
        order carried through the stepped cores, not as a difference), at about the cost of one
        more order: the terms then sum to ``f(W + Delta)`` whatever ``K``.
    log_scale : bool
        Return ``(mantissa, log_scale)`` with ``P = mantissa * exp(log_scale)`` instead of ``P``:
        the form for chains whose terms leave the dtype's range.

    Returns
    -------
    ndarray, shape (K + 1, n_samples) or (K + 1, n_samples, n_outputs)
        ``P_k(x)`` along the leading axis (``K + 2`` rows with ``remainder``); or the pair
        described under ``log_scale``.

    Raises
    ------
    FloatingPointError
        If a term over- or underflows the dtype (use ``log_scale=True``).
    """
    _check_mps(mps)
    mps.same_device(array_module(phi, names=["phi"]), "phi")
    phi = mps.check_features(phi)
    steps = _as_step(mps, delta)
    max_order = _check_max_order(max_order, mps.n_sites)
    remainder = _check_bool(remainder, "remainder")
    log_scale = _check_bool(log_scale, "log_scale")
    mant, lg = _raw_taylor(mps, phi, steps, max_order, remainder)
    if log_scale:
        return _squeeze(mps, mant), _squeeze(mps, lg)
    return _squeeze(mps, _apply_log_scale(mps, mant, lg, "a Taylor term", "use log_scale=True"))


# ----------------------------------------------------------------------------- norms
def _scaled(mps, mant, lg):
    """Terms as ``(tilde, ref)`` with ``P_k = tilde_k * exp(ref)``: one reference log-scale per
    (sample, output), the largest of its non-zero terms, so sums over orders stay in range."""
    xp = mps.xp
    lg = xp.where(mant != 0, lg, -xp.inf)
    ref = xp.max(lg, axis=0)
    ref = xp.where(xp.isfinite(ref), ref, 0.0)
    return mant.astype(xp.float64) * xp.exp(lg - ref), ref


def _log_norm(xp, tilde, ref):
    """log of the Euclidean norm of ``tilde * exp(ref)`` over all entries (-inf for zero)."""
    with np.errstate(divide="ignore"):
        la = xp.log(xp.abs(tilde)) + ref
    top = float(xp.max(la))
    if not math.isfinite(top):
        return -math.inf
    return top + 0.5 * math.log(float(xp.sum(xp.exp(2.0 * (la - top)))))


def _norm(xp, tilde, ref):
    return _exp(_log_norm(xp, tilde, ref))


@dataclasses.dataclass(frozen=True)
class NonlinearFraction:
    """The nonlinear part of a change of the model on a probe set (:func:`nonlinear_fraction`).

    Norms are Euclidean over all probe samples (and outputs), in float64.

    Attributes
    ----------
    nu : float
        ``||sum_{k>=2} P_k|| / ||f_t - f_0||`` (0 when the nonlinear part vanishes, ``inf`` when
        only the outputs do not change).
    change : float
        ``||f_t - f_0|| = ||sum_{k>=1} P_k||``.
    nonlinear : float
        ``||sum_{k>=2} P_k||``.
    term_norms : ndarray, shape (max_order + 1,)
        ``||P_k||`` for ``k = 0 .. max_order``.
    remainder : float
        ``||sum_{k > max_order} P_k||`` (0 when ``max_order = n_sites``).
    n_sites : int
    """

    nu: float
    change: float
    nonlinear: float
    term_norms: np.ndarray
    remainder: float
    n_sites: int

    def term_norm(self, k):
        """``||P_k||``; 0 for ``k > n_sites`` (the expansion ends there)."""
        k = _check_int(k, "k", 0)
        if k < len(self.term_norms):
            return float(self.term_norms[k])
        if k > self.n_sites:
            return 0.0
        raise ValueError(f"||P_{k}|| was not computed: pass max_order >= {k}")


def nonlinear_fraction(mps_0, mps_t, phi, *, max_order=3):
    """The nonlinear fraction ``nu = ||sum_{k>=2} P_k(Delta_t)|| / ||f_t - f_0||`` of a step.

    ``Delta_t = W_t - W_0`` is the change of the trainable cores and ``P_k`` the terms of its
    exact Taylor expansion around ``mps_0`` (:func:`taylor_terms`), so ``f_t - f_0`` is
    ``sum_{k>=1} P_k`` and its part beyond the linearisation ``sum_{k>=2} P_k``.  Both sums are
    formed from the terms up to ``max_order`` and the exact remainder above it (no cancellation
    of ``f_t - f_0 - J Delta``), with per-sample scales, so ``nu`` is exact however small.  The
    cost is that of the expansion to ``max_order + 1`` orders.

    Parameters
    ----------
    mps_0, mps_t : MPS
        The models before and after (same structure, scales and device).
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        The probe set.
    max_order : int
        Orders whose norms ``||P_k||`` are reported one by one (``1..n_sites``; larger values
        are capped at ``n_sites``); ``nu`` does not depend on it.

    Returns
    -------
    NonlinearFraction
        ``nu``, the two norms, ``||P_k||`` for ``k <= max_order`` (``term_norm(2)``,
        ``term_norm(3)``) and the norm of the remainder.
    """
    _check_mps(mps_0)
    if not isinstance(mps_t, MPS):
        raise TypeError(f"mps_t must be an mpsntk.MPS; got {type(mps_t).__name__}")
    mps_0.same_device(array_module(phi, names=["phi"]), "phi")
    phi = mps_0.check_features(phi)
    steps = _as_step(mps_0, mps_t, "mps_t")
    max_order = min(_check_int(max_order, "max_order", 1), mps_0.n_sites)
    return _fraction(mps_0, phi, steps, max_order)


def _fraction(mps_0, phi, steps, max_order):
    xp = mps_0.xp
    mant, lg = _raw_taylor(mps_0, phi, steps, max_order, remainder=True)
    tilde, ref = _scaled(mps_0, mant, lg)  # rows 0..max_order, then the remainder
    norms = np.array([_norm(xp, tilde[k], ref) for k in range(max_order + 1)])
    lin = _log_norm(xp, xp.sum(tilde[1:], axis=0), ref)
    non = _log_norm(xp, xp.sum(tilde[2:], axis=0), ref)
    if non == -math.inf:
        nu = 0.0
    elif lin == -math.inf:
        nu = math.inf
    else:
        nu = math.exp(non - lin)
    return NonlinearFraction(
        nu=nu,
        change=_exp(lin),
        nonlinear=_exp(non),
        term_norms=norms,
        remainder=_norm(xp, tilde[-1], ref),
        n_sites=mps_0.n_sites,
    )


def _exp(log_value):
    return math.exp(log_value) if log_value < 709.0 else math.inf


class NonlinearityMonitor:
    """Callback for :func:`mpsntk.train` that logs the nonlinearity of training on a probe set.

    At every logged step it returns ``{"nonlinear_fraction": nu(t), "taylor_norm_1": ||P_1||,
    "taylor_norm_2": ||P_2||, "taylor_norm_3": ||P_3||}`` for the step ``Delta_t = W_t - W_0``
    from the initial model (see :func:`nonlinear_fraction`).  It holds one copy of the initial
    model and the probe features, nothing per step.

    Parameters
    ----------
    mps_0 : MPS
        The initial model (copied).
    probe : ndarray, shape (n_probe, n_sites, phys_dim)
    """

    def __init__(self, mps_0, probe):
        _check_mps(mps_0)
        mps_0.same_device(array_module(probe, names=["probe"]), "probe")
        self.mps_0 = mps_0.copy()
        self.probe = mps_0.check_features(probe, "probe")

    def __call__(self, step, mps):
        if not isinstance(mps, MPS):
            raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
        r = _fraction(self.mps_0, self.probe, _as_step(self.mps_0, mps, "mps"),
                      min(3, self.mps_0.n_sites))
        return {
            "nonlinear_fraction": r.nu,
            "taylor_norm_1": r.term_norm(1),
            "taylor_norm_2": r.term_norm(2),
            "taylor_norm_3": r.term_norm(3),
        }


# ----------------------------------------------------------------------------- weak correlations
def _check_targets(mps, n, y, name="y_train"):
    """Regression targets of the model's dtype and output shape, finite."""
    y = as_array(y, mps.xp)
    want = (n,) if mps.output_site is None else (n, mps.n_outputs)
    if y.dtype != mps.dtype:
        raise TypeError(f"{name} must be a real array of the model's dtype {mps.dtype.name}; got "
                        f"dtype {y.dtype} (convert explicitly)")
    if y.shape != want:
        raise ValueError(f"{name} must have shape {want}; got {y.shape}")
    if not bool(mps.xp.all(mps.xp.isfinite(y))):
        raise ValueError(f"{name} must be finite; got NaN or Inf entries")
    return y


@dataclasses.dataclass(frozen=True)
class WeakCorrelations:
    """Weak-correlation ratios along the initial gradient-descent direction
    (:func:`weak_correlations`).

    Attributes
    ----------
    ratios : dict
        ``{k: R_k}`` with ``R_k = rms_x Gamma_k / rms_x Gamma_1`` for the requested orders.
    rms : dict
        ``{k: rms_x Gamma_k}`` for ``k = 1`` and the requested orders (root mean square over the
        probe samples and outputs).
    direction_norm : float
        ``||v||``, the Euclidean norm of the direction over all cores.
    """

    ratios: dict
    rms: dict
    direction_norm: float


def weak_correlations(mps, phi_train, y_train, probe=None, *, orders=(2, 3), scale=1.0):
    """Ratios ``R_k = rms_x Gamma_k / rms_x Gamma_1`` of the higher derivatives of the model
    along the initial gradient-descent direction (theory section 5.4).

    ``Gamma_k(x; a) = P_k(x; v) = (1/k!) d^k f(x)[v, ..., v]`` with ``v_j = scale * r_j J_j^T a``,
    ``a = f_0(X) - Y`` the residual on the training set, ``J_j`` the Jacobian of the training
    outputs in core ``j`` and ``r_j = mps.site_lr[j]`` the per-site rates (1 in the NTK
    parametrisation).  With ``scale = 1``, ``v`` is the gradient of the summed squared loss
    ``sum ||f - y||^2 / 2`` in the metric of the rates: gradient descent at rate ``eta`` steps
    by ``-eta v``.  ``Gamma_k`` scales as ``scale^k``, so ``R_k`` as ``|scale|^(k-1)``; the
    default follows the spec (``v = J^T a`` unscaled).  ``R_k -> 0`` as the bond dimension grows
    is the kernel regime.

    Parameters
    ----------
    mps : MPS
    phi_train : ndarray, shape (n_train, n_sites, phys_dim)
    y_train : ndarray, shape (n_train,) or (n_train, n_outputs)
        Targets in the model's dtype.
    probe : ndarray, shape (n_probe, n_sites, phys_dim), optional
        Where the ``Gamma_k`` are measured (default: the training set).
    orders : sequence of int
        The ``k`` in ``1..n_sites`` to report.
    scale : float
        Multiplier of the direction (e.g. ``-learning_rate`` for the first step itself).

    Returns
    -------
    WeakCorrelations
    """
    _check_mps(mps)
    xp = mps.same_device(array_module(phi_train, y_train, probe,
                                      names=["phi_train", "y_train", "probe"]), "phi_train")
    phi_train = mps.check_features(phi_train, "phi_train")
    y_train = _check_targets(mps, phi_train.shape[0], y_train)
    probe = phi_train if probe is None else mps.check_features(probe, "probe")
    orders = _check_orders(orders, mps.n_sites)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a finite non-zero real number; got {_describe(scale)}")
    if not math.isfinite(scale) or scale == 0:
        raise ValueError(f"scale must be a finite non-zero real number; got {scale}")
    residual = mps.forward(phi_train) - y_train
    grads = vjp(mps, phi_train, residual)
    v = [xp.ascontiguousarray((scale * r * g).astype(mps.dtype))
         for r, g in zip(mps.site_lr, grads)]
    if not all(bool(xp.all(xp.isfinite(t))) for t in v):
        raise FloatingPointError(f"the direction overflows the range of {mps.dtype.name}; "
                                 "lower scale")
    norm = math.sqrt(sum(float(xp.sum(t.astype(xp.float64) ** 2)) for t in v))
    top = max(orders + (1,))
    mant, lg = _raw_taylor(mps, probe, v, top)
    tilde, ref = _scaled(mps, mant, lg)
    count = tilde[0].size
    rms = {}
    for k in sorted(set(orders) | {1}):
        ln = _log_norm(xp, tilde[k], ref)
        rms[k] = math.exp(ln) / math.sqrt(count) if ln < 709.0 else math.inf
    lg1 = _log_norm(xp, tilde[1], ref)
    ratios = {}
    for k in orders:
        lk = _log_norm(xp, tilde[k], ref)
        ratios[k] = 0.0 if lk == -math.inf else (math.inf if lg1 == -math.inf else
                                                 math.exp(lk - lg1))
    return WeakCorrelations(ratios=ratios, rms=rms, direction_norm=norm)


# ----------------------------------------------------------------------------- order kernels
def order_kernels(mps, phi1, phi2=None, *, orders=(1, 2, 3)):
    """Order-``k`` kernels of the exact Taylor expansion: the Gram matrices of its data maps.

    ``K_k(x, x') = sum_{|S|=k} prod_{j in S} r_j <d_S f(x), d_S f(x')>`` where ``d_S`` takes one
    derivative in the trainable core ``W_j`` of each site of ``S`` (equivalently
    ``prod lambda_j <d_S f, d_S f'>`` in the effective cores, ``lambda_j = c_j^2 r_j``, the NTK's
    site weights), so ``K_1`` is :func:`mpsntk.ntk`; in the NTK parametrisation
    ``E K_k = C(n_sites, k) K`` with ``K`` the NNGP kernel.  ``E[P_k(x; Delta) P_k(x'; Delta)] =
    K_k(x, x')`` for a step with independent entries of variance ``r_j``.

    One doubled chain per pair of samples carries a state per order,
    ``X^(m) <- M_j(x)^T X^(m) M_j(x') + lambda_j k_j(x, x') Tr(X^(m-1)) I``.  Cost:
    ``O(n1 n2 n_sites (k_max - 1) D^3)`` for open chains, and
    ``O(n1 n2 min(n_sites D_0^2, n_sites^2 / 2) (k_max - 1) D^3)`` for periodic ones, on top of the
    NTK's ``O(n1 n2 n_sites D)``; the symmetric case computes each pair once.  Models with a
    label site return the kernels traced over the outputs (``sum_l K_k^{ll}``, as
    ``ntk(outputs="trace")``), at ``n_outputs`` times the cost.

    Parameters
    ----------
    mps : MPS
    phi1 : ndarray, shape (n1, n_sites, phys_dim)
    phi2 : ndarray, shape (n2, n_sites, phys_dim), optional
        None means ``K_k(X1, X1)``.
    orders : sequence of int
        Distinct orders in ``1..n_sites``.

    Returns
    -------
    ndarray, shape (len(orders), n1, n2)

    Raises
    ------
    FloatingPointError
        If an entry over- or underflows the dtype.

    Notes
    -----
    A model on a CUDA device runs the same recursion with its array module, in tiles of pairs
    (periodic chains with the ``D_0^2`` boundary channels), and returns a device array.
    """
    _check_mps(mps)
    mps.same_device(array_module(phi1, phi2, names=["phi1", "phi2"]), "phi1")
    phi1 = mps.check_features(phi1, "phi1")
    if phi2 is not None:
        phi2 = mps.check_features(phi2, "phi2")
    orders = _check_orders(orders, mps.n_sites)
    return engine_for(mps).order_kernels(mps, phi1, phi2, orders)
