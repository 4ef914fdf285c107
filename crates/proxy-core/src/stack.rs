//! Builds the proxy service from a validated config.
//!
//! [`build`] turns a [`Config`] plus one [`CredentialSource`] per credential
//! into a [`Proxy`]: the outer stack (edge errors -> client auth -> router)
//! and, per route, `authorize -> acquire -> inject -> forward`. Everything is
//! built once per config load; a request only clones `Arc`s. The caller (the
//! `latchkey` crate) holds the [`Proxy`] in an `ArcSwap` so a reload swaps
//! the whole thing atomically while in-flight requests finish on the old one.
//!
//! [`RouteLayers`] lets the caller wrap each route's credential stack with
//! layers from crates that depend on this one (the 401 retry, audit hooks).

use crate::ProxyBody;
use crate::acquire::AcquireLayer;
use crate::client_auth::{Authorize, AuthorizeLayer, Client, ClientAuth, ClientAuthLayer};
use crate::config::{Config, ConfigError, FieldError, RouteConfig};
use crate::credential::CredentialSource;
use crate::edge::{Edge, EdgeLayer};
use crate::error::{BoxError, NoRoute};
use crate::forward::{Forward, ForwardTarget};
use crate::inject::{InjectLayer, InjectSpec, Injection};
use crate::limit::Shed;
use crate::router::Router;
use crate::secret::SecretSource;
use crate::upstream::UpstreamClients;
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response, header};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tower::layer::util::Identity;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

mod shared;
pub use shared::SharedService;

/// A route's service: request in, response or error out. Cloned per
/// request, so shared, not boxed per clone ([`SharedService`]).
pub type RouteService = SharedService<Request<ProxyBody>, Response<ProxyBody>, BoxError>;

/// The whole proxy as one service that never fails (errors are responses).
pub type ProxyService = SharedService<Request<ProxyBody>, Response<ProxyBody>, Infallible>;

/// Hook to wrap each route's credential-bearing stack (acquire -> inject ->
/// forward) with layers defined outside this crate.
///
/// The [`RouteService`] handed to [`wrap`](Self::wrap) is a
/// [`SharedService`]: it is always ready, and waits for the readiness of
/// the stack inside within each call. A layer that acts on readiness
/// (tower's `LoadShed`, `Buffer`) sees no backpressure through it.
pub trait RouteLayers: Send + Sync {
    /// Wraps `inner` for `route`, whose credential is `source` (if any).
    fn wrap(
        &self,
        route: &RouteConfig,
        source: Option<&Arc<dyn CredentialSource>>,
        inner: RouteService,
    ) -> RouteService;
}

/// No extra layers.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLayers;

impl RouteLayers for NoLayers {
    fn wrap(
        &self,
        _: &RouteConfig,
        _: Option<&Arc<dyn CredentialSource>>,
        inner: RouteService,
    ) -> RouteService {
        inner
    }
}

/// A route's whole stack: client authorization around the (type-erased,
/// shared) credential stack. Not erased again: [`Dispatch`] clones it per
/// request, and every erased level is one more boxed future per request.
pub type RouteStack = Authorize<RouteService>;

/// The future of [`call_now_or_wait`].
pub type CallNowOrWait<S, R> = Either<
    Either<<S as Service<R>>::Future, Pin<Box<Oneshot<S, R>>>>,
    Ready<Result<<S as Service<R>>::Response, <S as Service<R>>::Error>>,
>;

/// Calls `service` with `req` at once if it is ready, else waits for it
/// in a boxed [`Oneshot`] (which polls readiness again, with the task's
/// waker); a readiness error is the result.
///
/// The proxy's stacks are ready at once unless a layer limits them. A
/// plain `Oneshot` holds the request while it waits, which makes every
/// request's future larger (and it is moved as each layer above wraps
/// it): here the future is the service's own, and only the rare wait is
/// boxed. Readiness is first checked with a waker that does nothing; a
/// `Pending` from that check is answered by the `Oneshot`'s own check.
pub fn call_now_or_wait<S: Service<R>, R>(mut service: S, req: R) -> CallNowOrWait<S, R> {
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => Either::Left(Either::Left(service.call(req))),
        Poll::Ready(Err(e)) => Either::Right(ready(Err(e))),
        Poll::Pending => Either::Left(Either::Right(Box::pin(service.oneshot(req)))),
    }
}

/// One built route.
#[derive(Debug)]
pub struct Route {
    /// The route's id.
    pub id: Arc<str>,
    /// Its stack.
    pub service: RouteStack,
}

