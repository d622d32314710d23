#!/usr/bin/env bash
# Decode speed on one GPU (issue 12, item 5): TTFT of a 512-token prompt, greedy tokens/s at batch 1
# and 16, weight and peak memory; uncompressed bf16 against each format at about 4, 3 and 2.5 bpw
# (about 1.1 code bits for binary). One JSON record per run in $RESULTS (default $OUT/decode; point it
# to /tmp/... to collect across calls, since each call empties $OUT), the tables in $RESULTS/*.log.
# Each part fits one 10-minute call:
#   bash scripts/device/bench_decode.sh synthetic "bf16,affine:bits=4,affine:bits=3,affine:bits=2:group_size=32"
#   bash scripts/device/bench_decode.sh synthetic "fourier:mag_bits=4:phase_bits=4,fourier:mag_bits=3:phase_bits=3,fourier:mag_bits=2:phase_bits=3,binary"
#   bash scripts/device/bench_decode.sh eager "bf16,affine:bits=4,fourier:mag_bits=3:phase_bits=3,binary"  # --no-cuda-graphs, batch 1
#   bash scripts/device/bench_decode.sh compiled "bf16,fourier:mag_bits=3:phase_bits=3"  # --compile: the ops between linears fused
#   bash scripts/device/bench_decode.sh testbed            # needs the asset bundle (scripts/device/setup.sh)
#   bash scripts/device/bench_decode.sh testbed "rtn4:-m rtn --bits 4 --group-size 64 --nsamples 0" ...
# Then, here: python scripts/decode_table.py RESULTS/synthetic --png docs/results/figures/decode_speed.png
# (synthetic: a random Llama-2-7B-shaped decoder, all 224 linears holding data-free codes: speed and
# memory only; testbed: the testbed and folders written by `llava-fa compress`, loaded by our loader.)
set -uo pipefail
part=${1:-synthetic}; shift || true
RESULTS=${RESULTS:-$OUT/decode}; mkdir -p "$RESULTS"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$RESULTS/gpu.log"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$RESULTS/gpu.log"
bench() { python3 -m llava_fa bench-decode "$@" --device cuda --batch "${BATCH:-1,16}" --prompt 512 --new-tokens 128; }

case $part in
  synthetic)  # the 7B-shaped decoder, CUDA graphs where they capture
    bench --synthetic 7b --formats "${1:-bf16,affine:bits=4}" --cuda-graphs --forward-mode auto \
      --json-dir "$RESULTS/synthetic" 2>&1 | tee -a "$RESULTS/synthetic.log" ;;
  compiled)  # the same with each decode step through torch.compile (inductor) inside the CUDA graph
    bench --synthetic 7b --formats "${1:-bf16,fourier:mag_bits=3:phase_bits=3}" --cuda-graphs --compile \
      --forward-mode auto --json-dir "$RESULTS/compiled" 2>&1 | tee -a "$RESULTS/compiled.log" ;;
  eager)  # the same without CUDA graphs: what the graphs buy
    BATCH=${BATCH:-1} bench --synthetic 7b --formats "${1:-bf16,affine:bits=4}" --no-cuda-graphs \
      --json-dir "$RESULTS/eager" 2>&1 | tee -a "$RESULTS/eager.log" ;;
  testbed)  # the real testbed, uncompressed (bfloat16) and compressed by llava-fa compress
    source scripts/device/setup.sh
    export PYTHONPATH=/tmp/site:$PWD/src
    tb=/tmp/testbed-smollm2-135m
    [ -f $tb/config.json ] || python3 -m llava_fa testbed build --out "$tb" > "$RESULTS/testbed-build.log" 2>&1
    [ $# -gt 0 ] || set -- "rtn4:-m rtn --bits 4 --group-size 64 --nsamples 0" \
                           "rtn3:-m rtn --bits 3 --group-size 64 --nsamples 0" \
                           "rtn2g32:-m rtn --bits 2 --group-size 32 --nsamples 0" \
                           "fa4q:-m fa -O structure=quant -O mag_bits=3 -O phase_bits=5" \
                           "fa3q:-m fa -O structure=quant" \
                           "fa25q:-m fa -O structure=quant -O mag_bits=2 -O phase_bits=3"
    folders=("$tb")
    for spec in "$@"; do
      name=${spec%%:*} args=${spec#*:}
      # shellcheck disable=SC2086
      [ -f /tmp/c/$name/config.json ] || python3 -m llava_fa compress $tb --out /tmp/c/$name --device cuda -q $args \
        >> "$RESULTS/testbed-compress.log" 2>&1 || { echo "FAILED: compress $name"; continue; }
      folders+=("/tmp/c/$name")
    done
    bench "${folders[@]}" --dtype bfloat16 --json-dir "$RESULTS/testbed" 2>&1 | tee -a "$RESULTS/testbed.log" ;;
  *) echo "unknown part $part: synthetic, compiled, eager or testbed" >&2; exit 2 ;;
esac
