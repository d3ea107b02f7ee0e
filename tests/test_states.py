"""The lifecycle tables (vtp.lifecycle): complete, enforced by the store, and what the page
and the CLI are told; every pipeline error says whether retrying can help."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from vtp import errors, lifecycle
from vtp.errors import InvalidTransition, VtpError
from vtp.lifecycle import JobState, RenditionState

STATIC = Path(__file__).resolve().parent.parent / "functions" / "ws-relay" / "static"
R, J = RenditionState, JobState


def test_the_tables_cover_every_state_and_terminal_states_lead_nowhere() -> None:
    assert set(lifecycle.RENDITION_TRANSITIONS) == {None, *R}
    assert set(lifecycle.JOB_TRANSITIONS) == {None, *J}
    for state in R:
        assert bool(lifecycle.RENDITION_TRANSITIONS[state]) is not state.terminal, state
    for job_state in J:
        assert (lifecycle.JOB_TRANSITIONS[job_state] <= {job_state}) is job_state.terminal


@pytest.mark.parametrize(
    ("old", "new"),
    [(R.RETRYING, R.RETRYING), (R.SUCCEEDED, R.RUNNING), (R.DEAD, R.QUEUED), (None, R.RUNNING),
     (R.FAILED, R.RETRYING), (R.QUEUED, R.SUCCEEDED), (R.QUEUED, R.FAILED),
     (R.RETRYING, R.FAILED)],
)  # fmt: skip
def test_moves_the_lifecycle_does_not_have_are_refused(old: R | None, new: R) -> None:
    with pytest.raises(InvalidTransition, match="is not a transition"):
        lifecycle.check_rendition(old, new)


def test_job_moves() -> None:
    assert lifecycle.check_job(None, J.FAILED) is J.FAILED  # a source that cannot be processed
    assert lifecycle.check_job(J.RUNNING, J.RUNNING) is J.RUNNING  # a note on the trail
    for old, new in ((J.SUCCEEDED, J.RUNNING), (J.FAILED, J.SUCCEEDED), (None, J.RUNNING)):
        with pytest.raises(InvalidTransition):
            lifecycle.check_job(old, new)


def test_the_store_refuses_a_move_outside_the_table(db: object) -> None:
    """audit() checks inside the transaction, so nothing of it commits."""
    import uuid

    import psycopg2.extras

    from vtp.jobs.transactions import audit

    conn = db  # an autocommit connection to the stack's PostgreSQL
    job_id = uuid.uuid4()
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:  # type: ignore[attr-defined]
        with pytest.raises(InvalidTransition):
            audit(cur, job_id, "360p", "retrying", "retrying")
        cur.execute("SELECT count(*) AS n FROM state_changes WHERE job_id = %s", (str(job_id),))
        assert cur.fetchone()["n"] == 0


def test_the_page_is_served_the_lifecycle_as_generated() -> None:
    """static/lifecycle.js is what `python -m vtp.lifecycle js` writes: change the enums and
    this fails until the file is written again."""
    assert (STATIC / "lifecycle.js").read_text() == lifecycle.page_script()
    index = (STATIC / "index.html").read_text()
    assert index.index("static/lifecycle.js") < index.index("static/app.js")
    app = (STATIC / "app.js").read_text()
    for retyped in ('"dead"', "'dead'", '["succeeded", "failed"'):
        assert retyped not in app, f"app.js retypes a state: {retyped}"


def test_every_error_says_whether_retrying_can_help() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, VtpError)]  # fmt: skip
    assert len(classes) >= 10
    expected = {"StorageError": True, "UpstreamError": True, "FfmpegError": True,
                "FfmpegTimeout": True, "FfmpegStalled": True, "JoinRefused": True}  # fmt: skip
    for cls in classes:
        instance = cls("why")
        assert isinstance(instance.retryable, bool), cls
        assert instance.retryable is expected.get(cls.__name__, False), cls
    assert errors.FfmpegError("Invalid data", transient=False).retryable is False


T = lifecycle.TaskState


def test_a_rendition_of_one_task_is_in_its_tasks_state() -> None:
    for task_state in T:
        assert lifecycle.rendition_state([task_state]).value == task_state.value


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [([T.SUCCEEDED, T.QUEUED], R.RUNNING), ([T.SUCCEEDED, T.RETRYING], R.RUNNING),
     ([T.RETRYING, T.QUEUED], R.RETRYING), ([T.QUEUED, T.QUEUED], R.QUEUED),
     ([T.RUNNING, T.FAILED], R.FAILED), ([T.DEAD, T.SUCCEEDED], R.DEAD),
     ([T.DEAD, T.FAILED], R.FAILED), ([T.SUCCEEDED] * 3, R.SUCCEEDED)],
)  # fmt: skip
def test_a_rendition_of_several_tasks(
    tasks: list[lifecycle.TaskState], expected: RenditionState
) -> None:
    assert lifecycle.rendition_state(tasks) is expected


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_reachable_move_of_tasks_moves_their_rendition_legally(n: int) -> None:
    """Walk every sequence of allowed task moves of a rendition of n tasks: the state the
    store derives after each (an ended rendition stays ended) is always reachable by the
    rendition table, so the store never has to commit a rendition move it would refuse."""
    start = ((T.QUEUED,) * n, R.QUEUED)
    seen, todo = {start}, [start]
    while todo:
        tasks, rend = todo.pop()
        for i, old in enumerate(tasks):
            for new in lifecycle.TASK_TRANSITIONS[old]:
                moved = (*tasks[:i], new, *tasks[i + 1 :])
                after = rend if rend.terminal else lifecycle.rendition_state(moved)
                if after is not rend:
                    lifecycle.check_rendition(rend, after)  # raises on a move it lacks
                if (moved, after) not in seen:
                    seen.add((moved, after))
                    todo.append((moved, after))
    ends = {rend for tasks, rend in seen if all(t.terminal for t in tasks)}
    assert ends == {R.SUCCEEDED, R.FAILED, R.DEAD, R.CANCELLED}
