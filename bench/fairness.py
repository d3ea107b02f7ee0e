"""Fair share (issue 28): how long short jobs wait behind a long one, and how many calls of
one job the queue holds at once.

On a local stack of its own (3 queue-workers), with 1280x720 30 fps sources with sound made
by lavfi (once per invocation: a 4-minute "film", chunked into many calls, and 8 s "clips",
each a distinct object so each upload is a job of its own), RUNS times (after one warm-up):

- A, film and clips: a clip alone, upload -> job succeeded; the film alone; then the film
  and, 8 s after its upload, three clips back to back: each clip against the clip alone
  (goal: within 2x), the film against the film alone (goal: within 1.1x);
- B, a high clip behind ten normals: ten clips uploaded back to back, then one with
  `x-amz-meta-vtp-priority: high` (goal: within 2x of the clip alone). A build that does not
  know that option (vtp.options refuses it, failing the job) gets the clip without it: the
  FIFO baseline.

While each scenario runs, the queue itself is read every 0.2 s: the messages of the NATS
JetStream stream the gateway queues async calls on (waiting, and delivered to a
queue-worker but not yet acknowledged), grouped by the job_id of the TranscodeTask each
carries; and, from PostgreSQL, each job's tasks running or queued with a call dispatched.
The most calls of one job seen at once is set against the stack's window (W: vtp.jobs.
scheduling.job_window of the settings its split runs with).

A time runs from the client's upload to the job's own record of its success
(jobs.finished_at). Figures are medians of the runs (min, max); a ratio is taken within each
run and its median shown. `--runs N` (or VTP_BENCH_RUNS) sets the runs, `--only film` or
`--only priority` one scenario, `--window N` another window than the default.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import psycopg2
import psycopg2.errors
import psycopg2.extras
from minio import Minio
from nats.js.errors import NotFoundError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stackjobs  # noqa: E402  (bench/, this script's folder, is on the path)

from localfaas import procs, queue, runtime  # noqa: E402
from localfaas.config import LocalConfig  # noqa: E402
from tests.ports import free_port, free_port_base  # noqa: E402
from tests.s3 import s3_client  # noqa: E402
from vtp.errors import InvalidRequest  # noqa: E402
from vtp.options import from_metadata  # noqa: E402
from vtp.settings import Settings  # noqa: E402

RUNS = int(os.environ.get("VTP_BENCH_RUNS", "3"))
FILM_S = 240
CLIP_S = 8
CLIPS_AFTER_S = 8.0  # the clips follow the film's upload by this long
NORMALS = 10
SAMPLE_S = 0.2
POLL_S = 0.5
SCENARIO_TIMEOUT_S = 1800.0
PRIORITY = {"vtp-priority": "high"}  # minio's client sends it as x-amz-meta-vtp-priority
CLIP_GOAL, FILM_GOAL, HIGH_GOAL = 2.0, 1.1, 2.0
# One upload of a scenario: seconds to wait after the previous one, the file, its label, and
# its user metadata.
Step = tuple[float, Path, str, dict[str, str]]


# --- sources ---------------------------------------------------------------------------------


def make_source(path: Path, seconds: int, tone_hz: int) -> None:
    """A 1280x720 30 fps H.264 + AAC file; the tone makes each one distinct bytes."""
    stackjobs.lavfi_clip(path, seconds, size="1280x720", rate=30, bitrate="3M",
                         tone_hz=tone_hz)  # fmt: skip


def make_sources(media: Path) -> tuple[Path, list[Path]]:
    """The film and NORMALS + 1 distinct clips, made once (kept when `media` already has them)."""
    media.mkdir(parents=True, exist_ok=True)
    film = media / f"film-{FILM_S}s-720p30.mp4"
    if not film.exists():
        make_source(film.with_suffix(".part.mp4"), FILM_S, 440)
        film.with_suffix(".part.mp4").rename(film)
    clips = []
    for i in range(NORMALS + 1):
        clip = media / f"clip-{i:02d}-{CLIP_S}s-720p30.mp4"
        if not clip.exists():
            make_source(clip.with_suffix(".part.mp4"), CLIP_S, 500 + 50 * i)
            clip.with_suffix(".part.mp4").rename(clip)
        clips.append(clip)
    return film, clips


# --- uploads and their jobs ------------------------------------------------------------------


@dataclass
class Upload:
    label: str
    key: str
    upload_s: float  # the client's PUT
    uploaded_at: datetime  # wall clock as it ended, set against the job's own timestamps


def upload(cfg: LocalConfig, s3: Minio, path: Path, label: str, **meta: str) -> Upload:
    """One upload under a key of its own: a new object, so a job of its own."""
    key = f"bench/fairness/{time.time_ns()}/{path.name}"
    t0 = time.monotonic()
    s3.fput_object(
        cfg.uploads_bucket, key, str(path), content_type="video/mp4", metadata=dict(meta) or None
    )
    upload_s = time.monotonic() - t0
    return Upload(label, key, upload_s, datetime.now().astimezone())


# Where each job's time went, by label, in the last scenario waited for (see `_parts`).
PARTS: dict[str, tuple[float, float, float]] = {}


def _parts(conn: Any, by_key: dict[str, Upload]) -> dict[str, tuple[float, float, float]]:
    """Per upload: until its job existed (split's probe and plan, behind other uploads'),
    until its first task started (waiting for a slot), and from then to its success."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(
            "SELECT j.source_key, j.created_at, j.finished_at, min(t.started_at) AS started"
            " FROM jobs j JOIN tasks t ON t.job_id = j.id WHERE j.source_key = ANY(%s)"
            " GROUP BY j.id",
            (list(by_key),),
        )
        rows = cur.fetchall()
    out = {}
    for r in rows:
        up = by_key[r["source_key"]]
        to_job = up.upload_s + (r["created_at"] - up.uploaded_at).total_seconds()
        out[up.label] = (
            to_job,
            (r["started"] - r["created_at"]).total_seconds(),
            (r["finished_at"] - r["started"]).total_seconds(),
        )
    return out


