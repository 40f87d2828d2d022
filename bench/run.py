"""`make bench`: the real stack under load through the Envoy edge.

For 2 server processes (issue 11's figures; --workers adds others): the lean
ceiling (the same Envoy binary with only the JSON transcoder in front of an
empty gRPC handler, bench/lean-envoy.yaml), the edge ceiling (the service's
own Envoy config in front of the same handler), then the service on SQLite
and, when IDENTIFY_BENCH_POSTGRES_URL or IDENTIFY_TEST_POSTGRES_URL is set, on
a fresh PostgreSQL database, each beside the peer (bench/peer, fastapi-users)
on the same store; then the read scenarios at 10,000 and 1,000,000 users
(bench/seed.py, kept under var/bench/ between runs). Each scenario is loaded
at 64 connections by wrk in its own process. Writes
bench/results/latest.{json,md}, the targets table into README.md, and prints
the Markdown.

    python -m bench.run [--duration 5] [--warmup 1] [--connections 64]
                        [--workers 2] [--loadgen auto|wrk|python] [--no-profile]
                        [--seed-users 10000,1000000 | --no-flat]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import logging
import os
import pathlib
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from bench import load, procstat, profile, report, scenarios, seed, stacks
from bench.report import Report
from server.store.schema import audit_events
from tests.fakes.oidc_issuer import FakeIssuer
from tests.harness import in_store

log = logging.getLogger("bench")
ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROFILED = ("anonymous_login", "profile_read")
# The figures: 2 server processes (and the peer's 2 uvicorn workers).
DEFAULT_WORKERS = 2
PROBE_TIMEOUT_S = 12.0
# The db label of the figure measured with the rate limits on.
LIMITS_ON_DB = report.LIMITS_ON_DB
METRICS_ON_DB, METRICS_OFF_DB = report.METRICS_ON_DB, report.METRICS_OFF_DB
# Off, on, on, off: a machine getting busier or quieter meanwhile weighs on
# both sides alike.
METRICS_ROUNDS = (METRICS_OFF_DB, METRICS_ON_DB, METRICS_ON_DB, METRICS_OFF_DB)


def _cpu_model() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: pathlib.Path) -> None:
        self.args = args
        self.workdir = workdir
        self.generator = load.generator(args.loadgen, workdir)
        self.report = Report(
            meta={
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "cpu": _cpu_model(),
                "cores": os.cpu_count(),
                "kernel": platform.release(),
                "loadgen": self.generator.name,
                "threads": args.threads,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            }
        )

    def spec(
        self, running: stacks.Running, scenario: scenarios.Scenario, conns: int, secs: float
    ) -> load.LoadSpec:
        return load.LoadSpec(
            host=running.host,
            port=running.port,
            requests=scenario.requests,
            connections=conns,
            duration_s=secs,
            threads=self.args.threads,
        )

    def measure(
        self,
        running: stacks.Running,
        db: str,
        workers: int,
        scenario: scenarios.Scenario,
        connections: list[int] | None = None,
        duration: float | None = None,
        warm: bool = True,
    ) -> None:
        connections = connections or self.args.connections
        scenarios.verify(running.base_url, scenario)
        if warm and self.args.warmup > 0:
            self.generator.run(self.spec(running, scenario, max(connections), self.args.warmup))
        for conns in connections:
            for proc in running.processes:
                proc.begin()
            busy = procstat.machine_busy_seconds()
            result = self.generator.run(
                self.spec(running, scenario, conns, duration or self.args.duration)
            )
            busy = procstat.machine_busy_seconds() - busy
            processes = [proc.end() for proc in running.processes]
            cpu = sum(float(p["cpu_s"]) for p in processes)
            run = {
                "db": db,
                "workers": workers,
                "scenario": scenario.name,
                "title": scenario.title,
                "connections": conns,
                "rps": round(result.rps, 1),
                "requests": result.requests,
                "duration_s": round(result.duration_s, 2),
                "p50_ms": round(result.p50_ms, 2),
                "p90_ms": round(result.p90_ms, 2),
                "p99_ms": round(result.p99_ms, 2),
                "max_ms": round(result.max_ms, 2),
                "non_2xx": result.non_2xx,
                "socket_errors": result.socket_errors,
                "cut_at_end": result.cut,
                "loadgen_cpu_s": result.loadgen_cpu_s,
                # Anything else on the machine during the run (other jobs
                # make every figure here lower): a noise gauge.
                "other_cpu_s": round(max(0.0, busy - cpu - result.loadgen_cpu_s), 2),
                "cpu_ms_per_request": round(1000 * cpu / result.requests, 3)
                if result.requests
                else 0.0,
                "processes": processes,
            }
            self.report.runs.append(run)
            log.info(
                "%-10s %dw %-16s c=%-3d %8.0f req/s  p50 %6.1f ms  p99 %6.1f ms  errors %d",
                db,
                workers,
                scenario.name,
                conns,
                result.rps,
                result.p50_ms,
                result.p99_ms,
                result.errors,
            )

    def record_stack(self, running: stacks.Running, db: str, workers: int) -> None:
        self.report.stacks.append(
            {
                "db": db,
                "workers": workers,
                "processes": [
                    {"name": p.name, "peak_rss_mb": p.life_peak_mb()} for p in running.processes
                ],
            }
        )

    def profile(self, running: stacks.Running, scenario: scenarios.Scenario) -> None:
        py_spy = profile.ensure_py_spy()
        if py_spy is None:
            self.report.profiles[scenario.name] = {"error": "py-spy could not be installed"}
            return
        server = running.servers()[0]
        out = self.workdir / f"profile-{scenario.name}.txt"
        seconds = 4
        recorder = profile.start(py_spy, server.pid, seconds, out)
        time.sleep(0.3)  # let py-spy attach before the load starts
        self.generator.run(self.spec(running, scenario, min(self.args.connections), seconds))
        _, err = recorder.communicate(timeout=60)
        if recorder.returncode != 0 or not out.exists():
            log.warning("py-spy failed: %s", err.decode(errors="replace")[-400:])
            self.report.profiles[scenario.name] = {"error": "py-spy failed"}
            return
        summary = profile.summarise(out.read_text(), seconds)
        self.report.profiles[scenario.name] = summary.to_json()
        (RESULTS if self.args.output is None else self.args.output).mkdir(
            parents=True, exist_ok=True
        )
        target = (self.args.output or RESULTS) / f"profile-{scenario.name}.txt"
        target.write_text(summary.text(f"{scenario.title}: one server process, sqlite, 1 worker"))

    def run(self) -> Report:
        issuer = FakeIssuer()
        cognito = None
        try:
            if "cognito_profile_read" in self.args.scenarios:
                cognito = scenarios.Cognito()
            world = scenarios.World(issuer, cognito)
            pg_server = stacks.postgres_server_url()
            self.report.meta["postgresql"] = bool(pg_server)
            self.report.meta["target_workers"] = max(self.args.workers)
            for workers in self.args.workers:
                ceiling = world.ceiling()
                with stacks.lean_ceiling(
                    self.workdir / f"lean-{workers}",
                    workers=workers,
                    probe_path=ceiling.requests[0].path,
                ) as running:
                    self.measure(running, "none", workers, ceiling)
                    self.record_stack(running, "none", workers)
                with stacks.ceiling(
                    self.workdir / f"ceiling-{workers}", workers=workers
                ) as running:
                    self.measure(running, "none", workers, world.edge_ceiling())
                self.service(world, "sqlite", workers, None, issuer)
                if workers == max(self.args.workers):
                    self.peer("sqlite", None)
                if workers == min(self.args.workers) and "profile_read" in self.args.scenarios:
                    self.profile_read_with_limits(world, issuer, workers)
                    self.profile_read_metrics_on_off(world, issuer, workers)
                if pg_server:
                    self.service(world, "postgresql", workers, pg_server, issuer)
                    if workers == max(self.args.workers):
                        self.peer("postgresql", pg_server)
            if self.args.flat:
                workers = max(self.args.workers)
                self.flat(world, "sqlite", None, workers)
                if pg_server:
                    self.flat(world, "postgresql", pg_server, workers)
        finally:
            issuer.stop()
            if cognito is not None:
                cognito.stop()
        self.report.add_ratios()
        return self.report

    def peer(self, db: str, pg_server: str | None) -> None:
        """The fastapi-users peer on a fresh database of the same store, its
        users registered and signed in through its own routes."""
        tmp = self.workdir / f"peer-{db}"
        with (
            _database(tmp, pg_server) as db_url,
            stacks.peer(tmp, db_url=db_url) as running,
        ):
            scenario = scenarios.peer_profile_read(running.base_url)
            self.measure(running, db, stacks.PEER_WORKERS, scenario)
            self.record_stack(running, f"peer:{db}", stacks.PEER_WORKERS)

    def flat(self, world: scenarios.World, store: str, pg_server: str | None, workers: int) -> None:
        """The read scenarios against a small and a large seeded database,
        both stacks up side by side and measured in turn (small, large,
        large, small) so drift on the machine weighs on both alike."""
        config = scenarios.config(world.issuer, world.cognito)

        def start_once(db_url: str) -> None:
            with stacks.service(self.workdir / f"seed-{store}", config, db_url=db_url, workers=1):
                pass

        sizes = self.args.seed_users
        dbs = {n: seed.seeded(store, n, scenarios.PROJECT, start_once, pg_server) for n in sizes}
        with contextlib.ExitStack() as both:
            reads: dict[int, tuple[stacks.Running, list[scenarios.Scenario]]] = {}
            for n in sizes:
                running, _stack = both.enter_context(
                    stacks.service(
                        self.workdir / f"flat-{store}-{n}",
                        config,
                        db_url=dbs[n].db_url,
                        workers=workers,
                    )
                )
                chosen = [
                    s
                    for s in world.seeded_reads(running.base_url, dbs[n])
                    if s.name in self.args.scenarios
                ]
                reads[n] = (running, chosen)
            small, large = sizes[0], sizes[-1]
            for i in range(len(reads[small][1])):
                for round_, n in enumerate((small, large, large, small)):
                    running, chosen = reads[n]
                    self.measure(
                        running,
                        report.flat_db(store, n),
                        workers,
                        chosen[i],
                        connections=[report.P99_CONNECTIONS],
                        duration=self.args.flat_duration,
                        warm=round_ < 2,
                    )
            for n in sizes:
                self.record_stack(reads[n][0], report.flat_db(store, n), workers)

    def service(
        self,
        world: scenarios.World,
        db: str,
        workers: int,
        pg_server: str | None,
        issuer: FakeIssuer,
    ) -> None:
        tmp = self.workdir / f"{db}-{workers}"
        with (
            _database(tmp, pg_server) as db_url,
            stacks.service(
                tmp, scenarios.config(issuer, world.cognito), db_url=db_url, workers=workers
            ) as (running, _stack),
        ):
            chosen = [s for s in world.scenarios(running.base_url) if s.name in self.args.scenarios]
            for scenario in chosen:
                _settle(db_url)
                self.measure(running, db, workers, scenario)
            if self.args.profile and db == "sqlite" and workers == min(self.args.workers):
                for scenario in chosen:
                    if scenario.name in PROFILED:
                        self.profile(running, scenario)
            by_name = {s.name: s for s in chosen}
            if "anonymous_login" in by_name:
                self.disconnect_probe(running, db, workers, by_name["anonymous_login"])
            self.record_stack(running, db, workers)

    def profile_read_with_limits(
        self, world: scenarios.World, issuer: FakeIssuer, workers: int
    ) -> None:
        """The same profile read with the rate limits on (every other figure
        runs with them off, so writes are not throttled): the limits guard only
        the routes that create accounts or check credentials, so this one must
        not pay for them."""
        tmp = self.workdir / "sqlite-limits"
        config = scenarios.config(issuer)
        # On, but high enough for the scenario's own set-up (it makes users).
        for project in config["projects"]:
            project["limits"] = {"anonymousSignUp": {"perIp": "1000000/hour"}}
        with (
            _database(tmp, None) as db_url,
            stacks.service(
                tmp,
                config,
                db_url=db_url,
                workers=workers,
                env={"IDENTIFY_RATE_LIMITS": "on"},
            ) as (running, _stack),
        ):
            self.measure(running, LIMITS_ON_DB, workers, world.profile_read())

    def profile_read_metrics_on_off(
        self, world: scenarios.World, issuer: FakeIssuer, workers: int
    ) -> None:
        """The profile read with the servers' metrics on and off: two stacks
        up side by side, measured in turn (METRICS_ROUNDS) at each connection
        count, so both sides meet the same machine."""
        config = scenarios.config(issuer)
        with contextlib.ExitStack() as both:
            pair = {}
            for db, on in ((METRICS_OFF_DB, False), (METRICS_ON_DB, True)):
                tmp = self.workdir / db
                db_url = both.enter_context(_database(tmp, None))
                running, _stack = both.enter_context(
                    stacks.service(tmp, config, db_url=db_url, workers=workers, metrics=on)
                )
                pair[db] = (running, world.profile_read())
            for conns in self.args.connections:
                for db in METRICS_ROUNDS:
                    running, read = pair[db]
                    self.measure(running, db, workers, read, connections=[conns])
            on_running, _ = pair[METRICS_ON_DB]
            _check_counted(on_running, self.report.runs)

    def disconnect_probe(
        self, running: stacks.Running, db: str, workers: int, scenario: scenarios.Scenario
    ) -> None:
        """Clients that vanish mid-call (wrk cut short, as a mobile network
        does) must not slow anyone else: one login right after must be fast."""
        if not isinstance(self.generator, load.Wrk):
            return
        spec = self.spec(running, scenario, 16, 1)
        cut = self.generator.run(dataclasses.replace(spec, graceful=False)).cut
        req = scenario.requests[0]
        started = time.monotonic()
        try:
            with httpx.Client(base_url=running.base_url, timeout=PROBE_TIMEOUT_S) as http:
                status = http.request(
                    req.method, req.path, headers=req.headers, content=(req.body or "").encode()
                ).status_code
        except httpx.TimeoutException:
            status = 0
        self.report.probes.append(
            {
                "db": db,
                "workers": workers,
                "scenario": scenario.name,
                "cut": cut,
                "next_call_ms": round((time.monotonic() - started) * 1000, 1),
                "next_call_status": status,
            }
        )
        log.info(
            "%-10s %dw after %d calls cut: next call %s in %.0f ms",
            db,
            workers,
            cut,
            status or "timed out",
            (time.monotonic() - started) * 1000,
        )


def _check_counted(running: stacks.Running, runs: list[dict[str, object]]) -> None:
    """The 'on' stack really counted its calls (else on vs off compares
    nothing): its scrape shows at least the GetUser calls measured."""
    text = httpx.get(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10).text
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "identify_rpcs_total" and sample.labels.get("grpc_method") == "GetUser"
    )
    measured = sum(int(str(r["requests"])) for r in runs if r["db"] == METRICS_ON_DB)
    if counted < measured:
        raise RuntimeError(f"metrics on counted {counted} GetUser calls of {measured} measured")


SETTLE_TIMEOUT_S = 20.0
_UNFANNED = sa.select(sa.literal(1)).where(audit_events.c.fanned_out == sa.false()).limit(1)


def _settle(db_url: str) -> None:
    """Until the webhook relay has fanned out every audit event (a write
    scenario leaves thousands): its catching up would otherwise fall into
    the next scenario's figure, a read's. While a write scenario runs, the
    relay's work is in that scenario's own figure."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while in_store(db_url, lambda conn: conn.execute(_UNFANNED).first()) is not None:
        if time.monotonic() > deadline:
            log.warning(
                "the webhook relay still had events to fan out after %.0f s", SETTLE_TIMEOUT_S
            )
            return
        time.sleep(0.2)


