"""The matrix product state model.

Indices are 0-based throughout the code: sites ``j = 0 .. N-1`` (``N = n_sites``), bond
dimensions ``D_0 .. D_N``, and core ``j`` has shape ``(phys_dim, D_j, D_{j+1})``, between bonds
``j`` and ``j+1``.  (The theory spec numbers sites ``1..N`` with core ``j`` of shape
``(d, D_{j-1}, D_j)``; its site ``j`` is ``cores[j-1]`` here, so its ``D_{j-1} D_j`` reads
``D_j D_{j+1}`` below.)

An MPS maps local features ``phi`` of shape ``(n_samples, n_sites, phys_dim)`` to
``f(x) = M_0(x) ... M_{N-1}(x)`` (open boundary) or ``Tr(M_0(x) ... M_{N-1}(x))`` (periodic
boundary), where ``M_j(x) = sum_s phi[x, j, s] * scales[j] * cores[j][s]``.

The trainable parameters are the entries of ``cores`` (``W_j``); ``scales`` (``c_j``) are fixed
multipliers, so ``A_j = c_j W_j``.  This covers both parametrisations of the theory:

* NTK parametrisation (default of :meth:`MPS.random`): ``W ~ N(0, 1)``,
  ``c_j = sigma_j (D_j D_{j+1})^(-1/4)``, plain gradient descent on ``W``;
* standard parametrisation: ``A ~ N(0, sigma_j^2 / sqrt(D_j D_{j+1}))`` stored directly
  (``scales = 1``) and trained with per-site learning rates
  ``eta_j = eta * site_lr[j]``, ``site_lr[j] = 1 / sqrt(D_j D_{j+1})``.

The NTK of a model is ``sum_j site_lr[j] * <df/dW_j, df'/dW_j>`` (see :func:`mpsntk.ntk`).

Multi-class output: with ``output_site=c`` the core of site ``c`` has shape
``(n_outputs, phys_dim, D_c, D_{c+1})`` and output ``l`` uses ``cores[c][l]``.
"""

from __future__ import annotations

import errno
import json
import numbers
import os
import zipfile
import zlib

import numpy as np

from ._backend import (
    CudaUnavailableError,
    array_module,
    as_array,
    check_on_current_device,
    cuda_available,
    cuda_unavailable_reason,
    cupy_module,
)
from ._io import atomic_write
from ._validate import (
    _FEATURE_DTYPES,
    _as_phi,
    _as_site_vector,
    _check_bool,
    _check_choice,
    _check_feature_dtype,
    _check_int,
    _check_model_fits,
    _check_seed,
    _describe,
    _short_repr,
)

__all__ = ["MPS"]

_FORMAT_VERSION = 1


def _scalar(a, kinds):
    """The value of a 0-d array of one of the dtype ``kinds`` (e.g. "iu"), else None."""
    return a.item() if a.shape == () and a.dtype.kind in kinds else None


def _jsonable(init):
    """The arguments of MPS.random as plain JSON values (None stays None)."""
    if init is None:
        return None
    out = dict(init)
    for key in ("sigma", "bond_dim"):
        out[key] = np.asarray(out[key]).tolist()
    out["dtype"] = np.dtype(out["dtype"]).name
    return out


