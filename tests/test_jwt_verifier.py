"""The JWT verifier against a local issuer over real HTTP: every refusal has
its own reason, keys rotate, refetches stay bounded, outages are 503s."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from providers.kit.jwt import JwtVerifier, VerifierConfig
from providers.kit.settings import SettingsReader
from providers.kit.tokens import refuse_if_revoked
from providers.values import Unauthenticated, Unavailable, User
from tests.fakes.oidc_issuer import FakeIssuer, SigningKey
from tests.harness import at_run_time, from_now

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


def parse(settings: dict[str, Any]) -> VerifierConfig:
    reader = SettingsReader(settings, owner="oidc")
    cfg = VerifierConfig.read(reader)
    reader.finish()
    return cfg


def config(fake: FakeIssuer, **over: Any) -> VerifierConfig:
    return parse({"issuer": fake.issuer, "jwksUri": fake.jwks_url, "audience": AUD, **over})


def run(
    cfg: VerifierConfig,
    body: Callable[[JwtVerifier], Awaitable[T]],
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> T:
    async def main() -> T:
        async with httpx.AsyncClient() as http:
            return await body(JwtVerifier(cfg, http, now=time.time, monotonic=monotonic))

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
        ({"exp": from_now(-120)}, "TOKEN_EXPIRED"),
        ({"nbf": from_now(600)}, "TOKEN_NOT_YET_VALID"),
        ({"iat": from_now(600)}, "TOKEN_NOT_YET_VALID"),
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
    claims = at_run_time(claims)
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


def forged_tokens(fake: FakeIssuer, count: int) -> list[str]:
    return [
        fake.mint(sub="a", aud=AUD, key=SigningKey.generate(kid=f"forged-{i}"))
        for i in range(count)
    ]


def test_a_freshly_published_key_is_accepted_at_once() -> None:
    fake = FakeIssuer()
    clock = Clock()
    try:

        async def body(v: JwtVerifier) -> None:
            await v.verify(fake.mint(sub="a", aud=AUD))
            assert fake.jwks_fetches == 1
            # The issuer publishes a key a second after our fetch and signs
            # with it at once: no refusal, one refetch.
            clock.t += 1
            rotated = fake.mint(sub="a", aud=AUD, key=fake.rotate())
            assert (await v.verify(rotated))["sub"] == "a"
            assert fake.jwks_fetches == 2
            # The same happens again a second later (a second rotation).
            clock.t += 1
            again = fake.mint(sub="b", aud=AUD, key=fake.rotate())
            assert (await v.verify(again))["sub"] == "b"
            assert fake.jwks_fetches == 3

        run(config(fake, jwksRefetchInterval=30), body, monotonic=clock)
    finally:
        fake.stop()


def test_forged_kids_cost_the_issuer_at_most_three_fetches() -> None:
    fake = FakeIssuer()
    clock = Clock()
    try:

        async def body(v: JwtVerifier) -> None:
            # A cold verifier: even its first fetch is paid from the budget.
            for token in forged_tokens(fake, 20):
                with pytest.raises(Unauthenticated) as err:
                    await v.verify(token)
                assert err.value.reason == "UNKNOWN_SIGNING_KEY"
            assert fake.jwks_fetches == 3
            # A concurrent flood shares nothing new: the budget is spent.
            flood = forged_tokens(fake, 3) * 20
            results = await asyncio.gather(*(v.verify(t) for t in flood), return_exceptions=True)
            assert all(
                isinstance(r, Unauthenticated) and r.reason == "UNKNOWN_SIGNING_KEY"
                for r in results
            )
            assert fake.jwks_fetches == 3
            # Known keys keep verifying meanwhile, without a fetch.
            assert (await v.verify(fake.mint(sub="a", aud=AUD)))["sub"] == "a"
            assert fake.jwks_fetches == 3
            # One interval later the budget has one refetch again: a real
            # rotation is picked up, and the next forgery is refused unfetched.
            clock.t += 30
            rotated = fake.mint(sub="a", aud=AUD, key=fake.rotate())
            assert (await v.verify(rotated))["sub"] == "a"
            assert fake.jwks_fetches == 4
            with pytest.raises(Unauthenticated):
                await v.verify(forged_tokens(fake, 1)[0])
            assert fake.jwks_fetches == 4

        run(config(fake, jwksRefetchInterval=30), body, monotonic=clock)
    finally:
        fake.stop()


def test_concurrent_unknown_kids_share_one_fetch() -> None:
    fake = FakeIssuer()
    try:

        async def body(v: JwtVerifier) -> None:
            await v.verify(fake.mint(sub="a", aud=AUD))
            flood = forged_tokens(fake, 3) * 20
            await asyncio.gather(*(v.verify(t) for t in flood), return_exceptions=True)
            assert fake.jwks_fetches == 2

        run(config(fake), body)
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
        cfg = parse({"issuer": fake.issuer, "audience": AUD})
        token = fake.mint(sub="d", aud=AUD)
        assert run(cfg, lambda v: v.verify(token))["sub"] == "d"
        assert fake.discovery_fetches == 1 and fake.jwks_fetches == 1

        # A discovery document naming another issuer is not trusted.
        liar = FakeIssuer(issuer="https://real-issuer.test/")
        try:
            cfg = parse({"issuer": liar.base_url + "/", "audience": AUD})

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
    ("settings", "words"),
    [
        ({"issuer": "https://i.test/", "audience": AUD, "algorithms": ["HS256"]}, "algorithms"),
        ({"issuer": "https://i.test/", "audience": AUD, "algorithms": ["none"]}, "algorithms"),
        (
            {"issuer": "https://i.test/", "audience": AUD, "jwksUri": "http://evil.test/jwks"},
            "jwksUri must be an https:// URL",
        ),
        ({"issuer": "http://i.test/", "audience": AUD}, "issuer must be an https:// URL"),
        ({"issuer": "https://i.test/", "audience": []}, "audience"),
        ({"issuer": "https://i.test/"}, "audience is required"),
        ({"audience": AUD}, "issuer is required"),
        ({"issuer": "https://i.test/", "audience": AUD, "leeway": 3600}, "leeway"),
        ({"issuer": "https://i.test/", "audience": AUD, "audiance": AUD}, "audiance"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse(settings)


def test_settings_are_parsed_with_their_defaults(issuer: FakeIssuer) -> None:
    cfg = parse({"issuer": issuer.issuer, "audience": [AUD, "b"], "jwksUri": issuer.jwks_url})
    assert cfg.issuers == (issuer.issuer,) and cfg.audiences == (AUD, "b")
    assert cfg.jwks_uri == issuer.jwks_url
    assert (cfg.algorithms, cfg.leeway, cfg.jwks_ttl) == (("RS256", "ES256"), 30.0, 600.0)
    assert (cfg.refetch_interval, cfg.refetch_burst, cfg.timeout) == (30.0, 3, 5.0)


def test_allow_expired_skips_only_the_expiry(issuer: FakeIssuer) -> None:
    token = issuer.mint(sub="late", aud=AUD, exp=int(time.time()) - 3600)

    async def body(v: JwtVerifier) -> str:
        assert (await v.verify(token, allow_expired=True))["sub"] == "late"
        with pytest.raises(Unauthenticated) as err:
            await v.verify(token)
        return err.value.reason

    assert run(config(issuer), body) == "TOKEN_EXPIRED"
    wrong = issuer.mint(sub="late", aud="else", exp=int(time.time()) - 3600)

    async def still_checked(v: JwtVerifier) -> str:
        with pytest.raises(Unauthenticated) as err:
            await v.verify(wrong, allow_expired=True)
        return err.value.reason

    assert run(config(issuer), still_checked) == "WRONG_AUDIENCE"


def test_audience_claim_and_fixed_claims_are_configurable(issuer: FakeIssuer) -> None:
    # Cognito's access tokens: the app client in client_id, token_use=access.
    reader = SettingsReader({}, owner="awsCognito")
    cfg = VerifierConfig.read(
        reader,
        issuers=(issuer.issuer,),
        jwks_uri=issuer.jwks_url,
        audiences=("client-1",),
        algorithms=("RS256",),
        audience_claim="client_id",
        fixed_claims={"token_use": "access"},
    )
    good = issuer.mint(sub="c", aud=None, client_id="client-1", token_use="access")
    assert run(cfg, lambda v: v.verify(good))["sub"] == "c"
    assert refusal(cfg, issuer.mint(sub="c", aud=None, client_id="x", token_use="access")) == (
        "WRONG_AUDIENCE"
    )
    assert refusal(cfg, issuer.mint(sub="c", aud=None, client_id="client-1", token_use="id")) == (
        "WRONG_TOKEN_TYPE"
    )


def test_verified_tokens_are_served_from_the_cache(issuer: FakeIssuer) -> None:
    token = issuer.mint(sub="cached", aud=AUD)

    async def body(v: JwtVerifier) -> tuple[Any, Any]:
        first = await v.verify(token)
        second = await v.verify(token)
        return first, second

    first, second = run(config(issuer), body)
    # The very same claims object: the second call did no verification.
    assert first is second


def test_a_cached_token_is_refused_once_it_expires(issuer: FakeIssuer) -> None:
    wall = Clock()
    wall.t = float(int(time.time()))
    token = issuer.mint(sub="ending", aud=AUD, exp=int(wall.t) + 60, iat=int(wall.t))

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            v = JwtVerifier(config(issuer), http, now=wall)
            first = await v.verify(token)
            wall.t += 60 + 30  # exp plus the leeway: still valid, from the cache
            assert await v.verify(token) is first
            wall.t += 1
            for _ in range(2):  # the cached entry does not outlive its exp either
                with pytest.raises(Unauthenticated) as err:
                    await v.verify(token)
                assert err.value.reason == "TOKEN_EXPIRED"
            # A refresh may still learn whose token it was, by a verification.
            late = await v.verify(token, allow_expired=True)
            assert late["sub"] == "ending" and late is not first

    asyncio.run(main())


def test_the_claims_cache_is_bounded_and_keyed_on_a_digest(issuer: FakeIssuer) -> None:
    a, b, c = (issuer.mint(sub=f"lru-{n}", aud=AUD) for n in "abc")

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            v = JwtVerifier(config(issuer), http, now=time.time, cache_size=2)
            first_a, first_b = await v.verify(a), await v.verify(b)
            assert await v.verify(a) is first_a  # a is now the most recently used
            await v.verify(c)  # the third entry pushes out the least recently used: b
            assert await v.verify(a) is first_a
            again_b = await v.verify(b)
            assert again_b == first_b and again_b is not first_b  # verified once more
            # The cache holds digests, never the bearer tokens themselves.
            held = set(v._verified)
            assert held == {hashlib.sha256(t.encode()).digest() for t in (a, b)}

    asyncio.run(main())


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
    refuse_if_revoked(user, 2000)
    refuse_if_revoked(user, None)
    with pytest.raises(Unauthenticated) as err:
        refuse_if_revoked(user, 1999)
    assert err.value.reason == "TOKEN_REVOKED"
