#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's
# callgrind: repeatable on a noisy or shared machine, where wall-clock
# comparisons (benches/compare.sh) move by +-10% between runs.
#
# Builds the release proxy and, separately (so the proxy is compiled as
# shipped, without the dev-dependencies' features), the `upstream` example,
# then for each config (default: audit + metrics on, then both off) runs
# latchkey under callgrind, warms it up, zeroes the counters, drives DURATION
# of wrk load (CONNS connections), dumps the counters and divides by the
# requests wrk completed. Kernel time (the loopback TCP path) is not
# counted: this measures the code latchkey runs, not the machine. Prints
# one line per config and the on/off ratio; exits non-zero on any non-2xx
# response.
#
# Knobs: CONNS=8, DURATION=10s, SKIP_BUILD=1, KEEP_TMP=1, BUILD_TIMEOUT=1800,
# LATCHKEY=path (another build of the binary, e.g. target/profiling/latchkey),
# FLOOR=1 (also counts the `hyper_floor` example under the same load: what
# hyper and tokio alone cost per request, the floor latchkey's features sit
# on), WORKERS=N (latchkey's `--workers`; by default one per CPU the
# machine gives it: tokio's multi-thread runtime on a 2-core machine, where
# compare.sh, pinning the proxy to one CPU, runs the single event loop),
# KEY_FILE=1 (latchkey's static key read from a watched file, which can be
# rotated, so the route keeps its 401 retry; by default it comes from an
# environment variable, a key that never changes, and the route has none).
# Needs valgrind, wrk, curl (installed from Debian if missing and root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CONNS=${CONNS:-8}
DURATION=${DURATION:-10s}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

die() {
    echo "instructions.sh: $*" >&2
    exit 1
}

missing=()
for tool in valgrind wrk curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; install them (apt-get install valgrind wrk curl)"
    apt-get install -y -q "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

if [[ -z ${SKIP_BUILD:-} ]]; then
    # Two invocations: one would compile the binary with the features the
    # example's dev-dependencies turn on (tokio's test-util), not as shipped.
    timeout "$BUILD_TIMEOUT" cargo build --release --bin latchkey >&2
    timeout "$BUILD_TIMEOUT" cargo build --release --example upstream >&2
    if [[ -n ${FLOOR:-} ]]; then
        timeout "$BUILD_TIMEOUT" cargo build --release --example hyper_floor >&2
    fi
fi
LATCHKEY=${LATCHKEY:-$TARGET_DIR/release/latchkey}
UPSTREAM=$TARGET_DIR/release/examples/upstream
[[ -x $LATCHKEY && -x $UPSTREAM ]] || die "build the release binary and the upstream example first"
FLOOR_BIN=$TARGET_DIR/release/examples/hyper_floor
[[ -z ${FLOOR:-} || -x $FLOOR_BIN ]] || die "FLOOR=1: build the hyper_floor example first (cargo build --release --example hyper_floor)"

TMP=$(mktemp -d /tmp/latchkey-instr.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP_TMP:-} ]] && echo "kept $TMP" >&2 || rm -rf -- "$TMP"
    exit "$rc"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

UPSTREAM_PORT=$(free_port)
"$UPSTREAM" --listen "127.0.0.1:$UPSTREAM_PORT" --expect-value 'Bearer bench-token' >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    grep -q '^listening on ' "$TMP/upstream.log" && break
    sleep 0.1
done

config() { # name audit_and_metrics(true|false)
    local port admin
    port=$(free_port)
    admin=$(free_port)
    # The config compare.sh benchmarks (one route, a static key); audit
    # and metrics at their defaults (on) or both off.
    python3 "$ROOT/benches/compare/latchkey_config.py" --listen "127.0.0.1:$port" \
        --admin "127.0.0.1:$admin" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
        $([[ $2 == false ]] && echo --no-audit) ${KEY_FILE:+--key-file "$TMP/bench-api-key"} \
        -o "$TMP/$1.yaml" >/dev/null
    echo "$port"
}
[[ -z ${KEY_FILE:-} ]] || printf 'bench-token\n' >"$TMP/bench-api-key"

measure() { # name audit_and_metrics(true|false|floor)
    local name=$1 port pid url file ir requests non2xx
    if [[ $2 == floor ]]; then
        port=$(free_port)
        valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$name.%p" \
            "$FLOOR_BIN" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UPSTREAM_PORT" \
            --client-authorization 'Bearer client-token' --authorization 'Bearer bench-token' \
            >/dev/null 2>"$TMP/$name.err" &
    else
        port=$(config "$name" "$2")
        BENCH_API_KEY=bench-token BENCH_PROXY_TOKEN=client-token RUST_LOG=warn \
            valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$name.%p" \
            "$LATCHKEY" run ${WORKERS:+--workers "$WORKERS"} --config "$TMP/$name.yaml" >/dev/null 2>"$TMP/$name.err" &
    fi
    url=http://127.0.0.1:$port/bench/x
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 300; i++)); do
        curl -sf -o /dev/null -H 'Authorization: Bearer client-token' "$url" && break
        sleep 0.1
    done
    wrk -t1 -c"$CONNS" -d3s -H 'Authorization: Bearer client-token' "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    wrk -t1 -c"$CONNS" -d"$DURATION" -H 'Authorization: Bearer client-token' "$url" >"$TMP/wrk.$name.txt"
    callgrind_control -d "$pid" >/dev/null 2>&1
    # hyper_floor has no signal handler of its own, and a background job of
    # a script starts with SIGINT ignored: it is stopped with SIGTERM.
    kill "-$([[ $2 == floor ]] && echo TERM || echo INT)" "$pid"
    wait "$pid" 2>/dev/null || true
    non2xx=$(grep -oP 'Non-2xx or 3xx responses: \K[0-9]+' "$TMP/wrk.$name.txt" || echo 0)
    ((non2xx == 0)) || die "$name: $non2xx non-2xx responses"
    requests=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$TMP/wrk.$name.txt")
    file=$(ls -t "$TMP"/cg."$name".*.1 | head -1)
    ir=$(grep -m1 -oP '^(summary|totals): \K[0-9]+' "$file")
    echo $((ir / requests))
    printf '%-22s %8d requests  %8d instructions/request\n' "$name" "$requests" $((ir / requests)) >&2
}

echo "==> callgrind, $CONNS connections, $DURATION per config" >&2
on=$(measure audit-and-metrics-on true)
off=$(measure audit-and-metrics-off false)
python3 -c "print(f'audit + metrics cost: {($on - $off)} instructions/request, {100 * ($on - $off) / $off:.1f}% of the proxy without them')"
if [[ -n ${FLOOR:-} ]]; then
    floor=$(measure hyper-floor floor)
    python3 -c "print(f'hyper-floor: {$floor} instructions/request; latchkey is {$on / $floor:.2f} x that with audit + metrics, {$off / $floor:.2f} x without')"
fi
