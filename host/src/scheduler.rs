//! Runs each tenant's polls on its schedule: one poll per tenant at a time, a way to poll
//! now, and nothing lost across restarts (the next time is derived from the poll history).

use std::collections::{HashMap, HashSet};
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
    #[error(transparent)]
    Poll(#[from] PollError),
}

#[derive(Clone)]
pub struct Scheduler {
    poller: Poller,
    running: Arc<Mutex<HashSet<String>>>,
    /// Tenants whose poll could not even start (no credentials, say): not tried again before
    /// this time, or until their settings change, instead of at once in a loop.
    held_back: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    wake: Arc<Notify>,
}

/// How long a tenant whose poll cannot start waits before the next try.
const HOLD_BACK: Duration = Duration::seconds(60);

/// Removes the tenant from the running set however the poll ends.
struct RunningGuard {
    running: Arc<Mutex<HashSet<String>>>,
    tenant: String,
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
        }
    }

    fn claim(&self, tenant: &str) -> Option<RunningGuard> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.insert(tenant.to_string()).then(|| RunningGuard {
            running: self.running.clone(),
            tenant: tenant.to_string(),
            wake: self.wake.clone(),
        })
    }

    /// Poll a tenant now, unless a poll of it is already under way.
    pub async fn poll_now(&self, tenant: &str, requested_by: &str) -> Result<PollReport, PollNowError> {
        let _guard = self.claim(tenant).ok_or_else(|| PollNowError::AlreadyRunning(tenant.to_string()))?;
        Ok(self.poller.poll(tenant, requested_by).await?)
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
                        let last = match self.poller.store.polls(&t.id, 1).await {
                            Ok(p) => p.first().map(|p| p.started_at),
                            Err(e) => {
                                tracing::warn!(tenant = %t.id, error = %e, "poll history unreadable");
                                continue;
                            }
                        };
                        let due = match schedule.next_poll(last, now) {
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
                                let poller = self.poller.clone();
                                let held_back = self.held_back.clone();
                                tasks.spawn(async move {
                                    if let Err(e) = poller.poll(&guard.tenant, "schedule").await {
                                        tracing::warn!(tenant = %guard.tenant, error = %e, "scheduled poll could not run; next try in 60 s");
                                        let until = poller.clock.now() + HOLD_BACK;
                                        held_back.lock().unwrap_or_else(|p| p.into_inner()).insert(guard.tenant.clone(), until);
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
