#!/usr/bin/env bash
# Source this on a lent GPU after the parts of the asset bundle (.carry/pNN listed in
# .carry/bundle.parts, made by scripts/device/make_bundle.sh: the pinned wheels plus the
# transformers/gguf wheels) have arrived, one per call, in /tmp/parts.
# It unpacks them once, installs the two wheels into /tmp/site and sets the environment.
set -euo pipefail
if [ ! -f /tmp/w/.ready ]; then
  # shellcheck disable=SC2046
  cat $(sed 's|^|/tmp/parts/|' .carry/bundle.parts) > /tmp/bundle.tar
  echo "$(cut -d' ' -f1 .carry/bundle.sha256)  /tmp/bundle.tar" | sha256sum -c -
  mkdir -p /tmp/w && tar xf /tmp/bundle.tar -C /tmp/w
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/w/whl/*.whl
  touch /tmp/w/.ready
fi
export PYTHONPATH=/tmp/site:$PWD/src LLAVA_FA_CACHE=/tmp/w/cache LLAVA_FA_DATA=$PWD/.carry/data PYTHONUNBUFFERED=1
export TQDM_DISABLE=1
llava() { python3 -m llava_fa "$@"; }
