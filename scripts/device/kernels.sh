#!/usr/bin/env bash
# Per-layer timings of every format's fused kernel against dense bf16/fp16 on one GPU, each table
# measured in one run (cold L2, host overhead included; add --cudagraph to a line for graph replays).
# Records land in $OUT (copy them to docs/results/kernels_h200/). About 4 minutes on an H200:
#   bash scripts/device/kernels.sh [fourier|affine|binary ...]
set -euo pipefail
export PYTHONPATH=$PWD/src
cd scripts
for part in "${@:-fourier affine binary}"; do
  for p in $part; do
    case $p in
      fourier) python bench_fourier_kernel.py --forms rfft rfft2 --tokens 1 16 256 --json "$OUT/fourier_eager.json" \
                 | tee "$OUT/fourier_eager.md" ;;
      affine) python bench_kernels.py --bits 2 4 --tokens 1 16 256 --json "$OUT/affine_eager.json" \
                 | tee "$OUT/affine_eager.md" ;;
      binary) python bench_binary_kernel.py --json "$OUT/binary_eager.json" | tee "$OUT/binary_eager.md" ;;
      *) echo "unknown part $p (fourier, affine, binary)" >&2; exit 2 ;;
    esac
  done
done
