"""Small offline data sets for MPS kernels and training experiments.

Every loader returns inputs of shape ``(n_samples, n_sites)`` ready for one of
the feature maps of :mod:`mpsntk.features`:

* binary data (:func:`bars_and_stripes`, :func:`parity`,
  :func:`random_patterns`, :func:`all_configurations`) are integer arrays with
  entries in ``{0, 1}`` for :func:`mpsntk.features.onehot`; the Born machine
  of the theory uses ``onehot(bits, scale=1/sqrt(2))`` so that
  ``|phi|**2 = 1/2`` (plain one-hot, ``scale=1``, has ``|phi|**2 = 1``);
* real data (:func:`load_digits`, :func:`load_diabetes`,
  :func:`equidistant_points`) lie in ``[0, 1]`` for the trigonometric map
  :func:`mpsntk.features.trig` (or :func:`mpsntk.features.linear`).

Bit strings are ordered with site 0 as the most significant digit, so row
``i`` of ``all_configurations(n_sites, phys_dim)`` is the base-``phys_dim``
expansion of ``i`` and :func:`configuration_index` inverts it.

:func:`load_digits` and :func:`load_diabetes` read the copies of these data
sets bundled with scikit-learn (``pip install 'mpsntk[demo]'``); nothing is
downloaded.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ._validate import (
    _as_configurations,
    _check_array_fits,
    _check_bool,
    _check_int,
    _check_seed,
    _describe,
)

__all__ = [
    "SplitDataset",
    "all_configurations",
    "bars_and_stripes",
    "configuration_counts",
    "configuration_index",
    "equidistant_points",
    "load_diabetes",
    "load_digits",
    "one_hot_targets",
    "parity",
    "random_patterns",
]

# Largest configuration space enumerated at once (2**26 rows).
_MAX_CONFIGURATIONS = 1 << 26


def _ints_to_digits(ints, n_sites, phys_dim):
    """Base-``phys_dim`` digits of ``ints``, most significant first, shape (len, n_sites)."""
    powers = phys_dim ** np.arange(n_sites - 1, -1, -1, dtype=np.int64)
    return (np.asarray(ints, dtype=np.int64)[:, None] // powers) % phys_dim


def _check_space_size(n_sites, phys_dim):
    """Return ``phys_dim**n_sites`` after checking that it can be enumerated."""
    size = phys_dim**n_sites
    if size > _MAX_CONFIGURATIONS:
        raise ValueError(
            f"the configuration space has phys_dim**n_sites = {phys_dim}**{n_sites} = {size} "
            f"elements, more than the {_MAX_CONFIGURATIONS} that can be enumerated"
        )
    return size


# ---------------------------------------------------------------------------
# Configuration spaces
# ---------------------------------------------------------------------------


def all_configurations(n_sites, phys_dim=2):
    """Every configuration of ``n_sites`` sites with ``phys_dim`` states each.

    Parameters
    ----------
    n_sites : int
        Number of sites ``N >= 1``.
    phys_dim : int, optional
        Number of states per site ``d >= 1``.

    Returns
    -------
    ndarray of int64, shape (phys_dim**n_sites, n_sites)
        Row ``i`` is the base-``d`` expansion of ``i``, site 0 most
        significant (lexicographic order).

    Raises
    ------
    TypeError
        If an argument is not an integer.
    ValueError
        If an argument is below 1 or ``d**N`` exceeds ``2**26``.

    Examples
    --------
    >>> from mpsntk.datasets import all_configurations
    >>> all_configurations(2)
    array([[0, 0],
           [0, 1],
           [1, 0],
           [1, 1]])
    """
    n_sites = _check_int(n_sites, "n_sites", 1)
    phys_dim = _check_int(phys_dim, "phys_dim", 1)
    size = _check_space_size(n_sites, phys_dim)
    _check_array_fits((size, n_sites), np.int64, "all_configurations")
    return _ints_to_digits(np.arange(size), n_sites, phys_dim)


def configuration_index(x, phys_dim=2):
    """Row of each configuration in :func:`all_configurations`.

    Parameters
    ----------
    x : array_like of int, shape (n_samples, n_sites)
        Configurations with entries in ``{0, ..., phys_dim - 1}``.
    phys_dim : int, optional
        Number of states per site.

    Returns
    -------
    ndarray of int64, shape (n_samples,)
        ``sum_j x_j phys_dim**(n_sites - 1 - j)``.

    Raises
    ------
    TypeError
        If ``x`` is not an integer array or ``phys_dim`` not an int.
    ValueError
        If ``x`` is not 2-D, is empty, has entries out of range, or the
        configuration space exceeds ``2**26`` elements.
    """
    phys_dim = _check_int(phys_dim, "phys_dim", 1)
    x = _as_configurations(x, phys_dim)
    _check_space_size(x.shape[1], phys_dim)
    powers = phys_dim ** np.arange(x.shape[1] - 1, -1, -1, dtype=np.int64)
    return x @ powers


def configuration_counts(x, phys_dim=2):
    """Multiplicities ``n(x)`` of each configuration of the space in the data ``x``.

    Parameters
    ----------
    x : array_like of int, shape (n_samples, n_sites)
        Training configurations.
    phys_dim : int, optional
        Number of states per site.

    Returns
    -------
    ndarray of int64, shape (phys_dim**n_sites,)
        ``counts[i]`` is how often row ``i`` of :func:`all_configurations`
        occurs in ``x``; ``counts / counts.sum()`` is the empirical
        distribution ``p_hat``.

    Raises
    ------
    TypeError, ValueError
        As :func:`configuration_index`.
    """
    phys_dim = _check_int(phys_dim, "phys_dim", 1)
    x = _as_configurations(x, phys_dim)
    size = _check_space_size(x.shape[1], phys_dim)
    return np.bincount(configuration_index(x, phys_dim), minlength=size).astype(np.int64)


# ---------------------------------------------------------------------------
# Binary data sets
# ---------------------------------------------------------------------------


def bars_and_stripes(n_rows, n_cols):
    """All distinct bars-and-stripes images of ``n_rows x n_cols`` pixels.

    A stripe image has every row constant, a bar image every column constant.
    Counting the empty and the full image once, there are
    ``2**n_rows + 2**n_cols - 2`` distinct patterns (30 for 4x4, 14 for 3x3);
    for a Born machine trained on all of them the minimal mean negative
    log-likelihood is ``log(2**n_rows + 2**n_cols - 2)``.

    Parameters
    ----------
    n_rows, n_cols : int
        Image size, each ``>= 1``, with ``n_rows * n_cols <= 62``.

    Returns
    -------
    ndarray of int64, shape (2**n_rows + 2**n_cols - 2, n_rows * n_cols)
        Row-major flattened images with entries in ``{0, 1}``, sorted
        lexicographically. Encode with ``features.onehot(bits, scale=1/sqrt(2))``
        (the Born machine of the theory) or plain ``features.onehot(bits)``.

    Raises
    ------
    TypeError
        If an argument is not an integer.
    ValueError
        If an argument is below 1 or the image has more than 62 pixels.
    """
    n_rows = _check_int(n_rows, "n_rows", 1)
    n_cols = _check_int(n_cols, "n_cols", 1)
    if n_rows * n_cols > 62:
        raise ValueError(
            f"bars_and_stripes supports at most 62 pixels; got {n_rows} x {n_cols} = "
            f"{n_rows * n_cols}"
        )
    row_values = _ints_to_digits(np.arange(2**n_rows), n_rows, 2)
    col_values = _ints_to_digits(np.arange(2**n_cols), n_cols, 2)
    stripes = np.repeat(row_values[:, :, None], n_cols, axis=2).reshape(-1, n_rows * n_cols)
    bars = np.repeat(col_values[:, None, :], n_rows, axis=1).reshape(-1, n_rows * n_cols)
    return np.unique(np.concatenate([stripes, bars]), axis=0)


def parity(n_bits, n_samples=None, seed=None):
    """Bit strings and their parities.

    Parameters
    ----------
    n_bits : int
        Length of each bit string, ``>= 1``.
    n_samples : int, optional
        If None, all ``2**n_bits`` strings in lexicographic order
        (``n_bits <= 26``); otherwise ``n_samples >= 1`` strings drawn
        independently and uniformly (duplicates possible).
    seed : None, int >= 0 or numpy.random.Generator, optional
        Randomness for ``n_samples`` draws.

    Returns
    -------
    bits : ndarray of int64, shape (n_samples, n_bits)
        Entries in ``{0, 1}``, for ``features.onehot``.
    labels : ndarray of int64, shape (n_samples,)
        ``sum(bits) mod 2``; ``1 - 2 * labels`` gives ``+-1`` regression
        targets.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If an argument is out of range.
    """
    n_bits = _check_int(n_bits, "n_bits", 1)
    if n_samples is None:
        bits = all_configurations(n_bits, 2)
    else:
        n_samples = _check_int(n_samples, "n_samples", 1)
        bits = _check_seed(seed).integers(0, 2, size=(n_samples, n_bits), dtype=np.int64)
    return bits, bits.sum(axis=1) % 2


def random_patterns(n_bits, n_patterns, seed=None, distinct=True):
    """Random binary patterns, uniformly distributed.

    Parameters
    ----------
    n_bits : int
        Length of each pattern, ``>= 1``.
    n_patterns : int
        Number of patterns, ``>= 1`` (at most ``2**n_bits`` if ``distinct``).
    seed : None, int >= 0 or numpy.random.Generator, optional
        Randomness.
    distinct : bool, optional
        If true, no pattern repeats (a uniform sample without replacement).

    Returns
    -------
    ndarray of int64, shape (n_patterns, n_bits)
        Entries in ``{0, 1}``, in the order drawn, for ``features.onehot``.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If an argument is out of range, including more distinct patterns
        than ``2**n_bits``.
    """
    n_bits = _check_int(n_bits, "n_bits", 1)
    n_patterns = _check_int(n_patterns, "n_patterns", 1)
    distinct = _check_bool(distinct, "distinct")
    rng = _check_seed(seed)
    if not distinct:
        return rng.integers(0, 2, size=(n_patterns, n_bits), dtype=np.int64)
    if n_bits <= 62 and n_patterns > 2**n_bits:
        raise ValueError(
            f"n_patterns must be <= 2**n_bits = {2**n_bits} for distinct patterns; got {n_patterns}"
        )
    if n_bits <= 62:
        ints = rng.choice(2**n_bits, size=n_patterns, replace=False)
        return _ints_to_digits(ints, n_bits, 2)
    # More than 2**62 patterns: draw, drop repeats keeping first occurrences, top up.
    patterns = np.empty((0, n_bits), dtype=np.int64)
    while patterns.shape[0] < n_patterns:
        extra = rng.integers(0, 2, size=(n_patterns - patterns.shape[0], n_bits), dtype=np.int64)
        merged = np.concatenate([patterns, extra])
        _, first = np.unique(merged, axis=0, return_index=True)
        patterns = merged[np.sort(first)]
    return patterns


def equidistant_points(n_sites, n_points, a=0.3, delta=0.4):
    """Pairwise-equidistant inputs for the mean-mode experiment (spec section 4.2).

    ``x^(i) = a 1 + delta e_i`` for ``i = 1..n_points <= n_sites``. With the
    trigonometric map every pair differs by ``delta`` on two sites, so the
    NNGP kernel is ``K = (1 - r) I + r 1 1^T`` with ``r = cos(pi delta / 2)**2``
    (``sigma = 1``), whose top eigenvector is ``1 / sqrt(m)`` with eigenvalue
    ``1 + (m - 1) r``; the NTK multiplies it by ``sum_j rho_j``.

    Parameters
    ----------
    n_sites : int
        Number of sites ``N >= 1``.
    n_points : int
        Number of points ``1 <= m <= n_sites``.
    a : float, optional
        Common base value.
    delta : float, optional
        Offset on the point's own site.

    Returns
    -------
    ndarray of float64, shape (n_points, n_sites)
        Inputs for ``features.trig``; they lie in ``[0, 1]`` when ``a`` and
        ``a + delta`` do.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``n_points > n_sites``, an integer is below 1, or ``a``/``delta``
        is not finite.

    Examples
    --------
    >>> from mpsntk.datasets import equidistant_points
    >>> equidistant_points(3, 2, a=0.5, delta=0.25)
    array([[0.75, 0.5 , 0.5 ],
           [0.5 , 0.75, 0.5 ]])
    """
    n_sites = _check_int(n_sites, "n_sites", 1)
    n_points = _check_int(n_points, "n_points", 1)
    if n_points > n_sites:
        raise ValueError(f"n_points must be <= n_sites = {n_sites}; got {n_points}")
    values = {}
    for name, value in (("a", a), ("delta", delta)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a finite real number; got {_describe(value)}")
        if not np.isfinite(value):
            raise ValueError(f"{name} must be a finite real number; got {value}")
        values[name] = float(value)
    x = np.full((n_points, n_sites), values["a"])
    x[np.arange(n_points), np.arange(n_points)] += values["delta"]
    return x


def one_hot_targets(labels, n_classes=None, centered=False):
    """One-hot regression targets for class labels.

    Parameters
    ----------
    labels : array_like of int, shape (n_samples,)
        Class labels in ``{0, ..., n_classes - 1}``.
    n_classes : int, optional
        Number of classes; defaults to ``max(labels) + 1``.
    centered : bool, optional
        If true, subtract ``1 / n_classes`` so every row sums to zero.

    Returns
    -------
    ndarray of float64, shape (n_samples, n_classes)

    Raises
    ------
    TypeError
        If ``labels`` is not integer-valued or an argument has the wrong type.
    ValueError
        If ``labels`` is not 1-D, is empty or has labels out of range.
    """
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array of shape (n_samples,); got {arr.dtype}")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {arr.shape}")
    if n_classes is None:
        n_classes = int(arr.max()) + 1
    n_classes = _check_int(n_classes, "n_classes", 1)
    centered = _check_bool(centered, "centered")
    if arr.min() < 0 or arr.max() >= n_classes:
        raise ValueError(
            f"labels must lie in {{0, ..., {n_classes - 1}}}; "
            f"got values in [{arr.min()}, {arr.max()}]"
        )
    targets = np.eye(n_classes)[arr]
    return targets - 1.0 / n_classes if centered else targets


# ---------------------------------------------------------------------------
# scikit-learn data sets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitDataset:
    """A train/test split with inputs scaled for a feature map.

    Attributes
    ----------
    x_train : ndarray, shape (n_train, n_sites)
    y_train : ndarray, shape (n_train,)
    x_test : ndarray, shape (n_test, n_sites)
    y_test : ndarray, shape (n_test,)
    feature_map : str
        Name of the map in :mod:`mpsntk.features` the inputs are scaled for.
    n_classes : int or None
        Number of classes for classification data, None for regression.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_map: str
    n_classes: int | None


