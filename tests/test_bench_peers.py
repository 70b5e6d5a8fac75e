"""The benchmark's peers and report (bench/peers.py, bench/_harness.py, bench/bench_ntk.py,
bench/nt_worker.py, bench/report.py) on tiny sizes: every peer computes what mpsntk computes,
a disagreeing peer stops the run, and the report's fits, tables and figures come out of a small
synthetic results file.  torch, JAX and the neural-tangents venv are optional: their tests skip
when they are missing.  Nothing here is timed."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _reference

from conftest import random_model, relerr

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import _harness  # noqa: E402
import bench_ntk  # noqa: E402
import nt_worker  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402

TOL = {np.float64: 1e-12, np.float32: 2e-5}


def _problem(dtype=np.float64, n=23, seed=0):
    """A model with random scales and per-site rates (so that the peers must apply both)."""
    rng = np.random.default_rng(seed)
    mps = random_model(rng, [1, 3, 4, 2, 3, 1], dtype=dtype)
    phi = rng.uniform(-1, 1, size=(n, mps.n_sites, 2)).astype(dtype)
    v = rng.standard_normal(n).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    return peers.problem(mps, phi, v, y, feature_scale=0.8)


def _expected(routine, prob):
    """mpsntk's answer, as a list of arrays."""
    mps, phi = prob["mps"], prob["phi"]
    if routine == "ntk":
        return [mn.ntk(mps, phi)]
    if routine == "ntk_vp":
        return [mn.ntk_vp(mps, phi, prob["v"])]
    if routine == "vjp":
        return mn.vjp(mps, phi, mps(phi) - prob["y"])
    if routine == "log_partition":
        return [np.array(mn.born.log_partition(mps, prob["feature_scale"]))]
    logz, grads = mn.born.log_partition_grad(mps, prob["feature_scale"])
    return [np.array(logz)] + grads


def _check(tool, routine, dtype):
    prob = _problem(dtype)
    run, to_host, peak = peers.build(routine, tool, prob)
    got, want = to_host(run()), _expected(routine, prob)
    assert peak is None and len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert relerr(g, w) < TOL[dtype], (tool, routine)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("routine", peers.ROUTINES)
def test_numpy_structured_peer_matches_mpsntk(routine, dtype):
    _check("numpy-structured", routine, dtype)


def test_structured_ntk_tiles_equal_the_dense_oracle():
    prob = _problem(n=29)
    for block in (4, 7, 29, None):  # ragged, exact and single tiles
        theta = peers.structured_ntk(np, prob["cores"], prob["scales"], prob["rates"],
                                     prob["phi"], block=block)
        assert relerr(theta, _reference.ntk(prob["mps"], prob["phi"])) < 1e-12


def test_numpy_jacobian_peer_and_structured_born_against_oracles():
    _check("numpy-jacobian", "ntk", np.float64)
    with pytest.raises(ValueError, match="NTK only"):
        peers.build("vjp", "numpy-jacobian", _problem())
    # log Z against the sum of Psi(x)^2 over all configurations
    prob = _problem()
    mps = prob["mps"]
    omega = mn.datasets.all_configurations(mps.n_sites, 2)
    psi = mps(mn.features.onehot(omega, phys_dim=2, scale=0.8))
    logz = peers.structured_log_partition(np, prob["cores"], prob["scales"], 0.8)
    assert abs(logz - math.log(np.sum(psi**2))) < 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("routine", peers.ROUTINES)
@pytest.mark.parametrize("tool", ["torch", "jax"])
def test_autodiff_peers_match_mpsntk(tool, routine, dtype):
    pytest.importorskip(tool)
    _check(tool, routine, dtype)


def test_unknown_routine_or_tool_is_an_error():
    with pytest.raises(ValueError, match="routine"):
        peers.build("hessian", "numpy-structured", _problem())
    with pytest.raises(ValueError, match="tool"):
        peers.build("ntk", "tensorflow", _problem())


