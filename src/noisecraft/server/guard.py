"""Who may talk to the server: the Host header, credentials, and what a web page of another origin can send.

Every HTTP request passes ``Guard`` before any route sees it:

- **Host** must name this server (the bound host, a loopback name, or ``--allowed-hosts``): a page
  that re-points its own DNS name at 127.0.0.1 (DNS rebinding) gets a 400.
- **Credentials** (``--api-auth user:pass`` as HTTP Basic, ``--api-token`` as ``Bearer``), when the
  server has any, are required on every path: 401 otherwise. The caller's user name is kept in
  ``request.state.caller`` (the token's caller is ``"token"``; no credentials: None).
- **State-changing methods** (POST, PUT, PATCH, DELETE) accept only JSON bodies (415), and a request
  that carries an ``Origin`` header must come from this server's own pages or a ``--cors-allow-origins``
  origin (403): browsers send a text/plain or body-less POST to any site without asking first.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
TOKEN_CALLER = "token"
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Access:
    """The server's credentials and the names and origins it answers."""

    users: dict[str, str] = field(default_factory=dict)  # user → password (--api-auth)
    token: str | None = None  # --api-token
    allowed_hosts: tuple[str, ...] = ()  # extra Host names; "*": any
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API

    @property
    def required(self) -> bool:
        return bool(self.users) or self.token is not None


def parse_api_auth(text: str) -> dict[str, str]:
    """``user:pass[,user2:pass2 …]`` (A1111's --api-auth) → {user: password}; ValueError if malformed."""
    users = {}
    for pair in text.split(","):
        user, sep, password = pair.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--api-auth: expected user:password pairs separated by commas, got {pair!r}")
        users[user] = password
    return users


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, access: Access) -> None:
    """ValueError (one line) when ``host`` is reachable from other machines and no credentials are set."""
    if not is_loopback(host) and not access.required:
        raise ValueError(
            f"--host {host} is reachable from other machines: add --api-auth USER:PASS or --api-token TOKEN"
        )


def host_name(value: str) -> str:
    """The name in a Host header, without its port: ``[::1]:7860`` → ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """ASGI middleware applying the checks the module describes (responses are JSON ``detail``)."""

    def __init__(self, app: ASGIApp, access: Access, bound_host: str):
        self.app, self.access = app, access
        extra = {host_name(h) for h in access.allowed_hosts}
        wildcard = host_name(bound_host) in WILDCARD_HOSTS and not extra
        self.any_host = wildcard or "*" in extra
        self.hosts = {*LOOPBACK_NAMES, host_name(bound_host), *extra}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        caller = self.caller(headers.get("authorization"))
        refusal = self._refusal(scope["method"], headers, caller)
        if refusal is not None:
            return await refusal(scope, receive, send)
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

    def _refusal(self, method: str, headers: dict[str, str], caller: str | None) -> JSONResponse | None:
        host = headers.get("host", "")
        if not self.any_host and host_name(host) not in self.hosts:
            return _error(400, f"Host {host!r} is not a name this server answers to (see --allowed-hosts)")
        if self.access.required and caller is None:
            challenge = {"WWW-Authenticate": 'Basic realm="noisecraft"'} if self.access.users else {}
            return _error(401, "credentials required (--api-auth / --api-token)", challenge)
        if method not in STATE_CHANGING:
            return None
        origin = headers.get("origin")
        if origin is not None and origin not in self.access.cors_origins and urlsplit(origin).netloc != host:
            return _error(403, f"requests from pages of {origin} are not allowed (see --cors-allow-origins)")
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if (media or has_body) and media != "application/json":
            return _error(415, f"expected Content-Type: application/json, got {media or 'none'}")
        return None

    def caller(self, authorization: str | None) -> str | None:
        """The user an Authorization header proves (``"token"`` for the token), or None."""
        scheme, _, value = (authorization or "").partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.access.token is not None:
            return (
                TOKEN_CALLER if secrets.compare_digest(value.encode(), self.access.token.encode()) else None
            )
        if scheme.lower() != "basic" or not self.access.users:
            return None
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return None
        expected = self.access.users.get(user)
        if expected is None or not secrets.compare_digest(password.encode(), expected.encode()):
            return None
        return user


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
