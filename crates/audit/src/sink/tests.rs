use super::*;
use crate::record::{RequestMeta, RequestRecord};
use http::{Request, StatusCode};
use proxy_core::error::ErrorCode;
use proxy_core::facts::{RefreshEvent, RequestFacts};
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn write_request(sink: &dyn AuditSink, status: u16, error: Option<ErrorCode>) {
    let req = Request::get("/a?q=secret").body(()).unwrap();
    let meta = RequestMeta::from_request(&req);
    let facts = RequestFacts::default();
    let r = RequestRecord::from_parts(
        &meta,
        &facts,
        StatusCode::from_u16(status).unwrap(),
        error,
        Duration::from_millis(1),
        false,
        SystemTime::now(),
    );
    sink.request(&r);
}

fn refresh_event(ok: bool) -> RefreshEvent {
    RefreshEvent {
        credential: Arc::from("crm"),
        trigger: "proactive",
        ok,
        adopted: false,
        duration: Duration::from_millis(3),
        error: (!ok).then(|| "boom".to_owned()),
        oauth_error: None,
        generation: 2,
        expires_at: None,
        retired: false,
    }
}

#[test]
fn the_audit_layer_writes_pure_json_lines_and_debug_logs_exclude_them() {
    let audit = Buf::default();
    let debug = Buf::default();
    let subscriber = tracing_subscriber::registry()
        .with(audit_layer(audit.clone()))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(debug.clone())
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.target() != TARGET
                })),
        );
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!("a debug line");
        tracing::info!(target: "latchkey::audit", "not a record");
        write_request(&TracingSink, 200, None);
        write_request(&TracingSink, 502, Some(ErrorCode::UpstreamUnreachable));
        let e = refresh_event(true);
        TracingSink.refresh(&RefreshRecord::from_event(&e, SystemTime::now()));
    });
    let text = audit.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["kind"] == "request" || v["kind"] == "refresh", "{l}");
    }
    assert!(text.ends_with('\n'));
    let debug = debug.text();
    assert!(debug.contains("a debug line"), "{debug}");
    assert!(!debug.contains("\"kind\""), "{debug}");
}

#[test]
fn levels_follow_the_outcome() {
    let levels = Buf::default();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(levels.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false),
    );
    tracing::subscriber::with_default(subscriber, || {
        write_request(&TracingSink, 200, None);
        write_request(&TracingSink, 302, None);
        write_request(&TracingSink, 404, None);
        write_request(&TracingSink, 503, None);
        write_request(&TracingSink, 403, Some(ErrorCode::ClientForbidden));
        write_request(&TracingSink, 504, Some(ErrorCode::UpstreamTimeout));
        let (ok, err) = (refresh_event(true), refresh_event(false));
        TracingSink.refresh(&RefreshRecord::from_event(&ok, SystemTime::now()));
        TracingSink.refresh(&RefreshRecord::from_event(&err, SystemTime::now()));
    });
    let got: Vec<String> = levels
        .text()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        got,
        [
            "INFO", "INFO", "WARN", "WARN", "WARN", "ERROR", "INFO", "WARN"
        ]
    );
}

#[test]
fn memory_sink_keeps_parsed_records_by_kind() {
    let sink = MemorySink::new();
    write_request(&sink, 200, None);
    let e = refresh_event(false);
    sink.refresh(&RefreshRecord::from_event(&e, SystemTime::now()));
    assert_eq!(sink.records().len(), 2);
    assert_eq!(sink.requests()[0]["audit"]["path"], "/a");
    assert_eq!(sink.refreshes()[0]["error"], "boom");
    assert_eq!(sink.take().len(), 2);
    assert!(sink.records().is_empty());
}
