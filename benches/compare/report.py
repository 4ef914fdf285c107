#!/usr/bin/env python3
"""Parsing and reporting for benches/compare.sh.

  report.py record ...     parse one load run (wrk or h2load output, the
                           proxy's CPU ticks and VmHWM) and append it to the
                           runs file as one JSON line; prints a one-line
                           summary and exits 3 if the run is INVALID
  report.py summarize ...  medians per contender, ratios to the reference
                           contender (of the medians, and paired within
                           each round: median and range), the table on
                           stdout, all of it as JSON
"""

import argparse
import json
import math
import re
import statistics
import sys

# A run where other processes used more than this share of CPU 0 (the proxy's
# core) is NOISY: reported, and left out of the medians when the contender has
# quiet runs.
NOISE = 0.05


# CPU 1 runs the loopback softirq work of two busy processes, part of it
# charged to no process when CPU 1 is not saturated: allow a bit more.
NOISE_CPU1 = 0.10


def noisy(r):
    return (r.get("cpu0_other") or 0) > NOISE or (r.get("cpu1_other") or 0) > NOISE_CPU1


# --------------------------------------------------------------------------
# parsing


def wrk_time_ms(s):
    """wrk's '412.00us', '1.20ms', '1.01s', '2.00m' -> milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", s.strip())
    if not m:
        raise ValueError(f"unparseable wrk time {s!r}")
    v = float(m.group(1))
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}[m.group(2)]


def parse_wrk(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    r = {"requests": None, "duration_s": None, "rps": None, "p50_ms": None,
         "p99_ms": None, "max_ms": None, "non2xx": 0, "socket_errors": 0,
         "socket_error_detail": {}}
    for line in text.splitlines():
        t = line.split()
        if not t:
            continue
        if t[0] == "50%":
            r["p50_ms"] = wrk_time_ms(t[1])
        elif t[0] == "99%":
            r["p99_ms"] = wrk_time_ms(t[1])
        elif t[0] == "Latency" and len(t) >= 4 and r["max_ms"] is None:
            r["max_ms"] = wrk_time_ms(t[3])
        elif t[0] == "Requests/sec:":
            r["rps"] = float(t[1])
        elif len(t) >= 4 and t[1] == "requests" and t[2] == "in":
            r["requests"] = int(t[0])
            r["duration_s"] = wrk_time_ms(t[3].rstrip(",")) / 1e3
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            r["non2xx"] = int(t[-1])
        elif line.strip().startswith("Socket errors:"):
            # Socket errors: connect 0, read 0, write 0, timeout 0
            d = dict(re.findall(r"(\w+) (\d+)", line.split(":", 1)[1]))
            d = {k: int(v) for k, v in d.items()}
            r["socket_error_detail"] = d
            r["socket_errors"] = sum(d.values())
    return r


def parse_h2load(path, log_path):
    text = open(path, encoding="utf-8", errors="replace").read()
    r = {"requests": None, "duration_s": None, "rps": None, "p50_ms": None,
         "p99_ms": None, "max_ms": None, "non2xx": 0, "socket_errors": 0,
         "socket_error_detail": {}}
    m = re.search(r"finished in ([0-9.]+)(ms|s), ([0-9.]+) req/s", text)
    if m:
        r["duration_s"] = float(m.group(1)) / (1e3 if m.group(2) == "ms" else 1)
        r["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        total, started, done, ok, failed, errored, timeout = map(int, m.groups())
        r["requests"] = done
        r["socket_error_detail"] = {"failed": failed, "errored": errored, "timeout": timeout}
        r["socket_errors"] = errored + timeout
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        r["non2xx"] = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    # Per-request log: start (us since epoch) TAB status TAB duration (us).
    hist = {}
    bad_status = 0
    for line in open(log_path, encoding="utf-8", errors="replace"):
        f = line.split("\t")
        if len(f) < 3:
            continue
        status, us = int(f[1]), int(f[2])
        if not 200 <= status < 300:
            bad_status += 1
        hist[us] = hist.get(us, 0) + 1
    if hist:
        r["p50_ms"] = hist_percentile(hist, 50) / 1e3
        r["p99_ms"] = hist_percentile(hist, 99) / 1e3
        r["max_ms"] = max(hist) / 1e3
    # Responses that never completed with a status are failures too.
    r["non2xx"] = max(r["non2xx"], bad_status)
    return r


def read_hist(path):
    meta, hist = {}, {}
    for line in open(path):
        if line.startswith("#"):
            t = line[1:].split()
            meta = {t[i]: int(t[i + 1]) for i in range(0, len(t) - 1, 2)}
            continue
        us, n = line.split()
        hist[int(float(us))] = hist.get(int(float(us)), 0) + float(n)
    return meta, hist


def hist_percentile(hist, p):
    """Nearest-rank percentile of {microseconds: count}; counts may be
    fractional (quantile-sampled wrk histograms)."""
    total = sum(hist.values())
    if total <= 0:
        return None
    target = max(min(total, 1.0), math.ceil(p / 100.0 * total - 1e-6))
    acc = 0.0
    for us in sorted(hist):
        acc += hist[us]
        if acc >= target - 1e-6:
            return us
    return max(hist)


def merge(hists):
    out = {}
    for h in hists:
        for k, v in h.items():
            out[k] = out.get(k, 0) + v
    return out


def hist_summary(hist):
    n = round(sum(hist.values()))
    if not n:
        return {"requests": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    return {
        "requests": n,
        "p50_ms": hist_percentile(hist, 50) / 1e3,
        "p99_ms": hist_percentile(hist, 99) / 1e3,
        "p999_ms": hist_percentile(hist, 99.9) / 1e3,
        "max_ms": max(hist) / 1e3,
    }


def parse_segments(seg_file, token_log, margin_s):
    """SCENARIO=oauth2: a run made of consecutive wrk segments, each with a
    latency histogram. Returns the whole-run numbers plus p99 inside vs
    outside the token endpoint's request windows."""
    windows = []
    if token_log:
        try:
            for line in open(token_log):
                line = line.strip()
                if line:
                    w = json.loads(line)
                    windows.append((w["start"], w["end"]))
        except FileNotFoundError:
            pass
    segs, all_h, in_h, out_h = [], [], [], []
    non2xx = sockerr = 0
    requests = 0
    dur_s = 0.0
    for line in open(seg_file):
        start, end, out_file, hist_file = line.split()
        start, end = float(start), float(end)
        w = parse_wrk(out_file)
        meta, h = read_hist(hist_file)
        refresh = [x for x in windows if x[0] < end and x[1] + margin_s > start]
        s = hist_summary(h)
        s.update({"start": start, "end": end, "refresh": bool(refresh),
                  "non2xx": w["non2xx"], "socket_errors": w["socket_errors"],
                  "duration_s": w["duration_s"]})
        segs.append(s)
        all_h.append(h)
        (in_h if refresh else out_h).append(h)
        non2xx += w["non2xx"]
        sockerr += w["socket_errors"]
        requests += w["requests"] or 0
        dur_s += w["duration_s"] or 0.0
    whole = hist_summary(merge(all_h))
    r = {
        "requests": requests,
        "duration_s": dur_s,
        "rps": requests / dur_s if dur_s else None,
        "p50_ms": whole["p50_ms"],
        "p99_ms": whole["p99_ms"],
        "max_ms": whole["max_ms"],
        "non2xx": non2xx,
        "socket_errors": sockerr,
        "segments": segs,
        "refresh_windows": [{"start": a, "end": b, "seconds": b - a} for a, b in windows],
        "inside_refresh": hist_summary(merge(in_h)),
        "outside_refresh": hist_summary(merge(out_h)),
    }
    return r


