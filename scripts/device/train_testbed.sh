#!/usr/bin/env bash
# Train the testbed projector on a lent GPU: bash scripts/device/train_testbed.sh "NAME:TRAIN ARGS" ...
source scripts/device/setup.sh
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
for spec in "$@"; do
  name=${spec%%:*}; args=${spec#*:}
  python3 -m llava_fa.testbed.train --out "$OUT/$name" $args 2>&1 | tee "$OUT/$name.log"
done
