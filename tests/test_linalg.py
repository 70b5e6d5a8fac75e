"""Matrix-free kernel methods (mpsntk.linalg) against dense references.

The oracles: the explicit-Jacobian kernel of ``mpsntk._reference`` (operator, diagonal, cross
products), ``numpy.linalg.solve`` (CG), ``numpy.linalg.eigvalsh`` (Lanczos eigenvalues), the
dense eigendecomposition path of ``mpsntk.dynamics`` (Krylov trajectories), and dense
computations of the Nystrom approximation's residual and of the preconditioned spectrum.

Tolerances.  Products are single engine passes: 1e-12 relative in float64 (the engine's
contract).  Iterative results carry their own stopping tolerance ``rtol``: a CG solution with
relative residual ``r`` is within ``kappa * r`` of the exact one (``kappa`` the condition number
of ``Theta + reg I``, computed here densely), and a Lanczos trajectory stops when successive
iterates agree to ``rtol`` relative to ``||f_0 - Y||``; on these small problems Lanczos reaches
an invariant subspace or machine precision, so the trajectories are compared at 1e-9 relative to
the scale of the outputs.
"""

from __future__ import annotations

import contextlib
import sys
import types
import warnings

import numpy as np
import pytest

import mpsntk as mn
from mpsntk import _reference as ref
from mpsntk import _validate, dynamics, linalg

import sim_cupy
from conftest import random_features, random_model, relerr

pytest.importorskip("scipy")


def _flat_kernel(mps, phi1, phi2=None):
    """The output-resolved kernel as a (n1 C, n2 C) matrix, from the explicit Jacobian."""
    full = ref.ntk(mps, phi1, phi2, outputs="full")
    if mps.output_site is None:
        return full
    n1, n2, C, _ = full.shape
    return full.transpose(0, 2, 1, 3).reshape(n1 * C, n2 * C)


MODELS = [  # bonds, boundary, output site, outputs
    ([1, 3, 4, 2, 3, 1], "open", None, 1),
    ([1, 2, 3, 3, 1], "open", 2, 3),
    ([2, 3, 2, 4, 2], "periodic", None, 1),
    ([2, 2, 3, 2], "periodic", 1, 2),
]


