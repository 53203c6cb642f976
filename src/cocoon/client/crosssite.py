"""Refusing cross-site requests to the client's API (issue 15, item 16).

Without an API key, the loopback API would serve any web page its operator opens: a cross-origin POST with a
`text/plain` body needs no CORS preflight, and with DNS rebinding (a hostile name that resolves to 127.0.0.1)
the page reads the answer too. So a keyless API answers only the `Host` names it is known by, every API refuses
requests that a browser marks as coming from another origin (`Origin`, `Sec-Fetch-Site`), and bodies must be
`application/json`, which a page can send cross-origin only after a preflight this API never grants.

The one exception is the media upload (`MULTIPART_PATHS`), which is `multipart/form-data` as curl and every HTTP
library send files; a page can post such a form without a preflight, so there the `Host`, `Origin` and
`Sec-Fetch-Site` checks (which browsers apply to form posts too) are what refuses it.
"""

from __future__ import annotations

import ipaddress

from aiohttp import hdrs, web

from cocoon.core.errors import ApiError, ErrorCode

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_SAME_SITE = ("same-origin", "none")  # `none`: typed by the user, not sent by a page
MULTIPART_PATHS = frozenset({"/v1/media/transcode"})  # file uploads (client/media.py)


def host_name(host: str) -> str:
    """A host as it appears in a `Host` header: IPv6 addresses in brackets, lower case."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host.lower()


class CrossSiteGuard:
    """`check_host` is for keyless APIs: with a key, no page can use the API anyway, and the names it is reached
    by (a reverse proxy's, a LAN address) are not known here."""

    def __init__(self, api_host: str, *, check_host: bool) -> None:
        self.names = {*LOOPBACK_NAMES, host_name(api_host)}
        self.check_host = check_host

    def check(self, request: web.Request) -> None:
        host = request.headers.get(hdrs.HOST, "").lower()
        if self.check_host and not self._is_own(host, request):
            raise ApiError(403, "this API answers only requests addressed to its own host name and port (the "
                                "`Host` header); use http://127.0.0.1, localhost or [::1] with its port",
                           type="permission_error", code=ErrorCode.HOST_NOT_ALLOWED)
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin.lower() != f"http://{host}":
            raise ApiError(403, "cross-origin requests from web pages are refused (the `Origin` header names "
                                "another site)", type="permission_error", code=ErrorCode.CROSS_ORIGIN_REQUEST)
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in _SAME_SITE:
            raise ApiError(403, f"cross-origin requests from web pages are refused (`Sec-Fetch-Site: {site}`)",
                           type="permission_error", code=ErrorCode.CROSS_ORIGIN_REQUEST)
        if request.method == hdrs.METH_POST and request.content_type != "application/json" and not (
                request.path in MULTIPART_PATHS and request.content_type == "multipart/form-data"):
            raise ApiError(415, f"request bodies must be JSON sent as `Content-Type: application/json`, not "
                                f"`{request.content_type}`", code=ErrorCode.UNSUPPORTED_MEDIA_TYPE)

    def _is_own(self, host: str, request: web.Request) -> bool:
        name, port = _split(host)
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        return name in self.names and sockname is not None and port == sockname[1]


def _split(host: str) -> tuple[str, int | None]:
    """`Host` as (name, port); no port means HTTP's 80, a malformed one gives port None."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
    else:
        name, _, rest = host.partition(":")
        rest = ":" + rest if rest else ""
    if not rest:
        return name, 80
    if not rest.startswith(":") or not rest[1:].isdigit():
        return name, None
    return name, int(rest[1:])
