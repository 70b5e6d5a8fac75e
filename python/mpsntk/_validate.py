"""Input validation shared by the whole Python layer.

Every public routine validates its arguments here first and raises ``TypeError`` (wrong type or
dtype) or ``ValueError`` (wrong shape, value or size) naming the argument, what was expected and
what arrived.  Nothing is silently coerced: float32 stays float32, float64 stays float64, and any
other dtype is an error.
"""

from __future__ import annotations

import numbers
import os
import reprlib

import numpy as np

from ._backend import as_array

_FEATURE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_REPR_LIMIT = 80  # characters of a value's repr that an error message quotes


def _make_short_repr():
    short = reprlib.Repr()
    short.maxlevel = 3
    short.maxtuple = short.maxlist = short.maxset = short.maxfrozenset = 16
    short.maxdeque = short.maxdict = short.maxarray = 16
    short.maxstring = short.maxother = short.maxlong = _REPR_LIMIT
    return short


_SHORT_REPR = _make_short_repr()


def _short_repr(value, limit=_REPR_LIMIT):
    """``repr(value)`` cut to at most ``limit`` characters (``...`` marks a cut).

    Containers are abbreviated by :mod:`reprlib` on the way, so a huge nested list is never
    rendered in full just to be cut.
    """
    try:
        text = _SHORT_REPR.repr(value)
    except Exception:  # a broken __repr__ must not hide the error being reported
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value):
    """Return a short description of ``value`` for error messages.

    Arrays are described by shape and dtype; anything else by its repr, cut to about 80
    characters, and its type.
    """
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = _short_repr(value)
    kind = type(value).__name__
    if isinstance(value, (list, tuple, dict, set, frozenset)) and "..." in text:
        kind = f"{kind} of length {len(value)}"
    return f"{text} of type {kind}"


def _check_feature_dtype(dtype, name="dtype"):
    """Return ``dtype`` as a NumPy dtype, accepting float32 and float64 only."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be numpy.float32 or numpy.float64; got {dtype!r}") from exc
    if resolved not in _FEATURE_DTYPES:
        raise TypeError(f"{name} must be numpy.float32 or numpy.float64; got {resolved}")
    return resolved


def _check_int(value, name, minimum):
    """Return ``value`` as a Python int after checking that it is an integer >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}; got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")
    return int(value)


def _check_positive_float(value, name):
    """Return ``value`` as a Python float after checking that it is real, finite and > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive finite real number; got {_describe(value)}")
    value = float(value)
    if not np.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite real number; got {value}")
    return value


def _check_bool(value, name):
    """Return ``value`` as a Python bool, rejecting anything that is not a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {_describe(value)}")
    return bool(value)


def _check_seed(seed, name="seed", *, base=False):
    """The one validator of random seeds: return a NumPy Generator for ``seed``.

    ``seed`` is None, an integer >= 0, a ``numpy.random.Generator`` (returned as is, so that
    its stream continues), or a ``numpy.random.SeedSequence`` / ``BitGenerator`` (passed on to
    ``numpy.random.default_rng``).  With ``base=True`` the seed is the base of a family of
    streams that the caller derives (``seed + k``, ``SeedSequence(seed).spawn``): it must be an
    integer >= 0 and is returned as a Python int.  Anything else raises ``TypeError``, a
    negative integer ``ValueError``; the message names ``name``.
    """
    if base:
        return _check_int(seed, name, 0)
    expected = f"{name} must be None, an integer >= 0 or a numpy.random.Generator"
    if seed is None or isinstance(
        seed, (np.random.Generator, np.random.SeedSequence, np.random.BitGenerator)
    ):
        return np.random.default_rng(seed)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{expected}; got {_describe(seed)}")
    if seed < 0:
        raise ValueError(f"{expected}; got {seed}")
    return np.random.default_rng(int(seed))


def _check_choice(value, name, choices):
    """Check that ``value`` is one of the strings in ``choices`` and return it."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")
    return value


def _as_inputs(x, name="x"):
    """Validate raw inputs of shape ``(n_samples, n_sites)`` and return them as float64."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must be a real numeric array of shape (n_samples, n_sites); "
            f"got dtype {arr.dtype}"
        )
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_samples, n_sites); "
            f"got {arr.ndim}-D shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(
            f"{name} must be non-empty with shape (n_samples, n_sites); got shape {arr.shape}"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got NaN or Inf entries")
    return arr


