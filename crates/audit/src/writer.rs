//! [`BatchWriter`]: the audit output's writer, off the request path.
//!
//! A request appends its audit line to a shared buffer (one short mutex
//! hold; the request record is formatted straight into it) and goes on; one writer thread hands the buffer to
//! the real output (a file, standard output) in batches:
//!
//! - under load it writes every [`BatchOptions::interval`] (or sooner, once
//!   [`BatchOptions::flush_at`] bytes are pending): one `write(2)` for
//!   hundreds of records, and no wake-up, channel send or context switch per
//!   request;
//! - when the proxy was quiet, the first record wakes the writer at once, so
//!   a quiet proxy's records reach the file immediately;
//! - it loses nothing: past [`BatchOptions::max_pending`] bytes (a stuck
//!   pipe, a full disk) requests wait for the writer rather than drop
//!   records, and dropping the [`BatchGuard`] writes everything pending.
//!
//! `tracing-appender`'s non-blocking writer was used before this: it sends
//! each line through a channel and wakes its thread for it, which cost about
//! a futex wake, a context switch and a `write(2)` per request.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How [`BatchWriter`] batches; the defaults suit an audit log.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// The longest a record waits while the proxy is busy (default 50 ms).
    pub interval: Duration,
    /// Write as soon as this many bytes are pending (default 64 KiB: at
    /// 15,000 records/s, ~150 writes a second; the two buffers stay small,
    /// ~256 KiB together, where 256 KiB batches made them ~1 MiB of RSS).
    pub flush_at: usize,
    /// Requests wait once this many bytes are pending (default 16 MiB).
    pub max_pending: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(50),
            flush_at: 64 << 10,
            max_pending: 16 << 20,
        }
    }
}

/// The writing end: cheap to clone; see [`BatchWriter::append_line`].
#[derive(Clone, Debug)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Owns the writer thread; dropping it writes every pending record and
/// waits for the thread. Keep it until the process exits.
#[must_use = "dropping the guard stops the audit writer"]
#[derive(Debug)]
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread (quiet -> busy, `flush_at` reached, closed).
    writer: Condvar,
    /// Wakes requests waiting for room (`max_pending`).
    room: Condvar,
    opts: BatchOptions,
}

#[derive(Debug, Default)]
struct State {
    pending: Vec<u8>,
    /// The writer thread waits with no deadline (nothing was pending).
    idle: bool,
    closed: bool,
}

impl BatchWriter {
    /// Starts the writer thread (named `name`) over `output`.
    pub fn spawn<W>(
        output: W,
        name: &str,
        opts: BatchOptions,
    ) -> io::Result<(BatchWriter, BatchGuard)>
    where
        W: Write + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            writer: Condvar::new(),
            room: Condvar::new(),
            opts,
        });
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
            let shared = shared.clone();
            move || shared.run(output)
        })?;
        let guard = BatchGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        Ok((BatchWriter { shared }, guard))
    }

    /// Appends `line` and a newline, as one unit (waiting for room past
    /// `max_pending`).
    pub fn append_line(&self, line: &[u8]) {
        self.append_with(|pending| pending.extend_from_slice(line));
    }

    /// Appends what `fill` writes, and a newline, as one unit (waiting for
    /// room past `max_pending`): `fill` writes straight into the pending
    /// batch, under the lock, so a record formatted here is not copied
    /// again. `fill` must only append. If it panics, what it wrote is
    /// taken back: no partial line is ever written out.
    pub fn append_with(&self, fill: impl FnOnce(&mut Vec<u8>)) {
        let shared = &*self.shared;
        let mut state = shared.lock();
        while state.pending.len() >= shared.opts.max_pending && !state.closed {
            state = shared.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let before = state.pending.len();
        let mut line = Unwind {
            pending: &mut state.pending,
            before,
            done: false,
        };
        fill(line.pending);
        line.pending.push(b'\n');
        line.done = true;
        drop(line);
        let filled = before < shared.opts.flush_at && state.pending.len() >= shared.opts.flush_at;
        if state.idle || filled {
            state.idle = false;
            drop(state);
            shared.writer.notify_one();
        }
    }
}

/// Truncates the pending batch back to `before` if dropped before the
/// line was done: `fill` panicked (see [`BatchWriter::append_with`]). Not
/// `std::thread::panicking()`: a record written while another panic
/// unwinds (the audit layer records a panicking request from its drop
/// guard) is complete and kept.
struct Unwind<'a> {
    pending: &'a mut Vec<u8>,
    before: usize,
    done: bool,
}

