//! Test doubles shared by the cache tests: a rotating provider and
//! stores without compare-and-set, each following a script.

use super::*;
use crate::store::{Store, StoreLock};
use std::sync::Mutex;

/// Per-call behaviour: 'o' = ok 3600 s, 's' = ok but 120 s, 'z' = expired (0 s),
/// 'Z' = expired and no new refresh token, 'h' = hang for ever, 'e' = HTTP
/// 503, 'g' = `invalid_grant`, 'p' = panic (a provider's bug). Past the script: 'e'. Call n's tokens are
/// `tok-n` and `rt-n`, after the script's prefix.
#[derive(Debug)]
pub(super) struct Script {
    plan: Vec<u8>,
    prefix: &'static str,
    pub(super) calls: AtomicUsize,
    seen: Mutex<Vec<Option<String>>>,
}
impl Script {
    pub(super) fn new(plan: &str) -> Arc<Self> {
        Self::named(plan, "")
    }
    /// Tokens named `{prefix}tok-n` and `{prefix}rt-n`.
    pub(super) fn named(plan: &str, prefix: &'static str) -> Arc<Self> {
        Arc::new(Self {
            plan: plan.as_bytes().to_vec(),
            prefix,
            calls: AtomicUsize::new(0),
            seen: Mutex::new(vec![]),
        })
    }
    pub(super) fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }
}
impl TokenProvider for Script {
    fn kind(&self) -> &'static str {
        "rotating"
    }
    fn rotates(&self) -> bool {
        true
    }
    fn fetch<'a>(
        &'a self,
        current: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen
            .lock()
            .unwrap()
            .push(current.and_then(|c| c.refresh_token.clone()));
        let what = self.plan.get(n - 1).copied().unwrap_or(b'e');
        let prefix = self.prefix;
        Box::pin(async move {
            let life = match what {
                b'o' => S(3600),
                b's' => S(120),
                b'z' | b'Z' => Duration::ZERO,
                b'h' => {
                    futures_util::future::pending::<()>().await;
                    unreachable!()
                }
                b'p' => panic!("the provider's bug (a test double)"),
                b'g' => {
                    return Err(ProviderError::OAuth {
                        status: 400,
                        error: "invalid_grant".into(),
                        description: None,
                    });
                }
                _ => return Err(ProviderError::Http { status: 503 }),
            };
            Ok(Token {
                access_token: SecretString::from(format!("{prefix}tok-{n}")),
                expires_in: Some(life),
                refresh_token: (what != b'Z')
                    .then(|| SecretString::from(format!("{prefix}rt-{n}"))),
            })
        })
    }
}

/// A store without compare-and-set (as the file store): save number k
/// (1-based) per `plan` char: 'o' ok, 'f' fails, 's' takes 5 s, 'h' hangs.
/// Past the plan: ok.
#[derive(Debug)]
pub(super) struct Saves {
    pub(super) inner: MemoryStore,
    plan: Vec<u8>,
    pub(super) saves: AtomicUsize,
}
impl Saves {
    pub(super) fn new(plan: &str) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(),
            plan: plan.as_bytes().to_vec(),
            saves: AtomicUsize::new(0),
        })
    }
}
impl Store for Saves {
    fn kind(&self) -> &'static str {
        "file-like"
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
        let k = self.saves.fetch_add(1, Ordering::SeqCst);
        match self.plan.get(k).copied().unwrap_or(b'o') {
            b'f' => Box::pin(ready(Err(StoreError::Io {
                op: "save",
                problem: "No space left on device".into(),
            }))),
            b'h' => Box::pin(futures_util::future::pending()),
            b's' => Box::pin(async move {
                tokio::time::sleep(S(5)).await;
                self.inner.save(id, state).await
            }),
            _ => self.inner.save(id, state),
        }
    }
}

/// A store whose saves fail while `down`.
#[derive(Debug, Default)]
pub(super) struct Down {
    pub(super) inner: MemoryStore,
    pub(super) down: std::sync::atomic::AtomicBool,
}

impl Store for Down {
    fn kind(&self) -> &'static str {
        "file-like"
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
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(ready(Err(StoreError::Io {
                op: "save",
                problem: "No space left on device".into(),
            })));
        }
        self.inner.save(id, state)
    }
}
