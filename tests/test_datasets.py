"""Tests for mpsntk.datasets: offline data sets and configuration spaces."""

import itertools

import numpy as np
import pytest

from mpsntk import datasets
from mpsntk.features import onehot, trig
from mpsntk.infinite import nngp_infinite


def _is_bar_or_stripe(image):
    rows_constant = np.all(image == image[:, :1])
    cols_constant = np.all(image == image[:1, :])
    return rows_constant or cols_constant


@pytest.mark.parametrize("shape, count", [((4, 4), 30), ((3, 3), 14), ((2, 3), 10), ((1, 1), 2)])
def test_bars_and_stripes_counts_and_validity(shape, count):
    bits = datasets.bars_and_stripes(*shape)
    n_rows, n_cols = shape
    assert bits.shape == (2**n_rows + 2**n_cols - 2, n_rows * n_cols) == (count, n_rows * n_cols)
    assert bits.dtype == np.int64 and set(np.unique(bits)) <= {0, 1}
    assert len({tuple(b) for b in bits}) == count
    assert all(_is_bar_or_stripe(b.reshape(n_rows, n_cols)) for b in bits)
    # Brute force: every image of that size that is a bar or a stripe is present.
    if n_rows * n_cols <= 9:
        brute = [
            p
            for p in itertools.product([0, 1], repeat=n_rows * n_cols)
            if _is_bar_or_stripe(np.array(p).reshape(n_rows, n_cols))
        ]
        assert sorted(brute) == sorted(tuple(b) for b in bits)
    phi = onehot(bits, scale=1 / np.sqrt(2))
    assert phi.shape == (count, n_rows * n_cols, 2)


def test_bars_and_stripes_4x4_entropy_target():
    bits = datasets.bars_and_stripes(4, 4)
    images = bits.reshape(-1, 4, 4)
    stripes = sum(np.all(im == im[:, :1]) for im in images)
    bars = sum(np.all(im == im[:1, :]) for im in images)
    assert stripes == 16 and bars == 16  # empty and full images are both
    assert np.log(len(bits)) == pytest.approx(np.log(30))


def test_parity_all_and_sampled():
    bits, labels = datasets.parity(4)
    assert bits.shape == (16, 4) and labels.shape == (16,)
    for i, (b, label) in enumerate(zip(bits, labels)):
        assert int("".join(map(str, b)), 2) == i
        assert label == bin(i).count("1") % 2
    bits, labels = datasets.parity(7, n_samples=50, seed=1)
    assert bits.shape == (50, 7)
    np.testing.assert_array_equal(labels, np.bitwise_xor.reduce(bits, axis=1))
    again, _ = datasets.parity(7, n_samples=50, seed=1)
    np.testing.assert_array_equal(bits, again)


def test_random_patterns_distinct_and_reproducible():
    for n_bits, n in ((8, 10), (4, 16), (30, 200), (70, 20)):
        pats = datasets.random_patterns(n_bits, n, seed=5)
        assert pats.shape == (n, n_bits)
        assert set(np.unique(pats)) <= {0, 1}
        assert len({tuple(p) for p in pats}) == n
        np.testing.assert_array_equal(pats, datasets.random_patterns(n_bits, n, seed=5))
    full = datasets.random_patterns(4, 16, seed=0)
    assert sorted(map(tuple, full)) == sorted(map(tuple, datasets.all_configurations(4)))
    repeats = datasets.random_patterns(2, 40, seed=0, distinct=False)
    assert repeats.shape == (40, 2) and len({tuple(p) for p in repeats}) <= 4
    with pytest.raises(ValueError, match="n_patterns"):
        datasets.random_patterns(3, 9)


