//! Starting and stopping a proxy.
//!
//! [`start`] builds the proxy from a validated [`Config`], binds the proxy and
//! admin listeners and returns a [`Running`] handle with the bound addresses.
//! [`Running::shutdown`] performs the same graceful sequence as SIGTERM:
//! readiness goes false, the listener stops accepting, in-flight requests
//! finish (up to `proxy.drain_timeout`), then the admin listener closes.

use crate::admin::{self, AdminState};
use crate::build::{Kept, Proxy, StartOptions, build_proxy_with};
use crate::reload::{self, ReloadError, ReloadOutcome, Reloader};
use arc_swap::ArcSwap;
use proxy_core::config::{Config, ConfigError};
use proxy_core::upstream::{PoolSettings, UpstreamClients};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid (or a file it names is).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `proxy` or `admin`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A started proxy.
#[derive(Debug)]
pub struct Running {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin endpoints listen, if configured.
    pub admin_addr: Option<SocketAddr>,
    state: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    reloader: Option<Arc<Reloader>>,
    watchers: Vec<JoinHandle<()>>,
    proxy_task: JoinHandle<usize>,
    admin_task: Option<JoinHandle<()>>,
    /// See [`Running::cut_flag`].
    cut: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts the proxy described by `config`; `file` names it in errors.
pub async fn start(config: Config, file: &str) -> Result<Running, StartError> {
    start_with(config, file, StartOptions::default()).await
}

/// [`start`] with [`StartOptions`].
pub async fn start_with(
    config: Config,
    file: &str,
    options: StartOptions,
) -> Result<Running, StartError> {
    let drain = config.proxy.drain_timeout;
    let max_header_bytes = usize::try_from(config.proxy.max_header_bytes).unwrap_or(usize::MAX);
    let header_timeout = config.proxy.client_header_timeout;
    let idle_timeout = config.proxy.client_idle_timeout;
    let delayed_close = config.proxy.delayed_close_timeout;
    let send_timeout = config.proxy.send_timeout;
    let proxy_listen = config.proxy.listen;
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    for w in proxy_core::config::warnings(&config) {
        tracing::warn!("{file}: {w}");
    }
    // The recorder first: the TLS acceptor records its certificate's expiry.
    if config.metrics.enabled {
        audit::metrics::install();
    }
    // Certificate, key and client CA are checked here, before binding.
    let tls = match &config.proxy.tls {
        Some(t) => Some(crate::tls::acceptor(t, file)?),
        None => None,
    };
    let kept = Arc::new(Kept {
        upstreams: UpstreamClients::with_settings(PoolSettings {
            max_idle: config.proxy.upstream_max_idle,
            idle_timeout: config.proxy.upstream_idle_timeout,
            h2_keepalive: Some(config.proxy.upstream_h2_keepalive).filter(|d| !d.is_zero()),
            ..PoolSettings::default()
        }),
        memory: Arc::default(),
        observer: Arc::default(),
        cut: Arc::default(),
    });
    let proxy = Arc::new(ArcSwap::from_pointee(build_proxy_with(
        config, file, &options, None, &kept,
    )?));

    let listener = bind(proxy_listen).map_err(|source| StartError::Bind {
        what: "proxy",
        addr: proxy_listen,
        source,
    })?;
    let proxy_addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "proxy",
        addr: proxy_listen,
        source,
    })?;
    let admin_listener = match admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "admin",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    // Built inactive (see `CredentialSource::activate`); the config is in
    // service now that its listeners are bound.
    crate::build::put_in_service(&proxy.load(), &options, &kept);

    let (shutdown, rx) = watch::channel(false);
    // The admin listener outlives the drain, so probes see "not ready"
    // (and "alive") instead of connection errors while requests finish.
    let (admin_shutdown, admin_rx) = watch::channel(false);
    let reloader = options.config_path.clone().map(|path| {
        Arc::new(Reloader::new(
            path,
            proxy.clone(),
            options.clone(),
            kept.clone(),
        ))
    });
    let mut watchers = Vec::new();
    if let (Some(r), true) = (&reloader, options.watch_config) {
        match reload::watch(r.clone()) {
            Ok(task) => watchers.push(task),
            Err(e) => {
                tracing::warn!(error = %e, file = %r.path().display(), "cannot watch the config file; reload with SIGHUP or the management API")
            }
        }
        #[cfg(unix)]
        match reload::on_sighup(r.clone()) {
            Ok(task) => watchers.push(task),
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        }
        // A change made after the config was loaded and before the watch
        // began raised no event: compare once now (a no-op when the file
        // still says what runs).
        let r = r.clone();
        // The reload logs its own outcome (a refused file keeps the config
        // loaded at startup).
        watchers.push(tokio::spawn(async move {
            let _ = r.reload("startup", true).await;
        }));
    }
    let state = Arc::new(AdminState::new(proxy.clone()).with_reloader(reloader.clone()));
    // "Resolved once" does not wait for the first readiness probe.
    watchers.push(tokio::spawn(admin::watch_resolved(state.clone())));
    let proxy_task = tokio::spawn(crate::server::serve(
        listener,
        proxy,
        rx,
        drain,
        crate::server::ConnLimits {
            max_header_bytes,
            header_timeout,
            idle_timeout,
            delayed_close,
            send_timeout,
        },
        tls,
        kept.cut.clone(),
    ));
    let admin_task = admin_listener.map(|l| {
        tokio::spawn(admin::serve(
            l,
            state.clone(),
            admin_rx,
            header_timeout,
            idle_timeout,
        ))
    });
    tracing::info!(%proxy_addr, admin_addr = ?admin_addr, "latchkey serving");
    Ok(Running {
        cut: kept.cut.clone(),
        proxy_addr,
        admin_addr,
        state,
        shutdown,
        admin_shutdown,
        reloader,
        watchers,
        proxy_task,
        admin_task,
    })
}

