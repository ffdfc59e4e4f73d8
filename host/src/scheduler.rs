//! Runs each tenant's polls on its schedule: one poll per tenant at a time, a way to poll
//! now, and nothing lost across restarts (the next time is derived from the poll history).
//! Across hosts sharing one database, a poll runs under the tenant's lease in the store,
//! renewed while it runs; a host that stops renewing is taken over when the lease expires.
//! A scheduled poll comes at most once per `POLL_INTERVAL_MIN_SECONDS` (whatever the stored
//! schedule says), later after failures (doubling, up to `POLL_BACKOFF_MAX_SECONDS`, read from
//! the poll history so every host agrees), and a tenant's deletion cancels its running poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use thiserror::Error;
use tokio::sync::{Notify, watch};

use crate::core::schedule::Schedule;
use crate::poller::{PollError, PollReport, Poller};

#[derive(Debug, Error)]
pub enum PollNowError {
    #[error("tenant {0} is being polled right now; its result will be in the poll history")]
    AlreadyRunning(String),
    #[error("tenant {0} is being polled by another host ({1}); its result will be in the poll history")]
    HeldElsewhere(String, String),
    #[error(transparent)]
    Poll(#[from] PollError),
}

#[derive(Clone)]
pub struct Scheduler {
    poller: Poller,
    /// Tenants being polled by this host, each with what cancels its poll.
    running: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// Tenants whose poll could not even start (no credentials, say): not tried again before
    /// this time, or until their settings change, instead of at once in a loop.
    held_back: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    wake: Arc<Notify>,
    /// This host, as the holder of poll leases.
    pub host: String,
    /// How long a poll lease lasts without renewal (renewed every third of it).
    pub poll_lease: Duration,
    /// The shortest time between two scheduled polls of a tenant (`POLL_INTERVAL_MIN_SECONDS`).
    pub min_interval: Duration,
}

/// How long a tenant whose poll cannot start waits before the next try.
const HOLD_BACK: Duration = Duration::seconds(60);

/// How many recent polls are read to count the failures in a row (the back-off is at its
/// cap well before).
const BACKOFF_HISTORY: i64 = 8;

/// How long `cancel` waits for a cancelled poll to record its end.
const CANCEL_WAIT: StdDuration = StdDuration::from_secs(10);

/// `POLL_INTERVAL_MIN_SECONDS`; a debug build lets a test that needs polls every few seconds
/// (several hosts taking a poll over) shorten it with
/// `ML_CONNECTOR_TEST_POLL_MIN_INTERVAL_SECONDS`. A release build has no such override.
fn min_interval_of_this_build() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(s) = std::env::var("ML_CONNECTOR_TEST_POLL_MIN_INTERVAL_SECONDS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        return Duration::seconds(s.max(1));
    }
    crate::core::schedule::min_interval()
}

/// Failed polls in a row, most recent first (a poll still running is passed over).
fn failures_in_a_row(history: &[crate::store::PollRow]) -> u32 {
    history
        .iter()
        .filter(|p| p.outcome != "running")
        .take_while(|p| p.outcome == "failed")
        .count() as u32
}

/// Removes the tenant from the running set however the poll ends.
struct RunningGuard {
    running: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    tenant: String,
    cancel: Arc<Notify>,
    wake: Arc<Notify>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.tenant);
        self.wake.notify_one();
    }
}

impl Scheduler {
    pub fn new(poller: Poller) -> Self {
        Scheduler {
            poller,
            running: Arc::default(),
            held_back: Arc::default(),
            wake: Arc::new(Notify::new()),
            host: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            poll_lease: Duration::seconds(60),
            min_interval: min_interval_of_this_build(),
        }
    }