def test_flop_counts_and_peer_memory_rules():
    assert bench_ntk.routine_flops("ntk", 10, 3, 4) == bench_ntk.structured_flops(10, 3, 4)
    g = 2 * 2 * (1 * 4 + 4 * 4 + 4 * 1)  # sum_j 2 d D_j D_{j+1}
    assert bench_ntk.routine_flops("ntk_vp", 10, 3, 4) == 4 * 10 * g
    assert bench_ntk.routine_flops("vjp", 10, 3, 4) == 3 * 10 * g
    born = 2 * 2 * (1 * 4 * 5 + 4 * 4 * 8 + 4 * 1 * 5)
    assert bench_ntk.routine_flops("log_partition", None, 3, 4) == born
    assert bench_ntk.routine_flops("log_partition_grad", None, 3, 4) == 3 * born
    assert bench_ntk.peer_work_gb("torch", "ntk", 10, 3, 4, "float64") == 10 * 48 * 8 / 1e9
    assert bench_ntk.peer_work_gb("numpy-structured", "ntk", 10, 3, 4, "float64") is None
    assert bench_ntk.peer_work_gb("torch", "vjp", 10, 3, 4, "float64") is None


# --------------------------------------------------------------------------- harness
OPTS = {"repeats": 2, "warmup": 1, "timeout": 60, "min_time": 0.0}


def test_harness_checks_before_timing(tmp_path):
    parts = [np.arange(6.0).reshape(2, 3), np.ones(4)]
    calls = []

    def fn():
        calls.append(1)
        return parts

    res = _harness.measure(fn, list, dict(OPTS, save_prefix=str(tmp_path / "r_")),
                           time.perf_counter(), 1e-10)
    assert res["status"] == "ok" and len(res["times"]) == 2 and len(calls) == 3
    paths = res["ref_paths"]
    assert _harness.max_rel_diff(parts, paths) == 0.0
    off = [parts[0], np.ones(4) * (1 + 1e-6)]
    assert abs(_harness.max_rel_diff(off, paths) - 1e-6) < 1e-12
    assert _harness.max_rel_diff([parts[0]], paths) == math.inf  # a component missing
    assert _harness.max_rel_diff([parts[0].T, parts[1]], paths) == math.inf  # wrong shape
    assert _harness.max_rel_diff([parts[0], np.full(4, np.nan)], paths) == math.inf
    calls.clear()
    bad = _harness.measure(lambda: (calls.append(1), off)[1], list,
                           dict(OPTS, ref_paths=paths), time.perf_counter(), 1e-10)
    assert bad["status"] == "mismatch" and "median_s" not in bad and len(calls) == 1


def test_measurement_child_checks_a_peer(tmp_path):
    cfg = {"routine": "vjp", "dtype": "float64", "n_sites": 5, "bond_dim": 3, "n_samples": 17,
           "seed": 0}
    opts = dict(OPTS, n_threads=1, device="cpu")
    ref = bench_ntk._measure("mpsntk", cfg, dict(opts, save_prefix=str(tmp_path / "ref_")))
    assert ref["status"] == "ok" and len(ref["ref_paths"]) == 5  # one gradient per core
    peer = bench_ntk._measure("numpy-structured", cfg, dict(opts, ref_paths=ref["ref_paths"]))
    assert peer["status"] == "ok" and peer["max_rel_diff"] < 1e-12
    np.save(ref["ref_paths"][2], 1.01 * np.load(ref["ref_paths"][2]))
    bad = bench_ntk._measure("numpy-structured", cfg, dict(opts, ref_paths=ref["ref_paths"]))
    assert bad["status"] == "mismatch" and bad["max_rel_diff"] > 1e-3


def test_a_disagreeing_peer_stops_the_run(tmp_path, monkeypatch):
    """The parent's side: the first mismatch ends the sweep with status 3, keeps the records
    measured so far and runs no further configuration."""
    seen = []

    def fake_child(job, args, timeout, max_rss_mb=None):
        if job == "gemm":
            return {"status": "ok", "float64": 1.0, "float32": 2.0,
                    "blas_env_child": dict.fromkeys(bench_ntk.BLAS_VARS)}
        cfg, opts = args
        seen.append((job, cfg["n_samples"]))
        if job == "mpsntk":
            return {"status": "ok", "median_s": 1.0, "ref_paths": ["x.npy"]}
        return {"status": "mismatch", "max_rel_diff": 0.5, "note": "differs"}

    monkeypatch.setattr(bench_ntk, "run_child", fake_child)
    out = tmp_path / "r.jsonl"
    status = bench_ntk.main(["--routine", "ntk", "--n-samples", "8", "16", "--n-sites", "3",
                             "--bond-dim", "2", "--dtype", "float64", "--peers",
                             "numpy-structured", "--out", str(out)])
    assert status == 3
    assert seen == [("mpsntk", 8), ("numpy-structured", 8)]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in recs] == ["ok", "mismatch"]


