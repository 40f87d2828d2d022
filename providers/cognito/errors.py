"""THE one table from Cognito errors to domain errors.

A Cognito error code alone is not enough: NotAuthorizedException means "wrong
password" on login, "bad refresh token" on refresh and "token refused" on
GetUser. So rows are keyed on (code, operation), with operation None as the
fallback for every other operation.

Cognito's own message never reaches a client (it can echo the username or
the token back); unknown codes are logged by code only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from providers.kit.meter import ERROR, TIMEOUT, UNREACHABLE, upstream_outcome
from providers.values import (
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

log = logging.getLogger(__name__)

# Our operation names, used as the second half of a table key.
REGISTER: Final = "register"
CONFIRM_SIGN_UP: Final = "confirm_sign_up"
LOGIN: Final = "login"
REAUTHENTICATE: Final = "reauthenticate"
REFRESH: Final = "refresh"
GET_USER: Final = "get_user"
UPDATE_USER: Final = "update_user"
CHANGE_PASSWORD: Final = "change_password"
FORGOT_PASSWORD: Final = "forgot_password"
CONFIRM_FORGOT_PASSWORD: Final = "confirm_forgot_password"
LOGOUT: Final = "logout"
DELETE_ACCOUNT: Final = "delete_account"


@dataclass(frozen=True)
class Rule:
    error: type[ProviderError]
    reason: str
    message: str
    retry_after: float | None = None

    def build(self) -> ProviderError:
        return self.error(
            self.reason,
            self.message,
            metadata={"provider": "awsCognito"},
            retry_after=self.retry_after,
        )


_BAD_CREDENTIALS = Rule(Unauthenticated, "INVALID_CREDENTIALS", "wrong email or password")
_BAD_REFRESH = Rule(
    Unauthenticated,
    "INVALID_REFRESH_TOKEN",
    "the refresh token is invalid, expired or revoked; sign in again",
)
_MISCONFIGURED = Rule(
    FailedPrecondition,
    "PROVIDER_MISCONFIGURED",
    "the Cognito user pool or app client of this project is misconfigured; contact the operator",
)
_UPSTREAM_ERROR = Rule(
    Unavailable, "UPSTREAM_ERROR", "Cognito could not complete the request; try again later", 1.0
)
_INVALID_CODE = Rule(InvalidArgument, "INVALID_CODE", "the confirmation code is wrong")
# The admin API's erasure runs on the project's AWS credentials, not on a
# user's token: a refusal is the operator's IAM policy.
_MAY_NOT_DELETE = Rule(
    FailedPrecondition,
    "PROVIDER_MISCONFIGURED",
    "the AWS credentials of this project may not delete users of the user pool"
    " (IAM permission cognito-idp:AdminDeleteUser); nothing was erased",
)

TABLE: Final[dict[tuple[str, str | None], Rule]] = {
    # --- who the user is
    ("NotAuthorizedException", None): Rule(
        Unauthenticated, "INVALID_TOKEN", "the user pool refused the access token; sign in again"
    ),
    ("NotAuthorizedException", LOGIN): _BAD_CREDENTIALS,
    ("NotAuthorizedException", REAUTHENTICATE): _BAD_CREDENTIALS,
    ("NotAuthorizedException", CHANGE_PASSWORD): Rule(
        Unauthenticated,
        "INVALID_CREDENTIALS",
        "previousPassword is not the current password, or the session was revoked",
    ),
    ("NotAuthorizedException", REFRESH): _BAD_REFRESH,
    ("NotAuthorizedException", REGISTER): Rule(
        PermissionDenied, "SIGN_UP_NOT_ALLOWED", "this user pool does not allow self sign-up"
    ),
    ("NotAuthorizedException", FORGOT_PASSWORD): Rule(
        FailedPrecondition,
        "PASSWORD_RESET_NOT_ALLOWED",
        "this user cannot reset the password here; contact the operator",
    ),
    ("NotAuthorizedException", CONFIRM_FORGOT_PASSWORD): Rule(
        FailedPrecondition,
        "PASSWORD_RESET_NOT_ALLOWED",
        "this user cannot reset the password here; contact the operator",
    ),
    ("NotAuthorizedException", CONFIRM_SIGN_UP): _MISCONFIGURED,
    ("UserNotFoundException", None): Rule(NotFound, "USER_NOT_FOUND", "no such user"),
    # Login must not tell "no such user" from "wrong password".
    ("UserNotFoundException", LOGIN): _BAD_CREDENTIALS,
    ("UserNotFoundException", REAUTHENTICATE): _BAD_CREDENTIALS,
    ("UserNotFoundException", REFRESH): _BAD_REFRESH,
    ("UserNotFoundException", CONFIRM_FORGOT_PASSWORD): _INVALID_CODE,
    ("UserNotFoundException", GET_USER): Rule(
        Unauthenticated, "INVALID_TOKEN", "the user of this token no longer exists"
    ),
    # Already gone upstream: the erasure treats this one as done.
    ("UserNotFoundException", DELETE_ACCOUNT): Rule(
        NotFound, "UPSTREAM_USER_NOT_FOUND", "the user no longer exists in the user pool"
    ),
    ("UserNotConfirmedException", None): Rule(
        FailedPrecondition,
        "USER_NOT_CONFIRMED",
        "the email address is not confirmed yet; follow the link or code sent by email",
    ),
    ("PasswordResetRequiredException", None): Rule(
        FailedPrecondition,
        "PASSWORD_RESET_REQUIRED",
        "the password must be reset first; use forgot-password",
    ),
    ("UserLambdaValidationException", None): Rule(
        PermissionDenied, "REJECTED_BY_USER_POOL", "the user pool's rules refused this request"
    ),
    ("ForbiddenException", None): Rule(
        PermissionDenied, "REQUEST_FORBIDDEN", "the user pool's firewall refused this request"
    ),
    # --- what the user sent
    ("UsernameExistsException", None): Rule(
        AlreadyExists, "USER_ALREADY_EXISTS", "a user with this email already exists"
    ),
    ("AliasExistsException", None): Rule(
        AlreadyExists, "EMAIL_ALREADY_IN_USE", "another user already uses this email"
    ),
    ("InvalidPasswordException", None): Rule(
        InvalidArgument,
        "INVALID_PASSWORD",
        "the password does not meet the user pool's password policy",
    ),
    ("InvalidParameterException", None): Rule(
        InvalidArgument, "INVALID_PARAMETER", "the user pool refused a field of this request"
    ),
    # On the auth flows the parameters are ours, not the user's: the usual
    # cause is an app client without ALLOW_USER_PASSWORD_AUTH/REFRESH_TOKEN_AUTH.
    ("InvalidParameterException", LOGIN): _MISCONFIGURED,
    ("InvalidParameterException", REAUTHENTICATE): _MISCONFIGURED,
    ("InvalidParameterException", REFRESH): _MISCONFIGURED,
    ("CodeMismatchException", None): _INVALID_CODE,
    ("ExpiredCodeException", None): Rule(
        InvalidArgument, "EXPIRED_CODE", "the confirmation code has expired; request a new one"
    ),
    # --- throttling. Cognito sends no Retry-After; these are its usual windows.
    ("TooManyRequestsException", None): Rule(
        ResourceExhausted, "TOO_MANY_REQUESTS", "too many requests; slow down", 1.0
    ),
    ("ThrottlingException", None): Rule(
        ResourceExhausted, "TOO_MANY_REQUESTS", "too many requests; slow down", 1.0
    ),
    ("LimitExceededException", None): Rule(
        ResourceExhausted, "LIMIT_EXCEEDED", "attempt limit exceeded; try again later", 60.0
    ),
    ("TooManyFailedAttemptsException", None): Rule(
        ResourceExhausted,
        "TOO_MANY_FAILED_ATTEMPTS",
        "too many failed attempts; try again later",
        30.0,
    ),
    # --- the pool itself
    ("CodeDeliveryFailureException", None): Rule(
        Unavailable, "CODE_DELIVERY_FAILED", "the code could not be sent; try again later", 5.0
    ),
    ("InternalErrorException", None): _UPSTREAM_ERROR,
    ("InvalidLambdaResponseException", None): _UPSTREAM_ERROR,
    ("UnexpectedLambdaException", None): _UPSTREAM_ERROR,
    ("ServiceUnavailable", None): _UPSTREAM_ERROR,
    ("ResourceNotFoundException", None): _MISCONFIGURED,
    ("InvalidUserPoolConfigurationException", None): _MISCONFIGURED,
    ("InvalidSmsRoleAccessPolicyException", None): _MISCONFIGURED,
    ("InvalidSmsRoleTrustRelationshipException", None): _MISCONFIGURED,
    ("InvalidEmailRoleAccessPolicyException", None): _MISCONFIGURED,
    # AWS credentials of the admin calls (AdminConfirmSignUp).
    ("UnrecognizedClientException", None): _MISCONFIGURED,
    ("AccessDeniedException", None): _MISCONFIGURED,
    ("InvalidSignatureException", None): _MISCONFIGURED,
    ("ExpiredTokenException", None): _MISCONFIGURED,
    ("AccessDeniedException", DELETE_ACCOUNT): _MAY_NOT_DELETE,
    ("NotAuthorizedException", DELETE_ACCOUNT): _MAY_NOT_DELETE,
}


def rule_for(code: str, operation: str) -> Rule | None:
    return TABLE.get((code, operation)) or TABLE.get((code, None))


def request_outcome(exc: Exception) -> str | None:
    """How a boto3 call that raised went, as an upstream-request outcome
    (providers/kit/meter.py); None when no request left (botocore refused
    the parameters, or found no credentials, before sending)."""
    if isinstance(exc, ClientError):
        response: dict[str, Any] = dict(exc.response)
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return upstream_outcome(status) if isinstance(status, int) else ERROR
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return TIMEOUT
    if isinstance(exc, EndpointConnectionError | BotoConnectionError | HTTPClientError):
        return UNREACHABLE
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ParamValidationError):
        return None
    return ERROR


def translate(exc: Exception, operation: str) -> ProviderError:
    """The domain error for anything a boto3 call raised."""
    if isinstance(exc, ClientError):
        return _client_error(exc, operation)
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        log.warning("cognito %s: timed out (%s)", operation, type(exc).__name__)
        return Unavailable(
            "UPSTREAM_TIMEOUT",
            "Cognito did not answer in time; try again later",
            metadata={"provider": "awsCognito"},
            retry_after=1.0,
        )
    if isinstance(exc, EndpointConnectionError | BotoConnectionError | HTTPClientError):
        log.warning("cognito %s: cannot reach the endpoint (%s)", operation, type(exc).__name__)
        return Unavailable(
            "UPSTREAM_UNAVAILABLE",
            "Cognito cannot be reached; try again later",
            metadata={"provider": "awsCognito"},
            retry_after=1.0,
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        log.error("cognito %s: no AWS credentials for an admin call", operation)
        return _MISCONFIGURED.build()
    if isinstance(exc, ParamValidationError):
        # botocore checks Cognito's length and pattern limits before sending;
        # the input came from the client. Its report quotes the input: not logged.
        return InvalidArgument(
            "INVALID_PARAMETER",
            "a field of this request is too long or malformed for the user pool",
            metadata={"provider": "awsCognito"},
        )
    if isinstance(exc, BotoCoreError):
        log.error("cognito %s: botocore failed (%s)", operation, type(exc).__name__)
    else:
        log.error("cognito %s: unexpected %s", operation, type(exc).__name__)
    return _generic()


def _client_error(exc: ClientError, operation: str) -> ProviderError:
    response: dict[str, Any] = dict(exc.response)
    code = str((response.get("Error") or {}).get("Code") or "")
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    rule = rule_for(code, operation)
    if rule is not None:
        if rule.reason == _MISCONFIGURED.reason or rule.error is Unavailable:
            log.error("cognito %s: %s (HTTP %s)", operation, code, status)
        return rule.build()
    # Logged by code and status only: the message can echo the user's input.
    log.error("cognito %s: unmapped error code %.80r (HTTP %s)", operation, code, status)
    if status >= 500:
        return _UPSTREAM_ERROR.build()
    return _generic()


def _generic() -> ProviderError:
    # Not UPSTREAM_ERROR (an outage, retryable): an answer the table does not
    # know is ours to fix, so INTERNAL, with its own reason.
    return ProviderError(
        "UPSTREAM_UNMAPPED_ERROR",
        "Cognito could not complete the request; quote the requestId when reporting it",
        metadata={"provider": "awsCognito"},
    )
