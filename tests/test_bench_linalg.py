"""The code of bench/bench_linalg.py on a tiny size (never its timings): both methods solve the
same regression, and the report's crossover, fits and tables come from the records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")
BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import bench_linalg  # noqa: E402


def test_both_methods_solve_the_same_regression():
    opts = {"rank": 512, "rtol": 1e-10, "maxiter": 200, "plain_maxiter": 50, "threads": 0}
    cg = bench_linalg._measure("cg", 500, opts)
    dense = bench_linalg._measure("dense", 500, opts)
    assert cg["status"] == dense["status"] == "ok"
    # the factor stops once tr(Theta - Theta_hat) <= reg: condition number at most 2
    assert cg["rank"] <= 500 and cg["condition_bound"] <= 2.0
    assert cg["converged"] and cg["residual"] <= 1e-10
    assert cg["reg"] == pytest.approx(dense["reg"], rel=1e-12)  # the same exact trace
    pred_cg, pred_dense = np.array(cg["predictions"]), np.array(dense["predictions"])
    assert pred_cg.shape == (bench_linalg.N_TEST,)
    assert np.abs(pred_cg - pred_dense).max() < 1e-6 * np.abs(pred_dense).max()
    assert cg["test_rmse"] == pytest.approx(dense["test_rmse"], rel=1e-6)
    # a learnable target: far below the clean targets' unit standard deviation (0.22 measured
    # at 500 samples; 0.6 at 300, 0.15 at 800)
    assert dense["test_rmse"] < 0.3


def _record(method, n, total, rank=512, **extra):
    rec = {"method": method, "n_samples": n, "rank_requested": rank if method == "cg" else None,
           "status": "ok", "total_s": total, "solve_s": total / 2, "predict_s": 0.1,
           "peak_rss_mb": n / 100, "test_rmse": 0.1, "train_rmse": 0.05, "date": "2026-01-01",
           "load_avg_before": 1.0, "cpu": "test", "isa": "generic", "n_threads": 2}
    if method != "dense":
        rec.update(iterations=4, converged=True, s_per_iteration=total / 10, rank=rank,
                   diagonal_s=0.1, precond_s=0.2, condition_bound=9.0)
    else:
        rec["kernel_s"] = total / 4
    rec.update(extra)
    return rec


def test_report_crossover_fits_and_tables(tmp_path):
    # dense grows like n^3 and cg like n: they cross between 2000 and 8000 samples
    recs = [_record("dense", n, 1e-10 * n**3) for n in (1000, 2000, 8000)]
    recs += [_record("cg", n, 1e-3 * n) for n in (1000, 2000, 8000, 10_000, 100_000)]
    recs += [_record("cg-jacobi", 10_000, 50.0, converged=False, iterations=300)]
    cg = dict(zip(*bench_linalg._series(recs, "cg", "total_s")))
    dense = dict(zip(*bench_linalg._series(recs, "dense", "total_s")))
    x = bench_linalg.crossover(cg, dense)
    assert x == pytest.approx(1e7**0.5, rel=1e-9)  # 1e-10 n^3 = 1e-3 n at n^2 = 1e7
    text = bench_linalg.render(recs)
    assert "cg, time per iteration (one product `Θ v`): **1.00**" in text
    assert "Crossover" in text and "| 10000 | Jacobi |" in text
    path = tmp_path / "r.jsonl"
    later = [_record("cg", 1000, 5.0), _record("cg", 1000, 9.0, status="timeout")]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs + later))
    latest = bench_linalg.load(str(path))
    assert [r["total_s"] for r in latest if r["method"] == "cg" and r["n_samples"] == 1000] == [5.0]
    assert bench_linalg.memory_model("dense", 1000, 0) > 8e6
