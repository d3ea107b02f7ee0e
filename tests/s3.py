"""An S3 client for a local stack, the way the tests and benchmarks reach its S3 server."""

from __future__ import annotations

from minio import Minio

from localfaas.config import LocalConfig


def s3_client(cfg: LocalConfig, *buckets: str) -> Minio:
    """The stack's S3 server with its own credentials; `buckets` are made if missing."""
    c = cfg.credentials
    client = Minio(
        cfg.s3_endpoint.split("://", 1)[1],
        access_key=c["s3_access_key"],
        secret_key=c["s3_secret_key"],
        secure=False,
        region="us-east-1",
    )
    for bucket in buckets:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    return client
