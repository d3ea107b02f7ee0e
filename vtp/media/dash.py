"""The job's DASH manifest (`manifest.mpd`) over the very segments its HLS playlists list.

The renditions are CMAF-style already: fMP4 segments, one track each (the sound is a
rendition of its own: vtp.media.ladder.audio_renditions), every segment starting with an IDR frame
on the shared keyframe grid. So DASH needs no second copy of the media, only a second index
of it: each Representation points at the rendition's init segment and segments where the
HLS media playlist points, with the same durations. The media playlists are the source of
truth for both (a chunked rendition's lists segments across its chunks' folders).

How segments are addressed:

* a rendition whose segments sit in one folder, numbered on, gets a SegmentTemplate with a
  SegmentTimeline (`$Number$`, run-length `r`): a few lines for an hour of video;
* one whose segments are spread over folders (a rendition encoded in chunks) gets a
  SegmentList, with one `S` per segment: dash.js (5.2) takes the SegmentURL of an `S` with
  `r` for all its repeats, so runs are never folded there.

Durations are in the track's own timescale, from the playlist's EXTINF (ffmpeg writes them
from the packets' timestamps, to the microsecond: exact after rounding for any timescale
up to 500 kHz).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vtp.media.encode import RenditionResult, parse_media_playlist
from vtp.models import RenditionSpec

MPD_NAMESPACE = "urn:mpeg:dash:schema:mpd:2011"
PROFILE_LIVE = "urn:mpeg:dash:profile:isoff-live:2011"  # SegmentTemplate everywhere
PROFILE_MAIN = "urn:mpeg:dash:profile:isoff-main:2011"  # SegmentList allowed
ROLE_SCHEME = "urn:mpeg:dash:role:2011"
CHANNELS_SCHEME = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"

_NUMBERED = re.compile(r"^(?P<folder>(?:.*/)?)seg_(?P<number>\d{5})\.m4s$")


class Segment(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str = Field(description="relative to the manifest")
    duration: int = Field(gt=0, description="in the track's timescale")


class Track(BaseModel):
    """One Representation: a rendition's segments and what a player chooses it by."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    kind: Literal["video", "audio"]
    bandwidth: int = Field(gt=0, description="peak bit/s, as HLS's BANDWIDTH")
    codecs: str
    timescale: int = Field(gt=0)
    init: str = Field(description="the init segment, relative to the manifest")
    segments: list[Segment] = Field(min_length=1)
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    language: str | None = None
    label: str | None = None
    default: bool = False
    # An HDR video rendition's transfer (vtp.media.colour): "pq" or "hlg"; "sdr" otherwise.
    dynamic_range: Literal["sdr", "pq", "hlg"] = "sdr"

    @property
    def seconds(self) -> float:
        return sum(s.duration for s in self.segments) / self.timescale


class Subtitles(BaseModel):
    """A WebVTT subtitle track: one file, a text AdaptationSet of its own."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    url: str = Field(description="the .vtt file, relative to the manifest")
    bandwidth: int = Field(gt=0)
    language: str | None = None
    label: str | None = None
    forced: bool = False


def track_from_playlist(playlist: str, folder: str, *, timescale: int, **fields: object) -> Track:
    """A Track over the segments of an HLS media playlist found in `folder` (relative to
    the manifest); `fields` are the Track's other fields."""
    init, listed = parse_media_playlist(playlist)
    if init is None or not listed:
        raise ValueError("the media playlist names no init segment or no segments")
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    segments = [
        Segment(path=prefix + uri, duration=max(1, round(seconds * timescale)))
        for uri, seconds in listed
    ]
    return Track.model_validate(
        fields | {"timescale": timescale, "init": prefix + init, "segments": segments}
    )


def rendition_track(
    playlist: str, folder: str, result: RenditionResult, spec: RenditionSpec
) -> Track:
    """The Track of a video or sound rendition, from its stored media playlist (found in
    `folder`, relative to the manifest), what its encode recorded and its spec. ValueError
    for a result from before timescales were recorded."""
    if result.timescale is None:
        raise ValueError(f"rendition {spec.name} was encoded before DASH could index it")
    video = spec.kind == "video"
    return track_from_playlist(
        playlist,
        folder,
        timescale=result.timescale,
        id=spec.name,
        kind=spec.kind,
        bandwidth=result.peak_bitrate,
        codecs=result.codecs,
        width=result.width if video else None,
        height=result.height if video else None,
        fps=result.fps if video else None,
        language=spec.language,
        label=spec.label,
        default=spec.default_track,
        dynamic_range=spec.dynamic_range if video else "sdr",
    )


