"""Who may talk to the dashboard, and how: loopback by default, a token otherwise, GET only.

Why these rules: the dashboard shows a whole campaign (structures, results, paths on disk) and
runs on shared machines and cluster login nodes. Bound to loopback, only local users reach it.
Bound to any other address it must be protected, so ``crystalloop dashboard`` refuses such a
host unless ``CRYSTALLOOP_DASHBOARD_TOKEN`` is set, and then every request must carry the
token: as ``Authorization: Bearer <token>`` or ``X-Crystalloop-Token``, or once as
``?token=<token>``, which sets an HttpOnly cookie and redirects to the same URL without it (so
the token does not stay in the address bar, the history or a Referer). Only GET and HEAD are
served: nothing the dashboard does changes the store.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

TOKEN_ENV = "CRYSTALLOOP_DASHBOARD_TOKEN"
COOKIE = "crystalloop_token"

# plotly.js needs eval for a few trace types and injects its own styles
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; anything else (0.0.0.0, a hostname, an address) is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> str | None:
    """Why binding ``host`` is refused (None: allowed)."""
    if is_loopback(host) or token:
        return None
    return (
        f"refusing to serve on {host}: not a loopback address, and {TOKEN_ENV} is not set. "
        f"Set {TOKEN_ENV} to a long random string (every request must then carry it), or "
        "keep the default --host 127.0.0.1 and reach it through an SSH tunnel."
    )


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _presented(scope: Scope, query: list[tuple[str, str]]) -> tuple[str | None, bool]:
    """(token the request carries, whether it came in the query string)."""
    headers = _headers(scope)
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    if headers.get("x-crystalloop-token"):
        return headers["x-crystalloop-token"], False
    for key, value in query:
        if key == "token":
            return value, True
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is no token
        return None, False
    morsel = cookie.get(COOKIE)
    return (unquote(morsel.value) if morsel else None), False


async def _send_simple(send: Callable, status: int, text: str, extra: list | None = None) -> None:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: read-only methods, the token when one is set, security headers."""

    def __init__(self, app: ASGIApp, token: str | None = None):
        self.app = app
        self.token = token or None

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send_simple(send, 405, "the dashboard is read-only", [(b"allow", b"GET, HEAD")])
            return
        if self.token is not None:
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
            given, in_query = _presented(scope, query)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                await _send_simple(
                    send,
                    401,
                    "401: this dashboard needs its token (Authorization: Bearer <token>, or "
                    "open it once with ?token=<token>)",
                    [(b"www-authenticate", b'Bearer realm="crystalloop"')],
                )
                return
            if in_query:  # trade the query token for a cookie, drop it from the URL
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                path = quote(scope.get("root_path", "") + scope["path"], safe="/")
                location = path + (f"?{rest}" if rest else "")
                cookie = f"{COOKIE}={quote(self.token, safe='')}; HttpOnly; SameSite=Strict; Path=/"
                await _send_simple(
                    send,
                    303,
                    "token accepted",
                    [(b"location", location.encode()), (b"set-cookie", cookie.encode())],
                )
                return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
