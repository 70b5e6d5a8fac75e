"""Finite-bond-dimension fluctuations of the NTK and of the outputs (theory section 3.3).

At every bond dimension ``D`` the NTK of a randomly initialised MPS equals its infinite-``D``
limit in expectation, ``E Theta_D = Theta_inf`` (and ``E f f' = K``); a single draw deviates
from it by a relative amount that falls with ``D``:

* :func:`kernel_statistics` draws models with :meth:`mpsntk.MPS.random`, computes their NTK and
  outputs with the engine, and accumulates the entrywise mean and standard error of ``Theta_D``
  and of ``f(x) f(x')``, and the mean of ``||Theta_D - Theta_inf||_F / ||Theta_inf||_F``;
* :func:`fluctuation_scaling` does that over a list of bond dimensions and fits the power law
  ``E ||Theta_D - Theta_inf||_F / ||Theta_inf||_F = a D^b`` (:func:`fit_power_law`); the
  theory measures ``b ~ -1/2`` for open chains and ``b ~ -1`` for periodic ones;
* :func:`kurtosis_open_chain` is the exact open-chain law ``E f^4 / (E f^2)^2 =
  3 prod_bonds (1 + 2 / D_j)``, and :func:`output_kurtosis` measures it.

Every routine accumulates running sums (Welford updates), never the draws themselves, so its
memory is that of a few kernels whatever the number of draws.
"""

from __future__ import annotations

import dataclasses
import numbers
import sys

import numpy as np

from .._validate import (
    _as_phi,
    _as_site_vector,
    _check_bool,
    _check_choice,
    _check_int,
    _check_seed,
    _describe,
)
from ..infinite import nngp_infinite, ntk_infinite
from ..mps import MPS
from ..ntk import ntk

__all__ = [
    "FluctuationScaling",
    "KernelStatistics",
    "OutputKurtosis",
    "PowerLawFit",
    "fit_power_law",
    "fluctuation_scaling",
    "kernel_statistics",
    "kurtosis_open_chain",
    "output_kurtosis",
]


def _progress(total, progress, desc):
    """A tqdm bar (None when tqdm is missing, or by default when stderr is not a terminal)."""
    if progress is not None:
        progress = _check_bool(progress, "progress")
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            import warnings

            warnings.warn("progress=True needs tqdm (pip install tqdm)", RuntimeWarning,
                          stacklevel=3)
        return None
    if progress is None and not sys.stderr.isatty():
        return None
    return tqdm(total=total, desc=desc, leave=False)


