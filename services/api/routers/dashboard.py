"""`/dashboard`: one page of plots over /v1/drift and /v1/models, drawn with plotly.js.

plotly.js is served from the installed ``plotly`` package, so the page works without internet."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

api = APIRouter(tags=["monitoring"])
_PAGE = Path(__file__).with_name("dashboard.html")


@lru_cache(maxsize=1)
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


@api.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_PAGE.read_text())


@api.get("/dashboard/plotly.min.js", include_in_schema=False)
async def plotly_js() -> Response:
    return Response(_plotly_js(), media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})
