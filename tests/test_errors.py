"""Every malformed input is rejected with a TypeError or ValueError that names the argument.

Each case states the exception class and a regular expression that must appear in the message,
so an internal NumPy / pybind11 error (or a silent coercion) fails the test.
"""

import re

import numpy as np
import pytest

import mpsntk as mn
import mpsntk._validate as validate

from conftest import DLPackOnly

N_SITES = 4


class FakeDeviceArray:
    """Quacks like a CuPy array: only ``__cuda_array_interface__`` is provided."""

    def __init__(self, shape=(3, N_SITES, 2), typestr="<f8"):
        self.shape = shape
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (0, False),
            "version": 3,
        }


class FakeDLPackDeviceArray:
    """A DLPack-only CUDA array (as JAX gives): ``__dlpack__`` and ``__dlpack_device__``."""

    def __init__(self, shape=(3, N_SITES, 2), device_type=2):
        self.shape = shape
        self._device_type = device_type

    def __dlpack_device__(self):
        return (self._device_type, 0)

    def __dlpack__(self, stream=None):  # never reached without a GPU
        raise AssertionError("a device array was read on the host")


def ones(*shape, dtype=np.float64):
    return np.ones(shape, dtype=dtype)


@pytest.fixture(scope="module")
def model():
    return mn.MPS.random(N_SITES, 3, seed=0)


@pytest.fixture(scope="module")
def model_multi():
    return mn.MPS.random(N_SITES, 3, n_outputs=3, output_site=1, seed=1)


@pytest.fixture(scope="module")
def model32():
    return mn.MPS.random(N_SITES, 3, seed=2, dtype=np.float32)


@pytest.fixture(scope="module")
def phi():
    return mn.features.trig(np.random.default_rng(0).uniform(size=(5, N_SITES)))


# --------------------------------------------------------------------------- MPS(...) cores

OPEN2 = [ones(2, 1, 3), ones(2, 3, 1)]

BAD_CORES = [
    ("rank2", [ones(1, 1), ones(2, 1, 1)], {}, ValueError,
     r"cores\[0\] must have shape \(phys_dim, D_left, D_right\); got shape \(1, 1\)"),
    ("rank2-later", [ones(2, 1, 2), ones(2, 1)], {}, ValueError, r"cores\[1\] must have shape"),
    ("rank4-not-output-site", [ones(1, 2, 1, 1)], {}, ValueError,
     r"cores\[0\] must have shape \(phys_dim, D_left, D_right\)"),
    ("rank3-at-output-site", OPEN2, {"output_site": 1}, ValueError,
     r"cores\[1\] must have shape \(n_outputs, phys_dim, D_left, D_right\)"),
    ("rank5", [np.ones((1, 1, 2, 1, 1))], {"output_site": 0}, ValueError, r"cores\[0\]"),
    ("bond-mismatch", [ones(2, 1, 3), ones(2, 2, 1)], {}, ValueError,
     r"cores\[1\] has left bond dimension 2 but cores\[0\] has right bond dimension 3"),
    ("phys-mismatch", [ones(2, 1, 3), ones(3, 3, 1)], {}, ValueError,
     r"cores\[1\] has phys_dim 3 but cores\[0\] has 2"),
    ("open-D0", [ones(2, 2, 3), ones(2, 3, 1)], {}, ValueError,
     r"open boundary needs D_0 = D_N = 1; got D_0 = 2"),
    ("open-DN", [ones(2, 1, 3), ones(2, 3, 2)], {}, ValueError, r"D_N = 2"),
    ("periodic-D0-ne-DN", [ones(2, 2, 3), ones(2, 3, 3)], {"boundary": "periodic"}, ValueError,
     r"periodic boundary needs D_0 = D_N; got 2 and 3"),
    ("periodic-1-site", [ones(2, 2, 2)], {"boundary": "periodic"}, ValueError,
     r"periodic boundary needs n_sites >= 2"),
    ("empty-list", [], {}, ValueError, r"cores must hold at least one core"),
    ("empty-core", [ones(2, 1, 0), ones(2, 0, 1)], {}, ValueError,
     r"cores\[0\] must be non-empty; got shape \(2, 1, 0\)"),
    ("empty-phys", [ones(0, 1, 1)], {}, ValueError, r"cores\[0\] must be non-empty"),
    ("mixed-dtype", [ones(2, 1, 3), ones(2, 3, 1, dtype=np.float32)], {}, TypeError,
     r"cores must share one dtype; cores\[0\] is float64 but cores\[1\] is float32"),
    ("int-core", [ones(2, 1, 1, dtype=np.int64)], {}, TypeError,
     r"cores\[0\] must be float32 or float64; got dtype int64"),
    ("int-core-later", [ones(2, 1, 1), ones(2, 1, 1, dtype=np.int32)], {}, TypeError,
     r"cores\[1\] must be float32 or float64"),
    ("complex-core", [ones(2, 1, 1, dtype=np.complex128)], {}, TypeError,
     r"cores\[0\] must be float32 or float64; got dtype complex128"),
    ("float16-core", [ones(2, 1, 1, dtype=np.float16)], {}, TypeError,
     r"cores\[0\] must be float32 or float64"),
    ("bool-core", [ones(2, 1, 1, dtype=bool)], {}, TypeError, r"cores\[0\] must be float32"),
    ("object-core", [np.array([None, None])], {}, TypeError, r"cores\[0\] must be float32"),
    ("nan-core", [ones(2, 1, 3), np.full((2, 3, 1), np.nan)], {}, ValueError,
     r"cores\[1\] must be finite; got NaN or Inf"),
    ("inf-core", [np.full((2, 1, 3), -np.inf), ones(2, 3, 1)], {}, ValueError,
     r"cores\[0\] must be finite"),
    ("nan-core-float32", [ones(2, 1, 1, dtype=np.float32) * np.float32("nan")], {}, ValueError,
     r"cores\[0\] must be finite"),
    ("cores-ndarray", np.ones((2, 2, 1, 1)), {}, TypeError, r"cores must be a list of arrays"),
    ("cores-generator", (c for c in OPEN2), {}, TypeError, r"cores must be a list of arrays"),
    ("cores-none", None, {}, TypeError, r"cores must be a list of arrays"),
    ("scales-negative", OPEN2, {"scales": -1.0}, ValueError, r"scales must be > 0"),
    ("scales-zero", OPEN2, {"scales": [1.0, 0.0]}, ValueError, r"scales must be > 0"),
    ("scales-length", OPEN2, {"scales": [1.0, 1.0, 1.0]}, ValueError,
     r"scales must be a real scalar or an array of shape \(n_sites,\) = \(2,\); got shape \(3,\)"),
    ("scales-2d", OPEN2, {"scales": np.ones((2, 1))}, ValueError, r"scales must be .*shape"),
    ("scales-nan", OPEN2, {"scales": [1.0, np.nan]}, ValueError, r"scales must be finite"),
    ("scales-inf", OPEN2, {"scales": np.inf}, ValueError, r"scales must be finite"),
    ("scales-bool", OPEN2, {"scales": True}, TypeError, r"scales must be a real scalar"),
    ("scales-str", OPEN2, {"scales": "1"}, TypeError, r"scales must be a real scalar"),
    ("scales-complex", OPEN2, {"scales": 1j}, TypeError, r"scales must be a real scalar"),
    ("site_lr-negative", OPEN2, {"site_lr": [1.0, -0.5]}, ValueError, r"site_lr must be >= 0"),
    ("site_lr-nan", OPEN2, {"site_lr": np.nan}, ValueError, r"site_lr must be finite"),
    ("site_lr-length", OPEN2, {"site_lr": [1.0]}, ValueError, r"site_lr must be .*shape"),
    ("output_site-too-large", OPEN2, {"output_site": 2}, ValueError,
     r"output_site must be < n_sites = 2; got 2"),
    ("output_site-negative", OPEN2, {"output_site": -1}, ValueError,
     r"output_site must be an integer >= 0; got -1"),
    ("output_site-float", OPEN2, {"output_site": 1.0}, TypeError,
     r"output_site must be an integer"),
    ("output_site-str", OPEN2, {"output_site": "0"}, TypeError, r"output_site must be an integer"),
    ("output_site-bool", OPEN2, {"output_site": True}, TypeError,
     r"output_site must be an integer >= 0; got True"),
    ("output_site-np-bool", OPEN2, {"output_site": np.bool_(False)}, TypeError,
     r"output_site must be an integer"),
    ("boundary-bad", OPEN2, {"boundary": "closed"}, ValueError,
     r"boundary must be one of 'open', 'periodic'; got 'closed'"),
    ("boundary-case", OPEN2, {"boundary": "Open"}, ValueError, r"boundary must be one of"),
    ("boundary-none", OPEN2, {"boundary": None}, ValueError, r"boundary must be one of"),
    ("copy-not-bool", OPEN2, {"copy": "no"}, TypeError, r"copy must be True or False"),
]


