"""What one call is about, for the logging, metrics and error paths, without
threading it through every signature."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(slots=True)
class Call:
    """Filled in as the call goes: the interceptor makes it with the request
    id and the RPC; the servicer names the project and provider only once
    they are validated (so log fields and metric labels hold known values,
    never a client's arbitrary text); server/errors.py records the reason of
    a refusal. A mutable object in the context var, so the call's detached
    work task (servicer._detached), which runs in a copy of the context,
    writes to the same one the interceptor reads."""

    request_id: str
    method: str = ""
    project: str = ""
    provider: str = ""
    reason: str = ""
    # The call's trace (32 hex digits) when traces are on and it is sampled.
    trace_id: str = ""
    # For the audit trail only (server/events/calls.py), never a log field,
    # span attribute or metric label: the client's IP as the edge decided it,
    # and the device the request names (a canonical UUID, else empty).
    client_ip: str = ""
    device_id: str = ""
    # The caller's headers, read in the same pass over the metadata as the
    # request id (server/interceptors.py), for the servicer: the raw
    # Authorization header and the edge's client IP, None when absent.
    # Never a log field (a token travels there), nor in repr().
    authorization: str | None = field(default=None, repr=False)
    forwarded_ip: str | None = field(default=None, repr=False)


call_var: ContextVar[Call | None] = ContextVar("call", default=None)


def request_id() -> str:
    call = call_var.get()
    return call.request_id if call is not None else ""
