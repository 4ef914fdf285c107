#!/usr/bin/env bash
# Loopback load test: wrk -> upstream (baseline) vs wrk -> latchkey -> upstream.
#
# Builds the release proxy and the `upstream` example, starts both on free
# loopback ports, runs wrk against each, prints a summary table and exits
# non-zero if the proxied run saw any non-2xx/3xx responses or socket errors.
#
# Knobs (environment):
#   CONNS=32          wrk connections
#   DURATION=10s      wrk duration (N, Ns, Nm or Nh)
#   BUILD_TIMEOUT=1800  seconds allowed for `cargo build`
#   RUST_LOG=warn     log filter passed to latchkey
#
# When taskset exists and at least two CPUs are usable, latchkey is pinned to
# CPU 0 and upstream + wrk to CPU 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CONNS=${CONNS:-32}
DURATION=${DURATION:-10s}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

UPSTREAM_CRED='Bearer bench-token'
CLIENT_CRED='Bearer client-token'

die() {
    echo "load.sh: $*" >&2
    exit 1
}

# --- cleanup ---------------------------------------------------------------

PIDS=()
WRK_PID=
TMP=

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    if [[ -n $WRK_PID ]]; then
        PIDS+=("$WRK_PID")
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    # Give them up to 2 s to exit, then SIGKILL.
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $TMP ]]; then
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- argument checks -------------------------------------------------------

[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer (got '$CONNS')"
[[ $BUILD_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "BUILD_TIMEOUT must be a positive integer (got '$BUILD_TIMEOUT')"

# wrk accepts N, Ns, Nm, Nh; we need seconds to bound the run with `timeout`.
duration_secs() {
    local d=$1 n mult
    case $d in
        *s) n=${d%s} mult=1 ;;
        *m) n=${d%m} mult=60 ;;
        *h) n=${d%h} mult=3600 ;;
        *) n=$d mult=1 ;;
    esac
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "DURATION must look like 10s, 2m or 1h (got '$d')"
    echo $((n * mult))
}
WRK_LIMIT=$(($(duration_secs "$DURATION") + 30))

# --- tools -----------------------------------------------------------------

for tool in cargo curl python3 timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not installed"
done

if ! command -v wrk >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "wrk not found; installing it with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq wrk
        command -v wrk >/dev/null 2>&1 || die "apt-get did not install wrk"
    else
        die "wrk is not installed. Install it with 'sudo apt-get install wrk' (Debian/Ubuntu), 'brew install wrk' (macOS), or build it from https://github.com/wg/wrk, then re-run."
    fi
fi

PIN_PROXY=()
PIN_LOAD=()
if command -v taskset >/dev/null 2>&1 && (($(nproc) >= 2)) && taskset -c 0,1 true 2>/dev/null; then
    PIN_PROXY=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
    PINNING="latchkey on CPU 0, upstream + wrk on CPU 1"
else
    PINNING="none (taskset missing or fewer than 2 usable CPUs)"
fi

# --- build -----------------------------------------------------------------

# Two invocations: one would compile the proxy with the features the
# example's dev-dependencies turn on (tokio's test-util), not as shipped.
echo "==> cargo build --release --bin latchkey; cargo build --release --example upstream" >&2
timeout "$BUILD_TIMEOUT" cargo build --release --bin latchkey
timeout "$BUILD_TIMEOUT" cargo build --release --example upstream

LATCHKEY_BIN=$TARGET_DIR/release/latchkey
UPSTREAM_BIN=$TARGET_DIR/release/examples/upstream
[[ -x $LATCHKEY_BIN ]] || die "missing $LATCHKEY_BIN after build"
[[ -x $UPSTREAM_BIN ]] || die "missing $UPSTREAM_BIN after build"

# --- ports & temp files ----------------------------------------------------

free_port() {
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

UPSTREAM_PORT=$(free_port)
PROXY_PORT=$(free_port)
while [[ $PROXY_PORT == "$UPSTREAM_PORT" ]]; do PROXY_PORT=$(free_port); done
ADMIN_PORT=$(free_port)
while [[ $ADMIN_PORT == "$UPSTREAM_PORT" || $ADMIN_PORT == "$PROXY_PORT" ]]; do ADMIN_PORT=$(free_port); done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/latchkey-bench.XXXXXX")
CONFIG=$TMP/latchkey.yaml

cat >"$CONFIG" <<EOF
proxy:
  listen: 127.0.0.1:${PROXY_PORT}
admin:
  listen: 127.0.0.1:${ADMIN_PORT}
clients:
  - id: bench
    token: { env: BENCH_PROXY_TOKEN }
    routes: [bench]
credentials:
  - id: bench-key
    static: { env: BENCH_API_KEY }
routes:
  - id: bench
    match: { path_prefix: /bench/ }
    strip_prefix: true
    upstream: http://127.0.0.1:${UPSTREAM_PORT}
    credential: bench-key
    inject: { header: Authorization, format: "Bearer {token}" }
EOF

export BENCH_API_KEY=bench-token
export BENCH_PROXY_TOKEN=client-token

show_log() {
    echo "---- $1 (last 40 lines) ----" >&2
    tail -n 40 "$1" >&2 || true
}

# --- start upstream --------------------------------------------------------

"${PIN_LOAD[@]}" "$UPSTREAM_BIN" --listen "127.0.0.1:${UPSTREAM_PORT}" \
    --expect-value "$UPSTREAM_CRED" >"$TMP/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")

