"""MPS.save and MPS.load: bitwise round trips of every kind of model, file names with and
without the ``.npz`` suffix, and every foreign, damaged or missing file refused with an error
that names it.  (That a save killed mid-write keeps the previous file is a fault test, in
test_faults.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn

from conftest import assert_same_model
from test_mps import CONFIGS, features, make


@pytest.fixture(scope="module")
def model():
    return mn.MPS.random(4, 3, seed=0)


# --------------------------------------------------------------------------- round trips

SAVE_CASES = [
    dict(config=CONFIGS[0], dtype=np.float64, parametrization="ntk"),
    dict(config=CONFIGS[8], dtype=np.float32, parametrization="standard"),
    dict(config=CONFIGS[4], dtype=np.float64, parametrization="standard"),
    dict(config=CONFIGS[11], dtype=np.float32, parametrization="ntk"),
    dict(config=CONFIGS[2], dtype=np.float64, parametrization="ntk"),
]


@pytest.mark.parametrize("case", SAVE_CASES,
                         ids=lambda c: f"{c['config'][0]}-{c['parametrization']}")
def test_save_load_round_trip(tmp_path, case):
    mps = make(case["config"], seed=21, dtype=case["dtype"],
               parametrization=case["parametrization"], sigma=0.9)
    path = tmp_path / "model.npz"
    mps.save(path)
    loaded = mn.MPS.load(path)
    assert_same_model(mps, loaded)
    phi = features(5, mps.n_sites, mps.phys_dim, dtype=mps.dtype)
    np.testing.assert_array_equal(loaded.forward(phi), mps.forward(phi))
    np.testing.assert_array_equal(loaded.log_forward(phi)[1], mps.log_forward(phi)[1])
    np.testing.assert_array_equal(mn.ntk(loaded, phi), mn.ntk(mps, phi))
    # a str path works too
    mps.save(str(tmp_path / "again.npz"))
    assert_same_model(mps, mn.MPS.load(str(tmp_path / "again.npz")))


def test_save_load_hand_built_model(tmp_path):
    rng = np.random.default_rng(22)
    cores = [rng.standard_normal((3, 1, 2)), rng.standard_normal((2, 3, 2, 2)),
             rng.standard_normal((3, 2, 1))]
    mps = mn.MPS(cores, scales=[0.5, 2.0, 1.5], site_lr=[0.0, 1.0, 0.25], output_site=1)
    assert mps.parametrization is None
    mps.save(tmp_path / "hand.npz")
    loaded = mn.MPS.load(tmp_path / "hand.npz")
    assert_same_model(mps, loaded)
    assert loaded.parametrization is None
    assert loaded.site_lr.tolist() == [0.0, 1.0, 0.25]
    phi = features(4, 3, 3)
    np.testing.assert_array_equal(loaded(phi), mps(phi))


# --------------------------------------------------------------------------- file names


@pytest.mark.parametrize("name", ["model", "model.npz"])
def test_save_load_round_trip_with_and_without_suffix(tmp_path, name):
    mps = mn.MPS.random(4, 3, n_outputs=2, seed=5, parametrization="standard")
    mps.save(tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    for path in (tmp_path / name, str(tmp_path / name), tmp_path / "model",
                 tmp_path / "model.npz"):
        back = mn.MPS.load(path)
        assert all(np.array_equal(a, b) for a, b in zip(back.cores, mps.cores))
        assert np.array_equal(back.scales, mps.scales)
        assert np.array_equal(back.site_lr, mps.site_lr)
        assert back.output_site == mps.output_site and back.parametrization == "standard"


def test_load_prefers_the_exact_name_and_reports_both_names(tmp_path):
    a, b = mn.MPS.random(3, 2, seed=1), mn.MPS.random(3, 2, seed=2)
    a.save(tmp_path / "m.npz")
    (tmp_path / "m.npz").rename(tmp_path / "m")  # a file named exactly "m"
    b.save(tmp_path / "m")  # numpy writes m.npz
    assert np.array_equal(mn.MPS.load(tmp_path / "m").cores[0], a.cores[0])
    assert np.array_equal(mn.MPS.load(tmp_path / "m.npz").cores[0], b.cores[0])
    with pytest.raises(FileNotFoundError, match=r"'.*missing' nor '.*missing\.npz'"):
        mn.MPS.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"no MPS file '.*missing\.npz'"):
        mn.MPS.load(tmp_path / "missing.npz")


# --------------------------------------------------------------------------- bad files


def test_load_rejects_foreign_files(tmp_path, model):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.ones(3))
    with pytest.raises(ValueError, match=r"not an mpsntk MPS file"):
        mn.MPS.load(other)

    npy = tmp_path / "array.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(ValueError, match=r"not an mpsntk MPS file"):
        mn.MPS.load(npy)

    text = tmp_path / "notes.txt"
    text.write_text("not a numpy file\n")
    with pytest.raises(ValueError, match=r"not an mpsntk MPS file"):
        mn.MPS.load(text)

    good = tmp_path / "model.npz"
    model.save(good)
    data = dict(np.load(good))
    newer = tmp_path / "newer.npz"
    np.savez(newer, **{**data, "format_version": np.array(999)})
    with pytest.raises(ValueError, match=r"not an mpsntk MPS file"):
        mn.MPS.load(newer)
    truncated = tmp_path / "truncated.npz"
    np.savez(truncated, **{k: v for k, v in data.items() if k != "core_2"})
    with pytest.raises(ValueError, match=r"missing core_2"):
        mn.MPS.load(truncated)
    corrupt = tmp_path / "corrupt.npz"
    np.savez(corrupt, **{**data, "core_1": np.full_like(data["core_1"], np.nan)})
    with pytest.raises(ValueError, match=r"cores\[1\] must be finite"):
        mn.MPS.load(corrupt)
    with pytest.raises(FileNotFoundError):
        mn.MPS.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("corrupt", ["truncated", "garbage", "member", "n_sites-huge",
                                     "n_sites-negative", "n_sites-array", "n_sites-float"])
def test_load_of_a_damaged_file_is_a_value_error_naming_it(tmp_path, model, corrupt):
    import time

    good = tmp_path / "good.npz"
    model.save(good)
    raw = good.read_bytes()
    path = tmp_path / f"{corrupt}.npz"
    if corrupt == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif corrupt == "garbage":
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    elif corrupt == "member":  # a core's bytes damaged inside an intact archive
        at = raw.index(b"core_1.npy") + 200
        path.write_bytes(raw[:at] + b"\xff" * 16 + raw[at + 16:])
    else:
        data = dict(np.load(good))
        data["n_sites"] = {"n_sites-huge": np.array(10**12), "n_sites-negative": np.array(-3),
                           "n_sites-array": np.arange(4), "n_sites-float": np.array(4.0)}[corrupt]
        np.savez(path, **data)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"{corrupt}\.npz: (corrupt|not an mpsntk)"):
        mn.MPS.load(path)
    assert time.perf_counter() - start < 2.0  # the header is checked first


def test_load_prefers_the_saved_file_over_a_folder_of_the_same_name(tmp_path, model):
    (tmp_path / "m").mkdir()
    model.save(tmp_path / "m")  # writes m.npz
    assert np.array_equal(mn.MPS.load(tmp_path / "m").cores[1], model.cores[1])
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="a folder, not an MPS file"):
        mn.MPS.load(tmp_path / "d")
