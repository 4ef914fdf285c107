//! Secret references and the values behind them.
//!
//! Config names a secret as `{ env: NAME }`, `{ file: PATH }` or
//! `{ value: "..." }` ([`SecretRef`]). At startup each reference becomes a
//! [`SecretSource`]: `env` and `value` are read once; `file` is read at once and
//! then re-read every poll interval so a rewritten file (a Kubernetes Secret
//! volume swaps a `..data` symlink) is picked up without a restart. The hot path
//! only loads an `Arc` from an [`ArcSwap`]; it never touches the filesystem.
//!
//! A value must be sendable in a header: after trimming surrounding
//! whitespace it must be non-empty and hold no control character (the rule
//! the refresh cache applies to tokens it is given). A rewrite of a `file`
//! secret that breaks the rule is treated like an unreadable file: the last
//! good value is kept (see the `watch` submodule).
//!
//! Nothing here prints a secret value: [`SecretRef`], [`SecretValue`] and
//! [`SecretError`] all keep values out of `Debug` and `Display`.

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

mod watch;

/// Default interval between re-reads of `file` secrets.
pub const DEFAULT_FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Where a secret comes from, as written in config.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// An environment variable, read once at startup.
    Env(String),
    /// A file, re-read when it changes. Surrounding whitespace is trimmed.
    File(PathBuf),
    /// A literal in the config file (a warning is logged: prefer env or file).
    Value(#[serde(deserialize_with = "de_secret_string")] SecretString),
}

/// A literal, trimmed of surrounding whitespace as env and file values
/// are (a block scalar ends in a newline), here already, so that config
/// comparisons (two clients sharing a token, a reload's "unchanged")
/// see what is used.
fn de_secret_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(|s| SecretString::from(s.trim().to_owned()))
}

impl SecretRef {
    /// A short description that never includes the value: `env NAME`,
    /// `file PATH` or `literal value`.
    pub fn describe(&self) -> String {
        match self {
            Self::Env(name) => format!("env {name}"),
            Self::File(path) => format!("file {}", path.display()),
            Self::Value(_) => "literal value".to_string(),
        }
    }

    /// Whether the config holds the secret inline.
    pub fn is_literal(&self) -> bool {
        matches!(self, Self::Value(_))
    }
}

/// Serialises the reference, never the value: a literal becomes
/// `{ value: "<redacted>" }`, so the running config can be shown.
impl serde::Serialize for SecretRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Self::Env(name) => m.serialize_entry("env", name)?,
            Self::File(path) => m.serialize_entry("file", path)?,
            Self::Value(_) => m.serialize_entry("value", "<redacted>")?,
        }
        m.end()
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => f.debug_tuple("Env").field(name).finish(),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Value(_) => f.debug_tuple("Value").field(&"***").finish(),
        }
    }
}

impl PartialEq for SecretRef {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Env(a), Self::Env(b)) => a == b,
            (Self::File(a), Self::File(b)) => a == b,
            (Self::Value(a), Self::Value(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        }
    }
}

/// Why a secret could not be read (or used). Never contains the value.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The environment variable is not set (or not valid UTF-8).
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The secret resolved to an empty string.
    #[error("{0} is empty")]
    Empty(String),
    /// The secret holds a control character (a line break inside the value:
    /// two keys on two lines, a pasted PEM), so it cannot be sent in a
    /// header. Names where the secret comes from, never the value.
    #[error(
        "{0} contains a control character (such as a line break inside the value), so it cannot be sent in a header"
    )]
    Unsendable(String),
    /// The file could not be read.
    #[error("cannot read file {path}: {reason}")]
    File {
        /// The file's path.
        path: PathBuf,
        /// The I/O error, as text.
        reason: String,
    },
}

/// A resolved secret value with a version that grows each time it changes.
pub struct SecretValue {
    value: SecretString,
    version: u64,
    loaded_at: SystemTime,
}

impl SecretValue {
    /// Creates a value (for sources other than config references).
    pub fn new(value: SecretString, version: u64) -> Self {
        Self {
            value,
            version,
            loaded_at: SystemTime::now(),
        }
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    /// The secret, still wrapped.
    pub fn secret(&self) -> &SecretString {
        &self.value
    }

    /// Starts at 1 and grows by one every time the value changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When this value was read.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("value", &"***")
            .field("version", &self.version)
            .finish()
    }
}

type Loaded = Result<Arc<SecretValue>, SecretError>;

/// A live secret: resolve once, then [`load`](Self::load) on every use.
#[derive(Clone)]
pub struct SecretSource {
    inner: Arc<Inner>,
}

struct Inner {
    describe: String,
    current: ArcSwap<Loaded>,
    version: AtomicU64,
    /// A watcher re-reads the file: the value can change.
    watched: bool,
}

