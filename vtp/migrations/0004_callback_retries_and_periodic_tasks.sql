-- Job callbacks retried for hours, driven by the sweeper, whatever restarts in between: when
-- the next try of a pending callback is due. A receiver down for a few seconds used to lose
-- its callback for good (three tries within five seconds, then 'failed').
ALTER TABLE jobs ADD COLUMN callback_next_at timestamptz;

CREATE INDEX jobs_callbacks_due_idx ON jobs (callback_next_at)
    WHERE callback_status = 'pending' AND callback_next_at IS NOT NULL;

-- Work the sweeper does now and then rather than every minute (the reconciliation of the
-- input buckets against the jobs): when each task last ran, so that of several sweepers
-- (one a minute, or two racing) one runs it per interval.
CREATE TABLE periodic_tasks (
    task         text PRIMARY KEY,
    last_run_at  timestamptz NOT NULL
);

-- The reconciler asks, a page of listed objects at a time, which versions have a job.
CREATE INDEX jobs_source_idx ON jobs (source_bucket, source_key);