class _Welford:
    """Running mean and sum of squared deviations of equally shaped arrays."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, value):
        self.n += 1
        delta = value - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (value - self.mean)

    def std(self):
        return np.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else np.full_like(self.mean, np.nan)

    def se(self):
        return self.std() / np.sqrt(self.n)


def _z(diff, se):
    """|diff| / se, with 0 where both vanish and inf where only se does."""
    diff, se = np.abs(diff), np.asarray(se)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(diff == 0, 0.0, np.inf))


def _draw_args(phi, bond_dim, boundary, sigma, parametrization, seed, n_draws):
    phi = _as_phi(phi)
    n_sites, phys_dim = phi.shape[1], phi.shape[2]
    if isinstance(bond_dim, (bool, np.bool_)) or not isinstance(bond_dim, numbers.Integral):
        raise TypeError(f"bond_dim must be an integer >= 1; got {_describe(bond_dim)}")
    bond_dim = _check_int(bond_dim, "bond_dim", 1)
    n_draws = _check_int(n_draws, "n_draws", 2)
    _check_choice(boundary, "boundary", ("open", "periodic"))
    _check_choice(parametrization, "parametrization", ("ntk", "standard"))
    if boundary == "periodic" and n_sites < 2:
        raise ValueError("boundary='periodic' needs n_sites >= 2; got phi with 1 site")
    sigma = _as_site_vector(sigma, "sigma", n_sites, positive=True)
    rng = _check_seed(seed)
    model = dict(n_sites=n_sites, bond_dim=bond_dim, phys_dim=phys_dim, boundary=boundary,
                 sigma=sigma, parametrization=parametrization, dtype=phi.dtype)
    return phi, model, n_draws, rng


@dataclasses.dataclass
class KernelStatistics:
    """Monte Carlo moments of the NTK and outputs over initialisations at one bond dimension.

    Attributes
    ----------
    bond_dim : int
    boundary : str
    n_draws : int
    ntk_mean, ntk_se : ndarray, shape (n_samples, n_samples)
        Entrywise mean of ``Theta_D`` over the draws and its standard error.
    ntk_infinite : ndarray, shape (n_samples, n_samples)
        ``Theta_inf`` (:func:`mpsntk.ntk_infinite`), which equals ``E Theta_D`` exactly.
    nngp_mean, nngp_se : ndarray, shape (n_samples, n_samples)
        Mean of ``f(x_i) f(x_k)`` and its standard error.
    nngp_infinite : ndarray, shape (n_samples, n_samples)
        ``K`` (:func:`mpsntk.nngp_infinite`), which equals ``E f f'`` exactly.
    rel_dev_mean, rel_dev_se, rel_dev_std : float
        Mean, standard error and standard deviation over draws of
        ``||Theta_D - Theta_inf||_F / ||Theta_inf||_F``.
    """

    bond_dim: int
    boundary: str
    n_draws: int
    ntk_mean: np.ndarray
    ntk_se: np.ndarray
    ntk_infinite: np.ndarray
    nngp_mean: np.ndarray
    nngp_se: np.ndarray
    nngp_infinite: np.ndarray
    rel_dev_mean: float
    rel_dev_se: float
    rel_dev_std: float

    @property
    def ntk_z(self):
        """``|mean Theta_D - Theta_inf| / se`` entrywise, shape (n_samples, n_samples)."""
        return _z(self.ntk_mean - self.ntk_infinite, self.ntk_se)

    @property
    def nngp_z(self):
        """``|mean f f' - K| / se`` entrywise, shape (n_samples, n_samples)."""
        return _z(self.nngp_mean - self.nngp_infinite, self.nngp_se)

    @property
    def max_cov_err(self):
        """``max |mean f f' - K|`` over the entries."""
        return float(np.max(np.abs(self.nngp_mean - self.nngp_infinite)))


def kernel_statistics(phi, bond_dim, n_draws, *, boundary="open", sigma=1.0,
                      parametrization="ntk", seed=None, progress=None):
    """Mean and fluctuation of the empirical NTK and of ``f f'`` over random initialisations.

    Draws ``n_draws`` models ``MPS.random(n_sites, bond_dim, ...)`` one after the other from the
    generator of ``seed``, computes ``Theta_D = mpsntk.ntk(mps, phi)`` and ``f = mps(phi)`` with
    the engine, and accumulates running moments (memory of a few ``(n_samples, n_samples)``
    arrays, whatever ``n_draws``).

    Parameters
    ----------
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Features (float32 or float64; the models get their dtype).
    bond_dim : int
        Uniform bond dimension ``D >= 1``.
    n_draws : int
        Number of initialisations, ``>= 2`` (standard errors need two).
    boundary : {"open", "periodic"}
    sigma : float or array_like of shape (n_sites,)
        Per-site prior scale, as in :meth:`mpsntk.MPS.random`.
    parametrization : {"ntk", "standard"}
        As in :meth:`mpsntk.MPS.random`; ``Theta_inf`` uses the matching ``rho_j``.
    seed : None, int >= 0 or numpy.random.Generator
    progress : bool or None
        tqdm progress bar (None: when tqdm is installed and stderr is a terminal).

    Returns
    -------
    KernelStatistics
    """
    phi, model, n_draws, rng = _draw_args(phi, bond_dim, boundary, sigma, parametrization, seed,
                                          n_draws)
    theta_inf = ntk_infinite(phi, sigma=model["sigma"], parametrization=parametrization)
    theta_inf = theta_inf.astype(np.float64)
    k_inf = nngp_infinite(phi, sigma=model["sigma"]).astype(np.float64)
    norm_inf = np.linalg.norm(theta_inf)
    acc_theta, acc_ff, acc_dev = _Welford(), _Welford(), _Welford()
    bar = _progress(n_draws, progress, f"kernels D={bond_dim} {boundary}")
    for _ in range(n_draws):
        mps = MPS.random(seed=rng, **model)
        theta = np.asarray(ntk(mps, phi), dtype=np.float64)
        f = np.asarray(mps(phi), dtype=np.float64)
        acc_theta.add(theta)
        acc_ff.add(np.outer(f, f))
        acc_dev.add(np.linalg.norm(theta - theta_inf) / norm_inf)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return KernelStatistics(
        bond_dim=model["bond_dim"], boundary=boundary, n_draws=n_draws,
        ntk_mean=acc_theta.mean, ntk_se=acc_theta.se(), ntk_infinite=theta_inf,
        nngp_mean=acc_ff.mean, nngp_se=acc_ff.se(), nngp_infinite=k_inf,
        rel_dev_mean=float(acc_dev.mean), rel_dev_se=float(acc_dev.se()),
        rel_dev_std=float(acc_dev.std()))


