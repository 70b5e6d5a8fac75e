"""NTK tiles on Dask (mpsntk.dask): every result against the in-memory engine (mn.ntk, mn.ntk_vp)
or a dense solve (mpsntk.linalg's kernel regression on the sharded operator), on the threaded
scheduler and on a LocalCluster of 2 worker processes; a worker killed mid-run; out-of-core
kernels interrupted and resumed, byte for byte.

Tiles are compared bit for bit with ``mn.ntk``: every kernel entry is the engine's sum over the
sites of one pair of samples, from environments computed per sample, whatever tile holds it,
and a mirrored tile is a transposed copy, as in the engine's own symmetric path.  Products
``Theta v`` sum the per-shard ``J^T v`` in another order than the in-process ``ntk_vp``: they
agree to 1e-12 (relative), and bit for bit across schedulers (the reduction tree is fixed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _blocks, linalg

from conftest import random_features, random_model, relerr


@pytest.fixture(scope="module")
def md():
    pytest.importorskip("dask.array")
    return pytest.importorskip("mpsntk.dask")


@pytest.fixture(scope="module")
def cluster(md):
    """One LocalCluster for the module: 2 worker processes, 1 thread each (1 engine thread)."""
    distributed = pytest.importorskip("distributed")
    import cloudpickle  # the workers cannot import this module: send its functions by value

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, env={"OMP_NUM_THREADS": "1"}) as c:
        yield c


@pytest.fixture
def zarr():
    return pytest.importorskip("zarr", minversion="3")


def problem(n=50, n_sites=8, bond_dim=5, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return mn.MPS.random(n_sites, bond_dim, seed=seed + 1, **kw), random_features(rng, n, n_sites)


class Counting:
    """Counts the calls of a function of ``_blocks`` (the engine's tiles), or the Batches made."""

    def __init__(self, monkeypatch, name):
        self.calls = 0
        inner = getattr(_blocks, name)
        counter = self

        if isinstance(inner, type):
            class Counted(inner):
                def __init__(self, *args, **kwargs):
                    counter.calls += 1
                    super().__init__(*args, **kwargs)

            monkeypatch.setattr(_blocks, name, Counted)
        else:
            def counted(*args, **kwargs):
                counter.calls += 1
                return inner(*args, **kwargs)

            monkeypatch.setattr(_blocks, name, counted)


def tree_bytes(root):
    """{relative path: bytes} of every file under ``root``."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# --------------------------------------------------------------------------- tiles in memory
@pytest.mark.parametrize("boundary", ["open", "periodic"])
@pytest.mark.parametrize("tile", [7, 16, 64])
def test_tiles_equal_the_in_memory_kernel_bit_for_bit(md, boundary, tile):
    rng = np.random.default_rng(1)
    bonds = [1, 3, 5, 4, 2, 1] if boundary == "open" else [3, 3, 5, 4, 2, 3]
    mps = random_model(rng, bonds, boundary=boundary)
    x1, x2 = random_features(rng, 37, 5), random_features(rng, 22, 5)
    sym = md.ntk(mps, x1, tile=tile)
    assert sym.shape == (37, 37) and sym.chunks[0] == sym.chunks[1]
    assert all(c <= tile for c in sym.chunks[0]) and sum(sym.chunks[0]) == 37
    assert type(sym.blocks[0, 0].compute()) is np.ndarray
    assert np.array_equal(sym.compute(scheduler="threads"), mn.ntk(mps, x1))
    cross = md.ntk(mps, x1, x2, tile=(tile, 5))
    assert cross.chunks[1][0] == 5
    assert np.array_equal(cross.compute(), mn.ntk(mps, x1, x2))


@pytest.mark.parametrize("options", [dict(outputs="full"), dict(outputs="mean"),
                                     dict(per_site=True), dict(per_site=True, outputs="full")])
def test_options_and_site_weights_as_in_the_engine(md, options):
    rng = np.random.default_rng(2)
    mps = random_model(rng, [1, 3, 4, 3, 2, 1], output_site=2, n_outputs=3)
    x1, x2 = random_features(rng, 19, 5), random_features(rng, 11, 5)
    w = rng.uniform(0.1, 2.0, 5)
    for phi2 in (None, x2):
        got = md.ntk(mps, x1, phi2, tile=6, site_weights=w, **options).compute()
        assert np.array_equal(got, mn.ntk(mps, x1, phi2, site_weights=w, **options))


def test_float32_and_every_instruction_set(md, isa):
    mps, phi = problem(n=30, dtype=np.float32)
    phi = phi.astype(np.float32)
    got = md.ntk(mps, phi, tile=8).compute()
    assert got.dtype == np.float32 and np.array_equal(got, mn.ntk(mps, phi))


def test_symmetric_kernel_computes_each_tile_once_and_each_batch_once(md, monkeypatch):
    mps, phi = problem(n=50)
    tiles, batches = Counting(monkeypatch, "kernel_block"), Counting(monkeypatch, "Batch")
    got = md.ntk(mps, phi, tile=16).compute(scheduler="threads")  # 4 x 4 tiles
    assert tiles.calls == 4 * 5 // 2 and batches.calls == 4
    assert np.array_equal(got, mn.ntk(mps, phi))
    tiles.calls = batches.calls = 0
    x2 = random_features(np.random.default_rng(3), 20, 8)
    md.ntk(mps, phi, x2, tile=(16, 10)).compute(scheduler="threads")  # 4 x 2 tiles
    assert tiles.calls == 8 and batches.calls == 4 + 2


def test_dask_array_features_and_a_later_edit_of_the_model(md):
    da = pytest.importorskip("dask.array")
    mps, phi = problem(n=41)
    want = mn.ntk(mps, phi)
    lazy = md.ntk(mps, da.from_array(phi, chunks=(9, 8, 2)), tile=12)
    mps.cores[0][...] = 0.0  # the graph holds the model as it was
    assert np.array_equal(lazy.compute(), want)


# --------------------------------------------------------------------------- sharded products
def test_sharded_products_columns_diagonal_and_kernel_regression(md):
    mps, phi = problem(n=60)
    theta = mn.ntk(mps, phi)
    rng = np.random.default_rng(4)
    v = rng.standard_normal(60)
    with md.ShardedNTK(mps, phi, shard_size=13) as op:
        assert op.n_shards == 5 and op.shape == (60, 60) and op.vector_shape == (60,)
        assert relerr(op.matvec(v), mn.ntk_vp(mps, phi, v)) < 1e-12
        assert relerr(op.matvec(v), theta @ v) < 1e-12
        V = rng.standard_normal((60, 3))
        before = op.n_products
        AV = op.apply(V)  # three columns in one graph
        assert op.n_products == before + 3
        assert relerr(AV, theta @ V) < 1e-12 and np.array_equal(AV[:, 1], op.matvec(V[:, 1]))
        idx = np.array([41, 3, 59, 12, 13])
        assert np.array_equal(op.columns(idx), mn.ntk(mps, phi, phi[idx]))
        assert np.array_equal(op.diagonal(), np.diag(theta))
        x_new = random_features(rng, 9, 8)
        assert relerr(op.cross_matvec(x_new, v), mn.ntk(mps, x_new, phi) @ v) < 1e-12
        assert relerr(op.cross_matvec(x_new, V), mn.ntk(mps, x_new, phi) @ V) < 1e-12
        ridge = 1e-3 * np.linalg.eigvalsh(theta)[-1]
        want = np.linalg.solve(theta + ridge * np.eye(60), v)
        for pc in ("nystrom", "jacobi", None):
            seen = []
            res = linalg.kernel_regression(op, v, ridge, rtol=1e-10, maxiter=500, rank=20,
                                           preconditioner=pc, callback=lambda k, r, s=seen:
                                           s.append(r))
            assert res.converged and res.residual <= 1e-10 and res.n_iter < 200
            assert res.residual_history[0] == 1.0 and res.residual_history[-1] <= 1e-10
            assert res.residual_history.shape == (res.n_iter + 1,)
            assert seen[-1] == res.residual_history[-1]
            assert res.n_products == res.setup_products + res.n_iter + 1
            assert relerr(res.alpha, want) < 1e-7
            assert relerr(res.predict(x_new), mn.ntk(mps, x_new, phi) @ want) < 1e-7
        with pytest.warns(linalg.ConvergenceWarning, match="did not converge"):
            short = linalg.kernel_regression(op, v, ridge, rtol=1e-10, preconditioner=None,
                                             maxiter=3)
        assert not short.converged and short.n_iter == 3
        warm = linalg.kernel_regression(op, v, ridge, rtol=1e-10, preconditioner=None,
                                        x0=short.alpha)
        assert warm.residual_history[0] == pytest.approx(short.residual, rel=1e-6)
        assert warm.converged and relerr(warm.alpha, want) < 1e-7
        Y = np.stack([v, theta @ v], axis=1)  # two right-hand sides together
        both = linalg.kernel_regression(op, Y, ridge, rtol=1e-10, rank=20)
        assert both.converged and relerr(both.alpha[:, 0], want) < 1e-7
        assert relerr(both.alpha, np.linalg.solve(theta + ridge * np.eye(60), Y)) < 1e-7
    with pytest.raises(ValueError, match="closed"):
        op.matvec(v)
    with pytest.raises(ValueError, match="closed"):
        linalg.kernel_regression(op, v, ridge)


def test_sharded_products_of_a_multi_output_model_and_scipy(md):
    rng = np.random.default_rng(5)
    mps = random_model(rng, [1, 3, 4, 3, 2, 1], output_site=3, n_outputs=2)
    phi = random_features(rng, 24, 5)
    full = mn.ntk(mps, phi, outputs="full")  # (24, 24, 2, 2)
    dense = full.transpose(0, 2, 1, 3).reshape(48, 48)
    v = rng.standard_normal((24, 2))
    op = md.ShardedNTK(mps, phi, shard_size=7)
    assert op.shape == (48, 48) and op.vector_shape == (24, 2)
    assert relerr(op.matvec(v), mn.ntk_vp(mps, phi, v)) < 1e-12
    assert relerr(op.matvec(v.reshape(-1)), dense @ v.reshape(-1)) < 1e-12
    V = rng.standard_normal((24, 2, 3))
    assert relerr(op.apply(V).reshape(48, 3), dense @ V.reshape(48, 3)) < 1e-12
    assert np.array_equal(op.diagonal(), np.einsum("iill->il", full))
    idx = np.array([20, 2, 9])
    cols = (idx[:, None] * 2 + np.arange(2)).reshape(-1)  # sample-major, as the vectors
    assert relerr(op.columns(idx), dense[:, cols]) < 1e-13
    ridge = 1e-3 * np.linalg.eigvalsh(dense)[-1]
    want = np.linalg.solve(dense + ridge * np.eye(48), v.reshape(-1))
    for pc in ("nystrom", "jacobi"):
        res = linalg.kernel_regression(op, v, ridge, rtol=1e-11, rank=16, preconditioner=pc)
        assert res.converged and res.alpha.shape == (24, 2)
        assert relerr(res.alpha.reshape(-1), want) < 1e-8
    x_new = random_features(rng, 5, 5)
    cross = mn.ntk(mps, x_new, phi, outputs="full").transpose(0, 2, 1, 3).reshape(10, 48)
    assert relerr(res.predict(x_new).reshape(-1), cross @ want) < 1e-8
    top = linalg.top_eigenvalues(op, 3)
    assert relerr(top, np.linalg.eigvalsh(dense)[::-1][:3]) < 1e-10
    pytest.importorskip("scipy")
    from scipy.sparse.linalg import aslinearoperator
    from scipy.sparse.linalg import cg as scipy_cg

    lin = op.aslinearoperator()
    assert lin.shape == (48, 48) and relerr(lin @ v.reshape(-1), dense @ v.reshape(-1)) < 1e-12
    assert relerr(lin @ V.reshape(48, 3), dense @ V.reshape(48, 3)) < 1e-12
    x, info = scipy_cg(lin + ridge * aslinearoperator(np.eye(48)), v.reshape(-1), rtol=1e-11,
                       maxiter=2000)
    assert info == 0 and relerr(x, want) < 1e-8


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_nystrom_solve_on_shards_equals_the_in_process_one(md, n_outputs):
    """The same data as an NTKOperator and as a ShardedNTK: the same diagonal and columns, so
    the same pivots, factor and solution."""
    rng = np.random.default_rng(12)
    kw = {"output_site": 2, "n_outputs": 2} if n_outputs > 1 else {}
    mps = mn.MPS.random(n_sites=6, bond_dim=4, seed=3, **kw)
    phi = random_features(rng, 50, 6)
    y = rng.standard_normal((50, n_outputs) if n_outputs > 1 else 50)
    here = linalg.ntk_operator(mps, phi, block_size=16)
    with md.ShardedNTK(mps, phi, shard_size=12) as sharded:
        assert relerr(sharded.diagonal().reshape(-1), here.diagonal()) < 1e-14
        reg = 1e-4 * float(np.sum(here.diagonal())) / here.shape[0]
        rtol = 1e-10
        a = linalg.kernel_regression(here, y, reg, rtol=rtol, rank=30 * n_outputs, seed=7)
        b = linalg.kernel_regression(sharded, y, reg, rtol=rtol, rank=30 * n_outputs, seed=7)
        assert a.converged and b.converged
        assert np.array_equal(a.preconditioner.pivots, b.preconditioner.pivots)
        assert relerr(b.preconditioner.eigenvalues, a.preconditioner.eigenvalues) < 1e-10
        assert b.setup_products == a.setup_products and abs(b.n_iter - a.n_iter) <= 1
        assert b.n_iter <= 20  # plain CG needs 195 (one output) and 488 (two)
        assert relerr(b.alpha, a.alpha) < rtol
        dense = here @ np.eye(here.shape[0])
        want = np.linalg.solve(dense + reg * np.eye(here.shape[0]), y.reshape(-1))
        assert relerr(b.alpha.reshape(-1), want) < 1e-7
        phit = random_features(rng, 4, 6)
        assert relerr(b.predict(phit), a.predict(phit)) < 1e-8


def test_sharded_operator_on_features_from_zarr(md, zarr, tmp_path):
    da = pytest.importorskip("dask.array")
    mps, phi = problem(n=45)
    z = zarr.create_array(store=str(tmp_path / "phi.zarr"), shape=phi.shape, chunks=(10, 8, 2),
                          dtype="f8")
    z[...] = phi
    v = np.random.default_rng(6).standard_normal(45)
    op = md.ShardedNTK(mps, da.from_zarr(str(tmp_path / "phi.zarr")), shard_size=16)
    assert op.n_shards == 3
    assert relerr(op.matvec(v), mn.ntk_vp(mps, phi, v)) < 1e-12


# --------------------------------------------------------------------------- on a LocalCluster
def engine_calls(action):
    """In a worker: count the tiles computed and the Batches built ("start", "read", "stop")."""
    from mpsntk import _blocks

    if action == "start":
        counts = {"tiles": 0, "batches": 0}
        tile, batch = _blocks.kernel_block, _blocks.Batch

        def counted_tile(*args, **kwargs):
            counts["tiles"] += 1
            return tile(*args, **kwargs)

        class CountedBatch(batch):
            def __init__(self, *args, **kwargs):
                counts["batches"] += 1
                super().__init__(*args, **kwargs)

        _blocks._counting = counts, tile, batch
        _blocks.kernel_block, _blocks.Batch = counted_tile, CountedBatch
        return counts
    counts, tile, batch = _blocks._counting
    if action == "stop":
        _blocks.kernel_block, _blocks.Batch = tile, batch
    return dict(counts)


def test_local_cluster_gives_the_same_bits(md, cluster, zarr, tmp_path):
    from distributed import Client, futures_of

    mps, phi = problem(n=70)
    x2 = random_features(np.random.default_rng(7), 30, 8)
    v = np.random.default_rng(8).standard_normal(70)
    local = md.ShardedNTK(mps, phi, shard_size=15)
    ridge = 40.0  # 1% of the largest eigenvalue: tens of iterations
    local_tv = local.matvec(v)
    local_cg = linalg.kernel_regression(local, v, ridge, rtol=1e-10, rank=20)
    assert local_cg.converged
    want = np.linalg.solve(mn.ntk(mps, phi) + ridge * np.eye(70), v)
    assert relerr(local_cg.alpha, want) < 1e-7
    local_pred = local_cg.predict(x2)
    threads = md.ntk_to_zarr(mps, phi, store=str(tmp_path / "threads.zarr"), progress=False,
                             tile=16, scheduler="threads")
    with Client(cluster) as client:
        assert client.run(mn.get_num_threads) == dict.fromkeys(client.run(os.getpid), 1)
        client.run(engine_calls, "start")
        try:
            assert np.array_equal(md.ntk(mps, phi, tile=16).compute(), mn.ntk(mps, phi))
        finally:
            counts = client.run(engine_calls, "stop").values()
        # 5 blocks: each of the 15 tiles once over the cluster.  Each Batch is built where its
        # block is made and again only in a worker that fetches the block (it travels as its
        # features): typically 5 to 10 builds; a Batch per tile would be 5 + 25.
        assert sum(c["tiles"] for c in counts) == 15
        assert 5 <= sum(c["batches"] for c in counts) < 15
        assert np.array_equal(md.ntk(mps, phi, x2, tile=(16, 8)).compute(), mn.ntk(mps, phi, x2))
        op = md.ShardedNTK(mps, phi, shard_size=15)
        shards = futures_of(op._shards)  # persisted in the workers' memory
        assert len(shards) == op.n_shards and all(client.who_has(shards).values())
        assert np.array_equal(op.matvec(v), local_tv)
        res = linalg.kernel_regression(op, v, ridge, rtol=1e-10, rank=20)
        assert np.array_equal(res.preconditioner.pivots, local_cg.preconditioner.pivots)
        assert res.n_iter == local_cg.n_iter and np.array_equal(res.alpha, local_cg.alpha)
        assert np.array_equal(res.predict(x2), local_pred)
        md.ntk_to_zarr(mps, phi, store=str(tmp_path / "cluster.zarr"), tile=16, progress=False)
        op.close()
    assert tree_bytes(tmp_path / "cluster.zarr") == tree_bytes(tmp_path / "threads.zarr")
    assert np.array_equal(threads[...], mn.ntk(mps, phi))


def gated_tiles(flag, free):
    """In a worker: the first ``free`` tiles run, the others wait until the file ``flag`` exists
    (``flag=None`` restores the engine's tiles)."""
    import itertools
    import os
    import time

    from mpsntk import _blocks

    inner = getattr(_blocks, "_ungated_kernel_block", _blocks.kernel_block)
    _blocks._ungated_kernel_block = _blocks.kernel_block = inner
    if flag is None:
        return
    calls = itertools.count()

    def gated(*args, **kwargs):
        if next(calls) >= free:
            deadline = time.monotonic() + 120
            while not os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.01)
        return inner(*args, **kwargs)

    _blocks.kernel_block = gated


def test_a_worker_killed_mid_run_is_replaced_and_the_kernel_is_exact(md, cluster, tmp_path):
    """Each worker computes 3 tiles, then its tiles wait for a flag: the kill always finds
    finished tiles in the victim and unfinished ones in the graph, however loaded the machine.
    The victim also held shards of a ShardedNTK: its product is the same bits afterwards."""
    from distributed import Client, futures_of

    mps, phi = problem(n=72, seed=3)
    v = np.random.default_rng(12).standard_normal(72)
    flag = str(tmp_path / "go")
    with Client(cluster) as client:
        client.wait_for_workers(2)
        before = set(client.run(os.getpid).values())
        op = md.ShardedNTK(mps, phi, shard_size=18)  # 4 shards, persisted in the workers
        tv = op.matvec(v)
        held = {a for s in client.who_has(futures_of(op._shards)).values() for a in s}
        client.run(gated_tiles, flag, 3)
        try:
            kernel = md.ntk(mps, phi, tile=8).persist()  # 45 tiles, 81 blocks
            futures = futures_of(kernel)
            deadline = time.monotonic() + 120
            while sum(f.done() for f in futures) < 6:  # at most 6 tiles and their mirrors
                assert time.monotonic() < deadline, "the workers computed no tiles"
                time.sleep(0.01)
            who = {k: tuple(v) for k, v in client.who_has(futures).items()}
            tiles_on = Counter(a for where in who.values() for a in where)
            victim = max(held, key=lambda a: tiles_on[a])  # holds shards, and the most tiles
            only_there = [k for k, where in who.items() if where == (victim,)]
            unfinished = sum(not f.done() for f in futures)
            os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
            Path(flag).touch()  # the surviving worker goes on; the new one is not gated
            got = kernel.compute()
            client.wait_for_workers(2)
            # The victim's shards are rebuilt from their features: the same product, bit for bit.
            assert np.array_equal(op.matvec(v), tv)
            op.close()
        finally:
            Path(flag).touch()
            client.run(gated_tiles, None, 0)
        after = set(client.run(os.getpid).values())
    assert only_there and unfinished > 0  # killed mid-run, holding finished tiles
    assert len(after - before) == 1  # the nanny started a new worker process
    assert np.array_equal(got, mn.ntk(mps, phi))


# --------------------------------------------------------------------------- out of core
def test_zarr_kernel_and_progress_bar(md, zarr, tmp_path, capsys):
    mps, phi = problem(n=50)
    x2 = random_features(np.random.default_rng(9), 21, 8)
    z = md.ntk_to_zarr(mps, phi, store=str(tmp_path / "k.zarr"), tile=16)
    assert "100% Completed" in capsys.readouterr().out
    assert z.chunks == (16, 16) and np.array_equal(z[...], mn.ntk(mps, phi))
    z = md.ntk_to_zarr(mps, phi, x2, store=str(tmp_path / "k.zarr"), name="cross", tile=(16, 8),
                       chunks=(8, 4), shards=(16, 8), progress=False)
    assert z.shards == (16, 8) and np.array_equal(z[...], mn.ntk(mps, phi, x2))
    group = zarr.open_group(str(tmp_path / "k.zarr"), mode="r")
    assert group["ntk_tiles"][...].tolist() == np.triu(np.ones((4, 4), int)).tolist()
    assert group["cross_tiles"][...].all()


def test_memmap_kernel(md, tmp_path):
    mps, phi = problem(n=50)
    x2 = random_features(np.random.default_rng(10), 13, 8)
    k = md.ntk_to_memmap(mps, phi, path=tmp_path / "k.npy", tile=16, progress=False)
    assert isinstance(k, np.memmap) and np.array_equal(k, mn.ntk(mps, phi))
    assert np.array_equal(np.load(tmp_path / "k.npy"), mn.ntk(mps, phi))
    k = md.ntk_to_memmap(mps, phi, x2, path=tmp_path / "c.npy", tile=(16, 5), progress=False)
    assert np.array_equal(k, mn.ntk(mps, phi, x2))
    k = md.ntk_to_memmap(mps, phi, path=tmp_path / "s.npy", tile=16, per_site=True,
                         progress=False)
    assert np.array_equal(k, mn.ntk(mps, phi, per_site=True))


def test_an_interrupted_zarr_kernel_resumes_the_missing_tiles_byte_for_byte(md, zarr, tmp_path,
                                                                             monkeypatch):
    mps, phi = problem(n=60)
    kw = dict(tile=10, chunks=(5, 5), shards=(10, 10), progress=False, scheduler="synchronous")
    md.ntk_to_zarr(mps, phi, store=str(tmp_path / "whole.zarr"), **kw)
    # The 8th tile is torn: part of it written (garbage), then the run stops.
    write, torn = md._ZarrSink.write, []

    def tearing_write(self, i, j, block, mirror):
        if len(torn) == 7:
            self.kernel[self.layout.region(slice(int(self.rb[i]), int(self.rb[i]) + 3),
                                           slice(int(self.cb[j]), int(self.cb[j + 1])))] = 0.0
            raise KeyboardInterrupt
        torn.append((i, j))
        write(self, i, j, block, mirror)

    monkeypatch.setattr(md._ZarrSink, "write", tearing_write)
    with pytest.raises(KeyboardInterrupt):
        md.ntk_to_zarr(mps, phi, store=str(tmp_path / "resumed.zarr"), **kw)
    monkeypatch.setattr(md._ZarrSink, "write", write)
    group = zarr.open_group(str(tmp_path / "resumed.zarr"), mode="r")
    assert group["ntk_tiles"][...].sum() == 7 and np.isnan(group["ntk"][...]).any()
    tiles = Counting(monkeypatch, "kernel_block")
    z = md.ntk_to_zarr(mps, phi, store=str(tmp_path / "resumed.zarr"), **kw)
    assert tiles.calls == 6 * 7 // 2 - 7  # only the missing tiles
    assert np.array_equal(z[...], mn.ntk(mps, phi))
    assert tree_bytes(tmp_path / "resumed.zarr") == tree_bytes(tmp_path / "whole.zarr")
    tiles.calls = 0
    md.ntk_to_zarr(mps, phi, store=str(tmp_path / "resumed.zarr"), **kw)  # finished: nothing to do
    assert tiles.calls == 0


def recorded(path):
    """Tiles recorded as done beside ``path``."""
    return int(np.load(path + ".tiles.npy").sum())


MEMMAP_CHILD = """
    import itertools, os, signal, sys, time, numpy as np, mpsntk.dask as md
    from mpsntk import _blocks
    sys.path.insert(0, sys.argv[2])
    from test_dask import problem, recorded
    inner, calls = _blocks.kernel_block, itertools.count()

    def dying(*args, **kwargs):
        # From the 10th tile on: once 5 tiles are recorded, the process is killed outright,
        # whatever the other thread is writing.
        if next(calls) >= 9:
            deadline = time.monotonic() + 120
            while recorded(sys.argv[1]) < 5 and time.monotonic() < deadline:
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(*args, **kwargs)

    _blocks.kernel_block = dying
    mps, phi = problem(n=80)
    md.ntk_to_memmap(mps, phi, path=sys.argv[1], tile=10, progress=False, scheduler="threads")
"""


def test_a_killed_memmap_kernel_resumes_the_missing_tiles_byte_for_byte(md, tmp_path,
                                                                        monkeypatch):
    """A child writing the kernel is killed (SIGKILL) mid-run; the resumed run computes only
    the tiles the record lacks, and the files equal those of an uninterrupted run."""
    path = str(tmp_path / "killed.npy")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMMAP_CHILD), path, os.path.dirname(__file__)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    done = recorded(path)
    assert 5 <= done <= 9  # at most 9 tiles ran before the kill
    mps, phi = problem(n=80)
    assert np.isnan(np.load(path)).any()
    tiles = Counting(monkeypatch, "kernel_block")
    k = md.ntk_to_memmap(mps, phi, path=path, tile=10, progress=False)
    assert tiles.calls == 36 - done and np.array_equal(k, mn.ntk(mps, phi))
    whole = str(tmp_path / "whole.npy")
    md.ntk_to_memmap(mps, phi, path=whole, tile=10, progress=False)
    for suffix in ("", ".tiles.npy", ".tiles.json"):
        assert Path(path + suffix).read_bytes() == Path(whole + suffix).read_bytes()


