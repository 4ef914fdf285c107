#!/usr/bin/env bash
# Side-by-side loopback comparison: latchkey vs nginx vs haproxy, each
# injecting the same static credential in front of ONE upstream.
#
# The upstream is an nginx that answers 200 only when `Authorization: Bearer
# bench-token` arrives (401 otherwise), so a proxy that fails to inject shows up
# as INVALID runs (non-2xx), never as speed. Every proxy also requires the
# caller's `Authorization: Bearer client-token` and replaces it.
#
# The proxy under test runs on CPU 0 (taskset -c 0); the upstream and the load
# generator share CPU 1. Contenders are started once, warmed up, then measured
# interleaved (A B C A B C ...) for ROUNDS rounds. Per run: requests/s, p50,
# p99, non-2xx and socket errors (any => INVALID, exit 1 at the end), the
# proxy's CPU time per request (utime+stime from /proc/PID/stat of the proxy
# and its child processes, before/after, divided by requests) and its peak RSS
# (VmHWM from /proc/PID/status: the peak over the process's whole life, i.e.
# all rounds so far, summed over an nginx master and its worker). It also
# checks that nothing else ran on the two CPUs during a run (from /proc/stat,
# the proxy's, upstream's and load generator's own CPU time): disturbed runs
# are flagged NOISY and, when quiet runs exist, left out of the medians.
# Prints the medians per contender and their ratios to the reference
# (nginx, or the plain latchkey config for latchkey-only scenarios), the same
# ratios paired within each round (median and range over the rounds: steadier
# when the machine's speed drifts between rounds by more than the effect, as
# for audit-off), and writes everything to target/bench/compare-<timestamp>.json.
#
# Scenarios (SCENARIO=..., default static):
#   static        static credential, latchkey's default config (audit records
#                 to stdout, which goes to /dev/null; metrics on)
#                 -> latchkey, nginx, haproxy
#   audit-off     latchkey with audit and metrics disabled vs latchkey default
#   routes-100    latchkey with 100 routes (host / prefix / host+prefix mix,
#   routes-10000  the benchmarked route a prefix route in the middle) vs the
#                 1-route latchkey
#   oauth2        latchkey with an OAuth2 client_credentials credential from a
#                 local token endpoint (benches/compare/token_server.py) whose
#                 tokens live TOKEN_LIFETIME (120 s). With the 60 s refresh
#                 buffer a refresh happens every ~60 s, so a run needs
#                 DURATION >= 70s to contain one (the default for this
#                 scenario: 1 round of 70s). The run is cut into SEGMENT-second
#                 wrk runs that each dump their latency distribution, which
#                 gives p99 and max inside vs outside the segments during
#                 which the token endpoint was called.
#                 TOKEN_DELAY_MS (100) is the token endpoint's response time.
#                 For a quick check: TOKEN_LIFETIME=20 (refresh at half life).
#   h2            the client speaks h2c (prior knowledge) via h2load -c CONNS
#                 -m H2_STREAMS (10) -> latchkey, nginx (listen ... http2),
#                 haproxy (proto h2); upstream legs stay HTTP/1.1
#   body-1k       POST with a 1 KiB body (wrk Lua script)
#   body-1m       POST with a 1 MiB body; defaults CONNS=4 DURATION=5s.
#                 latchkey buffers bodies up to routes[].retry.max_replay_body
#                 (1 MiB) for its 401 replay; nginx buffers in memory
#                 (client_body_buffer_size 2m); haproxy streams
#   conns-256     CONNS=256 (for the peak-RSS target)
#   ab            two builds of latchkey, same default config: the binary
#                 under test (LATCHKEY_BIN, or the fresh build) vs
#                 latchkey-baseline (BASELINE_BIN, required), the reference;
#                 interleaved like any other pair, so drift of the machine
#                 between rounds cancels out in the paired ratios
#
# One more contender can be named in CONTENDERS (static, conns-256, body-1k,
# body-1m; not in the defaults): hyper-floor, the `hyper_floor` example, the cheapest
# header-injecting proxy hyper allows (one upstream connection per caller
# connection, no features): what latchkey costs above it is its features,
# what it costs above nginx is hyper and tokio. And in SCENARIO=static,
# latchkey-key-file: latchkey with its static key read from a file (watched,
# so it can be rotated, and the route keeps its 401 retry) instead of an
# environment variable (a key that never changes, for which latchkey leaves
# the 401 retry out: a replay could only resend the refused key).
#
# Knobs (environment): SCENARIO, ROUNDS=3, DURATION=8s, CONNS=32, WARMUP=1
# (seconds per contender before round 1, not recorded), CONTENDERS (a subset of
# the scenario's contenders, space separated), H2_STREAMS=10, SEGMENT=1
# (oauth2 segment seconds), TOKEN_LIFETIME=120, TOKEN_DELAY_MS=100,
# SKIP_BUILD=1 (use the existing target/release binaries), BUILD_TIMEOUT=1800,
# LATCHKEY_BIN (another latchkey binary), BASELINE_BIN (for SCENARIO=ab),
# RUST_LOG=warn (latchkey's stderr log filter; audit records are unaffected),
# QUIET_WAIT=0 (before each run, wait up to this many seconds for both CPUs to
# be idle: for shared machines; runs disturbed anyway are flagged NOISY and
# left out of the medians when the contender has quiet runs), KEEP_TMP=1.
#
# Time: static with the defaults measures 9 x 8 s and finishes in about 80 s
# (plus a one-time apt-get install of nginx, haproxy, wrk and, for h2,
# nghttp2-client, and the cargo build if the tree changed). Installing as root
# never leaves the packaged services running: they are stopped and disabled.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/benches/compare
cd "$ROOT"
COMMAND_LINE=$(printf '%q ' "$0" "$@")
COMMAND_LINE=${COMMAND_LINE% }
for v in SCENARIO ROUNDS DURATION CONNS WARMUP CONTENDERS H2_STREAMS SEGMENT TOKEN_LIFETIME \
    TOKEN_DELAY_MS QUIET_WAIT SKIP_BUILD LATCHKEY_BIN BASELINE_BIN CARGO_TARGET_DIR RUST_LOG; do
    [[ -n ${!v:-} ]] && COMMAND_LINE="$v=$(printf '%q' "${!v}") $COMMAND_LINE"
