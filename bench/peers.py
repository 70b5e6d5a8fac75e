"""Peers of ``bench_ntk.py``.  torch.func and JAX run on the CPU or the GPU; on the GPU
(``--device gpu``) the same NTK is computed on the same card by

* ``cupy``: the structured formula of mpsntk with cuBLAS doing the work: environments by
  batched matmuls, then ``Theta = sum_j w_j (U_j U_j^T) * (L_j L_j^T) * (R_j R_j^T)`` with one
  Gram matmul per factor and site (the per-site ``n x n`` terms live in GPU memory);
* ``torch``: ``torch.func.vmap(jacrev(f))`` on CUDA tensors, then ``sum_j J_j J_j^T``;
* ``jax``: ``jit(vmap(jacrev(f)))`` on the GPU backend, then ``sum_j J_j J_j^T``.

Each builder returns ``(run, to_host, peak)``: ``run()`` computes the kernel and synchronises
(the timed part: the result stays on the card), ``to_host(result)`` copies it to a NumPy array
(for the agreement check only), ``peak()`` is the tool's peak GPU memory in bytes since the
builder returned (CuPy pool, ``torch.cuda.max_memory_allocated``, XLA's ``peak_bytes_in_use``;
None on the CPU).
``structured_ntk`` is written for any array module, so it runs (and is checked) with NumPy too.
"""

from __future__ import annotations

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


def structured_ntk(xp, cores, scales, rates, phi):
    """``Theta(X, X)`` of an open-boundary scalar MPS by the structured formula, in ``xp``.

    Parameters
    ----------
    xp : module
        NumPy or CuPy.
    cores : list of arrays (phys_dim, D_left, D_right)
    scales, rates : list of float
        ``A_j = scales[j] * cores[j]``; site weights ``scales[j]**2 * rates[j]``.
    phi : array (n, n_sites, phys_dim)

    Returns
    -------
    array (n, n)
    """
    n, n_sites, _ = phi.shape
    mats = [scales[j] * cores[j] for j in range(n_sites)]
    left = [xp.ones((n, 1), dtype=phi.dtype)]
    for j in range(n_sites - 1):  # L_{j+1}[x] = sum_s phi[x, j, s] L_j[x] A_j[s]
        left.append(xp.einsum("xs,xsb->xb", phi[:, j], xp.einsum("xa,sab->xsb", left[j], mats[j])))
    right = [None] * (n_sites + 1)
    right[n_sites] = xp.ones((n, 1), dtype=phi.dtype)
    for j in range(n_sites - 1, 0, -1):
        right[j] = xp.einsum("xs,xsa->xa", phi[:, j],
                             xp.einsum("sab,xb->xsa", mats[j], right[j + 1]))
    theta = xp.zeros((n, n), dtype=phi.dtype)
    for j in range(n_sites):
        u = phi[:, j]
        term = (u @ u.T) * (left[j] @ left[j].T) * (right[j + 1] @ right[j + 1].T)
        theta += (scales[j] ** 2 * rates[j]) * term
    return theta


def _model_args(mps):
    return ([c for c in mps.cores], [float(c) for c in mps.scales],
            [float(r) for r in mps.site_lr])


def cupy_fn(mps, phi):
    """The structured formula on the GPU with CuPy/cuBLAS."""
    import cupy

    cores, scales, rates = _model_args(mps)
    cores = [cupy.asarray(c) for c in cores]
    phi_d = cupy.asarray(phi)
    pool = cupy.get_default_memory_pool()

    def run():
        theta = structured_ntk(cupy, cores, scales, rates, phi_d)
        cupy.cuda.get_current_stream().synchronize()
        return theta

    pool.free_all_blocks()
    base = pool.total_bytes()
    return run, cupy.asnumpy, lambda: pool.total_bytes() - base


def mpsntk_fn(mps, phi):
    """mpsntk's CUDA engine (CuPy arrays in and out)."""
    import cupy

    import mpsntk as mn

    mps_d = mps.to_device()
    phi_d = cupy.asarray(phi)
    pool = cupy.get_default_memory_pool()

    def run():
        theta = mn.ntk(mps_d, phi_d)
        cupy.cuda.get_current_stream().synchronize()
        return theta

    pool.free_all_blocks()
    base = pool.total_bytes()  # the model and features stay: count what the call adds
    return run, cupy.asnumpy, lambda: pool.total_bytes() - base


def _f_and_rates(mps, lib):
    scales = [float(c) for c in mps.scales]

    def f(cores, phi_x):
        v = lib.ones((1,), dtype=phi_x.dtype)
        for j, core in enumerate(cores):
            v = v @ lib.einsum("s,sab->ab", phi_x[j], scales[j] * core)
        return v[0]

    return f, [float(r) for r in mps.site_lr]


def torch_fn(mps, phi, device="cuda"):
    """``vmap(jacrev(f))`` with torch.func on ``device`` tensors, then ``sum_j J_j J_j^T``."""
    import torch
    from torch.func import jacrev, vmap

    dev = torch.device(device)
    gpu = dev.type == "cuda"
    cores = tuple(torch.as_tensor(c, device=dev) for c in mps.cores)
    phi_t = torch.as_tensor(phi, device=dev)
    f, rates = _f_and_rates(mps, torch)
    jac_fn = vmap(jacrev(f), in_dims=(None, 0))
    n = phi.shape[0]

    def run():
        with torch.no_grad():
            jacs = jac_fn(cores, phi_t)
            theta = None
            for rate, jac in zip(rates, jacs):
                flat = jac.reshape(n, -1)
                term = flat @ flat.T * rate
                theta = term if theta is None else theta.add_(term)
        if gpu:
            torch.cuda.synchronize()
        return theta

    if not gpu:
        return run, lambda t: t.numpy(), None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    return run, lambda t: t.cpu().numpy(), lambda: torch.cuda.max_memory_allocated() - base


def jax_fn(mps, phi, platform="gpu"):
    """``jit(vmap(jacrev(f)))`` on JAX's ``platform`` backend, then ``sum_j J_j J_j^T``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    gpu = jax.devices(platform)[0]
    cores = tuple(jax.device_put(c, gpu) for c in mps.cores)
    phi_j = jax.device_put(phi, gpu)
    f, rates = _f_and_rates(mps, jnp)
    n = phi.shape[0]

    @jax.jit
    def ntk(cores, phi):
        jacs = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(cores, phi)
        theta = None
        for rate, jac in zip(rates, jacs):
            flat = jac.reshape(n, -1)
            term = flat @ flat.T * rate
            theta = term if theta is None else theta + term
        return theta

    def run():
        return ntk(cores, phi_j).block_until_ready()

    def peak():
        stats = gpu.memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    return run, np.asarray, peak if platform == "gpu" else None


BUILDERS = {"mpsntk": mpsntk_fn, "cupy": cupy_fn, "torch": torch_fn, "jax": jax_fn}
