//! The store adapter: every table behind one narrow API, on SQLite (embedded default) or
//! PostgreSQL, chosen by the URL. Queries are written once in SQL both engines accept
//! (`$n` parameters, `ON CONFLICT`, `RETURNING`, times as Unix milliseconds); the
//! `on_pool!`/`in_tx!` macros run the same body against whichever pool is configured.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use thiserror::Error;

use crate::core::attention::{Attention, Urgency};
use crate::core::episode::OpenEpisode;
use crate::core::model::RecordKind;
use crate::core::people::People;
use crate::core::profile::MappingProfile;
use crate::core::routing::Channel;
use crate::core::schedule::ScheduleSpec;
use crate::secrets::{Keyring, Origin, OriginError, Sealed, SecretError, SecretString, Service};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database URL {0:?} is neither sqlite:// nor postgres://")]
    UnknownEngine(String),
    #[error("tenant {0:?} does not exist")]
    NoSuchTenant(String),
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error("stored {what} of tenant {tenant} is not valid: {problem}")]
    Corrupt {
        tenant: String,
        what: &'static str,
        problem: String,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A credential would go in clear over the network (see `Origin::check_transport`).
    #[error(transparent)]
    Transport(#[from] OriginError),
    #[error("stored credential field {0:?} belongs to no service (qad.*, twilio.*)")]
    UnknownSecretField(String),
    /// The commit this change shared with others failed (the message says why).
    #[error("database (group commit): {0}")]
    GroupCommit(String),
}

/// kind, key, episode, reason code, urgency, people, record data.
type OpenTuple = (String, String, i64, String, String, String, Option<String>);
/// kind, key, episode, state, reason code, summary, urgency, people, due date, resolution.
type AttentionTuple = (
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// SQLite's transactions run on this one connection: writers of this process queue for
    /// it instead of in SQLite's busy handler (which sleeps in steps of milliseconds).
    sqlite_writer: Option<SqlitePool>,
    /// SQLite: the task that checkpoints the WAL, stopped when the last handle is dropped
    /// (held, never read).
    _checkpointer: Option<Arc<AbortOnDrop>>,
}

/// How often the WAL is checkpointed beside the writer.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// A commit checkpoints in line only past this many WAL pages (4 KiB each): a backstop
/// should the checkpointer fall behind.
const WAL_BACKSTOP_PAGES: u32 = 16_384;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copy committed WAL pages into the database file from a reader connection, on its own
/// thread, every [`CHECKPOINT_EVERY`]. In line, the copying and its fsync ran inside the
/// commit that crossed SQLite's threshold, on the one writer connection every transaction
/// queues for (a tenth of its time under dispatch load). PASSIVE never waits for or blocks
/// the writer; durability is unchanged (a commit is durable once it is in the WAL).
fn checkpointer(pool: SqlitePool) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !pool.is_closed() {
            tick.tick().await;
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                tracing::debug!(error = %e, "WAL checkpoint skipped; the next one catches up");
            }
        }
    }))
}

/// Run `$body` with `$pool` bound to the concrete pool; the body is compiled once per engine.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Run `$body` with `$pool` bound to the pool that writes: SQLite's one writer connection, or
/// PostgreSQL's pool. For a single statement, atomic on its own.
macro_rules! on_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite(pool) => {
                let $pool = $store.sqlite_writer.as_ref().unwrap_or(pool);
                $body
            }
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Run `$body` in a transaction bound to `$tx`, committed when the body succeeds. SQLite
/// takes the write lock up front (`BEGIN IMMEDIATE`) so two writers never deadlock on upgrade.
macro_rules! in_tx {
    ($store:expr, $tx:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite(pool) => {
                let pool = $store.sqlite_writer.as_ref().unwrap_or(pool);
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            Backend::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}

/// Inside transaction `$tx`, enqueue one record's jobs: a job key seen before is a no-op (the
/// alert's identity), a new job is audited as queued on the record.
macro_rules! insert_jobs {
    ($tx:ident, $tenant:expr, $kind:expr, $key:expr, $jobs:expr, $at:expr) => {
        for j in $jobs {
            let added: Option<i64> = sqlx::query_scalar(
                "INSERT INTO jobs (job_key, tenant_id, kind, record_kind, record_key, episode, state, run_at, created_at, updated_at, escalation_step)
                 VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $8, $9) ON CONFLICT (job_key) DO NOTHING RETURNING id",
            )
            .bind(&j.key).bind($tenant).bind(&j.kind).bind($kind).bind($key).bind(j.episode)
            .bind(millis(j.run_at)).bind($at).bind(j.escalation_step as i64).fetch_optional(&mut *$tx).await?;
            if let Some(id) = added {
                sqlx::query("INSERT INTO job_payloads (job_id, payload) VALUES ($1, $2)")
                    .bind(id).bind(j.payload.as_str()).execute(&mut *$tx).await?;
                sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, $2, $3, $4, $5, 'queued', $6)")
                    .bind($tenant).bind($kind).bind($key).bind(j.episode).bind($at)
                    .bind(serde_json::json!({"job": j.key, "due": j.run_at.to_rfc3339()}).to_string())
                    .execute(&mut *$tx).await?;
            }
        }
    };
}

/// A job's payload as `job_info` reads it from `job_payloads`; `Null` when missing or
/// unreadable, so its readers find fields absent rather than fail. (The dispatcher reads a
/// claimed job's text itself, and fails an unreadable one by name.)
pub(crate) fn payload_from(text: Option<String>) -> Value {
    text.and_then(|p| serde_json::from_str(&p).ok()).unwrap_or(Value::Null)
}

pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub qad_base_url: String,
    pub qad_domain: String,
    pub qad_entity: String,
    pub schedule: ScheduleSpec,
    pub profile: MappingProfile,
}

