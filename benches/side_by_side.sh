#!/usr/bin/env bash
# What audit records + metrics cost, measured with both proxies running AT
# THE SAME TIME on the same CPU, so the machine's drift cancels out.
#
# benches/compare.sh SCENARIO=audit-off runs the two configs one after the
# other; on a shared VM the speed of the machine moves by +-20% between runs,
# more than the effect. Here two latchkeys from the same release binary, one
# with the default config (audit records to stdout, which goes to /dev/null;
# metrics on) and one with audit and metrics off, are both pinned to CPU 0.
# Each gets its own wrk (CONNS connections, CPU 1), started together, for
# DURATION; both proxies are saturated, so the scheduler splits CPU 0
# between them and every disturbance (steal time, frequency, cache) hits
# both alike. Per round it reads each proxy's CPU time (utime+stime from
# /proc/PID/stat, which the kernel keeps exact in total; the audit writer
# thread's time is included) and the requests wrk completed, and reports:
#
#   CPU per request, on / off     the cost of the work itself
#   requests/s per CPU-second, off / on   the same, as throughput
#   requests/s, off / on          what each got from its share of CPU 0
#
# The rounds alternate which wrk starts first. It prints per round, then the
# median, range and mean with a 95% confidence interval over the rounds.
# Any non-2xx response or socket error fails the run.
#
# Knobs: ROUNDS=12, DURATION=5s, CONNS=32, SKIP_BUILD=1, KEEP_TMP=1,
# LATCHKEY=path (another build of the binary). Needs wrk, curl, taskset and
# 2 CPUs (wrk is installed from Debian if missing and root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-12}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

die() {
    echo "audit_cost.sh: $*" >&2
    exit 1
}

command -v wrk >/dev/null 2>&1 || {
    [[ $(id -u) == 0 ]] || die "wrk is missing; install it (apt-get install wrk)"
    apt-get install -y -q wrk >/dev/null || die "apt-get install wrk failed"
}
for tool in curl taskset python3; do
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

TMP=$(mktemp -d /tmp/latchkey-audit-cost.XXXXXX)
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
start() { # name audit_and_metrics(true|false)
    local port admin
    port=$(free_port)
    admin=$(free_port)
    cat >"$TMP/$1.yaml" <<EOF
proxy:
  listen: 127.0.0.1:$port
admin:
  listen: 127.0.0.1:$admin
audit:
  enabled: $2
metrics:
  enabled: $2
clients:
  - id: bench
    token: { env: BENCH_PROXY_TOKEN }
    routes: ["*"]
credentials:
  - id: bench-key
    static: { env: BENCH_API_KEY }
routes:
  - id: bench
    match: { path_prefix: /bench/ }
    upstream: http://127.0.0.1:$UPSTREAM_PORT
    credential: bench-key
    inject: { header: Authorization, format: "Bearer {token}" }
EOF
    BENCH_API_KEY=bench-token BENCH_PROXY_TOKEN=client-token RUST_LOG=warn \
        taskset -c 0 "$LATCHKEY" run --config "$TMP/$1.yaml" >/dev/null 2>"$TMP/$1.err" &
    PID[$1]=$!
    PIDS+=($!)
    PORT[$1]=$port
}

cpu_ticks() { # pid -> utime+stime of the whole process, in clock ticks
    local s f
    s=$(<"/proc/$1/stat")
    s=${s##*) }
    read -r -a f <<<"$s"
    echo $((f[11] + f[12]))
}

load() { # name duration out
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$2" -H 'Authorization: Bearer client-token' \
        "http://127.0.0.1:${PORT[$1]}/bench/x" >"$3"
}

start on true
start off false
wait_for "http://127.0.0.1:${PORT[on]}/bench/x"
wait_for "http://127.0.0.1:${PORT[off]}/bench/x"
# Warm up both (connections, allocator, caches), together as measured.
load on 2s /dev/null &
w=$!
load off 2s /dev/null
wait "$w"

CLK_TCK=$(getconf CLK_TCK)
echo "==> $ROUNDS rounds of $DURATION, $CONNS connections each, both proxies on CPU 0 at once" >&2
: >"$TMP/rounds.txt"
for ((r = 1; r <= ROUNDS; r++)); do
    on0=$(cpu_ticks "${PID[on]}")
    off0=$(cpu_ticks "${PID[off]}")
    if ((r % 2)); then
        load on "$DURATION" "$TMP/wrk.on.$r" &
        w=$!
        load off "$DURATION" "$TMP/wrk.off.$r"
    else
        load off "$DURATION" "$TMP/wrk.off.$r" &
        w=$!
        load on "$DURATION" "$TMP/wrk.on.$r"
    fi
    wait "$w"
    on1=$(cpu_ticks "${PID[on]}")
    off1=$(cpu_ticks "${PID[off]}")
    for side in on off; do
        f=$TMP/wrk.$side.$r
        if grep -qE 'Non-2xx|Socket errors' "$f"; then
            cat "$f" >&2
            die "round $r, $side: non-2xx responses or socket errors: the run is invalid"
        fi
    done
    req_on=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$TMP/wrk.on.$r")
    req_off=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$TMP/wrk.off.$r")
    echo "$r $req_on $((on1 - on0)) $req_off $((off1 - off0))" >>"$TMP/rounds.txt"
done

python3 - "$TMP/rounds.txt" "$CLK_TCK" "$DURATION" <<'EOF'
import statistics as st, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1])]
tck = int(sys.argv[2])
cost, tput = [], []
print(f"{'round':>5} {'on req':>8} {'on CPU s':>9} {'off req':>8} {'off CPU s':>9}  {'CPU/req on/off':>14}  {'req/s off/on':>12}")
for r, ron, con, roff, coff in rows:
    c = (con / ron) / (coff / roff)
    cost.append(c)
    tput.append(roff / ron)
    print(f"{r:>5} {ron:>8} {con / tck:>9.2f} {roff:>8} {coff / tck:>9.2f}  {c:>14.3f}  {roff / ron:>12.3f}")
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
summary("CPU per request, audit + metrics on / off", cost)
summary("requests/s, off / on (each from its share of CPU 0)", tput)
EOF
