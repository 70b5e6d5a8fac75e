"""Faults: fork, out-of-memory, kills, Ctrl-C, threads, and results that leave the dtype's range.

Faults that hang or kill a process run in a child (a fresh interpreter, with a timeout), so that
a regression fails the test instead of the test session.  Timeouts are generous where a child
only has to start (the machine may be loaded) and tight only where promptness is the point
(Ctrl-C, measured from the signal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import mpsntk as mn

POSIX = os.name == "posix"
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")


def child(code, *args, timeout=180):
    """Run ``code`` in a fresh interpreter; returns the CompletedProcess (raises on timeout)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def start_child(code, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc, prefix, timeout=120):
    """Read the child's lines until one starts with ``prefix`` (its remainder is returned)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child ended before {prefix!r}: {proc.stderr.read()}")
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise AssertionError(f"no {prefix!r} from the child in {timeout} s")


@pytest.fixture
def threads_restored():
    before = mn.get_num_threads()
    yield
    mn.set_num_threads(before)


# --------------------------------------------------------------------------- 1. fork

FORK_PARENT = """
    import multiprocessing as mp, os, sys, numpy as np, mpsntk as mn
    mn.set_num_threads(2)
    mps = mn.MPS.random(16, 32, seed=0)
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(400, 16)))
    want = mn.ntk(mps, phi[:50])        # the parent's engine has run multi-threaded regions
    mn.vjp(mps, phi, np.ones(400))

    def work(rows):
        return mn.ntk(mps, phi[rows]), mn.get_num_threads()

    if sys.argv[1] == "os.fork":
        pid = os.fork()
        if pid == 0:
            theta, threads = work(slice(0, 50))
            mn.vjp(mps, phi, np.ones(400)), mn.ntk_vp(mps, phi, np.ones(400))
            os._exit(0 if np.array_equal(theta, want) and threads == 1 else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    else:
        with mp.get_context("fork").Pool(2) as pool:
            out = pool.map(work, [slice(0, 50)] * 4)
        print("child", 0 if all(np.array_equal(t, want) and n == 1 for t, n in out) else 3)
    print("parent threads", mn.get_num_threads())
"""


@needs_fork
@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_forked_children_compute_instead_of_hanging(how):
    """GNU OpenMP's thread pool does not survive fork: children must run serially, not wait
    forever for the parent's threads; the parent keeps its own threads."""
    res = child(FORK_PARENT, how, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "child 0" in res.stdout and "parent threads 2" in res.stdout, res.stdout


@needs_fork
def test_set_num_threads_in_a_forked_child_warns_and_stays_serial():
    res = child("""
        import os, warnings, numpy as np, mpsntk as mn
        mn.set_num_threads(2)
        mn.ntk(mn.MPS.random(8, 16, seed=0),
               mn.features.trig(np.random.default_rng(0).uniform(size=(300, 8))))
        pid = os.fork()
        if pid == 0:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                mn.set_num_threads(1)   # fine: what the child runs with anyway
                quiet = len(w) == 0
                mn.set_num_threads(4)
            ok = quiet and len(w) == 1 and "fork" in str(w[0].message)
            os._exit(0 if ok and mn.get_num_threads() == 1 else 3)
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """, timeout=120)
    assert "child 0" in res.stdout, res.stdout + res.stderr


# --------------------------------------------------------------------------- 2. out of memory

OOM_CHILD = """
    import ctypes, json, os, re, resource, sys, numpy as np, mpsntk as mn
    import mpsntk._validate
    op, kw = sys.argv[1], json.loads(sys.argv[2])
    # The Python layer refuses what it knows will not fit (it sees the limit); switched off
    # here, so that the engine meets the limit in its own allocations.
    mpsntk._validate._available_memory = lambda: None
    # Large blocks always mapped afresh (a fixed mmap threshold turns off glibc's adaptive one,
    # which would otherwise serve every repeated call from memory the warm-up freed): each call
    # then meets the limit, whatever the allocator's history.
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 16)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 16)
    mn.set_num_threads(2)
    mps = mn.MPS.random(seed=0, **kw)
    n = 400
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(n, mps.n_sites)))
    v = np.ones((n,) + (() if mps.output_site is None else (mps.n_outputs,)))
    tangents = [np.ones_like(c) for c in mps.cores]
    calls = {"ntk": lambda: mn.ntk(mps, phi), "ntk_vp": lambda: mn.ntk_vp(mps, phi, v),
             "vjp": lambda: mn.vjp(mps, phi, v), "jvp": lambda: mn.jvp(mps, phi, tangents)}
    call = calls[op]
    call(); call()  # the thread pool and the allocator's arenas exist before any limit

    def vm_size():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    def attempt(extra):
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + extra, hard))
        try:
            call()
            return None
        except MemoryError as exc:
            return str(exc)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    class Mallinfo2(ctypes.Structure):  # glibc: the heap's bytes in use, free blocks aside
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    libc.mallinfo2.restype = Mallinfo2

    def in_use():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd  # allocated by malloc, not yet freed

    # Sweep the limit across every allocation of the call: each must fail cleanly, and the
    # failed calls must leave no memory behind.
    before = in_use()
    outcomes = [attempt(int(mb * 2**20)) for mb in np.geomspace(0.05, 100, 32)]
    grown = in_use() - before
    failed = [m for m in outcomes if m is not None]
    unnamed = [m for m in failed if not re.search(r"\\d+(\\.\\d+)? [KMG]iB", m)]
    call()
    print(json.dumps({"failed": len(failed), "ok": outcomes.count(None), "unnamed": unnamed,
                      "grown": grown, "sample": failed[:3]}))
"""


@needs_linux
@pytest.mark.parametrize("op", ["ntk", "ntk_vp", "vjp", "jvp"])
@pytest.mark.parametrize("model", [
    {"n_sites": 24, "bond_dim": 32},
    {"n_sites": 10, "bond_dim": 5, "boundary": "periodic", "n_outputs": 3},
], ids=["open", "periodic-multi"])
def test_out_of_memory_is_a_memory_error_naming_the_size(op, model):
    """Under RLIMIT_AS, at every limit between "nothing fits" and "everything fits", the call
    either succeeds or raises MemoryError naming the size (an exception escaping an OpenMP
    region used to call std::terminate: exit code 134), and the failed calls leave no memory
    behind."""
    import json

    res = child(OOM_CHILD, op, json.dumps(model), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["failed"] >= 5 and out["ok"] >= 5, out
    assert out["unnamed"] == [], out
    assert out["grown"] < 2**20, out  # one leaked environment alone is several MiB


# --------------------------------------------------------------------------- 3. MPS.save

SAVE_CHILD = """
    import sys, numpy as np, mpsntk as mn
    path = sys.argv[1]
    models = [mn.MPS.random(64, 120, seed=s) for s in (1, 2)]   # about 15 MB each
    models[0].save(path)
    print("saved", flush=True)
    k = 1
    while True:
        models[k % 2].save(path)
        k += 1
"""


def test_a_kill_during_save_keeps_the_previous_model(tmp_path):
    """A child saves two large models alternately over one file and is killed at random
    moments; the file must always load as one of the two (the old save overwrote in place: a
    kill mid-write lost the model)."""
    path = str(tmp_path / "model.npz")
    expect = [mn.MPS.random(64, 120, seed=s) for s in (1, 2)]
    rng = np.random.default_rng(0)
    for _ in range(5):
        proc = start_child(SAVE_CHILD, path)
        try:
            wait_for(proc, "saved")
            time.sleep(rng.uniform(0.02, 0.4))
        finally:
            proc.kill()
            proc.wait()
        got = mn.MPS.load(path)
        assert any(all(np.array_equal(a, b) for a, b in zip(got.cores, m.cores)) for m in expect)
    assert all(p.name.startswith((".model.npz.", "model.npz")) for p in tmp_path.iterdir())


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from mpsntk import _io

    path = tmp_path / "model.npz"
    a = mn.MPS.random(5, 3, seed=1)
    assert a.save(path) == str(path)
    os.chmod(path, 0o640)

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write(path, broken)
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    assert np.array_equal(mn.MPS.load(path).cores[2], a.cores[2])
    b = mn.MPS.random(5, 3, seed=2)
    b.save(path)
    assert np.array_equal(mn.MPS.load(path).cores[2], b.cores[2])
    assert (os.stat(path).st_mode & 0o777) == 0o640  # the file's permissions carry over
    if POSIX:  # through a symbolic link: the link stays, its target is replaced
        link = tmp_path / "link.npz"
        link.symlink_to(path)
        a.save(link)
        assert link.is_symlink() and np.array_equal(mn.MPS.load(path).cores[2], a.cores[2])


# --------------------------------------------------------------------------- 4. ntk(out=memmap)

MEMMAP_CHILD = """
    import sys, numpy as np, mpsntk as mn
    path, n = sys.argv[1], int(sys.argv[2])
    mn.set_num_threads(1)
    mps = mn.MPS.random(48, 48, seed=0)
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(n, 48)))
    out = np.lib.format.open_memmap(path, mode="r+")
    print("ready", flush=True)
    mn.ntk(mps, phi, out=out, tile=64)
    print("done", flush=True)
"""


def test_an_interrupted_ntk_into_a_memmap_is_visibly_incomplete(tmp_path):
    """The file held a stale kernel; a child killed while writing a new one into it must leave
    NaN wherever it had not written (every other entry final), not a plausible mix."""
    n = 3000
    path = str(tmp_path / "theta.npy")
    stale = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n, n))
    stale[:] = 1.0
    stale.flush()
    del stale
    proc = start_child(MEMMAP_CHILD, path, n)
    try:
        wait_for(proc, "ready")
        # Kill it once the first tile is written and the last is not: mid-way.
        theta = np.load(path, mmap_mode="r")
        deadline = time.monotonic() + 120
        while not (np.isfinite(theta[0, 0]) and theta[0, 0] != 1.0 and np.isnan(theta[-1, -1])):
            assert proc.poll() is None, "the child finished first (or never filled out with NaN)"
            assert time.monotonic() < deadline
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
    theta = np.load(path, mmap_mode="r")
    missing = np.isnan(theta)
    assert missing.any(), "the killed call left no trace"
    assert not (theta == 1.0).any()  # no stale entry survives
    mps = mn.MPS.random(48, 48, seed=0)
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(n, 48)))
    rows = np.r_[0:8, n - 8:n]
    want = mn.ntk(mps, phi[rows], phi)
    written = ~missing[rows]
    assert written.any()
    np.testing.assert_allclose(theta[rows][written], want[written], rtol=1e-10)


