"""What packaging costs beside the encode: storage of HLS+DASH against HLS alone, and the
CPU time of the I-frame playlists, the storyboard and loudness normalisation against the
encode's.

A SECONDS-long 1280x720 25 fps lavfi clip with a tone (served over HTTP on 127.0.0.1: the
encoders read sources by URL only) is encoded as a job's default ladder would be (vtp.media.ladder
at the default factor: 360p and 720p, and the sound as its own rendition), each rendition
with the real functions (vtp.media.encode.encode_rendition / encode_audio), every ffmpeg
`-threads 1`. Then, on those very files:

- DASH: the manifest vtp.media.dash writes over the renditions' playlists; its bytes against
  everything the job stores (segments, init segments, playlists, I-frame playlists);
- I-frame playlists: the byte-range scan of every segment (vtp.media.iframes.scan), CPU time of
  this process;
- storyboard: vtp.media.storyboard.build on the 360p rendition's keyframes (ffmpeg's CPU time);
- loudness: the audio rendition encoded again with a -16 LUFS target; the CPU time it
  takes over the plain one (the measuring pass and the filter).

CPU times of ffmpeg are its own (user + system, as vtp.media.ffmpeg reaps them). Goal: HLS+DASH
under 1% more storage than HLS; the three extras together under 5% of the encode's CPU.
Knobs: VTP_BENCH_PACKAGING_SECONDS (60).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import serve  # the benchmark folder's own module

from vtp.media import dash, iframes, storyboard
from vtp.media.encode import HLS_PLAYLIST, encode_audio, encode_rendition, parse_media_playlist
from vtp.media.ladder import audio_renditions, plan_ladder
from vtp.media.probe import probe_source
from vtp.settings import Settings

SECONDS = float(os.environ.get("VTP_BENCH_PACKAGING_SECONDS", "60"))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    settings = Settings(ffmpeg_threads=1)
    root = Path(tempfile.mkdtemp(prefix="vtp-bench-packaging-"))
    try:
        src = root / "src"
        src.mkdir()
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=25:duration={SECONDS:g}",
             "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SECONDS:g}",
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-b:a", "192k", str(src / "clip.mp4")],
            check=True,
        )  # fmt: skip
        server, base = serve(src)
        url = f"{base}/clip.mp4"
        info = probe_source(url, settings)
        specs = audio_renditions(plan_ladder(info, settings), info, max_tracks=8)
        out = root / "job"
        encode_cpu = 0.0
        results = {}
        for spec in specs:
            before = _children_cpu()
            if spec.audio_only:
                results[spec.name] = encode_audio(url, info, spec, out / spec.name,
                                                  settings=settings)  # fmt: skip
            else:
                results[spec.name] = encode_rendition(url, info, spec, out / spec.name,
                                                      settings=settings)  # fmt: skip
            spent = _children_cpu() - before
            encode_cpu += spent
            print(f"{spec.name}: {results[spec.name].size_bytes / 1e6:.1f} MB, encode "
                  f"{spent:.1f} s CPU", flush=True)  # fmt: skip
        # I-frame playlists: the scan each encode already ran, timed again alone.
        scan_started = time.process_time()
        scans = {}
        for spec in specs:
            if spec.audio_only:
                continue
            _, listed = parse_media_playlist((out / spec.name / HLS_PLAYLIST).read_text())
            scans[spec.name] = iframes.scan(out / spec.name, listed)
        scan_cpu = time.process_time() - scan_started
        # The storyboard from the smallest rendition's keyframes.
        small = min((s for s in specs if not s.audio_only), key=lambda s: s.width * s.height)
        frames = scans[small.name]
        chosen = storyboard.pick(frames, settings.storyboard_seconds)
        init = (out / small.name / "init.mp4").read_bytes()
        ranges = [
            (out / small.name / f.uri).read_bytes()[f.offset : f.offset + f.length]
            for _, _, f in chosen
        ]
        before = _children_cpu()
        thumbs = storyboard.build(init, ranges, [(s, e) for s, e, _ in chosen],
                                  root / "storyboard", source_size=(small.width, small.height),
                                  width=settings.storyboard_width, timeout=600)  # fmt: skip
        board_cpu = _children_cpu() - before
        # Loudness: the sound again, normalised.
        sound = next(s for s in specs if s.audio_only)
        before = _children_cpu()
        encode_audio(url, info, sound, root / "plain", settings=settings)
        plain_cpu = _children_cpu() - before
        before = _children_cpu()
        encode_audio(url, info, sound.model_copy(update={"loudness": -16.0}), root / "loud",
                     settings=settings)  # fmt: skip
        loud_cpu = _children_cpu() - before
        loudness_cpu = max(0.0, loud_cpu - plain_cpu)
        # DASH over the same files.
        tracks = [
            dash.rendition_track((out / s.name / HLS_PLAYLIST).read_text(), s.name,
                                 results[s.name], s)
            for s in specs
        ]  # fmt: skip
        mpd = dash.manifest(tracks).encode()
        stored = _bytes(out)
        server.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    extras = scan_cpu + board_cpu + loudness_cpu
    print()
    print(f"source: {SECONDS:g} s 1280x720 25 fps; ladder {', '.join(s.name for s in specs)}; "
          f"x264 {settings.x264_preset}, -threads 1")  # fmt: skip
    print(f"storage: HLS {stored / 1e6:.2f} MB; the DASH manifest {len(mpd)} bytes: HLS+DASH is "
          f"{100 * len(mpd) / stored:.3f}% more (goal < 1%)")  # fmt: skip
    print(f"encode CPU: {encode_cpu:.1f} s")
    print(f"I-frame playlists: {scan_cpu * 1000:.0f} ms CPU ({100 * scan_cpu / encode_cpu:.3f}%)")
    print(f"storyboard: {len(thumbs)} thumbnails, {board_cpu:.2f} s CPU "
          f"({100 * board_cpu / encode_cpu:.2f}%)")  # fmt: skip
    print(f"loudness: {loud_cpu:.2f} s CPU against {plain_cpu:.2f} s for the plain sound: "
          f"+{loudness_cpu:.2f} s ({100 * loudness_cpu / encode_cpu:.2f}%)")  # fmt: skip
    print(f"extras together: {100 * extras / encode_cpu:.2f}% of the encode (goal < 5%)")


if __name__ == "__main__":
    main()
