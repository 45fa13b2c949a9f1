//! Request coalescing: concurrent calls for one key share one run of the work.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// Runs at most one piece of work per key at a time; callers that arrive while it
/// runs wait for its result instead of running their own.
///
/// The result is published through a `watch` channel, which keeps the value, so a
/// waiter that subscribes a moment before the result arrives cannot miss it. If the
/// caller running the work is cancelled (its future dropped), the waiters are woken
/// and one of them runs the work instead: nobody waits forever.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use dcache_client::SingleFlight;
///
/// let flights: SingleFlight<&str, u32> = SingleFlight::new();
/// let (a, b) = tokio::join!(
///     flights.run("answer", || async {
///         tokio::task::yield_now().await; // still running when the second call comes
///         42
///     }),
///     flights.run("answer", || async { unreachable!("coalesced into the first call") }),
/// );
/// assert_eq!((a, b), (42, 42));
/// # }
/// ```
pub struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Flight<V>>>,
    next_id: AtomicU64,
}

struct Flight<V> {
    /// Tells this flight apart from a later one for the same key.
    id: u64,
    result: watch::Receiver<Option<V>>,
}

enum Role<V> {
    Lead(watch::Sender<Option<V>>, u64),
    Wait(watch::Receiver<Option<V>>),
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` for `key`, unless a run for `key` is already under way, in which
    /// case its result is returned instead.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let mut work = Some(work);
        loop {
            match self.join(&key) {
                Role::Wait(mut result) => {
                    // Err means the leader was cancelled before finishing: go round
                    // again, and either join a newer flight or lead one.
                    if let Ok(value) = result.wait_for(Option::is_some).await {
                        return value.clone().expect("waited for Some");
                    }
                }
                Role::Lead(publish, id) => {
                    let _forget_on_exit = ForgetFlight {
                        flights: self,
                        key: &key,
                        id,
                    };
                    let work = work.take().expect("a caller leads at most once");
                    let value = work().await;
                    // Published before the flight is forgotten, so a caller joining
                    // in between finds the value instead of starting a new run.
                    publish.send_replace(Some(value.clone()));
                    return value;
                }
            }
        }
    }

    /// How many runs are under way (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn join(&self, key: &K) -> Role<V> {
        let mut flights = self.lock();
        if let Some(flight) = flights.get(key) {
            return Role::Wait(flight.result.clone());
        }
        let (publish, result) = watch::channel(None);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        flights.insert(key.clone(), Flight { id, result });
        Role::Lead(publish, id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Flight<V>>> {
        // The map is only ever left consistent (single inserts and removes), so a
        // panic elsewhere while holding the lock does not poison its contents.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the leader's flight when it finishes or is cancelled.
struct ForgetFlight<'a, K: Hash + Eq + Clone, V: Clone> {
    flights: &'a SingleFlight<K, V>,
    key: &'a K,
    id: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for ForgetFlight<'_, K, V> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        if flights.get(self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hundred_concurrent_callers_share_one_run() {
        let flights = Arc::new(SingleFlight::<String, Result<u64, String>>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..100)
            .map(|_| {
                let (flights, runs) = (flights.clone(), runs.clone());
                tokio::spawn(async move {
                    flights
                        .run("hot".to_owned(), || async {
                            runs.fetch_add(1, Ordering::SeqCst);
                            // With the clock paused, time only advances once every
                            // task is blocked, i.e. once all 100 callers have joined.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            Ok(7)
                        })
                        .await
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Ok(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0, "the finished flight is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_reaches_every_waiter() {
        let flights = SingleFlight::<&str, Result<u64, String>>::new();
        let runs = AtomicUsize::new(0);
        let load = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<u64, _>("origin down".to_owned())
        };
        let (a, b, c) = tokio::join!(
            flights.run("k", load),
            flights.run("k", load),
            flights.run("k", load)
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        for result in [a, b, c] {
            assert_eq!(result, Err("origin down".to_owned()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_leader_hands_the_work_to_a_waiter() {
        let flights = Arc::new(SingleFlight::<&str, u64>::new());
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", std::future::pending::<u64>).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(flights.in_flight(), 1, "the leader is running");
        let waiter = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", || async { 5 }).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        assert_eq!(waiter.await.unwrap(), 5, "the waiter ran the work itself");
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn separate_keys_do_not_wait_for_each_other() {
        let flights = SingleFlight::<u32, u32>::new();
        let (a, b) = tokio::join!(
            flights.run(1, || async { 10 }),
            flights.run(2, || async { 20 })
        );
        assert_eq!((a, b), (10, 20));
    }
}
