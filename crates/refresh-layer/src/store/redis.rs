//! Redis: credential state shared by replicas, with a distributed
//! single-flight refresh.
//!
//! Keys (under a configurable prefix so deployments can share a Redis):
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}:credential:{id}` | hash: `gen` (the generation, plain) and `val` (the state, AES-256-GCM) |
//! | `{prefix}:lock:{id}` | the refresh lock: `SET NX PX` with a random owner id |
//! | `{prefix}:events:{id}` | pub/sub channel: a new generation was written, or the lock was released |
//!
//! - Lock: taken with `SET NX PX lease`; renewed every third of the lease
//!   while held (only if still the owner); released by compare-and-delete in
//!   Lua. A holder that dies stops renewing and loses the lock when the lease
//!   runs out; another replica then takes over. A live holder whose lock
//!   went missing (Redis restarted without it, or the lease ran out while
//!   Redis was unreachable) takes it back at its next renewal, unless
//!   another replica took it first: it may still be saving a rotated
//!   refresh token, which nobody else may send until it is stored.
//! - A replica that finds the lock taken does not refresh: it waits for the
//!   holder's event (with a bounded poll as fallback, in case a message is
//!   missed), retakes the lock, re-reads, and adopts the new generation.
//! - Writes are compare-and-set on the generation in Lua: a replica that lost
//!   its lease mid-refresh can never overwrite a newer credential.
//! - Redis down: operations fail fast with [`StoreError::Unavailable`]
//!   (`timeout` per command); replicas keep serving what they hold, and
//!   reconnect by themselves.

use super::crypto::Keyring;
use super::health::Health;
use super::{Store, StoreError, StoreLock};
use crate::token::StoredCredential;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::ConnectionManager;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How to reach and use Redis.
#[derive(Clone)]
pub struct RedisStoreSettings {
    /// `redis://` or `rediss://` URL (may hold a password: never printed).
    pub url: String,
    /// Key prefix.
    pub key_prefix: String,
    /// Encryption keys.
    pub keys: Keyring,
    /// Refresh-lock lease.
    pub lease: Duration,
    /// Per-command timeout.
    pub timeout: Duration,
    /// TLS material for a `rediss://` URL beyond the defaults.
    pub tls: Option<RedisTls>,
}

/// TLS material for a `rediss://` server: PEM bytes, read by the caller.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// CA bundle the server's certificate must chain to (instead of the
    /// web PKI roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and private key, for a server that asks.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl fmt::Debug for RedisStoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreSettings")
            .field("url", &"***")
            .field("key_prefix", &self.key_prefix)
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    keys: Keyring,
    lease: Duration,
    timeout: Duration,
    /// Identifies this process in lock values.
    owner: String,
    health: Health,
    /// Where the credentials live (see [`Store::location`]): a
    /// fingerprint of the URL and key prefix (the URL may hold a password,
    /// so it is never kept in clear).
    location: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("lease", &self.inner.lease)
            .finish()
    }
}

/// 1: renewed; 2: it was gone, taken back; 0: another owner holds it.
const LOCK_RENEW: &str = r"local v = redis.call('get', KEYS[1])
if v == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not v then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0";
const LOCK_RELEASE: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]); redis.call('publish', KEYS[2], 'released'); return 1 else return 0 end";
const SAVE_CAS: &str = r"local g = tonumber(redis.call('hget', KEYS[1], 'gen') or '0')
if tonumber(ARGV[1]) <= g then return g end
redis.call('hset', KEYS[1], 'gen', ARGV[1], 'val', ARGV[2])
redis.call('publish', KEYS[2], ARGV[1])
return -1";

/// Whether [`RedisStore::new`] would accept `url` and `tls` (the URL
/// parsed, the TLS material read; nothing connected): for `latchkey
/// check`.
pub fn check_client(url: &str, tls: Option<&RedisTls>) -> Result<(), StoreError> {
    client(url, tls).map(drop)
}

