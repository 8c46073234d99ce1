#!/usr/bin/env bash
# The test command of the README: installs what the suite needs when it is missing
# (redis-server, openssl for test keys and nginx as the tests' load balancer, from
# apt; Prometheus unpacked from Debian's package into the cache, for
# tests/cluster.rs), then runs every test. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # The nginx package starts a system nginx on port 80; the tests run their own.
  if [[ " ${need[*]} " == *" nginx "* ]] && command -v service >/dev/null 2>&1; then
    $SUDO service nginx stop >/dev/null 2>&1 || true
  fi
fi
# shellcheck source=scripts/lib/prometheus.sh
. scripts/lib/prometheus.sh
fetch_prometheus

cargo test --all-targets "$@"