for ((i = 1; ; i++)); do
    grep -q '^listening on ' "$TMP/upstream.log" && break
    if ! kill -0 "$UPSTREAM_PID" 2>/dev/null; then
        show_log "$TMP/upstream.log"
        die "upstream exited during startup"
    fi
    ((i < 100)) || { show_log "$TMP/upstream.log"; die "upstream did not start within 10 s"; }
    sleep 0.1
done

# --- start latchkey --------------------------------------------------------

RUST_LOG=${RUST_LOG:-warn} "${PIN_PROXY[@]}" "$LATCHKEY_BIN" run --config "$CONFIG" \
    >"$TMP/latchkey.log" 2>&1 &
LATCHKEY_PID=$!
PIDS+=("$LATCHKEY_PID")

for ((i = 1; ; i++)); do
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:${ADMIN_PORT}/readyz" && break
    if ! kill -0 "$LATCHKEY_PID" 2>/dev/null; then
        show_log "$TMP/latchkey.log"
        die "latchkey exited during startup"
    fi
    ((i < 100)) || { show_log "$TMP/latchkey.log"; die "latchkey /readyz not ready after 100 tries"; }
    sleep 0.1
done

# One request through the proxy before loading it: a clear error beats a
# table full of non-2xx responses.
code=$(curl -s -o "$TMP/smoke.body" -w '%{http_code}' --max-time 5 \
    -H "Authorization: ${CLIENT_CRED}" "http://127.0.0.1:${PROXY_PORT}/bench/x" || true)
if [[ $code != 200 ]]; then
    echo "smoke request through latchkey returned HTTP ${code:-none}: $(head -c 300 "$TMP/smoke.body" 2>/dev/null || true)" >&2
    show_log "$TMP/latchkey.log"
    die "proxy smoke test failed"
fi

# --- load ------------------------------------------------------------------

run_wrk() { # name url auth-header
    local name=$1 url=$2 auth=$3
    echo "==> wrk $name: $url (connections=$CONNS duration=$DURATION)" >&2
    # Background + wait so INT/TERM traps run at once instead of after wrk.
    timeout -k 5 "$WRK_LIMIT" "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency \
        -H "Authorization: $auth" "$url" >"$TMP/wrk-$name.txt" 2>&1 &
    WRK_PID=$!
    if ! wait "$WRK_PID"; then
        WRK_PID=
        cat "$TMP/wrk-$name.txt" >&2
        die "wrk failed for $name"
    fi
    WRK_PID=
    cat "$TMP/wrk-$name.txt" >&2
}

# Prints: req/s p50 p99 non2xx socket_errors
parse_wrk() {
    awk '
        /^Requests\/sec:/               { rps = $2 }
        $1 == "50%"                     { p50 = $2 }
        $1 == "99%"                     { p99 = $2 }
        /Non-2xx or 3xx responses:/     { non2xx = $NF + 0 }
        /Socket errors:/                { sock = ($4 + 0) + ($6 + 0) + ($8 + 0) + ($10 + 0) }
        END {
            printf "%s %s %s %d %d\n", (rps == "" ? "-" : rps), (p50 == "" ? "-" : p50),
                (p99 == "" ? "-" : p99), non2xx, sock
        }
    ' "$1"
}

run_wrk baseline "http://127.0.0.1:${UPSTREAM_PORT}/x" "$UPSTREAM_CRED"
run_wrk latchkey "http://127.0.0.1:${PROXY_PORT}/bench/x" "$CLIENT_CRED"

read -r b_rps b_p50 b_p99 b_non2xx b_sock < <(parse_wrk "$TMP/wrk-baseline.txt")
read -r l_rps l_p50 l_p99 l_non2xx l_sock < <(parse_wrk "$TMP/wrk-latchkey.txt")

echo
echo "connections=$CONNS duration=$DURATION pinning: $PINNING"
printf '%-10s %12s %10s %10s  %s\n' target req/s p50 p99 errors
printf '%-10s %12s %10s %10s  %s\n' upstream "$b_rps" "$b_p50" "$b_p99" "non2xx=$b_non2xx socket=$b_sock"
printf '%-10s %12s %10s %10s  %s\n' latchkey "$l_rps" "$l_p50" "$l_p99" "non2xx=$l_non2xx socket=$l_sock"

if ((b_non2xx > 0 || b_sock > 0)); then
    echo "warning: baseline run had errors; the upstream or the machine is struggling" >&2
fi
if [[ $l_rps == - ]]; then
    die "could not parse wrk output for the proxied run"
fi
if ((l_non2xx > 0 || l_sock > 0)); then
    show_log "$TMP/latchkey.log"
    die "proxied run had $l_non2xx non-2xx/3xx responses and $l_sock socket errors"
fi
