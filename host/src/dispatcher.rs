//! The dispatcher: claims due send jobs from the durable queue and sends them through the
//! tenant's Twilio account, once. A send whose outcome is unknown (5xx, timeout, a worker
//! that died between the POST and recording its answer) is reconciled against Twilio's
//! message list before anything is sent again; a resend that could not be reconciled is
//! audited as a possible duplicate. Permanent errors are recorded and not retried; 21610
//! puts the number on the tenant's suppression list. Every transition is audited on the
//! record, fenced by the job's attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::clock::Clock;
use crate::core::dispatch::{SendOutcome, retry_delay};
use crate::core::routing::{Channel, Message, Routed};
use crate::core::twiml;
use crate::secrets::Keyring;
use crate::store::{Job, JobEnd, Store, StoreError};
use crate::twilio::{Call, Sms, TwilioClient, TwilioConfig};

pub const SECRET_TWILIO_API_KEY_SID: &str = "twilio.api_key_sid";
pub const SECRET_TWILIO_API_KEY_SECRET: &str = "twilio.api_key_secret";
pub const SECRET_TWILIO_AUTH_TOKEN: &str = "twilio.auth_token";

/// After this many attempts a job is dead (a replay can revive it).
pub const MAX_ATTEMPTS: i64 = 8;
/// Concurrent Twilio requests per tenant (Twilio answers 429 past its own limit).
pub const PER_TENANT_CONCURRENCY: usize = 16;

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
    /// Test hook: abort the process right after every n-th answer from Twilio, before it is
    /// recorded (`ML_CONNECTOR_FAULT_ABORT_AFTER_SEND=n`): the worst moment to die.
    pub abort_after_send: Option<u64>,
    sends: Arc<std::sync::atomic::AtomicU64>,
    /// Where delivery events go (the poller's channel, so one listener sees everything).
    pub events: Option<tokio::sync::broadcast::Sender<crate::poller::Event>>,
    slots: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

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
            batch: 64,
            abort_after_send: std::env::var("ML_CONNECTOR_FAULT_ABORT_AFTER_SEND")
                .ok()
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0),
            sends: Arc::default(),
            events: None,
            slots: Arc::default(),
        }
    }

    fn slot(&self, tenant: &str) -> Arc<Semaphore> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_TENANT_CONCURRENCY)))
            .clone()
    }

    /// Claim and process one batch of due jobs; how many were claimed.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let jobs = self
            .store
            .claim_jobs(&self.worker, self.clock.now(), self.lease, self.batch)
            .await?;
        let n = jobs.len();
        let mut tasks = tokio::task::JoinSet::new();
        for job in jobs {
            let d = self.clone();
            tasks.spawn(async move {
                let slot = d.slot(&job.tenant);
                let _permit = slot.acquire_owned().await;
                if let Err(e) = d.process(&job).await {
                    tracing::warn!(job = %job.key, error = %e, "job left for its lease to expire");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    /// Work until `shutdown` turns true; jobs under way finish first.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let idle = match self.run_once().await {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim jobs; retrying");
                    true
                }
            };
            if *shutdown.borrow() {
                break;
            }
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    async fn finish(&self, job: &Job, end: JobEnd, event: &str, detail: Value) -> Result<(), StoreError> {
        if !self.store.finish_job(job, &end, event, &detail, self.clock.now()).await? {
            tracing::warn!(job = %job.key, attempt = job.attempt, "fenced out: a newer attempt owns this job");
            return Ok(());
        }
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

    async fn client(&self, tenant: &str) -> Result<Option<(TwilioClient, String)>, StoreError> {
        let account = self.store.twilio_account(tenant).await?;
        let sid = self.store.secret(&self.keys, tenant, SECRET_TWILIO_API_KEY_SID).await?;
        let secret = self.store.secret(&self.keys, tenant, SECRET_TWILIO_API_KEY_SECRET).await?;
        let (Some(sid), Some(secret)) = (sid, secret) else {
            return Ok(None);
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

    fn retry_at(&self, job: &Job, retry_after: Option<Duration>) -> DateTime<Utc> {
        let jitter: f64 = rand::thread_rng().r#gen();
        self.clock.now() + chrono::Duration::from_std(retry_delay(job.attempt as u32, retry_after, jitter)).unwrap_or_default()
    }

    async fn process(&self, job: &Job) -> Result<(), StoreError> {
        let routed: Routed = match serde_json::from_value(job.payload.clone()) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .finish(
                        job,
                        JobEnd::Failed,
                        "send_failed",
                        json!({"error": format!("the job's payload is not a delivery: {e}")}),
                    )
                    .await;
            }
        };
        let Some((client, from)) = self.client(&job.tenant).await? else {
            return self
                .finish(
                    job,
                    JobEnd::Failed,
                    "send_failed",
                    json!({"error": "the tenant has no Twilio account and API key set"}),
                )
                .await;
        };
        let to = routed.delivery.to.phone.clone();
        if routed.delivery.channel == Channel::Sms && self.store.is_suppressed(&job.tenant, &to).await? {
            return self
                .finish(
                    job,
                    JobEnd::Failed,
                    "send_skipped",
                    json!({"to": to, "why": "the number opted out of this tenant's SMS"}),
                )
                .await;
        }
        let callback = |path: &str| format!("{}/twilio/{}/{path}?delivery={}", self.public_url, job.tenant, job.id);
        let mut audit_dup = None;
        if job.reconcile {
            match (&routed.message, routed.delivery.channel) {
                (Message::Sms { body }, Channel::Sms) => {
                    match client.list_messages(&to, &from, job.created_at - chrono::Duration::days(1)).await {
                        Ok(found) => {
                            if let Some(m) = found.iter().find(|m| &m.body == body) {
                                return self
                                    .finish(
                                        job,
                                        JobEnd::Done,
                                        "sent",
                                        json!({"sid": m.sid, "to": to, "channel": "sms", "reconciled": "found in Twilio's message list"}),
                                    )
                                    .await;
                            }
                        }
                        Err(e) => audit_dup = Some(e),
                    }
                }
                // Calls cannot be matched up reliably: an unknown call stays unknown, visible.
                _ => {
                    return self
                        .finish(job, JobEnd::Unknown, "outcome_unknown", json!({"to": to, "channel": "voice"}))
                        .await;
                }
            }
        }
        let outcome = match &routed.message {
            Message::Sms { body } => {
                client
                    .send_sms(&Sms {
                        to: to.clone(),
                        from,
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
                        from,
                        twiml: xml,
                        status_callback: callback("calls/status"),
                    })
                    .await
            }
        };
        if let Some(n) = self.abort_after_send
            && self.sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % n == n - 1
        {
            eprintln!("fault hook: aborting between Twilio's answer and its commit ({})", job.key);
            std::process::abort();
        }
        let channel = routed.delivery.channel;
        let base = json!({"to": to, "channel": channel});
        let with = |extra: Value| {
            let mut b = base.clone();
            if let (Value::Object(m), Value::Object(e)) = (&mut b, extra) {
                m.extend(e);
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
            SendOutcome::Accepted { sid } => self.finish(job, JobEnd::Done, "sent", with(json!({"sid": sid}))).await,
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
                    JobEnd::Failed,
                    "send_failed",
                    with(json!({"code": code, "error": message, "opted_out": opted_out})),
                )
                .await
            }
            _ if job.attempt >= MAX_ATTEMPTS => {
                self.finish(
                    job,
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
                    JobEnd::Retry { run_at, reconcile: true },
                    "outcome_unknown",
                    with(json!({"error": reason, "retry_at": run_at.to_rfc3339()})),
                )
                .await
            }
        }
    }
}