def _import_sklearn_datasets(loader):
    """Import ``sklearn.datasets`` or explain how to install it."""
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise ImportError(
            f"mpsntk.datasets.{loader} needs scikit-learn for its bundled data: "
            "pip install 'mpsntk[demo]' (or pip install scikit-learn)"
        ) from exc
    return datasets


def _split_sizes(n_total, n_train, n_test):
    """Resolve the train/test sizes; default to a 75/25 split."""
    if n_train is not None:
        n_train = _check_int(n_train, "n_train", 1)
    if n_test is not None:
        n_test = _check_int(n_test, "n_test", 0)
    if n_train is None and n_test is None:
        n_test = n_total // 4
    if n_train is None:
        n_train = n_total - n_test
    if n_test is None:
        n_test = n_total - n_train
    if n_train < 1 or n_test < 0 or n_train + n_test > n_total:
        raise ValueError(
            f"n_train + n_test must be <= {n_total} with n_train >= 1; "
            f"got n_train={n_train}, n_test={n_test}"
        )
    return n_train, n_test


def _minmax(x_train, x_test, clip):
    """Scale each feature to [0, 1] with the training minimum and maximum.

    Features that are constant on the training split map to 0.
    """
    low = x_train.min(axis=0)
    span = x_train.max(axis=0) - low
    safe = np.where(span > 0, span, 1.0)
    scaled_train = np.where(span > 0, (x_train - low) / safe, 0.0)
    scaled_test = np.where(span > 0, (x_test - low) / safe, 0.0)
    if clip:
        scaled_test = np.clip(scaled_test, 0.0, 1.0)
    return scaled_train, scaled_test


