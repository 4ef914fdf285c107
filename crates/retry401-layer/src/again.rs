//! The copy of a request kept for its replay.
//!
//! The copy is made before the first attempt (the layers inside consume and
//! change the request: injection adds the credential, forwarding rewrites
//! the target and the hop-by-hop headers), for every replayable request,
//! although almost none is ever replayed. So it is kept cheap: method,
//! target and version are cloned, the headers are kept as a list of
//! (name, value) pairs that share their bytes (one allocation; a
//! `HeaderMap` clone takes two, and its hash index is only needed again by
//! the rare replay, which rebuilds the map), the body is the buffered
//! [`Replay`] and becomes a body only when a replay is sent, and the
//! extensions are kept as typed values when they
//! are only the ones latchkey's own outer layers put there (the request
//! context with the connection, the request id, the facts slot and the
//! client identity; the peer certificate): no type-erased map and no boxed copy of each value
//! per request. A request carrying any other extension keeps a clone of
//! all of them, so a replay always carries exactly what the first attempt
//! did.

use crate::Replay;
use http::request::Parts;
use http::{Extensions, HeaderName, HeaderValue, Method, Request, Uri, Version};
use proxy_core::ProxyBody;
use proxy_core::context::{PeerIdentity, RequestContext};

/// Everything needed to send the request again.
pub(crate) struct Again {
    method: Method,
    uri: Uri,
    version: Version,
    /// In the map's order (a name's values together, in order).
    headers: Vec<(HeaderName, HeaderValue)>,
    extensions: Carried,
    body: Replay,
}

#[expect(
    clippy::large_enum_variant,
    reason = "the typed copy is the common case; boxing it would cost every request an allocation"
)]
enum Carried {
    /// Only the types in [`Known`] were present.
    Known(Known),
    /// Something else too: a clone of them all.
    All(Extensions),
}

#[derive(Default)]
struct Known {
    context: Option<RequestContext>,
    peer: Option<PeerIdentity>,
}

impl Again {
    /// Copies what a replay of the request `parts` with body `body` needs.
    pub(crate) fn capture(parts: &Parts, body: Replay) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            extensions: Carried::capture(&parts.extensions),
            body,
        }
    }

    /// The request to replay.
    pub(crate) fn into_request(self) -> Request<ProxyBody> {
        let mut req = Request::new(self.body.body());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        // Not `reserve(len)`: the list counts values, and a name repeated
        // past `HeaderMap`'s limit on distinct entries would make that
        // reservation panic.
        let headers = req.headers_mut();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        *req.extensions_mut() = self.extensions.into_extensions();
        req
    }
}

impl Carried {
    fn capture(ext: &Extensions) -> Self {
        let known = Known {
            context: ext.get().cloned(),
            peer: ext.get().cloned(),
        };
        let present = usize::from(known.context.is_some()) + usize::from(known.peer.is_some());
        if present == ext.len() {
            Self::Known(known)
        } else {
            Self::All(ext.clone())
        }
    }

    fn into_extensions(self) -> Extensions {
        match self {
            Self::All(ext) => ext,
            Self::Known(k) => {
                let mut ext = Extensions::new();
                if let Some(v) = k.context {
                    ext.insert(v);
                }
                if let Some(v) = k.peer {
                    ext.insert(v);
                }
                ext
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::context::{ClientIdentity, ConnInfo, RequestId};
    use proxy_core::facts::Facts;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn parts(extra: bool) -> Parts {
        let mut req = Request::post("http://h/p?q=1")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ext = req.extensions_mut();
        ext.insert(RequestContext {
            conn: Some(ConnInfo {
                remote_addr: addr,
                local_addr: addr,
                tls: false,
            }),
            id: Some(RequestId::generate()),
            facts: Some(Facts::new()),
            client: Some(ClientIdentity(Some("c".into()))),
            ..RequestContext::default()
        });
        if extra {
            ext.insert(7u32);
        }
        req.into_parts().0
    }

    fn check(extra: bool) {
        let p = parts(extra);
        let again = Again::capture(&p, Replay::default());
        assert_eq!(
            matches!(again.extensions, Carried::Known(_)),
            !extra,
            "typed copy exactly when only known types are present"
        );
        let r = again.into_request();
        assert_eq!(r.method(), p.method);
        assert_eq!(r.uri(), &p.uri);
        assert_eq!(r.version(), p.version);
        assert_eq!(r.headers(), &p.headers);
        let (a, b) = (r.extensions(), &p.extensions);
        assert_eq!(a.len(), b.len());
        let (ca, cb) = (
            RequestContext::of(a).unwrap(),
            RequestContext::of(b).unwrap(),
        );
        assert_eq!(ca.conn, cb.conn);
        assert_eq!(ca.id, cb.id);
        assert_eq!(ca.client, cb.client);
        assert_eq!(ca.client, Some(ClientIdentity(Some("c".into()))));
        assert!(Arc::ptr_eq(
            ca.facts.as_ref().unwrap(),
            cb.facts.as_ref().unwrap()
        ));
        assert_eq!(a.get::<u32>(), b.get::<u32>());
    }

    /// A map can hold more values of one name than it may have distinct
    /// names (`HeaderMap` refuses to reserve past 24,576 entries); the
    /// replay rebuilds it without reserving by the count of values.
    #[test]
    fn a_name_repeated_past_the_entry_limit_is_replayed_whole() {
        let mut req = Request::get("http://h/").body(()).unwrap();
        for _ in 0..30_000 {
            req.headers_mut()
                .append("x-many", http::HeaderValue::from_static("v"));
        }
        let (p, ()) = req.into_parts();
        let r = Again::capture(&p, Replay::default()).into_request();
        assert_eq!(r.headers().get_all("x-many").iter().count(), 30_000);
        assert_eq!(r.headers(), &p.headers);
    }

    #[test]
    fn known_extensions_are_carried_typed() {
        check(false);
    }

    #[test]
    fn any_other_extension_carries_them_all() {
        check(true);
    }
}
