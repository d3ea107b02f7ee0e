"""Free TCP ports for the stacks tests start, so no other process on the machine can make a
test fail by holding a fixed port."""

from __future__ import annotations

import random
import socket

# localfaas takes its services at base+0..4 and its functions from base+20 on.
SPAN = 40
_LOW, _HIGH = 20000, 60000


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_base(span: int = SPAN) -> int:
    """The first port of `span` consecutive free ones, at a random place in a quiet range (two
    runs at once are unlikely to pick the same block, and each checks before it takes it)."""
    blocks = list(range(_LOW, _HIGH - span, span))
    random.shuffle(blocks)
    for base in blocks:
        if all(_free(p) for p in range(base, base + span)):
            return base
    raise RuntimeError(f"no {span} consecutive free ports between {_LOW} and {_HIGH}")
