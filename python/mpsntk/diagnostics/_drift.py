"""How far the NTK and the parameters move during training (theory 5.1).

* kernel drift ``||Theta_t - Theta_0||_F / ||Theta_0||_F`` on a fixed probe set, globally and
  per site (the terms ``Theta_j`` of ``mn.ntk(..., per_site=True)``);
* parameter drift ``||W_t - W_0||_F / ||W_0||_F`` of the trainable cores;
* kernel-target alignment with centred targets (Cristianini et al. 2002; used for the NTK by
  Baratin et al. 2021);
* the kernel distance and velocity between two states (Fort et al. 2020).

:class:`KernelDriftMonitor` computes all of them at the logged steps of :func:`mpsntk.train`.
"""

from __future__ import annotations

import numpy as np

from .._backend import array_module
from .._validate import _check_bool, _check_positive_float, _describe
from ..ntk import ntk
from ._common import (
    _as_probe,
    _as_real_array,
    _check_mps,
    _frobenius,
    _StepCallback,
    _to_host,
)

__all__ = [
    "KernelDriftMonitor",
    "kernel_alignment",
    "kernel_distance",
    "kernel_drift",
    "kernel_velocity",
    "parameter_drift",
]


def _kernel_pair(theta_1, theta_2, name_1, name_2):
    xp = array_module(theta_1, theta_2, names=[name_1, name_2])
    a, _ = _as_real_array(theta_1, name_1, "(a kernel)", xp)
    b, _ = _as_real_array(theta_2, name_2, f"of shape {a.shape}", xp)
    if a.shape != b.shape:
        raise ValueError(f"{name_1} and {name_2} must have the same shape; got {a.shape} and "
                         f"{b.shape}")
    return a, b, xp


def kernel_drift(theta_t, theta_0, *, per_site=False):
    """Relative change of a kernel, ``||Theta_t - Theta_0||_F / ||Theta_0||_F``.

    Parameters
    ----------
    theta_t, theta_0 : ndarray of one shape
        Kernels on the same probe set, e.g. ``mn.ntk(mps_t, probe)`` and ``mn.ntk(mps_0,
        probe)``, shape ``(n_probe, n_probe)`` (or any shape: the norm runs over all entries).
        NumPy or CuPy arrays.
    per_site : bool
        The leading axis indexes sites (``mn.ntk(..., per_site=True)``, shape
        ``(n_sites, n_probe, n_probe)``): return the drift of each site's kernel relative to its
        own initial norm.

    Returns
    -------
    float, or ndarray of shape (n_sites,) with ``per_site``
        A site whose initial kernel is zero (``site_lr = 0``) has drift NaN.

    Raises
    ------
    ValueError
        If the shapes differ, an entry is not finite, or ``theta_0`` is zero.
    """
    per_site = _check_bool(per_site, "per_site")
    a, b, xp = _kernel_pair(theta_t, theta_0, "theta_t", "theta_0")
    if per_site:
        if a.ndim < 2:
            raise ValueError(f"per_site=True needs a leading site axis; got shape {a.shape}")
        axes = tuple(range(1, a.ndim))
        num = _to_host(xp.sqrt(xp.sum((a - b) ** 2, axis=axes)), xp)
        den = _to_host(xp.sqrt(xp.sum(b * b, axis=axes)), xp)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    den = _frobenius(b, xp)
    if den == 0.0:
        raise ValueError("theta_0 is zero: the relative drift is undefined")
    return _frobenius(a - b, xp) / den


def parameter_drift(mps_t, mps_0, *, per_site=False):
    """Relative change of the trainable cores, ``||W_t - W_0||_F / ||W_0||_F``.

    Theory 5.1: ``O(1 / (D sqrt(N d)))`` in the NTK parametrisation.

    Parameters
    ----------
    mps_t, mps_0 : MPS
        Two states of one model (same structure, same device).
    per_site : bool
        Return one value per core, ``||W_t,j - W_0,j|| / ||W_0,j||`` (NaN for a zero core).

    Returns
    -------
    float, or ndarray of shape (n_sites,)
    """
    _check_mps(mps_t, "mps_t")
    _check_mps(mps_0, "mps_0")
    per_site = _check_bool(per_site, "per_site")
    if mps_t.xp is not mps_0.xp:
        raise TypeError("mps_t and mps_0 must live on the same device")
    if [c.shape for c in mps_t.cores] != [c.shape for c in mps_0.cores]:
        raise ValueError("mps_t and mps_0 must have cores of the same shapes (one model)")
    xp = mps_t.xp
    num = np.array([_frobenius((a - b).astype(xp.float64), xp)
                    for a, b in zip(mps_t.cores, mps_0.cores)])
    den = np.array([_frobenius(b.astype(xp.float64), xp) for b in mps_0.cores])
    if per_site:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    total = float(np.sqrt(np.sum(den**2)))
    if total == 0.0:
        raise ValueError("mps_0 has all-zero cores: the relative drift is undefined")
    return float(np.sqrt(np.sum(num**2))) / total


