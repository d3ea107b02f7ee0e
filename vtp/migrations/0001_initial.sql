-- Job store: one row per source object (idempotency key: bucket, key, etag), one row per
-- rendition, and an append-only audit trail of every state change.
--
-- State columns are text with CHECK constraints rather than PostgreSQL enums: adding a
-- state to a CHECK is one ALTER in a transaction, while ALTER TYPE ... ADD VALUE cannot be
-- used in the same transaction that adds it. The values mirror vtp.models.JobState and
-- vtp.models.RenditionState.

-- updated_at is maintained by the database so no code path can forget it.
CREATE FUNCTION vtp_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE jobs (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_bucket        text NOT NULL,
    source_key           text NOT NULL,
    source_etag          text NOT NULL,
    source_size          bigint CHECK (source_size IS NULL OR source_size >= 0),
    source_info          jsonb,
    state                text NOT NULL DEFAULT 'queued'
                         CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    formats              text[] NOT NULL DEFAULT ARRAY['hls']::text[],
    error                text,
    master_playlist      text,
    callback_url         text,
    callback_status      text NOT NULL DEFAULT 'none'
                         CHECK (callback_status IN ('none', 'pending', 'delivered', 'failed')),
    callback_attempts    integer NOT NULL DEFAULT 0 CHECK (callback_attempts >= 0),
    callback_last_error  text,
    callback_at          timestamptz,
    finalize_claimed_by  text,
    finalize_claimed_at  timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    finished_at          timestamptz,
    -- The same object (same etag) uploaded or announced twice is the same job.
    CONSTRAINT jobs_source_unique UNIQUE (source_bucket, source_key, source_etag),
    CONSTRAINT jobs_finished_iff_terminal
        CHECK ((state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)),
    CONSTRAINT jobs_failed_has_error CHECK (state <> 'failed' OR error IS NOT NULL),
    CONSTRAINT jobs_claim_complete
        CHECK ((finalize_claimed_by IS NULL) = (finalize_claimed_at IS NULL))
);

CREATE TRIGGER jobs_touch BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION vtp_touch_updated_at();

-- Listing: newest first, optionally by state.
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id);
CREATE INDEX jobs_state_created_idx ON jobs (state, created_at DESC, id);
-- Sweeper: the (small) set of jobs still in flight, to find finalizations that never ran.
CREATE INDEX jobs_active_idx ON jobs (finalize_claimed_at)
    WHERE state IN ('queued', 'running');

CREATE TABLE renditions (
    job_id              uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name                text NOT NULL,
    ordinal             integer NOT NULL,
    function            text NOT NULL,
    spec                jsonb NOT NULL,
    state               text NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'retrying',
                                         'succeeded', 'failed', 'dead')),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_call_id        text,
    heartbeat_at        timestamptz,
    started_at          timestamptz,
    attempt_started_at  timestamptz,
    finished_at         timestamptz,
    next_retry_at       timestamptz,
    output_prefix       text,
    size_bytes          bigint,
    avg_bitrate         bigint,
    peak_bitrate        bigint,
    result              jsonb,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name),
    CONSTRAINT renditions_finished_iff_terminal
        CHECK ((state IN ('succeeded', 'failed', 'dead')) = (finished_at IS NOT NULL)),
    CONSTRAINT renditions_retry_has_time CHECK (state <> 'retrying' OR next_retry_at IS NOT NULL),
    CONSTRAINT renditions_failure_has_error
        CHECK (state NOT IN ('failed', 'dead') OR error IS NOT NULL)
);

CREATE TRIGGER renditions_touch BEFORE UPDATE ON renditions
    FOR EACH ROW EXECUTE FUNCTION vtp_touch_updated_at();

-- Sweeper: running renditions by last sign of life, and retries by due time.
CREATE INDEX renditions_running_idx ON renditions (COALESCE(heartbeat_at, attempt_started_at))
    WHERE state = 'running';
CREATE INDEX renditions_retry_idx ON renditions (next_retry_at)
    WHERE state = 'retrying';

-- Append-only audit trail: who moved what from where to where, and why.
CREATE TABLE state_changes (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    rendition   text,
    from_state  text,
    to_state    text NOT NULL,
    attempt     integer,
    call_id     text,
    detail      text,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX state_changes_job_idx ON state_changes (job_id, id);