def test_a_finished_ntk_into_out_has_no_nan_and_mean_is_written_once(tmp_path):
    mps = mn.MPS.random(6, 4, n_outputs=3, seed=0)
    phi = mn.features.trig(np.random.default_rng(1).uniform(size=(40, 6)))
    out = np.lib.format.open_memmap(str(tmp_path / "k.npy"), mode="w+", dtype=np.float64,
                                    shape=(40, 40))
    res = mn.ntk(mps, phi, out=out, outputs="mean", tile=8)
    assert res is out and not np.isnan(out).any()
    np.testing.assert_allclose(out, mn.ntk(mps, phi) / 3, rtol=1e-12)


# --------------------------------------------------------------------------- 5. callbacks


def test_callbacks_get_frozen_snapshots_of_each_step():
    rng = np.random.default_rng(0)
    phi = mn.features.trig(rng.uniform(size=(12, 5)))
    y = rng.standard_normal(12)
    mps = mn.MPS.random(5, 4, seed=1)
    kept = {}

    def keep(step, model):
        kept[step] = model
        with pytest.raises(ValueError, match="read-only"):
            model.cores[0][...] = 0.0  # a callback cannot alter the training
        return None

    res = mn.train(mps, phi, y, learning_rate=0.1, n_steps=6, log_every=3, callbacks=keep)
    assert sorted(kept) == [0, 3, 6]
    for step, snap in kept.items():
        want = mn.train(mps, phi, y, learning_rate=0.1, n_steps=step).mps if step else mps
        assert all(np.array_equal(a, b) for a, b in zip(snap.cores, want.cores)), step
    assert all(np.array_equal(a, b) for a, b in zip(kept[6].cores, res.mps.cores))
    assert not np.array_equal(kept[0].cores[0], res.mps.cores[0])


