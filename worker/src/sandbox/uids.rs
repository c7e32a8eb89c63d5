//! The pool of host uids runs execute as when the worker is root: `base .. base + count`, one
//! per concurrent run.
//!
//! The rule it keeps: a uid belongs to at most one run at a time, and goes back to the pool
//! only when its lease is dropped — which the sandbox does after every process of the run is
//! dead.

use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub(super) struct UidPool {
    base: u32,
    used: Arc<Mutex<Vec<bool>>>,
}

#[derive(Debug)]
pub(super) struct UidLease {
    uid: u32,
    slot: usize,
    used: Arc<Mutex<Vec<bool>>>,
}

impl UidPool {
    pub fn new(base: u32, count: u32) -> Self {
        UidPool {
            base,
            used: Arc::new(Mutex::new(vec![false; count as usize])),
        }
    }

    pub fn count(&self) -> u32 {
        self.lock().len() as u32
    }

    pub fn uids(&self) -> impl Iterator<Item = u32> + use<> {
        let (base, count) = (self.base, self.count());
        base..base + count
    }

    pub fn acquire(&self) -> Option<UidLease> {
        let mut used = self.lock();
        let slot = used.iter().position(|u| !u)?;
        used[slot] = true;
        Some(UidLease {
            uid: self.base + slot as u32,
            slot,
            used: self.used.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        used[self.slot] = false;
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn leases_are_exclusive_and_come_back() {
        let pool = UidPool::new(1000, 2);
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert_ne!(a.uid(), b.uid());
        assert!(pool.acquire().is_none());
        let freed = a.uid();
        drop(a);
        assert_eq!(pool.acquire().unwrap().uid(), freed);
    }
}
