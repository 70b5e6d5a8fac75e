"""Born machines: ``p(x) = Psi(x)^2 / Z`` over all configurations ``x in {0..d-1}^N``.

The MPS is evaluated on one-hot features ``phi(x_j) = feature_scale * e_{x_j}`` (theory section
4.3 uses ``feature_scale = 1/sqrt(2)``).  ``Z = sum_x Psi(x)^2`` comes from contracting the
doubled MPS in the C++ engine (``O(N d D^3)`` open, ``O(N d D^5)`` periodic), as does its
gradient; exact samples come from sequential conditionals against the doubled suffixes.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._backend import require_host
from ._validate import (
    _as_configurations,
    _check_choice,
    _check_int,
    _check_positive_float,
    _check_seed,
)
from .datasets import all_configurations
from .features import onehot
from .grad import vjp
from .mps import MPS

__all__ = [
    "log_partition",
    "log_partition_grad",
    "log_probabilities",
    "nll",
    "nll_grad",
    "probabilities",
    "sample",
]


def _check_born_mps(mps):
    if not isinstance(mps, MPS):
        raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
    if mps.output_site is not None:
        raise ValueError("a Born machine needs a scalar-output MPS (output_site=None)")
    require_host(mps.cores[0], names=["mps.cores"])  # the doubled-MPS contractions are host code
    return mps


def _weights(mps, feature_scale):
    scale = _check_positive_float(feature_scale, "feature_scale")
    return np.full(mps.phys_dim, scale * scale)


def _engine(name, mps):
    return getattr(_core, f"{name}_{mps.dtype.name}")


def log_partition(mps, feature_scale=1.0):
    """``log Z`` with ``Z = sum_x Psi(x)^2`` over all ``phys_dim ** n_sites`` configurations.

    Exact, by contracting the doubled MPS; safe for long chains (log-scale normalised).
    """
    _check_born_mps(mps)
    return float(
        _engine("log_partition", mps)(
            mps.cores, mps.scales, mps.boundary, _weights(mps, feature_scale), None
        )
    )


def log_partition_grad(mps, feature_scale=1.0):
    """``log Z`` and ``d log Z / d W_j`` for every core (list shaped like ``mps.cores``)."""
    _check_born_mps(mps)
    grads = [np.empty_like(c) for c in mps.cores]
    logz = _engine("log_partition", mps)(
        mps.cores, mps.scales, mps.boundary, _weights(mps, feature_scale), grads
    )
    return float(logz), grads


def _as_configs(mps, x, name="x"):
    """Configurations of shape (n_samples, mps.n_sites) with entries in 0..mps.phys_dim - 1."""
    return _as_configurations(x, mps.phys_dim, name, n_sites=mps.n_sites)


def _features(mps, x, feature_scale):
    return onehot(x, phys_dim=mps.phys_dim, scale=feature_scale, dtype=mps.dtype)


def log_probabilities(mps, x, feature_scale=1.0):
    """``log p(x)`` for configurations ``x`` of shape (n_samples, n_sites) (-inf where Psi = 0)."""
    _check_born_mps(mps)
    x = _as_configs(mps, x)
    _, logabs = mps.log_forward(_features(mps, x, feature_scale))
    return 2.0 * logabs - log_partition(mps, feature_scale)


def probabilities(mps, feature_scale=1.0):
    """Exact ``p(x)`` on all configurations, small chains only.

    Ordered as :func:`mpsntk.datasets.all_configurations`.
    """
    _check_born_mps(mps)
    omega = all_configurations(mps.n_sites, mps.phys_dim)
    return np.exp(log_probabilities(mps, omega, feature_scale))


def nll(mps, x, feature_scale=1.0, reduction="mean"):
    """Negative log-likelihood ``-sum_i log p(x_i)`` ("sum") or its mean over the data ("mean")."""
    reduction = _check_choice(reduction, "reduction", ("mean", "sum"))
    lp = log_probabilities(mps, x, feature_scale)
    return float(-(lp.mean() if reduction == "mean" else lp.sum()))


def nll_grad(mps, x, feature_scale=1.0, reduction="mean"):
    """NLL and its gradient with respect to every core.

    ``L = -sum_i log Psi(x_i)^2 + m log Z`` (divided by m for "mean"), so
    ``dL/dW = -2 sum_i dPsi(x_i)/Psi(x_i) + m d log Z/dW``: one vjp plus the doubled-MPS gradient.

    Returns
    -------
    loss : float
    grads : list of ndarray shaped like ``mps.cores``
    """
    _check_born_mps(mps)
    reduction = _check_choice(reduction, "reduction", ("mean", "sum"))
    x = _as_configs(mps, x)
    phi = _features(mps, x, feature_scale)
    psi = mps.forward(phi)
    if np.any(psi == 0):
        raise FloatingPointError("Psi(x) = 0 for a training configuration: the NLL is infinite")
    m = x.shape[0]
    logz, gz = log_partition_grad(mps, feature_scale)
    loss = -np.sum(np.log(psi.astype(np.float64) ** 2)) + m * logz
    grads = vjp(mps, phi, (-2.0 / psi).astype(mps.dtype))
    grads = [g + m * h for g, h in zip(grads, gz)]
    if reduction == "mean":
        loss /= m
        grads = [g / m for g in grads]
    return float(loss), grads


def sample(mps, n_samples, seed=None, feature_scale=1.0):
    """Exact samples from ``p(x)`` by sequential conditional sampling.

    ``seed`` is None, an integer >= 0 or a ``numpy.random.Generator``.

    Each site's conditional ``p(x_j | x_<j)`` contracts the sampled prefix with the doubled
    suffix of the chain (computed once by the engine), so the samples are exact for open and
    periodic chains.

    Returns
    -------
    ndarray of int64, shape (n_samples, n_sites)
    """
    _check_born_mps(mps)
    n_samples = _check_int(n_samples, "n_samples", 1)
    rng = _check_seed(seed)
    scale = _check_positive_float(feature_scale, "feature_scale")
    slots, _ = _engine("doubled_right_environments", mps)(
        mps.cores, mps.scales, mps.boundary, _weights(mps, feature_scale)
    )
    D0 = mps.bond_dims[0]
    prefix = np.broadcast_to(np.eye(D0), (n_samples, D0, D0)).copy()  # (n, D0, D_j)
    out = np.empty((n_samples, mps.n_sites), dtype=np.int64)
    for j in range(mps.n_sites):
        A = scale * mps.scales[j] * mps.cores[j].astype(np.float64)  # (d, D_j, D_{j+1})
        nxt = np.einsum("nab,sbc->snac", prefix, A)  # candidate prefixes per state s
        D = A.shape[2]
        S = slots[j + 1].reshape(D0, D0, D, D)  # channel (alpha, alpha') -> D x D block
        q = np.einsum("snab,snAB,aAbB->sn", nxt, nxt, S)
        q = np.clip(q, 0.0, None).T  # (n, d); exact values are sums of squares
        total = q.sum(1, keepdims=True)
        if np.any(total <= 0):
            raise FloatingPointError("a conditional distribution vanished (Z = 0 on this prefix)")
        u = rng.random((n_samples, 1))
        choice = np.minimum((np.cumsum(q / total, axis=1) < u).sum(1), mps.phys_dim - 1)
        out[:, j] = choice
        prefix = nxt[choice, np.arange(n_samples)]
        prefix /= np.abs(prefix).max(axis=(1, 2), keepdims=True)
    return out
