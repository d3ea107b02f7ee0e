"""`make bench`: every benchmark in bench/, one after the other (each on a stack of its own),
their output written to bench/RESULTS.md with the machine they ran on, and the same block
put into the README between its `bench:start` and `bench:end` markers: the figures the
README shows are what the last run printed, never typed in by hand.

`make bench ARGS="footage"` (or `bench/report.py footage quality`) runs some of them and
replaces only their sections, each then dated with its own run, so one benchmark can be
brought up to date without rerunning the hour of the others."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from vtp.media.build import build  # noqa: E402

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The tools every result was made with (vtp.media.build): the pinned ffmpeg, the OS's ffprobe.
    return f"{os.cpu_count()} cores ({cpu}), {build().label()}"


def _sections(body: str) -> dict[str, str]:
    """The block's sections by script name, in their order (each starts `**name.py**`)."""
    parts = re.split(r"(?m)^(?=\*\*[\w.]+\.py\*\*)", body)
    return {
        m.group(1): part.rstrip() + "\n"
        for part in parts
        if (m := re.match(r"\*\*([\w.]+\.py)\*\*", part))
    }


def main() -> int:
    only = sys.argv[1:]
    # The benchmarks are the scripts; a module they share (stackjobs.py) has no main.
    scripts = sorted(
        p
        for p in BENCH.glob("*.py")
        if p.name != Path(__file__).name and '__name__ == "__main__"' in p.read_text()
    )
    if only:
        scripts = [p for p in scripts if p.stem in only]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    sections: dict[str, str] = {}
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for script in scripts:
        print(f"== {script.name}", flush=True)
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True
        )
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr[-4000:] if done.returncode else "")
        if done.returncode != 0:
            print(f"{script.name} failed ({done.returncode}); RESULTS.md not written")
            return 1
        took = time.monotonic() - t0
        # A section refreshed alone says when, at which commit, and with which tools.
        dated = f", {when}, commit {commit or '?'}, {build().label()}" if only else ""
        sections[script.name] = (
            f"**{script.name}** ({took:.0f} s{dated})\n\n```\n{done.stdout.rstrip()}\n```\n"
        )
    results = BENCH / "RESULTS.md"
    if only and results.exists():
        # Keep every other benchmark's section (and the header naming its run) as it was.
        old = results.read_text().split(START, 1)[-1].split(END, 1)[0]
        header, _, body = old.partition("\n**")
        kept = _sections("**" + body) if body else {}
        kept.update(sections)
        block = f"{START}{header.rstrip()}\n\n" + "\n".join(kept.values()) + END
    else:
        block = (
            f"{START}\nFigures of the last `make bench` ({when}, commit {commit or '?'}, "
            f"{_machine()}):\n\n" + "\n".join(sections.values()) + f"{END}"
        )
    results.write_text(f"# Benchmark results\n\n{block}\n")
    readme = REPO / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(head + block + tail)
    print(f"wrote {BENCH / 'RESULTS.md'} and the README's benchmark block")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
