//! The command line: `latchkey run | check | demo | ctl`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

mod check;
pub use check::{check, summary};

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
        env = "LATCHKEY_LOG_FORMAT",
        ignore_case = true
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

/// `latchkey run`'s log filter when `RUST_LOG` is not set: `info`, but
/// only errors from the h2 library, which logs a WARN for every PING ACK
/// it never asked for: an unauthenticated caller could turn 17-byte
/// frames into ~160-byte log lines, without limit.
pub const DEFAULT_LOG_FILTER: &str = "info,h2=error";

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