# --------------------------------------------------------------------------- 6. non-finite results


def test_normalised_ntk_that_overflows_float32_raises():
    mps = mn.MPS.random(4, 3, seed=0, dtype=np.float32)
    phi = np.full((3, 4, 2), 1e20, dtype=np.float32)  # u . u' = 2e40 overflows float32
    with pytest.raises(FloatingPointError, match="normalised NTK overflows the range of float32"):
        mn.ntk(mps, phi, normalized=True)
    tilde, _, _ = mn.ntk(mps, phi / np.float32(1e20), normalized=True)
    assert np.all(np.isfinite(tilde))


@pytest.mark.parametrize("scale", [1e-30, 1e-45, 1e-60, 1e35, 1e45])
def test_log_forward_of_float32_models_with_extreme_scales(scale):
    """f is far outside float32 but its log is not: log_forward in float32 must agree with
    float64 (the scales used to be cast to float32 first: -inf, NaN)."""
    m64 = mn.MPS.random(10, 3, seed=0)
    m64 = mn.MPS(m64.cores, scales=np.full(10, scale))
    m32 = mn.MPS([c.astype(np.float32) for c in m64.cores], scales=m64.scales)
    phi = mn.features.trig(np.random.default_rng(1).uniform(size=(4, 10)), dtype=np.float32)
    s32, l32 = m32.log_forward(phi)
    s64, l64 = m64.log_forward(phi.astype(np.float64))
    assert np.array_equal(s32, s64)
    np.testing.assert_allclose(l32, l64, rtol=1e-6)
    f_tiny = mn.MPS(m64.cores, scales=np.full(10, 1.0))(phi.astype(np.float64))
    np.testing.assert_allclose(np.exp(l64 - 10 * np.log(scale)), np.abs(f_tiny), rtol=1e-12)


