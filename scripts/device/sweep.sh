#!/usr/bin/env bash
# Compress the testbed with each "NAME:COMPRESS ARGS" spec and evaluate it on the full easy-VQA
# test split and all of WikiText-2, against the uncompressed testbed. Results (NAME.json, NAME.report.json,
# NAME.log) collect in /tmp/res and are tarred into $OUT/results.tar after each run (few files come back).
source scripts/device/setup.sh
tb=/tmp/testbed
R=/tmp/res; mkdir -p $R
[ -f $tb/config.json ] || python3 -c "from llava_fa.testbed.build import build_testbed; build_testbed('$tb')"
for spec in "$@"; do
  name=${spec%%:*}; args=${spec#*:}
  if [ "$name" = base ]; then
    llava eval $tb --device cuda --dtype float32 --vqa-mode both --json "$R/base.json" --batch-size 64 > "$R/base.log" 2>&1
  else
    rm -rf /tmp/c/$name
    llava compress $tb --out /tmp/c/$name --device cuda --report "$R/$name.report.json" -q $args > "$R/$name.log" 2>&1
    llava eval /tmp/c/$name --reference $tb --device cuda --dtype float32 --vqa-mode fast --json "$R/$name.json" --batch-size 64 >> "$R/$name.log" 2>&1
  fi
  tail -2 "$R/$name.log"; tar cf "$OUT/results.tar" -C $R .
done
