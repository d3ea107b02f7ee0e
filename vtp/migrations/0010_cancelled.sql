-- Cancelling a job (vtp.jobs.cancellation.Cancellation.cancel_job): `cancelled` is an end
-- for jobs, renditions and tasks, beside succeeded, failed and dead. The CHECKs that list
-- the states and the ends, and the index of open tasks, are rebuilt with it.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE jobs DROP CONSTRAINT jobs_finished_iff_terminal;
ALTER TABLE jobs ADD CONSTRAINT jobs_finished_iff_terminal
    CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL));

ALTER TABLE renditions DROP CONSTRAINT renditions_state_check;
ALTER TABLE renditions ADD CONSTRAINT renditions_state_check
    CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead',
                     'cancelled'));
ALTER TABLE renditions DROP CONSTRAINT renditions_finished_iff_terminal;
ALTER TABLE renditions ADD CONSTRAINT renditions_finished_iff_terminal
    CHECK ((state IN ('succeeded', 'failed', 'dead', 'cancelled')) = (finished_at IS NOT NULL));

ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead',
                     'cancelled'));
ALTER TABLE tasks DROP CONSTRAINT tasks_finished_iff_terminal;
ALTER TABLE tasks ADD CONSTRAINT tasks_finished_iff_terminal
    CHECK ((state IN ('succeeded', 'failed', 'dead', 'cancelled')) = (finished_at IS NOT NULL));

DROP INDEX tasks_open_idx;
CREATE INDEX tasks_open_idx ON tasks (job_id)
    WHERE state NOT IN ('succeeded', 'failed', 'dead', 'cancelled');
