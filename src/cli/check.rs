//! `latchkey check`: validation and the config summary.

use proxy_core::config::{Config, FieldError, StoreKind, warnings};
use proxy_core::inject::InjectSpec;
use proxy_core::secret::SecretSource;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `latchkey check`: validates and prints a summary.
pub fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            print!("{}", summary(&config, &path.display().to_string()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("config invalid: {} problem(s)", e.errors.len());
            ExitCode::FAILURE
        }
    }
}

/// A human summary of a valid config. Shows where secrets come from and
/// whether they resolve here, never their values.
pub fn summary(config: &Config, file: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "config ok: {file}");
    let _ = writeln!(
        out,
        "proxy: listen {}, drain {:?}",
        config.proxy.listen, config.proxy.drain_timeout
    );
    if let Some(t) = &config.proxy.tls {
        let clients = match (t.client_cert_mode(), &t.client_ca_file) {
            (Some(mode), Some(ca)) => format!(
                "client certificate {} (CA {})",
                match mode {
                    proxy_core::config::ClientCertMode::Required => "required",
                    proxy_core::config::ClientCertMode::Optional => "optional",
                },
                ca.display()
            ),
            _ => "no client certificates".to_string(),
        };
        let _ = writeln!(
            out,
            "proxy tls: cert {}, key {} (re-read every {:?}); {clients}",
            t.cert_file.display(),
            t.key_file.display(),
            t.reload_interval
        );
    }
    let poll = config.secrets.file_poll_interval;
    match &config.admin {
        Some(a) => {
            let _ = write!(out, "admin: listen {}", a.listen);
            if let Some(k) = &a.management_key {
                let _ = write!(
                    out,
                    ", management key from {} ({})",
                    k.describe(),
                    resolve_state(&SecretSource::resolve(k, poll))
                );
            }
            let _ = writeln!(out);
        }
        None => {
            let _ = writeln!(out, "admin: none (no /healthz or /readyz)");
        }
    }
    if let Some(r) = &config.redis {
        let keys: Vec<String> = r
            .encryption_keys
            .iter()
            .map(|k| {
                let state = resolve_state(&SecretSource::resolve(k, poll));
                format!("{} ({state})", k.describe())
            })
            .collect();
        let _ = writeln!(
            out,
            "redis: url from {} ({}); encryption keys [{}]",
            r.url.describe(),
            resolve_state(&SecretSource::resolve(&r.url, poll)),
            keys.join(", ")
        );
    }
    if let Some(fs) = &config.file_store {
        let _ = writeln!(out, "file store: dir {}", fs.dir.display());
    }
    let _ = writeln!(out, "credentials ({}):", config.credentials.len());
    for c in &config.credentials {
        let detail = match (&c.static_, &c.oauth2, &c.exec, &c.file) {
            (Some(r), ..) => format!(
                "{} ({})",
                r.describe(),
                resolve_state(&SecretSource::resolve(r, poll))
            ),
            (_, Some(o), ..) => {
                // A token URL may carry a key in its query (an Azure
                // Function's `?code=`): not printed.
                let url = match o.token_url.split_once('?') {
                    Some((base, _)) => format!("{base}?***"),
                    None => o.token_url.clone(),
                };
                let mut d = format!(
                    "grant {} at {url} as client {}",
                    grant_name(o.grant),
                    o.client_id
                );
                if let Some(cs) = &o.client_secret {
                    let _ = write!(
                        d,
                        ", client secret from {} ({})",
                        cs.describe(),
                        resolve_state(&SecretSource::resolve(cs, poll))
                    );
                }
                if let Some(rt) = &o.refresh_token {
                    let _ = write!(
                        d,
                        ", refresh token from {} ({})",
                        rt.describe(),
                        resolve_state(&SecretSource::resolve(rt, poll))
                    );
                }
                d
            }
            (_, _, Some(e), _) => format!(
                "command {:?} (timeout {:?})",
                e.command.first().map(String::as_str).unwrap_or(""),
                e.timeout
            ),
            (_, _, _, Some(f)) => format!("token file {}", f.path.display()),
            _ => String::new(),
        };
        let lifecycle = if c.static_.is_some() {
            String::new()
        } else {
            format!(
                "; store {}, refresh {:?} before expiry",
                c.store.as_str(),
                c.refresh.buffer
            )
        };
        let _ = writeln!(out, "  {:<20} {:<8} {detail}{lifecycle}", c.id, c.kind());
    }
    let _ = writeln!(out, "routes ({}):", config.routes.len());
    for r in &config.routes {
        let mut m = Vec::new();
        if let Some(h) = &r.matcher.host {
            m.push(format!("host {h}"));
        }
        if let Some(p) = &r.matcher.path_prefix {
            m.push(format!(
                "prefix {p}{}",
                if r.strip_prefix { " (stripped)" } else { "" }
            ));
        }
        let inject = match (&r.credential, InjectSpec::parse(r.inject.as_ref())) {
            (None, _) => "no credential".to_string(),
            (Some(c), Ok(InjectSpec::Header { name, .. })) => format!("{c} -> header {name}"),
            (Some(c), Ok(InjectSpec::Query { param })) => format!("{c} -> query {param}"),
            (Some(c), Ok(InjectSpec::Basic { .. })) => format!("{c} -> basic auth"),
            (Some(c), Err(_)) => c.clone(),
        };
        let who = if r.public {
            "public".to_string()
        } else {
            let ids: Vec<&str> = config
                .clients
                .iter()
                .filter(|c| c.routes.iter().any(|x| x == "*" || *x == r.id))
                .map(|c| c.id.as_str())
                .collect();
            format!("clients [{}]", ids.join(", "))
        };
        let _ = writeln!(
            out,
            "  {:<20} {} -> {}  [{inject}; {who}; timeout {:?}]",
            r.id,
            m.join(", "),
            r.upstream,
            r.timeout
        );
    }
    let _ = writeln!(out, "clients ({}):", config.clients.len());
    for c in &config.clients {
        let mut how = Vec::new();
        if let Some(token) = &c.token {
            let state = resolve_state(&SecretSource::resolve(token, poll));
            how.push(format!("token {} ({state})", token.describe()));
        }
        if !c.tls_san.is_empty() {
            how.push(format!("certificate SAN {}", c.tls_san.join(", ")));
        }
        let _ = writeln!(
            out,
            "  {:<20} {}; routes [{}]",
            c.id,
            how.join("; "),
            c.routes.join(", ")
        );
    }
    let mut w = warnings(config);
    // Whether the files load (a warning names the one that does not).
    let mut tls_files =
        |at: String, ca: Option<&PathBuf>, cert: Option<&PathBuf>, key: Option<&PathBuf>| {
            let tls = proxy_core::upstream::UpstreamTls::from_files(
                ca.map(PathBuf::as_path),
                cert.map(PathBuf::as_path),
                key.map(PathBuf::as_path),
            );
            match proxy_core::upstream::check_tls(tls) {
                Ok(_) => true,
                Err(e) => {
                    let (field, problem) = (e.field, e.message);
                    w.push(format!(
                        "{at}.{field} does not load here ({problem}); \
                         `latchkey run` refuses to start without it"
                    ));
                    false
                }
            }
        };
    for (i, r) in config.routes.iter().enumerate() {
        let (ca, cert, key) = (&r.ca_file, &r.client_cert_file, &r.client_key_file);
        // A plain-http upstream's CA is ignored (warned about as such), not read.
        let ca = ca
            .as_ref()
            .filter(|_| r.upstream.scheme == http::uri::Scheme::HTTPS);
        tls_files(format!("routes[{i}]"), ca, cert.as_ref(), key.as_ref());
    }
    // Read by `run` only when a credential is stored in Redis.
    let uses_redis = config
        .credentials
        .iter()
        .any(|c| c.store == StoreKind::Redis);
    let redis_tls_loads = config
        .redis
        .as_ref()
        .filter(|_| uses_redis)
        .is_none_or(|r| {
            let (ca, cert, key) = (&r.ca_file, &r.client_cert_file, &r.client_key_file);
            tls_files("redis".to_owned(), ca.as_ref(), cert.as_ref(), key.as_ref())
        });
    w.extend(store_problems(config, redis_tls_loads));
    for (i, c) in config.credentials.iter().enumerate() {
        if let Some(ca) = c.oauth2.as_ref().and_then(|o| o.ca_file.as_deref())
            && let Err(e) = proxy_core::upstream::check_ca_file(ca)
        {
            w.push(format!("credentials[{i}].oauth2.ca_file does not load here ({e}); `latchkey run` refuses to start without it"));
        }
    }
    if let Some(t) = &config.proxy.tls {
        for e in crate::tls::check(t) {
            w.push(format!(
                "{}: {} (does not load here; `latchkey run` refuses to start without it)",
                e.path, e.message
            ));
        }
    }
    if !w.is_empty() {
        let _ = writeln!(out, "warnings ({}):", w.len());
        for w in w {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

/// What keeps `latchkey run` from starting on this machine, checked the
/// way `run` does it: for a store a credential uses (`run` builds no
/// other), the Redis URL and keys resolved, the keys decoded, the URL parsed
/// and its scheme checked against the TLS settings (when the TLS files load:
/// a file that does not is reported already), and whether the file store's
/// directory exists or could be created; with audit on, whether
/// `audit.file` can be opened. Creates nothing, connects nowhere.
fn store_problems(config: &Config, redis_tls_loads: bool) -> Vec<String> {
    let poll = config.secrets.file_poll_interval;
    let uses = |kind: StoreKind| config.credentials.iter().any(|c| c.store == kind);
    let mut errs = Vec::new();
    if let Some(r) = config.redis.as_ref().filter(|_| uses(StoreKind::Redis)) {
        let url = SecretSource::resolve(&r.url, poll).load();
        if let Err(e) = &url {
            errs.push(FieldError::new("redis.url", e.to_string()));
        }
        if let Err(e) = crate::build::redis_keyring(r, poll) {
            errs.push(e);
        }
        if let Ok(url) = &url
            && redis_tls_loads
        {
            match crate::build::redis_tls(r, url.expose()) {
                Err(e) => errs.push(e),
                // The URL parsed as `run` parses it (nothing connected).
                Ok(tls) => {
                    if let Err(e) =
                        refresh_layer::store::check_redis_client(url.expose(), tls.as_ref())
                    {
                        errs.push(FieldError::new("redis.url", e.to_string()));
                    }
                }
            }
        }
    }
    // `run` opens the audit file before it starts, and stops if it cannot
    // while audit is on.
    if config.audit.enabled
        && let Some(file) = &config.audit.file
        && let Some(problem) = file_problem(file)
    {
        errs.push(FieldError::new("audit.file", problem));
    }
    if let Some(fs) = config.file_store.as_ref().filter(|_| uses(StoreKind::File))
        && let Some(problem) = dir_problem(&fs.dir)
    {
        errs.push(FieldError::new("file_store.dir", problem));
    }
    errs.into_iter()
        .map(|e| {
            format!(
                "{}: {} (on this machine; `latchkey run` refuses to start with it)",
                e.path, e.message
            )
        })
        .collect()
}

/// Why the file store could not use `dir`: `run` creates it (and any
/// missing parents), so it must be a directory or creatable, i.e. its
/// nearest existing ancestor a directory this user may write to. Nothing is
/// created.
fn dir_problem(dir: &Path) -> Option<String> {
    use std::io::ErrorKind::{NotADirectory, NotFound};
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return None,
        Ok(_) => return Some(format!("{} is not a directory", dir.display())),
        Err(e) if matches!(e.kind(), NotFound | NotADirectory) => {}
        Err(e) => return Some(format!("cannot inspect {}: {e}", dir.display())),
    }
    for ancestor in dir.ancestors().skip(1) {
        // A relative path's last ancestor is the empty path: the working
        // directory.
        let at = if ancestor.as_os_str().is_empty() {
            Path::new(".")
        } else {
            ancestor
        };
        let why = match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => match writable(at) {
                Ok(()) => return None,
                Err(why) => why,
            },
            Ok(_) => format!("{} is not a directory", at.display()),
            // A link to nothing: `run` could not create through it.
            Err(_) if std::fs::symlink_metadata(at).is_ok() => {
                format!("{} is a symbolic link to a missing target", at.display())
            }
            Err(e) if matches!(e.kind(), NotFound | NotADirectory) => continue,
            Err(e) => format!("cannot inspect {}: {e}", at.display()),
        };
        return Some(format!("{} cannot be created: {why}", dir.display()));
    }
    None
}

