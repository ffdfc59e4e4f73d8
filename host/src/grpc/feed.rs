//! The event feed behind `Alerts.Watch`. The audit trail is the event log: its ids are
//! durable and ordered. One pump per host reads what was committed and broadcasts it, so
//! any number of watchers cost the database one reader; a watcher catches up from the
//! database at its own pace, then follows the broadcast (and reads from the database again
//! whatever a burst made it miss). A live watcher whose connection is full and which is more
//! than the buffer behind the newest event is told so, with the id to resume after, instead
//! of holding the host's memory or silently missing events. The streams open at once on a
//! host are capped: one past the cap is refused with RESOURCE_EXHAUSTED naming the limit,
//! and a stream's place is given back as soon as its consumer goes, events or not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tonic::Status;

use super::convert::audit_out;
use super::pb;
use crate::store::Store;

/// How long the pump waits for a missing id before it takes it for a rolled-back
/// transaction. PostgreSQL hands out ids before commit, so a later id can commit first;
/// SQLite commits one writer at a time, so a missing id there never comes.
const POSTGRES_GAP_GRACE: Duration = Duration::from_secs(2);
const PUMP_IDLE: Duration = Duration::from_millis(200);
const PAGE: i64 = 500;
/// `Watch` streams open at once on a host unless told otherwise.
pub const DEFAULT_MAX_WATCHERS: usize = 64;

#[derive(Clone)]
pub struct EventFeed {
    store: Store,
    live: broadcast::Sender<Arc<pb::AuditEvent>>,
    /// The highest id broadcast so far: everything up to it is readable and complete.
    head: watch::Sender<i64>,
    wake: Arc<Notify>,
    /// How far behind the newest event a live watcher with a full connection may be.
    max_behind: i64,
    /// One permit per open `Watch` stream.
    watchers: Arc<Semaphore>,
    max_watchers: usize,
    /// Set when the host stops: every live stream ends, telling its consumer where to resume.
    closing: Arc<watch::Sender<bool>>,
}

impl EventFeed {
    /// `buffer`: how many events a live watcher may fall behind before it is told it lagged.
    pub fn new(store: Store, buffer: usize) -> Self {
        EventFeed {
            store,
            live: broadcast::channel(buffer.max(1)).0,
            head: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
            max_behind: buffer.max(1) as i64,
            watchers: Arc::new(Semaphore::new(DEFAULT_MAX_WATCHERS)),
            max_watchers: DEFAULT_MAX_WATCHERS,
            closing: Arc::new(watch::channel(false).0),
        }
    }

    /// End every live `Watch` stream (the host is stopping): each consumer is told UNAVAILABLE
    /// with the id to resume after, so a graceful stop need not wait for them to hang up.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// At most `n` `Watch` streams open at once on this host (at least one).
    pub fn with_max_watchers(mut self, n: usize) -> Self {
        self.max_watchers = n.max(1);
        self.watchers = Arc::new(Semaphore::new(self.max_watchers));
        self
    }

