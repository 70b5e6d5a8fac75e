"""NTK tiles on Dask: distributed kernels, matrix-free products and out-of-core kernels.

Three ways past one machine's Gram matrix, all built from the products of
:mod:`mpsntk._blocks` on blocks of samples:

* :func:`ntk` -- the kernel ``Theta(X1, X2)`` as a ``dask.array`` whose blocks are engine tiles;
* :class:`ShardedNTK` -- ``Theta(X, X) v`` with the samples sharded over the workers, never
  forming the kernel: the operator that :func:`mpsntk.linalg.kernel_regression` (preconditioned
  conjugate gradients), :func:`mpsntk.linalg.nystrom_preconditioner` and
  :func:`mpsntk.linalg.top_eigenvalues` accept as they accept an ``NTKOperator``;
* :func:`ntk_to_zarr` and :func:`ntk_to_memmap` -- a kernel larger than memory written to disk
  tile by tile, with a progress bar, resumable after an interruption.

Every graph holds the model once (one task) and one task per block of samples that builds the
block's :class:`mpsntk._blocks.Batch`; every tile and product of that block reuses it, so what a
``Batch`` prepares (its environments) is prepared once per block, not once per tile.  Each
process that receives a block from another rebuilds its ``Batch`` once (a ``Batch`` travels as
its features, which are smaller than its environments).  The graphs run on any Dask scheduler:
the threaded one by default, ``dask.distributed`` when a ``Client`` is active (its workers may
be processes on other machines), and ``dask-cuda`` clusters for models on the GPU (one worker
per GPU; features and results are then CuPy arrays on each worker's device).

The engine multithreads each call (``mpsntk.set_num_threads``, or ``OMP_NUM_THREADS`` in the
workers' environment): give each Dask worker thread its share of the cores, not all of them
(``docs/scaling.md``).

Requires the ``dask`` extra (``pip install "mpsntk[dask]"``: dask[array,distributed], zarr).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import uuid
import weakref
from functools import partial

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph
    from dask.sizeof import sizeof
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "mpsntk.dask needs Dask: pip install \"mpsntk[dask]\" (or dask[array,distributed] and, "
        "for ntk_to_zarr, zarr>=3)"
    ) from exc

from . import _blocks
from ._engine import engine_for
from ._io import atomic_write
from ._validate import _check_bool, _check_choice, _check_int, _describe
from .linalg import _linear_operator, _vector_block
from .mps import MPS
from .ntk import _check_mps, _site_lr

__all__ = ["ShardedNTK", "ntk", "ntk_to_memmap", "ntk_to_zarr"]

_OUTPUTS = ("trace", "mean", "full")
_PRECISIONS = ("highest", "tf32")
_SHARD_BYTES = 2**30  # default bound on one shard's environments (ShardedNTK)


# --------------------------------------------------------------------------- blocks of samples
# _blocks' products need the two batches of a tile to share one MPS object.  Batches that arrive
# from other processes are rebuilt against the receiving process's one copy of the model, found
# by its content token.
_MODELS = weakref.WeakValueDictionary()
_MODELS_LOCK = threading.Lock()


def _intern(token, model):
    with _MODELS_LOCK:
        kept = _MODELS.get(token)
        if kept is None:
            _MODELS[token] = kept = model
        return kept


class _Shard:
    """One block of samples as a Dask task result: its features and its Batch.

    The Batch is built by the task that makes the block; a copy sent to another process (a
    worker fetching it, or spilling to disk) carries the features only and rebuilds the Batch
    there on first use, once per process.
    """

    def __init__(self, token, phi, model=None):
        self.token = token
        self.phi = phi
        self._lock = threading.Lock()
        self._batch = None if model is None else _blocks.Batch(_intern(token, model), phi)

    @property
    def n_samples(self):
        return int(self.phi.shape[0])

    def batch(self, model):
        with self._lock:
            if self._batch is None:
                self._batch = _blocks.Batch(_intern(self.token, model), self.phi)
            return self._batch

    def __reduce__(self):
        return (_Shard, (self.token, self.phi))


@sizeof.register(_Shard)
def _sizeof_shard(shard):
    return int(shard.phi.nbytes) + 1024


def _make_shard(model, phi, *, token):
    return _Shard(token, phi, model)


def _model_token(model):
    host = model.to_host() if model.xp is not np else model
    return tokenize(host.cores, model.scales, model.site_lr, model.boundary, model.output_site,
                    model.device)


def _snapshot(mps, site_weights):
    """A private copy of the model (later edits of ``mps`` cannot reach a graph), with the site
    weights in its per-site rates."""
    _check_mps(mps)
    mps.check_parameters()
    return MPS(mps.cores, mps.boundary, scales=mps.scales, site_lr=_site_lr(mps, site_weights),
               output_site=mps.output_site)


def _features(model, phi, name, rows):
    """``phi`` as a Dask array in blocks of ``rows`` samples, and a token of its content.

    In-memory features are validated whole here; a Dask array by its metadata (each block is
    validated when its task builds the Batch).
    """
    if isinstance(phi, da.Array):
        if phi.ndim != 3 or any(math.isnan(s) for s in phi.shape):
            raise ValueError(
                f"{name} must be a 3-D Dask array of known shape (n_samples, n_sites, phys_dim); "
                f"got shape {phi.shape}"
            )
        if phi.shape[1:] != (model.n_sites, model.phys_dim):
            raise ValueError(
                f"{name} must have shape (n_samples, {model.n_sites}, {model.phys_dim}) for this "
                f"MPS; got {phi.shape}"
            )
        if phi.dtype != model.dtype:
            raise TypeError(f"{name} has dtype {phi.dtype} but the MPS is {model.dtype}")
        if phi.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one sample; got shape {phi.shape}")
        host_meta = isinstance(phi._meta, np.ndarray) and not hasattr(
            phi._meta, "__cuda_array_interface__"
        )
        if host_meta != (model.xp is np):
            where = "the host" if host_meta else "a CUDA device"
            raise TypeError(
                f"{name}'s blocks live on {where} but the MPS cores do not; move one explicitly "
                "(phi.map_blocks(cupy.asarray), MPS.to_device / MPS.to_host)"
            )
        return phi.rechunk((rows, -1, -1)), phi.name
    phi = model.check_features(phi, name)
    token = tokenize(phi if model.xp is np else phi.get())
    arr = da.from_array(phi, chunks=(rows, -1, -1), asarray=False,
                        name=f"mpsntk-features-{tokenize(token, rows)}")
    return arr, token


class _Plan:
    """One Dask graph under construction: a task holding the model and one task per block of
    samples making its Batch."""

    def __init__(self, model):
        self.model = model
        self.token = _model_token(model)
        self.model_key = f"mpsntk-model-{self.token}"
        self.dsk = {self.model_key: model}
        self.deps = []

    def blocks(self, phi, name, rows):
        """Keys of the blocks of ``phi`` (``rows`` samples each), their offsets, and the
        features' token."""
        arr, token = _features(self.model, phi, name, rows)
        self.deps.append(arr)
        prefix = f"mpsntk-batch-{tokenize(self.token, arr.name)}"
        keys = []
        for i in range(arr.numblocks[0]):
            keys.append((prefix, i))
            self.dsk[keys[-1]] = (partial(_make_shard, token=self.token), self.model_key,
                                  (arr.name, i, 0, 0))
        return keys, np.cumsum((0,) + arr.chunks[0]), token

    def graph(self, name):
        return HighLevelGraph.from_collections(name, self.dsk, dependencies=self.deps)


