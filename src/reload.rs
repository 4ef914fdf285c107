//! Config reload: on file change, SIGHUP, or `POST /v0/management/reload`.
//!
//! The new file is parsed and fully validated, and the whole new [`Proxy`]
//! (routes, stacks, credential sources) is built, before anything changes;
//! any problem leaves the running config serving and is returned and logged
//! with its field path, and `latchkey_config_reloads_total{result="error"}`
//! moves. The swap is one atomic store into the `ArcSwap` the listener reads
//! per request: in-flight requests finish on the config they started with,
//! new ones use the new one.
//!
//! Credentials whose config did not change keep their sources (token,
//! generation, schedule), so a reload causes no refresh; removed credentials
//! stop refreshing once the old config's last request finishes. Listener
//! addresses, TLS settings and the admin section are bound at startup: a
//! change to them is reported as needing a restart, and the rest applies.
//!
//! The watcher follows the file's directory, not the file: Kubernetes updates
//! a mounted ConfigMap by swapping a `..data` symlink in that directory, which
//! a watch on the file itself never sees.

use crate::build::{Kept, Proxy, StartOptions, build_proxy_with};
use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use proxy_core::config::{Config, ConfigError};
use proxy_core::credential::CredentialSource;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a reload waits for a refresh running at that moment before it
/// takes the hand-overs (see `RefreshingSource::quiesce`).
const HANDOVER_WAIT: Duration = Duration::from_secs(15);
/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReloadOutcome {
    /// False when the file had not changed (watcher-triggered reloads skip
    /// identical content).
    pub changed: bool,
    /// Routes now served.
    pub routes: usize,
    /// Credentials that kept their state.
    pub credentials_kept: Vec<String>,
    /// Credentials built anew (added, or their config changed).
    pub credentials_new: Vec<String>,
    /// Credentials no longer configured.
    pub credentials_removed: Vec<String>,
    /// Changes that need a restart to apply.
    pub restart_required: Vec<String>,
}

/// Why a reload was refused; the old config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid (every problem, with field paths).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// latchkey was started without a config file.
    #[error("reload is not available: latchkey was started without a config file")]
    NoFile,
    /// The runtime shut down while the reload ran (latchkey is stopping).
    #[error("the reload was interrupted: latchkey is shutting down")]
    Interrupted,
}

/// Reloads one config file into a running proxy.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    file: String,
    proxy: Arc<ArcSwap<Proxy>>,
    options: StartOptions,
    kept: Arc<Kept>,
    /// How many times the file was read (observability for tests and
    /// debugging: a busy directory must not make this climb).
    reads: std::sync::atomic::AtomicU64,
    /// Serialises reloads; holds the bytes last read (applied or refused),
    /// so a watcher woken by unrelated files in the directory neither
    /// re-applies nor re-refuses the same content.
    last: tokio::sync::Mutex<Option<Vec<u8>>>,
}

