"""Segment-parallel encoding: wall time and CPU time of one long job, encoded whole and in
chunks, with one worker and with two.

A SECONDS-long 1080p25 source with audio (2 minutes by default; VTP_BENCH_CHUNKED_SECONDS=600
for the 10-minute case), the default three renditions, every ffmpeg limited to one thread
(VTP_FFMPEG_THREADS=1) so the machine's cores are the only parallelism. Three stacks of its
own, one after the other (VTP_BENCH_ONLY=chunked-2 for some of them):

- whole: each rendition one call; 1 replica per function, 1 queue-worker;
- chunked, 1 worker: chunks of CHUNK seconds (and the audio rendition), 1 replica, 1 queue-worker;
- chunked, 2 workers: the same with 2 replicas of each transcode function and 2 queue-workers.

Wall time runs from the upload to the job's success; CPU time is the sum of every call's
encode time (one thread each, so about the CPU it used). Median of RUNS runs (min, max).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import chunk_model  # noqa: E402  (bench/, this script's folder, is on the path)
import stackjobs  # noqa: E402

from localfaas import runtime  # noqa: E402
from localfaas.config import LocalConfig  # noqa: E402
from tests.ports import free_port, free_port_base  # noqa: E402
from tests.s3 import s3_client  # noqa: E402

SECONDS = int(os.environ.get("VTP_BENCH_CHUNKED_SECONDS", "120"))
# Seconds (whole 4 s segments): the product's default, 48; shorter ones cost more CPU, since
# each chunk decodes from the source keyframe before its start and starts an encoder.
CHUNK = int(os.environ.get("VTP_BENCH_CHUNK_SECONDS", "48"))
RUNS = int(os.environ.get("VTP_BENCH_RUNS", "3"))
# Some of the scenarios only, e.g. "chunked-2" (comma-separated); all by default.
ONLY = [s for s in os.environ.get("VTP_BENCH_ONLY", "").split(",") if s]
TRANSCODES = ("transcode-360p", "transcode-720p", "transcode-1080p")


def make_clip(path: Path, seconds: int) -> None:
    stackjobs.lavfi_clip(path, seconds, size="1920x1080", rate=25, bitrate="6M")


def run_job(cfg: LocalConfig, clip: Path) -> dict[str, float]:
    s3 = s3_client(cfg)
    key = f"bench/{time.time_ns()}/{clip.name}"
    t0 = time.monotonic()
    s3.fput_object(cfg.uploads_bucket, key, str(clip))
    job_id = stackjobs.wait_for_success(cfg, key, until=t0 + 4 * 3600, poll_s=0.2)
    wall = time.monotonic() - t0
    # The job's figures against what split's samples predicted (bench/quality.py has more).
    for line in stackjobs.prediction_lines(cfg, job_id):
        print(f"             {line}")
    rows = _rows(cfg, job_id)
    return {"wall": wall, "cpu": _cpu(rows), "tasks": float(len(rows))} | _shape(rows)


def _rows(cfg: LocalConfig, job_id: str) -> list[dict[str, Any]]:
    conn = psycopg2.connect(cfg.postgres_dsn)
    with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(
            """
            SELECT t.rendition, t.result, t.start_s, t.end_s,
                   extract(epoch FROM t.finished_at - t.attempt_started_at) AS call_s,
                   extract(epoch FROM t.attempt_started_at - j.created_at) AS start_at,
                   extract(epoch FROM t.finished_at - j.created_at) AS end_at,
                   extract(epoch FROM j.finished_at - j.created_at) AS job_s
            FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.job_id = %s
            """,
            (job_id,),
        )
        rows = [dict(r) for r in cur.fetchall()]
    conn.close()
    return rows


def _encode_s(row: dict[str, Any]) -> float:
    return float((row["result"] or {}).get("timings", {}).get("encode_s", 0))


def _cpu(rows: list[dict[str, Any]]) -> float:
    return sum(_encode_s(r) for r in rows)


def _shape(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The terms of the wall-time model: encode seconds per source second for each
    rendition (its chunks summed), the per-call cost outside the encode (upload, recording),
    the time from the job's creation to its first call, and from its last call to its end."""
    out: dict[str, float] = {}
    for name in sorted({r["rendition"] for r in rows}):
        mine = [r for r in rows if r["rendition"] == name]
        out[f"rate:{name}"] = sum(_encode_s(r) for r in mine) / SECONDS
        out[f"calls:{name}"] = float(len(mine))
    out["call_overhead"] = statistics.mean(float(r["call_s"]) - _encode_s(r) for r in rows)
    out["first_call"] = min(float(r["start_at"]) for r in rows)
    out["fan_in"] = float(rows[0]["job_s"]) - max(float(r["end_at"]) for r in rows)
    return out


