"""What Envoy's config gains when traces are on: a `tracing` block on the
edge's http_connection_manager (the OpenTelemetry tracer, exporting to the
servers' collector) and a cluster for that collector.

Envoy starts a trace for a request that brings none, continues the W3C
`traceparent` of one that does, and passes its own span on to the server
in `traceparent`."""

from __future__ import annotations

from server.tracing.settings import GRPC, Otlp

_TYPES = "type.googleapis.com/envoy.extensions."
COLLECTOR_CLUSTER = "identify_otlp"
EXPORT_TIMEOUT = "2s"
# The standard tags Envoy puts on its span include `http.url`, the path the
# client called with its query string, where a client may have sent a token
# (GET /user/check/nonstandard takes accessToken there): replaced by the path
# alone. Envoy's OpenTelemetry span keeps one value per attribute, the last.
_PATH_ONLY = {"tag": "http.url", "value": "%PATH(NQ)%"}
# What the client called (the transcoder turns every call into a POST of
# the gRPC method): the span's name and its http.method.
_METHOD = "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%"
_CLIENT_METHOD = {"tag": "http.method", "value": _METHOD}


def edge_service_name(otlp: Otlp) -> str:
    return f"{otlp.service_name}-edge"


def connection_manager_tracing(otlp: Otlp) -> dict[str, object]:
    """The http_connection_manager's `tracing` field."""
    if otlp.protocol == GRPC:
        service: dict[str, object] = {
            "grpc_service": {
                "envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER, "authority": otlp.host},
                "timeout": EXPORT_TIMEOUT,
                "initial_metadata": [{"key": k, "value": v} for k, v in otlp.headers],
            }
        }
    else:
        service = {
            "http_service": {
                "http_uri": {
                    "uri": otlp.endpoint,
                    "cluster": COLLECTOR_CLUSTER,
                    "timeout": EXPORT_TIMEOUT,
                },
                "request_headers_to_add": [
                    {"header": {"key": k, "value": v}} for k, v in otlp.headers
                ],
            }
        }
    return {
        # Percent of requests without a sampled traceparent that start a trace.
        "random_sampling": {"value": round(otlp.ratio * 100, 4)},
        "operation": f"{_METHOD} %PATH(NQ)%",
        "custom_tags": [_PATH_ONLY, _CLIENT_METHOD],
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "service_name": edge_service_name(otlp),
                **service,
            },
        },
    }


def collector_cluster(otlp: Otlp) -> dict[str, object]:
    """The cluster Envoy sends its spans through: HTTP/2 for OTLP/gRPC."""
    cluster: dict[str, object] = {
        "name": COLLECTOR_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": COLLECTOR_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": otlp.host,
                                        "port_value": otlp.port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if otlp.protocol == GRPC:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPES + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if otlp.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TYPES + "transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": otlp.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": otlp.host}}
                        ],
                    }
                },
            },
        }
    return cluster
