"""The code of bench/bench_taylor.py on a tiny size (never its timings): every tool runs in its
child and the expansion it times sums to the moved model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import bench_taylor  # noqa: E402


def test_every_tool_runs_and_the_expansion_sums_to_the_moved_model(tmp_path):
    out = tmp_path / "taylor.jsonl"
    argv = ["--n-samples", "20", "--n-sites", "6", "--bond-dim", "3", "--n-train", "8",
            "--repeats", "1", "--warmup", "0", "--min-time", "0", "--out", str(out)]
    assert bench_taylor.main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tool"] for r in records] == list(bench_taylor.TOOLS)
    assert all(r["status"] == "ok" for r in records), records
    assert all(r["check_rel_err"] < 1e-12 for r in records)
    assert records[0]["ratio_to_ntk"] == 1.0
    assert "| float64, 20, 6, 3 |" in bench_taylor.summarize(records)
