"""Random-matrix statistics of the MPS cores (theory 5.5).

Which matrices.  Core ``j`` has shape ``(phys_dim, D_j, D_{j+1})`` (a label core
``(n_outputs, phys_dim, D_j, D_{j+1})`` counts its outputs as more physical indices):

* ``"left"``: the left matricisation ``A_L`` of shape ``(d D_j, D_{j+1})``;
* ``"right"``: the right one, ``(D_j, d D_{j+1})``;
* ``"slices"``: the ``d`` slices ``A_s`` of shape ``(D_j, D_{j+1})``;
* ``"symmetric"``: ``(A_s + A_s^T) / sqrt(2)`` of square slices (a GOE matrix at init).

Normalisation.  A matrix ``M`` of shape ``p x q`` is transposed if ``p < q`` so that ``p >= q``;
then ``X = M^T M / (p v)`` with ``v`` the entry variance.  For i.i.d. entries the eigenvalues of
``X`` follow the Marchenko-Pastur law of ratio ``gamma = q / p <= 1`` (mean 1, variance
``gamma``, edges ``(1 -+ sqrt(gamma))^2``) and there is no atom at zero.  Symmetric slices are
scaled by ``1 / sqrt(n v)``, which gives the semicircle on ``[-2, 2]``.  The variance is
estimated from the matrix (``variance="estimate"``: the mean square entry of the core, so the
eigenvalues of ``X`` average exactly 1; a strong outlier inflates it, and the bulk then sits
below the law), taken from the initial distribution of a model drawn by
:meth:`mpsntk.MPS.random` (``"init"``), or given as a number.

Statistics (:func:`spectral_statistics`): Kolmogorov-Smirnov distance to the law, outliers
beyond the edge with a Tracy-Widom margin (:func:`edge_threshold`), and the mean bulk spacing
ratio ``<r~>`` (:func:`spacing_ratios`) against GOE, GUE and Poisson references.  The per-core
matrices are small (``d D^2`` entries) and are copied to the host for the eigenvalues.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from .._validate import _check_choice, _check_int, _describe
from ._common import _as_real_array, _check_mps, _StepCallback, _to_host

__all__ = [
    "MIN_EIGENVALUES",
    "R_TILDE_GOE",
    "R_TILDE_GOE_SURMISE",
    "R_TILDE_GUE",
    "R_TILDE_POISSON",
    "CoreStatistics",
    "Spectrum",
    "SpectrumMonitor",
    "core_spectrum",
    "core_statistics",
    "edge_threshold",
    "ks_distance",
    "marchenko_pastur_cdf",
    "marchenko_pastur_edges",
    "marchenko_pastur_pdf",
    "matrix_spectrum",
    "semicircle_cdf",
    "semicircle_pdf",
    "spacing_ratios",
    "spectral_statistics",
    "tracy_widom_quantile",
]

#: Mean bulk spacing ratio ``<r~>`` of the Gaussian orthogonal ensemble (Atas et al. 2013).
R_TILDE_GOE = 0.5307
#: The Wigner-like surmise for the GOE, ``4 - 2 sqrt(3)`` (Atas et al. 2013).
R_TILDE_GOE_SURMISE = 4.0 - 2.0 * np.sqrt(3.0)
#: Mean bulk spacing ratio of the Gaussian unitary ensemble (Atas et al. 2013).
R_TILDE_GUE = 0.5996
#: Mean spacing ratio of uncorrelated (Poisson) levels, ``2 ln 2 - 1``.
R_TILDE_POISSON = 2.0 * np.log(2.0) - 1.0

# Upper-tail quantiles s with P(TW_1 > s) = false alarm, of the Tracy-Widom law of the largest
# eigenvalue of real (beta = 1) ensembles: F_1(s) = det(I - K_s) on L^2(0, inf), K_s(u, v) =
# Ai(s + u + v) (Ferrari & Spohn 2005), evaluated by Gauss-Legendre quadrature (Bornemann
# 2010); tests/test_rmt.py recomputes them.  Mean -1.2065, standard deviation 1.2680.
_TW1_UPPER = {
    0.5: -1.268575,
    0.2: -0.165313,
    0.1: 0.450143,
    0.05: 0.979316,
    0.02: 1.597756,
    0.01: 2.023449,
    0.005: 2.422327,
    0.002: 2.917407,
    0.001: 3.272196,
    0.0001: 4.359420,
}

_MATRICES = ("left", "right", "slices", "symmetric")
_MP, _SEMICIRCLE = "marchenko-pastur", "semicircle"
#: Eigenvalues per matrix below which :func:`spectral_statistics` refuses a spectrum.
MIN_EIGENVALUES = 8


# ----------------------------------------------------------------------------- the laws


def _check_gamma(gamma):
    if isinstance(gamma, (bool, np.bool_)) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"gamma must be a real number in (0, 1]; got {_describe(gamma)}")
    gamma = float(gamma)
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must lie in (0, 1] (columns / rows, the matrix oriented with "
                         f"rows >= columns); got {gamma}")
    return gamma


def _as_points(x, name="x"):
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real numbers; got {_describe(x)}")
    arr = arr.astype(np.float64)
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} must not contain NaN")
    return arr


def marchenko_pastur_edges(gamma):
    """Edges ``x_-, x_+ = (1 -+ sqrt(gamma))^2`` of the Marchenko-Pastur law of ratio
    ``gamma = q / p`` in ``(0, 1]`` (the normalisation ``X = M^T M / (p v)``, mean 1)."""
    gamma = _check_gamma(gamma)
    return (1.0 - np.sqrt(gamma)) ** 2, (1.0 + np.sqrt(gamma)) ** 2


def marchenko_pastur_pdf(x, gamma):
    """Marchenko-Pastur density ``sqrt((x_+ - x)(x - x_-)) / (2 pi gamma x)`` on
    ``[x_-, x_+]``, zero outside (theory 5.5); mean 1 and variance ``gamma``.

    Parameters
    ----------
    x : float or array_like
    gamma : float in (0, 1]

    Returns
    -------
    float or ndarray of the shape of ``x``
    """
    lo, hi = marchenko_pastur_edges(gamma)
    x = _as_points(x)
    inside = (x > lo) & (x < hi)
    xs = np.where(inside, x, 1.0)
    out = np.where(inside, np.sqrt(np.abs((hi - xs) * (xs - lo))) / (2 * np.pi * gamma * xs), 0.0)
    return float(out) if out.ndim == 0 else out


def marchenko_pastur_cdf(x, gamma):
    """Distribution function of :func:`marchenko_pastur_pdf`, in closed form.

    With ``a, b = x_-, x_+`` and ``r = sqrt((b - x)(x - a))``, ``2 pi gamma F(x) = r +
    (a + b)/2 (atan2(2x - a - b, 2r) + pi/2) - sqrt(ab) (atan2((a + b) x - 2ab, 2 sqrt(ab) r)
    + pi/2)``: the arcsine antiderivative written with ``atan2`` so that it keeps full
    precision at the edges.
    """
    gamma = _check_gamma(gamma)
    a, b = marchenko_pastur_edges(gamma)
    x = np.clip(_as_points(x), a, b)
    r = np.sqrt(np.maximum((b - x) * (x - a), 0.0))
    sab = np.sqrt(a * b)
    val = r + 0.5 * (a + b) * (np.arctan2(2 * x - a - b, 2 * r) + np.pi / 2)
    val -= sab * (np.arctan2((a + b) * x - 2 * a * b, 2 * sab * r) + np.pi / 2)
    out = np.clip(val / (2 * np.pi * gamma), 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def semicircle_pdf(x):
    """Wigner semicircle ``sqrt(4 - x^2) / (2 pi)`` on ``[-2, 2]`` (mean 0, variance 1)."""
    x = _as_points(x)
    out = np.sqrt(np.maximum(4.0 - x * x, 0.0)) / (2 * np.pi)
    return float(out) if out.ndim == 0 else out


def semicircle_cdf(x):
    """Distribution function of :func:`semicircle_pdf`:
    ``1/2 + x sqrt(4 - x^2) / (4 pi) + arcsin(x / 2) / pi``."""
    x = np.clip(_as_points(x), -2.0, 2.0)
    out = 0.5 + x * np.sqrt(np.maximum(4.0 - x * x, 0.0)) / (4 * np.pi) + np.arcsin(x / 2) / np.pi
    out = np.clip(out, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def ks_distance(samples, cdf):
    """Kolmogorov-Smirnov distance ``sup_x |F_n(x) - F(x)|`` of a sample to a law.

    Parameters
    ----------
    samples : array_like
        Finite values (any shape; flattened), at least one.
    cdf : callable
        Vectorised distribution function, e.g. ``lambda x: marchenko_pastur_cdf(x, gamma)``.

    Returns
    -------
    float
    """
    x, _ = _as_real_array(samples, "samples", "of eigenvalues", np)
    if not callable(cdf):
        raise TypeError(f"cdf must be a callable distribution function; got {_describe(cdf)}")
    x = np.sort(x.reshape(-1))
    n = x.size
    f = np.asarray(cdf(x), dtype=np.float64)
    if f.shape != x.shape:
        raise ValueError(f"cdf must return one value per point; got shape {f.shape} for {n}")
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - f), np.max(f - (i - 1) / n)))


def tracy_widom_quantile(false_alarm):
    """``s`` with ``P(TW_1 > s) = false_alarm`` for the Tracy-Widom law of real ensembles.

    ``false_alarm`` must be one of 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 1e-4
    (tabulated from the Fredholm determinant, see the module source).
    """
    if isinstance(false_alarm, (bool, np.bool_)) or not isinstance(false_alarm, numbers.Real):
        raise TypeError(f"false_alarm must be a real number; got {_describe(false_alarm)}")
    for level, s in _TW1_UPPER.items():
        if abs(float(false_alarm) - level) <= 1e-12 * level:
            return s
    levels = ", ".join(f"{k:g}" for k in _TW1_UPPER)
    raise ValueError(f"false_alarm must be one of {levels}; got {false_alarm}")


def edge_threshold(n_rows, n_cols, false_alarm=0.01, *, symmetric=False):
    """Largest eigenvalue that pure noise exceeds with probability ``false_alarm``.

    Wishart (``symmetric=False``; Johnstone 2001, Ann. Statist. 29, 295-327, Theorem 1): for
    an ``n x p`` matrix of i.i.d. ``N(0, v)`` entries, ``(l_1 / v - mu_np) / sigma_np``
    tends to ``TW_1``, where ``l_1`` is the largest eigenvalue of ``M^T M``,
    ``mu_np = (sqrt(n - 1) + sqrt(p))^2`` and ``sigma_np = (sqrt(n - 1) + sqrt(p)) (1 / sqrt(n -
    1) + 1 / sqrt(p))^(1/3)``; accurate already for ``n, p`` of order 10.  In the
    normalisation of this module (``X = M^T M / (n v)``, ``n = n_rows >= p = n_cols``) the
    threshold is ``(mu_np + s sigma_np) / n`` with ``s`` = :func:`tracy_widom_quantile`; it
    exceeds the Marchenko-Pastur edge ``x_+`` by ``O(n^(-2/3))``.

    Symmetric (``(A + A^T) / sqrt(2)`` of an ``n x n`` matrix, GOE, scaled by ``1 / sqrt(n v)``):
    ``2 + s n^(-2/3)`` (Tracy & Widom 1996).

    Parameters
    ----------
    n_rows, n_cols : int
        Shape of the matrix with ``n_rows >= n_cols >= 1`` (``n_rows >= 2``).
    false_alarm : float
        Upper-tail probability for a matrix of pure noise (see :func:`tracy_widom_quantile`).
    symmetric : bool

    Returns
    -------
    float
    """
    n = _check_int(n_rows, "n_rows", 2)
    p = _check_int(n_cols, "n_cols", 1)
    if p > n:
        raise ValueError(f"n_cols must be <= n_rows (orient the matrix); got {n} x {p}")
    s = tracy_widom_quantile(false_alarm)
    if symmetric:
        if p != n:
            raise ValueError(f"a symmetric matrix is square; got {n} x {p}")
        return 2.0 + s * n ** (-2.0 / 3.0)
    rn, rp = np.sqrt(n - 1.0), np.sqrt(p)
    mu = (rn + rp) ** 2
    sigma = (rn + rp) * (1.0 / rn + 1.0 / rp) ** (1.0 / 3.0)
    return float((mu + s * sigma) / n)


def _check_bulk(bulk):
    if isinstance(bulk, (bool, np.bool_)) or not isinstance(bulk, numbers.Real):
        raise TypeError(f"bulk must be a fraction in (0, 1]; got {_describe(bulk)}")
    if not 0.0 < bulk <= 1.0:
        raise ValueError(f"bulk must be a fraction in (0, 1]; got {bulk}")
    return float(bulk)


def spacing_ratios(eigenvalues, *, bulk=0.6):
    """Spacing ratios ``r~_n = min(s_n, s_{n-1}) / max(s_n, s_{n-1})`` of the spectral bulk.

    ``s_n`` are consecutive level spacings among the central ``bulk`` fraction of the sorted
    eigenvalues (60 % by default); the ratios need no unfolding (Oganesyan & Huse 2007; Atas et
    al. 2013).  Their mean is :data:`R_TILDE_GOE` (0.5307) for GOE spectra,
    :data:`R_TILDE_GUE` (0.5996) for GUE and :data:`R_TILDE_POISSON` (``2 ln 2 - 1``) for
    uncorrelated levels.

    Parameters
    ----------
    eigenvalues : array_like, shape (n,) or (n_matrices, n)
        One spectrum, or several spectra of one size (ratios are taken within each).
    bulk : float in (0, 1]

    Returns
    -------
    ndarray, shape (n_ratios,)
        The ratios of all spectra, concatenated.

    Raises
    ------
    ValueError
        If a bulk holds fewer than 3 levels (no ratio), or two consecutive spacings vanish
        (exactly degenerate levels: the ratio is undefined).
    """
    ev, _ = _as_real_array(eigenvalues, "eigenvalues", "of shape (n,) or (n_matrices, n)", np)
    if ev.ndim not in (1, 2):
        raise ValueError(f"eigenvalues must have shape (n,) or (n_matrices, n); got {ev.shape}")
    bulk = _check_bulk(bulk)
    ev = np.sort(ev.reshape(-1, ev.shape[-1]), axis=1)
    n = ev.shape[1]
    cut = int(round(n * (1.0 - bulk) / 2.0))
    levels = ev[:, cut:n - cut]
    if levels.shape[1] < 3:
        raise ValueError(
            f"spectrum too small for spacing statistics: the central {bulk:.0%} of {n} "
            f"eigenvalues holds {levels.shape[1]} levels, at least 3 are needed"
        )
    s = np.diff(levels, axis=1)
    lo = np.minimum(s[:, 1:], s[:, :-1])
    hi = np.maximum(s[:, 1:], s[:, :-1])
    if np.any(hi == 0):
        raise ValueError(f"{int(np.sum(hi == 0))} pairs of consecutive spacings are zero "
                         "(degenerate levels): the spacing ratio is undefined")
    return (lo / hi).reshape(-1)


# ----------------------------------------------------------------------------- spectra


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Normalised eigenvalues of one or several matrices of one shape.

    Attributes
    ----------
    eigenvalues : ndarray, shape (n_matrices, n_eigenvalues)
        Ascending, per matrix: of ``X = M^T M / (p v)`` (Marchenko-Pastur) or of the symmetric
        matrix divided by ``sqrt(n v)`` (semicircle).
    law : {"marchenko-pastur", "semicircle"}
    gamma : float or None
        ``q / p`` for the Marchenko-Pastur law.
    shape : tuple of int
        ``(p, q)`` of each matrix after orientation (``p >= q``).
    variance : float
        The entry variance ``v`` used.
    edges : tuple of float
        Support of the law: ``(x_-, x_+)`` or ``(-2, 2)``.
    label : str
        What the matrices are (e.g. ``"site 3, left"``), for messages.
    """

    eigenvalues: np.ndarray
    law: str
    gamma: float | None
    shape: tuple
    variance: float
    edges: tuple
    label: str = "matrix"

    def cdf(self, x):
        """The law's distribution function."""
        if self.law == _SEMICIRCLE:
            return semicircle_cdf(x)
        return marchenko_pastur_cdf(x, self.gamma)

    def pdf(self, x):
        """The law's density."""
        if self.law == _SEMICIRCLE:
            return semicircle_pdf(x)
        return marchenko_pastur_pdf(x, self.gamma)


