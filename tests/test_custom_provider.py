"""A third-party provider, installed only as a distribution on the path with
an `identify.providers` entry point, served through the edge without any
change to the core."""

from __future__ import annotations

import pathlib
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from tests.harness import Stack, error_reason, start_stack

PROJECT = str(uuid.uuid4())

PROVIDER = textwrap.dedent(
    '''
    from providers.base import InvalidArgument, Provider, Reply, Request, Session, require_str


    class PinProvider(Provider[str]):
        """Signs users in with a per-project PIN from its settings block."""

        name = "pin"
        strategies = ("pin",)

        @classmethod
        def read_settings(cls, s):
            return s.required_string("pin", numbers=True)

        async def login(self, req: Request) -> Session:
            user_name = require_str(req.data, "user")
            if require_str(req.data, "pin") != self.settings:
                raise InvalidArgument("WRONG_PIN", "wrong pin")
            user, _ = await self.ctx.accounts.ensure_user(user_name, username=user_name)
            return await self.ctx.accounts.sign_in(user, device_id=None)

        async def get_user(self, req: Request) -> Reply:
            return Reply(data={"hello": "from a plugin", "projectId": req.project.id})
    '''
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    plugin: pathlib.Path = tmp_path_factory.mktemp("plugin")
    (plugin / "identify_pin.py").write_text(PROVIDER)
    dist = plugin / "identify_pin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: identify-pin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[identify.providers]\npin = identify_pin:PinProvider\n")
    config = {
        "projects": [{"id": PROJECT, "name": "plugin", "providers": {"pin": {"pin": "4321"}}}]
    }
    s = start_stack(
        tmp_path_factory.mktemp("custom"), config, db_url=db_url, env={"PYTHONPATH": str(plugin)}
    )
    yield s
    s.stop()


def test_custom_provider_through_the_edge(stack: Stack) -> None:
    with stack.client() as http:
        body = {
            "projectId": PROJECT,
            "provider": "pin",
            "strategy": "pin",
            "data": {"user": "ann", "pin": "4321"},
        }
        first = http.put("/v1/user/login", json=body)
        assert first.status_code == 200, first.text
        second = http.put("/user/login", json=body).json()["data"]
        assert first.json()["data"]["userId"] == second["userId"]
        wrong = http.put("/user/login", json={**body, "data": {"user": "ann", "pin": "0000"}})
        assert wrong.status_code == 400 and error_reason(wrong.json()) == "WRONG_PIN"
        got = http.get("/user", params={"projectId": PROJECT, "provider": "pin"})
        assert got.json() == {
            "result": 1,
            "message": "OK",
            "data": {"hello": "from a plugin", "projectId": PROJECT},
        }
        unsupported = http.post("/v1/user/logout", json={"projectId": PROJECT, "provider": "pin"})
        assert unsupported.status_code == 400
        assert error_reason(unsupported.json()) == "OPERATION_NOT_SUPPORTED"
