"""A private PostgreSQL cluster for fault tests: we may stop and restart it
under load without touching the machine's shared server."""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

from tests.harness import free_port


def binaries() -> pathlib.Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return pathlib.Path(found[-1]).parent if found else None


class Cluster:
    def __init__(self) -> None:
        bindir = binaries()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries are not installed")
        self.bin = bindir
        # Not under pytest's tmp dirs: those are private to root, and the
        # server runs as the postgres user.
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="identify-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_root = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        # initdb and postgres refuse to run as root.
        cmd = ["runuser", "-u", "postgres", "--", *argv] if self._as_root else list(argv)
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def init(self) -> Cluster:
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )
        return self

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.root / "pg.log"),
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("PostgreSQL did not come back")