def test_skips_after_a_timeout_and_for_large_jacobians(tmp_path, monkeypatch):
    seen = []

    def fake_child(job, args, timeout, max_rss_mb=None):
        if job == "gemm":
            return {"status": "ok", "float64": 1.0, "float32": 2.0,
                    "blas_env_child": dict.fromkeys(bench_ntk.BLAS_VARS)}
        cfg = args[0]
        seen.append((job, cfg["n_samples"], cfg["bond_dim"]))
        if job == "mpsntk":
            return {"status": "ok", "median_s": 1.0, "ref_paths": ["x.npy"]}
        if job == "torch":
            return {"status": "timeout", "note": "timed out"}
        return {"status": "ok", "median_s": 2.0, "max_rel_diff": 0.0}

    monkeypatch.setattr(bench_ntk, "run_child", fake_child)
    monkeypatch.setattr(bench_ntk, "_missing_tools", lambda args: {})  # torch need not be here
    out = tmp_path / "r.jsonl"
    assert bench_ntk.main(["--routine", "ntk", "--n-samples", "8", "4096", "--n-sites", "64",
                           "--bond-dim", "2", "64", "--dtype", "float64", "--peers", "torch",
                           "numpy-structured", "--peer-max-gb", "1", "--out", str(out)]) == 0
    # torch timed out at the smallest size: every larger one is skipped without running
    assert [s for s in seen if s[0] == "torch"] == [("torch", 8, 2)]
    recs = {(r["tool"], r["n_samples"], r["bond_dim"]): r
            for r in map(json.loads, out.read_text().splitlines())}
    assert "timed out at n_samples=8," in recs[("torch", 4096, 2)]["note"]
    assert recs[("numpy-structured", 4096, 64)]["status"] == "ok"
    assert recs[("mpsntk", 8, 2)]["speedup_vs"] == {"numpy-structured": 2.0}


def test_cli_rejects_peers_and_routines_that_do_not_apply(capsys):
    with pytest.raises(SystemExit):
        bench_ntk._parse(["--routine", "vjp", "--peers", "nt-auto"])
    assert "not a cpu peer of vjp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_ntk._parse(["--device", "gpu", "--routine", "log_partition"])
    assert "host only" in capsys.readouterr().err
    args = bench_ntk._parse(["--routine", "ntk", "vjp", "--peers", "torch", "numpy-jacobian"])
    assert args.tools == {"ntk": ["mpsntk", "numpy-jacobian", "torch"],
                          "vjp": ["mpsntk", "torch"]}
    cfgs = bench_ntk.configs(bench_ntk._parse(["--routine", "log_partition", "--n-samples",
                                               "5", "7", "--n-sites", "4", "--bond-dim", "2"]))
    assert [c["n_samples"] for c in cfgs] == [None, None]  # the Born routines have no data


# --------------------------------------------------------------------------- neural-tangents
def test_problem_file_round_trip(tmp_path):
    prob = _problem()
    bench_ntk.save_problem(prob, tmp_path / "p.npz")
    back = nt_worker.load_problem(tmp_path / "p.npz")
    for key in ("scales", "rates"):
        assert back[key] == prob[key]
    for key in ("phi", "v", "y"):
        assert np.array_equal(back[key], prob[key])
    assert all(np.array_equal(a, b) for a, b in zip(back["cores"], prob["cores"]))


NT_PYTHON = bench_ntk._default_nt_python()


@pytest.mark.skipif(not os.path.exists(NT_PYTHON),
                    reason="no neural-tangents venv (bash bench/make_nt_env.sh)")
