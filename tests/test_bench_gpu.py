"""The GPU benchmark's measuring code (bench/bench_ntk.py --device gpu, bench/peers.py) and the
hardware check script (bench/gpu_check.py), run in-process on the SIMT simulator behind the CuPy
stand-in: the builders of mpsntk's engine and of the CuPy/cuBLAS peer, the agreement check
between them and the timing loop.  (Timings of the simulator mean nothing; this checks that the
code a GPU session will run works.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import mpsntk as mn

import sim_cupy
from conftest import relerr

if not sim_cupy.available():  # pragma: no cover - the simulator is built on POSIX systems
    pytest.skip("mpsntk was built without the SIMT simulator", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_ntk  # noqa: E402
import gpu_check  # noqa: E402
import peers  # noqa: E402

CFG = {"dtype": "float64", "n_sites": 6, "bond_dim": 5, "n_samples": 70, "seed": 0}
OPTS = {"repeats": 2, "warmup": 1, "timeout": 60, "min_time": 0.0, "n_threads": 1,
        "device": "gpu"}


@pytest.fixture(autouse=True)
def _simulated_gpu():
    with sim_cupy.installed():
        yield


@pytest.mark.parametrize("tool", ["mpsntk", "cupy"])
def test_gpu_builders_compute_the_kernel(tool):
    prob = bench_ntk._problem(CFG)
    mps, phi = prob["mps"], prob["phi"]
    run, to_host, peak = peers.BUILDERS[tool](mps, phi)
    theta = run()
    assert isinstance(theta, sim_cupy.ndarray)  # left on the "card" by the timed call
    assert relerr(to_host(theta), mn.ntk(mps, phi)) < 1e-12
    peak()  # callable after a run (the stand-in pools nothing, so its value says nothing here)


def test_gpu_measurement_checks_the_peer_against_mpsntk(tmp_path):
    res = bench_ntk._measure("mpsntk", CFG, dict(OPTS, save_prefix=str(tmp_path / "ref_")))
    assert res["status"] == "ok" and len(res["times"]) >= 2 and res["gpu_peak_mb"] is not None
    refs = res["ref_paths"]
    peer = bench_ntk._measure("cupy", CFG, dict(OPTS, ref_paths=refs))
    assert peer["status"] == "ok" and peer["max_rel_diff"] < 1e-12
    # a peer that disagrees is reported, not timed
    np.save(refs[0], 1.01 * np.load(refs[0]))
    bad = bench_ntk._measure("cupy", CFG, dict(OPTS, ref_paths=refs))
    assert bad["status"] == "mismatch" and "median_s" not in bad


def test_hardware_check_script_compares_every_device_routine():
    results = gpu_check.check_all(sim_cupy, verbose=False)
    what = " ".join(w for w, _, _ in results)
    for routine in ("ntk sym", "ntk cross", "ntk tf32", "forward", "vjp", "jvp", "ntk_vp"):
        assert routine in what
    assert [r for r in results if not r[1] <= r[2]] == []
    assert gpu_check.one_ntk(sim_cupy, 70, 3, np.dtype(np.float64)).shape == (70, 70)
