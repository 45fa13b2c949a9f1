#!/usr/bin/env bash
# Puts the Redis clients the RESP compatibility suites drive on this machine when they
# are missing: `redis-cli` (and `redis-benchmark`) from Debian's redis-tools, and
# redis-py (PyPI's `redis`, 5 or later) in a virtualenv under target/redis-py-venv.
# Idempotent and quiet: a second run installs nothing. Prints the venv's python.
# With --tools-only, only redis-tools (for tests that drive redis-cli or redis-benchmark
# alone), and prints nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

VENV=${REDIS_PY_VENV:-$PWD/target/redis-py-venv}
PYTHON=${PYTHON:-python3}

need_command redis-cli redis-tools
need_command redis-benchmark redis-tools
if [ "${1:-}" = --tools-only ]; then exit 0; fi

has_redis_py() {
  [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c 'import redis, sys
sys.exit(0 if int(redis.__version__.split(".")[0]) >= 5 else 1)' 2>/dev/null
}

if ! has_redis_py; then
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 has no venv (ensurepip) without python3-venv.
    echo "installing python3-venv (for python3 -m venv)..." >&2
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >/dev/null
  fi
  echo "installing redis-py into $VENV..." >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'redis>=5' >&2
  has_redis_py || { echo "redis-py did not install into $VENV" >&2; exit 1; }
fi
echo "$VENV/bin/python"
