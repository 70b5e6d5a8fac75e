"""Benchmark mpsntk.dask against the in-process engine: NTK tiles and sharded ``Theta v``.

One NTK-parametrised open MPS (seed 0) on ``features.trig`` of uniform inputs; on the same
model and samples:

Tiles (``--n-samples``, each ``--tiles`` size), the symmetric ``Theta(X, X)``:

engine
    ``mn.ntk(mps, phi)`` in this process, all engine threads (``--threads``, default every
    core): the reference of the ratios.
tiles
    The tiles of ``mpsntk.dask.ntk`` (upper triangle and diagonal), one after another through
    ``mpsntk._blocks.kernel_block`` in this process with one engine thread: what the graph's
    workers compute, without Dask (the cost of cutting the kernel into tiles).
threads
    ``mpsntk.dask.ntk(mps, phi, tile=t).compute(scheduler="threads")``: Dask's threaded
    scheduler, one Dask thread per core, one engine thread each.
cluster
    The same graph on a ``LocalCluster`` of ``--workers`` processes with one thread and one
    engine thread each (``OMP_NUM_THREADS=1``), the kernel gathered into this process.
cluster_persist
    The same, the tiles left in the workers' memory (``persist`` and wait): no gather.

``worker_busy_s``: the workers' time in tasks (Dask's task stream) during ``cluster_persist``;
``dask_overhead_per_tile_s = (cluster_persist - worker_busy_s / workers) * workers / computed
tiles``: the time a worker spends per tile outside the engine (scheduling, transfers, idling at
the end), the graph's fixed cost included.  The fixed cost alone (``latency``, at least 5
repeats): a one-tile kernel of 8 samples persisted on the cluster, and one
``ShardedNTK.matvec`` of 8 samples in 2 shards.

Products (``--vp-samples``): ``Theta v`` for one vector:

engine
    ``mn.ntk_vp(mps, phi, v)``, all engine threads.
threads / cluster
    ``ShardedNTK(mps, phi).matvec(v)`` (default shards: one per worker thread) on the threaded
    scheduler / the LocalCluster; the shards are built (and persisted) before timing.

Each measurement: ``--warmup`` untimed calls, then ``--repeats`` timed ones, median wall time;
and the median CPU time (``cpu_s``) of every process involved (this one, which also hosts the
LocalCluster's scheduler, and the workers): on a shared machine the CPU time tells the work done
where the wall time also tells the other users' load.  Every
result is first checked against the engine's (``check_rel_err``: bit for bit expected for the
tiles, ~1e-15 for the products).  One JSON line per measurement goes to ``--out``; a markdown
table is printed at the end (``--summary FILE`` prints it for a results file, ``--figure PNG``
with it draws the tile sizes' ratios and the overhead per tile).

Examples
--------
The configurations of bench/README.md::

    python bench/bench_dask.py --out bench/results/dask_cpu.jsonl
    python bench/bench_dask.py --summary bench/results/dask_cpu.jsonl \
        --figure bench/figures/cpu_dask_tiles.png
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from functools import partial

from bench_ntk import machine_info


def _problem(n_samples, n_sites, bond_dim, seed=0):
    import numpy as np

    import mpsntk as mn

    rng = np.random.default_rng(seed)
    mps = mn.MPS.random(n_sites, bond_dim, seed=seed)
    phi = mn.features.trig(rng.uniform(size=(n_samples, n_sites)))
    return mps, phi, rng.standard_normal(n_samples)


def _time(fn, warmup, repeats, after=None, cpu=time.process_time):
    """Median wall and CPU seconds of ``repeats`` calls after ``warmup`` untimed ones (``cpu()``:
    the CPU seconds used so far by every process involved); ``after()`` runs, untimed, after
    every call.  Returns (median wall, wall times, median CPU)."""
    times, cpus = [], []
    for k in range(warmup + repeats):
        c0, t0 = cpu(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), cpu()
        if k >= warmup:
            times.append(t1 - t0)
            cpus.append(c1 - c0)
        if after is not None:
            after()
    return statistics.median(times), times, statistics.median(cpus)


def _cluster_cpu(client):
    """CPU seconds of this process (client and scheduler) and of every worker process."""
    return time.process_time() + sum(client.run(time.process_time).values())


def _forgotten(client, collection, timeout=120):
    """Wait until the scheduler has released every key of ``collection``: the next run of the
    same (deterministic) graph must compute it again, not find it in the workers' memory."""
    from dask.core import flatten

    keys = set(flatten(collection.__dask_keys__()))

    def held(dask_scheduler=None, keys=keys):
        return sum(k in dask_scheduler.tasks for k in keys)

    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(held):
        if time.monotonic() > deadline:
            raise RuntimeError("the scheduler still holds the kernel's keys")
        time.sleep(0.05)


