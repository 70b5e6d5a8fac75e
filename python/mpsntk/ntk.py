"""The empirical neural tangent kernel of an MPS, computed without forming the Jacobian.

For open chains ``Theta(x, x') = sum_j r_j c_j^2 k_j(x, x') (L_j . L_j') (R_j . R_j')`` with left
and right environments ``L_j``, ``R_j``; periodic chains use ``<E_j, E_j'>_F`` with the open
environment ``E_j`` (theory section 2).  The C++ engine contracts the environments once per batch
(``O(n_samples n_sites d D^2)``, periodic ``O(n_samples n_sites D^3)``) and accumulates the Gram
sums tile by tile (``O(n1 n2 n_sites (d + 2D))``); extra memory is the environments plus one
tile per thread.  Multi-output models traced over their C outputs (the default) take one pass:
the output-dependent environment of each site enters as one row of ``C D`` values per sample
(``O(n1 n2 n_sites (d + D + C D))``); ``outputs="full"`` takes one pass per output pair.
"""

from __future__ import annotations

import numpy as np

from ._backend import array_module, as_array
from ._engine import KERNEL_HINT, engine_for
from ._validate import (
    _NORMALISED_OVERFLOW,
    _as_site_vector,
    _below_normal,
    _check_bool,
    _check_choice,
    _check_in_range,
    _check_int,
    _check_out,
)
from .mps import MPS

__all__ = ["ntk", "ntk_vp"]

_OUTPUTS = ("trace", "mean", "full")
_PRECISIONS = ("highest", "tf32")


def _check_mps(mps):
    if not isinstance(mps, MPS):
        raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
    return mps


def _site_lr(mps, site_weights):
    """Per-site rates r_j handed to the engine (its weight is c_j^2 r_j)."""
    if site_weights is None:
        return mps.site_lr
    w = _as_site_vector(site_weights, "site_weights", mps.n_sites, positive=False)
    return w / mps.scales**2


def ntk(
    mps,
    phi1,
    phi2=None,
    *,
    per_site=False,
    outputs="trace",
    normalized=False,
    out=None,
    tile=None,
    site_weights=None,
    precision="highest",
):
    """Empirical NTK ``Theta(X1, X2)`` with respect to the trainable cores.

    Parameters
    ----------
    mps : MPS
    phi1 : ndarray, shape (n1, n_sites, phys_dim)
        Features in the model's dtype.
    phi2 : ndarray, shape (n2, n_sites, phys_dim), optional
        None means ``Theta(X1, X1)``, computed on the symmetric path (each off-diagonal tile
        once, then mirrored).
    per_site : bool
        Return the per-site terms ``Theta_j`` along a leading axis of length ``n_sites``
        (their sum is the NTK); re-weight sites for free with them.
    outputs : {"trace", "mean", "full"}
        Multi-output models: "trace" gives ``sum_l Theta_ll`` (default), "mean" that divided by
        ``n_outputs`` (the kernel that multiplies ``I_C`` in the infinite-width limit), "full"
        the whole ``(n1, n2, n_outputs, n_outputs)`` block ``Theta_{l l'}(x_i, x_k)``.
        Ignored for scalar models.
    normalized : bool
        Return ``(theta_tilde, log_scale1, log_scale2)`` with
        ``Theta[i, k] = exp(log_scale1[i] + log_scale2[k]) * theta_tilde[i, k]``: the form to use
        for long chains (hundreds of sites) whose kernel over- or underflows.
    out : ndarray, optional
        Preallocated C-contiguous output of the result's shape and dtype (a ``numpy.memmap``
        works: the kernel is written tile by tile).  It is first filled with NaN, and every
        entry is then written once, with its final value: a call that does not finish (an
        error, Ctrl-C, a killed process) leaves NaN wherever the kernel was not written, so
        that a half-written kernel cannot pass for a whole one (``numpy.isnan(out).any()``
        tells; a finished call never leaves NaN).  The fill is one extra pass of writes over
        ``out`` (for a memory map, over its pages before the kernel's own writes), against
        ``n_sites * (phys_dim + 2 * bond_dim)`` operations per entry for the kernel.
    tile : int, optional
        Output tile edge of the CPU engine (rounded up to its micro-tile); each thread holds a
        ``tile^2`` buffer. Default: the largest of 512, 256, 128, 64 that still gives every
        thread several tiles (larger tiles re-read the packed environments less often).
    site_weights : float or array of shape (n_sites,), optional
        Override the per-site weights ``lambda_j`` (default ``scales_j^2 * site_lr_j``).
    precision : {"highest", "tf32"}
        "highest" (default): every product in the model's dtype (float64 runs on the GPU's
        FP64 tensor cores, which compute in IEEE double). "tf32": an opt-in fast path for
        float32 models on a CUDA device, whose Gram products round their inputs to TF32 (10-bit
        mantissa; accumulation stays float32), so entries carry relative errors of about 1e-3.

    Returns
    -------
    ndarray of shape (n1, n2), (n1, n2, C, C), or with a leading ``n_sites`` axis; or the
    triple described under ``normalized``.

    Raises
    ------
    FloatingPointError
        If the kernel overflows the dtype without ``normalized=True``, or underflows it (the
        whole non-zero kernel below the dtype's smallest normal number); with
        ``normalized=True``, if even the normalised kernel overflows (features too large for
        the dtype: its entries carry the products of the features, which are not normalised).
    ValueError
        If the model's parameters hold NaN or Inf entries (written after it was built).
    """
    _check_mps(mps)
    xp = mps.same_device(array_module(phi1, phi2, out, names=["phi1", "phi2", "out"]), "phi1")
    phi1 = mps.check_features(phi1, "phi1")
    if phi2 is not None:
        phi2 = mps.check_features(phi2, "phi2")
    eng = engine_for(mps)
    n1, n2 = phi1.shape[0], None if phi2 is None else phi2.shape[0]

    def prepare():
        return eng.prepare(mps, phi1), None if phi2 is None else eng.prepare(mps, phi2)

    return _ntk(eng, mps, xp, n1, n2, prepare, eng.prepare_bytes(mps, n1 + (n2 or 0)),
                per_site=per_site, outputs=outputs, normalized=normalized, out=out, tile=tile,
                site_weights=site_weights, precision=precision)


