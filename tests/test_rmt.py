"""Random-matrix statistics of mpsntk.diagnostics (theory 5.5) against quadrature, synthetic
ensembles with known laws, and the Tracy-Widom distribution recomputed from its Fredholm
determinant."""

from __future__ import annotations

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import diagnostics as dg


def _quadrature(g, pdf, lo, hi, upper=None, n=120):
    """int_lo^upper g(x) pdf(x) dx with x = c + r cos(theta): the square-root edges become a
    smooth integrand, which Gauss-Legendre integrates to rounding (independent of the CDFs)."""
    c, r = (hi + lo) / 2, (hi - lo) / 2
    theta_lo = 0.0 if upper is None else np.arccos(np.clip((upper - c) / r, -1, 1))
    u, w = np.polynomial.legendre.leggauss(n)
    theta = theta_lo + (np.pi - theta_lo) * (u + 1) / 2
    w = w * (np.pi - theta_lo) / 2
    x = c + r * np.cos(theta)
    return float(np.sum(w * g(x) * pdf(x) * r * np.sin(theta)))


def _mp_quadrature(g, gamma, upper=None):
    return _quadrature(g, lambda x: dg.marchenko_pastur_pdf(x, gamma),
                       *dg.marchenko_pastur_edges(gamma), upper)


@pytest.mark.parametrize("gamma", [0.05, 0.25, 0.5, 1.0])
def test_marchenko_pastur_normalisation_moments_and_cdf(gamma):
    lo, hi = dg.marchenko_pastur_edges(gamma)
    assert np.isclose(lo, (1 - np.sqrt(gamma)) ** 2) and np.isclose(hi, (1 + np.sqrt(gamma)) ** 2)
    one = np.ones_like
    assert abs(_mp_quadrature(one, gamma) - 1) < 1e-11
    assert abs(_mp_quadrature(lambda x: x, gamma) - 1) < 1e-11
    assert abs(_mp_quadrature(lambda x: (x - 1) ** 2, gamma) - gamma) < 1e-11
    for x in np.linspace(lo, hi, 9)[1:-1]:
        assert abs(dg.marchenko_pastur_cdf(x, gamma) - _mp_quadrature(one, gamma, x)) < 1e-11
    assert dg.marchenko_pastur_cdf(lo, gamma) == 0 and dg.marchenko_pastur_cdf(hi, gamma) == 1
    assert dg.marchenko_pastur_cdf(hi + 1, gamma) == 1
    assert dg.marchenko_pastur_cdf(-1, gamma) == 0
    assert dg.marchenko_pastur_pdf(hi + 0.1, gamma) == 0
    assert dg.marchenko_pastur_pdf(-0.1, gamma) == 0


def test_semicircle_normalisation_variance_and_cdf():
    def quad(g, upper=None):
        return _quadrature(g, dg.semicircle_pdf, -2.0, 2.0, upper)

    assert abs(quad(np.ones_like) - 1) < 1e-12
    assert abs(quad(lambda x: x)) < 1e-12 and abs(quad(lambda x: x**2) - 1) < 1e-12
    for x in (-1.5, -0.3, 0.0, 0.7, 1.9):
        assert abs(dg.semicircle_cdf(x) - quad(np.ones_like, x)) < 1e-12
    assert dg.semicircle_cdf(2.0) == 1 and dg.semicircle_cdf(-3.0) == 0


def test_ks_distance_of_wishart_is_small_and_of_a_wrong_law_large():
    rng = np.random.default_rng(0)
    spec = dg.matrix_spectrum(rng.standard_normal((1000, 500)), variance=1.0)
    assert spec.gamma == 0.5 and spec.shape == (1000, 500) and spec.law == "marchenko-pastur"
    assert dg.ks_distance(spec.eigenvalues, spec.cdf) < 0.01  # about 2.6 / 500
    assert dg.ks_distance(spec.eigenvalues, lambda x: dg.marchenko_pastur_cdf(x, 0.25)) > 0.1
    assert dg.ks_distance(rng.uniform(0.5, 1.5, 1000), spec.cdf) > 0.1
    # The KS statistic by its definition, on a tiny sample: F = x on [0, 1].
    assert dg.ks_distance([0.1, 0.2, 0.9], lambda x: x) == pytest.approx(max(2 / 3 - 0.2, 0.1))


