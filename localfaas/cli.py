"""`python -m localfaas up|down|status|env`: what `make up`, `make down` and `make status` run."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from rich.console import Console
from rich.table import Table

from localfaas import runtime, services
from localfaas.config import LocalConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localfaas", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start services, functions, gateway, queue-worker, cron, notifier")
    sub.add_parser("down", help="stop everything the local stack started")
    sub.add_parser("status", help="what runs, where, and where its log is")
    sub.add_parser("env", help="print the stack's connection settings (shell KEY=value)")
    sub.add_parser("clean", help="stop everything and delete the run dir and all local data")
    sc = sub.add_parser("scale", help="scale a function to 0 (stopped, kept down) or 1 replica")
    sc.add_argument("function")
    sc.add_argument("replicas", type=int, choices=(0, 1))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Not cut at 80 columns when piped (rich's width without a terminal): log paths are long.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 250
    console = Console(stderr=False, width=wide)
    cfg = LocalConfig()

    if args.cmd == "up":
        try:
            seconds = runtime.up(cfg)
        except (runtime.UpError, services.ServiceError) as exc:
            console.print(f"[red]up failed:[/red] {exc}")
            return 1
        _print_status(console, cfg)
        console.print(f"stack healthy in {seconds:.1f}s; settings in {cfg.stack_env_file}")
        return 0
    if args.cmd == "down":
        stopped = runtime.down(cfg)
        console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    if args.cmd == "clean":
        runtime.down(cfg)
        removed = [*services.remove_data(cfg)]
        if cfg.run_dir.exists():
            shutil.rmtree(cfg.run_dir)
            removed.append(cfg.run_dir)
        console.print(f"removed: {', '.join(map(str, removed)) or 'nothing'}")
        return 0
    if args.cmd == "status":
        _print_status(console, cfg)
        return 0 if all(r.running for r in runtime.status(cfg)) else 3
    if args.cmd == "scale":
        try:
            runtime.scale(cfg, args.function, args.replicas)
        except runtime.UpError as exc:
            console.print(f"[red]scale failed:[/red] {exc}")
            return 1
        console.print(f"{args.function}: {args.replicas} replica(s)")
        return 0
    if args.cmd == "env":
        sys.stdout.write(cfg.stack_env_file.read_text() if cfg.stack_env_file.exists() else "")
        return 0
    return 2


def _print_status(console: Console, cfg: LocalConfig) -> None:
    rows = runtime.status(cfg)
    if not rows:
        console.print("nothing is running (make up starts the stack)")
        return
    table = Table(title=f"local stack ({cfg.run_dir})")
    for col in ("component", "pid", "state", "where", "log"):
        table.add_column(col)
    for r in rows:
        state = "[green]running[/green]" if r.running else "[red]dead[/red]"
        table.add_row(r.name, str(r.pid), state, r.where, r.log)
    console.print(table)
