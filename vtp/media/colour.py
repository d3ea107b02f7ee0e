"""Colour: every H.264 rendition is 8-bit BT.709 SDR, whatever the source's picture is.

Phones record HDR (10-bit HEVC, BT.2020 primaries, PQ or HLG transfer; Dolby Vision on a PQ
or HLG base layer); broadcast and DVD sources are BT.601. Players show an 8-bit rendition as
its tags say, so passing an HDR source's tags through with SDR pixels makes a washed-out
picture, and converting without retagging does the same in the other direction. Each
rendition therefore converts the picture (`picture_filters`) and says BT.709 in the stream
and the container (`OUTPUT_TAGS`).

HDR is tone-mapped: linear light at a nominal peak, BT.2020 to BT.709 primaries in linear
light, a tone curve squeezing the highlights into SDR range, then BT.709's transfer and
matrix (zscale, which also scales in the same pass). The chain and its operator were
chosen by measuring SSIM against the SDR picture the HDR test sources were made from
(tests/footage.py; the figures are in the README).
"""

from __future__ import annotations

from typing import Literal

from vtp.models import RenditionSpec, SourceInfo

Conversion = Literal["pq", "hlg", "bt601"]

# ffprobe's names for the transfers of HDR video.
_PQ = frozenset({"smpte2084"})
_HLG = frozenset({"arib-std-b67"})
# Standard definition's matrices (PAL's and NTSC's are the same one).
_BT601 = frozenset({"bt470bg", "smpte170m"})
# Below this many lines an untagged picture is taken for standard definition, as players
# take it.
_SD_LINES = 576

# The tags every rendition carries: BT.709 primaries, transfer and matrix, limited range.
OUTPUT_TAGS = [
    "-color_primaries", "bt709", "-color_trc", "bt709",
    "-colorspace", "bt709", "-color_range", "tv",
]  # fmt: skip

# Where HDR's SDR white is (cd/m2): BT.2408's reference white, 203, which phones and
# grading follow; linear light is counted in it, so what an SDR picture would show as
# white comes out white. (Counted in 100, PQ scores 0.91-0.92 where 203 gives 0.96.)
_SDR_WHITE_NITS = 203
# Mobius: linear (exact) up to half of SDR white, then a smooth roll-off of the highlights
# above it (a phone's 1000 cd/m2 sky) into the rest. 0.5 has the best worst case over
# where phones put their highlight knee (SSIM >= 0.96 at 360p); 0.9 is a little better
# without highlights and worse with them; hable and reinhard darken the mid-tones. desat=0:
# desaturating highlights only washes them out. (The figures are in the README.)
_TONEMAP = "tonemap=tonemap=mobius:param=0.5:desat=0"


_TRANSFERS = {"pq": "smpte2084", "hlg": "arib-std-b67"}


def output_tags(dynamic_range: str) -> list[str]:
    """A rendition's colour tags: BT.709 for SDR; an HDR rendition's BT.2020 and its
    transfer, as the source had them."""
    if dynamic_range == "sdr":
        return list(OUTPUT_TAGS)
    return ["-color_primaries", "bt2020", "-color_trc", _TRANSFERS[dynamic_range],
            "-colorspace", "bt2020nc", "-color_range", "tv"]  # fmt: skip


def pixel_format(dynamic_range: str) -> str:
    """8-bit 4:2:0 for SDR (what High profile and every player takes); 10-bit for HDR,
    whose wider range would band in 8."""
    return "yuv420p" if dynamic_range == "sdr" else "yuv420p10le"


def x265_params(spec: RenditionSpec) -> list[str]:
    """x265's own signalling of an HDR rendition: its colour (in the VUI), and for PQ the
    HDR10 static metadata SEI (mastering display, content light levels) of the source."""
    if spec.dynamic_range == "sdr":
        return []
    params = ["colorprim=bt2020", f"transfer={_TRANSFERS[spec.dynamic_range]}",
              "colormatrix=bt2020nc", "range=limited"]  # fmt: skip
    if spec.dynamic_range == "pq":
        params += ["hdr10=1", "hdr10-opt=1"]
        if spec.mastering_display:
            params.append(f"master-display={spec.mastering_display}")
        if spec.content_light:
            params.append(f"max-cll={spec.content_light}")
    return params


def dynamic_range(transfer: str | None) -> Literal["sdr", "pq", "hlg"]:
    """ "pq", "hlg" or "sdr", from a stream's transfer characteristic."""
    if transfer in _PQ:
        return "pq"
    if transfer in _HLG:
        return "hlg"
    return "sdr"


def conversion_for(source: SourceInfo) -> Conversion | None:
    """What the source's picture needs to become BT.709 SDR; None when it is already."""
    if source.dynamic_range != "sdr":
        return source.dynamic_range
    if source.color_matrix in _BT601:
        return "bt601"
    if source.color_matrix is None and 0 < min(source.width, source.height) <= _SD_LINES:
        return "bt601"
    return None


def scale_filters(conversion: Conversion | None, width: int, height: int) -> list[str]:
    """The filters taking a source frame to a `width`x`height` BT.709 SDR picture, before
    its pixel format is set."""
    if conversion is None:
        return [f"scale={width}:{height}"]
    if conversion == "bt601":
        # The matrix alone (fast=1: primaries and transfer left as they are, as players
        # treat SD), by the colorspace filter after scaling: swscale's own conversion
        # (in/out_color_matrix) takes a path that softens fine detail (measured on grain:
        # 28% fewer bits at CRF 24, the grain gone). The input's matrix is named, not
        # guessed from tags an SD file often lacks; colorspace takes 4:2:0, so DV's 4:1:1
        # is made that first.
        return [f"scale={width}:{height}", "format=yuv420p",
                "colorspace=all=bt709:iall=bt601-6-625:fast=1"]  # fmt: skip
    transfer = "smpte2084" if conversion == "pq" else "arib-std-b67"
    return [
        # Resized first (cheap: 133 fps against 60 resizing at the end, 38 against 9 from
        # 4K), to linear light in float (nothing clips before the curve) and to BT.709's
        # primaries in one pass. The input's colour is named, not read from the frames:
        # some files carry it in the container only, which the decoder does not pass on,
        # and the output primaries must be named in the same pass, or zscale finds "no
        # path between colorspaces".
        f"zscale=w={width}:h={height}:f=bicubic:tin={transfer}:pin=bt2020:min=bt2020nc:rin=tv"
        f":t=linear:p=bt709:npl={_SDR_WHITE_NITS}",
        "format=gbrpf32le",
        _TONEMAP,
        # BT.709's transfer and matrix, limited range; the 4:2:0 format straight after, so
        # zscale does the RGB to YCbCr step (a later swscale would use BT.601's matrix).
        "zscale=t=bt709:m=bt709:r=tv",
        "format=yuv420p",
    ]
