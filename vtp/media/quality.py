"""How close an encode is to its source: SSIM, measured by ffmpeg's `ssim` filter.

The metric is SSIM because it is what every ffmpeg has: Debian's ffmpeg has no libvmaf,
and no well-kept Python package brings VMAF without it. Every score says which metric made
it (`metric`), so a later VMAF run is never mistaken for an SSIM one.

A rendition is compared at its own size with the source scaled to that size by the same
filters the encode used (vtp.media.encode.picture_filters): the score measures what encoding lost,
not what scaling down did, so each rung can have a target of its own. Comparing across
rungs (vtp.media.tuning's pruning) scales the smaller one up instead.

Scores are pooled as the mean of the per-frame SSIM (the figure ffmpeg prints as "All"):
averaging the error 1 - SSIM weights a badly coded stretch as much as its share of the
frames, so still frames cannot hide a smeared scene. Targets and margins are in SSIM's
decibels, -10*log10(1 - SSIM), where equal steps are roughly equal steps of x264's CRF.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from vtp import workdirs
from vtp.errors import FfmpegError
from vtp.media.encode import reference_filters
from vtp.media.ffmpeg import run_ffmpeg, untrusted_input
from vtp.models import RenditionSpec
from vtp.settings import Settings

log = logging.getLogger(__name__)

METRIC = "ssim"
_ALL = re.compile(r"All:([0-9.]+)")


class QualityScore(BaseModel):
    """A pooled score over some parts (samples or segments) of a rendition."""

    model_config = ConfigDict(frozen=True)

    metric: str = METRIC
    score: float = Field(description="mean per-frame SSIM over every measured frame")
    worst: float = Field(description="the lowest part's mean: the worst stretch measured")
    frames: int = Field(ge=0)
    parts: int = Field(ge=0, description="how many samples or segments were measured")

    @property
    def db(self) -> float:
        return to_db(self.score)


def to_db(ssim: float) -> float:
    """SSIM in decibels: -10*log10(1 - SSIM), capped at 60 dB for identical pictures."""
    return 60.0 if ssim >= 1 - 1e-6 else float(-10.0 * math.log10(1.0 - ssim))


def from_db(db: float) -> float:
    return float(1.0 - 10.0 ** (-db / 10.0))


def pooled(parts: Sequence[Sequence[float]]) -> QualityScore:
    """One score from the per-frame values of each part; ValueError if no frame at all."""
    frames = [v for part in parts for v in part]
    if not frames:
        raise ValueError("no frame was measured")
    means = [sum(p) / len(p) for p in parts if p]
    return QualityScore(
        score=round(sum(frames) / len(frames), 6),
        worst=round(min(means), 6),
        frames=len(frames),
        parts=len(means),
    )


def ssim_frames(
    inputs: Sequence[str],
    distorted: str,
    reference: str,
    *,
    cwd: Path,
    timeout: float,
    stats_name: str = "ssim.log",
    cancel: threading.Event | None = None,
) -> tuple[list[float], float]:
    """Per-frame SSIM of the filter graph's `distorted` against its `reference` branch.

    `inputs` are ffmpeg's input arguments; `distorted` and `reference` are filter chains
    ending in the two pictures to compare, at the same size and pixel format, e.g.
    `[0:v]setpts=PTS-STARTPTS`. Frames are paired by timestamp; the comparison stops with
    the shorter of the two. Also returns the CPU seconds the comparison took. Comparisons
    run side by side in one folder need their own `stats_name` (a plain file name).
    """
    if not re.fullmatch(r"[\w.-]+", stats_name):
        raise ValueError(f"not a plain file name: {stats_name!r}")
    stats = cwd / stats_name
    stats.unlink(missing_ok=True)
    graph = (
        f"{distorted}[dist];{reference}[ref];"
        f"[dist][ref]ssim=stats_file={stats_name}:shortest=1:repeatlast=0"
    )
    run = run_ffmpeg(
        [*inputs, "-lavfi", graph, "-f", "null", "-"], timeout=timeout, cwd=cwd, cancel=cancel
    )
    try:
        text = stats.read_text()
    except OSError as exc:
        raise FfmpegError("ffmpeg's ssim filter wrote no statistics") from exc
    values = [float(m.group(1)) for m in _ALL.finditer(text)]
    if not values:
        raise FfmpegError("ffmpeg's ssim filter compared no frame")
    return values, run.cpu_seconds


class Segment(NamedTuple):
    """One output segment to measure: its file, and where it sits on the source's timeline."""

    name: str
    start_s: float
    seconds: float


def spread(count: int, wanted: int) -> list[int]:
    """`wanted` indices of `count` items, evenly spread, each in the middle of its share."""
    if count <= 0 or wanted <= 0:
        return []
    if wanted >= count:
        return list(range(count))
    return sorted({min(count - 1, int((i + 0.5) * count / wanted)) for i in range(wanted)})


