"""The running functions, as the gateway, queue-worker and cron runner see them.

`up` writes `<run dir>/functions.json`; the other components re-read it when it changes, so a
function added to stack.yml shows up without restarting the gateway.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import BaseModel, Field, TypeAdapter

from localfaas.config import LocalConfig


class FunctionEntry(BaseModel):
    name: str
    namespace: str = "openfaas-fn"
    port: int
    image: str = ""
    env_process: str = "python index.py"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # of-watchdog's timeouts for this function, in seconds (from its stack.yml environment).
    exec_timeout: float = 30.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    # Whether the function's template puts of-watchdog in front of it (python3-http does, our
    # python3-asgi does not): of-watchdog reads a whole answer before passing it on.
    watchdog: bool = True

    # The ports of its further replicas (`port` is the first's).
    replica_ports: list[int] = Field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def urls(self) -> list[str]:
        """Every replica's address, the first first."""
        return [self.url, *(f"http://127.0.0.1:{p}" for p in self.replica_ports)]

    def pick(self) -> str:
        """A replica for one call. At random, as kube-proxy (iptables) picks a Service's
        endpoint: two calls at once may well land on the same replica while another idles,
        which is what a cluster does too."""
        return random.choice(self.urls)  # noqa: S311 - spreading load, not a secret


_ADAPTER = TypeAdapter(list[FunctionEntry])


def scale_marker(cfg: LocalConfig, name: str) -> Path:
    return cfg.state_dir / f"scaled-to-zero-{name}"


def scaled_to_zero(cfg: LocalConfig, name: str) -> bool:
    """Whether `localfaas scale NAME 0` took the function down (the supervisor leaves it)."""
    return scale_marker(cfg, name).exists()


def registry_path(cfg: LocalConfig) -> Path:
    return cfg.run_dir / "functions.json"


def save_registry(cfg: LocalConfig, entries: list[FunctionEntry]) -> None:
    path = registry_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(_ADAPTER.dump_json(entries, indent=2))
    tmp.replace(path)  # atomic: readers never see half a file


def load_registry(cfg: LocalConfig) -> dict[str, FunctionEntry]:
    path = registry_path(cfg)
    if not path.exists():
        return {}
    return {e.name: e for e in _ADAPTER.validate_json(path.read_bytes())}


class RegistryWatcher:
    """Re-reads the registry only when its file changed: cheap enough to call per request."""

    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg
        self._mtime: float | None = None
        self._entries: dict[str, FunctionEntry] = {}

    def get(self) -> dict[str, FunctionEntry]:
        path = registry_path(self.cfg)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            self._entries = {e.name: e for e in _ADAPTER.validate_json(path.read_bytes())}
            self._mtime = mtime
        return self._entries


def dumps(entries: dict[str, FunctionEntry]) -> str:
    return json.dumps({k: v.model_dump() for k, v in entries.items()})
