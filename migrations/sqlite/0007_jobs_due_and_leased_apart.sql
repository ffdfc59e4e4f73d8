-- A claim reads two things: queued jobs whose time has come, and running jobs whose lease
-- expired. One index over every state served the first and made the second walk every
-- running job to read its lease; it also kept an entry for every finished job. Each now has
-- a partial index of its own, and a job that ends leaves both.
DROP INDEX jobs_due;
CREATE INDEX jobs_queued ON jobs (state, run_at) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (state, lease_until) WHERE state = 'running';
