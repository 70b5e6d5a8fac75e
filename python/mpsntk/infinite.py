"""Infinite-bond-dimension kernels of matrix product states (spec section 3).

With cores initialised i.i.d. and zero-mean in the NTK parametrisation
(``A_j = c_j W_j``, ``c_j = sigma_j (D_j D_{j+1})**(-1/4)`` for core ``j`` of shape
``(phys_dim, D_j, D_{j+1})``, counting sites from 0; ``W ~ N(0, 1)``),
the NNGP kernel

``K(x, x') = E f(x) f(x') = prod_j sigma_j**2 k_j(x_j, x'_j)``

holds exactly at every bond dimension and for both boundary conditions, and
the expected empirical NTK is

``E Theta_D = Theta_inf = (sum_j rho_j) K(x, x')``,

with ``rho_j = 1`` in the NTK parametrisation and ``rho_j = sigma_j**(-2)``
for the standard parametrisation trained with the per-site rates
``eta_j = eta / sqrt(D_j D_{j+1})`` (Guo & Draper). For ``n_outputs`` outputs
the kernels are ``K (x) I_C`` and ``Theta_inf (x) I_C``.

Products over long chains under- or overflow; ``log=True`` returns
``(sign, logabs)`` computed as sums of logarithms, in the style of
:func:`numpy.linalg.slogdet`.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._validate import (
    _as_phi_pair,
    _as_site_vector,
    _check_bool,
    _check_choice,
    _check_int,
    _describe,
)

__all__ = ["nngp_infinite", "ntk_infinite"]

_PARAMETRIZATIONS = ("ntk", "standard")
_OUTPUT_MODES = ("trace", "mean", "full")


def _product_kernel(phi1, phi2, sigma2, log):
    """Accumulate ``prod_j sigma2_j k_j`` site by site in float64.

    Returns the product, or ``(sign, logabs)`` when ``log`` is true.
    """
    n1, n_sites = phi1.shape[0], phi1.shape[1]
    n2 = phi2.shape[0]
    if log:
        sign = np.ones((n1, n2))
        logabs = np.full((n1, n2), float(np.sum(np.log(sigma2))))
        with np.errstate(divide="ignore"):
            for j in range(n_sites):
                k_j = phi1[:, j, :] @ phi2[:, j, :].T
                sign *= np.sign(k_j)
                logabs += np.log(np.abs(k_j))
        return sign, logabs
    product = np.ones((n1, n2))
    exact_zero = np.zeros((n1, n2), dtype=bool)  # a local kernel is zero: so is the product
    with np.errstate(over="ignore", under="ignore"):
        for j in range(n_sites):
            k_j = phi1[:, j, :] @ phi2[:, j, :].T
            exact_zero |= k_j == 0
            product *= sigma2[j] * k_j
    return product, exact_zero


def _in_range(kernel, exact_zero, dtype, what):
    """``kernel`` as ``dtype``; FloatingPointError where it over- or underflows (an entry that is
    zero although no local kernel is): the log form holds such chains."""
    with np.errstate(over="ignore", under="ignore"):
        out = kernel.astype(dtype, copy=False)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError(f"{what} overflows the range of {dtype.name}; use log=True")
    if np.any((out == 0) & ~exact_zero):
        raise FloatingPointError(f"{what} underflows the range of {dtype.name}; use log=True")
    return out


def nngp_infinite(phi1, phi2=None, *, sigma=1.0, log=False):
    """NNGP kernel of an MPS, ``K(x, x') = prod_j sigma_j**2 k_j(x_j, x'_j)``.

    Parameters
    ----------
    phi1 : ndarray, shape (n1, n_sites, phys_dim)
        Features of the first set of samples (float32 or float64, finite).
    phi2 : ndarray, shape (n2, n_sites, phys_dim), optional
        Features of the second set; ``None`` means ``phi2 = phi1``.
    sigma : float or array_like of shape (n_sites,), optional
        Positive, finite per-site prior scales ``sigma_j``.
    log : bool, optional
        If true, return ``(sign, logabs)`` with ``K = sign * exp(logabs)``,
        computed as sums of logarithms so that long chains neither under- nor
        overflow. A vanishing local kernel gives ``sign = 0`` and
        ``logabs = -inf``.

    Returns
    -------
    K : ndarray, shape (n1, n2)
        The kernel (when ``log`` is false).
    sign, logabs : tuple of ndarray, each of shape (n1, n2)
        Sign (-1, 0 or 1) and log-magnitude of the kernel (when ``log`` is
        true).

    Notes
    -----
    Products are accumulated in float64; results are float32 only when both
    feature arrays are float32. The formula is exact at every bond dimension
    for both boundary conditions (spec section 3.1).

    Raises
    ------
    TypeError
        If a feature array is not float32/float64, ``sigma`` is not real or
        ``log`` is not a bool.
    ValueError
        If a feature array is not 3-D, is empty or contains NaN/Inf, if the two
        arrays differ in ``n_sites`` or ``phys_dim``, or if ``sigma`` has the
        wrong shape or non-positive/non-finite entries.
    FloatingPointError
        If ``log`` is false and the kernel overflows the output dtype, or
        underflows it (an entry rounds to zero though no local kernel is
        zero); ``log=True`` holds such chains.

    Examples
    --------
    >>> import numpy as np
    >>> from mpsntk.features import trig
    >>> from mpsntk.infinite import nngp_infinite
    >>> phi = trig(np.array([[0.0, 0.0], [0.0, 1.0]]))
    >>> nngp_infinite(phi).round(12)
    array([[1., 0.],
           [0., 1.]])
    """
    phi1, phi2, out_dtype = _as_phi_pair(phi1, phi2)
    log = _check_bool(log, "log")
    sigma = _as_site_vector(sigma, "sigma", phi1.shape[1], positive=True)
    result = _product_kernel(
        phi1.astype(np.float64, copy=False), phi2.astype(np.float64, copy=False), sigma**2, log
    )
    if log:
        sign, logabs = result
        return sign.astype(out_dtype, copy=False), logabs.astype(out_dtype, copy=False)
    return _in_range(*result, out_dtype, "the NNGP kernel")


def _site_rates(rho, sigma, n_sites, parametrization):
    """Per-site rates rho_j: validated if given, else 1 (NTK) or sigma_j^-2 (standard)."""
    if rho is not None:
        return _as_site_vector(rho, "rho", n_sites, positive=False)
    return np.ones(n_sites) if parametrization == "ntk" else sigma**-2


def _check_bond_dims(bond_dims, n_sites):
    """Validate a sequence of ``n_sites + 1`` positive integer bond dimensions."""
    if isinstance(bond_dims, (str, bytes)) or not hasattr(bond_dims, "__len__"):
        raise TypeError(
            f"bond_dims must be a sequence of n_sites + 1 = {n_sites + 1} positive ints; "
            f"got {_describe(bond_dims)}"
        )
    values = list(bond_dims)
    if len(values) != n_sites + 1 or any(
        isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 1
        for v in values
    ):
        raise ValueError(
            f"bond_dims must be a sequence of n_sites + 1 = {n_sites + 1} positive ints; "
            f"got {values}"
        )
    return tuple(int(v) for v in values)


def ntk_infinite(
    phi1,
    phi2=None,
    *,
    sigma=1.0,
    parametrization="ntk",
    rho=None,
    bond_dims=None,
    n_outputs=1,
    outputs="trace",
    log=False,
):
    """Infinite-bond-dimension NTK, ``Theta_inf(x, x') = (sum_j rho_j) K(x, x')``.

    Parameters
    ----------
    phi1 : ndarray, shape (n1, n_sites, phys_dim)
        Features of the first set of samples (float32 or float64, finite).
    phi2 : ndarray, shape (n2, n_sites, phys_dim), optional
        Features of the second set; ``None`` means ``phi2 = phi1``.
    sigma : float or array_like of shape (n_sites,), optional
        Positive, finite per-site prior scales ``sigma_j`` of the NNGP kernel
        ``K = prod_j sigma_j**2 k_j``.
    parametrization : {"ntk", "standard"}, optional
        ``"ntk"``: NTK parametrisation, ``rho_j = 1`` (so ``Theta_inf =
        n_sites K``). ``"standard"``: initialisation variance
        ``sigma_j**2 / sqrt(D_j D_{j+1})`` trained with the per-site rates
        ``eta / sqrt(D_j D_{j+1})``, ``rho_j = sigma_j**(-2)``.
    rho : float or array_like of shape (n_sites,), optional
        Explicit non-negative, finite per-site weights ``rho_j``; overrides
        ``parametrization``. For a model ``A_j = c_j W_j`` trained on ``W``
        with per-site rate multipliers ``r_j`` and ``sigma_j**2 = c_j**2
        sqrt(D_j D_{j+1})``, ``rho_j = r_j``.
    bond_dims : sequence of int, optional
        Bond dimensions ``D_0 .. D_N`` (length ``n_sites + 1``) of a finite
        model the kernel is compared with. They are validated only: the
        expectation ``E Theta_D`` equals ``Theta_inf`` exactly at every bond
        dimension (spec section 3.2), so the result does not depend on them.
    n_outputs : int, optional
        Number of outputs ``C >= 1``. The full kernel of a multi-output model
        is the Kronecker product ``Theta_inf (x) I_C``.
    outputs : {"trace", "mean", "full"}, optional
        Reduction over the outputs, as in the reference ``ntk``: ``"trace"``
        returns ``C Theta_inf``, ``"mean"`` returns ``Theta_inf`` and
        ``"full"`` returns ``theta[i, k, l, m] = Theta_inf(x_i, x_k)
        delta_{l m}``. Ignored (after validation) when ``n_outputs == 1``.
    log : bool, optional
        If true, return ``(sign, logabs)`` with ``Theta = sign * exp(logabs)``,
        computed as sums of logarithms (see :func:`nngp_infinite`).

    Returns
    -------
    theta : ndarray
        Shape ``(n1, n2)``, or ``(n1, n2, C, C)`` for ``outputs="full"`` with
        ``n_outputs > 1``.
    sign, logabs : tuple of ndarray
        Sign and log-magnitude of ``theta`` with the same shape (when ``log``
        is true); zero entries have ``sign = 0`` and ``logabs = -inf``.

    Raises
    ------
    TypeError
        If a feature array is not float32/float64, ``sigma`` or ``rho`` is not
        real, ``n_outputs`` is not an int, ``bond_dims`` is not a sequence or
        ``log`` is not a bool.
    ValueError
        If the features are malformed or inconsistent, ``sigma`` is not
        positive and finite, ``rho`` is negative or non-finite, an argument has
        the wrong shape or length, or ``parametrization``/``outputs`` is not
        one of the listed strings.
    FloatingPointError
        If ``log`` is false and the kernel overflows the output dtype, or
        underflows it (an entry rounds to zero though no local kernel is
        zero); ``log=True`` holds such chains.

    Examples
    --------
    >>> import numpy as np
    >>> from mpsntk.features import trig
    >>> from mpsntk.infinite import nngp_infinite, ntk_infinite
    >>> phi = trig(np.random.default_rng(0).uniform(size=(3, 4)))
    >>> bool(np.allclose(ntk_infinite(phi), 4 * nngp_infinite(phi)))
    True
    """
    phi1, phi2, out_dtype = _as_phi_pair(phi1, phi2)
    n_sites = phi1.shape[1]
    log = _check_bool(log, "log")
    _check_choice(parametrization, "parametrization", _PARAMETRIZATIONS)
    _check_choice(outputs, "outputs", _OUTPUT_MODES)
    n_outputs = _check_int(n_outputs, "n_outputs", 1)
    sigma = _as_site_vector(sigma, "sigma", n_sites, positive=True)
    if bond_dims is not None:
        _check_bond_dims(bond_dims, n_sites)
    rho = _site_rates(rho, sigma, n_sites, parametrization)
    weight = float(np.sum(rho))
    if n_outputs > 1 and outputs == "trace":
        weight *= n_outputs

    result = _product_kernel(
        phi1.astype(np.float64, copy=False), phi2.astype(np.float64, copy=False), sigma**2, log
    )
    full = n_outputs > 1 and outputs == "full"
    if not log:
        product, exact_zero = result
        theta = _in_range(weight * product, exact_zero | (weight == 0.0), out_dtype, "the NTK")
        if full:
            theta = theta[:, :, None, None] * np.eye(n_outputs, dtype=out_dtype)
        return theta

    sign, logabs = result
    if weight == 0.0:
        sign = np.zeros_like(sign)
        logabs = np.full_like(logabs, -np.inf)
    else:
        logabs = logabs + np.log(weight)
    if full:
        eye = np.eye(n_outputs, dtype=bool)
        sign = np.where(eye, sign[:, :, None, None], 0.0)
        logabs = np.where(eye, logabs[:, :, None, None], -np.inf)
    return sign.astype(out_dtype, copy=False), logabs.astype(out_dtype, copy=False)
