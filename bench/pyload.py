"""A Python HTTP/1.1 load generator, for machines where wrk cannot be
installed. Keep-alive connections, each sending its next request as soon as
the last reply is read (closed loop, like wrk). It costs more CPU than wrk,
which on a small machine is taken from the service: its figures are lower
bounds.

    python -m bench.pyload SPEC.json    # prints one BENCH_JSON line
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bench.load import MARK, HttpRequest, LoadSpec


def _encode(req: HttpRequest, host: str) -> bytes:
    body = (req.body or "").encode()
    lines = [f"{req.method} {req.path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    if req.body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_reply(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.non_2xx = 0
        self.socket_errors = 0


async def _connection(
    spec: LoadSpec, payloads: list[bytes], offset: int, deadline: float, stats: Stats
) -> None:
    i = offset
    writer = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
            payload = payloads[i % len(payloads)]
            i += 1
            started = time.perf_counter()
            writer.write(payload)
            status = await asyncio.wait_for(_read_reply(reader), spec.timeout_s)
            stats.latencies.append(time.perf_counter() - started)
            if not 200 <= status <= 299:
                stats.non_2xx += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            stats.socket_errors += 1
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run(spec: LoadSpec) -> dict[str, float | int]:
    host = f"{spec.host}:{spec.port}"
    payloads = [_encode(r, host) for r in spec.requests]
    stats = Stats()
    deadline = time.monotonic() + spec.duration_s
    await asyncio.gather(
        *(_connection(spec, payloads, c * 7919, deadline, stats) for c in range(spec.connections))
    )
    values = sorted(stats.latencies)
    # Like wrk's graceful mode: calls sent before the deadline all finish,
    # and rates are over the sending window.
    return {
        "requests": len(values),
        "duration_us": int(spec.duration_s * 1e6),
        "cut": 0,
        "non2xx": stats.non_2xx,
        "socket_errors": stats.socket_errors,
        "p50_us": _percentile(values, 50) * 1e6,
        "p90_us": _percentile(values, 90) * 1e6,
        "p99_us": _percentile(values, 99) * 1e6,
        "max_us": (values[-1] if values else 0.0) * 1e6,
    }


def main() -> None:
    spec = LoadSpec.from_json(open(sys.argv[1]).read())
    result = asyncio.run(run(spec))
    sys.stdout.write(MARK + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
