-- Quality by VMAF (vtp.media.quality): scores run 0-100 where SSIM's ran 0-1. Rows measured
-- before keep their SSIM scores, and their quality_metric ('ssim') says which they are.
ALTER TABLE renditions DROP CONSTRAINT IF EXISTS renditions_quality_score_check;
ALTER TABLE renditions
    ADD CONSTRAINT renditions_quality_score_check
        CHECK (quality_score IS NULL OR (quality_score >= -1 AND quality_score <= 100));
