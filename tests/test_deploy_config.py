"""Static checks of what production deploys: stack.yml, the template, the faasd services in
docker-compose.yml, deploy/ (faasd overrides, Helm values, scripts) and how they must agree.

Nothing here can run OpenFaaS, Docker or MinIO, so the files are parsed and cross-checked: a
function whose secret is never created, a timeout that cuts a transcode short, a bucket rule
that misses `.mkv`, all fail here instead of on the first real upload. The shell scripts in
deploy/ and the script inside the `minio-init` service are run for real, in a temp dir, with
stand-ins for the third-party CLIs they drive (faas-cli, mc, systemctl are not installed).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from croniter import croniter
from pydantic import SecretStr

from localfaas.stack import FunctionSpec, Stack, function_environment, parse_duration
from localfaas.stack import substitute_env as stack_substitute_env
from vtp.settings import SECRET_PREFIX, Settings

REPO = Path(__file__).resolve().parent.parent
STACK_FILE = REPO / "stack.yml"
COMPOSE_FILE = REPO / "docker-compose.yml"
FAASD_OVERRIDES = REPO / "deploy" / "faasd" / "core-overrides.yaml"
FAASD_PROVIDER_DROPIN = REPO / "deploy" / "faasd" / "faasd-provider-timeout.conf"
FAASD_INSTALL = REPO / "deploy" / "faasd" / "install.sh"
HELM_VALUES = REPO / "deploy" / "kubernetes" / "values-openfaas.yaml"
SECRETS_SH = REPO / "deploy" / "secrets.sh"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

# of-watchdog's timeouts when a function does not set them (the value localfaas uses too).
WATCHDOG_DEFAULT_SECONDS = 30.0
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
COMPOSE_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
BACKING_SERVICES = ("minio", "minio-init", "redis", "postgres")

# What each function cannot run without, beyond what has a usable default in Settings. The
# credentials' defaults are empty (or, for the DSN, password-less): production must set them.
NEEDED_BY_ALL = {"s3_access_key", "s3_secret_key", "postgres_dsn"}
NEEDED_BY_ROLE = {
    "split": {"webhook_token"},  # MinIO's webhook target sends it; split must check it
    "transcode": {"rendition"},  # which rung this transcode-<res> encodes
}
# Settings without a usable default that a deployment may leave unset, and why that is fine.
OPTIONAL_SETTINGS = {
    "s3_public_endpoint": "falls back to s3_endpoint",
    "callback_secret": "callbacks go unsigned",
    "webhook_token": "only split checks it (and split needs it)",
    "rendition": "only transcode-* have a rung (and they need it)",
    "exec_timeout": "of-watchdog's own variable: without it there is no limit to keep under",
    "input_buckets": "falls back to the uploads bucket",
    "read_token": "legacy: a view-only credential (vtp.access), and deploy/secrets.sh says so",
    "credentials": "the deployment is closed (vtp.access), and deploy/secrets.sh says so",
    "link_secret": "no links, sessions or play URLs are signed (vtp.links), secrets.sh says so",
    "public_gateway_url": "falls back to gateway_url",
    "write_timeout": "of-watchdog's own variable: without it there is no limit to check",
    "gateway_upstream_timeout": "unknown to the function: its order is not checked",
    "queue_ack_wait": "unknown to the function: its order is not checked",
}
# Never in a function's environment: stack.yml and its environment files are not secret.
CREDENTIALS = {
    "s3_access_key", "s3_secret_key", "postgres_dsn", "webhook_token", "callback_secret",
    "read_token", "credentials", "link_secret",
}  # fmt: skip


# --- loading -------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def raw_stack() -> dict[str, Any]:
    """stack.yml as faas-cli sees it with no REGISTRY/TAG/OPENFAAS_URL set."""
    data = yaml.safe_load(stack_substitute_env(STACK_FILE.read_text(), {}))
    assert isinstance(data, dict)
    return data


def stack() -> Stack:
    return Stack.model_validate(raw_stack())


def functions() -> dict[str, FunctionSpec]:
    return stack().functions


def function_names() -> list[str]:
    return sorted(raw_stack().get("functions") or {})


def role(name: str) -> str:
    """A function's handler folder name: transcode-720p -> transcode."""
    return Path(functions()[name].handler).name


def fn_env(name: str) -> dict[str, str]:
    return function_environment(REPO, functions()[name])


def fn_timeouts(name: str) -> dict[str, float]:
    env = fn_env(name)
    return {
        key: parse_duration(env.get(key), WATCHDOG_DEFAULT_SECONDS)
        for key in ("exec_timeout", "read_timeout", "write_timeout")
    }


def env_map(environment: Any) -> dict[str, str]:
    """A compose `environment:` in either form (list of k=v, or mapping) as a dict."""
    if environment is None:
        return {}
    if isinstance(environment, dict):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    out: dict[str, str] = {}
    for item in environment:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def service_env(name: str) -> dict[str, str]:
    return env_map(compose_services()[name].get("environment"))


def compose_var(value: str) -> str:
    """The variable a `${VAR}` value refers to."""
    m = COMPOSE_VAR.fullmatch(value.strip())
    assert m, f"{value!r} is not a ${{VAR}} reference"
    return m.group(1)


def secrets_sh_table() -> dict[str, str]:
    """secret name -> environment variable, from deploy/secrets.sh's SECRETS table."""
    text = SECRETS_SH.read_text()
    table = dict(re.findall(r'^\s*"(vtp-[a-z0-9-]+)\s+([A-Z][A-Z0-9_]*)\s', text, re.M))
    assert table, "no secrets found in deploy/secrets.sh's SECRETS table"
    return table


def secret_field(secret: str) -> str:
    """The Settings field an OpenFaaS secret fills (vtp-s3-secret-key -> s3_secret_key)."""
    assert secret.startswith(SECRET_PREFIX), secret
    return secret.removeprefix(SECRET_PREFIX).replace("-", "_")


def settings_for_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Settings:
    """Settings exactly as a function with this environment (and no secrets) would load them."""
    for key in list(os.environ):
        if key.startswith("VTP_") or key == "exec_timeout":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VTP_SECRETS_DIR", str(tmp / "no-secrets"))
    return Settings()


def has_usable_default(field: str) -> bool:
    info = Settings.model_fields[field]
    if info.is_required():
        return False
    default = info.get_default(call_default_factory=True)
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    return default not in (None, "")