# --------------------------------------------------------------------------- kernel tiles
def _kernel_options(model, outputs, per_site, precision):
    outputs = _check_choice(outputs, "outputs", _OUTPUTS)
    per_site = _check_bool(per_site, "per_site")
    precision = _check_choice(precision, "precision", _PRECISIONS)
    if precision == "tf32" and (model.xp is np or model.dtype != np.float32):
        raise ValueError("precision='tf32' needs a float32 model on a CUDA device")
    return dict(outputs=outputs, per_site=per_site, precision=precision)


def _tile_edges(tile, symmetric):
    """``(rows, cols)`` of a tile from an int or a pair."""
    if isinstance(tile, (tuple, list)):
        if len(tile) != 2:
            raise ValueError(f"tile must be an int or a pair (rows, cols); got {_describe(tile)}")
        t1, t2 = (_check_int(t, "tile", 1) for t in tile)
    else:
        t1 = t2 = _check_int(tile, "tile", 1)
    if symmetric and t1 != t2:
        raise ValueError(
            f"tile must be square for a symmetric kernel (phi2=None); got ({t1}, {t2})"
        )
    return t1, t2


class _Layout:
    """Where the sample axes sit in the kernel's shape, for ``per_site`` and full outputs."""

    def __init__(self, model, options, n1, n2):
        self.lead = (model.n_sites,) if options["per_site"] else ()
        full = options["outputs"] == "full" and model.n_outputs > 1
        self.trail = (model.n_outputs,) * 2 if full else ()
        self.shape = self.lead + (n1, n2) + self.trail
        k = len(self.lead)
        # The mirrored tile Theta(X_j, X_i) is the transpose of the sample axes (and output axes).
        axes = list(range(len(self.shape)))
        axes[k], axes[k + 1] = k + 1, k
        if self.trail:
            axes[-2], axes[-1] = axes[-1], axes[-2]
        self.mirror_axes = tuple(axes)

    def key(self, name, i, j):
        return (name,) + (0,) * len(self.lead) + (i, j) + (0,) * len(self.trail)

    def region(self, rows, cols):
        return (slice(None),) * len(self.lead) + (rows, cols) + (slice(None),) * len(self.trail)


def _tile(model, s1, s2, *, options):
    """The kernel tile of two blocks (``s2=None``: the symmetric tile of ``s1``)."""
    b1 = s1.batch(model)
    return _blocks.kernel_block(b1, None if s2 is None else s2.batch(model), **options)


def _mirror(block, *, axes):
    xp = _array_module(block)
    return xp.ascontiguousarray(xp.transpose(block, axes))


def _array_module(a):
    if isinstance(a, np.ndarray) and not hasattr(a, "__cuda_array_interface__"):
        return np
    import cupy

    return cupy


def _to_host(a):
    return a.get() if hasattr(a, "__cuda_array_interface__") else np.asarray(a)


