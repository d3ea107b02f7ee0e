"""How close an encode is to its source: VMAF (libvmaf's default model), with SSIM beside it.

VMAF is the metric the field aims and reports by (Netflix's per-title encoding, ab-av1's
target, SVT Encore's reports). It also ranks x264, x265 and SVT-AV1 fairly: SSIM punishes
the psychovisual tuning that makes their pictures look better. The pinned ffmpeg build
(vtp.media.build) has libvmaf and its default model (vmaf_v0.6.1) built in. Every score says
which metric made it (`metric`). A rendition's measurement also records SSIM as a secondary
figure (`quality_ssim`), for readers comparing with older results.

A rendition is compared at its own size with the source scaled to that size by the same
filters the encode used (vtp.media.encode.picture_filters). The score measures what encoding
lost, not what scaling down did, so each rung can have a target of its own. Comparing across
rungs (vtp.media.tuning's pruning, the master playlist's SCORE) scales the smaller one up
instead. An encode measures itself as it goes (vtp.media.measure); per-title samples are
compared here (vtp.media.tuning).

Scores are pooled as the mean of the per-frame VMAF (libvmaf's own pooling). The worst
part's mean is kept beside it, so still frames cannot hide a smeared scene. To bound the
cost, libvmaf scores every `quality_vmaf_subsample`-th frame: a frame costs about what a
medium-preset encode spends on it. Neighbouring frames score alike, and the skipped ones
are still decoded.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from vtp.errors import FfmpegError
from vtp.media.ffmpeg import run_ffmpeg
from vtp.settings import Settings

log = logging.getLogger(__name__)

METRIC = "vmaf"
_ALL = re.compile(r"All:([0-9.]+)")


class QualityScore(BaseModel):
    """A pooled score over some parts (samples or segments) of a rendition."""

    model_config = ConfigDict(frozen=True)

    metric: str = METRIC
    score: float = Field(description="mean per-frame VMAF over every measured frame, 0-100")
    worst: float = Field(description="the lowest part's mean: the worst stretch measured")
    frames: int = Field(ge=0)
    parts: int = Field(ge=0, description="how many samples or segments were measured")
    ssim: float | None = Field(default=None, description="mean per-frame SSIM, when measured")


def pooled(parts: Sequence[Sequence[float]], ssim: Sequence[float] = ()) -> QualityScore:
    """One score from the per-frame values of each part; ValueError if no frame at all."""
    frames = [v for part in parts for v in part]
    if not frames:
        raise ValueError("no frame was measured")
    means = [sum(p) / len(p) for p in parts if p]
    return QualityScore(
        score=round(sum(frames) / len(frames), 4),
        worst=round(min(means), 4),
        frames=len(frames),
        parts=len(means),
        ssim=round(sum(ssim) / len(ssim), 6) if ssim else None,
    )


class Comparison(NamedTuple):
    """What one comparison measured: VMAF per scored frame and each one's number (from 0, in
    the distorted input), SSIM per frame when asked for, and the CPU seconds it took."""

    vmaf: list[float]
    numbers: list[int]
    ssim: list[float]
    cpu_seconds: float


class Pair(NamedTuple):
    """One comparison of a graph: the filter chains that make its distorted and reference
    pictures from the graph's two input pictures, and the file libvmaf logs it to (a plain
    name, its own)."""

    distorted: str
    reference: str
    log_name: str


def compare(
    inputs: Sequence[str],
    distorted: str,
    reference: str,
    *,
    cwd: Path,
    timeout: float,
    settings: Settings,
    log_name: str = "vmaf.json",
    cancel: threading.Event | None = None,
) -> Comparison:
    """VMAF of the filter graph's `distorted` against its `reference`.

    `inputs` are ffmpeg's input arguments; `distorted` and `reference` are filter chains
    ending in the two pictures to compare, at the same size and pixel format, e.g.
    `[0:v]setpts=PTS-STARTPTS`. Frames are paired by timestamp, and the comparison stops with
    the shorter of the two."""
    (only,) = compare_all(
        inputs,
        "",
        "",
        [Pair(distorted, reference, log_name)],
        cwd=cwd,
        timeout=timeout,
        settings=settings,
        cancel=cancel,
    )
    return only


def compare_all(
    inputs: Sequence[str],
    distorted_from: str,
    reference_from: str,
    pairs: Sequence[Pair],
    *,
    cwd: Path,
    timeout: float,
    settings: Settings,
    with_ssim: bool = False,
    cancel: threading.Event | None = None,
) -> list[Comparison]:
    """Several comparisons of the same two pictures in one ffmpeg run: the inputs are read
    and decoded once (a rendition's own size and its size on the largest screen cost one
    decode of the source, not two). `distorted_from`/`reference_from` are the input pads
    (`[0:v]`) each pair's chains start from; empty when each chain names its own. SSIM, when
    asked for, is the first pair's. Each Comparison's CPU seconds are the whole run's."""
    if with_ssim and not distorted_from:
        raise ValueError("SSIM beside VMAF reads the inputs through split: name the pads")
    for pair in pairs:
        if not re.fullmatch(r"[\w-]+\.json", pair.log_name):
            raise ValueError(f"not a plain .json file name: {pair.log_name!r}")
    logs = [cwd / pair.log_name for pair in pairs]
    ssim_path = logs[0].with_suffix(".ssim")
    for path in (*logs, ssim_path):
        path.unlink(missing_ok=True)
    # shortest/repeatlast: stop with the shorter input instead of scoring a repeated frame.
    sync = "shortest=1:repeatlast=0"
    options = (
        f"{sync}:n_subsample={settings.quality_vmaf_subsample}"
        f":n_threads={max(1, settings.quality_vmaf_threads)}"
    )
    branches = len(pairs) + (1 if with_ssim else 0)
    graph: list[str] = []
    if distorted_from:  # one decode of each input, split to every comparison
        graph.append(
            f"{distorted_from}split={branches}" + "".join(f"[d{i}]" for i in range(branches))
        )
        graph.append(
            f"{reference_from}split={branches}" + "".join(f"[r{i}]" for i in range(branches))
        )
    chains = [*pairs, *([pairs[0]] if with_ssim else [])]
    for i, pair in enumerate(chains):
        d_in, r_in = (f"[d{i}]", f"[r{i}]") if distorted_from else ("", "")
        graph.append(f"{d_in}{pair.distorted}[dd{i}]")
        graph.append(f"{r_in}{pair.reference}[rr{i}]")
    for i, pair in enumerate(pairs):
        graph.append(f"[dd{i}][rr{i}]libvmaf=log_fmt=json:log_path={pair.log_name}:{options}")
    if with_ssim:
        i = len(pairs)
        graph.append(f"[dd{i}][rr{i}]ssim=stats_file={ssim_path.name}:{sync}")
    run = run_ffmpeg(
        [*inputs, "-lavfi", ";".join(graph), "-f", "null", "-"],
        timeout=timeout,
        cwd=cwd,
        cancel=cancel,
    )
    ssim = read_ssim_log(ssim_path) if with_ssim else []
    results = []
    for i, path in enumerate(logs):
        scored = read_vmaf_log(path)
        results.append(Comparison([v for _, v in scored], [n for n, _ in scored],
                                  ssim if i == 0 else [], run.cpu_seconds))  # fmt: skip
    return results