impl Tenant {
    /// The `x-qad-workspace-id` value.
    pub fn workspace(&self) -> String {
        format!("{}_{}", self.qad_domain, self.qad_entity)
    }
}

/// One entry of a record's audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub kind: String,
    pub record_key: String,
    pub episode: Option<i64>,
    pub at: DateTime<Utc>,
    pub event: String,
    pub detail: Value,
}

/// An event to append: what happened to which record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    pub kind: String,
    pub record_key: String,
    pub event: String,
    pub detail: Value,
}

/// An open episode with what is needed to re-check it without reading QAD for the record itself.
#[derive(Debug, Clone)]
pub struct OpenRecord {
    pub kind: RecordKind,
    pub record_key: String,
    pub open: OpenEpisode,
    pub data: Option<Value>,
}

/// A record needing attention as the store lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionRow {
    pub kind: String,
    pub record_key: String,
    pub episode: i64,
    pub state: String,
    pub reason_code: String,
    pub summary: String,
    pub urgency: String,
    pub people: People,
    pub due_date: Option<String>,
    pub resolution: Option<String>,
    pub reference: String,
}

/// What one record's processing changes, applied in one transaction so a crash leaves the
/// record either untouched (and re-read next poll) or fully processed.
#[derive(Debug, Clone)]
pub struct RecordChange {
    pub kind: RecordKind,
    pub record_key: String,
    /// The row's new content version and data, when it was read from QAD.
    pub seen: Option<(String, Value)>,
    pub episode: EpisodeChange,
    /// Entries for the record's trail: the event and its detail, already JSON text.
    pub audit: Vec<(String, String)>,
    /// Jobs to enqueue with the change (an alert's sends); a job key seen before is a no-op.
    pub jobs: Vec<NewJob>,
}

/// A job to enqueue: its unique key, what it does, when it is due.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub key: String,
    pub kind: String,
    pub episode: i64,
    /// What the job needs to run, as JSON text: written once, as given, never re-encoded.
    pub payload: String,
    pub run_at: DateTime<Utc>,
    /// 0 for a first alert; n > 0 for an escalation, which a reply cancels.
    pub escalation_step: u8,
}

/// A job being sent right now by some worker: what reconciliation must not mistake for its own.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub key: String,
    pub kind: String,
    /// Its payload as queued (JSON text).
    pub payload: String,
}

/// A claimed job. `attempt` is the fencing token every later change must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub key: String,
    pub tenant: String,
    pub kind: String,
    pub record_kind: String,
    pub record_key: String,
    pub episode: i64,
    /// The payload as it was queued, JSON text ("" if it is missing): the dispatcher reads
    /// it once into the types it sends from, with no `Value` in between.
    pub payload: String,
    pub attempt: i64,
    /// The previous attempt's outcome is unknown (a 5xx, a timeout, a worker that died):
    /// find out whether it was sent before sending again.
    pub reconcile: bool,
    pub created_at: DateTime<Utc>,
}

/// How an attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    Done,
    /// Will not work; not retried (a replay can revive it).
    Failed,
    /// Out of attempts.
    Dead,
    /// Sent or not, nobody can tell; left visible, not resent.
    Unknown,
    /// Try again at `run_at`; `reconcile` when this attempt's outcome is unknown.
    Retry {
        run_at: DateTime<Utc>,
        reconcile: bool,
    },
}

/// A send Twilio accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub sid: String,
    pub channel: Channel,
    pub to: String,
    pub from: String,
}

/// What any API may say about a stored credential: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretState {
    pub field: String,
    pub set_at: DateTime<Utc>,
    /// The origin it was set for (`None`: sealed by the previous release, not yet re-sealed).
    pub origin: Option<String>,
}

/// The tenant's Twilio account (its secrets are sealed apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioAccount {
    pub account_sid: String,
    pub from: String,
    pub base_url: String,
}

#[derive(Debug, Clone)]
pub enum EpisodeChange {
    None,
    Open {
        opened: NewEpisode,
    },
    Update {
        episode: i64,
        attention: Attention,
        summary: String,
        people: People,
    },
    Resolve {
        episode: i64,
        cause: String,
    },
    Replace {
        episode: i64,
        cause: String,
        opened: NewEpisode,
    },
}

/// An episode about to open: its number (the record's last + 1, unique per record), what
/// needs attention, and the unguessable reference its alerts carry.
#[derive(Debug, Clone)]
pub struct NewEpisode {
    pub episode: i64,
    pub attention: Attention,
    pub summary: String,
    pub people: People,
    pub reference: String,
}

