//! The control plane's side of the store: tenant settings as a whole, listings with keyset
//! paging, a record's full history, replay of failed jobs, and the event log `Watch` reads.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row;

use super::{AuditEntry, Backend, Result, Store, StoreError, Tenant, TwilioAccount, audit_from, from_millis, json, millis};

/// A tenant with everything the control plane shows besides its credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSettings {
    pub tenant: Tenant,
    pub twilio: TwilioAccount,
    pub execute_decisions: bool,
    pub call_opted_out: bool,
    /// Whether an answer without proof cancels its episode's escalations.
    pub unproven_answers_cancel_escalations: bool,
    /// Who may decide each kind of record.
    pub decision_roles: crate::core::intake::DecisionRoles,
    /// Whether credentials may go to a plain http:// origin off loopback.
    pub allow_plain_http: bool,
    pub active_plugin: Option<i64>,
    pub plugin_settings: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PluginVersionRow {
    pub version: i64,
    pub sha256: String,
    pub world: String,
    pub uploaded_at: DateTime<Utc>,
    pub size_bytes: i64,
}

/// An episode of attention as the control plane lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeRow {
    pub id: i64,
    pub tenant: String,
    pub kind: String,
    pub record_key: String,
    pub episode: i64,
    pub state: String,
    pub reason_code: String,
    pub summary: String,
    pub urgency: String,
    pub due_date: Option<String>,
    pub resolution: Option<String>,
    pub reference: String,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// A job with its delivery, as the control plane lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: i64,
    pub key: String,
    pub tenant: String,
    pub kind: String,
    pub record_kind: String,
    pub record_key: String,
    pub episode: i64,
    pub state: String,
    pub attempt: i64,
    pub outcome: Option<String>,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivery: Option<DeliveryRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub sid: Option<String>,
    pub channel: String,
    pub to: String,
    pub from: String,
    pub status: Option<String>,
    pub error_code: Option<String>,
    pub sent_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
}

/// Filters of a listing; `before_id` is the keyset page cursor (newest first).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub tenant: Option<String>,
    pub state: Option<String>,
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub enum Replayed {
    Queued,
    /// Already queued, running or done: nothing changed.
    Unchanged,
    /// Its last send's outcome is unknown; replaying may send twice.
    OutcomeUnknown,
    NotFound,
}

/// What `/metrics` reads from the store at scrape time.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    pub tenants: Vec<String>,
    /// Per job kind (and `webhook`): due and waiting, and the oldest one's wait in seconds.
    pub queues: std::collections::HashMap<String, (i64, f64)>,
    /// Open episodes per (tenant, record kind).
    pub attention: std::collections::HashMap<(String, String), i64>,
    /// Seconds since each tenant's last successful poll ended.
    pub poll_lag: std::collections::HashMap<String, f64>,
    /// Per (tenant, stream): seconds from the day its cursor stands at (UTC midnight) to now.
    pub cursor_lag: std::collections::HashMap<(String, String), f64>,
}

/// What deleting a tenant did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub jobs_cancelled: u64,
}

const TENANT_COLUMNS: &str = "id, name, qad_base_url, qad_domain, qad_entity, schedule, profile, twilio_account_sid, twilio_from,
    twilio_base_url, execute_decisions, call_opted_out, active_plugin, plugin_settings, created_at, updated_at,
    unproven_answers_cancel_escalations, decision_roles, allow_plain_http";

const EPISODE_COLUMNS: &str = "id, tenant_id, kind, record_key, episode, state, reason_code, summary, urgency, due_date, resolution,
    reference, opened_at, resolved_at";

const JOB_COLUMNS: &str = "j.id, j.job_key, j.tenant_id, j.kind, j.record_kind, j.record_key, j.episode, j.state, j.attempt, j.outcome,
    j.run_at, j.created_at, j.updated_at, d.sid, d.channel, d.to_phone, d.from_phone, d.status, d.error_code, d.sent_at, d.answered_at";

