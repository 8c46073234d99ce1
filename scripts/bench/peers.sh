#!/usr/bin/env bash
# Side by side in one run: switchboard, the floor and the peers at the same
# loads, all measured by the same client (wsfan, from the external kit), plus
# `switchboard bench` against switchboard (native and relay) and the floor, so
# the two clients' figures can be cross-checked.
#
# Needs the OPTIONAL external benchmark kit (not part of this repository, not
# in CI): ../shared/bench next to the checkout (or KIT=…), installed with
#   bash ../shared/bench/setup.sh        # into /tmp/switchboard-peers, minutes
#   bash scripts/bench/peers.sh [LOAD…]   LOAD = CONNS:MSGS:RATE
# Default loads: 5000:40:2 1000:3000:300 1000:4000:400 (the issue's).
# PEERS (default "floor wsnode centrifuge") picks the kit's peers.
source "$(dirname "$0")/lib.sh"
LOADS=${*:-5000:40:2 1000:3000:300 1000:4000:400}
PEERS=${PEERS:-floor wsnode centrifuge}
WSFAN=$PEERS_DIR/wsfan/target/release/wsfan
FLOOR=$PEERS_DIR/floor/target/release/fanfloor
[ -x "$WSFAN" ] && [ -x "$FLOOR" ] || {
  echo "the benchmark kit is not installed: bash $KIT/setup.sh (see BENCHMARKS.md)" >&2; exit 1; }

cpu_s() { awk '{print ($14+$15+$16+$17)/100}' "/proc/$1/stat"; }
hwm_kb() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }

# wsfan against a server already running: name pid url channel conns msgs rate
wsfan_run() {
  local name=$1 pid=$2 url=$3 channel=$4 conns=$5 msgs=$6 rate=$7 c0 c1 out
  echo "== $name (wsfan)" >&2
  c0=$(cpu_s "$pid")
  out=$("$WSFAN" --proto raw --url "$url" --conns "$conns" --redis "127.0.0.1:$REDIS_PORT" \
    --channel "$channel" --msgs "$msgs" --rate "$rate" --drain 10)
  c1=$(cpu_s "$pid")
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(peer=sys.argv[2], server_cpu_s=round(float(sys.argv[3])-float(sys.argv[4]),2), server_peak_rss_kb=int(sys.argv[5])); print(json.dumps(d))' \
    "$out" "$name" "$c1" "$c0" "$(hwm_kb "$pid")" | tee "$OUT/$name.wsfan.json"
}

for load in $LOADS; do
  IFS=: read -r conns msgs rate <<< "$load"
  tag="${conns}x${rate}"
  # 1. The kit's own runner: floor and peers, wsfan, each against a private Redis.
  (cd "$PEERS_DIR" && bash "$KIT/bench_peers.sh" "$conns" "$msgs" "$rate" $PEERS) \
    | tee "$OUT/peers-$tag.jsonl"
  # 2. wsfan against switchboard's relay route (plain PUBLISH, as for the peers).
  start_redis
  start_gateway "gw-wsfan-$tag"
  wsfan_run "switchboard-relay-$tag" "$GW_PID" "$GW_URL/api/ws/bench${TOKEN:+?token=$TOKEN}" 'switchboard:{bench}' \
    "$conns" "$msgs" "$rate"
  cleanup
  # 3. switchboard bench against switchboard: native with offsets, and relay.
  for route in native relay; do
    start_redis
    start_gateway "gw-$route-$tag"
    bench "sb-$route-$tag" --url "$GW_URL" --redis-url "$REDIS_URL" --route "$route" \
      --clients "$conns" --rate "$rate" --messages "$msgs" --server-pid "$GW_PID"
    cleanup
  done
  # 4. switchboard bench against the floor (raw route, plain PUBLISH to its channel).
  start_redis
  FLOOR_PORT=$(free_port)
  "$FLOOR" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$REDIS_PORT" bench 2 > "$OUT/floor-$tag.log" 2>&1 &
  FLOOR_PID=$!; STARTED_PIDS+=("$FLOOR_PID")
  wait_port "$FLOOR_PORT"
  bench "floor-$tag" --url "ws://127.0.0.1:$FLOOR_PORT/ws" --route raw --publisher plain \
    --pubsub-name bench --redis-url "$REDIS_URL" --clients "$conns" --rate "$rate" \
    --messages "$msgs" --server-pid "$FLOOR_PID"
  cleanup
done
