"""Slow, explicit reference implementations (oracles) for MPS models.

Every routine here favours clarity over speed: loops over samples, outputs and
sites with dense matrix products, and a dense Jacobian. They serve as the
ground truth that fast paths are compared with, so they only rely on the
definitions of the theory and never on the environment formulas used by the
fast kernels.

Model convention
----------------
The routines accept any object ``mps`` with the attributes

``cores``
    List of ``n_sites`` float arrays ``W_j``. Core ``j`` has shape
    ``(phys_dim, D_j, D_{j+1})`` (0-based bond dimensions ``D_0 .. D_N``),
    except that when ``output_site`` is an int ``c``, core ``c`` has shape
    ``(n_outputs, phys_dim, D_c, D_{c+1})``.
``scales``
    Array ``(n_sites,)`` of ``c_j``; the effective tensor is ``A_j = c_j W_j``.
``site_lr``
    Array ``(n_sites,)`` of per-site learning-rate multipliers ``r_j``.
``boundary``
    ``"open"`` (``D_0 = D_N = 1``, ``f = M_0 ... M_{N-1}``, a 1 x 1 matrix) or
    ``"periodic"`` (``D_0 = D_N``, ``f = Tr(M_0 ... M_{N-1})``, ``N >= 2``).
``output_site``
    ``None`` for a scalar output, or the int index ``c`` of the site that
    carries the output index ``l`` (``f_l`` uses ``A_c[l]``).

Here ``M_j(x) = sum_s phi[x, j, s] A_j[s]``. The trainable parameters are the
entries of ``cores``, ordered site by site and each core flattened in C order.
The neural tangent kernel is
``Theta(x, x') = sum_theta r_{site(theta)} df(x)/dtheta df(x')/dtheta``.

:func:`make_model` and :func:`random_model` build such objects as
:class:`types.SimpleNamespace` instances.
"""

from __future__ import annotations

import numbers
import types

import numpy as np

from ._validate import (
    _as_phi,
    _as_phi_pair,
    _as_site_vector,
    _check_choice,
    _check_int,
    _check_positive_float,
    _check_seed,
    _describe,
)

__all__ = [
    "make_model",
    "random_model",
    "forward",
    "jacobian",
    "ntk",
    "ntk_per_site",
    "finite_difference_jacobian",
    "vjp",
    "jvp",
    "nngp",
]

_BOUNDARIES = ("open", "periodic")
_OUTPUT_MODES = ("trace", "mean", "full")
_MODEL_ATTRIBUTES = ("cores", "scales", "site_lr", "boundary", "output_site")


# ---------------------------------------------------------------------------
# Model validation
# ---------------------------------------------------------------------------


