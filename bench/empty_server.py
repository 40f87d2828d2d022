"""The ceiling: a grpc.aio server whose GetUser does no work at all, behind
the same Envoy config as the real service. Whatever the real service loses
against this is the cost of our own code, not of the edge or of gRPC.

    python -m bench.empty_server --port 50100
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from identify.v1 import identify_pb2, identify_pb2_grpc

SERVICE = identify_pb2.DESCRIPTOR.services_by_name["Identify"].full_name


class EmptyIdentify(identify_pb2_grpc.IdentifyServicer):
    async def GetUser(
        self,
        request: identify_pb2.GetUserRequest,
        context: grpc.aio.ServicerContext[identify_pb2.GetUserRequest, identify_pb2.UserReply],
    ) -> identify_pb2.UserReply:
        return identify_pb2.UserReply()


async def serve(host: str, port: int) -> None:
    # Same server options as server/app.py, so only the handler differs.
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 1 << 20),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.so_reuseport", 0),
        ]
    )
    identify_pb2_grpc.add_IdentifyServicer_to_server(
        EmptyIdentify(),  # type: ignore[abstract]  # only GetUser is measured
        server,
    )
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    for name in ("", SERVICE):
        await checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
