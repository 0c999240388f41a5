#!/usr/bin/env bash
# bench/bench_train.sh: tokens per second of whole training steps (forward, backward, AdamW) of the
# CPU build for the default dense model and the default MoE model at equal active compute
# (dense FFN 4C; MoE top-2 of 8 experts of width 2C). Median over the logged windows of STEPS steps.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-80}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
printf '\n%-34s %12s %12s %10s\n' "model (CPU build, $STEPS steps)" "ms/step" "tokens/s" "vs dense"
dense_tps=""
for spec in "dense (F=4C):--experts 0" "MoE 8 experts top-2 (F=2C):--experts 8 --top-k 2"; do
    name=${spec%%:*}; flags=${spec#*:}
    # shellcheck disable=SC2086
    ./train_moe_cpu $flags --steps "$STEPS" --log-every 10 --eval-every 0 --eval-batches 1 --sample-every 0 \
        --checkpoint-every 0 --plots 0 --out "$out/$(echo "$name" | tr -c 'a-zA-Z0-9' _)" > "$out/log.txt" 2>&1 \
        || { echo "bench_train: the run '$name' failed:"; tail -5 "$out/log.txt"; exit 1; }
    # skip the first logged window (warm-up: page faults, OpenBLAS buffers)
    ms=$(grep -o '"ms_per_step": *[0-9.]*' "$out/$(echo "$name" | tr -c 'a-zA-Z0-9' _)/metrics.jsonl" | tail -n +2 | grep -o '[0-9.]*$' | median)
    tps=$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 12 * 64 * 1000 / ms}')
    [ -z "$dense_tps" ] && dense_tps=$tps
    ratio=$(awk -v a="$tps" -v b="$dense_tps" 'BEGIN {printf "%.2f", a / b}')
    printf '%-34s %12.1f %12s %10s\n' "$name" "$ms" "$tps" "$ratio"
done