impl Drop for Unwind<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.pending.truncate(self.before);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Appending bytes cannot leave the state half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: wait (briefly when busy, indefinitely when quiet),
    /// take the batch, write it, repeat until closed and drained.
    fn run<W: Write>(&self, mut output: W) {
        let mut batch = Vec::new();
        let mut failures = 0_u64;
        // A write failed mid-record and its line is not ended yet.
        let mut mid_line = false;
        // Whether the last round wrote something (the proxy is busy).
        let mut busy = false;
        loop {
            let mut state = self.lock();
            if busy {
                // Let the batch fill for up to one interval.
                let (s, _) = self
                    .writer
                    .wait_timeout_while(state, self.opts.interval, |s| {
                        !s.closed && s.pending.len() < self.opts.flush_at
                    })
                    .unwrap_or_else(|p| p.into_inner());
                state = s;
            } else {
                // Quiet: sleep until a record arrives (its writer wakes us),
                // then write it at once.
                state.idle = true;
                while state.pending.is_empty() && !state.closed {
                    state = self.writer.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                state.idle = false;
            }
            std::mem::swap(&mut state.pending, &mut batch);
            let closed = state.closed;
            let was_full = batch.len() >= self.opts.max_pending;
            drop(state);
            busy = !batch.is_empty();
            if was_full {
                self.room.notify_all();
            }
            if !batch.is_empty() {
                if let Err(e) = write_batch(&mut output, &batch, &mut mid_line) {
                    // The rest of the batch is gone (there is nowhere else
                    // to keep it without stopping every request); say so,
                    // not per batch.
                    failures += 1;
                    if failures.is_power_of_two() {
                        eprintln!(
                            "latchkey: cannot write audit records ({failures} failed batches so far): {e}"
                        );
                    }
                }
                batch.clear();
                // Keep a batch-sized buffer, not one sized by a past burst.
                batch.shrink_to(self.opts.flush_at * 2);
            }
            if closed && self.lock().pending.is_empty() {
                return;
            }
        }
    }
}

/// Writes `batch` (whole lines) to `output`, waiting out `WouldBlock` (a
/// non-blocking stdout that is full: records wait, as on a blocking one).
/// On any other error the rest of the batch is dropped, but never half a
/// line: a record cut short is ended with a newline, so the next batch's
/// first record starts a line of its own instead of being glued to the
/// fragment (and lost to every JSON-lines reader with it). While that
/// newline cannot be written either (a disk still full), `mid_line` stays
/// set and the next batch is written only after it.
fn write_batch<W: Write>(output: &mut W, batch: &[u8], mid_line: &mut bool) -> io::Result<()> {
    if *mid_line {
        write_counting(output, b"\n").1?;
        *mid_line = false;
    }
    let (written, result) = write_counting(output, batch);
    let result = result.and_then(|()| output.flush());
    if result.is_err() && written > 0 && batch.get(written - 1) != Some(&b'\n') {
        *mid_line = write_counting(output, b"\n").1.is_err();
    }
    result
}

