// SPDX-License-Identifier: GPL-2.0

//! The driver's one lock: the glue's spinlock (taken with bottom halves
//! off), guarding the state that transmit, the NAPI poll and the
//! housekeeping work share. It is never held across a sleep, and never
//! while frames go up the stack (which may transmit, and so take it again).

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use crate::device::NetDev;

/// `T`, reachable only under the glue's spinlock of a device.
pub(crate) struct DevLock<T> {
    dev: NetDev,
    inner: UnsafeCell<T>,
}

// SAFETY: transmit (bottom halves off), the NAPI poll (softirq) and the
// housekeeping work (process context) share a `DevLock` from any CPU; the
// only way to the value is `lock`, which takes the glue's spinlock with
// bottom halves off, so at most one context holds a reference at a time,
// and `get_mut` needs `&mut self`. `T: Send` because the value is used
// from whichever context holds the lock. (Two `DevLock`s on one device
// would share its spinlock: still exclusive, only slower.)
unsafe impl<T: Send> Sync for DevLock<T> {}

impl<T> DevLock<T> {
    /// `inner`, guarded by the spinlock of `dev`.
    pub(crate) fn new(dev: NetDev, inner: T) -> Self {
        DevLock {
            dev,
            inner: UnsafeCell::new(inner),
        }
    }

    /// Takes the lock (spinning; bottom halves off until the guard drops).
    pub(crate) fn lock(&self) -> Guard<'_, T> {
        // SAFETY: the guard releases it exactly once, and in this context
        // (a guard cannot move to another).
        unsafe { self.dev.lock() };
        Guard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// The value, without locking: for the owner that holds it alone
    /// (when the device goes away).
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

/// The locked state; the lock is released when this drops. As under the
/// kernel's own `SpinLock`, sleeping meanwhile is a bug the kernel
/// reports ("scheduling while atomic"), not something the types prevent.
pub(crate) struct Guard<'a, T> {
    lock: &'a DevLock<T>,
    /// Not `Send`: the spinlock is released where it was taken.
    _not_send: PhantomData<*mut ()>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the spinlock is held for the guard's lifetime, and only
        // a guard reaches the value: no other reference to it exists.
        unsafe { &*self.lock.inner.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes this the only access.
        unsafe { &mut *self.lock.inner.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard took the lock in `DevLock::lock`.
        unsafe { self.lock.dev.unlock() };
    }
}
