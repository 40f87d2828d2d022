"""Renders the Envoy edge config from envoy/envoy.yaml.

The template stays plain YAML so operators can read it; only ports, paths,
backends, the probe header, the sign-in rate limit, the local-reply table
and (when OTEL_* turns traces on) the tracer are filled in here."""

from __future__ import annotations

import base64
import json
import math
import pathlib
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from identify.v1 import identify_pb2

from server import errors
from server.abuse.policy import rate_limits_off
from server.tracing import edge as tracing_edge
from server.tracing import settings as tracing_settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "envoy" / "envoy.yaml"
DESCRIPTOR = ROOT / "generated" / "identify.pb"
# The REST API's OpenAPI document, which `make generate` writes
# (scripts/openapi.py) and the edge serves itself.
OPENAPI_DOCUMENT = ROOT / "openapi" / "identify.v1.yaml"
OPENAPI_PATH = "/openapi.yaml"
OPENAPI_CONTENT_TYPE = "application/yaml"
# Answered by Envoy's health_check filter (envoy.yaml).
HEALTHZ_PATH = "/healthz"
MAX_BODY_BYTES = 64 * 1024
# Half the servers' metadata budget (server/app.py MAX_METADATA_BYTES): Envoy
# answers 431 first, and a 16 KiB token plus the usual headers still fits.
MAX_REQUEST_HEADERS_KB = 32
# The client IP the edge decided on, set by Envoy on every request; a
# client's own header of that name is replaced.
CLIENT_IP_HEADER = "x-identify-client-ip"
# Buckets the sign-in limiter keeps (one per client IP, least recently used
# evicted): Envoy's default of 20 would let a crowd of addresses evict each
# other's and start afresh. A bucket is a few hundred bytes.
MAX_CLIENT_BUCKETS = 65536
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
    # Envoy refuses HTTP/1.0 (no Host header, no keep-alive to rely on).
    426: (
        code_pb2.FAILED_PRECONDITION,
        "HTTP_VERSION_UNSUPPORTED",
        "HTTP/1.0 is not supported: use HTTP/1.1 or HTTP/2",
    ),
    408: (
        code_pb2.DEADLINE_EXCEEDED,
        "REQUEST_TIMEOUT",
        "the request did not arrive in time",
    ),
    405: (code_pb2.NOT_FOUND, "UNKNOWN_PATH", "no such path or method"),
    413: (
        code_pb2.RESOURCE_EXHAUSTED,
        "BODY_TOO_LARGE",
        f"the request body is over {MAX_BODY_BYTES} bytes",
    ),
    429: (code_pb2.RESOURCE_EXHAUSTED, "RATE_LIMITED", "too many requests"),
    431: (
        code_pb2.RESOURCE_EXHAUSTED,
        "HEADERS_TOO_LARGE",
        f"the request headers are over {MAX_REQUEST_HEADERS_KB} KiB",
    ),
    # A server that reset the call or broke the protocol: retrying may help.
    502: (
        code_pb2.UNAVAILABLE,
        "BACKEND_UNAVAILABLE",
        "the service is unavailable, try again shortly",
    ),
    503: (
        code_pb2.UNAVAILABLE,
        "BACKEND_UNAVAILABLE",
        "the service is unavailable, try again shortly",
    ),
    504: (code_pb2.DEADLINE_EXCEEDED, "BACKEND_TIMEOUT", "the service did not answer in time"),
}
# A 400 of its own, told apart from MALFORMED_REQUEST by how it was refused
# (envoy.yaml identify.header_check, and Envoy itself for an underscore).
INVALID_HEADER = (
    code_pb2.INVALID_ARGUMENT,
    "INVALID_HEADER",
    "a header name holds other than 0-9, a-z, '-' and '.', or a gRPC header's value is malformed",
)
# Any other reply of Envoy's own (none is expected). A fixed message: Envoy's
# own text can quote the request.
UNMAPPED_REPLY = (code_pb2.UNKNOWN, "EDGE_ERROR", "the edge could not handle this request")


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per client IP: `tokens` every `seconds`, at most
    `burst` at once (what a client may send in one go after a pause)."""

    tokens: int
    seconds: int
    burst: int

    UNITS = {"s": 1, "m": 60}
    FORM = re.compile(r"^(\d+)/([sm])(?:,burst=(\d+))?$")

    @classmethod
    def parse(cls, text: str) -> RateLimit | None:
        """`20/s`, `600/m`, `20/s,burst=100`, or `off` (None)."""
        if text.strip().lower() == "off":
            return None
        found = cls.FORM.match(text.strip().replace(" ", ""))
        if found is None:
            raise ValueError(
                f"rate limit must look like 20/s, 600/m, 20/s,burst=100 or off; got {text!r}"
            )
        tokens, seconds = int(found[1]), cls.UNITS[found[2]]
        # Five seconds' worth unless told (a page of parallel calls, a
        # classroom behind one NAT signing in at once), and at least what
        # one interval brings.
        burst = int(found[3]) if found[3] else max(tokens, math.ceil(tokens * 5 / seconds))
        if tokens < 1 or burst < 1:
            raise ValueError(f"rate limit must allow at least one request; got {text!r}")
        return cls(tokens, seconds, burst)

    @property
    def retry_after(self) -> int:
        """Whole seconds until an empty bucket holds a token again."""
        return max(1, math.ceil(self.seconds / self.tokens))

    def __str__(self) -> str:
        unit = next(u for u, s in self.UNITS.items() if s == self.seconds)
        return f"{self.tokens}/{unit},burst={self.burst}"


# Per client IP on sign-up and login: far above what one person or app does
# (a login per screen, a few retries), enough for a crowd behind one NAT, and
# far below what an address can try in passwords or fresh accounts unchecked
# (1,200 a minute becomes 20 a second, every second, on a few workers).
DEFAULT_RATE_LIMIT = RateLimit(tokens=20, seconds=1, burst=100)


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


def _path_reply(status: int, path: str) -> dict[str, object]:
    at_path = {"header_filter": {"header": {"name": ":path", "string_match": {"exact": path}}}}
    return {"and_filter": {"filters": [_status_filter(status), at_path]}}


_EXTENSIONS = "type.googleapis.com/envoy.extensions."

# A native gRPC call (the transcoder marks the REST calls it turned into
# gRPC with their original path): its reply goes out as gRPC trailers.
_NATIVE_GRPC = [
    {
        "header_filter": {
            "header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}}
        }
    },
    {
        "header_filter": {
            "header": {"name": "x-envoy-original-path", "present_match": True, "invert_match": True}
        }
    },
]

# Refused for a header name: by our Lua check, or by Envoy for an underscore.
_INVALID_HEADER = {
    "or_filter": {
        "filters": [
            {
                "metadata_filter": {
                    "matcher": {
                        "filter": "identify",
                        "path": [{"key": "refusal"}],
                        "value": {"string_match": {"exact": "INVALID_HEADER"}},
                    },
                    # Envoy's default would match every reply without it.
                    "match_if_key_not_found": False,
                }
            },
            {
                "extension_filter": {
                    "name": "envoy.access_loggers.extension_filters.cel",
                    "typed_config": {
                        "@type": _EXTENSIONS + "access_loggers.filters.cel.v3.ExpressionFilter",
                        "expression": "response.code_details.endsWith('unexpected_underscore')",
                    },
                }
            },
        ]
    }
}


def _error_info(reason: str) -> dict[str, object]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": errors.DOMAIN,
    }


def _details(reason: str, retry_after: int | None) -> list[dict[str, object]]:
    details = [_error_info(reason)]
    if retry_after is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"}
        )
    return details


def _status_bin(code: int, reason: str, message: str, retry_after: int | None) -> str:
    """grpc-status-details-bin: what a gRPC client reads the reason from."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=errors.DOMAIN))
    details = [info]
    if retry_after is not None:
        retry = any_pb2.Any()
        retry.Pack(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after))
        )
        details.append(retry)
    proto = status_pb2.Status(code=code, message=message, details=details)
    return base64.b64encode(proto.SerializeToString()).decode().rstrip("=")


