-- Deleting jobs and expiring their outputs (vtp.jobs.deletion).
--
-- jobs.outputs_deleted_at: the retention sweep (VTP_RETENTION_DAYS) removed the job's
-- outputs; the row stays, as the job's history.
ALTER TABLE jobs ADD COLUMN outputs_deleted_at timestamptz;
-- The retention sweep's way in: ended jobs whose outputs are still there, oldest first.
CREATE INDEX jobs_retention_idx ON jobs (finished_at)
    WHERE finished_at IS NOT NULL AND outputs_deleted_at IS NULL;

-- A deleted job's source version, kept so that reconciliation (which submits objects no job
-- knows) does not take the source that stayed for an object whose event was lost, and make
-- the deleted job again.
CREATE TABLE deleted_jobs (
    job_id         uuid PRIMARY KEY,
    source_bucket  text NOT NULL,
    source_key     text NOT NULL,
    source_etag    text NOT NULL,
    options_key    text NOT NULL,
    deleted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deleted_jobs_source_idx ON deleted_jobs (source_bucket, source_key, source_etag);
