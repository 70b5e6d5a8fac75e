"""Benchmark ``mpsntk.ntk`` against dense-Jacobian NTKs built with NumPy, PyTorch and JAX.

Every (tool, configuration) measurement runs in a fresh ``multiprocessing`` *spawn* child, so
that imports, allocator caches and thread pools of one tool never leak into another, and so that
the child's peak resident set size is a clean measure of the memory the computation needs
(C++ and BLAS buffers included, which ``tracemalloc`` cannot see).  A child

1. builds the problem (``MPS.random(..., seed)`` and ``features.trig`` of uniform inputs),
2. resets the kernel's RSS high-water mark (``/proc/self/clear_refs``) and notes its RSS,
3. runs the warm-up call(s); a peer's first result is compared with mpsntk's kernel of the same
   configuration *before* any timed call, and a peer that disagrees is not timed,
4. runs the timed calls and reports their median and the peak RSS over its baseline.

Tools
-----
mpsntk
    ``mpsntk.ntk(mps, phi)``: the symmetric fast path, which never forms the Jacobian.
numpy
    An independent NumPy Jacobian (left/right environments by matmul, per-core outer products)
    written into one dense ``(n, n_params)`` array, then ``J @ J.T``.
torch
    ``torch.func.vmap(jacrev(f))`` over the cores (a tuple of tensors), then
    ``sum_j J_j J_j^T``.
jax
    ``jit`` of ``vmap(jacrev(f))`` and of the same contraction, with ``jax_enable_x64``.

Throughput is reported on the *structured* flop count of the NTK, ``sum_j 2 (d + D_j + D_{j+1})``
per pair of samples, over the ``n (n + 1) / 2`` pairs that the symmetric path computes; the same
count is used for every tool, so ratios of GFLOP/s are ratios of speed.  The run also measures
NumPy's GEMM rate (2048 x 2048 matmul) in a child with the same environment, and reports
mpsntk's rate as a fraction of it.

Examples
--------
Full CPU sweep (results as JSON lines, a markdown summary on stdout)::

    python bench/bench_ntk.py --out bench/results/ntk_cpu.jsonl

One configuration, mpsntk only, with OpenBLAS free to pick its AVX-512 kernels::

    python bench/bench_ntk.py --native-blas --n-samples 4096 --n-sites 64 --bond-dim 64 \\
        --dtype float64 --peers
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time

PEERS = ("numpy", "torch", "jax")           # --device cpu
GPU_PEERS = ("cupy", "torch", "jax")        # --device gpu (bench/peers.py)
DTYPES = ("float64", "float32")
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
GEMM_SIZE = 2048
MAX_CALLS = 100
JACOBIAN_NOTE = {
    "numpy": "independent NumPy Jacobian (environments by matmul), then J @ J.T",
    "torch": "torch.func.vmap(jacrev(f)) over the cores, then sum_j J_j @ J_j.T",
    "jax": "jax.jit(vmap(jacrev(f))) over the cores, then sum_j J_j @ J_j.T (jitted)",
    "cupy": "structured formula with cuBLAS: environments by matmul, per-site Gram matrices",
}


def peer_work_gb(tool, n_samples, n_sites, bond_dim, dtype):
    """Largest array a peer builds, in GB: the dense Jacobian, or for the structured CuPy peer
    its n x n kernel plus three per-site Gram matrices."""
    if tool == "cupy":
        return 4 * n_samples**2 * (8 if dtype == "float64" else 4) / 1e9
    return jacobian_gb(n_samples, n_sites, bond_dim, dtype)


# --------------------------------------------------------------------------- problem sizes
def bond_dims(n_sites, bond_dim):
    """Bond dimensions ``(D_0, ..., D_N)`` of an open chain of uniform bond dimension.

    Parameters
    ----------
    n_sites : int
    bond_dim : int

    Returns
    -------
    list of int
        ``[1, D, ..., D, 1]`` (``[1, 1]`` for a single site).
    """
    return [1] + [bond_dim] * (n_sites - 1) + [1]


def n_params(n_sites, bond_dim, phys_dim=2):
    """Number of core entries of an open MPS.

    Parameters
    ----------
    n_sites, bond_dim, phys_dim : int

    Returns
    -------
    int
    """
    dims = bond_dims(n_sites, bond_dim)
    return sum(phys_dim * a * b for a, b in zip(dims[:-1], dims[1:]))


def structured_flops(n_samples, n_sites, bond_dim, phys_dim=2):
    """Structured flop count of a symmetric NTK: ``n (n + 1) / 2`` pairs.

    Parameters
    ----------
    n_samples, n_sites, bond_dim, phys_dim : int

    Returns
    -------
    float
        ``sum_j 2 (phys_dim + D_j + D_{j+1})`` per pair times ``n (n + 1) / 2``.
    """
    dims = bond_dims(n_sites, bond_dim)
    per_pair = sum(2 * (phys_dim + a + b) for a, b in zip(dims[:-1], dims[1:]))
    return per_pair * n_samples * (n_samples + 1) / 2


def jacobian_gb(n_samples, n_sites, bond_dim, dtype):
    """Size of the dense Jacobian ``(n_samples, n_params)`` in GB (1e9 bytes).

    Parameters
    ----------
    n_samples, n_sites, bond_dim : int
    dtype : {"float64", "float32"}

    Returns
    -------
    float
    """
    item = 8 if dtype == "float64" else 4
    return n_samples * n_params(n_sites, bond_dim) * item / 1e9


# --------------------------------------------------------------------------- child side
def _rss_status():
    """Current and peak RSS of this process in MiB, from ``/proc/self/status``."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out.get("VmRSS"), out.get("VmHWM")


