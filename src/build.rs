//! Building a [`Proxy`] from a config: credential sources (static, or
//! refreshing with their store), the route stacks with the 401 retry, and the
//! audit layer around everything.
//!
//! On a reload the previous proxy is passed in: a credential whose config
//! (and store settings) did not change keeps its source, and so its token,
//! generation, schedule and single-flight state. A reload therefore never
//! causes a refresh storm, and removed credentials stop refreshing once the
//! old proxy's last in-flight request finishes.

use audit::{AuditLayer, AuditSink, TracingSink};
use proxy_core::config::{
    Config, ConfigError, CredentialConfig, FieldError, RedisSettings, RouteConfig, StoreKind,
};
use proxy_core::credential::{CredentialSource, StaticSource};
use proxy_core::facts::RefreshObserver;
use proxy_core::secret::{SecretRef, SecretSource};
use proxy_core::stack::{self, EdgeStack, RouteLayers, RouteService};
use proxy_core::upstream::UpstreamClients;
use refresh_layer::provider::TokenProvider;
use refresh_layer::provider::exec::ExecProvider;
use refresh_layer::provider::file::FileTokenProvider;
use refresh_layer::provider::oauth2::OAuth2Provider;
use refresh_layer::store::crypto::Keyring;
use refresh_layer::store::{
    FileStore, MemoryStore, RedisStore, RedisStoreSettings, RedisTls, Store,
};
use refresh_layer::{Handover, RefreshSettings, RefreshingSource};
use retry401_layer::{Retry401Layer, RetryPolicy};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tower::Layer;

/// The whole proxy's service: the audit layer (a pass-through when audit
/// and metrics are both off) around proxy-core's [`EdgeStack`], with its
/// type kept (not erased): the listener holds its future inline.
pub type AppService = audit::layer::Audit<EdgeStack>;

/// A proxy built from one config, as the listener serves it.
pub type Proxy = stack::Proxy<AppService>;

/// Builds one [`CredentialSource`] per configured credential: static
/// secrets directly, everything that expires behind a
/// [`RefreshingSource`] with its store, active (refreshing in the
/// background) at once.
pub fn credential_sources(
    config: &Config,
    file: &str,
) -> Result<HashMap<String, Arc<dyn CredentialSource>>, ConfigError> {
    let sources = credential_sources_with(config, file, None, None, &Arc::new(MemoryStore::new()))?;
    for source in sources.values() {
        source.activate();
    }
    Ok(sources)
}

