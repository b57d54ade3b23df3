//! Replay protection for encrypted sleeve packets, one window per channel
//! (DF and non-DF have separate sequence spaces).
//!
//! Sequence numbers are split into a window number (`seq >> 20`) and an
//! offset within the window (2^20 sequence numbers per window, Weave's
//! `WindowSize = 20`). The receiver remembers which offsets it has accepted
//! in the current window and in the previous one: anything in an older window
//! is refused, and so is a sequence number already accepted. A packet from a
//! later window moves the window forward (the old current window becomes the
//! previous one; a jump of two or more windows forgets both).
//!
//! The bitsets grow with the highest offset seen (at most 128 KiB each) and
//! are reused when the window moves, so steady traffic allocates nothing.
//!
//! Use [`ReplayWindow::check`] before opening a packet (cheap rejection) and
//! [`ReplayWindow::accept`] once it authenticated: a forged packet must never
//! move the window.

/// Bits of the offset within a window.
pub const WINDOW_BITS: u32 = 20;
/// Sequence numbers per window.
pub const WINDOW_SIZE: u64 = 1 << WINDOW_BITS;

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The sequence number was already accepted.
    #[error("duplicate sleeve packet (sequence number {0} already received): replay or network duplication, dropped")]
    Duplicate(u64),
    /// The sequence number is older than the previous window.
    #[error(
        "sleeve packet with sequence number {0} is too old (older than the replay window), dropped"
    )]
    TooOld(u64),
}

#[derive(Debug, Clone, Default)]
struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    fn contains(&self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        self.words.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    fn insert(&mut self, i: u64) {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << b;
    }

    fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
}

/// The sliding replay window of one sleeve channel.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// The current window number, once anything was accepted.
    current: Option<u64>,
    used: BitSet,
    previous_used: BitSet,
}

enum Slot {
    Current,
    Previous,
    Advance,
}

