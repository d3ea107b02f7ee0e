-- Redriving a failed job (vtp.jobs.redrive): its failed and dead tasks are queued again with
-- a fresh budget, what succeeded is kept.
--
-- tasks.budget_from: the attempts made before the last redrive, which no longer count
-- against the budget (attempts keep counting, so each attempt still writes a folder of its
-- own). redrives: how often the task, and the job, were redriven.
ALTER TABLE tasks
    ADD COLUMN budget_from integer NOT NULL DEFAULT 0 CHECK (budget_from >= 0),
    ADD COLUMN redrives integer NOT NULL DEFAULT 0 CHECK (redrives >= 0);
ALTER TABLE jobs ADD COLUMN redrives integer NOT NULL DEFAULT 0 CHECK (redrives >= 0);