@pytest.mark.parametrize("scale", [1e-25, 1e-60, 1e30])
def test_normalised_ntk_of_float32_models_with_extreme_scales(scale):
    """The site weights c_j^2 leave float32 long before the kernel's log-scales do: the
    normalised float32 kernel must agree with float64 (it used to be zeros, subnormals or an
    overflow)."""
    m64 = mn.MPS.random(10, 3, seed=0)
    m64 = mn.MPS(m64.cores, scales=np.full(10, scale))
    m32 = mn.MPS([c.astype(np.float32) for c in m64.cores], scales=m64.scales)
    phi = mn.features.trig(np.random.default_rng(1).uniform(size=(5, 10)))
    t64, a64, b64 = mn.ntk(m64, phi, phi[:3], normalized=True)
    t32, a32, b32 = mn.ntk(m32, phi.astype(np.float32), phi[:3].astype(np.float32),
                           normalized=True)
    shift = (a32 - a64)[:, None] + (b32 - b64)[None, :]
    np.testing.assert_allclose(t32 * np.exp(shift), t64, rtol=1e-5, atol=1e-5 * np.abs(t64).max())


def _scaled(mps, alpha):
    """The model with every scale times alpha: f, J, J t scale by alpha^N, Theta by alpha^2N."""
    return mn.MPS(mps.cores, mps.boundary, scales=mps.scales * alpha, site_lr=mps.site_lr,
                  output_site=mps.output_site)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["open", "periodic", "multi"])
