"""Benchmark mpsntk's routines against every peer, on the same data, in one run.

Routines (``--routine``): ``ntk`` (the empirical NTK ``Theta(X, X)``), ``ntk_vp`` (``Theta v``),
``vjp`` (one training step's gradient: forward pass and ``J^T (f - y)``), ``log_partition`` and
``log_partition_grad`` (Born machine ``log Z`` and its gradient).  Peers (``bench/peers.py``):
a dense NumPy Jacobian, the same structured formula as mpsntk written in NumPy
(``numpy-structured``), ``torch.func`` and JAX (automatic differentiation of the same MPS),
and neural-tangents' four NTK implementations and ``empirical_ntk_vp_fn``, run in their own
virtual environment (``bench/nt_worker.py``, built by ``bench/make_nt_env.sh``).

Every (tool, configuration) measurement runs in a fresh process (a ``multiprocessing`` *spawn*
child, or the neural-tangents worker), so that imports, allocator caches and thread pools of one
tool never leak into another, and so that the process's peak resident set size is a clean measure
of the memory the computation needs (C++ and BLAS buffers included).  mpsntk runs first on each
configuration and saves its result; every peer's first result is compared with it *before* any
timed call (``_harness.measure``), and a disagreement beyond the tolerance stops the run with a
message naming the peer, the configuration and the difference.

Throughput is reported on a *structured* flop count of each routine (the same count for every
tool, so ratios of GFLOP/s are ratios of speed); the run also measures NumPy's GEMM rate
(2048 x 2048 matmul) at its start and end, and reports mpsntk's rate as a fraction of it.

Examples
--------
The NTK against every CPU peer (JSON lines, then a markdown summary on stdout)::

    python bench/bench_ntk.py --routine ntk --n-samples 256 1024 --n-sites 32 --bond-dim 32

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
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _harness

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
NT_TOOLS = ("nt-jacobian-contraction", "nt-ntk-vector-products", "nt-structured-derivatives",
            "nt-auto", "nt-ntk-vp")
ROUTINES = ("ntk", "ntk_vp", "vjp", "log_partition", "log_partition_grad")
BORN = ("log_partition", "log_partition_grad")
CPU_PEERS = {
    "ntk": ("numpy-jacobian", "numpy-structured", "torch", "jax", "nt-jacobian-contraction",
            "nt-ntk-vector-products", "nt-structured-derivatives", "nt-auto"),
    "ntk_vp": ("numpy-structured", "torch", "jax", "nt-ntk-vp"),
    "vjp": ("numpy-structured", "torch", "jax"),
    "log_partition": ("numpy-structured", "torch", "jax"),
    "log_partition_grad": ("numpy-structured", "torch", "jax"),
}
GPU_PEERS = {  # the Born contractions of mpsntk are host code
    "ntk": ("cupy", "torch", "jax"),
    "ntk_vp": ("cupy", "torch", "jax"),
    "vjp": ("cupy", "torch", "jax"),
}
JACOBIAN_TOOLS = ("numpy-jacobian", "torch", "jax", "nt-jacobian-contraction")
DTYPES = ("float64", "float32")
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
GEMM_SIZE = 2048
METHOD = {
    "numpy-jacobian": "independent NumPy Jacobian (environments by matmul), then J @ J.T",
    "numpy-structured": "mpsntk's structured formula in NumPy: environments by matmul, "
                        "per-site Gram products / one GEMM per site, tiled over samples",
    "cupy": "mpsntk's structured formula with CuPy/cuBLAS",
    "torch": "torch.func: vmap(jacrev) + sum_j J_j J_j^T (ntk), jvp of vjp (ntk_vp), grad",
    "jax": "jax.jit of vmap(jacrev) + sum_j J_j J_j^T (ntk), jvp of vjp (ntk_vp), grad",
    "nt-jacobian-contraction": "neural_tangents.empirical_ntk_fn, JACOBIAN_CONTRACTION, jit",
    "nt-ntk-vector-products": "neural_tangents.empirical_ntk_fn, NTK_VECTOR_PRODUCTS, jit",
    "nt-structured-derivatives": "neural_tangents.empirical_ntk_fn, STRUCTURED_DERIVATIVES, jit",
    "nt-auto": "neural_tangents.empirical_ntk_fn, AUTO, jit",
    "nt-ntk-vp": "neural_tangents.empirical_ntk_vp_fn, jit",
}
# the n x n kernel and three n x n Gram matrices: the CuPy peer's working set
PEER_GB_RULES = {"cupy": lambda n, item: 4 * n * n * item / 1e9}


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


def routine_flops(routine, n_samples, n_sites, bond_dim, phys_dim=2):
    """Structured flop count of one call of ``routine`` (the same for every tool).

    ``ntk``: :func:`structured_flops`.  With ``g = sum_j 2 d D_j D_{j+1}`` (one sample's product
    with every core): ``ntk_vp`` ``4 n g`` (left and right environments, then ``J_j^T v`` and
    ``J_j`` times it), ``vjp`` ``3 n g`` (forward, right environments, gradients).  Born:
    ``log_partition`` ``sum_j 2 d D_j D_{j+1} (D_j + D_{j+1})`` (two GEMMs per site of the
    doubled chain), ``log_partition_grad`` three times that (left and right sweeps, gradients).

    Parameters
    ----------
    routine : str
    n_samples : int or None
        Unused by the Born routines.
    n_sites, bond_dim, phys_dim : int

    Returns
    -------
    float
    """
    dims = bond_dims(n_sites, bond_dim)
    pairs = list(zip(dims[:-1], dims[1:]))
    if routine == "ntk":
        return structured_flops(n_samples, n_sites, bond_dim, phys_dim)
    g = sum(2.0 * phys_dim * a * b for a, b in pairs)
    if routine == "ntk_vp":
        return 4.0 * n_samples * g
    if routine == "vjp":
        return 3.0 * n_samples * g
    born = sum(2.0 * phys_dim * a * b * (a + b) for a, b in pairs)
    return born if routine == "log_partition" else 3.0 * born


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


def peer_work_gb(tool, routine, n_samples, n_sites, bond_dim, dtype):
    """Largest array a peer is known to build, in GB, or None when no bound applies: the dense
    Jacobian of the NTK peers that form it, the ``n x n`` arrays of the CuPy peer."""
    if routine != "ntk":
        return None
    if tool in JACOBIAN_TOOLS:
        return jacobian_gb(n_samples, n_sites, bond_dim, dtype)
    if tool in PEER_GB_RULES:
        return PEER_GB_RULES[tool](n_samples, 8 if dtype == "float64" else 4)
    return None


# --------------------------------------------------------------------------- child side
def _problem(cfg):
    """The problem of one configuration (deterministic in ``cfg["seed"]``), as
    :func:`peers.problem`: the model, and for the data routines uniform inputs through
    ``features.trig``, a standard normal ``v`` (ntk_vp) and targets ``y`` (vjp)."""
    import numpy as np
    import peers

    import mpsntk as mn

    dtype = np.dtype(cfg["dtype"])
    mps = mn.MPS.random(cfg["n_sites"], cfg["bond_dim"], phys_dim=2, boundary="open",
                        seed=cfg["seed"], dtype=dtype)
    if cfg.get("routine", "ntk") in BORN:
        return peers.problem(mps)
    n = cfg["n_samples"]
    rng = np.random.default_rng(cfg["seed"] + 1)
    x = rng.uniform(size=(n, cfg["n_sites"]))
    phi = mn.features.trig(x).astype(dtype)
    v = rng.standard_normal(n).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    return peers.problem(mps, phi, v, y)


def save_problem(prob, path):
    """Save a problem's arrays for the neural-tangents worker (``nt_worker.load_problem``)."""
    import numpy as np

    arrays = {f"core_{j}": c for j, c in enumerate(prob["cores"])}
    arrays.update(n_sites=len(prob["cores"]), scales=prob["scales"], rates=prob["rates"])
    for key in ("phi", "v", "y"):
        if prob[key] is not None:
            arrays[key] = prob[key]
    np.savez(path, **arrays)


