//! Exec and file providers against real child processes and real files:
//! expiry offsets, stderr redaction, process-group cleanup, environment
//! scrubbing and the token files that are refused.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] fns")]

mod common;

use common::capture_logs;
use proxy_core::config::{ExecConfig, TokenFileConfig};
use refresh_layer::provider::exec::ExecProvider;
use refresh_layer::provider::file::FileTokenProvider;
use refresh_layer::provider::{ProviderError, TokenProvider as _};
use secrecy::ExposeSecret as _;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

fn exec_with_env(script: &str, env: &[(&str, &str)], timeout: Duration) -> ExecProvider {
    ExecProvider::new(&ExecConfig {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: proxy_core::config::PlainValues(
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
        timeout,
    })
}

fn exec(script: &str, timeout: Duration) -> ExecProvider {
    exec_with_env(script, &[], timeout)
}

/// Whether `pid` (read from `pidfile`) is still running (not a zombie).
fn alive(pidfile: &Path) -> (String, bool) {
    let pid = std::fs::read_to_string(pidfile).unwrap().trim().to_owned();
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    if running {
        let _ = std::process::Command::new("kill").arg(&pid).status();
    }
    (pid, running)
}

/// Polls for a moment: a SIGKILLed process needs a little while to go.
async fn gone(pidfile: &Path) -> bool {
    for _ in 0..20 {
        let pid = std::fs::read_to_string(pidfile).unwrap().trim().to_owned();
        let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        if !running {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, running) = alive(pidfile);
    !running
}

fn secs_since_epoch(at: SystemTime) -> i64 {
    i64::try_from(at.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// `now + 1h` as local time at `offset_minutes` east of UTC, with `fraction`
/// (e.g. ".5" or "") before the offset.
fn in_one_hour(offset_minutes: i64, fraction: &str) -> String {
    let local = secs_since_epoch(SystemTime::now()) + 3600 + offset_minutes * 60;
    let utc = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(local as u64));
    let zone = match offset_minutes {
        0 => "Z".to_owned(),
        m => format!(
            "{}{:02}:{:02}",
            if m < 0 { '-' } else { '+' },
            m.abs() / 60,
            m.abs() % 60
        ),
    };
    format!("{}{fraction}{zone}", utc.to_string().trim_end_matches('Z'))
}

fn assert_about_one_hour(ts: &str, left: Option<Duration>) {
    let left = left.unwrap();
    assert!(
        left > Duration::from_secs(3590) && left <= Duration::from_secs(3601),
        "{ts}: expires in {left:?}, should be ~1h"
    );
}

const OFFSETS: [(i64, &str); 5] = [
    (330, ".5"),   // India, Python's isoformat(): was read as UTC (5.5 h late)
    (60, ""),      // `date -Iseconds` in Europe: was refused
    (-480, ""),    // US Pacific, whole seconds: was refused
    (-480, ".25"), // negative offset with a fraction
    (0, ".5"),     // Z with a fraction, as before
];

#[tokio::test]
async fn exec_credential_expiry_offsets_are_applied() {
    for (offset, fraction) in OFFSETS {
        let ts = in_one_hour(offset, fraction);
        let script = format!(
            r#"printf '{{"kind":"ExecCredential","status":{{"token":"t","expirationTimestamp":"{ts}"}}}}'"#
        );
        let res = exec(&script, Duration::from_secs(10)).fetch(None).await;
        assert_about_one_hour(&ts, res.unwrap().expires_in);
    }
}

#[tokio::test]
async fn file_expiry_offsets_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let p = FileTokenProvider::new(&TokenFileConfig {
        path: path.clone(),
        token_field: Some("token".into()),
        expiry_field: Some("exp".into()),
    });
    for (offset, fraction) in OFFSETS {
        let ts = in_one_hour(offset, fraction);
        std::fs::write(&path, format!(r#"{{"token":"t","exp":"{ts}"}}"#)).unwrap();
        assert_about_one_hour(&ts, p.fetch(None).await.unwrap().expires_in);
    }
    // Unix seconds still work, as a number and as text.
    let at = secs_since_epoch(SystemTime::now()) + 3600;
    for exp in [format!("{at}"), format!("\"{at}\""), format!("{at}.5")] {
        std::fs::write(&path, format!(r#"{{"token":"t","exp":{exp}}}"#)).unwrap();
        assert_about_one_hour(&exp, p.fetch(None).await.unwrap().expires_in);
    }
}

#[tokio::test]
async fn token_echoed_on_stderr_is_redacted_from_the_logs() {
    let (logs, _guard) = capture_logs();
    // `sh -x` traces every command, token included, to stderr.
    let p = ExecProvider::new(&ExecConfig {
        command: vec![
            "sh".into(),
            "-xc".into(),
            r#"T=$(echo tok-canary-stderr); echo "please log in again" >&2; echo "debug: token=$T." >&2; printf '{"access_token":"%s"}' "$T""#.into(),
        ],
        env: Default::default(),
        timeout: Duration::from_secs(10),
    });
    let token = p.fetch(None).await.unwrap();
    assert_eq!(token.access_token.expose_secret(), "tok-canary-stderr");
    let text = logs.text();
    assert!(
        !text.contains("tok-canary-stderr"),
        "token in logs:\n{text}"
    );
    assert!(text.contains("debug: token=[redacted]."), "{text}");
    assert!(text.contains("please log in again"), "{text}");
}

#[tokio::test]
async fn stderr_is_logged_when_the_output_is_unusable() {
    let (logs, _guard) = capture_logs();
    let err = exec(
        r#"echo "login expired, run: login" >&2; echo 'not json'; exit 1"#,
        Duration::from_secs(10),
    )
    .fetch(None)
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::Exec { .. }), "{err:?}");
    let text = logs.text();
    assert!(text.contains("login expired, run: login"), "{text}");
}

#[tokio::test]
async fn stderr_of_a_failing_command_that_printed_a_token_is_redacted() {
    let (logs, _guard) = capture_logs();
    let err = exec(
        r#"echo "got tok-canary-fail" >&2; echo '{"access_token":"tok-canary-fail"}'; exit 3"#,
        Duration::from_secs(10),
    )
    .fetch(None)
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::Exec { .. }), "{err:?}");
    let text = logs.text();
    assert!(!text.contains("tok-canary-fail"), "{text}");
    assert!(text.contains("got [redacted]"), "{text}");
}

#[tokio::test]
async fn chatty_stderr_is_capped() {
    let (logs, _guard) = capture_logs();
    let script = r#"i=0; while [ $i -lt 2000 ]; do echo "noise $i" >&2; i=$((i+1)); done; echo '{"access_token":"x"}'"#;
    exec(script, Duration::from_secs(10))
        .fetch(None)
        .await
        .unwrap();
    let text = logs.text();
    assert!(text.contains("noise 49"), "{text}");
    assert!(!text.contains("noise 50"), "{text}");
    assert!(text.contains("further stderr output not logged"), "{text}");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let err = exec(&script, Duration::from_millis(500))
        .fetch(None)
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::Timeout(Duration::from_millis(500)));
    assert!(gone(&pidfile).await, "grandchild outlived the timeout");
}

#[tokio::test]
async fn dropped_fetch_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let p = exec(&script, Duration::from_secs(20));
    // The caller gives up long before the command's own timeout.
    let res = tokio::time::timeout(Duration::from_millis(500), p.fetch(None)).await;
    assert!(res.is_err());
    assert!(
        gone(&pidfile).await,
        "grandchild outlived the dropped fetch"
    );
}