def test_wide_matrices_are_transposed_and_estimated_variance_gives_mean_one():
    rng = np.random.default_rng(1)
    a = 3.0 * rng.standard_normal((40, 100))
    spec = dg.matrix_spectrum(a)  # variance estimated: mean square entry
    assert spec.shape == (100, 40) and spec.gamma == 0.4
    assert spec.variance == pytest.approx(np.mean(a**2))
    want = np.linalg.eigvalsh(a @ a.T) / (100 * np.mean(a**2))  # X = M^T M / (p v), M = a^T
    assert np.allclose(spec.eigenvalues[0], want, rtol=1e-10)
    assert spec.eigenvalues[0].mean() == pytest.approx(1.0, rel=1e-12)


def test_tracy_widom_table_matches_the_fredholm_determinant():
    special = pytest.importorskip("scipy.special")
    u, w = np.polynomial.legendre.leggauss(40)  # converged: 80 nodes agree to 1e-15
    u, w = 8.0 * (u + 1), 8.0 * w  # L^2(0, 16): Ai(s + u + v) is below 1e-20 beyond

    def f1(s):  # F_1(s) = det(I - Ai(s + u + v)) (Ferrari & Spohn 2005), Nystrom (Bornemann)
        k = np.sqrt(w)[:, None] * special.airy(s + u[:, None] + u[None, :])[0] * np.sqrt(w)
        return np.linalg.det(np.eye(u.size) - k)

    for level in (0.5, 0.1, 0.05, 0.01, 0.001, 1e-4):
        s = dg.tracy_widom_quantile(level)
        assert abs((1 - f1(s)) - level) < 2e-6 * max(level, 1e-2), level
    # The formula itself, against the literature's moments of TW_1 (mean -1.2065, standard
    # deviation 1.2680): E S = int_0^inf (1 - F) - int_-inf^0 F, E S^2 = 2 int |s| (1[s>0] - F).
    x = np.linspace(0, 8, 81)
    right = 1 - np.array([f1(v) for v in x])  # 1 - F(s), s >= 0
    left = np.array([f1(-v) for v in x])  # F(-s)
    mean = np.trapezoid(right - left, x)
    sd = np.sqrt(np.trapezoid(2 * x * (right + left), x) - mean**2)
    assert abs(mean - (-1.2065)) < 2e-3 and abs(sd - 1.2680) < 2e-3


