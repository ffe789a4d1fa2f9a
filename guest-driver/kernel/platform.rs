// SPDX-License-Identifier: GPL-2.0

//! The protocol core's clock and waiting, from the kernel: `ktime_get`,
//! `cpu_relax` between looks at a word another node must change (the
//! endpoint's calls run in softirq or with bottom halves off, where nothing
//! may sleep), and `fsleep` only where the core says the caller may sleep
//! (attaching, from the housekeeping work).

use core::time::Duration;

use kernel::alloc::VBox;
use kernel::prelude::Zeroable;
use kernel::sync::Arc;
use kernel::time::{delay::fsleep, Delta};

use crate::vni_core::{Buffers, Endpoint, Instant, Platform, Region};

/// The endpoint as the kernel holds it: the mapped region shared by
/// reference count, its working lists in vmalloc'ed memory (about
/// 200 KiB, too large for a kernel stack; `VBox::zeroed`), the kernel's
/// clock.
pub(crate) type Ep = Endpoint<Arc<Region>, VBox<Buffers>, Kernel>;

// SAFETY: `Buffers` holds integers, arrays and bounded lists of integers
// only (no references, no enums, no `NonZero`): all-zero bytes are a
// valid, empty value, as its documentation promises.
unsafe impl Zeroable for Buffers {}

/// The kernel's monotonic clock and waits.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Kernel;

impl Platform for Kernel {
    fn now(&self) -> Instant {
        // SAFETY: ktime_get takes nothing and may be called in any context.
        let ns = unsafe { kernel::bindings::ktime_get() };
        Instant::from_origin(Duration::from_nanos(u64::try_from(ns).unwrap_or(0)))
    }

    fn pause(&self, _round: u32) {
        kernel::processor::cpu_relax();
    }

    fn sleep(&self, duration: Duration) {
        // The core calls `sleep` only while attaching, which this driver
        // does from its housekeeping work (process context, no lock held),
        // as fsleep needs.
        let us = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        fsleep(Delta::from_micros(us));
    }
}

/// The core's values (errors, addresses) in the kernel's log: its
/// `pr_*!` macros take `kernel::fmt::Display`, the core implements
/// `core::fmt::Display`.
pub(crate) struct Shown<'a, T>(pub(crate) &'a T);

impl<T: core::fmt::Display> kernel::fmt::Display for Shown<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self.0, f)
    }
}

/// An error and its causes, `outer: inner: ...`, for the kernel's log.
pub(crate) struct Chain<'a>(pub(crate) &'a dyn core::error::Error);

impl kernel::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}
