"""The settings every test stack's functions run with: production's logic at a test's pace.

Each is a setting the product reads (vtp/settings.py), shortened or lightened so that what a
test waits for (a retry, a death believed, a callback tried again) comes within seconds,
and so that the encodes every end-to-end test makes cost less. The session stack
(conftest.py) and the stacks tests start of their own (test_restart.py) share them.
"""

from __future__ import annotations

FAST: dict[str, str] = {
    # Short back-offs and budgets, so retries and dead letters happen within a test.
    "VTP_RETRY_BASE_SECONDS": "1",
    "VTP_RETRY_MAX_SECONDS": "4",
    "VTP_MAX_REFUSALS": "4",
    # Callbacks retried and lost events reconciled within a test's patience.
    "VTP_CALLBACK_RETRY_BASE_SECONDS": "1",
    "VTP_CALLBACK_RETRY_MAX_SECONDS": "2",
    "VTP_RECONCILE_GRACE_SECONDS": "2",
    "VTP_RECONCILE_EVERY_SECONDS": "1",
    # Heartbeats every second, a reported death believed after 4 s of silence: the same
    # logic as production's 10 s and 25 s.
    "VTP_HEARTBEAT_SECONDS": "1",
    "VTP_DEATH_CONFIRM_SECONDS": "4",
    # x264's fastest preset that keeps B-frames (and so the timestamps and edit lists they
    # bring): half of medium's CPU for every encode of the suite. Compression per bit is the
    # benchmarks' business (bench/quality.py), at the product's own preset; make demo, run by
    # tests/test_demo.py, encodes at that preset too.
    "VTP_X264_PRESET": "veryfast",
    # libvmaf scores every sixth frame of a sample, not every third: the same filter, log and
    # pooling, at half the CPU of every sample in the suite.
    "VTP_QUALITY_VMAF_SUBSAMPLE": "6",
    # Fair share (vtp.jobs.scheduling) without a bound: the session stack runs many tests'
    # jobs, and holds those the tests run themselves (tests/inprocess.py `hold`) as calls in
    # flight. Its choices and bounds are tested against PostgreSQL (test_scheduling.py) and
    # measured on a stack with its real bound (bench/fairness.py, make demo).
    "VTP_DISPATCH_SLOTS": "1000",
}
