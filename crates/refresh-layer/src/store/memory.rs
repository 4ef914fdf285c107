//! The default store: a map in this process.

use super::{Store, StoreError, StoreLock};
use crate::token::StoredCredential;
use futures_util::future::{BoxFuture, FutureExt, ready};
use std::collections::HashMap;
use std::sync::Mutex;

/// Keeps state in memory. The refreshing cache is already single-flight
/// within a process, so the lock is a no-op.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, StoredCredential>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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

    fn lock<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        ready(Ok(StoreLock::new(()))).boxed()
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
