"""EBU R128 loudness normalisation of a sound track, the two-pass way.

One pass of ffmpeg's `loudnorm` has to guess the whole programme's loudness as it goes and
rides the gain dynamically (a compressor, audible on speech with music). Measured first, the
whole track's integrated loudness, range and true peak are known, and the second pass can
apply one constant gain (`linear=true`) whenever the target's true-peak ceiling allows it:
the sound is as mixed, only louder or quieter. The measurement is recorded with the
rendition, so what was done can be checked later.
"""

from __future__ import annotations

import logging
import re
import threading

from pydantic import BaseModel, ConfigDict, Field

from vtp.errors import FfmpegError
from vtp.media.ffmpeg import run_ffmpeg, untrusted_input

log = logging.getLogger(__name__)

# The ceiling for true peaks after normalising (dBTP), and the loudness range loudnorm keeps
# (LU): EBU R128's and the streaming services' common values.
TRUE_PEAK_DBTP = -1.5
LOUDNESS_RANGE_LU = 11.0

# loudnorm's JSON, one `"name" : "value"` a line (the log's tail joins lines with " | ").
_FIELD = re.compile(r'"(?P<name>[a-z_]+)"\s*:\s*"(?P<value>[^"]*)"')


class Loudness(BaseModel):
    """What the first pass measured (loudnorm's input_* figures)."""

    model_config = ConfigDict(frozen=True)

    integrated: float = Field(description="integrated loudness, LUFS")
    true_peak: float = Field(description="dBTP")
    loudness_range: float = Field(description="LU")
    threshold: float = Field(description="the gating threshold, LUFS")


def measure(
    source_url: str,
    track: int,
    *,
    duration: float,
    timeout: float,
    target: float,
    cancel: threading.Event | None = None,
) -> Loudness:
    """The loudness of sound track `track` over the first `duration` seconds (the probed
    duration, as the encode reads). FfmpegError when ffmpeg measures nothing, e.g. a track
    of digital silence (loudnorm then prints -inf)."""
    args = [
        *untrusted_input(source_url),
        "-map",
        f"0:a:{track}",
        "-vn",
        "-sn",
        "-dn",
        "-t",
        f"{duration:.3f}",
        "-af",
        f"{_filter(target)}:print_format=json",
        "-f",
        "null",
        "-",
    ]
    # loudnorm prints its figures at the info level, after the run's summary.
    result = run_ffmpeg(args, timeout=timeout, cancel=cancel, loglevel="info")
    return parse(result.stderr_tail)


def parse(output: str) -> Loudness:
    """loudnorm's figures from an ffmpeg log (the last block of them)."""
    start = output.rfind('"input_i"')
    if start < 0:
        raise FfmpegError("the loudness measurement printed no figures")
    data = {m["name"]: m["value"] for m in _FIELD.finditer(output, start)}
    try:
        measured = Loudness(
            integrated=float(data["input_i"]),
            true_peak=float(data["input_tp"]),
            loudness_range=float(data["input_lra"]),
            threshold=float(data["input_thresh"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise FfmpegError(f"the loudness measurement is unreadable: {exc}") from None
    if not all(
        -200 < v < 100 for v in (measured.integrated, measured.true_peak, measured.threshold)
    ):
        # -inf: nothing above the gate (silence); a gain from it would be unbounded.
        raise FfmpegError(f"the sound measures {measured.integrated} LUFS: too quiet to normalise")
    return measured


def normalise_filter(target: float, measured: Loudness) -> str:
    """The second pass's filter: the measured figures, and a constant gain where possible.
    loudnorm works at 192 kHz; the encoder's `-ar` brings it back to 48 kHz."""
    return (
        f"{_filter(target)}:measured_I={measured.integrated:.2f}"
        f":measured_TP={measured.true_peak:.2f}:measured_LRA={measured.loudness_range:.2f}"
        f":measured_thresh={measured.threshold:.2f}:linear=true"
    )


def _filter(target: float) -> str:
    return f"loudnorm=I={target:g}:TP={TRUE_PEAK_DBTP:g}:LRA={LOUDNESS_RANGE_LU:g}"
