"""HEVC and AV1 beside H.264: bits and encode time at equal quality, on the quality
benchmark's corpus (bench/quality.py: six 8 s 720p25 lavfi clips, easy to hard).

Per clip, the 720p rung as a job plans it (vtp.media.ladder), encoded whole with the real encode
arguments (vtp.media.encode.encode_args, video only, the product's presets: x264
`settings.x264_preset`, x265 `settings.hevc_preset`, SVT-AV1 `settings.av1_preset`):

- H.264 at the default factor: its SSIM against the source is the quality to match;
- HEVC and AV1 each at the factor vtp.media.codecs carries that to and a step either side, and
  more steps until two encodes bracket H.264's SSIM; their bit rate and encode CPU time at
  H.264's SSIM, interpolated (log bit rate linear in SSIM dB, as bench/quality.py; `*`:
  extrapolated beyond the points, when no step brackets it).

The ratios are HEVC (AV1) over H.264 at the same SSIM; the geometric mean over the corpus
is the figure. No VBV cap in these encodes: the comparison is of the encoders, and a cap
would bind differently on each. Every ffmpeg `-threads 1`; WORKERS at a time.
Knobs: VTP_BENCH_QUALITY_ONLY, VTP_BENCH_QUALITY_SECONDS, VTP_BENCH_QUALITY_SIZE (shared
with bench/quality.py), VTP_BENCH_CODECS_STEP (4: the factor step either side).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import (  # the benchmark folder's own module
    CLIPS,
    ONLY,
    SECONDS,
    WORKERS,
    Clip,
    Measured,
    bits_at,
    corpus_folder,
    encode_and_measure,
    make_clip,
)

from vtp.media.codecs import crf_for
from vtp.media.ladder import plan_ladder
from vtp.media.probe import probe_source
from vtp.models import RenditionSpec
from vtp.settings import Settings

STEP = float(os.environ.get("VTP_BENCH_CODECS_STEP", "4"))
RUNG = "720p"
MAX_EXTRA = 3
UNCAPPED = 1_000_000_000


def _interpolated(points: list[Measured], target_db: float, value: str) -> float:
    """`value` ("cpu") at `target_db`, linear in dB between the points that bracket it."""
    pts = sorted((m.db, getattr(m, value)) for m in points)
    for (d0, y0), (d1, y1) in itertools.pairwise(pts):
        if d0 <= target_db <= d1 and d1 > d0:
            return float(y0 + (target_db - d0) * (y1 - y0) / (d1 - d0))
    return float(min(pts, key=lambda p: abs(p[0] - target_db))[1])


def bracket(
    pool: ThreadPoolExecutor,
    clip: Clip,
    base: RenditionSpec,
    codec: str,
    settings: Settings,
    target_db: float,
) -> list[Measured]:
    """Encodes of `clip` in `codec` at its carried-over factor and a step either side, then
    further steps on the side the target lies until two points bracket H.264's quality
    (at most MAX_EXTRA more), so the figure is read between measurements."""

    def at(crf: float) -> Future[Measured]:
        # No cap here either: x265 takes its VBV inside -x265-params, which the quality
        # benchmark's _without_vbv does not see, so the spec's cap is lifted instead.
        spec = base.model_copy(
            update={"codec": codec, "crf": crf, "preset": None, "name": f"{RUNG}-{codec}",
                    "max_bitrate": UNCAPPED, "buffer_size": 2 * UNCAPPED}
        )  # fmt: skip
        return pool.submit(encode_and_measure, clip, spec, settings, vbv=False)

    mid = crf_for(codec, base.crf or settings.default_crf)
    crfs = [mid - STEP, mid, mid + STEP]
    points = dict(zip(crfs, [f.result() for f in [at(c) for c in crfs]], strict=True))
    for _ in range(MAX_EXTRA):
        best, worst = (
            max(points.values(), key=lambda m: m.db),
            min(points.values(), key=lambda m: m.db),
        )
        if worst.db <= target_db <= best.db:
            break
        crf = min(points) - STEP if target_db > best.db else max(points) + STEP
        if not 0 < crf <= (51 if codec == "hevc" else 63):
            break
        points[crf] = at(crf).result()
    return list(points.values())


def main() -> None:
    started = time.monotonic()
    names = [c for c in CLIPS if not ONLY or c in ONLY]
    settings = Settings(ffmpeg_threads=1)
    print(f"corpus: {', '.join(names)}; {SECONDS:g} s each, the {RUNG} rung; presets: x264 "
          f"{settings.x264_preset}, x265 {settings.hevc_preset}, SVT-AV1 {settings.av1_preset}; "
          f"no VBV; -threads 1, {WORKERS} at a time")  # fmt: skip
    root, corpus, server, base_url = corpus_folder("vtp-bench-codecs-")
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    rows = []
    try:
        for name in names:
            path = make_clip(corpus, name)
            url = f"{base_url}/{path.name}"
            info = probe_source(url, settings)
            work = root / f"work-{name}"
            work.mkdir()
            clip = Clip(name=name, url=url, info=info, work=work)
            (spec,) = [s for s in plan_ladder(info, settings, [RUNG])]
            base = spec.model_copy(update={"crf": settings.default_crf})
            h264 = encode_and_measure(clip, base, settings, vbv=False)
            measured: dict[str, list[Measured]] = {}
            for codec in ("hevc", "av1"):
                measured[codec] = bracket(pool, clip, base, codec, settings, h264.db)
            shutil.rmtree(work, ignore_errors=True)
            row: dict[str, Any] = {"clip": name, "h264": h264}
            for codec in ("hevc", "av1"):
                points = measured[codec]
                bits, extrapolated = bits_at(points, h264.db)
                cpu = _interpolated(points, h264.db, "cpu")
                row[codec] = (bits / h264.bitrate, cpu / h264.cpu, extrapolated)
            rows.append(row)
            print(f"[{time.monotonic() - started:5.0f} s] {name}: h264 {h264.bitrate // 1000} "
                  f"kbit/s SSIM {h264.ssim:.4f} ({h264.db:.2f} dB) {h264.cpu:.1f} s CPU; "
                  + "; ".join(f"{c} bits {row[c][0]:.2f}x cpu {row[c][1]:.2f}x"
                              f"{'*' if row[c][2] else ''}" for c in ("hevc", "av1")),
                  flush=True)  # fmt: skip
    finally:
        pool.shutdown(cancel_futures=True)
        server.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"{'clip':<12}{'h264 kbit/s':>12}{'SSIM':>8}{'hevc bits':>11}{'hevc cpu':>10}"
          f"{'av1 bits':>10}{'av1 cpu':>9}")  # fmt: skip
    for row in rows:
        h = row["h264"]
        hv, av = row["hevc"], row["av1"]
        print(f"{row['clip']:<12}{h.bitrate // 1000:>12}{h.ssim:>8.4f}"
              f"{hv[0]:>10.2f}{'*' if hv[2] else ' '}{hv[1]:>9.2f}x"
              f"{av[0]:>9.2f}{'*' if av[2] else ' '}{av[1]:>8.2f}x")  # fmt: skip
    for codec in ("hevc", "av1"):
        bits = math.exp(sum(math.log(r[codec][0]) for r in rows) / len(rows))
        cpu = math.exp(sum(math.log(r[codec][1]) for r in rows) / len(rows))
        print(
            f"{codec}: geometric mean {bits:.2f}x the bits of H.264 at equal SSIM, "
            f"{cpu:.2f}x its encode CPU time"
        )
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
