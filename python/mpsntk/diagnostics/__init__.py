"""Diagnostics of the kernel regime (theory section 5).

How far a finite-bond-dimension MPS is from its kernel limit while it trains: every diagnostic
is a plain function, and the ``*Monitor`` classes and :class:`PathKernel` are callbacks for
:func:`mpsntk.train` (``cb(step, mps) -> dict``) that compute theirs on a fixed probe set, so
that one training run logs all of them.

* NTK and parameter drift, kernel alignment, kernel distance and velocity
  (:class:`KernelDriftMonitor`);
* distance from the linearised and infinite-width predictions (:class:`LinearizationMonitor`);
* random-matrix statistics of the cores: Marchenko-Pastur law, Kolmogorov-Smirnov distance,
  Tracy-Widom outliers, spacing ratios (:class:`SpectrumMonitor`), and the Dyson-Brownian-motion
  scaling experiment (:func:`dyson_scaling`);
* the path kernel and kernel regression with it (:class:`PathKernel`,
  :func:`compare_kernel_regression`);
* the exact finite Taylor (RKBS) expansion, the order-k kernels, the nonlinear fraction and
  the weak-correlation ratios (:func:`taylor_terms`, :func:`order_kernels`,
  :class:`NonlinearityMonitor`, :func:`weak_correlations`);
* finite-D fluctuations of the kernel about its limit: mean and spread of Theta_D over draws,
  the power law in D, the exact open-chain kurtosis law (:func:`kernel_statistics`,
  :func:`fluctuation_scaling`, :func:`kurtosis_open_chain`, :func:`output_kurtosis`).
"""

from ._dbm import DysonScaling, dyson_scaling
from ._drift import (
    KernelDriftMonitor,
    kernel_alignment,
    kernel_distance,
    kernel_drift,
    kernel_velocity,
    parameter_drift,
)
from ._fluctuations import (
    FluctuationScaling,
    KernelStatistics,
    OutputKurtosis,
    PowerLawFit,
    fit_power_law,
    fluctuation_scaling,
    kernel_statistics,
    kurtosis_open_chain,
    output_kurtosis,
)
from ._linearization import LinearizationMonitor, linearization_error
from ._path import PathKernel, compare_kernel_regression, kernel_regression_table, path_kernel
from ._rmt import (
    MIN_EIGENVALUES,
    R_TILDE_GOE,
    R_TILDE_GOE_SURMISE,
    R_TILDE_GUE,
    R_TILDE_POISSON,
    CoreStatistics,
    Spectrum,
    SpectrumMonitor,
    core_spectrum,
    core_statistics,
    edge_threshold,
    ks_distance,
    marchenko_pastur_cdf,
    marchenko_pastur_edges,
    marchenko_pastur_pdf,
    matrix_spectrum,
    semicircle_cdf,
    semicircle_pdf,
    spacing_ratios,
    spectral_statistics,
    tracy_widom_quantile,
)
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
    # drift (_drift)
    "KernelDriftMonitor",
    "kernel_alignment",
    "kernel_distance",
    "kernel_drift",
    "kernel_velocity",
    "parameter_drift",
    # finite-D fluctuations (_fluctuations)
    "FluctuationScaling",
    "KernelStatistics",
    "OutputKurtosis",
    "PowerLawFit",
    "fit_power_law",
    "fluctuation_scaling",
    "kernel_statistics",
    "kurtosis_open_chain",
    "output_kurtosis",
    # linearisation (_linearization)
    "LinearizationMonitor",
    "linearization_error",
    # random matrices (_rmt) and Dyson Brownian motion (_dbm)
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
    "DysonScaling",
    "dyson_scaling",
    # path kernel (_path)
    "PathKernel",
    "compare_kernel_regression",
    "kernel_regression_table",
    "path_kernel",
    # Taylor expansion, order-k kernels, weak correlations (_taylor)
    "NonlinearFraction",
    "NonlinearityMonitor",
    "WeakCorrelations",
    "nonlinear_fraction",
    "order_kernels",
    "taylor_terms",
    "weak_correlations",
]
