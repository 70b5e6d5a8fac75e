"""Spectra of kernels.

The dense eigendecomposition of a positive semi-definite kernel that the closed-form dynamics of
:mod:`mpsntk.dynamics` diagonalise, and the largest eigenvalue of the NTK by matrix-free power
iteration on :func:`mpsntk.ntk_vp` (the step-size bound of gradient descent that
:func:`mpsntk.train` checks).  The spectrum of the cores themselves (random-matrix statistics) is
:mod:`mpsntk.diagnostics`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._validate import _check_int, _check_seed
from .mps import MPS
from .ntk import ntk_vp

__all__ = ["max_ntk_eigenvalue"]


class _Spectrum(NamedTuple):
    """Eigendecomposition of a PSD kernel with exact zeros marked."""

    lam: np.ndarray  # eigenvalues, clipped to >= 0, zero where ``zero``
    vecs: np.ndarray  # orthonormal eigenvectors as columns
    zero: np.ndarray  # boolean mask of eigenvalues treated as exactly zero
    lam_max: float


def _spectrum(kernel, name, tol):
    """Eigendecompose a symmetric PSD kernel; eigenvalues below ``m eps lam_max`` become 0."""
    lam, vecs = np.linalg.eigh(kernel)
    lam_max = max(float(lam[-1]), 0.0)
    if lam[0] < -tol * lam_max or (lam_max == 0.0 and lam[0] < 0.0):
        raise ValueError(
            f"{name} must be positive semi-definite; got eigenvalue {lam[0]:.3g} "
            f"for largest eigenvalue {lam_max:.3g}"
        )
    threshold = kernel.shape[0] * np.finfo(np.float64).eps * lam_max
    zero = lam <= threshold
    lam = np.where(zero, 0.0, lam)
    return _Spectrum(lam, vecs, zero, lam_max)


def max_ntk_eigenvalue(mps, phi, n_iter=50, seed=0):
    """Largest eigenvalue of the NTK on ``phi`` by power iteration with :func:`mpsntk.ntk_vp`.

    The kernel is never formed: each iteration is one product ``Theta v`` (``O(n_samples
    n_params)``), on the model's device.

    Parameters
    ----------
    mps : MPS
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
    n_iter : int
        Most iterations; the iteration stops early once the estimate changes by less than
        ``1e-6`` relative.
    seed : None, int >= 0 or numpy.random.Generator
        Draws the start vector.

    Returns
    -------
    float
        The estimate of ``lambda_max`` (a lower bound that the iteration raises towards it).
    """
    if not isinstance(mps, MPS):
        raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
    phi = mps.check_features(phi)
    n_iter = _check_int(n_iter, "n_iter", 1)
    rng = _check_seed(seed)
    shape = (phi.shape[0],) if mps.output_site is None else (phi.shape[0], mps.n_outputs)
    v = mps.xp.asarray(rng.standard_normal(shape).astype(mps.dtype))
    lam = 0.0
    for _ in range(n_iter):
        v /= mps.xp.linalg.norm(v)
        w = ntk_vp(mps, phi, v)
        lam_new = float(mps.xp.vdot(v, w))
        v = w
        if abs(lam_new - lam) <= 1e-6 * abs(lam_new):
            return lam_new
        lam = lam_new
    return lam
