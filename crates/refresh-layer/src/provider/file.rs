//! The file provider: a token file that something else keeps fresh.
//!
//! Typical writers are a Vault agent template, a Kubernetes projected
//! service-account token or a sidecar. The file is either the token itself
//! (surrounding whitespace trimmed) or JSON with the token in `token_field`
//! and, optionally, its expiry in `expiry_field` (RFC 3339, or Unix seconds or
//! milliseconds).
//! Field names may be dotted (`status.token`) to reach into nested objects.
//!
//! Errors name the file and the field, never the content.

use super::timestamp::parse_rfc3339;
use super::{ProviderError, TokenProvider};
use crate::token::{StoredCredential, Token};
use futures_util::future::BoxFuture;
use proxy_core::config::TokenFileConfig;
use secrecy::SecretString;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt as _;

/// Largest token file read; tokens are at most a few KiB.
const MAX_FILE: u64 = 1024 * 1024;

/// Default time limit on opening and reading the file.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a token from a file on every fetch.
#[derive(Debug)]
pub struct FileTokenProvider {
    path: PathBuf,
    token_field: Option<String>,
    expiry_field: Option<String>,
    read_timeout: Duration,
}

impl FileTokenProvider {
    /// Builds the provider; the file is first read on the first fetch.
    pub fn new(cfg: &TokenFileConfig) -> Self {
        Self {
            path: cfg.path.clone(),
            token_field: cfg.token_field.clone(),
            expiry_field: cfg.expiry_field.clone(),
            read_timeout: READ_TIMEOUT,
        }
    }

    /// Replaces the default time limit on one read ([`READ_TIMEOUT`]).
    #[must_use]
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    fn error(&self, problem: impl Into<String>) -> ProviderError {
        ProviderError::File {
            path: self.path.display().to_string(),
            problem: problem.into(),
        }
    }

    /// Reads the file within [`Self::with_read_timeout`]: a hung network
    /// or FUSE mount (or a FIFO nobody writes) fails the fetch, and the
    /// refresh layer keeps serving the token it holds.
    async fn read(&self) -> Result<String, ProviderError> {
        match tokio::time::timeout(self.read_timeout, self.read_unbounded()).await {
            Ok(r) => r,
            Err(_) => Err(self.error(format!(
                "could not be read within {} (hung mount, or not a regular file?)",
                humantime::format_duration(self.read_timeout)
            ))),
        }
    }

    async fn read_unbounded(&self) -> Result<String, ProviderError> {
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| self.error(format!("cannot be read: {e}")))?;
        let mut buf = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| self.error(format!("cannot be read: {e}")))?;
        if buf.len() as u64 > MAX_FILE {
            return Err(self.error(format!("is larger than {MAX_FILE} bytes")));
        }
        String::from_utf8(buf).map_err(|_| self.error("is not UTF-8"))
    }

    async fn load(&self) -> Result<Token, ProviderError> {
        let content = self.read().await?;
        let Some(token_field) = &self.token_field else {
            return Ok(Token {
                access_token: self.check_token(content.trim(), None)?,
                expires_in: None,
                refresh_token: None,
            });
        };
        let json: serde_json::Value = serde_json::from_str(&content).map_err(|e| {
            // Line and column only: serde_json's message can quote content.
            self.error(format!(
                "is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let access_token = match lookup(&json, token_field) {
            Some(serde_json::Value::String(t)) => self.check_token(t, Some(token_field))?,
            Some(_) => return Err(self.error(format!("field {token_field:?} is not a string"))),
            None => return Err(self.error(format!("has no field {token_field:?}"))),
        };
        let expires_in = match &self.expiry_field {
            None => None,
            Some(field) => {
                let at = match lookup(&json, field) {
                    None | Some(serde_json::Value::Null) => {
                        return Err(self.error(format!("has no field {field:?}")));
                    }
                    Some(v) => parse_expiry(v).ok_or_else(|| {
                        self.error(format!(
                            "field {field:?} is not an RFC 3339 time or Unix seconds"
                        ))
                    })?,
                };
                // Already expired is zero, not an error: the writer may be
                // about to replace the file, and the cache retries.
                Some(
                    at.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO),
                )
            }
        };
        Ok(Token {
            access_token,
            expires_in,
            refresh_token: None,
        })
    }

    /// A token must be non-empty and fit in a header: a stray newline inside
    /// (two tokens, a PEM file by mistake) would break every request.
    fn check_token(&self, token: &str, field: Option<&str>) -> Result<SecretString, ProviderError> {
        let what = match field {
            Some(f) => format!("field {f:?}"),
            None => "token".to_owned(),
        };
        if token.is_empty() {
            Err(self.error(format!("{what} is empty")))
        } else if token.chars().any(char::is_control) {
            Err(self.error(format!(
                "{what} contains control characters (more than one line?)"
            )))
        } else {
            Ok(SecretString::from(token.to_owned()))
        }
    }
}

impl TokenProvider for FileTokenProvider {
    fn kind(&self) -> &'static str {
        "file"
    }

    /// The token file's path.
    fn identity(&self) -> Option<String> {
        Some(super::fingerprint([
            b"file".as_slice(),
            self.path.as_os_str().as_encoded_bytes(),
        ]))
    }

    fn fetch<'a>(
        &'a self,
        _current: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        Box::pin(self.load())
    }
}

