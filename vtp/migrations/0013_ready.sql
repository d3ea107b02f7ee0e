-- Playable early (vtp.pipeline.fanin.FanIn.rendition_ready): as each rendition finishes,
-- the master playlist is written with the renditions ready so far. jobs.ready: their names,
-- as the master written last lists them (every succeeded rendition once the job has ended).
ALTER TABLE jobs ADD COLUMN ready text[] NOT NULL DEFAULT ARRAY[]::text[];
