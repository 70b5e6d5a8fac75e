"""Gradient-descent training of MPS models on the engine's forward pass and vjp.

Full-batch gradient descent or mini-batch SGD on the cores ``W_j`` with per-site rates
``eta * mps.site_lr[j]`` (the NTK parametrisation has rate 1 everywhere; the standard one
``1/sqrt(D_j D_{j+1})`` for core ``j`` of shape ``(phys_dim, D_j, D_{j+1})``).  Losses (theory
section 4):

* ``"mse"``: ``L = sum ||f - y||^2 / (2 s)`` with ``s = y.size`` (``reduction="mean"``, the
  neural-tangents convention) or ``s = 1`` (``"sum"``);
* ``"cross_entropy"``: softmax cross-entropy over the outputs of a label site;
* ``"born_nll"``: the Born-machine negative log-likelihood (data are one-hot configurations).

Outputs on a probe set, the loss, and optional callbacks are logged at chosen steps, so the real
trajectory can be compared with the kernel-regime predictions of :mod:`mpsntk.dynamics`.

Each loss is one small object (:class:`_Loss`): its data and targets, value, gradient (through
the cotangent ``dL/df`` for the losses of the outputs), probe outputs and stability check;
:func:`train` is the loop over them.  :func:`max_ntk_eigenvalue` lives with the other spectral
routines (``mpsntk._spectral``) and is importable from here as before.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from typing import NamedTuple

import numpy as np

from . import _checkpoint, born
from ._backend import as_array
from ._spectral import max_ntk_eigenvalue
from ._validate import (
    _check_bool,
    _check_choice,
    _check_int,
    _check_positive_float,
    _check_seed,
    _describe,
)
from .dynamics import _check_nonnegative_float
from .grad import vjp
from .mps import MPS

__all__ = ["TrainResult", "train", "max_ntk_eigenvalue"]

@dataclasses.dataclass
class TrainResult:
    """What :func:`train` logged.

    Attributes
    ----------
    mps : MPS
        The trained model (a new object; the input model is not modified).
    steps : ndarray of int, shape (n_logged,)
        Steps at which the state was logged (0 = before the first update).
    loss : ndarray, shape (n_logged,)
        Training loss (full training set) at the logged steps.
    probe_outputs : ndarray or None
        Model outputs on the probe set at the logged steps, shape (n_logged, n_probe[, C]).
    callbacks : list
        Whatever the callbacks returned, one list entry per logged step (dicts merged).
    """

    mps: MPS
    steps: np.ndarray
    loss: np.ndarray
    probe_outputs: np.ndarray | None
    callbacks: list


class _Batch(NamedTuple):
    """Training data, whole or one mini-batch: features, targets (None for the Born NLL) and
    configurations (the Born NLL's data, else None)."""

    phi: object
    y: object
    x: object

    def take(self, idx):
        return _Batch(*(None if a is None else a[idx] for a in self))


class _Loss:
    """A loss of :func:`train`: its data and targets, its value, its gradient with respect to
    the cores, its probe outputs, and the stability check of gradient descent on it.

    The losses of the outputs (MSE, cross-entropy) give the cotangent ``dL/df``, and the
    gradient is its vjp; the Born NLL has its own gradient (it involves ``log Z``).
    """

    name = None

    def __init__(self, reduction, feature_scale=None):
        if feature_scale is not None:
            raise ValueError(
                f"feature_scale applies to loss='born_nll' only (the one-hot scale of the "
                f"configurations); got feature_scale={_describe(feature_scale)} with "
                f"loss={self.name!r}"
            )
        self.reduction = reduction
        self.feature_scale = None

    def data(self, mps, phi, y):
        """The validated training data as a :class:`_Batch`."""
        phi = mps.check_features(phi)
        return _Batch(phi, self.check_targets(mps, phi, y, "y"), None)

    def check_probe(self, mps, probe):
        return mps.check_features(probe, "probe")

    def probe_outputs(self, model, probe):
        return model.forward(probe)

    def no_probe_outputs(self, model, probe):
        """The logged probe outputs when nothing is logged: length 0, their shape and dtype."""
        shape = (0, probe.shape[0]) + (() if model.output_site is None else (model.n_outputs,))
        return model.xp.empty(shape, dtype=model.dtype)

    def value(self, model, batch):
        return self.value_and_cotangent(model, batch)[0]

    def gradients(self, model, batch):
        return vjp(model, batch.phi, self.value_and_cotangent(model, batch)[1])

    def check_stability(self, mps, data, eta, batch_size, rng):
        """Nothing to check but for the MSE, whose kernel regime has a closed-form bound."""


class _MeanSquaredError(_Loss):
    """``L = sum ||f - y||^2 / (2 s)``, ``s = y.size`` ("mean") or 1 ("sum")."""

    name = "mse"

    @staticmethod
    def check_targets(mps, phi, y, name):
        if y is None:
            raise ValueError(f"{name} is required for loss='mse'")
        y = as_array(y, mps.xp)
        n = phi.shape[0]
        want = (n,) if mps.output_site is None else (n, mps.n_outputs)
        if y.dtype != mps.dtype:
            raise TypeError(
                f"{name} must be a real array of the model's dtype {mps.dtype.name} for "
                f"loss='mse'; got dtype {y.dtype} (convert explicitly, e.g. "
                f"{name}.astype(numpy.{mps.dtype.name}))"
            )
        if y.shape != want:
            raise ValueError(f"{name} must have shape {want} for loss='mse'; got {y.shape}")
        if not bool(mps.xp.all(mps.xp.isfinite(y))):
            raise ValueError(f"{name} must be finite; got NaN or Inf entries")
        return y

    def value_and_cotangent(self, model, batch):
        xp = model.xp  # NumPy, or CuPy for a model on the GPU: no host round trips
        f = model.forward(batch.phi)
        s = batch.y.size if self.reduction == "mean" else 1.0
        r = f - batch.y
        return 0.5 * float(xp.sum(r.astype(xp.float64) ** 2)) / s, (r / s).astype(model.dtype)

    def check_stability(self, mps, data, eta, batch_size, rng):
        """The kernel-regime condition ``eta * lambda_max(Theta_BB) / s < 2`` on the data of one
        update: the full training set (ValueError), or one random mini-batch (a sample, hence a
        warning)."""
        n = data.phi.shape[0]
        batch = data.phi if batch_size is None else data.phi[rng.permutation(n)[:batch_size]]
        lam = max_ntk_eigenvalue(mps, batch)
        outputs = 1 if data.y.ndim == 1 else data.y.shape[1]
        s = batch.shape[0] * outputs if self.reduction == "mean" else 1.0
        ratio = eta * lam / s
        if ratio >= 2.0:
            msg = (
                f"learning_rate = {eta} is unstable: eta * lambda_max(Theta_0) / s = "
                f"{ratio:.3g} >= 2 (lambda_max = {lam:.4g}, s = {s:g}); lower it below "
                f"{2 * s / lam:.4g}"
            )
            if batch_size is None:
                raise ValueError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)


