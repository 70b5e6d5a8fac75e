"""The implementations that ``bench_ntk.py`` times against mpsntk, routine by routine.

Every builder takes a *problem* (plain arrays, see :func:`problem`) and returns
``(run, to_host, peak)``: ``run()`` computes the result (the timed part; on the GPU it ends with
a synchronisation and leaves the result on the card), ``to_host(result)`` turns it into a list of
NumPy arrays (for the agreement check only), ``peak()`` is the tool's peak GPU memory in bytes
since the builder returned (None on the CPU).

Routines and what they return (as lists of arrays):

``ntk``
    ``[Theta]``, the ``(n_samples, n_samples)`` empirical NTK ``Theta(X, X)``.
``ntk_vp``
    ``[Theta @ v]`` for one vector ``v`` of shape ``(n_samples,)``.
``vjp``
    One training step's gradient: ``d/dW_j`` of ``sum_i (f(x_i) - y_i)^2 / 2`` for every core,
    forward pass included (mpsntk: ``vjp(mps, phi, mps(phi) - y)``).
``log_partition``
    ``[log Z]`` of the Born machine ``p(x) = Psi(x)^2 / Z`` (one-hot features).
``log_partition_grad``
    ``[log Z, d log Z / dW_0, ...]``.

Tools:

``mpsntk``
    The library (C++ engine on the CPU, CUDA engine with CuPy arrays on the GPU).
``numpy-jacobian`` (ntk)
    An independent dense NumPy Jacobian (environments by matmul, per-core outer products into
    one ``(n, n_params)`` array), then ``J @ J.T``.
``numpy-structured`` (all routines; ``cupy`` on the GPU)
    mpsntk's maths written in the array library: environments by matmul, the NTK as
    ``sum_j w_j (U_j U_j^T) * (L_j L_j^T) * (R_j R_j^T)`` (per-site Gram products) tile by tile
    over blocks of samples, ``Theta v`` and the gradients as one GEMM per site through the
    environments, ``log Z`` and its gradient from the doubled chain's left and right
    environments.
``torch``, ``jax``
    Automatic differentiation of the same MPS: the NTK by ``vmap(jacrev(f))`` then
    ``sum_j J_j J_j^T``; ``Theta v`` as ``jvp`` of the rate-weighted ``vjp``; the gradient by
    ``grad`` of the loss; ``log Z`` by contracting the doubled MPS site by site (normalised at
    each site, so long chains do not overflow) and its gradient by ``grad`` of that.
    JAX functions are ``jit``-compiled (in the warm-up call).

The neural-tangents peer (``nt_worker.py``) reuses :func:`jax_batch_forward`.
Everything here is written for open chains with one output, the benchmark's models.
"""

from __future__ import annotations

import math

ROUTINES = ("ntk", "ntk_vp", "vjp", "log_partition", "log_partition_grad")

# Spec-sheet dense peaks (TFLOP/s) of the cards the benchmark reports against; FP64 on Hopper
# and Ampere is the tensor-core rate (DMMA), FP32 the CUDA-core rate.
CARD_PEAKS = {
    "H100 SXM": {"float64": 67.0, "float32": 67.0},
    "H100 PCIe": {"float64": 51.0, "float32": 51.0},
    "H100 NVL": {"float64": 60.0, "float32": 60.0},
    "H200": {"float64": 67.0, "float32": 67.0},
    "A100": {"float64": 19.5, "float32": 19.5},
}


def card_peaks(name):
    """Peak TFLOP/s of the card whose device name is ``name`` (None when not tabulated)."""
    for key in ("H100 NVL", "H100 PCIe", "H200", "A100"):
        if all(part in name for part in key.split()):
            return CARD_PEAKS[key]
    if "H100" in name:  # SXM parts report e.g. "NVIDIA H100 80GB HBM3"
        return CARD_PEAKS["H100 SXM"]
    return None


