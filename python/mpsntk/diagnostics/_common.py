"""Helpers shared by the diagnostics: array checks on either device, host copies, and the
step bookkeeping of the training callbacks."""

from __future__ import annotations

import numpy as np

from .._backend import array_module, as_array
from .._validate import _as_phi, _describe
from ..mps import MPS


def _to_host(a, xp):
    """``a`` as a NumPy array (an explicit device-to-host copy for CuPy arrays)."""
    return np.asarray(a) if xp is np else xp.asnumpy(a)


def _check_mps(mps, name="mps"):
    if not isinstance(mps, MPS):
        raise TypeError(f"{name} must be an mpsntk.MPS; got {_describe(mps)}")
    return mps


def _as_real_array(a, name, expected, xp=None):
    """``a`` as a finite, non-empty float64 array of NumPy or CuPy (wherever it lives).

    Integer arrays are accepted (no information is lost in float64); booleans, complex and
    object arrays are not.
    """
    if xp is None:
        xp = array_module(a, names=[name])
    arr = as_array(a, xp)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array {expected}; got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty {expected}; got shape {arr.shape}")
    arr = arr.astype(xp.float64, copy=False)
    if not bool(xp.all(xp.isfinite(arr))):
        raise ValueError(f"{name} must be finite; got NaN or Inf entries")
    return arr, xp


def _as_probe(probe, name="probe"):
    """Validate probe features ``(n_samples, n_sites, phys_dim)`` on the host or a device."""
    xp = array_module(probe, names=[name])
    return _as_phi(probe, name, xp)


def _frobenius(a, xp):
    """Frobenius norm over all axes, as a Python float."""
    return float(xp.sqrt(xp.sum(a * a)))


class _StepCallback:
    """Bookkeeping of a callback for :func:`mpsntk.train`: the first call is the reference
    state, later calls must come at strictly larger steps (a new run needs :meth:`reset`).
    Subclasses implement ``_compute(step, mps, first) -> dict``."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Forget every state seen, so that the next call starts a new reference."""
        self.reference_step = None
        self.last_step = None

    def __call__(self, step, mps):
        first = self._advance(step, mps)
        try:
            return self._compute(step, mps, first)
        except Exception:
            if first:  # nothing usable was recorded: the next call starts afresh
                self.reset()
            raise

    def _advance(self, step, mps):
        _check_mps(mps)
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an integer >= 0; got {_describe(step)}")
        if step < 0:
            raise ValueError(f"step must be an integer >= 0; got {step}")
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(
                f"{type(self).__name__} was called at step {step} after step {self.last_step}; "
                "steps must increase within one run (call reset() before a new run)"
            )
        first = self.last_step is None
        if first:
            self.reference_step = int(step)
        self.last_step = int(step)
        return first