done

SCENARIO=${SCENARIO:-static}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WARMUP=${WARMUP:-1}
H2_STREAMS=${H2_STREAMS:-10}
SEGMENT=${SEGMENT:-1}
TOKEN_LIFETIME=${TOKEN_LIFETIME:-120}
TOKEN_DELAY_MS=${TOKEN_DELAY_MS:-100}
QUIET_WAIT=${QUIET_WAIT:-0}
export RUST_LOG=${RUST_LOG:-warn}

die() {
    echo "compare.sh: $*" >&2
    exit 2
}
log() { echo "==> $*" >&2; }

# --- scenario ---------------------------------------------------------------

LOAD_TOOL=wrk
BODY_BYTES=0
REF=nginx
case $SCENARIO in
    static)
        DESC="static credential, default config (audit + metrics on)"
        ALL_CONTENDERS="latchkey nginx haproxy" ;;
    audit-off)
        DESC="latchkey with audit and metrics off vs the default config"
        ALL_CONTENDERS="latchkey latchkey-audit-off" REF=latchkey ;;
    routes-100 | routes-10000)
        NROUTES=${SCENARIO#routes-}
        DESC="latchkey with $NROUTES routes (benchmarked route in the middle) vs 1 route"
        ALL_CONTENDERS="latchkey latchkey-routes-$NROUTES" REF=latchkey ;;
    oauth2)
        DESC="OAuth2 client_credentials, ${TOKEN_LIFETIME}s tokens, refresh buffer 60s (at half life for tokens under 120s), token endpoint ${TOKEN_DELAY_MS}ms"
        ALL_CONTENDERS="latchkey-oauth2" REF=
        DURATION=${DURATION:-70s}
        ROUNDS=${ROUNDS:-1} ;;
    h2)
        DESC="client speaks h2c (h2load, $H2_STREAMS streams per connection), upstream HTTP/1.1"
        ALL_CONTENDERS="latchkey nginx haproxy" LOAD_TOOL=h2load ;;
    body-1k)
        DESC="POST with a 1 KiB body"
        ALL_CONTENDERS="latchkey nginx haproxy" BODY_BYTES=1024 ;;
    body-1m)
        DESC="POST with a 1 MiB body"
        ALL_CONTENDERS="latchkey nginx haproxy" BODY_BYTES=1048576
        CONNS=${CONNS:-4}
        DURATION=${DURATION:-5s} ;;
    conns-256)
        DESC="256 connections"
        ALL_CONTENDERS="latchkey nginx haproxy"
        CONNS=${CONNS:-256} ;;
    ab)
        [[ -n ${BASELINE_BIN:-} ]] || die "SCENARIO=ab needs BASELINE_BIN=<the latchkey binary to compare against>"
        DESC="two latchkey builds, default config: the binary under test vs BASELINE_BIN"
        ALL_CONTENDERS="latchkey-baseline latchkey" REF=latchkey-baseline ;;
    *) die "unknown SCENARIO '$SCENARIO' (static, audit-off, routes-100, routes-10000, oauth2, h2, body-1k, body-1m, conns-256, ab)" ;;
