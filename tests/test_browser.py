"""The progress page in a real browser: the OS's Chromium driven by Playwright (never a
downloaded browser), against the session's stack.

Directly on ws-relay's port the page uses the WebSocket; through the gateway
(/function/ws-relay/), which cannot carry WebSockets, it must fall back to Server-Sent Events
by itself. Uploads go through the page's own form (a POST policy to the bucket, or parts of a
multipart upload), so the bucket notification starts the job exactly as for any producer.
Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api import http
from tests.clips import make_clip
from tests.test_pipeline import s3 as s3  # the same fixture: a client with MANUAL_BUCKET made
from vtp import access

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
STATIC = Path(__file__).resolve().parent.parent / "functions" / "ws-relay" / "static"
H264_TYPE = 'video/mp4; codecs="avc1.64001f"'

# Records every change of a progress bar or a row's state, as the page renders it: the
# assertions are about what a person sees, not about the page's internal model.
RECORDER = """
window.__bars = [];
window.__upload = [];
window.__uploadKinds = [];
{
  const realFetch = window.fetch;
  window.fetch = async (...args) => {
    const res = await realFetch(...args);
    if (String(args[0]).endsWith('/api/uploads') && res.ok) {
      res.clone().json().then((t) => window.__uploadKinds.push(t.kind));
    }
    return res;
  };
}
document.addEventListener('DOMContentLoaded', () => {
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.target.id === 'upload-bar' && r.attributeName === 'aria-valuenow') {
        window.__upload.push(Number(r.target.getAttribute('aria-valuenow')));
        continue;
      }
      const row = r.target.closest && r.target.closest('[data-rendition]');
      const job = r.target.closest && r.target.closest('[data-job-id], #detail-view');
      if (!row) continue;
      const bar = row.querySelector('.bar');
      window.__bars.push({
        rendition: row.dataset.rendition,
        job: job && job.dataset.jobId ? job.dataset.jobId : location.hash.split('/')[2] || null,
        percent: Number(bar.getAttribute('aria-valuenow') || 0),
        state: row.dataset.state || '',
        t: performance.now(),
      });
    }
  }).observe(document.body, {subtree: true, attributes: true,
                             attributeFilter: ['aria-valuenow', 'data-state']});
});
"""


# --- fixtures --------------------------------------------------------------------------------
def need_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = (
        f"{CHROMIUM} is missing: install the OS package (`apt-get install -y chromium`, or "
        "scripts/setup.sh with VTP_WITH_BROWSER=1)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(
    browser: Any, artifacts: Path, request: pytest.FixtureRequest, relay_url: str
) -> Iterator[Any]:
    """A fresh page, signed in as the stack's operator would sign in (the relay's session
    cookie); its last state is kept as <test>-end.png whatever the outcome, and an uncaught
    script error fails the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    signed = http.post(f"{relay_url}api/session", timeout=10)
    assert signed.status_code == 200, signed.text
    cookie = signed.cookies[access.SESSION_COOKIE]
    context.add_cookies(
        [{"name": access.SESSION_COOKIE, "value": cookie, "domain": "127.0.0.1", "path": "/"}]
    )
    pg = context.new_page()
    pg.add_init_script(RECORDER)
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    yield pg
    pg.wait_for_timeout(400)  # let the bars' width transition settle before the picture
    # The whole page, down to a bound: the job list of a stack that has run most of the
    # suite is tens of thousands of pixels tall, and encoding that took Chromium 12 s.
    tall = pg.evaluate("document.documentElement.scrollHeight")
    pg.screenshot(
        path=str(artifacts / f"{request.node.name}-end.png"),
        full_page=True,
        clip={"x": 0, "y": 0, "width": 1200, "height": min(tall, 3000)},
    )
    context.close()
    assert not problems, problems


def conn_mode(pg: Any) -> str:
    return str(pg.evaluate("document.getElementById('conn').dataset.mode"))


def upload_through_form(pg: Any, clip: Path, *, moving: bool = False) -> str:
    """Upload with the page's form; returns the job id the page then follows. `moving`: the
    upload bar must also have been seen part-way (slow the upload down for that)."""
    pg.set_input_files("#upload-file", str(clip))
    pg.click("#upload-button")
    pg.wait_for_function("location.hash.startsWith('#/jobs/')", timeout=90_000)
    shown = pg.evaluate("window.__upload")
    assert shown and shown[-1] == 100, f"upload progress shown: {shown}"
    if moving:
        assert sum(1 for pct in shown if 0 < pct < 100) >= 3, f"upload progress shown: {shown}"
    assert "following its progress" in pg.text_content("#upload-status")
    return str(pg.evaluate("decodeURIComponent(location.hash.split('/')[2])"))


