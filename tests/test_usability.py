"""Usability of the Python layer: arguments are checked early and errors name them.

Covers ``compare_mse`` / ``compare_born`` validating every argument before the training run,
the 0-based index convention of the documented scales, the demo's command line (argparse errors
for bad values, the theory estimate of the finite-D fluctuation next to the measured one),
``train``'s argument checks (``log_steps``, ``callbacks``, ``seed``, ``feature_scale``, the
bool flags, the dtype of the targets), ``born.sample``'s seed, and the length of the value
descriptions in error messages (save and load: test_save_load.py).
"""

from __future__ import annotations

import pathlib
import re
import time

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import born, compare, demo
from mpsntk._validate import _describe
from mpsntk.train import max_ntk_eigenvalue, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


class TrainingStarted(Exception):
    """Raised by the stand-in for train: the call got past the argument checks."""


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise TrainingStarted

    monkeypatch.setattr(compare, "train", refuse)


def _mse_setting(n_outputs=1, dtype=np.float64):
    rng = np.random.default_rng(0)
    phi = mn.features.trig(rng.uniform(size=(10, 5)), dtype=dtype)
    shape = (6, n_outputs) if n_outputs > 1 else (6,)
    y = rng.standard_normal(shape).astype(dtype)
    return phi, y


def _raw(mps):
    """The same model built from its cores: not drawn by MPS.random, so no known sigma."""
    return mn.MPS(mps.cores, mps.boundary, scales=mps.scales, site_lr=mps.site_lr,
                  output_site=mps.output_site)


# --------------------------------------------------------------------------- compare: early checks


def test_compare_mse_valid_call_reaches_training(no_training):
    phi, y = _mse_setting()
    mps = mn.MPS.random(5, 4, seed=1)
    with pytest.raises(TrainingStarted):  # the stand-in is what runs, so the tests below bite
        compare.compare_mse(mps, phi[:6], y, phi[6:], learning_rate=0.1, n_steps=5,
                            n_ensemble=2)
    with pytest.raises(TrainingStarted):  # sigma given: a raw model is fine
        compare.compare_mse(_raw(mps), phi[:6], y, learning_rate=0.1, n_steps=5, sigma=1.0)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"n_ensemble": -1}, ValueError, r"n_ensemble must be an integer >= 0; got -1"),
        ({"n_ensemble": 1}, ValueError, r"n_ensemble must be 0 .* or >= 2"),
        ({"n_ensemble": 2.0}, TypeError, r"n_ensemble must be an integer"),
        ({"n_ensemble": 3, "phi_test": None}, ValueError, r"n_ensemble = 3 needs phi_test"),
        ({"seed": "abc"}, TypeError, r"seed must be an integer >= 0"),
        ({"sigma": 0.0}, ValueError, r"sigma must be > 0"),
        ({"sigma": [1.0, 2.0]}, ValueError, r"sigma must be a real scalar or an array of shape"),
    ],
)
def test_compare_mse_rejects_before_training(no_training, kwargs, exc, match):
    phi, y = _mse_setting()
    mps = mn.MPS.random(5, 4, seed=1)
    args = dict(phi_test=phi[6:], learning_rate=0.1, n_steps=5)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        compare.compare_mse(mps, phi[:6], y, **args)


def test_compare_mse_needs_sigma_and_a_scalar_random_model_before_training(no_training):
    phi, y = _mse_setting()
    raw = _raw(mn.MPS.random(5, 4, seed=1))
    with pytest.raises(ValueError, match=r"sigma is needed .* pass sigma="):
        compare.compare_mse(raw, phi[:6], y, phi[6:], learning_rate=0.1, n_steps=5)
    with pytest.raises(ValueError, match=r"n_ensemble = 2 needs a model drawn by MPS.random"):
        compare.compare_mse(raw, phi[:6], y, phi[6:], learning_rate=0.1, n_steps=5, sigma=1.0,
                            n_ensemble=2)
    phi3, y3 = _mse_setting(n_outputs=3)
    multi = mn.MPS.random(5, 4, n_outputs=3, seed=1)
    with pytest.raises(ValueError, match=r"needs a scalar-output model"):
        compare.compare_mse(multi, phi3[:6], y3, phi3[6:], learning_rate=0.1, n_steps=5,
                            n_ensemble=2)


