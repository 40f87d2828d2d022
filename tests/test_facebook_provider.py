"""FacebookProvider's verification against a local Graph stand-in: which
Graph answers become which domain errors, and what is sent upstream."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from providers.base import (
    FailedPrecondition,
    ProviderError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from providers.facebook import DEFAULT_GRAPH_URL, FacebookProvider, FacebookSettings
from providers.kit.social import SocialIdentity
from tests.fakes.facebook_graph import FakeGraph, GraphUser
from tests.social_helpers import UpstreamContext, free_closed_port, run_with_ctx

APP = "1234567890"
SECRET = "app-secret-9f8e7d"
OTHER_APP = "5550001111"


@pytest.fixture(scope="module")
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph({APP: SECRET, OTHER_APP: "other-secret"})
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _graph_up(graph: FakeGraph) -> Iterator[None]:
    graph.mode = "ok"
    yield
    graph.mode = "ok"


def settings(graph: FakeGraph, **over: Any) -> dict[str, Any]:
    return {"appId": APP, "appSecret": SECRET, "graphUrl": graph.url, **over}


def identify(s: dict[str, Any], token: str, user_id: str | None = None) -> SocialIdentity:
    async def go(ctx: UpstreamContext) -> SocialIdentity:
        provider = FacebookProvider(FacebookProvider.validate_settings(s), ctx)  # type: ignore[arg-type]
        return await provider.identify(token, user_id=user_id)

    return run_with_ctx(go)


def refused(s: dict[str, Any], token: str, user_id: str | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        identify(s, token, user_id)
    err = info.value
    # Nothing secret or upstream-worded may reach the client.
    assert token not in err.message and SECRET not in err.message
    assert "OAuth" not in err.message
    return err


def test_valid_token_gives_the_app_scoped_id_name_and_email(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("10215241773831025", "Ada L", "ada@example.com"))
    who = identify(settings(graph), token)
    assert who.subject == "10215241773831025"
    assert who.attributes == {"name": "Ada L", "email": "ada@example.com"}


def test_me_is_called_with_appsecret_proof_and_app_token_on_debug(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("777", "Proof Person"))
    before = len(graph.requests)
    identify(settings(graph), token)
    calls = graph.requests[before:]
    assert [c[1] for c in calls] == ["/v23.0/debug_token", "/v23.0/me"]
    assert calls[0][2] == {"input_token": token, "access_token": f"{APP}|{SECRET}"}
    proof = hmac.new(SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()
    assert calls[1][2]["appsecret_proof"] == proof
    assert calls[1][2]["fields"] == "id,name,email"


def test_user_without_email_permission_has_no_email(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("778", "No Mail"))
    assert identify(settings(graph), token).attributes == {"name": "No Mail", "email": None}


def test_token_that_never_expires_is_accepted(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("779", "Forever"), expires_in=None)
    assert identify(settings(graph), token).subject == "779"


def test_issued_at_is_passed_on_for_revocation_checks(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("780", "Long Lived"), issued_at=1_700_000_000)
    assert identify(settings(graph), token).issued_at == 1_700_000_000


def test_matching_user_id_is_accepted(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("781", "Match"))
    assert identify(settings(graph), token, user_id="781").subject == "781"


def test_user_id_mismatch_is_refused_before_reading_the_profile(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("782", "Someone"))
    before = len(graph.requests)
    err = refused(settings(graph), token, user_id="999")
    assert isinstance(err, Unauthenticated) and err.reason == "USER_ID_MISMATCH"
    assert [c[1] for c in graph.requests[before:]] == ["/v23.0/debug_token"]


def test_unknown_token_is_invalid(graph: FakeGraph) -> None:
    err = refused(settings(graph), "EAAnot-a-real-token")
    assert isinstance(err, Unauthenticated) and err.reason == "INVALID_SOCIAL_TOKEN"


def test_expired_token(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("783", "Late"), expires_in=-60)
    err = refused(settings(graph), token)
    assert isinstance(err, Unauthenticated) and err.reason == "TOKEN_EXPIRED"


def test_invalidated_token(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("784", "Logged Out"))
    graph.invalidate(token)
    err = refused(settings(graph), token)
    assert isinstance(err, Unauthenticated) and err.reason == "INVALID_SOCIAL_TOKEN"


def test_token_of_another_app_is_refused_without_reading_the_profile(graph: FakeGraph) -> None:
    token = graph.issue(OTHER_APP, GraphUser("785", "Elsewhere"))
    before = len(graph.requests)
    err = refused(settings(graph), token)
    assert isinstance(err, Unauthenticated) and err.reason == "WRONG_APP"
    assert [c[1] for c in graph.requests[before:]] == ["/v23.0/debug_token"]


def test_wrong_app_secret_is_a_server_problem_not_the_clients(graph: FakeGraph) -> None:
    token = graph.issue(APP, GraphUser("786", "Fine User"))
    err = refused(settings(graph, appSecret="rotated-away"), token)
    # Our credentials are wrong: retrying cannot help until an operator fixes them.
    assert isinstance(err, FailedPrecondition) and err.reason == "PROVIDER_MISCONFIGURED"
    assert err.retry_after is None
    assert err.metadata == {"provider": "facebook"}


def test_graph_server_error_is_unavailable_with_retry(graph: FakeGraph) -> None:
    graph.mode = "error"
    err = refused(settings(graph), "EAAwhatever")
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_ERROR"
    assert err.retry_after


def test_graph_dropping_the_connection_is_unavailable(graph: FakeGraph) -> None:
    graph.mode = "drop"
    err = refused(settings(graph), "EAAwhatever")
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_UNAVAILABLE"


def test_slow_graph_times_out(graph: FakeGraph) -> None:
    graph.mode = "slow"
    graph.slow_seconds = 1.0
    err = refused(settings(graph, timeoutSeconds=0.2), "EAAwhatever")
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_TIMEOUT"


def test_unreachable_graph_is_unavailable() -> None:
    s = {"appId": APP, "appSecret": SECRET, "graphUrl": f"http://127.0.0.1:{free_closed_port()}"}
    with pytest.raises(Unavailable) as info:
        identify(s, "EAAwhatever")
    assert info.value.reason == "UPSTREAM_UNAVAILABLE"


def test_graph_throttling_is_resource_exhausted(graph: FakeGraph) -> None:
    graph.apps["4444"] = "busy-secret"
    graph.throttled_apps.add("4444")
    token = graph.issue("4444", GraphUser("787", "Busy"))
    err = refused({"appId": "4444", "appSecret": "busy-secret", "graphUrl": graph.url}, token)
    assert isinstance(err, ResourceExhausted) and err.reason == "UPSTREAM_RATE_LIMITED"
    assert err.retry_after and err.retry_after >= 1


def test_tokens_and_secret_never_reach_the_httpx_log(
    graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    token = graph.issue(APP, GraphUser("788", "Quiet"))
    with caplog.at_level(logging.INFO, logger="httpx"):
        identify(settings(graph), token)
    text = caplog.text
    assert "debug_token" in text and "/me" in text  # the lines are there...
    assert token not in text and SECRET not in text  # ...without their query
    proof = hmac.new(SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()
    assert proof not in text


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"appSecret": "s"}, "appId is required"),
        ({"appId": "abc", "appSecret": "s"}, "appId is not valid"),
        ({"appId": True, "appSecret": "s"}, "appId must be a non-empty string"),
        ({"appId": "123"}, "appSecret is required"),
        ({"appId": "123", "appSecret": "s", "graphUrl": "ftp://x"}, "graphUrl must be an https://"),
        # The app secret and user tokens travel in graphUrl's query: never in clear.
        (
            {"appId": "123", "appSecret": "s", "graphUrl": "http://graph.facebook.com/v23.0"},
            "graphUrl must be an https:// URL (http:// only for localhost)",
        ),
        (
            {"appId": "123", "appSecret": "s", "graphUrl": "https://graph.facebook.com/?x=1"},
            "graphUrl must not carry a query",
        ),
        (
            {"appId": "123", "appSecret": "s", "graphURL": "http://x"},
            "unknown facebook setting(s): graphURL;",
        ),
        (
            {"appId": "123", "appSecret": "s", "clientSecret": "s"},
            "unknown facebook setting(s): clientSecret;",
        ),
        ({"appId": "123", "appSecret": "s", "timeoutSeconds": 0}, "timeoutSeconds must be"),
    ],
)
def test_bad_settings_are_refused(bad: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        FacebookProvider.validate_settings(bad)


def test_numeric_app_id_from_yaml_is_accepted() -> None:
    parsed = FacebookProvider.validate_settings({"appId": 1234567890, "appSecret": "s"})
    assert parsed == FacebookSettings(
        app_id="1234567890", app_secret="s", graph_url=DEFAULT_GRAPH_URL, timeout=5.0
    )


@pytest.mark.parametrize(
    ("graph_url", "parsed"),
    [
        ("http://127.0.0.1:8080/v23.0/", "http://127.0.0.1:8080/v23.0"),
        ("http://localhost:8080/v23.0", "http://localhost:8080/v23.0"),
        ("https://graph.facebook.com/v22.0/", "https://graph.facebook.com/v22.0"),
    ],
)
def test_graph_url_is_https_or_plain_http_on_loopback(graph_url: str, parsed: str) -> None:
    s = FacebookProvider.validate_settings(
        {"appId": "123", "appSecret": " s ", "graphUrl": graph_url, "timeoutSeconds": 2}
    )
    assert s == FacebookSettings(app_id="123", app_secret="s", graph_url=parsed, timeout=2.0)
