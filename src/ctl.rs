//! `latchkey ctl`: a small client for the management API of a running
//! latchkey (see [`crate::admin::management`]).
//!
//! It sends one request to the admin listener (plain HTTP: that port is
//! meant for loopback or a private network) and prints the answer as a table,
//! or as the server's JSON with `--json`. Exit codes: 0 on success, 1 when
//! the server answered with an error (its code and message go to stderr), 2
//! when the server could not be reached or the invocation is incomplete or
//! names something that cannot be a credential id.

use crate::cli::{CtlAction, CtlArgs};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proxy_core::config::shown_url;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// Upper bound for one call; a forced refresh waits for the token endpoint.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Longest `LAST ERROR` shown in the table.
const MAX_ERROR: usize = 60;

/// Why the server could not be asked.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0:?} is not a usable admin URL (expected http://HOST:PORT)")]
    Url(String),
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("no answer from {url} within {TIMEOUT:?}")]
    Timeout { url: String },
}

/// What to print and how to exit.
#[derive(Debug, PartialEq, Eq)]
struct Output {
    stdout: String,
    stderr: String,
    code: u8,
}

/// Runs `latchkey ctl`.
pub fn run(args: CtlArgs) -> ExitCode {
    // An empty key (an empty Secret key, `$(cat missing-file)`) is no key:
    // sent, it could only be refused.
    let Some(key) = args
        .key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| SecretString::from(k.to_owned()))
    else {
        eprintln!(
            "latchkey ctl: no management key (or an empty one); set LATCHKEY_MANAGEMENT_KEY or pass --key"
        );
        return ExitCode::from(2);
    };
    let (method, path) = match request_for(&args.action) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("latchkey ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latchkey ctl: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let out = match rt.block_on(call(&args.admin_url, &key, method, &path)) {
        Ok((status, body)) => render(&args.action, args.json, status, &body),
        Err(e) => Output {
            stdout: String::new(),
            stderr: format!("latchkey ctl: {e}\n"),
            code: 2,
        },
    };
    print!("{}", printable(&out.stdout));
    eprint!("{}", printable(&out.stderr));
    ExitCode::from(out.code)
}

/// The call for `action`; an error for an argument that cannot be a
/// credential id (it would otherwise change the URL: `k?x=1` would ask
/// another endpoint).
fn request_for(action: &CtlAction) -> Result<(Method, String), String> {
    const P: &str = crate::admin::management::PREFIX;
    let id = |id: &str| {
        if proxy_core::config::is_valid_id(id) {
            Ok(())
        } else {
            Err(format!(
                "{id:?} is not a credential id: ids use only letters, digits, '_', '-' and '.'"
            ))
        }
    };
    Ok(match action {
        CtlAction::Credentials => (Method::GET, format!("{P}/credentials")),
        CtlAction::Refresh { id: i } => {
            id(i)?;
            (Method::POST, format!("{P}/credentials/{i}/refresh"))
        }
        CtlAction::Invalidate { id: i } => {
            id(i)?;
            (Method::POST, format!("{P}/credentials/{i}/invalidate"))
        }
    })
}

async fn call(
    base: &str,
    key: &SecretString,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), CallError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let uri: Uri = url.parse().map_err(|_| CallError::Url(shown_url(base)))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(CallError::Url(shown_url(base)));
    }
    // Errors name the URL without a `user:password@` part or a query.
    let url = shown_url(&url);
    let mut auth =
        HeaderValue::try_from(format!("Bearer {}", key.expose_secret())).map_err(|_| {
            CallError::Connect {
                url: url.clone(),
                reason: "the management key is not a valid header value".to_string(),
            }
        })?;
    auth.set_sensitive(true);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, auth)
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| CallError::Connect {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| chain(&e))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| chain(&e))?.to_bytes();
        Ok::<_, String>((parts.status, body))
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(reason)) => Err(CallError::Connect { url, reason }),
        Err(_) => Err(CallError::Timeout { url }),
    }
}

/// An error and its causes on one line (`client error (Connect): ...`).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let _ = write!(out, ": {s}");
        cur = s.source();
    }
    out
}

