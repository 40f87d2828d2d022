"""The worked example in examples/custom_provider, installed the way pip
would (its module and a dist-info with the entry points its pyproject
declares, on the path), served through the edge."""

from __future__ import annotations

import hashlib
import pathlib
import sys
import tomllib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import Stack, error_reason, start_stack

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "custom_provider"
PROJECT = str(uuid.uuid4())
KEY = "kiosk-lobby-key-e2e"


def install_like_pip(target: pathlib.Path) -> None:
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    project = meta["project"]
    dist = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    entry_points = project["entry-points"]
    assert "identify.providers" in entry_points, "the example declares no provider"
    groups = "\n".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
        for group, eps in entry_points.items()
    )
    (dist / "entry_points.txt").write_text(groups)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    site = tmp_path_factory.mktemp("site")
    install_like_pip(site)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    config = {
        "projects": [
            {"id": PROJECT, "name": "kiosks", "providers": {"apiKeys": {"keys": {"lobby": digest}}}}
        ]
    }
    s = start_stack(
        tmp_path_factory.mktemp("example"),
        config,
        db_url=db_url,
        env={"PYTHONPATH": f"{site}:{EXAMPLE}"},
    )
    yield s
    assert s.stop() == 0, s.log_text()
    assert KEY not in s.log_text()


def check(stack: Stack, key: str, device: str) -> httpx.Response:
    return httpx.get(
        stack.http + "/v1/user/check",
        params={
            "projectId": PROJECT,
            "strategy": "apiKey",
            "provider": "apiKeys",
            "deviceId": device,
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_example_provider_serves_through_the_edge(stack: Stack) -> None:
    device = str(uuid.uuid4())
    first = check(stack, KEY, device)
    assert first.status_code == 200, first.text
    data = first.json()["data"]
    assert data["username"] == "lobby" and len(data["externalId"]) == 64
    assert [d["deviceId"] for d in data["devices"]] == [device]
    again = check(stack, KEY, device).json()["data"]
    assert again["externalId"] == data["externalId"] and len(again["loginHistory"]) == 2


def test_example_provider_refuses_unknown_keys(stack: Stack) -> None:
    reply = check(stack, "not-a-key", str(uuid.uuid4()))
    assert reply.status_code == 401
    assert error_reason(reply.json()) == "UNKNOWN_API_KEY"


def test_example_settings_are_checked_at_load() -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from identify_apikeys import ApiKeyProvider  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(EXAMPLE))
    bad_settings: list[tuple[dict[str, Any], str]] = [
        ({}, "keys must map"),
        ({"keys": {}}, "keys must map"),
        ({"keys": {"a": "not-hex"}}, "keys.a"),
        ({"keys": {"bad name": "0" * 64}}, "'bad name' is not a valid key name"),
        ({"keys": {"a": "0" * 64}, "key": "x"}, r"unknown apiKeys setting.*key"),
    ]
    for bad, words in bad_settings:
        with pytest.raises(ValueError, match=words):
            ApiKeyProvider.validate_settings(bad)
    parsed = ApiKeyProvider.validate_settings({"keys": {"lobby": "ab" * 32}})
    assert parsed == {"lobby": bytes([0xAB] * 32)}
