# Measurement functions for benches/compare.sh, sourced by it (not run on
# their own): CPU time and peak RSS of a process tree, CPU snapshots of the
# two cores, the load generator command, and `measure`, one run of one
# contender in one round. They read the globals compare.sh sets up (TMP,
# C_PID, LOAD_TOOL, DURATION, ...).
# shellcheck shell=bash disable=SC2154

tree_ticks() { # pid -> utime+stime of the process tree, in clock ticks
    local p s f total=0
    for p in $(descendants "$1"); do
        s=$(<"/proc/$p/stat") || continue
        s=${s##*) }
        read -r -a f <<<"$s"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

tree_hwm_kb() { # pid -> sum of VmHWM over the process tree
    local p total=0 v
    for p in $(descendants "$1"); do
        v=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

child_cpu_s() { # -> user+sys seconds of this shell's reaped children (bash `times`)
    # `times` must run in this shell (a $(...) subshell has no children yet),
    # hence the file; call as: child_cpu_s; x=$(<"$TMP/times.s")
    times >"$TMP/times.txt"
    awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/)
        printf "%.3f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$TMP/times.txt" >"$TMP/times.s"
}

ksoftirqd_ticks() { # -> "ticks0 ticks1"
    local p s f ticks=()
    for p in "$KSOFTIRQD0" "$KSOFTIRQD1"; do
        if [[ -n $p ]] && s=$(<"/proc/$p/stat"); then
            s=${s##*) }
            read -r -a f <<<"$s"
            ticks+=($((f[11] + f[12])))
        else
            ticks+=(0)
        fi
    done
    echo "${ticks[*]}"
}

cpu_snap() { # -> "busy total steal" jiffies for cpu0 then cpu1 (from /proc/stat)
    awk '$1 == "cpu0" || $1 == "cpu1" {
        busy = $2 + $3 + $4 + $7 + $8; total = busy + $5 + $6 + $9
        printf "%d %d %d ", busy, total, $9 }' /proc/stat
}

load_cmd() { # contender seconds out [hist] -> sets LOAD_ARGV
    local c=$1 secs=$2 url="http://127.0.0.1:${C_PORT[$1]}${C_PATH[$1]}"
    if [[ $LOAD_TOOL == h2load ]]; then
        LOAD_ARGV=(h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$secs" -H 'authorization: Bearer client-token'
            --log-file="$3.h2log" "$url")
    else
        LOAD_ARGV=(wrk -t1 -c"$CONNS" -d"${secs}s" --latency -H 'Authorization: Bearer client-token')
        if ((BODY_BYTES > 0)) || [[ -n ${4:-} ]]; then
            LOAD_ARGV+=(-s "$HERE/wrk.lua")
        fi
        LOAD_ARGV+=("$url")
    fi
}

run_load() { # contender seconds out [hist]
    local secs=$2 out=$3 hist=${4:-}
    load_cmd "$@"
    # Background + wait so INT/TERM reach the trap at once.
    BODY_BYTES=$BODY_BYTES HIST_FILE=$hist timeout -k 5 $((secs + 30)) "${PIN_LOAD[@]}" "${LOAD_ARGV[@]}" >"$out" 2>&1 &
    LOAD_PID=$!
    if ! wait "$LOAD_PID"; then
        LOAD_PID=
        cat "$out" >&2
        die "${LOAD_ARGV[0]} failed against $1"
    fi
    LOAD_PID=
}

# QUIET_WAIT=N: before each run, wait up to N seconds for both CPUs to be
# (nearly) idle, for shared machines where builds come and go.
wait_quiet() {
    ((QUIET_WAIT > 0)) || return 0
    local deadline=$((SECONDS + QUIET_WAIT)) a b
    while ((SECONDS < deadline)); do
        a=$(cpu_snap)
        sleep 1
        b=$(cpu_snap)
        if awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
            exit !((y[1] - x[1]) <= 0.05 * (y[2] - x[2]) && (y[4] - x[4]) <= 0.05 * (y[5] - x[5])) }'; then
            return 0
        fi
    done
    echo "compare.sh: still busy after QUIET_WAIT=${QUIET_WAIT}s; measuring anyway" >&2
}

others_ticks() { # contender -> CPU ticks of the other (idle) contenders
    local o total=0
    for o in $CONTENDERS; do
        [[ $o == "$1" ]] || total=$((total + $(tree_ticks "${C_PID[$o]}")))
    done
    echo "$total"
}

measure() { # contender round
    local c=$1 r=$2 pid=${C_PID[$1]} out=$TMP/run-$1-$2.txt before after t0 t1 hwm seg_args=() rc=0
    local up_before up_after cpu_before cpu_after load_before load_after ksi_before ksi_after
    local others_before others_after
    kill -0 "$pid" 2>/dev/null || { show_log "$TMP/$c.log"; die "$c died before round $r"; }
    wait_quiet
    before=$(tree_ticks "$pid")
    others_before=$(others_ticks "$c")
    up_before=$(tree_ticks "$UPSTREAM_PID")
    ksi_before=$(ksoftirqd_ticks)
    cpu_before=$(cpu_snap)
    child_cpu_s
    load_before=$(<"$TMP/times.s")
    t0=$(date +%s.%N)
    if [[ $c == latchkey-oauth2 ]]; then
        # Consecutive SEGMENT-second wrk runs with full histograms.
        local segs=$TMP/segments-$c-$r.txt left=$DUR_S n=0 s ss se
        : >"$segs"
        while ((left > 0)); do
            s=$((left < SEGMENT ? left : SEGMENT))
            ss=$(date +%s.%N)
            run_load "$c" "$s" "$out.$n" "$out.$n.hist"
            se=$(date +%s.%N)
            echo "$ss $se $out.$n $out.$n.hist" >>"$segs"
            left=$((left - s))
            n=$((n + 1))
        done
        seg_args=(--segments "$segs" --token-log "$TOKEN_LOG" --refresh-margin 0.25)
    else
        run_load "$c" "$DUR_S" "$out"
    fi
    t1=$(date +%s.%N)
    child_cpu_s
    load_after=$(<"$TMP/times.s")
    cpu_after=$(cpu_snap)
    ksi_after=$(ksoftirqd_ticks)
    up_after=$(tree_ticks "$UPSTREAM_PID")
    others_after=$(others_ticks "$c")
    after=$(tree_ticks "$pid")
    hwm=$(tree_hwm_kb "$pid")
    "$PYTHON" "$HERE/report.py" record --runs "$RUNS" --contender "$c" --round "$r" --tool "$LOAD_TOOL" \
        --out "$out" --h2-log "$out.h2log" "${seg_args[@]}" \
        --ticks-before "$before" --ticks-after "$after" --clk-tck "$CLK_TCK" --hwm-kb "$hwm" \
        --upstream-ticks "$((up_after - up_before))" --cpu-before "$cpu_before" --cpu-after "$cpu_after" \
        --ksoftirqd-before "$ksi_before" --ksoftirqd-after "$ksi_after" \
        --others-ticks "$((others_after - others_before))" \
        --pinned "${#PIN_PROXY[@]}" --load-cpu-s "$(awk -v a="$load_before" -v b="$load_after" 'BEGIN{print b-a}')" \
        --wall-s "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" \
        --pids "$(descendants "$pid" | tr '\n' ' ')" || rc=$?
    if ((rc == 3)); then
        INVALID=1
        show_log "$TMP/$c.log"
    elif ((rc != 0)); then
        cat "$out"* >&2 || true
        die "could not parse the $c run"
    fi
}
