"""The main job, end to end on the local stack: upload a sample clip straight to the bucket,
watch it transcode live, and print where the outputs are.

Run by `make demo` after `make up`; reads the stack's settings from its stack.env
(`.run/stack.env`, or under `LOCALFAAS_RUN_DIR` for a stack of its own, as the tests run
it). The uploading and watching are `vtp upload --watch` (vtp_cli/), the same client anyone
can use. tests/test_demo.py runs `make demo` itself, so this script cannot break unseen.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import vtp_cli as cli  # noqa: E402 (the repo root must be importable first)
from localfaas.config import LocalConfig  # noqa: E402

console = Console()


def make_clip(path: Path, seconds: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(path),
        ],
        check=True,
    )  # fmt: skip


def main() -> int:
    stack = LocalConfig()
    env_file = stack.stack_env_file
    if not env_file.is_file():
        console.print(f"[red]no {env_file}: start the stack first (make up)[/red]")
        return 2
    env = cli.read_env_file(env_file)
    clip = stack.run_dir / "demo" / "sample-1080p.mp4"
    if not clip.exists():
        # VTP_DEMO_SECONDS: a shorter sample, for the test that runs this demo in the suite.
        seconds = int(os.environ.get("VTP_DEMO_SECONDS", "12"))
        console.print(f"generating a {seconds} s 1080p30 sample clip with ffmpeg…")
        make_clip(clip, seconds)
    if env.get("VTP_WS_URL"):
        page = urlsplit(env["VTP_WS_URL"])._replace(scheme="http", path="/").geturl()
        console.print(f"live progress page: [bold]{page}[/bold]")
        console.print(f"  (through the gateway: {env['VTP_GATEWAY_URL']}/function/ws-relay/)")
        console.print(
            f"  sign in with VTP_VIEW_TOKEN from {env_file}, or open a job's link: vtp link JOB"
        )
    key = f"demo/sample {time.strftime('%Y%m%d-%H%M%S')}.mp4"
    code = cli.main(["upload", str(clip), "--watch", "--key", key, "--env-file", str(env_file)])
    next_steps(env, key, env_file)
    return code


def next_steps(env: dict[str, str], key: str, env_file: Path) -> None:
    """What to try next, with this run's own key, job and addresses filled in."""
    gateway = env["VTP_GATEWAY_URL"]
    vtp = "vtp" if shutil.which("vtp") else str(REPO / ".venv" / "bin" / "vtp")
    job = json.dumps({"bucket": env.get("VTP_UPLOADS_BUCKET", "uploads"), "key": key})
    auth = '"Authorization: Bearer $VTP_TOKEN"'
    lines = [
        f"  {vtp} jobs                          # recent jobs; status/watch take an id",
        f"  {vtp} link JOB                      # a signed link to one job's page, for a viewer",
        f"  curl -s -H {auth} {shlex.quote(gateway + '/function/status?limit=5')}",
        f"  echo {shlex.quote(job)} | faas-cli invoke split -g {gateway}"
        ' -H "Authorization=Bearer $VTP_TOKEN"   # the same object: its job, duplicate',
        f"  curl -s -H {auth} --data-binary {shlex.quote(job)} {gateway}/function/split",
    ]
    where = env_file.relative_to(REPO) if env_file.is_relative_to(REPO) else env_file
    console.print(f"\n[bold]next[/bold] (the settings: [dim]set -a; . {where}; set +a[/dim])")
    for line in lines:
        # Whole lines, whatever the terminal's width: they are meant to be copied.
        console.print(line, soft_wrap=True, markup=False, highlight=False)


if __name__ == "__main__":
    sys.exit(main())
