//! The inbox: processes the webhooks the HTTP adapter queued, in arrival order. A status
//! moves its delivery forward (never back) and can prove an unknown send was made; an
//! inbound SMS is an opt-out word, or an answer matched to the alert it answers (by the
//! alert's reference from the number it went to — proof —, else, unproven and only when the
//! reply quoted no reference at all, the latest open alert sent to that number) and read by
//! the tenant's plugin; a keypress likewise (its own proof). Who answered (name, role) is the
//! record's own person for the delivery's number and role, never the plugin's label. `core::intake::judge` decides what the answer may do (decide, cancel escalations).
//! A reply that matches nothing is kept within limits for a retention, or counted and
//! dropped. An answer's effects (audit, cancelled escalations, the confirmation, the QAD
//! comment and decision as jobs) commit together. Processing is
//! idempotent: every job an event creates is keyed by the event, so a crash mid-way and a
//! second processing change nothing twice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::core::intake::{self, HookKind, Keyword, Proof, Throttled, param};
use crate::core::model::RecordKind;
use crate::core::people::Role;
use crate::core::routing::{AlertInput, Answer, Channel, Delivery, PluginContext, Reply, ReplyAction, person_of};
use crate::core::schedule::Schedule;
use crate::poller::{Event, Poller};
use crate::store::{Answered, JobInfo, NewJob, StatusReport, StoreError, UnmatchedReply, WebhookEvent};

/// What a call says after a keypress when the plugin gave no words.
pub const DEFAULT_SPOKEN_CONFIRMATION: &str = "Thank you. Your answer was recorded.";

/// How often the inbox purges replies that matched nothing past their retention, and
/// processed webhook events past theirs.
pub const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Tenants whose events one inbox processes at once (each tenant's in arrival order), so a
/// tenant whose plugin is slow (up to its wall-clock limit per call) delays only itself.
pub const TENANTS_AT_ONCE: usize = 16;

/// Events grouped by tenant, each group in the order given (arrival order), the groups in
/// the order of their tenant's first event.
fn by_tenant(events: Vec<WebhookEvent>) -> Vec<Vec<WebhookEvent>> {
    let mut groups: Vec<Vec<WebhookEvent>> = Vec::new();
    for e in events {
        match groups.iter_mut().find(|g| g[0].tenant == e.tenant) {
            Some(g) => g.push(e),
            None => groups.push(vec![e]),
        }
    }
    groups
}

/// Who a send went to, as the record names them: the name and role of the record's person
/// with the delivery's (number, role); both `None` when the job carries no such pair (a job
/// queued before deliveries were checked for it, or a payload that cannot be read).
fn recipient(job: &JobInfo) -> (Option<String>, Option<Role>) {
    let alert = serde_json::from_value::<AlertInput>(job.payload["alert"].clone()).ok();
    let delivery = serde_json::from_value::<Delivery>(job.payload["delivery"].clone()).ok();
    match (alert, delivery) {
        (Some(a), Some(d)) => match person_of(&a, &d) {
            Some(p) => (Some(p.name.clone()), Some(p.role)),
            None => (None, None),
        },
        _ => (None, None),
    }
}

/// An answer as heard: what was said, on which channel, what proves who said it.
struct Heard<'a> {
    answer: Answer,
    channel: Channel,
    proof: Proof,
    person: &'a str,
    our_number: &'a str,
}

#[derive(Clone)]
pub struct Inbox {
    pub poller: Poller,
    /// Rung by the HTTP adapter when it queued an event, so processing starts at once.
    pub wake: Arc<Notify>,
    pub lease: chrono::Duration,
    pub batch: i64,
}

impl Inbox {
    pub fn new(poller: Poller) -> Self {
        Inbox {
            poller,
            wake: Arc::new(Notify::new()),
            lease: chrono::Duration::seconds(60),
            batch: 256,
        }
    }