def test_neural_tangents_worker_matches_mpsntk(tmp_path):
    """One worker per NTK routine (each imports TensorFlow: seconds); random scales and rates,
    so the worker's reparametrisation must hold.  The other NtkImplementations run the same
    code path and are checked against mpsntk by every benchmark run."""
    prob = _problem()
    bench_ntk.save_problem(prob, tmp_path / "p.npz")
    for tool in ("nt-structured-derivatives", "nt-ntk-vp"):
        routine = nt_worker.NT_TOOLS[tool][0]
        refs = _harness.save_results(_expected(routine, prob), str(tmp_path / f"{tool}_"))
        job = {"tool": tool, "routine": routine, "dtype": "float64",
               "problem": str(tmp_path / "p.npz"), "tolerance": 1e-10,
               "opts": dict(OPTS, ref_paths=refs)}
        res = bench_ntk.run_worker(NT_PYTHON, job, timeout=120)
        assert res["status"] == "ok", res.get("note")
        assert res["max_rel_diff"] < 1e-12 and len(res["times"]) >= 2
        assert res["nt_versions"]["neural-tangents"] == "0.6.5"


def test_worker_failure_is_reported(tmp_path):
    """A worker that cannot run (here: this interpreter, without neural-tangents, or a missing
    problem file) answers with an error record, not a crash of the sweep."""
    job = {"tool": "nt-auto", "routine": "ntk", "dtype": "float64",
           "problem": str(tmp_path / "missing.npz"), "tolerance": 1e-10, "opts": OPTS}
    res = bench_ntk.run_worker(sys.executable, job, timeout=60)
    assert res["status"] == "error" and res["note"]


# --------------------------------------------------------------------------- GPU builders
def test_gpu_builders_of_the_products_on_the_simulator():
    sim_cupy = pytest.importorskip("sim_cupy")
    if not sim_cupy.available():
        pytest.skip("mpsntk was built without the SIMT simulator")
    with sim_cupy.installed():
        for routine in ("ntk_vp", "vjp"):
            prob = _problem()
            want = _expected(routine, prob)
            for tool in ("mpsntk", "cupy"):
                run, to_host, peak = peers.build(routine, tool, prob, device="gpu")
                got = to_host(run())
                peak()
                assert all(relerr(g, w) < 1e-12 for g, w in zip(got, want)), (tool, routine)


# --------------------------------------------------------------------------- report
def _synthetic(path):
    """Two runs: a grid over n_samples and bond_dim, and an n_sites sweep; Born records; a
    skipped and a timed-out peer.  Times follow exact power laws, memory a + b n + c n^2."""
    recs = []
    base = {"device": "cpu", "cpu": "Test CPU", "isa": "avx2", "versions": {"mpsntk": "0"},
            "gemm_gflops": 50.0, "load_avg_start": 0.5, "tolerance": 1e-10, "n_threads": 2}
    for n, D in [(n, D) for n in (64, 128, 256, 512) for D in (4, 8)]:
        for tool, k, mem in (("mpsntk", 1e-9, (5.0, 0.01, 8 / 2**20)),
                             ("torch", 1e-7, (50.0, 2.0, 0.0))):
            t = k * n**2 * D ** (1 if tool == "mpsntk" else 2)
            recs.append(dict(base, date="run1", routine="ntk", dtype="float64", tool=tool,
                             n_samples=n, n_sites=8, bond_dim=D, status="ok", median_s=t,
                             peak_rss_mb=mem[0] + mem[1] * n + mem[2] * n * n,
                             max_rel_diff=None if tool == "mpsntk" else 3e-15))
        recs.append(dict(base, date="run1", routine="ntk", dtype="float64",
                         tool="nt-ntk-vector-products", n_samples=n, n_sites=8, bond_dim=D,
                         status="timeout" if n > 64 else "ok", median_s=1.0 if n == 64 else None,
                         peak_rss_mb=10.0, max_rel_diff=1e-14))
    for N in (4, 8, 16):
        recs.append(dict(base, date="run2", routine="ntk", dtype="float64", tool="mpsntk",
                         n_samples=64, n_sites=N, bond_dim=4, status="ok", median_s=1e-3 * N,
                         peak_rss_mb=1.0))
    for D in (16, 32, 64):
        for tool in ("mpsntk", "jax"):
            recs.append(dict(base, date="run3", routine="log_partition", dtype="float64",
                             tool=tool, n_samples=None, n_sites=16, bond_dim=D, status="ok",
                             median_s=1e-9 * D**3, peak_rss_mb=None,
                             max_rel_diff=None if tool == "mpsntk" else 1e-16))
    for n in (1024, 4096):  # a GPU run: card memory in place of the RSS
        for tool in ("mpsntk", "cupy"):
            recs.append(dict(base, device="gpu", gpu="Test GPU", card_peak_tflops={},
                             date="run4", routine="ntk", dtype="float32", tool=tool,
                             n_samples=n, n_sites=8, bond_dim=4, status="ok",
                             median_s=1e-9 * n**2, peak_rss_mb=1.0,
                             gpu_peak_mb=(2.0 if tool == "mpsntk" else 16.0) * n * n / 2**20,
                             max_rel_diff=None if tool == "mpsntk" else 1e-7))
    with open(path, "w") as fh:
        for r in recs:
            fh.write(json.dumps(r) + "\n")
    return recs


