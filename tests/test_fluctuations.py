"""Finite-D fluctuation statistics (mpsntk.diagnostics._fluctuations) against independent
oracles: the dense reference NTK, plain-NumPy Gaussian matrix chains, exact power laws."""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _reference as ref
from mpsntk.diagnostics._fluctuations import (
    fit_power_law,
    fluctuation_scaling,
    kernel_statistics,
    kurtosis_open_chain,
    output_kurtosis,
)


def _phi(m=4, n_sites=5, seed=0):
    return mn.features.trig(np.random.default_rng(seed).uniform(size=(m, n_sites)))


@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_kernel_statistics_are_the_moments_of_the_drawn_models(boundary):
    """Three draws from one generator, recomputed with the dense oracle."""
    phi = _phi()
    st = kernel_statistics(phi, 3, 3, boundary=boundary, seed=np.random.default_rng(5))
    rng = np.random.default_rng(5)
    models = [mn.MPS.random(5, 3, boundary=boundary, seed=rng) for _ in range(3)]
    thetas = np.array([ref.ntk(m, phi) for m in models])
    outs = np.array([ref.forward(m, phi) for m in models])
    ffs = outs[:, :, None] * outs[:, None, :]
    inf = mn.ntk_infinite(phi)
    devs = np.linalg.norm(thetas - inf, axis=(1, 2)) / np.linalg.norm(inf)
    np.testing.assert_allclose(st.ntk_mean, thetas.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.ntk_se, thetas.std(0, ddof=1) / np.sqrt(3), rtol=1e-9)
    np.testing.assert_allclose(st.nngp_mean, ffs.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(st.nngp_se, ffs.std(0, ddof=1) / np.sqrt(3), rtol=1e-9)
    np.testing.assert_allclose(st.nngp_infinite, mn.nngp_infinite(phi), rtol=1e-15)
    assert st.rel_dev_mean == pytest.approx(devs.mean(), rel=1e-12)
    assert st.rel_dev_std == pytest.approx(devs.std(ddof=1), rel=1e-9)
    assert st.max_cov_err == pytest.approx(np.abs(ffs.mean(0) - mn.nngp_infinite(phi)).max())


def test_mean_ntk_is_the_limit_and_a_wrong_limit_is_rejected():
    phi = _phi(seed=1)
    st = kernel_statistics(phi, 4, 3000, seed=2)
    # 10 distinct entries; heavy tails at D = 4 make the SE itself noisy: a z bound of 5
    # (as in test_theory's T1) fails with probability well below 1e-3.
    iu = np.triu_indices(4)
    assert st.ntk_z[iu].max() < 5 and st.nngp_z[iu].max() < 5
    wrong = np.abs(st.ntk_mean - 1.25 * st.ntk_infinite)[iu] / st.ntk_se[iu]
    assert wrong.max() > 5


def test_kurtosis_law_closed_forms():
    assert kurtosis_open_chain(1, 7) == 3.0  # one site: f is Gaussian
    assert kurtosis_open_chain(2, 4) == pytest.approx(3 * 1.5)
    assert kurtosis_open_chain(6, 4) == pytest.approx(22.78125)  # theory 3.3: 22.78
    assert kurtosis_open_chain(3, [1, 2, 5, 1]) == pytest.approx(3 * 2 * 1.4)


def test_kurtosis_law_against_plain_gaussian_chains():
    """f = g_1^T G_2 g_3 with iid N(0, 1) entries (bonds 3, 5), drawn with NumPy alone."""
    rng = np.random.default_rng(0)
    n = 400_000
    a = rng.standard_normal((n, 3))
    b = rng.standard_normal((n, 3, 5))
    c = rng.standard_normal((n, 5))
    f = np.einsum("na,nab,nb->n", a, b, c)
    m2, m4, m8 = np.mean(f**2), np.mean(f**4), np.mean(f**8)
    kurt = m4 / m2**2
    exact = kurtosis_open_chain(3, [1, 3, 5, 1])
    # Var of the m4 estimate dominates the ratio's error: |err| < 5 sd of m4 / m2^2.
    sd = np.sqrt((m8 - m4**2) / n) / m2**2
    assert abs(kurt - exact) < 5 * sd, (kurt, exact, sd)
    assert abs(3.0 - exact) > 20 * sd  # a Gaussian output would be rejected


def test_output_kurtosis_of_the_engine_matches_the_law():
    phi = _phi(m=2, n_sites=4, seed=3)
    k = output_kurtosis(phi, 8, 12000, seed=4)
    exact = kurtosis_open_chain(4, 8)  # 3 (1.25)^3 = 5.86
    assert k.kurtosis.shape == (2,) and np.all(k.se > 0)
    assert np.all(np.abs(k.kurtosis - exact) < 4 * k.se), (k.kurtosis, k.se, exact)
    assert np.all(np.abs(k.kurtosis - 3.0) > 4 * k.se)  # not Gaussian at this D
    # E f^2 = K(x, x) = 1 for the trigonometric map with sigma = 1.
    assert np.all(np.abs(k.second_moment - 1) < 0.1)


def test_fit_power_law_exact_and_calibrated():
    x = np.array([8, 16, 32, 64, 128, 256.0])
    y = 2.5 * x**-0.5
    fit = fit_power_law(x, y, 0.01 * y)
    assert fit.slope == pytest.approx(-0.5, abs=1e-12)
    assert fit.prefactor == pytest.approx(2.5, rel=1e-12)
    assert fit.slope_se == pytest.approx(0.01 / np.sqrt(np.sum((np.log(x) - np.log(x).mean())
                                                               ** 2)), rel=1e-9)
    np.testing.assert_allclose(fit(x), y, rtol=1e-12)
    ols = fit_power_law(x, y)
    assert ols.slope == pytest.approx(-0.5, abs=1e-12) and ols.slope_se < 1e-12
    # Calibration: with 5 % log-normal noise and its true SE, the slope's z-scores have unit
    # spread (400 fits: the sample sd of z is 1 +- 0.04, so [0.85, 1.15] is a wide margin).
    rng = np.random.default_rng(0)
    z = []
    for _ in range(400):
        noisy = y * np.exp(0.05 * rng.standard_normal(x.size))
        f = fit_power_law(x, noisy, 0.05 * noisy)
        z.append((f.slope + 0.5) / f.slope_se)
    assert 0.85 < np.std(z) < 1.15 and abs(np.mean(z)) < 0.2


def test_fluctuation_scaling_decreases_and_reports_the_fit():
    phi = _phi(m=4, n_sites=4, seed=6)
    sc = fluctuation_scaling(phi, [4, 16, 64], 60, seed=7)
    assert sc.mean.shape == (3,) and np.all(np.diff(sc.mean) < 0)
    assert sc.fit.n_points == 3 and -0.8 < sc.fit.slope < -0.25
    np.testing.assert_array_equal(sc.bond_dims, [4, 16, 64])


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda p: kernel_statistics(p[0], 3, 10), ValueError, "phi"),
        (lambda p: kernel_statistics(p, 3, 1), ValueError, "n_draws"),
        (lambda p: kernel_statistics(p, 0, 10), ValueError, "bond_dim"),
        (lambda p: kernel_statistics(p, 2.5, 10), TypeError, "bond_dim"),
        (lambda p: kernel_statistics(p, 3, 10, boundary="ring"), ValueError, "boundary"),
        (lambda p: kernel_statistics(p[:, :1], 3, 10, boundary="periodic"), ValueError,
         "n_sites >= 2"),
        (lambda p: kernel_statistics(p, 3, 10, sigma=-1.0), ValueError, "sigma"),
        (lambda p: kernel_statistics(np.where(p > 0.5, np.nan, p), 3, 10), ValueError,
         "finite"),
        (lambda p: kernel_statistics(p, 3, 10, progress=1), TypeError, "progress"),
        (lambda p: fluctuation_scaling(p, [4], 10), ValueError, "bond_dims"),
        (lambda p: fluctuation_scaling(p, [4, 4], 10), ValueError, "distinct"),
        (lambda p: output_kurtosis(p, 3, 1), ValueError, "n_draws"),
        (lambda p: kurtosis_open_chain(3, [2, 3, 3, 1]), ValueError, "D_0 = D_N = 1"),
        (lambda p: kurtosis_open_chain(3, "abc"), TypeError, "bond_dim"),
        (lambda p: fit_power_law([1, 2], [1.0, -1.0]), ValueError, "y"),
        (lambda p: fit_power_law([1, 2], [1.0, 2.0, 3.0]), ValueError, "y"),
        (lambda p: fit_power_law([2, 2, 2], [1.0, 2.0, 3.0]), ValueError, "distinct"),
        (lambda p: fit_power_law([1, 2], [1.0, 2.0]), ValueError, "3 points"),
        (lambda p: fit_power_law([1, 2], [1.0, 2.0], [0.1, 0.0]), ValueError, "y_se"),
    ],
)
def test_bad_input_raises_clear_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(_phi())
