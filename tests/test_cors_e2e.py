"""Browser apps on allowed origins can call the REST API; others get no CORS
grant, so the browser blocks them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness import Stack, start_stack

PROJECT = str(uuid.uuid4())
APP = "https://app.example.com"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    config = {"projects": [{"id": PROJECT, "name": "web", "providers": {"anonymous": {}}}]}
    s = start_stack(
        tmp_path_factory.mktemp("cors"), config, db_url=db_url, env={"IDENTIFY_CORS_ORIGINS": APP}
    )
    yield s
    s.stop()


def test_preflight_from_allowed_origin(stack: Stack) -> None:
    with stack.client() as http:
        reply = http.options(
            "/v1/user/login",
            headers={
                "origin": APP,
                "access-control-request-method": "PUT",
                "access-control-request-headers": "content-type, authorization",
            },
        )
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == APP
    assert "PUT" in reply.headers["access-control-allow-methods"]
    assert "authorization" in reply.headers["access-control-allow-headers"]


def test_call_from_allowed_origin_is_granted(stack: Stack) -> None:
    body = {"projectId": PROJECT, "provider": "anonymous", "data": {"deviceId": str(uuid.uuid4())}}
    with stack.client() as http:
        reply = http.put("/user/login", json=body, headers={"origin": APP})
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == APP


def test_other_origins_get_no_grant(stack: Stack) -> None:
    with stack.client() as http:
        reply = http.options(
            "/v1/user/login",
            headers={"origin": "https://evil.example.net", "access-control-request-method": "PUT"},
        )
    assert "access-control-allow-origin" not in reply.headers
