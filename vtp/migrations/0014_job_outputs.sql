-- The job-level files fan-in wrote beside the master playlist, by what they are: the DASH
-- manifest, the storyboard's WebVTT index (vtp.storyboard), the subtitles. Paths are
-- relative to the job's folder; a name is there only once its file was written.
ALTER TABLE jobs ADD COLUMN outputs jsonb NOT NULL DEFAULT '{}'::jsonb;
