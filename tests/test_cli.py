"""The `identify` command's own behaviour: config checking, Envoy config,
migrations and schema refusal."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from server.edge import RateLimit
from server.store.db import DatabaseUrl, head_revision, open_database
from server.supervisor import envoy_binary
from tests.harness import identify_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def identify(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return identify_cli(*args, env=env)


def write_config(tmp_path: pathlib.Path, providers: dict[str, object]) -> pathlib.Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"projects": [{"id": str(uuid.uuid4()), "name": "p", "providers": providers}]}
        )
    )
    return path


def test_envoy_config_validates_with_real_envoy(tmp_path: pathlib.Path) -> None:
    out = identify(
        "envoy-config",
        "--http-port",
        "18081",
        "--backend",
        "10.0.0.5:50051",
        "--backend",
        "10.0.0.6:50051",
    )
    assert out.returncode == 0, out.stderr
    assert "10.0.0.6" in out.stdout
    path = tmp_path / "envoy.yaml"
    path.write_text(out.stdout)
    check = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def validate(config: str, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(config)
    check = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def rendered(config: str) -> dict[str, Any]:
    """The connection manager and its routes, from a rendered config."""
    doc = yaml.safe_load(config)
    [chain] = doc["static_resources"]["listeners"][0]["filter_chains"]
    hcm: dict[str, Any] = chain["filters"][0]["typed_config"]
    return hcm


def sign_in_limit(hcm: dict[str, Any]) -> dict[str, Any] | None:
    [host] = hcm["route_config"]["virtual_hosts"]
    limits = host["routes"][0].get("typed_per_filter_config", {})
    found: dict[str, Any] | None = limits.get("envoy.filters.http.local_ratelimit")
    return found


def test_edge_policy_flags_render_a_config_envoy_takes(tmp_path: pathlib.Path) -> None:
    out = identify("envoy-config", "--edge-rate-limit", "600/m,burst=50", "--trusted-proxies", "2")
    assert out.returncode == 0, out.stderr
    validate(out.stdout, tmp_path)
    hcm = rendered(out.stdout)
    assert hcm["xff_num_trusted_hops"] == 2
    assert hcm["use_remote_address"] is True
    assert hcm["max_request_headers_kb"] == 32
    limit = sign_in_limit(hcm)
    assert limit is not None
    [descriptor] = limit["descriptors"]
    assert descriptor["token_bucket"] == {
        "max_tokens": 50,
        "tokens_per_fill": 600,
        "fill_interval": "60s",
    }
    assert limit["max_dynamic_descriptors"] == 65536


def test_the_default_rate_limit_and_the_switches_that_turn_it_off() -> None:
    default = sign_in_limit(rendered(identify("envoy-config").stdout))
    assert default is not None
    assert default["descriptors"][0]["token_bucket"]["max_tokens"] == 100
    assert default["descriptors"][0]["token_bucket"]["tokens_per_fill"] == 20
    assert (
        sign_in_limit(rendered(identify("envoy-config", "--edge-rate-limit", "off").stdout)) is None
    )
    # The environment switch wins over the flag: it turns every limit off.
    off = identify("envoy-config", "--edge-rate-limit", "5/s", env={"IDENTIFY_RATE_LIMITS": "off"})
    assert sign_in_limit(rendered(off.stdout)) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20/s", RateLimit(20, 1, 100)),
        ("20/s,burst=40", RateLimit(20, 1, 40)),
        ("600/m", RateLimit(600, 60, 600)),
        (" 5 / s , burst = 7 ", RateLimit(5, 1, 7)),
        ("OFF", None),
    ],
)
def test_rate_limit_forms(text: str, expected: RateLimit | None) -> None:
    assert RateLimit.parse(text) == expected


@pytest.mark.parametrize("text", ["20", "20/h", "0/s", "20/s,burst=0", "fast"])
def test_bad_rate_limits_stop_the_start(text: str) -> None:
    out = identify("envoy-config", "--edge-rate-limit", text)
    assert out.returncode == 2
    assert "rate limit must" in out.stderr


def test_unknown_provider_in_config_stops_start(tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, {"myspace": {}})
    out = identify("serve", "--config", str(config), "--db", f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 2
    assert "myspace" in out.stderr and "unknown provider" in out.stderr


def test_missing_env_reference_stops_start(tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, {"anonymous": {"note": "${IDENTIFY_SURELY_UNSET_VAR}"}})
    out = identify("serve", "--config", str(config), "--db", f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 2
    assert "IDENTIFY_SURELY_UNSET_VAR" in out.stderr


def test_bad_db_url_is_refused(tmp_path: pathlib.Path) -> None:
    out = identify("migrate", "--db", "mysql://x/y")
    assert out.returncode == 2
    assert "unsupported database" in out.stderr


def test_migrate_then_refuse_unknown_schema(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    out = identify("migrate", "--db", url)
    assert out.returncode == 0, out.stderr
    assert f"empty -> {head_revision()}" in out.stdout

    async def stamp() -> None:
        database = open_database(url)
        await database.write(
            lambda conn: conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff'"))
        )
        await database.dispose()

    asyncio.run(stamp())
    config = write_config(tmp_path, {"anonymous": {}})
    refused = identify("serve", "--config", str(config), "--db", url)
    assert refused.returncode == 2
    assert "newer than this build" in refused.stderr


def test_database_url_forms() -> None:
    assert DatabaseUrl.parse("sqlite:///var/x.db").driver_url == "sqlite+aiosqlite:///var/x.db"
    pg = DatabaseUrl.parse("postgresql://u:pw@h:5432/d")
    assert pg.driver_url == "postgresql+asyncpg://u:pw@h:5432/d"
    assert "pw" not in pg.redacted()
    assert not pg.pgbouncer and pg.asyncpg_dsn() == "postgresql://u:pw@h:5432/d"
    bouncer = DatabaseUrl.parse("postgresql://u@h:6432/d?pgbouncer=true&sslmode=require")
    assert bouncer.pgbouncer
    assert bouncer.driver_url == "postgresql+asyncpg://u@h:6432/d?sslmode=require"
    with pytest.raises(ValueError, match="pgbouncer"):
        DatabaseUrl.parse("postgresql://u@h/d?pgbouncer=yes")
    with pytest.raises(ValueError):
        DatabaseUrl.parse("nonsense")


def test_older_schema_is_refused_until_migrated(tmp_path: pathlib.Path) -> None:
    from alembic import command

    from server.store import db

    url = f"sqlite:///{tmp_path}/old.db"

    async def upgrade_to_first() -> None:
        database = open_database(url)

        def run(conn: sa.Connection) -> None:
            cfg = db._alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")

        await database.write(run)
        await database.dispose()

    asyncio.run(upgrade_to_first())
    config = write_config(tmp_path, {"anonymous": {}})
    refused = identify("serve", "--config", str(config), "--db", url)
    assert refused.returncode == 2
    assert "older than this build" in refused.stderr and "identify migrate" in refused.stderr
    migrated = identify("migrate", "--db", url)
    assert migrated.returncode == 0 and f"0001 -> {head_revision()}" in migrated.stdout


def test_the_head_read_off_the_scripts_is_alembics() -> None:
    from server.store import db

    assert head_revision() == db._script().get_current_head()


def test_a_server_at_head_keeps_no_alembic_orm_or_boto3(tmp_path: pathlib.Path) -> None:
    # Each stays in the process for good once imported (~9, ~7 and ~9 MB of
    # its RSS): a SQLite server whose schema is current needs none of them,
    # and boto3 only once a Cognito project is called.
    url = f"sqlite:///{tmp_path}/head.db"
    assert identify("migrate", "--db", url).returncode == 0
    probe = (
        "import asyncio, sys\n"
        "import server.app\n"
        "from providers.registry import Registry\n"
        "assert 'awsCognito' in Registry.discover().names()\n"
        "from server.store import db\n"
        "async def main():\n"
        f"    database = db.open_database({url!r})\n"
        "    await db.ensure_schema(database, auto_migrate=False)\n"
        "    await database.dispose()\n"
        "asyncio.run(main())\n"
        "print([m for m in ('alembic', 'sqlalchemy.orm', 'boto3') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_serve_runs_only_the_grpc_server_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    import os
    import signal
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.harness import free_port

    port = free_port()
    config = write_config(tmp_path, {"anonymous": {}})
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "server.cli", "serve", "--config", str(config)),
            *("--db", f"sqlite:///{tmp_path}/s.db", "--grpc-port", str(port)),
        ],
        cwd=ROOT,
        env={**os.environ, "IDENTIFY_DRAIN_DELAY": "0.1"},
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                    status = (
                        health_pb2_grpc.HealthStub(ch)
                        .Check(health_pb2.HealthCheckRequest(), timeout=1)
                        .status
                    )
            except grpc.RpcError:
                time.sleep(0.1)
        assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
