//! latchkey's core: everything a request touches between the listener and the
//! upstream, except the credential lifecycle (refresh), the 401 replay and the
//! audit trail, which live in their own crates.
//!
//! The request path, outermost first (see `DESIGN.md`):
//!
//! ```text
//! listener -> [audit] -> edge errors -> client auth -> router
//!          -> authorize -> [retry401] -> acquire credential -> inject -> forward
//! ```
//!
//! - [`config`]: the YAML config, its validation and field-path errors.
//! - [`secret`]: secret references (`env`, `file`, `value`) and their values.
//! - [`credential`]: the [`Credential`] value and the [`CredentialSource`] trait.
//! - [`acquire`]: the layer that obtains a credential for a request.
//! - [`inject`]: header / query / basic injection.
//! - [`forward`]: the pooled hyper + rustls client to the upstream.
//! - [`client_auth`]: who may use which route (proxy tokens).
//! - [`limit`]: load shedding past the concurrency limit.
//! - [`body`]: [`ProxyBody`], the one body type of the request path.
//! - [`idle`]: the upstream response body's idle timeout.
//! - [`router`]: host + path prefix to route.
//! - [`edge`]: the one place errors become HTTP responses.
//! - [`stack`]: builds per-route stacks and the whole proxy service
//!   (type-erased as [`stack::SharedService`]: one stack behind an `Arc`).
//! - [`context`]: what the listener knows about a request (connection,
//!   request id) and its facts slot, as one request extension.
//! - [`facts`]: what each layer learned about a request, for the audit.
//! - [`timer`]: a connection's timers (header read, route timeout),
//!   reused from one request to the next.
//!
//! Each layer is usable on its own around any tower HTTP service.

pub mod acquire;
pub mod body;
pub mod client_auth;
pub mod config;
pub mod context;
pub mod credential;
pub mod edge;
pub mod error;
pub mod facts;
pub mod forward;
pub mod headers;
pub mod idle;
pub mod inject;
pub mod limit;
pub mod path;
pub mod router;
pub mod secret;
pub mod stack;
pub mod timer;
pub mod tunnel;
pub mod upstream;

pub use credential::{Credential, CredentialSource};
pub use error::{BoxError, ErrorCode};

pub use body::{ProxyBody, boxed, empty, full};
