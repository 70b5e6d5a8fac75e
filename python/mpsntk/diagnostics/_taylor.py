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

from .. import _core
from .._backend import array_module, as_array
from .._engine import HOST
from .._validate import _check_bool, _check_fits, _check_int, _describe
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
    xp = mps.xp
    n, C = phi.shape[0], mps.n_outputs
    if xp is np:
        _check_fits(
            (max_order + 2) * n * C * (mps.dtype.itemsize + 8),
            f"the Taylor terms of {n} samples up to order {max_order}",
            "compute fewer samples at a time",
        )
        cores, scales, boundary, osite = mps._engine_args()
        return _core.taylor_terms(cores, steps, scales, boundary, osite, phi, max_order, remainder)
    return _taylor_device(mps, phi, steps, max_order, remainder)


def _taylor_device(mps, phi, steps, max_order, remainder):
    """The same expansion with the model's array module (CuPy): one left sweep of polynomial
    environments ``(orders, n, outputs, h, D)`` by batched matmuls, each (order, sample, output)
    group normalised by a power of two, as the engine does; the remainder row, when asked for,
    goes through the stepped cores ``R <- R (M + V) + L^(K) V``."""
    xp, dtype = mps.xp, mps.dtype
    n, K = phi.shape[0], max_order
    h = mps.bond_dims[0] if mps.boundary == "periodic" else 1

    def scale_of(v, lg):  # the log-scales of the groups, -inf for all-zero ones
        return xp.where(xp.max(xp.abs(v), axis=(-2, -1)) > 0, lg, -xp.inf)

    def add(a, la, b, lb):  # a e^la + b e^lb on a common scale
        la, lb = scale_of(a, la), scale_of(b, lb)
        m = xp.maximum(la, lb)
        m = xp.where(xp.isfinite(m), m, 0.0)
        fa, fb = (xp.exp(t - m).astype(dtype)[..., None, None] for t in (la, lb))
        return a * fa + b * fb, m

    def normalise(v, lg):  # each group by the power of two of its largest entry
        peak = xp.max(xp.abs(v), axis=(-2, -1))
        _, e = xp.frexp(peak.astype(xp.float64))
        e = xp.where(peak > 0, e, 0)
        factor = xp.ldexp(xp.ones_like(peak, dtype=xp.float64), -e)[..., None, None]
        return (v.astype(xp.float64) * factor).astype(dtype), lg + e * math.log(2.0)

    env = xp.zeros((1, n, 1, h, h), dtype=dtype)
    env[..., xp.arange(h), xp.arange(h)] = 1
    lg = xp.zeros((1, n, 1))
    tail = tail_lg = None  # the remainder, once it exists
    for j in range(mps.n_sites):
        c = dtype.type(mps.scales[j])
        spec = "xs,lsab->xlab" if j == mps.output_site else "xs,sab->xab"
        M, V = (c * xp.einsum(spec, phi[:, j], t) for t in (mps.cores[j], steps[j]))
        if j != mps.output_site:
            M, V = M[:, None], V[:, None]
        top = env.shape[0] - 1
        new_top = min(top + 1, K)
        core = env @ M[None]  # orders 0..top
        shape = (new_top + 1,) + core.shape[1:]
        a, b = xp.zeros(shape, dtype=dtype), xp.zeros(shape, dtype=dtype)
        lg_new = xp.broadcast_to(lg, (top + 1,) + shape[1:3])
        la, lb = xp.full(shape[:3], -xp.inf), xp.full(shape[:3], -xp.inf)
        a[: top + 1], la[: top + 1] = core, lg_new
        b[1:] = env[:new_top] @ V[None]  # orders 1..new_top
        lb[1:] = lg_new[:new_top]
        new, m = add(a, la, b, lb)
        if remainder and (tail is not None or top == K):
            parts = []
            if tail is not None:
                parts.append((tail @ (M + V), xp.broadcast_to(tail_lg, shape[1:3])))
            if top == K:
                parts.append((env[K] @ V, lg_new[K]))
            tail, tail_lg = add(*parts[0], *parts[1]) if len(parts) == 2 else parts[0]
            tail, tail_lg = normalise(tail, tail_lg)
        env, lg = normalise(new, m)
    rows = [xp.trace(env, axis1=-2, axis2=-1)]  # (orders, n, C)
    logs = [lg]
    if remainder:
        if tail is None:  # max_order = n_sites: nothing above it
            tail, tail_lg = xp.zeros_like(env[0]), xp.zeros_like(lg[0])
        rows.append(xp.trace(tail, axis1=-2, axis2=-1)[None])
        logs.append(tail_lg[None])
    mant = xp.ascontiguousarray(xp.concatenate(rows))
    lg = xp.where(mant != 0, xp.concatenate(logs), 0.0)
    return mant, xp.ascontiguousarray(lg)


