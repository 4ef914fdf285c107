//! The file provider: a token file that something else keeps fresh.
//!
//! Typical writers are a Vault agent template, a Kubernetes projected
//! service-account token or a sidecar. The file is either the token itself
//! or JSON with the token in `token_field` (surrounding whitespace trimmed
//! either way) and, optionally, its expiry in `expiry_field` (RFC 3339, or Unix seconds or
//! milliseconds).
//! Field names may be dotted (`status.token`) to reach into nested objects.
//!
//! Errors name the file and the field, never the content.
//!
//! The read runs on the blocking pool, bounded by a timeout, at most one
//! at a time per provider (proxy-core's [`BlockingReads`], as `file`
//! secrets and client certificates are read): a read that never returns (a
//! hung NFS or FUSE mount) costs one blocked thread, not one more per
//! refresh attempt. Only a regular file is read: a named pipe (whose open
//! would wait for a writer for ever), a device or a directory is refused
//! by name without being opened.

use super::timestamp::parse_rfc3339;
use super::{ProviderError, TokenProvider};
use crate::token::{StoredCredential, Token};
use futures_util::future::BoxFuture;
use proxy_core::config::TokenFileConfig;
use proxy_core::upstream::client_cert::files::BlockingReads;
use secrecy::SecretString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

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
    /// The read in progress, or stuck since an earlier attempt.
    reads: Mutex<BlockingReads<Result<Vec<u8>, String>>>,
}