def test_vjp_jvp_ntk_vp_underflow_raises_and_normalised_forms_are_exact(dtype, kind):
    """A chain whose outputs lie far below the dtype's range: the plain vjp, jvp and ntk_vp
    raise (they used to return zeros or subnormals), and the normalised forms equal those of
    the same model at a moderate scale, shifted by N log(alpha)."""
    rng = np.random.default_rng(3)
    kw = {"open": {}, "periodic": {"boundary": "periodic"}, "multi": {"n_outputs": 3}}[kind]
    base = mn.MPS.random(12, 4, seed=2, dtype=dtype, **kw)
    N = base.n_sites
    tiny = np.finfo(dtype).tiny
    log_alpha = (np.log(tiny) - 40) / N  # f ~ alpha^N: e^-40 below the smallest normal
    far = _scaled(base, np.exp(log_alpha))
    phi = mn.features.trig(rng.uniform(size=(9, N)), dtype=dtype)
    out_shape = (9,) if base.output_site is None else (9, 3)
    cot = rng.standard_normal(out_shape).astype(dtype)
    v = rng.standard_normal(out_shape + (2,)).astype(dtype)
    tangents = [rng.standard_normal(c.shape).astype(dtype) for c in base.cores]
    tol = 1e-10 if dtype == np.float64 else 2e-4

    def close(a, log_a, b, shift):
        a = np.asarray(a, np.float64) * np.exp(np.asarray(log_a) - shift)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())

    with pytest.raises(FloatingPointError, match="vjp underflows.*normalized=True"):
        mn.vjp(far, phi, cot)
    grads, glog = mn.vjp(far, phi, cot, normalized=True)
    assert glog.shape == (N,)
    for g, lg, want in zip(grads, glog, mn.vjp(base, phi, cot)):
        close(g, lg, want, N * log_alpha)

    with pytest.raises(FloatingPointError, match="jvp underflows.*normalized=True"):
        mn.jvp(far, phi, tangents)
    out, olog = mn.jvp(far, phi, tangents, normalized=True)
    assert olog.shape == (9,) and out.shape == out_shape
    close(out, olog.reshape((9,) + (1,) * (out.ndim - 1)), mn.jvp(base, phi, tangents),
          N * log_alpha)

    with pytest.raises(FloatingPointError, match="Theta v underflows.*normalized=True"):
        mn.ntk_vp(far, phi, v)
    tv, tlog = mn.ntk_vp(far, phi, v, normalized=True)
    assert tlog.shape == (9, 2) and tv.shape == v.shape
    expand = tlog[:, None, :] if base.output_site is not None else tlog
    close(tv, expand, mn.ntk_vp(base, phi, v), 2 * N * log_alpha)
    tv1, tlog1 = mn.ntk_vp(far, phi, v[..., 0], normalized=True)  # no column axis
    assert tlog1.shape == (9,)


def test_normalised_forms_of_a_moderate_model_agree_with_the_plain_ones():
    rng = np.random.default_rng(4)
    mps = mn.MPS.random(5, 3, seed=1, n_outputs=2)
    phi = mn.features.trig(rng.uniform(size=(6, 5)))
    cot = rng.standard_normal((6, 2))
    grads, glog = mn.vjp(mps, phi, cot, normalized=True)
    for g, lg, want in zip(grads, glog, mn.vjp(mps, phi, cot)):
        np.testing.assert_allclose(g * np.exp(lg), want, rtol=1e-12, atol=1e-14)
        # coefficients in [-1, 1], environment rows and trig features with entries <= 1
        assert np.abs(g).max() <= phi.shape[0]
    zero, zlog = mn.vjp(mps, phi, np.zeros((6, 2)), normalized=True)
    assert all(not z.any() for z in zero) and not zlog.any()
    assert all(not z.any() for z in mn.vjp(mps, phi, np.zeros((6, 2))))  # zero is no underflow


# --------------------------------------------------------------------------- 7. Ctrl-C

SIGINT_CHILD = """
    import signal, sys, time, numpy as np, mpsntk as mn
    signal.signal(signal.SIGINT, signal.default_int_handler)
    op, n = sys.argv[1], int(sys.argv[2])
    mps = mn.MPS.random(64, 64, seed=0)
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(n, 64)))
    print("ready", flush=True)
    try:
        if op == "ntk":
            mn.ntk(mps, phi)
        else:
            mn.ntk_vp(mps, phi, np.ones((n, 8)))
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    # the engine is usable again after the interruption
    print("after", mn.ntk(mps, phi[:3]).shape, flush=True)
"""


@pytest.mark.skipif(not POSIX, reason="needs POSIX signals")
@pytest.mark.parametrize("op, n", [("ntk", 6000), ("ntk_vp", 2500)])
def test_ctrl_c_interrupts_a_long_call_promptly(op, n):
    """The calls take several seconds; SIGINT in the middle must raise KeyboardInterrupt within
    half a second of the signal (it used to wait for the end of the call)."""
    proc = start_child(SIGINT_CHILD, op, n)
    try:
        wait_for(proc, "ready")
        time.sleep(0.5)  # inside the engine (the calls take seconds)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().strip()
        delay = time.monotonic() - sent
        rest = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert line == "interrupted", (line, proc.stderr.read() if proc.stderr else "")
    assert delay < 0.5, delay
    assert "after (3, 3)" in rest


# --------------------------------------------------------------------------- 8. huge sizes


