"""THE reading of a number of seconds from the environment, for every tuning
variable (IDENTIFY_*_SECONDS): empty or unset gives the default; anything
else must be a number in range, or the start stops naming the variable."""

from __future__ import annotations

from collections.abc import Mapping


def env_seconds(
    env: Mapping[str, str], name: str, default: float, *, high: float, zero_is_off: bool = False
) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1
    low_ok = value >= 0 if zero_is_off else value > 0
    if not (low_ok and value <= high):
        low = "from 0 (off)" if zero_is_off else "above 0"
        raise ValueError(f"{name} must be a number of seconds, {low} and at most {high:g}")
    return value
