"""Chunk planning (vtp.media.chunks): whole segments, nothing lost or doubled, tails absorbed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from vtp.media.chunks import estimated_cost, longest_first, plan_chunks


def test_a_short_source_is_encoded_whole() -> None:
    assert plan_chunks(120.0, segment_s=4, chunk_s=48, threshold_s=120) == []
    assert plan_chunks(50.0, segment_s=4, chunk_s=48, threshold_s=0) == []  # one chunk only


def test_ten_minutes_in_48_second_chunks() -> None:
    chunks = plan_chunks(600.0, segment_s=4, chunk_s=48, threshold_s=120)
    # 150 segments: 12 chunks of 12, then 6 left, half a chunk: a chunk of its own.
    assert [(c.start_s, c.end_s, c.first_segment) for c in chunks[:2]] == [
        (0.0, 48.0, 1), (48.0, 96.0, 13),
    ]  # fmt: skip
    assert len(chunks) == 13 and (chunks[-1].start_s, chunks[-1].end_s) == (576.0, 600.0)


def test_a_short_tail_goes_to_the_last_chunk() -> None:
    chunks = plan_chunks(150.5, segment_s=4, chunk_s=48, threshold_s=120)
    # 38 segments: 3 chunks of 12 and 2 more (8.5 s): the last chunk runs 96 -> 150.5 s.
    assert [(c.start_s, c.end_s) for c in chunks] == [(0, 48), (48, 96), (96, 150.5)]


def test_lengths_that_are_not_whole_segments_are_refused() -> None:
    with pytest.raises(ValueError, match="whole number of segments"):
        plan_chunks(600, segment_s=4, chunk_s=50, threshold_s=0)


@hypothesis_settings(deadline=None)
@given(
    duration=st.floats(min_value=0.04, max_value=4 * 3600),
    per_chunk=st.integers(min_value=1, max_value=30),
    segment=st.sampled_from([2.0, 4.0, 6.0]),
)
def test_chunks_tile_the_source_on_the_segment_grid(
    duration: float, per_chunk: int, segment: float
) -> None:
    chunk_s = per_chunk * segment
    chunks = plan_chunks(duration, segment_s=segment, chunk_s=chunk_s, threshold_s=0)
    if not chunks:
        assert duration < 1.5 * chunk_s + 1e-6  # too short for two chunks
        return
    assert chunks[0].start_s == 0 and chunks[-1].end_s == duration
    for a, b in itertools.pairwise(chunks):
        assert a.end_s == b.start_s  # no gap, no overlap
        assert b.first_segment == a.first_segment + round(a.duration / segment)
    for i, c in enumerate(chunks):
        assert (c.start_s / segment).is_integer()  # starts on a segment boundary
        assert c.index == i
    for c in chunks[:-1]:
        assert c.duration == chunk_s
    assert chunk_s / 2 - 1e-6 <= chunks[-1].duration < 1.5 * chunk_s + 1e-6


def test_the_costliest_tasks_are_dispatched_first() -> None:
    """A 10-minute source in 48 s chunks: the sound, one task over all of it, is the longest
    and goes first, then by expected cost: 1080p's chunks in order, then 720p's..."""
    sizes = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}
    plan = plan_chunks(600, segment_s=4, chunk_s=48, threshold_s=120)
    tasks = [(estimated_cost(600, width=2, height=2, audio_only=True), ("audio", 0))]
    for name, (w, h) in sizes.items():
        tasks += [
            (estimated_cost(c.duration, width=w, height=h, audio_only=False), (name, c.index))
            for c in plan
        ]
    order = longest_first(tasks)
    assert len(plan) == 13 and plan[-1].duration == 24  # a half-chunk tail is a chunk
    cost = dict((t, c) for c, t in tasks)
    assert order[0] == ("audio", 0)
    assert [cost[t] for t in order] == sorted(cost.values(), reverse=True)
    assert order[1:13] == [("1080p", i) for i in range(12)]  # ties keep their order
    assert order[25] == ("1080p", 12)  # its short tail after 720p's whole chunks
