"""The exact Taylor expansion and the order kernels with an array module (theory section 5.3):
the device engine's implementation of :meth:`DeviceEngine.taylor_terms` and
:meth:`DeviceEngine.order_kernels` (the host engine runs the C++ ones), on CuPy arrays.

The same recursions as the C++ engine (``cpp/src/detail/taylor.hpp``): polynomial environments,
every (order, sample, output) group normalised by a power of two, and for the order kernels a
doubled chain per pair of samples in tiles of pairs.
"""

from __future__ import annotations

import math

import numpy as np


def taylor_terms(mps, phi, steps, max_order, remainder):
    """The same expansion with the model's array module (CuPy): one left sweep of polynomial
    environments ``(orders, n, outputs, h, D)`` by batched matmuls, each (order, sample, output)
    group normalised by a power of two, as the engine does; the remainder row, when asked for,
    goes through the stepped cores ``R <- R (M + V) + L^(K) V``."""
    xp, dtype = mps.xp, mps.dtype
    n, K = phi.shape[0], max_order
    h = mps.bond_dims[0] if mps.boundary == "periodic" else 1

    def scale_of(v, lg):  # the log-scales of the groups, -inf for all-zero ones
        return xp.where(xp.max(xp.abs(v), axis=(-2, -1)) > 0, lg, -xp.inf)

    def add(a, la, b, lb):  # a e^la + b e^lb on a common scale
        la, lb = scale_of(a, la), scale_of(b, lb)
        m = xp.maximum(la, lb)
        m = xp.where(xp.isfinite(m), m, 0.0)
        fa, fb = (xp.exp(t - m).astype(dtype)[..., None, None] for t in (la, lb))
        return a * fa + b * fb, m

    def normalise(v, lg):  # each group by the power of two of its largest entry
        peak = xp.max(xp.abs(v), axis=(-2, -1))
        _, e = xp.frexp(peak.astype(xp.float64))
        e = xp.where(peak > 0, e, 0)
        factor = xp.ldexp(xp.ones_like(peak, dtype=xp.float64), -e)[..., None, None]
        return (v.astype(xp.float64) * factor).astype(dtype), lg + e * math.log(2.0)

    env = xp.zeros((1, n, 1, h, h), dtype=dtype)
    env[..., xp.arange(h), xp.arange(h)] = 1
    lg = xp.zeros((1, n, 1))
    tail = tail_lg = None  # the remainder, once it exists
    for j in range(mps.n_sites):
        c = dtype.type(mps.scales[j])
        spec = "xs,lsab->xlab" if j == mps.output_site else "xs,sab->xab"
        M, V = (c * xp.einsum(spec, phi[:, j], t) for t in (mps.cores[j], steps[j]))
        if j != mps.output_site:
            M, V = M[:, None], V[:, None]
        top = env.shape[0] - 1
        new_top = min(top + 1, K)
        core = env @ M[None]  # orders 0..top
        shape = (new_top + 1,) + core.shape[1:]
        a, b = xp.zeros(shape, dtype=dtype), xp.zeros(shape, dtype=dtype)
        lg_new = xp.broadcast_to(lg, (top + 1,) + shape[1:3])
        la, lb = xp.full(shape[:3], -xp.inf), xp.full(shape[:3], -xp.inf)
        a[: top + 1], la[: top + 1] = core, lg_new
        b[1:] = env[:new_top] @ V[None]  # orders 1..new_top
        lb[1:] = lg_new[:new_top]
        new, m = add(a, la, b, lb)
        if remainder and (tail is not None or top == K):
            parts = []
            if tail is not None:
                parts.append((tail @ (M + V), xp.broadcast_to(tail_lg, shape[1:3])))
            if top == K:
                parts.append((env[K] @ V, lg_new[K]))
            tail, tail_lg = add(*parts[0], *parts[1]) if len(parts) == 2 else parts[0]
            tail, tail_lg = normalise(tail, tail_lg)
        env, lg = normalise(new, m)
    rows = [xp.trace(env, axis1=-2, axis2=-1)]  # (orders, n, C)
    logs = [lg]
    if remainder:
        if tail is None:  # max_order = n_sites: nothing above it
            tail, tail_lg = xp.zeros_like(env[0]), xp.zeros_like(lg[0])
        rows.append(xp.trace(tail, axis1=-2, axis2=-1)[None])
        logs.append(tail_lg[None])
    mant = xp.ascontiguousarray(xp.concatenate(rows))
    lg = xp.where(mant != 0, xp.concatenate(logs), 0.0)
    return mant, xp.ascontiguousarray(lg)


