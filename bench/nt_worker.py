"""The neural-tangents peer of ``bench_ntk.py``, run in its own virtual environment.

neural-tangents 0.6.5 needs JAX 0.4.23 and NumPy 1.26 (``bench/make_nt_env.sh`` builds that
venv), so ``bench_ntk.py`` runs it as a subprocess of that venv's Python.  The worker reads one
job as a JSON object on stdin::

    {"tool": "nt-structured-derivatives", "routine": "ntk", "dtype": "float64",
     "problem": "/tmp/.../problem.npz", "tolerance": 1e-10,
     "opts": {"repeats": 3, "warmup": 1, "timeout": 120, "min_time": 1.0,
              "ref_paths": ["/tmp/.../ref_0.npy"]}}

loads the problem that the mpsntk child of the same configuration used (cores, scales, rates,
features, the vector ``v``), builds the MPS as a JAX function of its cores (the batched chain of
``peers.jax_batch_forward``), checks its first result against mpsntk's (``ref_paths``) and times
it with the protocol of ``_harness.measure``; it writes one JSON object (the measurement) on
stdout.  Anything the libraries print goes to stderr.

Tools: ``nt-jacobian-contraction``, ``nt-ntk-vector-products``, ``nt-structured-derivatives``,
``nt-auto`` (``empirical_ntk_fn`` with that ``NtkImplementation``, ``vmap_axes=0``,
``trace_axes=()``, jitted) for the ``ntk`` routine, and ``nt-ntk-vp``
(``empirical_ntk_vp_fn``, jitted) for ``ntk_vp``.

Per-site rates ``r_j`` enter as the parametrisation ``W_j = sqrt(r_j) V_j`` with ``V`` the
parameters, so that the plain NTK of ``V`` is ``sum_j r_j J_j J_j^T``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

NT_TOOLS = {
    "nt-jacobian-contraction": ("ntk", "JACOBIAN_CONTRACTION"),
    "nt-ntk-vector-products": ("ntk", "NTK_VECTOR_PRODUCTS"),
    "nt-structured-derivatives": ("ntk", "STRUCTURED_DERIVATIVES"),
    "nt-auto": ("ntk", "AUTO"),
    "nt-ntk-vp": ("ntk_vp", None),
}


def load_problem(path):
    """The arrays saved by ``bench_ntk.save_problem``."""
    import numpy as np

    with np.load(path) as data:
        n_sites = int(data["n_sites"])
        prob = {
            "cores": [data[f"core_{j}"] for j in range(n_sites)],
            "scales": [float(s) for s in data["scales"]],
            "rates": [float(r) for r in data["rates"]],
        }
        for key in ("phi", "v", "y"):
            prob[key] = data[key] if key in data else None
    return prob


def build(tool, prob):
    """``(run, to_host)`` of a neural-tangents tool on ``prob``.

    Parameters
    ----------
    tool : str
        A key of :data:`NT_TOOLS`.
    prob : dict
        From :func:`load_problem`.

    Returns
    -------
    run, to_host : callables
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    import neural_tangents as nt
    import numpy as np
    import peers

    routine, impl = NT_TOOLS[tool]
    if min(prob["rates"]) <= 0:
        raise ValueError("the neural-tangents peer needs positive site rates")
    roots = [math.sqrt(r) for r in prob["rates"]]
    f_cores = peers.jax_batch_forward([s * q for s, q in zip(prob["scales"], roots)])
    params = tuple(jax.device_put(c / q) for c, q in zip(prob["cores"], roots))
    phi = jax.device_put(prob["phi"])

    def f(params, x):
        return f_cores(params, x)

    if routine == "ntk":
        ntk_fn = jax.jit(nt.empirical_ntk_fn(
            f, trace_axes=(), vmap_axes=0, implementation=getattr(nt.NtkImplementation, impl)))

        def run():
            return ntk_fn(phi, None, params).block_until_ready()
    else:
        v = jax.device_put(prob["v"])
        vp_fn = jax.jit(lambda params, x, v: nt.empirical_ntk_vp_fn(f, x, None, params)(v))

        def run():
            return vp_fn(params, phi, v).block_until_ready()

    return run, lambda out: [np.asarray(out)]


def versions():
    """Versions of the worker's libraries (recorded with each measurement)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for dist in ("neural-tangents", "jax", "jaxlib", "numpy", "tensorflow-cpu"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def main():
    """Read the job from stdin, write the measurement as JSON on stdout."""
    t_start = time.perf_counter()
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the libraries' prints must not corrupt the JSON answer
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    job = json.loads(sys.stdin.read())
    try:
        import _harness

        run, to_host = build(job["tool"], load_problem(job["problem"]))
        res = _harness.measure(run, to_host, job["opts"], t_start, job["tolerance"])
        import jax

        res["n_threads"] = os.cpu_count()  # XLA sizes its pool to the cores
        res["nt_versions"] = versions()
        res["nt_platform"] = jax.default_backend()
    except BaseException as exc:  # every failure goes to the parent
        res = {"status": "error", "note": f"{type(exc).__name__}: {exc}"[:500]}
    result_out.write(json.dumps(res) + "\n")
    result_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
