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
    flops of ``numpy.linalg.solve``), ``mn.ntk(student, phi_test, phi) @ alpha``.  From 16384
    samples the factorisation runs on one OpenBLAS thread: OpenBLAS 0.3.30's threaded
    ``dpotrf`` segfaults there on this machine (``numpy.linalg.cholesky`` as well).

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
import functools
import json
import math
import os
import sys
import time

import _harness
from bench_ntk import BLAS_VARS, machine_info, spawn_child

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


@functools.cache
def _student():
    return problem(2)[0]


def memory_model(method, n, rank):
    """Predicted peak bytes above the data: the method's working set.

    cg: the Nystrom factor (n * rank), one round of columns and its update (2 n * rank / 8),
    the engine's environments (all samples' where the operator keeps them, at most a quarter
    of the free memory; else one block's, at most 256 MiB), a dozen n-vectors; dense: the
    kernel (n^2), the test cross kernel (n_test * n) and the engine's tiles.
    """
    from mpsntk._engine import engine_for
    from mpsntk.linalg import _BLOCK_BYTES, _environments_fit

    item = 8
    if method == "dense":
        return item * (n * n + N_TEST * n) + 64 * 2**20
    r = rank if method == "cg" else 0
    if _environments_fit(_student(), n):  # the operator keeps every block's environments
        engine = engine_for(_student()).prepare_bytes(_student(), n, held=True)
    else:
        engine = _BLOCK_BYTES
    return item * (n * r + 2 * n * math.ceil(r / 8) + 12 * n) + engine


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
    t_all, cpu_all = time.perf_counter(), time.process_time()
    if method == "dense":
        import scipy.linalg

        t0 = time.perf_counter()
        K = mn.ntk(student, phi)
        out["kernel_s"] = time.perf_counter() - t0
        trace = float(np.trace(K))
        reg = RIDGE * trace
        K[np.diag_indices(n)] += reg
        t0 = time.perf_counter()
        # K is symmetric: its transpose is the same matrix in Fortran order, which LAPACK
        # factors in place (a C-ordered K would be copied)
        factor = scipy.linalg.cho_factor(K.T, overwrite_a=True, check_finite=False)
        alpha = scipy.linalg.cho_solve(factor, y, check_finite=False)
        del factor
        out["solve_s"] = time.perf_counter() - t0
        del K
        t0 = time.perf_counter()
        pred = mn.ntk(student, phi_test, phi) @ alpha
        out["predict_s"] = time.perf_counter() - t0
    else:
        op = linalg.ntk_operator(student, phi)
        out["environments_kept"] = all(b.keep for b in op._x.blocks)
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
    # CPU seconds of every thread: on a shared machine, total_s / cpu_s shows the share it got
    out["cpu_s"] = time.process_time() - cpu_all
    out["peak_rss_mb"] = max(_harness.peak_rss(how) - base, 0.0)
    out["rss_method"] = how
    # training outputs Theta alpha = y - reg alpha, exact up to the solver's residual
    out["train_rmse"] = float(np.sqrt(np.mean((y - reg * alpha - y_clean) ** 2)))
    out["test_rmse"] = float(np.sqrt(np.mean((pred - y_test) ** 2)))
    out.update(reg=reg, trace=trace, n_threads=mn.get_num_threads(), status="ok",
               blas_env_child={k: os.environ.get(k)
                               for k in BLAS_VARS + ("OPENBLAS_NUM_THREADS",)})
    out["predictions"] = pred.tolist()
    return out


# OpenBLAS 0.3.30 (NumPy's and SciPy's wheels) segfaults in its threaded dpotrf from n ~ 16400
# on this machine (numpy.linalg.cholesky too; one thread, or LU, is fine): the dense method
# factors such sizes on one BLAS thread.
DENSE_ONE_THREAD = 16384


def _child(conn, method, n, opts):
    sys.path.insert(0, BENCH_DIR)
    if method == "dense" and n >= DENSE_ONE_THREAD:  # before NumPy loads OpenBLAS
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
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
    return spawn_child(_child, (method, n, opts), timeout, max_rss_mb)


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


# --------------------------------------------------------------------------- report
BEGIN, END = "<!-- linalg:begin -->", "<!-- linalg:end -->"
FIGURE = os.path.join(BENCH_DIR, "figures", "cpu_linalg_regression.png")