def _relerr(a, b):
    import numpy as np

    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def _serial_tiles(mps, phi, tile):
    """The tiles of the symmetric Dask graph, one after another (no Dask)."""
    from mpsntk import _blocks

    starts = range(0, phi.shape[0], tile)
    batches = [_blocks.Batch(mps, phi[a:a + tile]) for a in starts]
    for i, bi in enumerate(batches):
        _blocks.kernel_block(bi)
        for bj in batches[i + 1:]:
            _blocks.kernel_block(bi, bj)


def _recorder(records, base, args, cpu=time.process_time):
    """``measure(tool, fn, after=None, cpu=..., **fields)``: time ``fn`` and append a record."""

    def measure(tool, fn, after=None, cpu=cpu, repeats=None, **fields):
        wall, times, cpu_s = _time(fn, args.warmup, repeats or args.repeats, after, cpu)
        records.append(dict(base, tool=tool, median_s=wall, times=times, cpu_s=cpu_s, **fields))
        return records[-1]

    return measure


def bench_latency(args, client, common):
    """The fixed cost of one graph on the cluster: a one-tile kernel and a product of 8
    samples (2 shards), where the engine's work is negligible."""
    import dask
    from distributed import futures_of, wait

    import mpsntk.dask as md

    mps, phi, v = _problem(8, args.n_sites, args.bond_dim)
    kernel = md.ntk(mps, phi, tile=8)

    def persist():
        held = client.persist(kernel)
        with client.as_current():
            wait(futures_of(held))

    records = []
    measure = _recorder(records, dict(common, bench="latency", n_samples=8, n_sites=args.n_sites,
                                      bond_dim=args.bond_dim, dtype="float64",
                                      workers=args.workers), args, partial(_cluster_cpu, client))
    repeats = max(args.repeats, 5)
    measure("cluster_tile", persist, partial(_forgotten, client, kernel), repeats=repeats)
    with dask.config.set(scheduler=client.get):
        op = md.ShardedNTK(mps, phi, shard_size=4)
        measure("cluster_matvec", lambda: op.matvec(v), repeats=repeats, n_shards=2)
        op.close()
    print(f"latency: one tile {records[0]['median_s'] * 1e3:.1f} ms, one product "
          f"{records[1]['median_s'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    return records


def bench_tiles(args, client, common, threads):
    records = []
    for n in args.n_samples:
        records += _tiles_of(n, args, client, common, threads)
    return records


def _tiles_of(n, args, client, common, threads):
    import dask
    from distributed import futures_of, get_task_stream, wait

    import mpsntk as mn
    import mpsntk.dask as md

    mps, phi, _ = _problem(n, args.n_sites, args.bond_dim)
    cfg = dict(common, bench="tiles", n_samples=n, n_sites=args.n_sites,
               bond_dim=args.bond_dim, dtype="float64")
    records = []
    mn.set_num_threads(threads)
    want = mn.ntk(mps, phi)
    engine = _recorder(records, dict(cfg, tile=n, n_tiles=1), args)(
        "engine", lambda: mn.ntk(mps, phi), check_rel_err=0.0, engine_threads=threads)
    print(f"n={n}: engine {engine['median_s']:.3f} s", file=sys.stderr, flush=True)
    for tile in args.tiles:
        if tile > n:
            continue
        k = -(-n // tile)
        computed = k * (k + 1) // 2
        base = dict(cfg, tile=tile, n_tiles=k * k, computed_tiles=computed)
        measure = _recorder(records, base, args)
        on_cluster = _recorder(records, base, args, partial(_cluster_cpu, client))
        mn.set_num_threads(1)
        measure("tiles", partial(_serial_tiles, mps, phi, tile), check_rel_err=0.0,
                engine_threads=1)
        kernel = md.ntk(mps, phi, tile=tile)
        with dask.config.set(scheduler="threads", num_workers=threads):
            measure("threads", kernel.compute, check_rel_err=_relerr(kernel.compute(), want),
                    engine_threads=1, dask_threads=threads)
        mn.set_num_threads(threads)
        err = _relerr(client.compute(kernel).result(), want)
        forget = partial(_forgotten, client, kernel)
        forget()
        on_cluster("cluster", lambda kernel=kernel: client.compute(kernel).result(), forget,
                   check_rel_err=err, workers=args.workers, engine_threads=1)
        busy = []

        def persist(kernel=kernel, busy=busy):
            with get_task_stream(client) as stream:
                held = client.persist(kernel)
                with client.as_current():
                    wait(futures_of(held))
                del held
            busy.append(sum(s["stop"] - s["start"] for rec in stream.data
                            for s in rec["startstops"] if s["action"] == "compute"))

        r = on_cluster("cluster_persist", persist, forget, check_rel_err=err,
                       workers=args.workers, engine_threads=1)
        r["worker_busy_s"] = statistics.median(busy[args.warmup:])
        r["dask_overhead_per_tile_s"] = (
            (r["median_s"] - r["worker_busy_s"] / args.workers) * args.workers / computed
        )
        print(f"  tile {tile}: " + ", ".join(
            f"{r['tool']} {r['median_s']:.3f} s ({r['cpu_s']:.3f} s CPU)" for r in records[-4:]),
            file=sys.stderr, flush=True)
    for r in records:
        r["ratio_to_engine"] = r["median_s"] / engine["median_s"]
        r["cpu_ratio_to_engine"] = r["cpu_s"] / engine["cpu_s"]
    return records


def bench_products(args, client, common, threads):
    records = []
    for n in args.vp_samples:
        records += _products_of(n, args, client, common, threads)
    return records


def _products_of(n, args, client, common, threads):
    import dask

    import mpsntk as mn
    import mpsntk.dask as md

    mps, phi, v = _problem(n, args.n_sites, args.bond_dim)
    base = dict(common, bench="ntk_vp", n_samples=n, n_sites=args.n_sites,
                bond_dim=args.bond_dim, dtype="float64")
    records = []
    measure = _recorder(records, base, args)
    mn.set_num_threads(threads)
    want = mn.ntk_vp(mps, phi, v)
    engine = measure("engine", lambda: mn.ntk_vp(mps, phi, v), check_rel_err=0.0,
                     engine_threads=threads, n_shards=1)
    mn.set_num_threads(1)
    with dask.config.set(scheduler="threads", num_workers=threads):
        op = md.ShardedNTK(mps, phi)
        measure("threads", partial(op.matvec, v), check_rel_err=_relerr(op.matvec(v), want),
                engine_threads=1, dask_threads=threads, n_shards=op.n_shards)
        op.close()
    mn.set_num_threads(threads)
    with dask.config.set(scheduler=client.get):
        op = md.ShardedNTK(mps, phi)
        _recorder(records, base, args, partial(_cluster_cpu, client))(
            "cluster", partial(op.matvec, v), check_rel_err=_relerr(op.matvec(v), want),
            workers=args.workers, engine_threads=1, n_shards=op.n_shards)
        op.close()
    for r in records:
        r["ratio_to_engine"] = r["median_s"] / engine["median_s"]
        r["cpu_ratio_to_engine"] = r["cpu_s"] / engine["cpu_s"]
    print(f"n={n}: " + ", ".join(f"{r['tool']} {r['median_s']:.3f} s ({r['cpu_s']:.3f} s CPU)"
                                 for r in records), file=sys.stderr, flush=True)
    return records


def _cpu_overhead_per_tile(cluster, serial):
    """CPU seconds per computed tile that the cluster (scheduler, client and workers) spent
    beyond the same tiles computed one after another without Dask."""
    return (cluster["cpu_s"] - serial["cpu_s"]) / serial["computed_tiles"]


def summarize(records):
    """Markdown tables: tiles (one row per n and tile size) and products (one row per n); each
    cell is the median wall time, its ratio to the engine's, and the CPU time's ratio."""

    def cell(r):
        return "" if r is None else (f"{r['median_s']:.3f} s ({r['ratio_to_engine']:.2f}×; "
                                     f"CPU {r['cpu_ratio_to_engine']:.2f}×)")

    lines = []
    tiles = [r for r in records if r["bench"] == "tiles"]
    if tiles:
        lines += ["| n_samples | tile | tiles computed | engine | tiles, 1 thread, no Dask | "
                  "threads | cluster | cluster, persisted | workers busy | Dask per tile | "
                  "Dask CPU per tile |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        groups = {}
        for r in tiles:
            groups.setdefault((r["date"], r["n_samples"]), {}).setdefault(r["tile"], {})[
                r["tool"]] = r
        for (_, n), by_tile in sorted(groups.items()):
            engine = by_tile[n]["engine"]
            for tile, g in sorted(by_tile.items()):
                if "tiles" not in g:
                    continue
                p = g["cluster_persist"]
                lines.append(f"| {n} | {tile} | {g['tiles']['computed_tiles']} | "
                             f"{engine['median_s']:.3f} s ({engine['cpu_s']:.3f} s CPU) | "
                             f"{cell(g['tiles'])} | {cell(g['threads'])} | "
                             f"{cell(g['cluster'])} | {cell(p)} | {p['worker_busy_s']:.3f} s | "
                             f"{p['dask_overhead_per_tile_s'] * 1e3:.1f} ms | "
                             f"{_cpu_overhead_per_tile(p, g['tiles']) * 1e3:.1f} ms |")
    for r in records:
        if r["bench"] == "latency":
            lines.append(f"\nFixed cost of one graph on the cluster ({r['tool']}): "
                         f"{r['median_s'] * 1e3:.1f} ms ({r['cpu_s'] * 1e3:.1f} ms CPU)")
    vp = [r for r in records if r["bench"] == "ntk_vp"]
    if vp:
        lines += ["", "| n_samples | engine `ntk_vp` | ShardedNTK, threads | "
                  "ShardedNTK, cluster | shards | check |", "|---:|---:|---:|---:|---:|---:|"]
        groups = {}
        for r in vp:
            groups.setdefault((r["date"], r["n_samples"]), {})[r["tool"]] = r
        for (_, n), g in sorted(groups.items()):
            lines.append(
                f"| {n} | {g['engine']['median_s']:.3f} s ({g['engine']['cpu_s']:.3f} s CPU) | "
                f"{cell(g['threads'])} | {cell(g['cluster'])} | {g['cluster']['n_shards']} | "
                f"{max(g['threads']['check_rel_err'], g['cluster']['check_rel_err']):.1e} |")
    return "\n".join(lines)


def figure(records, path):
    """Two panels against the tile size: the wall and CPU time of each way of running the tiles
    over the engine's (left), and Dask's overhead per tile next to the engine's time per tile
    (right).  Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    tiles = [r for r in records if r["bench"] == "tiles"]
    last = max(r["date"] for r in tiles)
    tiles = [r for r in tiles if r["date"] == last]
    n = max(r["n_samples"] for r in tiles)
    tiles = [r for r in tiles if r["n_samples"] == n and r["tool"] != "engine"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"tiles": "tiles, no Dask", "threads": "threaded scheduler",
              "cluster": "LocalCluster, gathered", "cluster_persist": "LocalCluster, persisted"}
    for tool, label in labels.items():
        rs = sorted((r for r in tiles if r["tool"] == tool), key=lambda r: r["tile"])
        line, = left.plot([r["tile"] for r in rs], [r["ratio_to_engine"] for r in rs], "o-",
                          label=f"{label}: wall")
        left.plot([r["tile"] for r in rs], [r["cpu_ratio_to_engine"] for r in rs], "s--",
                  color=line.get_color(), label=f"{label}: CPU")
    left.axhline(1.0, color="grey", lw=0.8)
    left.set(xscale="log", yscale="log", xlabel="tile (samples)", ylabel="time / engine's",
             title=f"Θ(X, X), n = {n}: time over mn.ntk's")
    left.legend(fontsize=7)
    persist = sorted((r for r in tiles if r["tool"] == "cluster_persist"),
                     key=lambda r: r["tile"])
    serial = {r["tile"]: r for r in tiles if r["tool"] == "tiles"}
    t = [r["tile"] for r in persist]
    right.plot(t, [r["dask_overhead_per_tile_s"] * 1e3 for r in persist], "o-",
               label="Dask's overhead per tile (cluster)")
    right.plot(t, [_cpu_overhead_per_tile(r, serial[r["tile"]]) * 1e3 for r in persist], "o--",
               label="Dask's CPU time per tile (cluster)")
    right.plot(t, [serial[k]["cpu_s"] / serial[k]["computed_tiles"] * 1e3 for k in t], "s:",
               label="engine CPU time per tile")
    right.set(xscale="log", yscale="log", xlabel="tile (samples)", ylabel="ms per tile",
              title="per tile")
    for ax in (left, right):
        ax.xaxis.set_major_locator(FixedLocator(t))
        ax.xaxis.set_major_formatter(FixedFormatter([str(k) for k in t]))
        ax.xaxis.set_minor_formatter(NullFormatter())
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-samples", type=int, nargs="+", default=[4096])
    p.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--vp-samples", type=int, nargs="+", default=[10_000, 50_000])
    p.add_argument("--n-sites", type=int, default=64)
    p.add_argument("--bond-dim", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--threads", type=int, default=None,
                   help="engine threads of the in-process runs, Dask threads of the threaded "
                        "scheduler (default: every core)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="append JSON lines here")
    p.add_argument("--summary", default=None, help="print the tables of a results file and exit")
    p.add_argument("--figure", default=None,
                   help="with --summary: also draw the tiles of its latest run into this PNG")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    if args.summary:
        with open(args.summary) as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        print(summarize(records))
        if args.figure:
            figure(records, args.figure)
        return 0
    from distributed import Client, LocalCluster

    import mpsntk as mn

    threads = args.threads or os.cpu_count()
    mn.set_num_threads(threads)
    info = machine_info()
    common = dict(device="cpu", cpu=info["cpu"], isa=info["isa"], versions=info["versions"],
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  load_avg_start=os.getloadavg()[0])
    import dask
    import distributed

    common["versions"] = dict(common["versions"], dask=dask.__version__,
                              distributed=distributed.__version__)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, env={"OMP_NUM_THREADS": "1"}) as cluster, \
            Client(cluster, set_as_default=False) as client:
        records = bench_latency(args, client, common)
        records += bench_tiles(args, client, common, threads)
        records += bench_products(args, client, common, threads)
    for r in records:
        r["load_avg"] = os.getloadavg()[0]
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
    print(summarize(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