esac
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-32}
CONTENDERS=${CONTENDERS:-$ALL_CONTENDERS}
# hyper-floor may join the scenarios that compare proxies over HTTP/1.1.
EXTRA_CONTENDERS=
[[ $REF == nginx && $LOAD_TOOL == wrk ]] && EXTRA_CONTENDERS=hyper-floor
[[ $SCENARIO == static ]] && EXTRA_CONTENDERS+=" latchkey-key-file"
for c in $CONTENDERS; do
    [[ " $ALL_CONTENDERS $EXTRA_CONTENDERS " == *" $c "* ]] ||
        die "contender '$c' is not part of SCENARIO=$SCENARIO ($ALL_CONTENDERS${EXTRA_CONTENDERS:+, or $EXTRA_CONTENDERS})"
done
[[ " $CONTENDERS " == *" $REF "* ]] || REF=

[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer (got '$CONNS')"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be whole seconds (got '$WARMUP')"
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "QUIET_WAIT must be whole seconds (got '$QUIET_WAIT')"
[[ $SEGMENT =~ ^[1-9][0-9]*$ ]] || die "SEGMENT must be whole seconds (got '$SEGMENT')"
[[ $H2_STREAMS =~ ^[1-9][0-9]*$ ]] || die "H2_STREAMS must be a positive integer (got '$H2_STREAMS')"
case $DURATION in
    *s) DUR_S=${DURATION%s} ;;
    *m) DUR_S=$((${DURATION%m} * 60)) ;;
    *) DUR_S=$DURATION ;;
esac
[[ $DUR_S =~ ^[1-9][0-9]*$ ]] || die "DURATION must look like 8s or 2m (got '$DURATION')"
if [[ $SCENARIO == oauth2 ]] && ((DUR_S * ROUNDS < TOKEN_LIFETIME - 60 + 10)) && ((TOKEN_LIFETIME >= 120)); then
    echo "compare.sh: warning: DURATION=$DURATION x ROUNDS=$ROUNDS is too short to contain a refresh of a ${TOKEN_LIFETIME}s token (needs >= $((TOKEN_LIFETIME - 50))s; or set TOKEN_LIFETIME=20 for a quick check)" >&2
fi

# --- cleanup ----------------------------------------------------------------

PIDS=()  # everything we started (the load generator too, while it runs)
LOAD_PID=
TMP=
KEEP_TMP=${KEEP_TMP:-}

descendants() { # pid -> pid and all its descendants
    local p c
    for p in "$@"; do
        echo "$p"
        for c in $(pgrep -P "$p" 2>/dev/null || true); do
            descendants "$c"
        done
    done
}

