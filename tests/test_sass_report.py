"""bench/sass_report.py: its reading of cuobjdump listings, on a hand-written listing whose loop,
paths and counts are known; and, where the CUDA engine was built and cuobjdump and nvdisasm are at
hand (the sass extra installs them on Linux x86-64; the test skips, saying so, without them), the
compiled kernels themselves."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sass_report  # noqa: E402

# A chunk loop from 0x10 to the back edge at 0x90: the upper half of the product is skipped
# under P0, the fold (a DMUL block) under !P1.
SASS = """
\tcode for sm_90
\t\tFunction : _Z15ntk_kernel_testv
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x0 */
        /*0010*/                   LDS.64 R2, [R3] ;                      /* 0x0 */
        /*0020*/                   DMMA.16x8x8 R4, R2, R6, R4 ;           /* 0x0 */
        /*0030*/              @P0 BRA 0x60 ;                              /* 0x0 */
        /*0040*/                   LDS.64 R2, [R3+0x8] ;                  /* 0x0 */
        /*0050*/                   DMMA.16x8x8 R4, R2, R6, R4 ;           /* 0x0 */
        /*0060*/              @P1 BRA 0x90 ;                              /* 0x0 */
        /*0070*/                   DMUL R8, R8, R4 ;                      /* 0x0 */
        /*0080*/                   IMAD.MOV.U32 R4, RZ, RZ, RZ ;          /* 0x0 */
        /*0090*/              @P2 BRA 0x10 ;                              /* 0x0 */
        /*00a0*/                   EXIT ;                                 /* 0x0 */
\t\tFunction : _Z6othersv
        /*0000*/                   EXIT ;                                 /* 0x0 */
"""

RES = """
Resource usage:
 Common:
  GLOBAL:0
 Function _Z15ntk_kernel_testv:
  REG:236 STACK:16 SHARED:39032 LOCAL:0 CONSTANT[0]:696 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z6othersv:
  REG:8 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:352 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_functions_and_resources():
    funcs = sass_report.functions(SASS)
    assert list(funcs) == ["_Z15ntk_kernel_testv", "_Z6othersv"]
    assert funcs["_Z15ntk_kernel_testv"][1] == (0x10, "LDS.64 R2, [R3]")
    assert len(funcs["_Z15ntk_kernel_testv"]) == 11
    res = sass_report.resources(RES)
    assert res["_Z15ntk_kernel_testv"] == {"registers": 236, "stack": 16, "shared": 39032,
                                           "local": 0}
    assert res["_Z6othersv"]["registers"] == 8


def test_chunk_loop_counts_and_paths():
    instrs = sass_report.functions(SASS)["_Z15ntk_kernel_testv"]
    whole = sass_report.chunk_loop(instrs)
    # longest path: both product halves, then the fold, then the back edge: 3 + 2 + 1 + 2 + 1
    assert whole["loop"] == 9 and whole["path"] == 9
    assert whole["tensor"] == 2 and whole["lds"] == 2 and whole["moves"] == 1
    # steady state: through both product halves, without the fold: 3 + 2 + 1 + 1
    steady = sass_report.chunk_loop(instrs, steady=True)
    assert steady["path"] == 7 and steady["path_moves"] == 0 and whole["path_moves"] == 1
    # no loop around a product: nothing to report
    assert sass_report.chunk_loop(sass_report.functions(SASS)["_Z6othersv"]) is None


def test_opcode_and_names():
    assert sass_report._op("@!P0 LDG.E.64.CONSTANT R2, desc[UR4][R4.64]") == "LDG"
    assert sass_report._op("@UP1 DMMA.16x8x8 R4, R2, R6, R4") == "DMMA"
    mangled = "_ZN6mpsntk4cuda11gemm_kernelIdEEvl"  # void mpsntk::cuda::gemm_kernel<double>(long)
    want = "gemm_kernel<double>" if shutil.which("c++filt") else mangled
    assert sass_report.demangle([mangled]) == [want]


def _built_kernels():
    spec = importlib.util.find_spec("mpsntk._cuda")
    if spec is None or not spec.origin:
        pytest.skip("mpsntk was built without the CUDA engine")
    try:
        sass_report._cuobjdump()
    except SystemExit as e:
        pytest.skip(f"{e} (or pip install 'mpsntk[sass]')")
    return sass_report.report(Path(spec.origin), ["sm_80", "sm_90"])


def test_compiled_kernels_keep_their_accumulators_in_registers():
    """No NTK or GEMM kernel has a stack frame (spills, or a kernel parameter copied to local
    memory: ptxas only reports them), each has its chunk loop, and the tensor-core NTK loops do
    not copy their accumulators every chunk (a register-allocation pitfall of the Gram fold
    that cost ~170 moves per chunk)."""
    rows = _built_kernels()
    for arch in ("sm_80", "sm_90"):
        kernels = [r["kernel"] for r in rows if r["arch"] == arch]
        assert any(k.startswith("ntk_kernel<double, MmaPath") for k in kernels), kernels
        assert any(k.startswith("gemm_kernel") for k in kernels), kernels
    assert [r["kernel"] for r in rows if r.get("stack")] == []
    assert [r["kernel"] for r in rows if r.get("loop") is None] == []
    tensor_ntk = [r for r in rows if r["kernel"].startswith("ntk_kernel") and r["tensor"]]
    assert tensor_ntk and max(r["path_moves"] for r in tensor_ntk) < 64