def faasd_overrides() -> dict[str, dict[str, str]]:
    data = load_yaml(FAASD_OVERRIDES)
    return {name: env_map(svc.get("environment")) for name, svc in data["services"].items()}


def helm_values() -> dict[str, Any]:
    data = load_yaml(HELM_VALUES)
    assert isinstance(data, dict)
    return data


def seconds(value: Any) -> float:
    return parse_duration(str(value), 0.0)


def max_exec_timeout() -> float:
    return max(fn_timeouts(name)["exec_timeout"] for name in function_names())


def transcode_names() -> list[str]:
    return [n for n in function_names() if n.startswith("transcode-")]


# --- stack.yml -----------------------------------------------------------------------------


def test_stack_shape() -> None:
    data = raw_stack()
    # faas-cli wants the literal 1.0 (YAML reads it as a float).
    assert str(data.get("version")) == "1.0"
    provider = data.get("provider") or {}
    assert provider.get("name") == "openfaas"
    assert str(provider.get("gateway", "")).startswith(("http://", "https://"))
    assert isinstance(data.get("functions"), dict) and data["functions"]
    stack()  # and the local runtime's model of it accepts it


@pytest.mark.parametrize("name", function_names())
def test_function_name_is_a_dns_label(name: str) -> None:
    # Kubernetes names Deployments and Services after the function.
    assert len(name) <= 63 and DNS1123_LABEL.match(name), name


@pytest.mark.parametrize("name", function_names())
def test_handler_folder_has_a_handler(name: str) -> None:
    folder = REPO / functions()[name].handler
    assert folder.is_dir(), f"{name}: handler folder {folder} missing"
    handler = folder / "handler.py"
    assert handler.is_file(), f"{name}: {handler} missing"
    tree = ast.parse(handler.read_text(), filename=str(handler))
    if functions()[name].lang == "python3-asgi":
        # That template serves `app`, an ASGI application, instead of calling handle().
        assigned = {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign | ast.AnnAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Name)
        }
        assert "app" in assigned, f"{handler}: no top-level `app` (an ASGI application)"
        return
    handles = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "handle"]
    assert handles, f"{handler}: no top-level handle(event, context)"
    assert len(handles[0].args.args) == 2, f"{handler}: handle must take (event, context)"


def template_copied_function_files(lang: str) -> list[str]:
    """Files the template's Dockerfile COPYs from the handler folder by name."""
    dockerfile = (REPO / "template" / lang / "Dockerfile").read_text()
    found = re.findall(r"^COPY\b[^\n]*?\sfunction/([\w.-]+)\s", dockerfile, re.M)
    return sorted(set(found))


@pytest.mark.parametrize("name", function_names())
def test_handler_folder_has_what_the_template_copies(name: str) -> None:
    spec = functions()[name]
    if not (REPO / "template" / spec.lang / "Dockerfile").is_file():
        pytest.fail(f"template {spec.lang} has no Dockerfile (see test_template_exists)")
    folder = REPO / spec.handler
    for filename in template_copied_function_files(spec.lang):
        assert (folder / filename).is_file(), (
            f"{name}: the {spec.lang} Dockerfile copies function/{filename}, "
            f"which {spec.handler} lacks: the image build would fail"
        )


@pytest.mark.parametrize("lang", sorted({spec.lang for spec in functions().values()}))
def test_template_exists(lang: str) -> None:
    # faas-cli build looks in ./template/<lang>; our template is in the repo, not pulled.
    folder = REPO / "template" / lang
    for filename in ("template.yml", "Dockerfile"):
        assert (folder / filename).is_file(), f"{folder / filename} missing"
    meta = load_yaml(folder / "template.yml") or {}
    assert meta.get("language", lang) == lang
    assert meta.get("fprocess"), "template.yml has no fprocess"


def test_configuration_copy_paths_exist() -> None:
    copies = stack().configuration.copy_paths
    assert copies, "stack.yml copies no shared code into the functions"
    for rel in copies:
        path = (REPO / rel).resolve()
        assert path.exists(), f"configuration.copy: {rel} missing"
        assert path.is_relative_to(REPO), f"configuration.copy: {rel} is outside the repo"


@pytest.mark.parametrize("name", function_names())
def test_environment_files_exist(name: str) -> None:
    for rel in functions()[name].environment_file:
        path = REPO / rel
        assert path.is_file(), f"{name}: environment_file {rel} missing"
        data = load_yaml(path)
        assert isinstance(data, dict) and isinstance(data.get("environment"), dict), (
            f"{rel}: an environment_file needs a top-level `environment:` mapping"
        )


@pytest.mark.parametrize(
    "environ",
    [{}, {"REGISTRY": "registry.example.com:5000/media", "TAG": "1.4.2"}],
    ids=["defaults", "overridden"],
)
def test_image_names_follow_registry_handler_tag(environ: dict[str, str]) -> None:
    data = yaml.safe_load(stack_substitute_env(STACK_FILE.read_text(), environ))
    registries, tags = set(), set()
    for name, spec in data["functions"].items():
        image = spec["image"]
        m = re.fullmatch(r"(?P<registry>.+)/(?P<repo>[^/:]+):(?P<tag>[\w][\w.-]*)", image)
        assert m, f"{name}: image {image!r} is not <registry>/<name>:<tag>"
        assert m["repo"] == Path(spec["handler"]).name, (
            f"{name}: image {image!r} should be named after its handler folder"
        )
        registries.add(m["registry"])
        tags.add(m["tag"])
    assert len(registries) == 1 and len(tags) == 1, "one REGISTRY and one TAG for all functions"
    if environ:
        assert registries == {environ["REGISTRY"]} and tags == {environ["TAG"]}


def test_transcode_functions_share_the_handler_and_name_their_rung() -> None:
    names = transcode_names()
    assert names, "no transcode-<resolution> functions"
    images = set()
    for name in names:
        spec = functions()[name]
        rung = name.removeprefix("transcode-")
        assert re.fullmatch(r"\d+p", rung), name
        assert Path(spec.handler) == Path("functions/transcode"), f"{name}: {spec.handler}"
        assert fn_env(name).get("VTP_RENDITION") == rung, f"{name} must set VTP_RENDITION={rung}"
        images.add(spec.image)
    assert len(images) == 1, "transcode-* are one image deployed several times"
    missing = {f"transcode-{r}" for r in Settings().default_renditions} - set(names)
    assert not missing, f"default renditions without a function: {sorted(missing)}"