macro_rules! tenant_settings_from {
    ($r:expr) => {{
        let r = $r;
        let id: String = r.get(0);
        let roles = super::intake::decision_roles_from(&id, r.get::<Option<String>, _>(17).as_deref());
        roles.and_then(|decision_roles| {
            super::tenant_from(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)).map(|tenant| TenantSettings {
                tenant,
                twilio: TwilioAccount {
                    account_sid: r.get(7),
                    from: r.get(8),
                    base_url: r.get(9),
                },
                execute_decisions: r.get(10),
                call_opted_out: r.get(11),
                active_plugin: r.get(12),
                plugin_settings: r.get(13),
                created_at: from_millis(r.get(14)),
                updated_at: from_millis(r.get(15)),
                unproven_answers_cancel_escalations: r.get(16),
                decision_roles,
                allow_plain_http: r.get(18),
            })
        })
    }};
}

macro_rules! episode_from {
    ($r:expr) => {{
        let r = $r;
        EpisodeRow {
            id: r.get(0),
            tenant: r.get(1),
            kind: r.get(2),
            record_key: r.get(3),
            episode: r.get(4),
            state: r.get(5),
            reason_code: r.get(6),
            summary: r.get(7),
            urgency: r.get(8),
            due_date: r.get(9),
            resolution: r.get(10),
            reference: r.get(11),
            opened_at: from_millis(r.get(12)),
            resolved_at: r.get::<Option<i64>, _>(13).map(from_millis),
        }
    }};
}

macro_rules! job_from {
    ($r:expr) => {{
        let r = $r;
        let channel: Option<String> = r.get(14);
        JobRow {
            id: r.get(0),
            key: r.get(1),
            tenant: r.get(2),
            kind: r.get(3),
            record_kind: r.get(4),
            record_key: r.get(5),
            episode: r.get(6),
            state: r.get(7),
            attempt: r.get(8),
            outcome: r.get(9),
            run_at: from_millis(r.get(10)),
            created_at: from_millis(r.get(11)),
            updated_at: from_millis(r.get(12)),
            delivery: channel.map(|channel| DeliveryRow {
                sid: r.get(13),
                channel,
                to: r.get(15),
                from: r.get(16),
                status: r.get(17),
                error_code: r.get(18),
                sent_at: from_millis(r.get(19)),
                answered_at: r.get::<Option<i64>, _>(20).map(from_millis),
            }),
        }
    }};
}

