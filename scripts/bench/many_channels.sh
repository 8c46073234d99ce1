#!/usr/bin/env bash
# Many channels: every client on its own channel (10,000 channels, so 10,000
# Redis subscriptions on the gateway), messages round-robin over the channels.
#   bash scripts/bench/many_channels.sh [CLIENTS] [RATE]   (default 10000 2000)
source "$(dirname "$0")/lib.sh"
CLIENTS=${1:-10000}
RATE=${2:-2000}

start_redis
start_gateway gw-many
bench "many-channels-${CLIENTS}x$RATE" --url "$GW_URL" --redis-url "$REDIS_URL" \
  --clients "$CLIENTS" --channels "$CLIENTS" --rate "$RATE" --duration 10s \
  --settle 2s --server-pid "$GW_PID"
# Redis work per published message: commands Redis ran, per message.
redis-cli -p "$REDIS_PORT" info commandstats | grep -E 'cmdstat_(evalsha|publish|subscribe)' \
  > "$OUT/many-channels-${CLIENTS}x$RATE.redis.txt" || true
