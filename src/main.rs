//! The `latchkey` binary: parse the command line, set up logging, run.

use clap::Parser;
use latchkey::cli::{self, Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => cli::check(&config),
        Command::Run {
            config: path,
            workers,
        } => {
            // The config says where audit records go, so it is read before
            // logging starts; its errors go to stderr either way.
            let config = match latchkey::Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let audit = cli::AuditOutput::from_config(&config.audit);
            // Held until after shutdown: dropping it flushes the audit trail.
            let (audit_guard, audit_unavailable) = match cli::init_tracing_with(
                cli.log_format,
                cli::DEFAULT_LOG_FILTER,
                &audit,
            ) {
                Ok(g) => (g, false),
                // Audit is off: the destination is opened only so that a
                // reload can turn records on. One that cannot be opened (a
                // read-only filesystem) does not stop the proxy.
                Err(e) if !config.audit.enabled => {
                    let guard = cli::init_tracing_with(
                        cli.log_format,
                        cli::DEFAULT_LOG_FILTER,
                        &cli::AuditOutput::Off,
                    );
                    tracing::warn!(
                        error = %e,
                        "audit.file cannot be opened; audit is off, and a reload cannot turn it on until a restart"
                    );
                    (guard.unwrap_or_default(), true)
                }
                Err(e) => {
                    eprintln!("audit.file: cannot open the audit log {e}");
                    return ExitCode::FAILURE;
                }
            };
            let sink = audit_guard.sink();
            runtime(workers).map_or(ExitCode::FAILURE, |rt| {
                let code = rt.block_on(run(config, path, sink, audit_unavailable));
                // Not a plain drop, which waits for every blocking task:
                // a file-store lock wait abandoned on a holder that never
                // lets go would keep the process alive after the drain (or
                // after a second signal said it stops now).
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
                code
            })
        }
        Command::Ctl(args) => latchkey::ctl::run(args),
        Command::Triage(args) => audit::triage::run(args.into()),
        Command::Demo => {
            cli::init_tracing(cli.log_format, "error");
            runtime(None).map_or(ExitCode::FAILURE, |rt| rt.block_on(latchkey::demo::run()))
        }
    }
}

fn runtime(workers: Option<std::num::NonZeroUsize>) -> Option<tokio::runtime::Runtime> {
    match cli::runtime(workers) {
        Ok((rt, workers)) => {
            let flavour = match rt.handle().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => "current-thread",
                _ => "multi-thread",
            };
            tracing::info!(workers, runtime = flavour, "async runtime started");
            Some(rt)
        }
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

async fn run(
    config: latchkey::Config,
    path: std::path::PathBuf,
    audit_sink: Option<std::sync::Arc<dyn audit::AuditSink>>,
    audit_unavailable: bool,
) -> ExitCode {
    let file = path.display().to_string();
    // Reload on file change and SIGHUP (and via the management API).
    let options = latchkey::StartOptions {
        config_path: Some(path),
        watch_config: true,
        audit_sink,
        audit_unavailable,
    };
    let running = match latchkey::start_with(config, &file, options).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let signal = latchkey::app::shutdown_signal().await;
    tracing::info!("{signal} received; draining");
    // A second signal stops at once (nginx's and Envoy's operators expect
    // a second Ctrl-C to cut a long drain short): exit 1, since requests
    // in flight were cut.
    let cut = running.cut_flag();
    let drain = running.shutdown();
    tokio::pin!(drain);
    tokio::select! {
        _ = &mut drain => ExitCode::SUCCESS,
        signal = latchkey::app::shutdown_signal() => {
            tracing::warn!(
                "{signal} received again; stopping now, without waiting for the requests still in flight"
            );
            // Their audit records say the proxy cut them.
            cut.store(true, std::sync::atomic::Ordering::SeqCst);
            ExitCode::FAILURE
        }
    }
}