def _check_variance(variance, allowed=("estimate", "init")):
    """A variance choice: one of the strings ``allowed``, or a positive finite number."""
    what = f"variance must be {' or '.join(repr(a) for a in allowed)} or a positive number"
    if isinstance(variance, str):
        if variance not in allowed:
            raise ValueError(f"{what}; got {variance!r}")
        return variance
    if isinstance(variance, (bool, np.bool_)) or not isinstance(variance, numbers.Real):
        raise TypeError(f"{what}; got {_describe(variance)}")
    if not (np.isfinite(variance) and variance > 0):
        raise ValueError(f"{what}; got {variance}")
    return float(variance)


def _variance(mats, variance, label):
    variance = _check_variance(variance, ("estimate",))
    if variance != "estimate":
        return variance
    v = float(np.mean(mats * mats))
    if v == 0.0:
        raise ValueError(f"{label} is zero: no variance to estimate")
    return v


def _spectrum(mats, variance, symmetric, label):
    """Eigenvalues of host matrices ``mats`` of shape (n_matrices, rows, cols)."""
    v = _variance(mats, variance, label)
    if symmetric:
        n = mats.shape[1]
        if mats.shape[2] != n:
            raise ValueError(f"{label}: symmetric statistics need square matrices; got "
                             f"{mats.shape[1]} x {mats.shape[2]}")
        h = (mats + np.swapaxes(mats, 1, 2)) / np.sqrt(2.0)
        ev = np.linalg.eigvalsh(h) / np.sqrt(n * v)
        return Spectrum(ev, _SEMICIRCLE, None, (n, n), v, (-2.0, 2.0), label)
    if mats.shape[1] < mats.shape[2]:
        mats = np.swapaxes(mats, 1, 2)
    p, q = mats.shape[1:]
    # eigvalsh of the q x q Gram matrix: O(p q^2), and far cheaper than an SVD through LAPACK
    # (gesdd); rounding is eps * x_max, below any statistic here.
    ev = np.linalg.eigvalsh(np.swapaxes(mats, 1, 2) @ mats) / (p * v)
    gamma = q / p
    return Spectrum(ev, _MP, gamma, (p, q), v, marchenko_pastur_edges(gamma), label)


