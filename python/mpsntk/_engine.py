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

from . import _core, _taylor_xp
from ._validate import _available_memory, _check_fits

# What a user can do when a whole kernel does not fit in memory.
KERNEL_HINT = (
    "compute fewer samples at a time, pass out= (e.g. a numpy.memmap for a host model), or "
    "never form the kernel: mpsntk.linalg (ntk_operator, kernel_regression, gradient_descent_mse)"
)


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
    def free_bytes():
        """The available host memory in bytes (None when unknown)."""
        return _available_memory()

    @staticmethod
    def tile(n1, n2, tile=None):
        """The output tile edge of an NTK of n1 x n2 samples (``n2 = 0``: symmetric):
        ``tile``, or :func:`default_tile`, at most the kernel's larger side (one tile)."""
        symmetric, n2 = n2 == 0, n2 or n1
        if tile is None:
            tile = default_tile(n1, n2, symmetric, _core.get_num_threads())
        return int(min(tile, max(n1, n2)))

    # ------------------------------------------------------------------ preparation
    def prepare(self, mps, phi, *, tiles=True):
        """Prepare the validated features ``phi`` (C-contiguous, the model's dtype).

        ``tiles``: the batch may enter NTK tiles (its factors are stored as the tiles' packed
        panels); ``False`` for a batch that serves only the Jacobian products (vjp, jvp,
        ntk_vp, jacobian), which then read its factors as contiguous rows."""
        handle = _core.prepare(*mps._engine_args(), phi, panels=bool(tiles))
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
                            KERNEL_HINT)
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

    # ------------------------------------------------------------------ Taylor expansion
    def taylor_terms(self, mps, phi, steps, max_order, remainder):
        """Mantissas and log-scales (max_order + 1 [+ 1], n, C) of the exact Taylor terms of f in
        the step ``steps`` (theory section 5.3)."""
        n, C = phi.shape[0], mps.n_outputs
        self.check_fits((max_order + 2) * n * C * (mps.dtype.itemsize + 8),
                        f"the Taylor terms of {n} samples up to order {max_order}",
                        "compute fewer samples at a time")
        cores, scales, boundary, osite = mps._engine_args()
        return _core.taylor_terms(cores, steps, scales, boundary, osite, phi, max_order, remainder)

    def order_kernels(self, mps, phi1, phi2, orders):
        """The order-k kernels (len(orders), n1, n2) in the model's dtype."""
        n1 = phi1.shape[0]
        n2 = n1 if phi2 is None else phi2.shape[0]
        shape = (len(orders), n1, n2)
        # environments of every output slice, and per thread the pair states: one D x D matrix
        # per order below the highest and per channel (D_0^2 boundary channels or one per first
        # site)
        h = mps.bond_dims[0] if mps.boundary == "periodic" else 1
        channels = mps.n_sites if h > 1 and mps.n_sites / 2 < h * h else h * h
        states = channels * max(max(orders) - 1, 1) * mps.max_bond_dim**2
        work = self.prepare_bytes(mps, n1 + (0 if phi2 is None else n2))
        work += 4 * _core.get_num_threads() * states * mps.dtype.itemsize
        self.check_fits(int(np.prod(shape, dtype=np.float64)) * mps.dtype.itemsize + work,
                        f"order kernels of shape {shape} ({mps.dtype.name})",
                        "compute fewer samples at a time")
        out = np.empty(shape, dtype=mps.dtype)
        cores, scales, boundary, osite = mps._engine_args()
        overflow, underflow = _core.order_kernels(cores, scales, mps.site_lr, boundary, osite,
                                                  phi1, phi2, list(orders), out)
        for bad, how in ((overflow, "overflows"), (underflow, "underflows")):
            if bad:
                raise FloatingPointError(
                    f"an order kernel {how} the range of {mps.dtype.name}; compute in float64")
        return out


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


