"""The play route's own rules (vtp_relay.play), without a stack: which paths a token opens,
and that its place in a log line is hidden. The route on the stack: tests/test_private.py."""

from __future__ import annotations

import logging

import pytest

from vtp.errors import Forbidden
from vtp.links import Claims
from vtp_relay.play import hide_tokens, hide_tokens_in_access_log, object_key

JOB = "2b019562-4103-4ee0-b344-4fbaf4029f8b"
OTHER = "7dc32193-fb93-489c-a509-f4a3bbd0c85e"
CLAIMS = Claims.model_validate(
    {"j": JOB, "s": ["view"], "n": "play", "e": 2_000_000_000, "k": "play"}
)


@pytest.mark.parametrize(
    "path",
    ["master.m3u8", "manifest.mpd", "poster.jpg", "360p/attempt-2/seg_00001.m4s",
     "720p-hevc/chunk-3/attempt-1-backup/init.mp4", "storyboard/sheet-001.jpg"],
)  # fmt: skip
def test_a_token_opens_its_own_jobs_files(path: str) -> None:
    assert object_key(CLAIMS, f"{JOB}/{path}") == f"{JOB}/{path}"


@pytest.mark.parametrize(
    "path",
    [
        f"{OTHER}/master.m3u8",  # another job's
        f"{JOB}/../{OTHER}/master.m3u8",  # out of its folder
        f"{JOB}/360p/../../{OTHER}/master.m3u8",
        f"{JOB}/./master.m3u8",
        f"/{JOB}/master.m3u8",  # absolute
        "master.m3u8",  # no job
        f"{JOB}",
        f"{JOB}/",
        f"{JOB}//master.m3u8",
        f"{JOB}/.env",
        f"{JOB}/a\\b.m3u8",
        f"{JOB}/master.m3u8?x=1",
        f"{JOB}/{'a/' * 9}seg.m4s",  # deeper than any layout
        f"{JOB.upper()}/master.m3u8",  # not the job id as signed
    ],
)
def test_anything_else_is_forbidden(path: str) -> None:
    with pytest.raises(Forbidden):
        object_key(CLAIMS, path)


def test_tokens_never_reach_the_access_log(caplog: pytest.LogCaptureFixture) -> None:
    line = f'"GET /play/vtp1.eyJqIjoi.c2lnbmF0dXJl/{JOB}/master.m3u8 HTTP/1.1"'
    assert hide_tokens(line) == f'"GET /play/<token>/{JOB}/master.m3u8 HTTP/1.1"'
    hide_tokens_in_access_log()
    hide_tokens_in_access_log()  # once per process, however often the app is made
    access = logging.getLogger("uvicorn.access")
    assert len(access.filters) == 1
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET",
                    f"/play/vtp1.abc.def/{JOB}/x.m4s", "1.1", 302)  # fmt: skip
    assert "vtp1.abc.def" not in caplog.text and "/play/<token>/" in caplog.text