def wait_all(cfg: LocalConfig, uploads: Sequence[Upload], until: float) -> dict[str, float]:
    """Each upload's seconds from its start to its job's success, by label, once all have
    succeeded (PostgreSQL polled, not status: one query for all of them). Exits on a job
    that fails, or at `until` (time.monotonic())."""
    by_key = {u.key: u for u in uploads}
    conn = psycopg2.connect(cfg.postgres_dsn)
    conn.autocommit = True
    try:
        while True:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                try:
                    cur.execute(
                        "SELECT source_key, state, error, finished_at FROM jobs"
                        " WHERE source_bucket = %s AND source_key = ANY(%s)",
                        (cfg.uploads_bucket, list(by_key)),
                    )
                    rows = cur.fetchall()
                except psycopg2.errors.UndefinedTable:  # the first split call makes the schema
                    rows = []
            for row in rows:
                if row["state"] in ("failed", "cancelled"):
                    label = by_key[row["source_key"]].label
                    raise SystemExit(f"the {label}'s job {row['state']}: {row['error']}")
            done = [r for r in rows if r["state"] == "succeeded"]
            if len(done) == len(by_key):
                PARTS.update(_parts(conn, by_key))
                return {
                    by_key[r["source_key"]].label: by_key[r["source_key"]].upload_s
                    + (r["finished_at"] - by_key[r["source_key"]].uploaded_at).total_seconds()
                    for r in done
                }
            if time.monotonic() > until:
                waiting = sorted(set(by_key) - {r["source_key"] for r in done})
                raise SystemExit(
                    f"timed out after {SCENARIO_TIMEOUT_S:.0f} s: {len(done)} of {len(by_key)} "
                    f"jobs succeeded; waiting: {', '.join(by_key[k].label for k in waiting)}"
                )
            time.sleep(POLL_S)
    finally:
        conn.close()


