"""Reading a provider's settings block: the one rule for every setting.

A provider declares its settings by reading them, once, in its
`read_settings(s)`: every key it reads is a key it knows, and `finish()`
refuses any other key by name. So a typo (`audiance:`) stops the start
instead of being ignored, and the list of known keys can never drift from
the code that reads them.

Conventions every reader shares:
- an absent key, `null` and `""` all mean "not set" (a `${VAR}` that resolves
  to nothing is not set), so `default=` applies;
- a wrong value raises `SettingsError` (a ValueError) whose message starts
  with the key's name;
- URLs: https only; plain http only for loopback hosts (tests, sidecars),
  since settings URLs carry secrets or fetch keys and profiles;
- one timeout rule: `timeoutSeconds`, a number in (0, 30], default 5.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from ipaddress import ip_address
from typing import Any, overload
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 30.0
TIMEOUT_KEY = "timeoutSeconds"


class SettingsError(ValueError):
    """A provider's settings are wrong; the message names the setting."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(value: Any, key: str, *, base: bool = False) -> str:
    """The URL rule, for settings and for URLs an upstream hands us (OIDC
    discovery). `base=True`: paths are appended to it, so it may carry no
    query and loses its trailing slash."""
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{key} must be a URL")
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise SettingsError(f"{key} is not a valid URL") from None
    if not host or parts.scheme not in ("https", "http"):
        raise SettingsError(f"{key} must be an https:// URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise SettingsError(f"{key} must be an https:// URL (http:// only for localhost)")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(f"{key} must not carry credentials")
    if parts.fragment or (base and parts.query):
        raise SettingsError(f"{key} must not carry a {'query or ' if base else ''}fragment")
    return value.rstrip("/") if base else value


class SettingsReader:
    def __init__(self, raw: Mapping[str, Any], *, owner: str) -> None:
        self._raw = raw
        self._owner = owner
        self._known: set[str] = set()

    # ------------------------------------------------------------ readers
    def given(self, key: str) -> bool:
        """Whether the key is set (and, so, a known key)."""
        return not _unset(self._take(key))

    def raw(self, key: str) -> Any:
        """The value as written, for shapes the readers below do not cover."""
        return self._take(key)

    def string(
        self,
        key: str,
        *,
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
        numbers: bool = False,
    ) -> str | None:
        """An optional string, stripped, that `pattern` matches as a whole.
        `numbers=True` also takes a whole number (YAML reads an unquoted
        numeric id as one)."""
        value = self._take(key)
        if _unset(value):
            return default
        if numbers and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"{key} must be a non-empty string{_hint(hint)}")
        text = value.strip()
        if pattern is not None and not pattern.fullmatch(text):
            raise SettingsError(f"{key} is not valid{_hint(hint)}")
        return text

    def required_string(
        self,
        key: str,
        *,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
        numbers: bool = False,
    ) -> str:
        value = self.string(key, pattern=pattern, hint=hint, numbers=numbers)
        if value is None:
            raise SettingsError(f"{key} is required{_hint(hint)}")
        return value

    def strings(
        self, key: str, *, required: bool = False, default: Sequence[str] = ()
    ) -> tuple[str, ...]:
        """One string or a list of strings."""
        value = self._take(key)
        if _unset(value):
            if required:
                raise SettingsError(f"{key} is required")
            return tuple(default)
        items = string_list(value)
        if items is None:
            raise SettingsError(f"{key} must be a non-empty string or a list of non-empty strings")
        return items

    def number(self, key: str, *, default: float, low: float, high: float) -> float:
        value = self._take(key)
        if _unset(value):
            return float(default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise SettingsError(f"{key} must be a number between {low:g} and {high:g}")
        return float(value)

    def integer(self, key: str, *, default: int, low: int, high: int, hint: str = "") -> int:
        value = self._take(key)
        if _unset(value):
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SettingsError(
                f"{key} must be a whole number between {low} and {high}{_hint(hint)}"
            )
        return value

    def flag(self, key: str, *, default: bool) -> bool:
        value = self._take(key)
        if _unset(value):
            return default
        if not isinstance(value, bool):
            raise SettingsError(f"{key} must be true or false")
        return value

    @overload
    def url(self, key: str, *, default: str, base: bool = False) -> str: ...

    @overload
    def url(self, key: str, *, default: None = None, base: bool = False) -> str | None: ...

    def url(self, key: str, *, default: str | None = None, base: bool = False) -> str | None:
        value = self._take(key)
        if _unset(value):
            return None if default is None else check_url(default, key, base=base)
        return check_url(value, key, base=base)

    def required_url(self, key: str, *, base: bool = False) -> str:
        value = self.url(key, base=base)
        if value is None:
            raise SettingsError(f"{key} is required")
        return value

    def timeout(self) -> float:
        """How long one upstream call may take, in seconds."""
        value = self._take(TIMEOUT_KEY)
        if _unset(value):
            return DEFAULT_TIMEOUT
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(f"{TIMEOUT_KEY} must be a number")
        if not 0 < value <= MAX_TIMEOUT:
            raise SettingsError(f"{TIMEOUT_KEY} must be > 0 and <= {MAX_TIMEOUT:g}")
        return float(value)

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self._take(key)
        if _unset(value):
            return {}
        if not isinstance(value, Mapping):
            raise SettingsError(f"{key} must be a mapping")
        return value

    # ------------------------------------------------------------ the end
    def finish(self) -> None:
        """Refuse every key no reader asked for."""
        unknown = sorted(str(k) for k in self._raw if k not in self._known)
        if unknown:
            known = ", ".join(sorted(self._known)) or "none"
            raise SettingsError(
                f"unknown {self._owner} setting(s): {', '.join(unknown)}; known: {known}"
            )

    def _take(self, key: str) -> Any:
        self._known.add(key)
        return self._raw.get(key)


def string_list(value: Any) -> tuple[str, ...] | None:
    """One non-empty string or a non-empty list of them, as a tuple; None
    for anything else."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        return None
    if not all(isinstance(i, str) and i for i in items):
        return None
    return tuple(items)


def _unset(value: Any) -> bool:
    return value is None or value == ""


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""
