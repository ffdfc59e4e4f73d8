//! Group commit: many records' changes, or many attempts' ends, in one transaction with
//! multi-row statements. Each item keeps the atomicity it had alone (a record is applied
//! whole or not at all, with the rest of its batch), and a batch of one is the single case:
//! `apply` and `finish_send` are these with one item, so there is one code path.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{QueryBuilder, Row};

use super::{Applied, Backend, EpisodeChange, Job, JobEnd, NewEpisode, NewJob, RecordChange, Result, Sent, Store, json as to_json, millis};

/// Rows per multi-row statement: under both engines' bind limits (SQLite 32,766,
/// PostgreSQL 65,535) at the widest row written so (an episode: fourteen columns).
const ROWS_PER_STATEMENT: usize = 1000;

/// How one attempt of a job ended, as [`Store::finish_sends`] records it.
#[derive(Debug, Clone)]
pub struct Finish {
    /// Shared with the worker that ran the attempt, not copied: a job carries its payload.
    pub job: Arc<Job>,
    pub end: JobEnd,
    pub event: String,
    pub detail: Value,
    /// Twilio accepted it: its delivery is recorded in the same transaction.
    pub sent: Option<Sent>,
}

impl Finish {
    pub fn of(job: &Arc<Job>, end: &JobEnd, event: &str, detail: &Value, sent: Option<&Sent>) -> Self {
        Finish {
            job: job.clone(),
            end: end.clone(),
            event: event.to_string(),
            detail: detail.clone(),
            sent: sent.cloned(),
        }
    }
}

/// An audit row about to be written.
struct AuditRow<'a> {
    tenant: &'a str,
    kind: &'a str,
    key: &'a str,
    episode: Option<i64>,
    event: &'a str,
    detail: Cow<'a, str>,
}

/// Open the episodes in `$opens` (index into `$changes`, episode), many rows per statement,
/// each audited `needs_attention` on its record in the same order; `$opens` is left empty.
macro_rules! insert_episodes {
    ($tx:ident, $tenant:expr, $changes:expr, $opens:ident, $at:expr) => {
        for chunk in $opens.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::new(
                "INSERT INTO attention (tenant_id, kind, record_key, episode, state, reason_code, reason, summary, urgency, people, due_date, opened_at, updated_at, reference) ",
            );
            q.push_values(chunk, |mut b, (i, o)| {
                let (c, a) = (&$changes[*i], &o.attention);
                b.push_bind($tenant).push_bind(c.kind.as_str()).push_bind(c.record_key.as_str()).push_bind(o.episode).push_bind("open")
                    .push_bind(a.reason.code()).push_bind(to_json(&a.reason)).push_bind(o.summary.as_str()).push_bind(a.urgency.as_str())
                    .push_bind(to_json(&o.people)).push_bind(a.due_date.map(|d| d.to_string())).push_bind($at).push_bind($at)
                    .push_bind(o.reference.as_str());
            });
            q.build().execute(&mut *$tx).await?;
        }
        let audit: Vec<AuditRow<'_>> = $opens
            .iter()
            .map(|(i, o)| AuditRow {
                tenant: $tenant,
                kind: $changes[*i].kind.as_str(),
                key: $changes[*i].record_key.as_str(),
                episode: Some(o.episode),
                event: "needs_attention",
                detail: json!({ "reason": o.attention.reason, "urgency": o.attention.urgency, "summary": o.summary, "people": o.people })
                    .to_string()
                    .into(),
            })
            .collect();
        insert_audit_rows!($tx, audit, $at);
        $opens.clear();
    };
}

/// Append audit rows in order (ids follow the order given), many per statement.
macro_rules! insert_audit_rows {
    ($tx:ident, $rows:expr, $at:expr) => {
        for chunk in $rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::new("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) ");
            q.push_values(chunk, |mut b, r: &AuditRow<'_>| {
                b.push_bind(r.tenant)
                    .push_bind(r.kind)
                    .push_bind(r.key)
                    .push_bind(r.episode)
                    .push_bind($at)
                    .push_bind(r.event)
                    .push_bind(r.detail.as_ref());
            });
            q.build().execute(&mut *$tx).await?;
        }
    };
}

