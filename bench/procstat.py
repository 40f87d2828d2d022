"""CPU time and memory of processes, read from /proc (psutil is not a
dependency): utime+stime from /proc/<pid>/stat, VmHWM/VmRSS from
/proc/<pid>/status, children by scanning every /proc/<pid>/stat for ppid."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

PROC = pathlib.Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    raw = (PROC / str(pid) / "stat").read_text()
    # The command name (field 2) may contain spaces and parentheses; the
    # fields that follow it start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def machine_busy_seconds() -> float:
    """CPU time all cores spent on anything but idle and I/O wait since boot,
    from the first line of /proc/stat."""
    values = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user and nice.
    return (sum(values[:8]) - idle) / TICKS


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    # After the name: state=0, ppid=1, ... utime=11, stime=12 (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / TICKS


def parent(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if parent(int(entry.name)) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue  # exited while we looked
    return sorted(found)


def cmdline(pid: int) -> list[str]:
    raw = (PROC / str(pid) / "cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _status_kb(pid: int, key: str) -> int:
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `echo 5 > clear_refs`),
    so a later read is the peak of one measurement, not of the process'
    whole life. Returns False where the kernel or permissions refuse."""
    try:
        (PROC / str(pid) / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Watched:
    """One process under measurement, with a CPU baseline."""

    name: str
    pid: int
    cpu_start: float = 0.0
    peak_resettable: bool = False
    # Resetting VmHWM forgets earlier peaks, so the lifetime peak is kept here.
    life_peak: float = 0.0

    def begin(self) -> None:
        self.life_peak = max(self.life_peak, peak_rss_mb(self.pid))
        self.peak_resettable = reset_peak_rss(self.pid)
        self.cpu_start = cpu_seconds(self.pid)

    def end(self) -> dict[str, float | str | bool]:
        peak = peak_rss_mb(self.pid)
        self.life_peak = max(self.life_peak, peak)
        return {
            "name": self.name,
            "cpu_s": round(cpu_seconds(self.pid) - self.cpu_start, 3),
            "peak_rss_mb": round(peak, 1),
            # False: the kernel kept the peak since the process started.
            "peak_is_per_run": self.peak_resettable,
        }

    def life_peak_mb(self) -> float:
        self.life_peak = max(self.life_peak, peak_rss_mb(self.pid))
        return round(self.life_peak, 1)
