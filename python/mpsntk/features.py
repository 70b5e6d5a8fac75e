"""Local feature maps for matrix product state models.

Every map takes inputs ``x`` of shape ``(n_samples, n_sites)`` and returns
features ``phi`` of shape ``(n_samples, n_sites, phys_dim)``, the layout that
every kernel and model routine of :mod:`mpsntk` consumes. The local kernel of
site ``j`` is ``k_j(x, x') = phi(x_j) . phi(x'_j)``; :func:`local_kernel`
evaluates it for all pairs of samples and all sites.

Maps
----
trig
    Stoudenmire's map ``[cos(pi x / 2), sin(pi x / 2)]``; ``k = cos(pi (x - x') / 2)``.
linear
    ``[x, 1 - x]`` (the TorchMPS default).
poly
    ``[1, x, ..., x**degree]``; for ``degree=1``, ``k = 1 + x x'``.
onehot
    ``scale * e_x`` for integer ``x`` in ``{0, ..., phys_dim - 1}``; ``k = scale**2 delta``.
gauss_hermite
    A finite Gauss-Hermite surrogate of the Gaussian kernel
    ``exp(-(x - x')**2 / (2 tau**2))``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["trig", "linear", "poly", "onehot", "gauss_hermite", "local_kernel"]

from ._validate import (
    _as_inputs,
    _as_phi_pair,
    _check_feature_dtype,
    _check_int,
    _check_positive_float,
)

# ---------------------------------------------------------------------------
# Feature maps
# ---------------------------------------------------------------------------


def _check_in_range(phi, x, kind, dtype):
    """ValueError if features of finite inputs overflowed ``dtype`` (rather than returning
    +-inf with a mere NumPy warning)."""
    if not np.all(np.isfinite(phi)):
        raise ValueError(
            f"x has entries up to {np.max(np.abs(x)):.3g} in magnitude: their {kind} features "
            f"overflow {np.dtype(dtype).name} (largest finite value {np.finfo(dtype).max:.3g}); "
            "scale x down" + ("" if dtype == np.float64 else " or use dtype=numpy.float64")
        )
    return phi


def trig(x, *, dtype=np.float64):
    """Stoudenmire's trigonometric feature map.

    ``phi(x) = [cos(pi x / 2), sin(pi x / 2)]``, so that ``|phi(x)| = 1`` and
    the local kernel is ``k(x, x') = cos(pi (x - x') / 2)``.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_sites)
        Real, finite inputs, usually in ``[0, 1]``.
    dtype : {numpy.float64, numpy.float32}, optional
        Floating type of the result. Computations are carried out in float64.

    Returns
    -------
    phi : ndarray, shape (n_samples, n_sites, 2)
        ``phi[..., 0] = cos(pi x / 2)`` and ``phi[..., 1] = sin(pi x / 2)``.

    Raises
    ------
    TypeError
        If ``x`` is not real numeric or ``dtype`` is not float32/float64.
    ValueError
        If ``x`` is not 2-D, is empty or contains NaN/Inf.

    Examples
    --------
    >>> import numpy as np
    >>> from mpsntk.features import trig
    >>> trig(np.array([[0.0, 1.0]]))[0].round(12)
    array([[1., 0.],
           [0., 1.]])
    """
    out_dtype = _check_feature_dtype(dtype)
    x = _as_inputs(x)
    angle = 0.5 * np.pi * x
    phi = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    return phi.astype(out_dtype, copy=False)


def linear(x, *, dtype=np.float64):
    """Linear feature map ``phi(x) = [x, 1 - x]``.

    The local kernel is ``k(x, x') = x x' + (1 - x)(1 - x')``.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_sites)
        Real, finite inputs.
    dtype : {numpy.float64, numpy.float32}, optional
        Floating type of the result. Computations are carried out in float64.

    Returns
    -------
    phi : ndarray, shape (n_samples, n_sites, 2)
        ``phi[..., 0] = x`` and ``phi[..., 1] = 1 - x``.

    Raises
    ------
    TypeError
        If ``x`` is not real numeric or ``dtype`` is not float32/float64.
    ValueError
        If ``x`` is not 2-D, is empty or contains NaN/Inf, or if a feature overflows
        ``dtype``.
    """
    out_dtype = _check_feature_dtype(dtype)
    x = _as_inputs(x)
    with np.errstate(over="ignore"):
        phi = np.stack([x, 1.0 - x], axis=-1).astype(out_dtype, copy=False)
    return _check_in_range(phi, x, "linear", out_dtype)


def poly(x, degree=1, *, dtype=np.float64):
    """Polynomial feature map ``phi(x) = [1, x, x**2, ..., x**degree]``.

    The local kernel is ``k(x, x') = sum_{p=0}^{degree} (x x')**p``; for
    ``degree=1`` it is ``1 + x x'``.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_sites)
        Real, finite inputs.
    degree : int, optional
        Highest power, ``degree >= 1``. The physical dimension is ``degree + 1``.
    dtype : {numpy.float64, numpy.float32}, optional
        Floating type of the result. Computations are carried out in float64.

    Returns
    -------
    phi : ndarray, shape (n_samples, n_sites, degree + 1)
        ``phi[..., p] = x**p`` (with ``0**0 = 1``).

    Raises
    ------
    TypeError
        If ``x`` is not real numeric, ``degree`` is not an integer or
        ``dtype`` is not float32/float64.
    ValueError
        If ``x`` is not 2-D, is empty or contains NaN/Inf, if ``degree < 1``, or if a power
        of ``x`` overflows ``dtype``.
    """
    degree = _check_int(degree, "degree", 1)
    out_dtype = _check_feature_dtype(dtype)
    x = _as_inputs(x)
    powers = np.arange(degree + 1, dtype=np.float64)
    with np.errstate(over="ignore"):
        phi = np.power(x[..., None], powers).astype(out_dtype, copy=False)
    return _check_in_range(phi, x, f"poly (degree {degree})", out_dtype)


def onehot(x, phys_dim=2, scale=1.0, *, dtype=np.float64):
    """Scaled one-hot feature map for discrete inputs.

    ``phi(x) = scale * e_x`` for ``x`` in ``{0, ..., phys_dim - 1}``, so the
    local kernel is ``k(x, x') = scale**2 * delta(x, x')``. The Born machine of
    the theory uses ``scale = 1 / sqrt(2)`` on bits.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_sites)
        Integer-valued inputs in ``{0, ..., phys_dim - 1}``; floating arrays
        are accepted when every entry is an exact integer.
    phys_dim : int, optional
        Number of categories, ``phys_dim >= 1``.
    scale : float, optional
        Positive, finite norm of every feature vector.
    dtype : {numpy.float64, numpy.float32}, optional
        Floating type of the result.

    Returns
    -------
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        ``phi[i, j, s] = scale`` if ``x[i, j] == s`` and 0 otherwise.

    Raises
    ------
    TypeError
        If ``x`` is not real numeric, ``phys_dim`` is not an integer, ``scale``
        is not a real number or ``dtype`` is not float32/float64.
    ValueError
        If ``x`` is not 2-D, is empty, contains NaN/Inf, non-integer values or
        values outside ``{0, ..., phys_dim - 1}``; if ``phys_dim < 1``; if
        ``scale`` is not positive and finite.
    """
    phys_dim = _check_int(phys_dim, "phys_dim", 1)
    scale = _check_positive_float(scale, "scale")
    out_dtype = _check_feature_dtype(dtype)
    x = _as_inputs(x)
    if not np.all(x == np.round(x)):
        raise ValueError("x must contain integer values for onehot; got non-integer entries")
    low, high = x.min(), x.max()
    if low < 0 or high > phys_dim - 1:
        raise ValueError(
            f"x must take values in {{0, ..., {phys_dim - 1}}} for phys_dim={phys_dim}; "
            f"got values in [{low:g}, {high:g}]"
        )
    phi = np.zeros(x.shape + (phys_dim,), dtype=out_dtype)
    np.put_along_axis(phi, x.astype(np.intp)[..., None], scale, axis=-1)
    return phi


def gauss_hermite(x, n_nodes=8, tau=0.5, *, dtype=np.float64):
    """Finite Gauss-Hermite surrogate of the Gaussian local kernel.

    With the nodes and weights ``(u_i, w_i)`` of
    :func:`numpy.polynomial.hermite.hermgauss` and frequencies
    ``omega_i = sqrt(2) u_i / tau``, the features are

    ``phi(x) = [a_i cos(omega_i x), a_i sin(omega_i x)]_{i=1..n_nodes}``,
    ``a_i = sqrt(w_i / sqrt(pi))``,

    so ``k(x, x') = sum_i (w_i / sqrt(pi)) cos(omega_i (x - x'))``, the
    ``n_nodes``-point Gauss-Hermite quadrature of
    ``exp(-(x - x')**2 / (2 tau**2))``. With ``n_nodes=8`` and ``tau=0.5`` the
    error is below 0.01 for ``|x - x'| <= 1.5``; it grows for larger distances,
    where the quadrature no longer resolves the oscillation.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_sites)
        Real, finite inputs.
    n_nodes : int, optional
        Number of quadrature nodes, ``n_nodes >= 1``.
    tau : float, optional
        Positive, finite length scale of the Gaussian kernel.
    dtype : {numpy.float64, numpy.float32}, optional
        Floating type of the result. Computations are carried out in float64.

    Returns
    -------
    phi : ndarray, shape (n_samples, n_sites, 2 * n_nodes)
        Interleaved layout: ``phi[..., 2 i] = a_i cos(omega_i x)`` and
        ``phi[..., 2 i + 1] = a_i sin(omega_i x)``, nodes in the order
        returned by ``hermgauss`` (increasing ``u_i``).

    Raises
    ------
    TypeError
        If ``x`` is not real numeric, ``n_nodes`` is not an integer, ``tau`` is
        not a real number or ``dtype`` is not float32/float64.
    ValueError
        If ``x`` is not 2-D, is empty or contains NaN/Inf, if ``n_nodes < 1``
        or if ``tau`` is not positive and finite.
    """
    n_nodes = _check_int(n_nodes, "n_nodes", 1)
    tau = _check_positive_float(tau, "tau")
    out_dtype = _check_feature_dtype(dtype)
    x = _as_inputs(x)
    nodes, weights = np.polynomial.hermite.hermgauss(n_nodes)
    omega = np.sqrt(2.0) * nodes / tau
    amplitude = np.sqrt(weights / np.sqrt(np.pi))
    angle = x[..., None] * omega
    phi = np.empty(x.shape + (2 * n_nodes,), dtype=np.float64)
    phi[..., 0::2] = amplitude * np.cos(angle)
    phi[..., 1::2] = amplitude * np.sin(angle)
    return phi.astype(out_dtype, copy=False)


def local_kernel(phi1, phi2=None):
    """Local kernels ``k_j(x, x') = phi(x_j) . phi(x'_j)`` for all pairs and sites.

    Parameters
    ----------
    phi1 : ndarray, shape (n1, n_sites, phys_dim)
        Features of the first set of samples (float32 or float64, finite).
    phi2 : ndarray, shape (n2, n_sites, phys_dim), optional
        Features of the second set; ``None`` means ``phi2 = phi1``.

    Returns
    -------
    k : ndarray, shape (n1, n2, n_sites)
        ``k[a, b, j] = sum_s phi1[a, j, s] * phi2[b, j, s]``. Accumulated in
        float64; the result is float32 only when both inputs are float32.

    Raises
    ------
    TypeError
        If a feature array is not float32/float64.
    ValueError
        If a feature array is not 3-D, is empty or contains NaN/Inf, or if
        the two arrays differ in ``n_sites`` or ``phys_dim``.
    """
    phi1, phi2, out_dtype = _as_phi_pair(phi1, phi2)
    k = np.einsum(
        "ajs,bjs->abj",
        phi1.astype(np.float64, copy=False),
        phi2.astype(np.float64, copy=False),
    )
    return k.astype(out_dtype, copy=False)
