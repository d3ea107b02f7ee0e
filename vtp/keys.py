"""Every Redis key and channel name the pipeline uses, in one place.

All names start with `settings.redis_prefix` (default "vtp") so several deployments, or a test
run, can share one Redis without seeing each other. Producers (transcode, split) and consumers
(status, ws-relay) must build names here rather than by hand, so they cannot drift apart.
"""

from __future__ import annotations

import logging
import re
from uuid import UUID

log = logging.getLogger(__name__)

_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class RedisKeys:
    """Names under one prefix.

    - `<prefix>:events`             stream: every progress event of every job, in order
    - `<prefix>:progress`           pub/sub channel: the same events, live
    - `<prefix>:job:<id>:progress`  hash: rendition name (or "_job") -> latest event JSON
    - `<prefix>:job:<id>:cancelled` string: present once the job was cancelled
    """

    def __init__(self, prefix: str) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"invalid Redis prefix {prefix!r}")
        self.prefix = prefix

    def job_cancelled(self, job_id: UUID | str) -> str:
        """string: set once the job is cancelled; running transcodes poll it and stop."""
        return f"{self.prefix}:job:{job_id}:cancelled"

    @property
    def events_stream(self) -> str:
        return f"{self.prefix}:events"

    @property
    def progress_channel(self) -> str:
        return f"{self.prefix}:progress"

    def job_progress(self, job_id: UUID | str) -> str:
        return f"{self.prefix}:job:{job_id}:progress"