@pytest.mark.parametrize(
    "cores, kwargs, exc, match", [c[1:] for c in BAD_CORES], ids=[c[0] for c in BAD_CORES]
)
def test_mps_constructor_rejects(cores, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mn.MPS(cores, **kwargs)


def test_mps_constructor_accepts_valid_edge_cases():
    # the counterparts of the rejected inputs above, to make sure the checks are not too eager
    assert mn.MPS([ones(3, 1, 1)]).n_sites == 1
    assert mn.MPS([ones(2, 2, 3), ones(2, 3, 2)], "periodic").bond_dims == (2, 3, 2)
    assert mn.MPS([ones(2, 1, 3), ones(4, 2, 3, 1)], output_site=1).n_outputs == 4
    assert mn.MPS(OPEN2, site_lr=[0.0, 1.0]).site_lr.tolist() == [0.0, 1.0]
    assert mn.MPS(OPEN2, output_site=None, scales=np.array([1, 2])).scales.dtype == np.float64


# --------------------------------------------------------------------------- MPS.random

BAD_RANDOM = [
    ("n_sites-0", (0, 2), {}, ValueError, r"n_sites must be an integer >= 1; got 0"),
    ("n_sites-float", (2.0, 2), {}, TypeError, r"n_sites must be an integer"),
    ("n_sites-bool", (True, 2), {}, TypeError, r"n_sites must be an integer"),
    ("bond_dim-0", (3, 0), {}, ValueError, r"bond_dim must be an integer >= 1; got 0"),
    ("bond_dim-negative", (3, -2), {}, ValueError, r"bond_dim must be an integer >= 1"),
    ("bond_dim-float", (3, 2.0), {}, ValueError, r"bond_dim must be an int or a sequence"),
    ("bond_dim-none", (3, None), {}, ValueError, r"bond_dim must be an int or a sequence"),
    ("bond_dim-list-short", (4, [1, 2, 1]), {}, ValueError,
     r"bond_dim must be an int or a sequence of n_sites \+ 1 = 5 bond dimensions"),
    ("bond_dim-list-long", (2, [1, 2, 2, 1]), {}, ValueError, r"n_sites \+ 1 = 3"),
    ("bond_dim-list-2d", (2, [[1, 2, 1]]), {}, ValueError, r"bond_dim must be an int or a seq"),
    ("bond_dim-list-zero", (2, [1, 0, 1]), {}, ValueError, r"bond_dim entries must be"),
    ("bond_dim-list-float", (2, [1, 2.5, 1]), {}, TypeError, r"bond_dim entries must be"),
    ("bond_dim-list-open-ends", (2, [2, 2, 2]), {}, ValueError,
     r"open boundary needs D_0 = D_N = 1"),
    ("bond_dim-list-periodic-ends", (2, [2, 3, 4]), {"boundary": "periodic"}, ValueError,
     r"periodic boundary needs D_0 = D_N"),
    ("phys_dim-0", (3, 2), {"phys_dim": 0}, ValueError, r"phys_dim must be an integer >= 1"),
    ("n_outputs-0", (3, 2), {"n_outputs": 0}, ValueError, r"n_outputs must be an integer >= 1"),
    ("periodic-1-site", (1, 2), {"boundary": "periodic"}, ValueError, r"n_sites >= 2"),
    ("boundary", (3, 2), {"boundary": "ring"}, ValueError, r"boundary must be one of"),
    ("parametrization", (3, 2), {"parametrization": "mup"}, ValueError,
     r"parametrization must be one of 'ntk', 'standard'; got 'mup'"),
    ("parametrization-none", (3, 2), {"parametrization": None}, ValueError,
     r"parametrization must be one of"),
    ("init", (3, 2), {"init": "eye"}, ValueError,
     r"init must be one of 'normal', 'near_identity'; got 'eye'"),
    ("dtype-int32", (3, 2), {"dtype": np.int32}, TypeError,
     r"dtype must be numpy.float32 or numpy.float64; got int32"),
    ("dtype-float16", (3, 2), {"dtype": np.float16}, TypeError, r"dtype must be numpy.float32"),
    ("dtype-complex", (3, 2), {"dtype": np.complex128}, TypeError, r"dtype must be numpy.float32"),
    ("dtype-garbage", (3, 2), {"dtype": "foo"}, TypeError, r"dtype must be numpy.float32"),
    ("sigma-negative", (3, 2), {"sigma": -1.0}, ValueError, r"sigma must be > 0"),
    ("sigma-zero", (3, 2), {"sigma": [1.0, 0.0, 1.0]}, ValueError, r"sigma must be > 0"),
    ("sigma-length", (3, 2), {"sigma": [1.0, 1.0]}, ValueError, r"sigma must be .*shape"),
    ("sigma-nan", (3, 2), {"sigma": np.nan}, ValueError, r"sigma must be finite"),
    ("output_site-range", (3, 2), {"n_outputs": 2, "output_site": 3}, ValueError,
     r"output_site must be < n_sites = 3; got 3"),
    ("output_site-float", (3, 2), {"n_outputs": 2, "output_site": 1.0}, TypeError,
     r"output_site must be an integer"),
    ("output_site-bool", (3, 2), {"output_site": True}, TypeError,
     r"output_site must be an integer"),
    ("seed-str", (3, 2), {"seed": "abc"}, TypeError, r"seed must be"),
    ("seed-negative", (3, 2), {"seed": -1}, ValueError, r"seed must be"),
]


@pytest.mark.parametrize(
    "args, kwargs, exc, match", [c[1:] for c in BAD_RANDOM], ids=[c[0] for c in BAD_RANDOM]
)
def test_random_rejects(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mn.MPS.random(*args, **kwargs)


def test_random_accepts_numpy_integers_and_generators():
    mps = mn.MPS.random(np.int64(3), np.int32(2), seed=np.random.default_rng(0))
    assert mps.bond_dims == (1, 2, 2, 1)


# --------------------------------------------------------------------------- features


def _bad_phi_cases(phi):
    nan = phi.copy()
    nan[1, 2, 0] = np.nan
    inf = phi.copy()
    inf[0, 0, 1] = -np.inf
    return [
        ("rank2", phi[0], ValueError,
         r"phi must be a 3-D array of shape \(n_samples, n_sites, phys_dim\); got 2-D"),
        ("rank4", phi[None], ValueError, r"phi must be a 3-D array .* got 4-D"),
        ("rank1", phi[0, 0], ValueError, r"phi must be a 3-D array"),
        ("scalar", np.float64(1.0), ValueError, r"phi must be a 3-D array"),
        ("n_sites", phi[:, :3], ValueError,
         r"phi has n_sites = 3 \(shape \(5, 3, 2\)\) but the MPS has 4 sites"),
        ("phys_dim", np.concatenate([phi, phi], axis=2), ValueError,
         r"phi has phys_dim = 4 .* but the MPS has phys_dim = 2"),
        ("float32-on-float64", phi.astype(np.float32), TypeError,
         r"phi has dtype float32 but the MPS is float64"),
        ("int", phi.astype(np.int64), TypeError, r"phi must be a float32 or float64 array"),
        ("bool", phi > 0.5, TypeError, r"phi must be a float32 or float64 array"),
        ("complex", phi.astype(np.complex128), TypeError, r"phi must be a float32 or float64"),
        ("float16", phi.astype(np.float16), TypeError, r"phi must be a float32 or float64"),
        ("object", np.empty((5, N_SITES, 2), dtype=object), TypeError, r"phi must be a float32"),
        ("none", None, TypeError, r"phi must be a float32 or float64 array"),
        ("nan", nan, ValueError, r"phi must be finite; got NaN or Inf"),
        ("inf", inf, ValueError, r"phi must be finite"),
        ("empty", phi[:0], ValueError,
         r"phi must be non-empty with shape \(n_samples, n_sites, phys_dim\); "
         r"got shape \(0, 4, 2\)"),
        ("empty-phys", phi[:, :, :0], ValueError, r"phi must be non-empty"),
    ]


_PHI = mn.features.trig(np.random.default_rng(0).uniform(size=(5, N_SITES)))
BAD_PHI = _bad_phi_cases(_PHI)


@pytest.mark.parametrize("bad, exc, match", [c[1:] for c in BAD_PHI], ids=[c[0] for c in BAD_PHI])
def test_bad_features_rejected_everywhere(model, bad, exc, match):
    ones5 = np.ones(5)
    tangents = [np.ones_like(c) for c in model.cores]
    for call in (model.forward, model.log_forward, model, lambda p: mn.jacobian(model, p),
                 lambda p: mn.ntk_vp(model, p, ones5), lambda p: mn.vjp(model, p, ones5),
                 lambda p: mn.jvp(model, p, tangents)):
        with pytest.raises(exc, match=match):
            call(bad)
    # ntk names its first feature argument phi1 (and the second phi2)
    with pytest.raises(exc, match=match.replace("phi", "phi1", 1)):
        mn.ntk(model, bad)
    with pytest.raises(exc, match=match.replace("phi", "phi1", 1)):
        mn.ntk(model, bad, _PHI)


def test_float64_features_on_float32_model(model32, phi):
    with pytest.raises(TypeError, match=r"phi has dtype float64 but the MPS is float32"):
        model32.forward(phi)
    with pytest.raises(TypeError, match=r"phi1 has dtype float64 but the MPS is float32"):
        mn.ntk(model32, phi)
    with pytest.raises(TypeError, match=r"phi has dtype float64 but the MPS is float32"):
        mn.vjp(model32, phi, np.ones(5, np.float32))


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda p: p[:, :3], ValueError, r"phi2 has n_sites = 3"),
        (lambda p: p[..., :1], ValueError, r"phi2 has phys_dim = 1"),
        (lambda p: p.astype(np.float32), TypeError, r"phi2 has dtype float32"),
        (lambda p: p[:0], ValueError, r"phi2 must be non-empty"),
        (lambda p: p[0], ValueError, r"phi2 must be a 3-D array"),
        (lambda p: p.astype(int), TypeError, r"phi2 must be a float32 or float64"),
        (lambda p: p * np.nan, ValueError, r"phi2 must be finite"),
    ],
    ids=["n_sites", "phys_dim", "dtype", "empty", "rank", "int", "nan"],
)
def test_ntk_rejects_bad_phi2(model, phi, make, exc, match):
    with pytest.raises(exc, match=match):
        mn.ntk(model, phi, make(phi))