/// Like [`credential_sources`], reporting every refresh attempt to
/// `observer` (audit records and metrics), and reusing the sources of
/// `previous` for credentials whose config did not change. The sources it
/// builds are inactive until [`CredentialSource::activate`].
///
/// Credentials with `store: memory` keep their state in `memory`, the
/// running process's one memory store, kept across reloads like a file
/// or Redis store: a credential whose settings changed but whose provider
/// did not (a new `refresh.buffer`, say) starts from the state the old
/// source left, its rotated refresh token included, not from the config's
/// seed, which the token endpoint has already consumed. A changed provider
/// (another endpoint, client or seed) starts afresh.
pub fn credential_sources_with(
    config: &Config,
    file: &str,
    observer: Option<Arc<dyn RefreshObserver>>,
    previous: Option<&Proxy>,
    memory: &Arc<MemoryStore>,
) -> Result<HashMap<String, Arc<dyn CredentialSource>>, ConfigError> {
    let poll = config.secrets.file_poll_interval;
    let mut errs = Vec::new();
    // A store is built (its directory checked, Redis's URL, keys and TLS
    // files read) only for the credentials this build makes anew: a reload
    // that keeps every credential of a store, its section unchanged, does
    // not read its files again (a URL or key file mid-rotation must not
    // refuse an unrelated edit).
    let builds = |kind: StoreKind| {
        config.credentials.iter().any(|c| {
            c.store == kind
                && previous
                    .and_then(|p| unchanged_source(p, config, c))
                    .is_none()
        })
    };
    let file_store = match (&config.file_store, builds(StoreKind::File)) {
        (Some(fs), true) => match FileStore::new(&fs.dir) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                errs.push(FieldError::new("file_store.dir", e.to_string()));
                None
            }
        },
        _ => None,
    };
    let redis_store = if builds(StoreKind::Redis) {
        config
            .redis
            .as_ref()
            .and_then(|r| match redis_store(r, poll) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    errs.push(e);
                    None
                }
            })
    } else {
        None
    };
    let mut out = HashMap::new();
    for (i, c) in config.credentials.iter().enumerate() {
        // Checked at every build, also for a source kept from the last one
        // (which reads the file again before each token request).
        if let Some(ca) = c.oauth2.as_ref().and_then(|o| o.ca_file.as_deref())
            && let Err(e) = proxy_core::upstream::check_ca_file(ca)
        {
            errs.push(FieldError::new(
                format!("credentials[{i}].oauth2.ca_file"),
                e.0,
            ));
            continue;
        }
        if let Some(src) = previous.and_then(|p| unchanged_source(p, config, c)) {
            out.insert(c.id.clone(), src);
            continue;
        }
        let source: Arc<dyn CredentialSource> = if let Some(secret) = &c.static_ {
            Arc::new(StaticSource::new(
                c.id.clone(),
                SecretSource::resolve(secret, poll),
            ))
        } else {
            let provider: Arc<dyn TokenProvider> = match (&c.oauth2, &c.exec, &c.file) {
                (Some(o), _, _) => match OAuth2Provider::new(o, poll) {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        errs.push(FieldError::new(format!("credentials[{i}].oauth2"), e));
                        continue;
                    }
                },
                // The command does not inherit the secrets latchkey reads
                // from its own environment.
                (_, Some(e), _) => Arc::new(ExecProvider::new(e).without_env(env_secrets(config))),
                (_, _, Some(f)) => Arc::new(FileTokenProvider::new(f)),
                _ => continue,
            };
            let store: Arc<dyn Store> = match (c.store, &file_store, &redis_store) {
                (StoreKind::File, Some(fs), _) => fs.clone(),
                (StoreKind::Redis, _, Some(rs)) => rs.clone(),
                (StoreKind::File | StoreKind::Redis, ..) => continue,
                (StoreKind::Memory, ..) => {
                    if !same_provider(previous, c) {
                        memory.forget(&c.id);
                    }
                    // Bound to this provider's epoch: a refresh of the old
                    // provider still running cannot hand its state over.
                    memory.scoped(&c.id)
                }
            };
            let settings = RefreshSettings::from(&c.refresh);
            let id = c.id.as_str();
            let observer = observer.clone();
            // A credential rebuilt for a changed store (or store section)
            // starts from what the old source held: the store may be
            // unreadable now (Redis down during the reload, a new
            // keyring), and a rotated token whose save failed lives only
            // there. A memory credential whose state is already in the
            // shared memory store (same provider, memory before) needs
            // none, unless its tokens are now issued differently (scopes,
            // `params`, client secret: the hand-over makes it refresh at
            // once); one moved to memory from a file or Redis store does.
            let issued_differently = previous
                .and_then(|p| p.config.credentials.iter().find(|o| o.id == c.id))
                .is_some_and(|o| o.oauth2 != c.oauth2);
            let handover =
                (c.store != StoreKind::Memory || !same_provider(previous, c) || issued_differently)
                    .then(|| held_by_previous(previous, c))
                    .flatten();
            // Inactive until the config is in service (`activate`): a
            // config refused after this point must not have fetched,
            // loaded or saved anything.
            Arc::new(RefreshingSource::inactive(
                id, provider, store, settings, observer, handover,
            ))
        };
        out.insert(c.id.clone(), source);
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError::new(file, errs))
    }
}

/// Whether `previous` had credential `c` with the same provider and a
/// memory store: the state it left (in the shared memory store) is `c`'s.
fn same_provider(previous: Option<&Proxy>, c: &CredentialConfig) -> bool {
    previous
        .and_then(|p| p.config.credentials.iter().find(|o| o.id == c.id))
        .is_some_and(|o| {
            o.store == StoreKind::Memory
                && same_issuer(o.oauth2.as_ref(), c.oauth2.as_ref())
                && o.exec == c.exec
                && o.file == c.file
                && o.static_ == c.static_
        })
}

/// Whether two `oauth2` sections issue the same tokens: the same token
/// endpoint, client, grant and seed. Scopes, `params`, the client secret
/// and how it is sent, and the CA may change: a refresh token stays valid
/// across those edits (a client secret rotated by a reload, say), and
/// starting over from the seed, which the endpoint consumed long ago,
/// would replay it (an IdP that detects reuse then revokes the whole
/// family, the live refresh token included).
fn same_issuer(
    old: Option<&proxy_core::config::OAuth2Config>,
    new: Option<&proxy_core::config::OAuth2Config>,
) -> bool {
    match (old, new) {
        (None, None) => true,
        (Some(o), Some(n)) => {
            o.token_url.trim() == n.token_url.trim()
                && o.client_id == n.client_id
                && o.grant == n.grant
                && o.refresh_token == n.refresh_token
        }
        _ => false,
    }
}

