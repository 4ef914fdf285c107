//! Unit tests for secret references, values and the `file` watcher.

use super::*;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Only a watched `file` secret can change while its source lives: a
/// literal, an environment variable (even one that is not set) and a file
/// read outside a runtime keep what they resolved to. The 401 retry is
/// left out of routes whose static key cannot change (`can_change`).
#[test]
fn only_a_watched_file_may_change() {
    let poll = DEFAULT_FILE_POLL_INTERVAL;
    let value = SecretRef::Value(SecretString::from("literal-key".to_string()));
    assert!(!SecretSource::resolve(&value, poll).may_change());
    assert!(!SecretSource::fixed("fixed-key").may_change());
    // Set in every test environment; and one that is surely not set.
    let set = SecretRef::Env("PATH".into());
    assert!(!SecretSource::resolve(&set, poll).may_change());
    let unset = SecretRef::Env("LATCHKEY_TEST_SURELY_UNSET_VAR".into());
    assert!(!SecretSource::resolve(&unset, poll).may_change());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "file-key\n").unwrap();
    let file = SecretRef::File(path);
    // Outside a runtime (`latchkey check`): read once, never again.
    assert!(!SecretSource::resolve(&file, poll).may_change());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let watched = SecretSource::resolve(&file, poll);
        assert!(watched.may_change());
        let static_source = crate::credential::StaticSource::new("k", watched);
        assert!(crate::credential::CredentialSource::can_change(
            &static_source
        ));
    });
    let fixed = crate::credential::StaticSource::new("k", SecretSource::fixed("fixed-key"));
    assert!(!crate::credential::CredentialSource::can_change(&fixed));
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

/// A literal is trimmed as an env or file value is: a YAML block scalar
/// (`value: |`) ends in a newline, and a stray space would make a client
/// token that no caller's (trimmed) token matches. One that is only
/// whitespace is empty.
#[test]
fn literal_values_are_trimmed_like_env_and_file_values() {
    let literal = |v: &str| {
        SecretSource::resolve(
            &SecretRef::Value(SecretString::from(v.to_string())),
            Duration::from_secs(1),
        )
        .load()
    };
    for v in ["sk_live_abc\n", "sk_live_abc ", " \tsk_live_abc\r\n"] {
        let got = literal(v).unwrap();
        assert_eq!(got.expose(), "sk_live_abc", "{v:?}");
    }
    let err = literal("  ").unwrap_err();
    assert_eq!(
        err.to_string(),
        SecretError::Empty("literal value".into()).to_string()
    );
    assert!(
        literal("two\nlines").is_err(),
        "a line break inside stays refused"
    );
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
    tick(6).await;
    assert_eq!(src.load().unwrap().expose(), "second");
}

async fn wait_for(src: &SecretSource, f: impl Fn(&SecretValue) -> bool) {
    for _ in 0..100 {
        if src.load().map(|v| f(&v)).unwrap_or(false) {
            return;
        }
        tick(1).await;
    }
    panic!("secret never changed");
}

