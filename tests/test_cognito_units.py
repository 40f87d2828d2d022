"""awsCognito below the edge: settings, the error table, attribute handling,
and the access-token verifier against moto's real JWKS endpoint (tokens are
forged with moto's published signing key to reach every refusal)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from jwt.algorithms import RSAAlgorithm
from moto.server import ThreadedMotoServer
from moto.utilities.utils import load_resource

from providers.base import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from providers.cognito import errors as op
from providers.cognito.errors import translate
from providers.cognito.profile import attributes_of, email_of, writable_attributes
from providers.cognito.provider import AccessClaims, CognitoProvider
from providers.cognito.settings import CognitoSettings
from providers.cognito.sync import SyncMarks, mark_key
from providers.kit.tokens import MAX_TOKEN_CHARS
from tests.harness import at_run_time, free_port, from_now

REGION = "us-east-1"
POOL = "us-east-1_AbC123"
CLIENT = "client1"
ISSUER = f"https://cognito-idp.{REGION}.amazonaws.com/{POOL}"


def settings(**over: Any) -> dict[str, Any]:
    return {"region": REGION, "userPoolId": POOL, "clientId": CLIENT, **over}


# ------------------------------------------------------------------ settings
def parse(raw: dict[str, Any]) -> CognitoSettings:
    return CognitoProvider.validate_settings(raw)


def test_settings_defaults_build_issuer_and_jwks_from_region_and_pool() -> None:
    cfg = parse(settings())
    assert (cfg.region, cfg.user_pool_id, cfg.client_id) == (REGION, POOL, CLIENT)
    assert cfg.issuer == ISSUER
    assert cfg.jwks_url == f"{ISSUER}/.well-known/jwks.json"
    assert cfg.client_secret is None and cfg.endpoint_url is None
    assert cfg.access_key_id is None and cfg.secret_access_key is None
    assert cfg.session_token is None
    assert cfg.auto_confirm is False
    assert cfg.refresh_token_validity == 30 * 24 * 3600
    assert cfg.profile_refresh == 60
    assert cfg.timeout == 5.0


def test_settings_configure_the_shared_verifier_for_cognito_access_tokens() -> None:
    verifier = parse(settings()).verifier
    assert verifier.issuers == (ISSUER,)
    assert verifier.audiences == (CLIENT,)
    # Cognito access tokens carry the app client in `client_id`, not `aud`.
    assert verifier.audience_claim == "client_id"
    assert dict(verifier.fixed_claims) == {"token_use": "access"}
    assert verifier.algorithms == ("RS256",)
    assert verifier.jwks_uri == f"{ISSUER}/.well-known/jwks.json"


def test_settings_emulator_keeps_the_aws_issuer_but_its_own_jwks_url() -> None:
    cfg = parse(
        settings(endpointUrl="http://127.0.0.1:5000/", jwksUrl="http://127.0.0.1:5000/x/jwks.json")
    )
    assert cfg.endpoint_url == "http://127.0.0.1:5000"
    assert cfg.jwks_url == "http://127.0.0.1:5000/x/jwks.json"
    assert cfg.issuer == ISSUER


def test_settings_jwks_url_is_derived_from_the_endpoint_when_not_given() -> None:
    cfg = parse(settings(endpointUrl="http://127.0.0.1:5000/"))
    assert cfg.endpoint_url == "http://127.0.0.1:5000"
    assert cfg.jwks_url == f"http://127.0.0.1:5000/{POOL}/.well-known/jwks.json"
    assert cfg.verifier.jwks_uri == cfg.jwks_url
    assert cfg.issuer == ISSUER


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:5000", "http://localhost:4566", "https://cognito.example.com"]
)
def test_settings_endpoint_is_https_or_plain_http_on_loopback(endpoint: str) -> None:
    assert parse(settings(endpointUrl=endpoint)).endpoint_url == endpoint


def test_settings_read_every_optional_value() -> None:
    cfg = parse(
        settings(
            clientSecret=" s3cret ",
            autoConfirm=True,
            accessKeyId="AKIA",
            secretAccessKey="sk",
            sessionToken="st",
            refreshTokenValiditySeconds=3600,
            profileRefreshSeconds=0,
            timeoutSeconds=2.5,
        )
    )
    assert cfg.profile_refresh == 0
    assert cfg.client_secret == "s3cret"
    assert cfg.auto_confirm is True
    assert (cfg.access_key_id, cfg.secret_access_key, cfg.session_token) == ("AKIA", "sk", "st")
    assert cfg.refresh_token_validity == 3600
    assert cfg.timeout == 2.5 and cfg.verifier.timeout == 2.5


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"region": None}, "region is required"),
        ({"region": "Europe"}, "region is not valid"),
        ({"userPoolId": "nopool"}, "userPoolId is not valid"),
        (
            {"userPoolId": "eu-west-1_AbC123"},
            "userPoolId eu-west-1_AbC123 does not belong to region",
        ),
        ({"clientId": ""}, "clientId is required"),
        ({"clientId": "a/b"}, "clientId is not valid"),
        ({"clientSecret": 5}, "clientSecret must be a non-empty string"),
        ({"endpointUrl": "ftp://x"}, "endpointUrl must be an https:// URL"),
        # Plain http to anything but loopback would carry the pool's secrets in clear.
        (
            {"endpointUrl": "http://cognito-idp.us-east-1.amazonaws.com"},
            "endpointUrl must be an https:// URL (http:// only for localhost)",
        ),
        ({"endpointUrl": "https://x/?a=1"}, "endpointUrl must not carry a query"),
        ({"jwksUrl": "http://keys.example.com/jwks.json"}, "jwksUrl must be an https:// URL"),
        ({"jwksUrl": "https://u:p@keys.example.com/j"}, "jwksUrl must not carry credentials"),
        ({"autoConfirm": "yes"}, "autoConfirm must be true or false"),
        ({"accessKeyId": "AKIA"}, "accessKeyId and secretAccessKey go together"),
        ({"secretAccessKey": "sk"}, "accessKeyId and secretAccessKey go together"),
        ({"sessionToken": "t"}, "sessionToken needs accessKeyId"),
        ({"refreshTokenValiditySeconds": 10}, "refreshTokenValiditySeconds must be"),
        ({"profileRefreshSeconds": -1}, "profileRefreshSeconds must be a whole number between 0"),
        ({"profileRefreshSeconds": 86401}, "profileRefreshSeconds must be"),
        ({"profileRefreshSeconds": 1.5}, "profileRefreshSeconds must be"),
        ({"timeoutSeconds": 0}, "timeoutSeconds must be"),
        ({"timeoutSeconds": 31}, "timeoutSeconds must be"),
        ({"userPool": POOL}, "unknown awsCognito setting(s): userPool;"),
        ({"clientID": CLIENT}, "unknown awsCognito setting(s): clientID;"),
    ],
)
def test_settings_refuse_mistakes_with_a_readable_message(over: dict[str, Any], words: str) -> None:
    raw = {k: v for k, v in settings(**over).items() if v is not None}
    with pytest.raises(ValueError, match=re.escape(words)):
        parse(raw)


# ------------------------------------------------- profileRefreshSeconds marks
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_mark_is_fresh_for_the_window_only() -> None:
    clock = Clock()
    marks: SyncMarks[str] = SyncMarks(60, clock=clock)
    key = mark_key("user-1", "token-a")
    assert not marks.fresh(key)
    marks.mark(key)
    clock.now += 59.9
    assert marks.fresh(key)
    assert not marks.fresh(mark_key("user-1", "token-b"))  # per token
    assert not marks.fresh(mark_key("user-2", "token-a"))  # and per user id
    clock.now += 0.1
    assert not marks.fresh(key)


def test_zero_keeps_no_marks() -> None:
    marks: SyncMarks[str] = SyncMarks(0, clock=Clock())
    marks.mark(b"k")
    assert not marks.fresh(b"k") and len(marks) == 0


def test_marks_are_bounded_and_expired_ones_dropped() -> None:
    clock = Clock()
    marks: SyncMarks[str] = SyncMarks(10, clock=clock, limit=3)
    for key in (b"a", b"b", b"c", b"d"):
        marks.mark(key)
    # Past the bound the oldest goes: that costs one more ask, never staleness.
    assert len(marks) == 3 and not marks.fresh(b"a") and marks.fresh(b"b")
    marks.mark(b"b")  # marked again: now the newest
    clock.now += 10
    marks.mark(b"e")
    assert len(marks) == 1 and marks.fresh(b"e")


def test_asks_for_one_key_share_one_fetch_and_mark_only_on_success() -> None:
    async def main() -> None:
        marks: SyncMarks[str] = SyncMarks(60, clock=Clock())
        calls = 0
        gate = asyncio.Event()

        async def fetch() -> str:
            nonlocal calls
            calls += 1
            await gate.wait()
            return "answer"

        waiters = [asyncio.ensure_future(marks.ask(b"k", fetch)) for _ in range(5)]
        await asyncio.sleep(0)
        waiters[0].cancel()  # a caller that hangs up leaves the others their answer
        gate.set()
        assert await asyncio.gather(*waiters[1:]) == ["answer"] * 4
        assert calls == 1 and marks.fresh(b"k")

        async def refused() -> str:
            nonlocal calls
            calls += 1
            raise Unauthenticated("INVALID_TOKEN", "refused")

        for _ in range(2):
            with pytest.raises(Unauthenticated):
                await marks.ask(b"dead", refused)
        # Not marked: a refused token is asked about again on its next call.
        assert calls == 3 and not marks.fresh(b"dead")

    asyncio.run(main())


# --------------------------------------------------------------- error table
def client_error(code: str, message: str = "upstream text", status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "InitiateAuth")


ROWS = [
    ("NotAuthorizedException", op.LOGIN, Unauthenticated, "INVALID_CREDENTIALS"),
    ("UserNotFoundException", op.LOGIN, Unauthenticated, "INVALID_CREDENTIALS"),
    ("NotAuthorizedException", op.REFRESH, Unauthenticated, "INVALID_REFRESH_TOKEN"),
    ("NotAuthorizedException", op.GET_USER, Unauthenticated, "INVALID_TOKEN"),
    ("NotAuthorizedException", op.CHANGE_PASSWORD, Unauthenticated, "INVALID_CREDENTIALS"),
    ("NotAuthorizedException", op.REGISTER, PermissionDenied, "SIGN_UP_NOT_ALLOWED"),
    (
        "NotAuthorizedException",
        op.FORGOT_PASSWORD,
        FailedPrecondition,
        "PASSWORD_RESET_NOT_ALLOWED",
    ),
    ("UserNotFoundException", op.FORGOT_PASSWORD, NotFound, "USER_NOT_FOUND"),
    ("UserNotFoundException", op.CONFIRM_FORGOT_PASSWORD, InvalidArgument, "INVALID_CODE"),
    ("UserNotConfirmedException", op.LOGIN, FailedPrecondition, "USER_NOT_CONFIRMED"),
    ("PasswordResetRequiredException", op.LOGIN, FailedPrecondition, "PASSWORD_RESET_REQUIRED"),
    ("UsernameExistsException", op.REGISTER, AlreadyExists, "USER_ALREADY_EXISTS"),
    ("AliasExistsException", op.UPDATE_USER, AlreadyExists, "EMAIL_ALREADY_IN_USE"),
    ("InvalidPasswordException", op.REGISTER, InvalidArgument, "INVALID_PASSWORD"),
    ("InvalidParameterException", op.REGISTER, InvalidArgument, "INVALID_PARAMETER"),
    ("InvalidParameterException", op.LOGIN, FailedPrecondition, "PROVIDER_MISCONFIGURED"),
    ("CodeMismatchException", op.CONFIRM_FORGOT_PASSWORD, InvalidArgument, "INVALID_CODE"),
    ("ExpiredCodeException", op.CONFIRM_FORGOT_PASSWORD, InvalidArgument, "EXPIRED_CODE"),
    ("TooManyRequestsException", op.LOGIN, ResourceExhausted, "TOO_MANY_REQUESTS"),
    ("LimitExceededException", op.FORGOT_PASSWORD, ResourceExhausted, "LIMIT_EXCEEDED"),
    ("TooManyFailedAttemptsException", op.LOGIN, ResourceExhausted, "TOO_MANY_FAILED_ATTEMPTS"),
    ("UserLambdaValidationException", op.REGISTER, PermissionDenied, "REJECTED_BY_USER_POOL"),
    ("CodeDeliveryFailureException", op.REGISTER, Unavailable, "CODE_DELIVERY_FAILED"),
    ("InternalErrorException", op.LOGIN, Unavailable, "UPSTREAM_ERROR"),
    ("ResourceNotFoundException", op.LOGIN, FailedPrecondition, "PROVIDER_MISCONFIGURED"),
    (
        "UnrecognizedClientException",
        op.CONFIRM_SIGN_UP,
        FailedPrecondition,
        "PROVIDER_MISCONFIGURED",
    ),
    # The admin API's erasure: the provider treats NotFound as done.
    ("UserNotFoundException", op.DELETE_ACCOUNT, NotFound, "UPSTREAM_USER_NOT_FOUND"),
    ("AccessDeniedException", op.DELETE_ACCOUNT, FailedPrecondition, "PROVIDER_MISCONFIGURED"),
    ("NotAuthorizedException", op.DELETE_ACCOUNT, FailedPrecondition, "PROVIDER_MISCONFIGURED"),
    ("ResourceNotFoundException", op.DELETE_ACCOUNT, FailedPrecondition, "PROVIDER_MISCONFIGURED"),
]


@pytest.mark.parametrize(("code", "operation", "cls", "reason"), ROWS)
def test_every_cognito_error_maps_to_one_status_and_reason(
    code: str, operation: str, cls: type[ProviderError], reason: str
) -> None:
    err = translate(client_error(code, message="Cognito says SECRET-ECHO a@b.com"), operation)
    assert type(err) is cls
    assert err.reason == reason
    assert "SECRET-ECHO" not in err.message and "a@b.com" not in err.message
    if cls is ResourceExhausted or cls is Unavailable:
        assert err.retry_after is not None and err.retry_after >= 1


def test_unknown_code_is_generic_and_logged_by_code_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="providers.cognito.errors"):
        err = translate(client_error("BrandNewException", "pw=hunter2"), op.LOGIN)
    assert type(err) is ProviderError and err.code == "INTERNAL"
    # Not UPSTREAM_ERROR (an outage, retryable): an unmapped answer is ours to fix.
    assert err.reason == "UPSTREAM_UNMAPPED_ERROR" and "hunter2" not in err.message
    assert err.retry_after is None
    assert "BrandNewException" in caplog.text and "hunter2" not in caplog.text


def test_unknown_server_side_code_is_unavailable() -> None:
    err = translate(client_error("Weird", status=503), op.LOGIN)
    assert isinstance(err, Unavailable) and err.retry_after


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "UPSTREAM_UNAVAILABLE"),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), "UPSTREAM_TIMEOUT"),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "UPSTREAM_TIMEOUT"),
    ],
)
def test_transport_failures_are_unavailable(exc: Exception, reason: str) -> None:
    err = translate(exc, op.LOGIN)
    assert isinstance(err, Unavailable) and err.reason == reason and err.retry_after


def test_missing_admin_credentials_are_a_misconfiguration() -> None:
    err = translate(NoCredentialsError(), op.CONFIRM_SIGN_UP)
    assert isinstance(err, FailedPrecondition) and err.reason == "PROVIDER_MISCONFIGURED"


def test_botocore_parameter_limits_are_invalid_argument() -> None:
    err = translate(ParamValidationError(report="Password too long: 'hunter2'"), op.LOGIN)
    assert isinstance(err, InvalidArgument) and "hunter2" not in err.message


# ---------------------------------------------------------------- attributes
def test_writable_attributes_keep_standard_and_custom_ones_as_text() -> None:
    data = {"nickname": "n", "custom:terms_optin1": 1.0, "custom:score": 2.5, "password": "x"}
    assert writable_attributes(data, skip=("password",)) == {
        "nickname": "n",
        "custom:terms_optin1": "1",
        "custom:score": "2.5",
    }


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"isAdmin": "1"}, "UNKNOWN_ATTRIBUTE"),
        ({"email_verified": "true"}, "UNKNOWN_ATTRIBUTE"),
        ({"custom:": "1"}, "UNKNOWN_ATTRIBUTE"),
        ({"nickname": True}, "INVALID_ATTRIBUTE_VALUE"),
        ({"nickname": {"a": 1}}, "INVALID_ATTRIBUTE_VALUE"),
        ({"nickname": "x" * 2049}, "FIELD_TOO_LONG"),
    ],
)
def test_writable_attributes_refuse_what_users_may_not_set(
    data: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        writable_attributes(data, skip=())
    assert caught.value.reason == reason


@pytest.mark.parametrize("email", ["plain", "@x.com", "a@", "a b@x.com"])
def test_email_must_look_like_one(email: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        email_of({"email": email})
    assert caught.value.reason == "INVALID_EMAIL"


def test_get_user_attributes_hide_sub() -> None:
    reply = {"UserAttributes": [{"Name": "sub", "Value": "s"}, {"Name": "email", "Value": "e"}]}
    assert attributes_of(reply) == {"email": "e"}


# ------------------------------------------------------------------ verifier
@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


MOTO_KEY = load_resource("cognitoidp/resources/jwks-private.json")


def forge(claims: dict[str, Any], *, kid: str = str(MOTO_KEY["kid"]), alg: str = "RS256") -> str:
    """A token signed with moto's own key, as any moto pool would sign it."""
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "sub": "3bd439c2-8ffe-416e-94ed-456f83a91848",
        "username": "3bd439c2-8ffe-416e-94ed-456f83a91848",
        "client_id": CLIENT,
        "token_use": "access",
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    if alg == "HS256":
        return jwt.encode(payload, "x" * 32, algorithm="HS256", headers={"kid": kid})
    key = RSAAlgorithm.from_jwk(json.dumps(MOTO_KEY))
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})  # type: ignore[arg-type]