def ntk(mps, phi1, phi2=None, *, tile=1024, outputs="trace", per_site=False, site_weights=None,
        precision="highest"):
    """The empirical NTK ``Theta(X1, X2)`` as a Dask array of engine tiles.

    Nothing is computed until the array is (``.compute()``, ``.to_zarr(...)``, slicing,
    reductions); each block is one call of the engine.  In the symmetric case (``phi2=None``)
    each off-diagonal tile is computed once, and its mirror is its transpose.  The features of
    each block of ``tile`` samples become one ``Batch`` task that every tile of that block
    reuses.

    Parameters
    ----------
    mps : MPS
        The model, on the host or on a CUDA device; the graph holds a copy of it taken now.
    phi1 : ndarray or dask.array.Array, shape (n1, n_sites, phys_dim)
        Features in the model's dtype, on the model's device (a Dask array may be larger than
        memory, e.g. ``dask.array.from_zarr``; it is rechunked to ``tile`` samples per block).
    phi2 : ndarray or dask.array.Array, shape (n2, n_sites, phys_dim), optional
        None for the symmetric ``Theta(X1, X1)``.
    tile : int or (int, int)
        Samples per block along the rows and the columns (square for ``phi2=None``).  A tile
        holds ``tile_rows * tile_cols`` kernel entries; the default 1024 is 8 MiB in float64.
    outputs, per_site, site_weights, precision
        As in :func:`mpsntk.ntk` (``per_site`` adds a leading ``n_sites`` axis, ``outputs="full"``
        two trailing ``n_outputs`` axes, each in one block).

    Returns
    -------
    dask.array.Array, shape (n1, n2), (n1, n2, C, C) or with a leading ``n_sites`` axis
        Blocks of ``tile_rows x tile_cols`` samples: NumPy arrays, or CuPy arrays for a model on
        a CUDA device.
    """
    model = _snapshot(mps, site_weights)
    options = _kernel_options(model, outputs, per_site, precision)
    symmetric = phi2 is None
    t1, t2 = _tile_edges(tile, symmetric)
    plan = _Plan(model)
    rows, rb, tok1 = plan.blocks(phi1, "phi1", t1)
    cols, cb, tok2 = (rows, rb, None) if symmetric else plan.blocks(phi2, "phi2", t2)
    layout = _Layout(model, options, int(rb[-1]), int(cb[-1]))
    name = "mpsntk-ntk-" + tokenize(plan.token, tok1, tok2, options, t1, t2)
    tile_fn = partial(_tile, options=options)
    mirror = partial(_mirror, axes=layout.mirror_axes)
    for i, ri in enumerate(rows):
        for j, cj in enumerate(cols):
            key = layout.key(name, i, j)
            if not symmetric or i < j:
                plan.dsk[key] = (tile_fn, plan.model_key, ri, cj)
            elif i == j:
                plan.dsk[key] = (tile_fn, plan.model_key, ri, None)
            else:
                plan.dsk[key] = (mirror, layout.key(name, j, i))
    chunks = tuple((s,) for s in layout.lead) + (tuple(np.diff(rb)), tuple(np.diff(cb)))
    chunks += tuple((s,) for s in layout.trail)
    meta = model.xp.empty((0,) * len(layout.shape), dtype=model.dtype)
    return da.Array(plan.graph(name), name, chunks=chunks, meta=meta)