/// The Redis client for `url` and `tls`, nothing connected. The error names
/// the kind of problem only: the URL may carry a password, the TLS material
/// a key.
fn client(url: &str, tls: Option<&RedisTls>) -> Result<redis::Client, StoreError> {
    match tls {
        None => redis::Client::open(url),
        Some(tls) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: tls
                    .client
                    .as_ref()
                    .map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                root_cert: tls.ca_pem.clone(),
            },
        ),
    }
    .map_err(|e| StoreError::Io {
        op: "connect",
        problem: format!("invalid Redis URL or TLS material ({:?})", e.kind()),
    })
}

impl RedisStore {
    /// Connects lazily (startup does not wait for Redis, and a Redis that
    /// is down at startup is picked up when it comes back).
    pub fn new(settings: RedisStoreSettings) -> Result<Self, StoreError> {
        let client = client(&settings.url, settings.tls.as_ref())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| {
                StoreError::Io {
                    op: "connect",
                    problem: format!("{:?}", e.kind()),
                }
            })?;
        let location = format!(
            "redis:{}",
            crate::provider::fingerprint([
                settings.url.trim().as_bytes(),
                settings.key_prefix.as_bytes(),
            ])
        );
        Ok(Self {
            inner: Arc::new(Inner {
                location,
                client,
                conn,
                prefix: settings.key_prefix,
                keys: settings.keys,
                lease: settings.lease,
                timeout: settings.timeout,
                owner: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
                health: Health::default(),
            }),
        })
    }

    /// The Redis key holding credential `id`.
    pub fn credential_key(&self, id: &str) -> String {
        format!("{}:credential:{id}", self.inner.prefix)
    }

    fn lock_key(&self, id: &str) -> String {
        format!("{}:lock:{id}", self.inner.prefix)
    }

    fn channel(&self, id: &str) -> String {
        format!("{}:events:{id}", self.inner.prefix)
    }
}

impl Inner {
    /// Runs one command, bounded by the timeout, recording health.
    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: impl FnOnce(&mut ConnectionManager) -> BoxFuture<'_, redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let seq = self.health.begin();
        let result = self.exec(op, cmd).await;
        let health = match &result {
            Err(StoreError::Unavailable(e)) => Err(e.clone()),
            _ => Ok(()),
        };
        self.health.end(seq, health);
        result
    }

    /// Runs one command, bounded by the timeout (health not recorded).
    async fn exec<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: impl FnOnce(&mut ConnectionManager) -> BoxFuture<'_, redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || refuses_for_now(&e) =>
            {
                Err(StoreError::Unavailable(format!(
                    "redis {op}: {}",
                    describe(&e)
                )))
            }
            Ok(Err(e)) => Err(StoreError::Io {
                op,
                problem: format!("redis error {}", describe(&e)),
            }),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis {op}: no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// Whether Redis answered but cannot serve this now: a read-only replica
/// after a failover, out of memory under `noeviction`, loading its data,
/// a cluster or master down, a busy script, writes refused for lack of
/// replicas or a failing disk, or the ACL denying the command. For the
/// refresh these are the same as Redis being down (a non-rotating
/// credential refreshes locally; a rotating one waits), and the store's
/// health says so. Protocol and type errors stay what they are (a bug,
/// not an outage).
fn refuses_for_now(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ReadOnly
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::NoPerm,
        ) => true,
        ErrorKind::AuthenticationFailed
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::MasterNameNotFoundBySentinel
        | ErrorKind::NoValidReplicasFoundBySentinel => true,
        // Server errors the client library has no kind for: matched on
        // Redis's error code (the first word of the reply, part of the
        // protocol), never on the message.
        ErrorKind::Extension => matches!(
            e.code(),
            Some("OOM" | "BUSY" | "MISCONF" | "NOREPLICAS" | "NOAUTH" | "WRONGPASS")
        ),
        _ => false,
    }
}

