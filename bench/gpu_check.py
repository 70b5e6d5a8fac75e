"""Checks of the CUDA engine on a real GPU that the simulator cannot make, for a lent machine.

``python bench/gpu_check.py`` runs every device routine (ntk symmetric and cross, per-site and
per-output, float64 and float32 incl. TF32, forward, vjp, jvp, ntk_vp) on small odd-sized
models (bond dimensions that are not powers of two, one that fills whole 16-deep chunks, open
and periodic chains, three outputs) and compares each result with the CPU engine: run it under
``compute-sanitizer --tool memcheck|racecheck|synccheck`` to look for out-of-bounds accesses,
shared-memory races and barrier misuse on the hardware.  It exits with status 1
if a result is off.

``python bench/gpu_check.py --ntk N --bond-dim D --dtype float64`` makes one symmetric NTK call
on N samples of a 64-site model, to profile with ``ncu --kernel-name regex:ntk_kernel``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import mpsntk as mn

TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
MODELS = [  # n_sites, bond_dim, boundary, n_outputs, output_site
    (6, 17, "open", 1, None),
    (5, 16, "open", 3, 2),  # Gram depths that fill whole chunks
    (4, 5, "periodic", 1, None),
    (3, 70, "open", 2, 1),  # wider than a 64-column tile
]


def _rel(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


def check_all(cp, verbose=True):
    """Every device routine against the host engine; returns [(what, rel. error, tolerance)]."""
    rng = np.random.default_rng(0)
    results = []

    def record(what, got, want, tol):
        err = _rel(cp.asnumpy(got), want)
        results.append((what, err, tol))
        if verbose:
            verdict = "ok " if err <= tol else "BAD"
            print(f"{verdict} {err:9.2e} (tol {tol:.0e})  {what}", flush=True)

    for dtype in (np.float64, np.float32):
        tol = TOL[np.dtype(dtype)]
        for n_sites, bond, boundary, n_out, osite in MODELS:
            host = mn.MPS.random(n_sites, bond, phys_dim=3, boundary=boundary, n_outputs=n_out,
                                 output_site=osite, seed=1, dtype=dtype)
            dev = host.to_device()
            name = f"{np.dtype(dtype).name} {boundary} n={n_sites} D={bond} C={n_out}"
            phi1 = rng.random((70, n_sites, 3)).astype(dtype)
            phi2 = rng.random((33, n_sites, 3)).astype(dtype)
            d1, d2 = cp.asarray(phi1), cp.asarray(phi2)
            for outputs in ("trace", "full") if n_out > 1 else ("trace",):
                for per_site in (False, True):
                    kw = {"outputs": outputs, "per_site": per_site}
                    record(f"ntk sym {name} {kw}", mn.ntk(dev, d1, **kw), mn.ntk(host, phi1, **kw),
                           tol)
                    record(f"ntk cross {name} {kw}", mn.ntk(dev, d1, d2, **kw),
                           mn.ntk(host, phi1, phi2, **kw), tol)
            if dtype == np.float32:  # TF32: inputs rounded to 10 mantissa bits
                record(f"ntk tf32 {name}", mn.ntk(dev, d1, d2, precision="tf32"),
                       mn.ntk(host, phi1, phi2), 1e-2)
            f = host(phi1)  # (n,) or, with a label site, (n, n_outputs)
            record(f"forward {name}", dev(d1), f, tol)
            cot = rng.standard_normal(f.shape).astype(dtype)
            for i, (g, w) in enumerate(zip(mn.vjp(dev, d1, cp.asarray(cot)),
                                           mn.vjp(host, phi1, cot))):
                record(f"vjp core {i} {name}", g, w, tol)
            tangents = [rng.standard_normal(c.shape).astype(dtype) for c in host.cores]
            record(f"jvp {name}", mn.jvp(dev, d1, [cp.asarray(t) for t in tangents]),
                   mn.jvp(host, phi1, tangents), tol)
            v = rng.standard_normal(f.shape + (2,)).astype(dtype)
            record(f"ntk_vp {name}", mn.ntk_vp(dev, d1, cp.asarray(v)), mn.ntk_vp(host, phi1, v),
                   tol)
    return results


def one_ntk(cp, n, bond, dtype):
    """One symmetric NTK call on n samples of a 64-site model (for a profiler)."""
    host = mn.MPS.random(64, bond, phys_dim=2, seed=0, dtype=dtype)
    phi = cp.asarray(np.random.default_rng(0).random((n, 64, 2)).astype(dtype))
    theta = mn.ntk(host.to_device(), phi)
    cp.cuda.get_current_stream().synchronize()
    return theta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ntk", type=int, metavar="N", help="one NTK call on N samples instead")
    ap.add_argument("--bond-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = ap.parse_args(argv)
    import cupy as cp

    if args.ntk:
        one_ntk(cp, args.ntk, args.bond_dim, np.dtype(args.dtype))
        return 0
    bad = [r for r in check_all(cp) if not r[1] <= r[2]]
    print(f"{len(bad)} result(s) off" if bad else "all device results agree with the host")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