def test_report_fits_and_memory_model():
    assert abs(report.fit_exponent([1, 2, 4, 8], [3, 12, 48, 192]) - 2.0) < 1e-12
    assert report.fit_exponent([4], [1]) is None
    ns = [64, 128, 256, 512]
    model = report.memory_model(ns, [5 + 0.01 * n + 3e-5 * n * n for n in ns])
    assert np.allclose(model, (5, 0.01, 3e-5), rtol=1e-6)
    assert report.memory_model(ns, [50 + 2 * n for n in ns])[2] == 0.0  # no negative terms
    floor = report.memory_model(ns, [50 + 2 * n for n in ns], c_min=1e-4)  # the NTK's result
    assert floor[2] >= 1e-4
    n_cap = report.max_n((5.0, 0.01, 3e-5), 1000.0)
    assert abs(5 + 0.01 * n_cap + 3e-5 * n_cap**2 - 1000) < 1e-6
    assert report.max_n((10.0, 0.0, 0.0), 100.0) is None


def test_report_tables_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "ntk_cpu.jsonl"
    _synthetic(path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Bench\n\nbefore\n{report.BEGIN}\nold\n{report.END}\nafter\n")
    figs = tmp_path / "figs"
    assert report.main([str(path), "--figures-dir", str(figs), "--readme", str(readme),
                        "--memory-gb", "24"]) == 0
    text = readme.read_text()
    assert text.startswith("# Bench\n\nbefore\n") and text.endswith(f"{report.END}\nafter\n")
    assert "old" not in text and "Test CPU" in text
    for name in ("cpu_ntk_float64_n_samples.png", "cpu_ntk_float64_bond_dim.png",
                 "cpu_ntk_float64_n_sites.png", "cpu_log_partition_float64_bond_dim.png",
                 "gpu_ntk_float32_n_samples.png"):
        assert (figs / name).stat().st_size > 1000
        assert f"](figs/{name})" in text
    # the exponents of the synthetic power laws: mpsntk n^2 D, torch n^2 D^2, log Z D^3
    row = next(line for line in text.splitlines() if line.startswith("| mpsntk | 2.00"))
    assert "| 1.00" in row
    assert any(line.startswith("| torch | 2.00") and "| 2.00" in line[12:]
               for line in text.splitlines())
    assert any(line.startswith("| jax | 3.00") for line in text.splitlines())
    # 24 GB for mpsntk's 5 + 0.01 n + 8 n^2 / 2^20 MiB: n ~ 54,000 (extrapolated)
    cap = next(line for line in text.splitlines()
               if line.startswith("| mpsntk | 5 + 0.01·n"))
    n_cap = report.max_n((5.0, 0.01, 8 / 2**20), 24e9 / 2**20)
    assert f"{n_cap:,.0f}" in cap and "extrapolated" in cap
    assert "timeout" in text and "| ntk | float64 | torch | 8 | 3.0e-15 |" in text
    # the GPU section: the card's memory (80 GB) against the GPU peaks (16 bytes per n^2)
    gpu = text[text.index("### GPU"):]
    assert "Test GPU" in gpu and "GPU memory (MiB)" in gpu
    cap = next(line for line in gpu.splitlines() if line.startswith("| cupy | 0 + 0·n"))
    assert f"{math.sqrt(80e9 / 16):,.0f}" in cap


def test_report_without_figures_prints_markdown(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    _synthetic(path)
    assert report.main([str(path), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "### CPU: Empirical NTK" in out and "Born machine" in out
    with pytest.raises(ValueError, match="section"):
        report.replace_section("no markers", "x")