class MPS:
    """A matrix product state with optional label site.

    Parameters
    ----------
    cores : sequence of ndarray
        ``n_sites`` arrays; core ``j`` has shape ``(phys_dim, D_j, D_{j+1})`` (0-based bonds
        ``D_0..D_N``), or ``(n_outputs, phys_dim, D_j, D_{j+1})`` at ``output_site``.  All cores
        share one dtype, float64 or float32.  Open boundary needs ``D_0 = D_N = 1``; periodic
        boundary needs ``D_0 = D_N`` and ``n_sites >= 2``.
    boundary : {"open", "periodic"}
    scales : float or array of shape (n_sites,), optional
        Positive fixed multipliers ``c_j`` (``A_j = c_j W_j``).  Default 1: the core entries
        themselves are the parameters.
    site_lr : float or array of shape (n_sites,), optional
        Non-negative per-site learning-rate multipliers ``r_j`` (default 1); the NTK weights
        site ``j`` by ``r_j`` and :func:`mpsntk.train` uses the rate ``eta * r_j``.
    output_site : int, optional
        Index of the site that carries the output (label) index; None for a scalar output.
    copy : bool
        Copy the cores (default).  With False, C-contiguous cores are used in place.

    Attributes
    ----------
    cores : list of ndarray
    n_sites, phys_dim, n_outputs : int
    bond_dims : tuple of int
        ``(D_0, ..., D_N)``.
    boundary : str
    output_site : int or None
    scales, site_lr : ndarray, shape (n_sites,)
    dtype : numpy.dtype
    """

    def __init__(
        self, cores, boundary="open", *, scales=None, site_lr=None, output_site=None, copy=True
    ):
        self.boundary = _check_choice(boundary, "boundary", ("open", "periodic"))
        if isinstance(cores, np.ndarray) or not hasattr(cores, "__len__"):
            raise TypeError(f"cores must be a list of arrays, one per site; got {_describe(cores)}")
        if len(cores) == 0:
            raise ValueError("cores must hold at least one core; got an empty sequence")
        n_sites = len(cores)
        copy = _check_bool(copy, "copy")
        xp = array_module(*cores, names=[f"cores[{j}]" for j in range(n_sites)])
        if output_site is not None:
            output_site = _check_int(output_site, "output_site", 0)
            if output_site >= n_sites:
                raise ValueError(f"output_site must be < n_sites = {n_sites}; got {output_site}")
        self.output_site = output_site
        arrays = []
        for j, core in enumerate(cores):
            core = as_array(core, xp)  # zero-copy for other CUDA arrays (torch, numba, JAX)
            if core.dtype not in _FEATURE_DTYPES:
                raise TypeError(f"cores[{j}] must be float32 or float64; got dtype {core.dtype}")
            arrays.append(core)
        dtype = arrays[0].dtype
        for j, core in enumerate(arrays):
            if core.dtype != dtype:
                raise TypeError(
                    f"cores must share one dtype; cores[0] is {dtype} but cores[{j}] is "
                    f"{core.dtype}"
                )
        bonds = []
        n_outputs = 1
        for j, core in enumerate(arrays):
            want = 4 if j == output_site else 3
            if core.ndim != want:
                shape = (
                    "(n_outputs, phys_dim, D_left, D_right)"
                    if want == 4
                    else "(phys_dim, D_left, D_right)"
                )
                raise ValueError(f"cores[{j}] must have shape {shape}; got shape {core.shape}")
            if core.size == 0:
                raise ValueError(f"cores[{j}] must be non-empty; got shape {core.shape}")
            if j == output_site:
                n_outputs = core.shape[0]
            d, dl, dr = core.shape[-3:]
            if j == 0:
                phys_dim = d
                bonds.append(dl)
            elif d != phys_dim:
                raise ValueError(f"cores[{j}] has phys_dim {d} but cores[0] has {phys_dim}")
            if dl != bonds[-1]:
                raise ValueError(
                    f"cores[{j}] has left bond dimension {dl} but cores[{j - 1}] has right bond "
                    f"dimension {bonds[-1]}"
                )
            bonds.append(dr)
            if not bool(xp.all(xp.isfinite(core))):
                raise ValueError(f"cores[{j}] must be finite; got NaN or Inf entries")
        if self.boundary == "open" and (bonds[0] != 1 or bonds[-1] != 1):
            raise ValueError(
                f"open boundary needs D_0 = D_N = 1; got D_0 = {bonds[0]}, D_N = {bonds[-1]} "
                "(use boundary='periodic' for a trace)"
            )
        if self.boundary == "periodic":
            if bonds[0] != bonds[-1]:
                raise ValueError(
                    f"periodic boundary needs D_0 = D_N; got {bonds[0]} and {bonds[-1]}"
                )
            if n_sites < 2:
                raise ValueError("periodic boundary needs n_sites >= 2")
        self.cores = [
            xp.array(c, order="C", copy=True) if copy else xp.ascontiguousarray(c) for c in arrays
        ]
        self.xp = xp
        self.n_sites = n_sites
        self.phys_dim = int(phys_dim)
        self.n_outputs = int(n_outputs)
        self.bond_dims = tuple(int(b) for b in bonds)
        self.dtype = dtype
        self.scales = _as_site_vector(
            1.0 if scales is None else scales, "scales", n_sites, positive=True
        )
        self.site_lr = _as_site_vector(
            1.0 if site_lr is None else site_lr, "site_lr", n_sites, positive=False
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(
        cls,
        n_sites,
        bond_dim,
        phys_dim=2,
        boundary="open",
        n_outputs=1,
        sigma=1.0,
        parametrization="ntk",
        seed=None,
        dtype=np.float64,
        output_site=None,
        init="normal",
    ):
        """Draw an MPS from the initialisations of the theory (spec section 1).

        Parameters
        ----------
        n_sites : int
        bond_dim : int or sequence of int
            Uniform bond dimension D (open chains get D_0 = D_N = 1), or the full list
            ``(D_0, ..., D_N)``; core ``j`` (0-based) has shape ``(phys_dim, D_j, D_{j+1})``.
        phys_dim : int
        boundary : {"open", "periodic"}
        n_outputs : int
            More than 1 adds a label index at ``output_site`` (default ``n_sites // 2``).
        sigma : float or array of shape (n_sites,)
            Per-site scale; ``E f(x)^2 = prod_j sigma_j^2 |phi(x_j)|^2`` at every D.
        parametrization : {"ntk", "standard"}
            Written for 0-based core ``j`` of shape ``(phys_dim, D_j, D_{j+1})``:
            "ntk": ``W ~ N(0, 1)``, ``scales[j] = sigma_j (D_j D_{j+1})^(-1/4)``,
            ``site_lr = 1``.
            "standard": ``A ~ N(0, sigma_j^2 / sqrt(D_j D_{j+1}))``, ``scales = 1``,
            ``site_lr[j] = 1 / sqrt(D_j D_{j+1})`` (per-tensor rates of Guo & Draper).
        seed : None, int >= 0 or numpy.random.Generator, optional
        dtype : {numpy.float64, numpy.float32}
        output_site : int, optional
        init : {"normal", "near_identity"}
            "near_identity" is the deterministic TorchMPS-style start (every slice the identity
            plus 1e-9 noise); it has no Gaussian-process or kernel limit.
        """
        n_sites = _check_int(n_sites, "n_sites", 1)
        phys_dim = _check_int(phys_dim, "phys_dim", 1)
        n_outputs = _check_int(n_outputs, "n_outputs", 1)
        dtype = _check_feature_dtype(dtype)
        _check_choice(boundary, "boundary", ("open", "periodic"))
        _check_choice(parametrization, "parametrization", ("ntk", "standard"))
        _check_choice(init, "init", ("normal", "near_identity"))
        if isinstance(bond_dim, numbers.Integral) and not isinstance(bond_dim, bool):
            D = _check_int(bond_dim, "bond_dim", 1)
            end = 1 if boundary == "open" else D
            bonds = np.full(n_sites + 1, D, dtype=np.int64)
            bonds[[0, -1]] = end
        else:
            bonds = (
                [_check_int(b, "bond_dim entries", 1) for b in np.asarray(bond_dim).tolist()]
                if np.ndim(bond_dim) == 1
                else None
            )
            if bonds is None or len(bonds) != n_sites + 1:
                raise ValueError(
                    f"bond_dim must be an int or a sequence of n_sites + 1 = {n_sites + 1} bond "
                    f"dimensions; got {_describe(bond_dim)}"
                )
        if n_outputs > 1 and output_site is None:
            output_site = n_sites // 2
        if output_site is not None:
            output_site = _check_int(output_site, "output_site", 0)
            if output_site >= n_sites:
                raise ValueError(f"output_site must be < n_sites = {n_sites}; got {output_site}")
        _check_model_fits(bonds, phys_dim, n_outputs if output_site is not None else 1, dtype)
        sigma = _as_site_vector(sigma, "sigma", n_sites, positive=True)
        rng = _check_seed(seed)
        bonds = np.asarray(bonds, dtype=np.int64)
        fan = np.sqrt((bonds[:-1] * bonds[1:]).astype(float))
        bonds = bonds.tolist()
        cores = []
        for j in range(n_sites):
            shape = (phys_dim, bonds[j], bonds[j + 1])
            if j == output_site:
                shape = (n_outputs,) + shape
            if init == "normal":
                w = rng.standard_normal(shape)
                if parametrization == "standard":
                    w *= sigma[j] / np.sqrt(fan[j])
            else:
                w = 1e-9 * rng.standard_normal(shape)
                w[..., :, :] += np.eye(bonds[j], bonds[j + 1])
            cores.append(w.astype(dtype))
        if parametrization == "ntk" and init == "normal":
            scales, site_lr = sigma / np.sqrt(fan), np.ones(n_sites)
        elif parametrization == "ntk":
            scales, site_lr = np.ones(n_sites), np.ones(n_sites)
        else:
            scales, site_lr = np.ones(n_sites), 1.0 / fan
        mps = cls(
            cores, boundary, scales=scales, site_lr=site_lr, output_site=output_site, copy=False
        )
        mps.parametrization = parametrization
        mps.init = dict(n_sites=n_sites, bond_dim=bond_dim, phys_dim=phys_dim, boundary=boundary,
                        n_outputs=n_outputs, sigma=sigma, parametrization=parametrization,
                        dtype=dtype, output_site=output_site, init=init)
        return mps

    parametrization = None  #: "ntk" or "standard" for models drawn by :meth:`random`
    init = None  #: the arguments of :meth:`random` (without the seed), for drawing ensembles

    def with_cores(self, cores, copy=True):
        """A new MPS with other cores and the same boundary, scales, rates and output site."""
        if (
            hasattr(cores, "__len__")
            and not isinstance(cores, np.ndarray)
            and len(cores) != self.n_sites
        ):
            raise ValueError(f"cores must hold n_sites = {self.n_sites} arrays; got {len(cores)}")
        new = MPS(
            cores,
            self.boundary,
            scales=self.scales,
            site_lr=self.site_lr,
            output_site=self.output_site,
            copy=copy,
        )
        new.parametrization = self.parametrization
        new.init = self.init
        for j, (a, b) in enumerate(zip(new.cores, self.cores)):
            if a.shape != b.shape:
                raise ValueError(f"cores[{j}] must keep shape {b.shape}; got {a.shape}")
        return new

    def copy(self):
        """A deep copy."""
        return self.with_cores(self.cores, copy=True)

    def __getstate__(self):  # the array module is not picklable: it follows from the cores
        state = dict(self.__dict__)
        del state["xp"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.xp = array_module(*self.cores, names=["cores"])

    @property
    def device(self) -> str:
        """``"cpu"`` for NumPy cores, ``"cuda"`` for CuPy cores."""
        return "cpu" if self.xp is np else "cuda"

    def to_device(self):
        """A copy with CuPy cores on the current CUDA device (explicit host-to-device copy)."""
        if not cuda_available():
            raise CudaUnavailableError(f"to_device: {cuda_unavailable_reason()}")
        cupy = cupy_module()
        return self.with_cores([cupy.asarray(c) for c in self.cores])

    def to_host(self):
        """A copy with NumPy cores (explicit device-to-host copy when the cores are on a GPU)."""
        return self.with_cores([c if self.xp is np else c.get() for c in self.cores])

    # ------------------------------------------------------------------ properties
    @property
    def n_params(self) -> int:
        """Number of trainable parameters (entries of all cores)."""
        return int(sum(c.size for c in self.cores))

    @property
    def max_bond_dim(self) -> int:
        return max(self.bond_dims)

    def __repr__(self):
        out = (
            f", n_outputs={self.n_outputs}, output_site={self.output_site}"
            if self.output_site is not None
            else ""
        )
        return (
            f"MPS(n_sites={self.n_sites}, phys_dim={self.phys_dim}, "
            f"bond_dims=max {self.max_bond_dim}, boundary={self.boundary!r}{out}, "
            f"dtype={self.dtype.name})"
        )

    def check_parameters(self):
        """Raise ValueError if a core holds NaN or Inf entries, or ``scales`` / ``site_lr`` hold
        values the constructor would refuse.

        The constructor checks them, so such entries were written in afterwards (an in-place
        edit, a diverged update).  Every routine checks ``scales`` and ``site_lr`` (one value
        per site) before it runs, and the cores on its error paths, so that a NaN parameter is
        not reported as an overflow.
        """
        xp = self.xp
        for j, c in enumerate(self.cores):
            if not bool(xp.all(xp.isfinite(c))):
                raise ValueError(
                    f"cores[{j}] holds NaN or Inf entries (written after the MPS was built); "
                    "every result of this model is undefined"
                )
        self._check_site_vectors()

    def _check_site_vectors(self):
        for name, low, ok in (("scales", "> 0", np.greater), ("site_lr", ">= 0", np.greater_equal)):
            v = getattr(self, name)
            if not np.all(np.isfinite(v)):
                raise ValueError(
                    f"{name} holds NaN or Inf entries (written after the MPS was built)"
                )
            if not np.all(ok(v, 0.0)):
                raise ValueError(
                    f"{name} must be {low} at every site; got minimum {v.min()} (written after "
                    "the MPS was built)"
                )

    # ------------------------------------------------------------------ engine plumbing
    def _engine_args(self):
        """Arguments identifying the chain for the _core routines."""
        return (
            self.cores,
            self.scales,
            self.boundary,
            -1 if self.output_site is None else self.output_site,
        )

    def check_features(self, phi, name="phi"):
        """Validate features for this model; returns a C-contiguous array on the model's device.

        Every routine starts here, so the per-site vectors are checked here as well (cheap:
        one value per site)."""
        self._check_site_vectors()
        xp = self.same_device(array_module(phi, names=[name]), name)
        phi = _as_phi(phi, name, xp)
        if phi.shape[1] != self.n_sites:
            raise ValueError(
                f"{name} has n_sites = {phi.shape[1]} (shape {phi.shape}) but the MPS has "
                f"{self.n_sites} sites"
            )
        if phi.shape[2] != self.phys_dim:
            raise ValueError(
                f"{name} has phys_dim = {phi.shape[2]} (shape {phi.shape}) but the MPS has "
                f"phys_dim = {self.phys_dim}"
            )
        if phi.dtype != self.dtype:
            raise TypeError(
                f"{name} has dtype {phi.dtype} but the MPS is {self.dtype}; convert one of them "
                "explicitly"
            )
        return xp.ascontiguousarray(phi)

    def same_device(self, xp, what):
        """Return ``xp`` if it is the array module of the cores, else raise TypeError."""
        if xp is not self.xp:
            def where(m):
                return "the host" if m is np else "a CUDA device"

            raise TypeError(
                f"{what} live on {where(xp)} but the MPS cores on {where(self.xp)}; "
                "move one explicitly (MPS.to_device / MPS.to_host)"
            )
        if xp is not np:
            check_on_current_device(self.cores[0], "the MPS cores", xp)
        return xp

    def _raw_forward(self, phi):
        """Mantissa and log-scale of f on the model's device: f = mantissa * exp(log_scale)."""
        from ._engine import engine_for

        return engine_for(self).forward(self, phi)

    def _squeeze_outputs(self, a):
        return a[:, 0] if self.output_site is None else a

    # ------------------------------------------------------------------ evaluation
    def log_forward(self, phi):
        """Sign and natural log of ``|f(x)|``, safe for chains of any length.

        Returns
        -------
        sign, logabs : ndarray, shape (n_samples,) or (n_samples, n_outputs)
            ``f = sign * exp(logabs)``; zero outputs have sign 0 and logabs -inf.
        """
        phi = self.check_features(phi)
        mant, lg = self._raw_forward(phi)
        xp = self.xp
        if not bool(xp.all(xp.isfinite(mant))):
            self.check_parameters()
            raise FloatingPointError(
                f"log_forward: a partial product overflows {self.dtype.name} inside the "
                "contraction (features or cores too large for it); scale the features down or "
                "compute in float64"
            )
        with np.errstate(divide="ignore"):
            logabs = xp.log(xp.abs(mant).astype(xp.float64)) + lg
        return self._squeeze_outputs(xp.sign(mant)), self._squeeze_outputs(logabs)

    def forward(self, phi):
        """Evaluate the MPS.

        Parameters
        ----------
        phi : ndarray, shape (n_samples, n_sites, phys_dim)
            Local features in the model's dtype (see :mod:`mpsntk.features`).

        Returns
        -------
        ndarray, shape (n_samples,) or (n_samples, n_outputs)

        Raises
        ------
        FloatingPointError
            If an output overflows the dtype, or underflows it (a non-zero output that rounds to
            zero); use :meth:`log_forward` for such chains.
        ValueError
            If the cores (or scales, site_lr) hold NaN or Inf entries, written into them after
            the model was built.
        """
        phi = self.check_features(phi)
        mant, lg = self._raw_forward(phi)
        xp = self.xp
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            f = (mant * xp.exp(lg)).astype(self.dtype)
        for lost, how in ((~xp.isfinite(f), "overflows"), ((f == 0) & (mant != 0), "underflows")):
            if bool(xp.any(lost)):
                self.check_parameters()
                raise FloatingPointError(
                    f"MPS output {how} the range of {self.dtype.name}; use log_forward()"
                )
        return self._squeeze_outputs(f)

    __call__ = forward

    # ------------------------------------------------------------------ persistence
    def _arrays(self):
        """The model as named host arrays: the content of the files :meth:`save` writes."""
        data = {f"core_{j}": c for j, c in enumerate(self.to_host().cores)}
        data.update(
            format_version=np.array(_FORMAT_VERSION),
            n_sites=np.array(self.n_sites),
            boundary=np.array(self.boundary),
            scales=self.scales,
            site_lr=self.site_lr,
            output_site=np.array(-1 if self.output_site is None else self.output_site),
            parametrization=np.array(self.parametrization or ""),
            init=np.array(json.dumps(_jsonable(self.init))),
        )
        return data

    def save(self, path):
        """Write the model to an ``.npz`` file (cores, scales, rates, boundary, output site).

        As with ``numpy.savez``, ``.npz`` is appended to a ``path`` that does not end in it:
        ``save("model")`` writes ``model.npz``.  :meth:`load` accepts either name.

        The write is atomic: the model goes to a temporary file in the same folder, which is
        fsync'ed and then renamed over the destination, so an existing file is replaced only by
        a complete new one; a crash or kill during ``save`` leaves the previous file intact
        (and possibly a hidden ``.<name>.<random>.tmp`` file beside it).

        Returns
        -------
        str
            The path of the file written.
        """
        path = os.fsdecode(os.fspath(path))
        if not path.endswith(".npz"):
            path += ".npz"
        data = self._arrays()
        atomic_write(path, lambda f: np.savez(f, **data))
        return path

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`.

        ``path`` is the path given to :meth:`save`: a file of exactly that name is read;
        otherwise, for a ``path`` that does not end in ``.npz``, ``path + ".npz"`` (the file
        ``save`` wrote), even where ``path`` itself is a folder.

        Raises
        ------
        FileNotFoundError
            If neither file exists.
        ValueError
            If the file is not an mpsntk MPS file, or is truncated or corrupt (the message
            names the file).
        """
        path = os.fsdecode(os.fspath(path))
        tried = [path] if path.endswith(".npz") else [path, path + ".npz"]
        found = [t for t in tried if os.path.isfile(t)]
        if not found:
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "a folder, not an MPS file", path)
            names = " nor ".join(repr(t) for t in tried)
            raise FileNotFoundError(errno.ENOENT, f"no MPS file {names}", path)
        path = found[0]
        try:
            return cls._from_file(path)
        except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(f"{path}: "):
                raise
            raise ValueError(f"{path}: corrupt or truncated mpsntk MPS file ({exc})") from exc

    @classmethod
    def _from_file(cls, path):
        not_ours = f"{path}: not an mpsntk MPS file (format {_FORMAT_VERSION})"
        try:
            f = np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as exc:  # not .npy/.npz (NumPy then suspects a pickle)
            raise ValueError(not_ours) from exc
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError(not_ours)
        with f:
            if "format_version" not in f or _scalar(f["format_version"], "iu") != _FORMAT_VERSION:
                raise ValueError(not_ours)
            keys = ["n_sites", "boundary", "scales", "site_lr", "output_site", "parametrization"]
            missing = [k for k in keys if k not in f]
            if missing:
                raise ValueError(f"{path}: corrupt mpsntk MPS file, missing {', '.join(missing)}")
            # The header first: a corrupt n_sites must not drive any allocation or loop.
            n = _scalar(f["n_sites"], "iu")
            if n is None or n < 1:
                raise ValueError(
                    f"{path}: corrupt mpsntk MPS file, n_sites = {_short_repr(f['n_sites'])} is "
                    "not an integer >= 1"
                )
            n_cores = sum(1 for k in f.files if k.startswith("core_"))
            missing = [f"core_{j}" for j in range(min(n, n_cores + 4)) if f"core_{j}" not in f]
            if missing or n > n_cores:
                raise ValueError(
                    f"{path}: corrupt mpsntk MPS file, n_sites = {n} but it holds {n_cores} "
                    f"cores; missing {', '.join(missing)}{', ...' if n > n_cores + 4 else ''}"
                )
            out = _scalar(f["output_site"], "iu")
            if out is None:
                raise ValueError(f"{path}: corrupt mpsntk MPS file, bad output_site")
            try:
                mps = cls(
                    [f[f"core_{j}"] for j in range(n)],
                    str(f["boundary"]),
                    scales=f["scales"],
                    site_lr=f["site_lr"],
                    output_site=None if out < 0 else out,
                )
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}: corrupt mpsntk MPS file: {exc}") from exc
            mps.parametrization = str(f["parametrization"]) or None
            mps.init = json.loads(str(f["init"])) if "init" in f else None
        return mps
