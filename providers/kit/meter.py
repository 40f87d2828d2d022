"""What the kit and the providers report for the server's metrics: upstream
calls that do not go through the shared HTTP client (boto3), JWKS fetches,
the verified-token cache. The kit never imports the server, so the server
installs its meter here when its metrics are on; until then nothing is
counted and each report costs one call of an empty method.

Reports carry outcomes only; which project and provider a call is for, the
server knows (from the call it is serving), so no label comes from here."""

from __future__ import annotations

from typing import Protocol


class Meter(Protocol):
    def upstream_call(self, outcome: str, seconds: float) -> None:
        """One request to an identity provider; `outcome` is upstream_outcome()'s."""

    def jwks_fetch(self, ok: bool) -> None: ...

    def token_cache(self, hit: bool) -> None:
        """A lookup in the verified-token cache (providers/kit/jwt.py)."""


class _Silent:
    def upstream_call(self, outcome: str, seconds: float) -> None:
        pass

    def jwks_fetch(self, ok: bool) -> None:
        pass

    def token_cache(self, hit: bool) -> None:
        pass


_meter: Meter = _Silent()


def install(meter: Meter | None) -> None:
    """The server's meter from now on (None: count nothing again)."""
    global _meter
    _meter = meter if meter is not None else _Silent()


def meter() -> Meter:
    return _meter


# Outcomes of an upstream request, few and fixed, for a metric label.
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
ERROR = "error"


def upstream_outcome(status: int) -> str:
    """An HTTP status as an outcome: its class (2xx, 4xx, ...)."""
    return f"{status // 100}xx" if 100 <= status < 600 else ERROR
