#!/usr/bin/env bash
# Tests of the client libraries (clients/js, clients/python) against real gateway
# replicas of target/debug/switchboard on a real redis-server; scripts/test.sh runs
# it after the Rust tests. Installs what is missing: redis-server, Node and npm from
# apt; the JS dev dependencies (ws for Node < 22, typescript) with `npm ci` from the
# lock file; a Python venv in the cache with websockets, redis, pytest, mypy, ruff.
# Then: tsc on the declarations and the module, node --test; ruff, mypy --strict,
# pytest on the installed package. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/switchboard
mkdir -p "$CACHE"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The gateway binary the tests start (cargo test built it; a no-op then).
cargo build --quiet --bin switchboard
export SWITCHBOARD_BIN="$ROOT/target/debug/switchboard"

echo "== clients/js (node $(node --version))"
(
  cd clients/js
  npm ci --no-audit --no-fund --loglevel=error --cache "$CACHE/npm" >/dev/null
  ./node_modules/.bin/tsc -p tsconfig.json
  ./node_modules/.bin/tsc -p tsconfig.checkjs.json
  echo "ok  tsc: declarations and module"
  node --test test/*.test.mjs
)

echo "== clients/python"
VENV=$CACHE/pyclient
PY_TOOLS=(websockets==15.0.1 redis==6.4.0 pytest==8.4.2 mypy==1.18.2 ruff==0.14.0 hatchling==1.27.0)
stamp="$VENV/.tools-$(echo "${PY_TOOLS[*]}" | sha256sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  echo "installing ${PY_TOOLS[*]} into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
  touch "$stamp"
fi
# The package as a user installs it (a wheel, not the source tree).
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall ./clients/python
(
  cd clients/python
  "$VENV/bin/ruff" check --no-cache .
  "$VENV/bin/ruff" format --no-cache --check .
  "$VENV/bin/mypy" --cache-dir "$CACHE/mypy"
  # -p no:cacheprovider: no .pytest_cache in the tree. The tests import the
  # installed package (src/ is not on the path).
  "$VENV/bin/python" -m pytest -p no:cacheprovider -q tests
)
