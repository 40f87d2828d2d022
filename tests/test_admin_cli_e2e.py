"""`identify admin ...` against a running stack, over gRPC to its admin
listener: readable tables by default, the REST JSON with `--output json`,
keys printed once on their last line, refusals on stderr with their reason;
`identify rotate-keys` through the API. (Each call is a process: few
calls, the API's own tests cover the behaviour.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.harness import Stack, identify_cli, start_stack

PROJECT = str(uuid.uuid4())


@dataclass
class Cli:
    stack: Stack
    key: str

    def run(self, *args: str, key: str | None = None) -> tuple[int, str, str]:
        done = identify_cli(
            "admin",
            *args,
            "--server",
            self.stack.admin_grpc_target,
            env={"IDENTIFY_ADMIN_KEY": key or self.key},
        )
        return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Cli]:
    config = {"projects": [{"id": PROJECT, "name": "cli", "providers": {"anonymous": {}}}]}
    stack = start_stack(tmp_path_factory.mktemp("admin-cli"), config, db_url=db_url)
    made = identify_cli("admin", "create-key", "--db", db_url, "--name", "root")
    assert made.returncode == 0, made.stderr
    try:
        yield Cli(stack, made.stdout.strip().splitlines()[-1])
    finally:
        stack.stop()


def _login(stack: Stack) -> dict[str, str]:
    body = {"projectId": PROJECT, "provider": "anonymous", "data": {"deviceId": str(uuid.uuid4())}}
    with stack.client() as http:
        return dict(http.put("/v1/user/login", json=body).json()["data"])


def test_tables_by_default_and_the_rest_json_on_demand(cli: Cli) -> None:
    session = _login(cli.stack)
    code, out, err = cli.run("projects", "list")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["PROJECT", "NAME", "PROVIDERS", "CREATED", "DELETED"]
    # The database is the session's: other modules' projects are listed too.
    [row] = [r for r in rows if r.startswith(PROJECT)]
    assert row.split()[:3] == [PROJECT, "cli", "anonymous"] and row.split()[-1] == "-"

    code, out, err = cli.run("users", "get", PROJECT, session["userId"], "--output", "json")
    assert code == 0, err
    user = json.loads(out)
    assert user["userId"] == session["userId"] and user["externalId"] == session["externalId"]
    assert user["name"] == f"projects/{PROJECT}/users/{session['userId']}"

    code, out, err = cli.run("users", "devices", PROJECT, session["userId"])
    assert code == 0, err
    assert session["deviceId"] in out.splitlines()[1]


def test_keys_are_printed_once_on_the_last_line_and_scopes_hold(cli: Cli) -> None:
    code, out, err = cli.run("keys", "create", "--name", "ro", "--read-only", "--project", PROJECT)
    assert code == 0, err
    read_only = out.strip().splitlines()[-1]
    assert read_only.startswith("idk_")
    code, out, err = cli.run("signing-keys", "rotate", key=read_only)
    assert code == 1 and out == ""
    assert "PERMISSION_DENIED ADMIN_KEY_OUT_OF_SCOPE" in err


def test_rotate_keys_goes_through_the_admin_api(cli: Cli) -> None:
    done = identify_cli(
        "rotate-keys",
        "--server",
        cli.stack.admin_grpc_target,
        env={"IDENTIFY_ADMIN_KEY": cli.key},
    )
    assert done.returncode == 0, done.stderr
    assert "1 retired" in done.stdout
    code, after, err = cli.run("signing-keys", "list", "--output", "json")
    assert code == 0, err
    active, retired, *_ = json.loads(after)["signingKeys"]
    assert done.stdout.split()[3].rstrip(";") == active["kid"] and "retireTime" not in active
    assert retired["retireTime"] and retired["published"]


def test_project_lifecycle_from_the_command_line(cli: Cli) -> None:
    code, out, err = cli.run(
        "projects", "create", "--name", "made", "--providers", '{"noLogin": {}}', "--output", "json"
    )
    assert code == 0, err
    assert json.loads(out)["displayName"] == "made"
    code, out, err = cli.run("projects", "create", "--providers", '{"nope": {}}')
    assert code == 1 and "INVALID_PROJECT_SETTINGS" in err and "project.providers.nope" in err
