"""A project's abuse limits: the `limits:` block of its config, parsed once
with the same settings rules as a provider's block (unknown keys refused by
name), over defaults in the spirit of Firebase (100 new accounts per hour per
IP) and Supabase (30 anonymous sign-ins per hour per IP).

    limits:
      anonymousSignUp: {perIp: 30/hour, perProject: 5000/hour}
      signUp:          {perIp: 100/hour, perProject: 5000/hour}
      passwordLogin:   {perIp: 60/minute, perProject: 3000/minute}
      socialCheck:     {perIp: 120/minute, perProject: 6000/minute}
      lockout:         {maxFailures: 10, stepSeconds: 60, maxLockSeconds: 900,
                        resetAfterSeconds: 43200}

Any rate, or a whole action, or `lockout`, may be `off`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse

from providers.kit.settings import SettingsError, SettingsReader
from providers.values import Action

OFF = "off"
# Load tests and benchmarks: every rate limit off, the edge's and the
# servers' (the lockout stays on).
RATE_LIMITS_ENV = "IDENTIFY_RATE_LIMITS"


def rate_limits_off() -> bool:
    return os.environ.get(RATE_LIMITS_ENV, "").strip().lower() == OFF


_DEFAULT_RATES: Mapping[Action, tuple[str, str]] = {
    Action.ANONYMOUS_SIGN_UP: ("30/hour", "5000/hour"),
    Action.SIGN_UP: ("100/hour", "5000/hour"),
    Action.PASSWORD_LOGIN: ("60/minute", "3000/minute"),
    Action.SOCIAL_CHECK: ("120/minute", "6000/minute"),
}


@dataclass(frozen=True)
class Rates:
    per_ip: RateLimitItem | None
    per_project: RateLimitItem | None


@dataclass(frozen=True)
class LockoutPolicy:
    # Consecutive credential failures of one account before it is locked.
    max_failures: int = 10
    # The first lock lasts one step, each further failure one step more...
    step_seconds: int = 60
    # ...up to this: never a permanent lockout, which would let anyone lock
    # anyone out.
    max_lock_seconds: int = 900
    # Failures older than this are forgotten (a typo last week is no attack).
    reset_after_seconds: int = 12 * 3600

    def lock_seconds(self, failures: int) -> int:
        """How long `failures` consecutive failures lock the account (0: not)."""
        if failures < self.max_failures:
            return 0
        steps = failures - self.max_failures + 1
        return min(self.max_lock_seconds, steps * self.step_seconds)


@dataclass(frozen=True)
class Limits:
    rates: Mapping[Action, Rates]
    # None: the lockout is off for this project.
    lockout: LockoutPolicy | None


def parse_limits(raw: Mapping[str, Any] | None) -> Limits:
    """The limits of one project; SettingsError naming the bad key."""
    s = SettingsReader(raw or {}, owner="limits")
    rates_off = rate_limits_off()
    rates = {
        action: _rates(s, action, defaults, off=rates_off)
        for action, defaults in _DEFAULT_RATES.items()
    }
    lockout = _lockout(s)
    s.finish()
    return Limits(rates=rates, lockout=lockout)


def _rates(s: SettingsReader, action: Action, defaults: tuple[str, str], *, off: bool) -> Rates:
    given = s.raw(action.value)
    if given == OFF or given is False:
        return Rates(None, None)
    block = SettingsReader(s.mapping(action.value) if given is not None else {}, owner=action.value)
    per_ip = _rate(block, "perIp", defaults[0])
    per_project = _rate(block, "perProject", defaults[1])
    block.finish()
    if off:
        return Rates(None, None)
    return Rates(per_ip, per_project)


def _rate(s: SettingsReader, key: str, default: str) -> RateLimitItem | None:
    value = s.raw(key)
    if value == OFF or value is False:
        return None
    text = default if value in (None, "") else value
    if not isinstance(text, str):
        raise SettingsError(f"{key} must be a rate such as 30/hour, or off")
    try:
        return parse(text)
    except ValueError:
        raise SettingsError(f"{key} must be a rate such as 30/hour, or off") from None


def _lockout(s: SettingsReader) -> LockoutPolicy | None:
    given = s.raw("lockout")
    if given == OFF or given is False:
        return None
    block = SettingsReader(s.mapping("lockout") if given is not None else {}, owner="lockout")
    default = LockoutPolicy()
    policy = LockoutPolicy(
        max_failures=block.integer("maxFailures", default=default.max_failures, low=1, high=1000),
        step_seconds=block.integer("stepSeconds", default=default.step_seconds, low=1, high=86400),
        max_lock_seconds=block.integer(
            "maxLockSeconds", default=default.max_lock_seconds, low=1, high=7 * 86400
        ),
        reset_after_seconds=block.integer(
            "resetAfterSeconds", default=default.reset_after_seconds, low=60, high=30 * 86400
        ),
    )
    block.finish()
    return policy
