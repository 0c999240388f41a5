#!/usr/bin/env bash
# tests/run_sharded.sh OUT_DIR BINARY [GoogleTest flags...]
# Runs a GoogleTest binary as two shards at once (GTEST_TOTAL_SHARDS), one per core of the 2-core CI
# machine: the sanitizer builds' tests run one CUDA thread at a time, so one process leaves a core idle.
# Shard i writes OUT_DIR/results.<i>.json and OUT_DIR/shard.<i>.log; both logs are printed when both
# shards are done (not interleaved), and the exit status is the first failing shard's.
set -u
out=$1; shift
rm -f "$out"/results.*.json "$out"/shard.*.log
pids=()
for i in 0 1; do
    GTEST_TOTAL_SHARDS=2 GTEST_SHARD_INDEX=$i "$@" --gtest_output=json:"$out/results.$i.json" > "$out/shard.$i.log" 2>&1 &
    pids+=($!)
done
status=0
for i in 0 1; do
    wait "${pids[$i]}"; s=$?
    [ $status -eq 0 ] && status=$s
done
for i in 0 1; do
    echo "---------------- shard $i of 2 ($out/shard.$i.log)"
    cat "$out/shard.$i.log"
done
exit $status
