#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a lent GPU machine that reaches no network, into .gpu/ (ignored
# by git; name it in the device run's `carry`, at most 64 MiB). Run here, after scripts/setup.sh. About 25 MiB:
# - wheels of the pinned packages that machine's image lacks or holds in another version ($PACKAGES);
# - the timed models' config and tokenizer, without weights (the benchmarks time them with random
#   weights), as models.tar.gz (Gemma 3's tokenizer.json alone is 33 MB);
# - the haystack text (Paul Graham's essays) as a minimal `long_context_eval` package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/site
models=$(mktemp -d)
version() { grep -i "^$1==" requirements.lock | cut -d= -f3; }
# what `import draftwise` and pytest need beyond the image's torch, triton, tokenizers and hub
PACKAGES="transformers accelerate psutil pytest pluggy iniconfig"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .gpu/wheels $(for package in $PACKAGES; do echo "$package==$(version "$package")"; done)
for name in qwen2.5-coder-1.5b-instruct gemma-3-270m; do
    source=$($PY -c "import sys; from draftwise.models import resolve; print(resolve(sys.argv[1]))" "$name")
    mkdir -p "$models/$name"
    for file in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja \
        special_tokens_map.json tokenizer.model; do
        [ -f "$source/$file" ] && cp "$source/$file" "$models/$name/"
    done
done
tar -czf .gpu/models.tar.gz -C "$models" . && rm -rf "$models"
essays=$($PY -c "from draftwise.bench.needle import ESSAYS; print(ESSAYS)")
package=$($PY -c "import long_context_eval, os; print(os.path.dirname(long_context_eval.__file__))")
mkdir -p ".gpu/site/long_context_eval/$(dirname "$essays")"
touch .gpu/site/long_context_eval/__init__.py
cp "$package/$essays" ".gpu/site/long_context_eval/$essays"
du -sh .gpu
