//! Single-flight: concurrent misses of one key share one database load, per replica.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::error::Error;

type Outcome = Result<Bytes, Error>;

#[derive(Default)]
pub struct Flights {
    running: Arc<Mutex<HashMap<String, Arc<OnceCell<Outcome>>>>>,
}

/// Held by the caller whose load ran: while it lives, later misses of the key share the loaded
/// answer instead of loading again. Drop it once the answer is in Redis.
pub struct Flight {
    running: Arc<Mutex<HashMap<String, Arc<OnceCell<Outcome>>>>>,
    key: String,
    cell: Arc<OnceCell<Outcome>>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut running = self.running.lock().expect("flights lock");
        if running
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            running.remove(&self.key);
        }
    }
}

impl Flights {
    /// Runs `load` unless a load of `key` is already under way (or landed and not yet filled),
    /// in which case `joined` is called and that load's outcome is shared. Returns the outcome
    /// and, to the caller whose `load` ran and succeeded, the [`Flight`] to drop after the fill.
    /// If the running load is cancelled, a waiting caller's load takes over.
    pub async fn run(
        &self,
        key: &str,
        load: impl Future<Output = Outcome>,
        joined: impl FnOnce(),
    ) -> (Outcome, Option<Flight>) {
        let (cell, existed) = {
            let mut running = self.running.lock().expect("flights lock");
            match running.get(key) {
                Some(cell) => (cell.clone(), true),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    running.insert(key.to_string(), cell.clone());
                    (cell, false)
                }
            }
        };
        if existed {
            joined();
        }
        let mut ran = false;
        let outcome = cell
            .get_or_init(|| {
                ran = true;
                load
            })
            .await
            .clone();
        let flight = || Flight {
            running: self.running.clone(),
            key: key.to_string(),
            cell: cell.clone(),
        };
        match &outcome {
            Ok(_) if ran => (outcome, Some(flight())),
            // The answer stays shared until the leader's flight lands.
            Ok(_) => (outcome, None),
            // A failed load is not shared with later callers: they try again.
            Err(_) => {
                drop(flight());
                (outcome, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn concurrent_runs_share_one_load() {
        let flights = Arc::new(Flights::default());
        let loads = Arc::new(AtomicU32::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (flights, loads, gate) = (flights.clone(), loads.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run(
                        "k",
                        async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            gate.notified().await;
                            Ok(Bytes::from_static(b"v"))
                        },
                        || (),
                    )
                    .await
            }));
        }
        tokio::task::yield_now().await;
        while loads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await; // every task has joined the flight
        }
        gate.notify_waiters();
        let mut ran = 0;
        for t in tasks {
            let (outcome, own) = t.await.unwrap();
            assert_eq!(outcome.unwrap(), Bytes::from_static(b"v"));
            ran += u32::from(own.is_some());
        }
        assert_eq!((loads.load(Ordering::SeqCst), ran), (1, 1));
        assert!(flights.running.lock().unwrap().is_empty());
    }
}
