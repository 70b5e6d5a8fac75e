"""Products with the Jacobian of an MPS: vjp (gradients), jvp, and the explicit Jacobian.

All three use the engine's environments: ``df_l(x)/dW_j[s, a, b] = c_j phi_s L_j[a] R_j[b]``
(open chains) or ``c_j phi_s E_j[b, a]`` (periodic), so ``vjp`` and ``jvp`` cost one
environment sweep plus ``O(n_samples * n_params)``.
"""

from __future__ import annotations

import numpy as np

from ._backend import array_module, as_array, require_host
from ._engine import HOST, engine_for
from ._validate import (
    _NORMALISED_OVERFLOW,
    _below_normal,
    _check_bool,
    _check_in_range,
)
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
    HOST.check_fits(
        int(np.prod(shape, dtype=np.float64)) * mps.dtype.itemsize + HOST.prepare_bytes(mps, n),
        f"a Jacobian of shape {shape}",
        "use ntk(), ntk_vp(), vjp() or jvp() instead",
    )
    out = HOST.jacobian(HOST.prepare(mps, phi, tiles=False))
    _check_in_range(np, [out], "the Jacobian", mps.dtype, mps)
    return out[:, 0] if mps.output_site is None else out


def vjp(mps, phi, cotangent, *, normalized=False):
    """Gradients ``J^T cotangent`` with respect to every core.

    Parameters
    ----------
    cotangent : ndarray, shape (n_samples,) or (n_samples, n_outputs)
        E.g. ``dL/df`` of a loss.
    normalized : bool
        Return ``(grads_tilde, log_scale)`` with ``grads[j] = exp(log_scale[j]) *
        grads_tilde[j]``: the form to use for long chains, whose gradients leave the range of
        the dtype (the engine computes every gradient relative to its largest term).

    Returns
    -------
    list of ndarray
        One array per core, shaped like ``mps.cores[j]``; with ``normalized=True``, that list
        and ``log_scale``, a float64 array of shape (n_sites,).

    Raises
    ------
    FloatingPointError
        If a gradient overflows the dtype, or underflows it (the whole gradient of a core
        below the dtype's smallest normal number though it is not zero): use
        ``normalized=True``.
    ValueError
        If the model's parameters hold NaN or Inf entries (written after it was built).
    """
    _check_mps(mps)
    xp = mps.same_device(array_module(phi, cotangent, names=["phi", "cotangent"]), "phi")
    phi = mps.check_features(phi)
    normalized = _check_bool(normalized, "normalized")
    cot = _cotangent(mps, xp, cotangent, phi.shape[0])
    eng = engine_for(mps)
    return _vjp(eng, eng.prepare(mps, phi, tiles=False), cot, normalized)


def _cotangent(mps, xp, cotangent, n):
    """A validated cotangent of shape (n,) (scalar models) or (n, C), as a C-contiguous (n, C)."""
    C = mps.n_outputs
    cot = _as_vector_block(mps, cotangent, n, "cotangent")
    if cot.ndim != (1 if mps.output_site is None else 2):
        raise ValueError(
            f"cotangent must have shape {(n,) if C == 1 and mps.output_site is None else (n, C)}; "
            f"got {cot.shape}"
        )
    return xp.ascontiguousarray(cot.reshape(n, C))


def _vjp(eng, batch, cot, normalized):
    """:func:`vjp` of a prepared batch and a validated (n, C) cotangent, with its range checks.
    Shared with :func:`mpsntk._blocks.transpose_vp`."""
    mps = batch.mps
    xp = mps.xp
    grads, logs = eng.vjp(batch, cot, normalized=normalized)
    if normalized:
        _check_in_range(xp, grads, "the normalised vjp", mps.dtype, mps, _NORMALISED_OVERFLOW)
        return grads, logs
    _check_in_range(xp, grads, "the vjp", mps.dtype, mps, "use normalized=True")
    low = [j for j, g in enumerate(grads) if _below_normal(xp, g, mps.dtype)]
    if low:
        tilde, _ = eng.vjp(batch, cot, normalized=True)
        lost = [j for j in low if bool(xp.any(tilde[j] != 0))]
        if lost:
            raise FloatingPointError(
                f"the vjp underflows the range of {mps.dtype.name}: the gradient of "
                f"cores[{lost[0]}]{' (and of other cores)' if len(lost) > 1 else ''} lies below "
                f"{np.finfo(mps.dtype).tiny:.3g} although it is not zero; use normalized=True"
            )
    return grads


def jvp(mps, phi, tangents, *, normalized=False):
    """Directional derivative ``J . tangents`` of the outputs.

    Parameters
    ----------
    tangents : sequence of ndarray
        One array per core, shaped like ``mps.cores[j]``.
    normalized : bool
        Return ``(out_tilde, log_scale)`` with ``out[i] = exp(log_scale[i]) * out_tilde[i]``
        (each sample's sum of site terms taken relative to its largest scale): the form to use
        for long chains.

    Returns
    -------
    ndarray, shape (n_samples,) or (n_samples, n_outputs)
        With ``normalized=True``, that array and ``log_scale``, float64 of shape (n_samples,).

    Raises
    ------
    FloatingPointError
        If an entry overflows the dtype, or the result underflows it (every entry below the
        dtype's smallest normal number though it is not zero): use ``normalized=True``.
    ValueError
        If the model's parameters hold NaN or Inf entries (written after it was built).
    """
    _check_mps(mps)
    _check_tangent_list(tangents)
    names = ["phi"] + [f"tangents[{j}]" for j in range(len(tangents))]
    xp = mps.same_device(array_module(phi, *tangents, names=names), "phi")
    phi = mps.check_features(phi)
    normalized = _check_bool(normalized, "normalized")
    ts = _tangents(mps, xp, tangents)
    eng = engine_for(mps)
    return _jvp(eng, eng.prepare(mps, phi, tiles=False), ts, normalized)


def _check_tangent_list(tangents):
    if isinstance(tangents, np.ndarray) or not isinstance(tangents, (list, tuple)):
        raise TypeError(
            f"tangents must be a list of arrays, one per core; got {type(tangents).__name__}"
        )


def _tangents(mps, xp, tangents):
    """Validated tangents (a list, see :func:`_check_tangent_list`): C-contiguous arrays of the
    cores' shapes and dtype, one per core."""
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
    return ts


def _jvp(eng, batch, ts, normalized):
    """:func:`jvp` of a prepared batch and validated tangents, with its range checks.  Shared
    with :func:`mpsntk._blocks.jacobian_vp`."""
    mps = batch.mps
    xp = mps.xp
    out, log = eng.jvp(batch, ts, normalized=normalized)
    squeeze = (lambda a: a[:, 0]) if mps.output_site is None else (lambda a: a)
    if normalized:
        _check_in_range(xp, [out], "the normalised jvp", mps.dtype, mps, _NORMALISED_OVERFLOW)
        return squeeze(out), log
    _check_in_range(xp, [out], "the jvp", mps.dtype, mps, "use normalized=True")
    if _below_normal(xp, out, mps.dtype) and bool(
        xp.any(eng.jvp(batch, ts, normalized=True)[0] != 0)
    ):
        raise FloatingPointError(
            f"the jvp underflows the range of {mps.dtype.name} (every entry is below "
            f"{np.finfo(mps.dtype).tiny:.3g} although it is not zero); use normalized=True"
        )
    return squeeze(out)