def _reset_peak_rss():
    """Reset the RSS high-water mark to the current RSS; return the baseline in MiB.

    Returns
    -------
    baseline : float
        Current RSS (MiB).
    method : str
        ``"clear_refs"`` when the kernel reset the high-water mark, otherwise
        ``"ru_maxrss"`` (the peak then also covers the imports, an upper bound).
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        method = "clear_refs"
    except OSError:
        method = "ru_maxrss"
    try:
        rss, _ = _rss_status()
    except OSError:
        rss = None
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        method = "ru_maxrss"
    return rss, method


def _peak_rss(method):
    """Peak RSS in MiB since :func:`_reset_peak_rss`."""
    if method == "clear_refs":
        _, hwm = _rss_status()
        if hwm is not None:
            return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _problem(cfg):
    """The model and features of one configuration (deterministic in ``cfg["seed"]``)."""
    import numpy as np

    import mpsntk as mn

    dtype = np.dtype(cfg["dtype"])
    mps = mn.MPS.random(cfg["n_sites"], cfg["bond_dim"], phys_dim=2, boundary="open",
                        seed=cfg["seed"], dtype=dtype)
    x = np.random.default_rng(cfg["seed"] + 1).uniform(size=(cfg["n_samples"], cfg["n_sites"]))
    phi = mn.features.trig(x).astype(dtype)
    return mps, phi


def _numpy_ntk_fn(mps, phi):
    """Dense ``J @ J.T`` with an independent NumPy Jacobian."""
    import numpy as np

    cores = [np.asarray(c) for c in mps.cores]
    scales = [float(c) for c in mps.scales]
    weights = [math.sqrt(float(r)) for r in mps.site_lr]
    n, n_sites, d = phi.shape
    dtype = phi.dtype
    sizes = [c.size for c in cores]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    # per-core matrices for the environment recursions
    left_mats = [(scales[j] * cores[j]).transpose(1, 0, 2).reshape(cores[j].shape[1], -1)
                 for j in range(n_sites)]  # (Dl, d*Dr)
    right_mats = [(scales[j] * cores[j]).transpose(2, 0, 1).reshape(cores[j].shape[2], -1)
                  for j in range(n_sites)]  # (Dr, d*Dl)

    def run():
        left = [np.ones((n, 1), dtype=dtype)]
        for j in range(n_sites - 1):
            t = (left[j] @ left_mats[j]).reshape(n, d, -1)
            left.append(np.einsum("ns,nsb->nb", phi[:, j], t))
        right = [None] * (n_sites + 1)
        right[n_sites] = np.ones((n, 1), dtype=dtype)
        for j in range(n_sites - 1, 0, -1):
            t = (right[j + 1] @ right_mats[j]).reshape(n, d, -1)
            right[j] = np.einsum("ns,nsa->na", phi[:, j], t)
        jac = np.empty((n, offsets[-1]), dtype=dtype)
        for j in range(n_sites):
            _, dl, dr = cores[j].shape
            block = jac[:, offsets[j]:offsets[j + 1]].reshape(n, d, dl, dr)
            lr = left[j][:, :, None] * right[j + 1][:, None, :]
            np.multiply((scales[j] * weights[j]) * phi[:, j, :, None, None], lr[:, None],
                        out=block)
        return jac @ jac.T

    return run


def _torch_ntk_fn(mps, phi, n_threads):
    """``vmap(jacrev(f))`` over the cores with torch.func on the CPU (peers.torch_fn)."""
    import peers
    import torch

    torch.set_num_threads(n_threads)
    run, to_host, _ = peers.torch_fn(mps, phi, device="cpu")
    return lambda: to_host(run())


def _jax_ntk_fn(mps, phi):
    """``jit(vmap(jacrev(f)))`` over the cores on JAX's CPU backend (peers.jax_fn)."""
    import peers

    run, to_host, _ = peers.jax_fn(mps, phi, platform="cpu")
    return lambda: to_host(run())


