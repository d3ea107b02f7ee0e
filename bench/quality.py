"""Quality per bit, measured as the field measures it (VMAF, libvmaf's default model): the
product's ladder in every codec (per-title factor per codec under a VBV cap,
vtp.media.tuning) against x264's own one-pass rate control and against the seed's fixed
ladder, how evenly the codecs of one rung match, what the sampling costs, and how well it
predicted.

A corpus of short clips made with ffmpeg's lavfi sources (generated into a temporary
folder, never kept), SECONDS long at SIZE (1920x1080: the ladder is 360p, 720p and 1080p)
and 25 fps, high-quality H.264 mezzanines with a sine tone, from a still picture to grain:

- static: a still fractal picture with fine detail, a small dot moving over it (a slide);
- natural: the picture softened as a lens softens it, the camera panning slowly over it,
  with a sensor's light temporal noise (natural motion);
- cartoon: the picture posterized into flat colours with hard edges, turning (animation);
- animation: testsrc2 (flat synthetic shapes);
- motion: the fractal turning and drifting (high detail, every pixel moving);
- noise: the still picture under strong temporal grain (noise=alls=20:allf=t+u);
- scenes: a third static, a third motion, a third animation (one title, mixed content);
- low-upload: the animation as a 400 kbit/s upload (the cap must keep our bits below it).

Each clip is served over HTTP with Range requests on 127.0.0.1 (ffprobe and ffmpeg read
sources by URL only), probed and planned like a job (vtp.media.probe, vtp.media.ladder,
vtp.media.ladder.codec_ladders). Per codec, `tune()` chooses each rung's factor from samples
with that codec's own encoder (as split does), then the real encode arguments
(vtp.media.encode.encode_args, video only) encode the whole clip; its bit rate (the video
stream's packets), VMAF and SSIM against the source as the rung shows it
(vtp.media.quality.compare, vtp.media.encode.reference_filters) and CPU time. Against:

- x264 ABR: x264 `medium` one-pass `-b:v`, no VBV, at bit rates bracketing every codec's
  VMAF at that rung; its bits at each codec's VMAF, interpolated (log bit rate linear in VMAF;
  `*`: extrapolated beyond the points). Goals (geometric mean over renditions): H.264 <= 0.90,
  HEVC <= 0.70, AV1 <= 0.60.
- the seed's fixed ladder: 360p 800k, 720p 2500k, 1080p 5000k, x264 `veryfast` `-b:v` with
  maxrate 1.5x and bufsize 2x (how jobs were encoded before rate control by quality). Our
  bytes over its bytes per codec, and whether every rung's VMAF is at least the lower of
  its target and the seed's, minus 1. Goals: H.264 <= 0.65, the best codec <= 0.45.
- spread: the VMAF range across the codecs of one rung (goal <= 1.5).

Every ffmpeg runs with `-threads 1` (SVT-AV1 keeps its own threads), CPU time is user+sys of
the process (RunResult.cpu_seconds), so it does not depend on how many ran at once; WORKERS
encodes at a time. Knobs: VTP_BENCH_QUALITY_SECONDS (4), VTP_BENCH_QUALITY_SIZE (1920x1080),
VTP_BENCH_QUALITY_ONLY (comma-separated clip names; static,natural,cartoon,noise by
default), VTP_BENCH_QUALITY_CODECS (h264,hevc,av1), VTP_BENCH_QUALITY_WORKERS (2).
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
from vtp.media.ladder import codec_ladders, h264_level, plan_ladder  # noqa: E402
from vtp.media.probe import probe_source  # noqa: E402
from vtp.media.quality import Pair, compare_all  # noqa: E402
from vtp.media.tuning import TitlePlan, tune  # noqa: E402
from vtp.models import RenditionSpec, SourceInfo  # noqa: E402
from vtp.settings import Settings  # noqa: E402

CLIPS = ("static", "natural", "cartoon", "animation", "motion", "noise", "scenes", "low-upload")
DEFAULT_CLIPS = ("static", "natural", "cartoon", "noise")
SECONDS = float(os.environ.get("VTP_BENCH_QUALITY_SECONDS", "4"))
_W, _H = os.environ.get("VTP_BENCH_QUALITY_SIZE", "1920x1080").lower().split("x")
WIDTH, HEIGHT = int(_W) // 2 * 2, int(_H) // 2 * 2
ONLY = [c.strip() for c in os.environ.get("VTP_BENCH_QUALITY_ONLY", "").split(",") if c.strip()]
CODECS = [
    c.strip()
    for c in os.environ.get("VTP_BENCH_QUALITY_CODECS", "h264,hevc,av1").split(",")
    if c.strip()
]
WORKERS = max(1, int(os.environ.get("VTP_BENCH_QUALITY_WORKERS", "2")))

FPS = 25
LOW_UPLOAD_BITRATE = 400_000
# The default share (2%) of a 4 s clip is too short for one 2 s sample.
SAMPLE_SHARE = 0.5
# Sampling's own time limit bounds a job's latency in production; here the machine is
# shared with the other encodes, and running out of time would only measure the load.
SAMPLE_TIMEOUT = 900.0
ABR_PRESET = "medium"
SEED_PRESET = "veryfast"
SEED_RATES = {360: 800_000, 720: 2_500_000, 1080: 5_000_000}
SEED_MAXRATE, SEED_BUFSIZE = 1.5, 2
GOAL_ABR = {"h264": 0.90, "hevc": 0.70, "av1": 0.60}
GOAL_SEED_H264, GOAL_SEED_BEST = 0.65, 0.45
GOAL_SPREAD = 1.5
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


def _side() -> int:
    """The still picture's side: the diagonal of the motion clip's window."""
    m = _margin()
    return math.ceil(math.hypot(WIDTH + 2 * m, HEIGHT + 2 * m)) // 2 * 2 + 4


def _still(folder: Path) -> Path:
    """One fractal picture with detail down to the pixel, large enough to turn the picture
    in: its side is the diagonal of the motion clip's window."""
    path = folder / "still.png"
    if not path.exists():
        side = _side()
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