def matrix_spectrum(matrices, *, variance="estimate", symmetric=False):
    """Normalised spectrum of a matrix or a stack of matrices of one shape.

    Parameters
    ----------
    matrices : ndarray, shape (p, q) or (n_matrices, p, q)
        Real matrices (NumPy or CuPy; copied to the host).
    variance : "estimate" or float
        Entry variance ``v``: the mean square entry (over all matrices) or a given number.
    symmetric : bool
        Use ``(M + M^T) / sqrt(2)`` of square matrices (semicircle law) instead of ``M^T M``.

    Returns
    -------
    Spectrum
    """
    arr, xp = _as_real_array(matrices, "matrices", "of shape (p, q) or (n_matrices, p, q)")
    if arr.ndim not in (2, 3):
        raise ValueError(f"matrices must have shape (p, q) or (n_matrices, p, q); got "
                         f"{arr.shape}")
    mats = _to_host(arr, xp).reshape((-1,) + arr.shape[-2:])
    return _spectrum(mats, variance, bool(symmetric), "matrices")


def _check_site(mps, site, name="site"):
    if isinstance(site, (bool, np.bool_)) or not isinstance(site, (int, np.integer)):
        raise TypeError(f"{name} must be an integer site index; got {_describe(site)}")
    if not 0 <= site < mps.n_sites:
        raise ValueError(f"{name} must be a site index in 0..{mps.n_sites - 1}; got {site}")
    return int(site)


