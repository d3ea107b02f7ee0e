"""Private outputs (vtp.privacy) on the real local stack: a private job's files are refused to
anonymous readers by the S3 server itself, and play only through ws-relay's signed play URLs
(vtp_relay.play), which fail once expired, once changed, and outside their own job; a public
job of the same source still plays from its plain URLs. Players are the browser's (see
tests/test_browser.py); here the route's answers are read one by one."""

from __future__ import annotations

import http.client as http_client
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
from minio import Minio
from pydantic import SecretStr

from localfaas.config import LocalConfig
from tests.api import http
from tests.clips import make_clip
from tests.manual import submit
from tests.test_pipeline import MANUAL_BUCKET, ffprobe, wait_for_job
from tests.test_pipeline import s3 as s3  # the same fixture: a client with MANUAL_BUCKET made
from vtp.media.encode import parse_media_playlist

pytestmark = pytest.mark.slow

PRIVATE_BUCKET = "outputs-private"


def _status(gateway: str, job_id: str) -> dict[str, Any]:
    r = http.get(f"{gateway}/function/status", params={"id": job_id}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def jobs(gateway: str, s3: Minio, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One source, two jobs: private (HLS, DASH, an MP4) and public (HLS), as status shows
    them once they have succeeded."""
    clip = make_clip(tmp_path_factory.mktemp("private") / "course.mp4", size="640x360",
                     seconds=4, rate=25)  # fmt: skip
    key = f"private/{time.time_ns()}/lesson 1.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    private = submit(gateway, MANUAL_BUCKET, key, ["360p"], formats=["hls", "dash", "mp4"],
                     private=True)  # fmt: skip
    public = submit(gateway, MANUAL_BUCKET, key, ["360p"])
    assert private != public, "asking for a private job is never answered with a public one"
    views = {}
    for name, job_id in (("private", private), ("public", public)):
        deadline = time.monotonic() + 180
        while (view := _status(gateway, job_id))["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, view
            time.sleep(0.5)
        assert view["state"] == "succeeded", view["error"]
        views[name] = view
    return views


def _object_urls(stack_env: dict[str, str], bucket: str, job_id: str, path: str) -> str:
    return f"{stack_env['VTP_S3_ENDPOINT']}/{bucket}/{job_id}/{path}"


def test_private_outputs_are_refused_to_anonymous_readers(
    jobs: dict[str, Any], s3: Minio, stack_env: dict[str, str], gateway: str
) -> None:
    job = jobs["private"]
    assert job["private"] is True and job["options_key"].endswith(";private")
    assert job["options"]["private"] is True
    # Its files are in the private bucket, none in the public one.
    stored = [o.object_name for o in s3.list_objects(PRIVATE_BUCKET, f"{job['id']}/", True)]
    assert f"{job['id']}/master.m3u8" in stored and f"{job['id']}/manifest.mpd" in stored
    assert not list(s3.list_objects(stack_env["VTP_OUTPUTS_BUCKET"], f"{job['id']}/", True))
    # The S3 server itself refuses them to anyone without a signature: each file, a file
    # that does not exist, and the listing that would name the jobs.
    for path in ("master.m3u8", "manifest.mpd", "poster.jpg", "nothing-here.m3u8"):
        r = http.get(_object_urls(stack_env, PRIVATE_BUCKET, job["id"], path), timeout=10)
        assert r.status_code == 403 and "AccessDenied" in r.text, (path, r.status_code)
    listing = http.get(f"{stack_env['VTP_S3_ENDPOINT']}/{PRIVATE_BUCKET}?list-type=2",
                           timeout=10)  # fmt: skip
    assert listing.status_code == 403
    # Status hands out play URLs instead, for as long as the deployment says (4 h).
    play = f"{gateway}/function/ws-relay/play/"
    urls = [job["urls"][k] for k in ("master", "dash", "poster", "storyboard")]
    urls += [u for r in job["renditions"] for u in r["urls"].values()]
    assert urls and all(u.startswith(play) and f"/{job['id']}/" in u for u in urls), urls
    left = datetime.fromisoformat(job["urls_expire_at"]).timestamp() - time.time()
    assert 4 * 3600 - 60 < left <= 4 * 3600, left


def test_a_public_job_still_plays_from_plain_urls(
    jobs: dict[str, Any], stack_env: dict[str, str]
) -> None:
    job = jobs["public"]
    assert job["private"] is False and job["urls_expire_at"] is None
    master = job["urls"]["master"]
    assert master == _object_urls(stack_env, stack_env["VTP_OUTPUTS_BUCKET"], job["id"],
                                  "master.m3u8")  # fmt: skip
    r = http.get(master, timeout=10)
    assert r.status_code == 200 and r.text.startswith("#EXTM3U")
    playlist = urljoin(master, next(x for x in r.text.splitlines() if x.endswith(".m3u8")))
    init, segments = parse_media_playlist(http.get(playlist, timeout=10).text)
    assert http.get(urljoin(playlist, segments[0][0]), timeout=10).status_code == 200
    assert init is not None


def _expiry_of(presigned: str) -> float:
    q = {k: v[0] for k, v in parse_qs(urlsplit(presigned).query).items()}
    signed = datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed.timestamp() + int(q["X-Amz-Expires"])


def test_playlists_are_served_and_media_redirected(
    jobs: dict[str, Any], stack_env: dict[str, str]
) -> None:
    """Playlists, the manifest and WebVTT come from the route, under its own URL, uncached;
    everything else is a 302 to a presigned GET that dies no later than the token."""
    job = jobs["private"]
    token_dies = datetime.fromisoformat(job["urls_expire_at"]).timestamp()
    master_url = job["urls"]["master"]
    master = http.get(master_url, timeout=10, allow_redirects=False)
    assert master.status_code == 200 and master.text.startswith("#EXTM3U")
    assert master.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    assert master.headers["Cache-Control"] == "private, no-store"
    # Relative URLs resolve under the route, token and all, as a player resolves them.
    playlist_url = urljoin(master_url, next(x for x in master.text.splitlines()
                                            if x.endswith(".m3u8")))  # fmt: skip
    assert playlist_url.startswith(master_url.rsplit("/", 1)[0] + "/")
    playlist = http.get(playlist_url, timeout=10, allow_redirects=False)
    assert playlist.status_code == 200, playlist.text
    init, segments = parse_media_playlist(playlist.text)
    assert init is not None and segments
    for media in (urljoin(playlist_url, init), urljoin(playlist_url, segments[0][0]),
                  job["urls"]["poster"], job["renditions"][0]["urls"]["mp4"]):  # fmt: skip
        hop = http.get(media, timeout=10, allow_redirects=False)
        assert hop.status_code == 302, (media, hop.status_code, hop.text)
        assert hop.headers["Cache-Control"] == "private, no-store"
        target = hop.headers["Location"]
        assert target.startswith(f"{stack_env['VTP_S3_ENDPOINT']}/{PRIVATE_BUCKET}/{job['id']}/")
        assert _expiry_of(target) <= token_dies
        got = http.get(target, timeout=10)
        assert got.status_code == 200 and got.content, media
    mpd = http.get(job["urls"]["dash"], timeout=10, allow_redirects=False)
    assert mpd.status_code == 200 and "<MPD" in mpd.text
    assert mpd.headers["Content-Type"].startswith("application/dash+xml")
    vtt = http.get(job["urls"]["storyboard"], timeout=10, allow_redirects=False)
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT")
    sheet = vtt.text.split("-->", 1)[1].split("\n", 1)[1].split("#", 1)[0].strip()
    assert http.get(urljoin(job["urls"]["storyboard"], sheet), timeout=10).content[:2] == (
        b"\xff\xd8"
    )
    # A player that is not a browser: ffprobe reads the ladder through the play URLs.
    info = ffprobe(master_url)
    assert any(s["codec_type"] == "video" and s["width"] == 640 for s in info["streams"]), info


def _raw_get(url: str) -> int:
    """GET without the client tidying the path (requests drops `..` segments)."""
    parts = urlsplit(url)
    conn = http_client.HTTPConnection(parts.netloc, timeout=10)
    try:
        conn.request("GET", parts.path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_changed_tokens_other_jobs_and_odd_paths_are_refused(jobs: dict[str, Any]) -> None:
    job, other = jobs["private"], jobs["public"]
    master = job["urls"]["master"]
    head, token, job_id, name = master.rsplit("/", 3)
    assert http.get(master, timeout=10).status_code == 200
    prefix, claims, sig = token.split(".")
    flip = {"A": "B"}.get(claims[5], "A")
    for changed in (f"{prefix}.{claims[:5]}{flip}{claims[6:]}.{sig}",
                    f"{prefix}.{claims}.{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}",
                    f"{prefix}.{claims}", "not-a-token"):  # fmt: skip
        r = http.get(f"{head}/{changed}/{job_id}/{name}", timeout=10)
        assert r.status_code == 401, (changed, r.status_code, r.text)
        assert changed not in r.text
    # The token opens its own job's files only: not another job's, nor a way out.
    for path in (f"{other['id']}/master.m3u8", f"{job_id}/../{other['id']}/master.m3u8",
                 f"{job_id}/%2e%2e/{other['id']}/master.m3u8", "master.m3u8",
                 f"/{job_id}/master.m3u8", f"{job_id}/.hidden", f"{job_id}/"):  # fmt: skip
        assert _raw_get(f"{head}/{token}/{path}") == 403, path


def test_play_urls_stop_working_when_they_expire(
    jobs: dict[str, Any], stack_env: dict[str, str], stack: LocalConfig, gateway: str
) -> None:
    """Status minting with a short TTL (the same views, settings of a few seconds): the play
    URLs work, then all of them fail, and so does the presigned URL a redirect gave."""
    from tests.inprocess import build_pipeline
    from vtp.pipeline import Pipeline

    core = build_pipeline(stack_env)
    try:
        settings = core.settings.model_copy(update={
            "link_secret": SecretStr(stack.credentials["link_secret"]),
            "play_url_ttl_seconds": 3, "public_gateway_url": gateway,
        })  # fmt: skip
        short = Pipeline(settings, core.store, core.storage, core.bus, core.invoker)
        view = short.describe_job(short.find_job(jobs["private"]["id"]))
    finally:
        core.store.close()
    master, poster = view["urls"]["master"], view["urls"]["poster"]
    dies = view["urls_expire_at"].timestamp()  # a datetime in the view; status sends ISO 8601
    assert 0 < dies - time.time() <= 3
    assert http.get(master, timeout=10).status_code == 200
    hop = http.get(poster, timeout=10, allow_redirects=False)
    assert hop.status_code == 302
    presigned = hop.headers["Location"]
    assert _expiry_of(presigned) <= dies
    assert http.get(presigned, timeout=10).status_code == 200
    time.sleep(max(0.0, dies - time.time()) + 0.5)
    for url in (master, poster, view["renditions"][0]["urls"]["playlist"]):
        late = http.get(url, timeout=10, allow_redirects=False)
        assert late.status_code == 401 and "expired" in late.json()["error"], url
    assert http.get(presigned, timeout=10).status_code == 403


def test_an_upload_asks_for_privacy_in_its_metadata(
    gateway: str, s3: Minio, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """x-amz-meta-vtp-private on an upload (the bucket event's way in)."""
    clip = make_clip(tmp_path / "meta.mp4", size="640x360", seconds=2)
    key = f"private-meta/{time.time_ns()}.mp4"
    s3.fput_object("uploads", key, str(clip), metadata={"x-amz-meta-vtp-private": "true"})
    job = wait_for_job(gateway, "uploads", key)
    assert job["state"] == "succeeded" and job["private"] is True, job
    assert job["options"]["origin"] == "metadata"
    assert http.get(job["urls"]["master"], timeout=10).status_code == 200
    r = http.get(_object_urls(stack_env, PRIVATE_BUCKET, job["id"], "master.m3u8"), timeout=10)
    assert r.status_code == 403


def test_delete_and_retention_follow_a_private_job_to_its_bucket(
    gateway: str, s3: Minio, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """The operator's delete (split's route) and the retention sweep (in-process, with
    that setting, on the stack's services) remove a private job's files from the private
    bucket."""
    from tests.inprocess import build_pipeline
    from vtp.pipeline import Pipeline

    clip = make_clip(tmp_path / "gone.mp4", size="640x360", seconds=1, rate=25)
    ids = {}
    for name in ("deleted", "expired"):
        key = f"private-ops/{time.time_ns()}-{name}.mp4"
        s3.fput_object(MANUAL_BUCKET, key, str(clip))
        submit(gateway, MANUAL_BUCKET, key, ["360p"], private=True)
        job = wait_for_job(gateway, MANUAL_BUCKET, key)
        assert job["state"] == "succeeded" and job["private"] is True
        ids[name] = job["id"]

    def stored(job_id: str) -> list[str]:
        return [str(o.object_name) for o in s3.list_objects(PRIVATE_BUCKET, f"{job_id}/", True)]

    assert stored(ids["deleted"]) and stored(ids["expired"])
    r = http.post(f"{gateway}/function/split/jobs/delete", params={"job": ids["deleted"]},
                      timeout=30)  # fmt: skip
    assert r.status_code == 200 and r.json()["outputs_removed"] > 0, r.text
    assert stored(ids["deleted"]) == []

    base = build_pipeline(stack_env)
    try:
        base.store._run(
            lambda cur: cur.execute(
                "UPDATE jobs SET finished_at = now() - interval '40 days' WHERE id = %s",
                (ids["expired"],),
            )
        )
        settings = base.settings.model_copy(
            update={"retention_days": 30.0, "retention_every_seconds": 1.0}
        )
        assert (
            Pipeline(settings, base.store, base.storage, base.bus, base.invoker).sweep()["expired"]
            >= 1
        )
    finally:
        base.store.close()
    assert stored(ids["expired"]) == []
    view = _status(gateway, ids["expired"])
    assert view["outputs_deleted_at"] is not None and view["urls"] == {}


def test_play_urls_need_no_credential(
    jobs: dict[str, Any], stack: LocalConfig, stack_env: dict[str, str]
) -> None:
    """Behind credentials (ws-relay's gate) the play route stays open: its token is its key,
    and players cannot send a credential. The job API next to it stays closed."""
    from tests.inprocess import serve_relay

    static = Path(__file__).resolve().parent.parent / "functions" / "ws-relay" / "static"
    from vtp.settings import Settings
    from vtp_relay import RelayOptions, create_app

    settings = Settings(
        redis_url=SecretStr(stack.redis_url),
        postgres_dsn=SecretStr(stack.postgres_dsn),
        s3_endpoint=stack.s3_endpoint,
        s3_access_key=SecretStr(stack_env["VTP_S3_ACCESS_KEY"]),
        s3_secret_key=SecretStr(stack_env["VTP_S3_SECRET_KEY"]),
        read_token=SecretStr("a-read-token-the-player-does-not-have"),
        link_secret=SecretStr(stack.credentials["link_secret"]),
    )
    app = create_app(settings, static_dir=static, options=RelayOptions())
    play_path = "/play/" + jobs["private"]["urls"]["master"].split("/play/", 1)[1]
    with serve_relay(app) as address:
        got = http.get(f"http://{address}{play_path}", timeout=10)
        assert got.status_code == 200 and got.text.startswith("#EXTM3U")
        closed = http.get(f"http://{address}/api/jobs/{jobs['private']['id']}", timeout=10)
        assert closed.status_code == 401


def test_a_private_jobs_callback_carries_no_urls(
    jobs: dict[str, Any], stack_env: dict[str, str]
) -> None:
    """Its receiver keeps what it is sent, long after any play URL's TTL: it is told the job
    is private and asks status for play URLs when a viewer plays."""
    from tests.inprocess import build_pipeline

    core = build_pipeline(stack_env)
    try:
        private = core.fanin.callback_body(core.find_job(jobs["private"]["id"]))
        public = core.fanin.callback_body(core.find_job(jobs["public"]["id"]))
    finally:
        core.store.close()
    assert private.private is True and public.private is False
    assert (private.master_url, private.poster_url, private.dash_url, private.storyboard_url) == (
        None, None, None, None,
    )  # fmt: skip
    assert all(r["urls"] == {} for r in private.renditions)
    assert public.master_url == jobs["public"]["urls"]["master"]