class _CrossEntropy(_Loss):
    """Softmax cross-entropy over the outputs of a label site, summed or averaged over
    samples."""

    name = "cross_entropy"

    @staticmethod
    def check_targets(mps, phi, y, name):
        if y is None:
            raise ValueError(f"{name} is required for loss='cross_entropy'")
        y = as_array(y, mps.xp)
        n = phi.shape[0]
        if mps.output_site is None:
            raise ValueError("loss='cross_entropy' needs a model with a label site (n_outputs > 1)")
        if y.dtype.kind not in "iu":
            raise TypeError(
                f"{name} must be integer class labels of shape ({n},) for loss='cross_entropy'; "
                f"got dtype {y.dtype}"
            )
        if y.shape != (n,):
            raise ValueError(
                f"{name} must be integer class labels of shape ({n},) for loss='cross_entropy'; "
                f"got shape {y.shape}"
            )
        if y.min() < 0 or y.max() >= mps.n_outputs:
            raise ValueError(f"{name} must lie in 0..{mps.n_outputs - 1}")
        return y.astype(np.int64)

    def value_and_cotangent(self, model, batch):
        xp = model.xp
        f = model.forward(batch.phi).astype(xp.float64)
        p = _softmax(f, xp)
        m = f.shape[0]
        s = m if self.reduction == "mean" else 1.0
        rows = xp.arange(m)
        logp = xp.log(xp.clip(p[rows, batch.y], 1e-300, None))
        onehot = xp.zeros_like(p)
        onehot[rows, batch.y] = 1.0
        return -float(xp.sum(logp)) / s, ((p - onehot) / s).astype(model.dtype)


