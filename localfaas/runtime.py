"""`up`, `down` and `status`: the local stack as one unit.

`up` is idempotent: whatever already runs and answers its health check is left alone, what is
dead is started, and a function whose build context changed since it started is restarted. So
`make up` after editing a handler is the way to redeploy, as `faas-cli up` is on OpenFaaS.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import requests

from localfaas import logprefix, procs, services
from localfaas.build import assemble_context
from localfaas.config import REPO_ROOT, LocalConfig
from localfaas.registry import (
    FunctionEntry,
    load_registry,
    save_registry,
    scaled_to_zero,
)
from localfaas.registry import (
    scale_marker as _scale_path,
)
from localfaas.stack import (
    FunctionSpec,
    Stack,
    find_template,
    function_environment,
    load_stack,
    parse_duration,
    template_fprocess,
    template_uses_watchdog,
)

log = logging.getLogger(__name__)

FN_PREFIX = "fn-"
QUEUE_WORKER = "queue-worker"


@dataclass(frozen=True)
class Component:
    """One of the OpenFaaS components the runtime plays, as a process of its own."""

    name: str
    module: str
    replica: int | None = None


def components(cfg: LocalConfig) -> list[Component]:
    """The components in start order; the queue-worker once per replica (`queue-worker-0`...)."""
    workers = [
        Component(f"{QUEUE_WORKER}-{i}", "localfaas.queue_worker", replica=i)
        for i in range(cfg.queue_workers)
    ]
    return [
        Component("gateway", "localfaas.gateway"),
        *workers,
        Component("cron", "localfaas.cron"),
        Component("notifier", "localfaas.notifier"),
        Component("supervisor", "localfaas.supervisor"),
    ]


# Environment a function process inherits from ours; everything else comes from stack.yml,
# as in a container where only the image's and the function's environment exist.
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")


class UpError(RuntimeError):
    """Something could not be started; the message names it and its log."""


@dataclass
class FunctionPlan:
    name: str
    spec: FunctionSpec
    template: Path
    context: Path
    port: int
    digest: str
    stack_dir: Path
    replica_ports: tuple[int, ...] = ()

    @property
    def ports(self) -> list[int]:
        return [self.port, *self.replica_ports]

    @property
    def process_names(self) -> list[str]:
        return replica_names(self.name, len(self.ports))


def replica_names(name: str, replicas: int) -> list[str]:
    """The processes of a function's replicas: `fn-<name>`, then `fn-<name>.1`, ..."""
    return [FN_PREFIX + name + (f".{i}" if i else "") for i in range(max(1, replicas))]


def _recorded_replicas(cfg: LocalConfig, name: str) -> list[str]:
    """The processes the running stack has for a function (its registry entry's replicas)."""
    entry = load_registry(cfg).get(name)
    return replica_names(name, len(entry.urls) if entry else 1)


def _replicas(cfg: LocalConfig, name: str, spec: FunctionSpec) -> int:
    wanted = cfg.function_replicas.get(name)
    if wanted is None:
        try:
            wanted = int(spec.labels.get("com.openfaas.scale.min", "1"))
        except ValueError:
            wanted = 1
    return max(1, min(wanted, 16))


# --- secrets ------------------------------------------------------------------------------


def secret_store(cfg: LocalConfig) -> Path:
    """Plays `faas-cli secret create`: one file per secret; add your own files here."""
    return cfg.run_dir / "secret-store"


def _write_builtin_secrets(cfg: LocalConfig) -> None:
    c = cfg.credentials
    values = {
        "vtp-s3-access-key": c["s3_access_key"],
        "vtp-s3-secret-key": c["s3_secret_key"],
        "vtp-postgres-dsn": cfg.postgres_dsn,
        "vtp-webhook-token": c["webhook_token"],
        "vtp-callback-secret": c["callback_secret"],
        # Signs private jobs' play URLs (vtp.links): status mints them, ws-relay checks them.
        "vtp-link-secret": c["link_secret"],
    }
    store = secret_store(cfg)
    creds = store / "vtp-credentials"
    if not creds.exists():
        # Written once: edit the file to add or revoke a credential (vtp.access), and `up`
        # again; the CLI and the demo use the stack.env copies of these three.
        creds.parent.mkdir(parents=True, exist_ok=True)
        creds.write_text(
            "# <name> <scopes> <token>, one credential a line (vtp.access)\n"
            f"viewer view {c['view_token']}\n"
            f"submitter view,submit {c['submit_token']}\n"
            f"operator view,submit,operate {c['operate_token']}\n"
        )
        creds.chmod(0o600)
    store.mkdir(parents=True, exist_ok=True)
    read_token = store / "vtp-read-token"
    if not read_token.exists():
        # Blank: reads are open. Write a token into this file to require it (vtp.access).
        read_token.write_text("")
        read_token.chmod(0o600)
    for name, value in values.items():
        path = store / name
        if not path.exists() or path.read_text() != value:
            path.write_text(value)
            path.chmod(0o600)