def test_misaligned_chunks_and_other_kernels_are_refused(md, zarr, tmp_path):
    mps, phi = problem(n=50)
    store = str(tmp_path / "k.zarr")
    with pytest.raises(ValueError, match=r"not aligned with the chunks \(12, 12\)"):
        md.ntk_to_zarr(mps, phi, store=store, tile=16, chunks=(12, 12), progress=False)
    with pytest.raises(ValueError, match=r"not aligned with the shards \(32, 32\)"):
        md.ntk_to_zarr(mps, phi, store=store, tile=16, chunks=(16, 16), shards=(32, 32),
                       progress=False)
    with pytest.raises(ValueError, match="along axis 1"):
        md.ntk_to_zarr(mps, phi, phi[:20], store=store, tile=(16, 6), chunks=(16, 4),
                       progress=False)
    # One tile covering a whole axis covers all its chunks.
    z = md.ntk_to_zarr(mps, phi, store=store, tile=64, chunks=(12, 12), progress=False)
    assert np.array_equal(z[...], mn.ntk(mps, phi))
    with pytest.raises(ValueError, match="not this kernel"):
        md.ntk_to_zarr(mps, 2 * phi, store=store, tile=64, progress=False)
    with pytest.raises(ValueError, match="has chunks"):
        md.ntk_to_zarr(mps, phi, store=store, tile=64, chunks=(16, 16), progress=False)
    z = md.ntk_to_zarr(mps, 2 * phi, store=store, tile=16, overwrite=True, progress=False)
    assert np.array_equal(z[...], mn.ntk(mps, 2 * phi))
    other = tmp_path / "other.npy"
    np.save(other, np.ones(3))
    with pytest.raises(ValueError, match="does not hold this kernel"):
        md.ntk_to_memmap(mps, phi, path=other, tile=16, progress=False)
    k = md.ntk_to_memmap(mps, phi, path=other, tile=16, overwrite=True, progress=False)
    assert np.array_equal(k, mn.ntk(mps, phi))


