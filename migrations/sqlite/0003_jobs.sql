-- The tenant's Twilio account (its credentials are sealed in `secrets`).
ALTER TABLE tenants ADD COLUMN twilio_account_sid TEXT NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN twilio_from TEXT NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN twilio_base_url TEXT NOT NULL DEFAULT 'https://api.twilio.com';

-- The durable job queue. `job_key` is the alert's identity (tenant, record, episode,
-- recipient, channel, step): enqueueing it twice is a no-op. `attempt` fences every state
-- change: a worker whose lease expired cannot overwrite a newer attempt.
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_key      TEXT NOT NULL UNIQUE,
    tenant_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    record_kind  TEXT NOT NULL,
    record_key   TEXT NOT NULL,
    episode      BIGINT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'dead', 'cancelled', 'unknown')),
    attempt      BIGINT NOT NULL DEFAULT 0,
    run_at       BIGINT NOT NULL,
    lease_until  BIGINT,
    worker       TEXT,
    outcome      TEXT,
    reconcile    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, run_at);
CREATE INDEX jobs_by_record ON jobs (tenant_id, record_kind, record_key, episode);

-- Numbers that opted out of a tenant's SMS (STOP, or Twilio's 21610).
CREATE TABLE suppressions (
    tenant_id  TEXT NOT NULL,
    phone      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, phone)
);