def read_vmaf_log(path: Path) -> list[tuple[int, float]]:
    """(frame number as libvmaf counted it, VMAF) of each frame its JSON log scored;
    FfmpegError when the log is missing, unreadable or empty."""
    try:
        frames = json.loads(path.read_text())["frames"]
        scored = [(int(f["frameNum"]), float(f["metrics"]["vmaf"])) for f in frames]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FfmpegError("ffmpeg's libvmaf filter wrote no usable log") from exc
    if not scored:
        raise FfmpegError("ffmpeg's libvmaf filter compared no frame")
    return scored


def read_ssim_log(path: Path) -> list[float]:
    """The per-frame SSIM ("All") of an ssim filter's stats file; FfmpegError when missing."""
    try:
        return [float(m.group(1)) for m in _ALL.finditer(path.read_text())]
    except OSError as exc:
        raise FfmpegError("ffmpeg's ssim filter wrote no statistics") from exc


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
    margin: float,
    error: str | None = None,
) -> dict[str, Any]:
    """What a result records of its measured quality; flagged when the score is more than
    `margin` VMAF points below the target."""
    if own is None:
        return {"quality_metric": METRIC, "quality_error": error}
    flagged = target is not None and own.score < target - margin
    return {
        "quality_metric": own.metric,
        "quality_score": own.score,
        "quality_worst": own.worst,
        "quality_flagged": flagged,
        "quality_target": target,
        "quality_frames": own.frames,
        "quality_parts": own.parts,
        "quality_ssim": own.ssim,
        # At the ladder's largest size (what the master playlist's SCORE says); the score
        # itself for the largest rendition.
        "quality_display": display.score if display is not None else own.score,
    }


def combined_record(
    parts: Sequence[Mapping[str, Any]], *, target: float | None, margin: float
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

    with_ssim = all(p.get("quality_ssim") is not None for p in measured)
    own = QualityScore(
        score=round(mean("quality_score"), 4),
        worst=min(float(p["quality_worst"]) for p in measured),
        frames=frames,
        parts=sum(int(p.get("quality_parts") or 1) for p in measured),
        ssim=round(mean("quality_ssim"), 6) if with_ssim else None,
    )
    display = own.model_copy(update={"score": round(mean("quality_display"), 4)})
    return quality_record(own, display, target=target, margin=margin)