    /// A place for one more `Watch` stream, or RESOURCE_EXHAUSTED naming the limit.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this host already serves {} Watch streams, its limit (ML_CONNECTOR_WATCH_MAX_STREAMS): close one or retry later",
                self.max_watchers
            ))
        })
    }

    /// Look for new events now rather than at the next tick.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Broadcast committed events in id order until `stop`. Starts after the newest event
    /// present: watchers read older ones from the database.
    pub async fn pump(&self, mut stop: watch::Receiver<bool>) {
        let grace = if self.store.engine() == "postgres" {
            POSTGRES_GAP_GRACE
        } else {
            Duration::ZERO
        };
        let mut head = loop {
            match self.store.last_event_id().await {
                Ok(id) => break id,
                Err(e) => tracing::warn!(error = %e, "event feed: cannot read the audit trail yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        };
        self.head.send_replace(head);
        let mut gap: Option<(i64, Instant)> = None;
        loop {
            match self.advance(head, grace, &mut gap).await {
                Ok(new_head) if new_head > head => {
                    head = new_head;
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "event feed: reading the audit trail failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(PUMP_IDLE) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Broadcast the contiguous run of committed ids after `head`; returns the new head.
    async fn advance(&self, head: i64, grace: Duration, gap: &mut Option<(i64, Instant)>) -> Result<i64, crate::store::StoreError> {
        let ids = self.store.event_ids_after(head, PAGE).await?;
        let mut upto = head;
        for id in ids {
            if id != upto + 1 {
                let missing = upto + 1;
                match gap {
                    Some((g, since)) if *g == missing && since.elapsed() >= grace => {}
                    Some((g, _)) if *g == missing => break,
                    _ if grace.is_zero() => {}
                    _ => {
                        *gap = Some((missing, Instant::now()));
                        break;
                    }
                }
            }
            *gap = None;
            upto = id;
        }
        if upto > head {
            let events = self.store.events_after(None, head, upto, PAGE).await?;
            // The head moves first: a watcher that lost broadcasts reads up to it from the
            // log, so whatever it skipped is always at or below the head it sees.
            self.head.send_replace(upto);
            for (tenant, e) in events {
                let _ = self.live.send(Arc::new(audit_out(&tenant, &e)));
            }
        }
        Ok(upto)
    }

    /// A watcher's stream: events after `after_id` (of one tenant or all), then live.
    /// RESOURCE_EXHAUSTED when the host already serves as many streams as it may.
    pub fn watch(&self, after_id: i64, tenant: Option<String>) -> Result<mpsc::Receiver<Result<pb::WatchMessage, Status>>, Status> {
        let permit = self.admit()?;
        let (tx, rx) = mpsc::channel(64);
        let feed = self.clone();
        tokio::spawn(async move {
            // The stream's place is held until this task ends, which it does once the
            // consumer has gone.
            let _permit = permit;
            // Subscribe before reading the head: nothing published in between is missed.
            let mut live = feed.live.subscribe();
            let mut closing = feed.closing.subscribe();
            let mut w = Watcher {
                tx,
                tenant,
                cursor: after_id,
                backed_up: false,
                live: false,
                max_behind: feed.max_behind,
            };
            // The backlog the consumer asked for is read at its pace, however long it is.
            if !w.catch_up(&feed).await {
                return;
            }
            w.live = true;
            if *closing.borrow_and_update() {
                return;
            }
            loop {
                let next = tokio::select! {
                    n = live.recv() => n,
                    // The consumer went while no event came: give its place back now.
                    _ = w.tx.closed() => return,
                    // It only ever changes to true (and a stop before this stream began
                    // is seen below).
                    _ = closing.changed() => {
                        let why = format!("this host is stopping; watch again with after_id {}", w.cursor);
                        let _ = w.tx.send(Err(Status::unavailable(why))).await;
                        return;
                    }
                };
                match next {
                    Ok(e) if e.id <= w.cursor => {}
                    Ok(e) => {
                        if !w.deliver(&feed, e.id, w.wanted(&e.tenant_id).then(|| (*e).clone())).await {
                            return;
                        }
                    }
                    // Live events went by unseen: read them from the log (the log is the truth).
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !w.catch_up(&feed).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }
}

struct Watcher {
    tx: mpsc::Sender<Result<pb::WatchMessage, Status>>,
    tenant: Option<String>,
    cursor: i64,
    /// The last event had to wait for room: the consumer's connection is full.
    backed_up: bool,
    /// Past the backlog it asked for: from now on it must keep up.
    live: bool,
    max_behind: i64,
}

impl Watcher {
    fn wanted(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    /// False when the consumer has gone.
    async fn send(&mut self, m: pb::watch_message::Message) -> bool {
        let msg = Ok(pb::WatchMessage { message: Some(m) });
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.backed_up = false;
                true
            }
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.backed_up = true;
                self.tx.send(msg).await.is_ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Pass event `id` on (None: another tenant's, only the cursor moves). False when the
    /// stream ends: the consumer went, or it is live, its connection is full and it is more
    /// than `max_behind` events behind the newest; it is then told where to resume.
    async fn deliver(&mut self, feed: &EventFeed, id: i64, event: Option<pb::AuditEvent>) -> bool {
        self.cursor = id;
        if let Some(e) = event
            && !self.send(pb::watch_message::Message::Event(e)).await
        {
            return false;
        }
        let behind = *feed.head.borrow() - self.cursor;
        if self.live && self.backed_up && behind > self.max_behind {
            tracing::info!(resume_after = self.cursor, behind, "a watcher fell behind the live feed");
            let resume = pb::Lagged {
                resume_after_id: self.cursor,
            };
            self.send(pb::watch_message::Message::Lagged(resume)).await;
            return false;
        }
        true
    }

    /// Read from the database up to the feed's head, page by page, at the consumer's pace.
    async fn catch_up(&mut self, feed: &EventFeed) -> bool {
        loop {
            let head = *feed.head.borrow();
            if self.cursor >= head {
                return true;
            }
            let page = match feed.store.events_after(self.tenant.as_deref(), self.cursor, head, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.tx.send(Err(super::store_status(e))).await;
                    return false;
                }
            };
            if page.is_empty() {
                self.cursor = head;
                return true;
            }
            for (t, e) in page {
                if !self.deliver(feed, e.id, Some(audit_out(&t, &e))).await {
                    return false;
                }
            }
        }
    }
}
