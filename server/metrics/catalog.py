"""Every metric the servers export, named and explained in one place.

Labels hold bounded values only: the project and provider once the call has
validated them (server/requestctx.Call), RPC names, status codes, refusal
reasons and fixed outcome words. Never a user id, a token or an address.

Under `identify up` each server process writes its samples to files in the
run's PROMETHEUS_MULTIPROC_DIR and the supervisor adds them up per scrape
(prometheus-client's multiprocess mode), so only plain counters and
histograms live here: custom collectors and live gauges cannot be summed
that way."""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram, values


class _Pid:
    """This process's id, read once and again after a fork: prometheus-client's
    multiprocess values ask for it at every increment, and os.getpid() is a
    system call each time (~7 % of a profile read's CPU, with py-spy)."""

    def __init__(self) -> None:
        self.value = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.value = os.getpid()

    def __call__(self) -> int:
        return self.value


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Read by each metric as it makes a child (labels()), so every value
    # made from here on is one of these.
    values.ValueClass = values.MultiProcessValue(process_identifier=_Pid())  # type: ignore[no-untyped-call]

# Few buckets on purpose: each one is a value every process keeps and every
# scrape reads, for each method. Envoy's histogram (envoy_cluster_grpc_
# upstream_rq_time) has the fine-grained view of the same calls.
RPC_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5)
UPSTREAM_BUCKETS = (0.05, 0.25, 1.0, 5.0)

RPCS = Counter(
    "identify_rpcs",
    "RPCs a server answered, by gRPC service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "identify_rpc_duration_seconds",
    "Time a server took to answer an RPC, from its arrival to its status.",
    ["grpc_service", "grpc_method"],
    buckets=RPC_BUCKETS,
)
LOGINS = Counter(
    "identify_logins",
    "Login calls by project, provider and result: OK, or the refusal's reason.",
    ["project", "provider", "result"],
)
SIGN_UPS = Counter(
    "identify_sign_ups",
    "Sign-up (CreateUser) calls by project, provider and result: OK, or the refusal's reason.",
    ["project", "provider", "result"],
)
REFUSALS = Counter(
    "identify_refusals",
    "Calls refused, by project, provider, method and the ErrorInfo reason the client got"
    " (project and provider are empty when the call was refused before naming valid ones).",
    ["project", "provider", "grpc_method", "reason"],
)
UPSTREAM_REQUESTS = Counter(
    "identify_upstream_requests",
    "Requests to identity providers (HTTP, and boto3 for Cognito), by provider and outcome:"
    " the HTTP status class (2xx, 4xx, ...), timeout or unreachable.",
    ["provider", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "identify_upstream_request_duration_seconds",
    "Time until an identity provider answered (or the request failed), by provider and outcome.",
    ["provider", "outcome"],
    buckets=UPSTREAM_BUCKETS,
)
JWKS_FETCHES = Counter(
    "identify_jwks_fetches",
    "Fetches of an issuer's signing keys (JWKS), by provider and outcome (ok, failed).",
    ["provider", "outcome"],
)
CACHE_LOOKUPS = Counter(
    "identify_cache_lookups",
    "Cache lookups by cache (project: project settings; verified_token: upstream JWTs"
    " already verified) and result (hit, miss); hit / (hit + miss) is the hit ratio.",
    ["cache", "result"],
)
STORE_ERRORS = Counter(
    "identify_store_errors",
    "Database errors by kind: unavailable (an outage, answered STORE_UNAVAILABLE),"
    " invalid_value (a value the store refused) or bug.",
    ["kind"],
)
RATE_LIMITED = Counter(
    "identify_rate_limited",
    "Calls refused by a project's rate limits (server/abuse), by project, action and"
    " scope (client: one client's limit; project: the whole project's).",
    ["project", "action", "scope"],
)
RATE_LIMIT_COUNTER_ERRORS = Counter(
    "identify_rate_limit_counter_errors",
    "Rate-limit counter checks that failed (Redis unreachable, say); those calls were admitted.",
)
LOCKOUT_EVENTS = Counter(
    "identify_lockout_events",
    "Per-account lockout, by project and event: failure (a credential failure counted),"
    " locked (an account locked), refused (a call refused while locked).",
    ["project", "event"],
)
WEBHOOK_DELIVERIES = Counter(
    "identify_webhook_deliveries",
    "Webhook delivery attempts settled, by project and outcome: delivered, retry (failed,"
    " tried again later), gave_up (the last attempt failed: endpoint disabled), gone (410:"
    " endpoint disabled), dropped (its event was purged before it could be sent).",
    ["project", "outcome"],
)
