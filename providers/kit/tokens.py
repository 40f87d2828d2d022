"""Rules every provider that checks a token shares: how long a token may be,
where the bearer comes from, and when a genuine token is still refused
because the user's sessions were revoked after it was issued."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from providers.values import InvalidArgument, Request, Unauthenticated, User

# The one bound on any token a client sends (Authorization header,
# accessToken, refreshToken). Real ones are well below it (Google ID tokens
# ~1-2 KB, Cognito ~1-2 KB, Azure AD with many groups ~6 KB); the servers
# accept metadata this large, so the refusal is ours and says so.
MAX_TOKEN_CHARS = 16 * 1024
# Every token format we meet (JWTs, RFC 6750 b64token, Graph and X tokens) is
# visible ASCII. Anything else cannot be a token, and passed on it would break
# the upstream call it travels in (CR/LF or non-ASCII in an Authorization
# header). fullmatch: `$` would let a trailing newline through.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def bounded_token(value: str, field: str) -> str | None:
    """A token field as sent, None when empty; FIELD_TOO_LONG when too long,
    UNAUTHENTICATED MALFORMED_TOKEN when it has a character no token has."""
    if not value:
        return None
    if len(value) > MAX_TOKEN_CHARS:
        raise InvalidArgument(
            "FIELD_TOO_LONG",
            f"{field} is longer than {MAX_TOKEN_CHARS} characters",
            metadata={"field": field},
        )
    if not _TOKEN.fullmatch(value):
        raise Unauthenticated(
            "MALFORMED_TOKEN",
            f"{field} may hold visible ASCII characters only",
            metadata={"field": field},
        )
    return value


def data_token(data: Mapping[str, Any], key: str) -> str | None:
    """A token sent inside `data` (awsCognito's `data.refreshToken`), held
    to the rule of every token; None when absent."""
    value = data.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidArgument(
            "MISSING_FIELD", f"data.{key} must be a string", metadata={"field": key}
        )
    return bounded_token(value, key)


def require_bearer(req: Request) -> str:
    if not req.bearer:
        raise Unauthenticated(
            "MISSING_BEARER_TOKEN", "an Authorization: Bearer <token> header is required"
        )
    return req.bearer


def refuse_if_revoked(user: User, issued_at: float | None) -> None:
    """A token issued before the user's sessions were revoked (logout) is
    refused, however genuine. Tokens that say nothing of when they were
    issued cannot be held to this."""
    if issued_at is not None and user.valid_after and issued_at < user.valid_after:
        raise token_revoked()


def token_revoked() -> Unauthenticated:
    return Unauthenticated(
        "TOKEN_REVOKED",
        "the token was issued before the user's sessions were revoked; sign in again",
    )
