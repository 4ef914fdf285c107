//! `latchkey check` against what `latchkey run` refuses at startup: the
//! Redis URL and encryption keys (resolved and decoded as `run` does), the
//! file store's directory, and the OAuth2 client secret's source. Each case
//! runs both commands on the same config: `check` names the problem as a
//! warning, `run` exits 1 with it, and neither prints a secret.

mod support;

use std::path::Path;
use std::process::Output;

use support::TestCa;
use support::cli::{LITERAL_CANARY, check, latchkey, run_to_end, text, write_file};

const URL_CANARY: &str = "redis-password-canary-5e2d";
const CLIENT_SECRET_CANARY: &str = "client-secret-canary-77b1";
/// A valid key: base64 of 32 bytes.
const GOOD_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// One credential `o` (client credentials, the client secret from
/// `FN_SECRET`) with `store`, and the top-level sections in `extra`.
fn config_with(store: &str, extra: &str) -> String {
    format!(
        "proxy: {{ listen: 127.0.0.1:0 }}
{extra}credentials:
  - id: o
    oauth2: {{ grant: client_credentials, token_url: \"http://127.0.0.1:9/token\", client_id: x, client_secret: {{ env: FN_SECRET }} }}
    store: {store}
routes:
  - {{ id: r, match: {{ path_prefix: /r/ }}, upstream: \"http://127.0.0.1:9\", credential: o, public: true }}
"
    )
}

/// [`config_with`] on a Redis store whose URL is `LK_REDIS_URL` and whose
/// one key is the literal `key` (as written in YAML).
fn redis_config(key: &str) -> String {
    config_with(
        "redis",
        &format!(
            "redis: {{ url: {{ env: LK_REDIS_URL }}, encryption_keys: [{{ value: {key} }}] }}\n"
        ),
    )
}

fn run_with(path: &Path, env: &[(&str, &str)], command: &str) -> Output {
    let mut cmd = latchkey();
    cmd.env_remove("LK_REDIS_URL").env_remove("FN_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_to_end(cmd.arg(command).arg("--config").arg(path))
}

fn assert_no_secret(what: &str, out: &Output) {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for canary in [LITERAL_CANARY, URL_CANARY, CLIENT_SECRET_CANARY] {
        assert!(!all.contains(canary), "{what}: secret printed:\n{all}");
    }
    // The base64 decoder's message quotes a character of the key and its
    // offset.
    for leak in ["Invalid symbol", ", offset "] {
        assert!(!all.contains(leak), "{what}: key material printed:\n{all}");
    }
}

/// `check` passes (these are warnings: they depend on this machine) and
/// warns with `want`; `run` refuses to start with `run_says`.
#[expect(
    clippy::panic,
    reason = "test helper outside #[test], where clippy's test allowance doesn't reach"
)]
fn assert_check_warns_and_run_refuses(
    path: &Path,
    env: &[(&str, &str)],
    want: &[&str],
    run_says: &[&str],
) {
    let out = run_with(path, env, "check");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let warnings = stdout
        .split_once("warnings (")
        .map(|(_, w)| w)
        .unwrap_or_else(|| panic!("no warnings in:\n{stdout}"));
    for w in want {
        assert!(
            warnings.contains(w),
            "want {w:?} in the warnings:\n{stdout}"
        );
    }
    assert!(
        warnings.contains("`latchkey run` refuses to start"),
        "{stdout}"
    );
    assert_no_secret("check", &out);

    let out = run_with(path, env, "run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "run started:\n{stderr}");
    for r in run_says {
        assert!(stderr.contains(r), "want {r:?} from run in:\n{stderr}");
    }
    assert_no_secret("run", &out);
}

#[test]
fn check_reports_a_redis_url_and_keys_that_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = redis_config(LITERAL_CANARY);
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);

    // Neither resolves nor decodes: both named at once.
    let out = run_with(&path, &[], "check");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("redis: url from env LK_REDIS_URL (does not resolve here: environment variable LK_REDIS_URL is not set); encryption keys [literal value (resolves here)]"),
        "{stdout}"
    );
    assert_check_warns_and_run_refuses(
        &path,
        &[],
        &[
            "redis.url: environment variable LK_REDIS_URL is not set",
            "redis.encryption_keys: encryption key 0 is not valid base64 of 32 bytes",
        ],
        &["redis.url: environment variable LK_REDIS_URL is not set"],
    );

    // The URL set (with a password): the key is what run refuses.
    let url = format!("redis://:{URL_CANARY}@127.0.0.1:9");
    assert_check_warns_and_run_refuses(
        &path,
        &[("LK_REDIS_URL", &url)],
        &["redis.encryption_keys: encryption key 0 is not valid base64 of 32 bytes ("],
        &["redis.encryption_keys: encryption key 0 is not valid base64 of 32 bytes"],
    );
    let out = run_with(&path, &[("LK_REDIS_URL", &url)], "check");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("redis: url from env LK_REDIS_URL (resolves here)"),
        "{stdout}"
    );
    assert!(!stdout.contains("redis.url:"), "{stdout}");

    // A key of the wrong length, and the URL's scheme against the TLS
    // settings (the CA file loads, so it is the scheme run refuses).
    let ca = write_file(dir.path(), "ca.pem", &TestCa::new().ca_pem());
    let yaml = config_with(
        "redis",
        &format!(
            "redis: {{ url: {{ env: LK_REDIS_URL }}, encryption_keys: [{{ value: \"{GOOD_KEY}\" }}, {{ value: \"AAAA\" }}], ca_file: \"{}\" }}\n",
            ca.display()
        ),
    );
    let path = write_file(dir.path(), "tls.yaml", &yaml);
    assert_check_warns_and_run_refuses(
        &path,
        &[("LK_REDIS_URL", &url)],
        &[
            "redis.encryption_keys: encryption key 1 is not valid base64 of 32 bytes",
            "redis.ca_file: needs a rediss:// URL",
        ],
        &["redis.encryption_keys: encryption key 1 is not valid base64 of 32 bytes"],
    );
}