impl Store {
    /// Apply the changes of many records in one transaction: per record its version, its
    /// episode and its audit entries, and the jobs it enqueues (a job key seen before is a
    /// no-op). One commit for the lot; what `apply` does for one, in the same order.
    pub async fn apply_batch(&self, tenant: &str, changes: &[RecordChange], now: DateTime<Utc>) -> Result<Vec<Applied>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let at = millis(now);
        let applied = in_tx!(self, tx => {
            let mut applied = vec![Applied::default(); changes.len()];
            let mut episode_for_audit: Vec<Option<i64>> = vec![None; changes.len()];
            // Versions seen, one upsert for the batch (the last of a key wins, as it would
            // one after another).
            let mut seen_keys = HashSet::new();
            let seen: Vec<(&str, &str, &String, String)> = changes
                .iter()
                .rev()
                .filter_map(|c| c.seen.as_ref().map(|(v, d)| (c.kind.as_str(), c.record_key.as_str(), v, d.to_string())))
                .filter(|(k, key, _, _)| seen_keys.insert((*k, *key)))
                .collect();
            for chunk in seen.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::new("INSERT INTO qad_records (tenant_id, kind, record_key, version, data, first_seen, last_seen) ");
                q.push_values(chunk, |mut b, (kind, key, version, data)| {
                    b.push_bind(tenant).push_bind(*kind).push_bind(*key).push_bind(*version).push_bind(data.as_str()).push_bind(at).push_bind(at);
                });
                q.push(" ON CONFLICT (tenant_id, kind, record_key) DO UPDATE SET version = excluded.version, data = excluded.data, last_seen = excluded.last_seen");
                q.build().execute(&mut *tx).await?;
            }
            // Episodes: resolutions and updates one record at a time; episodes opened (a first
            // poll opens one per record) many to a statement, held back until a later change
            // of the same record needs them written first, so each record's order stands.
            let mut opens: Vec<(usize, &NewEpisode)> = Vec::new();
            for (i, change) in changes.iter().enumerate() {
                let (kind, key) = (change.kind.as_str(), change.record_key.as_str());
                if opens.iter().any(|(j, _)| changes[*j].kind == change.kind && changes[*j].record_key == change.record_key) {
                    insert_episodes!(tx, tenant, changes, opens, at);
                }
                let (resolve, open, update) = match &change.episode {
                    EpisodeChange::None => (None, None, None),
                    EpisodeChange::Open { opened } => (None, Some(opened), None),
                    EpisodeChange::Update { episode, attention, summary, people } => (None, None, Some((*episode, attention, summary, people))),
                    EpisodeChange::Resolve { episode, cause } => (Some((*episode, cause)), None, None),
                    EpisodeChange::Replace { episode, cause, opened } => (Some((*episode, cause)), Some(opened), None),
                };
                if let Some((episode, cause)) = resolve {
                    sqlx::query("UPDATE attention SET state = 'resolved', resolved_at = $5, updated_at = $5, resolution = $6
                                 WHERE tenant_id = $1 AND kind = $2 AND record_key = $3 AND episode = $4 AND state = 'open'")
                        .bind(tenant).bind(kind).bind(key).bind(episode).bind(at).bind(cause).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, $2, $3, $4, $5, 'resolved', $6)")
                        .bind(tenant).bind(kind).bind(key).bind(episode).bind(at)
                        .bind(json!({ "cause": cause }).to_string()).execute(&mut *tx).await?;
                    applied[i].resolved = Some(episode);
                    episode_for_audit[i] = Some(episode);
                }
                if let Some((episode, a, summary, people)) = update {
                    sqlx::query("UPDATE attention SET urgency = $5, reason = $6, summary = $7, people = $8, updated_at = $9, due_date = $10
                                 WHERE tenant_id = $1 AND kind = $2 AND record_key = $3 AND episode = $4 AND state = 'open'")
                        .bind(tenant).bind(kind).bind(key).bind(episode).bind(a.urgency.as_str()).bind(to_json(&a.reason))
                        .bind(summary).bind(to_json(people)).bind(at).bind(a.due_date.map(|d| d.to_string()))
                        .execute(&mut *tx).await?;
                    episode_for_audit[i] = Some(episode);
                }
                if let Some(o) = open {
                    opens.push((i, o));
                    applied[i].opened = Some(o.episode);
                    episode_for_audit[i] = Some(o.episode);
                }
            }
            insert_episodes!(tx, tenant, changes, opens, at);
            // What the poller noted on each record (routing, faults, who was unreachable).
            let noted: Vec<AuditRow<'_>> = changes
                .iter()
                .zip(&episode_for_audit)
                .flat_map(|(c, episode)| {
                    c.audit.iter().map(move |(event, detail)| AuditRow {
                        tenant,
                        kind: c.kind.as_str(),
                        key: c.record_key.as_str(),
                        episode: *episode,
                        event: event.as_str(),
                        detail: Cow::Borrowed(detail.as_str()),
                    })
                })
                .collect();
            insert_audit_rows!(tx, noted, at);
            // Sends and escalations not yet made are moot once the record is resolved.
            for (i, change) in changes.iter().enumerate() {
                let Some(episode) = applied[i].resolved else { continue };
                let (kind, key) = (change.kind.as_str(), change.record_key.as_str());
                let cancelled = sqlx::query("UPDATE jobs SET state = 'cancelled', updated_at = $5
                             WHERE tenant_id = $1 AND record_kind = $2 AND record_key = $3 AND episode = $4 AND state = 'queued'")
                    .bind(tenant).bind(kind).bind(key).bind(episode).bind(at).execute(&mut *tx).await?.rows_affected();
                if cancelled > 0 {
                    sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, $2, $3, $4, $5, 'alerts_cancelled', $6)")
                        .bind(tenant).bind(kind).bind(key).bind(episode).bind(at)
                        .bind(json!({"jobs": cancelled, "why": "the record was resolved"}).to_string())
                        .execute(&mut *tx).await?;
                }
            }
            // The alerts: a job key seen before (in the store or earlier in the batch) is a
            // no-op; each new job is audited as queued on its record.
            let jobs: Vec<(&RecordChange, &NewJob)> = changes.iter().flat_map(|c| c.jobs.iter().map(move |j| (c, j))).collect();
            let mut added: HashMap<String, i64> = HashMap::new();
            for chunk in jobs.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO jobs (job_key, tenant_id, kind, record_kind, record_key, episode, state, run_at, created_at, updated_at, escalation_step) ",
                );
                q.push_values(chunk, |mut b, (c, j)| {
                    b.push_bind(&j.key).push_bind(tenant).push_bind(&j.kind).push_bind(c.kind.as_str()).push_bind(c.record_key.as_str())
                        .push_bind(j.episode).push_bind("queued").push_bind(millis(j.run_at))
                        .push_bind(at).push_bind(at).push_bind(j.escalation_step as i64);
                });
                q.push(" ON CONFLICT (job_key) DO NOTHING RETURNING id, job_key");
                for r in q.build().fetch_all(&mut *tx).await? {
                    added.insert(r.get(1), r.get(0));
                }
            }
            // The jobs added, each at its first place in the batch (a repeat was the no-op).
            let new_jobs: Vec<(&RecordChange, &NewJob, i64)> =
                jobs.iter().filter_map(|(c, j)| added.remove(&j.key).map(|id| (*c, *j, id))).collect();
            // Each new job's payload, written once: its state changes in a small row of its own.
            for chunk in new_jobs.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::new("INSERT INTO job_payloads (job_id, payload) ");
                q.push_values(chunk, |mut b, (_, j, id)| {
                    b.push_bind(*id).push_bind(j.payload.as_str());
                });
                q.build().execute(&mut *tx).await?;
            }
            let queued: Vec<AuditRow<'_>> = new_jobs
                .iter()
                .map(|(c, j, _)| AuditRow {
                    tenant,
                    kind: c.kind.as_str(),
                    key: c.record_key.as_str(),
                    episode: Some(j.episode),
                    event: "queued",
                    detail: json!({"job": j.key, "due": j.run_at.to_rfc3339()}).to_string().into(),
                })
                .collect();
            insert_audit_rows!(tx, queued, at);
            applied
        });
        Ok(applied)
    }

    /// End many attempts in one transaction: per attempt its state, its audit entry and, when
    /// Twilio accepted it, its delivery. Per attempt: false when a newer attempt took the
    /// job over (that worker is fenced out and must not act on it).
    pub async fn finish_sends(&self, batch: &[Finish], now: DateTime<Utc>) -> Result<Vec<bool>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let at = millis(now);
        let ends: Vec<(&str, Option<i64>, bool)> = batch
            .iter()
            .map(|f| match &f.end {
                JobEnd::Done => ("done", None, false),
                JobEnd::Failed => ("failed", None, false),
                JobEnd::Dead => ("dead", None, false),
                JobEnd::Unknown => ("unknown", None, false),
                JobEnd::Retry { run_at, reconcile } => ("queued", Some(millis(*run_at)), *reconcile),
            })
            .collect();
        let outcomes: Vec<String> = batch.iter().map(|f| f.detail.to_string()).collect();
        // Each attempt's audit entry, written out before the write lock is taken: the one
        // writer is what every commit waits for, so it is held only for SQL.
        let audit_details: Vec<String> = batch
            .iter()
            .map(|f| {
                let mut d = f.detail.clone();
                if let Value::Object(m) = &mut d {
                    m.insert("job".into(), Value::String(f.job.key.clone()));
                    m.insert("attempt".into(), Value::from(f.job.attempt));
                }
                d.to_string()
            })
            .collect();
        let updated: HashSet<i64> = in_tx!(self, tx => {
            let mut updated = HashSet::new();
            let rows: Vec<usize> = (0..batch.len()).collect();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                // Fenced: only the attempt that holds the job changes it.
                let mut q = QueryBuilder::new("WITH ended (job_id, job_attempt, new_state, new_run_at, new_reconcile, new_outcome) AS (");
                q.push_values(chunk, |mut b, i| {
                    let (state, run_at, reconcile) = ends[*i];
                    b.push_bind(batch[*i].job.id).push_bind(batch[*i].job.attempt).push_bind(state).push_bind(run_at)
                        .push_bind(reconcile).push_bind(outcomes[*i].as_str());
                });
                q.push(
                    ") UPDATE jobs SET state = ended.new_state, run_at = COALESCE(ended.new_run_at, jobs.run_at),
                          reconcile = ended.new_reconcile, outcome = ended.new_outcome, lease_until = NULL, updated_at = ",
                );
                q.push_bind(at);
                q.push(" FROM ended WHERE jobs.id = ended.job_id AND jobs.attempt = ended.job_attempt AND jobs.state = 'running' RETURNING id");
                for r in q.build().fetch_all(&mut *tx).await? {
                    updated.insert(r.get::<i64, _>(0));
                }
            }
            // Each attempt that ended once: a repeat of the same attempt in one batch is not.
            let mut first = HashSet::new();
            let ended: Vec<(&Finish, &str)> = batch
                .iter()
                .zip(&audit_details)
                .filter(|(f, _)| updated.contains(&f.job.id) && first.insert(f.job.id))
                .map(|(f, d)| (f, d.as_str()))
                .collect();
            let audit: Vec<AuditRow<'_>> = ended
                .iter()
                .map(|(f, detail)| AuditRow {
                    tenant: &f.job.tenant,
                    kind: &f.job.record_kind,
                    key: &f.job.record_key,
                    episode: Some(f.job.episode),
                    event: &f.event,
                    detail: Cow::Borrowed(*detail),
                })
                .collect();
            insert_audit_rows!(tx, audit, at);
            let sent: Vec<(&Job, &Sent)> = ended.iter().filter_map(|(f, _)| f.sent.as_ref().map(|s| (&*f.job, s))).collect();
            for chunk in sent.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::new("INSERT INTO deliveries (job_id, tenant_id, sid, channel, to_phone, from_phone, sent_at, updated_at) ");
                q.push_values(chunk, |mut b, (job, s)| {
                    b.push_bind(job.id).push_bind(&job.tenant).push_bind(&s.sid).push_bind(s.channel.as_str()).push_bind(&s.to)
                        .push_bind(&s.from).push_bind(at).push_bind(at);
                });
                q.push(" ON CONFLICT (job_id) DO UPDATE SET sid = excluded.sid, sent_at = excluded.sent_at");
                q.build().execute(&mut *tx).await?;
            }
            first
        });
        let mut answered = HashSet::new();
        Ok(batch
            .iter()
            .map(|f| updated.contains(&f.job.id) && answered.insert(f.job.id))
            .collect())
    }
}
