//! One JSON file per credential, shared by processes on one host.
//!
//! - `<dir>/<id>.json`: the state, mode 0600. Written to a temp file in the
//!   same directory, fsynced, renamed over the old file, then the directory
//!   is fsynced, so readers and crashes see the old or the new state whole.
//! - `<dir>/<id>.lock`: an advisory lock (`flock`, via `File::lock`) held for
//!   the whole refresh, so two processes never send the same refresh token.
//!
//! Blocking file work runs on tokio's blocking pool.
//!
//! The store's health (readiness, `store_error`, `latchkey_store_up`) is
//! the outcome of the lock, load or save started last: an I/O failure (the
//! directory gone or replaced by a file, a full disk, a stale NFS handle)
//! or a lock wait that ran out says down, with the error (paths, never
//! content); the next operation that succeeds says up again. An unreadable
//! state file is that credential's problem, not the store's: the store
//! answered.

use super::health::Health;
use super::{Store, StoreError, StoreLock};
use crate::token::StoredCredential;
use futures_util::future::{BoxFuture, FutureExt};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Stores credentials as files under one directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    /// See [`FileStore::with_lock_wait`].
    lock_wait: std::time::Duration,
    /// Shared by clones: they are the same store.
    health: Arc<Health>,
}

impl FileStore {
    /// A store under `dir`, created (mode 0700) if missing. An existing
    /// directory open to group or others is closed to 0700 (see
    /// [`restrict`]).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io("create", &dir, &e))?;
        restrict(&dir);
        Ok(Self {
            dir,
            lock_wait: LOCK_WAIT,
            health: Arc::default(),
        })
    }

    /// Waits at most `wait` (default 30 s) for another process's refresh
    /// lock: a holder that hangs (a stopped process, a wedged NFS mount)
    /// must not wedge this process's refreshes for ever. Past it the store
    /// is unavailable for that refresh: a non-rotating grant refreshes
    /// locally, a rotating one fails and backs off.
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// The state file of `id`.
    pub fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Runs one store operation, recording its outcome as the store's
    /// health.
    async fn tracked<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let seq = self.health.begin();
        let result = op.await;
        let health = match &result {
            Err(e @ (StoreError::Io { .. } | StoreError::Unavailable(_))) => Err(e.to_string()),
            // The store answered: a corrupt file is the credential's
            // problem (reported with its refresh), a conflict is not one.
            Ok(_) | Err(StoreError::Corrupt { .. } | StoreError::Conflict { .. }) => Ok(()),
        };
        self.health.end(seq, health);
        result
    }
}

/// Closes `dir` to group and others (0700) if it is open to them: the
/// directory may predate the store (a Kubernetes emptyDir is 0777, one a
/// package made 0755), and any local user who can write to it could
/// replace a state file or hold the refresh lock. Where that fails (the
/// directory belongs to someone else) a warning names it and its mode; the
/// store still works, as the operator may have a reason for the mode.
fn restrict(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(dir) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not read the file store directory's mode");
            return;
        }
    };
    if mode & 0o077 == 0 {
        return;
    }
    let closed = mode & !0o077;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(closed)) {
        tracing::warn!(
            dir = %dir.display(), mode = %format!("{mode:o}"), error = %e,
            "the file store directory is open to other users (group or others may replace a state file or hold a refresh lock) and could not be closed to 0700; restrict it"
        );
    } else {
        tracing::info!(dir = %dir.display(), was = %format!("{mode:o}"), now = %format!("{closed:o}"), "closed the file store directory to its owner");
    }
}

fn io(op: &'static str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io {
        op,
        problem: format!("{}: {e}", path.display()),
    }
}

/// The longest wait for another process's refresh lock by default:
/// refreshes take a token call (bounded by its own timeout, 10 s by
/// default), never this.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a lock held by another process is tried again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(20);

async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            op,
            problem: e.to_string(),
        })?
}

fn read_state(path: &Path) -> Result<Option<StoredCredential>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("load", path, &e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            // serde_json's message names line/column and the kind of problem,
            // never the content.
            problem: e.classify_message(),
        })
}

trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> String {
        let kind = match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "JSON of the wrong shape",
            serde_json::error::Category::Eof => "truncated JSON",
        };
        format!("{kind} at line {} column {}", self.line(), self.column())
    }
}

fn write_state(dir: &Path, path: &Path, state: &StoredCredential) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Io {
        op: "save",
        problem: e.classify_message(),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        // Checked after the slow part, just before the rename: a save
        // that took long enough to be abandoned (a stuck fsync: the
        // refresh went on and released the lock) must not land over a
        // newer state another process has written since. Not atomic (no
        // compare-and-set on a file), but the window is the rename's.
        if let Ok(Some(current)) = read_state(path)
            && current.generation > state.generation
        {
            return Ok(Some(current.generation));
        }
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all().map(|()| None)
    })();
    match result {
        Ok(None) => Ok(()),
        Ok(Some(stored)) => {
            let _ = std::fs::remove_file(&tmp);
            Err(StoreError::Conflict { stored })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(io("save", path, &e))
        }
    }
}

impl Store for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        let path = self.path_of(id);
        self.tracked(blocking("load", move || read_state(&path)))
            .boxed()
    }

    fn peek<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        let path = self.path_of(id);
        blocking("load", move || read_state(&path)).boxed()
    }

    /// Waits at most [`FileStore::with_lock_wait`] for the lock, trying
    /// it (`flock` with `LOCK_NB`) every [`LOCK_POLL`] on a thread of the
    /// blocking pool that gives up when the wait is over: no thread is
    /// left blocked in `flock` behind a holder that hangs, however often
    /// the lock is asked for (each refresh attempt, each write-back check).
    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        let path = self.dir.join(format!("{id}.lock"));
        let wait = self.lock_wait;
        self.tracked(blocking("lock", move || {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io("lock", &path, &e))?;
            let tries = wait.as_millis() / LOCK_POLL.as_millis() + 1;
            for attempt in 0..tries {
                if attempt > 0 {
                    std::thread::sleep(LOCK_POLL);
                }
                match file.try_lock() {
                    // Closing the descriptor (dropping the File) releases it.
                    Ok(()) => return Ok(StoreLock::new(file)),
                    Err(std::fs::TryLockError::WouldBlock) => {}
                    Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", &path, &e)),
                }
            }
            Err(StoreError::Unavailable(format!(
                "{} is held by another process for {}s",
                path.display(),
                wait.as_secs_f64()
            )))
        }))
        .boxed()
    }

    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let path = self.path_of(id);
        let dir = self.dir.clone();
        let state = state.clone();
        self.tracked(blocking("save", move || write_state(&dir, &path, &state)))
            .boxed()
    }

    /// The directory (canonical, so two spellings of one are one).
    fn location(&self) -> Option<String> {
        let dir = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        Some(dir.display().to_string())
    }

    /// The outcome of the lock, load or save started last.
    fn health(&self) -> Result<(), String> {
        self.health.get()
    }
}

#[cfg(test)]
mod tests;
