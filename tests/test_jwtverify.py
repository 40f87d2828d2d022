"""The JWT verifier against a local issuer over real HTTP: every refusal has
its own reason, keys rotate, refetches stay bounded, outages are 503s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from providers.base import Unauthenticated, Unavailable, User
from providers.jwtverify import JwtVerifier, VerifierConfig, refuse_if_revoked
from tests.fakes.oidc_issuer import FakeIssuer, SigningKey

T = TypeVar("T")
AUD = "https://api.example.test"


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    fake = FakeIssuer()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def other_issuer() -> Iterator[FakeIssuer]:
    fake = FakeIssuer()
    yield fake
    fake.stop()


class Clock:
    """A monotonic clock the test moves by hand (TTLs, backoffs)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def config(fake: FakeIssuer, **over: Any) -> VerifierConfig:
    settings = {"issuer": fake.issuer, "jwksUri": fake.jwks_url, "audience": AUD, **over}
    return VerifierConfig.from_settings(settings)


def run(
    cfg: VerifierConfig,
    body: Callable[[JwtVerifier], Awaitable[T]],
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> T:
    async def main() -> T:
        async with httpx.AsyncClient() as http:
            return await body(JwtVerifier(cfg, http, monotonic=monotonic))

    return asyncio.run(main())


def refusal(cfg: VerifierConfig, token: str) -> str:
    async def body(v: JwtVerifier) -> str:
        with pytest.raises(Unauthenticated) as err:
            await v.verify(token)
        return err.value.reason

    return run(cfg, body)


def test_valid_token_gives_its_claims(issuer: FakeIssuer) -> None:
    token = issuer.mint(sub="auth0|alice", aud=[AUD, "other"], email="a@example.test")
    claims = run(config(issuer), lambda v: v.verify(token))
    assert claims["sub"] == "auth0|alice"
    assert claims["email"] == "a@example.test"


def test_es256_key_verifies_when_allowed(issuer: FakeIssuer) -> None:
    key = SigningKey.generate("ES256")
    issuer.published.append(key)
    try:
        token = issuer.mint(sub="u-es", aud=AUD, key=key)
        assert run(config(issuer), lambda v: v.verify(token))["sub"] == "u-es"
        only_rsa = config(issuer, algorithms=["RS256"])
        assert refusal(only_rsa, token) == "ALGORITHM_NOT_ALLOWED"
    finally:
        issuer.published.remove(key)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "TOKEN_EXPIRED"),
        ({"nbf": int(time.time()) + 600}, "TOKEN_NOT_YET_VALID"),
        ({"iat": int(time.time()) + 600}, "TOKEN_NOT_YET_VALID"),
        ({"aud": "https://someone-else.test"}, "WRONG_AUDIENCE"),
        ({"aud": None}, "WRONG_AUDIENCE"),
        ({"iss": "https://impostor.test/"}, "WRONG_ISSUER"),
        ({"sub": ""}, "MISSING_SUBJECT"),
        ({"sub": 42}, "MISSING_SUBJECT"),
        ({"exp": None}, "MISSING_CLAIM"),
        ({"iat": None}, "MISSING_CLAIM"),
        ({"exp": "tomorrow"}, "MALFORMED_TOKEN"),
    ],
)
def test_each_bad_claim_has_its_reason(
    issuer: FakeIssuer, claims: dict[str, Any], reason: str
) -> None:
    sub = claims.pop("sub", "auth0|bob")
    aud = claims.pop("aud", AUD)
    token = issuer.mint(sub=sub, aud=aud, **claims)
    assert refusal(config(issuer), token) == reason


def test_leeway_accepts_small_clock_skew(issuer: FakeIssuer) -> None:
    now = int(time.time())
    token = issuer.mint(sub="skew", aud=AUD, exp=now - 10, iat=now + 10, nbf=now + 10)
    assert run(config(issuer), lambda v: v.verify(token))["sub"] == "skew"
    assert refusal(config(issuer, leeway=0), token) == "TOKEN_EXPIRED"