# --------------------------------------------------------------------------
# record


def fmt(v, spec, dash="-"):
    return dash if v is None else format(v, spec)


def cmd_record(a):
    if a.segments:
        r = parse_segments(a.segments, a.token_log, a.refresh_margin)
    elif a.tool == "h2load":
        r = parse_h2load(a.out, a.h2_log)
    else:
        r = parse_wrk(a.out)
    ticks = a.ticks_after - a.ticks_before
    r.update({
        "contender": a.contender,
        "round": a.round,
        "tool": a.tool,
        "wall_s": a.wall_s,
        "cpu_ticks": ticks,
        "clk_tck": a.clk_tck,
        "cpu_s": ticks / a.clk_tck,
        "cpu_util": (ticks / a.clk_tck) / a.wall_s if a.wall_s else None,
        "cpu_us_per_req": (ticks / a.clk_tck) * 1e6 / r["requests"] if r.get("requests") else None,
        "peak_rss_kb": a.hwm_kb,
        "proxy_pids": a.pids,
        "upstream_us_per_req": (a.upstream_ticks / a.clk_tck) * 1e6 / r["requests"] if r.get("requests") else None,
        # The contenders not under load should use ~nothing.
        "idle_contenders_util": (a.others_ticks / a.clk_tck) / a.wall_s if a.wall_s else None,
    })
    # Network softirq work deferred to ksoftirqd/0 (the proxy's core: the
    # loopback receive path runs on the sending CPU, so this is the proxy's
    # traffic) is not in the proxy's own utime+stime.
    kb, ka = a.ksoftirqd_before.split(), a.ksoftirqd_after.split()
    ksi = [0.0, 0.0]
    if len(kb) == 2 and len(ka) == 2:
        ksi = [(int(y) - int(x)) / a.clk_tck for x, y in zip(kb, ka)]
        r["ksoftirqd0_util"] = ksi[0] / a.wall_s if a.wall_s else None
        r["ksoftirqd1_util"] = ksi[1] / a.wall_s if a.wall_s else None
        r["ksoftirqd0_us_per_req"] = ksi[0] * 1e6 / r["requests"] if r.get("requests") else None
    # Whole-CPU busy fractions from /proc/stat: with the proxy pinned to CPU 0,
    # cpu0 busy minus the proxy's share and ksoftirqd/0 is somebody else's
    # load (noise); likewise CPU 1 minus upstream, load generator, ksoftirqd/1.
    b, e = a.cpu_before.split(), a.cpu_after.split()
    if len(b) == 6 and len(e) == 6 and a.wall_s:
        d = [int(y) - int(x) for x, y in zip(b, e)]
        r["cpu0_busy"] = d[0] / d[1] if d[1] else None
        r["cpu1_busy"] = d[3] / d[4] if d[4] else None
        r["steal"] = (d[2] + d[5]) / (d[1] + d[4]) if d[1] + d[4] else None
        if a.pinned and r["cpu0_busy"] is not None and r["cpu_util"] is not None:
            r["cpu0_other"] = max(0.0, r["cpu0_busy"] - r["cpu_util"] - ksi[0] / a.wall_s)
        if a.pinned and r["cpu1_busy"] is not None and a.load_cpu_s is not None:
            r["load_gen_util"] = a.load_cpu_s / a.wall_s
            r["upstream_util"] = (a.upstream_ticks / a.clk_tck) / a.wall_s
            r["cpu1_other"] = max(0.0, r["cpu1_busy"] - r["load_gen_util"] - r["upstream_util"]
                                  - ksi[1] / a.wall_s)
    reasons = []
    if r.get("requests") in (None, 0) or r.get("rps") is None or r.get("p99_ms") is None:
        reasons.append("no parseable result")
    if r["non2xx"]:
        reasons.append(f"{r['non2xx']} non-2xx")
    if r["socket_errors"]:
        reasons.append(f"{r['socket_errors']} socket errors {r.get('socket_error_detail') or ''}".strip())
    r["valid"] = not reasons
    r["invalid_reasons"] = reasons
    with open(a.runs, "a") as f:
        f.write(json.dumps(r) + "\n")
    line = (f"  round {a.round} {a.contender:<22} {fmt(r['rps'], ',.0f'):>9} req/s  "
            f"p50 {fmt(r['p50_ms'], '.3f')} ms  p99 {fmt(r['p99_ms'], '.3f')} ms  "
            f"cpu {fmt(r['cpu_us_per_req'], '.1f')} us/req ({fmt(r['cpu_util'], '.0%')} of a core)  "
            f"hwm {a.hwm_kb / 1024:.1f} MiB  cpu0/cpu1 busy {fmt(r.get('cpu0_busy'), '.0%')}/"
            f"{fmt(r.get('cpu1_busy'), '.0%')}")
    if noisy(r):
        line += (f"  NOISY: other processes used {r.get('cpu0_other') or 0:.0%} of CPU 0, "
                 f"{r.get('cpu1_other') or 0:.0%} of CPU 1")
        if (r.get("idle_contenders_util") or 0) > 0.02:
            line += f" (the idle contenders: {r['idle_contenders_util']:.0%})"
    if r.get("segments") is not None:
        i, o = r["inside_refresh"], r["outside_refresh"]
        line += (f"\n      refresh windows: {len(r['refresh_windows'])} token requests; "
                 f"segments inside: {sum(s['refresh'] for s in r['segments'])}/{len(r['segments'])}; "
                 f"p99 inside {fmt(i['p99_ms'], '.3f')} ms (max {fmt(i['max_ms'], '.3f')}), "
                 f"outside {fmt(o['p99_ms'], '.3f')} ms (max {fmt(o['max_ms'], '.3f')})")
    if reasons:
        line += "   INVALID: " + "; ".join(reasons)
    print(line, flush=True)
    return 0 if r["valid"] else 3


