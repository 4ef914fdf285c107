//! The command line: `latchkey run | check | demo | ctl`.

use clap::{Parser, Subcommand};
use proxy_core::config::{Config, warnings};
use proxy_core::inject::InjectSpec;
use proxy_core::secret::SecretSource;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// latchkey: a reverse proxy that injects fresh credentials into upstream
/// requests, so workloads never hold them.
#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "LATCHKEY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the proxy and admin listeners until SIGTERM/SIGINT.
    Run {
        /// Config file (YAML).
        #[arg(long, short, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        /// Worker threads serving connections. Default: the CPUs this
        /// process may use (its CPU affinity and cgroup CPU limit). With 1,
        /// one event loop runs on the main thread (a current-thread
        /// runtime), like nginx with `worker_processes 1`.
        #[arg(long, env = "LATCHKEY_WORKERS")]
        workers: Option<std::num::NonZeroUsize>,
    },
    /// Validate a config file and print a summary; exits non-zero on errors.
    Check {
        /// Config file (YAML).
        #[arg(long, short, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
    },
    /// Start a demo upstream and the proxy on loopback, send a few requests,
    /// and show what latchkey did.
    Demo,
    /// Talk to a running latchkey's management API: credential status,
    /// forced refresh, invalidation.
    Ctl(CtlArgs),
    /// Summarise an audit log: 401/403/5xx by route, credential, reason and
    /// time, and whether failures are upstream denials or local credential
    /// failures.
    Triage(TriageCli),
}

/// `latchkey triage`'s options.
#[derive(Debug, clap::Args)]
pub struct TriageCli {
    /// Audit log (JSON lines); `-` or nothing reads stdin, e.g.
    /// `kubectl logs deploy/latchkey | latchkey triage`.
    pub file: Option<PathBuf>,
    /// Only records from the last DURATION (`6h`, `30m`, `2days`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only this route.
    #[arg(long)]
    pub route: Option<String>,
    /// Only this credential.
    #[arg(long)]
    pub credential: Option<String>,
    /// Print the report as JSON (shape documented in `audit::triage`).
    #[arg(long)]
    pub json: bool,
}

impl From<TriageCli> for audit::triage::TriageArgs {
    fn from(t: TriageCli) -> Self {
        Self {
            input: t.file,
            since: t.since,
            route: t.route,
            credential: t.credential,
            json: t.json,
        }
    }
}

/// `latchkey ctl`'s options.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The admin listener's base URL (plain http).
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub admin_url: String,
    /// The management key. Prefer the environment variable: a command-line
    /// argument is visible to other users in the process list.
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_MANAGEMENT_KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
    /// Print the server's JSON as is instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: CtlAction,
}

/// `latchkey ctl` actions.
#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// List every credential's status.
    Credentials,
    /// Force a refresh of one credential now (single-flight with any
    /// refresh already running).
    Refresh {
        /// The credential id.
        id: String,
    },
    /// Mark the credential's current value as rejected and refresh it once.
    Invalidate {
        /// The credential id.
        id: String,
    },
}

/// Where `latchkey run` writes the audit records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AuditOutput {
    /// Standard output, one JSON object per line.
    #[default]
    Stdout,
    /// Appended to this file (created mode 0640).
    File(PathBuf),
    /// Nowhere.
    Off,
}

impl AuditOutput {
    /// The destination `audit:` names, opened at startup whether or not
    /// `audit.enabled` is on: a reload may turn records on (the audit
    /// layer is rebuilt with the proxy), and they need somewhere to go.
    /// While audit is off, nothing is written to it.
    pub fn from_config(audit: &proxy_core::config::AuditSettings) -> Self {
        match &audit.file {
            Some(f) => Self::File(f.clone()),
            None => Self::Stdout,
        }
    }
}

