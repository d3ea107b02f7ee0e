-- A call stays in the platform's queue until the queue-worker has reported it and then
-- acknowledged its message: the CE queue-worker posts its report first and acknowledges
-- only once that is answered. A task that recorded its own end is not there yet, so fair
-- share (vtp.jobs.scheduling) counts a finished task's latest call as in flight until its
-- report, plus the hand-over to the acknowledgement (`slot_handover_seconds`), and at most
-- `call_report_grace_seconds` after the task's end when no report comes.
ALTER TABLE tasks
    ADD COLUMN reported_call_id text,
    ADD COLUMN reported_at timestamptz;

-- Everything that ended before this migration was reported long ago, or never will be.
UPDATE tasks SET reported_call_id = dispatch_call_id, reported_at = finished_at
    WHERE finished_at IS NOT NULL;

-- The claim reads the tasks that ended within the grace: a range of this index.
CREATE INDEX tasks_finished_idx ON tasks (finished_at) WHERE finished_at IS NOT NULL;
