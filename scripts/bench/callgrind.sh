#!/usr/bin/env bash
# Repeatable instruction counts (valgrind --tool=callgrind, user space only) of a
# gateway serving CLIENTS native clients × RATE msg/s × MESSAGES messages; the
# gateway runs ~50× slower under valgrind, so the load is small. Prints the top
# inclusive costs and the fan-out's instructions per delivery.
# Needs valgrind (apt-get install valgrind).
#   bash scripts/bench/callgrind.sh [CLIENTS] [RATE] [MESSAGES]   (default 200 50 200)
source "$(dirname "$0")/lib.sh"
CLIENTS=${1:-200}
RATE=${2:-50}
MESSAGES=${3:-200}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
CG=$OUT/gateway.callgrind.out

start_redis
GW_WRAP="valgrind --tool=callgrind --callgrind-out-file=$CG" READY_TRIES=600 \
  start_gateway gw-callgrind
bench "callgrind-native-${CLIENTS}x$RATE" --url "$GW_URL" --redis-url "$REDIS_URL" \
  --clients "$CLIENTS" --rate "$RATE" --messages "$MESSAGES" --connect-timeout 60s \
  --server-pid "$GW_PID"
kill -TERM "$GW_PID"
for _ in $(seq 1 300); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
cleanup
callgrind_annotate --inclusive=yes "$CG" 2>/dev/null | head -60 > "$OUT/gateway.callgrind.txt"
DELIVERIES=$((CLIENTS * MESSAGES))
python3 - "$CG" "$DELIVERIES" <<'PY'
import subprocess, sys
out = subprocess.run(["callgrind_annotate", "--inclusive=yes", sys.argv[1]],
                     capture_output=True, text=True).stdout
deliveries = int(sys.argv[2])
for line in out.splitlines():
    for name in ("hub::shard::Shard::flush", "ws::conn::Conn::send"):
        if name in line and line.strip()[0].isdigit():
            ir = int(line.split()[0].replace(",", ""))
            print(f"{name}: {ir:,} instructions, {ir / deliveries:,.0f} per delivery ({deliveries:,} deliveries)")
            break
PY
echo "top inclusive costs: $OUT/gateway.callgrind.txt"