def _model(spec, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    bonds, boundary, osite, nout = spec
    mps = random_model(rng, bonds, boundary=boundary, output_site=osite, n_outputs=nout,
                       dtype=dtype)
    return rng, mps


# ---------------------------------------------------------------------------
# the operator
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", MODELS)
def test_operator_matches_the_dense_kernel(spec):
    rng, mps = _model(spec)
    phi = random_features(rng, 23, mps.n_sites)
    op = linalg.ntk_operator(mps, phi, block_size=5)  # blocks of 5, 5, 5, 5, 3
    K = _flat_kernel(mps, phi)
    N = K.shape[0]
    assert op.shape == (N, N) and op.dtype == np.float64
    assert op.vector_shape == ((23,) if mps.output_site is None else (23, mps.n_outputs))
    v = rng.standard_normal(N)
    V = rng.standard_normal((N, 3))
    assert relerr(op.matvec(v), K @ v) < 1e-12
    assert relerr(op.rmatvec(v), K @ v) < 1e-12
    assert relerr(op @ V, K @ V) < 1e-12
    assert relerr(op.matmat(V), K @ V) < 1e-12
    assert relerr(op.H @ v, K @ v) < 1e-12
    assert relerr(op.apply(v.reshape(op.vector_shape)), (K @ v).reshape(op.vector_shape)) < 1e-12
    assert relerr(op.diagonal(), np.diag(K)) < 1e-12
    assert abs(op.trace() - np.trace(K)) < 1e-12 * np.trace(K)
    idx = np.array([7, 0, 22])
    cols = np.concatenate([np.arange(i * mps.n_outputs, (i + 1) * mps.n_outputs) for i in idx])
    assert relerr(op.columns(idx), K[:, cols]) < 1e-12
    assert op.n_products == 1 + 1 + 3 + 3 + 1 + 1 + idx.size * mps.n_outputs


def test_float32_solvers():
    _, mps, phi, _, K, y = _regression_problem(n=60)
    m32 = mps.with_cores([c.astype(np.float32) for c in mps.cores])
    op = linalg.ntk_operator(m32, phi.astype(np.float32))
    K32 = _flat_kernel(m32, phi.astype(np.float32).astype(np.float64))
    reg = 1e-3 * np.trace(K32) / 60
    with pytest.raises(ValueError, match=r"rtol must lie in \[1.19e-07, 1\)"):
        linalg.kernel_regression(op, y.astype(np.float32), reg, rtol=1e-8)
    res = linalg.kernel_regression(op, y.astype(np.float32), reg, rtol=1e-4, rank=20)
    assert res.alpha.dtype == np.float32 and res.converged
    # float32 products round at eps ||A|| ||alpha|| / ||y||: the attainable residual
    A = K32 + reg * np.eye(60)
    floor = np.finfo(np.float32).eps * np.linalg.norm(A, 2) * np.linalg.norm(res.alpha)
    true_res = np.linalg.norm(y - A @ res.alpha) / np.linalg.norm(y)
    assert true_res < 1.5e-4 + 10 * floor / np.linalg.norm(y)
    exact = np.linalg.solve(A, y)
    assert relerr(res.alpha, exact) < np.linalg.cond(A) * (1.5e-4 + 10 * floor / np.linalg.norm(y))
    t = np.array([0.0, 2.0])
    got = linalg.gradient_descent_mse(op, y.astype(np.float32), 1.0)(t, np.float32(0).item())
    want = dynamics.gradient_descent_mse(K32, y, 1.0)(t, 0.0)
    assert got.dtype == np.float32 and relerr(got, want) < 1e-4


def test_operator_float32():
    rng, mps = _model(MODELS[1], dtype=np.float32)
    phi = random_features(rng, 17, mps.n_sites, dtype=np.float32)
    op = linalg.ntk_operator(mps, phi)
    K = _flat_kernel(mps, phi.astype(np.float64))
    v = rng.standard_normal(K.shape[0]).astype(np.float32)
    out = op @ v
    assert out.dtype == np.float32 and relerr(out, K @ v) < 1e-5
    with pytest.raises(TypeError, match="dtype"):
        op @ v.astype(np.float64)


@pytest.mark.parametrize("spec", MODELS[:2])
def test_cross_products_and_diagonal(spec):
    rng, mps = _model(spec, seed=1)
    phi1, phi2 = random_features(rng, 9, mps.n_sites), random_features(rng, 14, mps.n_sites)
    K12 = _flat_kernel(mps, phi1, phi2)
    C = mps.n_outputs
    shape2 = (14,) if mps.output_site is None else (14, C)
    v = rng.standard_normal(shape2)
    V = rng.standard_normal(shape2 + (2,))
    want = (K12 @ v.reshape(-1)).reshape((9,) + shape2[1:])
    assert relerr(linalg.cross_ntk_vp(mps, phi1, phi2, v, block_size=4), want) < 1e-12
    got = linalg.cross_ntk_vp(mps, phi1, phi2, V)
    assert relerr(got, (K12 @ V.reshape(-1, 2)).reshape((9,) + shape2[1:] + (2,))) < 1e-12
    op = linalg.ntk_operator(mps, phi2, block_size=3)
    assert relerr(op.cross_matvec(phi1, v), want) < 1e-12
    diag = np.diag(_flat_kernel(mps, phi1)).reshape((9,) + shape2[1:])
    assert relerr(linalg.ntk_diagonal(mps, phi1, block_size=2), diag) < 1e-12


# ---------------------------------------------------------------------------
# conjugate gradients
# ---------------------------------------------------------------------------


def _regression_problem(n=120, seed=3, n_outputs=1):
    """Structured inputs (a smooth map of a 1-D latent variable): a kernel with a fast-decaying
    spectrum, ill-conditioned at a small ridge, as in the benchmark."""
    rng = np.random.default_rng(seed)
    kw = {"output_site": 2, "n_outputs": n_outputs} if n_outputs > 1 else {}
    mps = mn.MPS.random(n_sites=6, bond_dim=4, seed=seed, **kw)
    u = rng.uniform(size=(n, 1))
    phi = mn.features.trig(0.5 + 0.3 * np.sin(u * rng.normal(size=6) * 6 + rng.uniform(0, 6, 6)))
    op = linalg.ntk_operator(mps, phi, block_size=50)
    K = _flat_kernel(mps, phi)
    y = rng.standard_normal(op.vector_shape)
    return rng, mps, phi, op, K, y


def _check_solution(K, reg, y, alpha, residual, rtol):
    """alpha against numpy.linalg.solve, and the reported residual against a dense one."""
    A = K + reg * np.eye(K.shape[0])
    B = y.reshape(K.shape[0], -1)
    X = np.asarray(alpha).reshape(B.shape)
    kappa = np.linalg.cond(A)
    true_res = np.linalg.norm(B - A @ X, axis=0) / np.linalg.norm(B, axis=0)
    assert np.all(true_res <= 1.5 * rtol)  # the recurrence's residual drifts by ~eps kappa
    # both residuals carry the rounding of one product, eps ||A|| ||X|| / ||B||
    noise = 100 * np.finfo(float).eps * np.linalg.norm(A, 2) * np.linalg.norm(X, axis=0)
    np.testing.assert_allclose(np.atleast_1d(residual), true_res, rtol=1e-3,
                               atol=np.max(noise / np.linalg.norm(B, axis=0)))
    exact = np.linalg.solve(A, B)
    err = np.linalg.norm(X - exact, axis=0) / np.linalg.norm(exact, axis=0)
    assert np.all(err <= kappa * 1.5 * rtol)
    return kappa


@pytest.mark.parametrize("preconditioner", [None, "jacobi", "nystrom"])
def test_cg_matches_numpy_solve(preconditioner):
    _, _, _, op, K, y = _regression_problem()
    reg = 1e-4 * np.trace(K) / K.shape[0]
    res = linalg.kernel_regression(op, y, reg, rtol=1e-10, preconditioner=preconditioner,
                                   rank=40, maxiter=2000)
    assert res.converged and res.alpha.shape == y.shape
    assert res.residual_history.shape == (res.n_iter + 1,)
    assert res.residual_history[0] == 1.0 and res.residual_history[-1] <= 1e-10
    kappa = _check_solution(K, reg, y, res.alpha, res.residual, 1e-10)
    assert kappa > 1e4  # a problem that needs the preconditioner
    # products: the preconditioner's columns, one per iteration, one to verify
    assert res.n_products == res.setup_products + res.n_iter + 1


def test_nystrom_preconditioner_cuts_iterations():
    _, _, _, op, K, y = _regression_problem()
    reg = 1e-4 * np.trace(K) / K.shape[0]
    counts = {}
    for pc in (None, "jacobi", "nystrom"):
        counts[pc] = linalg.kernel_regression(op, y, reg, rtol=1e-8, preconditioner=pc, rank=40,
                                              maxiter=2000, seed=0).n_iter
    assert counts["nystrom"] <= 20
    assert counts["nystrom"] * 5 < counts[None]
    assert counts["nystrom"] * 5 < counts["jacobi"]


def test_nystrom_factor_against_dense():
    _, _, _, op, K, _ = _regression_problem()
    pre = linalg.nystrom_preconditioner(op, 12, seed=1)  # below the numerical rank (21)
    assert pre.rank == 12 and pre.pivots.size == 12 and np.unique(pre.pivots).size == 12
    Q = pre.basis
    np.testing.assert_allclose(Q.T @ Q, np.eye(12), atol=1e-12)
    approx = Q @ pre.rotation @ np.diag(pre.eigenvalues) @ pre.rotation.T @ Q.T
    # The Nystrom approximation on the pivots: K(:, S) K(S, S)^+ K(S, :)
    S = pre.pivots
    nys = K[:, S] @ np.linalg.pinv(K[np.ix_(S, S)], rcond=1e-13) @ K[S, :]
    assert relerr(approx, nys) < 1e-8
    E = K - approx
    assert np.linalg.eigvalsh(E)[0] > -1e-10 * np.trace(K)  # the residual is PSD
    assert abs(pre.residual_trace - np.trace(E)) < 1e-8 * np.trace(K)
    assert abs(pre.trace - np.trace(K)) < 1e-12 * np.trace(K)
    # preconditioned spectrum inside [1, condition_bound]
    reg = 1e-3 * np.trace(K) / K.shape[0]
    P = approx + reg * np.eye(K.shape[0])
    w, U = np.linalg.eigh(P)
    p_half = U @ np.diag(w**-0.5) @ U.T
    ev = np.linalg.eigvalsh(p_half @ (K + reg * np.eye(K.shape[0])) @ p_half)
    assert ev[0] > 1 - 1e-8 and ev[-1] < pre.condition_bound(reg) * (1 + 1e-8)
    r = np.random.default_rng(0).standard_normal((K.shape[0], 2))
    assert relerr(pre.apply(r, reg), np.linalg.solve(P, r)) < 1e-10
    # a full-rank factor is the kernel itself
    full = linalg.nystrom_preconditioner(op, 10_000, seed=0)
    assert full.rank <= K.shape[0] and full.residual_trace < 1e-8 * np.trace(K)


def test_multi_output_and_several_right_hand_sides():
    _, _, _, op, K, y = _regression_problem(n=40, n_outputs=3)
    reg = 1e-3 * np.trace(K) / K.shape[0]
    res = linalg.kernel_regression(op, y, reg, rtol=1e-10, rank=60)
    assert res.alpha.shape == (40, 3) and res.converged
    _check_solution(K, reg, y, res.alpha, res.residual, 1e-10)
    _, _, phi, op1, K1, _ = _regression_problem(n=60, seed=5)
    Y = np.random.default_rng(1).standard_normal((60, 3))
    Y[:, 2] = 0.0  # a zero right-hand side: alpha = 0 at once
    res = linalg.kernel_regression(op1, Y, 0.01, rtol=1e-10, rank=20)
    assert res.alpha.shape == (60, 3) and res.residual_history.shape == (res.n_iter + 1, 3)
    assert np.all(res.alpha[:, 2] == 0)
    _check_solution(K1, 0.01, Y[:, :2], res.alpha[:, :2], res.residual[:2], 1e-10)
    # prediction: Theta(X*, X) alpha
    rng = np.random.default_rng(9)
    phit = mn.features.trig(rng.uniform(size=(7, 6)))
    want = _flat_kernel(op1.mps, phit, phi) @ res.alpha
    assert relerr(res.predict(phit), want) < 1e-12


def test_warm_start_reuse_and_convergence_warning():
    _, _, _, op, K, y = _regression_problem()
    reg = 1e-4 * np.trace(K) / K.shape[0]
    first = linalg.kernel_regression(op, y, reg, rtol=1e-9, rank=40)
    # the exact answer as a warm start: no iteration
    again = linalg.kernel_regression(op, y, reg, rtol=1e-8, x0=first.alpha,
                                     preconditioner=first.preconditioner)
    assert again.n_iter == 0 and again.converged and again.setup_products == 0
    # a regularisation path: one factor for every reg
    reg2 = 1.2 * reg
    other = linalg.kernel_regression(op, y, reg2, rtol=1e-9, preconditioner=first.preconditioner)
    assert other.setup_products == 0
    _check_solution(K, reg2, y, other.alpha, other.residual, 1e-9)
    # warm starts from the neighbour (plain CG, whose iteration count shows it)
    cold = linalg.kernel_regression(op, y, reg2, rtol=1e-8, preconditioner=None, maxiter=2000)
    warm = linalg.kernel_regression(op, y, reg2, rtol=1e-8, preconditioner=None, maxiter=2000,
                                    x0=first.alpha)
    assert warm.residual_history[0] < 0.5 and warm.n_iter < cold.n_iter
    _check_solution(K, reg2, y, warm.alpha, warm.residual, 1e-8)
    with pytest.warns(linalg.ConvergenceWarning, match="did not converge"):
        bad = linalg.kernel_regression(op, y, reg, preconditioner=None, maxiter=3)
    assert not bad.converged and bad.n_iter == 3
    seen = []
    linalg.kernel_regression(op, y, reg, rank=40, callback=lambda i, r: seen.append((i, r)))
    assert [i for i, _ in seen] == list(range(1, len(seen) + 1))


# ---------------------------------------------------------------------------
# Krylov dynamics and the spectrum
# ---------------------------------------------------------------------------


def _dynamics_problem(n_outputs=1, n=30, duplicate=False):
    rng = np.random.default_rng(11)
    kw = {"output_site": 1, "n_outputs": n_outputs} if n_outputs > 1 else {}
    mps = mn.MPS.random(n_sites=5, bond_dim=3, seed=4, **kw)
    phi = mn.features.trig(rng.uniform(size=(n, 5)))
    if duplicate:
        phi[7] = phi[3]  # a singular kernel: its null space does not move
    phit = mn.features.trig(rng.uniform(size=(6, 5)))
    op = linalg.ntk_operator(mps, phi, block_size=11)
    return rng, mps, phi, phit, op, _flat_kernel(mps, phi), _flat_kernel(mps, phit, phi)


@pytest.mark.parametrize("n_outputs,columns", [(1, 0), (1, 2), (3, 0)])
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_trajectories_match_dense_dynamics(n_outputs, columns, discrete, loss):
    rng, mps, phi, phit, op, K, Kt = _dynamics_problem(n_outputs)
    shape = op.vector_shape + ((columns,) if columns else ())
    y = rng.standard_normal(shape)
    f0 = rng.standard_normal(shape)
    f0t = rng.standard_normal((6,) + shape[1:])
    N, k = K.shape[0], max(columns, 1)
    s = N * k if loss == "mean" else 1
    lam_max = np.linalg.eigvalsh(K)[-1]
    eta = 1.5 * s / lam_max if discrete else 3.0 * s / lam_max
    t = np.array([0, 1, 4, 30, 200]) if discrete else np.array([0.0, 0.5, 3.0, 40.0, 1e3])
    reg = 0.0 if discrete else 1e-3 * lam_max
    predict = linalg.gradient_descent_mse(op, y, eta, diag_reg=reg, loss=loss, discrete=discrete,
                                          rtol=1e-13)
    train, test, info = predict(t, f0, f0t, phit, return_info=True)
    assert info["converged"] and len(info["krylov_dim"]) == k
    # dense: the kernel of the flattened outputs, columns as the outputs of dynamics
    def flat(a, m):
        return a.reshape(m, k)

    dense = dynamics.gradient_descent_mse(K, flat(y, N), eta, diag_reg=reg, loss=loss,
                                          discrete=discrete)
    d_train, d_test = dense(t, flat(f0, N), flat(f0t, Kt.shape[0]), Kt)
    scale = np.abs(y).max() + np.abs(f0).max()
    assert train.shape == (t.size,) + shape and test.shape == (t.size,) + f0t.shape
    assert relerr(train.reshape(d_train.shape), d_train) * np.abs(d_train).max() < 1e-9 * scale
    assert np.abs(test.reshape(d_test.shape) - d_test).max() < 1e-9 * np.abs(d_test).max()
    # a scalar time gives the same as the array, without the time axis
    one = predict(30 if discrete else 3.0, f0)
    assert one.shape == shape and relerr(one, train[3 if discrete else 2]) < 1e-9


def test_singular_kernel_and_infinite_time():
    rng, mps, phi, phit, op, K, Kt = _dynamics_problem(duplicate=True)
    assert np.linalg.eigvalsh(K)[0] < 1e-12 * np.trace(K)
    y, f0 = rng.standard_normal(30), rng.standard_normal(30)
    f0t = rng.standard_normal(6)
    t = np.array([0.0, 2.0, 50.0, np.inf])
    predict = linalg.gradient_descent_mse(op, y, 2.0, loss="sum", rtol=1e-12, maxiter=60)
    train, test = predict(t, f0, f0t, phit)
    d_train, d_test = dynamics.gradient_descent_mse(K, y, 2.0, loss="sum")(t, f0, f0t, Kt)
    # t = inf is the pseudo-inverse: Lanczos resolves the smallest non-zero eigenvalue of this
    # problem (lam_min / lam_max ~ 1e-7 here), so agreement is looser than at finite times
    assert relerr(train[:3], d_train[:3]) < 1e-9 and relerr(test[:3], d_test[:3]) < 1e-9
    assert relerr(train[3], d_train[3]) < 1e-6 and relerr(test[3], d_test[3]) < 1e-6
    # e_7 - e_3 is a null vector (duplicated samples): that component of f_t - Y never moves
    np.testing.assert_allclose(train[:, 7] - train[:, 3], f0[7] - f0[3], rtol=0, atol=1e-9)


def test_expm_multiply_interoperates():
    from scipy.sparse.linalg import expm_multiply

    rng, _, _, _, op, K, _ = _dynamics_problem()
    v = rng.standard_normal(30)
    tau = 0.5 / np.linalg.eigvalsh(K)[-1]
    got = expm_multiply(-tau * op, v, traceA=-tau * op.trace())
    w, U = np.linalg.eigh(K)
    assert relerr(got, U @ (np.exp(-tau * w) * (U.T @ v))) < 1e-12


@pytest.mark.parametrize("spec", MODELS[:2])
def test_top_eigenvalues_match_eigvalsh(spec):
    rng, mps = _model(spec, seed=2)
    phi = random_features(rng, 40, mps.n_sites)
    op = linalg.ntk_operator(mps, phi)
    K = _flat_kernel(mps, phi)
    want = np.linalg.eigvalsh(K)[::-1][:5]
    vals = linalg.top_eigenvalues(op, 5)
    assert np.abs(vals - want).max() < 1e-12 * want[0]
    vals, vecs = linalg.top_eigenvalues(op, 3, return_eigenvectors=True)
    assert vecs.shape == op.vector_shape + (3,)
    flat = vecs.reshape(-1, 3)
    assert relerr(K @ flat, flat * vals) < 1e-10
    np.testing.assert_allclose(flat.T @ flat, np.eye(3), atol=1e-12)


# ---------------------------------------------------------------------------
# device path (CUDA engine, or its kernels on the SIMT simulator)
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _cupyx_standin():
    """cupyx.scipy.sparse.linalg for the simulator: SciPy's LinearOperator, whose contract
    cupyx's mirrors (the real cupyx base class itself needs a GPU)."""
    from scipy.sparse.linalg import LinearOperator

    names = ["cupyx", "cupyx.scipy", "cupyx.scipy.sparse", "cupyx.scipy.sparse.linalg"]
    mods = [types.ModuleType(n) for n in names]
    for parent, child, attr in zip(mods, mods[1:], ["scipy", "sparse", "linalg"]):
        setattr(parent, attr, child)
    mods[-1].LinearOperator = LinearOperator
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(dict(zip(names, mods)))
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                del sys.modules[n]
            else:
                sys.modules[n] = m


@pytest.fixture
def device():
    if mn.cuda_available():  # pragma: no cover - needs a GPU
        yield pytest.importorskip("cupy")
    elif sim_cupy.available():
        with sim_cupy.installed(), _cupyx_standin():
            yield sim_cupy
    else:  # pragma: no cover - the simulator is built on POSIX
        pytest.skip("no CUDA device and no simulator")


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def test_device_operator_cg_and_dynamics(device):
    cp = device
    _, mps, phi, _, K, y = _regression_problem(n=24, n_outputs=2)
    dev = mps.to_device()
    op = linalg.ntk_operator(dev, cp.asarray(phi), block_size=10)
    v = np.random.default_rng(0).standard_normal(K.shape[0])
    assert relerr(_host(op.matvec(cp.asarray(v))), K @ v) < 1e-12
    assert relerr(_host(op.diagonal()), np.diag(K)) < 1e-12
    reg = 1e-3 * np.trace(K) / K.shape[0]
    res = linalg.kernel_regression(op, cp.asarray(y), reg, rtol=1e-10, rank=20)
    assert isinstance(res.alpha, cp.ndarray) and res.converged
    _check_solution(K, reg, y, _host(res.alpha), res.residual, 1e-10)
    phit = mn.features.trig(np.random.default_rng(1).uniform(size=(5, 6)))
    pred = res.predict(cp.asarray(phit))
    assert isinstance(pred, cp.ndarray)
    assert relerr(_host(pred), (_flat_kernel(mps, phit, phi) @ _host(res.alpha).reshape(-1))
                  .reshape(5, 2)) < 1e-12
    predict = linalg.gradient_descent_mse(op, cp.asarray(y), 1.0, rtol=1e-12)
    got = predict(np.array([0.0, 5.0]), 0.0)
    want = dynamics.gradient_descent_mse(K, y.reshape(-1), 1.0)(np.array([0.0, 5.0]), 0.0)
    assert isinstance(got, cp.ndarray) and relerr(_host(got).reshape(2, -1), want) < 1e-9
    with pytest.raises(TypeError, match="CUDA device"):
        linalg.kernel_regression(op, y, reg)  # host targets for a device operator


# ---------------------------------------------------------------------------
# errors and the dense paths' refusals
# ---------------------------------------------------------------------------


def test_bad_input_is_named():
    rng, mps, phi, _, op, K, _ = _dynamics_problem()
    y = rng.standard_normal(30)
    with pytest.raises(TypeError, match="mps must be an mpsntk.MPS"):
        linalg.ntk_operator("model", phi)
    with pytest.raises(ValueError, match="block_size"):
        linalg.ntk_operator(mps, phi, block_size=0)
    with pytest.raises(TypeError, match="operator must be an NTKOperator"):
        linalg.kernel_regression(K, y, 1.0)
    with pytest.raises(ValueError, match="reg must be a positive"):
        linalg.kernel_regression(op, y, 0.0)
    with pytest.raises(ValueError, match=r"y must have shape \(30,\)"):
        linalg.kernel_regression(op, y[:5], 1.0)
    with pytest.raises(TypeError, match="y must have the model's dtype"):
        linalg.kernel_regression(op, y.astype(np.float32), 1.0)
    with pytest.raises(ValueError, match="y must be finite"):
        linalg.kernel_regression(op, np.full(30, np.nan), 1.0)
    with pytest.raises(ValueError, match="x0 must have the shape of y"):
        linalg.kernel_regression(op, y, 1.0, x0=np.zeros((30, 2)))
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        linalg.kernel_regression(op, y, 1.0, preconditioner="ilu")
    with pytest.raises(ValueError, match=r"rtol must lie in \[2.22e-16, 1\)"):
        linalg.kernel_regression(op, y, 1.0, rtol=2.0)
    with pytest.raises(ValueError, match="rtol must lie in"):
        linalg.gradient_descent_mse(op, y, rtol=1e-20)
    with pytest.raises(ValueError, match="k must be < n_samples"):
        linalg.top_eigenvalues(op, 30)
    with pytest.raises(ValueError, match="samples must lie in"):
        op.columns(np.array([30]))
    with pytest.raises(ValueError, match="dimension mismatch|x must have shape"):
        op @ np.ones(29)
    with pytest.raises(ValueError, match="learning_rate is too large"):
        lam = np.linalg.eigvalsh(K)[-1]
        linalg.gradient_descent_mse(op, y, 2.5 / lam, loss="sum", discrete=True)(3, 0.0)
    predict = linalg.gradient_descent_mse(op, y)
    with pytest.raises(ValueError, match="fx_test_0 and phi_test must be given together"):
        predict(1.0, 0.0, fx_test_0=0.0)
    with pytest.raises(ValueError, match=r"fx_train_0 must have shape \(30,\)"):
        predict(1.0, np.zeros(3))
    with pytest.raises(ValueError, match="t must be >= 0"):
        predict(-1.0, 0.0)
    with pytest.warns(linalg.ConvergenceWarning, match="Lanczos did not converge"):
        linalg.gradient_descent_mse(op, y, maxiter=2)(50.0, 0.0)


def test_dense_paths_name_the_matrix_free_one(monkeypatch):
    mps = mn.MPS.random(n_sites=4, bond_dim=3, seed=0)
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(2000, 4)))
    k = mn.ntk(mps, phi)
    # room for the engine's environments and tiles (~6 MB), not for a 32 MB kernel
    monkeypatch.setattr(_validate, "_available_memory", lambda: 10 * 2**20)
    with pytest.raises(ValueError, match=r"an NTK of shape \(2000, 2000\).*mpsntk\.linalg"):
        mn.ntk(mps, phi)
    with pytest.raises(ValueError, match=r"mpsntk\.linalg\.gradient_descent_mse"):
        dynamics.gradient_descent_mse(k, np.ones(2000))
    # the matrix-free path needs no n x n memory
    op = linalg.ntk_operator(mps, phi)
    assert relerr(op @ np.ones(2000), k @ np.ones(2000)) < 1e-12