def throttle_uploads(pg: Any, bytes_per_s: int) -> None:
    """Chromium's own network emulation: what the page sends goes at `bytes_per_s`, so a
    clip takes seconds to upload and its progress can be watched."""
    cdp = pg.context.new_cdp_session(pg)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": bytes_per_s},
    )


def wait_finished(pg: Any, timeout_s: float = 180) -> str:
    pg.wait_for_function(
        "['succeeded', 'failed'].includes(document.getElementById('detail-view').dataset.state)",
        timeout=timeout_s * 1000,
    )
    return str(pg.evaluate("document.getElementById('detail-view').dataset.state"))


def bar_history(pg: Any, job_id: str) -> dict[str, list[dict[str, Any]]]:
    samples = pg.evaluate("window.__bars")
    out: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        if s["job"] in (job_id, None):
            out.setdefault(s["rendition"], []).append(s)
    return out


def detail_rows(pg: Any) -> list[tuple[str, str, float]]:
    return [
        (r[0], r[1], float(r[2]))
        for r in pg.evaluate(
            "[...document.querySelectorAll('#detail-renditions .rend')].map(r => "
            "[r.dataset.rendition, r.dataset.state, r.querySelector('.bar')"
            ".getAttribute('aria-valuenow')])"
        )
    ]


def assert_bars_moved(history: dict[str, list[dict[str, Any]]], names: list[str]) -> None:
    """Each bar only moves forward and ends full and succeeded; and some bar was seen between
    0 and 100 (a short clip may encode a rung between two progress events)."""
    assert sorted(history) == sorted(names), history.keys()
    intermediate = 0
    for name, samples in history.items():
        running = [s["percent"] for s in samples if s["state"] == "running"]
        assert running == sorted(running), f"{name} went backwards: {running}"
        intermediate += sum(1 for p in running if 0 < p < 100)
        assert samples[-1]["percent"] == 100 and samples[-1]["state"] == "succeeded", samples
    assert intermediate >= 1, f"no bar was ever seen part-way: {history}"


# --- the page's own logic, without a server -----------------------------------------------------
def test_page_model_orders_dedupes_and_keeps_endings(browser: Any, tmp_path: Path) -> None:
    """The JobStore as served (file://, so the page talks to no server): replays after a
    snapshot, duplicates and late keep-alives never move a bar backwards."""
    site = tmp_path / "site"
    shutil.copytree(STATIC, site / "static")
    shutil.copy(STATIC / "index.html", site / "index.html")
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto((site / "index.html").as_uri())
    pg.wait_for_function("window.vtp && window.vtp.store")
    result = pg.evaluate(
        """() => {
      const J = 'job-1';
      const s = new window.vtp.JobStore();
      const ev = (id, rendition, state, percent, extra) =>
        ({id, job_id: J, rendition, state, percent, ...(extra || {})});
      s.applySnapshot({[J]: {
        _job: ev('5-0', null, 'running', 0),
        '720p': ev('7-0', '720p', 'running', 40),
        '360p': ev('6-0', '360p', 'running', 80, {rendition: null}),
      }});
      const replay = s.applyEvent(ev('4-0', '720p', 'running', 10));
      const dup = s.applyEvent(ev('7-0', '720p', 'running', 40));
      s.applyEvent(ev('8-0', '360p', 'succeeded', 99.9));
      const late = s.applyEvent(ev('9-0', '360p', 'running', 99.9));
      s.applyEvent(ev('10-0', '720p', 'retrying', 0, {error: 'killed', attempt: 1}));
      // A redrive: a failed job, its dead chunk and rendition queued again ("reopened").
      const K = 'job-2';
      const ek = (id, rendition, state, extra) =>
        ({...ev(id, rendition, state, 0, extra), job_id: K});
      s.applyEvent(ek('11-0', '720p', 'running', {chunk: 1}));
      s.applyEvent(ek('11-1', '720p', 'dead', {chunk: 1}));
      s.applyEvent(ek('11-2', '720p', 'dead', {error: 'oom'}));
      s.applyEvent(ek('11-3', null, 'failed', {error: 'rendition 720p dead'}));
      const stale = s.applyEvent(ek('12-0', '720p', 'running'));
      s.applyEvent(ek('13-0', null, 'queued', {reopened: true}));
      s.applyEvent(ek('13-1', '720p', 'queued', {reopened: true}));
      s.applyEvent(ek('13-2', '720p', 'queued', {chunk: 1, reopened: true}));
      s.applyEvent(ek('14-0', '720p', 'running', {chunk: 1}));
      const k = s.jobs.get(K);
      const reopened = {stale: stale.applied, job: k.state, r720: k.renditions.get('720p').state,
                        chunk: k.renditions.get('720p').chunks[1].state};
      const job = s.jobs.get(J);
      return {
        order: [...job.renditions.keys()],
        r360: job.renditions.get('360p'), r720: job.renditions.get('720p'),
        replay: replay.applied, dup: dup.applied, late: late.applied, reopened,
        last: s.lastEventId, jobPct: s.jobPercent(job),
        cmp: [window.vtp.compareIds('10-0', '9-5'), window.vtp.compareIds('9-5', '9-10'),
              window.vtp.compareIds(null, '1-0')],
        fmt: [window.vtp.fmtEta(75), window.vtp.fmtEta(3723), window.vtp.fmtPercent(42.46),
              window.vtp.fmtSpeed(1.234), window.vtp.fmtFps(29.97)],
      };
    }"""
    )
    context.close()
    assert not errors, errors
    assert result["order"] == ["360p", "720p"], "ladder order, whatever the arrival order"
    assert (result["replay"], result["dup"], result["late"]) == (False, False, False)
    assert (result["r360"]["state"], result["r360"]["percent"]) == ("succeeded", 100)
    assert result["r720"]["state"] == "retrying" and result["r720"]["percent"] == 40, (
        "a failure without a percent keeps how far the attempt got"
    )
    assert result["r720"]["error"] == "killed"
    assert result["reopened"] == {
        "stale": False, "job": "queued", "r720": "queued", "chunk": "running",
    }  # fmt: skip
    assert result["last"] == "14-0"
    assert result["jobPct"] == 70
    assert result["cmp"] == [1, -1, -1]
    assert result["fmt"] == ["1:15", "1:02:03", "42.5%", "1.23\u00d7", "30 fps"]