impl Reloader {
    /// A reloader for `path`, swapping into `proxy`.
    ///
    /// The file is read now. If it no longer says what `proxy` runs (it
    /// changed after the config was loaded at startup, before anything
    /// watched it), it is not taken as the content last applied: the first
    /// reload, even one that asks only for changed content (see
    /// [`start_with`](crate::app::start_with), which makes one as soon as
    /// the file is watched), applies it.
    pub fn new(
        path: PathBuf,
        proxy: Arc<ArcSwap<Proxy>>,
        options: StartOptions,
        kept: Arc<Kept>,
    ) -> Self {
        let file = path.display().to_string();
        let running = proxy.load().config.clone();
        let initial = std::fs::read(&path).ok().filter(|bytes| {
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| Config::from_yaml(text, &file).ok())
                .is_some_and(|c| c == *running)
        });
        Self {
            file,
            path,
            proxy,
            options,
            kept,
            reads: std::sync::atomic::AtomicU64::new(0),
            last: tokio::sync::Mutex::new(initial),
        }
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times a reload has read the file.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reloads now. With `only_if_changed`, identical file content is a
    /// no-op (the watcher sees many events per update).
    ///
    /// A reload runs to its end even if the caller stops waiting for it (a
    /// management API caller that disconnects while the reload waits for a
    /// refresh, a timeout around this call): cut between reading the file
    /// and swapping, it would leave the new content recorded as seen but
    /// never applied, and every later watcher reload would skip it as
    /// unchanged.
    pub async fn reload(
        self: &Arc<Self>,
        trigger: &'static str,
        only_if_changed: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        let this = self.clone();
        let task = tokio::spawn(async move { this.reload_to_end(trigger, only_if_changed).await });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(ReloadError::Interrupted),
        }
    }

    async fn reload_to_end(
        &self,
        trigger: &'static str,
        only_if_changed: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        let mut last = self.last.lock().await;
        let result = self.apply(&mut last, only_if_changed).await;
        match &result {
            Ok(o) if !o.changed => {}
            Ok(o) => {
                audit::metrics::record_config_reload(true);
                tracing::info!(
                    trigger, file = %self.file, routes = o.routes,
                    kept = ?o.credentials_kept, new = ?o.credentials_new, removed = ?o.credentials_removed,
                    "config reloaded"
                );
                for r in &o.restart_required {
                    tracing::warn!(trigger, file = %self.file, "{r}");
                }
            }
            Err(e) => {
                audit::metrics::record_config_reload(false);
                tracing::error!(trigger, file = %self.file, error = %e, "config reload refused; the running config keeps serving");
            }
        }
        result
    }

    async fn apply(
        &self,
        last: &mut Option<Vec<u8>>,
        only_if_changed: bool,
    ) -> Result<ReloadOutcome, ReloadError> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = tokio::fs::read(&self.path).await.map_err(|e| {
            ConfigError::single(&self.file, "", format!("cannot read the config file: {e}"))
        })?;
        let old = self.proxy.load_full();
        if only_if_changed && last.as_deref() == Some(bytes.as_slice()) {
            return Ok(ReloadOutcome {
                changed: false,
                routes: old.config.routes.len(),
                credentials_kept: Vec::new(),
                credentials_new: Vec::new(),
                credentials_removed: Vec::new(),
                restart_required: Vec::new(),
            });
        }
        // Remember what was read whatever the outcome: refused content is
        // reported once, not again on every event in the directory.
        *last = Some(bytes.clone());
        let text = String::from_utf8(bytes)
            .map_err(|_| ConfigError::single(&self.file, "", "the config file is not UTF-8"))?;
        let mut config = Config::from_yaml(&text, &self.file)?;
        let restart_required =
            startup_bound_changes(&old.config, &config, self.options.audit_unavailable);
        let listen_in_file = config.proxy.listen;
        keep_startup_bound(&old.config, &mut config, self.options.audit_unavailable);
        // Checked again against what runs: a route made public in the same
        // edit that moves `proxy.listen` to loopback is public on the
        // listener still bound (perhaps 0.0.0.0) until a restart.
        proxy_core::config::validate(&config).map_err(|mut errors| {
            if !restart_required.is_empty() {
                errors.push(proxy_core::config::FieldError::new(
                    "",
                    format!(
                        "this was checked with the running values of settings that apply only after a restart: {}",
                        restart_required.join("; ")
                    ),
                ));
            }
            if listen_in_file != config.proxy.listen {
                errors.push(proxy_core::config::FieldError::new(
                    "proxy.listen",
                    format!(
                        "the listener stays {} until a restart (the file says {listen_in_file}); \
                         the config was checked against the running one",
                        config.proxy.listen
                    ),
                ));
            }
            ConfigError::new(&self.file, errors)
        })?;
        // A hand-over (taken while building) must include what a refresh
        // running now rotates to: no rotating source of the running config,
        // nor one this reload may rebuild (see `Paused`), starts a refresh
        // until this reload is applied or refused (the guard resumes them,
        // after the replaced ones are retired), and their refreshes
        // already running are waited for, together and briefly
        // (a token call is bounded by 10 s; one that hangs is abandoned
        // later anyway).
        let paused = Paused::new(&old.credentials, |id| rebuilt(&old.config, &config, id));
        let until = tokio::time::Instant::now() + HANDOVER_WAIT;
        futures_util::future::join_all(
            paused
                .0
                .iter()
                .map(|s| s.quiesce(until.saturating_duration_since(tokio::time::Instant::now()))),
        )
        .await;
        // Built on the blocking pool: the build reads files (CA bundles,
        // client certificates and keys, secrets), and a hung mount must
        // not stall a runtime that may have one thread.
        let (file, options, kept, previous) = (
            self.file.clone(),
            self.options.clone(),
            self.kept.clone(),
            old.clone(),
        );
        let new = tokio::task::spawn_blocking(move || {
            build_proxy_with(config, &file, &options, Some(&previous), &kept)
        })
        .await;
        let new = match new {
            Ok(built) => built?,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only when the runtime shuts down.
                Err(_) => return Err(ReloadError::Interrupted),
            },
        };

        let (mut kept, mut added) = (Vec::new(), Vec::new());
        for src in &new.credentials {
            let same = old
                .credentials
                .iter()
                .any(|o| o.id() == src.id() && Arc::ptr_eq(o, src));
            if same {
                kept.push(src.id().to_string())
            } else {
                added.push(src.id().to_string())
            }
        }
        let removed: Vec<String> = old
            .credentials
            .iter()
            .filter(|o| !new.credentials.iter().any(|n| n.id() == o.id()))
            .map(|o| o.id().to_string())
            .collect();
        // A credential that no longer refreshes under its id (removed, or
        // rebuilt as a static one) has no expiry: its timestamp gauges
        // would otherwise keep the old token's, and the expiry alert would
        // fire on a working credential. A rebuilt refreshing one keeps them
        // until its next refresh sets them (it starts from the token its
        // predecessor held).
        let no_longer_refreshing: Vec<String> = new
            .credentials
            .iter()
            .filter(|src| !src.refreshes() && added.iter().any(|id| id == src.id()))
            .filter(|src| {
                old.credentials
                    .iter()
                    .any(|o| o.id() == src.id() && o.refreshes())
            })
            .map(|src| src.id().to_string())
            .collect();
        // A shared store no credential uses any more: its up gauge would
        // otherwise keep its last value (0 keeps a "store down" alert
        // firing for a store nothing uses).
        let stores = |p: &Proxy| -> BTreeSet<&'static str> {
            p.credentials.iter().map(|c| c.status().store).collect()
        };
        let unused_stores: Vec<&'static str> = stores(&old)
            .difference(&stores(&new))
            .copied()
            .filter(|kind| !matches!(*kind, "none" | "memory"))
            .collect();
        // Sources not carried over live on while requests of the old
        // config are in flight (a WebSocket tunnel for up to an hour), and
        // may refresh: retired, they no longer set the gauges forgotten
        // below, nor those of the source that replaced them.
        let retired: Vec<Arc<dyn CredentialSource>> = old
            .credentials
            .iter()
            .filter(|o| !new.credentials.iter().any(|n| Arc::ptr_eq(n, o)))
            .cloned()
            .collect();
        let routes = new.config.routes.len();
        let new = Arc::new(new);
        self.proxy.store(new.clone());
        crate::build::put_in_service(&new, &self.options, &self.kept);
        for source in &retired {
            source.retire();
        }
        drop(paused);
        for id in removed.iter().chain(&no_longer_refreshing) {
            audit::metrics::forget_credential(id);
        }
        for store in unused_stores {
            audit::metrics::forget_store(store);
        }
        Ok(ReloadOutcome {
            changed: true,
            routes,
            credentials_kept: kept,
            credentials_new: added,
            credentials_removed: removed,
            restart_required,
        })
    }
}

