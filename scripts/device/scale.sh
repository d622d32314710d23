#!/usr/bin/env bash
# Compress a random Llama-2-7B-shaped decoder on 1 GPU and with torchrun on N GPUs, for each method:
# wall time, peak GPU memory per GPU (nvidia-smi, sampled every 200 ms), and whether both runs store
# identical tensors. Results: $RESULTS/scale.jsonl (one record per run), $RESULTS/scale_table.md (the runs
# as a markdown table) and $RESULTS/scale.log
# (RESULTS defaults to $OUT; point it to /tmp/... when running in the background across calls,
# since each call empties $OUT).
#   bash scripts/device/scale.sh "gptq:--bits 3" "fa:"      (on an nvidia-h200-x2)
#   PROCS=1 bash scripts/device/scale.sh "rtn:" "hqq:"      (one GPU only: the single-GPU method table)
#   PROCS=1 LANES=2 bash scripts/device/scale.sh "rtn:" "hqq:" ...   (on an x2: single-GPU runs, two at a
#   time, one per GPU, the methods dealt to the GPUs in turn; each run has its GPU and half the cores)
# NVLink multicast stays off in NCCL, PyTorch and NVSHMEM (the device documentation asks for it).
set -uo pipefail
RESULTS=${RESULTS:-$OUT}; mkdir -p "$RESULTS"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 LLAVA_FA_DATA=$PWD/.carry/data NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TQDM_DISABLE=1
gpus=$(nvidia-smi --list-gpus | wc -l)
PROCS=${PROCS:-"1 $gpus"}
LANES=${LANES:-1}
model=/tmp/llama7b
[ -f $model/config.json ] || python3 scripts/make_random_llama.py --out $model | tee -a "$RESULTS/scale.log"
run() {  # run NAME PROCS GPU ARGS...: one compression, timed and sampled (GPU: the one a 1-process run takes)
  local name=$1 procs=$2 gpu=$3; shift 3
  rm -rf /tmp/out/$name; mkdir -p /tmp/out
  local only=(); [ "$procs" = 1 ] && only=(-i "$gpu")
  nvidia-smi "${only[@]}" --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 > /tmp/smi.$name &
  local smi=$! t0=$(date +%s.%N)
  # torchrun sets OMP_NUM_THREADS=1 per rank unless told otherwise: give each rank its share of the cores
  export OMP_NUM_THREADS=$(( $(nproc) / procs / LANES ))
  if [ "$procs" = 1 ]; then
    CUDA_VISIBLE_DEVICES=$gpu python3 -m llava_fa compress $model "$@" --device cuda --out /tmp/out/$name -q
  else
    torchrun --nproc-per-node "$procs" -m llava_fa compress $model "$@" --device cuda --out /tmp/out/$name -q
  fi >> "$RESULTS/scale.log" 2>&1
  local rc=$? t1=$(date +%s.%N); kill $smi
  python3 scripts/scale_record.py --name "$name" --procs "$procs" --rc $rc --seconds "$(python3 -c "print($t1 - $t0)")" \
    --smi /tmp/smi.$name --out-dir /tmp/out/$name >> "$RESULTS/scale.jsonl"
  cp /tmp/out/$name/compress_report.json "$RESULTS/$name.report.json" 2>/dev/null
}
lane() {  # lane GPU SPEC...: the specs one after the other, single-process runs on GPU (or as PROCS says)
  local gpu=$1; shift
  for spec in "$@"; do
    method=${spec%%:*}; args=${spec#*:}
    for procs in $PROCS; do
      # shellcheck disable=SC2086
      run "$method-${procs}gpu" "$procs" "$gpu" --method "$method" $args
    done
    if [ "$PROCS" = "1 $gpus" ] && [ "$gpus" != 1 ]; then
      python3 scripts/scale_record.py --compare "/tmp/out/$method-1gpu" "/tmp/out/$method-${gpus}gpu" >> "$RESULTS/scale.jsonl"
    fi
    rm -rf /tmp/out/"$method"-*gpu
    tail -1 "$RESULTS/scale.jsonl" | cut -c1-200
  done
}
specs=("$@")
for (( l = 0; l < LANES; l++ )); do
  mine=(); for (( i = l; i < ${#specs[@]}; i += LANES )); do mine+=("${specs[i]}"); done
  lane "$l" "${mine[@]}" &
done
wait
python3 scripts/scale_record.py --table "$RESULTS/scale.jsonl" | tee "$RESULTS/scale_table.md"