# --------------------------------------------------------------------------- ntk options


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"outputs": "sum"}, ValueError, r"outputs must be one of 'trace', 'mean', 'full'"),
        ({"outputs": None}, ValueError, r"outputs must be one of"),
        ({"per_site": 1}, TypeError, r"per_site must be True or False; got 1"),
        ({"per_site": "yes"}, TypeError, r"per_site must be True or False"),
        ({"per_site": None}, TypeError, r"per_site must be True or False"),
        ({"normalized": 0}, TypeError, r"normalized must be True or False"),
        ({"normalized": None}, TypeError, r"normalized must be True or False"),
        ({"tile": 0}, ValueError, r"tile must be an integer >= 1; got 0"),
        ({"precision": "tf16"}, ValueError, r"precision must be one of 'highest', 'tf32'"),
        ({"precision": None}, ValueError, r"precision must be one of"),
        ({"precision": "tf32"}, ValueError, r"precision='tf32' needs a float32 model on a CUDA"),
        ({"tile": -8}, ValueError, r"tile must be an integer >= 1; got -8"),
        ({"tile": 16.0}, TypeError, r"tile must be an integer >= 1"),
        ({"tile": "16"}, TypeError, r"tile must be an integer >= 1"),
        ({"tile": True}, TypeError, r"tile must be an integer >= 1"),
        ({"site_weights": [1.0, 2.0]}, ValueError, r"site_weights must be .*shape"),
        ({"site_weights": -1.0}, ValueError, r"site_weights must be >= 0"),
        ({"site_weights": np.nan}, ValueError, r"site_weights must be finite"),
        ({"site_weights": "a"}, TypeError, r"site_weights must be a real scalar"),
    ],
    ids=lambda v: ",".join(f"{k}={v[k]!r}" for k in v) if isinstance(v, dict) else None,
)
def test_ntk_rejects_bad_options(model, model_multi, phi, kwargs, exc, match):
    for mps in (model, model_multi):
        with pytest.raises(exc, match=match):
            mn.ntk(mps, phi, **kwargs)