def _as_configurations(x, phys_dim, name="x", n_sites=None):
    """The one validator of discrete configurations: an array of shape ``(n_samples, n_sites)``
    with integer entries in ``{0, ..., phys_dim - 1}``, returned as int64.

    Integer and bool arrays are accepted, float arrays when every entry is an integer; any
    other dtype is a ``TypeError``, a wrong shape (``n_sites`` columns when given), a
    non-integer or out-of-range entry a ``ValueError``.
    """
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must be an integer array of shape (n_samples, n_sites); got dtype {arr.dtype}"
        )
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array of shape (n_samples, n_sites); "
            f"got shape {arr.shape}"
        )
    if n_sites is not None and arr.shape[1] != n_sites:
        raise ValueError(
            f"{name} must have shape (n_samples, n_sites={n_sites}); got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must contain integers in {{0, ..., {phys_dim - 1}}}")
    if arr.min() < 0 or arr.max() > phys_dim - 1:
        raise ValueError(
            f"{name} must take values in {{0, ..., {phys_dim - 1}}} for phys_dim={phys_dim}; "
            f"got values in [{arr.min():g}, {arr.max():g}]"
        )
    return arr.astype(np.int64)


def _as_phi(phi, name="phi", xp=np):
    """Validate features of shape ``(n_samples, n_sites, phys_dim)``.

    Returns the features as an array of ``xp`` (NumPy, or CuPy for device features) of their
    own floating dtype (float32 or float64); integer, complex and other dtypes are rejected.
    """
    arr = as_array(phi, xp)
    if arr.dtype not in _FEATURE_DTYPES:
        raise TypeError(
            f"{name} must be a float32 or float64 array of shape "
            f"(n_samples, n_sites, phys_dim); got dtype {arr.dtype}"
        )
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must be a 3-D array of shape (n_samples, n_sites, phys_dim); "
            f"got {arr.ndim}-D shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(
            f"{name} must be non-empty with shape (n_samples, n_sites, phys_dim); "
            f"got shape {arr.shape}"
        )
    if not bool(xp.all(xp.isfinite(arr))):
        raise ValueError(f"{name} must be finite; got NaN or Inf entries")
    return arr


def _as_phi_pair(phi1, phi2):
    """Validate a pair of feature arrays; ``phi2=None`` means ``phi2 = phi1``.

    Returns ``(phi1, phi2, result_dtype)`` where ``result_dtype`` is the
    promoted floating dtype of the two arrays.
    """
    phi1 = _as_phi(phi1, "phi1")
    if phi2 is None:
        phi2 = phi1
    else:
        phi2 = _as_phi(phi2, "phi2")
        if phi2.shape[1:] != phi1.shape[1:]:
            raise ValueError(
                "phi2 must have the same (n_sites, phys_dim) as phi1, "
                f"{phi1.shape[1:]}; got shape {phi2.shape}"
            )
    return phi1, phi2, np.result_type(phi1.dtype, phi2.dtype)


def _as_site_vector(value, name, n_sites, *, positive):
    """Broadcast a scalar or an ``(n_sites,)`` array to a float64 vector.

    With ``positive=True`` every entry must be > 0, otherwise >= 0; all
    entries must be finite.
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise TypeError(
            f"{name} must be a real scalar or an array of shape ({n_sites},); got dtype {arr.dtype}"
        )
    if arr.ndim == 0:
        arr = np.full(n_sites, float(arr))
    elif arr.shape != (n_sites,):
        raise ValueError(
            f"{name} must be a real scalar or an array of shape (n_sites,) = ({n_sites},); "
            f"got shape {arr.shape}"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got NaN or Inf entries")
    if positive and np.any(arr <= 0.0):
        raise ValueError(f"{name} must be > 0 at every site; got minimum {arr.min()}")
    if not positive and np.any(arr < 0.0):
        raise ValueError(f"{name} must be >= 0 at every site; got minimum {arr.min()}")
    return arr


def _available_memory():
    """Bytes that new allocations can take without swapping (None when the OS does not say):
    Linux's MemAvailable (free memory plus the page cache it can reclaim), within the headroom
    of a cgroup (v2) memory limit and of the process's own limits (``ulimit -v`` / ``-d``)."""
    avail = _meminfo_available()
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
            return None
    for headroom in (_cgroup_headroom(), _rlimit_headroom()):
        if headroom is not None:
            avail = min(avail, headroom)
    return avail