# --------------------------------------------------------------------------- the problem
def problem(mps, phi=None, v=None, y=None, feature_scale=1.0):
    """The arrays of one benchmark problem, as every tool reads them.

    Parameters
    ----------
    mps : mpsntk.MPS
        Open chain, scalar output, on the host.
    phi : ndarray, shape (n_samples, n_sites, phys_dim), optional
    v, y : ndarray, shape (n_samples,), optional
        The vector of ``ntk_vp`` and the targets of ``vjp``.
    feature_scale : float
        One-hot feature scale of the Born machine.

    Returns
    -------
    dict
        ``cores`` (list of ``(phys_dim, D_j, D_{j+1})`` arrays), ``scales`` and ``rates`` (lists
        of float: ``A_j = scales[j] * cores[j]``, NTK weight ``scales[j]**2 * rates[j]``),
        ``phi``, ``v``, ``y``, ``feature_scale``, and ``mps`` itself (for mpsntk).
    """
    import numpy as np

    return {
        "mps": mps,
        "cores": [np.asarray(c) for c in mps.cores],
        "scales": [float(c) for c in mps.scales],
        "rates": [float(r) for r in mps.site_lr],
        "phi": phi,
        "v": v,
        "y": y,
        "feature_scale": float(feature_scale),
    }


# --------------------------------------------------------------------------- structured maths
def _environments(xp, mats, phi):
    """Left ``L_j`` (n, D_j) for j < N and right ``R_{j+1}`` (n, D_{j+1}) environments.

    ``L_{j+1}[x] = sum_s phi[x, j, s] L_j[x] A_j[s]`` is one GEMM ``L_j @ (D_j, d D_{j+1})`` and a
    contraction over the d features (and mirrored for ``R``).  ``left[N]`` is ``f(x)``.
    """
    n, n_sites, d = phi.shape
    left = [xp.ones((n, 1), dtype=phi.dtype)]
    for j in range(n_sites):
        dl, dr = mats[j].shape[1:]
        t = (left[j] @ mats[j].transpose(1, 0, 2).reshape(dl, d * dr)).reshape(n, d, dr)
        left.append(xp.einsum("xs,xsb->xb", phi[:, j], t))
    right = [None] * (n_sites + 1)
    right[n_sites] = xp.ones((n, 1), dtype=phi.dtype)
    for j in range(n_sites - 1, 0, -1):
        dl, dr = mats[j].shape[1:]
        t = (right[j + 1] @ mats[j].transpose(2, 0, 1).reshape(dr, d * dl)).reshape(n, d, dl)
        right[j] = xp.einsum("xs,xsa->xa", phi[:, j], t)
    return left, right


def structured_ntk(xp, cores, scales, rates, phi, block=512):
    """``Theta(X, X)`` of an open-boundary scalar MPS by the structured formula, in ``xp``.

    ``Theta = sum_j w_j (U_j U_j^T) * (L_j L_j^T) * (R_{j+1} R_{j+1}^T)``, ``U_j = phi[:, j]``,
    ``w_j = scales[j]**2 rates[j]``, computed tile by tile over blocks of ``block`` samples
    (upper tiles only, mirrored): extra memory is the environments and a few tiles.

    Parameters
    ----------
    xp : module
        NumPy or CuPy.
    cores : list of arrays (phys_dim, D_left, D_right)
    scales, rates : list of float
    phi : array (n, n_sites, phys_dim)
    block : int or None
        Samples per tile edge (None: one tile).

    Returns
    -------
    array (n, n)
    """
    n, n_sites, _ = phi.shape
    mats = [scales[j] * cores[j] for j in range(n_sites)]
    left, right = _environments(xp, mats, phi)
    feats = [xp.ascontiguousarray(phi[:, j]) * (scales[j] ** 2 * rates[j])
             for j in range(n_sites)]
    theta = xp.empty((n, n), dtype=phi.dtype)
    b = n if block is None else block
    for i0 in range(0, n, b):
        rows = slice(i0, min(n, i0 + b))
        for k0 in range(i0, n, b):
            cols = slice(k0, min(n, k0 + b))
            acc = None
            for j in range(n_sites):
                g = feats[j][rows] @ phi[cols, j].T
                if j > 0:
                    g *= left[j][rows] @ left[j][cols].T
                if j < n_sites - 1:
                    g *= right[j + 1][rows] @ right[j + 1][cols].T
                acc = g if acc is None else acc.__iadd__(g)
            theta[rows, cols] = acc
            if k0 != i0:
                theta[cols, rows] = acc.T
    return theta


