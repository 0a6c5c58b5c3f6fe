//! `Stamp`: a last-used time updated on every request without a lock or a database write; the
//! pool's maintenance task persists the stamps that moved since the last flush.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::time::Timestamp;

const NONE: i64 = i64::MIN;

pub(crate) struct Stamp {
    at: AtomicI64,
    flushed: AtomicI64,
}

impl Stamp {
    pub fn new(initial: Option<Timestamp>) -> Self {
        let v = initial.map_or(NONE, Timestamp::as_millis);
        Self {
            at: AtomicI64::new(v),
            flushed: AtomicI64::new(v),
        }
    }

    pub fn touch(&self, now: Timestamp) {
        self.at.fetch_max(now.as_millis(), Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Timestamp> {
        let v = self.at.load(Ordering::Relaxed);
        (v != NONE).then(|| Timestamp::from_millis(v))
    }

    /// The time, if it moved since the last call.
    pub fn take_dirty(&self) -> Option<Timestamp> {
        let v = self.at.load(Ordering::Relaxed);
        let old = self.flushed.swap(v, Ordering::Relaxed);
        (v != NONE && v > old).then(|| Timestamp::from_millis(v))
    }
}