def _apply_log_scale(mps, mant, lg, what, hint):
    """``mant * exp(lg)`` in the model's dtype, refusing to lose entries (as MPS.forward)."""
    xp = mps.xp
    with np.errstate(over="ignore", under="ignore"):
        out = (mant * xp.exp(lg)).astype(mps.dtype)
    for lost, how in ((~xp.isfinite(out), "overflows"), ((out == 0) & (mant != 0), "underflows")):
        if bool(xp.any(lost)):
            raise FloatingPointError(f"{what} {how} the range of {mps.dtype.name}; {hint}")
    return out


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
    xp = mps.same_device(array_module(phi1, phi2, names=["phi1", "phi2"]), "phi1")
    phi1 = mps.check_features(phi1, "phi1")
    if phi2 is not None:
        phi2 = mps.check_features(phi2, "phi2")
    orders = _check_orders(orders, mps.n_sites)
    n1 = phi1.shape[0]
    n2 = n1 if phi2 is None else phi2.shape[0]
    shape = (len(orders), n1, n2)
    if xp is not np:
        return _order_kernels_device(mps, phi1, phi2, orders)
    # environments of every output slice, and per thread the pair states: one D x D matrix per
    # order below the highest and per channel (D_0^2 boundary channels or one per first site)
    h = mps.bond_dims[0] if mps.boundary == "periodic" else 1
    channels = mps.n_sites if h > 1 and mps.n_sites / 2 < h * h else h * h
    states = channels * max(max(orders) - 1, 1) * mps.max_bond_dim**2
    work = HOST.prepare_bytes(mps, n1 + (0 if phi2 is None else n2))
    work += 4 * _core.get_num_threads() * states * mps.dtype.itemsize
    _check_fits(int(np.prod(shape, dtype=np.float64)) * mps.dtype.itemsize + work,
                f"order kernels of shape {shape} ({mps.dtype.name})",
                "compute fewer samples at a time")
    out = np.empty(shape, dtype=mps.dtype)
    cores, scales, boundary, osite = mps._engine_args()
    overflow, underflow = _core.order_kernels(cores, scales, mps.site_lr, boundary, osite, phi1,
                                              phi2, list(orders), out)
    for bad, how in ((overflow, "overflows"), (underflow, "underflows")):
        if bad:
            raise FloatingPointError(
                f"an order kernel {how} the range of {mps.dtype.name}; compute in float64")
    return out


def _pair_gram(xp, env1, env2, a, b):
    """Grams ``(b1, b2, h * h)`` of the boundary rows of two sample blocks, and their
    log-scales ``(b1, b2)``."""
    (v1, l1), (v2, l2) = env1, env2
    v1, v2 = v1[a], v2[b]
    g = xp.einsum("xad,ybd->xyab", v1, v2).reshape(v1.shape[0], v2.shape[0], -1)
    return g, l1[a][:, None] + l2[b][None, :]