def _site_rows(xp, phi_j, left_j):
    """Rows ``phi_j(x) (x) L_j(x)`` of shape (n, d D_j): the Jacobian of site j is these rows
    times ``R_{j+1}(x)``."""
    n, d = phi_j.shape
    return (phi_j[:, :, None] * left_j[:, None, :]).reshape(n, d * left_j.shape[1])


def structured_ntk_vp(xp, cores, scales, rates, phi, v):
    """``Theta(X, X) @ v`` through the environments: per site one GEMM for ``J_j^T v`` and one
    for ``J_j`` times it (never an ``n x n`` array)."""
    n, n_sites, _ = phi.shape
    mats = [scales[j] * cores[j] for j in range(n_sites)]
    left, right = _environments(xp, mats, phi)
    out = xp.zeros(n, dtype=phi.dtype)
    for j in range(n_sites):
        rows = _site_rows(xp, phi[:, j], left[j])
        g = (rows * v[:, None]).T @ right[j + 1]  # (d D_j, D_{j+1}): J_j^T v / c_j
        out += (scales[j] ** 2 * rates[j]) * xp.sum((rows @ g) * right[j + 1], axis=1)
    return out


def structured_vjp(xp, cores, scales, phi, y):
    """Gradients of ``sum_i (f(x_i) - y_i)^2 / 2`` with respect to every core (forward
    included): one environment sweep each way, one GEMM per site."""
    n, n_sites, d = phi.shape
    mats = [scales[j] * cores[j] for j in range(n_sites)]
    left, right = _environments(xp, mats, phi)
    cot = left[n_sites][:, 0] - y
    grads = []
    for j in range(n_sites):
        rows = _site_rows(xp, phi[:, j] * cot[:, None], left[j])
        grads.append((scales[j] * (rows.T @ right[j + 1])).reshape(cores[j].shape))
    return grads


def structured_log_partition(xp, cores, scales, feature_scale, grad=False):
    """``log Z`` of the Born machine (and ``d log Z / dW_j``) from the doubled chain.

    ``E_{j+1} = w sum_s A_s^T E_j A_s`` (left), ``F_j = w sum_s A_s F_{j+1} A_s^T`` (right),
    each normalised to max 1 with its log kept; ``Z = E_N``, and
    ``dZ/dA_j[s] = 2 w E_j A_s F_{j+1}``.

    Returns
    -------
    log_z : float
    grads : list of arrays (only with ``grad=True``)
    """
    w = feature_scale**2
    n_sites = len(cores)
    mats = [scales[j] * cores[j] for j in range(n_sites)]
    dt = cores[0].dtype
    left, log_left = [xp.ones((1, 1), dtype=dt)], [0.0]
    for j in range(n_sites):
        a = mats[j]
        t = left[j] @ a  # (d, D_j, D_{j+1})
        e = w * (a.reshape(-1, a.shape[2]).T @ t.reshape(-1, a.shape[2]))
        nrm = float(xp.max(xp.abs(e)))
        left.append(e / nrm)
        log_left.append(log_left[j] + math.log(nrm))
    log_z = log_left[n_sites] + math.log(float(left[n_sites][0, 0]))
    if not grad:
        return log_z
    right, log_right = [None] * (n_sites + 1), [0.0] * (n_sites + 1)
    right[n_sites] = xp.ones((1, 1), dtype=dt)
    for j in range(n_sites - 1, 0, -1):
        a = mats[j]
        t = a @ right[j + 1]  # (d, D_j, D_{j+1})
        f = w * (t.transpose(1, 0, 2).reshape(a.shape[1], -1)
                 @ a.transpose(1, 0, 2).reshape(a.shape[1], -1).T)
        nrm = float(xp.max(xp.abs(f)))
        right[j] = f / nrm
        log_right[j] = log_right[j + 1] + math.log(nrm)
    grads = []
    for j in range(n_sites):
        factor = 2 * w * scales[j] * math.exp(log_left[j] + log_right[j + 1] - log_z)
        grads.append(factor * (left[j] @ mats[j] @ right[j + 1]))
    return log_z, grads


