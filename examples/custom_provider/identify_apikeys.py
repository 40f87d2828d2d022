"""`apiKeys`: a worked example of a provider that lives in its own package.

Machine clients (kiosks, CI bots) send an API key as a Bearer token to
`GET /user/check`; each key names one user. The settings block lists the
keys by name with their SHA-256, so the config never holds a usable key:

    providers:
      apiKeys:
        keys:
          kiosk-lobby: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8

A provider only sees `providers.base`: it declares its settings by reading
them (`read_settings`; any other key is refused by name), returns values
(`Reply`) or raises the domain errors there; the core turns them into
statuses and the envelope.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import ClassVar

from providers.base import (
    Provider,
    Reply,
    Request,
    SettingsError,
    SettingsReader,
    Unauthenticated,
    require_bearer,
    require_device_id,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Key name -> SHA-256 of the key.
ApiKeys = Mapping[str, bytes]


class ApiKeyProvider(Provider[ApiKeys]):
    name: ClassVar[str] = "apiKeys"
    strategies: ClassVar[tuple[str, ...]] = ("apiKey",)

    @classmethod
    def read_settings(cls, s: SettingsReader) -> ApiKeys:
        # Called when the config is loaded: a mistake stops the start instead
        # of failing the first request.
        keys = s.mapping("keys")
        if not keys:
            raise SettingsError("keys must map names to SHA-256 hex digests")
        parsed: dict[str, bytes] = {}
        for name, digest in keys.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise SettingsError(f"keys: {name!r} is not a valid key name")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise SettingsError(f"keys.{name} must be a lowercase SHA-256 hex digest")
            parsed[name] = bytes.fromhex(digest)
        return parsed

    async def check_user(self, req: Request) -> Reply:
        device_id = require_device_id(req)
        name = self._key_name(require_bearer(req))
        # The key's name is the subject: a key rotated under the same name
        # keeps its user and externalId.
        user, _ = await self.ctx.accounts.ensure_user(name, username=name)
        await self.ctx.accounts.record_login(user, device_id)
        view = await self.ctx.accounts.profile(user)
        return Reply(
            message="OK",
            data={
                "username": name,
                "externalId": user.external_id,
                "devices": view.devices_json(),
                "loginHistory": list(view.login_history),
            },
        )

    def _key_name(self, key: str) -> str:
        digest = hashlib.sha256(key.encode()).digest()
        # Compare against every entry so the time taken does not tell which
        # names exist.
        found: str | None = None
        for name, expected in self.settings.items():
            if hmac.compare_digest(digest, expected):
                found = name
        if found is None:
            raise Unauthenticated("UNKNOWN_API_KEY", "the API key is not known to this project")
        return found
