use super::{Health, describe, refuses_for_now};
use redis::{ErrorKind, RedisError, ServerErrorKind, make_extension_error};

/// A Redis that answers but cannot serve now counts as unavailable
/// (non-rotating credentials refresh locally; health says so); a
/// protocol or type error does not.
#[test]
fn refusals_are_unavailability_and_protocol_errors_are_not() {
    for kind in [
        ServerErrorKind::ReadOnly,
        ServerErrorKind::BusyLoading,
        ServerErrorKind::TryAgain,
        ServerErrorKind::ClusterDown,
        ServerErrorKind::MasterDown,
        ServerErrorKind::NoPerm,
    ] {
        let e = RedisError::from((ErrorKind::Server(kind), "refused"));
        assert!(refuses_for_now(&e), "{kind:?}");
    }
    for code in ["OOM", "BUSY", "MISCONF", "NOREPLICAS"] {
        let e = make_extension_error(code.into(), Some("x".into()));
        assert!(refuses_for_now(&e), "{code}");
    }
    for e in [
        RedisError::from((ErrorKind::UnexpectedReturnType, "type")),
        RedisError::from((ErrorKind::Parse, "parse")),
        RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "ERR")),
        RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "noscript")),
        make_extension_error("WRONGTYPE".into(), None),
    ] {
        assert!(!refuses_for_now(&e), "{e:?}");
    }
}

/// The command started last decides, whatever order they end in.
#[test]
fn health_is_the_outcome_of_the_command_started_last() {
    let h = Health::default();
    let release = h.begin();
    let lock = h.begin();
    h.end(lock, Err("redis lock: refused".into()));
    h.end(release, Ok(()));
    assert_eq!(h.get(), Err("redis lock: refused".into()));
    let next = h.begin();
    h.end(next, Ok(()));
    assert_eq!(h.get(), Ok(()));
}

/// An I/O failure says which (Redis down, a timeout, an address that does
/// not resolve), never the error's message.
#[test]
fn io_failures_say_which_without_the_message() {
    let io =
        |kind, msg: &str| describe(&RedisError::from(std::io::Error::new(kind, msg.to_owned())));
    let refused = io(std::io::ErrorKind::ConnectionRefused, "redis://:hunter2@h");
    let timed_out = io(std::io::ErrorKind::TimedOut, "hunter2");
    let other = io(std::io::ErrorKind::Other, "failed to lookup hunter2");
    assert!(refused.contains("connection refused"), "{refused}");
    assert!(timed_out.contains("timed out"), "{timed_out}");
    assert!(refused != other && timed_out != other, "{other}");
    for shown in [refused, timed_out, other] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
