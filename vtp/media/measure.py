"""An encode's quality, measured inside its own ffmpeg run.

A rendition's VMAF against the source used to be measured after its encode, by a second
ffmpeg that read the source again (from the keyframe before the measured segment: an 8 s
GOP meant decoding 8 s to score 4), decoded the output again and compared the two. On the
last rendition of a job that ran on the job's tail: 2.5 s of a 30 s 1080p job's 44.6, 1.4 s
of a 2 s clip's 5.6 (bench/pipeline_vs_ffmpeg.py), with nothing else left to overlap it.

So the encode measures itself. ffmpeg 7 and later can decode an encoder's own packets again
in the same run (a loopback decoder, `-dec 0:0`, fed to a filter graph as `[dec:0]`). The
frames the encoder was given are split off before it, the encoded picture comes back from
the decoder, and libvmaf compares the two while the encode goes on: the source is read and
decoded once, nothing waits for the encode to end, and the scored frames are spread over
the whole output instead of one segment of it. Its cost is the output decoded once more
(about a tenth of an x264 medium encode's CPU, less for the slower encoders) and the
scored frames; a 2 s 720p clip's encode went from 1.06 to 1.26 CPU-s, where the separate
measurement took 0.8 more.

Which frames: `quality_measure_share` of the output's frames, never fewer than
MIN_SCORED_FRAMES nor more than `quality_measure_max_frames`, one every `step` frames from
the first. The bound is what keeps the measurement a small part of the encode: the scores
cost per frame compared (about 22 ms of CPU at 1080p), and a mean of two dozen frames spread
over an encode already lies within about a point of the mean of all of them (the spread of
per-frame VMAF within a title is a few points; its standard error over n frames shrinks as
1/sqrt(n)). The output's decode, the measurement's fixed part, is about a fifteenth of an
x264 medium encode's CPU (bench/pipeline_vs_ffmpeg.py prints both). Each is taken with the frame
before it, and libvmaf scores every second frame of what it is given: the frame before is
what its motion feature compares with, so a scored frame's motion is its real one (scoring
frames `step` apart directly would see `step` frames of motion, and VMAF masks artefacts
under motion). Everything else is dropped before it reaches the measurement's filters, so
frames wait in memory for the encoder's delay only one pair in `step`. Checked against
the separate measurement of the same output: the same frames score within 0.04.

The display comparison (a smaller rendition scaled up to the ladder's largest picture, the
master playlist's SCORE) compares with the source made that size from the same decode, on
every second scored frame once there are enough of them (`display_every`): each of its
frames costs a 1080p comparison and an upscale whatever the rendition's size, so it was most
of a small rung's measurement, for a figure that only ranks the rungs. SSIM, the secondary
figure, is computed on the scored frames alone, not on the frames before them.

Pictures larger than 1080p are compared scaled down to 1080p (COMPARED_PIXELS), and the
display size is capped the same way. VMAF's default model is trained for a 1080p screen,
and the cap keeps the memory bounded: libvmaf at 2160p added 1 GB to a 4K encode
(1.86 GB alone, 2.86 GB measuring itself at full size), past what the function that encodes
it has.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from vtp.media.quality import QualityScore, pooled, read_ssim_log, read_vmaf_log
from vtp.settings import Settings

log = logging.getLogger(__name__)

# Fewer scored frames than this make a mean worth little: an output shorter than
# MIN_SCORED_FRAMES / quality_measure_share frames (4 s at 30 fps) scores this many. Three,
# not more: a frame's comparison at 1080p costs about what a medium encode spends on it,
# so on a 2 s clip each further pair of frames cost 0.04 CPU-s per comparison; with six,
# the measurement was a quarter of the clip's encodes (bench/pipeline_vs_ffmpeg.py).
MIN_SCORED_FRAMES = 3

# The pads the encode's own graph hands the measurement: the encoder's frames (selected)
# and, when the rendition is smaller than the ladder's largest, the source at that size.
ENCODED = "vtp_enc"
REFERENCE = "vtp_ref"
DISPLAY_REFERENCE = "vtp_big"
SOUND = "vtp_sound"  # the encode's sound, when it has some, through the same graph
_OWN_LOG = "vmaf.json"
_DISPLAY_LOG = "vmaf-display.json"
_SSIM_LOG = "ssim.log"
_PLAIN_PATH = re.compile(r"[\w./-]+")
# The most pixels a comparison is made at: 1920x1080 (see the module doc).
COMPARED_PIXELS = 1920 * 1080


@dataclass(frozen=True)
class Measurement:
    """How one encode measures itself: every `step`-th frame scored (with the frame before
    it), its logs in `logs` (a folder of its own: never the upload folder), and, when
    `display` is set, scaled up to that size too."""

    step: int
    frames_per_part: int  # a "part" of the record: a segment's length of frames
    logs: Path
    threads: int
    pixel_format: str
    display: tuple[int, int] | None = None
    # Set for a rendition larger than COMPARED_PIXELS: both pictures scaled to this first.
    compared: tuple[int, int] | None = None
    # The display comparison scores every n-th of the scored frames (see the module doc).
    display_every: int = 1

    @property
    def _fit(self) -> str:
        """Where pictures larger than 1080p are compared at 1080p: the scaling, else none."""
        return f",scale={self.compared[0]}:{self.compared[1]}" if self.compared else ""

    @property
    def select(self) -> str:
        """The filter keeping each scored frame and the one before it."""
        return _pairs(self.step)

    @property
    def display_step(self) -> int:
        """Frames between two frames the display comparison scores."""
        return self.step * self.display_every

    def encode_side(self, picture: str, display_picture: str | None) -> str:
        """The encode's filter graph: `picture` (the rendition's filters, on its grid) feeds
        the encoder (`[ENCODED]`) and the measurement; `display_picture`, the filters that
        make the source the display size on the same grid, with `{select}` where frames
        may be dropped (before the scaling, so only the kept ones are scaled)."""
        graph = [f"[0:V:0]{'split=2[vtp_src][vtp_big_src];[vtp_src]' if self.display else ''}"
                 f"{picture},split=2[{ENCODED}][vtp_own]",
                 f"[vtp_own]{self.select}{self._fit}[{REFERENCE}]"]  # fmt: skip
        if self.display:
            if display_picture is None:
                raise ValueError("a display comparison needs the display-size filters")
            big = display_picture.replace("{select}", _pairs(self.display_step))
            graph.append(f"[vtp_big_src]{big}[{DISPLAY_REFERENCE}]")
        return ";".join(graph)

    def output_args(self) -> list[str]:
        """After the encode's output (file 0, its video stream 0): decode it again and
        compare, writing the logs; a null output consumes the comparisons' frames."""
        for path in (self.logs / _OWN_LOG, self.logs / _DISPLAY_LOG, self.logs / _SSIM_LOG):
            if not _PLAIN_PATH.fullmatch(str(path)):
                raise ValueError(f"not a plain path for a filter option: {path}")
        sync = "shortest=1:repeatlast=0"
        vmaf = f"libvmaf=log_fmt=json:n_subsample=2:n_threads={self.threads}:{sync}"
        branches = 3 if self.display else 2
        # What the pair selection passed on is the first frame, then (before, scored)
        # pairs: the scored frames are its even ones, and every r-th pair of it is
        # _pairs(2r) of it.
        scored_only = "select=expr=not(mod(n\\,2))"
        graph = [
            f"[dec:0]{self.select}{self._fit},setpts=PTS-STARTPTS,split={branches}"
            + "".join(f"[vtp_d{i}]" for i in range(branches)),
            f"[{REFERENCE}]setpts=PTS-STARTPTS,split=2[vtp_r0][vtp_r1]",
            f"[vtp_d0][vtp_r0]{vmaf}:log_path={self.logs / _OWN_LOG}[vtp_q0]",
            f"[vtp_d1]{scored_only}[vtp_s1]",
            f"[vtp_r1]{scored_only}[vtp_t1]",
            f"[vtp_s1][vtp_t1]ssim=stats_file={self.logs / _SSIM_LOG}:{sync}[vtp_q1]",
        ]
        outputs = ["vtp_q0", "vtp_q1"]
        if self.display:
            w, h = self.display
            fewer = f"{_pairs(2 * self.display_every)}," if self.display_every > 1 else ""
            graph += [
                f"[vtp_d2]{fewer}scale={w}:{h},setsar=1,format={self.pixel_format}[vtp_up]",
                f"[{DISPLAY_REFERENCE}]setpts=PTS-STARTPTS[vtp_rb]",
                f"[vtp_up][vtp_rb]{vmaf}:log_path={self.logs / _DISPLAY_LOG}[vtp_q2]",
            ]
            outputs.append("vtp_q2")
        maps = [arg for name in outputs for arg in ("-map", f"[{name}]")]
        return [
            # The loopback decoder (options before `-dec` are its own) on one thread: frame
            # threads cost 0.2 CPU-s of a 2 s 1080p encode's 3 in hand-over alone, and one
            # thread decodes several times faster than the encoder it follows produces.
            "-threads", "1", "-dec", "0:0",
            "-filter_complex", ";".join(graph), *maps, "-f", "null", "-",
        ]  # fmt: skip

    def read(self) -> tuple[QualityScore, QualityScore | None]:
        """The scores the run logged: at the rendition's size (with SSIM), and at the
        display size when compared there. FfmpegError when a log is missing or empty."""
        own = self._vmaf(self.logs / _OWN_LOG, self.step)
        ssim = read_ssim_log(self.logs / _SSIM_LOG)
        shown = self._vmaf(self.logs / _DISPLAY_LOG, self.display_step) if self.display else None
        return (
            pooled(self._parts(own), ssim),
            pooled(self._parts(shown)) if shown is not None else None,
        )

    def _vmaf(self, path: Path, step: int) -> list[tuple[int, float]]:
        """(output frame number, VMAF) of each scored frame, scored every `step` frames."""
        # libvmaf numbers the frames it was given: pairs, the second of each scored.
        return [((number // 2) * step, score) for number, score in read_vmaf_log(path)]

    def _parts(self, scored: list[tuple[int, float]]) -> list[list[float]]:
        """The scores grouped by segment-long stretches of the output: a part's mean is how
        one stretch looks, the worst of them the record's `worst`."""
        parts: dict[int, list[float]] = {}
        for number, score in scored:
            parts.setdefault(number // self.frames_per_part, []).append(score)
        return [parts[k] for k in sorted(parts)]


def plan(
    frames: int,
    fps: float,
    *,
    logs: Path,
    settings: Settings,
    pixel_format: str,
    display: tuple[int, int] | None,
    size: tuple[int, int],
) -> Measurement:
    """How an encode of `frames` frames at `size` measures itself (see the module doc):
    compared at `display` too when that is the larger picture."""
    share = math.ceil(settings.quality_measure_share * frames)
    scored = max(MIN_SCORED_FRAMES, min(settings.quality_measure_max_frames, share))
    display = _capped(display) if display is not None else None
    compared = _capped(size)
    larger = display is not None and display[0] * display[1] > compared[0] * compared[1]
    return Measurement(
        step=max(2, frames // scored),
        frames_per_part=max(1, round(settings.segment_seconds * fps)),
        logs=logs,
        threads=max(1, settings.quality_vmaf_threads),
        pixel_format=pixel_format,
        display=display if larger else None,
        compared=compared if compared != size else None,
        display_every=2 if scored >= 2 * MIN_SCORED_FRAMES else 1,
    )


def _pairs(step: int) -> str:
    """The filter keeping frames 0, step - 1, step, 2 step - 1, 2 step...: each scored
    frame and the one before it."""
    return rf"select=expr=not(mod(n+1\,{step}))+not(mod(n\,{step}))"


def _capped(size: tuple[int, int]) -> tuple[int, int]:
    """`size`, or the same shape at COMPARED_PIXELS when it is larger (even sides)."""
    w, h = size
    if w * h <= COMPARED_PIXELS:
        return size
    f = math.sqrt(COMPARED_PIXELS / (w * h))
    return max(2, round(w * f / 2) * 2), max(2, round(h * f / 2) * 2)
