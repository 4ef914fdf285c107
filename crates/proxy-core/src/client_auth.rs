//! Client authentication: who may use which route.
//!
//! Two steps, because the first runs before routing and the second needs the
//! route:
//!
//! - [`ClientAuthLayer`] sits outside the router. It identifies the caller
//!   and records the [`ClientIdentity`]:
//!   - by proxy token, from `Proxy-Authorization: Bearer` or
//!     `Authorization: Bearer`, compared in constant time with every
//!     client's token. **Both headers are removed**, so the caller's token
//!     never reaches an upstream or a later layer. A token that matches no
//!     client is refused at once (401), even for a public route, and even
//!     when the connection also carries a client certificate.
//!   - without a token, by client certificate (mTLS): the listener puts the
//!     verified certificate's URI SANs in a [`PeerIdentity`]; the first SAN
//!     (in certificate order) equal to a client's `tls_san` names the
//!     client. SANs are compared as plain strings: they are public names,
//!     vouched for by the CA, not secrets. A certificate that matches no
//!     client leaves the caller anonymous.
//!
//!   A token, when sent, wins over the certificate: it is the explicit
//!   choice of identity (one workload certificate may carry several
//!   clients' tokens).
//! - [`AuthorizeLayer`] is the first layer of each route's stack: a non-public
//!   route refuses anonymous callers (401) and clients it does not list (403).

use crate::context::{ClientIdentity, PeerIdentity, RequestContext};
use crate::error::{BoxError, ClientForbidden, ClientUnauthenticated};
use crate::secret::SecretSource;
use futures_util::future::{Either, Ready, ready};
use http::{HeaderValue, Request, header};
use std::collections::{HashMap as StdHashMap, HashSet as StdHashSet};
use std::sync::Arc;
use std::task::{Context, Poll};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

// Looked up per request with config strings as keys: foldhash, not SipHash.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = StdHashSet<K, foldhash::fast::RandomState>;

/// One client: its proxy token, the certificate SANs that name it, or both.
#[derive(Clone, Debug)]
pub struct Client {
    /// The client's id.
    pub id: Arc<str>,
    /// Its token (may rotate if it comes from a file); None: certificate
    /// only.
    pub token: Option<SecretSource>,
    /// Client-certificate URI SANs that identify it (exact match).
    pub tls_san: Vec<String>,
}

/// Authenticates callers; see the module docs.
#[derive(Clone, Debug)]
pub struct ClientAuthLayer {
    clients: Arc<Clients>,
}

#[derive(Debug)]
struct Clients {
    all: Box<[Client]>,
    /// URI SAN -> client id (the first client listing it wins; config
    /// validation refuses duplicates).
    by_san: HashMap<String, Arc<str>>,
}

impl ClientAuthLayer {
    /// A layer identifying callers as one of `clients`.
    pub fn new(clients: Vec<Client>) -> Self {
        let mut by_san = HashMap::default();
        for c in &clients {
            for san in &c.tls_san {
                by_san.entry(san.clone()).or_insert_with(|| c.id.clone());
            }
        }
        Self {
            clients: Arc::new(Clients {
                all: clients.into(),
                by_san,
            }),
        }
    }
}

impl<S> Layer<S> for ClientAuthLayer {
    type Service = ClientAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientAuth {
            inner,
            clients: self.clients.clone(),
        }
    }
}

/// The service built by [`ClientAuthLayer`].
#[derive(Clone, Debug)]
pub struct ClientAuth<S> {
    inner: S,
    clients: Arc<Clients>,
}

impl<S> ClientAuth<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Who sent a request whose `Proxy-Authorization` and `Authorization`
    /// values (each the header's first, as `HeaderMap::get` gives) are
    /// `proxy` and `auth`.
    fn identify(
        &self,
        proxy: Option<&HeaderValue>,
        auth: Option<&HeaderValue>,
        peer: Option<&PeerIdentity>,
    ) -> Result<ClientIdentity, ClientUnauthenticated> {
        let Some(presented) = bearer(proxy).or_else(|| bearer(auth)) else {
            let by_cert = peer.and_then(|p| {
                p.uri_sans
                    .iter()
                    .find_map(|san| self.clients.by_san.get(san).cloned())
            });
            return Ok(ClientIdentity(by_cert));
        };
        // Compare against every client, without stopping at the first match,
        // so timing says nothing about which client or how many exist.
        let mut found: Option<&Client> = None;
        for c in self.clients.all.iter() {
            if let Some(Ok(token)) = c.token.as_ref().map(SecretSource::load) {
                let eq: bool = token.expose().as_bytes().ct_eq(presented).into();
                if eq && found.is_none() {
                    found = Some(c);
                }
            }
        }
        match found {
            Some(c) => Ok(ClientIdentity(Some(c.id.clone()))),
            None => Err(ClientUnauthenticated::Invalid),
        }
    }
}

