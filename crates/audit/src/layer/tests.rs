use super::*;
use crate::sink::MemorySink;
use http::HeaderValue;
use proxy_core::context::{ConnInfo, RequestContext, RequestId};
use serde_json::Value;
use std::convert::Infallible;
use std::time::Duration;
use tower::{ServiceExt, service_fn};

fn request(path: &str) -> Request<()> {
    let mut req = Request::get(path)
        .header("host", "proxy.local")
        .body(())
        .unwrap();
    req.extensions_mut().insert(RequestContext::new(
        ConnInfo {
            remote_addr: "127.0.0.1:5555".parse().unwrap(),
            local_addr: "127.0.0.1:8080".parse().unwrap(),
            tls: false,
        },
        RequestId(HeaderValue::from_static("rid-7")),
    ));
    req
}

fn layer() -> (AuditLayer, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::new());
    (AuditLayer::new(sink.clone(), false), sink)
}

fn only(sink: &MemorySink) -> Value {
    let recs = sink.requests();
    assert_eq!(recs.len(), 1, "{recs:?}");
    recs.into_iter().next().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_forwarded_request_is_recorded_with_what_the_layers_below_saw() {
    let (layer, sink) = layer();
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        // The slot is open for every layer below.
        proxy_core::facts::record(&req, |f| {
            f.route = Some(Arc::from("payments"));
            f.upstream_status = Some(201);
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok::<_, Infallible>(Response::builder().status(201).body(()).unwrap())
    }));
    let resp = svc.oneshot(request("/payments/x?k=v")).await.unwrap();
    assert_eq!(resp.status(), 201);
    let v = only(&sink);
    assert_eq!(v["route"], "payments");
    assert_eq!(v["request_id"], "rid-7");
    assert_eq!(v["audit"]["host"], "proxy.local");
    assert_eq!(v["audit"]["path"], "/payments/x");
    assert_eq!(v["audit"]["remote_addr"], "127.0.0.1:5555");
    assert_eq!(v["audit"]["action"], "allow");
    assert_eq!(v["audit"]["status_code"], 201);
    assert_eq!(v["audit"]["duration_ms"], 250.0);
    assert_eq!(v["upstream_status"], 201);
    assert_eq!(v["reason"], Value::Null);
}

#[tokio::test]
async fn a_proxy_made_response_is_a_reject_with_its_code() {
    let (layer, sink) = layer();
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        proxy_core::facts::record(&req, |f| f.rejected_by = Some("router"));
        let mut resp = Response::builder().status(404).body(()).unwrap();
        resp.extensions_mut().insert(ErrorCode::NoRoute);
        Ok::<_, Infallible>(resp)
    }));
    svc.oneshot(request("/nowhere")).await.unwrap();
    let v = only(&sink);
    assert_eq!(v["audit"]["action"], "reject");
    assert_eq!(v["reason"], "no_route");
    assert_eq!(v["rejected_by"], "router");
    assert_eq!(v["denial_source"], "local");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_is_recorded_as_client_cancel() {
    let (layer, sink) = layer();
    let mut svc = layer.layer(service_fn(|_req: Request<()>| async move {
        std::future::pending::<()>().await;
        Ok::<Response<()>, Infallible>(Response::new(()))
    }));
    let fut = svc.ready().await.unwrap().call(request("/slow"));
    let timed_out = tokio::time::timeout(Duration::from_secs(2), fut).await;
    assert!(timed_out.is_err());
    // `timeout` dropped the future: the guard wrote the record.
    let v = only(&sink);
    assert_eq!(v["audit"]["action"], "client_cancel");
    assert_eq!(v["audit"]["status_code"], 499);
    assert_eq!(v["audit"]["duration_ms"], 2000.0);
    assert_eq!(v["reason"], Value::Null);
    assert_eq!(v["denial_source"], Value::Null);
}