impl FileTokenProvider {
    /// Builds the provider; the file is first read on the first fetch.
    pub fn new(cfg: &TokenFileConfig) -> Self {
        Self {
            path: cfg.path.clone(),
            token_field: cfg.token_field.clone(),
            expiry_field: cfg.expiry_field.clone(),
            read_timeout: READ_TIMEOUT,
            reads: Mutex::default(),
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
    /// or FUSE mount fails the fetch, and the refresh layer keeps serving
    /// the token it holds. While a read that timed out has not returned,
    /// later fetches fail at once without starting another.
    async fn read(&self) -> Result<String, ProviderError> {
        let path = self.path.clone();
        self.read_with(move || read_file(&path)).await
    }

    /// [`Self::read`] with `read` doing the blocking part.
    async fn read_with<F>(&self, read: F) -> Result<String, ProviderError>
    where
        F: FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
    {
        let buf = self
            .reads
            .lock()
            .await
            .run(self.read_timeout, read)
            .await
            .map_err(|e| self.error(format!("could not be read: {e}")))?
            .map_err(|problem| self.error(problem))?;
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
            // Trimmed as a plain token file is (a template that wrote
            // `"token": "{{ .Data.token }}\n"`).
            Some(serde_json::Value::String(t)) => self.check_token(t.trim(), Some(token_field))?,
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

    /// The token file's path and how it is read (a JSON field names
    /// another token in the same file). A plain-text file's is the same as
    /// before the fields counted: a stored state keeps its owner across the
    /// upgrade.
    fn identity(&self) -> Option<String> {
        let path = self.path.as_os_str().as_encoded_bytes();
        Some(match (&self.token_field, &self.expiry_field) {
            (None, None) => super::fingerprint([b"file".as_slice(), path]),
            (token, expiry) => {
                fn field(f: &Option<String>) -> &[u8] {
                    f.as_deref().map_or(b"\0", str::as_bytes)
                }
                super::fingerprint([b"file".as_slice(), path, field(token), field(expiry)])
            }
        })
    }

    fn fetch<'a>(
        &'a self,
        _current: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        Box::pin(self.load())
    }
}

/// The file at `path`, if it is a regular file of at most [`MAX_FILE`]
/// bytes (blocking). Errors never quote the content.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileTypeExt as _;
    // Checked before the open: a FIFO would block it until a writer comes.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    let kind = meta.file_type();
    let not_regular = if kind.is_fifo() {
        Some("a named pipe")
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_socket() {
        Some("a socket")
    } else if !kind.is_file() {
        Some("something else")
    } else {
        None
    };
    if let Some(what) = not_regular {
        return Err(format!(
            "is {what}, not a regular file: refused without reading it"
        ));
    }
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut buf))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(format!("is larger than {MAX_FILE} bytes"));
    }
    Ok(buf)
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

    /// Another JSON field of the same file is another token; a plain
    /// file's identity is its path's, as before.
    #[test]
    fn the_fields_read_are_part_of_the_identity() {
        let p = |t: Option<&str>, e: Option<&str>| {
            provider(PathBuf::from("/run/t.json"), t, e).identity()
        };
        assert_ne!(p(Some("access"), None), p(Some("id"), None));
        assert_ne!(p(Some("access"), None), p(Some("access"), Some("exp")));
        assert_ne!(p(None, None), p(Some("access"), None));
        assert_eq!(
            p(None, None),
            Some(super::super::fingerprint([
                b"file".as_slice(),
                b"/run/t.json"
            ]))
        );
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

    /// A JSON token is trimmed as a plain one is: surrounding spaces or a
    /// newline would otherwise be sent (`Bearer  tok `) or refused.
    #[tokio::test]
    async fn a_json_token_is_trimmed_too() {
        for content in [r#"{"t":" tok-canary "}"#, r#"{"t":"tok-canary\n"}"#] {
            let token = fetch_from(content, Some("t"), None).await.unwrap();
            assert_eq!(
                token.access_token.expose_secret(),
                "tok-canary",
                "{content}"
            );
        }
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

    /// A read that never returns (a hung mount) times out; the attempts
    /// after it fail at once without starting another read (one blocked
    /// thread, not one per refresh attempt) until it returns, and then the
    /// file is read afresh.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_read_is_not_piled_up() {
        use std::future::Future as _;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        type Wait = Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>;
        let p = provider(PathBuf::from("/hung/token"), None, None)
            .with_read_timeout(Duration::from_secs(10));
        let started = Arc::new(AtomicUsize::new(0));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait: Wait = Arc::new(std::sync::Mutex::new(wait));
        let read = |started: &Arc<AtomicUsize>, wait: &Wait| {
            let (started, wait) = (started.clone(), wait.clone());
            move || {
                started.fetch_add(1, Ordering::SeqCst);
                let _ = wait.lock().unwrap().recv();
                Ok(b"tok".to_vec())
            }
        };
        let first = {
            let f = p.read_with(read(&started, &wait));
            tokio::pin!(f);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(f.as_mut().poll(&mut cx).is_pending());
            // `advance`, not `sleep`: a running blocking read holds the
            // auto-advance.
            tokio::time::advance(Duration::from_secs(10)).await;
            f.await
        };
        let err = first.unwrap_err();
        let ProviderError::File { path, problem } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(path, "/hung/token");
        assert!(
            problem.starts_with("could not be read: the read did not finish within 10s"),
            "{problem}"
        );
        for _ in 0..20 {
            assert_eq!(p.read_with(read(&started, &wait)).await, Err(err.clone()));
        }
        // The first read is on another thread: let it start.
        for _ in 0..2000 {
            if started.load(Ordering::SeqCst) > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(started.load(Ordering::SeqCst), 1, "reads piled up");

        // Once it returns (the first message), the next attempt reads
        // afresh (the second).
        release.send(()).unwrap();
        release.send(()).unwrap();
        let mut fresh = None;
        for _ in 0..2000 {
            if let Ok(content) = p.read_with(read(&started, &wait)).await {
                fresh = Some(content);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(fresh.as_deref(), Some("tok"));
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for (path, what) in [
            (fifo, "a named pipe"),
            (dir.path().to_path_buf(), "a directory"),
            (PathBuf::from("/dev/null"), "a device"),
        ] {
            let err = provider(path.clone(), None, None)
                .fetch(None)
                .await
                .unwrap_err();
            assert_eq!(
                err,
                ProviderError::File {
                    path: path.display().to_string(),
                    problem: format!("is {what}, not a regular file: refused without reading it"),
                }
            );
        }
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; (MAX_FILE + 1) as usize]).unwrap();
        let err = provider(big, None, None).fetch(None).await.unwrap_err();
        assert!(
            err.to_string().ends_with("is larger than 1048576 bytes"),
            "{err}"
        );
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