@needs_linux
def test_a_huge_model_is_refused_at_once_under_a_memory_limit():
    """MPS.random(10**7, 2) needs several GiB: under ``ulimit -v`` it is refused before any
    allocation, with the size (it used to run for half a minute into a bare MemoryError)."""
    res = child("""
        import resource, time, mpsntk as mn
        with open("/proc/self/status") as f:
            vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))
        t = time.perf_counter()
        try:
            mn.MPS.random(10**7, 2)
            print("built")
        except ValueError as exc:
            print(f"{time.perf_counter() - t:.2f}", exc)
    """, timeout=120)
    assert res.returncode == 0, res.stderr
    seconds, _, msg = res.stdout.strip().partition(" ")
    assert float(seconds) < 2.0, res.stdout
    assert "10000000 sites" in msg and "GiB" in msg, msg


# --------------------------------------------------------------------------- 9. checkpoints

TRAIN_CHILD = """
    import sys, numpy as np, mpsntk as mn
    sys.path.insert(0, sys.argv[2])
    from test_faults import sgd_problem
    mps, phi, y, kw = sgd_problem()

    def report(step, model):
        print("step", step, flush=True)
        return {"w0": float(model.cores[0].sum())}

    mn.train(mps, phi, y, **kw, callbacks=report, checkpoint=sys.argv[1], checkpoint_every=7)
    print("finished", flush=True)
"""


def sgd_problem():
    rng = np.random.default_rng(5)
    phi = mn.features.trig(rng.uniform(size=(60, 8)))
    y = rng.standard_normal(60)
    kw = dict(learning_rate=0.05, n_steps=1500, batch_size=16, seed=11, probe=phi[:4],
              log_every=5)
    return mn.MPS.random(8, 6, seed=3), phi, y, kw


def test_a_killed_sgd_run_resumes_bit_for_bit(tmp_path):
    """A child trains with checkpoints and is killed mid-run; resuming from its last checkpoint
    gives the model and the whole logged history of the uninterrupted run, bit for bit."""
    path = str(tmp_path / "run.ckpt.npz")
    proc = start_child(TRAIN_CHILD, path, os.path.dirname(__file__))
    try:
        while int(wait_for(proc, "step")) < 40:
            pass
        time.sleep(np.random.default_rng().uniform(0.0, 0.2))
    finally:
        proc.kill()
        proc.wait()
    mps, phi, y, kw = sgd_problem()

    def report(step, model):
        return {"w0": float(model.cores[0].sum())}

    done = mn.MPS.load(path)  # a checkpoint is also an MPS file
    assert done.n_sites == 8
    resumed = mn.train(mps, phi, y, **kw, callbacks=report, resume=path)
    whole = mn.train(mps, phi, y, **kw, callbacks=report)
    assert all(np.array_equal(a, b) for a, b in zip(resumed.mps.cores, whole.mps.cores))
    assert np.array_equal(resumed.steps, whole.steps)
    assert np.array_equal(resumed.loss, whole.loss)
    assert np.array_equal(resumed.probe_outputs, whole.probe_outputs)
    assert resumed.callbacks == whole.callbacks


@pytest.mark.parametrize("loss", ["cross_entropy", "born_nll"])
def test_other_losses_resume_bit_for_bit(tmp_path, loss):
    rng = np.random.default_rng(6)
    if loss == "born_nll":
        mps = mn.MPS.random(6, 4, seed=1)
        data, y = mn.datasets.random_patterns(6, 12, seed=2), None
        kw = dict(learning_rate=0.5, n_steps=9, log_every=2, feature_scale=2**-0.5,
                  probe=data[:3])
    else:
        mps = mn.MPS.random(6, 4, n_outputs=3, seed=1)
        data = mn.features.trig(rng.uniform(size=(12, 6)))
        y = rng.integers(0, 3, 12)
        kw = dict(learning_rate=0.5, n_steps=9, log_every=2, batch_size=5, seed=4)

    def stop(step, model):
        if step == 6:
            raise KeyboardInterrupt  # between two checkpoints (every 4 steps)

    path = tmp_path / "c.npz"
    with pytest.raises(KeyboardInterrupt):
        mn.train(mps, data, y, loss=loss, **kw, callbacks=stop, checkpoint=path,
                 checkpoint_every=4)
    got = mn.train(mps, data, y, loss=loss, **kw, resume=path)
    want = mn.train(mps, data, y, loss=loss, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(got.mps.cores, want.mps.cores))
    assert np.array_equal(got.loss, want.loss) and np.array_equal(got.steps, want.steps)
    if "probe" in kw:
        assert np.array_equal(got.probe_outputs, want.probe_outputs)


