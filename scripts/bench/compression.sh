#!/usr/bin/env bash
# What compression and deltas save on a realistic ARK workload (issue 22):
# `demo-data --peers 100 --follow` keeps a 100-peer federation mesh and the
# memory sources changing, one collector publishes the two dashboard snapshots
# (federation ~15 KB, memory ~2 KB, every 2–3 s), and CLIENTS native clients on
# /ws (half on `federation`, half on `memory`) are held for HOLD while they
# arrive. Each round runs three variants against a fresh gateway, in turn:
#   plain        no extension offered (what every client got before issue 22)
#   deflate      permessage-deflate offered (--compression), as browsers do
#   delta        permessage-deflate and "delta": "fossil" (--compression --delta)
# and `switchboard bench` reports bytes on the wire per client per minute,
# the ratio to the messages' size, and the gateway's CPU (--server-pid).
#   bash scripts/bench/compression.sh            (CLIENTS=10000 HOLD=60s REPS=2)
# PEERS sets the mesh's size (default 100); summarize.py prints the medians.
source "$(dirname "$0")/lib.sh"
CLIENTS=${CLIENTS:-10000}
HOLD=${HOLD:-60s}
REPS=${REPS:-2}
PEERS=${PEERS:-100}

start_redis
DATA=$OUT/ark-data
"$SB" demo-data "$DATA" --redis-url "$REDIS_URL" --peers "$PEERS" --follow --force \
  > "$OUT/demo-data.log" 2>&1 &
STARTED_PIDS+=("$!")
# demo-data creates the files before it follows; the collector needs them.
for _ in $(seq 1 100); do [ -s "$DATA/ark.db" ] && break; sleep 0.1; done
SWITCHBOARD_LOG_LEVEL=warn "$SB" collector --redis-url "$REDIS_URL" \
  --reasoning-db "$DATA/reasoning_logs.db" --ark-db "$DATA/ark.db" \
  --listen "127.0.0.1:$(free_port)" > "$OUT/collector.log" 2>&1 &
STARTED_PIDS+=("$!")
# Wait for both snapshots to exist, so the first variant measures a steady state.
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$REDIS_PORT" exists 'switchboard:{federation}:snapshot' \
    'switchboard:{memory}:snapshot')" = 2 ] && break
  sleep 0.2
done

workers=$(( (CLIENTS + 14999) / 15000 )); [ "$workers" -lt 2 ] && workers=2
for rep in $(seq 1 "$REPS"); do
  for variant in plain deflate delta; do
    case $variant in
      plain) flags=() ;;
      deflate) flags=(--compression) ;;
      delta) flags=(--compression --delta) ;;
    esac
    # A gateway of its own per variant, so its CPU and RSS are this variant's.
    start_gateway "gw-$variant-$rep"
    bench "compression-$variant-$CLIENTS-$rep" --url "$GW_URL" --redis-url "$REDIS_URL" \
      --channel-names federation,memory --clients "$CLIENTS" --rate 0 --duration "$HOLD" \
      --settle 3s --workers "$workers" --src-ips 127.0.0.1-127.0.0.8 \
      --connect-rate "${CONNECT_RATE:-5000}" --server-pid "$GW_PID" "${flags[@]}"
    stop_pid "$GW_PID"
  done
done
