"""Calls into the CUDA engine (``_cuda``) for models and arrays that live on a GPU.

Every output and workspace is allocated here with CuPy, so CuPy's memory pool owns it; work is
queued on CuPy's current stream; nothing is copied between host and device.  The public
functions (:func:`mpsntk.ntk` and friends) validate their arguments and dispatch here when the
features are CUDA arrays.
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from ._backend import _cuda


def _engine(name, mps):
    return getattr(_cuda, f"{name}_{mps.dtype.name}")


def _ptr(a):
    return int(a.data.ptr)


def _chain(mps):
    return (
        [_ptr(c) for c in mps.cores],
        [list(c.shape) for c in mps.cores],
        np.ascontiguousarray(mps.scales),
        mps.boundary,
        -1 if mps.output_site is None else mps.output_site,
    )


def _workspace(nbytes):
    return cp.empty(max(int(nbytes), 1), dtype=cp.uint8)


def _stream():
    return cp.cuda.get_current_stream().ptr


def check_fits(nbytes, what, hint=""):
    """ValueError when ``nbytes`` exceed the free device memory plus CuPy's pooled free blocks."""
    free, _ = cp.cuda.runtime.memGetInfo()
    free += cp.get_default_memory_pool().free_bytes()
    if nbytes > free:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB of GPU memory "
            f"is free{'; ' + hint if hint else ''}"
        )


def forward(mps, phi):
    n, C = phi.shape[0], mps.n_outputs
    chain = _chain(mps)
    ws = _workspace(_engine("forward_workspace_bytes", mps)(*chain, n))
    mant = cp.empty((n, C), dtype=mps.dtype)
    lg = cp.empty((n, C), dtype=cp.float64)
    _engine("forward", mps)(
        *chain, _ptr(phi), list(phi.shape), _ptr(mant), _ptr(lg), _ptr(ws), ws.nbytes, _stream()
    )
    return mant, lg


def ntk(mps, phi1, phi2, site_lr, shape, out, full, per_site, normalized, tf32):
    chain = _chain(mps)
    n1 = phi1.shape[0]
    n2 = 0 if phi2 is None else phi2.shape[0]
    wsb = _engine("ntk_workspace_bytes", mps)(*chain, n1, n2)
    if out is None:
        check_fits(
            wsb + int(np.prod(shape)) * mps.dtype.itemsize,
            f"an NTK of shape {shape} ({mps.dtype.name}) and its environments",
            "compute fewer samples at a time",
        )
        out = cp.empty(shape, dtype=mps.dtype)
    else:
        check_fits(wsb, "the environments of this NTK", "compute fewer samples at a time")
    ws = _workspace(wsb)
    log1 = cp.empty(n1, dtype=cp.float64)
    log2 = cp.empty(n2 or n1, dtype=cp.float64)
    _engine("ntk", mps)(
        *chain[:3],
        np.ascontiguousarray(site_lr),
        *chain[3:],
        _ptr(phi1),
        list(phi1.shape),
        0 if phi2 is None else _ptr(phi2),
        [] if phi2 is None else list(phi2.shape),
        _ptr(out),
        _ptr(log1),
        _ptr(log2),
        full,
        per_site,
        normalized,
        tf32,
        _ptr(ws),
        ws.nbytes,
        _stream(),
    )
    return out, log1, log2


def _grad_workspace(mps, n):
    return _workspace(_engine("grad_workspace_bytes", mps)(*_chain(mps), n))


def vjp(mps, phi, cot):
    grads = [cp.empty_like(c) for c in mps.cores]
    ws = _grad_workspace(mps, phi.shape[0])
    _engine("vjp", mps)(
        *_chain(mps),
        _ptr(phi),
        list(phi.shape),
        _ptr(cot),
        [_ptr(g) for g in grads],
        _ptr(ws),
        ws.nbytes,
        _stream(),
    )
    return grads


def jvp(mps, phi, tangents):
    out = cp.empty((phi.shape[0], mps.n_outputs), dtype=mps.dtype)
    ws = _grad_workspace(mps, phi.shape[0])
    _engine("jvp", mps)(
        *_chain(mps),
        _ptr(phi),
        list(phi.shape),
        [_ptr(t) for t in tangents],
        _ptr(out),
        _ptr(ws),
        ws.nbytes,
        _stream(),
    )
    return out


def ntk_vp(mps, phi, site_lr, v):
    out = cp.empty_like(v)
    ws = _grad_workspace(mps, phi.shape[0])
    chain = _chain(mps)
    _engine("ntk_vp", mps)(
        *chain[:3],
        np.ascontiguousarray(site_lr),
        *chain[3:],
        _ptr(phi),
        list(phi.shape),
        _ptr(v),
        v.shape[2],
        _ptr(out),
        _ptr(ws),
        ws.nbytes,
        _stream(),
    )
    return out
