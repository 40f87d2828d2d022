"""Per-call values the logging and error paths need without threading them
through every signature."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
