"""The `identify` command: up, serve, envoy-config, migrate, rotate-keys, admin."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import sys
import uuid
from collections.abc import Sequence

import uvloop

from providers.registry import Registry
from server import config as config_mod
from server import edge, logs, metrics
from server.abuse.policy import RATE_LIMITS_ENV
from server.admin import cli as admin_cli
from server.app import ListenError, Service, Settings, serve
from server.bootstrap import bootstrap
from server.metrics import exposition
from server.store import db

log = logging.getLogger("identify")


def _db_url(args: argparse.Namespace) -> str:
    url: str = args.db or os.environ.get("IDENTIFY_DB") or db.DEFAULT_URL
    db.DatabaseUrl.parse(url)
    return url


def _config_path(args: argparse.Namespace) -> pathlib.Path | None:
    value = args.config or os.environ.get("IDENTIFY_CONFIG")
    return pathlib.Path(value) if value else None


def _load_projects(path: pathlib.Path | None) -> list[config_mod.ProjectConfig]:
    if path is None:
        return []
    return config_mod.load(path, Registry.discover())


async def _bootstrap(url: str, projects: list[config_mod.ProjectConfig], migrate: bool) -> None:
    database = db.open_database(url, pool_size=2)
    try:
        await bootstrap(database, projects, auto_migrate=migrate)
    finally:
        await database.dispose()


def _settings(args: argparse.Namespace, url: str, port: int) -> Settings:
    return Settings(
        db_url=url,
        host=args.host,
        port=port,
        issuer=os.environ.get("IDENTIFY_ISSUER", "identify"),
        project_cache_ttl=float(os.environ.get("IDENTIFY_PROJECT_CACHE_TTL", "5")),
        grace=float(os.environ.get("IDENTIFY_SHUTDOWN_GRACE", "10")),
        drain_delay=float(os.environ.get("IDENTIFY_DRAIN_DELAY", "2")),
        key_refresh=float(os.environ.get("IDENTIFY_KEY_REFRESH", "60")),
        redis_url=_redis_url(args),
    )


def _redis_url(args: argparse.Namespace) -> str | None:
    """--redis, else IDENTIFY_REDIS_URL: shared rate-limit counters. Checked
    here, so a wrong URL or a Redis that does not answer stops the start
    instead of silently counting nothing."""
    url: str | None = args.redis or os.environ.get("IDENTIFY_REDIS_URL") or None
    if url is None:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("--redis must be a redis://, rediss:// or unix:// URL")
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        raise ValueError(f"Redis at --redis does not answer: {type(exc).__name__}") from None
    return url


def cmd_serve(args: argparse.Namespace) -> int:
    url = _db_url(args)
    projects = _load_projects(_config_path(args))

    # Under `identify up` the supervisor names the directory every process
    # writes its samples to, and serves their sums itself.
    if args.metrics_port or os.environ.get(exposition.MULTIPROC_ENV):
        metrics.enable()
    if args.metrics_port:
        exposition.serve_own(args.metrics_port)

    async def main() -> None:
        if not args.no_bootstrap:
            await _bootstrap(url, projects, args.migrate)
        service = Service(_settings(args, url, args.grpc_port), db.open_database(url))
        await serve(service, lifecycle_level=logging.DEBUG if args.supervised else logging.INFO)

    # uvloop: every call's scheduling (gRPC's completion callbacks, tasks,
    # asyncpg's sockets) costs less on it than on asyncio's own loop.
    uvloop.run(main())
    return 0


def _banner(
    args: argparse.Namespace,
    url: str,
    ports: Sequence[int],
    projects: Sequence[config_mod.ProjectConfig],
    admin: str | None,
) -> str:
    base = f"http://127.0.0.1:{args.http_port}"
    lines = [
        "",
        "Identify is up.",
        f"  REST edge    {base}   (GET /healthz, GET /.well-known/jwks.json, GET /openapi.yaml)",
        f"  gRPC         127.0.0.1:{args.http_port} through the edge; "
        + ", ".join(f"{args.host}:{p}" for p in ports)
        + " direct",
        f"  database     {db.DatabaseUrl.parse(url).redacted()}",
    ]
    if args.admin_port:
        lines.append(
            f"  admin API    http://{args.admin_listen_address}:{args.admin_port}/admin/v1"
            "   (REST and gRPC; Authorization: Bearer <admin key>)"
        )
    if admin is not None:
        lines.append(f"  envoy admin  http://{admin}   (stats, clusters)")
    if args.metrics_port:
        lines.append(
            f"  metrics      http://{exposition.HOST}:{args.metrics_port}{exposition.PATH}"
            "   (Envoy and every server process, for Prometheus)"
        )
    else:
        lines.append("  metrics      off (--metrics-port 0)")
    for project in projects:
        names = ", ".join(project.providers)
        lines.append(f"  project      {project.name}  {project.id}  providers: {names}")
    anonymous = next((p for p in projects if "anonymous" in p.providers), None)
    if anonymous is not None:
        body = json.dumps(
            {
                "projectId": anonymous.id,
                "strategy": "simplified",
                "provider": "anonymous",
                "data": {"deviceId": str(uuid.uuid4())},
            }
        )
        lines += [
            "",
            "Sign a device in:",
            f"  curl -s -X PUT {base}/v1/user/login"
            f" -H 'content-type: application/json' -d '{body}'",
        ]
    lines.append("Ctrl-C stops.")
    return "\n".join(lines)


def _cors_origins(args: argparse.Namespace) -> list[str]:
    given = args.cors_origin or os.environ.get("IDENTIFY_CORS_ORIGINS", "").split(",")
    origins = [o.strip().rstrip("/") for o in given if o.strip()]
    for origin in origins:
        if not origin.startswith(("https://", "http://")) or origin.count("/") != 2:
            raise ValueError(f"CORS origin must look like https://app.example.com, got {origin!r}")
    return origins


def _rate_limit(args: argparse.Namespace) -> edge.RateLimit | None:
    # IDENTIFY_RATE_LIMITS=off is honoured where the edge is rendered.
    if args.edge_rate_limit is None:
        return edge.DEFAULT_RATE_LIMIT
    return edge.RateLimit.parse(args.edge_rate_limit)


# After a terminal's "^C", on a line of its own.
STOPPED = "\nIdentify stopped."


def cmd_up(args: argparse.Namespace) -> int:
    from server.supervisor import Supervisor, default_workers, worker_command

    url = _db_url(args)
    projects = _load_projects(_config_path(args))
    redis_url = _redis_url(args)
    if redis_url is not None:
        # The workers inherit it (and keep it out of their argv).
        os.environ["IDENTIFY_REDIS_URL"] = redis_url
    asyncio.run(_bootstrap(url, projects, args.migrate))
    workers = args.workers or default_workers()
    ports = [args.grpc_port + i for i in range(workers)]
    supervisor = Supervisor(
        worker_argv=[worker_command(port=p, host=args.host) for p in ports],
        # The log options are global ones, before `serve`: the environment
        # carries them to every server process.
        worker_env={
            "IDENTIFY_DB": url,
            "IDENTIFY_LOG_LEVEL": args.log_level,
            "IDENTIFY_LOG_FORMAT": args.log_format,
        },
        log_format=args.log_format,
        http_port=args.http_port,
        backends=[edge.Backend(args.host, p) for p in ports],
        listen_address=args.listen_address,
        cors_origins=_cors_origins(args),
        rate_limit=_rate_limit(args),
        trusted_proxies=args.trusted_proxies,
        metrics_port=args.metrics_port,
        admin_api_port=args.admin_port,
        admin_api_address=args.admin_listen_address,
    )
    # Before any child exists: a Ctrl-C while starting stops them in order too.
    supervisor.catch_stop_signals()
    try:
        supervisor.start()
    except exposition.PortTaken:
        supervisor.shutdown()
        raise
    problem = supervisor.wait_until_serving(timeout=args.start_timeout)
    if supervisor.stop_requested:
        supervisor.shutdown()
        print(STOPPED, flush=True)
        return 0
    if problem is not None:
        log.error("identify up failed: %s", problem)
        supervisor.shutdown()
        return 1
    print(_banner(args, url, ports, projects, supervisor.admin_address()), flush=True)
    code = supervisor.watch()
    if code == 0:
        print(STOPPED, flush=True)
    return code


def cmd_envoy_config(args: argparse.Namespace) -> int:
    if args.backend:
        backends = [edge.Backend.parse(b) for b in args.backend]
    else:
        workers = args.workers or 1
        backends = [edge.Backend(args.host, args.grpc_port + i) for i in range(workers)]
    sys.stdout.write(
        edge.render(
            http_port=args.http_port,
            backends=backends,
            listen_address=args.listen_address,
            descriptor=pathlib.Path(args.descriptor) if args.descriptor else edge.DESCRIPTOR,
            cors_origins=_cors_origins(args),
            rate_limit=_rate_limit(args),
            trusted_proxies=args.trusted_proxies,
            admin_api_port=args.admin_port,
            admin_api_address=args.admin_listen_address,
        )
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    url = _db_url(args)

    async def main() -> tuple[str | None, str]:
        database = db.open_database(url, pool_size=1)
        try:
            return await db.migrate(database)
        finally:
            await database.dispose()

    before, after = asyncio.run(main())
    print(f"schema {before or 'empty'} -> {after}")
    return 0


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    """Through the admin API (--server, --key); with --db, straight into
    that database (before any admin key exists, say)."""
    if not args.db:
        from server.admin.cli import rotate_through_api

        return rotate_through_api(args)
    from server.keys import rotate_signing_key

    url = _db_url(args)

    async def main() -> tuple[str, int]:
        database = db.open_database(url, pool_size=1)
        try:
            await db.ensure_schema(database, auto_migrate=False)
            return await rotate_signing_key(database)
        finally:
            await database.dispose()

    kid, retired = asyncio.run(main())
    print(f"new signing key {kid}; {retired} retired (still published until their tokens expire)")
    return 0


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="identify", description="Identify identity service")
    _log_options(parser, os.environ.get("IDENTIFY_LOG_LEVEL", "info"), _env_log_format())
    sub = parser.add_subparsers(dest="command", required=True)

    def edge_policy(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cors-origin",
            action="append",
            metavar="ORIGIN",
            help="browser origin allowed to call the REST API (repeatable; IDENTIFY_CORS_ORIGINS)",
        )
        p.add_argument(
            "--edge-rate-limit",
            metavar="RATE",
            help=f"sign-ups and logins per client IP: 20/s, 600/m, 20/s,burst=100 or off"
            f" (default {edge.DEFAULT_RATE_LIMIT}; {RATE_LIMITS_ENV}=off turns it off)",
        )
        p.add_argument(
            "--trusted-proxies",
            type=int,
            default=0,
            metavar="N",
            help="load balancers in front of the edge that append to X-Forwarded-For (default 0)",
        )

    def admin_listener(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--admin-port",
            type=int,
            default=edge.DEFAULT_ADMIN_API_PORT,
            metavar="N",
            help=f"port of the admin API listener (default {edge.DEFAULT_ADMIN_API_PORT}; 0: none)",
        )
        p.add_argument(
            "--admin-listen-address",
            default="127.0.0.1",
            metavar="ADDR",
            help="address the admin API listener binds (default 127.0.0.1)",
        )

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="projects YAML file (env IDENTIFY_CONFIG)")
        p.add_argument("--db", help=f"database URL (env IDENTIFY_DB, default {db.DEFAULT_URL})")
        p.add_argument("--grpc-port", type=int, default=50051)
        p.add_argument("--host", default="127.0.0.1", help="address the gRPC servers bind")
        p.add_argument(
            "--migrate", action="store_true", help="apply pending migrations before serving"
        )
        p.add_argument(
            "--redis",
            metavar="URL",
            help="redis://host:port: rate-limit counters shared by every process and machine"
            " (env IDENTIFY_REDIS_URL; default: each process counts alone)",
        )

    up = sub.add_parser("up", help="gRPC server(s) and the Envoy edge together")
    common(up)
    up.add_argument("--http-port", type=int, default=8080)
    up.add_argument("--listen-address", default="127.0.0.1", help="address Envoy listens on")
    up.add_argument("--workers", type=int, default=0, help="server processes (default: cores)")
    up.add_argument("--start-timeout", type=float, default=30.0)
    up.add_argument(
        "--metrics-port",
        type=_port,
        default=exposition.DEFAULT_PORT,
        metavar="N",
        help=f"Prometheus scrape endpoint on {exposition.HOST}:N{exposition.PATH}: Envoy's stats"
        f" and every server process's metrics (default {exposition.DEFAULT_PORT}; 0: off)",
    )
    edge_policy(up)
    admin_listener(up)
    up.set_defaults(func=cmd_up)

    srv = sub.add_parser("serve", help="one gRPC server, no edge")
    common(srv)
    srv.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        metavar="N",
        help=f"this process's metrics on {exposition.HOST}:N{exposition.PATH} (default 0: off)",
    )
    srv.add_argument("--no-bootstrap", action="store_true", help=argparse.SUPPRESS)
    srv.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    srv.set_defaults(func=cmd_serve)

    env = sub.add_parser("envoy-config", help="print the rendered Envoy config")
    env.add_argument("--http-port", type=int, default=8080)
    env.add_argument("--grpc-port", type=int, default=50051)
    env.add_argument("--host", default="127.0.0.1")
    env.add_argument("--workers", type=int, default=0)
    env.add_argument("--listen-address", default="127.0.0.1")
    env.add_argument("--descriptor", help="path of identify.pb (default: the packaged one)")
    env.add_argument(
        "--backend", action="append", metavar="HOST:PORT", help="a gRPC backend (repeatable)"
    )
    edge_policy(env)
    admin_listener(env)
    env.set_defaults(func=cmd_envoy_config)

    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.add_argument("--db", help="database URL (env IDENTIFY_DB)")
    mig.set_defaults(func=cmd_migrate)

    rot = sub.add_parser("rotate-keys", help="start signing profileTokens with a new key")
    rot.add_argument("--db", help="database URL: rotate there directly, not through the API")
    admin_cli.api_options(rot)
    rot.set_defaults(func=cmd_rotate_keys)

    admin_cli.register(sub)
    # Also after the command (`identify up --log-format json`); given there
    # or not at all, the value before it (or its default) stands.
    for command in sub.choices.values():
        _log_options(command, argparse.SUPPRESS, argparse.SUPPRESS)
    return parser


def _env_log_format() -> str:
    # argparse checks `choices` on the command line only, not on a default.
    value = os.environ.get("IDENTIFY_LOG_FORMAT", "text")
    if value not in logs.FORMATS:
        raise SystemExit(f"identify: IDENTIFY_LOG_FORMAT must be one of {', '.join(logs.FORMATS)}")
    return value


def _log_options(p: argparse.ArgumentParser, level: str, fmt: str) -> None:
    p.add_argument(
        "--log-level",
        default=level,
        help="debug, info (default), warning or error (env IDENTIFY_LOG_LEVEL)",
    )
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=fmt,
        help="text (default) or json: one object per line (env IDENTIFY_LOG_FORMAT)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        code: int = args.func(args)
    except (config_mod.ConfigError, db.SchemaError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except (ListenError, exposition.PortTaken) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C where nothing catches it (reading the config, checking the
        # schema): no process was started and an unfinished transaction rolls
        # back, so a traceback would only say where we were.
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
