//! The default store: a map in this process.

use super::{Store, StoreError, StoreLock};
use crate::token::StoredCredential;
use futures_util::future::{BoxFuture, FutureExt, ready};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Keeps state in memory, for the life of the process: a proxy keeps one
/// across reloads, so a credential rebuilt by a reload starts from the
/// state the old one left. The lock is per id and real: for a moment after
/// a reload the old and the new source of one credential can both refresh
/// (the old one until its last request ends), and the second then reads
/// what the first saved instead of sending a refresh token it consumed.
///
/// When a reload gives a credential another provider, [`forget`] drops its
/// state and starts a new epoch for its id; sources built on a
/// [`scoped`] handle from before then can no longer read or write it, so a
/// refresh of the old provider still running cannot hand its token (or
/// its refresh token) to the new one.
///
/// [`forget`]: MemoryStore::forget
/// [`scoped`]: MemoryStore::scoped
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, Slot>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Default)]
struct Slot {
    state: Option<StoredCredential>,
    /// Bumped by every `forget`.
    epoch: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops what is stored for `id` (its credential now comes from another
    /// provider) and starts a new epoch: handles from [`scoped`](Self::scoped)
    /// taken before see nothing and store nothing for `id` any more.
    pub fn forget(&self, id: &str) {
        let mut m = self.slots();
        let slot = m.entry(id.to_owned()).or_default();
        slot.state = None;
        slot.epoch = slot.epoch.wrapping_add(1);
    }

    /// A handle for one credential's source, bound to `id`'s current epoch.
    pub fn scoped(self: &Arc<Self>, id: &str) -> Arc<dyn Store> {
        let epoch = self.slots().get(id).map_or(0, |s| s.epoch);
        Arc::new(Scoped {
            store: self.clone(),
            epoch,
        })
    }

    /// A panic while holding this lock leaves plain data behind.
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load_at(&self, id: &str, epoch: Option<u64>) -> Option<StoredCredential> {
        let m = self.slots();
        let slot = m.get(id)?;
        epoch
            .is_none_or(|e| e == slot.epoch)
            .then(|| slot.state.clone())?
    }

    fn save_at(&self, id: &str, epoch: Option<u64>, state: &StoredCredential) {
        let mut m = self.slots();
        let slot = m.entry(id.to_owned()).or_default();
        if epoch.is_none_or(|e| e == slot.epoch) {
            slot.state = Some(state.clone());
        } else {
            tracing::debug!(
                credential = id,
                "a refresh of a provider replaced by a reload finished; its state is not kept"
            );
        }
    }

    fn lock_id(&self, id: &str) -> BoxFuture<'static, Result<StoreLock, StoreError>> {
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
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        ready(Ok(self.load_at(id, None))).boxed()
    }

    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        self.lock_id(id)
    }

    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.save_at(id, None, state);
        ready(Ok(())).boxed()
    }
}

/// [`MemoryStore::scoped`]: the store as of one epoch.
#[derive(Debug)]
struct Scoped {
    store: Arc<MemoryStore>,
    epoch: u64,
}

impl Store for Scoped {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        ready(Ok(self.store.load_at(id, Some(self.epoch)))).boxed()
    }

    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        self.store.lock_id(id)
    }

    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.save_at(id, Some(self.epoch), state);
        ready(Ok(())).boxed()
    }
}