/// What applying a change did, for the caller's counters and its printed lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    pub opened: Option<i64>,
    pub resolved: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PollRow {
    pub id: i64,
    pub tenant_id: String,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub rows_read: i64,
    pub rows_changed: i64,
    pub opened: i64,
    pub resolved: i64,
    pub row_errors: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollTotals {
    pub rows_read: i64,
    pub rows_changed: i64,
    pub opened: i64,
    pub resolved: i64,
    pub row_errors: i64,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

impl Store {
    /// Connect by URL: `sqlite://path` (created if missing, WAL) or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            // WAL with synchronous=NORMAL: a committed transaction survives the process being
            // killed at any instant; FULL would add survival of power loss at a cost per commit.
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Checkpoints run beside the writer (`checkpointer`); a commit checkpoints in
                // line only as a backstop, once the WAL holds 64 MiB.
                .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES.to_string())
                // A statement of many rows inside a transaction keeps a journal of its own (to
                // undo it alone); past 64 KiB SQLite spilled it to a temporary file, created,
                // written and deleted on nearly every commit of attempts' ends. In memory, it
                // is undone the same way and lost with the process, as it would be anyway.
                .pragma("temp_store", "memory");
            let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts.clone()).await?;
            // Transactions go through one connection: SQLite has one writer anyway, and a
            // connection that alone writes keeps its page cache (another connection's commit
            // would make it re-read every page it touches).
            let writer = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
            Ok(Store {
                _checkpointer: Some(Arc::new(checkpointer(pool.clone()))),
                sqlite_writer: Some(writer),
                backend: Backend::Sqlite(pool),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("SET synchronous_commit = on").execute(conn).await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await?;
            Ok(Store {
                _checkpointer: None,
                sqlite_writer: None,
                backend: Backend::Postgres(pool),
            })
        } else {
            Err(StoreError::UnknownEngine(url.to_string()))
        }
    }

    pub fn engine(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await?,
            Backend::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await?,
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, p => { sqlx::query("SELECT 1").execute(p).await?; });
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(w) = &self.sqlite_writer {
            w.close().await;
        }
        on_pool!(self, p => p.close().await)
    }

    /// SQLite: move the WAL's content into the main file (used by the secret-scan tests and
    /// before a backup); PostgreSQL: nothing to do.
    pub async fn checkpoint(&self) -> Result<()> {
        if let Backend::Sqlite(p) = &self.backend {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(p).await?;
        }
        Ok(())
    }

    // ---- tenants -------------------------------------------------------------------

    pub async fn create_tenant(&self, t: &Tenant, now: DateTime<Utc>) -> Result<()> {
        let res = on_pool!(self, p => sqlx::query(
            "INSERT INTO tenants (id, name, qad_base_url, qad_domain, qad_entity, schedule, profile, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&t.id).bind(&t.name).bind(&t.qad_base_url).bind(&t.qad_domain).bind(&t.qad_entity)
        .bind(json(&t.schedule)).bind(json(&t.profile)).bind(millis(now))
        .execute(p).await?.rows_affected());
        if res == 0 {
            return Err(StoreError::TenantExists(t.id.clone()));
        }
        Ok(())
    }

    pub async fn tenant(&self, id: &str) -> Result<Tenant> {
        Ok(self.tenant_settings(id).await?.tenant)
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        Ok(self.all_tenant_settings().await?.into_iter().map(|s| s.tenant).collect())
    }

    /// Every tenant's id, and nothing else (the webhook listener's set of known tenants).
    pub async fn tenant_ids(&self) -> Result<std::collections::HashSet<String>> {
        on_pool!(self, p => Ok(sqlx::query_scalar::<_, String>("SELECT id FROM tenants").fetch_all(p).await?.into_iter().collect()))
    }

    // ---- secrets -------------------------------------------------------------------

    /// Seal and keep a credential for the origin it may be sent to.
    pub async fn set_secret(
        &self,
        keys: &Keyring,
        tenant: &str,
        field: &str,
        origin: &Origin,
        value: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let sealed = keys.seal(tenant, field, origin.as_str(), value);
        self.put_sealed(tenant, field, &sealed, now).await
    }

    async fn put_sealed(&self, tenant: &str, field: &str, sealed: &Sealed, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, p => { sqlx::query(
            "INSERT INTO secrets (tenant_id, field, key_id, nonce, ciphertext, set_at, origin) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant_id, field) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce,
                 ciphertext = excluded.ciphertext, set_at = excluded.set_at, origin = excluded.origin",
        )
        .bind(tenant).bind(field).bind(&sealed.key_id).bind(&sealed.nonce).bind(&sealed.ciphertext).bind(millis(now))
        .bind(&sealed.origin)
        .execute(p).await?; });
        Ok(())
    }

    /// The credential to send to `to`, or `None` when it was never set or was set for another
    /// origin (a base URL moved since: set it again). Refused when `to` is plain `http://` off
    /// loopback and the tenant does not allow it. The one place credentials leave the store.
    pub async fn secret(&self, keys: &Keyring, tenant: &str, field: &str, to: &Origin) -> Result<Option<SecretString>> {
        const SQL: &str = "SELECT t.allow_plain_http, s.key_id, s.nonce, s.ciphertext, s.origin
             FROM tenants t LEFT JOIN secrets s ON s.tenant_id = t.id AND s.field = $2 WHERE t.id = $1";
        let row = on_pool!(self, p => sqlx::query(SQL).bind(tenant).bind(field).fetch_optional(p).await?.map(|r| {
            let sealed = r.get::<Option<String>, _>(1).map(|key_id| Sealed { key_id, nonce: r.get(2), ciphertext: r.get(3), origin: r.get(4) });
            (r.get::<bool, _>(0), sealed)
        }));
        let (allow_plain_http, sealed) = row.ok_or_else(|| StoreError::NoSuchTenant(tenant.into()))?;
        to.check_transport(allow_plain_http)?;
        match sealed {
            Some(s) if s.origin.as_deref() == Some(to.as_str()) => Ok(Some(keys.open(tenant, field, &s)?)),
            _ => Ok(None),
        }
    }

    /// Which credentials of a tenant are stored, when each was set and for which origin:
    /// the only things about a secret any API returns.
    pub async fn secret_states(&self, tenant: &str) -> Result<Vec<SecretState>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT field, set_at, origin FROM secrets WHERE tenant_id = $1 ORDER BY field")
            .bind(tenant).fetch_all(p).await?
            .into_iter().map(|r| SecretState { field: r.get(0), set_at: from_millis(r.get(1)), origin: r.get(2) }).collect()))
    }

    /// Re-seal every value not under the current master key or without an origin; returns
    /// how many. A value keeps the origin it was set for; one the previous release sealed
    /// takes its tenant's current origin (`rekey`).
    pub async fn reseal_secrets(&self, keys: &Keyring, now: DateTime<Utc>) -> Result<u64> {
        self.reseal_where(keys, now, |s| keys.is_stale(s)).await
    }

    /// Re-seal the values the previous release sealed (no origin) with their tenant's
    /// current origin; returns how many. `serve` runs it at start, after the migrations.
    pub async fn seal_legacy_secrets(&self, keys: &Keyring, now: DateTime<Utc>) -> Result<u64> {
        self.reseal_where(keys, now, |s| s.origin.is_none()).await
    }

    async fn reseal_where(&self, keys: &Keyring, now: DateTime<Utc>, stale: impl Fn(&Sealed) -> bool) -> Result<u64> {
        let rows: Vec<(String, String, Sealed, [String; 2])> = on_pool!(self, p => sqlx::query(
            "SELECT s.tenant_id, s.field, s.key_id, s.nonce, s.ciphertext, s.origin, t.qad_base_url, t.twilio_base_url
             FROM secrets s JOIN tenants t ON t.id = s.tenant_id")
            .fetch_all(p).await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), Sealed { key_id: r.get(2), nonce: r.get(3), ciphertext: r.get(4), origin: r.get(5) },
                [r.get(6), r.get(7)]))
            .collect());
        let mut n = 0;
        for (tenant, field, sealed, [qad, twilio]) in rows.into_iter().filter(|(_, _, s, _)| stale(s)) {
            let plain = keys.open(&tenant, &field, &sealed)?;
            let origin = match &sealed.origin {
                Some(o) => o.clone(),
                None => current_origin(&tenant, &field, &qad, &twilio)?,
            };
            let sealed = keys.seal(&tenant, &field, &origin, &plain);
            self.put_sealed(&tenant, &field, &sealed, now).await?;
            n += 1;
        }
        Ok(n)
    }

    // ---- cursors and polls -----------------------------------------------------------

    pub async fn cursor(&self, tenant: &str, stream: &str) -> Result<Option<String>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT cursor FROM poll_cursors WHERE tenant_id = $1 AND stream = $2")
            .bind(tenant).bind(stream).fetch_optional(p).await?.map(|r| r.get(0))))
    }

    pub async fn cursors(&self, tenant: &str) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT stream, cursor, updated_at FROM poll_cursors WHERE tenant_id = $1 ORDER BY stream")
            .bind(tenant).fetch_all(p).await?
            .into_iter().map(|r| (r.get(0), r.get(1), from_millis(r.get(2)))).collect()))
    }

    pub async fn set_cursor(&self, tenant: &str, stream: &str, cursor: &str, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, p => { sqlx::query(
            "INSERT INTO poll_cursors (tenant_id, stream, cursor, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, stream) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
        ).bind(tenant).bind(stream).bind(cursor).bind(millis(now)).execute(p).await?; });
        Ok(())
    }

    pub async fn start_poll(&self, tenant: &str, requested_by: &str, now: DateTime<Utc>) -> Result<i64> {
        on_pool!(self, p => Ok(sqlx::query(
            "INSERT INTO polls (tenant_id, requested_by, started_at, outcome) VALUES ($1, $2, $3, 'running') RETURNING id",
        ).bind(tenant).bind(requested_by).bind(millis(now)).fetch_one(p).await?.get(0)))
    }

    pub async fn finish_poll(&self, id: i64, totals: PollTotals, error: Option<&str>, now: DateTime<Utc>) -> Result<()> {
        let outcome = if error.is_some() { "failed" } else { "ok" };
        on_pool!(self, p => { sqlx::query(
            "UPDATE polls SET finished_at = $2, outcome = $3, rows_read = $4, rows_changed = $5, opened = $6,
                 resolved = $7, row_errors = $8, error = $9 WHERE id = $1",
        )
        .bind(id).bind(millis(now)).bind(outcome).bind(totals.rows_read).bind(totals.rows_changed)
        .bind(totals.opened).bind(totals.resolved).bind(totals.row_errors).bind(error)
        .execute(p).await?; });
        Ok(())
    }

    pub async fn polls(&self, tenant: &str, limit: i64) -> Result<Vec<PollRow>> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT id, tenant_id, requested_by, started_at, finished_at, outcome, rows_read, rows_changed, opened, resolved,
                    row_errors, error FROM polls WHERE tenant_id = $1 ORDER BY id DESC LIMIT CAST($2 AS BIGINT)",
        ).bind(tenant).bind(limit).fetch_all(p).await?.into_iter().map(|r| PollRow {
            id: r.get(0), tenant_id: r.get(1), requested_by: r.get(2), started_at: from_millis(r.get(3)),
            finished_at: r.get::<Option<i64>, _>(4).map(from_millis), outcome: r.get(5), rows_read: r.get(6),
            rows_changed: r.get(7), opened: r.get(8), resolved: r.get(9), row_errors: r.get(10), error: r.get(11),
        }).collect()))
    }

    /// Polls left `running` by a process that died: marked failed so history tells the truth.
    pub async fn abandon_running_polls(&self, tenant: &str, now: DateTime<Utc>) -> Result<u64> {
        on_pool!(self, p => Ok(sqlx::query(
            "UPDATE polls SET outcome = 'failed', finished_at = $2, error = 'abandoned: the process stopped mid-poll'
             WHERE tenant_id = $1 AND outcome = 'running'",
        ).bind(tenant).bind(millis(now)).execute(p).await?.rows_affected()))
    }

    // ---- records, episodes, audit ----------------------------------------------------------

    /// Stored content versions of the given records (absent: never seen).
    pub async fn versions(&self, tenant: &str, kind: RecordKind, keys: &[String]) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        // One query per chunk keeps the parameter count under SQLite's limit.
        for chunk in keys.chunks(500) {
            let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "SELECT record_key, version FROM qad_records WHERE tenant_id = $1 AND kind = $2 AND record_key IN ({})",
                placeholders.join(", ")
            );
            on_pool!(self, p => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant).bind(kind.as_str());
                for k in chunk {
                    q = q.bind(k);
                }
                for r in q.fetch_all(p).await? {
                    out.insert(r.get::<String, _>(0), r.get::<String, _>(1));
                }
            });
        }
        Ok(out)
    }

    pub async fn record_data(&self, tenant: &str, kind: RecordKind, key: &str) -> Result<Option<Value>> {
        let text: Option<String> = on_pool!(self, p => sqlx::query("SELECT data FROM qad_records WHERE tenant_id = $1 AND kind = $2 AND record_key = $3")
            .bind(tenant).bind(kind.as_str()).bind(key).fetch_optional(p).await?.map(|r| r.get(0)));
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Every open episode of a tenant, with the record's last-seen data.
    pub async fn open_records(&self, tenant: &str) -> Result<Vec<OpenRecord>> {
        let rows: Vec<OpenTuple> = on_pool!(self, p => sqlx::query(
            "SELECT a.kind, a.record_key, a.episode, a.reason_code, a.urgency, a.people, r.data
             FROM attention a LEFT JOIN qad_records r
               ON r.tenant_id = a.tenant_id AND r.kind = a.kind AND r.record_key = a.record_key
             WHERE a.tenant_id = $1 AND a.state = 'open' ORDER BY a.id",
        ).bind(tenant).fetch_all(p).await?.into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))).collect());
        let corrupt = |what, problem: String| StoreError::Corrupt {
            tenant: tenant.into(),
            what,
            problem,
        };
        rows.into_iter()
            .map(|(kind, key, episode, reason_code, urgency, people, data)| {
                Ok(OpenRecord {
                    kind: RecordKind::parse(&kind).ok_or_else(|| corrupt("attention kind", kind.clone()))?,
                    record_key: key,
                    open: OpenEpisode {
                        episode,
                        reason_code,
                        urgency: Urgency::parse(&urgency).ok_or_else(|| corrupt("attention urgency", urgency.clone()))?,
                        people: serde_json::from_str(&people).map_err(|e| corrupt("attention people", e.to_string()))?,
                    },
                    data: data.and_then(|d| serde_json::from_str(&d).ok()),
                })
            })
            .collect()
    }

    /// Apply one record's change: its version, its episode and its audit entries, atomically.
    pub async fn apply(&self, tenant: &str, change: &RecordChange, now: DateTime<Utc>) -> Result<Applied> {
        let applied = self.apply_batch(tenant, std::slice::from_ref(change), now).await?;
        Ok(applied.into_iter().next().unwrap_or_default())
    }

    /// Append entries that belong to no record change (e.g. a malformed row whose key could not be read).
    pub async fn append_audit(&self, tenant: &str, entries: &[NewAudit], now: DateTime<Utc>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        in_tx!(self, tx => {
            for e in entries {
                sqlx::query("INSERT INTO audit (tenant_id, kind, record_key, episode, at, event, detail) VALUES ($1, $2, $3, NULL, $4, $5, $6)")
                    .bind(tenant).bind(&e.kind).bind(&e.record_key).bind(millis(now)).bind(&e.event).bind(e.detail.to_string())
                    .execute(&mut *tx).await?;
            }
        });
        Ok(())
    }

    pub async fn audit_trail(&self, tenant: &str, kind: &str, key: &str) -> Result<Vec<AuditEntry>> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT id, kind, record_key, episode, at, event, detail FROM audit WHERE tenant_id = $1 AND kind = $2 AND record_key = $3 ORDER BY id",
        ).bind(tenant).bind(kind).bind(key).fetch_all(p).await?.into_iter().map(audit_from).collect()))
    }

    /// Audit entries of a tenant after `after_id`, oldest first.
    pub async fn audit_since(&self, tenant: &str, after_id: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT id, kind, record_key, episode, at, event, detail FROM audit WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT CAST($3 AS BIGINT)",
        ).bind(tenant).bind(after_id).bind(limit).fetch_all(p).await?.into_iter().map(audit_from).collect()))
    }

    pub async fn attention(&self, tenant: &str, state: Option<&str>) -> Result<Vec<AttentionRow>> {
        let rows: Vec<AttentionTuple> = on_pool!(self, p => sqlx::query(
            "SELECT kind, record_key, episode, state, reason_code, summary, urgency, people, due_date, resolution, reference FROM attention
             WHERE tenant_id = $1 AND ($2 IS NULL OR state = $2) ORDER BY kind, record_key, episode",
        ).bind(tenant).bind(state).fetch_all(p).await?.into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7), r.get(8), r.get(9), r.get(10))).collect());
        rows.into_iter()
            .map(
                |(kind, record_key, episode, state, reason_code, summary, urgency, people, due_date, resolution, reference)| {
                    Ok(AttentionRow {
                        people: serde_json::from_str(&people).map_err(|e| StoreError::Corrupt {
                            tenant: tenant.into(),
                            what: "attention people",
                            problem: e.to_string(),
                        })?,
                        kind,
                        record_key,
                        episode,
                        state,
                        reason_code,
                        summary,
                        urgency,
                        due_date,
                        resolution,
                        reference,
                    })
                },
            )
            .collect()
    }

    /// The highest episode number a record has had (0: never needed attention).
    pub async fn last_episode(&self, tenant: &str, kind: RecordKind, key: &str) -> Result<i64> {
        on_pool!(self, p => Ok(sqlx::query("SELECT COALESCE(MAX(episode), 0) FROM attention WHERE tenant_id = $1 AND kind = $2 AND record_key = $3")
            .bind(tenant).bind(kind.as_str()).bind(key).fetch_one(p).await?.get::<i64, _>(0)))
    }

    // ---- plugins -------------------------------------------------------------------------

    /// Keep an uploaded plugin (already checked against the world) as the tenant's next version.
    pub async fn add_plugin(&self, tenant: &str, wasm: &[u8], sha256: &str, world: &str, now: DateTime<Utc>) -> Result<i64> {
        let version = in_tx!(self, tx => {
            let next: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM plugins WHERE tenant_id = $1")
                .bind(tenant).fetch_one(&mut *tx).await?.get(0);
            sqlx::query("INSERT INTO plugins (tenant_id, version, sha256, world, wasm, uploaded_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(tenant).bind(next).bind(sha256).bind(world).bind(wasm).bind(millis(now)).execute(&mut *tx).await?;
            next
        });
        Ok(version)
    }

    /// Make `version` the tenant's plugin (None: back to the default plugin).
    pub async fn activate_plugin(&self, tenant: &str, version: Option<i64>) -> Result<()> {
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE tenants SET active_plugin = $2 WHERE id = $1 AND ($2 IS NULL OR EXISTS (SELECT 1 FROM plugins WHERE tenant_id = $1 AND version = $2))",
        ).bind(tenant).bind(version).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NoSuchTenant(format!("{tenant} (or its plugin version {version:?})")));
        }
        Ok(())
    }

    /// The tenant's active plugin: version and content hash; None for the default.
    pub async fn active_plugin(&self, tenant: &str) -> Result<Option<(i64, String)>> {
        on_pool!(self, p => Ok(sqlx::query(
            "SELECT p.version, p.sha256 FROM tenants t JOIN plugins p ON p.tenant_id = t.id AND p.version = t.active_plugin WHERE t.id = $1",
        ).bind(tenant).fetch_optional(p).await?.map(|r| (r.get(0), r.get(1)))))
    }

    /// A plugin version's bytes (read only when the runtime has not compiled it yet).
    pub async fn plugin_wasm(&self, tenant: &str, version: i64) -> Result<Option<Vec<u8>>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT wasm FROM plugins WHERE tenant_id = $1 AND version = $2")
            .bind(tenant).bind(version).fetch_optional(p).await?.map(|r| r.get(0))))
    }

    /// The tenant's plugin settings as stored (JSON text).
    pub async fn plugin_settings(&self, tenant: &str) -> Result<String> {
        let s: Option<String> = on_pool!(self, p => sqlx::query("SELECT plugin_settings FROM tenants WHERE id = $1")
            .bind(tenant).fetch_optional(p).await?.map(|r| r.get(0)));
        s.ok_or_else(|| StoreError::NoSuchTenant(tenant.into()))
    }

    pub async fn set_plugin_settings(&self, tenant: &str, settings_json: &str) -> Result<()> {
        on_pool!(self, p => { sqlx::query("UPDATE tenants SET plugin_settings = $2 WHERE id = $1").bind(tenant).bind(settings_json).execute(p).await?; });
        Ok(())
    }

    // ---- jobs -------------------------------------------------------------------------------

    /// Claim up to `limit` due jobs for `worker`: queued ones whose time has come and running
    /// ones whose lease expired (their worker died: the outcome of that attempt is unknown).
    /// Each claim bumps `attempt`, the fencing token.
    pub async fn claim_jobs(&self, worker: &str, now: DateTime<Utc>, lease: chrono::Duration, limit: i64) -> Result<Vec<Job>> {
        let sql = self.claim_jobs_sql();
        // One statement, so atomic without a transaction around it: it takes SQLite's write
        // lock as it starts (as `BEGIN IMMEDIATE` would) and saves the writer two round trips.
        let rows = on_writer!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(millis(now)).bind(millis(now + lease)).bind(worker).bind(limit)
                .fetch_all(pool).await?
                .into_iter()
                .map(|r| Job {
                    id: r.get(0), key: r.get(1), tenant: r.get(2), kind: r.get(3), record_kind: r.get(4), record_key: r.get(5),
                    episode: r.get(6), payload: r.get::<Option<String>, _>(7).unwrap_or_default(),
                    attempt: r.get(8), reconcile: r.get(9), created_at: from_millis(r.get(10)),
                })
                .collect::<Vec<_>>()
        });
        Ok(rows)
    }

    /// The claim statement of [`Store::claim_jobs`]: `$1` now, `$2` the lease's end, `$3` the
    /// worker, `$4` how many at most.
    pub(super) fn claim_jobs_sql(&self) -> String {
        // Each kind of due job from the index in its own order, then the two merged: one
        // `OR` would read every queued job and sort them all, on every claim (a backlog of
        // 20,000 made each claim scan 20,000 rows).
        let lock = match self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => "FOR UPDATE SKIP LOCKED",
        };
        // Read when the statement runs: bound bare, SQLite compiles a LIMIT's value into the
        // statement, and re-prepares it on every run (sqlx clears the bindings before each):
        // a twentieth of the writer's time in `benches/dispatch.rs` went to re-preparing this.
        let limit = "CAST($4 AS BIGINT)";
        let select = format!(
            "SELECT id FROM (
               SELECT id, run_at FROM (SELECT id, run_at FROM jobs WHERE state = 'queued' AND run_at <= $1
                                       ORDER BY run_at, id LIMIT {limit} {lock}) AS due
               UNION ALL
               SELECT id, run_at FROM (SELECT id, run_at FROM jobs WHERE state = 'running' AND lease_until < $1
                                       ORDER BY run_at, id LIMIT {limit} {lock}) AS expired
             ) AS claimable ORDER BY run_at, id LIMIT {limit}"
        );
        format!(
            "UPDATE jobs SET reconcile = CASE WHEN state = 'running' THEN TRUE ELSE reconcile END,
                 state = 'running', attempt = attempt + 1, lease_until = $2, worker = $3, updated_at = $1
             WHERE id IN ({select})
             RETURNING id, job_key, tenant_id, kind, record_kind, record_key, episode,
                       (SELECT payload FROM job_payloads p WHERE p.job_id = jobs.id), attempt, reconcile, created_at"
        )
    }

    /// End an attempt and append its audit entry, atomically; false when a newer attempt
    /// took the job over (this worker is fenced out and must not act on it).
    pub async fn finish_job(&self, job: &Job, end: &JobEnd, event: &str, detail: &Value, now: DateTime<Utc>) -> Result<bool> {
        self.finish_send(job, end, event, detail, None, now).await
    }

    /// [`Store::finish_job`] for a send Twilio accepted: its delivery (sid, numbers) is
    /// recorded in the same transaction, so a status callback can always find it.
    pub async fn finish_send(
        &self,
        job: &Job,
        end: &JobEnd,
        event: &str,
        detail: &Value,
        sent: Option<&Sent>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let finish = Finish::of(&Arc::new(job.clone()), end, event, detail, sent);
        Ok(self.finish_sends(&[finish], now).await?.first().copied().unwrap_or(false))
    }

    /// Jobs of a tenant by state (state → count).
    pub async fn job_counts(&self, tenant: &str) -> Result<HashMap<String, i64>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT state, COUNT(*) FROM jobs WHERE tenant_id = $1 GROUP BY state")
            .bind(tenant).fetch_all(p).await?.into_iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))).collect()))
    }

    /// (job key, state, attempt) of a tenant's jobs, oldest first.
    pub async fn jobs(&self, tenant: &str) -> Result<Vec<(String, String, i64)>> {
        on_pool!(self, p => Ok(sqlx::query("SELECT job_key, state, attempt FROM jobs WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant).fetch_all(p).await?.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()))
    }

    pub async fn suppress(&self, tenant: &str, phone: &str, reason: &str, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, p => { sqlx::query("INSERT INTO suppressions (tenant_id, phone, reason, at) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, phone) DO NOTHING")
            .bind(tenant).bind(phone).bind(reason).bind(millis(now)).execute(p).await?; });
        Ok(())
    }

    pub async fn is_suppressed(&self, tenant: &str, phone: &str) -> Result<bool> {
        on_pool!(self, p => Ok(sqlx::query("SELECT 1 FROM suppressions WHERE tenant_id = $1 AND phone = $2")
            .bind(tenant).bind(phone).fetch_optional(p).await?.is_some()))
    }

    /// Which of `phones` opted out of the tenant's messages.
    pub async fn suppressed_among(&self, tenant: &str, phones: &[String]) -> Result<Vec<String>> {
        self.present_among(
            "SELECT phone FROM suppressions WHERE",
            &[(" tenant_id = ", tenant)],
            "phone",
            phones,
        )
        .await
    }

    /// The call sids among `sids` that a delivery already holds, whichever its tenant:
    /// tenants may share a Twilio account, and a sid is unique across Twilio. (The channel
    /// is a literal so both engines' planners take the partial index of call sids.)
    pub async fn known_call_sids(&self, sids: &[String]) -> Result<Vec<String>> {
        self.present_among("SELECT sid FROM deliveries WHERE channel = 'voice'", &[], "sid", sids)
            .await
    }

    /// The jobs other than `except` sending on `channel` to `phone` now (claimed, their ends
    /// not yet committed): id, kind and payload. Calls of any tenant: tenants may share a
    /// Twilio account, so its list of calls to a number holds theirs too. Messages: `tenant`'s
    /// sends to the number and any of its confirmations (whose ids do not name the number).
    pub async fn sends_being_placed(&self, channel: Channel, tenant: &str, phone: &str, except: i64) -> Result<Vec<InFlight>> {
        let pattern = crate::core::dispatch::send_jobs_to(channel, phone);
        let confirmations = match channel {
            Channel::Sms => "confirm",
            Channel::Voice => "",
        };
        on_pool!(self, p => Ok(sqlx::query(
            r"SELECT job_key, kind, (SELECT payload FROM job_payloads p WHERE p.job_id = jobs.id) FROM jobs
              WHERE state = 'running' AND id <> $1 AND (job_key LIKE $2 ESCAPE '\' OR (kind = $3 AND tenant_id = $4))",
        )
        .bind(except).bind(pattern).bind(confirmations).bind(tenant).fetch_all(p).await?.into_iter()
        .map(|r| InFlight { key: r.get(0), kind: r.get(1), payload: r.get::<Option<String>, _>(2).unwrap_or_default() })
        .collect()))
    }

    /// Which of `sids` a delivery of `tenant`'s messages to `to` from `from` already holds:
    /// what an SMS found by its words in Twilio's list may belong to. No time bound: Twilio's
    /// dates and ours need not agree; the few candidates are looked up among the number's
    /// deliveries (its index), not by sid (message sids are not indexed: 0008).
    pub async fn sms_sids_among(&self, tenant: &str, to: &str, from: &str, sids: &[String]) -> Result<Vec<String>> {
        let number = [
            (" AND tenant_id = ", tenant),
            (" AND to_phone = ", to),
            (" AND from_phone = ", from),
        ];
        self.present_among("SELECT sid FROM deliveries WHERE channel = 'sms'", &number, "sid", sids)
            .await
    }

    /// Which of `values` the rows `select` reads hold in `column`: `select` is followed by
    /// each of `filters` (SQL, then its bound value) and then `AND column IN (…)`. The SQL
    /// parts are constants of this module, as is `column`, never input. Read in chunks
    /// under the bind limits.
    async fn present_among(
        &self,
        select: &'static str,
        filters: &[(&'static str, &str)],
        column: &str,
        values: &[String],
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in values.chunks(500) {
            on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new(select);
                for (sql, value) in filters {
                    q.push(*sql).push_bind(*value);
                }
                q.push(format!(" AND {column} IN ("));
                let mut list = q.separated(", ");
                for v in chunk {
                    list.push_bind(v);
                }
                q.push(")");
                for r in q.build().fetch_all(pool).await? {
                    out.push(r.get::<String, _>(0));
                }
            });
        }
        Ok(out)
    }

    pub async fn set_twilio_account(&self, tenant: &str, a: &TwilioAccount) -> Result<()> {
        on_pool!(self, p => { sqlx::query("UPDATE tenants SET twilio_account_sid = $2, twilio_from = $3, twilio_base_url = $4 WHERE id = $1")
            .bind(tenant).bind(&a.account_sid).bind(&a.from).bind(&a.base_url).execute(p).await?; });
        Ok(())
    }

    pub async fn twilio_account(&self, tenant: &str) -> Result<TwilioAccount> {
        let r = on_pool!(self, p => sqlx::query("SELECT twilio_account_sid, twilio_from, twilio_base_url FROM tenants WHERE id = $1")
            .bind(tenant).fetch_optional(p).await?.map(|r| TwilioAccount { account_sid: r.get(0), from: r.get(1), base_url: r.get(2) }));
        r.ok_or_else(|| StoreError::NoSuchTenant(tenant.into()))
    }

    /// Test and maintenance hook: the raw SQL engine, for checks no API should offer.
    pub async fn execute_raw(&self, sql: &str) -> Result<u64> {
        on_pool!(self, p => Ok(sqlx::query(sqlx::AssertSqlSafe(sql)).execute(p).await?.rows_affected()))
    }
}

fn audit_from<R: Row>(r: R) -> AuditEntry
where
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    AuditEntry {
        id: r.get(0),
        kind: r.get(1),
        record_key: r.get(2),
        episode: r.get(3),
        at: from_millis(r.get(4)),
        event: r.get(5),
        detail: serde_json::from_str(&r.get::<String, _>(6)).unwrap_or(Value::Null),
    }
}

/// The origin a credential of the previous release is re-sealed for: its tenant's current
/// base URL for the field's service.
fn current_origin(tenant: &str, field: &str, qad: &str, twilio: &str) -> Result<String> {
    let url = match Service::of_field(field) {
        Some(Service::Qad) => qad,
        Some(Service::Twilio) => twilio,
        None => return Err(StoreError::UnknownSecretField(field.into())),
    };
    Origin::of(url).map(|o| o.as_str().to_string()).map_err(|e| StoreError::Corrupt {
        tenant: tenant.into(),
        what: "base URL",
        problem: e.to_string(),
    })
}

#[allow(clippy::too_many_arguments)]
fn tenant_from(id: String, name: String, url: String, domain: String, entity: String, schedule: String, profile: String) -> Result<Tenant> {
    let corrupt = |what, e: serde_json::Error| StoreError::Corrupt {
        tenant: id.clone(),
        what,
        problem: e.to_string(),
    };
    Ok(Tenant {
        schedule: serde_json::from_str(&schedule).map_err(|e| corrupt("schedule", e))?,
        profile: serde_json::from_str(&profile).map_err(|e| corrupt("mapping profile", e))?,
        id,
        name,
        qad_base_url: url,
        qad_domain: domain,
        qad_entity: entity,
    })
}

mod admin;
mod batch;
mod hosts;
mod intake;
pub use admin::*;
pub use batch::*;
pub use hosts::*;
pub use intake::*;

#[cfg(test)]
mod tests {
    use super::*;

    /// The program SQLite runs for `sql` with these values bound (`EXPLAIN`), as (opcode, p1).
    async fn compiled(store: &Store, sql: &str, (now, until, third, limit): (i64, i64, &str, i64)) -> Vec<(String, i64)> {
        let pool = store.sqlite_writer.as_ref().expect("an SQLite store");
        let explain = format!("EXPLAIN {sql}");
        let mut program = Vec::new();
        // Twice: the second run is the one a cached statement makes, after sqlx has cleared
        // and bound the values again.
        for _ in 0..2 {
            program = sqlx::query(sqlx::AssertSqlSafe(explain.as_str()))
                .bind(now)
                .bind(until)
                .bind(third)
                .bind(limit)
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.get::<String, _>("opcode"), r.get::<i64, _>("p1")))
                .collect();
        }
        program
    }

    /// Claims run again and again with different limits. SQLite compiles a bare bound LIMIT
    /// into the statement as the value bound, so the statement had to be prepared anew on
    /// every claim; the limit must be read from its parameter when the claim runs.
    #[tokio::test]
    async fn a_claims_limit_is_read_when_the_claim_runs_not_compiled_into_it() {
        let dir = std::env::temp_dir().join(format!("ml-connector-claim-sql-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.join("s.db").display())).await.unwrap();
        store.migrate().await.unwrap();
        let limit = 4093;
        for (what, sql) in [("jobs", store.claim_jobs_sql()), ("webhooks", store.claim_webhooks_sql())] {
            let program = compiled(&store, &sql, (0, 0, "0", limit)).await;
            assert!(
                !program.iter().any(|(op, p1)| op == "Integer" && *p1 == limit),
                "the {what} claim has the limit {limit} compiled in: {program:?}"
            );
            assert!(
                program.iter().any(|(op, p1)| op == "Variable" && *p1 == 4),
                "the {what} claim does not read its limit ($4) when it runs: {program:?}"
            );
        }
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The same holds for every statement of the store, not only the claims: each one with a
    /// bound limit runs again and again (audit pages, the feed, lists), so none binds it bare.
    #[test]
    fn no_statement_of_the_store_binds_a_bare_limit() {
        let bare = ["LIMIT", " $"].concat();
        for (file, text) in [
            ("store.rs", include_str!("store.rs")),
            ("store/admin.rs", include_str!("store/admin.rs")),
            ("store/batch.rs", include_str!("store/batch.rs")),
            ("store/hosts.rs", include_str!("store/hosts.rs")),
            ("store/intake.rs", include_str!("store/intake.rs")),
        ] {
            let found: Vec<&str> = text.lines().filter(|l| l.contains(&bare)).collect();
            assert!(
                found.is_empty(),
                "{file} binds a bare limit (cast it: `CAST($n AS BIGINT)`): {found:?}"
            );
        }
    }
}
