//! The inbox: processes the webhooks the HTTP adapter queued, in arrival order. A status
//! moves its delivery forward (never back) and can prove an unknown send was made; an
//! inbound SMS is an opt-out word, or an answer matched to the alert it answers (by the
//! alert's reference, else the latest open alert sent to that number) and read by the
//! tenant's plugin; a keypress likewise. An answer's effects (audit, cancelled escalations,
//! the confirmation, the QAD comment and decision as jobs) commit together. Processing is
//! idempotent: every job an event creates is keyed by the event, so a crash mid-way and a
//! second processing change nothing twice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::core::intake::{self, HookKind, Keyword, param};
use crate::core::routing::{AlertInput, Answer, Channel, Delivery, PluginContext, Reply, ReplyAction};
use crate::core::schedule::Schedule;
use crate::poller::{Event, Poller};
use crate::store::{Answered, JobInfo, NewJob, StatusReport, StoreError, WebhookEvent};

/// What a call says after a keypress when the plugin gave no words.
pub const DEFAULT_SPOKEN_CONFIRMATION: &str = "Thank you. Your answer was recorded.";

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

    /// Process one batch of queued events; how many.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = self.poller.clock.now();
        let events = self
            .poller
            .store
            .claim_webhooks(now, self.lease, chrono::Duration::seconds(30), self.batch)
            .await?;
        for e in &events {
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
        Ok(events.len())
    }

    /// Work until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
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
                let name = job.payload["delivery"]["to"]["name"].as_str().unwrap_or("the recipient");
                let text = intake::status_comment(channel, name, to, status, error_code, &self.local_time(&e.tenant).await?);
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
        let kind = crate::core::model::RecordKind::parse(&job.record_kind).unwrap_or(crate::core::model::RecordKind::SupplierInvoice);
        let (reference_type, number) = intake::qad_reference(kind, &job.record_key);
        NewJob {
            key,
            kind: "qad_comment".into(),
            episode: job.episode,
            payload: json!({"reference_type": reference_type, "number": number, "text": text,
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
        let (from, to, body) = (
            param(p, "From").unwrap_or(""),
            param(p, "To").unwrap_or(""),
            param(p, "Body").unwrap_or(""),
        );
        let now = self.poller.clock.now();
        match intake::keyword(body, param(p, "OptOutType")) {
            Some(Keyword::OptOut) => {
                self.poller
                    .store
                    .suppress(&e.tenant, from, &format!("replied {body:?}"), now)
                    .await?;
                self.phone_audit(e, from, "opted_out", json!({"body": body, "to": to})).await?;
                return Ok(json!({"result": "opted_out", "phone": from}));
            }
            Some(Keyword::OptIn) => {
                let was = self.poller.store.unsuppress(&e.tenant, from).await?;
                self.phone_audit(e, from, "opted_in", json!({"body": body, "to": to, "was_suppressed": was}))
                    .await?;
                return Ok(json!({"result": "opted_in", "phone": from}));
            }
            Some(Keyword::Help) => {
                // Twilio answers HELP itself; it is kept, not read as an answer.
                self.phone_audit(e, from, "help_requested", json!({"body": body})).await?;
                return Ok(json!({"result": "help", "phone": from}));
            }
            None => {}
        }
        let mut matched = None;
        for candidate in intake::reference_candidates(body) {
            if let Some(job) = self.poller.store.alert_by_reference(&e.tenant, &candidate, from).await? {
                matched = Some((job, true));
                break;
            }
        }
        if matched.is_none() {
            matched = self.poller.store.latest_alert_to(&e.tenant, from, to).await?.map(|j| (j, false));
        }
        let Some((job_id, reference_given)) = matched else {
            return self
                .unmatched(e, "no open alert carries its reference or was sent to this number")
                .await;
        };
        let Some(job) = self.poller.store.job_info(&e.tenant, job_id).await? else {
            return self.unmatched(e, "its alert disappeared").await;
        };
        let (reply, action) = self
            .answer(e, &job, Answer::Text(body.to_string()), Channel::Sms, reference_given, from, to)
            .await?;
        Ok(
            json!({"result": "answered", "job_id": job.id, "action": action, "reference": reference_given, "confirmation": reply.confirmation}),
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
        let (person, ours) = (param(&e.params, "To").unwrap_or(""), param(&e.params, "From").unwrap_or(""));
        let (reply, action) = self
            .answer(e, &job, Answer::Keypress(digits), Channel::Voice, true, person, ours)
            .await?;
        let say = if reply.confirmation.is_empty() {
            DEFAULT_SPOKEN_CONFIRMATION.to_string()
        } else {
            reply.confirmation.clone()
        };
        Ok(json!({"result": "answered", "job_id": job.id, "action": action, "say": say}))
    }

    /// Read an answer with the tenant's plugin and apply everything it changes at once.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        e: &WebhookEvent,
        job: &JobInfo,
        answer: Answer,
        channel: Channel,
        reference_given: bool,
        person: &str,
        our_number: &str,
    ) -> Result<(Reply, ReplyAction), StoreError> {
        let store = &self.poller.store;
        let now = self.poller.clock.now();
        let mut audit: Vec<(String, Value)> = Vec::new();
        let reply = match (
            serde_json::from_value::<AlertInput>(job.payload["alert"].clone()),
            serde_json::from_value::<Delivery>(job.payload["delivery"].clone()),
        ) {
            (Ok(alert), Ok(delivery)) => self.interpret(&e.tenant, &alert, &delivery, &answer, &mut audit).await?,
            _ => {
                audit.push((
                    "plugin_fault".into(),
                    json!({"error": "the alert's job carries no alert to read the answer against"}),
                ));
                Reply {
                    action: ReplyAction::Unknown,
                    confirmation: String::new(),
                }
            }
        };
        let (action, note) = intake::effective_action(reply.action, channel, reference_given);
        let name = job.payload["delivery"]["to"]["name"].as_str().unwrap_or(person).to_string();
        audit.push((
            "answer".into(),
            json!({"from": person, "name": name, "channel": channel, "answer": answer, "action": action,
                   "plugin_action": reply.action, "note": note, "reference_given": reference_given, "event_id": e.id}),
        ));
        let mut jobs = Vec::new();
        if channel == Channel::Sms && !reply.confirmation.is_empty() {
            if store.is_suppressed(&e.tenant, person).await? {
                audit.push((
                    "confirmation_skipped".into(),
                    json!({"to": person, "why": "the number opted out of this tenant's SMS"}),
                ));
            } else {
                jobs.push(NewJob {
                    key: format!("confirm/{}/{}", e.tenant, e.id),
                    kind: "confirm".into(),
                    episode: job.episode,
                    payload: json!({"to": person, "from": our_number, "body": reply.confirmation, "name": name}).to_string(),
                    run_at: now,
                    escalation_step: 0,
                });
            }
        }
        let at = self.local_time(&e.tenant).await?;
        jobs.push(self.comment_job(
            job,
            format!("comment/{}/answer/{}", e.tenant, e.id),
            intake::answer_comment(&name, &answer, action, &at),
        ));
        if matches!(action, ReplyAction::Approve | ReplyAction::Reject) {
            let (execute, _) = store.answer_settings(&e.tenant).await?;
            let why_not = if job.record_kind != crate::core::model::RecordKind::PurchaseOrder.as_str() {
                Some("QAD takes approval decisions for purchase orders only")
            } else if !execute {
                Some("the tenant has not enabled executing decisions in QAD")
            } else {
                None
            };
            match why_not {
                Some(why) => audit.push(("decision_not_executed".into(), json!({"action": action, "why": why}))),
                None => jobs.push(NewJob {
                    // One decision per episode: the first answer decides.
                    key: format!("decision/{}/{}/{}/{}", e.tenant, job.record_kind, job.record_key, job.episode),
                    kind: "qad_decision".into(),
                    episode: job.episode,
                    payload: json!({"po": job.record_key, "action": if action == ReplyAction::Approve { "approve" } else { "deny" },
                                    "approver": name, "comment": format!("{} by {name} through ml-connector", intake::action_word(action))})
                    .to_string(),
                    run_at: now,
                    escalation_step: 0,
                }),
            }
        }
        let answered = Answered {
            job_id: job.id,
            record_kind: job.record_kind.clone(),
            record_key: job.record_key.clone(),
            episode: job.episode,
            audit,
            jobs,
        };
        store.record_answer(&e.tenant, &answered, now).await?;
        self.emit(
            &e.tenant,
            job,
            "answer",
            json!({"from": person, "name": name, "channel": channel, "answer": answer, "action": action, "confirmation": reply.confirmation}),
        );
        Ok((reply, action))
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
