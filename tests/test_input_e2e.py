"""Whatever a client sends, through the real edge: a 4xx with a reason, never
a 5xx, never a traceback in the log, and nothing written by a refused call.

- bodies protobuf cannot decode (nested too deeply, not UTF-8);
- unknown fields: ignored in a body, refused in a query string.
"""

from __future__ import annotations

import pathlib
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.fakes.facebook_graph import FakeGraph
from tests.fakes.oidc_issuer import FakeIssuer
from tests.fakes.x_api import FakeXApi
from tests.harness import Stack, refused, start_stack

PROJECT = str(uuid.uuid4())
APP, APP_SECRET = "1029384756", "graph-app-secret-input"
AUD = "https://api.input-e2e.test"

# A provider that stores what it is sent without checking its length: the
# store's refusal must still be a 400, not an outage.
LAX_PROVIDER = textwrap.dedent(
    """
    from providers.base import Provider, Request, Session, require_str


    class LaxProvider(Provider[None]):
        name = "lax"
        strategies = ("lax",)

        async def login(self, req: Request) -> Session:
            name = require_str(req.data, "name", max_len=100_000)
            user, _ = await self.ctx.accounts.ensure_user(name, username=name)
            return await self.ctx.accounts.sign_in(user, device_id=None)
    """
)


@dataclass
class World:
    stack: Stack
    http: httpx.Client
    graph: FakeGraph
    x: FakeXApi
    issuer: FakeIssuer
    # Every token and bad value sent: none may reach the log.
    sent: list[str] = field(default_factory=list)

    def body(self, provider: str, data: dict[str, Any] | None = None, **top: Any) -> Any:
        return {"projectId": PROJECT, "provider": provider, "data": data or {}, **top}

    def query(self, provider: str, **params: str) -> dict[str, str]:
        return {"projectId": PROJECT, "provider": provider, **params}

    def oidc_token(self) -> str:
        return self.issuer.mint(sub=f"user-{uuid.uuid4().hex}", aud=AUD)

    def log_since(self, mark: int) -> str:
        return self.stack.log_text()[mark:]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    plugin: pathlib.Path = tmp_path_factory.mktemp("plugin")
    (plugin / "identify_lax.py").write_text(LAX_PROVIDER)
    dist = plugin / "identify_lax-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: identify-lax\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[identify.providers]\nlax = identify_lax:LaxProvider\n")
    graph, x, issuer = FakeGraph({APP: APP_SECRET}), FakeXApi(), FakeIssuer()
    providers = {
        "anonymous": {},
        "noLogin": {},
        "facebook": {"appId": APP, "appSecret": APP_SECRET, "graphUrl": graph.url},
        "twitter": {"apiUrl": x.url},
        "oidc": {"issuer": issuer.issuer, "jwksUri": issuer.jwks_url, "audience": AUD},
        "lax": {},
    }
    config = {"projects": [{"id": PROJECT, "name": "input", "providers": providers}]}
    stack = start_stack(
        tmp_path_factory.mktemp("input"), config, db_url=db_url, env={"PYTHONPATH": str(plugin)}
    )
    world = World(stack, stack.client(), graph, x, issuer)
    try:
        yield world
    finally:
        world.http.close()
        code = stack.stop()
        for fake in (graph, x, issuer):
            fake.stop()
        assert code == 0, stack.log_text()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


# ------------------------------------------------------- undecodable bodies
# Envoy's own JSON parser stops near 100 levels; protobuf's decoder (in the
# server) at 100 levels of messages: about 32 levels of JSON objects (three
# messages each) or 50 of lists (two). Between the two, the server refuses.
@pytest.mark.parametrize(
    ("shape", "depth"),
    [("object", 40), ("object", 90), ("list", 60), ("list", 90), ("object", 200)],
)
def test_json_nested_too_deeply_is_400(world: World, shape: str, depth: int) -> None:
    mark = len(world.stack.log_text())
    deep: Any = nested(depth)
    if shape == "list":
        deep = [1]
        for _ in range(depth):
            deep = [deep]
    login = world.body("anonymous", {"deviceId": str(uuid.uuid4()), "x": deep})
    reply = world.http.put("/v1/user/login", json=login)
    body = refused(reply, 400, "MALFORMED_REQUEST")
    assert body["code"] == 3 and "DecodeError" not in reply.text
    create = world.body("noLogin", {"appProfile": {"deep": deep}})
    refused(world.http.post("/v1/user", json=create), 400, "MALFORMED_REQUEST")
    time.sleep(0.2)
    log = world.log_since(mark)
    assert "Traceback" not in log and "DecodeError" not in log


def test_json_nested_as_deep_as_the_decoder_takes_still_works(world: World) -> None:
    reply = world.http.post("/v1/user", json=world.body("noLogin", {"appProfile": nested(30)}))
    assert reply.status_code == 200, reply.text
    assert reply.json()["appProfile"] == nested(30)


def test_query_parameter_that_is_not_utf8_is_400(world: World) -> None:
    mark = len(world.stack.log_text())
    reply = world.http.get(
        f"/v1/user?projectId={PROJECT}&provider=noLogin&externalId=%ff%fe", headers={}
    )
    refused(reply, 400, "MALFORMED_REQUEST")
    time.sleep(0.2)
    assert "Traceback" not in world.log_since(mark)


# ------------------------------------------------------------ unknown fields
def test_unknown_body_fields_are_ignored(world: World) -> None:
    # Clients of the published contract may send fields this API does not
    # define; refusing them would break those clients.
    device = str(uuid.uuid4())
    plain = world.http.put("/v1/user/login", json=world.body("anonymous", {"deviceId": device}))
    extra = world.http.put(
        "/v1/user/login",
        json=world.body("anonymous", {"deviceId": device}, appVersion="4.2", nested={"a": [1]}),
    )
    assert plain.status_code == extra.status_code == 200, extra.text
    assert extra.json()["data"]["userId"] == plain.json()["data"]["userId"]


def test_unknown_query_parameters_are_refused(world: World) -> None:
    reply = world.http.get(
        "/v1/user", params=world.query("noLogin", externalId="ab" * 32, appVersion="4.2")
    )
    refused(reply, 400, "MALFORMED_REQUEST")
