"""The installed distribution: its metadata and extras; a build that runs on any CPU of its
architecture (no flags for the build machine's CPU, every instruction set compiled in, the one in
use chosen from what the CPU reports, ``MPSNTK_ISA`` obeyed); compiled modules that link no CUDA
library; and, where the run says a wheel is installed (``MPSNTK_EXPECT_INSTALLED=1``, as CI and
cibuildwheel set it), that the tests import that wheel's files and not the sources.

The heavy proofs (building the sdist and the wheels, auditwheel, fresh virtual environments) are
in ``tools/check_wheels.sh``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import mpsntk as mn

DIST = importlib.metadata.distribution("mpsntk")
X86_64 = platform.machine().lower() in ("x86_64", "amd64")

# Flags that make code need more than the architecture's baseline: -march/-mcpu other than the
# x86-64 baseline, and instruction-set switches.  -mtune only tunes.
CPU_SPECIFIC = re.compile(
    r"(?:^|\s)(-m(?:arch|cpu)=(?!x86-64(?:\s|$))\S+|-m(?:avx|fma|sse4|ssse3|sse3|bmi|f16c)\S*)"
)


def _requires(extra):
    """Canonical names of the distributions that ``extra`` adds (None: the run-time ones), with
    platform markers read as on Linux x86-64."""
    env = {"extra": extra or "", "sys_platform": "linux", "platform_machine": "x86_64"}
    names = set()
    for line in DIST.requires or []:
        req = Requirement(line)
        always = req.marker is None or req.marker.evaluate(dict(env, extra=""))
        if extra is None:
            keep = always
        else:
            keep = not always and req.marker.evaluate(env)
        if keep:
            names.add(canonicalize_name(req.name))
    return names


def _needed(path):
    """The DT_NEEDED entries of an ELF64 little-endian shared object (its linked libraries)."""
    data = Path(path).read_bytes()
    assert data[:6] == b"\x7fELF\x02\x01", f"{path} is not an ELF64 little-endian file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    out = []
    for _, sh_type, _, _, offset, size, link, _, _, _ in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                out.append(data[strtab + val : data.index(b"\0", strtab + val)].decode())
    return out


def _compiled_modules():
    """The extension modules of the imported package: {name: path}."""
    found = {}
    for name in ("_core", "_cuda", "_cuda_sim"):
        spec = importlib.util.find_spec(f"mpsntk.{name}")
        if spec is not None and spec.origin:
            found[name] = Path(spec.origin).resolve()
    return found


# --------------------------------------------------------------------------- metadata


def test_version_is_the_distributions():
    assert mn.__version__ == DIST.version == mn.build_info()["version"]


def test_run_time_dependency_is_numpy_only():
    assert _requires(None) == {"numpy"}


def test_extras():
    assert set(DIST.metadata.get_all("Provides-Extra")) >= {
        "bench", "cuda13", "demo", "lint", "sass", "test"}
    assert _requires("cuda13") == {"cupy-cuda13x"}
    assert _requires("sass") == {"nvidia-cuda-cuobjdump", "nvidia-cuda-nvdisasm"}
    test = _requires("test")
    assert {"pytest", "hypothesis"} <= test
    # a plain CPU machine needs no NVIDIA tool or CUDA library to run the tests
    assert [n for n in test if n.startswith(("nvidia-", "cupy"))] == []


# --------------------------------------------------------------------------- portable build


@pytest.mark.parametrize("flags, found", [
    ("-O3 -DNDEBUG -march=native", ["-march=native"]),
    ("-march=x86-64-v3 -O2", ["-march=x86-64-v3"]),
    ("-O3 -mavx2 -mfma", ["-mavx2", "-mfma"]),
    ("-mcpu=native", ["-mcpu=native"]),
    ("-march=x86-64 -mtune=native -O3 -fno-math-errno", []),
])
def test_cpu_specific_flags_are_recognised(flags, found):
    assert CPU_SPECIFIC.findall(flags) == found


def test_compile_flags_do_not_target_the_build_machine():
    flags = mn.build_info()["compile_flags"]
    assert "-O" in flags  # the flags are reported (a build type's optimisation level at least)
    assert CPU_SPECIFIC.findall(flags) == [], f"the engine's common flags: {flags}"


def test_instruction_sets_compiled_in():
    info = mn.build_info()
    compiled, usable = info["compiled_isas"], info["isas"]
    assert compiled[-1] == "generic" and usable[-1] == "generic"
    assert [i for i in compiled if i in usable] == usable  # usable ones, in the same order
    if X86_64:
        assert compiled == ["avx512", "avx2", "generic"]
    if "MPSNTK_ISA" not in os.environ:
        assert info["isa"] == usable[0]


@pytest.mark.skipif(not (X86_64 and Path("/proc/cpuinfo").exists()),
                    reason="reads the CPU's flags from Linux's /proc/cpuinfo (x86-64)")
def test_usable_instruction_sets_follow_the_cpu():
    """The dispatch's CPUID checks against the flags the kernel reports for this CPU."""
    line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    flags = set(line.split(":", 1)[1].split())
    want = []
    if {"avx512f", "avx512dq", "avx512vl", "fma"} <= flags:
        want.append("avx512")
    if {"avx2", "fma"} <= flags:
        want.append("avx2")
    assert mn.build_info()["isas"] == want + ["generic"]