def _ntk(eng, mps, xp, n1, n2, prepare, prepare_bytes, *, per_site, outputs, normalized, out,
         tile, site_weights, precision):
    """:func:`ntk` after its features are validated, for batches of ``n1`` and ``n2`` samples
    (``n2`` None: symmetric): validates the options, checks the memory of the whole call
    (``prepare_bytes``: what ``prepare()`` will allocate, 0 for batches already prepared),
    then ``prepare()`` gives the engine batches ``(b1, b2)``.  Shared with
    :func:`mpsntk._blocks.kernel_block`, whose batches are prepared once for many calls."""
    per_site = _check_bool(per_site, "per_site")
    normalized = _check_bool(normalized, "normalized")
    outputs = _check_choice(outputs, "outputs", _OUTPUTS)
    if tile is not None:
        tile = _check_int(tile, "tile", 1)
    precision = _check_choice(precision, "precision", _PRECISIONS)
    tf32 = precision == "tf32"
    if tf32 and (xp is np or mps.dtype != np.float32):
        raise ValueError(
            "precision='tf32' needs a float32 model on a CUDA device (TF32 is a tensor-core "
            f"format); got a {mps.dtype.name} model on "
            + ("the host" if xp is np else "a CUDA device")
        )
    site_lr = _site_lr(mps, site_weights)
    if outputs == "mean" and mps.n_outputs > 1:
        # In the site weights, not a pass over the result: every entry is written once.
        site_lr = site_lr / mps.n_outputs
    symmetric = n2 is None
    full = outputs == "full" and mps.n_outputs > 1
    shape = (n1, n1 if symmetric else n2) + ((mps.n_outputs, mps.n_outputs) if full else ())
    if per_site:
        shape = (mps.n_sites,) + shape
    # The memory of the whole call is checked before anything is allocated: the environments of
    # both batches and the tiles, then with the kernel.
    work = prepare_bytes + eng.ntk_bytes(mps, n1, 0 if symmetric else n2, full=full,
                                         per_site=per_site, tile=tile)
    eng.check_fits(work, "the environments of this NTK", "compute fewer samples at a time")
    if out is None:
        eng.check_fits(
            work + int(np.prod(shape, dtype=np.float64)) * mps.dtype.itemsize,
            f"an NTK of shape {shape} ({mps.dtype.name})",
            KERNEL_HINT,
        )
    else:
        out = _check_out(out, shape, mps.dtype, xp=xp)
        out.fill(np.nan)  # entries not (yet) written stay NaN: see the docstring
    b1, b2 = prepare()
    out, log1, log2, finite = eng.ntk(b1, b2, site_lr, full=full, per_site=per_site,
                                      normalized=normalized, tile=tile, tf32=tf32, out=out)
    if not finite:
        mps.check_parameters()
        if normalized:
            raise FloatingPointError(
                f"the normalised NTK overflows the range of {mps.dtype.name}: its entries carry "
                "the products of the features, which are too large for it; scale the features "
                "down or compute in float64"
            )
        raise FloatingPointError(
            "the NTK overflows the range of " + mps.dtype.name + "; use normalized=True"
        )
    if normalized:
        return out, log1, log2
    if _below_normal_kernel(mps, out, symmetric, full, per_site, xp):
        # the normalised kernel of the same batches says whether it is zero
        tilde = eng.ntk(b1, b2, site_lr, full=full, per_site=per_site, normalized=True,
                        tile=tile, tf32=tf32)[0]
        if bool(xp.any(tilde != 0)):
            raise FloatingPointError(
                "the NTK underflows the range of " + mps.dtype.name + " (every entry is below "
                f"{np.finfo(mps.dtype).tiny:.3g}); use normalized=True"
            )
    return out