#[tokio::test]
async fn exit_with_a_background_child_holding_stdout_is_a_success() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!(
        r#"sleep 30 & echo $! > {}; printf '{{"access_token":"tok"}}'; exit 0"#,
        pidfile.display()
    );
    let started = Instant::now();
    let res = exec(&script, Duration::from_secs(3)).fetch(None).await;
    let took = started.elapsed();
    let survived = !gone(&pidfile).await;
    assert_eq!(res.unwrap().access_token.expose_secret(), "tok");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!survived, "background child outlived the fetch");
}

#[tokio::test]
async fn removed_variables_are_not_inherited_but_explicit_env_wins() {
    // Cargo sets this for the test process; the child inherits it unless
    // removed.
    assert!(std::env::var("CARGO_PKG_NAME").is_ok());
    let script = r#"printf '{"access_token":"%s-%s"}' "${CARGO_PKG_NAME:-absent}" "${CARGO_MANIFEST_DIR:+set}""#;
    let inherited = exec(script, Duration::from_secs(10))
        .fetch(None)
        .await
        .unwrap();
    assert_eq!(inherited.access_token.expose_secret(), "refresh-layer-set");

    let removed = exec(script, Duration::from_secs(10))
        .without_env(["CARGO_PKG_NAME".to_owned()])
        .without_env(["NOT_SET_ANYWAY"])
        .fetch(None)
        .await
        .unwrap();
    assert_eq!(removed.access_token.expose_secret(), "absent-set");

    let explicit = exec_with_env(
        script,
        &[("CARGO_PKG_NAME", "from-config")],
        Duration::from_secs(10),
    )
    .without_env(["CARGO_PKG_NAME"])
    .fetch(None)
    .await
    .unwrap();
    assert_eq!(explicit.access_token.expose_secret(), "from-config-set");
    let p = exec(script, Duration::from_secs(1)).without_env(["CARGO_PKG_NAME"]);
    assert!(format!("{p:?}").contains("CARGO_PKG_NAME"));
}

#[tokio::test]
async fn a_token_file_that_is_not_a_regular_file_is_refused_and_the_held_token_stays() {
    use proxy_core::CredentialSource as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "good\n").unwrap();
    let provider = FileTokenProvider::new(&TokenFileConfig {
        path: path.clone(),
        token_field: None,
        expiry_field: None,
    })
    .with_read_timeout(Duration::from_millis(300));
    let src = refresh_layer::RefreshingSource::new(
        "f",
        Arc::new(provider),
        Arc::new(refresh_layer::store::MemoryStore::new()),
        refresh_layer::RefreshSettings::default(),
    );
    assert_eq!(src.get().await.unwrap().expose(), "good");

    // A FIFO nobody writes would block open() for ever: it is refused
    // without being opened.
    std::fs::remove_file(&path).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success()
    );
    let res = tokio::time::timeout(Duration::from_secs(3), src.refresh_now()).await;
    // Were it opened, a thread would be stuck in open() and the runtime
    // would wait for it at the end: a writer (left running if nothing
    // reads) makes that a failure, not a hang.
    let fifo = path.clone();
    drop(std::thread::spawn(move || {
        drop(std::fs::OpenOptions::new().write(true).open(fifo))
    }));
    let err = res
        .expect("file fetch still blocked after 3 s")
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string())
            && text.contains("is a named pipe, not a regular file"),
        "{text}"
    );
    assert_eq!(src.get().await.unwrap().expose(), "good");
}