/// A request dropped while the process cuts what is in flight (the
/// drain timeout, a second stop signal) is the proxy's doing: `error`,
/// 503, reason `shutdown`; the same drop before that is the caller's.
#[tokio::test(start_paused = true)]
async fn a_request_dropped_by_a_cut_is_recorded_as_shutdown() {
    let sink = Arc::new(MemorySink::new());
    let cut = Arc::new(AtomicBool::new(false));
    let layer = AuditLayer::new(sink.clone(), false).with_cut(cut.clone());
    let mut svc = layer.layer(service_fn(|_req: Request<()>| async move {
        std::future::pending::<()>().await;
        Ok::<Response<()>, Infallible>(Response::new(()))
    }));
    let left = svc.ready().await.unwrap().call(request("/left"));
    drop(left);
    let cut_off = svc.ready().await.unwrap().call(request("/cut"));
    cut.store(true, Ordering::SeqCst);
    drop(cut_off);
    let recs = sink.requests();
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0]["audit"]["action"], "client_cancel");
    assert_eq!(recs[0]["reason"], Value::Null);
    assert_eq!(recs[1]["audit"]["path"], "/cut");
    assert_eq!(recs[1]["audit"]["action"], "error");
    assert_eq!(recs[1]["audit"]["status_code"], 503);
    assert_eq!(recs[1]["reason"], "shutdown");
    assert_eq!(recs[1]["denial_source"], "local");
}

#[tokio::test]
async fn an_inner_error_is_a_local_500() {
    let (layer, sink) = layer();
    let svc = layer.layer(service_fn(|_req: Request<()>| async move {
        Err::<Response<()>, std::io::Error>(std::io::Error::other("boom"))
    }));
    assert!(svc.oneshot(request("/e")).await.is_err());
    let v = only(&sink);
    assert_eq!(v["audit"]["action"], "error");
    assert_eq!(v["audit"]["status_code"], 500);
    assert_eq!(v["reason"], "internal_error");
}

#[tokio::test]
async fn a_panic_below_is_a_local_500_not_a_cancel() {
    let (layer, sink) = layer();
    let svc = layer.layer(service_fn(|_req: Request<()>| async move {
        if true {
            panic!("bug below the audit layer");
        }
        Ok::<Response<()>, Infallible>(Response::new(()))
    }));
    let handle = tokio::spawn(svc.oneshot(request("/p")));
    assert!(handle.await.is_err());
    let v = only(&sink);
    assert_eq!(v["audit"]["action"], "error");
    assert_eq!(v["reason"], "internal_error");
}

/// A service that panics in `call` itself, not in its future.
#[derive(Clone)]
struct PanicsInCall;

impl Service<Request<()>> for PanicsInCall {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        panic!("bug in a layer's call below the audit layer");
    }
}

#[tokio::test]
async fn a_panic_in_a_call_below_is_a_local_500_too() {
    let (layer, sink) = layer();
    let svc = layer.layer(PanicsInCall);
    let handle = tokio::spawn(svc.oneshot(request("/p")));
    assert!(handle.await.is_err());
    let v = only(&sink);
    assert_eq!(v["audit"]["action"], "error");
    assert_eq!(v["audit"]["status_code"], 500);
    assert_eq!(v["audit"]["path"], "/p");
    assert_eq!(v["reason"], "internal_error");
}

#[tokio::test]
async fn every_request_gets_its_own_record_and_accessors_work() {
    let (layer, sink) = layer();
    let mut svc = layer.layer(service_fn(|_req: Request<()>| async move {
        Ok::<_, Infallible>(Response::new(()))
    }));
    let _ = svc.get_ref();
    let _ = svc.get_mut();
    for _ in 0..3 {
        svc.ready()
            .await
            .unwrap()
            .call(request("/a"))
            .await
            .unwrap();
    }
    assert_eq!(sink.requests().len(), 3);
    let _inner = svc.into_inner();
    // Without a sink, nothing is written (metrics only).
    let svc = AuditLayer::metrics_only().layer(service_fn(|_req: Request<()>| async move {
        Ok::<_, Infallible>(Response::new(()))
    }));
    svc.oneshot(request("/b")).await.unwrap();
    assert_eq!(sink.requests().len(), 3);
}

#[tokio::test]
async fn a_disabled_layer_opens_no_facts_slot_and_passes_the_response_through() {
    let svc = AuditLayer::disabled().layer(service_fn(|req: Request<()>| async move {
        let context = RequestContext::of(req.extensions()).expect("the listener's context");
        assert!(context.facts.is_none(), "a disabled layer opened a slot");
        Ok::<_, Infallible>(Response::builder().status(204).body(()).unwrap())
    }));
    let resp = svc.oneshot(request("/x")).await.unwrap();
    assert_eq!(resp.status(), 204);
}