def test_forgeries_are_refused(issuer: FakeIssuer) -> None:
    cfg = config(issuer)
    assert refusal(cfg, issuer.mint_unsigned(sub="x", aud=AUD)) == "ALGORITHM_NOT_ALLOWED"
    assert refusal(cfg, issuer.mint_hs256_with_public_key(sub="x", aud=AUD)) == (
        "ALGORITHM_NOT_ALLOWED"
    )
    # Correct header, someone else's key under our kid.
    impostor = SigningKey(issuer.current.kid, "RS256", SigningKey.generate().private)
    assert refusal(cfg, issuer.mint(sub="x", aud=AUD, key=impostor)) == "BAD_SIGNATURE"
    # An ES256 header on an RSA kid: the key decides, not the header.
    es_header = issuer.mint_forged(
        header={"alg": "ES256", "kid": issuer.current.kid}, sub="x", aud=AUD
    )
    assert refusal(cfg, es_header) == "ALGORITHM_NOT_ALLOWED"
    no_kid = issuer.mint_forged(header={"alg": "RS256"}, sub="x", aud=AUD)
    assert refusal(cfg, no_kid) == "MISSING_KEY_ID"


def test_key_of_another_issuer_is_unknown(issuer: FakeIssuer, other_issuer: FakeIssuer) -> None:
    # Signed by the other issuer's real key, claiming to come from ours.
    token = other_issuer.mint(sub="x", aud=AUD, iss=issuer.issuer)
    assert refusal(config(issuer, jwksRefetchInterval=0.1), token) == "UNKNOWN_SIGNING_KEY"
    # And a token really from the other issuer is refused for its iss.
    genuine = other_issuer.mint(sub="x", aud=AUD)
    assert refusal(config(issuer), genuine) in ("UNKNOWN_SIGNING_KEY", "WRONG_ISSUER")


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "a.b", "e30.e30.", "eyJhbGciOiJSUzI1NiJ9.!!!.sig", "x" * 20000],
)
def test_malformed_tokens(issuer: FakeIssuer, token: str) -> None:
    assert refusal(config(issuer), token) in ("MALFORMED_TOKEN", "ALGORITHM_NOT_ALLOWED")


def test_garbage_payload_under_valid_signature_is_malformed(issuer: FakeIssuer) -> None:
    signed_list = SigningKey.generate()
    issuer.published.append(signed_list)
    try:
        import jwt as pyjwt

        token = pyjwt.api_jws.encode(
            b"[1,2,3]", signed_list.private, algorithm="RS256", headers={"kid": signed_list.kid}
        )
        assert refusal(config(issuer), token) == "MALFORMED_TOKEN"
    finally:
        issuer.published.remove(signed_list)


def test_rotation_is_picked_up_and_refetch_is_bounded() -> None:
    fake = FakeIssuer()
    clock = Clock()
    try:
        cfg = config(fake, jwksRefetchInterval=30)

        async def body(v: JwtVerifier) -> None:
            await v.verify(fake.mint(sub="a", aud=AUD))
            assert fake.jwks_fetches == 1
            new = fake.rotate()
            rotated = fake.mint(sub="a", aud=AUD, key=new)
            # Within the interval an unknown kid is refused without a fetch.
            with pytest.raises(Unauthenticated) as err:
                await v.verify(rotated)
            assert err.value.reason == "UNKNOWN_SIGNING_KEY"
            assert fake.jwks_fetches == 1
            clock.t += 31
            assert (await v.verify(rotated))["sub"] == "a"
            assert fake.jwks_fetches == 2
            # A flood of forged kids after the interval: one shared fetch.
            clock.t += 31
            forged = [
                fake.mint(sub="a", aud=AUD, key=SigningKey.generate(kid=f"forged-{i}"))
                for i in range(3)
            ] * 20
            results = await asyncio.gather(*(v.verify(t) for t in forged), return_exceptions=True)
            assert all(
                isinstance(r, Unauthenticated) and r.reason == "UNKNOWN_SIGNING_KEY"
                for r in results
            )
            assert fake.jwks_fetches == 3
            for t in forged[:10]:
                with pytest.raises(Unauthenticated):
                    await v.verify(t)
            assert fake.jwks_fetches == 3

        run(cfg, body, monotonic=clock)
    finally:
        fake.stop()


def test_removed_key_stops_verifying_even_cached_tokens() -> None:
    fake = FakeIssuer()
    clock = Clock()
    try:

        async def body(v: JwtVerifier) -> None:
            old_token = fake.mint(sub="a", aud=AUD)
            await v.verify(old_token)
            new = fake.rotate(keep_old=False)
            clock.t += 31
            await v.verify(fake.mint(sub="a", aud=AUD, key=new))
            with pytest.raises(Unauthenticated) as err:
                await v.verify(old_token)
            assert err.value.reason == "UNKNOWN_SIGNING_KEY"

        run(config(fake), body, monotonic=clock)
    finally:
        fake.stop()