def numpy_jacobian_ntk(cores, scales, rates, phi):
    """Dense ``J diag(rates) J^T`` with an independent NumPy Jacobian (one (n, n_params)
    array built from the environments), returned as a function to time."""
    import numpy as np

    n, n_sites, d = phi.shape
    sizes = [c.size for c in cores]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    mats = [scales[j] * cores[j] for j in range(n_sites)]
    weights = [scales[j] * math.sqrt(rates[j]) for j in range(n_sites)]

    def run():
        left, right = _environments(np, mats, phi)
        jac = np.empty((n, offsets[-1]), dtype=phi.dtype)
        for j in range(n_sites):
            _, dl, dr = cores[j].shape
            block = jac[:, offsets[j]:offsets[j + 1]].reshape(n, d, dl, dr)
            lr = left[j][:, :, None] * right[j + 1][:, None, :]
            np.multiply(weights[j] * phi[:, j, :, None, None], lr[:, None], out=block)
        return jac @ jac.T

    return run


# --------------------------------------------------------------------------- autodiff models
def _f_per_sample(lib, scales):
    """f(cores, phi_x) for one sample (for vmap(jacrev))."""
    def f(cores, phi_x):
        v = lib.ones((1,), dtype=phi_x.dtype)
        for j, core in enumerate(cores):
            v = v @ lib.einsum("s,sab->ab", phi_x[j], scales[j] * core)
        return v[0]

    return f


def batch_forward(lib, scales):
    """``f(cores, phi) -> (n_samples,)`` in ``lib`` (torch or jax.numpy): the batched chain,
    one ``(n, D_j) x (D_j, d D_{j+1})`` product and one feature contraction per site."""
    def f(cores, phi):
        v = lib.ones((phi.shape[0], 1), dtype=phi.dtype)
        for j, core in enumerate(cores):
            v = lib.einsum("xs,xsb->xb", phi[:, j], lib.einsum("xa,sab->xsb", v, scales[j] * core))
        return v[:, 0]

    return f


def jax_batch_forward(scales):
    """:func:`batch_forward` in jax.numpy (also the model of the neural-tangents peer)."""
    import jax.numpy as jnp

    return batch_forward(jnp, scales)


def _log_partition_fn(lib, scales, feature_scale):
    """``log Z(cores)`` by the doubled chain, normalised site by site, in torch or jax.numpy."""
    w = feature_scale**2

    def log_z(cores):
        env, log_norm = None, 0.0
        for j, core in enumerate(cores):
            a = scales[j] * core
            t = a if env is None else lib.matmul(env, a)
            env = w * lib.einsum("sab,sac->bc", a, t)
            nrm = lib.max(lib.abs(env))
            env = env / nrm
            log_norm = log_norm + lib.log(nrm)
        return log_norm + lib.log(env[0, 0])

    return log_z


# --------------------------------------------------------------------------- builders
def _host(parts):
    import numpy as np

    return [np.asarray(p) for p in parts]


def _numpy_builder(routine, tool, prob):
    import numpy as np

    cores, scales, rates, phi = prob["cores"], prob["scales"], prob["rates"], prob["phi"]
    if tool == "numpy-jacobian":
        if routine != "ntk":
            raise ValueError("numpy-jacobian computes the NTK only")
        return numpy_jacobian_ntk(cores, scales, rates, phi), lambda t: [t], None
    runs = {
        "ntk": lambda: [structured_ntk(np, cores, scales, rates, phi)],
        "ntk_vp": lambda: [structured_ntk_vp(np, cores, scales, rates, phi, prob["v"])],
        "vjp": lambda: structured_vjp(np, cores, scales, phi, prob["y"]),
        "log_partition": lambda: [np.array(structured_log_partition(
            np, cores, scales, prob["feature_scale"]))],
        "log_partition_grad": lambda: (lambda lz, g: [np.array(lz)] + g)(
            *structured_log_partition(np, cores, scales, prob["feature_scale"], grad=True)),
    }
    return runs[routine], _host, None