# --------------------------------------------------------------------------- running graphs
def _client(scheduler):
    """The ``dask.distributed`` client that will run a graph, or None for a local scheduler."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - dask without distributed
        return None
    if isinstance(scheduler, Client):
        return scheduler
    if scheduler is not None:
        return None
    get = dask.base.get_scheduler()
    owner = getattr(get, "__self__", None)
    return owner if isinstance(owner, Client) else None


def _run(collection, progress, scheduler):
    """Compute ``collection`` with a progress bar (distributed's, or dask.diagnostics')."""
    client = _client(scheduler)
    if client is not None:
        future = client.compute(collection)
        if progress:
            from distributed import progress as distributed_progress

            distributed_progress(future)
        return future.result()
    if progress:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar()
    else:
        bar = contextlib.nullcontext()
    with bar:
        return dask.compute(collection, scheduler=scheduler)[0]


# --------------------------------------------------------------------------- out of core
def _store_tile(model, s1, s2, sink, i, j, *, options, mirror):
    """Compute one tile, write it (and its mirror) whole, then record it as done."""
    block = _to_host(_tile(model, s1, s2, options=options))
    sink.write(i, j, block, mirror)
    return 1


def _count(*done):
    return sum(done)


def _write_tiles(mps, phi1, phi2, sink_factory, tile, options, progress, scheduler,
                 site_weights):
    """The shared driver of ntk_to_zarr / ntk_to_memmap: plan the tiles, open (or resume) the
    sink, and run the tiles it does not hold yet."""
    model = _snapshot(mps, site_weights)
    options = _kernel_options(model, **options)
    symmetric = phi2 is None
    t1, t2 = _tile_edges(tile, symmetric)
    progress = _check_bool(progress, "progress")
    plan = _Plan(model)
    rows, rb, tok1 = plan.blocks(phi1, "phi1", t1)
    cols, cb, tok2 = (rows, rb, None) if symmetric else plan.blocks(phi2, "phi2", t2)
    layout = _Layout(model, options, int(rb[-1]), int(cb[-1]))
    fingerprint = tokenize(plan.token, tok1, tok2, options, t1, t2, np.dtype(model.dtype).str)
    sink = sink_factory(layout, rb, cb, (t1, t2), model.dtype, fingerprint, symmetric)
    done = sink.done()
    name = "mpsntk-store-" + tokenize(fingerprint, sink.token, done)
    writes = []
    for i, ri in enumerate(rows):
        for j, cj in enumerate(cols):
            if (symmetric and j < i) or done[i, j]:
                continue
            fn = partial(_store_tile, options=options, mirror=symmetric and i != j)
            writes.append((name, i, j))
            plan.dsk[writes[-1]] = (fn, plan.model_key, ri, None if symmetric and i == j else cj,
                                    sink, i, j)
    if writes:
        plan.dsk[name] = (_count,) + tuple(writes)
        _run(Delayed(name, plan.graph(name), layer=name), progress, scheduler)
    return sink


def _done_shape(rb, cb):
    return (len(rb) - 1, len(cb) - 1)


class _ZarrSink:
    """A kernel in a Zarr array, and beside it a record of the tiles written (one chunk per
    tile, written after the tile)."""

    def __init__(self, kernel, record, layout, rb, cb, symmetric):
        self.kernel, self.record = kernel, record
        self.layout, self.rb, self.cb, self.symmetric = layout, rb, cb, symmetric
        self.token = tokenize(str(kernel.store), kernel.path)

    def done(self):
        return np.asarray(self.record[...], dtype=bool)

    def write(self, i, j, block, mirror):
        r = slice(int(self.rb[i]), int(self.rb[i + 1]))
        c = slice(int(self.cb[j]), int(self.cb[j + 1]))
        self.kernel[self.layout.region(r, c)] = block
        if mirror:
            self.kernel[self.layout.region(c, r)] = np.transpose(block, self.layout.mirror_axes)
        self.record[i, j] = 1


def _write_unit(arr):
    """The shape of the pieces of a Zarr array that a write must cover whole: its shards when
    sharded, else its chunks."""
    shards = getattr(arr, "shards", None)
    return tuple(shards if shards is not None else arr.chunks)


def _check_alignment(unit, layout, tiles, what):
    """ValueError unless every tile covers whole ``unit`` pieces along the sample axes: two
    tasks writing parts of one chunk (or shard) lose data (zarr-developers/zarr-python#3682)."""
    k = len(layout.lead)
    for axis, (t, u, n) in enumerate(zip(tiles, unit[k:k + 2], layout.shape[k:k + 2])):
        if t % u and t < n:
            raise ValueError(
                f"tile {tiles} is not aligned with the {what} {unit} of the Zarr array: along "
                f"axis {k + axis} each tile of {t} samples must cover whole {what} of {u} "
                f"(tile a multiple of {u}); tasks writing parts of one {what[:-1]} would lose "
                "data"
            )


def ntk_to_zarr(mps, phi1, phi2=None, *, store, tile=1024, name="ntk", chunks=None, shards=None,
                overwrite=False, progress=True, scheduler=None, outputs="trace", per_site=False,
                site_weights=None, precision="highest"):
    """Write the NTK into a Zarr array, one task per tile, resumable after an interruption.

    Each task computes one tile and writes it whole -- whole Zarr chunks, or whole shards for a
    sharded array -- then records the tile as done in ``<name>_tiles`` (a small uint8 array with
    one chunk per tile).  Requests where a tile would cover part of a chunk or shard are refused
    (several tasks writing parts of one chunk lose data).  A call on a store that already holds
    this kernel (same model, features, options and tile, compared by content) resumes it: the
    tiles recorded as done are not recomputed, the others are (any partial write of an
    interrupted tile is overwritten whole), and the result is byte for byte the uninterrupted
    one.  Entries not yet written read as NaN (the array's fill value).

    Parameters
    ----------
    mps, phi1, phi2, outputs, per_site, site_weights, precision
        As in :func:`ntk`.
    store : str, os.PathLike, zarr store or zarr.Group
        Where the group holding the kernel lives (created if missing).  For a cluster, a store
        every worker can reach (a shared file system, an object store).
    tile : int or (int, int)
        Samples per tile along rows and columns (square when ``phi2`` is None).
    name : str
        Name of the kernel array in the group; the record is ``name + "_tiles"``.
    chunks, shards : tuple of int, optional
        Chunk (and shard) shape of a new kernel array; default: one chunk per tile, unsharded.
        Along the two sample axes each tile must cover whole shards (sharded) or chunks.
    overwrite : bool
        Start afresh even if the store holds this kernel, or another array named ``name``
        (which is otherwise refused).
    progress : bool
        Show a progress bar (dask's ``ProgressBar``, or ``distributed.progress`` on a cluster).
    scheduler : optional
        Passed to ``dask.compute`` (e.g. ``"threads"``, ``"synchronous"``, a ``Client``); by
        default the active ``distributed.Client``, else Dask's default.

    Returns
    -------
    zarr.Array
        The kernel, of shape (n1, n2) (or as in :func:`ntk`) and the model's dtype.
    """
    try:
        import zarr
    except ImportError as exc:
        raise ImportError(
            "ntk_to_zarr needs zarr>=3: pip install \"mpsntk[dask]\" (or zarr)"
        ) from exc
    if int(zarr.__version__.split(".")[0]) < 3:
        raise ImportError(f"ntk_to_zarr needs zarr>=3; found zarr {zarr.__version__}")
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty array name without '/'; got {name!r}")
    overwrite = _check_bool(overwrite, "overwrite")

    def open_sink(layout, rb, cb, tiles, dtype, fingerprint, symmetric):
        group = store if isinstance(store, zarr.Group) else zarr.open_group(store, mode="a")
        done_shape = _done_shape(rb, cb)
        kernel = group.get(name)
        if kernel is not None and not overwrite:
            meta = kernel.attrs.get("mpsntk", {}) if isinstance(kernel, zarr.Array) else {}
            if meta.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"the store already holds an array {name!r} that is not this kernel "
                    "(other model, features, options or tile); pass overwrite=True to replace "
                    "it, or another name"
                )
            for label, want, have in (("chunks", chunks, kernel.chunks),
                                      ("shards", shards, getattr(kernel, "shards", None))):
                if want is not None and tuple(want) != tuple(have or ()):
                    raise ValueError(
                        f"the stored kernel {name!r} has {label} {have}, not {tuple(want)}; pass "
                        "overwrite=True to rewrite it"
                    )
            record = group.get(name + "_tiles")
            if not isinstance(record, zarr.Array):
                raise ValueError(
                    f"the store holds the kernel {name!r} but not its record of finished tiles "
                    f"{name + '_tiles'!r}; pass overwrite=True to compute it again"
                )
        else:
            kchunks = layout.lead + tiles + layout.trail if chunks is None else tuple(chunks)
            kshards = None if shards is None else tuple(shards)
            for label, value in (("chunks", kchunks), ("shards", kshards)):
                if value is not None and len(value) != len(layout.shape):
                    raise ValueError(
                        f"{label} must have {len(layout.shape)} entries for a kernel of shape "
                        f"{layout.shape}; got {value}"
                    )
            _check_alignment(kshards or kchunks, layout, tiles,
                             "shards" if kshards else "chunks")
            # The record first: a kernel array with attributes always has its record.
            record = group.create_array(name + "_tiles", shape=done_shape, chunks=(1, 1),
                                        dtype="uint8", fill_value=0, overwrite=True,
                                        compressors=None)
            kernel = group.create_array(
                name, shape=layout.shape, chunks=kchunks, shards=kshards, dtype=dtype,
                fill_value=float("nan"), overwrite=True,
                attributes={"mpsntk": {"fingerprint": fingerprint, "tile": list(tiles)}},
            )
        if tuple(kernel.shape) != layout.shape or np.dtype(kernel.dtype) != np.dtype(dtype):
            raise ValueError(f"the stored kernel {name!r} has shape {kernel.shape} and dtype "
                             f"{kernel.dtype}; expected {layout.shape} and {np.dtype(dtype)}")
        if tuple(record.shape) != done_shape:
            raise ValueError(f"the record {name + '_tiles'!r} has shape {record.shape}; expected "
                             f"{done_shape}; pass overwrite=True")
        _check_alignment(_write_unit(kernel), layout, tiles,
                         "shards" if getattr(kernel, "shards", None) else "chunks")
        return _ZarrSink(kernel, record, layout, rb, cb, symmetric)

    options = dict(outputs=outputs, per_site=per_site, precision=precision)
    sink = _write_tiles(mps, phi1, phi2, open_sink, tile, options, progress, scheduler,
                        site_weights)
    return sink.kernel


