"""Traces (OpenTelemetry), off unless OTEL_* turns them on (see
server/tracing/settings.py for exactly which variables). This module and
settings.py import no opentelemetry: with traces off, no server process
loads it, and the request path pays nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from server.store.db import Database
from server.tracing.settings import from_env

if TYPE_CHECKING:
    from server.tracing.sdk import Tracing


def start(*, http: httpx.AsyncClient, database: Database) -> Tracing | None:
    """Traces for this server process, or None when they are off."""
    otlp = from_env()
    if otlp is None:
        return None
    from server.tracing.sdk import Tracing

    return Tracing(otlp, http=http, database=database)