def _below_normal_kernel(mps, out, symmetric, full, per_site, xp):
    """Whether the whole kernel lies below the dtype's normal range (an underflow, unless it is
    zero).  Symmetric kernels are positive semi-definite, so their diagonal bounds every entry."""
    if out.size == 0:
        return False
    if symmetric:
        diag = xp.diagonal(out, axis1=per_site, axis2=per_site + 1)  # (n_sites?, [C, C,] n)
        if full:
            diag = xp.diagonal(diag, axis1=per_site, axis2=per_site + 1)
        peak = float(xp.max(diag))
    else:
        peak = max(float(xp.max(out)), -float(xp.min(out)))  # no |out| temporary
    return peak < np.finfo(mps.dtype).tiny


def ntk_vp(mps, phi, v, *, site_weights=None, normalized=False):
    """``Theta(X, X) @ v`` without forming ``Theta``, in ``O(n_samples * n_params)``.

    Computed as ``J diag(lambda) J^T v`` through the environments, in the normalised forms of
    :func:`mpsntk.vjp` and :func:`mpsntk.jvp`.

    Parameters
    ----------
    mps : MPS
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
    v : ndarray
        Scalar models: shape (n_samples,) or (n_samples, k).  Multi-output models:
        (n_samples, n_outputs) or (n_samples, n_outputs, k), contracting with the full
        output-resolved kernel ``Theta_{l l'}``.
    site_weights : optional
        As in :func:`ntk`.
    normalized : bool
        Return ``(tv_tilde, log_scale)``, the form to use for long chains: ``log_scale`` has
        the shape of ``v`` without its output axis -- (n_samples,) or (n_samples, k) -- and
        ``Theta v = exp(log_scale) * tv_tilde`` with ``log_scale`` broadcast along the outputs
        (``exp(log_scale)[:, None, :]`` for ``v`` of shape (n_samples, n_outputs, k)).

    Returns
    -------
    ndarray of the shape of ``v``; or the pair described under ``normalized``.

    Raises
    ------
    FloatingPointError
        If an entry overflows the dtype, or the result underflows it (every entry below the
        dtype's smallest normal number though it is not zero): use ``normalized=True``.
    ValueError
        If the model's parameters hold NaN or Inf entries (written after it was built).
    """
    _check_mps(mps)
    xp = mps.same_device(array_module(phi, v, names=["phi", "v"]), "phi")
    phi = mps.check_features(phi)
    normalized = _check_bool(normalized, "normalized")
    v = _as_vector_block(mps, v, phi.shape[0], "v")
    n, C = phi.shape[0], mps.n_outputs
    flat = xp.ascontiguousarray(v.reshape(n, C, -1))
    site_lr = _site_lr(mps, site_weights)
    eng = engine_for(mps)
    res, log = _ntk_vp(eng, eng.prepare(mps, phi, tiles=False), None, flat, site_lr, normalized)
    columns = v.shape[1:] if mps.output_site is None else v.shape[2:]
    if normalized:
        return res.reshape(v.shape), log.reshape((n,) + columns)
    return res.reshape(v.shape)


def _ntk_vp(eng, b1, b2, v, site_lr, normalized):
    """``Theta(X1, X2) v`` (``b2`` None: ``X2 = X1``) of prepared batches for a validated
    ``v`` of shape (n2, C, k), with the range checks of :func:`ntk_vp`; returns ``(res, log)``
    (``log`` None unless ``normalized``).  Shared with :func:`mpsntk._blocks.kernel_vp`."""
    mps = b1.mps
    xp = mps.xp
    res, log = eng.ntk_vp(b1, v, site_lr, b2=b2, normalized=normalized)
    if normalized:
        _check_in_range(xp, [res], "the normalised Theta v", mps.dtype, mps, _NORMALISED_OVERFLOW)
        return res, log
    _check_in_range(xp, [res], "Theta v", mps.dtype, mps, "use normalized=True")
    if _below_normal(xp, res, mps.dtype) and bool(
        xp.any(eng.ntk_vp(b1, v, site_lr, b2=b2, normalized=True)[0] != 0)
    ):
        raise FloatingPointError(
            f"Theta v underflows the range of {mps.dtype.name} (every entry is below "
            f"{np.finfo(mps.dtype).tiny:.3g} although it is not zero); use normalized=True"
        )
    return res, None


def _as_vector_block(mps, v, n, name):
    """Validate a right-hand side of shape (n,) / (n, k) (scalar) or (n, C) / (n, C, k)."""
    v = as_array(v, mps.xp)
    if v.dtype != mps.dtype:
        raise TypeError(f"{name} must have the model's dtype {mps.dtype}; got {v.dtype}")
    if mps.output_site is None:
        ok = v.ndim in (1, 2) and v.shape[0] == n
        want = f"({n},) or ({n}, k)"
    else:
        ok = v.ndim in (2, 3) and v.shape[:2] == (n, mps.n_outputs)
        want = f"({n}, {mps.n_outputs}) or ({n}, {mps.n_outputs}, k)"
    if not ok or v.size == 0:
        raise ValueError(f"{name} must have shape {want}; got {v.shape}")
    if not bool(mps.xp.all(mps.xp.isfinite(v))):
        raise ValueError(f"{name} must be finite; got NaN or Inf entries")
    return v
