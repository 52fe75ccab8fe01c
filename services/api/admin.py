"""Who may do what: admin calls need the bearer token ``ONLINE_ADMIN_TOKEN`` (with none set they are
refused, never open); feedback may need a per-source API key (``ONLINE_FEEDBACK_API_KEYS``)."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

_bearer = HTTPBearer(auto_error=False)


async def _require_one_of(request: Request, tokens: list[SecretStr | None], what: str) -> None:
    accepted = [t for t in tokens if t is not None]
    if not accepted:
        raise HTTPException(403, f"{what} endpoints are disabled: set ONLINE_ADMIN_TOKEN to enable them")
    credentials: HTTPAuthorizationCredentials | None = await _bearer(request)
    if credentials is None:
        raise HTTPException(401, f"{what} token required (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"})
    given = credentials.credentials.encode()
    if not any(secrets.compare_digest(given, t.get_secret_value().encode()) for t in accepted):
        raise HTTPException(403, f"wrong {what} token")


async def require_admin(request: Request) -> None:
    await _require_one_of(request, [request.app.state.settings.admin_token], "admin")


async def require_reviewer(request: Request) -> None:
    """The review queue shows user texts: the admin token, or a reviewer token that can do nothing else."""
    s = request.app.state.settings
    await _require_one_of(request, [s.admin_token, s.reviewer_token], "reviewer")


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