def load(path):
    """Records of the results file, the latest one per (method, n_samples, rank): the latest
    successful one where there is one (a later run stopped by its timeout does not hide it)."""
    latest = {}
    with open(path) as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                key = (rec["method"], rec["n_samples"], rec.get("rank_requested"))
                if rec.get("status") == "ok" or latest.get(key, {}).get("status") != "ok":
                    latest[key] = rec
    return list(latest.values())


def _series(records, method, key, rank=512, n_min=0):
    pts = sorted((r["n_samples"], r[key]) for r in records
                 if r["method"] == method and r.get("status") == "ok" and r.get(key) is not None
                 and (method != "cg" or r.get("rank_requested") == rank)
                 and r["n_samples"] >= n_min)
    return [p[0] for p in pts], [p[1] for p in pts]


def crossover(cg, dense):
    """Sample count where the cg and dense times cross (log-log interpolation between the
    common sizes), or None when they do not cross there."""
    common = sorted(set(cg) & set(dense))
    for a, b in zip(common, common[1:]):
        da = math.log(cg[a] / dense[a])
        db = math.log(cg[b] / dense[b])
        if da > 0 >= db:
            return math.exp(math.log(a) + (math.log(b) - math.log(a)) * da / (da - db))
    return None


def _fmt(x, digits=3):
    if x is None:
        return "—"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def _mem(mb):
    return "—" if mb is None else (f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB")


def _diff_vs_dense(rec, dense_pred):
    """max |cg - dense| / max |dense| over the test predictions, where both ran on the size."""
    if rec["method"] == "dense" or not rec.get("predictions"):
        return None
    ref = dense_pred.get(rec["n_samples"])
    if ref is None:
        return rec.get("pred_rel_diff_vs_dense")
    return max(abs(a - b) for a, b in zip(rec["predictions"], ref)) / max(abs(b) for b in ref)


def render(records):
    """The markdown section (tables and fits) of the records."""
    from report import fit_exponent

    ok = [r for r in records if r.get("status") == "ok"]
    main = sorted((r for r in records if r["method"] == "dense"
                   or (r["method"] == "cg" and r.get("rank_requested") == 512)),
                  key=lambda r: (r["n_samples"], r["method"] != "dense"))
    first = ok[0] if ok else {}
    loads = [r.get(k) for r in ok for k in ("load_avg_before", "load_avg_after")
             if r.get(k) is not None]
    out = [f"Machine: {first.get('cpu', '?')}, mpsntk's `{first.get('isa', '?')}` kernels, "
           f"{first.get('n_threads', '?')} engine threads; load average "
           f"{min(loads, default=0):.1f}–{max(loads, default=0):.1f} during the runs "
           f"(1-minute load averages before and after each run), dates "
           f"{min(r['date'] for r in ok)[:10]} to "
           f"{max(r['date'] for r in ok)[:10]}.", "",
           "| n_samples | method | total (s) | CPU (s) | setup (s) | iterations | solve (s) "
           "| s / iteration | predict (s) | peak extra RSS | test RMSE | train RMSE "
           "| max Δ test pred. vs dense |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    dense_pred = {r["n_samples"]: r["predictions"] for r in ok
                  if r["method"] == "dense" and r.get("predictions")}
    for r in main:
        if r.get("status") != "ok":
            out.append(f"| {r['n_samples']} | {r['method']} | {r.get('status')}: "
                       f"{r.get('note', '')} | | | | | | | | | | |")
            continue
        setup = r.get("kernel_s") if r["method"] == "dense" else \
            r.get("diagonal_s", 0) + r.get("precond_s", 0)
        its = r.get("iterations")
        its = "—" if its is None else f"{its} (rank {r.get('rank')})"
        out.append(
            f"| {r['n_samples']} | {r['method']} | {_fmt(r['total_s'])} | {_fmt(r.get('cpu_s'))} "
            f"| {_fmt(setup)} | {its} "
            f"| {_fmt(r['solve_s'])} | {_fmt(r.get('s_per_iteration'))} | {_fmt(r['predict_s'])} "
            f"| {_mem(r['peak_rss_mb'])} | {r['test_rmse']:.4f} | {r['train_rmse']:.4f} "
            f"| {_fmt(_diff_vs_dense(r, dense_pred), 2)} |")
    out.append("")
    fits = []
    for label, method, key, n_min in (
            ("cg, time per iteration (one product `Θ v`)", "cg", "s_per_iteration", 10_000),
            ("cg, total time", "cg", "total_s", 10_000),
            ("cg, CPU seconds in all (less sensitive to the load)", "cg", "cpu_s", 10_000),
            ("cg, peak extra RSS", "cg", "peak_rss_mb", 10_000),
            ("dense, total time", "dense", "total_s", 5000),
            ("dense, peak extra RSS", "dense", "peak_rss_mb", 5000)):
        xs, ys = _series(ok, method, key, n_min=n_min)
        e = fit_exponent(xs, ys)
        if e is not None:
            fits.append(f"{label}: **{e:.2f}** (n_samples {xs[0]}–{xs[-1]})")
    if fits:
        out += ["Growth exponents (least-squares slopes in log-log): " + "; ".join(fits) + ".",
                ""]
    cg = dict(zip(*_series(ok, "cg", "total_s")))
    dense = dict(zip(*_series(ok, "dense", "total_s")))
    x = crossover(cg, dense)
    if x is not None:
        out += [f"Crossover: the matrix-free solve overtakes the dense one at about "
                f"**{x:,.0f} samples** (interpolated between the measured sizes).", ""]
    sweep = sorted((r for r in ok if r["method"] != "dense" and (
        r["method"] != "cg" or r.get("rank_requested") != 512 or
        any(q["method"] != "cg" and q["n_samples"] == r["n_samples"] for q in ok))),
        key=lambda r: (r["n_samples"], r["method"], r.get("rank_requested") or 0))
    sweep_ns = {r["n_samples"] for r in sweep if r["method"] != "cg"
                or r.get("rank_requested") != 512}
    sweep = [r for r in sweep if r["n_samples"] in sweep_ns]
    if sweep:
        out += ["Preconditioners at one size (`--ranks`, `cg-jacobi`, `cg-none`):", "",
                "| n_samples | preconditioner | rank | condition bound | setup (s) | iterations "
                "| solve (s) | total (s) | converged | final relative residual |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in sweep:
            name = {"cg": "Nyström (RPCholesky)", "cg-jacobi": "Jacobi", "cg-none": "none"}
            setup = r.get("diagonal_s", 0) + r.get("precond_s", 0)
            rank = r.get("rank", "—")
            if r.get("rank") not in (None, r.get("rank_requested")):  # stopped early (tol)
                rank = f"{rank} (of {r['rank_requested']})"
            out.append(
                f"| {r['n_samples']} | {name[r['method']]} | {rank} "
                f"| {_fmt(r.get('condition_bound'))} | {_fmt(setup)} | {r['iterations']} "
                f"| {_fmt(r['solve_s'])} | {_fmt(r['total_s'])} | {r['converged']} "
                f"| {_fmt(r.get('residual'), 2)} |")
        out.append("")
    return "\n".join(out)


def figure(records, path):
    """Time and peak memory against n_samples, cg and dense (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.get("status") == "ok"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12.4, 4.6))
    for method, key, label, style in (
            ("cg", "total_s", "cg (Nyström rank 512): total", "o-"),
            ("cg", "s_per_iteration", "cg: per iteration", "s--"),
            ("dense", "total_s", "dense: kernel + Cholesky + predict", "^-")):
        xs, ys = _series(ok, method, key)
        if xs:
            ax_t.plot(xs, ys, style, ms=4, label=label,
                      color="black" if method == "cg" else "tab:red")
    for method, label in (("cg", "cg"), ("dense", "dense")):
        xs, ys = _series(ok, method, "peak_rss_mb")
        if xs:
            color = "black" if method == "cg" else "tab:red"
            ax_m.plot(xs, [y / 1024 for y in ys], "o-", ms=4, label=label, color=color)
            if method == "dense":  # the model past the measured sizes: where n^2 meets 24 GB
                xs = sorted(set(xs) | {30_000, 40_000, 50_000, 60_000})
            model = [memory_model(method, n, 512) / 2**30 for n in xs]
            ax_m.plot(xs, model, ":", color=color, label=f"{label}: memory model")
    ax_m.axhline(24, color="gray", lw=0.8)
    ax_m.text(1e3, 26, "24 GB (this machine)", color="gray", fontsize=8)
    for ax, title, ylabel in ((ax_t, "Kernel ridge regression: time", "seconds"),
                              (ax_m, "peak extra resident memory", "GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n_samples (64 sites, D = 16, float64)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(results, readme):
    """Draw the figure and replace the part of ``readme`` between the linalg markers."""
    records = load(results)
    figure(records, FIGURE)
    with open(readme) as fh:
        text = fh.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(readme, "w") as fh:
        fh.write(head + BEGIN + "\n" + render(records) + "\n" + END + tail)
    print(render(records))
    return 0


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
        return write_report(args.out, args.report)
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
