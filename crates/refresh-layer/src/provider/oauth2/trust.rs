//! The token endpoint's HTTP client, and the CA bundle it trusts
//! (`oauth2.ca_file`, beside the web PKI roots).
//!
//! The bundle is read before every token request (one small file, once
//! per token lifetime) and the client is rebuilt when its contents
//! changed, so a bundle rotated in place (trust-manager, a Secret volume)
//! is used from the next request without a reload. A bundle that no
//! longer loads fails that refresh (the credential keeps what it holds and
//! backs off, like any failed refresh); at startup and on reload it is a
//! config error naming the field.
//!
//! The read before a request runs on the blocking pool, bounded by
//! [`READ_TIMEOUT`], at most one at a time (proxy-core's
//! [`BlockingReads`], as client certificates and token files are read),
//! and only a regular file of at most 1 MiB is read: a bundle on a mount
//! that hangs fails the refresh instead of blocking a runtime thread, and
//! with it the credential's one refresh, for good.

use super::CONNECT_TIMEOUT;
use crate::provider::ProviderError;
use proxy_core::upstream::client_cert::files::{BlockingReads, READ_TIMEOUT, read_pem_file};
use proxy_core::upstream::{HttpClient, build_client_with_ca, read_ca};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// See the module docs.
pub(super) struct Trust {
    ca_file: Option<PathBuf>,
    /// The bundle the client was built with, and the client.
    current: Mutex<(Option<Arc<[u8]>>, HttpClient)>,
    reads: tokio::sync::Mutex<BlockingReads<Result<Vec<u8>, String>>>,
}

impl Trust {
    /// Reads and checks `ca_file` now. The error says what is wrong with
    /// the file (the caller names the field).
    pub(super) fn new(ca_file: Option<&Path>) -> Result<Self, String> {
        let pem = ca_file.map(read_ca).transpose().map_err(|e| e.0)?;
        let client =
            build_client_with_ca(ca_file.zip(pem.as_deref()), CONNECT_TIMEOUT).map_err(|e| e.0)?;
        Ok(Self {
            ca_file: ca_file.map(Path::to_path_buf),
            current: Mutex::new((pem, client)),
            reads: tokio::sync::Mutex::default(),
        })
    }

    /// The client for the next request: rebuilt first if the bundle's
    /// contents changed.
    pub(super) async fn client(&self) -> Result<HttpClient, ProviderError> {
        let Some(path) = &self.ca_file else {
            return Ok(self.lock().1.clone());
        };
        let file = path.clone();
        let pem: Arc<[u8]> = self
            .reads
            .lock()
            .await
            .run(READ_TIMEOUT, move || read_pem_file(&file))
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|read| read)
            .map_err(|e| ProviderError::Config(format!("ca_file: {e}")))?
            .into();
        let mut current = self.lock();
        if current.0.as_deref() != Some(&pem[..]) {
            let client = build_client_with_ca(Some((path, &pem)), CONNECT_TIMEOUT)
                .map_err(|e| ProviderError::Config(format!("ca_file: {}", e.0)))?;
            *current = (Some(pem), client);
        }
        Ok(current.1.clone())
    }

    /// The CA bundle's path, if one is configured.
    pub(super) fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, (Option<Arc<[u8]>>, HttpClient)> {
        // Replaced whole: a panic cannot leave it half updated.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}
