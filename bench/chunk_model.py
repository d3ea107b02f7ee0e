"""The wall-time model of segment-parallel encoding, calibrated by bench/chunked_encoding.py.

A job is a list of tasks that the queue hands out, in dispatch order (costliest first,
vtp.media.chunks.longest_first), to W workers, each running one single-threaded encode at a time.
A task costs

    its encode:   rate(rendition) x seconds of source, plus, for a chunk, a fixed cost
                  (decoding from the source's keyframe before the chunk's start, starting
                  an encoder);
    its call:     a fixed cost outside the encode (queue hop, recording, the upload);

and the wall time is a fixed start and fan-in plus the schedule's makespan, which list
scheduling puts between total/W and total/W + the last task. So:

    T(W, L) ~ fixed + max(longest task, (work(L) + calls(L) x per_call) / W + tail(W, L))

where work(L) grows by per_chunk for every chunk (shorter chunks cost more CPU), the tail is
part of the cheapest chunks (shorter chunks, shorter tail), and the longest task is the
sound, encoded whole (or a 1080p chunk). The schedule is simulated exactly rather than
bounded. Workers that share cores share their speed too (`contention`, measured with two on
two cores); the predictions for more workers assume one core each, as nodes give.

Run on its own, it prints the predictions for the figures measured on 2026-12-01 (below).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace

RENDITIONS = ("360p", "720p", "1080p")


@dataclass(frozen=True)
class Calibration:
    rates: dict[str, float]  # encode s per source s, whole, per video rendition
    audio_rate: float  # the same for the sound, one task over the whole source
    per_chunk_s: float  # encode seconds every chunk adds (seek decoding, encoder start)
    per_call_s: float  # per call, outside the encode
    fixed_s: float  # upload to first call, plus fan-in
    contention: float = 1.0  # encode time x this when the workers share the machine

    @classmethod
    def measured(
        cls,
        *,
        duration: float,
        chunk_s: float,
        whole_cpu: float,
        chunked: dict[str, float],
        chunked_two_cpu: float | None = None,
    ) -> Calibration:
        """From the bench's figures: `chunked` is the one-worker chunked run's (wall, cpu,
        tasks, rate:<rendition>, first_call, fan_in)."""
        n = _chunks(duration, chunk_s)
        chunks = n * len(RENDITIONS)
        per_chunk = max(0.0, (chunked["cpu"] - whole_cpu) / (chunks - len(RENDITIONS)))
        fixed = chunked["first_call"] + chunked["fan_in"]
        return cls(
            rates={r: chunked[f"rate:{r}"] - per_chunk * n / duration for r in RENDITIONS},
            audio_rate=chunked["rate:audio"],
            per_chunk_s=per_chunk,
            per_call_s=(chunked["wall"] - chunked["cpu"] - fixed) / chunked["tasks"],
            fixed_s=fixed,
            contention=(chunked_two_cpu / chunked["cpu"]) if chunked_two_cpu else 1.0,
        )


def _chunks(duration: float, chunk_s: float) -> int:
    """As vtp.media.chunks.plan_chunks: whole chunks, the last absorbing a tail under half one."""
    whole = math.floor(duration / chunk_s)
    return max(1, whole + (1 if duration - whole * chunk_s >= chunk_s / 2 else 0))


def task_costs(cal: Calibration, duration: float, chunk_s: float | None) -> list[float]:
    """Every task's seconds on a worker; `chunk_s` None: each rendition whole."""
    costs = [duration * cal.audio_rate] if chunk_s else []
    for r in RENDITIONS:
        if not chunk_s:
            costs.append(duration * cal.rates[r])
            continue
        n = _chunks(duration, chunk_s)
        lengths = [chunk_s] * (n - 1) + [duration - chunk_s * (n - 1)]
        costs += [s * cal.rates[r] + cal.per_chunk_s for s in lengths]
    return [c * cal.contention + cal.per_call_s for c in costs]


def makespan(costs: list[float], workers: int) -> float:
    """List scheduling, costliest first: each task to the worker free first."""
    free = [0.0] * workers
    for c in sorted(costs, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + c)
    return max(free)


def wall(cal: Calibration, duration: float, chunk_s: float | None, workers: int) -> float:
    return cal.fixed_s + makespan(task_costs(cal, duration, chunk_s), workers)


def predictions(cal: Calibration, duration: float, whole_wall_per_s: float) -> list[str]:
    """A table of predicted wall times: workers down, chunk lengths across; the speed-up is
    over the measured whole encode on one worker (`whole_wall_per_s` x duration)."""
    one_core = replace(cal, contention=1.0)
    lengths = (24.0, 48.0, 96.0)
    lines = [f"  predicted for {duration:g} s, a worker per core: wall s (speed-up over one "
             "worker encoding whole)"]  # fmt: skip
    lines.append("    workers " + "".join(f"{f'{L:g} s chunks':>22}" for L in lengths))
    whole = whole_wall_per_s * duration
    for w in (1, 2, 4, 8, 20, 50):
        cells = []
        for L in lengths:
            t = wall(one_core, duration, L, w)
            cells.append(f"{t:10.1f} ({whole / t:5.1f}x)  ")
        lines.append(f"    {w:>7} " + "".join(f"{c:>22}" for c in cells))
    return lines


# The figures of bench/chunked_encoding.py, 2026-12-01 (commit 470b9e2, 2 cores, 48 s chunks,
# 600 s 1080p25 source): whole on one worker, chunked on one, chunked on two.
WHOLE_WALL = 975.5
MEASURED = {
    "duration": 600.0,
    "chunk_s": 48.0,
    "whole_cpu": 955.0,
    "chunked": {
        "wall": 1033.6, "cpu": 996.8, "tasks": 40.0, "first_call": 0.06, "fan_in": 2.28,
        "rate:360p": 0.306, "rate:720p": 0.504, "rate:1080p": 0.771, "rate:audio": 0.081,
    },
}  # fmt: skip


# Two workers' encodes took longer each than one worker's (the stack's own processes, the
# local S3 server above all, had no core to themselves): chunked-2's CPU in two runs, and
# their wall times.
TWO_WORKERS = ((1045.9, 537.0), (1105.7, 592.2))


def main() -> None:
    for cpu, measured in TWO_WORKERS:
        cal = Calibration.measured(**MEASURED, chunked_two_cpu=cpu)  # type: ignore[arg-type]
        print(f"model, 2 workers on 2 cores, {cal.contention - 1:.1%} slower each: "
              f"{wall(cal, 600.0, 48.0, 2):.1f} s (measured {measured} s)")  # fmt: skip
    print(f"calibration: {cal}")
    per_s = WHOLE_WALL / MEASURED["duration"]  # type: ignore[operator]
    for line in predictions(cal, 600.0, per_s) + predictions(cal, 7200.0, per_s):
        print(line)


if __name__ == "__main__":
    main()
