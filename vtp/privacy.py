"""Private outputs: whether a job's outputs are private, and where they live.

A platform selling courses cannot publish its videos to whoever learns a URL, yet HLS and DASH
players fetch every segment by a URL relative to the playlist, which a presigned playlist URL
cannot cover. So a private job's outputs are read only through ws-relay's play route
(`vtp_relay.play`), whose URLs carry a signed, expiring token (vtp.links).

Where they live: a second bucket, `private_outputs_bucket`, that is never given a public
policy, rather than a key prefix excluded from the public bucket's policy. Then the object
store itself refuses anonymous reads of private outputs without any policy having to be
right: a bucket with no policy is private in S3, MinIO and the local S3 server alike, whereas
a prefix would rely on a Deny statement or on the public bucket's Allow naming every public
prefix (and public outputs live at `<job id>/`, the bucket's root, with no prefix to name).
Everything that lists, deletes or expires outputs works on one job's prefix in one bucket, so
nothing else changes shape. The public bucket stays as it was: public jobs keep their plain
URLs.

Whether a job is private is settled when it is recorded: its request's or upload's
`private`, else the deployment's `VTP_PRIVATE_OUTPUTS`, kept in the job's options
(`Job.private`). A later change of the deployment's default never moves a job's outputs.
"""

from __future__ import annotations

from vtp.jobs import Job
from vtp.options import JobOptions
from vtp.settings import Settings


def settle(options: JobOptions, settings: Settings) -> JobOptions:
    """The options with `private` decided: the job's own answer, else the deployment's."""
    if options.private is not None:
        return options
    return options.model_copy(update={"private": settings.private_outputs})


def outputs_bucket(settings: Settings, job: Job) -> str:
    """The bucket `job`'s outputs are written to, read from and removed from."""
    return settings.private_outputs_bucket if job.private else settings.outputs_bucket
