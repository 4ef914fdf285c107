//! The audit trail: every request explained.
//!
//! - [`record`]: the audit record (one JSON object per request, and one per
//!   refresh attempt) and how it is derived from the request's
//!   `proxy_core::facts`.
//! - [`layer`]: [`AuditLayer`], the outermost layer, which opens the facts
//!   slot, times the request and writes the record and the metrics whatever
//!   happened below (including a caller that went away).
//! - [`sink`]: where records go (a batching writer, the `latchkey::audit`
//!   tracing target, or memory for tests).
//! - [`metrics`]: the Prometheus metrics, and [`AuditObserver`], which
//!   turns credential refreshes into records and metrics.
//! - [`triage`]: the reader behind `latchkey triage`.
//! - [`writer`]: the batching, non-lossy writer behind the audit output.
//!
//! ```
//! use audit::{AuditLayer, MemorySink};
//! use std::sync::Arc;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let sink = Arc::new(MemorySink::new());
//! let svc = AuditLayer::new(sink.clone(), false).layer(service_fn(|_req| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! }));
//! svc.oneshot(http::Request::get("/v1/things?secret=x").body(()).unwrap())
//!     .await
//!     .unwrap();
//! let record = &sink.requests()[0];
//! assert_eq!(record["audit"]["path"], "/v1/things");
//! assert_eq!(record["audit"]["action"], "allow");
//! # });
//! ```

pub mod layer;
pub mod metrics;
pub mod record;
pub mod sink;
pub mod triage;
pub mod writer;

pub use layer::AuditLayer;
pub use metrics::AuditObserver;
pub use record::{RefreshRecord, RequestMeta, RequestRecord};
pub use sink::{AuditSink, MemorySink, TracingSink, WriterSink};
