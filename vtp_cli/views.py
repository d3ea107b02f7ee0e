"""The `vtp` client's terminal views (rich): live progress bars (`BarsView`), the renditions
and jobs tables, a job's details and its output URLs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from vtp_cli.progress import TERMINAL_STATES, JobProgress, bar_rows, queue_line

STATE_STYLES = {
    "queued": "grey62",
    "running": "bright_blue",
    "retrying": "yellow",
    "succeeded": "green",
    "failed": "red",
    "dead": "red",
    "cancelled": "magenta",
}


# --- rendering ----------------------------------------------------------------------------------


def _state_markup(state: str) -> str:
    base = state.split(" ", 1)[0]
    return f"[{STATE_STYLES.get(base, 'white')}]{escape(state)}[/]"


class BarsView:
    """Rich progress bars from a JobProgress; on a non-terminal stdout (CI logs, pipes) it also
    prints one line per state change, since bars are only drawn at the end there."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description:>7}"),
            BarColumn(bar_width=None),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[fps]:>7} {task.fields[speed]:>6} {task.fields[eta]:>10}"),
            TextColumn("{task.fields[state]}"),
            console=console,
            expand=True,
        )
        self.tasks: dict[str, TaskID] = {}
        self.states: dict[str, str] = {}
        self.lines = not console.is_terminal

    def __enter__(self) -> BarsView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, job: JobProgress) -> None:
        for row in bar_rows(job):
            if row.name not in self.tasks:
                self.tasks[row.name] = self.progress.add_task(
                    row.name, total=100, fps="", speed="", eta="", state=""
                )
            state = _state_markup(row.state)
            if row.error:
                state += f" [red]{escape(row.error)}[/]"
            self.progress.update(
                self.tasks[row.name],
                completed=row.percent,
                fps=row.fps,
                speed=row.speed,
                eta=row.eta,
                state=state,
            )
            if self.lines and self.states.get(row.name) != row.state:
                self.states[row.name] = row.state
                self.progress.console.print(f"{row.name}: {row.state}", highlight=False)


def _fmt_bitrate(bps: Any) -> str:
    return f"{bps / 1000:.0f} kb/s" if isinstance(bps, int | float) and bps else "-"


def _fmt_size(rendition: Mapping[str, Any]) -> str:
    """What a rendition is, in a word: `1280x720` for a picture, `stereo` for a sound track,
    `-` for what has neither (a subtitle track)."""
    width, height = rendition.get("width"), rendition.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return f"{width}x{height}"
    channels = rendition.get("channels")
    if isinstance(channels, int) and channels > 0:
        return {1: "mono", 2: "stereo"}.get(channels, f"{channels} ch")
    return "-"


