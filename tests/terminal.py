"""A pseudo-terminal for a process under test, as `make run` in a person's
terminal gives it: its output (and its children's) is copied to a log file,
and Ctrl-C is typed, so the kernel signals the terminal's foreground process
group exactly as it would for a person."""

from __future__ import annotations

import fcntl
import os
import pathlib
import pty
import termios
import threading
from typing import Any


def _take_controlling_terminal() -> None:
    # Runs in the child after setsid(): stdin is the pty's far end.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(self, log_path: pathlib.Path) -> None:
        self._master, self._slave = pty.openpty()
        self._log = log_path.open("wb")
        self._copier = threading.Thread(target=self._copy, name="terminal", daemon=True)

    def popen_kwargs(self) -> dict[str, Any]:
        return {
            "stdin": self._slave,
            "stdout": self._slave,
            "stderr": self._slave,
            "start_new_session": True,
            "preexec_fn": _take_controlling_terminal,
        }

    def started(self) -> None:
        # Only the child keeps the far end open, so reads end when it is gone.
        os.close(self._slave)
        self._copier.start()

    def _copy(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every process holding the far end exited
                return
            if not chunk:
                return
            self._log.write(chunk)
            self._log.flush()

    def ctrl_c(self) -> None:
        os.write(self._master, b"\x03")

    def close(self) -> None:
        if self._copier.ident is None:
            os.close(self._slave)
        else:
            self._copier.join(timeout=5)
        os.close(self._master)
        self._log.close()
