"""The request-side rules every social provider shares (providers/kit/social.py,
providers/kit/tokens.py)."""

from __future__ import annotations

import pytest

from providers.base import InvalidArgument, Reply, Request, Unauthenticated
from providers.kit.social import ensure_same_user, social_token
from providers.kit.tokens import MAX_TOKEN_CHARS, bounded_token
from providers.twitter import TwitterProvider
from tests.social_helpers import UpstreamContext, run_with_ctx, social_request


def req(**kw: object) -> Request:
    return social_request("facebook", **kw)


def test_query_token_wins_over_bearer() -> None:
    assert social_token(req(access_token="q", bearer="b")) == "q"


def test_bearer_is_accepted_when_no_query_token() -> None:
    assert social_token(req(bearer="b")) == "b"


def test_missing_token() -> None:
    with pytest.raises(Unauthenticated) as info:
        social_token(req())
    assert info.value.reason == "MISSING_ACCESS_TOKEN"
    assert info.value.metadata == {"provider": "facebook"}


def test_overlong_token_is_refused_before_any_upstream_call() -> None:
    # The bound is applied where the server reads a token off the wire, so a
    # provider never sees one this long.
    assert bounded_token("x" * MAX_TOKEN_CHARS, "accessToken") == "x" * MAX_TOKEN_CHARS
    assert bounded_token("", "accessToken") is None
    with pytest.raises(InvalidArgument) as info:
        bounded_token("x" * (MAX_TOKEN_CHARS + 1), "accessToken")
    assert info.value.reason == "FIELD_TOO_LONG"
    assert info.value.metadata == {"field": "accessToken"}


def test_user_id_is_checked_only_when_given() -> None:
    ensure_same_user(None, "123", provider="facebook")
    ensure_same_user("123", "123", provider="facebook")
    with pytest.raises(Unauthenticated) as info:
        ensure_same_user("124", "123", provider="facebook")
    assert info.value.reason == "USER_ID_MISMATCH"
    assert info.value.metadata == {"provider": "facebook"}


def check_twitter(request: Request) -> Reply:
    """Twitter's check flow with no upstream reachable: what it refuses here
    it refuses before any call to X."""

    async def go(ctx: UpstreamContext) -> Reply:
        settings = TwitterProvider.validate_settings({})
        return await TwitterProvider(settings, ctx).check_user_nonstandard(request)  # type: ignore[arg-type]

    return run_with_ctx(go, offline=True)


def test_required_user_id() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_twitter(social_request("twitter", access_token="tok"))
    assert (info.value.reason, info.value.metadata["field"]) == ("MISSING_FIELD", "userId")
    assert info.value.metadata["provider"] == "twitter"


@pytest.mark.parametrize("device_id", ["not-a-uuid", "1234"])
def test_bad_device_id_is_refused_before_any_upstream_call(device_id: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_twitter(
            social_request("twitter", access_token="tok", user_id="1", device_id=device_id)
        )
    assert (info.value.reason, info.value.metadata) == (
        "INVALID_DEVICE_ID",
        {"field": "deviceId"},
    )