cleanup() {
    local rc=$? all=() pid i
    trap - EXIT INT TERM
    [[ -n $LOAD_PID ]] && PIDS+=("$LOAD_PID")
    if ((${#PIDS[@]})); then
        # Collect children (nginx workers) before the parents go away.
        mapfile -t all < <(descendants "${PIDS[@]}")
        for pid in "${all[@]}"; do kill "$pid" 2>/dev/null || true; done
        for pid in "${all[@]}"; do
            for ((i = 0; i < 30; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        done
        for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    fi
    if [[ -n $TMP && -z $KEEP_TMP ]]; then
        rm -rf -- "$TMP"
    elif [[ -n $TMP ]]; then
        echo "compare.sh: kept $TMP" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools ------------------------------------------------------------------

PYTHON=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3 || true)}
[[ -n $PYTHON ]] || die "python3 is required"
for tool in curl timeout pgrep getconf; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not installed"
done
export PATH=$PATH:/usr/sbin:/sbin

# shellcheck source=compare/install.sh
source "$HERE/install.sh"
install_start=$SECONDS
install_packages
INSTALL_S=$((SECONDS - install_start))
BUILD_S=0
for tool in wrk nginx haproxy; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is still missing"
done
[[ $LOAD_TOOL != h2load ]] || command -v h2load >/dev/null 2>&1 || die "'h2load' is still missing"

PIN_PROXY=()
PIN_LOAD=()
if (($(nproc) >= 2)) && command -v taskset >/dev/null 2>&1 && taskset -c 0,1 true 2>/dev/null; then
    PIN_PROXY=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
    PINNING="proxy under test on CPU 0; upstream nginx + load generator on CPU 1"
else
    PINNING="none (taskset missing or fewer than 2 usable CPUs): numbers are not comparable to pinned runs"
fi
CLK_TCK=$(getconf CLK_TCK)

# --- build ------------------------------------------------------------------

LATCHKEY_BIN=${LATCHKEY_BIN:-$TARGET_DIR/release/latchkey}
if [[ " $CONTENDERS " == *" latchkey"* ]]; then
    if [[ -z ${SKIP_BUILD:-} ]]; then
        # The binary alone: building an example in the same invocation
        # would compile it with the dev-dependencies' features (tokio's
        # test-util), i.e. measure a binary nobody ships.
        log "cargo build --release --bin latchkey"
        build_start=$SECONDS
        timeout "$BUILD_TIMEOUT" cargo build --release --bin latchkey
        BUILD_S=$((SECONDS - build_start))
    fi
    [[ -x $LATCHKEY_BIN ]] || die "missing $LATCHKEY_BIN (build it or unset SKIP_BUILD)"
fi
FLOOR_BIN=$TARGET_DIR/release/examples/hyper_floor
if [[ " $CONTENDERS " == *" hyper-floor "* ]]; then
    if [[ -z ${SKIP_BUILD:-} ]]; then
        log "cargo build --release --example hyper_floor"
        timeout "$BUILD_TIMEOUT" cargo build --release --example hyper_floor
    fi
    [[ -x $FLOOR_BIN ]] || die "missing $FLOOR_BIN (build it or unset SKIP_BUILD)"
fi

# --- temp dir, ports --------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/latchkey-compare.XXXXXX")
chmod 755 "$TMP"
RUNS=$TMP/runs.jsonl
: >"$RUNS"

# Run a private copy: a concurrent `cargo build` may replace target/release/
# latchkey while we measure.
LATCHKEY_BINARY=none
BASELINE_BINARY=none
if [[ " $CONTENDERS " == *" latchkey"* ]]; then
    mkdir "$TMP/bin"
    cp -p "$LATCHKEY_BIN" "$TMP/bin/latchkey"
    LATCHKEY_BINARY="$LATCHKEY_BIN sha256:$(sha256sum "$TMP/bin/latchkey" | cut -c1-16) built $(date -u -r "$TMP/bin/latchkey" +%FT%TZ)"
    LATCHKEY_BIN=$TMP/bin/latchkey
fi
if [[ " $CONTENDERS " == *" latchkey-baseline "* ]]; then
    [[ -x ${BASELINE_BIN:-} ]] || die "BASELINE_BIN '${BASELINE_BIN:-}' is not an executable"
    cp -p "$BASELINE_BIN" "$TMP/bin/latchkey-baseline"
    BASELINE_BINARY="$BASELINE_BIN sha256:$(sha256sum "$TMP/bin/latchkey-baseline" | cut -c1-16) built $(date -u -r "$TMP/bin/latchkey-baseline" +%FT%TZ)"
fi

USED_PORTS=" "
free_port() {
    local p
    while :; do
        p=$("$PYTHON" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
        [[ $USED_PORTS == *" $p "* ]] || break
    done
    USED_PORTS+="$p "
    echo "$p"
}

render() { # template out key=value...
    local tmpl=$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do
        args+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${args[@]}" "$tmpl" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then
        die "unfilled placeholder in $out: $(grep -o '@[A-Z_]*@' "$out" | head -1)"
    fi
}

show_log() {
    echo "---- $1 (last 30 lines) ----" >&2
    tail -n 30 "$1" >&2 2>/dev/null || true
}

wait_http() { # name pid url [curl args...] -> waits until the URL answers at all
    local name=$1 pid=$2 url=$3 i
    shift 3
    for ((i = 0; i < 150; i++)); do
        curl -s -o /dev/null --max-time 1 "$@" "$url" && return 0
        kill -0 "$pid" 2>/dev/null || { show_log "$TMP/$name.log"; die "$name exited during startup"; }
        sleep 0.1
    done
    show_log "$TMP/$name.log"
    die "$name did not answer $url within 15 s"
}

# --- upstream ---------------------------------------------------------------

UPSTREAM_PORT=$(free_port)
render "$HERE/nginx-upstream.conf.tmpl" "$TMP/upstream-nginx.conf" TMP="$TMP" UPSTREAM_PORT="$UPSTREAM_PORT"
log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT (${PIN_LOAD[*]:-unpinned})"
"${PIN_LOAD[@]}" nginx -e "$TMP/upstream-nginx.error.log" -p "$TMP" -c "$TMP/upstream-nginx.conf" \
    >"$TMP/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
wait_http upstream "$UPSTREAM_PID" "http://127.0.0.1:$UPSTREAM_PORT/"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$UPSTREAM_PORT/bench/x")
[[ $code == 401 ]] || die "upstream answered $code without the credential (expected 401)"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Authorization: Bearer bench-token' "http://127.0.0.1:$UPSTREAM_PORT/bench/x")
[[ $code == 200 ]] || die "upstream answered $code with the credential (expected 200)"

# --- token endpoint (oauth2) --------------------------------------------------

TOKEN_URL=
TOKEN_LOG=
if [[ " $CONTENDERS " == *" latchkey-oauth2 "* ]]; then
    TOKEN_LOG=$TMP/token-requests.jsonl
    : >"$TOKEN_LOG"
    : >"$TMP/token.log"
    # Shares CPU 1 with the upstream; it is idle except for the refreshes.
    "${PIN_LOAD[@]}" "$PYTHON" "$HERE/token_server.py" --lifetime "$TOKEN_LIFETIME" \
        --delay-ms "$TOKEN_DELAY_MS" --log "$TOKEN_LOG" >"$TMP/token.log" 2>&1 &
    TOKEN_PID=$!
    PIDS+=("$TOKEN_PID")
    for ((i = 0; i < 100; i++)); do
        grep -q '^listening on ' "$TMP/token.log" && break
        kill -0 "$TOKEN_PID" 2>/dev/null || { show_log "$TMP/token.log"; die "token endpoint exited"; }
        sleep 0.1
    done
    TOKEN_URL="http://127.0.0.1:$(awk '/^listening on /{print $3; exit}' "$TMP/token.log")/token"
    log "token endpoint $TOKEN_URL (expires_in $TOKEN_LIFETIME s, ${TOKEN_DELAY_MS} ms per request)"
fi

# --- contenders -------------------------------------------------------------

declare -A C_PID C_PORT C_PATH C_DESC

CURL_PROTO=()
[[ $LOAD_TOOL == h2load ]] && CURL_PROTO=(--http2-prior-knowledge)

start_latchkey() { # name [latchkey_config.py args...]
    local name=$1 port admin path bin=$LATCHKEY_BIN
    shift
    [[ $name == latchkey-baseline ]] && bin=$TMP/bin/latchkey-baseline
    port=$(free_port)
    admin=$(free_port)
    # Each config in a directory of its own: latchkey watches the config's
    # directory for reloads, and would wake up on every write to the load
    # generator's output files if they sat next to it.
    mkdir "$TMP/$name"
    path=$("$PYTHON" "$HERE/latchkey_config.py" --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
        --upstream "http://127.0.0.1:$UPSTREAM_PORT" -o "$TMP/$name/config.yaml" "$@")
    # Audit records go to stdout, i.e. /dev/null; debug logs (RUST_LOG) to a file.
    BENCH_API_KEY=bench-token BENCH_PROXY_TOKEN=client-token BENCH_CLIENT_SECRET=bench-secret \
        "${PIN_PROXY[@]}" "$bin" run --config "$TMP/$name/config.yaml" >/dev/null 2>"$TMP/$name.log" &
    C_PID[$name]=$!
    PIDS+=("${C_PID[$name]}")
    C_PORT[$name]=$port
    C_PATH[$name]=$path
    C_DESC[$name]="latchkey run --config $name/config.yaml${*:+ (latchkey_config.py $*)}"
    local i
    for ((i = 0; i < 300; i++)); do
        curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$admin/readyz" && return 0
        kill -0 "${C_PID[$name]}" 2>/dev/null || { show_log "$TMP/$name.log"; die "$name exited during startup"; }
        sleep 0.1
    done
    show_log "$TMP/$name.log"
    die "$name: /readyz not ready within 30 s"
}

start_nginx() {
    local name=nginx port
    port=$(free_port)
    render "$HERE/nginx-proxy.conf.tmpl" "$TMP/proxy-nginx.conf" TMP="$TMP" PORT="$port" \
        UPSTREAM_PORT="$UPSTREAM_PORT" LISTEN_OPTS="$([[ $LOAD_TOOL == h2load ]] && echo http2)"
    "${PIN_PROXY[@]}" nginx -e "$TMP/proxy-nginx.error.log" -p "$TMP" -c "$TMP/proxy-nginx.conf" \
        >"$TMP/$name.log" 2>&1 &
    C_PID[$name]=$!
    PIDS+=("${C_PID[$name]}")
    C_PORT[$name]=$port
    C_PATH[$name]=/bench/x
    C_DESC[$name]="nginx $(nginx -v 2>&1 | sed 's|.*/||'), 1 worker, upstream keepalive 64"
    wait_http "$name" "${C_PID[$name]}" "http://127.0.0.1:$port/" "${CURL_PROTO[@]}"
}

start_haproxy() {
    local name=haproxy port nofile maxconn
    port=$(free_port)
    # haproxy wants ~2 descriptors per connection and refuses to start if the
    # limit is too low for maxconn.
    nofile=$(ulimit -n)
    [[ $nofile == unlimited ]] && nofile=65536
    maxconn=$(((nofile - 100) / 2))
    ((maxconn > 8000)) && maxconn=8000
    render "$HERE/haproxy.cfg.tmpl" "$TMP/proxy-haproxy.cfg" TMP="$TMP" PORT="$port" \
        UPSTREAM_PORT="$UPSTREAM_PORT" BIND_OPTS="$([[ $LOAD_TOOL == h2load ]] && echo 'proto h2')" \
        MAXCONN="$maxconn"
    "${PIN_PROXY[@]}" haproxy -db -f "$TMP/proxy-haproxy.cfg" >"$TMP/$name.log" 2>&1 &
    C_PID[$name]=$!
    PIDS+=("${C_PID[$name]}")
    C_PORT[$name]=$port
    C_PATH[$name]=/bench/x
    C_DESC[$name]="haproxy $(haproxy -v 2>&1 | awk 'NR==1{print $3}'), nbthread 1, http-reuse always"
    wait_http "$name" "${C_PID[$name]}" "http://127.0.0.1:$port/" "${CURL_PROTO[@]}"
}

start_floor() {
    local name=hyper-floor port
    [[ $LOAD_TOOL == wrk ]] || die "hyper-floor speaks HTTP/1.1 only"
    port=$(free_port)
    "${PIN_PROXY[@]}" "$FLOOR_BIN" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UPSTREAM_PORT" \
        --client-authorization "Bearer client-token" --authorization "Bearer bench-token" >"$TMP/$name.log" 2>&1 &
    C_PID[$name]=$!
    PIDS+=("${C_PID[$name]}")
    C_PORT[$name]=$port
    C_PATH[$name]=/bench/x
    C_DESC[$name]="hyper_floor example: hyper server and client, one upstream connection per caller, current-thread runtime"
    wait_http "$name" "${C_PID[$name]}" "http://127.0.0.1:$port/"
}

for c in $CONTENDERS; do
    log "starting $c (${PIN_PROXY[*]:-unpinned})"
    case $c in
        latchkey | latchkey-baseline) start_latchkey "$c" ;;
        latchkey-audit-off) start_latchkey "$c" --no-audit ;;
        latchkey-routes-*) start_latchkey "$c" --routes "${c#latchkey-routes-}" ;;
        latchkey-oauth2) start_latchkey "$c" --oauth2-url "$TOKEN_URL" ;;
        latchkey-key-file)
            printf 'bench-token\n' >"$TMP/bench-api-key"
            start_latchkey "$c" --key-file "$TMP/bench-api-key" ;;
        nginx) start_nginx ;;
        haproxy) start_haproxy ;;
        hyper-floor) start_floor ;;
        *) die "unknown contender '$c'" ;;
    esac