def _mount_secrets(cfg: LocalConfig, fn: str, names: Iterable[str]) -> Path:
    """Each function sees only the secrets it declares, like /var/openfaas/secrets."""
    target = cfg.secrets_dir / fn
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():
        old.unlink()
    for name in names:
        src = secret_store(cfg) / name
        if not src.exists():
            raise UpError(
                f"function {fn}: secret {name!r} does not exist "
                f"(create it as a file in {secret_store(cfg)})"
            )
        (target / name).write_bytes(src.read_bytes())
    return target


# --- stack.env ------------------------------------------------------------------------------


# The function whose WebSocket URL clients get as VTP_WS_URL (the CE gateway cannot carry
# WebSockets, so clients connect to the function's own port).
WS_RELAY = "ws-relay"


def stack_env(cfg: LocalConfig) -> dict[str, str]:
    c = cfg.credentials
    env = {
        "VTP_GATEWAY_URL": cfg.gateway_url,
        "VTP_GATEWAY_USER": c["gateway_user"],
        "VTP_GATEWAY_PASSWORD": c["gateway_password"],
        "VTP_S3_ENDPOINT": cfg.s3_endpoint,
        "VTP_S3_ACCESS_KEY": c["s3_access_key"],
        "VTP_S3_SECRET_KEY": c["s3_secret_key"],
        "VTP_UPLOADS_BUCKET": cfg.uploads_bucket,
        "VTP_OUTPUTS_BUCKET": cfg.outputs_bucket,
        "VTP_PRIVATE_OUTPUTS_BUCKET": cfg.private_outputs_bucket,
        "VTP_REDIS_URL": cfg.redis_url,
        "VTP_POSTGRES_DSN": cfg.postgres_dsn,
        "VTP_NATS_URL": cfg.nats_url,
        "VTP_WEBHOOK_TOKEN": c["webhook_token"],
        "VTP_RUN_DIR": str(cfg.run_dir),
    }
    # The relay's port is known once its functions are planned: read it from the registry
    # that start_functions writes (absent before the first `up`, or without ws-relay).
    relay = load_registry(cfg).get(WS_RELAY)
    if relay is not None:
        env["VTP_WS_URL"] = f"ws://127.0.0.1:{relay.port}/ws"
    # The stack's credentials (vtp.access): the CLI and the demo send VTP_TOKEN.
    env["VTP_TOKEN"] = c["operate_token"]
    env["VTP_SUBMIT_TOKEN"] = c["submit_token"]
    env["VTP_VIEW_TOKEN"] = c["view_token"]
    # The legacy read token, if one was written into the secret store.
    token_file = secret_store(cfg) / "vtp-read-token"
    token = token_file.read_text().strip() if token_file.is_file() else ""
    if token:
        env["VTP_READ_TOKEN"] = token
    return env


def write_stack_env(cfg: LocalConfig) -> Path:
    lines = ["# Written by `make up`: connection settings of the local stack.", ""]
    lines += [f"{k}={shlex.quote(v)}" for k, v in stack_env(cfg).items()]
    cfg.stack_env_file.write_text("\n".join(lines) + "\n")
    cfg.stack_env_file.chmod(0o600)
    return cfg.stack_env_file


# Connection settings that stack.yml points at the cluster's services and that the local
# runtime points at its own; everything else in a function's environment is left as written.
def _local_overrides(cfg: LocalConfig) -> dict[str, str]:
    env = stack_env(cfg)
    keys = ("VTP_GATEWAY_URL", "VTP_S3_ENDPOINT", "VTP_UPLOADS_BUCKET", "VTP_OUTPUTS_BUCKET",
            "VTP_PRIVATE_OUTPUTS_BUCKET")  # fmt: skip
    return {k: env[k] for k in keys} | {
        "VTP_REDIS_URL": cfg.redis_url,
        # Everything here is on loopback, callback receivers included.
        "VTP_CALLBACK_ALLOW_PRIVATE_NETWORKS": "true",
        # What this platform runs at once: one call per queue-worker (vtp.jobs.scheduling).
        "VTP_DISPATCH_SLOTS": str(cfg.queue_workers),
    }


