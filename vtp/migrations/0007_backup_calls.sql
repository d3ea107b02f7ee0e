-- Backup calls: a second call for a straggling chunk, racing the first (vtp.jobs.backups).
--
-- A chunk that runs far longer than its siblings' median (a slow node, a noisy neighbour)
-- holds its whole rendition back. The sweeper may dispatch it once more; both calls run,
-- the first result recorded wins, and the other's report is refused. The first call keeps
-- its columns (last_call_id, heartbeat_at, attempt_started_at); the second has these. It
-- runs under the same attempt number, in a folder of its own (vtp.layout.chunk_prefix), and
-- spends none of the task's retry budget: it is speculation, not a retry.
ALTER TABLE tasks
    ADD COLUMN backup_call_id       text,
    ADD COLUMN backup_dispatched_at timestamptz,
    ADD COLUMN backup_started_at    timestamptz,
    ADD COLUMN backup_heartbeat_at  timestamptz,
    -- Backup calls dispatched for the task, ever: one is the most it gets.
    ADD COLUMN backups              integer NOT NULL DEFAULT 0 CHECK (backups >= 0),
    ADD CONSTRAINT tasks_backup_while_running
        CHECK (backup_call_id IS NULL OR state = 'running'),
    ADD CONSTRAINT tasks_backup_started_has_call
        CHECK (backup_started_at IS NULL OR backup_call_id IS NOT NULL);