@contextlib.contextmanager
def _database(tmp: pathlib.Path, pg_server: str | None) -> Iterator[str]:
    if pg_server is None:
        tmp.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{tmp / 'identify.db'}"
        return
    with stacks.postgres_database(pg_server) as url:
        yield url


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per figure")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each scenario")
    parser.add_argument("--connections", type=_ints, default=[64])
    parser.add_argument("--workers", type=_ints, default=[DEFAULT_WORKERS])
    parser.add_argument("--threads", type=int, default=1, help="load generator threads")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--scenarios",
        type=lambda s: s.split(","),
        default=[
            "anonymous_login",
            "nologin_get",
            "profile_read",
            "check_token",
            "cognito_profile_read",
        ],
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument(
        "--seed-users",
        type=_ints,
        default=[seed.SMALL, seed.LARGE],
        help="the small and the large seeded database (flat at a million users)",
    )
    parser.add_argument("--flat-duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--no-flat", dest="flat", action="store_false")
    parser.add_argument("--output", type=pathlib.Path, default=None, help="default: bench/results")
    args = parser.parse_args(argv)
    args.workers = sorted(set(args.workers))
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # bench/seed.py reads the schema's head revision through Alembic, which
    # announces each plugin it loads.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = parse_args(argv)
    os.chdir(ROOT)  # the stack's children run `python -m ...` from here
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="identify-bench-"))
    started = time.monotonic()
    try:
        report = Bench(args, workdir).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.meta["total_s"] = round(time.monotonic() - started, 1)
    print(report.write(args.output or RESULTS))
    # The README shows the default run's targets, not a trial's elsewhere.
    if args.output is None and report.update_readme():
        log.info("README.md: targets table updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