/// The token of a `Bearer` credential.
fn bearer(value: Option<&HeaderValue>) -> Option<&[u8]> {
    let v = value?.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
    if scheme.eq_ignore_ascii_case(b"bearer") {
        let token = rest.trim_ascii();
        (!token.is_empty()).then_some(token)
    } else {
        None
    }
}

impl<S, B> Service<Request<B>> for ClientAuth<S>
where
    S: Service<Request<B>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<S::Future, Ready<Result<S::Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Checked here, whoever the caller is, because `Transfer-Encoding`
        // is hop-by-hop and gone after this layer; recorded as the
        // router's, which refuses the other malformed requests.
        if crate::headers::unsupported_transfer_coding(req.headers()) {
            crate::facts::record(&req, |f| f.rejected_by = Some("router"));
            let e = crate::error::BadRequest(
                "the request's Transfer-Encoding is not supported: only chunked, alone, is accepted (RFC 9112 6.1); a coding such as gzip would reach the upstream still applied".to_owned(),
            );
            return Either::Right(ready(Err(e.into())));
        }
        let upgrade =
            req.version() == http::Version::HTTP_11 && crate::headers::is_upgrade(req.headers());
        // Taken out first and identified from what was taken: one lookup
        // per header, where reading them and then removing them took two
        // (`remove` gives the first value, as `get` does, and drops all).
        let headers = req.headers_mut();
        let proxy = headers.remove(header::PROXY_AUTHORIZATION);
        let auth = headers.remove(header::AUTHORIZATION);
        let identity = self.identify(
            proxy.as_ref(),
            auth.as_ref(),
            req.extensions().get::<PeerIdentity>(),
        );
        drop((proxy, auth));
        let headers = req.headers_mut();
        // Hop-by-hop headers are this hop's, and go here, before any route
        // injects a credential: a caller's `Connection: authorization` (or
        // the name of any injected header) would otherwise remove the
        // injected value when `Forward` strips what `Connection` names.
        crate::headers::remove_hop_by_hop(headers, upgrade);
        match identity {
            Ok(id) => {
                crate::facts::record(&req, |f| f.client.clone_from(&id.0));
                RequestContext::of_mut(req.extensions_mut()).client = Some(id);
                Either::Left(self.inner.call(req))
            }
            Err(e) => {
                crate::facts::record(&req, |f| f.rejected_by = Some("client_auth"));
                Either::Right(ready(Err(e.into())))
            }
        }
    }
}

/// Who may use one route.
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    policy: Arc<RoutePolicy>,
}

#[derive(Debug)]
struct RoutePolicy {
    route: Arc<str>,
    credential: Option<Arc<str>>,
    public: bool,
    clients: HashSet<Arc<str>>,
    /// The route's `max_request_body`: a declared `Content-Length` over
    /// it is refused here, before any layer reads the body.
    max_request_body: Option<u64>,
}

impl AuthorizeLayer {
    /// `public` routes admit anyone; others admit only `clients`.
    pub fn new(route: Arc<str>, public: bool, clients: impl IntoIterator<Item = Arc<str>>) -> Self {
        Self {
            policy: Arc::new(RoutePolicy {
                route,
                credential: None,
                public,
                clients: clients.into_iter().collect(),
                max_request_body: None,
            }),
        }
    }

    /// Refuses a request whose declared `Content-Length` is over `limit`
    /// (413 `body_too_large`) once its client is authorized, before any
    /// layer reads the body: the 401 retry would otherwise read it for a
    /// replay (answering `Expect: 100-continue` with `100 Continue`, then
    /// taking up to `retry.max_replay_body` of it) before the forwarder
    /// refused it.
    pub fn with_max_request_body(mut self, limit: Option<u64>) -> Self {
        if let Some(p) = Arc::get_mut(&mut self.policy) {
            p.max_request_body = limit;
        }
        self
    }

