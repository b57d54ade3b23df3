//! Time as the mesh sees it: an opaque millisecond counter supplied by the caller.
//!
//! The mesh never reads a clock. Every entry point that can depend on time takes a
//! [`Millis`] value: milliseconds since an epoch of the driver's choosing (process
//! start, `Instant` at boot, or zero in a simulation). Only differences between
//! values matter, so the driver may use any monotonic source.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time: milliseconds since an arbitrary, driver-chosen epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// The epoch itself.
    pub const ZERO: Millis = Millis(0);

    /// Builds a time from a number of milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Millis(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The time elapsed since `earlier`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The time until `later`, or zero if `later` has passed.
    pub fn until(self, later: Millis) -> Duration {
        later.saturating_duration_since(self)
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Millis {
    type Output = Millis;
    fn add(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(duration_ms(d)))
    }
}

impl AddAssign<Duration> for Millis {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Millis {
    type Output = Millis;
    fn sub(self, d: Duration) -> Millis {
        Millis(self.0.saturating_sub(duration_ms(d)))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Millis(1500);
        assert_eq!(t + Duration::from_secs(2), Millis(3500));
        assert_eq!(t - Duration::from_secs(2), Millis(0));
        assert_eq!(Millis(u64::MAX) + Duration::from_secs(1), Millis(u64::MAX));
        assert_eq!(
            Millis(3500).saturating_duration_since(t),
            Duration::from_secs(2)
        );
        assert_eq!(t.saturating_duration_since(Millis(3500)), Duration::ZERO);
        assert_eq!(t.until(Millis(2000)), Duration::from_millis(500));
        assert_eq!(t.to_string(), "1.500s");
    }
}