class DeviceEngine:
    """The CUDA engine of one extension module (``_cuda``, or ``_cuda_sim``: the same kernels on
    the SIMT simulator), with the methods of :class:`HostEngine` on device arrays.

    Every output, batch and workspace is allocated with the array library ``xp`` (CuPy, whose
    memory pool then owns it), and work is queued on ``stream()`` (CuPy's current stream);
    nothing is copied between host and device.
    """

    device = "cuda"

    def __init__(self, module, xp, stream, free_bytes):
        self.module, self.xp = module, xp
        self._stream, self._free_bytes = stream, free_bytes

    def _chain(self, mps):
        return getattr(self.module, f"Chain_{mps.dtype.name}")(
            cores=list(mps.cores), scales=np.ascontiguousarray(mps.scales),
            boundary=mps.boundary, output_site=-1 if mps.output_site is None else mps.output_site,
        )

    def _bytes(self, nbytes):
        return self.xp.empty(max(int(nbytes), 1), dtype=self.xp.uint8)

    # ------------------------------------------------------------------ memory
    def prepare_bytes(self, mps, n_samples, *, held=False):
        return self.module.prepare_bytes(self._chain(mps), n_samples=int(n_samples))

    def ntk_bytes(self, mps, n1, n2, *, full, per_site, tile=None):
        return self.module.ntk_workspace_bytes(self._chain(mps), n1=int(n1), n2=int(n2))

    def product_bytes(self, mps, n_samples):
        return self.module.product_workspace_bytes(self._chain(mps), n1=int(n_samples))

    def check_fits(self, nbytes, what, hint=""):
        """ValueError when ``nbytes`` exceed the free device memory (plus pooled free blocks)."""
        _check_fits(nbytes, what, hint, device_free=self._free_bytes)

    def free_bytes(self):
        """The free device memory plus pooled free blocks in bytes (None when unknown)."""
        return self._free_bytes()

    # ------------------------------------------------------------------ preparation
    def prepare(self, mps, phi, *, tiles=True):
        """As :meth:`HostEngine.prepare`; one layout serves every product (``tiles`` is
        accepted for the common interface)."""
        chain = self._chain(mps)
        nbytes = self.module.prepare_bytes(chain, n_samples=phi.shape[0])
        handle = self.module.prepare(chain, phi=phi, memory=self._bytes(nbytes),
                                     stream=self._stream())
        return Batch(self, mps, phi, handle, nbytes)

    def forward(self, mps, phi):
        n, C = phi.shape[0], mps.n_outputs
        chain = self._chain(mps)
        ws = self._bytes(self.module.forward_workspace_bytes(chain, n_samples=n))
        mant = self.xp.empty((n, C), dtype=mps.dtype)
        lg = self.xp.empty((n, C), dtype=self.xp.float64)
        self.module.forward(chain, phi=phi, mantissa=mant, log_scale=lg, workspace=ws,
                            stream=self._stream())
        return mant, lg

    def batch_forward(self, b):
        n, C = b.n_samples, b.mps.n_outputs
        mant = self.xp.empty((n, C), dtype=b.mps.dtype)
        lg = self.xp.empty((n, C), dtype=self.xp.float64)
        b.handle.forward(mantissa=mant, log_scale=lg, stream=self._stream())
        return mant, lg

    # ------------------------------------------------------------------ products
    def ntk(self, b1, b2, site_lr, *, full, per_site, normalized, tile=None, tf32=False,
            out=None):
        _same_model(b1, b2)
        xp, mps = self.xp, b1.mps
        n1 = b1.n_samples
        n2 = n1 if b2 is None else b2.n_samples
        shape = _ntk_shape(mps, n1, n2, full, per_site)
        wsb = self.ntk_bytes(mps, n1, 0 if b2 is None else n2, full=full, per_site=per_site)
        if out is None:
            self.check_fits(wsb + int(np.prod(shape, dtype=np.float64)) * mps.dtype.itemsize,
                            f"an NTK of shape {shape} ({mps.dtype.name})",
                            KERNEL_HINT)
            out = xp.empty(shape, dtype=mps.dtype)
        log1 = xp.empty(n1, dtype=xp.float64)
        log2 = xp.empty(n2, dtype=xp.float64)
        self.module.ntk(b1.handle, None if b2 is None else b2.handle,
                        site_lr=np.ascontiguousarray(site_lr), out=out, log_scale1=log1,
                        log_scale2=log2, full_outputs=full, per_site=per_site,
                        normalized=normalized, tf32=tf32, workspace=self._bytes(wsb),
                        stream=self._stream())
        return out, log1, log2, bool(xp.all(xp.isfinite(out)))

    def _log(self, shape, normalized):
        return self.xp.empty(shape, dtype=self.xp.float64) if normalized else None

    def _workspace(self, b, n2=0):
        mps = b.mps
        return self._bytes(self.module.product_workspace_bytes(self._chain(mps), n1=b.n_samples,
                                                               n2=n2))

    def vjp(self, b, cot, *, normalized=False):
        grads = [self.xp.empty_like(c) for c in b.mps.cores]
        log = self._log(b.mps.n_sites, normalized)
        self.module.vjp(b.handle, cotangent=cot, grads=grads, grad_log=log,
                        workspace=self._workspace(b), stream=self._stream())
        return grads, log

    def jvp(self, b, tangents, *, tangent_log=None, normalized=False):
        out = self.xp.empty((b.n_samples, b.mps.n_outputs), dtype=b.mps.dtype)
        log = self._log(b.n_samples, normalized)
        self.module.jvp(b.handle, tangents=list(tangents), out=out, tangent_log=tangent_log,
                        out_log=log, workspace=self._workspace(b), stream=self._stream())
        return out, log

    def ntk_vp(self, b1, v, site_lr, *, b2=None, normalized=False):
        _same_model(b1, b2)
        out = self.xp.empty((b1.n_samples,) + v.shape[1:], dtype=v.dtype)
        log = self._log((b1.n_samples, v.shape[2]), normalized)
        self.module.ntk_vp(b1.handle, None if b2 is None else b2.handle,
                           site_lr=np.ascontiguousarray(site_lr), v=v, out=out, out_log=log,
                           workspace=self._workspace(b1, 0 if b2 is None else b2.n_samples),
                           stream=self._stream())
        return out, log

    # ------------------------------------------------------------------ Taylor expansion
    def taylor_terms(self, mps, phi, steps, max_order, remainder):
        """As :meth:`HostEngine.taylor_terms`, with the array module (:mod:`mpsntk._taylor_xp`)."""
        return _taylor_xp.taylor_terms(mps, phi, steps, max_order, remainder)

    def order_kernels(self, mps, phi1, phi2, orders):
        """As :meth:`HostEngine.order_kernels`, with the array module, in tiles of pairs."""
        return _taylor_xp.order_kernels(mps, phi1, phi2, orders)


HOST = HostEngine()


def engine_for(mps):
    """The engine of the model's device: the one place that picks host or CUDA device."""
    if mps.xp is np:
        return HOST
    from . import _device

    return _device.gpu()
