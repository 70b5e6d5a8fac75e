"""Which engines are present, and routing of arrays to them.

``_core`` (the C++ host engine) is always built.  ``_cuda`` is optional: it is imported inside
``try`` and, if it cannot be used, the reason is recorded so that a request for the GPU path
fails with that reason instead of a bare ImportError.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _core

__all__ = [
    "CudaError",
    "CudaUnavailableError",
    "array_module",
    "as_array",
    "build_info",
    "cuda_available",
    "is_device_array",
]


def _check_isa_request():
    """MPSNTK_ISA names the instruction set of the host engine: a name this build does not know is
    an error, a set this CPU lacks a warning (the engine then uses the best set it has)."""
    problem, message = _core.isa_request_problem()
    if problem == "unknown":
        raise ValueError(message)
    if problem == "unsupported":
        warnings.warn(message, RuntimeWarning, stacklevel=3)


_check_isa_request()


class CudaError(RuntimeError):
    """A CUDA call failed (the message names the call site and the CUDA error)."""


class CudaUnavailableError(RuntimeError):
    """A device array was passed but the CUDA engine cannot be used here."""


# The CUDA engine's usability is asked of the driver on first use, not at import: a process
# that has initialised CUDA cannot use it in children it forks (multiprocessing, DataLoader
# workers), so importing mpsntk must not initialise it.
_UNRESOLVED = object()

try:  # pragma: no cover - depends on the build
    from . import _cuda  # type: ignore[attr-defined]

    _cuda._set_error_class(CudaError)
    _cuda_reason = _UNRESOLVED
except ImportError as exc:
    _cuda = None
    _cuda_reason = (
        "mpsntk was built without CUDA support"
        if "_cuda" in str(exc)
        else f"the CUDA extension failed to import: {exc}"
    )


def cuda_unavailable_reason() -> str | None:
    """Why :func:`cuda_available` is False (None when it is True)."""
    global _cuda_reason
    if _cuda_reason is _UNRESOLVED:  # pragma: no cover - depends on the build
        _cuda_reason = (
            None
            if _cuda.device_count() > 0
            else f"no usable CUDA device ({_cuda.device_unavailable_reason()})"
        )
    return _cuda_reason


def cuda_available() -> bool:
    """Return True when the CUDA engine is built and a usable device (compute capability 8.0 or
    newer) is visible.  The first call initialises CUDA."""
    return cuda_unavailable_reason() is None


def cupy_module():
    """CuPy, or :class:`CudaUnavailableError` saying how to get it."""
    try:
        import cupy
    except ImportError as exc:
        raise CudaUnavailableError(
            "mpsntk's GPU path allocates with CuPy, which is not installed "
            "(pip install cupy-cuda13x, or the package for your CUDA version)"
        ) from exc
    return cupy


def build_info() -> dict:
    """Version, compiler, OpenMP, instruction sets, and CUDA status of this build.

    Returns
    -------
    dict
        ``version``, ``compiler``, ``openmp``, ``compiled_isas`` (the instruction sets the
        engine was compiled for), ``isas`` (those usable on this CPU, best first), ``isa`` (the
        one in use: the best, or ``MPSNTK_ISA``), ``compile_flags`` (the C++ flags common to
        every instruction set: none may target the build machine), ``n_threads``, ``numpy``,
        ``cuda`` (bool) and ``cuda_reason`` (why CUDA is unavailable, or None); with the CUDA
        engine built, ``cuda_runtime`` (its CUDA version) and ``cuda_architectures``.
    """
    info = dict(_core.build_info())
    info["isa"] = _core.current_isa()
    info["n_threads"] = _core.get_num_threads()
    info["numpy"] = np.__version__
    info["cuda"] = cuda_available()
    info["cuda_reason"] = cuda_unavailable_reason()
    if _cuda is not None:  # pragma: no cover - depends on the build
        info.update({f"cuda_{k}": v for k, v in _cuda.build_info().items()})
    return info


# DLPack device types of CUDA memory: kDLCUDA, kDLCUDAManaged.
_DLPACK_CUDA = (2, 13)


def _dlpack_device_type(a):
    try:
        return int(a.__dlpack_device__()[0])
    except Exception:  # a broken or foreign protocol implementation: not a device array
        return None


def is_device_array(a) -> bool:
    """True for arrays on a CUDA device: ``__cuda_array_interface__`` (CuPy, PyTorch, Numba)
    or DLPack with a CUDA device (JAX and any other DLPack producer)."""
    if hasattr(a, "__cuda_array_interface__"):
        return True
    return hasattr(a, "__dlpack_device__") and _dlpack_device_type(a) in _DLPACK_CUDA


def as_array(a, xp):
    """``a`` as an array of ``xp`` (NumPy or CuPy) without copying where it is already one.

    CUDA arrays are viewed by CuPy, through ``__cuda_array_interface__`` or else DLPack; host
    objects that speak only DLPack are viewed by NumPy the same way.
    """
    if isinstance(a, xp.ndarray):
        return a
    if xp is np:
        if hasattr(a, "__dlpack__") and not hasattr(a, "__array__"):
            return np.from_dlpack(a)
        return np.asarray(a)
    if hasattr(a, "__cuda_array_interface__"):  # pragma: no cover - Numba, PyTorch: a GPU
        return xp.asarray(a)
    return xp.from_dlpack(a)


def array_module(*arrays, names):
    """NumPy for host arrays, CuPy when every given array lives on a CUDA device.

    ``None`` entries are ignored.  Mixing host and device arrays raises ``TypeError`` (nothing is
    copied behind the caller's back); device arrays without a usable CUDA engine raise
    :class:`CudaUnavailableError` with the recorded reason.
    """
    present = [(a, n) for a, n in zip(arrays, names) if a is not None]
    on_device = [n for a, n in present if is_device_array(a)]
    if not on_device:
        return np
    if len(on_device) != len(present):
        raise TypeError(
            f"{', '.join(on_device)} live on a CUDA device but the other arguments are host "
            "arrays; pass all of them on the same device"
        )
    if not cuda_available():
        raise CudaUnavailableError(
            f"{', '.join(on_device)} are CUDA arrays: {cuda_unavailable_reason()}"
        )
    cupy = cupy_module()
    for a, n in present:
        check_on_current_device(a, n, cupy)
        iface = getattr(a, "__cuda_array_interface__", None)
        if iface is not None and iface["data"][0] % int(iface["typestr"][2:]) != 0:
            raise ValueError(
                f"{n}: the data of a CUDA array must be aligned to its {iface['typestr'][2:]}-byte "
                f"elements; got address {iface['data'][0]:#x} (pass a copy)"
            )
    return cupy


def _device_ordinal(a, cupy):
    """The CUDA device that holds the data of device array ``a``."""
    if hasattr(a, "__dlpack_device__"):
        return int(a.__dlpack_device__()[1])
    ptr = a.__cuda_array_interface__["data"][0]  # e.g. Numba arrays, which have no DLPack
    return int(cupy.cuda.runtime.pointerGetAttributes(ptr).device)


def check_on_current_device(a, name, cupy):
    """ValueError unless device array ``a`` is on the current CUDA device, where the kernels run."""
    where, current = _device_ordinal(a, cupy), int(cupy.cuda.runtime.getDevice())
    if where != current:
        raise ValueError(
            f"{name} is on CUDA device {where} but the current device is {current}: the kernels "
            f"run on the current device; call under `with cupy.cuda.Device({where}):` or move "
            "the arrays"
        )


def require_host(*arrays, names):
    """Reject device arrays for routines that only run on the host (clear reason, no copies)."""
    if array_module(*arrays, names=names) is not np:
        raise CudaUnavailableError(
            f"{', '.join(names)}: this routine runs on the host only; pass NumPy arrays"
        )


def set_num_threads(n_threads: int) -> None:
    """Set the number of threads of the host engine, for the whole process.

    Every later call of the engine uses ``n_threads`` threads, whichever Python thread makes it
    (OpenMP's own setting, ``omp_set_num_threads``, applies to the calling thread only, so
    engine calls from a thread pool would otherwise each start the default number of threads).
    The initial value is OpenMP's default: ``OMP_NUM_THREADS``, or the number of cores.

    Processes forked after the engine was first used (``os.fork``, ``multiprocessing`` with the
    "fork" start method) run it on one thread: GNU OpenMP's thread pool does not survive
    ``fork``, and a team started there would wait forever.  There ``set_num_threads(n > 1)``
    warns and the engine stays on one thread; use the "spawn" or "forkserver" start method
    for multi-threaded workers.

    Parameters
    ----------
    n_threads : int
        At least 1.
    """
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"n_threads must be an integer >= 1; got {n_threads!r}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be an integer >= 1; got {n_threads}")
    if not _core.set_num_threads(int(n_threads)):
        warnings.warn(
            f"set_num_threads({int(n_threads)}): this process was forked after mpsntk's engine "
            "was used, and OpenMP's threads do not survive fork; the engine stays on one thread "
            "here (start workers with the 'spawn' or 'forkserver' method for more)",
            RuntimeWarning,
            stacklevel=2,
        )


def get_num_threads() -> int:
    """Number of threads the host engine uses (process-wide; 1 in forked children, see
    :func:`set_num_threads`)."""
    return int(_core.get_num_threads())