def test_resume_rejects_another_run_and_continues_a_finished_one(tmp_path):
    mps, phi, y, kw = sgd_problem()
    kw = {**kw, "n_steps": 20}
    path = tmp_path / "c.npz"
    first = mn.train(mps, phi, y, **kw, checkpoint=path, checkpoint_every=8)
    with pytest.raises(ValueError, match="other data"):
        mn.train(mps, phi, y + 1, **kw, resume=path)
    with pytest.raises(ValueError, match="other initial_cores"):
        mn.train(mn.MPS.random(8, 6, seed=4), phi, y, **kw, resume=path)
    with pytest.raises(ValueError, match="other learning_rate"):
        mn.train(mps, phi, y, **{**kw, "learning_rate": 0.04}, resume=path)
    with pytest.raises(ValueError, match="n_steps must be >= the checkpoint's step 20"):
        mn.train(mps, phi, y, **{**kw, "n_steps": 10}, resume=path)
    longer = mn.train(mps, phi, y, **{**kw, "n_steps": 30}, resume=path)
    assert longer.steps[-1] == 30 and np.array_equal(longer.loss[:len(first.loss)], first.loss)
    with pytest.raises(FileNotFoundError):
        mn.train(mps, phi, y, **kw, resume=tmp_path / "missing.npz")


# --------------------------------------------------------------------------- 10. threads


@needs_linux
def test_set_num_threads_is_process_wide():
    """Set in one Python thread, the count holds in every other one, and the engine's regions
    started from another thread use it (OpenMP's own setting is per calling thread)."""
    res = child("""
        import os, threading, time, numpy as np, mpsntk as mn
        k = (os.cpu_count() or 1) + 2           # not OpenMP's default
        mn.set_num_threads(k)
        seen = []
        t = threading.Thread(target=lambda: seen.append(mn.get_num_threads()))
        t.start(); t.join()
        mps = mn.MPS.random(32, 32, seed=0)
        phi = mn.features.trig(np.random.default_rng(0).uniform(size=(2000, 32)))
        base = len(os.listdir("/proc/self/task"))  # this thread, and e.g. BLAS threads
        done = threading.Event()
        def work():
            mn.ntk(mps, phi)
            done.set()
        w = threading.Thread(target=work)
        w.start()
        peak = 0
        while not done.is_set():
            peak = max(peak, len(os.listdir("/proc/self/task")))
            time.sleep(0.005)
        w.join()
        setter = threading.Thread(target=mn.set_num_threads, args=(1,))
        setter.start(); setter.join()
        print(k, seen[0], peak - base, mn.get_num_threads())
    """, timeout=180)
    assert res.returncode == 0, res.stderr
    k, seen, extra, after = map(int, res.stdout.split())
    assert seen == k and after == 1
    assert extra == k, (extra, k)  # the worker thread and its k - 1 OpenMP threads


def test_engine_calls_from_several_threads_agree(threads_restored):
    mps = mn.MPS.random(10, 8, seed=0)
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(120, 10)))
    want = mn.ntk(mps, phi)
    mn.set_num_threads(2)
    results = [None] * 4

    def work(i):
        results[i] = mn.ntk(mps, phi)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, want) for r in results)


def test_compare_mse_and_train_share_the_default_reduction():
    import inspect

    from mpsntk.compare import compare_mse

    def default(fn):
        return inspect.signature(fn).parameters["reduction"].default

    assert default(compare_mse) == default(mn.train) == "mean"
    rng = np.random.default_rng(0)
    phi = mn.features.trig(rng.uniform(size=(8, 4)))
    y = rng.standard_normal(6)
    mps = mn.MPS.random(4, 4, seed=0)
    c = compare_mse(mps, phi[:6], y, phi[6:], learning_rate=0.1, n_steps=3)
    t = mn.train(mps, phi[:6], y, learning_rate=0.1, n_steps=3)
    assert np.array_equal(c.result.loss, t.loss)