def _cupy_builder(routine, prob):
    import cupy

    cores = [cupy.asarray(c) for c in prob["cores"]]
    scales, rates = prob["scales"], prob["rates"]
    phi = cupy.asarray(prob["phi"])
    arg = {"ntk_vp": prob["v"], "vjp": prob["y"]}.get(routine)
    arg = None if arg is None else cupy.asarray(arg)
    calls = {
        "ntk": lambda: [structured_ntk(cupy, cores, scales, rates, phi, block=None)],
        "ntk_vp": lambda: [structured_ntk_vp(cupy, cores, scales, rates, phi, arg)],
        "vjp": lambda: structured_vjp(cupy, cores, scales, phi, arg),
    }
    if routine not in calls:
        raise ValueError(f"cupy does not implement {routine}")
    pool = cupy.get_default_memory_pool()

    def run():
        out = calls[routine]()
        cupy.cuda.get_current_stream().synchronize()
        return out

    pool.free_all_blocks()
    base = pool.total_bytes()
    return run, lambda parts: [cupy.asnumpy(p) for p in parts], \
        lambda: pool.total_bytes() - base


def _mpsntk_builder(routine, prob, device):
    import numpy as np

    import mpsntk as mn

    mps, phi, v, y = prob["mps"], prob["phi"], prob["v"], prob["y"]
    fscale = prob["feature_scale"]
    if device == "gpu":
        import cupy

        if routine.startswith("log_partition"):
            raise ValueError("mpsntk's Born-machine contractions run on the host only")
        mps = mps.to_device()
        phi = cupy.asarray(phi)
        v = None if v is None else cupy.asarray(v)
        y = None if y is None else cupy.asarray(y)
        xp, sync = cupy, cupy.cuda.get_current_stream().synchronize
        to_host = lambda parts: [cupy.asnumpy(p) for p in parts]  # noqa: E731
    else:
        xp, sync, to_host = np, (lambda: None), _host
    calls = {
        "ntk": lambda: [mn.ntk(mps, phi)],
        "ntk_vp": lambda: [mn.ntk_vp(mps, phi, v)],
        "vjp": lambda: mn.vjp(mps, phi, mps(phi) - y),
        "log_partition": lambda: [np.array(mn.born.log_partition(mps, fscale))],
        "log_partition_grad": lambda: (lambda lz, g: [np.array(lz)] + g)(
            *mn.born.log_partition_grad(mps, fscale)),
    }

    def run():
        out = calls[routine]()
        sync()
        return out

    if device != "gpu":
        return run, to_host, None
    pool = xp.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.total_bytes()  # the model and features stay: count what the call adds
    return run, to_host, lambda: pool.total_bytes() - base


def _torch_builder(routine, prob, device):
    import torch
    from torch.func import grad, grad_and_value, jacrev, jvp, vjp, vmap

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    gpu = dev.type == "cuda"
    cores = tuple(torch.as_tensor(c, device=dev) for c in prob["cores"])
    scales, rates = prob["scales"], prob["rates"]

    def tensor(a):
        return None if a is None else torch.as_tensor(a, device=dev)

    phi, v, y = tensor(prob["phi"]), tensor(prob["v"]), tensor(prob["y"])
    f = batch_forward(torch, scales)

    if routine == "ntk":
        jac_fn = vmap(jacrev(_f_per_sample(torch, scales)), in_dims=(None, 0))
        n = phi.shape[0]

        def call():
            theta = None
            for rate, jac in zip(rates, jac_fn(cores, phi)):
                flat = jac.reshape(n, -1)
                term = flat @ flat.T * rate
                theta = term if theta is None else theta.add_(term)
            return [theta]
    elif routine == "ntk_vp":
        def call():
            fc = lambda *c: f(c, phi)  # noqa: E731
            _, pullback = vjp(fc, *cores)
            g = tuple(r * gj for r, gj in zip(rates, pullback(v)))
            return [jvp(fc, cores, g)[1]]
    elif routine == "vjp":
        loss = grad(lambda c: 0.5 * torch.sum((f(c, phi) - y) ** 2))

        def call():
            return list(loss(cores))
    elif routine in ("log_partition", "log_partition_grad"):
        log_z = _log_partition_fn(torch, scales, prob["feature_scale"])
        if routine == "log_partition":
            def call():
                with torch.no_grad():
                    return [log_z(cores)]
        else:
            gv = grad_and_value(log_z)

            def call():
                g, value = gv(cores)
                return [value] + list(g)
    else:
        raise ValueError(f"unknown routine {routine!r}")

    def run():
        out = call()
        if gpu:
            torch.cuda.synchronize()
        return out

    to_host = lambda parts: [p.detach().cpu().numpy() for p in parts]  # noqa: E731
    if not gpu:
        return run, to_host, None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    return run, to_host, lambda: torch.cuda.max_memory_allocated() - base


