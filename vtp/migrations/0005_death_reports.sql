-- A report that a transcode call died (the queue-worker's callback with a failed status) is
-- believed only once the attempt stays silent after it. The callback URL is signed, but
-- gateways and queue-workers log it whole, so anyone who reads those logs can send the
-- report for a call that is still encoding; a live attempt answers with its next heartbeat,
-- which clears the report, while a dead one's silence confirms it (vtp.jobs.attempts).
ALTER TABLE renditions ADD COLUMN death_reported_at timestamptz;
ALTER TABLE renditions ADD COLUMN death_report text;

CREATE INDEX renditions_death_reports_idx ON renditions (death_reported_at)
    WHERE state = 'running' AND death_reported_at IS NOT NULL;