def _init_variance(mps, site):
    """Entry variance of core ``site`` under the distribution MPS.random drew it from."""
    init = mps.init
    if init is None or init.get("init", "normal") != "normal":
        raise ValueError(
            "variance='init' needs a model drawn by MPS.random with init='normal' (the entry "
            "variance of its cores is then known); pass variance='estimate' or a number"
        )
    if mps.parametrization == "standard":
        sigma = np.broadcast_to(np.asarray(init["sigma"], dtype=float), (mps.n_sites,))
        D = mps.bond_dims
        return float(sigma[site] ** 2 / np.sqrt(D[site] * D[site + 1]))
    return 1.0  # NTK parametrisation: W ~ N(0, 1), the scales are not trained


def _core_matrices(mps, site, matrix):
    core = _to_host(mps.cores[site], mps.xp).astype(np.float64)
    d_left, d_right = core.shape[-2:]
    core = core.reshape(-1, d_left, d_right)  # label core: outputs join the physical index
    if matrix == "left":
        return core.reshape(1, -1, d_right)
    if matrix == "right":
        return np.moveaxis(core, 1, 0).reshape(1, d_left, -1)
    return core


def core_spectrum(mps, site, *, matrix="left", variance="estimate"):
    """Normalised spectrum of core ``site`` of an MPS (see :mod:`mpsntk.diagnostics`).

    Parameters
    ----------
    mps : MPS
        Host or device model (the core is copied to the host).
    site : int
        Site index ``0 .. n_sites - 1``.
    matrix : {"left", "right", "slices", "symmetric"}
        Which matrices of the core (module docstring).
    variance : "estimate", "init" or float
        Entry variance ``v``: the mean square entry of the core (the spectrum then has mean
        exactly 1), the variance of the initial distribution of a model drawn by
        :meth:`mpsntk.MPS.random` (1 for the NTK parametrisation, whose trainable cores are
        ``W ~ N(0, 1)``; ``sigma_j^2 / sqrt(D_j D_{j+1})`` for the standard one), or a number.

    Returns
    -------
    Spectrum
    """
    _check_mps(mps)
    site = _check_site(mps, site)
    matrix = _check_choice(matrix, "matrix", _MATRICES)
    if _check_variance(variance) == "init":
        variance = _init_variance(mps, site)
    mats = _core_matrices(mps, site, matrix)
    return _spectrum(mats, variance, matrix == "symmetric", f"site {site} ({matrix})")


