"""Reproduction suite of the theory's targets T1-T9 (theory section 6).

Run it as ``python -m mpsntk.repro [T1 ... T9] [--quick] [--out DIR] [--seed S]``. Each target
writes ``DIR/<T>.json`` (``target``, ``settings``, ``measured``, ``reference``, ``tolerance``,
``checks``, ``passed``, ``status``, ``version``, ``seed``, and the figure's data) and, with
matplotlib installed, the figure ``DIR/<T>.png``. The exit status is 0 when every target
passed, 1 when one failed (or raised), 2 when none failed but one is pending (it needs a
routine this installation lacks).

:func:`run` does the same from Python; :mod:`mpsntk.repro.experiments` holds the experiments
themselves as plain functions.
"""

from __future__ import annotations

from ._born import TARGETS as _T5
from ._diagnostics import TARGETS as _T789
from ._kernels import TARGETS as _T126
from ._mse import TARGETS as _T34
from ._runner import EXIT_FAILED, EXIT_PASSED, EXIT_PENDING, Target, TargetPending

TARGETS = {t.name: t for t in sorted(_T126 + _T34 + _T5 + _T789, key=lambda t: int(t.name[1:]))}

__all__ = ["EXIT_FAILED", "EXIT_PASSED", "EXIT_PENDING", "TARGETS", "Target", "TargetPending",
           "main", "run"]


def run(targets=None, *, quick=False, out="repro_results", seed=0, verbose=True):
    """Run targets and write their records; return ``(records, exit_status)``.

    Parameters
    ----------
    targets : sequence of str, optional
        Names such as ``"T1"``; default all, in order.
    quick : bool
        Reduced sizes (a few minutes for the suite) instead of the theory's sizes.
    out : str or path
        Output folder (created).
    seed : int >= 0
        Base seed; target ``Tk`` draws from ``numpy.random.default_rng([seed, k])``.
    verbose : bool
        Print each target's line and the summary table.
    """
    from .._validate import _check_bool, _check_seed
    from ._runner import exit_status, run_target, summary_table

    quick = _check_bool(quick, "quick")
    verbose = _check_bool(verbose, "verbose")
    seed = _check_seed(seed, base=True)
    names = list(TARGETS) if targets is None else list(targets)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"targets must be among {', '.join(TARGETS)}; got {unknown}")
    records = []
    for name in names:
        if verbose:
            print(f"{name}: {TARGETS[name].title} ...", flush=True)
        records.append(run_target(TARGETS[name], quick=quick, out=str(out), seed=seed,
                                  index=int(name[1:])))
        if verbose:
            r = records[-1]
            print(f"{name}: {r['status']} in {r['elapsed_s']:.1f} s  {r['summary']}", flush=True)
    if verbose:
        print()
        print(summary_table(records))
    return records, exit_status(records)


def main(argv=None):
    """Command-line entry point (``python -m mpsntk.repro``); returns the exit status."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m mpsntk.repro",
        description="Reproduce the theory's targets T1-T9: JSON records and figures per target. "
                    "Exit status 0: all passed; 1: a target failed; 2: a target is pending.")
    p.add_argument("targets", nargs="*", metavar="T", help=f"targets ({', '.join(TARGETS)}; "
                   "default all)")
    p.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes in all)")
    p.add_argument("--out", default="repro_results", help="output folder (default "
                   "repro_results)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    args = p.parse_args(argv)
    names = [t.upper() for t in args.targets] or None
    if names is not None:
        unknown = [n for n in names if n not in TARGETS]
        if unknown:
            p.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if args.seed < 0:
        p.error(f"--seed must be an integer >= 0; got {args.seed}")
    return run(names, quick=args.quick, out=args.out, seed=args.seed)[1]
