"""A job is a source version plus its options: options from the upload's metadata, other
options making another job, duplicates answered with their reason, and re-encoding on
request. Driven in-process against the stack's real PostgreSQL, S3 and gateway (whose
functions encode what is submitted), from a bucket no event reads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clips import make_clip
from tests.inprocess import build_pipeline, quiet_bucket
from vtp.errors import Conflict, InvalidRequest
from vtp.jobs import SourceRef
from vtp.models import JobState
from vtp.options import JobOptions
from vtp.pipeline import Pipeline
from vtp.webhook import SourceObject

HOOK = "http://127.0.0.1:9/hook"  # nobody listens: delivery is not what these tests check


@pytest.fixture(scope="module")
def pipeline(stack_env: dict[str, str]) -> Iterator[Pipeline]:
    base = build_pipeline(stack_env)
    settings = base.settings.model_copy(
        update={"input_buckets": [quiet_bucket(base)], "callback_allow_private_networks": True}
    )
    yield Pipeline(settings, base.store, base.storage, base.bus, base.invoker)
    base.store.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(
        tmp_path_factory.mktemp("identity") / "c.mp4", size="640x360", seconds=1, rate=25
    )


def _upload(pipeline: Pipeline, clip: Path, metadata: dict[str, str] | None = None) -> str:
    key = f"identity/{time.time_ns()}.mp4"
    pipeline.storage.client.fput_object(
        quiet_bucket(pipeline), key, str(clip), content_type="video/mp4", metadata=metadata
    )
    return key


def _src(pipeline: Pipeline, key: str) -> SourceObject:
    return SourceObject(bucket=quiet_bucket(pipeline), key=key)


def test_an_uploads_metadata_gives_its_job_options(pipeline: Pipeline, clip: Path) -> None:
    key = _upload(
        pipeline, clip,
        {"vtp-renditions": "360p", "vtp-formats": "hls,mp4", "vtp-callback-url": HOOK},
    )  # fmt: skip
    first = pipeline.submit(_src(pipeline, key))
    job = first.job
    assert first.created and first.reason == "new: the first job for this object version"
    assert [r.name for r in job.renditions] == ["360p", "audio"] and job.formats == ["hls", "mp4"]
    assert job.callback_url == HOOK
    assert job.options_key == "renditions=360p;formats=hls,mp4"
    assert job.options == {
        "renditions": ["360p"], "formats": ["hls", "mp4"], "origin": "metadata",
        "reprocess": False,
    }  # fmt: skip
    # The event again (MinIO delivers at least once): the same job, said so.
    again = pipeline.submit(_src(pipeline, key))
    assert not again.created and again.job.id == job.id
    assert again.reason == f"duplicate: job {job.id} has this object version with the same options"
    assert pipeline.describe_job(job, live=False)["options_key"] == job.options_key


@pytest.mark.slow
def test_other_options_make_another_job_and_the_same_options_do_not(
    pipeline: Pipeline, clip: Path
) -> None:
    """What used to be answered `duplicate` with the options dropped: the upload's default
    job exists, and a manual job asks for MP4 too. Then the same request again, once with
    a callback (attached to that job), once with another callback (refused, not moved)."""
    key = _upload(pipeline, clip)
    default = pipeline.submit(_src(pipeline, key)).job
    assert default.options_key == "renditions=*;formats=hls"
    assert default.options is not None and default.options["origin"] == "defaults"

    mp4 = JobOptions(renditions=["360p"], formats=["mp4"])
    second = pipeline.submit(_src(pipeline, key), mp4, manual=True)
    assert second.created and second.job.id != default.id
    assert second.job.formats == ["hls", "mp4"] and second.job.options_key.endswith("hls,mp4")
    assert second.others == [(default.id, "renditions=*;formats=hls")]
    assert str(default.id) in second.reason and "other options" in second.reason

    same = pipeline.submit(_src(pipeline, key), JobOptions(renditions=["360p"], formats=["mp4"],
                           callback_url=HOOK), manual=True)  # type: ignore[arg-type]  # fmt: skip
    assert not same.created and same.job.id == second.job.id
    assert same.job.callback_url == HOOK and same.reason.endswith("the callback is attached to it")
    assert same.others == [(default.id, "renditions=*;formats=hls")]
    with pytest.raises(Conflict, match="calls back another URL"):
        pipeline.submit(
            _src(pipeline, key),
            JobOptions.model_validate(
                {"renditions": ["360p"], "formats": ["mp4"], "callback_url": HOOK + "/other"}
            ),
            manual=True,
        )
    assert pipeline.store.get(second.job.id).callback_url == HOOK

    # Asked to encode again: a third job, with its own outputs, beside the two.
    redo = pipeline.submit(_src(pipeline, key), mp4, reprocess=True, manual=True)
    assert redo.created and redo.job.id not in (default.id, second.job.id)
    assert redo.job.options_key.startswith(second.job.options_key + ";run=")
    assert redo.job.options is not None and redo.job.options["reprocess"] is True
    assert len(pipeline.store.versions_jobs(redo.job.source)) == 3
    for job_id in (default.id, second.job.id, redo.job.id):
        assert _ended(pipeline, job_id) is JobState.SUCCEEDED
    outputs = {
        o.object_name
        for o in pipeline.storage.client.list_objects(
            pipeline.settings.outputs_bucket, prefix=f"{redo.job.id}/", recursive=True
        )
    }
    assert f"{redo.job.id}/master.m3u8" in outputs
    assert any(name.endswith(".mp4") and "/360p/" in name for name in outputs), outputs


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"vtp-formats": "hls,webm"}, "invalid upload options: x-amz-meta-vtp-formats: "),
        ({"vtp-renditions": "999p"}, "invalid upload options: unknown rendition(s) '999p'"),
        ({"vtp-callback-url": "not a url"}, "x-amz-meta-vtp-callback-url"),
        ({"vtp-rendition": "360p"}, "unknown upload option(s) x-amz-meta-vtp-rendition"),
    ],
)
def test_an_upload_with_bad_options_is_recorded_as_refused(
    pipeline: Pipeline, clip: Path, metadata: dict[str, str], reason: str
) -> None:
    """Nobody is there to read a 400 for a bucket event: the job records why, and a manual
    job for the same object with good options is still made."""
    key = _upload(pipeline, clip, metadata)
    refused = pipeline.submit(_src(pipeline, key))
    job = refused.job
    assert refused.created and job.state is JobState.FAILED and not job.renditions
    assert job.error is not None and reason in job.error, job.error
    assert refused.reason == f"refused: {job.error}"
    assert pipeline.submit(_src(pipeline, key)).job.id == job.id  # redelivered: same record
    manual = pipeline.submit(_src(pipeline, key), JobOptions(renditions=["360p"]), manual=True)
    assert manual.created and manual.job.state is not JobState.FAILED


def test_a_manual_job_hears_why_its_options_are_refused(pipeline: Pipeline, clip: Path) -> None:
    key = _upload(pipeline, clip)
    with pytest.raises(InvalidRequest, match="unknown rendition"):
        pipeline.submit(_src(pipeline, key), JobOptions(renditions=["999p"]), manual=True)
    obj = pipeline.storage.stat(quiet_bucket(pipeline), key)
    version = SourceRef(bucket=obj.bucket, key=key, etag=obj.etag, size=obj.size)
    assert pipeline.store.versions_jobs(version) == []  # refused, not recorded


def _ended(pipeline: Pipeline, job_id: object, timeout: float = 180) -> JobState:
    deadline = time.monotonic() + timeout
    while not (job := pipeline.store.get(str(job_id))).state.terminal:
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    return job.state


def test_an_uploads_callback_to_a_private_address_is_refused_and_recorded(
    pipeline: Pipeline, clip: Path
) -> None:
    """The metadata is the uploader's word, like a manual job's body: a callback into the
    cluster's own network is refused (unless the deployment allows it), recorded as the
    job's reason, and nothing is encoded or called."""
    strict = Pipeline(
        pipeline.settings.model_copy(update={"callback_allow_private_networks": False}),
        pipeline.store, pipeline.storage, pipeline.bus, pipeline.invoker,
    )  # fmt: skip
    key = _upload(pipeline, clip, {"vtp-callback-url": "http://169.254.169.254/latest/"})
    refused = strict.submit(_src(strict, key))
    job = refused.job
    assert job.state is JobState.FAILED and not job.renditions
    assert job.error is not None and "non-public address 169.254.169.254" in job.error
    assert job.callback_url is None, "a refused callback is not kept to be called later"
