#!/usr/bin/env bash
# Idle connections, heartbeats on: RSS and CPU per connection at 10,000 and
# 19,000 native clients (each subscribed to one of 100 channels), held for
# 60 s with the gateway pinging every 25 s (its default). Clients run in
# several processes (one process holds at most ~20,000 sockets here) over
# several 127.0.0.x source addresses.
#   bash scripts/bench/idle.sh [CLIENTS…]   (default 10000 19000)
# HOLD sets how long they are held (default 60s), CONNECT_RATE the clients'
# connect rate (default 5000/s), GW_BIN another
# gateway binary (before/after runs).
# COMPRESSION=1 has every client offer permessage-deflate (negotiated: the
# gateway accepts it by default), to show it costs an idle connection nothing.
# REPLICAS=3 spreads the clients over three gateways on one Redis: how to go
# past one process's sockets (e.g. REPLICAS=3 idle.sh 50000).
source "$(dirname "$0")/lib.sh"
COUNTS=${*:-10000 19000}
HOLD=${HOLD:-60s}
REPLICAS=${REPLICAS:-1}

for n in $COUNTS; do
  start_redis
  urls=(); pids=()
  for r in $(seq 1 "$REPLICAS"); do
    start_gateway "gw-idle-$n-$r"
    urls+=(--url "$GW_URL"); pids+=(--server-pid "$GW_PID")
  done
  workers=$(( (n + 14999) / 15000 )); [ "$workers" -lt 2 ] && workers=2
  label=idle-$n; [ "$REPLICAS" -gt 1 ] && label=idle-$n-${REPLICAS}gw
  extra=()
  if [ "${COMPRESSION:-0}" = 1 ]; then extra=(--compression); label=$label-deflate; fi
  bench "$label" "${urls[@]}" --redis-url "$REDIS_URL" --clients "$n" --channels 100 \
    --rate 0 --duration "$HOLD" --settle 3s --workers "$workers" --src-ips 127.0.0.1-127.0.0.8 \
    --connect-rate "${CONNECT_RATE:-5000}" "${pids[@]}" "${extra[@]}"
  cleanup
done