def test_scipy_is_named_when_missing(monkeypatch):
    mps = mn.MPS.random(n_sites=3, bond_dim=2, seed=0)
    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(4, 3)))
    monkeypatch.setitem(sys.modules, "scipy.sparse.linalg", None)
    with pytest.raises(ImportError, match=r"pip install 'mpsntk\[linalg\]'"):
        linalg.ntk_operator(mps, phi)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert linalg.ntk_diagonal(mps, phi).shape == (4,)  # SciPy-free routines still run


@pytest.mark.parametrize("fits", [True, False])
def test_operator_keeps_environments_only_where_they_fit(monkeypatch, fits):
    """Environments of all blocks kept when they take at most a quarter of the free memory,
    contracted again per product otherwise: the same products either way."""
    from mpsntk._engine import HostEngine

    rng, mps = _model(MODELS[0])
    phi = random_features(rng, 13, mps.n_sites)
    per_sample = HostEngine().prepare_bytes(mps, 13, held=True) / 13
    free = 4 * per_sample * (20 if fits else 10)  # room for 20 or for 10 samples' environments
    monkeypatch.setattr(HostEngine, "free_bytes", staticmethod(lambda: free))
    op = linalg.ntk_operator(mps, phi, block_size=4)
    assert all(b.keep is fits for b in op._x.blocks)
    K = _flat_kernel(mps, phi)
    v = rng.standard_normal(K.shape[0])
    for _ in range(2):
        assert relerr(op.matvec(v), K @ v) < 1e-12
    assert all((b._prepared is not None) is fits for b in op._x.blocks)
