//! Failed TLS handshakes on the proxy listener: counted by reason
//! (`latchkey_tls_handshake_failures_total{reason}`) and logged, so an
//! operator rolling out mTLS sees the workloads it turns away (Envoy's
//! `ssl.no_certificate` and `ssl.fail_verify_*` counters).
//!
//! Reasons, a closed set:
//!
//! | reason | the handshake failed because |
//! | --- | --- |
//! | `no_client_certificate` | client certificates are required and the caller sent none |
//! | `client_certificate_expired` | the caller's certificate has expired (or is not yet valid) |
//! | `untrusted_client_certificate` | the caller's certificate does not chain to `client_ca_file`, or is otherwise invalid |
//! | `caller_rejected_certificate` | the caller refused latchkey's certificate (an alert such as `unknown_ca` or `bad_certificate`) |
//! | `no_common_protocol` | no TLS version, cipher suite or ALPN protocol both sides support |
//! | `protocol_error` | not TLS at all (plain HTTP to the TLS port) or a malformed handshake |
//! | `timeout` | the handshake took longer than 10 s |
//! | `connection_closed` | the caller closed or reset the connection first (TCP health checks, port scanners) |
//! | `other` | anything else |
//!
//! Each is logged at `warn` (at most once a minute per reason, with the
//! number of failures since the last line), except `connection_closed` and
//! `timeout`, which load balancers' TCP probes and idle scanners cause all
//! day: those are logged at `debug` only. No failure carries a secret: the
//! messages are rustls' and name certificates' problems, not their contents.

use rustls::{AlertDescription, CertificateError};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// How often each reason may be logged at `warn`.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a handshake that ended in `e` failed (see the module docs).
pub fn reason(e: &io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "connection_closed",
            io::ErrorKind::InvalidData => "protocol_error",
            _ => "other",
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "client_certificate_expired",
        rustls::Error::InvalidCertificate(_) => "untrusted_client_certificate",
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) => "caller_rejected_certificate",
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
            "no_common_protocol"
        }
        rustls::Error::AlertReceived(
            AlertDescription::ProtocolVersion
            | AlertDescription::HandshakeFailure
            | AlertDescription::InsufficientSecurity
            | AlertDescription::NoApplicationProtocol,
        ) => "no_common_protocol",
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::PeerMisbehaved(_) => "protocol_error",
        _ => "other",
    }
}

/// Counts and logs one failed handshake (`error`: none for a timeout).
pub fn record(remote_addr: SocketAddr, error: Option<&io::Error>) {
    let reason = error.map_or("timeout", reason);
    audit::metrics::record_tls_handshake_failure(reason);
    if matches!(reason, "connection_closed" | "timeout") {
        match error {
            Some(e) => tracing::debug!(%remote_addr, reason, error = %e, "TLS handshake failed"),
            None => tracing::debug!(%remote_addr, reason, "TLS handshake timed out"),
        }
        return;
    }
    if let Some(since_last) = due(reason) {
        let error = error.map(ToString::to_string).unwrap_or_default();
        tracing::warn!(
            %remote_addr,
            reason,
            %error,
            failures_since_last_line = since_last,
            "TLS handshake failed (logged at most once a minute per reason; \
             latchkey_tls_handshake_failures_total counts every one)"
        );
    }
}

/// Whether `reason` may be logged now; if so, how many failures of it
/// there were since its last line (this one included).
fn due(reason: &'static str) -> Option<u64> {
    static LAST: OnceLock<Mutex<HashMap<&'static str, (Instant, u64)>>> = OnceLock::new();
    let mut last = LAST
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match last.get_mut(reason) {
        Some((at, count)) if now.duration_since(*at) < LOG_EVERY => {
            *count += 1;
            None
        }
        Some((at, count)) => {
            let since = *count + 1;
            (*at, *count) = (now, 0);
            Some(since)
        }
        None => {
            last.insert(reason, (now, 0));
            Some(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn reasons_are_told_apart() {
        let cases = [
            (
                tls(rustls::Error::NoCertificatesPresented),
                "no_client_certificate",
            ),
            (
                tls(rustls::Error::InvalidCertificate(CertificateError::Expired)),
                "client_certificate_expired",
            ),
            (
                tls(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                "untrusted_client_certificate",
            ),
            (
                tls(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
                "caller_rejected_certificate",
            ),
            (
                tls(rustls::Error::NoApplicationProtocol),
                "no_common_protocol",
            ),
            (
                tls(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                "protocol_error",
            ),
            (
                io::Error::from(io::ErrorKind::UnexpectedEof),
                "connection_closed",
            ),
            (
                io::Error::from(io::ErrorKind::ConnectionReset),
                "connection_closed",
            ),
            (io::Error::other("something else"), "other"),
        ];
        for (e, expected) in cases {
            assert_eq!(reason(&e), expected, "{e:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_reason_is_logged_at_most_once_a_minute_with_the_count() {
        // A reason of its own: the limiter is process-wide.
        let r = "test_only_reason";
        assert_eq!(due(r), Some(1));
        assert_eq!(due(r), None);
        assert_eq!(due(r), None);
        tokio::time::advance(LOG_EVERY - Duration::from_secs(1)).await;
        assert_eq!(due(r), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        // The three held back, and this one.
        assert_eq!(due(r), Some(4));
        assert_eq!(due(r), None);
    }
}
