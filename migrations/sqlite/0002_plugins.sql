-- Per-tenant plugins: every uploaded version kept, one active; settings per tenant.
CREATE TABLE plugins (
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    version      BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    world        TEXT NOT NULL,
    wasm         BLOB NOT NULL,
    uploaded_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

-- NULL: the default plugin. Settings: the plugin's configuration and the host's budgets.
ALTER TABLE tenants ADD COLUMN active_plugin BIGINT;
ALTER TABLE tenants ADD COLUMN plugin_settings TEXT NOT NULL DEFAULT '{}';

-- The unguessable reference of an episode's alerts (an SMS approval must quote it).
ALTER TABLE attention ADD COLUMN reference TEXT NOT NULL DEFAULT '';
