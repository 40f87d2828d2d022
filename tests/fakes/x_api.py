"""A local stand-in for the X API v2 `GET /2/users/me`, with X's reply
(`{"data": {"id", "name", "username"}}`) and problem-JSON error shapes:
401 for an unknown/expired token, 403 for a token that may not read users,
429 with the `x-rate-limit-*` headers."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from tests.fakes.threaded_http import StubServer

PROBLEM = {"content-type": "application/problem+json"}


@dataclass
class XUser:
    id: str
    name: str
    username: str


class FakeXApi(StubServer):
    def __init__(self) -> None:
        self.tokens: dict[str, XUser] = {}
        self.forbidden: set[str] = set()
        # Tokens whose calls answer 429 (the app's or user's window is spent).
        self.throttled: set[str] = set()
        self.reset_in = 120
        super().__init__()

    @property
    def url(self) -> str:
        return self.base_url

    def issue(self, user: XUser) -> str:
        token = secrets.token_urlsafe(60)
        self.tokens[token] = user
        return token

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def error_reply(self) -> tuple[int, Any, dict[str, str]]:
        return (
            503,
            {
                "title": "Service Unavailable",
                "detail": "Service Unavailable",
                "type": "about:blank",
                "status": 503,
            },
            dict(PROBLEM),
        )

    def respond(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        if method != "GET" or path != "/2/users/me":
            return (
                404,
                {
                    "title": "Not Found Error",
                    "detail": "Sorry, that page does not exist.",
                    "type": "https://api.twitter.com/2/problems/resource-not-found",
                    "status": 404,
                },
                dict(PROBLEM),
            )
        scheme, _, token = headers.get("authorization", "").partition(" ")
        user = self.tokens.get(token) if scheme == "Bearer" else None
        if user is None:
            return (
                401,
                {
                    "title": "Unauthorized",
                    "type": "about:blank",
                    "status": 401,
                    "detail": "Unauthorized",
                },
                dict(PROBLEM),
            )
        if token in self.throttled:
            reset = int(time.time()) + self.reset_in
            return (
                429,
                {
                    "title": "Too Many Requests",
                    "detail": "Too Many Requests",
                    "type": "about:blank",
                    "status": 429,
                },
                {
                    **PROBLEM,
                    "x-rate-limit-limit": "75",
                    "x-rate-limit-remaining": "0",
                    "x-rate-limit-reset": str(reset),
                },
            )
        if token in self.forbidden:
            return (
                403,
                {
                    "title": "Forbidden",
                    "detail": "Forbidden",
                    "type": "about:blank",
                    "status": 403,
                },
                dict(PROBLEM),
            )
        return (
            200,
            {"data": {"id": user.id, "name": user.name, "username": user.username}},
            {
                "x-rate-limit-limit": "75",
                "x-rate-limit-remaining": "74",
                "x-rate-limit-reset": str(int(time.time()) + 900),
            },
        )
