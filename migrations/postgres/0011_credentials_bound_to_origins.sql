-- A credential never follows its URL elsewhere (issue 22, item 3).

-- The origin (scheme://host:port) each credential was set for, also sealed into its
-- associated data (host/src/secrets.rs). The store hands a credential out only for a request
-- to that origin. NULL: sealed by the previous release; `serve` re-seals those with their
-- tenant's current origin at start.
ALTER TABLE secrets ADD COLUMN origin TEXT;

-- Whether the tenant's credentials may go to a plain http:// origin off loopback.
ALTER TABLE tenants ADD COLUMN allow_plain_http BOOLEAN NOT NULL DEFAULT FALSE;
