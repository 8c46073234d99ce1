#!/usr/bin/env bash
# Idle connections, heartbeats on: RSS and CPU per connection at 10,000 and
# 19,000 native clients (each subscribed to one of 100 channels), held for
# 60 s with the gateway pinging every 25 s (its default). Clients run in two
# processes (one process holds at most ~20,000 sockets) over several 127.0.0.x
# source addresses.
#   bash scripts/bench/idle.sh [CLIENTS…]   (default 10000 19000)
source "$(dirname "$0")/lib.sh"
COUNTS=${*:-10000 19000}
HOLD=${HOLD:-60s}

for n in $COUNTS; do
  start_redis
  start_gateway "gw-idle-$n"
  bench "idle-$n" --url "$GW_URL" --redis-url "$REDIS_URL" --clients "$n" --channels 100 \
    --rate 0 --duration "$HOLD" --settle 3s --workers 2 --src-ips 127.0.0.1-127.0.0.4 \
    --connect-rate 5000 --server-pid "$GW_PID"
  cleanup
done
