"""One clock for the service, so tests and code agree on what 'now' is."""

from __future__ import annotations

import time


def now() -> int:
    return int(time.time())