def _rlimit_headroom():
    """What RLIMIT_AS (address space) and RLIMIT_DATA (private data) leave to this process,
    None without such limits or where the OS does not say."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    used = _proc_status_bytes(("VmSize", "VmData"))
    headroom = None
    for limit, field in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
        soft = resource.getrlimit(getattr(resource, limit))[0]
        if soft == resource.RLIM_INFINITY or used.get(field) is None:
            continue
        left = max(soft - used[field], 0)
        headroom = left if headroom is None else min(headroom, left)
    return headroom


def _proc_status_bytes(fields, path="/proc/self/status"):
    """Fields of /proc/self/status given in kB, as bytes ({} where it cannot be read)."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in fields:
                    out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _meminfo_available(path="/proc/meminfo"):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom(root="/sys/fs/cgroup"):
    """memory.max less the memory in use, not counting reclaimable page cache (None without a
    limit)."""
    try:
        with open(os.path.join(root, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(root, "memory.current")) as f:
            used = int(f.read())
        with open(os.path.join(root, "memory.stat")) as f:
            cache = next((int(v) for k, v in (ln.split() for ln in f) if k == "file"), 0)
        return max(int(limit) - used + cache, 0)
    except (OSError, ValueError):
        return None


def _check_fits(nbytes, what, hint="", device_free=None):
    """Raise ValueError when allocating ``nbytes`` would exceed the available memory: the host's
    (:func:`_available_memory`), or with ``device_free`` (a function returning the free bytes of
    the current CUDA device, None when unknown) the device's."""
    if device_free is not None:
        free = device_free()
        if free is not None and nbytes > free:
            raise ValueError(
                f"{what} needs {nbytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB of GPU "
                f"memory is free{'; ' + hint if hint else ''}"
            )
        return
    avail = _available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.2f} GiB but only {avail / 2**30:.2f} GiB of memory is "
            f"available{'; ' + hint if hint else ''}"
        )


def _array_bytes(shape, dtype):
    """Bytes of an array of ``shape`` and ``dtype``, as a float (no integer overflow)."""
    return float(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize


def _check_array_fits(shape, dtype, what, hint="", extra=0):
    """ValueError when an array of ``shape`` and ``dtype`` (plus ``extra`` bytes of work space)
    would exceed the available memory."""
    _check_fits(_array_bytes(shape, dtype) + extra, what, hint)


# Bytes a core costs beyond its entries (array object, list slot, allocator), measured.
_CORE_OVERHEAD = 512


def _check_model_fits(bonds, phys_dim, n_outputs, dtype):
    """ValueError, before anything is allocated, when an MPS with these bond dimensions would
    not fit in the available memory (its entries, a float64 draw of the largest core, and the
    Python objects of every core)."""
    b = np.asarray(bonds, dtype=np.float64)
    sizes = b[:-1] * b[1:] * phys_dim
    n_params = float(sizes.sum()) + (n_outputs - 1) * float(sizes.max())  # label core: upper bound
    nbytes = n_params * np.dtype(dtype).itemsize + 16 * n_outputs * float(sizes.max())
    nbytes += _CORE_OVERHEAD * len(sizes)
    _check_fits(
        nbytes,
        f"an MPS with {len(sizes)} sites and {n_params:.4g} {np.dtype(dtype).name} parameters",
        "reduce n_sites or bond_dim",
    )


def _check_in_range(xp, arrays, what, dtype, mps=None, hint=None):
    """FloatingPointError unless every entry of ``arrays`` is finite: the inputs are (validated),
    so an Inf or NaN here is an overflow of ``dtype`` -- unless the parameters of ``mps`` were
    overwritten with NaN or Inf after it was built, which ValueError then says."""
    if not all(bool(xp.all(xp.isfinite(a))) for a in arrays):
        if mps is not None:
            mps.check_parameters()
        hint = hint or "scale the features or the cores down (or compute in float64)"
        raise FloatingPointError(f"{what} overflows the range of {np.dtype(dtype).name}; {hint}")
    return arrays


def _below_normal(xp, a, dtype):
    """Whether every entry of ``a`` lies below the smallest normal number of ``dtype`` (an
    underflow, unless the exact result is zero: the caller asks the normalised form)."""
    if a.size == 0:
        return False
    return max(float(xp.max(a)), -float(xp.min(a))) < np.finfo(dtype).tiny


_NORMALISED_OVERFLOW = (
    "its entries carry the products of the features, which are not normalised: scale the "
    "features down or compute in float64"
)


def _check_out(out, shape, dtype, name="out", xp=np):
    """Validate a caller-provided output array (ndarray, memmap, or CuPy array) and return it."""
    if not isinstance(out, xp.ndarray):
        kind = "a numpy.ndarray (or numpy.memmap)" if xp is np else "a cupy.ndarray"
        raise TypeError(f"{name} must be {kind}; got {_describe(out)}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}; got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out