def renditions_table(view: Mapping[str, Any], title: str | None = None) -> Table:
    """One row per rendition; URLs are printed apart (`print_urls`) so they stay whole."""
    table = Table(title=title, title_justify="left")
    for col in ("rendition", "size", "state", "progress", "bitrate", "crf", "quality",
                "attempts"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for r in view.get("renditions") or []:
        live = r.get("progress") or {}
        pct = 100.0 if r.get("state") == "succeeded" else float(live.get("percent") or 0)
        state = str(r.get("state"))
        if r.get("error"):
            state += f" ({r['error']})"
        table.add_row(
            str(r.get("name")),
            _fmt_size(r),
            _state_markup(state),
            f"{pct:.1f}%",
            _fmt_bitrate(r.get("avg_bitrate")),
            f"{r['crf']:g}" if isinstance(r.get("crf"), int | float) else "-",
            _fmt_quality(r.get("quality")),
            str(r.get("attempts") or "-"),
        )
    return table


def _fmt_quality(quality: Any) -> str:
    """`VMAF 94.6 (target 95)`, flagged in red when it fell short; the prediction while the
    rendition is still encoding. SSIM (jobs measured before VMAF) keeps four decimals."""
    if not isinstance(quality, Mapping):
        return "-"
    metric = str(quality.get("metric") or "vmaf")
    places = 1 if metric == "vmaf" else 4
    target = quality.get("target")
    wanted = f" (target {target:g})" if isinstance(target, int | float) else ""
    score = quality.get("score")
    if isinstance(score, int | float):
        text = f"{metric.upper()} {score:.{places}f}{wanted}"
        return f"[red]{text} below target[/]" if quality.get("flagged") else text
    predicted = quality.get("predicted")
    if isinstance(predicted, int | float):
        return f"{metric.upper()} ~{predicted:.{places}f} predicted{wanted}"
    return f"-{wanted}"


def print_urls(console: Console, view: Mapping[str, Any]) -> None:
    """Output URLs one per line, never wrapped, so that they can be copied."""
    urls = view.get("urls") or {}
    rows = [("master playlist", urls.get("master")), ("DASH manifest", urls.get("dash")),
            ("storyboard", urls.get("storyboard")), ("poster", urls.get("poster"))]  # fmt: skip
    for r in view.get("renditions") or []:
        for kind in ("playlist", "iframes", "subtitles", "mp4"):
            rows.append((f"{r.get('name')} {kind}", (r.get("urls") or {}).get(kind)))
    for label, url in rows:
        if url:
            console.print(f"{label + ':':<17}{url}", soft_wrap=True, highlight=False)


def _when(value: Any) -> str:
    return str(value or "").replace("T", " ")[:19]


def print_job(console: Console, view: Mapping[str, Any]) -> None:
    source = view.get("source") or {}
    console.print(f"job [bold]{view.get('id')}[/]  {_state_markup(str(view.get('state')))}")
    if source:
        where = f"s3://{source.get('bucket')}/{escape(str(source.get('key')))}"
        console.print(f"{'source:':<17}{where}", soft_wrap=True)
    for label, key in (("created", "created_at"), ("finished", "finished_at")):
        if view.get(key):
            console.print(f"{label + ':':<17}{_when(view[key])}")
    if view.get("error"):
        console.print(f"[red]{'error:':<17}[/]{escape(str(view['error']))}")
    waiting = queue_line(view)
    if waiting:
        console.print(f"{'queue:':<17}{waiting}")
    console.print(renditions_table(view))
    plan = view.get("plan") or {}
    for dropped in plan.get("pruned") or []:
        console.print(f"{'dropped:':<17}{escape(str(dropped.get('name')))}: "
                      f"{escape(str(dropped.get('reason')))}", soft_wrap=True)  # fmt: skip
    if plan.get("note"):
        console.print(f"{'plan:':<17}{escape(str(plan['note']))}", soft_wrap=True)
    tools = view.get("tools") or {}
    if tools:
        made = ", ".join(f"{name} {version}" for name, version in tools.items())
        console.print(f"{'tools:':<17}{escape(made)}", soft_wrap=True)
    print_urls(console, view)


def _after(rendition: Mapping[str, Any]) -> str:
    attempts = rendition.get("attempts") or 0
    return f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    """Compact enough for 80 columns: the id stays whole (it is for copying), the source key
    goes under it, renditions are counted as done/total."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("job / source", overflow="fold", min_width=36)
    table.add_column("state", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("done", no_wrap=True, justify="right")
    for j in jobs:
        rends = j.get("renditions") or []
        done = sum(1 for r in rends if r.get("state") in TERMINAL_STATES)
        key = escape(str((j.get("source") or {}).get("key", "")))
        # Dead letters, each with its reason (what `vtp redrive` would queue again); a
        # source refused before any rendition: the job's own reason.
        why = [
            f"[red]{escape(str(r.get('name')))} {escape(str(r.get('state')))}"
            f"{_after(r)}:[/] {escape(str(r.get('error')))}"
            for r in rends
            if r.get("state") in ("failed", "dead") and r.get("error")
        ]
        if not rends and j.get("state") == "failed" and j.get("error"):
            why.append(f"[red]refused:[/] {escape(str(j['error']))}")
        table.add_row(
            "\n".join([f"{j.get('id')}", f"[dim]{key}[/]", *why]),
            _state_markup(str(j.get("state"))),
            _when(j.get("created_at")),
            f"{done}/{len(rends)}",
        )
    return table