def test_compare_mse_rejects_a_long_run_at_once():
    """No stand-in: 10**6 real steps take over a minute, the checks a few milliseconds."""
    phi, y = _mse_setting()
    raw = _raw(mn.MPS.random(5, 4, seed=1))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"sigma is needed"):
        compare.compare_mse(raw, phi[:6], y, phi[6:], learning_rate=0.01, n_steps=10**6)
    assert time.perf_counter() - start < 10.0


def test_compare_born_rejects_before_training(no_training):
    data = mn.datasets.bars_and_stripes(2, 2)
    mps = mn.MPS.random(4, 3, seed=0)
    with pytest.raises(TrainingStarted):
        compare.compare_born(mps, data, learning_rate=0.1, n_steps=5)
    with pytest.raises(ValueError, match=r"sigma is needed"):
        compare.compare_born(_raw(mps), data, learning_rate=0.1, n_steps=5)
    with pytest.raises(TrainingStarted):
        compare.compare_born(_raw(mps), data, learning_rate=0.1, n_steps=5, sigma=1.0)
    with pytest.raises(ValueError, match=r"sigma must be > 0"):
        compare.compare_born(mps, data, learning_rate=0.1, n_steps=5, sigma=-1.0)
    with pytest.raises(ValueError, match=r"Born machine needs a scalar-output MPS"):
        compare.compare_born(mn.MPS.random(4, 3, n_outputs=2, seed=0), data, learning_rate=0.1,
                             n_steps=5)


def test_compare_mse_ensemble_still_runs():
    phi, y = _mse_setting()
    mps = mn.MPS.random(5, 4, seed=1)
    eta = 0.1 / np.linalg.eigvalsh(mn.ntk_infinite(phi[:6])).max()
    c = compare.compare_mse(mps, phi[:6], y, phi[6:], learning_rate=eta, n_steps=4,
                            reduction="sum", n_ensemble=2, seed=3)
    assert c.ensemble["n"] == 2 and c.ensemble["var"].shape == (4,)
    assert np.all(np.isfinite(c.ensemble["var"]))


# --------------------------------------------------------------------------- index conventions


def test_documented_scales_use_zero_based_bonds():
    bonds = [1, 2, 3, 5, 1]
    sigma = np.array([0.5, 1.0, 1.5, 2.0])
    ntp = mn.MPS.random(4, bonds, sigma=sigma, seed=0)
    sp = mn.MPS.random(4, bonds, sigma=sigma, parametrization="standard", seed=0)
    for j in range(4):  # core j has shape (phys_dim, D_j, D_{j+1})
        assert ntp.cores[j].shape == (2, bonds[j], bonds[j + 1])
        fan = bonds[j] * bonds[j + 1]
        assert ntp.scales[j] == pytest.approx(sigma[j] * fan**-0.25, rel=1e-14)
        assert sp.site_lr[j] == pytest.approx(fan**-0.5, rel=1e-14)


def test_docs_do_not_mix_index_conventions():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    conventions = readme.split("### Conventions", 1)[1].split("###", 1)[0]
    assert "(phys_dim, D_j, D_{j+1})" in conventions
    assert "D_j D_{j+1}" in conventions
    assert "D_{j-1}D_j)^" not in conventions and "√(D_{j-1}D_j)" not in conventions
    for doc in (mn.mps.__doc__, mn.MPS.__doc__, mn.MPS.random.__doc__):
        assert "D_{j-1} D_j)" not in doc.replace("its ``D_{j-1} D_j``", "")
        assert "D_{c-1}" not in doc


# --------------------------------------------------------------------------- demo


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--n-train", "0"], "--n-train"),
        (["--n-train", "-5"], "--n-train"),
        (["--n-test", "0"], "--n-test"),
        (["--bond-dim", "0"], "--bond-dim"),
        (["--bond-dim", "-1"], "--bond-dim"),
        (["--bond-dim", "two"], "--bond-dim"),
        (["--seed", "-1"], "--seed"),
        (["--pool", "3"], "--pool"),
    ],
)
def test_demo_rejects_bad_options(capsys, argv, option):
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {option}:" in err and "Traceback" not in err


