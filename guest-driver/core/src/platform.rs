//! What the core needs from the world it runs in: a monotonic clock and a
//! way to wait. User space reads `std::time::Instant` and spins, yields,
//! then sleeps; the kernel reads its own clock and spins with `cpu_relax`
//! (it must not sleep where it holds a spinlock or runs in softirq).

use core::time::Duration;

/// A point on the caller's monotonic clock: the time since an origin of
/// the caller's choosing (boot, process start). Only differences between
/// two instants of one clock mean anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(Duration);

impl Instant {
    /// The instant `since_origin` after the clock's origin.
    pub const fn from_origin(since_origin: Duration) -> Self {
        Instant(since_origin)
    }

    /// The time since the clock's origin.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// Time from `earlier` to `self`, zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self` plus `d`, the latest representable instant on overflow.
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d))
    }
}

/// The caller's clock and waiting, passed to the calls that watch time.
pub trait Platform {
    /// Now, on a monotonic clock.
    fn now(&self) -> Instant;

    /// Called between two looks at a word another node must change (the
    /// lock's turn, say). `round` counts the calls of one wait from 0, so
    /// an implementation can spin first and back off later.
    fn pause(&self, round: u32);

    /// Waits about `duration`, in a context that may sleep (attaching).
    fn sleep(&self, duration: Duration);
}

#[cfg(test)]
pub(crate) mod testing {
    //! The host's clock, for the unit tests.

    use super::{Duration, Instant, Platform};

    /// `std`'s clock and thread; what the user-space driver uses too.
    #[derive(Debug)]
    pub(crate) struct Host(std::time::Instant);

    impl Host {
        pub(crate) fn new() -> Self {
            Host(std::time::Instant::now())
        }
    }

    impl Platform for Host {
        fn now(&self) -> Instant {
            Instant::from_origin(self.0.elapsed())
        }

        fn pause(&self, round: u32) {
            match round {
                0..=63 => core::hint::spin_loop(),
                64..=1023 => std::thread::yield_now(),
                _ => std::thread::sleep(Duration::from_micros(50)),
            }
        }

        fn sleep(&self, duration: Duration) {
            std::thread::sleep(duration)
        }
    }
}
