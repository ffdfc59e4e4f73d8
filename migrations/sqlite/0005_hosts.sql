-- Several hosts on one database: which host polls which tenant, until when. A host renews
-- its lease while it polls; one that stops renewing is taken over once the lease expires.
CREATE TABLE poll_leases (
    tenant_id    TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    lease_until  BIGINT NOT NULL
);
