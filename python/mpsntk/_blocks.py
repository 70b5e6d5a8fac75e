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

Every product runs on the engine of the model's device (:mod:`mpsntk._engine`) from the block's
prepared batch: its environments are contracted at its first product and reused by every later
one, however many tiles, solver iterations or partial sums it enters.  The results, arguments
and errors are those of the public routines (:func:`mpsntk.ntk`, :func:`mpsntk.vjp`,
:func:`mpsntk.jvp`), which share their checks with this module.
"""

from __future__ import annotations

import threading

import numpy as np

from ._backend import array_module
from ._engine import engine_for
from .grad import _check_tangent_list, _cotangent, _jvp, _tangents, _vjp
from .mps import MPS
from .ntk import _ntk, _ntk_vp, ntk

__all__ = [
    "Batch",
    "jacobian_vp",
    "kernel_block",
    "kernel_diagonal",
    "kernel_vp",
    "transpose_vp",
]


class Batch:
    """One block of samples of one model, validated once and prepared once.

    The engine's batch (the environments of its samples, :class:`mpsntk._engine.Batch`) is
    prepared at the first product and kept: it describes the cores as they were then, so after
    changing the cores in place (training) make a new ``Batch``.  ``phi`` must not be modified
    in place either.  A pickled ``Batch`` carries the model and the features, not the prepared
    environments, which are prepared again at the first product after unpickling.

    Parameters
    ----------
    mps : MPS
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Features in the model's dtype, on the model's device.
    keep : bool, default True
        Keep the prepared environments for later products.  ``False`` prepares them again at
        every product and frees them after it: for solvers over more samples than their
        environments can hold in memory at once (``O(n_samples * n_sites * D)`` each).
    """

    def __init__(self, mps, phi, keep=True):
        if not isinstance(mps, MPS):
            raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
        if not isinstance(keep, (bool, np.bool_)):
            raise TypeError(f"keep must be a bool; got {type(keep).__name__}")
        self.mps = mps
        self.phi = mps.check_features(phi)
        self.keep = bool(keep)
        self._prepared = None
        self._lock = threading.Lock()

    @property
    def n_samples(self) -> int:
        return int(self.phi.shape[0])

    def _prepare(self, tiles=True):
        eng = engine_for(self.mps)
        eng.check_fits(eng.prepare_bytes(self.mps, self.n_samples),
                       f"the environments of a block of {self.n_samples} samples",
                       "use smaller blocks")
        return eng.prepare(self.mps, self.phi, tiles=tiles)

    def _for_products(self):
        """The engine's batch for the Jacobian products (vjp, jvp, ntk_vp): the kept one, or a
        fresh one whose factors are laid out as the products read them (rows, not the NTK
        tiles' panels: 10-30 % faster when the batch is prepared for one product)."""
        return self.prepared if self.keep else self._prepare(tiles=False)

    @property
    def prepared(self):
        """The engine's batch, prepared at the first call (once, also under threads), or at
        every call when the batch does not keep it."""
        if not self.keep:
            return self._prepare()
        if self._prepared is None:
            with self._lock:
                if self._prepared is None:
                    self._prepared = self._prepare()
        return self._prepared

    def __getstate__(self):
        return {"mps": self.mps, "phi": self.phi, "keep": self.keep}

    def __setstate__(self, state):
        self.mps, self.phi = state["mps"], state["phi"]
        self.keep = state.get("keep", True)
        self._prepared, self._lock = None, threading.Lock()

    def __repr__(self):
        return f"Batch(n_samples={self.n_samples}, mps={self.mps!r})"


def _same_model(b1, b2):
    if b2 is not None and b2.mps is not b1.mps:
        raise ValueError("the two batches must belong to the same MPS object")


def kernel_block(b1, b2=None, **ntk_options):
    """``Theta(X1, X2)``; ``b2=None`` gives the symmetric ``Theta(X1, X1)``.  Options as in
    :func:`mpsntk.ntk`."""
    _same_model(b1, b2)
    mps = b1.mps
    out = ntk_options.get("out")
    xp = mps.same_device(array_module(b1.phi, out, names=["phi1", "out"]), "phi1")
    pending = [b for b in (b1, b2) if b is not None and b._prepared is None]
    eng = engine_for(mps)

    def prepare():
        return b1.prepared, None if b2 is None else b2.prepared

    options = dict(per_site=False, outputs="trace", normalized=False, out=None, tile=None,
                   site_weights=None, precision="highest")
    unknown = set(ntk_options) - set(options)
    if unknown:
        raise TypeError(f"kernel_block got unexpected keyword arguments {sorted(unknown)}; "
                        f"the options are those of mpsntk.ntk: {sorted(options)}")
    options.update(ntk_options)
    return _ntk(eng, mps, xp, b1.n_samples, None if b2 is None else b2.n_samples, prepare,
                sum(eng.prepare_bytes(mps, b.n_samples) for b in pending), **options)


def transpose_vp(batch, v):
    """``diag(lambda) J^T v``: one array per core, the per-site rates applied (``lambda_j =
    mps.site_lr[j]``; the scales ``c_j`` are inside ``J``).  ``v`` has shape (n_samples,) or
    (n_samples, n_outputs)."""
    mps = batch.mps
    xp = mps.same_device(array_module(batch.phi, v, names=["phi", "cotangent"]), "phi")
    cot = _cotangent(mps, xp, v, batch.n_samples)
    grads = _vjp(engine_for(mps), batch._for_products(), cot, normalized=False)
    for g, r in zip(grads, mps.site_lr):
        if r != 1.0:
            g *= r
    return grads


def jacobian_vp(batch, tangents):
    """``J t`` for ``t`` one array per core: shape (n_samples,) or (n_samples, n_outputs)."""
    mps = batch.mps
    _check_tangent_list(tangents)
    names = ["phi"] + [f"tangents[{j}]" for j in range(len(tangents))]
    xp = mps.same_device(array_module(batch.phi, *tangents, names=names), "phi")
    ts = _tangents(mps, xp, tangents)
    return _jvp(engine_for(mps), batch._for_products(), ts, normalized=False)


def kernel_vp(b1, b2, v):
    """``Theta(X1, X2) v`` for ``v`` of shape (n2,) or (n2, n_outputs), without forming the
    kernel: ``J1 diag(lambda) J2^T v``."""
    _same_model(b1, b2)
    mps = b1.mps
    xp = mps.same_device(array_module(b2.phi, v, names=["phi", "cotangent"]), "phi")
    cot = _cotangent(mps, xp, v, b2.n_samples)
    # one engine call, through the normalised halves: J1 (J2^T v) stays in range
    res, _ = _ntk_vp(engine_for(mps), b1._for_products(), b2._for_products(), cot[:, :, None],
                     mps.site_lr, normalized=False)
    return res[:, 0, 0] if mps.output_site is None else res[:, :, 0]


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
