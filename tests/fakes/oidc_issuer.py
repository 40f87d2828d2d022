"""A local OpenID Connect issuer for tests: JWKS, discovery, userinfo, and the
Auth0 endpoints the authZero provider calls (client-credentials
`/oauth/token`, Management API `PATCH` and `DELETE /api/v2/users/{id}`, each
checking the token's scope as Auth0 does).

Keys are made with `cryptography`; tokens are minted with any alg, kid and
claims, including the forgeries a verifier must refuse (`alg: none`, HS256
signed with the public key). Key rotation, a JWKS fetch counter and failure
modes ("error" 503, "drop" the connection, "slow") make the cache's behaviour
observable from outside.

Google's stand-in is the same class: issuer https://accounts.google.com and
JWKS at /oauth2/v3/certs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

Mode = Literal["ok", "error", "drop", "slow"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        private: PrivateKey
        if alg.startswith(("RS", "PS")):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            private = ec.generate_private_key(ec.SECP384R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"no key type for {alg}")
        return cls(kid or f"k-{uuid.uuid4().hex[:12]}", alg, private)

    def public_jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        pub = self.private.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(pub, as_dict=True)
        jwk.update(kid=self.kid, use="sig")
        if with_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":")).encode())
    )


class FakeIssuer:
    slow_seconds = 3.0

    def __init__(
        self,
        *,
        issuer: str | None = None,
        jwks_path: str = "/.well-known/jwks.json",
        alg: str = "RS256",
        management_clients: dict[str, str] | None = None,
        management_token_ttl: int = 86400,
        management_scopes: tuple[str, ...] = ("update:users", "delete:users"),
    ) -> None:
        self.mode: Mode = "ok"
        self._lock = threading.Lock()
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.userinfo_calls = 0
        self.token_requests = 0
        # sub -> claims /userinfo adds for that subject.
        self.userinfo: dict[str, dict[str, Any]] = {}
        # Auth0 users the Management API stand-in knows, by user id.
        self.auth0_users: dict[str, dict[str, Any]] = {}
        self.management_clients = dict(management_clients or {})
        self.management_token_ttl = management_token_ttl
        self.management_scopes = management_scopes
        # token -> (expiry, scopes granted)
        self._mgmt_tokens: dict[str, tuple[float, frozenset[str]]] = {}
        self.patch_authorizations: list[str] = []
        self.delete_requests: list[str] = []
        # An HTTP status every DELETE answers instead (an Auth0 outage), or None.
        self.delete_failure: int | None = None

        self.current = SigningKey.generate(alg)
        self.published: list[SigningKey] = [self.current]

        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_PATCH(self) -> None:
                fake._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.jwks_path = jwks_path
        self.jwks_url = self.base_url + jwks_path
        self.issuer = issuer or self.base_url + "/"
        self.management_audience = self.base_url + "/api/v2/"

    # ------------------------------------------------------------------ keys
    def rotate(self, alg: str | None = None, *, keep_old: bool = True) -> SigningKey:
        """Publish a new current key; the old one stays published unless told."""
        new = SigningKey.generate(alg or self.current.alg)
        with self._lock:
            self.published = [*self.published, new] if keep_old else [new]
            self.current = new
        return new

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.published]}

    # ---------------------------------------------------------------- tokens
    def claims(self, *, sub: str, aud: str | list[str], **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {"iss": self.issuer, "sub": sub, "aud": aud, "iat": now}
        base["exp"] = now + 3600
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}

    def mint(
        self,
        *,
        sub: str,
        aud: str | list[str],
        key: SigningKey | None = None,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token signed by `key` (default: the current key). A claim passed
        as None is left out (e.g. iat=None for a token without iat)."""
        key = key or self.current
        header = {"kid": key.kid, **(headers or {})}
        return jwt.encode(
            self.claims(sub=sub, aud=aud, **claims),
            key.private,
            algorithm=alg or key.alg,
            headers=header,
        )

    def mint_unsigned(self, *, sub: str, aud: str, **claims: Any) -> str:
        header = {"alg": "none", "typ": "JWT", "kid": self.current.kid}
        return _segments(header, self.claims(sub=sub, aud=aud, **claims)) + "."

    def mint_forged(
        self,
        *,
        header: dict[str, Any],
        sub: str,
        aud: str,
        signature: bytes = b"\0" * 64,
        **claims: Any,
    ) -> str:
        """Any header, any signature bytes: for headers no library will sign."""
        return _segments(header, self.claims(sub=sub, aud=aud, **claims)) + "." + _b64(signature)

    def mint_hs256_with_public_key(self, *, sub: str, aud: str, **claims: Any) -> str:
        """The key-confusion forgery: HMAC keyed with the issuer's public key,
        which anyone can download."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.current.kid}
        signing_input = _segments(header, self.claims(sub=sub, aud=aud, **claims))
        mac = hmac.new(self.current.public_pem(), signing_input.encode(), hashlib.sha256)
        return signing_input + "." + _b64(mac.digest())

    # ----------------------------------------------------------------- admin
    def add_auth0_user(self, user_id: str, **fields: Any) -> None:
        with self._lock:
            self.auth0_users[user_id] = {"user_id": user_id, **fields}

    def expire_management_tokens(self) -> None:
        """Upstream forgets every issued Management API token (as after a
        secret rotation), so the next PATCH answers 401."""
        with self._lock:
            self._mgmt_tokens.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---------------------------------------------------------------- server
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        # Counted on arrival, whatever the mode: the tests bound how often
        # the verifier calls the issuer, answered or not.
        if method == "GET" and parts.path == self.jwks_path:
            with self._lock:
                self.jwks_fetches += 1
        if self.mode == "drop":
            h.close_connection = True
            return
        if self.mode == "slow":
            time.sleep(self.slow_seconds)
        if self.mode == "error":
            status, body = 503, {"error": "temporarily_unavailable"}
        else:
            status, body = self._route(method, parts.path, h.headers.get("Authorization"), raw)
        # 204 No Content carries no body (Auth0's answer to a DELETE).
        payload = json.dumps(body).encode() if status != 204 else b""
        h.send_response(status)
        if payload:
            h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        try:
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting ("slow" mode)

    def _route(
        self, method: str, path: str, authorization: str | None, raw: bytes
    ) -> tuple[int, Any]:
        if method == "GET" and path == self.jwks_path:
            return 200, self.jwks()
        if method == "GET" and path == "/.well-known/openid-configuration":
            with self._lock:
                self.discovery_fetches += 1
            return 200, {
                "issuer": self.issuer,
                "jwks_uri": self.jwks_url,
                "userinfo_endpoint": self.base_url + "/userinfo",
                "token_endpoint": self.base_url + "/oauth/token",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        if method == "GET" and path == "/userinfo":
            return self._userinfo(authorization)
        if method == "POST" and path == "/oauth/token":
            return self._token(raw)
        if method == "PATCH" and path.startswith("/api/v2/users/"):
            return self._patch_user(
                unquote(path.removeprefix("/api/v2/users/")), authorization, raw
            )
        if method == "DELETE" and path.startswith("/api/v2/users/"):
            return self._delete_user(unquote(path.removeprefix("/api/v2/users/")), authorization)
        return 404, {"error": "not_found"}

    def _userinfo(self, authorization: str | None) -> tuple[int, Any]:
        with self._lock:
            self.userinfo_calls += 1
        token = (authorization or "").removeprefix("Bearer ").strip()
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = next(k for k in self.published if k.kid == kid)
            claims = jwt.decode(
                token,
                key.private.public_key(),
                algorithms=[key.alg],
                options={"verify_aud": False},
            )
        except (jwt.PyJWTError, StopIteration):
            return 401, {"error": "invalid_token"}
        return 200, {"sub": claims["sub"], **self.userinfo.get(claims["sub"], {})}

    def _token(self, raw: bytes) -> tuple[int, Any]:
        with self._lock:
            self.token_requests += 1
        try:
            form: dict[str, Any] = json.loads(raw)
        except ValueError:
            form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        secret = self.management_clients.get(str(form.get("client_id")))
        if secret is None or not hmac.compare_digest(secret, str(form.get("client_secret"))):
            return 401, {"error": "access_denied", "error_description": "Unauthorized"}
        if form.get("audience") != self.management_audience:
            return 403, {"error": "access_denied", "error_description": "Service not enabled"}
        token = secrets.token_urlsafe(24)
        scopes = frozenset(self.management_scopes)
        with self._lock:
            self._mgmt_tokens[token] = (time.time() + self.management_token_ttl, scopes)
        return 200, {
            "access_token": token,
            "expires_in": self.management_token_ttl,
            "scope": " ".join(sorted(scopes)),
            "token_type": "Bearer",
        }

    def _management_refusal(
        self, authorization: str | None, scope: str
    ) -> tuple[int, dict[str, Any]] | None:
        """Auth0's answer to a Management API call whose token is unknown,
        expired or lacks `scope`; None when the token may make the call."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        with self._lock:
            expiry, scopes = self._mgmt_tokens.get(token, (0.0, frozenset()))
        if expiry <= time.time():
            return 401, {"statusCode": 401, "error": "Unauthorized", "message": "Invalid token"}
        if scope not in scopes:
            return 403, {
                "statusCode": 403,
                "error": "Forbidden",
                "message": f"Insufficient scope, expected any of: {scope}",
                "errorCode": "insufficient_scope",
            }
        return None

    def _patch_user(self, user_id: str, authorization: str | None, raw: bytes) -> tuple[int, Any]:
        token = (authorization or "").removeprefix("Bearer ").strip()
        with self._lock:
            self.patch_authorizations.append(token)
        refusal = self._management_refusal(authorization, "update:users")
        if refusal is not None:
            return refusal
        try:
            changes = json.loads(raw)
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            return 400, {"statusCode": 400, "error": "Bad Request", "message": "Invalid JSON"}
        username = changes.get("username")
        if username is not None and (not isinstance(username, str) or " " in username):
            return 400, {
                "statusCode": 400,
                "error": "Bad Request",
                "message": "Payload validation error: 'String does not match pattern'",
                "errorCode": "invalid_body",
            }
        with self._lock:
            user = self.auth0_users.get(user_id)
            if user is None:
                return 404, {
                    "statusCode": 404,
                    "error": "Not Found",
                    "message": "The user does not exist.",
                    "errorCode": "inexistent_user",
                }
            taken = changes.get("username") and any(
                u.get("username") == changes["username"] and uid != user_id
                for uid, u in self.auth0_users.items()
            )
            if taken:
                return 409, {
                    "statusCode": 409,
                    "error": "Conflict",
                    "message": "The specified new username already exists",
                    "errorCode": "auth0_idp_error",
                }
            user.update(changes)
            return 200, dict(user)

    def _delete_user(self, user_id: str, authorization: str | None) -> tuple[int, Any]:
        with self._lock:
            self.delete_requests.append(user_id)
        refusal = self._management_refusal(authorization, "delete:users")
        if refusal is not None:
            return refusal
        if self.delete_failure is not None:
            return self.delete_failure, {
                "statusCode": self.delete_failure,
                "error": "Internal Server Error",
                "message": "Something went wrong",
            }
        with self._lock:
            if self.auth0_users.pop(user_id, None) is None:
                return 404, {
                    "statusCode": 404,
                    "error": "Not Found",
                    "message": "The user does not exist.",
                    "errorCode": "inexistent_user",
                }
        return 204, None
