-- People's answers, hardened (issue 21, items 7-10).

-- Whether an answer without proof (no reference from the number the alert went to, not a
-- keypress on our call) cancels its episode's escalations; off, a spoofed "seen" cannot
-- silence an alert.
ALTER TABLE tenants ADD COLUMN unproven_answers_cancel_escalations BOOLEAN NOT NULL DEFAULT FALSE;
-- Who may decide each kind of record, as JSON ({"purchase_order": ["buyer", ...], ...});
-- NULL: the defaults (core::intake::DecisionRoles::default).
ALTER TABLE tenants ADD COLUMN decision_roles TEXT;

-- Counts in fixed windows, per tenant and sender (phone '' for the whole tenant): 'miss' (a
-- reply whose reference-shaped words matched nothing sent to that number) and 'unmatched' (a
-- reply that matched no alert). Read and bumped by their primary key; rows whose window has
-- long ended are purged with the replies.
CREATE TABLE sender_counters (
    tenant_id     TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('miss', 'unmatched')),
    phone         TEXT NOT NULL,
    window_start  BIGINT NOT NULL,
    hits          BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, kind, phone)
);
CREATE INDEX sender_counters_by_window ON sender_counters (window_start);

-- Replies that matched no alert, within the limits per sender and per tenant, their text
-- cleaned and capped; purged after the retention (core::intake::UNMATCHED_RETENTION_DAYS).
-- Indexed by age for that purge.
CREATE TABLE unmatched_replies (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    phone        TEXT NOT NULL,
    to_phone     TEXT NOT NULL,
    body         TEXT NOT NULL,
    event_id     BIGINT NOT NULL,
    received_at  BIGINT NOT NULL
);
CREATE INDEX unmatched_replies_by_age ON unmatched_replies (received_at);
