"""Whatever a client sends, through the real edge: a 4xx with a reason, never
a 5xx, never a traceback in the log, and nothing written by a refused call.

- bodies protobuf cannot decode (nested too deeply, not UTF-8);
- unknown fields: ignored in a body, refused in a query string;
- a table of bad strings (non-ASCII, NUL, a trailing newline, CR/LF,
  fullwidth digits) in every kind of field: ids, tokens, text in `data`;
- a value the store refuses, from a provider that does not check it.
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

from tests.fakes.facebook_graph import FakeGraph, GraphUser
from tests.fakes.oidc_issuer import FakeIssuer
from tests.fakes.x_api import FakeXApi, XUser
from tests.harness import Stack, count_rows, refused, start_stack

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


# --------------------------------------------------------------- bad strings
# U+FF10..U+FF19: digits to int() and uuid.UUID(), not to an ASCII client.
FULLWIDTH = {ord("0") + i: 0xFF10 + i for i in range(10)}


def spoiled(valid: str) -> dict[str, str]:
    """One valid ASCII value, spoiled five ways."""
    assert any(c.isdigit() for c in valid)
    return {
        "non-ascii": valid[:-1] + "é",
        "nul": valid[:4] + "\x00" + valid[4:],
        "trailing-newline": valid + "\n",
        "crlf-inside": valid[:4] + "\r\n" + valid[4:],
        "fullwidth-digits": valid.translate(FULLWIDTH),
    }


SPOILS = list(spoiled("0"))
VALID_UUID = "789f64dc-750d-4260-afef-7937062048e3"


def info(body: dict[str, Any]) -> dict[str, str]:
    [found] = [d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    return dict(found.get("metadata", {}))


@pytest.mark.parametrize("spoil", SPOILS)
def test_bad_project_id(world: World, spoil: str) -> None:
    bad = spoiled(PROJECT if any(c.isdigit() for c in PROJECT) else VALID_UUID)[spoil]
    body = {**world.body("anonymous", {"deviceId": str(uuid.uuid4())}), "projectId": bad}
    refused(world.http.put("/v1/user/login", json=body), 400, "INVALID_PROJECT_ID")


@pytest.mark.parametrize("where", ["data", "top"])
@pytest.mark.parametrize("spoil", SPOILS)
def test_bad_device_id(world: World, spoil: str, where: str) -> None:
    bad = spoiled(VALID_UUID)[spoil]
    before = count_rows(world.stack.db_url, "users")
    body = (
        world.body("anonymous", {"deviceId": bad})
        if where == "data"
        else world.body("anonymous", deviceId=bad)
    )
    reply = refused(world.http.put("/v1/user/login", json=body), 400, "INVALID_DEVICE_ID")
    assert info(reply)["field"] == "deviceId"
    # Not the same device as the ASCII one it looks like: no user at all.
    assert count_rows(world.stack.db_url, "users") == before


def test_the_ascii_uuid_forms_are_one_device(world: World) -> None:
    device = str(uuid.uuid4())
    forms = [
        device,
        device.upper(),
        device.replace("-", ""),
        "{" + device + "}",
        "urn:uuid:" + device,
    ]
    users = {
        world.http.put("/v1/user/login", json=world.body("anonymous", {"deviceId": form})).json()[
            "data"
        ]["userId"]
        for form in forms
    }
    assert len(users) == 1


@pytest.mark.parametrize("spoil", SPOILS)
def test_bad_external_id(world: World, spoil: str) -> None:
    external_id = world.http.post("/v1/user", json=world.body("noLogin")).json()["externalId"]
    bad = spoiled(external_id)[spoil]
    got = world.http.get("/v1/user", params=world.query("noLogin", externalId=bad))
    refused(got, 400, "INVALID_EXTERNAL_ID")
    put = world.http.put(
        "/v1/user", json=world.body("noLogin", {"appProfile": {"a": 1}}, externalId=bad)
    )
    refused(put, 400, "INVALID_EXTERNAL_ID")
    # The profile of the user it looks like is untouched.
    mine = world.http.get("/v1/user", params=world.query("noLogin", externalId=external_id))
    assert mine.json()["appProfile"] == {}


@pytest.mark.parametrize("spoil", SPOILS)
def test_bad_social_user_id(world: World, spoil: str) -> None:
    user = XUser("1234567890123", "Ada", "ada")
    token = world.x.issue(user)
    world.sent.append(token)
    calls = len(world.x.requests)
    reply = world.http.get(
        "/v1/user/check/nonstandard",
        params=world.query("twitter", accessToken=token, userId=spoiled(user.id)[spoil]),
    )
    body = refused(reply, 400, "INVALID_CHARACTERS")
    assert info(body)["field"] == "userId"
    assert len(world.x.requests) == calls, "a refused call must cost no upstream call"


@pytest.mark.parametrize("spoil", SPOILS)
def test_bad_social_access_token(world: World, spoil: str) -> None:
    # CR/LF here once reached X's Authorization header (503), non-ASCII
    # broke the call (500).
    token = world.x.issue(XUser("1234567890123", "Ada", "ada"))
    bad = spoiled(token + "7")[spoil]
    world.sent.append(bad)
    calls = len(world.x.requests)
    reply = world.http.get(
        "/v1/user/check/nonstandard",
        params=world.query("twitter", accessToken=bad, userId="1234567890123"),
    )
    body = refused(reply, 401, "MALFORMED_TOKEN")
    assert info(body)["field"] == "accessToken"
    assert len(world.x.requests) == calls


# What an HTTP header can carry at all: NUL, CR and LF never reach us (the
# client or Envoy refuses them), Latin-1 bytes and UTF-8 do.
@pytest.mark.parametrize(
    "header",
    [
        "Bearer eyJ0eXAi.é.sig".encode(),
        "Bearer eyJ0eXAi.\xe9.sig".encode("latin-1"),
        "Bearer eyJ0eXAi.123.sig".translate(FULLWIDTH).encode(),
        b"Bearer eyJ0eXAi\t.x.sig",
    ],
    ids=["utf8", "latin1", "fullwidth", "tab"],
)
def test_bad_bearer(world: World, header: bytes) -> None:
    world.sent.append(header.decode("latin-1").removeprefix("Bearer "))
    reply = world.http.get(
        "/v1/user", params=world.query("oidc"), headers={"authorization": header}
    )
    body = refused(reply, 401, "MALFORMED_TOKEN")
    assert info(body)["field"] == "authorization"


@pytest.mark.parametrize("spoil", SPOILS)
def test_bad_signature_and_ids_to_verify(world: World, spoil: str) -> None:
    call = {
        "projectId": PROJECT,
        "userId": str(uuid.uuid4()),
        "deviceId": str(uuid.uuid4()),
        "timeStamp": 1,
        "signature": "8AE145334D8CA86F88C09939A46F161009D662F1",
    }
    for name in ("signature", "userId", "deviceId"):
        bad = {**call, name: spoiled(str(call[name]))[spoil]}
        body = refused(world.http.post("/v1/signature:verify", json=bad), 400, "INVALID_CHARACTERS")
        assert info(body)["field"] == name


# Text in `data` may hold any character but NUL: names and notes are not ids.
@pytest.mark.parametrize("spoil", SPOILS)
def test_text_in_data_keeps_everything_but_nul(world: World, spoil: str) -> None:
    value = spoiled("Ada 1815")[spoil]
    created = world.http.post(
        "/v1/user",
        json=world.body("anonymous", {"deviceId": str(uuid.uuid4()), "additionalId": value}),
    )
    token = world.oidc_token()
    world.sent.append(token)
    renamed = world.http.put(
        "/v1/user",
        json=world.body("oidc", {"username": value}),
        headers={"authorization": f"Bearer {token}"},
    )
    if spoil == "nul":
        assert info(refused(created, 400, "INVALID_CHARACTERS"))["field"] == "additionalId"
        assert info(refused(renamed, 400, "INVALID_CHARACTERS"))["field"] == "username"
        return
    assert created.status_code == 200, created.text
    assert created.json()["data"]["additionalId"] == value
    assert renamed.status_code == 200, renamed.text
    got = world.http.get(
        "/v1/user", params=world.query("oidc"), headers={"authorization": f"Bearer {token}"}
    )
    assert got.json()["data"]["username"] == value


@pytest.mark.parametrize("spoil", SPOILS)
def test_app_profile_keeps_everything_but_nul(world: World, spoil: str) -> None:
    value = spoiled("level 42")[spoil]
    for profile in ({"note": value}, {"deep": {"list": [1, value]}}, {value: True}):
        before = count_rows(world.stack.db_url, "users")
        reply = world.http.post("/v1/user", json=world.body("noLogin", {"appProfile": profile}))
        if spoil == "nul":
            assert info(refused(reply, 400, "INVALID_CHARACTERS"))["field"] == "appProfile"
            # A create whose profile is refused leaves no user behind.
            assert count_rows(world.stack.db_url, "users") == before
            continue
        assert reply.status_code == 200, reply.text
        external_id = reply.json()["externalId"]
        got = world.http.get("/v1/user", params=world.query("noLogin", externalId=external_id))
        assert got.json()["appProfile"] == profile


# ------------------------------------------------ refused calls write nothing
def test_refused_app_profile_on_create_writes_no_user(world: World) -> None:
    before = count_rows(world.stack.db_url, "users")
    for profile, reason in (
        ({"blob": "x" * (17 * 1024)}, "APP_PROFILE_TOO_LARGE"),
        (["not", "an", "object"], "APP_PROFILE_NOT_OBJECT"),
        ({"a": "\x00"}, "INVALID_CHARACTERS"),
    ):
        reply = world.http.post("/v1/user", json=world.body("noLogin", {"appProfile": profile}))
        refused(reply, 400, reason)
    assert count_rows(world.stack.db_url, "users") == before


def test_social_check_with_a_bad_device_writes_nothing_and_asks_no_one(world: World) -> None:
    user = GraphUser("10203040506070809", "Grace", "grace@example.com")
    token = world.graph.issue(APP, user)
    world.sent.append(token)
    before = count_rows(world.stack.db_url, "users")
    calls = len(world.graph.requests)
    reply = world.http.get(
        "/v1/user/check/nonstandard",
        params=world.query("facebook", accessToken=token, deviceId="not-a-uuid"),
    )
    refused(reply, 400, "INVALID_DEVICE_ID")
    assert count_rows(world.stack.db_url, "users") == before
    assert len(world.graph.requests) == calls
    # The same call with a good device does create the user.
    good = world.http.get(
        "/v1/user/check/nonstandard",
        params=world.query("facebook", accessToken=token, deviceId=str(uuid.uuid4())),
    )
    assert good.status_code == 200, good.text
    assert count_rows(world.stack.db_url, "users") == before + 1


# ------------------------------------------------- values the store refuses
def test_a_value_the_store_refuses_is_400_not_an_outage(world: World, db_url: str) -> None:
    mark = len(world.stack.log_text())
    before = count_rows(world.stack.db_url, "users")
    # users.username is VARCHAR(256): PostgreSQL enforces it, SQLite does not.
    body = {**world.body("lax", {"name": "n" * 300}), "strategy": "lax"}
    reply = world.http.put("/v1/user/login", json=body)
    if db_url.startswith("postgresql"):
        refused(reply, 400, "INVALID_VALUE")
        assert count_rows(world.stack.db_url, "users") == before
        time.sleep(0.2)
        log = world.log_since(mark)
        assert "store refused a value" in log and "store unavailable" not in log
        assert "n" * 300 not in log
    else:
        assert reply.status_code == 200, reply.text


def test_nothing_sent_reached_the_log(world: World) -> None:
    # Runs last (pytest keeps file order): no traceback for anything above,
    # and no token or header value, not even the ones gRPC cannot decode.
    time.sleep(0.5)
    log = world.stack.log_text()
    assert "Traceback" not in log
    assert "Invalid encoding" not in log
    leaked = [t for t in world.sent if t in log]
    assert leaked == []