def job_ids(cfg: LocalConfig, uploads: Sequence[Upload]) -> dict[str, str]:
    """Job id -> the upload's label."""
    labels = {u.key: u.label for u in uploads}
    conn = psycopg2.connect(cfg.postgres_dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id::text, source_key FROM jobs WHERE source_bucket = %s"
            " AND source_key = ANY(%s)",
            (cfg.uploads_bucket, list(labels)),
        )
        found = {str(job): labels[key] for job, key in cur.fetchall()}
    conn.close()
    return found


# --- the queue, read while a scenario runs ---------------------------------------------------


async def queued_calls(js: Any) -> list[tuple[str, bool]]:
    """Every call in the async queue now, as (job id, delivered): the stream's messages (a
    work-queue stream drops a message once a queue-worker acknowledges it, after the call
    and its callback), delivered when at or below the consumer's delivered sequence. A
    message that is not a TranscodeTask counts under its function's name."""
    info = await js.stream_info(queue.STREAM)
    if not info.state.messages:
        return []
    try:
        consumer = await js.consumer_info(queue.STREAM, queue.CONSUMER)
        delivered = consumer.delivered.stream_seq if consumer.delivered else 0
    except NotFoundError:  # no queue-worker has started yet
        delivered = 0
    calls: list[tuple[str, bool]] = []
    seq = info.state.first_seq
    while True:
        try:
            msg = await js.get_msg(queue.STREAM, seq=seq, subject=queue.SUBJECT, next=True)
        except NotFoundError:
            return calls
        assert msg.seq is not None
        calls.append((_job_of(msg.data or b""), msg.seq <= delivered))
        seq = msg.seq + 1


def _job_of(data: bytes) -> str:
    try:
        req = queue.QueuedRequest.model_validate_json(data)
    except ValueError:
        return "?"
    try:
        body = json.loads(req.body)
    except ValueError:
        body = None
    return str(body["job_id"]) if isinstance(body, dict) and "job_id" in body else req.function


async def stream_messages(cfg: LocalConfig) -> int:
    nc = await nats.connect(cfg.nats_url, name="bench-fairness", max_reconnect_attempts=1)
    try:
        info = await nc.jetstream().stream_info(queue.STREAM)
        return int(info.state.messages or 0)
    finally:
        await nc.close()


@dataclass
class Peaks:
    """The most calls of each job seen at once, by job id."""

    nats: dict[str, int] = field(default_factory=dict)  # in the stream: waiting + delivered
    nats_waiting: dict[str, int] = field(default_factory=dict)  # not yet delivered
    db: dict[str, int] = field(default_factory=dict)  # running, or queued with a call out
    samples: int = 0
    errors: list[str] = field(default_factory=list)

    def see(self, into: dict[str, int], counts: dict[str, int]) -> None:
        for job, n in counts.items():
            into[job] = max(into.get(job, 0), n)


class QueueSampler(threading.Thread):
    """Reads the queue and the tasks table every SAMPLE_S until stopped."""

    def __init__(self, cfg: LocalConfig) -> None:
        super().__init__(name="queue-sampler", daemon=True)
        self.cfg = cfg
        self.halt = threading.Event()
        self.peaks = Peaks()

    def __enter__(self) -> QueueSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(timeout=30)

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        nc = await nats.connect(self.cfg.nats_url, name="bench-fairness")
        js = nc.jetstream()
        conn = psycopg2.connect(self.cfg.postgres_dsn)
        conn.autocommit = True
        try:
            while not self.halt.is_set():
                t0 = time.monotonic()
                try:
                    calls = await queued_calls(js)
                    total: dict[str, int] = {}
                    waiting: dict[str, int] = {}
                    for job, delivered in calls:
                        total[job] = total.get(job, 0) + 1
                        waiting[job] = waiting.get(job, 0) + (not delivered)
                    self.peaks.see(self.peaks.nats, total)
                    self.peaks.see(self.peaks.nats_waiting, waiting)
                    self.peaks.see(self.peaks.db, _open_calls(conn))
                    self.peaks.samples += 1
                except Exception as exc:
                    self.peaks.errors.append(repr(exc))
                await asyncio.sleep(max(0.0, SAMPLE_S - (time.monotonic() - t0)))
        finally:
            await nc.close()
            conn.close()