def kernel_alignment(theta, y, *, center=True):
    """Kernel-target alignment ``<Theta, Y Y^T>_F / (||Theta||_F ||Y Y^T||_F)``.

    For one output this is ``y^T Theta y / (||Theta||_F ||y||^2)`` (Cristianini et al. 2002;
    Baratin et al. 2021 follow the NTK's alignment with the targets during training).  For
    ``C`` outputs it is the same cosine with the ``(n, C)`` target matrix: ``tr(Y^T Theta Y) /
    (||Theta||_F ||Y^T Y||_F)``, to be used with the output-traced kernel (``mn.ntk``'s default,
    ``sum_l Theta_ll``) and, for classification, the one-hot targets
    (:func:`mpsntk.datasets.one_hot_targets`).  In ``[0, 1]`` for a positive semi-definite
    kernel.

    Parameters
    ----------
    theta : ndarray, shape (n_samples, n_samples)
        A kernel (NumPy or CuPy).
    y : ndarray, shape (n_samples,) or (n_samples, n_outputs)
        Targets on the same samples, on the kernel's device.
    center : bool
        Subtract the mean target (of each output) first (default), which removes the constant
        mode that every positive kernel aligns with.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        Wrong shapes, non-finite entries, a zero kernel, or (centred) constant targets.
    """
    center = _check_bool(center, "center")
    xp = array_module(theta, y, names=["theta", "y"])
    k, _ = _as_real_array(theta, "theta", "of shape (n_samples, n_samples)", xp)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"theta must be a square kernel (n_samples, n_samples); got {k.shape}")
    n = k.shape[0]
    t, _ = _as_real_array(y, "y", f"of shape ({n},) or ({n}, n_outputs)", xp)
    if t.ndim not in (1, 2) or t.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) or ({n}, n_outputs); got {t.shape}")
    t = t.reshape(n, -1)
    if center:
        t = t - t.mean(axis=0, keepdims=True)
    yy = _frobenius(t.T @ t, xp)  # = ||Y Y^T||_F, computed on the small side
    if yy == 0.0:
        raise ValueError("y is zero" + (" after centring (constant targets)" if center else ""))
    norm = _frobenius(k, xp)
    if norm == 0.0:
        raise ValueError("theta is zero: the alignment is undefined")
    return float(xp.sum(t * (k @ t))) / (norm * yy)


def kernel_distance(theta_1, theta_2):
    """Kernel distance ``S = 1 - <Theta_1, Theta_2>_F / (||Theta_1||_F ||Theta_2||_F)``
    (Fort et al. 2020): 0 for kernels that differ by a positive factor, up to 2.

    Parameters
    ----------
    theta_1, theta_2 : ndarray of one shape (NumPy or CuPy)

    Returns
    -------
    float
    """
    a, b, xp = _kernel_pair(theta_1, theta_2, "theta_1", "theta_2")
    na, nb = _frobenius(a, xp), _frobenius(b, xp)
    if na == 0.0 or nb == 0.0:
        raise ValueError("theta_1 and theta_2 must be non-zero for the kernel distance")
    return 1.0 - float(xp.sum(a * b)) / (na * nb)


def kernel_velocity(theta_1, theta_2, dt):
    """Kernel velocity ``S(t_1, t_2) / (t_2 - t_1)`` (Fort et al. 2020), with ``S`` the
    :func:`kernel_distance` and ``dt = t_2 - t_1 > 0`` in the caller's time unit (steps, or
    ``learning_rate * steps``)."""
    dt = _check_positive_float(dt, "dt")
    return kernel_distance(theta_1, theta_2) / dt


