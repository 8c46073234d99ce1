#!/usr/bin/env bash
# Where the gateway's CPU goes under the 1,000 clients × 300 msg/s broadcast load:
#  1. perf record (cpu-clock, DWARF call graphs) of the gateway → top symbols,
#  2. perf stat of its send/write/epoll syscalls → syscalls per delivery,
#  3. the same syscall counts for the floor, when the external kit is installed.
# Needs `perf` (apt-get install linux-perf); hardware counters are not needed.
#   bash scripts/bench/profile.sh [CLIENTS] [RATE] [SECONDS]   (default 1000 300 10)
source "$(dirname "$0")/lib.sh"
CLIENTS=${1:-1000}
RATE=${2:-300}
SECS=${3:-10}
SYSCALLS='syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_futex'
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }

# name pid: counts syscalls of pid while the given bench command runs
with_syscalls() {
  local name=$1 pid=$2; shift 2
  perf stat -e "$SYSCALLS" -p "$pid" -o "$OUT/$name.syscalls.txt" -- sleep $((SECS + 6)) &
  local stat=$!
  sleep 0.5
  "$@"
  wait "$stat" || true
}

start_redis
start_gateway gw-profile
perf record -e cpu-clock -F 999 -g --call-graph dwarf,8192 -p "$GW_PID" \
  -o "$OUT/gateway.perf.data" -- sleep $((SECS + 6)) 2> "$OUT/perf-record.log" &
PERF=$!
sleep 0.5
bench "profile-native-${CLIENTS}x$RATE" --url "$GW_URL" --redis-url "$REDIS_URL" \
  --clients "$CLIENTS" --rate "$RATE" --duration "${SECS}s" --server-pid "$GW_PID"
wait "$PERF" || true
perf report -i "$OUT/gateway.perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
  | grep -v '^#' | sed '/^$/d; s/  */ /g' | head -40 > "$OUT/gateway.self.txt" || true
perf report -i "$OUT/gateway.perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
  | grep -v '^#' | sed '/^$/d; s/  */ /g' \
  | grep -E ' (switchboard::|__sys_sendto|tcp_sendmsg|tcp_write_xmit|net_rx_action|tcp_v4_rcv|nf_hook_slow|nf_conntrack_in|__x64_sys_epoll_wait|__x64_sys_recvfrom|__x64_sys_futex|schedule)' \
  | head -40 > "$OUT/gateway.children.txt" || true
cleanup

start_redis
start_gateway gw-syscalls
with_syscalls "switchboard-native-${CLIENTS}x$RATE" "$GW_PID" \
  bench "syscalls-native-${CLIENTS}x$RATE" --url "$GW_URL" --redis-url "$REDIS_URL" \
  --clients "$CLIENTS" --rate "$RATE" --duration "${SECS}s" --server-pid "$GW_PID"
cleanup

FLOOR=$PEERS_DIR/floor/target/release/fanfloor
if [ -x "$FLOOR" ]; then
  start_redis
  FLOOR_PORT=$(free_port)
  "$FLOOR" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$REDIS_PORT" bench 2 > "$OUT/floor-profile.log" 2>&1 &
  FLOOR_PID=$!; STARTED_PIDS+=("$FLOOR_PID")
  wait_port "$FLOOR_PORT"
  with_syscalls "floor-${CLIENTS}x$RATE" "$FLOOR_PID" \
    bench "syscalls-floor-${CLIENTS}x$RATE" --url "ws://127.0.0.1:$FLOOR_PORT/ws" --route raw \
    --publisher plain --pubsub-name bench --redis-url "$REDIS_URL" --clients "$CLIENTS" \
    --rate "$RATE" --duration "${SECS}s" --server-pid "$FLOOR_PID"
  cleanup
fi
grep -H -E 'syscalls:' "$OUT"/*.syscalls.txt