@pytest.mark.parametrize("name", function_names())
def test_environment_is_known_to_settings_and_loads(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = fn_env(name)
    known = {f"VTP_{field.upper()}" for field in Settings.model_fields}
    unknown = sorted(k for k in env if k.startswith("VTP_") and k not in known)
    assert not unknown, f"{name}: no such setting: {unknown} (typo?)"
    vtp_env = {k: v for k, v in env.items() if k.startswith("VTP_")}
    settings_for_env(vtp_env, monkeypatch, tmp_path)  # raises if a value does not parse


@pytest.mark.parametrize("name", function_names())
def test_log_lines_reach_the_platform_as_written(name: str) -> None:
    """of-watchdog prefixes each line with its date and stream unless `prefix_logs` is
    false; a JSON log line (VTP_LOG_FORMAT=json) would then no longer be JSON."""
    env = fn_env(name)
    assert env.get("prefix_logs") == "false", f"{name}: prefix_logs is {env.get('prefix_logs')!r}"


@pytest.mark.parametrize("name", function_names())
def test_declared_secrets_are_created_by_secrets_sh(name: str) -> None:
    created = secrets_sh_table()
    for secret in functions()[name].secrets:
        assert secret in created, f"{name} declares {secret}, which deploy/secrets.sh never creates"
        assert secret_field(secret) in Settings.model_fields, (
            f"{secret} fills no setting: Settings reads secret files named vtp-<field>"
        )


# --- which functions need which secret, derived from the code -------------------------------

PIPELINE_DIR = REPO / "vtp" / "pipeline"
# Receivers of Pipeline method calls in handler code: `pipeline().m()`, `p.m()` (p = pipeline()).
_PIPELINE_RECEIVERS = {"p", "pipeline", "pipe"}


def _pipeline_methods() -> dict[str, ast.FunctionDef]:
    """Every method of the classes that make up Pipeline (one module per part)."""
    methods: dict[str, ast.FunctionDef] = {}
    for path in sorted(PIPELINE_DIR.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                methods |= {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
    return methods


def _reads_setting(node: ast.AST, field: str) -> bool:
    """`self.settings.<field>` or `settings.<field>` anywhere in `node`."""
    return any(
        isinstance(n, ast.Attribute)
        and n.attr == field
        and (
            (isinstance(n.value, ast.Attribute) and n.value.attr == "settings")
            or (isinstance(n.value, ast.Name) and n.value.id == "settings")
        )
        for n in ast.walk(node)
    )


def _is_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _self_calls(node: ast.AST) -> set[str]:
    """Methods called on `self` or on a part held by it (`self.fanin.maybe_finalize()`)."""
    return {
        n.func.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and (
            _is_self(n.func.value)
            or (isinstance(n.func.value, ast.Attribute) and _is_self(n.func.value.value))
        )
    }


def _entry_points() -> dict[str, str]:
    """Pipeline's names for its parts' methods: `self.run_rendition = self.runner.run`."""
    aliases = {}
    for n in ast.walk(ast.parse((PIPELINE_DIR / "__init__.py").read_text())):
        if (
            isinstance(n, ast.Assign)
            and len(n.targets) == 1
            and isinstance(n.targets[0], ast.Attribute)
            and _is_self(n.targets[0].value)
            and isinstance(n.value, ast.Attribute)
            and isinstance(n.value.value, ast.Attribute)
            and _is_self(n.value.value.value)
        ):
            aliases[n.targets[0].attr] = n.value.attr
    return aliases


def methods_needing(field: str) -> set[str]:
    """Pipeline methods that read `settings.<field>`, directly or through other methods."""
    methods = _pipeline_methods()
    calls = {name: _self_calls(fn) & set(methods) for name, fn in methods.items()}
    for alias, target in _entry_points().items():
        calls.setdefault(alias, set()).add(target)
    need = {name for name, fn in methods.items() if _reads_setting(fn, field)}
    while True:
        more = {name for name, callees in calls.items() if callees & need} - need
        if not more:
            return need
        need |= more


def handler_pipeline_calls(handler: Path) -> set[str]:
    """Pipeline methods a handler calls (on `pipeline()` or a variable holding it)."""
    calls = set()
    for n in ast.walk(ast.parse(handler.read_text())):
        if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)):
            continue
        receiver = n.func.value
        if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name):
            receiver = receiver.func
        if isinstance(receiver, ast.Name) and receiver.id in _PIPELINE_RECEIVERS:
            calls.add(n.func.attr)
    return calls


def test_the_secret_analysis_sees_what_it_must() -> None:
    # Guards the analysis itself: were these false, the test below would pass vacuously.
    assert {"callback_url", "dispatch", "sweep", "submit"} <= methods_needing("callback_secret")
    assert "run_rendition" in methods_needing("callback_secret")  # its retry is dispatched
    assert "describe_job" not in methods_needing("callback_secret")
    assert "sweep" in handler_pipeline_calls(REPO / "functions" / "sweeper" / "handler.py")
    assert "submit" in handler_pipeline_calls(REPO / "functions" / "split" / "handler.py")


@pytest.mark.parametrize("name", function_names())
def test_functions_that_sign_have_the_signing_secret(name: str) -> None:
    """A function whose code builds signed callback URLs (dispatches, retries, job callbacks)
    must mount vtp-callback-secret, or split refuses its reports (401): derived from the
    code, so a new caller of `dispatch` cannot be forgotten in stack.yml."""
    handler = REPO / functions()[name].handler / "handler.py"
    uses = handler_pipeline_calls(handler) & methods_needing("callback_secret")
    if uses:
        assert "vtp-callback-secret" in functions()[name].secrets, (
            f"{name} calls {sorted(uses)}, which sign with the callback secret"
        )


def test_only_what_hands_out_or_checks_play_urls_holds_the_link_secret() -> None:
    """status mints private jobs' play URLs and ws-relay checks them (and mints them for the
    page, and signs its sessions); split mints viewer links: they mount vtp-link-secret.
    Nothing else needs the key that opens every private video, least of all the transcodes,
    which run ffmpeg on untrusted uploads; callbacks carry no play URLs (vtp.pipeline.fanin),
    so what sends them needs none either."""
    holders = {name for name, spec in functions().items() if "vtp-link-secret" in spec.secrets}
    assert holders == {"split", "status", "ws-relay"}


def test_secrets_sh_creates_only_secrets_settings_read() -> None:
    for secret in secrets_sh_table():
        assert secret_field(secret) in Settings.model_fields, secret