/// Lets `n` half seconds pass on the paused clock. A sleep, not
/// `advance`: the clock auto-advances only while no read is running on the
/// blocking pool, so every poll's read completes before the next poll.
async fn tick(n: u32) {
    for _ in 0..n {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// === control characters (a value that cannot be sent in a header) ===

#[test]
fn control_characters_are_refused_without_echoing_the_value() {
    let e = env_value("TOKEN", Some("canary-one\ncanary-two\n".into())).unwrap_err();
    assert_eq!(
        e,
        SecretError::Unsendable("environment variable TOKEN".into())
    );
    assert!(!e.to_string().contains("canary"), "{e}");
    assert!(!format!("{e:?}").contains("canary"));
    assert!(env_value("TOKEN", Some("a\tb".into())).is_err());
    assert!(env_value("TOKEN", Some("a\u{7f}b".into())).is_err());
    // Surrounding whitespace is still trimmed, inner spaces still allowed.
    let v = env_value("TOKEN", Some("\r\n key with space \r\n".into())).unwrap();
    assert_eq!(v.expose_secret(), "key with space");

    let r = SecretRef::Value(SecretString::from("canary\u{0}x".to_string()));
    let e = SecretSource::resolve(&r, DEFAULT_FILE_POLL_INTERVAL)
        .load()
        .unwrap_err();
    assert_eq!(e, SecretError::Unsendable("literal value".into()));
    assert!(!e.to_string().contains("canary"));
}

/// At startup a two-line file is an error naming the file, not the value.
#[test]
fn a_multi_line_file_is_refused_at_startup_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(
        &path,
        "-----BEGIN canary-----\nMIIB\n-----END canary-----\n",
    )
    .unwrap();
    let e = SecretSource::resolve(&SecretRef::File(path.clone()), DEFAULT_FILE_POLL_INTERVAL)
        .load()
        .unwrap_err();
    assert_eq!(
        e,
        SecretError::Unsendable(format!("file {}", path.display()))
    );
    assert!(!e.to_string().contains("canary"), "{e}");
    assert!(!e.to_string().contains("MIIB"), "{e}");
}

/// A file far larger than any secret (the wrong file, `/dev/zero`) is read
/// no further than the cap and refused by name; a named pipe is refused
/// without waiting for a writer. A file of exactly the cap is read.
#[test]
fn oversized_files_and_pipes_are_refused_without_reading_them_whole() {
    let load = |path: &std::path::Path| {
        SecretSource::resolve(
            &SecretRef::File(path.to_path_buf()),
            DEFAULT_FILE_POLL_INTERVAL,
        )
        .load()
    };
    let e = load(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(e.to_string().contains("larger than 64 KiB"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    let cap = usize::try_from(MAX_FILE_SECRET).unwrap();
    std::fs::write(&big, "k".repeat(cap + 1)).unwrap();
    assert!(load(&big).unwrap_err().to_string().contains("larger than"));
    std::fs::write(&big, "k".repeat(cap)).unwrap();
    assert_eq!(load(&big).unwrap().expose().len(), cap);

    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let e = load(&fifo).unwrap_err();
    assert!(e.to_string().contains("named pipe"), "{e}");
}

/// A rewrite that cannot be sent (a rotation tool that appends the new key
/// on a second line) keeps the last good value; the next good rewrite is
/// loaded. The warning names the file, never the value.
#[tokio::test(start_paused = true)]
async fn an_unsendable_rewrite_keeps_the_last_good_value() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "good-key\n").unwrap();
    let src = SecretSource::resolve(&SecretRef::File(path.clone()), Duration::from_secs(1));
    assert_eq!(src.load().unwrap().expose(), "good-key");

    std::fs::write(&path, "canary-new\ncanary-old\n").unwrap();
    tick(6).await;
    let v = src.load().unwrap();
    assert_eq!((v.expose(), v.version()), ("good-key", 1));
    assert_eq!(logs.count(tracing::Level::WARN, "unusable"), 1);
    assert!(logs.all().contains("control character"), "{}", logs.all());

    std::fs::write(&path, "next-key\r\n").unwrap();
    wait_for(&src, |v| v.expose() == "next-key").await;
    assert_eq!(src.load().unwrap().version(), 2);
    assert_eq!(logs.count(tracing::Level::INFO, "usable again"), 1);
    assert!(!logs.all().contains("canary"), "{}", logs.all());
}

/// Kubernetes Secret volume update: `..data` symlink swapped by rename, old
/// timestamped dir removed; a same-size rewrite is seen (content compared,
/// not mtime); a truncated file keeps the last value.
#[tokio::test(start_paused = true)]
async fn kubernetes_symlink_swap_and_truncation() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/key"), "one\n").unwrap();
    symlink("..v1", d.join("..data")).unwrap();
    symlink("..data/key", d.join("key")).unwrap();
    let src = SecretSource::resolve(&SecretRef::File(d.join("key")), Duration::from_secs(1));
    assert_eq!(src.load().unwrap().expose(), "one");
    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/key"), "two\n").unwrap();
    symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..v1")).unwrap();
    tick(4).await;
    assert_eq!(src.load().unwrap().expose(), "two");
    assert_eq!(src.load().unwrap().version(), 2);
    std::fs::write(d.join("..v2/key"), "six\n").unwrap();
    tick(4).await;
    assert_eq!(src.load().unwrap().expose(), "six");
    std::fs::write(d.join("..v2/key"), "").unwrap();
    tick(4).await;
    assert_eq!(src.load().unwrap().expose(), "six");
    std::fs::write(d.join("..v2/key"), "ten\r\n").unwrap();
    tick(4).await;
    assert_eq!(src.load().unwrap().expose(), "ten");
    std::fs::remove_dir_all(d.join("..v2")).unwrap();
    tick(4).await;
    assert_eq!(src.load().unwrap().expose(), "ten");
}

// === reads off the runtime thread ===

/// A read that blocks (a hung NFS or FUSE mount; here a FIFO nobody writes
/// to, swapped in) must not stall the runtime: the shipped Deployment runs
/// one worker thread. A timer on the same current-thread runtime still fires
/// on time.
#[test]
fn a_blocked_read_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "one").unwrap();
    let fifo = dir.path().join("fifo");
    let fifo_link = dir.path().join("fifo-link");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::hard_link(&fifo, &fifo_link).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let src =
                SecretSource::resolve(&SecretRef::File(p.clone()), Duration::from_millis(100));
            std::fs::rename(&fifo, &p).unwrap();
            let start = tokio::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = tx.send(start.elapsed());
            assert_eq!(src.load().unwrap().expose(), "one");
        });
    });
    let slept = rx.recv_timeout(Duration::from_secs(10));
    // Unstick the blocked open: a regular file for any later read, then a
    // read-write open of the FIFO (never blocks on Linux) as the writer.
    std::fs::write(dir.path().join("regular"), "one").unwrap();
    std::fs::rename(dir.path().join("regular"), &path).unwrap();
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo_link)
            .unwrap(),
    );
    worker.join().unwrap();
    let slept = slept.expect("a 500 ms sleep on the runtime did not finish in 10 s");
    // (The stall this guards against never ends: the timeout above
    // catches it; no bound on how fast a loaded machine wakes.)
    let _ = slept;
}

