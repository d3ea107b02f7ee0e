"""The notifier's translation of moto's S3 event records into MinIO webhook bodies (pure).

Input records are shaped exactly as moto 5 puts them on the SQS queue (see
moto/s3/notifications.py); expected outputs follow MinIO's event.Log / event.Event structs.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

from localfaas.notifier import (
    ObjectHead,
    Origin,
    encode_key,
    is_duplicate_multipart_put,
    minio_event_name,
    should_forward,
    to_minio_event,
)

ORIGIN = Origin(
    principal_id="vtpabc123",
    endpoint="http://127.0.0.1:17404",
    deployment_id="0b4f7d3e-0000-5000-8000-000000000000",
)


def moto_record(
    key_encoded: str,
    *,
    event: str = "ObjectCreated:Put",
    size: int = 100,
    etag: str = "aed563ecafb4bcc5654c597a421547b2",
    bucket: str = "uploads",
    when: str = "2026-11-25T20:30:01.945Z",
) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": when,
        "eventName": event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "localfaas-webhook",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key_encoded, "size": size, "eTag": etag},
        },
    }


def test_single_part_put_is_minio_shaped():
    head = ObjectHead(content_type="video/mp4", user_metadata={"title": "Hello"})
    body = to_minio_event(moto_record("clip.mp4"), head, ORIGIN)

    assert list(body) == ["EventName", "Key", "Records"]
    assert body["EventName"] == "s3:ObjectCreated:Put"
    assert body["Key"] == "uploads/clip.mp4"
    assert len(body["Records"]) == 1
    rec = body["Records"][0]
    assert list(rec) == [
        "eventVersion",
        "eventSource",
        "awsRegion",
        "eventTime",
        "eventName",
        "userIdentity",
        "requestParameters",
        "responseElements",
        "s3",
        "source",
    ]
    assert rec["eventVersion"] == "2.0"
    assert rec["eventSource"] == "minio:s3"
    assert rec["awsRegion"] == ""
    assert rec["eventTime"] == "2026-11-25T20:30:01.945Z"
    assert rec["eventName"] == "s3:ObjectCreated:Put"
    assert rec["userIdentity"] == {"principalId": "vtpabc123"}
    assert rec["requestParameters"] == {
        "principalId": "vtpabc123",
        "region": "",
        "sourceIPAddress": "127.0.0.1",
    }
    resp = rec["responseElements"]
    assert set(resp) == {
        "x-amz-id-2",
        "x-amz-request-id",
        "x-minio-deployment-id",
        "x-minio-origin-endpoint",
    }
    assert resp["x-minio-origin-endpoint"] == "http://127.0.0.1:17404"
    assert resp["x-minio-deployment-id"] == ORIGIN.deployment_id
    assert rec["s3"] == {
        "s3SchemaVersion": "1.0",
        "configurationId": "Config",
        "bucket": {
            "name": "uploads",
            "ownerIdentity": {"principalId": "vtpabc123"},
            "arn": "arn:aws:s3:::uploads",
        },
        "object": {
            "key": "clip.mp4",
            "size": 100,
            "eTag": "aed563ecafb4bcc5654c597a421547b2",
            "contentType": "video/mp4",
            "userMetadata": {"content-type": "video/mp4", "X-Amz-Meta-Title": "Hello"},
            # 2026-11-25T20:30:01.945Z in nanoseconds since the epoch, upper-case hex.
            "sequencer": "18EB63CB75E92840",
        },
    }
    assert rec["source"] == {"host": "127.0.0.1", "port": "", "userAgent": ""}
    assert resp["x-amz-request-id"] == rec["s3"]["object"]["sequencer"]
    # The body survives JSON as it is (what the receiver parses).
    assert json.loads(json.dumps(body)) == body


def test_multipart_upload_gives_one_complete_event():
    etag = "96cda97ca55c87886217a198f7d9ce19-3"
    put = moto_record("big.mp4", size=11534336, etag=etag)
    complete = moto_record(
        "big.mp4", event="ObjectCreated:CompleteMultipartUpload", size=11534336, etag=etag
    )
    # moto emits both; MinIO only the CompleteMultipartUpload event.
    assert is_duplicate_multipart_put(put)
    assert not should_forward(put)
    assert should_forward(complete)

    body = to_minio_event(complete, ObjectHead(content_type="video/mp4"), ORIGIN)
    assert body["EventName"] == "s3:ObjectCreated:CompleteMultipartUpload"
    obj = body["Records"][0]["s3"]["object"]
    assert obj["eTag"] == etag
    assert obj["size"] == 11534336
    assert body["Records"][0]["eventName"] == "s3:ObjectCreated:CompleteMultipartUpload"


def test_single_put_with_plain_etag_is_not_a_duplicate():
    assert not is_duplicate_multipart_put(moto_record("a.mp4"))
    assert should_forward(moto_record("a.mp4"))
    assert should_forward(moto_record("a.mp4", event="ObjectCreated:Copy"))
    assert should_forward(moto_record("a.mp4", event="ObjectCreated:Post"))


def test_non_created_events_are_not_forwarded():
    assert not should_forward(moto_record("a.mp4", event="ObjectRemoved:Delete"))
    assert not should_forward(moto_record("a.mp4", event="ObjectTagging:Put"))


def test_key_with_spaces_and_non_ascii_is_encoded_like_minio():
    key = "dir/my clip é.mp4"
    # moto's own encoding of the key, as it arrives on the queue.
    body = to_minio_event(moto_record("dir%2Fmy+clip+%C3%A9.mp4"), None, ORIGIN)

    assert body["Key"] == "uploads/dir/my clip é.mp4"  # top level: not encoded
    rec_key = body["Records"][0]["s3"]["object"]["key"]
    assert rec_key == "dir%2Fmy+clip+%C3%A9.mp4"  # Go url.QueryEscape
    assert unquote_plus(rec_key) == key


def test_nested_prefix_and_reserved_characters():
    key = "users/42/2026 11/a+b&c=d~e_f-g.h(1)!.mp4"
    body = to_minio_event(moto_record(encode_key(key)), None, ORIGIN)
    rec_key = body["Records"][0]["s3"]["object"]["key"]
    assert rec_key == "users%2F42%2F2026+11%2Fa%2Bb%26c%3Dd~e_f-g.h%281%29%21.mp4"
    assert unquote_plus(rec_key) == key
    assert body["Key"] == f"uploads/{key}"


def test_empty_fields_are_omitted_like_go_omitempty():
    body = to_minio_event(moto_record("empty.txt", size=0, etag=""), None, ORIGIN)
    obj = body["Records"][0]["s3"]["object"]
    assert list(obj) == ["key", "sequencer"]


def test_user_metadata_names_are_canonical_header_names():
    head = ObjectHead(
        content_type="application/octet-stream",
        user_metadata={"job-id": "7", "callback-url": "http://x"},
    )
    obj = to_minio_event(moto_record("a.mp4"), head, ORIGIN)["Records"][0]["s3"]["object"]
    assert obj["userMetadata"] == {
        "content-type": "application/octet-stream",
        "X-Amz-Meta-Callback-Url": "http://x",
        "X-Amz-Meta-Job-Id": "7",
    }


def test_translation_is_deterministic():
    rec = moto_record("a.mp4")
    assert to_minio_event(rec, None, ORIGIN) == to_minio_event(rec, None, ORIGIN)


def test_event_name_prefix():
    assert minio_event_name({"eventName": "ObjectCreated:Put"}) == "s3:ObjectCreated:Put"
    assert minio_event_name({"eventName": "s3:ObjectCreated:Put"}) == "s3:ObjectCreated:Put"