@dataclasses.dataclass(frozen=True)
class CoreStatistics:
    """Random-matrix statistics of one :class:`Spectrum` (see :func:`spectral_statistics`).

    Attributes
    ----------
    ks : float
        Kolmogorov-Smirnov distance of all eigenvalues to the law.
    mean, var : float
        Sample mean and variance of the eigenvalues (law: 1 and ``gamma``, or 0 and 1).
    edge : float
        Upper edge of the law (``x_+`` or 2).
    threshold : float
        Tracy-Widom threshold (:func:`edge_threshold`) at the chosen false-alarm level.
    outliers : ndarray
        Eigenvalues above ``threshold``, descending.
    top : ndarray
        The largest eigenvalues, descending (``top_k`` of them).
    r_tilde, r_tilde_se : float
        Mean bulk spacing ratio and its standard error (naive: ratios treated as independent).
    n_ratios : int
    """

    ks: float
    mean: float
    var: float
    edge: float
    threshold: float
    outliers: np.ndarray
    top: np.ndarray
    r_tilde: float
    r_tilde_se: float
    n_ratios: int

    @property
    def n_outliers(self):
        return int(self.outliers.size)


def spectral_statistics(spectrum, *, false_alarm=0.01, bulk=0.6, top_k=1):
    """Kolmogorov-Smirnov distance, Tracy-Widom outliers and spacing ratio of a spectrum.

    The outlier rule flags eigenvalues above :func:`edge_threshold`: a matrix of pure noise has
    one with probability ``false_alarm`` (per matrix); a low-rank learned structure (a spike
    above the BBP transition) shows as eigenvalues beyond it.

    Parameters
    ----------
    spectrum : Spectrum
        From :func:`core_spectrum` or :func:`matrix_spectrum`.
    false_alarm : float
        See :func:`tracy_widom_quantile` for the levels.
    bulk : float
        Fraction of central levels for :func:`spacing_ratios`.
    top_k : int
        How many of the largest eigenvalues to report.

    Returns
    -------
    CoreStatistics

    Raises
    ------
    ValueError
        If a matrix has fewer than :data:`MIN_EIGENVALUES` (8) eigenvalues, or ``top_k``
        exceeds the number of eigenvalues.
    """
    if not isinstance(spectrum, Spectrum):
        raise TypeError(f"spectrum must be a Spectrum (core_spectrum, matrix_spectrum); got "
                        f"{_describe(spectrum)}")
    ev = spectrum.eigenvalues
    if ev.shape[1] < MIN_EIGENVALUES:
        raise ValueError(
            f"{spectrum.label}: spectrum too small for statistics: {ev.shape[1]} eigenvalues per "
            f"matrix (shape {spectrum.shape[0]} x {spectrum.shape[1]}), at least "
            f"{MIN_EIGENVALUES} are needed"
        )
    top_k = _check_int(top_k, "top_k", 1)
    if top_k > ev.size:
        raise ValueError(f"top_k must be <= the number of eigenvalues, {ev.size}; got {top_k}")
    symmetric = spectrum.law == _SEMICIRCLE
    threshold = edge_threshold(*spectrum.shape, false_alarm, symmetric=symmetric)
    flat = np.sort(ev.reshape(-1))[::-1]
    r = spacing_ratios(ev, bulk=bulk)
    return CoreStatistics(
        ks=ks_distance(flat, spectrum.cdf),
        mean=float(flat.mean()),
        var=float(flat.var()),
        edge=float(spectrum.edges[1]),
        threshold=threshold,
        outliers=flat[flat > threshold],
        top=flat[:top_k].copy(),
        r_tilde=float(r.mean()),
        r_tilde_se=float(r.std(ddof=1) / np.sqrt(r.size)) if r.size > 1 else float("nan"),
        n_ratios=int(r.size),
    )


