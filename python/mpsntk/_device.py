"""Calls into the CUDA engine (``_cuda``) for models and arrays that live on a GPU.

Every output and workspace is allocated here with CuPy, so CuPy's memory pool owns it; work is
queued on CuPy's current stream; nothing is copied between host and device.  The public
functions (:func:`mpsntk.ntk` and friends) validate their arguments and dispatch here when the
features are CUDA arrays.

The same calls drive ``_cuda_sim``, the CUDA engine's kernels compiled for the host against a
SIMT simulator (``cuda/sim``), with NumPy arrays as "device" memory: :func:`simulator` returns
that engine, which the test-suite uses to run the kernels where no GPU is present.
"""

from __future__ import annotations

import numpy as np

from ._backend import _cuda


class Engine:
    """The CUDA entry points of one extension module, allocating with one array library."""

    def __init__(self, module, xp, stream, free_bytes):
        self.module, self.xp = module, xp
        self._stream, self._free_bytes = stream, free_bytes

    def _fn(self, name, mps):
        return getattr(self.module, f"{name}_{mps.dtype.name}")

    def _ptr(self, a):
        iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
        return int(iface["data"][0])

    def _chain(self, mps):
        return (
            [self._ptr(c) for c in mps.cores],
            [list(c.shape) for c in mps.cores],
            np.ascontiguousarray(mps.scales),
            mps.boundary,
            -1 if mps.output_site is None else mps.output_site,
        )

    def _workspace(self, nbytes):
        return self.xp.empty(max(int(nbytes), 1), dtype=self.xp.uint8)

    def check_fits(self, nbytes, what, hint=""):
        """ValueError when ``nbytes`` exceed the free device memory (plus pooled free blocks)."""
        free = self._free_bytes()
        if free is not None and nbytes > free:
            raise ValueError(
                f"{what} needs {nbytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB of GPU "
                f"memory is free{'; ' + hint if hint else ''}"
            )

    def forward(self, mps, phi):
        n, C = phi.shape[0], mps.n_outputs
        chain = self._chain(mps)
        ws = self._workspace(self._fn("forward_workspace_bytes", mps)(*chain, n))
        mant = self.xp.empty((n, C), dtype=mps.dtype)
        lg = self.xp.empty((n, C), dtype=self.xp.float64)
        self._fn("forward", mps)(
            *chain, self._ptr(phi), list(phi.shape), self._ptr(mant), self._ptr(lg),
            self._ptr(ws), ws.nbytes, self._stream(),
        )
        return mant, lg

    def ntk(self, mps, phi1, phi2, site_lr, shape, out, full, per_site, normalized, tf32):
        xp, chain = self.xp, self._chain(mps)
        n1 = phi1.shape[0]
        n2 = 0 if phi2 is None else phi2.shape[0]
        wsb = self._fn("ntk_workspace_bytes", mps)(*chain, n1, n2)
        self.check_fits(wsb, "the environments of this NTK", "compute fewer samples at a time")
        if out is None:
            self.check_fits(
                wsb + int(np.prod(shape)) * mps.dtype.itemsize,
                f"an NTK of shape {shape} ({mps.dtype.name}) and its environments",
                "compute fewer samples at a time, or never form the kernel: mpsntk.linalg",
            )
            out = xp.empty(shape, dtype=mps.dtype)
        ws = self._workspace(wsb)
        log1 = xp.empty(n1, dtype=xp.float64)
        log2 = xp.empty(n2 or n1, dtype=xp.float64)
        self._fn("ntk", mps)(
            *chain[:3],
            np.ascontiguousarray(site_lr),
            *chain[3:],
            self._ptr(phi1),
            list(phi1.shape),
            0 if phi2 is None else self._ptr(phi2),
            [] if phi2 is None else list(phi2.shape),
            self._ptr(out),
            self._ptr(log1),
            self._ptr(log2),
            full,
            per_site,
            normalized,
            tf32,
            self._ptr(ws),
            ws.nbytes,
            self._stream(),
        )
        return out, log1, log2

    def _grad_workspace(self, mps, n):
        return self._workspace(self._fn("grad_workspace_bytes", mps)(*self._chain(mps), n))

    def _log(self, shape, normalized):
        """A float64 output for the log-scales of a normalised result (None and a null pointer
        otherwise)."""
        log = self.xp.empty(shape, dtype=self.xp.float64) if normalized else None
        return log, 0 if log is None else self._ptr(log)

    def vjp(self, mps, phi, cot, normalized=False):
        grads = [self.xp.empty_like(c) for c in mps.cores]
        log, log_ptr = self._log(mps.n_sites, normalized)
        ws = self._grad_workspace(mps, phi.shape[0])
        self._fn("vjp", mps)(
            *self._chain(mps), self._ptr(phi), list(phi.shape), self._ptr(cot),
            [self._ptr(g) for g in grads], log_ptr, self._ptr(ws), ws.nbytes, self._stream(),
        )
        return grads, log

    def jvp(self, mps, phi, tangents, normalized=False):
        out = self.xp.empty((phi.shape[0], mps.n_outputs), dtype=mps.dtype)
        log, log_ptr = self._log(phi.shape[0], normalized)
        ws = self._grad_workspace(mps, phi.shape[0])
        self._fn("jvp", mps)(
            *self._chain(mps), self._ptr(phi), list(phi.shape), [self._ptr(t) for t in tangents],
            self._ptr(out), log_ptr, self._ptr(ws), ws.nbytes, self._stream(),
        )
        return out, log

    def ntk_vp(self, mps, phi, site_lr, v, normalized=False):
        out = self.xp.empty_like(v)
        log, log_ptr = self._log((phi.shape[0], v.shape[2]), normalized)
        ws = self._grad_workspace(mps, phi.shape[0])
        chain = self._chain(mps)
        self._fn("ntk_vp", mps)(
            *chain[:3], np.ascontiguousarray(site_lr), *chain[3:], self._ptr(phi),
            list(phi.shape), self._ptr(v), v.shape[2], self._ptr(out), log_ptr, self._ptr(ws),
            ws.nbytes, self._stream(),
        )
        return out, log


_gpu = None


def gpu():  # pragma: no cover - needs a GPU
    """The CUDA engine on CuPy arrays (memory from CuPy's pool, work on its current stream)."""
    global _gpu
    if _gpu is None:
        import cupy as cp

        def free_bytes():
            free, _ = cp.cuda.runtime.memGetInfo()
            return free + cp.get_default_memory_pool().free_bytes()

        _gpu = Engine(_cuda, cp, lambda: cp.cuda.get_current_stream().ptr, free_bytes)
    return _gpu


def simulator():
    """The CUDA engine's kernels on the SIMT simulator, on NumPy arrays (None if not built)."""
    try:
        from . import _cuda_sim  # type: ignore[attr-defined]
    except ImportError:
        return None
    from ._backend import CudaError

    _cuda_sim._set_error_class(CudaError)
    return Engine(_cuda_sim, np, lambda: 0, lambda: None)
