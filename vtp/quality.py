"""How close an encode is to its source: SSIM, measured by ffmpeg's `ssim` filter.

The metric is SSIM because it is what every ffmpeg has: Debian's ffmpeg has no libvmaf,
and no well-kept Python package brings VMAF without it. Every score says which metric made
it (`metric`), so a later VMAF run is never mistaken for an SSIM one.

A rendition is compared at its own size with the source scaled to that size by the same
filters the encode used (vtp.encode.picture_filters): the score measures what encoding lost,
not what scaling down did, so each rung can have a target of its own. Comparing across
rungs (vtp.tuning's pruning) scales the smaller one up instead.

Scores are pooled as the mean of the per-frame SSIM (the figure ffmpeg prints as "All"):
averaging the error 1 - SSIM weights a badly coded stretch as much as its share of the
frames, so still frames cannot hide a smeared scene. Targets and margins are in SSIM's
decibels, -10*log10(1 - SSIM), where equal steps are roughly equal steps of x264's CRF.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vtp.errors import FfmpegError
from vtp.ffmpeg import run_ffmpeg

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
    run = run_ffmpeg([*inputs, "-lavfi", graph, "-f", "null", "-"], timeout=timeout, cwd=cwd)
    try:
        text = stats.read_text()
    except OSError as exc:
        raise FfmpegError("ffmpeg's ssim filter wrote no statistics") from exc
    values = [float(m.group(1)) for m in _ALL.finditer(text)]
    if not values:
        raise FfmpegError("ffmpeg's ssim filter compared no frame")
    return values, run.cpu_seconds