def _split(x, y, n_train, n_test, rng):
    """Random train/test split of rows."""
    order = rng.permutation(x.shape[0])
    train, test = order[:n_train], order[n_train : n_train + n_test]
    return x[train], y[train], x[test], y[test]


def load_digits(n_train=None, n_test=None, seed=0, classes=None, pool=1, clip=True):
    """scikit-learn's 8x8 handwritten digits, scaled to ``[0, 1]`` for ``features.trig``.

    Pixels are scaled per feature by min-max on the training split (pixels
    constant on the training split become 0); test pixels outside the training
    range are clipped to ``[0, 1]`` unless ``clip=False``. Each image is one
    sample with ``(8 / pool)**2`` sites in row-major order.

    Parameters
    ----------
    n_train : int, optional
        Training-set size; by default all samples not used for testing.
    n_test : int, optional
        Test-set size; by default a quarter of the samples (or all those not
        used for training when ``n_train`` is given).
    seed : None, int >= 0 or numpy.random.Generator, optional
        Randomness of the split.
    classes : sequence of int, optional
        Keep only these digits; labels are re-numbered ``0..len(classes)-1``
        in the given order.
    pool : {1, 2, 4, 8}, optional
        Average-pool ``pool x pool`` blocks of pixels, giving ``(8/pool)**2``
        sites (16 for ``pool=2``; the theory prefers few sites, spec section 1).
    clip : bool, optional
        Clip scaled test inputs to ``[0, 1]``.

    Returns
    -------
    SplitDataset
        Inputs of shape ``(n, (8/pool)**2)``, integer labels, ``feature_map
        = "trig"`` and the number of classes. ``datasets.one_hot_targets``
        turns the labels into regression targets.

    Raises
    ------
    ImportError
        If scikit-learn is not installed.
    TypeError, ValueError
        If an argument has the wrong type or is out of range.
    """
    datasets = _import_sklearn_datasets("load_digits")
    rng = _check_seed(seed)
    pool = _check_int(pool, "pool", 1)
    if pool not in (1, 2, 4, 8):
        raise ValueError(f"pool must be one of 1, 2, 4, 8; got {pool}")
    clip = _check_bool(clip, "clip")
    data = datasets.load_digits()
    x, y = data.data.astype(np.float64), data.target.astype(np.int64)
    n_classes = 10
    if classes is not None:
        keep = [c for c in np.atleast_1d(np.asarray(classes)).tolist()]
        if (
            not keep
            or len(set(keep)) != len(keep)
            or any(not isinstance(c, numbers.Integral) or not 0 <= c <= 9 for c in keep)
        ):
            raise ValueError(f"classes must be distinct digits in 0..9; got {classes!r}")
        mask = np.isin(y, keep)
        relabel = np.full(10, -1, dtype=np.int64)
        relabel[keep] = np.arange(len(keep))
        x, y = x[mask], relabel[y[mask]]
        n_classes = len(keep)
    if pool > 1:
        side = 8 // pool
        x = x.reshape(-1, side, pool, side, pool).mean(axis=(2, 4)).reshape(-1, side * side)
    n_train, n_test = _split_sizes(x.shape[0], n_train, n_test)
    x_tr, y_tr, x_te, y_te = _split(x, y, n_train, n_test, rng)
    x_tr, x_te = _minmax(x_tr, x_te, clip)
    return SplitDataset(x_tr, y_tr, x_te, y_te, "trig", n_classes)