# --- against the stack ----------------------------------------------------------------------------
def test_upload_progress_and_playback_over_websocket(
    page: Any, relay_url: str, artifacts: Path, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "browser clip.mp4", size="1280x720", seconds=3)
    page.goto(relay_url)
    page.wait_for_function("document.getElementById('conn').dataset.mode === 'websocket'")
    assert "live · WebSocket" in page.text_content("#conn")

    throttle_uploads(page, 1024**2)  # 2.8 MB: about three seconds of a moving upload bar
    job_id = upload_through_form(page, clip, moving=True)
    # The stack's bound is 20 GiB, so one form POST carried the whole file, signed.
    assert page.evaluate("window.__uploadKinds") == ["post"]
    page.wait_for_selector("#detail-renditions .rend", timeout=30_000)
    page.screenshot(path=str(artifacts / "browser-ws-progress.png"), full_page=True)
    assert wait_finished(page) == "succeeded", page.text_content("#detail-view")
    assert conn_mode(page) == "websocket", "the WebSocket stayed up the whole time"

    rows = detail_rows(page)
    assert rows == [("360p", "succeeded", 100.0), ("720p", "succeeded", 100.0),
                    ("audio", "succeeded", 100.0)]  # fmt: skip
    assert_bars_moved(bar_history(page, job_id), ["360p", "720p", "audio"])
    assert "3 of 3 done" in page.text_content("#detail-facts")
    # What each rendition is, after its name: a picture's size, a sound track's channels.
    dims = page.eval_on_selector_all(
        "#detail-renditions .rend .dims", "ds => ds.map(d => d.textContent)"
    )
    assert dims == [" 640\u00d7360", " 1280\u00d7720", " stereo"], dims
    shown = page.text_content("#detail-view")
    assert not re.search(r"\b(null|undefined|NaN|None)\b", shown), shown
    # Each rendition's measured quality and the factor it was encoded at (a 3 s clip is
    # too short to sample: CRF 23), with the target in its tooltip.
    quality = page.eval_on_selector_all(
        "#detail-renditions .rend .quality", "qs => qs.map(q => [q.textContent, q.title])"
    )
    assert len(quality) == 3 and quality[2][0] == "Audio · default", quality  # the sound
    for text, title in quality[:2]:
        assert re.fullmatch(r"VMAF \d{2,3}\.\d · CRF 23", text), text
        assert re.search(r"target (90|94)\b", title) and "worst segment" in title, title
        assert re.search(r"SSIM 0\.9\d{3}", title), title
    links = page.eval_on_selector_all("#outputs a", "as => as.map(a => a.textContent)")
    assert links[:2] == ["master playlist (HLS)", "poster"]

    # The job list shows the same job, finished; and back to its view.
    page.click("a.back")
    page.wait_for_selector(f'#jobs > li[data-job-id="{job_id}"][data-state="succeeded"]')
    page.click(f'#jobs > li[data-job-id="{job_id}"] a.job-link')

    # The player: hls.js (vendored) loads the master playlist with both renditions.
    video = page.locator("#player")
    page.wait_for_selector("#player[data-manifest-parsed=true]", timeout=30_000)
    assert video.get_attribute("data-engine") == "hls.js"
    assert video.get_attribute("data-levels") == "2"
    page.screenshot(path=str(artifacts / "browser-ws-done.png"), full_page=True)
    # A Chromium without H.264 cannot check playback: a missing capability is a failure
    # (Debian's chromium, which scripts/setup.sh installs, decodes it).
    assert page.evaluate(f"MediaSource.isTypeSupported({H264_TYPE!r})"), (
        "this Chromium build has no H.264 decoder (MediaSource rejects avc1): install Debian's "
        "chromium package (scripts/setup.sh with VTP_WITH_BROWSER=1)"
    )
    assert page.evaluate("document.getElementById('player').play().then(() => true)")
    page.wait_for_function("document.getElementById('player').currentTime > 0.5", timeout=30_000)
    width = page.evaluate("document.getElementById('player').videoWidth")
    assert width in (640, 1280), "a rendition of the ladder is playing"
    page.screenshot(path=str(artifacts / "browser-player.png"), full_page=True)


