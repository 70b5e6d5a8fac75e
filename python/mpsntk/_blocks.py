"""Blocks of samples prepared for repeated kernel products: the seam between the engine and the
algorithms that call it many times on the same samples (conjugate gradients, Lanczos, Krylov
dynamics, Dask tiles).

A :class:`Batch` is one block of samples of one model.  The products below are what those
algorithms need, never more than ``O(n_samples * n_params)`` memory and time per call:

* :func:`kernel_block` -- the NTK tile ``Theta(X1, X2)`` (or ``Theta(X1, X1)``);
* :func:`kernel_vp` -- ``Theta(X1, X2) v = J1 diag(lambda) J2^T v`` without either kernel;
* :func:`transpose_vp` / :func:`jacobian_vp` -- the two halves, ``J^T v`` (per-site rates
  applied) and ``J t``, so that a product over many blocks sums the ``J^T v`` partials first
  (``Theta(X, X) v`` for a sharded ``X`` is ``J_b (sum_b' J_b'^T v_b')`` per block ``b``);
* :func:`kernel_diagonal` -- the diagonal ``Theta(x, x)`` (output-resolved for multi-output
  models), for Jacobi and pivoted-Cholesky preconditioners and the exact trace.

Every call goes through the public engine routines (:func:`mpsntk.ntk`, :func:`mpsntk.vjp`,
:func:`mpsntk.jvp`), host or device alike.
"""

from __future__ import annotations

from .grad import jvp, vjp
from .mps import MPS
from .ntk import ntk

__all__ = [
    "Batch",
    "jacobian_vp",
    "kernel_block",
    "kernel_diagonal",
    "kernel_vp",
    "transpose_vp",
]


class Batch:
    """One block of samples of one model, validated once.

    Parameters
    ----------
    mps : MPS
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Features in the model's dtype, on the model's device.
    """

    def __init__(self, mps, phi):
        if not isinstance(mps, MPS):
            raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
        self.mps = mps
        self.phi = mps.check_features(phi)

    @property
    def n_samples(self) -> int:
        return int(self.phi.shape[0])

    def __repr__(self):
        return f"Batch(n_samples={self.n_samples}, mps={self.mps!r})"


def _same_model(b1, b2):
    if b2 is not None and b2.mps is not b1.mps:
        raise ValueError("the two batches must belong to the same MPS object")


def kernel_block(b1, b2=None, **ntk_options):
    """``Theta(X1, X2)``; ``b2=None`` gives the symmetric ``Theta(X1, X1)``.  Options as in
    :func:`mpsntk.ntk`."""
    _same_model(b1, b2)
    return ntk(b1.mps, b1.phi, None if b2 is None else b2.phi, **ntk_options)


def transpose_vp(batch, v):
    """``diag(lambda) J^T v``: one array per core, the per-site rates applied (``lambda_j =
    mps.site_lr[j]``; the scales ``c_j`` are inside ``J``).  ``v`` has shape (n_samples,) or
    (n_samples, n_outputs)."""
    grads = vjp(batch.mps, batch.phi, v)
    for g, r in zip(grads, batch.mps.site_lr):
        if r != 1.0:
            g *= r
    return grads


def jacobian_vp(batch, tangents):
    """``J t`` for ``t`` one array per core: shape (n_samples,) or (n_samples, n_outputs)."""
    return jvp(batch.mps, batch.phi, tangents)


def kernel_vp(b1, b2, v):
    """``Theta(X1, X2) v`` for ``v`` of shape (n2,) or (n2, n_outputs), without forming the
    kernel: ``J1 diag(lambda) J2^T v``."""
    _same_model(b1, b2)
    return jacobian_vp(b1, transpose_vp(b2, v))


def kernel_diagonal(batch, tile=16):
    """The diagonal of ``Theta(X, X)``: shape (n_samples,), or (n_samples, n_outputs) with the
    output-resolved entries ``Theta_ll(x, x)`` for multi-output models.

    Read off small symmetric tiles of ``tile`` samples, so it costs one environment sweep plus
    ``O(n_samples * tile * n_sites * (d + 2D))`` (``n_outputs**2`` passes for multi-output
    models), never more memory than one tile per call.
    """
    mps, phi = batch.mps, batch.phi
    xp = mps.xp
    full = mps.output_site is not None
    parts = []
    for start in range(0, batch.n_samples, tile):
        block = ntk(mps, phi[start:start + tile], outputs="full" if full else "trace")
        diag = xp.diagonal(block, axis1=0, axis2=1)  # (n_outputs, n_outputs, tile) or (tile,)
        parts.append(xp.diagonal(diag, axis1=0, axis2=1) if full else diag.copy())
    return xp.concatenate(parts)
