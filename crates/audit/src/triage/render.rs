//! The human-readable report.

use std::fmt::Write as _;

use super::report::{Report, TrafficStats};

/// Column alignment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

use Align::{Left, Right};

/// Findings are wrapped at this many columns.
const WIDTH: usize = 100;

/// Renders `report` as text: a header, the findings, then one aligned table
/// per section. Sections without rows are left out.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let t = &report.totals;
    let w = &report.window;
    out.push_str("latchkey triage\n");
    let range = match (&t.first_ts, &t.last_ts) {
        (Some(first), Some(last)) => format!("{first} .. {last}"),
        _ => "no records".to_owned(),
    };
    let _ = writeln!(out, "  records:  {range}");
    let mut filters = Vec::new();
    if let Some(nb) = &w.not_before {
        filters.push(format!("since {nb}"));
    }
    if let Some(route) = &w.route {
        filters.push(format!("route {route}"));
    }
    if let Some(cred) = &w.credential {
        filters.push(format!("credential {cred}"));
    }
    if !filters.is_empty() {
        let _ = writeln!(
            out,
            "  filters:  {} ({} records left out)",
            filters.join(", "),
            t.filtered_out
        );
    }
    let _ = writeln!(
        out,
        "  lines:    {} read, {} audit records, {} skipped",
        t.lines, t.records, t.skipped_lines
    );
    let _ = writeln!(
        out,
        "  analysed: {} request records, {} refresh records",
        t.request_records, t.refresh_records
    );

    section(&mut out, "Findings");
    for f in &report.findings {
        let severity = format!("{:<8}", f.severity.as_str().to_uppercase());
        wrap(&mut out, &format!("  {severity}  "), &f.message);
    }

    let rows = report
        .status_codes
        .iter()
        .map(|(code, n)| vec![code.to_string(), n.to_string()]);
    table(
        &mut out,
        "Status codes",
        &[("STATUS", Left), ("REQUESTS", Right)],
        rows.collect(),
    );

    let rows = report.reasons.iter().map(|(reason, s)| {
        vec![
            reason.clone(),
            s.count.to_string(),
            s.first_seen.clone(),
            s.last_seen.clone(),
        ]
    });
    let head = [
        ("REASON", Left),
        ("COUNT", Right),
        ("FIRST SEEN", Left),
        ("LAST SEEN", Left),
    ];
    table(&mut out, "Failure reasons", &head, rows.collect());

    let rows = report.routes.iter().map(|(route, s)| traffic_row(route, s));
    table(&mut out, "Routes", &traffic_head("ROUTE"), rows.collect());

    let rows = report
        .credentials
        .iter()
        .filter(|(_, c)| c.traffic.requests > 0)
        .map(|(id, c)| traffic_row(id, &c.traffic));
    table(
        &mut out,
        "Credentials: requests",
        &traffic_head("CREDENTIAL"),
        rows.collect(),
    );

    let rows = report
        .credentials
        .iter()
        .filter(|(_, c)| c.refresh.attempts > 0)
        .map(|(id, c)| {
            let r = &c.refresh;
            let last_error = r.last_error.as_ref().map_or_else(
                || "-".to_owned(),
                |e| {
                    let what = e.error_code.clone().or_else(|| e.message.clone());
                    format!("{} at {}", what.unwrap_or_else(|| "error".to_owned()), e.at)
                },
            );
            vec![
                id.clone(),
                r.attempts.to_string(),
                r.successes.to_string(),
                r.success_rate.map_or_else(|| "-".to_owned(), pct),
                r.failing_since.clone().unwrap_or_else(|| "-".to_owned()),
                last_error,
            ]
        });
    let head = [
        ("CREDENTIAL", Left),
        ("REFRESHES", Right),
        ("OK", Right),
        ("SUCCESS", Right),
        ("FAILING SINCE", Left),
        ("LAST ERROR", Left),
    ];
    table(&mut out, "Credentials: refreshes", &head, rows.collect());

    let rows = report
        .retry401
        .iter()
        .map(|(outcome, n)| vec![outcome.clone(), n.to_string()]);
    table(
        &mut out,
        "Retries after 401",
        &[("OUTCOME", Left), ("REQUESTS", Right)],
        rows.collect(),
    );
    out
}

fn traffic_head(first: &'static str) -> [(&'static str, Align); 8] {
    [
        (first, Left),
        ("REQUESTS", Right),
        ("401", Right),
        ("403", Right),
        ("5XX", Right),
        ("401%", Right),
        ("403%", Right),
        ("5XX%", Right),
    ]
}

fn traffic_row(name: &str, s: &TrafficStats) -> Vec<String> {
    vec![
        name.to_owned(),
        s.requests.to_string(),
        s.status_401.to_string(),
        s.status_403.to_string(),
        s.status_5xx.to_string(),
        pct(s.rate_401),
        pct(s.rate_403),
        pct(s.rate_5xx),
    ]
}

/// `0.1234` -> `12.3%`.
fn pct(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// Writes `text` after `lead`, wrapped at [`WIDTH`] columns, continuation
/// lines indented to the end of `lead`.
fn wrap(out: &mut String, lead: &str, text: &str) {
    let indent = lead.chars().count();
    let mut line = lead.to_owned();
    let mut len = indent;
    let mut empty = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let n = word.chars().count();
        if !empty && len + 1 + n > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = " ".repeat(indent);
            len = indent;
            empty = true;
        }
        if !empty {
            line.push(' ');
            len += 1;
        }
        line.push_str(word);
        len += n;
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
}

fn section(out: &mut String, title: &str) {
    let _ = write!(out, "\n{title}\n");
}

/// Writes a titled table with columns padded to their widest cell.
fn table(out: &mut String, title: &str, head: &[(&str, Align)], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        return;
    }
    section(out, title);
    let mut widths: Vec<usize> = head.iter().map(|(h, _)| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = head.iter().map(|(h, _)| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::from(" ");
        for ((cell, (_, align)), w) in row.iter().zip(head).zip(&widths) {
            line.push(' ');
            let pad = w.saturating_sub(cell.chars().count());
            if *align == Right {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
            line.push(' ');
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}
