"""Turns measurements into bench/results/latest.json and latest.md, and
judges them against the targets (issue 11's table first, then the older
ones still watched) without rounding in their favour; the issue-11 table
also goes into README.md between its bench-targets markers."""

from __future__ import annotations

import json
import pathlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Issue 11: every figure at this many connections, with the most server
# processes measured (2 by default), against the lean ceiling of as many.
P99_CONNECTIONS = 64
RSS_MB = 120.0
STORES = ("sqlite", "postgresql")
# (scenario, what, goal on SQLite, goal on PostgreSQL): req/s over the lean
# ceiling's.
CEILING_GOALS = (
    ("profile_read", "profile read, bearer JWT (authZero, local issuer)", 0.80, 0.60),
    ("nologin_get", "noLogin get by externalId", 0.80, 0.60),
    ("cognito_profile_read", "awsCognito profile read (moto)", 0.75, 0.55),
    ("check_token", "check by token (writes)", 0.45, 0.35),
    ("anonymous_login", "anonymous login (writes)", 0.45, 0.35),
)
PEER_SCENARIO = "peer_profile_read"
PEER_FACTOR = 4.0
# p99 of each service scenario over the lean ceiling's own p99.
P99_FACTORS = {"sqlite": 1.5, "postgresql": 2.0}
# Read scenarios at the large seeded database: req/s at least this share of
# the same at the small one.
FLAT_SCENARIOS = ("nologin_get", "profile_read", "cognito_profile_read")
FLAT_RATIO = 0.90
README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
README_MARKERS = ("<!-- BEGIN bench-targets -->", "<!-- END bench-targets -->")


