#!/usr/bin/env bash
# Build the virtual environment of the neural-tangents peer of bench/bench_ntk.py:
#
#   bash bench/make_nt_env.sh [VENV_DIR]        # default: .venv-nt at the repository root
#
# neural-tangents 0.6.5 does not import with current JAX, so it gets its own venv with the
# pinned set of bench/requirements-nt.txt (JAX 0.4.23, NumPy 1.26, TensorFlow 2.15 CPU).
# neural-tangents and tf2jax are installed without their declared dependencies: they would
# pull the full TensorFlow wheel (with its GPU libraries) on top of tensorflow-cpu.
# The benchmark finds the venv at .venv-nt, or through --nt-python / $MPSNTK_NT_PYTHON.
# Needs Python 3.9-3.11 (TensorFlow 2.15 wheels); $PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-nt}
python=${PYTHON:-python3.11}
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r bench/requirements-nt.txt
"$venv/bin/python" -m pip install --quiet --no-deps neural-tangents==0.6.5 tf2jax==0.3.5
TF_CPP_MIN_LOG_LEVEL=3 "$venv/bin/python" - <<'PY'
import jax, neural_tangents as nt, numpy, tensorflow as tf
impls = ", ".join(i.name for i in nt.NtkImplementation)
print(f"neural-tangents {nt.__version__}, jax {jax.__version__}, numpy {numpy.__version__}, "
      f"tensorflow {tf.__version__}: {impls}")
PY
echo "built $venv: run the benchmark with --nt-python $venv/bin/python (found by default at .venv-nt)"
