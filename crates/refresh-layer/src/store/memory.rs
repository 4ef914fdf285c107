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
///
/// A reload that is refused after it forgot a credential calls
/// [`rollback`]: the running source of that credential gets its epoch and
/// state back. An applied one calls [`commit`].
///
/// [`rollback`]: MemoryStore::rollback
/// [`commit`]: MemoryStore::commit
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, Slot>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Forgets not yet committed: id, epoch and state before.
    pending: Mutex<Vec<(String, u64, Option<StoredCredential>)>>,
}

#[derive(Debug, Default)]
struct Slot {
    state: Option<StoredCredential>,
    /// The epoch whose handles may read and write `state`.
    epoch: u64,
    /// The highest epoch ever handed out: a refused reload's epoch is
    /// never reused, so its late saves can never land.
    issued: u64,
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
        let before = (slot.epoch, slot.state.take());
        slot.issued = slot.issued.wrapping_add(1);
        slot.epoch = slot.issued;
        drop(m);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id.to_owned(), before.0, before.1));
    }

    /// The forgets so far are final (the reload that made them applied).
    pub fn commit(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Undoes the forgets since the last [`commit`](Self::commit) (the
    /// reload that made them was refused): each credential's epoch and
    /// state are as before, so the source still running keeps reading and
    /// saving its state. What a refused source saved meanwhile is dropped.
    pub fn rollback(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut m = self.slots();
        for (id, epoch, state) in pending.into_iter().rev() {
            let slot = m.entry(id).or_default();
            slot.epoch = epoch;
            slot.state = state;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(generation: u64, token: &str) -> StoredCredential {
        StoredCredential {
            access_token: token.into(),
            expires_at_ms: None,
            refresh_token: Some(format!("rt-{token}")),
            generation,
            obtained_at_ms: 1,
            provider: None,
        }
    }

    async fn token_of(store: &dyn Store) -> Option<String> {
        store.load("crm").await.unwrap().map(|s| s.access_token)
    }

    /// A provider change: the new handle starts empty and the old one can
    /// no longer read or write; committed, that stays so.
    #[tokio::test]
    async fn a_forget_cuts_off_the_old_provider() {
        let m = Arc::new(MemoryStore::new());
        let old = m.scoped("crm");
        old.save("crm", &state(1, "old")).await.unwrap();
        m.forget("crm");
        let new = m.scoped("crm");
        m.commit();
        assert_eq!(token_of(new.as_ref()).await, None);
        old.save("crm", &state(2, "old-late")).await.unwrap();
        assert_eq!(
            token_of(new.as_ref()).await,
            None,
            "the old save is dropped"
        );
        assert_eq!(token_of(old.as_ref()).await, None);
        new.save("crm", &state(1, "new")).await.unwrap();
        assert_eq!(token_of(new.as_ref()).await.as_deref(), Some("new"));
    }

    /// A refused reload: the running source gets its state and its access
    /// back, what the refused source saved is gone, and its epoch is never
    /// handed out again (its late saves cannot land in a later one).
    #[tokio::test]
    async fn a_rollback_gives_the_running_source_its_state_back() {
        let m = Arc::new(MemoryStore::new());
        let running = m.scoped("crm");
        running.save("crm", &state(1, "running")).await.unwrap();
        m.forget("crm");
        let refused = m.scoped("crm");
        refused.save("crm", &state(1, "refused")).await.unwrap();
        m.rollback();
        assert_eq!(token_of(running.as_ref()).await.as_deref(), Some("running"));
        running.save("crm", &state(2, "running-2")).await.unwrap();
        assert_eq!(
            token_of(m.scoped("crm").as_ref()).await.as_deref(),
            Some("running-2")
        );
        // A later provider change gets a new epoch.
        m.forget("crm");
        let next = m.scoped("crm");
        m.commit();
        refused
            .save("crm", &state(3, "refused-late"))
            .await
            .unwrap();
        assert_eq!(token_of(next.as_ref()).await, None);
    }
}