def test_every_setting_without_a_default_is_accounted_for() -> None:
    needed = NEEDED_BY_ALL.union(*NEEDED_BY_ROLE.values())
    for field in Settings.model_fields:
        if not has_usable_default(field):
            assert field in needed or field in OPTIONAL_SETTINGS, (
                f"Settings.{field} has no default: add it to NEEDED_BY_* or OPTIONAL_SETTINGS "
                "here, and to stack.yml or deploy/secrets.sh if functions need it"
            )


@pytest.mark.parametrize("name", function_names())
def test_needed_settings_are_provided(name: str) -> None:
    env = fn_env(name)
    secrets = set(functions()[name].secrets)
    for field in NEEDED_BY_ALL | NEEDED_BY_ROLE.get(role(name), set()):
        from_env = f"VTP_{field.upper()}" in env
        from_secret = SECRET_PREFIX + field.replace("_", "-") in secrets
        assert from_env or from_secret, f"{name} needs {field}: neither env nor secret gives it"


@pytest.mark.parametrize("name", function_names())
def test_credentials_are_secrets_not_environment(name: str) -> None:
    env = fn_env(name)
    leaked = sorted(f for f in CREDENTIALS if f"VTP_{f.upper()}" in env)
    assert not leaked, f"{name}: credentials in stack.yml environment: {leaked}"


@pytest.mark.parametrize("name", function_names())
def test_cron_schedules_are_valid(name: str) -> None:
    annotations = functions()[name].annotations
    if annotations.get("topic") != "cron-function":
        assert "schedule" not in annotations, f"{name}: a schedule without topic: cron-function"
        return
    schedule = annotations.get("schedule", "")
    # The cron-connector takes the classic five fields, no seconds.
    assert len(schedule.split()) == 5, f"{name}: schedule {schedule!r} is not five fields"
    assert croniter.is_valid(schedule), f"{name}: invalid schedule {schedule!r}"


# --- timeouts that must agree --------------------------------------------------------------


@pytest.mark.parametrize("name", function_names())
def test_watchdog_exec_timeout_within_read_write(name: str) -> None:
    t = fn_timeouts(name)
    # write_timeout shorter than exec_timeout cuts the response of a call still running.
    assert t["exec_timeout"] <= t["read_timeout"], (name, t)
    assert t["exec_timeout"] <= t["write_timeout"], (name, t)


def check_chain(
    where: str,
    upstream: float,
    gateway_read: float,
    gateway_write: float,
    ack_wait: float,
) -> None:
    for name in function_names():
        t = fn_timeouts(name)
        assert max(t["read_timeout"], t["write_timeout"]) <= upstream, (
            f"{where}: {name}'s read/write_timeout {t} exceed the gateway's upstream_timeout "
            f"{upstream}s: the gateway gives up on calls the function still serves"
        )
    # The gateway's own server must outlast its proxy, or clients see a dropped connection
    # instead of the gateway's timeout answer.
    assert upstream <= min(gateway_read, gateway_write), where
    assert ack_wait > max_exec_timeout(), (
        f"{where}: ack_wait {ack_wait}s <= the longest exec_timeout {max_exec_timeout()}s: "
        "NATS would redeliver calls still running"
    )
    assert ack_wait > upstream, f"{where}: ack_wait must outlast the gateway's upstream_timeout"


def test_functions_are_told_the_platforms_timeouts() -> None:
    """config/pipeline.yml states the gateway's upstream_timeout and the queue-worker's
    ack_wait as faasd and Helm set them, so each function checks its own exec_timeout
    against them at start (vtp.settings)."""
    env = env_map(load_yaml(REPO / "config" / "pipeline.yml")["environment"])
    overrides = faasd_overrides()
    helm = helm_values()
    upstream = seconds(env["VTP_GATEWAY_UPSTREAM_TIMEOUT"])
    ack_wait = seconds(env["VTP_QUEUE_ACK_WAIT"])
    assert upstream == seconds(overrides["gateway"]["upstream_timeout"])
    assert ack_wait == seconds(overrides["queue-worker"]["ack_wait"])
    assert upstream == seconds(helm["gateway"]["upstreamTimeout"])
    assert ack_wait == seconds(helm["queueWorker"]["ackWait"])


def test_faasd_timeouts_agree() -> None:
    overrides = faasd_overrides()
    gateway, worker = overrides["gateway"], overrides["queue-worker"]
    upstream = seconds(gateway["upstream_timeout"])
    check_chain(
        "faasd",
        upstream,
        seconds(gateway["read_timeout"]),
        seconds(gateway["write_timeout"]),
        seconds(worker["ack_wait"]),
    )
    dropin = FAASD_PROVIDER_DROPIN.read_text()
    m = re.search(r'^Environment="service_timeout=([^"]+)"', dropin, re.M)
    assert m, "faasd-provider drop-in sets no service_timeout"
    assert seconds(m.group(1)) >= upstream, "faasd-provider's proxy would cut calls short"


def test_kubernetes_timeouts_agree() -> None:
    values = helm_values()
    gateway, worker, faasnetes = values["gateway"], values["queueWorker"], values["faasnetes"]
    upstream = seconds(gateway["upstreamTimeout"])
    check_chain(
        "kubernetes",
        upstream,
        seconds(gateway["readTimeout"]),
        seconds(gateway["writeTimeout"]),
        seconds(worker["ackWait"]),
    )
    assert seconds(faasnetes["readTimeout"]) >= upstream
    assert seconds(faasnetes["writeTimeout"]) >= upstream


def faasd_queue_workers() -> dict[str, dict[str, str]]:
    """Our queue-workers on faasd (faasd runs its own `queue-worker` beside them)."""
    return {
        name: env_map(svc.get("environment"))
        for name, svc in compose_services().items()
        if name.startswith("queue-worker")
    }


def test_queue_workers_run_a_whole_job_at_once() -> None:
    # The CE queue-worker runs one call at a time (0.14.x reads no max_inflight): fewer
    # workers than a job's renditions would encode them one after another.
    rungs = len(Settings().default_renditions)
    assert 1 + len(faasd_queue_workers()) >= rungs
    assert int(helm_values()["queueWorker"]["replicas"]) >= rungs
    assert "max_inflight" not in faasd_overrides()["queue-worker"], "CE does not read it"
    assert "maxInflight" not in helm_values()["queueWorker"], "CE does not read it"


