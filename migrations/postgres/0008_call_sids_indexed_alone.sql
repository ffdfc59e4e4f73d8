-- Every send inserts a delivery, and a sid is random: each index on it takes every insert
-- on a page of its own, the largest share of what a commit of sent alerts writes. Only the
-- reconciliation of a call looks deliveries up by sid (an SMS is found in Twilio's list by
-- its body, a callback by its delivery id), so one index of call sids is enough; the
-- (tenant, sid) index was read by no query since 0006.
DROP INDEX deliveries_by_sid;
DROP INDEX deliveries_by_sid_alone;
CREATE INDEX deliveries_call_sids ON deliveries (sid) WHERE channel = 'voice';
