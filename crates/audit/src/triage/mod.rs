//! `latchkey triage`: reads an audit log and explains the failures in it.
//!
//! The key question it answers: were the failures **upstream denials** (the
//! upstream refused a credential latchkey sent) or **local credential
//! failures** (latchkey could not obtain one)? The first finding states it.
//!
//! Input is JSON lines: request and refresh records as written by the audit
//! sink. Any other line (blank, not JSON, truncated, JSON of another shape,
//! missing `ts`, ...) is skipped and counted, never fatal. Records need not be
//! in order (logs of several replicas may be concatenated).
//!
//! - [`triage`] folds a log into a [`Report`], [`render_text`] prints it for
//!   humans, and `serde_json` of the [`Report`] is the `--json` output.
//! - [`run`] is the whole command given plain [`TriageArgs`].
//!
//! # Selection
//! `--since D` keeps records with `ts >= now - D` (now, not the log's last
//! record; not before 1970). `--route R` keeps the request records of route
//! `R`, and the refresh records (which name no route) of the credentials
//! those requests used. `--credential C` keeps request records whose `credential.id` is `C`
//! and refresh records of `C`. Left-out records count in
//! `totals.filtered_out`.
//!
//! # Classification
//! Status counts use the status the caller received (`audit.status_code`).
//! A failed request is one with a `reason` (or, for records without one, a
//! 5xx, an upstream 401/403, or a missing credential); requests the caller
//! cancelled are not failures. Failures are grouped as upstream denials
//! (`upstream_denied`), local credential failures (`credential_unavailable`,
//! `refresh_failed`), upstream errors (`upstream_unreachable`,
//! `upstream_timeout`, `upstream_error`), rejected caller requests
//! (`client_unauthenticated`, `client_forbidden`, `no_route`,
//! `body_too_large`, `bad_request`, `request_timeout`, `method_not_allowed`)
//! and internal errors (anything else).
//! An upstream denial of an injected token with more than 30 s left
//! (`token_ttl_s`), or without expiry, was a *fresh* token: the upstream
//! refuses the credential itself. A 401 for a token with at most 30 s left (or
//! already expired) was a token sent too late: refresh is not keeping up. Refresh statistics come
//! from refresh records only.
//!
//! # JSON output
//! Stable; maps are sorted by key; times are RFC 3339 UTC with milliseconds;
//! rates are fractions in `0..=1` rounded to 4 decimals.
//! ```text
//! {
//!   "window": { "not_before": time|null, "route": str|null, "credential": str|null },
//!   "totals": {
//!     "lines": n, "records": n, "request_records": n, "refresh_records": n,
//!     "skipped_lines": n, "filtered_out": n, "first_ts": time|null, "last_ts": time|null
//!   },
//!   "status_codes": { "<status>": n, ... },
//!   "reasons": { "<reason>": { "count": n, "first_seen": time, "last_seen": time }, ... },
//!   "routes": { "<route>|(unrouted)": TRAFFIC, ... },
//!   "credentials": { "<credential id>": { "traffic": TRAFFIC, "refresh": {
//!       "attempts": n, "successes": n, "failures": n, "success_rate": rate|null,
//!       "last_success": time|null,
//!       "last_error": { "message": str|null, "error_code": str|null, "at": time }|null,
//!       "failing_since": time|null, "consecutive_failures": n } }, ... },
//!   "retry401": { "<outcome>": n, ... },
//!   "findings": [ { "severity": "info"|"warning"|"critical", "kind": KIND,
//!                   "subject": str, "message": str }, ... ]
//! }
//! TRAFFIC = { "requests": n, "status_401": n, "status_403": n, "status_5xx": n,
//!             "rate_401": rate, "rate_403": rate, "rate_5xx": rate }
//! KIND = "summary" | "upstream_denied_fresh_token" | "expired_token_sent"
//!      | "refresh_failing" | "refresh_recovered" | "credential_unavailable"
//!      | "upstream_unreachable" | "upstream_timeout" | "upstream_error"
//!      | "retry_recovered" | "retry_still_unauthorized" | "retry_refresh_failed"
//!      | "retry_not_replayable" | "client_unauthenticated" | "client_forbidden"
//!      | "no_route" | "internal_error" | "skipped_lines"
//! ```
//! The first finding is always the `summary`; the others follow, most severe
//! first.

mod aggregate;
mod findings;
mod parse;
mod render;
mod report;
#[cfg(test)]
mod tests;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

pub use render::render_text;
pub use report::{
    CredentialStats, Finding, FindingKind, ReasonStats, RefreshError, RefreshStats, Report,
    Severity, Totals, TrafficStats, Window,
};

use aggregate::{Acc, fmt_ts};
use parse::{Record, parse_line};

/// What to analyse.
#[derive(Debug, Clone)]
pub struct TriageOptions {
    /// Only records at or after `now - since`.
    pub since: Option<Duration>,
    /// Only request records of this route.
    pub route: Option<String>,
    /// Only request and refresh records of this credential.
    pub credential: Option<String>,
    /// The current time (injectable for tests).
    pub now: SystemTime,
}

