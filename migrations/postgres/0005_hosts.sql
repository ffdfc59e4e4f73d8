-- Several hosts on one database: which host polls which tenant, until when. A host renews
-- its lease while it polls; one that stops renewing is taken over once the lease expires.
CREATE TABLE poll_leases (
    tenant_id    TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    lease_until  BIGINT NOT NULL
);

-- Wake-ups for the other hosts: new jobs and new webhooks are announced when their
-- transaction commits (one notification per transaction and channel). Hosts also poll the
-- queues, so a lost notification only delays work.
CREATE FUNCTION ml_connector_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ml_connector_' || TG_ARGV[0], '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_announce AFTER INSERT ON jobs FOR EACH STATEMENT EXECUTE FUNCTION ml_connector_notify_work('jobs');
CREATE TRIGGER webhooks_announce AFTER INSERT ON webhook_events FOR EACH STATEMENT EXECUTE FUNCTION ml_connector_notify_work('webhooks');
