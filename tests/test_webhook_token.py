"""An empty or missing vtp-webhook-token means "no token required" (MinIO releases before
2019 cannot send one), said once at start; a set token is required. split's handler is run
in a process of its own against the stack's services, as its template would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from localfaas.config import REPO_ROOT
from vtp.settings import Settings

CALL = """
import json, sys
sys.path[:0] = [{repo!r}, {handler_dir!r}]
import handler
from types import SimpleNamespace
from werkzeug.datastructures import Headers, MultiDict
event = {{"EventName": "s3:ObjectCreated:Put", "Key": "uploads/notes.txt", "Records": [
    {{"eventName": "s3:ObjectCreated:Put",
      "s3": {{"bucket": {{"name": "uploads"}}, "object": {{"key": "notes.txt"}}}}}}]}}
headers = Headers({headers!r})
call = SimpleNamespace(body=json.dumps(event).encode(), headers=headers, method="POST",
                       query=MultiDict(), path="/")
print(json.dumps(handler.handle(call, None)["statusCode"]))
"""


def run_split(
    stack_env: dict[str, str], tmp_path: Path, token: str | None, sent: str
) -> tuple[int, str]:
    secrets = tmp_path / f"secrets-{token!r}"
    secrets.mkdir(parents=True)
    if token is not None:
        (secrets / "vtp-webhook-token").write_text(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VTP_")}
    env |= {k: v for k, v in stack_env.items() if k.startswith("VTP_")}
    env.pop("VTP_WEBHOOK_TOKEN", None)
    env["VTP_SECRETS_DIR"] = str(secrets)
    headers = {"Authorization": sent} if sent else {}
    code = CALL.format(
        repo=str(REPO_ROOT), handler_dir=str(REPO_ROOT / "functions" / "split"), headers=headers
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize("token", [None, "", "  \n"], ids=["missing", "empty", "blank"])
def test_no_token_means_none_required_with_a_warning(
    stack_env: dict[str, str], tmp_path: Path, token: str | None
) -> None:
    status, stderr = run_split(stack_env, tmp_path, token, sent="")
    assert status == 200
    assert "no vtp-webhook-token set" in stderr


def test_a_set_token_is_required(stack_env: dict[str, str], tmp_path: Path) -> None:
    status, stderr = run_split(stack_env, tmp_path, "s3cret", sent="")
    assert status == 401 and "no vtp-webhook-token" not in stderr
    status, _ = run_split(stack_env, tmp_path / "b", "s3cret", sent="Bearer s3cret")
    assert status == 200


def test_empty_secrets_are_unset() -> None:
    assert Settings(webhook_token="").webhook_token is None
    assert Settings(webhook_token=SecretStr(" ")).webhook_token is None
    assert Settings(callback_secret="").callback_secret is None
    assert Settings(webhook_token="t").webhook_token is not None
