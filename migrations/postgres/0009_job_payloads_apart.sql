-- A job's payload (the plugin's delivery and words, about 800 bytes) is written once and
-- never changed, while its state changes on every claim and every end. Kept in the job's
-- row, every state change wrote a new version of the whole row, payload included (TOAST
-- starts at 2 KB), to the heap and the WAL. Apart, the job's row is small.
CREATE TABLE job_payloads (
    job_id   BIGINT PRIMARY KEY,
    payload  TEXT NOT NULL
);
INSERT INTO job_payloads (job_id, payload) SELECT id, payload FROM jobs;
ALTER TABLE jobs DROP COLUMN payload;