def _measure(tool, cfg, opts):
    """Time one tool on one configuration (runs inside the spawn child).

    Parameters
    ----------
    tool : str
    cfg : dict
        ``routine`` (default ``"ntk"``), ``dtype, n_sites, bond_dim, n_samples, seed``.
    opts : dict
        ``repeats, warmup, timeout, min_time, n_threads, device``; ``save_prefix`` (mpsntk:
        save the result there) or ``ref_paths`` (peers: compare with these files first).

    Returns
    -------
    dict
    """
    t_start = time.perf_counter()
    import peers

    routine = cfg.get("routine", "ntk")
    n_threads = opts["n_threads"]
    if tool == "mpsntk":
        import mpsntk as mn

        mn.set_num_threads(n_threads)
    elif tool == "torch":
        import torch

        torch.set_num_threads(n_threads)
    run, to_host, peak = peers.build(routine, tool, _problem(cfg), device=opts["device"])
    res = {"blas_env_child": {k: os.environ.get(k) for k in BLAS_VARS}}
    if tool == "torch":
        res["n_threads"] = torch.get_num_threads()
    elif tool == "mpsntk":
        res["n_threads"] = mn.get_num_threads()
    elif tool.startswith("numpy"):
        res["n_threads"] = n_threads  # OPENBLAS_NUM_THREADS, set by the parent
    else:
        res["n_threads"] = os.cpu_count()  # XLA sizes its pool to the cores
    res.update(_harness.measure(run, to_host, opts, t_start, TOLERANCE[cfg["dtype"]], peak))
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
    sys.path.insert(0, BENCH_DIR)
    try:
        res = _gemm(*args) if job == "gemm" else _measure(job, *args)
    except BaseException as exc:  # every failure, MemoryError included, goes to the parent
        res = {"status": "error", "note": f"{type(exc).__name__}: {exc}"[:500]}
    try:
        conn.send(res)
    finally:
        conn.close()


