"""Footage as devices make it: per case, what the renditions make of it, measured.

Each source of tests/footage.py (a phone's variable rate, a browser's recording without
duration or index, a broadcast TS at 10 s with late sound, an edited file, HDR PQ / HLG /
Dolby Vision 8.4, 23.976 and 29.97, 25i) is probed, planned and encoded in-process with
the product's own code (vtp.media: the smallest rung and the sound rendition, as the
functions would), then measured as a player reads it:

- sync: every beep minus its flash (ms; + is sound late), the worst and the median;
- grid: the picture's start and whether every frame is one 1/fps step after the last;
- SSIM of the HDR renditions against the SDR picture they were made from, beside the
  source taken as SDR (what the renditions were before tone mapping).

Then the two filter choices the issue asks to compare, on the same footage:
- tone mapping: the operators (and SDR white at 100 or 203 cd/m2) on the PQ and HLG sources,
  and on the same with a phone's highlights (up to 1000 cd/m2 above half of SDR white);
- deinterlacing: bwdif (the product's), yadif, estdif and w3fdif on 25i made from 50p,
  SSIM against the progressive frames at the top field's instants, and their speed.

Knobs: VTP_BENCH_FOOTAGE_ONLY (comma-separated case names), VTP_BENCH_FOOTAGE_COMPARE=0
(skip the comparisons).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from quality import serve  # the benchmark folder's own module: a Range-capable server

from tests import footage
from vtp.media.encode import encode_audio, encode_rendition
from vtp.media.ladder import audio_renditions, plan_ladder
from vtp.media.probe import probe_source
from vtp.settings import Settings

ONLY = [n for n in os.environ.get("VTP_BENCH_FOOTAGE_ONLY", "").split(",") if n]
COMPARE = os.environ.get("VTP_BENCH_FOOTAGE_COMPARE", "1") != "0"
SETTINGS = Settings(ffprobe_timeout_seconds=60)

Maker = Callable[[Path], Path]


def cases(folder: Path) -> dict[str, Maker]:
    sdr = footage.sdr_picture(folder / "sdr.mkv")
    return {
        "phone VFR 20-30 fps (mov)": lambda p: footage.flash_beep(
            p.with_suffix(".mov"), seconds=6, rate_pattern=footage.VFR_PHONE
        ),
        "sound 80 ms late (mp4)": lambda p: footage.flash_beep(
            p.with_suffix(".mp4"), seconds=4, offset=0.08
        ),
        "broadcast TS at 10 s, sound +40 ms": lambda p: footage.broadcast_ts(
            p.with_suffix(".ts"), seconds=4, start=10.0, audio_delay=0.04
        ),
        "broadcast TS 25i": lambda p: footage.broadcast_ts(
            p.with_suffix(".ts"), seconds=4, interlaced=True
        ),
        "MediaRecorder WebM (VP8/Opus)": lambda p: footage.media_recorder_webm(
            p.with_suffix(".webm"), seconds=4
        ),
        "edited mp4 (edit lists)": lambda p: footage.negative_start(
            p.with_suffix(".mp4"), seconds=5, cut=2.5
        ),
        "23.976 fps": lambda p: footage.ntsc_rates(p.with_suffix(".mp4"), rate="24000/1001"),
        "29.97 fps": lambda p: footage.ntsc_rates(p.with_suffix(".mp4"), rate="30000/1001"),
        "HDR PQ (HEVC 10-bit mov)": lambda p: footage.hdr_from_sdr(
            p.with_suffix(".mov"), sdr, transfer="pq"
        ),
        "HDR HLG (HEVC 10-bit mov)": lambda p: footage.hdr_from_sdr(
            p.with_suffix(".mov"), sdr, transfer="hlg"
        ),
        "Dolby Vision 8.4 (HLG base)": lambda p: footage.dolby_vision(
            p.with_suffix(".mov"),
            footage.hdr_from_sdr(p.with_name("dv-base.mov"), sdr, transfer="hlg"),
        ),
    }


def measure(name: str, source: Path, url: str, out: Path, sdr: Path) -> dict[str, str]:
    info = probe_source(url, SETTINGS)
    video = plan_ladder(info, SETTINGS)[0]
    specs = audio_renditions([video], info, max_tracks=1)
    started = time.monotonic()
    rendition = encode_rendition(url, info, specs[0], out / "video", settings=SETTINGS)
    playlist = str(out / "video" / "index.m3u8")
    row = {
        "case": name,
        "fps": f"{rendition.fps:.3f}" + (" (VFR)" if info.variable_frame_rate else ""),
        "encode s": f"{time.monotonic() - started:.1f}",
    }
    times = footage.frame_times(playlist)
    steps = {round(b - a, 4) for a, b in itertools.pairwise(times)}
    row["grid"] = f"from {times[0]:.3f}s, " + (
        "every step 1/fps" if steps == {round(1 / rendition.fps, 4)} else f"steps {steps}"
    )
    if info.has_audio:
        encode_audio(url, info, specs[1], out / "audio", settings=SETTINGS)
        offsets = footage.sync_offsets(playlist, str(out / "audio" / "index.m3u8"))
        ms = [o * 1000 for o in offsets]
        row["sync ms"] = (
            f"worst {max(ms, key=abs):+.1f}, median {statistics.median(ms):+.1f} ({len(ms)} marks)"
            if ms
            else "no marks"
        )
    else:
        row["sync ms"] = "silent"
    if info.dynamic_range != "sdr":
        naive = out / "naive.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-vf",
                        f"scale={video.width}:{video.height},format=yuv420p", "-c:v", "libx264",
                        "-crf", "18", str(naive)], check=True, timeout=300)  # fmt: skip
        row["SSIM vs SDR"] = (
            f"{footage.ssim_against(playlist, sdr):.3f} "
            f"(as SDR: {footage.ssim_against(naive, sdr):.3f})"
        )
    return row


def compare_tone_mapping(folder: Path, sdr: Path) -> list[dict[str, str]]:
    rows = []
    transfers = (("pq", "smpte2084"), ("hlg", "arib-std-b67"))
    for hi, (transfer, trc) in itertools.product((False, True), transfers):
        name = f"{transfer}{'+highlights' if hi else ''}"
        source = footage.hdr_from_sdr(
            folder / f"tm-{name}.mov", sdr, transfer=transfer, highlights=hi
        )
        for npl in (100, 203):
            for op in ("mobius:param=0.5", "mobius:param=0.9", "mobius", "hable", "reinhard",
                       "clip", "none"):  # fmt: skip
                chain = (f"zscale=tin={trc}:pin=bt2020:min=bt2020nc:rin=tv:t=linear:npl={npl},"
                         f"format=gbrpf32le,zscale=p=bt709,tonemap=tonemap={op}:desat=0,"
                         "zscale=t=bt709:m=bt709:r=tv,format=yuv420p")  # fmt: skip
                score, seconds = _ssim(source, chain, sdr, "format=yuv420p")
                rows.append({"source": name, "SDR white": f"{npl}", "operator": op,
                             "SSIM": f"{score:.3f}", "s": f"{seconds:.1f}"})  # fmt: skip
    return rows


# Two 50p pictures: plain motion (testsrc2), and fine detail moving (a hue-turning testsrc2
# averaged with a cellular automaton), where deinterlacers differ most.
_PROGRESSIVE = {
    "plain motion": ["-f", "lavfi", "-i", "testsrc2=s=720x576:r=50:d=4"],
    "fine detail": [
        "-f", "lavfi", "-i", "testsrc2=s=1440x1152:r=50:d=4",
        "-f", "lavfi", "-i", "cellauto=s=720x576:r=50:rule=110,trim=duration=4",
        "-filter_complex", "[0:v]scale=720:576,hue=H=t[a];[1:v]format=yuv420p[b];"
        "[a][b]blend=all_mode=average",
    ],
}  # fmt: skip


def compare_deinterlacers(folder: Path) -> list[dict[str, str]]:
    """25i made from 50p (the top field first, each field from its own instant): each
    deinterlacer's 25p against the 50p frames at the top fields' instants."""
    rows = []
    for picture, inputs in _PROGRESSIVE.items():
        progressive = folder / "p50.mkv"
        subprocess.run(["ffmpeg", "-v", "error", "-y", *inputs, "-c:v", "ffv1",
                        str(progressive)], check=True, timeout=300)  # fmt: skip
        interlaced = folder / "i25.mkv"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(progressive), "-vf",
                        "interlace=scan=tff:lowpass=0,setfield=tff", "-c:v", "ffv1",
                        str(interlaced)], check=True, timeout=300)  # fmt: skip
        for name, chain in (
            ("bwdif (product)", "bwdif=mode=send_frame:deint=all"),
            ("yadif", "yadif=mode=send_frame:deint=all"),
            ("estdif", "estdif=mode=frame:deint=all"),
            ("w3fdif (field rate, every 2nd)", "w3fdif,select='not(mod(n\\,2))'"),
            ("none (weave)", "null"),
        ):
            score, seconds = _ssim(interlaced, chain, progressive, "select='not(mod(n\\,2))'")
            rows.append({"picture": picture, "deinterlacer": name, "SSIM": f"{score:.4f}",
                         "s": f"{seconds:.1f}"})  # fmt: skip
    return rows


def _ssim(source: Path, chain: str, reference: Path, ref_chain: str) -> tuple[float, float]:
    started = time.monotonic()
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(source), "-i", str(reference),
         "-filter_complex", f"[0:v]{chain},setpts=PTS-STARTPTS[e];"
         f"[1:v]{ref_chain},format=yuv420p,setpts=PTS-STARTPTS[r];[e][r]ssim",
         "-f", "null", "-"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    found = re.findall(r"All:([0-9.]+)", done.stderr)
    return float(found[-1]), time.monotonic() - started


def table(rows: list[dict[str, str]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r.get(k, "") for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vtp-bench-footage-") as tmp:
        folder = Path(tmp)
        server, base = serve(folder)
        sdr = footage.sdr_picture(folder / "sdr.mkv")
        rows = []
        try:
            for i, (name, make) in enumerate(cases(folder).items()):
                if ONLY and not any(o.lower() in name.lower() for o in ONLY):
                    continue
                source = make(folder / f"case{i}")
                out = folder / f"out{i}"
                rows.append(measure(name, source, f"{base}/{source.name}", out, sdr))
                print(rows[-1], flush=True)
        finally:
            server.shutdown()
        print("\n## Per case\n\n" + table(rows))
        if COMPARE:
            print("\n## Tone mapping (SSIM against the SDR picture)\n")
            print(table(compare_tone_mapping(folder, sdr)))
            print("\n## Deinterlacing 25i (SSIM against the 50p frames)\n")
            print(table(compare_deinterlacers(folder)))


if __name__ == "__main__":
    main()
