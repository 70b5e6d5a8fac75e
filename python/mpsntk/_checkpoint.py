"""Checkpoints of :func:`mpsntk.train`: the whole state of a run between two updates, written
atomically, so that a run killed at any moment resumes from its last checkpoint and ends
exactly (bit for bit) where the uninterrupted run would have.

A checkpoint is an ``.npz`` file that is also an MPS file (:meth:`mpsntk.MPS.load` reads the
model at the checkpoint's step from it), plus:

* ``train_step``: the number of updates done;
* ``train_config``: JSON of what the run must share with a resumed one (loss, reduction,
  learning rate, batch size, feature scale, the model's structure) and SHA-256 digests of the
  initial cores, the training data and the probe set;
* ``train_rng``: JSON of the random generator's state; ``train_order``, ``train_pos``: the
  current epoch's sample order and position in it (mini-batches);
* ``train_steps``, ``train_loss``, ``train_probe``: the logged history;
* ``train_callbacks``: the callbacks' logged values, pickled (they are arbitrary objects).
  Resuming unpickles them: resume only from checkpoints you trust, as with any pickle.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import zipfile
import zlib

import numpy as np

from ._io import atomic_write

_VERSION = 1


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(_host(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def config(mps, feats, y, probe, *, loss, reduction, learning_rate, batch_size, feature_scale,
           label_noise=0.0):
    """What a run and its resumption must share (JSON-able)."""
    return {
        "label_noise": float(label_noise).hex(),
        "loss": loss,
        "reduction": reduction,
        "learning_rate": float(learning_rate).hex(),
        "batch_size": batch_size,
        "feature_scale": None if feature_scale is None else float(feature_scale).hex(),
        "model": repr(mps),
        "bond_dims": list(mps.bond_dims),
        "scales": _digest(mps.scales, mps.site_lr),
        "initial_cores": _digest(*mps.cores),
        "data": _digest(feats, y),
        "probe": _digest(probe),
    }


def _rng_state(rng):
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, np.ndarray):
            return {"__ndarray__": v.tolist(), "dtype": v.dtype.str}
        if isinstance(v, np.generic):
            return v.item()
        return v

    return json.dumps(plain(rng.bit_generator.state))


def _set_rng_state(rng, text):
    def arrays(v):
        if isinstance(v, dict):
            if "__ndarray__" in v:
                return np.array(v["__ndarray__"], dtype=v["dtype"])
            return {k: arrays(x) for k, x in v.items()}
        return v

    state = arrays(json.loads(text))
    if state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(
            f"the checkpoint's random generator is a {state.get('bit_generator')}, but seed "
            f"gives a {type(rng.bit_generator).__name__}"
        )
    rng.bit_generator.state = state


def save(path, *, step, model, rng, order, pos, steps, losses, probes, callbacks, cfg):
    """Write the checkpoint of a run after ``step`` updates (atomically)."""
    data = model._arrays()
    data.update(
        train_version=np.array(_VERSION),
        train_step=np.array(step),
        train_config=np.array(json.dumps(cfg, sort_keys=True)),
        train_rng=np.array(_rng_state(rng)),
        train_order=np.zeros(0, np.int64) if order is None else _host(order).astype(np.int64),
        train_pos=np.array(pos),
        train_steps=np.asarray(steps, dtype=np.int64),
        train_loss=np.asarray(losses, dtype=np.float64),
        train_callbacks=np.frombuffer(pickle.dumps(callbacks), dtype=np.uint8),
    )
    if probes:
        data["train_probe"] = np.stack([_host(p) for p in probes])
    atomic_write(path, lambda f: np.savez(f, **data))


def load(path, cfg, rng, xp):
    """Read a checkpoint for a run with configuration ``cfg``; restores ``rng`` in place.

    Returns a dict: ``step``, ``cores`` (host arrays), ``order`` (or None), ``pos``, ``steps``,
    ``losses``, ``probes`` (list of ``xp`` arrays), ``callbacks``.
    """
    path = os.fsdecode(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "resume: no checkpoint file", path)
    not_ours = f"resume: {path} is not an mpsntk training checkpoint"
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{not_ours} ({exc})") from exc
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(not_ours)
    try:
        with f:
            if "train_version" not in f or int(f["train_version"]) != _VERSION:
                raise ValueError(not_ours)
            saved = json.loads(str(f["train_config"]))
            diff = sorted(k for k in set(cfg) | set(saved) if cfg.get(k) != saved.get(k))
            if diff:
                raise ValueError(
                    f"resume: {path} was written by a run with other {', '.join(diff)}; pass "
                    "the model, data and settings the checkpointed run was started with"
                )
            n = int(f["n_sites"])
            out = {
                "step": int(f["train_step"]),
                "cores": [f[f"core_{j}"] for j in range(n)],
                "order": f["train_order"] if f["train_order"].size else None,
                "pos": int(f["train_pos"]),
                "steps": f["train_steps"].tolist(),
                "losses": f["train_loss"].tolist(),
                "probes": [xp.asarray(p) for p in f["train_probe"]] if "train_probe" in f else [],
                "callbacks": pickle.loads(f["train_callbacks"].tobytes()),
            }
            _set_rng_state(rng, str(f["train_rng"]))
    except (KeyError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError) as exc:
        raise ValueError(f"resume: {path} is a corrupt training checkpoint ({exc})") from exc
    return out