def _resolve_sites(mps, sites, matrix):
    """Explicit sites validated; None: every site whose matrices have enough eigenvalues."""
    if sites is None:
        out = []
        for j, c in enumerate(mps.cores):
            d_left, d_right = c.shape[-2:]
            n_phys = c.size // (d_left * d_right)
            rows, cols = {"left": (n_phys * d_left, d_right),
                          "right": (d_left, n_phys * d_right)}.get(matrix, (d_left, d_right))
            if matrix == "symmetric" and d_left != d_right:
                continue
            if min(rows, cols) >= MIN_EIGENVALUES:
                out.append(j)
        if not out:
            raise ValueError(f"no site of this model has matrices ({matrix}) with at least "
                             f"{MIN_EIGENVALUES} eigenvalues; the bond dimensions are "
                             f"{mps.bond_dims}")
        return out
    if isinstance(sites, (int, np.integer)) and not isinstance(sites, (bool, np.bool_)):
        sites = [sites]
    if isinstance(sites, (str, bytes)) or not hasattr(sites, "__iter__"):
        raise TypeError(f"sites must be None, a site index or a sequence of them; got "
                        f"{_describe(sites)}")
    sites = [_check_site(mps, j, "sites entries") for j in sites]
    if not sites or len(set(sites)) != len(sites):
        raise ValueError(f"sites must be a non-empty sequence of distinct site indices; got "
                         f"{sites}")
    return sites


