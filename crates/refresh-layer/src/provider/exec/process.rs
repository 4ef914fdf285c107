//! Running the command: in its own process group, with both pipes drained
//! while it runs, and the whole group killed when it exits, overruns its
//! timeout, or the fetch is dropped.
//!
//! The command is done when it exits, not when its stdout closes: a
//! background process it started may hold the pipe open for as long as it
//! lives. What the pipes already hold is read for a short grace, then the
//! rest of the group is killed (a credential helper must not leave processes
//! behind).

use super::redact::Secrets;
use rustix::process::{Pid, Signal, kill_process_group};
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Command;

/// Largest stdout read; an `ExecCredential` is a few KiB at most.
pub(super) const MAX_STDOUT: usize = 1024 * 1024;

/// Longest stderr line logged (longer lines are logged in pieces).
const MAX_STDERR_LINE: usize = 4096;

/// Stderr lines logged per run; the rest is drained unlogged so a chatty
/// command cannot flood the logs (or block on a full pipe).
const MAX_STDERR_LINES: usize = 50;

/// Stderr kept until the command ends (then redacted and logged).
const MAX_STDERR: usize = MAX_STDERR_LINE * MAX_STDERR_LINES;

/// How long the pipes may stay open once the command has exited, before and
/// again after the rest of its process group is killed.
const EXIT_GRACE: Duration = Duration::from_millis(200);

/// How a run ended.
pub(super) enum Outcome {
    /// The command exited (its wait status, or why it could not be waited
    /// for), with what it printed.
    Exited {
        status: io::Result<ExitStatus>,
        stdout: Stdout,
        stderr: Stderr,
    },
    /// The command overran its timeout and was killed with its group,
    /// with what it had printed (stdout may hold a token all the same).
    TimedOut { stdout: Stdout, stderr: Stderr },
}

/// The process group of a spawned command, killed (SIGKILL) at most once:
/// explicitly, or when dropped with the fetch.
struct Group(Option<Pid>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (nobody left in the group) is the usual, good case.
            let _ = kill_process_group(pgid, Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `cmd` as the leader of a new process group and runs it to
/// completion or `timeout`. The error is the spawn's.
pub(super) async fn run(cmd: &mut Command, timeout: Duration) -> io::Result<Outcome> {
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the fetch (the caller gave up) must not leave the command
        // running: the leader is killed and reaped by tokio, and `group`
        // kills the rest.
        .kill_on_drop(true)
        .spawn()?;
    // With `process_group(0)` the group id is the leader's pid. The group
    // outlives the leader's exit (so the id cannot be reused) as long as
    // any member is left, which is when killing it matters.
    let mut group = Group(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw),
    );
    let stdout_pipe = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let mut stdout = Stdout::default();
    let mut stderr = Stderr::default();

    let waited = {
        // Both pipes are drained concurrently with the wait, or a command
        // writing more than a pipe buffer would block forever.
        let pipes = async {
            tokio::join!(stdout.read_from(stdout_pipe), stderr.read_from(stderr_pipe));
        };
        tokio::pin!(pipes);
        let mut pipes_closed = false;
        let waited = tokio::time::timeout(timeout, async {
            tokio::select! {
                status = child.wait() => status,
                () = &mut pipes => {
                    pipes_closed = true;
                    child.wait().await
                }
            }
        })
        .await;
        if !pipes_closed && waited.is_ok() {
            // Exited: a background child may still hold the pipes.
            pipes_closed = tokio::time::timeout(EXIT_GRACE, &mut pipes).await.is_ok();
        }
        if !pipes_closed {
            group.kill();
            // Whatever the killed processes wrote is still in the pipes.
            let _ = tokio::time::timeout(EXIT_GRACE, &mut pipes).await;
        }
        waited
    };
    group.kill();
    match waited {
        Ok(status) => Ok(Outcome::Exited {
            status,
            stdout,
            stderr,
        }),
        Err(_) => {
            // Reap now rather than leave it to kill_on_drop, so no zombie
            // outlives the fetch.
            let _ = child.kill().await;
            Ok(Outcome::TimedOut { stdout, stderr })
        }
    }
}

/// Reads a pipe in chunks; each read is cancel-safe, so what was read before
/// the grace ran out is kept.
async fn read_chunks(pipe: Option<impl AsyncRead + Unpin>, mut keep: impl FnMut(&[u8])) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = [0_u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => keep(chunk.get(..n).unwrap_or_default()),
        }
    }
}