impl Running {
    /// The proxy currently serving (for inspection in tests and tools).
    pub fn proxy(&self) -> Arc<Proxy> {
        self.state.proxy.load_full()
    }

    /// What the admin listener serves from (for calling
    /// [`admin::handle`] directly in tests).
    pub fn admin_state(&self) -> Arc<AdminState> {
        self.state.clone()
    }

    /// Set it before dropping a drain that is cut short (`latchkey run`
    /// on a second stop signal): the requests still in flight are then
    /// recorded as cut by the proxy (`action: error`, 503, reason
    /// `shutdown`), not as callers that went away.
    pub fn cut_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.cut.clone()
    }

    /// The reloader, when started with a config file.
    pub fn reloader(&self) -> Option<Arc<Reloader>> {
        self.reloader.clone()
    }

    /// Reloads the config file now (as SIGHUP does). Errors if started
    /// without a file or if the new config is invalid (the old one keeps
    /// serving).
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        match &self.reloader {
            Some(r) => r.reload("api", false).await,
            None => Err(ReloadError::NoFile),
        }
    }

    /// Graceful stop: not ready, stop accepting, drain, close admin.
    /// Returns true if every in-flight request finished within the drain
    /// timeout.
    ///
    /// Requests still in flight when the drain timeout runs out are cut,
    /// and recorded so (`action: error`, reason `shutdown`).
    pub async fn shutdown(self) -> bool {
        for w in &self.watchers {
            w.abort();
        }
        self.state.serving.store(false, Ordering::Release);
        let _ = self.shutdown.send(true);
        let clean = matches!(self.proxy_task.await, Ok(0));
        let _ = self.admin_shutdown.send(true);
        if let Some(t) = self.admin_task {
            let _ = t.await;
        }
        tracing::info!(clean, "latchkey stopped");
        clean
    }
}

/// Binds a listener with a deep accept queue: the default (128) overflows
/// when hundreds of callers connect at once (a deploy, a retry storm), and
/// overflowed SYNs wait a full second for the retransmit.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C), with
/// the signal's name.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Resolves once `rx` holds `true` (or its sender is gone).
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
