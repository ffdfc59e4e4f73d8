//! The webhook side of the store: the durable intake queue, deliveries and their statuses,
//! matching answers to alerts, and what an answer changes, each in one transaction.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row;

use super::{Backend, NewJob, Result, Store, StoreError, from_millis, millis};
use crate::core::intake::{self, AnswerRules, DecisionRoles, Dropped, HookKind, advances};
use crate::core::routing::Channel;

/// A validated webhook about to be queued.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub tenant: String,
    pub kind: HookKind,
    pub dedup_key: String,
    pub idempotency_token: Option<String>,
    pub delivery_id: Option<i64>,
    pub params: Vec<(String, String)>,
}

/// A queued webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    pub id: i64,
    pub tenant: String,
    pub kind: String,
    pub delivery_id: Option<i64>,
    pub params: Vec<(String, String)>,
    pub state: String,
    pub outcome: Option<Value>,
    pub received_at: DateTime<Utc>,
}

/// A job as webhook processing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    pub id: i64,
    pub tenant: String,
    pub kind: String,
    pub record_kind: String,
    pub record_key: String,
    pub episode: i64,
    pub payload: Value,
    pub state: String,
}

/// A status Twilio reported for a delivery.
#[derive(Debug, Clone)]
pub struct StatusReport<'a> {
    pub job: &'a JobInfo,
    pub sid: &'a str,
    pub channel: Channel,
    pub to: &'a str,
    pub from: &'a str,
    pub status: &'a str,
    pub error_code: Option<&'a str>,
}

/// What a status report changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusApplied {
    pub advanced: bool,
    pub previous: Option<String>,
    /// The send's outcome was unknown and this callback proved it was sent.
    pub reconciled: bool,
}

/// Everything an answer (a reply or a keypress) changes, applied atomically.
#[derive(Debug, Clone)]
pub struct Answered {
    pub job_id: i64,
    pub record_kind: String,
    pub record_key: String,
    pub episode: i64,
    pub audit: Vec<(String, Value)>,
    pub jobs: Vec<NewJob>,
    /// Whether the answer cancels the episode's escalations (a proven one, or the tenant
    /// allows unproven ones to).
    pub cancels_escalations: bool,
}

/// A reply that matched no alert, its text already cleaned and capped.
#[derive(Debug, Clone, PartialEq)]
pub struct UnmatchedReply {
    pub tenant: String,
    pub phone: String,
    pub to: String,
    pub body: String,
    pub event_id: i64,
    /// Why it matched nothing, for the audit trail.
    pub why: String,
}

/// A kept reply that matched nothing, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UnmatchedReplyRow {
    pub phone: String,
    pub to: String,
    pub body: String,
    pub event_id: i64,
    pub received_at: DateTime<Utc>,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    pub replies: u64,
    pub counters: u64,
    /// Processed webhook events past [`intake::EVENT_RETENTION_DAYS`].
    pub events: u64,
}

/// Bump a sender counter in its fixed window (`$4` now, `$5` the start of a window that began
/// at `$4`'s window length ago: an older window starts again at 1); the count now.
const BUMP_COUNTER: &str = "INSERT INTO sender_counters (tenant_id, kind, phone, window_start, hits) VALUES ($1, $2, $3, $4, 1)
    ON CONFLICT (tenant_id, kind, phone) DO UPDATE SET
      hits = CASE WHEN sender_counters.window_start <= $5 THEN 1 ELSE sender_counters.hits + 1 END,
      window_start = CASE WHEN sender_counters.window_start <= $5 THEN $4 ELSE sender_counters.window_start END
    RETURNING hits";

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

const EVENT_COLUMNS: &str = "id, tenant_id, kind, delivery_id, params, state, outcome, received_at";

