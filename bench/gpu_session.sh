#!/usr/bin/env bash
# The GPU checks of the CUDA engine, in stages that each fit a 10-minute command on a lent
# machine (which already has nvcc, CuPy, PyTorch and JAX; no network).  Logs and JSON lines go
# to $OUT if set, else bench/results/gpu/.  Run the stages in order on the same machine:
#
#   bash bench/gpu_session.sh setup    # install, card and build facts, ptxas report, GPU tests
#   bash bench/gpu_session.sh check    # compute-sanitizer (memcheck, racecheck, synccheck,
#                                      # initcheck: reads of unwritten device memory) over
#                                      # every device routine, ncu counters of one NTK launch
#   bash bench/gpu_session.sh targets  # the issue's targets: N=4096 n=64 D=64 against every
#                                      # peer, the DMMA shapes and the FMA path, the share of
#                                      # FP64 peak at N=16384, N=65536 float32 in one call
#   bash bench/gpu_session.sh sweep    # N = 1024..16384, D = 8..128, both dtypes
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
bench() { python bench/bench_ntk.py --device gpu --n-sites 64 "$@"; }

case "${1:-}" in
  setup)
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv \
      | tee "$out/card.txt"
    python -m pip install --quiet --no-build-isolation --no-deps . 2>&1 | tail -3
    python -c "import mpsntk, json; print(json.dumps(mpsntk.build_info(), indent=1)); \
print('float64 products:', mpsntk._backend._cuda.float64_path())" | tee "$out/build_info.txt"
    # registers and spills of every kernel on the card's architecture
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
    for f in ntk grad; do
      nvcc -std=c++17 -arch="sm_$arch" -Icuda/include -Icpp/include -Xptxas -v -c \
        "cuda/src/$f.cu" -o /dev/null 2>&1 | grep -E "Compiling entry|spill|Used" || true
    done > "$out/ptxas.txt"
    grep -c "0 bytes spill stores" "$out/ptxas.txt" || true
    python bench/sass_report.py > "$out/sass.md" 2>&1 || true  # chunk-loop instruction counts
    python -m pytest -q tests/test_cuda.py tests/test_cuda_fuzz.py tests/test_cuda_sim.py tests/test_ntk.py 2>&1 \
      | tee "$out/tests.txt"
    ;;
  check)
    # What the simulator cannot show: memory errors and shared-memory races on the hardware
    # (small problems: the tools slow kernels down by orders of magnitude), then the counters
    # of one float64 NTK launch (tensor-pipe, L2 and DRAM throughput, stall reasons).
    for tool in memcheck racecheck synccheck initcheck; do
      if timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 1 \
        python bench/gpu_check.py > "$out/sanitizer_$tool.txt" 2>&1; then
        echo "$tool: clean"
      else
        echo "$tool: FAILED or timed out, see sanitizer_$tool.txt"
      fi
    done
    timeout 100 ncu --clock-control none --kernel-name regex:ntk_kernel --launch-count 1 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      --section WarpStateStats --section Occupancy \
      python bench/gpu_check.py --ntk 8192 --bond-dim 64 --dtype float64 > "$out/ncu_ntk_f64.txt" 2>&1 \
      || echo "ncu: failed, see ncu_ntk_f64.txt"
    ;;
  targets)
    bench --n-samples 4096 --bond-dim 64 --dtype float64 float32 --peer-max-gb 40 \
      --timeout 240 --out "$out/targets.jsonl"
    MPSNTK_CUDA_DMMA=m8n8k4 bench --n-samples 4096 --bond-dim 64 --dtype float64 --peers \
      --out "$out/dmma_m8n8k4.jsonl"
    MPSNTK_CUDA_SIMT=1 bench --n-samples 4096 --bond-dim 64 --dtype float64 --peers \
      --out "$out/simt.jsonl"
    # float64 at the largest size, where the fused kernel dominates the call: % of FP64 peak
    bench --n-samples 16384 --bond-dim 64 --dtype float64 --peers --out "$out/peak_f64.jsonl"
    bench --n-samples 65536 --bond-dim 64 --dtype float32 --peers --timeout 300 \
      --out "$out/large.jsonl"
    ;;
  sweep)
    bench --n-samples 1024 4096 16384 --bond-dim 8 32 64 128 --dtype float64 float32 \
      --peer-max-gb 40 --timeout 120 --repeats 2 --out "$out/sweep.jsonl"
    ;;
  *)
    echo "usage: bash bench/gpu_session.sh {setup|check|targets|sweep}" >&2
    exit 2
    ;;
esac