/// The async runtime `latchkey run` and `latchkey demo` serve on, with
/// `workers` threads (default: [`std::thread::available_parallelism`], which
/// honours the process's CPU affinity and its cgroup CPU quota, so a
/// Kubernetes pod limited to one CPU gets one). One worker is a
/// current-thread runtime: the proxy's tasks run on the main thread with no
/// work-stealing scheduler between them, which costs less per request and
/// has a shorter latency tail than a multi-thread runtime with one worker
/// (see the README's Performance section). More than one is tokio's
/// multi-thread runtime with that many workers. Returns the runtime and the
/// worker count.
pub fn runtime(
    workers: Option<std::num::NonZeroUsize>,
) -> std::io::Result<(tokio::runtime::Runtime, usize)> {
    let workers = workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, std::num::NonZeroUsize::get);
    let rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    Ok((rt, workers))
}

/// Sets up logging without an audit destination (audit records are
/// dropped). `RUST_LOG` overrides the default filter.
pub fn init_tracing(format: LogFormat, default: &str) {
    // Opening nothing cannot fail, and there is no audit writer to keep.
    let _ = init_tracing_with(format, default, &AuditOutput::Off);
}

/// The audit output `latchkey run` writes to: the sink to hand to
/// [`StartOptions::audit_sink`](crate::StartOptions), and the writer
/// thread behind it. Dropping it writes every pending record; keep it until
/// the process exits.
#[derive(Debug, Default)]
pub struct AuditGuard {
    sink: Option<Arc<dyn audit::AuditSink>>,
    _writer: Option<audit::writer::BatchGuard>,
}

impl AuditGuard {
    /// Where audit records go (`None` when audit output is off).
    pub fn sink(&self) -> Option<Arc<dyn audit::AuditSink>> {
        self.sink.clone()
    }
}

/// Audit lines leave the request path through [`audit::writer`]: each
/// record is serialised on the request's thread and appended to a shared
/// buffer, which one writer thread writes in batches (one `write(2)` per
/// batch, no per-request wake-up or `tracing` dispatch), at once when the
/// proxy was quiet. Not lossy: a stuck output makes requests wait rather
/// than drop an audit record.
fn audit_writer<W: std::io::Write + Send + 'static>(w: W) -> std::io::Result<AuditGuard> {
    use audit::writer::{BatchOptions, BatchWriter};
    let (writer, guard) = BatchWriter::spawn(w, "latchkey-audit", BatchOptions::default())?;
    Ok(AuditGuard {
        sink: Some(Arc::new(audit::WriterSink::new(writer))),
        _writer: Some(guard),
    })
}

/// Sets up two independent outputs: debug logs on standard error (`format`,
/// filtered by `RUST_LOG` or `default`, never containing audit records),
/// and the audit records as pure JSON lines on `audit`, unaffected by
/// `RUST_LOG` (through the returned guard's [`AuditGuard::sink`]). Fails
/// only if the audit file cannot be opened.
pub fn init_tracing_with(
    format: LogFormat,
    default: &str,
    audit: &AuditOutput,
) -> std::io::Result<AuditGuard> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let guard = match audit {
        AuditOutput::Off => AuditGuard::default(),
        AuditOutput::Stdout => audit_writer(std::io::stdout())?,
        AuditOutput::File(path) => {
            let file = open_audit_file(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            audit_writer(file)?
        }
    };
    // Colour only for a person at a terminal: piped into a file, journald
    // or `kubectl logs`, escape codes would garble the lines.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layers = log_layers(
        format,
        filter,
        BoxMakeWriter::new(std::io::stderr),
        colour,
        None,
    );
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(guard)
}

