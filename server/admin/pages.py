"""Pagination (AIP-158) and filters (AIP-160, the small subset we offer).

Lists are keyset-paginated: a page token is the sort key of the last item
sent, so a page never repeats or skips an item when rows are inserted
between calls (new rows sort before the cursor, newest first). Tokens are
opaque to clients and bound to the list they came from (its parent and
filter): one used elsewhere is refused."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from providers.values import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument(
            "INVALID_VALUE", "page_size must be 0 or more", metadata={"field": "pageSize"}
        )
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _scope(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _bad_token() -> InvalidArgument:
    return InvalidArgument(
        "INVALID_PAGE_TOKEN",
        "page_token is not one this list gave out (or its filter changed)",
        metadata={"field": "pageToken"},
    )


def encode_token(cursor: Sequence[Any], *scope: str) -> str:
    raw = json.dumps({"s": _scope(*scope), "k": list(cursor)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, *scope: str) -> list[Any] | None:
    """The cursor of `token`, None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_token() from None
    if not isinstance(data, dict) or data.get("s") != _scope(*scope):
        raise _bad_token()
    cursor = data.get("k")
    if not isinstance(cursor, list) or not all(isinstance(v, str | int) for v in cursor):
        raise _bad_token()
    return cursor


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str


_CONDITION = re.compile(
    r'\s*([a-z_][a-z0-9_]*)\s*(>=|<=|!=|=|>|<)\s*("(?:[^"\\]|\\.)*"|[^\s"()]+)\s*'
)
_AND = re.compile(r"\s+AND\s+")


def parse_filter(text: str, allowed: dict[str, Sequence[str]]) -> list[Condition]:
    """`field op value [AND field op value ...]`, each field one of
    `allowed` (field -> the operators it takes). Values may be quoted."""
    if not text.strip():
        return []
    conditions = []
    for part in _AND.split(text.strip()):
        found = _CONDITION.fullmatch(part)
        if found is None:
            raise _bad_filter(f'cannot read {part.strip()!r}: write field = "value"')
        name, op, value = found.groups()
        if name not in allowed:
            raise _bad_filter(f"unknown field {name!r}; known: {', '.join(allowed)}")
        if op not in allowed[name]:
            raise _bad_filter(f"{name} takes {', '.join(allowed[name])}, not {op}")
        if value.startswith('"'):
            value = json.loads(value)
        conditions.append(Condition(name, op, value))
    return conditions


def _bad_filter(why: str) -> InvalidArgument:
    return InvalidArgument("INVALID_FILTER", f"filter: {why}", metadata={"field": "filter"})
