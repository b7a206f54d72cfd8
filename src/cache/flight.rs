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
    running: Mutex<HashMap<String, Arc<OnceCell<Outcome>>>>,
}

impl Flights {
    /// Runs `load` unless a load of `key` is already under way, in which case `joined` is
    /// called and that load's outcome is shared. Returns the outcome and whether this call's own
    /// `load` ran. If the running load is cancelled, a waiting caller's load takes over.
    pub async fn run(
        &self,
        key: &str,
        load: impl Future<Output = Outcome>,
        joined: impl FnOnce(),
    ) -> (Outcome, bool) {
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
        let mut running = self.running.lock().expect("flights lock");
        if running.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            running.remove(key);
        }
        (outcome, ran)
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
            ran += u32::from(own);
        }
        assert_eq!((loads.load(Ordering::SeqCst), ran), (1, 1));
        assert!(flights.running.lock().unwrap().is_empty());
    }
}
