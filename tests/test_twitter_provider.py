"""TwitterProvider's verification against a local X API v2 stand-in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from providers.base import (
    PermissionDenied,
    ProviderError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from providers.kit.social import SocialIdentity
from providers.twitter import DEFAULT_API_URL, TwitterProvider, TwitterSettings
from tests.fakes.x_api import FakeXApi, XUser
from tests.social_helpers import UpstreamContext, free_closed_port, run_with_ctx, social_request


@pytest.fixture(scope="module")
def x() -> Iterator[FakeXApi]:
    fake = FakeXApi()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _x_up(x: FakeXApi) -> Iterator[None]:
    x.mode = "ok"
    yield
    x.mode = "ok"


def identify(s: dict[str, Any], token: str, user_id: str) -> SocialIdentity:
    async def go(ctx: UpstreamContext) -> SocialIdentity:
        provider = TwitterProvider(TwitterProvider.validate_settings(s), ctx)  # type: ignore[arg-type]
        return await provider.identify(token, user_id=user_id)

    return run_with_ctx(go)


def refused(s: dict[str, Any], token: str, user_id: str) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        identify(s, token, user_id)
    assert token not in info.value.message
    assert "Unauthorized" not in info.value.message
    return info.value


def test_valid_token_gives_id_name_and_handle(x: FakeXApi) -> None:
    token = x.issue(XUser("2244994945", "X Dev", "XDevelopers"))
    who = identify({"apiUrl": x.url}, token, "2244994945")
    assert who.subject == "2244994945"
    assert who.username == "XDevelopers"
    assert who.attributes == {"name": "X Dev", "username": "XDevelopers"}


def test_token_travels_only_in_the_authorization_header(x: FakeXApi) -> None:
    token = x.issue(XUser("11", "Header Only", "hdr"))
    before = len(x.requests)
    identify({"apiUrl": x.url}, token, "11")
    [(method, path, query, headers)] = x.requests[before:]
    assert (method, path, query) == ("GET", "/2/users/me", {})
    assert headers["authorization"] == f"Bearer {token}"


def test_user_id_mismatch(x: FakeXApi) -> None:
    # identify() says whose the token is; the check flow refuses a token of
    # anyone but the userId the app sent, before the store is touched.
    token = x.issue(XUser("12", "Real Owner", "owner"))
    assert identify({"apiUrl": x.url}, token, "13").subject == "12"
    req = social_request("twitter", access_token=token, user_id="13")

    async def go(ctx: UpstreamContext) -> object:
        settings = TwitterProvider.validate_settings({"apiUrl": x.url})
        return await TwitterProvider(settings, ctx).check_user_nonstandard(req)  # type: ignore[arg-type]

    with pytest.raises(Unauthenticated) as info:
        run_with_ctx(go)
    assert info.value.reason == "USER_ID_MISMATCH" and token not in info.value.message
    assert info.value.metadata == {"provider": "twitter"}


def test_unknown_or_revoked_token(x: FakeXApi) -> None:
    token = x.issue(XUser("14", "Gone", "gone"))
    x.revoke(token)
    err = refused({"apiUrl": x.url}, token, "14")
    assert isinstance(err, Unauthenticated) and err.reason == "INVALID_SOCIAL_TOKEN"


def test_token_without_user_read_access_is_forbidden(x: FakeXApi) -> None:
    token = x.issue(XUser("15", "Scopeless", "scopeless"))
    x.forbidden.add(token)
    err = refused({"apiUrl": x.url}, token, "15")
    assert isinstance(err, PermissionDenied) and err.reason == "SOCIAL_TOKEN_FORBIDDEN"


def test_rate_limit_carries_retry_after_from_the_reset_header(x: FakeXApi) -> None:
    token = x.issue(XUser("16", "Busy", "busy"))
    x.throttled.add(token)
    err = refused({"apiUrl": x.url}, token, "16")
    assert isinstance(err, ResourceExhausted) and err.reason == "UPSTREAM_RATE_LIMITED"
    assert err.retry_after is not None and x.reset_in - 5 <= err.retry_after <= x.reset_in


def test_x_server_error_is_unavailable(x: FakeXApi) -> None:
    x.mode = "error"
    err = refused({"apiUrl": x.url}, "tok", "1")
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_ERROR" and err.retry_after


def test_dropped_connection_is_unavailable(x: FakeXApi) -> None:
    x.mode = "drop"
    err = refused({"apiUrl": x.url}, "tok", "1")
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_UNAVAILABLE"


def test_slow_x_times_out(x: FakeXApi) -> None:
    x.mode = "slow"
    x.slow_seconds = 1.0
    err = refused({"apiUrl": x.url, "timeoutSeconds": 0.2}, "tok", "1")
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_TIMEOUT"


def test_unreachable_x_is_unavailable() -> None:
    err = refused({"apiUrl": f"http://127.0.0.1:{free_closed_port()}"}, "tok", "1")
    assert isinstance(err, Unavailable) and err.reason == "UPSTREAM_UNAVAILABLE"


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"apiUrl": "api.x.com"}, "apiUrl must be an https:// URL"),
        ({"apiUrl": "http://api.x.com"}, "apiUrl must be an https:// URL (http:// only for"),
        ({"apiUrl": "https://api.x.com?x=1"}, "apiUrl must not carry a query"),
        ({"clientId": "abc"}, "unknown twitter setting(s): clientId;"),
        ({"timeoutSeconds": "5"}, "timeoutSeconds must be a number"),
    ],
)
def test_bad_settings_are_refused(bad: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        TwitterProvider.validate_settings(bad)


def test_no_settings_needed() -> None:
    assert TwitterProvider.validate_settings({}) == TwitterSettings(
        api_url=DEFAULT_API_URL, timeout=5.0
    )


def test_api_url_and_timeout_are_read() -> None:
    parsed = TwitterProvider.validate_settings(
        {"apiUrl": "http://127.0.0.1:9000/", "timeoutSeconds": 1.5}
    )
    assert parsed == TwitterSettings(api_url="http://127.0.0.1:9000", timeout=1.5)