def _open_calls(conn: Any) -> dict[str, int]:
    """Per job, its tasks running or queued with a call out (PostgreSQL's view of the queue)."""
    with conn.cursor() as cur:
        try:
            cur.execute(
                "SELECT job_id::text, count(*) FROM tasks WHERE state = 'running'"
                " OR (state = 'queued' AND dispatch_call_id IS NOT NULL) GROUP BY job_id"
            )
        except psycopg2.errors.UndefinedTable:  # the first split call makes the schema
            return {}
        return {str(job): int(n) for job, n in cur.fetchall()}


def settle(cfg: LocalConfig) -> None:
    """Until nothing is queued or running: each measurement starts on an idle stack."""
    until = time.monotonic() + 120
    conn = psycopg2.connect(cfg.postgres_dsn)
    conn.autocommit = True
    try:
        while time.monotonic() < until:
            with conn.cursor() as cur:
                try:
                    cur.execute(
                        "SELECT count(*) FROM tasks"
                        " WHERE state IN ('queued', 'running', 'retrying')"
                    )
                    row = cur.fetchone()
                except psycopg2.errors.UndefinedTable:  # no job yet: no schema either
                    row = (0,)
            if row is not None and row[0] == 0 and asyncio.run(stream_messages(cfg)) == 0:
                time.sleep(1.0)
                return
            time.sleep(POLL_S)
    finally:
        conn.close()
    raise SystemExit("the stack did not go idle within 120 s between measurements")


# --- the scenarios ---------------------------------------------------------------------------


@dataclass
class Measured:
    times: dict[str, float]
    peaks: Peaks
    jobs: dict[str, str]  # job id -> label
    # label -> seconds until its job existed, until its first task started, then running
    parts: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def peak(self, which: str, prefix: str) -> int:
        """The most calls at once of any job whose label starts with `prefix`."""
        seen: dict[str, int] = getattr(self.peaks, which)
        return max(
            (n for job, n in seen.items() if self.jobs.get(job, "").startswith(prefix)), default=0
        )


def measure(cfg: LocalConfig, steps: Sequence[Step]) -> Measured:
    """Upload each (delay, path, label, metadata) in turn (the delay counted from the
    previous upload's end), then wait for all their jobs, reading the queue meanwhile."""
    s3 = s3_client(cfg)
    settle(cfg)
    uploads: list[Upload] = []
    with QueueSampler(cfg) as sampler:
        until = time.monotonic() + SCENARIO_TIMEOUT_S
        for delay, path, label, meta in steps:
            if delay:
                time.sleep(delay)
            uploads.append(upload(cfg, s3, path, label, **meta))
        times = wait_all(cfg, uploads, until)
    return Measured(times, sampler.peaks, job_ids(cfg, uploads), dict(PARTS))


def priority_known() -> bool:
    """Whether this build takes x-amz-meta-vtp-priority (today's refuses it: a failed job)."""
    try:
        from_metadata({"x-amz-meta-" + k: v for k, v in PRIORITY.items()})
    except InvalidRequest:
        return False
    return True


