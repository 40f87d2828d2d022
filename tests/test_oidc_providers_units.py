"""Settings of authZero, oidc and google, and the Auth0 Management API
client against the local issuer's stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from providers.authzero.management import Auth0Management, ManagementConfig
from providers.authzero.provider import AuthZeroProvider, AuthZeroSettings
from providers.google import GoogleProvider
from providers.oidc import OidcProvider
from providers.values import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ProviderError,
    Unavailable,
)
from tests.fakes.oidc_issuer import FakeIssuer

AUD = "https://api.example.test"


# ------------------------------------------------------------------ settings
def test_authzero_domain_derives_issuer_jwks_and_management_urls() -> None:
    settings = {
        "domain": "tenant.eu.auth0.com",
        "audience": AUD,
        "managementClientId": "id",
        "managementClientSecret": "secret",
    }
    parsed = AuthZeroProvider.validate_settings(settings)
    assert isinstance(parsed, AuthZeroSettings)
    assert parsed.verifier.issuers == ("https://tenant.eu.auth0.com/",)
    assert parsed.verifier.jwks_uri == "https://tenant.eu.auth0.com/.well-known/jwks.json"
    mgmt = parsed.management
    assert mgmt is not None
    assert mgmt.token_url == "https://tenant.eu.auth0.com/oauth/token"
    assert mgmt.api_url == mgmt.audience == "https://tenant.eu.auth0.com/api/v2/"


def test_authzero_explicit_settings_win_over_the_domain() -> None:
    parsed = AuthZeroProvider.validate_settings(
        {"domain": "tenant.auth0.com", "issuer": "https://login.brand.test/", "audience": AUD}
    )
    assert isinstance(parsed, AuthZeroSettings)
    assert parsed.verifier.issuers == ("https://login.brand.test/",)
    assert parsed.verifier.jwks_uri == "https://tenant.auth0.com/.well-known/jwks.json"
    assert parsed.management is None


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"domain": "https://tenant.auth0.com/", "audience": AUD}, "domain"),
        ({"domain": "tenant.auth0.com"}, "audience is required"),
        (
            {"domain": "tenant.auth0.com", "audience": AUD, "managementClientId": "only-id"},
            "managementClientId and managementClientSecret",
        ),
        (
            {
                "issuer": "https://i.test/",
                "jwksUri": "https://i.test/k",
                "audience": AUD,
                "managementClientId": "id",
                "managementClientSecret": "s",
            },
            "Management API credentials need domain",
        ),
        ({"domain": "tenant.auth0.com", "audience": AUD, "audiance": "typo"}, "audiance"),
        ({"domain": "tenant.auth0.com", "audience": AUD, "algorithms": ["HS256"]}, "algorithms"),
        (
            {"domain": "t.auth0.com", "audience": AUD, "tokenUrl": "http://auth.example/t"},
            "tokenUrl must be an https:// URL",
        ),
    ],
)
def test_authzero_bad_settings(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        AuthZeroProvider.validate_settings(settings)


def test_oidc_claims_mapping_merges_with_defaults() -> None:
    parsed = OidcProvider.validate_settings(
        {
            "issuer": "https://i.test/",
            "audience": AUD,
            "claims": {"username": "upn", "nickname": ["nick", "name"], "email": None},
        }
    )
    assert parsed.claims == {"username": ("upn",), "nickname": ("nick", "name")}


@pytest.mark.parametrize("claims", ["upn", {"username": 3}, {"username": []}, {"bad name!": "x"}])
def test_oidc_bad_claims_mapping(claims: Any) -> None:
    with pytest.raises(ValueError):
        OidcProvider.validate_settings(
            {"issuer": "https://i.test/", "audience": AUD, "claims": claims}
        )


def test_oidc_refuses_authzero_only_settings() -> None:
    with pytest.raises(ValueError, match=r"unknown oidc setting.*domain"):
        OidcProvider.validate_settings(
            {"issuer": "https://i.test/", "domain": "tenant.auth0.com", "audience": AUD}
        )


def test_google_settings() -> None:
    cfg = GoogleProvider.validate_settings({"clientIds": "web.apps.googleusercontent.com"})
    assert cfg.issuers == ("accounts.google.com", "https://accounts.google.com")
    assert cfg.audiences == ("web.apps.googleusercontent.com",)
    assert cfg.jwks_uri == "https://www.googleapis.com/oauth2/v3/certs"
    assert cfg.algorithms == ("RS256",)
    bad_settings: list[tuple[dict[str, Any], str]] = [
        ({}, "clientIds is required"),
        ({"clientIds": []}, "clientIds"),
        ({"clientIds": ["a"], "algorithms": ["ES256"]}, r"unknown google setting.*algorithms"),
        ({"clientIds": ["a"], "certsUrl": "http://certs.example.test/"}, "certsUrl"),
        ({"clientIds": ["a"], "issuer": "https://else.test/"}, r"unknown google setting.*issuer"),
    ]
    for bad, words in bad_settings:
        with pytest.raises(ValueError, match=words):
            GoogleProvider.validate_settings(bad)


# ------------------------------------------------------ Auth0 Management API
@pytest.fixture(scope="module")
def auth0() -> Iterator[FakeIssuer]:
    fake = FakeIssuer(management_clients={"id": "secret"})
    yield fake
    fake.stop()


def management(fake: FakeIssuer, secret: str = "secret") -> ManagementConfig:
    return ManagementConfig(
        token_url=fake.base_url + "/oauth/token",
        api_url=fake.base_url + "/api/v2/",
        audience=fake.management_audience,
        client_id="id",
        client_secret=secret,
        connection=None,
        timeout=2.0,
    )


def set_usernames(cfg: ManagementConfig, *calls: tuple[str, str]) -> ProviderError | None:
    async def main() -> ProviderError | None:
        async with httpx.AsyncClient() as http:
            client = Auth0Management(cfg, http, now=time.time)
            try:
                for user_id, username in calls:
                    await client.set_username(user_id, username)
            except ProviderError as exc:
                return exc
        return None

    return asyncio.run(main())


def test_token_is_fetched_once_for_many_writes(auth0: FakeIssuer) -> None:
    auth0.add_auth0_user("auth0|one")
    auth0.add_auth0_user("auth0|two")
    before = auth0.token_requests
    assert set_usernames(management(auth0), ("auth0|one", "one"), ("auth0|two", "two")) is None
    assert auth0.token_requests == before + 1
    assert auth0.auth0_users["auth0|two"]["username"] == "two"


@pytest.mark.parametrize(
    ("user", "username", "error", "reason"),
    [
        ("auth0|taken-by", "has space", InvalidArgument, "USERNAME_REJECTED"),
        ("auth0|ghost", "ghost", NotFound, "UPSTREAM_USER_NOT_FOUND"),
        ("auth0|other", "occupied", AlreadyExists, "USERNAME_TAKEN"),
    ],
)
def test_upstream_refusals_map_to_domain_errors(
    auth0: FakeIssuer, user: str, username: str, error: type[ProviderError], reason: str
) -> None:
    auth0.add_auth0_user("auth0|taken-by", username="occupied")
    auth0.add_auth0_user("auth0|other")
    err = set_usernames(management(auth0), (user, username))
    assert isinstance(err, error) and err.reason == reason


def test_wrong_credentials_are_a_misconfiguration_not_a_client_error(auth0: FakeIssuer) -> None:
    auth0.add_auth0_user("auth0|x")
    err = set_usernames(management(auth0, secret="wrong"), ("auth0|x", "x"))
    assert isinstance(err, FailedPrecondition) and err.reason == "PROVIDER_MISCONFIGURED"
    assert err.retry_after is None


@pytest.mark.parametrize(
    ("mode", "reason"), [("error", "UPSTREAM_ERROR"), ("drop", "UPSTREAM_UNAVAILABLE")]
)
def test_auth0_outage_is_unavailable(mode: str, reason: str) -> None:
    fake = FakeIssuer(management_clients={"id": "secret"})
    fake.mode = mode  # type: ignore[assignment]
    try:
        err = set_usernames(management(fake), ("auth0|x", "x"))
        assert isinstance(err, Unavailable) and err.reason == reason
        assert err.retry_after is not None and err.retry_after >= 1
    finally:
        fake.stop()
