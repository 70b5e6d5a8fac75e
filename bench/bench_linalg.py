"""Benchmark matrix-free kernel regression (``mpsntk.linalg``) against the dense solve.

The problem: kernel ridge regression with the empirical NTK of an MPS student (``n_sites`` 64,
``bond_dim`` 16, float64, NTK parametrisation, seed 0) on targets of a teacher MPS of the same
shape (seed 1) plus Gaussian noise:

* inputs are a smooth map of a uniform latent variable ``u ~ U[0, 1]^2``: ``x_j = 0.5 + 0.25
  sin(2 pi w_j . u + b_j)`` (fixed ``w_j ~ N(0, I)``, ``b_j ~ U[0, 2 pi)``), then
  ``features.trig``.  On i.i.d. uniform inputs the NTK of a 64-site chain is nearly diagonal
  (off-diagonal entries decay like ``0.81^64``, theory section 1) and nothing is learnable; here
  the kernel is smooth in ``u`` and the teacher's outputs are a learnable function of ``u``;
* targets ``y = f_teacher(x) / sd + 0.1 * N(0, 1)``, ``sd`` the teacher's standard deviation
  over 20000 reference samples (fixed for every size), so the clean targets have unit variance
  and the noise is 10 %;
* the ridge ``reg = 1e-6 * tr Theta``, i.e. ``(1 / n) sum (f - y)^2 + lambda_0 ||f||^2`` with a
  fixed ``lambda_0``: the conditioning of ``Theta + reg I`` and the number of eigenvalues above
  ``reg`` (the effective dimension, about 300--400 here) then do not grow with ``n``, so the
  preconditioner's rank and the iteration count stay fixed and the time per solve measures the
  cost per product.  (A fixed ``reg`` would instead let the effective dimension grow with
  ``n``.)  ``1e-6`` balances bias and variance at these sizes: the test error at ``n = 4000`` is
  0.086 against 0.18 at ``1e-5`` and 0.044 at ``1e-7``, whose effective dimension is larger.

Methods (each (method, size) runs in a fresh spawn child; the data are built first, then the
child's RSS high-water mark is reset, so ``peak_rss_mb`` is what the method itself needs):

``cg``
    ``linalg.ntk_operator``, the exact trace (the diagonal), ``nystrom_preconditioner`` of rank
    ``--rank`` (early stop once ``tr(Theta - Theta_hat) <= reg``), ``kernel_regression`` to
    ``--rtol`` (with the final residual recomputed), then ``RegressionResult.predict`` on the
    test set.  ``cg-jacobi`` and ``cg-none`` use the diagonal or no preconditioner
    (``--plain-maxiter`` iterations at most).
``dense``
    ``mn.ntk(student, phi)``, ``scipy.linalg.cho_factor``/``cho_solve`` in place (half the
    flops of ``numpy.linalg.solve``), ``mn.ntk(student, phi_test, phi) @ alpha``.

Each record: the times of each phase and in all, ``peak_rss_mb``, iterations, residuals, the
number of ``Theta``-vector products, the preconditioner's rank and condition bound, the test
and training RMSE against the clean targets, and (cg, where the dense method ran on the same
size) the relative difference of the test predictions from the dense ones.

Before a child starts, a memory model (``memory_model``) predicts its peak; sizes whose model
exceeds ``--max-rss-gb`` or 80 % of the available memory are skipped, and a child whose RSS passes
``--max-rss-gb`` is killed.

Examples
--------
The sweep of bench/README.md (sizes one at a time, the largest alone)::

    python bench/bench_linalg.py --methods dense --sizes 1000 2000 5000 10000 20000
    python bench/bench_linalg.py --methods cg --sizes 1000 2000 5000 10000 20000 50000 \\
        100000 200000
    python bench/bench_linalg.py --methods cg --sizes 1000000 --timeout 7200
    python bench/bench_linalg.py --methods cg cg-jacobi cg-none --sizes 10000 --ranks 128 256 \\
        512 1024
    python bench/bench_linalg.py --report bench/README.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing as mp
import os
import sys
import time

import _harness
from bench_ntk import BLAS_VARS, _stopped, _watch, machine_info

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(BENCH_DIR, "results", "linalg_cpu.jsonl")
N_SITES, BOND_DIM = 64, 16
NOISE, RIDGE, N_TEST, N_REF = 0.1, 1e-6, 2000, 20000
METHODS = ("cg", "cg-jacobi", "cg-none", "dense")
CHUNK = 50_000  # samples per teacher forward while building the data


# --------------------------------------------------------------------------- the problem
def _latent_map():
    import numpy as np

    r = np.random.default_rng(12345)
    return r.standard_normal((N_SITES, 2)) * 2 * np.pi, r.uniform(0, 2 * np.pi, N_SITES)


def features(n, seed):
    """Features (n, n_sites, 2) of the latent-map inputs and the latent points (n, 2)."""
    import numpy as np

    import mpsntk as mn

    w, b = _latent_map()
    u = np.random.default_rng(seed).uniform(size=(n, 2))
    phi = np.empty((n, N_SITES, 2))
    for s in range(0, n, CHUNK):
        phi[s:s + CHUNK] = mn.features.trig(0.5 + 0.25 * np.sin(u[s:s + CHUNK] @ w.T + b))
    return phi, u


def models():
    import mpsntk as mn

    return (mn.MPS.random(n_sites=N_SITES, bond_dim=BOND_DIM, seed=0),
            mn.MPS.random(n_sites=N_SITES, bond_dim=BOND_DIM, seed=1))


def _teacher(teacher, phi):
    import numpy as np

    return np.concatenate([teacher(phi[s:s + CHUNK]) for s in range(0, len(phi), CHUNK)])


def problem(n):
    """Student, training features and noisy targets, test features and clean test targets."""
    import numpy as np

    student, teacher = models()
    sd = float(np.std(_teacher(teacher, features(N_REF, 99)[0])))
    phi, _ = features(n, 1)
    y_clean = _teacher(teacher, phi) / sd
    y = y_clean + NOISE * np.random.default_rng(2).standard_normal(n)
    phi_test, _ = features(N_TEST, 3)
    return student, phi, y, y_clean, phi_test, _teacher(teacher, phi_test) / sd


def memory_model(method, n, rank):
    """Predicted peak bytes above the data: the method's working set.

    cg: the Nystrom factor (n * rank), one round of columns and its update (2 n * rank / 8),
    the engine's workspace for one block (256 MiB), a dozen n-vectors; dense: the kernel
    (n^2), the test cross kernel (n_test * n) and the engine's tiles.
    """
    item = 8
    if method == "dense":
        return item * (n * n + N_TEST * n) + 64 * 2**20
    r = rank if method == "cg" else 0
    return item * (n * r + 2 * n * math.ceil(r / 8) + 12 * n) + 256 * 2**20


# --------------------------------------------------------------------------- measurement
def _measure(method, n, opts):
    import numpy as np

    import mpsntk as mn
    from mpsntk import linalg

    if opts["threads"]:
        mn.set_num_threads(opts["threads"])
    student, phi, y, y_clean, phi_test, y_test = problem(n)
    out = {"data_mb": (phi.nbytes + phi_test.nbytes) / 2**20}
    base, how = _harness.reset_peak_rss()
    t_all = time.perf_counter()
    if method == "dense":
        import scipy.linalg

        t0 = time.perf_counter()
        K = mn.ntk(student, phi)
        out["kernel_s"] = time.perf_counter() - t0
        trace = float(np.trace(K))
        reg = RIDGE * trace
        K[np.diag_indices(n)] += reg
        t0 = time.perf_counter()
        alpha = scipy.linalg.cho_solve(scipy.linalg.cho_factor(K, overwrite_a=True,
                                                               check_finite=False),
                                       y, check_finite=False)
        out["solve_s"] = time.perf_counter() - t0
        del K
        t0 = time.perf_counter()
        pred = mn.ntk(student, phi_test, phi) @ alpha
        out["predict_s"] = time.perf_counter() - t0
    else:
        op = linalg.ntk_operator(student, phi)
        t0 = time.perf_counter()
        trace = op.trace()
        out["diagonal_s"] = time.perf_counter() - t0
        reg = RIDGE * trace
        pc = {"cg-jacobi": "jacobi", "cg-none": None}.get(method)
        if method == "cg":
            t0 = time.perf_counter()
            pc = linalg.nystrom_preconditioner(op, opts["rank"], tol=reg / trace, seed=0)
            out["precond_s"] = time.perf_counter() - t0
            out.update(rank=pc.rank, condition_bound=pc.condition_bound(reg),
                       precond_products=op.n_products)
        maxiter = opts["maxiter"] if method == "cg" else opts["plain_maxiter"]
        t0 = time.perf_counter()
        res = linalg.kernel_regression(op, y, reg, rtol=opts["rtol"], maxiter=maxiter,
                                       preconditioner=pc)
        out["solve_s"] = time.perf_counter() - t0
        alpha = res.alpha
        out.update(iterations=res.n_iter, converged=res.converged, residual=res.residual,
                   residual_history=[float(f"{r:.4g}") for r in res.residual_history],
                   solve_products=res.n_products, rtol=opts["rtol"])
        out["s_per_iteration"] = out["solve_s"] / (res.n_iter + 1)  # + the verifying product
        t0 = time.perf_counter()
        pred = res.predict(phi_test)
        out["predict_s"] = time.perf_counter() - t0
    out["total_s"] = time.perf_counter() - t_all
    out["peak_rss_mb"] = max(_harness.peak_rss(how) - base, 0.0)
    out["rss_method"] = how
    # training outputs Theta alpha = y - reg alpha, exact up to the solver's residual
    out["train_rmse"] = float(np.sqrt(np.mean((y - reg * alpha - y_clean) ** 2)))
    out["test_rmse"] = float(np.sqrt(np.mean((pred - y_test) ** 2)))
    out.update(reg=reg, trace=trace, n_threads=mn.get_num_threads(), status="ok",
               blas_env_child={k: os.environ.get(k) for k in BLAS_VARS})
    out["predictions"] = pred.tolist()
    return out


def _child(conn, method, n, opts):
    sys.path.insert(0, BENCH_DIR)
    try:
        res = _measure(method, n, opts)
    except BaseException as exc:  # every failure, MemoryError included, goes to the parent
        res = {"status": "error", "note": f"{type(exc).__name__}: {exc}"[:500]}
    try:
        conn.send(res)
    finally:
        conn.close()


def run_child(method, n, opts, timeout, max_rss_mb):
    """One measurement in a fresh spawn child, killed past ``timeout`` s or ``max_rss_mb``."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, method, n, opts), daemon=True)
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


