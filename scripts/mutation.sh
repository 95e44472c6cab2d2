#!/usr/bin/env bash
# Mutation testing of draftwise's core modules (methods, scoring, selection, pruning, prompt choice,
# mapping, sparse pre-fill, decoding) with mutmut, pinned in requirements-mutation.txt, against the fast
# tests (tiny models; no real models, no server). Not part of CI: it takes hours on 2 CPU cores.
#
#   bash scripts/mutation.sh                       # all core modules
#   MUTATE="draftwise/scoring.py" bash scripts/mutation.sh   # some of them (space-separated globs)
#   MUTATION_DIR=/tmp/mut bash scripts/mutation.sh # keep (and resume in) this copy; default: a new temp dir
#   MUTANTS="draftwise.prefill.* draftwise.scoring.x_smooth*" bash scripts/mutation.sh  # only these
#                                                  # mutants (names or globs; named ones always re-run)
#
# It runs in a copy of the repository, so the work tree is never touched. In the copy:
#  - ``@torch.no_grad()`` decorator lines are removed and the tests run with gradients off globally
#    (the same computation): mutmut skips decorated functions, and these are core ones (prefill,
#    compress, specpc_scores, decode, ...).
#  - each mutant's tests run fastest first (by the durations mutmut recorded), so that a killed mutant
#    costs its quickest failing test rather than whatever order the test set happens to have.
#  - ``[tool.mutmut]`` is appended to pyproject.toml: what to mutate, and the fast test files.
# Results: "$MUTATION_DIR/mutation-results.txt" (every mutant's status) and mutmut's own
# mutants/mutmut-cicd-stats.json; `cd "$MUTATION_DIR" && mutmut show NAME` shows one mutant's diff.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="$repo/.venv/bin/python"
"$python" -m pip install -q -r "$repo/requirements-mutation.txt"

work="${MUTATION_DIR:-$(mktemp -d /tmp/draftwise-mutation.XXXXXX)}"
mkdir -p "$work"
echo "mutation testing in $work"
(cd "$repo" && tar --exclude=./.venv --exclude=./.git --exclude=./mutants --exclude='./.venv-*' \
    --exclude='*/__pycache__' --exclude=./.hypothesis -cf - draftwise tests pyproject.toml) | tar -xf - -C "$work"
cd "$work"

sed -i '/^[[:space:]]*@torch\.no_grad()[[:space:]]*$/d' draftwise/*.py draftwise/methods/*.py
if ! grep -q "mutation testing: gradients off" tests/conftest.py; then
    cat >> tests/conftest.py <<'EOF'


# mutation testing: gradients off (scripts/mutation.sh removed the @torch.no_grad() decorators)
torch.set_grad_enabled(False)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def pytest_collection_modifyitems(items):
    """Fastest tests first (mutmut stops at the first failure), by the durations mutmut recorded."""
    import json
    from pathlib import Path

    stats = Path("mutmut-stats.json")
    if stats.exists():
        durations = json.loads(stats.read_text()).get("duration_by_test", {})
        items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
EOF
fi

default_modules="draftwise/methods/*.py draftwise/scoring.py draftwise/prefill.py draftwise/cache.py \
draftwise/token_selection.py draftwise/text_compression.py draftwise/mapping.py draftwise/sparse.py draftwise/decoding.py draftwise/attention.py \
draftwise/headmask.py draftwise/batching.py"
modules="${MUTATE:-$default_modules}"
tests="tests/test_references.py tests/test_forced_exactness.py tests/test_exactness.py \
tests/test_selection.py tests/test_baselines.py tests/test_adakv.py tests/test_sparse.py \
tests/test_cross_tokenizer.py tests/test_positions.py tests/test_shared_prefill.py tests/test_sampling.py \
tests/test_attention.py tests/test_self_draft.py tests/test_errors.py tests/test_scoring_helpers.py \
tests/test_mapping.py tests/test_compress_text.py tests/test_cache.py tests/test_decoding.py tests/test_batching.py"
to_list() { printf '"%s", ' "$@" | sed 's/, $//'; }
if ! grep -q '^\[tool.mutmut\]' pyproject.toml; then
    # shellcheck disable=SC2086  # globs and word lists on purpose
    cat >> pyproject.toml <<EOF

[tool.mutmut]
source_paths = ["draftwise"]
only_mutate = [$(to_list $modules)]
pytest_add_cli_args_test_selection = [$(to_list $tests)]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
process_isolation = "forkserver"
timeout_multiplier = 10.0
timeout_constant = 30.0
EOF
fi

export OMP_NUM_THREADS=1 DRAFTWISE_SKIP_REAL_MODELS=1 PYTHONHASHSEED=0
# shellcheck disable=SC2086  # MUTANTS is a list of names or globs
"$repo/.venv/bin/mutmut" run --max-children "${MUTATION_JOBS:-2}" ${MUTANTS:-} || true
"$repo/.venv/bin/mutmut" export-cicd-stats || true
"$repo/.venv/bin/mutmut" results --all true > mutation-results.txt || true
cat mutants/mutmut-cicd-stats.json 2>/dev/null || true
echo
grep -c ": killed" mutation-results.txt | sed 's/^/killed: /' || true
grep -v ": killed" mutation-results.txt || true
