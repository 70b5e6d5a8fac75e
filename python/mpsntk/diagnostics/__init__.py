"""Diagnostics of the kernel regime: how far a finite-bond-dimension MPS is from its kernel
limit, as plain functions and as callbacks for :func:`mpsntk.train`."""

from ._taylor import (
    NonlinearFraction,
    NonlinearityMonitor,
    WeakCorrelations,
    nonlinear_fraction,
    order_kernels,
    taylor_terms,
    weak_correlations,
)

__all__ = [
    "NonlinearFraction",
    "NonlinearityMonitor",
    "WeakCorrelations",
    "nonlinear_fraction",
    "order_kernels",
    "taylor_terms",
    "weak_correlations",
]
