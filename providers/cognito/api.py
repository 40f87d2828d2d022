"""The boto3 `cognito-idp` client of one project, called off the event loop.

One client per provider instance, built on first use in a worker thread
(building one reads botocore's service model from disk). No botocore retries:
a dead endpoint must fail fast with 503 and RetryInfo, and the client retries,
instead of each request sleeping through backoff rounds here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

from providers.base import ProviderContext
from providers.cognito.errors import request_outcome, translate
from providers.cognito.settings import CognitoSettings
from providers.kit import heap
from providers.kit.meter import meter, upstream_outcome

# Requests to Cognito run in the context's thread pool; enough pooled
# connections that concurrent calls do not open and drop extra ones.
MAX_POOL_CONNECTIONS = 32
MAX_CONNECT_TIMEOUT = 3.0


class CognitoApi:
    def __init__(self, settings: CognitoSettings, ctx: ProviderContext) -> None:
        self._settings = settings
        self._ctx = ctx
        self._client: Any = None
        self._lock = asyncio.Lock()

    def secret_hash(self, username: str) -> str | None:
        """SECRET_HASH for app clients with a secret: base64(HMAC-SHA256(
        clientSecret, username + clientId)); None for public clients."""
        secret = self._settings.client_secret
        if secret is None:
            return None
        message = (username + self._settings.client_id).encode()
        digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    async def call(self, operation: str, method: str, **params: Any) -> dict[str, Any]:
        """Run one client method; every failure becomes a domain error chosen
        by the table in cognito_errors for `operation`."""
        client = await self._get_client()
        started = time.perf_counter()
        try:
            result: dict[str, Any] = await self._ctx.run_blocking(getattr(client, method), **params)
        except Exception as exc:  # botocore raises many unrelated classes
            sent = request_outcome(exc)
            if sent is not None:
                meter().upstream_call(sent, time.perf_counter() - started)
            # `from None`: the chained botocore error quotes Cognito's text.
            raise translate(exc, operation) from None
        meter().upstream_call(upstream_outcome(200), time.perf_counter() - started)
        return result

    async def _get_client(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._ctx.run_blocking(self._build)
        return self._client

    def _build(self) -> Any:
        # Imported here, on first use: boto3 and botocore's config are ~9 MB
        # a process would keep for good, a process serving no Cognito
        # project too.
        import boto3
        from botocore.config import Config

        s = self._settings
        # A session of our own: boto3's default session is not safe to build
        # clients from in several threads at once.
        session = boto3.session.Session(
            aws_access_key_id=s.access_key_id,
            aws_secret_access_key=s.secret_access_key,
            aws_session_token=s.session_token,
            region_name=s.region,
        )
        config = Config(
            connect_timeout=min(s.timeout, MAX_CONNECT_TIMEOUT),
            read_timeout=s.timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            user_agent_extra="identify",
        )
        client = session.client("cognito-idp", endpoint_url=s.endpoint_url, config=config)
        # Its service model and endpoint rules live as long as the process.
        heap.keep_for_good()
        return client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._ctx.run_blocking(client.close)
            del client
            # It was frozen with the rest (_build): its cycles would stay.
            await self._ctx.run_blocking(heap.let_go)
