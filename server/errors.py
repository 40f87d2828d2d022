"""THE one place where an exception becomes a gRPC status (AIP-193): a
canonical code, a human message, and google.rpc.ErrorInfo with a stable
reason in domain "identify" (plus RetryInfo when a retry makes sense).

- a domain error (providers/values.py) carries its own code and reason;
- a provider that cannot be set up from its stored settings is the
  operator's to fix: FAILED_PRECONDITION PROVIDER_MISCONFIGURED, the same
  code and reason a provider uses when its upstream refuses our settings;
- the store unreachable or overloaded is UNAVAILABLE STORE_UNAVAILABLE with
  RetryInfo; a value the store refuses (a data exception: a NUL, a string
  too long for its column) is the request's, INVALID_ARGUMENT INVALID_VALUE;
  any other store error (a constraint violated, bad SQL) is a bug;
- anything else is INTERNAL with only a request id; its stack goes to the log.

Envoy's own replies (server/edge.py) use the same shape and codes.
"""

from __future__ import annotations

import collections
import logging
import math

import asyncpg
import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from providers.values import ProviderError
from server import metrics
from server.projects import ProviderSetupError
from server.requestctx import call_var

DOMAIN = "identify"
log = logging.getLogger(__name__)

# SQLSTATE classes (the SQL standard's; PostgreSQL reports them, SQLite does
# not) of failures that are the store's and pass: connection (08), rollbacks
# a retry gets past such as deadlocks (40), resources (53), operator
# intervention such as a restart (57), system (58).
_OUTAGE_STATES = frozenset({"08", "40", "53", "57", "58"})
# Data exceptions: the statement was fine, a value in it was not.
_DATA_STATE = "22"
# SQLite's primary result code for an error in the SQL itself (no such
# table or column); its other OperationalErrors (busy, locked, cannot open,
# I/O, full, read-only) are the store's.
_SQLITE_SQL_ERROR = 1


def store_failure(exc: BaseException) -> str | None:
    """What a store error means: "unavailable", "invalid_value" or "bug";
    None when `exc` is not the store's."""
    # Pool exhausted, connection refused, asyncpg's command timeout.
    if isinstance(exc, PoolTimeout | OSError):
        return "unavailable"
    # asyncpg's own errors, as a connect during a PostgreSQL restart raises
    # them ("the database system is starting up") past SQLAlchemy's wrapping.
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError):
        # InternalClientError ("cannot switch to state ...; another
        # operation is in progress"): a connection the restart broke half-way.
        return "unavailable"
    if isinstance(exc, asyncpg.PostgresError):
        raw_state = getattr(exc, "sqlstate", None)
        raw_class = raw_state[:2] if isinstance(raw_state, str) else None
        if raw_class == _DATA_STATE:
            return "invalid_value"
        return "unavailable" if raw_class in _OUTAGE_STATES else "bug"
    if not isinstance(exc, DBAPIError):
        return None
    if exc.connection_invalidated or isinstance(exc.orig, asyncpg.exceptions.InternalClientError):
        return "unavailable"
    state = getattr(exc.orig, "sqlstate", None)
    state_class = state[:2] if isinstance(state, str) else None
    # asyncpg's data exceptions reach SQLAlchemy as its generic DBAPIError.
    if isinstance(exc, DataError) or state_class == _DATA_STATE:
        return "invalid_value"
    if state_class in _OUTAGE_STATES:
        return "unavailable"
    sqlite_code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int) and sqlite_code & 0xFF == _SQLITE_SQL_ERROR:
        return "bug"
    # SQLite's locked or unreadable database; a connection lost mid-call.
    if state_class is None and isinstance(exc, OperationalError | InterfaceError):
        return "unavailable"
    return "bug"


def to_status(exc: BaseException, request_id: str) -> grpc.Status:
    if isinstance(exc, ProviderError):
        return _status(
            grpc.StatusCode[exc.code],
            exc.reason,
            exc.message,
            metadata={k: str(v) for k, v in exc.metadata.items()},
            retry_after=exc.retry_after,
            request_id=request_id,
        )
    if isinstance(exc, ProviderSetupError):
        # The cause names settings, never their values: safe to log.
        log.error(
            "provider %s of project %s is misconfigured: %s", exc.provider, exc.project_id, exc
        )
        return _status(
            grpc.StatusCode.FAILED_PRECONDITION,
            "PROVIDER_MISCONFIGURED",
            "this provider is misconfigured on the server; contact the operator",
            metadata={"provider": exc.provider},
            request_id=request_id,
        )
    failure = store_failure(exc)
    if failure is not None:
        metrics.store_error(failure)
    if failure == "unavailable":
        # The engines hide SQL parameters, so the text carries no user data.
        log.warning("store unavailable request_id=%s", request_id, exc_info=exc)
        return _status(
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
            "storage is unavailable, retry shortly",
            retry_after=1.0,
            request_id=request_id,
        )
    if failure == "invalid_value":
        # A value got past the checks of providers/kit/inputs.py: worth a
        # line, without the message (PostgreSQL quotes the value in some).
        orig = getattr(exc, "orig", None)
        log.warning(
            "store refused a value request_id=%s sqlstate=%s",
            request_id,
            getattr(orig, "sqlstate", None) or type(orig).__name__,
        )
        return _status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_VALUE",
            "a value in the request cannot be stored",
            request_id=request_id,
        )
    # Logged with its stack here; the client gets only a request id, never
    # the exception's text: it can carry input, tokens or upstream text.
    log.error("unhandled error request_id=%s", request_id, exc_info=exc)
    return _status(
        grpc.StatusCode.INTERNAL,
        "INTERNAL",
        "internal error; quote the requestId when reporting it",
        request_id=request_id,
    )


def _status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    metadata: dict[str, str] | None = None,
    retry_after: float | None = None,
    request_id: str = "",
) -> grpc.Status:
    call = call_var.get()
    if call is not None:
        call.reason = reason
    metadata = dict(metadata or {})
    if request_id:
        metadata["requestId"] = request_id
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    details.append(info)
    if retry_after is not None:
        retry = any_pb2.Any()
        seconds = max(0.0, retry_after)
        retry.Pack(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(
                    seconds=int(seconds), nanos=int((seconds % 1) * 1e9)
                )
            )
        )
        details.append(retry)
    proto = status_pb2.Status(code=code.value[0], message=message, details=details)
    status: grpc.Status = rpc_status.to_status(proto)
    if retry_after is None:
        return status
    # RetryInfo is for gRPC clients; REST clients (and their HTTP libraries)
    # read Retry-After, which the edge passes on from the trailers.
    return _RetryableStatus(
        status.code,
        status.details,
        (*status.trailing_metadata, ("retry-after", str(max(1, math.ceil(retry_after))))),
    )


class _RetryableStatus(
    collections.namedtuple("_RetryableStatus", ("code", "details", "trailing_metadata")),
    grpc.Status,
):
    pass
