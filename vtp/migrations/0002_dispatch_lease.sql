-- When a rendition's call was last handed to the gateway's queue. The OpenFaaS CE queue may
-- lose what it holds (NATS Streaming without persistence, restarted): the sweeper re-dispatches
-- a rendition still queued long after its dispatch instead of leaving its job hanging.
ALTER TABLE renditions ADD COLUMN dispatched_at timestamptz;

CREATE INDEX renditions_queued_idx ON renditions (COALESCE(dispatched_at, created_at))
    WHERE state = 'queued';
