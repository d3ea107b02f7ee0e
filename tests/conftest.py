"""Shared fixtures. (Being built: the session-wide `stack` fixture arrives with localfaas up.)"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    dsn = os.environ.get("VTP_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.fail("VTP_TEST_POSTGRES_DSN not set (interim: the stack fixture will provide it)")
    return dsn