/// Writes all of `bytes` unless an error other than `Interrupted` or
/// `WouldBlock` stops it: how many were written, and that error.
fn write_counting<W: Write>(output: &mut W, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut written = 0;
    loop {
        let Some(rest) = bytes.get(written..).filter(|r| !r.is_empty()) else {
            return (written, Ok(()));
        };
        match output.write(rest) {
            Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return (written, Err(e)),
        }
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.writer.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read (and wait on) while the writer owns it:
    /// the bytes written and the number of `write` calls.
    #[derive(Clone, Default)]
    struct Output(Arc<Written>);

    #[derive(Default)]
    struct Written {
        bytes_and_writes: Mutex<(Vec<u8>, usize)>,
        changed: Condvar,
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut g = self.0.bytes_and_writes.lock().unwrap();
            g.0.extend_from_slice(buf);
            g.1 += 1;
            self.0.changed.notify_all();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Output {
        fn text(&self) -> String {
            String::from_utf8(self.0.bytes_and_writes.lock().unwrap().0.clone()).unwrap()
        }
        fn writes(&self) -> usize {
            self.0.bytes_and_writes.lock().unwrap().1
        }
        /// Waits for the writer's next writes until `f` holds. The deadline
        /// only turns a hang into a failure; nothing depends on speed.
        fn wait_for(&self, f: impl Fn(&str) -> bool) {
            let g = self.0.bytes_and_writes.lock().unwrap();
            let (g, _) = self
                .0
                .changed
                .wait_timeout_while(g, Duration::from_secs(30), |g| {
                    !f(std::str::from_utf8(&g.0).unwrap())
                })
                .unwrap();
            assert!(
                f(std::str::from_utf8(&g.0).unwrap()),
                "output never matched: {:?}",
                g.0
            );
        }
    }

    /// Options under which nothing is written before the guard is dropped
    /// (the first record of a quiet writer aside).
    fn only_when_dropped() -> BatchOptions {
        BatchOptions {
            interval: Duration::from_secs(3600),
            flush_at: 1 << 30,
            max_pending: 1 << 30,
        }
    }

    #[test]
    fn a_quiet_writers_first_record_is_written_at_once() {
        let out = Output::default();
        let opts = BatchOptions {
            // A record must not wait for this.
            interval: Duration::from_secs(3600),
            ..BatchOptions::default()
        };
        let (w, guard) = BatchWriter::spawn(out.clone(), "t", opts).unwrap();
        w.append_line(b"one");
        out.wait_for(|t| t == "one\n");
        drop(guard);
    }

    #[test]
    fn dropping_the_guard_writes_everything_in_order() {
        let out = Output::default();
        let opts = only_when_dropped();
        let (w, guard) = BatchWriter::spawn(out.clone(), "t", opts).unwrap();
        let mut expected = String::new();
        for i in 0..10_000 {
            let line = i.to_string();
            w.append_line(line.as_bytes());
            expected.push_str(&line);
            expected.push('\n');
        }
        drop(guard);
        assert_eq!(out.text(), expected);
        // Batched: far fewer writes than records.
        assert!(out.writes() < 100, "{} writes", out.writes());
    }

    #[test]
    fn a_record_whose_formatting_panics_leaves_no_partial_line() {
        let out = Output::default();
        let opts = only_when_dropped();
        let (w, guard) = BatchWriter::spawn(out.clone(), "t", opts).unwrap();
        w.append_with(|b| b.extend_from_slice(b"{\"n\":1}"));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            w.append_with(|b| {
                b.extend_from_slice(b"{\"n\":");
                panic!("formatting failed half way");
            });
        }));
        assert!(panicked.is_err());
        // The writer goes on (the lock's poison is ignored), after the
        // complete line and without the half one.
        w.append_with(|b| b.extend_from_slice(b"{\"n\":3}"));
        // A record written while another panic unwinds (as the audit layer
        // records a panicking request) is kept whole.
        struct WritesOnDrop(BatchWriter);
        impl Drop for WritesOnDrop {
            fn drop(&mut self) {
                self.0.append_with(|b| b.extend_from_slice(b"{\"n\":4}"));
            }
        }
        let unwinding = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _record = WritesOnDrop(w.clone());
            panic!("a request panicked");
        }));
        assert!(unwinding.is_err());
        drop(guard);
        assert_eq!(out.text(), "{\"n\":1}\n{\"n\":3}\n{\"n\":4}\n");
    }

    #[test]
    fn many_threads_lose_nothing_even_past_max_pending() {
        let out = Output::default();
        let opts = BatchOptions {
            interval: Duration::from_millis(1),
            flush_at: 64,
            // Tiny: appenders must wait for the writer, not drop lines.
            max_pending: 128,
        };
        let (w, guard) = BatchWriter::spawn(out.clone(), "t", opts).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        w.append_line(format!("{t}-{i}").as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = out.text();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8000);
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 8000, "every line exactly once");
        // Each thread's lines stay in its order.
        for t in 0..4 {
            let prefix = format!("{t}-");
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&prefix)?.parse().ok())
                .collect();
            assert_eq!(mine, (0..2000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_failing_output_does_not_stop_the_writer() {
        struct Failing;
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (w, guard) = BatchWriter::spawn(Failing, "t", BatchOptions::default()).unwrap();
        for _ in 0..100 {
            w.append_line(b"x");
        }
        // Returns: the writer kept going and exits on close.
        drop(guard);
    }

    /// A disk: accepts `budget` bytes, then fails the next `full_for`
    /// writes (`ENOSPC`), then accepts everything; `WouldBlock` first on
    /// the first `would_block` writes.
    struct FailsOnceMidBatch {
        out: Arc<Mutex<Vec<u8>>>,
        budget: usize,
        full_for: usize,
        would_block: usize,
    }

    impl Write for FailsOnceMidBatch {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.would_block > 0 {
                self.would_block -= 1;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = if self.full_for == 0 {
                buf.len()
            } else {
                buf.len().min(self.budget)
            };
            if n == 0 {
                self.full_for -= 1;
                return Err(io::Error::from_raw_os_error(28));
            }
            self.budget -= n.min(self.budget);
            self.out.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The disk fills mid-record and stays full for one write (the rest of
    /// the batch), or for two (the newline that ends the fragment too):
    /// either way the next record starts a line of its own.
    #[test]
    fn a_failed_write_never_glues_half_a_record_to_the_next() {
        for full_for in [1, 2] {
            a_full_disk_cuts_one_record(full_for);
        }
    }

    fn a_full_disk_cuts_one_record(full_for: usize) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = FailsOnceMidBatch {
            out: out.clone(),
            budget: 20,
            full_for,
            would_block: 0,
        };
        let (w, guard) = BatchWriter::spawn(sink, "t", only_when_dropped()).unwrap();
        // A quiet writer writes its first record at once: cut after 20 bytes.
        w.append_line(br#"{"kind":"request","n":1}"#);
        let cut = || out.lock().unwrap().len() >= 20;
        for _ in 0..30_000 {
            if cut() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(cut(), "the first record was never written");
        w.append_line(br#"{"kind":"request","n":2}"#);
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text, "{\"kind\":\"request\",\"n\n{\"kind\":\"request\",\"n\":2}\n",
            "full for {full_for} writes"
        );
    }

    #[test]
    fn a_full_non_blocking_output_is_waited_for_not_dropped() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = FailsOnceMidBatch {
            out: out.clone(),
            budget: usize::MAX,
            full_for: 0,
            would_block: 3,
        };
        let (w, guard) = BatchWriter::spawn(sink, "t", only_when_dropped()).unwrap();
        w.append_line(b"one");
        w.append_line(b"two");
        drop(guard);
        assert_eq!(
            String::from_utf8(out.lock().unwrap().clone()).unwrap(),
            "one\ntwo\n"
        );
    }
}