def _jax_builder(routine, prob, device):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    dev = jax.devices("gpu" if device == "gpu" else "cpu")[0]

    def put(a):
        return None if a is None else jax.device_put(a, dev)

    cores = tuple(put(c) for c in prob["cores"])
    phi, v, y = put(prob["phi"]), put(prob["v"]), put(prob["y"])
    scales, rates = prob["scales"], prob["rates"]
    f = batch_forward(jnp, scales)

    if routine == "ntk":
        f1 = _f_per_sample(jnp, scales)

        @jax.jit
        def fn(cores, phi):
            jacs = jax.vmap(jax.jacrev(f1), in_axes=(None, 0))(cores, phi)
            theta = None
            for rate, jac in zip(rates, jacs):
                flat = jac.reshape(phi.shape[0], -1)
                term = flat @ flat.T * rate
                theta = term if theta is None else theta + term
            return [theta]

        args = (cores, phi)
    elif routine == "ntk_vp":
        @jax.jit
        def fn(cores, phi, v):
            fc = lambda c: f(c, phi)  # noqa: E731
            _, pullback = jax.vjp(fc, cores)
            g = tuple(r * gj for r, gj in zip(rates, pullback(v)[0]))
            return [jax.jvp(fc, (cores,), (g,))[1]]

        args = (cores, phi, v)
    elif routine == "vjp":
        @jax.jit
        def fn(cores, phi, y):
            return list(jax.grad(lambda c: 0.5 * jnp.sum((f(c, phi) - y) ** 2))(cores))

        args = (cores, phi, y)
    elif routine in ("log_partition", "log_partition_grad"):
        log_z = _log_partition_fn(jnp, scales, prob["feature_scale"])
        if routine == "log_partition":
            fn = jax.jit(lambda c: [log_z(c)])
        else:
            @jax.jit
            def fn(c):
                value, g = jax.value_and_grad(log_z)(c)
                return [value] + list(g)
        args = (cores,)
    else:
        raise ValueError(f"unknown routine {routine!r}")

    def run():
        return jax.block_until_ready(fn(*args))

    def peak():
        return (dev.memory_stats() or {}).get("peak_bytes_in_use")

    return run, lambda parts: [np.asarray(p) for p in parts], \
        (peak if device == "gpu" else None)


def build(routine, tool, prob, device="cpu"):
    """``(run, to_host, peak)`` of ``tool`` computing ``routine`` on ``prob``.

    Parameters
    ----------
    routine : str
        One of :data:`ROUTINES`.
    tool : str
        ``mpsntk``, ``numpy-jacobian``, ``numpy-structured``, ``cupy``, ``torch`` or ``jax``.
    prob : dict
        From :func:`problem`.
    device : {"cpu", "gpu"}

    Returns
    -------
    run, to_host, peak : callables (``peak`` is None on the CPU)
    """
    if routine not in ROUTINES:
        raise ValueError(f"unknown routine {routine!r}")
    if tool == "mpsntk":
        return _mpsntk_builder(routine, prob, device)
    if tool in ("numpy-jacobian", "numpy-structured"):
        return _numpy_builder(routine, tool, prob)
    if tool == "cupy":
        return _cupy_builder(routine, prob)
    if tool == "torch":
        return _torch_builder(routine, prob, device)
    if tool == "jax":
        return _jax_builder(routine, prob, device)
    raise ValueError(f"unknown tool {tool!r}")


def _ntk_builder(tool):
    def builder(mps, phi):
        run, to_host, peak = build("ntk", tool, problem(mps, phi), device="gpu")
        return (lambda: run()[0]), (lambda theta: to_host([theta])[0]), peak

    return builder


# The NTK on the GPU, ``(run, to_host, peak) = BUILDERS[tool](mps, phi)`` (one array, not a
# list): what bench/gpu_check.py and the GPU tests call.
BUILDERS = {tool: _ntk_builder(tool) for tool in ("mpsntk", "cupy", "torch", "jax")}