class _BornNLL(_Loss):
    """The Born-machine negative log-likelihood of configurations (:func:`mpsntk.born.nll`);
    its probe outputs are the probabilities ``p(x)``."""

    name = "born_nll"

    def __init__(self, reduction, feature_scale=None):
        self.reduction = reduction
        scale = 1.0 if feature_scale is None else feature_scale
        self.feature_scale = _check_positive_float(scale, "feature_scale")

    @staticmethod
    def check_targets(mps, phi, y, name):
        if y is not None:
            raise ValueError(f"{name} must be None for loss='born_nll' (the data are the inputs)")
        return None

    def data(self, mps, phi, y):
        x = born._as_configs(mps, phi, "phi")
        feats = born._features(mps, x, self.feature_scale)
        return _Batch(feats, self.check_targets(mps, feats, y, "y"), x)

    def check_probe(self, mps, probe):
        return born._as_configs(mps, probe, "probe")

    def probe_outputs(self, model, probe):
        return np.exp(born.log_probabilities(model, probe, self.feature_scale))

    def no_probe_outputs(self, model, probe):
        return np.empty((0, probe.shape[0]), dtype=np.float64)

    def value(self, model, batch):  # the NLL alone, without its gradient
        return born.nll(model, batch.x, self.feature_scale, self.reduction)

    def gradients(self, model, batch):
        return born.nll_grad(model, batch.x, self.feature_scale, self.reduction)[1]


_LOSSES = {cls.name: cls for cls in (_MeanSquaredError, _CrossEntropy, _BornNLL)}


