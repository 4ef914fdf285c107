//! The `file` secret watcher: re-reads the file every poll interval and
//! swaps in a changed value, keeping the last good one while the file is
//! missing, unreadable, empty or holds a value that cannot be sent.
//!
//! Reads run on the blocking pool, bounded by [`READ_TIMEOUT`]: a read that
//! hangs (a stuck NFS or FUSE mount, a FIFO swapped in) must not stall the
//! runtime, which may have a single worker thread. At most one read is
//! outstanding per secret, so a read that never returns costs one blocked
//! thread, not one more per poll.
//!
//! Failures are logged on the first poll that fails, then at most once per
//! [`REWARN_EVERY`] with the number of failed polls, and at info when the
//! file is usable again: a file gone for good must not log every second.

use super::{Inner, SecretError, SecretValue};
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long one read may take before the poll counts as failed. A secret
/// file is a few hundred bytes, usually on tmpfs: anything near this is
/// a hung filesystem.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a failure that lasts is logged again.
pub(super) const REWARN_EVERY: Duration = Duration::from_secs(60);

type Read = Result<SecretString, SecretError>;

/// Re-reads `path` with `read` every `poll` until the source is dropped.
///
/// Reading a small file once a second is cheaper and more robust than
/// filesystem notifications, which miss Kubernetes' symlink swaps on some
/// kernels and overlay filesystems.
pub(super) async fn watch_file<F>(weak: Weak<Inner>, path: PathBuf, poll: Duration, read: F)
where
    F: Fn(&Path) -> Read + Clone + Send + 'static,
{
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut outstanding = None;
    let mut failures = Failures::default();
    loop {
        tick.tick().await;
        if weak.strong_count() == 0 {
            return;
        }
        let result = read_once(&path, &read, &mut outstanding).await;
        // Not held across the read: a source dropped meanwhile ends the task.
        let Some(inner) = weak.upgrade() else { return };
        apply(&inner, result, &mut failures, Instant::now());
    }
}

/// One bounded read on the blocking pool. A read that times out stays in
/// `outstanding`; later polls fail at once, without starting another read,
/// until it returns.
async fn read_once<F>(path: &Path, read: &F, outstanding: &mut Option<JoinHandle<Read>>) -> Read
where
    F: Fn(&Path) -> Read + Clone + Send + 'static,
{
    let mut handle = match outstanding.take() {
        Some(stuck) if !stuck.is_finished() => {
            *outstanding = Some(stuck);
            return Err(file_error(path, "an earlier read has not returned"));
        }
        // A read that timed out and has returned since is dropped unread:
        // the file may have changed, read it afresh.
        _ => {
            let (read, path) = (read.clone(), path.to_path_buf());
            tokio::task::spawn_blocking(move || read(&path))
        }
    };
    match tokio::time::timeout(READ_TIMEOUT, &mut handle).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(file_error(path, "the read failed")),
        Err(_) => {
            *outstanding = Some(handle);
            Err(file_error(
                path,
                &format!(
                    "the read did not finish within {}",
                    humantime::format_duration(READ_TIMEOUT)
                ),
            ))
        }
    }
}

fn file_error(path: &Path, reason: &str) -> SecretError {
    SecretError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Publishes a changed value; on a failed read keeps the last good one.
fn apply(inner: &Inner, read: Read, failures: &mut Failures, now: Instant) {
    let current = inner.current.load();
    match (read, current.as_ref()) {
        (Ok(new), Ok(old)) if new.expose_secret() == old.expose() => {
            failures.recovered(&inner.describe);
        }
        (Ok(new), _) => {
            failures.recovered(&inner.describe);
            let version = inner.version.fetch_add(1, Ordering::AcqRel) + 1;
            tracing::info!(secret = %inner.describe, version, "secret file changed; new value loaded");
            inner
                .current
                .store(Arc::new(Ok(Arc::new(SecretValue::new(new, version)))));
        }
        // Keep serving the last good value: a file that vanishes for a
        // moment (or for good), or is rewritten with a value that cannot be
        // sent, must not drop a working credential.
        (Err(e), Ok(_)) => failures.failed(&inner.describe, &e, now),
        // Never loaded: the error is what readiness and requests report.
        (Err(e), Err(old)) => {
            if &e != old {
                inner.current.store(Arc::new(Err(e)));
            }
        }
    }
}

/// Rate limits the warnings of a run of failed polls.
#[derive(Default)]
struct Failures {
    run: Option<Run>,
}

struct Run {
    /// Failed polls in this run.
    total: u64,
    /// Failed polls since the last warning.
    unlogged: u64,
    last_logged: Instant,
}

impl Failures {
    fn failed(&mut self, secret: &str, error: &SecretError, now: Instant) {
        match &mut self.run {
            None => {
                tracing::warn!(
                    secret,
                    %error,
                    "secret file unusable; keeping the last good value (logged again at most once a minute while this lasts)"
                );
                self.run = Some(Run {
                    total: 1,
                    unlogged: 0,
                    last_logged: now,
                });
            }
            Some(run) => {
                run.total += 1;
                run.unlogged += 1;
                if now.duration_since(run.last_logged) >= REWARN_EVERY {
                    tracing::warn!(
                        secret,
                        %error,
                        failed_polls = run.total,
                        failed_polls_since_last_warning = run.unlogged,
                        "secret file still unusable; keeping the last good value"
                    );
                    run.unlogged = 0;
                    run.last_logged = now;
                }
            }
        }
    }

    fn recovered(&mut self, secret: &str) {
        if let Some(run) = self.run.take() {
            tracing::info!(secret, failed_polls = run.total, "secret file usable again");
        }
    }
}