def _order_kernels_device(mps, phi1, phi2, orders, edge=None):
    """order_kernels with the model's array module (CuPy): the engine's recursion batched over
    a tile of pairs, with the D_0^2 boundary channels for periodic chains; every state and
    partial sum carries its own log-scale."""
    xp, dtype = mps.xp, mps.dtype
    N, kmax = mps.n_sites, max(orders)
    h = mps.bond_dims[0] if mps.boundary == "periodic" else 1
    lam = mps.scales**2 * mps.site_lr
    sym = phi2 is None
    phi2 = phi1 if sym else phi2
    n1, n2 = phi1.shape[0], phi2.shape[0]
    nm, D = kmax - 1, mps.max_bond_dim
    # pairs per tile edge: the states of a tile within about 256 MiB
    per_pair = 4 * h * h * max(nm, 1) * D * D * dtype.itemsize + 64 * h * h
    if edge is None:
        edge = max(1, min(max(n1, n2), math.isqrt(max(1, (256 << 20) // per_pair))))

    def normalise(v, lg):  # each trailing matrix by the power of two of its largest entry
        peak = xp.max(xp.abs(v), axis=(-2, -1))
        _, e = xp.frexp(peak.astype(xp.float64))
        e = xp.where(peak > 0, e, 0)
        factor = xp.ldexp(xp.ones_like(peak, dtype=xp.float64), -e)[..., None, None]
        return (v * factor).astype(dtype), xp.where(peak > 0, lg + e * math.log(2.0), -xp.inf)

    def common(values, logs):  # the largest log of the non-zero values (0 if none)
        top = xp.where(values != 0, logs, -xp.inf)
        return xp.where(xp.isfinite(top), top, 0.0)

    def log_add(am, al, v, lv):  # am e^al + v e^lv on a common scale, elementwise
        al, lv = xp.where(am != 0, al, -xp.inf), xp.where(v != 0, lv, -xp.inf)
        m = common(xp.maximum(al, lv), xp.maximum(al, lv))
        return am * xp.exp(al - m) + v * xp.exp(lv - m), m

    def log_sum(values, logs):  # sum over the last axis of values e^logs: (mantissa, log)
        logs = xp.where(values != 0, logs, -xp.inf)
        top = common(xp.max(logs, axis=-1), xp.max(logs, axis=-1))
        return xp.sum(values * xp.exp(logs - top[..., None]), axis=-1), top

    def environments(phi, cores):
        """Site matrices, left slots L_j and right slots R_j (n, h, D_j) with log-scales."""
        n = phi.shape[0]
        eye = xp.broadcast_to(xp.eye(h, dtype=dtype), (n, h, h))
        mats = [dtype.type(mps.scales[j]) * xp.einsum("xs,sab->xab", phi[:, j], cores[j])
                for j in range(N)]
        left, right = [(eye, xp.zeros(n))], [None] * N + [(eye, xp.zeros(n))]
        for j in range(N):
            v, lg = left[-1]
            left.append(normalise(v @ mats[j], lg))
        for j in range(N - 1, 0, -1):
            v, lg = right[j + 1]
            right[j] = normalise(xp.swapaxes(mats[j] @ xp.swapaxes(v, 1, 2), 1, 2), lg)
        return mats, left, right

    acc = xp.zeros((kmax + 1, n1, n2))
    acc_lg = xp.zeros((kmax + 1, n1, n2))
    for out in range(mps.n_outputs):  # traced outputs: the label core sliced at each
        cores = [c[out] if j == mps.output_site else c for j, c in enumerate(mps.cores)]
        m1, left1, right1 = environments(phi1, cores)
        m2, left2, right2 = (m1, left1, right1) if sym else environments(phi2, cores)
        for i0 in range(0, n1, edge):
            for k0 in range(i0 if sym else 0, n2, edge):
                a, b = slice(i0, min(i0 + edge, n1)), slice(k0, min(k0 + edge, n2))
                b1, b2 = a.stop - a.start, b.stop - b.start
                tile = xp.zeros((kmax + 1, b1, b2))
                tile_lg = xp.zeros((kmax + 1, b1, b2))
                X = xp.zeros((b1, b2, h * h, max(nm, 1), h, h), dtype=dtype)
                lx = xp.full(X.shape[:4], -xp.inf)
                for j in range(N):
                    lk = lam[j] * (phi1[a, j] @ phi2[b, j].T)
                    z, zl = _pair_gram(xp, left1[j], left2[j], a, b)
                    w, wl = _pair_gram(xp, right1[j + 1], right2[j + 1], a, b)
                    tile[1], tile_lg[1] = log_add(tile[1], tile_lg[1],
                                                  lk * xp.sum(z * w, axis=-1), zl + wl)
                    if nm == 0:
                        continue
                    traces = xp.trace(X, axis1=-2, axis2=-1)  # (b1, b2, channels, nm)
                    for m in range(1, nm + 1):  # S ends at site j: K_{m+1}
                        v, lv = log_sum(traces[..., m - 1] * w, lx[..., m - 1] + wl[..., None])
                        tile[m + 1], tile_lg[m + 1] = log_add(tile[m + 1], tile_lg[m + 1],
                                                              lk * v, lv)
                    if j == N - 1:
                        break
                    # X^(m) <- M_j(x)^T X^(m) M_j(y) + lambda_j k_j Tr(X^(m-1)) I (X^(0): Z_j)
                    X = (xp.swapaxes(m1[j][a], 1, 2)[:, None, None, None] @ X
                         @ m2[j][b][None, :, None, None])
                    src = xp.concatenate([z[..., None], traces[..., :-1]], axis=-1)
                    src = lk[..., None, None] * src
                    ls = xp.concatenate([xp.broadcast_to(zl[..., None, None], z.shape + (1,)),
                                         lx[..., :-1]], axis=-1)
                    lx = xp.where(xp.max(xp.abs(X), axis=(-2, -1)) > 0, lx, -xp.inf)
                    ls = xp.where(src != 0, ls, -xp.inf)
                    top = common(xp.maximum(lx, ls), xp.maximum(lx, ls))
                    eye = xp.eye(X.shape[-1], dtype=dtype)
                    X = (X * xp.exp(lx - top).astype(dtype)[..., None, None]
                         + (src * xp.exp(ls - top)).astype(dtype)[..., None, None] * eye)
                    X, lx = normalise(X, top)
                parts = [(a, b, tile, tile_lg)]
                if sym and k0 != i0:  # the mirrored tile
                    parts.append((b, a, xp.swapaxes(tile, 1, 2), xp.swapaxes(tile_lg, 1, 2)))
                for ra, rb, t, tl in parts:
                    acc[:, ra, rb], acc_lg[:, ra, rb] = log_add(acc[:, ra, rb],
                                                               acc_lg[:, ra, rb], t, tl)
    mant = xp.stack([acc[k] for k in orders])
    lg = xp.stack([acc_lg[k] for k in orders])
    return _apply_log_scale(mps, mant, lg, "an order kernel", "compute in float64")
