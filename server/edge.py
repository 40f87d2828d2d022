"""Renders the Envoy edge config from envoy/envoy.yaml.

The template stays plain YAML so operators can read it; only ports, paths,
backends, the probe header and the local-reply table are filled in here."""

from __future__ import annotations

import json
import pathlib
import string
from collections.abc import Sequence
from dataclasses import dataclass

from google.rpc import code_pb2

from server import errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "envoy" / "envoy.yaml"
DESCRIPTOR = ROOT / "generated" / "identify.pb"
MAX_BODY_BYTES = 64 * 1024
# Marks the supervisor's own /healthz probes, which the access log leaves out.
PROBE_HEADER = "x-identify-probe"

# Envoy's own refusals, rendered like the service's errors (AIP-193 shape):
# HTTP status -> (gRPC code, ErrorInfo reason, message).
LOCAL_REPLIES: dict[int, tuple[int, str, str]] = {
    # Fixed text on purpose: the transcoder's own message quotes the body,
    # which may hold a password.
    400: (
        code_pb2.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        "the request is malformed: invalid JSON, a value of the wrong type or an unknown query"
        " parameter",
    ),
    404: (code_pb2.NOT_FOUND, "UNKNOWN_PATH", "no such path or method"),
    405: (code_pb2.NOT_FOUND, "UNKNOWN_PATH", "no such path or method"),
    413: (
        code_pb2.RESOURCE_EXHAUSTED,
        "BODY_TOO_LARGE",
        f"the request body is over {MAX_BODY_BYTES} bytes",
    ),
    429: (code_pb2.RESOURCE_EXHAUSTED, "RATE_LIMITED", "too many requests"),
    503: (
        code_pb2.UNAVAILABLE,
        "BACKEND_UNAVAILABLE",
        "the service is unavailable, try again shortly",
    ),
    504: (code_pb2.DEADLINE_EXCEEDED, "BACKEND_TIMEOUT", "the service did not answer in time"),
}


@dataclass(frozen=True)
class Backend:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Backend:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"backend must be HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))


def _status_filter(status: int) -> dict[str, object]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": status, "runtime_key": f"identify.lr{status}"},
            }
        }
    }


def _mappers() -> list[dict[str, object]]:
    # The only local 200 is /healthz, answered by the health_check filter.
    mappers: list[dict[str, object]] = [
        {
            "filter": _status_filter(200),
            "body_format_override": {
                "json_format": {"status": "SERVING"},
                "content_type": "application/json",
            },
        }
    ]
    for status, (code, reason, message) in LOCAL_REPLIES.items():
        mappers.append(
            {
                "filter": _status_filter(status),
                "body_format_override": {
                    "json_format": {
                        "code": code,
                        "message": message,
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                "reason": reason,
                                "domain": errors.DOMAIN,
                            }
                        ],
                    },
                    "content_type": "application/json",
                },
            }
        )
    return mappers


def _cors(origins: Sequence[str]) -> dict[str, object]:
    if not origins:
        return {}
    return {
        "envoy.filters.http.cors": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [{"exact": origin} for origin in origins],
            "allow_methods": "GET, POST, PUT, OPTIONS",
            "allow_headers": "authorization, content-type, x-request-id",
            "expose_headers": "x-request-id, grpc-status, grpc-message",
            "max_age": "600",
            # Bearer tokens travel in a header, never in cookies.
            "allow_credentials": False,
        }
    }


def render(
    *,
    http_port: int,
    backends: Sequence[Backend],
    cors_origins: Sequence[str] = (),
    admin_port: int = 0,
    listen_address: str = "127.0.0.1",
    descriptor: pathlib.Path = DESCRIPTOR,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> str:
    if not backends:
        raise ValueError("at least one backend is needed")
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": b.host, "port_value": b.port}}}}
        for b in backends
    ]
    # Any healthy backend keeps the edge healthy; none makes /healthz 503.
    min_healthy = max(0.1, 100.0 / len(backends) - 0.01)
    return string.Template(TEMPLATE.read_text()).substitute(
        admin_port=admin_port,
        listen_address=listen_address,
        http_port=http_port,
        descriptor=str(descriptor.resolve()),
        max_body_bytes=max_body_bytes,
        endpoints=json.dumps(endpoints),
        local_reply_mappers=json.dumps(_mappers()),
        # Any other reply of Envoy's own (none is expected) says UNKNOWN.
        unmapped_code=code_pb2.UNKNOWN,
        cors_policy=json.dumps(_cors(cors_origins)),
        min_healthy_percent=f"{min_healthy:.2f}",
        probe_header=PROBE_HEADER,
    )
