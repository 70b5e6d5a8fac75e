"""Tests for mpsntk.infinite: infinite-bond-dimension NNGP and NTK kernels."""

import numpy as np
import pytest

from mpsntk import _reference as ref
from mpsntk.features import local_kernel, onehot, trig
from mpsntk.infinite import nngp_infinite, ntk_infinite


@pytest.fixture
def rng():
    return np.random.default_rng(4242)


def _trig_kernel(x1, x2, sigma):
    """Closed form prod_j sigma_j^2 cos(pi (x1_j - x2_j) / 2)."""
    diff = x1[:, None, :] - x2[None, :, :]
    return np.prod(np.asarray(sigma) ** 2 * np.cos(np.pi * diff / 2), axis=-1)


# ---------------------------------------------------------------------------
# NNGP
# ---------------------------------------------------------------------------


def test_nngp_matches_closed_form_and_reference(rng):
    x1, x2 = rng.uniform(size=(5, 4)), rng.uniform(size=(3, 4))
    sigma = np.array([0.9, 1.1, 1.3, 0.7])
    kernel = nngp_infinite(trig(x1), trig(x2), sigma=sigma)
    assert kernel.shape == (5, 3)
    assert kernel.dtype == np.float64
    np.testing.assert_allclose(kernel, _trig_kernel(x1, x2, sigma), rtol=1e-13)
    np.testing.assert_allclose(kernel, ref.nngp(trig(x1), trig(x2), sigma=sigma), rtol=1e-13)
    # Scalar sigma and phi2 = None.
    np.testing.assert_allclose(
        nngp_infinite(trig(x1), sigma=1.2), _trig_kernel(x1, x1, 1.2), rtol=1e-13
    )
    np.testing.assert_array_equal(nngp_infinite(trig(x1)), nngp_infinite(trig(x1), trig(x1)))


