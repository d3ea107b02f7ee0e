"""The encoders' presets and options, chosen by measurement: bits at the rung's VMAF target
against encode CPU time, per codec, on the quality benchmark's corpus (bench/quality.py).

Per clip, the RUNG rung as a job plans it (vtp.media.ladder), encoded whole with the real
encode arguments (vtp.media.encode.encode_args, video only, no VBV cap: the comparison is of
the encoders, and a cap binds differently on each) by every VARIANT: a codec, a preset, and
optionally encoder options added to the product's (x264 `-x264-params`, x265
`-x265-params`, SVT-AV1 `-svtav1-params`). Each variant encodes at three factors of its
codec's scale around the target (more where the target lies outside them); its bit rate and
CPU time at the rung's VMAF target (vtp.settings.quality_targets) are interpolated (log bit
rate linear in VMAF; `*`: extrapolated). The table gives each variant's geometric mean over
the clips, against x264 at the product's preset and against the codec's present preset:
what backs `settings.hevc_preset` and `settings.av1_preset`.

CPU time is the ffmpeg process's user+sys (decoding the source included, the same for every
variant), so it does not depend on the machine's load; `-threads 1` (SVT-AV1 keeps its own
threads). The clips are made at the rung's size (VTP_BENCH_QUALITY_SIZE defaults to
1280x720 here), so no scaling is timed.
Knobs: VTP_BENCH_CODECS_CLIPS (natural,cartoon,noise), VTP_BENCH_CODECS_RUNG (720p),
VTP_BENCH_CODECS_VARIANTS (`codec:preset[:options]`, separated by spaces, e.g.
`av1:8:tune=0 h264:medium:aq-mode=3`; the default sweeps x265's and SVT-AV1's presets),
VTP_BENCH_QUALITY_SECONDS and VTP_BENCH_QUALITY_WORKERS (shared with bench/quality.py).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("VTP_BENCH_QUALITY_SIZE", "1280x720")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import (  # the benchmark folder's own module
    SECONDS,
    WORKERS,
    Clip,
    Measured,
    bits_at,
    corpus_folder,
    cpu_at,
    encode_and_measure,
    geomean,
    make_clip,
)

from vtp.media.codecs import crf_for
from vtp.media.ladder import plan_ladder
from vtp.media.probe import probe_source
from vtp.models import RenditionSpec
from vtp.settings import Settings

RUNG = os.environ.get("VTP_BENCH_CODECS_RUNG", "720p")
CLIP_NAMES = [
    c.strip()
    for c in os.environ.get("VTP_BENCH_CODECS_CLIPS", "natural,cartoon,noise").split(",")
    if c.strip()
]
DEFAULT_VARIANTS = (
    "h264:medium hevc:veryfast hevc:faster hevc:fast hevc:medium av1:10 av1:8 av1:6 av1:5"
)
VARIANTS = os.environ.get("VTP_BENCH_CODECS_VARIANTS", DEFAULT_VARIANTS).split()
# Factors on x264's scale around the target, carried to each codec's (vtp.media.codecs).
FACTORS = (20.0, 25.0, 30.0)
MORE = 5.0  # one step further each way, up to twice, when the target is outside the points
UNCAPPED = 1_000_000_000
_PARAMS = {"h264": "-x264-params", "hevc": "-x265-params", "av1": "-svtav1-params"}


@dataclass(frozen=True)
class Variant:
    codec: str
    preset: str
    options: str  # key=value[:key=value...] for the encoder's params option; "" for none

    @property
    def label(self) -> str:
        return f"{self.codec} {self.preset}" + (f" {self.options}" if self.options else "")

    def hook(self, args: list[str]) -> list[str]:
        """The encode's arguments with this variant's options added to the encoder's own."""
        if not self.options:
            return args
        option = _PARAMS[self.codec]
        if option in args:
            at = args.index(option) + 1
            return [*args[:at], f"{args[at]}:{self.options}", *args[at + 1 :]]
        return [*args, option, self.options]


def parse(text: str) -> Variant:
    codec, preset, *options = text.split(":", 2)
    if codec not in _PARAMS:
        raise SystemExit(f"unknown codec in variant {text!r}")
    return Variant(codec, preset, options[0] if options else "")


@dataclass(frozen=True)
class Point:
    bitrate: float
    cpu: float
    extrapolated: bool


