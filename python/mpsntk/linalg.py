"""Matrix-free kernel methods on the NTK of an MPS: ``Theta(X, X)`` is never formed.

Every algorithm here touches the kernel only through products ``Theta v = J diag(lambda) J^T v``
(``O(n_samples * n_params)`` time, ``O(n_samples * n_sites * D)`` memory per block of samples),
its exact diagonal and a few of its columns, so the training set can be far larger than one
``n_samples x n_samples`` matrix:

* :func:`ntk_operator` -- ``Theta(X, X)`` as a SciPy ``LinearOperator`` (a CuPy one for device
  models), with its exact diagonal and trace; :func:`cross_ntk_vp` -- ``Theta(X1, X2) v`` for
  predictions; :func:`ntk_diagonal`;
* :func:`kernel_regression` -- ``(Theta + reg I) alpha = y`` by preconditioned conjugate
  gradients with a randomly pivoted Cholesky (Nystrom) preconditioner
  (:func:`nystrom_preconditioner`), and the prediction ``Theta(X*, X) alpha``;
* :func:`gradient_descent_mse` -- the whole MSE training trajectory on training and test points
  (gradient flow and discrete steps) by a Lanczos approximation of the matrix functions;
* :func:`top_eigenvalues` -- the top of the spectrum by Lanczos (``eigsh``).

Vectors.  The operator acts on the outputs of the model at the training samples: shape
``(n_samples,)`` for scalar models and ``(n_samples, n_outputs)`` for multi-output models, where
it is the full output-resolved kernel ``Theta_{l l'}(x, x')`` (the one that drives training; not
the traced kernel of ``mpsntk.ntk``'s default).  As a ``LinearOperator`` it has shape
``(n_samples * n_outputs,) * 2`` on those arrays flattened in C order (sample-major).  Several
right-hand sides stack along a trailing axis.  Vectors have the model's dtype and live on its
device; nothing is converted.

Memory.  The samples are split into blocks of ``block_size`` samples (default: the largest block
whose engine workspace stays within 256 MiB); a product costs one pass over the blocks and holds
one block's environments at a time, besides the inputs and ``O(n_samples * n_outputs)`` vectors.

Operators.  :func:`kernel_regression`, :func:`nystrom_preconditioner` and
:func:`top_eigenvalues` take ``Theta`` through a small interface that :class:`NTKOperator` and
:class:`mpsntk.dask.ShardedNTK` (samples sharded over Dask workers) both provide: ``mps``,
``shape``, ``dtype``, ``vector_shape``, ``n_samples``, ``n_outputs``, ``apply(V)`` (``Theta V``
on unflattened vectors with a trailing axis of columns), ``diagonal()``, ``columns(samples)``
(output-resolved, flat ``(n_samples * n_outputs, m * n_outputs)``), ``cross_matvec(phi, V)``
(predictions) and the counter ``n_products``.  :func:`gradient_descent_mse` needs an
:class:`NTKOperator`.

Dependencies.  The operator is a ``scipy.sparse.linalg.LinearOperator``, so everything that
takes one needs SciPy (``pip install 'mpsntk[linalg]'``; device models need CuPy, which ships
``cupyx``); :func:`cross_ntk_vp` and :func:`ntk_diagonal` need NumPy only.  The solvers are
written against the array module of the model (NumPy or CuPy), so the device path runs on the
GPU end to end; SciPy (cupyx) itself is called only by :func:`top_eigenvalues` (``eigsh``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _blocks
from ._backend import array_module, as_array
from ._engine import engine_for
from ._spectral import _Spectrum
from ._validate import (
    _available_memory,
    _check_bool,
    _check_choice,
    _check_fits,
    _check_int,
    _check_positive_float,
    _check_seed,
    _describe,
)
from .dynamics import _LOSSES, _as_times, _check_nonnegative_float, _decay_and_solve
from .mps import MPS
from .ntk import _as_vector_block

__all__ = [
    "ConvergenceWarning",
    "NTKOperator",
    "NystromPreconditioner",
    "RegressionResult",
    "cross_ntk_vp",
    "gradient_descent_mse",
    "kernel_regression",
    "ntk_diagonal",
    "ntk_operator",
    "nystrom_preconditioner",
    "top_eigenvalues",
]

_BLOCK_BYTES = 256 * 2**20  # engine workspace per block of samples (default block_size)
_ROW_BLOCK = 8192  # rows per in-place GEMM pass over a tall factor
_DEFAULT_RANK = 512  # Nystrom rank of kernel_regression (see its docstring)


class ConvergenceWarning(UserWarning):
    """An iterative method stopped at ``maxiter`` before reaching its tolerance."""


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _check_mps(mps):
    if not isinstance(mps, MPS):
        raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
    return mps


def _check_memory(xp, nbytes, what, hint):
    """ValueError when ``nbytes`` do not fit in host (or, for CuPy arrays, device) memory."""
    if xp is np:
        _check_fits(nbytes, what, hint)
    else:  # pragma: no cover - needs a GPU (the simulator reports no device memory)
        from . import _device

        _device.gpu().check_fits(nbytes, what, hint)


def _to_host(xp, a):
    return a if xp is np else xp.asnumpy(a)


def _column_dots(xp, a, b):
    """Per-column dot products of (N, k) arrays, accumulated in float64: a host array (k,)."""
    return _to_host(xp, xp.sum(a * b, axis=0, dtype=xp.float64))


def _column_norms(xp, a):
    return np.sqrt(_column_dots(xp, a, a))


def _default_block_size(mps):
    # the engine's (C++ or CUDA) footprint of a prepared batch: a fixed part plus one per sample
    eng = engine_for(mps)
    one, more = (eng.prepare_bytes(mps, n) for n in (1, 1025))
    per_sample = max(1, (more - one) // 1024)
    return max(1, (_BLOCK_BYTES - (one - per_sample)) // per_sample)


def _environments_fit(mps, n_samples):
    """Whether the environments of all samples fit in a quarter of the free memory: then every
    block keeps them across products (each product is then two passes over stored
    environments), else each product contracts them again (two environment sweeps) in memory
    of one block."""
    eng = engine_for(mps)
    free = eng.free_bytes()
    return free is None or eng.prepare_bytes(mps, n_samples, held=True) <= free / 4


class _Samples:
    """Validated samples of one model, split into engine-sized blocks (views, not copies)."""

    def __init__(self, mps, phi, name, block_size):
        self.mps = _check_mps(mps)
        self.xp = mps.xp
        self.phi = mps.check_features(phi, name)
        self.n = int(self.phi.shape[0])
        if block_size is None:
            block_size = _default_block_size(mps)
        self.block_size = _check_int(block_size, "block_size", 1)
        self.starts = list(range(0, self.n, self.block_size))
        keep = _environments_fit(mps, self.n)
        self.blocks = [
            _blocks.Batch(mps, self.phi[s:s + self.block_size], keep=keep) for s in self.starts
        ]

    @property
    def vector_shape(self):
        """(n,) for scalar models, (n, n_outputs) for multi-output ones."""
        return (self.n,) if self.mps.output_site is None else (self.n, self.mps.n_outputs)

    def transpose(self, v):
        """``diag(lambda) J^T v`` summed over the blocks: one array per core."""
        total = None
        for start, batch in zip(self.starts, self.blocks):
            part = _blocks.transpose_vp(batch, v[start:start + batch.n_samples])
            if total is None:
                total = part
            else:
                for acc, p in zip(total, part):
                    acc += p
        return total

    def jacobian(self, tangents):
        """``J t`` over all blocks: shape ``vector_shape``."""
        return self.xp.concatenate([_blocks.jacobian_vp(b, tangents) for b in self.blocks])

    def check_vectors(self, v, name, columns=True):
        """As :func:`_vector_block` on these samples."""
        return _vector_block(self.mps, self.n, v, name, columns)


def _vector_block(mps, n_samples, v, name, columns=True):
    """``v`` of shape (n_samples,) or (n_samples, n_outputs) (or with a trailing axis of
    columns) in the model's dtype on its device; returns it as an array with a trailing column
    axis and whether it had one."""
    mps.same_device(array_module(v, names=[name]), name)
    v = _as_vector_block(mps, v, n_samples, name)
    vector_ndim = 1 if mps.output_site is None else 2
    multi = v.ndim > vector_ndim
    if multi and not columns:
        raise ValueError(f"{name} must have shape {v.shape[:vector_ndim]}; got {v.shape}")
    return (v if multi else v[..., None]), multi


def _products(out_samples, in_samples, V):
    """``Theta(X_out, X_in) V`` for V of shape in.vector_shape + (k,), column by column."""
    xp = in_samples.xp
    cols = [
        out_samples.jacobian(in_samples.transpose(V[..., c])) for c in range(V.shape[-1])
    ]
    return xp.stack(cols, axis=-1)


# ---------------------------------------------------------------------------
# The operator
# ---------------------------------------------------------------------------


def _linear_operator_base(xp):
    if xp is np:
        try:
            from scipy.sparse.linalg import LinearOperator
        except ImportError as exc:
            raise ImportError(
                "the NTK as a scipy.sparse.linalg.LinearOperator (mpsntk.linalg.ntk_operator, "
                "top_eigenvalues, ShardedNTK.aslinearoperator) needs SciPy: pip install "
                "'mpsntk[linalg]' (or pip install scipy)"
            ) from exc
        return LinearOperator
    try:
        from cupyx.scipy.sparse.linalg import LinearOperator
    except ImportError as exc:  # pragma: no cover - CuPy ships cupyx
        raise ImportError(
            "ntk_operator of a device model returns a cupyx.scipy.sparse.linalg.LinearOperator; "
            "cupyx (part of CuPy) could not be imported"
        ) from exc
    return LinearOperator


_OPERATOR_CLASSES: dict = {}


class NTKOperator:
    """``Theta(X, X)`` of an MPS on fixed samples, as a linear operator (see :func:`ntk_operator`).

    Instances are also instances of ``scipy.sparse.linalg.LinearOperator`` (host models) or
    ``cupyx.scipy.sparse.linalg.LinearOperator`` (device models), so that SciPy's (CuPy's)
    iterative solvers, ``eigsh`` and ``expm_multiply`` accept them.  The operator is symmetric
    positive semi-definite: ``rmatvec`` is ``matvec`` and the adjoint is the operator itself.

    Attributes
    ----------
    mps : MPS
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
    n_samples, n_outputs, block_size : int
    vector_shape : tuple
        ``(n_samples,)`` or ``(n_samples, n_outputs)``: the unflattened shape of a vector.
    n_products : int
        Number of ``Theta``-vector products computed so far (one per column), columns of
        ``Theta`` included.
    """

    def __init__(self, samples):
        self._x = samples
        mps = samples.mps
        size = samples.n * mps.n_outputs
        super().__init__(dtype=mps.dtype, shape=(size, size))
        self._diagonal = None
        self.n_products = 0

    # ------------------------------------------------------------------ attributes
    @property
    def mps(self):
        return self._x.mps

    @property
    def phi(self):
        return self._x.phi

    @property
    def n_samples(self):
        return self._x.n

    @property
    def n_outputs(self):
        return self._x.mps.n_outputs

    @property
    def block_size(self):
        return self._x.block_size

    @property
    def vector_shape(self):
        return self._x.vector_shape

    def __repr__(self):
        return (
            f"NTKOperator(n_samples={self.n_samples}, n_outputs={self.n_outputs}, "
            f"shape={self.shape}, dtype={np.dtype(self.dtype).name}, "
            f"block_size={self.block_size})"
        )

    # ------------------------------------------------------------------ products
    def _apply(self, V):
        """``Theta V`` for V of shape vector_shape + (k,) (validated)."""
        self.n_products += V.shape[-1]
        return _products(self._x, self._x, V)

    def apply(self, v):
        """``Theta v`` on unflattened vectors.

        Parameters
        ----------
        v : ndarray, shape (n_samples,) or (n_samples, n_outputs), or with a trailing axis of
            ``k`` columns

        Returns
        -------
        ndarray of the shape of ``v``
        """
        V, multi = self._x.check_vectors(v, "v")
        out = self._apply(V)
        return out if multi else out[..., 0]

    def _flat(self, x, name):
        xp = self._x.xp
        self.mps.same_device(array_module(x, names=[name]), name)
        x = as_array(x, xp)
        N = self.shape[0]
        if x.ndim not in (1, 2) or x.shape[0] != N:
            raise ValueError(f"{name} must have shape ({N},) or ({N}, k); got {x.shape}")
        k = 1 if x.ndim == 1 else x.shape[1]
        V = x.reshape(self.vector_shape + (k,))
        V = self._x.check_vectors(V, name)[0]
        return self._apply(V).reshape(x.shape)

    def _matvec(self, x):
        return self._flat(x, "x")

    def _matmat(self, X):
        return self._flat(X, "X")

    def _rmatvec(self, x):
        return self._flat(x, "x")

    def _rmatmat(self, X):
        return self._flat(X, "X")

    def _adjoint(self):
        return self

    def _transpose(self):
        return self

    # ------------------------------------------------------------------ kernel entries
    def diagonal(self):
        """The exact diagonal ``Theta(x, x)`` (``Theta_ll(x, x)`` for multi-output models),
        flattened: shape ``(n_samples * n_outputs,)``.  Computed once (about the cost of one
        product), then cached."""
        if self._diagonal is None:
            self._diagonal = self._x.xp.concatenate(
                [_blocks.kernel_diagonal(b).reshape(-1) for b in self._x.blocks]
            )
        return self._diagonal.copy()

    def trace(self):
        """``tr Theta = sum_x sum_l Theta_ll(x, x)``, exact (from :meth:`diagonal`); the
        ``traceA`` of ``scipy.sparse.linalg.expm_multiply``."""
        self.diagonal()
        return float(self._x.xp.sum(self._diagonal, dtype=self._x.xp.float64))

    def columns(self, samples):
        """Columns ``Theta(X, X[samples])`` as a flat matrix.

        Parameters
        ----------
        samples : array of int, shape (m,)
            Sample indices.

        Returns
        -------
        ndarray, shape (n_samples * n_outputs, m * n_outputs)
            Column ``i * n_outputs + l`` is the operator's column of sample ``samples[i]``,
            output ``l``.
        """
        idx = np.asarray(samples)
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or idx.size == 0:
            raise ValueError(
                f"samples must be a non-empty 1-D array of indices; got {_describe(samples)}"
            )
        if idx.min() < 0 or idx.max() >= self.n_samples:
            raise ValueError(
                f"samples must lie in [0, {self.n_samples}); got {idx.min()} .. {idx.max()}"
            )
        xp, mps = self._x.xp, self.mps
        pivots = _blocks.Batch(mps, self.phi[xp.asarray(idx) if xp is not np else idx])
        full = mps.output_site is not None
        C, m = mps.n_outputs, idx.size
        parts = []
        for batch in self._x.blocks:
            tile = _blocks.kernel_block(batch, pivots, outputs="full" if full else "trace")
            if full:  # (n_b, m, C, C) -> rows (i, l), columns (p, l')
                tile = xp.ascontiguousarray(tile.transpose(0, 2, 1, 3))
            parts.append(tile.reshape(batch.n_samples * C, m * C))
        self.n_products += m * C
        return xp.concatenate(parts)

    def cross_matvec(self, phi_other, v):
        """``Theta(X_other, X) v``: the kernel between other samples and these, applied to ``v``,
        without forming it (predictions on test points).

        Parameters
        ----------
        phi_other : ndarray, shape (n_other, n_sites, phys_dim)
        v : ndarray, shape ``vector_shape`` or with a trailing axis of columns

        Returns
        -------
        ndarray, shape (n_other,) or (n_other, n_outputs), with the trailing axis of ``v``
        """
        other = _Samples(self.mps, phi_other, "phi_other", self.block_size)
        V, multi = self._x.check_vectors(v, "v")
        out = _products(other, self._x, V)
        return out if multi else out[..., 0]


def _operator_class(base):
    cls = _OPERATOR_CLASSES.get(base)
    if cls is None:
        cls = type("NTKOperator", (NTKOperator, base), {"__module__": __name__,
                                                         "__doc__": NTKOperator.__doc__})
        _OPERATOR_CLASSES[base] = cls
    return cls


def ntk_operator(mps, phi, *, block_size=None):
    """``Theta(X, X)`` as a matrix-free linear operator.

    Parameters
    ----------
    mps : MPS
        Host or device model (float32 or float64).
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Features in the model's dtype, on the model's device (held by reference, not copied).
    block_size : int, optional
        Samples per engine call.  Default: the largest block whose environments take at most
        256 MiB (the engine's footprint of a prepared batch).

    Returns
    -------
    NTKOperator
        A ``scipy.sparse.linalg.LinearOperator`` (``cupyx.scipy.sparse.linalg.LinearOperator``
        for device models) of shape ``(n_samples * n_outputs, n_samples * n_outputs)`` and the
        model's dtype, acting on the flattened ``(n_samples,)`` or ``(n_samples, n_outputs)``
        arrays: multi-output models give the full output-resolved kernel.  Each product costs
        ``O(n_samples * n_params)``; :meth:`NTKOperator.diagonal` and
        :meth:`NTKOperator.trace` are exact.

    Raises
    ------
    ImportError
        Without SciPy (host models): ``pip install 'mpsntk[linalg]'``.

    Examples
    --------
    >>> import numpy as np, mpsntk as mn
    >>> from scipy.sparse.linalg import expm_multiply
    >>> mps = mn.MPS.random(n_sites=8, bond_dim=4, seed=0)
    >>> phi = mn.features.trig(np.random.default_rng(0).uniform(size=(50, 8)))
    >>> op = mn.linalg.ntk_operator(mps, phi)
    >>> v = np.ones(50)
    >>> bool(np.allclose(op @ v, mn.ntk(mps, phi) @ v))
    True
    >>> e_t = expm_multiply(-0.01 * op, v, traceA=-0.01 * op.trace())  # exp(-0.01 Theta) v
    """
    samples = _Samples(mps, phi, "phi", block_size)
    return _operator_class(_linear_operator_base(samples.xp))(samples)


# The kernel operator the solvers need (kernel_regression, nystrom_preconditioner,
# top_eigenvalues), provided by NTKOperator and mpsntk.dask.ShardedNTK alike:
#   mps                         the model (dtype, device, outputs: validates vectors)
#   shape, dtype, vector_shape  (N, N) with N = n_samples * n_outputs; a vector's unflattened
#   n_samples, n_outputs        shape (n_samples,) or (n_samples, n_outputs)
#   apply(V)                    Theta V for V of shape vector_shape (+ (k,)); same shape
#   diagonal()                  the exact diagonal, N entries (flat or vector_shape)
#   columns(samples)            Theta(X, X[samples]) flat: (N, m * n_outputs), output-resolved
#   cross_matvec(phi, V)        Theta(X_new, X) V: (n_new,) + V.shape[1:]
#   n_products                  products spent so far (a column counts as one)
_KERNEL_OPERATOR = ("mps", "shape", "dtype", "vector_shape", "n_samples", "n_outputs", "apply",
                    "diagonal", "columns", "cross_matvec", "n_products")


def _check_operator(operator):
    """``operator`` if it provides the kernel operator above, else TypeError."""
    missing = [a for a in _KERNEL_OPERATOR if not hasattr(operator, a)]
    if missing:
        raise TypeError(
            "operator must be an NTKOperator (mpsntk.linalg.ntk_operator) or an "
            f"mpsntk.dask.ShardedNTK; got {type(operator).__name__} (lacking {', '.join(missing)})"
        )
    return operator


def _check_ntk_operator(operator):
    if not isinstance(operator, NTKOperator):
        raise TypeError(
            "operator must be an NTKOperator from mpsntk.linalg.ntk_operator; got "
            f"{type(operator).__name__}"
        )
    return operator


def _xp(op):
    return op.mps.xp


def _flat_diagonal(op):
    return op.diagonal().reshape(-1)


def _trace(op):
    return float(_xp(op).sum(_flat_diagonal(op), dtype=_xp(op).float64))


def _apply_flat(op, P):
    """``Theta P`` for P of shape (N, k)."""
    return op.apply(P.reshape(tuple(op.vector_shape) + (P.shape[1],))).reshape(P.shape)


def _linear_operator(op):
    """``op`` as a SciPy (cupyx) ``LinearOperator`` on flattened vectors."""
    base = _linear_operator_base(_xp(op))

    def matvec(x):
        return _apply_flat(op, x.reshape(op.shape[0], 1)).reshape(x.shape)

    def matmat(X):
        return _apply_flat(op, X)

    return base(op.shape, matvec=matvec, rmatvec=matvec, matmat=matmat, dtype=op.dtype)


def cross_ntk_vp(mps, phi1, phi2, v, *, block_size=None):
    """``Theta(X1, X2) v`` without forming the kernel: ``J1 diag(lambda) (J2^T v)``.

    The ``J2^T v`` partials are summed over blocks of ``X2``, then applied to blocks of ``X1``:
    ``O((n1 + n2) * n_params)`` time per column.

    Parameters
    ----------
    mps : MPS
    phi1 : ndarray, shape (n1, n_sites, phys_dim)
    phi2 : ndarray, shape (n2, n_sites, phys_dim)
    v : ndarray, shape (n2,) or (n2, k) (scalar models), (n2, n_outputs) or (n2, n_outputs, k)
        (multi-output models: the output-resolved kernel)
    block_size : int, optional
        As in :func:`ntk_operator`.

    Returns
    -------
    ndarray, shape (n1,) + v.shape[1:]
    """
    s2 = _Samples(mps, phi2, "phi2", block_size)
    s1 = _Samples(mps, phi1, "phi1", s2.block_size)
    V, multi = s2.check_vectors(v, "v")
    out = _products(s1, s2, V)
    return out if multi else out[..., 0]


def ntk_diagonal(mps, phi, *, block_size=None):
    """The diagonal ``Theta(x, x)`` without the kernel.

    Returns
    -------
    ndarray, shape (n_samples,), or (n_samples, n_outputs) for multi-output models (the
    output-resolved ``Theta_ll(x, x)``; their sum over ``l`` is ``mpsntk.ntk``'s traced diagonal)
    """
    s = _Samples(mps, phi, "phi", block_size)
    return s.xp.concatenate([_blocks.kernel_diagonal(b) for b in s.blocks])


# ---------------------------------------------------------------------------
# Nystrom (randomly pivoted Cholesky) preconditioner
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class NystromPreconditioner:
    """``(Theta_hat + reg I)^{-1}`` for the low-rank Nystrom approximation
    ``Theta_hat = Theta(X, S) Theta(S, S)^+ Theta(S, X)`` on pivot samples ``S``.

    Stored as ``Theta_hat = Q (B diag(w) B^T) Q^T`` with ``Q`` orthonormal, so that one factor
    serves every ``reg`` (a regularisation path) and applying it costs two products with ``Q``.

    Attributes
    ----------
    basis : ndarray, shape (n_samples * n_outputs, rank)
        ``Q``, orthonormal columns.
    eigenvalues : ndarray, shape (rank,)
        ``w``, the eigenvalues of ``Theta_hat`` (descending, float64, host).
    rotation : ndarray, shape (rank, rank)
        ``B`` (float64, host).
    pivots : ndarray of int
        The pivot samples ``S``, in the order they were drawn.
    trace : float
        ``tr Theta``.
    residual_trace : float
        ``tr(Theta - Theta_hat)``; the preconditioned system's condition number is at most
        ``1 + residual_trace / reg`` (:meth:`condition_bound`).
    """

    basis: Any
    eigenvalues: np.ndarray
    rotation: np.ndarray
    pivots: np.ndarray
    trace: float
    residual_trace: float

    @property
    def rank(self):
        return int(self.eigenvalues.size)

    def condition_bound(self, reg):
        """Upper bound ``1 + tr(Theta - Theta_hat) / reg`` on the condition number of the
        preconditioned matrix: its eigenvalues lie in ``[1, 1 + ||Theta - Theta_hat|| / reg]``
        and the residual ``Theta - Theta_hat`` is positive semi-definite."""
        return 1.0 + self.residual_trace / _check_positive_float(reg, "reg")

    def apply(self, r, reg):
        """``(Theta_hat + reg I)^{-1} r`` for ``r`` of shape (n_samples * n_outputs,) or
        (n_samples * n_outputs, k)."""
        reg = _check_positive_float(reg, "reg")
        xp = array_module(r, names=["r"])
        q = self.basis
        c = q.T @ r  # (rank[, k])
        c = c.reshape(c.shape[0], -1)
        b = xp.asarray(self.rotation.astype(q.dtype))
        shrink = xp.asarray((1.0 / (self.eigenvalues + reg) - 1.0 / reg).astype(q.dtype))
        corr = q @ (b @ (shrink[:, None] * (b.T @ c)))
        return r / q.dtype.type(reg) + corr.reshape(r.shape)


def _inplace_right_multiply(xp, F, width, M):
    """``F[:, :M.shape[1]] = F[:, :width] @ M`` in place, a block of rows at a time."""
    out = M.shape[1]
    for s in range(0, F.shape[0], _ROW_BLOCK):
        F[s:s + _ROW_BLOCK, :out] = F[s:s + _ROW_BLOCK, :width] @ M


def _orthonormalise(xp, F, width):
    """CholeskyQR2 in place: ``F[:, :width] = Q R`` with ``Q`` (returned width) orthonormal,
    written over ``F``; returns ``(width_q, R)`` with ``R`` (host float64, width_q x width).
    Directions of ``F`` below ``width * eps`` of its largest singular value are dropped."""
    eps = np.finfo(F.dtype).eps
    R = np.eye(width)
    cur = width
    for _ in range(2):
        G = _to_host(xp, F[:, :cur].T @ F[:, :cur]).astype(np.float64)
        w, W = np.linalg.eigh(0.5 * (G + G.T))
        keep = w > max(w[-1], 0.0) * cur * eps
        w, W = w[keep][::-1], W[:, keep][:, ::-1]
        s = np.sqrt(w)
        _inplace_right_multiply(xp, F, cur, xp.asarray((W / s).astype(F.dtype)))
        R = (s[:, None] * W.T) @ R  # F = Q_old R_old = (Q_new s W^T) R_old
        cur = int(keep.sum())
    return cur, R


def _default_rank(op):
    """512, or fewer columns where the factor would take over a quarter of the memory left."""
    avail = _available_memory() if _xp(op) is np else None
    rank = _DEFAULT_RANK
    if avail is not None:
        per_column = op.shape[0] * np.dtype(op.dtype).itemsize
        rank = min(rank, max(1, int(avail // (4 * per_column))))
    return rank


def nystrom_preconditioner(operator, rank=512, *, per_round=None, tol=0.0, seed=0):
    """Randomly pivoted Cholesky (block RPCholesky) Nystrom approximation of ``Theta``.

    Pivot samples are drawn in rounds, with probabilities proportional to the diagonal of the
    residual ``Theta - Theta_hat`` (Chen, Epperly, Tropp & Webber 2023); each round evaluates
    the columns of its pivots (one pass over the samples, ``O(n_samples * n_pivots)`` kernel
    entries) and updates the factor and the residual diagonal.  With pivots so drawn the Nystrom
    preconditioner brings the condition number of ``Theta + reg I`` down to
    ``1 + ||Theta - Theta_hat|| / reg`` (Diaz, Epperly, Frangella, Tropp & Webber 2023), small
    once the rank exceeds the number of eigenvalues of ``Theta`` above ``reg``.

    Parameters
    ----------
    operator : NTKOperator or mpsntk.dask.ShardedNTK
    rank : int
        Largest rank (columns of the factor: pivot samples times ``n_outputs``).  Memory:
        ``n_samples * n_outputs * rank`` entries of the model's dtype.
    per_round : int, optional
        Pivot samples per round (default ``ceil(rank / (8 n_outputs))``: eight passes over the
        samples in all).
    tol : float
        Stop early once ``tr(Theta - Theta_hat) <= tol * tr(Theta)``.
    seed : None, int or numpy.random.Generator
        Pivot sampling.

    Returns
    -------
    NystromPreconditioner
    """
    op = _check_operator(operator)
    rank = _check_int(rank, "rank", 1)
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0.0 <= tol < 1.0):
        raise ValueError(f"tol must be a real number in [0, 1); got {_describe(tol)}")
    rng = _check_seed(seed)
    xp, mps = _xp(op), op.mps
    n, C = op.n_samples, op.n_outputs
    N = n * C
    rank = min(rank, N)
    per_round = _check_int(per_round, "per_round", 1) if per_round is not None else max(
        1, math.ceil(rank / (8 * C))
    )
    itemsize = np.dtype(mps.dtype).itemsize
    _check_memory(xp, (N * rank + 2 * N * per_round * C) * itemsize,
                  f"a Nystrom factor of rank {rank} on {n} samples",
                  "lower rank")
    diag = _to_host(xp, _flat_diagonal(op)).astype(np.float64)
    total = float(diag.sum())
    resid = diag.copy()  # diagonal of Theta - Theta_hat, flat
    F = xp.empty((N, rank), dtype=mps.dtype)
    k = 0
    pivots = []
    chosen = np.zeros(n, dtype=bool)
    while k < rank:
        weights = resid.reshape(n, C).sum(axis=1)
        weights[chosen] = 0.0
        weights = np.maximum(weights, 0.0)
        left = float(weights.sum())
        if left <= tol * total or left <= 0.0:
            break
        b = min(per_round, (rank - k + C - 1) // C, int(np.count_nonzero(weights)))
        S = rng.choice(n, size=b, replace=False, p=weights / left)
        rows = (S[:, None] * C + np.arange(C)).reshape(-1)
        G = op.columns(S)  # (N, b C)
        if k:
            G -= F[:, :k] @ F[xp.asarray(rows) if xp is not np else rows, :k].T
        H = _to_host(xp, G[xp.asarray(rows) if xp is not np else rows]).astype(np.float64)
        w, V = np.linalg.eigh(0.5 * (H + H.T))
        # H is the residual kernel on the pivots: entries carry the rounding of the kernel
        # itself (eps * its diagonal), which must not be mistaken for directions
        floor = H.shape[0] * np.finfo(mps.dtype).eps * max(float(diag[rows].max()), w[-1])
        keep = w > floor
        w, V = w[keep][::-1], V[:, keep][:, ::-1]
        w, V = w[: rank - k], V[:, : rank - k]
        chosen[S] = True
        pivots.extend(S.tolist())
        if w.size:
            Fn = G @ xp.asarray((V / np.sqrt(w)).astype(mps.dtype))
            F[:, k:k + w.size] = Fn
            k += w.size
            resid -= _to_host(xp, xp.sum(Fn * Fn, axis=1, dtype=xp.float64))
        del G
        np.maximum(resid, 0.0, out=resid)  # rounding below zero
    if k == 0:
        basis = F[:, :0]
        return NystromPreconditioner(basis, np.zeros(0), np.zeros((0, 0)),
                                     np.asarray(pivots, dtype=np.int64), total, float(resid.sum()))
    width, R = _orthonormalise(xp, F, k)
    w, B = np.linalg.eigh(R @ R.T)  # Theta_hat = Q R R^T Q^T
    w, B = np.maximum(w[::-1], 0.0), B[:, ::-1]
    return NystromPreconditioner(
        F[:, :width], w, B, np.asarray(pivots, dtype=np.int64), total, float(resid.sum())
    )


# ---------------------------------------------------------------------------
# Conjugate gradients
# ---------------------------------------------------------------------------


class _Jacobi:
    def __init__(self, diag):
        self.diag = diag

    def apply(self, r, reg):
        d = self.diag + self.diag.dtype.type(reg)
        return r / (d[:, None] if r.ndim == 2 else d)


@dataclass(eq=False)
class RegressionResult:
    """The solution of ``(Theta + reg I) alpha = y`` by :func:`kernel_regression`.

    Attributes
    ----------
    alpha : ndarray
        Dual coefficients, of the shape of ``y``.
    converged : bool
        Whether every right-hand side reached ``rtol``.
    n_iter : int
        Conjugate-gradient iterations (one product with ``Theta`` each, per right-hand side
        still iterating).
    residual_history : ndarray, shape (n_iter + 1,) or (n_iter + 1, k)
        ``||y - (Theta + reg I) alpha_i|| / ||y||`` after each iteration (the recurrence's
        residual; a right-hand side that has converged keeps its last value).
    residual : float or ndarray of shape (k,)
        The final relative residual recomputed from ``alpha`` with one more product (None with
        ``verify=False``).
    rtol, reg : float
    preconditioner : NystromPreconditioner, the string "jacobi", or None
    n_products : int
        Products with ``Theta`` spent (a column of ``Theta`` counts as one):
        ``setup_products`` for a new Nystrom preconditioner's columns, one per iteration and
        right-hand side, and one per right-hand side with ``verify``.  (The diagonal, computed
        once per operator, costs about one product more.)
    setup_products : int
    operator : NTKOperator or mpsntk.dask.ShardedNTK
    """

    alpha: Any
    converged: bool
    n_iter: int
    residual_history: np.ndarray
    residual: Any
    rtol: float
    reg: float
    preconditioner: Any
    n_products: int
    setup_products: int
    operator: Any = field(repr=False)

    def predict(self, phi_test):
        """``Theta(X*, X) alpha``: the kernel regression's prediction at test samples.

        Parameters
        ----------
        phi_test : ndarray, shape (n_test, n_sites, phys_dim)

        Returns
        -------
        ndarray, shape (n_test,) + alpha.shape[1:]
        """
        return self.operator.cross_matvec(phi_test, self.alpha)


def _check_reg(reg):
    reg = _check_positive_float(reg, "reg")
    return reg


def _check_rtol(rtol, dtype):
    """A relative tolerance in [eps, 1) of the model's dtype (below eps it cannot be met)."""
    rtol = _check_positive_float(rtol, "rtol")
    eps = float(np.finfo(dtype).eps)
    if not eps <= rtol < 1.0:
        raise ValueError(
            f"rtol must lie in [{eps:.3g}, 1) for a {np.dtype(dtype).name} model (its machine "
            f"epsilon bounds the attainable accuracy); got {rtol:g}"
        )
    return rtol


def kernel_regression(
    operator,
    y,
    reg,
    *,
    rtol=1e-6,
    maxiter=1000,
    preconditioner="nystrom",
    rank=None,
    x0=None,
    seed=0,
    verify=True,
    callback=None,
):
    """Kernel ridge regression ``(Theta + reg I) alpha = y`` by preconditioned conjugate gradients.

    Each iteration costs one product with ``Theta`` (per right-hand side) and two with the
    preconditioner's factor.  The default preconditioner is the randomly pivoted Cholesky
    (Nystrom) approximation of rank ``rank`` (:func:`nystrom_preconditioner`): CG then needs
    at most about ``sqrt(kappa) / 2 * ln(2 / rtol)`` iterations with ``kappa <= 1 + ||Theta -
    Theta_hat|| / reg``, a handful to tens once the rank covers the eigenvalues of ``Theta``
    above ``reg``; the construction stops early once ``tr(Theta - Theta_hat) <= reg``, where
    that bound gives ``kappa <= 2``.

    Parameters
    ----------
    operator : NTKOperator or mpsntk.dask.ShardedNTK
        ``Theta(X, X)`` from :func:`ntk_operator` (in this process), or with the samples
        sharded over Dask workers (:class:`mpsntk.dask.ShardedNTK`: each product, kernel
        column and prediction is then a Dask graph; the vectors and the preconditioner's
        factor live on the caller).
    y : ndarray, shape (n_samples,) or (n_samples, k) (scalar models); (n_samples, n_outputs)
        or (n_samples, n_outputs, k) (multi-output models)
        Targets, in the model's dtype; ``k`` right-hand sides are solved together.
    reg : float
        Ridge ``> 0`` (the NTK is only positive semi-definite: duplicate samples make it
        singular).
    rtol : float
        Stop a right-hand side once ``||y - (Theta + reg I) alpha|| <= rtol ||y||``.
    maxiter : int
        Most iterations; a :class:`ConvergenceWarning` is issued if some right-hand side has
        not converged by then.
    preconditioner : {"nystrom", "jacobi", None} or NystromPreconditioner
        "nystrom" builds one (``rank``, ``seed``); "jacobi" divides by ``diag(Theta) + reg``;
        a :class:`NystromPreconditioner` of this operator is reused (e.g. from an earlier
        result, for another ``reg`` or ``y``).
    rank : int, optional
        Largest rank of a new Nystrom preconditioner.  Default 512 (fewer where the factor,
        ``n_samples * n_outputs * rank`` entries, would take over a quarter of the available
        memory).  The rank should exceed the effective dimension of the problem -- roughly the
        number of eigenvalues of ``Theta`` above ``reg``, which does not grow with
        ``n_samples`` when ``reg`` scales like ``tr Theta`` -- and CG's iterations fall steeply
        once it does: on the 64-site, ``D = 16`` benchmark (bench/README.md, 10^4 samples,
        ``reg = 1e-6 tr Theta``, ``rtol = 1e-6``) ranks 128, 256 and 512 took 77, 20 and 4
        iterations.  Each unit of rank costs one kernel column (``n_samples`` entries) once,
        and ``4 n_samples n_outputs`` flops per iteration.
    x0 : ndarray, optional
        Initial guess of the shape of ``y`` (a warm start, e.g. the ``alpha`` of a nearby
        ``reg``).
    seed : None, int or numpy.random.Generator
        Pivot sampling of a new Nystrom preconditioner.
    verify : bool
        Recompute the final residual from ``alpha`` (one more product per right-hand side).
    callback : callable, optional
        ``callback(iteration, residual)`` after each iteration, ``residual`` the current
        relative residuals (a float, or an array of shape (k,)).

    Returns
    -------
    RegressionResult

    Raises
    ------
    FloatingPointError
        If CG breaks down (a non-positive curvature ``p^T (Theta + reg I) p``: the products are
        not those of a positive semi-definite kernel, e.g. after an overflow).
    """
    op = _check_operator(operator)
    reg = _check_reg(reg)
    rtol = _check_rtol(rtol, op.dtype)
    maxiter = _check_int(maxiter, "maxiter", 0)
    verify = _check_bool(verify, "verify")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable; got {_describe(callback)}")
    xp = _xp(op)
    Y, multi = _vector_block(op.mps, op.n_samples, y, "y")
    N, k = op.shape[0], Y.shape[-1]
    B = Y.reshape(N, k)
    if x0 is not None:
        X0 = _vector_block(op.mps, op.n_samples, x0, "x0")[0]
        if X0.shape != Y.shape:
            raise ValueError(
                f"x0 must have the shape of y, {tuple(y.shape)}; got {tuple(x0.shape)}"
            )
    before = op.n_products
    precond = _make_preconditioner(op, preconditioner, rank, seed, reg)
    setup = op.n_products - before

    def apply_a(P):
        return _apply_flat(op, P) + P * op.dtype.type(reg)

    X = xp.zeros((N, k), dtype=op.dtype) if x0 is None else X0.reshape(N, k).copy()
    R = B.copy() if x0 is None else B - apply_a(X)
    bnorm = _column_norms(xp, B)
    scale = np.where(bnorm > 0, bnorm, 1.0)
    res = _column_norms(xp, R) / scale
    history = [res.copy()]
    active = np.flatnonzero(res > rtol)
    Z = _precondition(precond, R, reg)
    P = Z.copy()
    rz = _column_dots(xp, R, Z)
    n_iter = 0
    while active.size and n_iter < maxiter:
        cols = xp.asarray(active) if xp is not np else active
        Pa = P[:, cols]
        AP = apply_a(Pa)
        pap = _column_dots(xp, Pa, AP)
        if not np.all(np.isfinite(pap)) or np.any(pap <= 0):
            raise FloatingPointError(
                f"conjugate gradients broke down at iteration {n_iter + 1}: p^T (Theta + reg I) p "
                f"= {pap.min():.3g} is not positive (the products are not those of a positive "
                "semi-definite kernel; check the model and features for overflow)"
            )
        alpha = rz[active] / pap
        X[:, cols] += Pa * xp.asarray(alpha.astype(op.dtype))
        R[:, cols] -= AP * xp.asarray(alpha.astype(op.dtype))
        n_iter += 1
        res = res.copy()
        res[active] = _column_norms(xp, R[:, cols]) / scale[active]
        history.append(res.copy())
        if callback is not None:
            callback(n_iter, res if multi else float(res[0]))
        active = active[res[active] > rtol]
        if not active.size:
            break
        cols = xp.asarray(active) if xp is not np else active
        Zc = _precondition(precond, R[:, cols], reg)
        rz_new = _column_dots(xp, R[:, cols], Zc)
        beta = rz_new / rz[active]
        rz[active] = rz_new
        P[:, cols] = Zc + P[:, cols] * xp.asarray(beta.astype(op.dtype))
    converged = not active.size
    final = None
    if verify:
        final = _column_norms(xp, B - apply_a(X)) / scale
        if converged and np.any(final > 10 * rtol):
            warnings.warn(
                f"kernel_regression: the recurrence reached rtol = {rtol:g} but the recomputed "
                f"relative residual is {final.max():.3g}: rounding in {np.dtype(op.dtype).name} "
                "limits the attainable accuracy (a larger reg, or a float64 model, helps)",
                ConvergenceWarning,
                stacklevel=2,
            )
    if not converged:
        worst = float(history[-1].max())
        warnings.warn(
            f"kernel_regression did not converge: relative residual {worst:.3g} > rtol = {rtol:g} "
            f"after maxiter = {maxiter} iterations; raise maxiter, the preconditioner's rank or "
            "reg",
            ConvergenceWarning,
            stacklevel=2,
        )
    alpha = X.reshape(Y.shape)
    hist = np.asarray(history)
    if not multi:
        alpha, hist = alpha[..., 0], hist[:, 0]
        final = None if final is None else float(final[0])
    return RegressionResult(
        alpha=alpha,
        converged=converged,
        n_iter=n_iter,
        residual_history=hist,
        residual=final,
        rtol=rtol,
        reg=reg,
        preconditioner="jacobi" if isinstance(precond, _Jacobi) else precond,
        n_products=op.n_products - before,
        setup_products=setup,
        operator=op,
    )


def _make_preconditioner(op, preconditioner, rank, seed, reg):
    if preconditioner is None:
        return None
    if isinstance(preconditioner, NystromPreconditioner):
        if preconditioner.basis.shape[0] != op.shape[0]:
            raise ValueError(
                f"preconditioner was built for {preconditioner.basis.shape[0]} rows; the "
                f"operator has {op.shape[0]}"
            )
        return preconditioner
    if isinstance(preconditioner, str):
        _check_choice(preconditioner, "preconditioner", ("nystrom", "jacobi"))
        if preconditioner == "jacobi":
            return _Jacobi(_flat_diagonal(op))
        rank = _default_rank(op) if rank is None else _check_int(rank, "rank", 1)
        tol = min(reg / max(_trace(op), np.finfo(np.float64).tiny), 0.5)
        return nystrom_preconditioner(op, rank, tol=tol, seed=seed)
    raise TypeError(
        "preconditioner must be 'nystrom', 'jacobi', None or a NystromPreconditioner; got "
        f"{_describe(preconditioner)}"
    )


def _precondition(precond, R, reg):
    return R.copy() if precond is None else precond.apply(R, reg)


# ---------------------------------------------------------------------------
# MSE dynamics by Lanczos
# ---------------------------------------------------------------------------


class _Basis:
    """Orthonormal Lanczos vectors, stored in chunks of columns allocated as they fill."""

    CHUNK = 32

    def __init__(self, xp, size, dtype):
        self.xp, self.size, self.dtype = xp, size, dtype
        self.chunks, self.count = [], 0

    def append(self, v):
        j = self.count % self.CHUNK
        if j == 0:
            _check_memory(self.xp, self.size * self.CHUNK * np.dtype(self.dtype).itemsize,
                          f"Lanczos vectors beyond {self.count}", "lower maxiter")
            self.chunks.append(self.xp.empty((self.size, self.CHUNK), dtype=self.dtype))
        self.chunks[-1][:, j] = v
        self.count += 1

    def _views(self):
        full, last = divmod(self.count, self.CHUNK)
        return self.chunks[:full] + ([self.chunks[full][:, :last]] if last else [])

    def orthogonalise(self, w):
        """``w`` minus its projection on the basis (classical Gram-Schmidt, twice)."""
        for _ in range(2):
            for c in self._views():
                w -= c @ (c.T @ w)
        return w

    def combine(self, coeffs):
        """``V @ coeffs`` for ``coeffs`` (count, t), host float64."""
        out, row = None, 0
        for c in self._views():
            part = c @ self.xp.asarray(coeffs[row:row + c.shape[1]].astype(self.dtype))
            out = part if out is None else out + part
            row += c.shape[1]
        return out

    def columns(self):
        for c in self._views():
            for j in range(c.shape[1]):
                yield c[:, j]


def _ritz_functions(alphas, betas, beta0, times, rate, discrete, size):
    """Coefficients in the Lanczos basis of ``f(T) e_1 beta0`` for the decay ``f = exp(-rate lam
    t)`` (or ``(1 - rate lam)^t``) and the solve ``f = (1 - decay) / lam``, each (j, n_times),
    and the largest Ritz value.  The zero modes and their limits are those of
    :mod:`mpsntk.dynamics` (eigenvalues below ``size * eps * lam_max`` count as zero)."""
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    theta, W = np.linalg.eigh(T)
    lam_max = max(float(theta[-1]), 0.0)
    zero = theta <= size * np.finfo(np.float64).eps * lam_max
    spec = _Spectrum(np.where(zero, 0.0, theta), W, zero, lam_max)
    decay, solve = _decay_and_solve(spec, times, rate, discrete)
    first = W[0] * beta0
    return W @ (decay * first).T, W @ (solve * first).T, lam_max


def _lanczos_dynamics(op, e0, reg, times, rate, discrete, rtol, maxiter):
    """Lanczos on ``Theta + reg I`` from ``e0`` (N,): the basis and the coefficients of
    ``e_t = decay(t) e0`` and ``S_t e0``, with the number of iterations and the error estimate."""
    xp, N = op._x.xp, op.shape[0]
    beta0 = float(_column_norms(xp, e0[:, None])[0])
    basis = _Basis(xp, N, op.dtype)
    n_t = times.size
    if beta0 == 0.0:
        return basis, np.zeros((0, n_t)), np.zeros((0, n_t)), 0, 0.0, True
    v = e0 / op.dtype.type(beta0)
    basis.append(v)
    alphas, betas = [], []
    prev = None
    streak, err, converged = 0, math.inf, False
    v_prev = None
    while True:
        w = op._apply(v.reshape(op.vector_shape + (1,))).reshape(N) + v * op.dtype.type(reg)
        a = float(_column_dots(xp, v[:, None], w[:, None])[0])
        alphas.append(a)
        w -= v * op.dtype.type(a)
        if v_prev is not None:
            w -= v_prev * op.dtype.type(betas[-1])
        basis.orthogonalise(w)
        b = float(_column_norms(xp, w[:, None])[0])
        cd, cs, lam_max = _ritz_functions(np.asarray(alphas), np.asarray(betas), beta0, times,
                                          rate, discrete, N)
        if discrete and rate * lam_max >= 2.0:
            raise ValueError(
                "learning_rate is too large for discrete gradient descent: stability needs "
                f"learning_rate * lam_max / s < 2; got rate * lam_max = {rate * lam_max:.6g} "
                "(lam_max estimated by Lanczos)"
            )
        if prev is not None:
            pd, ps = (np.vstack([p, np.zeros((1, n_t))]) for p in prev)
            err_d = np.sqrt(np.sum((cd - pd) ** 2, axis=0)) / beta0
            norm_s = np.sqrt(np.sum(cs**2, axis=0))
            err_s = np.sqrt(np.sum((cs - ps) ** 2, axis=0)) / np.where(norm_s > 0, norm_s, 1.0)
            err = float(max(err_d.max(), err_s.max()))
            streak = streak + 1 if err <= rtol else 0
        prev = (cd, cs)
        # an invariant subspace: the Krylov approximation is exact
        if b <= N * np.finfo(op.dtype).eps * max(lam_max, abs(a)) or len(alphas) >= N:
            converged, err = True, 0.0
            break
        if streak >= 2:
            converged = True
            break
        if len(alphas) >= maxiter:
            break
        betas.append(b)
        v_prev, v = v, w / op.dtype.type(b)
        basis.append(v)
    return basis, cd, cs, len(alphas), err, converged


def _as_outputs_like(samples, value, name, shape):
    """Initial outputs: an array of exactly ``shape`` in the model's dtype on its device, or a
    real scalar broadcast to it."""
    xp, mps = samples.xp, samples.mps
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; got {value}")
        return xp.full(shape, value, dtype=mps.dtype)
    mps.same_device(array_module(value, names=[name]), name)
    arr = as_array(value, xp)
    if arr.dtype != mps.dtype:
        raise TypeError(f"{name} must have the model's dtype {mps.dtype}; got {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (or be a scalar); got {arr.shape}")
    if not bool(xp.all(xp.isfinite(arr))):
        raise ValueError(f"{name} must be finite; got NaN or Inf entries")
    return arr


def gradient_descent_mse(
    operator,
    y_train,
    learning_rate=1.0,
    diag_reg=0.0,
    loss="mean",
    discrete=False,
    *,
    rtol=None,
    maxiter=500,
):
    """Matrix-free kernel-regime outputs of a model trained on the squared loss.

    The same dynamics as :func:`mpsntk.dynamics.gradient_descent_mse` (spec section 4.1; its
    conventions for ``loss``, ``diag_reg``, ``discrete`` and zero modes),

    ``f_t(X) = Y + exp(-eta Theta t / s) (f_0(X) - Y)``,
    ``f_t(x*) = f_0(x*) - Theta(x*, X) S_t (f_0(X) - Y)``, ``S_t = Theta^{-1} (I - exp(-eta
    Theta t / s))``,

    without forming or decomposing ``Theta``: a Lanczos basis of ``Theta + diag_reg I`` started
    from ``e_0 = f_0(X) - Y`` (full reorthogonalisation) gives both matrix functions at every
    time, as ``V f(T) V^T e_0`` with ``f`` evaluated on the small tridiagonal ``T``: the decay
    ``exp(-eta lam t / s)`` (``(1 - eta lam / s)^t`` for discrete steps) and the entire function
    ``(1 - decay) / lam``, which needs no solve.  The test outputs then take one cross product
    ``Theta(X*, X) w`` per time (or per basis vector, if fewer).

    Parameters
    ----------
    operator : NTKOperator
        ``Theta(X, X)`` on the training samples (:func:`ntk_operator`).
    y_train : ndarray, shape ``operator.vector_shape``, or with a trailing axis of ``k``
        columns (each trained under the same kernel, as the columns of ``y_train`` in
        :mod:`mpsntk.dynamics`)
        Targets in the model's dtype.  For multi-output models the kernel is the full
        output-resolved one: ``y_train`` of shape (n_samples, n_outputs) matches
        ``mpsntk.dynamics.gradient_descent_mse`` on the flattened ``(n C, n C)`` kernel.
    learning_rate, diag_reg, loss, discrete
        As in :func:`mpsntk.dynamics.gradient_descent_mse` (``s = y_train.size`` for
        ``loss="mean"``).
    rtol : float, optional
        Lanczos stops once two successive iterations change every requested output by at most
        ``rtol`` relative to ``||f_0(X) - Y||`` (training outputs) and to ``||S_t e_0||`` (the
        vector the test outputs are computed from).  Default ``1e-8`` (float64 models) or
        ``100 eps`` (float32: 1.2e-5).
    maxiter : int
        Largest Krylov dimension (one product each); a :class:`ConvergenceWarning` is issued if
        it is reached first.  The dimension needed grows like ``sqrt(eta lam_max t / s)``;
        ``t = inf`` (the kernel's pseudo-inverse) converges like unpreconditioned CG -- prefer
        :func:`kernel_regression` there.

    Returns
    -------
    predict_fn : callable
        ``predict_fn(t, fx_train_0, fx_test_0=None, phi_test=None, *, return_info=False)``:
        ``t`` a non-negative scalar or 1-D array (integers with ``discrete=True``; ``inf``
        allowed), ``fx_train_0`` of the shape of ``y_train`` (or a scalar), ``fx_test_0`` of
        shape (n_test,) + y_train.shape[1:] (or a scalar) with ``phi_test`` of shape (n_test,
        n_sites, phys_dim).  Returns the training outputs, and the test outputs when
        ``phi_test`` is given, each with a leading time axis for a 1-D ``t``; with
        ``return_info`` also a dict: ``krylov_dim`` (per column), ``converged``,
        ``error_estimate``.

    Raises
    ------
    ValueError
        As :func:`mpsntk.dynamics.gradient_descent_mse` (``learning_rate * lam_max / s >= 2``
        with ``discrete=True``, with ``lam_max`` the Lanczos estimate).
    """
    op = _check_ntk_operator(operator)
    learning_rate = _check_positive_float(learning_rate, "learning_rate")
    diag_reg = _check_nonnegative_float(diag_reg, "diag_reg")
    _check_choice(loss, "loss", _LOSSES)
    discrete = _check_bool(discrete, "discrete")
    eps = float(np.finfo(op.dtype).eps)
    rtol = max(1e-8, 100 * eps) if rtol is None else _check_rtol(rtol, op.dtype)
    maxiter = _check_int(maxiter, "maxiter", 1)
    samples, xp = op._x, op._x.xp
    Y, multi = samples.check_vectors(y_train, "y_train")
    y_shape = Y.shape if multi else Y.shape[:-1]
    N, k = op.shape[0], Y.shape[-1]
    s = float(N * k) if loss == "mean" else 1.0
    rate = learning_rate / s

    def predict_fn(t, fx_train_0, fx_test_0=None, phi_test=None, *, return_info=False):
        """Outputs at times ``t``; see :func:`mpsntk.linalg.gradient_descent_mse`."""
        times, scalar = _as_times(t, discrete)
        if (fx_test_0 is None) != (phi_test is None):
            raise ValueError(
                "fx_test_0 and phi_test must be given together (use 0.0 for zero initial outputs)"
            )
        F0 = _as_outputs_like(samples, fx_train_0, "fx_train_0", y_shape)
        E0 = (F0.reshape(Y.shape) - Y).reshape(N, k)
        test = None
        if phi_test is not None:
            test = _Samples(op.mps, phi_test, "phi_test", op.block_size)
            G0 = _as_outputs_like(test, fx_test_0, "fx_test_0", (test.n,) + y_shape[1:])
        train_cols, test_cols, dims, errs, ok = [], [], [], [], True
        for c in range(k):
            basis, cd, cs, dim, err, conv = _lanczos_dynamics(
                op, xp.ascontiguousarray(E0[:, c]), diag_reg, times, rate, discrete, rtol, maxiter
            )
            dims.append(dim)
            errs.append(err)
            ok &= conv
            y_c = Y.reshape(N, k)[:, c]
            if basis.count:
                train_cols.append(y_c[:, None] + basis.combine(cd))
            else:
                train_cols.append(xp.repeat(y_c[:, None], times.size, axis=1))
            if test is not None:
                test_cols.append(_test_shift(op, test, basis, cs, times.size))
        if not ok:
            warnings.warn(
                f"gradient_descent_mse: Lanczos did not converge within maxiter = {maxiter} "
                f"(estimated relative error {max(errs):.3g} > rtol = {rtol:g}); raise maxiter",
                ConvergenceWarning,
                stacklevel=2,
            )
        info = {"krylov_dim": dims, "converged": ok, "error_estimate": max(errs)}
        train = _stack_times(xp, train_cols, Y.shape, multi, scalar)
        out = (train,)
        if test is not None:
            shift = _stack_times(xp, test_cols, (test.n,) + Y.shape[1:], multi, scalar)
            out = (train, G0 - shift)
        if return_info:
            out = out + (info,)
        return out[0] if len(out) == 1 else out

    return predict_fn


def _test_shift(op, test, basis, cs, n_times):
    """``Theta(X*, X) S_t e_0`` for every time: (n_test * C, n_times)."""
    xp = op._x.xp
    m = basis.count
    rows = test.n * op.n_outputs
    if m == 0:
        return xp.zeros((rows, n_times), dtype=op.dtype)
    if n_times <= m:
        W = basis.combine(cs).reshape(op.vector_shape + (n_times,))
        return _products(test, op._x, W).reshape(rows, n_times)
    # more times than basis vectors: Theta(X*, X) V once, then the coefficients
    V = xp.stack(list(basis.columns()), axis=-1).reshape(op.vector_shape + (m,))
    KV = _products(test, op._x, V).reshape(rows, m)
    return KV @ xp.asarray(cs.astype(op.dtype))


def _stack_times(xp, cols, shape, multi, scalar):
    """Columns of (rows, n_times) -> (n_times,) + shape (without the column axis unless
    ``multi``; without the time axis for a scalar time)."""
    arr = xp.stack(cols, axis=-1)  # (rows, n_times, k)
    n_times = arr.shape[1]
    arr = xp.moveaxis(arr, 1, 0).reshape((n_times,) + tuple(shape[:-1]) + (arr.shape[-1],))
    if not multi:
        arr = arr[..., 0]
    return arr[0] if scalar else arr


# ---------------------------------------------------------------------------
# Spectrum
# ---------------------------------------------------------------------------


def top_eigenvalues(operator, k=6, *, return_eigenvectors=False, tol=0.0, maxiter=None, seed=0):
    """The ``k`` largest eigenvalues of ``Theta`` by implicitly restarted Lanczos (``eigsh``).

    Parameters
    ----------
    operator : NTKOperator or mpsntk.dask.ShardedNTK
    k : int
        Number of eigenvalues, ``1 <= k < n_samples * n_outputs``.
    return_eigenvectors : bool
    tol : float
        Relative accuracy of the Ritz values (0: machine precision), as in ``eigsh``.
    maxiter : int, optional
        Restarts, as in ``eigsh``.
    seed : None, int or numpy.random.Generator
        The starting vector (drawn in the model's dtype), so that results are reproducible.

    Returns
    -------
    eigenvalues : ndarray, shape (k,)
        Descending.
    eigenvectors : ndarray, shape ``operator.vector_shape + (k,)``
        With ``return_eigenvectors=True``; orthonormal over the flattened vectors.

    Raises
    ------
    scipy.sparse.linalg.ArpackNoConvergence
        If ARPACK does not converge within ``maxiter`` restarts.
    """
    op = _check_operator(operator)
    k = _check_int(k, "k", 1)
    N = op.shape[0]
    if k >= N:
        raise ValueError(
            f"k must be < n_samples * n_outputs = {N} for Lanczos; for the whole spectrum use "
            "numpy.linalg.eigvalsh on mpsntk.ntk(..., outputs='full')"
        )
    return_eigenvectors = _check_bool(return_eigenvectors, "return_eigenvectors")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 <= tol < 1.0:
        raise ValueError(f"tol must be a real number in [0, 1); got {_describe(tol)}")
    if maxiter is not None:
        maxiter = _check_int(maxiter, "maxiter", 1)
    xp = _xp(op)
    lin = _linear_operator(op)
    v0 = _check_seed(seed).standard_normal(N).astype(op.dtype)
    if xp is np:
        from scipy.sparse.linalg import eigsh
    else:  # pragma: no cover - needs a GPU
        from cupyx.scipy.sparse.linalg import eigsh

        v0 = xp.asarray(v0)
    res = eigsh(lin, k=k, which="LA", v0=v0, tol=tol, maxiter=maxiter,
                return_eigenvectors=return_eigenvectors)
    if not return_eigenvectors:
        return xp.sort(res)[::-1]
    vals, vecs = res
    order = xp.argsort(vals)[::-1]
    return vals[order], vecs[:, order].reshape(tuple(op.vector_shape) + (k,))
