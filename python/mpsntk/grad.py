"""Products with the Jacobian of an MPS: vjp (gradients), jvp, and the explicit Jacobian.

All three use the engine's environments: ``df_l(x)/dW_j[s, a, b] = c_j phi_s L_j[a] R_j[b]``
(open chains) or ``c_j phi_s E_j[b, a]`` (periodic), so ``vjp`` and ``jvp`` cost one
environment sweep plus ``O(n_samples * n_params)``.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._backend import array_module, as_array, require_host
from ._validate import _check_fits, _check_in_range
from .ntk import _as_vector_block, _check_mps

__all__ = ["jacobian", "vjp", "jvp"]


def jacobian(mps, phi):
    """Dense Jacobian with respect to the cores (for small models and checks).

    Returns
    -------
    ndarray, shape (n_samples, n_params) or (n_samples, n_outputs, n_params)
        Parameters ordered site by site, each core flattened in C order.
    """
    _check_mps(mps)
    require_host(phi, names=["phi"])
    phi = mps.check_features(phi)
    n, C = phi.shape[0], mps.n_outputs
    shape = (n, C, mps.n_params)
    _check_fits(
        int(np.prod(shape, dtype=np.float64)) * mps.dtype.itemsize,
        f"a Jacobian of shape {shape}",
        "use ntk(), ntk_vp(), vjp() or jvp() instead",
    )
    out = np.empty(shape, dtype=mps.dtype)
    _core.jacobian(*mps._engine_args(), phi, out)
    return out[:, 0] if mps.output_site is None else out


def vjp(mps, phi, cotangent):
    """Gradients ``J^T cotangent`` with respect to every core.

    Parameters
    ----------
    cotangent : ndarray, shape (n_samples,) or (n_samples, n_outputs)
        E.g. ``dL/df`` of a loss.

    Returns
    -------
    list of ndarray
        One array per core, shaped like ``mps.cores[j]``.

    Raises
    ------
    FloatingPointError
        If a gradient overflows the dtype.
    """
    _check_mps(mps)
    xp = mps.same_device(array_module(phi, cotangent, names=["phi", "cotangent"]), "phi")
    phi = mps.check_features(phi)
    n, C = phi.shape[0], mps.n_outputs
    cot = _as_vector_block(mps, cotangent, n, "cotangent")
    if cot.ndim != (1 if mps.output_site is None else 2):
        raise ValueError(
            f"cotangent must have shape {(n,) if C == 1 and mps.output_site is None else (n, C)}; "
            f"got {cot.shape}"
        )
    cot = xp.ascontiguousarray(cot.reshape(n, C))
    if xp is not np:  # pragma: no cover - needs a GPU
        from . import _device

        grads = _device.gpu().vjp(mps, phi, cot)
    else:
        grads = [np.empty_like(c) for c in mps.cores]
        _core.vjp(*mps._engine_args(), phi, cot, grads)
    return _check_in_range(xp, grads, "the vjp", mps.dtype, mps)


def jvp(mps, phi, tangents):
    """Directional derivative ``J . tangents`` of the outputs.

    Parameters
    ----------
    tangents : sequence of ndarray
        One array per core, shaped like ``mps.cores[j]``.

    Returns
    -------
    ndarray, shape (n_samples,) or (n_samples, n_outputs)

    Raises
    ------
    FloatingPointError
        If an entry overflows the dtype.
    """
    _check_mps(mps)
    if isinstance(tangents, np.ndarray) or not isinstance(tangents, (list, tuple)):
        raise TypeError(
            f"tangents must be a list of arrays, one per core; got {type(tangents).__name__}"
        )
    names = ["phi"] + [f"tangents[{j}]" for j in range(len(tangents))]
    xp = mps.same_device(array_module(phi, *tangents, names=names), "phi")
    phi = mps.check_features(phi)
    if len(tangents) != mps.n_sites:
        raise ValueError(
            f"tangents must hold one array per core ({mps.n_sites}); got {len(tangents)}"
        )
    ts = []
    for j, (t, c) in enumerate(zip(tangents, mps.cores)):
        t = as_array(t, xp)
        if t.shape != c.shape:
            raise ValueError(f"tangents[{j}] must have shape {c.shape}; got {t.shape}")
        if t.dtype != mps.dtype:
            raise TypeError(f"tangents[{j}] must have dtype {mps.dtype}; got {t.dtype}")
        if not bool(xp.all(xp.isfinite(t))):
            raise ValueError(f"tangents[{j}] must be finite; got NaN or Inf entries")
        ts.append(xp.ascontiguousarray(t))
    if xp is not np:  # pragma: no cover - needs a GPU
        from . import _device

        out = _device.gpu().jvp(mps, phi, ts)
    else:
        out = np.empty((phi.shape[0], mps.n_outputs), dtype=mps.dtype)
        _core.jvp(*mps._engine_args(), phi, ts, out)
    _check_in_range(xp, [out], "the jvp", mps.dtype, mps)
    return out[:, 0] if mps.output_site is None else out