#[test]
fn check_reports_a_file_store_dir_that_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write_file(dir.path(), "plain", "not a directory");
    let store = plain.join("store");
    let yaml = config_with(
        "file",
        &format!("file_store: {{ dir: \"{}\" }}\n", store.display()),
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    assert_check_warns_and_run_refuses(
        &path,
        &[],
        &[&format!(
            "file_store.dir: {} cannot be created: {} is not a directory",
            store.display(),
            plain.display()
        )],
        &["file_store.dir: store create failed"],
    );

    // The directory itself a regular file.
    let yaml = config_with(
        "file",
        &format!("file_store: {{ dir: \"{}\" }}\n", plain.display()),
    );
    let path = write_file(dir.path(), "plain.yaml", &yaml);
    assert_check_warns_and_run_refuses(
        &path,
        &[],
        &[&format!(
            "file_store.dir: {} is not a directory",
            plain.display()
        )],
        &["file_store.dir: store create failed"],
    );
}

#[test]
fn check_accepts_a_file_store_dir_it_could_create_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("a").join("b");
    let yaml = config_with(
        "file",
        &format!("file_store: {{ dir: \"{}\" }}\n", store.display()),
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("file store: dir {}", store.display())),
        "{stdout}"
    );
    assert!(!stdout.contains("file_store.dir"), "{stdout}");
    assert!(
        !dir.path().join("a").exists(),
        "check created the directory"
    );
}

#[test]
fn check_shows_where_an_oauth2_client_secret_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "latchkey.yaml", &config_with("memory", ""));
    let client = |out: &Output| -> String {
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with("o "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no credential line in:\n{stdout}"))
    };

    let out = run_with(&path, &[], "check");
    let line = client(&out);
    assert!(
        line.contains("as client x, client secret from env FN_SECRET (does not resolve here: environment variable FN_SECRET is not set)"),
        "{line}"
    );

    let out = run_with(&path, &[("FN_SECRET", CLIENT_SECRET_CANARY)], "check");
    let line = client(&out);
    assert!(
        line.contains("client secret from env FN_SECRET (resolves here)"),
        "{line}"
    );
    assert_no_secret("check", &out);

    let missing = dir.path().join("client-secret");
    let yaml = config_with("memory", "").replace(
        "client_secret: { env: FN_SECRET }",
        &format!("client_secret: {{ file: \"{}\" }}", missing.display()),
    );
    let path = write_file(dir.path(), "file.yaml", &yaml);
    let line = client(&check(&path));
    assert!(
        line.contains(&format!(
            "client secret from file {} (does not resolve here: ",
            missing.display()
        )),
        "{line}"
    );
}

