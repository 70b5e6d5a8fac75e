"""The suite's framework: targets, their JSON records and figures, the summary and exit status."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import traceback
import warnings

import numpy as np

#: Exit statuses of :func:`run`: every target passed; a target failed or raised; none failed
#: but a target could not run (it needs an interface this installation lacks).
EXIT_PASSED, EXIT_FAILED, EXIT_PENDING = 0, 1, 2


class TargetPending(Exception):
    """A target that cannot run here (an interface it needs is not installed); the message
    says which."""


@dataclasses.dataclass
class Outcome:
    """What a target's experiment returns.

    ``checks`` maps each pass criterion to whether it held; the target passes when all do.
    ``data`` holds the arrays its figure draws (also written to the JSON record).
    """

    measured: dict
    reference: dict
    tolerance: dict
    checks: dict
    data: dict = dataclasses.field(default_factory=dict)

    @property
    def passed(self):
        return bool(self.checks) and all(bool(v) for v in self.checks.values())


@dataclasses.dataclass
class Target:
    """One reproduction target: ``run(settings, rng) -> Outcome`` and ``plot(outcome, fig)``."""

    name: str
    title: str
    run: object
    plot: object
    full: dict
    quick: dict
    summary: object = None  # outcome -> short text for the table


def _jsonable(value):
    """Plain JSON values; non-finite floats as the strings "nan", "inf", "-inf"."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"cannot write {type(value).__name__} to the JSON record")


def _new_figure(size):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend), or None."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=size, layout="constrained")


def bond_axis(ax, dims):
    """Log-scaled bond-dimension axis ticked at ``dims`` (no crowded minor labels)."""
    dims = sorted({int(d) for d in dims})
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(dims, [str(d) for d in dims])


def _version():
    from .. import __version__

    return __version__


def run_target(target, *, quick, out, seed, index):
    """Run one target, write ``out/<name>.json`` (and ``.png``); return the record."""
    settings = target.quick if quick else target.full
    rng = np.random.default_rng([seed, index])
    record = dict(target=target.name, title=target.title, mode="quick" if quick else "full",
                  settings=settings, seed=seed, version=_version())
    t0 = time.perf_counter()
    outcome = None
    try:
        outcome = target.run(settings, rng)
    except TargetPending as exc:
        record.update(status="pending", passed=None, reason=str(exc), measured={}, reference={},
                      tolerance={}, checks={})
    except Exception as exc:  # a broken target must not hide the others' results
        record.update(status="error", passed=False, measured={}, reference={}, tolerance={},
                      checks={}, reason=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    else:
        record.update(status="passed" if outcome.passed else "failed", passed=outcome.passed,
                      measured=outcome.measured, reference=outcome.reference,
                      tolerance=outcome.tolerance, checks=outcome.checks, data=outcome.data)
    record["elapsed_s"] = round(time.perf_counter() - t0, 2)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{target.name}.json"), "w") as fh:
        json.dump(_jsonable(record), fh, indent=1, allow_nan=False)
        fh.write("\n")
    if outcome is not None:
        fig = _new_figure((11, 3.6))
        if fig is None:
            warnings.warn(f"matplotlib is not installed: {target.name}.png skipped (the JSON "
                          "record is written); pip install matplotlib", RuntimeWarning,
                          stacklevel=2)
        else:
            target.plot(outcome, fig)
            fig.suptitle(f"{target.name}: {target.title}"
                         f" ({'quick' if quick else 'full'}; "
                         f"{'passed' if outcome.passed else 'FAILED'})", fontsize=11)
            fig.savefig(os.path.join(out, f"{target.name}.png"), dpi=110)
    record["summary"] = target.summary(outcome) if (outcome is not None and target.summary) \
        else record.get("reason", "")
    return record


def summary_table(records):
    """The table printed at the end of a run."""
    lines = [f"{'target':<7}{'status':<9}{'time/s':>8}  result", "-" * 78]
    for r in records:
        lines.append(f"{r['target']:<7}{r['status'].upper():<9}{r['elapsed_s']:>8.1f}  "
                     f"{r['summary']}")
    return "\n".join(lines)


def exit_status(records):
    """``EXIT_PASSED`` (0), ``EXIT_FAILED`` (1) or ``EXIT_PENDING`` (2)."""
    statuses = {r["status"] for r in records}
    if statuses & {"failed", "error"}:
        return EXIT_FAILED
    return EXIT_PENDING if "pending" in statuses else EXIT_PASSED
