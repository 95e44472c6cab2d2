#!/usr/bin/env bash
# kvpress's own environment (.venv-kvpress) for benchmarks/kvpress_ruler.py: kvpress 0.5.5 pins
# transformers<5.3, draftwise uses transformers 5.23, so the two live in separate venvs. Idempotent.
# Run scripts/setup.sh first (it installs the models and the RULER data kvpress_ruler.py reads).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-kvpress/bin/python ]; then
    "$PYTHON" -m venv .venv-kvpress
fi
.venv-kvpress/bin/python -m pip install --quiet --disable-pip-version-check -r benchmarks/kvpress.lock
.venv-kvpress/bin/python -c "import kvpress, transformers; print('kvpress ready, transformers', transformers.__version__)"