/// The error's kind, and Redis's error code when Redis answered one
/// (`READONLY`, `OOM`, ...), or the kind of I/O failure (`connection
/// refused`, `timed out`: Redis down, or an address that does not
/// resolve, tell apart). Never the message: it may echo a key or an
/// argument.
fn describe(e: &redis::RedisError) -> String {
    let io = if e.is_connection_refusal() {
        Some("connection refused")
    } else if e.is_timeout() {
        Some("timed out")
    } else if e.is_connection_dropped() {
        Some("connection dropped")
    } else {
        None
    };
    match (e.code(), io) {
        (Some(code), _) => format!("{:?} (Redis answered {code})", e.kind()),
        (None, Some(io)) => format!("{:?} ({io})", e.kind()),
        (None, None) => format!("{:?}", e.kind()),
    }
}

/// Holds the Redis lock; renews it; releases it on drop.
struct RedisLockGuard {
    renew: tokio::task::AbortHandle,
    store: RedisStore,
    lock_key: String,
    channel: String,
    token: String,
}

impl Drop for RedisLockGuard {
    fn drop(&mut self) {
        self.renew.abort();
        let (inner, lock_key, channel, token) = (
            self.store.inner.clone(),
            self.lock_key.clone(),
            self.channel.clone(),
            self.token.clone(),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let script = redis::Script::new(LOCK_RELEASE);
                let released = inner
                    .run::<i64>("unlock", |c| {
                        async move { script.key(&lock_key).key(&channel).arg(&token).invoke_async(c).await }.boxed()
                    })
                    .await;
                if let Err(e) = released {
                    // The lease expires by itself; others wait at most that long.
                    tracing::warn!(error = %e, "could not release the refresh lock; it expires with its lease");
                }
            });
        }
    }
}

fn hget(
    c: &mut ConnectionManager,
    key: String,
) -> BoxFuture<'_, redis::RedisResult<Option<Vec<u8>>>> {
    async move { redis::cmd("HGET").arg(key).arg("val").query_async(c).await }.boxed()
}