# --------------------------------------------------------------------------
# summarize


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def paired(mine, theirs):
    """Ratios to the reference within each round both ran in (interleaved,
    so a machine that speeds up or slows down between rounds moves both):
    median and range over the rounds. Steadier than the ratio of medians
    when rounds differ by more than the effect measured."""
    rounds = sorted(set(mine) & set(theirs))
    rps = [ratio(mine[k]["rps"], theirs[k]["rps"]) for k in rounds]
    cpu = [ratio(mine[k]["cpu_us_per_req"], theirs[k]["cpu_us_per_req"]) for k in rounds]
    rps = [v for v in rps if v is not None]
    cpu = [v for v in cpu if v is not None]
    return {
        "paired_rounds": len(rounds),
        "paired_rps_ratio": med(rps),
        "paired_rps_ratio_range": [min(rps), max(rps)] if rps else None,
        "paired_cpu_per_req_ratio": med(cpu),
        "paired_cpu_per_req_ratio_range": [min(cpu), max(cpu)] if cpu else None,
    }


def cmd_summarize(a):
    runs = [json.loads(l) for l in open(a.runs) if l.strip()]
    meta = json.load(open(a.meta))
    contenders = a.contenders.split()
    summary = {}
    # The runs each contender's medians are over, by round.
    used = {}
    for c in contenders:
        rs = [r for r in runs if r["contender"] == c]
        valid = [r for r in rs if r["valid"]]
        quiet = [r for r in valid if not noisy(r)]
        if quiet:
            use, over = quiet, "valid quiet runs"
        elif valid:
            use, over = valid, "valid runs (all noisy)"
        else:
            use, over = rs, "all runs (none valid)"
        s = {
            "runs": len(rs),
            "valid_runs": len(valid),
            "quiet_valid_runs": len(quiet),
            "medians_over": over,
            "rps": med([r["rps"] for r in use]),
            "p50_ms": med([r["p50_ms"] for r in use]),
            "p99_ms": med([r["p99_ms"] for r in use]),
            "cpu_us_per_req": med([r["cpu_us_per_req"] for r in use]),
            "ksoftirqd0_us_per_req": med([r.get("ksoftirqd0_us_per_req") for r in use]),
            "cpu_util": med([r["cpu_util"] for r in use]),
            "peak_rss_kb": max([r["peak_rss_kb"] for r in rs], default=None),
            "upstream_us_per_req": med([r.get("upstream_us_per_req") for r in use]),
            "cpu1_busy": med([r.get("cpu1_busy") for r in use]),
            "cpu0_other_max": max([r.get("cpu0_other") or 0 for r in rs], default=None),
            "cpu1_other_max": max([r.get("cpu1_other") or 0 for r in rs], default=None),
        }
        if any(r.get("segments") is not None for r in rs):
            s["inside_refresh_p99_ms"] = med([r["inside_refresh"]["p99_ms"] for r in use])
            s["outside_refresh_p99_ms"] = med([r["outside_refresh"]["p99_ms"] for r in use])
            s["inside_refresh_max_ms"] = max([r["inside_refresh"]["max_ms"] or 0 for r in use], default=None)
            s["outside_refresh_max_ms"] = max([r["outside_refresh"]["max_ms"] or 0 for r in use], default=None)
            s["refresh_segments"] = sum(sum(seg["refresh"] for seg in r["segments"]) for r in rs)
            s["token_requests"] = max([len(r["refresh_windows"]) for r in rs], default=0)
        summary[c] = s
        used[c] = {r["round"]: r for r in use}
    ref = a.ref if a.ref in summary else None
    for c, s in summary.items():
        if ref:
            b = summary[ref]
            s["vs"] = ref
            s["rps_ratio"] = ratio(s["rps"], b["rps"])
            s["p99_ratio"] = ratio(s["p99_ms"], b["p99_ms"])
            s["cpu_per_req_ratio"] = ratio(s["cpu_us_per_req"], b["cpu_us_per_req"])
            s["rss_ratio"] = ratio(s["peak_rss_kb"], b["peak_rss_kb"])
            if c != ref:
                s.update(paired(used[c], used[ref]))

    invalid = [r for r in runs if not r["valid"]]
    out = dict(meta)
    out["summary"] = summary
    out["reference"] = ref
    out["invalid_runs"] = len(invalid)
    out["runs"] = runs
    with open(a.json_out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")

    # ---- table
    print()
    print(f"SCENARIO={meta['scenario']}: {meta['description']}")
    print(f"medians over {meta['rounds']} interleaved round(s) of {meta['duration']} at "
          f"{meta['conns']} connections ({meta['load_tool']}); ratios are contender / {ref or '-'}")
    hdr = ["contender", "req/s", "p50 ms", "p99 ms", "CPU us/req", "CPU util", "peak RSS",
           "req/s x", "p99 x", "CPU/req x", "CPU1 busy", "other 0/1", "valid"]
    rows = []
    for c in contenders:
        s = summary[c]
        rows.append([
            c, fmt(s["rps"], ",.0f"), fmt(s["p50_ms"], ".3f"), fmt(s["p99_ms"], ".3f"),
            fmt(s["cpu_us_per_req"], ".1f"), fmt(s["cpu_util"], ".0%"),
            "-" if s["peak_rss_kb"] is None else f"{s['peak_rss_kb'] / 1024:.1f} MiB",
            fmt(s.get("rps_ratio"), ".2f"), fmt(s.get("p99_ratio"), ".2f"),
            fmt(s.get("cpu_per_req_ratio"), ".2f"),
            fmt(s["cpu1_busy"], ".0%"), f"{fmt(s['cpu0_other_max'], '.0%')}/{fmt(s['cpu1_other_max'], '.0%')}",
            f"{s['valid_runs']}/{s['runs']}" + ("" if s["quiet_valid_runs"] == s["valid_runs"]
                                               else f" ({s['quiet_valid_runs']} quiet)"),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    for i, row in enumerate([hdr] + rows):
        print("  ".join(str(x).ljust(w) if j == 0 else str(x).rjust(w)
                        for j, (x, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for c in contenders:
        s = summary[c]
        if s.get("paired_rounds", 0) > 1:
            lo_r, hi_r = s["paired_rps_ratio_range"] or (None, None)
            lo_c, hi_c = s["paired_cpu_per_req_ratio_range"] or (None, None)
            print(f"{c} / {ref}, paired within each of {s['paired_rounds']} rounds: req/s x "
                  f"{fmt(s['paired_rps_ratio'], '.3f')} (rounds {fmt(lo_r, '.2f')}-{fmt(hi_r, '.2f')}), "
                  f"CPU/req x {fmt(s['paired_cpu_per_req_ratio'], '.3f')} "
                  f"(rounds {fmt(lo_c, '.2f')}-{fmt(hi_c, '.2f')})")
    for c in contenders:
        s = summary[c]
        if "inside_refresh_p99_ms" in s:
            print(f"{c}: p99 inside refresh windows {fmt(s['inside_refresh_p99_ms'], '.3f')} ms "
                  f"(max {fmt(s['inside_refresh_max_ms'], '.3f')}), outside "
                  f"{fmt(s['outside_refresh_p99_ms'], '.3f')} ms (max {fmt(s['outside_refresh_max_ms'], '.3f')}); "
                  f"token endpoint requests: "
                  f"{s['token_requests']} (incl. the first fetch), segments with a refresh: {s['refresh_segments']}")
    print("CPU us/req: the proxy's utime+stime (with its child processes) / requests, including "
          "the kernel network work run in its context (work deferred to ksoftirqd/0 is in the JSON "
          "as ksoftirqd0_us_per_req); CPU util: of one core. peak RSS: VmHWM summed over the proxy's processes, the peak over the "
          "process's whole life (all rounds), not per run. CPU1 busy: the load side's core (upstream + load generator); near 100% means "
          "req/s is capped by the load side, not the proxy. other 0/1: worst share of CPU 0 / CPU 1 "
          "used by anything but the proxy (CPU 0) or the upstream and load generator (CPU 1) during "
          "a run, kernel softirq work included: noise, ~0-5% on a quiet machine; runs above 5% / 10% "
          "are NOISY and left out of the medians when the contender has quiet runs; valid: runs "
          "without errors (quiet ones).")
    if meta.get("background_load_before"):
        print(f"background load just before the runs: {meta['background_load_before']}")
    if invalid:
        print()
        for r in invalid:
            print(f"INVALID: round {r['round']} {r['contender']}: {'; '.join(r['invalid_reasons'])}")
    return 1 if invalid else 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("record")
    p.add_argument("--runs", required=True)
    p.add_argument("--contender", required=True)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--tool", choices=["wrk", "h2load"], required=True)
    p.add_argument("--out")
    p.add_argument("--h2-log")
    p.add_argument("--segments")
    p.add_argument("--token-log")
    p.add_argument("--refresh-margin", type=float, default=1.0)
    p.add_argument("--ticks-before", type=int, required=True)
    p.add_argument("--ticks-after", type=int, required=True)
    p.add_argument("--clk-tck", type=int, required=True)
    p.add_argument("--hwm-kb", type=int, required=True)
    p.add_argument("--wall-s", type=float, required=True)
    p.add_argument("--pids", default="")
    p.add_argument("--upstream-ticks", type=int, default=0)
    p.add_argument("--cpu-before", default="")
    p.add_argument("--cpu-after", default="")
    p.add_argument("--pinned", type=int, default=0)
    p.add_argument("--load-cpu-s", type=float, default=None)
    p.add_argument("--others-ticks", type=int, default=0)
    p.add_argument("--ksoftirqd-before", default="")
    p.add_argument("--ksoftirqd-after", default="")
    p.set_defaults(fn=cmd_record)
    p = sub.add_parser("summarize")
    p.add_argument("--runs", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--contenders", required=True)
    p.add_argument("--ref", default="")
    p.add_argument("--json-out", required=True)
    p.set_defaults(fn=cmd_summarize)
    a = ap.parse_args()
    sys.exit(a.fn(a))


if __name__ == "__main__":
    main()
