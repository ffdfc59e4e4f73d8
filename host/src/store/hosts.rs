//! Several hosts on one database: per-tenant poll leases, job lease heartbeats, and (on
//! PostgreSQL) the LISTEN side of the work announcements the migrations' triggers make.

use chrono::{DateTime, Utc};

use super::{Backend, Result, Store, millis};

/// The channels `0005_hosts.sql` announces new work on.
pub const JOBS_CHANNEL: &str = "ml_connector_jobs";
pub const WEBHOOKS_CHANNEL: &str = "ml_connector_webhooks";

impl Store {
    /// Take (or renew) the tenant's poll lease for `holder` until `until`: granted when nobody
    /// holds it, the holder is `holder` already, or the last holder's lease ran out.
    pub async fn acquire_poll_lease(&self, tenant: &str, holder: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<bool> {
        let n = on_pool!(self, p => sqlx::query(
            "INSERT INTO poll_leases (tenant_id, holder, lease_until) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until
             WHERE poll_leases.lease_until < $4 OR poll_leases.holder = excluded.holder",
        ).bind(tenant).bind(holder).bind(millis(until)).bind(millis(now)).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Let the lease go at once (the poll ended), if `holder` still holds it.
    pub async fn release_poll_lease(&self, tenant: &str, holder: &str) -> Result<()> {
        on_pool!(self, p => { sqlx::query("DELETE FROM poll_leases WHERE tenant_id = $1 AND holder = $2")
            .bind(tenant).bind(holder).execute(p).await?; });
        Ok(())
    }

    /// Who holds the tenant's poll lease, and until when.
    pub async fn poll_lease(&self, tenant: &str) -> Result<Option<(String, i64)>> {
        use sqlx::Row;
        on_pool!(self, p => Ok(sqlx::query("SELECT holder, lease_until FROM poll_leases WHERE tenant_id = $1")
            .bind(tenant).fetch_optional(p).await?.map(|r| (r.get(0), r.get(1)))))
    }

    /// Extend the leases of jobs this worker is still working on; fenced by the attempt, so
    /// a job another worker took over is left alone. How many were extended.
    pub async fn renew_job_leases(&self, worker: &str, jobs: &[(i64, i64)], until: DateTime<Utc>) -> Result<u64> {
        let mut n = 0;
        for (id, attempt) in jobs {
            n += on_pool!(self, p => sqlx::query(
                "UPDATE jobs SET lease_until = $4 WHERE id = $1 AND attempt = $2 AND worker = $3 AND state = 'running'",
            ).bind(id).bind(attempt).bind(worker).bind(millis(until)).execute(p).await?.rows_affected());
        }
        Ok(n)
    }

    /// Hand a claimed job that was never started back to the queue (a host shutting down);
    /// its attempt is given back too. Fenced: only the claimer's attempt may do it.
    pub async fn release_job(&self, job: &super::Job, now: DateTime<Utc>) -> Result<bool> {
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE jobs SET state = 'queued', attempt = attempt - 1, lease_until = NULL, worker = NULL, updated_at = $3
             WHERE id = $1 AND attempt = $2 AND state = 'running'",
        ).bind(job.id).bind(job.attempt).bind(millis(now)).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// On PostgreSQL, a listener on the work channels (None on SQLite: one host, in-process
    /// wake-ups suffice).
    pub async fn listen_for_work(&self) -> Result<Option<sqlx::postgres::PgListener>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(pool) => {
                let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
                l.listen_all([JOBS_CHANNEL, WEBHOOKS_CHANNEL]).await?;
                Ok(Some(l))
            }
        }
    }
}
