"""Segment-parallel encoding's pieces against real ffmpeg: chunks encoded apart (as separate
replicas would) join into one stream indistinguishable from a whole encode, and a chunk
that does not fit is named."""

from __future__ import annotations

import http.server
import itertools
import shutil
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from tests.test_media import H264, _av, _bind_directory, _ffmpeg, _RangeHandler, ffprobe
from vtp.media.chunks import ChunkRange, plan_chunks
from vtp.media.encode import ChunkResult, encode_chunk, encode_rendition
from vtp.media.join import check_join, media_playlist
from vtp.media.ladder import plan_ladder
from vtp.media.probe import probe_source
from vtp.settings import Settings

GRID = Settings(segment_seconds=4.0, gop_seconds=2.0, chunk_seconds=8.0, ffprobe_timeout_seconds=30)
SECONDS = 20.0
FPS = Fraction(25)


@pytest.fixture(scope="module")
def source_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("chunked-src")
    _ffmpeg(*_av("640x360", SECONDS, rate=25), *H264, "-c:a", "aac", "-movflags", "+faststart",
            str(root / "src.mp4"))  # fmt: skip
    handler = type("H", (_RangeHandler,), {"requested": [], "__init__": _bind_directory(root)})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/src.mp4?X-Amz-Signature=x"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def encoded(source_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("chunked")
    info = probe_source(source_url, GRID)
    (spec,) = plan_ladder(info, GRID, ["360p"])
    plan = plan_chunks(info.duration, segment_s=4, chunk_s=GRID.chunk_seconds, threshold_s=0)
    results = [
        encode_chunk(source_url, info, spec, c, out / f"c{c.index}", settings=GRID) for c in plan
    ]
    whole = encode_rendition(
        source_url, info.model_copy(update={"has_audio": False}), spec, out / "whole",
        settings=GRID,
    )  # fmt: skip
    (out / "joined").mkdir()
    prefixes = [f"../c{c.index}/" for c in plan]
    (out / "joined" / "index.m3u8").write_text(media_playlist(results, prefixes=prefixes))
    return {"out": out, "info": info, "spec": spec, "plan": plan, "results": results,
            "whole": whole}  # fmt: skip


def frames(playlist: Path) -> list[tuple[float, bool]]:
    data = ffprobe(playlist, "-select_streams", "v:0", "-show_entries", "frame=pts_time,key_frame")
    return [(round(float(f["pts_time"]), 4), f["key_frame"] == 1) for f in data["frames"]]


def test_the_plan_is_whole_segments(encoded: dict[str, Any]) -> None:
    assert [(c.start_s, c.end_s, c.first_segment) for c in encoded["plan"]] == [
        (0.0, 8.0, 1), (8.0, 16.0, 3), (16.0, SECONDS, 5),
    ]  # fmt: skip
    names = [s.name for r in encoded["results"] for s in r.segments]
    assert names == [f"seg_{n:05d}.m4s" for n in range(1, 6)]


def test_chunks_join_without_a_seam(encoded: dict[str, Any]) -> None:
    results: list[ChunkResult] = encoded["results"]
    assert check_join(results, fps=FPS, source_duration=encoded["info"].duration) == []
    out = encoded["out"]
    inits = {(out / f"c{r.index}" / r.init).read_bytes() for r in results}
    assert len(inits) == 1, "every chunk's init segment is byte for byte the first one's"
    (init,) = inits
    assert b"Lavf" not in init and b"Lavc" not in init  # nothing of the build that wrote it
    joined = frames(out / "joined" / "index.m3u8")
    assert len(joined) == SECONDS * 25  # no frame lost or doubled
    steps = {round(b[0] - a[0], 4) for a, b in itertools.pairwise(joined)}
    assert steps == {0.04}, "timestamps continuous across every boundary"
    keys = [t for t, key in joined if key]
    assert [round(k - keys[0], 3) for k in keys] == [2.0 * i for i in range(10)]
    # What a player sees is what one encoder of the whole would have made: same instants.
    whole = frames(out / "whole" / "index.m3u8")
    assert [t for t, _ in joined] == [t for t, _ in whole]
    assert [t for t, k in whole if k] == keys


def test_a_chunk_that_does_not_fit_is_named(
    encoded: dict[str, Any], source_url: str, tmp_path: Path
) -> None:
    """A chunk one frame short (an encoder cut off early), chunks out of order, and a chunk
    encoded against another init segment each name the chunk to encode again, and only it."""
    info, spec = encoded["info"], encoded["spec"]
    c0, c1, c2 = encoded["results"]
    short_range = ChunkRange(index=1, start_s=8.0, end_s=15.96, first_segment=3)
    short = encode_chunk(source_url, info, spec, short_range, tmp_path / "short", settings=GRID)
    problems = check_join(
        [c0, short.model_copy(update={"end_s": 16.0}), c2], fps=FPS, source_duration=SECONDS
    )
    assert {p.chunk for p in problems} == {1} and "199 frames" in problems[0].reason, problems
    swapped = check_join([c0, c2, c1], fps=FPS, source_duration=SECONDS)
    assert {p.chunk for p in swapped} == {1, 2}
    main = spec.model_copy(update={"profile": "main"})
    other = encode_chunk(source_url, info, main, encoded["plan"][2], tmp_path / "o", settings=GRID)
    problems = check_join([c0, c1, other], fps=FPS, source_duration=SECONDS)
    assert [(p.chunk, p.reason) for p in problems] == [
        (2, "its init segment differs from the first chunk's")
    ]


def test_two_ffmpeg_builds_write_the_same_init_segment(
    encoded: dict[str, Any], tmp_path: Path
) -> None:
    """A rolling update of the transcode image in the middle of a job: chunks written by
    another ffmpeg build (here: the whole encode's init with other library versions in it)
    still share the first chunk's init once the build's marks are dropped, and play."""
    import re

    from vtp.media import fmp4

    whole: Path = encoded["out"] / "whole"
    written = (whole / "init.mp4").read_bytes()
    assert re.search(rb"Lavf\d+\.\d+\.\d+", written), "ffmpeg names itself in what it writes"
    other = re.sub(rb"(Lav[fc])\d", rb"\g<1>9", written)
    assert other != written and len(other) == len(written)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(written)
    b.write_bytes(other)
    fmp4.drop_build_marks(a)
    fmp4.drop_build_marks(b)
    assert a.read_bytes() == b.read_bytes()
    assert fmp4.track_timescale(a) == fmp4.track_timescale(whole / "init.mp4")
    played = tmp_path / "played"
    shutil.copytree(whole, played)
    shutil.copy(a, played / "init.mp4")
    assert len(frames(played / "index.m3u8")) == SECONDS * 25


@pytest.mark.slow
def test_hevc_chunks_join_as_h264_ones_do(
    encoded: dict[str, Any], source_url: str, tmp_path: Path
) -> None:
    """x265 takes the same forced IDR keyframes: an HEVC rendition encoded in chunks joins
    without a seam, every chunk writing the one init segment (hvcC) the playlist names."""
    spec = encoded["spec"].model_copy(
        update={"codec": "hevc", "crf": 30.0, "preset": "ultrafast", "name": "360p-hevc"}
    )
    info = encoded["info"]
    results = [
        encode_chunk(source_url, info, spec, c, tmp_path / f"h{c.index}", settings=GRID)
        for c in encoded["plan"]
    ]
    assert check_join(results, fps=FPS, source_duration=info.duration) == []
    assert len({r.init_sha256 for r in results}) == 1
    assert results[0].codecs.startswith("hvc1.1.6.L")
    assert all(s.keyframe_first and s.keyframe_length for r in results for s in r.segments)