@dataclasses.dataclass
class PowerLawFit:
    """Fit ``y = prefactor * x**slope`` by weighted least squares on ``log y``.

    Attributes
    ----------
    slope, slope_se, prefactor, prefactor_se : float
        The exponent, the prefactor and their standard errors.
    chi2_red : float
        Reduced chi-square of the fit in log space (nan without ``y_se`` or with two points).
    n_points : int
    """

    slope: float
    slope_se: float
    prefactor: float
    prefactor_se: float
    chi2_red: float
    n_points: int

    def __call__(self, x):
        """The fitted law at ``x``."""
        return self.prefactor * np.asarray(x, dtype=np.float64) ** self.slope


def _positive_vector(value, name, size=None):
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a 1-D array of positive reals; got {_describe(value)}")
    arr = arr.astype(np.float64)
    if arr.ndim != 1 or (size is not None and arr.size != size):
        want = "a 1-D array" if size is None else f"shape ({size},)"
        raise ValueError(f"{name} must be {want}; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must hold finite values > 0; got {arr}")
    return arr


def fit_power_law(x, y, y_se=None):
    """Fit ``y = a x^b`` as the straight line ``log y = log a + b log x``.

    Parameters
    ----------
    x, y : array_like, shape (n_points,)
        Positive abscissae (e.g. bond dimensions) and values; at least two distinct ``x``.
    y_se : array_like, shape (n_points,), optional
        Standard errors of ``y``. The points are then weighted by ``(y / y_se)^2`` (the
        inverse variance of ``log y``), and the parameter covariance ``(X^T W X)^-1`` is
        scaled by the reduced chi-square when that exceeds 1: the law is only asymptotic, and
        scatter beyond the statistical errors must widen the errors, not be hidden. Without
        ``y_se`` it is ordinary least squares with errors from the residuals (at least three
        points then).

    Returns
    -------
    PowerLawFit
        ``prefactor_se`` is ``a * se(log a)`` (first order).
    """
    x = _positive_vector(x, "x")
    y = _positive_vector(y, "y", x.size)
    if np.unique(x).size < 2:
        raise ValueError(f"x must hold at least two distinct values; got {x}")
    X = np.column_stack([np.ones_like(x), np.log(x)])
    ly = np.log(y)
    n = x.size
    if y_se is None:
        if n < 3:
            raise ValueError("fit_power_law without y_se needs at least 3 points for its errors")
        w = np.ones(n)
    else:
        y_se = _positive_vector(y_se, "y_se", n)
        w = (y / y_se) ** 2
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    coef = cov @ (X.T @ (w * ly))
    resid = ly - X @ coef
    chi2_red = float(np.sum(w * resid**2) / (n - 2)) if n > 2 else float("nan")
    if y_se is None:
        cov = cov * chi2_red
        chi2_red = float("nan")
    elif n > 2 and chi2_red > 1.0:
        cov = cov * chi2_red
    prefactor = float(np.exp(coef[0]))
    return PowerLawFit(slope=float(coef[1]), slope_se=float(np.sqrt(cov[1, 1])),
                       prefactor=prefactor, prefactor_se=float(prefactor * np.sqrt(cov[0, 0])),
                       chi2_red=chi2_red, n_points=n)


