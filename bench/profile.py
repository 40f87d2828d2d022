"""Sampling profiles of one server process under load, with py-spy (PyPI),
installed into this venv on first use.

Samples are taken only from the thread holding the GIL (`--gil`): py-spy's
idle detection counts aiosqlite's worker threads as busy while they sleep in
SQLite's busy handler or wait for the GIL, which buries the real costs. So a
share below is a share of the time Python code ran, and `gil_busy` says how
much of the wall time that was."""

from __future__ import annotations

import collections
import logging
import pathlib
import re
import subprocess
import sys
from dataclasses import dataclass

log = logging.getLogger("bench")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def ensure_py_spy() -> pathlib.Path | None:
    path = pathlib.Path(sys.executable).parent / "py-spy"
    if path.exists():
        return path
    log.info("installing py-spy into %s", sys.prefix)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not path.exists():
        log.warning("could not install py-spy: %s", result.stderr.strip()[-400:])
        return None
    return path


RATE = 250


def start(
    py_spy: pathlib.Path, pid: int, seconds: int, out: pathlib.Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            str(RATE),
            "--gil",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _short(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (to/file.py)`: one entry per
    function, with enough of the path to tell projects apart."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"].replace("\\", "/")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


# Frames under every sample (interpreter start, the event loop itself, the
# CLI): listing them says nothing.
_ROOTS = {
    "<module>",
    "main",
    "cmd_serve",
    "run",
    "Runner.run",
    "_run_code",
    "_run_module_as_main",
    "BaseEventLoop.run_forever",
    "BaseEventLoop.run_until_complete",
    "BaseEventLoop._run_once",
    "Thread._bootstrap",
    "Thread._bootstrap_inner",
    "Thread.run",
}


# Where a frame is metrics code: ours, and the library's.
_METRICS_CODE = ("(server/metrics/", "(providers/kit/meter.py", "(prometheus_client/")


def _package(short: str) -> str:
    """The top-level package or stdlib module of a shortened frame."""
    path = short[short.rfind("(") + 1 : -1]
    head = path.split("/", 1)[0]
    if head.startswith("<"):
        return "python"
    return head.removesuffix(".py")


@dataclass
class Profile:
    samples: int
    seconds: float
    inclusive: list[tuple[str, float]]
    self_time: list[tuple[str, float]]
    ours: list[tuple[str, float]]
    packages: list[tuple[str, float]]
    # Samples inside metrics code (issue 13), inclusive.
    metrics_share: float = 0.0

    @property
    def gil_busy(self) -> float:
        return self.samples / (self.seconds * RATE) if self.seconds else 0.0

    def to_json(self) -> dict[str, object]:
        def rows(items: list[tuple[str, float]]) -> list[dict[str, object]]:
            return [{"frame": f, "share": round(s, 4)} for f, s in items]

        return {
            "samples": self.samples,
            "gil_busy": round(self.gil_busy, 3),
            "self_by_package": rows(self.packages),
            "inclusive": rows(self.inclusive),
            "self": rows(self.self_time),
            "our_code_inclusive": rows(self.ours),
            "metrics_share": round(self.metrics_share, 4),
        }

    def text(self, title: str) -> str:
        lines = [
            f"# {title}",
            f"samples: {self.samples} (GIL held {self.gil_busy:.0%} of the time)",
            "",
        ]
        for heading, items in (
            ("self time by package", self.packages),
            ("inclusive (function or anything it calls)", self.inclusive),
            ("self (the function's own code)", self.self_time),
            ("our code (server/, providers/), inclusive", self.ours),
        ):
            lines.append(f"## {heading}")
            lines += [f"{share * 100:6.1f}%  {frame}" for frame, share in items]
            lines.append("")
        return "\n".join(lines)


def summarise(raw: str, seconds: float, top: int = 30) -> Profile:
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    total = 0
    metered = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        # The first frame is the thread ("process 12:\"python\"", "thread ...").
        frames = [_short(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += n
        if any(code in f for f in frames for code in _METRICS_CODE):
            metered += n
        self_time[frames[-1]] += n
        for frame in set(frames):
            if frame.split(" (", 1)[0] not in _ROOTS:
                inclusive[frame] += n

    def share(counter: collections.Counter[str], keep: int) -> list[tuple[str, float]]:
        return [(f, c / total) for f, c in counter.most_common(keep)] if total else []

    ours = collections.Counter(
        {f: c for f, c in inclusive.items() if "(server/" in f or "(providers/" in f}
    )
    packages: collections.Counter[str] = collections.Counter()
    for frame, hits in self_time.items():
        packages[_package(frame)] += hits
    return Profile(
        total,
        seconds,
        share(inclusive, top),
        share(self_time, top),
        share(ours, top),
        share(packages, 15),
        metered / total if total else 0.0,
    )
