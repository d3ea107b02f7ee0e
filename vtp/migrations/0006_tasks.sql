-- Tasks: one row per unit of work that one call runs, with everything about running it.
--
-- Until now a rendition was its own unit of work: its attempts, lease, heartbeat, call ids,
-- refusals and death reports were columns of the rendition row. Segment-parallel encoding
-- makes a rendition many units (chunks), each with its own attempts and lease, so those
-- columns move here. A rendition encoded whole has one task, chunk 0, with no range; the
-- rendition keeps its plan, its derived state (vtp.lifecycle.rendition_state, kept in step
-- in the same transaction as every task transition), and its output.
CREATE TABLE tasks (
    job_id              uuid NOT NULL,
    rendition           text NOT NULL,
    -- The task's number within its rendition; 0 for a rendition encoded whole.
    chunk               integer NOT NULL DEFAULT 0 CHECK (chunk >= 0),
    function            text NOT NULL,
    -- The part of the source it encodes, in seconds; NULL: the whole source.
    start_s             double precision CHECK (start_s IS NULL OR start_s >= 0),
    end_s               double precision,
    state               text NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'retrying',
                                         'succeeded', 'failed', 'dead')),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_call_id        text,
    dispatch_call_id    text,
    refusals            integer NOT NULL DEFAULT 0 CHECK (refusals >= 0),
    heartbeat_at        timestamptz,
    started_at          timestamptz,
    attempt_started_at  timestamptz,
    finished_at         timestamptz,
    next_retry_at       timestamptz,
    dispatched_at       timestamptz,
    death_reported_at   timestamptz,
    death_report        text,
    result              jsonb,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, rendition, chunk),
    FOREIGN KEY (job_id, rendition) REFERENCES renditions (job_id, name) ON DELETE CASCADE,
    CONSTRAINT tasks_range CHECK ((start_s IS NULL) = (end_s IS NULL) AND
                                  (end_s IS NULL OR end_s > start_s)),
    CONSTRAINT tasks_finished_iff_terminal
        CHECK ((state IN ('succeeded', 'failed', 'dead')) = (finished_at IS NOT NULL)),
    CONSTRAINT tasks_retry_has_time CHECK (state <> 'retrying' OR next_retry_at IS NOT NULL),
    CONSTRAINT tasks_failure_has_error CHECK (state NOT IN ('failed', 'dead') OR error IS NOT NULL)
);

CREATE TRIGGER tasks_touch BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION vtp_touch_updated_at();

-- The existing renditions' runs, each as its rendition's one task.
INSERT INTO tasks (job_id, rendition, chunk, function, state, attempts, last_call_id,
                   dispatch_call_id, refusals, heartbeat_at, started_at, attempt_started_at,
                   finished_at, next_retry_at, dispatched_at, death_reported_at, death_report,
                   result, error, created_at, updated_at)
SELECT job_id, name, 0, function, state, attempts, last_call_id, dispatch_call_id, refusals,
       heartbeat_at, started_at, attempt_started_at, finished_at, next_retry_at, dispatched_at,
       death_reported_at, death_report, result, error, created_at, updated_at
FROM renditions;

-- The sweeper's and the callback route's ways in, as they were on renditions.
CREATE INDEX tasks_running_idx ON tasks (COALESCE(heartbeat_at, attempt_started_at))
    WHERE state = 'running';
CREATE INDEX tasks_retry_idx ON tasks (next_retry_at) WHERE state = 'retrying';
CREATE INDEX tasks_queued_idx ON tasks (COALESCE(dispatched_at, created_at))
    WHERE state = 'queued';
CREATE INDEX tasks_death_reports_idx ON tasks (death_reported_at)
    WHERE state = 'running' AND death_reported_at IS NOT NULL;
-- Fan-in counts a job's open tasks.
CREATE INDEX tasks_open_idx ON tasks (job_id)
    WHERE state NOT IN ('succeeded', 'failed', 'dead');

-- What moved to tasks leaves the rendition (its indexes and the retry CHECK go with it).
ALTER TABLE renditions
    DROP COLUMN attempts,
    DROP COLUMN last_call_id,
    DROP COLUMN dispatch_call_id,
    DROP COLUMN refusals,
    DROP COLUMN heartbeat_at,
    DROP COLUMN attempt_started_at,
    DROP COLUMN next_retry_at,
    DROP COLUMN dispatched_at,
    DROP COLUMN death_reported_at,
    DROP COLUMN death_report;

-- The trail names the task of a task's transition; NULL for a job's or a rendition's own
-- (and for rows written before tasks, which were all chunk 0).
ALTER TABLE state_changes ADD COLUMN chunk integer;
