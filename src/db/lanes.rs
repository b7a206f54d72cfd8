//! Read lanes: a few pooled connections that concurrent reads share. A read borrows a lane's
//! connection by shared reference, so reads on one lane are pipelined (diesel-async sends each
//! query as soon as it is issued and PostgreSQL answers them in order): a backend finds the next
//! query already waiting when it finishes one, and both sides move several messages per system
//! call. Measured with `scripts/bench` on this 2-core machine, this is what lets a read that
//! misses the cache cost little more than PostgreSQL's own work; an exclusive checkout per read
//! pays a pool hand-off and a full round trip of wake-ups each time.
//!
//! Pipelining makes every read on a lane wait for the ones ahead of it, so only short reads
//! (index lookups of a bounded number of rows) share lanes; a long read (a deep page) checks a
//! connection out for itself, from the part of the pool the lanes leave free.
//!
//! A lane's connection comes from the pool and goes back to it (where bb8 discards it if it is
//! broken) once the lane is retired after an error and the reads on it are done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{Manager, Pool};
use crate::error::Error;

pub type Lane = Arc<bb8::PooledConnection<'static, Manager>>;

pub struct Lanes {
    pool: Pool,
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    lane: Mutex<Option<Lane>>,
    /// Held while the lane's connection is being opened, so that a burst of reads finding the
    /// lane empty opens one connection, not one each.
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn lane(&self) -> Option<Lane> {
        self.lane.lock().expect("lane lock").clone()
    }
}

impl Lanes {
    /// `count` lanes over `pool`, opened on first use; without lanes every read checks a
    /// connection out for itself.
    pub fn new(pool: Pool, count: usize) -> Self {
        Self {
            pool,
            slots: (0..count).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A connection for one read: the next lane in turn for a short read (opening the lane's
    /// connection if it has none), a connection of its own for a long one.
    pub async fn get(&self, long: bool) -> Result<Lane, Error> {
        if long || self.slots.is_empty() {
            return Ok(Arc::new(self.pool.get_owned().await?));
        }
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(lane) = slot.lane() {
            return Ok(lane);
        }
        let _opening = slot.opening.lock().await;
        if let Some(lane) = slot.lane() {
            return Ok(lane);
        }
        let opened = Arc::new(self.pool.get_owned().await?);
        *slot.lane.lock().expect("lane lock") = Some(opened.clone());
        Ok(opened)
    }

    /// Takes `lane` out of use after an error on it: later reads get another connection, and
    /// this one returns to the pool once the reads still on it are done.
    pub fn retire(&self, lane: &Lane) {
        for slot in self.slots.iter() {
            let mut held = slot.lane.lock().expect("lane lock");
            if held.as_ref().is_some_and(|l| Arc::ptr_eq(l, lane)) {
                *held = None;
            }
        }
    }
}
