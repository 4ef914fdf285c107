//! The default store: a map in this process.

use super::{Store, StoreError, StoreLock};
use crate::token::StoredCredential;
use futures_util::future::{BoxFuture, FutureExt, ready};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Keeps state in memory, for the life of the process: a proxy keeps one
/// across reloads, so a credential rebuilt by a reload starts from the
/// state the old one left. The lock is per id and real: for a moment after
/// a reload the old and the new source of one credential can both refresh
/// (the old one until its last request ends), and the second then reads
/// what the first saved instead of sending a refresh token it consumed.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, StoredCredential>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops what is stored for `id` (its credential now comes from another
    /// provider).
    pub fn forget(&self, id: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        let r = self
            .map
            .lock()
            .map(|m| m.get(id).cloned())
            .map_err(|_| StoreError::Io {
                op: "load",
                problem: "lock poisoned".into(),
            });
        ready(r).boxed()
    }

    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        let lock = self
            .locks
            .lock()
            .map(|mut l| l.entry(id.to_string()).or_default().clone())
            .map_err(|_| StoreError::Io {
                op: "lock",
                problem: "lock poisoned".into(),
            });
        async move { Ok(StoreLock::new(lock?.lock_owned().await)) }.boxed()
    }

    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let r = self
            .map
            .lock()
            .map(|mut m| {
                m.insert(id.to_string(), state.clone());
            })
            .map_err(|_| StoreError::Io {
                op: "save",
                problem: "lock poisoned".into(),
            });
        ready(r).boxed()
    }
}