impl SecretSource {
    /// Resolves `r`. Never fails: a secret that cannot be read yet is kept as
    /// an error and reported by [`load`](Self::load) (and by readiness), and a
    /// `file` secret recovers by itself once the file appears.
    ///
    /// `file` secrets are re-read every `poll` when a tokio runtime is
    /// running; outside one (e.g. `latchkey check`) they are read once.
    pub fn resolve(r: &SecretRef, poll: Duration) -> Self {
        let initial = match r {
            SecretRef::Env(name) => read_env(name),
            // Trimmed as env and file values are (a YAML block scalar ends
            // in a newline).
            SecretRef::Value(v) => usable(v.expose_secret().trim(), "literal value"),
            SecretRef::File(path) => read_file_within(path, watch::READ_TIMEOUT),
        };
        let watcher = match r {
            SecretRef::File(path) => tokio::runtime::Handle::try_current()
                .ok()
                .map(|handle| (handle, path)),
            SecretRef::Env(_) | SecretRef::Value(_) => None,
        };
        let inner = Arc::new(Inner {
            describe: r.describe(),
            version: AtomicU64::new(1),
            current: ArcSwap::from_pointee(initial.map(|v| Arc::new(SecretValue::new(v, 1)))),
            watched: watcher.is_some(),
        });
        if let Some((handle, path)) = watcher {
            handle.spawn(watch::watch_file(
                Arc::downgrade(&inner),
                path.clone(),
                poll,
                read_file,
            ));
        }
        Self { inner }
    }

    /// A fixed secret that never changes (tests, demos, programmatic use).
    pub fn fixed(value: impl Into<String>) -> Self {
        let v: String = value.into();
        Self {
            inner: Arc::new(Inner {
                describe: "fixed value".to_string(),
                version: AtomicU64::new(1),
                current: ArcSwap::from_pointee(Ok(Arc::new(SecretValue::new(v.into(), 1)))),
                watched: false,
            }),
        }
    }

    /// Whether the value can change while this source lives: a `file`
    /// secret, re-read by its watcher. An environment variable or a
    /// literal value (or a file read outside a runtime, by `latchkey
    /// check`) keeps the value it resolved to until a reload resolves the
    /// config's secrets again, into new sources.
    pub fn may_change(&self) -> bool {
        self.inner.watched
    }

    /// The current value. Cheap: one atomic load, no I/O.
    pub fn load(&self) -> Loaded {
        (**self.inner.current.load()).clone()
    }

    /// Where the secret comes from, without its value.
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource")
            .field("from", &self.inner.describe)
            .field("value", &"***")
            .finish()
    }
}

fn read_env(name: &str) -> Result<SecretString, SecretError> {
    env_value(name, std::env::var(name).ok())
}

/// An environment variable's value, trimmed of surrounding whitespace as
/// a file's is: a Kubernetes Secret made with `--from-file` from a file
/// that ends in a newline puts that newline in the variable, and a token
/// with it could never match what a caller presents (callers' tokens are
/// trimmed too) nor be sent in a header.
fn env_value(name: &str, value: Option<String>) -> Result<SecretString, SecretError> {
    match value {
        Some(v) => usable(v.trim(), &format!("environment variable {name}")),
        None => Err(SecretError::EnvMissing(name.to_string())),
    }
}

/// `v` if it can be sent in a header: non-empty and without control
/// characters (as `sendable` in the refresh cache). `what` names the source
/// in the error; the value never appears in it.
fn usable(v: &str, what: &str) -> Result<SecretString, SecretError> {
    if v.is_empty() {
        Err(SecretError::Empty(what.to_string()))
    } else if v.chars().any(char::is_control) {
        Err(SecretError::Unsendable(what.to_string()))
    } else {
        Ok(SecretString::from(v.to_string()))
    }
}

/// The largest `file` secret read (64 KiB): a key, a token or a PEM is far
/// smaller; anything larger is the wrong file (a log, `/dev/zero`), read
/// whole at every poll.
pub const MAX_FILE_SECRET: u64 = 64 << 10;

/// [`read_file`] on a thread of its own, waited for at most `limit`: the
/// first read runs where a config is built (startup, a reload, `latchkey
/// check`), on a runtime thread, and a hung mount would otherwise stop the
/// proxy (with one worker thread, every request and signal) for as long as
/// it hangs. A read that does not answer in time is an error (the secret
/// is unresolved, its watcher keeps trying) and its thread is left to
/// finish.
fn read_file_within(path: &Path, limit: Duration) -> Result<SecretString, SecretError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let owned = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("latchkey-secret-read".into())
        .spawn(move || {
            let _ = tx.send(read_file(&owned));
        });
    if spawned.is_err() {
        return read_file(path);
    }
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        Err(SecretError::File {
            path: path.to_path_buf(),
            reason: format!(
                "not read within {} (a hung mount?)",
                humantime::format_duration(limit)
            ),
        })
    })
}

fn read_file(path: &Path) -> Result<SecretString, SecretError> {
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt as _;
    let failed = |reason: String| SecretError::File {
        path: path.to_path_buf(),
        reason,
    };
    // A FIFO would block the open until a writer comes, for ever.
    let meta = std::fs::metadata(path).map_err(|e| failed(e.kind().to_string()))?;
    if meta.file_type().is_fifo() {
        return Err(failed("a named pipe, not a file".into()));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_SECRET + 1).read_to_string(&mut text))
        .map_err(|e| failed(e.kind().to_string()))?;
    if text.len() as u64 > MAX_FILE_SECRET {
        return Err(failed(format!(
            "larger than {} KiB: not a secret (the wrong file?)",
            MAX_FILE_SECRET >> 10
        )));
    }
    usable(text.trim(), &format!("file {}", path.display()))
}

#[cfg(test)]
mod tests;