def _natural_graph(inp: str, out: str) -> str:
    """The picture as a camera sees a scene: softened by the lens, panned slowly, with
    light temporal noise from the sensor."""
    m = _margin()
    return (
        f"{inp}gblur=sigma=1.5,"
        f"crop={WIDTH}:{HEIGHT}:x='{m}+{m}*sin(0.5*t)':y='{m}+{m}*cos(0.4*t)',"
        f"noise=alls=5:allf=t,setsar=1,format=yuv420p{out}"
    )


def _cartoon_graph(inp: str, out: str) -> str:
    """The picture as animation draws it: flat colours with hard edges (posterized from a
    smoothed copy, scaled back up), turning and drifting as the motion clip does."""
    side = _side()
    flat = "lutyuv=y='floor(val/32)*32+16':u='floor(val/24)*24+12':v='floor(val/24)*24+12'"
    return _motion_graph(
        f"{inp}scale={side // 4}:{side // 4},gblur=sigma=3,{flat},"
        f"scale={side}:{side}:flags=bicubic,",
        out,
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
    if name == "natural":
        still = ["-i", _still(folder).name]
        return _mezzanine(folder, name, loop + still, _natural_graph("[0:v]", "[v]"), 1)
    if name == "cartoon":
        still = ["-i", _still(folder).name]
        return _mezzanine(folder, name, loop + still, _cartoon_graph("[0:v]", "[v]"), 1)
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
    """One whole-clip encode: its video bit rate, VMAF and SSIM against the source (as the
    rung shows it), its encode's CPU and wall seconds, and the measurement's CPU seconds."""

    bitrate: int
    vmaf: float
    ssim: float
    cpu: float
    wall: float
    measure_cpu: float


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


ArgsHook = Callable[[list[str]], list[str]]


def encode_and_measure(
    clip: Clip,
    spec: RenditionSpec,
    settings: Settings,
    *,
    vbv: bool = True,
    hook: ArgsHook | None = None,
) -> Measured:
    """Encode the whole clip as `spec` with the real encode's arguments (video only; no
    VBV cap when `vbv` is false; `hook` may change the arguments, to try an encoder option),
    then measure the output against the source as the rung shows it."""
    tag = f"{clip.name}-{spec.name}-{next(clip.counter)}"
    out = clip.work / f"{tag}.mp4"
    args = encode_args(clip.video_only, spec, settings)
    if not vbv:
        args = _without_vbv(args)
    if hook is not None:
        args = hook(args)
    encoded = run_ffmpeg(
        [*untrusted_input(clip.url, threads=1), *_one_thread(args),
         "-t", f"{clip.info.duration:.3f}", "-f", "mp4", out.name],
        timeout=ENCODE_TIMEOUT,
        cwd=clip.work,
    )  # fmt: skip
    bits, frames = video_bits(out)
    # SSIM beside VMAF comes from compare_all, which reads each input once through split.
    (measured,) = compare_all(
        ["-threads", "1", "-i", out.name, *untrusted_input(clip.url, threads=1)],
        "[0:v]",
        "[1:V:0]",
        [Pair("setpts=PTS-STARTPTS", f"{reference_filters(spec)},setpts=PTS-STARTPTS",
              f"{tag}.json")],
        cwd=clip.work,
        timeout=ENCODE_TIMEOUT,
        settings=settings,
        with_ssim=True,
    )  # fmt: skip
    out.unlink()
    (clip.work / f"{tag}.json").unlink(missing_ok=True)
    (clip.work / f"{tag}.ssim").unlink(missing_ok=True)
    seconds = frames / spec.fps if frames else clip.info.duration
    return Measured(
        bitrate=round(bits / seconds),
        vmaf=sum(measured.vmaf) / len(measured.vmaf),
        ssim=sum(measured.ssim) / len(measured.ssim) if measured.ssim else 0.0,
        cpu=encoded.cpu_seconds,
        wall=encoded.elapsed,
        measure_cpu=measured.cpu_seconds,
    )


def parallel(pool: ThreadPoolExecutor, fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
    """`fn` of every job on the shared pool (behind whatever it already holds), in order."""
    return [f.result() for f in [pool.submit(fn, job) for job in jobs]]


def _pixels(spec: RenditionSpec) -> int:
    return spec.width * spec.height


def at_quality(points: Sequence[tuple[float, float]], target: float) -> tuple[float, bool]:
    """y at VMAF `target` from (VMAF, y) points: linear between the two that bracket it,
    else extended from the nearest two; and whether it was extended (extrapolated)."""
    pts = sorted(points)
    if len(pts) == 1:
        return pts[0][1], True
    for (d0, y0), (d1, y1) in itertools.pairwise(pts):
        if d0 <= target <= d1:
            if d1 - d0 < 1e-9:
                return min(y0, y1), False
            return y0 + (target - d0) * (y1 - y0) / (d1 - d0), False
    (d0, y0), (d1, y1) = pts[:2] if target < pts[0][0] else pts[-2:]
    if d1 - d0 < 1e-9:
        return (y0 if target < d0 else y1), True
    return y0 + (target - d0) * (y1 - y0) / (d1 - d0), True


def bits_at(points: Sequence[Measured], target: float) -> tuple[float, bool]:
    """The bit rate at VMAF `target` over measured encodes (log bit rate linear in VMAF)."""
    value, extrapolated = at_quality([(m.vmaf, math.log(m.bitrate)) for m in points], target)
    return math.exp(value), extrapolated


def cpu_at(points: Sequence[Measured], target: float) -> float:
    """The encode CPU seconds at VMAF `target` over measured encodes."""
    value, _ = at_quality([(m.vmaf, m.cpu) for m in points], target)
    return max(value, 0.0)


# --- the rate controls compared ----------------------------------------------------------


def abr_spec(spec: RenditionSpec, bitrate: int) -> RenditionSpec:
    """x264 `medium` one-pass `-b:v` (the VBV options are left out when encoding)."""
    return spec.model_copy(
        update={"codec": "h264", "crf": None, "preset": ABR_PRESET,
                "video_bitrate": max(bitrate, 10_000), "quality_target": None,
                "estimate": None}
    )  # fmt: skip


def seed_rate(spec: RenditionSpec) -> int:
    """The seed's fixed bit rate for a rung: its own figure for 360p, 720p and 1080p, else
    the nearest rung's scaled by pixels."""
    short = min(spec.width, spec.height)
    if short in SEED_RATES:
        return SEED_RATES[short]
    near = min(SEED_RATES, key=lambda h: abs(h - short))
    return round(SEED_RATES[near] * (short / near) ** 2 / 1000) * 1000


def seed_spec(spec: RenditionSpec) -> RenditionSpec:
    """The rung as the seed encoded it: a fixed bit rate, VBV peak 1.5x, buffer 2x,
    `veryfast`."""
    target = seed_rate(spec)
    peak, buffer = int(target * SEED_MAXRATE), target * SEED_BUFSIZE
    return spec.model_copy(
        update={
            "codec": "h264",
            "crf": None,
            "preset": SEED_PRESET,
            "video_bitrate": target,
            "max_bitrate": peak,
            "buffer_size": buffer,
            "level": h264_level(spec.width, spec.height, spec.fps, peak, buffer),
            "quality_target": None,
            "estimate": None,
        }
    )


@dataclass
class Rung:
    """One rung of one clip: each codec's tuned spec and encode, the seed's, x264 ABR's."""

    clip: str
    name: str
    target: float
    specs: dict[str, RenditionSpec] = field(default_factory=dict)
    ours: dict[str, Measured] = field(default_factory=dict)
    seed: Measured | None = None
    abr: list[Measured] = field(default_factory=list)

    def abr_at(self, codec: str) -> tuple[float, bool]:
        return bits_at(self.abr, self.ours[codec].vmaf)

    def ratio(self, codec: str) -> float:
        return self.ours[codec].bitrate / self.abr_at(codec)[0]

    @property
    def spread(self) -> float:
        scores = [m.vmaf for m in self.ours.values()]
        return max(scores) - min(scores)

    def floor(self) -> float:
        """The least VMAF each codec's rendition must show against the seed's."""
        assert self.seed is not None
        return min(self.target, self.seed.vmaf) - 1.0


def abr_points(pool: ThreadPoolExecutor, clip: Clip, rungs: list[Rung], settings: Settings) -> None:
    """x264 ABR encodes of every rung: three bit rates around H.264's, then more until every
    codec's VMAF lies between two (at most three more rounds), and once the interpolated
    rate where the two around a codec's VMAF are more than 1.6x apart."""

    def job(item: tuple[Rung, int]) -> tuple[Rung, Measured]:
        rung, bitrate = item
        base = rung.specs["h264"] if "h264" in rung.specs else next(iter(rung.specs.values()))
        return rung, encode_and_measure(clip, abr_spec(base, bitrate), settings, vbv=False)

    pending: list[tuple[Rung, int]] = []
    for rung in rungs:
        rates = [m.bitrate for m in rung.ours.values()]
        low, high = 0.7 * min(rates), 1.5 * max(rates)
        pending += [(rung, round(low * (high / low) ** (i / 2))) for i in range(3)]
    refined: set[str] = set()
    for _ in range(4):
        for rung, measured in parallel(pool, job, pending):
            rung.abr.append(measured)
        pending = []
        for rung in rungs:
            scores = [m.vmaf for m in rung.abr]
            rates = sorted(m.bitrate for m in rung.abr)
            wanted = [m.vmaf for m in rung.ours.values()]
            more: int | None = None
            if min(wanted) < min(scores) and rates[0] > 40_000 and len(rates) < 7:
                more = rates[0] // 2
            elif max(wanted) > max(scores) and len(rates) < 7 and max(scores) < 99.5:
                more = rates[-1] * 2
            elif rung.name not in refined:
                refined.add(rung.name)
                for target in wanted:
                    guess, _ = bits_at(rung.abr, target)
                    below = max((r for r in rates if r <= guess), default=rates[0])
                    above = min((r for r in rates if r >= guess), default=rates[-1])
                    if above > 1.6 * below:
                        more = round(guess)
                        break
            if more is not None:
                pending.append((rung, more))
        if not pending:
            break


@dataclass
class ClipResult:
    rungs: list[Rung]
    plans: dict[str, TitlePlan]  # per codec


def measure_clip(
    pool: ThreadPoolExecutor, name: str, base_url: str, settings: Settings, work: Path
) -> ClipResult:
    """Everything measured of one clip: per codec tune() (as split tunes each codec's
    ladder, every rung kept) and the real encodes; the seed's; x264 ABR's."""
    url = f"{base_url}/{name}.mp4"
    info = probe_source(url, settings)
    clip = Clip(name=name, url=url, info=info, work=work)
    ladder = plan_ladder(info, settings)
    rungs = {s.name: Rung(clip=name, name=s.name, target=settings.target_for(s.name))
             for s in ladder}  # fmt: skip
    plans: dict[str, TitlePlan] = {}
    ours: list[tuple[str, str, RenditionSpec, Future[Measured]]] = []
    seeds = {s.name: pool.submit(encode_and_measure, clip, seed_spec(s), settings)
             for s in ladder}  # fmt: skip
    # As split plans a job: H.264 first, then each other codec's rungs from H.264's tuned
    # ones (vtp.media.ladder.codec_ladders), searched with its own encoder.
    tuned = ladder
    for codec in sorted(CODECS, key=lambda c: c != "h264"):
        specs = [s for s in codec_ladders(tuned, [codec]) if s.codec == codec]
        plan = tune(url, info, specs, settings, prune=False)
        if codec == "h264":
            tuned = plan.specs
        plans[codec] = plan
        for base, spec in zip(ladder, plan.specs, strict=True):
            rungs[base.name].specs[codec] = spec
            ours.append((base.name, codec, spec,
                         pool.submit(encode_and_measure, clip, spec, settings)))  # fmt: skip
    for rung_name, codec, _spec, future in ours:
        rungs[rung_name].ours[codec] = future.result()
    for rung_name, future in seeds.items():
        rungs[rung_name].seed = future.result()
    ordered = sorted(rungs.values(), key=lambda r: -_pixels(next(iter(r.specs.values()))))
    abr_points(pool, clip, ordered, settings)
    return ClipResult(rungs=list(rungs.values()), plans=plans)


# --- the report ------------------------------------------------------------------------


def _kbps(bits: float) -> str:
    return f"{bits / 1000:.0f}"


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _star(extrapolated: bool) -> str:
    return "*" if extrapolated else " "


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_rungs(rows: list[Rung]) -> None:
    print()
    print("per rung and codec (kbit/s of video; crf and cap: the tuned factor and VBV maxrate; "
          "VMAF and SSIM against the source as the rung shows it; x264 ABR: x264 medium "
          "one-pass at the same VMAF, * extrapolated; CPU: encode s, measurement s)")  # fmt: skip
    print(f"{'clip':<9}{'rung':<6}{'codec':<6}{'target':>6}{'crf':>6}{'cap':>6} | "
          f"{'kbit/s':>7}{'VMAF':>7}{'SSIM':>8} | {'x264 ABR':>9}{'ratio':>7} | "
          f"{'CPU s':>6}{'meas':>6}")  # fmt: skip
    for r in rows:
        for codec, m in r.ours.items():
            spec = r.specs[codec]
            crf = f"{spec.crf:g}" if spec.crf is not None else "-"
            abr, extra = r.abr_at(codec)
            print(f"{r.clip:<9}{r.name:<6}{codec:<6}{r.target:>6g}{crf:>6}"
                  f"{_kbps(spec.max_bitrate):>6} | {_kbps(m.bitrate):>7}{m.vmaf:7.2f}"
                  f"{m.ssim:8.5f} | {_kbps(abr):>8}{_star(extra)}{r.ratio(codec):7.2f} | "
                  f"{m.cpu:6.1f}{m.measure_cpu:6.1f}")  # fmt: skip


def print_abr(rows: list[Rung]) -> None:
    print()
    print("x264 ABR's points (kbit/s @ VMAF), from which its bits at equal VMAF come")
    for r in rows:
        points = " ".join(f"{m.bitrate / 1000:.0f}@{m.vmaf:.2f}"
                          for m in sorted(r.abr, key=lambda m: m.bitrate))  # fmt: skip
        print(f"  {r.clip:<9}{r.name:<6} {points}")


def point_cost(rung: Rung) -> float:
    """What one VMAF point costs at the rung's target: the bits x264 ABR needs at
    target + 0.5 over those at target - 0.5 (log bit rate linear in VMAF), minus one."""
    high, _ = bits_at(rung.abr, rung.target + 0.5)
    low, _ = bits_at(rung.abr, rung.target - 0.5)
    return high / low - 1


def print_costs(rows: list[Rung]) -> None:
    print()
    print("what a VMAF point costs at each rung's target (x264 ABR's bits for one point more; "
          "the median over the clips): what the per-rung targets weigh "
          "(docs/quality.md)")  # fmt: skip
    names = sorted({r.name for r in rows}, key=lambda n: int(n.rstrip("p")))
    for name in names:
        costs = sorted(point_cost(r) for r in rows if r.name == name)
        target = next(r.target for r in rows if r.name == name)
        median = costs[len(costs) // 2]
        print(
            f"  {name:<6} at VMAF {target:g}: {median:+.0%} bits a point (clips: "
            + ", ".join(f"{c:+.0%}" for c in costs)
            + ")"
        )


def seed_figures(rows: list[Rung], codec: str) -> tuple[float, float, list[str]]:
    """Our bytes over the seed's for `codec` over every rung of `rows`, the worst VMAF margin
    over each rung's floor (min(target, seed's) - 1), and the rungs below their floor."""
    ours = sum(r.ours[codec].bitrate for r in rows)
    seed = sum(r.seed.bitrate for r in rows if r.seed)
    margins = [r.ours[codec].vmaf - r.floor() for r in rows]
    below = [f"{r.clip} {r.name} ({r.ours[codec].vmaf - r.floor():+.1f})"
             for r in rows if r.ours[codec].vmaf < r.floor()]  # fmt: skip
    return ours / seed, min(margins), below


def print_seed(rows: list[Rung]) -> None:
    print()
    ladder = ", ".join(f"{h}p {r // 1000}k" for h, r in SEED_RATES.items())
    print(f"against the seed's fixed ladder ({ladder}, "
          f"x264 {SEED_PRESET}): per clip, our bytes over the seed's; every rung's VMAF must be at "
          "least min(target, seed's) - 1")  # fmt: skip
    for r in rows:
        assert r.seed is not None
        print(
            f"  {r.clip:<9}{r.name:<6} seed {_kbps(r.seed.bitrate):>5} kbit/s VMAF "
            f"{r.seed.vmaf:6.2f} (floor {r.floor():6.2f}); "
            + ", ".join(f"{c} {_kbps(m.bitrate)}k {m.vmaf:.2f}" for c, m in r.ours.items())
        )
    clips = list(dict.fromkeys(r.clip for r in rows))
    print(f"  {'clip':<9}" + "".join(f"{c:>22}" for c in CODECS))
    for clip in clips:
        of = [r for r in rows if r.clip == clip]
        cells = []
        for codec in CODECS:
            ratio, margin, below = seed_figures(of, codec)
            cells.append(f"{ratio:.2f} (margin {margin:+.1f}{'!' if below else ''})")
        print(f"  {clip:<9}" + "".join(f"{c:>22}" for c in cells))


def print_spread(rows: list[Rung]) -> None:
    print()
    print(f"VMAF spread across the codecs of one rung (goal <= {GOAL_SPREAD:g})")
    for r in rows:
        print(
            f"  {r.clip:<9}{r.name:<6} {r.spread:5.2f}  ("
            + ", ".join(f"{c} {m.vmaf:.2f}" for c, m in r.ours.items())
            + ")"
        )


def print_predictions(rows: list[Rung], plans: dict[tuple[str, str], TitlePlan]) -> None:
    print()
    print("the plan's estimate (from the samples) against the real encode")
    print(f"{'clip':<9}{'rung':<6}{'codec':<6} | {'VMAF pred':>9}{'real':>7}{'diff':>6} | "
          f"{'kbit/s pred':>11}{'real':>7}{'err':>6} | {'CPU s pred':>10}{'real':>6}")  # fmt: skip
    for r in rows:
        for codec, m in r.ours.items():
            est = r.specs[codec].estimate
            if est is None:
                print(f"{r.clip:<9}{r.name:<6}{codec:<6} | no estimate: "
                      f"{plans[(r.clip, codec)].note}")  # fmt: skip
                continue
            print(f"{r.clip:<9}{r.name:<6}{codec:<6} | {est.quality:9.2f}{m.vmaf:7.2f}"
                  f"{est.quality - m.vmaf:+6.2f} | {_kbps(est.bitrate):>11}{_kbps(m.bitrate):>7}"
                  f"{est.bitrate / max(m.bitrate, 1) - 1:+6.0%} | "
                  f"{est.encode_cpu_seconds:10.1f}{m.cpu:6.1f}")  # fmt: skip


def print_notes(plans: dict[tuple[str, str], TitlePlan]) -> None:
    """What the plans say of their factors: where H.264 stopped at the knee below a target."""
    notes = [(clip, codec, p.note) for (clip, codec), p in plans.items() if p.note]
    if notes:
        print()
        print("the plans' notes (a rung aimed below its target, and why)")
        for clip, codec, note in notes:
            print(f"  {clip:<8} {codec:<5} {note}")


def _default_share(plan: TitlePlan, real: float) -> float:
    """The sampling's CPU over the real encodes' had the samples covered the default share
    of a long title (the cost per sampled second and per encoded second, as measured)."""
    sampled = sum(seconds for _, seconds in plan.samples)
    if not sampled or not real:
        return 0.0
    default = float(Settings.model_fields["quality_sample_share"].default)
    return plan.sampling_cpu_seconds / real * SECONDS / sampled * default


def print_sampling(rows: list[Rung], plans: dict[tuple[str, str], TitlePlan]) -> None:
    print()
    print("the sampling's cost per clip and codec: CPU (wall) of every sample encode and "
          "measurement, against the real encodes' of that codec (samples cover "
          f"{SAMPLE_SHARE:.0%} here; scaled to the default share of a long title)")  # fmt: skip
    for (clip, codec), plan in plans.items():
        real = sum(r.ours[codec].cpu for r in rows if r.clip == clip)
        wall = sum(r.ours[codec].wall for r in rows if r.clip == clip)
        samples = ", ".join(f"{s:g}+{d:g}s" for s, d in plan.samples) or "none"
        print(f"  {clip:<9}{codec:<5} samples {samples}: {plan.sampling_cpu_seconds:5.1f} s CPU "
              f"({plan.sampling_wall_seconds:5.1f} s wall) against {real:5.1f} s CPU "
              f"({wall:5.1f} s wall) of encodes: {plan.sampling_cpu_seconds / real:.0%}; "
              f"at the default share {_default_share(plan, real):.1%}")  # fmt: skip


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _verdict(met: bool, figures: str) -> str:
    return "met" if met else f"NOT met ({figures})"


def print_summary(rows: list[Rung], plans: dict[tuple[str, str], TitlePlan]) -> None:
    print()
    print(f"{'summary':<7}{'bits/x264 ABR':>16}{'goal':>6}{'bytes/seed':>12}{'goal':>6}"
          f"{'worst margin':>13}{'CPU s':>8}{'sampling CPU':>14}{'VMAF err':>10}"
          f"{'rate err':>10}")  # fmt: skip
    seed_ratios = {}
    for codec in CODECS:
        ratios = [r.ratio(codec) for r in rows]
        seed_ratio, margin, below = seed_figures(rows, codec)
        seed_ratios[codec] = seed_ratio
        cpu = sum(r.ours[codec].cpu for r in rows)
        sampling = sum(p.sampling_cpu_seconds for (_, c), p in plans.items() if c == codec)
        errs = [abs(r.specs[codec].estimate.quality - r.ours[codec].vmaf)
                for r in rows if r.specs[codec].estimate]  # fmt: skip
        rate_errs = [abs(math.log(r.specs[codec].estimate.bitrate / r.ours[codec].bitrate))
                     for r in rows if r.specs[codec].estimate]  # fmt: skip
        goal_seed = GOAL_SEED_H264 if codec == "h264" else GOAL_SEED_BEST
        print(f"{codec:<7}{geomean(ratios):>8.2f} (w {max(ratios):.2f}){GOAL_ABR[codec]:>6.2f}"
              f"{seed_ratio:>12.2f}{goal_seed:>6.2f}{margin:>+13.1f}{cpu:>8.1f}"
              f"{sampling:>8.1f} ({sampling / cpu:.0%})"
              f"{_mean(errs):>10.2f}{math.exp(_mean(rate_errs)) - 1:>+10.0%}")  # fmt: skip
    print(
        "(VMAF err: mean |predicted - measured| in points; rate err: geometric mean of the "
        "predicted/real bit rate's deviation; worst margin: the lowest VMAF over its floor)"
    )
    print()
    for codec in CODECS:
        ratio = geomean([r.ratio(codec) for r in rows])
        print(
            f"goal {codec} bits/x264 ABR <= {GOAL_ABR[codec]:.2f}: "
            f"{'met' if ratio <= GOAL_ABR[codec] else f'NOT met ({ratio:.2f})'}"
        )
    _, _, below = seed_figures(rows, "h264")
    h264 = seed_ratios.get("h264", float("nan"))
    print(
        f"goal h264 bytes/seed <= {GOAL_SEED_H264:.2f} with every rung at its floor: "
        + _verdict(h264 <= GOAL_SEED_H264 and not below, f"{h264:.2f}; below: {below or None}")
    )
    best = min(seed_ratios, key=lambda c: seed_ratios[c])
    _, _, below = seed_figures(rows, best)
    print(
        f"goal best codec ({best}) bytes/seed <= {GOAL_SEED_BEST:.2f} with every rung at its "
        "floor: "
        + _verdict(
            seed_ratios[best] <= GOAL_SEED_BEST and not below,
            f"{seed_ratios[best]:.2f}; below: {below or None}",
        )
    )
    worst = max(rows, key=lambda r: r.spread)
    print(
        f"goal spread <= {GOAL_SPREAD:g}: "
        f"{'met' if worst.spread <= GOAL_SPREAD else 'NOT met'} (worst {worst.spread:.2f}, "
        f"{worst.clip} {worst.name})"
    )


def main() -> None:
    started = time.monotonic()
    names = [c for c in CLIPS if c in ONLY] if ONLY else list(DEFAULT_CLIPS)
    unknown = [c for c in ONLY if c not in CLIPS]
    if unknown or not names:
        raise SystemExit(f"unknown clip(s) {', '.join(unknown)}; the clips are {', '.join(CLIPS)}")
    settings = Settings(
        quality_sample_share=SAMPLE_SHARE,
        quality_sample_timeout_seconds=SAMPLE_TIMEOUT,
        ffmpeg_threads=1,
    )
    print(f"corpus: {', '.join(names)}; {SECONDS:g} s each at {WIDTH}x{HEIGHT} {FPS} fps "
          f"(lavfi sources, x264 CRF 10 mezzanines)")  # fmt: skip
    print(f"ours: the product's settings (presets: x264 {settings.x264_preset}, x265 "
          f"{settings.hevc_preset}, SVT-AV1 {settings.av1_preset}; VMAF targets "
          + ", ".join(f"{k} {v:g}" for k, v in settings.quality_targets.items()
                      if k in ("360p", "720p", "1080p"))
          + f"; {settings.quality_sample_count} samples of {settings.quality_sample_seconds:g} s), "
          f"except quality_sample_share {SAMPLE_SHARE:g} (the default's of a {SECONDS:g} s clip "
          f"holds no sample), ffmpeg_threads 1; every rung kept (no pruning)")  # fmt: skip
    print(f"x264 ABR: {ABR_PRESET}, one-pass -b:v, no VBV; seed: {SEED_PRESET}, fixed -b:v, "
          f"maxrate {SEED_MAXRATE:g}x, bufsize {SEED_BUFSIZE:g}x; VMAF every "
          f"{settings.quality_vmaf_subsample}th frame; {WORKERS} ffmpeg at a time; "
          f"load average at the start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
          )  # fmt: skip
    root, corpus, server, base_url = corpus_folder("vtp-bench-quality-")
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="encode")
    try:
        for name in names:
            t0 = time.monotonic()
            make_clip(corpus, name)
            _progress(f"[{time.monotonic() - started:6.0f} s] made {name} "
                      f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
        rows: list[Rung] = []
        plans: dict[tuple[str, str], TitlePlan] = {}
        for name in names:
            work = root / f"work-{name}"
            work.mkdir()
            result = measure_clip(pool, name, base_url, settings, work)
            shutil.rmtree(work, ignore_errors=True)
            rows += result.rungs
            plans.update({(name, c): p for c, p in result.plans.items()})
            _progress(f"[{time.monotonic() - started:6.0f} s] {name}: " + "; ".join(
                f"{r.name} " + " ".join(f"{c} {r.ratio(c):.2f}" for c in r.ours)
                for r in result.rungs))  # fmt: skip
        print_rungs(rows)
        print_abr(rows)
        print_seed(rows)
        print_spread(rows)
        print_costs(rows)
        print_predictions(rows, plans)
        print_notes(plans)
        print_sampling(rows, plans)
        print_summary(rows, plans)
    finally:
        pool.shutdown(cancel_futures=True)
        server.shutdown()
        server.server_close()
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(
        f"load average at the end {os.getloadavg()[0]:.1f}; total "
        f"{time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
