"""The one ffmpeg build (vtp.media.build, docs/ffmpeg.md): pinned alike everywhere, found by
the code and by PATH, and read correctly by the OS's ffprobe in every codec we write."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from vtp.media.build import build, ffmpeg_path

REPO = Path(__file__).resolve().parent.parent


def _pins(lines: list[str]) -> set[str]:
    return {
        line.split("#", 1)[0].strip().replace(" ", "")
        for line in lines
        if line.strip().lower().startswith("imageio-ffmpeg")
    }


def test_the_pin_is_one_exact_version_everywhere() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    template = (REPO / "template/python3-http-ffmpeg/requirements.txt").read_text().splitlines()
    assert _pins(project) == _pins(template) == {"imageio-ffmpeg==0.8.1"}
    dockerfile = (REPO / "template/python3-http-ffmpeg/Dockerfile").read_text()
    assert "imageio_ffmpeg.get_ffmpeg_exe()" in dockerfile and "/usr/local/bin/ffmpeg" in dockerfile


def test_the_code_and_the_path_run_the_pinned_build() -> None:
    """The functions' ffmpeg, and the `ffmpeg` the tests and benchmarks find on PATH, are
    the wheel's binary, by its link named ffmpeg (what `ps` shows)."""
    on_path = shutil.which("ffmpeg")
    assert on_path is not None
    assert Path(on_path).resolve() == Path(ffmpeg_path()).resolve()
    assert Path(ffmpeg_path()).name == "ffmpeg"
    assert "imageio_ffmpeg" in str(Path(ffmpeg_path()).resolve())
    assert build().ffmpeg.startswith("n9.0.2")
    assert re.match(r"\d+\.\d+", build().ffprobe), build().ffprobe
    capabilities = subprocess.run(
        [on_path, "-hide_banner", "-filters"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"\blibvmaf\b", capabilities)


@pytest.mark.parametrize(
    ("encoder", "codec", "tag"),
    [("libx264", "h264", "avc1"), ("libx265", "hevc", "hvc1"), ("libsvtav1", "av1", "av01")],
)
def test_the_os_ffprobe_reads_what_the_pinned_ffmpeg_writes(
    tmp_path: Path, encoder: str, codec: str, tag: str
) -> None:
    """ffprobe 5.1 against ffmpeg 9.0's fragmented MP4 in each codec of a ladder, with
    keyframes on a 1 s grid at 30000/1001: the codec, size, rate, colour tags, frame count
    and the keyframes' times (AV1's included: SVT-AV1 4 keys where it is told) are what was
    written."""
    out = tmp_path / f"{codec}.mp4"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30000/1001:duration=3",
         "-pix_fmt", "yuv420p", "-c:v", encoder, "-tag:v", tag,
         *(["-preset", "10"] if codec == "av1" else ["-preset", "ultrafast"]),
         "-force_key_frames", "expr:gte(t,n_forced*1)",
         "-vf", "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709",
         "-movflags", "+frag_keyframe+empty_moov+default_base_moof", str(out)],
        check=True, timeout=120,
    )  # fmt: skip
    probed = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-print_format", "json", "-count_frames",
             "-show_streams", "-show_entries", "packet=pts_time,flags", str(out)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    )  # fmt: skip
    (video,) = probed["streams"]
    assert (video["codec_name"], video["codec_tag_string"]) == (codec, tag)
    assert (video["width"], video["height"]) == (320, 180)
    assert video["r_frame_rate"] == "30000/1001"
    assert (video["color_primaries"], video["color_transfer"]) == ("bt709", "bt709")
    assert int(video["nb_read_frames"]) == 90
    first = min(float(p["pts_time"]) for p in probed["packets"])  # after B-frame delay
    keys = sorted(float(p["pts_time"]) - first for p in probed["packets"] if "K" in p["flags"])
    assert keys == pytest.approx([0.0, 1.001, 2.002], abs=1e-3)