def _count(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def flat_db(store: str, users: int) -> str:
    """The db label of a figure on a seeded database: sqlite@10k, sqlite@1M."""
    return f"{store}@{_count(users)}"


def _store_of(db: str) -> str:
    return db.removeprefix("peer:").split("@")[0].split("+")[0]


# Rate limits must cost a profile read nothing: its req/s with them on, over
# the same figure with them off, must not drop below this (noise allows ~5 %).
LIMITS_ON_DB = "sqlite+limits"
LIMITS_COST_RATIO = 0.90
# The servers' metrics (issue 13): a profile read's CPU (servers and Envoy,
# per request) with them on may exceed the same figure with them off by this.
METRICS_ON_DB = "sqlite+metrics-on"
METRICS_OFF_DB = "sqlite+metrics-off"
METRICS_COST = 0.05
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


@dataclass
class Report:
    meta: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    stacks: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Report:
        return cls(
            meta=raw["meta"],
            runs=raw["runs"],
            stacks=raw["stacks"],
            profiles=raw["profiles"],
            probes=raw.get("disconnect_probes", []),
        )

    def add_ratios(self) -> None:
        ceilings = {
            (r["workers"], r["connections"]): r["rps"]
            for r in self.runs
            if r["scenario"] == "ceiling"
        }
        for run in self.runs:
            top = ceilings.get((run["workers"], run["connections"]))
            run["ratio_to_ceiling"] = round(run["rps"] / top, 3) if top else None

    # ------------------------------------------------------ issue 11
    def _at(self, db: str, scenario: str) -> dict[str, Any] | None:
        workers = self.meta.get("target_workers", 2)
        for r in self.runs:
            if (
                r["db"] == db
                and r["scenario"] == scenario
                and r["connections"] == P99_CONNECTIONS
                and (r["workers"] == workers or scenario == PEER_SCENARIO)
            ):
                return r
        return None

    def issue_targets(self) -> list[dict[str, str]]:
        """One row per target and store: value, goal, PASS/FAIL (or NOT
        MEASURED when the run has no figure for it)."""
        out: list[dict[str, str]] = []
        lean = self._at("none", "ceiling")
        stores = [s for s in STORES if any(r["db"] == s for r in self.runs)] or ["sqlite"]

        def row(target: str, store: str, value: float | None, goal: str, ok: bool, how: str):
            out.append(
                {
                    "target": target,
                    "store": store,
                    "value": "—" if value is None else how.format(value),
                    "goal": goal,
                    "status": "NOT MEASURED" if value is None else ("PASS" if ok else "FAIL"),
                }
            )

        for scenario, what, *goals in CEILING_GOALS:
            for store in stores:
                goal = goals[STORES.index(store)]
                r = self._at(store, scenario)
                ratio = r["rps"] / lean["rps"] if r and lean and lean["rps"] else None
                row(
                    f"{what} x lean ceiling",
                    store,
                    ratio,
                    f"≥ {goal:.2f}",
                    ratio is not None and ratio >= goal,
                    "{:.3f}",
                )
        for store in stores:
            ours, peer = self._at(store, "profile_read"), self._at(store, PEER_SCENARIO)
            factor = ours["rps"] / peer["rps"] if ours and peer and peer["rps"] else None
            row(
                "profile read x the fastapi-users peer, same store",
                store,
                factor,
                f"≥ {PEER_FACTOR:g}",
                factor is not None and factor >= PEER_FACTOR,
                "{:.2f}",
            )
        for store in stores:
            limit = P99_FACTORS[store]
            for scenario, what, *_ in CEILING_GOALS:
                r = self._at(store, scenario)
                ratio = r["p99_ms"] / lean["p99_ms"] if r and lean and lean["p99_ms"] else None
                row(
                    f"p99 of {what} x the lean ceiling's p99",
                    store,
                    ratio,
                    f"≤ {limit:g}",
                    ratio is not None and ratio <= limit,
                    "{:.2f}",
                )
        for store in stores:
            for scenario in FLAT_SCENARIOS:
                pair = self.flat_pair(store, scenario)
                ratio = pair["ratio"] if pair else None
                label = (
                    f"{scenario} at {pair['large']} users x at {pair['small']}"
                    if pair
                    else f"{scenario} flat in the number of users"
                )
                row(
                    label,
                    store,
                    ratio,
                    f"≥ {FLAT_RATIO:.2f}",
                    ratio is not None and ratio >= FLAT_RATIO,
                    "{:.3f}",
                )
        for store in stores:
            peaks = [
                p["peak_rss_mb"]
                for s in self.stacks
                if s["db"] != "none"
                and not s["db"].startswith("peer:")
                and _store_of(s["db"]) == store
                for p in s["processes"]
                if p["name"].startswith("server")
            ]
            worst = max(peaks) if peaks else None
            row(
                "every server process's peak RSS, MB",
                store,
                worst,
                f"< {RSS_MB:g}",
                worst is not None and worst < RSS_MB,
                "{:.0f}",
            )
        errors = sum(r["non_2xx"] + r["socket_errors"] for r in self.runs)
        row(
            "errors (non-2xx, socket) in every figure",
            "all",
            float(errors) if self.runs else None,
            "0",
            errors == 0,
            "{:.0f}",
        )
        return out

    def flat_pair(self, store: str, scenario: str) -> dict[str, Any] | None:
        """The large seeded database's req/s over the small one's, each summed
        over its rounds."""
        sides: dict[str, list[dict[str, Any]]] = {}
        for r in self.runs:
            if r["scenario"] == scenario and r["db"].startswith(store + "@"):
                sides.setdefault(r["db"].split("@")[1], []).append(r)
        if len(sides) < 2:
            return None

        def users(label: str) -> int:
            scale = {"M": 1_000_000, "k": 1000}.get(label[-1:], 1)
            return int(label[:-1] if scale > 1 else label) * scale

        small, large = sorted(sides, key=users)[0], sorted(sides, key=users)[-1]

        def rate(runs: list[dict[str, Any]]) -> float:
            return sum(r["requests"] for r in runs) / sum(r["duration_s"] for r in runs)

        return {
            "small": small,
            "large": large,
            "rps_small": round(rate(sides[small]), 1),
            "rps_large": round(rate(sides[large]), 1),
            "ratio": rate(sides[large]) / rate(sides[small]),
        }

    def issue_targets_markdown(self) -> str:
        lines = [
            "| target | store | value | goal | result |",
            "|---|---|---:|---:|---|",
        ]
        for t in self.issue_targets():
            lines.append(
                f"| {t['target']} | {t['store']} | {t['value']} | {t['goal']} | **{t['status']}** |"
            )
        return "\n".join(lines) + "\n"

    # ------------------------------------------------- older targets
    def targets(self) -> list[dict[str, str]]:
        service = [r for r in self.runs if r["db"] != "none"]
        out = []

        off = {
            (r["workers"], r["connections"]): r
            for r in service
            if r["db"] == "sqlite" and r["scenario"] == "profile_read"
        }
        limited = [
            {**r, "vs_off": round(r["rps"] / off[(r["workers"], r["connections"])]["rps"], 3)}
            for r in service
            if r["db"] == LIMITS_ON_DB and off.get((r["workers"], r["connections"]))
        ]
        out.append(
            _target(
                f"(issue 10) a profile read pays nothing for rate limits: req/s with them on"
                f" >= {LIMITS_COST_RATIO:.0%} of off",
                limited,
                [r for r in limited if r["vs_off"] < LIMITS_COST_RATIO],
                lambda r: f"{r['vs_off']:.2f}x",
                lambda r: -r["vs_off"],
            )
        )

        metered = self.metrics_pairs()
        out.append(
            _target(
                f"(issue 13) metrics cost <= {METRICS_COST:.0%} of a profile read's CPU"
                " (CPU ms per request, servers and Envoy, on vs off)",
                metered,
                [r for r in metered if r["metrics_cost"] > METRICS_COST],
                lambda r: f"{r['metrics_cost']:+.1%}",
                lambda r: r["metrics_cost"],
            )
        )

        stalled = [
            p for p in self.probes if p["next_call_status"] != 200 or p["next_call_ms"] >= 1000
        ]
        out.append(
            _target(
                "(extra) calls cut mid-flight by vanishing clients do not stall the next call",
                [{**p, "connections": 16} for p in self.probes],
                [{**p, "connections": 16} for p in stalled],
                lambda p: (
                    f"{p['cut']} cut, next call {p['next_call_status'] or 'timed out'} "
                    f"in {p['next_call_ms']:.0f} ms"
                ),
            )
        )
        return out

    def metrics_pairs(self) -> list[dict[str, Any]]:
        """Per scenario and connection count, the metrics-on figures beside the
        metrics-off ones (each side summed over its rounds): `metrics_cost` is
        the CPU per request (servers and Envoy) metrics on added over off."""
        sides: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
        for r in self.runs:
            if r["db"] in (METRICS_ON_DB, METRICS_OFF_DB):
                key = (r["scenario"], r["connections"])
                sides.setdefault(key, {}).setdefault(r["db"], []).append(r)
        pairs = []
        for (scenario, conns), side in sides.items():
            on, off = side.get(METRICS_ON_DB), side.get(METRICS_OFF_DB)
            if not on or not off:
                continue
            cpu_on, cpu_off = _cpu_ms_per_request(on), _cpu_ms_per_request(off)
            if not cpu_off:
                continue
            pairs.append(
                {
                    "db": METRICS_ON_DB,
                    "workers": on[0]["workers"],
                    "scenario": scenario,
                    "connections": conns,
                    "rounds": len(on),
                    "rps_off": round(sum(r["rps"] for r in off) / len(off), 1),
                    "rps_on": round(sum(r["rps"] for r in on) / len(on), 1),
                    "cpu_ms_per_request_off": cpu_off,
                    "cpu_ms_per_request_on": cpu_on,
                    "server_cpu_ms_per_request_off": _cpu_ms_per_request(off, servers_only=True),
                    "server_cpu_ms_per_request_on": _cpu_ms_per_request(on, servers_only=True),
                    "metrics_cost": round(cpu_on / cpu_off - 1, 4),
                }
            )
        return pairs

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "issue_targets": self.issue_targets(),
            "targets": self.targets(),
            "runs": self.runs,
            "stacks": self.stacks,
            "profiles": self.profiles,
            "disconnect_probes": self.probes,
            "metrics_on_off": self.metrics_pairs(),
            "flat": [
                {"store": store, "scenario": scenario, **pair}
                for store in STORES
                for scenario in FLAT_SCENARIOS
                if (pair := self.flat_pair(store, scenario))
            ],
        }

    def update_readme(self, path: pathlib.Path = README) -> bool:
        """The issue-11 targets table into README.md between its markers;
        False (README untouched) when the markers are not there."""
        text = path.read_text()
        begin, end = README_MARKERS
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            return False
        body = (
            f"{begin}\n_{self.meta['date']}, {self.meta['cores']} cores, "
            f"{self.meta.get('target_workers', 2)} server processes, c={P99_CONNECTIONS}; "
            f"written by `make bench`._\n\n{self.issue_targets_markdown()}{end}"
        )
        path.write_text(pattern.sub(lambda _m: body, text, count=1))
        return True

    def write(self, directory: pathlib.Path) -> str:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "latest.json").write_text(json.dumps(self.to_json(), indent=2) + "\n")
        markdown = self.markdown()
        (directory / "latest.md").write_text(markdown)
        return markdown

    def markdown(self) -> str:
        m = self.meta
        lines = [
            "# Identify benchmark",
            "",
            f"{m['date']} · {m['cpu']} x {m['cores']} cores · {m['kernel']} · "
            f"load generator {m['loadgen']} ({m['threads']} thread) · "
            f"{m['duration_s']:g} s per figure after {m['warmup_s']:g} s warm-up · "
            f"load average before: {m['loadavg_before']}"
            + (f" · whole run {m['total_s']:.0f} s" if "total_s" in m else ""),
            "",
            "Every call goes through the Envoy edge (REST, HTTP/1.1 keep-alive) on loopback. "
            "`x ceiling`: requests/s over the lean ceiling (db `none`, scenario `ceiling`: "
            "the same Envoy binary with only the JSON transcoder, bench/lean-envoy.yaml, in "
            "front of an empty gRPC handler) with as many processes; `edge_ceiling` is the "
            "same handler behind the service's own Envoy config; `peer_profile_read` is the "
            "fastapi-users peer (bench/peer, 2 uvicorn workers) on the same store; "
            "`sqlite@10k` / `sqlite@1M` (and postgresql@…) are seeded databases "
            "(bench/seed.py), measured in turn small, large, large, small. "
            "CPU: seconds used during the figure's run by all "
            "server processes / Envoy; ms CPU per request counts servers and Envoy. "
            "RSS: the highest peak of any server process / Envoy during the run. "
            "`other CPU s`: CPU the rest of the machine used meanwhile: PostgreSQL's own "
            "processes on postgresql rows, otherwise other jobs (then every figure of "
            "that row is low).",
            "",
            "| db | workers | scenario | conns | req/s | x ceiling | p50 ms | p99 ms | errors "
            "| CPU s servers / envoy | CPU ms/req | peak RSS MB server / envoy | other CPU s |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.runs:
            servers = [p for p in r["processes"] if p["name"].startswith("server")]
            envoy = [p for p in r["processes"] if p["name"] == "envoy"]
            cpu_servers = sum(p["cpu_s"] for p in servers)
            cpu_envoy = sum(p["cpu_s"] for p in envoy)
            ratio = r["ratio_to_ceiling"]
            lines.append(
                f"| {r['db']} | {r['workers']} | {r['scenario']} | {r['connections']} "
                f"| {r['rps']:,.0f} | {'—' if ratio is None else f'{ratio:.2f}'} "
                f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                f"| {r['non_2xx'] + r['socket_errors']} "
                f"| {cpu_servers:.1f} / {cpu_envoy:.1f} | {r['cpu_ms_per_request']:.2f} "
                f"| {max((p['peak_rss_mb'] for p in servers), default=0):.0f} / "
                f"{max((p['peak_rss_mb'] for p in envoy), default=0):.0f} "
                f"| {r['other_cpu_s']:.1f} |"
            )
        lines += [
            "",
            f"## Targets (issue 11: {self.meta.get('target_workers', 2)} server processes, "
            f"c={P99_CONNECTIONS})",
            "",
            self.issue_targets_markdown().rstrip("\n"),
        ]
        flat = [
            (store, scenario, pair)
            for store in STORES
            for scenario in FLAT_SCENARIOS
            if (pair := self.flat_pair(store, scenario))
        ]
        if flat:
            lines += [
                "",
                "Flat at a million users (req/s summed over the rounds of each side):",
                "",
                "| store | scenario | small | req/s | large | req/s | large / small |",
                "|---|---|---|---:|---|---:|---:|",
            ]
            for store, scenario, p in flat:
                lines.append(
                    f"| {store} | {scenario} | {p['small']} | {p['rps_small']:,.0f} "
                    f"| {p['large']} | {p['rps_large']:,.0f} | {p['ratio']:.3f} |"
                )
        lines += ["", "## Other targets", "", "| target | result | detail |", "|---|---|---|"]
        for t in self.targets():
            lines.append(f"| {t['target']} | **{t['status']}** | {t['detail']} |")
        lines += ["", "## Peak RSS per process over each stack's life", ""]
        lines += ["| db | workers | process | peak RSS MB |", "|---|---:|---|---:|"]
        for s in self.stacks:
            for p in s["processes"]:
                lines.append(
                    f"| {s['db']} | {s['workers']} | {p['name']} | {p['peak_rss_mb']:.0f} |"
                )
        pairs = self.metrics_pairs()
        if pairs:
            lines += [
                "",
                "## Metrics on vs off (profile read, sqlite, 1 worker)",
                "",
                "Two stacks up side by side, one with `--metrics-port 0`, measured in turn "
                "at each connection count (off, on, on, off: drift on the machine cancels "
                "out), each side summed over its rounds. Cost: the CPU per request "
                "(servers and Envoy) metrics on added over off.",
                "",
                "| conns | rounds | req/s off | req/s on | CPU ms/req off | CPU ms/req on "
                "| server CPU ms/req off | server CPU ms/req on | cost |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for p in pairs:
                lines.append(
                    f"| {p['connections']} | {p['rounds']} "
                    f"| {p['rps_off']:,.0f} | {p['rps_on']:,.0f} "
                    f"| {p['cpu_ms_per_request_off']:.3f} | {p['cpu_ms_per_request_on']:.3f} "
                    f"| {p['server_cpu_ms_per_request_off']:.3f} "
                    f"| {p['server_cpu_ms_per_request_on']:.3f} | {p['metrics_cost']:+.1%} |"
                )
            read = self.profiles.get("profile_read", {})
            if "metrics_share" in read:
                lines += [
                    "",
                    f"py-spy, profile read (metrics on): {read['metrics_share']:.1%} of a server's"
                    " busy time (GIL held) is in metrics code (server/metrics, prometheus_client,"
                    " providers/kit/meter.py): the cost without the machine's noise.",
                ]
        if self.probes:
            lines += [
                "",
                "## Clients vanishing mid-call",
                "",
                "wrk cut short at 16 connections on anonymous login (calls in flight are "
                "cancelled), then one more login:",
                "",
                "| db | workers | calls cut | next call | took ms |",
                "|---|---:|---:|---|---:|",
            ]
            for p in self.probes:
                lines.append(
                    f"| {p['db']} | {p['workers']} | {p['cut']} "
                    f"| {p['next_call_status'] or 'timed out'} | {p['next_call_ms']:.0f} |"
                )
        if self.profiles:
            lines += [
                "",
                "## Hot path (py-spy --gil, one server process, sqlite, 1 worker)",
                "",
                "Shares of the time the process ran Python (held the GIL).",
                "",
            ]
            for name, prof in self.profiles.items():
                if "error" in prof:
                    lines += [f"### {name}: {prof['error']}", ""]
                    continue
                lines.append(
                    f"### {name} ({prof['samples']} samples, GIL held "
                    f"{prof['gil_busy']:.0%} of the time)"
                )
                lines.append("")
                lines.append(
                    "self time by package: "
                    + ", ".join(
                        f"{row['frame']} {row['share'] * 100:.0f}%"
                        for row in prof["self_by_package"][:8]
                    )
                )
                lines.append("")
                lines.append("| share of busy time | our code, inclusive |")
                lines.append("|---:|---|")
                for row in prof["our_code_inclusive"][:12]:
                    lines.append(f"| {row['share'] * 100:.1f}% | `{row['frame']}` |")
                lines.append("")
                lines.append("| share of busy time | any code, self |")
                lines.append("|---:|---|")
                for row in prof["self"][:12]:
                    lines.append(f"| {row['share'] * 100:.1f}% | `{row['frame']}` |")
                lines.append("")
        lines.append(
            "Reproduce: `make bench` (set IDENTIFY_BENCH_POSTGRES_URL, e.g. "
            "postgresql://postgres@127.0.0.1:5432/postgres, to add PostgreSQL)."
        )
        return "\n".join(lines) + "\n"


def _cpu_ms_per_request(runs: list[dict[str, Any]], *, servers_only: bool = False) -> float:
    cpu = sum(
        p["cpu_s"]
        for r in runs
        for p in r["processes"]
        if not servers_only or p["name"].startswith("server")
    )
    requests = sum(r["requests"] for r in runs)
    return round(1000 * cpu / requests, 3) if requests else 0.0


def _where(r: dict[str, Any]) -> str:
    return f"{r['db']}/{r['workers']}w/{r['scenario']}/c{r['connections']}"


def _target(
    name: str,
    checked: Sequence[Any],
    failed: Sequence[Any],
    show: Any,
    worst: Any = None,
) -> dict[str, str]:
    if not checked:
        return {"target": name, "status": "NOT MEASURED", "detail": "no run to judge"}
    if failed:
        listed = "; ".join(f"{_where(r)}: {show(r)}" for r in failed[:8])
        more = f" (+{len(failed) - 8} more)" if len(failed) > 8 else ""
        return {"target": name, "status": "FAIL", "detail": listed + more}
    detail = f"{len(checked)} checked"
    if worst is not None:
        closest = max(checked, key=worst)
        detail += f"; closest: {_where(closest)}: {show(closest)}"
    return {"target": name, "status": "PASS", "detail": detail}


def main() -> None:
    """Re-render latest.md from latest.json (after a change to this file)."""
    directory = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    report = Report.from_json(json.loads((directory / "latest.json").read_text()))
    print(report.write(directory))


if __name__ == "__main__":
    main()
