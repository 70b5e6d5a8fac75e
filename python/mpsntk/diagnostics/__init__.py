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

from . import _dbm, _drift, _fluctuations, _linearization, _path, _rmt, _taylor
from ._dbm import *  # noqa: F403
from ._drift import *  # noqa: F403
from ._fluctuations import *  # noqa: F403
from ._linearization import *  # noqa: F403
from ._path import *  # noqa: F403
from ._rmt import *  # noqa: F403
from ._taylor import *  # noqa: F403

# The public names are those of the submodules, each listed once, where it is defined.
__all__ = [
    *_drift.__all__,
    *_fluctuations.__all__,
    *_linearization.__all__,
    *_rmt.__all__,
    *_dbm.__all__,
    *_path.__all__,
    *_taylor.__all__,
]