/// What `previous`'s source of `c` holds, if `c`'s provider is the same
/// (same endpoint, client and seed: the state is only meaningful to it).
/// With other scopes, `params` or client secret, to be refreshed at once
/// (see [`Handover::refresh_first`]).
fn held_by_previous(previous: Option<&Proxy>, c: &CredentialConfig) -> Option<Handover> {
    let previous = previous?;
    let old = previous.config.credentials.iter().find(|o| o.id == c.id)?;
    if !same_issuer(old.oauth2.as_ref(), c.oauth2.as_ref())
        || old.exec != c.exec
        || old.file != c.file
    {
        return None;
    }
    let held = previous
        .credentials
        .iter()
        .find(|s| s.id() == c.id)?
        .as_any()?
        .downcast_ref::<RefreshingSource>()?
        .handover()?;
    Some(if old.oauth2 == c.oauth2 {
        held
    } else {
        held.refresh_first()
    })
}

/// The previous source of `c` if nothing that shapes it changed (see
/// [`keeps_source`]).
fn unchanged_source(
    previous: &Proxy,
    config: &Config,
    c: &CredentialConfig,
) -> Option<Arc<dyn CredentialSource>> {
    keeps_source(&previous.config, config, c).then(|| {
        previous
            .credentials
            .iter()
            .find(|s| s.id() == c.id)
            .cloned()
    })?
}

/// Whether a reload from `old` to `new` keeps `c`'s source: nothing that
/// shapes it changed (its own config, the store section it uses, the
/// secrets' settings, and for an `exec` command the variables it is kept
/// from, since a reload that reads another one must rebuild it).
pub(crate) fn keeps_source(old: &Config, new: &Config, c: &CredentialConfig) -> bool {
    let Some(old_c) = old.credentials.iter().find(|o| o.id == c.id) else {
        return false;
    };
    let same_store = match c.store {
        StoreKind::Memory => true,
        StoreKind::File => old.file_store == new.file_store,
        StoreKind::Redis => old.redis == new.redis,
    };
    let same_env = c.exec.is_none() || env_secrets(old) == env_secrets(new);
    old_c == c && same_store && old.secrets == new.secrets && same_env
}