class _MemmapSink:
    """A kernel in a ``.npy`` file written through memory maps of row bands, and a record of the
    tiles written (``<path>.tiles.npy``, one byte per tile, set after the tile is flushed)."""

    def __init__(self, path, record_path, layout, rb, cb, dtype, offset):
        self.path, self.record_path = path, record_path
        self.layout, self.rb, self.cb = layout, rb, cb
        self.dtype, self.offset = np.dtype(dtype), offset
        self.token = tokenize(os.path.realpath(path))

    def done(self):
        return np.load(self.record_path).astype(bool)

    def _put(self, r, c, block):
        """Write ``block`` at sample rows ``r``, columns ``c`` and flush it to the file."""
        shape = self.layout.shape
        if self.layout.lead:  # per_site: the sites are the slowest axis, map the whole file
            view = np.memmap(self.path, dtype=self.dtype, mode="r+", offset=self.offset,
                             shape=shape)
            view[self.layout.region(r, c)] = block
        else:  # a band of whole rows: a small mapping and a small msync
            row = int(np.prod(shape[1:])) * self.dtype.itemsize
            view = np.memmap(self.path, dtype=self.dtype, mode="r+", offset=self.offset + r.start
                             * row, shape=(r.stop - r.start,) + shape[1:])
            view[:, c] = block
        view.flush()
        del view

    def write(self, i, j, block, mirror):
        r = slice(int(self.rb[i]), int(self.rb[i + 1]))
        c = slice(int(self.cb[j]), int(self.cb[j + 1]))
        self._put(r, c, block)
        if mirror:
            self._put(c, r, np.transpose(block, self.layout.mirror_axes))
        record = np.load(self.record_path, mmap_mode="r+")
        record[i, j] = 1
        record.flush()
        del record


def _check_disk(path, nbytes):
    """ValueError when the file system of ``path`` lacks ``nbytes`` free (writes through a
    memory map into a full disk would kill the process with SIGBUS)."""
    import shutil

    folder = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(folder).free
    if os.path.exists(path):
        free += os.path.getsize(path)
    if nbytes > free:
        raise ValueError(
            f"a kernel of {nbytes / 2**30:.2f} GiB does not fit in the {free / 2**30:.2f} GiB "
            f"free on the file system of {folder}"
        )


def _npy_offset(path):
    """Bytes of the ``.npy`` header before the data."""
    return int(np.load(path, mmap_mode="r").offset)


