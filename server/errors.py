"""THE one place where an exception becomes a gRPC status (AIP-193): a
canonical code, a human message, and google.rpc.ErrorInfo with a stable
reason in domain "identify" (plus RetryInfo when a retry makes sense).

- a domain error (providers/values.py) carries its own code and reason;
- a provider that cannot be set up from its stored settings is the
  operator's to fix: FAILED_PRECONDITION PROVIDER_MISCONFIGURED, the same
  code and reason a provider uses when its upstream refuses our settings;
- the store unreachable is UNAVAILABLE STORE_UNAVAILABLE with RetryInfo;
- anything else is INTERNAL with only a request id; its stack goes to the log.

Envoy's own replies (server/edge.py) use the same shape and codes.
"""

from __future__ import annotations

import collections
import logging
import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from providers.values import ProviderError
from server.projects import ProviderSetupError

DOMAIN = "identify"
log = logging.getLogger(__name__)

# What the store raises when it cannot be reached or is overloaded.
STORE_ERRORS = (OperationalError, DBAPIError, PoolTimeout, OSError)


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
    if isinstance(exc, STORE_ERRORS):
        # The engines hide SQL parameters, so the text carries no user data.
        log.warning("store unavailable request_id=%s", request_id, exc_info=True)
        return _status(
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
            "storage is unavailable, retry shortly",
            retry_after=1.0,
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