# --------------------------------------------------------------------------- parent side
def _rss_mb(pid):
    """Resident set size of process ``pid`` in MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _watch(pid, finished, timeout, max_rss_mb):
    """Wait until ``finished()`` is true, ``timeout`` seconds pass, or the process's RSS
    exceeds ``max_rss_mb`` (a peer must not push a shared machine into swapping or the OOM
    killer).  Returns ``"done"``, ``"timeout"`` or ``"memory"``."""
    deadline = time.perf_counter() + timeout
    while True:
        if finished(0.05):
            return "done"
        if max_rss_mb and _rss_mb(pid) > max_rss_mb:
            return "memory"
        if time.perf_counter() > deadline:
            return "timeout"


def _stopped(how, timeout, max_rss_mb):
    if how == "timeout":
        return {"status": "timeout", "note": f"timed out after {timeout:g} s"}
    return {"status": "memory",
            "note": f"killed: resident memory above --max-rss-gb ({max_rss_mb / 1024:g} GiB)"}


def spawn_child(target, args, timeout, max_rss_mb=None):
    """``target(conn, *args)`` in a fresh spawn child that sends one result dict on ``conn``;
    killed past ``timeout`` seconds or ``max_rss_mb`` MiB of resident memory (then a
    ``{"status": "timeout" | "memory" | "error", "note": ...}`` record), with its wall time."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(send, *args), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    try:
        how = _watch(proc.pid, recv.poll, timeout, max_rss_mb)
        res = recv.recv() if how == "done" else _stopped(how, timeout, max_rss_mb)
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


def run_child(job, args, timeout, max_rss_mb=None):
    """Run ``job`` in a fresh spawn child with a wall-clock and a memory limit.

    Parameters
    ----------
    job : str
        ``"gemm"`` or a tool name.
    args : tuple
        Positional arguments of the job.
    timeout : float
        Seconds before the child is killed.
    max_rss_mb : float, optional
        Resident memory (MiB) above which the child is killed.

    Returns
    -------
    dict
        The child's result, or ``{"status": "timeout" | "memory" | "error", "note": ...}``.
    """
    return spawn_child(_child, (job, args), timeout, max_rss_mb)


