"""The `vtp` command line: the commands (`cmd_upload`, `cmd_watch`, `cmd_status`, `cmd_jobs`),
their argument parser and `main` (see vtp_cli for the usage)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from vtp.errors import InvalidRequest, VtpError
from vtp.lifecycle import JobState
from vtp.options import from_metadata
from vtp.settings import Settings
from vtp_cli.client import StatusClient, default_key, upload_file
from vtp_cli.config import ClientConfig, load_config
from vtp_cli.progress import JobProgress
from vtp_cli.views import BarsView, jobs_table, print_job, print_urls, renditions_table
from vtp_cli.watch import Watcher

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


# --- commands -------------------------------------------------------------------------------------


def _video_suffixes() -> list[str]:
    default: list[str] = Settings.model_fields["video_suffixes"].get_default(
        call_default_factory=True
    )
    return default


def watch_job(
    config: ClientConfig, job_id: str, console: Console, *, timeout: float, status: StatusClient
) -> int:
    with BarsView(console) as bars:
        told: list[str] = []
        waited: list[str | None] = [None]

        def changed(job: JobProgress) -> None:
            bars.update(job)
            # Waiting for a slot (fair share): said when it changes.
            if job.waiting and job.waiting != waited[0] and not job.finished:
                bars.progress.console.print(f"[dim]{escape(job.waiting)}[/]")
            waited[0] = job.waiting
            # Playable early: said once per new set, with the master that lists it.
            if job.ready and job.ready != told and not job.finished and job.master_url:
                told[:] = job.ready
                bars.progress.console.print(
                    f"playable early: {', '.join(job.ready)} — {job.master_url}", soft_wrap=True
                )

        watcher = Watcher(
            config,
            job_id,
            status=status,
            on_change=changed,
            on_transport=lambda name: bars.progress.console.print(f"[dim]live updates: {name}[/]"),
            timeout=timeout,
        )
        result = watcher.run()
        bars.update(result.job)
    view = result.view
    console.print(renditions_table(view, title=f"job {job_id}: {view.get('state')}"))
    if result.timed_out:
        console.print(f"[yellow]job {job_id} is still {result.job.state} after {timeout:.0f} s[/]")
        return EXIT_ERROR
    if not result.job.succeeded:
        reason = result.job.failure_reason() or "no reason recorded"
        console.print(f"[red]job {escape(str(result.job.state))}:[/] {escape(reason)}")
        return EXIT_FAILED
    print_urls(console, view)
    return EXIT_OK


def cmd_upload(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise InvalidRequest(f"{path} is not a file")
    key = args.key or default_key(path)
    if not key.lower().endswith(tuple(_video_suffixes())):
        console.print(f"[yellow]warning: {escape(key)} has no video suffix; no job may start[/]")
    metadata = {
        f"vtp-{name}": value
        for name, value in (
            ("renditions", args.renditions), ("formats", args.formats),
            ("callback-url", args.callback_url), ("loudness", args.loudness),
            ("codecs", args.codecs), ("priority", args.priority),
        )
        if value
    }  # fmt: skip
    # The job's options ride with the upload; checked here as split will check them.
    from_metadata({f"x-amz-meta-{k}": v for k, v in metadata.items()})
    upload_file(config, path, key, metadata)
    console.print(f"uploaded [bold]s3://{config.uploads_bucket}/{escape(key)}[/]")
    status = StatusClient(config)
    job = status.find_job(config.uploads_bucket, key, timeout=args.find_timeout)
    console.print(f"job [bold]{job['id']}[/] ({job['state']})")
    if not args.watch:
        return EXIT_OK
    return watch_job(config, str(job["id"]), console, timeout=args.timeout, status=status)


def cmd_watch(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    status = StatusClient(config)
    job_id = str(status.job(args.job)["id"])  # the full id: the short one matches no event
    return watch_job(config, job_id, console, timeout=args.timeout, status=status)


def cmd_status(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    """Exit status as `upload --watch` and `watch`: 1 for a failed job, else 0."""
    view = StatusClient(config).job(args.job)
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
    else:
        print_job(console, view)
    return EXIT_FAILED if view.get("state") in ("failed", "cancelled") else EXIT_OK


def cmd_jobs(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    jobs = StatusClient(config).jobs(state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps({"jobs": jobs}, indent=2, sort_keys=True))
    elif not jobs:
        console.print("no jobs")
    else:
        console.print(jobs_table(jobs))
    return EXIT_OK


def cmd_callbacks(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    """`vtp callbacks redeliver JOB`: 0 when the receiver took it, 1 when not (yet)."""
    answer = StatusClient(config).redeliver_callback(args.job)
    cb = answer.get("callback") or {}
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        error = f": {escape(str(cb['error']))}" if cb.get("error") else ""
        console.print(
            f"job {answer['job_id']}: callback to {escape(str(cb.get('url')))} "
            f"{cb.get('status')} after {cb.get('attempts')} attempt(s){error}"
        )
    return EXIT_OK if cb.get("status") == "delivered" else EXIT_FAILED


def cmd_cancel(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    """`vtp cancel JOB`: 0 once cancelled; a job that has ended is an error (exit 2)."""
    status = StatusClient(config)
    job_id = str(status.job(args.job)["id"])  # the full id, from a short one too
    answer = status.cancel(job_id)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        removed = answer.get("outputs_removed")
        console.print(
            f"job {answer['job_id']} cancelled: {answer['tasks_cancelled']} task(s) stopped, "
            f"{'?' if removed is None else removed} output file(s) removed"
        )
    return EXIT_OK


def cmd_redrive(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    """`vtp redrive JOB [--watch]`: 0 once queued again (with --watch: once it succeeded)."""
    status = StatusClient(config)
    job_id = str(status.job(args.job)["id"])
    answer = status.redrive(job_id)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        for rend in answer["renditions"]:
            was = f" (was: {escape(str(rend['was']))})" if rend.get("was") else ""
            console.print(f"{rend['name']}: queued again{was}", soft_wrap=True)
        kept = ", ".join(answer["kept"]) or "none"
        console.print(
            f"job {answer['job_id']} redriven ({answer['tasks_queued']} task(s)); kept: {kept}"
        )
    if not args.watch:
        return EXIT_OK
    return watch_job(config, job_id, console, timeout=args.timeout, status=status)


def cmd_delete(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    """`vtp delete JOB [--source]`: 0 once deleted; a job at work is an error (exit 2)."""
    status = StatusClient(config)
    job_id = str(status.job(args.job)["id"])
    answer = status.delete(job_id, source=args.source)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        kept = "removed" if answer.get("source_removed") else "kept"
        console.print(
            f"job {answer['job_id']} deleted: {answer['outputs_removed']} output file(s) "
            f"removed, source {kept}"
        )
    return EXIT_OK


def cmd_link(args: argparse.Namespace, config: ClientConfig, console: Console) -> int:
    """`vtp link JOB [--ttl S]`: a signed link to one job's page, status and events, to hand
    to its viewer instead of a credential."""
    status = StatusClient(config)
    job_id = str(status.job(args.job)["id"])
    answer = status.link(job_id, args.ttl)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        print(answer["page"])
        console.print(f"job {answer['job_id']}: until {answer['expires_at']}", style="dim")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    # Shared flags are accepted before or after the command; SUPPRESS keeps a subcommand's
    # absent flag from overwriting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection (flags > VTP_* environment > env file)")
    group.add_argument("--env-file", type=Path, default=argparse.SUPPRESS,
                       help="settings file (default: .run/stack.env from here upward)")  # fmt: skip
    group.add_argument("--gateway-url", default=argparse.SUPPRESS, help="VTP_GATEWAY_URL")
    group.add_argument("--ws-url", default=argparse.SUPPRESS, help="VTP_WS_URL (ws-relay /ws)")
    group.add_argument("--events-url", default=argparse.SUPPRESS,
                       help="SSE URL (default <gateway>/function/ws-relay/events)")  # fmt: skip
    group.add_argument("--s3-endpoint", default=argparse.SUPPRESS, help="VTP_S3_ENDPOINT")
    group.add_argument("--uploads-bucket", default=argparse.SUPPRESS, help="VTP_UPLOADS_BUCKET")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="vtp",
        description="Upload videos to the transcoding pipeline and follow their jobs.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("upload", parents=[common], help="upload a file to the uploads bucket")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--key", help="object key (default cli/<random>/<file name>)")
    p.add_argument("--renditions", help="the job's rungs, e.g. 360p,720p (upload metadata)")
    p.add_argument("--formats", help="hls,dash,mp4 (upload metadata)")
    p.add_argument("--codecs", help="video codecs beside H.264: hevc,av1 (upload metadata)")
    p.add_argument("--loudness", help="EBU R128 target in LUFS, e.g. -16 (upload metadata)")
    p.add_argument("--priority", help="low, normal, high or 0-100: its share against other "
                   "jobs' (upload metadata)")  # fmt: skip
    p.add_argument("--callback-url", help="where the finished job is posted (upload metadata)")
    p.add_argument("--watch", action="store_true", help="follow the job until it ends")
    p.add_argument("--find-timeout", type=float, default=60.0,
                   help="seconds to wait for the job to appear (default 60)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600.0, help="watch at most this long")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("watch", parents=[common], help="follow a job live until it ends")
    p.add_argument("job", metavar="JOB", help="job id, or its first 8 digits")
    p.add_argument("--timeout", type=float, default=3600.0, help="watch at most this long")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", parents=[common], help="show one job (exit status 1 if it failed)")
    p.add_argument("job", metavar="JOB", help="job id, or its first 8 digits")
    p.add_argument("--json", action="store_true", help="print the job view as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("callbacks", parents=[common], help="job callbacks")
    p.add_argument("action", choices=["redeliver"], help="redeliver: send a job's callback again")
    p.add_argument("job", metavar="JOB", help="job id, or its first 8 digits")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_callbacks)

    p = sub.add_parser("cancel", parents=[common], help="stop a job that has not ended")
    p.add_argument("job", metavar="JOB", help="job id, or its first 8 digits")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("redrive", parents=[common],
                       help="queue a failed job's failed and dead renditions again")  # fmt: skip
    p.add_argument("job", metavar="JOB", help="job id, or its first 8 digits")
    p.add_argument("--watch", action="store_true", help="follow the job until it ends")
    p.add_argument("--timeout", type=float, default=3600.0, help="watch at most this long")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_redrive)

    p = sub.add_parser("delete", parents=[common],
                       help="delete an ended job's outputs and records")  # fmt: skip
    p.add_argument("job", metavar="JOB", help="job id, or its first 8 digits")
    p.add_argument("--source", action="store_true", help="delete its source object too")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("link", parents=[common],
                       help="a signed link to one job's page, with an expiry")  # fmt: skip
    p.add_argument("job", metavar="JOB", help="job id, or its first 8 digits")
    p.add_argument("--ttl", type=int, help="seconds it stays valid (default: the deployment's)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_link)

    p = sub.add_parser("jobs", parents=[common], help="list recent jobs")
    p.add_argument("--state", choices=[s.value for s in JobState])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", 0) or 0
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Piped or captured output is not cut at 80 columns (rich's width without a terminal):
    # a job id, a URL or a reason must survive `vtp status JOB | grep ...` whole.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 250
    console = Console(highlight=False, width=wide)
    flags = {
        name: getattr(args, name, None)
        for name in ("gateway_url", "ws_url", "events_url", "s3_endpoint", "uploads_bucket")
    }
    try:
        config = load_config(flags, os.environ, env_file=getattr(args, "env_file", None))
        code: int = args.func(args, config, console)
    except VtpError as exc:
        Console(stderr=True).print(f"[red]vtp {args.command}:[/] {escape(exc.reason)}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code