impl RedisStore {
    /// The state of `id`; `recorded`: the outcome counts for [`Store::health`].
    async fn read(&self, id: &str, recorded: bool) -> Result<Option<StoredCredential>, StoreError> {
        let key = self.credential_key(id);
        let sealed: Option<Vec<u8>> = if recorded {
            self.inner.run("load", |c| hget(c, key.clone())).await?
        } else {
            self.inner.exec("load", |c| hget(c, key.clone())).await?
        };
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let plain = self
            .inner
            .keys
            .open(id, &sealed)
            .map_err(|e| StoreError::Corrupt {
                path: key.clone(),
                problem: e.to_string(),
            })?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: key,
                problem: format!(
                    "decrypted state is not a credential (line {} column {})",
                    e.line(),
                    e.column()
                ),
            })
    }
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// The server and key prefix: another `redis.url` or `key_prefix` is
    /// another store (a hand-over to it is written there at once, and
    /// above an older run's state found there).
    fn location(&self) -> Option<String> {
        Some(self.inner.location.clone())
    }

    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        self.read(id, true).boxed()
    }

    fn peek<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        self.read(id, false).boxed()
    }

    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        async move {
            let (lock_key, channel) = (self.lock_key(id), self.channel(id));
            let token = format!("{}-{:016x}", self.inner.owner, fastrand::u64(..));
            let lease_ms = u64::try_from(self.inner.lease.as_millis()).unwrap_or(u64::MAX);
            // Subscribe before the first attempt so the holder's "done"
            // cannot slip between a failed attempt and the wait. Bounded
            // like every command: a Redis that accepts connections and
            // never answers (stopped, blackholed) must not hang the
            // refresh here; without a subscription the wait polls, and the
            // SET below fails within `redis.timeout` the same way.
            let subscribe = async {
                let mut ps = self.inner.client.get_async_pubsub().await.ok()?;
                ps.subscribe(&channel).await.ok()?;
                Some(ps)
            };
            let mut events = tokio::time::timeout(self.inner.timeout, subscribe)
                .await
                .ok()
                .flatten();
            let poll =
                (self.inner.lease / 4).clamp(Duration::from_millis(20), Duration::from_millis(500));
            let mut waited = false;
            loop {
                let taken: Option<String> = self
                    .inner
                    .run("lock", |c| {
                        let (k, t) = (lock_key.clone(), token.clone());
                        async move {
                            redis::cmd("SET")
                                .arg(k)
                                .arg(t)
                                .arg("NX")
                                .arg("PX")
                                .arg(lease_ms)
                                .query_async(c)
                                .await
                        }
                        .boxed()
                    })
                    .await?;
                if taken.is_some() {
                    if waited {
                        tracing::debug!(
                            credential = id,
                            "refresh lock acquired after waiting for another replica"
                        );
                    }
                    let lost = Arc::new(AtomicBool::new(false));
                    let renew = tokio::spawn(renew_lease(
                        self.clone(),
                        lock_key.clone(),
                        token.clone(),
                        lease_ms,
                        lost.clone(),
                    ))
                    .abort_handle();
                    let guard = RedisLockGuard {
                        renew,
                        store: self.clone(),
                        lock_key,
                        channel,
                        token,
                    };
                    return Ok(StoreLock::with_loss(guard, lost));
                }
                waited = true;
                let lost = match events.as_mut() {
                    Some(ps) => matches!(
                        tokio::time::timeout(poll, ps.on_message().next()).await,
                        Ok(None)
                    ),
                    None => {
                        tokio::time::sleep(poll).await;
                        false
                    }
                };
                if lost {
                    // The subscription's connection is gone (killed, timed
                    // out, a failover): its stream now ends at once, every
                    // time. Poll on the timer instead of sending SET NX
                    // back to back.
                    tracing::debug!(
                        credential = id,
                        "refresh lock subscription lost; polling instead"
                    );
                    events = None;
                    tokio::time::sleep(poll).await;
                }
            }
        }
        .boxed()
    }

    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let plain = serde_json::to_vec(state).map_err(|e| StoreError::Io {
                op: "save",
                problem: e.to_string(),
            })?;
            let sealed = self
                .inner
                .keys
                .seal(id, &plain)
                .map_err(|e| StoreError::Io {
                    op: "save",
                    problem: e.to_string(),
                })?;
            let (key, channel, generation) =
                (self.credential_key(id), self.channel(id), state.generation);
            let stored: i64 = self
                .inner
                .run("save", |c| {
                    async move {
                        redis::Script::new(SAVE_CAS)
                            .key(key)
                            .key(channel)
                            .arg(generation)
                            .arg(sealed)
                            .invoke_async(c)
                            .await
                    }
                    .boxed()
                })
                .await?;
            match u64::try_from(stored) {
                Ok(stored) => Err(StoreError::Conflict { stored }),
                Err(_) => Ok(()),
            }
        }
        .boxed()
    }

    fn health(&self) -> Result<(), String> {
        self.inner.health.get()
    }
}

/// Extends the lease every third of it while the lock is held, taking the
/// lock back if it went missing (see the module docs). Stops when another
/// owner holds it (the write that follows is fenced anyway).
async fn renew_lease(
    store: RedisStore,
    lock_key: String,
    token: String,
    lease_ms: u64,
    lost: Arc<AtomicBool>,
) {
    let every = Duration::from_millis(lease_ms / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let script = redis::Script::new(LOCK_RENEW);
        let renewed = store
            .inner
            .run::<i64>("renew", |c| {
                let (k, t) = (lock_key.clone(), token.clone());
                async move { script.key(k).arg(t).arg(lease_ms).invoke_async(c).await }.boxed()
            })
            .await;
        match renewed {
            Ok(1) => {}
            Ok(2) => {
                tracing::warn!(lock = %lock_key, "refresh lock had gone (Redis restarted, or the lease ran out while Redis was unreachable); taken back");
            }
            Ok(_) => {
                tracing::warn!(lock = %lock_key, "refresh lock lost (lease expired); the refresh's write is fenced by generation");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(e) => {
                tracing::warn!(lock = %lock_key, error = %e, "could not renew the refresh lock")
            }
        }
    }
}

#[cfg(test)]
mod tests;
