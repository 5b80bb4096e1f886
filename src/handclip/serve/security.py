"""Who may call the service and what every answer carries: API keys and roles, the Host check, the
security headers, and the warning when the service is reachable from other machines.

- **Keys and roles.** Every endpoint but health needs an API key (header ``X-API-Key``, or
  ``Authorization: Bearer KEY``), declared in the OpenAPI schema as two security schemes. A missing or
  unknown key gets 401, a key without the endpoint's role 403; both are logged with the client
  address and the key's id, never the key.
- **Host check.** A request whose ``Host`` is not one the service was started for gets 400: a web page
  elsewhere cannot reach a service on 127.0.0.1 through a DNS name it points at this machine.
- **Headers.** Every answer says ``Content-Security-Policy`` (scripts, styles and images from the
  service itself, images also from ``blob:``; no frames, plugins or foreign forms), ``X-Frame-Options:
  DENY``, ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import ipaddress
import json
import logging

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .keys import ApiKey

log = logging.getLogger("handclip.serve")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey",
                           description="an API key from `handclip serve-keys add`")
_bearer_key = HTTPBearer(auto_error=False, scheme_name="BearerKey",
                         description="the same API key as a bearer token")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


def require(role: str):
    """A dependency giving the request's key, after checking it holds ``role``."""

    def check(request: Request, header: str | None = Depends(_header_key),
              bearer: HTTPAuthorizationCredentials | None = Depends(_bearer_key)) -> ApiKey:
        presented = header or (bearer.credentials if bearer else None)
        key = request.app.state.service.keys.authenticate(presented)
        if key is None:
            log.warning("refused %s %s from %s: %s API key", request.method, request.url.path,
                        client_address(request), "no" if not presented else "invalid or revoked")
            raise HTTPException(401, "a valid API key is required (header X-API-Key)",
                                headers={"WWW-Authenticate": "Bearer"})
        if role not in key.roles:
            log.warning("refused %s %s from %s: key %s (%s) lacks role %s", request.method, request.url.path,
                        client_address(request), key.id, key.name, role)
            raise HTTPException(403, f"API key '{key.name}' does not have the '{role}' role")
        return key

    return check


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(listen_host: str, extra=()) -> tuple[str, ...]:
    """The Host names the service answers: the loopback names, the address it listens on (unless it
    listens on every address) and ``extra`` (the names clients use, e.g. behind a reverse proxy)."""
    names = list(LOOPBACK_NAMES)
    if listen_host not in ("0.0.0.0", "::", ""):
        names.append(listen_host.strip("[]"))
    return tuple(dict.fromkeys([*names, *extra]))


def exposure_warning(listen_host: str, tls: bool) -> str | None:
    """A warning for a service other machines can reach, or None on loopback."""
    if is_loopback(listen_host):
        return None
    if tls:
        return (f"the service listens on {listen_host}: other machines can reach it; only the API keys keep "
                f"them out, so give keys only to examiners and revoke them when not needed")
    return (f"the service listens on {listen_host} without TLS: API keys, photos and reports cross the network "
            f"in clear text; put it behind a TLS reverse proxy (docs/web-api.md) or pass --tls-cert and --tls-key")


def _host_of(headers: list) -> str:
    raw = dict(headers).get(b"host", b"").decode("latin-1").strip().lower()
    if raw.startswith("["):
        return raw[1:raw.find("]")] if "]" in raw else raw
    return raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw


class HostCheck:
    """ASGI middleware: 400 in JSON for a request whose Host is not one of ``hosts``."""

    def __init__(self, app, hosts):
        self.app = app
        self.hosts = {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and _host_of(scope.get("headers") or []) not in self.hosts:
            body = json.dumps({"error": "this service does not answer requests for that Host name"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: the security headers on every answer (see the module's docstring)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
