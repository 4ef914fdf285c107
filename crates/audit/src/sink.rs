//! Where audit records go.
//!
//! - [`WriterSink`] (what `latchkey run` uses): the same JSON lines,
//!   appended straight to a [`BatchWriter`] (no `tracing` dispatch on the
//!   request path).
//! - [`TracingSink`] (the library default): one `tracing` event per
//!   record on the [`TARGET`] target, with the record's JSON in the
//!   `record` field, at a level that says how bad it is (see
//!   [`request_level`]), for embedders that route logs themselves;
//!   [`audit_layer`] is the `tracing-subscriber` layer that writes exactly
//!   those events as pure JSON lines.
//! - [`MemorySink`]: keeps parsed records, for tests and for embedding.
//!
//! A sink is called on the request's task when the response is ready, so
//! it must not block for long; the tracing route ends in whatever writer
//! the subscriber was given.

use crate::record::{Action, RefreshRecord, RequestRecord};
use crate::writer::BatchWriter;
use std::fmt;
use std::sync::Mutex;
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target audit records are emitted on.
pub const TARGET: &str = "latchkey::audit";

/// Receives every audit record.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// One request ended.
    fn request(&self, record: &RequestRecord<'_>);
    /// One credential refresh attempt ended.
    fn refresh(&self, record: &RefreshRecord<'_>);
}

/// Emits records as `tracing` events on [`TARGET`]; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink;

/// Appends every record as one JSON line to a [`BatchWriter`].
#[derive(Clone, Debug)]
pub struct WriterSink {
    writer: BatchWriter,
}

/// Keeps every record as parsed JSON (for tests and embedding).
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<serde_json::Value>>,
}

/// The level of a request record: `info` when the upstream answered 2xx or
/// 3xx; `warn` for a request the proxy refused (4xx), an upstream 4xx or
/// 5xx, and a caller that went away; `error` when the proxy itself failed
/// (5xx made by the proxy).
pub fn request_level(record: &RequestRecord<'_>) -> Level {
    match record.audit.action {
        Action::Allow if record.audit.status_code < 400 => Level::INFO,
        Action::Allow | Action::Reject | Action::ClientCancel => Level::WARN,
        Action::Error => Level::ERROR,
    }
}

/// The level of a refresh record: `info` when it worked, `warn` when not.
pub fn refresh_level(record: &RefreshRecord<'_>) -> Level {
    if record.result == "ok" {
        Level::INFO
    } else {
        Level::WARN
    }
}

// === impl TracingSink ===

/// Emits `$record` at `$level` (a constant: a callsite's level is static),
/// serialising it only if a subscriber wants that level on [`TARGET`].
macro_rules! emit {
    ($level:expr, $record:expr) => {
        if tracing::enabled!(target: TARGET, $level) {
            $record.with_json(|line| tracing::event!(target: TARGET, $level, record = %line));
        }
    };
}

fn emit_request(record: &RequestRecord<'_>) {
    match request_level(record) {
        Level::ERROR => emit!(Level::ERROR, record),
        Level::WARN => emit!(Level::WARN, record),
        _ => emit!(Level::INFO, record),
    }
}

fn emit_refresh(record: &RefreshRecord<'_>) {
    match refresh_level(record) {
        Level::WARN => emit!(Level::WARN, record),
        _ => emit!(Level::INFO, record),
    }
}

impl AuditSink for TracingSink {
    fn request(&self, record: &RequestRecord<'_>) {
        emit_request(record);
    }

    fn refresh(&self, record: &RefreshRecord<'_>) {
        emit_refresh(record);
    }
}

// === impl WriterSink ===

impl WriterSink {
    /// Writes to `writer` (see [`BatchWriter::spawn`]).
    pub fn new(writer: BatchWriter) -> Self {
        Self { writer }
    }
}

impl AuditSink for WriterSink {
    fn request(&self, record: &RequestRecord<'_>) {
        self.writer
            .append_with(|pending| record.write_json(pending));
    }

    fn refresh(&self, record: &RefreshRecord<'_>) {
        record.with_json(|line| self.writer.append_line(line.as_bytes()));
    }
}

// === impl MemorySink ===

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, line: &str) {
        // The line is always valid JSON; keep something if it ever is not.
        let v = serde_json::from_str(line).unwrap_or_else(|_| line.into());
        self.lock().push(v);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<serde_json::Value>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every record so far, in order.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.lock().clone()
    }

    /// The request records so far.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.of_kind("request")
    }

    /// The refresh records so far.
    pub fn refreshes(&self) -> Vec<serde_json::Value> {
        self.of_kind("refresh")
    }

    fn of_kind(&self, kind: &str) -> Vec<serde_json::Value> {
        self.lock()
            .iter()
            .filter(|v| v["kind"] == kind)
            .cloned()
            .collect()
    }

    /// Removes and returns every record so far.
    pub fn take(&self) -> Vec<serde_json::Value> {
        std::mem::take(&mut *self.lock())
    }
}

impl AuditSink for MemorySink {
    fn request(&self, record: &RequestRecord<'_>) {
        record.with_json(|line| self.push(line));
    }

    fn refresh(&self, record: &RefreshRecord<'_>) {
        record.with_json(|line| self.push(line));
    }
}

// === audit_layer ===

/// A `tracing-subscriber` layer that writes the audit records emitted by
/// [`TracingSink`] to `writer`, one raw JSON object per line and nothing
/// else: no timestamp prefix, no level, no other target.
///
/// Pair it with a filter that keeps [`TARGET`] out of the debug-log layer
/// (see `latchkey::cli::init_tracing`).
pub fn audit_layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .event_format(JsonLine)
        .with_writer(writer)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(TARGET, tracing_subscriber::filter::LevelFilter::TRACE),
        )
}

/// Formats an event as its `record` field, raw, plus a newline.
#[derive(Clone, Copy, Debug)]
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut visitor = RecordField {
            writer: &mut writer,
            result: Ok(()),
            found: false,
        };
        event.record(&mut visitor);
        visitor.result?;
        if visitor.found {
            writer.write_char('\n')
        } else {
            // Something else on the audit target: not a record; skip it
            // rather than break the JSON-lines stream.
            Ok(())
        }
    }
}

struct RecordField<'w, 'x> {
    writer: &'x mut Writer<'w>,
    result: fmt::Result,
    found: bool,
}

impl tracing::field::Visit for RecordField<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "record" && !self.found {
            self.found = true;
            self.result = self.writer.write_str(value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        // `record = %line` arrives here; its Debug is the line's Display.
        if field.name() == "record" && !self.found {
            self.found = true;
            self.result = write!(self.writer, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests;