/// A Redis URL that resolves but that `run` cannot parse (another scheme,
/// a database that is not a number) is reported as `run` reports it.
#[test]
fn check_reports_a_redis_url_run_cannot_parse() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = redis_config(&format!("\"{GOOD_KEY}\""));
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    for url in ["http://127.0.0.1:6379", "redis://127.0.0.1:6379/abc"] {
        assert_check_warns_and_run_refuses(
            &path,
            &[("LK_REDIS_URL", url), ("FN_SECRET", "x")],
            &["redis.url: store connect failed: invalid Redis URL"],
            &["redis.url"],
        );
    }
}

/// With audit on, an `audit.file` that `run` cannot open (its directory
/// missing, or a directory itself) is reported; with audit off it is not
/// (run only warns then).
#[test]
fn check_reports_an_audit_file_run_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    // A link to a file in a missing directory, as well, also at the end of
    // a chain of links; a link loop; a link to a directory path.
    let link = |name: &str, to: &str| {
        let at = dir.path().join(name);
        std::os::unix::fs::symlink(to, &at).unwrap();
        at
    };
    let dangling = link("dangling.log", "nodir/audit.log");
    link("c11", "nodir/audit.log");
    for i in (0..11).rev() {
        link(&format!("c{i}"), &format!("c{}", i + 1));
    }
    let (looped, _) = (link("loop.log", "loop2.log"), link("loop2.log", "loop.log"));
    let slash = link("slash.log", "created/");
    for file in [
        dir.path().join("missing-dir/audit.log"),
        dir.path().to_path_buf(),
        dangling,
        dir.path().join("c0"),
        looped,
        slash,
    ] {
        let audit = format!("audit: {{ enabled: true, file: \"{}\" }}\n", file.display());
        let path = write_file(dir.path(), "latchkey.yaml", &config_with("memory", &audit));
        assert_check_warns_and_run_refuses(
            &path,
            &[("FN_SECRET", "x")],
            &["audit.file: "],
            &["audit.file"],
        );
    }
    let off = format!(
        "audit: {{ enabled: false, file: \"{}\" }}\n",
        dir.path().join("missing-dir/audit.log").display()
    );
    let path = write_file(dir.path(), "off.yaml", &config_with("memory", &off));
    let out = run_with(&path, &[("FN_SECRET", "x")], "check");
    assert!(
        !text(&out.stdout).contains("audit.file"),
        "{}",
        text(&out.stdout)
    );
    // A link to a file that opening would create is fine.
    let fine = dir.path().join("fine.log");
    std::os::unix::fs::symlink(dir.path().join("created.log"), &fine).unwrap();
    let on = format!("audit: {{ enabled: true, file: \"{}\" }}\n", fine.display());
    let path = write_file(dir.path(), "on.yaml", &config_with("memory", &on));
    let out = run_with(&path, &[("FN_SECRET", "x")], "check");
    assert!(
        !text(&out.stdout).contains("audit.file"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        !dir.path().join("created.log").exists(),
        "check creates nothing"
    );
}

/// A file store directory under a symbolic link to nothing cannot be
/// created: reported, as `run` fails on it.
#[test]
fn check_reports_a_file_store_dir_under_a_dangling_link() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
    let store = link.join("state");
    let yaml = config_with(
        "file",
        &format!("file_store: {{ dir: \"{}\" }}\n", store.display()),
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    assert_check_warns_and_run_refuses(
        &path,
        &[("FN_SECRET", "x")],
        &["file_store.dir: ", "is a symbolic link to a missing target"],
        &["file_store.dir"],
    );
}
