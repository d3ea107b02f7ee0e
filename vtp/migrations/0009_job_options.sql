-- A job is a source version plus its output options (vtp.options), not the source version
-- alone: the same object asked for with other renditions or formats is another job, with
-- its own outputs, where before the request was answered as a duplicate and its options
-- dropped.
--
-- options_key: the options' readable identity (`renditions=*;formats=hls`, or the names
-- asked for), with `;run=<id>` appended for a job that asked to be encoded again.
-- options: the options as asked and where they came from (defaults, upload metadata, a
-- manual request).
ALTER TABLE jobs
    ADD COLUMN options_key text,
    ADD COLUMN options jsonb;

-- Jobs from before: what they are known to have made. The rungs a manual job named were not
-- kept, so each counts as the default ladder's job of its formats (which a redelivered
-- bucket event for it will find, as it did before).
UPDATE jobs SET options_key = 'renditions=*;formats='
    || array_to_string(ARRAY(SELECT DISTINCT f FROM unnest(formats) AS f ORDER BY 1), ',');

ALTER TABLE jobs ALTER COLUMN options_key SET NOT NULL;
ALTER TABLE jobs DROP CONSTRAINT jobs_source_unique;
ALTER TABLE jobs ADD CONSTRAINT jobs_source_options_unique
    UNIQUE (source_bucket, source_key, source_etag, options_key);
