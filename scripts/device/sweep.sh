#!/usr/bin/env bash
# Compress the testbed with each "NAME:COMPRESS ARGS" spec and evaluate it on the full easy-VQA
# test split and all of WikiText-2, against the uncompressed testbed. Results (NAME.json, NAME.report.json,
# NAME.log) collect in /tmp/res and are tarred into $OUT/results.tar after each run (few files come back).
# A spec whose NAME.json is already in /tmp/res is skipped: repeat the call to resume (machine warm).
# Across sessions (a fresh machine): unpack the results.tar that came back into .carry/sweep_res/ here and
# carry that folder; its rows are copied into /tmp/res first and skipped.
# JOBS=N runs N specs at a time, dealt to the machine's GPUs in turn (the testbed is small; compression
# seconds then include the contention, so time single layers with scripts/bench_layer.py instead).
# TESTBED_LM=qwen2.5-0.5b sweeps testbed 2 (its bundle: make_bundle.sh qwen2.5-0.5b). EVAL_DTYPE=tf32 evaluates
# every row (the uncompressed one too) with TF32 matmuls, BASE_VQA=fast skips the uncompressed row's generation
# pass: on testbed 2 the full split in float32 took minutes per row (9,673 questions, 256 image tokens each).
source scripts/device/setup.sh
lm=${TESTBED_LM:-smollm2-135m}
tb=/tmp/testbed-$lm
R=/tmp/res; mkdir -p $R
[ -d .carry/sweep_res ] && { cp -n .carry/sweep_res/* $R/ 2>/dev/null || true; }  # rows of an earlier session: not rerun
[ -f $tb/config.json ] || python3 -m llava_fa testbed build --language-model "$lm" --out "$tb"

snapshot() {  # tar to a private name, then rename: a reader never sees half a tar
  tar cf "/tmp/results.$1.tar" -C $R . && mv -f "/tmp/results.$1.tar" "$OUT/results.tar"
}

gpus=$(nvidia-smi --list-gpus | wc -l)
run_spec() {  # run_spec SPEC GPU
  local spec=$1 name=${1%%:*} args=${1#*:}
  export CUDA_VISIBLE_DEVICES=$2
  [ -f "$R/$name.json" ] && { echo "== $name (done before)"; return; }  # a repeated call resumes the sweep
  if [ "$name" = base ]; then
    llava eval $tb --device cuda --dtype "${EVAL_DTYPE:-float32}" --vqa-mode "${BASE_VQA:-both}" --json "$R/base.json" --batch-size 64 > "$R/base.log" 2>&1 || echo "FAILED: base" >> "$R/base.log"
  else
    rm -rf /tmp/c/$name
    # shellcheck disable=SC2086
    llava compress $tb --out /tmp/c/$name --device cuda --report "$R/$name.report.json" -q $args > "$R/$name.log" 2>&1 &&
    llava eval /tmp/c/$name --reference $tb --device cuda --dtype "${EVAL_DTYPE:-float32}" --forward-mode cached --vqa-mode fast --json "$R/$name.json" --batch-size 64 >> "$R/$name.log" 2>&1 ||
    echo "FAILED: $name" >> "$R/$name.log"
    rm -rf /tmp/c/$name
  fi
  echo "== $name"; tail -2 "$R/$name.log"; snapshot "$name"
}

i=0
for spec in "$@"; do
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-1}" ]; do wait -n || true; done
  run_spec "$spec" $(( i++ % gpus )) &
done
wait || true
snapshot final