/// The first read (startup, a reload, `latchkey check`) runs where the
/// config is built, on a runtime thread: one that hangs (a wedged mount;
/// `/dev/ptmx`, which passes the pipe check and whose read blocks, stands
/// in) is given up after the limit, with an error naming the file. Before,
/// it held the thread (with one worker, the whole proxy) for as long as it
/// hung.
#[test]
fn a_first_read_that_hangs_is_given_up() {
    let ptmx = Path::new("/dev/ptmx");
    assert!(ptmx.exists(), "this test needs /dev/ptmx");
    let got = read_file_within(ptmx, Duration::from_millis(200));
    let err = got.expect_err("a hung read is an error").to_string();
    assert!(
        err.contains("not read within 200ms") && err.contains("/dev/ptmx"),
        "{err}"
    );
}

/// A read that never returns times out (the last value is kept, a warning
/// is logged) and ties up one blocking thread, not one more per poll; once
/// it returns, polling resumes.
#[tokio::test(start_paused = true)]
async fn a_stuck_read_times_out_and_is_not_piled_up() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.clone());
    let inner = Arc::new(Inner {
        describe: "file /stuck".into(),
        version: AtomicU64::new(1),
        current: ArcSwap::from_pointee(Ok(Arc::new(SecretValue::new("old".to_string().into(), 1)))),
        watched: true,
    });
    let started = Arc::new(AtomicUsize::new(0));
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let read = {
        let started = started.clone();
        move |_: &Path| {
            started.fetch_add(1, Ordering::SeqCst);
            let _ = released.lock().unwrap().recv();
            Ok(SecretString::from("new".to_string()))
        }
    };
    let task = tokio::spawn(watch::watch_file(
        Arc::downgrade(&inner),
        "/stuck".into(),
        Duration::from_secs(1),
        read,
    ));
    let current = || {
        inner
            .current
            .load()
            .as_ref()
            .as_ref()
            .unwrap()
            .expose()
            .to_string()
    };

    tokio::task::yield_now().await; // the watcher starts its interval
    // `advance`, not `sleep`: a running blocking read holds the auto-advance.
    tokio::time::advance(Duration::from_secs(1)).await;
    until(|| started.load(Ordering::SeqCst) == 1).await;
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(started.load(Ordering::SeqCst), 1, "a new read per poll");
    assert_eq!(current(), "old");
    assert_eq!(
        logs.count(tracing::Level::WARN, "did not finish within 5s"),
        1
    );

    // Released, the stale read's content is dropped and the next poll reads
    // again (a closed channel returns at once).
    release.send(()).unwrap();
    drop(release);
    for _ in 0..1000 {
        if current() == "new" {
            break;
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        std::thread::sleep(Duration::from_millis(1));
        tokio::task::yield_now().await;
    }
    assert_eq!(current(), "new");
    assert_eq!(logs.count(tracing::Level::INFO, "usable again"), 1);
    drop(inner);
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

/// Gives the blocking pool real time (the paused clock stands still) until
/// `f` holds.
async fn until(f: impl Fn() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

// === rate-limited warnings ===

/// A file gone for good warns once, then at most once a minute with the
/// count of failed polls, and logs at info when it comes back.
#[tokio::test(start_paused = true)]
async fn a_vanished_file_warns_once_a_minute() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "canary-key").unwrap();
    let src = SecretSource::resolve(&SecretRef::File(path.clone()), Duration::from_secs(1));
    std::fs::remove_file(&path).unwrap();
    // Polls at 1 s .. 150 s fail: warnings at 1 s, 61 s and 121 s.
    tokio::time::sleep(Duration::from_millis(150_500)).await;
    assert_eq!(
        logs.count(tracing::Level::WARN, "unusable"),
        3,
        "{}",
        logs.all()
    );
    assert!(logs.all().contains("failed_polls=121"), "{}", logs.all());
    assert!(
        logs.all().contains("failed_polls_since_last_warning=60"),
        "{}",
        logs.all()
    );
    assert_eq!(src.load().unwrap().expose(), "canary-key");

    std::fs::write(&path, "canary-key").unwrap();
    tick(2).await;
    assert_eq!(logs.count(tracing::Level::INFO, "usable again"), 1);
    assert!(logs.all().contains("failed_polls=150"), "{}", logs.all());
    // Failing again starts a new run: warned at once.
    std::fs::remove_file(&path).unwrap();
    tick(2).await;
    assert_eq!(logs.count(tracing::Level::WARN, "unusable"), 4);
    assert!(!logs.all().contains("canary"), "{}", logs.all());
}

/// A minimal capturing subscriber (the crate has no tracing-subscriber):
/// events of this module, each as its level and `name=value` fields.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl Captured {
    fn count(&self, level: tracing::Level, needle: &str) -> usize {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|(l, text)| *l == level && text.contains(needle))
            .count()
    }

    fn all(&self) -> String {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .map(|(l, text)| format!("{l} {text}\n"))
            .collect()
    }
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                let _ = write!(self.0, "{}={:?} ", field.name(), value);
            }
        }
        if !event.metadata().target().starts_with("proxy_core::secret") {
            return;
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