def _as_real_vector(value, name, n_sites):
    """Return an ``(n_sites,)`` float64 copy of ``value`` after checking shape and finiteness."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise TypeError(f"{name} must be a real array of shape ({n_sites},); got dtype {arr.dtype}")
    if arr.shape != (n_sites,):
        raise ValueError(f"{name} must have shape (n_sites,) = ({n_sites},); got shape {arr.shape}")
    arr = np.array(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got NaN or Inf entries")
    return arr


def _read_model(mps):
    """Validate a duck-typed model and return a normalised float64 copy.

    The returned namespace has ``cores`` (list of float64 arrays), ``scales``,
    ``site_lr``, ``boundary``, ``output_site``, ``n_sites``, ``phys_dim``,
    ``n_outputs`` (1 for scalar models) and ``bond_dims`` (``D_0 .. D_N``).
    """
    for attr in _MODEL_ATTRIBUTES:
        if not hasattr(mps, attr):
            raise TypeError(
                f"mps must provide the attributes {', '.join(_MODEL_ATTRIBUTES)}; "
                f"got an object of type {type(mps).__name__} without '{attr}'"
            )
    raw_cores = mps.cores
    if isinstance(raw_cores, np.ndarray) or not isinstance(raw_cores, (list, tuple)):
        raise TypeError(
            f"mps.cores must be a list of arrays, one per site; got {type(raw_cores).__name__}"
        )
    n_sites = len(raw_cores)
    if n_sites == 0:
        raise ValueError("mps.cores must contain at least one core; got an empty list")

    boundary = mps.boundary
    _check_choice(boundary, "mps.boundary", _BOUNDARIES)
    if boundary == "periodic" and n_sites < 2:
        raise ValueError(
            f"mps.cores must contain at least 2 cores for mps.boundary='periodic'; got {n_sites}"
        )

    output_site = mps.output_site
    if output_site is not None:
        if isinstance(output_site, (bool, np.bool_)) or not isinstance(
            output_site, numbers.Integral
        ):
            raise TypeError(
                f"mps.output_site must be None or an int in [0, {n_sites - 1}]; "
                f"got {_describe(output_site)}"
            )
        output_site = int(output_site)
        if not 0 <= output_site < n_sites:
            raise ValueError(
                f"mps.output_site must be None or an int in [0, {n_sites - 1}]; got {output_site}"
            )

    cores = []
    for j, core in enumerate(raw_cores):
        arr = np.asarray(core)
        name = f"mps.cores[{j}]"
        if arr.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array; got dtype {arr.dtype}")
        expected_ndim = 4 if j == output_site else 3
        if arr.ndim != expected_ndim:
            layout = (
                "(n_outputs, phys_dim, D_left, D_right)"
                if expected_ndim == 4
                else "(phys_dim, D_left, D_right)"
            )
            raise ValueError(
                f"{name} must be a {expected_ndim}-D array of shape {layout}; got shape {arr.shape}"
            )
        if arr.size == 0:
            raise ValueError(f"{name} must be non-empty; got shape {arr.shape}")
        arr = np.array(arr, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite; got NaN or Inf entries")
        cores.append(arr)

    phys_dim = cores[0].shape[-3]
    for j, core in enumerate(cores):
        if core.shape[-3] != phys_dim:
            raise ValueError(
                f"mps.cores[{j}] must have phys_dim {phys_dim} (as mps.cores[0]); "
                f"got shape {core.shape}"
            )
    for j in range(n_sites - 1):
        if cores[j].shape[-1] != cores[j + 1].shape[-2]:
            raise ValueError(
                f"mps.cores[{j}] and mps.cores[{j + 1}] must share a bond dimension: "
                f"right dimension {cores[j].shape[-1]} of mps.cores[{j}] differs from "
                f"left dimension {cores[j + 1].shape[-2]} of mps.cores[{j + 1}]"
            )
    left, right = cores[0].shape[-2], cores[-1].shape[-1]
    if boundary == "open" and (left != 1 or right != 1):
        raise ValueError(
            "mps.cores must have outer bond dimensions D_0 = D_N = 1 for "
            f"mps.boundary='open'; got D_0={left}, D_N={right}"
        )
    if boundary == "periodic" and left != right:
        raise ValueError(
            "mps.cores must have equal outer bond dimensions D_0 = D_N for "
            f"mps.boundary='periodic'; got D_0={left}, D_N={right}"
        )

    scales = _as_real_vector(mps.scales, "mps.scales", n_sites)
    site_lr = _as_real_vector(mps.site_lr, "mps.site_lr", n_sites)
    n_outputs = 1 if output_site is None else cores[output_site].shape[0]
    bond_dims = tuple(int(core.shape[-2]) for core in cores) + (int(right),)
    return types.SimpleNamespace(
        cores=cores,
        scales=scales,
        site_lr=site_lr,
        boundary=boundary,
        output_site=output_site,
        n_sites=n_sites,
        phys_dim=int(phys_dim),
        n_outputs=int(n_outputs),
        bond_dims=bond_dims,
    )


def _check_phi_for_model(model, phi, name="phi"):
    """Validate features against a normalised model and return them as float64."""
    phi = _as_phi(phi, name)
    expected = (model.n_sites, model.phys_dim)
    if phi.shape[1:] != expected:
        raise ValueError(
            f"{name} must have shape (n_samples, n_sites, phys_dim) = "
            f"(n_samples, {model.n_sites}, {model.phys_dim}) to match mps.cores; "
            f"got shape {phi.shape}"
        )
    return phi.astype(np.float64, copy=False)


# ---------------------------------------------------------------------------
# Model construction helpers
# ---------------------------------------------------------------------------


def make_model(cores, scales=None, site_lr=None, boundary="open", output_site=None):
    """Build a model namespace accepted by every routine of this module.

    Parameters
    ----------
    cores : list of ndarray
        The trainable cores ``W_j``; core ``j`` has shape
        ``(phys_dim, D_j, D_{j+1})``, or ``(n_outputs, phys_dim, D_c, D_{c+1})``
        at ``output_site``.
    scales : array_like, shape (n_sites,), optional
        Scale factors ``c_j`` (``A_j = c_j W_j``); all ones when omitted.
    site_lr : array_like, shape (n_sites,), optional
        Per-site learning-rate multipliers ``r_j``; all ones when omitted.
    boundary : {"open", "periodic"}, optional
        Boundary condition of the chain.
    output_site : int, optional
        Site carrying the output index, or ``None`` for a scalar output.

    Returns
    -------
    mps : types.SimpleNamespace
        Validated model with float64 copies of ``cores``, ``scales`` and
        ``site_lr`` and the given ``boundary`` and ``output_site``.

    Raises
    ------
    TypeError, ValueError
        If the cores, scales, rates, boundary or output site are inconsistent.
    """
    if isinstance(cores, np.ndarray) or not isinstance(cores, (list, tuple)):
        raise TypeError(f"cores must be a list of arrays, one per site; got {_describe(cores)}")
    n_sites = len(cores)
    candidate = types.SimpleNamespace(
        cores=list(cores),
        scales=np.ones(n_sites) if scales is None else scales,
        site_lr=np.ones(n_sites) if site_lr is None else site_lr,
        boundary=boundary,
        output_site=output_site,
    )
    model = _read_model(candidate)
    return types.SimpleNamespace(
        cores=model.cores,
        scales=model.scales,
        site_lr=model.site_lr,
        boundary=model.boundary,
        output_site=model.output_site,
    )


def random_model(
    n_sites,
    phys_dim,
    bond_dims,
    *,
    boundary="open",
    output_site=None,
    n_outputs=1,
    sigma=1.0,
    rng=None,
):
    """Draw a model in the NTK parametrisation of the theory (spec section 1).

    Cores are i.i.d. ``W ~ N(0, 1)`` and ``c_j = sigma_j (D_j D_{j+1})**(-1/4)``
    with the 0-based bond dimensions ``D_0 .. D_N`` (``D_0 = D_N = 1`` for open
    boundaries); ``site_lr`` is all ones.

    Parameters
    ----------
    n_sites : int
        Number of sites, ``>= 1`` (``>= 2`` for periodic boundaries).
    phys_dim : int
        Physical (feature) dimension, ``>= 1``.
    bond_dims : int or sequence of int
        Either a uniform bond dimension ``D`` (open: ``(1, D, ..., D, 1)``;
        periodic: ``D`` everywhere) or the full sequence ``D_0 .. D_N`` of
        length ``n_sites + 1``.
    boundary : {"open", "periodic"}, optional
        Boundary condition.
    output_site : int, optional
        Site carrying the output index, or ``None`` for a scalar output.
    n_outputs : int, optional
        Number of outputs when ``output_site`` is given (ignored otherwise).
    sigma : float or array_like of shape (n_sites,), optional
        Positive per-site prior scales ``sigma_j``.
    rng : None, int >= 0 or numpy.random.Generator, optional
        Source of randomness.

    Returns
    -------
    mps : types.SimpleNamespace
        Model with attributes ``cores``, ``scales``, ``site_lr``, ``boundary``
        and ``output_site``.

    Raises
    ------
    TypeError, ValueError
        If an argument has the wrong type or an inconsistent value.
    """
    n_sites = _check_int(n_sites, "n_sites", 1)
    phys_dim = _check_int(phys_dim, "phys_dim", 1)
    n_outputs = _check_int(n_outputs, "n_outputs", 1)
    _check_choice(boundary, "boundary", _BOUNDARIES)
    gen = _check_seed(rng, "rng")
    if isinstance(bond_dims, numbers.Integral) and not isinstance(bond_dims, (bool, np.bool_)):
        bond = _check_int(bond_dims, "bond_dims", 1)
        dims = [bond] * (n_sites + 1)
        if boundary == "open":
            dims[0] = dims[-1] = 1
    else:
        try:
            dims = [int(d) for d in bond_dims]
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"bond_dims must be an int or a sequence of {n_sites + 1} ints; "
                f"got {_describe(bond_dims)}"
            ) from exc
        if len(dims) != n_sites + 1 or min(dims) < 1:
            raise ValueError(
                f"bond_dims must be a sequence of n_sites + 1 = {n_sites + 1} positive ints; "
                f"got {list(bond_dims)}"
            )
        if boundary == "open" and (dims[0] != 1 or dims[-1] != 1):
            raise ValueError(f"bond_dims must start and end with 1 for boundary='open'; got {dims}")
        if boundary == "periodic" and dims[0] != dims[-1]:
            raise ValueError(
                f"bond_dims must start and end with the same value for boundary='periodic'; "
                f"got {dims}"
            )
    sigma = _as_site_vector(sigma, "sigma", n_sites, positive=True)
    dims = np.asarray(dims, dtype=np.float64)
    scales = sigma * (dims[:-1] * dims[1:]) ** -0.25
    cores = []
    for j in range(n_sites):
        shape = (phys_dim, int(dims[j]), int(dims[j + 1]))
        if j == output_site:
            shape = (n_outputs,) + shape
        cores.append(gen.standard_normal(shape))
    return make_model(
        cores, scales=scales, site_lr=np.ones(n_sites), boundary=boundary, output_site=output_site
    )


# ---------------------------------------------------------------------------
# Forward pass and derivatives
# ---------------------------------------------------------------------------


def _site_matrices(model, phi_sample, output):
    """Return the list ``[M_0, ..., M_{N-1}]`` for one sample and one output index.

    ``M_j = sum_s phi_sample[j, s] * scales[j] * W_j[s]``; at the output site
    the slice ``W_c[output]`` is used.
    """
    mats = []
    for j, core in enumerate(model.cores):
        slices = core[output] if j == model.output_site else core
        mat = np.zeros(slices.shape[1:])
        for s in range(model.phys_dim):
            mat = mat + phi_sample[j, s] * slices[s]
        mats.append(model.scales[j] * mat)
    return mats


def _chain_value(mats):
    """Return ``Tr(M_0 @ ... @ M_{N-1})``.

    For open boundaries the product is a 1 x 1 matrix and its trace is its
    only entry; for periodic boundaries the trace closes the ring.
    """
    product = np.eye(mats[0].shape[0])
    for mat in mats:
        product = product @ mat
    return np.trace(product)


def forward(mps, phi):
    """Evaluate the model by explicit matrix products.

    Parameters
    ----------
    mps : object
        Model with ``cores``, ``scales``, ``site_lr``, ``boundary`` and
        ``output_site`` (see the module docstring).
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Local features.

    Returns
    -------
    f : ndarray, shape (n_samples,) or (n_samples, n_outputs)
        Model outputs in float64; two-dimensional when ``mps.output_site`` is
        an int.

    Raises
    ------
    TypeError, ValueError
        If the model or the features are malformed or inconsistent.
    """
    model = _read_model(mps)
    phi = _check_phi_for_model(model, phi)
    n_samples = phi.shape[0]
    out = np.empty((n_samples, model.n_outputs))
    for i in range(n_samples):
        for out_index in range(model.n_outputs):
            out[i, out_index] = _chain_value(_site_matrices(model, phi[i], out_index))
    return out[:, 0] if model.output_site is None else out


def _parameter_offsets(model):
    """Return the start offset of every core in the flat parameter vector and the total."""
    sizes = [core.size for core in model.cores]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return offsets[:-1], int(offsets[-1])


def _jacobian_3d(model, phi):
    """Dense Jacobian of shape ``(n_samples, n_outputs, n_params)`` (float64).

    For a chain value ``F = Tr(M_0 ... M_{N-1})`` the product rule gives
    ``dF/dM_j = (S_j P_j)^T`` with the explicit partial products
    ``P_j = M_0 ... M_{j-1}`` and ``S_j = M_{j+1} ... M_{N-1}``; then
    ``dF/dW_j[s, a, b] = c_j phi[j, s] dF/dM_j[a, b]`` (and at the output site
    only the slice of the output being differentiated is non-zero).
    """
    offsets, n_params = _parameter_offsets(model)
    n_samples = phi.shape[0]
    jac = np.zeros((n_samples, model.n_outputs, n_params))
    n_sites = model.n_sites
    for i in range(n_samples):
        for out_index in range(model.n_outputs):
            mats = _site_matrices(model, phi[i], out_index)
            prefixes = [np.eye(mats[0].shape[0])]
            for mat in mats[:-1]:
                prefixes.append(prefixes[-1] @ mat)
            suffixes = [np.eye(mats[-1].shape[1])]
            for mat in reversed(mats[1:]):
                suffixes.insert(0, mat @ suffixes[0])
            for j in range(n_sites):
                grad_mat = (suffixes[j] @ prefixes[j]).T
                grad_core = model.scales[j] * np.multiply.outer(phi[i, j], grad_mat)
                if j == model.output_site:
                    full = np.zeros(model.cores[j].shape)
                    full[out_index] = grad_core
                    grad_core = full
                start = offsets[j]
                jac[i, out_index, start : start + grad_core.size] = grad_core.ravel()
    return jac


def jacobian(mps, phi):
    """Dense Jacobian of the outputs with respect to all core entries.

    Parameters
    ----------
    mps : object
        Model (see the module docstring).
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Local features.

    Returns
    -------
    jac : ndarray, shape (n_samples, n_params) or (n_samples, n_outputs, n_params)
        ``jac[..., p] = df/dtheta_p`` with ``n_params = sum_j cores[j].size``,
        parameters ordered site by site and each core flattened in C order.
        The scales are included: ``df/dW_j = c_j df/dA_j``.

    Raises
    ------
    TypeError, ValueError
        If the model or the features are malformed or inconsistent.
    """
    model = _read_model(mps)
    phi = _check_phi_for_model(model, phi)
    jac = _jacobian_3d(model, phi)
    return jac[:, 0, :] if model.output_site is None else jac


def _rates_per_parameter(model):
    """Expand ``site_lr`` to one learning-rate multiplier per parameter."""
    return np.concatenate(
        [np.full(core.size, rate) for core, rate in zip(model.cores, model.site_lr)]
    )


def ntk(mps, phi1, phi2=None, outputs="trace"):
    """Empirical neural tangent kernel ``J1 diag(r) J2^T`` from dense Jacobians.

    Parameters
    ----------
    mps : object
        Model (see the module docstring).
    phi1 : ndarray, shape (n1, n_sites, phys_dim)
        Features of the first set of samples.
    phi2 : ndarray, shape (n2, n_sites, phys_dim), optional
        Features of the second set; ``None`` means ``phi2 = phi1``.
    outputs : {"trace", "mean", "full"}, optional
        Reduction over the output indices of a multi-output model: ``"full"``
        keeps ``Theta_{l l'}``, ``"trace"`` returns ``sum_l Theta_{l l}`` and
        ``"mean"`` the trace divided by ``n_outputs``. Ignored (after
        validation) for scalar-output models.

    Returns
    -------
    theta : ndarray
        Shape ``(n1, n2)`` for scalar models and for ``"trace"``/``"mean"``;
        ``(n1, n2, n_outputs, n_outputs)`` for ``"full"`` with
        ``theta[i, k, l, m] = Theta_{l m}(x_i, x_k)``.

    Raises
    ------
    TypeError, ValueError
        If the model, the features or ``outputs`` are malformed.
    """
    _check_choice(outputs, "outputs", _OUTPUT_MODES)
    model = _read_model(mps)
    phi1 = _check_phi_for_model(model, phi1, "phi1")
    phi2 = phi1 if phi2 is None else _check_phi_for_model(model, phi2, "phi2")
    jac1 = _jacobian_3d(model, phi1)
    jac2 = jac1 if phi2 is phi1 else _jacobian_3d(model, phi2)
    rates = _rates_per_parameter(model)
    full = np.einsum("alp,p,bmp->ablm", jac1, rates, jac2)
    if model.output_site is None:
        return full[:, :, 0, 0]
    if outputs == "full":
        return full
    trace = np.trace(full, axis1=2, axis2=3)
    return trace if outputs == "trace" else trace / model.n_outputs


def ntk_per_site(mps, phi1, phi2=None):
    """Per-site contributions ``r_j J1_j J2_j^T`` to the empirical NTK.

    Parameters
    ----------
    mps : object
        Model (see the module docstring).
    phi1 : ndarray, shape (n1, n_sites, phys_dim)
        Features of the first set of samples.
    phi2 : ndarray, shape (n2, n_sites, phys_dim), optional
        Features of the second set; ``None`` means ``phi2 = phi1``.

    Returns
    -------
    theta_sites : ndarray, shape (n_sites, n1, n2)
        ``theta_sites[j]`` is the contribution of the parameters of core
        ``j``, traced over the outputs of a multi-output model. The sum over
        ``j`` equals ``ntk(mps, phi1, phi2, outputs="trace")``.

    Raises
    ------
    TypeError, ValueError
        If the model or the features are malformed or inconsistent.
    """
    model = _read_model(mps)
    phi1 = _check_phi_for_model(model, phi1, "phi1")
    phi2 = phi1 if phi2 is None else _check_phi_for_model(model, phi2, "phi2")
    jac1 = _jacobian_3d(model, phi1)
    jac2 = jac1 if phi2 is phi1 else _jacobian_3d(model, phi2)
    offsets, _ = _parameter_offsets(model)
    out = np.empty((model.n_sites, phi1.shape[0], phi2.shape[0]))
    for j, core in enumerate(model.cores):
        block = slice(offsets[j], offsets[j] + core.size)
        out[j] = model.site_lr[j] * np.einsum("alp,blp->ab", jac1[:, :, block], jac2[:, :, block])
    return out


def finite_difference_jacobian(mps, phi, eps=1e-6):
    """Central finite-difference Jacobian with respect to every core entry.

    Parameters
    ----------
    mps : object
        Model (see the module docstring). It is not modified: the
        differences are taken on private copies of the cores.
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Local features.
    eps : float, optional
        Positive step. Since ``f`` is linear in each core, central differences
        are exact up to rounding for any step.

    Returns
    -------
    jac : ndarray, shape (n_samples, n_params) or (n_samples, n_outputs, n_params)
        Same layout as :func:`jacobian`.

    Raises
    ------
    TypeError, ValueError
        If the model, the features or ``eps`` are malformed.
    """
    eps = _check_positive_float(eps, "eps")
    model = _read_model(mps)
    phi = _check_phi_for_model(model, phi)
    work = types.SimpleNamespace(
        cores=[core.copy() for core in model.cores],
        scales=model.scales.copy(),
        site_lr=model.site_lr.copy(),
        boundary=model.boundary,
        output_site=model.output_site,
    )
    columns = []
    for core in work.cores:
        flat = core.reshape(-1)
        for p in range(flat.size):
            original = flat[p]
            flat[p] = original + eps
            f_plus = forward(work, phi)
            flat[p] = original - eps
            f_minus = forward(work, phi)
            flat[p] = original
            columns.append((f_plus - f_minus) / (2.0 * eps))
    return np.stack(columns, axis=-1)


def vjp(mps, phi, cotangent):
    """Vector-Jacobian product ``J^T cotangent`` via the dense Jacobian.

    Parameters
    ----------
    mps : object
        Model (see the module docstring).
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Local features.
    cotangent : array_like, shape (n_samples,) or (n_samples, n_outputs)
        Cotangent of the outputs, shaped like :func:`forward`'s result.

    Returns
    -------
    grads : list of ndarray
        One array per site, shaped like ``mps.cores[j]``:
        ``grads[j] = sum_{i, l} cotangent[i, l] df_l(x_i)/dW_j``.

    Raises
    ------
    TypeError, ValueError
        If the model, the features or ``cotangent`` are malformed.
    """
    model = _read_model(mps)
    phi = _check_phi_for_model(model, phi)
    n_samples = phi.shape[0]
    expected = (n_samples,) if model.output_site is None else (n_samples, model.n_outputs)
    cot = np.asarray(cotangent)
    if cot.dtype.kind not in "iuf" or cot.dtype == np.bool_:
        raise TypeError(
            f"cotangent must be a real array of shape {expected}; got dtype {cot.dtype}"
        )
    if cot.shape != expected:
        raise ValueError(f"cotangent must have shape {expected}; got shape {cot.shape}")
    cot = cot.astype(np.float64).reshape(n_samples, model.n_outputs)
    if not np.all(np.isfinite(cot)):
        raise ValueError("cotangent must be finite; got NaN or Inf entries")
    flat = np.einsum("ilp,il->p", _jacobian_3d(model, phi), cot)
    offsets, _ = _parameter_offsets(model)
    return [
        flat[offsets[j] : offsets[j] + core.size].reshape(core.shape)
        for j, core in enumerate(model.cores)
    ]


def jvp(mps, phi, tangents):
    """Jacobian-vector product ``J . concat(tangents)`` via the dense Jacobian.

    Parameters
    ----------
    mps : object
        Model (see the module docstring).
    phi : ndarray, shape (n_samples, n_sites, phys_dim)
        Local features.
    tangents : sequence of array_like
        One tangent per site, shaped like ``mps.cores[j]``.

    Returns
    -------
    df : ndarray, shape (n_samples,) or (n_samples, n_outputs)
        Directional derivative of the outputs along ``tangents``.

    Raises
    ------
    TypeError, ValueError
        If the model, the features or ``tangents`` are malformed.
    """
    model = _read_model(mps)
    phi = _check_phi_for_model(model, phi)
    if isinstance(tangents, np.ndarray) or not isinstance(tangents, (list, tuple)):
        raise TypeError(
            f"tangents must be a list of {model.n_sites} arrays shaped like mps.cores; "
            f"got {_describe(tangents)}"
        )
    if len(tangents) != model.n_sites:
        raise ValueError(
            f"tangents must contain n_sites = {model.n_sites} arrays; got {len(tangents)}"
        )
    flat_parts = []
    for j, (tangent, core) in enumerate(zip(tangents, model.cores)):
        arr = np.asarray(tangent)
        if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
            raise TypeError(
                f"tangents[{j}] must be a real array of shape {core.shape}; got dtype {arr.dtype}"
            )
        if arr.shape != core.shape:
            raise ValueError(
                f"tangents[{j}] must have the shape of mps.cores[{j}], {core.shape}; "
                f"got shape {arr.shape}"
            )
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"tangents[{j}] must be finite; got NaN or Inf entries")
        flat_parts.append(arr.ravel())
    out = _jacobian_3d(model, phi) @ np.concatenate(flat_parts)
    return out[:, 0] if model.output_site is None else out


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


def nngp(phi1, phi2=None, sigma=1.0):
    """NNGP kernel ``K(x, x') = prod_j sigma_j**2 k_j(x_j, x'_j)`` by explicit loops.

    Parameters
    ----------
    phi1 : ndarray, shape (n1, n_sites, phys_dim)
        Features of the first set of samples.
    phi2 : ndarray, shape (n2, n_sites, phys_dim), optional
        Features of the second set; ``None`` means ``phi2 = phi1``.
    sigma : float or array_like of shape (n_sites,), optional
        Positive per-site prior scales.

    Returns
    -------
    K : ndarray, shape (n1, n2)
        Float64 kernel matrix.

    Raises
    ------
    TypeError, ValueError
        If the features or ``sigma`` are malformed.
    """
    phi1, phi2, _ = _as_phi_pair(phi1, phi2)
    phi1 = phi1.astype(np.float64, copy=False)
    phi2 = phi2.astype(np.float64, copy=False)
    n_sites = phi1.shape[1]
    sigma = _as_site_vector(sigma, "sigma", n_sites, positive=True)
    out = np.empty((phi1.shape[0], phi2.shape[0]))
    for a in range(phi1.shape[0]):
        for b in range(phi2.shape[0]):
            value = 1.0
            for j in range(n_sites):
                value *= sigma[j] ** 2 * float(np.dot(phi1[a, j], phi2[b, j]))
            out[a, b] = value
    return out
