"""Who may do what: admin calls need the bearer token ``ONLINE_ADMIN_TOKEN`` (with none set they are
refused, never open); feedback may need a per-source API key (``ONLINE_FEEDBACK_API_KEYS``).

Feedback carries the credential it came with (``online.credentials``): the admin token (trusted, may
send as any source), a feedback key (trusted when the operator trusts that key), or none (anonymous:
only its client address tells it apart)."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr

from online.credentials import Credential
from online.settings import Settings

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


def client_address(request: Request) -> str:
    """The address the request came from (behind a proxy: what uvicorn's proxy headers settle on)."""
    return request.client.host if request.client else ""


async def feedback_credential(request: Request) -> tuple[str | None, Credential]:
    """(the source a feedback key sends as, or None: any) and the credential the call came with: the
    admin token (``Authorization: Bearer``), a feedback key (``X-API-Key``, required when keys are
    configured unless the admin token is given), or none."""
    return credential_of(
        request.app.state.settings,
        request.headers.get("authorization"),
        request.headers.get("x-api-key"),
        client_address(request),
    )


def credential_of(
    settings: Settings, authorization: str | None, api_key: str | None, address: str
) -> tuple[str | None, Credential]:
    """:func:`feedback_credential` from the headers alone: also what the feedback gate in front of the
    body parser (``services.api.limits.FeedbackGate``) asks, so both tell an anonymous call the same way.
    Raises HTTPException (401, 403) for a wrong token or key."""
    scheme, token = get_authorization_scheme_param(authorization)
    if authorization and scheme.lower() == "bearer" and token:
        admin = settings.admin_token
        if admin is None or not secrets.compare_digest(token.encode(), admin.get_secret_value().encode()):
            raise HTTPException(403, "wrong admin token")
        return None, Credential("admin", address)
    keys = settings.feedback_api_keys
    if not keys:
        if api_key:  # a client configured for keys, a server without: told, not silently anonymous
            raise HTTPException(
                401, "this server has no feedback API keys (ONLINE_FEEDBACK_API_KEYS): send without X-API-Key"
            )
        return None, Credential("", address)
    if not api_key:
        raise HTTPException(401, "feedback needs an API key (X-API-Key header)")
    for source, key in keys.items():
        if secrets.compare_digest(api_key.encode(), key.get_secret_value().encode()):
            return source, Credential("key", address)
    raise HTTPException(401, "unknown API key")