/// A `tracing` layer over the registry, as built by [`log_layers`].
pub type LogLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The logging layers: `logs` gets the debug logs (`format`, `filter`,
/// everything but the `latchkey::audit` target; ANSI colours in text lines
/// only with `colour`), and `audit`, if any, gets
/// the audit records emitted by [`audit::TracingSink`] as pure JSON lines
/// (for embedders that keep audit records on `tracing`; `latchkey run`
/// passes `None` and writes them through [`AuditGuard::sink`]). Public so
/// tests can capture both.
pub fn log_layers(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    logs: tracing_subscriber::fmt::writer::BoxMakeWriter,
    colour: bool,
    audit: Option<tracing_subscriber::fmt::writer::BoxMakeWriter>,
) -> Vec<LogLayer> {
    use tracing_subscriber::Layer as _;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(logs)
        .with_ansi(colour);
    let logs: LogLayer = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    // The outer filter's level hint is the whole layer's: without one,
    // every disabled `trace!` in the dependencies (hyper-util's pool logs
    // several per request) would be checked against the filters at run
    // time instead of skipped by the global level check.
    let hint = filter.max_level_hint();
    let mut not_audit =
        tracing_subscriber::filter::filter_fn(|m| m.target() != audit::sink::TARGET);
    if let Some(h) = hint {
        not_audit = not_audit.with_max_level_hint(h);
    }
    let mut layers = vec![logs.with_filter(filter).with_filter(not_audit).boxed()];
    if let Some(w) = audit {
        layers.push(audit::sink::audit_layer(w).boxed());
    }
    layers
}

fn open_audit_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o640);
    }
    opts.open(path)
}

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
    match &config.admin {
        Some(a) => {
            let _ = writeln!(out, "admin: listen {}", a.listen);
        }
        None => {
            let _ = writeln!(out, "admin: none (no /healthz or /readyz)");
        }
    }
    let poll = config.secrets.file_poll_interval;
    let _ = writeln!(out, "credentials ({}):", config.credentials.len());
    for c in &config.credentials {
        let detail = match (&c.static_, &c.oauth2, &c.exec, &c.file) {
            (Some(r), ..) => format!(
                "{} ({})",
                r.describe(),
                resolve_state(&SecretSource::resolve(r, poll))
            ),
            (_, Some(o), ..) => {
                let mut d = format!(
                    "grant {} at {} as client {}",
                    grant_name(o.grant),
                    o.token_url,
                    o.client_id
                );
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
    let mut tls_files =
        |at: String, ca: Option<&PathBuf>, cert: Option<&PathBuf>, key: Option<&PathBuf>| {
            let tls = proxy_core::upstream::UpstreamTls::from_files(
                ca.map(PathBuf::as_path),
                cert.map(PathBuf::as_path),
                key.map(PathBuf::as_path),
            );
            if let Err(e) = proxy_core::upstream::check_tls(tls) {
                w.push(format!(
                    "{at}.{} does not load here ({}); `latchkey run` refuses to start without it",
                    e.field, e.message
                ));
            }
        };
    for (i, r) in config.routes.iter().enumerate() {
        let (ca, cert, key) = (&r.ca_file, &r.client_cert_file, &r.client_key_file);
        tls_files(
            format!("routes[{i}]"),
            ca.as_ref(),
            cert.as_ref(),
            key.as_ref(),
        );
    }
    if let Some(r) = &config.redis {
        let (ca, cert, key) = (&r.ca_file, &r.client_cert_file, &r.client_key_file);
        tls_files("redis".to_owned(), ca.as_ref(), cert.as_ref(), key.as_ref());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;

    /// One worker is a current-thread runtime, more a multi-thread runtime
    /// with exactly that many workers; both serve tasks.
    #[test]
    fn runtime_flavour_follows_the_worker_count() {
        use std::num::NonZeroUsize;
        use tokio::runtime::RuntimeFlavor;
        let (rt, n) = runtime(NonZeroUsize::new(1)).unwrap();
        assert_eq!(n, 1);
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(
            rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }),
            7
        );
        let (rt, n) = runtime(NonZeroUsize::new(3)).unwrap();
        assert_eq!(n, 3);
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), 3);
        assert_eq!(
            rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }),
            7
        );
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let (rt, n) = runtime(None).unwrap();
        assert_eq!(n, cpus);
        assert_eq!(rt.metrics().num_workers(), cpus);
    }

    /// The debug-log layer reports `RUST_LOG`'s level, so disabled events
    /// are skipped by tracing's global level check (see `log_layers`).
    #[test]
    fn log_layer_carries_the_filter_level() {
        for (directive, level) in [
            ("warn", LevelFilter::WARN),
            ("info,latchkey=debug", LevelFilter::DEBUG),
        ] {
            let filter = tracing_subscriber::EnvFilter::new(directive);
            let layers = log_layers(
                LogFormat::Text,
                filter,
                BoxMakeWriter::new(std::io::sink),
                false,
                None,
            );
            assert_eq!(layers[0].max_level_hint(), Some(level), "{directive}");
        }
    }
}