def ntk_to_memmap(mps, phi1, phi2=None, *, path, tile=1024, overwrite=False, progress=True,
                  scheduler=None, outputs="trace", per_site=False, site_weights=None,
                  precision="highest"):
    """Write the NTK into a ``.npy`` file through memory maps, resumable after an interruption.

    Each task computes one tile, writes it (and in the symmetric case its mirror) into the file
    and flushes it, then sets the tile's byte in ``<path>.tiles.npy``.  A new file is first
    filled with NaN, so that entries not yet written read as NaN.  A call on a file that
    already holds this kernel (same model, features, options and tile, recorded in
    ``<path>.tiles.json``) resumes it: finished tiles are not recomputed, and the result is
    byte for byte the uninterrupted one.  The tasks must share the file: the threaded scheduler,
    or ``dask.distributed`` workers on one machine (for a cluster, use :func:`ntk_to_zarr`).

    Parameters
    ----------
    mps, phi1, phi2, tile, outputs, per_site, site_weights, precision
        As in :func:`ntk`.
    path : str or os.PathLike
        The ``.npy`` file (read it with ``numpy.load(path, mmap_mode="r")``).
    overwrite : bool
        Start afresh even if ``path`` holds this kernel or another file (otherwise refused).
    progress, scheduler
        As in :func:`ntk_to_zarr`.

    Returns
    -------
    numpy.memmap
        The kernel, opened read-only.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {_describe(path)}")
    path = os.fsdecode(os.fspath(path))
    overwrite = _check_bool(overwrite, "overwrite")
    record_path, meta_path = path + ".tiles.npy", path + ".tiles.json"

    def open_sink(layout, rb, cb, tiles, dtype, fingerprint, symmetric):
        done_shape = _done_shape(rb, cb)
        fresh = overwrite or not os.path.exists(path)
        if not fresh:
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                meta = {}
            if meta.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{path} exists and does not hold this kernel (other model, features, "
                    "options or tile, or not a kernel of mpsntk.dask); pass overwrite=True to "
                    "replace it"
                )
            try:
                kernel = np.load(path, mmap_mode="r")
                record = np.load(record_path, mmap_mode="r")
                # A creation that did not finish, or a lost record: start again.
                fresh = (kernel.shape != layout.shape or kernel.dtype != np.dtype(dtype)
                         or record.shape != done_shape)
                del kernel, record
            except (OSError, ValueError):
                fresh = True
        if fresh:
            nbytes = int(np.prod(layout.shape, dtype=np.float64)) * np.dtype(dtype).itemsize
            _check_disk(path, nbytes)
            meta = {"fingerprint": fingerprint, "tile": list(tiles), "shape": list(layout.shape),
                    "dtype": np.dtype(dtype).str}
            atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))
            np.save(record_path, np.zeros(done_shape, dtype=np.uint8))
            kernel = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=layout.shape)
            flat = kernel.reshape(-1)
            step = max(1, 2**26 // np.dtype(dtype).itemsize)  # NaN-fill 64 MiB at a time
            for start in range(0, flat.size, step):
                flat[start:start + step] = np.nan
            kernel.flush()
            del kernel, flat
        return _MemmapSink(path, record_path, layout, rb, cb, dtype, _npy_offset(path))

    options = dict(outputs=outputs, per_site=per_site, precision=precision)
    _write_tiles(mps, phi1, phi2, open_sink, tile, options, progress, scheduler, site_weights)
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------- sharded products
def _transpose_vp(model, shard, v):
    return _blocks.transpose_vp(shard.batch(model), v)


def _jacobian_vp(model, shard, grads):
    return _blocks.jacobian_vp(shard.batch(model), grads)


def _new_jacobian_vp(model, phi, grads, *, token):
    """``J g`` on samples that are not shards (one use: no Batch to keep)."""
    return _blocks.jacobian_vp(_blocks.Batch(_intern(token, model), phi), grads)


def _add_grads(*parts):
    """Sum per-core gradient lists left to right (a fixed order: the same bits every run)."""
    total = [g.copy() for g in parts[0]]
    for part in parts[1:]:
        for t, g in zip(total, part):
            t += g
    return total


def _tree_sum(dsk, name, keys, fan_in=8):
    """Add to ``dsk`` a tree reduction of the per-core gradient lists at ``keys``, ``fan_in`` at
    a time (depth log_8 of the shards); return the key of the sum."""
    level = 0
    while len(keys) > 1:
        keys = [_task(dsk, (f"{name}-sum{level}", k), _add_grads, *keys[k:k + fan_in])
                for k in range(0, len(keys), fan_in)]
        level += 1
    return keys[0]


def _task(dsk, key, fn, *args):
    dsk[key] = (fn,) + args
    return key


def _shard_diagonal(model, shard, *, block, full):
    """The diagonal of ``Theta`` over one shard, from symmetric tiles of ``block`` samples."""
    batch = shard.batch(model)
    xp = model.xp
    out = []
    for a in range(0, shard.n_samples, block):
        sub = _blocks.Batch(batch.mps, batch.phi[a:a + block])
        t = _blocks.kernel_block(sub, outputs="full" if full else "trace")
        d = xp.diagonal(t, axis1=0, axis2=1)  # (m,) or (C, C, m)
        out.append(xp.diagonal(d, axis1=0, axis2=1) if full else d)  # (m, C) or (m,)
    return xp.concatenate(out)


def _take_rows(shard, rows):
    return shard.phi[rows]


def _landmarks(model, order, *picks, token):
    """The chosen samples (gathered from their shards) as one block, in the caller's order."""
    xp = model.xp
    return _Shard(token, xp.ascontiguousarray(xp.concatenate(picks)[order]), model)


def _shard_columns(model, shard, landmarks):
    """The shard's rows of the columns of the landmarks, output-resolved and flat:
    (n_b * C, m * C), row ``i * C + l``, column ``p * C + l'``."""
    batch = shard.batch(model)
    if model.output_site is None:
        return _blocks.kernel_block(batch, landmarks.batch(model))
    tile = _blocks.kernel_block(batch, landmarks.batch(model), outputs="full")  # (n_b, m, C, C)
    n_b, m, C = tile.shape[0], tile.shape[1], tile.shape[2]
    return model.xp.ascontiguousarray(tile.transpose(0, 2, 1, 3)).reshape(n_b * C, m * C)


def _wait(persisted):
    """Wait until persisted collections are in the workers' memory (raising a task's error):
    the shards are built when the operator is, not during its first product."""
    client = _client(None)
    if client is not None:
        from distributed import futures_of, wait

        futures = futures_of(persisted)
        with client.as_current():
            wait(futures)
        for f in futures:
            if f.status == "error":
                f.result()


def _default_shard_size(model, n_samples):
    """Samples split evenly over the worker threads, in more shards where one shard's
    environments would exceed ``_SHARD_BYTES``."""
    client = _client(None)
    threads = sum(client.nthreads().values()) if client is not None else os.cpu_count() or 1
    held = engine_for(model).prepare_bytes(model, n_samples, held=True)  # C++'s footprint
    n_shards = max(threads, math.ceil(held / _SHARD_BYTES), 1)
    return max(1, math.ceil(n_samples / n_shards))