def _available_gb():
    from mpsntk._validate import _available_memory

    avail = _available_memory()
    return None if avail is None else avail / 2**30


def _previous_dense(out, n):
    """Test predictions of the dense method on ``n`` samples from earlier records."""
    if not os.path.exists(out):
        return None
    found = None
    with open(out) as fh:
        for line in fh:
            rec = json.loads(line)
            if rec.get("method") == "dense" and rec.get("n_samples") == n and \
                    rec.get("status") == "ok" and rec.get("predictions"):
                found = rec["predictions"]
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["cg", "dense"])
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 2000, 5000, 10000])
    p.add_argument("--ranks", nargs="+", type=int, default=[512],
                   help="Nystrom ranks (method cg), one measurement each")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--maxiter", type=int, default=200)
    p.add_argument("--plain-maxiter", type=int, default=500,
                   help="iteration cap of cg-jacobi and cg-none")
    p.add_argument("--threads", type=int, default=0, help="engine threads (0: default)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--max-rss-gb", type=float, default=14.0)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--report", metavar="README",
                   help="write the figure and replace the linalg section of README, then exit")
    args = p.parse_args(argv)
    if args.report:
        import report_linalg

        return report_linalg.main(args.out, args.report)
    common = machine_info()
    avail = _available_gb()
    for n in args.sizes:
        for method in args.methods:
            for rank in (args.ranks if method == "cg" else [0]):
                opts = {"rank": rank, "rtol": args.rtol, "maxiter": args.maxiter,
                        "plain_maxiter": args.plain_maxiter, "threads": args.threads}
                need = memory_model(method, n, rank) / 2**30
                rec = {"method": method, "n_samples": n, "n_sites": N_SITES,
                       "bond_dim": BOND_DIM, "dtype": "float64", "ridge": RIDGE,
                       "noise": NOISE, "n_test": N_TEST, "rank_requested": rank or None,
                       "model_gb": need,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                           timespec="seconds"),
                       "load_avg_before": os.getloadavg()[0], **common}
                limit = min(args.max_rss_gb, 0.8 * avail if avail else math.inf)
                if need > limit:
                    rec.update(status="skipped",
                               note=f"memory model {need:.1f} GiB > {limit:.1f} GiB")
                else:
                    rec.update(run_child(method, n, opts, args.timeout, args.max_rss_gb * 1024))
                rec["load_avg_after"] = os.getloadavg()[0]
                dense = _previous_dense(args.out, n) if method != "dense" else None
                if dense is not None and rec.get("predictions"):
                    diff = max(abs(a - b) for a, b in zip(rec["predictions"], dense))
                    rec["pred_rel_diff_vs_dense"] = diff / max(abs(b) for b in dense)
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                keys = ("status", "total_s", "iterations", "peak_rss_mb", "test_rmse",
                        "pred_rel_diff_vs_dense", "note")
                print(method, n, rank or "", {k: rec.get(k) for k in keys}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
