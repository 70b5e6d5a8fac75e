"""Tables and figures from the JSON lines of ``bench_ntk.py``.

``python bench/report.py`` reads ``bench/results/*_cpu.jsonl`` and ``*_gpu.jsonl`` (or the
files given), writes the figures to ``bench/figures/`` (PNG, log-log: time and peak memory
against ``n_samples``, time against ``bond_dim`` and ``n_sites``, one line per implementation)
and prints the markdown report: the machine and the GEMM rate measured in the same runs, the
agreement of every peer with mpsntk, per routine the times, the peak memory, the fitted growth
exponents of every implementation in ``n_samples``, ``n_sites`` and ``bond_dim``, and the largest
``n_samples`` each implementation can hold in the machine's memory (from a memory model fitted
to the measured peaks, stated as an extrapolation beyond the largest measured size).

``--readme bench/README.md`` replaces the part of that file between the markers
``<!-- report:begin -->`` and ``<!-- report:end -->`` with the report.  The figures need
matplotlib (the ``bench`` requirements); ``--no-figures`` writes the tables alone.

Sweeps are found in the records themselves: records of one routine and dtype that differ in
one size only form a line along that size (see :func:`lines`); for each axis the longest line is
used.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
AXES = ("n_samples", "n_sites", "bond_dim")
AXIS_SYMBOL = {"n_samples": "n", "n_sites": "N", "bond_dim": "D"}
ROUTINES = ("ntk", "ntk_vp", "vjp", "log_partition", "log_partition_grad")
TITLES = {
    "ntk": "Empirical NTK `Θ(X, X)`",
    "ntk_vp": "NTK-vector product `Θ v`",
    "vjp": "One training step's gradient (forward + `Jᵀ(f − y)`)",
    "log_partition": "Born machine `log Z`",
    "log_partition_grad": "Born machine `log Z` and its gradient",
}
TOOL_ORDER = ("mpsntk", "numpy-structured", "cupy", "numpy-jacobian", "torch", "jax",
              "nt-structured-derivatives", "nt-jacobian-contraction", "nt-auto",
              "nt-ntk-vector-products", "nt-ntk-vp")
COLORS = {
    "mpsntk": "black", "numpy-structured": "tab:blue", "cupy": "tab:blue",
    "numpy-jacobian": "tab:cyan", "torch": "tab:red", "jax": "tab:orange",
    "nt-structured-derivatives": "tab:green", "nt-jacobian-contraction": "tab:olive",
    "nt-auto": "tab:purple", "nt-ntk-vector-products": "tab:brown", "nt-ntk-vp": "tab:green",
}
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"


def load(paths):
    """Records of the JSON-lines files ``paths`` (blank lines skipped).

    Parameters
    ----------
    paths : list of str

    Returns
    -------
    list of dict
    """
    records = []
    for path in paths:
        with open(path) as fh:
            records.extend(json.loads(line) for line in fh if line.strip())
    for rec in records:
        rec.setdefault("routine", "ntk")
    return records


def _tools(records):
    names = {r["tool"] for r in records}
    return [t for t in TOOL_ORDER if t in names] + sorted(names - set(TOOL_ORDER))


def _mem_key(device):
    return "gpu_peak_mb" if device == "gpu" else "peak_rss_mb"


def lines(records, axis):
    """The sweep of ``records`` along ``axis``.

    Records that share the other two sizes form a line, across runs (a run of mpsntk alone may
    extend a sweep of every tool to larger sizes); where several runs measured the same tool at
    the same point, the record of the run that measured more tools there is kept (the latest on
    a tie), so that the tools compared at a point come from one run where possible.

    Parameters
    ----------
    records : list of dict
        One device, routine and dtype.
    axis : str
        One of ``n_samples``, ``n_sites``, ``bond_dim``.

    Returns
    -------
    dict or None
        The line with the most distinct values of ``axis`` (the most records on a tie):
        ``{"axis": axis, "fixed": {other axis: value}, "values": sorted list,
        "records": list}``; None when no line has two values.
    """
    siblings = {}
    for rec in records:
        key = (rec.get("date", ""),) + tuple(rec.get(a) for a in AXES)
        siblings[key] = siblings.get(key, 0) + 1
    groups = {}
    for rec in records:
        if rec.get(axis) is None:
            continue
        others = tuple((a, rec.get(a)) for a in AXES if a != axis)
        rank = (siblings[(rec.get("date", ""),) + tuple(rec.get(a) for a in AXES)],
                rec.get("date", ""))
        point = groups.setdefault(others, {})
        slot = (rec["tool"], rec[axis])
        if slot not in point or rank >= point[slot][0]:
            point[slot] = (rank, rec)
    best = None
    for others, point in groups.items():
        recs = [rec for _, rec in point.values()]
        values = sorted({r[axis] for r in recs})
        if len(values) < 2:
            continue
        key = (len(values), len(recs))
        if best is None or key > best[0]:
            best = (key, {"axis": axis, "fixed": dict(others), "values": values,
                          "records": recs})
    return None if best is None else best[1]


def fit_exponent(xs, ys):
    """Least-squares slope of ``log y`` against ``log x`` (None with fewer than 2 points).

    Parameters
    ----------
    xs, ys : sequence of float
        Positive values.

    Returns
    -------
    float or None
    """
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _points(line, tool, key="median_s"):
    pts = sorted((r[line["axis"]], r[key]) for r in line["records"]
                 if r["tool"] == tool and r["status"] == "ok" and r.get(key) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def memory_model(ns, mem_mb, c_min=0.0):
    """Fit ``m(n) = a + b n + c n^2`` (MiB) with ``a, b >= 0`` and ``c >= c_min`` to measured
    peaks.

    Relative least squares (each point weighted by ``1 / m``) over every subset of the three
    terms, keeping the best fit; points below 1 MiB are noise and left out.  ``c_min`` is a
    floor the caller knows, e.g. the ``n x n`` result of the NTK, which small sizes hide.

    Parameters
    ----------
    ns, mem_mb : sequence of float
    c_min : float
        Least ``c`` (MiB per ``n^2``).

    Returns
    -------
    tuple of float or None
        ``(a, b, c)``, or None with fewer than 2 usable points.
    """
    import numpy as np

    pts = [(float(n), float(m)) for n, m in zip(ns, mem_mb) if m is not None and m >= 1.0]
    if len(pts) < 2:
        return None
    n = np.array([p[0] for p in pts])
    m = np.array([p[1] for p in pts])
    basis = np.stack([np.ones_like(n), n, n * n], axis=1) / m[:, None]
    target = 1.0 - c_min * n * n / m  # what the free part of the model must explain
    best, best_err = None, math.inf
    for k in (0, 1, 2, 3):
        for cols in itertools.combinations(range(3), k):
            if len(pts) < k:
                continue
            coef = np.zeros(0)
            if k:
                coef, *_ = np.linalg.lstsq(basis[:, cols], target, rcond=None)
            if np.any(coef < 0):
                continue
            err = float(np.sum((basis[:, cols] @ coef - target) ** 2)) if k else \
                float(np.sum(target**2))
            if err < best_err - 1e-12:
                full = np.zeros(3)
                full[list(cols)] = coef
                full[2] += c_min
                best, best_err = tuple(float(c) for c in full), err
    return best


def max_n(model, budget_mb):
    """Largest ``n`` with ``model(n) <= budget_mb`` (None when the model does not grow).

    Parameters
    ----------
    model : tuple of float
        ``(a, b, c)`` from :func:`memory_model`.
    budget_mb : float

    Returns
    -------
    float or None
    """
    a, b, c = model
    if a >= budget_mb:
        return 0.0
    if c > 0:
        return (-b + math.sqrt(b * b + 4 * c * (budget_mb - a))) / (2 * c)
    if b > 0:
        return (budget_mb - a) / b
    return None


# --------------------------------------------------------------------------- formatting
def _fmt_s(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _fmt_mb(v):
    if v is None:
        return "—"
    return f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f}"


def _fmt_n(v):
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.1f} M"
    return f"{v:,.0f}"


def _cell(rec, key, fmt, alt_key=None):
    if rec is None:
        return "—"
    if rec["status"] == "ok":
        if alt_key and rec.get(alt_key) is not None:
            return f"{fmt(rec.get(key))} ({fmt(rec[alt_key])})"
        return fmt(rec.get(key))
    if rec["status"] == "skipped":
        note = rec.get("note") or ""
        return "skip (J > limit)" if "would need" in note else "skip"
    return rec["status"]


def _table(line, tools, key, fmt, alt_key=None):
    axis = line["axis"]
    head = f"| {axis} | " + " | ".join(tools) + " |"
    rows = [head, "|---:|" + "---:|" * len(tools)]
    by = {(r[axis], r["tool"]): r for r in line["records"]}
    for v in line["values"]:
        rows.append(f"| {v} | " + " | ".join(_cell(by.get((v, t)), key, fmt, alt_key)
                                             for t in tools) + " |")
    return "\n".join(rows)


def _fixed(line):
    parts = [f"{a} = {v}" for a, v in line["fixed"].items() if v is not None]
    return ", ".join(parts)


# --------------------------------------------------------------------------- figures
def _figure(path, panels, title):
    """One PNG of log-log panels: ``panels`` is a list of (line, key, ylabel, hline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (line, key, ylabel, hline) in zip(axes[0], panels):
        for tool in _tools(line["records"]):
            xs, ys = _points(line, tool, key)
            if not xs:
                continue
            ax.plot(xs, ys, marker="o", ms=4, label=tool, color=COLORS.get(tool),
                    lw=2.4 if tool == "mpsntk" else 1.3)
        if hline is not None:
            ax.axhline(hline[0], color="grey", ls="--", lw=1)
            ax.text(0.01, hline[0], hline[1], va="bottom", fontsize=8, color="grey",
                    transform=ax.get_yaxis_transform())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(line["values"], [str(v) for v in line["values"]])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel(line["axis"])
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- the report
def _machine(records, device):
    first = records[0]
    runs = {}
    for r in records:
        runs.setdefault(r.get("date"), r)
    versions = first.get("versions") or {}
    nt = next((r.get("nt_versions") for r in records if r.get("nt_versions")), None) \
        or next((r["versions"].get("nt_venv") for r in records
                 if (r.get("versions") or {}).get("nt_venv")), None)
    out = [f"* **CPU**: {first.get('cpu')}; mpsntk instruction set `{first.get('isa')}`, "
           f"{first.get('n_threads') or '?'} threads per tool"]
    if device == "gpu":
        out.append(f"* **GPU**: {first.get('gpu')}; spec-sheet peak "
                   f"{first.get('card_peak_tflops')} TFLOP/s; float64 products "
                   f"`{first.get('float64_path')}`")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k != "nt_venv")
    out.append(f"* **Versions**: {vers}")
    if nt:
        out.append("* **neural-tangents venv**: " + ", ".join(f"{k} {v}" for k, v in nt.items()
                                                              if v))
    rates = []
    for date, r in sorted(runs.items()):
        g = {d: max([x.get("gemm_gflops") or 0 for x in records
                     if x.get("date") == date and x["dtype"] == d] or [0])
             for d in ("float64", "float32")}
        text = ", ".join(f"{d} {v:.1f}" for d, v in g.items() if v)
        load = r.get("load_avg_start")
        rates.append(f"{date} ({r['routine']}{'' if load is None else f', load {load:.1f}'}): "
                     f"{text or 'not measured'}")
    out.append("* **NumPy GEMM (2048², GFLOP/s, best of the start and end of each run)**: "
               + "; ".join(rates))
    return "\n".join(out)