def test_issuer_down_without_keys_is_unavailable_and_backs_off() -> None:
    fake = FakeIssuer()
    clock = Clock()
    try:
        token = fake.mint(sub="a", aud=AUD)

        async def body(v: JwtVerifier) -> None:
            for mode in ("error", "drop"):
                fake.mode = mode
                before = fake.jwks_fetches
                with pytest.raises(Unavailable) as err:
                    await v.verify(token)
                assert err.value.retry_after and err.value.retry_after >= 1
                # Within the backoff nobody calls the issuer again.
                for _ in range(5):
                    with pytest.raises(Unavailable):
                        await v.verify(token)
                if mode == "error":
                    assert fake.jwks_fetches == before + 1
                clock.t += 3
            fake.mode = "ok"
            assert (await v.verify(token))["sub"] == "a"

        run(config(fake), body, monotonic=clock)
    finally:
        fake.stop()


def test_unreachable_and_slow_issuers_are_unavailable() -> None:
    fake = FakeIssuer()
    token = fake.mint(sub="a", aud=AUD)
    fake.mode = "slow"
    fake.slow_seconds = 1.0

    async def slow(v: JwtVerifier) -> str:
        with pytest.raises(Unavailable) as err:
            await v.verify(token)
        return err.value.reason

    assert run(config(fake, timeoutSeconds=0.2), slow) == "UPSTREAM_TIMEOUT"
    fake.stop()
    assert run(config(fake), slow) == "UPSTREAM_UNAVAILABLE"


def test_stale_keys_serve_while_the_issuer_is_down() -> None:
    fake = FakeIssuer()
    clock = Clock()
    try:
        token = fake.mint(sub="a", aud=AUD)

        async def body(v: JwtVerifier) -> None:
            await v.verify(token)
            fake.mode = "error"
            clock.t += 601
            other = fake.mint(sub="b", aud=AUD)
            assert (await v.verify(other))["sub"] == "b"
            assert fake.jwks_fetches == 2

        run(config(fake), body, monotonic=clock)
    finally:
        fake.stop()


def test_discovery_finds_the_jwks_and_checks_its_issuer() -> None:
    fake = FakeIssuer()
    try:
        cfg = VerifierConfig.from_settings({"issuer": fake.issuer, "audience": AUD})
        token = fake.mint(sub="d", aud=AUD)
        assert run(cfg, lambda v: v.verify(token))["sub"] == "d"
        assert fake.discovery_fetches == 1 and fake.jwks_fetches == 1

        # A discovery document naming another issuer is not trusted.
        liar = FakeIssuer(issuer="https://real-issuer.test/")
        try:
            cfg = VerifierConfig.from_settings({"issuer": liar.base_url + "/", "audience": AUD})

            async def body(v: JwtVerifier) -> str:
                with pytest.raises(Unavailable) as err:
                    await v.verify(liar.mint(sub="d", aud=AUD))
                return err.value.reason

            assert run(cfg, body) == "UPSTREAM_MISCONFIGURED"
            assert liar.jwks_fetches == 0
        finally:
            liar.stop()
    finally:
        fake.stop()


@pytest.mark.parametrize(
    "settings",
    [
        {"issuer": "https://i.test/", "audience": AUD, "algorithms": ["HS256"]},
        {"issuer": "https://i.test/", "audience": AUD, "algorithms": ["none"]},
        {"issuer": "https://i.test/", "audience": AUD, "jwksUri": "http://evil.test/jwks"},
        {"issuer": "http://i.test/", "audience": AUD},
        {"issuer": "https://i.test/", "audience": []},
        {"issuer": "https://i.test/"},
        {"audience": AUD},
        {"issuer": "https://i.test/", "audience": AUD, "leeway": 3600},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        VerifierConfig.from_settings(settings)


def test_revoked_tokens_are_refused() -> None:
    user = User(
        user_id="u",
        project_id="p",
        provider="oidc",
        subject="s",
        external_id="e",
        created_at=0,
        updated_at=0,
        valid_after=2000,
    )
    refuse_if_revoked({"iat": 2000}, user)
    refuse_if_revoked({"iat": 1}, None)
    with pytest.raises(Unauthenticated) as err:
        refuse_if_revoked({"iat": 1999}, user)
    assert err.value.reason == "TOKEN_REVOKED"
