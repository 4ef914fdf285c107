//! Per-request facts shared between layers through request extensions.
//!
//! The listener inserts one [`RequestContext`]: the [`ConnInfo`] and the
//! [`RequestId`]; the layers below fill in the rest of it: the audit layer
//! the request's [`Facts`] slot, client auth the [`ClientIdentity`], the
//! acquire layer the [`Acquired`] credential for inject. One extension, not
//! five: each extension is a boxed value in a map that reallocates at its
//! fourth entry (callgrind: ~1,000 instructions per request for the first
//! three folded into one, ~400 for the other two). On a TLS connection whose
//! caller presented a verified certificate the listener also inserts
//! [`PeerIdentity`]. Later layers read them instead of re-deriving them.

use crate::acquire::Acquired;
use crate::facts::Facts;
use http::Extensions;
use std::net::SocketAddr;
use std::sync::Arc;

/// The per-request state latchkey's own layers hand one another: what the
/// listener knew (connection, request id), the facts slot, the client
/// identity and the credential for inject; see the module docs. Every field is optional so layers used on their
/// own (tests, embedding) work with whatever their caller attached.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The connection it arrived on (set by the listener).
    pub conn: Option<ConnInfo>,
    /// Its request id (set by the listener).
    pub id: Option<RequestId>,
    /// Its facts slot (set by the audit layer, [`Facts::open`]).
    pub facts: Option<Arc<Facts>>,
    /// Who the caller is (set by client auth).
    pub client: Option<ClientIdentity>,
    /// The credential to inject (set by acquire, taken by inject).
    pub acquired: Option<Acquired>,
    /// Put the [`CredentialUsed`](crate::credential::CredentialUsed)
    /// record on the response whatever its status. The 401 retry sets it on
    /// its replay, to learn which generation the replay carried when it
    /// succeeds. Otherwise only an error response carries the record: a
    /// retry looks only at error statuses, and the record would cost every
    /// request an extension map on its response.
    pub report_credential_used: bool,
    /// The listener's hold on the tunnel the request becomes if it
    /// upgrades (set by the listener on upgrade requests only, taken by
    /// forward).
    pub tunnel: Option<crate::tunnel::TunnelScope>,
    /// The connection's spare timer for the route timeout (set by the
    /// listener; see [`crate::timer`]). Without one, forward makes a new
    /// timer per request.
    pub upstream_timer: Option<crate::timer::Reuse>,
}

impl RequestContext {
    /// The listener's context for a request: connection and id, no facts
    /// slot yet.
    pub fn new(conn: ConnInfo, id: RequestId) -> Self {
        Self {
            conn: Some(conn),
            id: Some(id),
            ..Self::default()
        }
    }

    /// The context in `ext`, if any.
    pub fn of(ext: &Extensions) -> Option<&Self> {
        ext.get::<Self>()
    }

    /// The context in `ext`, inserted empty if there is none.
    pub fn of_mut(ext: &mut Extensions) -> &mut Self {
        ext.get_or_insert_default()
    }
}

/// The request's [`ConnInfo`], from its [`RequestContext`].
pub fn conn_info(ext: &Extensions) -> Option<ConnInfo> {
    RequestContext::of(ext)?.conn
}

/// The request's [`RequestId`], from its [`RequestContext`].
pub fn request_id(ext: &Extensions) -> Option<&RequestId> {
    RequestContext::of(ext)?.id.as_ref()
}

/// The request's [`ClientIdentity`], from its [`RequestContext`].
pub fn client(ext: &Extensions) -> Option<&ClientIdentity> {
    RequestContext::of(ext)?.client.as_ref()
}

/// The connection a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The listener's address.
    pub local_addr: SocketAddr,
    /// Whether the caller spoke TLS to the proxy.
    pub tls: bool,
}

/// The verified client certificate of a TLS connection (mTLS), as far as
/// client auth needs it. Present only when the caller sent a certificate that
/// chained to `proxy.tls.client_ca_file`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The leaf certificate's URI SANs (SPIFFE ids), in certificate order.
    pub uri_sans: Arc<[String]>,
}

/// The request id: the caller's `x-request-id` if it sent a sane one, else a
/// fresh UUID. Echoed on the response and forwarded upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub http::HeaderValue);

impl RequestId {
    /// The header carrying it.
    pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

    /// Takes the caller's id if it is short printable ASCII, else makes one.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        match headers.get(Self::HEADER) {
            Some(v)
                if !v.is_empty()
                    && v.len() <= 128
                    && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
            {
                Self(v.clone())
            }
            _ => Self::generate(),
        }
    }

    /// A new random id (a UUIDv4). Its bytes and their reference count
    /// are one allocation: the clones (the upstream header, the audit
    /// record) share it, where a `Vec`-backed value would allocate again
    /// at its first clone.
    pub fn generate() -> Self {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        Self(
            http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
                .unwrap_or(http::HeaderValue::from_static("invalid")),
        )
    }

    /// The id as text (empty if it is not UTF-8, which neither
    /// constructor makes).
    pub fn as_str(&self) -> &str {
        // Not `to_str` (which checks every byte for visible ASCII): both
        // constructors make printable ASCII, so UTF-8 is all there is to
        // check, and `from_utf8` does that a word at a time where it can.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or("")
    }
}

/// Who the caller is, once client auth ran. `None` inside: no token presented.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity(pub Option<Arc<str>>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_kept_or_generated() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", http::HeaderValue::from_static("abc-123"));
        assert_eq!(RequestId::from_headers(&h).as_str(), "abc-123");
        h.insert("x-request-id", http::HeaderValue::from_static("has space"));
        assert_eq!(RequestId::from_headers(&h).as_str().len(), 36);
        assert_ne!(RequestId::generate(), RequestId::generate());
    }

    #[test]
    fn a_generated_id_is_a_uuid_whose_clones_share_its_bytes() {
        let id = RequestId::generate();
        let parsed = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(id.as_str(), parsed.hyphenated().to_string());
        let copy = id.clone();
        assert_eq!(copy.0.as_bytes().as_ptr(), id.0.as_bytes().as_ptr());
    }
}
