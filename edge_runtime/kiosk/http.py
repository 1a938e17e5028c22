"""The kiosk screen's routes: GET /kiosk (the page), GET /kiosk/events (SSE), POST /kiosk/{ask,read,talk,stop}."""
# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at definition time, and
# fastapi is imported inside build_router() so that importing this package stays light.
import hashlib
import hmac
import importlib.resources
import ipaddress
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import parse_qs

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from .service import KioskService

PAGE = "/kiosk"
COOKIE = "clawd_kiosk"
MAX_TEXT = 500  # a question typed on the screen; longer is not a visitor's question
HEARTBEAT = 15.0  # seconds: a comment line keeps proxies from closing an idle stream and finds gone viewers


def _screen_path(path: str) -> bool:
    return path == PAGE or path.startswith(PAGE + "/")


def screen_token(api_key: str) -> str:
    """The cookie value: derived from the key, so the cookie opens the screen's routes and never the API."""
    return hmac.new(api_key.encode(), b"clawd-edge kiosk screen", hashlib.sha256).hexdigest()


def _loopback(scope: MutableMapping[str, Any]) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(str(client[0]))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _cookie(scope: MutableMapping[str, Any]) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            for part in bytes(value).decode("latin-1").split(";"):
                key, _, given = part.strip().partition("=")
                if key == COOKIE:
                    return given
    return ""


def screen_access(api_key: str, public_on_loopback: bool) -> Callable[[MutableMapping[str, Any]], bool]:
    """ApiKeyAuth's extra rule for the screen's routes, which a browser reaches without an Authorization header:
    the screen cookie (set by GET /kiosk?key=KEY), `?key=KEY` on the page itself, or, with
    kiosk.screen_public, any browser on this machine."""
    token = screen_token(api_key).encode()

    def allows(scope: MutableMapping[str, Any]) -> bool:
        if not _screen_path(str(scope.get("path", ""))):
            return False
        if public_on_loopback and _loopback(scope):
            return True
        if hmac.compare_digest(_cookie(scope).encode(), token):
            return True
        if scope.get("path") == PAGE and scope.get("method") == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            return hmac.compare_digest(query.get("key", [""])[0].encode(), api_key.encode())
        return False

    return allows


def page_html() -> str:
    return importlib.resources.files(__package__).joinpath("static/kiosk.html").read_text(encoding="utf-8")


def build_router(service: "KioskService", api_key: Optional[str]) -> Any:  # noqa: UP045 - see the module comment
    """The APIRouter the daemon mounts while the kiosk runs in it."""
    from fastapi import APIRouter, Request
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException

    from .loop import KioskInput

    router = APIRouter(tags=["kiosk"])
    html = page_html()  # read once: a missing package file fails the daemon's start, not a visitor's request

    @router.get(PAGE, response_class=HTMLResponse)
    def page(key: Optional[str] = None) -> Any:  # noqa: UP045
        """The kiosk screen. `?key=KEY` (the API key) sets the screen cookie and reloads without it."""
        if key is not None and api_key:
            response = RedirectResponse(PAGE, status_code=303)
            # HttpOnly: page scripts never see it; SameSite=Strict: other sites cannot press the buttons.
            response.set_cookie(COOKIE, screen_token(api_key), httponly=True, samesite="strict", path=PAGE)
            return response
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @router.get(PAGE + "/events")
    async def events() -> StreamingResponse:
        """Server-Sent Events: `snapshot` first (a page opened mid-turn catches up), then every change."""
        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"  # the browser reconnects after 2 s (a daemon restart), and gets a snapshot
            async for event in service.screen.events(HEARTBEAT):
                yield ": still here\n\n" if event is None else event.sse()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    class Ask(BaseModel):
        text: str = ""

    def json_only(request: Request) -> None:
        # A form post from another site needs no CORS preflight; a JSON one does: buttons take JSON only.
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HTTPException(415, "send the body as application/json")

    # The handlers are async on purpose: they touch the kiosk's tasks and the screen, which live on the loop.
    def accepted() -> JSONResponse:
        return JSONResponse({"accepted": True, "state": service.screen.snapshot()["state"]}, status_code=202)

    @router.post(PAGE + "/ask", status_code=202)
    async def ask(request: Request, body: Ask) -> JSONResponse:
        """A typed question, answered like a spoken one."""
        json_only(request)
        text = body.text.strip()
        if not text:
            raise InvalidRequest("text: the question is empty", param="text")
        if len(text) > MAX_TEXT:
            raise InvalidRequest(f"text: the question is longer than {MAX_TEXT} characters", param="text")
        service.running_kiosk().submit(KioskInput(text, "screen"))
        return accepted()

    @router.post(PAGE + "/read", status_code=202)
    async def read(request: Request, body: Ask) -> JSONResponse:
        """"Read the sign": a camera turn, with an optional question about the sign."""
        json_only(request)
        if len(body.text) > MAX_TEXT:
            raise InvalidRequest(f"text: the question is longer than {MAX_TEXT} characters", param="text")
        service.running_kiosk().submit(KioskInput(body.text.strip(), "screen", read=True))
        return accepted()

    @router.post(PAGE + "/talk", status_code=202)
    async def talk(request: Request) -> JSONResponse:
        """Push-to-talk: stop the reply, show that the kiosk listens (it always hears the microphone)."""
        json_only(request)
        service.running_kiosk().talk()
        return accepted()

    @router.post(PAGE + "/stop", status_code=202)
    async def stop(request: Request) -> JSONResponse:
        """Stop: silence the reply and end the turn."""
        json_only(request)
        service.running_kiosk().stop()
        return accepted()

    return router
