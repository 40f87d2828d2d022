"""awsCognito below the edge: settings, the error table, attribute handling,
and the access-token verifier against moto's real JWKS endpoint (tokens are
forged with moto's published signing key to reach every refusal)."""

from __future__ import annotations

import asyncio
import json
import logging
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

from providers import cognito_errors as op
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
from providers.cognito_errors import translate
from providers.cognito_profile import attributes_of, email_of, writable_attributes
from providers.cognito_settings import CognitoSettings
from providers.cognito_tokens import AccessClaims, AccessTokenVerifier
from tests.harness import free_port

REGION = "us-east-1"
POOL = "us-east-1_AbC123"
CLIENT = "client1"
ISSUER = f"https://cognito-idp.{REGION}.amazonaws.com/{POOL}"


def settings(**over: Any) -> dict[str, Any]:
    return {"region": REGION, "userPoolId": POOL, "clientId": CLIENT, **over}


# ------------------------------------------------------------------ settings
def test_settings_defaults_build_issuer_and_jwks_from_region_and_pool() -> None:
    cfg = CognitoSettings.parse(settings())
    assert cfg.issuer == ISSUER
    assert cfg.jwks_url == f"{ISSUER}/.well-known/jwks.json"
    assert cfg.client_secret is None and cfg.endpoint_url is None
    assert cfg.auto_confirm is False
    assert cfg.refresh_token_validity == 30 * 24 * 3600


def test_settings_emulator_keeps_the_aws_issuer_but_its_own_jwks_url() -> None:
    cfg = CognitoSettings.parse(
        settings(endpointUrl="http://127.0.0.1:5000/", jwksUrl="http://127.0.0.1:5000/x/jwks.json")
    )
    assert cfg.endpoint_url == "http://127.0.0.1:5000"
    assert cfg.jwks_url == "http://127.0.0.1:5000/x/jwks.json"
    assert cfg.issuer == ISSUER


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"region": None}, "region is required"),
        ({"region": "Europe"}, "region must look like"),
        ({"userPoolId": "nopool"}, "userPoolId must look like"),
        ({"userPoolId": "eu-west-1_AbC123"}, "does not belong to region"),
        ({"clientId": ""}, "clientId is required"),
        ({"clientSecret": 5}, "clientSecret is required and must be a non-empty string"),
        ({"endpointUrl": "ftp://x"}, "endpointUrl must be an http(s) URL"),
        ({"jwksUrl": "http://x/j?a=1"}, "must not carry a query"),
        ({"autoConfirm": "yes"}, "autoConfirm must be true or false"),
        ({"accessKeyId": "AKIA"}, "go together"),
        ({"sessionToken": "t"}, "sessionToken needs"),
        ({"refreshTokenValiditySeconds": 10}, "refreshTokenValiditySeconds"),
        ({"timeoutSeconds": 0}, "timeoutSeconds"),
        ({"userPool": POOL}, "unknown awsCognito setting(s): userPool"),
    ],
)
def test_settings_refuse_mistakes_with_a_readable_message(over: dict[str, Any], words: str) -> None:
    raw = {k: v for k, v in settings(**over).items() if v is not None}
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        CognitoSettings.parse(raw)


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
    with caplog.at_level(logging.ERROR, logger="providers.cognito_errors"):
        err = translate(client_error("BrandNewException", "pw=hunter2"), op.LOGIN)
    assert type(err) is ProviderError and err.code == "INTERNAL"
    assert err.reason == "UPSTREAM_ERROR" and "hunter2" not in err.message
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


def verify(moto_url: str, token: str, *, jwks: str | None = None, **kw: Any) -> AccessClaims:
    cfg = CognitoSettings.parse(
        settings(endpointUrl=moto_url, jwksUrl=jwks or f"{moto_url}/{POOL}/.well-known/jwks.json")
    )

    async def main() -> AccessClaims:
        async with httpx.AsyncClient() as http:
            return await AccessTokenVerifier(cfg, http).verify(token, **kw)

    return asyncio.run(main())


def refusal(moto_url: str, token: str, **kw: Any) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verify(moto_url, token, **kw)
    return caught.value.reason


def test_verifier_accepts_a_token_of_this_pool_and_client(moto_url: str) -> None:
    claims = verify(moto_url, forge({"username": "alice"}))
    assert claims.username == "alice" and claims.sub.startswith("3bd4")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Other"}, "INVALID_TOKEN"),
        ({"client_id": "someone-else"}, "INVALID_TOKEN"),
        ({"token_use": "id"}, "INVALID_TOKEN"),
        ({"exp": int(time.time()) - 120}, "TOKEN_EXPIRED"),
        ({"iat": int(time.time()) + 600}, "INVALID_TOKEN"),
        ({"iat": None}, "INVALID_TOKEN"),
        ({"username": None}, "INVALID_TOKEN"),
    ],
)
def test_verifier_checks_more_than_the_signature(
    moto_url: str, claims: dict[str, Any], reason: str
) -> None:
    assert refusal(moto_url, forge(claims)) == reason


def test_verifier_refuses_other_algorithms_unknown_keys_and_garbage(moto_url: str) -> None:
    assert refusal(moto_url, forge({}, alg="HS256")) == "INVALID_TOKEN"
    assert refusal(moto_url, forge({}, kid="not-published")) == "UNKNOWN_SIGNING_KEY"
    assert refusal(moto_url, "not.a.jwt") == "INVALID_TOKEN"
    assert refusal(moto_url, "x" * 9000) == "INVALID_TOKEN"
    tampered = forge({"username": "alice"})
    head, _, sig = tampered.split(".")
    other_body = forge({"username": "mallory"}).split(".")[1]
    assert refusal(moto_url, f"{head}.{other_body}.{sig}") == "INVALID_TOKEN"


def test_verifier_reads_an_expired_token_only_when_asked(moto_url: str) -> None:
    token = forge({"exp": int(time.time()) - 120, "username": "bob"})
    assert verify(moto_url, token, allow_expired=True).username == "bob"
    # Everything else is still checked on that path.
    other = forge({"exp": int(time.time()) - 120, "client_id": "x"})
    assert refusal(moto_url, other, allow_expired=True) == "INVALID_TOKEN"


def test_verifier_jwks_unreachable_is_unavailable(moto_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    with pytest.raises(Unavailable):
        verify(moto_url, forge({}), jwks=dead)