def sweep(
    pool: ThreadPoolExecutor, clip: Clip, base: RenditionSpec, variant: Variant, target: float
) -> Point:
    """The variant's bit rate and encode CPU at VMAF `target` (see the module doc)."""
    settings = Settings(ffmpeg_threads=1)

    def at(crf: float) -> Future[Measured]:
        spec = base.model_copy(
            update={"codec": variant.codec, "crf": crf_for(variant.codec, crf),
                    "preset": variant.preset, "name": f"{base.name}-{variant.codec}",
                    "max_bitrate": UNCAPPED, "buffer_size": 2 * UNCAPPED, "estimate": None}
        )  # fmt: skip
        return pool.submit(encode_and_measure, clip, spec, settings, vbv=False, hook=variant.hook)

    points = {crf: f.result() for crf, f in [(c, at(c)) for c in FACTORS]}
    for _ in range(2):
        scores = [m.vmaf for m in points.values()]
        if min(scores) <= target <= max(scores):
            break
        crf = min(points) - MORE if target > max(scores) else max(points) + MORE
        if not 0 < crf_for(variant.codec, crf) <= (63 if variant.codec == "av1" else 51):
            break
        points[crf] = at(crf).result()
    bits, extrapolated = bits_at(list(points.values()), target)
    return Point(bits, cpu_at(list(points.values()), target), extrapolated)


def main() -> None:
    started = time.monotonic()
    settings = Settings(ffmpeg_threads=1)
    variants = [parse(v) for v in VARIANTS]
    target = settings.target_for(RUNG)
    print(f"corpus: {', '.join(CLIP_NAMES)}; {SECONDS:g} s each, the {RUNG} rung at VMAF "
          f"{target:g}; product presets: x264 {settings.x264_preset}, x265 "
          f"{settings.hevc_preset}, SVT-AV1 {settings.av1_preset}; no VBV; -threads 1, "
          f"{WORKERS} at a time; load average at the start {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    root, corpus, server, base_url = corpus_folder("vtp-bench-codecs-")
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    table: dict[str, dict[Variant, Point]] = {}
    try:
        for name in CLIP_NAMES:
            path = make_clip(corpus, name)
            url = f"{base_url}/{path.name}"
            info = probe_source(url, settings)
            work = root / f"work-{name}"
            work.mkdir()
            clip = Clip(name=name, url=url, info=info, work=work)
            (base,) = plan_ladder(info, settings, [RUNG])
            # One thread per variant waits on its encodes, which queue on `pool`.
            with ThreadPoolExecutor(max_workers=len(variants)) as sweeps:
                futures = {v: sweeps.submit(sweep, pool, clip, base, v, target) for v in variants}
                table[name] = {v: f.result() for v, f in futures.items()}
            shutil.rmtree(work, ignore_errors=True)
            print(f"[{time.monotonic() - started:5.0f} s] {name}: " + "; ".join(
                f"{v.label} {p.bitrate / 1000:.0f}k{'*' if p.extrapolated else ''} "
                f"{p.cpu:.1f} s" for v, p in table[name].items()), flush=True)  # fmt: skip
    finally:
        pool.shutdown(cancel_futures=True)
        server.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    report(table, variants, settings, target)
    print(f"(load average at the end {os.getloadavg()[0]:.1f}; {time.monotonic() - started:.0f} s)")


def report(
    table: dict[str, dict[Variant, Point]], variants: list[Variant], s: Settings, target: float
) -> None:
    """Per variant: kbit/s and CPU s per clip at the target, then the geometric means against
    x264 at the product's preset and against the codec's present preset."""
    print()
    print(f"at VMAF {target:g}: kbit/s (* extrapolated) and encode CPU s, per clip")
    print(f"{'variant':<26}" + "".join(f"{c:>20}" for c in table))
    for v in variants:
        cells = [f"{p.bitrate / 1000:6.0f}{'*' if p.extrapolated else ' '} {p.cpu:6.1f} s"
                 for p in (table[c][v] for c in table)]  # fmt: skip
        print(f"{v.label:<26}" + "".join(f"{c:>20}" for c in cells))
    present = {"h264": s.x264_preset, "hevc": s.hevc_preset, "av1": str(s.av1_preset)}
    x264 = next((v for v in variants if v.codec == "h264" and v.preset == s.x264_preset
                 and not v.options), None)  # fmt: skip
    print()
    print(f"geometric mean over {len(table)} clips: bits and CPU against x264 "
          f"{s.x264_preset}, and against the codec's present preset")  # fmt: skip
    print(f"{'variant':<26}{'bits/x264':>10}{'CPU/x264':>9}{'bits/present':>13}"
          f"{'CPU/present':>12}")  # fmt: skip
    for v in variants:
        mine = next((u for u in variants if u.codec == v.codec and u.preset ==
                     present[v.codec] and not u.options), None)  # fmt: skip

        def rel(other: Variant | None, key: str, v: Variant = v) -> str:
            if other is None:
                return "-"
            ratios = [getattr(t[v], key) / getattr(t[other], key) for t in table.values()]
            return f"{geomean(ratios):.2f}"

        print(f"{v.label:<26}{rel(x264, 'bitrate'):>10}{rel(x264, 'cpu'):>9}"
              f"{rel(mine, 'bitrate'):>13}{rel(mine, 'cpu'):>12}")  # fmt: skip


if __name__ == "__main__":
    main()