def test_demo_rejects_more_images_than_the_data_set(capsys):
    pytest.importorskip("sklearn")
    for argv in (["--n-train", "2000"], ["--n-train", "1500", "--n-test", "400"]):
        with pytest.raises(SystemExit) as info:
            demo.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "--n-train + --n-test must be <= 1797" in err


def test_demo_rejects_a_bond_dimension_beyond_memory(capsys):
    pytest.importorskip("sklearn")
    with pytest.raises(SystemExit) as info:
        demo.main(["--bond-dim", str(10**7)])
    assert info.value.code == 2
    assert "--bond-dim 10000000 is too large" in capsys.readouterr().err


def test_fluctuation_estimate_is_the_spec_formula():
    assert demo.fluctuation_estimate(64, 32) == pytest.approx(np.sqrt(2 * 63 / 32))
    assert demo.fluctuation_estimate(6, 10) == pytest.approx(1.0)


def _measured_and_estimate(out):
    measured = float(re.search(r"measured .* = ([0-9.]+)", out).group(1))
    estimate = float(re.search(r"sqrt\(2\(N-1\)/D\) = sqrt\(2\*\d+/\d+\) = ([0-9.]+)", out)
                     .group(1))
    return measured, estimate


def test_demo_prints_the_estimate_and_flags_small_bond_dimensions(capsys):
    pytest.importorskip("sklearn")
    demo.main(["--n-train", "40", "--n-test", "20", "--bond-dim", "4"])
    out = capsys.readouterr().out
    assert "sqrt(2(N-1)/D) = sqrt(2*63/4) = 5.612" in out
    measured, estimate = _measured_and_estimate(out)
    assert measured > 0 and estimate == pytest.approx(5.612, abs=1e-3)
    assert "D = 4 is not >> N = 64" in out and "not an error" in out
    assert "empirical NTK (D = 4): test accuracy" in out


def test_demo_with_large_bond_dimension_agrees_with_the_estimate(capsys):
    pytest.importorskip("sklearn")
    demo.main(["--n-train", "60", "--n-test", "20", "--bond-dim", "256", "--pool", "4"])
    out = capsys.readouterr().out
    assert "4 sites" in out
    assert "D = 256 >> N = 4" in out and "not >>" not in out
    measured, estimate = _measured_and_estimate(out)
    assert estimate == pytest.approx(np.sqrt(6 / 256), abs=1e-3)
    assert 0.2 * estimate < measured < 3 * estimate


# --------------------------------------------------------------------------- train arguments


def _small():
    rng = np.random.default_rng(3)
    mps = mn.MPS.random(5, 4, seed=0)
    phi = mn.features.trig(rng.uniform(size=(8, 5)))
    return mps, phi, rng.standard_normal(8)


def test_empty_log_steps_logs_nothing_but_trains():
    mps, phi, y = _small()
    res = train(mps, phi, y, learning_rate=0.05, n_steps=3, probe=phi[:3], log_steps=[])
    assert res.steps.shape == (0,) and res.loss.shape == (0,) and res.callbacks == []
    assert res.probe_outputs.shape == (0, 3) and res.probe_outputs.dtype == np.float64
    full = train(mps, phi, y, learning_rate=0.05, n_steps=3, log_steps=[3])
    assert all(np.array_equal(a, b) for a, b in zip(res.mps.cores, full.mps.cores))
    assert not np.array_equal(res.mps.cores[2], mps.cores[2])

    multi = mn.MPS.random(5, 4, n_outputs=3, seed=0)
    y3 = np.zeros((8, 3))
    res = train(multi, phi, y3, learning_rate=0.05, n_steps=2, probe=phi, log_steps=())
    assert res.probe_outputs.shape == (0, 8, 3)

    x = mn.datasets.bars_and_stripes(2, 2)
    res = train(mn.MPS.random(4, 3, seed=0), x, loss="born_nll", learning_rate=0.1, n_steps=2,
                probe=x, log_steps=[])
    assert res.probe_outputs.shape == (0, len(x))


