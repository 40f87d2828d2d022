"""anonymous (strategy `simplified`): the device is the credential. A device
id must be a UUID; the same device always maps to the same user.

Once that user is upgraded to a permanent account (POST /v1/user:link or
:merge), the device alone no longer signs it in: 409 ACCOUNT_UPGRADED names
the provider to sign in with, unless the project keeps device logins
(`deviceLoginAfterUpgrade: true`)."""

from __future__ import annotations

from dataclasses import dataclass

from providers.base import Provider
from providers.kit.inputs import optional_str, require_device_id
from providers.kit.settings import SettingsReader
from providers.values import JSON, Action, AlreadyExists, Reply, Request, Session, User


@dataclass(frozen=True)
class AnonymousSettings:
    device_login_after_upgrade: bool = False


class AnonymousProvider(Provider[AnonymousSettings]):
    name = "anonymous"
    strategies = ("simplified",)

    @classmethod
    def read_settings(cls, s: SettingsReader) -> AnonymousSettings:
        return AnonymousSettings(
            device_login_after_upgrade=s.flag("deviceLoginAfterUpgrade", default=False)
        )

    async def create_user(self, req: Request) -> Reply:
        device_id = require_device_id(req)
        additional = optional_str(req.data, "additionalId", max_len=256)
        attributes = {"additionalId": additional} if additional else {}
        user, created = await self._device_user(req, device_id, attributes)
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
        device_id = require_device_id(req)
        user, _ = await self._device_user(req, device_id, {})
        return await self.ctx.accounts.sign_in(user, device_id=device_id)

    async def _device_user(
        self, req: Request, device_id: str, attributes: JSON
    ) -> tuple[User, bool]:
        """The device's user; a device seen for the first time is a sign-up,
        counted against the project's anonymous sign-up limits."""
        user = await self.ctx.accounts.find_user(device_id)
        if user is not None:
            await self._refuse_if_upgraded(user)
            return user, False
        await self.ctx.abuse.admit(Action.ANONYMOUS_SIGN_UP, req)
        return await self.ctx.accounts.ensure_user(device_id, attributes=attributes)

    async def _refuse_if_upgraded(self, user: User) -> None:
        if self.settings.device_login_after_upgrade:
            return
        permanent = [i for i in await self.ctx.accounts.identities(user) if i.provider != self.name]
        if permanent:
            raise AlreadyExists(
                "ACCOUNT_UPGRADED",
                f"this device's user was upgraded to a permanent account: sign in with"
                f" {permanent[0].provider}",
                metadata={"provider": permanent[0].provider},
            )
