"""The measuring protocol shared by every benchmark child: the spawn children of
``bench_ntk.py`` (mpsntk, NumPy, PyTorch, JAX) and the neural-tangents worker
(``nt_worker.py``), which runs in its own virtual environment with an older NumPy and JAX.

Standard library only at import (NumPy is imported inside the functions), so that both
environments can import it.

A measurement is: reset the RSS high-water mark, make the first call, compare its result with
mpsntk's (saved as ``.npy`` files by the mpsntk child of the same configuration) *before* any
timed call, then the warm-up and timed calls, and the peak RSS over the baseline.
"""

from __future__ import annotations

import math
import resource
import statistics
import time

MAX_CALLS = 100


def _rss_status():
    """Current and peak RSS of this process in MiB, from ``/proc/self/status``."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out.get("VmRSS"), out.get("VmHWM")


def reset_peak_rss():
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


def peak_rss(method):
    """Peak RSS in MiB since :func:`reset_peak_rss`."""
    if method == "clear_refs":
        _, hwm = _rss_status()
        if hwm is not None:
            return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_results(parts, prefix):
    """Save the result components as ``{prefix}{k}.npy``; return the paths.

    Parameters
    ----------
    parts : list of ndarray
    prefix : str

    Returns
    -------
    list of str
    """
    import numpy as np

    paths = []
    for k, part in enumerate(parts):
        path = f"{prefix}{k}.npy"
        np.save(path, np.asarray(part))
        paths.append(path)
    return paths


def max_rel_diff(parts, ref_paths):
    """Largest ``max|part - ref| / max|ref|`` over the components of a result.

    The references are read memory-mapped, in blocks of rows, so that comparing a large kernel
    costs no second copy of it.

    Parameters
    ----------
    parts : list of ndarray
        A peer's result, component by component (a kernel, or one gradient per core).
    ref_paths : list of str
        mpsntk's result, saved by :func:`save_results`.

    Returns
    -------
    float
        Infinity when a component is not finite or its shape differs from the reference's.
    """
    import numpy as np

    if len(parts) != len(ref_paths):
        return math.inf
    worst = 0.0
    for part, path in zip(parts, ref_paths):
        ref = np.load(path, mmap_mode="r")
        part = np.asarray(part)
        if part.shape != ref.shape or not np.all(np.isfinite(part)):
            return math.inf
        a = part.reshape(part.shape[0], -1) if part.ndim else part.reshape(1, 1)
        r = ref.reshape(a.shape)
        rows = max(1, (1 << 22) // max(a.shape[1], 1))
        diff = scale = 0.0
        for start in range(0, a.shape[0], rows):
            rb = np.asarray(r[start:start + rows], dtype=np.float64)
            diff = max(diff, float(np.max(np.abs(a[start:start + rows] - rb))))
            scale = max(scale, float(np.max(np.abs(rb))))
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def measure(fn, to_host, opts, t_start, tolerance, peak_device=None):
    """Time ``fn`` after checking its first result against mpsntk's.

    Parameters
    ----------
    fn : callable
        The timed call (no arguments); for device tools it ends with a synchronisation.
    to_host : callable
        ``to_host(fn())`` is the result as a list of NumPy arrays (untimed).
    opts : dict
        ``repeats, warmup, timeout, min_time``; ``ref_paths`` (compare with these files) and
        ``save_prefix`` (save the result there: the mpsntk child).
    t_start : float
        ``time.perf_counter()`` when the child started (timed calls stay within 80 % of
        ``timeout`` counted from there).
    tolerance : float
        Largest ``max_rel_diff`` accepted.
    peak_device : callable, optional
        Peak device memory in bytes since the build (GPU tools).

    Returns
    -------
    dict
        ``status`` (``"ok"`` or ``"mismatch"``), ``median_s, min_s, times`` (wall clock),
        ``cpu_s`` (median process CPU time of the timed calls, all threads), ``peak_rss_mb,
        rss_method``,
        ``max_rel_diff`` when compared, ``gpu_peak_mb`` and ``note`` where they apply.
    """
    res = {}
    baseline, method = reset_peak_rss()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    first_cpu = time.process_time() - c0
    parts = to_host(out)
    del out
    if opts.get("ref_paths"):
        res["max_rel_diff"] = max_rel_diff(parts, opts["ref_paths"])
        if not res["max_rel_diff"] <= tolerance:
            res["status"] = "mismatch"
            res["note"] = (f"result differs from mpsntk's by {res['max_rel_diff']:.3g} "
                           f"(tolerance {tolerance:g}); not timed")
            return res
    if opts.get("save_prefix"):
        res["ref_paths"] = save_results(parts, opts["save_prefix"])
    del parts
    times, cpu = ([], []) if opts["warmup"] > 0 else ([first], [first_cpu])
    per_call = first
    for _ in range(opts["warmup"] - 1):
        t0 = time.perf_counter()
        fn()
        per_call = time.perf_counter() - t0

    def timed():
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)

    left = 0.8 * opts["timeout"] - (time.perf_counter() - t_start)
    n_rep = min(opts["repeats"] - len(times), int(left // max(per_call, 1e-9)))
    for _ in range(max(0, n_rep)):
        timed()
    # fast calls: keep timing up to min_time in all (the median resists a noisy neighbour)
    while times and len(times) < MAX_CALLS and sum(times) < opts["min_time"]:
        timed()
    res["peak_rss_mb"] = peak_rss(method) - baseline
    res["rss_method"] = method
    if peak_device is not None:
        value = peak_device()
        res["gpu_peak_mb"] = None if value is None else value / 2**20
    if not times:
        times, cpu = [first], [first_cpu]
        res["note"] = ("no timed call fit in 80% of --timeout after the warm-up: the time is "
                       "that of the first call (it includes any compilation)")
    elif len(times) < opts["repeats"]:
        res["note"] = (f"{len(times)} timed call(s) instead of {opts['repeats']} "
                       "to stay within 80% of --timeout")
    res["first_call_s"] = first
    res["median_s"] = statistics.median(times)
    res["min_s"] = min(times)
    res["cpu_s"] = statistics.median(cpu)
    res["times"] = [float(f"{t:.6g}") for t in times]
    res["status"] = "ok"
    return res