def test_upload_in_parts_survives_a_dropped_part(
    page: Any, stack: Any, stack_env: dict[str, str], artifacts: Path, tmp_path: Path
) -> None:
    """A file over the relay's threshold goes up in parts. The first try of part 1 loses its
    connection (Chromium drops it); the page sends that part again, alone, completes the
    upload through the relay and follows the job the bucket notification made."""
    from tests.inprocess import serve_relay
    from tests.test_uploads import STATIC as RELAY_STATIC
    from tests.test_uploads import stack_settings
    from vtp_relay import RelayOptions, create_app

    clip = make_clip(tmp_path / "parts.mp4", size="1280x720", seconds=3, extra=["-qp", "0"])
    size = clip.stat().st_size
    assert 5 * 1024**2 < size <= 10 * 1024**2, "two parts of 5 MiB: the test needs 5..10 MiB"
    settings = stack_settings(
        stack,
        stack_env,
        upload_max_bytes=64 * 1024**2,
        upload_multipart_threshold_bytes=1024**2,
        upload_part_bytes=5 * 1024**2,
    )
    app = create_app(settings, static_dir=RELAY_STATIC, options=RelayOptions())
    tries: list[str] = []

    def drop_first_try(route: Any) -> None:
        tries.append(route.request.url)
        if len(tries) == 1:
            route.abort("connectionreset")
        else:
            route.continue_()

    # A retry over a second later: a presigned URL is signed to the second, so one asked for
    # within the same second as the first would be the same URL, fresh or not.
    page.add_init_script("window.VTP_PAGE_TUNING = {uploadRetryMs: 1100}")
    page.route(re.compile(r".*/uploads/web/.*[?&]partNumber=1(&|$).*"), drop_first_try)
    with serve_relay(app) as address:
        page.goto(f"http://{address}/")
        page.wait_for_function("document.getElementById('conn').dataset.mode === 'websocket'")
        throttle_uploads(page, 4 * 1024**2)
        job_id = upload_through_form(page, clip, moving=True)
        assert page.evaluate("window.__uploadKinds") == ["multipart"]
        assert len(tries) == 2 and tries[0] != tries[1], "part 1 sent again, to a fresh URL"
        page.wait_for_selector("#detail-renditions .rend", timeout=30_000)
        page.screenshot(path=str(artifacts / "browser-upload-in-parts.png"), full_page=True)
        view = page.evaluate(f"fetch('api/jobs/{job_id}').then(r => r.json())")
        assert view["source"]["size"] == size, view["source"]


