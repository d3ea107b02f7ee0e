"""Quality per bit: the product's rate control (per-title CRF under a VBV cap, vtp.media.tuning)
against today's fixed ladder and against x264's own one-pass rate control, and the choice of
the x264 preset.

A corpus of short clips made with ffmpeg's lavfi sources (generated into a temporary
folder, never kept), SECONDS long at SIZE and 25 fps, high-quality H.264 mezzanines with a
sine tone, from easy to hard:

- static: a still fractal picture with fine detail, a small dot moving over it (a slide);
- animation: testsrc2 (flat colours, moving shapes);
- motion: the fractal turning and drifting (high detail, every pixel moving);
- noise: the still picture under strong temporal grain (noise=alls=20:allf=t+u);
- scenes: a third static, a third motion, a third animation (one title, mixed content);
- low-upload: the animation as a 400 kbit/s upload: the cap must keep our bits below
  what the upload had.

Each clip is served over HTTP with Range requests on 127.0.0.1 (ffprobe and ffmpeg read
sources by URL only), probed and planned like a job (vtp.media.probe, vtp.media.ladder). Per rung:

- ours: `tune()` chooses the factor from samples, then the real encode arguments
  (vtp.media.encode.encode_args, video only) encode the whole clip; its bit rate (the video
  stream's packets), SSIM against the source as the rendition shows it
  (vtp.media.encode.reference_filters) and encode CPU time, next to what the samples predicted;
  the sampling's CPU time against the real encodes';
- today: the same rung as jobs were encoded before per-title rate control: `veryfast`,
  `-b:v` at the model's figure (vtp.media.ladder.video_bitrate), maxrate 1.5x, bufsize 2x;
- seed: x264 `medium` one-pass `-b:v` with no VBV at several bit rates spanning both (same
  keyframe grid and filters), and the seed's bit rate at ours' and at today's quality,
  interpolated (log bit rate linear in SSIM dB; `*`: extrapolated beyond the points).

The ratio is the bits ours (or today) spends over the seed's for the same SSIM; the goal for
ours is a geometric mean of at most 0.70 with none above 1.0. Then the presets: each clip's
top rung at CRF 20, 26 and 32 with no cap per preset, the bit rate and CPU time at the
quality target (interpolated the same way), relative to `medium`: what backs the default
preset (vtp.settings.x264_preset).

Every ffmpeg runs with `-threads 1`, so CPU times are comparable; WORKERS of them at a time.
Knobs: VTP_BENCH_QUALITY_SECONDS (8), VTP_BENCH_QUALITY_SIZE (1280x720),
VTP_BENCH_QUALITY_ONLY (comma-separated clip names; all by default),
VTP_BENCH_QUALITY_PRESETS (veryfast,faster,medium,slow), VTP_BENCH_QUALITY_WORKERS (2),
VTP_BENCH_QUALITY_PRUNE (0: every rung is compared; 1: tune() may drop rungs, which are
then listed instead of compared).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vtp.media.encode import encode_args, reference_filters  # noqa: E402
from vtp.media.ffmpeg import run_ffmpeg, run_ffprobe, untrusted_input  # noqa: E402
from vtp.media.ladder import h264_level, plan_ladder, video_bitrate  # noqa: E402
from vtp.media.probe import probe_source  # noqa: E402
from vtp.media.quality import ssim_frames, to_db  # noqa: E402
from vtp.media.tuning import TitlePlan, tune  # noqa: E402
from vtp.models import RenditionSpec, SourceInfo  # noqa: E402
from vtp.settings import Settings  # noqa: E402

CLIPS = ("static", "animation", "motion", "noise", "scenes", "low-upload")
SECONDS = float(os.environ.get("VTP_BENCH_QUALITY_SECONDS", "8"))
_W, _H = os.environ.get("VTP_BENCH_QUALITY_SIZE", "1280x720").lower().split("x")
WIDTH, HEIGHT = int(_W) // 2 * 2, int(_H) // 2 * 2
ONLY = [c.strip() for c in os.environ.get("VTP_BENCH_QUALITY_ONLY", "").split(",") if c.strip()]
PRESETS = [
    p.strip()
    for p in os.environ.get("VTP_BENCH_QUALITY_PRESETS", "veryfast,faster,medium,slow").split(",")
    if p.strip()
]
WORKERS = max(1, int(os.environ.get("VTP_BENCH_QUALITY_WORKERS", "2")))
PRUNE = os.environ.get("VTP_BENCH_QUALITY_PRUNE", "0").lower() in ("1", "true", "yes")

FPS = 25
LOW_UPLOAD_BITRATE = 400_000
# The default share (2%) of an 8 s clip is too short for one 2 s sample.
SAMPLE_SHARE = 0.5
# Sampling's own time limit bounds a job's latency in production; here the machine is
# shared with the other encodes, and running out of time would only measure the load.
SAMPLE_TIMEOUT = 600.0
SEED_PRESET = "medium"
TODAY_PRESET = "veryfast"
TODAY_MAXRATE, TODAY_BUFSIZE = 1.5, 2
PRESET_CRFS = (20.0, 26.0, 32.0)
PRESET_MORE_CRFS = (14.0, 38.0)  # one more point each way when the target is outside
GOAL_GEOMEAN, GOAL_WORST = 0.70, 1.0
_PRESET_ORDER = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                 "slower", "veryslow")  # fmt: skip
ENCODE_TIMEOUT = 1800.0

T = TypeVar("T")
R = TypeVar("R")


# --- the source server: ffprobe and ffmpeg read sources by http(s) URL only ---------------


class _RangeHandler(BaseHTTPRequestHandler):
    """Files of one folder, whole or by `Range: bytes=a-b` (206), as object storage serves."""

    protocol_version = "HTTP/1.1"
    root = Path()

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        path = self.root / Path(unquote(urlsplit(self.path).path)).name
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range")
        if wanted:
            match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", wanted)
            if match and match[1]:
                start = int(match[1])
                end = min(int(match[2]), size - 1) if match[2] else size - 1
            elif match and match[2]:
                start = max(0, size - int(match[2]))
            if not match or not (match[1] or match[2]) or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return
        with path.open("rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # ffmpeg closes a connection as soon as it has read enough, or seeks elsewhere.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def corpus_folder(prefix: str) -> tuple[Path, Path, _Server, str]:
    """A scratch folder named `prefix...`, its `corpus/` folder for the clips, and an HTTP
    server of that folder with its base URL."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    corpus = root / "corpus"
    corpus.mkdir()
    server, base_url = serve(corpus)
    return root, corpus, server, base_url


