"""Free TCP ports for the stacks tests (and benchmarks) start, so no other process on the
machine can make them fail by holding a fixed port.

Ports come from below the kernel's ephemeral range (32768 and up on Linux), where outgoing
connections never take one by chance, and each one handed out is remembered so that one run
never gets the same port twice.
"""

from __future__ import annotations

import random
import socket

# localfaas takes its services at base+0..4 and its functions from base+20 on.
SPAN = 40
_LOW, _HIGH = 10000, 32000
_taken: set[int] = set()
# This run's share of the range (`use_slot`): the whole of it until a test run claims a slot.
_range = (_LOW, _HIGH)


def use_slot(slot: int, slots: int) -> None:
    """Take ports only from this run's share of the range, so that runs at once (the workers
    of one `make test`, two developers, a benchmark) never pick the same free block between
    one's check and its use."""
    global _range
    share = (_HIGH - _LOW) // slots
    _range = (_LOW + slot * share, _LOW + (slot + 1) * share)


def _free(port: int) -> bool:
    if port in _taken:
        return False
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(span: int = SPAN) -> int:
    """The first port of `span` consecutive free ones, at a random place (two runs at once are
    unlikely to pick the same block, and each checks before it takes it)."""
    low, high = _range
    blocks = list(range(low, high - span, span))
    random.shuffle(blocks)
    for base in blocks:
        if all(_free(p) for p in range(base, base + span)):
            _taken.update(range(base, base + span))
            return base
    raise RuntimeError(f"no {span} consecutive free ports between {low} and {high}")


def free_port() -> int:
    """One free port, from a block of its own."""
    return free_port_base(1)
