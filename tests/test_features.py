"""Tests for mpsntk.features: values of the local feature maps and their kernels."""

import numpy as np
import pytest

from mpsntk.features import gauss_hermite, linear, local_kernel, onehot, poly, trig

RNG_SEED = 20240611


@pytest.fixture
def rng():
    return np.random.default_rng(RNG_SEED)


def _pairwise_differences(x1, x2):
    """(n1, n2, n_sites) array of x1[a, j] - x2[b, j]."""
    return x1[:, None, :] - x2[None, :, :]


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


def test_trig_values_and_unit_norm(rng):
    x = rng.uniform(size=(5, 4))
    phi = trig(x)
    assert phi.shape == (5, 4, 2)
    assert phi.dtype == np.float64
    np.testing.assert_allclose(phi[..., 0], np.cos(np.pi * x / 2), rtol=0, atol=1e-15)
    np.testing.assert_allclose(phi[..., 1], np.sin(np.pi * x / 2), rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.sum(phi**2, axis=-1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(trig([[0.0, 1.0]])[0], [[1.0, 0.0], [0.0, 1.0]], atol=1e-15)


def test_trig_kernel_is_cosine_of_difference(rng):
    x1 = rng.uniform(size=(6, 3))
    x2 = rng.uniform(size=(4, 3))
    k = local_kernel(trig(x1), trig(x2))
    assert k.shape == (6, 4, 3)
    expected = np.cos(np.pi * _pairwise_differences(x1, x2) / 2)
    np.testing.assert_allclose(k, expected, rtol=0, atol=1e-14)


def test_linear_values(rng):
    x = rng.normal(size=(3, 5))
    phi = linear(x)
    np.testing.assert_array_equal(phi[..., 0], x)
    np.testing.assert_array_equal(phi[..., 1], 1.0 - x)
    k = local_kernel(phi)
    expected = x[:, None, :] * x[None, :, :] + (1 - x)[:, None, :] * (1 - x)[None, :, :]
    np.testing.assert_allclose(k, expected, rtol=1e-14, atol=1e-14)


def test_poly_matches_vandermonde(rng):
    x = rng.uniform(-2, 2, size=(4, 3))
    phi = poly(x, degree=3)
    assert phi.shape == (4, 3, 4)
    expected = np.vander(x.ravel(), 4, increasing=True).reshape(4, 3, 4)
    np.testing.assert_allclose(phi, expected, rtol=1e-15)
    # 0**0 = 1 in the constant feature.
    assert poly(np.zeros((1, 1)), degree=2)[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_poly_degree_one_kernel(rng):
    x1 = rng.uniform(size=(3, 2))
    x2 = rng.uniform(size=(5, 2))
    k = local_kernel(poly(x1), poly(x2))
    np.testing.assert_allclose(k, 1.0 + x1[:, None, :] * x2[None, :, :], rtol=1e-15)


def test_onehot_values_and_kernel(rng):
    x1 = rng.integers(0, 3, size=(7, 4))
    x2 = rng.integers(0, 3, size=(5, 4))
    scale = 1 / np.sqrt(2)
    phi1 = onehot(x1, phys_dim=3, scale=scale)
    assert phi1.shape == (7, 4, 3)
    for i in range(7):
        for j in range(4):
            expected = np.zeros(3)
            expected[x1[i, j]] = scale
            np.testing.assert_array_equal(phi1[i, j], expected)
    k = local_kernel(phi1, onehot(x2, phys_dim=3, scale=scale))
    delta = (x1[:, None, :] == x2[None, :, :]).astype(float)
    np.testing.assert_allclose(k, scale**2 * delta, rtol=1e-15, atol=0)


def test_onehot_accepts_integer_valued_floats_and_bools():
    np.testing.assert_array_equal(onehot(np.array([[1.0, 0.0]])), onehot(np.array([[1, 0]])))
    np.testing.assert_array_equal(onehot(np.array([[True, False]])), onehot(np.array([[1, 0]])))


def test_gauss_hermite_approximates_gaussian_kernel():
    tau = 0.5
    x1 = np.linspace(-0.75, 0.75, 31)[:, None]
    x2 = np.linspace(-0.75, 0.75, 29)[:, None]
    k = local_kernel(gauss_hermite(x1, n_nodes=8, tau=tau), gauss_hermite(x2, n_nodes=8, tau=tau))
    diff = _pairwise_differences(x1, x2)
    assert np.abs(diff).max() == pytest.approx(1.5)
    target = np.exp(-(diff**2) / (2 * tau**2))
    error = np.abs(k - target).max()
    assert error < 0.01
    # The surrogate is a genuine approximation, not an exact identity at n_nodes=8 ...
    assert error > 1e-4
    # ... and it improves with more nodes.
    k_fine = local_kernel(
        gauss_hermite(x1, n_nodes=40, tau=tau), gauss_hermite(x2, n_nodes=40, tau=tau)
    )
    assert np.abs(k_fine - target).max() < 1e-8


def test_gauss_hermite_layout_is_interleaved():
    x = np.array([[0.3, -1.2]])
    n_nodes, tau = 5, 0.7
    nodes, weights = np.polynomial.hermite.hermgauss(n_nodes)
    omega = np.sqrt(2) * nodes / tau
    amp = np.sqrt(weights / np.sqrt(np.pi))
    phi = gauss_hermite(x, n_nodes=n_nodes, tau=tau)
    assert phi.shape == (1, 2, 2 * n_nodes)
    for j in range(2):
        for i in range(n_nodes):
            assert phi[0, j, 2 * i] == pytest.approx(amp[i] * np.cos(omega[i] * x[0, j]), abs=1e-15)
            assert phi[0, j, 2 * i + 1] == pytest.approx(
                amp[i] * np.sin(omega[i] * x[0, j]), abs=1e-15
            )
    # The diagonal of the kernel is exactly sum(w) / sqrt(pi) = 1.
    np.testing.assert_allclose(np.sum(phi**2, axis=-1), 1.0, rtol=1e-14)


@pytest.mark.parametrize(
    "feature_map", [trig, linear, poly, onehot, gauss_hermite], ids=lambda f: f.__name__
)
def test_float32_output_matches_float64(feature_map, rng):
    x = rng.integers(0, 2, size=(3, 4)).astype(float)
    phi64 = feature_map(x)
    phi32 = feature_map(x, dtype=np.float32)
    assert phi64.dtype == np.float64
    assert phi32.dtype == np.float32
    np.testing.assert_allclose(phi32, phi64, rtol=1e-6, atol=1e-7)


def test_local_kernel_matches_explicit_loop(rng):
    phi1 = rng.normal(size=(3, 4, 5))
    phi2 = rng.normal(size=(2, 4, 5))
    k = local_kernel(phi1, phi2)
    for a in range(3):
        for b in range(2):
            for j in range(4):
                assert k[a, b, j] == pytest.approx(float(phi1[a, j] @ phi2[b, j]), rel=1e-14)
    np.testing.assert_array_equal(local_kernel(phi1), local_kernel(phi1, phi1))
    assert local_kernel(phi1.astype(np.float32)).dtype == np.float32
    assert local_kernel(phi1.astype(np.float32), phi2).dtype == np.float64


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "feature_map", [trig, linear, poly, onehot, gauss_hermite], ids=lambda f: f.__name__
)
@pytest.mark.parametrize(
    ("bad_x", "exc", "fragment"),
    [
        (np.zeros(3), ValueError, "2-D"),
        (np.zeros((2, 2, 2)), ValueError, "2-D"),
        (np.zeros((0, 3)), ValueError, "non-empty"),
        (np.zeros((3, 0)), ValueError, "non-empty"),
        (np.array([[0.0, np.nan]]), ValueError, "finite"),
        (np.array([[0.0, np.inf]]), ValueError, "finite"),
        (np.array([["a", "b"]]), TypeError, "real numeric"),
        (np.array([[1 + 1j]]), TypeError, "real numeric"),
    ],
)
def test_bad_inputs_are_rejected(feature_map, bad_x, exc, fragment):
    with pytest.raises(exc, match=fragment) as info:
        feature_map(bad_x)
    assert str(info.value).startswith("x ")


@pytest.mark.parametrize(
    "feature_map", [trig, linear, poly, onehot, gauss_hermite], ids=lambda f: f.__name__
)
@pytest.mark.parametrize("bad_dtype", [np.int32, np.float16, np.complex128, "not-a-dtype"])
def test_bad_dtype_is_rejected(feature_map, bad_dtype):
    with pytest.raises(TypeError, match="dtype"):
        feature_map(np.zeros((2, 2)), dtype=bad_dtype)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"degree": 0}, ValueError, "degree"),
        ({"degree": -1}, ValueError, "degree"),
        ({"degree": 1.5}, TypeError, "degree"),
        ({"degree": True}, TypeError, "degree"),
    ],
)
def test_poly_bad_degree(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        poly(np.zeros((2, 2)), **kwargs)


@pytest.mark.parametrize(
    ("x", "kwargs", "exc", "name"),
    [
        ([[0.5, 1.0]], {}, ValueError, "x"),
        ([[2, 0]], {"phys_dim": 2}, ValueError, "x"),
        ([[-1, 0]], {}, ValueError, "x"),
        ([[0, 1]], {"phys_dim": 0}, ValueError, "phys_dim"),
        ([[0, 1]], {"phys_dim": 2.0}, TypeError, "phys_dim"),
        ([[0, 1]], {"scale": 0.0}, ValueError, "scale"),
        ([[0, 1]], {"scale": np.nan}, ValueError, "scale"),
        ([[0, 1]], {"scale": "1"}, TypeError, "scale"),
    ],
)
def test_onehot_bad_arguments(x, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        onehot(np.array(x), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"n_nodes": 0}, ValueError, "n_nodes"),
        ({"n_nodes": 2.5}, TypeError, "n_nodes"),
        ({"tau": 0.0}, ValueError, "tau"),
        ({"tau": -1.0}, ValueError, "tau"),
        ({"tau": np.inf}, ValueError, "tau"),
        ({"tau": None}, TypeError, "tau"),
    ],
)
def test_gauss_hermite_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        gauss_hermite(np.zeros((2, 2)), **kwargs)


@pytest.mark.parametrize(
    ("phi1", "phi2", "exc", "name"),
    [
        (np.zeros((2, 3)), None, ValueError, "phi1"),
        (np.zeros((2, 3, 2), dtype=np.int64), None, TypeError, "phi1"),
        (np.zeros((0, 3, 2)), None, ValueError, "phi1"),
        (np.full((2, 3, 2), np.nan), None, ValueError, "phi1"),
        (np.zeros((2, 3, 2)), np.zeros((2, 4, 2)), ValueError, "phi2"),
        (np.zeros((2, 3, 2)), np.zeros((2, 3, 3)), ValueError, "phi2"),
        (np.zeros((2, 3, 2)), np.zeros((2, 3, 2), dtype=complex), TypeError, "phi2"),
    ],
)
def test_local_kernel_bad_arguments(phi1, phi2, exc, name):
    with pytest.raises(exc, match=name):
        local_kernel(phi1, phi2)