def test_log_steps_must_be_a_sequence_of_integers():
    mps, phi, y = _small()
    for bad in ("0", 2):
        with pytest.raises(TypeError, match=r"log_steps must be a 1-D sequence of integers"):
            train(mps, phi, y, learning_rate=0.05, n_steps=3, log_steps=bad)
    with pytest.raises(TypeError, match=r"log_steps entries must be an integer"):
        train(mps, phi, y, learning_rate=0.05, n_steps=3, log_steps=[0, 1.5])


def test_a_single_callback_is_accepted():
    mps, phi, y = _small()
    seen = []

    def cb(step, model):
        seen.append(step)
        return {"step": step}

    one = train(mps, phi, y, learning_rate=0.05, n_steps=4, log_every=2, callbacks=cb)
    assert seen == [0, 2, 4] and [c["step"] for c in one.callbacks] == [0, 2, 4]
    many = train(mps, phi, y, learning_rate=0.05, n_steps=4, log_every=2, callbacks=[cb])
    assert one.callbacks == many.callbacks


def test_bad_callbacks_are_named():
    mps, phi, y = _small()
    with pytest.raises(TypeError, match=r"callbacks must be a callable or a sequence of callables"):
        train(mps, phi, y, learning_rate=0.05, n_steps=1, callbacks=5)
    with pytest.raises(TypeError, match=r"callbacks\[1\] must be callable; got 'x' of type str"):
        train(mps, phi, y, learning_rate=0.05, n_steps=1, callbacks=[print, "x"])
    with pytest.raises(TypeError, match=r"callbacks\[0\] must return a dict or None; returned 3"):
        train(mps, phi, y, learning_rate=0.05, n_steps=1, callbacks=lambda step, m: 3)


@pytest.mark.parametrize(
    "seed, exc", [("abc", TypeError), (1.5, TypeError), (True, TypeError), (-1, ValueError)]
)
def test_bad_seeds_are_named(seed, exc):
    mps, phi, y = _small()
    match = r"seed must be None, an integer >= 0 or a numpy.random.Generator"
    with pytest.raises(exc, match=match):
        train(mps, phi, y, learning_rate=0.05, n_steps=1, seed=seed)
    with pytest.raises(exc, match=match):
        born.sample(mps, 3, seed=seed)
    with pytest.raises(exc, match=match):
        max_ntk_eigenvalue(mps, phi, seed=seed)


def test_good_seeds_are_reproducible():
    mps, phi, y = _small()
    a = train(mps, phi, y, learning_rate=0.05, n_steps=6, batch_size=3, seed=np.int64(4))
    b = train(mps, phi, y, learning_rate=0.05, n_steps=6, batch_size=3,
              seed=np.random.default_rng(4))
    assert np.array_equal(a.loss, b.loss)
    assert np.array_equal(born.sample(mps, 5, seed=2), born.sample(mps, 5, seed=2))


def test_feature_scale_is_named_and_only_for_born_machines():
    x = mn.datasets.bars_and_stripes(2, 2)
    mps = mn.MPS.random(4, 3, seed=0)
    for bad, exc in ((-1.0, ValueError), (0.0, ValueError), ("big", TypeError)):
        with pytest.raises(exc, match=r"^feature_scale must be a positive finite real"):
            train(mps, x, loss="born_nll", learning_rate=0.1, n_steps=1, feature_scale=bad)
    a = train(mps, x, loss="born_nll", learning_rate=0.1, n_steps=1, feature_scale=1.0)
    b = train(mps, x, loss="born_nll", learning_rate=0.1, n_steps=1)
    assert np.array_equal(a.loss, b.loss)
    m, phi, y = _small()
    with pytest.raises(ValueError, match=r"feature_scale applies to loss='born_nll' only"):
        train(m, phi, y, learning_rate=0.05, n_steps=1, feature_scale=0.5)


