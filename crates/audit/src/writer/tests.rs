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
        ..BatchOptions::default()
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
        ..BatchOptions::default()
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

/// An output that takes nothing: every `write` blocks until the test ends.
struct Stuck(std::sync::mpsc::Receiver<()>);

impl Write for Stuck {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        let _ = self.0.recv();
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An output that takes no records (a pipe whose reader stopped) does not
/// keep the guard's drop, and with it the process's exit, waiting for
/// ever: it gives up after `close_timeout`. A record appended once the
/// writer has ended is reported, not silently kept where nothing writes it.
#[test]
fn closing_is_bounded_and_late_records_are_not_kept() {
    let (unblock, blocked) = std::sync::mpsc::channel();
    let opts = BatchOptions {
        close_timeout: Duration::from_millis(200),
        ..BatchOptions::default()
    };
    let (w, guard) = BatchWriter::spawn(Stuck(blocked), "t", opts).unwrap();
    w.append_line(b"one");
    // Returns although the writer is still stuck in its `write` (which
    // the test lets go only at its end).
    drop(guard);
    // Nothing will write what comes now: counted, not kept.
    w.append_line(b"late");
    let shared = w.shared.clone();
    let state = shared.lock();
    assert_eq!(state.lost, 1);
    assert!(!String::from_utf8_lossy(&state.pending).contains("late"));
    drop(state);
    drop(unblock);
}