def test_nngp_onehot_is_scaled_identity_on_distinct_configurations():
    bits = np.array([[0, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])
    kernel = nngp_infinite(onehot(bits, scale=1 / np.sqrt(2)))
    same = (bits[:, None, :] == bits[None, :, :]).all(-1)
    np.testing.assert_allclose(kernel, np.where(same, 2.0**-3, 0.0), rtol=1e-14, atol=0)


def test_nngp_float32_inputs(rng):
    phi = trig(rng.uniform(size=(3, 5)))
    k32 = nngp_infinite(phi.astype(np.float32))
    assert k32.dtype == np.float32
    np.testing.assert_allclose(k32, nngp_infinite(phi), rtol=1e-5)
    assert nngp_infinite(phi.astype(np.float32), phi).dtype == np.float64


def test_nngp_log_matches_direct_product_with_signs_and_zeros(rng):
    phi1 = rng.normal(size=(6, 5, 3))
    phi2 = rng.normal(size=(4, 5, 3))
    phi2[0, 2] = 0.0  # one vanishing local kernel for the whole column 0
    sigma = rng.uniform(0.5, 1.5, size=5)
    direct = nngp_infinite(phi1, phi2, sigma=sigma)
    sign, logabs = nngp_infinite(phi1, phi2, sigma=sigma, log=True)
    assert sign.shape == logabs.shape == (6, 4)
    assert set(np.unique(sign)) <= {-1.0, 0.0, 1.0}
    assert (sign == -1).any() and (sign == 1).any()
    np.testing.assert_array_equal(sign, np.sign(direct))
    assert np.all(sign[:, 0] == 0) and np.all(np.isneginf(logabs[:, 0]))
    nonzero = direct != 0
    np.testing.assert_allclose(logabs[nonzero], np.log(np.abs(direct[nonzero])), rtol=1e-12)
    np.testing.assert_allclose(sign * np.exp(logabs), direct, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sigma", [0.5, 3.0])
def test_nngp_log_handles_long_chain(sigma, rng):
    n_sites = 1000
    x1, x2 = rng.uniform(size=(3, n_sites)), rng.uniform(size=(2, n_sites))
    phi1, phi2 = trig(x1), trig(x2)
    with np.errstate(over="raise", under="raise", invalid="raise", divide="raise"):
        sign, logabs = nngp_infinite(phi1, phi2, sigma=sigma, log=True)
        sign_diag, logabs_diag = nngp_infinite(phi1, sigma=sigma, log=True)
    assert np.all(np.isfinite(logabs))
    # Independent sum of logs of the closed-form local kernels.
    cosines = np.cos(np.pi * (x1[:, None, :] - x2[None, :, :]) / 2)
    expected_log = n_sites * np.log(sigma**2) + np.sum(np.log(np.abs(cosines)), axis=-1)
    np.testing.assert_allclose(logabs, expected_log, rtol=1e-12)
    np.testing.assert_array_equal(sign, np.prod(np.sign(cosines), axis=-1))
    # |phi| = 1, so the diagonal is exactly sigma^(2 n_sites).
    np.testing.assert_allclose(np.diag(logabs_diag), 2 * n_sites * np.log(sigma), rtol=1e-12)
    np.testing.assert_array_equal(np.diag(sign_diag), 1.0)
    # The direct product is out of float64 range for this chain, which is an error, not zeros or
    # infinities ...
    how = "underflows" if sigma < 1 else "overflows"
    for kernel in (nngp_infinite, ntk_infinite):
        with pytest.raises(FloatingPointError, match=f"{how} the range of float64; use log=True"):
            kernel(phi1, sigma=sigma)
    # ... while log=True stays finite for ntk_infinite as well.
    sign_ntk, logabs_ntk = ntk_infinite(phi1, phi2, sigma=sigma, log=True)
    np.testing.assert_array_equal(sign_ntk, sign)
    np.testing.assert_allclose(logabs_ntk, logabs + np.log(n_sites), rtol=1e-12)


# ---------------------------------------------------------------------------
# NTK
# ---------------------------------------------------------------------------


def test_ntk_parametrisations(rng):
    n_sites = 4
    x1, x2 = rng.uniform(size=(5, n_sites)), rng.uniform(size=(3, n_sites))
    phi1, phi2 = trig(x1), trig(x2)
    sigma = np.array([0.8, 1.0, 1.25, 1.5])
    kernel = _trig_kernel(x1, x2, sigma)
    np.testing.assert_allclose(ntk_infinite(phi1, phi2, sigma=sigma), n_sites * kernel, rtol=1e-13)
    np.testing.assert_allclose(
        ntk_infinite(phi1, phi2, sigma=sigma, parametrization="standard"),
        np.sum(sigma**-2) * kernel,
        rtol=1e-13,
    )
    # GD eq. 3.4: sum_k k_k prod_{l != k} sigma_l^2 k_l equals (sum_k sigma_k^-2) K.
    local = local_kernel(phi1, phi2)
    gd_form = sum(
        local[:, :, k] * np.prod(np.delete(sigma**2 * local, k, axis=-1), axis=-1)
        for k in range(n_sites)
    )
    np.testing.assert_allclose(
        ntk_infinite(phi1, phi2, sigma=sigma, parametrization="standard"), gd_form, rtol=1e-12
    )
    rho = np.array([0.0, 2.0, 0.5, 1.0])
    for parametrization in ("ntk", "standard"):
        np.testing.assert_allclose(
            ntk_infinite(phi1, phi2, sigma=sigma, rho=rho, parametrization=parametrization),
            3.5 * kernel,
            rtol=1e-13,
        )
    np.testing.assert_allclose(ntk_infinite(phi1, phi2, rho=0.25), 1.0 * _trig_kernel(x1, x2, 1))
    # Bond dimensions are validated but do not change the (exact) expectation.
    np.testing.assert_array_equal(
        ntk_infinite(phi1, phi2, sigma=sigma, bond_dims=(1, 4, 8, 4, 1)),
        ntk_infinite(phi1, phi2, sigma=sigma),
    )


def test_ntk_outputs(rng):
    phi1, phi2 = trig(rng.uniform(size=(4, 3))), trig(rng.uniform(size=(2, 3)))
    theta = ntk_infinite(phi1, phi2)
    n_out = 3
    np.testing.assert_allclose(ntk_infinite(phi1, phi2, n_outputs=n_out), n_out * theta)
    np.testing.assert_allclose(ntk_infinite(phi1, phi2, n_outputs=n_out, outputs="mean"), theta)
    full = ntk_infinite(phi1, phi2, n_outputs=n_out, outputs="full")
    assert full.shape == (4, 2, n_out, n_out)
    np.testing.assert_allclose(full, np.einsum("ab,lm->ablm", theta, np.eye(n_out)))
    for mode in ("trace", "mean", "full"):
        np.testing.assert_array_equal(ntk_infinite(phi1, phi2, outputs=mode), theta)
    sign, logabs = ntk_infinite(phi1, phi2, n_outputs=n_out, outputs="full", log=True)
    assert sign.shape == logabs.shape == (4, 2, n_out, n_out)
    np.testing.assert_allclose(sign * np.exp(logabs), full, rtol=1e-12, atol=0)
    assert np.all(np.isneginf(logabs[:, :, 0, 1]))
    sign_t, logabs_t = ntk_infinite(phi1, phi2, n_outputs=n_out, log=True)
    np.testing.assert_allclose(sign_t * np.exp(logabs_t), n_out * theta, rtol=1e-12)


def test_ntk_log_with_zero_weight(rng):
    phi = trig(rng.uniform(size=(3, 2)))
    sign, logabs = ntk_infinite(phi, rho=0.0, log=True)
    assert np.all(sign == 0) and np.all(np.isneginf(logabs))
    np.testing.assert_array_equal(ntk_infinite(phi, rho=0.0), np.zeros((3, 3)))


def test_standard_parametrisation_matches_monte_carlo_of_finite_models():
    """SP with GD's per-site rates is NTP with site_lr r_j = sigma_j^-2 (spec section 1)."""
    n_sites, n_draws = 3, 2500
    sigma = np.array([0.6, 1.5, 0.8])
    x = np.array([[0.1, 0.5, 0.9], [0.3, 0.2, 0.6], [0.8, 0.9, 0.1]])
    phi = trig(x)
    rng = np.random.default_rng(777)
    thetas = np.empty((n_draws, 3, 3))
    for draw in range(n_draws):
        mps = ref.random_model(n_sites, 2, (1, 2, 3, 1), sigma=sigma, rng=rng)
        mps.site_lr = sigma**-2
        thetas[draw] = ref.ntk(mps, phi)
    expected = ntk_infinite(phi, sigma=sigma, parametrization="standard")
    z = np.abs(thetas.mean(0) - expected) / (thetas.std(0, ddof=1) / np.sqrt(n_draws))
    assert z.max() < 5.0
    wrong = ntk_infinite(phi, sigma=sigma, parametrization="ntk")
    z_wrong = np.abs(thetas.mean(0) - wrong) / (thetas.std(0, ddof=1) / np.sqrt(n_draws))
    assert z_wrong.max() > 5.0


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

GOOD = np.full((2, 3, 2), 0.5)


@pytest.mark.parametrize("function", [nngp_infinite, ntk_infinite], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("phi1", "phi2", "exc", "name"),
    [
        (np.ones((2, 3)), None, ValueError, "phi1"),
        (np.ones((2, 3, 2, 1)), None, ValueError, "phi1"),
        (np.ones((0, 3, 2)), None, ValueError, "phi1"),
        (np.ones((2, 3, 2), dtype=np.int64), None, TypeError, "phi1"),
        (np.ones((2, 3, 2), dtype=np.complex128), None, TypeError, "phi1"),
        (np.full((2, 3, 2), np.nan), None, ValueError, "phi1"),
        (GOOD, np.ones((2, 4, 2)), ValueError, "phi2"),
        (GOOD, np.ones((2, 3, 3)), ValueError, "phi2"),
        (GOOD, np.full((2, 3, 2), -np.inf), ValueError, "phi2"),
        (GOOD, np.ones((2, 3, 2), dtype=bool), TypeError, "phi2"),
    ],
)
def test_bad_features_are_rejected(function, phi1, phi2, exc, name):
    with pytest.raises(exc, match=name):
        function(phi1, phi2)


@pytest.mark.parametrize("function", [nngp_infinite, ntk_infinite], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"sigma": 0.0}, ValueError, "sigma"),
        ({"sigma": -1.0}, ValueError, "sigma"),
        ({"sigma": np.nan}, ValueError, "sigma"),
        ({"sigma": np.ones(2)}, ValueError, "sigma"),
        ({"sigma": np.ones((3, 1))}, ValueError, "sigma"),
        ({"sigma": "one"}, TypeError, "sigma"),
        ({"log": "yes"}, TypeError, "log"),
        ({"log": 1}, TypeError, "log"),
    ],
)
def test_bad_shared_arguments_are_rejected(function, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        function(GOOD, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"parametrization": "mean-field"}, ValueError, "parametrization"),
        ({"parametrization": None}, ValueError, "parametrization"),
        ({"rho": -1.0}, ValueError, "rho"),
        ({"rho": np.ones(4)}, ValueError, "rho"),
        ({"rho": np.array([1.0, np.inf, 1.0])}, ValueError, "rho"),
        ({"rho": "x"}, TypeError, "rho"),
        ({"bond_dims": (1, 2, 1)}, ValueError, "bond_dims"),
        ({"bond_dims": (1, 2, 0, 1)}, ValueError, "bond_dims"),
        ({"bond_dims": (1, 2.5, 2, 1)}, ValueError, "bond_dims"),
        ({"bond_dims": 4}, TypeError, "bond_dims"),
        ({"n_outputs": 0}, ValueError, "n_outputs"),
        ({"n_outputs": 2.0}, TypeError, "n_outputs"),
        ({"outputs": "sum"}, ValueError, "outputs"),
    ],
)
def test_bad_ntk_arguments_are_rejected(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        ntk_infinite(GOOD, **kwargs)