done

# Smoke: each contender answers 200 with the client token (so it injected the
# upstream credential) and 401 without it.
for c in $CONTENDERS; do
    url="http://127.0.0.1:${C_PORT[$c]}${C_PATH[$c]}"
    body_args=()
    ((BODY_BYTES > 0)) && body_args=(--data-binary "@$TMP/body.bin" -H 'Content-Type: application/octet-stream')
    ((BODY_BYTES > 0)) && [[ ! -e $TMP/body.bin ]] && head -c "$BODY_BYTES" /dev/zero | tr '\0' x >"$TMP/body.bin"
    code=$(curl -s -o "$TMP/smoke.body" -w '%{http_code}' --max-time 15 "${CURL_PROTO[@]}" "${body_args[@]}" \
        -H 'Authorization: Bearer client-token' "$url" || true)
    if [[ $code != 200 ]]; then
        show_log "$TMP/$c.log"
        die "$c: smoke request $url answered ${code:-nothing} (expected 200): $(head -c 300 "$TMP/smoke.body" 2>/dev/null)"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${CURL_PROTO[@]}" "$url" || true)
    [[ $code == 401 ]] || die "$c: a request without the client token answered ${code:-nothing} (expected 401)"
done

# --- measurement --------------------------------------------------------------

# The measurement functions (process CPU and RSS, load runs, one
# measured run per contender and round) live in compare/measure.sh.
# shellcheck source=compare/measure.sh
source "$HERE/measure.sh"