def dispatch_window(cfg: LocalConfig) -> tuple[int | None, str]:
    """The most calls of one job the stack lets into the queue (W), and how it is set, from
    the settings the running split process has (its own environment, as the runtime gave
    it); (None, why) for a build without fair share."""
    rec = procs.running(cfg, runtime.replica_names("split", 1)[0])
    if rec is None:
        return None, "unknown (split is not running)"
    raw = Path(f"/proc/{rec.pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    try:
        scheduling = importlib.import_module("vtp.jobs.scheduling")
    except ImportError:
        return None, "none (a build without fair share: FIFO)"
    slots, window = env.get("VTP_DISPATCH_SLOTS", "3"), env.get("VTP_JOB_WINDOW", "0")
    settings = Settings(dispatch_slots=int(slots), job_window=int(window))
    return int(scheduling.job_window(settings)), f"dispatch_slots {slots}, job_window {window}"


# --- report ----------------------------------------------------------------------------------


def _figure(values: Sequence[float]) -> str:
    return f"{statistics.median(values):6.1f} s (min {min(values):.1f}, max {max(values):.1f})"


def _ratio(values: Sequence[float]) -> str:
    return f"x{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def _row(name: str, times: Sequence[float], ratios: Sequence[float] | None = None) -> str:
    against = f"  {_ratio(ratios)} of alone" if ratios else ""
    return f"   {name:<34}{_figure(times)}{against}"


def _goal(text: str, ok: bool, seen: str) -> str:
    return f"   {text}: {'met' if ok else 'not met'} ({seen})"


def _peaks_line(runs: Sequence[Measured], groups: Sequence[tuple[str, str]]) -> str:
    """The most calls of one job at once over the runs, by group of jobs (name, label prefix):
    NATS in the stream (of them waiting, not yet delivered), PostgreSQL running or dispatched."""
    parts = []
    for name, prefix in groups:
        total = max(r.peak("nats", prefix) for r in runs)
        waiting = max(r.peak("nats_waiting", prefix) for r in runs)
        db = max(r.peak("db", prefix) for r in runs)
        parts.append(f"{name} {total} ({waiting}) / {db}")
    samples = sum(r.peaks.samples for r in runs)
    errors = sum(len(r.peaks.errors) for r in runs)
    bad = f", {errors} failed reads: {runs[0].peaks.errors[:1]}" if errors else ""
    return (
        f"   most in the queue at once, NATS (waiting) / PostgreSQL: {', '.join(parts)} "
        f"[{samples} samples{bad}]"
    )


def report_film(alone: Sequence[float], film_alone: Sequence[Measured],
                mixed: Sequence[Measured]) -> list[str]:  # fmt: skip
    """Scenario A's table; its goals."""
    films = [m.times["film"] for m in film_alone]
    print(f"A. film ({FILM_S // 60} min) and clips")
    print(_row("film alone", films))
    print(f"   film, then 3 clips {CLIPS_AFTER_S:.0f} s after its upload:")
    film_x = [m.times["film"] / f for m, f in zip(mixed, films, strict=True)]
    print(_row("  film", [m.times["film"] for m in mixed], film_x))
    worst = 0.0
    for i in (1, 2, 3):
        label = f"clip {i}"
        x = [m.times[label] / a for m, a in zip(mixed, alone, strict=True)]
        worst = max(worst, statistics.median(x))
        print(_row(f"  {label}", [m.times[label] for m in mixed], x))
        print(_parts_row(mixed, label))
    print(_peaks_line(film_alone, [("film alone", "film")]))
    print(_peaks_line(mixed, [("film", "film"), ("clips", "clip")]))
    fx = statistics.median(film_x)
    return [
        _goal(f"A. each clip within {CLIP_GOAL:g}x of alone", worst <= CLIP_GOAL,
              f"worst x{worst:.2f}"),
        _goal(f"A. film within {FILM_GOAL:g}x of alone", fx <= FILM_GOAL, f"x{fx:.2f}"),
    ]  # fmt: skip


def _parts_row(runs: Sequence[Measured], label: str) -> str:
    """Medians of where a job's time went: to its job, waiting for a slot, running."""
    parts = [m.parts[label] for m in runs if label in m.parts]
    if not parts:
        return ""
    job, wait, ran = (statistics.median(p[i] for p in parts) for i in range(3))
    return f"       to its job {job:.1f} s, waiting for a slot {wait:.1f} s, running {ran:.1f} s"


def report_priority(alone: Sequence[float], behind: Sequence[Measured], priority: bool) -> str:
    """Scenario B's table; its goal."""
    tag = "x-amz-meta-vtp-priority: high" if priority else "sent without priority: this build"
    tag += "" if priority else " fails a job with x-amz-meta-vtp-priority"
    print(f"B. a clip uploaded after {NORMALS} normal ones ({tag})")
    highs = [m.times["high"] for m in behind]
    high_x = [h / a for h, a in zip(highs, alone, strict=True)]
    print(_row("high clip", highs, high_x))
    print(_parts_row(behind, "high"))
    names = [f"normal {i + 1}" for i in range(NORMALS)]
    normal_x = [m.times[n] / a for m, a in zip(behind, alone, strict=True) for n in names]
    print(_row("normal clips, all", [m.times[n] for m in behind for n in names], normal_x))
    each = " ".join(f"{statistics.median([m.times[n] for m in behind]):.0f}" for n in names)
    print(f"   normal clips in upload order, s   {each}")
    print(_peaks_line(behind, [("normals", "normal"), ("high", "high")]))
    hx = statistics.median(high_x)
    seen = f"x{hx:.2f}" + ("" if priority else ", without priority")
    return _goal(f"B. high clip within {HIGH_GOAL:g}x of alone", priority and hx <= HIGH_GOAL,
                 seen)  # fmt: skip


def report_window(window: int | None, runs: Sequence[Measured]) -> str:
    """The goal on W: the most calls of one job seen in the queue (NATS) in any scenario."""
    seen = max(max(r.peaks.nats.values(), default=0) for r in runs)
    # PostgreSQL's count frees a slot as the task's result is recorded; the queue holds its
    # message until the queue-worker has posted the callback and acknowledged it.
    rows = max(max(r.peaks.db.values(), default=0) for r in runs)
    most = f"most seen: NATS {seen}, PostgreSQL {rows}"
    if window is None:
        return f"   at most W calls of one job in the queue: no W ({most})"
    return _goal(f"at most W={window} calls of one job in the queue (NATS)", seen <= window, most)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="runs per figure (median)")
    parser.add_argument("--only", choices=("film", "priority"), help="one scenario only")
    parser.add_argument("--media", type=Path, help="keep the generated sources here, reused")
    parser.add_argument("--window", type=int, help="VTP_JOB_WINDOW for the stack (default: "
                        "the product's, two thirds of the slots)")  # fmt: skip
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    run_dir = REPO / ".run" / "bench-fairness"
    env = {"*": {"VTP_JOB_WINDOW": str(args.window)}} if args.window is not None else {}
    cfg = LocalConfig(
        run_dir=run_dir, port_base=free_port_base(), gateway_port=free_port(), queue_workers=3,
        function_env=env,
    )  # fmt: skip
    runtime.down(cfg)
    shutil.rmtree(run_dir, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="vtp-bench-fairness-"))
    try:
        film, clips = make_sources(args.media or work)
        runtime.up(cfg)
        window, how = dispatch_window(cfg)
        priority = priority_known()
        measure(cfg, [(0, clips[0], "warm-up", {})])  # cold function imports, first probe
        alone: list[float] = []
        film_alone: list[Measured] = []
        mixed: list[Measured] = []
        behind: list[Measured] = []
        for _ in range(args.runs):
            alone.append(measure(cfg, [(0, clips[0], "clip", {})]).times["clip"])
            if args.only != "priority":
                film_alone.append(measure(cfg, [(0, film, "film", {})]))
                after: list[Step] = [
                    (CLIPS_AFTER_S if i == 1 else 0, clips[i], f"clip {i}", {}) for i in (1, 2, 3)
                ]
                mixed.append(measure(cfg, [(0, film, "film", {}), *after]))
            if args.only != "film":
                normals: list[Step] = [(0, clips[i], f"normal {i + 1}", {}) for i in range(NORMALS)]
                high: Step = (0, clips[NORMALS], "high", PRIORITY if priority else {})
                behind.append(measure(cfg, [*normals, high]))
        w = how if window is None else f"{window} ({how})"
        print(f"median of {args.runs} runs (min, max), after one warm-up; 1280x720 30 fps + "
              f"audio, 3 queue-workers; W (calls of one job at most): {w}")  # fmt: skip
        print(_row(f"clip ({CLIP_S} s) alone, upload -> done", alone))
        goals = report_film(alone, film_alone, mixed) if film_alone else []
        if behind:
            goals.append(report_priority(alone, behind, priority))
        goals.append(report_window(window, [*film_alone, *mixed, *behind]))
        print("goals:")
        for line in goals:
            print(line)
    finally:
        runtime.down(cfg)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
