-- Fair share (vtp.jobs.scheduling): a job's tasks wait in PostgreSQL until the scheduler
-- gives them a slot, instead of all going into the platform's queue at once.
--
-- A task is waiting while it is queued without a call (dispatch_call_id NULL) or retrying
-- past its back-off; in flight while a call for it is in the platform's queue (queued with
-- a call id) or running. The job's priority (0-100: low 25, normal 50, high 75) weighs its
-- share; jobs from before keep the default.
ALTER TABLE jobs
    ADD COLUMN priority smallint NOT NULL DEFAULT 50 CHECK (priority BETWEEN 0 AND 100);

-- Whatever a redrive or an older release left queued with a call id that no queue holds any
-- more is found by the sweeper (lost_dispatches) as before; a task queued before this
-- migration and never dispatched has no call id: it now waits for the scheduler.
CREATE INDEX tasks_waiting_idx ON tasks (job_id)
    WHERE (state = 'queued' AND dispatch_call_id IS NULL) OR state = 'retrying';
CREATE INDEX tasks_in_flight_idx ON tasks (job_id)
    WHERE state = 'running' OR (state = 'queued' AND dispatch_call_id IS NOT NULL);
