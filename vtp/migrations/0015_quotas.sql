-- Quotas per credential (vtp.quotas), counted here so every replica of split agrees.

-- Every manual job admitted, by the credential that asked: the jobs it has at work (a row
-- whose job_id is still NULL is one being submitted right now) and its reprocesses of one
-- object version in the last hour.
CREATE TABLE submissions (
    id            bigserial PRIMARY KEY,
    credential    text NOT NULL,
    source_bucket text NOT NULL,
    source_key    text NOT NULL,
    source_etag   text NOT NULL,
    reprocess     boolean NOT NULL,
    job_id        uuid REFERENCES jobs (id) ON DELETE CASCADE,
    at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX submissions_by_credential ON submissions (credential, at);
CREATE INDEX submissions_reprocesses ON submissions (credential, source_bucket, source_key, source_etag, at)
    WHERE reprocess;

-- One token bucket per credential: requests per second, with a burst.
CREATE TABLE rate_buckets (
    credential text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Refusals, per credential and limit, for the metrics.
CREATE TABLE quota_refusals (
    credential text NOT NULL,
    limit_name text NOT NULL,
    total      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (credential, limit_name)
);