# Network softirq work the kernel defers to ksoftirqd/N is not charged to the
# process that caused it (inline softirq work is): measure it separately.
KSOFTIRQD0=$(pgrep -x ksoftirqd/0 || true)
KSOFTIRQD1=$(pgrep -x ksoftirqd/1 || true)

INVALID=0

# Is anything else using the CPUs? (A compile next door makes every number
# meaningless; we warn, record it, and flag noisy runs.)
idle_a=$(cpu_snap)
sleep 1
idle_b=$(cpu_snap)
BACKGROUND=$(awk -v a="$idle_a" -v b="$idle_b" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    printf "cpu0 %.0f%% busy, cpu1 %.0f%% busy", 100 * (y[1] - x[1]) / (y[2] - x[2] + 1e-9),
        100 * (y[4] - x[4]) / (y[5] - x[5] + 1e-9) }')
log "background load before the runs: $BACKGROUND"
if awk -v a="$idle_a" -v b="$idle_b" 'BEGIN { split(a, x, " "); split(b, y, " ")
    exit !((y[1] - x[1]) > 0.15 * (y[2] - x[2]) || (y[4] - x[4]) > 0.15 * (y[5] - x[5])) }'; then
    echo "compare.sh: WARNING: the machine is busy with something else ($BACKGROUND); the numbers will be noisy" >&2