@dataclasses.dataclass
class FluctuationScaling:
    """``E ||Theta_D - Theta_inf||_F / ||Theta_inf||_F`` against the bond dimension.

    Attributes
    ----------
    bond_dims : ndarray of int, shape (n_dims,)
    mean, se, std : ndarray, shape (n_dims,)
        Mean over draws of the relative deviation, its standard error and its spread.
    n_draws : int
    boundary : str
    fit : PowerLawFit
        ``mean = prefactor * D^slope``, weighted by ``se``.
    """

    bond_dims: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    std: np.ndarray
    n_draws: int
    boundary: str
    fit: PowerLawFit


def fluctuation_scaling(phi, bond_dims, n_draws, *, boundary="open", sigma=1.0,
                        parametrization="ntk", seed=None, progress=None):
    """Relative finite-``D`` deviation of the NTK from its limit, over bond dimensions, and
    its power-law fit (theory 3.3: slope ``-1/2`` open, ``-1`` periodic).

    Parameters
    ----------
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
    bond_dims : sequence of int
        At least two distinct bond dimensions.
    n_draws : int
        Initialisations per bond dimension (``>= 2``).
    boundary, sigma, parametrization, seed, progress
        As in :func:`kernel_statistics`; one generator (from ``seed``) serves all bond
        dimensions in turn.

    Returns
    -------
    FluctuationScaling
    """
    if isinstance(bond_dims, (str, bytes)) or np.ndim(bond_dims) != 1 or len(bond_dims) < 2:
        raise ValueError(
            f"bond_dims must be a sequence of at least two bond dimensions; got "
            f"{_describe(bond_dims)}")
    dims = [_check_int(D, "bond_dims entries", 1) for D in bond_dims]
    if len(set(dims)) < 2:
        raise ValueError(f"bond_dims must hold at least two distinct values; got {dims}")
    rng = _check_seed(seed)
    stats = [kernel_statistics(phi, D, n_draws, boundary=boundary, sigma=sigma,
                               parametrization=parametrization, seed=rng, progress=progress)
             for D in dims]
    mean = np.array([s.rel_dev_mean for s in stats])
    se = np.array([s.rel_dev_se for s in stats])
    return FluctuationScaling(
        bond_dims=np.array(dims), mean=mean, se=se, std=np.array([s.rel_dev_std for s in stats]),
        n_draws=stats[0].n_draws, boundary=boundary, fit=fit_power_law(dims, mean, se))


