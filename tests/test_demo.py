"""The README's two commands' first one, `make demo`, run as a newcomer runs it: from the
checkout, through make, on a stack of its own (its own run dir and ports, so the session
stack is not disturbed). What it prints is checked as a newcomer would check it: the job
succeeded, and the master playlist it points to plays (ffprobe reads every variant and the
sound through the S3 server). A script the README names that stops working (a module it
imports moved, say) fails here, not on a newcomer's first try.

The other scripts the README names are covered too: scripts/setup.sh runs under every make
target, and every benchmark under bench/ is imported below (each runs only under __main__).
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from localfaas import services
from localfaas.config import REPO_ROOT, LocalConfig
from tests.ports import free_port, free_port_base


@pytest.fixture
def demo_stack(test_slot: int) -> Iterator[tuple[LocalConfig, dict[str, str]]]:
    """A stack of its own for `make demo` to start, and the environment that points there;
    stopped with `make down` and removed afterwards, whatever happened."""
    cfg = LocalConfig(
        run_dir=REPO_ROOT / ".run" / f"test-demo-{test_slot}",
        port_base=free_port_base(),
        gateway_port=free_port(),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCALFAAS_", "VTP_"))}
    env |= {
        "LOCALFAAS_RUN_DIR": str(cfg.run_dir),
        "LOCALFAAS_PORT_BASE": str(cfg.port_base),
        "LOCALFAAS_GATEWAY_PORT": str(cfg.gateway_port),
        # The same demo on a 6 s sample instead of 12: the suite's time, not the path.
        "VTP_DEMO_SECONDS": "6",
    }

    def wipe() -> None:
        subprocess.run(["make", "down"], cwd=REPO_ROOT, env=env, capture_output=True, check=False)
        # PostgreSQL's data may live outside the run dir (its OS user cannot always reach it).
        services.remove_data(cfg)
        shutil.rmtree(cfg.run_dir, ignore_errors=True)

    wipe()
    try:
        yield cfg, env
    finally:
        wipe()


@pytest.mark.slow
def test_make_demo_transcodes_the_sample_and_prints_a_playable_master(
    demo_stack: tuple[LocalConfig, dict[str, str]],
) -> None:
    cfg, env = demo_stack
    done = subprocess.run(
        ["make", "demo"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "stack healthy" in out, out
    assert f"{cfg.gateway_url}/function/ws-relay/" in out, "the progress page's address"
    assert re.search(r"job \S+: succeeded", out), out
    assert "None" not in out, "a value nobody set, printed as None"
    master = re.search(r"^master playlist:\s+(\S+)$", out, re.MULTILINE)
    assert master, out
    assert master.group(1).endswith("/master.m3u8")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,width,height",
         "-of", "json", master.group(1)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    streams = json.loads(probe.stdout)["streams"]
    heights = sorted({s["height"] for s in streams if s["codec_type"] == "video"})
    assert heights and heights[-1] <= 1080 and len(heights) >= 2, streams
    assert any(s["codec_type"] == "audio" for s in streams), streams
    # The next steps name this run's own settings file and gateway, ready to copy.
    assert f". {cfg.stack_env_file.relative_to(REPO_ROOT)};" in out, out
    assert f"faas-cli invoke split -g {cfg.gateway_url}" in out, out
    # ... and the printed status call works as printed, with the credential of stack.env.
    line = next(ln.strip() for ln in out.splitlines() if "/function/status?limit=5" in ln)
    listed = subprocess.run(
        ["bash", "-c", f"set -a; . {cfg.stack_env_file}; set +a; {line}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert json.loads(listed.stdout)["jobs"], listed.stdout + listed.stderr


@pytest.mark.parametrize("script", sorted((REPO_ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_every_benchmark_loads(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make bench` runs them all; an import that broke would only show there, which no
    submission runs. Loaded as `python bench/<name>.py` loads it (its folder first on the
    path), but not as __main__: that runs nothing."""
    monkeypatch.syspath_prepend(str(script.parent))
    runpy.run_path(str(script), run_name=f"bench_{script.stem}")


def test_every_script_the_readme_names_exists() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    named = set(re.findall(r"\b((?:scripts|bench)/[\w.-]+\.(?:py|sh))\b", readme))
    assert named, "the README names no script: this test looks in the wrong place"
    missing = sorted(p for p in named if not (REPO_ROOT / p).is_file())
    assert not missing, f"the README names scripts that are not there: {missing}"
    covered = {"scripts/demo.py", "scripts/setup.sh"} | {
        f"bench/{p.name}" for p in (REPO_ROOT / "bench").glob("*.py")
    }
    assert named <= covered, f"named in the README, run or imported by no test: {named - covered}"