fi

n_contenders=$(wc -w <<<"$CONTENDERS")
log "SCENARIO=$SCENARIO: $DESC"
log "$ROUNDS round(s) x $n_contenders contender(s) x $DURATION, $CONNS connections; expect ~$(((ROUNDS * DUR_S + WARMUP) * n_contenders + 5)) s"
if ((WARMUP > 0)); then
    for c in $CONTENDERS; do
        if [[ $c == latchkey-oauth2 ]]; then continue; fi # keep the token timeline clean
        run_load "$c" "$WARMUP" "$TMP/warmup-$c.txt"
    done
fi
for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CONTENDERS; do
        measure "$c" "$r"
    done
done

# --- report -----------------------------------------------------------------

MACHINE_CPU=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
MACHINE_KERNEL=$(uname -srm)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$TARGET_DIR/bench"
JSON_OUT=$TARGET_DIR/bench/compare-$STAMP.json
# A sample load command line per contender, for the record.
declare -A C_LOAD
for c in $CONTENDERS; do
    if [[ $c == latchkey-oauth2 ]]; then
        load_cmd "$c" "$SEGMENT" "run.txt" hist
        C_LOAD[$c]="${PIN_LOAD[*]} ${LOAD_ARGV[*]} (HIST_FILE set), repeated for $DURATION"
    else
        load_cmd "$c" "$DUR_S" "run.txt" ""
        C_LOAD[$c]="${PIN_LOAD[*]} ${LOAD_ARGV[*]}"
    fi