    /// Names the route's credential in the request facts (for the audit
    /// record of requests refused before acquisition).
    pub fn with_credential(mut self, credential: Option<Arc<str>>) -> Self {
        if let Some(p) = Arc::get_mut(&mut self.policy) {
            p.credential = credential;
        }
        self
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service built by [`AuthorizeLayer`].
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    policy: Arc<RoutePolicy>,
}

impl<S> Authorize<S> {
    /// Calls the route for an authorized request, unless its declared body
    /// is over the route's limit.
    fn admit<B>(&mut self, req: Request<B>) -> <Self as Service<Request<B>>>::Future
    where
        S: Service<Request<B>, Error = BoxError>,
    {
        if let Some(limit) = self.policy.max_request_body
            && crate::headers::declared_length(req.headers()).is_some_and(|len| len > limit)
        {
            crate::facts::record(&req, |f| f.rejected_by = Some("limits"));
            return Either::Right(ready(Err(crate::error::BodyTooLarge { limit }.into())));
        }
        Either::Left(self.inner.call(req))
    }
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<S::Future, Ready<Result<S::Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let p = &self.policy;
        crate::facts::record(&req, |f| {
            f.route = Some(p.route.clone());
            f.route_credential.clone_from(&p.credential);
        });
        if p.public {
            return self.admit(req);
        }
        let client = crate::context::client(req.extensions()).and_then(|c| c.0.clone());
        if !client.as_ref().is_some_and(|c| p.clients.contains(c)) {
            crate::facts::record(&req, |f| f.rejected_by = Some("authorize"));
        }
        match client {
            // Say why the certificate did not help, rather than only asking
            // for a token the caller may not be meant to have.
            None if req.extensions().get::<PeerIdentity>().is_some() => {
                Either::Right(ready(Err(ClientUnauthenticated::UnknownCertificate.into())))
            }
            None => Either::Right(ready(Err(ClientUnauthenticated::Missing.into()))),
            Some(c) if p.clients.contains(&c) => self.admit(req),
            Some(c) => Either::Right(ready(Err(ClientForbidden {
                client: c.to_string(),
                route: p.route.to_string(),
            }
            .into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn clients() -> Vec<Client> {
        vec![
            Client {
                id: "billing".into(),
                token: Some(SecretSource::fixed("tok-billing")),
                tls_san: vec!["spiffe://test/ns/billing/sa/billing".into()],
            },
            Client {
                id: "search".into(),
                token: Some(SecretSource::fixed("tok-search")),
                tls_san: vec![],
            },
            Client {
                id: "reports".into(),
                token: None,
                tls_san: vec!["spiffe://test/ns/reports/sa/reports".into()],
            },
        ]
    }

    async fn run(
        headers: &[(&str, &str)],
        public: bool,
    ) -> Result<(Option<Arc<str>>, HeaderMap), BoxError> {
        run_with_peer(headers, None, public).await
    }

    async fn run_with_peer(
        headers: &[(&str, &str)],
        peer_sans: Option<&[&str]>,
        public: bool,
    ) -> Result<(Option<Arc<str>>, HeaderMap), BoxError> {
        let svc = ServiceBuilder::new()
            .layer(ClientAuthLayer::new(clients()))
            .layer(AuthorizeLayer::new(
                "payments".into(),
                public,
                ["billing".into()],
            ))
            .service(service_fn(|req: Request<()>| async move {
                let who = crate::context::client(req.extensions()).and_then(|c| c.0.clone());
                Ok::<_, BoxError>((who, req.headers().clone()))
            }));
        let mut req = Request::new(());
        if let Some(sans) = peer_sans {
            req.extensions_mut().insert(PeerIdentity {
                uri_sans: sans.iter().map(|s| s.to_string()).collect(),
            });
        }
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        svc.oneshot(req).await
    }

    #[tokio::test]
    async fn accepts_either_header_and_strips_both() {
        for h in ["authorization", "proxy-authorization"] {
            let (who, headers) = run(&[(h, "Bearer tok-billing")], false).await.unwrap();
            assert_eq!(who.as_deref(), Some("billing"));
            assert!(headers.get("authorization").is_none());
            assert!(headers.get("proxy-authorization").is_none());
        }
    }

    /// `Proxy-Authorization` is read first and a non-`Bearer` one falls
    /// back to `Authorization`; of repeated lines the first is the one
    /// read, and every line of both headers is gone afterwards.
    #[tokio::test]
    async fn which_credential_header_is_read() {
        let call = |lines: &[(&'static str, &'static str)]| {
            let mut req = Request::new(());
            for (k, v) in lines {
                req.headers_mut().append(*k, HeaderValue::from_static(v));
            }
            let svc =
                ClientAuthLayer::new(clients()).layer(service_fn(|req: Request<()>| async move {
                    let who = crate::context::client(req.extensions()).and_then(|c| c.0.clone());
                    Ok::<_, BoxError>((who, req.headers().clone()))
                }));
            svc.oneshot(req)
        };
        let (who, headers) = call(&[
            ("authorization", "Bearer tok-billing"),
            ("proxy-authorization", "Bearer tok-search"),
        ])
        .await
        .unwrap();
        assert_eq!(who.as_deref(), Some("search"));
        assert!(headers.is_empty(), "{headers:?}");
        let (who, _) = call(&[
            ("proxy-authorization", "Basic dXNlcjpwYXNz"),
            ("authorization", "Bearer tok-billing"),
        ])
        .await
        .unwrap();
        assert_eq!(who.as_deref(), Some("billing"));
        let (who, headers) = call(&[
            ("authorization", "Bearer tok-search"),
            ("authorization", "Bearer tok-billing"),
            ("x-kept", "1"),
        ])
        .await
        .unwrap();
        assert_eq!(who.as_deref(), Some("search"));
        assert_eq!(headers.len(), 1, "{headers:?}");
        let (who, _) = call(&[
            ("proxy-authorization", "Bearer tok-billing"),
            ("proxy-authorization", "Bearer tok-search"),
        ])
        .await
        .unwrap();
        assert_eq!(who.as_deref(), Some("billing"));
        // A token that matches no client is refused, whatever follows it:
        // never a fallback to the next value or header.
        for lines in [
            &[
                ("authorization", "Bearer nope"),
                ("authorization", "Bearer tok-billing"),
            ],
            &[
                ("proxy-authorization", "Bearer nope"),
                ("authorization", "Bearer tok-billing"),
            ],
        ] {
            let e = call(lines).await.unwrap_err();
            assert!(matches!(
                e.downcast_ref(),
                Some(ClientUnauthenticated::Invalid)
            ));
        }
    }

    #[tokio::test]
    async fn refuses_missing_wrong_and_unlisted() {
        let e = run(&[], false).await.unwrap_err();
        assert!(e.is::<ClientUnauthenticated>());
        let e = run(&[("authorization", "Bearer nope")], false)
            .await
            .unwrap_err();
        assert!(matches!(
            e.downcast_ref(),
            Some(ClientUnauthenticated::Invalid)
        ));
        let e = run(&[("authorization", "Bearer tok-search")], false)
            .await
            .unwrap_err();
        assert!(e.is::<ClientForbidden>());
        assert!(!e.to_string().contains("tok-search"));
        // Public routes admit anonymous callers.
        let (who, _) = run(&[], true).await.unwrap();
        assert_eq!(who, None);
    }

    #[tokio::test]
    async fn certificate_san_identifies_a_client_without_a_token() {
        let billing = Some(&["spiffe://test/ns/billing/sa/billing"][..]);
        let (who, _) = run_with_peer(&[], billing, false).await.unwrap();
        assert_eq!(who.as_deref(), Some("billing"));
        // The first matching SAN in certificate order names the client.
        let two = ["urn:other", "spiffe://test/ns/billing/sa/billing"];
        let (who, _) = run_with_peer(&[], Some(&two), false).await.unwrap();
        assert_eq!(who.as_deref(), Some("billing"));
        // Exact comparison: a prefix or a different case is another name.
        for near in [
            "spiffe://test/ns/billing/sa/billing/x",
            "SPIFFE://test/ns/billing/sa/billing",
        ] {
            let e = run_with_peer(&[], Some(&[near]), false).await.unwrap_err();
            assert!(matches!(
                e.downcast_ref(),
                Some(ClientUnauthenticated::UnknownCertificate)
            ));
        }
        // A certificate-only client is allowed where listed, refused elsewhere.
        let reports = Some(&["spiffe://test/ns/reports/sa/reports"][..]);
        let e = run_with_peer(&[], reports, false).await.unwrap_err();
        assert!(e.is::<ClientForbidden>());
        // An unmatched certificate is anonymous: fine on a public route.
        let (who, _) = run_with_peer(&[], Some(&["spiffe://x/y"]), true)
            .await
            .unwrap();
        assert_eq!(who, None);
    }

    #[tokio::test]
    async fn a_token_wins_over_the_certificate_and_must_be_valid() {
        let billing = Some(&["spiffe://test/ns/billing/sa/billing"][..]);
        let e = run_with_peer(&[("authorization", "Bearer nope")], billing, false)
            .await
            .unwrap_err();
        assert!(matches!(
            e.downcast_ref(),
            Some(ClientUnauthenticated::Invalid)
        ));
        let e = run_with_peer(&[("authorization", "Bearer tok-search")], billing, false)
            .await
            .unwrap_err();
        assert!(e.is::<ClientForbidden>());
    }

    #[test]
    fn bearer_parsing() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(Some(&v("bearer   abc "))), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(&v("Basic abc"))), None);
        assert_eq!(bearer(Some(&v("Bearer "))), None);
        assert_eq!(bearer(None), None);
    }
}