def test_gateway_route_falls_back_to_sse(
    page: Any, gateway: str, artifacts: Path, tmp_path: Path
) -> None:
    """Through the gateway the WebSocket cannot open; the page switches to SSE by itself and
    still shows live progress (the form's API calls go through the gateway too)."""
    clip = make_clip(tmp_path / "via-gateway.mp4", size="1280x720", seconds=2)
    page.goto(f"{gateway}/function/ws-relay")  # no trailing slash: the page adds it
    page.wait_for_function("document.getElementById('conn').dataset.mode === 'sse'", timeout=30_000)
    assert page.url.endswith("/function/ws-relay/"), page.url
    log = page.evaluate("window.vtp.live.log.map(x => x.what)")
    assert log[0] == "websocket-connecting" and "sse-open" in log, log
    assert any(w.startswith("websocket-failed") or "abnormal" in w for w in log), log
    assert "Server-Sent Events" in page.text_content("#conn")

    job_id = upload_through_form(page, clip)
    started = time.monotonic()
    page.wait_for_selector("#detail-renditions .rend", timeout=30_000)
    assert wait_finished(page) == "succeeded", page.text_content("#detail-view")
    assert conn_mode(page) == "sse", "progress came over SSE, not by polling"
    assert_bars_moved(bar_history(page, job_id), ["360p", "720p", "audio"])
    assert time.monotonic() - started < 180
    page.screenshot(path=str(artifacts / "browser-gateway-sse.png"), full_page=True)

    # Both ways in agree on the list. The list is rendered again on the next frame after
    # going back: wait for the row to show the job's end, as the WebSocket test does (reading
    # the row at once could find the frame before).
    page.click("a.back")
    page.wait_for_selector(
        f'#jobs > li[data-job-id="{job_id}"][data-state="succeeded"]', timeout=10_000
    )


@pytest.mark.slow
def test_page_through_a_gateway_that_buffers_streams(
    page: Any, buffered_gateway: str, artifacts: Path, tmp_path: Path
) -> None:
    """Through a CE gateway 0.25.4 there is no WebSocket and the SSE stream is buffered for
    minutes. The page notices the silent stream, says it is polling, and a job uploaded
    meanwhile still shows up with live progress."""
    clip = make_clip(tmp_path / "buffered.mp4", size="1280x720", seconds=8)
    # The stall windows at 1.5 s rather than 5 s: the same logic, sooner.
    page.add_init_script("window.VTP_PAGE_TUNING = {stallMs: 1500, lagCheckMs: 1500}")
    page.goto(f"{buffered_gateway}/function/ws-relay/")
    page.wait_for_function(
        "document.getElementById('conn').dataset.mode === 'poll'", timeout=30_000
    )
    log = page.evaluate("window.vtp.live.log.map(x => x.what)")
    assert any(w.startswith("sse-stalled") for w in log), log
    assert "sse-open" not in log or log.index("sse-open") < log.index("poll-open"), log
    conn = page.text_content("#conn")
    assert "polling every second" in conn and "buffers" in conn, conn

    job_id = upload_through_form(page, clip)
    page.wait_for_selector("#detail-renditions .rend", timeout=30_000)
    assert wait_finished(page) == "succeeded", page.text_content("#detail-view")
    assert conn_mode(page) == "poll"
    assert_bars_moved(bar_history(page, job_id), ["360p", "720p", "audio"])
    page.screenshot(path=str(artifacts / "browser-buffered-gateway.png"), full_page=True)
    page.click("a.back")
    row = page.locator(f'#jobs > li[data-job-id="{job_id}"]')
    row.wait_for()
    assert row.get_attribute("data-state") == "succeeded"


