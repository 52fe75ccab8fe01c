"""Who may do what: admin calls need the bearer token ``ONLINE_ADMIN_TOKEN`` (with none set they are
refused, never open); feedback may need a per-source API key (``ONLINE_FEEDBACK_API_KEYS``)."""

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


async def feedback_source(request: Request) -> str | None:
    """The source an ``X-API-Key`` belongs to, when keys are configured (None: feedback is open)."""
    keys = request.app.state.settings.feedback_api_keys
    if not keys:
        return None
    given = request.headers.get("x-api-key")
    if not given:
        raise HTTPException(401, "feedback needs an API key (X-API-Key header)")
    for source, key in keys.items():
        if secrets.compare_digest(given.encode(), key.get_secret_value().encode()):
            return source
    raise HTTPException(401, "unknown API key")
