#!/usr/bin/env bash
# Build the carry bundle for GPU runs (run here, not on the device): the three pinned wheels plus
# the transformers and gguf wheels, split into four parts under .carry/ (ignored by git), and a
# copy of ../shared/data. Then, in four device calls less than 30 s apart, carry .carry/p0, p1,
# p2 (each: `mkdir -p /tmp/parts && cp .carry/pN /tmp/parts/`) and finally .carry/p3 with
# .carry/bundle.sha256 and .carry/data, running e.g. `cp .carry/p3 /tmp/parts/ && bash scripts/device/sweep.sh ...`.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m llava_fa testbed fetch
work=$(mktemp -d)
mkdir -p "$work/cache/wheels" "$work/whl" .carry
cp "${LLAVA_FA_CACHE:-$HOME/.cache/llava_fa}"/wheels/*.whl "$work/cache/wheels/"
python3 -m pip download -q --no-deps -d "$work/whl" "transformers==$(python3 -c 'import transformers; print(transformers.__version__)')" \
  "gguf==$(python3 -c 'import importlib.metadata as m; print(m.version("gguf"))')"
tar cf "$work/bundle.tar" -C "$work" cache whl
rm -f .carry/p?
split -b 50M -d -a 1 "$work/bundle.tar" .carry/p
sha256sum "$work/bundle.tar" | cut -d' ' -f1 | sed 's|$|  /tmp/bundle.tar|' > .carry/bundle.sha256
rm -rf .carry/data && mkdir -p .carry/data && cp -r ../shared/data/wikitext-2 ../shared/data/wikitext-2-raw .carry/data/
rm -rf "$work"
ls -la .carry
