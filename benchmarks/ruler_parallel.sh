#!/usr/bin/env bash
# Run `draftwise bench ruler` as N processes on one machine (e.g. a GPU, which one process leaves idle
# between small kernels), each on its share of the 13 tasks, then merge their records into OUT.
#
#   benchmarks/ruler_parallel.sh OUT N [bench ruler options, without --tasks and --out]
#   benchmarks/ruler_parallel.sh docs/results/ruler-4k-h100.jsonl 8 --device cuda --samples 5
#
# Each shard is resumable like a single run (OUT.shardK.jsonl); re-running the command finishes the
# shards and merges again. DRAFTWISE overrides the command (default: `draftwise`).
set -euo pipefail
out=$1 shards=$2
shift 2
tasks=(niah_single_1 niah_single_2 niah_single_3 niah_multikey_1 niah_multikey_2 niah_multikey_3
    niah_multivalue niah_multiquery vt cwe fwe qa_1 qa_2)
read -r -a draftwise <<<"${DRAFTWISE:-draftwise}"
pids=()
for ((k = 0; k < shards; k++)); do
    mine=()
    for ((i = k; i < ${#tasks[@]}; i += shards)); do mine+=("${tasks[i]}"); done
    [ ${#mine[@]} -eq 0 ] && continue
    list=$(IFS=,; echo "${mine[*]}")
    "${draftwise[@]}" bench ruler --tasks "$list" --out "$out.shard$k.jsonl" "$@" >"$out.shard$k.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
cat "$out".shard*.jsonl >"$out.merged" && mv "$out.merged" "$out"
echo "merged $(wc -l <"$out") records into $out (shard status $status)"
exit $status
