-- ml-connector schema, PostgreSQL. Times are Unix milliseconds (BIGINT) so the same queries
-- run on SQLite and PostgreSQL; JSON columns are TEXT written by the host.

CREATE TABLE tenants (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    qad_base_url  TEXT NOT NULL,
    qad_domain    TEXT NOT NULL,
    qad_entity    TEXT NOT NULL,
    schedule      TEXT NOT NULL,
    profile       TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Credentials: only ciphertext ever reaches this table (see host/src/secrets.rs).
CREATE TABLE secrets (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    field       TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    set_at      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, field)
);

CREATE TABLE poll_cursors (
    tenant_id   TEXT NOT NULL,
    stream      TEXT NOT NULL,
    cursor      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, stream)
);

CREATE TABLE polls (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    outcome       TEXT NOT NULL,
    rows_read     BIGINT NOT NULL DEFAULT 0,
    rows_changed  BIGINT NOT NULL DEFAULT 0,
    opened        BIGINT NOT NULL DEFAULT 0,
    resolved      BIGINT NOT NULL DEFAULT 0,
    row_errors    BIGINT NOT NULL DEFAULT 0,
    error         TEXT
);
CREATE INDEX polls_by_tenant ON polls (tenant_id, id);

-- Every QAD row seen, with a content version so an unchanged row is not processed twice.
CREATE TABLE qad_records (
    tenant_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    record_key  TEXT NOT NULL,
    version     TEXT NOT NULL,
    data        TEXT NOT NULL,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, kind, record_key)
);

-- One row per episode of a record needing a person.
CREATE TABLE attention (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    record_key   TEXT NOT NULL,
    episode      BIGINT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    reason_code  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    summary      TEXT NOT NULL,
    urgency      TEXT NOT NULL,
    people       TEXT NOT NULL,
    due_date     TEXT,
    opened_at    BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    resolved_at  BIGINT,
    resolution   TEXT,
    UNIQUE (tenant_id, kind, record_key, episode)
);
CREATE UNIQUE INDEX attention_one_open ON attention (tenant_id, kind, record_key) WHERE state = 'open';
CREATE INDEX attention_by_state ON attention (tenant_id, state);

-- The audit trail: append-only, enforced by the database itself.
CREATE TABLE audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    record_key  TEXT NOT NULL,
    episode     BIGINT,
    at          BIGINT NOT NULL,
    event       TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_by_record ON audit (tenant_id, kind, record_key, id);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END;
$$;
CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