def _softmax(z, xp):
    z = z - z.max(axis=1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_targets(kind, mps, phi, y, name):
    """The targets ``y`` of ``loss=kind`` for features ``phi``, validated."""
    return _LOSSES[kind].check_targets(mps, phi, y, name)


def train(
    mps,
    phi,
    y=None,
    *,
    loss="mse",
    learning_rate,
    n_steps,
    reduction="mean",
    batch_size=None,
    probe=None,
    log_every=1,
    log_steps=None,
    callbacks=(),
    seed=None,
    feature_scale=None,
    check_stability=True,
    progress=None,
    label_noise=0.0,
    checkpoint=None,
    checkpoint_every=None,
    resume=None,
):
    """Train an MPS by gradient descent and log its trajectory.

    Parameters
    ----------
    mps : MPS
        Initial model (not modified).
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Training features.  For ``loss="born_nll"`` pass the integer configurations
        ``(n_samples, n_sites)`` instead; they are one-hot encoded with ``feature_scale``.
    y : ndarray, optional
        Targets: for "mse" a float array of the model's dtype (float64 targets for a float32
        model raise ``TypeError``: convert them explicitly, nothing is cast silently) and shape
        (n_samples,) or (n_samples, n_outputs); integer labels (n_samples,) for
        "cross_entropy"; None for "born_nll".
    loss : {"mse", "cross_entropy", "born_nll"}
    learning_rate : float
        ``eta``; site ``j`` is updated with ``eta * mps.site_lr[j]``.
    n_steps : int
        Number of parameter updates.
    reduction : {"mean", "sum"}
        "mean": MSE over ``y.size`` (neural-tangents), cross-entropy and NLL over samples;
        "sum": plain sums (theory section 4 uses the sum form).
    batch_size : int, optional
        Mini-batch SGD (batches drawn without replacement, reshuffled every epoch); default
        full batch.
    probe : ndarray, optional
        Features (or configurations for "born_nll") on which outputs are logged; for Born
        machines the logged value is ``p(x)``.
    log_every : int
        Log every this many steps (ignored when ``log_steps`` is given).  Step 0 and the last
        step are always logged.
    log_steps : sequence of int, optional
        Explicit steps to log (in 0..n_steps; logged in increasing order, duplicates once).
        An empty sequence logs nothing: ``steps`` and ``loss`` are then empty and
        ``probe_outputs`` has a leading axis of length 0.
    callbacks : callable or sequence of callables
        ``cb(step, mps) -> dict | None`` called at the logged steps (diagnostics); a single
        callable is the same as a one-element list.  ``mps`` is a frozen copy of the model at
        that step: a new :class:`MPS` whose cores are copies (read-only on the host), so a
        callback may keep it -- it stays the model of that step -- and cannot alter the
        training.  One copy per logged step, shared by the callbacks.
    seed : None, int >= 0 or numpy.random.Generator
        Mini-batch order, label noise (and the mini-batch that the stability check samples).
        With ``resume``, the generator's state comes from the checkpoint.
    feature_scale : float, optional
        One-hot scale of the Born machine (``loss="born_nll"`` only; default 1.0).  Passing it
        with another loss is an error, as it would have no effect.
    check_stability : bool
        For full-batch MSE, estimate ``lambda_max`` of the NTK by power iteration and raise
        ValueError when ``eta * lambda_max / s >= 2`` (gradient descent would diverge in the
        kernel regime); for mini-batches, check one random batch and warn.
    progress : bool or None
        Show a tqdm progress bar (None, the default: when tqdm is installed, stderr is a
        terminal and ``n_steps >= 1000``).
    label_noise : float
        ``sigma >= 0`` (MSE only): every update fits ``y + sigma * xi`` with fresh standard
        normal ``xi`` of the targets' shape, drawn from the ``seed`` generator (label-noise SGD,
        whose gradient noise persists at a minimum; see :mod:`mpsntk.diagnostics`).  The logged
        loss is that of the clean targets.  Default 0: no noise, and no draws.
    checkpoint : str or os.PathLike, optional
        Write the state of the run to this file every ``checkpoint_every`` steps and after the
        last one: the model, the step, the random generator's state, the mini-batch order and
        position, the logged losses, probe outputs and callback values.  Each write is atomic
        (a temporary file renamed over the previous checkpoint), so a run killed at any moment
        leaves its last complete checkpoint.  The file is also an MPS file:
        ``MPS.load(checkpoint)`` reads the model at that step.
    checkpoint_every : int, optional
        Steps between checkpoints (required with ``checkpoint``).
    resume : str or os.PathLike, optional
        Continue the run that wrote this checkpoint, from its step: pass the same ``mps``
        (the initial model), data, probe, loss, learning rate, reduction, batch size and
        callbacks as that run; anything that differs (but the callbacks) is a ValueError.
        The result -- model, logged history -- is the same, bit for bit, as that of the run
        without the interruption, whatever the number of steps done before it.  ``n_steps``
        may be larger than the first run's (to train further).  The stability check is not
        repeated.  The callback values of the checkpoint are unpickled: resume only from
        checkpoints you trust.

    Returns
    -------
    TrainResult

    Raises
    ------
    FloatingPointError
        If the training diverges (the loss, the outputs or the cores leave the range of the
        dtype); the message names the step.
    """
    if not isinstance(mps, MPS):
        raise TypeError(f"mps must be an mpsntk.MPS; got {type(mps).__name__}")
    loss = _check_choice(loss, "loss", tuple(_LOSSES))
    reduction = _check_choice(reduction, "reduction", ("mean", "sum"))
    eta = _check_positive_float(learning_rate, "learning_rate")
    n_steps = _check_int(n_steps, "n_steps", 0)
    log_every = _check_int(log_every, "log_every", 1)
    check_stability = _check_bool(check_stability, "check_stability")
    if progress is not None:
        progress = _check_bool(progress, "progress")
    rng = _check_seed(seed)
    label_noise = _check_nonnegative_float(label_noise, "label_noise")
    if label_noise and loss != "mse":
        raise ValueError(f"label_noise applies to loss='mse' only; got loss={loss!r}")
    objective = _LOSSES[loss](reduction, feature_scale)
    callbacks = _as_callbacks(callbacks)
    if (checkpoint is None) != (checkpoint_every is None):
        raise ValueError(
            "checkpoint and checkpoint_every go together: pass both (the file and the number "
            "of steps between checkpoints) or neither"
        )
    if checkpoint_every is not None:
        checkpoint_every = _check_int(checkpoint_every, "checkpoint_every", 1)
    for name, value in (("checkpoint", checkpoint), ("resume", resume)):
        if value is not None and not isinstance(value, (str, bytes, os.PathLike)):
            raise TypeError(f"{name} must be a file path; got {_describe(value)}")
    data = objective.data(mps, phi, y)
    n = data.phi.shape[0]
    if batch_size is not None:
        batch_size = _check_int(batch_size, "batch_size", 1)
        if batch_size > n:
            raise ValueError(f"batch_size must be <= n_samples = {n}; got {batch_size}")
        if batch_size == n:
            batch_size = None
    if probe is not None:
        probe = objective.check_probe(mps, probe)
    logged = _logged_steps(log_steps, log_every, n_steps)

    cfg = None
    if checkpoint is not None or resume is not None:  # (digests of the data: one pass over it)
        cfg = _checkpoint.config(mps, data.phi, data.y, probe, loss=loss, reduction=reduction,
                                 learning_rate=eta, batch_size=batch_size,
                                 feature_scale=objective.feature_scale, label_noise=label_noise)
    if check_stability and resume is None:
        objective.check_stability(mps, data, eta, batch_size, rng)

    cores = [c.copy() for c in mps.cores]
    model = mps.with_cores(cores, copy=False)
    rates = [eta * r for r in mps.site_lr]
    steps, losses, probes, cb_out = [], [], [], []
    start, order, pos = 0, None, 0
    if resume is not None:
        state = _checkpoint.load(resume, cfg, rng, model.xp)
        start, order, pos = state["step"], state["order"], state["pos"]
        if start > n_steps:
            raise ValueError(
                f"n_steps must be >= the checkpoint's step {start} to resume; got {n_steps}"
            )
        for c, saved in zip(cores, state["cores"]):
            c[...] = model.xp.asarray(saved)
        steps, losses = state["steps"], state["losses"]
        probes, cb_out = state["probes"], state["callbacks"]
    elif batch_size:
        order = rng.permutation(n)

    def measure():
        value = objective.value(model, data)
        if not np.isfinite(value):
            raise FloatingPointError(f"the training loss is {value}")
        return value, None if probe is None else objective.probe_outputs(model, probe)

    def log(step):
        value, outputs = _diverged(measure, step, step > 0)
        steps.append(step)
        losses.append(value)
        if probe is not None:
            probes.append(outputs)
        merged = {}
        snapshot = _frozen_copy(model) if callbacks else None
        for j, cb in enumerate(callbacks):
            res = cb(step, snapshot)
            if res is None:
                continue
            if not isinstance(res, dict):
                raise TypeError(
                    f"callbacks[{j}] must return a dict or None; returned {_describe(res)} at "
                    f"step {step}"
                )
            merged.update(res)
        cb_out.append(merged)

    bar = _progress_bar(n_steps, progress, start)
    for step in range(start, n_steps + 1):
        if step in logged and not (resume is not None and step == start):  # logged before
            log(step)
        if checkpoint is not None and step > start and (
            step % checkpoint_every == 0 or step == n_steps
        ):
            _checkpoint.save(checkpoint, step=step, model=model, rng=rng, order=order, pos=pos,
                             steps=steps, losses=losses, probes=probes, callbacks=cb_out, cfg=cfg)
        if step == n_steps:
            break
        if batch_size:
            if pos + batch_size > n:
                order, pos = rng.permutation(n), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            batch = data.take(model.xp.asarray(idx))
        else:
            batch = data
        if label_noise:
            xi = rng.standard_normal(batch.y.shape).astype(model.dtype)
            batch = batch._replace(y=batch.y + label_noise * model.xp.asarray(xi))
        grads = _diverged(objective.gradients, step, step > 0, model, batch)
        for c, g, r in zip(cores, grads, rates):
            c -= r * g
        if not all(bool(model.xp.all(model.xp.isfinite(c))) for c in cores):
            raise FloatingPointError(
                f"training diverged at step {step + 1} (non-finite cores); lower learning_rate"
            )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if probe is None:
        probe_outputs = None
    elif probes:
        probe_outputs = model.xp.stack(probes)
    else:  # nothing logged: keep the shape and dtype of the logged values
        probe_outputs = objective.no_probe_outputs(model, probe)
    return TrainResult(
        mps=model,
        steps=np.asarray(steps, dtype=np.int64),
        loss=np.asarray(losses, dtype=np.float64),
        probe_outputs=probe_outputs,
        callbacks=cb_out,
    )


def _as_callbacks(callbacks):
    """``callbacks`` as a list of callables (a single callable is a one-element list)."""
    callbacks = [callbacks] if callable(callbacks) else callbacks
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(
            f"callbacks must be a callable or a sequence of callables; got {_describe(callbacks)}"
        )
    callbacks = list(callbacks)
    for j, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"callbacks[{j}] must be callable; got {_describe(cb)}")
    return callbacks


