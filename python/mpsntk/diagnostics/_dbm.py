"""Dyson Brownian motion of the core spectra under SGD: the alpha / |B| scaling (theory 5.5).

Mini-batch SGD at learning rate ``alpha`` with batch size ``|B|`` is, in the time ``t = alpha *
step``, gradient flow plus a noise of strength ``sqrt(alpha / |B|)`` (theory 5.5; Aarts, Lucini
& Park 2024).  The eigenvalues of ``X_j = W_j^T W_j`` then perform a Dyson Brownian motion whose
stationary fluctuations scale with ``alpha / |B|``: runs with equal ``alpha / |B|`` have equal
fluctuation variances.  The noise must persist at the minimum, which label noise ensures
(:func:`mpsntk.train` with ``label_noise=``): every update fits ``y + sigma xi``, and with the
batch-mean loss the noise of an update has variance ``sigma^2 / |B|``.

Label-noise SGD also drifts slowly along the manifold of minima (its implicit regularisation;
Blanc et al. 2020, Damian et al. 2021), at a speed in ``t`` proportional to ``alpha / |B|`` as
well: over a window of length ``T`` the drift adds ``(speed T)^2``, i.e. a term in
``(alpha / |B|)^2``, to the variance about the mean.  The fluctuation variance is therefore
taken about a least-squares line in ``t`` (``detrend=True``), or about lines fitted to blocks
of fixed length in ``t`` for a drift that curves; the raw variance is reported too.  The
equal-ratio collapse is the robust prediction (the limiting SDE depends on ``alpha / |B|``
alone); proportionality across different ratios also needs the drift to leave the local
geometry unchanged over the window.

:func:`dyson_scaling` runs the experiment in one call.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from .._validate import _check_int, _check_positive_float, _check_seed, _describe
from ..train import _check_targets, train
from ._common import _check_mps
from ._rmt import _resolve_sites, core_spectrum

__all__ = ["DysonScaling", "dyson_scaling"]


@dataclasses.dataclass
class DysonScaling:
    """Result of :func:`dyson_scaling`.

    Attributes
    ----------
    runs : list of dict
        One per ``(alpha, batch_size)``, equal-ratio pairs first, then the controls:
        ``alpha``, ``batch_size``, ``ratio`` (``alpha / batch_size``), ``control`` (bool),
        ``n_steps``, ``log_every`` (steps between samples), ``variance`` (stationary variance of
        the top eigenvalues after burn-in, about their trend with ``detrend``, averaged over
        the tracked sites and the ``top_k`` eigenvalues), ``raw_variance`` (the same about
        the mean), ``normalized_variance`` (``variance / ratio``), ``variance_by_site`` and
        ``mean_top`` (ndarrays (n_tracked, top_k): per eigenvalue), ``loss_mean`` (mean
        clean-target training loss after burn-in), ``times`` (``t = alpha * step`` of the
        samples) and ``top`` (ndarray (n_samples, n_tracked, top_k): the sampled top
        eigenvalues, descending).
    collapse_rel_spread : float
        ``(max - min) / mean`` of ``normalized_variance`` across the equal-ratio pairs: small
        when the variance is a function of ``alpha / |B|`` alone.
    control_rel_spread : list of float
        For each control, the same spread of the raw ``variance`` over the equal-ratio pairs
        and that control: large when the variance depends on the ratio.
    control_variance_ratio : list of float
        ``variance(control) / mean variance(equal-ratio pairs)``; the scaling predicts
        :attr:`control_ratio_predicted`.
    control_ratio_predicted : list of float
        ``ratio(control) / ratio(pairs)``.
    sites : list of int
        The tracked sites.
    top_k : int
    """

    runs: list
    collapse_rel_spread: float
    control_rel_spread: list
    control_variance_ratio: list
    control_ratio_predicted: list
    sites: list
    top_k: int


def _check_pairs(pairs, name, allow_empty=False):
    try:
        items = [tuple(p) for p in pairs]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of (learning_rate, batch_size) pairs; got "
                        f"{_describe(pairs)}") from None
    if not items and not allow_empty:
        raise ValueError(f"{name} must hold at least one (learning_rate, batch_size) pair")
    out = []
    for i, p in enumerate(items):
        if len(p) != 2:
            raise ValueError(f"{name}[{i}] must be a (learning_rate, batch_size) pair; got {p}")
        out.append((_check_positive_float(p[0], f"{name}[{i}] learning rate"),
                    _check_int(p[1], f"{name}[{i}] batch size", 1)))
    return out


def _steps(time, alpha, name):
    """``time / alpha`` as a whole number of steps (the runs share one clock ``t``)."""
    n = time / alpha
    k = int(round(n))
    if k < 1 or abs(n - k) > 1e-9 * max(n, 1.0):
        raise ValueError(f"{name} / learning_rate must be a whole number of steps >= 1; got "
                         f"{time:g} / {alpha:g} = {n:g}")
    return k


def _detrended_variance(t, series, window=None):
    """Variance of each column of ``series`` (axis 0) about least-squares lines in ``t``, fitted
    over consecutive blocks of ``window`` units of ``t`` (one block when None; a short last
    block joins the one before), pooled with ``n_block - 2`` degrees of freedom per block."""
    flat = series.reshape(len(t), -1)
    if window is None:
        blocks = [np.arange(len(t))]
    else:
        index = np.floor((t - t[0]) / window + 1e-9).astype(int)
        blocks = [np.flatnonzero(index == b) for b in np.unique(index)]
        if len(blocks) > 1 and len(blocks[-1]) < len(blocks[0]):
            blocks[-2:] = [np.concatenate(blocks[-2:])]
    ss, dof = 0.0, 0
    for b in blocks:
        a = np.stack([np.ones(len(b)), t[b] - t[b].mean()], axis=1)
        coef, *_ = np.linalg.lstsq(a, flat[b], rcond=None)
        ss = ss + np.sum((flat[b] - a @ coef) ** 2, axis=0)
        dof += len(b) - 2
    return (ss / dof).reshape(series.shape[1:])


def dyson_scaling(mps, phi, y, *, pairs=((0.01, 8), (0.02, 16), (0.04, 32)),
                  controls=((0.04, 8),), label_noise, duration, burn_in, sample_every,
                  sites=None, top_k=3, detrend=True, seed=0, progress=None):
    """The Dyson-Brownian-motion scaling experiment: stationary eigenvalue fluctuations of the
    cores under label-noise SGD against ``alpha / |B|``.

    For every ``(alpha, batch_size)`` the model is trained from the same initial state by
    :func:`mpsntk.train` (mini-batch SGD on the batch-mean squared loss, ``label_noise``) for
    ``duration / alpha`` steps;
    every ``sample_every`` units of ``t = alpha * step`` the ``top_k`` largest eigenvalues of
    ``X_j = W_L^T W_L / p`` (the left matricisation of the trainable core ``j``, ``p`` its rows;
    :func:`core_spectrum` with variance 1) are recorded.  After ``burn_in`` (in ``t``) their
    variance over time (about a line in ``t`` with ``detrend``: module docstring) is the
    stationary fluctuation variance; averaged over the tracked sites
    and eigenvalues it should be proportional to ``alpha / |B|`` (theory 5.5).  The collapse
    statistic is the relative spread of ``variance / (alpha / |B|)`` across ``pairs``, which
    must share one ratio; ``controls`` have other ratios.

    Parameters
    ----------
    mps : MPS
        Initial model (every run starts from it).
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
    y : ndarray, shape (n_samples,) or (n_samples, n_outputs)
        The regression task (targets in the model's dtype).
    pairs : sequence of (float, int)
        ``(alpha, batch_size)`` with one ratio ``alpha / batch_size``, at least two.
    controls : sequence of (float, int)
        Pairs with other ratios (may be empty).
    label_noise : float > 0
        ``sigma`` of the label noise (:func:`mpsntk.train`).
    duration, burn_in, sample_every : float
        In units of ``t = alpha * step``: the length of each run, the time discarded before
        the statistics, and the interval between samples; each divided by every ``alpha`` must
        be a whole number of steps.
    sites : int or sequence of int, optional
        Cores to track (default: every core with at least 8 eigenvalues, as in
        :func:`core_statistics`).
    top_k : int
        Largest eigenvalues tracked per core.
    detrend : bool or float
        True (default): the variance about a least-squares line in ``t`` over the whole window
        after burn-in; a number: about lines fitted to consecutive blocks of that many units of
        ``t`` (for drifts that curve; blocks much longer than the fluctuations' correlation
        time); False: about the mean.
    seed : int >= 0
        Seeds the runs (batch order and label noise), one stream per run.
    progress : bool or None
        Passed to :func:`mpsntk.train`.

    Returns
    -------
    DysonScaling
    """
    _check_mps(mps)
    pairs = _check_pairs(pairs, "pairs")
    controls = _check_pairs(controls, "controls", allow_empty=True)
    if len(pairs) < 2:
        raise ValueError(f"pairs must hold at least two (learning_rate, batch_size) pairs of "
                         f"one ratio; got {len(pairs)}")
    ratio = pairs[0][0] / pairs[0][1]
    for a, b in pairs[1:]:
        if abs(a / b - ratio) > 1e-9 * ratio:
            raise ValueError(f"pairs must share one learning_rate / batch_size; got {pairs} "
                             f"(ratios {[p[0] / p[1] for p in pairs]})")
    for a, b in controls:
        if abs(a / b - ratio) <= 1e-9 * ratio:
            raise ValueError(f"controls must have a learning_rate / batch_size other than the "
                             f"pairs' {ratio:g}; got ({a:g}, {b})")
    label_noise = _check_positive_float(label_noise, "label_noise")
    duration = _check_positive_float(duration, "duration")
    sample_every = _check_positive_float(sample_every, "sample_every")
    if isinstance(burn_in, (bool, np.bool_)) or not isinstance(burn_in, numbers.Real):
        raise TypeError(f"burn_in must be a real number >= 0; got {_describe(burn_in)}")
    burn_in = float(burn_in)
    if not 0.0 <= burn_in < duration:
        raise ValueError(f"burn_in must lie in [0, duration = {duration:g}); got {burn_in:g}")
    top_k = _check_int(top_k, "top_k", 1)
    if isinstance(detrend, (bool, np.bool_)):
        window = None
    else:
        window = _check_positive_float(detrend, "detrend (a block length in t)")
        if window < 3 * sample_every * (1 - 1e-9):  # every block holds 3 samples or more
            raise ValueError(f"detrend = {window:g} must span at least 3 samples, every "
                             f"{sample_every:g} units of t")
        detrend = True
    seed = _check_seed(seed, base=True)
    phi = mps.check_features(phi)
    _check_targets("mse", mps, phi, y, "y")
    n_samples = phi.shape[0]
    for a, b in pairs + controls:
        if b > n_samples:
            raise ValueError(f"batch size {b} exceeds n_samples = {n_samples}")
        _steps(duration, a, "duration")
        _steps(sample_every, a, "sample_every")
    if duration - burn_in < 2.5 * sample_every:
        raise ValueError(f"duration - burn_in = {duration - burn_in:g} leaves fewer than 3 "
                         f"samples every {sample_every:g}: nothing to take a variance of")
    tracked = _resolve_sites(mps, sites, "left")
    small = [j for j in tracked if min(core_spectrum(mps, j, variance=1.0).shape) < top_k]
    if small:
        raise ValueError(f"top_k = {top_k} exceeds the eigenvalues of sites {small}")

    streams = np.random.SeedSequence(seed).spawn(len(pairs) + len(controls))
    runs = []
    for i, (alpha, batch) in enumerate(pairs + controls):
        n_steps = _steps(duration, alpha, "duration")
        every = _steps(sample_every, alpha, "sample_every")

        def record(step, model):
            top = [core_spectrum(model, j, variance=1.0).eigenvalues[0, ::-1][:top_k]
                   for j in tracked]
            return {"dbm_top": np.array(top)}

        res = train(mps, phi, y, learning_rate=alpha, n_steps=n_steps, batch_size=batch,
                    reduction="mean", label_noise=label_noise, log_every=every,
                    callbacks=[record], seed=np.random.default_rng(streams[i]),
                    progress=progress)
        times = res.steps * alpha
        top = np.array([c["dbm_top"] for c in res.callbacks])
        keep = times >= burn_in - 1e-12 * duration
        raw_var = top[keep].var(axis=0, ddof=1)
        var = _detrended_variance(times[keep], top[keep], window) if detrend else raw_var
        runs.append(dict(alpha=alpha, batch_size=batch, ratio=alpha / batch,
                         control=i >= len(pairs), n_steps=n_steps, log_every=every,
                         variance=float(var.mean()),
                         normalized_variance=float(var.mean() / (alpha / batch)),
                         variance_by_site=var, raw_variance=float(raw_var.mean()),
                         mean_top=top[keep].mean(axis=0),
                         loss_mean=float(res.loss[keep].mean()), times=times, top=top))

    eq = np.array([r["normalized_variance"] for r in runs[:len(pairs)]])
    raw = np.array([r["variance"] for r in runs[:len(pairs)]])

    def spread(v):
        return float((v.max() - v.min()) / v.mean())

    ctrl = runs[len(pairs):]
    return DysonScaling(
        runs=runs,
        collapse_rel_spread=spread(eq),
        control_rel_spread=[spread(np.append(raw, r["variance"])) for r in ctrl],
        control_variance_ratio=[r["variance"] / raw.mean() for r in ctrl],
        control_ratio_predicted=[r["ratio"] / ratio for r in ctrl],
        sites=list(tracked),
        top_k=top_k,
    )
