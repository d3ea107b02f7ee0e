"""`vtp`: upload a video to the pipeline, follow its job live, read job status.

    vtp upload FILE [--watch] [--key K]   put FILE into the uploads bucket (the same path as any
                                          other producer: the bucket notification starts the job)
    vtp watch JOB                         one progress bar per rendition until the job ends
    vtp status JOB [--json]               one job
    vtp jobs [--state S] [--limit N]      recent jobs
    vtp callbacks redeliver JOB           send a finished job's callback again
    vtp cancel JOB                        stop a job: running encodes end, its outputs go
    vtp redrive JOB [--watch]             queue a failed job's failed and dead renditions again
    vtp delete JOB [--source]             an ended job's outputs and records (and its source)

Settings come from flags, then the environment (VTP_*), then an env file: `--env-file`, or the
`.run/stack.env` that `make up` writes, found from the current directory upward.

`watch` listens to the ws-relay function: its WebSocket (VTP_WS_URL) when reachable, else
Server-Sent Events through the gateway (the OpenFaaS CE gateway strips WebSocket upgrades but
streams SSE), else polling the status function. It also polls status now and then and once at
the end, because the database, not the event stream, is the truth about a job.

The code is in layers so the parts can be tested alone, a module each: `progress` (pure:
`JobProgress` turns events, snapshots and job views into per-rendition state and `bar_rows`
turns that into what a bar shows); `transport` (`SseParser` and `parse_ws_message` turn wire
frames into messages, pure; `ws_messages` and `sse_messages` do the I/O); `config` (the
settings); `client` (the status function, the upload); `watch` (`Watcher`); `views` (rich bars
and tables); `commands` (`main`, the command line).
"""

from __future__ import annotations

from vtp_cli.commands import main
from vtp_cli.config import read_env_file

__all__ = ["main", "read_env_file"]
