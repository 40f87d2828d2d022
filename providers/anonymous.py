"""anonymous (strategy `simplified`): the device is the credential. A device
id must be a UUID; the same device always maps to the same user."""

from __future__ import annotations

from typing import Any

from providers.base import (
    InvalidArgument,
    Provider,
    Reply,
    Request,
    Session,
    canonical_uuid,
    optional_str,
)


def _device(req: Request) -> str:
    raw: Any = req.data.get("deviceId") or req.device_id
    if not raw:
        raise InvalidArgument(
            "MISSING_DEVICE_ID", "data.deviceId is required", metadata={"field": "deviceId"}
        )
    if not isinstance(raw, str):
        raise InvalidArgument(
            "INVALID_DEVICE_ID", "deviceId must be a UUID", metadata={"field": "deviceId"}
        )
    return canonical_uuid(raw, field_name="deviceId", reason="INVALID_DEVICE_ID")


class AnonymousProvider(Provider):
    name = "anonymous"
    strategies = ("simplified",)

    async def create_user(self, req: Request) -> Reply:
        device_id = _device(req)
        additional = optional_str(req.data, "additionalId", max_len=256)
        attributes = {"additionalId": additional} if additional else {}
        user, created = await self.ctx.accounts.ensure_user(device_id, attributes=attributes)
        if additional and not created and user.attributes.get("additionalId") != additional:
            user = await self.ctx.accounts.update_user(user, attributes=attributes)
        return Reply(
            message="User is Correctly Created" if created else "User already exists",
            data={
                "userId": user.user_id,
                "externalId": user.external_id,
                "deviceId": device_id,
                "projectId": req.project.id,
                "signUp": user.created_at,
                **({"additionalId": user.attributes["additionalId"]} if additional else {}),
            },
        )

    async def login(self, req: Request) -> Session:
        device_id = _device(req)
        user, _ = await self.ctx.accounts.ensure_user(device_id)
        return await self.ctx.accounts.sign_in(user, device_id=device_id)
