"""The video codecs a ladder can be encoded in, and what each one needs said to it.

H.264 (x264) plays everywhere and is every job's ladder. A job may add HEVC (x265, tagged
`hvc1` so Apple players accept it in fMP4) and AV1 (SVT-AV1): fewer bits at the same
quality, for the players that decode them; the master playlist lists every variant with
its CODECS and a player keeps to what it can play (vtp.media.playlist, vtp.media.dash).

Every codec keeps the one keyframe grid (vtp.media.encode): x264, x265 and SVT-AV1 take forced
keyframes at each multiple of `gop_seconds` as closed key frames, scene cuts off. So every
codec is chunked alike, and the renditions of all codecs switch at the same instants.

Rate control is by quality, per codec: each codec's factor is searched on the title's
samples with its own encoder for the VMAF H.264's rung shows (vtp.media.tuning), under a cap
scaled by what the codec saves. The search runs on x264's scale and `crf_for` carries each
probe to the encoder's own (x265's CRF 28 is documented as x264's 23; SVT-AV1's 63-step
scale puts the same point near 35): the mapping only has to be monotonic and roughly
even for the interpolation between probes, since every probe is measured. The measured VMAF
of every rendition (vtp.media.quality) shows what it gave.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from vtp.media import colour
from vtp.models import RenditionSpec
from vtp.settings import Settings

Codec = Literal["h264", "hevc", "av1"]
CODECS: tuple[Codec, ...] = ("h264", "hevc", "av1")

# x264's preset for a spec that names none (planned before presets were part of the plan).
LEGACY_PRESET = "veryfast"

# How much lower each codec's cap is than H.264's for the same picture: HEVC's and AV1's
# usual savings at equal quality, kept modest so the cap never binds before H.264's would.
CAP_FACTOR: dict[str, float] = {"h264": 1.0, "hevc": 0.75, "av1": 0.65}

_PROFILE_IDC = {"baseline": (66, 0xC0), "main": (77, 0x40), "high": (100, 0x00)}


def crf_for(codec: str, x264_crf: float) -> float:
    """The factor for `codec` that aims where `x264_crf` does on x264's scale, by VMAF.

    Measured with the pinned build at the product's presets (bench/quality.py, docs/quality.md):
    at equal VMAF x265 `fast` sits 0 to 2 factors above x264 `medium` (not the 5 of x265's
    PSNR-era documentation: with 5, a cartoon's 1080p rung could not get below CRF 21 and
    stopped at VMAF 93.4 for a target of 95), and SVT-AV1 6 from 1.5x to 2x x264's factor
    (31 for 19.5 on a cartoon, 44 to 49 for 20-24 on natural and still pictures). So x264's
    range (crf_min 16 .. crf_max 36) spans SVT-AV1's useful one, 24 .. 63: with the earlier
    1.35x + 4, three probes never got past 49, and every 360p AV1 rendition of the corpus but
    one came out at VMAF 95 for a target of 90, spending bits H.264 did not."""
    if codec == "hevc":
        return min(51.0, x264_crf + 1)
    if codec == "av1":
        return float(min(63, max(1, round(x264_crf * 1.95 - 7))))
    return x264_crf


def encoder_args(spec: RenditionSpec, settings: Settings) -> list[str]:
    """`-c:v` and the encoder's options, keyframe grid included (`-force_key_frames` is
    given by the caller for the encoders that honour it: `forces_keyframes`)."""
    gop = settings.gop_seconds
    if spec.codec == "hevc":
        # x265's own interval is a backstop, as x264's; its scene cuts off, GOPs closed.
        keyint = max(1, math.ceil(2 * gop * spec.fps))
        params = [f"keyint={keyint}", "min-keyint=1", "scenecut=0", "open-gop=0",
                  "log-level=error", "repeat-headers=0", *colour.x265_params(spec)]  # fmt: skip
        if spec.crf is not None:
            params += [f"vbv-maxrate={spec.max_bitrate // 1000}",
                       f"vbv-bufsize={spec.buffer_size // 1000}"]  # fmt: skip
        return [
            "-c:v", "libx265", "-preset", spec.preset or settings.hevc_preset,
            "-tag:v", "hvc1",  # hvc1, not hev1: parameter sets in the init segment only
            "-profile:v", "main" if spec.dynamic_range == "sdr" else "main10",
            *(["-crf", f"{spec.crf:g}"] if spec.crf is not None
              else ["-b:v", str(spec.video_bitrate)]),
            "-x265-params", ":".join(params),
            "-forced-idr", "1",
        ]  # fmt: skip
    if spec.codec == "av1":
        # SVT-AV1 4.x (docs/ffmpeg.md): `-crf` with `-maxrate` is its capped CRF, the same
        # constant quality under a cap as x264's and x265's; it takes the forced keyframes
        # of the grid as key frames, so AV1 is chunked like the others.
        keyint = max(1, math.ceil(2 * gop * spec.fps))
        return [
            "-c:v", "libsvtav1", "-preset", spec.preset or str(settings.av1_preset),
            *(["-crf", f"{round(spec.crf)}", "-maxrate", str(spec.max_bitrate),
               "-bufsize", str(spec.buffer_size)] if spec.crf is not None
              else ["-b:v", str(spec.video_bitrate)]),
            "-g", str(keyint),  # a backstop, as x264's: the forced keyframes make the grid
            # scd=0: no key frames on scene changes (they would differ between chunks);
            # irefresh-type=2: key frames are closed (IDR-like), each segment decodes alone.
            "-svtav1-params", "scd=0:irefresh-type=2",
        ]  # fmt: skip
    return [
        "-c:v", "libx264", "-preset", spec.preset or LEGACY_PRESET,
        "-profile:v", spec.profile, "-level:v", spec.level,
        *rate_control_args(spec),
        "-g", str(max(1, math.ceil(2 * gop * spec.fps))),
        "-forced-idr", "1",  # forced keyframes as IDR frames: each segment decodes alone
        "-sc_threshold", "0",  # no extra keyframes on scene cuts: they would differ
    ]  # fmt: skip


def rate_control_args(spec: RenditionSpec) -> list[str]:
    """x264: constant quality under a VBV cap, or (a spec with no `crf`) a bit-rate target.

    With `-crf`, x264 spends what each scene needs for the same quality: a still slide gets
    a fraction of what a crowd scene gets. `-maxrate`/`-bufsize` bound it: over any stretch
    of `bufsize / maxrate` seconds (two) the stream never exceeds the cap, which is what
    players' bandwidth estimates and the H.264 level rely on.
    """
    if spec.crf is not None:
        return ["-crf", f"{spec.crf:g}", "-maxrate", str(spec.max_bitrate),
                "-bufsize", str(spec.buffer_size)]  # fmt: skip
    return ["-b:v", str(spec.video_bitrate), "-maxrate", str(spec.max_bitrate),
            "-bufsize", str(spec.buffer_size)]  # fmt: skip


def codec_string(init_path: Path | None, spec: RenditionSpec) -> str:
    """The RFC 6381 codecs string of a video rendition, from the decoder configuration its
    encoder wrote in the init segment (avcC, hvcC, av1C); from the spec when unreadable."""
    data = init_path.read_bytes() if init_path is not None and init_path.is_file() else b""
    if spec.codec == "hevc":
        return _hevc(data) or "hvc1.1.6.L93.B0"
    if spec.codec == "av1":
        return _av1(data) or "av01.0.04M.08"
    at = data.find(b"avcC")
    # avcC payload: configurationVersion, AVCProfileIndication, profile_compatibility,
    # AVCLevelIndication: exactly the three bytes of the codecs string.
    if at >= 0 and len(data) >= at + 8:
        profile, compat, level = data[at + 5], data[at + 6], data[at + 7]
        return f"avc1.{profile:02x}{compat:02x}{level:02x}"
    profile_idc, constraints = _PROFILE_IDC.get(spec.profile, _PROFILE_IDC["high"])
    level_idc = round(float(spec.level) * 10)
    return f"avc1.{profile_idc:02x}{constraints:02x}{level_idc:02x}"


def _hevc(data: bytes) -> str | None:
    """`hvc1.<space><profile>.<compat, bit-reversed>.<tier><level>.<constraints>`
    (ISO/IEC 14496-15 E.3) from an hvcC box."""
    at = data.find(b"hvcC")
    if at < 0 or len(data) < at + 4 + 13:
        return None
    box = data[at + 4 :]
    first = box[1]
    space = "" if first >> 6 == 0 else "ABC"[(first >> 6) - 1]
    tier = "H" if first & 0x20 else "L"
    profile = first & 0x1F
    compat = int.from_bytes(box[2:6], "big")
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    constraints = list(box[6:12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    level = box[12]
    tail = "".join(f".{b:X}" for b in constraints)
    return f"hvc1.{space}{profile}.{reversed_compat:X}.{tier}{level}{tail}"


def _av1(data: bytes) -> str | None:
    """`av01.<profile>.<level><tier>.<bit depth>` (AV1 codec ISO-BMFF binding) from av1C."""
    at = data.find(b"av1C")
    if at < 0 or len(data) < at + 4 + 3:
        return None
    box = data[at + 4 :]
    profile, level = box[1] >> 5, box[1] & 0x1F
    tier = "H" if box[2] & 0x80 else "M"
    depth = 12 if box[2] & 0x40 and box[2] & 0x20 else 10 if box[2] & 0x40 else 8
    return f"av01.{profile}.{level:02d}{tier}.{depth:02d}"
