#!/usr/bin/env bash
# The Redis-store tests start their own redis-server (free port, no
# persistence). Make sure the binary exists: install it from Debian when we
# can, otherwise say exactly what is missing.
set -euo pipefail
command -v redis-server >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "redis-server not found; installing it from Debian (apt-get install redis-server)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package may start a system service on 6379; the tests never use it.
  command -v redis-server >/dev/null && exit 0
fi
echo "error: redis-server is required by the tests and is not installed." >&2
echo "       install it with: sudo apt-get install redis-server" >&2
exit 1