class KernelDriftMonitor(_StepCallback):
    """Callback for :func:`mpsntk.train`: kernel and parameter drift, alignment and velocity.

    The first call is the reference (step 0 in ``mn.train`` unless ``log_steps`` leaves it
    out); every call computes the NTK of the current model on ``probe`` with the engine and
    returns

    * ``ntk_drift``: ``||Theta_t - Theta_0||_F / ||Theta_0||_F`` (output-traced kernel);
    * ``ntk_drift_per_site`` (with ``per_site``): ndarray (n_sites,), each site's kernel
      relative to its own initial norm (:func:`kernel_drift`);
    * ``param_drift`` and ``param_drift_per_site``: :func:`parameter_drift`;
    * ``ntk_norm``: ``||Theta_t||_F``;
    * ``kernel_distance`` and ``kernel_velocity``: :func:`kernel_distance` between the
      previous logged state and this one, and that divided by the number of steps between them
      (NaN at the first call);
    * ``alignment`` (with ``y``): :func:`kernel_alignment` of ``Theta_t`` with the centred
      targets.

    Memory: the reference kernel (per site with ``per_site``: ``n_sites * n_probe**2``
    entries), the previous kernel, one copy of the initial cores, all in float64 on the
    model's device; nothing grows with the number of logged steps.

    Parameters
    ----------
    probe : ndarray, shape (n_probe, n_sites, phys_dim)
        Features on the model's device and in its dtype.
    y : ndarray, shape (n_probe,) or (n_probe, n_outputs), optional
        Targets of the probe samples for the alignment (on the same device).
    per_site : bool
        Also the per-site kernel drift (default True).

    Examples
    --------
    >>> import numpy as np, mpsntk as mn
    >>> phi = mn.features.trig(np.random.default_rng(0).uniform(size=(20, 6)))
    >>> y = np.cos(np.pi * phi[:, :, 1].sum(axis=1))
    >>> drift = mn.diagnostics.KernelDriftMonitor(phi, y)
    >>> res = mn.train(mn.MPS.random(6, 16, seed=0), phi, y, learning_rate=0.5, n_steps=100,
    ...                log_every=50, callbacks=[drift])
    >>> [round(c["ntk_drift"], 3) for c in res.callbacks]
    [0.0, 0.241, 0.245]
    """

    def __init__(self, probe, y=None, *, per_site=True):
        self.probe = _as_probe(probe)
        self.per_site = _check_bool(per_site, "per_site")
        if y is not None:
            n = self.probe.shape[0]
            y, _ = _as_real_array(y, "y", f"of shape ({n},) or ({n}, n_outputs)")
            if y.ndim not in (1, 2) or y.shape[0] != n:
                raise ValueError(f"y must have shape ({n},) or ({n}, n_outputs) like the probe "
                                 f"set; got {y.shape}")
        self.y = y
        super().__init__()

    def reset(self):
        super().reset()
        self._theta_0 = self._sites_0 = self._theta_prev = self._mps_0 = None

    def _compute(self, step, mps, first):
        xp = mps.xp
        if first:
            mps.check_features(self.probe, "probe")
            if self.y is not None and array_module(self.y, names=["y"]) is not xp:
                raise TypeError(f"y must live on the model's device; got {_describe(self.y)}")
        if self.per_site:
            sites = ntk(mps, self.probe, per_site=True).astype(xp.float64)
            theta = sites.sum(axis=0)
        else:
            sites = None
            theta = ntk(mps, self.probe).astype(xp.float64)
        out = {"ntk_norm": _frobenius(theta, xp)}
        if first:
            self._theta_0, self._sites_0 = theta, sites
            self._mps_0 = mps.copy()
            self._prev_step = step
            out["kernel_distance"] = out["kernel_velocity"] = float("nan")
        else:
            out["kernel_distance"] = kernel_distance(self._theta_prev, theta)
            out["kernel_velocity"] = out["kernel_distance"] / (step - self._prev_step)
        out["ntk_drift"] = kernel_drift(theta, self._theta_0)
        if self.per_site:
            out["ntk_drift_per_site"] = kernel_drift(sites, self._sites_0, per_site=True)
        out["param_drift"] = parameter_drift(mps, self._mps_0)
        out["param_drift_per_site"] = parameter_drift(mps, self._mps_0, per_site=True)
        if self.y is not None:
            out["alignment"] = kernel_alignment(theta, self.y)
        self._theta_prev, self._prev_step = theta, step
        return out