/// Why `run` could not open `file` to append to it (creating it, not its
/// directory; through a link to a missing file, creating that file).
/// Nothing is created.
fn file_problem(file: &Path) -> Option<String> {
    file_problem_at(file, 0)
}

fn file_problem_at(file: &Path, links: u8) -> Option<String> {
    use std::io::ErrorKind::NotFound;
    match std::fs::metadata(file) {
        Ok(m) if m.is_dir() => Some(format!("{} is a directory", file.display())),
        Ok(_) => writable(file).err(),
        // A link loop, a path through a file, no permission: as open says.
        Err(e) if e.kind() != NotFound => Some(format!("{} cannot be opened: {e}", file.display())),
        // A path ending in `/` names a directory, which opening cannot create.
        Err(_) if file.as_os_str().as_encoded_bytes().ends_with(b"/") => {
            Some(format!("{} names a directory", file.display()))
        }
        // Past the kernel's own limit (40), open fails too.
        Err(_) if links >= 40 && std::fs::symlink_metadata(file).is_ok() => {
            Some(format!("{} is behind too many links", file.display()))
        }
        // A link to a missing file: opening creates the link's target.
        Err(_) if std::fs::symlink_metadata(file).is_ok() => match std::fs::read_link(file) {
            Ok(target) => {
                let target = match file.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
                file_problem_at(&target, links + 1)
            }
            Err(e) => Some(format!("cannot read the link {}: {e}", file.display())),
        },
        Err(_) => {
            let parent = match file.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() => writable(parent).err(),
                Ok(_) => Some(format!("{} is not a directory", parent.display())),
                Err(e) => Some(format!(
                    "its directory {} cannot be used: {e}",
                    parent.display()
                )),
            }
        }
    }
}

/// Whether this user may write to `at` (and, for a directory, create in it).
fn writable(at: &Path) -> Result<(), String> {
    use rustix::fs::{Access, access};
    let mode = if at.is_dir() {
        Access::WRITE_OK | Access::EXEC_OK
    } else {
        Access::WRITE_OK
    };
    access(at, mode).map_err(|e| format!("{} is not writable by this user ({e})", at.display()))
}

fn resolve_state(s: &SecretSource) -> String {
    match s.load() {
        Ok(_) => "resolves here".to_string(),
        Err(e) => format!("does not resolve here: {e}"),
    }
}

fn grant_name(g: proxy_core::config::Grant) -> &'static str {
    match g {
        proxy_core::config::Grant::RefreshToken => "refresh_token",
        proxy_core::config::Grant::ClientCredentials => "client_credentials",
    }
}