def test_extra_queue_workers_are_like_faasds_own() -> None:
    faasd_own = env_map(yaml.safe_load(FAASD_COMPOSE)["services"]["queue-worker"]["environment"])
    ack_wait = faasd_overrides()["queue-worker"]["ack_wait"]
    for name, env in faasd_queue_workers().items():
        assert set(env) == set(faasd_own), name
        assert env["ack_wait"] == ack_wait, f"{name}: ack_wait differs from faasd's worker"
        assert (
            compose_services()[name]["image"]
            == (yaml.safe_load(FAASD_COMPOSE)["services"]["queue-worker"]["image"])
        )


def test_bucket_events_do_not_queue_behind_transcodes() -> None:
    # The async route would put every upload behind every running transcode (one shared
    # queue, one call per worker) and the queue-worker logs the bearer token with the message.
    endpoint = urlsplit(service_env("minio")["MINIO_NOTIFY_WEBHOOK_ENDPOINT_VTP"])
    assert endpoint.path == "/function/split"


def test_helm_values_use_the_charts_key_names() -> None:
    # Misspelt keys are silently ignored by helm: only the chart's own names count.
    values = helm_values()
    assert set(values["gateway"]) <= {"upstreamTimeout", "readTimeout", "writeTimeout"}
    assert set(values["faasnetes"]) <= {"readTimeout", "writeTimeout"}
    assert set(values["queueWorker"]) <= {"ackWait", "maxInflight", "replicas"}
    assert "replicas" in values["queueWorker"]


@pytest.mark.parametrize("name", transcode_names())
def test_transcode_ends_its_work_before_the_watchdog_gives_up(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # of-watchdog answers 504 at exec_timeout and lets the handler run on, unrecorded: the
    # transcode must see the same exec_timeout and finish (or fail, recorded) before it.
    env = fn_env(name)
    vtp_env = {k: v for k, v in env.items() if k.startswith("VTP_")}
    vtp_env["exec_timeout"] = env["exec_timeout"]
    settings = settings_for_env(vtp_env, monkeypatch, tmp_path)
    exec_timeout = fn_timeouts(name)["exec_timeout"]
    assert settings.exec_timeout_seconds == exec_timeout
    assert settings.work_deadline_seconds() < exec_timeout - 60, (
        f"{name}: its work may run {settings.work_deadline_seconds():.0f}s of an "
        f"exec_timeout of {exec_timeout:.0f}s: no time left to upload and record"
    )


# --- docker-compose.yml (faasd's extra services) -------------------------------------------


def test_backing_services_exist() -> None:
    missing = set(BACKING_SERVICES) - set(compose_services())
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(compose().get("services") or {}))
def test_service_image_is_pinned(name: str) -> None:
    image = compose_services()[name].get("image", "")
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    assert ":" in last, f"{name}: image {image!r} has no tag"
    tag = last.rsplit(":", 1)[1]
    assert tag != "latest" and "${" not in image, f"{name}: image {image!r} is not pinned"
    if name == "postgres":
        assert re.match(r"(15|16)(\.\d+)?(-|$)", tag), f"postgres should be 15 or 16: {tag}"
    if name in ("minio", "minio-init"):
        assert tag.startswith("RELEASE."), f"{name}: MinIO images are tagged RELEASE.<date>"


@pytest.mark.parametrize("name", sorted(compose().get("services") or {}))
def test_service_volumes_are_bind_mounts(name: str) -> None:
    # faasd refuses named volumes; relative sources are under /var/lib/faasd.
    for volume in compose_services()[name].get("volumes") or []:
        if isinstance(volume, dict):
            assert volume.get("type") == "bind", f"{name}: {volume}"
            source = str(volume.get("source", ""))
        else:
            source = str(volume).split(":", 1)[0]
        assert source.startswith(("./", "/")), f"{name}: {volume} is not a bind mount"


@pytest.mark.parametrize("name", ["minio", "redis", "postgres"])
def test_long_running_services_have_healthchecks(name: str) -> None:
    check = compose_services()[name].get("healthcheck") or {}
    assert check.get("test"), f"{name} has no healthcheck"


