//! `GET /metrics`: the Prometheus text format, from the recorder that
//! `audit::metrics::install` put in place. 404 when the running config has
//! `metrics.enabled: false` (the recorder is process-wide; the config
//! decides whether this listener exposes it).

use super::{AdminState, json_response};
use http::{HeaderValue, Response, StatusCode, header};
use proxy_core::{ProxyBody, full};
use serde_json::json;

/// The Prometheus text exposition format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) fn response(state: &AdminState) -> Response<ProxyBody> {
    let enabled = state.proxy.load().config.metrics.enabled;
    match audit::metrics::handle() {
        Some(handle) if enabled => {
            let proxy = state.proxy.load();
            let statuses: Vec<_> = proxy.credentials.iter().map(|c| c.status()).collect();
            audit::metrics::record_store_health(
                statuses
                    .iter()
                    .filter(|s| !matches!(s.store, "none" | "memory"))
                    .map(|s| (s.store, s.store_error.is_none())),
            );
            let mut resp = Response::new(full(handle.render()));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            resp
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"code": "not_found", "message": "metrics are disabled (metrics.enabled: false)"}}),
        ),
    }
}
