//! The dispatcher: claims due send jobs from the durable queue and sends them through the
//! tenant's Twilio account, once. A send whose outcome is unknown (5xx, timeout, a worker
//! that died between the POST and recording its answer) is reconciled against Twilio's
//! message list before anything is sent again; a resend that could not be reconciled is
//! audited as a possible duplicate. Permanent errors are recorded and not retried; 21610
//! puts the number on the tenant's suppression list. Every transition is audited on the
//! record, fenced by the job's attempt.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::core::dispatch::{CallReconciliation, SendOutcome, SmsReconciliation, reconcile_call, reconcile_sms, retry_delay};
use crate::core::routing::{Channel, Message, Routed};
use crate::core::twiml;
use crate::group_commit::GroupCommit;
use crate::secrets::{Keyring, Origin};
use crate::store::{Finish, InFlight, Job, JobEnd, Sent, Store, StoreError};
use crate::twilio::{Call, LIST_PAGE, Sms, TwilioClient, TwilioConfig};

pub const SECRET_TWILIO_API_KEY_SID: &str = "twilio.api_key_sid";
pub const SECRET_TWILIO_API_KEY_SECRET: &str = "twilio.api_key_secret";
pub const SECRET_TWILIO_AUTH_TOKEN: &str = "twilio.auth_token";

/// After this many attempts a job is dead (a replay can revive it).
pub const MAX_ATTEMPTS: i64 = 8;
/// Concurrent Twilio requests per tenant and host, unless configured
/// (`ML_CONNECTOR_TWILIO_CONCURRENCY`); Twilio answers 429 past its own limit.
pub const PER_TENANT_CONCURRENCY: usize = 16;

/// A confirmation of an answer: an SMS of its own, to the person who answered.
#[derive(Debug, serde::Deserialize)]
struct Confirmation {
    to: String,
    #[serde(default)]
    from: String,
    body: String,
}

/// A claimed job's payload, read once, at claim, into what its kind is sent from.
enum Work {
    /// An alert: the plugin's delivery and the words it rendered (the alert beside them in
    /// the payload is skipped, not read).
    Send(Routed),
    /// A confirmation of an answer.
    Confirm(Confirmation),
    /// A QAD write-back, its fields as queued (`Null` if the payload is missing).
    Qad(Value),
    /// Not what the job's kind needs: the job fails, naming why.
    Unreadable(String),
}

impl Work {
    fn of(job: &Job) -> Work {
        match job.kind.as_str() {
            "qad_comment" | "qad_decision" => Work::Qad(serde_json::from_str(&job.payload).unwrap_or(Value::Null)),
            "confirm" => serde_json::from_str(&job.payload).map_or_else(|e| Work::Unreadable(e.to_string()), Work::Confirm),
            _ => serde_json::from_str(&job.payload).map_or_else(|e| Work::Unreadable(e.to_string()), Work::Send),
        }
    }

    /// The phone it goes to, for the opt-out check.
    fn to(&self) -> Option<&str> {
        match self {
            Work::Send(r) => Some(&r.delivery.to.phone),
            Work::Confirm(c) => Some(&c.to),
            Work::Qad(_) | Work::Unreadable(_) => None,
        }
    }
}