def _logged_steps(log_steps, log_every, n_steps):
    """The set of steps to log: ``log_steps``, or every ``log_every`` steps and the last."""
    if log_steps is None:
        return set(range(0, n_steps + 1, log_every)) | {n_steps}
    if isinstance(log_steps, (str, bytes)) or np.ndim(log_steps) != 1:
        raise TypeError(f"log_steps must be a 1-D sequence of integers; got {_describe(log_steps)}")
    logged = {_check_int(s, "log_steps entries", 0) for s in log_steps}
    if max(logged, default=0) > n_steps:
        raise ValueError(f"log_steps must be <= n_steps = {n_steps}")
    return logged


def _frozen_copy(model):
    """A copy of the model whose cores are read-only on the host (callbacks may keep it)."""
    snap = model.copy()
    if snap.xp is np:
        for c in snap.cores:
            c.flags.writeable = False
    return snap


def _diverged(fn, step, after_updates, *args):
    """``fn(*args)``; after updates, an overflow it reports (not an underflow) means that the
    training diverged: say so, rather than pass on advice for long chains."""
    if not after_updates:
        return fn(*args)
    try:
        return fn(*args)
    except FloatingPointError as exc:
        if "underflows" in str(exc):
            raise
        raise FloatingPointError(
            f"training diverged at step {step}: the loss, the outputs or the gradients left the "
            "range of the dtype; lower learning_rate"
        ) from exc


def _progress_bar(n_steps, progress, start=0):
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            warnings.warn(
                "progress=True needs tqdm (pip install tqdm)", RuntimeWarning, stacklevel=3
            )
        return None
    if progress is None and not (n_steps >= 1000 and sys.stderr.isatty()):
        return None
    return tqdm(total=n_steps, initial=start, desc="mpsntk.train")
