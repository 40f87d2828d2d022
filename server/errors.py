"""The one place where domain errors become gRPC statuses (AIP-193): a
canonical code, a human message, and google.rpc.ErrorInfo with a stable
reason in domain "identify" (plus RetryInfo when a retry makes sense)."""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from providers.base import ProviderError

DOMAIN = "identify"
log = logging.getLogger(__name__)


def status_for(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    metadata: dict[str, str] | None = None,
    retry_after: float | None = None,
) -> grpc.Status:
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))
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
    return status


def from_provider_error(err: ProviderError, request_id: str) -> grpc.Status:
    code = grpc.StatusCode[err.code]
    metadata = {k: str(v) for k, v in err.metadata.items()}
    if request_id:
        metadata["requestId"] = request_id
    return status_for(code, err.reason, err.message, metadata=metadata, retry_after=err.retry_after)


def internal(request_id: str) -> grpc.Status:
    # Never the exception's text: it can carry input, tokens or upstream text.
    return status_for(
        grpc.StatusCode.INTERNAL,
        "INTERNAL",
        "internal error; quote the requestId when reporting it",
        metadata={"requestId": request_id} if request_id else None,
    )


assert code_pb2.UNAUTHENTICATED == grpc.StatusCode.UNAUTHENTICATED.value[0]
