-- Twilio's webhooks, validated, as they arrived: the durable intake queue. A request is
-- answered 2xx only once its row is committed. `dedup_key` ((MessageSid, MessageStatus),
-- (CallSid, SequenceNumber), an inbound message's sid, a gather's call and prompt) and
-- Twilio's idempotency token each make a retry or a duplicate a no-op.
CREATE TABLE webhook_events (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id          TEXT NOT NULL,
    kind               TEXT NOT NULL,
    dedup_key          TEXT NOT NULL,
    idempotency_token  TEXT,
    delivery_id        BIGINT,
    params             TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
    lease_until        BIGINT,
    outcome            TEXT,
    received_at        BIGINT NOT NULL,
    processed_at       BIGINT,
    UNIQUE (tenant_id, dedup_key)
);
CREATE UNIQUE INDEX webhook_events_token ON webhook_events (tenant_id, idempotency_token);
CREATE INDEX webhook_events_due ON webhook_events (state, id);

-- What Twilio says of each send (a job of kind send or confirm): its sid and latest status,
-- which only moves forward.
CREATE TABLE deliveries (
    job_id       BIGINT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    sid          TEXT,
    channel      TEXT NOT NULL,
    to_phone     TEXT NOT NULL,
    from_phone   TEXT NOT NULL,
    status       TEXT,
    error_code   TEXT,
    answered_at  BIGINT,
    sent_at      BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX deliveries_by_sid ON deliveries (tenant_id, sid);
CREATE INDEX deliveries_by_number ON deliveries (tenant_id, to_phone, from_phone, sent_at);

-- Whether an approve/reject answer is executed in QAD (off: recorded and commented only),
-- and whether calls still go to a number that opted out of SMS (STOP blocks messages only).
ALTER TABLE tenants ADD COLUMN execute_decisions BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tenants ADD COLUMN call_opted_out BOOLEAN NOT NULL DEFAULT TRUE;

-- A reply cancels the escalations of its episode (steps above 0), not its first alerts.
ALTER TABLE jobs ADD COLUMN escalation_step BIGINT NOT NULL DEFAULT 0;
CREATE INDEX attention_by_reference ON attention (tenant_id, reference);