impl ReplayWindow {
    /// An empty window: any first sequence number is accepted.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, seq: u64) -> Result<Slot, ReplayError> {
        let window = seq >> WINDOW_BITS;
        let offset = seq & (WINDOW_SIZE - 1);
        let Some(current) = self.current else {
            return Ok(Slot::Advance);
        };
        if window > current {
            Ok(Slot::Advance)
        } else if window == current {
            if self.used.contains(offset) {
                Err(ReplayError::Duplicate(seq))
            } else {
                Ok(Slot::Current)
            }
        } else if window + 1 == current {
            if self.previous_used.contains(offset) {
                Err(ReplayError::Duplicate(seq))
            } else {
                Ok(Slot::Previous)
            }
        } else {
            Err(ReplayError::TooOld(seq))
        }
    }

    /// Whether `seq` would be accepted, without recording it.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        self.slot(seq).map(|_| ())
    }

    /// Records `seq` as received (call after the packet authenticated);
    /// fails, changing nothing, if it is a duplicate or too old.
    pub fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
        let window = seq >> WINDOW_BITS;
        let offset = seq & (WINDOW_SIZE - 1);
        match self.slot(seq)? {
            Slot::Current => self.used.insert(offset),
            Slot::Previous => self.previous_used.insert(offset),
            Slot::Advance => {
                let adjacent = self.current.is_some_and(|c| c + 1 == window);
                std::mem::swap(&mut self.used, &mut self.previous_used);
                self.used.clear();
                if !adjacent {
                    self.previous_used.clear();
                }
                self.current = Some(window);
                self.used.insert(offset);
            }
        }
        Ok(())
    }

    /// The current window number, if anything was accepted yet.
    pub fn current_window(&self) -> Option<u64> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_out_of_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        for s in [0, 1, 2, 5, 4, 3] {
            w.accept(s).unwrap();
        }
        for s in [0, 3, 5] {
            assert_eq!(w.check(s), Err(ReplayError::Duplicate(s)));
            assert_eq!(w.accept(s), Err(ReplayError::Duplicate(s)));
        }
        assert_eq!(w.check(6), Ok(()));
        // check() does not record.
        assert_eq!(w.check(6), Ok(()));
        w.accept(6).unwrap();
        assert_eq!(w.check(6), Err(ReplayError::Duplicate(6)));
    }

    #[test]
    fn first_packet_can_be_anywhere() {
        let mut w = ReplayWindow::new();
        w.accept(5 * WINDOW_SIZE + 17).unwrap();
        assert_eq!(w.current_window(), Some(5));
        // The previous window is open but empty.
        w.accept(4 * WINDOW_SIZE + 17).unwrap();
        assert_eq!(
            w.accept(3 * WINDOW_SIZE),
            Err(ReplayError::TooOld(3 * WINDOW_SIZE))
        );
    }

    #[test]
    fn advancing_one_window_keeps_the_previous() {
        let mut w = ReplayWindow::new();
        w.accept(10).unwrap();
        w.accept(WINDOW_SIZE - 1).unwrap();
        w.accept(WINDOW_SIZE + 3).unwrap();
        assert_eq!(w.current_window(), Some(1));
        // Late packets from window 0 are still accepted once.
        w.accept(11).unwrap();
        assert_eq!(w.accept(10), Err(ReplayError::Duplicate(10)));
        assert_eq!(
            w.accept(WINDOW_SIZE - 1),
            Err(ReplayError::Duplicate(WINDOW_SIZE - 1))
        );
        // Offsets in window 1 are tracked separately from window 0.
        w.accept(WINDOW_SIZE + 10).unwrap();
        assert_eq!(
            w.accept(WINDOW_SIZE + 3),
            Err(ReplayError::Duplicate(WINDOW_SIZE + 3))
        );
        // Moving to window 2 drops window 0 entirely.
        w.accept(2 * WINDOW_SIZE).unwrap();
        assert_eq!(w.accept(12), Err(ReplayError::TooOld(12)));
        assert_eq!(
            w.accept(WINDOW_SIZE + 10),
            Err(ReplayError::Duplicate(WINDOW_SIZE + 10))
        );
        w.accept(WINDOW_SIZE + 11).unwrap();
    }

    #[test]
    fn jumping_windows_forgets_both() {
        let mut w = ReplayWindow::new();
        w.accept(7).unwrap();
        w.accept(WINDOW_SIZE + 7).unwrap();
        w.accept(3 * WINDOW_SIZE + 7).unwrap();
        assert_eq!(w.current_window(), Some(3));
        // Window 2 is now "previous" and empty: offset 7 there was never seen.
        w.accept(2 * WINDOW_SIZE + 7).unwrap();
        assert_eq!(
            w.accept(WINDOW_SIZE + 8),
            Err(ReplayError::TooOld(WINDOW_SIZE + 8))
        );
    }

    #[test]
    fn top_of_the_sequence_space() {
        let mut w = ReplayWindow::new();
        let top = (1u64 << 63) - 1;
        w.accept(top).unwrap();
        assert_eq!(w.accept(top), Err(ReplayError::Duplicate(top)));
        w.accept(top - 1).unwrap();
    }

    proptest! {
        /// Against a model that remembers everything: accepted numbers are
        /// never accepted again, and a fresh number in the current window is
        /// always accepted.
        #[test]
        fn never_accepts_twice(seqs in proptest::collection::vec(0u64..(4 * WINDOW_SIZE), 1..300)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::HashSet::new();
            for s in seqs {
                let fresh = !seen.contains(&s);
                let in_current = w.current_window().is_none_or(|c| s >> WINDOW_BITS >= c);
                match w.accept(s) {
                    Ok(()) => prop_assert!(fresh, "accepted {} twice", s),
                    Err(_) => prop_assert!(!fresh || !in_current, "refused fresh {} in window", s),
                }
                seen.insert(s);
            }
        }
    }
}
