"""What a person sees from `identify up` (`make run`): the banner first, then
only Envoy's access log for real requests, and after Ctrl-C one line and exit
code 0. Run once writing to a file (how a service manager or CI keeps it)
and once in a pseudo-terminal, where Ctrl-C is typed as a person types it."""

from __future__ import annotations

import json
import pathlib
import re
import time
import uuid
from typing import Any

import pytest

from tests.harness import Stack, start_stack

PROJECT = str(uuid.uuid4())
CONFIG = {"projects": [{"id": PROJECT, "name": "demo", "providers": {"anonymous": {}}}]}
BANNER_FIRST = "Identify is up."
BANNER_LAST = "Ctrl-C stops."
STOPPED = "Identify stopped."
# Lines a terminal itself writes: its echo of the Ctrl-C.
ECHO = {"^C"}
ENVOY_LOG_LINE = re.compile(r"^\[[^\]]+\]\[\d+\]\[(\w+)\]\[")


def access_log(lines: list[str]) -> list[dict[str, Any]]:
    entries = []
    for line in lines:
        if line.startswith("{"):
            entry = json.loads(line)
            if isinstance(entry, dict) and "status" in entry:
                entries.append(entry)
    return entries


def wait_for_access_log(stack: Stack, path: str, count: int = 1) -> None:
    # Envoy flushes its access log every 500 ms.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [e for e in access_log(stack.log_text().splitlines()) if e["path"] == path]
        if len(found) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {path}:\n{stack.log_text()}")


@pytest.mark.parametrize("terminal", [False, True], ids=["file", "terminal"])
def test_up_shows_the_banner_first_and_stops_with_one_line(
    tmp_path: pathlib.Path, terminal: bool
) -> None:
    # A fresh database, so the schema is created (and Alembic would talk);
    # two workers, as on a two-core laptop.
    stack = start_stack(tmp_path, CONFIG, workers=2, terminal=terminal)
    try:
        with stack.client() as http:
            assert http.get("/.well-known/jwks.json").status_code == 200
            # Someone else's health check (a load balancer's, a person's).
            assert http.get("/healthz").status_code == 200
        wait_for_access_log(stack, "/.well-known/jwks.json")
        wait_for_access_log(stack, "/healthz")
        # Longer than Envoy's flush interval: late lines would be in by now.
        time.sleep(1)
    finally:
        code = stack.interrupt()
    text = stack.log_text()
    lines = [line.rstrip("\r") for line in text.splitlines()]

    # (a) Nothing before the banner but blank lines; the banner is whole.
    first = lines.index(BANNER_FIRST)
    assert all(not line.strip() for line in lines[:first]), text
    last = lines.index(BANNER_LAST)
    banner = lines[first : last + 1]
    assert any(PROJECT in line for line in banner), text
    assert any(line.strip().startswith("curl -s -X PUT") for line in banner), text
    for line in banner[1:-1]:
        assert not line or line.startswith("  ") or line == "Sign a device in:", text

    # (b) No Alembic chatter and no Envoy log lines (warnings or otherwise).
    assert "alembic" not in text.lower(), text
    assert not [line for line in lines if ENVOY_LOG_LINE.match(line)], text

    # (c) After the banner: Envoy's access log for real requests, which keeps
    # a user's /healthz but not the supervisor's start-up polls of it.
    after = [line for line in lines[last + 1 :] if line.strip() and line.strip() not in ECHO]
    assert after[-1] == STOPPED, text
    entries = access_log(after[:-1])
    assert len(entries) == len(after) - 1, f"not an access-log line in:\n{text}"
    assert [e["path"] for e in entries].count("/healthz") == 1, text
    # The path the client called, and the gRPC call it became.
    assert any(
        e["path"] == "/.well-known/jwks.json"
        and e["grpc_method"] == "/identify.v1.Identify/GetJwks"
        and e["status"] == 200
        for e in entries
    ), text

    # (d) Ctrl-C: exit code 0 and nothing but the stopped line.
    assert code == 0, text
    for noise in ("Traceback", "CancelledError", "exception was never retrieved", "ERROR"):
        assert noise not in text, text