def test_ntk_rejects_non_mps(phi):
    with pytest.raises(TypeError, match=r"mps must be an mpsntk.MPS; got str"):
        mn.ntk("model", phi)
    with pytest.raises(TypeError, match=r"mps must be an mpsntk.MPS; got NoneType"):
        mn.ntk_vp(None, phi, np.ones(5))
    with pytest.raises(TypeError, match=r"mps must be an mpsntk.MPS"):
        mn.jacobian({}, phi)
    with pytest.raises(TypeError, match=r"mps must be an mpsntk.MPS"):
        mn.vjp(object(), phi, np.ones(5))
    with pytest.raises(TypeError, match=r"mps must be an mpsntk.MPS"):
        mn.jvp(object(), phi, [])


def test_huge_tile_is_harmless(model, phi):
    # a tile larger than the kernel is one tile; it must neither crash nor allocate tile**2
    expected = mn.ntk(model, phi)
    np.testing.assert_allclose(mn.ntk(model, phi, tile=10**12), expected, rtol=1e-13)
    np.testing.assert_allclose(mn.ntk(model, phi, phi[:2], tile=2**40), expected[:, :2],
                               rtol=1e-13)


def _read_only(shape):
    a = np.zeros(shape)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    "make_out, kwargs, exc, match",
    [
        (lambda: np.empty((5, 4)), {}, ValueError, r"out must have shape \(5, 5\); got \(5, 4\)"),
        (lambda: np.empty(25), {}, ValueError, r"out must have shape \(5, 5\)"),
        (lambda: np.empty((5, 5)), {"per_site": True}, ValueError,
         r"out must have shape \(4, 5, 5\); got \(5, 5\)"),
        (lambda: np.empty((5, 5), np.float32), {}, TypeError,
         r"out must have dtype float64; got float32"),
        (lambda: np.empty((5, 5), np.int64), {}, TypeError, r"out must have dtype float64"),
        (lambda: np.empty((5, 10))[:, ::2], {}, ValueError, r"out must be C-contiguous"),
        (lambda: np.asfortranarray(np.empty((5, 5))), {}, ValueError,
         r"out must be C-contiguous"),
        (lambda: _read_only((5, 5)), {}, ValueError, r"out is read-only"),
        (lambda: [[0.0] * 5] * 5, {}, TypeError, r"out must be a numpy.ndarray"),
        (lambda: 0.0, {}, TypeError, r"out must be a numpy.ndarray"),
    ],
    ids=["shape", "flat", "per-site-shape", "float32", "int", "strided", "fortran", "read-only",
         "list", "scalar"],
)
def test_ntk_rejects_bad_out(model, phi, make_out, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mn.ntk(model, phi, out=make_out(), **kwargs)


def test_ntk_full_out_shape(model_multi, phi):
    with pytest.raises(ValueError, match=r"out must have shape \(5, 5, 3, 3\); got \(5, 5\)"):
        mn.ntk(model_multi, phi, outputs="full", out=np.empty((5, 5)))
    with pytest.raises(ValueError, match=r"out must have shape \(5, 5\); got \(5, 5, 3, 3\)"):
        mn.ntk(model_multi, phi, outputs="trace", out=np.empty((5, 5, 3, 3)))


def test_ntk_out_is_filled(model, phi):
    out = np.full((5, 5), np.nan)
    assert mn.ntk(model, phi, out=out) is out
    np.testing.assert_allclose(out, mn.ntk(model, phi), rtol=1e-13)


# --------------------------------------------------------------------------- memory checks


@pytest.fixture
def tiny_memory(monkeypatch):
    """Pretend that only 1 KiB of memory is available (the size checks then must refuse)."""
    monkeypatch.setattr(validate, "_available_memory", lambda: 1024)


def test_ntk_too_large_for_memory(model, phi, tiny_memory):
    # The environments are checked first and named: they are held whole, so a preallocated out=
    # (which avoids the output allocation) cannot help them.
    msg = r"the environments of this NTK needs .* GiB.*compute fewer samples"
    for kwargs in ({}, {"out": np.empty((5, 5))}, {"per_site": True}):
        with pytest.raises(ValueError, match=msg):
            mn.ntk(model, phi, **kwargs)


def test_ntk_output_size_counts_against_memory(model, monkeypatch):
    # 10 MB "available": a 1200 x 1200 float64 kernel (11.5 MB) does not fit, although the
    # features (77 kB) and the environments do; a caller-provided out= bypasses the output part
    monkeypatch.setattr(validate, "_available_memory", lambda: 10 * 10**6)
    phi = mn.features.trig(np.random.default_rng(1).uniform(size=(1200, N_SITES)))
    assert mn.ntk(model, phi[:100]).shape == (100, 100)
    msg = r"an NTK of shape \(1200, 1200\) \(float64\) needs [0-9.]+ GiB but only [0-9.]+ GiB.*out="
    with pytest.raises(ValueError, match=msg):
        mn.ntk(model, phi)
    with pytest.raises(ValueError, match=r"NTK of shape \(4, 1200, 600\)"):
        mn.ntk(model, phi, phi[:600], per_site=True)
    out = np.empty((1200, 1200))
    assert mn.ntk(model, phi, out=out) is out


def test_jacobian_too_large_for_memory(model, phi, tiny_memory):
    n_params = model.n_params
    with pytest.raises(ValueError, match=rf"a Jacobian of shape \(5, 1, {n_params}\) needs"):
        mn.jacobian(model, phi)
    with pytest.raises(ValueError, match=r"use ntk\(\), ntk_vp\(\), vjp\(\) or jvp\(\) instead"):
        mn.jacobian(model, phi)


def test_memory_check_passes_when_memory_is_unknown(model, phi, monkeypatch):
    monkeypatch.setattr(validate, "_available_memory", lambda: None)
    assert mn.ntk(model, phi).shape == (5, 5)
    assert mn.jacobian(model, phi).shape == (5, model.n_params)


# --------------------------------------------------------------------------- ntk_vp / vjp / jvp


@pytest.mark.parametrize(
    "v, match, exc",
    [
        (np.ones(4), r"v must have shape \(5,\) or \(5, k\); got \(4,\)", ValueError),
        (np.ones((5, 1, 1)), r"v must have shape \(5,\) or \(5, k\); got \(5, 1, 1\)", ValueError),
        (np.ones((5, 0)), r"v must have shape", ValueError),
        (np.float64(1.0), r"v must have shape", ValueError),
        (np.ones(5, np.float32), r"v must have the model's dtype float64; got float32", TypeError),
        (np.ones(5, np.int64), r"v must have the model's dtype float64; got int64", TypeError),
        (np.full(5, np.nan), r"v must be finite", ValueError),
        (np.array([1, 1, 1, 1, np.inf]), r"v must be finite", ValueError),
    ],
    ids=["length", "rank3", "k0", "scalar", "float32", "int", "nan", "inf"],
)
def test_ntk_vp_rejects_bad_v(model, phi, v, match, exc):
    with pytest.raises(exc, match=match):
        mn.ntk_vp(model, phi, v)


def test_ntk_vp_multi_output_shapes(model_multi, phi):
    with pytest.raises(ValueError, match=r"v must have shape \(5, 3\) or \(5, 3, k\); got \(5,\)"):
        mn.ntk_vp(model_multi, phi, np.ones(5))
    with pytest.raises(ValueError, match=r"got \(5, 2\)"):
        mn.ntk_vp(model_multi, phi, np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"phi must be finite"):
        mn.ntk_vp(model_multi, phi * np.inf, np.ones((5, 3)))


@pytest.mark.parametrize(
    "cot, exc, match",
    [
        (np.ones(4), ValueError, r"cotangent must have shape \(5,\)"),
        (np.ones((5, 1)), ValueError, r"cotangent must have shape \(5,\); got \(5, 1\)"),
        (np.ones((5, 2)), ValueError, r"cotangent must have shape \(5,\); got \(5, 2\)"),
        (np.ones(5, np.float32), TypeError, r"cotangent must have the model's dtype float64"),
        (np.full(5, np.nan), ValueError, r"cotangent must be finite"),
    ],
    ids=["length", "column", "matrix", "float32", "nan"],
)
def test_vjp_rejects_bad_cotangent(model, phi, cot, exc, match):
    with pytest.raises(exc, match=match):
        mn.vjp(model, phi, cot)


def test_vjp_multi_output_cotangent(model_multi, phi):
    with pytest.raises(ValueError, match=r"cotangent must have shape \(5, 3\)"):
        mn.vjp(model_multi, phi, np.ones(5))
    with pytest.raises(ValueError, match=r"cotangent must have shape \(5, 3\); got \(5, 3, 1\)"):
        mn.vjp(model_multi, phi, np.ones((5, 3, 1)))
    with pytest.raises(ValueError, match=r"cotangent must have shape"):
        mn.vjp(model_multi, phi, np.ones((5, 4)))


def test_jvp_rejects_bad_tangents(model, phi):
    good = [np.ones_like(c) for c in model.cores]
    assert mn.jvp(model, phi, good).shape == (5,)
    with pytest.raises(ValueError, match=r"tangents must hold one array per core \(4\); got 3"):
        mn.jvp(model, phi, good[:3])
    with pytest.raises(ValueError, match=r"tangents must hold one array per core \(4\); got 5"):
        mn.jvp(model, phi, good + good[:1])
    bad = list(good)
    bad[2] = np.ones(good[2].shape[:-1] + (good[2].shape[-1] + 1,))
    shape = re.escape(str(good[2].shape))
    with pytest.raises(ValueError, match=rf"tangents\[2\] must have shape {shape}"):
        mn.jvp(model, phi, bad)
    bad = list(good)
    bad[1] = good[1].astype(np.float32)
    with pytest.raises(TypeError, match=r"tangents\[1\] must have dtype float64; got float32"):
        mn.jvp(model, phi, bad)
    bad = list(good)
    bad[3] = good[3].astype(np.int64)
    with pytest.raises(TypeError, match=r"tangents\[3\] must have dtype float64; got int64"):
        mn.jvp(model, phi, bad)
    bad = list(good)
    bad[0] = good[0] * np.nan
    with pytest.raises(ValueError, match=r"tangents\[0\] must be finite"):
        mn.jvp(model, phi, bad)
    with pytest.raises(TypeError, match=r"tangents must be a list of arrays"):
        mn.jvp(model, phi, 5)
    with pytest.raises(TypeError, match=r"tangents must be a list of arrays"):
        mn.jvp(model, phi, np.ones(4))
    with pytest.raises(TypeError, match=r"tangents must be a list of arrays"):
        mn.jvp(model, phi, None)
    with pytest.raises(ValueError, match=r"phi has n_sites = 3"):
        mn.jvp(model, phi[:, :3], good)


# --------------------------------------------------------------------------- device arrays

needs_no_cuda = pytest.mark.skipif(mn.cuda_available(), reason="this build has a CUDA device")


@needs_no_cuda
def test_device_array_without_cuda(model, phi):
    dev = FakeDeviceArray()
    with pytest.raises(mn.CudaUnavailableError, match=r"phi are CUDA arrays"):
        model.forward(dev)
    with pytest.raises(mn.CudaUnavailableError, match=r"phi are CUDA arrays"):
        model.log_forward(dev)
    with pytest.raises(mn.CudaUnavailableError, match=r"phi1 are CUDA arrays"):
        mn.ntk(model, dev)
    with pytest.raises(mn.CudaUnavailableError, match=r"phi1, phi2 are CUDA arrays"):
        mn.ntk(model, dev, FakeDeviceArray())
    with pytest.raises(mn.CudaUnavailableError, match=r"phi are CUDA arrays"):
        mn.jacobian(model, dev)
    with pytest.raises(mn.CudaUnavailableError, match=r"phi, v are CUDA arrays"):
        mn.ntk_vp(model, dev, FakeDeviceArray((5,)))
    with pytest.raises(mn.CudaUnavailableError, match=r"cores\[0\], cores\[1\] are CUDA arrays"):
        mn.MPS([FakeDeviceArray((2, 1, 2)), FakeDeviceArray((2, 2, 1))])
    reason = mn.build_info()["cuda_reason"]
    assert isinstance(reason, str) and reason
    with pytest.raises(mn.CudaUnavailableError, match=re.escape(reason)):
        model.forward(dev)
    assert issubclass(mn.CudaUnavailableError, RuntimeError)


@needs_no_cuda
@pytest.mark.parametrize("device_type", [2, 13])  # kDLCUDA, kDLCUDAManaged
def test_dlpack_device_arrays_are_device_arrays(model, phi, device_type):
    dev = FakeDLPackDeviceArray(device_type=device_type)
    assert mn._backend.is_device_array(dev)
    with pytest.raises(mn.CudaUnavailableError, match=r"phi1 are CUDA arrays"):
        mn.ntk(model, dev)
    with pytest.raises(mn.CudaUnavailableError, match=r"phi are CUDA arrays"):
        model.forward(dev)
    with pytest.raises(TypeError, match=r"phi2 live on a CUDA device but the other arguments"):
        mn.ntk(model, phi, dev)
    # A DLPack producer on the host (kDLCPU) is a host array.
    assert not mn._backend.is_device_array(FakeDLPackDeviceArray(device_type=1))


def test_host_dlpack_arrays_are_read_without_copies(model, phi):
    wrapped = DLPackOnly(phi)
    assert not mn._backend.is_device_array(wrapped)
    view = mn._backend.as_array(wrapped, np)
    assert np.shares_memory(view, phi)
    assert np.array_equal(model.forward(wrapped), model.forward(phi))
    assert np.array_equal(mn.ntk(model, wrapped), mn.ntk(model, phi))


def test_device_array_mixed_with_host_array(model, phi):
    dev = FakeDeviceArray()
    host_msg = r"live on a CUDA device but the other arguments are host arrays"
    with pytest.raises(TypeError, match=r"phi1 " + host_msg):
        mn.ntk(model, dev, phi)
    with pytest.raises(TypeError, match=r"phi2 " + host_msg):
        mn.ntk(model, phi, dev)
    with pytest.raises(TypeError, match=r"out " + host_msg):
        mn.ntk(model, phi, out=FakeDeviceArray((5, 5)))
    with pytest.raises(TypeError, match=r"v " + host_msg):
        mn.ntk_vp(model, phi, FakeDeviceArray((5,)))
    with pytest.raises(TypeError, match=r"phi " + host_msg):
        mn.ntk_vp(model, dev, np.ones(5))
    with pytest.raises(TypeError, match=r"cotangent " + host_msg):
        mn.vjp(model, phi, FakeDeviceArray((5,)))
    with pytest.raises(TypeError, match=r"phi " + host_msg):
        mn.vjp(model, dev, np.ones(5))
    with pytest.raises(TypeError, match=r"tangents\[0\], .* " + host_msg):
        mn.jvp(model, phi, [FakeDeviceArray(c.shape) for c in model.cores])
    with pytest.raises(TypeError, match=r"phi " + host_msg):
        mn.jvp(model, dev, [np.ones_like(c) for c in model.cores])
    with pytest.raises(TypeError, match=r"cores\[0\] " + host_msg):
        mn.MPS([FakeDeviceArray((2, 1, 2)), ones(2, 2, 1)])


# --------------------------------------------------------------------------- load and with_cores


def test_with_cores_rejects_bad_cores(model):
    wider = [np.ones((2, 1, 2)), np.ones((2, 2, 3)), np.ones((2, 3, 3)), np.ones((2, 3, 1))]
    with pytest.raises(ValueError, match=r"cores\[0\] must keep shape \(2, 1, 3\); got \(2, 1, 2"):
        model.with_cores(wider)
    with pytest.raises(ValueError, match=r"cores must hold n_sites = 4 arrays; got 3"):
        model.with_cores(model.cores[:3])
    with pytest.raises(TypeError, match=r"cores must share one dtype"):
        model.with_cores(model.cores[:3] + [model.cores[3].astype(np.float32)])
    with pytest.raises(ValueError, match=r"cores\[2\] must be finite"):
        model.with_cores([c if j != 2 else c * np.inf for j, c in enumerate(model.cores)])


@needs_no_cuda
def test_to_device_without_cuda_says_why(model):
    with pytest.raises(mn.CudaUnavailableError, match=re.escape(mn.build_info()["cuda_reason"])):
        model.to_device()


def test_to_device_without_cupy_says_so(model, monkeypatch):
    import sys

    monkeypatch.setattr(mn._backend, "_cuda_reason", None)  # a usable GPU, but no CuPy
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(mn.CudaUnavailableError, match="CuPy, which is not installed"):
        model.to_device()


def test_import_does_not_initialise_cuda():
    """A process that has initialised CUDA cannot use it in the children it forks.

    The child imports mpsntk (and every public module) with a stand-in CUDA extension that
    records what is asked of it, so the check bites in every build -- with or without CUDA, with
    or without a GPU: importing asks the driver nothing; the first ``cuda_available()`` does."""
    import subprocess
    import sys

    code = """if True:
        import sys, types
        asked = []

        class Recorder(types.ModuleType):
            def _set_error_class(self, cls):
                pass

            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                asked.append(name)
                return lambda *args: 0  # device_count() == 0: no usable GPU

        sys.modules["mpsntk._cuda"] = Recorder("mpsntk._cuda")
        import mpsntk, mpsntk.diagnostics, mpsntk.repro, mpsntk.compare, mpsntk._device
        import mpsntk._backend as b
        assert b._cuda is sys.modules["mpsntk._cuda"], "the stand-in was not used"
        print("import:", asked, b._cuda_reason is b._UNRESOLVED)
        print("first use:", mpsntk.cuda_available(), "device_count" in asked)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["import: [] True", "first use: False True"], out.stdout


def test_available_memory_counts_reclaimable_cache(tmp_path):
    from mpsntk import _validate as v

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 600 kB\n")
    assert v._meminfo_available(str(meminfo)) == 600 * 1024
    assert v._meminfo_available(str(tmp_path / "missing")) is None
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("max\n")
    assert v._cgroup_headroom(str(cgroup)) is None
    (cgroup / "memory.max").write_text("1000\n")
    (cgroup / "memory.current").write_text("900\n")
    (cgroup / "memory.stat").write_text("anon 500\nfile 400\n")
    assert v._cgroup_headroom(str(cgroup)) == 500  # 1000 - 900 + 400 of page cache
    assert v._cgroup_headroom(str(tmp_path)) is None


def test_rlimit_headroom_reads_the_process_limits(monkeypatch):
    import resource

    from mpsntk import _validate as v

    monkeypatch.setattr(v, "_proc_status_bytes", lambda fields: {"VmSize": 3 << 30,
                                                                  "VmData": 1 << 30})
    limits = {resource.RLIMIT_AS: (4 << 30, resource.RLIM_INFINITY),
              resource.RLIMIT_DATA: (resource.RLIM_INFINITY, resource.RLIM_INFINITY)}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits[which])
    assert v._rlimit_headroom() == 1 << 30
    limits[resource.RLIMIT_DATA] = (1 << 29, resource.RLIM_INFINITY)  # below what is used
    assert v._rlimit_headroom() == 0
    limits[resource.RLIMIT_AS] = limits[resource.RLIMIT_DATA] = (resource.RLIM_INFINITY,) * 2
    assert v._rlimit_headroom() is None


# --------------------------------------------------------------------------- what went wrong


@pytest.mark.parametrize("where", ["core", "scales", "site_lr"])
def test_nan_written_into_a_model_is_named_not_called_an_overflow(where, phi):
    mps = mn.MPS.random(N_SITES, 3, seed=0)
    if where == "core":
        mps.cores[2][0, 0, 0] = np.nan
        match = r"cores\[2\] holds NaN or Inf entries \(written after the MPS was built\)"
    else:
        getattr(mps, where)[1] = np.inf
        match = rf"{where} holds NaN or Inf entries"
    calls = [lambda: mps.forward(phi), lambda: mn.vjp(mps, phi, np.ones(5)),
             lambda: mn.jvp(mps, phi, [np.ones_like(c) for c in mps.cores]),
             lambda: mn.ntk_vp(mps, phi, np.ones(5))]
    if where != "site_lr":  # the rates do not enter f, the vjp or the jvp
        calls += [lambda: mps.log_forward(phi), lambda: mn.ntk(mps, phi),
                  lambda: mn.ntk(mps, phi, normalized=True), lambda: mn.jacobian(mps, phi)]
    else:
        calls = calls[3:] + [lambda: mn.ntk(mps, phi)]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()


def test_scales_and_rates_written_out_of_range_are_named(phi):
    mps = mn.MPS.random(N_SITES, 3, seed=0)
    mps.scales[0] = -1.0
    with pytest.raises(ValueError, match=r"scales must be > 0 at every site; got minimum -1"):
        mn.ntk(mps, phi)
    mps = mn.MPS.random(N_SITES, 3, seed=0)
    mps.site_lr[3] = -0.5
    with pytest.raises(ValueError, match=r"site_lr must be >= 0 at every site"):
        mn.ntk_vp(mps, phi, np.ones(5))


def test_a_diverging_training_says_so(phi):
    mps = mn.MPS.random(N_SITES, 3, seed=0)
    y = np.ones(5)
    with pytest.raises(FloatingPointError, match=r"training diverged at step \d+: .*lower "
                                                 r"learning_rate"):
        mn.train(mps, phi, y, learning_rate=1e6, n_steps=50, check_stability=False)


def test_random_refuses_a_model_that_cannot_fit_before_allocating(monkeypatch):
    import time

    monkeypatch.setattr(validate, "_available_memory", lambda: 2**30)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"an MPS with 10000000 sites and 8e\+07 float64 "
                                         r"parameters needs [0-9.]+ GiB but only 1\.00 GiB"):
        mn.MPS.random(10**7, 2)
    with pytest.raises(ValueError, match=r"an MPS with 3 sites .* needs [0-9.]+ GiB"):
        mn.MPS.random(3, 10**6)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("call, match", [
    (lambda: mn.features.linear(np.array([[1e39, 0.5]]), dtype=np.float32),
     r"x has entries up to 1e\+39 .* linear features overflow float32"),
    (lambda: mn.features.poly(np.array([[1e200, 0.5]]), degree=2),
     r"poly \(degree 2\) features overflow float64"),
    (lambda: mn.features.poly(np.array([[3e12, 0.5]]), degree=4, dtype=np.float32),
     r"overflow float32 .* dtype=numpy.float64"),
])
def test_feature_maps_refuse_to_overflow(call, match):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, not just a NumPy warning
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"checkpoint": "c.npz"}, ValueError, r"checkpoint and checkpoint_every go together"),
    ({"checkpoint_every": 5}, ValueError, r"checkpoint and checkpoint_every go together"),
    ({"checkpoint": "c.npz", "checkpoint_every": 0}, ValueError,
     r"checkpoint_every must be an integer >= 1"),
    ({"checkpoint": 3, "checkpoint_every": 2}, TypeError, r"checkpoint must be a file path"),
    ({"resume": ["c.npz"]}, TypeError, r"resume must be a file path"),
])
def test_train_rejects_bad_checkpoint_arguments(model, phi, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mn.train(model, phi, np.ones(5), learning_rate=0.1, n_steps=2, **kwargs)


def test_resume_from_a_file_that_is_not_a_checkpoint(model, phi, tmp_path):
    model.save(tmp_path / "plain.npz")  # an MPS file, but no training state
    with pytest.raises(ValueError, match=r"plain\.npz is not an mpsntk training checkpoint"):
        mn.train(model, phi, np.ones(5), learning_rate=0.1, n_steps=2,
                 resume=tmp_path / "plain.npz")


@pytest.mark.parametrize("fn", ["vjp", "jvp", "ntk_vp"])
def test_normalized_must_be_a_bool(model, phi, fn):
    arg = [np.ones_like(c) for c in model.cores] if fn == "jvp" else np.ones(5)
    with pytest.raises(TypeError, match=r"normalized must be True or False"):
        getattr(mn, fn)(model, phi, arg, normalized=1)


def test_set_num_threads_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"n_threads must be an integer >= 1; got 0"):
        mn.set_num_threads(0)
    with pytest.raises(TypeError, match=r"n_threads must be an integer >= 1"):
        mn.set_num_threads(2.0)


# --------------------------------------------------------------------------- one validation layer
# The same bad seed or configuration gives the same exception, naming the argument, in every
# public function that takes one.


def _seeded_calls():
    from mpsntk import born, compare, datasets, diagnostics, repro
    from mpsntk._reference import random_model
    from mpsntk.train import max_ntk_eigenvalue

    phi = mn.features.trig(np.random.default_rng(0).uniform(size=(6, N_SITES)))
    y = np.linspace(-1.0, 1.0, 6)
    mps = mn.MPS.random(N_SITES, 3, seed=0)
    # (id, call taking the seed, the argument's name, needs scikit-learn)
    return [
        ("MPS.random", lambda s: mn.MPS.random(N_SITES, 3, seed=s), "seed", False),
        ("born.sample", lambda s: born.sample(mps, 4, seed=s), "seed", False),
        ("train", lambda s: mn.train(mps, phi, y, learning_rate=0.1, n_steps=1, seed=s),
         "seed", False),
        ("max_ntk_eigenvalue", lambda s: max_ntk_eigenvalue(mps, phi, seed=s), "seed", False),
        ("datasets.parity", lambda s: datasets.parity(3, n_samples=4, seed=s), "seed", False),
        ("datasets.random_patterns", lambda s: datasets.random_patterns(3, 2, seed=s), "seed",
         False),
        ("datasets.load_digits", lambda s: datasets.load_digits(seed=s), "seed", True),
        ("datasets.load_diabetes", lambda s: datasets.load_diabetes(seed=s), "seed", True),
        ("kernel_statistics", lambda s: diagnostics.kernel_statistics(phi, 2, 2, seed=s),
         "seed", False),
        ("fluctuation_scaling", lambda s: diagnostics.fluctuation_scaling(phi, [2, 3], 2, seed=s),
         "seed", False),
        ("output_kurtosis", lambda s: diagnostics.output_kurtosis(phi, 2, 2, seed=s), "seed",
         False),
        ("dyson_scaling", lambda s: diagnostics.dyson_scaling(
            mps, phi, y, label_noise=0.1, duration=10.0, burn_in=1.0, sample_every=1.0, seed=s),
         "seed", False),
        ("compare_mse", lambda s: compare.compare_mse(
            mps, phi, y, learning_rate=0.1, n_steps=1, seed=s), "seed", False),
        ("repro.run", lambda s: repro.run([], out="unused", seed=s, verbose=False), "seed",
         False),
        ("random_model", lambda s: random_model(N_SITES, 2, 3, rng=s), "rng", False),
    ]


SEEDED_CALLS = _seeded_calls()
BAD_SEEDS = [
    ("negative", -1, ValueError),
    ("negative-numpy", np.int64(-3), ValueError),
    ("str", "abc", TypeError),
    ("float", 1.5, TypeError),
    ("bool", True, TypeError),
    ("list", [1, 2], TypeError),
]


@pytest.mark.parametrize("bad, exc", [c[1:] for c in BAD_SEEDS], ids=[c[0] for c in BAD_SEEDS])
@pytest.mark.parametrize("call, name, sklearn", [c[1:] for c in SEEDED_CALLS],
                         ids=[c[0] for c in SEEDED_CALLS])
def test_bad_seed_is_the_same_error_everywhere(call, name, sklearn, bad, exc, tmp_path,
                                               monkeypatch):
    if sklearn:
        pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not in the tree
    with pytest.raises(exc, match=rf"^{name} must be "):
        call(bad)
    assert not any(tmp_path.iterdir())


def test_every_generator_seed_is_accepted_where_generators_are():
    """None, an int, a numpy integer, a Generator, a SeedSequence: the same model for equal
    seeds (a Generator's stream continues; it is not re-seeded)."""
    ref = mn.MPS.random(N_SITES, 3, seed=7).cores
    for seed in (7, np.int64(7), np.random.SeedSequence(7), np.random.default_rng(7)):
        for a, b in zip(mn.MPS.random(N_SITES, 3, seed=seed).cores, ref):
            np.testing.assert_array_equal(a, b)
    gen = np.random.default_rng(7)
    mn.MPS.random(N_SITES, 3, seed=gen)
    again = mn.MPS.random(N_SITES, 3, seed=gen).cores[0]
    assert not np.array_equal(again, ref[0])


def _configuration_calls():
    from mpsntk import born, compare, datasets

    mps = mn.MPS.random(N_SITES, 2, seed=0)
    # (id, call taking the configurations, the argument's name)
    return [
        ("born.log_probabilities", lambda x: born.log_probabilities(mps, x), "x"),
        ("born.nll", lambda x: born.nll(mps, x), "x"),
        ("born.nll_grad", lambda x: born.nll_grad(mps, x), "x"),
        ("configuration_index", lambda x: datasets.configuration_index(x), "x"),
        ("configuration_counts", lambda x: datasets.configuration_counts(x), "x"),
        ("train-born", lambda x: mn.train(mps, x, loss="born_nll", learning_rate=0.1,
                                          n_steps=1), "phi"),
        ("train-born-probe", lambda x: mn.train(mps, np.zeros((2, N_SITES), dtype=int),
                                                loss="born_nll", learning_rate=0.1, n_steps=1,
                                                probe=x), "probe"),
        ("compare_born", lambda x: compare.compare_born(mps, x, learning_rate=0.1, n_steps=1),
         "data"),
    ]


CONFIGURATION_CALLS = _configuration_calls()
BAD_CONFIGURATIONS = [
    ("non-integer", np.array([[0.5, 1, 1, 0]]), ValueError, "must contain integers"),
    ("nan", np.array([[np.nan, 1, 1, 0]]), ValueError, "must contain integers"),
    ("out-of-range", np.array([[0, 1, 2, 0]]), ValueError, r"must take values in \{0, ..., 1\}"),
    ("negative", np.array([[0, -1, 1, 0]]), ValueError, r"must take values in \{0, ..., 1\}"),
    ("1-D", np.array([0, 1, 1, 0]), ValueError, "2-D array"),
    ("empty", np.zeros((0, N_SITES), dtype=int), ValueError, "non-empty"),
    ("strings", np.array([["0", "1", "1", "0"]]), TypeError, "integer array"),
    ("complex", np.array([[0j, 1, 1, 0]]), TypeError, "integer array"),
]


@pytest.mark.parametrize("bad, exc, match", [c[1:] for c in BAD_CONFIGURATIONS],
                         ids=[c[0] for c in BAD_CONFIGURATIONS])
@pytest.mark.parametrize("call, name", [c[1:] for c in CONFIGURATION_CALLS],
                         ids=[c[0] for c in CONFIGURATION_CALLS])
def test_bad_configurations_are_the_same_error_everywhere(call, name, bad, exc, match):
    with pytest.raises(exc, match=rf"^{name} {match}|^{name} must .*{match}"):
        call(bad)


@pytest.mark.parametrize("call, name", [c[1:] for c in CONFIGURATION_CALLS[:3]]
                         + [c[1:] for c in CONFIGURATION_CALLS[5:]],
                         ids=[c[0] for c in CONFIGURATION_CALLS[:3]]
                         + [c[0] for c in CONFIGURATION_CALLS[5:]])
def test_configurations_of_another_length_than_the_model_are_rejected(call, name):
    with pytest.raises(ValueError, match=rf"^{name} must have shape \(n_samples, n_sites=4\)"):
        call(np.zeros((2, N_SITES + 1), dtype=int))


def test_configurations_accept_bools_and_integral_floats():
    from mpsntk import datasets

    x = np.array([[0, 1, 1, 0], [1, 0, 0, 1]])
    for same in (x.astype(bool), x.astype(np.float32), x.astype(np.uint8)):
        np.testing.assert_array_equal(datasets.configuration_index(same),
                                      datasets.configuration_index(x))
