#!/usr/bin/env bash
# Two proxies measured AT THE SAME TIME on the same CPU, so the machine's
# drift cancels out: the way to resolve a few percent on a shared VM.
#
# benches/compare.sh runs its contenders one after the other; on a shared VM
# the speed of the machine moves by +-20% between runs, more than the effects
# worth measuring. Here both proxies of a pair are pinned to CPU 0, each gets
# its own wrk (CONNS connections, on CPU 1 with the upstream), started
# together, for DURATION. Both are saturated, so the scheduler splits CPU 0
# between them and every disturbance (steal time, frequency, cache) hits
# both alike. The upstream is the `upstream` example, answering 200 only
# when `Authorization: Bearer bench-token` arrives. Per round it reads each
# proxy's CPU time (utime+stime from /proc/PID/stat of the process and its
# children, which the kernel keeps exact in total; latchkey's audit writer
# thread is included) and the requests wrk completed, and reports:
#
#   CPU per request, A / B      what A's work costs against B's
#   requests/s, B / A           what each got from its share of CPU 0
#
# PAIR (default audit) picks A and B:
#   audit   A: latchkey, default config (audit records to stdout, which
#           goes to /dev/null; metrics on); B: the same binary with audit
#           and metrics off. A / B - 1 is what the audit trail costs.
#   nginx   A: latchkey, default config; B: nginx (proxy_set_header, one
#           worker, upstream keepalive; benches/compare/nginx-proxy.conf.tmpl)
#   ab      A: latchkey (LATCHKEY); B: BASELINE_BIN (required), same default
#           config: two builds compared
#   key-file  A: latchkey, default config but the static key read from a
#           file (watched: it can be rotated, so the route keeps its 401
#           retry); B: the default config (the key from an environment
#           variable: it never changes, and latchkey leaves the 401 retry
#           out). A / B - 1 is what the 401 retry costs a route.
#
# The rounds alternate which wrk starts first. It prints per round, then the
# median, range and mean with a 95% confidence interval over the rounds.
# The pairing is not quite symmetric: one binary on both sides (PAIR=ab,
# BASELINE_BIN = LATCHKEY) read CPU per request A / B 1.005 (rounds
# 0.998-1.011) on a 2-core AMD EPYC VM, so read A / B within ~1% of 1 as
# equal, and subtract ~0.5% from larger ratios.
# Any non-2xx response or socket error fails the run.
#
# Knobs: PAIR=audit, ROUNDS=12, DURATION=5s, CONNS=32, SKIP_BUILD=1,
# KEEP_TMP=1, LATCHKEY=path (another build of the binary), BASELINE_BIN.
# Needs wrk, curl, taskset, 2 CPUs, and nginx for PAIR=nginx (wrk and nginx
# are installed from Debian if missing and root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PAIR=${PAIR:-audit}
ROUNDS=${ROUNDS:-12}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

die() {
    echo "side_by_side.sh: $*" >&2
    exit 1
}

case $PAIR in
audit) NAME_A="latchkey (audit + metrics on)" NAME_B="latchkey (audit + metrics off)" ;;
nginx) NAME_A="latchkey" NAME_B="nginx" ;;
ab)
    [[ -x ${BASELINE_BIN:-} ]] || die "PAIR=ab needs BASELINE_BIN=<another latchkey binary>"
    NAME_A="latchkey" NAME_B="latchkey-baseline ($BASELINE_BIN)"
    ;;
key-file) NAME_A="latchkey (static key from a file: 401 retry on)" NAME_B="latchkey (static key from env: no 401 retry)" ;;
*) die "PAIR must be audit, nginx, ab or key-file" ;;
esac

need=(wrk)
[[ $PAIR == nginx ]] && need+=(nginx)
export PATH=$PATH:/usr/sbin:/sbin
for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null 2>&1 && continue
    [[ $(id -u) == 0 ]] || die "$tool is missing; install it (apt-get install $tool)"
    # benches/compare/install.sh also keeps a new nginx's service stopped.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tool" >/dev/null || die "apt-get install $tool failed"
done
for tool in curl taskset python3 pgrep; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required"
done
(($(nproc) >= 2)) && taskset -c 0,1 true 2>/dev/null || die "needs two usable CPUs (taskset -c 0,1)"

if [[ -z ${SKIP_BUILD:-} ]]; then
    # Two invocations, so the binary is compiled as shipped (see instructions.sh).
    cargo build --release --bin latchkey >&2
    cargo build --release --example upstream >&2
fi
LATCHKEY=${LATCHKEY:-$TARGET_DIR/release/latchkey}
UPSTREAM=$TARGET_DIR/release/examples/upstream
[[ -x $LATCHKEY && -x $UPSTREAM ]] || die "build the release binary and the upstream example first"

TMP=$(mktemp -d /tmp/latchkey-side-by-side.XXXXXX)
PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do
        pkill -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    [[ -n ${KEEP_TMP:-} ]] && echo "kept $TMP" >&2 || rm -rf -- "$TMP"
    exit "$rc"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for() { # url
    for ((i = 0; i < 300; i++)); do
        curl -sf -o /dev/null -H 'Authorization: Bearer client-token' "$1" && return 0
        sleep 0.1
    done
    die "$1 never answered"
}

UPSTREAM_PORT=$(free_port)
taskset -c 1 "$UPSTREAM" --listen "127.0.0.1:$UPSTREAM_PORT" --expect-value 'Bearer bench-token' \
    >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)

