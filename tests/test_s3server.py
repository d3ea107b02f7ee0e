"""The local S3 server keeps what it acknowledged: buckets, their policy, objects with their
ETags (multipart ones too), content types and metadata, across a clean stop and a SIGKILL,
and forgets what was deleted; and it refuses what S3 and MinIO refuse: anonymous reads of
buckets no policy opens, forged and expired signatures. A server of its own on a free port,
driven by boto3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config

from localfaas.config import REPO_ROOT
from tests.ports import free_port

KEYS = ["plain.txt", "a/b c/..//x\x01.m3u8", "ünï/" + "k" * 900, "100% + plus&amp;=?.mp4"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Starts (again) the server on the same port and data folder; returns a boto3 client."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(credentials: Path | None = None) -> Any:
        log = (tmp_path / "s3.log").open("ab")
        extra = ["--credentials", str(credentials)] if credentials else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "localfaas.s3server", "-p", str(port),
             "--data", str(tmp_path / "data"), *extra],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(proc)
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "no s3 server"
                time.sleep(0.1)
        return boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
            aws_access_key_id="k", aws_secret_access_key="s",
            config=Config(s3={"addressing_style": "path"}),
        )  # fmt: skip

    start.port = port  # type: ignore[attr-defined]
    start.procs = procs  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def listing(client: Any, bucket: str) -> dict[str, tuple[str, int]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: (o["ETag"], o["Size"]) for p in pages for o in p.get("Contents", [])}


@pytest.mark.slow
def test_objects_outlive_the_server(server: Callable[[], Any], tmp_path: Path) -> None:
    s3 = server()
    s3.create_bucket(Bucket="outs")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
                       "Resource": ["arn:aws:s3:::outs/*"]}],
    }  # fmt: skip
    s3.put_bucket_policy(Bucket="outs", Policy=json.dumps(policy))
    for i, key in enumerate(KEYS):
        s3.put_object(
            Bucket="outs",
            Key=key,
            Body=f"body {i}".encode(),
            ContentType="application/vnd.apple.mpegurl",
            Metadata={"n": str(i)},
        )
    upload = s3.create_multipart_upload(Bucket="outs", Key="big.mp4", ContentType="video/mp4")
    parts = []
    for n, size in ((1, 5 << 20), (2, 1000)):
        etag = s3.upload_part(Bucket="outs", Key="big.mp4", UploadId=upload["UploadId"],
                              PartNumber=n, Body=os.urandom(size))["ETag"]  # fmt: skip
        parts.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(Bucket="outs", Key="big.mp4", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts})  # fmt: skip
    s3.put_object(Bucket="outs", Key="deleted", Body=b"x")
    s3.delete_object(Bucket="outs", Key="deleted")
    s3.put_object(Bucket="outs", Key="deleted-in-batch", Body=b"x")
    s3.delete_objects(Bucket="outs", Delete={"Objects": [{"Key": "deleted-in-batch"}]})
    s3.put_object(Bucket="outs", Key="plain.txt", Body=b"overwritten")  # the newest wins
    s3.create_bucket(Bucket="short-lived")
    s3.delete_bucket(Bucket="short-lived")
    before = listing(s3, "outs")
    # Each object's change was kept by its key alone (the decoded path matched moto's key),
    # not by comparing the whole bucket on every PUT.
    log = (tmp_path / "s3.log").read_text()
    assert "not matched" not in log, log[-2000:]
    big = s3.get_object(Bucket="outs", Key="big.mp4")["Body"].read()
    assert before["big.mp4"][0].endswith('-2"') and set(before) == {*KEYS, "big.mp4"}

    procs = server.procs  # type: ignore[attr-defined]
    procs[-1].send_signal(signal.SIGTERM)
    procs[-1].wait(10)
    s3 = server()
    assert listing(s3, "outs") == before
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["outs"]
    assert s3.get_object(Bucket="outs", Key="big.mp4")["Body"].read() == big
    assert s3.get_object(Bucket="outs", Key="plain.txt")["Body"].read() == b"overwritten"
    head = s3.head_object(Bucket="outs", Key=KEYS[1])
    assert head["ContentType"] == "application/vnd.apple.mpegurl" and head["Metadata"] == {"n": "1"}
    assert json.loads(s3.get_bucket_policy(Bucket="outs")["Policy"]) == policy
    port = server.port  # type: ignore[attr-defined]
    assert requests.get(f"http://127.0.0.1:{port}/outs/big.mp4", timeout=10).status_code == 200

    # Killed outright: what it acknowledged before is there all the same.
    s3.put_object(Bucket="outs", Key="last words", Body=b"acknowledged")
    procs[-1].kill()
    procs[-1].wait(10)
    s3 = server()
    assert s3.get_object(Bucket="outs", Key="last words")["Body"].read() == b"acknowledged"
    assert len(listing(s3, "outs")) == len(before) + 1


def test_request_log_hides_presigned_signatures(server: Callable[[], Any], tmp_path: Path) -> None:
    s3 = server()
    s3.create_bucket(Bucket="logs")
    s3.put_object(Bucket="logs", Key="k", Body=b"x")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "logs", "Key": "k"})
    assert requests.get(url, timeout=10).status_code == 200
    signature = url.split("Signature=", 1)[1].split("&", 1)[0]
    log = (tmp_path / "s3.log").read_text()
    assert "GET /logs/k?" in log and signature not in log


def _public_read(bucket: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/*"]}]})  # fmt: skip


@pytest.mark.slow
def test_it_refuses_what_s3_refuses(server: Callable[[], Any], tmp_path: Path) -> None:
    """moto alone serves forged and expired presigned URLs and lists any bucket to anyone
    (localfaas.s3access): private outputs (vtp.privacy) rest on these refusals."""
    import datetime

    from minio import Minio
    from minio.error import S3Error

    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"s3_access_key": "k", "s3_secret_key": "s"}))
    s3 = server(credentials=creds)  # type: ignore[call-arg]
    base = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
    for bucket in ("pub", "priv"):
        s3.create_bucket(Bucket=bucket)
        for key in ("job/master.m3u8", "job/360p/seg 1.m4s"):
            s3.put_object(Bucket=bucket, Key=key, Body=b"#EXTM3U")
    s3.put_bucket_policy(Bucket="pub", Policy=_public_read("pub"))
    anonymous = {
        "GET pub object": requests.get(f"{base}/pub/job/master.m3u8", timeout=5),
        "GET priv object": requests.get(f"{base}/priv/job/master.m3u8", timeout=5),
        "GET priv missing": requests.get(f"{base}/priv/job/nothing", timeout=5),
        "list pub": requests.get(f"{base}/pub?list-type=2", timeout=5),
        "list priv": requests.get(f"{base}/priv?list-type=2", timeout=5),
        "list buckets": requests.get(f"{base}/", timeout=5),
        "PUT pub": requests.put(f"{base}/pub/job/new.m3u8", data=b"x", timeout=5),
        "DELETE pub": requests.delete(f"{base}/pub/job/master.m3u8", timeout=5),
    }
    codes = {what: r.status_code for what, r in anonymous.items()}
    assert codes == {"GET pub object": 200} | {w: 403 for w in anonymous if w != "GET pub object"}
    assert "<Code>AccessDenied</Code>" in anonymous["GET priv object"].text
    assert requests.get(f"{base}/minio/health/live", timeout=5).status_code == 200

    # Presigned URLs (minio-py's SigV4, what the pipeline hands out; boto3's SigV2): good
    # ones pass, changed or expired ones do not.
    signer = Minio(f"127.0.0.1:{server.port}", access_key="k", secret_key="s",  # type: ignore[attr-defined]
                   secure=False, region="us-east-1")  # fmt: skip
    good = signer.presigned_get_object("priv", "job/360p/seg 1.m4s", datetime.timedelta(seconds=60))
    assert requests.get(good, timeout=5).content == b"#EXTM3U"
    forged = good.replace("X-Amz-Expires=60", "X-Amz-Expires=6000")
    assert requests.get(forged, timeout=5).status_code == 403
    head, _, sig = good.partition("X-Amz-Signature=")
    flipped = head + "X-Amz-Signature=" + ("0" if sig[0] != "0" else "1") + sig[1:]
    assert "SignatureDoesNotMatch" in requests.get(flipped, timeout=5).text
    other = good.replace("job/360p/seg%201.m4s", "job/master.m3u8")
    assert requests.get(other, timeout=5).status_code == 403, "a signature names its object"
    v2 = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "priv", "Key": "job/master.m3u8"}
    )
    assert requests.get(v2, timeout=5).status_code == 200
    assert requests.get(v2.replace("Expires=", "Expires=1"), timeout=5).status_code == 403
    stranger = Minio(f"127.0.0.1:{server.port}", access_key="k", secret_key="not-s",  # type: ignore[attr-defined]
                     secure=False, region="us-east-1")  # fmt: skip
    with pytest.raises(S3Error) as refused:
        stranger.stat_object("priv", "job/master.m3u8")
    assert refused.value.code in ("AccessDenied", "SignatureDoesNotMatch")
    short = signer.presigned_get_object("priv", "job/master.m3u8", datetime.timedelta(seconds=1))
    assert requests.get(short, timeout=5).status_code == 200
    time.sleep(2.1)
    late = requests.get(short, timeout=5)
    assert late.status_code == 403 and "Request has expired" in late.text
    log = (tmp_path / "s3.log").read_text()
    assert "refused GET /priv/job/master.m3u8" in log and sig not in log
