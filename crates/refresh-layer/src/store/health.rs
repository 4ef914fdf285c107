//! A shared store's health, as its operations find it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The outcome of the operation started last. One that started before
/// another but ended after it (a lock release still in flight when Redis
/// went down, a lock wait running out while a later load already
/// succeeded) does not overwrite what the later one found.
#[derive(Debug)]
pub(super) struct Health {
    started: AtomicU64,
    /// The sequence number of the operation that set the result, and it.
    last: Mutex<(u64, Result<(), String>)>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            started: AtomicU64::new(0),
            last: Mutex::new((0, Ok(()))),
        }
    }
}

impl Health {
    /// An operation starts: its sequence number.
    pub(super) fn begin(&self) -> u64 {
        self.started.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Operation `seq` ended with `result`.
    pub(super) fn end(&self, seq: u64, result: Result<(), String>) {
        if let Ok(mut last) = self.last.lock()
            && seq >= last.0
        {
            *last = (seq, result);
        }
    }

    /// What the operation started last found.
    pub(super) fn get(&self) -> Result<(), String> {
        self.last.lock().map_or(Ok(()), |l| l.1.clone())
    }
}