def test_a_chunked_stream_plays_across_its_joins(
    page: Any, relay_url: str, stack_env: dict[str, str], artifacts: Path, tmp_path: Path
) -> None:
    """A 20 s source encoded as three chunks (joins at 8 s and 16 s) and its sound as an
    audio rendition: hls.js plays it through both joins at 4x without waiting for data once
    started, decodes the audio group, and the page draws the rendition's three chunks."""
    from tests.inprocess import build_pipeline, chunked_pipeline, quiet_bucket
    from vtp.webhook import SourceObject

    core = build_pipeline(stack_env)
    try:
        bucket = quiet_bucket(core)
        clip = make_clip(tmp_path / "joins.mp4", size="640x360", seconds=20, rate=25)
        key = f"browser/{time.time_ns()}-joins.mp4"
        core.storage.client.fput_object(bucket, key, str(clip))
        job = chunked_pipeline(core).submit(SourceObject(bucket=bucket, key=key)).job
        deadline = time.monotonic() + 120
        while not (job := core.store.get(job.id)).state.terminal:
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
    finally:
        core.store.close()
    assert job.state.value == "succeeded", job.error
    assert len(job.rendition("360p").tasks) == 3

    page.goto(f"{relay_url}#/jobs/{job.id}")
    page.wait_for_selector("#player[data-manifest-parsed=true]", timeout=30_000)
    assert page.evaluate(f"MediaSource.isTypeSupported({H264_TYPE!r})"), "no H.264 in Chromium"
    strip = page.locator('#detail-renditions .rend[data-rendition="360p"] .chunks .chunk')
    strip.first.wait_for(timeout=15_000)
    assert strip.evaluate_all("cs => cs.map(c => c.dataset.state)") == ["succeeded"] * 3
    started = page.evaluate(
        """() => {
          const v = document.getElementById('player');
          window.__waits = [];
          v.addEventListener('waiting', () => window.__waits.push(v.currentTime));
          v.muted = true;
          v.playbackRate = 4;
          return v.play().then(() => true);
        }"""
    )
    assert started
    page.wait_for_function(
        "(() => { const v = document.getElementById('player');"
        " return v.ended || v.currentTime > 18.5; })()",
        timeout=60_000,
    )
    page.screenshot(path=str(artifacts / "browser-chunked.png"), full_page=True)
    assert page.evaluate("window.__waits.filter(t => t > 0.5)") == [], "stalled at a join"
    assert page.evaluate("document.getElementById('player').dataset.error || null") is None
    assert page.evaluate("document.getElementById('player').webkitAudioDecodedByteCount") > 0