/// A proxy built from one config.
///
/// `S` is its service: type-erased ([`ProxyService`], from [`build`] and
/// [`build_with`]) or the concrete stack ([`build_typed`]), whose future a
/// server can hold without boxing it per request.
#[derive(Clone)]
pub struct Proxy<S = ProxyService> {
    /// The service to call for every request.
    pub service: S,
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Credential sources by id, in config order.
    pub credentials: Vec<Arc<dyn CredentialSource>>,
    /// The clients and their tokens.
    pub clients: Vec<Client>,
    /// The basic-auth user names read from secrets, by route.
    pub usernames: Vec<RouteUsername>,
}

/// A route's basic-auth user name read from a secret (`inject.basic.username:
/// { file | env | value }`): kept across reloads like a client's token, and
/// checked by readiness like one.
#[derive(Clone, Debug)]
pub struct RouteUsername {
    /// The route's id.
    pub route: Arc<str>,
    /// Where the name is read from.
    pub source: SecretSource,
}

impl<S> std::fmt::Debug for Proxy<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.config.routes.len())
            .field("credentials", &self.credentials)
            .field("clients", &self.clients)
            .finish()
    }
}

/// The proxy's stack below any outer layer: edge errors -> load shedding ->
/// client auth -> routing to the per-route stacks.
pub type EdgeStack = Edge<Shed<ClientAuth<Dispatch>>>;

/// Builds the [`Proxy`] for `config`.
///
/// `sources` maps every credential id in the config to its source. `file`
/// is the config's name for errors (CA files that cannot be read, say).
pub fn build(
    config: Arc<Config>,
    file: &str,
    sources: &HashMap<String, Arc<dyn CredentialSource>>,
    upstreams: &UpstreamClients,
    extra: &dyn RouteLayers,
) -> Result<Proxy, ConfigError> {
    build_with(config, file, sources, upstreams, extra, Identity::new())
}

/// As [`build`], with `outer` wrapped around the whole stack (the audit
/// layer, which must see every request and every response) before the
/// stack is boxed: one boxed service and one boxed future per request,
/// not two.
pub fn build_with<L>(
    config: Arc<Config>,
    file: &str,
    sources: &HashMap<String, Arc<dyn CredentialSource>>,
    upstreams: &UpstreamClients,
    extra: &dyn RouteLayers,
    outer: L,
) -> Result<Proxy, ConfigError>
where
    L: Layer<EdgeStack>,
    L::Service: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as Service<Request<ProxyBody>>>::Future: Send + 'static,
{
    let typed = build_typed(config, file, sources, upstreams, extra, outer, None)?;
    Ok(Proxy {
        service: SharedService::new(typed.service),
        config: typed.config,
        credentials: typed.credentials,
        clients: typed.clients,
        usernames: typed.usernames,
    })
}