fn render(action: &CtlAction, json: bool, status: StatusCode, body: &[u8]) -> Output {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let raw = || {
        let mut s = String::from_utf8_lossy(body).into_owned();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    };
    if !status.is_success() {
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let code = err.and_then(|e| e["code"].as_str());
        let stderr = match (code, err) {
            (Some(code), Some(e)) => {
                let mut s = format!("error: {code}: {}", e["message"].as_str().unwrap_or(""));
                if let Some(o) = e.get("oauth_error").and_then(Value::as_str) {
                    let _ = write!(s, " (oauth_error: {o})");
                }
                s + "\n"
            }
            _ => format!("error: HTTP {status}: {}", shorten(raw().trim(), 200)) + "\n",
        };
        return Output {
            stdout: if json { raw() } else { String::new() },
            stderr,
            code: 1,
        };
    }
    if json {
        return Output {
            stdout: raw(),
            stderr: String::new(),
            code: 0,
        };
    }
    let rows: Option<Vec<&Value>> = match (action, &parsed) {
        (CtlAction::Credentials, Some(v)) => {
            v["credentials"].as_array().map(|a| a.iter().collect())
        }
        (_, Some(v)) if v.is_object() => Some(vec![v]),
        _ => None,
    };
    match rows {
        Some(rows) => Output {
            stdout: table(&rows),
            stderr: String::new(),
            code: 0,
        },
        None => Output {
            stdout: String::new(),
            stderr: format!(
                "error: the server answered {status} with an unexpected body: {}\n",
                shorten(raw().trim(), 200)
            ),
            code: 1,
        },
    }
}

/// The status table: one row per credential.
fn table(rows: &[&Value]) -> String {
    const HEAD: [&str; 8] = [
        "ID",
        "KIND",
        "STORE",
        "STATE",
        "GEN",
        "EXPIRES",
        "LAST REFRESH",
        "LAST ERROR",
    ];
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let last_refresh = match r["last_refresh_at"].as_str() {
                Some(at) => {
                    let mut s = format!("{at} {}", text(&r["last_refresh_result"]));
                    if let Some(t) = r["last_refresh_trigger"].as_str() {
                        let _ = write!(s, " ({t})");
                    }
                    s
                }
                None => "-".to_string(),
            };
            [
                text(&r["id"]),
                text(&r["kind"]),
                text(&r["store"]),
                text(&r["state"]),
                text(&r["generation"]),
                text(&r["expires_at"]),
                last_refresh,
                shorten(&text(&r["last_error"]), MAX_ERROR),
            ]
        })
        .collect();
    let mut widths = HEAD.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&HEAD);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// `s` with control characters other than newline and tab shown as