fn event_from<R: Row>(r: R) -> WebhookEvent
where
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    WebhookEvent {
        id: r.get(0),
        tenant: r.get(1),
        kind: r.get(2),
        delivery_id: r.get(3),
        params: serde_json::from_str(&r.get::<String, _>(4)).unwrap_or_default(),
        state: r.get(5),
        outcome: r.get::<Option<String>, _>(6).and_then(|s| serde_json::from_str(&s).ok()),
        received_at: from_millis(r.get(7)),
    }
}

impl Store {
    /// Queue validated webhooks in one transaction (one commit for a batch of concurrent
    /// requests); per webhook its event id, or `None` when it is a duplicate (same dedup key
    /// or idempotency token as one already queued, in this batch or before). Committed
    /// before any of their requests is answered 2xx.
    pub async fn queue_webhooks(&self, batch: &[NewWebhook], now: DateTime<Utc>) -> Result<Vec<Option<i64>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let at = millis(now);
        let params: Vec<String> = batch
            .iter()
            .map(|w| serde_json::to_string(&w.params).expect("pairs serialise"))
            .collect();
        // One statement for the batch: a duplicate (of a stored row, or of an earlier row of
        // this batch) is skipped and returns nothing.
        let inserted: Vec<(String, String, i64)> = on_pool!(self, p => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO webhook_events (tenant_id, kind, dedup_key, idempotency_token, delivery_id, params, state, received_at) ",
            );
            q.push_values(batch.iter().zip(&params), |mut row, (w, params)| {
                row.push_bind(&w.tenant).push_bind(w.kind.as_str()).push_bind(&w.dedup_key).push_bind(&w.idempotency_token)
                    .push_bind(w.delivery_id).push_bind(params).push_bind("queued").push_bind(at);
            });
            q.push(" ON CONFLICT DO NOTHING RETURNING tenant_id, dedup_key, id");
            q.build().fetch_all(p).await?.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
        });
        let mut ids: std::collections::HashMap<(String, String), i64> = inserted.into_iter().map(|(t, k, id)| ((t, k), id)).collect();
        // The first request of a key gets its id; a repeat within the batch is a duplicate.
        Ok(batch.iter().map(|w| ids.remove(&(w.tenant.clone(), w.dedup_key.clone()))).collect())
    }

    /// The event a duplicate repeats: by dedup key, else by idempotency token.
    pub async fn webhook_by_key(&self, tenant: &str, dedup_key: &str, token: Option<&str>) -> Result<Option<WebhookEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE tenant_id = $1 AND (dedup_key = $2 OR idempotency_token = $3) ORDER BY id LIMIT 1"
        );
        on_pool!(self, p => Ok(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant).bind(dedup_key).bind(token)
            .fetch_optional(p).await?.map(event_from)))
    }

    /// Claim queued webhooks in arrival order, and running ones whose processor died.
    /// `<Gather>` answers are processed by the request itself (its answer must speak the
    /// confirmation); they are claimed here only once `gather_grace` has passed.
    pub async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        gather_grace: chrono::Duration,
        limit: i64,
    ) -> Result<Vec<WebhookEvent>> {
        let sql = self.claim_webhooks_sql();
        let mut rows = in_tx!(self, tx => sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(millis(now)).bind(millis(now + lease)).bind(millis(now - gather_grace)).bind(limit)
            .fetch_all(&mut *tx).await?.into_iter().map(event_from).collect::<Vec<_>>());
        rows.sort_by_key(|e| e.id);
        Ok(rows)
    }

    /// The claim statement of [`Store::claim_webhooks`]: `$1` now, `$2` the lease's end, `$3`
    /// the gather grace's start, `$4` how many at most.
    pub(super) fn claim_webhooks_sql(&self) -> String {
        let lock = match self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        // The limit is cast to be read when the statement runs, not compiled into it (and
        // the statement re-prepared on every claim): see `Store::claim_jobs_sql`.
        format!(
            "UPDATE webhook_events SET state = 'running', lease_until = $2
             WHERE id IN (SELECT id FROM webhook_events
                          WHERE (state = 'queued' AND (kind <> 'gather' OR received_at < $3)) OR (state = 'running' AND lease_until < $1)
                          ORDER BY id LIMIT CAST($4 AS BIGINT){lock})
             RETURNING {EVENT_COLUMNS}"
        )
    }

    /// Claim one event for processing now; `None` when another processor holds it or it is done.
    pub async fn claim_webhook(&self, id: i64, now: DateTime<Utc>, lease: chrono::Duration) -> Result<Option<WebhookEvent>> {
        let sql = format!(
            "UPDATE webhook_events SET state = 'running', lease_until = $2
             WHERE id = $3 AND (state = 'queued' OR (state = 'running' AND lease_until < $1)) RETURNING {EVENT_COLUMNS}"
        );
        on_pool!(self, p => Ok(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(millis(now)).bind(millis(now + lease)).bind(id)
            .fetch_optional(p).await?.map(event_from)))
    }

    pub async fn finish_webhook(&self, id: i64, outcome: &Value, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, p => { sqlx::query("UPDATE webhook_events SET state = 'done', outcome = $2, processed_at = $3, lease_until = NULL WHERE id = $1")
            .bind(id).bind(outcome.to_string()).bind(millis(now)).execute(p).await?; });
        Ok(())
    }

    pub async fn webhook(&self, id: i64) -> Result<Option<WebhookEvent>> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM webhook_events WHERE id = $1");
        on_pool!(self, p => Ok(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?.map(event_from)))
    }

    /// A tenant's webhooks by state (state → count), and the events whose outcome matched
    /// nothing (kept, never dropped).
    pub async fn webhook_counts(&self, tenant: &str) -> Result<std::collections::HashMap<String, i64>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT state, COUNT(*) FROM webhook_events WHERE tenant_id = $1 GROUP BY state")
            .bind(tenant).fetch_all(p).await?.into_iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))).collect()))
    }

    pub async fn webhooks(&self, tenant: &str) -> Result<Vec<WebhookEvent>> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM webhook_events WHERE tenant_id = $1 ORDER BY id");
        on_pool!(self, p => Ok(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant).fetch_all(p).await?.into_iter().map(event_from).collect()))
    }

    pub async fn job_info(&self, tenant: &str, id: i64) -> Result<Option<JobInfo>> {
        on_pool!(self, p => Ok(sqlx::query(
        "SELECT id, tenant_id, kind, record_kind, record_key, episode, p.payload, state
           FROM jobs LEFT JOIN job_payloads p ON p.job_id = jobs.id WHERE tenant_id = $1 AND id = $2")
        .bind(tenant).bind(id).fetch_optional(p).await?
        .map(|r| JobInfo {
            id: r.get(0), tenant: r.get(1), kind: r.get(2), record_kind: r.get(3), record_key: r.get(4), episode: r.get(5),
            payload: super::payload_from(r.get(6)),
            state: r.get(7),
        })))
    }

    /// A delivery's sid and latest status.
    pub async fn delivery(&self, job_id: i64) -> Result<Option<(Option<String>, Option<String>)>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT sid, status FROM deliveries WHERE job_id = $1")
            .bind(job_id).fetch_optional(p).await?.map(|r| (r.get(0), r.get(1)))))
    }

    /// Record a status of a delivery: it moves the delivery forward only (a late `sent` does
    /// not overwrite `delivered`); an advance is audited on the record. A send whose outcome
    /// was unknown is proven sent by its callback and marked done, never sent again.
    pub async fn apply_status(&self, s: &StatusReport<'_>, now: DateTime<Utc>) -> Result<StatusApplied> {
        let at = millis(now);
        let lock = match self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " FOR UPDATE",
        };
        let select = format!("SELECT status FROM deliveries WHERE job_id = $1{lock}");
        let j = s.job;
        let applied = in_tx!(self, tx => {
            sqlx::query("INSERT INTO deliveries (job_id, tenant_id, sid, channel, to_phone, from_phone, sent_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (job_id) DO NOTHING")
                .bind(j.id).bind(&j.tenant).bind(s.sid).bind(s.channel.as_str()).bind(s.to).bind(s.from).bind(at)
                .execute(&mut *tx).await?;
            let previous: Option<String> = sqlx::query(sqlx::AssertSqlSafe(select.as_str())).bind(j.id).fetch_one(&mut *tx).await?.get(0);
            let advanced = advances(s.channel, previous.as_deref(), s.status);
            if advanced {
                sqlx::query("UPDATE deliveries SET status = $2, error_code = COALESCE($3, error_code), sid = COALESCE(sid, $4), updated_at = $5 WHERE job_id = $1")
                    .bind(j.id).bind(s.status).bind(s.error_code).bind(s.sid).bind(at).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, $2, $3, $4, $5, 'delivery_status', $6)")
                    .bind(&j.tenant).bind(&j.record_kind).bind(&j.record_key).bind(j.episode).bind(at)
                    .bind(json!({"job_id": j.id, "sid": s.sid, "to": s.to, "channel": s.channel, "status": s.status, "error_code": s.error_code}).to_string())
                    .execute(&mut *tx).await?;
            }
            let reconciled = sqlx::query(
                "UPDATE jobs SET state = 'done', reconcile = FALSE, lease_until = NULL, outcome = $2, updated_at = $3
                 WHERE id = $1 AND (state = 'unknown' OR (state = 'queued' AND reconcile))")
                .bind(j.id).bind(json!({"sid": s.sid, "reconciled": "status callback"}).to_string()).bind(at)
                .execute(&mut *tx).await?.rows_affected() == 1;
            if reconciled {
                sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, $2, $3, $4, $5, 'sent', $6)")
                    .bind(&j.tenant).bind(&j.record_kind).bind(&j.record_key).bind(j.episode).bind(at)
                    .bind(json!({"sid": s.sid, "to": s.to, "channel": s.channel, "reconciled": "its status callback arrived", "job_id": j.id}).to_string())
                    .execute(&mut *tx).await?;
            }
            StatusApplied { advanced, previous, reconciled }
        });
        Ok(applied)
    }

    /// The open alert an SMS from `from` carrying `reference` answers: a send of that episode
    /// to `from` (a reference proves nothing from another number). The job id.
    pub async fn alert_by_reference(&self, tenant: &str, reference: &str, from: &str) -> Result<Option<i64>> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT j.id FROM attention a
               JOIN jobs j ON j.tenant_id = a.tenant_id AND j.record_kind = a.kind AND j.record_key = a.record_key AND j.episode = a.episode
               JOIN deliveries d ON d.job_id = j.id
             WHERE a.tenant_id = $1 AND a.reference = $2 AND a.state = 'open' AND j.kind = 'send' AND d.to_phone = $3
             ORDER BY d.sent_at DESC, j.id DESC LIMIT 1")
            .bind(tenant).bind(reference).bind(from).fetch_optional(p).await?.map(|r| r.get::<i64, _>(0))))
    }

    /// A number's misses (references that matched nothing sent to it) in the current window.
    pub async fn reference_misses(&self, tenant: &str, phone: &str, now: DateTime<Utc>) -> Result<i64> {
        let since = millis(now - minutes(intake::MISS_WINDOW_MINUTES));
        on_pool!(self, p => Ok(sqlx::query_scalar(
            "SELECT hits FROM sender_counters WHERE tenant_id = $1 AND kind = 'miss' AND phone = $2 AND window_start > $3")
            .bind(tenant).bind(phone).bind(since).fetch_optional(p).await?.unwrap_or(0)))
    }

    /// Count a miss of a number; its misses in the window now.
    pub async fn count_reference_miss(&self, tenant: &str, phone: &str, now: DateTime<Utc>) -> Result<i64> {
        let since = millis(now - minutes(intake::MISS_WINDOW_MINUTES));
        on_writer!(self, p => Ok(sqlx::query_scalar(BUMP_COUNTER)
            .bind(tenant).bind("miss").bind(phone).bind(millis(now)).bind(since).fetch_one(p).await?))
    }

    /// The latest open alert sent by SMS to `person` from `our_number`. The job id.
    pub async fn latest_alert_to(&self, tenant: &str, person: &str, our_number: &str) -> Result<Option<i64>> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT j.id FROM deliveries d
               JOIN jobs j ON j.id = d.job_id
               JOIN attention a ON a.tenant_id = j.tenant_id AND a.kind = j.record_kind AND a.record_key = j.record_key AND a.episode = j.episode
             WHERE d.tenant_id = $1 AND d.to_phone = $2 AND d.from_phone = $3 AND d.channel = 'sms' AND j.kind = 'send' AND a.state = 'open'
             ORDER BY d.sent_at DESC, j.id DESC LIMIT 1")
            .bind(tenant).bind(person).bind(our_number).fetch_optional(p).await?.map(|r| r.get::<i64, _>(0))))
    }

    /// Apply an answer: its audit entries, the delivery marked answered, the episode's
    /// escalations cancelled (when `cancels_escalations`), and its follow-up jobs (confirmation, QAD comment, decision)
    /// queued, all or nothing.
    pub async fn record_answer(&self, tenant: &str, a: &Answered, now: DateTime<Utc>) -> Result<u64> {
        let at = millis(now);
        let cancelled = in_tx!(self, tx => {
            for (event, detail) in &a.audit {
                sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(tenant).bind(&a.record_kind).bind(&a.record_key).bind(a.episode).bind(at).bind(event).bind(detail.to_string())
                    .execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE deliveries SET answered_at = $2 WHERE job_id = $1 AND answered_at IS NULL")
                .bind(a.job_id).bind(at).execute(&mut *tx).await?;
            let cancelled = if a.cancels_escalations {
                sqlx::query("UPDATE jobs SET state = 'cancelled', updated_at = $5
                             WHERE tenant_id = $1 AND record_kind = $2 AND record_key = $3 AND episode = $4 AND state = 'queued'
                               AND kind = 'send' AND escalation_step > 0")
                    .bind(tenant).bind(&a.record_kind).bind(&a.record_key).bind(a.episode).bind(at).execute(&mut *tx).await?.rows_affected()
            } else {
                0
            };
            if cancelled > 0 {
                sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, $2, $3, $4, $5, 'alerts_cancelled', $6)")
                    .bind(tenant).bind(&a.record_kind).bind(&a.record_key).bind(a.episode).bind(at)
                    .bind(json!({"jobs": cancelled, "why": "answered"}).to_string()).execute(&mut *tx).await?;
            }
            insert_jobs!(tx, tenant, &a.record_kind, &a.record_key, &a.jobs, at);
            cancelled
        });
        Ok(cancelled)
    }

    /// Queue follow-up jobs of a record outside an answer (a final status's QAD comment).
    pub async fn enqueue(&self, tenant: &str, record_kind: &str, record_key: &str, jobs: &[NewJob], now: DateTime<Utc>) -> Result<()> {
        let at = millis(now);
        in_tx!(self, tx => {
            insert_jobs!(tx, tenant, record_kind, record_key, jobs, at);
        });
        Ok(())
    }

    /// Take a number off a tenant's suppression list (START); whether it was on it.
    pub async fn unsuppress(&self, tenant: &str, phone: &str) -> Result<bool> {
        on_pool!(self, p => Ok(sqlx::query("DELETE FROM suppressions WHERE tenant_id = $1 AND phone = $2")
            .bind(tenant).bind(phone).execute(p).await?.rows_affected() == 1))
    }

    /// (execute approve/reject in QAD, call numbers that opted out of SMS).
    pub async fn answer_settings(&self, tenant: &str) -> Result<(bool, bool)> {
        on_pool!(self, p => Ok(sqlx::query("SELECT execute_decisions, call_opted_out FROM tenants WHERE id = $1")
            .bind(tenant).fetch_optional(p).await?.map(|r| (r.get(0), r.get(1))).unwrap_or((false, true))))
    }

    pub async fn set_answer_settings(&self, tenant: &str, execute_decisions: bool, call_opted_out: bool) -> Result<()> {
        on_pool!(self, p => { sqlx::query("UPDATE tenants SET execute_decisions = $2, call_opted_out = $3 WHERE id = $1")
            .bind(tenant).bind(execute_decisions).bind(call_opted_out).execute(p).await?; });
        Ok(())
    }

    /// The tenant's rules for answers: decisions executed, unproven answers' reach, who decides.
    pub async fn answer_rules(&self, tenant: &str) -> Result<AnswerRules> {
        let row: Option<(bool, bool, Option<String>)> = on_pool!(self, p => sqlx::query(
            "SELECT execute_decisions, unproven_answers_cancel_escalations, decision_roles FROM tenants WHERE id = $1")
            .bind(tenant).fetch_optional(p).await?.map(|r| (r.get(0), r.get(1), r.get(2))));
        let Some((execute_decisions, unproven_answers_cancel_escalations, roles)) = row else {
            return Err(StoreError::NoSuchTenant(tenant.into()));
        };
        Ok(AnswerRules {
            execute_decisions,
            unproven_answers_cancel_escalations,
            decision_roles: decision_roles_from(tenant, roles.as_deref())?,
        })
    }

    /// Set the rules of [`Store::answer_rules`].
    pub async fn set_answer_rules(&self, tenant: &str, rules: &AnswerRules) -> Result<()> {
        on_writer!(self, p => { sqlx::query(
            "UPDATE tenants SET execute_decisions = $2, unproven_answers_cancel_escalations = $3, decision_roles = $4 WHERE id = $1")
            .bind(tenant).bind(rules.execute_decisions).bind(rules.unproven_answers_cancel_escalations)
            .bind(decision_roles_column(&rules.decision_roles)).execute(p).await?; });
        Ok(())
    }

    /// Keep a reply that matched nothing, within the limits per sender and per tenant; past
    /// them it is counted and dropped. Either way its event keeps no parameters (the text is
    /// kept, cleaned, only here, until the retention ends) and the counts move.
    pub async fn keep_unmatched_reply(&self, r: &UnmatchedReply, now: DateTime<Utc>) -> Result<std::result::Result<(), Dropped>> {
        let (at, since) = (millis(now), millis(now - minutes(intake::UNMATCHED_WINDOW_MINUTES)));
        let kept = in_tx!(self, tx => {
            let mut counts = [0i64; 2];
            for (i, phone) in [r.phone.as_str(), ""].into_iter().enumerate() {
                counts[i] = sqlx::query_scalar(BUMP_COUNTER).bind(&r.tenant).bind("unmatched").bind(phone).bind(at).bind(since)
                    .fetch_one(&mut *tx).await?;
            }
            let kept = intake::keep_unmatched(counts[0], counts[1]);
            if kept.is_ok() {
                sqlx::query("INSERT INTO unmatched_replies (tenant_id, phone, to_phone, body, event_id, received_at) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(&r.tenant).bind(&r.phone).bind(&r.to).bind(&r.body).bind(r.event_id).bind(at).execute(&mut *tx).await?;
                let kept_until = (now + chrono::Duration::days(intake::UNMATCHED_RETENTION_DAYS)).to_rfc3339();
                sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, 'phone', $2, NULL, $3, 'unmatched_inbound_sms', $4)")
                    .bind(&r.tenant).bind(&r.phone).bind(at)
                    .bind(json!({"why": r.why, "event_id": r.event_id, "to": r.to, "text_kept_until": kept_until}).to_string())
                    .execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE webhook_events SET params = '[]' WHERE id = $1").bind(r.event_id).execute(&mut *tx).await?;
            kept
        });
        Ok(kept)
    }

    /// A tenant's kept replies that matched nothing, oldest first.
    pub async fn unmatched_replies(&self, tenant: &str) -> Result<Vec<UnmatchedReplyRow>> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT phone, to_phone, body, event_id, received_at FROM unmatched_replies WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant).fetch_all(p).await?.into_iter()
            .map(|r| UnmatchedReplyRow { phone: r.get(0), to: r.get(1), body: r.get(2), event_id: r.get(3), received_at: from_millis(r.get(4)) })
            .collect()))
    }

    /// Purge replies that matched nothing past their retention, counters whose window ended a
    /// window ago or more, and processed webhook events (answers' text in their parameters, a
    /// dropped reply's bare row) processed more than [`intake::EVENT_RETENTION_DAYS`] ago.
    /// Events queued or running are never purged, however old.
    pub async fn purge_unmatched(&self, now: DateTime<Utc>) -> Result<Purged> {
        let old = millis(now - chrono::Duration::days(intake::UNMATCHED_RETENTION_DAYS));
        let window = intake::MISS_WINDOW_MINUTES.max(intake::UNMATCHED_WINDOW_MINUTES);
        let stale = millis(now - minutes(2 * window));
        let events_before = millis(now - chrono::Duration::days(intake::EVENT_RETENTION_DAYS));
        let purged = in_tx!(self, tx => Purged {
            replies: sqlx::query("DELETE FROM unmatched_replies WHERE received_at < $1").bind(old).execute(&mut *tx).await?.rows_affected(),
            counters: sqlx::query("DELETE FROM sender_counters WHERE window_start < $1").bind(stale).execute(&mut *tx).await?.rows_affected(),
            events: sqlx::query("DELETE FROM webhook_events WHERE state = 'done' AND processed_at < $1")
                .bind(events_before).execute(&mut *tx).await?.rows_affected(),
        });
        Ok(purged)
    }
}

