//! Serialising records: one line of JSON into a reused per-thread buffer,
//! and the time stamp and address formats.

use serde::{Serialize, Serializer};
use std::cell::RefCell;
use std::time::SystemTime;

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

pub(super) fn with_json<T: Serialize, R>(value: &T, f: impl FnOnce(&str) -> R) -> R {
    with_buf(
        |buf| {
            if serde_json::to_writer(&mut *buf, value).is_err() {
                // Not reachable with these types (no maps, no fallible
                // Serialize impls); still say that something happened.
                buf.clear();
                buf.extend_from_slice(br#"{"kind":"unserialisable"}"#);
            }
        },
        // serde_json writes valid UTF-8.
        |b| f(std::str::from_utf8(b).unwrap_or("{}")),
    )
}

/// Calls `f` with what `fill` wrote into a reused per-thread buffer.
pub(super) fn with_buf<R>(fill: impl FnOnce(&mut Vec<u8>), f: impl FnOnce(&[u8]) -> R) -> R {
    // Borrow the buffer by taking it out, so a sink that writes another
    // record from inside `f` (or a thread-local being torn down) only costs
    // a fresh allocation, never a panic.
    let mut buf = BUF
        .try_with(|c| c.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    buf.clear();
    fill(&mut buf);
    let out = f(&buf);
    // Do not hold on to the memory of one huge record forever.
    if buf.capacity() <= 64 * 1024 {
        let _ = BUF.try_with(|c| {
            if let Ok(mut b) = c.try_borrow_mut() {
                *b = buf;
            }
        });
    }
    out
}

pub(super) fn ser_ts<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

pub(super) fn ser_opt_ts<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_ts(t, s),
        None => s.serialize_none(),
    }
}

pub(super) fn ser_opt_display<S: Serializer, T: std::fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}
