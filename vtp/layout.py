"""Where a job's outputs live in the outputs bucket.

    <job>/master.m3u8                                by fan-in: early (the renditions ready
                                                     so far), then final
    <job>/poster.jpg                                 written once, by fan-in
    <job>/manifest.mpd                               the same, for a job with DASH
    <job>/<rendition>/attempt-<n>/index.m3u8 ...     one folder per attempt
    <job>/<rendition>/index.m3u8                     a chunked rendition's, written by fan-in
    <job>/<rendition>/chunk-<i>/attempt-<n>/...      its chunks' segments, a folder per attempt

Each attempt writes under a folder of its own, so an attempt written off while it ran (its
worker stalled past the heartbeat limit, or its call was redelivered) can never overwrite the
files of the attempt that replaced it: whatever a zombie uploads lands in its own folder,
which no playlist references and fan-in removes. The attempt that succeeds records its folder
(`output_prefix`), and the master playlist and status point there.

Jobs from before attempt folders have `<job>/<rendition>/` as their prefix; everything that
reads a prefix takes both.
"""

from __future__ import annotations

from uuid import UUID

MASTER = "master.m3u8"
MANIFEST = "manifest.mpd"  # DASH, over the same segments (vtp.media.dash), when asked for
POSTER = "poster.jpg"

# The master is written again as renditions become ready (playable early), then once more at
# the job's end, under one key. A copy a browser or CDN kept of an early one would be
# revalidated with If-Modified-Since, which S3 servers (moto; MinIO's checkPreconditions)
# answer 304, whatever the ETag, for a rewrite within the same second as the copy's
# Last-Modified, leaving the viewer on the early ladder for good. So an early master is
# never kept, and the final one is checked on each use (a redrive writes it again).
EARLY_MASTER_CACHE = "no-store"
FINAL_MASTER_CACHE = "no-cache"


def job_prefix(job_id: UUID | str) -> str:
    return f"{job_id}/"


def rendition_prefix(job_id: UUID | str, rendition: str) -> str:
    """Every attempt's folder of one rendition is under this."""
    return f"{job_id}/{rendition}/"


def attempt_prefix(job_id: UUID | str, rendition: str, attempt: int) -> str:
    return f"{job_id}/{rendition}/attempt-{attempt}"


def chunk_prefix(
    job_id: UUID | str, rendition: str, chunk: int, attempt: int, *, backup: bool = False
) -> str:
    """One attempt of one chunk of a rendition encoded in chunks (vtp.media.chunks); a backup
    call (vtp.jobs.backups) runs the same attempt beside the first, in a folder of its own."""
    return f"{job_id}/{rendition}/chunk-{chunk}/attempt-{attempt}{'-backup' if backup else ''}"


def within_job(job_id: UUID | str, prefix: str | None, rendition: str) -> str:
    """A rendition's folder relative to its job's, as the master playlist refers to it
    (`360p/attempt-2`). Without a prefix under the job (a result from before prefixes were
    recorded) it is the rendition's name, the layout of that time."""
    whole = (prefix or "").strip("/")
    relative = whole.removeprefix(f"{job_id}/")
    return relative if whole and relative != whole else rendition