def scenario(name: str, workers: int, chunked: bool, clip: Path) -> list[dict[str, float]]:
    env = {"VTP_FFMPEG_THREADS": "1", "VTP_CHUNKED_ENCODING": str(chunked).lower()}
    if chunked:
        env |= {"VTP_CHUNK_THRESHOLD_SECONDS": "30", "VTP_CHUNK_SECONDS": str(CHUNK)}
    run_dir = REPO / ".run" / f"bench-chunked-{name}"
    cfg = LocalConfig(
        run_dir=run_dir,
        port_base=free_port_base(),
        gateway_port=free_port(),
        queue_workers=workers,
        function_replicas=dict.fromkeys(TRANSCODES, workers),
        function_env={"*": env},
    )
    runtime.down(cfg)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        runtime.up(cfg)
        return [run_job(cfg, clip) for _ in range(RUNS)]
    finally:
        runtime.down(cfg)


def _figure(values: list[float], unit: str = "s") -> str:
    return (f"{statistics.median(values):7.1f} {unit} (min {min(values):.1f}, "
            f"max {max(values):.1f})")  # fmt: skip


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="vtp-bench-chunked-"))
    try:
        clip = work / f"clip-{SECONDS}s-1080p25.mp4"
        make_clip(clip, SECONDS)
        print(f"{SECONDS} s 1080p25 + audio, 3 renditions, ffmpeg -threads 1; "
              f"chunks of {CHUNK} s; median of {RUNS} run(s) (min, max)")  # fmt: skip
        results = {}
        for name, workers, chunked in (("whole-1", 1, False), ("chunked-1", 1, True),
                                       ("chunked-2", 2, True)):  # fmt: skip
            if ONLY and name not in ONLY:
                continue
            runs = scenario(name, workers, chunked, clip)
            results[name] = runs
            print(f"  {name:<10} wall {_figure([r['wall'] for r in runs])}   "
                  f"cpu {_figure([r['cpu'] for r in runs])}   "
                  f"calls {int(runs[0]['tasks'])}")  # fmt: skip
            shape = {k: statistics.median(r[k] for r in runs) for k in runs[0] if ":" in k or k
                     in ("call_overhead", "first_call", "fan_in")}  # fmt: skip
            rates = "  ".join(f"{k[5:]} {v:.3f}" for k, v in shape.items() if k.startswith("rate:"))
            print(f"             encode s per source s: {rates}")
            print(f"             per call outside the encode {shape['call_overhead']:.2f} s, "
                  f"first call after {shape['first_call']:.2f} s, "
                  f"fan-in {shape['fan_in']:.2f} s")  # fmt: skip
        if len(results) < 3:
            return
        wall = {k: statistics.median(r["wall"] for r in v) for k, v in results.items()}
        cpu = {k: statistics.median(r["cpu"] for r in v) for k, v in results.items()}
        two, one = wall["chunked-2"], wall["chunked-1"]
        print(f"  speed-up, 2 workers against 1 (chunked):   {one / two:.2f}x")
        print(f"  speed-up, chunked on 2 against whole on 1: {wall['whole-1'] / two:.2f}x")
        ratio = cpu["chunked-2"] / cpu["whole-1"]
        print(f"  CPU, chunked on 2 against whole on 1:      {ratio:.2f}")
        # The wall-time model (bench/chunk_model.py), calibrated on these figures.
        one_worker = {k: statistics.median(r[k] for r in results["chunked-1"])
                      for k in results["chunked-1"][0]}  # fmt: skip
        cal = chunk_model.Calibration.measured(
            duration=SECONDS, chunk_s=CHUNK, whole_cpu=cpu["whole-1"], chunked=one_worker,
            chunked_two_cpu=cpu["chunked-2"],
        )  # fmt: skip
        model_two = chunk_model.wall(cal, SECONDS, CHUNK, 2)
        print(f"  model, 2 workers: {model_two:.1f} s predicted, {two:.1f} s measured "
              f"({(two - model_two) / two:+.1%})")  # fmt: skip
        for line in chunk_model.predictions(cal, SECONDS, wall["whole-1"] / SECONDS):
            print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
