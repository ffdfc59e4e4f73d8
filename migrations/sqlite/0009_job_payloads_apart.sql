-- A job's payload (the plugin's delivery and words, about 800 bytes) is written once and
-- never changed, while its state changes on every claim and every end. Kept in the job's
-- row, it put four jobs on a page, so each state change rewrote a kilobyte of payload per
-- job (twice, through the WAL and its checkpoint), and the outcome written at an attempt's
-- end split full pages. Apart, a page of jobs holds twenty or more.
CREATE TABLE job_payloads (
    job_id   INTEGER PRIMARY KEY,
    payload  TEXT NOT NULL
);
INSERT INTO job_payloads (job_id, payload) SELECT id, payload FROM jobs;
ALTER TABLE jobs DROP COLUMN payload;