    fn claim(&self, tenant: &str) -> Option<RunningGuard> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.contains_key(tenant) {
            return None;
        }
        let cancel = Arc::new(Notify::new());
        running.insert(tenant.to_string(), cancel.clone());
        Some(RunningGuard {
            running: self.running.clone(),
            tenant: tenant.to_string(),
            cancel,
            wake: self.wake.clone(),
        })
    }

    /// Cancel the tenant's poll running on this host, if any, and wait (a while) for it to
    /// record its end: DeleteTenant calls it before deleting. Whether one was running.
    pub async fn cancel(&self, tenant: &str) -> bool {
        let Some(cancel) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned() else {
            return false;
        };
        // A stored permit: a poll that has not reached its wait yet is cancelled all the same.
        cancel.notify_one();
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        while self.running.lock().unwrap_or_else(|p| p.into_inner()).contains_key(tenant) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        }
        true
    }

    /// When the tenant's next scheduled poll is due: its schedule from the last poll's start,
    /// never sooner than the minimum interval, later after failures in a row.
    async fn due(&self, tenant: &str, schedule: &Schedule, now: DateTime<Utc>) -> Result<DateTime<Utc>, PollNowError> {
        let history = self.poller.store.polls(tenant, BACKOFF_HISTORY).await.map_err(PollError::from)?;
        let last = history.first().map(|p| p.started_at);
        let schedule = schedule.clone().with_min_gap(self.min_interval);
        schedule
            .next_poll_after(last, failures_in_a_row(&history), now)
            .map_err(|e| PollError::Schedule(tenant.to_string(), e).into())
    }

    /// Poll a tenant now, unless a poll of it is already under way (here or on another host).
    pub async fn poll_now(&self, tenant: &str, requested_by: &str) -> Result<PollReport, PollNowError> {
        let guard = self.claim(tenant).ok_or_else(|| PollNowError::AlreadyRunning(tenant.to_string()))?;
        self.leased(&self.poller, &guard, requested_by, None).await
    }

    /// Run one poll under the tenant's lease. `due_by`: for a scheduled poll, its schedule,
    /// re-checked once the lease is held (another host may just have polled). A poll whose
    /// lease was lost (this host stalled past it) is dropped: the new holder polls.
    async fn leased(
        &self,
        poller: &Poller,
        guard: &RunningGuard,
        requested_by: &str,
        due_by: Option<&Schedule>,
    ) -> Result<PollReport, PollNowError> {
        let tenant = guard.tenant.as_str();
        let store = &poller.store;
        let now = poller.clock.now();
        if !store
            .acquire_poll_lease(tenant, &self.host, now, now + self.poll_lease)
            .await
            .map_err(PollError::from)?
        {
            return Err(held_elsewhere(store, tenant).await);
        }
        if let Some(schedule) = due_by
            && self.due(tenant, schedule, now).await.is_ok_and(|due| due > now)
        {
            store.release_poll_lease(tenant, &self.host).await.map_err(PollError::from)?;
            return Err(PollNowError::AlreadyRunning(tenant.to_string()));
        }
        let cancel = guard.cancel.clone();
        let poll = poller.poll_until(tenant, requested_by, async move {
            cancel.notified().await;
            "the tenant was deleted"
        });
        tokio::pin!(poll);
        let every = (self.poll_lease / 3)
            .to_std()
            .unwrap_or(StdDuration::from_secs(1))
            .max(StdDuration::from_millis(100));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let outcome = loop {
            tokio::select! {
                r = &mut poll => break Some(r),
                _ = heartbeat.tick() => {
                    let now = poller.clock.now();
                    match store.acquire_poll_lease(tenant, &self.host, now, now + self.poll_lease).await {
                        Ok(true) => {}
                        Ok(false) => break None,
                        Err(e) => tracing::warn!(tenant, error = %e, "cannot renew the poll lease; trying again"),
                    }
                }
            }
        };
        let _ = store.release_poll_lease(tenant, &self.host).await;
        match outcome {
            Some(r) => Ok(r?),
            None => {
                tracing::warn!(tenant, "poll lease lost to another host mid-poll; this poll is dropped");
                Err(held_elsewhere(store, tenant).await)
            }
        }
    }

    /// Wake the loop: a tenant or its schedule changed.
    pub fn reschedule(&self) {
        self.held_back.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.wake.notify_one();
    }

    /// Poll every tenant when due until `shutdown` turns true; polls under way finish first.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let now = self.poller.clock.now();
            let mut next_wake = now + Duration::seconds(60);
            match self.poller.store.tenants().await {
                Ok(tenants) => {
                    for t in tenants {
                        let schedule = match Schedule::parse(&t.schedule) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(tenant = %t.id, error = %e, "schedule does not parse; tenant not polled");
                                continue;
                            }
                        };
                        let due = match self.due(&t.id, &schedule, now).await {
                            Ok(d) => d,
                            Err(e) => {
                                tracing::warn!(tenant = %t.id, error = %e, "no next poll time");
                                continue;
                            }
                        };
                        let held = self.held_back.lock().unwrap_or_else(|p| p.into_inner()).get(&t.id).copied();
                        let due = held.map_or(due, |h| due.max(h));
                        if due <= now {
                            if let Some(guard) = self.claim(&t.id) {
                                let this = self.clone();
                                tasks.spawn(async move {
                                    match this.leased(&this.poller, &guard, "schedule", Some(&schedule)).await {
                                        Ok(_) => {}
                                        // Another host just polled it: its history says when next.
                                        Err(PollNowError::AlreadyRunning(_)) => {}
                                        // Another host holds it: look again a few times per lease.
                                        Err(PollNowError::HeldElsewhere(..)) => {
                                            let until = this.poller.clock.now() + this.poll_lease / 3;
                                            this.held_back.lock().unwrap_or_else(|p| p.into_inner()).insert(guard.tenant.clone(), until);
                                        }
                                        Err(e) => {
                                            tracing::warn!(tenant = %guard.tenant, error = %e, "scheduled poll could not run; next try in 60 s");
                                            let until = this.poller.clock.now() + HOLD_BACK;
                                            this.held_back.lock().unwrap_or_else(|p| p.into_inner()).insert(guard.tenant.clone(), until);
                                        }
                                    }
                                    drop(guard);
                                });
                            }
                        } else {
                            next_wake = next_wake.min(due);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list tenants; retrying"),
            }
            while tasks.try_join_next().is_some() {}
            let sleep = (next_wake - self.poller.clock.now())
                .to_std()
                .unwrap_or(StdDuration::from_millis(50))
                .max(StdDuration::from_millis(50));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// The error for a tenant whose poll lease another host holds, naming that host.
async fn held_elsewhere(store: &crate::store::Store, tenant: &str) -> PollNowError {
    match store.poll_lease(tenant).await {
        Ok(lease) => PollNowError::HeldElsewhere(tenant.to_string(), lease.map(|(h, _)| h).unwrap_or_default()),
        Err(e) => PollNowError::Poll(e.into()),
    }
}
