//! The one place that names the standard synchronisation primitives.
//!
//! Everything else in the crate takes `Arc`, `Mutex` and `Condvar` from here, so a model
//! checker can be swapped in under `cfg(loom)` without touching the rest of the code.
//! [`Mutex::lock`] ignores poisoning: every piece of user code the crate calls runs under
//! `catch_unwind` or outside any lock, so a poisoned lock only ever guards consistent data.

#![allow(clippy::disallowed_types)] // this module is the sanctioned wrapper

/// `std::sync::Arc`, named through this module.
pub(crate) type Arc<T> = std::sync::Arc<T>;
/// `std::sync::Weak`, named through this module.
pub(crate) type Weak<T> = std::sync::Weak<T>;
pub(crate) use std::sync::atomic;

/// A mutual-exclusion lock whose `lock` never fails: a poisoned lock is entered anyway.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

/// The guard of a [`Mutex`].
pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A condition variable paired with [`Mutex`]; waits ignore poisoning like `Mutex::lock`.
#[derive(Debug, Default)]
pub(crate) struct Condvar(std::sync::Condvar);

impl Condvar {
    /// Waits for a notification or until `timeout` passes (spurious wake-ups happen).
    pub(crate) fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, T> {
        match self.0.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    pub(crate) fn notify_one(&self) {
        self.0.notify_one();
    }
}

impl Condvar {
    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// The write guard of a [`RwLock`].
pub(crate) type RwLockWriteGuard<'a, T> = std::sync::RwLockWriteGuard<'a, T>;

/// A reader-writer lock whose `read` and `write` never fail: poisoning is ignored.
#[derive(Debug, Default)]
pub(crate) struct RwLock<T>(std::sync::RwLock<T>);

impl<T> RwLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::sync::RwLock::new(value))
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, T> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
