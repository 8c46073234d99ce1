#!/usr/bin/env bash
# The test command of the README: installs what the suite needs when it is missing
# (redis-server, openssl for test keys and nginx as the tests' load balancer, from
# apt; Prometheus unpacked from Debian's package into the cache, for
# tests/cluster.rs; chromium from apt and Playwright for Python from PyPI in a
# virtual environment in the cache, for the browser tests in tests/dashboard.rs),
# then runs every test: the Rust suite, then (when no arguments restrict it to some
# Rust tests) the client libraries' tests, scripts/test-clients.sh (which installs
# Node and a Python venv of its own). Safe to run again. With CI set (.ci/run
# exports CI=1) a test that would skip for a missing tool (nginx, Prometheus) fails
# instead.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/bin/chromium ] || need+=(chromium)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
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

# Playwright for Python drives the system chromium (it downloads no browser);
# websockets is the library the ESCAI seed's own client uses (tests/seeds/).
PLAYWRIGHT_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/switchboard/playwright"
PLAYWRIGHT_VERSION="1.65.2"
WEBSOCKETS_VERSION="15.0.1"
if ! "$PLAYWRIGHT_VENV/bin/python" -c "import playwright, websockets" >/dev/null 2>&1; then
  echo "installing playwright $PLAYWRIGHT_VERSION and websockets $WEBSOCKETS_VERSION into $PLAYWRIGHT_VENV" >&2
  python3 -m venv "$PLAYWRIGHT_VENV"
  "$PLAYWRIGHT_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "playwright==$PLAYWRIGHT_VERSION" "websockets==$WEBSOCKETS_VERSION"
fi
export SWITCHBOARD_PLAYWRIGHT_PYTHON="$PLAYWRIGHT_VENV/bin/python"

cargo test --all-targets "$@"
if [ $# -eq 0 ]; then
  ./scripts/test-clients.sh
fi