def serve(root: Path) -> tuple[_Server, str]:
    """An HTTP server of `root` on 127.0.0.1, running on a thread; and its base URL."""
    handler = type("Handler", (_RangeHandler,), {"root": root})
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="sources").start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# --- the corpus ------------------------------------------------------------------------


def _ffmpeg(args: Sequence[str], cwd: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
        check=True,
        cwd=cwd,
    )


def _margin() -> int:
    return max(8, WIDTH // 20 // 2 * 2)


def _still(folder: Path) -> Path:
    """One fractal picture with detail down to the pixel, large enough to turn the picture
    in: its side is the diagonal of the motion clip's window."""
    path = folder / "still.png"
    if not path.exists():
        m = _margin()
        side = math.ceil(math.hypot(WIDTH + 2 * m, HEIGHT + 2 * m)) // 2 * 2 + 4
        _ffmpeg(
            ["-f", "lavfi", "-i", f"mandelbrot=s={side}x{side}:rate={FPS}:start_scale=0.03",
             "-frames:v", "1", path.name],
            folder,
        )  # fmt: skip
    return path


def _static_graph(inp: str, out: str, tag: str) -> str:
    dot = max(4, HEIGHT // 30 // 2 * 2)
    return (
        f"{inp}crop={WIDTH}:{HEIGHT},setsar=1,format=yuv420p[{tag}pic];"
        f"color=c=white:s={dot}x{dot}:r={FPS}[{tag}dot];"
        f"[{tag}pic][{tag}dot]overlay=x='mod(t*{WIDTH // 8},W-w)':y='(H-h)/2',"
        f"format=yuv420p{out}"
    )


def _motion_graph(inp: str, out: str) -> str:
    m = _margin()
    return (
        f"{inp}rotate=a='0.15*t':ow={WIDTH + 2 * m}:oh={HEIGHT + 2 * m}:bilinear=1,"
        f"crop={WIDTH}:{HEIGHT}:x='{m}+{m}*sin(0.9*t)':y='{m}+{m}*cos(0.7*t)',"
        f"setsar=1,format=yuv420p{out}"
    )


def _animation_graph(out: str) -> str:
    return f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS},setsar=1,format=yuv420p{out}"


def _mezzanine(folder: Path, name: str, inputs: list[str], graph: str, audio: int) -> Path:
    """A high-quality H.264 mezzanine of the graph's [v], with a sine tone (input `audio`)."""
    path = folder / f"{name}.mp4"
    sine = ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SECONDS:g}"]
    _ffmpeg(
        [*inputs, *sine, "-filter_complex", graph, "-map", "[v]", "-map", f"{audio}:a",
         "-t", f"{SECONDS:g}", "-r", str(FPS), "-c:v", "libx264", "-preset", "ultrafast",
         "-crf", "10", "-g", str(FPS), "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
         "-movflags", "+faststart", path.name],
        folder,
    )  # fmt: skip
    return path