def test_tracy_widom_rule_flags_a_spike_and_not_pure_noise():
    """False-alarm level 1 %: 500 pure Wishart matrices (60 x 30, known variance) raise 5 false
    alarms on average (Johnstone's approximation is accurate at these sizes: 0.85 % measured
    over 2000 draws); more than 15 has probability < 1e-4 under Binomial(500, 0.01), and still
    < 1e-2 if the true level were 1.5 %.  A spike of strength 4 (far above the BBP transition
    sqrt(gamma) = 0.71) is flagged in every draw, alone."""
    rng = np.random.default_rng(5)
    n, p = 60, 30
    threshold = dg.edge_threshold(n, p, 0.01)
    assert threshold > dg.marchenko_pastur_edges(p / n)[1]
    alarms = 0
    for _ in range(500):
        top = np.linalg.svd(rng.standard_normal((n, p)), compute_uv=False)[0] ** 2 / n
        alarms += top > threshold
    assert alarms <= 15
    v = rng.standard_normal(p)
    v /= np.linalg.norm(v)
    root = np.eye(p) + (np.sqrt(1 + 4.0) - 1) * np.outer(v, v)  # covariance I + 4 v v^T
    for _ in range(20):
        spec = dg.matrix_spectrum(rng.standard_normal((n, p)) @ root, variance=1.0)
        stats = dg.spectral_statistics(spec, false_alarm=0.01)
        assert stats.n_outliers == 1 and stats.outliers[0] == stats.top[0]
    # The threshold approaches the edge as the matrix grows (the TW scale is O(n^(-2/3))).
    gaps = [dg.edge_threshold(k, k // 2, 0.01) - dg.marchenko_pastur_edges(0.5)[1]
            for k in (100, 1000, 10000)]
    assert gaps[0] > gaps[1] > gaps[2] > 0


@pytest.mark.parametrize("kind", ["goe", "gue", "poisson"])
def test_spacing_ratio_references(kind):
    """<r~> of 24 GOE/GUE matrices of size 160 (about 2200 ratios; standard error about 0.005,
    measured between matrices) within 0.02 of the reference (4 standard errors; GOE and GUE
    differ by 0.07); Poisson levels (sorted uniform numbers: their spacings are exchangeable
    exponentials; 11960 ratios, standard error 0.002) within 0.008."""
    rng = np.random.default_rng({"goe": 10, "gue": 11, "poisson": 12}[kind])
    if kind == "poisson":
        ev, want, tol = rng.uniform(size=(20, 1000)), dg.R_TILDE_POISSON, 0.008
    else:
        g = rng.standard_normal((24, 160, 160))
        if kind == "gue":
            g = g + 1j * rng.standard_normal((24, 160, 160))
        ev = np.linalg.eigvalsh((g + np.conj(np.swapaxes(g, 1, 2))) / 2)
        want, tol = (dg.R_TILDE_GOE if kind == "goe" else dg.R_TILDE_GUE), 0.02
    r = dg.spacing_ratios(ev)
    assert abs(r.mean() - want) < tol
    assert np.all((r >= 0) & (r <= 1))
    assert r.size == ev.shape[0] * (int(ev.shape[1] - 2 * round(0.2 * ev.shape[1])) - 2)


def test_spacing_ratio_by_hand():
    ev = np.array([0.0, 1.0, 3.0, 4.0, 8.0])  # bulk=1: spacings 1, 2, 1, 4
    assert np.allclose(dg.spacing_ratios(ev, bulk=1.0), [1 / 2, 1 / 2, 1 / 4])


def test_symmetric_slices_follow_the_semicircle_and_goe_ratio():
    rng = np.random.default_rng(3)
    spec = dg.matrix_spectrum(rng.standard_normal((4, 200, 200)), symmetric=True, variance=1.0)
    assert spec.law == "semicircle" and spec.edges == (-2.0, 2.0)
    stats = dg.spectral_statistics(spec)
    assert stats.ks < 0.02 and abs(stats.mean) < 0.02 and abs(stats.var - 1) < 0.02
    # 472 bulk ratios: standard error 0.012, so 0.04 is more than 3 of them
    assert stats.n_ratios == 472 and abs(stats.r_tilde - dg.R_TILDE_GOE) < 0.04
    assert stats.n_outliers == 0


def test_mps_cores_at_init_follow_marchenko_pastur():
    """Theory T7: the left matricisation (2D x D, gamma = 1/2) at init.  The KS distance of one
    matrix's D eigenvalues is about 2.6 / D (0.009-0.012 at D = 256 over 8 seeds; pooling 16
    matrices of D = 128 gives 0.005): below 0.015 here.  <r~> of 150 bulk ratios: GOE-like."""
    mps = mn.MPS.random(3, 256, seed=4)
    spec = dg.core_spectrum(mps, 1, variance="init")
    assert spec.shape == (512, 256) and spec.gamma == 0.5 and spec.variance == 1.0
    stats = dg.spectral_statistics(spec)
    assert stats.ks < 0.015 and abs(stats.mean - 1) < 0.02 and abs(stats.var - 0.5) < 0.05
    assert abs(stats.r_tilde - dg.R_TILDE_GOE) < 0.06 and stats.n_outliers == 0
    assert stats.threshold > stats.edge


def test_core_matrices_are_the_documented_matricisations():
    rng = np.random.default_rng(6)
    cores = [rng.standard_normal(s) for s in [(3, 1, 9), (3, 9, 10), (2, 3, 10, 1)]]
    mps = mn.MPS(cores, output_site=2)
    core = cores[1]

    def eig(m, v):
        m = m if m.shape[0] >= m.shape[1] else m.T
        return np.linalg.eigvalsh(m.T @ m) / (m.shape[0] * v)

    left = dg.core_spectrum(mps, 1, variance=2.0)
    assert left.shape == (27, 10)
    assert np.allclose(left.eigenvalues[0], eig(core.reshape(27, 10), 2.0))
    right = dg.core_spectrum(mps, 1, matrix="right", variance=2.0)
    want = eig(np.concatenate([core[s] for s in range(3)], axis=1), 2.0)
    assert right.shape == (30, 9) and np.allclose(right.eigenvalues[0], want)
    slices = dg.core_spectrum(mps, 1, matrix="slices", variance=2.0)
    assert slices.eigenvalues.shape == (3, 9)
    assert np.allclose(slices.eigenvalues[2], eig(core[2], 2.0))
    label = dg.core_spectrum(mps, 2, matrix="slices")  # outputs join the physical index
    assert label.eigenvalues.shape == (6, 1)
    est = dg.core_spectrum(mps, 1)
    assert est.variance == pytest.approx(np.mean(core**2))
    standard = mn.MPS.random(4, 8, parametrization="standard", sigma=1.5, seed=0)
    assert dg.core_spectrum(standard, 1, variance="init").variance == pytest.approx(2.25 / 8)


def test_spectrum_monitor_flags_a_learned_spike_during_training():
    """A rank-one spike planted in core 2 shows as an outlier there and nowhere else; a few
    small gradient steps keep it."""
    rng = np.random.default_rng(7)
    mps = mn.MPS.random(4, 16, seed=7)
    core = mps.cores[2]
    u, v = rng.standard_normal(32), rng.standard_normal(16)
    core += 3 * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v)).reshape(core.shape) * 16
    phi = mn.features.trig(rng.uniform(size=(20, 4)))
    mon = dg.SpectrumMonitor(top_k=2)
    res = mn.train(mps, phi, rng.standard_normal(20), learning_rate=1e-3, n_steps=4, log_every=2,
                   callbacks=[mon], check_stability=False)
    assert mon.sites == [1, 2]
    for c in res.callbacks:
        assert list(c["rmt_n_outliers"]) == [0, 1]
        assert c["rmt_top"].shape == (2, 2) and c["rmt_top"][1, 0] > c["rmt_threshold"][1]
        assert c["rmt_ks"][1] > c["rmt_ks"][0]


