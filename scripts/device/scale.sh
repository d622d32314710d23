#!/usr/bin/env bash
# Compress a random Llama-2-7B-shaped decoder on 1 GPU and with torchrun on N GPUs, for each method:
# wall time, peak GPU memory per GPU (nvidia-smi, sampled every 200 ms), and whether both runs store
# identical tensors. Results: $RESULTS/scale.jsonl (one record per run), $RESULTS/scale_table.md (the runs
# as a markdown table) and $RESULTS/scale.log
# (RESULTS defaults to $OUT; point it to /tmp/... when running in the background across calls,
# since each call empties $OUT).
#   bash scripts/device/scale.sh "gptq:--bits 3" "fa:"      (on an nvidia-h200-x2)
#   PROCS=1 bash scripts/device/scale.sh "rtn:" "hqq:"      (one GPU only: the single-GPU method table)
# NVLink multicast stays off in NCCL, PyTorch and NVSHMEM (the device documentation asks for it).
set -uo pipefail
RESULTS=${RESULTS:-$OUT}; mkdir -p "$RESULTS"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 LLAVA_FA_DATA=$PWD/.carry/data NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TQDM_DISABLE=1
gpus=$(nvidia-smi --list-gpus | wc -l)
PROCS=${PROCS:-"1 $gpus"}
model=/tmp/llama7b
[ -f $model/config.json ] || python3 scripts/make_random_llama.py --out $model | tee -a "$RESULTS/scale.log"
run() {  # run NAME PROCS ARGS...: one compression, timed and sampled
  local name=$1 procs=$2; shift 2
  rm -rf /tmp/out/$name; mkdir -p /tmp/out
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 > /tmp/smi.$name &
  local smi=$! t0=$(date +%s.%N)
  # torchrun sets OMP_NUM_THREADS=1 per rank unless told otherwise: give each rank its share of the cores
  export OMP_NUM_THREADS=$(( $(nproc) / procs ))
  if [ "$procs" = 1 ]; then
    CUDA_VISIBLE_DEVICES=0 python3 -m llava_fa compress $model "$@" --device cuda --out /tmp/out/$name -q
  else
    torchrun --nproc-per-node "$procs" -m llava_fa compress $model "$@" --device cuda --out /tmp/out/$name -q
  fi >> "$RESULTS/scale.log" 2>&1
  local rc=$? t1=$(date +%s.%N); kill $smi
  python3 scripts/scale_record.py --name "$name" --procs "$procs" --rc $rc --seconds "$(python3 -c "print($t1 - $t0)")" \
    --smi /tmp/smi.$name --out-dir /tmp/out/$name >> "$RESULTS/scale.jsonl"
  cp /tmp/out/$name/compress_report.json "$RESULTS/$name.report.json" 2>/dev/null
}
for spec in "$@"; do
  method=${spec%%:*}; args=${spec#*:}
  for procs in $PROCS; do
    # shellcheck disable=SC2086
    run "$method-${procs}gpu" "$procs" --method "$method" $args
  done
  if [ "$PROCS" = "1 $gpus" ] && [ "$gpus" != 1 ]; then
    python3 scripts/scale_record.py --compare "/tmp/out/$method-1gpu" "/tmp/out/$method-${gpus}gpu" >> "$RESULTS/scale.jsonl"
  fi
  rm -rf /tmp/out/"$method"-*gpu
  tail -3 "$RESULTS/scale.jsonl"
done
python3 scripts/scale_record.py --table "$RESULTS/scale.jsonl" | tee "$RESULTS/scale_table.md"
