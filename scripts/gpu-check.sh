#!/usr/bin/env bash
# The checks that need a GPU, in one run on a lent GPU machine (its image holds PyTorch and Triton; it
# reaches no network). Needs .gpu/ from scripts/gpu-pack.sh, carried along. Writes logs and Markdown
# reports to $OUT (default out/gpu). Parts, in order (default: all):
#   tests     tests/test_cuda.py: every method's invariants, the fused sparse kernel and the whole sparse
#             pre-fill against the reference, the windowed pre-fill against the dense one
#   prefill   benchmarks/prefill.py: dense vs the fused sparse pre-fill, Qwen2.5-1.5B's architecture
#             (random weights: the same time per token), 8k to 32k
#   windowed  benchmarks/windowed.py: dense vs windowed pre-fill, Gemma 3 270M's architecture, 4k to 32k
# Example (device tool): command "bash scripts/gpu-check.sh tests prefill", carry [".gpu"].
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
[ $# -gt 0 ] || set -- tests prefill windowed
for part in "$@"; do
    case $part in tests | prefill | windowed) ;; *) echo "unknown part: $part (tests, prefill, windowed)" >&2; exit 2 ;; esac
done
[ -d .gpu/wheels ] || { echo "no .gpu/: run scripts/gpu-pack.sh here first and carry .gpu" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl || exit 2
mkdir -p /tmp/models && tar -xzf .gpu/models.tar.gz -C /tmp/models || exit 2
export PYTHONPATH="$PWD:/tmp/site:$PWD/.gpu/site" PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
status=0
for part in "$@"; do
    case $part in
    tests)
        python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test-cuda.log" || status=1
        ;;
    prefill)
        python3 benchmarks/prefill.py --device cuda --random-weights \
            --target /tmp/models/qwen2.5-coder-1.5b-instruct --lengths 8192 16384 32000 --sizes 1024 2048 \
            --kernels flex --repeats 5 --out "$OUT/prefill-gpu-flex.md" 2>&1 | tee "$OUT/prefill.log" || status=1
        ;;
    windowed)
        python3 benchmarks/windowed.py --device cuda --random-weights --target /tmp/models/gemma-3-270m \
            --lengths 4096 16384 32000 --repeats 5 --out "$OUT/windowed-gpu.md" 2>&1 | tee "$OUT/windowed.log" \
            || status=1
        ;;
    esac
done
exit $status
