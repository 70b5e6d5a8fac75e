"""Benchmark the exact Taylor expansion and the per-step diagnostics against one NTK.

For each configuration (``n_sites``, ``bond_dim``, ``n_samples`` probe samples, dtype) one
process builds an NTK-parametrised open MPS, a probe set (``features.trig`` of uniform inputs),
a step ``Delta`` (Gaussian, ``--step-scale`` times the cores' scale) and a training set, then
times, on the same model and probe set:

ntk
    ``mn.ntk(mps, phi)``, the reference: the symmetric ``Theta(X, X)``.
taylor_all
    ``diagnostics.taylor_terms(mps, phi, delta)``: every term ``P_0 .. P_N`` of the expansion.
taylor_3
    ``taylor_terms(..., max_order=3, remainder=True)``: ``P_0 .. P_3`` and the exact sum of
    the orders above (what the nonlinear fraction evaluates).
nonlinear_fraction
    ``diagnostics.nonlinear_fraction(mps, mps_t, phi)`` with ``mps_t`` the stepped model.
weak_correlations
    ``diagnostics.weak_correlations(mps, phi_train, y_train, phi, orders=(2, 3))``: a forward
    and a vjp on ``--n-train`` samples, then the expansion to order 3 on the probe set.

Every (configuration, tool) measurement runs in a fresh ``multiprocessing`` *spawn* child, which
builds the problem, resets its RSS high-water mark (``/proc/self/clear_refs``), warms the call
up (``--warmup``), then repeats it until ``--min-time`` seconds have passed (at least
``--repeats`` times, at most 100).  The median is reported, with the peak resident memory above
the child's baseline, and the ratio to the NTK's median measured in the same run.  Before
timing, the expansion is checked: ``max|sum_k P_k - f(W + Delta)| / max|f(W + Delta)|`` is
recorded as ``check_rel_err``.

One JSON line per (configuration, tool) goes to ``--out``; a markdown table is printed at the
end (``--summary FILE`` prints it for a results file).

Examples
--------
The configurations of bench/README.md::

    python bench/bench_taylor.py --out bench/results/taylor_cpu.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import _harness
from bench_ntk import machine_info, spawn_child

TOOLS = ("ntk", "taylor_all", "taylor_3", "nonlinear_fraction", "weak_correlations")
MAX_CALLS = 100


def _problem(n_sites, bond_dim, n_samples, n_train, dtype, step_scale, seed=0):
    """Model, probe features, step, stepped model and training set of one configuration."""
    import numpy as np

    import mpsntk as mn

    rng = np.random.default_rng(seed)
    mps = mn.MPS.random(n_sites, bond_dim, seed=seed, dtype=dtype)
    phi = mn.features.trig(rng.uniform(size=(n_samples, n_sites))).astype(dtype)
    step = [(step_scale * rng.standard_normal(c.shape)).astype(dtype) for c in mps.cores]
    moved = mps.with_cores([c + t for c, t in zip(mps.cores, step)])
    x_train = rng.uniform(size=(n_train, n_sites))
    phi_train = mn.features.trig(x_train).astype(dtype)
    y_train = np.sin(3 * x_train[:, 0]).astype(dtype)
    return mps, phi, step, moved, phi_train, y_train


def _calls(mps, phi, step, moved, phi_train, y_train):
    import mpsntk as mn
    from mpsntk import diagnostics as dg

    return {
        "ntk": lambda: mn.ntk(mps, phi),
        "taylor_all": lambda: dg.taylor_terms(mps, phi, step),
        "taylor_3": lambda: dg.taylor_terms(mps, phi, step, max_order=3, remainder=True),
        "nonlinear_fraction": lambda: dg.nonlinear_fraction(mps, moved, phi),
        "weak_correlations": lambda: dg.weak_correlations(mps, phi_train, y_train, phi,
                                                          orders=(2, 3)),
    }


def _time(fn, warmup, repeats, min_time):
    """Median of timed calls after ``warmup`` untimed ones, and the peak RSS (MiB) above the
    baseline before the first call."""
    base, method = _harness.reset_peak_rss()
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < MAX_CALLS and (
        len(times) < repeats or time.perf_counter() - start < min_time
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak = _harness.peak_rss(method)
    return statistics.median(times), times, None if base is None else max(peak - base, 0.0)


def _measure(tool, cfg, opts):
    """One measurement (spawn-child side)."""
    import mpsntk as mn

    if opts["threads"]:
        mn.set_num_threads(opts["threads"])
    problem = _problem(cfg["n_sites"], cfg["bond_dim"], cfg["n_samples"], opts["n_train"],
                       cfg["dtype"], opts["step_scale"])
    median, times, rss = _time(_calls(*problem)[tool], opts["warmup"], opts["repeats"],
                               opts["min_time"])
    return {"status": "ok", "median_s": median, "times": times, "peak_rss_mb": rss,
            "n_threads": mn.get_num_threads()}


def _child(conn, tool, cfg, opts):
    try:
        conn.send(_measure(tool, cfg, opts))
    except BaseException as exc:  # report, whatever happened
        conn.send({"status": f"error: {exc!r}"})
    conn.close()


def run_child(tool, cfg, opts, timeout):
    """Run one measurement in a fresh spawn child; ``status: timeout`` past ``timeout`` s."""
    return spawn_child(_child, (tool, cfg, opts), timeout)


def run_config(n_sites, bond_dim, n_samples, dtype, args, common):
    import numpy as np

    from mpsntk import diagnostics as dg

    cfg = dict(n_sites=n_sites, bond_dim=bond_dim, n_samples=n_samples, dtype=dtype)
    # the expansion is exact: checked here, before any timing
    mps, phi, step, moved, _, _ = _problem(n_sites, bond_dim, n_samples, args.n_train, dtype,
                                           args.step_scale)
    total = dg.taylor_terms(mps, phi, step).astype(np.float64).sum(0)
    want = moved(phi).astype(np.float64)
    check = float(np.max(np.abs(total - want)) / np.max(np.abs(want)))
    nu = dg.nonlinear_fraction(mps, moved, phi).nu
    del mps, phi, step, moved
    opts = {k: getattr(args, k) for k in ("threads", "n_train", "step_scale", "warmup",
                                          "repeats", "min_time")}
    records = []
    for tool in args.tools:
        res = run_child(tool, cfg, opts, args.timeout)
        records.append(dict(common, tool=tool, **cfg, n_train=args.n_train,
                            step_scale=args.step_scale, check_rel_err=check,
                            nonlinear_fraction=nu, load_avg=os.getloadavg()[0], **res))
        shown = f"{res['median_s']:.4f} s" if res["status"] == "ok" else res["status"]
        print(f"  {tool:>20s}: {shown}", file=sys.stderr, flush=True)
    ntk = next((r["median_s"] for r in records if r["tool"] == "ntk" and r["status"] == "ok"),
               None)
    for r in records:
        r["ratio_to_ntk"] = None if ntk is None or r["status"] != "ok" else r["median_s"] / ntk
    return records


def summarize(records):
    """Markdown table: one row per configuration (and run), one column per tool, time and ratio
    to the NTK of the same run."""
    groups = {}
    for r in records:
        key = (r["date"], r["dtype"], r["n_samples"], r["n_sites"], r["bond_dim"])
        groups.setdefault(key, {})[r["tool"]] = r
    tools = [t for t in TOOLS if any(t in g for g in groups.values())]
    head = "| dtype, n_samples, n_sites, D | " + " | ".join(tools) + " | check |"
    lines = [head, "|---|" + "---:|" * (len(tools) + 1)]
    for key in sorted(groups):
        g = groups[key]
        cells = []
        for t in tools:
            if t not in g or g[t]["status"] != "ok":
                cells.append(g[t]["status"] if t in g else "")
                continue
            ratio = g[t].get("ratio_to_ntk")
            cells.append(f"{g[t]['median_s']:.3f} s" + ("" if t == "ntk" or ratio is None
                                                         else f" ({ratio:.2f}×)"))
        check = next(iter(g.values()))["check_rel_err"]
        lines.append(f"| {key[1]}, {key[2]}, {key[3]}, {key[4]} | " + " | ".join(cells)
                     + f" | {check:.1e} |")
    return "\n".join(lines)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-samples", type=int, nargs="+", default=[1000])
    p.add_argument("--n-sites", type=int, nargs="+", default=[64])
    p.add_argument("--bond-dim", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--dtype", nargs="+", choices=("float64", "float32"), default=["float64"])
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--n-train", type=int, default=200,
                   help="training samples of weak_correlations (default 200)")
    p.add_argument("--step-scale", type=float, default=0.01,
                   help="standard deviation of the step entries (the cores are N(0, 1))")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="mpsntk OpenMP threads")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement child")
    p.add_argument("--out", default=None, help="append JSON lines here")
    p.add_argument("--summary", default=None, help="print the table of a results file and exit")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    if args.summary:
        with open(args.summary) as fh:
            print(summarize([json.loads(line) for line in fh if line.strip()]))
        return 0
    import mpsntk as mn

    if args.threads:
        mn.set_num_threads(args.threads)
    info = machine_info()
    common = dict(device="cpu", cpu=info["cpu"], isa=info["isa"], versions=info["versions"],
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  load_avg_start=os.getloadavg()[0])
    records = []
    for dtype in args.dtype:
        for n_samples in args.n_samples:
            for n_sites in args.n_sites:
                for bond_dim in args.bond_dim:
                    print(f"{dtype} n_samples={n_samples} n_sites={n_sites} D={bond_dim}",
                          file=sys.stderr, flush=True)
                    recs = run_config(n_sites, bond_dim, n_samples, dtype, args, common)
                    records += recs
                    if args.out:
                        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                        with open(args.out, "a") as fh:
                            for r in recs:
                                fh.write(json.dumps(r) + "\n")
    print(summarize(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