impl Store {
    pub async fn tenant_settings(&self, id: &str) -> Result<TenantSettings> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
        let row = on_pool!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?
            .map(|r| tenant_settings_from!(r)));
        row.ok_or_else(|| StoreError::NoSuchTenant(id.into()))?
    }

    pub async fn all_tenant_settings(&self) -> Result<Vec<TenantSettings>> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id");
        on_pool!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(p).await?
            .into_iter().map(|r| tenant_settings_from!(r)).collect())
    }

    /// Write every setting of an existing tenant (credentials and plugins apart).
    pub async fn update_tenant(&self, s: &TenantSettings, now: DateTime<Utc>) -> Result<()> {
        let t = &s.tenant;
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE tenants SET name = $2, qad_base_url = $3, qad_domain = $4, qad_entity = $5, schedule = $6, profile = $7,
                 twilio_account_sid = $8, twilio_from = $9, twilio_base_url = $10, execute_decisions = $11, call_opted_out = $12,
                 plugin_settings = $13, updated_at = $14, unproven_answers_cancel_escalations = $15, decision_roles = $16,
                 allow_plain_http = $17 WHERE id = $1",
        )
        .bind(&t.id).bind(&t.name).bind(&t.qad_base_url).bind(&t.qad_domain).bind(&t.qad_entity).bind(json(&t.schedule))
        .bind(json(&t.profile)).bind(&s.twilio.account_sid).bind(&s.twilio.from).bind(&s.twilio.base_url)
        .bind(s.execute_decisions).bind(s.call_opted_out).bind(&s.plugin_settings).bind(millis(now))
        .bind(s.unproven_answers_cancel_escalations).bind(super::intake::decision_roles_column(&s.decision_roles))
        .bind(s.allow_plain_http)
        .execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NoSuchTenant(t.id.clone()));
        }
        Ok(())
    }

    /// Delete a tenant: credentials and plugins go with it (cascade), its queued and leased
    /// work is cancelled; records, jobs and the audit trail stay readable.
    pub async fn delete_tenant(&self, id: &str, now: DateTime<Utc>) -> Result<Deleted> {
        let at = millis(now);
        let deleted = in_tx!(self, tx => {
            let n = sqlx::query("DELETE FROM tenants WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                None
            } else {
                // SQLite enforces the cascade only with foreign keys on; say it explicitly.
                sqlx::query("DELETE FROM secrets WHERE tenant_id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM plugins WHERE tenant_id = $1").bind(id).execute(&mut *tx).await?;
                // What strangers wrote goes with the tenant too.
                sqlx::query("DELETE FROM unmatched_replies WHERE tenant_id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM sender_counters WHERE tenant_id = $1").bind(id).execute(&mut *tx).await?;
                let cancelled = sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', outcome = $2, lease_until = NULL, updated_at = $3
                     WHERE tenant_id = $1 AND state IN ('queued', 'running')",
                )
                .bind(id).bind(json!({"cancelled": "tenant deleted"}).to_string()).bind(at)
                .execute(&mut *tx).await?.rows_affected();
                sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, 'tenant', $1, NULL, $2, 'tenant_deleted', $3)")
                    .bind(id).bind(at).bind(json!({"jobs_cancelled": cancelled}).to_string()).execute(&mut *tx).await?;
                Some(Deleted { jobs_cancelled: cancelled })
            }
        });
        deleted.ok_or_else(|| StoreError::NoSuchTenant(id.into()))
    }

    pub async fn plugin_versions(&self, tenant: &str) -> Result<Vec<PluginVersionRow>> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT version, sha256, world, uploaded_at, LENGTH(wasm) FROM plugins WHERE tenant_id = $1 ORDER BY version",
        ).bind(tenant).fetch_all(p).await?.into_iter().map(|r| PluginVersionRow {
            version: r.get(0), sha256: r.get(1), world: r.get(2), uploaded_at: from_millis(r.get(3)),
            size_bytes: r.get::<i32, _>(4) as i64,
        }).collect()))
    }

    /// Episodes of attention, newest first.
    pub async fn list_episodes(&self, f: &ListFilter) -> Result<Vec<EpisodeRow>> {
        let sql = format!(
            "SELECT {EPISODE_COLUMNS} FROM attention WHERE ($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR state = $2)
             AND ($3 IS NULL OR kind = $3) AND opened_at >= $4 AND id < $5 ORDER BY id DESC LIMIT CAST($6 AS BIGINT)"
        );
        on_pool!(self, p => Ok(sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&f.tenant).bind(&f.state).bind(&f.kind).bind(f.since.map(millis).unwrap_or(i64::MIN))
            .bind(f.before_id.unwrap_or(i64::MAX)).bind(f.limit)
            .fetch_all(p).await?.into_iter().map(|r| episode_from!(r)).collect()))
    }

    /// Jobs with their deliveries, newest first.
    pub async fn list_jobs(&self, f: &ListFilter) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs j LEFT JOIN deliveries d ON d.job_id = j.id
             WHERE ($1 IS NULL OR j.tenant_id = $1) AND ($2 IS NULL OR j.state = $2) AND ($3 IS NULL OR j.kind = $3)
             AND j.created_at >= $4 AND j.id < $5 ORDER BY j.id DESC LIMIT CAST($6 AS BIGINT)"
        );
        on_pool!(self, p => Ok(sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&f.tenant).bind(&f.state).bind(&f.kind).bind(f.since.map(millis).unwrap_or(i64::MIN))
            .bind(f.before_id.unwrap_or(i64::MAX)).bind(f.limit)
            .fetch_all(p).await?.into_iter().map(|r| job_from!(r)).collect()))
    }

    pub async fn job_row(&self, tenant: &str, id: i64) -> Result<Option<JobRow>> {
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs j LEFT JOIN deliveries d ON d.job_id = j.id WHERE j.tenant_id = $1 AND j.id = $2");
        on_pool!(self, p => Ok(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant).bind(id).fetch_optional(p).await?
            .map(|r| job_from!(r))))
    }

    /// One record's episodes (oldest first), jobs with deliveries, and its data as last read.
    pub async fn record_history(&self, tenant: &str, kind: &str, key: &str) -> Result<(Vec<EpisodeRow>, Vec<JobRow>, Option<Value>)> {
        let episodes_sql =
            format!("SELECT {EPISODE_COLUMNS} FROM attention WHERE tenant_id = $1 AND kind = $2 AND record_key = $3 ORDER BY episode");
        let jobs_sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs j LEFT JOIN deliveries d ON d.job_id = j.id
             WHERE j.tenant_id = $1 AND j.record_kind = $2 AND j.record_key = $3 ORDER BY j.id"
        );
        on_pool!(self, p => {
            let episodes = sqlx::query(sqlx::AssertSqlSafe(episodes_sql.as_str())).bind(tenant).bind(kind).bind(key)
                .fetch_all(p).await?.into_iter().map(|r| episode_from!(r)).collect();
            let jobs = sqlx::query(sqlx::AssertSqlSafe(jobs_sql.as_str())).bind(tenant).bind(kind).bind(key)
                .fetch_all(p).await?.into_iter().map(|r| job_from!(r)).collect();
            let data: Option<String> = sqlx::query("SELECT data FROM qad_records WHERE tenant_id = $1 AND kind = $2 AND record_key = $3")
                .bind(tenant).bind(kind).bind(key).fetch_optional(p).await?.map(|r| r.get(0));
            Ok((episodes, jobs, data.and_then(|d| serde_json::from_str(&d).ok())))
        })
    }

    /// Queue a failed or dead job again, audited on its record. A job in any other state is
    /// left alone, so replaying twice acts once.
    pub async fn replay_job(&self, tenant: &str, id: i64, accept_possible_duplicate: bool, now: DateTime<Utc>) -> Result<Replayed> {
        let at = millis(now);
        let replayed = in_tx!(self, tx => {
            let row = sqlx::query("SELECT state, record_kind, record_key, episode, job_key FROM jobs WHERE tenant_id = $1 AND id = $2")
                .bind(tenant).bind(id).fetch_optional(&mut *tx).await?;
            match row {
                None => Replayed::NotFound,
                Some(r) => {
                    let state: String = r.get(0);
                    let replayable = state == "failed" || state == "dead" || (state == "unknown" && accept_possible_duplicate);
                    if state == "unknown" && !accept_possible_duplicate {
                        Replayed::OutcomeUnknown
                    } else if !replayable {
                        Replayed::Unchanged
                    } else {
                        // `reconcile` stays on for an unknown outcome: the dispatcher looks before sending.
                        sqlx::query(
                            "UPDATE jobs SET state = 'queued', run_at = $3, lease_until = NULL, worker = NULL, updated_at = $3,
                                 reconcile = (state = 'unknown') WHERE tenant_id = $1 AND id = $2 AND state = $4",
                        )
                        .bind(tenant).bind(id).bind(at).bind(&state).execute(&mut *tx).await?;
                        sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, $2, $3, $4, $5, 'replayed', $6)")
                            .bind(tenant).bind(r.get::<String, _>(1)).bind(r.get::<String, _>(2)).bind(r.get::<i64, _>(3)).bind(at)
                            .bind(json!({"job": r.get::<String, _>(4), "was": state}).to_string())
                            .execute(&mut *tx).await?;
                        Replayed::Queued
                    }
                }
            }
        });
        Ok(replayed)
    }

    /// Audit events after `after_id` up to `up_to` (inclusive), oldest first, of one tenant or all.
    pub async fn events_after(&self, tenant: Option<&str>, after_id: i64, up_to: i64, limit: i64) -> Result<Vec<(String, AuditEntry)>> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT id, kind, record_key, episode, at, event, detail, tenant_id FROM audit
             WHERE id > $1 AND id <= $2 AND ($3 IS NULL OR tenant_id = $3) ORDER BY id LIMIT CAST($4 AS BIGINT)",
        ).bind(after_id).bind(up_to).bind(tenant).bind(limit).fetch_all(p).await?.into_iter()
            .map(|r| (r.get::<String, _>(7), audit_from(r))).collect()))
    }

    /// The ids of audit events after `after_id`, oldest first (the event pump's look-ahead).
    pub async fn event_ids_after(&self, after_id: i64, limit: i64) -> Result<Vec<i64>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT id FROM audit WHERE id > $1 ORDER BY id LIMIT CAST($2 AS BIGINT)")
            .bind(after_id).bind(limit).fetch_all(p).await?.into_iter().map(|r| r.get::<i64, _>(0)).collect()))
    }

    pub async fn metrics_snapshot(&self, now: DateTime<Utc>) -> Result<MetricsSnapshot> {
        let at = millis(now);
        let age = |oldest: Option<i64>| oldest.map_or(0.0, |o| ((at - o).max(0)) as f64 / 1000.0);
        on_pool!(self, p => {
            let mut snap = MetricsSnapshot {
                tenants: sqlx::query("SELECT id FROM tenants ORDER BY id").fetch_all(p).await?.into_iter().map(|r| r.get(0)).collect(),
                ..Default::default()
            };
            for r in sqlx::query("SELECT kind, COUNT(*), MIN(run_at) FROM jobs WHERE state = 'queued' AND run_at <= $1 GROUP BY kind")
                .bind(at).fetch_all(p).await? {
                snap.queues.insert(r.get(0), (r.get(1), age(r.get(2))));
            }
            let w = sqlx::query("SELECT COUNT(*), MIN(received_at) FROM webhook_events WHERE state <> 'done'").fetch_one(p).await?;
            snap.queues.insert("webhook".into(), (w.get(0), age(w.get(1))));
            for r in sqlx::query("SELECT tenant_id, kind, COUNT(*) FROM attention WHERE state = 'open' GROUP BY tenant_id, kind")
                .fetch_all(p).await? {
                snap.attention.insert((r.get(0), r.get(1)), r.get(2));
            }
            for r in sqlx::query("SELECT tenant_id, MAX(finished_at) FROM polls WHERE outcome = 'ok' GROUP BY tenant_id")
                .fetch_all(p).await? {
                snap.poll_lag.insert(r.get(0), age(r.get(1)));
            }
            for r in sqlx::query("SELECT tenant_id, stream, cursor FROM poll_cursors").fetch_all(p).await? {
                let cursor: String = r.get(2);
                if let Ok(day) = chrono::NaiveDate::parse_from_str(&cursor, "%Y-%m-%d") {
                    let at_day = day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
                    snap.cursor_lag.insert((r.get(0), r.get(1)), age(Some(millis(at_day))));
                }
            }
            Ok(snap)
        })
    }

    pub async fn last_event_id(&self) -> Result<i64> {
        on_pool!(self, p => Ok(sqlx::query("SELECT COALESCE(MAX(id), 0) FROM audit").fetch_one(p).await?.get::<i64, _>(0)))
    }
}
