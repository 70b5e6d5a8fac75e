#!/usr/bin/env bash
# The CPU sweeps behind bench/README.md: every routine against every peer, one axis at a time
# around a base configuration, JSON lines in bench/results/.  Then `python bench/report.py
# --readme bench/README.md` writes the tables and figures.  Needs the peers
# (bench/requirements.txt) and the neural-tangents venv (bash bench/make_nt_env.sh).
# About 1.5 hours on this shared 2-core machine.
#
#   bash bench/run_cpu_sweeps.sh [ntk ntk_vp vjp born targets]   # default: all but targets
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
common=(--timeout 40 --min-time 0.3 --max-rss-gb 12)
run() { "$py" bench/bench_ntk.py "${common[@]}" "$@"; }

for part in ${@:-ntk ntk_vp vjp born}; do
  case $part in
    ntk)  # n_samples (both dtypes), then bond_dim and n_sites at 256 samples
      out=bench/results/ntk_cpu.jsonl
      run --routine ntk --n-samples 128 256 512 1024 2048 --n-sites 16 --bond-dim 32 \
        --dtype float64 --out $out
      run --routine ntk --n-samples 256 512 1024 2048 --n-sites 16 --bond-dim 32 \
        --dtype float32 --out $out --append
      # mpsntk alone to larger sizes (the peers stop at 2048 samples)
      run --routine ntk --n-samples 2048 4096 8192 16384 --n-sites 16 --bond-dim 32 \
        --dtype float64 float32 --peers --out $out --append
      run --routine ntk --n-samples 256 --n-sites 16 --bond-dim 8 16 32 64 128 \
        --dtype float64 --out $out --append
      run --routine ntk --n-samples 256 --n-sites 8 16 32 64 128 --bond-dim 32 \
        --dtype float64 --out $out --append
      ;;
    ntk_vp|vjp)
      out=bench/results/${part}_cpu.jsonl
      run --routine "$part" --n-samples 1024 4096 16384 65536 --n-sites 32 --bond-dim 32 \
        --dtype float64 float32 --out "$out"
      run --routine "$part" --n-samples 4096 --n-sites 32 --bond-dim 8 32 128 \
        --dtype float64 --out "$out" --append
      run --routine "$part" --n-samples 4096 --n-sites 8 32 128 --bond-dim 32 \
        --dtype float64 --out "$out" --append
      ;;
    born)
      out=bench/results/born_cpu.jsonl
      run --routine log_partition log_partition_grad --n-sites 64 --bond-dim 16 64 256 \
        --dtype float64 --out $out
      run --routine log_partition log_partition_grad --n-sites 16 64 256 --bond-dim 64 \
        --dtype float64 --out $out --append
      ;;
    targets)  # n_samples=1024 / 4096, n_sites=64, bond_dim=64: every peer / mpsntk alone
      out=bench/results/targets_cpu.jsonl
      run --routine ntk --n-samples 1024 --n-sites 64 --bond-dim 64 --dtype float64 \
        --timeout 120 --out $out
      run --routine ntk --n-samples 4096 --n-sites 64 --bond-dim 64 --dtype float64 float32 \
        --peers --out $out --append
      ;;
    *) echo "unknown sweep $part (ntk, ntk_vp, vjp, born, targets)" >&2; exit 2 ;;
  esac
done
