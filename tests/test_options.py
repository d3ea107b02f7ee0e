"""Job options from a request or an upload's metadata, and the identity they give a job."""

from __future__ import annotations

import pytest

from vtp.errors import InvalidRequest
from vtp.options import DEFAULT_OPTIONS_KEY, JobOptions, OptionsOrigin, from_metadata, job_key
from vtp.webhook import JobRequest, parse_body


def test_identity_ignores_order_case_and_the_callback() -> None:
    a = JobOptions(renditions=["720p", "360p"], formats=["mp4", "hls"])
    b = JobOptions.model_validate(
        {"renditions": ["360P", "720p"], "formats": ["hls", "mp4"],
         "callback_url": "https://example.com/hook"}
    )  # fmt: skip
    assert a.identity() == b.identity() == "renditions=360p,720p;formats=hls,mp4"
    assert JobOptions().identity() == DEFAULT_OPTIONS_KEY == "renditions=*;formats=hls"
    # Naming the rungs is not the default ladder: the default may be pruned, a list is not.
    assert JobOptions(renditions=["360p"]).identity() != DEFAULT_OPTIONS_KEY
    # MP4 only still makes the HLS the page and the master are built on.
    assert JobOptions(formats=["mp4"]).formats == ["hls", "mp4"]


def test_keeping_hdr_is_another_job() -> None:
    """HDR renditions are outputs: asking to keep them is another job of the same object,
    from a request or from the upload's metadata; anything but "sdr" or "keep" is refused."""
    kept = JobOptions(hdr="keep")
    assert kept.identity() == "renditions=*;formats=hls;hdr=keep" != JobOptions().identity()
    assert kept.recorded(OptionsOrigin.REQUEST)["hdr"] == "keep"
    assert from_metadata({"X-Amz-Meta-Vtp-Hdr": "keep"}) == kept
    with pytest.raises(InvalidRequest) as err:
        from_metadata({"X-Amz-Meta-Vtp-Hdr": "yes"})
    assert "x-amz-meta-vtp-hdr" in err.value.reason


def test_a_private_job_is_another_job() -> None:
    """Private outputs live elsewhere and are reached otherwise (vtp.privacy): asking for a
    private job is never answered with a public one. Settled, the deployment's default
    decides for a job that does not say; public keys are as they always were."""
    from vtp import privacy
    from vtp.settings import Settings

    private = JobOptions(private=True)
    assert private.identity() == "renditions=*;formats=hls;private"
    assert private.recorded(OptionsOrigin.METADATA)["private"] is True
    assert "private" not in JobOptions(private=False).recorded(OptionsOrigin.REQUEST)
    assert JobOptions(private=False).identity() == JobOptions().identity() == DEFAULT_OPTIONS_KEY
    assert from_metadata({"X-Amz-Meta-Vtp-Private": "true"}) == private
    assert from_metadata({"x-amz-meta-vtp-private": "false"}) == JobOptions(private=False)
    with pytest.raises(InvalidRequest) as err:
        from_metadata({"x-amz-meta-vtp-private": "perhaps"})
    assert "x-amz-meta-vtp-private" in err.value.reason
    everyone = Settings(private_outputs=True)
    assert privacy.settle(JobOptions(), everyone).private is True
    assert privacy.settle(JobOptions(private=False), everyone).private is False
    assert privacy.settle(JobOptions(), Settings()).private is False


def test_a_reprocess_key_is_new_every_time() -> None:
    opts = JobOptions(renditions=["360p"])
    assert job_key(opts) == job_key(opts) == opts.identity()
    one, two = job_key(opts, reprocess=True), job_key(opts, reprocess=True)
    assert one != two and one.startswith(opts.identity() + ";run=")


def test_metadata_as_minio_and_sdks_spell_it() -> None:
    """MinIO's event and HEAD carry Go's canonical names, SDKs lower-case ones; values are
    comma or space separated. Other metadata is not ours and is left alone."""
    opts = from_metadata(
        {
            "X-Amz-Meta-Vtp-Renditions": "360p, 720p",
            "x-amz-meta-vtp-formats": "hls mp4",
            "X-Amz-Meta-Vtp-Callback-Url": "https://example.com/done",
            "X-Amz-Meta-Owner": "course-42",
            "content-type": "video/mp4",
        }
    )
    assert opts is not None
    assert opts.renditions == ["360p", "720p"] and opts.formats == ["hls", "mp4"]
    assert opts.callback == "https://example.com/done"
    assert from_metadata({"X-Amz-Meta-Owner": "x", "content-type": "video/mp4"}) is None


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({"X-Amz-Meta-Vtp-Formats": "hls,webm"}, "x-amz-meta-vtp-formats: "),
        ({"X-Amz-Meta-Vtp-Callback-Url": "ftp://example.com/x"}, "x-amz-meta-vtp-callback-url"),
        ({"X-Amz-Meta-Vtp-Renditions": ""}, "x-amz-meta-vtp-renditions"),
        ({"X-Amz-Meta-Vtp-Renditions": " ".join(["360p"] * 9)}, "x-amz-meta-vtp-renditions"),
        ({"X-Amz-Meta-Vtp-Rendition": "360p"}, "unknown upload option(s) X-Amz-Meta-Vtp-Rendition"),
    ],
)
def test_bad_metadata_is_refused_naming_the_header(metadata: dict[str, str], words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        from_metadata(metadata)
    assert words in err.value.reason


def test_a_manual_job_carries_the_same_options_and_reprocess() -> None:
    request = parse_body(
        b'{"bucket": "uploads", "key": "a.mp4", "renditions": ["360p"], "formats": ["mp4"],'
        b' "reprocess": true}'
    )
    assert isinstance(request, JobRequest) and request.reprocess
    assert request.options() == JobOptions(renditions=["360p"], formats=["hls", "mp4"])
    with pytest.raises(InvalidRequest, match="reprocess"):
        parse_body(b'{"bucket": "uploads", "key": "a.mp4", "reprocess": "maybe"}')