/// The stored decision roles: NULL for the defaults.
pub(super) fn decision_roles_from(tenant: &str, raw: Option<&str>) -> Result<DecisionRoles> {
    match raw {
        None => Ok(DecisionRoles::default()),
        Some(raw) => serde_json::from_str(raw).map_err(|e| StoreError::Corrupt {
            tenant: tenant.into(),
            what: "decision roles",
            problem: e.to_string(),
        }),
    }
}

/// What is stored for decision roles: NULL when they are the defaults (so a later change of
/// the defaults reaches the tenant).
pub(super) fn decision_roles_column(roles: &DecisionRoles) -> Option<String> {
    (*roles != DecisionRoles::default()).then(|| serde_json::to_string(roles).expect("plain data serialises"))
}

impl Store {
    /// (channel, status, answered) of every delivery of a tenant, for summaries.
    pub async fn delivery_statuses(&self, tenant: &str) -> Result<Vec<(String, Option<String>, bool)>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT channel, status, answered_at IS NOT NULL FROM deliveries WHERE tenant_id = $1 ORDER BY job_id")
            .bind(tenant).fetch_all(p).await?.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()))
    }

    /// Jobs of a tenant by (kind, state).
    pub async fn job_counts_by_kind(&self, tenant: &str) -> Result<std::collections::HashMap<(String, String), i64>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT kind, state, COUNT(*) FROM jobs WHERE tenant_id = $1 GROUP BY kind, state")
            .bind(tenant).fetch_all(p).await?.into_iter().map(|r| ((r.get::<String, _>(0), r.get::<String, _>(1)), r.get::<i64, _>(2))).collect()))
    }

    /// Work of a tenant still under way: jobs due or running, webhooks not yet processed.
    pub async fn work_in_flight(&self, tenant: &str, now: DateTime<Utc>) -> Result<i64> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE tenant_id = $1 AND ((state = 'queued' AND run_at <= $2) OR state = 'running'))
                  + (SELECT COUNT(*) FROM webhook_events WHERE tenant_id = $1 AND state <> 'done')")
            .bind(tenant).bind(millis(now)).fetch_one(p).await?.get::<i64, _>(0)))
    }
}