ISA_RUN = """
import numpy as np, mpsntk as mn
from mpsntk import _core, _reference
mps = mn.MPS.random(n_sites=5, bond_dim=6, seed=3)
phi = mn.features.trig(np.random.default_rng(3).uniform(size=(9, 5)))
ref = _reference.ntk(mps, phi)
err = np.max(np.abs(mn.ntk(mps, phi) - ref)) / np.max(np.abs(ref))
print(_core.current_isa(), mn.build_info()["isa"], err)
"""


@pytest.mark.parametrize("isa", mn.build_info()["isas"])
def test_isa_environment_variable_selects_the_engine(isa):
    env = dict(os.environ, MPSNTK_ISA=isa)
    out = subprocess.run([sys.executable, "-c", ISA_RUN], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[:2] == [isa, isa]
    assert float(out[2]) < 1e-12  # and that engine computes the NTK of the dense oracle


def test_isa_environment_variable_refuses_unknown_names():
    """An instruction set this build does not know is an import error that lists the valid
    names, not a silent fallback to the best set."""
    env = dict(os.environ, MPSNTK_ISA="avx2048")
    res = subprocess.run([sys.executable, "-c", "import mpsntk"], env=env, capture_output=True,
                         text=True)
    assert res.returncode != 0
    want = "MPSNTK_ISA=avx2048 is not an instruction set of this build; expected one of " + \
        ", ".join(mn.build_info()["compiled_isas"])
    assert f"ValueError: mpsntk: {want}" in res.stderr or f"ValueError: {want}" in res.stderr


def test_isa_environment_variable_warns_when_the_cpu_lacks_it():
    """A set of this build that this CPU lacks: a RuntimeWarning naming the set used instead."""
    info = mn.build_info()
    lacking = [isa for isa in info["compiled_isas"] if isa not in info["isas"]]
    if not lacking:
        pytest.skip(f"this CPU runs every instruction set of the build ({info['isas']})")
    env = dict(os.environ, MPSNTK_ISA=lacking[0])
    code = ("import warnings; warnings.simplefilter('error');\n"
            "try:\n import mpsntk\nexcept RuntimeWarning as w: print(w)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert f"MPSNTK_ISA={lacking[0]}: this CPU does not support that instruction set; using " \
        f"{info['isas'][0]}" in out


# --------------------------------------------------------------------------- linked libraries


@pytest.mark.skipif(sys.platform != "linux", reason="reads ELF shared objects")
def test_no_cuda_library_is_linked():
    """The CUDA runtime is linked statically and the driver library is loaded at run time, so the
    modules import with no CUDA installed, and auditwheel has no CUDA library to bundle."""
    modules = _compiled_modules()
    core = _needed(modules["_core"])
    assert any(n.startswith("libc.so") for n in core), core  # the reader reads
    if mn.build_info()["openmp"]:
        assert any(n.startswith("libgomp") for n in core), core
    for name, path in modules.items():
        cuda = [n for n in _needed(path) if re.match(r"lib(cuda|cudart|cublas|nv)", n)]
        assert cuda == [], f"{name} links {cuda}"


def test_cuda_status_of_this_build():
    info = mn.build_info()
    if "_cuda" not in _compiled_modules():
        assert info["cuda"] is False
        assert info["cuda_reason"] == "mpsntk was built without CUDA support"
        return
    # explicit architectures, sm_80 or newer (never 'native', which targets the build machine)
    for arch in info["cuda_architectures"]:
        m = re.fullmatch(r"(sm|compute)_(\d+)a?", arch)
        assert m and int(m.group(2)) >= 80, info["cuda_architectures"]
    assert info["cuda"] == (info["cuda_reason"] is None)


# --------------------------------------------------------------------------- installed files


def test_tests_import_the_installed_files():
    """Against a wheel, the imported package is the one whose files the wheel installed (its
    RECORD), compiled modules included; an editable install records no package files."""
    record = {f.as_posix(): Path(DIST.locate_file(f)).resolve() for f in DIST.files or []}
    if "mpsntk/__init__.py" not in record:
        if os.environ.get("MPSNTK_EXPECT_INSTALLED") == "1":
            pytest.fail(f"MPSNTK_EXPECT_INSTALLED=1 but mpsntk {DIST.version} is not installed "
                        "from a wheel: its RECORD lists no mpsntk/__init__.py (editable?)")
        pytest.skip("editable install: the package files are not in its RECORD")
    assert Path(mn.__file__).resolve() == record["mpsntk/__init__.py"]
    installed = {p for f, p in record.items() if f.startswith("mpsntk/")}
    for name, path in _compiled_modules().items():
        assert path in installed, f"mpsntk.{name} was imported from {path}, not the wheel's files"
