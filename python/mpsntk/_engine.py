"""The engine behind every public routine: one object per kind of memory, host or CUDA device,
with the same methods, and the one place that picks between them (:func:`engine_for`).

Public routines validate their arguments, then call the engine of the model's device.  The
engine prepares batches (:meth:`HostEngine.prepare`: the environments of a batch of samples,
contracted once) and computes every product from prepared batches: NTK tiles between two
batches, vjp, jvp, ntk_vp (across two batches too) and the Jacobian.  Outputs are allocated here,
by the engine's array module, after the memory they need -- which C++ computes for both engines
-- has been checked.  ``docs/engine.md`` describes the interface.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._validate import _check_fits


class Batch:
    """A batch of samples prepared by an engine for one model.

    Holds the environments of its samples (as per-site Jacobian factors) and f, computed once;
    every product of the engine reads them instead of recomputing them.  Immutable: it may be
    shared between threads and used for any number of products.  It describes the cores as they
    were when it was prepared, and reads its features ``phi`` at every product (it keeps a
    reference to them: they must not be modified in place).

    Attributes
    ----------
    engine : HostEngine or DeviceEngine
    mps : MPS
        The model it was prepared for; products of two batches need the same model.
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
    n_samples : int
    nbytes : int
        Memory the batch holds (host or device).
    """

    __slots__ = ("engine", "mps", "phi", "handle", "nbytes")

    def __init__(self, engine, mps, phi, handle, nbytes):
        self.engine, self.mps, self.phi, self.handle, self.nbytes = engine, mps, phi, handle, nbytes

    @property
    def n_samples(self):
        return self.phi.shape[0]

    def __repr__(self):
        return (f"Batch(n_samples={self.n_samples}, device={self.engine.device!r}, "
                f"nbytes={self.nbytes})")


def _same_model(b1, b2):
    if b2 is not None and b2.mps is not b1.mps:
        raise ValueError("batch2 was prepared for another model than batch1; prepare both with "
                         "the same MPS")


class HostEngine:
    """The C++ engine (``_core``) on NumPy arrays."""

    xp = np
    device = "cpu"

    @staticmethod
    def _fn(name, mps):
        return getattr(_core, f"{name}_{mps.dtype.name}")

    # ------------------------------------------------------------------ memory
    def prepare_bytes(self, mps, n_samples, *, held=False):
        """Bytes that preparing ``n_samples`` samples allocates at its peak (``held``: that the
        batch keeps)."""
        kept, peak = self._fn("prepare_footprint", mps)(*mps._engine_args(), int(n_samples))
        return kept if held else peak

    def ntk_bytes(self, mps, n1, n2, *, full, per_site, tile=None):
        """Bytes an ntk call of prepared batches allocates beyond them and its output
        (``n2 = 0``: symmetric)."""
        tile = self.tile(n1, n2, tile)
        return self._fn("ntk_footprint", mps)(*mps._engine_args(), int(n1), int(n2), bool(full),
                                              bool(per_site), tile)[1]

    def product_bytes(self, mps, n_samples):
        """Bytes a vjp, jvp or ntk_vp of prepared batches allocates beyond them and its output."""
        return self._fn("product_footprint", mps)(*mps._engine_args(), int(n_samples))[1]

    def check_fits(self, nbytes, what, hint=""):
        """ValueError when ``nbytes`` more would not fit in the available host memory."""
        _check_fits(nbytes, what, hint)

    @staticmethod
    def tile(n1, n2, tile=None):
        """The output tile edge of an NTK of n1 x n2 samples (``n2 = 0``: symmetric):
        ``tile``, or :func:`default_tile`, at most the kernel's larger side (one tile)."""
        symmetric, n2 = n2 == 0, n2 or n1
        if tile is None:
            tile = default_tile(n1, n2, symmetric, _core.get_num_threads())
        return int(min(tile, max(n1, n2)))

    # ------------------------------------------------------------------ preparation
    def prepare(self, mps, phi):
        """Prepare the validated features ``phi`` (C-contiguous, the model's dtype)."""
        handle = _core.prepare(*mps._engine_args(), phi)
        return Batch(self, mps, phi, handle, handle.nbytes)

    def forward(self, mps, phi):
        """Mantissa and log-scale (n, C) of f by one left sweep (nothing else is kept)."""
        return _core.forward(*mps._engine_args(), phi)

    # ------------------------------------------------------------------ products
    def ntk(self, b1, b2, site_lr, *, full, per_site, normalized, tile=None, tf32=False,
            out=None):
        """Theta(X1, X2) (b2 None: symmetric) into ``out`` (allocated when None); returns
        ``(out, log1, log2, finite)``."""
        _same_model(b1, b2)
        mps = b1.mps
        n1 = b1.n_samples
        n2 = n1 if b2 is None else b2.n_samples
        shape = _ntk_shape(mps, n1, n2, full, per_site)
        tile = self.tile(n1, 0 if b2 is None else n2, tile)
        if out is None:
            work = self.ntk_bytes(mps, n1, 0 if b2 is None else n2, full=full,
                                  per_site=per_site, tile=tile)
            self.check_fits(work + int(np.prod(shape, dtype=np.float64)) * mps.dtype.itemsize,
                            f"an NTK of shape {shape} ({mps.dtype.name})",
                            "pass out= (e.g. a numpy.memmap) or compute fewer samples at a time")
            out = np.empty(shape, dtype=mps.dtype)
        log1, log2 = np.empty(n1), np.empty(n2)
        finite = _core.ntk(b1.handle, None if b2 is None else b2.handle, site_lr, out, log1, log2,
                           full, per_site, normalized, tile)
        return out, log1, log2, finite

    def ntk_vp(self, b1, v, site_lr, *, b2=None, normalized=False):
        """Theta(X1, X2) v for v (n2, C, k), X2 = X1 when b2 is None; returns ``(res, log)``
        (log (n1, k) with ``normalized``, else None)."""
        _same_model(b1, b2)
        n1, k = b1.n_samples, v.shape[2]
        res = np.empty((n1,) + v.shape[1:], dtype=v.dtype)
        log = np.empty((n1, k)) if normalized else None
        _core.ntk_vp(b1.handle, None if b2 is None else b2.handle, site_lr, v, k, res, log)
        return res, log

    def vjp(self, b, cot, *, normalized=False):
        """J^T cot for cot (n, C): one array per core; with ``normalized`` also their (n_sites,)
        log-scales."""
        grads = [np.empty_like(c) for c in b.mps.cores]
        logs = np.empty(b.mps.n_sites) if normalized else None
        _core.vjp(b.handle, cot, grads, logs)
        return grads, logs

    def jvp(self, b, tangents, *, tangent_log=None, normalized=False):
        """J t (n, C); tangent j is ``exp(tangent_log[j]) * tangents[j]`` when given; with
        ``normalized`` also the per-sample log-scales."""
        out = np.empty((b.n_samples, b.mps.n_outputs), dtype=b.mps.dtype)
        log = np.empty(b.n_samples) if normalized else None
        _core.jvp(b.handle, tangents, out, tangent_log, log)
        return out, log

    def jacobian(self, b):
        """The dense Jacobian (n, C, n_params)."""
        mps = b.mps
        out = np.empty((b.n_samples, mps.n_outputs, mps.n_params), dtype=mps.dtype)
        _core.jacobian(b.handle, out)
        return out

    def batch_forward(self, b):
        """Mantissa and log-scale (n, C) of f of a prepared batch (computed with it)."""
        return b.handle.forward()


def default_tile(n1, n2, symmetric, threads):
    """Largest tile edge in 512, 256, 128, 64 that leaves at least 4 tiles per thread (larger
    tiles re-read the packed environments less often)."""
    tile = 512
    while tile > 64:
        t1, t2 = -(-n1 // tile), -(-n2 // tile)
        if (t1 * (t1 + 1) // 2 if symmetric else t1 * t2) >= 4 * threads:
            break
        tile //= 2
    return tile


def _ntk_shape(mps, n1, n2, full, per_site):
    shape = (n1, n2) + ((mps.n_outputs, mps.n_outputs) if full else ())
    return ((mps.n_sites,) if per_site else ()) + shape


HOST = HostEngine()


def engine_for(mps):
    """The engine of the model's device: the one place that picks host or CUDA device."""
    if mps.xp is np:
        return HOST
    from . import _device

    return _device.gpu()