def test_bad_input_is_refused_naming_the_argument(md):
    da = pytest.importorskip("dask.array")
    mps, phi = problem(n=20)
    with pytest.raises(TypeError, match="mps must be an mpsntk.MPS"):
        md.ntk("model", phi)
    with pytest.raises(TypeError, match="phi1 has dtype float32"):
        md.ntk(mps, phi.astype(np.float32))
    with pytest.raises(ValueError, match="phi2 has n_sites = 7"):
        md.ntk(mps, phi, phi[:, :7])
    bad = phi.copy()
    bad[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="phi1 must be finite"):
        md.ntk(mps, bad)
    with pytest.raises(ValueError, match="tile must be an integer >= 1"):
        md.ntk(mps, phi, tile=0)
    with pytest.raises(TypeError, match="tile must be an integer"):
        md.ntk(mps, phi, tile=2.5)
    with pytest.raises(ValueError, match="tile must be square"):
        md.ntk(mps, phi, tile=(4, 8))
    with pytest.raises(ValueError, match="outputs must be one of"):
        md.ntk(mps, phi, outputs="diag")
    with pytest.raises(ValueError, match="site_weights must be a real scalar or an array"):
        md.ntk(mps, phi, site_weights=np.ones(3))
    with pytest.raises(TypeError, match="phi1 has dtype float32"):
        md.ntk(mps, da.from_array(phi.astype(np.float32)))
    with pytest.raises(ValueError, match=r"phi2 must have shape \(n_samples, 8, 2\)"):
        md.ntk(mps, phi, da.from_array(phi[:, :5]))
    with pytest.raises(ValueError, match="phi must be finite"):  # found when the block runs
        md.ntk(mps, da.from_array(bad, chunks=(5, 8, 2)), tile=5).compute()
    op = md.ShardedNTK(mps, phi, shard_size=8)
    with pytest.raises(ValueError, match=r"v must have shape \(20,\)"):
        op.matvec(np.ones(21))
    with pytest.raises(TypeError, match="v must have dtype float64"):
        op.matvec(np.ones(20, dtype=np.float32))
    with pytest.raises(ValueError, match="v must be finite"):
        op.matvec(np.full(20, np.inf))
    with pytest.raises(ValueError, match=r"v must have shape \(20,\) or \(20, k\)"):
        op.apply(np.ones((21, 2)))
    with pytest.raises(ValueError, match=r"samples must lie in \[0, 20\)"):
        op.columns([3, 20])
    with pytest.raises(ValueError, match="samples must be a non-empty 1-D integer array"):
        op.columns([0.5])
    with pytest.raises(ValueError, match="shard_size must be an integer >= 1"):
        md.ShardedNTK(mps, phi, shard_size=0)
    y = np.ones(20)
    with pytest.raises(ValueError, match="reg must be a positive"):
        linalg.kernel_regression(op, y, -1.0)
    with pytest.raises(ValueError, match="rtol must be a positive"):
        linalg.kernel_regression(op, y, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        linalg.kernel_regression(op, y, 1.0, preconditioner="ilu")
    with pytest.raises(ValueError, match=r"y must have shape \(20,\)"):
        linalg.kernel_regression(op, np.ones(19), 1.0)
    with pytest.raises(TypeError, match="y must have the model's dtype float64"):
        linalg.kernel_regression(op, y.astype(np.float32), 1.0)
    with pytest.raises(ValueError, match="x0 must have the shape of y"):
        linalg.kernel_regression(op, y, 1.0, x0=np.ones((20, 2)))
    with pytest.raises(TypeError, match="operator must be an NTKOperator .* or an "
                                        "mpsntk.dask.ShardedNTK; got ndarray"):
        linalg.kernel_regression(np.eye(20), y, 1.0)
    with pytest.raises(ValueError, match="preconditioner was built for 30 rows"):
        other = md.ShardedNTK(mps, np.concatenate([phi, phi[:10]]), shard_size=8)
        linalg.kernel_regression(op, y, 1.0, preconditioner=linalg.nystrom_preconditioner(other))
    op.apply = lambda v: -v  # not positive definite
    with pytest.raises(FloatingPointError, match="conjugate gradients broke down"):
        linalg.kernel_regression(op, y, 1e-3, preconditioner=None)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        md.ntk_to_memmap(mps, phi, path=3)


def test_device_model_gives_device_blocks(md):
    """On the CUDA engine (a GPU, else its simulator behind a CuPy stand-in): blocks live on the
    device and agree with the host engine."""
    import sim_cupy

    if not (mn.cuda_available() or sim_cupy.available()):
        pytest.skip("no CUDA engine and no simulator")
    rng = np.random.default_rng(11)
    host = mn.MPS.random(4, 3, seed=2)
    phi, v = random_features(rng, 12, 4), rng.standard_normal(12)
    with sim_cupy.engine():
        import cupy

        dev = host.to_device()
        kernel = md.ntk(dev, cupy.asarray(phi), tile=5)
        block = kernel.blocks[0, 1].compute(scheduler="threads")
        assert hasattr(block, "__cuda_array_interface__")
        got = cupy.asnumpy(kernel.compute(scheduler="threads"))
        op = md.ShardedNTK(dev, cupy.asarray(phi), shard_size=5)
        tv = op.matvec(cupy.asarray(v))
        assert hasattr(tv, "__cuda_array_interface__")
        tv = cupy.asnumpy(tv)
        fit = linalg.kernel_regression(op, cupy.asarray(v), 1.0, rtol=1e-10, rank=6)
        assert hasattr(fit.alpha, "__cuda_array_interface__") and fit.converged
        alpha = cupy.asnumpy(fit.alpha)
        with pytest.raises(TypeError, match="move one explicitly"):
            md.ntk(dev, phi)
    assert relerr(got, mn.ntk(host, phi)) < 1e-12
    assert relerr(tv, mn.ntk_vp(host, phi, v)) < 1e-12
    assert relerr(alpha, np.linalg.solve(mn.ntk(host, phi) + np.eye(12), v)) < 1e-8


def test_the_dask_benchmark_on_tiny_sizes(md, cluster, tmp_path):
    """bench/bench_dask.py's code (never its timings): every way of running checks its result
    against the engine's, and the tables and the figure come out of the records."""
    from distributed import Client

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import bench_dask
    finally:
        sys.path.pop(0)
    args = bench_dask._parse(["--n-samples", "20", "--tiles", "8", "32", "--vp-samples", "30",
                              "--n-sites", "5", "--bond-dim", "3", "--warmup", "0",
                              "--repeats", "1"])
    common = dict(date="2026-01-01T00:00:00+00:00")
    threads = mn.get_num_threads()
    try:
        with Client(cluster, set_as_default=False) as client:
            records = bench_dask.bench_latency(args, client, common)
            records += bench_dask.bench_tiles(args, client, common, 2)
            records += bench_dask.bench_products(args, client, common, 2)
    finally:
        mn.set_num_threads(threads)
    tiles = [r for r in records if r["bench"] == "tiles"]
    assert sorted({r["tool"] for r in tiles}) == ["cluster", "cluster_persist", "engine",
                                                   "threads", "tiles"]
    assert {r["tile"] for r in tiles} == {8, 20}  # the tile of 32 > 20 samples is skipped
    assert all(r["check_rel_err"] == 0.0 for r in tiles)  # the tiles bit for bit
    persisted = next(r for r in tiles if r["tool"] == "cluster_persist")
    assert persisted["computed_tiles"] == 6 and persisted["worker_busy_s"] > 0
    products = [r for r in records if r["bench"] == "ntk_vp"]
    assert [r["tool"] for r in products] == ["engine", "threads", "cluster"]
    assert all(r["check_rel_err"] < 1e-12 for r in products)
    assert [r["tool"] for r in records if r["bench"] == "latency"] == ["cluster_tile",
                                                                        "cluster_matvec"]
    table = bench_dask.summarize(records)
    assert "| 20 | 8 | 6 |" in table and "| 30 |" in table
    pytest.importorskip("matplotlib")
    bench_dask.figure(records, tmp_path / "tiles.png")
    assert (tmp_path / "tiles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