def measure_segments(
    source_url: str,
    spec: RenditionSpec,
    out_dir: Path,
    init: str,
    segments: Sequence[Segment],
    *,
    display: tuple[int, int] | None,
    settings: Settings,
    timeout: float,
    cancel: threading.Event | None = None,
    origin_s: float = 0.0,
) -> tuple[QualityScore, QualityScore | None]:
    """The encoded `segments` (HLS fMP4, in `out_dir`, each played after `init`) against the
    source: at the rendition's own size, and, when `display` (the ladder's largest picture)
    is larger, scaled up to it, how a viewer at that size would see it (the HLS SCORE). The
    source is read only over each segment's range, on the file's timeline (the output's
    starts `origin_s` later: SourceInfo.video_start)."""
    deadline = time.monotonic() + timeout
    own: list[list[float]] = []
    shown: list[list[float]] = []
    up = display if display and display[0] * display[1] > spec.width * spec.height else None
    with workdirs.scratch("quality") as tmp:
        work = Path(tmp)
        for i, seg in enumerate(segments):
            played = work / f"seg-{i}.mp4"
            played.write_bytes((out_dir / init).read_bytes() + (out_dir / seg.name).read_bytes())
            inputs = [
                "-i",
                played.name,
                *untrusted_input(
                    source_url,
                    seek=seg.start_s + origin_s,
                    duration=seg.seconds,
                    threads=settings.ffmpeg_threads,
                ),
            ]
            frames, _ = ssim_frames(
                inputs,
                "[0:v]setpts=PTS-STARTPTS",
                f"[1:V:0]{reference_filters(spec)},setpts=PTS-STARTPTS",
                cwd=work,
                timeout=time_left(deadline, "measuring the output's quality"),
                stats_name=f"seg-{i}.ssim",
                cancel=cancel,
            )
            own.append(frames)
            if up is not None:
                big = spec.model_copy(update={"width": up[0], "height": up[1]})
                frames, _ = ssim_frames(
                    inputs,
                    f"[0:v]{upscaled(*up)},setpts=PTS-STARTPTS",
                    f"[1:V:0]{reference_filters(big)},setpts=PTS-STARTPTS",
                    cwd=work,
                    timeout=time_left(deadline, "measuring the output's quality"),
                    stats_name=f"seg-{i}-up.ssim",
                    cancel=cancel,
                )
                shown.append(frames)
    score = pooled(own)
    return score, pooled(shown) if shown else None


def time_left(deadline: float, what: str) -> float:
    """Seconds until `deadline` (time.monotonic()), for the next ffmpeg's timeout;
    FfmpegError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FfmpegError(f"{what} ran out of time")
    return left


def upscaled(width: int, height: int) -> str:
    """A smaller rendition's picture scaled up to `width`x`height`, as a player shows it on
    a larger screen, in the pixel format the comparison needs."""
    return f"scale={width}:{height},setsar=1,format=yuv420p"


# The keys a rendition's (or chunk's) result carries its measured quality under; the first
# four are copied into columns of the renditions table (vtp.jobs.transactions).
def quality_record(
    own: QualityScore | None,
    display: QualityScore | None,
    *,
    target: float | None,
    margin_db: float,
    error: str | None = None,
) -> dict[str, Any]:
    """What a result records of its measured quality; flagged when the score is more than
    `margin_db` below the target."""
    if own is None:
        return {"quality_metric": METRIC, "quality_error": error}
    flagged = target is not None and own.db < to_db(target) - margin_db
    return {
        "quality_metric": own.metric,
        "quality_score": own.score,
        "quality_worst": own.worst,
        "quality_flagged": flagged,
        "quality_target": target,
        "quality_frames": own.frames,
        "quality_parts": own.parts,
        # At the ladder's largest size (what the master playlist's SCORE says); the score
        # itself for the largest rendition.
        "quality_display": display.score if display is not None else own.score,
    }


def combined_record(
    parts: Sequence[Mapping[str, Any]], *, target: float | None, margin_db: float
) -> dict[str, Any]:
    """A rendition's quality from its chunks' records: the frame-weighted mean, the worst
    chunk's worst. Only a rendition whose every chunk was measured gets a score."""
    measured = [p for p in parts if p.get("quality_score") is not None and p.get("quality_frames")]
    if not parts or len(measured) < len(parts):
        missing = len(parts) - len(measured)
        return {"quality_metric": METRIC, "quality_error": f"{missing} chunk(s) not measured"}
    frames = sum(int(p["quality_frames"]) for p in measured)

    def mean(key: str) -> float:
        return sum(float(p[key]) * int(p["quality_frames"]) for p in measured) / frames

    own = QualityScore(
        score=round(mean("quality_score"), 6),
        worst=min(float(p["quality_worst"]) for p in measured),
        frames=frames,
        parts=sum(int(p.get("quality_parts") or 1) for p in measured),
    )
    display = own.model_copy(update={"score": round(mean("quality_display"), 6)})
    return quality_record(own, display, target=target, margin_db=margin_db)
