"""How every `identify` process writes its log to stderr: `text` (the
default, for a person at a terminal) or `json` (one object per line, for a
log pipeline). A JSON line written during a call carries the call's request
id, RPC, once validated its project and provider, and a refusal's reason,
all read from the call's `Call` (server/requestctx.py), plus the access
line's status and duration: known, bounded values, never a request's
metadata or payload, which carry tokens and passwords."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from server.requestctx import call_var

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"
# What a log call may add to a JSON line (`extra=`): the access line's
# outcome. Named here, so an `extra` holding anything else is left out.
OUTCOME_FIELDS = ("status", "duration_ms")
# Envoy's own lines in the same shape (its `--log-format`; Envoy's `%j` is
# the message escaped for JSON). Its clock must run in UTC (TZ=UTC).
ENVOY_JSON_FORMAT = (
    '{"time":"%Y-%m-%dT%T.%eZ","level":"%l","logger":"envoy.%n","message":"%j","pid":%P}'
)
# These log full URLs (query strings carry tokens) and request details.
_QUIET = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "aiosqlite", "asyncio")


def _utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a string
    field, its newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        call = call_var.get()
        if call is not None:
            entry["request_id"] = call.request_id
            entry["rpc"] = call.method
            entry["project"] = call.project or None
            entry["provider"] = call.provider or None
            if call.reason:
                entry["reason"] = call.reason
            if call.trace_id:
                # Only when tracing sampled the call: a log line leads to its trace.
                entry["trace_id"] = call.trace_id
        for name in OUTCOME_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


def setup(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Alembic narrates its plugins, its dialect and each step at INFO, which
    # would come before `identify up`'s banner; `identify migrate` prints
    # what it did in one line of its own.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    grpc_core = logging.getLogger("grpc._cython.cygrpc")
    # At debug it says "Loaded running loop" for every call, health checks too.
    grpc_core.setLevel(max(logging.INFO, logging.getLogger().level))
    grpc_core.addFilter(_drop_undecodable_header_reports)
    if fmt == "json":
        _route_stray_output()


def _drop_undecodable_header_reports(record: logging.LogRecord) -> bool:
    # gRPC reports a header value that is not UTF-8 with the value itself and
    # a traceback, once per request: a client's Authorization header would
    # land in the log. The value still reaches us (as Latin-1), and the
    # bearer check refuses it.
    return not record.getMessage().startswith("Invalid encoding on")


def _route_stray_output() -> None:
    """Warnings and uncaught exceptions, which Python writes to stderr as
    bare text, become log records too: a JSON log stays all JSON."""
    logging.captureWarnings(True)
    crash = logging.getLogger("identify.crash")

    def uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        crash.critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        crash.critical(
            "uncaught %s in thread %s",
            args.exc_type.__name__,
            args.thread.name if args.thread else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