done
COMPARE_META_CONTENDERS=$(
    for c in $CONTENDERS; do
        printf '%s\t%s\t%s\n' "$c" "${C_DESC[$c]}" "${C_LOAD[$c]}"
    done
)
LOAD_DESC="$LOAD_TOOL -t1"
[[ $LOAD_TOOL == h2load ]] && LOAD_DESC="h2load -t1 -m $H2_STREAMS"
GIT_REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
export COMPARE_META_CONTENDERS SCENARIO DESC STAMP COMMAND_LINE ROUNDS DURATION CONNS WARMUP LOAD_DESC \
    BODY_BYTES PINNING CLK_TCK MACHINE_CPU MACHINE_KERNEL GIT_REV BACKGROUND LATCHKEY_BINARY BASELINE_BINARY
"$PYTHON" - "$TMP/meta.json" <<'EOF'
import json, os, sys
e = os.environ
contenders = {}
for line in e["COMPARE_META_CONTENDERS"].splitlines():
    name, desc, load = line.split("\t")
    contenders[name] = {"proxy": desc, "load": load}
json.dump({
    "scenario": e["SCENARIO"],
    "description": e["DESC"],
    "timestamp": e["STAMP"],
    "command": e["COMMAND_LINE"],
    "rounds": int(e["ROUNDS"]), "duration": e["DURATION"], "conns": int(e["CONNS"]),
    "warmup_s": int(e["WARMUP"]), "load_tool": e["LOAD_DESC"], "body_bytes": int(e["BODY_BYTES"]),
    "pinning": e["PINNING"], "clk_tck": int(e["CLK_TCK"]),
    "machine": {"nproc": os.cpu_count(), "cpu": e["MACHINE_CPU"], "kernel": e["MACHINE_KERNEL"]},
    "latchkey_git": e["GIT_REV"],
    "latchkey_binary": e["LATCHKEY_BINARY"],
    "baseline_binary": e["BASELINE_BINARY"],
    "background_load_before": e["BACKGROUND"],
    "contenders": contenders,
}, open(sys.argv[1], "w"), indent=2)
EOF
rc=0
"$PYTHON" "$HERE/report.py" summarize --runs "$RUNS" --meta "$TMP/meta.json" --contenders "$CONTENDERS" \
    --ref "$REF" --json-out "$JSON_OUT" || rc=$?

echo
echo "machine: nproc=$(nproc), CPU: $MACHINE_CPU, kernel: $MACHINE_KERNEL"
echo "pinning: $PINNING"
for c in $CONTENDERS; do
    echo "  $c: ${C_DESC[$c]}"
    echo "      load: ${C_LOAD[$c]}"
done
echo "latchkey binary: $LATCHKEY_BINARY (tree $GIT_REV)"
[[ $BASELINE_BINARY == none ]] || echo "baseline binary: $BASELINE_BINARY"
echo "command: $COMMAND_LINE"
echo "raw results: $JSON_OUT"
echo "elapsed: ${SECONDS}s (of which apt-get install ${INSTALL_S}s, cargo build ${BUILD_S}s)"
if ((rc != 0 || INVALID)); then
    echo "compare.sh: some runs were INVALID (non-2xx or socket errors): see above" >&2
    exit 1
fi
