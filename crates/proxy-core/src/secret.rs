//! Secret references and the values behind them.
//!
//! Config names a secret as `{ env: NAME }`, `{ file: PATH }` or
//! `{ value: "..." }` ([`SecretRef`]). At startup each reference becomes a
//! [`SecretSource`]: `env` and `value` are read once; `file` is read at once and
//! then re-read every poll interval so a rewritten file (a Kubernetes Secret
//! volume swaps a `..data` symlink) is picked up without a restart. The hot path
//! only loads an `Arc` from an [`ArcSwap`]; it never touches the filesystem.
//!
//! Nothing here prints a secret value: [`SecretRef`], [`SecretValue`] and
//! [`SecretError`] all keep values out of `Debug` and `Display`.

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

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

fn de_secret_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
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

/// Why a secret could not be read. Never contains the value.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The environment variable is not set (or not valid UTF-8).
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The secret resolved to an empty string.
    #[error("{0} is empty")]
    Empty(String),
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
            SecretRef::Value(v) => non_empty(v.expose_secret(), "literal value"),
            SecretRef::File(path) => read_file(path),
        };
        let inner = Arc::new(Inner {
            describe: r.describe(),
            version: AtomicU64::new(1),
            current: ArcSwap::from_pointee(initial.map(|v| Arc::new(SecretValue::new(v, 1)))),
        });
        if let SecretRef::File(path) = r
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(watch_file(Arc::downgrade(&inner), path.clone(), poll));
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
            }),
        }
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
        Some(v) => non_empty(v.trim(), &format!("environment variable {name}")),
        None => Err(SecretError::EnvMissing(name.to_string())),
    }
}

fn non_empty(v: &str, what: &str) -> Result<SecretString, SecretError> {
    if v.is_empty() {
        Err(SecretError::Empty(what.to_string()))
    } else {
        Ok(SecretString::from(v.to_string()))
    }
}

fn read_file(path: &Path) -> Result<SecretString, SecretError> {
    match std::fs::read_to_string(path) {
        Ok(s) => non_empty(s.trim(), &format!("file {}", path.display())),
        Err(e) => Err(SecretError::File {
            path: path.to_path_buf(),
            reason: e.kind().to_string(),
        }),
    }
}

/// Re-reads `path` every `poll` until the source is dropped.
///
/// Reading a small file once a second is cheaper and more robust than
/// filesystem notifications, which miss Kubernetes' symlink swaps on some
/// kernels and overlay filesystems.
async fn watch_file(weak: Weak<Inner>, path: PathBuf, poll: Duration) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        // A secret file is a few hundred bytes on a local (usually tmpfs)
        // volume: reading it inline costs microseconds once a second, and
        // keeps the watcher on the runtime's clock (paused-clock tests).
        let read = read_file(&path);
        let current = inner.current.load();
        match (read, current.as_ref()) {
            (Ok(new), Ok(old)) if new.expose_secret() == old.expose() => {}
            (Ok(new), _) => {
                let version = inner.version.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::info!(secret = %inner.describe, version, "secret file changed; new value loaded");
                inner
                    .current
                    .store(Arc::new(Ok(Arc::new(SecretValue::new(new, version)))));
            }
            // Keep serving the last good value: a file that vanishes for a
            // moment (or for good) must not drop a working credential.
            (Err(e), Ok(_)) => {
                tracing::warn!(secret = %inner.describe, error = %e, "secret file unreadable; keeping the last value read");
            }
            (Err(e), Err(old)) => {
                if &e != old {
                    inner.current.store(Arc::new(Err(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_literal() {
        let r = SecretRef::Value(SecretString::from("hunter2-canary".to_string()));
        assert!(!format!("{r:?}").contains("hunter2"));
        let s = SecretSource::resolve(&r, DEFAULT_FILE_POLL_INTERVAL);
        assert!(!format!("{s:?}").contains("hunter2"));
        let v = s.load().unwrap();
        assert!(!format!("{v:?}").contains("hunter2"));
        assert_eq!(v.expose(), "hunter2-canary");
    }

    #[test]
    fn missing_env_is_an_error_naming_the_variable() {
        let r = SecretRef::Env("LATCHKEY_TEST_SURELY_UNSET_VAR".into());
        let err = SecretSource::resolve(&r, DEFAULT_FILE_POLL_INTERVAL)
            .load()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable LATCHKEY_TEST_SURELY_UNSET_VAR is not set"
        );
    }

    #[test]
    fn env_values_are_trimmed_like_file_values() {
        let v = env_value("TOKEN", Some("client-tok\n".into())).unwrap();
        assert_eq!(v.expose_secret(), "client-tok");
        let v = env_value("TOKEN", Some(" \tkey with inner space\r\n".into())).unwrap();
        assert_eq!(v.expose_secret(), "key with inner space");
        let err = env_value("TOKEN", Some(" \n".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            SecretError::Empty("environment variable TOKEN".into()).to_string()
        );
        assert!(matches!(
            env_value("TOKEN", None),
            Err(SecretError::EnvMissing(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn file_secret_follows_rewrites_and_keeps_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first\n").unwrap();
        let src = SecretSource::resolve(&SecretRef::File(path.clone()), Duration::from_secs(1));
        assert_eq!(src.load().unwrap().expose(), "first");
        assert_eq!(src.load().unwrap().version(), 1);

        std::fs::write(&path, "second").unwrap();
        wait_for(&src, |v| v.expose() == "second").await;
        assert_eq!(src.load().unwrap().version(), 2);

        std::fs::remove_file(&path).unwrap();
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(src.load().unwrap().expose(), "second");
    }

    async fn wait_for(src: &SecretSource, f: impl Fn(&SecretValue) -> bool) {
        for _ in 0..100 {
            if src.load().map(|v| f(&v)).unwrap_or(false) {
                return;
            }
            tokio::time::advance(Duration::from_millis(500)).await;
            tokio::task::yield_now().await;
        }
        panic!("secret never changed");
    }
}
