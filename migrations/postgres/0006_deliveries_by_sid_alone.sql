-- Reconciling a call whose outcome is unknown asks whether any delivery of ours, of any
-- tenant, already holds a sid Twilio lists (tenants may share a Twilio account): a sid is
-- unique across Twilio, so it is looked up alone.
CREATE INDEX deliveries_by_sid_alone ON deliveries (sid);