def manifest(
    tracks: Sequence[Track], subtitles: Sequence[Subtitles] = (), *, title: str | None = None
) -> str:
    """The static MPD over `tracks`: one video AdaptationSet per codec family (players
    switch within one, and pick the family they decode), one audio AdaptationSet per
    sound track (its language, its name, `main` for the default one), one text
    AdaptationSet per subtitle track (the whole WebVTT file, as its BaseURL)."""
    video = [t for t in tracks if t.kind == "video"]
    audio = [t for t in tracks if t.kind == "audio"]
    if not video and not audio:
        raise ValueError("a manifest needs at least one video or sound rendition")
    templated = all(_template(t) is not None for t in tracks)
    # The picture's length; a job of sound alone lasts as long as its longest track.
    duration = max(t.seconds for t in video or audio)
    longest = max(s.duration / t.timescale for t in tracks for s in t.segments)
    root = ET.Element(
        "MPD",
        {
            "xmlns": MPD_NAMESPACE,
            "profiles": PROFILE_LIVE if templated else PROFILE_MAIN,
            "type": "static",
            "mediaPresentationDuration": _duration(duration),
            "minBufferTime": _duration(longest),
        },
    )
    if title:
        info = ET.SubElement(root, "ProgramInformation")
        ET.SubElement(info, "Title").text = title
    period = ET.SubElement(root, "Period", {"id": "0", "start": "PT0S"})
    next_id = 0
    # One set per codec family and dynamic range: a player switches within a set, and never
    # between an SDR picture and an HDR one.
    families: dict[tuple[str, str], list[Track]] = {}
    for t in video:
        families.setdefault((t.codecs.split(".")[0], t.dynamic_range), []).append(t)
    for (_, dynamic_range), members in families.items():
        members = sorted(members, key=lambda t: (t.bandwidth, t.id))
        aset = ET.SubElement(period, "AdaptationSet", _video_set(next_id, members))
        next_id += 1
        _colour_properties(aset, dynamic_range)
        for t in members:
            rep = ET.SubElement(aset, "Representation", _video_rep(t))
            _segments(rep, t)
    ordered = sorted(audio, key=lambda t: not t.default)  # the default first
    for i, t in enumerate(ordered):
        attrs = {"id": str(next_id), "contentType": "audio", "mimeType": "audio/mp4"}
        if t.language:
            attrs["lang"] = t.language
        attrs |= {"segmentAlignment": "true", "startWithSAP": "1"}
        aset = ET.SubElement(period, "AdaptationSet", attrs)
        next_id += 1
        if t.label:
            ET.SubElement(aset, "Label").text = t.label
        role = "main" if i == 0 else "alternate"
        ET.SubElement(aset, "Role", {"schemeIdUri": ROLE_SCHEME, "value": role})
        rep = ET.SubElement(
            aset,
            "Representation",
            {"id": t.id, "bandwidth": str(t.bandwidth), "codecs": t.codecs,
             "audioSamplingRate": "48000"},
        )  # fmt: skip
        ET.SubElement(rep, "AudioChannelConfiguration", {"schemeIdUri": CHANNELS_SCHEME,
                                                         "value": "2"})  # fmt: skip
        _segments(rep, t)
    for s in subtitles:
        attrs = {"id": str(next_id), "contentType": "text", "mimeType": "text/vtt"}
        if s.language:
            attrs["lang"] = s.language
        aset = ET.SubElement(period, "AdaptationSet", attrs)
        next_id += 1
        if s.label:
            ET.SubElement(aset, "Label").text = s.label
        role = "forced-subtitle" if s.forced else "subtitle"
        ET.SubElement(aset, "Role", {"schemeIdUri": ROLE_SCHEME, "value": role})
        rep = ET.SubElement(aset, "Representation", {"id": s.id, "bandwidth": str(s.bandwidth)})
        ET.SubElement(rep, "BaseURL").text = s.url
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