def _reply_mappers(
    match: dict[str, object], reply: tuple[int, str, str], retry_after: int | None = None
) -> list[dict[str, object]]:
    """The same refusal twice: as gRPC trailers to a native gRPC call, as
    AIP-193 JSON to anyone else."""
    code, reason, message = reply
    return [
        {
            "filter": {"and_filter": {"filters": [match, *_NATIVE_GRPC]}},
            "headers_to_add": [
                {"header": {"key": "grpc-status", "value": str(code)}},
                {
                    "header": {
                        "key": "grpc-status-details-bin",
                        "value": _status_bin(code, reason, message, retry_after),
                    }
                },
            ],
            "body_format_override": {"text_format_source": {"inline_string": message}},
        },
        {
            "filter": match,
            # The access log's grpc_status, and a client's, as for a
            # server's error.
            "headers_to_add": [{"header": {"key": "grpc-status", "value": str(code)}}],
            "body_format_override": {
                "json_format": {
                    "code": code,
                    "message": message,
                    "details": _details(reason, retry_after),
                },
                "content_type": "application/json",
            },
        },
    ]


def _mappers(rate_limit: RateLimit | None) -> list[dict[str, object]]:
    # The two local 200s: /healthz, answered by the health_check filter, and
    # the OpenAPI document, a direct response whose body is kept as it is.
    mappers: list[dict[str, object]] = [
        {
            "filter": _path_reply(200, HEALTHZ_PATH),
            "body_format_override": {
                "json_format": {"status": "SERVING"},
                "content_type": "application/json",
            },
        },
        {
            "filter": _path_reply(200, OPENAPI_PATH),
            "body_format_override": {
                "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                "content_type": OPENAPI_CONTENT_TYPE,
            },
        },
    ]
    invalid_header: dict[str, object] = {
        "and_filter": {"filters": [_status_filter(400), _INVALID_HEADER]}
    }
    mappers += _reply_mappers(invalid_header, INVALID_HEADER)
    for status, reply in LOCAL_REPLIES.items():
        retry_after = rate_limit.retry_after if status == 429 and rate_limit else None
        mappers += _reply_mappers(_status_filter(status), reply, retry_after)
    return mappers