/// `field` as a top-level key, or else as a dotted path into nested objects.
fn lookup<'v>(json: &'v serde_json::Value, field: &str) -> Option<&'v serde_json::Value> {
    json.get(field)
        .or_else(|| field.split('.').try_fold(json, |v, key| v.get(key)))
}

/// Unix times at or above this many seconds (the year 5138) are read as
/// milliseconds: JavaScript's `Date.now()` and Java's
/// `System.currentTimeMillis()` write those, and read as seconds they
/// would put the expiry thousands of years away (never refreshed).
const MILLIS_FROM: f64 = 1e11;

/// RFC 3339 text, or Unix seconds (or milliseconds, see [`MILLIS_FROM`])
/// as a number or numeric text.
fn parse_expiry(v: &serde_json::Value) -> Option<SystemTime> {
    let from_secs = |s: f64| {
        let s = if s >= MILLIS_FROM { s / 1000.0 } else { s };
        (s.is_finite() && s >= 0.0)
            .then(|| Duration::try_from_secs_f64(s).ok())
            .flatten()
            .and_then(|d| UNIX_EPOCH.checked_add(d))
    };
    match v {
        serde_json::Value::Number(n) => from_secs(n.as_f64()?),
        serde_json::Value::String(s) => {
            let s = s.trim();
            parse_rfc3339(s).or_else(|| from_secs(s.parse::<f64>().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    fn provider(
        path: PathBuf,
        token_field: Option<&str>,
        expiry_field: Option<&str>,
    ) -> FileTokenProvider {
        FileTokenProvider::new(&TokenFileConfig {
            path,
            token_field: token_field.map(str::to_owned),
            expiry_field: expiry_field.map(str::to_owned),
        })
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    async fn fetch_from(
        content: &str,
        token_field: Option<&str>,
        expiry_field: Option<&str>,
    ) -> Result<Token, ProviderError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, content).unwrap();
        provider(path, token_field, expiry_field).fetch(None).await
    }

    #[tokio::test]
    async fn plain_file_is_the_trimmed_token_without_expiry() {
        let p = provider(PathBuf::from("/x"), None, None);
        assert_eq!(p.kind(), "file");
        assert!(!p.rotates());
        let token = fetch_from("  tok-canary\n", None, None).await.unwrap();
        assert_eq!(token.access_token.expose_secret(), "tok-canary");
        assert_eq!(token.expires_in, None);
        assert!(token.refresh_token.is_none());
    }

    #[tokio::test]
    async fn file_is_reread_on_every_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one").unwrap();
        let p = provider(path.clone(), None, None);
        assert_eq!(
            p.fetch(None).await.unwrap().access_token.expose_secret(),
            "one"
        );
        std::fs::write(&path, "two").unwrap();
        assert_eq!(
            p.fetch(None).await.unwrap().access_token.expose_secret(),
            "two"
        );
    }

    #[tokio::test]
    async fn json_with_unix_seconds_expiry() {
        let body = format!(r#"{{"token":"tok","exp":{}}}"#, now_secs() + 600);
        let token = fetch_from(&body, Some("token"), Some("exp")).await.unwrap();
        assert_eq!(token.access_token.expose_secret(), "tok");
        let left = token.expires_in.unwrap();
        assert!(
            left > Duration::from_secs(590) && left <= Duration::from_secs(600),
            "{left:?}"
        );

        let body = format!(r#"{{"token":"tok","exp":"{}"}}"#, now_secs() + 600);
        let left = fetch_from(&body, Some("token"), Some("exp"))
            .await
            .unwrap()
            .expires_in
            .unwrap();
        assert!(left > Duration::from_secs(590), "{left:?}");

        // Milliseconds (JavaScript's `Date.now()`), as a number or text.
        for exp in [
            format!("{}", (now_secs() + 600) * 1000),
            format!("\"{}\"", (now_secs() + 600) * 1000 + 250),
        ] {
            let body = format!(r#"{{"token":"tok","exp":{exp}}}"#);
            let left = fetch_from(&body, Some("token"), Some("exp"))
                .await
                .unwrap()
                .expires_in
                .unwrap();
            assert!(
                left > Duration::from_secs(590) && left <= Duration::from_secs(601),
                "{exp}: {left:?}"
            );
        }
    }

    #[tokio::test]
    async fn json_with_rfc3339_expiry_and_nested_fields() {
        let body = r#"{"status":{"token":"tok","expirationTimestamp":"2099-01-01T00:00:00Z"}}"#;
        let token = fetch_from(
            body,
            Some("status.token"),
            Some("status.expirationTimestamp"),
        )
        .await
        .unwrap();
        assert_eq!(token.access_token.expose_secret(), "tok");
        assert!(token.expires_in.unwrap() > Duration::from_secs(365 * 24 * 3600));

        let past = r#"{"token":"tok","exp":"2001-01-01T00:00:00Z"}"#;
        let token = fetch_from(past, Some("token"), Some("exp")).await.unwrap();
        assert_eq!(token.expires_in, Some(Duration::ZERO));

        let token = fetch_from(r#"{"token":"tok"}"#, Some("token"), None)
            .await
            .unwrap();
        assert_eq!(token.expires_in, None);
    }

    #[tokio::test]
    async fn missing_file_is_a_file_error() {
        let err = provider(PathBuf::from("/nonexistent/latchkey/token"), None, None)
            .fetch(None)
            .await
            .unwrap_err();
        let ProviderError::File { path, problem } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(path, "/nonexistent/latchkey/token");
        assert!(problem.starts_with("cannot be read"), "{problem}");
    }

    #[tokio::test]
    async fn empty_and_malformed_files_are_errors_without_content() {
        let cases: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            ("", None, None, "token is empty"),
            (" \n\t\n", None, None, "token is empty"),
            (
                "tok-canary\ntok-canary-2\n",
                None,
                None,
                "control characters",
            ),
            (
                "tok-canary not json",
                Some("token"),
                None,
                "is not valid JSON",
            ),
            (
                r#"{"other":"tok-canary"}"#,
                Some("token"),
                None,
                "has no field \"token\"",
            ),
            (r#"{"token":""}"#, Some("token"), None, "is empty"),
            (
                r#"{"token":["tok-canary"]}"#,
                Some("token"),
                None,
                "is not a string",
            ),
            (
                r#"{"token":"tok-canary"}"#,
                Some("token"),
                Some("exp"),
                "has no field \"exp\"",
            ),
            (
                r#"{"token":"tok-canary","exp":"soon-canary"}"#,
                Some("token"),
                Some("exp"),
                "not an RFC 3339",
            ),
            (
                r#"{"token":"tok-canary","exp":-1}"#,
                Some("token"),
                Some("exp"),
                "not an RFC 3339",
            ),
        ];
        for (content, token_field, expiry_field, want) in cases {
            let err = fetch_from(content, *token_field, *expiry_field)
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{content:?}: {text}");
            assert!(
                !text.contains("canary") && !format!("{err:?}").contains("canary"),
                "{text}"
            );
        }
    }
}