CICP = "urn:mpeg:mpegB:cicp:"
# H.273 code points: BT.2020 primaries and non-constant-luminance matrix; PQ and HLG.
_HDR_TRANSFER = {"pq": "16", "hlg": "18"}


def _colour_properties(aset: ET.Element, dynamic_range: str) -> None:
    """An HDR set's colour, as DASH-IF's guidelines signal it (H.273 code points): BT.2020,
    and its transfer. PQ's is essential (a player that cannot show PQ must skip the set);
    HLG's supplemental (HLG is watchable as SDR)."""
    if dynamic_range == "sdr":
        return
    kind = "EssentialProperty" if dynamic_range == "pq" else "SupplementalProperty"
    ET.SubElement(aset, kind, {"schemeIdUri": f"{CICP}TransferCharacteristics",
                               "value": _HDR_TRANSFER[dynamic_range]})  # fmt: skip
    for name in ("ColourPrimaries", "MatrixCoefficients"):
        ET.SubElement(aset, "SupplementalProperty", {"schemeIdUri": f"{CICP}{name}", "value": "9"})


def _video_set(index: int, members: Sequence[Track]) -> dict[str, str]:
    return {
        "id": str(index),
        "contentType": "video",
        "mimeType": "video/mp4",
        "segmentAlignment": "true",  # one keyframe grid for all (vtp.media.encode)
        "startWithSAP": "1",  # every segment starts with an IDR frame
        "maxWidth": str(max(t.width or 0 for t in members)),
        "maxHeight": str(max(t.height or 0 for t in members)),
    }


def _video_rep(t: Track) -> dict[str, str]:
    rate = Fraction(t.fps or 0).limit_denominator(1001)
    return {
        "id": t.id,
        "bandwidth": str(t.bandwidth),
        "codecs": t.codecs,
        "width": str(t.width),
        "height": str(t.height),
        "frameRate": str(rate.numerator) if rate.denominator == 1 else f"{rate}",
        "sar": "1:1",
    }


def _segments(parent: ET.Element, t: Track) -> None:
    """The track's SegmentTemplate (one folder, numbered on) or SegmentList."""
    template = _template(t)
    if template is not None:
        folder, first = template
        node = ET.SubElement(
            parent,
            "SegmentTemplate",
            {"timescale": str(t.timescale), "startNumber": str(first), "initialization": t.init,
             "media": f"{folder}seg_$Number%05d$.m4s"},
        )  # fmt: skip
        _timeline(node, t, runs=True)
        return
    node = ET.SubElement(parent, "SegmentList", {"timescale": str(t.timescale)})
    ET.SubElement(node, "Initialization", {"sourceURL": t.init})
    _timeline(node, t, runs=False)
    for s in t.segments:
        ET.SubElement(node, "SegmentURL", {"media": s.path})


def _timeline(parent: ET.Element, t: Track, *, runs: bool) -> None:
    timeline = ET.SubElement(parent, "SegmentTimeline")
    durations = [s.duration for s in t.segments]
    i = 0
    while i < len(durations):
        j = i + 1
        while runs and j < len(durations) and durations[j] == durations[i]:
            j += 1
        attrs = {"t": "0"} if i == 0 else {}
        attrs["d"] = str(durations[i])
        if j - i > 1:
            attrs["r"] = str(j - i - 1)
        ET.SubElement(timeline, "S", attrs)
        i = j


def _template(t: Track) -> tuple[str, int] | None:
    """(folder, first number) when every segment is `<folder>seg_NNNNN.m4s`, numbered on
    without a gap, beside the init segment; None otherwise."""
    numbers = []
    folders = set()
    for s in t.segments:
        match = _NUMBERED.match(s.path)
        if match is None:
            return None
        folders.add(match["folder"])
        numbers.append(int(match["number"]))
    if len(folders) != 1 or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return None
    (folder,) = folders
    init_folder = t.init.rpartition("/")[0]
    if (f"{init_folder}/" if init_folder else "") != folder:
        return None
    return folder, numbers[0]


def _duration(seconds: float) -> str:
    """xs:duration, to the millisecond."""
    return f"PT{seconds:.3f}S"