/// The environment variables `config` reads secrets from (`{ env: NAME }`).
fn env_secrets(config: &Config) -> std::collections::BTreeSet<String> {
    proxy_core::config::secret_refs(config)
        .into_iter()
        .filter_map(|(_, s)| match s {
            SecretRef::Env(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// Builds the shared Redis store: URL and keys from their secret
/// references, resolved now (a reference that does not resolve, or a key
/// that is not 32 base64 bytes, is a config error naming the field).
fn redis_store(r: &RedisSettings, poll: std::time::Duration) -> Result<RedisStore, FieldError> {
    let url = SecretSource::resolve(&r.url, poll)
        .load()
        .map_err(|e| FieldError::new("redis.url", e.to_string()))?;
    let keyring = redis_keyring(r, poll)?;
    let tls = redis_tls(r, url.expose())?;
    RedisStore::new(RedisStoreSettings {
        url: url.expose().to_string(),
        key_prefix: r.key_prefix.clone(),
        keys: keyring,
        lease: r.lock_lease,
        timeout: r.timeout,
        tls,
    })
    .map_err(|e| FieldError::new("redis.url", e.to_string()))
}

/// The keyring from `redis.encryption_keys`, each key resolved now (also
/// used by `latchkey check`). A key that is not base64 of 32 bytes is named
/// by its position, never shown.
pub(crate) fn redis_keyring(
    r: &RedisSettings,
    poll: std::time::Duration,
) -> Result<Keyring, FieldError> {
    let mut keys = Vec::new();
    for (i, k) in r.encryption_keys.iter().enumerate() {
        let v = SecretSource::resolve(k, poll)
            .load()
            .map_err(|e| FieldError::new(format!("redis.encryption_keys[{i}]"), e.to_string()))?;
        keys.push(v);
    }
    Keyring::from_base64(keys.iter().map(|k| k.expose()))
        .map_err(|e| FieldError::new("redis.encryption_keys", e.to_string()))
}

/// `redis.ca_file` and the client certificate, read and checked now (the
/// files are read when the store is built: at startup, and on a reload that
/// changes the `redis` settings; `latchkey check` reads them too).
pub(crate) fn redis_tls(r: &RedisSettings, url: &str) -> Result<Option<RedisTls>, FieldError> {
    let (ca, cert, key) = (&r.ca_file, &r.client_cert_file, &r.client_key_file);
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    let field = if ca.is_some() {
        "redis.ca_file"
    } else {
        "redis.client_cert_file"
    };
    if !url.starts_with("rediss://") {
        return Err(FieldError::new(
            field,
            "needs a rediss:// URL (TLS); redis.url is not one",
        ));
    }
    let ca_pem = match ca {
        Some(path) => Some(
            proxy_core::upstream::read_checked_ca(path)
                .map_err(|e| FieldError::new("redis.ca_file", e.0))?
                .to_vec(),
        ),
        None => None,
    };
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some(
            proxy_core::upstream::read_checked_client_cert(cert, key)
                .map_err(|e| FieldError::new(format!("redis.{}", e.field), e.message))?,
        ),
        (Some(_), None) => {
            return Err(FieldError::new(
                "redis.client_key_file",
                "needed with client_cert_file (the certificate's private key)",
            ));
        }
        (None, Some(_)) => {
            return Err(FieldError::new(
                "redis.client_cert_file",
                "needed with client_key_file (the certificate the key belongs to)",
            ));
        }
        (None, None) => None,
    };
    Ok(Some(RedisTls { ca_pem, client }))
}

/// The layers the `latchkey` crate adds to every route's credential stack:
/// the 401 retry (outside acquire and inject, see `retry401_layer`), on
/// routes with `retry.enabled` whose credential can change
/// ([`CredentialSource::can_change`]): a static key from an environment
/// variable or a literal value never can, and a replay would only resend
/// the refused key, so those routes go without the layer (and without
/// the copy of every request it keeps), as with `retry.enabled: false`.
#[derive(Debug, Default)]
pub struct LatchkeyLayers;

impl RouteLayers for LatchkeyLayers {
    fn wrap(
        &self,
        route: &RouteConfig,
        source: Option<&Arc<dyn CredentialSource>>,
        inner: RouteService,
    ) -> RouteService {
        let Some(src) = source else {
            return inner;
        };
        match retry_policy(route, src.as_ref()) {
            Some(policy) => RouteService::new(Retry401Layer::new(src.clone(), policy).layer(inner)),
            None => inner,
        }
    }
}

/// The 401 retry's policy for `route` with its credential `source`, or
/// `None` when the route goes without the layer: `retry.enabled: false`,
/// or a credential that can never change (see [`LatchkeyLayers`]).
fn retry_policy(route: &RouteConfig, source: &dyn CredentialSource) -> Option<RetryPolicy> {
    if !route.retry.enabled || !source.can_change() {
        return None;
    }
    let mut policy = RetryPolicy::from_config(&route.retry);
    // No more is read for a replay than the route accepts: a longer body
    // streams on to the forwarder's 413.
    if let Some(limit) = route.max_request_body {
        policy.max_replay_body = policy.max_replay_body.min(limit);
    }
    Some(policy)
}

/// How [`start_with`](crate::app::start_with) wires the audit trail and
/// config reloads.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Where audit records go instead of the `latchkey::audit` tracing
    /// target (`latchkey run`'s batching writer, tests, embedding). `audit.enabled: false` still turns
    /// records off.
    pub audit_sink: Option<Arc<dyn AuditSink>>,
    /// The config file, for reloads (SIGHUP, the management API, and
    /// watching the file when `watch_config` is set).
    pub config_path: Option<PathBuf>,
    /// Reload by itself when the config file changes.
    pub watch_config: bool,
    /// The audit destination could not be opened at startup (`audit.file`
    /// with audit off, on a read-only filesystem say): a reload keeps
    /// `audit.enabled` off and reports turning it on as needing a restart.
    pub audit_unavailable: bool,
}

/// Builds the proxy service for `config` (no listeners), with the audit
/// trail going to the `latchkey::audit` tracing target, its credentials
/// active (refreshing in the background) at once.
pub fn build_proxy(config: Config, file: &str) -> Result<Proxy, ConfigError> {
    let kept = Kept::default();
    let options = StartOptions::default();
    let proxy = build_proxy_with(config, file, &options, None, &kept)?;
    put_in_service(&proxy, &options, &kept);
    Ok(proxy)
}

/// Where `config`'s audit records go: `options`' sink, else the
/// `latchkey::audit` tracing target; `None` with audit off.
pub(crate) fn audit_sink(config: &Config, options: &StartOptions) -> Option<Arc<dyn AuditSink>> {
    config.audit.enabled.then(|| {
        options
            .audit_sink
            .clone()
            .unwrap_or_else(|| Arc::new(TracingSink) as Arc<dyn AuditSink>)
    })
}

/// Puts a proxy that [`build_proxy_with`] built in service: its audit and
/// metrics settings now apply to every credential's refresh reports (see
/// [`crate::observer`]), and its credentials start refreshing
/// ([`CredentialSource::activate`]). Call it once the proxy serves: at
/// startup once the listeners are bound, at a reload once the new config is
/// swapped in (never for a refused one).
pub fn put_in_service(proxy: &Proxy, options: &StartOptions, kept: &Kept) {
    kept.observer
        .serve(&proxy.config, options, &proxy.credentials);
    for source in &proxy.credentials {
        source.activate();
    }
}

/// What a running proxy keeps across reloads.
#[derive(Debug, Default)]
pub struct Kept {
    /// The upstream connection pools, so they stay warm.
    pub upstreams: UpstreamClients,
    /// The state of `store: memory` credentials (see
    /// [`credential_sources_with`]).
    pub memory: Arc<MemoryStore>,
    /// What every refreshing source reports to: the audit settings of the
    /// config in service (see [`crate::observer`]).
    pub observer: Arc<crate::observer::CurrentObserver>,
    /// Set when the requests still in flight are cut (the drain timeout
    /// ran out, or a second stop signal): the audit trail records them as
    /// cut by the proxy, not as callers that went away.
    pub cut: Arc<std::sync::atomic::AtomicBool>,
}

/// Builds the proxy service for `config` (no listeners): the stack from
/// `proxy_core::stack`, wrapped in the audit layer (outermost), with
/// refreshing credentials reporting to the audit trail. Installs the
/// Prometheus recorder when `metrics.enabled`.
///
/// Refreshing credentials are built inactive: whoever puts the proxy in
/// service calls [`put_in_service`] (a reload only once the new config is
/// accepted, so a refused one never reaches a token endpoint or a store, and
/// its audit settings never apply).
///
/// With `previous` (a reload), unchanged credentials keep their sources;
/// `kept` is shared across reloads so connection pools stay warm and
/// memory-stored credentials keep their state.
pub fn build_proxy_with(
    config: Config,
    file: &str,
    options: &StartOptions,
    previous: Option<&Proxy>,
    kept: &Kept,
) -> Result<Proxy, ConfigError> {
    // A credential whose provider changed was forgotten in the memory
    // store while building; if the build fails, the running source gets
    // its state back.
    let built = build_proxy_once(config, file, options, previous, kept);
    match &built {
        Ok(_) => kept.memory.commit(),
        Err(_) => kept.memory.rollback(),
    }
    built
}

fn build_proxy_once(
    config: Config,
    file: &str,
    options: &StartOptions,
    previous: Option<&Proxy>,
    kept: &Kept,
) -> Result<Proxy, ConfigError> {
    let config = Arc::new(config);
    let sink = audit_sink(&config, options);
    let metrics = config.metrics.enabled;
    if metrics {
        audit::metrics::install();
    }
    // Reports as the config in service says, whatever config built the
    // source (this one, or an earlier one a reload kept it from).
    let observer: Option<Arc<dyn RefreshObserver>> = Some(kept.observer.clone());
    let sources = credential_sources_with(&config, file, observer, previous, &kept.memory)?;
    let audit = match (sink, metrics) {
        (Some(sink), metrics) => AuditLayer::new(sink, metrics),
        (None, true) => AuditLayer::metrics_only(),
        (None, false) => AuditLayer::disabled(),
    }
    .with_cut(kept.cut.clone());
    // Not type-erased: the listener calls the concrete stack, and hyper
    // keeps its future in the connection's one reused allocation instead
    // of a boxed future per request.
    stack::build_typed(
        config,
        file,
        &sources,
        &kept.upstreams,
        &LatchkeyLayers,
        audit,
        previous.map(|p| (&*p.config, p.clients.as_slice(), p.usernames.as_slice())),
    )
}

#[cfg(test)]
mod tests;