/// Puts the running values of the settings read once at startup into
/// `new`, so it says what runs: the posture rules are checked against the
/// listener actually bound, the management API's config view shows the
/// admin settings in force, and a change that waits for a restart is
/// reported again on every reload (the running config never takes it).
/// With `audit_unavailable` (the audit destination could not be opened at
/// startup) `audit.enabled` is one of them: there is nowhere to write.
fn keep_startup_bound(running: &Config, new: &mut Config, audit_unavailable: bool) {
    let (r, n) = (&running.proxy, &mut new.proxy);
    n.listen = r.listen;
    n.tls.clone_from(&r.tls);
    n.drain_timeout = r.drain_timeout;
    n.max_header_bytes = r.max_header_bytes;
    n.client_header_timeout = r.client_header_timeout;
    n.client_idle_timeout = r.client_idle_timeout;
    n.delayed_close_timeout = r.delayed_close_timeout;
    n.send_timeout = r.send_timeout;
    n.upstream_max_idle = r.upstream_max_idle;
    n.upstream_idle_timeout = r.upstream_idle_timeout;
    n.upstream_h2_keepalive = r.upstream_h2_keepalive;
    new.admin.clone_from(&running.admin);
    new.audit.file.clone_from(&running.audit.file);
    if audit_unavailable {
        new.audit.enabled = running.audit.enabled;
    }
}