# --- functions ------------------------------------------------------------------------------


def scale(cfg: LocalConfig, name: str, replicas: int) -> None:
    """`kubectl scale --replicas` for one function: 0 stops it and keeps it stopped (calls
    then get the provider's 500 "Can't reach service"), 1 starts it again."""
    if name not in load_registry(cfg):
        raise UpError(f"no function {name} in the running stack")
    if replicas not in (0, 1):
        raise UpError("scale a function to 0, or to 1 (its configured replicas) again")
    if replicas == 0:
        _scale_path(cfg, name).write_text("0")
        entry = load_registry(cfg)[name]
        for pname in replica_names(name, len(entry.urls)):
            procs.stop(cfg, pname)
        return
    _scale_path(cfg, name).unlink(missing_ok=True)
    start_functions(cfg, load_stacks(cfg), dead_only=True)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def load_stacks(cfg: LocalConfig) -> list[tuple[Path, Stack]]:
    """stack.yml plus any extra stack files (the tests add their fixture functions so)."""
    files = [cfg.stack_file, *cfg.extra_stack_files]
    return [(f.resolve().parent, load_stack(f)) for f in files]


def plan_functions(
    cfg: LocalConfig, stacks: list[tuple[Path, Stack]], *, assemble: Collection[str] | None = None
) -> list[FunctionPlan]:
    """Every function's plan; the build contexts of those in `assemble` (all by default) are
    made afresh, the others' are left as they are (a running function runs from its own)."""
    plans: list[FunctionPlan] = []
    for stack_dir, stack in stacks:
        for name, declared in stack.functions.items():
            extra = cfg.function_env.get("*", {}) | cfg.function_env.get(name, {})
            spec = declared.model_copy(update={"environment": declared.environment | extra})
            if any(p.name == name for p in plans):
                raise UpError(f"function {name} is declared in more than one stack file")
            template = find_template(stack_dir, spec.lang, [REPO_ROOT])
            context, digest = cfg.build_dir / name, ""
            if assemble is None or name in assemble:
                context = assemble_context(
                    template,
                    stack_dir / spec.handler,
                    [Path(p) for p in stack.configuration.copy_paths],
                    cfg.build_dir / name,
                    scope=stack_dir,
                )
                spec_digest = hashlib.sha256(
                    repr(sorted(spec.model_dump().items())).encode()
                ).hexdigest()
                digest = hashlib.sha256((_digest(context) + spec_digest).encode()).hexdigest()
            plans.append(
                FunctionPlan(
                    name=name,
                    spec=spec,
                    template=template,
                    context=context,
                    port=cfg.function_port_base + len(plans),
                    digest=digest,
                    stack_dir=stack_dir,
                )
            )
    # Further replicas take the ports after every function's first.
    next_port = cfg.function_port_base + len(plans)
    for i, plan in enumerate(plans):
        more = _replicas(cfg, plan.name, plan.spec) - 1
        if more:
            ports = tuple(range(next_port, next_port + more))
            plans[i] = dataclasses.replace(plan, replica_ports=ports)
            next_port += more
    return plans


