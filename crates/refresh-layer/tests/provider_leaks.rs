//! Exec and file providers on their failure paths, against real child
//! processes and real files: the token an exec command printed stays out of
//! the logged stderr however the command ends, and a token file that cannot
//! be read does not cost a blocked thread per refresh attempt.
//!
//! The tests run one at a time ([`SERIAL`]): one counts this process'
//! threads.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use common::capture_logs;
use proxy_core::config::{ExecConfig, TokenFileConfig};
use refresh_layer::provider::exec::ExecProvider;
use refresh_layer::provider::file::FileTokenProvider;
use refresh_layer::provider::{ProviderError, TokenProvider as _};
use secrecy::ExposeSecret as _;
use std::time::Duration;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `sh -xc SCRIPT`: the shell traces every command, token included, to
/// stderr.
fn traced(script: &str, timeout: Duration) -> ExecProvider {
    ExecProvider::new(&ExecConfig {
        command: vec!["sh".into(), "-xc".into(), script.into()],
        env: Default::default(),
        timeout,
    })
}

/// The wrapper prints the token, then hangs (a cleanup step stuck on the
/// network) and is killed at its timeout: what it had printed is still cut
/// out of the stderr logged, whether stdout is JSON, JSON cut short or a
/// raw token.
#[tokio::test]
async fn exec_timeout_after_printing_token_does_not_log_it() {
    let _serial = SERIAL.lock().await;
    for (token, print) in [
        (
            "tok-canary-timeout",
            r#"printf '{"access_token":"%s"}' "$T""#,
        ),
        (
            "tok-canary-cut-short",
            r#"printf '{"access_token":"%s' "$T""#,
        ),
        ("tok-canary-raw", r#"echo "$T""#),
    ] {
        let (logs, _guard) = capture_logs();
        // Real time (a real process; a paused clock would fire the
        // timeout while the shell starts): 1.5 s leaves a loaded machine
        // ample time to print before the kill.
        let script = format!("T=$(echo {token}); {print}; sleep 30");
        let err = traced(&script, Duration::from_millis(1500))
            .fetch(None)
            .await
            .unwrap_err();
        assert_eq!(err, ProviderError::Timeout(Duration::from_millis(1500)));
        let text = logs.text();
        assert!(!text.contains(token), "token in logs:\n{text}");
        assert!(text.contains("+ T=[redacted]"), "{text}");
        assert!(text.contains("sleep 30"), "stderr not logged:\n{text}");
    }
}

/// The wrapper prints the token with a malformed `expires_in`: the output
/// does not parse, and the token is cut out of stderr all the same.
#[tokio::test]
async fn exec_malformed_output_does_not_log_the_token_from_stderr() {
    let _serial = SERIAL.lock().await;
    let (logs, _guard) = capture_logs();
    let p = traced(
        r#"T=$(echo tok-canary-malformed); echo "please log in again" >&2; printf '{"access_token":"%s","expires_in":"1h"}' "$T""#,
        Duration::from_secs(10),
    );
    let err = p.fetch(None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Exec { .. }), "{err:?}");
    assert!(!err.to_string().contains("canary"), "{err}");
    let text = logs.text();
    assert!(
        !text.contains("tok-canary-malformed"),
        "token in logs:\n{text}"
    );
    assert!(text.contains("+ T=[redacted]"), "{text}");
    assert!(text.contains("please log in again"), "{text}");
}

/// Success: the parsed token is cut out whatever its length (this one is
/// shorter than the words taken from unparsed output), and the rest of
/// stderr is logged as printed.
#[tokio::test]
async fn exec_success_still_redacts_the_token_and_logs_the_rest() {
    let _serial = SERIAL.lock().await;
    let (logs, _guard) = capture_logs();
    let p = traced(
        r#"T=$(echo tk9); echo "please log in again" >&2; printf '{"kind":"ExecCredential","status":{"token":"%s"}}' "$T""#,
        Duration::from_secs(10),
    );
    let token = p.fetch(None).await.unwrap();
    assert_eq!(token.access_token.expose_secret(), "tk9");
    let text = logs.text();
    assert!(!text.contains("tk9"), "token in logs:\n{text}");
    assert!(text.contains("+ T=[redacted]"), "{text}");
    assert!(text.contains("please log in again"), "{text}");
}

/// Stdout with more words than can be cut out (a usage text, pages of
/// output): stderr is not logged, a note says so.
#[tokio::test]
async fn exec_stdout_too_wordy_to_redact_keeps_stderr_out_of_the_logs() {
    let _serial = SERIAL.lock().await;
    let (logs, _guard) = capture_logs();
    let p = traced(
        r#"seq 100000 102000; echo "token tok-canary-wordy"; echo "login expired" >&2; exit 1"#,
        Duration::from_secs(10),
    );
    let err = p.fetch(None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Exec { .. }), "{err:?}");
    let text = logs.text();
    assert!(!text.contains("tok-canary-wordy"), "token in logs:\n{text}");
    assert!(!text.contains("login expired"), "{text}");
    assert!(text.contains("stderr not logged"), "{text}");
}

/// This process' tokio threads (workers and blocking pool; the kernel
/// keeps 15 bytes of a name): the test harness' own threads come and go
/// as other tests start and end.
fn tokio_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|task| {
            let comm = std::fs::read_to_string(task.as_ref().unwrap().path().join("comm"));
            comm.is_ok_and(|name| name.starts_with("tokio-runtime-w"))
        })
        .count()
}

/// Ends any open() of a FIFO still blocked (a regression), so that the
/// runtime, which waits for its blocking threads, does not hang the test:
/// writers are started, left running if nothing reads.
struct UnblockFifo(std::path::PathBuf);

impl Drop for UnblockFifo {
    fn drop(&mut self) {
        for _ in 0..25 {
            let fifo = self.0.clone();
            drop(std::thread::spawn(move || {
                drop(std::fs::OpenOptions::new().write(true).open(fifo))
            }));
        }
    }
}

/// A named pipe (as a hung mount, it would block the open until a writer
/// comes) is refused by name without being opened: 20 failed refresh
/// attempts leave no thread behind. (A read that does hang is waited for
/// by one thread at most: `a_stuck_read_is_not_piled_up` in the provider's
/// unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn file_provider_hung_reads_do_not_pile_up_threads() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success()
    );
    let _unblock = UnblockFifo(path.clone());
    let provider = FileTokenProvider::new(&TokenFileConfig {
        path: path.clone(),
        token_field: None,
        expiry_field: None,
    })
    .with_read_timeout(Duration::from_millis(100));
    // Warm the blocking pool.
    tokio::task::spawn_blocking(|| ()).await.unwrap();
    let before = tokio_threads();
    for _ in 0..20 {
        let err = provider.fetch(None).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "token file {}: is a named pipe, not a regular file: refused without reading it",
                path.display()
            )
        );
    }
    let after = tokio_threads();
    // A pool thread may not be idle again yet when the next read is
    // spawned: a little slack, where a blocked open per attempt is 20.
    assert!(
        after <= before + 2,
        "20 failed reads left {} more threads ({before} -> {after})",
        after.saturating_sub(before)
    );
}