def make_clip(folder: Path, name: str) -> Path:
    """The clip `name` of the corpus (see the module docstring), made in `folder`."""
    loop = ["-loop", "1", "-framerate", str(FPS)]
    frames = round(SECONDS * FPS)
    if name == "static":
        still = ["-i", _still(folder).name]
        return _mezzanine(folder, name, loop + still, _static_graph("[0:v]", "[v]", "s"), 1)
    if name == "motion":
        still = ["-i", _still(folder).name]
        return _mezzanine(folder, name, loop + still, _motion_graph("[0:v]", "[v]"), 1)
    if name == "noise":
        graph = (f"[0:v]crop={WIDTH}:{HEIGHT},setsar=1,format=yuv420p,"
                 "noise=alls=20:allf=t+u[v]")  # fmt: skip
        return _mezzanine(folder, name, [*loop, "-i", _still(folder).name], graph, 1)
    if name == "animation":
        return _mezzanine(folder, name, [], _animation_graph("[v]"), 0)
    if name == "scenes":
        one = frames // 3
        parts = (one, one, frames - 2 * one)
        cut = [f"trim=end_frame={n},setpts=PTS-STARTPTS" for n in parts]
        graph = ";".join(
            [
                "[0:v]split=2[in0][in1]",
                _static_graph("[in0]", f",{cut[0]}[a]", "s"),
                _motion_graph("[in1]", f",{cut[1]}[b]"),
                _animation_graph(f",{cut[2]}[c]"),
                "[a][b][c]concat=n=3:v=1:a=0[v]",
            ]
        )
        return _mezzanine(folder, name, [*loop, "-i", _still(folder).name], graph, 1)
    if name == "low-upload":
        source = folder / "animation.mp4"
        if not source.exists():
            make_clip(folder, "animation")
        path = folder / f"{name}.mp4"
        rate = LOW_UPLOAD_BITRATE
        _ffmpeg(
            ["-i", source.name, "-c:v", "libx264", "-preset", "veryfast", "-b:v", str(rate),
             "-maxrate", str(rate * 6 // 5), "-bufsize", str(rate * 2), "-g", str(2 * FPS),
             "-pix_fmt", "yuv420p", "-c:a", "copy", "-movflags", "+faststart", path.name],
            folder,
        )  # fmt: skip
        return path
    raise SystemExit(f"unknown clip {name!r}; the clips are {', '.join(CLIPS)}")


# --- encodes and their measurements ------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One whole-clip encode: its video bit rate, SSIM against the source, CPU seconds."""

    bitrate: int
    ssim: float
    cpu: float
    ssim_cpu: float
    frames: int

    @property
    def db(self) -> float:
        return to_db(self.ssim)


@dataclass
class Clip:
    name: str
    url: str
    info: SourceInfo
    work: Path
    counter: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def video_only(self) -> SourceInfo:
        return self.info.model_copy(update={"has_audio": False})


def _without_vbv(args: list[str]) -> list[str]:
    """Encode arguments with `-maxrate` and `-bufsize` (and their values) left out."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-maxrate", "-bufsize"):
            skip = True
        else:
            out.append(arg)
    return out


def _one_thread(args: list[str]) -> list[str]:
    return args if "-threads" in args else [*args, "-threads", "1"]


def video_bits(path: Path) -> tuple[int, int]:
    """The total bits of the video stream's packets in `path`, and how many there are."""
    probe = run_ffprobe(
        ["-v", "error", "-select_streams", "v:0", "-show_entries", "packet=size",
         "-of", "csv=p=0", str(path)],
        timeout=120,
    )  # fmt: skip
    sizes = [int(line) for line in probe.stdout.decode().split() if line.strip().isdigit()]
    return sum(sizes) * 8, len(sizes)


def encode_and_measure(
    clip: Clip, spec: RenditionSpec, settings: Settings, *, vbv: bool = True
) -> Measured:
    """Encode the whole clip as `spec` with the real encode's arguments (video only; no
    VBV cap when `vbv` is false), then measure the output against the source."""
    tag = f"{clip.name}-{spec.name}-{next(clip.counter)}"
    out = clip.work / f"{tag}.mp4"
    args = encode_args(clip.video_only, spec, settings)
    if not vbv:
        args = _without_vbv(args)
    encoded = run_ffmpeg(
        [*untrusted_input(clip.url, threads=1), *_one_thread(args),
         "-t", f"{clip.info.duration:.3f}", "-f", "mp4", out.name],
        timeout=ENCODE_TIMEOUT,
        cwd=clip.work,
    )  # fmt: skip
    bits, frames = video_bits(out)
    scores, ssim_cpu = ssim_frames(
        ["-i", out.name, *untrusted_input(clip.url, threads=1)],
        "[0:v]setpts=PTS-STARTPTS",
        f"[1:V:0]{reference_filters(spec)},setpts=PTS-STARTPTS",
        cwd=clip.work,
        timeout=ENCODE_TIMEOUT,
        stats_name=f"{tag}.ssim",
    )
    out.unlink()
    (clip.work / f"{tag}.ssim").unlink(missing_ok=True)
    seconds = frames / spec.fps if frames else clip.info.duration
    return Measured(
        bitrate=round(bits / seconds),
        ssim=sum(scores) / len(scores),
        cpu=encoded.cpu_seconds,
        ssim_cpu=ssim_cpu,
        frames=len(scores),
    )


def parallel(pool: ThreadPoolExecutor, fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
    """`fn` of every job on the shared pool (behind whatever it already holds), in order."""
    return [f.result() for f in [pool.submit(fn, job) for job in jobs]]


def _pixels(spec: RenditionSpec) -> int:
    return spec.width * spec.height


def at_quality(points: Sequence[tuple[float, float]], target_db: float) -> tuple[float, bool]:
    """y at `target_db` from (SSIM dB, y) points: linear between the two that bracket it,
    else extended from the nearest two; and whether it was extended (extrapolated)."""
    pts = sorted(points)
    if len(pts) == 1:
        return pts[0][1], True
    for (d0, y0), (d1, y1) in itertools.pairwise(pts):
        if d0 <= target_db <= d1:
            if d1 - d0 < 1e-9:
                return min(y0, y1), False
            return y0 + (target_db - d0) * (y1 - y0) / (d1 - d0), False
    (d0, y0), (d1, y1) = pts[:2] if target_db < pts[0][0] else pts[-2:]
    if d1 - d0 < 1e-9:
        return (y0 if target_db < d0 else y1), True
    return y0 + (target_db - d0) * (y1 - y0) / (d1 - d0), True


def bits_at(points: Sequence[Measured], target_db: float) -> tuple[float, bool]:
    """The bit rate at `target_db` over measured encodes (log bit rate linear in dB)."""
    value, extrapolated = at_quality([(m.db, math.log(m.bitrate)) for m in points], target_db)
    return math.exp(value), extrapolated


# --- the three rate controls ----------------------------------------------------------


def today_spec(spec: RenditionSpec) -> RenditionSpec:
    """The rung as jobs were planned before per-title rate control: a bit-rate target at
    the model's figure, VBV peak 1.5x, buffer 2x, `veryfast`."""
    target = video_bitrate(spec.width, spec.height, spec.fps)
    peak, buffer = int(target * TODAY_MAXRATE), target * TODAY_BUFSIZE
    return spec.model_copy(
        update={
            "crf": None,
            "preset": TODAY_PRESET,
            "video_bitrate": target,
            "max_bitrate": peak,
            "buffer_size": buffer,
            "level": h264_level(spec.width, spec.height, spec.fps, peak, buffer),
            "quality_target": None,
            "estimate": None,
        }
    )


def seed_spec(spec: RenditionSpec, bitrate: int) -> RenditionSpec:
    """x264 `medium`, one-pass `-b:v` (the VBV options are left out when encoding)."""
    return spec.model_copy(
        update={"crf": None, "preset": SEED_PRESET, "video_bitrate": max(bitrate, 10_000),
                "quality_target": None, "estimate": None}
    )  # fmt: skip


@dataclass
class RungResult:
    clip: str
    spec: RenditionSpec  # ours, as tuned
    ours: Measured
    today: Measured
    seed: list[Measured]
    seed_at_ours: tuple[float, bool] = (0.0, False)
    seed_at_today: tuple[float, bool] = (0.0, False)

    @property
    def ours_ratio(self) -> float:
        return self.ours.bitrate / self.seed_at_ours[0]

    @property
    def today_ratio(self) -> float:
        return self.today.bitrate / self.seed_at_today[0]

    @property
    def seed_cpu(self) -> float:
        """The seed encode's CPU time nearest ours' quality."""
        return min(self.seed, key=lambda m: abs(m.db - self.ours.db)).cpu


def seed_points(
    pool: ThreadPoolExecutor, clip: Clip, rungs: list[RungResult], settings: Settings
) -> None:
    """The seed encodes of every rung: five bit rates spanning ours' and today's (less to
    more), then more where either's quality is outside them (each way, up to three times)
    or the two around it are far apart (once), and the seed's bits at both qualities."""

    def job(item: tuple[RungResult, int]) -> tuple[RungResult, Measured]:
        rung, bitrate = item
        return rung, encode_and_measure(clip, seed_spec(rung.spec, bitrate), settings, vbv=False)

    pending: list[tuple[RungResult, int]] = []
    # The largest rung's encodes first: the last ones to finish are then the short ones.
    rungs = sorted(rungs, key=lambda r: _pixels(r.spec), reverse=True)
    for rung in rungs:
        low = 0.6 * min(rung.ours.bitrate, rung.today.bitrate)
        high = 1.3 * max(rung.ours.bitrate, rung.today.bitrate)
        pending += [(rung, round(low * (high / low) ** (i / 4))) for i in range(5)]
    refined: set[tuple[str, int]] = set()
    for _ in range(5):
        for rung, measured in parallel(pool, job, pending):
            rung.seed.append(measured)
        pending = []
        for rung in rungs:
            for which, target in enumerate((rung.ours.db, rung.today.db)):
                key = (rung.spec.name, which)
                more, refining = _next_seed_rate(rung.seed, target, key in refined)
                if refining:
                    refined.add(key)
                if more is not None and not any(
                    abs(more - r) < 0.02 * r for x, r in pending if x is rung
                ):
                    pending.append((rung, more))
        if not pending:
            break
    for rung in rungs:
        rung.seed_at_ours = bits_at(rung.seed, rung.ours.db)
        rung.seed_at_today = bits_at(rung.seed, rung.today.db)


def _next_seed_rate(
    points: list[Measured], target_db: float, refined: bool
) -> tuple[int | None, bool]:
    """Another seed bit rate to encode for `target_db` (None: none), and whether it is the
    one refinement: half the lowest or twice the highest rate when the target is outside the
    points (while there are fewer than 8), else, once, the interpolated rate when the two
    rates around it are more than 1.5x apart."""
    rates = sorted(m.bitrate for m in points)
    dbs = [m.db for m in points]
    if target_db < min(dbs):
        return (rates[0] // 2 if len(points) < 8 and rates[0] > 20_000 else None), False
    if target_db > max(dbs):
        return (rates[-1] * 2 if len(points) < 8 else None), False
    if refined:
        return None, False
    guess, _ = bits_at(points, target_db)
    below = max((r for r in rates if r <= guess), default=rates[0])
    above = min((r for r in rates if r >= guess), default=rates[-1])
    if above > 1.5 * below and min(guess - below, above - guess) > 0.1 * guess:
        return round(guess), True
    return None, True


@dataclass(frozen=True)
class PresetPoint:
    bitrate: float
    cpu: float
    extrapolated: bool


@dataclass
class ClipResult:
    rungs: list[RungResult]
    plan: TitlePlan
    presets: dict[str, PresetPoint]


def measure_clip(
    pool: ThreadPoolExecutor, name: str, base_url: str, settings: Settings, work: Path
) -> ClipResult:
    """Everything measured of one clip: tune(), then ours, today, the presets' encodes and
    the seed's, the presets' queued behind ours and today so that the pool keeps busy
    while the seed's later rounds wait for their earlier ones."""
    url = f"{base_url}/{name}.mp4"
    info = probe_source(url, settings)
    clip = Clip(name=name, url=url, info=info, work=work)
    ladder = plan_ladder(info, settings)
    plan = tune(url, info, ladder, settings, prune=PRUNE)
    biggest = sorted(plan.specs, key=_pixels, reverse=True)
    ours = {s.name: pool.submit(encode_and_measure, clip, s, settings) for s in biggest}
    today = {s.name: pool.submit(encode_and_measure, clip, today_spec(s), settings)
             for s in biggest}  # fmt: skip
    sweep = PresetSweep(pool, clip, ladder[-1], settings)
    rungs = [
        RungResult(clip=name, spec=s, ours=ours[s.name].result(),
                   today=today[s.name].result(), seed=[])
        for s in plan.specs
    ]  # fmt: skip
    seed_points(pool, clip, rungs, settings)
    return ClipResult(rungs=rungs, plan=plan, presets=sweep.points(to_db(settings.quality_target)))


# --- presets ---------------------------------------------------------------------------


class PresetSweep:
    """The clip's top rung at PRESET_CRFS with no VBV cap, per preset (queued at once): the
    bit rate and encode CPU time at a quality, interpolated in SSIM dB, with one more factor
    each way when the quality is outside a preset's points."""

    def __init__(
        self, pool: ThreadPoolExecutor, clip: Clip, top: RenditionSpec, settings: Settings
    ) -> None:
        self.pool, self.clip, self.top, self.settings = pool, clip, top, settings
        # The slowest first: the quick ones fill in at the end.
        order = sorted(PRESETS, key=lambda p: -_PRESET_ORDER.index(p)
                       if p in _PRESET_ORDER else 0)  # fmt: skip
        self.pending = [(p, self._submit(p, crf)) for p in order for crf in PRESET_CRFS]

    def _submit(self, preset: str, crf: float) -> Future[Measured]:
        spec = self.top.model_copy(update={"crf": crf, "preset": preset, "estimate": None})
        return self.pool.submit(encode_and_measure, self.clip, spec, self.settings, vbv=False)

    def points(self, target_db: float) -> dict[str, PresetPoint]:
        measured: dict[str, list[Measured]] = {p: [] for p in PRESETS}
        for _ in range(2):
            for preset, future in self.pending:
                measured[preset].append(future.result())
            self.pending = []
            for preset, points in measured.items():
                if len(points) > len(PRESET_CRFS):
                    continue
                if target_db > max(m.db for m in points):
                    self.pending.append((preset, self._submit(preset, PRESET_MORE_CRFS[0])))
                elif target_db < min(m.db for m in points):
                    self.pending.append((preset, self._submit(preset, PRESET_MORE_CRFS[1])))
        out = {}
        for preset, points in measured.items():
            bits, extrapolated = bits_at(points, target_db)
            cpu, _ = at_quality([(m.db, m.cpu) for m in points], target_db)
            out[preset] = PresetPoint(bits, max(cpu, 0.0), extrapolated)
        return out


# --- the report ------------------------------------------------------------------------


def _kbps(bits: float) -> str:
    return f"{bits / 1000:.0f}"


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _star(extrapolated: bool) -> str:
    return "*" if extrapolated else " "


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_rungs(rows: list[RungResult]) -> None:
    print()
    print("quality per bit, per rung (bit rates in kbit/s of video; crf and cap: ours' factor "
          "and VBV maxrate; SSIM vs the source as the rung shows it; seed: its bits at the same "
          "SSIM, * extrapolated)")  # fmt: skip
    print(f"{'clip':<11}{'rung':<6}{'crf':>5}{'cap':>6} | {'ours':>6} {'SSIM':>7} {'dB':>5} | "
          f"{'today':>6} {'SSIM':>7} {'dB':>5} | {'seed@ours':>9} {'@today':>7} | "
          f"{'ours/seed':>9} {'today/seed':>10} | {'CPU s: ours':>11} {'today':>6} "
          f"{'seed':>6}")  # fmt: skip
    for r in rows:
        crf = f"{r.spec.crf:g}" if r.spec.crf is not None else "-"
        print(f"{r.clip:<11}{r.spec.name:<6}{crf:>5}{_kbps(r.spec.max_bitrate):>6} | "
              f"{_kbps(r.ours.bitrate):>6} "
              f"{r.ours.ssim:7.5f} {r.ours.db:5.2f} | {_kbps(r.today.bitrate):>6} "
              f"{r.today.ssim:7.5f} {r.today.db:5.2f} | "
              f"{_kbps(r.seed_at_ours[0]):>8}{_star(r.seed_at_ours[1])} "
              f"{_kbps(r.seed_at_today[0]):>6}{_star(r.seed_at_today[1])} | "
              f"{r.ours_ratio:9.2f} {r.today_ratio:10.2f} | {r.ours.cpu:11.1f} "
              f"{r.today.cpu:6.1f} {r.seed_cpu:6.1f}")  # fmt: skip


def print_seed(rows: list[RungResult]) -> None:
    print()
    print("the seed's points (kbit/s @ SSIM dB), from which its bits at equal quality come")
    for r in rows:
        points = " ".join(f"{m.bitrate / 1000:.0f}@{m.db:.2f}"
                          for m in sorted(r.seed, key=lambda m: m.bitrate))  # fmt: skip
        print(f"  {r.clip:<11}{r.spec.name:<6} {points}")


def _default_share(plan: TitlePlan, real: float, duration: float) -> float:
    """The sampling's CPU over the real encodes' had the samples covered the default share
    of a long title (the cost per sampled second, and per encoded second, as measured)."""
    sampled = sum(seconds for _, seconds in plan.samples)
    if not sampled or not real:
        return 0.0
    default = float(Settings.model_fields["quality_sample_share"].default)
    return plan.sampling_cpu_seconds / real * duration / sampled * default


def print_predictions(rows: list[RungResult], plans: dict[str, TitlePlan]) -> None:
    print()
    print("ours, predicted by the samples (spec.estimate) against the real encode")
    print(f"{'clip':<11}{'rung':<6} | {'kbit/s pred':>11} {'real':>6} {'err':>6} | "
          f"{'SSIM pred':>9} {'real':>7} {'dB diff':>7} | {'CPU s pred':>10} {'real':>6} "
          f"{'err':>6}")  # fmt: skip
    for r in rows:
        est = r.spec.estimate
        if est is None:
            print(f"{r.clip:<11}{r.spec.name:<6} | no prediction: "
                  f"{plans[r.clip].note or 'no estimate'}")  # fmt: skip
            continue
        rate_err = est.bitrate / max(r.ours.bitrate, 1) - 1
        cpu_err = est.encode_cpu_seconds / r.ours.cpu - 1 if r.ours.cpu else 0.0
        print(f"{r.clip:<11}{r.spec.name:<6} | {_kbps(est.bitrate):>11} "
              f"{_kbps(r.ours.bitrate):>6} {rate_err:+6.0%} | {est.quality:9.5f} "
              f"{r.ours.ssim:7.5f} {to_db(est.quality) - r.ours.db:+7.2f} | "
              f"{est.encode_cpu_seconds:10.1f} {r.ours.cpu:6.1f} {cpu_err:+6.0%}")  # fmt: skip
    print()
    print("sampling's cost, per clip: CPU seconds of every sample encode and measurement, "
          "against the real encodes' of ours")  # fmt: skip
    for name, plan in plans.items():
        real = sum(r.ours.cpu for r in rows if r.clip == name)
        share = plan.sampling_cpu_seconds / real if real else 0.0
        samples = ", ".join(f"{s:g}+{d:g}s" for s, d in plan.samples) or "none"
        note = f"; {plan.note}" if plan.note else ""
        print(f"  {name:<11} samples {samples}: {plan.sampling_cpu_seconds:.1f} s CPU "
              f"({plan.sampling_wall_seconds:.1f} s wall) = {share:.0%} of {real:.1f} s; "
              f"at the default share {_default_share(plan, real, SECONDS):.0%}{note}")  # fmt: skip


def print_summary(rows: list[RungResult], plans: dict[str, TitlePlan]) -> None:
    print()
    ours = [r.ours_ratio for r in rows]
    today = [r.today_ratio for r in rows]
    for label, ratios, key in (("ours/seed ", ours, "ours_ratio"),
                               ("today/seed", today, "today_ratio")):  # fmt: skip
        worst = max(rows, key=lambda r: float(getattr(r, key)))
        print(f"{label}: geometric mean {_geomean(ratios):.2f}, worst {max(ratios):.2f} "
              f"({worst.clip} {worst.spec.name}), over {len(ratios)} rungs")  # fmt: skip
    met = _geomean(ours) <= GOAL_GEOMEAN and max(ours) <= GOAL_WORST
    print(f"goal for ours (geometric mean <= {GOAL_GEOMEAN:.2f}, none > {GOAL_WORST:.2f}): "
          f"{'met' if met else 'NOT met'}")  # fmt: skip
    extrapolated = sum(r.seed_at_ours[1] + r.seed_at_today[1] for r in rows)
    if extrapolated:
        print(f"({extrapolated} of the seed's figures are extrapolated beyond its points)")
    sampling = sum(p.sampling_cpu_seconds for p in plans.values())
    real = sum(r.ours.cpu for r in rows)
    sampled = sum(d for p in plans.values() for _, d in p.samples)
    default = float(Settings.model_fields["quality_sample_share"].default)
    scaled = sampling / real * len(plans) * SECONDS / sampled * default if sampled else 0.0
    print(f"sampling: {sampling:.1f} s CPU in all, {sampling / real:.0%} of our encodes' "
          f"{real:.1f} s CPU with samples covering {sampled / (len(plans) * SECONDS):.0%} "
          f"of the clips; at the default share ({default:.0%}, titles of "
          f"{_default_span():g} s and more) that is about {scaled:.0%}")  # fmt: skip


def _default_span() -> float:
    """The shortest title whose default samples are limited by count, not share."""
    fields = Settings.model_fields
    count = float(fields["quality_sample_count"].default)
    seconds = float(fields["quality_sample_seconds"].default)
    return count * seconds / float(fields["quality_sample_share"].default)


def print_presets(points: dict[str, dict[str, PresetPoint]], target: float) -> None:
    print()
    print(f"presets: each clip's top rung at CRF {'/'.join(f'{c:g}' for c in PRESET_CRFS)}, "
          f"no VBV cap; bit rate (kbit/s) and encode CPU s at SSIM {target:g} "
          f"({to_db(target):.2f} dB), * extrapolated")  # fmt: skip
    print(f"{'clip':<11}" + "".join(f"{p:>18}" for p in PRESETS))
    for clip, per in points.items():
        cells = [f"{_kbps(per[p].bitrate):>7}{_star(per[p].extrapolated)} {per[p].cpu:6.1f} s"
                 for p in PRESETS]  # fmt: skip
        print(f"{clip:<11}" + "".join(f"{c:>18}" for c in cells))
    base = "medium" if "medium" in PRESETS else PRESETS[0]
    print(f"geometric mean over {len(points)} clips, relative to {base}:")
    print(f"  {'preset':<10}{'bits':>6}{'CPU':>7}")
    for p in PRESETS:
        bits = _geomean([per[p].bitrate / per[base].bitrate for per in points.values()])
        cpu = _geomean([per[p].cpu / per[base].cpu for per in points.values()
                        if per[base].cpu > 0 and per[p].cpu > 0])  # fmt: skip
        print(f"  {p:<10}{bits:6.2f}{cpu:7.2f}")


def main() -> None:
    started = time.monotonic()
    names = [c for c in CLIPS if not ONLY or c in ONLY]
    unknown = [c for c in ONLY if c not in CLIPS]
    if unknown or not names:
        raise SystemExit(f"unknown clip(s) {', '.join(unknown)}; the clips are {', '.join(CLIPS)}")
    settings = Settings(
        quality_sample_share=SAMPLE_SHARE,
        quality_sample_timeout_seconds=SAMPLE_TIMEOUT,
        ffmpeg_threads=1,
    )
    print(f"corpus: {', '.join(names)}; {SECONDS:g} s each at {WIDTH}x{HEIGHT} {FPS} fps "
          f"(lavfi sources, x264 CRF 10 mezzanines; low-upload at "
          f"{LOW_UPLOAD_BITRATE // 1000} kbit/s)")  # fmt: skip
    print(
        f"ours: the product's settings (preset {settings.x264_preset}, default CRF "
        f"{settings.default_crf:g}, target SSIM {settings.quality_target:g}, "
        f"{settings.quality_sample_count} samples of {settings.quality_sample_seconds:g} s), "
        f"except quality_sample_share {SAMPLE_SHARE:g} (the default "
        f"{Settings.model_fields['quality_sample_share'].default:g} of a {SECONDS:g} s clip "
        f"holds no sample), quality_sample_timeout_seconds {SAMPLE_TIMEOUT:g}, "
        f"ffmpeg_threads 1; pruning {'on' if PRUNE else 'off (every rung compared)'}"
    )
    print(f"today: {TODAY_PRESET}, -b:v at the model's figure, maxrate {TODAY_MAXRATE:g}x, "
          f"bufsize {TODAY_BUFSIZE:g}x; seed: {SEED_PRESET}, one-pass -b:v, no VBV; "
          f"every ffmpeg -threads 1, {WORKERS} at a time")  # fmt: skip
    root, corpus, server, base_url = corpus_folder("vtp-bench-quality-")
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="encode")
    try:
        for name in names:
            t0 = time.monotonic()
            make_clip(corpus, name)
            _progress(f"[{time.monotonic() - started:6.0f} s] made {name} "
                      f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
        rows: list[RungResult] = []
        plans: dict[str, TitlePlan] = {}
        presets: dict[str, dict[str, PresetPoint]] = {}
        for name in names:
            work = root / f"work-{name}"
            work.mkdir()
            result = measure_clip(pool, name, base_url, settings, work)
            shutil.rmtree(work, ignore_errors=True)
            rows += result.rungs
            plans[name] = result.plan
            presets[name] = result.presets
            _progress(f"[{time.monotonic() - started:6.0f} s] {name}: " + ", ".join(
                f"{r.spec.name} ours/seed {r.ours_ratio:.2f} today/seed {r.today_ratio:.2f}"
                for r in result.rungs))  # fmt: skip
        print_rungs(rows)
        for name, plan in plans.items():
            for p in plan.pruned:
                print(f"{name:<11}{p.name:<6} pruned by tune(): {p.reason}")
        print_seed(rows)
        print_predictions(rows, plans)
        print_summary(rows, plans)
        print_presets(presets, settings.quality_target)
    finally:
        pool.shutdown(cancel_futures=True)
        server.shutdown()
        server.server_close()
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