def test_minio_webhook_target_is_complete() -> None:
    env = service_env("minio")
    ids = {k.removeprefix("MINIO_NOTIFY_WEBHOOK_ENABLE_") for k in env if "WEBHOOK_ENABLE_" in k}
    assert ids == {"VTP"}, ids
    assert env["MINIO_NOTIFY_WEBHOOK_ENABLE_VTP"] == "on"
    endpoint = urlsplit(env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_VTP"])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "gateway", 8080)
    assert endpoint.path == "/function/split", "uploads go to split directly, not queued"
    # The token MinIO sends is the one split checks: both come from the same variable.
    token_var = compose_var(env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_VTP"])
    assert secrets_sh_table()["vtp-webhook-token"] == token_var
    queue_dir = env["MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_VTP"]
    assert queue_dir.startswith("/"), "MinIO wants an absolute queue dir"
    targets = [
        str(v.get("target") if isinstance(v, dict) else str(v).split(":")[1])
        for v in compose_services()["minio"].get("volumes") or []
    ]
    assert any(queue_dir == t or queue_dir.startswith(t.rstrip("/") + "/") for t in targets), (
        f"queue dir {queue_dir} is not on a volume: queued events would not survive a restart"
    )
    assert env["MINIO_ROOT_USER"] and env["MINIO_ROOT_PASSWORD"]


def test_services_are_where_the_functions_look_for_them() -> None:
    services = compose_services()
    pipeline = load_yaml(REPO / "config" / "pipeline.yml")["environment"]
    s3 = urlsplit(pipeline["VTP_S3_ENDPOINT"])
    assert s3.hostname in services and s3.port == 9000
    assert "9000" in " ".join(services["minio"].get("command") or [])
    redis = urlsplit(pipeline["VTP_REDIS_URL"])
    assert redis.hostname in services and (redis.port or 6379) == 6379
    dsn = urlsplit(Settings().postgres_dsn.get_secret_value())
    assert dsn.hostname in services
    env = service_env(dsn.hostname or "")
    assert env["POSTGRES_DB"] == dsn.path.lstrip("/") == "vtp"
    assert env["POSTGRES_USER"] == dsn.username
    assert compose_var(env["POSTGRES_PASSWORD"])


def test_commands_survive_faasd_replacing_the_entrypoint() -> None:
    # faasd runs `command` as the whole argv; docker compose appends it to the entrypoint.
    services = compose_services()
    assert services["minio"]["command"][0] == "minio"
    assert services["redis"]["command"][0] == "redis-server"
    assert "command" not in services["postgres"], "postgres needs its image's entrypoint"
    init = services["minio-init"]
    assert init.get("entrypoint") == [] and init["command"][:2] == ["/bin/sh", "-c"]


def test_redis_appends_only() -> None:
    command = compose_services()["redis"]["command"]
    i = command.index("--appendonly")
    assert command[i + 1] == "yes"


def test_minio_init_rule_buckets_and_suffixes_match_settings() -> None:
    settings = Settings()
    pipeline = load_yaml(REPO / "config" / "pipeline.yml")["environment"]
    init = compose_services()["minio-init"]
    env = service_env("minio-init")
    assert "minio" in (init.get("depends_on") or [])
    assert env["UPLOADS_BUCKET"] == settings.uploads_bucket == pipeline["VTP_UPLOADS_BUCKET"]
    assert env["OUTPUTS_BUCKET"] == settings.outputs_bucket == pipeline["VTP_OUTPUTS_BUCKET"]
    assert (env["PRIVATE_OUTPUTS_BUCKET"] == settings.private_outputs_bucket
            == pipeline["VTP_PRIVATE_OUTPUTS_BUCKET"])  # fmt: skip
    assert env["WEBHOOK_ARN"] == "arn:minio:sqs::VTP:webhook"
    # No suffix filter: every upload reaches split, which answers any it does not take
    # with a failed job.
    assert "VIDEO_SUFFIXES" not in env
    # The functions' MinIO user is the one their secrets name.
    table = secrets_sh_table()
    assert compose_var(env["FN_ACCESS_KEY"]) == table["vtp-s3-access-key"]
    assert compose_var(env["FN_SECRET_KEY"]) == table["vtp-s3-secret-key"]


# --- the minio-init script, run against a stand-in mc ---------------------------------------

FAKE_MC = """\
#!/usr/bin/env bash
# Stand-in for MinIO's mc: records each call; keeps copies of the policy files it is given.
printf '%s\\n' "$*" >> "$MC_LOG"
for arg in "$@"; do
  case "$arg" in */vtp-*.json) cp "$arg" "$MC_FILES/$(basename "$arg")" ;; esac
done
if [ "$1 $2 $3" = "admin policy attach" ] && [ -n "${MC_ATTACH_ERROR:-}" ]; then
  echo "mc: <ERROR> $MC_ATTACH_ERROR" >&2
  exit 1
fi
exit 0
"""


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def run_minio_init(
    tmp_path: Path, **extra_env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    init = compose_services()["minio-init"]
    # Compose turns $$ into $ before the shell sees the script.
    script = init["command"][2].replace("$$", "$")
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    write_executable(bindir / "mc", FAKE_MC)
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    log = tmp_path / "mc.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in service_env("minio-init").items()}
    env.update(
        INIT_ROOT_USER="root-user",
        INIT_ROOT_PASSWORD="root-password",
        FN_ACCESS_KEY="vtp-functions",
        FN_SECRET_KEY="functions-secret",
        PATH=f"{bindir}:{os.environ['PATH']}",
        MC_LOG=str(log),
        MC_FILES=str(files),
        TMPDIR=str(tmp_path),
        **extra_env,
    )
    result = subprocess.run(
        ["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    return result, tmp_path


def test_minio_init_script_sets_up_buckets_rule_and_access(tmp_path: Path) -> None:
    result, out = run_minio_init(tmp_path)
    assert result.returncode == 0, result.stderr
    calls = (out / "mc.log").read_text().splitlines()
    assert "mb --ignore-existing vtp/uploads vtp/outputs vtp/outputs-private" in calls
    rules = [c for c in calls if c.startswith("event ")]
    # Earlier versions' per-suffix rules removed, then the one rule for every upload.
    assert rules == [
        "event remove vtp/uploads arn:minio:sqs::VTP:webhook --force",
        "event add vtp/uploads arn:minio:sqs::VTP:webhook --event put --ignore-existing",
    ]
    # Anonymous read of objects in outputs, and nothing else (no listing, no writes).
    assert f"anonymous set-json {out}/vtp-outputs-public.json vtp/outputs" in calls
    public = json.loads((out / "files" / "vtp-outputs-public.json").read_text())
    (statement,) = public["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == ["s3:GetObject"]
    assert statement["Resource"] == ["arn:aws:s3:::outputs/*"]
    # Private outputs (vtp.privacy): no anonymous access, whatever the bucket had before, and
    # no policy file is ever written for them.
    assert "anonymous set none vtp/outputs-private" in calls
    assert not any("set-json" in c and "outputs-private" in c for c in calls)
    # The functions' user, limited to the three buckets.
    assert "admin user add vtp vtp-functions functions-secret" in calls
    assert f"admin policy create vtp vtp-functions {out}/vtp-functions.json" in calls
    assert "admin policy attach vtp vtp-functions --user vtp-functions" in calls
    policy = json.loads((out / "files" / "vtp-functions.json").read_text())
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {
        "arn:aws:s3:::uploads",
        "arn:aws:s3:::outputs",
        "arn:aws:s3:::outputs-private",
        "arn:aws:s3:::uploads/*",
        "arn:aws:s3:::outputs/*",
        "arn:aws:s3:::outputs-private/*",
    }
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions
    assert not any(a.startswith("admin:") or a == "s3:*" for a in actions)


def test_minio_init_script_is_idempotent_and_fails_loudly(tmp_path: Path) -> None:
    again, _ = run_minio_init(
        tmp_path,
        MC_ATTACH_ERROR="The specified policy change is already in effect.",
    )
    assert again.returncode == 0, again.stderr
    broken, _ = run_minio_init(tmp_path, MC_ATTACH_ERROR="Access Denied.")
    assert broken.returncode != 0 and "Access Denied" in broken.stderr


# --- deploy/secrets.sh, run against a stand-in faas-cli --------------------------------------

FAKE_FAAS_CLI = """\
#!/usr/bin/env bash
# Stand-in for faas-cli's secret commands: records calls and the values it was given.
printf '%s\\n' "$*" >> "$FAAS_LOG"
if [ "$1 $2" = "secret list" ]; then
  printf 'NAME\\n'
  [ -n "${FAAS_EXISTING:-}" ] && printf '%s\\n' $FAAS_EXISTING
  exit 0
fi
if [ "$1" = "secret" ]; then
  while [ $# -gt 0 ]; do
    if [ "$1" = "--from-file" ]; then cp "$2" "$FAAS_VALUES/"; fi
    shift
  done
fi
exit 0
"""

SECRET_VALUES = {
    "VTP_S3_ACCESS_KEY": "vtp-functions",
    "VTP_S3_SECRET_KEY": "s3-secret-value",
    "VTP_POSTGRES_DSN": "postgresql://vtp:pw@postgres:5432/vtp",
    "VTP_WEBHOOK_TOKEN": "webhook-token-value",
    "VTP_CALLBACK_SECRET": "callback-secret-value",
    "VTP_READ_TOKEN": "read-token-value",
    # Several lines: the secret keeps them (a credential a line).
    "VTP_CREDENTIALS": "operator view,submit,operate " + "o" * 32 + "\nviewer view " + "v" * 32,
    "VTP_LINK_SECRET": "link-secret-value",
}


def run_secrets_sh(
    tmp_path: Path, values: dict[str, str], existing: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    write_executable(bindir / "faas-cli", FAKE_FAAS_CLI)
    stored = tmp_path / "values"
    stored.mkdir(exist_ok=True)
    log = tmp_path / "faas.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VTP_")}
    env.update(values)
    env.update(
        PATH=f"{bindir}:{env['PATH']}",
        FAAS_LOG=str(log),
        FAAS_VALUES=str(stored),
        FAAS_EXISTING=existing,
    )
    result = subprocess.run(
        ["bash", str(SECRETS_SH)], env=env, capture_output=True, text=True, timeout=30
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls, stored


def test_secrets_sh_refuses_empty_values(tmp_path: Path) -> None:
    values = dict(SECRET_VALUES, VTP_CALLBACK_SECRET="  ")
    del values["VTP_POSTGRES_DSN"]
    result, calls, _ = run_secrets_sh(tmp_path, values)
    assert result.returncode != 0
    assert "VTP_CALLBACK_SECRET" in result.stderr and "VTP_POSTGRES_DSN" in result.stderr
    assert calls == [], "nothing may be created unless every value is set"


def test_secrets_sh_creates_new_and_updates_existing(tmp_path: Path) -> None:
    result, calls, stored = run_secrets_sh(tmp_path, SECRET_VALUES, existing="vtp-s3-access-key")
    assert result.returncode == 0, result.stderr
    table = secrets_sh_table()
    for secret, var in table.items():
        verb = "update" if secret == "vtp-s3-access-key" else "create"
        assert any(c.startswith(f"secret {verb} {secret} --from-file ") for c in calls), calls
        assert (stored / secret).read_text() == SECRET_VALUES[var]
    assert not any("--from-literal" in c for c in calls), "values must not be on argv"
    assert set(table) >= {s for spec in functions().values() for s in spec.secrets}


def test_secrets_sh_makes_an_unset_optional_secret_blank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """faas-cli refuses an empty secret, and a function whose declared secret is missing is
    not deployed: the unset read token becomes one space (read as "not set"), untrimmed."""
    values = {
        k: v for k, v in SECRET_VALUES.items() if k not in ("VTP_READ_TOKEN", "VTP_LINK_SECRET")
    }
    result, calls, stored = run_secrets_sh(tmp_path, values)
    assert result.returncode == 0, result.stderr
    assert "VTP_READ_TOKEN is not set" in result.stderr
    made = [c for c in calls if c.startswith("secret create vtp-read-token ")]
    assert len(made) == 1 and "--trim=false" in made[0], calls
    assert (stored / "vtp-read-token").read_text() == " "
    assert not any(
        "--trim=false" in c
        for c in calls
        if "vtp-read-token" not in c and "vtp-link-secret" not in c
    )
    assert "VTP_LINK_SECRET is not set" in result.stderr
    # ... which a function reads as "no token": reads are open.
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "vtp-read-token").write_text(" ")
    monkeypatch.delenv("VTP_READ_TOKEN", raising=False)
    monkeypatch.setenv("VTP_SECRETS_DIR", str(mounted))
    assert Settings().read_token is None
    (mounted / "vtp-read-token").write_text("s3cret")
    assert Settings().read_token is not None


def test_deploy_scripts_are_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SECRETS_SH)], check=True, timeout=10)
    subprocess.run(["bash", "-n", str(FAASD_INSTALL)], check=True, timeout=10)


# --- deploy/faasd/install.sh, run against a stand-in faasd directory -------------------------

# The relevant part of faasd 0.19.x's own docker-compose.yaml (its queue-worker as shipped).
FAASD_COMPOSE = textwrap.dedent(
    """\
    version: "3.7"
    services:
      nats:
        image: docker.io/library/nats-streaming:0.25.6
      gateway:
        image: ghcr.io/openfaas/gateway:0.27.13
        environment:
          - basic_auth=true
          - read_timeout=60s
          - write_timeout=60s
          - upstream_timeout=65s
          - faas_nats_address=nats
      queue-worker:
        image: ghcr.io/openfaas/queue-worker:0.14.2
        environment:
          - faas_nats_address=nats
          - faas_nats_port=4222
          - gateway_invoke=true
          - faas_gateway_address=gateway
          - ack_wait=5m5s
          - max_inflight=1
          - write_debug=false
          - basic_auth=true
          - secret_mount_path=/run/secrets
    """
)

INSTALL_VALUES = {
    "MINIO_ROOT_USER": "minio-root",
    "MINIO_ROOT_PASSWORD": "root-password-123",
    "POSTGRES_PASSWORD": "pg-password",
    "VTP_WEBHOOK_TOKEN": "webhook-token",
    "VTP_S3_ACCESS_KEY": "vtp-functions",
    "VTP_S3_SECRET_KEY": "functions-secret",
}


def run_install(tmp_path: Path, values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VTP_", "MINIO_"))}
    env.update(values)
    env.update(
        FAASD_DIR=str(tmp_path / "faasd"),
        SYSTEMD_DIR=str(tmp_path / "systemd"),
        VTP_FAASD_RESTART="0",
    )
    return subprocess.run(
        ["bash", str(FAASD_INSTALL)], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def faasd_dir(tmp_path: Path) -> Path:
    # faasd's install.sh renders with envsubst; scripts/setup.sh installs it (gettext-base),
    # so a machine without it was not set up: a failure, never a skipped test.
    assert shutil.which("envsubst"), "envsubst is missing: run scripts/setup.sh (gettext-base)"
    (tmp_path / "faasd").mkdir()
    (tmp_path / "faasd" / "docker-compose.yaml").write_text(FAASD_COMPOSE)
    return tmp_path


def test_install_sh_renders_only_the_credentials_it_is_given() -> None:
    text = FAASD_INSTALL.read_text()
    m = re.search(r"rendered_vars=\(([^)]*)\)", text)
    assert m
    assert set(m.group(1).split()) == set(COMPOSE_VAR.findall(COMPOSE_FILE.read_text())), (
        "every ${VAR} in docker-compose.yml must be rendered, and nothing else"
    )


def test_install_sh_adds_services_and_sets_faasd_timeouts(faasd_dir: Path) -> None:
    result = run_install(faasd_dir, INSTALL_VALUES)
    assert result.returncode == 0, result.stderr
    compose_path = faasd_dir / "faasd" / "docker-compose.yaml"
    text = compose_path.read_text()
    data = yaml.safe_load(text)
    services = data["services"]
    assert set(compose_services()) | {"nats", "gateway", "queue-worker"} == set(services)
    assert services["nats"]["image"].endswith("nats-streaming:0.25.6"), "faasd's own untouched"
    for name, wanted in faasd_overrides().items():
        env = env_map(services[name]["environment"])
        assert {k: env[k] for k in wanted} == wanted, name
    assert env_map(services["gateway"]["environment"])["faas_nats_address"] == "nats"
    minio = env_map(services["minio"]["environment"])
    assert minio["MINIO_ROOT_PASSWORD"] == INSTALL_VALUES["MINIO_ROOT_PASSWORD"]
    assert minio["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_VTP"] == INSTALL_VALUES["VTP_WEBHOOK_TOKEN"]
    assert not COMPOSE_VAR.findall(text), "a ${VAR} was left unrendered"
    # The script inside minio-init still has its own variables, escaped for compose.
    assert "$$INIT_ROOT_USER" in services["minio-init"]["command"][2]
    assert stat.S_IMODE(compose_path.stat().st_mode) == 0o600, "it holds credentials now"
    dropin = faasd_dir / "systemd" / "faasd-provider.service.d" / "vtp-timeouts.conf"
    assert dropin.read_text() == FAASD_PROVIDER_DROPIN.read_text()

    # Re-running with a new value replaces the block instead of adding a second one.
    again = run_install(faasd_dir, dict(INSTALL_VALUES, POSTGRES_PASSWORD="rotated-password"))
    assert again.returncode == 0, again.stderr
    text = compose_path.read_text()
    assert text.count("\n  minio:\n") == 1 and text.count(">>> vtp services") == 1
    postgres = env_map(yaml.safe_load(text)["services"]["postgres"]["environment"])
    assert postgres["POSTGRES_PASSWORD"] == "rotated-password"


@pytest.mark.parametrize(
    "change",
    [
        {"VTP_WEBHOOK_TOKEN": ""},
        {"MINIO_ROOT_PASSWORD": 'has"quote'},
        {"POSTGRES_PASSWORD": "has$dollar"},
        {"VTP_S3_ACCESS_KEY": "minio-root"},
    ],
    ids=["empty", "quote", "dollar", "functions-as-root"],
)
def test_install_sh_refuses_bad_values_and_changes_nothing(
    faasd_dir: Path, change: dict[str, str]
) -> None:
    result = run_install(faasd_dir, dict(INSTALL_VALUES, **change))
    assert result.returncode != 0
    assert (faasd_dir / "faasd" / "docker-compose.yaml").read_text() == FAASD_COMPOSE
    assert not (faasd_dir / "systemd").exists()


# --- docs ----------------------------------------------------------------------------------


def test_deploy_doc_walks_through_the_files_it_relies_on() -> None:
    text = DEPLOY_DOC.read_text()
    for needle in (
        "deploy/faasd/install.sh",
        "deploy/secrets.sh",
        "deploy/kubernetes/values-openfaas.yaml",
        "faas-cli up -f stack.yml",
        "faas-cli invoke split",
        "mc cp",
        "arn:minio:sqs::VTP:webhook",
    ):
        assert needle in text, f"docs/deploy.md does not mention {needle}"


# The packages the shared core imports at run time: every function image must install them,
# since the template installs only the handler folder's requirements.txt.
CORE_REQUIREMENTS = {
    "minio",
    "redis",
    "psycopg2-binary",
    "requests",
    "pydantic",
    "pydantic-settings",
}


@pytest.mark.parametrize("handler", sorted({"split", "status", "sweeper", "transcode", "ws-relay"}))
def test_function_requirements_cover_the_shared_core(handler: str) -> None:
    lines = (REPO / "functions" / handler / "requirements.txt").read_text().splitlines()
    names = {
        re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower()
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert names >= CORE_REQUIREMENTS, f"missing: {sorted(CORE_REQUIREMENTS - names)}"


# --- what each function's image carries -----------------------------------------------------

# Imports only the relay or the terminal client need: a function whose requirements.txt does
# not install them must not ship code that imports them.
_CLIENT_AND_RELAY_DEPS = {"starlette", "uvicorn", "websockets", "rich"}


def _top_level_imports(root: Path) -> set[str]:
    found = set()
    for path in root.rglob("*.py"):
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Import):
                found |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                found.add(n.module.split(".")[0])
    return found


@pytest.mark.parametrize("name", function_names())
def test_a_function_ships_only_what_it_imports(name: str, tmp_path: Path) -> None:
    """The build context faas-cli would assemble (template, handler folder, then stack.yml's
    configuration.copy, which goes to every function): the core in each, the relay only in
    ws-relay, the terminal client in none; nothing shipped imports what its requirements
    leave out."""
    from localfaas.build import assemble_context

    spec = functions()[name]
    ctx = assemble_context(
        REPO / "template" / spec.lang,
        REPO / spec.handler,
        [Path(p) for p in stack().configuration.copy_paths],
        tmp_path / "ctx",
        scope=REPO,
    )
    shipped = ctx / "function"
    packages = {p.name for p in shipped.iterdir() if (p / "__init__.py").is_file()}
    assert packages == ({"vtp", "vtp_relay"} if name == "ws-relay" else {"vtp"})
    assert not (shipped / "vtp" / "cli").exists() and not (shipped / "vtp" / "relay").exists()
    requirements = (REPO / spec.handler / "requirements.txt").read_text()
    installed = {re.split(r"[<>=\[ ]", line)[0] for line in requirements.splitlines()}
    needs = _top_level_imports(shipped) & _CLIENT_AND_RELAY_DEPS
    assert needs <= installed, f"{name} ships code importing {sorted(needs - installed)}"
    if name != "ws-relay":
        assert not needs, needs
