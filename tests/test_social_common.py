"""The request-side rules every social provider shares (providers/social.py)."""

from __future__ import annotations

import pytest

from providers.base import InvalidArgument, Project, Request, Unauthenticated
from providers.social import MAX_TOKEN_LEN, check_user_id, require_user_id, social_token

PROJECT = Project(id="a69a31e9-f2e6-4d5f-b080-6138c6a721b7", name="p")


def req(**kw: object) -> Request:
    return Request(project=PROJECT, provider="facebook", strategy="email", **kw)  # type: ignore[arg-type]


def test_query_token_wins_over_bearer() -> None:
    assert social_token(req(access_token="q", bearer="b"), provider="facebook") == "q"


def test_bearer_is_accepted_when_no_query_token() -> None:
    assert social_token(req(bearer="b"), provider="facebook") == "b"


def test_missing_token() -> None:
    with pytest.raises(Unauthenticated) as info:
        social_token(req(), provider="facebook")
    assert info.value.reason == "MISSING_ACCESS_TOKEN"
    assert info.value.metadata == {"provider": "facebook"}


def test_overlong_token_is_refused_before_any_upstream_call() -> None:
    with pytest.raises(InvalidArgument) as info:
        social_token(req(bearer="x" * (MAX_TOKEN_LEN + 1)), provider="facebook")
    assert info.value.reason == "FIELD_TOO_LONG"


def test_user_id_is_checked_only_when_given() -> None:
    check_user_id(req(), "123", provider="facebook")
    check_user_id(req(user_id="123"), "123", provider="facebook")
    with pytest.raises(Unauthenticated) as info:
        check_user_id(req(user_id="124"), "123", provider="facebook")
    assert info.value.reason == "USER_ID_MISMATCH"


def test_required_user_id() -> None:
    with pytest.raises(InvalidArgument) as info:
        require_user_id(req(), provider="twitter")
    assert (info.value.reason, info.value.metadata["field"]) == ("MISSING_FIELD", "userId")