/// "A, B changed; they apply after a restart{why}" for the settings of
/// `settings` that changed, if any.
fn restart_note(settings: &[(&str, bool)], why: &str) -> Option<String> {
    let changed: Vec<&str> = settings
        .iter()
        .filter_map(|&(name, changed)| changed.then_some(name))
        .collect();
    let verb = if changed.len() == 1 {
        "it applies"
    } else {
        "they apply"
    };
    (!changed.is_empty()).then(|| {
        format!(
            "{} changed; {verb} after a restart{why}",
            changed.join(", ")
        )
    })
}

/// Settings read once at startup: reported, not applied, on reload
/// (`audit_unavailable`: see [`keep_startup_bound`]).
fn startup_bound_changes(old: &Config, new: &Config, audit_unavailable: bool) -> Vec<String> {
    let mut out = Vec::new();
    let (o, n) = (&old.proxy, &new.proxy);
    if o.listen != n.listen {
        out.push(format!(
            "proxy.listen changed ({} -> {}); restart to move the listener",
            o.listen, n.listen
        ));
    }
    if o.tls != n.tls {
        out.push("proxy.tls changed; the listener's TLS settings apply after a restart (certificate files themselves are reloaded as they change)".to_string());
    }
    // Named one by one: the operator sees which edit waits for a restart.
    out.extend(restart_note(
        &[
            ("proxy.drain_timeout", o.drain_timeout != n.drain_timeout),
            (
                "proxy.max_header_bytes",
                o.max_header_bytes != n.max_header_bytes,
            ),
            (
                "proxy.client_header_timeout",
                o.client_header_timeout != n.client_header_timeout,
            ),
            (
                "proxy.client_idle_timeout",
                o.client_idle_timeout != n.client_idle_timeout,
            ),
            (
                "proxy.delayed_close_timeout",
                o.delayed_close_timeout != n.delayed_close_timeout,
            ),
            ("proxy.send_timeout", o.send_timeout != n.send_timeout),
        ],
        "",
    ));
    out.extend(restart_note(
        &[
            (
                "proxy.upstream_max_idle",
                o.upstream_max_idle != n.upstream_max_idle,
            ),
            (
                "proxy.upstream_idle_timeout",
                o.upstream_idle_timeout != n.upstream_idle_timeout,
            ),
            (
                "proxy.upstream_h2_keepalive",
                o.upstream_h2_keepalive != n.upstream_h2_keepalive,
            ),
        ],
        " (connection pools are made with them)",
    ));
    if old.admin != new.admin {
        out.push(
            "admin changed (listener, management key or remote access); it applies after a restart"
                .to_string(),
        );
    }
    // `audit.enabled` applies at once (the audit layer is rebuilt with the
    // proxy); where records go is opened at startup, and one that could
    // not be opened then has nothing to write to until a restart.
    if old.audit.file != new.audit.file {
        out.push("audit.file changed; the destination applies after a restart".to_string());
    }
    if audit_unavailable && old.audit.enabled != new.audit.enabled {
        out.push(
            "audit.enabled changed; the audit destination could not be opened at startup, so it applies after a restart"
                .to_string(),
        );
    }
    out
}