def _mpsntk_fn(mps, phi, device, n_threads):
    """``mpsntk.ntk(mps, phi)`` on the host engine (the GPU builders are in peers.py)."""
    import mpsntk as mn

    mn.set_num_threads(n_threads)
    return lambda: mn.ntk(mps, phi)


def _compare_to_file(theta, path):
    """Max ``|theta - ref| / max|ref|`` against a raw reference file, row block by row block.

    Parameters
    ----------
    theta : ndarray, shape (n, n)
    path : str
        ``ref.tofile(path)`` of a reference of theta's shape and dtype.

    Returns
    -------
    float
        Infinity when ``theta`` is not finite.
    """
    import numpy as np

    n = theta.shape[0]
    if not np.all(np.isfinite(theta)):
        return math.inf
    rows = max(1, (1 << 22) // max(n, 1))
    max_diff = 0.0
    max_ref = 0.0
    with open(path, "rb") as fh:
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            ref = np.fromfile(fh, dtype=theta.dtype, count=(stop - start) * n)
            ref = ref.reshape(stop - start, n).astype(np.float64)
            max_diff = max(max_diff, float(np.max(np.abs(theta[start:stop] - ref))))
            max_ref = max(max_ref, float(np.max(np.abs(ref))))
    return max_diff / max_ref if max_ref > 0 else max_diff


def _measure(tool, cfg, opts):
    """Time one tool on one configuration (runs inside the spawn child)."""
    t_start = time.perf_counter()
    import numpy as np

    mps, phi = _problem(cfg)
    n_threads = opts["n_threads"]
    gpu_peak = None
    to_host = np.asarray
    if opts["device"] == "gpu":  # timed calls leave the kernel on the card
        import peers

        fn, to_host, gpu_peak = peers.BUILDERS[tool](mps, phi)
    elif tool == "mpsntk":
        fn = _mpsntk_fn(mps, phi, opts["device"], n_threads)
    elif tool == "numpy":
        fn = _numpy_ntk_fn(mps, phi)
    elif tool == "torch":
        fn = _torch_ntk_fn(mps, phi, n_threads)
    elif tool == "jax":
        fn = _jax_ntk_fn(mps, phi)
    else:
        raise ValueError(f"unknown tool {tool!r}")
    res = {"blas_env_child": {k: os.environ.get(k) for k in BLAS_VARS}}
    if tool == "torch":
        import torch

        res["n_threads"] = torch.get_num_threads()
    elif tool == "mpsntk":
        import mpsntk as mn

        res["n_threads"] = mn.get_num_threads()
    elif tool == "numpy":
        res["n_threads"] = n_threads  # OPENBLAS_NUM_THREADS, set by the parent
    else:
        res["n_threads"] = os.cpu_count()  # XLA sizes its pool to the cores

    baseline, method = _reset_peak_rss()
    t0 = time.perf_counter()
    theta = fn()
    first = time.perf_counter() - t0
    theta = np.asarray(to_host(theta))
    if opts.get("ref_path"):
        res["max_rel_diff"] = _compare_to_file(theta, opts["ref_path"])
        if not res["max_rel_diff"] <= TOLERANCE[cfg["dtype"]]:
            res["status"] = "mismatch"
            res["note"] = (f"kernel differs from mpsntk by {res['max_rel_diff']:.3g} "
                           f"(tolerance {TOLERANCE[cfg['dtype']]:g}); not timed")
            return res
    if opts.get("save_path"):
        theta.tofile(opts["save_path"])
    del theta
    times = [] if opts["warmup"] > 0 else [first]
    per_call = first
    for _ in range(opts["warmup"] - 1):
        t0 = time.perf_counter()
        fn()
        per_call = time.perf_counter() - t0
    left = 0.8 * opts["timeout"] - (time.perf_counter() - t_start)
    n_rep = min(opts["repeats"] - len(times), int(left // max(per_call, 1e-9)))
    for _ in range(max(0, n_rep)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    # fast calls: keep timing up to --min-time in all (the median resists a noisy neighbour)
    while times and len(times) < MAX_CALLS and sum(times) < opts["min_time"]:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    res["peak_rss_mb"] = _peak_rss(method) - baseline
    res["rss_method"] = method
    if gpu_peak is not None:
        peak = gpu_peak()
        res["gpu_peak_mb"] = None if peak is None else peak / 2**20
    if not times:
        times = [first]
        res["note"] = ("no timed call fit in 80% of --timeout after the warm-up: the time is "
                       "that of the first call (it includes any compilation)")
    elif len(times) < opts["repeats"]:
        res["note"] = (f"{len(times)} timed call(s) instead of {opts['repeats']} "
                       "to stay within 80% of --timeout")
    res["median_s"] = statistics.median(times)
    res["times"] = [float(f"{t:.6g}") for t in times]
    res["status"] = "ok"
    return res


def _gemm(repeats):
    """NumPy GEMM rate (GFLOP/s) of a 2048 x 2048 matmul in float64 and float32."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for name in DTYPES:
        a = rng.standard_normal((GEMM_SIZE, GEMM_SIZE)).astype(name)
        b = rng.standard_normal((GEMM_SIZE, GEMM_SIZE)).astype(name)
        a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        out[name] = 2 * GEMM_SIZE**3 / statistics.median(times) / 1e9
    out["blas_env_child"] = {k: os.environ.get(k) for k in BLAS_VARS}
    out["status"] = "ok"
    return out


def _child(conn, job, args):
    """Spawn-child entry point: run ``job`` and send its result dict back."""
    try:
        res = _gemm(*args) if job == "gemm" else _measure(job, *args)
    except BaseException as exc:  # every failure, MemoryError included, goes to the parent
        res = {"status": "error", "note": f"{type(exc).__name__}: {exc}"[:500]}
    try:
        conn.send(res)
    finally:
        conn.close()


# --------------------------------------------------------------------------- parent side
def run_child(job, args, timeout):
    """Run ``job`` in a fresh spawn child with a wall-clock limit.

    Parameters
    ----------
    job : str
        ``"gemm"`` or a tool name.
    args : tuple
        Positional arguments of the job.
    timeout : float
        Seconds before the child is killed.

    Returns
    -------
    dict
        The child's result, or ``{"status": "timeout" | "error", "note": ...}``.
    """
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, job, args), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    try:
        if recv.poll(timeout):
            res = recv.recv()
        else:
            res = {"status": "timeout", "note": f"timed out after {timeout:g} s"}
    except EOFError:
        proc.join(5)
        res = {"status": "error",
               "note": f"child exited with code {proc.exitcode} (killed for memory?)"}
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
        proc.join()
    res["wall_s"] = time.perf_counter() - t0
    return res


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info():
    """CPU model, versions and mpsntk build facts recorded with every result.

    Returns
    -------
    dict
    """
    import mpsntk as mn

    cpu = platform.processor() or platform.machine()
    fields = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        cpu = f"{fields['model name']} (family {fields.get('cpu family')}, model " \
              f"{fields.get('model')}, {os.cpu_count()} logical CPUs)"
    info = mn.build_info()
    return {
        "cpu": cpu,
        "isa": info["isa"],
        "mpsntk_n_threads": info["n_threads"],
        "compiler": info["compiler"],
        "versions": {
            "mpsntk": info["version"],
            "numpy": _version("numpy"),
            "torch": _version("torch"),
            "jax": _version("jax"),
            "jaxlib": _version("jaxlib"),
            "python": platform.python_version(),
        },
    }


def _fmt_s(value):
    return "—" if value is None else (f"{value:.3g}" if value < 10 else f"{value:.1f}")


def _config_key(rec):
    return (bool(rec.get("native_blas")), DTYPES.index(rec["dtype"]), rec["n_sites"],
            rec["bond_dim"], rec["n_samples"], rec.get("date", ""))


def summarize(records):
    """Fill ``speedup_vs`` and mpsntk's ``max_rel_diff``; return the markdown summary table.

    ``speedup_vs[other]`` of a record is ``median_s(other) / median_s(this)`` on the same
    configuration: how many times faster this tool is than ``other``.

    Parameters
    ----------
    records : list of dict
        Modified in place.  Records of one run share ``date``; each run and BLAS setting
        gets its own rows.

    Returns
    -------
    str
    """
    groups = {}
    for rec in records:
        groups.setdefault(_config_key(rec), []).append(rec)
    gpu = bool(records) and all(r.get("device") == "gpu" for r in records)
    if gpu:  # rates against the card's spec-sheet peak, and the GPU memory each tool used
        lines = [
            "| config (dtype, n_samples, n_sites, bond_dim) | mpsntk s | TFLOP/s (structured) "
            "| % of card peak | mpsntk GPU MB | best peer | peer s | speedup |",
            "|---|---:|---:|---:|---:|---|---:|---:|",
        ]
    else:
        lines = [
            "| config (dtype, n_samples, n_sites, bond_dim) | mpsntk s | GFLOP/s "
            "(structured, n(n+1)/2 pairs) | % of NumPy GEMM | best peer | peer s | speedup |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
    for key in sorted(groups):
        recs = groups[key]
        ok = {r["tool"]: r for r in recs if r["status"] == "ok"}
        for rec in recs:
            if rec["status"] == "ok":
                rec["speedup_vs"] = {t: o["median_s"] / rec["median_s"]
                                     for t, o in ok.items() if t != rec["tool"]} or None
        ref = next((r for r in recs if r["tool"] == "mpsntk"), None)
        peers = [r for r in recs if r["tool"] != "mpsntk"]
        diffs = [r["max_rel_diff"] for r in peers if r.get("max_rel_diff") is not None]
        if ref is not None:
            ref["max_rel_diff"] = max(diffs) if diffs else None
        timed = [r for r in peers if r["status"] == "ok"]
        best = min(timed, key=lambda r: r["median_s"]) if timed else None
        native, dtype, n_sites, bond_dim, n_samples, _ = key
        config = f"{DTYPES[dtype]}, {n_samples}, {n_sites}, {bond_dim}"
        if native:
            config += " (--native-blas)"
        if ref is None or ref["status"] != "ok":
            status = "—" if ref is None else ref["status"]
            lines.append(f"| {config} | {status} | — | — | {'— | ' if gpu else ''}— | — | — |")
            continue
        timed_out = [r for r in peers if r["status"] == "timeout"]
        if best is not None:
            peer_col, peer_s = best["tool"], _fmt_s(best["median_s"])
            speed = f"{best['median_s'] / ref['median_s']:.1f}x"
        elif timed_out:
            limit = min(r["timeout_s"] for r in timed_out)
            peer_col = ", ".join(r["tool"] for r in timed_out) + ": timeout"
            peer_s, speed = f"> {limit:g}", f"> {limit / ref['median_s']:.0f}x"
        else:
            skipped = [r for r in peers if r["status"] == "skipped"]
            others = sorted({f"{r['tool']}: {r['status']}" for r in peers
                             if r["status"] != "skipped"})
            if skipped and skipped[0].get("jacobian_gb") is not None:
                others.insert(0, f"skipped (would need {skipped[0]['jacobian_gb']:.1f} GB)")
            peer_col = "; ".join(others) if others else "not run"
            peer_s, speed = "—", "—"
        if gpu:
            frac, mem = ref.get("frac_of_peak"), ref.get("gpu_peak_mb")
            lines.append(
                f"| {config} | {_fmt_s(ref['median_s'])} | {ref['gflops'] / 1e3:.2f} | "
                f"{'—' if frac is None else f'{100 * frac:.0f}%'} | "
                f"{'—' if mem is None else f'{mem:.0f}'} | {peer_col} | {peer_s} | {speed} |"
            )
            continue
        frac = ref.get("frac_of_gemm")
        lines.append(
            f"| {config} | {_fmt_s(ref['median_s'])} | {ref['gflops']:.1f} | "
            f"{'—' if frac is None else f'{100 * frac:.0f}%'} | {peer_col} | {peer_s} | "
            f"{speed} |"
        )
    return "\n".join(lines)


def _parse(argv):
    p = argparse.ArgumentParser(
        description="Time mpsntk.ntk against dense-Jacobian NTKs (NumPy, PyTorch, JAX).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n-samples", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--n-sites", type=int, nargs="+", default=[16, 64])
    p.add_argument("--bond-dim", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--peers", nargs="*", choices=sorted(set(PEERS + GPU_PEERS)), default=None,
                   help="peers to run on the same data (none: mpsntk only); default "
                        f"{' '.join(PEERS)} on cpu, {' '.join(GPU_PEERS)} on gpu")
    p.add_argument("--repeats", type=int, default=3, help="timed calls (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument("--min-time", type=float, default=1.0,
                   help=f"time more calls than --repeats (up to {MAX_CALLS}) until they add up "
                        "to this many seconds")
    p.add_argument("--gemm-repeats", type=int, default=7,
                   help="timed 2048x2048 matmuls for NumPy's GEMM rate")
    p.add_argument("--out", default=None,
                   help="JSON-lines output (default bench/results/ntk_{cpu,gpu}.jsonl)")
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="gpu: mpsntk's CUDA engine and the GPU peers on one card")
    p.add_argument("--peer-max-gb", type=float, default=6.0,
                   help="skip a peer when its dense Jacobian (n * n_params * itemsize) exceeds "
                        "this many GB")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds per measurement; a child past it is killed, and the number "
                        "of timed calls is reduced to stay within 80%% of it")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for mpsntk (OpenMP), OpenBLAS and PyTorch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--native-blas", action="store_true",
                   help="remove OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from the environment of "
                        "the measurement children, so that OpenBLAS (NumPy's GEMM) picks the "
                        "kernels of this CPU (e.g. AVX-512) instead of the forced ones")
    p.add_argument("--summary", metavar="JSONL",
                   help="print the markdown table of an existing results file and exit")
    args = p.parse_args(argv)
    for name in ("n_samples", "n_sites", "bond_dim"):
        if min(getattr(args, name)) < 1:
            p.error(f"--{name.replace('_', '-')} values must be >= 1")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1 and --warmup >= 0")
    allowed = GPU_PEERS if args.device == "gpu" else PEERS
    if args.peers is None:
        args.peers = list(allowed)
    wrong = [t for t in args.peers if t not in allowed]
    if wrong:
        p.error(f"--peers {' '.join(wrong)}: not a {args.device} peer (choose from "
                f"{', '.join(allowed)})")
    if args.out is None:
        args.out = f"bench/results/ntk_{args.device}.jsonl"
    return args


def _measure_gemm(args, when):
    """NumPy GEMM rates in a spawn child (empty dict when the child fails)."""
    gemm = run_child("gemm", (args.gemm_repeats,), args.timeout)
    if gemm["status"] != "ok":
        print(f"# NumPy GEMM measurement ({when}) failed: {gemm.get('note')}", file=sys.stderr)
        return {}
    print(f"# NumPy GEMM {GEMM_SIZE}^2 ({when}): float64 {gemm['float64']:.1f} GFLOP/s, "
          f"float32 {gemm['float32']:.1f} GFLOP/s  (OPENBLAS_CORETYPE="
          f"{gemm['blas_env_child']['OPENBLAS_CORETYPE']})", file=sys.stderr)
    return gemm


def _run_config(cfg, tools, args, gemm, common, ref_path, missing):
    """Measure every tool on one configuration; return the records (mpsntk first)."""
    dtype, n_sites, bond_dim, n_samples = (cfg["dtype"], cfg["n_sites"], cfg["bond_dim"],
                                           cfg["n_samples"])
    flops = structured_flops(n_samples, n_sites, bond_dim)
    opts = {"repeats": args.repeats, "warmup": args.warmup, "timeout": args.timeout,
            "min_time": args.min_time, "n_threads": args.threads, "device": args.device}
    records = []
    ref_ok = False
    # mpsntk's kernel is saved for the agreement checks only when some peer will run.
    need_ref = any(t not in missing
                   and peer_work_gb(t, n_samples, n_sites, bond_dim, dtype) <= args.peer_max_gb
                   for t in tools if t != "mpsntk")
    for tool in tools:
        rec = dict(common, tool=tool, dtype=dtype, n_samples=n_samples, n_sites=n_sites,
                   bond_dim=bond_dim, n_params=n_params(n_sites, bond_dim), flops=flops,
                   status=None, median_s=None, times=None, peak_rss_mb=None, gflops=None,
                   gemm_gflops=gemm.get(dtype), frac_of_gemm=None, speedup_vs=None,
                   max_rel_diff=None, n_threads=None, note=None)
        if tool != "mpsntk":
            rec["method"] = JACOBIAN_NOTE[tool]
            rec["jacobian_gb"] = peer_work_gb(tool, n_samples, n_sites, bond_dim, dtype)
        if tool == "mpsntk":
            res = run_child(tool, (cfg, dict(opts, save_path=ref_path if need_ref else None)),
                            args.timeout)
            ref_ok = res["status"] == "ok" and os.path.exists(ref_path)
        elif tool in missing:
            res = {"status": "skipped", "note": f"skipped: {tool} is not installed"}
        elif rec["jacobian_gb"] > args.peer_max_gb:
            res = {"status": "skipped",
                   "note": f"skipped: would need {rec['jacobian_gb']:.1f} GB "
                           f"(largest array > --peer-max-gb {args.peer_max_gb:g})"}
        elif not ref_ok:
            res = {"status": "skipped", "note": "skipped: no mpsntk kernel to check against"}
        else:
            res = run_child(tool, (cfg, dict(opts, ref_path=ref_path)), args.timeout)
        rec.update(res)
        if rec["status"] == "ok":
            rec["gflops"] = flops / rec["median_s"] / 1e9
            peak = (common.get("card_peak_tflops") or {}).get(dtype)
            if args.device == "gpu" and peak:
                rec["frac_of_peak"] = rec["gflops"] / 1e3 / peak
        records.append(rec)
    if os.path.exists(ref_path):
        os.remove(ref_path)
    return records


def _progress(i, total, records):
    rec = records[0]
    parts = [f"[{i}/{total}] {rec['dtype']} n={rec['n_samples']} N={rec['n_sites']} "
             f"D={rec['bond_dim']}:"]
    for r in records:
        if r["status"] == "ok":
            diff = r.get("max_rel_diff")
            parts.append(f"{r['tool']} {_fmt_s(r['median_s'])} s"
                         + (f" (diff {diff:.1e})" if diff is not None else ""))
        else:
            parts.append(f"{r['tool']} {r['status']}")
    print("  ".join(parts), file=sys.stderr)


def main(argv=None):
    """Command-line entry point.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 when ``--device gpu`` has no CUDA engine.
    """
    args = _parse(argv)
    if args.summary:
        with open(args.summary) as fh:
            print(summarize([json.loads(line) for line in fh if line.strip()]))
        return 0
    import mpsntk as mn

    if args.device == "gpu" and not mn.cuda_available():
        reason = mn.build_info().get("cuda_reason")
        print(f"--device gpu: mpsntk's CUDA engine cannot be used here: {reason}. It needs an "
              "mpsntk built with its CUDA engine (MPSNTK_CUDA=ON) and a visible CUDA device; "
              "use --device cpu.", file=sys.stderr)
        return 2
    blas_env_default = {k: os.environ.get(k) for k in BLAS_VARS}
    if args.native_blas:
        for key in BLAS_VARS:
            os.environ.pop(key, None)
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = str(args.threads)

    machine = machine_info()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    print(f"# {date}  {machine['cpu']}  mpsntk isa={machine['isa']}  threads={args.threads}  "
          f"native_blas={args.native_blas}", file=sys.stderr)
    gemm_start = _measure_gemm(args, "start")

    peers = list(dict.fromkeys(args.peers))
    missing = {t for t in peers if importlib.util.find_spec(t) is None}
    common = {
        "device": args.device,
        "cpu": machine["cpu"],
        "isa": machine["isa"],
        "versions": machine["versions"],
        "date": date,
        "native_blas": args.native_blas,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "openblas_l2_size": os.environ.get("OPENBLAS_L2_SIZE"),
        "blas_env_default": blas_env_default,
        "timeout_s": args.timeout,
        "load_avg_start": os.getloadavg()[0],
    }
    if args.device == "gpu":
        import cupy
        import peers

        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        common["gpu"] = name.decode() if isinstance(name, bytes) else name
        common["card_peak_tflops"] = peers.card_peaks(common["gpu"])
        common["float64_path"] = mn._backend._cuda.float64_path()  # m16n8k8, m8n8k4 or fma
        print(f"# GPU: {common['gpu']}; spec-sheet peak TFLOP/s: {common['card_peak_tflops']}; "
              f"float64 products: {common['float64_path']}", file=sys.stderr)
    configs = list(itertools.product(args.dtype, args.n_sites, args.bond_dim, args.n_samples))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp_out = args.out + ".tmp"
    workdir = tempfile.mkdtemp(prefix="bench_ntk_")
    records = []
    try:
        with open(tmp_out, "w") as tmp:
            for i, (dtype, n_sites, bond_dim, n_samples) in enumerate(configs, 1):
                cfg = {"dtype": dtype, "n_sites": n_sites, "bond_dim": bond_dim,
                       "n_samples": n_samples, "seed": args.seed}
                recs = _run_config(cfg, ["mpsntk"] + peers, args, gemm_start,
                                   dict(common, load_avg=os.getloadavg()[0]),
                                   os.path.join(workdir, "theta.bin"), missing)
                for rec in recs:
                    tmp.write(json.dumps(rec) + "\n")
                tmp.flush()
                _progress(i, len(configs), recs)
                records.extend(recs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    gemm_end = _measure_gemm(args, "end")

    # The machine is shared: take the better of the two GEMM measurements as its rate, so that
    # the fraction of GEMM is not flattered by a slow moment.
    gemm = {}
    for dtype in DTYPES:
        rates = [g[dtype] for g in (gemm_start, gemm_end) if dtype in g]
        if rates:
            gemm[dtype] = max(rates)
    for rec in records:
        rec["gemm_gflops"] = gemm.get(rec["dtype"])
        rec["gemm_gflops_start"] = gemm_start.get(rec["dtype"])
        rec["gemm_gflops_end"] = gemm_end.get(rec["dtype"])
        if rec["gflops"] is not None and rec["gemm_gflops"]:
            rec["frac_of_gemm"] = rec["gflops"] / rec["gemm_gflops"]
    table = summarize(records)
    with open(args.out, "a" if args.append else "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    os.remove(tmp_out)
    wall = time.perf_counter() - start
    child_env = (gemm_start or gemm_end or {}).get("blas_env_child", {})
    rates = ", ".join(f"{d} {gemm[d]:.1f} GFLOP/s" for d in gemm)
    print(f"NumPy GEMM ({GEMM_SIZE}x{GEMM_SIZE} matmul, best of start/end of this run): "
          f"{rates or 'not measured'}; OPENBLAS_CORETYPE={child_env.get('OPENBLAS_CORETYPE')}, "
          f"OPENBLAS_L2_SIZE={child_env.get('OPENBLAS_L2_SIZE')}")
    print(f"{machine['cpu']}; mpsntk {machine['versions']['mpsntk']} ({machine['isa']}), "
          f"{args.threads} threads; {date}; sweep wall time {wall:.0f} s\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