/// Where reconciling an unknown send left it.
enum Reconciled {
    /// Its attempt ended there: proven sent, to ask again later, or unknown for good.
    Ended,
    /// Send it now: `why` that is no duplicate; `doubt`, why it may be one.
    SendNow { why: Option<&'static str>, doubt: Option<String> },
}

/// The words an in-flight SMS job sends, when its payload reads (a message with other words
/// cannot be the one an unknown SMS is looking for; one that does not read might be).
fn sms_words(job: &InFlight) -> Option<String> {
    match job.kind.as_str() {
        "confirm" => serde_json::from_str::<Confirmation>(&job.payload).ok().map(|c| c.body),
        _ => match serde_json::from_str::<Routed>(&job.payload).ok()?.message {
            Message::Sms { body } => Some(body),
            Message::Voice { .. } => None,
        },
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    pub store: Store,
    pub keys: Arc<Keyring>,
    pub http: reqwest::Client,
    pub clock: Arc<dyn Clock>,
    /// The public base URL Twilio calls back (`ML_CONNECTOR_PUBLIC_URL`).
    pub public_url: String,
    pub worker: String,
    pub lease: chrono::Duration,
    pub batch: i64,
    /// Twilio requests in flight per tenant on this host.
    pub per_tenant_concurrency: usize,
    /// Test hook: abort the process right after every n-th answer from Twilio, before it is
    /// recorded (`ML_CONNECTOR_FAULT_ABORT_AFTER_SEND=n`): the worst moment to die.
    pub abort_after_send: Option<u64>,
    sends: Arc<std::sync::atomic::AtomicU64>,
    /// Where delivery events go (the poller's channel, so one listener sees everything).
    pub events: Option<tokio::sync::broadcast::Sender<crate::poller::Event>>,
    slots: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    clients: Arc<Mutex<ClientCache>>,
    /// Rung when new jobs may be due (another host announced some), so work starts at once.
    pub wake: Arc<tokio::sync::Notify>,
    /// Shutting down: claimed jobs not yet started are handed back instead of started.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Attempts' ends, committed together (started on first use, inside the runtime).
    finisher: Arc<std::sync::OnceLock<GroupCommit<Finish, bool>>>,
}

/// The jobs a worker holds (id → attempt), whose leases it renews.
type Held = Arc<Mutex<HashMap<i64, i64>>>;

/// A job's place in [`Held`], given up when its task ends however it ends.
struct Holding(Held, i64);

impl Holding {
    fn new(held: &Held, job: &Job) -> Self {
        held.lock().unwrap_or_else(|p| p.into_inner()).insert(job.id, job.attempt);
        Holding(held.clone(), job.id)
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
    }
}

/// The most attempts' ends one commit takes.
const FINISH_BATCH: usize = 256;

type ClientCache = HashMap<String, (std::time::Instant, Option<(TwilioClient, String)>)>;

/// How long a tenant's opened Twilio credentials are reused.
const CLIENT_TTL: Duration = Duration::from_secs(10);

impl Dispatcher {
    pub fn new(store: Store, keys: Arc<Keyring>, http: reqwest::Client, clock: Arc<dyn Clock>, public_url: &str) -> Self {
        Dispatcher {
            store,
            keys,
            http,
            clock,
            public_url: public_url.trim_end_matches('/').to_string(),
            worker: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            lease: chrono::Duration::seconds(60),
            batch: 256,
            per_tenant_concurrency: PER_TENANT_CONCURRENCY,
            abort_after_send: std::env::var("ML_CONNECTOR_FAULT_ABORT_AFTER_SEND")
                .ok()
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0),
            sends: Arc::default(),
            events: None,
            slots: Arc::default(),
            clients: Arc::default(),
            wake: Arc::default(),
            stopping: Arc::default(),
            finisher: Arc::default(),
        }
    }

    /// The group-commit writer of attempts' ends. A batch that fails is retried one by one,
    /// so one attempt's bad data costs only that attempt.
    fn finisher(&self) -> &GroupCommit<Finish, bool> {
        self.finisher.get_or_init(|| {
            let (store, clock) = (self.store.clone(), self.clock.clone());
            GroupCommit::spawn(FINISH_BATCH, move |batch: Vec<Finish>| {
                let (store, now) = (store.clone(), clock.now());
                async move {
                    match store.finish_sends(&batch, now).await {
                        Ok(done) => Ok(done),
                        Err(e) if batch.len() == 1 => Err(e.to_string()),
                        Err(_) => {
                            let mut done = Vec::with_capacity(batch.len());
                            for f in batch {
                                // An attempt whose own commit fails is left to its lease.
                                done.push(
                                    store
                                        .finish_sends(std::slice::from_ref(&f), now)
                                        .await
                                        .map(|d| d[0])
                                        .unwrap_or(false),
                                );
                            }
                            Ok(done)
                        }
                    }
                }
            })
        })
    }

    fn slot(&self, tenant: &str) -> Arc<Semaphore> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant_concurrency.max(1))))
            .clone()
    }

    /// Claim and process one batch of due jobs; how many were claimed.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let held = Held::default();
        let mut tasks = JoinSet::new();
        let n = self.claim_into(self.batch, &held, &mut tasks).await?;
        tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => {}
            _ = self.keep_leases(&held) => {}
        }
        Ok(n)
    }

    /// Claim up to `limit` due jobs and start each in `tasks`; how many were claimed. Each
    /// is in `held` (its lease renewed) until its task ends.
    async fn claim_into(&self, limit: i64, held: &Held, tasks: &mut JoinSet<()>) -> Result<usize, StoreError> {
        let jobs = self.store.claim_jobs(&self.worker, self.clock.now(), self.lease, limit).await?;
        let n = jobs.len();
        let jobs: Vec<(Job, Work)> = jobs
            .into_iter()
            .map(|job| {
                let work = Work::of(&job);
                (job, work)
            })
            .collect();
        let opted_out = match self.opted_out_among(&jobs).await {
            Ok(o) => Arc::new(o),
            Err(e) => {
                // Not started: handed back at once rather than left to their leases.
                for (job, _) in &jobs {
                    let _ = self.store.release_job(job, self.clock.now()).await;
                }
                return Err(e);
            }
        };
        for (job, work) in jobs {
            let job = Arc::new(job);
            let d = self.clone();
            let opted_out = opted_out.clone();
            let holding = Holding::new(held, &job);
            tasks.spawn(async move {
                let _holding = holding;
                let slot = d.slot(&job.tenant);
                // Held while Twilio has the request, not while its answer is committed: the
                // cap is on requests in flight, and commits are shared (group commit).
                let permit = slot.acquire_owned().await.ok();
                if d.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Err(e) = d.store.release_job(&job, d.clock.now()).await {
                        tracing::warn!(job = %job.key, error = %e, "job left for its lease to expire");
                    }
                    return;
                }
                let span = tracing::info_span!(
                    "job",
                    tenant = %job.tenant,
                    job_id = job.id,
                    job = %job.key,
                    record_kind = %job.record_kind,
                    record = %job.record_key,
                    sid = tracing::field::Empty
                );
                if let Err(e) = tracing::Instrument::instrument(d.process(&job, work, &opted_out, permit), span).await {
                    tracing::warn!(job = %job.key, error = %e, "job left for its lease to expire");
                }
            });
        }
        Ok(n)
    }

    /// Keep the leases of the jobs in `held` alive while they are worked on (a slow Twilio
    /// must not hand a job to another worker mid-send); fenced, so jobs already finished or
    /// taken over are untouched. Never returns.
    async fn keep_leases(&self, held: &Held) {
        let every = (self.lease / 3)
            .to_std()
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let claimed: Vec<(i64, i64)> = held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(id, attempt)| (*id, *attempt))
                .collect();
            if claimed.is_empty() {
                continue;
            }
            let until = self.clock.now() + self.lease;
            if let Err(e) = self.store.renew_job_leases(&self.worker, &claimed, until).await {
                tracing::warn!(error = %e, "cannot renew job leases; trying again");
            }
        }
    }

    /// From now on, claimed jobs not yet started go back to the queue instead of starting
    /// (what `run` does when its shutdown turns true; a caller that must know it took
    /// effect before it says so calls this first).
    pub fn stop_starting(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Work until `shutdown` turns true: sends under way finish, claimed jobs not yet started
    /// go back to the queue for the next host or run. A pipeline, not batch after batch:
    /// once fewer than half a batch are under way it claims more, so the last sends of one
    /// claim never leave Twilio's slots idle.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let watcher = tokio::spawn({
            let (mut sd, stopping) = (shutdown.clone(), self.stopping.clone());
            async move {
                let _ = sd.wait_for(|s| *s).await;
                stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let held = Held::default();
        let work = async {
            let mut tasks = JoinSet::new();
            let refill_below = (self.batch.max(2) / 2) as usize;
            loop {
                if *shutdown.borrow() {
                    break;
                }
                let mut claimed = 0;
                if tasks.len() < refill_below {
                    match self.claim_into(self.batch - tasks.len() as i64, &held, &mut tasks).await {
                        Ok(n) => claimed = n,
                        Err(e) => tracing::warn!(error = %e, "cannot claim jobs; retrying"),
                    }
                }
                if claimed > 0 && tasks.len() < refill_below {
                    continue; // more may be due already
                }
                tokio::select! {
                    Some(_) = tasks.join_next() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
            // Under way: finishes; claimed and not started: handed back (`stopping`).
            while tasks.join_next().await.is_some() {}
        };
        tokio::select! {
            _ = work => {}
            _ = self.keep_leases(&held) => {}
        }
        watcher.abort();
    }

    /// End an attempt; `channel` (when the payload was read) labels its metric.
    async fn finish(&self, job: &Arc<Job>, channel: Option<Channel>, end: JobEnd, event: &str, detail: Value) -> Result<(), StoreError> {
        self.finish_with(job, channel, end, event, detail, None).await
    }

    async fn finish_sent(&self, job: &Arc<Job>, detail: Value, sent: &Sent) -> Result<(), StoreError> {
        self.finish_with(job, Some(sent.channel), JobEnd::Done, "sent", detail, Some(sent))
            .await
    }

    async fn finish_with(
        &self,
        job: &Arc<Job>,
        channel: Option<Channel>,
        end: JobEnd,
        event: &str,
        detail: Value,
        sent: Option<&Sent>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let finish = Finish::of(job, &end, event, &detail, sent);
        if !self.finisher().submit(finish).await.map_err(StoreError::GroupCommit)? {
            tracing::warn!(job = %job.key, attempt = job.attempt, "fenced out: a newer attempt owns this job");
            return Ok(());
        }
        if let Some(s) = sent {
            tracing::Span::current().record("sid", s.sid.as_str());
            tracing::info!(sid = %s.sid, to = %s.to, "accepted by Twilio");
        }
        let channel = channel.map(|c| c.as_str());
        let backoff = match &end {
            JobEnd::Retry { run_at, .. } => Some((*run_at - now).num_milliseconds().max(0) as f64 / 1000.0),
            _ => None,
        };
        crate::metrics::job_finished(&job.tenant, &job.kind, event, channel, backoff);
        if let Some(tx) = &self.events {
            let _ = tx.send(crate::poller::Event::Delivery {
                tenant: job.tenant.clone(),
                record_kind: job.record_kind.clone(),
                record_key: job.record_key.clone(),
                event: event.to_string(),
                detail,
            });
        }
        Ok(())
    }

    /// A QAD write-back: a comment on the record, or an approval decision. Transient QAD
    /// failures are retried with back-off; a refusal (`success:false`) is recorded, not retried.
    async fn process_qad(&self, job: &Arc<Job>, p: &Value) -> Result<(), StoreError> {
        let tenant = self.store.tenant(&job.tenant).await?;
        let client = match crate::poller::qad_client(&self.store, &self.keys, &self.http, crate::qad::RetryPolicy::default(), &tenant).await
        {
            Ok(c) => c,
            Err(crate::poller::PollError::Store(e)) => return Err(e),
            Err(e) => {
                return self
                    .finish(job, None, JobEnd::Failed, "qad_write_failed", json!({"error": e.to_string()}))
                    .await;
            }
        };
        let (path, body, what) = if job.kind == "qad_comment" {
            (
                "/api/erp/transactionComments",
                json!({"transactionComments": [{"domainCode": tenant.qad_domain, "referenceType": p["reference_type"], "referenceNumber": p["number"],
                                                 "commentText": p["text"], "commentDate": p["date"]}]}),
                "comment",
            )
        } else {
            (
                "/api/erp/purchaseOrderApprovals",
                json!({"purchaseOrderApprovals": [{"domainCode": tenant.qad_domain, "purchaseOrderNumber": p["po"], "action": p["action"],
                                                    "approver": p["approver"], "comment": p["comment"]}]}),
                "decision",
            )
        };
        match client.write(path, &body).await {
            Ok(()) => {
                let detail = json!({"what": what, "text": p["text"], "action": p["action"]});
                self.finish(job, None, JobEnd::Done, "qad_written", detail).await
            }
            Err(e) if e.is_transient() && job.attempt < MAX_ATTEMPTS => {
                let run_at = self.retry_at(job, None);
                self.finish(
                    job,
                    None,
                    JobEnd::Retry { run_at, reconcile: false },
                    "qad_write_retrying",
                    json!({"what": what, "error": e.to_string(), "retry_at": run_at.to_rfc3339()}),
                )
                .await
            }
            Err(e) if e.is_transient() => {
                self.finish(job, None, JobEnd::Dead, "dead", json!({"what": what, "error": e.to_string()}))
                    .await
            }
            Err(e) => {
                self.finish(
                    job,
                    None,
                    JobEnd::Failed,
                    "qad_write_failed",
                    json!({"what": what, "error": e.to_string()}),
                )
                .await
            }
        }
    }

    /// The tenant's Twilio client, its credentials opened at most every few seconds rather
    /// than for every job (a rotated key applies within `CLIENT_TTL`).
    async fn cached_client(&self, tenant: &str) -> Result<Option<(TwilioClient, String)>, StoreError> {
        if let Some((at, c)) = self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(tenant)
            && at.elapsed() < CLIENT_TTL
        {
            return Ok(c.clone());
        }
        let c = self.client(tenant).await?;
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_string(), (std::time::Instant::now(), c.clone()));
        Ok(c)
    }

    async fn client(&self, tenant: &str) -> Result<Option<(TwilioClient, String)>, StoreError> {
        let account = self.store.twilio_account(tenant).await?;
        // The key goes only to the origin it was set for, over a transport the tenant allows;
        // otherwise the tenant has no usable key, as if none were set.
        let Ok(origin) = Origin::of(&account.base_url) else {
            return Ok(None);
        };
        let secret = |field| self.store.secret(&self.keys, tenant, field, &origin);
        let (sid, secret) = match (secret(SECRET_TWILIO_API_KEY_SID).await, secret(SECRET_TWILIO_API_KEY_SECRET).await) {
            (Ok(Some(sid)), Ok(Some(secret))) => (sid, secret),
            (Err(e @ StoreError::Transport(_)), _) | (_, Err(e @ StoreError::Transport(_))) => {
                tracing::warn!(tenant, error = %e, "Twilio key not used");
                return Ok(None);
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
            _ => return Ok(None),
        };
        if account.account_sid.is_empty() || account.from.is_empty() {
            return Ok(None);
        }
        let cfg = TwilioConfig {
            base_url: account.base_url,
            account_sid: account.account_sid,
            api_key_sid: sid.expose().to_string(),
            api_key_secret: secret,
        };
        Ok(Some((TwilioClient::new(self.http.clone(), cfg), account.from)))
    }

    /// Reconcile a send whose last outcome was unknown, before anything is sent again: a
    /// status callback that carried the job's id proves it sent; else Twilio's list of
    /// messages or calls to the number decides (`core::dispatch`). Ends the attempt itself
    /// unless the send is to go out now.
    async fn reconcile(
        &self,
        job: &Arc<Job>,
        client: &TwilioClient,
        message: &Message,
        channel: Channel,
        to: &str,
        from: &str,
    ) -> Result<Reconciled, StoreError> {
        let sent = |sid: &str| Sent {
            sid: sid.to_string(),
            channel,
            to: to.to_string(),
            from: from.to_string(),
        };
        if let Some((Some(sid), _)) = self.store.delivery(job.id).await? {
            let detail = json!({"sid": sid, "to": to, "channel": channel, "reconciled": "its status callback arrived"});
            self.finish_sent(job, detail, &sent(&sid)).await?;
            return Ok(Reconciled::Ended);
        }
        match (message, channel) {
            (Message::Sms { body }, Channel::Sms) => {
                // Twilio's clock against ours, generously: a message of this job taken for
                // older would be sent twice, while an older one with its words that no
                // delivery of ours holds is rare, and was then this person's words anyway.
                let since = job.created_at - chrono::Duration::hours(1);
                let listed = match client.list_messages(to, from).await {
                    Ok(listed) => listed,
                    Err(e) => return Ok(Reconciled::SendNow { why: None, doubt: Some(e) }),
                };
                // In this order, as for calls: a listed message of another delivery is then
                // either still being sent or already recorded.
                let placing: Vec<String> = self
                    .store
                    .sends_being_placed(Channel::Sms, &job.tenant, to, job.id)
                    .await?
                    .into_iter()
                    .filter(|other| sms_words(other).is_none_or(|w| &w == body))
                    .map(|other| other.key)
                    .collect();
                let same_words: Vec<String> = listed.iter().filter(|m| &m.body == body).map(|m| m.sid.clone()).collect();
                let known = self.store.sms_sids_among(&job.tenant, to, from, &same_words).await?;
                match reconcile_sms(&listed, LIST_PAGE, body, &known, &placing, since.timestamp()) {
                    SmsReconciliation::Sent { sid } => {
                        let detail = json!({"sid": sid, "to": to, "channel": "sms", "reconciled": "found in Twilio's message list"});
                        self.finish_sent(job, detail, &sent(&sid)).await?;
                        Ok(Reconciled::Ended)
                    }
                    SmsReconciliation::NotSent => Ok(Reconciled::SendNow {
                        why: Some("no message in Twilio's list can be this one: sent now"),
                        doubt: None,
                    }),
                    SmsReconciliation::Wait { why } if job.attempt < MAX_ATTEMPTS => self.ask_again(job, channel, to, why).await,
                    // In doubt after every attempt, or the list may not show it all: sent,
                    // flagged as the possible duplicate it may be, as when it cannot be read.
                    SmsReconciliation::Wait { why } | SmsReconciliation::Unproven { why } => Ok(Reconciled::SendNow {
                        why: None,
                        doubt: Some(why),
                    }),
                }
            }
            // A call carries nothing of ours that Twilio's list shows: it is placed again only
            // when no call in the list could be it; otherwise it stays unknown, visible.
            _ => {
                let verdict = match client.list_calls(to, from).await {
                    Ok(listed) => {
                        // Read after the list, and the deliveries being placed before those
                        // recorded: a listed call of another delivery is then either still
                        // being placed or already recorded (one commit does both).
                        let placing: Vec<String> = self
                            .store
                            .sends_being_placed(Channel::Voice, &job.tenant, to, job.id)
                            .await?
                            .into_iter()
                            .map(|other| other.key)
                            .collect();
                        let sids: Vec<String> = listed.iter().map(|c| c.sid.clone()).collect();
                        let known = self.store.known_call_sids(&sids).await?;
                        let since = (job.created_at - chrono::Duration::minutes(1)).timestamp();
                        reconcile_call(&listed, LIST_PAGE, &known, &placing, since)
                    }
                    // The list may read next time: a blip should not settle the call.
                    Err(e) => CallReconciliation::Wait {
                        why: format!("Twilio's call list could not be read: {e}"),
                    },
                };
                match verdict {
                    CallReconciliation::NotPlaced => Ok(Reconciled::SendNow {
                        why: Some("no call in Twilio's list can be this one: placed now"),
                        doubt: None,
                    }),
                    CallReconciliation::Wait { why } if job.attempt < MAX_ATTEMPTS => self.ask_again(job, channel, to, why).await,
                    CallReconciliation::Wait { why } | CallReconciliation::Unproven { why } => {
                        let detail = json!({"to": to, "channel": "voice", "why": why});
                        self.finish(job, Some(channel), JobEnd::Unknown, "outcome_unknown", detail).await?;
                        Ok(Reconciled::Ended)
                    }
                }
            }
        }
    }

    /// The outcome is still unknown and may be known later: the job is tried again, to be
    /// reconciled again.
    async fn ask_again(&self, job: &Arc<Job>, channel: Channel, to: &str, why: String) -> Result<Reconciled, StoreError> {
        let run_at = self.retry_at(job, None);
        let detail = json!({"to": to, "channel": channel, "why": why, "retry_at": run_at.to_rfc3339()});
        self.finish(
            job,
            Some(channel),
            JobEnd::Retry { run_at, reconcile: true },
            "outcome_unknown",
            detail,
        )
        .await?;
        Ok(Reconciled::Ended)
    }

    fn retry_at(&self, job: &Job, retry_after: Option<Duration>) -> DateTime<Utc> {
        let jitter: f64 = rand::thread_rng().r#gen();
        self.clock.now() + chrono::Duration::from_std(retry_delay(job.attempt as u32, retry_after, jitter)).unwrap_or_default()
    }

    /// The recipients of a claimed batch who opted out of their tenant's SMS: one read per
    /// tenant for the batch rather than one per send. (Twilio refuses an opted-out number
    /// itself, 21610, should a STOP land between this read and the send.)
    async fn opted_out_among(&self, jobs: &[(Job, Work)]) -> Result<HashSet<(String, String)>, StoreError> {
        let mut by_tenant: HashMap<&str, Vec<String>> = HashMap::new();
        for (job, work) in jobs {
            if let Some(to) = work.to() {
                by_tenant.entry(job.tenant.as_str()).or_default().push(to.to_string());
            }
        }
        let mut out = HashSet::new();
        for (tenant, phones) in by_tenant {
            for phone in self.store.suppressed_among(tenant, &phones).await? {
                out.insert((tenant.to_string(), phone));
            }
        }
        Ok(out)
    }

    async fn process(
        &self,
        job: &Arc<Job>,
        work: Work,
        opted_out: &HashSet<(String, String)>,
        twilio_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), StoreError> {
        // A send carries the plugin's delivery and words; a confirmation only its words.
        let (channel, to, message, from_override) = match work {
            Work::Qad(fields) => return self.process_qad(job, &fields).await,
            Work::Send(r) => (r.delivery.channel, r.delivery.to.phone, r.message, None),
            Work::Confirm(c) => (
                Channel::Sms,
                c.to,
                Message::Sms { body: c.body },
                Some(c.from).filter(|f| !f.is_empty()),
            ),
            Work::Unreadable(e) => {
                let detail = json!({"error": format!("the job's payload is not a delivery: {e}")});
                return self.finish(job, None, JobEnd::Failed, "send_failed", detail).await;
            }
        };
        let Some((client, tenant_from)) = self.cached_client(&job.tenant).await? else {
            return self
                .finish(
                    job,
                    Some(channel),
                    JobEnd::Failed,
                    "send_failed",
                    json!({"error": "the tenant has no Twilio account and API key set"}),
                )
                .await;
        };
        let from = from_override.unwrap_or(tenant_from);
        let mut note = None;
        if opted_out.contains(&(job.tenant.clone(), to.clone())) {
            let (_, call_opted_out) = self.store.answer_settings(&job.tenant).await?;
            if channel == Channel::Sms || !call_opted_out {
                return self
                    .finish(
                        job,
                        Some(channel),
                        JobEnd::Failed,
                        "send_skipped",
                        json!({"to": to, "channel": channel, "why": "the number opted out of this tenant's SMS"}),
                    )
                    .await;
            }
            note = Some("the number opted out of SMS; the tenant's setting lets calls through (STOP blocks messages only)");
        }
        let callback = |path: &str| format!("{}/twilio/{}/{path}?delivery={}", self.public_url, job.tenant, job.id);
        let (mut reconciled, mut audit_dup) = (None, None);
        if job.reconcile {
            match self.reconcile(job, &client, &message, channel, &to, &from).await? {
                Reconciled::Ended => return Ok(()),
                Reconciled::SendNow { why, doubt } => (reconciled, audit_dup) = (why, doubt),
            }
        }
        let outcome = match &message {
            Message::Sms { body } => {
                client
                    .send_sms(&Sms {
                        to: to.clone(),
                        from: from.clone(),
                        body: body.clone(),
                        status_callback: callback("messages/status"),
                    })
                    .await
            }
            Message::Voice { say, choices } => {
                let xml = twiml::voice(say, choices, &callback("calls/gather"));
                client
                    .place_call(&Call {
                        to: to.clone(),
                        from: from.clone(),
                        twiml: xml,
                        status_callback: callback("calls/status"),
                    })
                    .await
            }
        };
        drop(twilio_slot);
        if let Some(n) = self.abort_after_send
            && self.sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % n == n - 1
        {
            eprintln!("fault hook: aborting between Twilio's answer and its commit ({})", job.key);
            std::process::abort();
        }
        let base = json!({"to": to, "channel": channel, "note": note});
        let with = |extra: Value| {
            let mut b = base.clone();
            if let (Value::Object(m), Value::Object(e)) = (&mut b, extra) {
                m.extend(e);
            }
            if let (Some(r), Value::Object(m)) = (reconciled, &mut b) {
                m.insert("reconciled".into(), json!(r));
            }
            if let (Some(e), Value::Object(m)) = (&audit_dup, &mut b) {
                m.insert(
                    "possible_duplicate".into(),
                    json!(format!("sent again after an unknown outcome that could not be reconciled: {e}")),
                );
            }
            b
        };
        match outcome {
            SendOutcome::Accepted { sid } => {
                let sent = Sent {
                    sid: sid.clone(),
                    channel,
                    to: to.clone(),
                    from: from.clone(),
                };
                self.finish_sent(job, with(json!({"sid": sid})), &sent).await
            }
            SendOutcome::Permanent { code, message, opted_out } => {
                if opted_out {
                    self.store
                        .suppress(
                            &job.tenant,
                            &to,
                            "Twilio answered 21610 (the recipient opted out)",
                            self.clock.now(),
                        )
                        .await?;
                }
                self.finish(
                    job,
                    Some(channel),
                    JobEnd::Failed,
                    "send_failed",
                    with(json!({"code": code, "error": message, "opted_out": opted_out})),
                )
                .await
            }
            _ if job.attempt >= MAX_ATTEMPTS => {
                self.finish(
                    job,
                    Some(channel),
                    JobEnd::Dead,
                    "dead",
                    with(json!({"error": format!("no success after {} attempts", job.attempt)})),
                )
                .await
            }
            SendOutcome::Throttled { retry_after } => {
                let run_at = self.retry_at(job, retry_after);
                self.finish(
                    job,
                    Some(channel),
                    JobEnd::Retry { run_at, reconcile: false },
                    "throttled",
                    with(json!({"retry_at": run_at.to_rfc3339()})),
                )
                .await
            }
            SendOutcome::Unreachable { reason } => {
                let run_at = self.retry_at(job, None);
                self.finish(
                    job,
                    Some(channel),
                    JobEnd::Retry { run_at, reconcile: false },
                    "retrying",
                    with(json!({"error": reason, "retry_at": run_at.to_rfc3339()})),
                )
                .await
            }
            SendOutcome::Unknown { reason } => {
                let run_at = self.retry_at(job, None);
                self.finish(
                    job,
                    Some(channel),
                    JobEnd::Retry { run_at, reconcile: true },
                    "outcome_unknown",
                    with(json!({"error": reason, "retry_at": run_at.to_rfc3339()})),
                )
                .await
            }
        }
    }
}