/// Stdout up to [`MAX_STDOUT`]; the rest is drained. Never logged.
#[derive(Default)]
pub(super) struct Stdout {
    buf: Vec<u8>,
    too_large: bool,
    missing: bool,
}

impl Stdout {
    async fn read_from(&mut self, pipe: Option<impl AsyncRead + Unpin>) {
        self.missing = pipe.is_none();
        read_chunks(pipe, |bytes| {
            if self.buf.len() + bytes.len() > MAX_STDOUT {
                self.too_large = true;
            }
            if !self.too_large {
                self.buf.extend_from_slice(bytes);
            }
        })
        .await;
    }

    /// The whole output; the error text never includes what was read.
    pub(super) fn whole(&self) -> Result<&[u8], String> {
        if self.missing {
            Err("stdout was not captured".into())
        } else if self.too_large {
            Err(format!("printed more than {MAX_STDOUT} bytes"))
        } else {
            Ok(&self.buf)
        }
    }

    /// What was read, even when it is not the whole output (the command
    /// timed out, or printed too much): the secrets to cut out of stderr.
    pub(super) fn printed(&self) -> &[u8] {
        &self.buf
    }
}

/// Stderr, kept (capped) until the command ends so that the token it
/// printed can be cut out before anything is logged.
#[derive(Default)]
pub(super) struct Stderr {
    buf: Vec<u8>,
    truncated: bool,
}

impl Stderr {
    async fn read_from(&mut self, pipe: Option<impl AsyncRead + Unpin>) {
        read_chunks(pipe, |bytes| {
            let room = MAX_STDERR.saturating_sub(self.buf.len());
            if bytes.len() > room {
                self.truncated = true;
            }
            self.buf
                .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        })
        .await;
    }

    /// Logs each line at WARN (that is how a plugin's "please log in again"
    /// reaches the operator), with every occurrence of `secrets` replaced by
    /// `[redacted]`; nothing but a note when there are too many secrets to
    /// cut out ([`Secrets::too_many`]).
    pub(super) fn log(mut self, program: &str, secrets: &Secrets) {
        if self.truncated {
            // A secret cut in two by the cap would not be recognised: drop
            // the incomplete last line.
            let end = self.buf.iter().rposition(|&b| b == b'\n').unwrap_or(0);
            self.buf.truncate(end);
        }
        if secrets.too_many() {
            if self.buf.iter().any(|b| !b.is_ascii_whitespace()) || self.truncated {
                tracing::warn!(target: "latchkey::exec", command = %program, "stderr not logged: stdout holds too many words to cut them all out of it");
            }
            return;
        }
        let text = secrets.redact(&String::from_utf8_lossy(&self.buf));
        let mut logged = 0;
        let mut more = self.truncated;
        'lines: for line in text.lines() {
            let mut rest = line.trim_end();
            while !rest.is_empty() {
                if logged == MAX_STDERR_LINES {
                    more = true;
                    break 'lines;
                }
                let (piece, tail) = rest.split_at(floor_char_boundary(rest, MAX_STDERR_LINE));
                tracing::warn!(target: "latchkey::exec", command = %program, line = %piece, "exec credential command stderr");
                logged += 1;
                rest = tail;
            }
        }
        if more {
            tracing::warn!(target: "latchkey::exec", command = %program, "further stderr output not logged");
        }
    }
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}
