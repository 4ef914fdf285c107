//! Where a credential's state lives between refreshes.
//!
//! | store | shared by | guarantees |
//! |---|---|---|
//! | [`MemoryStore`] | one process | single-flight inside the process; state is lost on restart (the config's refresh token seeds it again) |
//! | [`RedisStore`] | replicas anywhere | encrypted at rest (AES-256-GCM); a distributed lock with a renewed lease serialises refreshes across replicas; writes are compare-and-set on the generation, so a replica that lost its lease can never overwrite a newer credential; replicas that find the lock taken wait for the new generation (pub/sub, with a bounded poll) and adopt it |
//! | [`FileStore`] | processes on one host | one JSON file per credential, mode 0600, written by temp file + fsync + rename + directory fsync, so a crash leaves the old or the new state, never half of one; an advisory lock serialises refreshes across processes, and the state is re-read under the lock so a rotation done by another process is adopted, not repeated |
//!
//! A store only ever receives complete, valid states: a failed refresh
//! writes nothing, and an unreadable file is reported and left in place.

pub mod crypto;
mod file;
mod health;
mod memory;
mod redis;

pub use file::FileStore;
pub use memory::MemoryStore;
pub use redis::{RedisStore, RedisStoreSettings, RedisTls, check_client as check_redis_client};

use crate::token::StoredCredential;
use futures_util::future::BoxFuture;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a store operation failed. Never contains a secret.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The stored state exists but cannot be read (not decryptable with this
    /// process's keys, or not a credential). It is left untouched: nothing
    /// overwrites a state it cannot read, since that state may hold the only
    /// live refresh token.
    #[error("stored state {path} is unreadable ({problem}); it is left untouched")]
    Corrupt {
        /// Where it is.
        path: String,
        /// Why it cannot be used.
        problem: String,
    },
    /// A newer generation is already stored; the write was refused.
    #[error("a newer credential (generation {stored}) is already stored")]
    Conflict {
        /// The stored generation.
        stored: u64,
    },
    /// The store cannot serve now: Redis down, or up and refusing (a
    /// read-only replica after a failover, out of memory, loading, ...).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// An I/O or connection failure.
    #[error("store {op} failed: {problem}")]
    Io {
        /// `load`, `save` or `lock`.
        op: &'static str,
        /// The failure.
        problem: String,
    },
}

/// Held while refreshing; dropping it releases the lock.
pub struct StoreLock {
    _guard: Box<dyn Send + Sync>,
    /// Set when the lock is known to be someone else's now (a lease that
    /// lapsed and was taken by another process).
    lost: Option<Arc<AtomicBool>>,
}

impl StoreLock {
    /// A lock that holds `guard` until dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _guard: Box::new(guard),
            lost: None,
        }
    }

    /// A lock that may be lost while held (a lease): `lost` is set when it
    /// is known to be someone else's now.
    pub fn with_loss(guard: impl Send + Sync + 'static, lost: Arc<AtomicBool>) -> Self {
        Self {
            _guard: Box::new(guard),
            lost: Some(lost),
        }
    }

    /// Whether the lock is known to be someone else's now: a refresh must
    /// not go on as if it held it (another process may be refreshing).
    pub fn is_lost(&self) -> bool {
        self.lost
            .as_ref()
            .is_some_and(|l| l.load(Ordering::Acquire))
    }
}

impl fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreLock")
    }
}

/// A place to keep credential state.
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// `memory`, `file`, ...
    fn kind(&self) -> &'static str;

    /// The stored state of `id`, `None` if there is none.
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>>;

    /// As [`load`](Self::load), for a background check (see
    /// `cache/writeback.rs`): its outcome is not recorded in
    /// [`health`](Self::health). A read that works says nothing of the
    /// writes a store may be refusing (a read-only Redis replica), and
    /// checks every few seconds would report such a store up.
    fn peek<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        self.load(id)
    }

    /// Takes the refresh lock for `id` (across processes where the store is
    /// shared); released when the returned guard drops.
    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>>;

    /// Persists a complete state for `id`. Stores shared by replicas refuse
    /// a state whose generation is not newer than the stored one
    /// ([`StoreError::Conflict`]).
    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Where the store keeps its states, to tell two stores of one kind
    /// apart (a hand-over from one to another: `cache::handover`). `None`
    /// when it cannot say: then two stores of one kind are taken as the
    /// same one.
    fn location(&self) -> Option<String> {
        None
    }

    /// Whether the store was reachable at the last operation, and if not,
    /// why (for readiness and metrics).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}
