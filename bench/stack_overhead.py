"""Local runtime figures: time from `up` to all healthy (cold and warm), and the overhead of
an async call (202 from the gateway → function handler entered), median over 100 calls.

Runs a stack of its own (own run dir and ports) with the tests' fixture functions, so it
neither needs nor disturbs `make up`'s stack.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localfaas import runtime, services  # noqa: E402
from localfaas.config import LocalConfig  # noqa: E402
from tests.ports import free_port, free_port_base  # noqa: E402
from tests.receiver import Receiver  # noqa: E402

CALLS = 100


RUNS = 3


def _figure(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    run_dir = REPO / ".run" / "bench-stack"
    cfg = LocalConfig(
        run_dir=run_dir,
        port_base=free_port_base(),
        gateway_port=free_port(),
        extra_stack_files=[REPO / "tests" / "fixtures" / "stack.yml"],
    )
    runtime.down(cfg)
    shutil.rmtree(run_dir, ignore_errors=True)
    store = runtime.secret_store(cfg)
    store.mkdir(parents=True)
    (store / "fixture-secret").write_text("bench")
    try:
        colds, warms = [], []
        for i in range(RUNS):
            if i:  # a cold start again: nothing running, no data
                runtime.down(cfg)
                services.remove_data(cfg)
                shutil.rmtree(run_dir, ignore_errors=True)
                store.mkdir(parents=True)
                (store / "fixture-secret").write_text("bench")
            colds.append(runtime.up(cfg))
            warms.append(runtime.up(cfg))
        n_fn = len(runtime.load_registry(cfg))
        print(f"median of {RUNS} runs (min, max)")
        print(f"up, cold (initdb, {n_fn} functions): {_figure(colds)} to all healthy")
        print(f"up, warm (everything running):      {_figure(warms)}")

        overheads = []
        roundtrips = []
        sent_to_entered: list[float] = []
        with Receiver() as rx:
            for _ in range(CALLS):
                t0 = time.time()
                r = requests.post(
                    f"{cfg.gateway_url}/async-function/echo",
                    data=b"{}",
                    headers={"X-Callback-Url": rx.url},
                    timeout=10,
                )
                t202 = time.time()
                assert r.status_code == 202, r.status_code
                cb = rx.get(timeout=30)
                entered = json.loads(cb.body)["entered_at"]
                overheads.append(entered - t202)
                sent_to_entered.append(entered - t0)
                roundtrips.append(time.time() - t0)
        overheads.sort()
        ms = [x * 1000 for x in overheads]
        print(
            f"async overhead (202 → handler entered), {CALLS} calls: "
            f"median {statistics.median(ms):.1f} ms, p90 {ms[int(0.9 * len(ms))]:.1f} ms, "
            f"max {ms[-1]:.1f} ms"
        )
        print(
            "async overhead (POST sent → handler entered): median "
            f"{statistics.median(sent_to_entered) * 1000:.1f} ms "
            "(the worker often enters the handler before the client has read the 202)"
        )
        print(
            f"async round trip (POST → callback received): median "
            f"{statistics.median(roundtrips) * 1000:.1f} ms"
        )
    finally:
        runtime.down(cfg)


if __name__ == "__main__":
    main()
