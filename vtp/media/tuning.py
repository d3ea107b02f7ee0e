"""Per-title rate control: one constant-rate factor per rung, chosen from sample encodes.

x264's CRF gives roughly the same quality across content, but not the same VMAF: a
cartoon at CRF 23 scores far above its target and spends bits on nothing visible, a
detailed crowd scene falls below it. So split encodes a few short samples spread over the
source at a few factors, measures each against the source (vtp.media.quality) and picks, per
rung, the factor that reaches the rung's target at the fewest bits. The decision is part
of the plan (`RenditionSpec.crf`), so every chunk of a rendition is encoded alike.

What a rung aims at is decided once, from H.264's first two probes: the rung's target, or
the knee below it where one more doubling of bits buys fewer than `_MIN_GAIN_PER_DOUBLING`
VMAF points (`knee_aim`; sensor noise, grain: the cheaper encode looks the same), and the
plan's note says so. Each other codec of the job is searched with its own encoder for what
H.264's rung shows (vtp.media.ladder.codec_ladders), without deciding again, so HEVC and
AV1 renditions show what H.264's do, for fewer bits.

How the samples are made, to bound their cost:

* one ffmpeg reads the samples' ranges of the source (input seeks, nothing else fetched),
  joins them and writes each rung's reference, the source scaled as the encode scales it,
  losslessly (FFV1) to local disk: the source is decoded once;
* each probe encodes a rung's reference with the real encode's arguments (preset, VBV cap,
  keyframe grid, at one CRF) and compares it with that reference. Two probes bracket the
  default factor, a third lands on the interpolated choice, and a fourth only where every
  probe so far passes the aim, or none does (`bracketed`); probes run in parallel,
  `quality_sample_workers` ffmpeg processes at a time;
* VMAF is close to linear in CRF and in log bit rate over a probe's span, so the factor is
  interpolated between the probes that bracket the target, and the prediction of bit rate,
  quality and encode time with it.

Together the samples cover at most `quality_sample_share` of the source, so their encodes
cost a small fraction of the real ones (bench/quality.py prints the ratio). A source too
short for one sample, or whose samples fail to encode, keeps `default_crf`, and the plan
says why: a sampling failure never refuses a job (the real encode reports what is wrong).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from vtp import workdirs
from vtp.errors import FfmpegError
from vtp.media.codecs import crf_for
from vtp.media.encode import encode_args, reference_filters
from vtp.media.ffmpeg import run_ffmpeg, untrusted_input
from vtp.media.quality import METRIC, QualityScore, compare, pooled, time_left, upscaled
from vtp.models import RenditionEstimate, RenditionSpec, SourceInfo
from vtp.settings import Settings

log = logging.getLogger(__name__)

# The first two probes' factors, either side of the default: most titles land between.
_FIRST_PROBES = (-4.0, 4.0)
# Probing stops once the choice is bracketed this tightly.
_CLOSE_ENOUGH = 1.0
# Probes are made in rounds, every rung's at once: two, then one more each where it helps
# (three encodes of the samples per rung: the sampling's cost is about three times the
# sampled share of the real encode's), then one more round only for a rung whose probes
# do not bracket its aim yet.
_ROUNDS = 2
# Beyond every probe, the next is at most this many factors away.
_MAX_STEP = 6.0
# H.264 spends more bits only while each doubling of them still buys this many VMAF
# points: past it (grain, sensor noise, a cap that holds the picture), the content or the
# cap holds quality where it is, and the cheaper encode looks the same. It decides where
# the search stops whether or not the target can be reached (`knee_aim`): the natural clip's
# 1080p spent 5.2x the bits (6.0 Mbit/s) for 95.3 where 2.4 Mbit/s show 92.9, 1.6 points a
# doubling (docs/quality.md).
_MIN_GAIN_PER_DOUBLING = 2.0

T = TypeVar("T")
R = TypeVar("R")


class PrunedRung(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    reason: str


class TitlePlan(BaseModel):
    """The ladder as tuned for one title, and how the decision was made."""

    model_config = ConfigDict(frozen=True)

    specs: list[RenditionSpec]
    metric: str = METRIC
    samples: list[tuple[float, float]] = Field(
        default_factory=list, description="(start, seconds) of each sample of the source"
    )
    pruned: list[PrunedRung] = Field(default_factory=list)
    sampling_cpu_seconds: float = 0.0
    sampling_wall_seconds: float = 0.0
    note: str | None = Field(
        default=None,
        description=(
            "why the factors are the default ones, or which rungs aim below their target "
            "(the knee of `knee_aim`) and why"
        ),
    )

    def summary(self) -> dict[str, object]:
        """What the job records of its plan (jobs.plan) and status shows."""
        return {
            "metric": self.metric,
            "samples": [list(s) for s in self.samples],
            "pruned": [p.model_dump() for p in self.pruned],
            "sampling_cpu_seconds": round(self.sampling_cpu_seconds, 2),
            "sampling_wall_seconds": round(self.sampling_wall_seconds, 2),
            "note": self.note,
        }


class Probe(NamedTuple):
    """One sample encode of a rung at one factor."""

    crf: float
    score: QualityScore
    bitrate: int  # bit/s over the samples
    cpu_seconds: float  # the encode's alone
    path: Path


def sample_positions(duration: float, settings: Settings) -> list[tuple[float, float]]:
    """Where the samples go: up to `quality_sample_count` of `quality_sample_seconds`
    (rounded to whole GOPs, so each starts on the encode's keyframe grid) covering at most
    `quality_sample_share` of the source, each centred in its own equal share of it.
    Empty when not even one fits the budget."""
    gop = settings.gop_seconds
    seconds = max(gop, round(settings.quality_sample_seconds / gop) * gop)
    budget = settings.quality_sample_share * duration
    count = min(settings.quality_sample_count, int(budget / seconds + 1e-9))
    if count < 1 or seconds > duration:
        return []
    positions = []
    for i in range(count):
        centre = duration * (i + 0.5) / count
        start = math.floor((centre - seconds / 2) / gop) * gop
        start = min(max(0.0, start), max(0.0, math.floor((duration - seconds) / gop) * gop))
        positions.append((round(start, 3), seconds))
    return sorted(set(positions))


def tune(
    source_url: str,
    source: SourceInfo,
    specs: Sequence[RenditionSpec],
    settings: Settings,
    *,
    prune: bool = True,
    timeout: float | None = None,
) -> TitlePlan:
    """The ladder `specs` with each rung's factor chosen from samples (see module doc);
    `prune` drops rungs that show nothing over the rung below. Never raises for a source
    that cannot be sampled: the plan keeps the default factors and says why."""
    default = list(specs)
    if not settings.quality_sampling:
        return TitlePlan(specs=default, note="per-title sampling is off (VTP_QUALITY_SAMPLING)")
    samples = sample_positions(source.duration, settings)
    if not samples:
        return TitlePlan(
            specs=default,
            note=(
                f"a {source.duration:.1f} s source is too short to sample within "
                f"{settings.quality_sample_share:.0%} of it: CRF {settings.default_crf:g}"
            ),
        )
    started = time.monotonic()
    budget = timeout if timeout is not None else settings.quality_sample_timeout_seconds
    with workdirs.scratch("tuning") as tmp:
        tuner = _Tuner(source_url, source, default, settings, samples, Path(tmp), budget)
        try:
            tuned, pruned = tuner.run(prune=prune)
        except (FfmpegError, ValueError, OSError) as exc:  # OSError: a full scratch disk
            log.warning("sampling failed, keeping the default factors: %s", exc)
            return TitlePlan(
                specs=default,
                samples=samples,
                sampling_cpu_seconds=tuner.cpu_seconds,
                sampling_wall_seconds=time.monotonic() - started,
                note=f"sampling failed ({exc}): CRF {settings.default_crf:g}",
            )
    plan = TitlePlan(
        specs=tuned,
        samples=samples,
        pruned=pruned,
        sampling_cpu_seconds=tuner.cpu_seconds,
        sampling_wall_seconds=time.monotonic() - started,
        note="; ".join(tuner.knees) or None,
    )
    log.info(
        "tuned %s in %.1fs (%.1fs CPU): %s%s",
        source_url.split("?", 1)[0],
        plan.sampling_wall_seconds,
        plan.sampling_cpu_seconds,
        ", ".join(
            f"{s.name} crf {s.crf:g} ~{(s.estimate.bitrate if s.estimate else 0) // 1000}k"
            for s in tuned
        ),
        "".join(f"; dropped {p.name}" for p in pruned),
    )
    return plan


class _Tuner:
    def __init__(
        self,
        url: str,
        source: SourceInfo,
        specs: list[RenditionSpec],
        settings: Settings,
        samples: list[tuple[float, float]],
        workdir: Path,
        budget: float,
    ) -> None:
        self.url = url
        self.source = source
        self.specs = specs
        self.settings = settings
        self.samples = samples
        self.dir = workdir
        self.deadline = time.monotonic() + budget
        self.cpu_seconds = 0.0  # added to by the probes' threads, under _lock
        self._lock = threading.Lock()
        self.sampled_seconds = sum(seconds for _, seconds in samples)
        workers = settings.quality_sample_workers or (_cpus() or 1)
        self.workers = max(1, workers)
        # Per rung, the VMAF the search aims at (`_aim`), and why where it is below the target.
        self.aims: dict[str, float] = {}
        self.knees: list[str] = []

    def _left(self) -> float:
        return time_left(self.deadline, "sampling")

    def run(self, *, prune: bool) -> tuple[list[RenditionSpec], list[PrunedRung]]:
        refs = self._references()
        probes: dict[str, list[Probe]] = {s.name: [] for s in self.specs}
        low = self.settings.crf_min
        highs = {s.name: self.settings.crf_max for s in self.specs}
        pending = [
            (spec, _clamp(self.settings.default_crf + step, self.settings))
            for spec in self.specs
            for step in _FIRST_PROBES
        ]
        # Rounds of probes: the first two, one more each where it helps, and one further
        # out for a rung none of whose probes is on the far side of its aim (SVT-AV1's
        # 360p passed 90 at every probe up to CRF 57 and came out at 92.8).
        for round_ in range(_ROUNDS + 1):
            for (spec, _crf), probe in zip(
                pending, self._parallel(lambda j: self._probe(*j, refs), pending), strict=True
            ):
                probes[spec.name].append(probe)
            if round_ == 0:
                for spec in self.specs:
                    self._aim(spec, probes[spec.name], highs)
            if round_ == _ROUNDS:
                break
            pending = []
            for spec in self.specs:
                points = _points(probes[spec.name])
                aim, worth = self.aims[spec.name], self._worth(spec)
                crf = next_crf(points, aim, low, highs[spec.name], worth=worth)
                if crf is not None and (round_ < _ROUNDS - 1 or not bracketed(points, aim)):
                    pending.append((spec, crf))
            if not pending:
                break
        tuned = [self._tuned(spec, probes[spec.name]) for spec in self.specs]
        pruned = self._pruned(tuned, probes, refs) if prune else []
        dropped = {p.name for p in pruned}
        return [s for s in tuned if s.name not in dropped], pruned

    def _worth(self, spec: RenditionSpec) -> bool:
        """Whether the worth-it rule decides for this rung: H.264's alone. The other codecs
        aim at what H.264's rung shows (vtp.media.ladder.codec_ladders), and reach for it
        without deciding again: one rung, one picture."""
        return spec.codec == "h264"

    def _aim(self, spec: RenditionSpec, probes: Sequence[Probe], highs: dict[str, float]) -> None:
        """The VMAF the rung's search aims at, decided once from the first probes: its
        target, or for H.264 the knee below it (`knee_aim`), said in the plan's note."""
        target = self._target(spec)
        self.aims[spec.name] = target
        if not self._worth(spec):
            return
        points = _points(probes)
        aim, ceiling = knee_aim(points, target)
        self.aims[spec.name] = aim
        if ceiling is not None:
            highs[spec.name] = ceiling
        if aim < target:
            rich, cheap = min(points), max(points)
            self.knees.append(
                f"{spec.name} aims at VMAF {aim:.1f}, not {target:g}: from CRF {cheap[0]:g} "
                f"({cheap[1]:.1f}, {cheap[2] // 1000} kbit/s) to {rich[0]:g} ({rich[1]:.1f}, "
                f"{rich[2] // 1000} kbit/s), each doubling of the bits past {aim:.1f} buys "
                f"fewer than {_MIN_GAIN_PER_DOUBLING:g} points"
            )

    def _parallel(self, fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
            return list(pool.map(fn, jobs))

    def _references(self) -> dict[str, Path]:
        """Every rung's reference from one read of the samples' ranges (see module doc)."""
        inputs: list[str] = []
        for start, seconds in self.samples:
            inputs += untrusted_input(
                self.url, seek=start, duration=seconds, threads=self.settings.ffmpeg_threads
            )
        joined = "".join(f"[{i}:V:0]" for i in range(len(self.samples)))
        outputs = [f"[r{i}]" for i in range(len(self.specs))]
        graph = [f"{joined}concat=n={len(self.samples)}:v=1:a=0,split={len(self.specs)}"
                 + "".join(outputs)]  # fmt: skip
        graph += [f"[r{i}]{reference_filters(s)}[o{i}]" for i, s in enumerate(self.specs)]
        args = [*inputs, "-filter_complex", ";".join(graph)]
        refs: dict[str, Path] = {}
        for i, spec in enumerate(self.specs):
            refs[spec.name] = self.dir / f"ref-{spec.name}.mkv"
            # FFV1: lossless and quick to decode, so every probe compares with the exact
            # picture it encoded from.
            # Exactly the samples' frames: the timing filter holds the last frame a little
            # longer (END_HOLD_S, for the real encode's `-t` to cut), which here would add
            # still frames to every probe, and with them bits and scores the rendition
            # never has.
            args += ["-map", f"[o{i}]", "-frames:v", str(self._frames(spec)), "-c:v", "ffv1",
                     "-an", refs[spec.name].name]  # fmt: skip
        result = run_ffmpeg(args, timeout=self._left(), cwd=self.dir)
        self._spent(result.cpu_seconds)
        return refs

    def _sample_frames(self, spec: RenditionSpec) -> list[int]:
        """How many frames each sample holds on the rung's grid."""
        return [max(1, round(seconds * spec.fps)) for _, seconds in self.samples]

    def _frames(self, spec: RenditionSpec) -> int:
        """How many frames the samples hold on the rung's grid, all together."""
        return sum(self._sample_frames(spec))

    def _spent(self, cpu: float) -> None:
        with self._lock:
            self.cpu_seconds += cpu

    def _probe(self, spec: RenditionSpec, crf: float, refs: dict[str, Path]) -> Probe:
        ref = refs[spec.name]
        out = self.dir / f"probe-{spec.name}-{crf:g}.mp4"
        # From the reference: a file of its own whose picture starts at 0, already in the
        # rendition's colour (converting it again would shift its colours and mislead the
        # search: a BT.601 source came out at CRF 19 where 27 reaches the target).
        video_only = self.source.model_copy(
            update={"has_audio": False, "video_start": 0.0, "start_time": 0.0}
        )
        # The search is on x264's scale; another codec's encoder gets its equivalent.
        trial = spec.model_copy(update={"crf": crf_for(spec.codec, crf), "color_conversion": None})
        encoded = run_ffmpeg(
            [
                "-i",
                ref.name,
                *encode_args(video_only, trial, self.settings),
                "-frames:v",
                str(self._frames(spec)),
                "-f",
                "mp4",
                out.name,
            ],
            timeout=self._left(),
            cwd=self.dir,
        )
        measured = compare(
            ["-i", out.name, "-i", ref.name],
            "[0:v]setpts=PTS-STARTPTS",
            "[1:v]setpts=PTS-STARTPTS",
            cwd=self.dir,
            timeout=self._left(),
            settings=self.settings,
            log_name=f"{out.stem.replace('.', '_')}.json",
        )
        self._spent(encoded.cpu_seconds + measured.cpu_seconds)
        # The scored frames back into their samples, by frame number (libvmaf scores every
        # n-th frame of the joined samples).
        ends = list(itertools.accumulate(self._sample_frames(spec)))
        parts: list[list[float]] = [[] for _ in ends]
        for number, value in zip(measured.numbers, measured.vmaf, strict=True):
            parts[min(bisect.bisect_right(ends, number), len(ends) - 1)].append(value)
        score = pooled([p for p in parts if p])
        bitrate = round(out.stat().st_size * 8 / self.sampled_seconds)
        log.info(
            "probe %s crf %g: VMAF %.2f, %d kbit/s, %.1fs CPU",
            spec.name, crf, score.score, bitrate // 1000, encoded.cpu_seconds,
        )  # fmt: skip
        return Probe(crf, score, bitrate, encoded.cpu_seconds, out)

    def _target(self, spec: RenditionSpec) -> float:
        return spec.quality_target or self.settings.target_for(spec.name)

    def _tuned(self, spec: RenditionSpec, probes: Sequence[Probe]) -> RenditionSpec:
        points = _points(probes)
        aim = self.aims.get(spec.name, self._target(spec))
        crf = final_crf(points, aim, worth=self._worth(spec))
        quality = interpolate([(p.crf, p.score.score) for p in probes], crf)
        log_rate = interpolate([(p.crf, math.log(max(p.bitrate, 1))) for p in probes], crf)
        cpu_per_s = interpolate(
            [(p.crf, p.cpu_seconds / self.sampled_seconds) for p in probes], crf
        )
        bitrate = min(round(math.exp(log_rate)), spec.max_bitrate)
        estimate = RenditionEstimate(
            metric=METRIC,
            quality=round(min(quality, 100.0), 2),
            bitrate=bitrate,
            size_bytes=round(bitrate * self.source.duration / 8),
            encode_cpu_seconds=round(max(cpu_per_s, 0.0) * self.source.duration, 1),
            probes=sorted(_points(probes)),
        )
        return spec.model_copy(update={"crf": crf_for(spec.codec, crf), "estimate": estimate})

    def _pruned(
        self, tuned: list[RenditionSpec], probes: dict[str, list[Probe]], refs: dict[str, Path]
    ) -> list[PrunedRung]:
        """Rungs off the title's convex hull: the rung below, at the best of its probes that
        spends fewer bits than the rung would, scaled up to the rung's size, shows within
        `prune_jnd` of what the rung is encoded to show (its target, or its predicted score
        where the cap holds it below). Its extra pixels then hold nothing the source has
        (an upscaled or soft upload), and the bits buy more as the smaller picture."""
        if self.settings.prune_jnd <= 0:
            return []
        pairs = []
        for lower, upper in itertools.pairwise(tuned):
            if not upper.estimate:
                continue
            cheaper = [p for p in probes[lower.name] if p.bitrate < upper.estimate.bitrate]
            if cheaper:
                pairs.append((lower.name, max(cheaper, key=lambda p: p.score.score), upper))

        def against(pair: tuple[str, Probe, RenditionSpec]) -> float:
            _, below, upper = pair
            measured = compare(
                ["-i", below.path.name, "-i", refs[upper.name].name],
                f"[0:v]{upscaled(upper.width, upper.height)},setpts=PTS-STARTPTS",
                "[1:v]setpts=PTS-STARTPTS",
                cwd=self.dir,
                timeout=self._left(),
                settings=self.settings,
                log_name=f"up-{upper.name}.json",
            )
            self._spent(measured.cpu_seconds)
            return sum(measured.vmaf) / len(measured.vmaf)

        scores = self._parallel(against, pairs)
        pruned = []
        for (below_name, below, upper), scaled in zip(pairs, scores, strict=True):
            assert upper.estimate
            # What the rung is to show: its target, or less where the cap holds it below.
            shows = min(upper.estimate.quality, self._target(upper))
            log.info(
                "%s at crf %g (%d kbit/s) scaled up to %s: VMAF %.2f; %s itself: %.2f"
                " for %d kbit/s",
                below_name, below.crf, below.bitrate // 1000, upper.name, scaled, upper.name,
                shows, upper.estimate.bitrate // 1000,
            )  # fmt: skip
            if shows - scaled < self.settings.prune_jnd:
                pruned.append(
                    PrunedRung(
                        name=upper.name,
                        reason=(
                            f"{below_name} scaled up to {upper.width}x{upper.height} scores VMAF "
                            f"{scaled:.1f} for {below.bitrate // 1000} kbit/s, within "
                            f"{max(shows - scaled, 0):.1f} of what {upper.name} would show "
                            f"({shows:.1f}) for {upper.estimate.bitrate // 1000} kbit/s "
                            f"(just-noticeable: {self.settings.prune_jnd:g}): the source "
                            f"holds no more detail than {below_name}"
                        ),
                    )
                )
        return pruned


Point = tuple[float, float, int]  # (crf, VMAF, bit/s) of one probe


def _points(probes: Sequence[Probe]) -> list[Point]:
    """The probes as the search reads them."""
    return [(p.crf, p.score.score, p.bitrate) for p in probes]


def knee_aim(points: Sequence[Point], target: float) -> tuple[float, float | None]:
    """What H.264's rung aims at, from its first probes: `target`, or the knee below it
    where a doubling of bits buys fewer than `_MIN_GAIN_PER_DOUBLING` VMAF points; and a
    ceiling on the factor when the knee lies at the cheapest probe or below it (None: the
    search may go on past every probe).

    Quality saturates towards 100 as bits grow: 100 - VMAF ~ a * bits^-k, fitted through the
    richest and the cheapest probe. The doubling that ends at VMAF v then bought
    (100 - v) * (2^k - 1) points: at least the minimum up to 100 - min / (2^k - 1), the knee.
    Richer than that, each further doubling buys less, and the cheaper encode looks the
    same. The knee is never below the cheapest probe (`default_crf` + 4): it is not
    extended past what was measured; where the cheapest probe passes the target, the target
    holds (a cheap point is spent on it anyway)."""
    pts = sorted(points)
    rich, cheap = pts[0], pts[-1]
    if cheap[1] >= target or len(pts) < 2:
        return target, None
    if rich[2] <= cheap[2] or rich[1] <= cheap[1]:
        # No more bits (the cap holds them), or no better for more: nothing to go richer for.
        knee = -math.inf if rich[1] <= cheap[1] else math.inf
    else:
        headroom = max(100.0 - rich[1], 0.01), max(100.0 - cheap[1], 0.01)
        k = math.log(headroom[1] / headroom[0]) / math.log(rich[2] / cheap[2])
        knee = 100.0 - _MIN_GAIN_PER_DOUBLING / (2**k - 1) if k > 0 else -math.inf
    if knee >= target:
        return target, None
    if knee <= cheap[1]:
        return cheap[1], cheap[0]
    return round(knee, 2), None


def bracketed(points: Sequence[Point], target: float) -> bool:
    """Whether the probes hold a factor on either side of `target`: one that passes it and
    a higher one that fails."""
    passing = [p[0] for p in points if p[1] >= target]
    return bool(passing) and any(p[1] < target and p[0] > max(passing) for p in points)


def next_crf(
    points: Sequence[Point], target: float, low: float, high: float, *, worth: bool = True
) -> float | None:
    """The factor to probe next, from the (crf, VMAF, bit/s) probes so far; None: no
    probe would change the choice.

    The answer is the highest factor (fewest bits) whose quality still meets the target.
    Between the highest passing probe and the failing one above it, the next probe is
    interpolated; beyond every probe it is extended from the nearest two, at most
    `_MAX_STEP` factors at a time (quality is only roughly linear in the factor). Where
    none passes and more bits no longer buy quality (`_worth_it`, when `worth`), none is
    probed.
    """
    pts = sorted(points)
    passing = [p for p in pts if p[1] >= target]
    if passing:
        best = max(passing)
        above = [p for p in pts if p[0] > best[0]]
        if above:
            fail = min(above)
            if fail[0] - best[0] <= _CLOSE_ENOUGH:
                return None
            guess = _along(best, fail, target)
            return round(min(max(guess, best[0] + 0.5), fail[0] - 0.5), 1)
        if best[0] >= high:
            return None
        lower = [p for p in pts if p[0] < best[0]]
        step = _MAX_STEP
        if lower:
            guess = _along(max(lower), best, target)
            if guess > best[0]:
                step = min(_MAX_STEP, max(_CLOSE_ENOUGH, guess - best[0]))
        return round(min(best[0] + step, high), 1)
    lowest = pts[0]
    if lowest[0] <= low or (worth and len(pts) > 1 and not _worth_it(lowest, pts[1])):
        return None
    step = _MAX_STEP
    if len(pts) > 1:
        guess = _along(lowest, pts[1], target)
        if guess < lowest[0]:
            step = min(_MAX_STEP, max(_CLOSE_ENOUGH, lowest[0] - guess))
    return round(max(lowest[0] - step, low), 1)


def final_crf(points: Sequence[Point], target: float, *, worth: bool = True) -> float:
    """The factor chosen from the probes: interpolated between the highest passing probe
    and the failing one just above it; the highest passing probe when none fails above it.
    When none passes, from the cheapest probe down, each lower factor only while its extra
    bits are `_worth_it` (with `worth`; without, the richest probe: the nearest to the
    target, which another codec's rung shows)."""
    pts = sorted(points)
    passing = [p for p in pts if p[1] >= target]
    if passing:
        best = max(passing)
        above = [p for p in pts if p[0] > best[0]]
        if not above:
            return best[0]
        fail = min(above)
        return round(min(max(_along(best, fail, target), best[0]), fail[0]), 1)
    if not worth:
        return pts[0][0]
    chosen = pts[-1]
    for richer in reversed(pts[:-1]):
        if not _worth_it(richer, chosen):
            break
        chosen = richer
    return chosen[0]


def _worth_it(richer: Point, cheaper: Point) -> bool:
    """Whether `richer` (a lower factor) buys at least `_MIN_GAIN_PER_DOUBLING` VMAF points
    per doubling of bits over `cheaper`."""
    gained = richer[1] - cheaper[1]
    if richer[2] <= cheaper[2]:
        return gained > 0  # no more bits (the cap holds them): only if it is better at all
    return gained / math.log2(richer[2] / max(cheaper[2], 1)) >= _MIN_GAIN_PER_DOUBLING


def _along(a: Point, b: Point, target: float) -> float:
    """Where the line through probes a and b, (crf, VMAF), reaches `target`."""
    (c0, d0, _), (c1, d1, _) = a, b
    if abs(d1 - d0) < 1e-9:
        return c1
    return c0 + (target - d0) * (c1 - c0) / (d1 - d0)


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """y at `x`, linear between the points around it, else extended from the nearest two."""
    pts = sorted(points)
    if len(pts) == 1 or pts[0][0] == pts[-1][0]:
        return pts[0][1]
    if x <= pts[0][0]:
        (x0, y0), (x1, y1) = pts[0], pts[1]
    elif x >= pts[-1][0]:
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
    else:
        (x0, y0), (x1, y1) = next((a, b) for a, b in itertools.pairwise(pts) if a[0] <= x <= b[0])
    if x1 == x0:
        return y0
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def _nearest(probes: Sequence[Probe], crf: float | None) -> Probe:
    return min(probes, key=lambda p: abs(p.crf - (crf or 0.0)))


def _clamp(crf: float, settings: Settings) -> float:
    return round(min(max(crf, settings.crf_min), settings.crf_max), 1)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