def _agreement(records):
    rows = ["| routine | dtype | peer | configurations compared | max rel. difference "
            "| tolerance |", "|---|---|---|---:|---:|---:|"]
    groups = {}
    for r in records:
        if r["tool"] != "mpsntk" and r.get("max_rel_diff") is not None:
            groups.setdefault((r["routine"], r["dtype"], r["tool"]), []).append(r)
    for (routine, dtype, tool), recs in sorted(
        groups.items(), key=lambda kv: (ROUTINES.index(kv[0][0]), kv[0][1], kv[0][2])
    ):
        worst = max(r["max_rel_diff"] for r in recs)
        rows.append(f"| {routine} | {dtype} | {tool} | {len(recs)} | {worst:.1e} | "
                    f"{recs[0].get('tolerance', '—')} |")
    return "\n".join(rows)


def _exponents(by_axis, tools, key):
    axes = [a for a in AXES if by_axis.get(a)]
    head = "| implementation | " + " | ".join(
        f"{AXIS_SYMBOL[a]} ({_fixed(by_axis[a])}; {by_axis[a]['values'][0]}–"
        f"{by_axis[a]['values'][-1]})" for a in axes) + " |"
    rows = [head, "|---|" + "---:|" * len(axes)]
    for tool in tools:
        cells = []
        for a in axes:
            xs, ys = _points(by_axis[a], tool, key)
            slope = fit_exponent(xs, ys)
            top = fit_exponent(xs[-3:], ys[-3:]) if len(xs) > 3 else None
            if slope is None:
                cells.append("—")
            else:
                cells.append(f"{slope:.2f}" + (f" ({top:.2f})" if top is not None else "")
                             + ("" if len(xs) == len(by_axis[a]["values"])
                                else f" [{len(xs)} pts]"))
        rows.append(f"| {tool} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _capacity(line, tools, budget_mb, device):
    key = _mem_key(device)
    rec0 = line["records"][0]
    # the NTK's own n x n result is a floor of every tool's memory
    c_min = (8 if rec0["dtype"] == "float64" else 4) / 2**20 if rec0["routine"] == "ntk" else 0.0
    rows = ["| implementation | memory model (MiB): a + b·n + c·n² | largest n_samples | |",
            "|---|---|---:|---|"]
    for tool in tools:
        ns, mem = _points(line, tool, key)
        model = memory_model(ns, mem, c_min)
        if model is None:
            rows.append(f"| {tool} | too few measured peaks | — | |")
            continue
        a, b, c = model
        n_cap = max_n(model, budget_mb)
        desc = f"{a:.3g} + {b:.3g}·n + {c:.3g}·n²"
        if n_cap is None:
            rows.append(f"| {tool} | {desc} | not bounded by memory | |")
            continue
        largest = max(ns)
        how = (f"extrapolated ({n_cap / largest:.3g}× the largest measured n = {largest})"
               if n_cap > largest else f"measured range (up to n = {largest})")
        rows.append(f"| {tool} | {desc} | {_fmt_n(n_cap)} | {how} |")
    return "\n".join(rows)


def report(records, fig_dir, figures=True, memory_gb=24.0, gpu_memory_gb=80.0,
           fig_prefix="figures", stat="median"):
    """The markdown report of ``records`` (figures written to ``fig_dir``).

    Parameters
    ----------
    records : list of dict
        Records of ``bench_ntk.py`` (any routines, CPU and GPU).
    fig_dir : str
        Folder for the PNG files (created).
    figures : bool
        Draw the figures (needs matplotlib).
    memory_gb, gpu_memory_gb : float
        Memory (1e9 bytes) against which the largest ``n_samples`` is computed: the host's for
        CPU runs, the card's for GPU runs.
    fig_prefix : str
        Path of ``fig_dir`` as the markdown links should spell it.
    stat : {"min", "median", "cpu"}
        Which time of the timed calls the tables, figures and fits use: the fastest call's
        wall-clock time, the median, or the median process CPU time (all threads).

    Returns
    -------
    str
    """
    tkey = f"{stat}_s"
    for rec in records:  # records without min_s / cpu_s (older runs): their median
        if rec.get("status") == "ok" and rec.get(tkey) is None and stat != "cpu":
            rec[tkey] = rec.get("median_s")
    stat_text = {"min": "wall clock, fastest of the timed calls",
                 "median": "wall clock, median of the timed calls",
                 "cpu": "process CPU time of all threads, median of the timed calls"}[stat]
    out = []
    for device in ("cpu", "gpu"):
        recs_d = [r for r in records if r.get("device", "cpu") == device]
        if not recs_d:
            continue
        budget_gb = gpu_memory_gb if device == "gpu" else memory_gb
        budget_mb = budget_gb * 1e9 / 2**20
        mem_label = "GPU memory (MiB)" if device == "gpu" else "peak extra RSS (MiB)"
        out.append(f"### {device.upper()}: machine and runs\n")
        out.append(_machine(recs_d, device) + "\n")
        out.append("Every peer's first result was compared with mpsntk's on every configuration "
                   "where both ran, before any timed call (max over the result's components of "
                   "`max|peer − mpsntk| / max|mpsntk|`); a larger difference stops the run:\n")
        out.append(_agreement(recs_d) + "\n")
        for routine in ROUTINES:
            for dtype in ("float64", "float32"):
                recs = [r for r in recs_d if r["routine"] == routine and r["dtype"] == dtype]
                if not recs:
                    continue
                tools = _tools(recs)
                by_axis = {}
                for axis in AXES:
                    line = lines(recs, axis)
                    if line is not None:
                        by_axis[axis] = line
                if not by_axis:
                    continue
                out.append(f"### {device.upper()}: {TITLES[routine]}, {dtype}\n")
                stem = f"{device}_{routine}_{dtype}"
                for axis in AXES:
                    line = by_axis.get(axis)
                    if line is None:
                        continue
                    name = f"{stem}_{axis}.png"
                    title = f"{routine}, {dtype}, {device}: {_fixed(line)}"
                    if figures:
                        ylabel = "CPU time per call (s)" if stat == "cpu" else \
                            f"time per call (s, {stat})"
                        panels = [(line, tkey, ylabel, None)]
                        if axis == "n_samples":
                            panels.append((line, _mem_key(device), mem_label,
                                           (budget_mb, f"{budget_gb:g} GB")))
                        _figure(os.path.join(fig_dir, name), panels, title)
                    out.append(f"![{routine} {dtype} vs {axis}]({fig_prefix}/{name})\n")
                    alt = "min_s" if stat != "min" else None
                    out.append(f"Time per call (s, {stat_text}"
                               + ("; in brackets the fastest call" if alt else "")
                               + f"), {_fixed(line)}:\n")
                    out.append(_table(line, tools, tkey, _fmt_s, alt) + "\n")
                    if stat != "cpu" and any(r.get("cpu_s") for r in line["records"]):
                        out.append("Process CPU time per call (s, all threads, median of the "
                                   "timed calls: the work done, whatever share of the cores "
                                   f"the process got), {_fixed(line)}:\n")
                        out.append(_table(line, tools, "cpu_s", _fmt_s) + "\n")
                    if axis == "n_samples":
                        out.append(f"{mem_label[0].upper() + mem_label[1:]}, {_fixed(line)}:\n")
                        out.append(_table(line, tools, _mem_key(device), _fmt_mb) + "\n")
                out.append("Growth exponents (least-squares slope of log time against log size "
                           "over the sweep; in brackets over its largest three sizes):\n")
                out.append(_exponents(by_axis, tools, tkey) + "\n")
                if "n_samples" in by_axis:
                    out.append(f"Largest `n_samples` in {budget_gb:g} GB "
                               f"({'card' if device == 'gpu' else 'host'} memory, 1e9 bytes), "
                               f"from the memory model fitted to the peaks above "
                               f"({_fixed(by_axis['n_samples'])}):\n")
                    out.append(_capacity(by_axis["n_samples"], tools, budget_mb, device) + "\n")
    return "\n".join(out)


def replace_section(text, section):
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by ``section``.

    Raises
    ------
    ValueError
        If the markers are missing.
    """
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"the file has no {BEGIN} ... {END} section")
    return text[:start + len(BEGIN)] + "\n" + section.rstrip() + "\n" + text[stop:]


def main(argv=None):
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("results", nargs="*", help="JSON-lines files (default: "
                   "bench/results/*_cpu.jsonl and *_gpu.jsonl)")
    p.add_argument("--figures-dir", default=os.path.join(BENCH_DIR, "figures"))
    p.add_argument("--no-figures", action="store_true", help="tables only (no matplotlib)")
    p.add_argument("--memory-gb", type=float, default=24.0,
                   help="host memory for the largest n_samples (GB, 1e9 bytes)")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0,
                   help="card memory for the largest n_samples of GPU runs")
    p.add_argument("--stat", choices=("min", "median", "cpu"), default="median",
                   help="time of the timed calls used: the fastest wall-clock time (the least "
                        "disturbed on a shared machine), the median, or the median process CPU "
                        "time of all threads")
    p.add_argument("--readme", help="replace the report section of this markdown file")
    p.add_argument("--out", help="write the report to this file instead of stdout")
    args = p.parse_args(argv)
    paths = args.results or sorted(
        glob.glob(os.path.join(BENCH_DIR, "results", "*_cpu.jsonl"))
        + glob.glob(os.path.join(BENCH_DIR, "results", "*_gpu.jsonl")))
    if not paths:
        p.error("no results files")
    if not args.no_figures:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("the figures need matplotlib (pip install matplotlib), or use --no-figures")
        os.makedirs(args.figures_dir, exist_ok=True)
    base = os.path.dirname(os.path.abspath(args.readme or args.out or
                                           os.path.join(BENCH_DIR, "README.md")))
    prefix = os.path.relpath(os.path.abspath(args.figures_dir), base)
    text = report(load(paths), args.figures_dir, figures=not args.no_figures,
                  memory_gb=args.memory_gb, gpu_memory_gb=args.gpu_memory_gb,
                  fig_prefix=prefix, stat=args.stat)
    if args.readme:
        with open(args.readme) as fh:
            old = fh.read()
        with open(args.readme, "w") as fh:
            fh.write(replace_section(old, text))
    elif args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