def test_configuration_space_round_trip():
    omega = datasets.all_configurations(3, phys_dim=3)
    assert omega.shape == (27, 3)
    assert [tuple(r) for r in omega] == list(itertools.product(range(3), repeat=3))
    np.testing.assert_array_equal(datasets.configuration_index(omega, 3), np.arange(27))
    data = omega[[4, 4, 0, 26, 4]]
    counts = datasets.configuration_counts(data, phys_dim=3)
    expected = np.zeros(27, dtype=np.int64)
    expected[[0, 4, 26]] = [1, 3, 1]
    np.testing.assert_array_equal(counts, expected)
    with pytest.raises(ValueError, match=r"x must take values"):
        datasets.configuration_counts(np.array([[0, 2]]), phys_dim=2)
    with pytest.raises(ValueError, match="x must contain integers"):
        datasets.configuration_index(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        datasets.configuration_counts(np.array([0, 1]))
    with pytest.raises(ValueError, match="enumerated"):
        datasets.all_configurations(40)


def test_equidistant_points_give_constant_offdiagonal_kernel():
    x = datasets.equidistant_points(6, 4, a=0.3, delta=0.4)
    assert x.shape == (4, 6)
    expected = np.full((4, 6), 0.3)
    expected[np.arange(4), np.arange(4)] = 0.7
    np.testing.assert_allclose(x, expected, rtol=1e-15)
    k = nngp_infinite(trig(x))
    r = np.cos(np.pi * 0.4 / 2) ** 2
    np.testing.assert_allclose(k, (1 - r) * np.eye(4) + r, rtol=1e-13)
    with pytest.raises(ValueError, match="n_points"):
        datasets.equidistant_points(3, 4)
    with pytest.raises(ValueError, match="delta"):
        datasets.equidistant_points(3, 2, delta=np.inf)


def test_one_hot_targets():
    y = datasets.one_hot_targets(np.array([2, 0, 1]))
    np.testing.assert_array_equal(y, np.eye(3)[[2, 0, 1]])
    yc = datasets.one_hot_targets(np.array([1, 0]), n_classes=4, centered=True)
    np.testing.assert_allclose(yc.sum(axis=1), 0.0, atol=1e-15)
    assert yc[0, 1] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="labels"):
        datasets.one_hot_targets(np.array([0, 3]), n_classes=3)
    with pytest.raises(TypeError, match="labels"):
        datasets.one_hot_targets(np.array([0.0, 1.0]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_rows"):
        datasets.bars_and_stripes(0, 3)
    with pytest.raises(TypeError, match="n_cols"):
        datasets.bars_and_stripes(3, 2.0)
    with pytest.raises(ValueError, match="62 pixels"):
        datasets.bars_and_stripes(8, 8)
    with pytest.raises(TypeError, match="seed"):
        datasets.parity(3, n_samples=4, seed="x")
    with pytest.raises(ValueError, match="n_samples"):
        datasets.parity(3, n_samples=0)
    with pytest.raises(TypeError, match="distinct"):
        datasets.random_patterns(3, 2, distinct="yes")


# ---------------------------------------------------------------------------
# scikit-learn loaders
# ---------------------------------------------------------------------------


def test_load_digits_split_and_scaling():
    pytest.importorskip("sklearn")
    data = datasets.load_digits(n_train=300, n_test=100, seed=0)
    assert data.x_train.shape == (300, 64) and data.x_test.shape == (100, 64)
    assert data.y_train.shape == (300,) and data.y_test.shape == (100,)
    assert data.feature_map == "trig" and data.n_classes == 10
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert data.x_test.min() >= 0.0 and data.x_test.max() <= 1.0
    # Per feature: every non-constant training column spans exactly [0, 1].
    span = data.x_train.max(axis=0) - data.x_train.min(axis=0)
    assert np.all((span == 1.0) | (span == 0.0)) and np.any(span == 1.0)
    assert np.all(data.x_train[:, span == 0.0] == 0.0)
    # Reproducible, and the default split is 75/25 of the 1797 images.
    again = datasets.load_digits(n_train=300, n_test=100, seed=0)
    np.testing.assert_array_equal(data.x_train, again.x_train)
    full = datasets.load_digits()
    assert full.x_train.shape[0] + full.x_test.shape[0] == 1797
    assert full.x_test.shape[0] == 1797 // 4


def test_load_digits_classes_and_pooling():
    pytest.importorskip("sklearn")
    data = datasets.load_digits(n_train=100, n_test=50, classes=[3, 8], pool=2)
    assert data.x_train.shape == (100, 16) and data.n_classes == 2
    assert set(np.unique(data.y_train)) <= {0, 1}
    assert 0.0 <= data.x_train.min() and data.x_train.max() == 1.0
    with pytest.raises(ValueError, match="classes"):
        datasets.load_digits(classes=[3, 3])
    with pytest.raises(ValueError, match="pool"):
        datasets.load_digits(pool=3)
    with pytest.raises(ValueError, match="n_train"):
        datasets.load_digits(n_train=2000)


def test_load_diabetes_split_and_scaling():
    pytest.importorskip("sklearn")
    data = datasets.load_diabetes(n_train=200, seed=3)
    assert data.x_train.shape == (200, 10) and data.x_test.shape == (242, 10)
    assert data.n_classes is None and data.feature_map == "trig"
    np.testing.assert_allclose(data.x_train.min(axis=0), 0.0, atol=0)
    np.testing.assert_allclose(data.x_train.max(axis=0), 1.0, rtol=1e-15)
    assert data.x_test.min() >= 0.0 and data.x_test.max() <= 1.0
    assert data.y_train.mean() == pytest.approx(0.0, abs=1e-12)
    assert data.y_train.std() == pytest.approx(1.0, rel=1e-12)
    raw = datasets.load_diabetes(n_train=200, seed=3, standardize_y=False)
    np.testing.assert_allclose(
        (raw.y_test - raw.y_train.mean()) / raw.y_train.std(), data.y_test, rtol=1e-12
    )
    assert raw.y_train.min() > 10  # original disease-progression scale