/// As [`build_with`], keeping the stack's type: `outer` around
/// [`EdgeStack`], not erased. A server that calls it with
/// [`call_now_or_wait`] holds its future inline (hyper keeps one
/// connection's in-flight future in one allocation it reuses), where an
/// erased stack's future is a heap allocation per request.
///
/// `previous` (a reload: the running config, its clients and its routes'
/// user names) lets a client whose token reference and `secrets` did not
/// change keep its
/// token source, and so the last value it read: a `file` token whose file
/// is gone keeps working across reloads as it does between them.
pub fn build_typed<L>(
    config: Arc<Config>,
    file: &str,
    sources: &HashMap<String, Arc<dyn CredentialSource>>,
    upstreams: &UpstreamClients,
    extra: &dyn RouteLayers,
    outer: L,
    previous: Option<(&Config, &[Client], &[RouteUsername])>,
) -> Result<Proxy<L::Service>, ConfigError>
where
    L: Layer<EdgeStack>,
{
    let poll = config.secrets.file_poll_interval;
    let mut errs = Vec::new();
    let kept_token = |c: &crate::config::ClientConfig| {
        let (old_config, old_clients, _) = previous?;
        let old = old_config.clients.iter().find(|o| o.id == c.id)?;
        (old.token == c.token && old_config.secrets == config.secrets)
            .then(|| old_clients.iter().find(|o| *o.id == *c.id))??
            .token
            .clone()
    };
    let clients: Vec<Client> = config
        .clients
        .iter()
        .map(|c| Client {
            id: Arc::from(c.id.as_str()),
            token: c
                .token
                .as_ref()
                .map(|t| kept_token(c).unwrap_or_else(|| SecretSource::resolve(t, poll))),
            tls_san: c.tls_san.clone(),
        })
        .collect();

    // The same for a route's basic-auth user name from a secret.
    let basic_user = |rc: &crate::config::RouteConfig| {
        rc.inject
            .as_ref()
            .and_then(|i| i.basic.as_ref())
            .map(|b| b.username.clone())
    };
    let kept_username = |rc: &crate::config::RouteConfig| {
        let (old_config, _, old_names) = previous?;
        let old = old_config.routes.iter().find(|o| o.id == rc.id)?;
        let kept = (basic_user(old) == basic_user(rc) && old_config.secrets == config.secrets)
            .then(|| old_names.iter().find(|u| *u.route == *rc.id))??;
        Some(kept.source.clone())
    };
    let mut usernames = Vec::new();
    let mut router = Router::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let allowed = config
            .clients
            .iter()
            .filter(|c| c.routes.iter().any(|r| r == "*" || *r == rc.id))
            .map(|c| Arc::from(c.id.as_str()));
        let source = rc.credential.as_ref().and_then(|id| sources.get(id));
        if rc.credential.is_some() && source.is_none() {
            errs.push(FieldError::new(
                format!("routes[{i}].credential"),
                "credential source missing",
            ));
            continue;
        }
        // A CA for a plain-http upstream is ignored (a config warning), not
        // read: a missing one must not refuse the config.
        let ca_file = rc
            .ca_file
            .as_deref()
            .filter(|_| rc.upstream.scheme == http::uri::Scheme::HTTPS);
        let tls = crate::upstream::UpstreamTls::from_files(
            ca_file,
            rc.client_cert_file.as_deref(),
            rc.client_key_file.as_deref(),
        );
        let pool = match upstreams.pool(tls, rc.connect_timeout, &rc.upstream) {
            Ok(c) => c,
            Err(e) => {
                errs.push(FieldError::new(
                    format!("routes[{i}].{}", e.field),
                    e.message,
                ));
                continue;
            }
        };
        // Parsed before the forwarder, which drops a caller's trailer of
        // the credential's header name.
        let spec = match source.map(|_| InjectSpec::parse(rc.inject.as_ref())) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                errs.push(FieldError::new(
                    format!("routes[{i}].inject{}", e.path),
                    e.message,
                ));
                continue;
            }
            None => None,
        };
        let credential_header = match &spec {
            Some(InjectSpec::Header { name, .. }) if name != http::header::AUTHORIZATION => {
                Some(name.clone())
            }
            _ => None,
        };
        let forward = match Forward::new(
            pool,
            ForwardTarget {
                upstream: rc.upstream.clone(),
                strip_prefix: rc
                    .strip_prefix
                    .then(|| rc.matcher.path_prefix.clone())
                    .flatten(),
                timeout: rc.timeout,
                connect_timeout: rc.connect_timeout,
                tunnel_idle_timeout: rc.tunnel_idle_timeout,
                response_idle_timeout: rc.response_idle_timeout,
                max_request_body: rc.max_request_body,
                credential_header,
            },
        ) {
            Ok(f) => f,
            Err(_) => {
                errs.push(FieldError::new(
                    format!("routes[{i}].upstream"),
                    "host is not a valid Host header",
                ));
                continue;
            }
        };
        let inner: RouteService = match (source, spec) {
            (Some(src), Some(spec)) => {
                let username = match basic_user(rc) {
                    Some(crate::config::Username::Secret(r)) => {
                        let source =
                            kept_username(rc).unwrap_or_else(|| SecretSource::resolve(&r, poll));
                        usernames.push(RouteUsername {
                            route: Arc::from(rc.id.as_str()),
                            source: source.clone(),
                        });
                        Some(source)
                    }
                    _ => None,
                };
                let injection = Injection::from_spec_with(spec, rc.inject.as_ref(), poll, username);
                SharedService::new(
                    ServiceBuilder::new()
                        .layer(AcquireLayer::new(src.clone()))
                        .layer(InjectLayer::new(injection))
                        .service(forward),
                )
            }
            _ => SharedService::new(forward),
        };
        let inner = extra.wrap(rc, source, inner);
        let service = AuthorizeLayer::new(Arc::from(rc.id.as_str()), rc.public, allowed)
            .with_credential(rc.credential.as_deref().map(Arc::from))
            .with_max_request_body(rc.max_request_body)
            .layer(inner);
        let route = Arc::new(Route {
            id: Arc::from(rc.id.as_str()),
            service,
        });
        if router
            .insert(
                rc.matcher.host.as_deref(),
                rc.matcher.path_prefix.as_deref(),
                route,
            )
            .is_err()
        {
            errs.push(FieldError::new(
                format!("routes[{i}].match"),
                "duplicate host and path_prefix",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(ConfigError::new(file, errs));
    }

    let credentials = config
        .credentials
        .iter()
        .filter_map(|c| sources.get(&c.id).cloned())
        .collect();
    let service = ServiceBuilder::new()
        .layer(outer)
        .layer(EdgeLayer::new())
        .layer(crate::limit::ShedLayer::new(
            config.proxy.max_concurrent_requests,
        ))
        .layer(ClientAuthLayer::new(clients.clone()))
        .service(Dispatch {
            router: Arc::new(router),
            escaped_slashes: config.proxy.escaped_slashes,
        });
    Ok(Proxy {
        service,
        config,
        credentials,
        clients,
        usernames,
    })
}

/// Routes each request to its route's stack.
#[derive(Clone, Debug)]
pub struct Dispatch {
    router: Arc<Router<Arc<Route>>>,
    escaped_slashes: crate::config::EscapedSlashes,
}

impl Service<Request<ProxyBody>> for Dispatch {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Either<
        CallNowOrWait<RouteStack, Request<ProxyBody>>,
        Ready<Result<Response<ProxyBody>, BoxError>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per route: checked in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> Self::Future {
        // The upstream's answer to a TRACE is the request it got, injected
        // credential included; a CONNECT asks for a tunnel, which a reverse
        // proxy does not open: both refused before any route is chosen.
        if req.method() == http::Method::TRACE || req.method() == http::Method::CONNECT {
            crate::facts::record(&req, |f| f.rejected_by = Some("router"));
            let e = crate::error::MethodNotAllowed(req.method().clone());
            return Either::Right(ready(Err(e.into())));
        }
        match crate::path::normalize(req.uri().path(), self.escaped_slashes) {
            Ok(None) => {}
            Ok(Some(path)) => {
                if let Err(e) = set_path(&mut req, &path) {
                    crate::facts::record(&req, |f| f.rejected_by = Some("router"));
                    return Either::Right(ready(Err(e)));
                }
            }
            Err(problem) => {
                crate::facts::record(&req, |f| f.rejected_by = Some("router"));
                let e = crate::error::BadRequest(format!(
                    "the request path has {problem}, which could name another route's path upstream"
                ));
                return Either::Right(ready(Err(e.into())));
            }
        }
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let (first, more) = (hosts.next(), hosts.next().is_some());
        // Which host is meant must be unambiguous (RFC 9112 3.2: several
        // `Host` lines are a 400; RFC 9113 8.3.1: a `Host` that differs from
        // h2's `:authority`, or here from an absolute-form target, is
        // malformed): the proxy and an upstream must not read different ones.
        let differs = first
            .zip(req.uri().authority())
            .is_some_and(|(h, a)| !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()));
        if more || differs {
            crate::facts::record(&req, |f| f.rejected_by = Some("router"));
            let e = crate::error::BadRequest(
                if more {
                    "the request has more than one Host header"
                } else {
                    "the request's Host header differs from its target's authority"
                }
                .to_owned(),
            );
            return Either::Right(ready(Err(e.into())));
        }
        // RFC 9112 3.2: an HTTP/1.1 request names its host (a 400 without,
        // as nginx and Envoy answer). HTTP/1.0 need not, and h2 may leave
        // out `:authority` and `Host` (RFC 9113 8.3.1): both are routed
        // to the routes without a host.
        let authority = req.uri().authority();
        if first.is_none() && authority.is_none() && req.version() == http::Version::HTTP_11 {
            crate::facts::record(&req, |f| f.rejected_by = Some("router"));
            let e =
                crate::error::BadRequest("an HTTP/1.1 request must have a Host header".to_owned());
            return Either::Right(ready(Err(e.into())));
        }
        let host = first
            .and_then(|h| h.to_str().ok())
            .or_else(|| authority.map(|a| a.as_str()));
        match self.router.route(host, req.uri().path()) {
            Some(route) => Either::Left(call_now_or_wait(route.service.clone(), req)),
            None => {
                crate::facts::record(&req, |f| f.rejected_by = Some("router"));
                let e = NoRoute {
                    // Without any `user:password@` part (a host that has one
                    // matches no host route).
                    host: host
                        .map(|h| crate::router::normalize_host(crate::router::without_userinfo(h)))
                        .unwrap_or_default(),
                    path: req.uri().path().to_string(),
                };
                Either::Right(ready(Err(e.into())))
            }
        }
    }
}

/// Replaces `req`'s path with `path` (its normalized form), keeping the
/// rest of the URI.
/// It only adds unreserved characters to a valid path, so it cannot fail;
/// if it ever did, the request is refused, not forwarded unnormalized.
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), BoxError> {
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    let uri = path_and_query
        .parse()
        .ok()
        .and_then(|pq| {
            parts.path_and_query = Some(pq);
            http::Uri::from_parts(parts).ok()
        })
        .ok_or_else(|| {
            crate::error::BadRequest("the request path cannot be normalized".to_owned())
        })?;
    *req.uri_mut() = uri;
    Ok(())
}

#[cfg(test)]
mod tests;