def apply_log_scale(mps, mant, lg, what, hint):
    """``mant * exp(lg)`` in the model's dtype, refusing to lose entries (as MPS.forward)."""
    xp = mps.xp
    with np.errstate(over="ignore", under="ignore"):
        out = (mant * xp.exp(lg)).astype(mps.dtype)
    for lost, how in ((~xp.isfinite(out), "overflows"), ((out == 0) & (mant != 0), "underflows")):
        if bool(xp.any(lost)):
            raise FloatingPointError(f"{what} {how} the range of {mps.dtype.name}; {hint}")
    return out


def _pair_gram(xp, env1, env2, a, b):
    """Grams ``(b1, b2, h * h)`` of the boundary rows of two sample blocks, and their
    log-scales ``(b1, b2)``."""
    (v1, l1), (v2, l2) = env1, env2
    v1, v2 = v1[a], v2[b]
    g = xp.einsum("xad,ybd->xyab", v1, v2).reshape(v1.shape[0], v2.shape[0], -1)
    return g, l1[a][:, None] + l2[b][None, :]


def order_kernels(mps, phi1, phi2, orders, edge=None):
    """order_kernels with the model's array module (CuPy): the engine's recursion batched over
    a tile of pairs, with the D_0^2 boundary channels for periodic chains; every state and
    partial sum carries its own log-scale."""
    xp, dtype = mps.xp, mps.dtype
    N, kmax = mps.n_sites, max(orders)
    h = mps.bond_dims[0] if mps.boundary == "periodic" else 1
    lam = mps.scales**2 * mps.site_lr
    sym = phi2 is None
    phi2 = phi1 if sym else phi2
    n1, n2 = phi1.shape[0], phi2.shape[0]
    nm, D = kmax - 1, mps.max_bond_dim
    # pairs per tile edge: the states of a tile within about 256 MiB
    per_pair = 4 * h * h * max(nm, 1) * D * D * dtype.itemsize + 64 * h * h
    if edge is None:
        edge = max(1, min(max(n1, n2), math.isqrt(max(1, (256 << 20) // per_pair))))

    def normalise(v, lg):  # each trailing matrix by the power of two of its largest entry
        peak = xp.max(xp.abs(v), axis=(-2, -1))
        _, e = xp.frexp(peak.astype(xp.float64))
        e = xp.where(peak > 0, e, 0)
        factor = xp.ldexp(xp.ones_like(peak, dtype=xp.float64), -e)[..., None, None]
        return (v * factor).astype(dtype), xp.where(peak > 0, lg + e * math.log(2.0), -xp.inf)

    def common(values, logs):  # the largest log of the non-zero values (0 if none)
        top = xp.where(values != 0, logs, -xp.inf)
        return xp.where(xp.isfinite(top), top, 0.0)

    def log_add(am, al, v, lv):  # am e^al + v e^lv on a common scale, elementwise
        al, lv = xp.where(am != 0, al, -xp.inf), xp.where(v != 0, lv, -xp.inf)
        m = common(xp.maximum(al, lv), xp.maximum(al, lv))
        return am * xp.exp(al - m) + v * xp.exp(lv - m), m

    def log_sum(values, logs):  # sum over the last axis of values e^logs: (mantissa, log)
        logs = xp.where(values != 0, logs, -xp.inf)
        top = common(xp.max(logs, axis=-1), xp.max(logs, axis=-1))
        return xp.sum(values * xp.exp(logs - top[..., None]), axis=-1), top

    def environments(phi, cores):
        """Site matrices, left slots L_j and right slots R_j (n, h, D_j) with log-scales."""
        n = phi.shape[0]
        eye = xp.broadcast_to(xp.eye(h, dtype=dtype), (n, h, h))
        mats = [dtype.type(mps.scales[j]) * xp.einsum("xs,sab->xab", phi[:, j], cores[j])
                for j in range(N)]
        left, right = [(eye, xp.zeros(n))], [None] * N + [(eye, xp.zeros(n))]
        for j in range(N):
            v, lg = left[-1]
            left.append(normalise(v @ mats[j], lg))
        for j in range(N - 1, 0, -1):
            v, lg = right[j + 1]
            right[j] = normalise(xp.swapaxes(mats[j] @ xp.swapaxes(v, 1, 2), 1, 2), lg)
        return mats, left, right

    acc = xp.zeros((kmax + 1, n1, n2))
    acc_lg = xp.zeros((kmax + 1, n1, n2))
    for out in range(mps.n_outputs):  # traced outputs: the label core sliced at each
        cores = [c[out] if j == mps.output_site else c for j, c in enumerate(mps.cores)]
        m1, left1, right1 = environments(phi1, cores)
        m2, left2, right2 = (m1, left1, right1) if sym else environments(phi2, cores)
        for i0 in range(0, n1, edge):
            for k0 in range(i0 if sym else 0, n2, edge):
                a, b = slice(i0, min(i0 + edge, n1)), slice(k0, min(k0 + edge, n2))
                b1, b2 = a.stop - a.start, b.stop - b.start
                tile = xp.zeros((kmax + 1, b1, b2))
                tile_lg = xp.zeros((kmax + 1, b1, b2))
                X = xp.zeros((b1, b2, h * h, max(nm, 1), h, h), dtype=dtype)
                lx = xp.full(X.shape[:4], -xp.inf)
                for j in range(N):
                    lk = lam[j] * (phi1[a, j] @ phi2[b, j].T)
                    z, zl = _pair_gram(xp, left1[j], left2[j], a, b)
                    w, wl = _pair_gram(xp, right1[j + 1], right2[j + 1], a, b)
                    tile[1], tile_lg[1] = log_add(tile[1], tile_lg[1],
                                                  lk * xp.sum(z * w, axis=-1), zl + wl)
                    if nm == 0:
                        continue
                    traces = xp.trace(X, axis1=-2, axis2=-1)  # (b1, b2, channels, nm)
                    for m in range(1, nm + 1):  # S ends at site j: K_{m+1}
                        v, lv = log_sum(traces[..., m - 1] * w, lx[..., m - 1] + wl[..., None])
                        tile[m + 1], tile_lg[m + 1] = log_add(tile[m + 1], tile_lg[m + 1],
                                                              lk * v, lv)
                    if j == N - 1:
                        break
                    # X^(m) <- M_j(x)^T X^(m) M_j(y) + lambda_j k_j Tr(X^(m-1)) I (X^(0): Z_j)
                    X = (xp.swapaxes(m1[j][a], 1, 2)[:, None, None, None] @ X
                         @ m2[j][b][None, :, None, None])
                    src = xp.concatenate([z[..., None], traces[..., :-1]], axis=-1)
                    src = lk[..., None, None] * src
                    ls = xp.concatenate([xp.broadcast_to(zl[..., None, None], z.shape + (1,)),
                                         lx[..., :-1]], axis=-1)
                    lx = xp.where(xp.max(xp.abs(X), axis=(-2, -1)) > 0, lx, -xp.inf)
                    ls = xp.where(src != 0, ls, -xp.inf)
                    top = common(xp.maximum(lx, ls), xp.maximum(lx, ls))
                    eye = xp.eye(X.shape[-1], dtype=dtype)
                    X = (X * xp.exp(lx - top).astype(dtype)[..., None, None]
                         + (src * xp.exp(ls - top)).astype(dtype)[..., None, None] * eye)
                    X, lx = normalise(X, top)
                parts = [(a, b, tile, tile_lg)]
                if sym and k0 != i0:  # the mirrored tile
                    parts.append((b, a, xp.swapaxes(tile, 1, 2), xp.swapaxes(tile_lg, 1, 2)))
                for ra, rb, t, tl in parts:
                    acc[:, ra, rb], acc_lg[:, ra, rb] = log_add(acc[:, ra, rb],
                                                               acc_lg[:, ra, rb], t, tl)
    mant = xp.stack([acc[k] for k in orders])
    lg = xp.stack([acc_lg[k] for k in orders])
    return apply_log_scale(mps, mant, lg, "an order kernel", "compute in float64")
