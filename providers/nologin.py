"""noLogin (strategy `simplified`): no credential at all. The server mints a
user and hands back its externalId, which is then the handle for reading and
replacing the user's appProfile. Replies are flat, as documented."""

from __future__ import annotations

import uuid

from providers.base import Provider
from providers.kit.inputs import app_profile_arg, require_external_id
from providers.values import Action, InvalidArgument, NotFound, Reply, Request, User


class NoLoginProvider(Provider[None]):
    name = "noLogin"
    strategies = ("simplified",)

    async def _user(self, req: Request) -> User:
        external_id = require_external_id(req)
        user = await self.ctx.accounts.find_by_external_id(external_id)
        if user is None:
            raise NotFound("USER_NOT_FOUND", "no user with this externalId in this project")
        return user

    async def create_user(self, req: Request) -> Reply:
        app_profile = app_profile_arg(req.data)
        await self.ctx.abuse.admit(Action.ANONYMOUS_SIGN_UP, req)
        # The subject is random: a noLogin user has no identity elsewhere.
        # The profile goes in with the row: one write, never a user without it.
        user, _ = await self.ctx.accounts.ensure_user(str(uuid.uuid4()), app_profile=app_profile)
        return Reply(
            message="ok", flat=True, external_id=user.external_id, app_profile=user.app_profile
        )

    async def get_user(self, req: Request) -> Reply:
        user = await self._user(req)
        return Reply(
            message="ok", flat=True, external_id=user.external_id, app_profile=user.app_profile
        )

    async def update_user(self, req: Request) -> Reply:
        app_profile = app_profile_arg(req.data)
        if app_profile is None:
            raise InvalidArgument(
                "MISSING_FIELD", "data.appProfile is required", metadata={"field": "appProfile"}
            )
        user = await self._user(req)
        user = await self.ctx.accounts.update_user(user, app_profile=app_profile)
        return Reply(
            message="Profile updated",
            flat=True,
            external_id=user.external_id,
            app_profile=user.app_profile,
        )