def load_diabetes(n_train=None, n_test=None, seed=0, standardize_y=True, clip=True):
    """scikit-learn's diabetes regression data (10 features), scaled for ``features.trig``.

    Inputs are scaled per feature to ``[0, 1]`` by min-max on the training
    split; test inputs are clipped to ``[0, 1]`` unless ``clip=False``.

    Parameters
    ----------
    n_train, n_test : int, optional
        Split sizes, as in :func:`load_digits` (442 samples in all).
    seed : None, int >= 0 or numpy.random.Generator, optional
        Randomness of the split.
    standardize_y : bool, optional
        If true, targets are shifted and scaled by the training mean and
        standard deviation (training targets then have mean 0 and variance 1).
    clip : bool, optional
        Clip scaled test inputs to ``[0, 1]``.

    Returns
    -------
    SplitDataset
        Inputs of shape ``(n, 10)``, float targets, ``feature_map = "trig"``
        and ``n_classes = None``.

    Raises
    ------
    ImportError
        If scikit-learn is not installed.
    TypeError, ValueError
        If an argument has the wrong type or is out of range.
    """
    datasets = _import_sklearn_datasets("load_diabetes")
    rng = _check_seed(seed)
    standardize_y = _check_bool(standardize_y, "standardize_y")
    clip = _check_bool(clip, "clip")
    data = datasets.load_diabetes()
    x, y = data.data.astype(np.float64), data.target.astype(np.float64)
    n_train, n_test = _split_sizes(x.shape[0], n_train, n_test)
    x_tr, y_tr, x_te, y_te = _split(x, y, n_train, n_test, rng)
    x_tr, x_te = _minmax(x_tr, x_te, clip)
    if standardize_y:
        mean, std = y_tr.mean(), y_tr.std()
        std = std if std > 0 else 1.0
        y_tr, y_te = (y_tr - mean) / std, (y_te - mean) / std
    return SplitDataset(x_tr, y_tr, x_te, y_te, "trig", None)
