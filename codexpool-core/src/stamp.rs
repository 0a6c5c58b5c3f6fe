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

    /// The time, if it moved since it was last marked flushed.
    pub fn dirty(&self) -> Option<Timestamp> {
        let v = self.at.load(Ordering::Relaxed);
        (v != NONE && v > self.flushed.load(Ordering::Relaxed)).then(|| Timestamp::from_millis(v))
    }

    /// Notes that `t` is in the store. Called only once the write succeeded, so a failed write
    /// leaves the stamp dirty for the next flush.
    pub fn mark_flushed(&self, t: Timestamp) {
        self.flushed.fetch_max(t.as_millis(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_stays_dirty_until_marked_flushed() {
        let s = Stamp::new(None);
        assert_eq!(s.dirty(), None);
        s.touch(Timestamp::from_millis(5));
        assert_eq!(s.dirty(), Some(Timestamp::from_millis(5)));
        assert_eq!(
            s.dirty(),
            Some(Timestamp::from_millis(5)),
            "looking is not flushing"
        );
        s.mark_flushed(Timestamp::from_millis(5));
        assert_eq!(s.dirty(), None);
        s.touch(Timestamp::from_millis(9));
        // A slower flush of an older time does not hide the newer one.
        s.mark_flushed(Timestamp::from_millis(7));
        assert_eq!(s.dirty(), Some(Timestamp::from_millis(9)));
    }
}