def run_worker(python, job, timeout, max_rss_mb=None):
    """Run one neural-tangents job in ``python`` (the venv of ``make_nt_env.sh``).

    The job goes to ``nt_worker.py`` as JSON on stdin; its answer is the JSON on its stdout.

    Parameters
    ----------
    python : str
        Interpreter of the neural-tangents venv.
    job : dict
    timeout, max_rss_mb : float
        As in :func:`run_child`.

    Returns
    -------
    dict
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([python, os.path.join(BENCH_DIR, "nt_worker.py")],
                                stdin=subprocess.PIPE, stdout=out, stderr=err, text=True,
                                env=env)
        try:
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()

            def finished(wait):
                try:
                    proc.wait(wait)
                    return True
                except subprocess.TimeoutExpired:
                    return False

            how = _watch(proc.pid, finished, timeout, max_rss_mb)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().splitlines() if line.strip()]
        if how != "done":
            res = _stopped(how, timeout, max_rss_mb)
        elif lines:
            res = json.loads(lines[-1])
        else:
            tail = err.read()[-400:].strip().replace("\n", " | ")
            res = {"status": "error",
                   "note": f"neural-tangents worker exited with code {proc.returncode}: {tail}"}
    res["wall_s"] = time.perf_counter() - t0
    return res


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model():
    """The CPU's model name, family and model number and logical CPU count (``/proc/cpuinfo``).

    Returns
    -------
    str
    """
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
    return cpu


def machine_info():
    """CPU model, versions and mpsntk build facts recorded with every result.

    Returns
    -------
    dict
    """
    import mpsntk as mn

    info = mn.build_info()
    return {
        "cpu": cpu_model(),
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
    n = rec.get("n_samples")
    return (ROUTINES.index(rec.get("routine", "ntk")), bool(rec.get("native_blas")),
            DTYPES.index(rec["dtype"]), rec["n_sites"], rec["bond_dim"],
            -1 if n is None else n, rec.get("date", ""))


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
    rate = "TFLOP/s" if gpu else "GFLOP/s"
    frac = "% of card peak" if gpu else "% of NumPy GEMM"
    lines = [
        f"| routine | config (dtype, n_samples, n_sites, bond_dim) | mpsntk s | {rate} "
        f"(structured) | {frac} | best peer | peer s | speedup |",
        "|---|---|---:|---:|---:|---|---:|---:|",
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
        rec0 = recs[0]
        n = "—" if rec0.get("n_samples") is None else rec0["n_samples"]
        config = f"{rec0['dtype']}, {n}, {rec0['n_sites']}, {rec0['bond_dim']}"
        if rec0.get("native_blas"):
            config += " (--native-blas)"
        routine = rec0.get("routine", "ntk")
        if ref is None or ref["status"] != "ok":
            status = "—" if ref is None else ref["status"]
            lines.append(f"| {routine} | {config} | {status} | — | — | — | — | — |")
            continue
        timed = [r for r in peers if r["status"] == "ok"]
        best = min(timed, key=lambda r: r["median_s"]) if timed else None
        timed_out = [r for r in peers if r["status"] == "timeout"]
        if best is not None:
            peer_col, peer_s = best["tool"], _fmt_s(best["median_s"])
            speed = f"{best['median_s'] / ref['median_s']:.1f}x"
        elif timed_out:
            limit = min(r["timeout_s"] for r in timed_out)
            peer_col = ", ".join(r["tool"] for r in timed_out) + ": timeout"
            peer_s, speed = f"> {limit:g}", f"> {limit / ref['median_s']:.0f}x"
        else:
            others = sorted({f"{r['tool']}: {r['status']}" for r in peers})
            peer_col = "; ".join(others) if others else "not run"
            peer_s, speed = "—", "—"
        value = ref["gflops"] / 1e3 if gpu else ref["gflops"]
        share = ref.get("frac_of_peak" if gpu else "frac_of_gemm")
        lines.append(
            f"| {routine} | {config} | {_fmt_s(ref['median_s'])} | {value:.3g} | "
            f"{'—' if share is None else f'{100 * share:.0f}%'} | {peer_col} | {peer_s} | "
            f"{speed} |"
        )
    return "\n".join(lines)


def _default_nt_python():
    env = os.environ.get("MPSNTK_NT_PYTHON")
    if env:
        return env
    return os.path.join(os.path.dirname(BENCH_DIR), ".venv-nt", "bin", "python")


def _parse(argv):
    p = argparse.ArgumentParser(
        description="Time mpsntk's NTK, NTK-vector product, gradient and Born-machine log Z "
                    "against NumPy, PyTorch, JAX and neural-tangents on the same data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--routine", nargs="+", choices=ROUTINES, default=["ntk"])
    p.add_argument("--n-samples", type=int, nargs="+", default=[256, 1024, 4096],
                   help="(ignored by the Born routines, which have no data)")
    p.add_argument("--n-sites", type=int, nargs="+", default=[16, 64])
    p.add_argument("--bond-dim", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    all_peers = sorted({t for d in (CPU_PEERS, GPU_PEERS) for ts in d.values() for t in ts})
    p.add_argument("--peers", nargs="*", choices=all_peers, default=None,
                   help="peers to run on the same data (none: mpsntk only); default: every "
                        "peer of each routine on the device")
    p.add_argument("--repeats", type=int, default=3, help="timed calls (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument("--min-time", type=float, default=1.0,
                   help=f"time more calls than --repeats (up to {_harness.MAX_CALLS}) until "
                        "they add up to this many seconds")
    p.add_argument("--gemm-repeats", type=int, default=7,
                   help="timed 2048x2048 matmuls for NumPy's GEMM rate")
    p.add_argument("--out", default=None,
                   help="JSON-lines output (default bench/results/{routine}_{device}.jsonl for "
                        "one routine, bench/results/{device}.jsonl for several)")
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="gpu: mpsntk's CUDA engine and the GPU peers on one card")
    p.add_argument("--peer-max-gb", type=float, default=6.0,
                   help="skip a peer when its largest known array (the dense Jacobian "
                        "n * n_params * itemsize for those that form it) exceeds this many GB")
    p.add_argument("--max-rss-gb", type=float, default=16.0,
                   help="kill a measurement whose resident memory exceeds this many GiB "
                        "(recorded as status 'memory')")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds per measurement; a child past it is killed, and the number "
                        "of timed calls is reduced to stay within 80%% of it")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for mpsntk (OpenMP), OpenBLAS and PyTorch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nt-python", default=_default_nt_python(),
                   help="Python of the neural-tangents venv (bench/make_nt_env.sh; also "
                        "$MPSNTK_NT_PYTHON)")
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
    if args.timeout <= 0 or args.max_rss_gb <= 0:
        p.error("--timeout and --max-rss-gb must be > 0")
    table = GPU_PEERS if args.device == "gpu" else CPU_PEERS
    args.routine = list(dict.fromkeys(args.routine))
    if args.device == "gpu":
        host_only = [r for r in args.routine if r not in GPU_PEERS]
        if host_only:
            p.error(f"--routine {' '.join(host_only)}: mpsntk computes it on the host only "
                    "(use --device cpu)")
    offered = {t for r in args.routine for t in table[r]}
    if args.peers is not None:
        wrong = [t for t in args.peers if t not in offered]
        if wrong:
            p.error(f"--peers {' '.join(wrong)}: not a {args.device} peer of "
                    f"{', '.join(args.routine)} (choose from {', '.join(sorted(offered))})")
    args.tools = {r: ["mpsntk"] + [t for t in table[r]
                                   if args.peers is None or t in args.peers]
                  for r in args.routine}
    if args.out is None:
        name = args.routine[0] if len(args.routine) == 1 else "all"
        args.out = os.path.join(os.path.dirname(BENCH_DIR), "bench", "results",
                                f"{name}_{args.device}.jsonl")
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


def _dominated(cfg, failed):
    """Whether ``cfg`` is at least as large in every size as a configuration on which the same
    tool timed out or was killed for memory (the same routine and dtype)."""
    for other in failed:
        if all(other[k] == cfg[k] for k in ("routine", "dtype")) and all(
            (cfg[k] or 0) >= (other[k] or 0) for k in ("n_samples", "n_sites", "bond_dim")
        ):
            return other
    return None


def _run_config(cfg, tools, args, gemm, common, workdir, missing, failed):
    """Measure every tool on one configuration; return the records (mpsntk first).

    ``failed`` maps a tool to the configurations where it timed out or exceeded the memory
    limit; larger configurations are skipped for it (and it is updated here)."""
    routine, dtype = cfg["routine"], cfg["dtype"]
    n_samples, n_sites, bond_dim = cfg["n_samples"], cfg["n_sites"], cfg["bond_dim"]
    flops = routine_flops(routine, n_samples, n_sites, bond_dim)
    opts = {"repeats": args.repeats, "warmup": args.warmup, "timeout": args.timeout,
            "min_time": args.min_time, "n_threads": args.threads, "device": args.device}
    max_rss_mb = args.max_rss_gb * 1024
    records = []
    ref_paths = None
    problem_path = None
    for tool in tools:
        rec = dict(common, tool=tool, routine=routine, dtype=dtype, n_samples=n_samples,
                   n_sites=n_sites, bond_dim=bond_dim, n_params=n_params(n_sites, bond_dim),
                   flops=flops, status=None, median_s=None, times=None, peak_rss_mb=None,
                   gflops=None, gemm_gflops=gemm.get(dtype), frac_of_gemm=None,
                   speedup_vs=None, max_rel_diff=None, n_threads=None, note=None,
                   tolerance=TOLERANCE[dtype])
        work_gb = None
        if tool != "mpsntk":
            rec["method"] = METHOD[tool]
            work_gb = peer_work_gb(tool, routine, n_samples, n_sites, bond_dim, dtype)
            rec["jacobian_gb"] = work_gb
        smaller = _dominated(cfg, failed.get(tool, []))
        if tool == "mpsntk":
            res = run_child(tool, (cfg, dict(opts, save_prefix=os.path.join(workdir, "ref_"))),
                            args.timeout, max_rss_mb)
            ref_paths = res.pop("ref_paths", None) if res["status"] == "ok" else None
        elif tool in missing:
            res = {"status": "skipped", "note": f"skipped: {missing[tool]}"}
        elif work_gb is not None and work_gb > args.peer_max_gb:
            res = {"status": "skipped",
                   "note": f"skipped: would need {work_gb:.1f} GB "
                           f"(largest array > --peer-max-gb {args.peer_max_gb:g})"}
        elif smaller is not None:
            res = {"status": "skipped",
                   "note": f"skipped: {smaller['why']} at n_samples={smaller['n_samples']}, "
                           f"n_sites={smaller['n_sites']}, bond_dim={smaller['bond_dim']}"}
        elif not ref_paths:
            res = {"status": "skipped", "note": "skipped: no mpsntk result to check against"}
        elif tool in NT_TOOLS:
            if problem_path is None:
                problem_path = os.path.join(workdir, "problem.npz")
                save_problem(_problem(cfg), problem_path)
            job = {"tool": tool, "routine": routine, "dtype": dtype, "problem": problem_path,
                   "tolerance": TOLERANCE[dtype], "opts": dict(opts, ref_paths=ref_paths)}
            res = run_worker(args.nt_python, job, args.timeout, max_rss_mb)
        else:
            res = run_child(tool, (cfg, dict(opts, ref_paths=ref_paths)), args.timeout,
                            max_rss_mb)
        if res["status"] in ("timeout", "memory") and tool != "mpsntk":
            why = "timed out" if res["status"] == "timeout" else "exceeded --max-rss-gb"
            failed.setdefault(tool, []).append(dict(cfg, why=why))
        rec.update(res)
        if rec["status"] == "ok":
            rec["gflops"] = flops / rec["median_s"] / 1e9
            peak = (common.get("card_peak_tflops") or {}).get(dtype)
            if args.device == "gpu" and peak:
                rec["frac_of_peak"] = rec["gflops"] / 1e3 / peak
        records.append(rec)
    for name in os.listdir(workdir):
        os.remove(os.path.join(workdir, name))
    return records


def _progress(i, total, records):
    rec = records[0]
    n = "" if rec["n_samples"] is None else f" n={rec['n_samples']}"
    parts = [f"[{i}/{total}] {rec['routine']} {rec['dtype']}{n} N={rec['n_sites']} "
             f"D={rec['bond_dim']}:"]
    for r in records:
        if r["status"] == "ok":
            diff = r.get("max_rel_diff")
            parts.append(f"{r['tool']} {_fmt_s(r['median_s'])} s"
                         + (f" (diff {diff:.1e})" if diff is not None else ""))
        else:
            parts.append(f"{r['tool']} {r['status']}")
    print("  ".join(parts), file=sys.stderr, flush=True)


def _missing_tools(args):
    """Tools that cannot run here, with the reason."""
    missing = {}
    tools = {t for ts in args.tools.values() for t in ts}
    for tool in tools:
        module = {"numpy-jacobian": "numpy", "numpy-structured": "numpy"}.get(tool, tool)
        if tool in NT_TOOLS:
            if not os.path.exists(args.nt_python):
                missing[tool] = (f"no neural-tangents venv at {args.nt_python} "
                                 "(bash bench/make_nt_env.sh, or --nt-python)")
        elif tool != "mpsntk" and importlib.util.find_spec(module) is None:
            missing[tool] = f"{module} is not installed"
    return missing


def _nt_versions(python):
    """neural-tangents and JAX versions of the worker's venv (None when it does not run)."""
    code = ("import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in "
            "('neural-tangents', 'jax', 'jaxlib', 'numpy')}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def configs(args):
    """The configurations of a run, smallest first within each routine and dtype.

    Returns
    -------
    list of dict
    """
    out = []
    for routine in args.routine:
        samples = [None] if routine in BORN else sorted(set(args.n_samples))
        for dtype, n_sites, bond_dim, n in itertools.product(
            args.dtype, sorted(set(args.n_sites)), sorted(set(args.bond_dim)), samples
        ):
            out.append({"routine": routine, "dtype": dtype, "n_sites": n_sites,
                        "bond_dim": bond_dim, "n_samples": n, "seed": args.seed})
    return out


def main(argv=None):
    """Command-line entry point.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 when ``--device gpu`` has no CUDA engine, 3 when a peer's
        result disagrees with mpsntk's.
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
    missing = _missing_tools(args)
    for tool, why in sorted(missing.items()):
        print(f"# {tool}: {why}", file=sys.stderr)
    versions = dict(machine["versions"])
    if any(t in NT_TOOLS and t not in missing for ts in args.tools.values() for t in ts):
        versions["nt_venv"] = _nt_versions(args.nt_python)
    common = {
        "device": args.device,
        "cpu": machine["cpu"],
        "isa": machine["isa"],
        "versions": versions,
        "date": date,
        "native_blas": args.native_blas,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "openblas_l2_size": os.environ.get("OPENBLAS_L2_SIZE"),
        "blas_env_default": blas_env_default,
        "timeout_s": args.timeout,
        "max_rss_gb": args.max_rss_gb,
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
    todo = configs(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp_out = args.out + ".tmp"
    workdir = tempfile.mkdtemp(prefix="bench_ntk_")
    records, failed, mismatch = [], {}, None
    try:
        with open(tmp_out, "w") as tmp:
            for i, cfg in enumerate(todo, 1):
                recs = _run_config(cfg, args.tools[cfg["routine"]], args, gemm_start,
                                   dict(common, load_avg=os.getloadavg()[0]), workdir,
                                   missing, failed)
                for rec in recs:
                    tmp.write(json.dumps(rec) + "\n")
                tmp.flush()
                _progress(i, len(todo), recs)
                records.extend(recs)
                mismatch = next((r for r in recs if r["status"] == "mismatch"), None)
                if mismatch is not None:
                    break
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    gemm_end = _measure_gemm(args, "end") if mismatch is None else {}

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
    if mismatch is not None:
        m = mismatch
        print(f"ABORTED: {m['tool']} disagrees with mpsntk on {m['routine']} ({m['dtype']}, "
              f"n_samples={m['n_samples']}, n_sites={m['n_sites']}, bond_dim={m['bond_dim']}): "
              f"max |peer - mpsntk| / max |mpsntk| = {m['max_rel_diff']:.3g} > tolerance "
              f"{m['tolerance']:g}. The records so far are in {args.out}.", file=sys.stderr)
        return 3
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
