"""What split accepts: MinIO events and manual jobs, told apart and validated."""

from __future__ import annotations

import json
from urllib.parse import quote_plus

import pytest

from vtp.errors import InvalidRequest
from vtp.webhook import JobRequest, MinioEvent, parse_body, sources_from_event

CAPTIONS = [".srt", ".vtt"]


def minio_event(key: str, name: str = "s3:ObjectCreated:Put", bucket: str = "uploads") -> bytes:
    return json.dumps(
        {
            "EventName": name,
            "Key": f"{bucket}/{key}",
            "Records": [
                {
                    "eventName": name,
                    "s3": {
                        "bucket": {"name": bucket},
                        "object": {"key": quote_plus(key), "size": 10, "eTag": "abc"},
                    },
                }
            ],
        }
    ).encode()


def test_minio_event_key_is_decoded() -> None:
    ev = parse_body(minio_event("talks/my clip é.mp4"))
    assert isinstance(ev, MinioEvent)
    wanted, ignored = sources_from_event(ev, outputs_buckets=["outputs"], caption_suffixes=CAPTIONS)
    assert ignored == []
    assert wanted[0].key == "talks/my clip é.mp4"
    assert wanted[0].etag == "abc"


def test_multipart_completion_counts_as_new_content() -> None:
    ev = parse_body(minio_event("big.MOV", "s3:ObjectCreated:CompleteMultipartUpload"))
    assert isinstance(ev, MinioEvent)
    wanted, _ = sources_from_event(ev, outputs_buckets=["outputs"], caption_suffixes=CAPTIONS)
    assert [w.key for w in wanted] == ["big.MOV"]


@pytest.mark.parametrize(
    ("key", "name", "bucket", "why"),
    [
        ("talk.srt", "s3:ObjectCreated:Put", "uploads", "a caption file"),
        ("talks/", "s3:ObjectCreated:Put", "uploads", "a folder marker"),
        ("a.mp4", "s3:ObjectCreated:PutTagging", "uploads", "not new content"),
        ("a.mp4", "s3:ObjectRemoved:Delete", "uploads", "not new content"),
        ("job/720p/x.mp4", "s3:ObjectCreated:Put", "outputs", "outputs bucket"),
        ("job/720p/x.mp4", "s3:ObjectCreated:Put", "outputs-private", "outputs bucket"),
    ],
)
def test_events_we_do_not_act_on_are_explained(key: str, name: str, bucket: str, why: str) -> None:
    ev = parse_body(minio_event(key, name, bucket))
    assert isinstance(ev, MinioEvent)
    wanted, ignored = sources_from_event(
        ev, outputs_buckets=["outputs", "outputs-private"], caption_suffixes=CAPTIONS
    )
    assert wanted == []
    assert len(ignored) == 1 and why in ignored[0]


def test_manual_job_defaults_and_hls_is_always_made() -> None:
    job = parse_body(b'{"bucket": "uploads", "key": "a.mp4", "formats": ["mp4"]}')
    assert isinstance(job, JobRequest)
    assert job.formats == ["hls", "mp4"]
    assert job.renditions is None and job.callback_url is None
    assert job.private is None  # the deployment's default, settled when the job is recorded
    private = parse_body(b'{"bucket": "uploads", "key": "a.mp4", "private": true}')
    assert isinstance(private, JobRequest) and private.options().private is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"bucket": "uploads"}', "key"),
        (b'{"bucket": "uploads", "key": "a.mp4", "formats": ["webm"]}', "formats"),
        (b'{"bucket": "uploads", "key": "a.mp4", "callback_url": "not a url"}', "callback_url"),
        (b'{"bucket": "uploads", "key": "a.mp4", "extra": 1}', "extra"),
        (b'{"bucket": "uploads", "key": "a.mp4", "renditions": []}', "renditions"),
    ],
)
def test_bad_requests_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_body(body)


def test_any_other_upload_is_taken_to_be_answered() -> None:
    """A file that is neither video nor sound is still taken: split answers it with a failed
    job saying why (vtp.pipeline.intake), never with silence."""
    ev = parse_body(minio_event("notes.txt"))
    assert isinstance(ev, MinioEvent)
    wanted, ignored = sources_from_event(ev, outputs_buckets=["outputs"], caption_suffixes=CAPTIONS)
    assert [w.key for w in wanted] == ["notes.txt"] and ignored == []