/// The `latchkey triage` command line, as plain values.
#[derive(Debug, Clone, Default)]
pub struct TriageArgs {
    /// The audit log; `None` or `-` reads stdin.
    pub input: Option<PathBuf>,
    /// `--since`: a duration such as `6h` or `30m`.
    pub since: Option<String>,
    /// `--route`.
    pub route: Option<String>,
    /// `--credential`.
    pub credential: Option<String>,
    /// `--json`: print the report as JSON instead of text.
    pub json: bool,
}

/// Parses a `--since` duration (`6h`, `30m`, `1h 30m`, `2days`).
pub fn parse_since(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// The longest line read whole: a record is under 2 KiB, so anything
/// longer is not one (and a file with no newlines is not held in memory).
pub const MAX_LINE: usize = 1 << 20;

/// Reads the next line into `line` (without its newline), or the first
/// [`MAX_LINE`] bytes of it, skipping the rest: `Some(false)` then.
/// `None` at the end of the input.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut any = false;
    let mut whole = true;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(any.then_some(whole));
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (buf.get(..at).unwrap_or_default(), at + 1),
            None => (buf, buf.len()),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        if chunk.len() > room {
            whole = false;
        }
        line.extend_from_slice(chunk.get(..chunk.len().min(room)).unwrap_or_default());
        let ended = buf.get(done - 1) == Some(&b'\n');
        reader.consume(done);
        if ended {
            return Ok(Some(whole));
        }
    }
}

/// Reads an audit log and builds the report. Only a failing read is an
/// error; lines that are not audit records are counted and skipped.
pub fn triage(mut reader: impl BufRead, opts: &TriageOptions) -> std::io::Result<Report> {
    // Not before 1970: `--since 100years` keeps everything.
    let not_before = opts.since.map(|since| {
        opts.now
            .checked_sub(since)
            .filter(|t| *t > SystemTime::UNIX_EPOCH)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    });
    let mut acc = Acc::default();
    let mut line = Vec::new();
    loop {
        let whole = match read_line(&mut reader, &mut line)? {
            None => break,
            Some(whole) => whole,
        };
        acc.lines += 1;
        let Some(record) = parse_line(&line).filter(|_| whole) else {
            acc.skip();
            continue;
        };
        acc.records += 1;
        if not_before.is_some_and(|nb| record.ts() < nb) {
            acc.filtered_out += 1;
            continue;
        }
        match record {
            Record::Request(r) => {
                let route_ok = opts
                    .route
                    .as_ref()
                    .is_none_or(|want| r.route.as_ref() == Some(want));
                let cred_ok = opts
                    .credential
                    .as_ref()
                    .is_none_or(|want| r.credential.id.as_ref() == Some(want));
                if route_ok && cred_ok {
                    acc.add_request(&r);
                } else {
                    acc.filtered_out += 1;
                }
            }
            Record::Refresh(r) => {
                if opts
                    .credential
                    .as_ref()
                    .is_none_or(|want| &r.credential == want)
                {
                    acc.add_refresh(r);
                } else {
                    acc.filtered_out += 1;
                }
            }
        }
    }
    let window = Window {
        not_before: not_before.map(fmt_ts),
        route: opts.route.clone(),
        credential: opts.credential.clone(),
    };
    let (mut report, evidence) = acc.finish(window);
    report.findings = findings::build(&evidence);
    Ok(report)
}

/// Runs `latchkey triage`: reads the file (or stdin), prints the report as
/// text or JSON on stdout. Exit status 0 whatever the findings; 2 when the
/// input cannot be read or `--since` is invalid.
pub fn run(args: TriageArgs) -> ExitCode {
    run_with(
        args,
        SystemTime::now(),
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// [`run`] with the clock and the standard streams supplied.
fn run_with(
    args: TriageArgs,
    now: SystemTime,
    stdin: &mut dyn BufRead,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> ExitCode {
    let since = match args.since.as_deref().map(parse_since).transpose() {
        Ok(since) => since,
        Err(e) => {
            let _ = writeln!(stderr, "latchkey triage: --since: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = TriageOptions {
        since,
        route: args.route,
        credential: args.credential,
        now,
    };
    let (name, result) = match args.input.filter(|p| p.as_os_str() != "-") {
        None => ("<stdin>".to_owned(), triage(stdin, &opts)),
        Some(path) => {
            let result =
                std::fs::File::open(&path).and_then(|f| triage(std::io::BufReader::new(f), &opts));
            (path.display().to_string(), result)
        }
    };
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            let _ = writeln!(stderr, "latchkey triage: {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let text = if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(e) => {
                let _ = writeln!(stderr, "latchkey triage: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        render_text(&report)
    };
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        // `latchkey triage log | head`: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(stderr, "latchkey triage: writing the report: {e}");
            ExitCode::from(2)
        }
    }
}
