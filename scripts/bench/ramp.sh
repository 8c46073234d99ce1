#!/usr/bin/env bash
# Broadcast ramp: 1,000 native clients on one channel, the rate raised step by
# step (10 s each, fresh gateway) until p99 passes 100 ms or anything is lost.
#   bash scripts/bench/ramp.sh [RATE…]   (default 100 200 300 400 600 800 1000 1500 2000)
# KEEP_GOING=1 runs every step even past the limit (to see the whole curve).
source "$(dirname "$0")/lib.sh"
RATES=${*:-100 200 300 400 600 800 1000 1500 2000}
CLIENTS=${CLIENTS:-1000}
ROUTE=${ROUTE:-native}

for rate in $RATES; do
  start_redis
  start_gateway "gw-ramp-$rate"
  bench "ramp-$ROUTE-${CLIENTS}x$rate" --url "$GW_URL" --redis-url "$REDIS_URL" \
    --route "$ROUTE" --clients "$CLIENTS" --rate "$rate" --duration 10s --server-pid "$GW_PID"
  cleanup
  verdict=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); d=r["delivery"]
print("stop" if d["latency_ms"]["p99"] > 100 or d["lost"] or d["ended_early"] else "go")' \
    "$OUT/ramp-$ROUTE-${CLIENTS}x$rate.json")
  if [ "$verdict" = stop ] && [ "${KEEP_GOING:-0}" != 1 ]; then
    echo "ramp: stopped at $rate msg/s (p99 over 100 ms or messages lost)" >&2
    break
  fi
done