@pytest.mark.parametrize(
    "name, value",
    [("check_stability", v) for v in ("no", 0, 1, None)] + [("progress", v) for v in ("no", 0, 1)],
)
def test_flags_must_be_bools(name, value):
    mps, phi, y = _small()
    with pytest.raises(TypeError, match=rf"{name} must be True or False"):
        train(mps, phi, y, learning_rate=0.05, n_steps=1, **{name: value})


def test_check_stability_false_skips_the_check():
    mps, phi, y = _small()
    lam = max_ntk_eigenvalue(mps, phi)
    with pytest.raises(ValueError, match="unstable"):
        train(mps, phi, y, learning_rate=3.0 / lam, n_steps=1, reduction="sum")
    train(mps, phi, y, learning_rate=3.0 / lam, n_steps=1, reduction="sum",
          check_stability=False)


@pytest.mark.parametrize(
    "y, match",
    [
        (np.ones(8, dtype=bool), r"y must be a real array of the model's dtype float64 .* bool"),
        (np.ones(8, dtype=complex), r"y must be a real array .* complex128"),
        (np.ones(8, dtype=np.int64), r"y must be a real array .* int64"),
        (np.ones(8, dtype=np.float32), r"y must be a real array .* float32"),
    ],
)
def test_mse_targets_of_the_wrong_dtype_are_type_errors(y, match):
    mps, phi, _ = _small()
    with pytest.raises(TypeError, match=match):
        train(mps, phi, y, learning_rate=0.05, n_steps=1)


def test_float64_targets_for_a_float32_model_are_refused_not_cast():
    phi, y = _mse_setting(dtype=np.float32)
    mps = mn.MPS.random(5, 4, seed=1, dtype=np.float32)
    with pytest.raises(TypeError, match=r"y must be a real array of the model's dtype float32 "
                                        r".*got dtype float64 .*y.astype\(numpy.float32\)"):
        train(mps, phi[:6], y.astype(np.float64), learning_rate=0.05, n_steps=1)
    res = train(mps, phi[:6], y, learning_rate=0.05, n_steps=2, probe=phi)
    assert res.probe_outputs.dtype == np.float32 and res.mps.dtype == np.float32
    with pytest.raises(ValueError, match=r"y must be finite"):
        train(mps, phi[:6], np.full(6, np.nan, dtype=np.float32), learning_rate=0.05, n_steps=1)


def test_class_labels_of_the_wrong_dtype_are_type_errors():
    mps = mn.MPS.random(5, 4, n_outputs=3, seed=0)
    _, phi, _ = _small()
    for bad in (np.zeros(8), np.zeros(8, dtype=bool)):
        with pytest.raises(TypeError, match=r"y must be integer class labels .* got dtype"):
            train(mps, phi, bad, loss="cross_entropy", learning_rate=0.05, n_steps=1)
    with pytest.raises(ValueError, match=r"y must be integer class labels of shape \(8,\)"):
        train(mps, phi, np.zeros((8, 1), int), loss="cross_entropy", learning_rate=0.05,
              n_steps=1)


# --------------------------------------------------------------------------- error message size


def test_error_messages_quote_huge_values_briefly():
    mps = mn.MPS.random(3, 2, seed=0)
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(4, 3)))
    with pytest.raises(TypeError) as info:
        mn.ntk(mps, phi, out=[[0.0] * 10**4] * 10**3)
    msg = str(info.value)
    assert msg.startswith("out must be a numpy.ndarray") and len(msg) < 250
    assert "... of type list of length 1000" in msg


def test_describe_keeps_short_values_and_types():
    assert _describe("abc") == "'abc' of type str"
    assert _describe(1.5) == "1.5 of type float"
    assert _describe([1, 2, 3]) == "[1, 2, 3] of type list"
    assert _describe(np.zeros((2, 3), np.float32)) == (
        "an array of shape (2, 3) and dtype float32")
    long = _describe("x" * 500)
    assert long.endswith(" of type str") and len(long) <= 80 + len(" of type str")
    nested = _describe({"k": list(range(10**5))})
    assert len(nested) < 120 and "of type dict" in nested