def core_statistics(mps, sites=None, *, matrix="left", variance="estimate", false_alarm=0.01,
                    bulk=0.6, top_k=1):
    """:func:`spectral_statistics` of :func:`core_spectrum` for several sites.

    Parameters
    ----------
    mps : MPS
    sites : int or sequence of int, optional
        Default: every site whose matrices have at least 8 eigenvalues (open chains: not the
        end sites, whose left or right bond is 1).
    matrix, variance : as in :func:`core_spectrum`
    false_alarm, bulk, top_k : as in :func:`spectral_statistics`

    Returns
    -------
    dict
        Site index -> :class:`CoreStatistics`.
    """
    _check_mps(mps)
    matrix = _check_choice(matrix, "matrix", _MATRICES)
    return {j: spectral_statistics(core_spectrum(mps, j, matrix=matrix, variance=variance),
                                   false_alarm=false_alarm, bulk=bulk, top_k=top_k)
            for j in _resolve_sites(mps, sites, matrix)}


class SpectrumMonitor(_StepCallback):
    """Callback for :func:`mpsntk.train`: random-matrix statistics of chosen cores over training.

    At each logged step it computes :func:`core_statistics` and returns arrays over the
    tracked sites (in the order of :attr:`sites`, fixed at the first call):

    * ``rmt_ks``: Kolmogorov-Smirnov distance to the law;
    * ``rmt_r_tilde``: mean bulk spacing ratio (compare with :data:`R_TILDE_GOE`);
    * ``rmt_n_outliers``: eigenvalues beyond the Tracy-Widom threshold;
    * ``rmt_threshold``: that threshold;
    * ``rmt_top``: the ``top_k`` largest eigenvalues, shape (n_tracked, top_k).

    Level repulsion is already GOE-like at initialisation (theory 5.5); a learned low-rank
    structure shows as outliers, and its effect on the bulk as a drift of ``<r~>``.  The cores
    are copied to the host for the eigenvalues.

    Parameters
    ----------
    sites, matrix, variance, false_alarm, bulk, top_k
        As in :func:`core_statistics`.
    """

    def __init__(self, sites=None, *, matrix="left", variance="estimate", false_alarm=0.01,
                 bulk=0.6, top_k=1):
        self.matrix = _check_choice(matrix, "matrix", _MATRICES)
        tracy_widom_quantile(false_alarm)  # checked now, not at the first logged step
        self.requested_sites = sites
        self.options = dict(matrix=matrix, variance=_check_variance(variance),
                            false_alarm=false_alarm, bulk=_check_bulk(bulk),
                            top_k=_check_int(top_k, "top_k", 1))
        super().__init__()

    def reset(self):
        super().reset()
        self.sites = None

    def _compute(self, step, mps, first):
        if first:
            self.sites = _resolve_sites(mps, self.requested_sites, self.matrix)
        stats = core_statistics(mps, self.sites, **self.options)
        rows = [stats[j] for j in self.sites]
        return {
            "rmt_ks": np.array([s.ks for s in rows]),
            "rmt_r_tilde": np.array([s.r_tilde for s in rows]),
            "rmt_n_outliers": np.array([s.n_outliers for s in rows]),
            "rmt_threshold": np.array([s.threshold for s in rows]),
            "rmt_top": np.array([s.top for s in rows]),
        }
