"""stack.yml, read the way faas-cli reads it.

Only the parts the local runtime acts on are modelled strictly; unknown keys are kept so a
stack.yml written for real OpenFaaS (limits, requests, constraints...) loads unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

# faas-cli substitutes ${VAR} and ${VAR:-default} in stack.yml before parsing it.
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Provider(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = "openfaas"
    gateway: str = "http://127.0.0.1:8080"


class Configuration(BaseModel):
    model_config = ConfigDict(extra="allow")
    copy_paths: list[str] = Field(default_factory=list, alias="copy")
    templates: list[dict[str, Any]] = Field(default_factory=list)


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    lang: str
    handler: str
    image: str = ""
    environment: dict[str, str] = Field(default_factory=dict)
    environment_file: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    requests: dict[str, Any] = Field(default_factory=dict)
    build_args: dict[str, str] = Field(default_factory=dict)
    namespace: str | None = None

    @field_validator("environment", "labels", "annotations", "build_args", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # YAML turns `exec_timeout: 30` into an int; OpenFaaS treats every value as a string.
        if isinstance(value, dict):
            return {str(k): _yaml_scalar(v) for k, v in value.items()}
        return value


class Stack(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str
    provider: Provider = Field(default_factory=Provider)
    configuration: Configuration = Field(default_factory=Configuration)
    functions: dict[str, FunctionSpec]

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, value: Any) -> str:
        return str(value)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def substitute_env(text: str, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ

    def repl(m: re.Match[str]) -> str:
        return env.get(m.group(1)) or (m.group(2) or "")

    return _ENV_REF.sub(repl, text)


def load_stack(path: Path) -> Stack:
    data = yaml.safe_load(substitute_env(path.read_text()))
    return Stack.model_validate(data)


def read_env_file(path: Path) -> dict[str, str]:
    """An `environment_file` entry: a YAML file with a top-level `environment:` map."""
    data = yaml.safe_load(path.read_text()) or {}
    env = data.get("environment", {}) or {}
    return {str(k): _yaml_scalar(v) for k, v in env.items()}


def function_environment(stack_dir: Path, spec: FunctionSpec) -> dict[str, str]:
    """environment_file entries first, then `environment` on top, as faas-cli merges them."""
    env: dict[str, str] = {}
    for rel in spec.environment_file:
        env.update(read_env_file(stack_dir / rel))
    env.update(spec.environment)
    return env


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def parse_duration(value: str | None, default: float) -> float:
    """A Go duration ("1h30m", "90s") or a bare number of seconds, as of-watchdog accepts."""
    if value is None or value == "":
        return default
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def find_template(stack_dir: Path, lang: str, fallbacks: list[Path]) -> Path:
    """faas-cli looks in ./template/<lang>; fixtures may borrow the repo's templates."""
    for base in [stack_dir, *fallbacks]:
        candidate = base / "template" / lang
        if (candidate / "template.yml").exists():
            return candidate
    raise FileNotFoundError(f"template {lang!r} not found under {stack_dir}/template")


def template_fprocess(template_dir: Path) -> str:
    data = yaml.safe_load((template_dir / "template.yml").read_text()) or {}
    return str(data.get("fprocess", "python index.py"))


def template_uses_watchdog(template_dir: Path) -> bool:
    """Whether the template's image runs of-watchdog in front of the function process."""
    dockerfile = template_dir / "Dockerfile"
    try:
        text = dockerfile.read_text()
    except OSError:
        return True  # the OpenFaaS templates all do
    return any(
        line.strip().upper().startswith(("CMD", "ENTRYPOINT")) and "fwatchdog" in line
        for line in text.splitlines()
    )
