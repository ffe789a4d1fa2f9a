//! The core's [`Platform`] in user space: `std`'s monotonic clock, and
//! waiting that spins briefly, then yields, then sleeps (on an
//! oversubscribed host a spinning waiter must not keep the holder off the
//! CPU).

use std::time::Duration;

use vni_core::{Instant, Platform};

/// `std::time::Instant` and `std::thread` as the core's clock and waiting.
#[derive(Clone, Copy, Debug)]
pub struct StdPlatform {
    origin: std::time::Instant,
}

impl Default for StdPlatform {
    fn default() -> Self {
        StdPlatform {
            origin: std::time::Instant::now(),
        }
    }
}

impl Platform for StdPlatform {
    fn now(&self) -> Instant {
        Instant::from_origin(self.origin.elapsed())
    }

    fn pause(&self, round: u32) {
        Backoff(round).pause();
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration)
    }
}

/// Spins briefly, then yields, then sleeps: the schedule of
/// [`StdPlatform::pause`], for loops of one's own (a simulated node idling).
#[derive(Debug, Default)]
pub struct Backoff(u32);

impl Backoff {
    /// Waits a little longer each call.
    pub fn wait(&mut self) {
        self.pause();
        self.0 = self.0.saturating_add(1);
    }

    fn pause(&self) {
        match self.0 {
            0..=63 => std::hint::spin_loop(),
            64..=1023 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(50)),
        }
    }
}
