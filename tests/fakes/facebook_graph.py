"""A local stand-in for the Facebook Graph API: `GET /debug_token` and
`GET /me`, with Graph's reply and error shapes (HTTP 400 +
`{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`).

Tokens are registered per test; each knows its app, user and expiry, so a
test can hand out a valid token, an expired one, one of another app, or
revoke it. `/me` enforces `appsecret_proof` like an app that requires it."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from tests.fakes.threaded_http import StubServer

API_VERSION = "v23.0"
_VERSIONED = re.compile(r"^/v\d+\.\d+(/.*)$")


@dataclass
class GraphUser:
    id: str
    name: str
    email: str | None = None


@dataclass
class GraphToken:
    user: GraphUser
    app_id: str
    # 0 means "never expires", as Graph reports long-lived page/user tokens.
    expires_at: int
    valid: bool = True
    issued_at: int | None = None
    type: str = "USER"


def _trace() -> str:
    return secrets.token_urlsafe(8)


def graph_error(
    message: str, code: int, *, subcode: int | None = None, type_: str = "OAuthException"
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": type_,
        "code": code,
        "fbtrace_id": _trace(),
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


class FakeGraph(StubServer):
    def __init__(self, apps: dict[str, str]) -> None:
        """apps: app id -> app secret of every app Graph knows."""
        self.apps = dict(apps)
        self.tokens: dict[str, GraphToken] = {}
        # Apps whose calls answer Graph's "(#4) Application request limit reached".
        self.throttled_apps: set[str] = set()
        super().__init__()

    @property
    def url(self) -> str:
        return f"{self.base_url}/{API_VERSION}"

    # ---- token factory ------------------------------------------------
    def issue(
        self,
        app_id: str,
        user: GraphUser,
        *,
        expires_in: int | None = 3600,
        issued_at: int | None = None,
    ) -> str:
        token = "EAA" + secrets.token_urlsafe(48)
        expires_at = 0 if expires_in is None else int(time.time()) + expires_in
        self.tokens[token] = GraphToken(user, app_id, expires_at, issued_at=issued_at)
        return token

    def invalidate(self, token: str) -> None:
        """As when the user logs out of Facebook or changes the password."""
        self.tokens[token].valid = False

    # ---- endpoints ----------------------------------------------------
    def error_reply(self) -> tuple[int, Any, dict[str, str]]:
        return (
            500,
            graph_error("An unexpected error has occurred. Please retry your request later.", 2),
            {},
        )

    def respond(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        m = _VERSIONED.match(path)
        path = m.group(1) if m else path
        if method == "GET" and path == "/debug_token":
            return self._debug_token(query)
        if method == "GET" and path == "/me":
            return self._me(query)
        return 400, graph_error(f"Unknown path components: {path}", 2500), {}

    def _debug_token(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        app_id, _, secret = query.get("access_token", "").partition("|")
        if not secret or self.apps.get(app_id) != secret:
            return 400, graph_error("Invalid OAuth access token signature.", 190), {}
        if app_id in self.throttled_apps:
            return 400, graph_error("(#4) Application request limit reached", 4), {}
        if "input_token" not in query:
            return 400, graph_error("(#100) The parameter input_token is required", 100), {}
        tok = self.tokens.get(query["input_token"])
        if tok is None:
            return (
                200,
                {
                    "data": {
                        "error": {
                            "code": 190,
                            "message": "Invalid OAuth access token - Cannot parse access token",
                        },
                        "is_valid": False,
                        "scopes": [],
                    }
                },
                {},
            )
        data: dict[str, Any] = {
            "app_id": tok.app_id,
            "type": tok.type,
            "application": f"App {tok.app_id}",
            "data_access_expires_at": int(time.time()) + 90 * 86400,
            "expires_at": tok.expires_at,
            "is_valid": True,
            "scopes": ["email", "public_profile"],
            "user_id": tok.user.id,
        }
        if tok.issued_at is not None:
            data["issued_at"] = tok.issued_at
        if self._expired(tok):
            data["is_valid"] = False
            data["error"] = {
                "code": 190,
                "message": "Error validating access token: Session has expired.",
                "subcode": 463,
            }
        elif not tok.valid:
            data["is_valid"] = False
            data["error"] = {
                "code": 190,
                "message": "Error validating access token: The session has been invalidated.",
                "subcode": 460,
            }
        return 200, {"data": data}, {}

    def _me(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        token = query.get("access_token", "")
        tok = self.tokens.get(token)
        if tok is None:
            return (
                400,
                graph_error("Invalid OAuth access token - Cannot parse access token", 190),
                {},
            )
        if self._expired(tok):
            return (
                400,
                graph_error(
                    "Error validating access token: Session has expired.", 190, subcode=463
                ),
                {},
            )
        if not tok.valid:
            return (
                400,
                graph_error(
                    "Error validating access token: The session has been invalidated.",
                    190,
                    subcode=460,
                ),
                {},
            )
        secret = self.apps[tok.app_id]
        proof = hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        if query.get("appsecret_proof") != proof:
            return (
                400,
                graph_error(
                    "Invalid appsecret_proof provided in the API argument",
                    100,
                    type_="GraphMethodException",
                ),
                {},
            )
        fields = query.get("fields", "id,name").split(",")
        body: dict[str, Any] = {"id": tok.user.id}
        if "name" in fields:
            body["name"] = tok.user.name
        if "email" in fields and tok.user.email:
            body["email"] = tok.user.email
        return 200, body, {}

    @staticmethod
    def _expired(tok: GraphToken) -> bool:
        return tok.expires_at != 0 and tok.expires_at <= time.time()