@pytest.mark.slow
def test_a_player_starts_on_the_early_master(
    page: Any, relay_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """360p is done long before 720p: the page's player starts on the master that lists
    360p alone (playable early, the row says so), plays it, and once the job has succeeded
    loads the final master with both renditions where playback was."""
    clip = make_clip(tmp_path / "early.mp4", size="1280x720", seconds=12)
    page.goto(relay_url)
    job_id = upload_through_form(page, clip)
    page.wait_for_selector("#player[data-early=true][data-manifest-parsed=true]",
                           timeout=150_000)  # fmt: skip
    state = page.evaluate("document.getElementById('detail-view').dataset.state")
    assert state in ("queued", "running"), "early means before the job ended"
    assert page.get_attribute("#player", "data-levels") == "1"
    ready = page.eval_on_selector_all(
        "#detail-renditions .rend[data-ready=true]", "rs => rs.map(r => r.dataset.rendition)"
    )
    assert ready == ["360p", "audio"], ready
    assert "Playable early: 360p ready so far" in page.text_content("#player-note")
    assert page.evaluate("document.getElementById('player').play().then(() => true)")
    page.wait_for_function("document.getElementById('player').currentTime > 0.5", timeout=30_000)
    assert page.evaluate("document.getElementById('player').videoWidth") == 640
    page.screenshot(path=str(artifacts / "browser-early-player.png"), full_page=True)

    assert wait_finished(page) == "succeeded", page.text_content("#detail-view")
    page.wait_for_selector("#player[data-early=false][data-manifest-parsed=true]",
                           timeout=30_000)  # fmt: skip
    assert page.get_attribute("#player", "data-levels") == "2"
    assert job_id


def test_dash_and_hls_play_the_same_job(
    page: Any, relay_url: str, gateway: str, s3: Any, artifacts: Path, tmp_path: Path
) -> None:
    """A job asked for with DASH: the page offers both; dash.js (vendored) plays the MPD
    over the segments hls.js plays, with its sound, and back to HLS."""
    from tests.manual import submit
    from tests.test_pipeline import MANUAL_BUCKET, wait_for_job

    clip = make_clip(tmp_path / "dash.mp4", size="640x360", seconds=4, rate=25)
    key = f"browser-dash/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    job_id = submit(gateway, MANUAL_BUCKET, key, ["360p"], formats=["hls", "dash"])
    assert wait_for_job(gateway, MANUAL_BUCKET, key)["state"] == "succeeded"
    page.goto(f"{relay_url}#/jobs/{job_id}")
    page.wait_for_selector("#player[data-engine='hls.js'][data-manifest-parsed=true]",
                           timeout=30_000)  # fmt: skip
    links = page.eval_on_selector_all("#outputs a", "as => as.map(a => a.textContent)")
    assert "manifest (DASH)" in links
    page.click("#player-formats button[data-format=dash]")
    page.wait_for_selector("#player[data-engine='dash.js'][data-manifest-parsed=true]",
                           timeout=30_000)  # fmt: skip
    assert page.get_attribute("#player", "data-levels") == "1"
    assert "played with dash.js" in page.text_content("#player-note")
    assert page.evaluate("document.getElementById('player').play().then(() => true)")
    page.wait_for_function("document.getElementById('player').currentTime > 1.0", timeout=30_000)
    assert page.get_attribute("#player", "data-error") is None
    assert page.evaluate("document.getElementById('player').videoWidth") == 640
    # dash.js found the sound as its own adaptation set, and is playing it.
    tracks = page.evaluate(
        "(() => { const d = window.vtp.player.dash; const now = d.getCurrentTrackFor('audio');"
        " return [d.getTracksFor('audio').length, Boolean(now), now && now.codec]; })()"
    )
    assert tracks[:2] == [1, True] and "mp4a.40.2" in tracks[2], tracks
    # The storyboard on seek-bar hover: over the controls at three quarters of the 4 s
    # clip, the thumbnail of 3 s, the first cue (0-4 s), from the sprite sheet.
    player = page.locator("#player")
    box = player.bounding_box()
    player.hover(position={"x": box["width"] * 0.75, "y": box["height"] - 20})  # scrolls to it
    page.wait_for_selector("#storyboard-preview:not([hidden])", timeout=10_000)
    assert page.get_attribute("#storyboard-preview", "data-cue") == "0"
    thumb = page.eval_on_selector("#storyboard-preview .thumb", "t => t.style.backgroundImage")
    assert "storyboard/sheet-001.jpg" in thumb
    page.screenshot(path=str(artifacts / "browser-dash.png"), full_page=True)
    player.hover(position={"x": 5, "y": 5})  # over the picture: no preview
    page.wait_for_selector("#storyboard-preview[hidden]", state="attached", timeout=5_000)
    page.click("#player-formats button[data-format=hls]")
    page.wait_for_selector("#player[data-engine='hls.js'][data-manifest-parsed=true]",
                           timeout=30_000)  # fmt: skip


def test_a_private_job_plays_through_its_play_urls(
    page: Any,
    relay_url: str,
    gateway: str,
    s3: Any,
    stack_env: dict[str, str],
    artifacts: Path,
    tmp_path: Path,
) -> None:
    """A private job (vtp.privacy): the page is given play URLs and plays them, with hls.js
    and with dash.js, as it plays a public job's. The playlists come from the play route
    itself, so the players resolve every relative URL under it (token and all); segments
    come by a redirect to a presigned GET on the S3 server, which refuses the same objects
    without a signature (tests/test_private.py)."""
    from tests.manual import submit
    from tests.test_pipeline import MANUAL_BUCKET, wait_for_job

    clip = make_clip(tmp_path / "private.mp4", size="640x360", seconds=4, rate=25)
    key = f"browser-private/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    job_id = submit(gateway, MANUAL_BUCKET, key, ["360p"], formats=["hls", "dash"], private=True)
    assert wait_for_job(gateway, MANUAL_BUCKET, key)["state"] == "succeeded"
    play = f"{gateway}/function/ws-relay/play/"
    storage = f"{stack_env['VTP_S3_ENDPOINT']}/{stack_env['VTP_PRIVATE_OUTPUTS_BUCKET']}/"
    seen: list[dict[str, Any]] = []

    def on_response(response: Any) -> None:
        request = response.request
        before = request.redirected_from
        seen.append({"url": request.url, "status": response.status,
                     "from": before.url if before else None})  # fmt: skip

    page.on("response", on_response)
    page.goto(f"{relay_url}#/jobs/{job_id}")
    page.wait_for_selector("#player[data-engine='hls.js'][data-manifest-parsed=true]",
                           timeout=30_000)  # fmt: skip
    hrefs = page.eval_on_selector_all("#outputs a", "as => as.map(a => a.href)")
    assert hrefs and all(h.startswith(play) for h in hrefs), hrefs
    assert page.evaluate(f"MediaSource.isTypeSupported({H264_TYPE!r})"), "no H.264 in Chromium"
    assert page.evaluate("document.getElementById('player').play().then(() => true)")
    page.wait_for_function("document.getElementById('player').currentTime > 0.5", timeout=30_000)
    # hls.js resolved the rendition playlist and its segments under the play route.
    resolved = page.evaluate(
        "(() => { const l = window.vtp.player.hls.levels[0];"
        " return [Array.isArray(l.url) ? l.url[0] : l.url, l.details.fragments[0].url]; })()"
    )
    assert all(u.startswith(play) for u in resolved), resolved
    page.screenshot(path=str(artifacts / "browser-private-hls.png"), full_page=True)

    page.click("#player-formats button[data-format=dash]")
    page.wait_for_selector("#player[data-engine='dash.js'][data-manifest-parsed=true]",
                           timeout=30_000)  # fmt: skip
    assert page.evaluate("document.getElementById('player').play().then(() => true)")
    page.wait_for_function("document.getElementById('player').currentTime > 1.0", timeout=30_000)
    assert page.get_attribute("#player", "data-error") is None
    assert page.evaluate("document.getElementById('player').videoWidth") == 640
    # The storyboard's index came from the route too: its sheets resolve under it.
    cues = page.evaluate("window.vtp.storyboard.cues.map(c => c.src)")
    assert cues and all(c.startswith(play) for c in cues), cues
    page.screenshot(path=str(artifacts / "browser-private-dash.png"), full_page=True)

    # What the browser fetched: playlists and manifest straight from the route (200), media
    # by a 302 from the route to a signed URL of the private bucket, and nothing refused.
    served = [s for s in seen if s["url"].startswith(play) and s["status"] == 200]
    assert {s["url"].rsplit(".", 1)[-1] for s in served} >= {"m3u8", "mpd", "vtt"}, served
    redirected = [s for s in seen if s["url"].startswith(storage)]
    assert redirected, seen
    for s in redirected:
        assert s["from"] and s["from"].startswith(play), s
        assert "X-Amz-Signature=" in s["url"] and s["status"] in (200, 206), s
    # (Only what concerns this job: the page's list may name jobs other tests delete.)
    assert not [s for s in seen if s["status"] >= 400 and "/api/jobs/" not in s["url"]], seen


def test_a_viewer_link_opens_its_job_and_a_credential_leaves_the_address(
    browser: Any, gateway: str, relay_url: str, stack_env: dict[str, str], s3: Any,
    tmp_path: Path, artifacts: Path,
) -> None:  # fmt: skip
    """What a platform hands its user: `vtp link JOB`'s page shows that job, live, without a
    credential. Without anything the page asks to sign in; a credential in its address is
    exchanged for the session cookie and taken out of the address at once."""
    from tests.manual import submit
    from tests.test_pipeline import MANUAL_BUCKET, wait_for_job

    clip = make_clip(tmp_path / "linked.mp4", size="640x360", seconds=1.0)
    key = f"browser-link/{time.time_ns()}.mp4"
    s3.fput_object(MANUAL_BUCKET, key, str(clip))
    job_id = submit(gateway, MANUAL_BUCKET, key, ["360p"])
    assert wait_for_job(gateway, MANUAL_BUCKET, key)["state"] == "succeeded"
    submitter = {"Authorization": f"Bearer {stack_env['VTP_SUBMIT_TOKEN']}"}
    minted = http.post(
        f"{gateway}/function/split/links", params={"job": job_id}, headers=submitter, timeout=10
    )
    assert minted.status_code == 200, minted.text

    context = browser.new_context()  # no session cookie
    try:
        pg = context.new_page()
        pg.goto(minted.json()["page"])
        assert wait_finished(pg, 60) == "succeeded"
        assert pg.evaluate("location.hash") == f"#/jobs/{job_id}"
        assert pg.evaluate("document.getElementById('conn').dataset.mode") != "locked"
        assert not pg.is_visible("#upload-form") and not pg.is_visible("a.back")
        pg.screenshot(path=str(artifacts / "browser-viewer-link.png"), full_page=True)

        bare = context.new_page()
        bare.goto(relay_url)
        bare.wait_for_function(
            "document.getElementById('conn').dataset.mode === 'locked'", timeout=20_000
        )
        assert bare.is_visible("#signin-form")
        assert "sign in" in bare.inner_text("#conn-text")

        token = stack_env["VTP_VIEW_TOKEN"]
        signed = context.new_page()
        signed.goto(f"{relay_url}?token={token}#/jobs/{job_id}")
        assert wait_finished(signed, 60) == "succeeded"
        assert token not in signed.evaluate("location.href")
        assert any(c["name"] == access.SESSION_COOKIE for c in context.cookies())
    finally:
        context.close()
