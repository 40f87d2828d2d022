"""What a process keeps for good, moved out of the garbage collector's reach.

A full collection walks every tracked object. With the imports and start-up
state alone that is ~140,000 objects and ~70 ms on this machine, paid by
every call in flight whenever one runs (every few seconds under load); a
boto3 client adds ~130,000 objects more. Frozen objects are never walked
again, and full collections fall to ~2 ms (bench, gc callbacks timed).
Freeze only what stays: the collector never frees frozen objects (those in
reference cycles stay until `let_go`)."""

from __future__ import annotations

import gc


def keep_for_good(*, collect: bool = False) -> None:
    """Freeze everything the collector tracks now. `collect` first drops
    the garbage (one full pass): at start-up, not while serving, where a
    pass would stall the calls in flight."""
    if collect:
        gc.collect()
    gc.freeze()


def let_go() -> None:
    """Something kept for good was dropped (a provider's client closed after
    a settings change): unfreeze, free it in one full pass, freeze the rest
    again. One full collection's pause, for rare events only."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