def _unmapped_reply() -> dict[str, object]:
    code, reason, message = UNMAPPED_REPLY
    return {
        "json_format": {"code": code, "message": message, "details": [_error_info(reason)]},
        "content_type": "application/json",
    }


# One bucket per IPv4 address and per IPv6 /64: an IPv6 client holds a whole
# /64 and could otherwise draw on 2^64 buckets.
_PER_CLIENT = {"masked_remote_address": {"v4_prefix_mask_len": 32, "v6_prefix_mask_len": 64}}


def _sign_in_rate_limit(limit: RateLimit | None) -> dict[str, object]:
    """The limiter's settings on the sign-up and login route, or none."""
    if limit is None:
        return {}
    bucket = {
        "max_tokens": limit.burst,
        "tokens_per_fill": limit.tokens,
        "fill_interval": f"{limit.seconds}s",
    }
    everyone = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "envoy.filters.http.local_ratelimit": {
            "@type": _EXTENSIONS + "filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "sign_in",
            "filter_enabled": everyone,
            "filter_enforced": everyone,
            "rate_limits": [{"actions": [_PER_CLIENT]}],
            "descriptors": [
                {"entries": [{"key": "masked_remote_address", "value": ""}], "token_bucket": bucket}
            ],
            "max_dynamic_descriptors": MAX_CLIENT_BUCKETS,
            # The shared bucket is for a client with no IP address (none on
            # a TCP listener), never drawn on beside its own.
            "token_bucket": bucket,
            "always_consume_default_token_bucket": False,
            "rate_limited_as_resource_exhausted": True,
            "response_headers_to_add": [
                {
                    "header": {"key": "retry-after", "value": str(limit.retry_after)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        }
    }


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


def _tracing(otlp: tracing_settings.Otlp | None) -> dict[str, str]:
    """The two optional lines: the connection manager's `tracing` and the
    collector's cluster; left empty (and so dropped) when traces are off."""
    if otlp is None:
        return {"tracing": "", "tracing_cluster": ""}
    return {
        "tracing": "tracing: " + json.dumps(tracing_edge.connection_manager_tracing(otlp)),
        "tracing_cluster": "- " + json.dumps(tracing_edge.collector_cluster(otlp)),
    }


# The admin listener's block in the template, dropped without an admin port.
_ADMIN_API_BLOCK = re.compile(
    r"^[ ]*# BEGIN admin-api.*?# END admin-api\n", re.MULTILINE | re.DOTALL
)
DEFAULT_ADMIN_API_PORT = 8081


# An optional block's placeholder left empty leaves a blank line, dropped
# (the template itself has none), so the rendered config is as if it never was.
_EMPTY_LINE = re.compile(r"^[ ]+\n", re.MULTILINE)


def _grpc_methods() -> dict[str, object]:
    """The methods grpc_stats counts one by one: the servers' own."""
    service = identify_pb2.DESCRIPTOR.services_by_name["Identify"]
    return {
        "services": [{"name": service.full_name, "method_names": [m.name for m in service.methods]}]
    }


def render(
    *,
    http_port: int,
    backends: Sequence[Backend],
    cors_origins: Sequence[str] = (),
    admin_port: int = 0,
    listen_address: str = "127.0.0.1",
    descriptor: pathlib.Path = DESCRIPTOR,
    openapi_document: pathlib.Path = OPENAPI_DOCUMENT,
    max_body_bytes: int = MAX_BODY_BYTES,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    trusted_proxies: int = 0,
    admin_api_port: int = 0,
    admin_api_address: str = "127.0.0.1",
) -> str:
    """`admin_port` is Envoy's own admin endpoint (stats); `admin_api_port`
    the listener of our admin API (0: none)."""
    if not backends:
        raise ValueError("at least one backend is needed")
    if trusted_proxies < 0:
        raise ValueError(f"trusted proxies must be 0 or more, got {trusted_proxies}")
    if rate_limits_off():
        rate_limit = None
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": b.host, "port_value": b.port}}}}
        for b in backends
    ]
    # Any healthy backend keeps the edge healthy; none makes /healthz 503.
    min_healthy = max(0.1, 100.0 / len(backends) - 0.01)
    template = TEMPLATE.read_text()
    if not admin_api_port:
        template = _ADMIN_API_BLOCK.sub("", template)
    text = string.Template(template).substitute(
        admin_port=admin_port,
        admin_api_port=admin_api_port,
        admin_api_address=admin_api_address,
        listen_address=listen_address,
        http_port=http_port,
        descriptor=str(descriptor.resolve()),
        openapi_document=str(openapi_document.resolve()),
        openapi_path=OPENAPI_PATH,
        max_body_bytes=max_body_bytes,
        endpoints=json.dumps(endpoints),
        local_reply_mappers=json.dumps(_mappers(rate_limit)),
        unmapped_reply=json.dumps(_unmapped_reply()),
        cors_policy=json.dumps(_cors(cors_origins)),
        min_healthy_percent=f"{min_healthy:.2f}",
        probe_header=PROBE_HEADER,
        trusted_proxies=trusted_proxies,
        max_request_headers_kb=MAX_REQUEST_HEADERS_KB,
        client_ip_header=CLIENT_IP_HEADER,
        sign_in_rate_limit=json.dumps(_sign_in_rate_limit(rate_limit)),
        # OTEL_* as the servers read it (they inherit the environment).
        **_tracing(tracing_settings.from_env()),
        grpc_stats_methods=json.dumps(_grpc_methods()),
    )
    return _EMPTY_LINE.sub("", text)