/// Watches the config file's directory and reloads when the file's content
/// changes. Runs until the returned task is aborted.
pub fn watch(reloader: Arc<Reloader>) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let name = reloader
        .path()
        .file_name()
        .map(std::ffi::OsStr::to_os_string);
    // Only events that can change the file count: the file itself (written,
    // or renamed into place by an editor) and Kubernetes' `..data` /
    // `..<timestamp>` entries. A busy log file in the same directory would
    // otherwise wake the watcher thousands of times a second.
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Opening or reading the file changes nothing, and a reload's own
        // read of it would wake the watcher for another reload, ten times
        // a second for ever (inotify reports opens).
        if matches!(
            event.kind,
            EventKind::Access(
                AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
            )
        ) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            p.file_name().is_some_and(|f| {
                Some(f) == name.as_deref() || f.to_string_lossy().starts_with("..")
            })
        });
        if relevant {
            let _ = tx.send(());
        }
    };
    let dir = reloader
        .path()
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut watcher = notify::recommended_watcher(handler)?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped: keep it in the task.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            // One update is many events (write, chmod, rename, symlink
            // swap): let them settle, then read once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let _ = reloader.reload("file", true).await;
        }
    }))
}

/// Reloads on every SIGHUP until the task is aborted.
#[cfg(unix)]
pub fn on_sighup(reloader: Arc<Reloader>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reloader.reload("sighup", false).await;
        }
    }))
}

/// The refreshing sources of the running config that a reload pauses
/// while it decides (see [`refresh_layer::RefreshingSource::pause`]);
/// resumed when dropped, whether the reload was applied (the replaced ones
/// are retired by then, and stay so) or refused: those whose grant rotates
/// refresh tokens (a refresh meanwhile could fork one), and those the
/// reload rebuilds (a scope edit's successor must start from what a
/// refresh running now obtains, and then refresh with the new settings,
/// not adopt that refresh's result). The others (client credentials,
/// `exec`, `file` that the reload keeps) keep refreshing, and the reload
/// does not wait for them, so a reload that waits for a slow token
/// endpoint never holds back their expired or refused tokens.
struct Paused(Vec<refresh_layer::RefreshingSource>);

/// Whether a reload from `old` to `new` may rebuild credential `id`'s
/// source: it is gone, or the build would not keep it
/// ([`crate::build::keeps_source`]).
fn rebuilt(old: &Config, new: &Config, id: &str) -> bool {
    new.credentials
        .iter()
        .find(|c| c.id == id)
        .is_none_or(|c| !crate::build::keeps_source(old, new, c))
}

impl Paused {
    fn new(sources: &[Arc<dyn CredentialSource>], rebuilt: impl Fn(&str) -> bool) -> Self {
        let paused: Vec<_> = sources
            .iter()
            .filter_map(|s| {
                s.as_any()
                    .and_then(|a| a.downcast_ref::<refresh_layer::RefreshingSource>())
                    .filter(|s| s.rotates() || rebuilt(s.id()))
                    .cloned()
            })
            .collect();
        for s in &paused {
            s.pause();
        }
        Self(paused)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for s in &self.0 {
            s.resume();
        }
    }
}

#[cfg(test)]
mod tests;