def test_bad_input_is_refused():
    mps = mn.MPS.random(4, 4, seed=0)
    with pytest.raises(ValueError, match="site must be a site index in 0..3"):
        dg.core_spectrum(mps, 4)
    with pytest.raises(TypeError, match="site must be an integer"):
        dg.core_spectrum(mps, 1.0)
    with pytest.raises(ValueError, match="matrix must be one of"):
        dg.core_spectrum(mps, 1, matrix="diagonal")
    with pytest.raises(ValueError, match="spectrum too small for statistics"):
        dg.spectral_statistics(dg.core_spectrum(mps, 1))  # 4 eigenvalues
    with pytest.raises(ValueError, match="no site of this model"):
        dg.core_statistics(mps)
    with pytest.raises(ValueError, match="sites entries must be a site index"):
        dg.core_statistics(mn.MPS.random(4, 16, seed=0), sites=[1, 7])
    with pytest.raises(ValueError, match="variance='init' needs a model drawn by MPS.random"):
        dg.core_spectrum(mn.MPS([c.copy() for c in mps.cores]), 1, variance="init")
    with pytest.raises(ValueError, match="variance must be 'estimate' or 'init' or a positive"):
        dg.core_spectrum(mps, 1, variance=-1.0)
    with pytest.raises(ValueError, match="variance must be 'estimate' or a positive"):
        dg.matrix_spectrum(np.ones((9, 9)), variance="init")
    with pytest.raises(ValueError, match="finite"):
        dg.matrix_spectrum(np.full((9, 9), np.nan))
    with pytest.raises(ValueError, match="square"):
        dg.matrix_spectrum(np.ones((9, 8)), symmetric=True)
    with pytest.raises(ValueError, match="false_alarm must be one of"):
        dg.edge_threshold(20, 10, 0.03)
    with pytest.raises(ValueError, match="at least 3 are needed"):
        dg.spacing_ratios(np.arange(4.0))
    with pytest.raises(ValueError, match="degenerate levels"):
        dg.spacing_ratios(np.array([0.0, 1.0, 1.0, 1.0, 2.0]), bulk=1.0)
    with pytest.raises(ValueError, match="bulk must be a fraction"):
        dg.spacing_ratios(np.arange(10.0), bulk=1.5)
    with pytest.raises(ValueError, match="gamma must lie in"):
        dg.marchenko_pastur_pdf(1.0, 2.0)
    with pytest.raises(TypeError, match="cdf must be a callable"):
        dg.ks_distance([1.0, 2.0], "mp")
    with pytest.raises(ValueError, match="false_alarm must be one of"):
        dg.SpectrumMonitor(false_alarm=0.3)
