"""The admin interface: both backends implement every call of it, and the remote one turns the API's
answers into the interface's errors (what the CLI prints and exits with)."""

from __future__ import annotations

import inspect

import httpx
import pytest

from online.client import Client
from services.admin.backend import AdminBackend, NotFound, Refused, Unreachable
from services.admin.local import LocalAdmin
from services.admin.remote import RemoteAdmin

CALLS = [name for name in vars(AdminBackend) if not name.startswith("_")]


@pytest.mark.parametrize("backend", [LocalAdmin, RemoteAdmin])
def test_every_backend_implements_every_call(backend):
    assert len(CALLS) >= 16
    for name in CALLS:
        wanted = inspect.signature(getattr(AdminBackend, name))
        got = inspect.signature(getattr(backend, name))
        assert list(wanted.parameters) == list(got.parameters)[: len(wanted.parameters)], (backend, name)
        extra = list(got.parameters.values())[len(wanted.parameters) :]
        assert all(p.default is not inspect.Parameter.empty for p in extra), (backend, name)  # optional only
        assert wanted.return_annotation == got.return_annotation, (backend, name)


def _remote(status: int, detail: str = "no", token: str | None = "t") -> RemoteAdmin:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json={"detail": detail}))
    return RemoteAdmin(Client("http://api", admin_token=token, transport=transport, retries=0))


def test_remote_errors_are_the_interfaces():
    with pytest.raises(NotFound, match="HTTP 404: no model version 9") as missing:
        _remote(404, "no model version 9").model(9)
    assert missing.value.by == "http://api"
    with pytest.raises(Refused, match="HTTP 409") as refused:
        _remote(409, "version 1 has no parent").rollback(None, "")
    assert not isinstance(refused.value, NotFound)
    with pytest.raises(Refused, match="set ONLINE_ADMIN_TOKEN"):
        _remote(200, token=None).pause("")  # refused before anything is sent

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(Unreachable) as unreachable:
        RemoteAdmin(Client("http://api", transport=httpx.MockTransport(down), retries=0)).models()
    assert unreachable.value.by == "http://api"