class VerifyContext:
    """The part of ProviderContext the access-token check uses: the pooled
    HTTP client and the clock (the store and boto3 are never reached)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    def now(self) -> int:
        return int(time.time())


def provider(moto_url: str, http: httpx.AsyncClient, *, jwks: str | None = None) -> CognitoProvider:
    over: dict[str, Any] = {"endpointUrl": moto_url}
    if jwks is not None:
        over["jwksUrl"] = jwks
    # Without jwksUrl the keys are fetched from {endpointUrl}/{pool}/.well-known/jwks.json,
    # which is where moto publishes them.
    return CognitoProvider(parse(settings(**over)), VerifyContext(http))  # type: ignore[arg-type]


def verify(moto_url: str, token: str, *, jwks: str | None = None, **kw: Any) -> AccessClaims:
    async def main() -> AccessClaims:
        async with httpx.AsyncClient() as http:
            return await provider(moto_url, http, jwks=jwks)._verify(token, **kw)

    return asyncio.run(main())


def refused(moto_url: str, token: str, **kw: Any) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        verify(moto_url, token, **kw)
    return caught.value


def refusal(moto_url: str, token: str, **kw: Any) -> str:
    return refused(moto_url, token, **kw).reason


def test_verifier_accepts_a_token_of_this_pool_and_client(moto_url: str) -> None:
    now = int(time.time())
    claims = verify(moto_url, forge({"username": "alice", "iat": now, "exp": now + 3600}))
    assert claims == AccessClaims(
        sub="3bd439c2-8ffe-416e-94ed-456f83a91848", username="alice", iat=now, exp=now + 3600
    )


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Other"}, "WRONG_ISSUER"),
        ({"iss": None}, "WRONG_ISSUER"),
        ({"client_id": "someone-else"}, "WRONG_AUDIENCE"),
        # An ID token of the same client carries `aud`, not `client_id`.
        ({"client_id": None, "aud": CLIENT}, "WRONG_AUDIENCE"),
        ({"token_use": "id"}, "WRONG_TOKEN_TYPE"),
        ({"token_use": None}, "WRONG_TOKEN_TYPE"),
        ({"exp": from_now(-120)}, "TOKEN_EXPIRED"),
        ({"iat": from_now(600)}, "TOKEN_NOT_YET_VALID"),
        ({"nbf": from_now(600)}, "TOKEN_NOT_YET_VALID"),
        ({"iat": None}, "MISSING_CLAIM"),
        ({"exp": None}, "MISSING_CLAIM"),
        ({"username": None}, "MISSING_CLAIM"),
        ({"iat": "yesterday"}, "MALFORMED_TOKEN"),
    ],
)
def test_verifier_checks_more_than_the_signature(
    moto_url: str, claims: dict[str, Any], reason: str
) -> None:
    assert refusal(moto_url, forge(at_run_time(claims))) == reason


@pytest.mark.parametrize("claim", ["iat", "exp", "username"])
def test_missing_claim_is_named(moto_url: str, claim: str) -> None:
    err = refused(moto_url, forge({claim: None}))
    assert (err.reason, err.metadata) == ("MISSING_CLAIM", {"claim": claim})


def test_wrong_token_type_names_the_claim(moto_url: str) -> None:
    err = refused(moto_url, forge({"token_use": "id"}))
    assert (err.reason, err.metadata) == ("WRONG_TOKEN_TYPE", {"claim": "token_use"})


def test_verifier_refuses_other_algorithms_unknown_keys_and_garbage(moto_url: str) -> None:
    assert refusal(moto_url, forge({}, alg="HS256")) == "ALGORITHM_NOT_ALLOWED"
    # Only RS256: a (well-formed) token of another asymmetric algorithm is refused too.
    assert refusal(moto_url, forge({}, alg="RS512")) == "ALGORITHM_NOT_ALLOWED"
    assert refusal(moto_url, forge({}, kid="not-published")) == "UNKNOWN_SIGNING_KEY"
    assert refusal(moto_url, "not.a.jwt") == "MALFORMED_TOKEN"
    assert refusal(moto_url, "x" * 9000) == "MALFORMED_TOKEN"
    # Three parts, but longer than any token may be: refused before it is parsed.
    assert refusal(moto_url, f"a.{'b' * MAX_TOKEN_CHARS}.c") == "MALFORMED_TOKEN"
    tampered = forge({"username": "alice"})
    head, _, sig = tampered.split(".")
    other_body = forge({"username": "mallory"}).split(".")[1]
    assert refusal(moto_url, f"{head}.{other_body}.{sig}") == "BAD_SIGNATURE"


def test_verifier_reads_an_expired_token_only_when_asked(moto_url: str) -> None:
    token = forge({"exp": int(time.time()) - 120, "username": "bob"})
    assert verify(moto_url, token, allow_expired=True).username == "bob"
    # Everything else is still checked on that path.
    other = forge({"exp": int(time.time()) - 120, "client_id": "x"})
    assert refusal(moto_url, other, allow_expired=True) == "WRONG_AUDIENCE"


def test_a_verified_token_is_served_from_the_verifier_cache(moto_url: str) -> None:
    token = forge({"username": "carol"})

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            p = provider(moto_url, http)
            verifier = p._verifier
            assert verifier.jwks_fetches == 0
            first = await p._verify(token)
            assert verifier.jwks_fetches == 1
            # The same token again: its claims come from the cache, not a
            # second signature check, and the key set is not fetched again.
            cached = await verifier.verify(token)
            assert cached is await verifier.verify(token)
            assert await p._verify(token) == first
            assert verifier.jwks_fetches == 1
            # Another token of the same key is checked afresh, with the cached keys.
            other = await p._verify(forge({"username": "dave"}))
            assert other.username == "dave" and verifier.jwks_fetches == 1

    asyncio.run(main())


def test_an_expired_token_read_for_a_refresh_is_not_cached_as_valid(moto_url: str) -> None:
    token = forge({"exp": int(time.time()) - 120, "username": "erin"})

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            p = provider(moto_url, http)
            assert (await p._verify(token, allow_expired=True)).username == "erin"
            with pytest.raises(Unauthenticated) as caught:
                await p._verify(token)
            assert caught.value.reason == "TOKEN_EXPIRED"

    asyncio.run(main())


def test_verifier_jwks_unreachable_is_unavailable(moto_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    with pytest.raises(Unavailable):
        verify(moto_url, forge({}), jwks=dead)
