//! [`Saves`]: a memory store whose saves can be slowed, failed or hung
//! (a slow disk, a full one, an fsync that never returns); its lock and
//! loads are the memory store's.

use futures_util::future::BoxFuture;
use refresh_layer::store::{MemoryStore, Store, StoreError, StoreLock};
use refresh_layer::token::StoredCredential;
use std::sync::Mutex;
use std::time::Duration;

/// How [`Saves`] answers a save.
#[derive(Clone, Copy, Debug, Default)]
pub enum Save {
    /// Saved at once.
    #[default]
    Normal,
    /// Saved after this long.
    After(Duration),
    /// Refused as unavailable ("disk full").
    Fail,
    /// Never answered.
    Hang,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Saves {
    pub inner: MemoryStore,
    mode: Mutex<Save>,
}

impl Saves {
    pub fn new(mode: Save) -> Self {
        Self {
            inner: MemoryStore::new(),
            mode: Mutex::new(mode),
        }
    }

    pub fn set(&self, mode: Save) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Store for Saves {
    fn kind(&self) -> &'static str {
        "saves"
    }
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        self.inner.load(id)
    }
    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        self.inner.lock(id)
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mode = *self.mode.lock().unwrap();
        Box::pin(async move {
            match mode {
                Save::Normal => self.inner.save(id, state).await,
                Save::After(delay) => {
                    tokio::time::sleep(delay).await;
                    self.inner.save(id, state).await
                }
                Save::Fail => Err(StoreError::Unavailable("disk full".into())),
                Save::Hang => futures_util::future::pending().await,
            }
        })
    }
}
