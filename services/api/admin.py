"""Admin authentication: a bearer token from ``ONLINE_ADMIN_TOKEN``. With none set, admin calls are
refused (403), never open."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False)


async def require_admin(request: Request) -> None:
    token = request.app.state.settings.admin_token
    if token is None:
        raise HTTPException(403, "admin endpoints are disabled: set ONLINE_ADMIN_TOKEN to enable them")
    credentials: HTTPAuthorizationCredentials | None = await _bearer(request)
    if credentials is None:
        raise HTTPException(401, "admin token required (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "wrong admin token")
