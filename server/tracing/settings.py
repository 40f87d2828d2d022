"""Whether traces are on, and where they go, from the standard OTEL_*
variables. Read by the servers (server/tracing/sdk.py) and by the edge's
config (server/tracing/edge.py), so Envoy and the servers always agree.

Off unless an OTLP endpoint is named (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
OTEL_EXPORTER_OTLP_ENDPOINT) or OTEL_TRACES_EXPORTER=otlp asks for the
default one; OTEL_TRACES_EXPORTER=none and OTEL_SDK_DISABLED=true turn it
off whatever else is set. Nothing here imports opentelemetry: a process
with traces off never loads it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

GRPC = "grpc"
HTTP = "http/protobuf"
DEFAULT_SERVICE_NAME = "identify"
# The SDK's own defaults for each protocol (the OTLP specification's ports).
DEFAULT_ENDPOINTS = {GRPC: "http://localhost:4317", HTTP: "http://localhost:4318"}
# Per the specification, a signal-less endpoint gets the signal's path.
HTTP_TRACES_PATH = "/v1/traces"
# OTEL_TRACES_SAMPLER values the SDK knows, as the share of new traces kept
# (None: the ratio comes from OTEL_TRACES_SAMPLER_ARG).
SAMPLERS: dict[str, float | None] = {
    "always_on": 1.0,
    "always_off": 0.0,
    "traceidratio": None,
    "parentbased_always_on": 1.0,
    "parentbased_always_off": 0.0,
    "parentbased_traceidratio": None,
}


@dataclass(frozen=True)
class Otlp:
    """Where spans go and how many new traces are kept."""

    protocol: str
    # The collector's URL: scheme, host and port for gRPC; the full traces
    # URL (…/v1/traces) for http/protobuf.
    endpoint: str
    service_name: str
    # The share of traces started here (no incoming traceparent) that are
    # kept; an incoming one's sampled flag decides for the rest.
    ratio: float
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or "localhost"

    @property
    def port(self) -> int:
        url = urlsplit(self.endpoint)
        return url.port or (443 if url.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.endpoint).scheme == "https"


def _get(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return ""


def from_env(environ: Mapping[str, str] | None = None) -> Otlp | None:
    """The trace export asked for, or None when traces are off. A setting
    this build cannot honour is a ValueError (the start fails, saying so)."""
    env = os.environ if environ is None else environ
    if _get(env, "OTEL_SDK_DISABLED").lower() == "true":
        return None
    exporter = _get(env, "OTEL_TRACES_EXPORTER").lower()
    if exporter == "none":
        return None
    if exporter not in ("", "otlp"):
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={exporter}: Identify exports traces over OTLP only"
            " (otlp, or none)"
        )
    specific = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    general = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if not exporter and not specific and not general:
        return None
    protocol = _get(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = protocol or GRPC
    if protocol not in (GRPC, HTTP):
        raise ValueError(
            f"OTLP protocol {protocol!r} is not supported: use {GRPC} or {HTTP}"
            " (OTEL_EXPORTER_OTLP_PROTOCOL)"
        )
    endpoint = specific or general or DEFAULT_ENDPOINTS[protocol]
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"OTLP endpoint must look like http://collector:4317, got {endpoint!r}")
    if protocol == HTTP and not specific:
        endpoint = endpoint.rstrip("/") + HTTP_TRACES_PATH
    return Otlp(
        protocol=protocol,
        endpoint=endpoint,
        service_name=_service_name(env),
        ratio=_ratio(env),
        headers=_headers(
            _get(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
        ),
    )


def _service_name(env: Mapping[str, str]) -> str:
    name = _get(env, "OTEL_SERVICE_NAME")
    if name:
        return name
    for key, value in _headers(_get(env, "OTEL_RESOURCE_ATTRIBUTES")):
        if key == "service.name" and value:
            return value
    return DEFAULT_SERVICE_NAME


def _ratio(env: Mapping[str, str]) -> float:
    sampler = _get(env, "OTEL_TRACES_SAMPLER").lower() or "parentbased_always_on"
    if sampler not in SAMPLERS:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER={sampler} is not supported: use one of " + ", ".join(SAMPLERS)
        )
    fixed = SAMPLERS[sampler]
    if fixed is not None:
        return fixed
    arg = _get(env, "OTEL_TRACES_SAMPLER_ARG") or "1.0"
    wrong = f"OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1, got {arg!r}"
    try:
        ratio = float(arg)
    except ValueError:
        raise ValueError(wrong) from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(wrong)
    return ratio


def _headers(text: str) -> tuple[tuple[str, str], ...]:
    """`k1=v1,k2=v2` with percent-encoded values (the W3C Baggage form the
    specification uses for OTEL_EXPORTER_OTLP_HEADERS)."""
    pairs = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs.append((key.strip().lower(), unquote(value.strip())))
    return tuple(pairs)
