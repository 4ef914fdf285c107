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
    /// How long dropping the [`BatchGuard`] waits for the pending records
    /// to be written (default 10 s). An output that takes none (a pipe
    /// whose reader stopped) must not keep the process from exiting: past
    /// this, what is left is reported on standard error and dropped.
    pub close_timeout: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(50),
            flush_at: 64 << 10,
            max_pending: 16 << 20,
            close_timeout: Duration::from_secs(10),
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
    /// Wakes the guard's drop once the writer thread has finished.
    done: Condvar,
    opts: BatchOptions,
}

#[derive(Debug, Default)]
struct State {
    pending: Vec<u8>,
    /// The writer thread waits with no deadline (nothing was pending).
    idle: bool,
    closed: bool,
    /// The writer thread has ended, or the guard stopped waiting for it
    /// (`close_timeout`): a record appended now is not written.
    finished: bool,
    /// Records appended after the writer thread ended.
    lost: u64,
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
            done: Condvar::new(),
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
        while state.pending.len() >= shared.opts.max_pending && !state.closed && !state.finished {
            state = shared.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.finished {
            // After the guard was dropped (a refresh that ended on a
            // thread outliving the runtime): nothing would write it.
            state.lost += 1;
            if state.lost.is_power_of_two() {
                eprintln!(
                    "latchkey: {} audit record(s) came after the audit output was closed and were not written",
                    state.lost
                );
            }
            return;
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
    fn run<W: Write>(&self, output: W) {
        // However the loop ends (a panic in the output's `write` too).
        struct Finished<'a>(&'a Shared);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.lock().finished = true;
                self.0.done.notify_all();
                self.0.room.notify_all();
            }
        }
        let _finished = Finished(self);
        self.write_until_closed(output);
    }

    fn write_until_closed<W: Write>(&self, mut output: W) {
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
    /// Writes what is pending, waiting at most
    /// [`BatchOptions::close_timeout`] for the output to take it.
    fn drop(&mut self) {
        let shared = &*self.shared;
        let mut state = shared.lock();
        state.closed = true;
        shared.writer.notify_one();
        shared.room.notify_all();
        let (state, waited) = shared
            .done
            .wait_timeout_while(state, shared.opts.close_timeout, |s| !s.finished)
            .unwrap_or_else(|p| p.into_inner());
        let mut state = state;
        if waited.timed_out() && !state.finished {
            // What comes now would never be written either.
            state.finished = true;
            eprintln!(
                "latchkey: the audit output took no records for {}s (a pipe nobody reads? a hung disk?); exiting without the last ones ({} bytes pending, and the batch being written)",
                shared.opts.close_timeout.as_secs(),
                state.pending.len()
            );
            // The writer thread is left to the process's exit.
            return;
        }
        drop(state);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
