#!/usr/bin/env bash
# Before/after of a hot-path change: two gateway binaries under the same load,
# alternating, RUNS times each, the same bench client for all (this checkout's).
#   A=path/to/old/switchboard B=path/to/new/switchboard \
#     bash scripts/bench/ab.sh [CLIENTS] [RATE] [SECONDS] [RUNS]   (default 1000 300 10 3)
# Then: python3 scripts/bench/summarize.py "$OUT"
source "$(dirname "$0")/lib.sh"
CLIENTS=${1:-1000}
RATE=${2:-300}
SECS=${3:-10}
RUNS=${4:-3}
: "${A:?set A to the old gateway binary}" "${B:?set B to the new gateway binary}"

for run in $(seq 1 "$RUNS"); do
  for side in A B; do
    GW_BIN=${!side}
    start_redis
    start_gateway "gw-$side-$run"
    bench "ab-$side-${CLIENTS}x$RATE-run$run" --url "$GW_URL" --redis-url "$REDIS_URL" \
      --clients "$CLIENTS" --rate "$RATE" --duration "${SECS}s" --server-pid "$GW_PID"
    cleanup
  done
done
