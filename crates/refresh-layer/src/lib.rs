//! The credential lifecycle: credentials that expire, refreshed ahead of
//! expiry, once, and never lost.
//!
//! - [`provider`]: where tokens come from (OAuth2 `refresh_token` with
//!   rotation and `client_credentials`, exec, token files).
//! - [`cache`]: [`RefreshingSource`], a `proxy_core::CredentialSource` that
//!   serves the current token from memory (one atomic load), refreshes it in
//!   the background `buffer` before expiry, runs at most one refresh at a time
//!   (single-flight), makes callers wait only when there is no valid token,
//!   backs off on failure, and replaces a generation only when told that
//!   generation was rejected ([`invalidate`](proxy_core::CredentialSource::invalidate)).
//! - [`store`]: where the state lives between refreshes and across processes
//!   (`memory`, `file`).
//! - [`layer`]: [`RefreshLayer`], the tower layer that attaches the current
//!   credential to each request.
//!
//! # Layer placement
//!
//! ```text
//! ... -> retry401 -> RefreshLayer -> inject -> forward
//! ```
//!
//! Inside the 401 retry, so a replay draws the refreshed credential; outside
//! injection, which writes whatever credential this layer attached.
//!
//! # Example: around any tower HTTP client
//!
//! ```no_run
//! # async fn demo(client: proxy_core::stack::RouteService) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use refresh_layer::{RefreshLayer, RefreshingSource, RefreshSettings};
//! use refresh_layer::provider::oauth2::OAuth2Provider;
//! use refresh_layer::store::MemoryStore;
//! use proxy_core::inject::{InjectLayer, InjectSpec, Injection};
//! use std::sync::Arc;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let cfg: proxy_core::config::OAuth2Config = serde_json::from_value(serde_json::json!({
//!     "grant": "client_credentials", "token_url": "https://login.example.com/token",
//!     "client_id": "svc", "client_secret": {"env": "SVC_SECRET"}
//! }))?;
//! let provider = OAuth2Provider::new(&cfg, std::time::Duration::from_secs(1))?;
//! let source = RefreshingSource::new("svc", Arc::new(provider), Arc::new(MemoryStore::new()), RefreshSettings::default());
//! let svc = ServiceBuilder::new()
//!     .layer(RefreshLayer::new(source))
//!     .layer(InjectLayer::new(Injection::from_spec(InjectSpec::parse(None)?, None, std::time::Duration::from_secs(1))))
//!     .service(client);
//! let resp = svc.oneshot(http::Request::get("https://api.example.com/v1/x").body(proxy_core::empty())?).await?;
//! # let _ = resp; Ok(()) }
//! ```

pub mod cache;
pub mod layer;
pub mod provider;
pub mod store;
pub mod token;

pub use cache::{Handover, RefreshError, RefreshSettings, RefreshingSource, Trigger};
pub use layer::RefreshLayer;
pub use proxy_core::credential::CredentialStatus;