def _function_env(
    cfg: LocalConfig, plan: FunctionPlan, secrets_dir: Path, port: int
) -> dict[str, str]:
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    env.update(function_environment(plan.stack_dir, plan.spec))
    local = _local_overrides(cfg)
    if "VTP_DISPATCH_SLOTS" in plan.spec.environment:  # sized by the config's function_env
        local.pop("VTP_DISPATCH_SLOTS")
    env.update(local)
    env.update(
        {
            "UPSTREAM_PORT": str(port),
            "VTP_SECRETS_DIR": str(secrets_dir),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def _entry(cfg: LocalConfig, plan: FunctionPlan) -> FunctionEntry:
    env = plan.spec.environment
    return FunctionEntry(
        name=plan.name,
        namespace=plan.spec.namespace or cfg.namespace,
        port=plan.port,
        replica_ports=list(plan.replica_ports),
        image=plan.spec.image,
        env_process=template_fprocess(plan.template),
        labels=plan.spec.labels,
        annotations=plan.spec.annotations,
        exec_timeout=parse_duration(env.get("exec_timeout"), 30.0),
        read_timeout=parse_duration(env.get("read_timeout"), 30.0),
        write_timeout=parse_duration(env.get("write_timeout"), 30.0),
        watchdog=template_uses_watchdog(plan.template),
    )


def _digest_path(cfg: LocalConfig, name: str) -> Path:
    return cfg.state_dir / f"{FN_PREFIX}{name}.digest"


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        return requests.get(url, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _wait_healthy(cfg: LocalConfig, name: str, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(url):
            return
        if procs.running(cfg, name) is None:
            break
        time.sleep(0.1)
    rec = procs.load(cfg, name)
    where = rec.log if rec else cfg.logs_dir / f"{name}.log"
    tail = _tail(Path(where))
    raise UpError(f"{name} did not become healthy at {url} (log: {where})\n{tail}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_functions(
    cfg: LocalConfig, stacks: list[tuple[Path, Stack]], *, dead_only: bool = False
) -> list[FunctionEntry]:
    """Start what is not running, restart what changed (unless `dead_only`: the supervisor
    restarts crashed functions, as an orchestrator does, but redeploying is `up`'s job);
    serialised between `up` and the supervisor by a lock file, so the two never start the
    same function twice."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.run_dir / "functions.lock").open("wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _start_functions(cfg, stacks, dead_only=dead_only)


def _start_functions(
    cfg: LocalConfig, stacks: list[tuple[Path, Stack]], *, dead_only: bool
) -> list[FunctionEntry]:
    dead = None
    if dead_only:
        # Only what crashed is rebuilt: the build contexts of running functions stay put.
        dead = {
            name
            for _, stack in stacks
            for name in stack.functions
            if not scaled_to_zero(cfg, name)
            and any(procs.running(cfg, p) is None for p in _recorded_replicas(cfg, name))
        }
    plans = plan_functions(cfg, stacks, assemble=dead)
    wanted = {pname for p in plans for pname in p.process_names}
    for rec in procs.records(cfg):
        if rec.name.startswith(FN_PREFIX) and rec.name not in wanted:
            log.info("stopping %s: no longer in stack.yml", rec.name)
            procs.stop(cfg, rec.name)
    started: list[tuple[str, int]] = []
    for plan in plans:
        digest_file = _digest_path(cfg, plan.name)
        old = digest_file.read_text() if digest_file.exists() else None
        if dead is not None and plan.name not in dead:
            continue  # running, or scaled to zero on purpose: the supervisor leaves it be
        _scale_path(cfg, plan.name).unlink(missing_ok=True)  # `up` deploys it again
        for pname, port in zip(plan.process_names, plan.ports, strict=True):
            current = procs.running(cfg, pname)
            if (
                current
                and current.port == port
                and old == plan.digest
                and _healthy(f"http://127.0.0.1:{port}/_/health")
            ):
                continue
            if current:
                log.info("restarting %s (changed or unhealthy)", pname)
            procs.stop(cfg, pname)
            secrets_dir = _mount_secrets(cfg, plan.name, plan.spec.secrets)
            argv = [
                sys.executable if a in ("python", "python3") else a
                for a in shlex.split(template_fprocess(plan.context))
            ]
            env = _function_env(cfg, plan, secrets_dir, port)
            if template_uses_watchdog(plan.template) and logprefix.enabled(env.get("prefix_logs")):
                # of-watchdog's own line prefix, on unless the function turns it off.
                argv = [sys.executable, "-m", "localfaas.logprefix", "--", *argv]
            procs.start(
                cfg,
                pname,
                argv,
                env=env,
                cwd=plan.context,
                port=port,
                url=f"{cfg.gateway_url}/function/{plan.name}",
            )
            started.append((pname, port))
        digest_file.write_text(plan.digest)
    for pname, port in started:
        _wait_healthy(cfg, pname, f"http://127.0.0.1:{port}/_/health", 30)
    entries = [_entry(cfg, p) for p in plans]
    save_registry(cfg, entries)
    return entries


# --- components -----------------------------------------------------------------------------


def component_env(cfg: LocalConfig) -> dict[str, str]:
    """Our own process environment plus the runtime's settings, so children see the same cfg."""
    env = dict(os.environ)
    for key, value in cfg.model_dump(mode="json", exclude_none=True).items():
        # pydantic-settings reads complex values (lists) from the environment as JSON.
        env[f"LOCALFAAS_{key.upper()}"] = (
            json.dumps(value) if isinstance(value, list | dict) else str(value)
        )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_components(cfg: LocalConfig) -> None:
    env = component_env(cfg)
    wanted = components(cfg)
    names = {c.name for c in wanted}
    # Replicas beyond the configured count (the count was lowered) are scaled away.
    for rec in procs.records(cfg):
        if rec.name.startswith(QUEUE_WORKER + "-") and rec.name not in names:
            log.info("stopping %s: queue_workers is %d now", rec.name, cfg.queue_workers)
            procs.stop(cfg, rec.name)
    for comp in wanted:
        if procs.running(cfg, comp.name):
            continue
        is_gateway = comp.name == "gateway"
        replica = {"LOCALFAAS_REPLICA": str(comp.replica)} if comp.replica is not None else {}
        procs.start(
            cfg,
            comp.name,
            [sys.executable, "-m", comp.module],
            env=env | replica,
            cwd=REPO_ROOT,
            port=cfg.gateway_port if is_gateway else None,
            url=cfg.gateway_url if is_gateway else None,
        )
        if is_gateway:
            _wait_healthy(cfg, comp.name, f"{cfg.gateway_url}/healthz", 20)
    # The others have no port: a second look that they did not die at start is enough.
    time.sleep(0.3)
    for comp in wanted:
        if procs.running(cfg, comp.name) is None:
            dead = procs.load(cfg, comp.name)
            raise UpError(f"{comp.name} exited at start (log: {dead.log if dead else '?'})")


# --- the verbs --------------------------------------------------------------------------------


def up(cfg: LocalConfig) -> float:
    """Bring everything up; returns the seconds it took."""
    t0 = time.monotonic()
    for d in (cfg.run_dir, cfg.logs_dir, cfg.state_dir, cfg.build_dir):
        d.mkdir(parents=True, exist_ok=True)
    stacks = load_stacks(cfg)
    services.start_services(cfg)
    _write_builtin_secrets(cfg)
    start_functions(cfg, stacks)
    # After the functions: stack.env names the ws-relay port, which the registry now holds.
    write_stack_env(cfg)
    start_components(cfg)
    return time.monotonic() - t0


def down(cfg: LocalConfig) -> list[str]:
    """Stop components, functions, then the services; returns everything that was running,
    services included, in the order it was stopped."""
    stopped = []
    # Components in reverse start order (the supervisor, which would restart functions,
    # goes first; the queue-workers, which hand their calls back to the queue, before the
    # gateway those calls go through), then the functions. Replicas of one kind (every
    # queue-worker, whatever the count now; the functions) stop together.
    replicas = [r.name for r in procs.records(cfg) if r.name.startswith(QUEUE_WORKER + "-")]
    for comp in reversed(components(cfg)):
        if comp.name.startswith(QUEUE_WORKER + "-"):
            group, replicas = replicas, []
        else:
            group = [comp.name]
        stopped += procs.stop_all(cfg, group)
    rest = [r.name for r in procs.records(cfg) if r.name not in services.SERVICES]
    stopped += procs.stop_all(cfg, rest)
    stopped += services.stop_services(cfg)
    for p in cfg.state_dir.glob(f"{FN_PREFIX}*.digest") if cfg.state_dir.exists() else []:
        p.unlink()
    return stopped


@dataclass
class StatusRow:
    name: str
    pid: int
    running: bool
    where: str
    log: str


def status(cfg: LocalConfig) -> list[StatusRow]:
    rows = []
    registry = load_registry(cfg)
    for rec in procs.records(cfg):
        fn = rec.name.removeprefix(FN_PREFIX).partition(".")[0]  # replica 1: fn-<name>.1
        where = rec.url or (f"127.0.0.1:{rec.port}" if rec.port else "")
        if rec.name.startswith(FN_PREFIX) and fn in registry:
            where = f"{cfg.gateway_url}/function/{fn} (direct :{rec.port or registry[fn].port})"
        rows.append(StatusRow(rec.name, rec.pid, procs.pid_alive(rec.pid), where, rec.log))
    return rows