declare -A PORT PID
start_latchkey() { # side binary audit_and_metrics(true|false) [key_file]
    local port admin
    port=$(free_port)
    admin=$(free_port)
    # The config compare.sh benchmarks (one route, a static key); audit
    # and metrics at their defaults (on) or both off.
    python3 "$ROOT/benches/compare/latchkey_config.py" --listen "127.0.0.1:$port" \
        --admin "127.0.0.1:$admin" --upstream "http://127.0.0.1:$UPSTREAM_PORT" \
        $([[ $3 == false ]] && echo --no-audit) ${4:+--key-file "$4"} -o "$TMP/$1.yaml" >/dev/null
    BENCH_API_KEY=bench-token BENCH_PROXY_TOKEN=client-token RUST_LOG=warn \
        taskset -c 0 "$2" run --config "$TMP/$1.yaml" >/dev/null 2>"$TMP/$1.err" &
    PID[$1]=$!
    PIDS+=($!)
    PORT[$1]=$port
}

start_nginx() { # side
    local port
    port=$(free_port)
    sed -e "s|@TMP@|$TMP|g" -e "s|@PORT@|$port|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
        -e "s|@LISTEN_OPTS@||g" benches/compare/nginx-proxy.conf.tmpl >"$TMP/nginx.conf"
    taskset -c 0 nginx -e "$TMP/proxy-nginx.error.log" -p "$TMP" -c "$TMP/nginx.conf" \
        >"$TMP/$1.err" 2>&1 &
    PID[$1]=$!
    PIDS+=($!)
    PORT[$1]=$port
}

cpu_ticks() { # pid -> utime+stime of the process and its children, in clock ticks
    local p s f total=0
    for p in "$1" $(pgrep -P "$1"); do
        s=$(<"/proc/$p/stat") || continue
        s=${s##*) }
        read -r -a f <<<"$s"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

load() { # side duration out
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$2" -H 'Authorization: Bearer client-token' \
        "http://127.0.0.1:${PORT[$1]}/bench/x" >"$3"
}

if [[ $PAIR == key-file ]]; then
    printf 'bench-token\n' >"$TMP/bench-api-key"
    start_latchkey a "$LATCHKEY" true "$TMP/bench-api-key"
else
    start_latchkey a "$LATCHKEY" true
fi
case $PAIR in
audit) start_latchkey b "$LATCHKEY" false ;;
nginx) start_nginx b ;;
ab) start_latchkey b "$BASELINE_BIN" true ;;
key-file) start_latchkey b "$LATCHKEY" true ;;
esac
wait_for "http://127.0.0.1:${PORT[a]}/bench/x"
wait_for "http://127.0.0.1:${PORT[b]}/bench/x"
# Warm up both (connections, allocator, caches), together as measured.
load a 2s /dev/null &
w=$!
load b 2s /dev/null
wait "$w"

CLK_TCK=$(getconf CLK_TCK)
echo "==> PAIR=$PAIR: A = $NAME_A, B = $NAME_B" >&2
echo "==> $ROUNDS rounds of $DURATION, $CONNS connections each, both on CPU 0 at once" >&2
: >"$TMP/rounds.txt"
for ((r = 1; r <= ROUNDS; r++)); do
    a0=$(cpu_ticks "${PID[a]}")
    b0=$(cpu_ticks "${PID[b]}")
    if ((r % 2)); then first=a second=b; else first=b second=a; fi
    load "$first" "$DURATION" "$TMP/wrk.$first.$r" &
    w=$!
    load "$second" "$DURATION" "$TMP/wrk.$second.$r"
    wait "$w"
    a1=$(cpu_ticks "${PID[a]}")
    b1=$(cpu_ticks "${PID[b]}")
    for side in a b; do
        f=$TMP/wrk.$side.$r
        if grep -qE 'Non-2xx|Socket errors' "$f"; then
            cat "$f" >&2
            die "round $r, side $side: non-2xx responses or socket errors: the run is invalid"
        fi
    done
    req_a=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$TMP/wrk.a.$r")
    req_b=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$TMP/wrk.b.$r")
    echo "$r $req_a $((a1 - a0)) $req_b $((b1 - b0))" >>"$TMP/rounds.txt"
done

python3 - "$TMP/rounds.txt" "$CLK_TCK" <<'EOF'
import statistics as st, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1])]
tck = int(sys.argv[2])
cost, tput = [], []
print(f"{'round':>5} {'A req':>8} {'A CPU s':>8} {'A us/req':>9} {'B req':>8} {'B CPU s':>8} {'B us/req':>9}  {'CPU/req A/B':>11}  {'req/s B/A':>9}")
for r, ra, ca, rb, cb in rows:
    ua, ub = 1e6 * ca / tck / ra, 1e6 * cb / tck / rb
    cost.append(ua / ub)
    tput.append(rb / ra)
    print(f"{r:>5} {ra:>8} {ca / tck:>8.2f} {ua:>9.2f} {rb:>8} {cb / tck:>8.2f} {ub:>9.2f}  {ua / ub:>11.3f}  {rb / ra:>9.3f}")
def summary(name, xs):
    m = st.mean(xs)
    # Student's t, two-sided 95%, by degrees of freedom (rounds - 1).
    t = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
    df = len(xs) - 1
    half = ((t[df - 1] if df <= len(t) else 2.0) * st.stdev(xs) / len(xs) ** 0.5) if len(xs) > 1 else float("nan")
    print(f"{name}: median {st.median(xs):.3f}, range {min(xs):.3f}-{max(xs):.3f}, "
          f"mean {m:.3f} +- {half:.3f} (95%)")
summary("CPU per request, A / B", cost)
summary("requests/s, B / A (each from its share of CPU 0)", tput)
EOF
