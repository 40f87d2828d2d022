"""`identify rotate-keys` while serving: new profileTokens carry the new key
within the refresh bound, and tokens signed before still verify against the
published JWKS until they expire."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest

from tests.harness import ROOT, Stack, start_stack

PROJECT = str(uuid.uuid4())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    config = {"projects": [{"id": PROJECT, "name": "keys", "providers": {"anonymous": {}}}]}
    s = start_stack(
        tmp_path_factory.mktemp("keys"),
        config,
        db_url=db_url,
        workers=2,
        env={"IDENTIFY_KEY_REFRESH": "0.5"},
    )
    yield s
    s.stop()


def login_token(stack: Stack) -> str:
    body = {"projectId": PROJECT, "provider": "anonymous", "data": {"deviceId": str(uuid.uuid4())}}
    with stack.client() as http:
        return str(http.put("/v1/user/login", json=body).json()["data"]["profileToken"])


def verify(stack: Stack, token: str) -> dict[str, object]:
    with stack.client() as http:
        keys = {k["kid"]: k for k in http.get("/.well-known/jwks.json").json()["keys"]}
    kid = jwt.get_unverified_header(token)["kid"]
    assert kid in keys, "the token's key is not published"
    return dict(jwt.decode(token, jwt.PyJWK(keys[kid]).key, algorithms=["ES256"], audience=PROJECT))


def test_rotation_reaches_every_process_and_keeps_old_tokens_valid(stack: Stack) -> None:
    before = login_token(stack)
    old_kid = jwt.get_unverified_header(before)["kid"]
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "rotate-keys", "--db", stack.db_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "1 retired" in out.stdout
    time.sleep(1.5)
    # Both server processes now sign with the new key.
    kids = {jwt.get_unverified_header(login_token(stack))["kid"] for _ in range(8)}
    assert len(kids) == 1 and old_kid not in kids
    # The token signed before the rotation still verifies.
    assert verify(stack, before)["aud"] == PROJECT
    verify(stack, login_token(stack))