def kurtosis_open_chain(n_sites, bond_dim):
    """Exact kurtosis ``E f(x)^4 / (E f(x)^2)^2`` of a Gaussian open chain (theory 3.3).

    With independent zero-mean Gaussian cores (either parametrisation), ``f = L_N m_N`` is
    Gaussian given the left environment, and ``|L_{j+1}|^2 = s_j^2 |L_j|^2 chi^2_{D_j}``;
    hence ``E f^4 / (E f^2)^2 = 3 prod_{j=1}^{N-1} (1 + 2 / D_j)`` over the ``N - 1`` internal
    bonds, at every input, with any feature map and scales. Uniform ``D``:
    ``3 (1 + 2 / D)^(N - 1)``.

    Parameters
    ----------
    n_sites : int
        ``N >= 1``.
    bond_dim : int or sequence of int
        Uniform ``D``, or all bonds ``(D_0, ..., D_N)`` (``D_0 = D_N = 1``).

    Returns
    -------
    float
    """
    n_sites = _check_int(n_sites, "n_sites", 1)
    if isinstance(bond_dim, numbers.Integral) and not isinstance(bond_dim, (bool, np.bool_)):
        inner = [_check_int(bond_dim, "bond_dim", 1)] * (n_sites - 1)
    else:
        if isinstance(bond_dim, (str, bytes)) or np.ndim(bond_dim) != 1:
            raise TypeError(
                f"bond_dim must be an int or a sequence of n_sites + 1 = {n_sites + 1} ints; "
                f"got {_describe(bond_dim)}")
        bonds = [_check_int(b, "bond_dim entries", 1) for b in bond_dim]
        if len(bonds) != n_sites + 1 or bonds[0] != 1 or bonds[-1] != 1:
            raise ValueError(
                f"bond_dim must list n_sites + 1 = {n_sites + 1} bonds with D_0 = D_N = 1 "
                f"(open chain); got {bonds}")
        inner = bonds[1:-1]
    return float(3.0 * np.prod([1.0 + 2.0 / D for D in inner]))


@dataclasses.dataclass
class OutputKurtosis:
    """Measured ``E f^4 / (E f^2)^2`` per sample over initialisations.

    Attributes
    ----------
    kurtosis, se : ndarray, shape (n_samples,)
        The ratio of the sample moments and its standard error (delta method, from the
        sample moments of ``f^2`` up to ``f^8``).
    second_moment : ndarray, shape (n_samples,)
        Sample mean of ``f^2`` (``E f^2 = K(x, x)`` exactly).
    n_draws : int
    bond_dim : int
    boundary : str
    """

    kurtosis: np.ndarray
    se: np.ndarray
    second_moment: np.ndarray
    n_draws: int
    bond_dim: int
    boundary: str


def output_kurtosis(phi, bond_dim, n_draws, *, boundary="open", sigma=1.0,
                    parametrization="ntk", seed=None, progress=None):
    """Measure the kurtosis ``E f(x)^4 / (E f(x)^2)^2`` of the outputs over initialisations.

    Each draw is one ``MPS.random`` model evaluated by the engine on all samples of ``phi``;
    running sums of ``f^2, f^4, f^6, f^8`` per sample give the ratio and, by the delta method,
    its standard error (heavy-tailed at small ``D``: the error is then itself noisy). Compare
    with :func:`kurtosis_open_chain` for open chains.

    Parameters
    ----------
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
    bond_dim, n_draws, boundary, sigma, parametrization, seed, progress
        As in :func:`kernel_statistics`.

    Returns
    -------
    OutputKurtosis
    """
    phi, model, n_draws, rng = _draw_args(phi, bond_dim, boundary, sigma, parametrization, seed,
                                          n_draws)
    acc = _Welford()  # of the vector (f^2, f^4, f^6, f^8): a running mean is all we need
    bar = _progress(n_draws, progress, f"kurtosis D={bond_dim} {boundary}")
    for _ in range(n_draws):
        f2 = np.asarray(MPS.random(seed=rng, **model)(phi), dtype=np.float64) ** 2
        acc.add(np.stack([f2, f2**2, f2**3, f2**4]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    m2, m4, m6, m8 = acc.mean
    kurt = m4 / m2**2
    # Delta method for g(m2, m4) = m4 / m2^2 with the covariance of the sample means.
    n = n_draws
    var_m2, var_m4, cov_24 = (m4 - m2**2) / n, (m8 - m4**2) / n, (m6 - m4 * m2) / n
    g2, g4 = -2.0 * m4 / m2**3, 1.0 / m2**2
    var = g2**2 * var_m2 + g4**2 * var_m4 + 2.0 * g2 * g4 * cov_24
    return OutputKurtosis(kurtosis=kurt, se=np.sqrt(np.maximum(var, 0.0)), second_moment=m2,
                          n_draws=n_draws, bond_dim=model["bond_dim"], boundary=boundary)
