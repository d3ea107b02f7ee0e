-- Quality per bit (vtp.tuning, vtp.quality): how a job's ladder was decided, and what each
-- rendition's encode measured against its source.
--
-- jobs.plan: the per-title decision (metric, samples, sampling cost, rungs dropped and why);
-- each rung's factor and prediction are in its spec.
ALTER TABLE jobs ADD COLUMN plan jsonb;

-- Copied from the rendition's result like its sizes and bit rates: the metric that made the
-- score, the mean score over the measured segments, the worst segment's, and whether the
-- score fell short of the rung's target by more than the margin.
ALTER TABLE renditions
    ADD COLUMN quality_metric text,
    ADD COLUMN quality_score double precision
        CHECK (quality_score IS NULL OR (quality_score >= -1 AND quality_score <= 1)),
    ADD COLUMN quality_worst double precision,
    ADD COLUMN quality_flagged boolean;