    /// Process one batch of queued events; how many. Tenants are processed concurrently
    /// (at most [`TENANTS_AT_ONCE`]), each tenant's events one after another in arrival order.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = self.poller.clock.now();
        let events = self
            .poller
            .store
            .claim_webhooks(now, self.lease, chrono::Duration::seconds(30), self.batch)
            .await?;
        let n = events.len();
        let turns = Arc::new(tokio::sync::Semaphore::new(TENANTS_AT_ONCE));
        let mut tenants = tokio::task::JoinSet::new();
        for group in by_tenant(events) {
            let (inbox, turns) = (self.clone(), turns.clone());
            tenants.spawn(async move {
                let _turn = turns.acquire_owned().await.expect("the semaphore is never closed");
                inbox.process_in_order(&group).await
            });
        }
        // Every tenant's run ends (a store error stops only its tenant; its events keep
        // their lease and are taken again); the first error is reported.
        let mut first_error = None;
        while let Some(done) = tenants.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
            }
        }
        first_error.map_or(Ok(n), Err)
    }

    /// One tenant's events, in order; stops at the first store error.
    async fn process_in_order(&self, events: &[WebhookEvent]) -> Result<(), StoreError> {
        for e in events {
            let sid = e
                .params
                .iter()
                .find(|(k, _)| k == "MessageSid" || k == "CallSid")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            let span = tracing::info_span!("webhook", tenant = %e.tenant, kind = %e.kind, event_id = e.id, sid = %sid);
            let outcome = tracing::Instrument::instrument(self.process(e), span).await?;
            tracing::debug!(tenant = %e.tenant, event_id = e.id, sid = %sid, outcome = %outcome, "webhook processed");
            self.poller.store.finish_webhook(e.id, &outcome, self.poller.clock.now()).await?;
        }
        Ok(())
    }

    /// Purge replies that matched nothing past their retention (and spent counters), and
    /// processed webhook events past [`intake::EVENT_RETENTION_DAYS`].
    pub async fn purge(&self) -> Result<crate::store::Purged, StoreError> {
        let purged = self.poller.store.purge_unmatched(self.poller.clock.now()).await?;
        if purged != crate::store::Purged::default() {
            tracing::info!(
                replies = purged.replies,
                counters = purged.counters,
                events = purged.events,
                "purged replies that matched nothing and processed webhooks past their retention"
            );
        }
        Ok(purged)
    }

    /// Work until `shutdown` turns true; purge every [`PURGE_EVERY`].
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut last_purge: Option<std::time::Instant> = None;
        loop {
            if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
                if let Err(e) = self.purge().await {
                    tracing::warn!(error = %e, "cannot purge replies that matched nothing or old webhooks; retrying later");
                }
                last_purge = Some(std::time::Instant::now());
            }
            let idle = match self.run_once().await {
                Ok(n) => n == 0,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot process webhooks; retrying");
                    true
                }
            };
            if *shutdown.borrow() {
                break;
            }
            if idle {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// Process one event now (a `<Gather>` answer, whose HTTP answer must speak the
    /// confirmation); its outcome. `None`: another processor holds it.
    pub async fn process_now(&self, id: i64) -> Result<Option<Value>, StoreError> {
        let Some(e) = self.poller.store.claim_webhook(id, self.poller.clock.now(), self.lease).await? else {
            return Ok(None);
        };
        let outcome = self.process(&e).await?;
        self.poller.store.finish_webhook(e.id, &outcome, self.poller.clock.now()).await?;
        Ok(Some(outcome))
    }

    /// The outcome to keep on the event. A store error leaves the event to its lease.
    async fn process(&self, e: &WebhookEvent) -> Result<Value, StoreError> {
        let p = &e.params;
        let out = match HookKind::parse(&e.kind) {
            Some(HookKind::MessageStatus) => {
                let sid = param(p, "MessageSid").or(param(p, "SmsSid")).unwrap_or("");
                let status = param(p, "MessageStatus").or(param(p, "SmsStatus")).unwrap_or("");
                self.status(e, Channel::Sms, sid, status).await?
            }
            Some(HookKind::CallStatus) => {
                let sid = param(p, "CallSid").unwrap_or("");
                self.status(e, Channel::Voice, sid, param(p, "CallStatus").unwrap_or("")).await?
            }
            Some(HookKind::InboundSms) => self.inbound(e).await?,
            Some(HookKind::Gather) => self.gather(e).await?,
            None => json!({"result": "ignored", "why": format!("unknown kind {:?}", e.kind)}),
        };
        Ok(out)
    }

    async fn job_of(&self, e: &WebhookEvent) -> Result<Result<JobInfo, String>, StoreError> {
        let Some(id) = e.delivery_id else {
            return Ok(Err("the callback URL carries no delivery id".into()));
        };
        Ok(self
            .poller
            .store
            .job_info(&e.tenant, id)
            .await?
            .ok_or_else(|| format!("delivery {id} is not one of this tenant's")))
    }

    fn emit(&self, tenant: &str, job: &JobInfo, event: &str, detail: Value) {
        let _ = self.poller.events.send(Event::Delivery {
            tenant: tenant.to_string(),
            record_kind: job.record_kind.clone(),
            record_key: job.record_key.clone(),
            event: event.to_string(),
            detail,
        });
    }

    async fn local_time(&self, tenant: &str) -> Result<String, StoreError> {
        let t = self.poller.store.tenant(tenant).await?;
        let now = self.poller.clock.now();
        Ok(match Schedule::parse(&t.schedule) {
            Ok(s) => now.with_timezone(&s.time_zone()).format("%Y-%m-%d %H:%M %Z").to_string(),
            Err(_) => now.format("%Y-%m-%d %H:%M UTC").to_string(),
        })
    }

    async fn status(&self, e: &WebhookEvent, channel: Channel, sid: &str, status: &str) -> Result<Value, StoreError> {
        let job = match self.job_of(e).await? {
            Ok(j) => j,
            Err(why) => return self.unmatched(e, &why).await,
        };
        let (to, from) = (param(&e.params, "To").unwrap_or(""), param(&e.params, "From").unwrap_or(""));
        let error_code = param(&e.params, "ErrorCode");
        let report = StatusReport {
            job: &job,
            sid,
            channel,
            to,
            from,
            status,
            error_code,
        };
        let now = self.poller.clock.now();
        let applied = self.poller.store.apply_status(&report, now).await?;
        if error_code == Some("21610") {
            self.poller
                .store
                .suppress(&e.tenant, to, "Twilio reported 21610 (the recipient opted out)", now)
                .await?;
        }
        if applied.advanced {
            self.emit(
                &e.tenant,
                &job,
                "delivery_status",
                json!({"status": status, "to": to, "channel": channel, "sid": sid, "error_code": error_code}),
            );
            // A first alert's final status is written back to QAD, once per delivery.
            if intake::is_final(channel, status) && job.kind == "send" {
                let (name, _) = recipient(&job);
                let name = name.unwrap_or_else(|| "the recipient".into());
                let text = intake::status_comment(channel, &name, to, status, error_code, &self.local_time(&e.tenant).await?);
                let comment = self.comment_job(&job, format!("comment/{}/status/{}", e.tenant, job.id), text);
                self.poller
                    .store
                    .enqueue(&e.tenant, &job.record_kind, &job.record_key, &[comment], now)
                    .await?;
            }
        }
        Ok(
            json!({"result": if applied.advanced { "applied" } else { "stale" }, "job_id": job.id, "status": status,
                  "previous": applied.previous, "reconciled": applied.reconciled}),
        )
    }

    fn comment_job(&self, job: &JobInfo, key: String, text: String) -> NewJob {
        let kind = RecordKind::parse(&job.record_kind).unwrap_or(RecordKind::SupplierInvoice);
        let (reference_type, number) = intake::qad_reference(kind, &job.record_key);
        NewJob {
            key,
            kind: "qad_comment".into(),
            episode: job.episode,
            payload: json!({"reference_type": reference_type, "number": number, "text": intake::fit_comment(&text),
                            "date": self.poller.clock.now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()})
            .to_string(),
            run_at: self.poller.clock.now(),
            escalation_step: 0,
        }
    }

    /// A webhook that ties to nothing is kept and visible: its outcome says why, and the
    /// audit trail shows it under the sender's number.
    async fn unmatched(&self, e: &WebhookEvent, why: &str) -> Result<Value, StoreError> {
        let from = param(&e.params, "From").unwrap_or("unknown");
        let params: Vec<_> = e.params.iter().filter(|(k, _)| k != "AccountSid").collect();
        let detail = json!({"why": why, "event_id": e.id, "params": params});
        self.phone_audit(e, from, &format!("unmatched_{}", e.kind), detail).await?;
        tracing::info!(tenant = %e.tenant, event_id = e.id, why, "webhook matches no alert; kept");
        Ok(json!({"result": "unmatched", "why": why}))
    }

    async fn phone_audit(&self, e: &WebhookEvent, phone: &str, event: &str, detail: Value) -> Result<(), StoreError> {
        self.poller
            .store
            .append_audit(
                &e.tenant,
                &[crate::store::NewAudit {
                    kind: "phone".into(),
                    record_key: phone.into(),
                    event: event.into(),
                    detail,
                }],
                self.poller.clock.now(),
            )
            .await
    }

    async fn inbound(&self, e: &WebhookEvent) -> Result<Value, StoreError> {
        let p = &e.params;
        let (from, to) = (param(p, "From").unwrap_or(""), param(p, "To").unwrap_or(""));
        // What people write is data: cleaned and capped before anything reads or keeps it.
        let body = intake::reply_text(param(p, "Body").unwrap_or(""));
        if let Some(out) = self.keyword(e, from, to, &body).await? {
            return Ok(out);
        }
        let candidates = intake::references_to_try(&body);
        let (by_reference, throttled) = self.by_reference(e, from, &candidates).await?;
        let matched = match by_reference {
            Some(job) => Some((job, Proof::Reference)),
            // A reply that quoted a reference answers that alert or none: never the latest
            // alert sent to the number (after a miss, or while a spoofer keeps the number
            // throttled, "APPROVE <PO A's code>" would land on PO B).
            None if !candidates.is_empty() => None,
            None => self
                .poller
                .store
                .latest_alert_to(&e.tenant, from, to)
                .await?
                .map(|j| (j, Proof::None)),
        };
        let why = match (&throttled, candidates.len()) {
            (Some(t), _) => format!("its reference codes were not looked up: {t}"),
            (None, 0) => "no open alert was sent to this number".to_string(),
            (None, n) => format!(
                "it quoted {n} reference code(s), none of an open alert sent to this number; a reply quoting a code is never matched to another alert"
            ),
        };
        let Some((job_id, proof)) = matched else {
            return self.unmatched_reply(e, from, to, &body, &why, throttled).await;
        };
        let Some(job) = self.poller.store.job_info(&e.tenant, job_id).await? else {
            return self.unmatched_reply(e, from, to, &body, &why, throttled).await;
        };
        let heard = Heard {
            answer: Answer::Text(body),
            channel: Channel::Sms,
            proof,
            person: from,
            our_number: to,
        };
        let (reply, action) = self.answer(e, &job, heard).await?;
        Ok(
            json!({"result": "answered", "job_id": job.id, "action": action, "reference": proof == Proof::Reference,
                  "confirmation": reply.confirmation}),
        )
    }

    /// A carrier keyword (STOP, START, HELP): acted on and kept, never read as an answer.
    async fn keyword(&self, e: &WebhookEvent, from: &str, to: &str, body: &str) -> Result<Option<Value>, StoreError> {
        let now = self.poller.clock.now();
        let store = &self.poller.store;
        Ok(Some(match intake::keyword(body, param(&e.params, "OptOutType")) {
            Some(Keyword::OptOut) => {
                store.suppress(&e.tenant, from, &format!("replied {body:?}"), now).await?;
                self.phone_audit(e, from, "opted_out", json!({"body": body, "to": to})).await?;
                json!({"result": "opted_out", "phone": from})
            }
            Some(Keyword::OptIn) => {
                let was = store.unsuppress(&e.tenant, from).await?;
                self.phone_audit(e, from, "opted_in", json!({"body": body, "to": to, "was_suppressed": was}))
                    .await?;
                json!({"result": "opted_in", "phone": from})
            }
            Some(Keyword::Help) => {
                // Twilio answers HELP itself; it is kept, not read as an answer.
                self.phone_audit(e, from, "help_requested", json!({"body": body})).await?;
                json!({"result": "help", "phone": from})
            }
            None => return Ok(None),
        }))
    }

    /// The alert a reply's reference proves it answers: one sent to the number it came from,
    /// among the reply's first few candidates. A reply whose candidates all miss counts a miss
    /// of its number; a number with too many misses is not looked up (the reason why).
    async fn by_reference(
        &self,
        e: &WebhookEvent,
        from: &str,
        candidates: &[String],
    ) -> Result<(Option<i64>, Option<Throttled>), StoreError> {
        if candidates.is_empty() {
            return Ok((None, None));
        }
        let (store, now) = (&self.poller.store, self.poller.clock.now());
        if let Err(t) = intake::may_look_up_references(store.reference_misses(&e.tenant, from, now).await?) {
            return Ok((None, Some(t)));
        }
        for c in candidates {
            if let Some(job) = store.alert_by_reference(&e.tenant, c, from).await? {
                return Ok((Some(job), None));
            }
        }
        store.count_reference_miss(&e.tenant, from, now).await?;
        Ok((None, None))
    }

    /// A reply that answers no alert: kept (cleaned, for the retention, `why` on the trail)
    /// within the limits per sender and per tenant, else counted and dropped. Nothing is sent
    /// back: a reply naming a record would tell a stranger about it.
    async fn unmatched_reply(
        &self,
        e: &WebhookEvent,
        from: &str,
        to: &str,
        body: &str,
        why: &str,
        throttled: Option<Throttled>,
    ) -> Result<Value, StoreError> {
        let reply = UnmatchedReply {
            tenant: e.tenant.clone(),
            phone: from.into(),
            to: to.into(),
            body: body.into(),
            event_id: e.id,
            why: why.into(),
        };
        let throttled = throttled.map(|t| t.to_string());
        Ok(
            match self.poller.store.keep_unmatched_reply(&reply, self.poller.clock.now()).await? {
                Ok(()) => {
                    tracing::info!(tenant = %e.tenant, event_id = e.id, why, "reply matches no alert; kept");
                    json!({"result": "unmatched", "why": why, "throttled": throttled})
                }
                Err(dropped) => {
                    tracing::debug!(tenant = %e.tenant, event_id = e.id, why = %dropped, "reply matches no alert; dropped");
                    json!({"result": "dropped", "why": dropped.to_string(), "throttled": throttled})
                }
            },
        )
    }

    async fn gather(&self, e: &WebhookEvent) -> Result<Value, StoreError> {
        let job = match self.job_of(e).await? {
            Ok(j) => j,
            Err(why) => {
                let mut out = self.unmatched(e, &why).await?;
                out["say"] = json!(DEFAULT_SPOKEN_CONFIRMATION);
                return Ok(out);
            }
        };
        let digits = param(&e.params, "Digits").unwrap_or("").to_string();
        // The call was placed to the person: its `To` is them, its `From` our number.
        let heard = Heard {
            answer: Answer::Keypress(digits),
            channel: Channel::Voice,
            proof: Proof::Keypress,
            person: param(&e.params, "To").unwrap_or(""),
            our_number: param(&e.params, "From").unwrap_or(""),
        };
        let (reply, action) = self.answer(e, &job, heard).await?;
        let say = if reply.confirmation.is_empty() {
            DEFAULT_SPOKEN_CONFIRMATION.to_string()
        } else {
            reply.confirmation.clone()
        };
        Ok(json!({"result": "answered", "job_id": job.id, "action": action, "say": say}))
    }

    /// Read an answer with the tenant's plugin, judge it (proof, role, the tenant's rules) and
    /// apply everything it changes at once. The reply returned carries the confirmation to
    /// give: none when the plugin's decision was not taken (it would confirm what did not happen).
    async fn answer(&self, e: &WebhookEvent, job: &JobInfo, heard: Heard<'_>) -> Result<(Reply, ReplyAction), StoreError> {
        let store = &self.poller.store;
        let now = self.poller.clock.now();
        let mut audit: Vec<(String, Value)> = Vec::new();
        let delivery = serde_json::from_value::<Delivery>(job.payload["delivery"].clone()).ok();
        let mut reply = self.read(&e.tenant, job, delivery.as_ref(), &heard.answer, &mut audit).await?;
        let kind = RecordKind::parse(&job.record_kind).unwrap_or(RecordKind::GoodsReceipt);
        let rules = store.answer_rules(&e.tenant).await?;
        // Who answered is the record's own person for the delivery's (number, role): the
        // plugin's label decides nothing (a delivery the record does not back has no role).
        let (name, role) = recipient(job);
        let verdict = intake::judge(reply.action, heard.proof, role, kind, &rules);
        let name = name.unwrap_or_else(|| heard.person.to_string());
        audit.push((
            "answer".into(),
            json!({"from": heard.person, "name": name, "role": role, "channel": heard.channel,
                   "answer": heard.answer, "action": verdict.action, "plugin_action": reply.action,
                   "note": verdict.not_decided.map(|n| n.to_string()), "proof": heard.proof,
                   "reference_given": heard.proof == Proof::Reference,
                   "cancels_escalations": verdict.cancels_escalations, "event_id": e.id}),
        ));
        if verdict.not_decided.is_some() {
            reply.confirmation.clear();
        }
        let mut jobs = self.confirmation(e, job, &heard, &reply, &name, &mut audit).await?;
        let at = self.local_time(&e.tenant).await?;
        jobs.push(self.comment_job(
            job,
            format!("comment/{}/answer/{}", e.tenant, e.id),
            intake::answer_comment(&name, &heard.answer, verdict.action, &at),
        ));
        match verdict.execute {
            Some(Ok(())) => jobs.push(self.decision_job(e, job, verdict.action, &name)),
            Some(Err(why)) => audit.push((
                "decision_not_executed".into(),
                json!({"action": verdict.action, "why": why.to_string()}),
            )),
            None => {}
        }
        let answered = Answered {
            job_id: job.id,
            record_kind: job.record_kind.clone(),
            record_key: job.record_key.clone(),
            episode: job.episode,
            audit,
            jobs,
            cancels_escalations: verdict.cancels_escalations,
        };
        store.record_answer(&e.tenant, &answered, now).await?;
        self.emit(
            &e.tenant,
            job,
            "answer",
            json!({"from": heard.person, "name": name, "channel": heard.channel, "answer": heard.answer, "action": verdict.action,
                   "confirmation": reply.confirmation}),
        );
        Ok((reply, verdict.action))
    }

    /// The SMS confirming an SMS answer, unless there is none to give or the number opted out.
    async fn confirmation(
        &self,
        e: &WebhookEvent,
        job: &JobInfo,
        heard: &Heard<'_>,
        reply: &Reply,
        name: &str,
        audit: &mut Vec<(String, Value)>,
    ) -> Result<Vec<NewJob>, StoreError> {
        if heard.channel != Channel::Sms || reply.confirmation.is_empty() {
            return Ok(Vec::new());
        }
        if self.poller.store.is_suppressed(&e.tenant, heard.person).await? {
            audit.push((
                "confirmation_skipped".into(),
                json!({"to": heard.person, "why": "the number opted out of this tenant's SMS"}),
            ));
            return Ok(Vec::new());
        }
        Ok(vec![NewJob {
            key: format!("confirm/{}/{}", e.tenant, e.id),
            kind: "confirm".into(),
            episode: job.episode,
            payload: json!({"to": heard.person, "from": heard.our_number, "body": reply.confirmation, "name": name}).to_string(),
            run_at: self.poller.clock.now(),
            escalation_step: 0,
        }])
    }

    /// The decision written to QAD; one per episode: the first answer decides. The person is
    /// named as data ([`intake::name_for_qad`]), the comment fitted ([`intake::decision_comment`]).
    fn decision_job(&self, e: &WebhookEvent, job: &JobInfo, action: ReplyAction, name: &str) -> NewJob {
        NewJob {
            key: format!("decision/{}/{}/{}/{}", e.tenant, job.record_kind, job.record_key, job.episode),
            kind: "qad_decision".into(),
            episode: job.episode,
            payload: json!({"po": job.record_key, "action": if action == ReplyAction::Approve { "approve" } else { "deny" },
                            "approver": intake::name_for_qad(name), "comment": intake::decision_comment(name, action)})
            .to_string(),
            run_at: self.poller.clock.now(),
            escalation_step: 0,
        }
    }

    /// What the plugin reads in an answer; `Unknown` (and a fault on the trail) when the
    /// alert's job carries nothing to read it against.
    async fn read(
        &self,
        tenant: &str,
        job: &JobInfo,
        delivery: Option<&Delivery>,
        answer: &Answer,
        audit: &mut Vec<(String, Value)>,
    ) -> Result<Reply, StoreError> {
        match (serde_json::from_value::<AlertInput>(job.payload["alert"].clone()), delivery) {
            (Ok(alert), Some(delivery)) => self.interpret(tenant, &alert, delivery, answer, audit).await,
            _ => {
                audit.push((
                    "plugin_fault".into(),
                    json!({"error": "the alert's job carries no alert to read the answer against"}),
                ));
                Ok(Reply {
                    action: ReplyAction::Unknown,
                    confirmation: String::new(),
                })
            }
        }
    }

    async fn interpret(
        &self,
        tenant_id: &str,
        alert: &AlertInput,
        delivery: &Delivery,
        answer: &Answer,
        audit: &mut Vec<(String, Value)>,
    ) -> Result<Reply, StoreError> {
        let tenant = self.poller.store.tenant(tenant_id).await?;
        let router = match self.poller.router(&tenant).await {
            Ok(r) => r,
            Err(crate::poller::PollError::Store(e)) => return Err(e),
            Err(e) => {
                audit.push(("plugin_fault".into(), json!({"error": e.to_string()})));
                return Ok(Reply {
                    action: ReplyAction::Unknown,
                    confirmation: String::new(),
                });
            }
        };
        let tz = Schedule::parse(&tenant.schedule).map(|s| s.time_zone()).unwrap_or(chrono_tz::UTC);
        let ctx = PluginContext::at(&tenant.id, &router.settings.config.to_string(), self.poller.clock.now(), tz);
        let plugins = &self.poller.plugins;
        let first = match &router.plugin {
            Ok(p) => {
                plugins
                    .interpret_reply(p, router.settings.limits, &ctx, alert, delivery, answer)
                    .await
            }
            Err(f) => Err(f.clone()),
        };
        let fault = match first {
            Ok(r) => return Ok(r),
            Err(f) => f,
        };
        tracing::warn!(tenant = %tenant.id, record = %alert.key, plugin = %router.label, error = %fault, "plugin fault reading an answer");
        audit.push((
            "plugin_fault".into(),
            json!({"plugin": router.label, "kind": fault.kind, "call": fault.call, "error": fault.message}),
        ));
        if router.settings.fallback_to_default
            && let Ok(r) = plugins
                .interpret_reply(&router.default, crate::plugin::Limits::default(), &ctx, alert, delivery, answer)
                .await
        {
            return Ok(r);
        }
        Ok(Reply {
            action: ReplyAction::Unknown,
            confirmation: String::new(),
        })
    }
}