/// U+FFFD: errors can carry a token endpoint's `error_description` or an
/// upstream's text, and an escape sequence in them must not reach the
/// operator's terminal as one (retitling it, hiding lines, ...).
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if s.chars().any(bad) {
        s.chars()
            .map(|c| if bad(c) { '\u{fffd}' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// `s` cut to `max` characters, with `...` when cut. Errors are one line.
fn shorten(s: &str, max: usize) -> String {
    let s = s.replace(['\n', '\r'], " ");
    if s.chars().count() <= max {
        return s;
    }
    let cut: String = s.chars().take(max.saturating_sub(3)).collect();
    format!("{}...", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A `user:password@` in `--admin-url` (or a query) never reaches an
    /// error message.
    #[test]
    fn errors_never_show_the_admin_urls_userinfo() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let key = SecretString::from("k");
        for base in [
            "http://admin:hunter2pass@127.0.0.1:9",
            "https://admin:hunter2pass@127.0.0.1:9",
            "http://admin:hunter2pass@127.0.0.1:9/?token=hunter2pass",
        ] {
            let e = rt
                .block_on(call(base, &key, Method::GET, "/v0/x"))
                .unwrap_err()
                .to_string();
            assert!(!e.contains("hunter2pass"), "{e}");
            assert!(e.contains("127.0.0.1:9"), "{e}");
        }
    }

    #[test]
    fn escape_sequences_never_reach_the_terminal() {
        assert_eq!(printable("plain\tline\n"), "plain\tline\n");
        assert_eq!(
            printable("bad\u{1b}]0;pwned\u{7}\u{1b}[2Jx\r\n"),
            "bad\u{fffd}]0;pwned\u{fffd}\u{fffd}[2Jx\u{fffd}\n"
        );
        assert_eq!(printable("\u{9b}31m"), "\u{fffd}31m", "C1 CSI too");
    }

    fn status(id: &str, err: Option<&str>) -> Value {
        json!({
            "id": id, "kind": "oauth2", "store": "memory", "state": "fresh",
            "generation": 3, "expires_at": "2030-01-01T00:00:00Z",
            "last_refresh_at": "2029-12-31T23:00:00Z", "last_refresh_result": "ok",
            "last_refresh_trigger": "manual", "last_error": err,
        })
    }

    #[test]
    fn an_argument_that_is_no_credential_id_never_becomes_a_url() {
        for bad in ["k?x=1", "k#x", "no such", "a/b", "", "crm/../x"] {
            for action in [
                CtlAction::Refresh { id: bad.into() },
                CtlAction::Invalidate { id: bad.into() },
            ] {
                let e = request_for(&action).unwrap_err();
                assert!(e.contains("is not a credential id"), "{bad:?}: {e}");
            }
        }
        let (method, path) = request_for(&CtlAction::Refresh {
            id: "crm-oauth_2.v1".into(),
        })
        .unwrap();
        assert_eq!(method, Method::POST);
        assert_eq!(path, "/v0/management/credentials/crm-oauth_2.v1/refresh");
    }

    #[test]
    fn table_has_a_row_per_credential_and_short_errors() {
        let long = "token endpoint answered 400 invalid_grant: ".repeat(5);
        let body =
            json!({"credentials": [status("crm", None), status("billing-api", Some(&long))]});
        let out = render(
            &CtlAction::Credentials,
            false,
            StatusCode::OK,
            body.to_string().as_bytes(),
        );
        assert_eq!(out.code, 0);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID           KIND    STORE   STATE  GEN  EXPIRES"));
        assert!(
            lines[1].starts_with("crm          oauth2  memory  fresh  3    2030-01-01T00:00:00Z")
        );
        assert!(lines[1].contains("2029-12-31T23:00:00Z ok (manual)"));
        assert!(lines[1].ends_with(" -"));
        assert!(lines[2].ends_with("..."));
        assert!(lines[2].len() < 200);
    }

    #[test]
    fn errors_go_to_stderr_with_the_server_code() {
        let body = json!({"error": {"code": "refresh_failed", "message": "token endpoint answered 400 invalid_grant", "oauth_error": "invalid_grant"}});
        let action = CtlAction::Refresh { id: "crm".into() };
        let out = render(
            &action,
            false,
            StatusCode::BAD_GATEWAY,
            body.to_string().as_bytes(),
        );
        assert_eq!(out.code, 1);
        assert_eq!(out.stdout, "");
        assert_eq!(
            out.stderr,
            "error: refresh_failed: token endpoint answered 400 invalid_grant (oauth_error: invalid_grant)\n"
        );
        let out = render(
            &action,
            true,
            StatusCode::BAD_GATEWAY,
            body.to_string().as_bytes(),
        );
        assert_eq!(out.stdout, format!("{body}\n"));
        let out = render(
            &action,
            false,
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
        );
        assert_eq!(
            out.stderr,
            "error: HTTP 502 Bad Gateway: <html>bad gateway</html>\n"
        );
    }

    #[test]
    fn json_is_printed_as_is() {
        let body = status("crm", None).to_string();
        let action = CtlAction::Invalidate { id: "crm".into() };
        let out = render(&action, true, StatusCode::OK, body.as_bytes());
        assert_eq!(
            out,
            Output {
                stdout: format!("{body}\n"),
                stderr: String::new(),
                code: 0
            }
        );
        let out = render(&action, false, StatusCode::OK, body.as_bytes());
        assert_eq!(out.stdout.lines().count(), 2);
    }
}
