"""Every exception the pipeline raises on purpose, in one place.

Core code raises these; only handlers turn them into HTTP statuses (see `http_status`), so
the same core can serve a webhook, a manual job and a queue message.
"""

from __future__ import annotations


class VtpError(Exception):
    """Base of all pipeline errors. `reason` is safe to show to clients and to record.

    `retryable` says whether the same work may succeed if tried again: the surroundings
    failed (storage, the network, a signal), not the request or the input. Work that failed
    on a non-retryable error fails at once with its reason; there is no attempt to spend.
    """

    http_status = 500
    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidRequest(VtpError):
    """The request itself is malformed: bad JSON, a missing or wrong field."""

    http_status = 400


class Unauthorized(VtpError):
    """A request without the token it needs: a bucket notification's bearer token, a read
    token (`vtp.access`), a rendition callback's signature."""

    http_status = 401


class Forbidden(VtpError):
    """The request is understood but this deployment does not allow it."""

    http_status = 403


class NotFound(VtpError):
    """An unknown job, rendition or object."""

    http_status = 404


class Conflict(VtpError):
    """The request is valid but clashes with the current state (e.g. a finished rendition)."""

    http_status = 409


class TooManyRequests(VtpError):
    """A caller over one of its limits (vtp.quotas): `retry_after` seconds say when to try
    again, and the reason names the limit."""

    http_status = 429

    def __init__(self, reason: str, *, retry_after: int = 1, limit: str = "") -> None:
        super().__init__(reason)
        self.retry_after = max(1, retry_after)
        self.limit = limit


class InvalidTransition(VtpError):
    """A state change the lifecycle does not allow (vtp.lifecycle): a bug, never retried."""

    http_status = 500


class InvalidSource(VtpError):
    """The uploaded object is not a video we accept: not media, no video stream, too big..."""

    http_status = 422


class StorageError(VtpError):
    """Object storage could not be read or written."""

    http_status = 502
    retryable = True


class FfmpegError(VtpError):
    """ffmpeg or ffprobe exited with an error; `reason` carries the tail of its stderr.

    `transient` says whether the same run may succeed later: the network, the disk or the
    machine failed (a signal, a refused connection, a 5xx from storage). Otherwise the tool
    failed on the input itself (invalid data, an unsupported stream), and it will again.
    """

    http_status = 500

    def __init__(self, reason: str, *, transient: bool = True) -> None:
        super().__init__(reason)
        self.transient = transient
        self.retryable = transient


class FfmpegTimeout(FfmpegError):
    """ffmpeg ran past its wall-time budget and was killed with its process group."""

    http_status = 504


class FfmpegStalled(FfmpegError):
    """ffmpeg wrote nothing more for longer than it may (a deadlock, an input that never
    answers) and was killed with its process group, long before its wall-time budget."""


class JoinRefused(VtpError):
    """A chunk's encode does not fit its rendition (a frame missing or extra, a gap, a
    segment without a keyframe, another init segment: vtp.media.join). Encoding that chunk again
    is the remedy for a fault (a worker killed mid-write, a bad disk), so it is retried,
    alone; but a check that fails the same way twice is the source or the code, not a
    fault, and a third try would only spend the budget: `repeated` makes it final."""

    http_status = 500
    retryable = True

    def __init__(self, reason: str, *, repeated: bool = False) -> None:
        super().__init__(f"{reason} (the same on the previous attempt)" if repeated else reason)
        self.retryable = not repeated


class UpstreamError(VtpError):
    """The gateway, a callback target or another service refused or failed."""

    http_status = 502
    retryable = True


def http_status(exc: BaseException) -> int:
    """The HTTP status a handler should answer for `exc`; 500 for anything unexpected."""
    return exc.http_status if isinstance(exc, VtpError) else 500