class ShardedNTK:
    """``Theta(X, X)`` as a matrix-free operator, the samples sharded over Dask workers.

    Each shard of samples becomes one ``Batch`` held by a worker (persisted: on a
    ``dask.distributed`` cluster the shards stay in the workers' memory, and a shard lost with
    its worker is rebuilt from its features by the scheduler).  A product
    ``Theta v = J diag(lambda) J^T v`` is one task per shard for ``diag(lambda) J_b^T v_b``
    (where its shard lives), a tree reduction of these per-core sums, and one task per shard
    for ``J_b g``: per product each shard moves ``O(n_params)`` numbers plus its part of ``v``
    and of the result, so the dataset and its environments may be far larger than one
    machine's memory; only vectors of length ``n_samples`` live on the caller.  The reduction
    has a fixed shape, so a product gives the same bits on every scheduler and every run.

    Kernel regression on it is :func:`mpsntk.linalg.kernel_regression` (a Nystrom or Jacobi
    preconditioner, several right-hand sides, warm starts, predictions), as on an
    ``NTKOperator``: the vectors and the preconditioner's factor live on the caller, every
    product, kernel column and prediction runs as a Dask graph.

    Parameters
    ----------
    mps : MPS
        The model, on the host or a CUDA device; the operator holds a copy taken now.
    phi : ndarray or dask.array.Array, shape (n_samples, n_sites, phys_dim)
        Features in the model's dtype, on the model's device; a Dask array (e.g.
        ``dask.array.from_zarr``) is never gathered on the caller.
    shard_size : int, optional
        Samples per shard.  Default: the samples split evenly over the worker threads (the
        active ``distributed.Client``'s, else this machine's cores), in more shards where one
        shard's environments would exceed 1 GiB.
    site_weights : float or array of shape (n_sites,), optional
        As in :func:`mpsntk.ntk`.

    Attributes
    ----------
    mps : MPS
        The operator's copy of the model (with ``site_weights`` in its per-site rates); it
        validates vectors and features, and editing it changes nothing on the workers.
    n_samples, n_outputs, n_shards, shard_size : int
    shape : (int, int)
        ``(n_samples * n_outputs,) * 2``: the operator on flattened vectors.
    dtype : numpy.dtype
    vector_shape : tuple
        ``(n_samples,)`` or ``(n_samples, n_outputs)``: the unflattened shape of a vector.
    n_products : int
        Number of ``Theta``-vector products computed so far (one per column), columns of
        ``Theta`` included.
    """

    def __init__(self, mps, phi, *, shard_size=None, site_weights=None):
        model = _snapshot(mps, site_weights)
        if shard_size is None:
            n = int(phi.shape[0]) if getattr(phi, "ndim", None) == 3 else 1
            shard_size = _default_shard_size(model, n)
        shard_size = _check_int(shard_size, "shard_size", 1)
        plan = _Plan(model)
        keys, bounds, _ = plan.blocks(phi, "phi", shard_size)
        layer = "mpsntk-shards-" + tokenize(plan.token, keys)
        graph = plan.graph(layer)
        persisted = dask.persist(*[Delayed(k, graph, layer=layer) for k in [plan.model_key] + keys])
        _wait(persisted)
        self._model, self._shards = persisted[0], list(persisted[1:])
        self.mps = model  # validates vectors and new features (a copy of the small model)
        self._token = plan.token
        self._bounds = [int(b) for b in bounds]
        self._xp = model.xp
        n = self._bounds[-1]
        self.vector_shape = (n,) if model.output_site is None else (n, model.n_outputs)
        self._diagonal = None
        self.n_samples = n
        self.n_outputs = model.n_outputs
        self.n_shards = len(keys)
        self.shard_size = shard_size
        self.dtype = np.dtype(model.dtype)
        self.shape = (self.n_samples * self.n_outputs,) * 2
        self.n_products = 0

    def __repr__(self):
        return (f"ShardedNTK(n_samples={self.n_samples}, n_outputs={self.n_outputs}, "
                f"n_shards={self.n_shards}, dtype={self.dtype.name})")

    def close(self):
        """Release the shards (the workers' memory); the operator cannot be used afterwards."""
        self._shards, self._model, self._diagonal = [], None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_open(self):
        if self._model is None:
            raise ValueError("this ShardedNTK is closed")

    def _check_device(self, v, name):
        if not hasattr(v, "shape") or not hasattr(v, "dtype"):
            raise TypeError(f"{name} must be an array; got {_describe(v)}")
        if (_array_module(v) is np) != (self._xp is np):
            where = "the host" if self._xp is np else "the model's CUDA device"
            raise TypeError(f"{name} must live on {where}, as the model does")

    def _as_vector(self, v, name):
        """``v`` as an array of shape ``vector_shape`` (a flattened one is accepted)."""
        xp = self._xp
        self._check_device(v, name)
        if v.dtype != self.dtype:
            raise TypeError(f"{name} must have dtype {self.dtype}; got {v.dtype}")
        if tuple(v.shape) not in (self.vector_shape, (self.shape[0],)):
            raise ValueError(
                f"{name} must have shape {self.vector_shape} (or ({self.shape[0]},) flattened); "
                f"got {tuple(v.shape)}"
            )
        if not bool(xp.all(xp.isfinite(v))):
            raise ValueError(f"{name} must be finite; got NaN or Inf entries")
        return v.reshape(self.vector_shape)

    def _as_block(self, v, name):
        """``v`` of shape ``vector_shape``, or with a trailing axis of columns: the array with a
        trailing column axis, and whether it had one."""
        self._check_device(v, name)
        return _vector_block(self.mps, self.n_samples, v, name)

    def _compute(self, name, dsk, keys, extra=()):
        """Run the tasks ``dsk`` (which read the persisted model and shards) for ``keys``."""
        graph = HighLevelGraph.from_collections(
            name, dsk, dependencies=[self._model, *self._shards, *extra]
        )
        return dask.compute(*[Delayed(k, graph, layer=name) for k in keys])

    def _gradient(self, dsk, name, v):
        """Tasks for ``diag(lambda) J^T v`` summed over the shards; the key of the sum."""
        model = self._model.key
        parts = [_task(dsk, (f"{name}-jtv", b), _transpose_vp, model, s.key, v[a:e])
                 for b, (s, a, e) in enumerate(zip(self._shards, self._bounds, self._bounds[1:]))]
        return _tree_sum(dsk, name, parts)

    def _products(self, kind, V, targets, extra=()):
        """``Theta(X_t, X) V`` for V of shape vector_shape + (k,), all columns in one graph:
        ``targets`` lists ``(fn, key)`` with ``fn(model, block, g)`` the ``J g`` of one block
        of the rows; returns (rows...) + (k,)."""
        xp, k = self._xp, V.shape[-1]
        name, dsk = f"mpsntk-{kind}-{uuid.uuid4().hex}", {}
        keys = []
        for c in range(k):
            g = self._gradient(dsk, f"{name}-{c}", xp.ascontiguousarray(V[..., c]))
            keys += [_task(dsk, (f"{name}-{c}-jg", b), fn, self._model.key, key, g)
                     for b, (fn, key) in enumerate(targets)]
        parts = self._compute(name, dsk, keys, extra)
        t = len(targets)
        return xp.stack([xp.concatenate(parts[c * t:(c + 1) * t]) for c in range(k)], axis=-1)

    def apply(self, v):
        """``Theta v`` on unflattened vectors, several columns in one graph.

        Parameters
        ----------
        v : ndarray, shape (n_samples,) or (n_samples, n_outputs), or with a trailing axis of
            ``k`` columns
            In the model's dtype, on its device.

        Returns
        -------
        ndarray of the shape of ``v``
        """
        self._check_open()
        V, multi = self._as_block(v, "v")
        out = self._products("apply", V, [(_jacobian_vp, s.key) for s in self._shards])
        self.n_products += V.shape[-1]
        return out if multi else out[..., 0]

    def matvec(self, v):
        """``Theta(X, X) v`` for one vector.

        Parameters
        ----------
        v : ndarray, shape (n_samples,), or (n_samples, n_outputs) for multi-output models
            In the model's dtype, on its device; a vector flattened to ``(shape[0],)`` is
            accepted too.

        Returns
        -------
        ndarray of the shape of ``v``
        """
        self._check_open()
        shape = tuple(v.shape) if hasattr(v, "shape") else None
        return self.apply(self._as_vector(v, "v")).reshape(shape)

    def cross_matvec(self, phi, v, *, block_size=None):
        """``Theta(X_new, X) v`` for other samples, without forming the kernel: the predictions
        ``Theta(X_new, X) alpha`` of kernel regression.

        Parameters
        ----------
        phi : ndarray or dask.array.Array, shape (n_new, n_sites, phys_dim)
        v : ndarray, shape ``vector_shape``, or with a trailing axis of columns
        block_size : int, optional
            Samples of ``phi`` per task (default: the shard size).

        Returns
        -------
        ndarray, shape (n_new,) + v.shape[1:]
        """
        self._check_open()
        V, multi = self._as_block(v, "v")
        rows = _check_int(self.shard_size if block_size is None else block_size, "block_size", 1)
        arr, _ = _features(self.mps, phi, "phi", rows)
        fn = partial(_new_jacobian_vp, token=self._token)
        targets = [(fn, (arr.name, b, 0, 0)) for b in range(arr.numblocks[0])]
        out = self._products("cross", V, targets, extra=[arr])
        return out if multi else out[..., 0]

    def columns(self, samples):
        """Columns ``Theta(X, X[samples])`` as a flat matrix (the pivots of a Nystrom
        preconditioner), one tile per shard, as :meth:`mpsntk.linalg.NTKOperator.columns`.

        Parameters
        ----------
        samples : array of int, shape (m,)
            Sample indices.

        Returns
        -------
        ndarray, shape (n_samples * n_outputs, m * n_outputs)
            Column ``i * n_outputs + l`` is the operator's column of sample ``samples[i]``,
            output ``l`` (the output-resolved kernel; ``mpsntk.ntk(mps, phi, phi[samples])``
            for scalar models).
        """
        self._check_open()
        idx = np.asarray(samples)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ValueError(
                f"samples must be a non-empty 1-D integer array; got {_describe(samples)}"
            )
        if idx.min() < 0 or idx.max() >= self.n_samples:
            raise ValueError(
                f"samples must lie in [0, {self.n_samples}); got min {idx.min()}, max {idx.max()}"
            )
        # The chosen samples, gathered from their shards, then put back in the caller's order.
        name, dsk = f"mpsntk-columns-{uuid.uuid4().hex}", {}
        owner = np.searchsorted(self._bounds, idx, side="right") - 1
        order = np.argsort(np.argsort(owner, kind="stable"), kind="stable")
        picks = [_task(dsk, (f"{name}-pick", k), _take_rows, s.key, idx[owner == k] - a)
                 for k, (s, a) in enumerate(zip(self._shards, self._bounds)) if np.any(owner == k)]
        landmarks = _task(dsk, f"{name}-landmarks", partial(_landmarks, token=self._token),
                          self._model.key, order, *picks)
        keys = [_task(dsk, (f"{name}-tile", b), _shard_columns, self._model.key, s.key, landmarks)
                for b, s in enumerate(self._shards)]
        self.n_products += idx.size * self.n_outputs
        return self._xp.concatenate(self._compute(name, dsk, keys))

    def diagonal(self, *, block=64):
        """The diagonal of ``Theta``, shape (n_samples,) or (n_samples, n_outputs) (the
        output-resolved ``Theta_ll(x, x)``): symmetric tiles of ``block`` samples along it
        (about the cost of a few products), computed once, then cached."""
        self._check_open()
        if self._diagonal is None:
            fn = partial(_shard_diagonal, block=_check_int(block, "block", 1),
                         full=self.vector_shape != (self.n_samples,))
            name, dsk = f"mpsntk-diagonal-{uuid.uuid4().hex}", {}
            keys = [_task(dsk, (name, b), fn, self._model.key, s.key)
                    for b, s in enumerate(self._shards)]
            self._diagonal = self._xp.concatenate(self._compute(name, dsk, keys))
        return self._diagonal.copy()

    def aslinearoperator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (``cupyx``'s for device models) on
        flattened vectors; its ``matmat`` runs all columns in one graph (needs SciPy)."""
        self._check_open()
        return _linear_operator(self)
